//! A real Mosquitto broker on a free loopback port, one per test, killed on drop.
//!
//! A free port is only free until someone binds it, and other tests (and other suites on the machine) pick
//! ports too: a broker is up when its own process listens on its ports, and one that lost a port to
//! someone else is started again on fresh ones.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{lease_port, listens_on, wait_until, PortLease};

/// Mosquitto started as root drops to the `mosquitto` user, which cannot read or write a test's private
/// directory; run as root (CI), it is told to stay root. For other users the option has no effect.
pub const STAY_AS_INVOKING_USER: &str = "user root\n";

pub struct Broker {
    pub port: u16,
    /// The further listeners of a configuration made by [`Broker::start_custom_ports`].
    pub extra_ports: Vec<u16>,
    /// Held while the broker lives, so a restart finds its ports free.
    leases: Vec<PortLease>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Fails the test, with the fix, when Mosquitto is not installed.
pub fn mosquitto_binary() -> PathBuf {
    for candidate in [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto",
        "/usr/local/sbin/mosquitto",
    ] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return path;
        }
    }
    if let Ok(output) = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
    {
        let found = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !found.is_empty() {
            return PathBuf::from(found);
        }
    }
    panic!(
        "the HIL suite needs a real Mosquitto broker, and `mosquitto` is not installed.\n\
         Install it with: sudo apt-get install mosquitto mosquitto-clients"
    );
}

impl Broker {
    /// Starts a broker with its persistence in a private directory, so a persistent subscriber session
    /// survives a broker restart (sessions are saved every second).
    pub fn start() -> Broker {
        Broker::start_with(true, &[])
    }

    /// Starts a broker that keeps nothing on disk, as fast as Mosquitto goes; for benchmarks.
    pub fn start_volatile() -> Broker {
        Broker::start_with(false, &[])
    }

    /// Starts a broker with extra configuration lines for its listener.
    pub fn start_with(persistent: bool, extra: &[&str]) -> Broker {
        Broker::start_custom(|port, dir| {
            let mut config = format!(
                "{}listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\nlog_dest stderr\n\
                 log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
                STAY_AS_INVOKING_USER
            );
            if persistent {
                config.push_str(&format!(
                    "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                    dir.display()
                ));
            } else {
                config.push_str("persistence false\n");
            }
            for line in extra {
                config.push_str(line);
                config.push('\n');
            }
            config
        })
    }

    /// Starts a broker whose whole configuration `make(port, dir)` writes; `port` must be one of its
    /// listeners (the one `Broker::port` reports and start-up waits for). `make` runs again with another
    /// port when someone else took the first.
    pub fn start_custom(make: impl Fn(u16, &std::path::Path) -> String) -> Broker {
        Broker::start_custom_ports(0, |port, _, dir| make(port, dir))
    }

    /// Like [`Broker::start_custom`], with `extra` more free ports for further listeners; start-up waits
    /// for all of them, and they stay in [`Broker::extra_ports`].
    pub fn start_custom_ports(
        extra: usize,
        make: impl Fn(u16, &[u16], &std::path::Path) -> String,
    ) -> Broker {
        let dir = tempfile::tempdir().expect("broker temp dir");
        let mut broker = Broker {
            port: 0,
            extra_ports: Vec::new(),
            leases: Vec::new(),
            dir,
            child: None,
        };
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            broker.leases = (0..=extra).map(|_| lease_port()).collect();
            broker.port = broker.leases[0].port;
            broker.extra_ports = broker.leases[1..].iter().map(|lease| lease.port).collect();
            let config = make(broker.port, &broker.extra_ports, broker.dir.path());
            std::fs::write(broker.dir.path().join("mosquitto.conf"), config)
                .expect("write mosquitto.conf");
            match broker.spawn() {
                Ok(()) => return broker,
                Err(why) if attempt < ATTEMPTS => {
                    eprintln!("mosquitto did not start on its leased ports ({why}); trying others")
                }
                Err(why) => panic!("mosquitto did not start in {ATTEMPTS} attempts: {why}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a broker that lets anonymous clients (the test's subscriber) in, knows `user` with
    /// `password`, and applies the access rules `acl` (Mosquitto's `acl_file` format) to both.
    pub fn start_with_acl(user: &str, password: &str, acl: &str) -> Broker {
        Broker::start_custom(|port, dir| {
            let status = Command::new("mosquitto_passwd")
                .args(["-b", "-c"])
                .arg(dir.join("passwords"))
                .args([user, password])
                .status()
                .expect("run mosquitto_passwd (install mosquitto)");
            assert!(status.success(), "mosquitto_passwd failed");
            std::fs::write(dir.join("acl"), acl).expect("write acl");
            format!(
                "{STAY_AS_INVOKING_USER}listener {port} 127.0.0.1\nallow_anonymous true\n\
                 password_file {d}/passwords\nacl_file {d}/acl\npersistence false\n\
                 log_dest stderr\nlog_type error\nlog_type warning\n",
                d = dir.display()
            )
        })
    }

    /// Replaces the access rules of a broker started with [`Broker::start_with_acl`]; they apply after
    /// [`Broker::reload`].
    pub fn set_acl(&self, acl: &str) {
        std::fs::write(self.dir.path().join("acl"), acl).expect("write acl");
    }

    /// SIGHUP: Mosquitto reads its password and ACL files again, keeping its connections. It does so on
    /// its next turn, not before this returns: a publish right after may still meet the old rules.
    pub fn reload(&self) {
        kill(self.pid(), Signal::SIGHUP).expect("SIGHUP mosquitto");
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Starts Mosquitto on the configured ports; an error, with its log, when it cannot have them all.
    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("mosquitto.log"))
            .expect("broker log");
        let mut child = super::dies_with_test(&mut Command::new(mosquitto_binary()))
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        let pid = child.id();
        let ports: Vec<u16> = std::iter::once(self.port)
            .chain(self.extra_ports.iter().copied())
            .collect();
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            ports.iter().all(|&port| listens_on(pid, port))
        });
        if up && exited.is_none() {
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(match exited {
            Some(status) => format!(
                "it exited ({status}) on ports {ports:?}; log: {}",
                self.log()
            ),
            None => format!(
                "it did not listen on ports {ports:?} within 10 s; log: {}",
                self.log()
            ),
        })
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("broker running").id() as i32)
    }

    /// SIGKILL: the broker vanishes without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: the broker stops and saves its sessions, including messages it acknowledged to the
    /// daemon but had not yet passed to a subscriber. After a SIGKILL those are gone, and no client can
    /// know (Mosquitto acknowledges before it persists), so scenarios that count every message at the
    /// subscriber stop the broker this way.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same ports, which the daemon is configured with.
    pub fn restart(&mut self) {
        self.kill();
        // The ports stay leased to this broker; retrying covers a slow release of the sockets.
        let mut why = String::new();
        let up = wait_until(Duration::from_secs(10), || match self.spawn() {
            Ok(()) => true,
            Err(error) => {
                why = error;
                false
            }
        });
        assert!(up, "mosquitto did not start again: {why}");
    }

    /// SIGSTOP: the broker keeps its sockets but answers nothing.
    pub fn freeze(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP mosquitto");
    }

    pub fn thaw(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT mosquitto");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.kill();
    }
}

//! The real `vitalsd` binary as a child process, with a generated configuration and private state.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BINARY: &str = env!("CARGO_BIN_EXE_vitalsd");

/// A serial device entry of the generated configuration.
pub struct SerialEntry {
    pub path: PathBuf,
    pub protocol: &'static str,
    pub id: Option<String>,
    /// Extra `key = value` lines for the entry.
    pub extra: Vec<String>,
}

impl SerialEntry {
    /// The entry for a simulated device: its link, with no id and no extra lines.
    pub fn of(port: &super::pty::SimulatedPort, protocol: &'static str) -> SerialEntry {
        SerialEntry {
            path: port.link().to_path_buf(),
            protocol,
            id: None,
            extra: vec![],
        }
    }

    /// The entry with a configured device id.
    pub fn with_id(mut self, id: &str) -> SerialEntry {
        self.id = Some(id.to_string());
        self
    }

    /// The entry with `key = value` lines added.
    pub fn with(mut self, lines: &[&str]) -> SerialEntry {
        self.extra.extend(lines.iter().map(|line| line.to_string()));
        self
    }
}

/// A private world for one daemon: config file, state directory, log file.
pub struct DaemonWorld {
    pub dir: tempfile::TempDir,
    pub hub_id: String,
    /// `hub.clock` of the generated configuration. Scenarios run `"trusted"` unless they are about the
    /// hub clock: the test machines' kernels always report the clock unsynchronised, and under `"ntp"`
    /// every reading would wait for a synchronisation that never comes.
    pub hub_clock: &'static str,
}

impl DaemonWorld {
    pub fn new() -> DaemonWorld {
        DaemonWorld {
            dir: tempfile::tempdir().expect("daemon temp dir"),
            hub_id: "hub-test".to_string(),
            hub_clock: "trusted",
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("vitalsd.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn outbox_path(&self) -> PathBuf {
        self.state_dir().join("outbox.db")
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// A system bus address where nothing listens, so a test never reaches the machine's real BlueZ.
    fn no_bus(&self) -> String {
        format!("unix:path={}", self.dir.path().join("no-bus").display())
    }

    pub fn by_id(&self, name: &str) -> PathBuf {
        self.dir.path().join("by-id").join(name)
    }

    /// Writes the configuration; `mqtt_extra` lines go into `[mqtt]`.
    pub fn write_config(&self, broker_url: &str, mqtt_extra: &[&str], serial: &[SerialEntry]) {
        let mut text = format!(
            "[hub]\nid = \"{}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nclock = \"{}\"\n\n[mqtt]\nurl = \"{broker_url}\"\nkeep_alive_s = 5\n\
             reconnect_min_ms = 200\nreconnect_max_s = 1\n",
            self.hub_id,
            self.state_dir().display(),
            self.runtime_dir().display(),
            self.hub_clock
        );
        for line in mqtt_extra {
            text.push_str(line);
            text.push('\n');
        }
        for entry in serial {
            text.push_str(&format!(
                "\n[[serial]]\npath = \"{}\"\nprotocol = \"{}\"\n",
                entry.path.display(),
                entry.protocol
            ));
            if let Some(id) = &entry.id {
                text.push_str(&format!("id = \"{id}\"\n"));
            }
            for line in &entry.extra {
                text.push_str(line);
                text.push('\n');
            }
        }
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// Plugs in a simulated Nonin 9560 (Data Format 13) and writes a configuration that reads it from
    /// `broker_url`'s broker: the world most scenarios need.
    pub fn with_nonin_9560(&self, broker_url: &str) -> super::pty::SimulatedPort {
        let port = super::pty::SimulatedPort::plug_in(&self.by_id("usb-Nonin_9560-if00-port0"));
        self.write_config(
            broker_url,
            &[],
            &[SerialEntry {
                path: port.link().to_path_buf(),
                protocol: "nonin-df13",
                id: None,
                extra: vec![],
            }],
        );
        port
    }

    /// Starts `vitalsd run`; its stderr is appended to `daemon.log` in the world.
    pub fn start(&self) -> Daemon {
        self.start_with_env(&[])
    }

    /// Appends a TOML table to the configuration written by `write_config`.
    pub fn append_config(&self, text: &str) {
        let mut config = std::fs::read_to_string(self.config_path()).expect("read config");
        config.push('\n');
        config.push_str(text);
        std::fs::write(self.config_path(), config).expect("write config");
    }

    /// Starts `vitalsd run` with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("daemon log");
        let child = super::dies_with_test(&mut Command::new(BINARY))
            .args(["run", "--config"])
            .arg(self.config_path())
            .env("TZ", "UTC")
            .env("RUST_LOG", "vitalsd=debug,info")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.no_bus())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start vitalsd");
        Daemon { child: Some(child) }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Runs a `vitalsd` subcommand against this world's configuration.
    pub fn command(&self, args: &[&str]) -> Output {
        self.command_with_env(args, &[])
    }

    /// Runs a `vitalsd` subcommand with extra environment variables (a simulated BlueZ's bus).
    pub fn command_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(BINARY)
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env("TZ", "UTC")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.no_bus())
            .envs(env.iter().copied())
            .output()
            .expect("run vitalsd")
    }

    /// Starts a `vitalsd` subcommand with stdin, stdout and stderr piped, for a test that talks to it
    /// while it runs (a passkey typed at its prompt).
    pub fn spawn_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Child {
        super::dies_with_test(&mut Command::new(BINARY))
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env("TZ", "UTC")
            .env("DBUS_SYSTEM_BUS_ADDRESS", self.no_bus())
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vitalsd")
    }

    /// Runs a `vitalsd` subcommand with `input` as its stdin (then closed), as a script pipes it.
    pub fn command_with_input(&self, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
        use std::io::Write;
        let mut child = self.spawn_with_env(args, env);
        let mut stdin = child.stdin.take().expect("piped stdin");
        // The command may end before reading everything (it gave up): a broken pipe is its answer.
        let _ = stdin.write_all(input.as_bytes());
        drop(stdin);
        child.wait_with_output().expect("run vitalsd")
    }

    /// `vitalsd status --json`.
    pub fn status(&self) -> serde_json::Value {
        let output = self.command(&["status", "--json"]);
        assert!(
            output.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Keys of the readings in the outbox right now (read directly, as an oracle).
    pub fn outbox_keys(&self) -> Vec<String> {
        outbox_keys(&self.outbox_path())
    }

    /// One of the outbox's counters (`rejected_full_total`, ...), read directly as an oracle: cheap
    /// enough to poll, where `vitalsd status` would start a process on every poll. 0 when not counted yet.
    pub fn outbox_counter(&self, name: &str) -> i64 {
        let path = self.outbox_path();
        if !path.exists() {
            return 0;
        }
        let connection = rusqlite::Connection::open(path).expect("open outbox for inspection");
        connection
            .busy_timeout(Duration::from_secs(5))
            .expect("busy timeout");
        // As for the keys: no table yet means nothing counted yet.
        connection
            .query_row("SELECT value FROM stat WHERE name = ?1", [name], |row| {
                row.get::<_, i64>(0)
            })
            .unwrap_or(0)
    }
}

pub fn outbox_keys(path: &Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    let connection = rusqlite::Connection::open(path).expect("open outbox for inspection");
    connection
        .busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    // The daemon may be creating the file right now; no table yet means nothing queued yet.
    // Rows below the acknowledged mark were delivered; the daemon removes them once it is quiet.
    let Ok(mut query) = connection.prepare(
        "SELECT key FROM record WHERE seq >= coalesce(
             (SELECT value FROM stat WHERE name = 'acknowledged_below'), 0) ORDER BY seq",
    ) else {
        return Vec::new();
    };
    let keys = query
        .query_map([], |row| row.get::<_, String>(0))
        .expect("read outbox");
    keys.map(|k| k.expect("key")).collect()
}

pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a power cut or an OOM kill would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let mut status = None;
        super::wait_until(Duration::from_secs(10), || {
            status = child.try_wait().expect("wait for vitalsd");
            status.is_some()
        });
        status.unwrap_or_else(|| {
            let _ = child.kill();
            panic!("vitalsd did not stop within 10 s of SIGTERM")
        })
    }

    /// Waits up to `timeout` for the process to exit on its own; its exit status, or `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("daemon started");
        let mut status = None;
        super::wait_until(timeout, || {
            status = child.try_wait().expect("wait for vitalsd");
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Whether the daemon holds `path` open (a serial port it reads): observable in `/proc` the moment
    /// it opens or closes the port, unlike its once-a-second poll for a missing one.
    pub fn holds_open(&self, path: &Path) -> bool {
        let path = path.to_string_lossy();
        super::open_files(self.pid())
            .iter()
            .any(|file| *file == path)
    }

    /// Waits until the daemon has opened the simulated device, and fails the test if it does not within
    /// `timeout`.
    #[track_caller]
    pub fn wait_opened(&self, port: &super::pty::SimulatedPort, timeout: Duration) {
        super::wait_for(
            &format!("vitalsd to open {}", port.link().display()),
            timeout,
            || self.holds_open(port.tty()),
            || format!("it holds {:?}", super::open_files(self.pid())),
        );
    }

    /// Waits until the daemon holds `tty` no more (it noticed an unplug), and fails the test if it still
    /// does after `timeout`.
    #[track_caller]
    pub fn wait_closed(&self, tty: &Path, timeout: Duration) {
        super::wait_for(
            &format!("vitalsd to close {}", tty.display()),
            timeout,
            || !self.holds_open(tty),
            || format!("it holds {:?}", super::open_files(self.pid())),
        );
    }

    /// "running", or how the daemon ended (its exit code or the signal that killed it), for a message.
    pub fn state(&mut self) -> String {
        match self.child.as_mut().map(|child| child.try_wait()) {
            Some(Ok(None)) => "running".to_string(),
            Some(Ok(Some(status))) => format!("ended: {status}"),
            Some(Err(error)) => format!("unknown: {error}"),
            None => "stopped by the test".to_string(),
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Peak and current resident memory in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

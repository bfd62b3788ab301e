//! Test support for the HIL suite: a real Mosquitto per test, the real `vitalsd` binary, MQTT subscribers,
//! and simulated devices behind real pseudo-terminals.

pub mod bluez;
pub mod broker;
pub mod clock;
pub mod daemon;
pub mod latency;
pub mod mqtt5;
pub mod nonin;
pub mod pty;
pub mod real_bluez;
pub mod rig;
pub mod schema;
pub mod serial_devices;
pub mod subscriber;
pub mod usb;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// Makes the process `command` starts die with the test thread that starts it. A test run that is
/// killed (a timeout, a developer's ^C, a loop script stopped) would otherwise leave daemons and brokers
/// behind, and a leftover daemon's lock on a pseudo-terminal fails later runs in ways that look like flakes.
pub fn dies_with_test(command: &mut Command) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and only calls prctl, which is async-signal-safe and
    // touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            if nix::libc::prctl(nix::libc::PR_SET_PDEATHSIG, nix::libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits like [`wait_until`], and fails the test when `timeout` passes, naming `what` it waited for and
/// what `context` says then (a status, a log).
#[track_caller]
pub fn wait_for(
    what: &str,
    timeout: Duration,
    condition: impl FnMut() -> bool,
    context: impl FnOnce() -> String,
) {
    if !wait_until(timeout, condition) {
        panic!("waited {timeout:?} for {what}, in vain:\n{}", context());
    }
}

/// `phrase`, once it is checked to occur in the daemon's source (`src/`): a test that waits for a log line,
/// or asserts that one is absent, then fails when the wording changes instead of passing without meaning.
#[track_caller]
pub fn daemon_phrase(phrase: &'static str) -> &'static str {
    static SOURCES: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sources = SOURCES.get_or_init(|| {
        fn read(dir: &std::path::Path, text: &mut String) {
            for entry in std::fs::read_dir(dir).expect("read src").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    read(&path, text);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    text.push_str(&std::fs::read_to_string(&path).expect("read a source file"));
                }
            }
        }
        let mut text = String::new();
        read(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut text,
        );
        text
    });
    assert!(
        sources.contains(phrase),
        "the daemon's source no longer has {phrase:?}; the test looks for it in the log and needs its new wording"
    );
    phrase
}

/// A TCP port reserved for one test until the lease is dropped. It lies below the kernel's ephemeral
/// range, so no outgoing connection is ever given it; a lock file keeps the suite's other tests and
/// processes off it; and it was free when leased. A broker restarted on it therefore finds it still free,
/// which a port picked by binding port 0 and letting go does not promise.
pub struct PortLease {
    pub port: u16,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

pub fn lease_port() -> PortLease {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range
        .split_whitespace()
        .next()
        .and_then(|low| low.parse().ok())
        .unwrap_or(32768);
    // The span below the ephemeral range, above the well-known ports.
    let span = low.saturating_sub(1024).min(10_000);
    assert!(
        span > 100,
        "the ephemeral port range starts at {low}, leaving no ports to lease below it"
    );
    let dir = std::env::temp_dir().join("vitalsd-hil-ports");
    std::fs::create_dir_all(&dir).expect("create the port lease directory");
    // Processes start at different places so that they rarely try the same lock files.
    let seed = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
    for step in 0..u64::from(span) {
        let port = low - span + ((seed + step) % u64::from(span)) as u16;
        let file =
            std::fs::File::create(dir.join(port.to_string())).expect("create a port lock file");
        let Ok(lock) = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return PortLease { port, _lock: lock };
        }
    }
    panic!("no free port to lease below {low}");
}

/// A port no broker will ever answer on while the returned listener lives: it is bound and listening, so
/// nobody else can take it, and it never accepts, so a client's MQTT handshake goes unanswered.
pub fn silent_port() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let port = listener.local_addr().expect("local address").port();
    (listener, port)
}

/// Whether process `pid` itself listens on loopback TCP `port`, read from `/proc`: a connection that
/// succeeds proves only that someone listens there.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let suffix = format!(":{port:04X}");
    // Columns: sl, local_address, rem_address, st (0A is LISTEN), …, inode (the tenth).
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .filter(|fields| fields.len() > 9 && fields[1].ends_with(&suffix) && fields[3] == "0A")
        .map(|fields| format!("socket:[{}]", fields[9]))
        .collect();
    !inodes.is_empty()
        && open_files(pid)
            .iter()
            .any(|file| inodes.iter().any(|i| file == i))
}

/// What the descriptors of process `pid` point to (paths, `socket:[inode]`, …); empty once it is gone.
pub fn open_files(pid: u32) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect()
}

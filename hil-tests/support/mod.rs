//! Test support for the HIL suite: a real Mosquitto per test, the real `vitalsd` binary, MQTT subscribers,
//! and simulated devices behind real pseudo-terminals.

pub mod bluez;
pub mod broker;
pub mod clock;
pub mod daemon;
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

/// A TCP port nobody listened on a moment ago. Another process may take it before the caller binds it,
/// so whoever listens on it checks with [`listens_on`] and picks another when it lost the race.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
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

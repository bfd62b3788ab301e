//! Running as a service: systemd readiness and watchdog, and an outbox that fills up.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use crate::delivery::rig;
use crate::support::nonin::SpotCheck;
use crate::support::wait_until;

/// Collects sd_notify datagrams until `until` matches one or the timeout passes.
fn notifications(socket: &UnixDatagram, timeout: Duration, until: &str) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        if let Ok(count) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..count]).into_owned();
            let done = text.lines().any(|line| line == until);
            seen.push(text);
            if done {
                break;
            }
        }
    }
    seen
}

#[test]
fn systemd_hears_ready_then_watchdog_pings_then_stopping() {
    let rig = rig();
    let socket_path = rig.world.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let mut daemon = rig.world.start_with_env(&[
        ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "1000000"),
    ]);
    let ready = notifications(&socket, Duration::from_secs(20), "READY=1");
    assert!(
        ready.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "no READY=1: {ready:?}\n{}",
        rig.world.log()
    );
    let pings = notifications(&socket, Duration::from_secs(5), "WATCHDOG=1");
    assert!(
        pings.iter().any(|m| m.lines().any(|l| l == "WATCHDOG=1")),
        "no watchdog ping: {pings:?}"
    );
    assert!(
        pings.iter().any(|m| m.contains("STATUS=running")),
        "no STATUS line: {pings:?}"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let stopping = notifications(&socket, Duration::from_secs(10), "STOPPING=1");
    assert!(
        stopping
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1: {stopping:?}"
    );
    assert!(daemon.terminate().success());
}

#[test]
fn a_full_outbox_refuses_new_readings_visibly_and_keeps_the_old_ones() {
    let mut rig = rig();
    rig.world.append_config("[outbox]\nmax_pending = 5\n");
    // Stopped, not killed: the broker keeps the test subscriber's session, so the five readings wait for
    // it even when the daemon reconnects first. A SIGKILL soon after the subscription loses it.
    rig.broker.stop();
    let _daemon = rig.world.start();
    for n in 0..8 {
        rig.port.write(&SpotCheck::numbered(n).frame());
    }
    let refused = wait_until(Duration::from_secs(20), || {
        rig.world.status()["outbox"]["rejected_full_total"] == 3
    });
    assert!(refused, "{}", rig.world.status());
    assert_eq!(rig.world.status()["outbox"]["pending"], 5);
    // Logged at error level with the count, whatever the message's words.
    let logged: u64 = rig
        .world
        .log()
        .lines()
        .filter(|line| line.contains(" ERROR "))
        .filter_map(|line| {
            line.split_once(" rejected=")?
                .1
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(
        logged,
        3,
        "the refusals were not logged:\n{}",
        rig.world.log()
    );

    rig.broker.restart();
    assert!(rig
        .subscriber
        .wait_for_unique_readings(5, Duration::from_secs(30)));
    let times: Vec<String> = rig
        .subscriber
        .readings()
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap().to_string())
        .collect();
    let oldest_five: Vec<String> = (0..5)
        .map(|n| SpotCheck::numbered(n).measured_at_utc())
        .collect();
    assert_eq!(times, oldest_five, "the oldest readings are the ones kept");
    let status_seen = wait_until(Duration::from_secs(10), || {
        rig.subscriber
            .messages()
            .iter()
            .any(|m| m.topic.ends_with("/status") && m.json()["outbox"]["rejected_full_total"] == 3)
    });
    assert!(status_seen, "the status topic does not show the refusals");
}

//! The control socket under abuse and its audit trail: the real daemon with Bluetooth enabled against the
//! simulated BlueZ, a real Nonin simulator on a pseudo-terminal delivering readings to a real Mosquitto,
//! and clients on the real socket, some of them running as other users.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::bluetooth::BleRig;
use crate::support::bluez::{devices, BluezSim};
use crate::support::broker::Broker;
use crate::support::daemon::{Daemon, DaemonWorld, BINARY};
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

const CUFF: &str = "AA:BB:CC:DD:EE:01";
const OMRON: &str = "AA:BB:CC:DD:EE:07";
use vitalsd::control::{MAX_CLIENTS, MAX_REQUEST_BYTES, REQUEST_TIMEOUT};

/// A world with Bluetooth enabled (the control socket runs only then) and a Nonin 9560 on a serial port,
/// so readings flow while the socket is attacked.
struct Rig {
    ble: BleRig,
    port: SimulatedPort,
    readings_sent: u32,
}

impl Rig {
    fn new(ble_extra: &str) -> Rig {
        let broker = Broker::start();
        let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
        let world = DaemonWorld::new();
        let port = world.with_nonin_9560(&broker.url());
        world.append_config(&format!("[ble]\nadapter = \"hci0\"\n{ble_extra}"));
        Rig {
            ble: BleRig {
                broker,
                subscriber,
                world,
                sim: BluezSim::start(),
            },
            port,
            readings_sent: 0,
        }
    }

    /// Starts the daemon and waits until its socket and its Bluetooth supervisor are up (the
    /// supervisor registers BlueZ's default agent, which a pairing started before it would lose).
    fn start(&self) -> Daemon {
        let daemon = self.ble.start();
        assert!(
            wait_until(Duration::from_secs(20), || self.socket().exists()
                && self.ble.world.log().contains("Bluetooth scanning.")),
            "no control socket; log:\n{}",
            self.ble.world.log()
        );
        daemon
    }

    fn socket(&self) -> std::path::PathBuf {
        self.ble.world.runtime_dir().join("control.sock")
    }

    /// Sends one more spot-check and waits until it reached the subscriber.
    fn deliver_a_reading(&mut self) {
        self.port
            .write(&SpotCheck::numbered(self.readings_sent).frame());
        self.readings_sent += 1;
        assert!(
            self.ble
                .subscriber
                .wait_for_unique_readings(self.readings_sent as usize, Duration::from_secs(20)),
            "reading {} not delivered; log:\n{}",
            self.readings_sent,
            self.ble.world.log()
        );
    }

    fn log_bytes(&self) -> usize {
        self.ble.world.log().len()
    }
}

/// Sends `{"command":"devices"}` on a fresh connection and returns the event lines until the last.
fn raw_devices_request(socket: &Path) -> Vec<serde_json::Value> {
    let mut stream = UnixStream::connect(socket).expect("connect to the control socket");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // A daemon that refuses as busy may close before the request is written; its answer is still there.
    let _ = stream.write_all(b"{\"command\":\"devices\"}\n");
    read_events(&mut stream)
}

fn read_events(stream: &mut UnixStream) -> Vec<serde_json::Value> {
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text.lines()
        .map(|line| serde_json::from_str(line).expect("each event is JSON"))
        .collect()
}

/// CPU time the process used so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .unwrap()
        .unwrap() as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| entries.count())
        .unwrap_or(0)
}

/// Lets this test process hold `count` sockets; the daemon, already running, keeps its own limit.
fn allow_open_files(count: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < count {
        let wanted = count.max(soft);
        setrlimit(Resource::RLIMIT_NOFILE, wanted, hard.max(wanted))
            .expect("raise RLIMIT_NOFILE (the suite runs as root)");
    }
}

/// Sets a running process's descriptor limit (soft and hard) with util-linux's `prlimit`.
fn set_nofile_limit(pid: u32, limit: u64) {
    let prlimit = Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("run prlimit (util-linux)");
    assert!(
        prlimit.status.success(),
        "{}",
        String::from_utf8_lossy(&prlimit.stderr)
    );
}

fn daemon_nofile_limit(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

/// A client that sends a request without a newline for as long as the daemon takes it.
fn send_endless_request(socket: &Path, total: usize) -> (usize, Vec<serde_json::Value>) {
    let mut stream = UnixStream::connect(socket).expect("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0;
    while sent < total {
        match stream.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    (sent, read_events(&mut stream))
}

#[test]
fn an_endless_request_and_two_thousand_idle_clients_leave_the_daemon_small_quiet_and_serving() {
    let mut rig = Rig::new("");
    let daemon = rig.start();
    let pid = daemon.pid();
    rig.deliver_a_reading();
    let socket = rig.socket();
    // systemd starts services with a soft limit of 1,024 descriptors; so does this test, whatever the
    // limit this process passed on.
    set_nofile_limit(pid, 1024);
    let daemon_limit = daemon_nofile_limit(pid);
    allow_open_files(4096);
    let (_, rss_before) = daemon.memory_kib();
    let log_before = rig.log_bytes();
    let cpu_before = cpu_time(pid);
    let fds_before = open_fds(pid);
    let started = Instant::now();

    // 64 MiB without a newline: the daemon reads one request's worth, answers and closes.
    let (sent, events) = send_endless_request(&socket, 64 << 20);
    assert!(sent < 64 << 20, "the daemon took all {sent} bytes");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "error");
    assert!(
        events[0]["message"]
            .as_str()
            .unwrap()
            .contains(&format!("longer than {MAX_REQUEST_BYTES} bytes")),
        "{events:?}"
    );

    // An endless sender that keeps at it while the idle clients below hold on: each attempt is cut off after
    // one request's worth or refused as busy, and it tries again a tenth of a second later.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let persistent = {
        let (socket, stop) = (socket.clone(), stop.clone());
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let (mut attempts, mut bytes) = (0u32, 0usize);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(mut stream) = UnixStream::connect(&socket) {
                    attempts += 1;
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                    let mut sent = 0;
                    while sent < 64 << 20 {
                        match stream.write(&chunk) {
                            Ok(n) => sent += n,
                            Err(_) => break,
                        }
                    }
                    bytes += sent;
                }
                // Pacing: a sender that keeps trying, not a connection flood.
                std::thread::sleep(Duration::from_millis(100));
            }
            (attempts, bytes)
        })
    };

    // 2,000 idle clients at once, more than the daemon's own descriptor limit if that is 1,024.
    let mut idle: Vec<UnixStream> = (0..2000)
        .map(|_| UnixStream::connect(&socket).expect("connect an idle client"))
        .collect();
    // While they hold on, the daemon still reads devices and delivers readings.
    rig.deliver_a_reading();
    // The first clients hold every slot until their time runs out; after that the socket serves.
    let mut served = Vec::new();
    assert!(
        wait_until(REQUEST_TIMEOUT * 3, || {
            served = raw_devices_request(&socket);
            served
                .first()
                .is_some_and(|event| event["event"] == "devices")
        }),
        "the socket does not serve `devices` any more: {served:?}\nlog:\n{}",
        rig.ble.world.log()
    );
    assert_eq!(served.last().unwrap()["event"], "done");
    let cli = rig.ble.vitalsd(&["devices", "--json"]);
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(rig
        .ble
        .world
        .command(&["status", "--json"])
        .status
        .success());
    rig.deliver_a_reading();

    // Every idle client was told why it was let go, and its connection closed: refused as busy at
    // once, or dropped for sending no request in time.
    let (mut busy, mut timed_out) = (0, 0);
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let events = read_events(stream);
        assert_eq!(events.len(), 1, "{events:?}");
        let message = events[0]["message"].as_str().unwrap();
        if message.contains("busy") {
            busy += 1;
        } else if message.contains("no request line within") {
            timed_out += 1;
        } else {
            panic!("unexpected answer {message:?}");
        }
    }
    idle.clear();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (attempts, endless_bytes) = persistent.join().expect("the endless sender");
    assert!(attempts > 0, "the endless sender never connected");
    let elapsed = started.elapsed();
    assert_eq!(busy + timed_out, 2000);
    assert!(
        timed_out <= MAX_CLIENTS && busy >= 2000 - MAX_CLIENTS,
        "busy {busy}, timed out {timed_out}"
    );

    let cpu = cpu_time(pid) - cpu_before;
    let (peak_kib, rss_kib) = daemon.memory_kib();
    let log_growth = rig.log_bytes() - log_before;
    eprintln!(
        "daemon: descriptor limit {daemon_limit}; over {elapsed:?}: CPU {cpu:?}, peak RSS {peak_kib} KiB, \
         RSS {rss_kib} KiB (before {rss_before} KiB), log +{log_growth} bytes, {} descriptors open (before {fds_before}); \
         busy {busy}, timed out {timed_out}; endless request stopped after {sent} bytes; the persistent sender \
         tried {attempts} times and got {endless_bytes} bytes written in all",
        open_fds(pid)
    );
    assert!(peak_kib < 32 * 1024, "peak RSS {peak_kib} KiB");
    assert!(
        cpu < elapsed / 4,
        "the daemon used {cpu:?} of CPU in {elapsed:?}"
    );
    assert!(
        log_growth < 8 * 1024,
        "the log grew by {log_growth} bytes:\n{}",
        &rig.ble.world.log()[log_before..]
    );
    assert!(
        wait_until(Duration::from_secs(5), || open_fds(pid) <= fds_before + 2),
        "descriptors still open: {} (before {fds_before})",
        open_fds(pid)
    );
}

#[test]
fn out_of_descriptors_the_daemon_pauses_accepting_instead_of_spinning_and_recovers() {
    let mut rig = Rig::new("");
    let daemon = rig.start();
    let pid = daemon.pid();
    rig.deliver_a_reading();
    let socket = rig.socket();
    // Leave the daemon four spare descriptors, so accepting fails with EMFILE long before the client cap.
    set_nofile_limit(pid, open_fds(pid) as u64 + 4);
    let log_before = rig.log_bytes();
    let cpu_before = cpu_time(pid);
    let started = Instant::now();
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&socket).expect("connect an idle client"))
        .collect();
    // The CPU rate is the subject: measured over a window of wall time.
    std::thread::sleep(Duration::from_secs(4));
    let cpu = cpu_time(pid) - cpu_before;
    let elapsed = started.elapsed();
    let log = rig.ble.world.log()[log_before..].to_string();
    eprintln!("out of descriptors: CPU {cpu:?} in {elapsed:?}; log:\n{log}");
    assert!(
        cpu < elapsed / 4,
        "the daemon used {cpu:?} of CPU in {elapsed:?}"
    );
    assert_eq!(
        log.matches("Control socket accept failed").count(),
        1,
        "one warning per minute:\n{log}"
    );
    assert!(log.contains("Too many open files"), "{log}");
    assert!(log.len() < 2048, "{log}");

    // Once the idle clients are gone, the daemon accepts again and still delivers.
    drop(idle);
    let mut served = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            served = raw_devices_request(&socket);
            served
                .first()
                .is_some_and(|event| event["event"] == "devices")
        }),
        "{served:?}\nlog:\n{}",
        rig.ble.world.log()
    );
    rig.deliver_a_reading();
}

/// Runs `vitalsd ARGS --config ...` as another user, with the socket's group (root's, since the daemon
/// runs as root here; `vitalsd` in production) so it can reach the socket at all.
fn vitalsd_as(rig: &Rig, uid: u32, gid: u32, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            "--groups=0",
            "--",
            BINARY,
        ])
        .args(args)
        .arg("--config")
        .arg(rig.ble.world.config_path())
        .env("TZ", "UTC")
        .output()
        .expect("run setpriv (util-linux)")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn audit_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains("Audit:")).collect()
}

#[test]
fn pair_and_unpair_are_audited_with_the_peer_and_reserved_to_the_admin_group() {
    // The `daemon` group (gid 1) stands in for a dedicated group; the `daemon` user has it as its
    // primary group, `nobody` does not have it at all.
    let rig = Rig::new("admin_group = \"daemon\"\n");
    // The world's directory must be reachable by the other users, as /run/vitalsd is by the group.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        rig.ble.world.dir.path(),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    rig.ble.sim.add_device(CUFF, devices::and_cuff());
    rig.ble.sim.add_device(OMRON, devices::omron_cuff(654_321));
    let _daemon = rig.start();

    // Root pairs through the daemon; the passkey never reaches the log.
    rig.ble.pair(CUFF);
    let paired = rig.ble.vitalsd(&["pair", OMRON, "--passkey", "654321"]);
    assert!(paired.status.success(), "{}", text(&paired));
    let log = rig.ble.world.log();
    let audit = audit_lines(&log);
    assert_eq!(audit.len(), 2, "{log}");
    for (line, address) in audit.iter().zip([CUFF, OMRON]) {
        for part in [
            "command=\"pair\"",
            &format!("address=\"{address}\""),
            "peer_uid=0",
            "peer_gid=0",
            "peer_pid=",
            "outcome=\"done\"",
            " INFO ",
        ] {
            assert!(line.contains(part), "{part} missing in {line}");
        }
    }
    assert!(!log.contains("654321"), "a passkey was logged:\n{log}");

    // `nobody` may list devices but not unpair: refused with a reason and an audit line.
    let listed = vitalsd_as(&rig, 65534, 65534, &["devices", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(CUFF), "{}", text(&listed));
    let refused = vitalsd_as(&rig, 65534, 65534, &["unpair", CUFF]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr)
            .contains("unpair needs root or membership of group \"daemon\" (ble.admin_group)"),
        "{}",
        text(&refused)
    );
    let log = rig.ble.world.log();
    let refusal = audit_lines(&log)
        .into_iter()
        .find(|line| line.contains("refused"))
        .unwrap_or_else(|| panic!("no audit line for the refusal:\n{log}"));
    for part in [
        "command=\"unpair\"",
        &format!("address=\"{CUFF}\""),
        "peer_uid=65534",
        "peer_gid=65534",
    ] {
        assert!(refusal.contains(part), "{part} missing in {refusal}");
    }
    assert_eq!(
        rig.ble.devices_json()["devices"].as_array().unwrap().len(),
        2
    );

    // The `daemon` user is in the group, so it may.
    let unpaired = vitalsd_as(&rig, 1, 1, &["unpair", CUFF]);
    assert!(unpaired.status.success(), "{}", text(&unpaired));
    let log = rig.ble.world.log();
    let line = audit_lines(&log)
        .into_iter()
        .find(|line| line.contains("command=\"unpair\"") && line.contains("outcome=\"done\""))
        .unwrap_or_else(|| panic!("no audit line for the unpair:\n{log}"));
    assert!(line.contains("peer_uid=1 "), "{line}");
    let devices = rig.ble.devices_json();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
    assert_eq!(devices["devices"][0]["address"], OMRON);

    // A failed state change is audited with its outcome too.
    let failed = rig.ble.vitalsd(&["unpair", "not-an-address"]);
    assert!(!failed.status.success(), "{}", text(&failed));
    let log = rig.ble.world.log();
    assert!(
        audit_lines(&log)
            .iter()
            .any(|line| line.contains("address=\"not-an-address\"")
                && line.contains("outcome=\"failed: ")),
        "{log}"
    );
    // Failures change nothing and anyone in the socket's group can cause them: they cannot flood the log.
    for _ in 0..20 {
        assert!(!rig
            .ble
            .vitalsd(&["unpair", "still-not-an-address"])
            .status
            .success());
    }
    let log = rig.ble.world.log();
    let failures = audit_lines(&log)
        .into_iter()
        .filter(|line| line.contains("outcome=\"failed: "))
        .count();
    assert_eq!(failures, 1, "{log}");
}

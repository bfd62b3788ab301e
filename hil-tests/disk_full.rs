//! A full disk: the state directory on a small tmpfs that fills while readings arrive. The daemon keeps
//! answering `status`, keeps pinging the watchdog, stops on SIGTERM within its stop timeout, and recovers
//! by itself when space returns, losing nothing it had stored. These tests mount filesystems: they need
//! root, and fail (never pass quietly) without it.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::bluetooth::{
    each_glucose_record_arrived_once, glucose, racp_requests, records_from, BleRig, GLUCOSE_METER,
};
use crate::delivery::{rig, Rig};
use crate::support::bluez::devices;
use crate::support::daemon::DaemonWorld;
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::subscriber::Subscriber;
use crate::support::{wait_for, wait_until};

/// The watchdog period the daemon is started with; it pings every half of it.
const WATCHDOG: Duration = Duration::from_secs(4);

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        assert!(
            root,
            "this test mounts a tmpfs as the daemon's state directory and needs root: run the HIL suite as root"
        );
        std::fs::create_dir_all(path).expect("create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            output.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a daemon that is still closing its files cannot keep the mount.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn free_bytes(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0)
}

/// Another program filling the filesystem: it takes all free space, and keeps taking what is freed,
/// until it is stopped and its file deleted.
struct Hog {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hog {
    fn start(dir: &Path) -> Hog {
        let path = dir.join("filler");
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_path, thread_stop) = (path.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&thread_path)
                .expect("create the filler");
            let chunk = vec![0x5Au8; 4096];
            while !thread_stop.load(Ordering::Relaxed) {
                match file.write(&chunk) {
                    Ok(_) => {}
                    // Full: the hog keeps taking whatever room comes free, a little at a time.
                    Err(error) if error.raw_os_error() == Some(libc::ENOSPC) => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(error) => panic!("filling the state directory failed: {error}"),
                }
            }
        });
        let hog = Hog {
            path,
            stop,
            thread: Some(thread),
        };
        assert!(
            wait_until(Duration::from_secs(10), || free_bytes(dir) < 8192),
            "the filler did not fill {}",
            dir.display()
        );
        hog
    }

    /// Stops taking space and deletes the filler: the space returns.
    fn free(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("filler thread");
        }
        std::fs::remove_file(&self.path).expect("delete the filler");
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The sd_notify datagrams the daemon sends, with their arrival times.
struct Notifications {
    seen: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Notifications {
    fn listen(path: &Path) -> Notifications {
        let socket = UnixDatagram::bind(path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_seen, thread_stop) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while !thread_stop.load(Ordering::Relaxed) {
                if let Ok(count) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..count]).into_owned();
                    thread_seen.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        Notifications {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    /// The last `STATUS=` line sent after `since`.
    fn status_since(&self, since: Instant) -> String {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| *at >= since)
            .flat_map(|(_, text)| text.lines().map(str::to_string).collect::<Vec<_>>())
            .rfind(|line| line.starts_with("STATUS="))
            .unwrap_or_default()
    }

    /// The longest time without a `WATCHDOG=1` between `from` and `to`, counting the edges.
    fn longest_watchdog_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut last = from;
        let mut longest = Duration::ZERO;
        for (at, text) in self.seen.lock().unwrap().iter() {
            if *at < from || *at > to || !text.lines().any(|line| line == "WATCHDOG=1") {
                continue;
            }
            longest = longest.max(*at - last);
            last = *at;
        }
        longest.max(to - last)
    }

    fn waiting_for_space(&self, since: Instant) -> bool {
        self.status_since(since).contains("waiting for space")
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The oximeter sending numbered spot checks, one every `every`, blocked like a real device's line when
/// the host stops reading; counts only frames that went out whole.
struct Feeder {
    next: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<SimulatedPort>,
}

impl Feeder {
    fn start(mut port: SimulatedPort, first: u32, every: Duration) -> Feeder {
        let next = Arc::new(AtomicU32::new(first));
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_next, thread_stop) = (next.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                let n = thread_next.load(Ordering::SeqCst);
                let frame = SpotCheck::numbered(n).frame();
                if port.write_waiting(&frame, || thread_stop.load(Ordering::Relaxed)) {
                    thread_next.store(n + 1, Ordering::SeqCst);
                }
                // The pace of the simulated device.
                std::thread::sleep(every);
            }
            port
        });
        Feeder { next, stop, thread }
    }

    /// Stops sending; the port, and the number of the next frame it would have sent.
    fn stop(self) -> (SimulatedPort, u32) {
        self.stop.store(true, Ordering::Relaxed);
        let port = self.thread.join().expect("feeder thread");
        (port, self.next.load(Ordering::SeqCst))
    }
}

fn notify_env(path: &Path) -> [(&'static str, String); 2] {
    [
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", WATCHDOG.as_micros().to_string()),
    ]
}

fn start_notified(world: &DaemonWorld, socket: &Path) -> crate::support::daemon::Daemon {
    let env = notify_env(socket);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    world.start_with_env(&env)
}

/// While the disk stays full for `duration`: `vitalsd status` answers every second and says the state
/// directory is low on space, the daemon runs, and the watchdog hears from it at least every half period.
fn stays_answering_while_full(
    world: &DaemonWorld,
    daemon: &mut crate::support::daemon::Daemon,
    notifications: &Notifications,
    duration: Duration,
) {
    let from = Instant::now();
    while from.elapsed() < duration {
        let status = world.status();
        assert_eq!(
            status["state_dir"]["low_on_space"], true,
            "status does not show the full state directory: {status}"
        );
        assert!(daemon.is_running(), "the daemon died:\n{}", world.log());
        // The full spell lasts `duration` by design; this samples it once a second.
        std::thread::sleep(Duration::from_secs(1));
    }
    let gap = notifications.longest_watchdog_gap(from, Instant::now());
    assert!(
        gap <= WATCHDOG / 2 + Duration::from_millis(700),
        "the watchdog went {gap:?} without a ping while the disk was full (period {WATCHDOG:?})"
    );
    assert!(
        notifications.waiting_for_space(from),
        "STATUS= does not say the outbox waits for space: {}",
        notifications.status_since(from)
    );
}

/// Waits until the subscriber has every reading numbered `0..sent` (they are distinct), then checks that
/// no reading arrived that the device did not send.
fn all_arrive(
    subscriber: &Subscriber,
    world: &DaemonWorld,
    port: &SimulatedPort,
    sent: u32,
    timeout: Duration,
) {
    let arrived = subscriber.wait_for_unique_readings(sent as usize, timeout);
    let written: BTreeSet<String> = (0..sent)
        .map(|n| SpotCheck::numbered(n).measured_at_utc())
        .collect();
    let delivered: BTreeSet<String> = subscriber
        .readings()
        .iter()
        .map(|r| r["measured_at"].as_str().expect("measured_at").to_string())
        .collect();
    let missing: Vec<usize> = (0..sent as usize)
        .filter(|n| !delivered.contains(&SpotCheck::numbered(*n as u32).measured_at_utc()))
        .collect();
    assert!(
        arrived,
        "{} of {sent} readings arrived, missing numbers {:?}; in the outbox {}; unread on the line {} bytes; \
         status {}\nlog tail:\n{}",
        subscriber.unique_reading_ids().len(),
        &missing[..missing.len().min(20)],
        world.outbox_keys().len(),
        port.unread(),
        world.status(),
        tail(&world.log())
    );
    assert_eq!(
        delivered, written,
        "the delivered readings are not the ones sent"
    );
    assert_eq!(subscriber.unique_reading_ids().len(), sent as usize);
}

/// The end of a daemon log, without the line per reading that would push everything else out of it.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| {
            !line.contains("Reading decoded.") && !line.contains("Bluetooth is not available")
        })
        .collect();
    let last_reading = log
        .lines()
        .rfind(|line| line.contains("Reading decoded."))
        .unwrap_or("no reading decoded");
    format!(
        "{}\nlast reading decoded: {last_reading}",
        lines[lines.len().saturating_sub(60)..].join("\n")
    )
}

#[test]
fn a_full_state_dir_keeps_the_daemon_answering_stops_on_sigterm_and_recovers_losing_nothing() {
    let Rig {
        broker,
        subscriber,
        world,
        port,
    } = rig();
    let _tmpfs = Tmpfs::mount(&world.state_dir(), "16m");
    let socket = world.dir.path().join("notify.sock");
    let notifications = Notifications::listen(&socket);
    let mut daemon = start_notified(&world, &socket);
    let feeder = Feeder::start(port, 0, Duration::from_millis(20));
    assert!(
        subscriber.wait_for_unique_readings(20, Duration::from_secs(30)),
        "no readings before the disk filled: {}",
        world.log()
    );

    // Full while readings arrive, then the space returns: everything the device sent arrives.
    let hog = Hog::start(&world.state_dir());
    let filled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || notifications
            .waiting_for_space(filled)),
        "the daemon never said it waits for space: {}\n{}",
        notifications.status_since(filled),
        tail(&world.log())
    );
    stays_answering_while_full(&world, &mut daemon, &notifications, Duration::from_secs(12));
    hog.free();
    let freed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let status = notifications.status_since(freed + Duration::from_millis(10));
            status.starts_with("STATUS=running")
        }),
        "the outbox did not take readings again after space returned: {}\n{}",
        notifications.status_since(freed),
        tail(&world.log())
    );
    let (port, sent) = feeder.stop();
    all_arrive(&subscriber, &world, &port, sent, Duration::from_secs(90));
    eprintln!("full for 12 s while {sent} readings were sent: all arrived once space returned");

    // Full again, and SIGTERM while it is: the daemon stops in time and keeps what was stored.
    let feeder = Feeder::start(port, sent, Duration::from_millis(20));
    assert!(
        wait_until(Duration::from_secs(10), || feeder
            .next
            .load(Ordering::SeqCst)
            > sent + 10),
        "the daemon does not read the device"
    );
    // A broker that takes no more readings (frozen: the connection stays up, nothing is acknowledged),
    // so that readings wait in the outbox when the disk fills and the stop comes.
    broker.freeze();
    assert!(
        wait_until(Duration::from_secs(10), || world.outbox_keys().len() >= 20),
        "readings do not wait in the outbox while the broker is frozen"
    );
    let hog = Hog::start(&world.state_dir());
    let filled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || notifications
            .waiting_for_space(filled)),
        "the daemon never said it waits for space the second time"
    );
    // Full for a while, with readings arriving, before the stop: a duration by nature.
    std::thread::sleep(Duration::from_secs(3));
    // What the outbox holds as the stop is asked for is durable already; none of it may be lost by the stop.
    let stored_at_stop: BTreeSet<String> = world.outbox_keys().into_iter().collect();
    assert!(
        stored_at_stop.len() >= 20,
        "{} readings stored",
        stored_at_stop.len()
    );
    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "vitalsd did not stop within 10 s of SIGTERM with the disk full; log tail:\n{}",
                tail(&world.log())
            )
        });
    let stop_took = asked.elapsed();
    let (_port, sent) = feeder.stop();
    hog.free();
    broker.thaw();
    // Durable: what was stored as the stop was asked for, whatever the outbox file holds after the stop,
    // and whatever was delivered before it.
    let mut durable: BTreeSet<String> = world.outbox_keys().into_iter().collect();
    durable.extend(subscriber.unique_reading_ids());
    durable.extend(stored_at_stop.iter().cloned());
    let _daemon = world.start();
    let delivered_all = wait_until(Duration::from_secs(60), || {
        subscriber.unique_reading_ids().is_superset(&durable)
    });
    let missing = durable.len()
        - durable
            .intersection(&subscriber.unique_reading_ids())
            .count();
    assert!(
        delivered_all,
        "{missing} stored readings never arrived; log tail:\n{}",
        tail(&world.log())
    );
    eprintln!(
        "SIGTERM while full: stopped in {stop_took:?} ({status}); {sent} readings sent, {} were stored ({} of \
         them as the stop was asked for) and all of them delivered; {} arrived in all (the rest were in memory \
         only when it stopped)",
        durable.len(),
        stored_at_stop.len(),
        subscriber.unique_reading_ids().len()
    );
}

#[test]
fn a_two_mebibyte_state_dir_filled_by_the_outbox_itself_or_by_another_program_recovers() {
    let Rig {
        mut broker,
        subscriber,
        world,
        port,
    } = rig();
    let _tmpfs = Tmpfs::mount(&world.state_dir(), "2m");
    let socket = world.dir.path().join("notify.sock");
    let notifications = Notifications::listen(&socket);
    broker.stop();
    let mut daemon = start_notified(&world, &socket);
    let feeder = Feeder::start(port, 0, Duration::from_millis(2));

    // The broker is away and the readings alone fill the filesystem (the WAL among them).
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(90), || notifications
            .waiting_for_space(started)),
        "the outbox never filled the 2 MiB filesystem: {}\n{}",
        world.status(),
        tail(&world.log())
    );
    let stored_when_full = world.status()["outbox"]["pending"].clone();
    stays_answering_while_full(&world, &mut daemon, &notifications, Duration::from_secs(5));
    broker.restart();
    let restarted = Instant::now();
    assert!(
        wait_until(Duration::from_secs(60), || notifications
            .status_since(restarted + Duration::from_millis(10))
            .starts_with("STATUS=running")),
        "the outbox did not recover once the broker took its readings: {}\n{}",
        world.status(),
        tail(&world.log())
    );

    // Another program fills it, then frees the space again.
    let hog = Hog::start(&world.state_dir());
    let filled = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || notifications
            .waiting_for_space(filled)),
        "the daemon never said it waits for space: {}",
        tail(&world.log())
    );
    stays_answering_while_full(&world, &mut daemon, &notifications, Duration::from_secs(5));
    hog.free();
    let (port, sent) = feeder.stop();
    all_arrive(&subscriber, &world, &port, sent, Duration::from_secs(120));
    assert!(
        wait_until(Duration::from_secs(20), || world.outbox_keys().is_empty()),
        "delivered readings stay in the outbox: {}\nlog tail:\n{}",
        world.status(),
        tail(&world.log())
    );
    eprintln!(
        "2 MiB state_dir: {stored_when_full} readings filled it; {sent} sent in all, all delivered"
    );
}

#[test]
fn starting_on_a_full_state_dir_says_so_and_exits() {
    let world = DaemonWorld::new();
    let (_no_broker, broker_port) = crate::support::silent_port();
    let _port = world.with_nonin_9560(&format!("mqtt://127.0.0.1:{broker_port}"));
    let _tmpfs = Tmpfs::mount(&world.state_dir(), "1m");
    let hog = Hog::start(&world.state_dir());
    drop(hog);
    let mut daemon = world.start();
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("vitalsd kept running on a full disk:\n{}", world.log()));
    assert!(!status.success(), "exit status {status}");
    let log = world.log();
    let expected = format!(
        "state_dir {} has no free space",
        world.state_dir().display()
    );
    assert!(
        log.contains(&expected) && log.contains("Free space on that filesystem"),
        "the log does not say what to do:\n{log}"
    );
}

/// What an operator asks once the daemon has stopped on a full disk, or on an SD card the kernel remounted
/// read-only: what is pending. `status` reads the outbox without the files SQLite would create beside it.
#[test]
fn status_reads_the_outbox_of_a_stopped_daemon_on_a_full_or_read_only_state_dir() {
    let world = DaemonWorld::new();
    let (_no_broker, broker_port) = crate::support::silent_port();
    let mut port = world.with_nonin_9560(&format!("mqtt://127.0.0.1:{broker_port}"));
    let tmpfs = Tmpfs::mount(&world.state_dir(), "2m");
    let mut daemon = world.start();
    for number in 0..3 {
        port.write(&SpotCheck::numbered(number).frame());
    }
    wait_for(
        "three readings in the outbox",
        Duration::from_secs(20),
        || world.outbox_keys().len() == 3,
        || tail(&world.log()),
    );
    daemon.terminate();
    let hog = Hog::start(&world.state_dir());
    let pending = |when: &str| {
        let output = world.command(&["status", "--json"]);
        assert!(
            output.status.success(),
            "status {when} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
        report["outbox"]["pending"].clone()
    };
    assert_eq!(pending("on a full state_dir"), 3);
    drop(hog);
    let remount = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&tmpfs.path)
        .status()
        .expect("run mount");
    assert!(
        remount.success(),
        "remounting the state_dir read-only failed"
    );
    assert_eq!(pending("on a read-only state_dir"), 3);
}

#[test]
fn a_full_state_dir_with_the_reserve_in_place_starts_with_its_room_and_delivers() {
    let Rig {
        broker: _broker,
        subscriber,
        world,
        mut port,
    } = rig();
    let _tmpfs = Tmpfs::mount(&world.state_dir(), "2m");
    let mut daemon = world.start();
    assert!(
        wait_until(Duration::from_secs(20), || world
            .state_dir()
            .join("outbox.reserve")
            .exists()),
        "no reserve was made: {}",
        tail(&world.log())
    );
    daemon.terminate();
    let hog = Hog::start(&world.state_dir());
    drop(hog);
    let mut daemon = world.start();
    port.write(&SpotCheck::numbered(0).frame());
    wait_for(
        "the daemon to release the outbox reserve",
        Duration::from_secs(20),
        || !world.state_dir().join("outbox.reserve").exists(),
        || tail(&world.log()),
    );
    assert!(
        daemon.is_running(),
        "the daemon did not start on the reserve's room:\n{}",
        tail(&world.log())
    );
    std::fs::remove_file(world.state_dir().join("filler")).unwrap();
    assert!(
        subscriber.wait_for_unique_readings(1, Duration::from_secs(20)),
        "the reading sent while full did not arrive once space returned:\n{}",
        tail(&world.log())
    );
}

/// A glucose meter's session whose records wait for space when SIGTERM comes: the daemon stops in time
/// (the session gives up waiting after the stop grace, noting nothing), and the next start asks the meter
/// again for the records that were never stored. Every record then arrives once.
#[test]
fn sigterm_while_a_glucose_meters_records_wait_for_space_stops_in_time_and_the_next_start_asks_for_them_again(
) {
    let rig = BleRig::new();
    let _tmpfs = Tmpfs::mount(&rig.world.state_dir(), "16m");
    rig.sim.add_device(GLUCOSE_METER, devices::glucose_meter());
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = (1..=2).map(glucose).collect()
    });
    rig.pair(GLUCOSE_METER);
    let mut daemon = rig.start();
    rig.wait_for_readings(GLUCOSE_METER, 2, Duration::from_secs(30));

    // The next transfer asks for records 3 and 4; the meter holds them back until the disk is full, so
    // they come while the session is open and the outbox has no room.
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records.extend([glucose(3), glucose(4)]);
        meter.glucose_gate = Some(3);
    });
    let asked_from_3 = |rig: &BleRig| {
        racp_requests(rig, GLUCOSE_METER)
            .iter()
            .filter(|r| **r == records_from(3))
            .count()
    };
    wait_for(
        "the hub to ask the meter for the records after 2",
        Duration::from_secs(30),
        || asked_from_3(&rig) >= 1,
        || {
            format!(
                "{:?}\n{}",
                racp_requests(&rig, GLUCOSE_METER),
                tail(&rig.world.log())
            )
        },
    );
    let hog = Hog::start(&rig.world.state_dir());
    rig.sim
        .device(GLUCOSE_METER, |meter| meter.glucose_gate = None);
    wait_for(
        "the meter's records to wait for space",
        Duration::from_secs(30),
        || {
            rig.world
                .log()
                .contains("The outbox disk is full: new readings wait")
        },
        || tail(&rig.world.log()),
    );

    let asked = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("send SIGTERM");
    let status = daemon.wait_exit(Duration::from_secs(10)).unwrap_or_else(|| {
        panic!(
            "vitalsd did not stop within 10 s of SIGTERM while a Bluetooth session waited for space; \
             log tail:\n{}",
            tail(&rig.world.log())
        )
    });
    let stop_took = asked.elapsed();
    // The session itself gave up waiting, rather than being cut off with the rest of the daemon.
    assert!(
        rig.world
            .log()
            .contains("Stopping while the outbox cannot take more"),
        "{}",
        tail(&rig.world.log())
    );

    hog.free();
    let _daemon = rig.start();
    wait_for(
        "the restarted hub to ask the meter again for the records after 2",
        Duration::from_secs(30),
        || asked_from_3(&rig) >= 2,
        || {
            format!(
                "{:?}\n{}",
                racp_requests(&rig, GLUCOSE_METER),
                tail(&rig.world.log())
            )
        },
    );
    rig.wait_for_readings(GLUCOSE_METER, 4, Duration::from_secs(60));
    // Record 5, read once the hub noted record 4, is the sentinel: a record published twice would have
    // come before it.
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records.push(glucose(5))
    });
    rig.wait_for_readings(GLUCOSE_METER, 5, Duration::from_secs(60));
    each_glucose_record_arrived_once(&rig, 5);
    eprintln!("SIGTERM while a glucose meter's records waited for space: stopped in {stop_took:?} ({status})");
}

/// An outbox from before the index of creation times, with a long backlog, on a state directory another
/// program has filled: the upgraded daemon starts on the reserve's room without building the index (which
/// needs megabytes), delivers the whole backlog, and builds the index at a later start with room.
#[test]
fn an_upgrade_with_a_long_backlog_on_a_full_state_dir_delivers_it_and_indexes_later() {
    const BACKLOG: usize = 100_000;
    let mut rig = rig();
    let _tmpfs = Tmpfs::mount(&rig.world.state_dir(), "256m");
    let mut daemon = rig.world.start();
    rig.wait_online();
    rig.port.write(&SpotCheck::numbered(0).frame());
    assert!(
        rig.subscriber
            .wait_for_unique_readings(1, Duration::from_secs(20)),
        "{}",
        tail(&rig.world.log())
    );
    wait_for(
        "the outbox reserve",
        Duration::from_secs(20),
        || rig.world.state_dir().join("outbox.reserve").exists(),
        || tail(&rig.world.log()),
    );
    assert!(daemon.terminate().success(), "{}", tail(&rig.world.log()));
    // The backlog: copies of the delivered reading, each with an id and key of its own.
    let first = rig.subscriber.readings().swap_remove(0);
    let (template, first_id) = (first.to_string(), first["id"].as_str().unwrap().to_string());
    {
        let (mut outbox, _) = vitalsd::outbox::Outbox::open(
            &rig.world.outbox_path(),
            vitalsd::outbox::OutboxOptions {
                max_pending: 1_000_000,
            },
            0,
        )
        .unwrap();
        for start in (0..BACKLOG).step_by(1_000) {
            let batch: Vec<vitalsd::outbox::NewRecord> = (start..start + 1_000)
                .map(|n| vitalsd::outbox::NewRecord {
                    key: format!("backlog-{n}"),
                    label: "pulse_oximetry".to_string(),
                    format: 1,
                    payload: template
                        .replace(&first_id[24..], &format!("{n:012x}"))
                        .into_bytes(),
                    created_at_ms: 1_765_000_000_000 + n as i64,
                    held: false,
                })
                .collect();
            outbox.append(&batch).unwrap();
        }
    }
    let index_exists = |world: &DaemonWorld| {
        rusqlite::Connection::open(world.outbox_path())
            .and_then(|c| {
                c.query_row(
                    "SELECT count(*) FROM sqlite_master WHERE name = 'record_created_at'",
                    [],
                    |row| row.get::<_, i64>(0),
                )
            })
            .unwrap()
            == 1
    };
    // As an older version left the file: no index, and no free pages it could be rebuilt in.
    let connection = rusqlite::Connection::open(rig.world.outbox_path()).unwrap();
    connection
        .execute_batch("DROP INDEX record_created_at; VACUUM;")
        .unwrap();
    drop(connection);
    assert!(!index_exists(&rig.world));
    drop(Hog::start(&rig.world.state_dir()));

    let mut daemon = rig.world.start();
    let delivered = rig
        .subscriber
        .wait_for_unique_readings(1 + BACKLOG, Duration::from_secs(180));
    assert!(
        delivered,
        "{} of {} readings arrived:\n{}",
        rig.subscriber.unique_reading_count(),
        1 + BACKLOG,
        tail(&rig.world.log())
    );
    assert!(daemon.is_running(), "{}", tail(&rig.world.log()));
    let deferred = crate::support::daemon_phrase("No room in the state directory to index");
    assert!(
        rig.world.log().contains(deferred),
        "{}",
        tail(&rig.world.log())
    );
    assert!(!index_exists(&rig.world));
    assert_eq!(rig.world.status()["outbox"]["pending"], 0);

    std::fs::remove_file(rig.world.state_dir().join("filler")).unwrap();
    assert!(daemon.terminate().success(), "{}", tail(&rig.world.log()));
    let _daemon = rig.world.start();
    wait_for(
        "the index to be built at the start with room",
        Duration::from_secs(30),
        || index_exists(&rig.world),
        || tail(&rig.world.log()),
    );
}

//! A broker that refuses the hub's readings (an access rule denies the readings topic, or one kind of it):
//! over MQTT 5 the readings stay in the outbox, the refusal is visible once per burst, the allowed kinds keep
//! flowing, and fixing the rule lets them drain without a restart; over MQTT 3.1.1 the broker's PUBACK hides
//! the refusal and the readings are lost. A broker that drops each connection at once (two hubs sharing a
//! client id) meets a growing reconnect delay, not a storm.

use std::time::{Duration, Instant};

use crate::support::broker::Broker;
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::serial_devices::tanita_line;
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

const READINGS: u32 = 20;

/// Anonymous clients (the test's subscriber) read everything; the hub's user may write its status only.
const ACL_STATUS_ONLY: &str =
    "topic read vitalsd/v1/#\n\nuser hub\ntopic readwrite vitalsd/v1/hub-test/status\n";
/// The same, with the readings topics the hub needs.
const ACL_FIXED: &str =
    "topic read vitalsd/v1/#\n\nuser hub\ntopic readwrite vitalsd/v1/hub-test/status\n\
                         topic write vitalsd/v1/hub-test/readings/#\n";

/// The hub may write its status and the Tanita's kinds, but not pulse oximetry: one kind denied, as a
/// mistaken rule would.
const ACL_DENY_PULSE_OXIMETRY: &str =
    "topic read vitalsd/v1/#\n\nuser hub\ntopic readwrite vitalsd/v1/hub-test/status\n\
     topic write vitalsd/v1/hub-test/readings/body_weight\n\
     topic write vitalsd/v1/hub-test/readings/body_composition\n";

struct Rig {
    broker: Broker,
    subscriber: Subscriber,
    world: DaemonWorld,
    port: SimulatedPort,
}

fn rig(protocol: &str) -> Rig {
    rig_with_acl(protocol, ACL_STATUS_ONLY)
}

fn rig_with_acl(protocol: &str, acl: &str) -> Rig {
    let broker = Broker::start_with_acl("hub", "s3cret", acl);
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
    let password_file = world.dir.path().join("mqtt-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let lines = [
        "username = \"hub\"".to_string(),
        format!("password_file = \"{}\"", password_file.display()),
        format!("protocol = \"{protocol}\""),
    ];
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    world.write_config(
        &broker.url(),
        &lines,
        &[SerialEntry::of(&port, "nonin-df13")],
    );
    Rig {
        broker,
        subscriber,
        world,
        port,
    }
}

impl Rig {
    /// The newest status document the subscriber saw.
    fn last_status(&self) -> Option<serde_json::Value> {
        self.subscriber
            .messages()
            .into_iter()
            .rev()
            .find(|m| m.topic.ends_with("/status"))
            .map(|m| m.json())
    }

    fn wait_online(&self) {
        let online = wait_until(Duration::from_secs(20), || {
            self.last_status().is_some_and(|s| s["state"] == "online")
        });
        assert!(
            online,
            "the hub never came online; log:\n{}",
            self.world.log()
        );
    }

    fn write_readings(&mut self) {
        for n in 0..READINGS {
            self.port.write(&SpotCheck::numbered(n).frame());
        }
    }

    fn log_lines_containing(&self, text: &str) -> usize {
        self.world
            .log()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    }
}

#[test]
fn mqtt5_a_refused_reading_stays_pending_and_drains_once_the_broker_allows_it() {
    let mut rig = rig("5");
    let _daemon = rig.world.start();
    rig.wait_online();
    rig.write_readings();

    let refused = wait_until(Duration::from_secs(30), || {
        let status = rig.world.status();
        status["outbox"]["pending"] == READINGS
            && status["uplink"]["refused"]["not_authorized"]
                .as_u64()
                .is_some_and(|n| n >= 1)
    });
    let status = rig.world.status();
    assert!(refused, "{status}\n{}", rig.world.log());
    assert_eq!(status["outbox"]["delivered_total"], 0, "{status}");
    assert_eq!(status["uplink"]["protocol"], "5", "{status}");
    assert!(
        status["uplink"]["refused_total"].as_u64() >= Some(1),
        "{status}"
    );
    assert!(
        status["uplink"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not_authorized")),
        "{status}"
    );
    assert!(rig.subscriber.readings().is_empty());
    let human = String::from_utf8(rig.world.command(&["status"]).stdout).unwrap();
    let line = human
        .lines()
        .find(|line| line.starts_with("refused by the broker"))
        .unwrap_or_else(|| panic!("no refusal line:\n{human}"));
    assert!(
        line.contains("not_authorized") && line.contains("MQTT 5"),
        "{line}"
    );

    // The refusal is on the retained status topic: a newcomer sees it at once.
    let shown = wait_until(Duration::from_secs(10), || {
        rig.last_status().is_some_and(|s| {
            s["uplink"]["refusing"] == true
                && s["uplink"]["refused"]["not_authorized"].as_u64() >= Some(1)
        })
    });
    assert!(shown, "{:?}", rig.last_status());
    let newcomer = Subscriber::start(rig.broker.port, "vitalsd/v1/hub-test/status");
    let retained = wait_until(Duration::from_secs(10), || {
        newcomer.messages().iter().any(|m| {
            m.retained && m.json()["uplink"]["refused"]["not_authorized"].as_u64() >= Some(1)
        })
    });
    assert!(retained, "{:?}", newcomer.messages());

    // No tight loop: while the broker refuses, the hub probes about once per backoff delay (at most 1 s
    // here, jittered by 20 %).
    let before = rig.world.status()["uplink"]["refused_total"]
        .as_u64()
        .unwrap();
    let started = Instant::now();
    // The rate is the subject: refusals counted over a window of wall time.
    std::thread::sleep(Duration::from_secs(4));
    let after = rig.world.status()["uplink"]["refused_total"]
        .as_u64()
        .unwrap();
    let seconds = started.elapsed().as_secs_f64();
    assert!(
        (after - before) as f64 <= seconds / 0.8 + 2.0,
        "{} refusals in {seconds:.1} s",
        after - before
    );
    // Logged at error level once for the burst, not once per refusal.
    assert_eq!(
        rig.log_lines_containing("The MQTT broker refused a reading"),
        1,
        "log:\n{}",
        rig.world.log()
    );
    assert!(rig.world.log().contains("ERROR"), "{}", rig.world.log());

    // The rule is fixed and the broker reloads it; the daemon keeps running.
    rig.broker.set_acl(ACL_FIXED);
    rig.broker.reload();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(READINGS as usize, Duration::from_secs(30)),
        "{} of {READINGS} arrived; status {}\nlog:\n{}",
        rig.subscriber.unique_reading_ids().len(),
        rig.world.status(),
        rig.world.log()
    );
    let drained = wait_until(Duration::from_secs(10), || {
        let status = rig.world.status();
        status["outbox"]["pending"] == 0 && status["outbox"]["delivered_total"] == READINGS
    });
    assert!(drained, "{}", rig.world.status());
    // A reading written now is the sentinel: a duplicate of an earlier one would have arrived before it.
    let sentinel = SpotCheck::numbered(READINGS).measured_at_utc();
    rig.port.write(&SpotCheck::numbered(READINGS).frame());
    assert!(
        rig.subscriber
            .wait_for_measured_at(&sentinel, Duration::from_secs(20)),
        "no sentinel reading; log:\n{}",
        rig.world.log()
    );
    let counts = rig.subscriber.reading_counts();
    assert_eq!(counts.len(), READINGS as usize + 1);
    assert!(counts.values().all(|&c| c == 1), "duplicates: {counts:?}");
    let expected: std::collections::BTreeSet<String> = (0..READINGS)
        .map(|n| SpotCheck::numbered(n).measured_at_utc())
        .collect();
    let measured: std::collections::BTreeSet<String> = rig
        .subscriber
        .readings()
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap().to_string())
        .filter(|measured| *measured != sentinel)
        .collect();
    assert_eq!(measured, expected, "other readings than were sent");
    // The burst ends once the broker has refused nothing for the quiet period (2 s here).
    let back = wait_until(Duration::from_secs(10), || {
        rig.last_status().is_some_and(|s| {
            s["uplink"]["refusing"] == false && s["outbox"]["delivered_total"].as_u64() >= Some(1)
        })
    });
    assert!(back, "{:?}", rig.last_status());
    assert!(rig.world.log().contains("takes readings again"));
}

#[test]
fn mqtt311_cannot_see_a_refusal_so_refused_readings_are_reported_delivered_and_lost() {
    let mut rig = rig("3.1.1");
    let _daemon = rig.world.start();
    rig.wait_online();
    rig.write_readings();

    // The broker acknowledges every denied publish, so the daemon counts them delivered and deletes them.
    let reported_delivered = wait_until(Duration::from_secs(30), || {
        let status = rig.world.status();
        status["outbox"]["delivered_total"] == READINGS && status["outbox"]["pending"] == 0
    });
    let status = rig.world.status();
    assert!(reported_delivered, "{status}\n{}", rig.world.log());
    assert_eq!(status["uplink"]["protocol"], "3.1.1");
    assert_eq!(status["uplink"]["refused_total"], 0, "{status}");
    let human = String::from_utf8(rig.world.command(&["status"]).stdout).unwrap();
    assert!(human.contains("not detectable over MQTT 3.1.1"), "{human}");
    assert!(!rig
        .world
        .log()
        .contains(crate::support::daemon_phrase("refused a reading")));

    // Not one reached the subscriber, and fixing the rule brings none back: they are gone.
    // Readings written after the fix are sentinels: one of the lost readings, had it come back, would have
    // arrived before them. Mosquitto applies a reload when it gets to it, so sentinels are written until
    // one gets through.
    rig.broker.set_acl(ACL_FIXED);
    rig.broker.reload();
    let mut next = READINGS;
    let through = wait_until(Duration::from_secs(20), || {
        rig.port.write(&SpotCheck::numbered(next).frame());
        next += 1;
        // The pace of the sentinels: a few a second until the reload has taken effect.
        std::thread::sleep(Duration::from_millis(200));
        !rig.subscriber.readings().is_empty()
    });
    assert!(
        through,
        "no sentinel got through; log:\n{}",
        rig.world.log()
    );
    let lost: std::collections::BTreeSet<String> = (0..READINGS)
        .map(|n| SpotCheck::numbered(n).measured_at_utc())
        .collect();
    let readings = rig.subscriber.readings();
    assert!(
        readings
            .iter()
            .all(|r| !lost.contains(r["measured_at"].as_str().unwrap())),
        "{readings:?}"
    );
    // The sentinels written after the first that got through drain too; nothing else is left.
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .world
            .outbox_keys()
            .is_empty()),
        "{}",
        rig.world.status()
    );
}

/// The broker denies one reading kind and takes the others, interleaved: the refusal is one burst (one
/// error line, one status change), the accepted kinds are not held up, and fixing the rule drains the
/// denied kind and, after the quiet period, ends the burst.
#[test]
fn mqtt5_a_broker_denying_one_kind_gives_one_burst_and_the_other_kinds_keep_flowing() {
    const PAIRS: u32 = 10;
    let broker = Broker::start_with_acl("hub", "s3cret", ACL_DENY_PULSE_OXIMETRY);
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut nonin = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
    let mut tanita = SimulatedPort::plug_in(&world.by_id("usb-FTDI_Tanita_BC-418-if00-port0"));
    let password_file = world.dir.path().join("mqtt-password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let password_line = format!("password_file = \"{}\"", password_file.display());
    world.write_config(
        &broker.url(),
        &["username = \"hub\"", &password_line, "protocol = \"5\""],
        &[
            SerialEntry {
                path: nonin.link().to_path_buf(),
                protocol: "nonin-df13",
                id: None,
                extra: vec![],
            },
            SerialEntry {
                path: tanita.link().to_path_buf(),
                protocol: "tanita",
                id: None,
                extra: vec![],
            },
        ],
    );
    let _daemon = world.start();
    let statuses = || {
        subscriber
            .messages()
            .into_iter()
            .filter(|m| m.topic.ends_with("/status"))
            .map(|m| m.json())
            .collect::<Vec<_>>()
    };
    let online = wait_until(Duration::from_secs(20), || {
        statuses().iter().any(|s| s["state"] == "online")
    });
    assert!(online, "the hub never came online; log:\n{}", world.log());

    // A denied pulse oximetry reading and an allowed Tanita measurement (two readings) in turn.
    let status_messages_before = statuses().len();
    for n in 0..PAIRS {
        nonin.write(&SpotCheck::numbered(n).frame());
        tanita.write(&tanita_line(70.0 + f64::from(n), 20.0));
        // The pace of the simulated devices: the kinds interleave over a few seconds.
        std::thread::sleep(Duration::from_millis(300));
    }
    let written = Instant::now();
    let tanita_readings = || {
        subscriber
            .readings()
            .into_iter()
            .filter(|r| r["device"]["protocol"] == "tanita")
            .count()
    };
    let flowed = wait_until(Duration::from_secs(10), || {
        tanita_readings() >= 2 * PAIRS as usize
    });
    assert!(
        flowed,
        "{} of {} Tanita readings arrived; status {}\nlog:\n{}",
        tanita_readings(),
        2 * PAIRS,
        world.status(),
        world.log()
    );
    // Not held up by the refusals: they arrive about as soon as they are written.
    assert!(
        written.elapsed() < Duration::from_secs(3),
        "the allowed kinds took {:?}",
        written.elapsed()
    );

    // Retry passes go on, the allowed kinds' deliveries are committed, and the burst lasts throughout.
    let retried = wait_until(Duration::from_secs(20), || {
        let status = world.status();
        status["uplink"]["refused"]["not_authorized"].as_u64() > Some(u64::from(PAIRS))
            && status["outbox"]["pending"] == PAIRS
    });
    assert!(retried, "no retry pass: {}", world.status());
    let status = world.status();
    assert_eq!(status["outbox"]["pending"], PAIRS, "{status}");
    assert!(
        status["uplink"]["refused"]["not_authorized"].as_u64() >= Some(u64::from(PAIRS)),
        "{status}"
    );
    let log = world.log();
    let lines = |text: &str| log.lines().filter(|l| l.contains(text)).count();
    assert_eq!(lines("The MQTT broker refused a reading"), 1, "log:\n{log}");
    assert_eq!(lines("takes readings again"), 0, "log:\n{log}");
    // The refusal changed the status topic once, not once or twice per refused reading.
    let during = statuses()[status_messages_before..].to_vec();
    assert!(
        during.len() <= 2,
        "{} status messages: {during:?}",
        during.len()
    );
    assert!(
        during
            .last()
            .is_some_and(|s| s["uplink"]["refusing"] == true),
        "{during:?}"
    );

    // The rule is fixed: the denied kind drains, and the burst ends once nothing is refused for the
    // quiet period (twice `reconnect_max_s`, 2 s here).
    broker.set_acl(ACL_FIXED);
    broker.reload();
    let drained = wait_until(Duration::from_secs(20), || {
        world.status()["outbox"]["pending"] == 0
    });
    assert!(drained, "{}\nlog:\n{}", world.status(), world.log());
    let ended = wait_until(Duration::from_secs(10), || {
        statuses()
            .last()
            .is_some_and(|s| s["uplink"]["refusing"] == false)
    });
    assert!(ended, "{:?}\nlog:\n{}", statuses().last(), world.log());
    let log = world.log();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("takes readings again"))
            .count(),
        1,
        "log:\n{log}"
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("The MQTT broker refused a reading"))
            .count(),
        1,
        "log:\n{log}"
    );
}

/// Two hubs configured with one client id: the broker drops each connection as soon as the other hub
/// connects. Neither hub reconnects in a tight loop (only a connection that stayed up resets the backoff),
/// and the identical error is logged once a minute, not once per reconnect.
#[test]
fn two_hubs_sharing_a_client_id_back_off_instead_of_reconnecting_in_a_storm() {
    let broker = Broker::start();
    let worlds = [DaemonWorld::new(), DaemonWorld::new()];
    for world in &worlds {
        world.write_config(&broker.url(), &[], &[]);
    }
    let _daemons: Vec<_> = worlds.iter().map(DaemonWorld::start).collect();
    let count = |world: &DaemonWorld, text: &str| {
        world
            .log()
            .lines()
            .filter(|line| line.contains(text))
            .count()
    };
    let connected = wait_until(Duration::from_secs(20), || {
        worlds
            .iter()
            .all(|w| count(w, "Connected to the MQTT broker") >= 1)
    });
    assert!(connected, "log:\n{}", worlds[0].log());
    let before: Vec<usize> = worlds
        .iter()
        .map(|w| count(w, "Connected to the MQTT broker"))
        .collect();
    let started = Instant::now();
    // The rate is the subject: reconnects counted over a window of wall time.
    std::thread::sleep(Duration::from_secs(6));
    let seconds = started.elapsed().as_secs_f64();
    for (world, before) in worlds.iter().zip(before) {
        let log = world.log();
        // The delay grows to `reconnect_max_s` (1 s here, jittered by 20 %) and stays there; a storm
        // reconnects every `reconnect_min_ms` (200 ms here) or faster.
        let reconnects = count(world, "Connected to the MQTT broker") - before;
        assert!(
            reconnects as f64 <= seconds / 0.8 + 2.0,
            "{reconnects} reconnects in {seconds:.1} s; log:\n{log}"
        );
        let warnings =
            count(world, "Lost the MQTT connection") + count(world, "Cannot reach the MQTT broker");
        assert!(warnings <= 2, "{warnings} connection warnings; log:\n{log}");
    }
}

/// Written for the FHIR output's first users: the broker's rule still names only the readings topics.
#[test]
fn mqtt5_bundles_a_broker_does_not_allow_wait_while_the_readings_flow_and_drain_once_it_does() {
    let mut rig = rig_with_acl("5", ACL_FIXED);
    rig.world.append_config(crate::fhir::BOTH_FORMATS);
    let _daemon = rig.world.start();
    rig.wait_online();
    rig.write_readings();
    let bundles = |rig: &Rig| {
        rig.subscriber
            .messages()
            .iter()
            .filter(|m| m.topic.contains("/fhir/"))
            .count()
    };
    assert!(
        rig.subscriber
            .wait_for_unique_readings(READINGS as usize, Duration::from_secs(30)),
        "the readings did not flow past the refused Bundles; log:\n{}",
        rig.world.log()
    );
    let refused = wait_until(Duration::from_secs(20), || {
        let status = rig.world.status();
        status["outbox"]["pending"] == READINGS
            && status["uplink"]["refused"]["not_authorized"].as_u64() >= Some(1)
    });
    assert!(refused, "{}\n{}", rig.world.status(), rig.world.log());
    assert_eq!(bundles(&rig), 0);

    let mut allowed = ACL_FIXED.to_string();
    allowed.push_str("topic write vitalsd/v1/hub-test/fhir/#\n");
    rig.broker.set_acl(&allowed);
    rig.broker.reload();
    let drained = wait_until(Duration::from_secs(30), || {
        rig.world.status()["outbox"]["pending"] == 0 && bundles(&rig) >= READINGS as usize
    });
    assert!(drained, "{}\n{}", rig.world.status(), rig.world.log());
    assert_eq!(
        rig.world.status()["outbox"]["delivered_total"],
        2 * READINGS
    );
}

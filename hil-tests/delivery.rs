//! Readings reach the broker: the right topic and values, buffering while the broker is away, and
//! deduplication of records a device sends twice.

use std::time::Duration;

use crate::support::broker::Broker;
use crate::support::daemon::DaemonWorld;
use crate::support::latency::LatencyRelay;
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::subscriber::Subscriber;
use crate::support::wait_for;

pub struct Rig {
    pub broker: Broker,
    pub subscriber: Subscriber,
    pub world: DaemonWorld,
    pub port: SimulatedPort,
}

/// A broker, a subscriber to everything under the prefix, and a DF13 oximeter on a pseudo-terminal.
pub fn rig() -> Rig {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let port = world.with_nonin_9560(&broker.url());
    Rig {
        broker,
        subscriber,
        world,
        port,
    }
}

impl Rig {
    /// Waits until the hub's online status reaches the subscriber: the daemon is connected.
    #[track_caller]
    pub fn wait_online(&self) {
        wait_for(
            "the hub's online status",
            Duration::from_secs(20),
            || {
                self.subscriber
                    .messages()
                    .iter()
                    .any(|m| m.topic.ends_with("/status") && m.json()["state"] == "online")
            },
            || self.world.log(),
        );
    }

    /// Waits until the reading measured at `measured_at` arrives: a sentinel written after what is checked.
    #[track_caller]
    pub fn wait_for_reading_measured_at(&self, measured_at: &str) {
        assert!(
            self.subscriber
                .wait_for_measured_at(measured_at, Duration::from_secs(20)),
            "no reading measured at {measured_at}; log:\n{}",
            self.world.log()
        );
    }
}

#[test]
fn spot_check_arrives_on_the_right_topic_with_the_right_values() {
    let mut rig = rig();
    let _daemon = rig.world.start();
    let record = SpotCheck {
        time: (2024, 3, 15, 10, 20, 30),
        pulse_rate: 72,
        spo2: 97,
        from_memory: false,
    };
    rig.port.write(&record.frame());
    assert!(
        rig.subscriber
            .wait_for_unique_readings(1, Duration::from_secs(20)),
        "no reading; log:\n{}",
        rig.world.log()
    );

    let messages: Vec<_> = rig
        .subscriber
        .messages()
        .into_iter()
        .filter(|m| m.topic.contains("/readings/"))
        .collect();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0].topic,
        "vitalsd/v1/hub-test/readings/pulse_oximetry"
    );
    assert!(!messages[0].retained, "readings must not be retained");
    let reading = messages[0].json();
    crate::assert_valid_reading(&reading);
    assert_eq!(reading["hub_id"], "hub-test");
    assert_eq!(reading["kind"], "pulse_oximetry");
    assert_eq!(reading["device"]["id"], "serial:usb-Nonin_9560-if00-port0");
    assert_eq!(reading["device"]["protocol"], "nonin-df13");
    assert_eq!(reading["measured_at"], "2024-03-15T10:20:30+00:00");
    assert_eq!(reading["time_source"], "device");
    assert_eq!(
        reading["values"],
        serde_json::json!([
            {"name": "spo2", "value": 97, "unit": "%", "mdc": 150456, "loinc": "2708-6"},
            {"name": "pulse_rate", "value": 72, "unit": "/min", "mdc": 149530, "loinc": "8867-4"}
        ])
    );
    assert_eq!(reading["raw"], hex::encode(record.frame()));

    let status: Vec<_> = rig
        .subscriber
        .messages()
        .into_iter()
        .filter(|m| m.topic.ends_with("/status"))
        .collect();
    assert!(
        status
            .iter()
            .any(|m| m.retained || m.json()["state"] == "online"),
        "no online status"
    );
    assert_eq!(
        status.last().expect("a status message").json()["state"],
        "online"
    );
}

#[test]
fn readings_wait_in_the_outbox_while_the_broker_is_down_then_arrive_once_each() {
    let mut rig = rig();
    let _daemon = rig.world.start();
    rig.wait_online();
    // Stopped, not killed, so the subscriber's session is saved for certain rather than by a lucky autosave.
    rig.broker.stop();
    for n in 0..30 {
        rig.port.write(&SpotCheck::numbered(n).frame());
    }
    let queued = crate::support::wait_until(Duration::from_secs(20), || {
        rig.world.status()["outbox"]["pending"] == 30
    });
    assert!(
        queued,
        "readings were not queued: {}\n{}",
        rig.world.status(),
        rig.world.log()
    );
    let status = rig.world.status();
    assert!(
        status["uplink"]["last_error"].is_string(),
        "no broker error reported: {status}"
    );
    assert_eq!(status["uplink"]["delivered_since_error"], false, "{status}");

    rig.broker.restart();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(30, Duration::from_secs(30)),
        "log:\n{}",
        rig.world.log()
    );
    let counts = rig.subscriber.reading_counts();
    assert_eq!(counts.len(), 30);
    assert!(
        counts.values().all(|&c| c == 1),
        "duplicates after a clean reconnect: {counts:?}"
    );
    for reading in rig.subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
    assert!(crate::support::wait_until(Duration::from_secs(10), || rig
        .world
        .status()["outbox"]["pending"]
        == 0));
    let status = rig.world.status();
    assert_eq!(status["outbox"]["delivered_total"], 30);
    // The error is still the last one, and status says it is over.
    assert_eq!(status["uplink"]["delivered_since_error"], true, "{status}");
    let text = String::from_utf8_lossy(&rig.world.command(&["status"]).stdout).into_owned();
    assert!(text.contains("; readings were delivered since"), "{text}");
}

#[test]
fn readings_acknowledged_before_a_stop_are_not_published_again_and_their_rows_go_once_quiet() {
    let mut rig = rig();
    let mut daemon = rig.world.start();
    rig.wait_online();
    rig.broker.stop();
    for n in 0..30 {
        rig.port.write(&SpotCheck::numbered(n).frame());
    }
    assert!(
        crate::support::wait_until(Duration::from_secs(20), || rig.world.status()["outbox"]
            ["pending"]
            == 30),
        "readings were not queued: {}",
        rig.world.status()
    );
    assert!(daemon.terminate().success(), "{}", rig.world.log());
    // The outbox as a hub leaves it when the broker had acknowledged the first twenty just before the
    // stop: in-order acknowledgements only move the outbox's mark, and the rows wait for a quiet moment
    // that never came.
    let acknowledged: Vec<String> = {
        let (mut outbox, _) = vitalsd::outbox::Outbox::open(
            &rig.world.outbox_path(),
            vitalsd::outbox::OutboxOptions { max_pending: 1_000 },
            0,
        )
        .unwrap();
        let queued = outbox.fetch_after(0, 30).unwrap();
        assert_eq!(queued.len(), 30);
        let seqs: Vec<i64> = queued[..20].iter().map(|record| record.seq).collect();
        assert_eq!(outbox.acknowledge(&seqs, 1).unwrap(), 20);
        assert_eq!(outbox.unremoved(), 20, "the rows were removed at once");
        queued[..20]
            .iter()
            .map(|record| record.key.clone())
            .collect()
    };
    assert_eq!(rig.world.outbox_keys().len(), 10);

    rig.broker.restart();
    let _daemon = rig.world.start();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(10, Duration::from_secs(30)),
        "log:\n{}",
        rig.world.log()
    );
    let removed = crate::support::wait_until(Duration::from_secs(20), || {
        rusqlite::Connection::open(rig.world.outbox_path())
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM record", [], |row| {
                    row.get::<_, i64>(0)
                })
            })
            .is_ok_and(|rows| rows == 0)
    });
    assert!(removed, "the delivered rows stayed: {}", rig.world.log());
    let counts = rig.subscriber.reading_counts();
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(counts.values().all(|&c| c == 1), "{counts:?}");
    assert!(
        acknowledged.iter().all(|key| !counts.contains_key(key)),
        "an acknowledged reading was published again: {counts:?}"
    );
    let status = rig.world.status();
    assert_eq!(status["outbox"]["pending"], 0, "{status}");
    assert_eq!(status["outbox"]["delivered_total"], 30, "{status}");
}

#[test]
fn the_same_stored_records_dumped_twice_are_queued_once() {
    let mut rig = rig();
    let _daemon = rig.world.start();
    for n in 0..20 {
        rig.port.write(&SpotCheck::numbered(n).frame());
    }
    assert!(
        rig.subscriber
            .wait_for_unique_readings(20, Duration::from_secs(20)),
        "log:\n{}",
        rig.world.log()
    );
    // The device dumps its memory again, this time flagged as sent from memory, then one new record.
    for n in 0..20 {
        rig.port.write(
            &SpotCheck {
                from_memory: true,
                ..SpotCheck::numbered(n)
            }
            .frame(),
        );
    }
    // The new record is the sentinel: a replayed record published again would have come before it.
    let sentinel = SpotCheck::numbered(1000).measured_at_utc();
    rig.port.write(&SpotCheck::numbered(1000).frame());
    rig.wait_for_reading_measured_at(&sentinel);
    let status = rig.world.status();
    assert_eq!(status["outbox"]["duplicates_total"], 20, "{status}");
    assert_eq!(rig.subscriber.unique_reading_count(), 21);
    // Delivery is at least once: after a reconnection of either side the broker rightly sends again
    // what was not yet acknowledged. Without one, a second arrival can only be a replay published again.
    let reconnected = rig.subscriber.connections() > 1 || !status["uplink"]["last_error"].is_null();
    if !reconnected {
        assert_eq!(
            rig.subscriber.readings().len(),
            21,
            "a replayed record was published again: {:?}\nlog:\n{}",
            rig.subscriber.reading_counts(),
            rig.world.log()
        );
    }
    assert!(crate::support::wait_until(Duration::from_secs(10), || rig
        .world
        .status()["outbox"]["delivered_total"]
        == 21));
}

#[test]
fn a_backlog_drains_over_a_slow_link_to_a_broker_that_limits_publishes_in_flight() {
    // Mosquitto tells an MQTT 5 client to keep at most 20 publishes unacknowledged. Over a link with a
    // real round trip the acknowledgements of a backlog's first publishes come long after the client
    // wants to send the twentieth; the packet ids must not run into those still awaiting their PUBACK.
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/+/readings/#");
    let relay = LatencyRelay::start(broker.port, Duration::from_millis(40), false);
    let world = DaemonWorld::new();
    let mut port = world.with_nonin_9560(&relay.url());
    let _daemon = world.start();
    for n in 0..200 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    wait_for(
        "the backlog in the outbox",
        Duration::from_secs(30),
        || world.status()["outbox"]["pending"] == 200,
        || world.status().to_string(),
    );
    relay.open();
    wait_for(
        "the backlog delivered",
        Duration::from_secs(60),
        || world.status()["outbox"]["delivered_total"] == 200,
        || format!("{}\nlog:\n{}", world.status(), world.log()),
    );
    assert!(!world.log().contains("collision"), "log:\n{}", world.log());
    assert!(subscriber.wait_for_unique_readings(200, Duration::from_secs(10)));
    let counts = subscriber.reading_counts();
    assert!(
        counts.values().all(|&c| c == 1),
        "readings sent again without a reconnection: {counts:?}"
    );
}

#[test]
fn readings_sent_into_a_connection_that_died_silently_arrive_over_the_next_one() {
    // A home router that loses its uplink closes nothing: the hub's connection looks open while every byte
    // is lost. The hub must notice by its keep-alive (5 s in the tests), connect again, and send again
    // what was never acknowledged.
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/+/readings/#");
    let relay = LatencyRelay::start(broker.port, Duration::from_millis(5), true);
    let world = DaemonWorld::new();
    let mut port = world.with_nonin_9560(&relay.url());
    let _daemon = world.start();
    for n in 0..10 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    assert!(subscriber.wait_for_unique_readings(10, Duration::from_secs(20)));
    relay.cut();
    for n in 10..20 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    wait_for(
        "the readings sent into the dead connection, over a new one",
        Duration::from_secs(60),
        || subscriber.unique_reading_count() == 20,
        || format!("{}\nlog:\n{}", world.status(), world.log()),
    );
    wait_for(
        "the outbox emptied",
        Duration::from_secs(10),
        || world.status()["outbox"]["delivered_total"] == 20,
        || world.status().to_string(),
    );
    let status = world.status();
    assert_eq!(status["outbox"]["pending"], 0, "{status}");
    let error = status["uplink"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("no reply to a keep-alive ping"), "{status}");
}

#[test]
fn a_stop_while_the_connection_is_silently_dead_is_prompt_and_keeps_the_unacknowledged_readings() {
    let broker = Broker::start();
    let relay = LatencyRelay::start(broker.port, Duration::from_millis(5), true);
    let world = DaemonWorld::new();
    let mut port = world.with_nonin_9560(&relay.url());
    let mut daemon = world.start();
    port.write(&SpotCheck::numbered(0).frame());
    wait_for(
        "the first reading delivered",
        Duration::from_secs(20),
        || world.status()["outbox"]["delivered_total"] == 1,
        || world.log(),
    );
    relay.cut();
    for n in 1..6 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    wait_for(
        "five readings stored",
        Duration::from_secs(10),
        || world.status()["outbox"]["pending"] == 5,
        || world.status().to_string(),
    );
    // The stop waits for PUBACKs that cannot come, but only briefly: terminate allows 10 s.
    assert!(daemon.terminate().success(), "log:\n{}", world.log());
    let status = world.status();
    assert_eq!(status["outbox"]["pending"], 5, "{status}");
    assert_eq!(status["outbox"]["delivered_total"], 1, "{status}");
}

#[test]
fn records_dumped_twice_while_offline_are_queued_once() {
    let mut rig = rig();
    rig.broker.kill();
    let _daemon = rig.world.start();
    for _ in 0..2 {
        for n in 0..10 {
            rig.port.write(&SpotCheck::numbered(n).frame());
        }
    }
    let settled = crate::support::wait_until(Duration::from_secs(20), || {
        rig.world.status()["outbox"]["duplicates_total"] == 10
    });
    assert!(settled, "{}", rig.world.status());
    assert_eq!(rig.world.status()["outbox"]["pending"], 10);
    assert_eq!(rig.world.outbox_keys().len(), 10);
}

#[test]
fn a_clean_stop_publishes_offline_and_a_killed_hub_is_marked_lost_by_the_broker() {
    let rig = rig();
    let mut daemon = rig.world.start();
    let online = crate::support::wait_until(Duration::from_secs(20), || {
        rig.subscriber
            .messages()
            .iter()
            .any(|m| m.topic.ends_with("/status") && m.json()["state"] == "online")
    });
    assert!(online);
    assert!(
        daemon.terminate().success(),
        "vitalsd exited non-zero on SIGTERM; log:\n{}",
        rig.world.log()
    );
    let offline = crate::support::wait_until(Duration::from_secs(10), || {
        rig.subscriber
            .messages()
            .iter()
            .rfind(|m| m.topic.ends_with("/status"))
            .is_some_and(|m| m.json()["state"] == "offline")
    });
    assert!(
        offline,
        "no offline status after SIGTERM: {:?}\nlog:\n{}",
        rig.subscriber
            .messages()
            .iter()
            .filter(|m| m.topic.ends_with("/status"))
            .map(|m| (m.retained, m.json()["state"].clone()))
            .collect::<Vec<_>>(),
        rig.world.log() + "\nbroker:\n" + &rig.broker.log()
    );

    let mut daemon = rig.world.start();
    assert!(crate::support::wait_until(Duration::from_secs(20), || {
        rig.subscriber
            .messages()
            .iter()
            .rfind(|m| m.topic.ends_with("/status"))
            .is_some_and(|m| m.json()["state"] == "online")
    }));
    daemon.kill9();
    // Mosquitto sends the will after 1.5 keep-alive periods (keep_alive_s = 5 in the test config).
    let lost = crate::support::wait_until(Duration::from_secs(15), || {
        rig.subscriber
            .messages()
            .iter()
            .rfind(|m| m.topic.ends_with("/status"))
            .is_some_and(|m| m.json()["state"] == "lost")
    });
    assert!(lost, "the last will did not mark the hub lost");
}

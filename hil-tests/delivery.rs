//! Readings reach the broker: the right topic and values, buffering while the broker is away, and
//! deduplication of records a device sends twice.

use std::time::Duration;

use crate::support::broker::Broker;
use crate::support::daemon::DaemonWorld;
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
    assert_eq!(rig.world.status()["outbox"]["delivered_total"], 30);
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
    assert_eq!(
        rig.subscriber.readings().len(),
        21,
        "a replayed record was published again"
    );
    assert_eq!(rig.world.status()["outbox"]["duplicates_total"], 20);
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
            .last()
            .is_some_and(|m| m.topic.ends_with("/status") && m.json()["state"] == "offline")
    });
    assert!(offline, "no offline status after SIGTERM");

    let mut daemon = rig.world.start();
    assert!(crate::support::wait_until(Duration::from_secs(20), || {
        rig.subscriber
            .messages()
            .last()
            .is_some_and(|m| m.json()["state"] == "online")
    }));
    daemon.kill9();
    // Mosquitto sends the will after 1.5 keep-alive periods (keep_alive_s = 5 in the test config).
    let lost = crate::support::wait_until(Duration::from_secs(15), || {
        rig.subscriber
            .messages()
            .last()
            .is_some_and(|m| m.topic.ends_with("/status") && m.json()["state"] == "lost")
    });
    assert!(lost, "the last will did not mark the hub lost");
}

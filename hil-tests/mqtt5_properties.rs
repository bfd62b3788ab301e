//! What MQTT 5 gives the hub for free (issue 10), as a backend's MQTT 5 client sees it: a reading names its
//! payload schema in the user property `schema` and never expires at the broker, the status document carries
//! no properties, and once the hub is gone the broker keeps its last status but no session for it.

use std::time::Duration;

use serde_json::json;

use crate::support::broker::Broker;
use crate::support::daemon::{Daemon, DaemonWorld, SerialEntry};
use crate::support::mqtt5::{session_present, Delivered, PropertySubscriber};
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;

/// Set in the configuration rather than left to the default, because the session probe connects as it.
const HUB_CLIENT_ID: &str = "vitalsd-hub-test-v5";
const STATUS_TOPIC: &str = "vitalsd/v1/hub-test/status";
const READING_TOPIC: &str = "vitalsd/v1/hub-test/readings/pulse_oximetry";

struct Rig {
    broker: Broker,
    world: DaemonWorld,
    port: SimulatedPort,
}

/// A broker and a daemon that reads a DF13 oximeter and speaks MQTT 5 (named, though it is the default,
/// because the properties are the subject).
fn rig() -> Rig {
    let broker = Broker::start();
    let world = DaemonWorld::new();
    let port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
    let client_id = format!("client_id = \"{HUB_CLIENT_ID}\"");
    world.write_config(
        &broker.url(),
        &["protocol = \"5\"", &client_id],
        &[SerialEntry::of(&port, "nonin-df13")],
    );
    Rig {
        broker,
        world,
        port,
    }
}

impl Rig {
    /// Waits for the first message `subscriber` received that satisfies `wanted`, showing the daemon's log
    /// if none comes.
    #[track_caller]
    fn wait_for(
        &self,
        subscriber: &PropertySubscriber,
        what: &str,
        wanted: impl Fn(&Delivered) -> bool,
    ) -> Delivered {
        subscriber.wait_for_message(what, Duration::from_secs(20), wanted, || {
            format!("daemon log:\n{}", self.world.log())
        })
    }
}

/// A way for the hub to go.
type Leave = fn(&mut Daemon);

fn is_status(message: &Delivered, state: &str) -> bool {
    message.topic == STATUS_TOPIC && message.json()["state"] == state
}

/// The properties a status message carries, whatever its state: none. A status that expired at the broker
/// would leave a backend that subscribes later with no word from the hub at all.
#[track_caller]
fn assert_no_properties(what: &str, message: &Delivered) {
    assert!(
        message.properties.is_empty(),
        "{what} carries properties: {:?}",
        message.properties
    );
}

#[test]
fn mqtt5_a_reading_names_its_schema_and_never_expires_and_the_status_carries_no_properties() {
    let mut rig = rig();
    let subscriber = PropertySubscriber::start(rig.broker.port, "vitalsd/v1/#");
    let _daemon = rig.world.start();
    let online = rig.wait_for(&subscriber, "the hub's online status", |m| {
        is_status(m, "online")
    });
    rig.port.write(&SpotCheck::numbered(1).frame());
    let reading = rig.wait_for(&subscriber, "the reading", |m| m.topic == READING_TOPIC);
    // A backend that subscribes later gets the status from the broker's retained copy.
    let newcomer = PropertySubscriber::start(rig.broker.port, STATUS_TOPIC);
    let retained_status = rig.wait_for(&newcomer, "the retained status", |m| m.retained);

    // How each message arrives: at least once, and only the status retained.
    let deliveries = [
        ("the reading", &reading, 1, false),
        ("the online status", &online, 1, false),
        ("the retained status", &retained_status, 1, true),
    ];
    for (what, message, qos, retained) in deliveries {
        assert_eq!(message.qos, qos, "{what}: {message:?}");
        assert_eq!(message.retained, retained, "{what}: {message:?}");
    }
    assert_eq!(retained_status.json()["state"], "online");

    // The reading's properties, one by one by Mosquitto's names; `None` means absent.
    let reading_properties = [
        // The payload's schema name, so a backend can route or validate a reading before parsing it.
        (
            "user-properties",
            Some(json!({"schema": "vitalsd.reading.v1"})),
        ),
        // A reading is worth delivering however late: the broker must never drop one for its age.
        ("message-expiry-interval", None),
        // The schema name says what the payload is; the hub claims nothing more.
        ("content-type", None),
        ("payload-format-indicator", None),
    ];
    for (name, expected) in &reading_properties {
        assert_eq!(
            reading.properties.get(*name),
            expected.as_ref(),
            "the reading's {name}; all its properties: {:?}",
            reading.properties
        );
    }
    // Any property the table does not list is one nobody decided on.
    let unlisted: Vec<&String> = reading
        .properties
        .keys()
        .filter(|name| !reading_properties.iter().any(|(listed, _)| listed == name))
        .collect();
    assert!(unlisted.is_empty(), "the reading also carries {unlisted:?}");
    // The property and the payload name the same schema, and the payload follows it.
    let payload = reading.json();
    assert_eq!(payload["schema"], "vitalsd.reading.v1", "{payload}");
    crate::assert_valid_reading(&payload);

    for (what, message) in [
        ("the online status", &online),
        ("the retained status", &retained_status),
    ] {
        assert_no_properties(what, message);
    }
}

#[test]
fn mqtt5_when_the_hub_leaves_the_broker_keeps_its_last_status_and_no_session() {
    let rig = rig();
    // How the hub leaves, and the status it leaves behind: its own "offline" when it stops, and the will
    // the broker publishes for it when it vanishes.
    let table: [(&str, Leave, &str); 2] = [
        (
            "stops",
            |daemon| {
                daemon.terminate();
            },
            "offline",
        ),
        ("is killed", Daemon::kill9, "lost"),
    ];
    for (how, leave, state) in table {
        let subscriber = PropertySubscriber::start(rig.broker.port, STATUS_TOPIC);
        let mut daemon = rig.world.start();
        // Delivered live, not retained: this daemon's status, not the one the previous row left.
        rig.wait_for(&subscriber, &format!("{how}: the online status"), |m| {
            !m.retained && is_status(m, "online")
        });
        leave(&mut daemon);
        rig.wait_for(&subscriber, &format!("{how}: the {state} status"), |m| {
            !m.retained && is_status(m, state)
        });

        let newcomer = PropertySubscriber::start(rig.broker.port, STATUS_TOPIC);
        let left = rig.wait_for(&newcomer, &format!("{how}: the retained status"), |m| {
            m.retained
        });
        assert_eq!(left.json()["state"], state, "{how}: {left:?}");
        assert_eq!(left.qos, 1, "{how}: {left:?}");
        assert_no_properties(&format!("{how}: the retained {state} status"), &left);

        // The hub asks for a session that ends with its connection (session expiry interval 0), because
        // its outbox, not the broker, keeps what is undelivered: a session kept on would only hold a queue
        // for a client that never resumes it.
        assert!(
            !session_present(rig.broker.port, HUB_CLIENT_ID),
            "{how}: the broker kept a session for {HUB_CLIENT_ID}, so the hub asked for one that outlives \
             its connection; daemon log:\n{}",
            rig.world.log()
        );
    }
}

#[test]
fn mqtt5_a_fhir_bundle_names_its_schema_and_content_type_and_never_expires() {
    let mut rig = rig();
    rig.world.append_config(crate::fhir::BOTH_FORMATS);
    let subscriber = PropertySubscriber::start(rig.broker.port, "vitalsd/v1/#");
    let _daemon = rig.world.start();
    rig.wait_for(&subscriber, "the hub's online status", |m| {
        is_status(m, "online")
    });
    rig.port.write(&SpotCheck::numbered(1).frame());
    let bundle = rig.wait_for(&subscriber, "the Bundle", |m| {
        m.topic == "vitalsd/v1/hub-test/fhir/pulse_oximetry"
    });
    assert_eq!((bundle.qos, bundle.retained), (1, false));
    assert_eq!(bundle.json()["resourceType"], "Bundle");
    let expected = json!({
        "user-properties": {"schema": "fhir.r4.bundle"},
        "content-type": "application/fhir+json; fhirVersion=4.0",
    });
    assert_eq!(
        serde_json::Value::Object(bundle.properties.clone()),
        expected,
        "no expiry, no other property"
    );
}

//! Fleet operations over MQTT against the real binary and a real Mosquitto: the twin and its schema,
//! events, and signed commands (signed by `vitalsd fleet sign`, and by `openssl` alone as the README
//! shows), each refusal reason, a command published while the hub was offline, and a restart that keeps
//! the journal.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::broker::Broker;
use crate::support::daemon::{Daemon, DaemonWorld, BINARY};
use crate::support::nonin::SpotCheck;
use crate::support::pty::SimulatedPort;
use crate::support::schema::assert_valid;
use crate::support::subscriber::Subscriber;
use crate::support::wait_for;

const BASE: &str = "vitalsd/v1/hub-test";

/// A key pair made by `vitalsd fleet keygen`.
struct Keys {
    private: PathBuf,
    public: PathBuf,
}

impl Keys {
    fn make(dir: &Path, name: &str) -> Keys {
        std::fs::create_dir_all(dir).unwrap();
        succeeded(
            Command::new(BINARY)
                .args(["fleet", "keygen", "--name", name, "--out"])
                .arg(dir),
        );
        Keys {
            private: dir.join(format!("{name}.key")),
            public: dir.join(format!("{name}.pub")),
        }
    }

    /// An envelope from `vitalsd fleet sign`.
    fn sign(
        &self,
        hub: &str,
        command: &str,
        args: &Value,
        request_id: &str,
        extra: &[&str],
    ) -> String {
        let output = succeeded(
            Command::new(BINARY)
                .args(["fleet", "sign", "--key"])
                .arg(&self.private)
                .args([
                    "--hub",
                    hub,
                    "--command",
                    command,
                    "--request-id",
                    request_id,
                    "--args",
                ])
                .arg(args.to_string())
                .args(extra),
        );
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// An envelope made with `openssl` and coreutils alone, as the README shows a backend doing it.
    fn sign_with_openssl(&self, command: &Value, key_id: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let script = r#"
            set -e
            printf '%s' "$COMMAND" > "$DIR/command.json"
            openssl pkeyutl -sign -inkey "$KEY" -rawin -in "$DIR/command.json" -out "$DIR/command.sig"
            payload=$(basenc --base64url -w0 "$DIR/command.json" | tr -d '=')
            signature=$(basenc --base64url -w0 "$DIR/command.sig" | tr -d '=')
            printf '{"payload":"%s","signature":"%s","key_id":"%s"}' "$payload" "$signature" "$KEY_ID"
        "#;
        let output = succeeded(
            Command::new("sh")
                .args(["-c", script])
                .env("COMMAND", command.to_string())
                .env("DIR", dir.path())
                .env("KEY", &self.private)
                .env("KEY_ID", key_id),
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// Runs `command`, which must succeed (its stderr is the failure message).
fn succeeded(command: &mut Command) -> std::process::Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A command document, for signing by hand.
fn command(
    request_id: &str,
    name: &str,
    issued: chrono::DateTime<chrono::Utc>,
    valid_for_s: i64,
) -> Value {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    json!({
        "schema": "vitalsd.command.v1",
        "hub_id": "hub-test",
        "request_id": request_id,
        "issued_at": time(issued),
        "expires_at": time(issued + chrono::TimeDelta::seconds(valid_for_s)),
        "command": name,
        "args": {},
    })
}

fn publish_retained(broker: &Broker, topic: &str, payload: &str) {
    publish_retained_from(broker, topic, &["-m", payload]);
}

/// Publishes retained at QoS 1 with `mosquitto_pub`, the message given by `message` (`-m TEXT` or
/// `-f FILE`).
fn publish_retained_from(broker: &Broker, topic: &str, message: &[&str]) {
    let status = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-q",
            "1",
            "-r",
            "-t",
            topic,
        ])
        .args(message)
        .status()
        .unwrap();
    assert!(status.success(), "mosquitto_pub failed");
}

struct Hub {
    broker: Broker,
    subscriber: Subscriber,
    world: DaemonWorld,
    keys: Keys,
}

/// A broker, a subscriber to everything under the prefix, and a hub that trusts the key `ops`; `extra`
/// goes into `[fleet]`.
fn hub(extra: &str) -> Hub {
    hub_on_clock(extra, "trusted")
}

/// [`hub`] with `hub.clock` set to `clock`.
fn hub_on_clock(extra: &str, clock: &'static str) -> Hub {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let mut world = DaemonWorld::new();
    world.hub_clock = clock;
    world.write_config(&broker.url(), &[], &[]);
    let keys = Keys::make(&world.dir.path().join("keys"), "ops");
    world.append_config(&format!(
        "[fleet]\nkeys = {{ ops = \"{}\" }}\n{extra}\n",
        keys.public.display()
    ));
    Hub {
        broker,
        subscriber,
        world,
        keys,
    }
}

impl Hub {
    /// The newest message on `subtopic` (under the hub's base) that satisfies `accept`, waited for.
    #[track_caller]
    fn wait_message(&self, subtopic: &str, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let topic = format!("{BASE}/{subtopic}");
        let mut found = None;
        wait_for(
            what,
            Duration::from_secs(30),
            || {
                found = self
                    .subscriber
                    .messages()
                    .iter()
                    .rev()
                    .filter(|m| m.topic == topic && !m.payload.is_empty())
                    .map(|m| m.json())
                    .find(|document| accept(document));
                found.is_some()
            },
            || self.world.log(),
        );
        found.unwrap()
    }

    #[track_caller]
    fn wait_state(&self, request_id: &str, state: &str) -> Value {
        let document = self.wait_message(
            &format!("cmd/{request_id}/state"),
            &format!("command {request_id} {state}"),
            |document| document["state"] == state,
        );
        assert_valid("vitalsd.command-state.v1", &document);
        document
    }

    #[track_caller]
    fn wait_twin(&self, what: &str, accept: impl Fn(&Value) -> bool) -> Value {
        let twin = self.wait_message("twin", what, accept);
        assert_valid("vitalsd.twin.v1", &twin);
        twin
    }

    fn messages_on(&self, subtopic: &str) -> usize {
        let topic = format!("{BASE}/{subtopic}");
        self.subscriber
            .messages()
            .iter()
            .filter(|m| m.topic == topic)
            .count()
    }

    fn start(&self) -> Daemon {
        self.world.start()
    }
}

#[test]
fn a_signed_set_serial_ports_adds_a_nonin_port_and_its_reading_arrives() {
    let hub = hub("");
    let mut daemon = hub.start();
    let pid = daemon.pid();
    let twin = hub.wait_twin("the first twin", |_| true);
    assert_eq!(twin["devices"], json!([]), "{twin:#}");
    assert_eq!(twin["config"]["version"], Value::Null);
    assert_eq!(
        twin["capabilities"],
        json!([
            "bind_device",
            "unbind_device",
            "set_serial_ports",
            "diagnostics",
            "restart"
        ])
    );

    let mut port = SimulatedPort::plug_in(&hub.world.by_id("usb-Nonin_9560-if00-port0"));
    let args =
        json!({"ports": [{"path": port.link(), "protocol": "nonin-df13", "id": "oximeter-1"}]});
    let envelope = hub
        .keys
        .sign("hub-test", "set_serial_ports", &args, "ports-1", &[]);
    assert_valid(
        "vitalsd.command-envelope.v1",
        &serde_json::from_str(&envelope).unwrap(),
    );
    publish_retained(&hub.broker, &format!("{BASE}/cmd/ports-1"), &envelope);

    hub.wait_state("ports-1", "executing");
    let done = hub.wait_state("ports-1", "successful");
    assert_eq!(done["result"]["ports"], 1, "{done:#}");
    let drop_in = hub.world.dir.path().join("vitalsd.toml.d/50-fleet.toml");
    let text = std::fs::read_to_string(&drop_in).expect("the fleet drop-in");
    assert!(text.contains("nonin-df13"), "{text}");
    // Started again in place: the same process, with the new port.
    assert_eq!(daemon.pid(), pid);
    assert!(daemon.is_running(), "{}", hub.world.log());
    daemon.wait_opened(&port, Duration::from_secs(20));
    let record = SpotCheck::numbered(7);
    port.write(&record.frame());
    assert!(
        hub.subscriber
            .wait_for_unique_readings(1, Duration::from_secs(20)),
        "no reading from the port the command added; log:\n{}",
        hub.world.log()
    );
    let reading = &hub.subscriber.readings()[0];
    assert_eq!(reading["device"]["id"], "oximeter-1");
    let twin = hub.wait_twin("the twin with the new port", |twin| {
        twin["config"]["version"] == "ports-1"
    });
    assert_eq!(twin["devices"][0]["id"], "oximeter-1", "{twin:#}");
    assert_eq!(twin["devices"][0]["transport"], "serial");
    // When the port was last heard is in the twin a diagnostics bundle carries (a last-seen time alone
    // does not publish the twin).
    let envelope = hub
        .keys
        .sign("hub-test", "diagnostics", &json!({}), "diag-ports", &[]);
    publish_retained(&hub.broker, &format!("{BASE}/cmd/diag-ports"), &envelope);
    let bundle = hub.wait_message("diagnostics/diag-ports", "the diagnostics bundle", |_| true);
    let device = &bundle["twin"]["devices"][0];
    assert_eq!(
        (&device["id"], &device["state"]),
        (&json!("oximeter-1"), &json!("configured"))
    );
    assert!(device["last_seen"].is_string(), "{bundle:#}");

    // An invalid list is refused with the configuration's own key-path errors, and changes nothing.
    let bad = json!({"ports": [{"path": "relative/tty", "protocol": "nonin-df13"}, {"path": "/dev/ttyUSB9", "protocol": "warp-drive"}]});
    let envelope = hub
        .keys
        .sign("hub-test", "set_serial_ports", &bad, "ports-2", &[]);
    publish_retained(&hub.broker, &format!("{BASE}/cmd/ports-2"), &envelope);
    let failed = hub.wait_state("ports-2", "failed");
    assert_eq!(failed["reason"], "invalid_args", "{failed:#}");
    let detail = failed["detail"].as_str().unwrap();
    assert!(
        detail.contains("serial[0].path") && detail.contains("serial[1].protocol"),
        "{detail}"
    );
    assert_eq!(std::fs::read_to_string(&drop_in).unwrap(), text);
    assert_eq!(daemon.pid(), pid);
}

#[test]
fn every_refusal_reason_is_published_and_a_replay_after_a_restart_is_refused() {
    let hub = hub("");
    let mut daemon = hub.start();
    hub.wait_twin("the first twin", |_| true);
    let other = Keys::make(&hub.world.dir.path().join("other"), "ops");
    let now = chrono::Utc::now();
    let publish = |request_id: &str, envelope: &str| {
        publish_retained(&hub.broker, &format!("{BASE}/cmd/{request_id}"), envelope)
    };
    let none = json!({});
    // (request id, envelope, reason)
    let cases = [
        (
            "bad-signature",
            other.sign("hub-test", "diagnostics", &none, "bad-signature", &[]),
            "bad_signature",
        ),
        (
            "unknown-key",
            hub.keys.sign(
                "hub-test",
                "diagnostics",
                &none,
                "unknown-key",
                &["--key-id", "lab"],
            ),
            "unknown_key",
        ),
        (
            "other-hub",
            hub.keys
                .sign("hub-0002", "diagnostics", &none, "other-hub", &[]),
            "wrong_hub",
        ),
        (
            "too-long",
            hub.keys.sign(
                "hub-test",
                "diagnostics",
                &none,
                "too-long",
                &["--valid-for", "8days"],
            ),
            "validity_too_long",
        ),
        (
            "expired",
            hub.keys.sign_with_openssl(
                &command(
                    "expired",
                    "diagnostics",
                    now - chrono::TimeDelta::hours(2),
                    3600,
                ),
                "ops",
            ),
            "expired",
        ),
        (
            "early",
            hub.keys.sign_with_openssl(
                &command(
                    "early",
                    "diagnostics",
                    now + chrono::TimeDelta::hours(1),
                    3600,
                ),
                "ops",
            ),
            "not_yet_valid",
        ),
        (
            "unknown-command",
            hub.keys
                .sign("hub-test", "format_disk", &none, "unknown-command", &[]),
            "unknown_command",
        ),
        (
            "bad-args",
            hub.keys.sign(
                "hub-test",
                "restart",
                &json!({"now": true}),
                "bad-args",
                &[],
            ),
            "invalid_args",
        ),
        (
            "mismatch",
            hub.keys
                .sign("hub-test", "diagnostics", &none, "another-id", &[]),
            "request_id_mismatch",
        ),
        ("garbage", "not json".to_string(), "malformed"),
    ];
    for (request_id, envelope, _) in &cases {
        publish(request_id, envelope);
    }
    for (request_id, _, reason) in &cases {
        let failed = hub.wait_state(request_id, "failed");
        assert_eq!(failed["reason"], *reason, "{request_id}: {failed:#}");
    }
    assert_eq!(hub.messages_on("diagnostics/expired"), 0);

    // Signed with openssl alone, accepted; the bundle arrives.
    let signed = hub
        .keys
        .sign_with_openssl(&command("diag-1", "diagnostics", now, 3600), "ops");
    publish("diag-1", &signed);
    let done = hub.wait_state("diag-1", "successful");
    assert_eq!(done["result"]["topic"], "diagnostics/diag-1", "{done:#}");
    let bundle = hub.wait_message("diagnostics/diag-1", "the diagnostics bundle", |_| true);
    assert_valid("vitalsd.diagnostics.v1", &bundle);
    assert_valid("vitalsd.status.v1", &bundle["status"]);
    assert_valid("vitalsd.twin.v1", &bundle["twin"]);
    assert_eq!(bundle["twin"]["hub_id"], "hub-test");
    assert!(
        bundle["log"].as_array().unwrap().iter().any(|line| line
            .as_str()
            .unwrap()
            .contains("Connected to the MQTT broker")),
        "{bundle:#}"
    );
    assert!(bundle["config"]
        .as_object()
        .unwrap()
        .values()
        .any(|text| text.as_str().unwrap().contains("[fleet.keys]")));

    // After a restart the retained copy comes again and is left alone; published again, it is a replay.
    daemon.terminate();
    let mut daemon = hub.start();
    // The twin of the new run, made after the command's success, says it is connected and subscribed.
    let after = done["at"].as_str().unwrap().to_string();
    hub.wait_twin("a twin of the new run", |twin| {
        twin["at"].as_str().unwrap() > after.as_str()
    });
    let bundles_before = hub.messages_on("diagnostics/diag-1");
    publish("diag-1", &signed);
    let refused = hub.wait_state("diag-1", "failed");
    assert_eq!(refused["reason"], "replayed", "{refused:#}");
    assert_eq!(
        hub.messages_on("diagnostics/diag-1"),
        bundles_before,
        "executed twice"
    );
    // The replay's answer is not retained: a backend that subscribes later reads the command's outcome.
    let late = Subscriber::start(hub.broker.port, &format!("{BASE}/cmd/diag-1/state"));
    wait_for(
        "the retained state of diag-1",
        Duration::from_secs(10),
        || !late.messages().is_empty(),
        || hub.world.log(),
    );
    assert_eq!(late.messages()[0].json()["state"], "successful");
    assert!(daemon.is_running());
    // Every status the hub published, the last will included, is what the AsyncAPI document says.
    daemon.kill9();
    hub.wait_message("status", "the last will", |status| {
        status["state"] == "lost"
    });
    let statuses = hub.subscriber.messages();
    for status in statuses
        .iter()
        .filter(|m| m.topic == format!("{BASE}/status"))
    {
        assert_valid("vitalsd.status.v1", &status.json());
    }
}

#[test]
fn commands_published_while_the_hub_was_offline_run_when_it_connects_in_issued_at_order() {
    let hub = hub("");
    let now = chrono::Utc::now();
    // Neither the order of publishing nor the broker's order of retained topics (by name) is the order of
    // issue: zulu is the oldest, then alpha, then mike.
    let names = ["mike", "zulu", "alpha"];
    let ages = [1, 3, 2];
    for (name, minutes) in names.iter().zip(ages) {
        let issued = now - chrono::TimeDelta::minutes(minutes);
        let envelope = hub
            .keys
            .sign_with_openssl(&command(name, "diagnostics", issued, 7200), "ops");
        publish_retained(&hub.broker, &format!("{BASE}/cmd/{name}"), &envelope);
    }
    let _daemon = hub.start();
    for name in names {
        hub.wait_state(name, "successful");
    }
    let order: Vec<String> = hub
        .subscriber
        .messages()
        .iter()
        .filter_map(|m| {
            m.topic
                .strip_prefix(&format!("{BASE}/diagnostics/"))
                .map(str::to_string)
        })
        .collect();
    assert_eq!(order, ["zulu", "alpha", "mike"]);
    let bundle = hub.wait_message("diagnostics/zulu", "the diagnostics bundle", |_| true);
    assert_eq!(bundle["request_id"], "zulu");
}

#[test]
fn a_restart_command_starts_the_daemon_again_and_the_twin_reports_a_device_going_silent() {
    let hub = hub("device_silent_after = \"1m\"");
    // A cuff bound earlier and last seen 45 s ago: silent 15 s into the test.
    let last_seen = chrono::Utc::now() - chrono::TimeDelta::seconds(45);
    let devices = json!({"version": 1, "devices": [{
        "address": "00:AA:01:01:00:01", "reach": "connect", "name": "A&D_UA-651_0001",
        "model": "A&D UA-651BLE", "bound_at": "2026-01-01T00:00:00Z", "bonded": true,
        "last_seen": last_seen.to_rfc3339(), "battery_percent": 80,
    }]});
    std::fs::create_dir_all(hub.world.state_dir()).unwrap();
    std::fs::write(
        hub.world.state_dir().join("devices.json"),
        devices.to_string(),
    )
    .unwrap();
    let daemon = hub.start();
    let pid = daemon.pid();
    let bound = hub.wait_twin("a twin with the cuff", |twin| {
        twin["devices"][0]["state"] == "bound"
    });
    assert_eq!(
        bound["devices"][0]["id"], "ble:00:AA:01:01:00:01",
        "{bound:#}"
    );
    assert_eq!(
        bound["devices"][0]["protocol"], "blood-pressure-measurement",
        "{bound:#}"
    );
    let silent = hub.wait_twin("the cuff silent", |twin| {
        twin["devices"][0]["state"] == "silent"
    });
    assert!(silent["devices"][0]["last_seen"].is_string(), "{silent:#}");
    let event = hub.wait_message("events", "device_silent", |event| {
        event["event"] == "device_silent"
    });
    assert_valid("vitalsd.event.v1", &event);
    assert_eq!(event["device"], "ble:00:AA:01:01:00:01");

    let envelope = hub
        .keys
        .sign("hub-test", "restart", &json!({}), "restart-1", &[]);
    publish_retained(&hub.broker, &format!("{BASE}/cmd/restart-1"), &envelope);
    let restarted = hub.wait_state("restart-1", "successful");
    assert_eq!(daemon.pid(), pid);
    assert!(
        hub.world
            .log()
            .matches("Connected to the MQTT broker")
            .count()
            >= 2
    );
    // The episode was saved: the started-again daemon does not report the same silence again. Its first
    // look queues any event before the twin, so the twin it publishes is the sentinel.
    let after = restarted["at"].as_str().unwrap().to_string();
    hub.wait_twin("a twin after the restart", |twin| {
        twin["at"].as_str().unwrap() > after.as_str()
    });
    assert_eq!(hub.messages_on("events"), 1, "{}", hub.world.log());

    // The technician's commands show what the twin shows.
    let status = hub.world.status();
    let fleet = &status["fleet"];
    assert_eq!(fleet["devices"][0]["state"], "silent", "{status:#}");
    assert_eq!(
        fleet["open_events"],
        json!([{"event": "device_silent", "device": "ble:00:AA:01:01:00:01"}])
    );
    assert_eq!(fleet["recent_commands"][0]["request_id"], "restart-1");
    assert_eq!(fleet["recent_commands"][0]["state"], "successful");
    let output = hub.world.command(&["devices", "--json"]);
    let devices: Value = serde_json::from_slice(&output.stdout).expect("devices --json");
    assert_eq!(devices["devices"][0]["state"], "silent", "{devices:#}");
}

/// Waits for the command's state on the rig's broker, and returns it.
fn ble_command_state(rig: &crate::bluetooth::BleRig, request_id: &str, state: &str) -> Value {
    let topic = format!("{BASE}/cmd/{request_id}/state");
    let mut found = None;
    wait_for(
        &format!("{request_id} {state}"),
        Duration::from_secs(60),
        || {
            found = rig
                .subscriber
                .messages()
                .iter()
                .rev()
                .filter(|m| m.topic == topic)
                .filter_map(|m| serde_json::from_slice::<Value>(&m.payload).ok())
                .find(|v| v["state"] == state);
            found.is_some()
        },
        || rig.world.log(),
    );
    found.unwrap()
}

/// A Bluetooth rig whose hub takes commands signed with the returned key (`ops`).
fn ble_rig_with_key() -> (crate::bluetooth::BleRig, Keys) {
    let rig = crate::bluetooth::BleRig::new();
    let keys = Keys::make(&rig.world.dir.path().join("keys"), "ops");
    rig.world.append_config(&format!(
        "[fleet]\nkeys = {{ ops = \"{}\" }}\n",
        keys.public.display()
    ));
    (rig, keys)
}

#[test]
fn a_signed_bind_device_bonds_a_simulated_cuff_whose_records_arrive_and_unbind_device_forgets_it() {
    use crate::support::bluez::devices::{self, blood_pressure_record, date_time};
    const CUFF: &str = "AA:BB:CC:DD:EE:01";
    let (rig, keys) = ble_rig_with_key();
    rig.sim.add_device(CUFF, devices::and_cuff());
    let records: Vec<Vec<u8>> = (0..3)
        .map(|n| blood_pressure_record(120 + n, 80, 93, 60, date_time(2024, 3, 15, 7, n as u8, 0)))
        .collect();
    rig.sim.store_records(CUFF, 0x2A35, &records);
    let _daemon = rig.start();
    let hub = |subtopic: &str| format!("{BASE}/{subtopic}");
    let wait_state = |request_id: &str, state: &str| ble_command_state(&rig, request_id, state);

    let args = json!({"transport": "ble", "address": CUFF, "window_s": 600});
    let envelope = keys.sign("hub-test", "bind_device", &args, "bind-1", &[]);
    publish_retained(&rig.broker, &hub("cmd/bind-1"), &envelope);
    wait_state("bind-1", "executing");
    let done = wait_state("bind-1", "successful");
    assert_eq!(done["result"]["bonded"], true, "{done:#}");
    rig.sim
        .device(CUFF, |device| assert!(device.paired && device.trusted));
    let readings = rig.wait_for_readings(CUFF, 3, Duration::from_secs(30));
    assert_eq!(readings.len(), 3);

    let topic = hub("twin");
    let twins = || -> Vec<Value> {
        let messages = rig.subscriber.messages();
        messages
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json())
            .collect()
    };
    // The twin follows the bond (checked every 5 s): the cuff in it, then gone from it.
    let show = || {
        format!(
            "twins: {:#?}\n{}",
            twins()
                .iter()
                .map(|t| t["devices"].to_string())
                .collect::<Vec<_>>(),
            rig.world.log()
        )
    };
    wait_for(
        "a twin with the bonded cuff",
        Duration::from_secs(30),
        || {
            twins().last().is_some_and(|t| {
                t["devices"][0]["address"] == CUFF && t["devices"][0]["state"] == "bound"
            })
        },
        show,
    );
    for twin in twins() {
        assert_valid("vitalsd.twin.v1", &twin);
    }
    let envelope = keys.sign(
        "hub-test",
        "unbind_device",
        &json!({"id": format!("ble:{CUFF}")}),
        "unbind-1",
        &[],
    );
    publish_retained(&rig.broker, &hub("cmd/unbind-1"), &envelope);
    let done = wait_state("unbind-1", "successful");
    assert_eq!(
        done["result"],
        json!({"was_bound": true, "bond_removed": true}),
        "{done:#}"
    );
    assert_eq!(rig.devices_json()["devices"], json!([]));
    rig.sim.device(CUFF, |device| {
        assert!(!device.paired, "the hub's bond is removed")
    });
    wait_for(
        "a twin without the cuff",
        Duration::from_secs(30),
        || twins().last().is_some_and(|t| t["devices"] == json!([])),
        show,
    );
}

#[test]
fn a_waiting_bind_is_ended_by_a_later_bind_unbind_or_restart_and_only_the_latest_bonds() {
    use crate::support::bluez::devices;
    const CUFF: &str = "AA:BB:CC:DD:EE:02";
    let (rig, keys) = ble_rig_with_key();
    let _daemon = rig.start();
    let send = |command: &str, args: Value, request_id: &str| {
        let envelope = keys.sign("hub-test", command, &args, request_id, &[]);
        publish_retained(&rig.broker, &format!("{BASE}/cmd/{request_id}"), &envelope);
        ble_command_state(&rig, request_id, "executing");
    };
    let ended = |request_id: &str, by: &str| {
        let state = ble_command_state(&rig, request_id, "failed");
        assert_eq!(state["reason"], "interrupted", "{state:#}");
        assert_eq!(state["detail"], by, "{state:#}");
    };
    // The cuff is not there, so each bind waits for it (its first attempt looks for 30 s).
    let bind = json!({"transport": "ble", "address": CUFF, "window_s": 600});
    send("bind_device", bind.clone(), "bind-1");
    send("bind_device", bind.clone(), "bind-2");
    ended("bind-1", "ended by bind_device bind-2");
    send(
        "unbind_device",
        json!({"id": format!("ble:{CUFF}")}),
        "unbind-1",
    );
    ended("bind-2", "ended by unbind_device unbind-1");
    let unbound = ble_command_state(&rig, "unbind-1", "successful");
    assert_eq!(unbound["result"]["was_bound"], false, "{unbound:#}");

    // Now the cuff advertises: a new bind bonds it at its first attempt, and only the new one reports.
    rig.sim.add_device(CUFF, devices::and_cuff());
    send("bind_device", bind, "bind-3");
    let bonded = ble_command_state(&rig, "bind-3", "successful");
    assert_eq!(bonded["result"], json!({"bonded": true, "attempts": 1}));

    // A restart ends a bind still waiting, and says so before it goes: the next run has nothing to call
    // cut short.
    let absent = json!({"transport": "ble", "address": "AA:BB:CC:DD:EE:03", "window_s": 600});
    send("bind_device", absent, "bind-4");
    send("restart", json!({}), "restart-1");
    ended("bind-4", "ended by restart restart-1");
    ble_command_state(&rig, "restart-1", "successful");
    // Each bind reported once what became of it (a state the broker had not taken before the restart is
    // sent again, unchanged).
    for (request_id, last) in [
        ("bind-1", "failed"),
        ("bind-2", "failed"),
        ("bind-3", "successful"),
        ("bind-4", "failed"),
    ] {
        let topic = format!("{BASE}/cmd/{request_id}/state");
        let mut states: Vec<Value> = (rig.subscriber.messages().iter())
            .filter(|m| m.topic == topic)
            .map(|m| m.json())
            .collect();
        states.dedup();
        let names: Vec<&Value> = states.iter().map(|state| &state["state"]).collect();
        assert_eq!(names, ["executing", last], "{request_id}: {states:#?}");
    }
    // No twin ever showed the cuff as two binds.
    for twin in rig
        .subscriber
        .messages()
        .iter()
        .filter(|m| m.topic == format!("{BASE}/twin"))
    {
        let binding = twin.json()["devices"].as_array().map_or(0, |devices| {
            devices.iter().filter(|d| d["state"] == "binding").count()
        });
        assert!(binding <= 1, "{:#}", twin.json());
    }
}

#[test]
fn on_an_untrusted_clock_a_command_waits_for_trust_and_fails_as_clock_untrusted_once_its_validity_is_over(
) {
    use crate::support::clock::HubClockControl;
    let hub = hub_on_clock("", "ntp");
    let clock = HubClockControl::new(&hub.world, "boot-fleet");
    let env = clock.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let _daemon = hub.world.start_with_env(&env);
    hub.wait_twin("the first twin", |twin| {
        twin["hub_clock"] == "unsynchronized"
    });
    let now = chrono::Utc::now();
    let waits = hub
        .keys
        .sign_with_openssl(&command("waits", "diagnostics", now, 3600), "ops");
    let short = hub
        .keys
        .sign_with_openssl(&command("short", "diagnostics", now, 8), "ops");
    publish_retained(&hub.broker, &format!("{BASE}/cmd/waits"), &waits);
    publish_retained(&hub.broker, &format!("{BASE}/cmd/short"), &short);
    // The hub cannot tell how much of "short"'s validity is left, so it waits all of it, by its boot clock.
    let failed = hub.wait_state("short", "failed");
    assert_eq!(failed["reason"], "clock_untrusted", "{failed:#}");
    assert_eq!(
        hub.messages_on("cmd/waits/state"),
        0,
        "ran on an untrusted clock"
    );
    clock.set_synchronized(true);
    hub.wait_state("waits", "successful");
    assert_eq!(hub.messages_on("diagnostics/short"), 0);
}

#[test]
fn unsigned_bytes_never_overwrite_a_recorded_state_and_a_flood_of_them_gets_ten_answers_a_minute() {
    let hub = hub("");
    let _daemon = hub.start();
    hub.wait_twin("the first twin", |_| true);
    let publish = |request_id: &str, envelope: &str| {
        publish_retained(&hub.broker, &format!("{BASE}/cmd/{request_id}"), envelope)
    };
    let known = hub
        .keys
        .sign("hub-test", "diagnostics", &json!({}), "known", &[]);
    publish("known", &known);
    hub.wait_state("known", "successful");
    publish("known", "garbage over a done command");
    for n in 0..25 {
        publish(&format!("flood-{n}"), "not a command");
    }
    // A valid command after all of it: its state comes after every answer to what came before.
    let sentinel = hub
        .keys
        .sign("hub-test", "diagnostics", &json!({}), "sentinel", &[]);
    publish("sentinel", &sentinel);
    hub.wait_state("sentinel", "successful");
    let states = |request_id: &str| -> Vec<String> {
        let topic = format!("{BASE}/cmd/{request_id}/state");
        let messages = hub.subscriber.messages();
        messages
            .iter()
            .filter(|m| m.topic == topic)
            .map(|m| m.json()["state"].as_str().unwrap().to_string())
            .collect()
    };
    let known_states = states("known");
    assert_eq!(
        known_states.last().map(String::as_str),
        Some("successful"),
        "{known_states:?}"
    );
    assert!(
        !known_states.contains(&"failed".to_string()),
        "{known_states:?}"
    );
    let answered = (0..25)
        .filter(|n| !states(&format!("flood-{n}")).is_empty())
        .count();
    // Ten answers a minute: one went to the garbage over "known".
    assert_eq!(answered, 9, "{}", hub.world.log());
}

/// Over MQTT 3.1.1 the hub cannot tell the broker the largest message it reads, and rumqttc ends the
/// connection at a larger one. A retained one under `cmd/` used to end every connection as soon as the hub
/// subscribed again, each time sending the readings in flight once more without their PUBACKs, so none was
/// ever delivered. The hub now connects without its subscriptions for a while, and the readings drain.
#[test]
fn over_mqtt_3_1_1_a_retained_message_too_large_to_read_pauses_commands_and_readings_still_drain() {
    let broker = Broker::start();
    let world = DaemonWorld::new();
    let big = world.dir.path().join("too-large.json");
    std::fs::write(&big, format!("{{\"payload\":\"{}\"}}", "A".repeat(300_000))).unwrap();
    let big = big.display().to_string();
    publish_retained_from(&broker, &format!("{BASE}/cmd/too-large"), &["-f", &big]);
    let subscriber = Subscriber::start(broker.port, &format!("{BASE}/readings/#"));
    let mut port = world.with_nonin_9560(&broker.url());
    let keys = Keys::make(&world.dir.path().join("keys"), "ops");
    world.append_config(&format!(
        "[fleet]\nkeys = {{ ops = \"{}\" }}\n",
        keys.public.display()
    ));
    let daemon = world.start_with_env(&[("VITALSD_MQTT__PROTOCOL", "3.1.1")]);
    daemon.wait_opened(&port, Duration::from_secs(20));
    for n in 1..=3 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    assert!(
        subscriber.wait_for_unique_readings(3, Duration::from_secs(30)),
        "the readings did not arrive; log:\n{}",
        world.log()
    );
    wait_for(
        "the outbox to count every reading delivered",
        Duration::from_secs(30),
        || world.status()["outbox"]["pending"] == 0,
        || world.log(),
    );
    let phrase = crate::support::daemon_phrase("larger than the hub reads");
    let log = world.log();
    // One connection ended; the ones after it went without the subscription and stayed up.
    assert_eq!(log.matches(phrase).count(), 1, "{log}");
    let last_error = world.status()["uplink"]["last_error"].to_string();
    assert!(
        last_error.contains("fleet commands are paused"),
        "{last_error}"
    );
}

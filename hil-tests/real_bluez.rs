//! Bluetooth scenarios against the real Linux stack: the `vitalsd` binary built for this test runs in a
//! qemu VM with Debian's kernel, `hci_vhci`, two `btvirt` controllers and bluetoothd 5.66, and pairs with
//! and reads a device that `ble-peripheral` serves through BlueZ on the second controller; readings go to
//! a Mosquitto this test starts on the host. The rig is `support/real_bluez`; one VM boot per scenario.
//!
//! The same device models as the simulator's (`support/bluez/devices.rs`), so both suites say the same
//! thing; where real BlueZ behaves otherwise, ARCHITECTURE.md's BlueZ section says how.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::bluez::devices::{
    blood_pressure_record, date_time, failed_blood_pressure_record,
};
use crate::support::broker::Broker;
use crate::support::real_bluez::{Guest, DEVICE_ADAPTER, DEVICE_ADDRESS};
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

/// A VM boot and its scenario take about half a minute; this leaves room for a machine busy with other
/// tests (TCG is CPU-bound).
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The hub's configuration inside the VM: the host's broker is 10.0.2.2 there.
fn hub_config(broker_port: u16, hub_clock: &str) -> String {
    format!(
        "[hub]\nid = \"hub-real-bluez\"\nstate_dir = \"/var/lib/vitalsd\"\nruntime_dir = \"/run/vitalsd\"\n\
         clock = \"{hub_clock}\"\n\n[mqtt]\nurl = \"mqtt://10.0.2.2:{broker_port}\"\nkeep_alive_s = 5\n\
         reconnect_min_ms = 200\nreconnect_max_s = 1\n\n[ble]\nadapter = \"hci0\"\n"
    )
}

/// The device program's scenario (see `hil-tests/ble_peripheral.rs`); `options` adds to it or
/// overrides its fields.
fn device_scenario(agent: &str, sessions: &[Vec<Vec<u8>>]) -> String {
    device_scenario_with(agent, sessions, json!({}))
}

fn device_scenario_with(
    agent: &str,
    sessions: &[Vec<Vec<u8>>],
    options: serde_json::Value,
) -> String {
    let sessions: Vec<serde_json::Value> = sessions
        .iter()
        .map(|records| json!({"records": records.iter().map(hex::encode).collect::<Vec<_>>()}))
        .collect();
    let mut scenario = json!({
        "adapter": DEVICE_ADAPTER,
        "model": "and-cuff",
        "agent": agent,
        "replay": true,
        "sessions": sessions,
        "events": "/share/out/device.jsonl",
    });
    for (key, value) in options.as_object().expect("options are an object") {
        scenario[key] = value.clone();
    }
    scenario.to_string()
}

/// The rig of one scenario: a broker and a subscriber on the host, a share for the guest.
struct Scenario {
    _broker: Broker,
    subscriber: Subscriber,
    guest: Guest,
}

impl Scenario {
    fn new(hub_clock: &str) -> Scenario {
        let broker = Broker::start();
        let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
        let guest = Guest::new();
        guest.write("vitalsd.toml", &hub_config(broker.port, hub_clock));
        Scenario {
            _broker: broker,
            subscriber,
            guest,
        }
    }

    fn readings(&self) -> Vec<serde_json::Value> {
        let id = format!("ble:{DEVICE_ADDRESS}");
        self.subscriber
            .readings()
            .into_iter()
            .filter(|reading| reading["device"]["id"] == id.as_str())
            .collect()
    }
}

fn cuff_records(count: u16) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            blood_pressure_record(
                120 + i,
                80,
                93,
                60 + i,
                date_time(2024, 3, 15, 7, i as u8, 0),
            )
        })
        .collect()
}

/// A reading as the table below lists it: device time and the values by name.
fn summary(reading: &serde_json::Value) -> (String, Vec<(String, serde_json::Value)>) {
    let values = reading["values"]
        .as_array()
        .expect("values")
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["value"].clone()))
        .collect();
    (
        reading["device_time"].as_str().unwrap_or("").to_string(),
        values,
    )
}

fn bp(
    at: &str,
    sys: i64,
    dia: i64,
    map: i64,
    pulse: i64,
) -> (String, Vec<(String, serde_json::Value)>) {
    let values = [
        ("systolic", json!(sys)),
        ("diastolic", json!(dia)),
        ("mean_arterial_pressure", json!(map)),
        ("pulse_rate", json!(pulse)),
    ];
    (
        at.to_string(),
        values
            .into_iter()
            .map(|(n, v)| (n.to_string(), v))
            .collect(),
    )
}

fn nan_bp(at: &str) -> (String, Vec<(String, serde_json::Value)>) {
    let values = [
        "systolic",
        "diastolic",
        "mean_arterial_pressure",
        "pulse_rate",
    ];
    (
        at.to_string(),
        values
            .into_iter()
            .map(|n| (n.to_string(), serde_json::Value::Null))
            .collect(),
    )
}

#[test]
fn a_cuff_paired_just_works_delivers_its_burst_then_only_its_new_record_when_it_advertises_again() {
    let started = Instant::now();
    let scenario = Scenario::new("trusted");
    let mut burst = cuff_records(4);
    burst.push(failed_blood_pressure_record(date_time(
        2024, 3, 15, 8, 0, 0,
    )));
    let new_record = blood_pressure_record(125, 82, 96, 66, date_time(2024, 3, 15, 9, 0, 0));
    scenario.guest.write(
        "device.json",
        &device_scenario("accept", &[burst.clone(), vec![new_record]]),
    );
    let expected = burst.len() + 1;
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} --json > $out/pair.json 2> $out/pair.err || exit 11\n\
             stage paired\n\
             start_daemon\n\
             wait_for 120 device_said done || exit 12\n\
             stage device done\n\
             wait_for 60 delivered_at_least {expected} || exit 13\n\
             stage delivered\n\
             vitalsd devices --json > $out/devices.json\n\
             stop_daemon\n"
        ),
    );

    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let report = || boot.report();

    // Every record once: the burst, then the new one; the replayed burst is skipped as duplicates.
    wait_until(Duration::from_secs(10), || {
        scenario.readings().len() >= expected
    });
    let readings = scenario.readings();
    assert_eq!(readings.len(), expected, "{}", report());
    for reading in &readings {
        crate::assert_valid_reading(reading);
    }
    let mut got: Vec<_> = readings.iter().map(summary).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            bp("2024-03-15T07:00:00", 120, 80, 93, 60),
            bp("2024-03-15T07:01:00", 121, 80, 93, 61),
            bp("2024-03-15T07:02:00", 122, 80, 93, 62),
            bp("2024-03-15T07:03:00", 123, 80, 93, 63),
            nan_bp("2024-03-15T08:00:00"),
            bp("2024-03-15T09:00:00", 125, 82, 96, 66),
        ],
        "{}",
        report()
    );
    let status: serde_json::Value =
        serde_json::from_str(&boot.out("status.json")).expect("status.json");
    assert_eq!(
        status["outbox"]["duplicates_total"],
        burst.len(),
        "the replayed burst is skipped: {status}"
    );
    // The cuff's clock (reset to 2000) made the burst's times untrustworthy: they carry the hub's time.
    let first = readings
        .iter()
        .find(|r| r["device_time"] == "2024-03-15T07:00:00")
        .unwrap();
    assert_eq!(first["time_source"], "hub");
    assert_eq!(first["flags"], json!(["device_clock_reset"]));
    assert_eq!(first["device"]["manufacturer"], "A&D Medical");
    assert_eq!(first["device"]["model"], "UA-651BLE");

    // The hub trusts its clock: it wrote the cuff's Date Time, with this year, before the burst came.
    let events = boot.device_events();
    let date_time_uuid = "00002a08-0000-1000-8000-00805f9b34fb";
    let writes: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "write" && e["uuid"] == date_time_uuid)
        .collect();
    assert!(!writes.is_empty(), "no Date Time write:\n{}", report());
    let written = hex::decode(writes[0]["value"].as_str().unwrap()).unwrap();
    let year = i32::from(u16::from_le_bytes([written[0], written[1]]));
    let this_year = chrono::Datelike::year(&chrono::Utc::now());
    assert!(
        year == this_year || year + 1 == this_year,
        "wrote {written:?}"
    );
    let position = |wanted: &dyn Fn(&serde_json::Value) -> bool| events.iter().position(wanted);
    assert!(
        position(&|e| e["event"] == "write" && e["uuid"] == date_time_uuid)
            < position(&|e| e["event"] == "sent"),
        "the clock is written before the burst:\n{}",
        report()
    );
    let devices: serde_json::Value =
        serde_json::from_str(&boot.out("devices.json")).expect("devices.json");
    assert_eq!(
        devices["devices"][0]["address"], DEVICE_ADDRESS,
        "{devices}"
    );
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; guest stages:\n{}",
        boot.elapsed,
        started.elapsed(),
        boot.out("stages")
    );
}

#[test]
fn a_first_pairing_the_device_rejects_is_reported_as_rejected_not_as_a_lost_bond() {
    let started = Instant::now();
    let scenario = Scenario::new("trusted");
    scenario
        .guest
        .write("device.json", &device_scenario("reject", &[vec![]]));
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} > $out/pair.out 2> $out/pair.err\n\
             echo $? > $out/pair.exit\n\
             stage pair ended\n\
             vitalsd devices --json > $out/devices.json\n"
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let said = format!("{}{}", boot.out("pair.out"), boot.out("pair.err"));
    assert_ne!(
        boot.out("pair.exit").trim(),
        "0",
        "{said}\n{}",
        boot.report()
    );
    assert!(
        !said.contains("bond"),
        "a first pairing has no bond to lose: {said}\n{}",
        boot.report()
    );
    assert!(
        said.contains("rejected") || said.contains("failed"),
        "the failure is named: {said}"
    );
    let events = boot.device_events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "agent" && e["answer"] == "Reject"),
        "the device's own agent was asked and said no:\n{}",
        boot.report()
    );
    let devices: serde_json::Value =
        serde_json::from_str(&boot.out("devices.json")).expect("devices.json");
    assert_eq!(devices["devices"], json!([]), "nothing bound");
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; pair said: {said}",
        boot.elapsed,
        started.elapsed()
    );
}

#[test]
fn a_wrong_passkey_is_reported_as_a_failed_authentication_and_binds_nothing() {
    let started = Instant::now();
    let scenario = Scenario::new("trusted");
    // A device with a display: the kernel on its side picks a random passkey and its agent shows it.
    scenario.guest.write(
        "device.json",
        &device_scenario_with("accept", &[vec![]], json!({"capability": "DisplayOnly"})),
    );
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} --passkey {WRONG_PASSKEY} > $out/pair.out 2> $out/pair.err\n\
             echo $? > $out/pair.exit\n\
             stage pair ended\n\
             vitalsd devices --json > $out/devices.json\n"
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let said = format!("{}{}", boot.out("pair.out"), boot.out("pair.err"));
    let events = boot.device_events();
    let shown: Vec<&str> = events
        .iter()
        .filter(|e| e["method"] == "DisplayPasskey")
        .filter_map(|e| e["passkey"].as_str())
        .collect();
    assert!(
        !shown.is_empty(),
        "the device showed a passkey (passkey entry, not Just Works):\n{}",
        boot.report()
    );
    assert!(
        !shown.contains(&format!("{WRONG_PASSKEY:06}").as_str()),
        "the kernel picked the very passkey this test calls wrong (one chance in a million): {shown:?}"
    );
    assert_ne!(
        boot.out("pair.exit").trim(),
        "0",
        "{said}\n{}",
        boot.report()
    );
    assert!(
        !said.contains("bond"),
        "a first pairing has no bond to lose: {said}\n{}",
        boot.report()
    );
    assert!(
        said.contains("authentication") && said.contains("passkey was wrong"),
        "the failure is named: {said}\n{}",
        boot.report()
    );
    let devices: serde_json::Value =
        serde_json::from_str(&boot.out("devices.json")).expect("devices.json");
    assert_eq!(devices["devices"], json!([]), "nothing bound");
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; pair said: {said}",
        boot.elapsed,
        started.elapsed()
    );
}

/// A passkey the device's random one is not (but for one chance in a million, which the test reports).
const WRONG_PASSKEY: u32 = 314159;

#[test]
fn a_device_that_forgot_its_bond_is_detected_the_stale_bond_removed_and_re_paired() {
    let started = Instant::now();
    let scenario = Scenario::new("trusted");
    let burst = cuff_records(2);
    let new_record = blood_pressure_record(125, 82, 96, 66, date_time(2024, 3, 15, 9, 0, 0));
    let mut device = serde_json::from_str::<serde_json::Value>(&device_scenario_with(
        "accept",
        &[burst.clone(), vec![new_record]],
        json!({"replay": false}),
    ))
    .unwrap();
    device["sessions"][0]["forget_bond"] = json!(true);
    scenario.guest.write("device.json", &device.to_string());
    let expected = burst.len() + 1;
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} --json > $out/pair.json 2> $out/pair.err || exit 11\n\
             stage paired\n\
             start_daemon\n\
             wait_for 120 device_said forgot_bond || exit 12\n\
             stage device forgot its bond\n\
             wait_for 180 grep -q 'lost its bond' $out/daemon.log || exit 13\n\
             stage daemon saw the lost bond\n\
             vitalsd devices --json > $out/devices-stale.json\n\
             vitalsd devices > $out/devices-stale.txt\n\
             ls /var/lib/bluetooth/00:AA:01:00:00:00/ > $out/bonds-stale.txt\n\
             kill -USR1 $device_pid\n\
             wait_for 10 device_said pairing_mode || exit 17\n\
             vitalsd pair {DEVICE_ADDRESS} > $out/repair.out 2> $out/repair.err || exit 14\n\
             stage re-paired\n\
             wait_for 180 device_said done || exit 15\n\
             stage device done\n\
             wait_for 60 delivered_at_least {expected} || exit 16\n\
             stage delivered\n\
             vitalsd devices --json > $out/devices.json\n\
             stop_daemon\n"
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let report = || boot.report();
    wait_until(Duration::from_secs(10), || {
        scenario.readings().len() >= expected
    });
    let readings = scenario.readings();
    let mut got: Vec<_> = readings.iter().map(summary).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            bp("2024-03-15T07:00:00", 120, 80, 93, 60),
            bp("2024-03-15T07:01:00", 121, 80, 93, 61),
            bp("2024-03-15T09:00:00", 125, 82, 96, 66),
        ],
        "{}",
        report()
    );
    let log = boot.out("daemon.log");
    let said = log
        .lines()
        .find(|line| line.contains("lost its bond"))
        .expect("the daemon said so");
    assert!(
        said.contains("ERROR") && said.contains(&format!("vitalsd pair {DEVICE_ADDRESS}")),
        "at error level, with the command that fixes it: {said}"
    );
    let stale: serde_json::Value =
        serde_json::from_str(&boot.out("devices-stale.json")).expect("devices-stale.json");
    assert_eq!(stale["devices"][0]["needs_repairing"], true, "{stale}");
    assert!(
        boot.out("devices-stale.txt").contains("NEEDS RE-PAIRING"),
        "{}",
        boot.out("devices-stale.txt")
    );
    // The hub removed its own stale bond: no bond directory for the device under the hub's adapter.
    assert!(
        !boot
            .out("bonds-stale.txt")
            .contains(&DEVICE_ADDRESS.to_string()),
        "{}",
        boot.out("bonds-stale.txt")
    );
    let devices: serde_json::Value =
        serde_json::from_str(&boot.out("devices.json")).expect("devices.json");
    assert_eq!(devices["devices"][0]["needs_repairing"], false, "{devices}");
    assert_eq!(devices["devices"][0]["bonded"], true, "{devices}");
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; guest stages:\n{}",
        boot.elapsed,
        started.elapsed(),
        boot.out("stages")
    );
}

#[test]
fn with_an_unsynchronised_hub_clock_the_cuff_clock_is_read_not_written_and_its_readings_held() {
    let started = Instant::now();
    // The guest's kernel was never synchronised by NTP (adjtimex says STA_UNSYNC), so `ntp` does not
    // trust the hub clock.
    let scenario = Scenario::new("ntp");
    let burst = cuff_records(2);
    scenario.guest.write(
        "device.json",
        &device_scenario("accept", std::slice::from_ref(&burst)),
    );
    let expected = burst.len();
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             held_at_least() {{\n\
               vitalsd status --json > $out/status.json 2>/dev/null || return 1\n\
               count=$(grep -o '\"held_for_clock\": *[0-9]*' $out/status.json | grep -o '[0-9]*$')\n\
               [ \"${{count:-0}}\" -ge \"$1\" ]\n\
             }}\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} --json > $out/pair.json 2> $out/pair.err || exit 11\n\
             stage paired\n\
             start_daemon\n\
             wait_for 120 device_said done || exit 12\n\
             stage device done\n\
             wait_for 60 held_at_least {expected} || exit 13\n\
             stage held\n\
             vitalsd devices --json > $out/devices.json\n\
             stop_daemon\n"
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let report = || boot.report();
    let events = boot.device_events();
    let date_time_uuid = "00002a08-0000-1000-8000-00805f9b34fb";
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "read" && e["uuid"] == date_time_uuid),
        "the cuff's clock is read:\n{}",
        report()
    );
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "write" && e["uuid"] == date_time_uuid),
        "an untrusted hub clock is never written to the cuff:\n{}",
        report()
    );
    let status: serde_json::Value =
        serde_json::from_str(&boot.out("status.json")).expect("status.json");
    assert_eq!(status["outbox"]["held_for_clock"], expected, "{status}");
    // Held, not published: they wait for a trusted clock (README, Time).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(scenario.readings(), Vec::<serde_json::Value>::new());
    let devices: serde_json::Value =
        serde_json::from_str(&boot.out("devices.json")).expect("devices.json");
    assert_eq!(
        devices["devices"][0]["clock"], "not set (left as it was)",
        "{devices}"
    );
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; guest stages:\n{}",
        boot.elapsed,
        started.elapsed(),
        boot.out("stages")
    );
}

#[test]
fn a_body_composition_scale_s_two_packet_records_arrive_as_one_reading_each() {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let scenario = Scenario::new("trusted");
    let packets = crate::support::bluez::devices::two_packet_body_composition_weighings();
    scenario.guest.write(
        "device.json",
        &device_scenario_with(
            "accept",
            std::slice::from_ref(&packets),
            json!({"model": "body-composition-scale", "replay": false}),
        ),
    );
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said ready || exit 10\n\
             stage device ready\n\
             vitalsd pair {DEVICE_ADDRESS} --json > $out/pair.json 2> $out/pair.err || exit 11\n\
             stage paired\n\
             start_daemon\n\
             wait_for 120 device_said done || exit 12\n\
             stage device done\n\
             wait_for 60 grep -q 'Device session finished' $out/daemon.log || exit 13\n\
             wait_for 60 delivered_at_least 2 || exit 14\n\
             stage delivered\n\
             vitalsd status --json > $out/status-final.json\n\
             stop_daemon\n"
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let report = || boot.report();
    let events = boot.device_events();
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "sent" && e["records"] == 4 && e["confirmed"] == 4),
        "the scale indicated its four packets and the hub confirmed each:\n{}",
        report()
    );
    // Every packet was stored once the session ended: two readings and nothing else, all delivered.
    let status: serde_json::Value =
        serde_json::from_str(&boot.out("status-final.json")).expect("status-final.json");
    assert_eq!(
        (
            &status["outbox"]["pending"],
            &status["outbox"]["delivered_total"]
        ),
        (&json!(0), &json!(2)),
        "{status}\n{}",
        report()
    );
    wait_until(Duration::from_secs(10), || scenario.readings().len() >= 2);
    let readings = scenario.readings();
    assert_eq!(
        crate::bluetooth::numbers_by_device_time(&readings),
        crate::bluetooth::two_packet_body_composition_readings(),
        "{}",
        report()
    );
    let finished_at = chrono::Utc::now();
    let mut measured = Vec::new();
    for reading in &readings {
        crate::assert_valid_reading(reading);
        assert_eq!(reading["kind"], "body_composition", "{reading}");
        assert_eq!(reading["time_source"], "device", "{reading}");
        assert_eq!(reading["flags"], json!([]), "{reading}");
        assert_eq!(reading["user_id"], 1, "{reading}");
        assert_eq!(reading["device"]["manufacturer"], "Vitalsd Test");
        // Received in the guest during this test (its clock starts from the host's).
        let received: chrono::DateTime<chrono::Utc> = reading["received_at"]
            .as_str()
            .and_then(|t| t.parse().ok())
            .expect("received_at");
        let slack = chrono::TimeDelta::seconds(60);
        assert!(
            received > started_at - slack && received < finished_at + slack,
            "received_at {received} outside the test's run"
        );
        measured.push(reading["measured_at"].as_str().unwrap().to_string());
    }
    measured.sort();
    assert_eq!(
        measured,
        ["2024-03-15T07:30:00+00:00", "2024-03-16T07:31:00+00:00"]
    );
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; guest stages:\n{}",
        boot.elapsed,
        started.elapsed(),
        boot.out("stages")
    );
}

/// The Xiaomi scale's advertised states, service data under 0x181B: the last weighing's "stepped off"
/// while it waits to be paired and for someone to step on, then a weighing in progress, stabilised
/// (the simulator's vector), stepped off, and a second weighing ending in the reference vector B.1
/// verbatim (its clock reads 1970).
fn xiaomi_weighings() -> serde_json::Value {
    let step =
        |data: &str, seconds: f64| json!({"service": 0x181B, "data": data, "seconds": seconds});
    json!([
        {"service": 0x181B, "data": "02a4e8070b1609140000004042", "until_stepped_on": true},
        step("0204e8070b16091e0000007042", 3.0),
        step("0226e8070b16091e00ac018642", 8.0),
        step("02a6e8070b16091e00ac018642", 3.0),
        step("0204b20705040f020100005042", 3.0),
        step("0226b20705040f0201ac018642", 8.0),
        step("02a6b20705040f0201ac018642", 2.0),
    ])
}

#[test]
fn a_xiaomi_scale_that_only_advertises_gives_one_reading_per_stabilised_weighing_and_no_link() {
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let scenario = Scenario::new("trusted");
    scenario.guest.write(
        "device.json",
        &device_scenario_with(
            "accept",
            &[],
            json!({"model": "xiaomi-scale", "adverts": xiaomi_weighings()}),
        ),
    );
    scenario.guest.write(
        "scenario.sh",
        &format!(
            ". /share/lib.sh\n\
             start_device\n\
             wait_for 30 device_said advert || exit 10\n\
             stage device advertising\n\
             vitalsd pair {DEVICE_ADDRESS} --json > $out/pair.json 2> $out/pair.err || exit 11\n\
             stage bound\n\
             dbus-monitor --system \"type='signal',interface='org.freedesktop.DBus.Properties',\
             path='/org/bluez/hci0/dev_{device_path}'\" > $out/signals.txt 2>&1 &\n\
             monitor_pid=$!\n\
             start_daemon\n\
             wait_for 60 grep -q 'Bluetooth scanning' $out/daemon.log || exit 12\n\
             stage daemon scanning\n\
             kill -USR2 $device_pid\n\
             wait_for 120 device_said done || exit 13\n\
             stage device done\n\
             kill $monitor_pid\n\
             wait_for 60 delivered_at_least 2 || exit 14\n\
             stage delivered\n\
             vitalsd status --json > $out/status-final.json\n\
             vitalsd devices --json > $out/devices.json\n\
             stop_daemon\n",
            device_path = DEVICE_ADDRESS.replace(':', "_"),
        ),
    );
    let boot = scenario.guest.boot(BOOT_TIMEOUT);
    boot.assert_success();
    let report = || boot.report();
    // Every state the scale advertised in place (its advertisement's properties changed) reached the
    // hub's bluetoothd as a ServiceData change of the scale's device object.
    let signals = boot.out("signals.txt");
    let service_data_signals = signals.matches("string \"ServiceData\"").count();
    for step in xiaomi_weighings().as_array().unwrap() {
        let data = hex::decode(step["data"].as_str().unwrap()).unwrap();
        let as_monitored = data
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            signals.contains(&as_monitored),
            "the hub never saw {as_monitored}:\n{signals}\n{}",
            report()
        );
    }
    let pair: serde_json::Value = boot
        .out("pair.json")
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .next_back()
        .expect("pair said something");
    assert_eq!(pair["bonded"], false, "bound without a bond: {pair}");
    // All adverts are over and what the daemon made of them is delivered: two readings, nothing else.
    let status: serde_json::Value =
        serde_json::from_str(&boot.out("status-final.json")).expect("status-final.json");
    assert_eq!(
        (
            &status["outbox"]["pending"],
            &status["outbox"]["delivered_total"]
        ),
        (&json!(0), &json!(2)),
        "{status}\n{}",
        report()
    );
    wait_until(Duration::from_secs(10), || scenario.readings().len() >= 2);
    let readings = scenario.readings();
    let finished_at = chrono::Utc::now();
    let weighings = crate::bluetooth::numbers_by_device_time(&readings);
    let values = vec![
        ("body_weight".to_string(), 85.15),
        ("impedance".to_string(), 428.0),
    ];
    assert_eq!(
        weighings,
        [
            ("1970-05-04T15:02:01".to_string(), values.clone()),
            ("2024-11-22T09:30:00".to_string(), values),
        ],
        "{}",
        report()
    );
    let by_time = |device_time: &str| {
        readings
            .iter()
            .find(|r| r["device_time"] == device_time)
            .unwrap()
    };
    let first = by_time("2024-11-22T09:30:00");
    assert_eq!(first["measured_at"], "2024-11-22T09:30:00+00:00", "{first}");
    assert_eq!(first["time_source"], "device", "{first}");
    assert_eq!(first["flags"], json!([]), "{first}");
    // The scale's clock reads 1970: the hub's receive time stands in, and says so.
    let second = by_time("1970-05-04T15:02:01");
    assert_eq!(second["time_source"], "hub", "{second}");
    assert_eq!(second["flags"], json!(["device_clock_invalid"]), "{second}");
    let measured: chrono::DateTime<chrono::Utc> = second["measured_at"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .expect("measured_at");
    let slack = chrono::TimeDelta::seconds(60);
    assert!(
        measured > started_at - slack && measured < finished_at + slack,
        "measured_at {measured} outside the test's run"
    );
    for reading in &readings {
        crate::assert_valid_reading(reading);
        assert_eq!(reading["kind"], "body_composition", "{reading}");
        assert_eq!(
            reading["device"]["protocol"], "xiaomi-body-composition-scale",
            "{reading}"
        );
    }
    // Never a link: the device saw no connection, and no hub object appeared on its adapter.
    let events = boot.device_events();
    assert!(
        !events
            .iter()
            .any(|e| e["event"] == "connected" || e["event"] == "disconnected"),
        "the hub connected to an advert-only scale:\n{}",
        report()
    );
    let peers = events
        .iter()
        .find(|e| e["event"] == "peers")
        .expect("the device listed its peers");
    assert_eq!(peers["devices"], json!([]), "{}", report());
    assert!(
        !boot.out("daemon.log").contains("Device session"),
        "{}",
        report()
    );
    eprintln!(
        "real-BlueZ scenario: VM {:?}, whole test {:?}; {service_data_signals} ServiceData changes; \
         guest stages:\n{}",
        boot.elapsed,
        started.elapsed(),
        boot.out("stages")
    );
}

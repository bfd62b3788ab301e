//! Bluetooth scenarios: the real daemon and technician commands drive btleplug and zbus against the
//! simulated BlueZ on a private bus, and readings go end to end to a real Mosquitto subscriber.

use std::time::Duration;

use crate::support::bluez::devices::{
    self, blood_pressure_record, date_time, failed_blood_pressure_record,
};
use crate::support::bluez::{uuid16, BluezSim};
use crate::support::broker::Broker;
use crate::support::daemon::{Daemon, DaemonWorld};
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

const CUFF: &str = "AA:BB:CC:DD:EE:01";
const STRANGER: &str = "AA:BB:CC:DD:EE:99";

pub struct BleRig {
    /// Kept so the broker lives as long as the rig.
    pub _broker: Broker,
    pub subscriber: Subscriber,
    pub world: DaemonWorld,
    pub sim: BluezSim,
}

impl BleRig {
    pub fn new() -> BleRig {
        let broker = Broker::start();
        let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
        let world = DaemonWorld::new();
        world.write_config(&broker.url(), &[], &[]);
        world.append_config("[ble]\nadapter = \"hci0\"\n");
        BleRig {
            _broker: broker,
            subscriber,
            world,
            sim: BluezSim::start(),
        }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("DBUS_SYSTEM_BUS_ADDRESS", self.sim.bus_address())]
    }

    pub fn vitalsd(&self, args: &[&str]) -> std::process::Output {
        self.world.command_with_env(args, &self.env())
    }

    pub fn pair(&self, address: &str) {
        let output = self.vitalsd(&["pair", address]);
        assert!(
            output.status.success(),
            "pair {address} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub fn start(&self) -> Daemon {
        self.world.start_with_env(&self.env())
    }

    /// Readings published for one device, by `device.id`.
    pub fn readings_of(&self, address: &str) -> Vec<serde_json::Value> {
        let id = format!("ble:{address}");
        self.subscriber
            .readings()
            .into_iter()
            .filter(|reading| reading["device"]["id"] == id.as_str())
            .collect()
    }

    pub fn wait_for_readings(
        &self,
        address: &str,
        count: usize,
        timeout: Duration,
    ) -> Vec<serde_json::Value> {
        let arrived = wait_until(timeout, || self.readings_of(address).len() >= count);
        let readings = self.readings_of(address);
        assert!(
            arrived,
            "{} of {count} readings from {address}; log:\n{}",
            readings.len(),
            self.world.log()
        );
        readings
    }

    pub fn devices_json(&self) -> serde_json::Value {
        let output = self.vitalsd(&["devices", "--json"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("devices --json prints JSON")
    }
}

fn values(reading: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    reading["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v["value"].clone()))
        .collect()
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

#[test]
fn an_and_cuff_is_paired_then_its_stored_burst_arrives_complete_with_its_clock_set() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    let mut records = cuff_records(29);
    records.push(failed_blood_pressure_record(date_time(
        2024, 3, 15, 8, 0, 0,
    )));
    rig.sim.store_records(CUFF, 0x2A35, &records);

    rig.pair(CUFF);
    rig.sim.device(CUFF, |device| {
        assert!(
            device.paired && device.trusted,
            "paired {} trusted {}",
            device.paired,
            device.trusted
        );
    });
    assert!(rig
        .sim
        .calls()
        .iter()
        .any(|call| call.starts_with("RegisterAgent")));

    let _daemon = rig.start();
    let readings = rig.wait_for_readings(CUFF, 30, Duration::from_secs(30));
    assert_eq!(readings.len(), 30, "nothing duplicated");
    for reading in &readings {
        crate::assert_valid_reading(reading);
    }
    let first = readings
        .iter()
        .find(|r| r["measured_at"] == "2024-03-15T07:00:00+00:00")
        .expect("the oldest record");
    assert_eq!(first["kind"], "blood_pressure");
    assert_eq!(first["time_source"], "device");
    assert_eq!(first["device"]["manufacturer"], "A&D Medical");
    assert_eq!(first["device"]["model"], "UA-651BLE");
    assert_eq!(
        values(first),
        [
            ("systolic".to_string(), 120.into()),
            ("diastolic".to_string(), 80.into()),
            ("mean_arterial_pressure".to_string(), 93.into()),
            ("pulse_rate".to_string(), 60.into()),
        ]
    );
    // The failed measurement is accepted, with nothing invented.
    let failed = readings
        .iter()
        .find(|r| r["measured_at"] == "2024-03-15T08:00:00+00:00")
        .expect("the all-NaN record");
    assert!(failed["values"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["value"].is_null() && v["special"] == "nan"));
    assert_eq!(failed["flags"], serde_json::json!(["measurement_failed"]));

    // The hub wrote the cuff's Date Time before subscribing, and recorded that the clock was not set.
    let writes = rig.sim.device(CUFF, |device| device.writes.clone());
    let time_write = writes
        .iter()
        .find(|(uuid, _)| *uuid == uuid16(0x2A08))
        .expect("a Date Time write");
    assert_eq!(time_write.1.len(), 7);
    let year = u16::from_le_bytes([time_write.1[0], time_write.1[1]]);
    assert!(year >= 2026, "wrote year {year}");
    let calls = rig.sim.device(CUFF, |device| device.calls.clone());
    assert_eq!(
        calls.first().map(String::as_str),
        Some(&*format!("StartNotify {}", uuid16(0x2A35)))
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let devices = rig.devices_json();
            devices["devices"][0]["clock"] == "not set (the hub set it)"
                && devices["devices"][0]["last_reading_at"].is_string()
        }),
        "devices: {}",
        rig.devices_json()
    );
}

#[test]
fn an_unbound_device_advertising_nearby_is_ignored() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.add_device(STRANGER, devices::oximeter());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.sim.store_records(
        STRANGER,
        0x2A5E,
        &[devices::spot_check_record(
            98,
            70,
            date_time(2024, 3, 15, 9, 0, 0),
        )],
    );
    rig.pair(CUFF);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert!(rig.readings_of(STRANGER).is_empty());
    let connects: Vec<String> = rig
        .sim
        .calls()
        .into_iter()
        .filter(|call| call.contains(STRANGER))
        .collect();
    assert!(
        connects.is_empty(),
        "the daemon touched the stranger: {connects:?}"
    );
    let state = std::fs::read_to_string(rig.world.state_dir().join("devices.json")).unwrap();
    assert!(
        !state.contains(STRANGER),
        "the stranger was stored: {state}"
    );
}

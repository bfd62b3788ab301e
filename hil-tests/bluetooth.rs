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
    /// Lives as long as the rig; a scenario about a broker that is away stops and restarts it.
    pub broker: Broker,
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
            broker,
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

/// A record stored after a cuff's first burst, read on a later connection: the sentinel of the tests that
/// must show something did not happen in between.
fn store_one_more_cuff_record(rig: &BleRig) {
    let record = blood_pressure_record(125, 82, 96, 66, date_time(2024, 3, 15, 9, 0, 0));
    rig.sim.store_records(CUFF, 0x2A35, &[record]);
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
    // The cuff's clock reads 2000 (reset since it stamped these records in 2024): their times are on a
    // timeline that is gone, so they carry the hub's time, the flag, and the time stamp as it was sent.
    let first = readings
        .iter()
        .find(|r| r["device_time"] == "2024-03-15T07:00:00")
        .expect("the oldest record");
    assert_eq!(first["kind"], "blood_pressure");
    assert_eq!(first["time_source"], "hub");
    assert_eq!(first["flags"], serde_json::json!(["device_clock_reset"]));
    assert_eq!(first["hub_clock"], "trusted");
    assert!(
        first.get("device_clock").is_none(),
        "a clock that is not set has no offset"
    );
    assert_eq!(first["device"]["manufacturer"], "A&D Medical");
    assert_eq!(first["device"]["model"], "UA-651BLE");
    assert_eq!(first["device"]["serial_number"], "5140300123");
    assert_eq!(first["device"]["system_id"], "C4-F3-12-FF-FE-53-F2-C9");
    assert_eq!(
        Some(first["device"]["address"].clone()),
        first["device"]["id"]
            .as_str()
            .and_then(|id| id.strip_prefix("ble:"))
            .map(serde_json::Value::from)
    );
    assert_eq!(
        (
            &first["device"]["firmware"],
            &first["device"]["hardware"],
            &first["device"]["software"]
        ),
        (
            &serde_json::json!("1.02"),
            &serde_json::json!("2"),
            &serde_json::json!("1.0.3")
        )
    );
    assert_eq!(first["device"]["specialization"], 528391);
    assert_eq!(first["transfer"], "automatic");
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
        .find(|r| r["device_time"] == "2024-03-15T08:00:00")
        .expect("the all-NaN record");
    assert!(failed["values"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["value"].is_null() && v["special"] == "nan"));
    assert_eq!(
        failed["flags"],
        serde_json::json!(["measurement_failed", "device_clock_reset"])
    );

    // The hub wrote the cuff's Date Time before subscribing, and recorded that the clock was not set.
    let writes = rig.sim.device(CUFF, |device| device.writes.clone());
    let time_write = writes
        .iter()
        .find(|(uuid, _)| *uuid == uuid16(0x2A08))
        .expect("a Date Time write");
    assert_eq!(time_write.1.len(), 7);
    let year = i32::from(u16::from_le_bytes([time_write.1[0], time_write.1[1]]));
    // The hub's own year (or the one before, should the new year have begun since the write).
    let this_year = chrono::Datelike::year(&chrono::Utc::now());
    assert!(
        year == this_year || year + 1 == this_year,
        "wrote year {year} in {this_year}"
    );
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

/// How often the hub has read the cuff's Manufacturer Name String.
fn manufacturer_reads(rig: &BleRig) -> usize {
    rig.sim.device(CUFF, |device| {
        device
            .reads
            .iter()
            .filter(|uuid| uuid.starts_with("00002a29"))
            .count()
    })
}

#[test]
fn device_information_cached_by_an_older_hub_is_read_again_once_for_the_newer_fields() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.pair(CUFF);
    let mut daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));
    assert!(daemon.terminate().success(), "{}", rig.world.log());
    // The list as a hub before the System ID and the hardware and software revisions saved it.
    let list_path = rig.world.state_dir().join("devices.json");
    let mut list: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&list_path).unwrap()).unwrap();
    let entries = list["devices"].as_array_mut().expect("a list of devices");
    let cuff = entries
        .iter_mut()
        .find(|entry| entry["address"] == CUFF)
        .expect("the cuff is bound");
    cuff["information"] = serde_json::json!({
        "manufacturer": "A&D Medical",
        "model": "UA-651BLE",
        "serial_number": "5140300123",
        "firmware_revision": "1.02",
    });
    std::fs::write(&list_path, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    // This time the cuff answers its manufacturer with nothing: the name the hub knew stands.
    rig.sim.device(CUFF, |device| {
        device.values.insert(uuid16(0x2A29), Vec::new());
    });

    // The next connection reads Device Information again (a cuff that hangs up before the reads are done
    // leaves it to the connection after) and saves what it read.
    store_one_more_cuff_record(&rig);
    let mut daemon = rig.start();
    rig.wait_for_readings(CUFF, 3, Duration::from_secs(30));
    let saved = wait_until(Duration::from_secs(30), || {
        let list = std::fs::read_to_string(&list_path).unwrap_or_default();
        list.contains("\"read_version\": 1") && list.contains("C4-F3-12-FF-FE-53-F2-C9")
    });
    let list = std::fs::read_to_string(&list_path).unwrap();
    assert!(
        saved,
        "not saved with the new fields: {list}\n{}",
        rig.world.log()
    );
    assert!(list.contains("\"manufacturer\": \"A&D Medical\""), "{list}");
    assert!(daemon.terminate().success(), "{}", rig.world.log());
    let reads_before = manufacturer_reads(&rig);

    // Read with this hub's version, the cache stands on the next connection, whose readings carry it.
    let record = blood_pressure_record(130, 85, 100, 70, date_time(2024, 3, 15, 10, 0, 0));
    rig.sim.store_records(CUFF, 0x2A35, &[record]);
    let _daemon = rig.start();
    let readings = rig.wait_for_readings(CUFF, 4, Duration::from_secs(30));
    let last = readings
        .iter()
        .find(|r| r["device_time"] == "2024-03-15T10:00:00")
        .expect("the record stored after the list was saved");
    assert_eq!(last["device"]["system_id"], "C4-F3-12-FF-FE-53-F2-C9");
    assert_eq!(last["device"]["manufacturer"], "A&D Medical");
    assert_eq!(
        (&last["device"]["hardware"], &last["device"]["software"]),
        (&serde_json::json!("2"), &serde_json::json!("1.0.3"))
    );
    assert_eq!(manufacturer_reads(&rig), reads_before, "not read again");
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
    // The cuff's next record is the sentinel: the daemon reads it in a later round of adverts, all the
    // while the stranger advertises too.
    store_one_more_cuff_record(&rig);
    rig.wait_for_readings(CUFF, 3, Duration::from_secs(30));
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

const OXIMETER: &str = "AA:BB:CC:DD:EE:02";
const SCALE: &str = "AA:BB:CC:DD:EE:03";
pub const GLUCOSE_METER: &str = "AA:BB:CC:DD:EE:04";
const THERMOMETER: &str = "AA:BB:CC:DD:EE:05";
const XIAOMI: &str = "AA:BB:CC:DD:EE:06";
const OMRON: &str = "AA:BB:CC:DD:EE:07";

fn number(reading: &serde_json::Value, name: &str) -> f64 {
    values(reading)
        .into_iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_f64())
        .unwrap_or_else(|| panic!("no {name} in {reading}"))
}

#[test]
fn six_kinds_of_device_at_once_deliver_every_reading_once_with_the_right_values() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.add_device(OXIMETER, devices::oximeter());
    rig.sim.add_device(SCALE, devices::scale());
    rig.sim.add_device(GLUCOSE_METER, devices::glucose_meter());
    rig.sim.add_device(THERMOMETER, devices::thermometer());
    rig.sim.add_device(XIAOMI, devices::xiaomi_scale());
    rig.sim.advertise_service_data(
        XIAOMI,
        0x181B,
        &hex::decode("0226e8070b16091e00ac018642").unwrap(),
    );
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(5));
    rig.sim.store_records(
        OXIMETER,
        0x2A5E,
        &[devices::spot_check_record(
            97,
            64,
            date_time(2024, 3, 15, 9, 0, 0),
        )],
    );
    rig.sim.store_records(
        SCALE,
        0x2A9D,
        &[devices::weight_record(
            16_100,
            date_time(2024, 3, 15, 7, 30, 0),
        )],
    );
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = (1..=3)
            .map(|seq| {
                (
                    seq,
                    devices::glucose_record(
                        seq,
                        date_time(2024, 3, 15, 6 + seq as u8, 0, 0),
                        90 + seq,
                    ),
                )
            })
            .collect();
    });
    rig.sim.store_records(
        THERMOMETER,
        0x2A1C,
        &[devices::temperature_record(
            371,
            date_time(2024, 3, 15, 10, 0, 0),
        )],
    );
    for address in [CUFF, OXIMETER, SCALE, GLUCOSE_METER, THERMOMETER, XIAOMI] {
        rig.pair(address);
    }
    let _daemon = rig.start();

    let cuff = rig.wait_for_readings(CUFF, 5, Duration::from_secs(30));
    let spot = rig.wait_for_readings(OXIMETER, 1, Duration::from_secs(30));
    let weight = rig.wait_for_readings(SCALE, 1, Duration::from_secs(30));
    let glucose = rig.wait_for_readings(GLUCOSE_METER, 3, Duration::from_secs(30));
    let temperature = rig.wait_for_readings(THERMOMETER, 1, Duration::from_secs(30));
    let scale = rig.wait_for_readings(XIAOMI, 1, Duration::from_secs(30));

    // Live values from the oximeter's continuous characteristic, one a second as the device sends them,
    // become one spot reading.
    let live = wait_until(Duration::from_secs(40), || {
        rig.sim
            .notify(OXIMETER, 0x2A5F, &[0x00, 0x62, 0x00, 0x48, 0x00]);
        std::thread::sleep(Duration::from_secs(1));
        rig.readings_of(OXIMETER).len() >= 2
    });
    assert!(live, "no live spot; log:\n{}", rig.world.log());
    let oximeter = rig.readings_of(OXIMETER);
    // A second weighing is the sentinel: the first one, advertised again and again until now, would have
    // been published again before it.
    rig.sim.advertise_service_data(
        XIAOMI,
        0x181B,
        &hex::decode("0226e8070b16091f00ac018642").unwrap(),
    );
    let weighings: Vec<serde_json::Value> = rig
        .wait_for_readings(XIAOMI, 2, Duration::from_secs(30))
        .iter()
        .map(|r| r["measured_at"].clone())
        .collect();
    assert_eq!(
        weighings,
        ["2024-11-22T09:30:00+00:00", "2024-11-22T09:31:00+00:00"],
        "one reading per weighing, however often it is advertised"
    );

    assert_eq!(cuff.len(), 5);
    assert_eq!(number(&spot[0], "spo2"), 97.0);
    assert_eq!(spot[0]["measured_at"], "2024-03-15T09:00:00+00:00");
    let live = oximeter
        .iter()
        .find(|r| r["device"]["protocol"] == "plx-continuous")
        .expect("a spot from the live stream");
    assert_eq!(
        (number(live, "spo2"), number(live, "pulse_rate")),
        (98.0, 72.0)
    );
    assert_eq!(number(&weight[0], "body_weight"), 80.5);
    assert_eq!(weight[0]["kind"], "body_weight");
    let mut glucose_values: Vec<f64> = glucose.iter().map(|r| number(r, "glucose")).collect();
    glucose_values.sort_by(f64::total_cmp);
    assert_eq!(glucose_values, [91.0, 92.0, 93.0]);
    assert_eq!(glucose[0]["values"][0]["unit"], "mg/dL");
    assert_eq!(number(&temperature[0], "body_temperature"), 37.1);
    assert_eq!(scale[0]["kind"], "body_composition");
    assert_eq!(
        (
            number(&scale[0], "body_weight"),
            number(&scale[0], "impedance")
        ),
        (85.15, 428.0)
    );
    assert_eq!(scale[0]["measured_at"], "2024-11-22T09:30:00+00:00");
    for reading in rig.subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
    let ids = rig.subscriber.unique_reading_ids();
    assert_eq!(
        ids.len(),
        rig.subscriber.readings().len(),
        "a reading was published twice"
    );
}

#[test]
fn a_link_lost_mid_burst_is_read_again_on_reconnect_without_losing_or_duplicating() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(20));
    rig.sim.device(CUFF, |cuff| cuff.drop_link_after = Some(8));
    rig.pair(CUFF);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 20, Duration::from_secs(60));
    // One more record, read on a later connection, is the sentinel: a record of the burst read twice
    // would have been published before it.
    store_one_more_cuff_record(&rig);
    let readings = rig.wait_for_readings(CUFF, 21, Duration::from_secs(60));
    assert_eq!(readings.len(), 21);
    assert_eq!(rig.subscriber.readings().len(), 21, "nothing duplicated");
    let connects = rig.sim.device(CUFF, |cuff| cuff.connect_attempts);
    assert!(
        connects >= 2,
        "the burst needed a second connection, saw {connects}"
    );
}

#[test]
fn a_glucose_meter_is_read_incrementally_and_a_restarted_numbering_loses_and_duplicates_nothing() {
    let rig = BleRig::new();
    rig.sim.add_device(GLUCOSE_METER, devices::glucose_meter());
    let record = |seq: u16, hour: u8, mg: u16| {
        (
            seq,
            devices::glucose_record(seq, date_time(2024, 3, 15, hour, 0, 0), mg),
        )
    };
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = vec![record(1, 6, 101), record(2, 7, 102), record(3, 8, 103)]
    });
    rig.pair(GLUCOSE_METER);
    let _daemon = rig.start();
    rig.wait_for_readings(GLUCOSE_METER, 3, Duration::from_secs(30));

    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records.push(record(4, 9, 104))
    });
    rig.wait_for_readings(GLUCOSE_METER, 4, Duration::from_secs(30));
    let writes = rig.sim.device(GLUCOSE_METER, |meter| meter.writes.clone());
    let racp: Vec<String> = writes
        .iter()
        .filter(|(uuid, _)| *uuid == uuid16(0x2A52))
        .map(|(_, v)| hex::encode(v))
        .collect();
    assert!(
        racp.contains(&"0101".to_string()),
        "first read asks for everything: {racp:?}"
    );
    assert!(
        racp.contains(&"0103010400".to_string()),
        "then only after the last stored sequence number: {racp:?}"
    );

    // A battery change resets the meter's numbering; its new records reuse sequence numbers 1 and 2.
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = vec![record(1, 10, 105), record(2, 11, 106)]
    });
    rig.wait_for_readings(GLUCOSE_METER, 6, Duration::from_secs(40));
    // The meter's next record in its new numbering is the sentinel: a record published twice would have
    // come before it.
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records.push(record(3, 12, 107))
    });
    let readings = rig.wait_for_readings(GLUCOSE_METER, 7, Duration::from_secs(40));
    let mut values: Vec<f64> = rig
        .readings_of(GLUCOSE_METER)
        .iter()
        .map(|r| number(r, "glucose"))
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(
        values,
        [101.0, 102.0, 103.0, 104.0, 105.0, 106.0, 107.0],
        "{readings:?}"
    );
    // Seeing the restart, the hub asked for every record again.
    let asked_for_all = rig.sim.device(GLUCOSE_METER, |meter| {
        meter
            .writes
            .iter()
            .filter(|(uuid, value)| *uuid == uuid16(0x2A52) && value.as_slice() == [0x01, 0x01])
            .count()
    });
    assert!(
        asked_for_all >= 2,
        "{asked_for_all} requests for all records"
    );
}

/// Glucose record `sequence` of the scenarios about records that were not stored: measured at
/// 06:00 + `sequence` hours, 100 + `sequence` mg/dL, so its value names it.
pub fn glucose(sequence: u16) -> (u16, Vec<u8>) {
    let at = date_time(2024, 3, 15, 6 + sequence as u8, 0, 0);
    (
        sequence,
        devices::glucose_record(sequence, at, 100 + sequence),
    )
}

/// The Record Access Control Point requests the hub wrote to a glucose meter, in order, as hex.
pub fn racp_requests(rig: &BleRig, address: &str) -> Vec<String> {
    rig.sim.device(address, |meter| {
        meter
            .writes
            .iter()
            .filter(|(uuid, _)| *uuid == uuid16(0x2A52))
            .map(|(_, value)| hex::encode(value))
            .collect()
    })
}

/// The RACP request for every record: what the hub asks a meter it has noted nothing from.
pub const ALL_RECORDS: &str = "0101";

/// The RACP request for the records from sequence number `first` on: what the hub asks once it noted
/// record `first - 1` as read.
pub fn records_from(first: u16) -> String {
    format!("010301{}", hex::encode(first.to_le_bytes()))
}

/// Checks that every reading of the meter arrived exactly once and that they are records `1..=count`.
#[track_caller]
pub fn each_glucose_record_arrived_once(rig: &BleRig, count: u16) {
    let counts = rig.subscriber.reading_counts();
    assert!(
        counts.values().all(|&arrivals| arrivals == 1),
        "a reading arrived more than once: {counts:?}"
    );
    let mut values: Vec<f64> = rig
        .readings_of(GLUCOSE_METER)
        .iter()
        .map(|reading| number(reading, "glucose"))
        .collect();
    values.sort_by(f64::total_cmp);
    let expected: Vec<f64> = (1..=count)
        .map(|sequence| f64::from(100 + sequence))
        .collect();
    assert_eq!(values, expected, "the meter's records as they arrived");
}

/// The outbox holds `max_pending` readings while the broker is away, so it refuses a glucose meter's
/// newer records. A refused record is not noted as read, neither in memory nor in the device list that a
/// stop in mid-session writes, so the meter is asked for it again; nor is a later record of the same
/// session that the outbox took once the broker had taken some: noting that one would make the hub ask
/// only for records after it, and the refused one would never be read.
#[test]
fn glucose_records_a_full_outbox_refused_are_asked_for_again_after_a_stop_and_after_later_ones_were_taken(
) {
    let mut rig = BleRig::new();
    // Two readings fill the outbox while the broker is away.
    rig.world.append_config("[outbox]\nmax_pending = 2\n");
    rig.sim.add_device(GLUCOSE_METER, devices::glucose_meter());
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = (1..=4).map(glucose).collect();
        // The meter holds record 4 back, so the hub's session is still open, waiting for the rest of
        // the transfer, once the outbox refused record 3.
        meter.glucose_gate = Some(4);
    });
    rig.pair(GLUCOSE_METER);
    rig.broker.stop();
    let mut daemon = rig.start();
    let refused = |rig: &BleRig| rig.world.outbox_counter("rejected_full_total");
    crate::support::wait_for(
        "the full outbox to refuse record 3",
        Duration::from_secs(30),
        || refused(&rig) >= 1,
        || rig.world.log(),
    );
    let status = rig.world.status();
    assert_eq!(status["outbox"]["pending"], 2, "{status}");
    assert_eq!(status["outbox"]["rejected_full_total"], 1, "{status}");

    // Stopped in mid-session: the device list the daemon writes as it stops must not note record 3.
    assert!(
        rig.sim.device(GLUCOSE_METER, |meter| meter.connected),
        "the session ended before the stop; log:\n{}",
        rig.world.log()
    );
    daemon.terminate();
    let _daemon = rig.start();
    crate::support::wait_for(
        "the restarted hub to ask the meter again for the records from 3 on",
        Duration::from_secs(30),
        || racp_requests(&rig, GLUCOSE_METER).contains(&records_from(3)),
        || {
            format!(
                "{:?}\n{}",
                racp_requests(&rig, GLUCOSE_METER),
                rig.world.log()
            )
        },
    );
    crate::support::wait_for(
        "the outbox to refuse record 3 again",
        Duration::from_secs(30),
        || refused(&rig) >= 2,
        || rig.world.log(),
    );

    // The broker takes records 1 and 2, and the outbox has room again while the session, which had
    // record 3 refused, is still open; then the meter sends record 4, which the outbox takes.
    rig.broker.restart();
    rig.wait_for_readings(GLUCOSE_METER, 2, Duration::from_secs(30));
    crate::support::wait_for(
        "the delivered readings to leave the outbox",
        Duration::from_secs(30),
        || rig.world.outbox_keys().is_empty(),
        || rig.world.log(),
    );
    rig.sim
        .device(GLUCOSE_METER, |meter| meter.glucose_gate = None);
    rig.wait_for_readings(GLUCOSE_METER, 4, Duration::from_secs(60));
    // Record 5, read once the hub noted record 4, is the sentinel: a record published twice would have
    // come before it.
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records.push(glucose(5))
    });
    rig.wait_for_readings(GLUCOSE_METER, 5, Duration::from_secs(60));
    each_glucose_record_arrived_once(&rig, 5);
    // Record 3 was asked for by the restarted hub, and again by the session after the one in which the
    // outbox took record 4; only then were records from 5 on asked for.
    let requests = racp_requests(&rig, GLUCOSE_METER);
    assert_eq!(
        requests[..3],
        [ALL_RECORDS.to_string(), records_from(3), records_from(3)],
        "{requests:?}"
    );
    const LAST_RECORD: &str = "0106";
    assert!(
        requests[3..]
            .iter()
            .all(|request| *request == records_from(5) || request == LAST_RECORD),
        "{requests:?}"
    );
}

#[test]
fn a_device_that_lost_its_bond_is_reported_its_stale_bond_removed_and_re_pairing_works_while_running(
) {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    // As real BlueZ 5.66 reports it: every link aborts ("le-connection-abort-by-local") and nothing
    // names the key; the hub concludes a lost bond from three such links in a row.
    rig.sim.device(CUFF, |cuff| cuff.bond_lost_on_device = true);
    let _daemon = rig.start();
    assert!(
        wait_until(Duration::from_secs(30), || rig.devices_json()["devices"][0]
            ["needs_repairing"]
            == true),
        "devices: {}\nlog:\n{}",
        rig.devices_json(),
        rig.world.log()
    );
    assert!(
        rig.sim
            .calls()
            .iter()
            .any(|call| call.starts_with("RemoveDevice")),
        "{:?}",
        rig.sim.calls()
    );
    let attempts = rig.sim.device(CUFF, |cuff| cuff.connect_attempts);
    assert!(attempts >= 3, "concluded after {attempts} aborted links");
    let human = rig.vitalsd(&["devices"]);
    assert!(String::from_utf8_lossy(&human.stdout).contains("NEEDS RE-PAIRING"));

    // The technician pairs it again while the daemon runs: the command goes through the control socket.
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(3));
    rig.pair(CUFF);
    rig.wait_for_readings(CUFF, 3, Duration::from_secs(30));
    assert_eq!(rig.devices_json()["devices"][0]["needs_repairing"], false);
    let socket = rig.world.runtime_dir().join("control.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
}

/// A cuff that forgot its bond while BlueZ answers `Connect` once the link is up and the kernel then drops
/// the link (encryption with the forgotten key fails) before the services are resolved, as real BlueZ 5.66
/// did on some links; with `comes_back`, the link is up again 20 ms later and never resolves its services,
/// as in a clean-clone CI run. Waiting for the services would end only at the daemon's connect timeout,
/// which is not an aborted link; a look at the link now and then misses a 20 ms gap, BlueZ's signals of
/// the link's changes do not. Either way the lost bond is concluded from aborted links alone.
fn check_lost_bond_detected(comes_back: bool) {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    rig.sim.device(CUFF, |cuff| {
        cuff.bond_lost_on_device = true;
        cuff.lost_bond_answers_connect = true;
        cuff.lost_bond_link_comes_back = comes_back;
    });
    let _daemon = rig.start();
    assert!(
        wait_until(Duration::from_secs(40), || rig.devices_json()["devices"][0]
            ["needs_repairing"]
            == true),
        "devices: {}\nlog:\n{}",
        rig.devices_json(),
        rig.world.log()
    );
    let log = rig.world.log();
    assert!(
        log.contains("the link went down before the device's services were resolved"),
        "{log}"
    );
    assert!(
        !log.contains(crate::support::daemon_phrase("timed out")),
        "{log}"
    );
}

#[test]
fn a_lost_bond_whose_links_go_down_after_bluez_answered_connect_is_still_detected() {
    check_lost_bond_detected(false);
}

#[test]
fn a_lost_bond_whose_link_comes_back_at_once_without_its_services_is_still_detected() {
    check_lost_bond_detected(true);
}

#[test]
fn a_link_whose_services_are_never_resolved_is_dropped_when_the_connection_attempt_times_out() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    // The link is up and BlueZ never resolves its services. Left standing, it would make every later
    // `Connect` wait on it again, and the cuff would never be read.
    rig.sim.device(CUFF, |cuff| {
        cuff.resolve_services_after = Some(Duration::from_secs(3600))
    });
    let _daemon = rig.start();
    let disconnect = format!("Disconnect {CUFF}");
    assert!(
        wait_until(Duration::from_secs(45), || rig
            .sim
            .calls()
            .contains(&disconnect)),
        "calls: {:?}\nlog:\n{}",
        rig.sim.calls(),
        rig.world.log()
    );
    // The attempt is reported once the link has had time to settle.
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .world
            .log()
            .contains(crate::support::daemon_phrase("timed out"))),
        "{}",
        rig.world.log()
    );
    assert!(!rig.sim.device(CUFF, |cuff| cuff.connected));
    // Services resolve in time again: the next attempt reads the cuff.
    rig.sim
        .device(CUFF, |cuff| cuff.resolve_services_after = None);
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(60));
}

#[test]
fn passkey_pairing_needs_the_passkey_the_device_shows() {
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(123_456));
    let without = rig.vitalsd(&["pair", OMRON]);
    assert!(!without.status.success());
    let wrong = rig.vitalsd(&["pair", OMRON, "--passkey", "111111"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("error"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(!rig.sim.device(OMRON, |d| d.paired));
    let right = rig.vitalsd(&["pair", OMRON, "--passkey", "123456"]);
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert!(rig.sim.device(OMRON, |d| d.paired && d.trusted));
    rig.sim.store_records(OMRON, 0x2A35, &cuff_records(2));
    let _daemon = rig.start();
    rig.wait_for_readings(OMRON, 2, Duration::from_secs(30));
    // Omron cuffs keep time through the Current Time Service.
    let writes = rig.sim.device(OMRON, |d| d.writes.clone());
    assert!(writes
        .iter()
        .any(|(uuid, value)| *uuid == uuid16(0x2A2B) && value.len() == 10));
}

/// What a `vitalsd` command printed, both streams.
fn said(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn a_bonded_cuff_that_sends_before_the_hub_subscribes_again_loses_no_record() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.pair(CUFF);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));

    // BlueZ holds the daemon's subscription for the bonded cuff and enables indications itself as soon
    // as the next link is up: the cuff sends these before the hub's session has discovered anything or
    // subscribed, while `Connect` is still under way.
    let later: Vec<Vec<u8>> = (0..3)
        .map(|i| blood_pressure_record(130 + i, 85, 100, 70, date_time(2024, 3, 16, 9, i as u8, 0)))
        .collect();
    rig.sim.store_records(CUFF, 0x2A35, &later);
    let readings = rig.wait_for_readings(CUFF, 5, Duration::from_secs(30));
    assert_eq!(readings.len(), 5, "nothing duplicated");
    let calls = rig.sim.device(CUFF, |cuff| cuff.calls.clone());
    assert!(
        calls.contains(&format!("CCC enabled by BlueZ {}", uuid16(0x2A35))),
        "the records did not come on BlueZ's own re-subscription: {calls:?}"
    );
    assert!(
        rig.sim
            .device(CUFF, |cuff| cuff.stored[&uuid16(0x2A35)].is_empty()),
        "the cuff still holds records"
    );
}

#[test]
fn a_bonded_cuff_that_drops_the_link_before_its_services_are_resolved_loses_no_record() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.pair(CUFF);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));

    // As on a busy hub with the real stack: BlueZ re-enables the subscription, the cuff sends at once
    // and drops the link, and the services are not resolved before it does, so `Connect` never
    // completes. The records BlueZ confirmed wait in the session's stream.
    // The cuff waits a few seconds for the hub's setup after such a burst, then hangs up: before BlueZ,
    // slower here, has resolved the services.
    rig.sim.device(CUFF, |cuff| {
        cuff.resolve_services_after = Some(Duration::from_secs(8))
    });
    let later: Vec<Vec<u8>> = (0..3)
        .map(|i| blood_pressure_record(130 + i, 85, 100, 70, date_time(2024, 3, 16, 9, i as u8, 0)))
        .collect();
    rig.sim.store_records(CUFF, 0x2A35, &later);
    let readings = rig.wait_for_readings(CUFF, 5, Duration::from_secs(30));
    assert_eq!(readings.len(), 5, "nothing lost, nothing duplicated");
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .world
            .log()
            .contains("dropped the link before its services were resolved")),
        "the records came through the session that lost its link:\n{}",
        rig.world.log()
    );
}

#[test]
fn a_first_pairing_the_device_declines_is_reported_as_a_failed_authentication_not_a_lost_bond() {
    let rig = BleRig::new();
    let mut cuff = devices::and_cuff();
    cuff.declines_pairing = true;
    rig.sim.add_device(CUFF, cuff);
    let output = rig.vitalsd(&["pair", CUFF]);
    let said = said(&output);
    assert!(!output.status.success(), "{said}");
    // BlueZ 5.66 says AuthenticationFailed, as for a device that forgot its bond; there was none.
    assert!(
        !said.contains("bond"),
        "a first pairing has no bond to lose: {said}"
    );
    assert!(
        said.contains("authentication"),
        "the failure is named: {said}"
    );
    assert!(rig.sim.calls().contains(&format!("Pair {CUFF}")));
    assert_eq!(rig.devices_json()["devices"], serde_json::json!([]));
}

#[test]
fn a_device_showing_a_new_passkey_for_each_pairing_refuses_one_learnt_from_an_earlier_attempt() {
    let rig = BleRig::new();
    rig.sim
        .add_device(OMRON, devices::omron_cuff_showing_random_passkeys());
    let first = rig.vitalsd(&["pair", OMRON, "--passkey", "000000"]);
    assert!(
        !first.status.success(),
        "the cuff picked 000000 (one chance in a million): {}",
        said(&first)
    );
    let shown = rig
        .sim
        .device(OMRON, |cuff| cuff.shown_passkey)
        .expect("the cuff showed a passkey");
    // The passkey the cuff showed last time is no good now: a passkey given before pairing starts can
    // only pair a device whose passkey is fixed.
    let second = rig.vitalsd(&["pair", OMRON, "--passkey", &format!("{shown:06}")]);
    let said = said(&second);
    assert!(!second.status.success(), "{said}");
    assert!(
        said.contains("authentication") && !said.contains("bond"),
        "a wrong passkey is a failed authentication: {said}"
    );
    let now_shown = rig.sim.device(OMRON, |cuff| cuff.shown_passkey);
    assert!(now_shown.is_some() && now_shown != Some(shown));
    assert!(!rig.sim.device(OMRON, |cuff| cuff.paired));
}

#[test]
fn the_hubs_own_battery_reads_and_subscription_are_not_taken_for_readings() {
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(123_456));
    rig.sim.store_records(OMRON, 0x2A35, &cuff_records(2));
    let paired = rig.vitalsd(&["pair", OMRON, "--passkey", "123456"]);
    assert!(paired.status.success(), "{}", said(&paired));
    let _daemon = rig.start();
    rig.wait_for_readings(OMRON, 2, Duration::from_secs(30));
    // bluetoothd's battery plugin read Battery Level and subscribed to it on this link; every read the
    // session made came back as a `Value` signal too. A battery notification goes to the plugin only.
    assert!(rig.sim.notify(OMRON, 0x2A19, &[55]));
    // A live measurement is the sentinel: anything the battery traffic produced would come before it.
    let live = blood_pressure_record(128, 84, 99, 71, date_time(2024, 3, 15, 10, 0, 0));
    assert!(rig.sim.notify(OMRON, 0x2A35, &live));
    let readings = rig.wait_for_readings(OMRON, 3, Duration::from_secs(30));
    assert_eq!(readings.len(), 3);
    assert_eq!(rig.subscriber.readings().len(), 3, "{readings:#?}");
    let battery_reads = rig.sim.device(OMRON, |cuff| {
        cuff.reads
            .iter()
            .filter(|uuid| **uuid == uuid16(0x2A19))
            .count()
    });
    assert!(
        battery_reads >= 2,
        "the plugin's read and the session's: {battery_reads}"
    );
    assert_eq!(rig.devices_json()["devices"][0]["battery_percent"], 90);
}

#[test]
fn a_bonded_device_whose_link_aborts_twice_keeps_its_bond() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.pair(CUFF);
    // Two links aborted while being set up (the cuff walked off mid-connect): BlueZ 5.66 says
    // "le-connection-abort-by-local", exactly as for a device that forgot its bond.
    rig.sim.device(CUFF, |cuff| cuff.links_to_abort = 2);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(40));
    assert_bond_kept(&rig, 3);
}

/// The cuff was read after at least `attempts` connection attempts, and its bond is still whole.
#[track_caller]
fn assert_bond_kept(rig: &BleRig, attempts: u32) {
    assert!(rig
        .sim
        .device(CUFF, |cuff| cuff.connect_attempts >= attempts
            && cuff.paired));
    assert!(
        !rig.sim
            .calls()
            .iter()
            .any(|call| call.starts_with("RemoveDevice")),
        "{:?}",
        rig.sim.calls()
    );
    assert_eq!(rig.devices_json()["devices"][0]["needs_repairing"], false);
}

#[test]
fn a_bonded_device_whose_links_stand_seconds_unresolved_then_drop_keeps_its_bond() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.pair(CUFF);
    // As many links as make a lost bond when they abort at once, each standing 4 s with its services
    // never resolved before it goes down: the real stack's links did this just after bluetoothd
    // restarted, and the hub removed a good bond. A refused key ends a link within a fraction of that.
    rig.sim
        .device(CUFF, |cuff| cuff.links_standing_unresolved = 3);
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(90));
    assert_bond_kept(&rig, 4);
    let dropped = crate::support::daemon_phrase(
        "after it came up, before the device's services were resolved",
    );
    assert!(rig.world.log().contains(dropped), "{}", rig.world.log());
}

/// Waits until the daemon reports the adapter powered off, failing with `failure` and its log; returns the
/// phrase, to count it.
#[track_caller]
fn wait_for_power_off_report(rig: &BleRig, failure: &str) -> &'static str {
    let noticed = crate::support::daemon_phrase("The Bluetooth adapter was powered off.");
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .world
            .log()
            .contains(noticed)),
        "{failure}:\n{}",
        rig.world.log()
    );
    noticed
}

/// A paired cuff the scanning daemon has read once (it had nothing stored), so what the cuff sends next
/// needs the scan to hear it again.
fn scanning_after_a_first_session() -> (BleRig, Daemon) {
    let (rig, daemon) = scanning_with_a_paired_cuff();
    let finished = crate::support::daemon_phrase("Device session finished.");
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .world
            .log()
            .contains(finished)),
        "the first session never finished:\n{}",
        rig.world.log()
    );
    (rig, daemon)
}

/// A paired cuff and a daemon that is scanning for it.
fn scanning_with_a_paired_cuff() -> (BleRig, Daemon) {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    let daemon = rig.start();
    assert!(
        wait_until(Duration::from_secs(20), || rig.sim.with(|s| s.discovering)),
        "never scanned"
    );
    (rig, daemon)
}

#[test]
fn the_adapter_powered_off_and_on_again_and_a_bluetoothd_restart_are_recovered_from() {
    let (rig, _daemon) = scanning_with_a_paired_cuff();

    rig.sim.set_powered(false);
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    wait_for_power_off_report(&rig, "the daemon did not report the adapter going off");
    // The outage itself: an adapter that stays off a while, a duration by nature.
    std::thread::sleep(Duration::from_secs(3));
    assert!(rig.readings_of(CUFF).is_empty());
    rig.sim.set_powered(true);
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));

    let scans = || {
        rig.sim
            .calls()
            .iter()
            .filter(|call| *call == "StartDiscovery")
            .count()
    };
    let scans_before = scans();
    rig.sim.restart_bluetoothd(Duration::from_secs(1));
    let more: Vec<Vec<u8>> = (0..3)
        .map(|i| blood_pressure_record(130, 85, 100, 70, date_time(2024, 3, 16, 9, i, 0)))
        .collect();
    rig.sim.store_records(CUFF, 0x2A35, &more);
    rig.wait_for_readings(CUFF, 5, Duration::from_secs(45));
    assert!(
        scans() > scans_before,
        "the records came without a scan on the new bluetoothd"
    );
}

#[test]
fn a_scan_bluez_drops_without_a_signal_is_started_again() {
    let (rig, _daemon) = scanning_after_a_first_session();
    // BlueZ 5.66 forgot the daemon's discovery this way on the real stack when `vitalsd pair` stopped
    // its own scan just as the daemon started one; the adapter went on discovering for the other client.
    rig.sim.forget_discovery_clients();
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(30));
    let noticed =
        crate::support::daemon_phrase("had stopped the hub's Bluetooth scan without notice");
    assert!(rig.world.log().contains(noticed), "{}", rig.world.log());
}

#[test]
fn a_scan_that_hears_nothing_for_a_minute_is_stopped_and_started_again() {
    let (rig, _daemon) = scanning_after_a_first_session();
    // The real stack left the daemon's discovery registered with the controller no longer scanning
    // after `bluetoothctl scan on` beside it made a restart of the scan fail; nothing signals it.
    rig.sim.wedge_discovery();
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(90));
}

#[test]
fn the_scan_check_gets_its_answers_at_once_on_a_quiet_bus() {
    let (rig, _daemon) = scanning_with_a_paired_cuff();
    // The check reads `Discovering` after BlueZ refused its start. Through a proxy with zbus's default
    // property cache that read waited 5 s in vain at every check (a clean-clone CI run), holding the
    // daemon's Bluetooth loop so that devices went unread (here it failed one run in three with that
    // proxy; once a daemon's read hangs, every later one does). A check's outcome is in the log before
    // the next check's start reaches BlueZ, so two starts mean the first check has ended.
    let checks = || {
        rig.sim
            .calls()
            .iter()
            .filter(|call| *call == "StartDiscovery (already discovering)")
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || checks() >= 2),
        "the daemon never checked its scan twice:\n{}",
        rig.world.log()
    );
    let log = rig.world.log();
    let failed = crate::support::daemon_phrase("Could not check the scan.");
    assert!(!log.contains(failed), "{log}");
}

#[test]
fn a_scan_bluez_ends_while_counting_it_as_running_is_started_again_before_a_minute_of_silence() {
    let (rig, _daemon) = scanning_after_a_first_session();
    // A clean-clone CI run met this on the real stack: the daemon's start matched the running filter and
    // was answered at once, then another program's stop ended the scan under it. BlueZ signals
    // `Discovering` false yet keeps refusing the daemon's start as in progress.
    rig.sim.end_scan_keeping_clients();
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(2));
    rig.wait_for_readings(CUFF, 2, Duration::from_secs(90));
    let log = rig.world.log();
    let silence = crate::support::daemon_phrase("No advert heard; restarting the scan");
    let noticed = crate::support::daemon_phrase(
        "BlueZ counts the hub's Bluetooth scan as running while the adapter does not discover",
    );
    assert!(log.contains(noticed), "{log}");
    assert!(
        !log.contains(silence),
        "the scan was started again only after a minute of silence:\n{log}"
    );
}

#[test]
fn an_adapter_found_off_before_its_signal_arrives_is_reported_and_scanned_on_again() {
    let (rig, _daemon) = scanning_with_a_paired_cuff();
    // The real-BlueZ suite saw the daemon's periodic look at the adapter find it off before the signal
    // came; the scan it restarted powered the adapter on again, and the outage went unreported. Here the
    // signal comes only once the daemon has reported the outage from its own look (5 s apart), and the
    // adapter refuses to be powered on until the test allows it.
    rig.sim.set_powered_unsignalled(false);
    let noticed =
        wait_for_power_off_report(&rig, "the outage was not reported before its signal came");
    rig.sim.signal_powered();
    let log = rig.world.log();
    assert_eq!(
        log.matches(noticed).count(),
        1,
        "the outage was not reported before its signal came, or reported twice:\n{log}"
    );
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(1));
    rig.sim.set_powered(true);
    rig.wait_for_readings(CUFF, 1, Duration::from_secs(30));
    assert_eq!(
        rig.world.log().matches(noticed).count(),
        1,
        "{}",
        rig.world.log()
    );
}

#[test]
fn malformed_characteristic_values_are_counted_and_skipped() {
    let rig = BleRig::new();
    rig.sim.add_device(THERMOMETER, devices::thermometer());
    rig.sim.store_records(
        THERMOMETER,
        0x2A1C,
        &[
            devices::temperature_record(365, date_time(2024, 3, 15, 6, 0, 0)),
            hex::decode("06b00e00fedc070c050b32").unwrap(),
            vec![],
            devices::temperature_record(372, date_time(2024, 3, 15, 7, 0, 0)),
        ],
    );
    rig.pair(THERMOMETER);
    let _daemon = rig.start();
    let readings = rig.wait_for_readings(THERMOMETER, 2, Duration::from_secs(30));
    let mut temperatures: Vec<f64> = readings
        .iter()
        .map(|r| number(r, "body_temperature"))
        .collect();
    temperatures.sort_by(f64::total_cmp);
    assert_eq!(temperatures, [36.5, 37.2]);
    assert!(
        wait_until(Duration::from_secs(10), || {
            rig.world.status()["counters"][format!("frames_rejected.ble:{THERMOMETER}")].as_u64()
                == Some(2)
        }),
        "status: {}",
        rig.world.status()
    );
}

#[test]
fn scan_lists_nearby_health_devices_with_model_signal_and_pairing_mode() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.sim.device(CUFF, |cuff| cuff.pairing_mode = true);
    rig.sim.add_device(OXIMETER, devices::oximeter());
    let output = rig.vitalsd(&["scan", "--seconds", "3", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let cuff = lines
        .iter()
        .find(|l| l["address"] == CUFF)
        .expect("the cuff is listed");
    assert_eq!(cuff["model"], "A&D UA-651BLE");
    assert_eq!(cuff["pairing_mode"], true);
    assert!(cuff["rssi"].as_i64().is_some());
    let oximeter = lines
        .iter()
        .find(|l| l["address"] == OXIMETER)
        .expect("the oximeter is listed");
    assert_eq!(oximeter["pairing_mode"], false);
    assert_eq!(oximeter["bound"], false);
}

#[test]
fn records_stamped_by_a_device_clock_that_was_days_behind_are_corrected_with_a_flag() {
    use chrono::{Datelike, Timelike};
    let rig = BleRig::new();
    let now = chrono::Utc::now().naive_utc();
    let stamp = |t: chrono::NaiveDateTime| {
        date_time(
            t.year() as u16,
            t.month() as u8,
            t.day() as u8,
            t.hour() as u8,
            t.minute() as u8,
            t.second() as u8,
        )
    };
    let device_clock = now - chrono::TimeDelta::days(3);
    let mut scale = devices::scale();
    scale
        .values
        .insert(uuid16(0x2A08), stamp(device_clock).to_vec());
    rig.sim.add_device(SCALE, scale);
    // Weighed an hour before the sync, by the scale's clock.
    rig.sim.store_records(
        SCALE,
        0x2A9D,
        &[devices::weight_record(
            15_000,
            stamp(device_clock - chrono::TimeDelta::hours(1)),
        )],
    );
    rig.pair(SCALE);
    let _daemon = rig.start();
    let readings = rig.wait_for_readings(SCALE, 1, Duration::from_secs(30));
    let measured: chrono::DateTime<chrono::FixedOffset> = readings[0]["measured_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expected = now - chrono::TimeDelta::hours(1);
    let error = (measured.naive_utc() - expected).num_seconds().abs();
    assert!(
        error < 120,
        "measured_at {measured}, expected about {expected}"
    );
    assert_eq!(readings[0]["time_source"], "device");
    assert_eq!(
        readings[0]["flags"],
        serde_json::json!(["device_clock_corrected"])
    );
    // The coincident time stamp rides along: what the scale's clock said, and what the hub made of it.
    let weighed = device_clock - chrono::TimeDelta::hours(1);
    assert_eq!(
        readings[0]["device_time"],
        weighed.format("%Y-%m-%dT%H:%M:%S").to_string()
    );
    let clock = &readings[0]["device_clock"];
    assert!(
        clock["offset_s"]
            .as_i64()
            .is_some_and(|s| (s + 3 * 86_400).abs() < 120),
        "{clock}"
    );
    assert_eq!(clock["set"], true);
    assert!(
        wait_until(Duration::from_secs(10), || {
            rig.devices_json()["devices"][0]["clock_offset_s"]
                .as_i64()
                .is_some_and(|s| (s + 3 * 86_400).abs() < 120)
        }),
        "{}",
        rig.devices_json()
    );
}

#[test]
fn a_bound_device_that_requires_pairing_is_paired_through_the_agent_and_then_read() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    // The hub's bond was cleared behind the daemon's back (bluetoothctl remove, a wiped /var/lib/bluetooth):
    // the cuff refuses the subscription until it is paired again.
    rig.sim.device(CUFF, |cuff| {
        cuff.paired = false;
        cuff.bonded = false;
    });
    rig.sim.store_records(CUFF, 0x2A35, &cuff_records(4));
    let _daemon = rig.start();
    rig.wait_for_readings(CUFF, 4, Duration::from_secs(40));
    let calls = rig.sim.calls();
    let pairs = calls
        .iter()
        .filter(|call| call.starts_with("Pair "))
        .count();
    assert_eq!(
        pairs, 2,
        "the technician's pairing and the daemon's: {calls:?}"
    );
    assert!(rig.sim.device(CUFF, |cuff| cuff.paired));
    assert!(rig
        .world
        .log()
        .contains("pairing it through the hub's agent"));
}

#[test]
fn a_glucose_context_joins_its_measurement() {
    let rig = BleRig::new();
    rig.sim.add_device(GLUCOSE_METER, devices::glucose_meter());
    rig.sim.device(GLUCOSE_METER, |meter| {
        meter.glucose_records = vec![
            (
                1,
                devices::glucose_record_with_context(1, date_time(2024, 3, 15, 7, 0, 0), 101),
            ),
            (
                2,
                devices::glucose_record(2, date_time(2024, 3, 15, 8, 0, 0), 102),
            ),
            // The meter announces a context for its last record but never sends it.
            (
                3,
                devices::glucose_record_with_context(3, date_time(2024, 3, 15, 9, 0, 0), 103),
            ),
        ];
        // Preprandial, by the patient, no health issues.
        meter
            .glucose_contexts
            .insert(1, hex::decode("0601000151").unwrap());
    });
    rig.pair(GLUCOSE_METER);
    let _daemon = rig.start();
    let readings = rig.wait_for_readings(GLUCOSE_METER, 3, Duration::from_secs(30));
    let flags_of = |mg: f64| {
        readings
            .iter()
            .find(|r| number(r, "glucose") == mg)
            .map(|r| r["flags"].clone())
            .unwrap()
    };
    assert_eq!(
        flags_of(101.0),
        serde_json::json!([
            "sample_capillary_whole_blood",
            "location_finger",
            "context_follows",
            "meal_preprandial",
            "tester_self",
            "health_none"
        ])
    );
    assert_eq!(
        flags_of(102.0),
        serde_json::json!(["sample_capillary_whole_blood", "location_finger"])
    );
    assert_eq!(
        flags_of(103.0),
        serde_json::json!([
            "sample_capillary_whole_blood",
            "location_finger",
            "context_follows"
        ])
    );
}

/// `vitalsd pair` with `typed` piped into its stdin, as a technician (or a script) answers its prompt.
fn pair_typing(rig: &BleRig, address: &str, extra: &[&str], typed: &str) -> std::process::Output {
    let mut args = vec!["pair", address];
    args.extend_from_slice(extra);
    rig.world.command_with_input(&args, &rig.env(), typed)
}

/// Starts the daemon and waits for its control socket, so the commands that follow go through it.
fn start_with_control_socket(rig: &BleRig) -> Daemon {
    let daemon = rig.start();
    let socket = rig.world.runtime_dir().join("control.sock");
    assert!(
        wait_until(Duration::from_secs(20), || socket.exists()),
        "no control socket; log:\n{}",
        rig.world.log()
    );
    daemon
}

const PASSKEY_PROMPT: &str = "Enter the passkey the device shows:";

#[test]
fn a_passkey_typed_at_the_prompt_pairs_through_the_daemon_after_a_mistyped_one() {
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(123_456));
    let _daemon = start_with_control_socket(&rig);
    let paired = pair_typing(&rig, OMRON, &[], "12345\n123 456\n");
    let stdout = String::from_utf8_lossy(&paired.stdout);
    let stderr = String::from_utf8_lossy(&paired.stderr);
    assert!(paired.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stderr.matches(PASSKEY_PROMPT).count(),
        2,
        "asked, told the entry is no passkey, asked again: {stderr}"
    );
    assert!(stderr.contains("not a passkey"), "{stderr}");
    assert!(stdout.contains("OK: Paired"), "{stdout}");
    assert!(rig.sim.device(OMRON, |d| d.paired && d.trusted));
    let log = rig.world.log();
    assert!(
        log.contains("asking the technician"),
        "the pairing went through the daemon's agent:\n{log}"
    );
    assert!(!log.contains("123456"), "a passkey was logged:\n{log}");
    rig.sim.store_records(OMRON, 0x2A35, &cuff_records(2));
    rig.wait_for_readings(OMRON, 2, Duration::from_secs(30));
}

#[test]
fn without_a_daemon_pair_json_asks_with_an_event_and_reads_the_passkey_from_stdin() {
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(42));
    let paired = pair_typing(&rig, OMRON, &["--json"], "000042\n");
    let stdout = String::from_utf8_lossy(&paired.stdout);
    let stderr = String::from_utf8_lossy(&paired.stderr);
    assert!(paired.status.success(), "{stdout}{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON document per line"))
        .collect();
    let asked = events
        .iter()
        .position(|e| e == &serde_json::json!({"event": "passkey_requested", "address": OMRON}));
    let paired_at = events.iter().position(|e| e["event"] == "paired");
    assert!(
        asked.is_some() && asked < paired_at,
        "asked, then paired: {stdout}"
    );
    assert!(
        !stderr.contains(PASSKEY_PROMPT),
        "with --json the event is the prompt: {stderr}"
    );
    assert!(rig.sim.device(OMRON, |d| d.paired && d.trusted));
}

#[test]
fn a_pairing_without_a_passkey_entered_fails_saying_so_and_binds_nothing() {
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(123_456));
    // (what was typed before stdin closed, what `pair` says)
    let table = [
        ("", "no passkey was entered"),
        ("\n", "no passkey was entered"),
        ("1\n2\n3\n123456\n", "giving up after 3 tries"),
    ];
    for (typed, said) in table {
        let output = pair_typing(&rig, OMRON, &[], typed);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{typed:?}: {stderr}");
        assert!(stderr.contains(said), "{typed:?}: {stderr}");
        assert!(
            stderr.contains("error: no passkey was entered"),
            "{typed:?}: {stderr}"
        );
        assert!(!rig.sim.device(OMRON, |d| d.paired), "{typed:?}");
    }
    assert_eq!(rig.devices_json()["devices"], serde_json::json!([]));
}

#[test]
fn a_pair_command_that_goes_away_at_the_prompt_makes_the_daemon_reject_and_carry_on() {
    use std::io::Read;
    let rig = BleRig::new();
    rig.sim.add_device(OMRON, devices::omron_cuff(123_456));
    let _daemon = start_with_control_socket(&rig);
    let mut client = rig.world.spawn_with_env(&["pair", OMRON], &rig.env());
    let mut stderr = client.stderr.take().unwrap();
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collecting = {
        let said = said.clone();
        std::thread::spawn(move || {
            let mut byte = [0u8; 1];
            while let Ok(1) = stderr.read(&mut byte) {
                said.lock().unwrap().push(char::from(byte[0]));
            }
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || said
            .lock()
            .unwrap()
            .contains(PASSKEY_PROMPT)),
        "no prompt: {}\n{}",
        said.lock().unwrap(),
        rig.world.log()
    );
    client.kill().unwrap();
    client.wait().unwrap();
    collecting.join().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .world
            .log()
            .contains("No passkey entered; rejecting.")),
        "the agent rejected once nobody was left to ask:\n{}",
        rig.world.log()
    );
    assert!(!rig.sim.device(OMRON, |d| d.paired));
    // The daemon serves the next technician as before.
    let right = pair_typing(&rig, OMRON, &[], "123456\n");
    assert!(
        right.status.success(),
        "{}",
        String::from_utf8_lossy(&right.stderr)
    );
    assert!(rig.sim.device(OMRON, |d| d.paired && d.trusted));
}

#[test]
fn a_passkey_request_bluez_cancels_ends_the_prompt_with_the_reason() {
    let rig = BleRig::new();
    let mut cuff = devices::omron_cuff(123_456);
    cuff.passkey_wait = Some(Duration::from_secs(2));
    rig.sim.add_device(OMRON, cuff);
    let _daemon = start_with_control_socket(&rig);
    // The technician never types: stdin stays open and silent until `pair` has ended.
    let mut client = rig.world.spawn_with_env(&["pair", OMRON], &rig.env());
    let silent_stdin = client.stdin.take();
    let output = client.wait_with_output().unwrap();
    drop(silent_stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains(PASSKEY_PROMPT), "{stderr}");
    assert!(
        stderr.contains("error: the device stopped waiting for its passkey"),
        "{stderr}"
    );
    let log = rig.world.log();
    assert!(
        log.contains("ended=Cancelled"),
        "BlueZ's Cancel ended the agent's wait:\n{log}"
    );
    assert!(!rig.sim.device(OMRON, |d| d.paired));
}

const BODY_COMPOSITION_SCALE: &str = "AA:BB:CC:DD:EE:08";

#[test]
fn a_body_composition_scale_record_split_over_two_indications_is_one_reading() {
    let rig = BleRig::new();
    rig.sim
        .add_device(BODY_COMPOSITION_SCALE, devices::body_composition_scale());
    rig.sim.store_records(
        BODY_COMPOSITION_SCALE,
        0x2A9C,
        &devices::two_packet_body_composition_weighings(),
    );
    rig.pair(BODY_COMPOSITION_SCALE);
    let _daemon = rig.start();
    rig.wait_for_readings(BODY_COMPOSITION_SCALE, 2, Duration::from_secs(30));
    // The session's end is the sentinel: every packet has been decoded and stored by then.
    assert!(
        wait_until(Duration::from_secs(30), || rig
            .world
            .log()
            .contains("Device session finished")),
        "{}",
        rig.world.log()
    );
    let status = rig.vitalsd(&["status", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status");
    assert_eq!(
        (
            &status["outbox"]["pending"],
            &status["outbox"]["delivered_total"]
        ),
        (&serde_json::json!(0), &serde_json::json!(2)),
        "{status}"
    );
    let readings = rig.readings_of(BODY_COMPOSITION_SCALE);
    assert_eq!(
        devices::numbers_by_device_time(&readings),
        devices::two_packet_body_composition_readings()
    );
    for reading in &readings {
        crate::assert_valid_reading(reading);
        assert_eq!(reading["kind"], "body_composition");
        assert_eq!(reading["time_source"], "device", "{reading}");
        assert_eq!(reading["flags"], serde_json::json!([]), "{reading}");
        assert_eq!(reading["user_id"], 1, "{reading}");
    }
    let mut measured: Vec<&str> = readings
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap())
        .collect();
    measured.sort();
    assert_eq!(
        measured,
        ["2024-03-15T07:30:00+00:00", "2024-03-16T07:31:00+00:00"]
    );
}

#[test]
fn a_xiaomi_scale_bound_while_the_daemon_runs_is_read_without_a_restart() {
    let rig = BleRig::new();
    rig.sim.add_device(CUFF, devices::and_cuff());
    rig.pair(CUFF);
    rig.sim.add_device(XIAOMI, devices::xiaomi_scale());
    rig.sim.advertise_service_data(
        XIAOMI,
        0x181B,
        &hex::decode("0226e8070b16091e00ac018642").unwrap(),
    );
    // The daemon starts with only a cuff bound, so it scans for the health services' UUIDs, which the
    // scale's adverts do not list.
    let _daemon = rig.start();
    assert!(
        wait_until(Duration::from_secs(20), || rig
            .world
            .log()
            .contains("Bluetooth scanning")),
        "{}",
        rig.world.log()
    );
    rig.pair(XIAOMI);
    let readings = rig.wait_for_readings(XIAOMI, 1, Duration::from_secs(30));
    assert_eq!(readings[0]["measured_at"], "2024-11-22T09:30:00+00:00");
    assert!(rig
        .sim
        .calls()
        .iter()
        .any(|call| call.starts_with("SetDiscoveryFilter") && !call.contains("UUIDs")));
}

//! The public wire contract `vitalsd.reading.v1`: a reading plus device identity as JSON, and reading ids.
//!
//! Backends depend on these field names; `schema/vitalsd.reading.v1.schema.json` documents them and the
//! tests validate every payload against it. Additive changes stay within v1.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::model::measurement_time::{self, HubClock};
use crate::model::reading::{Flag, Reading, TimeSource};

pub const SCHEMA_NAME: &str = "vitalsd.reading.v1";
/// The outbox format number of payloads built here.
pub const OUTBOX_FORMAT: u32 = 1;

/// Namespace for reading ids (UUID v5), fixed forever so ids stay stable across versions.
const READING_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x5d0c_9a51_7e2b_4c6e_9f0a_1b3c_5d7e_9f10);

/// How a device's bytes reach the hub; published as `device.transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Transport {
    Serial,
    Ble,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Who produced a reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    pub id: String,
    pub transport: Transport,
    /// The protocol's catalogue name (`decode::Protocol::name`); a string because the model sits below
    /// the decoders that own the protocol list.
    pub protocol: &'static str,
    #[serde(flatten)]
    pub identity: DeviceIdentity,
    /// The IEEE 11073 device specialisation (`catalog::Specialization`), such as 528388 for a pulse
    /// oximeter; a number for the same reason `protocol` is a string.
    pub specialization: Option<u32>,
}

/// A Bluetooth address as device ids carry it after `ble:`: upper case, with colons; `None` if `text` is
/// not six bytes of hex separated by colons, dashes or underscores.
pub fn canonical_ble_address(text: &str) -> Option<String> {
    let cleaned = text.trim().replace(['-', '_'], ":").to_ascii_uppercase();
    let parts: Vec<&str> = cleaned.split(':').collect();
    let valid = parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.chars().all(|c| c.is_ascii_hexdigit()));
    valid.then_some(cleaned)
}

/// What the device says it is, as far as it or its USB adapter says: Device Information for Bluetooth
/// devices, the USB descriptor for serial ones. `None` where the device says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct DeviceIdentity {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    /// The System ID (0x2A23) as an EUI-64, `FE-ED-AB-EE-DE-AD-77-C3`.
    pub system_id: Option<String>,
    /// The Bluetooth address, `AA:BB:CC:DD:EE:FF`.
    pub address: Option<String>,
    pub firmware: Option<String>,
    pub hardware: Option<String>,
    pub software: Option<String>,
}

/// The stable id of a reading.
///
/// Readings whose device names the record (a timestamp or sequence number) get an id derived from the
/// device and that name only, so reading the same stored record again yields the same id. Other readings
/// get an id derived from the receive time and bytes, fixed when the reading enters the outbox.
pub fn reading_id(device_id: &str, reading: &Reading, index_in_chunk: usize) -> String {
    let name = match (&reading.record_key, &reading.received_since_boot) {
        (Some(key), _) => format!("{device_id}|{key}"),
        // An untrusted wall clock can repeat itself (a Pi boots on the same saved time after every power
        // cut); the boot and the instant within it cannot.
        (None, Some(boot)) if !reading.hub_clock.is_trusted() => format!(
            "{device_id}|boot:{}|{}|{}|{index_in_chunk}",
            boot.boot_id,
            boot.since_boot.as_nanos(),
            hex::encode(&reading.raw)
        ),
        (None, _) => format!(
            "{device_id}|{}|{}|{index_in_chunk}",
            reading
                .received_at
                .to_rfc3339_opts(SecondsFormat::Nanos, true),
            hex::encode(&reading.raw)
        ),
    };
    uuid::Uuid::new_v5(&READING_ID_NAMESPACE, name.as_bytes()).to_string()
}

#[derive(Serialize)]
struct ReadingV1<'a> {
    schema: &'static str,
    id: &'a str,
    hub_id: &'a str,
    device: &'a DeviceInfo,
    kind: &'static str,
    /// Always `automatic`: the hub reads every value from the device, nobody types one in.
    transfer: &'static str,
    measured_at: String,
    received_at: String,
    time_source: &'static str,
    values: Vec<ValueV1>,
    flags: &'a [Flag],
    raw: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_time: Option<String>,
    hub_clock: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device_clock: Option<DeviceClockV1>,
    supplemental: Vec<SupplementalV1>,
    /// Present only while the record is held in the outbox: how to resolve its times once the hub clock is
    /// trusted. Never published.
    #[serde(rename = "hub_time_pending", skip_serializing_if = "Option::is_none")]
    pending: Option<PendingV1>,
}

#[derive(Serialize)]
struct SupplementalV1 {
    name: &'static str,
    mdc: u32,
}

#[derive(Serialize)]
struct DeviceClockV1 {
    offset_s: i64,
    read_at: String,
    /// What the device's clock said, as it said it (local wall time): `offset_s` is whole seconds, and
    /// the coincident time stamp wants the device's time exactly.
    device_time: String,
    set: bool,
}

#[derive(Serialize, serde::Deserialize)]
struct PendingV1 {
    boot_id: String,
    since_boot_ns: u64,
}

#[derive(Serialize)]
struct ValueV1 {
    name: &'static str,
    value: Option<serde_json::Number>,
    unit: &'static str,
    mdc: Option<u32>,
    loinc: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    special: Option<&'static str>,
}

/// Renders a reading as a `vitalsd.reading.v1` JSON document.
pub fn to_json(hub_id: &str, id: &str, device: &DeviceInfo, reading: &Reading) -> Vec<u8> {
    let document = ReadingV1 {
        schema: SCHEMA_NAME,
        id,
        hub_id,
        device,
        kind: reading.kind.as_str(),
        transfer: "automatic",
        measured_at: reading
            .measured_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, false),
        received_at: reading
            .received_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        time_source: reading.time_source.as_str(),
        values: reading
            .values
            .iter()
            .map(|value| ValueV1 {
                name: value.measure.name,
                value: value.value.and_then(json_number),
                unit: value.measure.unit,
                mdc: value.measure.mdc,
                loinc: value.measure.loinc,
                special: value.special.map(|s| s.as_str()),
            })
            .collect(),
        flags: &reading.flags,
        raw: hex::encode(&reading.raw),
        user_id: reading.user_id,
        // Four-digit years only: the wire formats hold no more, and the schema promises no more.
        device_time: reading
            .device_time
            .filter(crate::model::measurement_time::has_four_digit_year)
            .map(|time| time.format("%Y-%m-%dT%H:%M:%S").to_string()),
        hub_clock: reading.hub_clock.as_str(),
        device_clock: reading.device_clock.as_ref().and_then(|check| {
            Some(DeviceClockV1 {
                offset_s: check.offset()?.num_seconds(),
                read_at: check.hub_time.to_rfc3339_opts(SecondsFormat::Millis, true),
                device_time: check
                    .device_time
                    .plausible()?
                    .format("%Y-%m-%dT%H:%M:%S")
                    .to_string(),
                set: check.set,
            })
        }),
        supplemental: reading
            .supplemental
            .iter()
            .map(|supplemental| SupplementalV1 {
                name: supplemental.as_str(),
                mdc: supplemental.mdc(),
            })
            .collect(),
        pending: held(reading).map(|boot| PendingV1 {
            boot_id: boot.boot_id.clone(),
            since_boot_ns: u64::try_from(boot.since_boot.as_nanos()).unwrap_or(u64::MAX),
        }),
    };
    serde_json::to_vec(&document).expect("invariant: the payload types serialise infallibly")
}

/// The boot instant a reading waits on: readings received under an untrusted hub clock are held until the
/// clock is trusted, then their times are resolved from it ([`release_held`]).
pub fn held(reading: &Reading) -> Option<&crate::model::reading::BootInstant> {
    reading
        .received_since_boot
        .as_ref()
        .filter(|_| !reading.hub_clock.is_trusted())
}

/// What the hub knows, when it releases held readings, about the boot it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClockResolution<'a> {
    pub boot_id: &'a str,
    /// The wall-clock time at which this boot's boot-time clock read zero, known once the clock is
    /// trusted; `None` while it is not.
    pub boot_started_at: Option<DateTime<Utc>>,
}

/// A held payload made final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub payload: Vec<u8>,
    /// The resolved receive time (ms since the epoch); `None` when it could not be resolved.
    pub received_at_ms: Option<i64>,
}

/// Why a stored payload could not be released.
#[derive(Debug, thiserror::Error)]
#[error("held reading payload is unreadable: {0}")]
pub struct HeldPayloadError(pub String);

/// Resolves a held payload: `Ok(None)` while it must wait (its boot is this one and the clock is not
/// trusted yet). A reading of this boot gets its exact `received_at` (and, if it carries hub time, its
/// `measured_at`) from its boot-time instant; a reading of an earlier boot whose clock was never trusted
/// keeps the hub's clock as it read and gains the flag `hub_clock_unresolved`. Either way the rest of the
/// document, its id included, is unchanged, and the result is final: it is published exactly so.
pub fn release_held(
    payload: &[u8],
    resolution: &ClockResolution<'_>,
) -> Result<Option<Released>, HeldPayloadError> {
    let mut document: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(payload).map_err(|e| HeldPayloadError(e.to_string()))?;
    let pending: PendingV1 = match document.get("hub_time_pending") {
        Some(value) => {
            serde_json::from_value(value.clone()).map_err(|e| HeldPayloadError(e.to_string()))?
        }
        None => return Err(HeldPayloadError("no hub_time_pending".into())),
    };
    let received_at = if pending.boot_id == resolution.boot_id {
        let Some(boot_started_at) = resolution.boot_started_at else {
            return Ok(None);
        };
        let since_boot = chrono::TimeDelta::nanoseconds(
            i64::try_from(pending.since_boot_ns).unwrap_or(i64::MAX),
        );
        let received_at = boot_started_at + since_boot;
        let text = received_at.to_rfc3339_opts(SecondsFormat::Millis, true);
        document.insert("received_at".into(), text.into());
        // The device time was taken as it came, since an untrusted hub clock cannot tell a device clock
        // ahead from its own behind. Now the receive time is known, the rule a trusted clock applies on
        // arrival is applied: a device time more than ten minutes after it is not believed.
        let source = document.get("time_source").and_then(|v| v.as_str());
        let hub_timed = source == Some("hub");
        let device_timed = source == Some("device");
        let measured = document.get("measured_at").and_then(|v| v.as_str());
        let measured = measured.and_then(|text| DateTime::parse_from_rfc3339(text).ok());
        let ahead = device_timed
            && measured.is_some_and(|measured| {
                measurement_time::runs_past_hub(measured, received_at, HubClock::Trusted)
            });
        if ahead {
            document.insert("time_source".into(), TimeSource::Hub.as_str().into());
            match document.get_mut("flags") {
                Some(serde_json::Value::Array(flags)) => {
                    flags.push(Flag::DeviceClockAhead.as_str().into())
                }
                _ => return Err(HeldPayloadError("no flags array".into())),
            }
        }
        if ahead || hub_timed {
            let measured = received_at
                .fixed_offset()
                .to_rfc3339_opts(SecondsFormat::AutoSi, false);
            document.insert("measured_at".into(), measured.into());
        }
        Some(received_at.timestamp_millis())
    } else {
        match document.get_mut("flags") {
            Some(serde_json::Value::Array(flags)) => {
                flags.push(Flag::HubClockUnresolved.as_str().into())
            }
            _ => return Err(HeldPayloadError("no flags array".into())),
        }
        None
    };
    document.shift_remove("hub_time_pending");
    let payload = serde_json::to_vec(&document).map_err(|e| HeldPayloadError(e.to_string()))?;
    Ok(Some(Released {
        payload,
        received_at_ms: received_at,
    }))
}

/// Whole numbers print without a fraction (`97`, not `97.0`); non-finite numbers have no JSON form.
fn json_number(value: f64) -> Option<serde_json::Number> {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        Some(serde_json::Number::from(value as i64))
    } else {
        serde_json::Number::from_f64(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codes;
    use crate::model::reading::{Kind, Special, TimeSource, Value};
    use chrono::{DateTime, Utc};

    fn sample() -> Reading {
        let received_at: DateTime<Utc> = "2026-11-22T09:00:01.123456Z".parse().unwrap();
        Reading {
            kind: Kind::PulseOximetry,
            measured_at: "2024-03-15T10:20:30+01:00".parse().unwrap(),
            received_at,
            time_source: TimeSource::Device,
            values: vec![
                Value::number(&codes::SPO2, 97.0),
                Value::special(&codes::PULSE_RATE_OXIMETER, Special::Missing),
            ],
            flags: vec![Flag::Smartpoint],
            raw: vec![0x00, 0x02, 0xab],
            record_key: Some("nonin-df13:abc".to_string()),
            user_id: None,
            device_time: Some("2024-03-15T10:20:30".parse().unwrap()),
            hub_clock: crate::model::measurement_time::HubClock::Synchronized,
            device_clock: None,
            received_since_boot: None,
            supplemental: vec![crate::model::reading::Supplemental::ModalitySpot],
        }
    }

    fn device() -> DeviceInfo {
        DeviceInfo {
            id: "serial:usb-Nonin-if00".to_string(),
            transport: Transport::Serial,
            protocol: "nonin-df13",
            identity: DeviceIdentity {
                manufacturer: Some("Nonin Medical Inc.".to_string()),
                serial_number: Some("501234567".to_string()),
                ..DeviceIdentity::default()
            },
            specialization: Some(528_388),
        }
    }

    #[test]
    fn payload_has_the_documented_shape() {
        let json: serde_json::Value =
            serde_json::from_slice(&to_json("hub-0001", "the-id", &device(), &sample())).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "schema": "vitalsd.reading.v1",
                "id": "the-id",
                "hub_id": "hub-0001",
                "device": {"id": "serial:usb-Nonin-if00", "transport": "serial", "protocol": "nonin-df13",
                           "manufacturer": "Nonin Medical Inc.", "model": null, "serial_number": "501234567",
                           "system_id": null, "address": null, "firmware": null, "hardware": null,
                           "software": null, "specialization": 528388},
                "kind": "pulse_oximetry",
                "transfer": "automatic",
                "measured_at": "2024-03-15T10:20:30+01:00",
                "received_at": "2026-11-22T09:00:01.123Z",
                "time_source": "device",
                "values": [
                    {"name": "spo2", "value": 97, "unit": "%", "mdc": 150456, "loinc": "2708-6"},
                    {"name": "pulse_rate", "value": null, "unit": "/min", "mdc": 149530, "loinc": "8867-4", "special": "missing"}
                ],
                "flags": ["smartpoint"],
                "raw": "0002ab",
                "device_time": "2024-03-15T10:20:30",
                "hub_clock": "synchronized",
                "supplemental": [{"name": "modality_spot", "mdc": 150588}]
            })
        );
    }

    #[test]
    fn fractional_values_keep_their_fraction() {
        assert_eq!(json_number(36.6).unwrap().to_string(), "36.6");
        assert_eq!(json_number(72.0).unwrap().to_string(), "72");
        assert_eq!(json_number(f64::NAN), None);
    }

    #[test]
    fn a_device_named_record_has_the_same_id_whenever_it_is_read() {
        let first = sample();
        let mut again = sample();
        again.received_at = "2026-11-23T00:00:00Z".parse().unwrap();
        again.flags.push(Flag::FromMemory);
        assert_eq!(reading_id("dev", &first, 0), reading_id("dev", &again, 5));
        assert_ne!(
            reading_id("dev", &first, 0),
            reading_id("other-dev", &first, 0)
        );
    }

    #[test]
    fn readings_without_a_device_identity_get_distinct_ids() {
        let mut first = sample();
        first.record_key = None;
        let mut second = first.clone();
        second.received_at = "2026-11-22T09:00:02Z".parse().unwrap();
        assert_ne!(reading_id("dev", &first, 0), reading_id("dev", &second, 0));
        assert_ne!(reading_id("dev", &first, 0), reading_id("dev", &first, 1));
        assert_eq!(reading_id("dev", &first, 0), reading_id("dev", &first, 0));
    }

    /// A hub-time reading received at boot-time 100 s of boot "b1" while the hub clock read 2020.
    fn held_reading() -> Reading {
        let mut reading = sample();
        reading.record_key = None;
        reading.time_source = TimeSource::Hub;
        reading.received_at = "2020-01-01T00:00:00Z".parse().unwrap();
        reading.measured_at = reading.received_at.fixed_offset();
        reading.device_time = None;
        reading.hub_clock = crate::model::measurement_time::HubClock::Unsynchronized;
        reading.received_since_boot = Some(crate::model::reading::BootInstant {
            boot_id: "b1".into(),
            since_boot: std::time::Duration::from_millis(100_250),
        });
        reading
    }

    fn release(
        reading: &Reading,
        boot_id: &str,
        started: Option<&str>,
    ) -> Option<serde_json::Value> {
        let payload = to_json("hub-0001", "the-id", &device(), reading);
        let resolution = ClockResolution {
            boot_id,
            boot_started_at: started.map(|text| text.parse().unwrap()),
        };
        release_held(&payload, &resolution)
            .unwrap()
            .map(|released| serde_json::from_slice(&released.payload).unwrap())
    }

    #[test]
    fn a_held_reading_gets_its_exact_times_once_its_boot_trusts_the_clock() {
        let reading = held_reading();
        assert!(held(&reading).is_some());
        let waiting: serde_json::Value =
            serde_json::from_slice(&to_json("hub-0001", "the-id", &device(), &reading)).unwrap();
        assert_eq!(
            waiting["hub_time_pending"]["since_boot_ns"],
            100_250_000_000u64
        );
        // Not yet: same boot, clock still untrusted.
        assert_eq!(release(&reading, "b1", None), None);
        let done = release(&reading, "b1", Some("2026-12-05T08:00:00Z")).unwrap();
        assert_eq!(done["received_at"], "2026-12-05T08:01:40.250Z");
        assert_eq!(done["measured_at"], "2026-12-05T08:01:40.250+00:00");
        assert_eq!(done["hub_clock"], "unsynchronized");
        assert_eq!(done["flags"], serde_json::json!(["smartpoint"]));
        assert_eq!(done["id"], "the-id");
        assert!(done.get("hub_time_pending").is_none());
    }

    #[test]
    fn a_device_timed_reading_keeps_its_measured_at_when_released() {
        let mut reading = held_reading();
        reading.time_source = TimeSource::Device;
        reading.measured_at = "2026-12-05T09:00:00+01:00".parse().unwrap();
        let done = release(&reading, "b1", Some("2026-12-05T08:00:00Z")).unwrap();
        assert_eq!(done["measured_at"], "2026-12-05T09:00:00+01:00");
        assert_eq!(done["received_at"], "2026-12-05T08:01:40.250Z");
    }

    #[test]
    fn a_device_time_ahead_of_the_resolved_receive_time_is_not_believed_when_released() {
        // Received at 08:01:40.250Z once resolved; ten minutes ahead is the most a device clock may run.
        let check = |measured: &str, expected: (&str, &str, serde_json::Value)| {
            let mut reading = held_reading();
            reading.time_source = TimeSource::Device;
            reading.measured_at = measured.parse().unwrap();
            let done = release(&reading, "b1", Some("2026-12-05T08:00:00Z")).unwrap();
            let found = (&done["measured_at"], &done["time_source"], &done["flags"]);
            assert_eq!(
                found,
                (&expected.0.into(), &expected.1.into(), &expected.2),
                "{measured}"
            );
            assert_eq!(done["id"], "the-id");
        };
        let kept = || serde_json::json!(["smartpoint"]);
        let ahead = || serde_json::json!(["smartpoint", "device_clock_ahead"]);
        check(
            "2026-12-05T08:11:40+00:00",
            ("2026-12-05T08:11:40+00:00", "device", kept()),
        );
        check(
            "2026-12-05T09:11:40+01:00",
            ("2026-12-05T09:11:40+01:00", "device", kept()),
        );
        check(
            "2026-12-05T08:11:41+00:00",
            ("2026-12-05T08:01:40.250+00:00", "hub", ahead()),
        );
        check(
            "2035-06-01T12:00:00+00:00",
            ("2026-12-05T08:01:40.250+00:00", "hub", ahead()),
        );
        check(
            "2019-01-01T00:00:00+00:00",
            ("2019-01-01T00:00:00+00:00", "device", kept()),
        );
    }

    #[test]
    fn a_held_reading_of_a_boot_that_never_trusted_its_clock_is_flagged_not_dated() {
        let reading = held_reading();
        for started in [None, Some("2026-12-05T08:00:00Z")] {
            let done = release(&reading, "b2", started).unwrap();
            assert_eq!(done["received_at"], "2020-01-01T00:00:00.000Z");
            assert_eq!(
                done["flags"],
                serde_json::json!(["smartpoint", "hub_clock_unresolved"])
            );
            assert!(done.get("hub_time_pending").is_none());
        }
    }

    #[test]
    fn a_reading_received_under_a_trusted_clock_is_not_held() {
        let mut reading = held_reading();
        reading.hub_clock = crate::model::measurement_time::HubClock::Synchronized;
        assert!(held(&reading).is_none());
        let json: serde_json::Value =
            serde_json::from_slice(&to_json("h", "i", &device(), &reading)).unwrap();
        assert!(json.get("hub_time_pending").is_none());
    }

    #[test]
    fn untrusted_hub_time_ids_come_from_the_boot_not_the_wall_clock() {
        // After a power cut a Pi boots on the same saved time: the wall clock repeats, the boot does not.
        let first = held_reading();
        let mut next_boot = held_reading();
        next_boot.received_since_boot.as_mut().unwrap().boot_id = "b2".into();
        assert_ne!(
            reading_id("dev", &first, 0),
            reading_id("dev", &next_boot, 0)
        );
        assert_eq!(
            reading_id("dev", &first, 0),
            reading_id("dev", &held_reading(), 0)
        );
    }
}

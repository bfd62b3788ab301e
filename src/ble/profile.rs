//! Which Bluetooth services and characteristics the hub reads, and with which decoder; pure tables.

use uuid::Uuid;

use crate::decode::Protocol;

/// The Bluetooth SIG base UUID with a 16-bit number in it.
pub const fn sig(short: u16) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb | ((short as u128) << 96))
}

pub const BLOOD_PRESSURE_SERVICE: Uuid = sig(0x1810);
pub const PULSE_OXIMETER_SERVICE: Uuid = sig(0x1822);
pub const WEIGHT_SCALE_SERVICE: Uuid = sig(0x181D);
pub const BODY_COMPOSITION_SERVICE: Uuid = sig(0x181B);
pub const GLUCOSE_SERVICE: Uuid = sig(0x1808);
pub const HEALTH_THERMOMETER_SERVICE: Uuid = sig(0x1809);
pub const BERRYMED_SERVICE: Uuid = Uuid::from_u128(0x49535343_fe7d_4ae5_8fa9_9fafd205e455);
pub const BERRYMED_NOTIFY: Uuid = Uuid::from_u128(0x49535343_1e4d_4bd9_ba61_23c647249616);
pub const JUMPER_SERVICE: Uuid = Uuid::from_u128(0xcdeacb80_5235_4c07_8846_93a37ee6b86d);
pub const JUMPER_NOTIFY: Uuid = Uuid::from_u128(0xcdeacb81_5235_4c07_8846_93a37ee6b86d);

pub const DATE_TIME: Uuid = sig(0x2A08);
pub const CURRENT_TIME: Uuid = sig(0x2A2B);
pub const BATTERY_LEVEL: Uuid = sig(0x2A19);
pub const GLUCOSE_CONTEXT: Uuid = sig(0x2A34);
pub const RECORD_ACCESS_CONTROL_POINT: Uuid = sig(0x2A52);
pub const MANUFACTURER_NAME: Uuid = sig(0x2A29);
pub const MODEL_NUMBER: Uuid = sig(0x2A24);
pub const SERIAL_NUMBER: Uuid = sig(0x2A25);
pub const FIRMWARE_REVISION: Uuid = sig(0x2A26);

/// The services a scan looks for: every health service the hub reads, and the vendor oximeters'.
pub const SCAN_SERVICES: [Uuid; 8] = [
    BLOOD_PRESSURE_SERVICE,
    PULSE_OXIMETER_SERVICE,
    WEIGHT_SCALE_SERVICE,
    BODY_COMPOSITION_SERVICE,
    GLUCOSE_SERVICE,
    HEALTH_THERMOMETER_SERVICE,
    BERRYMED_SERVICE,
    JUMPER_SERVICE,
];

/// The decoder for a measurement characteristic the hub subscribes to.
pub fn measurement_protocol(characteristic: Uuid) -> Option<Protocol> {
    const TABLE: [(Uuid, Protocol); 10] = [
        (sig(0x2A35), Protocol::BloodPressureMeasurement),
        (sig(0x2A36), Protocol::IntermediateCuffPressure),
        (sig(0x2A5E), Protocol::PlxSpotCheck),
        (sig(0x2A5F), Protocol::PlxContinuous),
        (sig(0x2A9D), Protocol::WeightMeasurement),
        (sig(0x2A9C), Protocol::BodyCompositionMeasurement),
        (sig(0x2A18), Protocol::GlucoseMeasurement),
        (sig(0x2A1C), Protocol::TemperatureMeasurement),
        (BERRYMED_NOTIFY, Protocol::Berrymed),
        (JUMPER_NOTIFY, Protocol::JumperOximeter),
    ];
    TABLE
        .iter()
        .find(|(uuid, _)| *uuid == characteristic)
        .map(|(_, protocol)| *protocol)
}

/// The decoder for an advertisement's service data, for devices that never connect (Xiaomi scales put a
/// non-SIG layout under the SIG weight and body composition UUIDs; the length tells them apart).
pub fn advertisement_protocol(service: Uuid, data: &[u8]) -> Option<Protocol> {
    match (service, data.len()) {
        (uuid, 10) if uuid == WEIGHT_SCALE_SERVICE => Some(Protocol::XiaomiScale),
        (uuid, 13) if uuid == BODY_COMPOSITION_SERVICE => {
            Some(Protocol::XiaomiBodyCompositionScale)
        }
        _ => None,
    }
}

/// A technician-facing model guess from an advertised name.
pub fn recognise_model(local_name: &str) -> Option<&'static str> {
    let name = local_name.trim();
    let upper = name.to_ascii_uppercase();
    let table: [(&str, &str); 10] = [
        ("A&D_UA-651", "A&D UA-651BLE"),
        ("A&D_UC-352", "A&D UC-352BLE"),
        ("A&D_", "A&D Medical"),
        ("BLESMART_", "Omron (BLESmart)"),
        ("MY OXIMETER", "Jumper JPD-500F"),
        ("BERRYMED", "BerryMed BCI oximeter"),
        ("BM1000", "BerryMed BCI oximeter"),
        ("MIBCS", "Xiaomi Mi Body Composition Scale"),
        ("MIBFS", "Xiaomi Mi Body Composition Scale"),
        ("MI SCALE2", "Xiaomi Mi Smart Scale 2"),
    ];
    table
        .iter()
        .find(|(prefix, _)| upper.starts_with(prefix))
        .map(|(_, model)| *model)
        .or_else(|| {
            upper
                .starts_with("MI_SCALE")
                .then_some("Xiaomi Mi Smart Scale")
        })
        .or_else(|| upper.starts_with("NONIN").then_some("Nonin oximeter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sig_uuids_have_the_base() {
        assert_eq!(
            sig(0x1810).to_string(),
            "00001810-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(
            BERRYMED_NOTIFY.to_string(),
            "49535343-1e4d-4bd9-ba61-23c647249616"
        );
    }

    #[track_caller]
    fn check_model(name: &str, expected: Option<&str>) {
        assert_eq!(recognise_model(name), expected, "{name}");
    }

    #[test]
    fn models() {
        check_model("A&D_UA-651BLE_1A2B3C", Some("A&D UA-651BLE"));
        check_model("A&D_UC-352BLE_4D5E6F", Some("A&D UC-352BLE"));
        check_model("A&D_UB-1100BLE", Some("A&D Medical"));
        check_model("BLESmart_0000016028FFB2735FEF", Some("Omron (BLESmart)"));
        check_model("BLEsmart_00000116", Some("Omron (BLESmart)"));
        check_model("My Oximeter", Some("Jumper JPD-500F"));
        check_model("MIBFS", Some("Xiaomi Mi Body Composition Scale"));
        check_model("MI_SCALE", Some("Xiaomi Mi Smart Scale"));
        check_model("Nonin3230_501234567", Some("Nonin oximeter"));
        check_model("Headphones", None);
    }

    #[test]
    fn characteristics_and_advertisements_map_to_protocols() {
        assert_eq!(
            measurement_protocol(sig(0x2A35)),
            Some(Protocol::BloodPressureMeasurement)
        );
        assert_eq!(measurement_protocol(sig(0x2A49)), None);
        assert_eq!(
            advertisement_protocol(WEIGHT_SCALE_SERVICE, &[0; 10]),
            Some(Protocol::XiaomiScale)
        );
        assert_eq!(
            advertisement_protocol(BODY_COMPOSITION_SERVICE, &[0; 13]),
            Some(Protocol::XiaomiBodyCompositionScale)
        );
        assert_eq!(
            advertisement_protocol(BODY_COMPOSITION_SERVICE, &[0; 12]),
            None
        );
    }
}

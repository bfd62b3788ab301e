//! Simulated health devices built from the reference layouts, and builders for their records.

use super::state::{uuid16, Behaviour, DeviceState};

/// A Date Time field for a record.
pub fn date_time(year: u16, month: u8, day: u8, hour: u8, minute: u8, second: u8) -> [u8; 7] {
    let [y0, y1] = year.to_le_bytes();
    [y0, y1, month, day, hour, minute, second]
}

/// A Blood Pressure Measurement record in mmHg with time stamp and pulse: `sys/dia/map` whole numbers.
pub fn blood_pressure_record(sys: u16, dia: u16, map: u16, pulse: u16, at: [u8; 7]) -> Vec<u8> {
    let mut record = vec![0x06];
    for value in [sys, dia, map] {
        record.extend_from_slice(&value.to_le_bytes());
    }
    record.extend_from_slice(&at);
    record.extend_from_slice(&pulse.to_le_bytes());
    record
}

/// An A&D failed measurement: every value NaN, the time stamp valid.
pub fn failed_blood_pressure_record(at: [u8; 7]) -> Vec<u8> {
    let mut record = vec![0x06, 0xFF, 0x07, 0xFF, 0x07, 0xFF, 0x07];
    record.extend_from_slice(&at);
    record.extend_from_slice(&[0xFF, 0x07]);
    record
}

/// A Weight Measurement in kg (0.005 kg steps) with a time stamp.
pub fn weight_record(kg_times_200: u16, at: [u8; 7]) -> Vec<u8> {
    let mut record = vec![0x02];
    record.extend_from_slice(&kg_times_200.to_le_bytes());
    record.extend_from_slice(&at);
    record
}

/// The fields of a Body Composition Measurement (0x2A9C) record, in the units on the wire.
pub struct BodyComposition {
    /// Body fat in 0.1 %.
    pub fat_permille: u16,
    pub at: [u8; 7],
    pub user: u8,
    pub basal_metabolism_kj: u16,
    /// Muscle in 0.1 %.
    pub muscle_permille: u16,
    /// Impedance in 0.1 Ω.
    pub impedance_deci_ohm: u16,
    /// Weight in 0.005 kg steps.
    pub kg_times_200: u16,
    pub height_mm: u16,
}

/// A Body Composition Measurement record split over two indications (flags bit 12, "multiple packets"),
/// as a scale does whose record does not fit one ATT_MTU: the first carries body fat, time stamp, user,
/// basal metabolism and muscle percentage; the second impedance, weight and height, with the
/// "unsuccessful" filler in its mandatory body fat field.
pub fn body_composition_two_packets(record: &BodyComposition) -> [Vec<u8>; 2] {
    let mut first = vec![0x1E, 0x10];
    first.extend_from_slice(&record.fat_permille.to_le_bytes());
    first.extend_from_slice(&record.at);
    first.push(record.user);
    first.extend_from_slice(&record.basal_metabolism_kj.to_le_bytes());
    first.extend_from_slice(&record.muscle_permille.to_le_bytes());
    let mut second = vec![0x00, 0x1E, 0xFF, 0xFF];
    for field in [
        record.impedance_deci_ohm,
        record.kg_times_200,
        record.height_mm,
    ] {
        second.extend_from_slice(&field.to_le_bytes());
    }
    [first, second]
}

/// Two weighings of a body-composition scale, each split over two indications: the packets in order.
/// The first is the reference vector A.5.3 (1) split in two and completed with a height.
pub fn two_packet_body_composition_weighings() -> Vec<Vec<u8>> {
    [
        BodyComposition {
            fat_permille: 225,
            at: date_time(2024, 3, 15, 7, 30, 0),
            user: 1,
            basal_metabolism_kj: 6500,
            muscle_permille: 352,
            impedance_deci_ohm: 5123,
            kg_times_200: 16_000,
            height_mm: 1800,
        },
        BodyComposition {
            fat_permille: 221,
            at: date_time(2024, 3, 16, 7, 31, 0),
            user: 1,
            basal_metabolism_kj: 6480,
            muscle_permille: 354,
            impedance_deci_ohm: 5087,
            kg_times_200: 15_920,
            height_mm: 1800,
        },
    ]
    .iter()
    .flat_map(body_composition_two_packets)
    .collect()
}

/// A Glucose Measurement with sequence number, base time and a concentration in mg/dL (kg/L × 10⁻⁵).
pub fn glucose_record(sequence: u16, at: [u8; 7], mg_dl: u16) -> Vec<u8> {
    let mut record = vec![0x02];
    record.extend_from_slice(&sequence.to_le_bytes());
    record.extend_from_slice(&at);
    // SFLOAT with exponent −5: mantissa mg/dL, so the value is mg/dL × 10⁻⁵ kg/L.
    let sfloat = 0xB000 | (mg_dl & 0x0FFF);
    record.extend_from_slice(&sfloat.to_le_bytes());
    record.push(0x11);
    record
}

/// The same record announcing that a Glucose Measurement Context follows (flags bit 4).
pub fn glucose_record_with_context(sequence: u16, at: [u8; 7], mg_dl: u16) -> Vec<u8> {
    let mut record = glucose_record(sequence, at, mg_dl);
    record[0] |= 0x10;
    record
}

/// A Temperature Measurement in °C with a time stamp: `tenths` of a degree.
pub fn temperature_record(tenths: u32, at: [u8; 7]) -> Vec<u8> {
    let mut record = vec![0x02];
    let float = 0xFF00_0000 | (tenths & 0x00FF_FFFF);
    record.extend_from_slice(&float.to_le_bytes());
    record.extend_from_slice(&at);
    record
}

/// A PLX Spot-check with a time stamp.
pub fn spot_check_record(spo2: u16, pulse: u16, at: [u8; 7]) -> Vec<u8> {
    let mut record = vec![0x01];
    record.extend_from_slice(&spo2.to_le_bytes());
    record.extend_from_slice(&pulse.to_le_bytes());
    record.extend_from_slice(&at);
    record
}

/// A&D UA-651BLE: BP service with a writable Date Time, DIS, battery, bonding required.
pub fn and_cuff() -> DeviceState {
    let mut device = DeviceState::new("A&D_UA-651BLE_1A2B3C", Behaviour::AndCuff);
    device.advertised_services = vec![uuid16(0x1810)];
    device
        .characteristic(0x1810, 0x2A35, &["indicate"])
        .characteristic(0x1810, 0x2A49, &["read"])
        .characteristic(0x1810, 0x2A08, &["read", "write"])
        .value(0x2A49, &[0x27, 0x00])
        .value(0x2A08, &date_time(2000, 1, 1, 0, 0, 0))
        .device_information("A&D Medical", "UA-651BLE", "5140300123")
        // The System ID of the UA-651BLE in HL7 Denmark's ContinuaBundleWithDevice example.
        .system_id_and_revisions(
            &[0xC9, 0xF2, 0x53, 0xFE, 0xFF, 0x12, 0xF3, 0xC4],
            "1.02",
            "2",
            "1.0.3",
        )
        .battery(80);
    device
}

/// A standard-profile Omron cuff: BP service, Current Time Service, passkey pairing.
pub fn omron_cuff(passkey: u32) -> DeviceState {
    let mut device = DeviceState::new("BLESmart_0000016028FFB2735FEF", Behaviour::OmronCuff);
    device.advertised_services = vec![uuid16(0x1810)];
    device.passkey = Some(passkey);
    device
        .characteristic(0x1810, 0x2A35, &["indicate"])
        .characteristic(0x1810, 0x2A36, &["notify"])
        .characteristic(0x1810, 0x2A49, &["read"])
        .characteristic(0x1805, 0x2A2B, &["read", "write", "notify"])
        .value(
            0x2A2B,
            &[0xE8, 0x07, 0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
        )
        .device_information("OMRON HEALTHCARE", "HEM-9200T", "20240001")
        .battery(90);
    device
}

/// The same cuff with a display as real ones have: its kernel picks a new random passkey for each pairing
/// and shows it (`DeviceState::shown_passkey`), so no passkey can be known before pairing starts.
pub fn omron_cuff_showing_random_passkeys() -> DeviceState {
    let mut device = omron_cuff(0);
    device.passkey = None;
    device.random_passkey = true;
    device
}

/// A pulse oximeter with spot-check and continuous characteristics and a Current Time Service.
pub fn oximeter() -> DeviceState {
    let mut device = DeviceState::new("Nonin3230_501234567", Behaviour::Oximeter);
    device.advertised_services = vec![uuid16(0x1822)];
    device
        .characteristic(0x1822, 0x2A5E, &["indicate"])
        .characteristic(0x1822, 0x2A5F, &["notify"])
        .characteristic(0x1822, 0x2A60, &["read"])
        .value(0x2A60, &[0x0C, 0x00])
        .device_information("Nonin Medical, Inc.", "3230", "501234567");
    device
}

/// A&D UC-352BLE style scale: weight service with a writable Date Time, bonding, burst then disconnect.
pub fn scale() -> DeviceState {
    let mut device = DeviceState::new("A&D_UC-352BLE_4D5E6F", Behaviour::Scale);
    device.advertised_services = vec![uuid16(0x181D)];
    device
        .characteristic(0x181D, 0x2A9D, &["indicate"])
        .characteristic(0x181D, 0x2A9E, &["read"])
        .characteristic(0x181D, 0x2A08, &["read", "write"])
        .value(0x2A9E, &[0xA7, 0x01, 0x00, 0x00])
        .value(0x2A08, &date_time(2000, 1, 1, 0, 0, 0))
        .device_information("A&D Medical", "UC-352BLE", "5140300456");
    device
}

/// A body-composition scale (Body Composition Service with its Feature, no clock characteristic),
/// bonding, burst then disconnect; the real-BlueZ suite's `body-composition-scale` model.
pub fn body_composition_scale() -> DeviceState {
    let mut device = DeviceState::new("BCS-Scale_5A6B7C", Behaviour::BodyCompositionScale);
    device.advertised_services = vec![uuid16(0x181B)];
    device
        .characteristic(0x181B, 0x2A9C, &["indicate"])
        .characteristic(0x181B, 0x2A9B, &["read"])
        .value(0x2A9B, &[0x0F, 0xBF, 0x01, 0x00])
        .device_information("Vitalsd Test", "BCS-1", "5A6B7C");
    device
}

/// A glucose meter that answers the Record Access Control Point.
pub fn glucose_meter() -> DeviceState {
    let mut device = DeviceState::new("Contour7812345", Behaviour::GlucoseMeter);
    device.advertised_services = vec![uuid16(0x1808)];
    device
        .characteristic(0x1808, 0x2A18, &["notify"])
        .characteristic(0x1808, 0x2A34, &["notify"])
        .characteristic(0x1808, 0x2A52, &["write", "indicate"])
        .characteristic(0x1808, 0x2A51, &["read"])
        .value(0x2A51, &[0x00, 0x00])
        .device_information("Ascensia Diabetes Care", "Contour Next One", "7812345");
    device
}

/// A health thermometer with a Current Time Service.
pub fn thermometer() -> DeviceState {
    let mut device = DeviceState::new("TEMP-0042", Behaviour::Thermometer);
    device.advertised_services = vec![uuid16(0x1809)];
    device
        .characteristic(0x1809, 0x2A1C, &["indicate"])
        .characteristic(0x1805, 0x2A2B, &["read", "write"])
        .value(
            0x2A2B,
            &[0xE8, 0x07, 0x01, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00],
        )
        .device_information("Generic", "TH-1", "0042");
    device
}

/// A Xiaomi Mi Body Composition Scale: advertisements only, its service named only as the key of its
/// service data (no service UUID list), as the real-BlueZ suite's `xiaomi-scale` model.
pub fn xiaomi_scale() -> DeviceState {
    DeviceState::new("MIBFS", Behaviour::Advertiser)
}

/// Readings as device time and numeric values by name, sorted by device time.
pub fn numbers_by_device_time(readings: &[serde_json::Value]) -> Vec<(String, Vec<(String, f64)>)> {
    let mut got: Vec<_> = readings
        .iter()
        .map(|reading| {
            let numbers = reading["values"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|v| {
                    let name = v["name"].as_str().unwrap_or("").to_string();
                    (name, v["value"].as_f64().unwrap_or(f64::NAN))
                })
                .collect();
            (
                reading["device_time"].as_str().unwrap_or("").to_string(),
                numbers,
            )
        })
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    got
}

/// What each two-packet weighing of `two_packet_body_composition_weighings` is as one reading: its
/// device time and values by name (the real-BlueZ suite expects the same).
pub fn two_packet_body_composition_readings() -> Vec<(String, Vec<(String, f64)>)> {
    let weighing = |at: &str, fat: f64, basal: f64, muscle: f64, impedance: f64, kg: f64| {
        let values = [
            ("body_fat_percentage", fat),
            ("basal_metabolism", basal),
            ("muscle_percentage", muscle),
            ("impedance", impedance),
            ("body_weight", kg),
            ("body_height", 1.8),
        ];
        (
            at.to_string(),
            values
                .into_iter()
                .map(|(name, value)| (name.to_string(), value))
                .collect(),
        )
    };
    vec![
        weighing("2024-03-15T07:30:00", 22.5, 6500.0, 35.2, 512.3, 80.0),
        weighing("2024-03-16T07:31:00", 22.1, 6480.0, 35.4, 508.7, 79.6),
    ]
}

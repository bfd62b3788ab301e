//! Pulse Oximeter Service: PLX Spot-check Measurement 0x2A5E, PLX Continuous Measurement 0x2A5F and PLX
//! Features 0x2A60.
//!
//! Readings the device marks as demonstration, testing, unavailable or invalid keep their values but carry
//! a flag `reading::Flag::is_non_clinical` names, so the pipeline withholds them from the readings topic.

use super::ieee11073::{
    bit_names, patient_value_of, push_flags, stamp, value_of, Cursor, DeviceDateTime,
};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Supplemental};

/// Measurement Status (uint16); bits 0–4 are reserved.
const MEASUREMENT_STATUS: [(u32, Flag); 11] = [
    (5, Flag::MeasurementOngoing),
    (6, Flag::EarlyEstimate),
    (7, Flag::ValidatedData),
    (8, Flag::FullyQualifiedData),
    (9, Flag::FromMemory),
    (10, Flag::DemonstrationData),
    (11, Flag::TestingData),
    (12, Flag::CalibrationOngoing),
    (13, Flag::MeasurementUnavailable),
    (14, Flag::QuestionableMeasurement),
    (15, Flag::InvalidMeasurement),
];

/// Device and Sensor Status (uint24); bits 16–23 are reserved.
const DEVICE_AND_SENSOR_STATUS: [(u32, Flag); 16] = [
    (0, Flag::ExtendedDisplayUpdate),
    (1, Flag::EquipmentMalfunction),
    (2, Flag::SignalProcessingIrregularity),
    (3, Flag::InadequateSignal),
    (4, Flag::PoorSignal),
    (5, Flag::LowPerfusion),
    (6, Flag::ErraticSignal),
    (7, Flag::NonpulsatileSignal),
    (8, Flag::QuestionablePulse),
    (9, Flag::SignalAnalysisOngoing),
    (10, Flag::SensorInterference),
    (11, Flag::SensorUnconnected),
    (12, Flag::UnknownSensor),
    (13, Flag::SensorDisplaced),
    (14, Flag::SensorMalfunctioning),
    (15, Flag::SensorDisconnected),
];

/// Decodes 0x2A5E indications: one spot-check each, with the device's time stamp when it has one.
#[derive(Debug, Default)]
pub struct PlxSpotCheckDecoder;

/// Decodes 0x2A5F notifications: the live values, about one a second, stamped with the hub's time.
#[derive(Debug, Default)]
pub struct PlxContinuousDecoder;

fn status_flags(
    reading: &mut Reading,
    measurement_status: Option<u16>,
    device_status: Option<u32>,
) {
    if let Some(status) = measurement_status {
        reading
            .flags
            .extend(bit_names(u32::from(status), &MEASUREMENT_STATUS));
    }
    if let Some(status) = device_status {
        reading
            .flags
            .extend(bit_names(status, &DEVICE_AND_SENSOR_STATUS));
    }
}

impl MessageDecoder for PlxSpotCheckDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let mut cursor = Cursor::new(message);
        let flags = cursor.u8("flags")?;
        let spo2 = cursor.sfloat("SpO2")?;
        let pulse = cursor.sfloat("pulse rate")?;
        let time_stamp = (flags & 0x01 != 0)
            .then(|| cursor.date_time("time stamp"))
            .transpose()?;
        let measurement_status = (flags & 0x02 != 0)
            .then(|| cursor.u16("measurement status"))
            .transpose()?;
        let device_status = (flags & 0x04 != 0)
            .then(|| cursor.u24("device and sensor status"))
            .transpose()?;
        let pulse_amplitude = (flags & 0x08 != 0)
            .then(|| cursor.sfloat("pulse amplitude index"))
            .transpose()?;
        let clock_not_set = flags & 0x10 != 0;

        let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, message);
        reading.supplemental = vec![Supplemental::ModalitySpot];
        reading.values = vec![
            patient_value_of(&codes::SPO2, spo2),
            patient_value_of(&codes::PULSE_RATE_OXIMETER, pulse),
        ];
        reading
            .values
            .extend(pulse_amplitude.map(|number| value_of(&codes::PERFUSION_INDEX, number)));
        status_flags(&mut reading, measurement_status, device_status);
        if let Some(time_stamp) = time_stamp {
            let device_time = if clock_not_set {
                DeviceDateTime::Unknown
            } else {
                time_stamp
            };
            stamp(&mut reading, device_time, context);
            if crate::model::measurement_time::stamp_names_the_record(&reading) {
                reading.record_key = Some(format!("plx-spot-check:{}", hex_of(message)));
            }
            // The time stamp as sent, even one the device itself says its clock did not know.
            reading.device_time = time_stamp.known();
        } else {
            push_flags(
                &mut reading.flags,
                &[(clock_not_set, Flag::DeviceClockInvalid)],
            );
        }
        Ok(vec![reading])
    }
}

impl MessageDecoder for PlxContinuousDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let mut cursor = Cursor::new(message);
        let flags = cursor.u8("flags")?;
        let spo2 = cursor.sfloat("SpO2")?;
        let pulse = cursor.sfloat("pulse rate")?;
        let fast = (flags & 0x01 != 0)
            .then(|| {
                Ok::<_, FrameError>((
                    cursor.sfloat("SpO2 fast")?,
                    cursor.sfloat("pulse rate fast")?,
                ))
            })
            .transpose()?;
        let slow = (flags & 0x02 != 0)
            .then(|| {
                Ok::<_, FrameError>((
                    cursor.sfloat("SpO2 slow")?,
                    cursor.sfloat("pulse rate slow")?,
                ))
            })
            .transpose()?;
        let measurement_status = (flags & 0x04 != 0)
            .then(|| cursor.u16("measurement status"))
            .transpose()?;
        let device_status = (flags & 0x08 != 0)
            .then(|| cursor.u24("device and sensor status"))
            .transpose()?;
        let pulse_amplitude = (flags & 0x10 != 0)
            .then(|| cursor.sfloat("pulse amplitude index"))
            .transpose()?;

        let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, message);
        reading.values = vec![
            patient_value_of(&codes::SPO2, spo2),
            patient_value_of(&codes::PULSE_RATE_OXIMETER, pulse),
        ];
        reading
            .values
            .extend(pulse_amplitude.map(|number| value_of(&codes::PERFUSION_INDEX, number)));
        if let Some((spo2, pulse)) = fast {
            reading
                .values
                .push(patient_value_of(&codes::SPO2_FAST, spo2));
            reading
                .values
                .push(patient_value_of(&codes::PULSE_RATE_FAST, pulse));
        }
        if let Some((spo2, pulse)) = slow {
            reading
                .values
                .push(patient_value_of(&codes::SPO2_SLOW, spo2));
            reading
                .values
                .push(patient_value_of(&codes::PULSE_RATE_SLOW, pulse));
        }
        status_flags(&mut reading, measurement_status, device_status);
        Ok(vec![reading])
    }
}

/// What an oximeter supports (0x2A60).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlxFeatures {
    pub supported: Vec<&'static str>,
    pub measurement_status_support: Vec<Flag>,
    pub device_and_sensor_status_support: Vec<Flag>,
}

pub fn decode_features(bytes: &[u8]) -> Result<PlxFeatures, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let supported = cursor.u16("supported features")?;
    let measurement = (supported & 0x01 != 0)
        .then(|| cursor.u16("measurement status support"))
        .transpose()?;
    let device = (supported & 0x02 != 0)
        .then(|| cursor.u24("device and sensor status support"))
        .transpose()?;
    Ok(PlxFeatures {
        supported: bit_names(
            u32::from(supported),
            &[
                (0, "measurement_status"),
                (1, "device_and_sensor_status"),
                (2, "spot_check_storage"),
                (3, "spot_check_time_stamp"),
                (4, "spo2pr_fast"),
                (5, "spo2pr_slow"),
                (6, "pulse_amplitude_index"),
                (7, "multiple_bonds"),
            ],
        ),
        measurement_status_support: measurement
            .map(|word| bit_names(u32::from(word), &MEASUREMENT_STATUS))
            .unwrap_or_default(),
        device_and_sensor_status_support: device
            .map(|word| bit_names(word, &DEVICE_AND_SENSOR_STATUS))
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, render_error, utc,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check_spot(hex: &str, expected: &str) {
        assert_eq!(
            decode_messages(&mut PlxSpotCheckDecoder, &[hex]),
            [expected],
            "{hex}"
        );
    }

    /// Like `check_spot`, against `clock`, with the time stamp as the device sent it (`sent=`, `-` for none).
    #[track_caller]
    fn check_spot_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(&mut PlxSpotCheckDecoder, clock, hex),
            expected,
            "{hex}"
        );
    }

    #[track_caller]
    fn check_continuous(hex: &str, expected: &str) {
        assert_eq!(
            decode_messages(&mut PlxContinuousDecoder, &[hex]),
            [expected],
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn continuous_vectors() {
        check_continuous("00 E8 F3 84 F3", &format!("pulse_oximetry spo2=100 pulse_rate=90 flags=[] {HUB}"));
        check_continuous("00 64 00 5A 00", &format!("pulse_oximetry spo2=100 pulse_rate=90 flags=[] {HUB}"));
        check_continuous("1C 5F 00 5A 00 20 00 00 00 00 57 F0", &format!("pulse_oximetry spo2=95 pulse_rate=90 perfusion_index=8.7 flags=[measurement_ongoing] {HUB}"));
        // Every optional field: fast and slow pairs, both statuses, PAI.
        check_continuous("1F 61 00 48 00 60 00 4A 00 62 00 46 00 80 00 20 00 00 2A F0",
            &format!("pulse_oximetry spo2=97 pulse_rate=72 perfusion_index=4.2 spo2_fast=96 pulse_rate_fast=74 spo2_slow=98 pulse_rate_slow=70 flags=[validated_data,low_perfusion] {HUB}"));
        check_continuous("04 FF 07 FF 07 00 20", &format!("pulse_oximetry spo2=nan pulse_rate=nan flags=[measurement_unavailable] {HUB}"));
        check_continuous("00 00 00 00 00", &format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[] {HUB}"));
        check_continuous("00 62 00 00 F0", &format!("pulse_oximetry spo2=98 pulse_rate=missing flags=[] {HUB}"));
        check_continuous("03 62 00 48 00 00 00 00 00 00 00 00 00", &format!("pulse_oximetry spo2=98 pulse_rate=72 spo2_fast=missing pulse_rate_fast=missing spo2_slow=missing pulse_rate_slow=missing flags=[] {HUB}"));
        check_continuous("08 62 00 48 00 00 80 00", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[sensor_disconnected] {HUB}"));
        // Reserved flag and status bits change nothing.
        check_continuous("E4 62 00 48 00 1F 00", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"));
    }

    #[rustfmt::skip]
    #[test]
    fn continuous_short_messages_are_errors() {
        check_continuous("00 E8 F3 84", "error too short for pulse rate");
        check_continuous("01 62 00 48 00 60 00", "error too short for pulse rate fast");
        check_continuous("02 62 00 48 00", "error too short for SpO2 slow");
        check_continuous("08 62 00 48 00 00 80", "error too short for device and sensor status");
        check_continuous("10 62 00 48 00 57", "error too short for pulse amplitude index");
    }

    #[rustfmt::skip]
    #[test]
    fn spot_check_vectors() {
        check_spot("00 62 00 48 00", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"));
        check_spot("00 00 00 48 00", &format!("pulse_oximetry spo2=missing pulse_rate=72 flags=[] {HUB}"));
        check_spot("00 62 00 00 00", &format!("pulse_oximetry spo2=98 pulse_rate=missing flags=[] {HUB}"));
        // Time stamp, both statuses and PAI.
        check_spot("0F 61 00 48 00 E8 07 03 0F 07 1E 00 80 02 00 00 00 2A F0",
            "pulse_oximetry spo2=97 pulse_rate=72 perfusion_index=4.2 flags=[validated_data,from_memory] at=2024-03-15T07:30:00 device");
        // The device says its clock is not set: its time stamp is not believed.
        check_spot("11 61 00 48 00 E8 07 03 0F 07 1E 00",
            &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_invalid] {HUB}"));
        check_spot("10 61 00 48 00", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_invalid] {HUB}"));
        check_spot("01 61 00 48 00 00 00 00 00 07 1E 00",
            &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_invalid] {HUB}"));
        check_spot("02 61 00 48 00 00 04", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[demonstration_data] {HUB}"));
        check_spot("02 61 00 48 00 00 08", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[testing_data] {HUB}"));
        check_spot("02 61 00 48 00 00 80", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[invalid_measurement] {HUB}"));
        check_spot("01 61 00 48 00 E8 07 03 0F 07 1E", "error too short for time stamp");
        check_spot("02 61 00 48 00 00", "error too short for measurement status");
        check_spot("04 61 00 48 00 00 00", "error too short for device and sensor status");
        check_spot("08 61 00 48 00 2A", "error too short for pulse amplitude index");
    }

    #[rustfmt::skip]
    #[test]
    fn spot_check_device_clock_years_and_impossible_fields() {
        let invalid = format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_invalid] {HUB}");
        let ahead = format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_ahead] {HUB}");
        check_spot("01 61 00 48 00 00 00 01 01 00 00 00", &invalid);
        check_spot("01 61 00 48 00 CF 07 0C 1F 17 3B 3B", &invalid);
        check_spot("01 61 00 48 00 D0 07 01 01 00 00 00", &invalid);
        check_spot("01 61 00 48 00 D9 07 0C 1F 17 3B 3B", &invalid);
        check_spot("01 61 00 48 00 DA 07 01 01 00 00 00", "pulse_oximetry spo2=97 pulse_rate=72 flags=[] at=2010-01-01T00:00:00 device");
        check_spot("01 61 00 48 00 33 08 0C 1F 00 00 00", &ahead);
        check_spot("01 61 00 48 00 34 08 01 01 00 00 00", &invalid);
        check_spot("01 61 00 48 00 FF FF 01 01 00 00 00", &invalid);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check_spot("01 61 00 48 00 E8 07 00 0F 07 1E 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 0D 0F 07 1E 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 03 00 07 1E 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 03 20 07 1E 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 02 1E 07 1E 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 03 0F 18 00 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 03 0F 07 3C 00", &invalid);
        check_spot("01 61 00 48 00 E8 07 03 0F 07 1E 3C", &invalid);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_oximeter_ahead_and_the_time_sent_is_kept() {
        check_spot_clock(HubClock::Trusted, "01 61 00 48 00 E8 07 03 12 07 1E 00", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_spot_clock(HubClock::Unsynchronized, "01 61 00 48 00 E8 07 03 12 07 1E 00", "pulse_oximetry spo2=97 pulse_rate=72 flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_spot_clock(HubClock::Unsynchronized, "01 61 00 48 00 D0 07 01 01 00 00 00", &format!("pulse_oximetry spo2=97 pulse_rate=72 flags=[device_clock_invalid] {HUB} sent=2000-01-01 00:00:00"));
        check_spot_clock(HubClock::Synchronized, "01 61 00 48 00 E8 07 03 0F 07 1E 00", "pulse_oximetry spo2=97 pulse_rate=72 flags=[] at=2024-03-15T07:30:00 device sent=2024-03-15 07:30:00");
    }

    #[test]
    fn demonstration_testing_unavailable_and_invalid_readings_are_not_clinical() {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let clinical = |hex: &str| {
            PlxSpotCheckDecoder
                .decode(&bytes_of(hex), &context)
                .unwrap()[0]
                .is_clinical()
        };
        assert!(clinical("02 61 00 48 00 80 00"));
        assert!(!clinical("02 61 00 48 00 00 04"));
        assert!(!clinical("02 61 00 48 00 00 08"));
        assert!(!clinical("02 61 00 48 00 00 20"));
        assert!(!clinical("02 61 00 48 00 00 80"));
    }

    #[test]
    fn features_vector() {
        let render = |hex: &str| match decode_features(&bytes_of(hex)) {
            Ok(features) => format!(
                "{} | {} | {}",
                features.supported.join(","),
                crate::model::reading::joined(&features.measurement_status_support),
                crate::model::reading::joined(&features.device_and_sensor_status_support)
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(
            render("A3 00 40 10 80 01 00"),
            "measurement_status,device_and_sensor_status,spo2pr_slow,multiple_bonds | early_estimate,calibration_ongoing | nonpulsatile_signal,questionable_pulse"
        );
        assert_eq!(
            render("0C 00"),
            "spot_check_storage,spot_check_time_stamp |  | "
        );
        assert_eq!(
            render("03 00 40 10"),
            "error too short for device and sensor status support"
        );
    }
}

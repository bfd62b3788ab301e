//! Blood Pressure Service: Blood Pressure Measurement 0x2A35, Intermediate Cuff Pressure 0x2A36 and the
//! Blood Pressure Feature 0x2A49.

use super::ieee11073::{
    bit_names, patient_value_of, push_flags, stamp, value_of, Cursor, MderNumber,
};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading};

const FLAG_KPA: u8 = 0x01;
const FLAG_TIME_STAMP: u8 = 0x02;
const FLAG_PULSE_RATE: u8 = 0x04;
const FLAG_USER_ID: u8 = 0x08;
const FLAG_STATUS: u8 = 0x10;
const UNKNOWN_USER: u8 = 0xFF;

/// Decodes 0x2A35 indications: one blood pressure record each.
#[derive(Debug, Default)]
pub struct BloodPressureMeasurementDecoder;

/// Decodes 0x2A36 notifications: the cuff pressure while the cuff inflates. Not a measurement; the reading
/// carries the flag `cuff_pressure_progress`, which keeps it off the readings topic.
#[derive(Debug, Default)]
pub struct IntermediateCuffPressureDecoder;

struct Parsed {
    flags: u8,
    pressures: [MderNumber; 3],
    time_stamp: Option<super::ieee11073::DeviceDateTime>,
    pulse_rate: Option<MderNumber>,
    user_id: Option<u8>,
    status: Option<u16>,
}

fn parse(message: &[u8]) -> Result<Parsed, FrameError> {
    let mut cursor = Cursor::new(message);
    let flags = cursor.u8("flags")?;
    let pressures = [
        cursor.sfloat("systolic")?,
        cursor.sfloat("diastolic")?,
        cursor.sfloat("mean arterial pressure")?,
    ];
    let time_stamp = (flags & FLAG_TIME_STAMP != 0)
        .then(|| cursor.date_time("time stamp"))
        .transpose()?;
    let pulse_rate = (flags & FLAG_PULSE_RATE != 0)
        .then(|| cursor.sfloat("pulse rate"))
        .transpose()?;
    let user_id = (flags & FLAG_USER_ID != 0)
        .then(|| cursor.u8("user id"))
        .transpose()?;
    let status = (flags & FLAG_STATUS != 0)
        .then(|| cursor.u16("measurement status"))
        .transpose()?;
    Ok(Parsed {
        flags,
        pressures,
        time_stamp,
        pulse_rate,
        user_id,
        status,
    })
}

/// Measurement Status bits 0–2 and 5; bits 3–4 are the two-bit pulse-rate range, handled apart.
const STATUS_BITS: [(u32, Flag); 4] = [
    (0, Flag::BodyMovement),
    (1, Flag::CuffLoose),
    (2, Flag::IrregularPulse),
    (5, Flag::ImproperPosition),
];

fn status_flags(status: u16) -> Vec<Flag> {
    let mut flags = bit_names(u32::from(status), &STATUS_BITS);
    // Keep the spec's bit order: the pulse-rate range (bits 3–4) comes between irregular pulse and position.
    let range = match (status >> 3) & 0x03 {
        1 => Some(Flag::PulseRateAboveRange),
        2 => Some(Flag::PulseRateBelowRange),
        _ => None,
    };
    if let Some(range) = range {
        let at = flags
            .iter()
            .position(|flag| *flag == Flag::ImproperPosition)
            .unwrap_or(flags.len());
        flags.insert(at, range);
    }
    flags
}

impl MessageDecoder for BloodPressureMeasurementDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let parsed = parse(message)?;
        let kpa = parsed.flags & FLAG_KPA != 0;
        let (systolic, diastolic, mean) = if kpa {
            (
                &codes::SYSTOLIC_KPA,
                &codes::DIASTOLIC_KPA,
                &codes::MEAN_ARTERIAL_PRESSURE_KPA,
            )
        } else {
            (
                &codes::SYSTOLIC,
                &codes::DIASTOLIC,
                &codes::MEAN_ARTERIAL_PRESSURE,
            )
        };
        let mut reading = Reading::at_hub_time(Kind::BloodPressure, context.received_at, message);
        let [sys, dia, map] = parsed.pressures;
        reading.values = vec![
            patient_value_of(systolic, sys),
            patient_value_of(diastolic, dia),
            patient_value_of(mean, map),
        ];
        if let Some(pulse) = parsed.pulse_rate {
            reading
                .values
                .push(patient_value_of(&codes::PULSE_RATE_CUFF, pulse));
        }
        let failed = parsed
            .pressures
            .iter()
            .all(|number| matches!(number, MderNumber::Special(_)));
        push_flags(&mut reading.flags, &[(failed, Flag::MeasurementFailed)]);
        reading
            .flags
            .extend(parsed.status.map(status_flags).unwrap_or_default());
        reading.user_id = parsed.user_id.filter(|user| *user != UNKNOWN_USER);
        if let Some(time_stamp) = parsed.time_stamp {
            stamp(&mut reading, time_stamp, context);
            // A stored record replayed by the cuff carries the same time stamp and bytes, so the bytes name it.
            if crate::model::measurement_time::stamp_names_the_record(&reading) {
                reading.record_key = Some(format!("blood-pressure:{}", hex_of(message)));
            }
        }
        Ok(vec![reading])
    }
}

impl MessageDecoder for IntermediateCuffPressureDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let parsed = parse(message)?;
        let measure = if parsed.flags & FLAG_KPA != 0 {
            &codes::CUFF_PRESSURE_KPA
        } else {
            &codes::CUFF_PRESSURE
        };
        let mut reading = Reading::at_hub_time(Kind::BloodPressure, context.received_at, message);
        reading.values = vec![value_of(measure, parsed.pressures[0])];
        reading.flags.push(Flag::CuffPressureProgress);
        reading
            .flags
            .extend(parsed.status.map(status_flags).unwrap_or_default());
        reading.user_id = parsed.user_id.filter(|user| *user != UNKNOWN_USER);
        Ok(vec![reading])
    }
}

/// What a cuff says it can detect (0x2A49).
pub fn decode_feature(bytes: &[u8]) -> Result<Vec<&'static str>, FrameError> {
    let word = Cursor::new(bytes).u16("blood pressure feature")?;
    Ok(bit_names(
        u32::from(word),
        &[
            (0, "body_movement_detection"),
            (1, "cuff_fit_detection"),
            (2, "irregular_pulse_detection"),
            (3, "pulse_rate_range_detection"),
            (4, "measurement_position_detection"),
            (5, "multiple_bonds"),
            (6, "e2e_crc"),
            (7, "user_data_service"),
            (8, "user_facing_time"),
        ],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, render_error,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check(hex: &str, expected: &str) {
        let lines = decode_messages(&mut BloodPressureMeasurementDecoder, &[hex]);
        assert_eq!(lines, [expected], "{hex}");
    }

    /// Like `check`, against `clock`, with the time stamp as the device sent it (`sent=`, `-` for none).
    #[track_caller]
    fn check_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(&mut BloodPressureMeasurementDecoder, clock, hex),
            expected,
            "{hex}"
        );
    }

    #[track_caller]
    fn check_cuff(hex: &str, expected: &str) {
        let lines = decode_messages(&mut IntermediateCuffPressureDecoder, &[hex]);
        assert_eq!(lines, [expected], "{hex}");
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn blood_pressure_measurement_vectors() {
        check("1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
            &format!("blood_pressure systolic=138[mm[Hg]] diastolic=88[mm[Hg]] mean_arterial_pressure=120[mm[Hg]] pulse_rate=60 flags=[body_movement,cuff_loose,irregular_pulse,improper_position,device_clock_invalid] {HUB} user=1"));
        check("15 BD F0 0B 00 9F F0 3C 00 12 00",
            &format!("blood_pressure systolic=18.9[kPa] diastolic=11[kPa] mean_arterial_pressure=15.9[kPa] pulse_rate=60 flags=[cuff_loose,pulse_rate_below_range] {HUB}"));
        check("00 BD F0 0B 00 9F F0",
            &format!("blood_pressure systolic=18.9[mm[Hg]] diastolic=11[mm[Hg]] mean_arterial_pressure=15.9[mm[Hg]] flags=[] {HUB}"));
        check("01 B0 F0 6A F0 8E F0",
            &format!("blood_pressure systolic=17.6[kPa] diastolic=10.6[kPa] mean_arterial_pressure=14.2[kPa] flags=[] {HUB}"));
        check("00 80 00 50 00 5F 00",
            &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
    }

    #[rustfmt::skip]
    #[test]
    fn blood_pressure_measurement_options_and_status() {
        // A&D-style stored record: time stamp, pulse; the cuff's clock is trusted.
        check("06 80 00 50 00 5F 00 E8 07 03 0F 07 1E 00 48 00",
            "blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] pulse_rate=72 flags=[] at=2024-03-15T07:30:00 device");
        // A failed measurement: every value NaN, valid time stamp. Accepted, with nothing invented.
        check("06 FF 07 FF 07 FF 07 E8 07 03 0F 07 1E 00 FF 07",
            "blood_pressure systolic=nan diastolic=nan mean_arterial_pressure=nan pulse_rate=nan flags=[measurement_failed] at=2024-03-15T07:30:00 device");
        check("10 80 00 50 00 5F 00 08 00", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[pulse_rate_above_range] {HUB}"));
        check("10 80 00 50 00 5F 00 18 00", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
        check("08 80 00 50 00 5F 00 FF", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
        check("08 80 00 50 00 5F 00 03", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB} user=3"));
        // RFU flag bits neither shift offsets nor fail the record.
        check("E0 80 00 50 00 5F 00", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
        // Special values are kept as specials, even in one field only.
        check("00 80 00 00 08 5F 00", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=nres mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
        // A 0 is no pressure or pulse a patient has: missing, not a number.
        check("04 00 00 00 00 00 00 00 00", &format!("blood_pressure systolic=missing diastolic=missing mean_arterial_pressure=missing pulse_rate=missing flags=[] {HUB}"));
        check("04 80 00 50 00 5F 00 00 00", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] pulse_rate=missing flags=[] {HUB}"));
        check("01 00 F0 6A F0 8E F0", &format!("blood_pressure systolic=missing diastolic=10.6[kPa] mean_arterial_pressure=14.2[kPa] flags=[] {HUB}"));
        // Trailing bytes beyond what the flags announce (BLS 1.1 fields we do not read) are ignored.
        check("00 80 00 50 00 5F 00 AA", &format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] flags=[] {HUB}"));
    }

    #[rustfmt::skip]
    #[test]
    fn device_clock_years_and_impossible_fields() {
        let line = |at: &str| format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] {at}");
        let invalid = line(&format!("flags=[device_clock_invalid] {HUB}"));
        let ahead = line(&format!("flags=[device_clock_ahead] {HUB}"));
        // Year 0 is in `blood_pressure_measurement_vectors`.
        check("02 80 00 50 00 5F 00 CF 07 0C 1F 17 3B 3B", &invalid);
        check("02 80 00 50 00 5F 00 D0 07 01 01 00 00 00", &invalid);
        check("02 80 00 50 00 5F 00 D9 07 0C 1F 17 3B 3B", &invalid);
        check("02 80 00 50 00 5F 00 DA 07 01 01 00 00 00", &line("flags=[] at=2010-01-01T00:00:00 device"));
        check("02 80 00 50 00 5F 00 33 08 0C 1F 00 00 00", &ahead);
        check("02 80 00 50 00 5F 00 34 08 01 01 00 00 00", &invalid);
        check("02 80 00 50 00 5F 00 FF FF 01 01 00 00 00", &invalid);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check("02 80 00 50 00 5F 00 E8 07 00 0F 07 1E 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 0D 0F 07 1E 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 03 00 07 1E 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 03 20 07 1E 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 02 1E 07 1E 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 03 0F 18 00 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 03 0F 07 3C 00", &invalid);
        check("02 80 00 50 00 5F 00 E8 07 03 0F 07 1E 3C", &invalid);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_cuff_ahead_and_the_time_sent_is_kept() {
        let line = |at: &str| format!("blood_pressure systolic=128[mm[Hg]] diastolic=80[mm[Hg]] mean_arterial_pressure=95[mm[Hg]] {at}");
        // Three days after the hub's noon: a cuff ahead of a trusted clock, or a hub clock that is behind.
        check_clock(HubClock::Synchronized, "02 80 00 50 00 5F 00 E8 07 03 12 07 1E 00", &line(&format!("flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00")));
        check_clock(HubClock::Unsynchronized, "02 80 00 50 00 5F 00 E8 07 03 12 07 1E 00", &line("flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00"));
        check_clock(HubClock::Unsynchronized, "02 80 00 50 00 5F 00 33 08 0C 1F 00 00 00", &line("flags=[] at=2099-12-31T00:00:00 device sent=2099-12-31 00:00:00"));
        // An untrusted hub clock does not make an implausible year plausible; the time sent is kept either way.
        check_clock(HubClock::Unsynchronized, "02 80 00 50 00 5F 00 D9 07 0C 1F 17 3B 3B", &line(&format!("flags=[device_clock_invalid] {HUB} sent=2009-12-31 23:59:59")));
        check_clock(HubClock::Trusted, "02 80 00 50 00 5F 00 E8 07 03 0F 07 1E 00", &line("flags=[] at=2024-03-15T07:30:00 device sent=2024-03-15 07:30:00"));
        check_clock(HubClock::Trusted, "02 80 00 50 00 5F 00 E8 07 0D 0F 07 1E 00", &line(&format!("flags=[device_clock_invalid] {HUB} sent=-")));
    }

    #[rustfmt::skip]
    #[test]
    fn blood_pressure_measurement_short_messages_are_errors() {
        check("", "error too short for flags");
        check("00 80 00 50 00 5F", "error too short for mean arterial pressure");
        check("02 80 00 50 00 5F 00 E8 07 03 0F 07 1E", "error too short for time stamp");
        check("04 80 00 50 00 5F 00", "error too short for pulse rate");
        check("08 80 00 50 00 5F 00", "error too short for user id");
        check("10 80 00 50 00 5F 00 01", "error too short for measurement status");
        check("1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27", "error too short for measurement status");
    }

    #[rustfmt::skip]
    #[test]
    fn intermediate_cuff_pressure_vectors() {
        check_cuff("1E 04 00 00 00 00 00 00 00 04 11 14 29 3B 3C 00 01 27 00",
            &format!("blood_pressure cuff_pressure=4[mm[Hg]] flags=[cuff_pressure_progress,body_movement,cuff_loose,irregular_pulse,improper_position] {HUB} user=1"));
        check_cuff("00 D7 F0 00 00 00 00", &format!("blood_pressure cuff_pressure=21.5[mm[Hg]] flags=[cuff_pressure_progress] {HUB}"));
        check_cuff("00 96 00 FF 07 FF 07", &format!("blood_pressure cuff_pressure=150[mm[Hg]] flags=[cuff_pressure_progress] {HUB}"));
        check_cuff("01 B0 F0 FF 07 FF 07", &format!("blood_pressure cuff_pressure=17.6[kPa] flags=[cuff_pressure_progress] {HUB}"));
        check_cuff("00 96 00 FF 07", "error too short for mean arterial pressure");
    }

    #[test]
    fn cuff_pressure_progress_is_not_a_clinical_reading() {
        let time_zone = crate::decode::test_support::utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let readings = IntermediateCuffPressureDecoder
            .decode(&bytes_of("00 96 00 FF 07 FF 07"), &context)
            .unwrap();
        assert!(!readings[0].is_clinical());
        let readings = BloodPressureMeasurementDecoder
            .decode(&bytes_of("00 80 00 50 00 5F 00"), &context)
            .unwrap();
        assert!(readings[0].is_clinical());
    }

    #[test]
    fn a_replayed_stored_record_has_the_same_key_and_a_live_one_none() {
        let time_zone = crate::decode::test_support::utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let key = |hex: &str| {
            BloodPressureMeasurementDecoder
                .decode(&bytes_of(hex), &context)
                .unwrap()[0]
                .record_key
                .clone()
        };
        let stored = "06 80 00 50 00 5F 00 E8 07 03 0F 07 1E 00 48 00";
        assert!(key(stored).is_some());
        assert_eq!(key(stored), key(stored));
        assert_ne!(
            key(stored),
            key("06 80 00 50 00 5F 00 E8 07 03 0F 07 1F 00 48 00")
        );
        assert_eq!(key("00 80 00 50 00 5F 00"), None);
        // A clock that was never set names nothing: two such records could share a time stamp.
        assert_eq!(
            key("1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00"),
            None
        );
    }

    #[test]
    fn feature_vectors() {
        let render = |hex: &str| match decode_feature(&bytes_of(hex)) {
            Ok(names) => names.join(","),
            Err(error) => render_error(&error),
        };
        assert_eq!(
            render("27 00"),
            "body_movement_detection,cuff_fit_detection,irregular_pulse_detection,multiple_bonds"
        );
        assert_eq!(
            render("FF 01"),
            "body_movement_detection,cuff_fit_detection,irregular_pulse_detection,pulse_rate_range_detection,measurement_position_detection,multiple_bonds,e2e_crc,user_data_service,user_facing_time"
        );
        assert_eq!(render("27"), "error too short for blood pressure feature");
    }
}

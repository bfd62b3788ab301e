//! Glucose Service: Glucose Measurement 0x2A18 and Glucose Measurement Context 0x2A34. `racp` holds the
//! Record Access Control Point's requests and responses, `dialog` the hub's side of a record transfer
//! (which records to ask for, a restarted numbering, a record waiting for its context).
//!
//! Control-solution results are meter self-tests, not patient data: they carry the `control_solution` flag
//! and the pipeline withholds them.

pub mod dialog;
pub mod racp;

use chrono::TimeDelta;

use super::ieee11073::{
    bit_names, patient_value_of, push_flags, sfloat_shifted, stamp, Cursor, DeviceDateTime,
    MderNumber,
};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Special, Value};

const TIME_OFFSET_PRESENT: u8 = 0x01;
const CONCENTRATION_PRESENT: u8 = 0x02;
const MOL_PER_LITRE: u8 = 0x04;
const STATUS_PRESENT: u8 = 0x08;
const CONTEXT_FOLLOWS: u8 = 0x10;

/// Sensor Status Annunciation bits as the nRF5 SDK `ble_gls.h` defines them (bit5 higher, bit6 lower).
const SENSOR_STATUS: [(u32, Flag); 12] = [
    (0, Flag::LowBattery),
    (1, Flag::SensorMalfunction),
    (2, Flag::SampleSizeInsufficient),
    (3, Flag::StripInsertionError),
    (4, Flag::StripTypeIncorrect),
    (5, Flag::ResultAboveRange),
    (6, Flag::ResultBelowRange),
    (7, Flag::SensorTemperatureHigh),
    (8, Flag::SensorTemperatureLow),
    (9, Flag::ReadInterrupted),
    (10, Flag::DeviceFault),
    (11, Flag::TimeFault),
];

const SAMPLE_TYPES: [(u8, Flag); 9] = [
    (1, Flag::SampleCapillaryWholeBlood),
    (2, Flag::SampleCapillaryPlasma),
    (3, Flag::SampleVenousWholeBlood),
    (4, Flag::SampleVenousPlasma),
    (5, Flag::SampleArterialWholeBlood),
    (6, Flag::SampleArterialPlasma),
    (7, Flag::SampleUndeterminedWholeBlood),
    (8, Flag::SampleUndeterminedPlasma),
    (9, Flag::SampleInterstitialFluid),
];

const SAMPLE_LOCATIONS: [(u8, Flag); 3] = [
    (1, Flag::LocationFinger),
    (2, Flag::LocationAlternateSite),
    (3, Flag::LocationEarlobe),
];

const CONTROL_SOLUTION_TYPE: u8 = 10;
const CONTROL_SOLUTION_LOCATION: u8 = 4;

const MEALS: [(u8, Flag); 5] = [
    (1, Flag::MealPreprandial),
    (2, Flag::MealPostprandial),
    (3, Flag::MealFasting),
    (4, Flag::MealCasual),
    (5, Flag::MealBedtime),
];

const TESTERS: [(u8, Flag); 3] = [
    (1, Flag::TesterSelf),
    (2, Flag::TesterHealthCareProfessional),
    (3, Flag::TesterLabTest),
];

const HEALTH: [(u8, Flag); 5] = [
    (1, Flag::HealthMinorIssues),
    (2, Flag::HealthMajorIssues),
    (3, Flag::HealthDuringMenses),
    (4, Flag::HealthUnderStress),
    (5, Flag::HealthNone),
];

/// The name a table gives `code`; reserved and "not available" codes have none.
fn name_of(table: &[(u8, Flag)], code: u8) -> Option<Flag> {
    table
        .iter()
        .find(|(value, _)| *value == code)
        .map(|(_, name)| *name)
}

/// Decodes 0x2A18 notifications: one stored or new glucose record each.
#[derive(Debug, Default)]
pub struct GlucoseMeasurementDecoder;

/// The record's sequence number (bytes 1–2), for the session's "records after N" requests.
pub fn sequence_number(message: &[u8]) -> Option<u16> {
    match message {
        [_, lo, hi, ..] => Some(u16::from_le_bytes([*lo, *hi])),
        _ => None,
    }
}

/// Whether a decoded glucose record announced a Glucose Measurement Context (its flags byte, kept in `raw`).
pub fn announces_context(reading: &Reading) -> bool {
    reading.kind == Kind::BloodGlucose
        && reading
            .raw
            .first()
            .is_some_and(|flags| flags & CONTEXT_FOLLOWS != 0)
}

impl MessageDecoder for GlucoseMeasurementDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let mut cursor = Cursor::new(message);
        let flags = cursor.u8("flags")?;
        let sequence = cursor.u16("sequence number")?;
        let base_time = cursor.date_time("base time")?;
        let offset_minutes = if flags & TIME_OFFSET_PRESENT != 0 {
            Some(cursor.u16("time offset")? as i16)
        } else {
            None
        };
        let concentration = if flags & CONCENTRATION_PRESENT != 0 {
            Some((
                cursor.u16("concentration")?,
                cursor.u8("type and sample location")?,
            ))
        } else {
            None
        };
        let status = if flags & STATUS_PRESENT != 0 {
            Some(cursor.u16("sensor status annunciation")?)
        } else {
            None
        };

        let mut reading = Reading::at_hub_time(Kind::BloodGlucose, context.received_at, message);
        match concentration {
            Some((raw, type_and_location)) => {
                let (measure, shift) = if flags & MOL_PER_LITRE != 0 {
                    (&codes::GLUCOSE_MMOL_L, 3)
                } else {
                    (&codes::GLUCOSE_MG_DL, 5)
                };
                reading
                    .values
                    .push(patient_value_of(measure, sfloat_shifted(raw, shift)));
                reading.flags.extend(sample_flags(type_and_location));
            }
            None => reading.values.push(Value::special(
                &codes::GLUCOSE_MG_DL,
                Special::NoMeasurement,
            )),
        }
        if let Some(status) = status {
            reading
                .flags
                .extend(bit_names(u32::from(status), &SENSOR_STATUS));
        }
        push_flags(
            &mut reading.flags,
            &[(flags & CONTEXT_FOLLOWS != 0, Flag::ContextFollows)],
        );
        stamp(
            &mut reading,
            measurement_time(base_time, offset_minutes),
            context,
        );
        // The sequence number alone is not an identity: meters restart their numbering after a reset.
        reading.record_key = Some(format!(
            "glucose:{sequence}:{}",
            hex_of(message.get(3..).unwrap_or_default())
        ));
        Ok(vec![reading])
    }
}

/// The sample type (low nibble) and location (high nibble) as flags, then `control_solution` if either says so.
fn sample_flags(type_and_location: u8) -> Vec<Flag> {
    let sample_type = type_and_location & 0x0F;
    let location = type_and_location >> 4;
    let mut flags: Vec<Flag> = [
        name_of(&SAMPLE_TYPES, sample_type),
        name_of(&SAMPLE_LOCATIONS, location),
    ]
    .into_iter()
    .flatten()
    .collect();
    push_flags(
        &mut flags,
        &[(
            sample_type == CONTROL_SOLUTION_TYPE || location == CONTROL_SOLUTION_LOCATION,
            Flag::ControlSolution,
        )],
    );
    flags
}

/// Base Time plus Time Offset; an unknown base time stays unknown, so the reading gets the hub's time.
fn measurement_time(base_time: DeviceDateTime, offset_minutes: Option<i16>) -> DeviceDateTime {
    match (base_time, offset_minutes) {
        (DeviceDateTime::Known(base), Some(minutes)) => base
            .checked_add_signed(TimeDelta::minutes(i64::from(minutes)))
            // A Date Time holds years up to 9999; an offset cannot carry it past what the wire can say.
            .filter(crate::model::measurement_time::has_four_digit_year)
            .map_or(DeviceDateTime::Unknown, DeviceDateTime::Known),
        (base_time, _) => base_time,
    }
}

/// The unit of a Glucose Measurement Context medication amount (flags bit5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MedicationUnit {
    Kilograms,
    Litres,
}

/// A decoded Glucose Measurement Context (0x2A34); codes stay as sent, [`GlucoseContext::flags`] names them.
#[derive(Debug, Clone, PartialEq)]
pub struct GlucoseContext {
    /// The sequence number of the 0x2A18 record this context belongs to.
    pub sequence_number: u16,
    /// Carbohydrate ID (1 breakfast … 7 brunch) and amount in kilograms.
    pub carbohydrate: Option<(u8, MderNumber)>,
    pub meal: Option<u8>,
    pub tester: Option<u8>,
    pub health: Option<u8>,
    /// Exercise duration in seconds (65535 = overrun) and intensity in percent.
    pub exercise: Option<(u16, u8)>,
    /// Medication ID (1 rapid-acting insulin … 5 pre-mixed), amount and its unit.
    pub medication: Option<(u8, MderNumber, MedicationUnit)>,
    /// HbA1c in percent.
    pub hba1c: Option<MderNumber>,
}

/// Decodes a Glucose Measurement Context (0x2A34).
pub fn decode_context(bytes: &[u8]) -> Result<GlucoseContext, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let flags = cursor.u8("flags")?;
    let sequence_number = cursor.u16("sequence number")?;
    if flags & 0x80 != 0 {
        // No extended flag is defined; the byte is read only so that the fields after it stay in place.
        cursor.u8("extended flags")?;
    }
    let carbohydrate = if flags & 0x01 != 0 {
        Some((
            cursor.u8("carbohydrate id")?,
            cursor.sfloat("carbohydrate")?,
        ))
    } else {
        None
    };
    let meal = if flags & 0x02 != 0 {
        Some(cursor.u8("meal")?)
    } else {
        None
    };
    let tester_and_health = if flags & 0x04 != 0 {
        Some(cursor.u8("tester and health")?)
    } else {
        None
    };
    let exercise = if flags & 0x08 != 0 {
        Some((
            cursor.u16("exercise duration")?,
            cursor.u8("exercise intensity")?,
        ))
    } else {
        None
    };
    let medication = if flags & 0x10 != 0 {
        let unit = if flags & 0x20 != 0 {
            MedicationUnit::Litres
        } else {
            MedicationUnit::Kilograms
        };
        Some((
            cursor.u8("medication id")?,
            cursor.sfloat("medication")?,
            unit,
        ))
    } else {
        None
    };
    let hba1c = if flags & 0x40 != 0 {
        Some(cursor.sfloat("HbA1c")?)
    } else {
        None
    };
    Ok(GlucoseContext {
        sequence_number,
        carbohydrate,
        meal,
        tester: tester_and_health.map(|byte| byte & 0x0F),
        health: tester_and_health.map(|byte| byte >> 4),
        exercise,
        medication,
        hba1c,
    })
}

impl GlucoseContext {
    /// The meal, tester and health fields as flag names, in that order; "not available" and reserved codes
    /// give none.
    pub fn flags(&self) -> Vec<Flag> {
        [
            self.meal.and_then(|code| name_of(&MEALS, code)),
            self.tester.and_then(|code| name_of(&TESTERS, code)),
            self.health.and_then(|code| name_of(&HEALTH, code)),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, render_error, utc,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check(messages: &[&str], expected: &[&str]) {
        assert_eq!(
            decode_messages(&mut GlucoseMeasurementDecoder, messages),
            expected,
            "{messages:?}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    /// The reference's vector 2 (seq 5, 2024-03-15 07:30:00, 95 mg/dL, capillary whole blood, finger).
    const VECTOR_2: &str = "03 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11";

    fn decode_one(hex: &str, received_at: chrono::DateTime<chrono::Utc>) -> Reading {
        let zone = utc();
        let context = DecodeContext::trusted(received_at, &zone);
        let mut readings = GlucoseMeasurementDecoder
            .decode(&bytes_of(hex), &context)
            .unwrap();
        assert_eq!(readings.len(), 1, "{hex}");
        readings.remove(0)
    }

    #[test]
    fn an_offset_that_carries_the_base_time_past_9999_is_no_time() {
        // Base time 9999-12-31 23:59:59 plus 32767 minutes would be year 10000, which no payload can carry.
        let reading = decode_one(
            "03 01 00 0F 27 0C 1F 17 3B 3B FF 7F 50 B0 11",
            received_at(),
        );
        assert_eq!(reading.device_time, None);
        assert!(
            reading.flags.contains(&Flag::DeviceClockInvalid),
            "{:?}",
            reading.flags
        );
    }

    /// Like `check` for one message, against `clock`, with the time stamp as the device sent it (`sent=`,
    /// `-` for none).
    #[track_caller]
    fn check_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(&mut GlucoseMeasurementDecoder, clock, hex),
            expected,
            "{hex}"
        );
    }

    fn key(hex: &str) -> String {
        decode_one(hex, received_at()).record_key.unwrap()
    }

    #[rustfmt::skip]
    #[test]
    fn measurement_vectors_from_the_reference() {
        check(&["1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"], &["blood_glucose glucose=3000000[mg/dL] flags=[sample_capillary_plasma,location_finger,low_battery,sample_size_insufficient,sensor_temperature_low,context_follows] at=2019-02-27T11:05:30 device"]);
        check(&["1B 00 00 E2 07 04 1A 0B 09 1E 1E 00 12 05 01"], &["error too short for sensor status annunciation"]);
        check(&[VECTOR_2], &["blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["06 06 00 E8 07 03 0F 08 00 00 35 C0 11"], &["blood_glucose glucose=5.3[mmol/L] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T08:00:00 device"]);
    }

    #[rustfmt::skip]
    #[test]
    fn concentration_and_its_specials() {
        check(&["00 07 00 E8 07 03 0F 07 1E 00"], &["blood_glucose glucose=no_measurement flags=[] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 64 00 11"], &["blood_glucose glucose=10000000[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 B5 F4 11"], &["blood_glucose glucose=12050000[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 FF 07 11"], &["blood_glucose glucose=nan flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 00 08 11"], &["blood_glucose glucose=nres flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 FE 07 11"], &["blood_glucose glucose=+inf flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["06 07 00 E8 07 03 0F 07 1E 00 02 08 11"], &["blood_glucose glucose=-inf flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["06 07 00 E8 07 03 0F 07 1E 00 B2 C1 11"], &["blood_glucose glucose=43.4[mmol/L] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 00 00 11"], &["blood_glucose glucose=missing flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
        check(&["06 07 00 E8 07 03 0F 07 1E 00 00 D0 11"], &["blood_glucose glucose=missing flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device"]);
    }

    #[rustfmt::skip]
    #[test]
    fn sample_type_and_location() {
        let at = "at=2024-03-15T07:30:00 device";
        let line = |flags: &str| format!("blood_glucose glucose=95[mg/dL] flags=[{flags}] {at}");
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 22"], &[&line("sample_capillary_plasma,location_alternate_site")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 33"], &[&line("sample_venous_whole_blood,location_earlobe")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F4"], &[&line("sample_venous_plasma")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F5"], &[&line("sample_arterial_whole_blood")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F6"], &[&line("sample_arterial_plasma")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F7"], &[&line("sample_undetermined_whole_blood")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F8"], &[&line("sample_undetermined_plasma")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 F9"], &[&line("sample_interstitial_fluid")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 00"], &[&line("")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 5B"], &[&line("")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 1A"], &[&line("location_finger,control_solution")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 41"], &[&line("sample_capillary_whole_blood,control_solution")]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0 4A"], &[&line("control_solution")]);
    }

    #[rustfmt::skip]
    #[test]
    fn sensor_status_and_context_follows() {
        let at = "at=2024-03-15T07:30:00 device";
        check(&["08 07 00 E8 07 03 0F 07 1E 00 20 00"], &[&format!("blood_glucose glucose=no_measurement flags=[result_above_range] {at}")]);
        check(&["08 07 00 E8 07 03 0F 07 1E 00 40 00"], &[&format!("blood_glucose glucose=no_measurement flags=[result_below_range] {at}")]);
        check(&["08 07 00 E8 07 03 0F 07 1E 00 FF 0F"], &[&format!("blood_glucose glucose=no_measurement flags=[low_battery,sensor_malfunction,sample_size_insufficient,strip_insertion_error,strip_type_incorrect,result_above_range,result_below_range,sensor_temperature_high,sensor_temperature_low,read_interrupted,device_fault,time_fault] {at}")]);
        check(&["08 07 00 E8 07 03 0F 07 1E 00 00 F0"], &[&format!("blood_glucose glucose=no_measurement flags=[] {at}")]);
        check(&["0A 07 00 E8 07 03 0F 07 1E 00 5F B0 11 60 08"], &[&format!("blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger,result_above_range,result_below_range,time_fault] {at}")]);
        check(&["10 07 00 E8 07 03 0F 07 1E 00"], &[&format!("blood_glucose glucose=no_measurement flags=[context_follows] {at}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn reserved_flag_bits_shift_nothing() {
        let line = "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device";
        check(&["23 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"], &[line]);
        check(&["43 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"], &[line]);
        check(&["83 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"], &[line]);
        check(&["E3 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"], &[line]);
        check(&["20 05 00 E8 07 03 0F 07 1E 00"], &["blood_glucose glucose=no_measurement flags=[] at=2024-03-15T07:30:00 device"]);
    }

    #[rustfmt::skip]
    #[test]
    fn time_offset_and_device_clock() {
        check(&["01 07 00 E8 07 03 0F 07 1E 00 3C 00"], &["blood_glucose glucose=no_measurement flags=[] at=2024-03-15T08:30:00 device"]);
        check(&["01 07 00 E8 07 03 0F 00 0A 00 EC FF"], &["blood_glucose glucose=no_measurement flags=[] at=2024-03-14T23:50:00 device"]);
        check(&["01 07 00 E8 07 03 0F 0B 37 00 1E 00"], &[&format!("blood_glucose glucose=no_measurement flags=[device_clock_ahead] {HUB}")]);
        check(&["01 07 00 E8 07 03 0F 0C 14 00 E2 FF"], &["blood_glucose glucose=no_measurement flags=[] at=2024-03-15T11:50:00 device"]);
        check(&["02 07 00 00 00 00 00 07 1E 00 5F B0 F1"], &[&format!("blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,device_clock_invalid] {HUB}")]);
        check(&["03 07 00 00 00 00 00 07 1E 00 05 00 5F B0 11"], &[&format!("blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger,device_clock_invalid] {HUB}")]);
        check(&["00 07 00 D0 07 01 01 00 00 00"], &[&format!("blood_glucose glucose=no_measurement flags=[device_clock_invalid] {HUB}")]);
        check(&["00 07 00 E8 07 02 1E 07 1E 00"], &[&format!("blood_glucose glucose=no_measurement flags=[device_clock_invalid] {HUB}")]);
        // Years 0, 1999 and 2009, the first plausible year, 2099 (ahead of the hub), 2100 and 65535.
        let invalid = format!("blood_glucose glucose=no_measurement flags=[device_clock_invalid] {HUB}");
        let ahead = format!("blood_glucose glucose=no_measurement flags=[device_clock_ahead] {HUB}");
        check(&["00 07 00 00 00 01 01 00 00 00"], &[&invalid]);
        check(&["00 07 00 CF 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["00 07 00 D9 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["00 07 00 DA 07 01 01 00 00 00"], &["blood_glucose glucose=no_measurement flags=[] at=2010-01-01T00:00:00 device"]);
        check(&["00 07 00 33 08 0C 1F 00 00 00"], &[&ahead]);
        check(&["00 07 00 34 08 01 01 00 00 00"], &[&invalid]);
        check(&["00 07 00 FF FF 01 01 00 00 00"], &[&invalid]);
        // Month 0 and 13, day 0 and 32, hour 24, minute 60, second 60.
        check(&["00 07 00 E8 07 00 0F 07 1E 00"], &[&invalid]);
        check(&["00 07 00 E8 07 0D 0F 07 1E 00"], &[&invalid]);
        check(&["00 07 00 E8 07 03 00 07 1E 00"], &[&invalid]);
        check(&["00 07 00 E8 07 03 20 07 1E 00"], &[&invalid]);
        check(&["00 07 00 E8 07 03 0F 18 00 00"], &[&invalid]);
        check(&["00 07 00 E8 07 03 0F 07 3C 00"], &[&invalid]);
        check(&["00 07 00 E8 07 03 0F 07 1E 3C"], &[&invalid]);
        // The time judged is base time plus offset: 2009-12-31 23:50 + 20 min is 2010, 2010-01-01 00:10 - 20 min
        // is 2009; 2099-12-31 23:50 + 20 min is 2100, 2100-01-01 00:10 - 20 min is 2099 and ahead of the hub.
        check(&["01 07 00 D9 07 0C 1F 17 32 00 14 00"], &["blood_glucose glucose=no_measurement flags=[] at=2010-01-01T00:10:00 device"]);
        check(&["01 07 00 DA 07 01 01 00 0A 00 EC FF"], &[&invalid]);
        check(&["01 07 00 33 08 0C 1F 17 32 00 14 00"], &[&invalid]);
        check(&["01 07 00 34 08 01 01 00 0A 00 EC FF"], &[&ahead]);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_meter_ahead_and_the_time_sent_is_kept() {
        check_clock(HubClock::Trusted, "00 07 00 E8 07 03 12 07 1E 00", &format!("blood_glucose glucose=no_measurement flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(HubClock::Unsynchronized, "00 07 00 E8 07 03 12 07 1E 00", "blood_glucose glucose=no_measurement flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(HubClock::Unsynchronized, "00 07 00 D9 07 0C 1F 17 3B 3B", &format!("blood_glucose glucose=no_measurement flags=[device_clock_invalid] {HUB} sent=2009-12-31 23:59:59"));
        // The time sent is the record's time: base time plus offset.
        check_clock(HubClock::Synchronized, "01 07 00 E8 07 03 0F 07 1E 00 3C 00", "blood_glucose glucose=no_measurement flags=[] at=2024-03-15T08:30:00 device sent=2024-03-15 08:30:00");
        check_clock(HubClock::Trusted, "01 07 00 DA 07 01 01 00 0A 00 EC FF", &format!("blood_glucose glucose=no_measurement flags=[device_clock_invalid] {HUB} sent=2009-12-31 23:50:00"));
    }

    #[rustfmt::skip]
    #[test]
    fn short_messages_are_errors() {
        check(&[""], &["error too short for flags"]);
        check(&["03 05"], &["error too short for sequence number"]);
        check(&["00 07 00 E8 07 03 0F 07"], &["error too short for base time"]);
        check(&["01 07 00 E8 07 03 0F 07 1E 00 3C"], &["error too short for time offset"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F"], &["error too short for concentration"]);
        check(&["02 07 00 E8 07 03 0F 07 1E 00 5F B0"], &["error too short for type and sample location"]);
        check(&["08 07 00 E8 07 03 0F 07 1E 00 20"], &["error too short for sensor status annunciation"]);
        check(&["03 05 00 E8 07 03 0F 07 1E 00 5F B0 11"], &["error too short for concentration"]);
    }

    #[rustfmt::skip]
    #[test]
    fn each_message_is_one_record() {
        check(&[VECTOR_2, "03 05", "06 06 00 E8 07 03 0F 08 00 00 35 C0 11"], &[
            "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device",
            "error too short for sequence number",
            "blood_glucose glucose=5.3[mmol/L] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T08:00:00 device",
        ]);
    }

    #[test]
    fn every_prefix_of_a_record_is_too_short() {
        for hex in [
            "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01",
            VECTOR_2,
            "06 06 00 E8 07 03 0F 08 00 00 35 C0 11",
        ] {
            let bytes = bytes_of(hex);
            for length in 0..bytes.len() {
                let prefix = hex::encode(&bytes[..length]);
                let lines = decode_messages(&mut GlucoseMeasurementDecoder, &[&prefix]);
                assert!(lines[0].starts_with("error too short for "), "{prefix}");
            }
        }
    }

    #[test]
    fn a_record_without_a_concentration_has_a_null_value_in_mg_per_dl() {
        let reading = decode_one("04 07 00 E8 07 03 0F 07 1E 00", received_at());
        assert_eq!(
            reading.values,
            [Value::special(
                &codes::GLUCOSE_MG_DL,
                Special::NoMeasurement
            )]
        );
        assert_eq!(reading.kind, Kind::BloodGlucose);
        assert!(reading.is_clinical());
    }

    #[test]
    fn control_solution_records_are_not_clinical() {
        assert!(decode_one(VECTOR_2, received_at()).is_clinical());
        for hex in [
            "02 07 00 E8 07 03 0F 07 1E 00 5F B0 1A",
            "02 07 00 E8 07 03 0F 07 1E 00 5F B0 41",
        ] {
            let reading = decode_one(hex, received_at());
            assert!(reading.flags.contains(&Flag::ControlSolution), "{hex}");
            assert!(!reading.is_clinical(), "{hex}");
        }
    }

    #[test]
    fn the_record_key_is_the_sequence_number_and_the_record_from_its_base_time_on() {
        assert_eq!(key(VECTOR_2), "glucose:5:e807030f071e0000005fb011");
        assert_eq!(key(VECTOR_2), key(VECTOR_2));
        let later: chrono::DateTime<chrono::Utc> = "2024-03-16T09:00:00Z".parse().unwrap();
        assert_eq!(
            decode_one(VECTOR_2, later).record_key.unwrap(),
            key(VECTOR_2),
            "a record read again later is the same record"
        );
        assert_ne!(
            key(VECTOR_2),
            key("03 05 00 E8 07 03 10 07 1E 00 00 00 5F B0 11"),
            "a meter that restarted its numbering reuses sequence numbers for new records"
        );
        assert_ne!(
            key(VECTOR_2),
            key("03 06 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11")
        );
        assert_eq!(
            key("13 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"),
            "glucose:5:e807030f071e0000005fb011",
            "the flags byte is not part of the record"
        );
    }

    #[test]
    fn sequence_number_reads_bytes_one_and_two() {
        assert_eq!(sequence_number(&bytes_of(VECTOR_2)), Some(5));
        assert_eq!(
            sequence_number(&bytes_of(
                "1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01"
            )),
            Some(1)
        );
        assert_eq!(sequence_number(&bytes_of("00 34 12")), Some(0x1234));
        assert_eq!(sequence_number(&bytes_of("03 05")), None);
        assert_eq!(sequence_number(&[]), None);
    }

    fn render_number(number: MderNumber) -> String {
        match number {
            MderNumber::Number(value) => format!("{value}"),
            MderNumber::Special(special) => special.as_str().to_string(),
        }
    }

    /// One line per context: the fields present, then the flags.
    fn render_context(context: &GlucoseContext) -> String {
        let mut parts = vec![format!("seq={}", context.sequence_number)];
        if let Some((id, amount)) = context.carbohydrate {
            parts.push(format!("carbohydrate={id}:{}kg", render_number(amount)));
        }
        if let Some(meal) = context.meal {
            parts.push(format!("meal={meal}"));
        }
        if let (Some(tester), Some(health)) = (context.tester, context.health) {
            parts.push(format!("tester={tester} health={health}"));
        }
        if let Some((seconds, intensity)) = context.exercise {
            parts.push(format!("exercise={seconds}s:{intensity}%"));
        }
        if let Some((id, amount, unit)) = context.medication {
            let unit = match unit {
                MedicationUnit::Kilograms => "kg",
                MedicationUnit::Litres => "L",
            };
            parts.push(format!("medication={id}:{}{unit}", render_number(amount)));
        }
        if let Some(hba1c) = context.hba1c {
            parts.push(format!("hba1c={}%", render_number(hba1c)));
        }
        parts.push(format!(
            "flags=[{}]",
            crate::model::reading::joined(&context.flags())
        ));
        parts.join(" ")
    }

    #[track_caller]
    fn check_context(hex: &str, expected: &str) {
        let rendered = match decode_context(&bytes_of(hex)) {
            Ok(context) => render_context(&context),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
    }

    #[rustfmt::skip]
    #[test]
    fn context_vectors_from_the_reference() {
        check_context("06 05 00 01 51", "seq=5 meal=1 tester=1 health=5 flags=[meal_preprandial,tester_self,health_none]");
        check_context("01 05 00 01 32 D0", "seq=5 carbohydrate=1:0.05kg flags=[]");
        check_context("40 05 00 41 F0", "seq=5 hba1c=6.5% flags=[]");
        check_context("18 05 00 3C 00 32 04 0A D0", "seq=5 exercise=60s:50% medication=4:0.01kg flags=[]");
    }

    #[rustfmt::skip]
    #[test]
    fn context_fields_and_flags() {
        check_context("00 09 00", "seq=9 flags=[]");
        check_context("86 05 00 00 01 51", "seq=5 meal=1 tester=1 health=5 flags=[meal_preprandial,tester_self,health_none]");
        check_context("FF 09 00 00 02 32 D0 02 F2 FF FF 64 01 0A D0 FF 07", "seq=9 carbohydrate=2:0.05kg meal=2 tester=2 health=15 exercise=65535s:100% medication=1:0.01L hba1c=nan% flags=[meal_postprandial,tester_health_care_professional]");
        check_context("30 05 00 05 0A D0", "seq=5 medication=5:0.01L flags=[]");
        check_context("20 05 00", "seq=5 flags=[]");
        check_context("02 05 00 03", "seq=5 meal=3 flags=[meal_fasting]");
        check_context("02 05 00 04", "seq=5 meal=4 flags=[meal_casual]");
        check_context("02 05 00 05", "seq=5 meal=5 flags=[meal_bedtime]");
        check_context("02 05 00 00", "seq=5 meal=0 flags=[]");
        check_context("02 05 00 06", "seq=5 meal=6 flags=[]");
        check_context("04 05 00 13", "seq=5 tester=3 health=1 flags=[tester_lab_test,health_minor_issues]");
        check_context("04 05 00 2F", "seq=5 tester=15 health=2 flags=[health_major_issues]");
        check_context("04 05 00 31", "seq=5 tester=1 health=3 flags=[tester_self,health_during_menses]");
        check_context("04 05 00 42", "seq=5 tester=2 health=4 flags=[tester_health_care_professional,health_under_stress]");
        check_context("04 05 00 FF", "seq=5 tester=15 health=15 flags=[]");
    }

    #[rustfmt::skip]
    #[test]
    fn short_contexts_are_errors() {
        check_context("", "error too short for flags");
        check_context("06 05", "error too short for sequence number");
        check_context("86 05 00", "error too short for extended flags");
        check_context("01 05 00 01 32", "error too short for carbohydrate");
        check_context("02 05 00", "error too short for meal");
        check_context("06 05 00 01", "error too short for tester and health");
        check_context("08 05 00 3C 00", "error too short for exercise intensity");
        check_context("10 05 00 04", "error too short for medication");
        check_context("40 05 00 41", "error too short for HbA1c");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            let zone = utc();
            let context = DecodeContext::trusted(received_at(), &zone);
            match GlucoseMeasurementDecoder.decode(&bytes, &context) {
                Ok(readings) => {
                    prop_assert_eq!(readings.len(), 1);
                    prop_assert_eq!(readings[0].values.len(), 1);
                }
                Err(error) => prop_assert!(matches!(error, FrameError::TooShort { .. }), "{error}"),
            }
            let _ = decode_context(&bytes);
        }
    }
}

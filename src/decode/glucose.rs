//! Glucose Service: Glucose Measurement 0x2A18, Glucose Measurement Context 0x2A34 and the Record Access
//! Control Point 0x2A52 requests and responses.
//!
//! Control-solution results are meter self-tests, not patient data: they carry the `control_solution` flag
//! and the pipeline withholds them.

use chrono::TimeDelta;

use super::ieee11073::{
    bit_names, push_flags, sfloat_shifted, stamp, value_of, Cursor, DeviceDateTime, MderNumber,
};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::codes;
use crate::reading::{Kind, Reading, Special, Value};

const SENSOR_STATUS: [(u32, &str); 12] = [
    (0, "low_battery"),
    (1, "sensor_malfunction"),
    (2, "sample_size_insufficient"),
    (3, "strip_insertion_error"),
    (4, "strip_type_incorrect"),
    (5, "result_above_range"),
    (6, "result_below_range"),
    (7, "sensor_temperature_high"),
    (8, "sensor_temperature_low"),
    (9, "read_interrupted"),
    (10, "device_fault"),
    (11, "time_fault"),
];

const SAMPLE_TYPES: [&str; 9] = [
    "sample_capillary_whole_blood",
    "sample_capillary_plasma",
    "sample_venous_whole_blood",
    "sample_venous_plasma",
    "sample_arterial_whole_blood",
    "sample_arterial_plasma",
    "sample_undetermined_whole_blood",
    "sample_undetermined_plasma",
    "sample_interstitial_fluid",
];
const CONTROL_SOLUTION_TYPE: u8 = 10;
const CONTROL_SOLUTION_LOCATION: u8 = 4;

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
        let offset = (flags & 0x01 != 0)
            .then(|| cursor.u16("time offset"))
            .transpose()?;
        let concentration = (flags & 0x02 != 0)
            .then(|| {
                Ok::<_, FrameError>((
                    cursor.u16("concentration")?,
                    cursor.u8("type and sample location")?,
                ))
            })
            .transpose()?;
        let status = (flags & 0x08 != 0)
            .then(|| cursor.u16("sensor status annunciation"))
            .transpose()?;
        let mol_per_litre = flags & 0x04 != 0;

        let mut reading = Reading::at_hub_time(Kind::BloodGlucose, context.received_at, message);
        let measure = if mol_per_litre {
            &codes::GLUCOSE_MMOL_L
        } else {
            &codes::GLUCOSE_MG_DL
        };
        match concentration {
            Some((raw, type_and_location)) => {
                // kg/L → mg/dL is ×10⁵; mol/L → mmol/L is ×10³.
                let shift = if mol_per_litre { 3 } else { 5 };
                reading
                    .values
                    .push(value_of(measure, sfloat_shifted(raw, shift)));
                let sample_type = type_and_location & 0x0F;
                let location = type_and_location >> 4;
                if let Some(name) = usize::from(sample_type)
                    .checked_sub(1)
                    .and_then(|i| SAMPLE_TYPES.get(i))
                {
                    reading.flags.push(name);
                }
                let location_flag = match location {
                    1 => Some("location_finger"),
                    2 => Some("location_alternate_site"),
                    3 => Some("location_earlobe"),
                    _ => None,
                };
                reading.flags.extend(location_flag);
                push_flags(
                    &mut reading.flags,
                    &[(
                        sample_type == CONTROL_SOLUTION_TYPE
                            || location == CONTROL_SOLUTION_LOCATION,
                        "control_solution",
                    )],
                );
            }
            None => reading
                .values
                .push(Value::special(measure, Special::NoMeasurement)),
        }
        if let Some(status) = status {
            reading
                .flags
                .extend(bit_names(u32::from(status), &SENSOR_STATUS));
        }
        push_flags(
            &mut reading.flags,
            &[(flags & 0x10 != 0, "context_follows")],
        );
        let measured = match (base_time, offset) {
            (DeviceDateTime::Known(base), Some(minutes)) => base
                .checked_add_signed(TimeDelta::minutes(i64::from(minutes as i16)))
                .map_or(DeviceDateTime::Unknown, DeviceDateTime::Known),
            (time, _) => time,
        };
        stamp(&mut reading, measured, context);
        // The sequence number alone is not an identity: meters restart their numbering after a reset.
        reading.record_key = Some(format!(
            "glucose:{sequence}:{}",
            hex_of(message.get(3..).unwrap_or_default())
        ));
        Ok(vec![reading])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MedicationUnit {
    Kilograms,
    Litres,
}

/// A decoded Glucose Measurement Context (0x2A34).
#[derive(Debug, Clone, PartialEq)]
pub struct GlucoseContext {
    pub sequence_number: u16,
    pub carbohydrate: Option<(u8, MderNumber)>,
    pub meal: Option<u8>,
    pub tester: Option<u8>,
    pub health: Option<u8>,
    pub exercise: Option<(u16, u8)>,
    pub medication: Option<(u8, MderNumber, MedicationUnit)>,
    pub hba1c: Option<MderNumber>,
}

pub fn decode_context(bytes: &[u8]) -> Result<GlucoseContext, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let flags = cursor.u8("flags")?;
    let sequence_number = cursor.u16("sequence number")?;
    if flags & 0x80 != 0 {
        cursor.u8("extended flags")?;
    }
    let carbohydrate = (flags & 0x01 != 0)
        .then(|| {
            Ok::<_, FrameError>((
                cursor.u8("carbohydrate id")?,
                cursor.sfloat("carbohydrate")?,
            ))
        })
        .transpose()?;
    let meal = (flags & 0x02 != 0).then(|| cursor.u8("meal")).transpose()?;
    let tester_health = (flags & 0x04 != 0)
        .then(|| cursor.u8("tester and health"))
        .transpose()?;
    let exercise = (flags & 0x08 != 0)
        .then(|| {
            Ok::<_, FrameError>((
                cursor.u16("exercise duration")?,
                cursor.u8("exercise intensity")?,
            ))
        })
        .transpose()?;
    let unit = if flags & 0x20 != 0 {
        MedicationUnit::Litres
    } else {
        MedicationUnit::Kilograms
    };
    let medication = (flags & 0x10 != 0)
        .then(|| {
            Ok::<_, FrameError>((
                cursor.u8("medication id")?,
                cursor.sfloat("medication")?,
                unit,
            ))
        })
        .transpose()?;
    let hba1c = (flags & 0x40 != 0)
        .then(|| cursor.sfloat("HbA1c"))
        .transpose()?;
    Ok(GlucoseContext {
        sequence_number,
        carbohydrate,
        meal,
        tester: tester_health.map(|byte| byte & 0x0F),
        health: tester_health.map(|byte| byte >> 4),
        exercise,
        medication,
        hba1c,
    })
}

impl GlucoseContext {
    /// The meal, tester and health fields as flag names; "not available" gives none.
    pub fn flags(&self) -> Vec<&'static str> {
        let meal = match self.meal {
            Some(1) => Some("meal_preprandial"),
            Some(2) => Some("meal_postprandial"),
            Some(3) => Some("meal_fasting"),
            Some(4) => Some("meal_casual"),
            Some(5) => Some("meal_bedtime"),
            _ => None,
        };
        let tester = match self.tester {
            Some(1) => Some("tester_self"),
            Some(2) => Some("tester_health_care_professional"),
            Some(3) => Some("tester_lab_test"),
            _ => None,
        };
        let health = match self.health {
            Some(1) => Some("health_minor_issues"),
            Some(2) => Some("health_major_issues"),
            Some(3) => Some("health_during_menses"),
            Some(4) => Some("health_under_stress"),
            Some(5) => Some("health_none"),
            _ => None,
        };
        [meal, tester, health].into_iter().flatten().collect()
    }
}

pub fn racp_report_all() -> Vec<u8> {
    vec![0x01, 0x01]
}

/// Report the records whose sequence number is at least `first`.
pub fn racp_report_from_sequence(first: u16) -> Vec<u8> {
    let [lo, hi] = first.to_le_bytes();
    vec![0x01, 0x03, 0x01, lo, hi]
}

pub fn racp_report_last() -> Vec<u8> {
    vec![0x01, 0x06]
}

pub fn racp_count_all() -> Vec<u8> {
    vec![0x04, 0x01]
}

pub fn racp_abort() -> Vec<u8> {
    vec![0x03, 0x00]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpResponseCode {
    Success,
    OpCodeNotSupported,
    InvalidOperator,
    OperatorNotSupported,
    InvalidOperand,
    NoRecordsFound,
    AbortUnsuccessful,
    ProcedureNotCompleted,
    OperandNotSupported,
    Other(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RacpResponse {
    Completed {
        request_opcode: u8,
        code: RacpResponseCode,
    },
    NumberOfRecords(u32),
}

pub fn decode_racp(bytes: &[u8]) -> Result<RacpResponse, FrameError> {
    let invalid = |reason: &str| FrameError::Invalid {
        reason: reason.to_string(),
        raw: hex_of(bytes),
    };
    let mut cursor = Cursor::new(bytes);
    let opcode = cursor.u8("opcode")?;
    let _operator = cursor.u8("operator")?;
    match opcode {
        0x05 => {
            let count = match cursor.remaining() {
                1 => u32::from(cursor.u8("count")?),
                2 => u32::from(cursor.u16("count")?),
                4 => cursor.u32("count")?,
                _ => return Err(invalid("a record count must be 1, 2 or 4 bytes")),
            };
            Ok(RacpResponse::NumberOfRecords(count))
        }
        0x06 => {
            let request_opcode = cursor.u8("request opcode")?;
            let code = match cursor.u8("response code")? {
                0x01 => RacpResponseCode::Success,
                0x02 => RacpResponseCode::OpCodeNotSupported,
                0x03 => RacpResponseCode::InvalidOperator,
                0x04 => RacpResponseCode::OperatorNotSupported,
                0x05 => RacpResponseCode::InvalidOperand,
                0x06 => RacpResponseCode::NoRecordsFound,
                0x07 => RacpResponseCode::AbortUnsuccessful,
                0x08 => RacpResponseCode::ProcedureNotCompleted,
                0x09 => RacpResponseCode::OperandNotSupported,
                other => RacpResponseCode::Other(other),
            };
            Ok(RacpResponse::Completed {
                request_opcode,
                code,
            })
        }
        other => Err(invalid(&format!("opcode {other:#04x} is not a response"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, decode_messages, received_at, render_error, utc};

    #[track_caller]
    fn check(hex: &str, expected: &str) {
        assert_eq!(
            decode_messages(&mut GlucoseMeasurementDecoder, &[hex]),
            [expected],
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn measurement_vectors() {
        check("1B 01 00 E3 07 02 1B 0B 0A 1E FB FF 1E 00 12 05 01",
            "blood_glucose glucose=3000000[mg/dL] flags=[sample_capillary_plasma,location_finger,low_battery,sample_size_insufficient,sensor_temperature_low,context_follows] at=2019-02-27T11:05:30 device");
        check("03 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11",
            "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device");
        check("06 06 00 E8 07 03 0F 08 00 00 35 C0 11",
            "blood_glucose glucose=5.3[mmol/L] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T08:00:00 device");
        check("1B 00 00 E2 07 04 1A 0B 09 1E 1E 00 12 05 01", "error too short for sensor status annunciation");
    }

    #[rustfmt::skip]
    #[test]
    fn measurement_fields_and_edge_cases() {
        check("00 07 00 E8 07 03 0F 07 1E 00", "blood_glucose glucose=no_measurement flags=[] at=2024-03-15T07:30:00 device");
        check("02 07 00 E8 07 03 0F 07 1E 00 5F B0 1A", "blood_glucose glucose=95[mg/dL] flags=[location_finger,control_solution] at=2024-03-15T07:30:00 device");
        check("02 07 00 E8 07 03 0F 07 1E 00 5F B0 41", "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,control_solution] at=2024-03-15T07:30:00 device");
        check("02 07 00 00 00 00 00 07 1E 00 5F B0 F1", &format!("blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,device_clock_invalid] {HUB}"));
        check("02 07 00 E8 07 03 0F 07 1E 00 FF 07 F1", "blood_glucose glucose=nan flags=[sample_capillary_whole_blood] at=2024-03-15T07:30:00 device");
        check("0A 07 00 E8 07 03 0F 07 1E 00 5F B0 11 60 08", "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger,result_above_range,result_below_range,time_fault] at=2024-03-15T07:30:00 device");
        // Reserved flag bits 5–7 do not shift fields.
        check("E2 07 00 E8 07 03 0F 07 1E 00 5F B0 11", "blood_glucose glucose=95[mg/dL] flags=[sample_capillary_whole_blood,location_finger] at=2024-03-15T07:30:00 device");
        check("01 07 00 E8 07 03 0F 07 1E 00 3C 00", "blood_glucose glucose=no_measurement flags=[] at=2024-03-15T08:30:00 device");
        check("02 07 00 E8 07 03 0F 07 1E 00 5F B0", "error too short for type and sample location");
        check("00 07 00 E8 07 03 0F 07", "error too short for base time");
    }

    #[test]
    fn record_identity() {
        let context = DecodeContext {
            received_at: received_at(),
            time_zone: &utc(),
        };
        let key = |hex: &str| {
            GlucoseMeasurementDecoder
                .decode(&bytes_of(hex), &context)
                .unwrap()[0]
                .record_key
                .clone()
                .unwrap()
        };
        let record = "03 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11";
        assert_eq!(key(record), key(record));
        assert_ne!(
            key(record),
            key("03 05 00 E8 07 03 10 07 1E 00 00 00 5F B0 11")
        );
        assert_eq!(sequence_number(&bytes_of(record)), Some(5));
        assert_eq!(sequence_number(&bytes_of("03 05")), None);
        let readings = GlucoseMeasurementDecoder
            .decode(
                &bytes_of("02 07 00 E8 07 03 0F 07 1E 00 5F B0 1A"),
                &context,
            )
            .unwrap();
        assert!(!readings[0].is_clinical());
    }

    #[test]
    fn context_vectors() {
        let flags = |hex: &str| decode_context(&bytes_of(hex)).unwrap().flags().join(",");
        assert_eq!(
            flags("06 05 00 01 51"),
            "meal_preprandial,tester_self,health_none"
        );
        let context = decode_context(&bytes_of("01 05 00 01 32 D0")).unwrap();
        assert_eq!(context.carbohydrate, Some((1, MderNumber::Number(0.05))));
        assert_eq!(
            decode_context(&bytes_of("40 05 00 41 F0")).unwrap().hba1c,
            Some(MderNumber::Number(6.5))
        );
        let context = decode_context(&bytes_of("18 05 00 3C 00 32 04 0A D0")).unwrap();
        assert_eq!(context.exercise, Some((60, 50)));
        assert_eq!(
            context.medication,
            Some((4, MderNumber::Number(0.01), MedicationUnit::Kilograms))
        );
        assert_eq!(
            decode_context(&bytes_of("86 05 00 00 01 51"))
                .unwrap()
                .flags()
                .join(","),
            "meal_preprandial,tester_self,health_none"
        );
        assert_eq!(
            decode_context(&bytes_of("02 05 00")).map_err(|e| render_error(&e)),
            Err("error too short for meal".to_string())
        );
    }

    #[test]
    fn racp_vectors() {
        use RacpResponseCode::*;
        let check = |hex: &str| decode_racp(&bytes_of(hex)).map_err(|e| render_error(&e));
        let completed = |request_opcode, code| {
            Ok(RacpResponse::Completed {
                request_opcode,
                code,
            })
        };
        assert_eq!(check("06 00 01 01"), completed(1, Success));
        assert_eq!(check("06 00 0C 02"), completed(12, OpCodeNotSupported));
        assert_eq!(check("06 00 01 03"), completed(1, InvalidOperator));
        assert_eq!(check("06 00 02 04"), completed(2, OperatorNotSupported));
        assert_eq!(check("06 00 01 05"), completed(1, InvalidOperand));
        assert_eq!(check("06 00 01 06"), completed(1, NoRecordsFound));
        assert_eq!(check("06 00 03 07"), completed(3, AbortUnsuccessful));
        assert_eq!(check("06 00 02 08"), completed(2, ProcedureNotCompleted));
        assert_eq!(check("06 00 02 09"), completed(2, OperandNotSupported));
        assert_eq!(check("05 00 02 01"), Ok(RacpResponse::NumberOfRecords(258)));
        assert_eq!(check("05 00 01"), Ok(RacpResponse::NumberOfRecords(1)));
        assert_eq!(
            check("05 00 04 03 02 01"),
            Ok(RacpResponse::NumberOfRecords(16_909_060))
        );
        assert_eq!(
            check("05 00 03 02 01"),
            Err("error invalid: a record count must be 1, 2 or 4 bytes".to_string())
        );
        assert_eq!(
            check("06 00 01"),
            Err("error too short for response code".to_string())
        );
    }

    #[test]
    fn racp_requests() {
        assert_eq!(hex::encode(racp_report_all()), "0101");
        assert_eq!(hex::encode(racp_count_all()), "0401");
        assert_eq!(hex::encode(racp_report_from_sequence(5)), "0103010500");
        assert_eq!(hex::encode(racp_report_last()), "0106");
        assert_eq!(hex::encode(racp_abort()), "0300");
    }
}

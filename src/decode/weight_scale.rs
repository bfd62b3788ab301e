//! Weight Scale Service: Weight Measurement 0x2A9D and the Weight Scale Feature 0x2A9E.
//!
//! The weight field has a fixed resolution (0.005 kg or 0.01 lb) whatever the Feature says; the Feature's
//! resolution only states the scale's precision and is never used to rescale.

use super::ieee11073::{bit_names, stamp, Cursor};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Special, Value};

const UNSUCCESSFUL: u16 = 0xFFFF;
const UNKNOWN_USER: u8 = 0xFF;

/// Decodes 0x2A9D indications: one weighing each.
#[derive(Debug, Default)]
pub struct WeightMeasurementDecoder;

/// A mass field in the unit the flags chose: kg in 0.005 steps, or lb in 0.01 steps.
pub(crate) fn mass(
    raw: u16,
    imperial: bool,
    kg: &'static codes::Measure,
    lb: &'static codes::Measure,
) -> Value {
    if imperial {
        Value::number(lb, f64::from(raw) / 100.0)
    } else {
        Value::number(kg, f64::from(raw) / 200.0)
    }
}

/// The weight field; 0 is a scale with nobody on it, not a weighing, so the value is missing.
pub(crate) fn body_weight(raw: u16, imperial: bool) -> Value {
    let weight = mass(
        raw,
        imperial,
        &codes::BODY_WEIGHT_KG,
        &codes::BODY_WEIGHT_LB,
    );
    if raw == 0 {
        Value::special(weight.measure, Special::Missing)
    } else {
        weight
    }
}

/// A height field: metres in 0.001 steps, or inches in 0.1 steps.
pub(crate) fn height(raw: u16, imperial: bool) -> Value {
    if imperial {
        Value::number(&codes::BODY_HEIGHT_IN, f64::from(raw) / 10.0)
    } else {
        Value::number(&codes::BODY_HEIGHT_M, f64::from(raw) / 1000.0)
    }
}

impl MessageDecoder for WeightMeasurementDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let mut cursor = Cursor::new(message);
        let flags = cursor.u8("flags")?;
        let weight = cursor.u16("weight")?;
        let time_stamp = (flags & 0x02 != 0)
            .then(|| cursor.date_time("time stamp"))
            .transpose()?;
        let user_id = (flags & 0x04 != 0)
            .then(|| cursor.u8("user id"))
            .transpose()?;
        let bmi_and_height = (flags & 0x08 != 0)
            .then(|| Ok::<_, FrameError>((cursor.u16("BMI")?, cursor.u16("height")?)))
            .transpose()?;
        let imperial = flags & 0x01 != 0;

        let mut reading = Reading::at_hub_time(Kind::BodyWeight, context.received_at, message);
        reading.values.push(if weight == UNSUCCESSFUL {
            let measure = if imperial {
                &codes::BODY_WEIGHT_LB
            } else {
                &codes::BODY_WEIGHT_KG
            };
            reading.flags.push(Flag::MeasurementFailed);
            Value::special(measure, Special::NoMeasurement)
        } else {
            body_weight(weight, imperial)
        });
        if let Some((bmi, height_raw)) = bmi_and_height {
            reading
                .values
                .push(Value::number(&codes::BMI, f64::from(bmi) / 10.0));
            reading.values.push(height(height_raw, imperial));
        }
        reading.user_id = user_id.filter(|user| *user != UNKNOWN_USER);
        if let Some(time_stamp) = time_stamp {
            stamp(&mut reading, time_stamp, context);
            if crate::model::measurement_time::stamp_names_the_record(&reading) {
                reading.record_key = Some(format!("weight:{}", hex_of(message)));
            }
        }
        Ok(vec![reading])
    }
}

/// The resolutions of the Feature's weight (bits 3–6) and height (bits 7–9) fields, as text for people.
const WEIGHT_RESOLUTIONS: [&str; 8] = [
    "not specified",
    "0.5 kg / 1 lb",
    "0.2 kg / 0.5 lb",
    "0.1 kg / 0.2 lb",
    "0.05 kg / 0.1 lb",
    "0.02 kg / 0.05 lb",
    "0.01 kg / 0.02 lb",
    "0.005 kg / 0.01 lb",
];
const HEIGHT_RESOLUTIONS: [&str; 4] = [
    "not specified",
    "0.01 m / 1 in",
    "0.005 m / 0.5 in",
    "0.001 m / 0.1 in",
];

/// What a scale supports (0x2A9E, and the same resolution fields in 0x2A9B).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScaleFeature {
    pub supported: Vec<&'static str>,
    pub weight_resolution: &'static str,
    pub height_resolution: &'static str,
}

pub(crate) fn resolution(table: &[&'static str], index: u32) -> &'static str {
    table.get(index as usize).copied().unwrap_or("reserved")
}

pub fn decode_feature(bytes: &[u8]) -> Result<ScaleFeature, FrameError> {
    let word = Cursor::new(bytes).u32("weight scale feature")?;
    Ok(ScaleFeature {
        supported: bit_names(
            word,
            &[(0, "time_stamp"), (1, "multiple_users"), (2, "bmi")],
        ),
        weight_resolution: resolution(&WEIGHT_RESOLUTIONS, (word >> 3) & 0x0F),
        height_resolution: resolution(&HEIGHT_RESOLUTIONS, (word >> 7) & 0x07),
    })
}

pub(crate) fn weight_resolution(index: u32) -> &'static str {
    resolution(&WEIGHT_RESOLUTIONS, index)
}

pub(crate) fn height_resolution(index: u32) -> &'static str {
    resolution(&HEIGHT_RESOLUTIONS, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, render_error, utc,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check(hex: &str, expected: &str) {
        assert_eq!(
            decode_messages(&mut WeightMeasurementDecoder, &[hex]),
            [expected],
            "{hex}"
        );
    }

    /// Like `check`, against `clock`, with the time stamp as the device sent it (`sent=`, `-` for none).
    #[track_caller]
    fn check_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(&mut WeightMeasurementDecoder, clock, hex),
            expected,
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn weight_measurement_vectors() {
        check("00 14 37", &format!("body_weight body_weight=70.5[kg] flags=[] {HUB}"));
        check("0E 80 3E E8 07 03 0F 07 1E 00 01 F7 00 08 07",
            "body_weight body_weight=80[kg] bmi=24.7[kg/m2] body_height=1.8[m] flags=[] at=2024-03-15T07:30:00 device user=1");
        check("01 E5 44", &format!("body_weight body_weight=176.37[[lb_av]] flags=[] {HUB}"));
        check("00 FF FF", &format!("body_weight body_weight=no_measurement flags=[measurement_failed] {HUB}"));
        check("00 00 00", &format!("body_weight body_weight=missing flags=[] {HUB}"));
        check("01 00 00", &format!("body_weight body_weight=missing flags=[] {HUB}"));
        check("00 01 00", &format!("body_weight body_weight=0.005[kg] flags=[] {HUB}"));
        check("09 E5 44 F7 00 B4 02", &format!("body_weight body_weight=176.37[[lb_av]] bmi=24.7[kg/m2] body_height=69.2[[in_i]] flags=[] {HUB}"));
        check("04 14 37 FF", &format!("body_weight body_weight=70.5[kg] flags=[] {HUB}"));
        // Bits 4–7 are reserved; they must not shift the fields after them.
        check("F4 14 37 02", &format!("body_weight body_weight=70.5[kg] flags=[] {HUB} user=2"));
        check("02 14 37 00 00 00 00 07 1E 00", &format!("body_weight body_weight=70.5[kg] flags=[device_clock_invalid] {HUB}"));
    }

    #[rustfmt::skip]
    #[test]
    fn device_clock_years_and_impossible_fields() {
        let invalid = format!("body_weight body_weight=70.5[kg] flags=[device_clock_invalid] {HUB}");
        let ahead = format!("body_weight body_weight=70.5[kg] flags=[device_clock_ahead] {HUB}");
        check("02 14 37 00 00 01 01 00 00 00", &invalid);
        check("02 14 37 CF 07 0C 1F 17 3B 3B", &invalid);
        check("02 14 37 D0 07 01 01 00 00 00", &invalid);
        check("02 14 37 D9 07 0C 1F 17 3B 3B", &invalid);
        check("02 14 37 DA 07 01 01 00 00 00", "body_weight body_weight=70.5[kg] flags=[] at=2010-01-01T00:00:00 device");
        check("02 14 37 33 08 0C 1F 00 00 00", &ahead);
        check("02 14 37 34 08 01 01 00 00 00", &invalid);
        check("02 14 37 FF FF 01 01 00 00 00", &invalid);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check("02 14 37 E8 07 00 0F 07 1E 00", &invalid);
        check("02 14 37 E8 07 0D 0F 07 1E 00", &invalid);
        check("02 14 37 E8 07 03 00 07 1E 00", &invalid);
        check("02 14 37 E8 07 03 20 07 1E 00", &invalid);
        check("02 14 37 E8 07 02 1E 07 1E 00", &invalid);
        check("02 14 37 E8 07 03 0F 18 00 00", &invalid);
        check("02 14 37 E8 07 03 0F 07 3C 00", &invalid);
        check("02 14 37 E8 07 03 0F 07 1E 3C", &invalid);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_scale_ahead_and_the_time_sent_is_kept() {
        check_clock(HubClock::Trusted, "02 14 37 E8 07 03 12 07 1E 00", &format!("body_weight body_weight=70.5[kg] flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(HubClock::Unsynchronized, "02 14 37 E8 07 03 12 07 1E 00", "body_weight body_weight=70.5[kg] flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(HubClock::Unsynchronized, "02 14 37 CF 07 0C 1F 17 3B 3B", &format!("body_weight body_weight=70.5[kg] flags=[device_clock_invalid] {HUB} sent=1999-12-31 23:59:59"));
        check_clock(HubClock::Synchronized, "02 14 37 DA 07 01 01 00 00 00", "body_weight body_weight=70.5[kg] flags=[] at=2010-01-01T00:00:00 device sent=2010-01-01 00:00:00");
    }

    #[rustfmt::skip]
    #[test]
    fn weight_measurement_short_messages_are_errors() {
        check("00 14", "error too short for weight");
        check("02 14 37 E8 07 03 0F 07 1E", "error too short for time stamp");
        check("04 14 37", "error too short for user id");
        check("08 14 37 F7 00", "error too short for height");
        check("0E 80 3E E8 07 03 0F 07 1E 00 01 F7 00 08", "error too short for height");
    }

    #[test]
    fn a_stored_weighing_has_a_record_key() {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let key = |hex: &str| {
            WeightMeasurementDecoder
                .decode(&bytes_of(hex), &context)
                .unwrap()[0]
                .record_key
                .clone()
        };
        let stored = "0E 80 3E E8 07 03 0F 07 1E 00 01 F7 00 08 07";
        assert_eq!(key(stored), key(stored));
        assert!(key(stored).is_some());
        assert_eq!(key("00 14 37"), None);
    }

    #[test]
    fn feature_vector() {
        let render = |hex: &str| match decode_feature(&bytes_of(hex)) {
            Ok(f) => format!(
                "{} | {} | {}",
                f.supported.join(","),
                f.weight_resolution,
                f.height_resolution
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(
            render("A7 01 00 00"),
            "time_stamp,multiple_users,bmi | 0.05 kg / 0.1 lb | 0.001 m / 0.1 in"
        );
        assert_eq!(render("78 02 00 00"), " | reserved | reserved");
        assert_eq!(
            render("A7 01 00"),
            "error too short for weight scale feature"
        );
    }
}

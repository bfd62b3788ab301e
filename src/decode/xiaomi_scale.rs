//! Xiaomi Mi Smart Scale (service data 0x181D, 10 bytes) and Mi Body Composition Scale (0x181B, 13 bytes)
//! advertisements; not the SIG characteristic layouts despite the UUIDs.
//!
//! Only a stabilised weighing that is still on the scale is a measurement. The scale repeats the same
//! advertisement many times: a decoder reports a weighing once, and its record key (weight, impedance and
//! the scale's time stamp) keeps a restart of the hub from queueing it again.

use super::ieee11073::{date_time, push_flags, stamp};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::codes;
use crate::reading::{Kind, Reading, Value};

#[derive(Debug, Default)]
pub struct XiaomiScaleDecoder {
    last_key: Option<String>,
}

#[derive(Debug, Default)]
pub struct XiaomiBodyCompositionScaleDecoder {
    last_key: Option<String>,
}

/// A weight in the unit the control bits name; jin (catty, 0.5 kg) is converted to kg exactly.
fn weight(raw: u16, pounds: bool, jin: bool) -> (Value, bool) {
    if pounds {
        (
            Value::number(&codes::BODY_WEIGHT_LB, f64::from(raw) / 100.0),
            false,
        )
    } else {
        (
            Value::number(&codes::BODY_WEIGHT_KG, f64::from(raw) / 200.0),
            jin,
        )
    }
}

fn wrong_length(message: &[u8], expected: usize) -> FrameError {
    FrameError::Invalid {
        reason: format!(
            "expected {expected} bytes of service data, got {}",
            message.len()
        ),
        raw: hex_of(message),
    }
}

/// Returns the reading unless it repeats the last one reported.
fn once(last_key: &mut Option<String>, reading: Reading) -> Vec<Reading> {
    if reading.record_key == *last_key {
        return Vec::new();
    }
    last_key.clone_from(&reading.record_key);
    vec![reading]
}

impl MessageDecoder for XiaomiScaleDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let Ok(&[control, w0, w1, ref time @ ..]) = <&[u8; 10]>::try_from(message) else {
            return Err(wrong_length(message, 10));
        };
        let raw = u16::from_le_bytes([w0, w1]);
        let stabilised = control & 0x20 != 0;
        let removed = control & 0x80 != 0;
        if !stabilised || removed || raw == 0 {
            return Ok(Vec::new());
        }
        let (value, from_jin) = weight(raw, control & 0x01 != 0, control & 0x10 != 0);
        let mut reading = Reading::at_hub_time(Kind::BodyWeight, context.received_at, message);
        reading.values.push(value);
        push_flags(
            &mut reading.flags,
            &[
                (from_jin, "converted_from_jin"),
                (control & 0x40 != 0, "object_mode"),
            ],
        );
        stamp(&mut reading, date_time(time), context);
        reading.record_key = Some(format!("xiaomi-scale:{}", hex_of(&message[1..])));
        Ok(once(&mut self.last_key, reading))
    }
}

impl MessageDecoder for XiaomiBodyCompositionScaleDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let Ok(&[control0, control1, ref time @ .., i0, i1, w0, w1]) =
            <&[u8; 13]>::try_from(message)
        else {
            return Err(wrong_length(message, 13));
        };
        let raw = u16::from_le_bytes([w0, w1]);
        let stabilised = control1 & 0x20 != 0;
        let removed = control1 & 0x80 != 0;
        if !stabilised || removed || raw == 0 {
            return Ok(Vec::new());
        }
        let has_impedance = control1 & 0x02 != 0;
        let (value, from_jin) = weight(raw, control0 & 0x01 != 0, control1 & 0x40 != 0);
        let mut reading = Reading::at_hub_time(Kind::BodyComposition, context.received_at, message);
        reading.values.push(value);
        if has_impedance {
            reading.values.push(Value::number(
                &codes::IMPEDANCE,
                f64::from(u16::from_le_bytes([i0, i1])),
            ));
        }
        push_flags(
            &mut reading.flags,
            &[
                (from_jin, "converted_from_jin"),
                (control0 & 0x04 != 0, "object_mode"),
            ],
        );
        stamp(&mut reading, date_time(time), context);
        let impedance: &[u8] = if has_impedance { &[i0, i1] } else { &[] };
        reading.record_key = Some(format!(
            "xiaomi-body-composition-scale:{}{}{}",
            hex_of(&[w0, w1]),
            hex_of(impedance),
            hex_of(time)
        ));
        Ok(once(&mut self.last_key, reading))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_messages;

    #[track_caller]
    fn check_v1(messages: &[&str], expected: &[&str]) {
        assert_eq!(
            decode_messages(&mut XiaomiScaleDecoder::default(), messages),
            expected,
            "{messages:?}"
        );
    }

    #[track_caller]
    fn check_v2(messages: &[&str], expected: &[&str]) {
        assert_eq!(
            decode_messages(&mut XiaomiBodyCompositionScaleDecoder::default(), messages),
            expected,
            "{messages:?}"
        );
    }

    const T1: &str = "at=2021-04-11T16:19:01 device";
    const T2: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale() {
        check_v1(&["22 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[] {T1}")]);
        check_v1(&["02 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["A2 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["22 00 00 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["23 CE 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=173.58[[lb_av]] flags=[] {T1}")]);
        check_v1(&["32 CE 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.79[kg] flags=[converted_from_jin] {T1}")]);
        check_v1(&["62 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[object_mode] {T1}")]);
        check_v1(&["22 9E 43 B2 07 01 01 00 00 05"], &["body_weight body_weight=86.55[kg] flags=[device_clock_invalid] at=2024-03-15T12:00:00 hub"]);
        // The advertisement repeats: one reading per weighing; a new weighing is reported.
        check_v1(&["22 9E 43 E5 07 04 0B 10 13 01", "22 9E 43 E5 07 04 0B 10 13 01", "22 A0 43 E5 07 04 0B 10 14 01"],
            &[&format!("body_weight body_weight=86.55[kg] flags=[] {T1}"), "body_weight body_weight=86.56[kg] flags=[] at=2021-04-11T16:20:01 device"]);
        check_v1(&["22 9E 43 E5 07 04 0B 10 13"], &["error invalid: expected 10 bytes of service data, got 9"]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale() {
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[device_clock_invalid] {T2}")]);
        check_v2(&["02 06 B2 07 05 04 0F 02 01 AC 01 86 42"], &[]);
        check_v2(&["02 A6 B2 07 05 04 0F 02 01 AC 01 86 42"], &[]);
        check_v2(&["02 24 B2 07 05 04 0F 02 01 00 00 86 42"], &[&format!("body_composition body_weight=85.15[kg] flags=[device_clock_invalid] {T2}")]);
        check_v2(&["03 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=170.3[[lb_av]] impedance=428[Ohm] flags=[device_clock_invalid] {T2}")]);
        check_v2(&["02 66 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[converted_from_jin,device_clock_invalid] {T2}")]);
        check_v2(&["06 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[object_mode,device_clock_invalid] {T2}")]);
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86 42", "02 26 B2 07 05 04 0F 02 01 AC 01 86 42"],
            &[&format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[device_clock_invalid] {T2}")]);
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86"], &["error invalid: expected 13 bytes of service data, got 12"]);
    }
}

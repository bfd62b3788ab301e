//! Xiaomi Mi Smart Scale (service data 0x181D, 10 bytes) and Mi Body Composition Scale (0x181B, 13 bytes)
//! advertisements; not the SIG characteristic layouts despite the UUIDs.
//!
//! Only a stabilised weighing that is still on the scale is a measurement. The scale repeats the same
//! advertisement many times: a decoder reports a weighing once, and its record key (weight, impedance and
//! the scale's time stamp) keeps a restart of the hub from queueing it again.

use super::ieee11073::{date_time, push_flags, stamp};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Value};

const SMART_SCALE_LEN: usize = 10;
const BODY_COMPOSITION_LEN: usize = 13;

// Mi Smart Scale control byte.
const V1_POUNDS: u8 = 0x01;
const V1_JIN: u8 = 0x10;
const V1_STABILISED: u8 = 0x20;
const V1_OBJECT: u8 = 0x40;
const V1_REMOVED: u8 = 0x80;

// Mi Body Composition Scale control bytes 0 and 1.
const V2_POUNDS: u8 = 0x01;
const V2_OBJECT: u8 = 0x04;
const V2_IMPEDANCE: u8 = 0x02;
const V2_STABILISED: u8 = 0x20;
const V2_JIN: u8 = 0x40;
const V2_REMOVED: u8 = 0x80;

/// Mi Smart Scale (XMTZC01HM / XMTZC04HM): decodes the 10-byte service data under UUID 0x181D into one
/// `body_weight` reading per weighing.
#[derive(Debug, Default)]
pub struct XiaomiScaleDecoder {
    last_key: Option<String>,
}

/// Mi Body Composition Scale (XMTZC02HM / XMTZC05HM / NUN4049CN): decodes the 13-byte service data under
/// UUID 0x181B into one `body_composition` reading (weight, and impedance once the scale has it) per weighing.
#[derive(Debug, Default)]
pub struct XiaomiBodyCompositionScaleDecoder {
    last_key: Option<String>,
}

/// The control bits both scales send, wherever each layout keeps them.
struct Weighing {
    raw: u16,
    pounds: bool,
    jin: bool,
    stabilised: bool,
    removed: bool,
    object: bool,
}

impl Weighing {
    /// The reading for a finished weighing, or `None` while the scale is settling or after the person left.
    fn reading(&self, kind: Kind, message: &[u8], context: &DecodeContext<'_>) -> Option<Reading> {
        if !self.stabilised || self.removed || self.raw == 0 {
            return None;
        }
        let mut reading = Reading::at_hub_time(kind, context.received_at, message);
        let raw = f64::from(self.raw);
        // One jin is exactly half a kilogram, so a jin weight in hundredths is the kilogram weight in 1/200 kg.
        let (value, from_jin) = if self.pounds {
            (Value::number(&codes::BODY_WEIGHT_LB, raw / 100.0), false)
        } else {
            (Value::number(&codes::BODY_WEIGHT_KG, raw / 200.0), self.jin)
        };
        reading.values.push(value);
        push_flags(
            &mut reading.flags,
            &[
                (from_jin, Flag::ConvertedFromJin),
                (self.object, Flag::ObjectMode),
            ],
        );
        Some(reading)
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
        let Ok(&[control, w0, w1, ref time @ ..]) = <&[u8; SMART_SCALE_LEN]>::try_from(message)
        else {
            return Err(wrong_length(message, SMART_SCALE_LEN));
        };
        let weighing = Weighing {
            raw: u16::from_le_bytes([w0, w1]),
            pounds: control & V1_POUNDS != 0,
            jin: control & V1_JIN != 0,
            stabilised: control & V1_STABILISED != 0,
            removed: control & V1_REMOVED != 0,
            object: control & V1_OBJECT != 0,
        };
        let Some(mut reading) = weighing.reading(Kind::BodyWeight, message, context) else {
            return Ok(Vec::new());
        };
        stamp(&mut reading, date_time(time), context);
        reading.record_key = Some(format!(
            "xiaomi-scale:{}{}",
            hex_of(&[w0, w1]),
            hex_of(time)
        ));
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
            <&[u8; BODY_COMPOSITION_LEN]>::try_from(message)
        else {
            return Err(wrong_length(message, BODY_COMPOSITION_LEN));
        };
        let weighing = Weighing {
            raw: u16::from_le_bytes([w0, w1]),
            pounds: control0 & V2_POUNDS != 0,
            jin: control1 & V2_JIN != 0,
            stabilised: control1 & V2_STABILISED != 0,
            removed: control1 & V2_REMOVED != 0,
            object: control0 & V2_OBJECT != 0,
        };
        let Some(mut reading) = weighing.reading(Kind::BodyComposition, message, context) else {
            return Ok(Vec::new());
        };
        let impedance: &[u8] = if control1 & V2_IMPEDANCE != 0 {
            reading.values.push(Value::number(
                &codes::IMPEDANCE,
                f64::from(u16::from_le_bytes([i0, i1])),
            ));
            &[i0, i1]
        } else {
            &[]
        };
        stamp(&mut reading, date_time(time), context);
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
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, utc,
    };
    use crate::model::measurement_time::HubClock;

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

    /// Decodes one weighing against `clock`; renders it with the time stamp as the scale sent it (`sent=`,
    /// `-` for none).
    #[track_caller]
    fn check_clock(decoder: &mut dyn MessageDecoder, clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(decode_against_clock(decoder, clock, hex), expected, "{hex}");
    }

    fn record_key(decoder: &mut dyn MessageDecoder, hex: &str) -> Option<String> {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let readings = decoder.decode(&bytes_of(hex), &context).unwrap();
        readings
            .first()
            .and_then(|reading| reading.record_key.clone())
    }

    /// The scale's clock in the reference vector, which it advertises as 2021-04-11 16:19:01.
    const V1_TIME: &str = "at=2021-04-11T16:19:01 device";
    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_weighings() {
        check_v1(&["22 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[] {V1_TIME}")]);
        check_v1(&["23 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=173.1[[lb_av]] flags=[] {V1_TIME}")]);
        check_v1(&["32 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[converted_from_jin] {V1_TIME}")]);
        check_v1(&["33 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=173.1[[lb_av]] flags=[] {V1_TIME}")]);
        check_v1(&["62 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[object_mode] {V1_TIME}")]);
        check_v1(&["72 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[converted_from_jin,object_mode] {V1_TIME}")]);
        check_v1(&["20 9E 43 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[] {V1_TIME}")]);
        check_v1(&["22 01 00 E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=0.005[kg] flags=[] {V1_TIME}")]);
        check_v1(&["22 FF FF E5 07 04 0B 10 13 01"], &[&format!("body_weight body_weight=327.675[kg] flags=[] {V1_TIME}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_reports_only_a_finished_weighing() {
        check_v1(&["02 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["A2 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["82 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["E2 9E 43 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["22 00 00 E5 07 04 0B 10 13 01"], &[]);
        check_v1(&["03 9E 43 E5 07 04 0B 10 13 01"], &[]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_clock() {
        check_v1(&["22 9E 43 B2 07 01 01 00 00 05"], &[&format!("body_weight body_weight=86.55[kg] flags=[device_clock_invalid] {HUB}")]);
        check_v1(&["22 9E 43 00 00 00 00 00 00 00"], &[&format!("body_weight body_weight=86.55[kg] flags=[device_clock_invalid] {HUB}")]);
        check_v1(&["22 9E 43 E5 07 02 1E 10 13 01"], &[&format!("body_weight body_weight=86.55[kg] flags=[device_clock_invalid] {HUB}")]);
        check_v1(&["22 9E 43 E9 07 01 01 00 00 00"], &[&format!("body_weight body_weight=86.55[kg] flags=[device_clock_ahead] {HUB}")]);
        check_v1(&["62 9E 43 B2 07 01 01 00 00 05"], &[&format!("body_weight body_weight=86.55[kg] flags=[object_mode,device_clock_invalid] {HUB}")]);
        check_v1(&["22 9E 43 E8 07 03 0F 07 1E 00"], &["body_weight body_weight=86.55[kg] flags=[] at=2024-03-15T07:30:00 device"]);
        // Years 0, 1999, 2000 and 2009, the first plausible year, 2099 (ahead of the hub), 2100 and 65535.
        let invalid = format!("body_weight body_weight=86.55[kg] flags=[device_clock_invalid] {HUB}");
        check_v1(&["22 9E 43 00 00 01 01 00 00 00"], &[&invalid]);
        check_v1(&["22 9E 43 CF 07 0C 1F 17 3B 3B"], &[&invalid]);
        check_v1(&["22 9E 43 D0 07 01 01 00 00 00"], &[&invalid]);
        check_v1(&["22 9E 43 D9 07 0C 1F 17 3B 3B"], &[&invalid]);
        check_v1(&["22 9E 43 DA 07 01 01 00 00 00"], &["body_weight body_weight=86.55[kg] flags=[] at=2010-01-01T00:00:00 device"]);
        check_v1(&["22 9E 43 33 08 0C 1F 00 00 00"], &[&format!("body_weight body_weight=86.55[kg] flags=[device_clock_ahead] {HUB}")]);
        check_v1(&["22 9E 43 34 08 01 01 00 00 00"], &[&invalid]);
        check_v1(&["22 9E 43 FF FF 01 01 00 00 00"], &[&invalid]);
        // Month 0 and 13, day 0 and 32, hour 24, minute 60, second 60 (30 February is above).
        check_v1(&["22 9E 43 E8 07 00 0F 07 1E 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 0D 0F 07 1E 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 03 00 07 1E 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 03 20 07 1E 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 03 0F 18 00 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 03 0F 07 3C 00"], &[&invalid]);
        check_v1(&["22 9E 43 E8 07 03 0F 07 1E 3C"], &[&invalid]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_only_a_trusted_hub_clock_finds_it_ahead_and_the_time_sent_is_kept() {
        let v1 = XiaomiScaleDecoder::default;
        check_clock(&mut v1(), HubClock::Trusted, "22 9E 43 E8 07 03 12 07 1E 00", &format!("body_weight body_weight=86.55[kg] flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(&mut v1(), HubClock::Unsynchronized, "22 9E 43 E8 07 03 12 07 1E 00", "body_weight body_weight=86.55[kg] flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(&mut v1(), HubClock::Unsynchronized, "22 9E 43 B2 07 01 01 00 00 05", &format!("body_weight body_weight=86.55[kg] flags=[device_clock_invalid] {HUB} sent=1970-01-01 00:00:05"));
        check_clock(&mut v1(), HubClock::Synchronized, "22 9E 43 E5 07 04 0B 10 13 01", &format!("body_weight body_weight=86.55[kg] flags=[] {V1_TIME} sent=2021-04-11 16:19:01"));
    }

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_reports_a_weighing_once() {
        let reference = "22 9E 43 E5 07 04 0B 10 13 01";
        let first = format!("body_weight body_weight=86.55[kg] flags=[] {V1_TIME}");
        check_v1(&[reference, reference, reference], &[&first]);
        // Settling, the finished weighing, its repeats and the person stepping off are one weighing.
        check_v1(&["02 90 43 E5 07 04 0B 10 13 01", reference, reference, "A2 9E 43 E5 07 04 0B 10 13 01", reference], &[&first]);
        check_v1(&[reference, "22 A0 43 E5 07 04 0B 10 14 01"], &[&first, "body_weight body_weight=86.56[kg] flags=[] at=2021-04-11T16:20:01 device"]);
        check_v1(&[reference, "22 9E 43 E5 07 04 0B 10 14 01"], &[&first, "body_weight body_weight=86.55[kg] flags=[] at=2021-04-11T16:20:01 device"]);
        check_v1(&[reference, "22 A0 43 E5 07 04 0B 10 14 01", reference], &[&first, "body_weight body_weight=86.56[kg] flags=[] at=2021-04-11T16:20:01 device", &first]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_smart_scale_wrong_lengths_are_errors() {
        check_v1(&[""], &["error invalid: expected 10 bytes of service data, got 0"]);
        check_v1(&["22 9E 43 E5 07 04 0B 10 13"], &["error invalid: expected 10 bytes of service data, got 9"]);
        check_v1(&["22 9E 43 E5 07 04 0B 10 13 01 00"], &["error invalid: expected 10 bytes of service data, got 11"]);
        check_v1(&["02 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &["error invalid: expected 10 bytes of service data, got 13"]);
    }

    #[test]
    fn mi_smart_scale_record_key_is_weight_and_time() {
        let mut decoder = XiaomiScaleDecoder::default();
        assert_eq!(
            record_key(&mut decoder, "22 9E 43 E5 07 04 0B 10 13 01").as_deref(),
            Some("xiaomi-scale:9e43e507040b101301")
        );
        assert_eq!(
            record_key(
                &mut XiaomiScaleDecoder::default(),
                "62 9E 43 E5 07 04 0B 10 13 01"
            )
            .as_deref(),
            Some("xiaomi-scale:9e43e507040b101301")
        );
    }

    /// The reference vector's scale clock reads 1970, a clock never set, so the hub time stands in.
    const V2_HUB: &str = "flags=[device_clock_invalid] at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_weighings() {
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] {V2_HUB}")]);
        check_v2(&["02 24 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=85.15[kg] {V2_HUB}")]);
        check_v2(&["02 24 B2 07 05 04 0F 02 01 00 00 86 42"], &[&format!("body_composition body_weight=85.15[kg] {V2_HUB}")]);
        check_v2(&["03 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=170.3[[lb_av]] impedance=428[Ohm] {V2_HUB}")]);
        check_v2(&["02 66 B2 07 05 04 0F 02 01 AC 01 86 42"], &["body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[converted_from_jin,device_clock_invalid] at=2024-03-15T12:00:00 hub"]);
        check_v2(&["03 66 B2 07 05 04 0F 02 01 AC 01 86 42"], &[&format!("body_composition body_weight=170.3[[lb_av]] impedance=428[Ohm] {V2_HUB}")]);
        check_v2(&["06 26 B2 07 05 04 0F 02 01 AC 01 86 42"], &["body_composition body_weight=85.15[kg] impedance=428[Ohm] flags=[object_mode,device_clock_invalid] at=2024-03-15T12:00:00 hub"]);
        check_v2(&["06 24 B2 07 05 04 0F 02 01 00 00 86 42"], &["body_composition body_weight=85.15[kg] flags=[object_mode,device_clock_invalid] at=2024-03-15T12:00:00 hub"]);
        check_v2(&["02 26 E8 07 03 0F 07 1E 00 F4 01 86 42"], &["body_composition body_weight=85.15[kg] impedance=500[Ohm] flags=[] at=2024-03-15T07:30:00 device"]);
        check_v2(&["02 26 E9 07 01 01 00 00 00 F4 01 86 42"], &["body_composition body_weight=85.15[kg] impedance=500[Ohm] flags=[device_clock_ahead] at=2024-03-15T12:00:00 hub"]);
        check_v2(&["02 26 00 00 00 00 00 00 00 F4 01 86 42"], &["body_composition body_weight=85.15[kg] impedance=500[Ohm] flags=[device_clock_invalid] at=2024-03-15T12:00:00 hub"]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_clock() {
        // Years 0, 1999, 2000 and 2009, the first plausible year, 2099 (ahead of the hub), 2100 and 65535.
        let invalid = format!("body_composition body_weight=85.15[kg] flags=[device_clock_invalid] {HUB}");
        check_v2(&["02 24 00 00 01 01 00 00 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 CF 07 0C 1F 17 3B 3B 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 D0 07 01 01 00 00 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 D9 07 0C 1F 17 3B 3B 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 DA 07 01 01 00 00 00 00 00 86 42"], &["body_composition body_weight=85.15[kg] flags=[] at=2010-01-01T00:00:00 device"]);
        check_v2(&["02 24 33 08 0C 1F 00 00 00 00 00 86 42"], &[&format!("body_composition body_weight=85.15[kg] flags=[device_clock_ahead] {HUB}")]);
        check_v2(&["02 24 34 08 01 01 00 00 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 FF FF 01 01 00 00 00 00 00 86 42"], &[&invalid]);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check_v2(&["02 24 E8 07 00 0F 07 1E 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 0D 0F 07 1E 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 03 00 07 1E 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 03 20 07 1E 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 02 1E 07 1E 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 03 0F 18 00 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 03 0F 07 3C 00 00 00 86 42"], &[&invalid]);
        check_v2(&["02 24 E8 07 03 0F 07 1E 3C 00 00 86 42"], &[&invalid]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_only_a_trusted_hub_clock_finds_it_ahead_and_the_time_sent_is_kept() {
        let v2 = XiaomiBodyCompositionScaleDecoder::default;
        check_clock(&mut v2(), HubClock::Trusted, "02 24 E8 07 03 12 07 1E 00 00 00 86 42", &format!("body_composition body_weight=85.15[kg] flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(&mut v2(), HubClock::Unsynchronized, "02 24 E8 07 03 12 07 1E 00 00 00 86 42", "body_composition body_weight=85.15[kg] flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(&mut v2(), HubClock::Unsynchronized, "02 26 B2 07 05 04 0F 02 01 AC 01 86 42", &format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] {V2_HUB} sent=1970-05-04 15:02:01"));
        check_clock(&mut v2(), HubClock::Trusted, "02 26 E8 07 03 0F 07 1E 00 F4 01 86 42", "body_composition body_weight=85.15[kg] impedance=500[Ohm] flags=[] at=2024-03-15T07:30:00 device sent=2024-03-15 07:30:00");
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_reports_only_a_finished_weighing() {
        check_v2(&["02 06 B2 07 05 04 0F 02 01 AC 01 86 42"], &[]);
        check_v2(&["02 04 B2 07 05 04 0F 02 01 00 00 86 42"], &[]);
        check_v2(&["02 A6 B2 07 05 04 0F 02 01 AC 01 86 42"], &[]);
        check_v2(&["02 A4 B2 07 05 04 0F 02 01 00 00 86 42"], &[]);
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 00 00"], &[]);
        check_v2(&["22 06 B2 07 05 04 0F 02 01 AC 01 86 42"], &[]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_reports_a_weighing_once() {
        let reference = "02 26 B2 07 05 04 0F 02 01 AC 01 86 42";
        let first = format!("body_composition body_weight=85.15[kg] impedance=428[Ohm] {V2_HUB}");
        check_v2(&[reference, reference, "02 A6 B2 07 05 04 0F 02 01 AC 01 86 42", reference], &[&first]);
        // The weight settles before the impedance; the weighing with impedance is a new reading.
        check_v2(&["02 24 B2 07 05 04 0F 02 01 00 00 86 42", "02 24 B2 07 05 04 0F 02 01 00 00 86 42", reference, reference],
            &[&format!("body_composition body_weight=85.15[kg] {V2_HUB}"), &first]);
        check_v2(&[reference, "02 26 B2 07 05 04 0F 03 01 AC 01 86 42"], &[&first, &first]);
        check_v2(&[reference, "02 26 B2 07 05 04 0F 02 01 AD 01 86 42"], &[&first, &format!("body_composition body_weight=85.15[kg] impedance=429[Ohm] {V2_HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn mi_body_composition_scale_wrong_lengths_are_errors() {
        check_v2(&[""], &["error invalid: expected 13 bytes of service data, got 0"]);
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86"], &["error invalid: expected 13 bytes of service data, got 12"]);
        check_v2(&["02 26 B2 07 05 04 0F 02 01 AC 01 86 42 00"], &["error invalid: expected 13 bytes of service data, got 14"]);
        check_v2(&["22 9E 43 E5 07 04 0B 10 13 01"], &["error invalid: expected 13 bytes of service data, got 10"]);
    }

    #[test]
    fn mi_body_composition_scale_record_key_has_impedance_only_when_valid() {
        assert_eq!(
            record_key(
                &mut XiaomiBodyCompositionScaleDecoder::default(),
                "02 26 B2 07 05 04 0F 02 01 AC 01 86 42"
            )
            .as_deref(),
            Some("xiaomi-body-composition-scale:8642ac01b20705040f0201")
        );
        assert_eq!(
            record_key(
                &mut XiaomiBodyCompositionScaleDecoder::default(),
                "02 24 B2 07 05 04 0F 02 01 AC 01 86 42"
            )
            .as_deref(),
            Some("xiaomi-body-composition-scale:8642b20705040f0201")
        );
    }

    #[test]
    fn arbitrary_service_data_never_panics() {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut v1 = XiaomiScaleDecoder::default();
        let mut v2 = XiaomiBodyCompositionScaleDecoder::default();
        for length in 0..2000 {
            let message: Vec<u8> = (0..length % 16)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed.to_le_bytes()[0]
                })
                .collect();
            let _ = v1.decode(&message, &context);
            let _ = v2.decode(&message, &context);
        }
    }
}

//! Jumper JPD-500F / PLS-01BT oximeter notifications: the 4-byte numeric frame `81 PR SpO2 PI`; waveform
//! and idle frames share the characteristic and are ignored.

use super::{DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Kind, Reading, Value};

const NUMERIC_FRAME: u8 = 0x81;
const PULSE_INVALID: u8 = 255;
const SPO2_INVALID: u8 = 127;
const PERFUSION_INVALID: u8 = 0;

/// Decodes the numeric frames of a Jumper oximeter's notify characteristic into readings at hub time;
/// every other notification decodes to nothing.
#[derive(Debug, Default)]
pub struct JumperOximeterDecoder;

impl MessageDecoder for JumperOximeterDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let &[NUMERIC_FRAME, pulse, spo2, perfusion] = message else {
            return Ok(Vec::new());
        };
        let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, message);
        reading.values = vec![
            Value::reported(
                &codes::SPO2,
                f64::from(spo2),
                spo2 == 0 || spo2 == SPO2_INVALID,
            ),
            Value::reported(
                &codes::PULSE_RATE_OXIMETER,
                f64::from(pulse),
                pulse == 0 || pulse == PULSE_INVALID,
            ),
            Value::reported(
                &codes::PERFUSION_INDEX,
                f64::from(perfusion) / 10.0,
                perfusion == PERFUSION_INVALID,
            ),
        ];
        Ok(vec![reading])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, decode_messages, received_at, utc};

    #[track_caller]
    fn check(hex: &str, expected: &[&str]) {
        assert_eq!(
            decode_messages(&mut JumperOximeterDecoder, &[hex]),
            expected,
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn numeric_frames() {
        check("81 38 63 44", &[&format!("pulse_oximetry spo2=99 pulse_rate=56 perfusion_index=6.8 flags=[] {HUB}")]);
        check("81 48 62 0A", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 perfusion_index=1 flags=[] {HUB}")]);
        check("81 FE 64 FF", &[&format!("pulse_oximetry spo2=100 pulse_rate=254 perfusion_index=25.5 flags=[] {HUB}")]);
        check("81 01 01 01", &[&format!("pulse_oximetry spo2=1 pulse_rate=1 perfusion_index=0.1 flags=[] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn invalid_values_are_missing() {
        check("81 FF 63 44", &[&format!("pulse_oximetry spo2=99 pulse_rate=missing perfusion_index=6.8 flags=[] {HUB}")]);
        check("81 38 7F 44", &[&format!("pulse_oximetry spo2=missing pulse_rate=56 perfusion_index=6.8 flags=[] {HUB}")]);
        check("81 38 63 00", &[&format!("pulse_oximetry spo2=99 pulse_rate=56 perfusion_index=missing flags=[] {HUB}")]);
        check("81 FF 7F 00", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing perfusion_index=missing flags=[] {HUB}")]);
        check("81 00 63 44", &[&format!("pulse_oximetry spo2=99 pulse_rate=missing perfusion_index=6.8 flags=[] {HUB}")]);
        check("81 38 00 44", &[&format!("pulse_oximetry spo2=missing pulse_rate=56 perfusion_index=6.8 flags=[] {HUB}")]);
        check("81 00 00 00", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing perfusion_index=missing flags=[] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn other_frames_are_ignored() {
        check("", &[]);
        check("2D", &[]);
        check("2D 2D 2D 2D", &[]);
        check("80 10 20 30", &[]);
        check("80 10 20 30 40", &[]);
        check("81", &[]);
        check("81 38 63", &[]);
        check("81 38 63 44 00", &[]);
        check("81 38 63 44 81 38 63 44", &[]);
    }

    #[test]
    fn a_reading_keeps_its_frame_and_has_no_record_key() {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let readings = JumperOximeterDecoder
            .decode(&bytes_of("81 38 63 44"), &context)
            .unwrap();
        assert_eq!(readings[0].raw, bytes_of("81 38 63 44"));
        assert_eq!(readings[0].record_key, None);
    }
}

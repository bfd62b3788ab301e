//! Masimo Rad-8 / Radical-7 ASCII serial output (ASCII 1 and ASCII 2 lines, one a second), parsed by
//! `KEY=value` tokens rather than positions, because the field set differs by model and mode.
//!
//! `---`, `--`, `--.-` and an all-zero value mean "no reading". The device clock is unreliable, so the
//! hub's receive time is used. Exception bits (`EXC`) become flags.

use super::line::LineDecoder;
use super::{DecodeContext, DecodeEvent, FrameError};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Special, Value};

/// EXC bits from the Rad-8 manual.
const EXCEPTIONS: [(u32, Flag); 10] = [
    (0x001, Flag::NoSensor),
    (0x002, Flag::DefectiveSensor),
    (0x004, Flag::LowPerfusion),
    (0x008, Flag::PulseSearching),
    (0x010, Flag::Interference),
    (0x020, Flag::SensorOff),
    (0x040, Flag::AmbientLight),
    (0x080, Flag::UnrecognisedSensor),
    (0x400, Flag::LowSignalIq),
    (0x800, Flag::SetMode),
];

/// A decoder for Masimo ASCII lines.
pub fn decoder() -> LineDecoder {
    LineDecoder::new(parse)
}

fn parse(line: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
    match parse_line(line, context) {
        Ok(Some(reading)) => vec![DecodeEvent::Reading(reading)],
        Ok(None) => Vec::new(),
        Err(error) => vec![DecodeEvent::Rejected(error)],
    }
}

/// A value that is a number from 0 to `max` (the most the device displays), or the device's way of saying
/// there is none; anything else is no reading of this device.
fn value(measure: &'static codes::Measure, text: &str, max: f64) -> Option<Value> {
    let text = text.trim_end_matches('%');
    if text.chars().all(|c| c == '-' || c == '.') && !text.is_empty() {
        return Some(Value::special(measure, Special::Missing));
    }
    let number: f64 = text.parse().ok().filter(|n| (0.0..=max).contains(n))?;
    if number == 0.0 {
        return Some(Value::special(measure, Special::Missing));
    }
    Some(Value::number(measure, number))
}

fn parse_line(line: &[u8], context: &DecodeContext<'_>) -> Result<Option<Reading>, FrameError> {
    let malformed = |reason| FrameError::Malformed {
        reason,
        raw: super::hex_of(line),
    };
    let text = std::str::from_utf8(line).map_err(|_| malformed("not ASCII text"))?;
    let mut spo2 = None;
    let mut pulse = None;
    let mut perfusion = None;
    let mut exceptions: Option<u32> = None;
    for token in text.split_whitespace() {
        let Some((key, raw)) = token.split_once('=') else {
            continue;
        };
        // Line noise (a control byte left by a plug-in) may cling to the first key.
        let key = key.trim_start_matches(|c: char| !c.is_ascii_alphanumeric());
        match key.to_ascii_uppercase().as_str() {
            "SPO2" => {
                spo2 = Some(value(&codes::SPO2, raw, 100.0).ok_or(malformed("unreadable SpO2"))?)
            }
            "PR" | "BPM" => {
                pulse = Some(
                    value(&codes::PULSE_RATE_OXIMETER, raw, 240.0)
                        .ok_or(malformed("unreadable pulse rate"))?,
                )
            }
            "PI" => {
                perfusion = Some(
                    value(&codes::PERFUSION_INDEX, raw, 20.0)
                        .ok_or(malformed("unreadable perfusion index"))?,
                )
            }
            "EXC" => {
                let hex = raw.split(':').next().unwrap_or_default();
                exceptions =
                    Some(u32::from_str_radix(hex, 16).map_err(|_| malformed("unreadable EXC"))?);
            }
            _ => {}
        }
    }
    let (Some(spo2), Some(pulse)) = (spo2, pulse) else {
        // A line without the two values (a header, a menu echo) is not a measurement and not an error.
        return Ok(None);
    };
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, line);
    reading.values = vec![spo2, pulse];
    reading.values.extend(perfusion);
    if let Some(bits) = exceptions {
        reading.flags.extend(
            EXCEPTIONS
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|(_, name)| *name),
        );
    }
    Ok(Some(reading))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_stream;
    use crate::decode::StreamDecoder;

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(decoder())
    }

    #[track_caller]
    fn check(text: &str, expected: &[&str]) {
        assert_eq!(
            decode_stream(make, &hex::encode(text)),
            expected,
            "{text:?}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn ascii_2_trend_lines_from_the_manual() {
        check("09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET\r\n", &[&format!("pulse_oximetry spo2=97 pulse_rate=69 perfusion_index=4.69 flags=[set_mode] {HUB}")]);
        check("09/21/08 09:56:14 SpO2=096 PR=074 PI=02.28 EXC=C00:LowSigIQ,SET\r\n", &[&format!("pulse_oximetry spo2=96 pulse_rate=74 perfusion_index=2.28 flags=[low_signal_iq,set_mode] {HUB}")]);
        check("09/21/08 09:56:08 SpO2=000 PR=000 PI=00.00 EXC=820:OffPat,SET\r\n", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing perfusion_index=missing flags=[sensor_off,set_mode] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn ascii_1_lines_by_key_not_position() {
        check("07/11/24 10:20:30 SN=0000123456 SPO2=098% BPM=072 DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000000\n", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("07/11/24 10:20:31 SN=0000123456 SPO2=---% BPM=--- PI=--.- EXC=000028\n", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing perfusion_index=missing flags=[pulse_searching,sensor_off] {HUB}")]);
        check("SPO2=099 PI=03.10 BPM=081 EXC=000004\n", &[&format!("pulse_oximetry spo2=99 pulse_rate=81 perfusion_index=3.1 flags=[low_perfusion] {HUB}")]);
    }

    /// Lines quoted from the devices in masimo-datacapture's parser: a Rad-8 and two Radical-7 variants in
    /// ASCII 1, with `%` after values, a pulse "---%", seven-digit EXC and EXC1.
    #[rustfmt::skip]
    #[test]
    fn ascii_1_lines_as_the_devices_send_them() {
        check("03/19/16 13:37:12 SN=0000093112 SPO2=---% BPM=---% DESAT=-- PIDELTA=+-- ALARM=0000 EXC=000001\r\n", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_sensor] {HUB}")]);
        check("03/17/16 19:19:36 SN=---------- SPO2=098% BPM=123 PI=00.55 SPCO=--% SPMET=--.-% SPHB=--.- SPOC=-- RESVD=--- DESAT=-- PIDELTA=+-- PVI=--- ALARM=000000 EXC=0000C00 EXC1=00000000\r\n", &[&format!("pulse_oximetry spo2=98 pulse_rate=123 perfusion_index=0.55 flags=[low_signal_iq,set_mode] {HUB}")]);
        check("05/15/07 08:12:21 SN=0000070986 SPO2=---% BPM=--- PI=--.--% SPCO=--.-% SPMET=--.-% DESAT=-- PIDELTA=+-- PVI=--- ALARM=0000 EXC=000000\r\n", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing perfusion_index=missing flags=[] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn noise_and_broken_lines() {
        check("Rad-8 Ver 7.1\r\n", &[]);
        check("SpO2=9x7 PR=069\r\n", &["error malformed: unreadable SpO2"]);
        // Beyond what the device displays, negative or not a number: no reading of a Masimo.
        check("SpO2=150 PR=069\r\n", &["error malformed: unreadable SpO2"]);
        check("SpO2=NaN PR=069\r\n", &["error malformed: unreadable SpO2"]);
        check("SpO2=097 PR=-69\r\n", &["error malformed: unreadable pulse rate"]);
        check("SpO2=097 PR=999\r\n", &["error malformed: unreadable pulse rate"]);
        check("SpO2=097 PR=inf\r\n", &["error malformed: unreadable pulse rate"]);
        check("SpO2=097 PR=069 PI=25.0\r\n", &["error malformed: unreadable perfusion index"]);
        check("SpO2=097 PR=069 EXC=zz\r\n", &["error malformed: unreadable EXC"]);
        check("\u{1}\u{2}SpO2=097 PR=069\r\nSpO2=096 PR=070\r\n", &[
            &format!("pulse_oximetry spo2=97 pulse_rate=69 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=96 pulse_rate=70 flags=[] {HUB}"),
        ]);
        check("SpO2=097 PR=0", &["truncated 13/14"]);
    }
}

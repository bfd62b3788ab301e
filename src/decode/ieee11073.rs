//! IEEE 11073-20601 number formats (SFLOAT, FLOAT), the Bluetooth Date Time and a value cursor, shared by the GATT
//! decoders. Whether a decoded time is believed is `measurement_time`'s to decide.
//!
//! Special values (NaN, NRes, ±INF, reserved) exist only at exponent 0 and are recognised on the whole raw
//! word before any arithmetic, so `0xF800` is −204.8 and not NRes. Numbers are computed by dividing by a
//! power of ten, which keeps `0xF4B5` exactly 120.5 where multiplying by 0.1 would not.

use chrono::NaiveDate;

use super::{DecodeContext, FrameError};
use crate::model::codes::Measure;
pub use crate::model::measurement_time::DeviceDateTime;
use crate::model::reading::{Flag, Reading, Special, Value};

/// A decoded SFLOAT or FLOAT: a number, or the special value the device sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MderNumber {
    Number(f64),
    Special(Special),
}

/// Decodes a 16-bit SFLOAT from its raw (already little-endian-assembled) word.
pub fn sfloat(raw: u16) -> MderNumber {
    match raw {
        0x07FF => return MderNumber::Special(Special::NotANumber),
        0x0800 => return MderNumber::Special(Special::NotAtThisResolution),
        0x07FE => return MderNumber::Special(Special::PositiveInfinity),
        0x0802 => return MderNumber::Special(Special::NegativeInfinity),
        0x0801 => return MderNumber::Special(Special::Reserved),
        _ => {}
    }
    let exponent = ((raw >> 12) as i8) << 4 >> 4;
    let mantissa = ((raw & 0x0FFF) as i16) << 4 >> 4;
    MderNumber::Number(scale(i32::from(mantissa), exponent))
}

/// Decodes a 32-bit FLOAT from its raw word.
pub fn float(raw: u32) -> MderNumber {
    match raw {
        0x007F_FFFF => return MderNumber::Special(Special::NotANumber),
        0x0080_0000 => return MderNumber::Special(Special::NotAtThisResolution),
        0x007F_FFFE => return MderNumber::Special(Special::PositiveInfinity),
        0x0080_0002 => return MderNumber::Special(Special::NegativeInfinity),
        0x0080_0001 => return MderNumber::Special(Special::Reserved),
        _ => {}
    }
    let exponent = (raw >> 24) as i8;
    let mantissa = ((raw & 0x00FF_FFFF) << 8) as i32 >> 8;
    MderNumber::Number(scale(mantissa, exponent))
}

/// Decodes an SFLOAT and shifts its decimal exponent by `shift`, for unit conversions by powers of ten
/// (kg/L → mg/dL is a shift of 5) without binary rounding: 95×10⁻⁵ kg/L becomes exactly 95.
pub fn sfloat_shifted(raw: u16, shift: i8) -> MderNumber {
    match sfloat(raw) {
        MderNumber::Number(_) => {
            let exponent = ((raw >> 12) as i8) << 4 >> 4;
            let mantissa = ((raw & 0x0FFF) as i16) << 4 >> 4;
            MderNumber::Number(scale(i32::from(mantissa), exponent.saturating_add(shift)))
        }
        special => special,
    }
}

/// A value for `measure`: the number, or `null` with the special value the device sent.
pub fn value_of(measure: &'static Measure, number: MderNumber) -> Value {
    match number {
        MderNumber::Number(value) => Value::number(measure, value),
        MderNumber::Special(special) => Value::special(measure, special),
    }
}

/// Like [`value_of`], for a quantity no patient has at 0 (SpO2, pulse rate, blood pressure, glucose, body
/// temperature): a device that sends 0 has no number, and the value is missing.
pub fn patient_value_of(measure: &'static Measure, number: MderNumber) -> Value {
    match number {
        MderNumber::Number(value) => Value::reported(measure, value, value == 0.0),
        MderNumber::Special(special) => Value::special(measure, special),
    }
}

fn scale(mantissa: i32, exponent: i8) -> f64 {
    let power = 10f64.powi(i32::from(exponent.unsigned_abs()));
    if exponent < 0 {
        f64::from(mantissa) / power
    } else {
        f64::from(mantissa) * power
    }
}

/// A cursor over a characteristic value that turns running out of bytes into an error, never a panic.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, position: 0 }
    }

    /// Takes the next `count` bytes, or fails naming `field` when the value is too short for it.
    pub fn take(&mut self, count: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        let end = self
            .position
            .checked_add(count)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| FrameError::TooShort {
                field,
                have: self.bytes.len(),
                need: self.position.saturating_add(count),
                raw: hex::encode(self.bytes),
            })?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.take(1, field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        let bytes = self.take(2, field)?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    pub fn u24(&mut self, field: &'static str) -> Result<u32, FrameError> {
        let bytes = self.take(3, field)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], 0]))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        let bytes = self.take(4, field)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    pub fn sfloat(&mut self, field: &'static str) -> Result<MderNumber, FrameError> {
        Ok(sfloat(self.u16(field)?))
    }

    pub fn float(&mut self, field: &'static str) -> Result<MderNumber, FrameError> {
        Ok(float(self.u32(field)?))
    }

    pub fn date_time(&mut self, field: &'static str) -> Result<DeviceDateTime, FrameError> {
        let bytes = self.take(7, field)?;
        Ok(date_time(bytes))
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }
}

/// Decodes the 7 bytes of a Date Time: year u16 LE, month, day, hours, minutes, seconds.
pub fn date_time(bytes: &[u8]) -> DeviceDateTime {
    let [y0, y1, month, day, hour, minute, second] = match <[u8; 7]>::try_from(bytes) {
        Ok(fields) => fields,
        Err(_) => return DeviceDateTime::Unknown,
    };
    let year = u16::from_le_bytes([y0, y1]);
    if !(1582..=9999).contains(&year) || month == 0 || day == 0 {
        return DeviceDateTime::Unknown;
    }
    NaiveDate::from_ymd_opt(i32::from(year), u32::from(month), u32::from(day))
        .and_then(|date| date.and_hms_opt(u32::from(hour), u32::from(minute), u32::from(second)))
        .map_or(DeviceDateTime::Unknown, DeviceDateTime::Known)
}

/// Stamps a reading with a device time stamp judged by the one time model, adding its flag if any.
pub fn stamp(reading: &mut Reading, device_time: DeviceDateTime, context: &DecodeContext<'_>) {
    crate::model::measurement_time::judge(device_time, context).apply_to(reading);
}

/// Appends the flags whose condition holds, in table order.
pub fn push_flags(flags: &mut Vec<Flag>, table: &[(bool, Flag)]) {
    flags.extend(table.iter().filter(|(set, _)| *set).map(|(_, flag)| *flag));
}

/// The names (flags, or feature names) of the set bits of a status or feature word, in bit order; unknown
/// bits are ignored.
pub fn bit_names<T: Copy>(word: u32, names: &[(u32, T)]) -> Vec<T> {
    names
        .iter()
        .filter(|(bit, _)| word & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_sfloat(raw: u16, expected: &str) {
        assert_eq!(render(sfloat(raw)), expected, "{raw:#06x}");
    }

    #[track_caller]
    fn check_float(wire_hex: &str, expected: &str) {
        let bytes = hex::decode(wire_hex.replace(' ', "")).unwrap();
        let raw = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        assert_eq!(render(float(raw)), expected, "{wire_hex}");
    }

    fn render(number: MderNumber) -> String {
        match number {
            MderNumber::Number(value) => format!("{value}"),
            MderNumber::Special(special) => special.as_str().to_string(),
        }
    }

    #[test]
    fn sfloat_vectors_from_the_reference() {
        check_sfloat(0x0072, "114");
        check_sfloat(0x0002, "2");
        check_sfloat(0xF014, "2");
        check_sfloat(0xE0C8, "2");
        check_sfloat(0x1002, "20");
        check_sfloat(0x2002, "200");
        check_sfloat(0x04D2, "1234");
        check_sfloat(0x0B2E, "-1234");
        check_sfloat(0xF4B5, "120.5");
        check_sfloat(0xEF83, "-1.25");
        check_sfloat(0xF3E8, "100");
        check_sfloat(0x0064, "100");
    }

    #[test]
    fn sfloat_special_values_exist_only_at_exponent_zero() {
        check_sfloat(0x07FF, "nan");
        check_sfloat(0x0800, "nres");
        check_sfloat(0x0801, "reserved");
        check_sfloat(0x07FE, "+inf");
        check_sfloat(0x0802, "-inf");
        check_sfloat(0xF800, "-204.8");
        check_sfloat(0xF7FF, "204.7");
        check_sfloat(0xD7FF, "2.047");
    }

    #[test]
    fn shifted_sfloats_convert_units_without_rounding() {
        assert_eq!(render(sfloat_shifted(0xB05F, 5)), "95");
        assert_eq!(render(sfloat_shifted(0xC035, 3)), "5.3");
        assert_eq!(render(sfloat_shifted(0x07FF, 5)), "nan");
        assert_eq!(render(sfloat_shifted(0x001E, 5)), "3000000");
    }

    #[test]
    fn float_vectors_from_the_reference() {
        check_float("14 00 00 FF", "2");
        check_float("2E FB FF 00", "-1234");
        check_float("B0 0E 00 FE", "37.6");
        check_float("DA 03 00 FF", "98.6");
        check_float("FF FF 7F 00", "nan");
        check_float("00 00 80 00", "nres");
        check_float("FE FF 7F 00", "+inf");
        check_float("02 00 80 00", "-inf");
        check_float("01 00 80 00", "reserved");
    }

    #[track_caller]
    fn check_date_time(hex_bytes: &str, expected: &str) {
        let bytes = hex::decode(hex_bytes.replace(' ', "")).unwrap();
        let rendered = match date_time(&bytes) {
            DeviceDateTime::Known(time) => time.to_string(),
            DeviceDateTime::Unknown => "unknown".to_string(),
        };
        assert_eq!(rendered, expected);
    }

    #[test]
    fn date_time_vectors_from_the_reference() {
        check_date_time("E2 07 04 11 0F 33 00", "2018-04-17 15:51:00");
        check_date_time("DD 07 08 1A 09 0A 14", "2013-08-26 09:10:20");
        check_date_time("00 00 00 00 12 1A 20", "unknown");
        check_date_time("E2 07 00 11 0F 33 00", "unknown");
        check_date_time("E2 07 02 1E 0F 33 00", "unknown");
        check_date_time("E2 07 04 11 19 00 00", "unknown");
        check_date_time("E2 07 04 11 0F 33", "unknown");
    }

    #[test]
    fn a_cursor_reports_short_values_instead_of_panicking() {
        let mut cursor = Cursor::new(&[0x01, 0x02, 0x03]);
        assert_eq!(cursor.u16("first").unwrap(), 0x0201);
        assert!(matches!(
            cursor.u16("second"),
            Err(FrameError::TooShort {
                field: "second",
                have: 3,
                need: 4,
                ..
            })
        ));
        assert_eq!(cursor.remaining(), 1);
    }
}

//! Date Time 0x2A08 and Current Time 0x2A2B: decoding a device clock, encoding the hub's time to set it,
//! and the device-minus-hub clock offset the hub records at every sync (the HL7 PHD "coincident time").
//!
//! The hub reads the device clock before writing it, so the offset says how far the clock had drifted (or
//! that it was never set) when the records stamped by it were made.

use chrono::{Datelike, NaiveDateTime, TimeDelta, Timelike, Weekday};

use super::ieee11073::{Cursor, DeviceDateTime};
use super::FrameError;

pub const ADJUST_MANUAL: u8 = 0x01;
pub const ADJUST_EXTERNAL_REFERENCE: u8 = 0x02;
pub const ADJUST_TIME_ZONE: u8 = 0x04;
pub const ADJUST_DST: u8 = 0x08;

/// A device clock within this much of the hub's counts as in sync.
const IN_SYNC: TimeDelta = TimeDelta::minutes(2);

/// Encodes a Date Time; `None` for years the field cannot hold.
pub fn encode_date_time(local: NaiveDateTime) -> Option<[u8; 7]> {
    let year = u16::try_from(local.year())
        .ok()
        .filter(|year| (1582..=9999).contains(year))?;
    let [y0, y1] = year.to_le_bytes();
    Some([
        y0,
        y1,
        local.month() as u8,
        local.day() as u8,
        local.hour() as u8,
        local.minute() as u8,
        local.second() as u8,
    ])
}

/// Encodes a Current Time: Date Time, day of week (1 = Monday), 1/256 s fractions and the adjust reason.
pub fn encode_current_time(local: NaiveDateTime, adjust_reason: u8) -> Option<[u8; 10]> {
    let date_time = encode_date_time(local)?;
    let fractions = (u64::from(local.nanosecond().min(999_999_999)) * 256 / 1_000_000_000) as u8;
    let mut bytes = [0u8; 10];
    bytes[..7].copy_from_slice(&date_time);
    bytes[7] = local.weekday().number_from_monday() as u8;
    bytes[8] = fractions;
    bytes[9] = adjust_reason;
    Some(bytes)
}

/// A decoded Current Time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentTime {
    pub date_time: DeviceDateTime,
    pub day_of_week: Option<Weekday>,
    pub fractions256: u8,
    pub adjust_reason: u8,
}

pub fn decode_date_time(bytes: &[u8]) -> Result<DeviceDateTime, FrameError> {
    Cursor::new(bytes).date_time("date time")
}

pub fn decode_current_time(bytes: &[u8]) -> Result<CurrentTime, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let date_time = cursor.date_time("date time")?;
    let day = cursor.u8("day of week")?;
    let fractions256 = cursor.u8("fractions256")?;
    let adjust_reason = cursor.u8("adjust reason")?;
    let day_of_week = match day {
        1..=7 => Weekday::try_from(day - 1).ok(),
        _ => None,
    };
    Ok(CurrentTime {
        date_time,
        day_of_week,
        fractions256,
        adjust_reason,
    })
}

/// Device clock minus hub clock, both local wall time; `None` when the device clock is unknown.
pub fn clock_offset(device_local: DeviceDateTime, hub_local: NaiveDateTime) -> Option<TimeDelta> {
    match device_local {
        DeviceDateTime::Known(device) => Some(device - hub_local),
        DeviceDateTime::Unknown => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVerdict {
    NotSet,
    InSync,
    Off(TimeDelta),
}

pub fn clock_verdict(offset: Option<TimeDelta>) -> ClockVerdict {
    match offset {
        None => ClockVerdict::NotSet,
        Some(offset) if offset.abs() <= IN_SYNC => ClockVerdict::InSync,
        Some(offset) => ClockVerdict::Off(offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, render_error};

    fn at(text: &str) -> NaiveDateTime {
        text.parse().unwrap()
    }

    #[track_caller]
    fn check_date_time(hex: &str, expected: &str) {
        let rendered = match decode_date_time(&bytes_of(hex)) {
            Ok(DeviceDateTime::Known(time)) => time.to_string(),
            Ok(DeviceDateTime::Unknown) => "unknown".to_string(),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
        if let Ok(DeviceDateTime::Known(time)) = decode_date_time(&bytes_of(hex)) {
            assert_eq!(
                encode_date_time(time).map(hex::encode),
                Some(hex.replace(' ', "").to_lowercase())
            );
        }
    }

    #[test]
    fn date_time_vectors() {
        check_date_time("E2 07 04 11 0F 33 00", "2018-04-17 15:51:00");
        check_date_time("DD 07 08 1A 09 0A 14", "2013-08-26 09:10:20");
        check_date_time("00 00 00 00 12 1A 20", "unknown");
        check_date_time("E2 07 04 11 0F 33", "error too short for date time");
    }

    #[test]
    fn current_time_vector_both_ways() {
        let bytes = bytes_of("E8 07 06 06 0C 04 2C 04 80 01");
        let decoded = decode_current_time(&bytes).unwrap();
        assert_eq!(
            decoded,
            CurrentTime {
                date_time: DeviceDateTime::Known(at("2024-06-06T12:04:44")),
                day_of_week: Some(Weekday::Thu),
                fractions256: 128,
                adjust_reason: ADJUST_MANUAL,
            }
        );
        assert_eq!(
            encode_current_time(at("2024-06-06T12:04:44.5"), ADJUST_MANUAL).map(|b| b.to_vec()),
            Some(bytes)
        );
        assert_eq!(
            decode_current_time(&bytes_of("E8 07 06 06 0C 04 2C 04 80"))
                .map_err(|e| render_error(&e)),
            Err("error too short for adjust reason".to_string())
        );
        assert_eq!(
            decode_current_time(&bytes_of("E8 07 06 06 0C 04 2C 00 00 00"))
                .unwrap()
                .day_of_week,
            None
        );
    }

    #[test]
    fn unencodable_years() {
        assert_eq!(encode_date_time(at("+10000-01-01T00:00:00")), None);
        assert_eq!(encode_date_time(at("1500-01-01T00:00:00")), None);
    }

    #[test]
    fn offsets_and_verdicts() {
        let hub = at("2024-03-15T12:00:00");
        let offset = |device: &str| clock_offset(DeviceDateTime::Known(at(device)), hub);
        assert_eq!(offset("2024-03-15T12:01:00"), Some(TimeDelta::minutes(1)));
        assert_eq!(
            clock_verdict(offset("2024-03-15T12:01:00")),
            ClockVerdict::InSync
        );
        assert_eq!(
            clock_verdict(offset("2024-03-15T11:57:59")),
            ClockVerdict::Off(TimeDelta::seconds(-121))
        );
        assert_eq!(clock_offset(DeviceDateTime::Unknown, hub), None);
        assert_eq!(clock_verdict(None), ClockVerdict::NotSet);
    }
}

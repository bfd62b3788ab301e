//! Date Time 0x2A08 and Current Time 0x2A2B: decoding a device clock, encoding the hub's time to set it,
//! and the device-minus-hub clock offset the hub records at every sync (the HL7 PHD "coincident time").
//!
//! Devices keep local wall time with no zone, as set by the last write, and stamp their stored records with
//! it (A&D writes Date Time inside its measurement service, Omron the Current Time Service). The hub therefore
//! reads the device clock before writing its own time to it, and records the offset: it says how far the clock
//! had drifted, or that it was never set, when the records already on the device were stamped.
//!
//! [`ClockSync`] is the hub's side of that exchange, sans-IO: which characteristic to use, what the read
//! found (by the one device-clock rule of `measurement_time`), and whether and what to write.

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Timelike, Utc, Weekday};

use super::ieee11073::{Cursor, DeviceDateTime};
use super::FrameError;
use crate::model::measurement_time::{DeviceClockCheck, HubClock};

/// Adjust Reason bit 0: the time was set by hand.
pub const ADJUST_MANUAL: u8 = 0x01;
/// Adjust Reason bit 1: the time came from an external reference (the hub sets this one).
pub const ADJUST_EXTERNAL_REFERENCE: u8 = 0x02;
/// Adjust Reason bit 2: the time zone changed.
pub const ADJUST_TIME_ZONE: u8 = 0x04;
/// Adjust Reason bit 3: daylight saving time started or ended.
pub const ADJUST_DST: u8 = 0x08;

/// The years a Date Time can carry; 0 means "unknown" and the rest is reserved.
const ENCODABLE_YEARS: std::ops::RangeInclusive<u16> = 1582..=9999;

/// A device clock within this much of the hub's, either way, counts as in sync.
const IN_SYNC: TimeDelta = crate::model::measurement_time::CLOCK_TOLERANCE;

/// Encodes a Date Time: year u16 LE, month, day, hours, minutes, seconds. `None` for a year outside
/// 1582–9999, which the field cannot hold.
pub fn encode_date_time(local: NaiveDateTime) -> Option<[u8; 7]> {
    let year = u16::try_from(local.year())
        .ok()
        .filter(|year| ENCODABLE_YEARS.contains(year))?;
    let [year_low, year_high] = year.to_le_bytes();
    Some([
        year_low,
        year_high,
        small(local.month()),
        small(local.day()),
        small(local.hour()),
        small(local.minute()),
        small(local.second()),
    ])
}

/// Encodes a Current Time: the Date Time, day of week (1 = Monday … 7 = Sunday), the sub-second part in
/// 1/256 s (rounded down) and the adjust reason bits. `None` when the Date Time cannot be encoded.
pub fn encode_current_time(local: NaiveDateTime, adjust_reason: u8) -> Option<[u8; 10]> {
    let [y0, y1, month, day, hour, minute, second] = encode_date_time(local)?;
    // chrono puts a leap second in the nanoseconds (up to 1 999 999 999); it is still the last 1/256 s.
    let nanoseconds = u64::from(local.nanosecond().min(999_999_999));
    let fractions256 = u8::try_from(nanoseconds * 256 / 1_000_000_000).unwrap_or(u8::MAX);
    let day_of_week = small(local.weekday().number_from_monday());
    Some([
        y0,
        y1,
        month,
        day,
        hour,
        minute,
        second,
        day_of_week,
        fractions256,
        adjust_reason,
    ])
}

/// Narrows a calendar field that chrono keeps in a `u32` but that never exceeds 60.
fn small(field: u32) -> u8 {
    u8::try_from(field).unwrap_or(u8::MAX)
}

/// A decoded Current Time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CurrentTime {
    pub date_time: DeviceDateTime,
    /// `None` when the device sends 0 ("unknown") or a reserved value.
    pub day_of_week: Option<Weekday>,
    /// The sub-second part in 1/256 s.
    pub fractions256: u8,
    /// The `ADJUST_*` bits.
    pub adjust_reason: u8,
}

/// Decodes a Date Time from its first 7 bytes; a year, month or day of 0 is an unknown time, not an error.
pub fn decode_date_time(bytes: &[u8]) -> Result<DeviceDateTime, FrameError> {
    Cursor::new(bytes).date_time("date time")
}

/// Decodes a Current Time from its first 10 bytes; bytes after them are ignored.
pub fn decode_current_time(bytes: &[u8]) -> Result<CurrentTime, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let date_time = cursor.date_time("date time")?;
    let day_of_week = match cursor.u8("day of week")? {
        1 => Some(Weekday::Mon),
        2 => Some(Weekday::Tue),
        3 => Some(Weekday::Wed),
        4 => Some(Weekday::Thu),
        5 => Some(Weekday::Fri),
        6 => Some(Weekday::Sat),
        7 => Some(Weekday::Sun),
        _ => None,
    };
    Ok(CurrentTime {
        date_time,
        day_of_week,
        fractions256: cursor.u8("fractions256")?,
        adjust_reason: cursor.u8("adjust reason")?,
    })
}

/// What a recorded clock offset means for the records the device stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockVerdict {
    /// The device did not know the time.
    NotSet,
    /// The device clock was within two minutes of the hub's.
    InSync,
    /// The device clock was this far ahead (positive) or behind (negative).
    Off(TimeDelta),
}

/// Judges a recorded offset (device minus hub, `None` when none was measured): within two minutes either
/// way is in sync.
pub fn clock_verdict(offset: Option<TimeDelta>) -> ClockVerdict {
    match offset {
        None => ClockVerdict::NotSet,
        Some(offset) if offset.abs() <= IN_SYNC => ClockVerdict::InSync,
        Some(offset) => ClockVerdict::Off(offset),
    }
}

/// Which of a device's clock characteristics the hub reads and sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockCharacteristic {
    /// Date Time 0x2A08, where the device lets the hub write it (A&D keeps it in its measurement service).
    DateTime,
    /// Current Time 0x2A2B (Omron, and the Current Time Service).
    CurrentTime,
}

/// What reading the device clock found, for the device list and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockFound {
    /// The device does not know the time, or shows a time no set clock shows.
    NotSet,
    /// Device minus hub, against a trusted hub clock.
    Offset(TimeDelta),
    /// The hub clock was not trusted, so no offset was measured.
    Unmeasured,
}

/// What the hub writes into the device clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockWrite {
    /// These bytes, to the chosen characteristic.
    Write(Vec<u8>),
    /// Nothing: the hub does not trust its own clock (one boot on a stale saved time must not corrupt the
    /// device clock and every measurement stamped by it afterwards).
    HubUntrusted,
    /// Nothing: the hub's time does not fit the characteristic.
    Unencodable,
}

/// Reading and setting one device's clock in a session: read it against the hub's clock (a coincident
/// time stamp), then write the hub's time while the hub trusts its clock.
#[derive(Debug, Clone, PartialEq)]
pub struct ClockSync {
    characteristic: ClockCharacteristic,
    check: Option<DeviceClockCheck>,
}

impl ClockSync {
    /// Date Time where the device lets the hub write it, else Current Time; `None` when it has neither.
    pub fn new(date_time_writable: bool, has_current_time: bool) -> Option<ClockSync> {
        let characteristic = if date_time_writable {
            ClockCharacteristic::DateTime
        } else if has_current_time {
            ClockCharacteristic::CurrentTime
        } else {
            return None;
        };
        Some(ClockSync {
            characteristic,
            check: None,
        })
    }

    pub fn characteristic(&self) -> ClockCharacteristic {
        self.characteristic
    }

    /// The characteristic's value as read, with the hub's clock as read just before it (wall time, local
    /// wall time, trust). `None` when the value holds no time at all.
    pub fn handle_read(
        &mut self,
        value: &[u8],
        hub_time: DateTime<Utc>,
        hub_local: NaiveDateTime,
        hub_clock: HubClock,
    ) -> Option<ClockFound> {
        let device_time = match self.characteristic {
            ClockCharacteristic::DateTime => decode_date_time(value).ok()?,
            ClockCharacteristic::CurrentTime => decode_current_time(value).ok()?.date_time,
        };
        let check = DeviceClockCheck {
            device_time,
            hub_time,
            hub_local,
            hub_clock,
            set: false,
        };
        self.check = Some(check);
        Some(if device_time.plausible().is_none() {
            ClockFound::NotSet
        } else {
            check
                .offset()
                .map_or(ClockFound::Unmeasured, ClockFound::Offset)
        })
    }

    /// What to write now, given the hub's clock trust and local wall time. The trust is the one of the
    /// clock reading the device clock was read against, when there was one, so a clock trusted only after
    /// the read cannot overwrite a device clock the hub measured nothing against: its records would lose
    /// the reset rule unnoticed.
    pub fn write(&self, hub_clock: HubClock, hub_local: NaiveDateTime) -> ClockWrite {
        let trusted = self
            .check
            .map_or(hub_clock, |check| check.hub_clock)
            .is_trusted();
        if !trusted {
            return ClockWrite::HubUntrusted;
        }
        let value = match self.characteristic {
            ClockCharacteristic::DateTime => encode_date_time(hub_local).map(Vec::from),
            ClockCharacteristic::CurrentTime => {
                encode_current_time(hub_local, ADJUST_EXTERNAL_REFERENCE).map(Vec::from)
            }
        };
        value.map_or(ClockWrite::Unencodable, ClockWrite::Write)
    }

    /// The device took the write.
    pub fn handle_written(&mut self) {
        if let Some(check) = &mut self.check {
            check.set = true;
        }
    }

    /// The device clock as read in this session, and whether the hub then set it; `None` when it was not
    /// read.
    pub fn check(&self) -> Option<DeviceClockCheck> {
        self.check
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, render_error};

    fn at(text: &str) -> NaiveDateTime {
        text.parse().unwrap()
    }

    fn render_date_time(date_time: DeviceDateTime) -> String {
        match date_time {
            DeviceDateTime::Known(time) => time.to_string(),
            DeviceDateTime::Unknown => "unknown".to_string(),
        }
    }

    /// Decodes a Date Time and, when it is a known time, checks it encodes back to the same 7 bytes.
    #[track_caller]
    fn check_date_time(hex: &str, expected: &str) {
        let bytes = bytes_of(hex);
        let decoded = decode_date_time(&bytes);
        let rendered = match decoded {
            Ok(date_time) => render_date_time(date_time),
            Err(ref error) => render_error(error),
        };
        assert_eq!(rendered, expected, "{hex}");
        if let Ok(DeviceDateTime::Known(time)) = decoded {
            assert_eq!(
                encode_date_time(time).as_ref().map(|b| &b[..]),
                bytes.get(..7),
                "{hex}"
            );
        }
    }

    #[track_caller]
    fn check_current_time(hex: &str, expected: &str) {
        let rendered = match decode_current_time(&bytes_of(hex)) {
            Ok(time) => format!(
                "{} {} {}/256 adjust={:#04x}",
                render_date_time(time.date_time),
                time.day_of_week
                    .map_or("day?".to_string(), |day| day.to_string()),
                time.fractions256,
                time.adjust_reason,
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
    }

    #[track_caller]
    fn check_encode_date_time(local: &str, expected: Option<&str>) {
        let expected = expected.map(bytes_of);
        assert_eq!(
            encode_date_time(at(local)).map(Vec::from),
            expected,
            "{local}"
        );
    }

    #[track_caller]
    fn check_encode_current_time(local: &str, adjust_reason: u8, expected: Option<&str>) {
        let expected = expected.map(bytes_of);
        let encoded = encode_current_time(at(local), adjust_reason).map(Vec::from);
        assert_eq!(encoded, expected, "{local}");
    }

    #[track_caller]
    fn check_verdict(offset_s: Option<i64>, expected: ClockVerdict) {
        assert_eq!(
            clock_verdict(offset_s.map(TimeDelta::seconds)),
            expected,
            "{offset_s:?}"
        );
    }

    /// Chooses the characteristic from what the device offers (`date-time`: a writable Date Time, `current-time`:
    /// a Current Time, `both`), reads `read` from it (`-`: not readable) against a hub whose clock says
    /// 2024-03-15 12:00:00 local and is `read_clock`, then asks what to write five seconds later, when the
    /// hub's clock is `write_clock`, and takes the write. Renders the choice, what the read found, the
    /// write and whether the check says the clock was set.
    #[track_caller]
    fn check_sync(
        offers: &str,
        read: &str,
        read_clock: HubClock,
        write_clock: HubClock,
        expected: &str,
    ) {
        let (date_time, current_time) = match offers {
            "date-time" => (true, false),
            "current-time" => (false, true),
            "both" => (true, true),
            _ => (false, false),
        };
        let Some(mut sync) = ClockSync::new(date_time, current_time) else {
            assert_eq!("none", expected, "{offers} {read}");
            return;
        };
        let mut out = vec![format!("{:?}", sync.characteristic())];
        if read != "-" {
            let hub_time = "2024-03-15T12:00:00Z".parse().unwrap();
            let found = sync.handle_read(
                &bytes_of(read),
                hub_time,
                at("2024-03-15T12:00:00"),
                read_clock,
            );
            out.push(match found {
                Some(ClockFound::NotSet) => "not set".to_string(),
                Some(ClockFound::Offset(offset)) => format!("offset {} s", offset.num_seconds()),
                Some(ClockFound::Unmeasured) => "unmeasured".to_string(),
                None => "unreadable".to_string(),
            });
        }
        match sync.write(write_clock, at("2024-03-15T12:00:05")) {
            ClockWrite::Write(bytes) => {
                out.push(format!("write {}", hex::encode_upper(bytes)));
                sync.handle_written();
            }
            other => out.push(format!("{other:?}")),
        }
        if let Some(check) = sync.check() {
            out.push(format!("set={}", check.set));
        }
        assert_eq!(out.join("; "), expected, "{offers} {read}");
    }

    #[rustfmt::skip]
    #[test]
    fn date_time_decodes_and_encodes_back() {
        check_date_time("E2 07 04 11 0F 33 00", "2018-04-17 15:51:00");
        check_date_time("DD 07 08 1A 09 0A 14", "2013-08-26 09:10:20");
        check_date_time("00 00 00 00 12 1A 20", "unknown");
        check_date_time("E2 07 04 11 0F 33", "error too short for date time");
        check_date_time("", "error too short for date time");
        check_date_time("E2 07 04 11 0F 33 00 FF", "2018-04-17 15:51:00");
        check_date_time("E2 07 0D 11 0F 33 00", "unknown");
        check_date_time("E2 07 02 1E 0F 33 00", "unknown");
        check_date_time("2E 06 01 01 00 00 00", "1582-01-01 00:00:00");
        check_date_time("0F 27 0C 1F 17 3B 3B", "9999-12-31 23:59:59");
    }

    #[rustfmt::skip]
    #[test]
    fn current_time_decodes() {
        check_current_time("E8 07 06 06 0C 04 2C 04 80 01", "2024-06-06 12:04:44 Thu 128/256 adjust=0x01");
        check_current_time("E8 07 06 06 0C 04 2C 04 80 01 FF", "2024-06-06 12:04:44 Thu 128/256 adjust=0x01");
        check_current_time("E8 07 06 09 0C 04 2C 07 00 0F", "2024-06-09 12:04:44 Sun 0/256 adjust=0x0f");
        check_current_time("E8 07 06 06 0C 04 2C 00 00 00", "2024-06-06 12:04:44 day? 0/256 adjust=0x00");
        check_current_time("E8 07 06 06 0C 04 2C 08 FF 00", "2024-06-06 12:04:44 day? 255/256 adjust=0x00");
        check_current_time("00 00 00 00 00 00 00 00 00 00", "unknown day? 0/256 adjust=0x00");
        check_current_time("E8 07 06 06 0C 04 2C 04 80", "error too short for adjust reason");
        check_current_time("E8 07 06 06 0C 04 2C", "error too short for day of week");
        check_current_time("E8 07 06 06 0C 04", "error too short for date time");
    }

    #[rustfmt::skip]
    #[test]
    fn hub_time_encodes() {
        check_encode_date_time("2018-04-17T15:51:00", Some("E2 07 04 11 0F 33 00"));
        check_encode_date_time("2013-08-26T09:10:20.999", Some("DD 07 08 1A 09 0A 14"));
        check_encode_date_time("+10000-01-01T00:00:00", None);
        check_encode_date_time("1581-12-31T23:59:59", None);
        check_encode_current_time("2024-06-06T12:04:44.5", ADJUST_MANUAL, Some("E8 07 06 06 0C 04 2C 04 80 01"));
        check_encode_current_time("2024-06-10T00:00:00", ADJUST_EXTERNAL_REFERENCE, Some("E8 07 06 0A 00 00 00 01 00 02"));
        check_encode_current_time("2024-06-09T23:59:59.999999999", ADJUST_TIME_ZONE | ADJUST_DST, Some("E8 07 06 09 17 3B 3B 07 FF 0C"));
        check_encode_current_time("2024-06-06T12:04:44.003906249", 0, Some("E8 07 06 06 0C 04 2C 04 00 00"));
        check_encode_current_time("2024-06-06T12:04:44.00390625", 0, Some("E8 07 06 06 0C 04 2C 04 01 00"));
        check_encode_current_time("+10000-01-01T00:00:00", ADJUST_MANUAL, None);
    }

    #[test]
    fn a_leap_second_is_the_last_fraction() {
        let leap = at("2016-12-31T23:59:59")
            .with_nanosecond(1_500_000_000)
            .unwrap();
        assert_eq!(encode_current_time(leap, 0).map(|b| b[8]), Some(0xFF));
    }

    #[rustfmt::skip]
    #[test]
    fn clock_verdicts() {
        let off = |seconds| ClockVerdict::Off(TimeDelta::seconds(seconds));
        check_verdict(Some(0), ClockVerdict::InSync);
        check_verdict(Some(120), ClockVerdict::InSync);
        check_verdict(Some(-120), ClockVerdict::InSync);
        check_verdict(Some(121), off(121));
        check_verdict(Some(-121), off(-121));
        check_verdict(Some(3600), off(3600));
        check_verdict(None, ClockVerdict::NotSet);
    }

    #[rustfmt::skip]
    #[test]
    fn the_clock_characteristic_is_a_writable_date_time_else_current_time() {
        use HubClock::Synchronized as S;
        check_sync("none", "-", S, S, "none");
        check_sync("date-time", "-", S, S, "DateTime; write E807030F0C0005");
        check_sync("both", "-", S, S, "DateTime; write E807030F0C0005");
        // 2024-03-15 is a Friday; the hub sets "external reference" as the adjust reason.
        check_sync("current-time", "-", S, S, "CurrentTime; write E807030F0C0005050002");
    }

    #[rustfmt::skip]
    #[test]
    fn the_read_finds_an_offset_or_a_clock_never_set_by_the_one_device_clock_rule() {
        use HubClock::Synchronized as S;
        check_sync("date-time", "E8 07 03 0F 0C 01 00", S, S, "DateTime; offset 60 s; write E807030F0C0005; set=true");
        check_sync("date-time", "E8 07 03 0F 0D 00 00", S, S, "DateTime; offset 3600 s; write E807030F0C0005; set=true");
        check_sync("date-time", "E8 07 03 0C 0C 00 00", S, S, "DateTime; offset -259200 s; write E807030F0C0005; set=true");
        check_sync("current-time", "E8 07 03 0F 0B 3B 00 05 00 00", S, S, "CurrentTime; offset -60 s; write E807030F0C0005050002; set=true");
        // Years before 2010 and after 2099 are a clock that was never set, not an offset.
        check_sync("date-time", "D0 07 01 01 00 00 00", S, S, "DateTime; not set; write E807030F0C0005; set=true");
        check_sync("date-time", "D9 07 0C 1F 17 3B 3B", S, S, "DateTime; not set; write E807030F0C0005; set=true");
        check_sync("date-time", "DA 07 01 01 00 00 00", S, S, "DateTime; offset -448200000 s; write E807030F0C0005; set=true");
        check_sync("date-time", "34 08 01 01 00 00 00", S, S, "DateTime; not set; write E807030F0C0005; set=true");
        check_sync("date-time", "00 00 00 00 00 00 00", S, S, "DateTime; not set; write E807030F0C0005; set=true");
        // A value that holds no time is no read: the write is judged by the hub clock at the write.
        check_sync("date-time", "E8 07", S, S, "DateTime; unreadable; write E807030F0C0005");
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_hub_clock_trusted_at_the_read_sets_the_device_clock() {
        use HubClock::{Synchronized as S, Trusted as T, Unsynchronized as U};
        check_sync("date-time", "E8 07 03 0F 0C 01 00", U, U, "DateTime; unmeasured; HubUntrusted; set=false");
        // A clock trusted only after the read does not write: the hub measured nothing against it.
        check_sync("date-time", "E8 07 03 0F 0C 01 00", U, S, "DateTime; unmeasured; HubUntrusted; set=false");
        // The read's trust stands for the write.
        check_sync("date-time", "E8 07 03 0F 0C 01 00", S, U, "DateTime; offset 60 s; write E807030F0C0005; set=true");
        check_sync("date-time", "E8 07 03 0F 0C 01 00", T, T, "DateTime; offset 60 s; write E807030F0C0005; set=true");
        // Without a read, the trust at the write decides.
        check_sync("date-time", "-", U, U, "DateTime; HubUntrusted");
        check_sync("date-time", "-", U, T, "DateTime; write E807030F0C0005");
    }

    #[test]
    fn a_hub_time_no_characteristic_can_carry_is_not_written() {
        let sync = ClockSync::new(true, false).unwrap();
        assert_eq!(
            sync.write(HubClock::Synchronized, at("+10000-01-01T00:00:00")),
            ClockWrite::Unencodable
        );
    }
}

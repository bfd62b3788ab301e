//! A Nonin oximeter simulator: builds the frames a 9560 (Data Format 13) or an OEM module (Data Format 8)
//! puts on the wire, from the fields, as device-protocols.md C.1 lays them out.

/// One Data Format 13 spot-check record.
#[derive(Debug, Clone, Copy)]
pub struct SpotCheck {
    /// Local wall time on the device clock: year (2000–2099), month, day, hour, minute, second.
    pub time: (u16, u8, u8, u8, u8, u8),
    pub pulse_rate: u16,
    pub spo2: u8,
    pub from_memory: bool,
}

fn bcd(value: u8) -> u8 {
    ((value / 10) << 4) | (value % 10)
}

impl SpotCheck {
    /// A spot-check stamped at `time` on the device clock, its values varying with `n`.
    pub fn at(time: chrono::NaiveDateTime, n: u16, from_memory: bool) -> SpotCheck {
        use chrono::{Datelike, Timelike};
        SpotCheck {
            time: (
                time.year() as u16,
                time.month() as u8,
                time.day() as u8,
                time.hour() as u8,
                time.minute() as u8,
                time.second() as u8,
            ),
            pulse_rate: 60 + n,
            spo2: 90 + (n % 10) as u8,
            from_memory,
        }
    }

    /// A distinct record for each `n`: one minute apart, values varying within a plausible range.
    pub fn numbered(n: u32) -> SpotCheck {
        let minutes = n;
        let (day, rest) = (1 + (minutes / (24 * 60)) % 28, minutes % (24 * 60));
        SpotCheck {
            time: (
                2024,
                3,
                day as u8,
                (rest / 60) as u8,
                (rest % 60) as u8,
                (n % 60) as u8,
            ),
            pulse_rate: 55 + (n % 60) as u16,
            spo2: 90 + (n % 10) as u8,
            from_memory: false,
        }
    }

    pub fn frame(&self) -> Vec<u8> {
        let (year, month, day, hour, minute, second) = self.time;
        let status_lsb = if self.from_memory { 0x10 } else { 0x00 };
        let data = [
            0x20,
            bcd((year % 100) as u8),
            bcd(month),
            bcd(day),
            bcd(hour),
            bcd(minute),
            bcd(second),
            0x00,
            0x02, // SmartPoint
            status_lsb,
            ((self.pulse_rate >> 8) & 0x01) as u8,
            (self.pulse_rate & 0xff) as u8,
            0x00,
            self.spo2,
        ];
        let checksum = data.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
        let mut frame = vec![0x00, 0x02, 0x00, 0x0D, 0x00, data.len() as u8];
        frame.extend_from_slice(&data);
        frame.push(checksum);
        frame.push(0x03);
        frame
    }

    /// The device's local time as the daemon should report it when the hub runs in UTC.
    pub fn measured_at_utc(&self) -> String {
        let (year, month, day, hour, minute, second) = self.time;
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}+00:00")
    }
}

/// One Data Format 8 frame (sent once per second by the device).
pub fn df8_frame(pulse_rate: u16, spo2: u8, artifact: bool) -> [u8; 4] {
    let mut byte1 = 0x80 | ((pulse_rate >> 7) & 0x03) as u8;
    if artifact {
        byte1 |= 0x04;
    }
    [byte1, (pulse_rate & 0x7f) as u8, spo2 & 0x7f, 0x00]
}

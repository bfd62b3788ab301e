//! Nonin pulse oximeter serial protocols: Data Format 13 (spot-checks), 8 (4-byte stream) and 2/7 (25-frame packets).
//!
//! Each decoder buffers at most one unfinished frame or packet, skips bytes that belong to no frame (reported as one
//! [`FrameError::Garbage`] per run, just before the next frame's event or at `finish`), and after a bad frame searches
//! again from the byte after that frame's first byte. Bytes of a rejected frame that are skipped during that search
//! are not counted as garbage a second time. Values outside what the device can report (SpO2 101–126 or above 127,
//! pulse rate 301–510) reject the frame, so bytes that only look like a frame cannot produce impossible readings.
//!
//! The Data Format 13 decoder also reads the 9560's clock: it asks for it as the port opens and every few minutes,
//! and dates the spot-checks just taken by a prompt answer (device-protocols.md C.1) when their stamps agree
//! with it.

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};

use crate::decode::ieee11073::push_flags;
use crate::decode::{
    hex_of, CommandPurpose, DecodeContext, DecodeEvent, FrameError, HostCommand, Polled,
    StreamDecoder,
};
use crate::model::clocks::DeviceClockCheck;
use crate::model::codes;
use crate::model::measurement_time::{judge, DeviceDateTime, Stamp, CLOCK_TOLERANCE};
use crate::model::reading::{Flag, Kind, Reading, Special, Supplemental, TimeSource, Value};

const SPO2_MISSING: u8 = 127;
const PULSE_MISSING: u16 = 511;
const SPO2_MAX: u8 = 100;
const PULSE_MAX: u16 = 300;

fn spo2_value(raw: u8) -> Result<Value, &'static str> {
    match raw {
        1..=SPO2_MAX => Ok(Value::number(&codes::SPO2, f64::from(raw))),
        0 | SPO2_MISSING => Ok(Value::special(&codes::SPO2, Special::Missing)),
        _ => Err("spo2 out of range"),
    }
}

fn pulse_value(raw: u16) -> Result<Value, &'static str> {
    match raw {
        1..=PULSE_MAX => Ok(Value::number(&codes::PULSE_RATE_OXIMETER, f64::from(raw))),
        0 | PULSE_MISSING => Ok(Value::special(
            &codes::PULSE_RATE_OXIMETER,
            Special::Missing,
        )),
        _ => Err("pulse rate out of range"),
    }
}

/// What the bytes at the scan position are.
enum Step {
    /// They may start a frame, but more bytes are needed to tell.
    Wait,
    /// The first byte starts no frame.
    Skip,
    /// A good frame of this many bytes.
    Good(usize, Reading),
    /// A bad frame of this many bytes.
    Bad(usize, FrameError),
    /// A well-formed frame of this many bytes whose content is impossible; it is consumed whole.
    Refused(usize, FrameError),
    /// A good message of this many bytes that is no reading (the answer to a question).
    Taken(usize),
}

/// The byte buffer and resynchronisation bookkeeping shared by all Nonin decoders.
#[derive(Debug, Default)]
struct Scanner {
    buf: Vec<u8>,
    pos: usize,
    /// Skipped bytes not yet reported as garbage.
    garbage: usize,
    /// Bytes ahead of `pos` that belong to an already rejected frame.
    shadow: usize,
}

impl Scanner {
    fn window(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn skip(&mut self, count: usize) {
        let count = count.min(self.window().len());
        let shadowed = count.min(self.shadow);
        self.shadow -= shadowed;
        self.garbage += count - shadowed;
        self.pos += count;
    }

    fn flush_garbage(&mut self, events: &mut Vec<DecodeEvent>) {
        if self.garbage > 0 {
            events.push(DecodeEvent::Rejected(FrameError::Garbage {
                count: self.garbage,
            }));
            self.garbage = 0;
        }
    }

    fn accept(&mut self, len: usize, events: &mut Vec<DecodeEvent>) {
        self.flush_garbage(events);
        let len = len.min(self.window().len());
        self.shadow = self.shadow.saturating_sub(len);
        self.pos += len;
    }

    fn reject(&mut self, len: usize, error: FrameError, events: &mut Vec<DecodeEvent>) {
        self.flush_garbage(events);
        events.push(DecodeEvent::Rejected(error));
        if !self.window().is_empty() {
            self.shadow = self.shadow.saturating_sub(1).max(len.saturating_sub(1));
            self.pos += 1;
        }
    }

    fn compact(&mut self) {
        self.buf.drain(..self.pos.min(self.buf.len()));
        self.pos = 0;
    }

    /// Runs a stateless frame parser over the buffer until it needs more bytes.
    fn run(&mut self, events: &mut Vec<DecodeEvent>, mut step: impl FnMut(&[u8]) -> Step) {
        while !self.window().is_empty() {
            match step(self.window()) {
                Step::Wait => break,
                Step::Skip => self.skip(1),
                Step::Good(len, reading) => {
                    self.accept(len, events);
                    events.push(DecodeEvent::Reading(reading));
                }
                Step::Bad(len, error) => self.reject(len, error, events),
                Step::Refused(len, error) => {
                    self.accept(len, events);
                    events.push(DecodeEvent::Rejected(error));
                }
                Step::Taken(len) => self.accept(len, events),
            }
        }
        self.compact();
    }

    /// Reports what is left at the end of the input and forgets it. `prefix` is a packet's already accepted bytes.
    fn finish(&mut self, prefix: &[u8], need: usize) -> Option<FrameError> {
        let mut raw = prefix.to_vec();
        raw.extend_from_slice(self.window());
        let garbage = self.garbage;
        *self = Scanner::default();
        if !raw.is_empty() {
            Some(FrameError::Truncated {
                have: raw.len(),
                need,
                raw: hex_of(&raw),
            })
        } else if garbage > 0 {
            Some(FrameError::Garbage { count: garbage })
        } else {
            None
        }
    }
}

// ----- Data Format 13 -----

const DF13_SYNC: [u8; 4] = [0x00, 0x02, 0x00, 0x0D];
const DF13_HEADER: usize = 6;
const DF13_TRAILER: usize = 2;
const DF13_MIN_DATA: usize = 14;
const DF13_MAX_DATA: usize = 512;
const DF13_END: u8 = 0x03;
const DF13_MEM: u8 = 0x10;

/// The 9560's question for its clock, and the start of its answer `02 F2 06 YY MM DD hh mm ss 03` (binary
/// fields, the year after 2000).
const DF13_GET_TIME: [u8; 4] = [0x02, 0x72, 0x00, 0x03];
const DF13_TIME_ANSWER: [u8; 3] = [0x02, 0xF2, 0x06];
const DF13_TIME_ANSWER_LEN: usize = 10;
/// How often the clock is asked for while the port is open.
const CLOCK_REREAD: TimeDelta = TimeDelta::minutes(5);
/// How long a read stands for the records after it, on the steady clock.
const CLOCK_READ_STANDS: TimeDelta = TimeDelta::minutes(15);
/// An answer read later than this after the question may have waited unread on the line (the hub stops
/// reading while its disk is full): the time in it is not the time it was read.
const CLOCK_ANSWER_WAIT: TimeDelta = TimeDelta::seconds(5);
/// How far the wall clock may move apart from the steady clock between a read and a record before the
/// read counts as taken on another wall clock (a step).
const CLOCK_STEP: TimeDelta = TimeDelta::seconds(2);

/// Data Format 13: one spot-check per packet, stamped by the device's clock; stored records arrive oldest first.
#[derive(Debug, Default)]
pub struct DataFormat13Decoder {
    scanner: Scanner,
    clock: ClockReads,
}

/// The 9560's clock as this connection read it.
#[derive(Debug, Default)]
struct ClockReads {
    /// When the hub last asked, on the steady clock.
    asked_at: Option<DateTime<Utc>>,
    /// Whether the last question is still unanswered: only its first answer counts.
    awaiting: bool,
    /// The last prompt answer that was a plausible time.
    read: Option<ClockRead>,
}

/// One prompt answer: the device's clock, the hub's wall clock and its trust, and the steady clock, all at
/// the moment the answer was read.
#[derive(Debug, Clone, Copy)]
struct ClockRead {
    check: DeviceClockCheck,
    device: NaiveDateTime,
    steady: DateTime<Utc>,
}

impl ClockReads {
    /// The answer at the start of `window`, if it is one. It is taken as a read of the clock when it came
    /// promptly after the question and is a plausible time; otherwise its bytes are consumed and it is
    /// forgotten (the answer has no checksum, so a damaged one must not stand in for a good read).
    fn answer_step(&mut self, window: &[u8], context: &DecodeContext<'_>) -> Step {
        for (index, expected) in DF13_TIME_ANSWER.iter().enumerate() {
            match window.get(index) {
                None => return Step::Wait,
                Some(byte) if byte != expected => return Step::Skip,
                Some(_) => {}
            }
        }
        let Some(&[.., year, month, day, hour, minute, second, end]) =
            window.get(..DF13_TIME_ANSWER_LEN)
        else {
            return Step::Wait;
        };
        if end != DF13_END {
            return Step::Skip;
        }
        let time =
            NaiveDate::from_ymd_opt(2000 + i32::from(year), u32::from(month), u32::from(day))
                .and_then(|date| {
                    date.and_hms_opt(u32::from(hour), u32::from(minute), u32::from(second))
                });
        let device_time = time.map_or(DeviceDateTime::Unknown, DeviceDateTime::Known);
        // Strictly after the question: an answer read at the very instant it was asked (a capture decoded
        // offline, where every byte has one time) was not made now.
        let waited = self
            .asked_at
            .map(|asked| context.steady.signed_duration_since(asked));
        let prompt = std::mem::take(&mut self.awaiting)
            && waited
                .is_some_and(|waited| waited > TimeDelta::zero() && waited <= CLOCK_ANSWER_WAIT);
        if let (true, Some(device)) = (prompt, device_time.plausible()) {
            let check = DeviceClockCheck {
                device_time,
                hub_time: context.received_at,
                hub_local: context.time_zone.at(context.received_at).naive_local(),
                hub_clock: context.hub_clock,
                set: false,
            };
            self.read = Some(ClockRead {
                check,
                device,
                steady: context.steady,
            });
        }
        Step::Taken(DF13_TIME_ANSWER_LEN)
    }

    /// The read to judge a record received now by: a recent one, taken with a trusted hub clock, on the wall
    /// clock that reads now (not one stepped since).
    fn standing(&self, context: &DecodeContext<'_>) -> Option<&ClockRead> {
        let read = self.read.as_ref()?;
        let since = context.steady.signed_duration_since(read.steady);
        let wall_since = context
            .received_at
            .signed_duration_since(read.check.hub_time);
        let recent = (TimeDelta::zero()..=CLOCK_READ_STANDS).contains(&since);
        let unstepped = (wall_since - since).abs() <= CLOCK_STEP;
        let trusted = read.check.hub_clock.is_trusted() && context.hub_clock.is_trusted();
        (recent && unstepped && trusted).then_some(read)
    }

    /// The instant a just-measured record stamped `stamp` was taken, by the read: the read's instant plus
    /// the time the device's clock ran since, and whether that corrects the device's clock (it is more
    /// than [`CLOCK_TOLERANCE`] off the hub's). Only when the stamp agrees with the clock as read, run on
    /// since: a stamp that does not (a clock set since, a record that waited, a damaged answer) is not
    /// dated by a read that may not be its clock's. Counted from the read's instant, so the zone's summer
    /// time does not enter, and a stamp in the hour the clocks go back is the instant it was.
    fn dated(
        &self,
        stamp: NaiveDateTime,
        context: &DecodeContext<'_>,
    ) -> Option<(DateTime<Utc>, bool)> {
        let read = self.standing(context)?;
        let offset = read.check.offset()?;
        let ran = context.steady.signed_duration_since(read.steady);
        let agrees = (stamp - (read.device + ran)).abs() <= CLOCK_TOLERANCE;
        agrees.then(|| {
            let instant = read.check.hub_time + (stamp - read.device);
            let instant =
                instant - TimeDelta::nanoseconds(i64::from(instant.timestamp_subsec_nanos()));
            (instant, offset.abs() > CLOCK_TOLERANCE)
        })
    }
}

impl StreamDecoder for DataFormat13Decoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        let mut events = Vec::new();
        self.scanner.buf.extend_from_slice(bytes);
        let clock = &mut self.clock;
        self.scanner.run(&mut events, |window| {
            if window.first() == DF13_TIME_ANSWER.first() {
                return clock.answer_step(window, context);
            }
            df13_step(window, context, clock)
        });
        events
    }

    /// Asks for the clock as the port opens and every [`CLOCK_REREAD`]; at once when the last read no longer
    /// stands for a reason the next answer removes (the hub clock became trusted, or its wall clock stepped).
    fn poll(&mut self, context: &DecodeContext<'_>) -> Polled {
        let now = context.steady;
        let since = self
            .clock
            .asked_at
            .map(|asked| now.signed_duration_since(asked));
        let stale = self.clock.read.is_some_and(|read| {
            let fresh = now.signed_duration_since(read.steady) <= CLOCK_READ_STANDS;
            fresh && context.hub_clock.is_trusted() && self.clock.standing(context).is_none()
        });
        let due = since.is_none_or(|since| {
            since >= CLOCK_REREAD
                || since < TimeDelta::zero()
                || (stale && since > CLOCK_ANSWER_WAIT)
        });
        if !due {
            return Polled::default();
        }
        self.clock.asked_at = Some(now);
        self.clock.awaiting = true;
        Polled {
            commands: vec![HostCommand {
                bytes: DF13_GET_TIME.to_vec(),
                purpose: CommandPurpose::Dialog,
            }],
            events: Vec::new(),
        }
    }

    fn finish(&mut self) -> Option<FrameError> {
        let need = match self.scanner.window() {
            [_, _, _, _, hi, lo, ..] => {
                usize::from(u16::from_be_bytes([*hi, *lo])) + DF13_HEADER + DF13_TRAILER
            }
            _ => DF13_HEADER + DF13_MIN_DATA + DF13_TRAILER,
        };
        self.scanner.finish(&[], need)
    }
}

fn df13_step(window: &[u8], context: &DecodeContext<'_>, clock: &ClockReads) -> Step {
    for (index, expected) in DF13_SYNC.iter().enumerate() {
        match window.get(index) {
            None => return Step::Wait,
            Some(byte) if byte != expected => return Step::Skip,
            Some(_) => {}
        }
    }
    let Some(&[.., hi, lo]) = window.get(..DF13_HEADER) else {
        return Step::Wait;
    };
    let length = usize::from(u16::from_be_bytes([hi, lo]));
    if !(DF13_MIN_DATA..=DF13_MAX_DATA).contains(&length) {
        let raw = hex_of(window.get(..DF13_HEADER).unwrap_or_default());
        return Step::Bad(
            DF13_HEADER,
            FrameError::Malformed {
                reason: "data length out of range",
                raw,
            },
        );
    }
    let total = DF13_HEADER + length + DF13_TRAILER;
    let Some(packet) = window.get(..total) else {
        return Step::Wait;
    };
    match df13_packet(packet, context, clock) {
        Ok(reading) => Step::Good(total, reading),
        Err(error) => Step::Bad(total, error),
    }
}

fn df13_packet(
    packet: &[u8],
    context: &DecodeContext<'_>,
    clock: &ClockReads,
) -> Result<Reading, FrameError> {
    let malformed = |reason| FrameError::Malformed {
        reason,
        raw: hex_of(packet),
    };
    let body = packet.get(DF13_HEADER..).unwrap_or_default();
    let Some((&end, body)) = body.split_last() else {
        return Err(malformed("packet too short"));
    };
    let Some((&found, data)) = body.split_last() else {
        return Err(malformed("packet too short"));
    };
    if end != DF13_END {
        return Err(malformed("missing end marker"));
    }
    let expected = data.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    if expected != found {
        return Err(FrameError::Checksum {
            expected,
            found,
            raw: hex_of(packet),
        });
    }
    let Some(
        &[c, y, mo, d, h, mi, s, fraction, status_msb, status_lsb, hr_msb, hr_lsb, _reserved, spo2],
    ) = data.get(..DF13_MIN_DATA)
    else {
        return Err(malformed("data too short"));
    };

    let no_measurement = status_msb & 0x01 != 0;
    let values = if no_measurement {
        vec![
            Value::special(&codes::SPO2, Special::NoMeasurement),
            Value::special(&codes::PULSE_RATE_OXIMETER, Special::NoMeasurement),
        ]
    } else {
        let pulse = (u16::from(hr_msb & 0x01) << 8) | u16::from(hr_lsb);
        vec![
            spo2_value(spo2).map_err(malformed)?,
            pulse_value(pulse).map_err(malformed)?,
        ]
    };

    let received_at = context.received_at;
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, received_at, packet);
    // Data Format 13 carries spot-checks: values the oximeter settled before it sent them.
    reading.supplemental = vec![Supplemental::ModalitySpot];
    reading.values = values;
    push_flags(
        &mut reading.flags,
        &[
            (no_measurement, Flag::NoMeasurement),
            (status_msb & 0x02 != 0, Flag::Smartpoint),
            (status_lsb & DF13_MEM != 0, Flag::FromMemory),
            (status_lsb & 0x01 != 0, Flag::LowBattery),
        ],
    );
    let stamp = device_time([c, y, mo, d, h, mi, s]);
    // A record sent from memory was made long before any read; a live one was just taken.
    let live = status_lsb & DF13_MEM == 0;
    let dated = stamp
        .plausible()
        .filter(|_| live)
        .and_then(|local| Some((local, clock.dated(local, context)?)));
    match dated {
        Some((local, (instant, true))) => {
            let stamp = Stamp {
                measured_at: context.time_zone.at(instant),
                time_source: TimeSource::Device,
                flag: Some(Flag::DeviceClockCorrected),
                device_time: Some(local),
            };
            stamp.apply_to(&mut reading);
            reading.device_clock = clock.standing(context).map(|read| read.check);
        }
        Some((_, (instant, false))) => {
            let mut judged = judge(stamp, context);
            // A clock in step with the hub's: its stamp stands, read as the instant the read says it is
            // where the zone gives it two (the hour the clocks go back).
            let apart = judged.measured_at.signed_duration_since(instant).abs();
            if judged.time_source == TimeSource::Device && apart > CLOCK_TOLERANCE {
                judged.measured_at = context.time_zone.at(instant);
            }
            judged.apply_to(&mut reading);
        }
        None => judge(stamp, context).apply_to(&mut reading),
    }
    let key = [
        c,
        y,
        mo,
        d,
        h,
        mi,
        s,
        fraction,
        status_msb,
        status_lsb & !DF13_MEM,
        hr_msb,
        hr_lsb,
        spo2,
    ];
    // A clock that was never set stamps every record alike: such a stamp would make distinct spot-checks
    // with the same values one record, and all but the first would be dropped as resends.
    if crate::model::measurement_time::stamp_names_the_record(&reading) {
        reading.record_key = Some(format!("nonin-df13:{}", hex_of(&key)));
    }
    Ok(reading)
}

fn bcd(byte: u8) -> Option<u32> {
    let (tens, units) = (byte >> 4, byte & 0x0F);
    (tens <= 9 && units <= 9).then(|| u32::from(tens * 10 + units))
}

/// Century, year, month, day, hour, minute, second, all BCD, as the device's wall time.
fn device_time(bytes: [u8; 7]) -> DeviceDateTime {
    let [century, year, month, day, hour, minute, second] = bytes.map(bcd);
    let time = || {
        let year = i32::try_from(century? * 100 + year?).ok()?;
        NaiveDate::from_ymd_opt(year, month?, day?)?.and_hms_opt(hour?, minute?, second?)
    };
    time().map_or(DeviceDateTime::Unknown, DeviceDateTime::Known)
}

// ----- Data Format 8 -----

/// Data Format 8: a 4-byte frame once a second, without checksum; sync comes from the bit-7 pattern.
#[derive(Debug, Default)]
pub struct DataFormat8Decoder {
    scanner: Scanner,
}

const DF8_FRAME: usize = 4;

impl StreamDecoder for DataFormat8Decoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        let mut events = Vec::new();
        self.scanner.buf.extend_from_slice(bytes);
        self.scanner
            .run(&mut events, |window| df8_step(window, context.received_at));
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        self.scanner.finish(&[], DF8_FRAME)
    }
}

fn df8_step(window: &[u8], received_at: DateTime<Utc>) -> Step {
    let Some(first) = window.first() else {
        return Step::Wait;
    };
    if first & 0x80 == 0
        || window
            .iter()
            .skip(1)
            .take(DF8_FRAME - 1)
            .any(|byte| byte & 0x80 != 0)
    {
        return Step::Skip;
    }
    let Some(&[b1, b2, b3, b4]) = window.get(..DF8_FRAME) else {
        return Step::Wait;
    };
    let frame = [b1, b2, b3, b4];
    let malformed = |reason| FrameError::Malformed {
        reason,
        raw: hex_of(&frame),
    };
    let pulse = (u16::from(b1 & 0x03) << 7) | u16::from(b2);
    let values = match (spo2_value(b3), pulse_value(pulse)) {
        (Ok(spo2), Ok(pulse)) => vec![spo2, pulse],
        (Err(reason), _) | (_, Err(reason)) => return Step::Bad(DF8_FRAME, malformed(reason)),
    };
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, received_at, &frame);
    reading.values = values;
    push_flags(
        &mut reading.flags,
        &[
            (b1 & 0x20 != 0, Flag::OutOfTrack),
            (b1 & 0x10 != 0, Flag::LowPerfusion),
            (b1 & 0x08 != 0, Flag::MarginalPerfusion),
            (b1 & 0x04 != 0, Flag::Artifact),
            (b4 & 0x20 != 0, Flag::Smartpoint),
            (b4 & 0x08 != 0, Flag::SensorAlarm),
            (b4 & 0x01 != 0, Flag::LowBattery),
        ],
    );
    Step::Good(DF8_FRAME, reading)
}

// ----- Data Formats 2 and 7 -----

/// Which frame layout a [`DataFormat2Decoder`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Df2Variant {
    /// `01 STATUS PLETH FLOAT CHK`.
    Df2,
    /// `STATUS PLETH_MSB PLETH_LSB FLOAT CHK`.
    Df7,
}

const DF2_FRAME: usize = 5;
const DF2_FRAMES_PER_PACKET: usize = 25;
const DF2_PACKET: usize = DF2_FRAME * DF2_FRAMES_PER_PACKET;
const STATUS_ALWAYS: u8 = 0x80;
const STATUS_SYNC: u8 = 0x01;

/// Data Formats 2 and 7: 5-byte frames at 75 per second, 25 of them (starting at a SYNC frame) per reading.
///
/// A packet is parsed as one 125-byte unit that stays in the buffer until all of it checks out, so when it
/// breaks off or a frame in it is bad, the search resumes one byte after the packet's start: a good packet
/// that began inside what looked like a packet is still found.
#[derive(Debug)]
pub struct DataFormat2Decoder {
    variant: Df2Variant,
    scanner: Scanner,
}

#[derive(Debug, Clone, Copy)]
struct Df2Frame {
    bytes: [u8; DF2_FRAME],
    status: u8,
    float: u8,
}

enum Df2Check {
    Good(Df2Frame),
    /// The start byte or status bit 7 is wrong.
    Broken,
    Checksum {
        expected: u8,
        found: u8,
    },
}

impl DataFormat2Decoder {
    pub fn new(variant: Df2Variant) -> Self {
        DataFormat2Decoder {
            variant,
            scanner: Scanner::default(),
        }
    }

    /// Whether the bytes seen so far may still be the start of a SYNC frame.
    fn may_start_packet(variant: Df2Variant, window: &[u8]) -> bool {
        let sync = STATUS_ALWAYS | STATUS_SYNC;
        match variant {
            Df2Variant::Df2 => {
                window.first().is_none_or(|&start| start == 0x01)
                    && window.get(1).is_none_or(|&status| status & sync == sync)
            }
            Df2Variant::Df7 => window.first().is_none_or(|&status| status & sync == sync),
        }
    }

    fn check(variant: Df2Variant, bytes: [u8; DF2_FRAME]) -> Df2Check {
        let [b1, b2, b3, b4, found] = bytes;
        let (start_ok, status) = match variant {
            Df2Variant::Df2 => (b1 == 0x01, b2),
            Df2Variant::Df7 => (true, b1),
        };
        if !start_ok || status & STATUS_ALWAYS == 0 {
            return Df2Check::Broken;
        }
        let expected = b1.wrapping_add(b2).wrapping_add(b3).wrapping_add(b4);
        if expected != found {
            return Df2Check::Checksum { expected, found };
        }
        Df2Check::Good(Df2Frame {
            bytes,
            status,
            float: b4,
        })
    }

    /// Looks at the window as a packet candidate without consuming anything.
    fn parse(variant: Df2Variant, window: &[u8], received_at: DateTime<Utc>) -> Step {
        if !Self::may_start_packet(variant, window) {
            return Step::Skip;
        }
        let mut frames = Vec::with_capacity(DF2_FRAMES_PER_PACKET);
        for (index, chunk) in window
            .chunks(DF2_FRAME)
            .take(DF2_FRAMES_PER_PACKET)
            .enumerate()
        {
            let Ok(bytes) = <[u8; DF2_FRAME]>::try_from(chunk) else {
                return Step::Wait;
            };
            match Self::check(variant, bytes) {
                Df2Check::Good(frame) if index == 0 && frame.status & STATUS_SYNC == 0 => {
                    return Step::Skip
                }
                Df2Check::Good(frame) if index > 0 && frame.status & STATUS_SYNC != 0 => {
                    let error = FrameError::Malformed {
                        reason: "packet broke off",
                        raw: hex_of(&packet_bytes(&frames)),
                    };
                    return Step::Bad(index * DF2_FRAME, error);
                }
                Df2Check::Good(frame) => frames.push(frame),
                Df2Check::Broken | Df2Check::Checksum { .. } if index == 0 => return Step::Skip,
                Df2Check::Broken => {
                    let error = FrameError::Malformed {
                        reason: "packet interrupted",
                        raw: hex_of(&bytes),
                    };
                    return Step::Bad((index + 1) * DF2_FRAME, error);
                }
                Df2Check::Checksum { expected, found } => {
                    let error = FrameError::Checksum {
                        expected,
                        found,
                        raw: hex_of(&bytes),
                    };
                    return Step::Bad((index + 1) * DF2_FRAME, error);
                }
            }
        }
        if frames.len() < DF2_FRAMES_PER_PACKET {
            return Step::Wait;
        }
        match df2_packet(&frames, received_at) {
            DecodeEvent::Reading(reading) => Step::Good(DF2_PACKET, reading),
            DecodeEvent::Rejected(error) => Step::Refused(DF2_PACKET, error),
        }
    }
}

impl StreamDecoder for DataFormat2Decoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        let mut events = Vec::new();
        self.scanner.buf.extend_from_slice(bytes);
        let variant = self.variant;
        self.scanner.run(&mut events, |window| {
            Self::parse(variant, window, context.received_at)
        });
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        let pending_packet = Self::may_start_packet(self.variant, self.scanner.window())
            && self.scanner.window().len() >= DF2_FRAME;
        let need = if pending_packet {
            DF2_PACKET
        } else {
            DF2_FRAME
        };
        self.scanner.finish(&[], need)
    }
}

fn packet_bytes(frames: &[Df2Frame]) -> Vec<u8> {
    frames.iter().flat_map(|frame| frame.bytes).collect()
}

/// Turns 25 good frames into a reading; `frames` must hold exactly one packet.
fn df2_packet(frames: &[Df2Frame], received_at: DateTime<Utc>) -> DecodeEvent {
    let raw = packet_bytes(frames);
    let float = |number: usize| frames.get(number - 1).map_or(0, |frame| frame.float);
    let pulse = (u16::from(float(20) & 0x03) << 7) | u16::from(float(21) & 0x7F);
    let values = match (spo2_value(float(9)), pulse_value(pulse)) {
        (Ok(spo2), Ok(pulse)) => vec![spo2, pulse],
        (Err(reason), _) | (_, Err(reason)) => {
            return DecodeEvent::Rejected(FrameError::Malformed {
                reason,
                raw: hex_of(&raw),
            });
        }
    };
    let status = frames.iter().fold(0u8, |all, frame| all | frame.status);
    let perfusion = frames.get(8).map_or(0, |frame| frame.status) & 0x06;
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, received_at, &raw);
    reading.values = values;
    push_flags(
        &mut reading.flags,
        &[
            (status & 0x40 != 0, Flag::SensorDisconnected),
            (status & 0x20 != 0, Flag::Artifact),
            (status & 0x10 != 0, Flag::OutOfTrack),
            (status & 0x08 != 0, Flag::SensorAlarm),
            (perfusion == 0x04, Flag::LowPerfusion),
            (perfusion == 0x06, Flag::MarginalPerfusion),
        ],
    );
    DecodeEvent::Reading(reading)
}

#[cfg(test)]
mod tests {
    use chrono::{FixedOffset, TimeDelta, TimeZone};
    use proptest::prelude::*;

    use super::*;
    use crate::model::measurement_time::HubClock;
    use crate::model::reading::TimeSource;

    type MakeDecoder = fn() -> Box<dyn StreamDecoder>;
    /// (frame number, status) pairs replacing the packet's usual status.
    type Overrides = &'static [(usize, u8)];

    fn received_at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 15, 12, 0, 0).unwrap()
    }

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn bytes_of(hex: &str) -> Vec<u8> {
        let digits: String = hex.chars().filter(|c| !c.is_whitespace()).collect();
        hex::decode(digits).unwrap()
    }

    fn df13() -> Box<dyn StreamDecoder> {
        Box::new(DataFormat13Decoder::default())
    }

    fn df8() -> Box<dyn StreamDecoder> {
        Box::new(DataFormat8Decoder::default())
    }

    fn df2() -> Box<dyn StreamDecoder> {
        Box::new(DataFormat2Decoder::new(Df2Variant::Df2))
    }

    fn df7() -> Box<dyn StreamDecoder> {
        Box::new(DataFormat2Decoder::new(Df2Variant::Df7))
    }

    /// Feeds `bytes` in chunks of `chunk` bytes, then finishes.
    fn decode(
        make: MakeDecoder,
        bytes: &[u8],
        chunk: usize,
        zone: &FixedOffset,
    ) -> (Vec<DecodeEvent>, Option<FrameError>) {
        let mut decoder = make();
        let context = DecodeContext::trusted(received_at(), zone);
        let events = bytes
            .chunks(chunk.max(1))
            .flat_map(|part| decoder.feed(part, &context))
            .collect();
        (events, decoder.finish())
    }

    fn render_value(value: &Value) -> String {
        match (value.value, value.special) {
            (Some(number), _) => format!("{}={number}", value.measure.name),
            (None, Some(special)) => format!("{}={}", value.measure.name, special.as_str()),
            (None, None) => format!("{}=?", value.measure.name),
        }
    }

    fn render_error(error: &FrameError) -> String {
        match error {
            FrameError::Checksum { .. } => "rejected checksum".to_string(),
            FrameError::Malformed { reason, .. } => format!("rejected malformed: {reason}"),
            FrameError::Garbage { count } => format!("garbage {count}"),
            FrameError::Truncated { have, need, .. } => format!("truncated {have}/{need}"),
            other => format!("unexpected {other}"),
        }
    }

    fn render(event: &DecodeEvent) -> String {
        match event {
            DecodeEvent::Reading(reading) => format!(
                "reading {} flags=[{}] at={} source={}",
                reading
                    .values
                    .iter()
                    .map(render_value)
                    .collect::<Vec<_>>()
                    .join(" "),
                crate::model::reading::joined(&reading.flags),
                reading.measured_at.to_rfc3339(),
                reading.time_source.as_str(),
            ),
            DecodeEvent::Rejected(error) => render_error(error),
        }
    }

    /// Decodes `bytes` whole and in several chunkings, checks they agree, and compares the rendering.
    #[track_caller]
    fn check_bytes_in(make: MakeDecoder, bytes: &[u8], zone: &FixedOffset, expected: &[&str]) {
        let whole = decode(make, bytes, usize::MAX, zone);
        for chunk in [1, 2, 3, 7, 64] {
            assert_eq!(
                decode(make, bytes, chunk, zone),
                whole,
                "chunks of {chunk} differ from one feed"
            );
        }
        let (events, end) = whole;
        for event in &events {
            if let DecodeEvent::Reading(reading) = event {
                crate::decode::test_support::check_fhir(reading);
            }
        }
        let mut rendered: Vec<String> = events.iter().map(render).collect();
        rendered.extend(
            end.iter()
                .map(|error| format!("finish {}", render_error(error))),
        );
        assert_eq!(rendered, expected);
    }

    #[track_caller]
    fn check_bytes(make: MakeDecoder, bytes: &[u8], expected: &[&str]) {
        check_bytes_in(make, bytes, &utc(), expected);
    }

    #[track_caller]
    fn check(make: MakeDecoder, hex: &str, expected: &[&str]) {
        check_bytes(make, &bytes_of(hex), expected);
    }

    fn readings(make: MakeDecoder, bytes: &[u8]) -> Vec<Reading> {
        decode(make, bytes, usize::MAX, &utc())
            .0
            .into_iter()
            .filter_map(|event| match event {
                DecodeEvent::Reading(reading) => Some(reading),
                DecodeEvent::Rejected(_) => None,
            })
            .collect()
    }

    // ----- DF13 -----

    const DF13_VECTOR: &str = "00 02 00 0D 00 0E 20 24 03 15 10 20 30 00 02 00 00 48 00 61 67 03";

    /// A DF13 packet around the given spot-check data, with a correct length and checksum.
    fn df13_packet(data_hex: &str) -> String {
        let data = bytes_of(data_hex);
        let mut packet = vec![0x00, 0x02, 0x00, 0x0D];
        packet.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
        packet.extend_from_slice(&data);
        packet.push(data.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)));
        packet.push(0x03);
        hex::encode(packet)
    }

    #[test]
    fn df13_vector_and_values() {
        check(df13, DF13_VECTOR, &["reading spo2=97 pulse_rate=72 flags=[smartpoint] at=2024-03-15T10:20:30+00:00 source=device"]);
        // The checksum the builder computes is the one in the reference vector.
        assert_eq!(
            bytes_of(&df13_packet("20 24 03 15 10 20 30 00 02 00 00 48 00 61")),
            bytes_of(DF13_VECTOR)
        );
        // HR bit 8 comes from bit 0 of the MSB; the other MSB bits are ignored.
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 FF 2C 00 62"), &["reading spo2=98 pulse_rate=300 flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 01 FF 00 7F"), &["reading spo2=missing pulse_rate=missing flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 00 48 00 7F"), &["reading spo2=missing pulse_rate=72 flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 01 00 01 FF 00 7F"), &["reading spo2=no_measurement pulse_rate=no_measurement flags=[no_measurement] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 00 00 00 00"), &["reading spo2=missing pulse_rate=missing flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 00 48 00 00"), &["reading spo2=missing pulse_rate=72 flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 00 00 00 00 00 61"), &["reading spo2=97 pulse_rate=missing flags=[] at=2024-03-15T10:20:30+00:00 source=device"]);
        check(
            df13,
            &df13_packet("20 24 03 15 10 20 30 00 00 00 00 48 00 65"),
            &["rejected malformed: spo2 out of range"],
        );
        check(
            df13,
            &df13_packet("20 24 03 15 10 20 30 00 00 00 01 2D 00 61"),
            &["rejected malformed: pulse rate out of range"],
        );
    }

    #[test]
    fn df13_flags() {
        let at = "at=2024-03-15T10:20:30+00:00 source=device";
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 03 11 01 FF 00 7F"), &[&format!("reading spo2=no_measurement pulse_rate=no_measurement flags=[no_measurement,smartpoint,from_memory,low_battery] {at}")]);
        check(
            df13,
            &df13_packet("20 24 03 15 10 20 30 00 00 10 00 48 00 61"),
            &[&format!(
                "reading spo2=97 pulse_rate=72 flags=[from_memory] {at}"
            )],
        );
        check(
            df13,
            &df13_packet("20 24 03 15 10 20 30 00 00 01 00 48 00 61"),
            &[&format!(
                "reading spo2=97 pulse_rate=72 flags=[low_battery] {at}"
            )],
        );
        // Undefined status bits are ignored.
        check(
            df13,
            &df13_packet("20 24 03 15 10 20 30 00 FC EE 00 48 00 61"),
            &[&format!("reading spo2=97 pulse_rate=72 flags=[] {at}")],
        );
    }

    #[test]
    fn df13_device_clock() {
        let hub = "at=2024-03-15T12:00:00+00:00 source=hub";
        let cases: &[(&str, &str)] = &[
            (
                "20 24 03 15 12 10 00 00",
                "flags=[] at=2024-03-15T12:10:00+00:00 source=device",
            ),
            (
                "20 24 03 15 12 10 01 00",
                &format!("flags=[device_clock_ahead] {hub}"),
            ),
            (
                "20 24 00 15 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 02 30 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 15 24 00 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 1A 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 2A 03 15 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "00 00 00 00 00 00 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            // Years 0, 1999, 2000, 2005 and 2009, the first plausible year, 2099 (ahead of the hub), 2100,
            // 9999. A 9560 whose clock reads 2005 once passed as a device time (issue 11's review).
            (
                "00 00 01 01 00 00 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 05 06 15 08 30 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "19 99 12 31 23 59 59 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 00 01 01 00 00 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 09 12 31 23 59 59 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 10 01 01 00 00 00 00",
                "flags=[] at=2010-01-01T00:00:00+00:00 source=device",
            ),
            (
                "20 99 12 31 00 00 00 00",
                &format!("flags=[device_clock_ahead] {hub}"),
            ),
            (
                "21 00 01 01 00 00 00 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "99 99 12 31 23 59 59 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            // Month 13, day 0, day 32, minute 60, second 60 (month 0, 30 February and hour 24 are above).
            (
                "20 24 13 15 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 00 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 32 10 20 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 15 10 60 30 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
            (
                "20 24 03 15 10 20 60 00",
                &format!("flags=[device_clock_invalid] {hub}"),
            ),
        ];
        for (time, expected) in cases {
            let packet = df13_packet(&format!("{time} 00 00 00 48 00 61"));
            check(
                df13,
                &packet,
                &[&format!("reading spo2=97 pulse_rate=72 {expected}")],
            );
        }
        let plus_one = FixedOffset::east_opt(3600).unwrap();
        check_bytes_in(df13, &bytes_of(DF13_VECTOR), &plus_one, &["reading spo2=97 pulse_rate=72 flags=[smartpoint] at=2024-03-15T10:20:30+01:00 source=device"]);
    }

    /// One DF13 spot-check stamped `time` (BCD century to second, then the fraction), decoded against
    /// `clock`; rendered with the time stamp as the device sent it (`sent=`, `-` for none).
    fn df13_against(clock: HubClock, time: &str) -> String {
        let packet = bytes_of(&df13_packet(&format!("{time} 00 00 00 48 00 61")));
        let context = DecodeContext {
            received_at: received_at(),
            steady: received_at(),
            time_zone: &utc(),
            hub_clock: clock,
            device_clock: None,
        };
        let events = DataFormat13Decoder::default().feed(&packet, &context);
        let [DecodeEvent::Reading(reading)] = &events[..] else {
            panic!("{time}: {events:?}");
        };
        let sent = reading
            .device_time
            .map_or("-".into(), |time| time.to_string());
        format!("{} sent={sent}", render(&events[0]))
    }

    /// A 9560's clock dialog: at each step (the steady clock's second, the wall clock's second, after
    /// `received_at()`) the hub asks (`?`) or the device's bytes arrive, as hex, or a DF13 record by its data
    /// (`rec ` and the data). Renders the questions and what the records became, as
    /// `measured_at source [flags]`.
    fn clock_dialog(clock: HubClock, steps: &[(i64, i64, &str)]) -> Vec<String> {
        let zone = utc();
        let mut decoder = DataFormat13Decoder::default();
        let mut rendered = Vec::new();
        for (steady, wall, step) in steps {
            let context = DecodeContext {
                received_at: received_at() + TimeDelta::seconds(*wall),
                steady: received_at() + TimeDelta::seconds(*steady),
                time_zone: &zone,
                hub_clock: clock,
                device_clock: None,
            };
            if *step == "?" {
                let commands = decoder.poll(&context).commands;
                rendered.extend(
                    commands
                        .iter()
                        .map(|c| format!("> {}", hex::encode(&c.bytes))),
                );
                continue;
            }
            let bytes = match step.strip_prefix("rec ") {
                Some(data) => bytes_of(&df13_packet(data)),
                None => bytes_of(step),
            };
            for event in decoder.feed(&bytes, &context) {
                rendered.push(match event {
                    DecodeEvent::Reading(reading) => format!(
                        "{} {} [{}]",
                        reading.measured_at.naive_local(),
                        reading.time_source.as_str(),
                        crate::model::reading::joined(&reading.flags)
                    ),
                    DecodeEvent::Rejected(error) => render_error(&error),
                });
            }
        }
        rendered
    }

    /// A 9560 whose clock is two years behind (731 days: 2024 is a leap year), or was never moved to summer
    /// time, stamps its spot-checks with that clock. A prompt answer to the hub's question is a read of the
    /// clock, and a spot-check just taken whose stamp agrees with the clock as read is dated from the read's
    /// instant. Records from memory, and stamps the read does not explain, keep the time they carry.
    #[rustfmt::skip]
    #[test]
    fn df13_spot_checks_just_taken_are_dated_by_the_clock_the_oximeter_reports() {
        use HubClock::{Synchronized as Sync, Unsynchronized as Unsync};
        // 2022-03-15 12:00:01 on the oximeter, one second after the hub asked at 12:00:00.
        let behind = "02 F2 06 16 03 0F 0C 00 01 03";
        let live = "rec 20 22 03 15 12 00 31 00 00 00 00 48 00 61";
        let ask = "> 02720003";
        let check = |clock, steps: &[(i64, i64, &str)], expected: &[&str]| {
            assert_eq!(clock_dialog(clock, steps), expected, "{steps:?}");
        };
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (31, 31, live)], &[ask, "2024-03-15 12:00:31 device [device_clock_corrected]"]);
        // One hour behind (summer time never set): moved by the hour.
        check(Sync, &[(0, 0, "?"), (1, 1, "02 F2 06 18 03 0F 0B 00 01 03"), (31, 31, "rec 20 24 03 15 11 00 31 00 00 00 00 48 00 61")],
              &[ask, "2024-03-15 12:00:31 device [device_clock_corrected]"]);
        // Within two minutes of the hub's: nothing moves.
        check(Sync, &[(0, 0, "?"), (1, 1, "02 F2 06 18 03 0F 0C 01 01 03"), (31, 31, "rec 20 24 03 15 12 01 31 00 00 00 00 48 00 61")],
              &[ask, "2024-03-15 12:01:31 device []"]);
        // A record from memory was not taken now: it keeps its time.
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (2, 2, "rec 20 22 03 10 08 00 00 00 00 10 00 48 00 61")],
              &[ask, "2022-03-10 08:00:00 device [from_memory]"]);
        // A stamp the read does not explain (the clock was set since, the record waited on the line, the
        // answer was damaged) keeps its time.
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (31, 31, "rec 20 24 03 15 12 00 31 00 00 00 00 48 00 61")],
              &[ask, "2024-03-15 12:00:31 device []"]);
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (600, 600, live)], &[ask, "2022-03-15 12:00:31 device []"]);
        // An answer that came late may have waited on the line; one nobody asked for, or read at the instant
        // of the question (a capture decoded offline), says nothing of now; a read stands 15 minutes.
        check(Sync, &[(0, 0, "?"), (6, 6, behind), (31, 31, live)], &[ask, "2022-03-15 12:00:31 device []"]);
        check(Sync, &[(1, 1, behind), (31, 31, live)], &["2022-03-15 12:00:31 device []"]);
        check(Sync, &[(0, 0, "?"), (0, 0, behind), (0, 0, live)], &[ask, "2022-03-15 12:00:31 device []"]);
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (1000, 1000, "rec 20 22 03 15 12 16 41 00 00 00 00 48 00 61")],
              &[ask, "2022-03-15 12:16:41 device []"]);
        // An untrusted hub clock measures no offset, and a wall clock stepped since the read makes it void.
        check(Unsync, &[(0, 0, "?"), (1, 1, behind), (31, 31, live)], &[ask, "2022-03-15 12:00:31 device []"]);
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (31, 3631, live)], &[ask, "2022-03-15 12:00:31 device []"]);
        // A damaged or impossible answer is no read, and does not replace a good one.
        check(Sync, &[(0, 0, "?"), (1, 1, "02 F2 06 16 03 0F 0C 00 01 04"), (31, 31, live)],
              &[ask, "garbage 10", "2022-03-15 12:00:31 device []"]);
        check(Sync, &[(0, 0, "?"), (1, 1, behind), (300, 300, "?"), (301, 301, "02 F2 06 16 0D 0F 0C 00 01 03"),
                      (302, 302, "rec 20 22 03 15 12 05 02 00 00 00 00 48 00 61")],
              &[ask, ask, "2024-03-15 12:05:02 device [device_clock_corrected]"]);
    }

    /// Central European time around the night of 2026-10-25, when 03:00 summer time became 02:00 winter time.
    struct AutumnInBerlin;

    impl crate::model::reading::HubTimeZone for AutumnInBerlin {
        fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<FixedOffset>> {
            let change = Utc.with_ymd_and_hms(2026, 10, 25, 1, 0, 0).unwrap();
            [2, 1]
                .into_iter()
                .filter_map(|hours| {
                    let time = local
                        .and_local_timezone(FixedOffset::east_opt(hours * 3600)?)
                        .single()?;
                    (if hours == 2 {
                        time < change
                    } else {
                        time >= change
                    })
                    .then_some(time)
                })
                .min()
        }

        fn at(&self, instant: DateTime<Utc>) -> DateTime<FixedOffset> {
            let change = Utc.with_ymd_and_hms(2026, 10, 25, 1, 0, 0).unwrap();
            let hours = if instant < change { 2 } else { 1 };
            instant.with_timezone(&FixedOffset::east_opt(hours * 3600).unwrap())
        }
    }

    /// In the hour the clocks go back, a stamp of a 9560 in step with the hub is the instant the clock read
    /// says, not the earlier of the two the zone gives; and only the first answer to a question counts.
    #[test]
    fn df13_a_clock_read_tells_the_two_instants_of_the_autumn_hour_apart_and_one_answer_counts() {
        let zone = AutumnInBerlin;
        // 01:00:00 UTC, 02:00:00 in winter time, the second time the clocks show 02:00.
        let base = Utc.with_ymd_and_hms(2026, 10, 25, 1, 0, 0).unwrap();
        let run = |steps: &[(i64, &str)]| -> Vec<String> {
            let mut decoder = DataFormat13Decoder::default();
            let mut out = Vec::new();
            for (second, step) in steps {
                let at = base + TimeDelta::seconds(*second);
                let context = DecodeContext {
                    received_at: at,
                    steady: at,
                    time_zone: &zone,
                    hub_clock: HubClock::Synchronized,
                    device_clock: None,
                };
                if *step == "?" {
                    decoder.poll(&context);
                    continue;
                }
                let bytes = match step.strip_prefix("rec ") {
                    Some(data) => bytes_of(&df13_packet(data)),
                    None => bytes_of(step),
                };
                for event in decoder.feed(&bytes, &context) {
                    if let DecodeEvent::Reading(reading) = event {
                        out.push(format!(
                            "{} [{}]",
                            reading.measured_at.to_rfc3339(),
                            crate::model::reading::joined(&reading.flags)
                        ));
                    }
                }
            }
            out
        };
        // The oximeter shows 02:00:01 at 01:00:01 UTC; its spot-check at 02:00:31 is 01:00:31 UTC.
        let in_step = "02 F2 06 1A 0A 19 02 00 01 03";
        let live = "rec 20 26 10 25 02 00 31 00 00 00 00 48 00 61";
        assert_eq!(
            run(&[(0, "?"), (1, in_step), (31, live)]),
            ["2026-10-25T02:00:31+01:00 []"]
        );
        // Without a read, the zone's earlier instant, as for any device time.
        assert_eq!(run(&[(31, live)]), ["2026-10-25T02:00:31+02:00 []"]);
        // A second answer to the same question, four hours off, is not a read.
        assert_eq!(
            run(&[
                (0, "?"),
                (1, in_step),
                (2, "02 F2 06 1A 0A 19 06 00 02 03"),
                (31, live)
            ]),
            ["2026-10-25T02:00:31+01:00 []"]
        );
    }

    /// The hub asks at once when the last read stops standing for a reason a new answer removes.
    #[test]
    fn df13_asks_again_once_the_hub_clock_is_trusted_or_its_wall_clock_stepped() {
        let zone = utc();
        let behind = bytes_of("02 F2 06 16 03 0F 0C 00 01 03");
        let context = |steady: i64, wall: i64, hub_clock| DecodeContext {
            received_at: received_at() + TimeDelta::seconds(wall),
            steady: received_at() + TimeDelta::seconds(steady),
            time_zone: &zone,
            hub_clock,
            device_clock: None,
        };
        for (clock_at_read, later) in [
            (
                HubClock::Unsynchronized,
                context(20, 20, HubClock::Synchronized),
            ),
            (
                HubClock::Synchronized,
                context(20, 3620, HubClock::Synchronized),
            ),
        ] {
            let mut decoder = DataFormat13Decoder::default();
            assert_eq!(
                decoder.poll(&context(0, 0, clock_at_read)).commands.len(),
                1
            );
            decoder.feed(&behind, &context(1, 1, clock_at_read));
            assert_eq!(decoder.poll(&later).commands.len(), 1, "{clock_at_read:?}");
            assert!(decoder.poll(&later).commands.is_empty());
        }
    }

    /// The hub asks for the 9560's clock as the port opens and every five minutes after.
    #[test]
    fn df13_asks_for_the_clock_at_once_and_every_five_minutes() {
        let mut decoder = DataFormat13Decoder::default();
        let zone = utc();
        let asks = |decoder: &mut DataFormat13Decoder, seconds| {
            let at = received_at() + TimeDelta::seconds(seconds);
            let context = DecodeContext::trusted(at, &zone);
            decoder.poll(&context).commands.len()
        };
        let polls: Vec<usize> = [0, 1, 299, 300, 301, 600]
            .into_iter()
            .map(|seconds| asks(&mut decoder, seconds))
            .collect();
        assert_eq!(polls, [1, 0, 0, 1, 0, 1]);
        // A wall clock stepped back does not keep the question from being asked again.
        assert_eq!(asks(&mut decoder, -3600), 1);
    }

    #[test]
    fn df13_only_a_trusted_hub_clock_finds_the_oximeter_ahead_and_the_time_sent_is_kept() {
        let hub = "at=2024-03-15T12:00:00+00:00 source=hub";
        let cases = [
            (
                HubClock::Trusted,
                "20 24 03 18 07 30 00 00",
                format!("flags=[device_clock_ahead] {hub} sent=2024-03-18 07:30:00"),
            ),
            (
                HubClock::Unsynchronized,
                "20 24 03 18 07 30 00 00",
                "flags=[] at=2024-03-18T07:30:00+00:00 source=device sent=2024-03-18 07:30:00"
                    .to_string(),
            ),
            (
                HubClock::Unsynchronized,
                "20 09 12 31 23 59 59 00",
                format!("flags=[device_clock_invalid] {hub} sent=2009-12-31 23:59:59"),
            ),
            (
                HubClock::Synchronized,
                "00 00 01 01 00 00 00 00",
                format!("flags=[device_clock_invalid] {hub} sent=0000-01-01 00:00:00"),
            ),
            (
                HubClock::Synchronized,
                "20 24 03 15 10 20 30 00",
                "flags=[] at=2024-03-15T10:20:30+00:00 source=device sent=2024-03-15 10:20:30"
                    .to_string(),
            ),
            (
                HubClock::Trusted,
                "20 24 13 15 10 20 30 00",
                format!("flags=[device_clock_invalid] {hub} sent=-"),
            ),
        ];
        for (clock, time, expected) in cases {
            assert_eq!(
                df13_against(clock, time),
                format!("reading spo2=97 pulse_rate=72 {expected}"),
                "{clock:?} {time}"
            );
        }
    }

    #[test]
    fn df13_framing() {
        let good = "reading spo2=97 pulse_rate=72 flags=[smartpoint] at=2024-03-15T10:20:30+00:00 source=device";
        let bad_checksum = DF13_VECTOR.replace("67 03", "68 03");
        check(df13, &format!("{DF13_VECTOR} {DF13_VECTOR}"), &[good, good]);
        check(
            df13,
            &format!("FF 00 02 00 {DF13_VECTOR}"),
            &["garbage 4", good],
        );
        check(
            df13,
            &format!("{bad_checksum} {DF13_VECTOR}"),
            &["rejected checksum", good],
        );
        check(
            df13,
            &format!("{bad_checksum} 55 {DF13_VECTOR}"),
            &["rejected checksum", "garbage 1", good],
        );
        check(
            df13,
            &DF13_VECTOR.replace("67 03", "67 04"),
            &["rejected malformed: missing end marker"],
        );
        check(
            df13,
            &format!("00 02 00 0D 00 0D {DF13_VECTOR}"),
            &["rejected malformed: data length out of range", good],
        );
        check(
            df13,
            &format!("00 02 00 0D 02 01 {DF13_VECTOR}"),
            &["rejected malformed: data length out of range", good],
        );
        // A header claiming more data than follows swallows the good packet until its own end is due, then resyncs.
        let long_header = format!("00 02 00 0D 00 20 {DF13_VECTOR} {}", "EE ".repeat(40));
        check(
            df13,
            &long_header,
            &[
                "rejected malformed: missing end marker",
                good,
                "finish garbage 28",
            ],
        );
        check(df13, "00 02 00 0D 00 0E 20 24", &["finish truncated 8/22"]);
        check(df13, "00 02 00", &["finish truncated 3/22"]);
        check(
            df13,
            &format!("{DF13_VECTOR} 00 02 00 0D 01 00 20"),
            &[good, "finish truncated 7/264"],
        );
        check(
            df13,
            &format!("{DF13_VECTOR} 11 22"),
            &[good, "finish garbage 2"],
        );
        check(df13, "", &[]);
    }

    #[test]
    fn df13_longer_data_section() {
        check(df13, &df13_packet("20 24 03 15 10 20 30 00 02 00 00 48 00 61 AA BB"), &["reading spo2=97 pulse_rate=72 flags=[smartpoint] at=2024-03-15T10:20:30+00:00 source=device"]);
    }

    #[test]
    fn df13_reading_fields() {
        let reading = readings(df13, &bytes_of(DF13_VECTOR)).remove(0);
        assert_eq!(reading.kind, Kind::PulseOximetry);
        assert_eq!(reading.raw, bytes_of(DF13_VECTOR));
        assert_eq!(reading.received_at, received_at());
        assert_eq!(reading.values[0].measure, &codes::SPO2);
        assert_eq!(reading.values[1].measure, &codes::PULSE_RATE_OXIMETER);
        assert_eq!(
            reading.record_key.as_deref(),
            Some("nonin-df13:20240315102030000200004861")
        );
    }

    #[test]
    fn df13_record_key_ignores_memory_bit_and_receive_time() {
        let live = bytes_of(&df13_packet("20 24 03 15 10 20 30 00 02 00 00 48 00 61"));
        let stored = bytes_of(&df13_packet("20 24 03 15 10 20 30 00 02 10 00 48 00 61"));
        let other = bytes_of(&df13_packet("20 24 03 15 10 20 31 00 02 10 00 48 00 61"));
        let key = |bytes: &[u8], received_at: DateTime<Utc>| {
            let mut decoder = DataFormat13Decoder::default();
            let time_zone = utc();
            let context = DecodeContext::trusted(received_at, &time_zone);
            match decoder.feed(bytes, &context).as_slice() {
                [DecodeEvent::Reading(reading)] => reading.record_key.clone().unwrap(),
                other => panic!("expected one reading, got {other:?}"),
            }
        };
        let later = received_at() + TimeDelta::days(3);
        assert_eq!(key(&live, received_at()), key(&stored, later));
        assert_ne!(key(&live, received_at()), key(&other, received_at()));
    }

    #[test]
    fn df13_records_of_a_clock_never_set_are_not_named_by_their_stamp() {
        let check = |data: &str, expected: Option<&str>| {
            let reading = readings(df13, &bytes_of(&df13_packet(data))).remove(0);
            assert_eq!(reading.record_key.as_deref(), expected, "{data}");
        };
        check(
            "20 24 03 15 10 20 30 00 02 00 00 48 00 61",
            Some("nonin-df13:20240315102030000200004861"),
        );
        check("20 00 00 00 00 00 00 00 02 00 00 48 00 61", None);
        check("20 00 01 01 00 00 00 00 02 00 00 48 00 61", None);
        check("20 24 13 15 10 20 30 00 02 00 00 48 00 61", None);
    }

    // ----- DF8 -----

    #[test]
    fn df8_vectors_and_values() {
        let at = "at=2024-03-15T12:00:00+00:00 source=hub";
        check(
            df8,
            "80 48 61 00",
            &[&format!("reading spo2=97 pulse_rate=72 flags=[] {at}")],
        );
        check(
            df8,
            "81 02 5F 00",
            &[&format!("reading spo2=95 pulse_rate=130 flags=[] {at}")],
        );
        check(
            df8,
            "83 7F 7F 00",
            &[&format!(
                "reading spo2=missing pulse_rate=missing flags=[] {at}"
            )],
        );
        check(
            df8,
            "80 48 7F 00",
            &[&format!("reading spo2=missing pulse_rate=72 flags=[] {at}")],
        );
        check(
            df8,
            "82 2C 64 00",
            &[&format!("reading spo2=100 pulse_rate=300 flags=[] {at}")],
        );
        check(
            df8,
            "80 00 00 00",
            &[&format!(
                "reading spo2=missing pulse_rate=missing flags=[] {at}"
            )],
        );
        check(
            df8,
            "80 00 61 00",
            &[&format!("reading spo2=97 pulse_rate=missing flags=[] {at}")],
        );
        check(
            df8,
            "80 48 00 00",
            &[&format!("reading spo2=missing pulse_rate=72 flags=[] {at}")],
        );
        check(
            df8,
            "82 2D 61 00",
            &["rejected malformed: pulse rate out of range"],
        );
        check(
            df8,
            "83 7E 61 00",
            &["rejected malformed: pulse rate out of range"],
        );
        check(
            df8,
            "80 48 65 00",
            &["rejected malformed: spo2 out of range"],
        );
        check(
            df8,
            "80 48 7E 00",
            &["rejected malformed: spo2 out of range"],
        );
    }

    #[test]
    fn df8_flags() {
        let cases = [
            ("A0 48 61 00", "out_of_track"),
            ("90 48 61 00", "low_perfusion"),
            ("88 48 61 00", "marginal_perfusion"),
            ("84 48 61 00", "artifact"),
            ("80 48 61 20", "smartpoint"),
            ("80 48 61 08", "sensor_alarm"),
            ("80 48 61 01", "low_battery"),
            ("BC 48 61 29", "out_of_track,low_perfusion,marginal_perfusion,artifact,smartpoint,sensor_alarm,low_battery"),
            ("C0 48 61 56", ""),
        ];
        for (frame, flags) in cases {
            check(df8, frame, &[&format!("reading spo2=97 pulse_rate=72 flags=[{flags}] at=2024-03-15T12:00:00+00:00 source=hub")]);
        }
    }

    #[test]
    fn df8_framing() {
        let good = "reading spo2=97 pulse_rate=72 flags=[] at=2024-03-15T12:00:00+00:00 source=hub";
        check(df8, "80 48 61 00 80 48 61 00", &[good, good]);
        check(df8, "12 34 80 48 61 00", &["garbage 2", good]);
        check(df8, "48 61 00 80 48 61 00", &["garbage 3", good]);
        check(df8, "80 48 80 48 61 00", &["garbage 2", good]);
        check(
            df8,
            "80 48 65 00 80 48 61 00",
            &["rejected malformed: spo2 out of range", good],
        );
        check(
            df8,
            "80 48 65 00 01 80 48 61 00",
            &["rejected malformed: spo2 out of range", "garbage 1", good],
        );
        check(df8, "80 48 61 00 80 48", &[good, "finish truncated 2/4"]);
        check(df8, "80 48 61 00 11 22", &[good, "finish garbage 2"]);
    }

    // ----- DF2 / DF7 -----

    fn frame(variant: Df2Variant, status: u8, pleth: u16, float: u8) -> Vec<u8> {
        let [pleth_hi, pleth_lo] = pleth.to_be_bytes();
        let mut bytes = match variant {
            Df2Variant::Df2 => vec![0x01, status, pleth_lo, float],
            Df2Variant::Df7 => vec![status, pleth_hi, pleth_lo, float],
        };
        bytes.push(bytes.iter().fold(0u8, |sum, byte| sum.wrapping_add(*byte)));
        bytes
    }

    /// A 25-frame packet; `status` goes into every frame (SYNC set on frame 1 only), `overrides` are
    /// (frame number, status) pairs replacing it.
    fn packet(
        variant: Df2Variant,
        spo2: u8,
        pulse: u16,
        status: u8,
        overrides: &[(usize, u8)],
    ) -> Vec<u8> {
        let pulse_msb = u8::try_from(pulse >> 7).unwrap();
        let pulse_lsb = u8::try_from(pulse & 0x7F).unwrap();
        (1..=DF2_FRAMES_PER_PACKET)
            .flat_map(|number| {
                let float = match number {
                    1 | 14 | 20 | 22 => pulse_msb,
                    2 | 15 | 21 | 23 => pulse_lsb,
                    3 | 9 | 10 | 11 | 16 | 17 => spo2,
                    _ => 0x00,
                };
                let status = overrides
                    .iter()
                    .find(|(n, _)| *n == number)
                    .map_or(status, |(_, s)| *s);
                let status = if number == 1 {
                    status | STATUS_SYNC
                } else {
                    status & !STATUS_SYNC
                };
                frame(variant, status, u16::try_from(number * 300).unwrap(), float)
            })
            .collect()
    }

    fn hub_reading(values: &str, flags: &str) -> String {
        format!("reading {values} flags=[{flags}] at=2024-03-15T12:00:00+00:00 source=hub")
    }

    #[test]
    fn df2_and_df7_packets() {
        for (make, variant) in [
            (df2 as MakeDecoder, Df2Variant::Df2),
            (df7, Df2Variant::Df7),
        ] {
            let normal = 0x82;
            check_bytes(
                make,
                &packet(variant, 97, 72, normal, &[]),
                &[&hub_reading("spo2=97 pulse_rate=72", "")],
            );
            check_bytes(
                make,
                &packet(variant, 95, 130, normal, &[]),
                &[&hub_reading("spo2=95 pulse_rate=130", "")],
            );
            check_bytes(
                make,
                &packet(variant, 100, 300, normal, &[]),
                &[&hub_reading("spo2=100 pulse_rate=300", "")],
            );
            check_bytes(
                make,
                &packet(variant, 127, 511, normal, &[]),
                &[&hub_reading("spo2=missing pulse_rate=missing", "")],
            );
            check_bytes(
                make,
                &packet(variant, 0, 0, normal, &[]),
                &[&hub_reading("spo2=missing pulse_rate=missing", "")],
            );
            check_bytes(
                make,
                &packet(variant, 0, 72, normal, &[]),
                &[&hub_reading("spo2=missing pulse_rate=72", "")],
            );
            check_bytes(
                make,
                &packet(variant, 97, 0, normal, &[]),
                &[&hub_reading("spo2=97 pulse_rate=missing", "")],
            );
            check_bytes(
                make,
                &packet(variant, 101, 72, normal, &[]),
                &["rejected malformed: spo2 out of range"],
            );
            check_bytes(
                make,
                &packet(variant, 200, 72, normal, &[]),
                &["rejected malformed: spo2 out of range"],
            );
            check_bytes(
                make,
                &packet(variant, 97, 301, normal, &[]),
                &["rejected malformed: pulse rate out of range"],
            );
            let two = [
                packet(variant, 97, 72, normal, &[]),
                packet(variant, 96, 80, normal, &[]),
            ]
            .concat();
            check_bytes(
                make,
                &two,
                &[
                    &hub_reading("spo2=97 pulse_rate=72", ""),
                    &hub_reading("spo2=96 pulse_rate=80", ""),
                ],
            );
        }
    }

    #[test]
    fn df2_flags() {
        let cases: &[(u8, Overrides, &str)] = &[
            (0x80, &[], ""),
            (0x82, &[], ""),
            (0x82, &[(9, 0x84)], "low_perfusion"),
            (0x82, &[(9, 0x86)], "marginal_perfusion"),
            (0x84, &[(9, 0x82)], ""),
            (0x82, &[(4, 0xC2)], "sensor_disconnected"),
            (0x82, &[(25, 0xA2)], "artifact"),
            (0x82, &[(1, 0x92)], "out_of_track"),
            (0x82, &[(12, 0x8A)], "sensor_alarm"),
            (
                0xFE,
                &[],
                "sensor_disconnected,artifact,out_of_track,sensor_alarm,marginal_perfusion",
            ),
        ];
        for (status, overrides, flags) in cases {
            for (make, variant) in [
                (df2 as MakeDecoder, Df2Variant::Df2),
                (df7, Df2Variant::Df7),
            ] {
                let bytes = packet(variant, 97, 72, *status, overrides);
                check_bytes(
                    make,
                    &bytes,
                    &[&hub_reading("spo2=97 pulse_rate=72", flags)],
                );
            }
        }
    }

    #[test]
    fn df2_framing() {
        for (make, variant) in [
            (df2 as MakeDecoder, Df2Variant::Df2),
            (df7, Df2Variant::Df7),
        ] {
            let good = packet(variant, 97, 72, 0x82, &[]);
            let reading = hub_reading("spo2=97 pulse_rate=72", "");
            let frames = |range: std::ops::Range<usize>| {
                good.get(range.start * 5..range.end * 5).unwrap().to_vec()
            };

            // Frames before the first SYNC frame are garbage, as are stray bytes.
            check_bytes(
                make,
                &[frames(20..25), good.clone()].concat(),
                &["garbage 25", &reading],
            );
            check_bytes(
                make,
                &[vec![0x00, 0x13, 0x7F], good.clone()].concat(),
                &["garbage 3", &reading],
            );

            // A bad checksum or a broken frame inside a packet aborts it; the rest of it is skipped up to the next SYNC.
            let mut bad_checksum = good.clone();
            bad_checksum[5 * 10 + 4] ^= 0x01;
            check_bytes(
                make,
                &[bad_checksum, good.clone()].concat(),
                &["rejected checksum", "garbage 70", &reading],
            );
            let broken = [
                frames(0..5),
                frame(variant, 0x02, 0, 0),
                frames(6..25),
                good.clone(),
            ]
            .concat();
            check_bytes(
                make,
                &broken,
                &[
                    "rejected malformed: packet interrupted",
                    "garbage 95",
                    &reading,
                ],
            );
            let cut = [frames(0..12), good.clone()].concat();
            check_bytes(
                make,
                &cut,
                &["rejected malformed: packet broke off", &reading],
            );

            // A bad frame right before a SYNC frame costs no garbage: its bytes are already reported.
            let bad_last = [frames(0..24), vec![0x00; 5], good.clone()].concat();
            check_bytes(
                make,
                &bad_last,
                &["rejected malformed: packet interrupted", &reading],
            );

            check_bytes(make, &frames(0..3), &["finish truncated 15/125"]);
            check_bytes(make, good.get(..17).unwrap(), &["finish truncated 17/125"]);
            check_bytes(make, good.get(..2).unwrap(), &["finish truncated 2/5"]);
            check_bytes(
                make,
                &[good.clone(), vec![0x00, 0x00]].concat(),
                &[&reading, "finish garbage 2"],
            );
        }
    }

    #[test]
    fn df2_reading_fields() {
        let bytes = packet(Df2Variant::Df7, 97, 72, 0x82, &[]);
        let reading = readings(df7, &bytes).remove(0);
        assert_eq!(reading.raw, bytes);
        assert_eq!(reading.raw.len(), DF2_PACKET);
        assert_eq!(reading.time_source, TimeSource::Hub);
        assert_eq!(reading.record_key, None);
        assert_eq!(reading.measured_at, received_at().fixed_offset());
    }

    #[test]
    fn buffers_stay_bounded() {
        let mut decoder = DataFormat13Decoder::default();
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let mut bytes = bytes_of("00 02 00 0D 02 00");
        bytes.extend(std::iter::repeat_n(0x00, 2000));
        for byte in &bytes {
            decoder.feed(std::slice::from_ref(byte), &context);
            assert!(decoder.scanner.buf.len() <= DF13_HEADER + DF13_MAX_DATA + DF13_TRAILER);
        }
    }

    #[test]
    fn finish_clears_state() {
        let mut decoder = DataFormat8Decoder::default();
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        assert!(decoder.feed(&bytes_of("11 80 48"), &context).is_empty());
        assert!(matches!(
            decoder.finish(),
            Some(FrameError::Truncated {
                have: 2,
                need: 4,
                ..
            })
        ));
        assert_eq!(decoder.finish(), None);
        let events = decoder.feed(&bytes_of("61 00 80 48 61 00"), &context);
        assert_eq!(
            events.iter().map(render).collect::<Vec<_>>(),
            ["garbage 2", &hub_reading("spo2=97 pulse_rate=72", "")]
        );
    }

    const ALL: [MakeDecoder; 4] = [df13, df8, df2, df7];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_bytes_are_safe(bytes in prop::collection::vec(any::<u8>(), 0..4096), chunk in 1usize..600) {
            for (index, make) in ALL.into_iter().enumerate() {
                let whole = decode(make, &bytes, usize::MAX, &utc());
                prop_assert_eq!(&decode(make, &bytes, chunk, &utc()), &whole);
                let (events, _) = whole;
                for event in &events {
                    match event {
                        DecodeEvent::Reading(reading) => {
                            // Only DF8 has no checksum, so only DF8 may find readings in noise.
                            prop_assert_eq!(index, 1);
                            for value in &reading.values {
                                prop_assert!(value.value.is_none_or(|number| (0.0..=300.0).contains(&number)));
                            }
                        }
                        DecodeEvent::Rejected(FrameError::Garbage { count }) => prop_assert!(*count > 0),
                        DecodeEvent::Rejected(_) => {}
                    }
                }
            }
        }

        #[test]
        fn a_good_frame_survives_surrounding_noise(
            before in prop::collection::vec(any::<u8>(), 0..1024),
            after in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let cases: [(MakeDecoder, Vec<u8>); 4] = [
                (df13, bytes_of(DF13_VECTOR)),
                (df8, bytes_of("80 48 61 00")),
                (df2, packet(Df2Variant::Df2, 97, 72, 0x82, &[])),
                (df7, packet(Df2Variant::Df7, 97, 72, 0x82, &[])),
            ];
            for (make, good) in cases {
                // Enough filler after the frame for any frame candidate started in the noise to be resolved.
                let bytes = [before.clone(), good, after.clone(), vec![0xEE; 600]].concat();
                let found = readings(make, &bytes)
                    .iter()
                    .any(|reading| reading.values.iter().map(render_value).collect::<Vec<_>>() == ["spo2=97", "pulse_rate=72"]);
                prop_assert!(found);
            }
        }
    }
}

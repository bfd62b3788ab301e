//! The Contec CMS50D+/E/F "7D 81" protocol: typed messages whose payload bytes all carry bit 7 on the
//! wire, with their real most significant bits gathered in the second byte; and the hub's side of the
//! dialog: download the sessions the oximeter stored, then start the live stream and keep it alive.
//!
//! A message starts with its type byte, the only byte below 0x80, which is also how the decoder finds the
//! next message after garbage. Live data (type 0x01) becomes a reading at any time. Replies to the hub's
//! questions and stored-session data count only while the dialog waits for them, so a stray or noisy
//! message can never start a download or be taken for a recorded sample.
//!
//! # The dialog
//!
//! 1. On the first poll the hub stops both streams (`A7`, `A2`) and asks how many sessions are stored (`A3`,
//!    answered by type 0x0A; a count above [`MAX_SESSIONS`] is noise).
//! 2. For each session, oldest index first, it asks the start time (`A5 <index>`, answered by 0x07 with the
//!    date and 0x12 with the time). One without a date (a CMS50D+ has no clock), or whose start fails the
//!    project's device-clock rule, is reported and skipped, since its samples could only be given invented
//!    times.
//! 3. It asks how many bytes the session holds (`A4`, answered by 0x08, which echoes the session in byte 3:
//!    a u32 at bytes 4 to 7, two bytes a sample in type 0x0F and four in type 0x09). A session whose start
//!    and length are in the checkpoint (the sessions already downloaded, on this connection or an earlier
//!    one) is skipped: a start alone does not name a session, since a clock set back records a second one
//!    from the same start. Otherwise the hub asks for its data (`A6 <index>`). Type 0x0F (three SpO2/pulse
//!    pairs) or 0x09 (one pair and a perfusion index) follow, one sample per second from the session start
//!    (as OSCAR and the other public readers take it).
//! 4. The samples are held until the session is known to have arrived whole and clean: its length reached
//!    (the padding of the last message dropped; the next question goes out at once) and the next message,
//!    usually the answer to that question, starting cleanly, or the line pausing for [`DATA_PAUSE`]. Then
//!    they become readings, and the session joins the checkpoint. A session whose length does not come is
//!    not downloaded, since nothing could show its data whole; nor is one whose length no CMS50 records, or
//!    whose samples would run more than ten minutes past the hub's time (its clock is off after all).
//! 5. A byte lost or added anywhere from a start answer on (garbage, a message broken off by the next), data
//!    stopping short of the length, or more data than the length: nothing of the session is published. The
//!    hub stops both streams (`A7`, `A2`), waits for the line to fall quiet ([`DATA_PAUSE`], at most
//!    [`DRAIN_LIMIT`]), and starts the dialog again, [`RETRIES`] times a connection at most.
//! 6. After the last session the hub starts the live stream (`A1`), sends a keep-alive (`AF`) every
//!    [`KEEP_ALIVE_EVERY`], and starts the stream again when it falls silent for [`SILENCE_RESTART`]. A
//!    device that does not answer the count or a start within [`ANSWER_WAIT`] (an older firmware without
//!    storage) gets the live stream at once; a session that sends no data is reported and passed over.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc};

use super::ieee11073::{push_flags, DeviceDateTime};
use super::{
    hex_of, CommandPurpose, DecodeContext, DecodeEvent, FrameError, HostCommand, Polled,
    StreamDecoder,
};
use crate::model::codes;
use crate::model::measurement_time::{self, HubClock};
use crate::model::reading::{Flag, Kind, Reading, TimeSource, Value};

const LIVE: u8 = 0x01;
const STORED_PAIR: u8 = 0x09;
const SESSION_DATE: u8 = 0x07;
const SESSION_COUNT: u8 = 0x0A;
const SESSION_LENGTH: u8 = 0x08;
const STORED_TRIPLE: u8 = 0x0F;
const SESSION_TIME: u8 = 0x12;
/// A message of a type not in [`message_length`] longer than this is not one; the bytes are dropped as garbage.
const MAX_MESSAGE: usize = 32;
const PULSE_INVALID: u8 = 0xFF;

/// Starts the live stream.
pub const START_LIVE: u8 = 0x21;
/// Stops the live stream ("hello 2").
pub const STOP_LIVE: u8 = 0x22;
/// Asks how many sessions are stored.
pub const ASK_SESSION_COUNT: u8 = 0x23;
/// Asks how many bytes a stored session holds.
pub const ASK_SESSION_LENGTH: u8 = 0x24;
/// Asks when a stored session started.
pub const ASK_SESSION_START: u8 = 0x25;
/// Asks for a stored session's samples.
pub const ASK_SESSION_DATA: u8 = 0x26;
/// Stops a stored-data transfer ("hello 1").
pub const STOP_STORED: u8 = 0x27;
/// Keeps the live stream going; without it the device stops after about 30 s.
pub const KEEP_ALIVE: u8 = 0x2F;

/// How long the hub waits for the answer to a question before it gives up on it.
pub const ANSWER_WAIT: TimeDelta = TimeDelta::seconds(3);
/// A pause this long in a session's data ends the session.
pub const DATA_PAUSE: TimeDelta = TimeDelta::seconds(2);
pub const KEEP_ALIVE_EVERY: TimeDelta = TimeDelta::seconds(5);
/// A live stream silent this long is started again.
pub const SILENCE_RESTART: TimeDelta = TimeDelta::seconds(5);

/// After a broken-off download the hub waits at most this long for the line to fall quiet.
pub const DRAIN_LIMIT: TimeDelta = TimeDelta::seconds(10);
/// How often one connection starts the dialog again after a broken-off download.
pub const RETRIES: u8 = 2;
/// More sessions than a CMS50 stores: a count above it is noise, and the checkpoint remembers this many.
pub const MAX_SESSIONS: usize = 64;
const REMEMBERED_SESSIONS: usize = MAX_SESSIONS;
/// More stored bytes than any CMS50 records in one session (72 hours at four bytes a sample): a longer
/// length is noise, and holding its samples would grow without bound.
const MAX_SESSION_BYTES: u32 = 72 * 3600 * 4;

/// The recorded samples are one a second.
const SAMPLE_INTERVAL: TimeDelta = TimeDelta::seconds(1);
const CHECKPOINT_KEY: &str = "stored_sessions=";

/// A host command: `7D 81 <0x80|command> 80 80 80 80 80 80`.
pub fn command(code: u8) -> [u8; 9] {
    command_with(code, 0)
}

/// A host command whose parameter (a session index) travels in byte 4, OR'ed with 0x80 like every byte.
pub fn command_with(code: u8, parameter: u8) -> [u8; 9] {
    [
        0x7D,
        0x81,
        0x80 | code,
        0x80,
        0x80 | (parameter & 0x7F),
        0x80,
        0x80,
        0x80,
        0x80,
    ]
}

/// The length of the messages of a type, where it is known (OSCAR's table); other types run to the next
/// type byte.
fn message_length(kind: u8) -> Option<usize> {
    Some(match kind {
        0x01..=0x05 | 0x11 | 0x13 | 0x14 => 9,
        0x06 | 0x0A | 0x0B => 4,
        0x07 | 0x08 | 0x0F | 0x12 => 8,
        0x09 => 6,
        0x0C => 2,
        0x0E | 0x10 => 3,
        _ => return None,
    })
}

/// Where the dialog stands.
#[derive(Debug, Clone, PartialEq)]
enum Dialog {
    /// Nothing sent yet.
    NotStarted,
    AwaitingCount {
        since: DateTime<Utc>,
    },
    AwaitingStart {
        since: DateTime<Utc>,
        index: u8,
        count: u8,
        /// `None` until the date message came; `Some(None)` when it came without a usable date.
        date: Option<Option<NaiveDate>>,
        /// Likewise for the time message.
        time: Option<Option<NaiveTime>>,
    },
    AwaitingLength {
        since: DateTime<Utc>,
        index: u8,
        count: u8,
        start: DateTime<chrono::FixedOffset>,
    },
    Receiving {
        /// The last data message, or the request when none came yet.
        since: DateTime<Utc>,
        /// Shared, so that looking at the dialog (it is cloned for every message and poll) does not copy
        /// a night's samples each time: that made a download quadratic in its length.
        session: Arc<Download>,
    },
    /// The session's stored length arrived; it is published once the next message starts cleanly or the
    /// line pauses, which shows that no byte of its last message was lost or added.
    Confirming {
        since: DateTime<Utc>,
        session: Arc<Download>,
    },
    /// After a broken-off download: the device was told to stop sending stored data, and the hub waits
    /// for the line to fall quiet before it asks anything, so the rest of the broken session cannot be
    /// taken for an answer.
    Draining {
        since: DateTime<Utc>,
        quiet_since: DateTime<Utc>,
    },
    Live {
        last_heard: DateTime<Utc>,
        last_keep_alive: DateTime<Utc>,
    },
}

impl Dialog {
    fn awaiting_start(index: u8, count: u8, now: DateTime<Utc>) -> Dialog {
        Dialog::AwaitingStart {
            since: now,
            index,
            count,
            date: None,
            time: None,
        }
    }

    fn live(now: DateTime<Utc>) -> Dialog {
        Dialog::Live {
            last_heard: now,
            last_keep_alive: now,
        }
    }
}

/// A stored session being downloaded. Its samples are held until the whole session arrived cleanly, so a
/// damaged download publishes nothing rather than values shifted in time.
#[derive(Debug, Clone, PartialEq)]
struct Download {
    index: u8,
    count: u8,
    start: DateTime<chrono::FixedOffset>,
    /// The stored length in bytes the device gave (`A4`): 2 bytes a sample in type 0x0F, 4 in type 0x09.
    length: u32,
    /// Stored bytes read so far, counted the same way.
    received: u32,
    /// (SpO2, pulse, index into `messages`) for each sample so far.
    samples: Vec<(u8, u8, u32)>,
    /// The data messages, for the readings' `raw`.
    messages: Vec<Vec<u8>>,
}

impl Download {
    fn complete(&self) -> bool {
        self.received >= self.length
    }
}

#[derive(Debug)]
pub struct ContecDecoder {
    buffer: Vec<u8>,
    skipped: usize,
    dialog: Dialog,
    /// The sessions downloaded, on this connection or an earlier one: their start (device wall time) and
    /// stored length. An older version's checkpoint gave starts alone, which stand for any length.
    downloaded: Vec<(NaiveDateTime, Option<u32>)>,
    /// How many more times this connection starts the dialog again after a broken-off download.
    retries_left: u8,
    outgoing: Vec<HostCommand>,
    /// Whether the hub trusted its clock at the last bytes fed; an untrusted clock judges no recording late.
    hub_clock: HubClock,
    /// The hub's wall clock at the last bytes fed or poll, for the times of readings and the judgement of
    /// recordings; the dialog's own timers run on the steady clock.
    wall: DateTime<Utc>,
}

impl Default for ContecDecoder {
    fn default() -> Self {
        ContecDecoder {
            buffer: Vec::new(),
            skipped: 0,
            dialog: Dialog::NotStarted,
            downloaded: Vec::new(),
            retries_left: RETRIES,
            outgoing: Vec::new(),
            hub_clock: HubClock::Trusted,
            wall: DateTime::UNIX_EPOCH,
        }
    }
}

/// Restores the payload bytes: bit i of byte 1 is the most significant bit of byte i + 2.
fn unpack(message: &[u8]) -> Vec<u8> {
    let high = message.get(1).copied().unwrap_or(0);
    message
        .iter()
        .enumerate()
        .map(|(index, byte)| match index {
            0 | 1 => *byte,
            // Only bytes 2 to 8 have a high bit in byte 1; longer (unknown) messages keep their low bits.
            _ => (byte & 0x7F) | ((high.checked_shr(index as u32 - 2).unwrap_or(0) & 1) << 7),
        })
        .collect()
}

fn spo2_value(spo2: u8) -> Value {
    // 0 is what the device shows without a finger, as much "no reading" as its 0x7F marker; anything above
    // 100 (the marker among them) is no saturation at all.
    Value::reported(&codes::SPO2, f64::from(spo2), spo2 == 0 || spo2 > 100)
}

fn pulse_value(pulse: u8) -> Value {
    Value::reported(
        &codes::PULSE_RATE_OXIMETER,
        f64::from(pulse),
        pulse == 0 || pulse == PULSE_INVALID,
    )
}

/// Live data: byte 2 holds the signal strength and status bits, byte 3 the pleth and the "searching"
/// bit, byte 5 the pulse rate and byte 6 the SpO2 (bit names as CMS50Dplus7 documents them). The
/// pulse-beep bit (byte 2 bit 6) marks a heartbeat, not a state, and is left out.
fn live_reading(message: &[u8], context: &DecodeContext<'_>) -> Reading {
    let bytes = unpack(message);
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, message);
    reading.values = vec![spo2_value(bytes[6]), pulse_value(bytes[5])];
    push_flags(
        &mut reading.flags,
        &[
            (bytes[2] & 0x10 != 0, Flag::PulseSearchingTooLong),
            (bytes[2] & 0x20 != 0, Flag::LowSpo2Alarm),
            (bytes[2] & 0x80 != 0, Flag::SensorAlarm),
            (bytes[3] & 0x80 != 0, Flag::PulseSearching),
        ],
    );
    reading
}

/// A recorded sample: device time from the session start, a record key that names it within the session.
fn stored_reading(
    message: &[u8],
    spo2: u8,
    pulse: u8,
    start: DateTime<chrono::FixedOffset>,
    sample: u32,
    received_at: DateTime<Utc>,
) -> Reading {
    let measured_at = start + SAMPLE_INTERVAL * sample as i32;
    let mut reading = Reading {
        kind: Kind::PulseOximetry,
        measured_at,
        received_at,
        time_source: TimeSource::Device,
        values: vec![spo2_value(spo2), pulse_value(pulse)],
        flags: vec![Flag::StoredSession],
        raw: message.to_vec(),
        user_id: None,
        // The sample's time and values: a clock set back can record a second session over the same seconds.
        record_key: Some(format!(
            "contec-stored:{}:{spo2}:{pulse}",
            measured_at.naive_local().format("%Y-%m-%dT%H:%M:%S")
        )),
        ..Reading::at_hub_time(Kind::PulseOximetry, received_at, message)
    };
    reading.device_time = Some(measured_at.naive_local());
    reading
}

impl ContecDecoder {
    /// Whether a recording's time lies after the hub's, by the project's rule: only a trusted hub clock
    /// can tell.
    fn runs_past_hub(&self, time: DateTime<chrono::FixedOffset>) -> bool {
        measurement_time::runs_past_hub(time, self.wall, self.hub_clock)
    }

    fn send(&mut self, bytes: [u8; 9], purpose: CommandPurpose) {
        self.outgoing.push(HostCommand {
            bytes: bytes.to_vec(),
            purpose,
        });
    }

    /// Stops both streams and asks how many sessions are stored.
    fn ask_count(&mut self, now: DateTime<Utc>) {
        self.send(command(STOP_STORED), CommandPurpose::Dialog);
        self.send(command(STOP_LIVE), CommandPurpose::Dialog);
        self.send(command(ASK_SESSION_COUNT), CommandPurpose::Dialog);
        self.dialog = Dialog::AwaitingCount { since: now };
    }

    fn ask_start(&mut self, index: u8, count: u8, now: DateTime<Utc>) {
        self.send(
            command_with(ASK_SESSION_START, index),
            CommandPurpose::Dialog,
        );
        self.dialog = Dialog::awaiting_start(index, count, now);
    }

    fn go_live(&mut self, now: DateTime<Utc>) {
        self.send(command(START_LIVE), CommandPurpose::Dialog);
        self.dialog = Dialog::live(now);
    }

    /// On to the session after `index`, or, after the last, to the live stream.
    fn next_session(&mut self, index: u8, count: u8, now: DateTime<Utc>) {
        self.ask_next(index, count);
        self.expect_next(index, count, now);
    }

    /// Sends the question that follows session `index`: the next session's start, or the live stream.
    fn ask_next(&mut self, index: u8, count: u8) {
        if index.saturating_add(1) < count {
            self.send(
                command_with(ASK_SESSION_START, index + 1),
                CommandPurpose::Dialog,
            );
        } else {
            self.send(command(START_LIVE), CommandPurpose::Dialog);
        }
    }

    /// Waits for the answer to [`Self::ask_next`].
    fn expect_next(&mut self, index: u8, count: u8, now: DateTime<Utc>) {
        self.dialog = if index.saturating_add(1) < count {
            Dialog::awaiting_start(index + 1, count, now)
        } else {
            Dialog::live(now)
        };
    }

    fn session_done(&mut self, start: NaiveDateTime, length: u32) {
        if !self.was_downloaded(start, Some(length)) {
            self.downloaded.push((start, Some(length)));
        }
        let surplus = self.downloaded.len().saturating_sub(REMEMBERED_SESSIONS);
        self.downloaded.drain(..surplus);
    }

    /// Whether the session of this start and length (`None`: not known yet) was downloaded. A start the
    /// checkpoint holds without a length matches any.
    fn was_downloaded(&self, start: NaiveDateTime, length: Option<u32>) -> bool {
        self.downloaded.iter().any(|(done, done_length)| {
            *done == start && (done_length.is_none() || *done_length == length)
        })
    }

    /// Both halves of a session's start arrived: ask its length, or skip it.
    fn start_known(
        &mut self,
        index: u8,
        count: u8,
        local: Option<NaiveDateTime>,
        context: &DecodeContext<'_>,
        events: &mut Vec<DecodeEvent>,
        message: &[u8],
    ) {
        let now = context.steady;
        let Some(local) = local else {
            events.push(invalid(
                format!("stored session {index} has no usable start (a year of 0: the oximeter keeps no clock; or an impossible date or time); not downloaded"),
                message,
            ));
            return self.next_session(index, count, now);
        };
        if self.was_downloaded(local, None) {
            return self.next_session(index, count, now);
        }
        // The project's rule for device clocks; a recording whose start fails it cannot fall back to the
        // hub's time as a single measurement can, since that would invent the time of every sample.
        let verdict = measurement_time::judge(DeviceDateTime::Known(local), context);
        let start = verdict.measured_at;
        if verdict.time_source != TimeSource::Device {
            events.push(invalid(
                format!(
                    "stored session {index} starts at {local}, which the hub cannot trust ({}); not downloaded",
                    verdict.flag.unwrap_or(Flag::DeviceClockInvalid)
                ),
                message,
            ));
            return self.next_session(index, count, now);
        }
        self.send(
            command_with(ASK_SESSION_LENGTH, index),
            CommandPurpose::Dialog,
        );
        self.dialog = Dialog::AwaitingLength {
            since: now,
            index,
            count,
            start,
        };
    }

    /// The session's length arrived: ask for its data, unless the length is one no CMS50 records or one
    /// whose samples would run past the hub's time whatever their type.
    fn length_known(
        &mut self,
        (index, count, start): (u8, u8, DateTime<chrono::FixedOffset>),
        length: u32,
        now: DateTime<Utc>,
        events: &mut Vec<DecodeEvent>,
    ) {
        if self.was_downloaded(start.naive_local(), Some(length)) {
            return self.next_session(index, count, now);
        }
        let shortest = start + SAMPLE_INTERVAL * (length / 4) as i32;
        let problem = if length > MAX_SESSION_BYTES {
            Some(format!(
                "claims {length} stored bytes, more than a CMS50 records"
            ))
        } else if self.runs_past_hub(shortest) {
            Some(format!(
                "would run to {} at least, after the hub's time, so its clock cannot be trusted",
                shortest.naive_local()
            ))
        } else {
            None
        };
        if let Some(problem) = problem {
            events.push(invalid(
                format!("stored session {index} {problem}; not downloaded"),
                &[],
            ));
            return self.next_session(index, count, now);
        }
        let session = Download {
            index,
            count,
            start,
            length,
            received: 0,
            samples: Vec::new(),
            messages: Vec::new(),
        };
        self.ask_data(session, now, events);
    }

    /// Asks for the session's data.
    fn ask_data(&mut self, session: Download, now: DateTime<Utc>, events: &mut Vec<DecodeEvent>) {
        if session.complete() {
            // An empty session: nothing to fetch.
            return self.publish(&session, now, events, false);
        }
        self.send(
            command_with(ASK_SESSION_DATA, session.index),
            CommandPurpose::Dialog,
        );
        self.dialog = Dialog::Receiving {
            since: now,
            session: Arc::new(session),
        };
    }

    /// The session arrived whole and cleanly: its samples become readings, and it joins the checkpoint.
    /// `asked`: the question after it was sent already.
    fn publish(
        &mut self,
        session: &Download,
        now: DateTime<Utc>,
        events: &mut Vec<DecodeEvent>,
        asked: bool,
    ) {
        let last = session.start + SAMPLE_INTERVAL * session.samples.len() as i32;
        if self.runs_past_hub(last) {
            events.push(invalid(
                format!(
                    "stored session {} would end at {}, after the hub's time; its clock cannot be trusted and it is not published",
                    session.index,
                    last.naive_local()
                ),
                &[],
            ));
        } else {
            for (sample, (spo2, pulse, message)) in session.samples.iter().enumerate() {
                events.push(DecodeEvent::Reading(stored_reading(
                    &session.messages[*message as usize],
                    *spo2,
                    *pulse,
                    session.start,
                    sample as u32,
                    self.wall,
                )));
            }
            self.session_done(session.start.naive_local(), session.length);
        }
        if asked {
            self.expect_next(session.index, session.count, now);
        } else {
            self.next_session(session.index, session.count, now);
        }
    }

    /// The download was damaged (a byte lost or added) or broke off short of its length: nothing of it is
    /// published.
    fn break_off(
        &mut self,
        session: &Download,
        why: &str,
        now: DateTime<Utc>,
        events: &mut Vec<DecodeEvent>,
    ) {
        self.start_over(
            format!(
                "stored session {} {why} after {} stored bytes; nothing of it is published and it will be fetched again",
                session.index, session.received
            ),
            now,
            events,
        );
    }

    /// Something the device sent in the dialog was damaged: the device is told to stop both streams, and
    /// once the line is quiet the dialog starts again (a few times a connection; after that the next
    /// connection tries again).
    fn start_over(&mut self, report: String, now: DateTime<Utc>, events: &mut Vec<DecodeEvent>) {
        events.push(invalid(report, &[]));
        self.send(command(STOP_STORED), CommandPurpose::Dialog);
        self.send(command(STOP_LIVE), CommandPurpose::Dialog);
        self.dialog = Dialog::Draining {
            since: now,
            quiet_since: now,
        };
    }

    /// Moves the dialog on with a message the device sent, cleanly framed.
    fn heard(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
        events: &mut Vec<DecodeEvent>,
    ) {
        let now = context.steady;
        let kind = message[0];
        let bytes = unpack(message);
        match self.dialog.clone() {
            Dialog::NotStarted => {}
            Dialog::Live {
                last_keep_alive, ..
            } => {
                self.dialog = Dialog::Live {
                    last_heard: now,
                    last_keep_alive,
                };
            }
            Dialog::Draining { since, .. } => {
                self.dialog = Dialog::Draining {
                    since,
                    quiet_since: now,
                };
            }
            Dialog::AwaitingCount { .. } if kind == SESSION_COUNT => match bytes[3] {
                0 => self.go_live(now),
                count if usize::from(count) > MAX_SESSIONS => {
                    let reason = format!(
                        "a session count of {count} is more than a CMS50 stores; no download"
                    );
                    events.push(invalid(reason, message));
                    self.go_live(now);
                }
                count => self.ask_start(0, count, now),
            },
            Dialog::AwaitingCount { .. } => {}
            Dialog::AwaitingStart {
                since,
                index,
                count,
                mut date,
                mut time,
            } => {
                match kind {
                    SESSION_DATE => date = Some(session_date(&bytes)),
                    SESSION_TIME => time = Some(session_time(&bytes)),
                    _ => return,
                }
                match (date, time) {
                    (Some(date), Some(time)) => self.start_known(
                        index,
                        count,
                        date.zip(time).map(|(date, time)| date.and_time(time)),
                        context,
                        events,
                        message,
                    ),
                    _ => {
                        self.dialog = Dialog::AwaitingStart {
                            since,
                            index,
                            count,
                            date,
                            time,
                        }
                    }
                }
            }
            // The length answer echoes the session asked for in byte 3.
            Dialog::AwaitingLength {
                index,
                count,
                start,
                ..
            } if kind == SESSION_LENGTH && bytes[3] == index => {
                let length = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
                self.length_known((index, count, start), length, now, events);
            }
            Dialog::AwaitingLength { .. } => {}
            Dialog::Receiving { mut session, .. } => {
                // Drop the dialog's own reference first, so the samples below are appended in place.
                self.dialog = Dialog::NotStarted;
                let (pairs, record_size): (&[(usize, usize)], u32) = match kind {
                    STORED_TRIPLE => (&[(2, 3), (4, 5), (6, 7)], 2),
                    STORED_PAIR => (&[(2, 3)], 4),
                    // Another message before the stored length was reached: the data stopped short.
                    _ => return self.break_off(&session, "stopped short", now, events),
                };
                let session_mut = Arc::make_mut(&mut session);
                let message_index = session_mut.messages.len() as u32;
                session_mut.messages.push(message.to_vec());
                for (spo2, pulse) in pairs {
                    // The last message of a session is padded to three pairs; the stored length ends it.
                    if session_mut.complete() {
                        break;
                    }
                    session_mut
                        .samples
                        .push((bytes[*spo2], bytes[*pulse], message_index));
                    session_mut.received += record_size;
                }
                self.dialog = if session.complete() {
                    // The next question goes out at once: its answer starting cleanly is what confirms
                    // the session's last message.
                    self.ask_next(session.index, session.count);
                    Dialog::Confirming {
                        since: now,
                        session,
                    }
                } else {
                    Dialog::Receiving {
                        since: now,
                        session,
                    }
                };
            }
            // The next message began cleanly after the last data message (a data message more would be
            // more than the device said it stored).
            Dialog::Confirming { session, .. } => match kind {
                STORED_TRIPLE | STORED_PAIR => {
                    self.break_off(&session, "sent more than its stored length", now, events)
                }
                _ => {
                    self.publish(&session, now, events, true);
                    // The message may well be the answer to the question that followed the session.
                    self.heard(message, context, events);
                }
            },
        }
    }

    /// Bytes that belong to no message, or a message broken off by the next one: while a session's start,
    /// length or data is coming, either means a byte was lost or added, and the session cannot be trusted.
    fn damaged(&mut self, now: DateTime<Utc>, events: &mut Vec<DecodeEvent>) {
        match self.dialog.clone() {
            Dialog::Receiving { session, .. } | Dialog::Confirming { session, .. } => {
                self.break_off(&session, "was damaged on the line", now, events)
            }
            // Bytes around the start answer, or between it and the length answer: either may be damaged,
            // and a wrong start would stamp every sample wrongly.
            Dialog::AwaitingStart { index, .. } => self
                .start_over(
                    format!("the start of stored session {index} was damaged on the line; the download starts again"),
                    now,
                    events,
                ),
            Dialog::AwaitingLength { index, .. } => self.start_over(
                format!("the start or length of stored session {index} was damaged on the line; the download starts again"),
                now,
                events,
            ),
            Dialog::Draining { since, .. } => {
                self.dialog = Dialog::Draining {
                    since,
                    quiet_since: now,
                }
            }
            _ => {}
        }
    }

    fn flush_garbage(&mut self, now: DateTime<Utc>, events: &mut Vec<DecodeEvent>) {
        if self.skipped > 0 {
            events.push(DecodeEvent::Rejected(FrameError::Garbage {
                count: self.skipped,
            }));
            self.skipped = 0;
            self.damaged(now, events);
        }
    }
}

fn invalid(reason: String, message: &[u8]) -> DecodeEvent {
    DecodeEvent::Rejected(FrameError::Invalid {
        reason,
        raw: hex_of(message),
    })
}

/// The date half of a session start (type 0x07): century, year, month, day in bytes 4 to 7. A year of 0 is
/// a device without a clock.
fn session_date(bytes: &[u8]) -> Option<NaiveDate> {
    let year = i32::from(bytes[4]) * 100 + i32::from(bytes[5]);
    (year != 0)
        .then(|| NaiveDate::from_ymd_opt(year, u32::from(bytes[6]), u32::from(bytes[7])))
        .flatten()
}

/// The time half of a session start (type 0x12): hour, minute, second in bytes 4 to 6.
fn session_time(bytes: &[u8]) -> Option<NaiveTime> {
    NaiveTime::from_hms_opt(
        u32::from(bytes[4]),
        u32::from(bytes[5]),
        u32::from(bytes[6]),
    )
}

/// Whether a broken-off message of this type is worth reporting: it may have held a measurement.
fn reports_truncation(kind: u8) -> bool {
    matches!(kind, LIVE | STORED_TRIPLE | STORED_PAIR)
}

impl StreamDecoder for ContecDecoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        let now = context.steady;
        self.hub_clock = context.hub_clock;
        self.wall = context.received_at;
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        loop {
            let window = &self.buffer[start..];
            let Some(type_at) = window.iter().position(|byte| byte & 0x80 == 0) else {
                self.skipped += window.len();
                start = self.buffer.len();
                break;
            };
            self.skipped += type_at;
            start += type_at;
            let window = &self.buffer[start..];
            let kind = window[0];
            let next_type = window
                .iter()
                .skip(1)
                .position(|byte| byte & 0x80 == 0)
                .map(|p| p + 1);
            let length = match (message_length(kind), next_type) {
                (Some(need), Some(next)) if next < need => {
                    // Another message began before this one was complete.
                    if reports_truncation(kind) {
                        let raw = hex_of(&window[..next]);
                        self.flush_garbage(now, &mut events);
                        events.push(DecodeEvent::Rejected(FrameError::Truncated {
                            have: next,
                            need,
                            raw,
                        }));
                        self.damaged(now, &mut events);
                    } else {
                        self.skipped += next;
                    }
                    start += next;
                    continue;
                }
                (Some(need), _) if window.len() >= need => need,
                (Some(_), _) => break,
                (None, Some(next)) => next,
                (None, None) if window.len() > MAX_MESSAGE => {
                    self.skipped += window.len();
                    start = self.buffer.len();
                    break;
                }
                (None, None) => break,
            };
            let message = self.buffer[start..start + length].to_vec();
            self.flush_garbage(now, &mut events);
            if kind == LIVE {
                events.push(DecodeEvent::Reading(live_reading(&message, context)));
            }
            self.heard(&message, context, &mut events);
            start += length;
        }
        self.buffer.drain(..start);
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        let partial = std::mem::take(&mut self.buffer);
        let skipped = std::mem::take(&mut self.skipped);
        match partial.first() {
            Some(&kind) if reports_truncation(kind) => Some(FrameError::Truncated {
                have: partial.len(),
                need: message_length(kind).unwrap_or(partial.len()),
                raw: hex_of(&partial),
            }),
            _ => (skipped > 0).then_some(FrameError::Garbage { count: skipped }),
        }
    }

    fn poll(&mut self, context: &DecodeContext<'_>) -> Polled {
        let now = context.steady;
        self.hub_clock = context.hub_clock;
        self.wall = context.received_at;
        let mut events = Vec::new();
        // Bytes left over when the line paused: garbage, or a message that never finished.
        let unclean = self.skipped > 0 || !self.buffer.is_empty();
        match self.dialog.clone() {
            Dialog::NotStarted => self.ask_count(now),
            Dialog::AwaitingCount { since } if now - since >= ANSWER_WAIT => self.go_live(now),
            // A device that said it holds sessions but does not say when one started is asked no more.
            Dialog::AwaitingStart { since, .. } if now - since >= ANSWER_WAIT => self.go_live(now),
            // Without its length nothing could show the session arrived whole.
            Dialog::AwaitingLength {
                since,
                index,
                count,
                ..
            } if now - since >= ANSWER_WAIT => {
                events.push(invalid(
                    format!("stored session {index} did not say its length; not downloaded"),
                    &[],
                ));
                self.next_session(index, count, now);
            }
            Dialog::Receiving { since, session }
                if session.samples.is_empty() && now - since >= ANSWER_WAIT =>
            {
                events.push(invalid(
                    format!(
                        "stored session {} sent no data; not downloaded",
                        session.index
                    ),
                    &[],
                ));
                self.next_session(session.index, session.count, now);
            }
            Dialog::Receiving { since, session }
                if !session.samples.is_empty() && now - since >= DATA_PAUSE =>
            {
                if unclean {
                    self.break_off(&session, "was damaged on the line", now, &mut events);
                } else {
                    self.break_off(&session, "stopped short", now, &mut events);
                }
            }
            Dialog::Confirming { since, session } if now - since >= DATA_PAUSE => {
                if unclean {
                    self.break_off(&session, "was damaged on the line", now, &mut events);
                } else {
                    self.publish(&session, now, &mut events, true);
                }
            }
            Dialog::Draining { since, quiet_since }
                if now - quiet_since >= DATA_PAUSE || now - since >= DRAIN_LIMIT =>
            {
                // What is left of the broken session is dropped unread.
                let dropped = self.skipped + std::mem::take(&mut self.buffer).len();
                self.skipped = 0;
                if dropped > 0 {
                    events.push(DecodeEvent::Rejected(FrameError::Garbage {
                        count: dropped,
                    }));
                }
                if self.retries_left > 0 {
                    self.retries_left -= 1;
                    self.ask_count(now);
                } else {
                    self.go_live(now);
                }
            }
            Dialog::Live {
                last_heard,
                last_keep_alive,
            } => {
                let mut state = (last_heard, last_keep_alive);
                if now - last_keep_alive >= KEEP_ALIVE_EVERY {
                    self.send(command(KEEP_ALIVE), CommandPurpose::KeepAlive);
                    state.1 = now;
                }
                if now - last_heard >= SILENCE_RESTART {
                    self.send(command(START_LIVE), CommandPurpose::RestartStream);
                    state.0 = now;
                }
                self.dialog = Dialog::Live {
                    last_heard: state.0,
                    last_keep_alive: state.1,
                };
            }
            _ => {}
        }
        Polled {
            commands: std::mem::take(&mut self.outgoing),
            events,
        }
    }

    fn checkpoint(&self) -> Option<String> {
        (!self.downloaded.is_empty()).then(|| {
            let sessions: Vec<String> = self
                .downloaded
                .iter()
                .map(|(start, length)| {
                    let start = start.format("%Y-%m-%dT%H:%M:%S");
                    length.map_or(start.to_string(), |length| format!("{start}/{length}"))
                })
                .collect();
            format!("{CHECKPOINT_KEY}{}", sessions.join(","))
        })
    }

    fn resume(&mut self, checkpoint: &str) {
        let Some(list) = checkpoint.strip_prefix(CHECKPOINT_KEY) else {
            return;
        };
        let session = |text: &str| {
            let (start, length) = match text.split_once('/') {
                Some((start, length)) => (start, Some(length.parse().ok()?)),
                None => (text, None),
            };
            let start = NaiveDateTime::parse_from_str(start, "%Y-%m-%dT%H:%M:%S").ok()?;
            Some((start, length))
        };
        self.downloaded = list.split(',').filter_map(session).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{decode_stream, render_error, render_reading, utc};

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(ContecDecoder::default())
    }

    #[track_caller]
    fn check(hex: &str, expected: &[&str]) {
        assert_eq!(decode_stream(make, hex), expected, "{hex}");
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn live_messages() {
        // The pulse's top bit travels in byte 1 (bit 3 for byte 5): 130, not 2.
        check("01 E8 85 B3 96 82 E1 FF FF", &[&format!("pulse_oximetry spo2=97 pulse_rate=130 flags=[] {HUB}")]);
        check("01 80 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3 96 80 80 FF FF", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[] {HUB}")]);
        check("01 88 85 B3 96 FF FF FF FF", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[] {HUB}")]);
        // Status bits: searching too long and low SpO2 in byte 2, probe error as byte 2's high bit (from byte 1
        // bit 0), pulse searching as byte 3's high bit (byte 1 bit 1); the pulse beep (byte 2 bit 6) is no flag.
        check("01 80 F5 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[pulse_searching_too_long,low_spo2_alarm] {HUB}")]);
        check("01 83 C5 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[sensor_alarm,pulse_searching] {HUB}")]);
        // SpO2 above 100 is no saturation (the high bit of byte 6 comes from bit 4 of byte 1).
        check("01 90 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=missing pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3 96 C8 E2 FF FF 01 80 85 B3 96 C9 E1 FF FF", &[
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=97 pulse_rate=73 flags=[] {HUB}"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn other_messages_garbage_and_truncation() {
        // A reply to a command (type 0x0B here) is skipped quietly; the live message after it is read.
        check("0B 80 C3 D4 01 80 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        // A message of a type without a known length runs to the next type byte.
        check("1A 80 C3 D4 C5 01 80 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("FF FE 01 80 85 B3 96 C8 E2 FF FF", &["garbage 2", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3 01 80 85 B3 96 C8 E2 FF FF", &["truncated 4/9", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3", &["truncated 4/9"]);
        // Stored data that nobody asked for is never a reading, whole or broken off.
        check("0F 80 DE C2 DE C2 DE C2 09 80 E1 C4 CE 82", &[]);
        check("0F 80 DE C2", &["truncated 4/8"]);
        // A broken-off reply is skipped like garbage.
        check("07 80 80 01 80 85 B3 96 C8 E2 FF FF", &["garbage 3", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
    }

    #[test]
    fn host_commands() {
        assert_eq!(hex::encode(command(START_LIVE)), "7d81a1808080808080");
        assert_eq!(hex::encode(command(KEEP_ALIVE)), "7d81af808080808080");
        assert_eq!(
            hex::encode(command_with(ASK_SESSION_DATA, 2)),
            "7d81a6808280808080"
        );
    }

    fn render_command(command: &HostCommand) -> String {
        let purpose = match command.purpose {
            CommandPurpose::Dialog => "",
            CommandPurpose::KeepAlive => " (keep-alive)",
            CommandPurpose::RestartStream => " (restart)",
        };
        match command.bytes[4] & 0x7F {
            0 => format!("> {:02x}{purpose}", command.bytes[2]),
            parameter => format!("> {:02x} {parameter}{purpose}", command.bytes[2]),
        }
    }

    /// Plays a dialog: at each step's second (after 2024-03-15T12:00:00Z) the device sends the step's bytes
    /// (if any) and the hub polls. Returns what the hub sent ("> a5 1": command byte and parameter) and
    /// decoded, in order, and the checkpoint at the end.
    fn dialog(checkpoint: Option<&str>, steps: &[(i64, &str)]) -> (Vec<String>, Option<String>) {
        dialog_with(HubClock::Trusted, checkpoint, steps)
    }

    /// [`dialog`] against a hub clock of the given trust.
    fn dialog_with(
        clock: HubClock,
        checkpoint: Option<&str>,
        steps: &[(i64, &str)],
    ) -> (Vec<String>, Option<String>) {
        let steps: Vec<(i64, i64, &str)> = steps.iter().map(|(s, hex)| (*s, *s, *hex)).collect();
        dialog_on_clocks(clock, checkpoint, &steps)
    }

    /// [`dialog_with`] with the wall clock apart from the steady one: each step is the steady clock's
    /// second, the wall clock's second, and the device's bytes.
    fn dialog_on_clocks(
        clock: HubClock,
        checkpoint: Option<&str>,
        steps: &[(i64, i64, &str)],
    ) -> (Vec<String>, Option<String>) {
        let zone = utc();
        let base: DateTime<Utc> = "2024-03-15T12:00:00Z".parse().unwrap();
        let mut decoder = ContecDecoder::default();
        if let Some(checkpoint) = checkpoint {
            decoder.resume(checkpoint);
        }
        let mut lines = Vec::new();
        for (steady, wall, hex) in steps {
            let context = DecodeContext {
                received_at: base + TimeDelta::seconds(*wall),
                steady: base + TimeDelta::seconds(*steady),
                time_zone: &zone,
                hub_clock: clock,
                device_clock: None,
            };
            let bytes = crate::decode::test_support::bytes_of(hex);
            for event in decoder.feed(&bytes, &context) {
                lines.push(match event {
                    DecodeEvent::Reading(reading) => render_reading(&reading),
                    DecodeEvent::Rejected(error) => render_error(&error),
                });
            }
            let polled = decoder.poll(&context);
            for event in polled.events {
                lines.push(match event {
                    DecodeEvent::Reading(reading) => render_reading(&reading),
                    DecodeEvent::Rejected(error) => render_error(&error),
                });
            }
            lines.extend(polled.commands.iter().map(render_command));
        }
        (lines, decoder.checkpoint())
    }

    /// 2014-08-18 and 02:38:18, a session count of 1, and both kinds of data, as quoted from a device in
    /// OSCAR's loader.
    const DATE: &str = "07 80 80 80 94 8E 88 92";
    const TIME: &str = "12 80 80 80 82 A6 92 80";
    const ONE_SESSION: &str = "0A 80 80 81";
    const TRIPLE: &str = "0F 80 DE C2 DE C2 DE C2";
    const PAIR: &str = "09 80 E1 C4 CE 82";
    const STORED: &str = "stored_session";

    fn stored(spo2: &str, pulse: &str, at: &str) -> String {
        format!("pulse_oximetry spo2={spo2} pulse_rate={pulse} flags=[{STORED}] at={at} device")
    }

    /// Seven samples: three, three (a pulse of 0xFF is no reading; 130 takes its high bit from byte 1),
    /// and one followed by two padding pairs.
    const SEVEN: &str = "0F 80 DE C2 DE C2 DE C2 0F 8A DE FF DE 82 DE C2 0F 80 E1 C4 FF FF FF FF";

    fn seven_stored() -> Vec<String> {
        [
            ("94", "66", "18"),
            ("94", "66", "19"),
            ("94", "66", "20"),
            ("94", "missing", "21"),
            ("94", "130", "22"),
            ("94", "66", "23"),
            ("97", "68", "24"),
        ]
        .iter()
        .map(|(spo2, pulse, second)| stored(spo2, pulse, &format!("2014-08-18T02:38:{second}")))
        .collect()
    }

    const BROKE_OFF: &str = "nothing of it is published and it will be fetched again";

    #[rustfmt::skip]
    #[test]
    fn downloads_a_stored_session_then_streams_live() {
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, ONE_SESSION),
            (0, DATE),
            (0, TIME),
            // 14 stored bytes: seven samples of two bytes.
            (0, "08 80 80 80 8E 80 80 80"),
            // The stored length is reached: the hub starts the live stream at once, ...
            (1, SEVEN),
            // ... and when the line pauses after the last message (or the next one starts cleanly) the
            // session was whole, and is published.
            (3, ""),
            (4, "01 80 85 B3 96 C8 E2 FF FF"),
            (9, "01 80 85 B3 96 C8 E2 FF FF"),
            (16, ""),
        ]);
        let mut expected: Vec<String> = ["> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "> a1"].map(String::from).to_vec();
        expected.extend(seven_stored());
        expected.extend([
            "pulse_oximetry spo2=98 pulse_rate=72 flags=[] at=2024-03-15T12:00:04 hub",
            "pulse_oximetry spo2=98 pulse_rate=72 flags=[] at=2024-03-15T12:00:09 hub",
            "> af (keep-alive)",
            // Silent from 12:00:09 to 12:00:16: the stream is started again.
            "> af (keep-alive)", "> a1 (restart)",
        ].map(String::from));
        assert_eq!(lines, expected);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/14"));
    }

    #[rustfmt::skip]
    #[test]
    fn a_session_that_stops_short_is_not_published_and_the_dialog_starts_again() {
        // The device says 292 bytes (146 samples, as in OSCAR's capture) and sends three.
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, &format!("{ONE_SESSION} {DATE} {TIME}")),
            (0, "08 80 80 80 A4 81 80 80"),
            (0, TRIPLE),
            (2, ""),
            // The hub stopped the stored stream and waits for quiet; live data meanwhile is still live data.
            (3, "01 80 85 B3 96 C8 E2 FF FF"),
            (5, ""),
            (5, "0A 80 80 80"),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6",
            &format!("error invalid: stored session 0 stopped short after 6 stored bytes; {BROKE_OFF}"),
            "> a7", "> a2",
            "pulse_oximetry spo2=98 pulse_rate=72 flags=[] at=2024-03-15T12:00:03 hub",
            "> a7", "> a2", "> a3",
            "> a1",
        ]);
        assert_eq!(checkpoint, None);
    }

    #[rustfmt::skip]
    #[test]
    fn a_byte_lost_or_added_in_a_download_publishes_nothing_and_the_retry_gets_it_right() {
        // A byte lost from the second message: nothing is published, rather than later samples a second early.
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, &format!("{ONE_SESSION} {DATE} {TIME}")),
            (0, "08 80 80 80 8E 80 80 80"),
            (1, "0F 80 DE C2 DE C2 DE C2 0F 8A DE FF DE 82 DE 0F 80 E1 C4 FF FF FF FF"),
            (3, ""),
            // The retry: the device answers again, and this time the data comes whole.
            (3, &format!("{ONE_SESSION} {DATE} {TIME} 08 80 80 80 8E 80 80 80")),
            (3, SEVEN),
            (5, ""),
        ]);
        let mut expected: Vec<String> = [
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6",
            "truncated 7/8",
            &format!("error invalid: stored session 0 was damaged on the line after 6 stored bytes; {BROKE_OFF}"),
            "> a7", "> a2",
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "> a1",
        ].map(String::from).to_vec();
        expected.extend(seven_stored());
        assert_eq!(lines, expected);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/14"));

        // A byte added between messages, and a message more than the stored length.
        let start = format!("{ONE_SESSION} {DATE} {TIME}");
        let (lines, _) = dialog(None, &[(0, ""), (0, &start), (0, "08 80 80 80 8C 80 80 80"), (0, &format!("{TRIPLE} C2 {TRIPLE}"))]);
        assert_eq!(lines[6..], [
            "garbage 1".to_string(),
            format!("error invalid: stored session 0 was damaged on the line after 6 stored bytes; {BROKE_OFF}"),
            "> a7".to_string(),
            "> a2".to_string(),
        ]);
        let (lines, _) = dialog(None, &[(0, ""), (0, &start), (0, "08 80 80 80 86 80 80 80"), (0, &format!("{TRIPLE} {TRIPLE}"))]);
        assert_eq!(lines[6..], [
            format!("error invalid: stored session 0 sent more than its stored length after 6 stored bytes; {BROKE_OFF}"),
            "> a1".to_string(),
            "> a7".to_string(),
            "> a2".to_string(),
        ]);
        // Garbage after the last message, then a pause: the last message may have lost its tail.
        let (lines, _) = dialog(None, &[(0, ""), (0, &start), (0, "08 80 80 80 86 80 80 80"), (0, &format!("{TRIPLE} C2")), (2, "")]);
        assert_eq!(lines[6..], [
            "> a1".to_string(),
            format!("error invalid: stored session 0 was damaged on the line after 6 stored bytes; {BROKE_OFF}"),
            "> a7".to_string(),
            "> a2".to_string(),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn sessions_already_downloaded_and_sessions_without_a_clock_are_skipped() {
        // Two sessions: the first is in the checkpoint, the second has no date (a CMS50D+ without a clock).
        let (lines, checkpoint) = dialog(Some("stored_sessions=2014-08-18T02:38:18"), &[
            (0, ""),
            (0, "0A 80 80 82"),
            (0, &format!("{TIME} {DATE}")),
            (0, "07 80 80 80 80 80 80 80"),
            (0, TIME),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3",
            "> a5",
            "> a5 1",
            "error invalid: stored session 1 has no usable start (a year of 0: the oximeter keeps no clock; or an impossible date or time); not downloaded",
            "> a1",
        ]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18"));
    }

    #[rustfmt::skip]
    #[test]
    fn sessions_whose_clock_cannot_be_trusted_are_skipped() {
        // One from 2008 (a clock never set), one from tomorrow (a clock far ahead of the hub's noon).
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, "0A 80 80 82"),
            (0, "07 80 80 80 94 88 81 81 12 80 80 80 80 80 80 80"),
            (0, "07 80 80 80 94 98 83 90 12 80 80 80 88 80 80 80"),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3",
            "> a5",
            "error invalid: stored session 0 starts at 2008-01-01 00:00:00, which the hub cannot trust (device_clock_invalid); not downloaded",
            "> a5 1",
            "error invalid: stored session 1 starts at 2024-03-16 08:00:00, which the hub cannot trust (device_clock_ahead); not downloaded",
            "> a1",
        ]);
        assert_eq!(checkpoint, None);

        // A start two minutes before the hub's noon, with twenty minutes of samples: the recording would end
        // in the future, so its clock is off after all.
        let triples = vec![TRIPLE; 400].join(" ");
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, "0A 80 80 81 07 80 80 80 94 98 83 8F 12 80 80 80 8B BA 80 80"),
            (0, "08 80 80 80 E0 89 80 80"),
            (0, &triples),
            (2, ""),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "> a1",
            "error invalid: stored session 0 would end at 2024-03-15 12:18:00, after the hub's time; its clock cannot be trusted and it is not published",
        ]);
        assert_eq!(checkpoint, None);
    }

    #[rustfmt::skip]
    #[test]
    fn a_session_start_is_judged_by_the_device_clock_rule() {
        // What follows the start answer: the length question, or the report and the next question.
        let after_start = |date: &str, time: &str| {
            dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} {date} {time}"))]).0[3..].to_vec()
        };
        let skipped = |why: &str| vec![format!("error invalid: stored session 0 {why}; not downloaded"), "> a5".to_string(), "> a1".to_string()];
        let no_date = skipped("has no usable start (a year of 0: the oximeter keeps no clock; or an impossible date or time)");
        let untrusted = |start: &str, flag: &str| skipped(&format!("starts at {start}, which the hub cannot trust ({flag})"));
        let midnight = "12 80 80 80 80 80 80 80";
        let last_second = "12 80 80 80 97 BB BB 80";
        // Years 0, 1999, 2000 and 2009, the first plausible year, 2099 (ahead of the hub) and 2100.
        assert_eq!(after_start("07 80 80 80 80 80 81 81", midnight), no_date);
        assert_eq!(after_start("07 80 80 80 93 E3 8C 9F", last_second), untrusted("1999-12-31 23:59:59", "device_clock_invalid"));
        assert_eq!(after_start("07 80 80 80 94 80 81 81", midnight), untrusted("2000-01-01 00:00:00", "device_clock_invalid"));
        assert_eq!(after_start("07 80 80 80 94 89 8C 9F", last_second), untrusted("2009-12-31 23:59:59", "device_clock_invalid"));
        assert_eq!(after_start("07 80 80 80 94 8A 81 81", midnight), ["> a5", "> a4"]);
        assert_eq!(after_start("07 80 80 80 94 E3 8C 9F", midnight), untrusted("2099-12-31 00:00:00", "device_clock_ahead"));
        assert_eq!(after_start("07 80 80 80 95 80 81 81", midnight), untrusted("2100-01-01 00:00:00", "device_clock_invalid"));
        // Month 0 and 13, day 0 and 32, 30 February: no date at all.
        assert_eq!(after_start("07 80 80 80 94 98 80 8F", midnight), no_date);
        assert_eq!(after_start("07 80 80 80 94 98 8D 8F", midnight), no_date);
        assert_eq!(after_start("07 80 80 80 94 98 83 80", midnight), no_date);
        assert_eq!(after_start("07 80 80 80 94 98 83 A0", midnight), no_date);
        assert_eq!(after_start("07 80 80 80 94 98 82 9E", midnight), no_date);
    }

    #[rustfmt::skip]
    #[test]
    fn a_session_start_at_an_impossible_time_of_day_is_reported_and_skipped() {
        for time in ["12 80 80 80 98 80 80 80", "12 80 80 80 8A BC 80 80", "12 80 80 80 8A 80 BC 80"] {
            let (lines, _) = dialog(None, &[(0, ""), (0, &format!("0A 80 80 82 07 80 80 80 94 98 83 8F {time}")), (3, "")]);
            assert_eq!(lines.len(), 7, "{time}: {lines:#?}");
            assert!(lines[3].starts_with("error invalid: stored session 0 "), "{time}: {lines:#?}");
            assert!(lines[3].ends_with("; not downloaded"), "{time}: {lines:#?}");
            assert_eq!(lines[5], "> a5 1", "{time}: {lines:#?}");
        }
    }

    #[rustfmt::skip]
    #[test]
    fn sessions_from_2000_and_2009_are_not_downloaded_and_one_from_2010_is() {
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, "0A 80 80 83"),
            (0, "07 80 80 80 94 80 81 81 12 80 80 80 80 80 80 80"),
            (0, "07 80 80 80 94 89 8C 9F 12 80 80 80 97 BB BB 80"),
            (0, "07 80 80 80 94 8A 81 81 12 80 80 80 80 80 80 80"),
            (0, "08 80 80 82 86 80 80 80"),
            (0, TRIPLE),
            (2, ""),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5",
            "error invalid: stored session 0 starts at 2000-01-01 00:00:00, which the hub cannot trust (device_clock_invalid); not downloaded",
            "> a5 1",
            "error invalid: stored session 1 starts at 2009-12-31 23:59:59, which the hub cannot trust (device_clock_invalid); not downloaded",
            "> a5 2", "> a4 2", "> a6 2", "> a1",
            &stored("94", "66", "2010-01-01T00:00:00"),
            &stored("94", "66", "2010-01-01T00:00:01"),
            &stored("94", "66", "2010-01-01T00:00:02"),
        ]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2010-01-01T00:00:00/6"));
    }

    #[rustfmt::skip]
    #[test]
    fn an_untrusted_hub_clock_judges_no_session_ahead() {
        // A session from tomorrow: a device clock ahead of a trusted hub clock, or a hub clock that is behind.
        let tomorrow = "0A 80 80 81 07 80 80 80 94 98 83 90 12 80 80 80 88 80 80 80 08 80 80 80 8E 80 80 80";
        let (lines, _) = dialog(None, &[(0, ""), (0, tomorrow), (1, SEVEN), (3, "")]);
        assert_eq!(lines[3..], [
            "error invalid: stored session 0 starts at 2024-03-16 08:00:00, which the hub cannot trust (device_clock_ahead); not downloaded",
            "> a5", "> a1",
        ].map(String::from));
        let (lines, checkpoint) = dialog_with(HubClock::Unsynchronized, None, &[(0, ""), (0, tomorrow), (1, SEVEN), (3, "")]);
        assert_eq!(lines.len(), 7 + 7, "{lines:#?}");
        assert_eq!(lines[7], stored("94", "66", "2024-03-16T08:00:00"));
        assert_eq!(lines[13], stored("97", "68", "2024-03-16T08:00:06"));
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2024-03-16T08:00:00/14"));

        // A start 9 min 58 s after the hub's noon: the start passes, but the samples run more than ten
        // minutes past the hub's time. A trusted hub clock refuses the session; an untrusted one cannot tell.
        let late = "0A 80 80 81 07 80 80 80 94 98 83 8F 12 80 80 80 8C 89 BA 80 08 80 80 80 8E 80 80 80";
        let (lines, _) = dialog(None, &[(0, ""), (0, late), (1, SEVEN), (3, "")]);
        assert_eq!(lines[3..], [
            "error invalid: stored session 0 would run to 2024-03-15 12:10:01 at least, after the hub's time, so its clock cannot be trusted; not downloaded",
            "> a5", "> a4", "> a1",
        ].map(String::from));
        let (lines, checkpoint) = dialog_with(HubClock::Unsynchronized, None, &[(0, ""), (0, late), (1, SEVEN), (3, "")]);
        let mut expected: Vec<String> = ["> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "> a1"].map(String::from).to_vec();
        expected.extend(
            [("94", "66"), ("94", "66"), ("94", "66"), ("94", "missing"), ("94", "130"), ("94", "66"), ("97", "68")]
                .iter()
                .zip(58..)
                .map(|((spo2, pulse), second)| {
                    let at = if second < 60 { format!("2024-03-15T12:09:{second}") } else { format!("2024-03-15T12:10:{:02}", second - 60) };
                    stored(spo2, pulse, &at)
                }),
        );
        assert_eq!(lines, expected);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2024-03-15T12:09:58/14"));
    }

    #[test]
    fn a_stored_sample_reports_the_device_time_it_was_sent_with() {
        let zone = utc();
        let base: DateTime<Utc> = "2024-03-15T12:00:00Z".parse().unwrap();
        let context = DecodeContext::trusted(base, &zone);
        let mut decoder = ContecDecoder::default();
        decoder.poll(&DecodeContext::trusted(base, &zone));
        let session = format!("{ONE_SESSION} {DATE} {TIME} 08 80 80 80 8E 80 80 80 {SEVEN}");
        let mut events = decoder.feed(&crate::decode::test_support::bytes_of(&session), &context);
        events.extend(
            decoder
                .poll(&DecodeContext::trusted(base + DATA_PAUSE, &zone))
                .events,
        );
        let sent: Vec<String> = events
            .iter()
            .filter_map(|event| match event {
                DecodeEvent::Reading(reading) => reading.device_time.map(|time| time.to_string()),
                DecodeEvent::Rejected(_) => None,
            })
            .collect();
        // The session's start as the oximeter sent it (2014-08-18 02:38:18), one second a sample.
        let expected: Vec<String> = (18..25)
            .map(|second| format!("2014-08-18 02:38:{second}"))
            .collect();
        assert_eq!(sent, expected);
    }

    #[rustfmt::skip]
    #[test]
    fn a_session_without_a_length_is_not_downloaded_and_a_cms50i_session_is() {
        let (lines, checkpoint) = dialog(Some("something else=1"), &[
            (0, ""),
            (0, "0A 80 80 82"),
            (0, DATE),
            (0, TIME),
            // No answer to the length question within 3 s: nothing could show the data arrived whole.
            (3, ""),
            // The second session is a CMS50I's: type 0x09, four stored bytes a sample (SpO2, pulse, PI).
            (3, "07 80 80 80 94 98 83 8E 12 80 80 80 96 9E 80 80"),
            (3, "08 80 80 81 88 80 80 80"),
            (4, &format!("{PAIR} 09 80 E0 C5 CE 82")),
            (6, ""),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3",
            "> a5", "> a4",
            "error invalid: stored session 0 did not say its length; not downloaded",
            "> a5 1", "> a4 1", "> a6 1", "> a1",
            &stored("97", "68", "2024-03-14T22:30:00"),
            &stored("96", "69", "2024-03-14T22:30:01"),
        ]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2024-03-14T22:30:00/8"));
    }

    #[rustfmt::skip]
    #[test]
    fn a_damaged_start_or_length_answer_starts_the_download_again() {
        // A byte added to the time answer: taken as it stands it would read 01:02:38; the byte left over
        // shows the damage before any data is asked for.
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, &format!("{ONE_SESSION} {DATE}")),
            (0, "12 80 80 80 81 82 A6 92 80"),
            (0, "08 80 80 80 8E 80 80 80"),
            (2, ""),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5", "> a4",
            "garbage 1",
            "error invalid: the start or length of stored session 0 was damaged on the line; the download starts again",
            "> a7", "> a2",
            "> a7", "> a2", "> a3",
        ]);
        assert_eq!(checkpoint, None);
        // A byte lost between the date and the time answers.
        let (lines, _) = dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} 07 80 80 80 94 8E 88 12 80 80 80 82 A6 92 80"))]);
        assert_eq!(lines[3..], [
            "garbage 7",
            "error invalid: the start of stored session 0 was damaged on the line; the download starts again",
            "> a5",
            "> a7",
            "> a2",
        ].map(String::from));
        // A length no CMS50 records, and one whose samples would run past the hub's noon whatever their type
        // (a start two minutes before it, 4800 bytes: twenty minutes at least).
        let (lines, _) = dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} {DATE} {TIME} 08 BC 80 80 FF FF FF FF"))]);
        assert_eq!(lines[3..], [
            "error invalid: stored session 0 claims 4294967295 stored bytes, more than a CMS50 records; not downloaded",
            "> a5", "> a4", "> a1",
        ].map(String::from));
        let (lines, _) = dialog(None, &[(0, ""), (0, "0A 80 80 81 07 80 80 80 94 98 83 8F 12 80 80 80 8B BA 80 80 08 84 80 80 C0 92 80 80")]);
        assert_eq!(lines[3..], [
            "error invalid: stored session 0 would run to 2024-03-15 12:18:00 at least, after the hub's time, so its clock cannot be trusted; not downloaded",
            "> a5", "> a4", "> a1",
        ].map(String::from));
    }

    #[rustfmt::skip]
    #[test]
    fn a_device_that_stops_answering_gets_the_live_stream() {
        // No answer to the count within 3 s.
        let (lines, _) = dialog(None, &[(0, ""), (2, ""), (3, "")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a1"]);
        // No sessions stored.
        let (lines, checkpoint) = dialog(None, &[(0, ""), (0, "0A 80 80 80")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a1"]);
        assert_eq!(checkpoint, None);
        // A start that never comes whole: no further session is asked for.
        let (lines, _) = dialog(None, &[(0, ""), (0, "0A 80 80 82"), (0, DATE), (3, "")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5", "> a1"]);
        // A length answer for another session is not this one's.
        let (lines, checkpoint) = dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} {DATE} {TIME}")), (0, "08 80 80 81 8E 80 80 80"), (3, "")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5", "> a4", "error invalid: stored session 0 did not say its length; not downloaded", "> a1"]);
        assert_eq!(checkpoint, None);
        // Data that never comes is reported.
        let (lines, _) = dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} {DATE} {TIME} 08 80 80 80 8E 80 80 80")), (3, "")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "error invalid: stored session 0 sent no data; not downloaded", "> a1"]);
        // An empty session is known to be empty from its length.
        let (lines, checkpoint) = dialog(None, &[(0, ""), (0, &format!("{ONE_SESSION} {DATE} {TIME}")), (0, "08 80 80 80 80 80 80 80")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5", "> a4", "> a1"]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/0"));
        // A count no CMS50 could hold (200, its high bit from byte 1) is noise.
        let (lines, _) = dialog(None, &[(0, ""), (0, "0A 82 80 C8")]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "error invalid: a session count of 200 is more than a CMS50 stores; no download", "> a1"]);
    }

    /// The dialog's timers run on the steady clock, so an NTP step of the wall clock changes none of them: a
    /// clock stepped back a day (one that ran ahead) does not stop the keep-alive, and one stepped forward an
    /// hour (a Pi's saved time corrected after boot) neither gives up on an answer nor breaks off a download.
    #[rustfmt::skip]
    #[test]
    fn an_ntp_step_of_the_wall_clock_leaves_the_dialog_s_timers_alone() {
        let day = 86_400;
        let (lines, _) = dialog_on_clocks(HubClock::Trusted, None, &[(0, 0, ""), (0, 0, "0A 80 80 80"), (4, -day + 4, ""), (5, -day + 5, ""), (10, -day + 10, "")]);
        // The device sends nothing live here, so its stream is also restarted every 5 s.
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a1", "> af (keep-alive)", "> a1 (restart)", "> af (keep-alive)", "> a1 (restart)"]);
        // Asked for the count, the device answers 2 s later, after the step.
        let (lines, _) = dialog_on_clocks(HubClock::Trusted, None, &[(0, 0, ""), (1, 3601, ""), (2, 3602, ONE_SESSION)]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5"]);
        // A download whose data comes a second apart, the wall clock stepped in between.
        let (lines, checkpoint) = dialog_on_clocks(HubClock::Trusted, None, &[
            (0, 0, ""), (0, 0, &format!("{ONE_SESSION} {DATE} {TIME} 08 80 80 80 8E 80 80 80")),
            (1, 1, "0F 80 DE C2 DE C2 DE C2"), (2, 3602, "0F 8A DE FF DE 82 DE C2"),
            (3, 3603, "0F 80 E1 C4 FF FF FF FF"), (6, 3606, ""),
        ]);
        assert!(!lines.iter().any(|line| line.contains(BROKE_OFF)), "{lines:?}");
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/14"));
    }

    #[rustfmt::skip]
    #[test]
    fn a_line_that_never_falls_quiet_after_a_break_off_is_left_after_ten_seconds() {
        let live = "01 80 85 B3 96 C8 E2 FF FF";
        let mut steps: Vec<(i64, String)> = vec![
            (0, String::new()),
            (0, format!("{ONE_SESSION} {DATE} {TIME} 08 80 80 80 8E 80 80 80")),
            (0, TRIPLE.to_string()),
            (2, String::new()),
        ];
        // Live data every second (a device that went on streaming) keeps the line busy.
        steps.extend((3..=12).map(|second| (second, live.to_string())));
        let steps: Vec<(i64, &str)> = steps.iter().map(|(t, hex)| (*t, hex.as_str())).collect();
        let (lines, _) = dialog(None, &steps);
        let commands: Vec<&String> = lines.iter().filter(|line| line.starts_with('>')).collect();
        // The break-off at 2 s, then ten seconds later the dialog starts again.
        assert_eq!(commands, ["> a7", "> a2", "> a3", "> a5", "> a4", "> a6", "> a7", "> a2", "> a7", "> a2", "> a3"]);
    }

    #[rustfmt::skip]
    #[test]
    fn the_answer_to_the_next_question_confirms_a_session_and_is_read() {
        // Two sessions of three samples: the second's start, asked for as soon as the first was complete,
        // confirms the first and is read as the answer it is.
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, &format!("0A 80 80 82 {DATE} {TIME} 08 80 80 80 86 80 80 80")),
            (0, TRIPLE),
            (0, "07 80 80 80 94 98 83 8E 12 80 80 80 96 9E 80 80 08 80 80 81 86 80 80 80"),
            (0, "0F 80 E1 C4 E1 C4 E1 C4"),
            (0, "01 80 85 B3 96 C8 E2 FF FF"),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6",
            "> a5 1",
            &stored("94", "66", "2014-08-18T02:38:18"),
            &stored("94", "66", "2014-08-18T02:38:19"),
            &stored("94", "66", "2014-08-18T02:38:20"),
            "> a4 1", "> a6 1", "> a1",
            "pulse_oximetry spo2=98 pulse_rate=72 flags=[] at=2024-03-15T12:00:00 hub",
            &stored("97", "68", "2024-03-14T22:30:00"),
            &stored("97", "68", "2024-03-14T22:30:01"),
            &stored("97", "68", "2024-03-14T22:30:02"),
        ]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/6,2024-03-14T22:30:00/6"));
    }

    /// A clock set back between two recordings gives both the same start. Each is downloaded once, since the
    /// checkpoint names a session by its start and length, and the samples of one do not pass for the
    /// other's, since a sample is named by its values as well as its time.
    #[rustfmt::skip]
    #[test]
    fn two_sessions_from_the_same_start_are_both_downloaded() {
        let (lines, checkpoint) = dialog(None, &[
            (0, ""),
            (0, &format!("0A 80 80 82 {DATE} {TIME} 08 80 80 80 86 80 80 80")),
            (0, TRIPLE),
            (0, &format!("{DATE} {TIME} 08 80 80 81 8C 80 80 80")),
            (0, "0F 80 E1 C4 E1 C4 E1 C4 0F 80 E1 C4 E1 C4 E1 C4"),
            (3, ""),
        ]);
        assert_eq!(lines, [
            "> a7", "> a2", "> a3", "> a5", "> a4", "> a6",
            "> a5 1",
            &stored("94", "66", "2014-08-18T02:38:18"),
            &stored("94", "66", "2014-08-18T02:38:19"),
            &stored("94", "66", "2014-08-18T02:38:20"),
            "> a4 1", "> a6 1", "> a1",
            &stored("97", "68", "2014-08-18T02:38:18"),
            &stored("97", "68", "2014-08-18T02:38:19"),
            &stored("97", "68", "2014-08-18T02:38:20"),
            &stored("97", "68", "2014-08-18T02:38:21"),
            &stored("97", "68", "2014-08-18T02:38:22"),
            &stored("97", "68", "2014-08-18T02:38:23"),
        ]);
        assert_eq!(checkpoint.as_deref(), Some("stored_sessions=2014-08-18T02:38:18/6,2014-08-18T02:38:18/12"));
        // Next connection: both are known by their lengths, and neither is fetched again.
        let (lines, _) = dialog(checkpoint.as_deref(), &[
            (0, ""),
            (0, &format!("0A 80 80 82 {DATE} {TIME} 08 80 80 80 86 80 80 80")),
            (0, &format!("{DATE} {TIME} 08 80 80 81 8C 80 80 80")),
        ]);
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a5", "> a4", "> a5 1", "> a4 1", "> a1"]);
        // The same second with other values is another sample.
        let start = "2014-08-18T02:38:18+00:00".parse().unwrap();
        let key = |spo2, pulse| stored_reading(&[], spo2, pulse, start, 0, start.to_utc()).record_key;
        assert_ne!(key(94, 66), key(97, 68));
        assert_eq!(key(94, 66), key(94, 66));
    }

    /// A message as the device packs it: high bits of the payload gathered into byte 1.
    fn pack(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut message = vec![kind, 0x80];
        for (index, byte) in payload.iter().enumerate() {
            message[1] |= (byte >> 7) << index;
            message.push(0x80 | byte);
        }
        message
    }

    /// An 8-hour night (28,800 samples in 9,600 messages), fed as a serial read delivers it with a poll
    /// after every chunk, decodes in well under a second: the dialog's state is not copied per message.
    #[test]
    fn an_eight_hour_session_decodes_in_linear_time() {
        let samples = 8 * 3600u32;
        let mut device = pack(0x0A, &[0, 1]);
        device.extend(pack(0x07, &[0, 0, 20, 14, 8, 18]));
        device.extend(pack(0x12, &[0, 0, 2, 38, 18, 0]));
        let length = (samples * 2).to_le_bytes();
        device.extend(pack(
            0x08,
            &[0, 0, length[0], length[1], length[2], length[3]],
        ));
        for _ in 0..samples / 3 {
            device.extend(pack(0x0F, &[97, 72, 97, 72, 97, 72]));
        }
        let zone = utc();
        let now: DateTime<Utc> = "2024-03-15T12:00:00Z".parse().unwrap();
        let context = DecodeContext::trusted(now, &zone);
        let mut decoder = ContecDecoder::default();
        decoder.poll(&DecodeContext::trusted(now, &zone));
        let started = thread_cpu_time();
        let mut readings = 0;
        for chunk in device.chunks(64) {
            let mut events = decoder.feed(chunk, &context);
            events.extend(decoder.poll(&DecodeContext::trusted(now, &zone)).events);
            readings += events
                .iter()
                .filter(|e| matches!(e, DecodeEvent::Reading(_)))
                .count();
        }
        let pause = decoder
            .poll(&DecodeContext::trusted(now + DATA_PAUSE, &zone))
            .events;
        readings += pause
            .iter()
            .filter(|e| matches!(e, DecodeEvent::Reading(_)))
            .count();
        let took = thread_cpu_time() - started;
        assert_eq!(readings, samples as usize);
        assert!(
            took < std::time::Duration::from_secs(1),
            "an 8-hour session took {took:?} of processor time"
        );
    }

    /// Processor time this thread has used. Unlike wall time it does not grow while other programs hold
    /// the processor, so the bound above tests the decoder and not how busy the machine is.
    fn thread_cpu_time() -> std::time::Duration {
        let mut spec = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime only writes the timespec it is given.
        let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut spec) };
        assert_eq!(
            status, 0,
            "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
        );
        std::time::Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
    }

    /// A whole download with one byte lost or added somewhere (the damage a checksum-less line can do
    /// that framing can see), fed in random chunks: the session is published whole or not at all, and
    /// every published sample carries the time that belongs to its value.
    #[test]
    fn a_download_with_one_byte_lost_or_added_is_published_whole_or_not_at_all() {
        let samples = 37u32;
        let value = |k: u32| (80 + (k % 20) as u8, 60 + (k / 20) as u8 * 7);
        let mut device = pack(0x0A, &[0, 1]);
        device.extend(pack(0x07, &[0, 0, 20, 14, 8, 18]));
        device.extend(pack(0x12, &[0, 0, 2, 38, 18, 0]));
        let length = (samples * 2).to_le_bytes();
        device.extend(pack(
            0x08,
            &[0, 0, length[0], length[1], length[2], length[3]],
        ));
        for chunk in (0..samples).collect::<Vec<_>>().chunks(3) {
            let mut payload = Vec::new();
            for slot in 0..3 {
                let (spo2, pulse) = chunk.get(slot).map_or((0x7F, 0xFF), |k| value(*k));
                payload.extend([spo2, pulse]);
            }
            device.extend(pack(0x0F, &payload));
        }
        let zone = utc();
        let base: DateTime<Utc> = "2024-03-15T12:00:00Z".parse().unwrap();
        let start: NaiveDateTime = "2014-08-18T02:38:18".parse().unwrap();
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |bound: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound as u64) as usize
        };
        let mut whole = 0;
        // Run 600 is the undamaged download, which must be published whole.
        for run in 0..=600 {
            let mut bytes = device.clone();
            let at = next(bytes.len());
            match run % 2 {
                _ if run == 600 => {}
                0 => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, next(256) as u8),
            }
            let mut decoder = ContecDecoder::default();
            let mut stored = Vec::new();
            let mut now = base;
            decoder.poll(&DecodeContext::trusted(now, &zone));
            let mut rest = &bytes[..];
            while !rest.is_empty() || now < base + TimeDelta::seconds(30) {
                let take = next(12).min(rest.len());
                let context = DecodeContext::trusted(now, &zone);
                let mut events = decoder.feed(&rest[..take], &context);
                rest = &rest[take..];
                events.extend(decoder.poll(&DecodeContext::trusted(now, &zone)).events);
                stored.extend(events.into_iter().filter_map(|event| match event {
                    DecodeEvent::Reading(reading) if reading.time_source == TimeSource::Device => {
                        Some(reading)
                    }
                    _ => None,
                }));
                now += TimeDelta::milliseconds(if rest.is_empty() { 500 } else { 10 });
            }
            assert!(
                stored.is_empty() || stored.len() == samples as usize,
                "run {run}: {} of {samples} samples published",
                stored.len()
            );
            if run == 600 {
                assert_eq!(stored.len(), samples as usize, "the undamaged download");
            } else {
                whole += usize::from(!stored.is_empty());
            }
            for reading in &stored {
                let k = (reading.measured_at.naive_local() - start).num_seconds() as u32;
                let (spo2, pulse) = value(k);
                assert_eq!(
                    (
                        reading.value("spo2").unwrap().value,
                        reading.value("pulse_rate").unwrap().value
                    ),
                    (Some(f64::from(spo2)), Some(f64::from(pulse))),
                    "run {run}: the sample at second {k} carries another sample's values"
                );
            }
        }
        // Some damage cannot matter (a byte added before the first answer, say); most must be caught.
        assert!(whole < 600, "no damage was ever caught");
    }

    #[rustfmt::skip]
    #[test]
    fn answers_nobody_asked_for_change_nothing() {
        // A count, a start time and data while live streaming: no download starts, no stored reading appears.
        let (lines, _) = dialog(None, &[
            (0, ""),
            (3, ""),
            (4, &format!("{ONE_SESSION} {DATE} {TIME} {TRIPLE}")),
            (8, ""),
        ]);
        // The keep-alive is due 5 s after the start; the messages at 4 s count as the device being heard.
        assert_eq!(lines, ["> a7", "> a2", "> a3", "> a1", "> af (keep-alive)"]);
    }
}

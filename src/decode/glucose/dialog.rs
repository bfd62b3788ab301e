//! The hub's side of a glucose meter's record transfer, sans-IO: which records to ask the Record Access
//! Control Point for, whether the meter's numbering restarted, and the merge of a record with the Glucose
//! Measurement Context it announced.
//!
//! The session feeds what the meter sends (`handle_measurement`, `handle_context`, `handle_racp`) and what
//! the outbox made durable (`handle_stored`), and does what `poll(now)` says: write a request, or end.
//!
//! - The first request asks for the records after the newest one the hub stored from this meter, or for
//!   all of them the first time.
//! - "No records found" after that request means either that nothing is new or that the meter's numbering
//!   restarted (a battery change, a reset). The hub then asks for the meter's last record: when it is not
//!   the record the hub stored under that sequence number, the numbering restarted, and the hub asks for
//!   everything (records it already stored get the same ids and are not queued twice).
//! - The newest stored record is noted only once it is durable, so a record the outbox did not take is
//!   asked for again next time. After a refused record nothing more is noted in that session: the outbox
//!   may take later records (the broker took some of those it held), and noting one of them would make
//!   the next session ask only for records after it, so the refused one would never be read.
//! - A record that announces a context waits for it until anything else comes from the meter; the
//!   context's meal, tester and health join its flags. A context that never comes leaves it as it was.
//! - A request's answer is acted on only once nothing more came for `LATE_RECORDS`: a meter's records
//!   and contexts can arrive after the response that ends them (ARCHITECTURE.md, BlueZ), and are taken.

use std::time::{Duration, Instant};

use super::racp::{self, Response, ResponseCode};
use super::{announces_context, decode_context, sequence_number};
use crate::decode::{DecodeEvent, FrameError};
use crate::model::reading::{Kind, Reading};

/// How long a glucose meter may take to answer a RACP request.
pub const RACP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after a request's answer, and after anything that came from the meter since, the dialog
/// waits for records that the answer overtook before it acts on the answer.
pub const LATE_RECORDS: Duration = Duration::from_secs(2);

/// The newest record the hub stored from a meter, kept between sessions: the next transfer starts after
/// its sequence number, and its key tells a restarted numbering from an unchanged one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRecord {
    pub sequence: Option<u16>,
    pub key: Option<String>,
}

/// What the session does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes to the Record Access Control Point.
    Write(Vec<u8>),
    /// The transfer is over (answered, or not answered in time): the session may end.
    Finished,
}

/// What records made durable told the dialog.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Noted {
    /// The newest record to remember for the next session, when it changed.
    pub last: Option<LastRecord>,
    /// This session just found that the meter's numbering restarted.
    pub restart_found: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No transfer: the device has no RACP, or no Glucose Measurement to receive records on.
    Idle,
    /// The first request is yet to be written.
    NotStarted,
    /// Asked for the records after the last stored sequence number (or all, the first time).
    Fetching,
    /// Asked for the meter's last record, to see whether its numbering restarted.
    CheckingLast,
    /// The numbering restarted: asked for everything.
    FetchingAll,
    /// The transfer is over.
    Done,
}

/// One session's record transfer with one glucose meter.
#[derive(Debug)]
pub struct RecordDialog {
    phase: Phase,
    last: LastRecord,
    restart_seen: bool,
    /// The outbox refused a record in this session: what is noted stays before it.
    refused: bool,
    /// A request's outcome the meter reported, not yet acted on: the records released with it are stored
    /// first, since what they say (a restarted numbering) decides the next request.
    answer: Option<ResponseCode>,
    /// Since when the answer waits for late records: set by the first `poll` after the answer or after
    /// anything the meter sent since.
    quiet_since: Option<Instant>,
    /// When the running request counts as unanswered.
    deadline: Option<Instant>,
    /// A record whose context the meter announced.
    awaiting_context: Option<Reading>,
}

impl RecordDialog {
    /// `transfer`: the meter has both a RACP and a Glucose Measurement, so the hub asks for its records.
    /// `last` is what the hub noted from this meter in an earlier session.
    pub fn new(last: LastRecord, transfer: bool) -> RecordDialog {
        RecordDialog {
            phase: if transfer {
                Phase::NotStarted
            } else {
                Phase::Idle
            },
            last,
            restart_seen: false,
            refused: false,
            answer: None,
            quiet_since: None,
            deadline: None,
            awaiting_context: None,
        }
    }

    /// Decoded Glucose Measurement values. Anything new from the meter means an awaited context is not
    /// coming: the held record goes first, as it is. Returns what to store.
    pub fn handle_measurement(&mut self, decoded: Vec<DecodeEvent>) -> Vec<DecodeEvent> {
        self.quiet_since = None;
        let mut events: Vec<DecodeEvent> = self
            .awaiting_context
            .take()
            .map(DecodeEvent::Reading)
            .into_iter()
            .collect();
        for event in decoded {
            match event {
                DecodeEvent::Reading(reading) if announces_context(&reading) => events.extend(
                    self.awaiting_context
                        .replace(reading)
                        .map(DecodeEvent::Reading),
                ),
                other => events.push(other),
            }
        }
        events
    }

    /// A Glucose Measurement Context: its flags join the record that announced it, which is then released.
    /// A context for another record is dropped.
    pub fn handle_context(&mut self, value: &[u8]) -> Result<Vec<DecodeEvent>, FrameError> {
        let context = decode_context(value)?;
        self.quiet_since = None;
        let matches = self
            .awaiting_context
            .as_ref()
            .is_some_and(|reading| sequence_number(&reading.raw) == Some(context.sequence_number));
        if !matches {
            return Ok(Vec::new());
        }
        let mut reading = self.awaiting_context.take().expect("checked");
        reading.flags.extend(context.flags());
        Ok(vec![DecodeEvent::Reading(reading)])
    }

    /// A RACP indication. When it ends a request, `poll` acts on the answer once `LATE_RECORDS` passed
    /// without anything more from the meter; records and contexts that come meanwhile are taken as usual.
    pub fn handle_racp(&mut self, value: &[u8]) -> Result<Vec<DecodeEvent>, FrameError> {
        if let Response::Completed { code, .. } = racp::decode_response(value)? {
            if self.phase != Phase::Done {
                self.answer = Some(code);
                self.quiet_since = None;
            }
        }
        Ok(Vec::new())
    }

    /// A record still waiting for its context once an answer waited `LATE_RECORDS` in vain: the context
    /// is not coming, and the record must be stored before the answer is judged. The session calls this
    /// before `poll`.
    pub fn release_overdue(&mut self, now: Instant) -> Vec<DecodeEvent> {
        match (self.answer, self.quiet_since) {
            (Some(_), Some(since)) if now >= since + LATE_RECORDS => self.release(),
            _ => Vec::new(),
        }
    }

    /// Records the outbox made durable (`readings`), and whether it took every one of them: a record it
    /// refused is not read, so neither the newest one nor any record stored later in this session is
    /// noted, and the meter is asked for it again next time.
    pub fn handle_stored(&mut self, readings: &[Reading], all_taken: bool) -> Noted {
        self.refused |= !all_taken;
        let newest = readings
            .iter()
            .filter(|reading| reading.kind == Kind::BloodGlucose)
            .filter_map(|reading| {
                sequence_number(&reading.raw).map(|sequence| (sequence, reading.record_key.clone()))
            })
            .next_back()
            .filter(|_| !self.refused);
        let Some((sequence, key)) = newest else {
            return Noted::default();
        };
        let checking_last = self.phase == Phase::CheckingLast;
        // The meter's last record is not the one stored under its number: the numbering restarted.
        let restarted =
            checking_last && (self.last.sequence != Some(sequence) || self.last.key != key);
        let mut noted = Noted {
            last: None,
            restart_found: restarted && !self.restart_seen,
        };
        if !checking_last || restarted || self.restart_seen {
            self.last = LastRecord {
                sequence: Some(sequence),
                key,
            };
            noted.last = Some(self.last.clone());
        }
        self.restart_seen |= restarted;
        noted
    }

    /// What to do now: the first request, the next request once an answer was acted on, or the end of the
    /// transfer (answered, or the running request unanswered past its deadline).
    pub fn poll(&mut self, now: Instant) -> Option<Action> {
        if self.phase == Phase::NotStarted {
            let request = match self.last.sequence {
                Some(sequence) => racp::report_from_sequence(sequence.wrapping_add(1)),
                None => racp::report_all(),
            };
            return Some(self.request(Phase::Fetching, request, now));
        }
        if let Some(code) = self.answer {
            let since = *self.quiet_since.get_or_insert(now);
            if now < since + LATE_RECORDS || self.awaiting_context.is_some() {
                return None;
            }
            self.answer = None;
            self.quiet_since = None;
            return Some(match (self.phase, code) {
                // Nothing past our last sequence number: either nothing is new, or the meter's numbering
                // restarted. Its last record tells which.
                (Phase::Fetching, ResponseCode::NoRecordsFound) => {
                    self.request(Phase::CheckingLast, racp::report_last(), now)
                }
                (Phase::CheckingLast, _) if self.restart_seen => {
                    self.request(Phase::FetchingAll, racp::report_all(), now)
                }
                _ => self.end(),
            });
        }
        let late = self.deadline.is_some_and(|deadline| now >= deadline);
        (late && self.phase != Phase::Done).then(|| self.end())
    }

    /// The session ends: a record still waiting for its context is released, as it is. Records stored
    /// after this are noted whatever the transfer was doing.
    pub fn finish(&mut self) -> Vec<DecodeEvent> {
        self.phase = Phase::Done;
        self.answer = None;
        self.quiet_since = None;
        self.release()
    }

    fn request(&mut self, phase: Phase, request: Vec<u8>, now: Instant) -> Action {
        self.phase = phase;
        self.deadline = Some(now + RACP_TIMEOUT);
        Action::Write(request)
    }

    fn end(&mut self) -> Action {
        self.phase = Phase::Done;
        self.deadline = None;
        Action::Finished
    }

    fn release(&mut self) -> Vec<DecodeEvent> {
        self.awaiting_context
            .take()
            .map(DecodeEvent::Reading)
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, received_at, utc};
    use crate::decode::{DecodeContext, MessageDecoder};

    /// Runs a script of `(seconds, input, expected)` against a dialog that starts from `last` and asks for
    /// records when `transfer`. Inputs: `poll`, `end`, `measurement HEX`, `context HEX`, `racp HEX`, and
    /// `refused measurement HEX` (the outbox took the released records only in part). After every input
    /// but `poll`, what it released is stored at once and the dialog polled, as the session does; the
    /// output lists the records released (`record SEQ [FLAGS]`), what was noted, and the action.
    #[track_caller]
    fn check(last: (Option<u16>, Option<&str>), transfer: bool, script: &[(u64, &str, &str)]) {
        let start = Instant::now();
        let last = LastRecord {
            sequence: last.0,
            key: last.1.map(str::to_string),
        };
        let mut dialog = RecordDialog::new(last, transfer);
        for (seconds, input, expected) in script {
            let now = start + Duration::from_secs(*seconds);
            let (verb, hex) = input.split_once(' ').unwrap_or((input, ""));
            let (all_taken, verb, hex) = match verb {
                "refused" => {
                    let (verb, hex) = hex.split_once(' ').unwrap();
                    (false, verb, hex)
                }
                _ => (true, verb, hex),
            };
            let released = match verb {
                "poll" => None,
                "end" => Some(Ok(dialog.finish())),
                "measurement" => {
                    let zone = utc();
                    let context = DecodeContext::trusted(received_at(), &zone);
                    let decoded = match super::super::GlucoseMeasurementDecoder
                        .decode(&bytes_of(hex), &context)
                    {
                        Ok(readings) => readings.into_iter().map(DecodeEvent::Reading).collect(),
                        Err(error) => vec![DecodeEvent::Rejected(error)],
                    };
                    Some(Ok(dialog.handle_measurement(decoded)))
                }
                "context" => Some(dialog.handle_context(&bytes_of(hex))),
                "racp" => Some(dialog.handle_racp(&bytes_of(hex))),
                other => panic!("unknown input {other}"),
            };
            let mut out = Vec::new();
            match released {
                Some(Ok(events)) => {
                    let mut readings = Vec::new();
                    for event in events {
                        match event {
                            DecodeEvent::Reading(reading) => {
                                out.push(format!(
                                    "record {} [{}]",
                                    sequence_number(&reading.raw).unwrap(),
                                    crate::model::reading::joined(&reading.flags)
                                ));
                                readings.push(reading);
                            }
                            DecodeEvent::Rejected(_) => out.push("rejected".to_string()),
                        }
                    }
                    let noted = dialog.handle_stored(&readings, all_taken);
                    if let Some(last) = noted.last {
                        out.push(format!("noted {}", last.sequence.unwrap()));
                    }
                    if noted.restart_found {
                        out.push("restart".to_string());
                    }
                }
                Some(Err(_)) => out.push("unreadable".to_string()),
                None => {}
            }
            let overdue = dialog.release_overdue(now);
            if !overdue.is_empty() {
                let readings: Vec<Reading> = overdue
                    .into_iter()
                    .filter_map(|event| match event {
                        DecodeEvent::Reading(reading) => Some(reading),
                        DecodeEvent::Rejected(_) => None,
                    })
                    .collect();
                for reading in &readings {
                    out.push(format!(
                        "record {} [{}]",
                        sequence_number(&reading.raw).unwrap(),
                        crate::model::reading::joined(&reading.flags)
                    ));
                }
                let noted = dialog.handle_stored(&readings, true);
                if let Some(last) = noted.last {
                    out.push(format!("noted {}", last.sequence.unwrap()));
                }
                if noted.restart_found {
                    out.push("restart".to_string());
                }
            }
            match dialog.poll(now) {
                Some(Action::Write(bytes)) => out.push(format!("write {}", hex::encode(bytes))),
                Some(Action::Finished) => out.push("finished".to_string()),
                None => {}
            }
            assert_eq!(out.join("; "), *expected, "at {seconds} s, {input}");
        }
    }

    /// Record 1, 2024-03-15 07:00, no concentration, no context.
    const ONE: &str = "measurement 00 01 00 E8 07 03 0F 07 00 00";
    /// Record 2, 2024-03-15 08:00.
    const TWO: &str = "measurement 00 02 00 E8 07 03 0F 08 00 00";
    /// Record 3, 2024-03-15 09:00, announcing a context.
    const THREE_WITH_CONTEXT: &str = "measurement 10 03 00 E8 07 03 0F 09 00 00";
    /// Record 1 after a numbering restart: same number, another time.
    const NEW_ONE: &str = "measurement 00 01 00 E8 07 03 0F 0A 00 00";
    /// The key `measurement 00 01 00 …` gives record 1.
    const KEY_ONE: &str = "glucose:1:e807030f070000";
    const KEY_TWO: &str = "glucose:2:e807030f080000";

    #[rustfmt::skip]
    #[test]
    fn the_first_session_asks_for_everything_and_notes_the_newest_record() {
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (0, "poll", ""),
            (1, ONE, "record 1 []; noted 1"),
            (1, TWO, "record 2 []; noted 2"),
            (2, "racp 06 00 01 01", ""),
            // The answer waits for records it overtook.
            (3, "poll", ""),
            (4, "poll", "finished"),
            (5, "poll", ""),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn later_sessions_ask_only_for_records_after_the_newest_one_noted() {
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "measurement 00 03 00 E8 07 03 0F 09 00 00", "record 3 []; noted 3"),
            (1, "racp 06 00 01 01", ""),
            (3, "poll", "finished"),
        ]);
        // Sequence numbers wrap: after 65535 comes 0.
        check((Some(0xFFFF), None), true, &[(0, "poll", "write 0103010000")]);
    }

    #[rustfmt::skip]
    #[test]
    fn nothing_new_is_told_from_a_restarted_numbering_by_the_meters_last_record() {
        // Nothing new: the last record is the one noted, nothing is noted again and the transfer ends.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, TWO, "record 2 []"),
            (4, "racp 06 00 06 01", ""),
            (6, "poll", "finished"),
        ]);
        // Restarted: the meter's last record 1 is not the record 2 noted, so everything is asked for, and
        // the newest record noted as it is stored.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, NEW_ONE, "record 1 []; noted 1; restart"),
            (4, "racp 06 00 06 01", ""),
            (6, "poll", "write 0101"),
            (7, NEW_ONE, "record 1 []; noted 1"),
            (7, "racp 06 00 01 01", ""),
            (9, "poll", "finished"),
        ]);
        // The same sequence number with another record behind it is a restart too.
        check((Some(1), Some(KEY_ONE)), true, &[
            (0, "poll", "write 0103010200"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, NEW_ONE, "record 1 []; noted 1; restart"),
            (4, "racp 06 00 06 01", ""),
            (6, "poll", "write 0101"),
        ]);
        // A meter that answers "no records" to the last-record question has nothing: the transfer ends.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, "racp 06 00 06 06", ""),
            (6, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_record_the_outbox_refused_is_not_noted() {
        check((Some(1), Some(KEY_ONE)), true, &[
            (0, "poll", "write 0103010200"),
            (1, &format!("refused {TWO}"), "record 2 []"),
            (1, "racp 06 00 01 01", ""),
            (3, "poll", "finished"),
        ]);
        // A record refused before one the outbox took: the later one is not noted either, or the next
        // session would ask only for records after it and the refused one would never be read. The outbox
        // takes records again as soon as the broker took some of those it held, so this happens within a
        // session.
        check((Some(1), Some(KEY_ONE)), true, &[
            (0, "poll", "write 0103010200"),
            (1, &format!("refused {TWO}"), "record 2 []"),
            (1, "measurement 00 03 00 E8 07 03 0F 09 00 00", "record 3 []"),
            (1, "racp 06 00 01 01", ""),
            (3, "poll", "finished"),
            (4, "end", ""),
        ]);
        // While checking the last record, a refused one says nothing about a restart either.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, &format!("refused {NEW_ONE}"), "record 1 []"),
            (4, "racp 06 00 06 01", ""),
            (6, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn an_unanswered_request_ends_the_transfer_after_its_time_out() {
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (29, "poll", ""),
            (29, ONE, "record 1 []; noted 1"),
            (30, "poll", "finished"),
            (31, "poll", ""),
        ]);
        // Each request has its own time-out.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (20, "racp 06 00 01 06", ""),
            (22, "poll", "write 0106"),
            (51, "poll", ""),
            (52, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_context_joins_the_record_that_announced_it() {
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (1, THREE_WITH_CONTEXT, ""),
            // Preprandial, by the patient, no health issues.
            (1, "context 06 03 00 01 51", "record 3 [context_follows,meal_preprandial,tester_self,health_none]; noted 3"),
            (2, "racp 06 00 01 01", ""),
            (4, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_context_that_does_not_come_leaves_the_record_as_it_was() {
        // The next record releases the held one first.
        check((None, None), false, &[
            (0, THREE_WITH_CONTEXT, ""),
            (1, ONE, "record 3 [context_follows]; record 1 []; noted 1"),
        ]);
        // A record announcing a context releases the one held before it.
        check((None, None), false, &[
            (0, THREE_WITH_CONTEXT, ""),
            (1, "measurement 10 04 00 E8 07 03 0F 0A 00 00", "record 3 [context_follows]; noted 3"),
            (2, "end", "record 4 [context_follows]; noted 4"),
        ]);
        // An answer that waited for late records in vain releases it before the answer is judged.
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (1, THREE_WITH_CONTEXT, ""),
            (2, "racp 06 00 01 01", ""),
            (4, "poll", "record 3 [context_follows]; noted 3; finished"),
        ]);
        // A context for another record is dropped, and the held record still waits.
        check((None, None), false, &[
            (0, THREE_WITH_CONTEXT, ""),
            (1, "context 02 01 00 01", ""),
            (2, "context 02 03 00 02", "record 3 [context_follows,meal_postprandial]; noted 3"),
            (3, "context 02 03 00 02", ""),
        ]);
        // A malformed measurement still releases the held record; it is rejected after it.
        check((None, None), false, &[
            (0, THREE_WITH_CONTEXT, ""),
            (1, "measurement 00 05", "record 3 [context_follows]; rejected; noted 3"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn unreadable_and_informational_indications_change_nothing() {
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (1, "racp 06", "unreadable"),
            (1, "context 02 01", "unreadable"),
            (1, "racp 05 00 02 00", ""),
            (2, "racp 06 00 01 01", ""),
            (4, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn without_a_transfer_nothing_is_asked_and_any_answer_ends_the_session() {
        check((Some(4), None), false, &[
            (0, "poll", ""),
            (100, "poll", ""),
            (101, ONE, "record 1 []; noted 1"),
            (102, "racp 06 00 01 01", ""),
            (104, "poll", "finished"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn records_stored_after_the_end_are_noted_even_while_the_last_record_was_checked() {
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, THREE_WITH_CONTEXT, ""),
            (5, "end", "record 3 [context_follows]; noted 3"),
            (6, "racp 06 00 06 01", ""),
            (9, "poll", ""),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn records_and_contexts_the_answer_overtook_are_taken_before_it_is_acted_on() {
        // BlueZ as a meter's stack sends the response indication ahead of notifications it still holds.
        check((None, None), true, &[
            (0, "poll", "write 0101"),
            (1, ONE, "record 1 []; noted 1"),
            (1, THREE_WITH_CONTEXT, ""),
            (1, "racp 06 00 01 01", ""),
            (2, "context 06 03 00 01 51", "record 3 [context_follows,meal_preprandial,tester_self,health_none]; noted 3"),
            // Anything from the meter makes the answer wait again.
            (3, "measurement 00 04 00 E8 07 03 0F 0A 00 00", "record 4 []; noted 4"),
            (4, "poll", ""),
            (5, "poll", "finished"),
        ]);
        // An answer that restarted the wait while checking the last record still tells a restart.
        check((Some(2), Some(KEY_TWO)), true, &[
            (0, "poll", "write 0103010300"),
            (1, "racp 06 00 01 06", ""),
            (3, "poll", "write 0106"),
            (4, "racp 06 00 06 01", ""),
            (4, NEW_ONE, "record 1 []; noted 1; restart"),
            (6, "poll", "write 0101"),
        ]);
    }
}

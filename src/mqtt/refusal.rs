//! Sans-IO handling of publishes the broker refused: what a PUBACK reason code means, when the uplink may
//! publish again, when it walks the outbox again from the oldest reading, and what it logs.
//!
//! Only MQTT 5 can refuse: its PUBACK carries a reason code, and a code of 0x80 or more means the broker
//! did not take the message (MQTT 5.0 §3.4.2.1). An MQTT 3.1.1 PUBACK always means "taken".
//!
//! The retry policy, in full:
//!
//! * A refused reading stays in the outbox and the walk through the outbox goes on past it, so readings
//!   behind it are not held back by it.
//! * A refusal with no accepted publish since the previous refusal (the broker seems to refuse everything)
//!   pauses new publishes for a delay (`reconnect_min` doubling up to `reconnect_max`, jittered), then
//!   the uplink probes with one publish at a time until the broker takes one, which restores the full
//!   window and the shortest pause. A broker that refuses everything therefore sees one publish per delay,
//!   never a tight loop. A refusal that follows an accepted publish (the broker refuses some topics, say
//!   one reading kind) pauses nothing: the broker evidently takes the others, and they keep flowing.
//! * When the walk reaches the end of the outbox having passed refused readings, and both the pause and
//!   the retry delay are over, it starts again from the oldest pending reading: a retry pass. A retry pass
//!   that meets a refusal stops there, the walk jumps back to where the last pass ended, and the retry
//!   delay doubles (up to `reconnect_max`); it shortens again only when a retry pass gets a reading taken.
//!   Readings refused for good therefore cost one publish per retry delay, however much else is accepted;
//!   the oldest refused reading is the probe. Once the broker takes it, the retry pass carries on at full
//!   speed, oldest first.
//! * A burst of refusals, for logging and the status topic, ends only after the broker has taken a publish
//!   and refused none for a quiet period (twice `reconnect_max`, the longest gap between retry passes
//!   while refused readings remain), so interleaved accepted and refused traffic is one burst, not one per
//!   refused message.

use std::time::{Duration, Instant};

/// How often a burst of refusals is summarised in the log after its first line.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Why the broker refused a publish: the MQTT 5 PUBACK reason codes of 0x80 and more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnspecifiedError,
    ImplementationSpecificError,
    NotAuthorized,
    TopicNameInvalid,
    PacketIdentifierInUse,
    QuotaExceeded,
    PayloadFormatInvalid,
    /// A failure code MQTT 5.0 does not define for PUBACK.
    Other,
}

/// What a PUBACK says about the publish it acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The broker took the message (0x00 success, 0x10 no matching subscribers, or an MQTT 3.1.1 PUBACK).
    Accepted,
    Refused(Refusal),
}

impl Refusal {
    pub const ALL: [Refusal; 8] = [
        Refusal::UnspecifiedError,
        Refusal::ImplementationSpecificError,
        Refusal::NotAuthorized,
        Refusal::TopicNameInvalid,
        Refusal::PacketIdentifierInUse,
        Refusal::QuotaExceeded,
        Refusal::PayloadFormatInvalid,
        Refusal::Other,
    ];

    /// The counter and log name, snake_case.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::UnspecifiedError => "unspecified_error",
            Refusal::ImplementationSpecificError => "implementation_specific_error",
            Refusal::NotAuthorized => "not_authorized",
            Refusal::TopicNameInvalid => "topic_name_invalid",
            Refusal::PacketIdentifierInUse => "packet_identifier_in_use",
            Refusal::QuotaExceeded => "quota_exceeded",
            Refusal::PayloadFormatInvalid => "payload_format_invalid",
            Refusal::Other => "other",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or(Refusal::ALL.len() - 1)
    }
}

/// Reads an MQTT 5 PUBACK reason code.
pub fn classify(code: u8) -> AckOutcome {
    match code {
        0x00..=0x7f => AckOutcome::Accepted,
        0x80 => AckOutcome::Refused(Refusal::UnspecifiedError),
        0x83 => AckOutcome::Refused(Refusal::ImplementationSpecificError),
        0x87 => AckOutcome::Refused(Refusal::NotAuthorized),
        0x90 => AckOutcome::Refused(Refusal::TopicNameInvalid),
        0x91 => AckOutcome::Refused(Refusal::PacketIdentifierInUse),
        0x97 => AckOutcome::Refused(Refusal::QuotaExceeded),
        0x99 => AckOutcome::Refused(Refusal::PayloadFormatInvalid),
        _ => AckOutcome::Refused(Refusal::Other),
    }
}

/// Refusals counted per reason, without allocating.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefusalCounts([u64; Refusal::ALL.len()]);

impl RefusalCounts {
    pub fn add(&mut self, refusal: Refusal) {
        self.0[refusal.index()] += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The non-zero counts, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Refusal::ALL
            .iter()
            .zip(self.0)
            .filter(|(_, count)| *count > 0)
            .map(|(refusal, count)| (refusal.name(), count))
    }

    pub fn take(&mut self) -> RefusalCounts {
        std::mem::take(self)
    }
}

/// A log line the uplink should write about refusals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefusalReport {
    /// The first refusal outside a burst.
    Started(Refusal),
    /// Refusals since the last report, at most every [`SUMMARY_EVERY`] while the burst lasts.
    Summary(RefusalCounts),
    /// The broker took publishes and refused none for the quiet period; the burst had this many refusals.
    Ended { refused: u64 },
}

/// Decides when refusals are logged: once when a burst starts, then a summary at most every
/// [`SUMMARY_EVERY`], and once when it ends, however many publishes are refused and however they are
/// interleaved with accepted ones.
#[derive(Debug)]
pub struct RefusalLog {
    /// How long the broker must refuse nothing, having taken a publish, for a burst to end.
    quiet: Duration,
    /// When the burst's last report was made; `None` outside a burst.
    last_report: Option<Instant>,
    last_refusal: Option<Instant>,
    accepted_since_refusal: bool,
    since_report: RefusalCounts,
    in_burst: u64,
}

impl RefusalLog {
    pub fn new(quiet: Duration) -> RefusalLog {
        RefusalLog {
            quiet,
            last_report: None,
            last_refusal: None,
            accepted_since_refusal: false,
            since_report: RefusalCounts::default(),
            in_burst: 0,
        }
    }

    pub fn handle_refused(&mut self, refusal: Refusal, now: Instant) -> Option<RefusalReport> {
        self.in_burst += 1;
        self.last_refusal = Some(now);
        self.accepted_since_refusal = false;
        match self.last_report {
            None => {
                self.last_report = Some(now);
                Some(RefusalReport::Started(refusal))
            }
            Some(last) => {
                self.since_report.add(refusal);
                if now.saturating_duration_since(last) >= SUMMARY_EVERY {
                    self.last_report = Some(now);
                    Some(RefusalReport::Summary(self.since_report.take()))
                } else {
                    None
                }
            }
        }
    }

    /// `unanswered`, here and below: refused readings wait for their retry, or publishes for their answer.
    /// The broker has then not yet said whether it still refuses, so the burst goes on however long the
    /// quiet lasted: a retry pass held up by a slow disk is not a broker that takes readings again.
    pub fn handle_accepted(&mut self, now: Instant, unanswered: bool) -> Option<RefusalReport> {
        self.accepted_since_refusal = true;
        self.handle_time(now, unanswered)
    }

    /// When the burst ends if nothing is refused before then; the uplink calls [`RefusalLog::handle_time`]
    /// at that moment. `None` outside a burst, while nothing was accepted since the last refusal, or while
    /// anything is `unanswered`.
    pub fn ends_at(&self, unanswered: bool) -> Option<Instant> {
        if !self.in_burst() || !self.accepted_since_refusal || unanswered {
            return None;
        }
        self.last_refusal.map(|last| last + self.quiet)
    }

    /// Ends the burst once the quiet period after the last refusal is over and nothing is `unanswered`.
    pub fn handle_time(&mut self, now: Instant, unanswered: bool) -> Option<RefusalReport> {
        if self.ends_at(unanswered).is_none_or(|end| now < end) {
            return None;
        }
        self.last_report = None;
        self.since_report = RefusalCounts::default();
        let refused = std::mem::take(&mut self.in_burst);
        Some(RefusalReport::Ended { refused })
    }

    /// True from the first refusal until the burst ends.
    pub fn in_burst(&self) -> bool {
        self.last_report.is_some()
    }
}

/// Where the walk through the outbox goes next, and how fast, given the broker's answers.
#[derive(Debug)]
pub struct RetryGate {
    min: Duration,
    max: Duration,
    /// The pause the next refusal in a row starts.
    next_pause: Duration,
    /// No new publish before this.
    paused_until: Option<Instant>,
    /// One publish at a time until the broker takes one.
    probing: bool,
    /// The broker took a publish since the last refusal: it refuses some topics, not everything.
    accepted_since_refusal: bool,
    /// The delay the next retry pass that meets a refusal sets.
    next_retry_delay: Duration,
    /// No retry pass before this.
    retry_not_before: Option<Instant>,
    /// The walk has passed refused readings since it last started from the oldest.
    refused_behind: bool,
    /// The highest seq a pass reached; a retry pass covers the seqs up to it.
    frontier: i64,
    /// The seqs up to this belong to a retry pass (0 outside one).
    retry_until: i64,
}

/// What the uplink should do with its walk after a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRefusal {
    /// Carry on from where the walk is.
    Continue,
    /// A retry pass met a refusal: move the walk to just after this seq (where the last pass ended).
    JumpTo(i64),
}

impl RetryGate {
    pub fn new(min: Duration, max: Duration) -> RetryGate {
        RetryGate {
            min,
            max,
            next_pause: min,
            paused_until: None,
            probing: false,
            accepted_since_refusal: false,
            next_retry_delay: min,
            retry_not_before: None,
            refused_behind: false,
            frontier: 0,
            retry_until: 0,
        }
    }

    /// A new connection walks the whole outbox from the oldest reading anyway.
    pub fn handle_connected(&mut self) {
        self.refused_behind = false;
        self.frontier = 0;
        self.retry_until = 0;
    }

    /// True while the window or a retry pass depends on the time, so the uplink reads the clock only then.
    pub fn is_throttled(&self) -> bool {
        self.paused_until.is_some() || self.probing || self.refused_behind
    }

    /// The walk passed refused readings since it last started from the oldest.
    pub fn has_refused_behind(&self) -> bool {
        self.refused_behind
    }

    /// How many publishes may be in flight now, given the connection's window.
    pub fn window(&self, full: usize, now: Instant) -> usize {
        if self.paused_until.is_some_and(|until| now < until) {
            0
        } else if self.probing {
            1
        } else {
            full
        }
    }

    /// The next moment the window or a retry pass may change without any event: the end of the pause,
    /// or of the retry delay while refused readings are behind the walk.
    pub fn wake_at(&self, now: Instant) -> Option<Instant> {
        let pause = self.paused_until.filter(|until| now < *until);
        let retry = self
            .retry_not_before
            .filter(|at| self.refused_behind && now < *at);
        pause.into_iter().chain(retry).min()
    }

    /// The walk handed the record with `seq` to the client.
    pub fn handle_published(&mut self, seq: i64) {
        self.frontier = self.frontier.max(seq);
    }

    /// The broker took the reading with `seq`.
    pub fn handle_accepted(&mut self, seq: i64) {
        self.probing = false;
        self.next_pause = self.min;
        self.paused_until = None;
        self.accepted_since_refusal = true;
        if seq <= self.retry_until {
            // A reading refused before was taken: the rule that refused it may be fixed.
            self.next_retry_delay = self.min;
        }
    }

    /// The broker refused the reading with `seq`. `jitter` in [0, 1) spreads a fleet's retries (±20 %).
    pub fn handle_refused(&mut self, seq: i64, now: Instant, jitter: f64) -> AfterRefusal {
        self.refused_behind = true;
        let spread = 0.8 + 0.4 * jitter;
        // Publishes already in flight when the pause began are answered during it; they do not lengthen
        // it. A refusal right after an accepted publish is about its topic, not the broker: no pause.
        if !self.accepted_since_refusal && self.paused_until.is_none_or(|until| now >= until) {
            self.paused_until = Some(now + self.next_pause.mul_f64(spread));
            self.next_pause = (self.next_pause * 2).min(self.max);
            self.probing = true;
        }
        self.accepted_since_refusal = false;
        if self.retry_not_before.is_none_or(|at| now >= at) {
            self.retry_not_before = Some(now + self.next_retry_delay.mul_f64(spread));
        }
        if seq <= self.retry_until {
            let frontier = self.frontier;
            self.retry_until = 0;
            self.retry_not_before = Some(now + self.next_retry_delay.mul_f64(spread));
            self.next_retry_delay = (self.next_retry_delay * 2).min(self.max);
            AfterRefusal::JumpTo(frontier)
        } else {
            AfterRefusal::Continue
        }
    }

    /// The walk reached the end of the outbox with nothing in flight. Returns true when it should start a
    /// retry pass from the oldest reading now.
    pub fn handle_walk_ended(&mut self, now: Instant) -> bool {
        if !self.refused_behind
            || self.paused_until.is_some_and(|until| now < until)
            || self.retry_not_before.is_some_and(|at| now < at)
        {
            return false;
        }
        self.refused_behind = false;
        self.retry_until = self.frontier;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_classified_by_the_0x80_boundary() {
        let table: &[(u8, AckOutcome, &str)] = &[
            (0x00, AckOutcome::Accepted, ""),
            (0x10, AckOutcome::Accepted, ""),
            (0x7f, AckOutcome::Accepted, ""),
            (
                0x80,
                AckOutcome::Refused(Refusal::UnspecifiedError),
                "unspecified_error",
            ),
            (
                0x83,
                AckOutcome::Refused(Refusal::ImplementationSpecificError),
                "implementation_specific_error",
            ),
            (
                0x87,
                AckOutcome::Refused(Refusal::NotAuthorized),
                "not_authorized",
            ),
            (
                0x90,
                AckOutcome::Refused(Refusal::TopicNameInvalid),
                "topic_name_invalid",
            ),
            (
                0x91,
                AckOutcome::Refused(Refusal::PacketIdentifierInUse),
                "packet_identifier_in_use",
            ),
            (
                0x97,
                AckOutcome::Refused(Refusal::QuotaExceeded),
                "quota_exceeded",
            ),
            (
                0x99,
                AckOutcome::Refused(Refusal::PayloadFormatInvalid),
                "payload_format_invalid",
            ),
            (0x81, AckOutcome::Refused(Refusal::Other), "other"),
            (0xff, AckOutcome::Refused(Refusal::Other), "other"),
        ];
        for (code, outcome, name) in table {
            assert_eq!(classify(*code), *outcome, "code {code:#04x}");
            if let AckOutcome::Refused(refusal) = outcome {
                assert_eq!(refusal.name(), *name, "code {code:#04x}");
            }
        }
    }

    #[test]
    fn counts_are_kept_per_reason() {
        let mut counts = RefusalCounts::default();
        assert!(counts.is_empty());
        for refusal in [
            Refusal::NotAuthorized,
            Refusal::QuotaExceeded,
            Refusal::NotAuthorized,
        ] {
            counts.add(refusal);
        }
        assert_eq!(counts.total(), 3);
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            [("not_authorized", 2), ("quota_exceeded", 1)]
        );
        let taken = counts.take();
        assert!(counts.is_empty());
        assert_eq!(taken.total(), 3);
    }

    enum LogStep {
        /// Seconds since the start.
        Refused(u64, Refusal, Option<RefusalReport>),
        Accepted(u64, Option<RefusalReport>),
        /// The uplink's timer for the end of the burst fired.
        Time(u64, Option<RefusalReport>),
        EndsAt(Option<u64>),
        /// From here on, refused readings wait for their retry or publishes for their answer (or not).
        Unanswered(bool),
    }

    fn counts(entries: &[(Refusal, u64)]) -> RefusalCounts {
        let mut counts = RefusalCounts::default();
        for (refusal, n) in entries {
            for _ in 0..*n {
                counts.add(*refusal);
            }
        }
        counts
    }

    #[track_caller]
    fn check_log(steps: Vec<LogStep>) -> RefusalLog {
        use LogStep::*;
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut log = RefusalLog::new(Duration::from_secs(120));
        let mut unanswered = false;
        for (index, step) in steps.into_iter().enumerate() {
            match step {
                Refused(s, refusal, expected) => {
                    assert_eq!(log.handle_refused(refusal, at(s)), expected, "step {index}")
                }
                Accepted(s, expected) => {
                    let report = log.handle_accepted(at(s), unanswered);
                    assert_eq!(report, expected, "step {index}")
                }
                Time(s, expected) => {
                    let report = log.handle_time(at(s), unanswered);
                    assert_eq!(report, expected, "step {index}")
                }
                EndsAt(expected) => {
                    assert_eq!(log.ends_at(unanswered), expected.map(at), "step {index}")
                }
                Unanswered(now) => unanswered = now,
            }
        }
        log
    }

    #[test]
    fn a_burst_is_logged_once_then_summarised_at_most_every_minute() {
        use LogStep::*;
        use Refusal::*;
        let log = check_log(vec![
            Accepted(0, None),
            EndsAt(None),
            Refused(
                0,
                NotAuthorized,
                Some(RefusalReport::Started(NotAuthorized)),
            ),
            // Nothing accepted since the refusal: the burst has no end in sight.
            EndsAt(None),
            Refused(1, NotAuthorized, None),
            Refused(30, QuotaExceeded, None),
            Refused(59, NotAuthorized, None),
            Refused(
                60,
                NotAuthorized,
                Some(RefusalReport::Summary(counts(&[
                    (NotAuthorized, 3),
                    (QuotaExceeded, 1),
                ]))),
            ),
            Refused(61, NotAuthorized, None),
            Refused(
                200,
                NotAuthorized,
                Some(RefusalReport::Summary(counts(&[(NotAuthorized, 2)]))),
            ),
            // An accepted publish ends the burst only after a quiet period with no refusal.
            Accepted(201, None),
            EndsAt(Some(320)),
            Time(319, None),
            Time(320, Some(RefusalReport::Ended { refused: 7 })),
            Accepted(321, None),
            Time(500, None),
            Refused(
                501,
                QuotaExceeded,
                Some(RefusalReport::Started(QuotaExceeded)),
            ),
            Accepted(700, Some(RefusalReport::Ended { refused: 1 })),
        ]);
        assert!(!log.in_burst());
    }

    #[test]
    fn a_burst_does_not_end_while_a_refused_reading_waits_for_its_retry() {
        use LogStep::*;
        use Refusal::*;
        // The retry pass is late (a slow disk, a busy machine): the quiet period is over, but the broker has
        // not yet been asked again, so it has not said that it takes readings again.
        check_log(vec![
            Refused(
                0,
                NotAuthorized,
                Some(RefusalReport::Started(NotAuthorized)),
            ),
            Accepted(1, None),
            Unanswered(true),
            EndsAt(None),
            Time(500, None),
            Accepted(501, None),
            // The late pass is refused again: still the same burst, summarised as it goes on.
            Refused(
                502,
                NotAuthorized,
                Some(RefusalReport::Summary(counts(&[(NotAuthorized, 1)]))),
            ),
            Accepted(503, None),
            Unanswered(false),
            EndsAt(Some(622)),
            Time(621, None),
            Time(622, Some(RefusalReport::Ended { refused: 2 })),
        ]);
    }

    #[test]
    fn refusals_interleaved_with_accepted_publishes_are_one_burst() {
        use LogStep::*;
        use Refusal::*;
        // One kind's topic is denied, the others are allowed: a refusal every few seconds between accepted
        // readings, for ten minutes, is one burst with a summary a minute.
        let mut steps = vec![Refused(
            0,
            NotAuthorized,
            Some(RefusalReport::Started(NotAuthorized)),
        )];
        for second in (1..600).step_by(2) {
            steps.push(Accepted(second, None));
            let summary = (second + 1) % 60 == 0;
            steps.push(Refused(
                second + 1,
                NotAuthorized,
                summary.then(|| RefusalReport::Summary(counts(&[(NotAuthorized, 30)]))),
            ));
            steps.push(Time(second + 1, None));
        }
        steps.extend([
            Accepted(601, None),
            EndsAt(Some(720)),
            Time(720, Some(RefusalReport::Ended { refused: 301 })),
        ]);
        check_log(steps);
    }

    enum GateStep {
        /// Milliseconds since the start.
        At(u64),
        Published(i64),
        Accepted(i64),
        Refused(i64, AfterRefusal),
        Window(usize),
        WalkEnded(bool),
        /// Milliseconds since the start.
        WakeAt(Option<u64>),
    }

    #[track_caller]
    fn check_gate(steps: &[GateStep]) {
        let start = Instant::now();
        let mut now = start;
        let mut gate = RetryGate::new(Duration::from_millis(100), Duration::from_millis(400));
        for (index, step) in steps.iter().enumerate() {
            match step {
                GateStep::At(ms) => now = start + Duration::from_millis(*ms),
                GateStep::Published(seq) => gate.handle_published(*seq),
                GateStep::Accepted(seq) => gate.handle_accepted(*seq),
                // A jitter of 0.5 gives the delay itself.
                GateStep::Refused(seq, expected) => {
                    assert_eq!(
                        gate.handle_refused(*seq, now, 0.5),
                        *expected,
                        "step {index}"
                    )
                }
                GateStep::Window(expected) => {
                    assert_eq!(gate.window(16, now), *expected, "step {index}")
                }
                GateStep::WalkEnded(expected) => {
                    assert_eq!(gate.handle_walk_ended(now), *expected, "step {index}")
                }
                GateStep::WakeAt(expected) => assert_eq!(
                    gate.wake_at(now),
                    expected.map(|ms| start + Duration::from_millis(ms)),
                    "step {index}"
                ),
            }
        }
    }

    #[test]
    fn a_broker_refusing_everything_sees_one_publish_per_doubling_delay() {
        use AfterRefusal::Continue;
        use GateStep::*;
        check_gate(&[
            Window(16),
            Published(1),
            Published(2),
            Published(3),
            Refused(1, Continue),
            Window(0),
            // Answers to publishes already in flight do not lengthen the pause.
            At(50),
            Refused(2, Continue),
            At(99),
            Window(0),
            At(100),
            Window(1),
            // While refusals follow each other with nothing accepted, the pause doubles up to the cap.
            Refused(4, Continue),
            At(299),
            Window(0),
            At(300),
            Window(1),
            Refused(5, Continue),
            At(699),
            Window(0),
            At(700),
            Refused(6, Continue),
            At(1099),
            Window(0),
            At(1100),
            Window(1),
            // An accepted publish restores the window and the shortest pause.
            Accepted(7),
            Window(16),
            At(2000),
            Refused(8, Continue),
            Window(16),
            Refused(9, Continue),
            At(2099),
            Window(0),
            At(2100),
            Window(1),
        ]);
    }

    #[test]
    fn a_refusal_between_accepted_publishes_pauses_nothing() {
        use AfterRefusal::Continue;
        use GateStep::*;
        check_gate(&[
            Accepted(1),
            Refused(2, Continue),
            Window(16),
            Accepted(3),
            Refused(4, Continue),
            Accepted(5),
            Refused(6, Continue),
            Window(16),
            // Two refusals in a row: now the broker may be refusing everything.
            Refused(7, Continue),
            Window(0),
            At(100),
            Window(1),
        ]);
    }

    #[test]
    fn a_walk_past_refused_readings_starts_again_from_the_oldest_after_the_delays() {
        use AfterRefusal::*;
        use GateStep::*;
        check_gate(&[
            // Nothing refused: the end of the outbox is just the end.
            Published(1),
            Accepted(1),
            WalkEnded(false),
            WakeAt(None),
            Published(2),
            Published(3),
            Refused(2, Continue),
            Window(16),
            Accepted(3),
            Window(16),
            // The retry delay is not over yet.
            WalkEnded(false),
            WakeAt(Some(100)),
            At(100),
            WakeAt(None),
            WalkEnded(true),
            // The retry pass covers seqs up to 3; reading 2 is refused again, so the walk goes back to 3
            // and the next pass waits for the retry delay, which doubles with each pass that meets a
            // refusal, however many readings are accepted in between.
            Refused(2, JumpTo(3)),
            Window(16),
            Published(4),
            Accepted(4),
            WalkEnded(false),
            At(199),
            WalkEnded(false),
            At(200),
            WalkEnded(true),
            Refused(2, JumpTo(4)),
            At(399),
            WalkEnded(false),
            At(400),
            WalkEnded(true),
            Refused(2, JumpTo(4)),
            // The delay stops doubling at the cap.
            At(799),
            WalkEnded(false),
            At(800),
            WalkEnded(true),
            Refused(2, JumpTo(4)),
            At(1199),
            WalkEnded(false),
            At(1200),
            WalkEnded(true),
            // This time the broker takes the oldest: the retry pass carries on, and the delay is short again.
            Accepted(2),
            Window(16),
            Published(5),
            Refused(5, Continue),
            At(1299),
            WalkEnded(false),
            At(1300),
            WalkEnded(true),
        ]);
    }
}

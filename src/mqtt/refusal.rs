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
//! * After a refusal the uplink publishes nothing new for a delay (`reconnect_min` doubling up to
//!   `reconnect_max`, jittered), then probes with one publish at a time until the broker takes one, which
//!   restores the full window and the shortest delay. A broker that refuses everything therefore sees one
//!   publish per delay, never a tight loop.
//! * When the walk reaches the end of the outbox having passed refused readings, and the delay is over, it
//!   starts again from the oldest pending reading: a retry pass. A retry pass that meets a refusal stops
//!   there and the walk jumps back to where the last pass ended, so readings refused for good cost later
//!   readings at most one delay per pass rather than one per refused reading; the oldest refused reading is
//!   the probe. Once the broker takes it, the retry pass carries on at full speed, oldest first.

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
    /// The first refusal after an accepted publish (or since the start).
    Started(Refusal),
    /// Refusals since the last report, at most every [`SUMMARY_EVERY`] while the burst lasts.
    Summary(RefusalCounts),
    /// The broker took a publish again; the burst had this many refusals in all.
    Ended { refused: u64 },
}

/// Decides when refusals are logged: once when a burst starts, then a summary at most every
/// [`SUMMARY_EVERY`], and once when it ends, however many publishes are refused.
#[derive(Debug, Default)]
pub struct RefusalLog {
    /// When the burst's last report was made; `None` outside a burst.
    last_report: Option<Instant>,
    since_report: RefusalCounts,
    in_burst: u64,
}

impl RefusalLog {
    pub fn handle_refused(&mut self, refusal: Refusal, now: Instant) -> Option<RefusalReport> {
        self.in_burst += 1;
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

    pub fn handle_accepted(&mut self) -> Option<RefusalReport> {
        self.last_report.take()?;
        self.since_report = RefusalCounts::default();
        let refused = std::mem::take(&mut self.in_burst);
        Some(RefusalReport::Ended { refused })
    }

    /// True between the first refusal and the next accepted publish.
    pub fn in_burst(&self) -> bool {
        self.last_report.is_some()
    }
}

/// Where the walk through the outbox goes next, and how fast, given the broker's answers.
#[derive(Debug)]
pub struct RetryGate {
    min: Duration,
    max: Duration,
    /// The pause the next refusal starts.
    next_delay: Duration,
    /// No new publish before this.
    paused_until: Option<Instant>,
    /// One publish at a time until the broker takes one.
    probing: bool,
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
            next_delay: min,
            paused_until: None,
            probing: false,
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

    /// True from a refusal until the broker takes a publish again; only then does the window depend on
    /// the time, so the uplink reads the clock only then.
    pub fn is_throttled(&self) -> bool {
        self.paused_until.is_some() || self.probing
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

    /// When publishing may resume, if it is paused.
    pub fn paused_until(&self, now: Instant) -> Option<Instant> {
        self.paused_until.filter(|until| now < *until)
    }

    /// The walk handed the record with `seq` to the client.
    pub fn handle_published(&mut self, seq: i64) {
        self.frontier = self.frontier.max(seq);
    }

    /// The broker took a reading.
    pub fn handle_accepted(&mut self) {
        self.probing = false;
        self.next_delay = self.min;
        self.paused_until = None;
    }

    /// The broker refused the reading with `seq`. `jitter` in [0, 1) spreads a fleet's retries (±20 %).
    pub fn handle_refused(&mut self, seq: i64, now: Instant, jitter: f64) -> AfterRefusal {
        self.refused_behind = true;
        // Publishes already in flight when the pause began are answered during it; they do not lengthen it.
        if self.paused_until.is_none_or(|until| now >= until) {
            self.paused_until = Some(now + self.next_delay.mul_f64(0.8 + 0.4 * jitter));
            self.next_delay = (self.next_delay * 2).min(self.max);
        }
        self.probing = true;
        if seq <= self.retry_until {
            let frontier = self.frontier;
            self.retry_until = 0;
            AfterRefusal::JumpTo(frontier)
        } else {
            AfterRefusal::Continue
        }
    }

    /// The walk reached the end of the outbox with nothing in flight. Returns true when it should start a
    /// retry pass from the oldest reading now.
    pub fn handle_walk_ended(&mut self, now: Instant) -> bool {
        if !self.refused_behind || self.paused_until.is_some_and(|until| now < until) {
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
        Refused(u64, Refusal, Option<RefusalReport>),
        Accepted(Option<RefusalReport>),
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

    #[test]
    fn a_burst_is_logged_once_then_summarised_at_most_every_minute() {
        use LogStep::*;
        use Refusal::*;
        let start = Instant::now();
        let steps = [
            Accepted(None),
            Refused(
                0,
                NotAuthorized,
                Some(RefusalReport::Started(NotAuthorized)),
            ),
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
            Accepted(Some(RefusalReport::Ended { refused: 7 })),
            Accepted(None),
            Refused(
                201,
                QuotaExceeded,
                Some(RefusalReport::Started(QuotaExceeded)),
            ),
            Accepted(Some(RefusalReport::Ended { refused: 1 })),
        ];
        let mut log = RefusalLog::default();
        for (index, step) in steps.into_iter().enumerate() {
            match step {
                Refused(at, refusal, expected) => assert_eq!(
                    log.handle_refused(refusal, start + Duration::from_secs(at)),
                    expected,
                    "step {index}"
                ),
                Accepted(expected) => assert_eq!(log.handle_accepted(), expected, "step {index}"),
            }
        }
        assert!(!log.in_burst());
    }

    enum GateStep {
        /// Milliseconds since the start.
        At(u64),
        Published(i64),
        Accepted,
        Refused(i64, AfterRefusal),
        Window(usize),
        WalkEnded(bool),
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
                GateStep::Accepted => gate.handle_accepted(),
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
            }
        }
    }

    #[test]
    fn a_refusal_pauses_then_probes_one_at_a_time_with_a_doubling_delay() {
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
            Accepted,
            Window(16),
            // After an acceptance the delay starts short again; while refusals follow each other it doubles
            // up to the cap.
            Refused(4, Continue),
            At(199),
            Window(0),
            At(200),
            Window(1),
            Refused(5, Continue),
            At(399),
            Window(0),
            At(400),
            Refused(6, Continue),
            At(799),
            Window(0),
            At(800),
            Refused(7, Continue),
            At(1199),
            Window(0),
            At(1200),
            Window(1),
        ]);
    }

    #[test]
    fn a_walk_past_refused_readings_starts_again_from_the_oldest_after_the_pause() {
        use AfterRefusal::*;
        use GateStep::*;
        check_gate(&[
            // Nothing refused: the end of the outbox is just the end.
            Published(1),
            Accepted,
            WalkEnded(false),
            Published(2),
            Published(3),
            Refused(2, Continue),
            Window(0),
            // A reading taken after the refusal ends the pause: the broker takes readings.
            Accepted,
            Window(16),
            WalkEnded(true),
            // The retry pass covers seqs up to 3; reading 2 is refused again, so the walk goes back to 3.
            Refused(2, JumpTo(3)),
            Window(0),
            At(99),
            Window(0),
            At(100),
            Window(1),
            // A new reading beyond the frontier is refused on its own account: the walk carries on.
            Published(4),
            Refused(4, Continue),
            At(299),
            WalkEnded(false),
            At(300),
            WalkEnded(true),
            // This time the broker takes the oldest; the retry pass carries on at full speed.
            Accepted,
            Window(16),
            Published(4),
            Accepted,
            WalkEnded(false),
        ]);
    }
}

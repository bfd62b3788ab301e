//! Turns a continuous oximeter stream (one value set per second or so) into spot readings; pure, time comes from the readings.
//!
//! # The spot rule
//!
//! - A sample is *valid* when both `spo2` and `pulse_rate` carry numbers and none of the flags `sensor_disconnected`, `sensor_alarm`, `artifact`,
//!   `out_of_track`, `low_perfusion`, `sensor_unconnected`, `sensor_displaced`, `sensor_malfunctioning`,
//!   `equipment_malfunction`, `inadequate_signal`, `no_signal`, `no_finger`, `pulse_searching` or
//!   `pulse_searching_too_long` is set. An invalid sample (the finger was removed, or the signal is bad)
//!   empties the window and re-arms the filter. Samples that are not patient data
//!   (demonstration, test, unavailable, invalid) never reach the filter: the pipeline withholds them first.
//! - A sample's time is its `received_at`, except for a sample the device stamped itself (`time_source` device:
//!   a recorded session downloaded later), whose time is its `measured_at`; the rule then runs on the device's
//!   timeline, as if the recording were streamed live. A gap of more than 5 s between consecutive samples, or a
//!   time that goes backwards (the switch between a recording and the live stream), also empties the window
//!   and re-arms the filter.
//! - The window holds the most recent valid samples spanning `stable_for`: samples older than `stable_for` are dropped,
//!   except the newest of them, which marks the start of the span (otherwise a stream whose samples do not land on
//!   exact seconds could never span `stable_for`).
//! - The stream is *stable* when the window's oldest sample is at least `stable_for` older than its newest, the window
//!   holds at least 3 samples, and over the window max − min SpO2 ≤ 2 and max − min pulse rate ≤ 5.
//! - When stable and either armed or the last spot is at least `repeat_every` old, the filter emits one spot reading
//!   and disarms. The spot takes its kind, `measured_at`, `received_at` and `raw` from the newest sample; a spot of
//!   live samples has `time_source` hub and no record key, a spot of recorded samples keeps `time_source` device
//!   and the newest sample's record key (so downloading the recording again yields the same reading ids). Its
//!   SpO2 and pulse rate are each the lower median of the window's values (a value that was actually
//!   observed, never an average). Its flags are the union of the window's flags, in the
//!   order they were first seen.
//!
//! Defaults: `stable_for` 10 s, `repeat_every` 300 s, so a steady finger yields one spot after 10 s and then one
//! every 5 minutes; lifting and replacing the finger yields a new spot 10 s after replacement.

use std::collections::VecDeque;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::model::reading::{Flag, Reading, Supplemental, TimeSource, Value};

/// A gap longer than this between samples means the stream was interrupted.
const MAX_GAP: Duration = Duration::from_secs(5);
const MIN_SAMPLES: usize = 3;
const MAX_SPO2_SPREAD: f64 = 2.0;
const MAX_PULSE_SPREAD: f64 = 5.0;
/// Bounds memory if a stream delivers many samples with the same receive time.
const MAX_WINDOW: usize = 4096;
const INVALIDATING_FLAGS: [Flag; 14] = [
    Flag::SensorDisconnected,
    Flag::SensorAlarm,
    Flag::Artifact,
    Flag::OutOfTrack,
    Flag::LowPerfusion,
    Flag::SensorUnconnected,
    Flag::SensorDisplaced,
    Flag::SensorMalfunctioning,
    Flag::EquipmentMalfunction,
    Flag::InadequateSignal,
    Flag::NoSignal,
    Flag::NoFinger,
    Flag::PulseSearching,
    Flag::PulseSearchingTooLong,
];

/// When a continuous stream counts as a spot measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpotRule {
    /// How long the values must hold steady before a spot is emitted.
    pub stable_for: Duration,
    /// How often a steady stream emits another spot.
    pub repeat_every: Duration,
}

impl Default for SpotRule {
    fn default() -> Self {
        SpotRule {
            stable_for: Duration::from_secs(10),
            repeat_every: Duration::from_secs(300),
        }
    }
}

struct Sample {
    /// The sample's time on the timeline the rule runs on (see the module documentation).
    at: DateTime<Utc>,
    spo2: Value,
    pulse: Value,
    flags: Vec<Flag>,
}

/// Applies a [`SpotRule`] to one device's stream of readings.
pub struct SpotFilter {
    rule: SpotRule,
    window: VecDeque<Sample>,
    armed: bool,
    last_at: Option<DateTime<Utc>>,
    last_spot: Option<DateTime<Utc>>,
}

/// A sample's time for the rule: the device's stamp for a recorded sample, else the receive instant on the
/// boot-time clock where the pipeline noted it (an NTP step of the wall clock is no gap in the stream and
/// must not re-arm the filter), else the receive time.
fn timeline(sample: &Reading) -> DateTime<Utc> {
    match (sample.time_source, &sample.received_since_boot) {
        (TimeSource::Device, _) => sample.measured_at.to_utc(),
        (TimeSource::Hub, Some(boot)) => {
            DateTime::<Utc>::UNIX_EPOCH + TimeDelta::from_std(boot.since_boot).unwrap_or_default()
        }
        (TimeSource::Hub, None) => sample.received_at,
    }
}

/// Time from `earlier` to `later`, `None` if `later` is before `earlier`.
fn elapsed(earlier: DateTime<Utc>, later: DateTime<Utc>) -> Option<Duration> {
    (later - earlier).to_std().ok()
}

fn number(value: &Value) -> f64 {
    value.value.unwrap_or(f64::NAN)
}

impl SpotFilter {
    pub fn new(rule: SpotRule) -> Self {
        SpotFilter {
            rule,
            window: VecDeque::new(),
            armed: true,
            last_at: None,
            last_spot: None,
        }
    }

    /// Takes the next sample of the stream; returns a spot reading when this sample completes one.
    pub fn push(&mut self, sample: Reading) -> Option<Reading> {
        let latest = timeline(&sample);
        let interrupted = self
            .last_at
            .is_some_and(|last| elapsed(last, latest).is_none_or(|gap| gap > MAX_GAP));
        self.last_at = Some(latest);
        if interrupted {
            self.rearm();
        }
        let Some(valid) = Self::valid(&sample) else {
            self.rearm();
            return None;
        };
        self.window.push_back(valid);
        self.trim(latest);
        if !self.is_stable(latest) {
            return None;
        }
        let due = self.armed
            || self.last_spot.is_some_and(|last| {
                elapsed(last, latest).is_some_and(|age| age >= self.rule.repeat_every)
            });
        if !due {
            return None;
        }
        self.armed = false;
        self.last_spot = Some(latest);
        Some(self.spot(sample))
    }

    fn rearm(&mut self) {
        self.window.clear();
        self.armed = true;
    }

    fn valid(sample: &Reading) -> Option<Sample> {
        let has_number = |value: &&Value| value.value.is_some_and(f64::is_finite);
        let spo2 = sample.value("spo2").filter(has_number)?;
        let pulse = sample.value("pulse_rate").filter(has_number)?;
        if sample
            .flags
            .iter()
            .any(|flag| INVALIDATING_FLAGS.contains(flag))
        {
            return None;
        }
        Some(Sample {
            at: timeline(sample),
            spo2: spo2.clone(),
            pulse: pulse.clone(),
            flags: sample.flags.clone(),
        })
    }

    /// Drops samples that are older than needed to span `stable_for` back from `latest`.
    fn trim(&mut self, latest: DateTime<Utc>) {
        let age = |sample: &Sample| elapsed(sample.at, latest).unwrap_or(Duration::ZERO);
        while self.window.len() > MAX_WINDOW
            || self
                .window
                .get(1)
                .is_some_and(|next| age(next) >= self.rule.stable_for)
        {
            self.window.pop_front();
        }
    }

    fn is_stable(&self, latest: DateTime<Utc>) -> bool {
        let Some(oldest) = self.window.front() else {
            return false;
        };
        let spans = elapsed(oldest.at, latest).is_some_and(|span| span >= self.rule.stable_for);
        let spread = |values: &mut dyn Iterator<Item = f64>| {
            let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(min, max), v| {
                (min.min(v), max.max(v))
            });
            max - min
        };
        spans
            && self.window.len() >= MIN_SAMPLES
            && spread(&mut self.window.iter().map(|s| number(&s.spo2))) <= MAX_SPO2_SPREAD
            && spread(&mut self.window.iter().map(|s| number(&s.pulse))) <= MAX_PULSE_SPREAD
    }

    fn spot(&self, newest: Reading) -> Reading {
        let mut flags: Vec<Flag> = Vec::new();
        for flag in self.window.iter().flat_map(|sample| &sample.flags) {
            if !flags.contains(flag) {
                flags.push(*flag);
            }
        }
        let values = [
            lower_median(self.window.iter().map(|s| &s.spo2)),
            lower_median(self.window.iter().map(|s| &s.pulse)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let record_key = match newest.time_source {
            TimeSource::Device => newest.record_key.clone(),
            TimeSource::Hub => None,
        };
        Reading {
            values,
            flags,
            record_key,
            user_id: None,
            supplemental: vec![Supplemental::ModalitySpot],
            ..newest
        }
    }
}

/// The lower of the two middle values (the middle one for an odd count), so the result was actually observed.
fn lower_median<'a>(values: impl Iterator<Item = &'a Value>) -> Option<Value> {
    let mut values: Vec<&Value> = values.collect();
    values.sort_by(|a, b| number(a).total_cmp(&number(b)));
    let middle = values.len().checked_sub(1)? / 2;
    values.get(middle).map(|value| (*value).clone())
}

#[cfg(test)]
mod tests {
    use chrono::{TimeDelta, TimeZone};

    use super::*;
    use crate::model::codes;
    use crate::model::reading::{Kind, Special};

    fn start() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 15, 12, 0, 0).unwrap()
    }

    /// A sample received `ms` milliseconds after the start; `None` values are the device's "missing".
    fn sample(ms: i64, spo2: Option<u8>, pulse: Option<u16>, flags: &[Flag]) -> Reading {
        let received_at = start() + TimeDelta::milliseconds(ms);
        let mut reading = Reading::at_hub_time(Kind::PulseOximetry, received_at, &ms.to_be_bytes());
        reading.values = vec![
            spo2.map_or(Value::special(&codes::SPO2, Special::Missing), |v| {
                Value::number(&codes::SPO2, f64::from(v))
            }),
            pulse.map_or(
                Value::special(&codes::PULSE_RATE_OXIMETER, Special::Missing),
                |v| Value::number(&codes::PULSE_RATE_OXIMETER, f64::from(v)),
            ),
        ];
        reading.flags = flags.to_vec();
        reading
    }

    fn steady(from_s: i64, to_s: i64) -> Vec<Reading> {
        (from_s..=to_s)
            .map(|s| sample(s * 1000, Some(97), Some(72), &[]))
            .collect()
    }

    fn render(spot: &Reading) -> String {
        let value = |name| {
            spot.value(name)
                .and_then(|v| v.value)
                .map_or("?".to_string(), |v| v.to_string())
        };
        let ms = (spot.received_at - start()).num_milliseconds();
        format!(
            "t={ms} spo2={} pulse_rate={} flags=[{}]",
            value("spo2"),
            value("pulse_rate"),
            crate::model::reading::joined(&spot.flags)
        )
    }

    #[track_caller]
    fn check_with(rule: SpotRule, samples: Vec<Reading>, expected: &[&str]) {
        let mut filter = SpotFilter::new(rule);
        let spots: Vec<String> = samples
            .into_iter()
            .filter_map(|s| filter.push(s))
            .map(|s| render(&s))
            .collect();
        assert_eq!(spots, expected);
    }

    #[track_caller]
    fn check(samples: Vec<Reading>, expected: &[&str]) {
        check_with(SpotRule::default(), samples, expected);
    }

    #[test]
    fn a_wall_clock_step_in_a_steady_stream_is_no_gap() {
        // NTP steps the hub clock forward two days after the first spot; the boot-time clock runs on. A
        // gap would re-arm the filter and give a second spot ten seconds later.
        let mut filter = SpotFilter::new(SpotRule::default());
        let mut spots = Vec::new();
        for s in 0..=30i64 {
            let mut reading = sample(s * 1000, Some(97), Some(72), &[]);
            if s >= 12 {
                reading.received_at += TimeDelta::days(2);
            }
            reading.received_since_boot = Some(crate::model::reading::BootInstant {
                boot_id: "b".into(),
                since_boot: Duration::from_secs(100 + s as u64),
            });
            spots.extend(filter.push(reading));
        }
        assert_eq!(spots.len(), 1, "one placement, one spot");
    }

    #[test]
    fn steady_stream_emits_after_stable_for_then_every_repeat() {
        check(steady(0, 9), &[]);
        check(
            steady(0, 700),
            &[
                "t=10000 spo2=97 pulse_rate=72 flags=[]",
                "t=310000 spo2=97 pulse_rate=72 flags=[]",
                "t=610000 spo2=97 pulse_rate=72 flags=[]",
            ],
        );
        // Jittered sample times still span stable_for.
        let jittered = (0..=12)
            .map(|s| sample(s * 1003, Some(97), Some(72), &[]))
            .collect();
        check(jittered, &["t=10030 spo2=97 pulse_rate=72 flags=[]"]);
    }

    #[test]
    fn unstable_values_never_emit() {
        let spo2 = (0..=60)
            .map(|s| {
                sample(
                    s * 1000,
                    Some(if s % 2 == 0 { 94 } else { 97 }),
                    Some(72),
                    &[],
                )
            })
            .collect();
        check(spo2, &[]);
        let pulse = (0..=60)
            .map(|s| {
                sample(
                    s * 1000,
                    Some(97),
                    Some(if s % 2 == 0 { 70 } else { 76 }),
                    &[],
                )
            })
            .collect();
        check(pulse, &[]);
        let at_limit = (0..=10)
            .map(|s| {
                sample(
                    s * 1000,
                    Some(if s % 2 == 0 { 95 } else { 97 }),
                    Some(if s % 2 == 0 { 70 } else { 75 }),
                    &[],
                )
            })
            .collect();
        check(at_limit, &["t=10000 spo2=95 pulse_rate=70 flags=[]"]);
    }

    #[test]
    fn three_samples_are_enough_two_are_not() {
        let sparse = (0..=10)
            .step_by(5)
            .map(|s| sample(s * 1000, Some(97), Some(72), &[]))
            .collect();
        check(sparse, &["t=10000 spo2=97 pulse_rate=72 flags=[]"]);
        let rule = SpotRule {
            stable_for: Duration::from_secs(2),
            ..SpotRule::default()
        };
        check_with(
            rule,
            vec![
                sample(0, Some(97), Some(72), &[]),
                sample(2000, Some(97), Some(72), &[]),
            ],
            &[],
        );
    }

    #[test]
    fn invalid_sample_rearms() {
        for invalid in [
            sample(21_000, Some(97), Some(72), &[Flag::SensorDisconnected]),
            sample(21_000, Some(97), Some(72), &[Flag::SensorAlarm]),
            sample(21_000, Some(97), Some(72), &[Flag::Artifact]),
            sample(21_000, Some(97), Some(72), &[Flag::OutOfTrack]),
            sample(21_000, Some(97), Some(72), &[Flag::LowPerfusion]),
            sample(21_000, None, Some(72), &[]),
            sample(21_000, Some(97), None, &[]),
        ] {
            let samples = [steady(0, 20), vec![invalid], steady(22, 40)].concat();
            check(
                samples,
                &[
                    "t=10000 spo2=97 pulse_rate=72 flags=[]",
                    "t=32000 spo2=97 pulse_rate=72 flags=[]",
                ],
            );
        }
    }

    /// The HIL suite's placements, in-process with exact receive times: an OEM module's stream at ten
    /// samples a second with `stable_for` 1 s, a steady finger, a moved one (artifacts), a steady one again.
    #[test]
    fn each_placement_of_a_fast_stream_gives_one_spot() {
        let rule = SpotRule {
            stable_for: Duration::from_secs(1),
            repeat_every: Duration::from_secs(3600),
        };
        let at = |n: i64| n * 100;
        let first = (0..20).map(|n| sample(at(n), Some(97), Some(72 + (n % 2) as u16), &[]));
        let moved = (20..23).map(|n| sample(at(n), Some(80), Some(140), &[Flag::Artifact]));
        let second = (23..43).map(|n| sample(at(n), Some(95), Some(80), &[]));
        check_with(
            rule,
            first.chain(moved).chain(second).collect(),
            &[
                "t=1000 spo2=97 pulse_rate=72 flags=[]",
                "t=3300 spo2=95 pulse_rate=80 flags=[]",
            ],
        );
        // The same stream read in bursts (a stalled host): a burst shares one receive time, and the rule
        // waits for a sample that makes the window span `stable_for`.
        let bursts = (0..20).map(|n| sample((n / 5) * 500, Some(97), Some(72), &[]));
        check_with(
            rule,
            bursts.collect(),
            &["t=1000 spo2=97 pulse_rate=72 flags=[]"],
        );
    }

    #[test]
    fn no_measurement_is_invalid() {
        let mut removed = sample(21_000, Some(97), Some(72), &[]);
        removed.values = vec![
            Value::special(&codes::SPO2, Special::NoMeasurement),
            Value::special(&codes::PULSE_RATE_OXIMETER, Special::NoMeasurement),
        ];
        let samples = [steady(0, 20), vec![removed], steady(22, 40)].concat();
        check(
            samples,
            &[
                "t=10000 spo2=97 pulse_rate=72 flags=[]",
                "t=32000 spo2=97 pulse_rate=72 flags=[]",
            ],
        );
    }

    #[test]
    fn gap_rearms() {
        check(
            [steady(0, 20), steady(26, 40)].concat(),
            &[
                "t=10000 spo2=97 pulse_rate=72 flags=[]",
                "t=36000 spo2=97 pulse_rate=72 flags=[]",
            ],
        );
        // A gap of exactly 5 s is not an interruption.
        check(
            [steady(0, 20), steady(25, 40)].concat(),
            &["t=10000 spo2=97 pulse_rate=72 flags=[]"],
        );
        // Neither is a pause before stability.
        check(
            [steady(0, 4), steady(9, 20)].concat(),
            &["t=10000 spo2=97 pulse_rate=72 flags=[]"],
        );
        // A receive time that goes backwards restarts the window.
        check(
            [steady(100, 120), steady(0, 20)].concat(),
            &[
                "t=110000 spo2=97 pulse_rate=72 flags=[]",
                "t=10000 spo2=97 pulse_rate=72 flags=[]",
            ],
        );
    }

    #[test]
    fn median_is_an_observed_value() {
        let rule = SpotRule {
            stable_for: Duration::from_secs(2),
            ..SpotRule::default()
        };
        let samples = vec![
            sample(0, Some(96), Some(70), &[]),
            sample(700, Some(98), Some(75), &[]),
            sample(1400, Some(97), Some(71), &[]),
            sample(2000, Some(98), Some(72), &[]),
        ];
        check_with(rule, samples, &["t=2000 spo2=97 pulse_rate=71 flags=[]"]);
        let odd = vec![
            sample(0, Some(96), Some(70), &[]),
            sample(1000, Some(98), Some(75), &[]),
            sample(2000, Some(97), Some(71), &[]),
        ];
        check_with(rule, odd, &["t=2000 spo2=97 pulse_rate=71 flags=[]"]);
    }

    #[test]
    fn window_drops_old_samples() {
        let rule = SpotRule {
            stable_for: Duration::from_secs(3),
            ..SpotRule::default()
        };
        // The early 90s fall out of the window, so the later steady values become stable.
        let samples = [90, 90, 90, 97, 97, 97, 97]
            .into_iter()
            .zip(0..)
            .map(|(spo2, s)| sample(s * 1000, Some(spo2), Some(72), &[]))
            .collect();
        check_with(rule, samples, &["t=6000 spo2=97 pulse_rate=72 flags=[]"]);
    }

    #[test]
    fn flags_are_the_union_in_first_seen_order() {
        let rule = SpotRule {
            stable_for: Duration::from_secs(2),
            ..SpotRule::default()
        };
        let samples = vec![
            sample(0, Some(97), Some(72), &[Flag::Smartpoint]),
            sample(
                1000,
                Some(97),
                Some(72),
                &[Flag::MarginalPerfusion, Flag::Smartpoint],
            ),
            sample(2000, Some(97), Some(72), &[Flag::LowBattery]),
        ];
        check_with(
            rule,
            samples,
            &["t=2000 spo2=97 pulse_rate=72 flags=[smartpoint,marginal_perfusion,low_battery]"],
        );
    }

    #[test]
    fn spot_takes_time_and_raw_from_the_newest_sample() {
        let mut filter = SpotFilter::new(SpotRule::default());
        let mut spots = Vec::new();
        for mut reading in steady(0, 10) {
            reading.measured_at = reading.received_at.fixed_offset() - TimeDelta::seconds(1);
            reading.record_key = Some("device-key".to_string());
            spots.extend(filter.push(reading));
        }
        let [spot] = spots.as_slice() else {
            panic!("expected one spot, got {spots:?}")
        };
        let newest = start() + TimeDelta::seconds(10);
        assert_eq!(spot.kind, Kind::PulseOximetry);
        assert_eq!(spot.received_at, newest);
        assert_eq!(
            spot.measured_at,
            newest.fixed_offset() - TimeDelta::seconds(1)
        );
        assert_eq!(spot.time_source, TimeSource::Hub);
        assert_eq!(spot.raw, 10_000i64.to_be_bytes());
        assert_eq!(spot.record_key, None);
        assert_eq!(
            spot.values
                .iter()
                .map(|v| v.measure.name)
                .collect::<Vec<_>>(),
            ["spo2", "pulse_rate"]
        );
        assert_eq!(spot.values[1].measure, &codes::PULSE_RATE_OXIMETER);
    }

    /// A recording downloaded in one burst: all samples share one receive time, and the rule runs on the
    /// device's stamps instead.
    #[test]
    fn recorded_samples_follow_the_device_timeline() {
        let downloaded_at = start() + TimeDelta::hours(10);
        let recorded = |s: i64, spo2: u8| {
            let mut reading = sample(0, Some(spo2), Some(60), &[Flag::StoredSession]);
            reading.received_at = downloaded_at;
            reading.measured_at = (start() + TimeDelta::seconds(s)).fixed_offset();
            reading.time_source = TimeSource::Device;
            reading.record_key = Some(format!("stored:{s}"));
            reading
        };
        let mut filter = SpotFilter::new(SpotRule::default());
        let mut spots = Vec::new();
        // 700 s of a steady recording, then 20 s at another level after a 10 s gap, then the live stream.
        for s in 0..=700 {
            spots.extend(filter.push(recorded(s, 95)));
        }
        for s in 711..=730 {
            spots.extend(filter.push(recorded(s, 91)));
        }
        for s in 0..=10 {
            spots.extend(filter.push(sample(36_000_000 + s * 1000, Some(97), Some(72), &[])));
        }
        let rendered: Vec<String> = spots
            .iter()
            .map(|spot| {
                format!(
                    "{} {} {} spo2={}",
                    (spot.measured_at.to_utc() - start()).num_seconds(),
                    spot.time_source.as_str(),
                    spot.record_key.as_deref().unwrap_or("-"),
                    spot.value("spo2").and_then(|v| v.value).unwrap()
                )
            })
            .collect();
        assert_eq!(
            rendered,
            [
                "10 device stored:10 spo2=95",
                "310 device stored:310 spo2=95",
                "610 device stored:610 spo2=95",
                "721 device stored:721 spo2=91",
                "36010 hub - spo2=97",
            ]
        );
    }
}

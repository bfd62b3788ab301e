//! The one time model: how a reading's time is decided from a device's time stamp, the trust the hub has in
//! its own clock, and the device clock the hub read in the same session. Pure: every time is passed in.
//!
//! The rules, in the order they are applied to a record the device stamped (the README's "Time" table is
//! the same rules from the reader's side):
//!
//! 1. A time stamp that is not a plausible calendar time (a clock never set, a year before 2010 or after
//!    2099, an impossible field, a local time that does not exist) is not used: hub time and
//!    `device_clock_invalid`.
//! 2. When the hub read the device's clock in this session (the coincident time stamp) and that clock
//!    itself was not plausible, or the record lies after the device's clock by more than the tolerance
//!    while the hub did not set the clock in between, the device's timeline restarted since the record was
//!    made: hub time and `device_clock_reset`, since its time cannot be known.
//! 3. When that read measured a large offset against a trusted hub clock, a record stamped on the old
//!    timeline (not after the clock read) is moved by the offset: device time, `device_clock_corrected`;
//!    unless that leaves the plausible years, which no clock error explains: `device_clock_invalid`.
//! 4. A device time more than ten minutes after a trusted hub clock is distrusted: hub time and
//!    `device_clock_ahead`. Against an untrusted hub clock no such judgement is made.
//! 5. Otherwise the device's time stands.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDateTime, TimeDelta, Utc};

pub use crate::model::clocks::{
    DeviceClockCheck, DeviceDateTime, HubClock, MAX_PLAUSIBLE_YEAR, MIN_PLAUSIBLE_YEAR,
};
use crate::model::reading::{Flag, HubTimeZone, TimeSource};

/// How far ahead of a trusted hub clock a device clock may run before its time is distrusted.
pub const MAX_AHEAD: TimeDelta = TimeDelta::minutes(10);
/// A device clock within this of the hub's is in sync; beyond it, records are corrected by the offset.
pub const CLOCK_TOLERANCE: TimeDelta = TimeDelta::minutes(2);

/// What a decoder knows about time when it stamps a reading.
#[derive(Clone, Copy)]
pub struct HubTime<'a> {
    /// When the hub read the bytes, by its own wall clock.
    pub received_at: DateTime<Utc>,
    /// The same instant on a clock that never steps (the boot-time clock, suspend included), for the timers
    /// of a device dialog, which an NTP step of the wall clock must not stretch or cut short. Only
    /// differences between two of these mean anything.
    pub steady: DateTime<Utc>,
    /// The hub's time zone, in which device wall times are read.
    pub time_zone: &'a dyn HubTimeZone,
    pub hub_clock: HubClock,
    /// The device clock read earlier in this session, if the hub could read it.
    pub device_clock: Option<&'a DeviceClockCheck>,
}

impl<'a> HubTime<'a> {
    /// A receive time read by a clock taken as trusted, with no device clock read: what offline decoding
    /// (`vitalsd decode`, `vitalsd serial --listen`) and the tables assume.
    pub fn trusted(received_at: DateTime<Utc>, time_zone: &'a dyn HubTimeZone) -> HubTime<'a> {
        HubTime {
            received_at,
            steady: received_at,
            time_zone,
            hub_clock: HubClock::Trusted,
            device_clock: None,
        }
    }
}

/// A reading's time, decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    pub measured_at: DateTime<FixedOffset>,
    pub time_source: TimeSource,
    /// `device_clock_invalid`, `device_clock_reset`, `device_clock_corrected` or `device_clock_ahead`.
    pub flag: Option<Flag>,
    /// The time stamp as the device reported it, when it reported a calendar time.
    pub device_time: Option<NaiveDateTime>,
}

impl Stamp {
    /// Writes the verdict into a reading (time, source, flag and the time as reported).
    pub fn apply_to(self, reading: &mut crate::model::reading::Reading) {
        reading.measured_at = self.measured_at;
        reading.time_source = self.time_source;
        reading.flags.extend(self.flag);
        reading.device_time = self.device_time;
    }
}

/// Whether a calendar time has a four-digit year, as every device time format and the payload's
/// `device_time` do; arithmetic on a device time (a glucose base time plus its offset) can leave them.
pub fn has_four_digit_year(time: &NaiveDateTime) -> bool {
    (0..=9999).contains(&time.year())
}

/// Whether a reading's device time stamp, with its bytes, names the record: true for any plausible time
/// stamp, whatever the hub made of it (ahead, reset, corrected), so a record re-sent after a reboot is
/// recognised whatever the hub clock said either time. A clock that was never set stamps every record
/// alike, so such a stamp names nothing.
pub fn stamp_names_the_record(reading: &crate::model::reading::Reading) -> bool {
    reading
        .device_time
        .is_some_and(|time| DeviceDateTime::Known(time).plausible().is_some())
}

/// Decides a record's time from the device's time stamp (the rules are at the top of this module).
pub fn judge(device_time: DeviceDateTime, hub: &HubTime<'_>) -> Stamp {
    let hub_stamp = |flag| Stamp {
        measured_at: hub.received_at.fixed_offset(),
        time_source: TimeSource::Hub,
        flag: Some(flag),
        device_time: device_time.known(),
    };
    let Some(local) = device_time.plausible() else {
        return hub_stamp(Flag::DeviceClockInvalid);
    };
    let Some(resolved) = hub.time_zone.resolve(local) else {
        return hub_stamp(Flag::DeviceClockInvalid);
    };
    let mut stamp = Stamp {
        measured_at: resolved,
        time_source: TimeSource::Device,
        flag: None,
        device_time: Some(local),
    };
    if let Some(check) = hub.device_clock {
        let Some(device_at_check) = check.device_time.plausible() else {
            return hub_stamp(Flag::DeviceClockReset);
        };
        // The device clock has run on since the hub read it, by as much as the hub's clock has.
        let since_check = hub
            .received_at
            .signed_duration_since(check.hub_time)
            .max(TimeDelta::zero());
        let device_now = device_at_check
            .checked_add_signed(since_check + CLOCK_TOLERANCE)
            .unwrap_or(NaiveDateTime::MAX);
        if local > device_now && !check.set {
            return hub_stamp(Flag::DeviceClockReset);
        }
        if let Some(offset) = check.offset().filter(|o| o.abs() > CLOCK_TOLERANCE) {
            if local <= device_at_check {
                let corrected = resolved.checked_sub_signed(offset).filter(|time| {
                    (MIN_PLAUSIBLE_YEAR..=MAX_PLAUSIBLE_YEAR).contains(&time.naive_local().year())
                });
                // An offset that moves a record out of the years a set clock shows is no clock error the
                // hub can undo: the record's time cannot be known.
                let Some(corrected) = corrected else {
                    return hub_stamp(Flag::DeviceClockInvalid);
                };
                stamp.measured_at = corrected;
                stamp.flag = Some(Flag::DeviceClockCorrected);
            }
        }
    }
    if is_after_trusted_hub(stamp.measured_at, hub) {
        return hub_stamp(Flag::DeviceClockAhead);
    }
    stamp
}

/// Whether `time` lies further after a trusted hub clock than a device clock may run ahead. Always false
/// against an untrusted hub clock, which cannot tell a device clock ahead from its own that is behind.
pub fn is_after_trusted_hub(time: DateTime<FixedOffset>, hub: &HubTime<'_>) -> bool {
    runs_past_hub(time, hub.received_at, hub.hub_clock)
}

/// [`is_after_trusted_hub`] for callers that hold the hub's time and trust but no time zone (a decoder
/// judging a recording's end when the dialog moves on).
pub fn runs_past_hub(
    time: DateTime<FixedOffset>,
    hub_now: DateTime<Utc>,
    hub_clock: HubClock,
) -> bool {
    hub_clock.is_trusted() && time.signed_duration_since(hub_now) > MAX_AHEAD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc() -> FixedOffset {
        FixedOffset::east_opt(0).unwrap()
    }

    fn local(text: &str) -> NaiveDateTime {
        text.parse().unwrap()
    }

    fn check_at(device: &str, hub: &str, clock: HubClock, set: bool) -> DeviceClockCheck {
        let hub_time: DateTime<Utc> = hub.parse().unwrap();
        DeviceClockCheck {
            device_time: if device == "unknown" {
                DeviceDateTime::Unknown
            } else {
                DeviceDateTime::Known(local(device))
            },
            hub_time,
            hub_local: hub_time.naive_utc(),
            hub_clock: clock,
            set,
        }
    }

    /// Renders a verdict as `measured_at source flag`.
    #[track_caller]
    fn check(device: &str, clock: HubClock, session: Option<DeviceClockCheck>, expected: &str) {
        let zone = utc();
        let hub = HubTime {
            received_at: "2026-03-15T12:00:00Z".parse().unwrap(),
            steady: "2026-03-15T12:00:00Z".parse().unwrap(),
            time_zone: &zone,
            hub_clock: clock,
            device_clock: session.as_ref(),
        };
        let device_time = match device {
            "unknown" => DeviceDateTime::Unknown,
            text => DeviceDateTime::Known(local(text)),
        };
        let stamp = judge(device_time, &hub);
        let rendered = format!(
            "{} {} {}",
            stamp.measured_at.naive_local(),
            stamp.time_source.as_str(),
            stamp.flag.map_or("-", Flag::as_str)
        );
        assert_eq!(rendered, expected, "{device} {clock:?} {session:?}");
        assert_eq!(stamp.device_time, device_time.known());
    }

    use HubClock::{Synchronized as Sync, Trusted, Unsynchronized as Unsync};
    const HUB: &str = "2026-03-15 12:00:00 hub";

    #[test]
    fn years_a_set_clock_cannot_show_are_invalid_whatever_the_hub_clock() {
        for clock in [Sync, Trusted, Unsync] {
            check(
                "unknown",
                clock,
                None,
                &format!("{HUB} device_clock_invalid"),
            );
            check(
                "1999-12-31T23:59:59",
                clock,
                None,
                &format!("{HUB} device_clock_invalid"),
            );
            check(
                "2000-01-01T00:00:00",
                clock,
                None,
                &format!("{HUB} device_clock_invalid"),
            );
            check(
                "2009-12-31T23:59:59",
                clock,
                None,
                &format!("{HUB} device_clock_invalid"),
            );
            check(
                "2100-01-01T00:00:00",
                clock,
                None,
                &format!("{HUB} device_clock_invalid"),
            );
            check(
                "2010-01-01T00:00:00",
                clock,
                None,
                "2010-01-01 00:00:00 device -",
            );
            check(
                "2026-03-15T11:00:00",
                clock,
                None,
                "2026-03-15 11:00:00 device -",
            );
        }
    }

    #[test]
    fn extreme_hub_times_are_judged_without_overflow() {
        let zone = utc();
        let session = check_at("2026-03-15T12:00:00", "1970-01-01T00:00:00Z", Sync, false);
        for received_at in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
            let hub = HubTime {
                received_at,
                steady: received_at,
                time_zone: &zone,
                hub_clock: Sync,
                device_clock: Some(&session),
            };
            let stamp = judge(DeviceDateTime::Known(local("2026-03-15T11:00:00")), &hub);
            assert_eq!(stamp.device_time, Some(local("2026-03-15T11:00:00")));
        }
    }

    #[test]
    fn only_a_trusted_hub_clock_judges_a_device_clock_ahead() {
        check(
            "2026-03-15T12:09:59",
            Sync,
            None,
            "2026-03-15 12:09:59 device -",
        );
        check(
            "2026-03-15T12:10:01",
            Sync,
            None,
            &format!("{HUB} device_clock_ahead"),
        );
        check(
            "2026-03-15T12:10:01",
            Trusted,
            None,
            &format!("{HUB} device_clock_ahead"),
        );
        check(
            "2099-12-31T00:00:00",
            Sync,
            None,
            &format!("{HUB} device_clock_ahead"),
        );
        // An unsynchronised hub clock may be the one that is behind (a Pi booted on last week's time).
        check(
            "2026-03-17T12:00:00",
            Unsync,
            None,
            "2026-03-17 12:00:00 device -",
        );
        check(
            "2099-12-31T00:00:00",
            Unsync,
            None,
            "2099-12-31 00:00:00 device -",
        );
    }

    #[test]
    fn a_device_clock_read_in_the_session_corrects_or_exposes_its_records() {
        let ahead = |set| {
            Some(check_at(
                "2026-03-15T13:00:00",
                "2026-03-15T12:00:00Z",
                Sync,
                set,
            ))
        };
        // Records on the old timeline move by the offset (one hour ahead).
        check(
            "2026-03-15T12:30:00",
            Sync,
            ahead(true),
            "2026-03-15 11:30:00 device device_clock_corrected",
        );
        check(
            "2026-03-15T13:00:00",
            Sync,
            ahead(true),
            "2026-03-15 12:00:00 device device_clock_corrected",
        );
        // An untrusted hub clock measures nothing: no correction, and no ahead verdict either.
        let untrusted = Some(check_at(
            "2026-03-15T13:00:00",
            "2026-03-15T11:59:00Z",
            Unsync,
            false,
        ));
        check(
            "2026-03-15T12:30:00",
            Unsync,
            untrusted,
            "2026-03-15 12:30:00 device -",
        );
        // A small offset changes nothing.
        let close = Some(check_at(
            "2026-03-15T12:00:30",
            "2026-03-15T12:00:00Z",
            Sync,
            true,
        ));
        check(
            "2026-03-15T11:00:00",
            Sync,
            close,
            "2026-03-15 11:00:00 device -",
        );
        // A correction that would leave the years a set clock shows is not made.
        let far = Some(check_at(
            "2099-01-01T00:00:00",
            "2026-03-15T12:00:00Z",
            Sync,
            false,
        ));
        check(
            "2010-06-01T00:00:00",
            Sync,
            far,
            &format!("{HUB} device_clock_invalid"),
        );
        // A record after the device's own clock: the clock went back since (a battery change).
        let behind = Some(check_at(
            "2026-01-01T08:00:00",
            "2026-03-15T11:59:00Z",
            Unsync,
            false,
        ));
        check(
            "2026-03-10T08:00:00",
            Unsync,
            behind,
            &format!("{HUB} device_clock_reset"),
        );
        check(
            "2025-12-31T08:00:00",
            Unsync,
            behind,
            "2025-12-31 08:00:00 device -",
        );
        // A clock that reads "not set" now: every plausible record was made on a timeline that is gone.
        let reset = Some(check_at("unknown", "2026-03-15T11:59:00Z", Sync, true));
        check(
            "2026-03-10T08:00:00",
            Sync,
            reset,
            &format!("{HUB} device_clock_reset"),
        );
        check(
            "2000-01-01T00:10:00",
            Sync,
            reset,
            &format!("{HUB} device_clock_invalid"),
        );
    }

    mod properties {
        use chrono::NaiveDate;
        use proptest::prelude::*;

        use super::*;

        /// A device time stamp: calendar fields as a clock might send them (any of which may be impossible),
        /// a time near a given instant (so the ahead, reset and correction rules are reached), or "unknown".
        #[derive(Debug, Clone)]
        enum Stamped {
            Fields(i32, u32, u32, u32, u32, u32),
            Near(i64),
            Unknown,
        }

        impl Stamped {
            /// The time stamp as the device sends it; `near` is the wall time `Near` is relative to.
            fn read(&self, near: NaiveDateTime) -> DeviceDateTime {
                let known = match *self {
                    Stamped::Fields(year, month, day, hour, minute, second) => {
                        NaiveDate::from_ymd_opt(year, month, day)
                            .and_then(|date| date.and_hms_opt(hour, minute, second))
                    }
                    Stamped::Near(seconds) => near.checked_add_signed(TimeDelta::seconds(seconds)),
                    Stamped::Unknown => None,
                };
                known.map_or(DeviceDateTime::Unknown, DeviceDateTime::Known)
            }
        }

        fn stamped() -> impl Strategy<Value = Stamped> {
            let year = prop_oneof![0..=9999i32, 2005..=2105i32];
            prop_oneof![
                2 => (year, 0..=13u32, 0..=32u32, 0..=25u32, 0..=60u32, 0..=60u32)
                    .prop_map(|(y, mo, d, h, mi, s)| Stamped::Fields(y, mo, d, h, mi, s)),
                // From days before to days after, around the tolerances (two and ten minutes).
                3 => prop_oneof![-900..=900i64, -400_000..=400_000i64].prop_map(Stamped::Near),
                1 => Just(Stamped::Unknown),
            ]
        }

        fn hub_clock() -> impl Strategy<Value = HubClock> {
            prop_oneof![
                Just(HubClock::Synchronized),
                Just(HubClock::Trusted),
                Just(HubClock::Unsynchronized),
            ]
        }

        /// The device clock read earlier in the session: what it said, how long before the reading the hub
        /// read it, by which hub clock, and whether the hub then set it.
        fn session() -> impl Strategy<Value = Option<(Stamped, i64, HubClock, bool)>> {
            let before = prop_oneof![0..=3600i64, 0..=400_000_000i64];
            proptest::option::of((stamped(), before, hub_clock(), any::<bool>()))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1024))]

            #[test]
            fn a_verdict_never_trusts_what_the_rules_distrust(
                device in stamped(),
                // Mostly 2010 to 2100; a hub clock may be far off (1970 to 2200), but it is a time.
                received_seconds in prop_oneof![1_262_304_000..=4_102_444_800i64, 0..=7_258_118_400i64],
                clock in hub_clock(),
                session in session(),
                offset_seconds in -86_399..=86_399i32,
            ) {
                let zone = FixedOffset::east_opt(offset_seconds).unwrap();
                let received_at = DateTime::from_timestamp(received_seconds, 0).unwrap();
                let local_at = |time: DateTime<Utc>| time.with_timezone(&zone).naive_local();
                let check = session.map(|(said, before, check_clock, set)| {
                    let hub_time = received_at - TimeDelta::seconds(before);
                    DeviceClockCheck {
                        device_time: said.read(local_at(hub_time)),
                        hub_time,
                        hub_local: local_at(hub_time),
                        hub_clock: check_clock,
                        set,
                    }
                });
                let hub = HubTime {
                    received_at,
                    steady: received_at,
                    time_zone: &zone,
                    hub_clock: clock,
                    device_clock: check.as_ref(),
                };
                let device_time = device.read(local_at(received_at));
                let stamp = judge(device_time, &hub);

                // (a) Never in the future of a trusted hub clock beyond the tolerance, corrected or not.
                if clock.is_trusted() {
                    prop_assert!(
                        stamp.measured_at.signed_duration_since(received_at) <= MAX_AHEAD,
                        "{stamp:?} is ahead of the trusted hub clock at {received_at}"
                    );
                }
                // (b) A device time is one a set clock can show.
                if stamp.time_source == TimeSource::Device {
                    let year = stamp.device_time.map(|time| time.year());
                    prop_assert!(
                        year.is_some_and(|year| (MIN_PLAUSIBLE_YEAR..=MAX_PLAUSIBLE_YEAR).contains(&year)),
                        "{stamp:?} uses an implausible device time"
                    );
                    // ... and so is the time published, after any correction.
                    let published = stamp.measured_at.naive_local().year();
                    prop_assert!(
                        (MIN_PLAUSIBLE_YEAR..=MAX_PLAUSIBLE_YEAR).contains(&published),
                        "{stamp:?} was corrected to an implausible time"
                    );
                    prop_assert!(matches!(stamp.flag, None | Some(Flag::DeviceClockCorrected)), "{stamp:?}");
                } else {
                    prop_assert_eq!(stamp.measured_at, received_at.fixed_offset());
                    prop_assert!(stamp.flag.is_some(), "{:?}", stamp);
                }
                // (c) The time as reported is kept exactly, whatever the verdict.
                prop_assert_eq!(stamp.device_time, device_time.known());
            }
        }
    }
}

//! What the hub knows of the clocks behind a reading: whether its own clock could be trusted, a device's
//! time stamp as it was on the wire, and the device clock read in a session. Pure data; the time model
//! (`model::measurement_time`) judges with it.

use chrono::{DateTime, Datelike, NaiveDateTime, TimeDelta, Utc};

/// Device times before this year are a clock that was never set (scales that count from 1970, cuffs
/// that start at their factory date of 2000), not old records: no device we read stores a decade.
pub const MIN_PLAUSIBLE_YEAR: i32 = 2010;
/// Device times after this year are a corrupt or wrapped clock (0xFFFF years, BCD 99), not a future.
pub const MAX_PLAUSIBLE_YEAR: i32 = 2099;
/// Whether the hub's own wall clock could be trusted when it read something; published as `hub_clock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum HubClock {
    /// The kernel says the clock is synchronised (NTP, through timesyncd, chrony or ntpd).
    Synchronized,
    /// The operator vouches for the clock (`hub.clock = "trusted"`: a battery-backed RTC, GPS).
    Trusted,
    /// Neither: after a power cut a Raspberry Pi runs on the last saved time until NTP answers.
    Unsynchronized,
}

impl HubClock {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn is_trusted(self) -> bool {
        self != HubClock::Unsynchronized
    }
}

/// A device's time stamp as it was on the wire: local wall time without a zone, or "not a time".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDateTime {
    /// A valid calendar time (not yet judged plausible).
    Known(NaiveDateTime),
    /// Year, month or day 0 ("unknown", a clock never set) or an impossible date.
    Unknown,
}

impl DeviceDateTime {
    /// The time as read, when it is a calendar time at all.
    pub fn known(self) -> Option<NaiveDateTime> {
        match self {
            DeviceDateTime::Known(time) => Some(time),
            DeviceDateTime::Unknown => None,
        }
    }

    /// A calendar time inside the years a device clock that was ever set can show.
    pub fn plausible(self) -> Option<NaiveDateTime> {
        self.known()
            .filter(|time| (MIN_PLAUSIBLE_YEAR..=MAX_PLAUSIBLE_YEAR).contains(&time.year()))
    }
}

/// The device clock as the hub read it during a session: a coincident time stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceClockCheck {
    /// What the device's clock said.
    pub device_time: DeviceDateTime,
    /// The hub's wall clock at the read (trusted or not; see `hub_clock`).
    pub hub_time: DateTime<Utc>,
    /// The hub's wall clock at the read, local wall time, as the device keeps it.
    pub hub_local: NaiveDateTime,
    pub hub_clock: HubClock,
    /// Whether the hub then wrote its own time into the device.
    pub set: bool,
}

impl DeviceClockCheck {
    /// Device clock minus hub clock, when both are known and the hub clock was trusted: an offset against
    /// an untrusted clock says nothing about the device.
    pub fn offset(&self) -> Option<TimeDelta> {
        let device = self.device_time.plausible()?;
        self.hub_clock
            .is_trusted()
            .then(|| device.signed_duration_since(self.hub_local))
    }
}

//! The only place that reads the operating system's clocks: the wall clock, whether the kernel holds it
//! synchronised, and the boot-time clock with the id of the boot it counts from.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::model::measurement_time::HubClock;
use crate::model::reading::BootInstant;

/// Test hook: a file whose content stands in for the kernel's answer to "is the clock synchronised?"
/// (`synchronized`, anything else is not). The test machines' kernels always say no; the HIL suite uses
/// this to let trust arrive mid-run. Never set on a hub.
pub const SYNC_STATE_FILE_ENV: &str = "VITALSD_TEST_CLOCK_SYNC_FILE";
/// Test hook: a file read instead of `/proc/sys/kernel/random/boot_id`, so a test can stage a reboot.
pub const BOOT_ID_FILE_ENV: &str = "VITALSD_TEST_BOOT_ID_FILE";

/// `hub.clock`: when the hub believes its own wall clock; the configuration names it in lowercase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum ClockPolicy {
    /// Only while the kernel says the clock is synchronised (NTP through timesyncd, chrony or ntpd).
    #[default]
    Ntp,
    /// Always: the operator vouches for the clock (a battery-backed RTC, GPS).
    Trusted,
}

static POLICY: AtomicU8 = AtomicU8::new(0);

/// Sets the policy for the rest of the process; the daemon calls it once, from its configuration.
pub fn set_policy(policy: ClockPolicy) {
    POLICY.store(
        match policy {
            ClockPolicy::Ntp => 0,
            ClockPolicy::Trusted => 1,
        },
        Ordering::Relaxed,
    );
}

/// The hub's wall-clock time.
pub fn now_utc() -> DateTime<Utc> {
    Utc::now()
}

/// The hub's wall-clock time in its own time zone, for setting device clocks that keep local time.
pub fn now_local() -> chrono::DateTime<chrono::Local> {
    chrono::Local::now()
}

/// Whether the hub's wall clock can be believed now, by the policy and the kernel's word.
pub fn hub_clock() -> HubClock {
    if POLICY.load(Ordering::Relaxed) == 1 {
        return HubClock::Trusted;
    }
    if kernel_says_synchronized() {
        HubClock::Synchronized
    } else {
        HubClock::Unsynchronized
    }
}

fn kernel_says_synchronized() -> bool {
    if let Some(path) = std::env::var_os(SYNC_STATE_FILE_ENV) {
        return std::fs::read_to_string(path).is_ok_and(|text| text.trim() == "synchronized");
    }
    // SAFETY: `timex` is plain data, and adjtimex with `modes` 0 only reads the kernel's state into it.
    let status = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        if libc::adjtimex(&mut timex) == -1 {
            return false;
        }
        timex.status
    };
    status & libc::STA_UNSYNC == 0
}

/// The wall clock, the boot-time clock and the clock's trust, read together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubNow {
    pub wall: DateTime<Utc>,
    pub boot: BootInstant,
    pub clock: HubClock,
}

impl HubNow {
    /// The boot-time instant of an earlier wall-clock time of this run, by the wall clock's difference
    /// (the wall clock does not step between the two in any case that matters: a step makes the clock
    /// trusted, and readings received while it was trusted are not resolved from their boot instant).
    pub fn boot_instant_at(&self, wall: DateTime<Utc>) -> BootInstant {
        let back = (self.wall - wall).to_std().unwrap_or_default();
        BootInstant {
            boot_id: self.boot.boot_id.clone(),
            since_boot: self.boot.since_boot.saturating_sub(back),
        }
    }
}

/// Reads the hub's clocks.
pub fn hub_now() -> HubNow {
    let clock = hub_clock();
    let since_boot = since_boot();
    HubNow {
        wall: now_utc(),
        boot: BootInstant {
            boot_id: boot_id().to_string(),
            since_boot,
        },
        clock,
    }
}

/// The id of this boot (a random UUID the kernel makes at every boot).
pub fn boot_id() -> &'static str {
    static BOOT_ID: OnceLock<String> = OnceLock::new();
    BOOT_ID.get_or_init(|| {
        let path = std::env::var_os(BOOT_ID_FILE_ENV)
            .unwrap_or_else(|| "/proc/sys/kernel/random/boot_id".into());
        match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(error) => {
                // Without a boot id no reading can be matched to its boot later; a fresh random one
                // makes every earlier boot's unresolved readings count as another boot's, which is true.
                tracing::warn!(%error, "Cannot read the boot id; using a random one for this run.");
                format!("random-{:016x}", fastrand::u64(..))
            }
        }
    })
}

/// Time since boot on `CLOCK_BOOTTIME`, which NTP never steps and which runs through suspend.
fn since_boot() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut spec) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

/// A timer that ticks at once and then every `period`. After the process was held up (a stalled SD card, a
/// stopped process, a paused virtual machine) it ticks once and keeps its period from there: tokio's default
/// is to catch up with a burst of every tick it missed, each of which would repeat work (a housekeeping pass,
/// a D-Bus check, a checkpoint save) for nothing.
pub fn every(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval(period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[tokio::test(start_paused = true)]
    async fn a_timer_held_up_for_ten_periods_ticks_once_then_keeps_its_period() {
        let period = Duration::from_secs(5);
        let mut timer = every(period);
        assert!(
            timer.tick().now_or_never().is_some(),
            "the first tick is at once"
        );
        tokio::time::advance(period * 10).await;
        let mut ready = 0;
        while ready < 20 && timer.tick().now_or_never().is_some() {
            ready += 1;
        }
        assert_eq!(ready, 1, "ticks ready at once after the hold-up");
        tokio::time::advance(period - Duration::from_millis(1)).await;
        assert!(
            timer.tick().now_or_never().is_none(),
            "not before a full period"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            timer.tick().now_or_never().is_some(),
            "a period after the late tick"
        );
    }
}

//! The only place that reads the operating system's clocks.

use chrono::{DateTime, Utc};

/// The hub's wall-clock time.
pub fn now_utc() -> DateTime<Utc> {
    Utc::now()
}

//! The only place that reads the operating system's clocks.

use chrono::{DateTime, Utc};

/// The hub's wall-clock time.
pub fn now_utc() -> DateTime<Utc> {
    Utc::now()
}

/// The hub's wall-clock time in its own time zone, for setting device clocks that keep local time.
pub fn now_local() -> chrono::DateTime<chrono::Local> {
    chrono::Local::now()
}

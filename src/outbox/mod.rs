//! The crash-safe on-disk outbox: readings wait here, on stable storage, until the broker acknowledged them.
//!
//! # Contract
//!
//! * A record is *accepted* only once the transaction that inserted it has committed with
//!   `synchronous=FULL` in WAL mode, i.e. after the WAL was fsynced. Nothing upstream treats a reading as
//!   received before that.
//! * A record leaves the queue only through [`Outbox::acknowledge`], which the uplink calls for records
//!   whose PUBACK it saw. Nothing else deletes a pending record: not a full outbox, not a restart, not a
//!   failed open (a database that cannot be opened is renamed aside, never deleted).
//! * An acknowledgement is durable when `acknowledge` returns: an acknowledged record is never fetched
//!   again, not after a crash either. Its row may stay in the file a while longer (see Storage); only
//!   [`Outbox::remove_acknowledged`] deletes those rows, and only those.
//! * Every record carries a `key` (the reading id). Appending a key that is pending or was delivered
//!   within the retention window is a no-op reported as [`Appended::Duplicate`], so a device that dumps
//!   the same stored records twice is queued once.
//! * Records come back from [`Outbox::fetch_after`] in `seq` order, which is insertion order.
//! * A record appended as *held* is durable and claims its key, but is not in the queue until its producer
//!   releases it with its final payload ([`Outbox::release`]); it then joins the queue's end. The outbox
//!   never decides when: it does not know why a producer holds a record.
//! * The outbox stores opaque records: a key, a label, a format number and payload bytes. It knows
//!   nothing about MQTT, devices or JSON.
//!
//! # Storage
//!
//! A key is claimed in `seen` when its record is appended and stays there after delivery, so removing
//! acknowledged records is a range delete on `seq` that never touches a randomly ordered key index.
//!
//! Acknowledgements mostly come in order, from the queue's head. Those only move a durable mark,
//! `stat.acknowledged_below` (every record with a lower seq was acknowledged), and the rows below it are
//! removed later, when the worker has been quiet for a second, a chunk per transaction: deleting them
//! during a drain took a third of the worker's time per reading (README, Benchmark). Every query of the queue
//! starts at the mark. An acknowledgement out of order (records before it still pending) deletes its rows
//! at once. The writer knows the highest seq it gave out and from which seq on every row is there, so an
//! in-order acknowledgement counts the rows it moves the mark over without reading them again; only a run
//! over rows that may be missing (removed out of order, quarantined) is counted in the file. On a small or
//! nearly full filesystem the worker removes the rows right away, as before: the room they free is what new
//! readings need.
//!
//! One SQLite file (`outbox.db` in the state directory) written by exactly one connection, owned by the
//! worker thread in [`worker`]. Readers (`vitalsd status`) open their own connection; WAL lets them read
//! while the daemon writes.
//!
//! ```text
//! record(seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, label TEXT, format INTEGER,
//!        payload BLOB, created_at INTEGER /* ms since the epoch */)
//! held(... the same columns as record ...)      -- records their producer has not released yet
//! seen(key TEXT PRIMARY KEY, seen_at INTEGER)  -- every key appended; dedup memory, pruned after the retention
//! stat(name TEXT PRIMARY KEY, value INTEGER, text TEXT)     -- counters, last events for `status`, and
//!                                                           -- the queue's mark, `acknowledged_below`
//! ```
//!
//! When the outbox holds `max_pending` records, new records are refused ([`Appended::RejectedFull`]),
//! counted in `stat` and logged: the oldest readings are the ones a clinician has not seen yet, so they
//! are kept, and the refusal is visible rather than silent.

#[cfg(test)]
mod damage_tests;
pub mod integrity;
#[cfg(test)]
mod model_tests;
pub mod salvage;
pub mod space;
mod sqlite;
pub mod worker;

pub use sqlite::{Loss, OpenReport, Outbox, OutboxOptions, Quarantined};
pub use worker::{spawn_worker, OutboxHandle};

use std::collections::BTreeMap;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Stable identity; the same key is never queued twice.
    pub key: String,
    /// An opaque routing label chosen by the producer.
    pub label: String,
    /// Version of the payload encoding, so an upgraded daemon can read what an older one stored.
    pub format: u32,
    pub payload: Vec<u8>,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Held back from the queue until the producer releases it with its final payload
    /// ([`Outbox::release`]); durable and deduplicated like any other record meanwhile.
    pub held: bool,
}

/// A held record's final payload, for [`Outbox::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub seq: i64,
    pub payload: Vec<u8>,
    /// The record's creation time if the producer now knows it, in milliseconds since the Unix epoch.
    pub created_at_ms: Option<i64>,
}

/// A record as stored, with its position in the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub seq: i64,
    pub key: String,
    pub label: String,
    pub format: u32,
    pub payload: Vec<u8>,
    pub created_at_ms: i64,
}

/// What happened to one appended record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Stored,
    Duplicate,
    RejectedFull,
}

/// A snapshot of the outbox for `vitalsd status` and the status topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Records not yet acknowledged, held ones included.
    pub pending: u64,
    /// Records held back by their producer (readings waiting for a trusted hub clock).
    pub held: u64,
    /// The oldest queued record's creation time; held records are left out, since theirs came from a clock
    /// nobody trusted.
    pub oldest_pending_created_at_ms: Option<i64>,
    pub delivered_total: u64,
    pub last_delivered_at_ms: Option<i64>,
    pub rejected_full_total: u64,
    pub duplicates_total: u64,
    pub last_uplink_error: Option<(i64, String)>,
    pub quarantined: Option<String>,
    /// Records that failed their checksum, kept in the quarantine table and never published.
    pub quarantined_records: u64,
    /// Committed records found missing when the outbox was opened (a damaged or cut write-ahead log).
    pub lost_total: u64,
    /// What the last such loss was and where a copy of the damaged files is.
    pub last_loss: Option<String>,
    /// Since when (ms since the epoch) appends wait for disk space; known only to the running worker, so
    /// always `None` when read from the file.
    pub waiting_for_space_since_ms: Option<i64>,
    /// Producer-defined counters (frames rejected, bytes skipped, ...).
    pub counters: BTreeMap<String, u64>,
}

/// Why the outbox could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The disk is full; the operation was rolled back and may be retried.
    #[error("outbox disk full: {0}")]
    DiskFull(rusqlite::Error),
    /// The database was written by a newer vitalsd.
    #[error("outbox schema version {found} is newer than this vitalsd understands ({supported})")]
    NewerSchema { found: i64, supported: i64 },
    /// A failed database open could not be moved aside.
    #[error("cannot move the unreadable outbox {path} aside: {source}")]
    Quarantine {
        path: String,
        source: std::io::Error,
    },
    /// Any other storage error; the caller must stop rather than carry on (fsync errors are not retryable).
    #[error("outbox storage error: {0}")]
    Storage(#[from] rusqlite::Error),
}

impl OutboxError {
    fn classify(error: rusqlite::Error) -> OutboxError {
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => OutboxError::DiskFull(error),
            // Growing the WAL index (`-shm`) on a full filesystem fails with this I/O error, not with FULL.
            _ if is_shm_size_error(&error) => OutboxError::DiskFull(error),
            _ => OutboxError::Storage(error),
        }
    }

    /// Whether the operation failed for lack of disk space.
    pub fn is_disk_full(&self) -> bool {
        match self {
            OutboxError::DiskFull(_) => true,
            OutboxError::Storage(error) => {
                error.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull)
                    || is_shm_size_error(error)
            }
            _ => false,
        }
    }
}

fn is_shm_size_error(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_IOERR_SHMSIZE
    )
}

//! The outbox's SQLite storage: schema, pragmas, quarantine of unreadable files, and the queries.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::integrity::{self, record_checksum, CommitMark, MarkReading};
use super::{Appended, NewRecord, OutboxError, OutboxStats, Release, StoredRecord};

/// The dedup time of a key released without a trusted time: dated by the next prune.
const UNDATED: i64 = 0;

/// 2 added `held`; 3 added the record checksum and `quarantine`.
const SCHEMA_VERSION: i64 = 3;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS record (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    format INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS held (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    format INTEGER NOT NULL,
    payload BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    checksum INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key TEXT,
    label TEXT,
    format INTEGER,
    payload BLOB,
    created_at INTEGER,
    checksum INTEGER,
    quarantined_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,
    seen_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stat (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL DEFAULT 0,
    text TEXT
) WITHOUT ROWID;
";

/// The age of the oldest pending reading is asked for every few seconds (status, watchdog, fleet checks);
/// without this index each answer reads every pending row. It is built apart from the schema: on a long
/// backlog it takes megabytes that a nearly full disk may not have, and without it the same queries still
/// answer, by scanning.
const CREATED_AT_INDEX: &str =
    "CREATE INDEX IF NOT EXISTS record_created_at ON record (created_at)";

/// Limits that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct OutboxOptions {
    pub max_pending: u64,
}

/// What [`Outbox::open`] had to do to get a usable database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Where an unreadable database was moved, if one was.
    pub quarantined_to: Option<PathBuf>,
    /// Why it was unreadable.
    pub quarantine_reason: Option<String>,
    /// Committed records the database no longer holds (its write-ahead log was damaged or cut).
    pub lost: Option<Loss>,
    /// The commit mark could not be read or written; loss detection starts again from here.
    pub mark_problem: Option<String>,
    /// The queue's acknowledged mark failed its check: every row in the file is queued again, so readings
    /// already delivered are published a second time rather than any pending one being skipped.
    pub acknowledged_mark_damaged: bool,
    /// The disk had no room to build the index of creation times (an upgrade with a long backlog); the
    /// next open tries again.
    pub index_deferred: bool,
}

/// Records found missing at open: the commit mark counted more stored records than the database holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub records: u64,
    /// A copy of the database and its log as found, for `vitalsd outbox salvage`.
    pub kept_copy: Option<PathBuf>,
}

/// A record that failed its checksum and was moved to the quarantine table instead of being returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub seq: i64,
    /// `record` (queued) or `held`.
    pub source: &'static str,
    pub key: String,
}

/// The single writing connection to the outbox database.
pub struct Outbox {
    connection: Connection,
    options: OutboxOptions,
    pending: u64,
    /// `pending` follows this connection's writes; a connection opened for status counts instead.
    pending_kept: bool,
    /// Every record with a lower seq was acknowledged (`stat.acknowledged_below`); the rows may still be
    /// there, awaiting [`Outbox::remove_acknowledged`].
    acknowledged_below: i64,
    /// Rows below `acknowledged_below` not removed yet.
    unremoved: u64,
    /// The highest seq the queue gave out (SQLite's `AUTOINCREMENT` never gives one out twice): no row
    /// lies beyond it, so an acknowledgement of a seq beyond it acknowledges nothing and never moves the
    /// mark past it, where the next reading's seq would be hidden below the mark.
    last_seq: i64,
    /// Every seq from here to `last_seq` has its row, so a run of them acknowledged in order is counted
    /// without reading it again: the fetch read those pages about 1,500 readings before, SQLite's small
    /// page cache no longer holds them, and counting them took about a third of the worker's time per
    /// reading in a profile of the drain. Below it, down to the mark, rows may be missing (acknowledged
    /// out of order, quarantined, or found missing at open), and a run there is counted in the file.
    whole_from: i64,
    /// Records ever stored in this database, as its `stat` table counts them; mirrored in `mark`.
    stored_total: u64,
    mark: Option<CommitMark>,
    /// Records quarantined by fetches since the last [`Outbox::take_quarantined`].
    quarantined: Vec<Quarantined>,
    /// The commit mark could not be written; reported once through [`Outbox::take_mark_error`].
    mark_error: Option<std::io::Error>,
    mark_failing: bool,
}

impl Outbox {
    /// Opens or creates the outbox at `path`. A file that is not a usable database is renamed to
    /// `<path>.broken-<unix ms>` (with its `-wal` and `-shm`) and a fresh one is created in its place.
    pub fn open(
        path: &Path,
        options: OutboxOptions,
        now_ms: i64,
    ) -> Result<(Outbox, OpenReport), OutboxError> {
        let mut report = OpenReport::default();
        let outbox = match Outbox::open_existing_or_new(path, options, now_ms, &mut report) {
            Ok(outbox) => outbox,
            Err(OutboxError::Storage(error)) if is_corruption(&error) => {
                let moved_to = quarantine(path, now_ms)?;
                report = OpenReport::default();
                let mut outbox = Outbox::open_existing_or_new(path, options, now_ms, &mut report)?;
                let reason = error.to_string();
                outbox
                    .set_text_stat("quarantined", &format!("{} ({reason})", moved_to.display()))?;
                report.quarantined_to = Some(moved_to);
                report.quarantine_reason = Some(reason);
                outbox
            }
            Err(error) => return Err(error),
        };
        Ok((outbox, report))
    }

    fn open_existing_or_new(
        path: &Path,
        options: OutboxOptions,
        now_ms: i64,
        report: &mut OpenReport,
    ) -> Result<Outbox, OutboxError> {
        let mut connection = Connection::open(path)?;
        // Closing this connection must not fold the log into the database (nor delete it): when the commit
        // mark says commits are missing, the log is copied as found after the connection is closed.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        configure(&connection)?;
        let found: i64 = connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        if found > SCHEMA_VERSION {
            return Err(OutboxError::NewerSchema {
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // A torn or foreign file usually fails at the first read; quick_check catches damage deeper in.
        let check: String = connection.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
        if check != "ok" {
            return Err(OutboxError::Storage(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
                Some(check),
            )));
        }
        // Compare with the commit mark before anything writes: a write would overwrite a damaged log.
        let mark_path = integrity::mark_path(path);
        let stored_total = read_stored_total(&connection)?;
        let lost = match CommitMark::read(&mark_path) {
            Ok(MarkReading::Stored(marked)) if marked > stored_total => Some(marked - stored_total),
            Ok(MarkReading::Stored(_)) | Ok(MarkReading::Missing) => None,
            Ok(MarkReading::Unreadable) => {
                report.mark_problem = Some(format!("{} is damaged", mark_path.display()));
                None
            }
            Err(error) => {
                report.mark_problem = Some(format!("cannot read {}: {error}", mark_path.display()));
                None
            }
        };
        if let Some(records) = lost {
            // SQLite's file locks belong to the process, and closing any descriptor of a file drops them:
            // copying the files beside an open connection would leave it unlocked, and the next process to
            // open the outbox (a `vitalsd status`) would rebuild the shared index under it. So the copy is
            // taken with no connection open.
            drop(connection);
            let kept_copy = keep_damaged_copy(path, now_ms);
            connection = Connection::open(path)?;
            configure(&connection)?;
            report.lost = Some(Loss {
                records,
                kept_copy: kept_copy.clone(),
            });
        }
        // From here on, closing folds the log as usual.
        connection.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)?;
        // Schema, migration and the loss note commit together: a kill midway leaves the file as it was.
        let transaction = connection.transaction()?;
        transaction.execute_batch(SCHEMA)?;
        add_checksums_to_older_schema(&transaction)?;
        transaction.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        if let Some(loss) = &report.lost {
            let kept = loss
                .kept_copy
                .as_ref()
                .map_or("no copy could be kept".to_string(), |copy| {
                    format!("copy kept at {}", copy.display())
                });
            transaction.execute(
                "INSERT INTO stat (name, value, text) VALUES ('lost_total', ?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = value + excluded.value, text = excluded.text",
                params![loss.records as i64, format!("{} at {now_ms} ms; {kept}", loss.records)],
            )?;
        }
        transaction.commit()?;
        match connection
            .execute_batch(CREATED_AT_INDEX)
            .map_err(OutboxError::classify)
        {
            Err(OutboxError::DiskFull(_)) => report.index_deferred = true,
            other => other?,
        }
        let (acknowledged_below, intact) = read_acknowledged_below(&connection)?;
        report.acknowledged_mark_damaged = !intact;
        let last_seq = read_last_seq(&connection)?;
        let (queued, held, unremoved): (i64, i64, i64) = connection.query_row(
            "SELECT (SELECT count(*) FROM record WHERE seq >= ?1), (SELECT count(*) FROM held),
                    (SELECT count(*) FROM record WHERE seq < ?1)",
            params![acknowledged_below],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )?;
        // No row lies beyond `last_seq`, so as many rows as seqs from the mark on means none is missing.
        // Seqs start at 1, and a file nothing was acknowledged in has its mark at 0.
        let from = acknowledged_below.max(1);
        let whole_from = if queued == (last_seq - from + 1).max(0) {
            from
        } else {
            last_seq + 1
        };
        let mark = match CommitMark::open(&mark_path, stored_total) {
            Ok(mark) => Some(mark),
            Err(error) => {
                report.mark_problem =
                    Some(format!("cannot write {}: {error}", mark_path.display()));
                None
            }
        };
        Ok(Outbox {
            connection,
            options,
            pending: (queued + held) as u64,
            pending_kept: true,
            acknowledged_below,
            unremoved: unremoved as u64,
            last_seq,
            whole_from,
            stored_total,
            mark,
            quarantined: Vec::new(),
            mark_error: None,
            mark_failing: false,
        })
    }

    /// Opens an existing outbox for reading statistics while the daemon may be writing it. Read-only, so
    /// that with the daemon stopped its close cannot checkpoint and remove a write-ahead log that the next
    /// start must compare with the commit mark (and keep for salvage if commits are missing from it).
    ///
    /// A reader of a write-ahead-log database needs `-shm` (and `-wal`), and creates them when they are absent,
    /// which a full or read-only filesystem refuses: exactly when an operator asks what is pending after the
    /// daemon stopped. Without a log to read (the daemon's clean stop folds it in and removes both), the file
    /// alone holds every commit, so it is then read as immutable, which needs neither.
    pub fn open_for_status(path: &Path) -> Result<Outbox, OutboxError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let shared = Connection::open_with_flags(path, flags).and_then(|connection| {
            connection.busy_timeout(std::time::Duration::from_secs(5))?;
            connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
            Ok(connection)
        });
        let log = path.with_file_name(format!("{}-wal", file_name(path)));
        let no_log = std::fs::metadata(&log).map_or(true, |log| log.len() == 0);
        let connection = match shared {
            Err(_) if no_log => Connection::open_with_flags(
                immutable_uri(path),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )?,
            other => other?,
        };
        Ok(Outbox {
            connection,
            options: OutboxOptions {
                max_pending: u64::MAX,
            },
            pending: 0,
            pending_kept: false,
            acknowledged_below: 0,
            unremoved: 0,
            last_seq: 0,
            whole_from: 0,
            stored_total: 0,
            mark: None,
            quarantined: Vec::new(),
            mark_error: None,
            mark_failing: false,
        })
    }

    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Appends records in one transaction: all of them are durable when this returns `Ok`, none if it errs.
    pub fn append(&mut self, records: &[NewRecord]) -> Result<Vec<Appended>, OutboxError> {
        self.append_counted(records, &[])
    }

    /// Appends records and adds to producer-defined counters in the same transaction, so a counter of
    /// readings can never disagree with the readings stored, whatever kills the process.
    pub fn append_counted(
        &mut self,
        records: &[NewRecord],
        counters: &[(String, u64)],
    ) -> Result<Vec<Appended>, OutboxError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        let mut outcomes = Vec::with_capacity(records.len());
        let mut stored = 0u64;
        let mut duplicates = 0u64;
        let mut rejected = 0u64;
        let mut last_seq = self.last_seq;
        let mut whole_from = self.whole_from;
        {
            // A key is claimed in `seen` when first appended and stays there after delivery, so the drain
            // never touches the (randomly ordered) key index: it only deletes a run of consecutive seqs.
            let mut claim = transaction
                .prepare_cached(
                    "INSERT INTO seen (key, seen_at) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
                )
                .map_err(OutboxError::classify)?;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO record (key, label, format, payload, created_at, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(OutboxError::classify)?;
            let mut hold = transaction
                .prepare_cached(
                    "INSERT INTO held (key, label, format, payload, created_at, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(OutboxError::classify)?;
            let mut known = transaction
                .prepare_cached("SELECT count(*) FROM seen WHERE key = ?1")
                .map_err(OutboxError::classify)?;
            for record in records {
                if self.pending + stored >= self.options.max_pending {
                    // A reading already stored or delivered is not lost by a full outbox: say so.
                    let seen: i64 = known
                        .query_row(params![record.key], |row| row.get(0))
                        .map_err(OutboxError::classify)?;
                    if seen > 0 {
                        duplicates += 1;
                        outcomes.push(Appended::Duplicate);
                    } else {
                        rejected += 1;
                        outcomes.push(Appended::RejectedFull);
                    }
                    continue;
                }
                let claimed = claim
                    .execute(params![record.key, record.created_at_ms])
                    .map_err(OutboxError::classify)?;
                if claimed == 1 {
                    let statement = if record.held { &mut hold } else { &mut insert };
                    statement
                        .execute(params![
                            record.key,
                            record.label,
                            record.format,
                            record.payload,
                            record.created_at_ms,
                            record_checksum(
                                &record.key,
                                &record.label,
                                record.format,
                                &record.payload
                            )
                        ])
                        .map_err(OutboxError::classify)?;
                    if !record.held {
                        (last_seq, whole_from) =
                            next_seq(last_seq, whole_from, transaction.last_insert_rowid());
                    }
                    stored += 1;
                    outcomes.push(Appended::Stored);
                } else {
                    duplicates += 1;
                    outcomes.push(Appended::Duplicate);
                }
            }
        }
        bump(&transaction, "duplicates_total", duplicates).map_err(OutboxError::classify)?;
        bump(&transaction, "rejected_full_total", rejected).map_err(OutboxError::classify)?;
        bump(&transaction, "stored_total", stored).map_err(OutboxError::classify)?;
        for (name, delta) in counters {
            bump(&transaction, &format!("counter.{name}"), *delta)
                .map_err(OutboxError::classify)?;
        }
        transaction.commit().map_err(OutboxError::classify)?;
        self.pending += stored;
        self.last_seq = last_seq;
        self.whole_from = whole_from;
        self.note_stored(stored);
        Ok(outcomes)
    }

    /// Moves the commit mark past records just committed. A failed write only lets the mark lag behind,
    /// which can hide a later loss but never reports one that did not happen; it is tried again at the
    /// next commit, and the first failure of a run is reported.
    fn note_stored(&mut self, stored: u64) {
        if stored == 0 {
            return;
        }
        self.stored_total += stored;
        if let Some(mark) = self.mark.as_mut() {
            match mark.write(self.stored_total) {
                Ok(()) => self.mark_failing = false,
                Err(error) => {
                    if !self.mark_failing {
                        self.mark_error = Some(error);
                    }
                    self.mark_failing = true;
                }
            }
        }
    }

    /// The first failure to write the commit mark since it last worked, if not yet taken.
    pub fn take_mark_error(&mut self) -> Option<std::io::Error> {
        self.mark_error.take()
    }

    /// Makes the commit mark durable if a write is waiting for it; the worker calls it when idle.
    pub fn sync_mark(&mut self) {
        if let Some(mark) = self.mark.as_mut() {
            if let Err(error) = mark.sync_if_dirty() {
                if !self.mark_failing {
                    self.mark_error = Some(error);
                }
                self.mark_failing = true;
            }
        }
    }

    /// Up to `limit` records with `seq > after`, oldest first. Each is checked against its checksum first;
    /// one that fails is moved to the quarantine table instead (see [`Outbox::take_quarantined`]).
    pub fn fetch_after(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        let after = after.max(self.acknowledged_below - 1);
        self.fetch_checked("record", after, limit)
    }

    /// Up to `limit` held records with `seq > after`, oldest first, checked like [`Outbox::fetch_after`].
    pub fn fetch_held(
        &mut self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        self.fetch_checked("held", after, limit)
    }

    /// Records the fetches found damaged and quarantined since the last call.
    pub fn take_quarantined(&mut self) -> Vec<Quarantined> {
        std::mem::take(&mut self.quarantined)
    }

    fn fetch_checked(
        &mut self,
        table: &'static str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, OutboxError> {
        let mut fetched = Vec::new();
        let mut damaged = Vec::new();
        {
            let mut query = self.connection.prepare_cached(&fetch_query(table))?;
            let rows = query.query_map(params![after], |row| {
                Ok((row.get::<_, i64>(0)?, checked_row(row)))
            })?;
            for row in rows.take(limit) {
                match row? {
                    (_, Some(record)) => fetched.push(record),
                    (seq, None) => damaged.push(seq),
                }
            }
        }
        if !damaged.is_empty() {
            match self.move_to_quarantine(table, &damaged) {
                // Not returned either way; on a full disk they are moved when a later fetch meets them.
                Ok(()) | Err(OutboxError::DiskFull(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(fetched)
    }

    /// Moves damaged rows to `quarantine` as they are (never deleted), and forgets their keys so that a
    /// device that sends the reading again gets it queued again.
    fn move_to_quarantine(&mut self, table: &'static str, seqs: &[i64]) -> Result<(), OutboxError> {
        let now_ms = crate::clock::now_utc().timestamp_millis();
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        let mut moved = Vec::new();
        for &seq in seqs {
            // The key is handled as SQLite holds it: damage may have left it as anything but valid text.
            let key: Option<Option<Vec<u8>>> = transaction
                .query_row(
                    &format!("SELECT CAST(key AS BLOB) FROM {table} WHERE seq = ?1"),
                    params![seq],
                    |row| row.get(0),
                )
                .optional()
                .map_err(OutboxError::classify)?;
            let Some(key) = key else {
                continue;
            };
            transaction
                .execute(
                    &format!(
                        "INSERT INTO quarantine (source, seq, key, label, format, payload, created_at, checksum, quarantined_at)
                         SELECT ?1, seq, key, label, format, payload, created_at, checksum, ?3 FROM {table} WHERE seq = ?2"
                    ),
                    params![table, seq, now_ms],
                )
                .map_err(OutboxError::classify)?;
            transaction
                .execute(
                    &format!(
                        "DELETE FROM seen WHERE key = (SELECT key FROM {table} WHERE seq = ?1)"
                    ),
                    params![seq],
                )
                .map_err(OutboxError::classify)?;
            transaction
                .execute(&format!("DELETE FROM {table} WHERE seq = ?1"), params![seq])
                .map_err(OutboxError::classify)?;
            moved.push(Quarantined {
                seq,
                source: table,
                key: key.map_or_else(String::new, |bytes| {
                    String::from_utf8_lossy(&bytes).into_owned()
                }),
            });
        }
        transaction.commit().map_err(OutboxError::classify)?;
        if table == "record" {
            // Their rows are gone from the queue: runs over them are counted from now on.
            if let Some(highest) = moved.iter().map(|record| record.seq).max() {
                self.whole_from = self.whole_from.max(highest + 1);
            }
        }
        self.pending = self.pending.saturating_sub(moved.len() as u64);
        self.quarantined.extend(moved);
        Ok(())
    }

    /// Moves held records into the queue with their final payloads, in one transaction; each joins the
    /// queue's end under its own key. A release with a known creation time makes that the key's time in the
    /// dedup memory; one without leaves the key to be dated by the next [`Outbox::prune_delivered`], since
    /// the time it was stored with came from a clock nobody trusted. Returns how many moved.
    pub fn release(&mut self, released: &[Release]) -> Result<u64, OutboxError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        let mut moved = 0u64;
        let mut damaged = Vec::new();
        let mut last_seq = self.last_seq;
        let mut whole_from = self.whole_from;
        {
            // A held row is checked again: its key, label and format are published with the new payload.
            let mut read = transaction
                .prepare_cached(&format!("SELECT {ROW_COLUMNS} FROM held WHERE seq = ?1"))
                .map_err(OutboxError::classify)?;
            let mut take = transaction
                .prepare_cached("DELETE FROM held WHERE seq = ?1")
                .map_err(OutboxError::classify)?;
            let mut insert = transaction
                .prepare_cached(
                    "INSERT INTO record (key, label, format, payload, created_at, checksum) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(OutboxError::classify)?;
            let mut date = transaction
                .prepare_cached("UPDATE seen SET seen_at = ?2 WHERE key = ?1")
                .map_err(OutboxError::classify)?;
            for release in released {
                let row = read
                    .query_row(params![release.seq], |row| Ok(checked_row(row)))
                    .optional()
                    .map_err(OutboxError::classify)?;
                let held = match row {
                    None => continue,
                    Some(None) => {
                        damaged.push(release.seq);
                        continue;
                    }
                    Some(Some(held)) => held,
                };
                take.execute(params![release.seq])
                    .map_err(OutboxError::classify)?;
                let checksum =
                    record_checksum(&held.key, &held.label, held.format, &release.payload);
                insert
                    .execute(params![
                        held.key,
                        held.label,
                        held.format,
                        release.payload,
                        release.created_at_ms.unwrap_or(held.created_at_ms),
                        checksum
                    ])
                    .map_err(OutboxError::classify)?;
                (last_seq, whole_from) =
                    next_seq(last_seq, whole_from, transaction.last_insert_rowid());
                date.execute(params![held.key, release.created_at_ms.unwrap_or(UNDATED)])
                    .map_err(OutboxError::classify)?;
                moved += 1;
            }
        }
        transaction.commit().map_err(OutboxError::classify)?;
        self.last_seq = last_seq;
        self.whole_from = whole_from;
        if !damaged.is_empty() {
            match self.move_to_quarantine("held", &damaged) {
                Ok(()) | Err(OutboxError::DiskFull(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(moved)
    }

    /// Takes records the consumer confirmed out of the queue (their keys stay claimed for deduplication).
    /// Unknown seqs are ignored (a record acknowledged twice across a reconnect, or a seq never given out).
    /// Returns how many left the queue.
    ///
    /// Confirmations mostly come in order, from the queue's head: those only move the durable
    /// `acknowledged_below` mark, and the rows are removed later ([`Outbox::remove_acknowledged`]), off
    /// the drain's path, where deleting them took a third of the worker's time per reading. A
    /// confirmation out of order (records before it still pending) removes its rows at once.
    pub fn acknowledge(&mut self, seqs: &[i64], now_ms: i64) -> Result<u64, OutboxError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        let mut acknowledged = 0u64;
        let mut moved_below = 0u64;
        let mut below = self.acknowledged_below;
        let mut whole_from = self.whole_from;
        {
            let mut pending_before = transaction
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM record WHERE seq >= ?1 AND seq < ?2)")
                .map_err(OutboxError::classify)?;
            let mut count = transaction
                .prepare_cached("SELECT count(*) FROM record WHERE seq BETWEEN ?1 AND ?2")
                .map_err(OutboxError::classify)?;
            let mut delete = transaction
                .prepare_cached("DELETE FROM record WHERE seq BETWEEN ?1 AND ?2")
                .map_err(OutboxError::classify)?;
            for (first, last) in consecutive_runs(seqs) {
                // Seqs beyond the last one given out have no row, and the mark must not pass them.
                let last = last.min(self.last_seq);
                if last < below {
                    continue;
                }
                let first = first.max(below);
                if first > last {
                    continue;
                }
                // In order (the run starts at the mark) needs no look at the file.
                let at_head = first == below
                    || !pending_before
                        .query_row(params![below, first], |row| row.get::<_, bool>(0))
                        .map_err(OutboxError::classify)?;
                if at_head {
                    // The run's part from `whole_from` on is whole; only what lies below it is counted.
                    let mut rows = (last - first.max(whole_from) + 1).max(0);
                    let counted_to = last.min(whole_from - 1);
                    if first <= counted_to {
                        rows += count
                            .query_row(params![first, counted_to], |row| row.get::<_, i64>(0))
                            .map_err(OutboxError::classify)?;
                    }
                    acknowledged += rows as u64;
                    moved_below += rows as u64;
                    below = last + 1;
                } else {
                    acknowledged += delete
                        .execute(params![first, last])
                        .map_err(OutboxError::classify)? as u64;
                    // Their rows are gone: a later run over them must count what is left.
                    whole_from = whole_from.max(last + 1);
                }
            }
        }
        if below != self.acknowledged_below {
            transaction
                .prepare_cached(
                    "INSERT INTO stat (name, value, text) VALUES ('acknowledged_below', ?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = excluded.value, text = excluded.text",
                )
                .and_then(|mut mark| mark.execute(params![below, acknowledged_mark_check(below)]))
                .map_err(OutboxError::classify)?;
        }
        if acknowledged > 0 {
            bump(&transaction, "delivered_total", acknowledged).map_err(OutboxError::classify)?;
            set_stat(&transaction, "last_delivered_at", now_ms).map_err(OutboxError::classify)?;
        }
        transaction.commit().map_err(OutboxError::classify)?;
        self.acknowledged_below = below;
        self.whole_from = whole_from;
        self.unremoved += moved_below;
        self.pending = self.pending.saturating_sub(acknowledged);
        Ok(acknowledged)
    }

    /// Acknowledged rows not removed yet.
    pub fn unremoved(&self) -> u64 {
        self.unremoved
    }

    /// The rows below the acknowledged mark, counted in the file (what [`Outbox::unremoved`] tracks).
    #[cfg(test)]
    pub fn count_unremoved_rows(&self) -> u64 {
        self.connection
            .query_row(
                "SELECT count(*) FROM record WHERE seq < ?1",
                params![self.acknowledged_below],
                |row| row.get::<_, i64>(0),
            )
            .unwrap() as u64
    }

    /// Where the outbox counts an acknowledged run by arithmetic from.
    #[cfg(test)]
    pub fn whole_from(&self) -> i64 {
        self.whole_from
    }

    /// Whether what the outbox believes of its rows holds in the file: no row beyond `last_seq`, and
    /// every seq from `whole_from` (or the mark) to `last_seq` has its row.
    #[cfg(test)]
    pub fn knows_its_rows(&self) -> bool {
        let from = self.whole_from.max(self.acknowledged_below);
        let (beyond, whole): (i64, i64) = self
            .connection
            .query_row(
                "SELECT (SELECT count(*) FROM record WHERE seq > ?2),
                        (SELECT count(*) FROM record WHERE seq BETWEEN ?1 AND ?2)",
                params![from, self.last_seq],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        beyond == 0 && whole == (self.last_seq - from + 1).max(0)
    }

    /// Removes up to `limit` acknowledged rows, oldest first, in one transaction; returns how many.
    pub fn remove_acknowledged(&mut self, limit: u64) -> Result<u64, OutboxError> {
        if self.unremoved == 0 {
            return Ok(0);
        }
        let removed = self
            .connection
            .execute(
                "DELETE FROM record WHERE seq < min(?1,
                     coalesce((SELECT seq FROM record ORDER BY seq LIMIT 1 OFFSET ?2), ?1))",
                params![self.acknowledged_below, limit as i64],
            )
            .map_err(OutboxError::classify)? as u64;
        self.unremoved = self.unremoved.saturating_sub(removed);
        if removed < limit {
            // Everything below the mark is gone; a count that drifted (it cannot, but it costs nothing to
            // be sure) must not keep the worker removing for ever.
            self.unremoved = 0;
        }
        Ok(removed)
    }

    /// Remembers the consumer's last error, for `status`.
    pub fn record_uplink_error(&mut self, message: &str, now_ms: i64) -> Result<(), OutboxError> {
        self.connection
            .execute(
                "INSERT INTO stat (name, value, text) VALUES ('last_uplink_error', ?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, text = excluded.text",
                params![now_ms, message],
            )
            .map_err(OutboxError::classify)?;
        Ok(())
    }

    /// Adds to producer-defined counters, in one transaction.
    pub fn add_counters(&mut self, deltas: &[(String, u64)]) -> Result<(), OutboxError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        for (name, delta) in deltas {
            bump(&transaction, &format!("counter.{name}"), *delta)
                .map_err(OutboxError::classify)?;
        }
        transaction.commit().map_err(OutboxError::classify)?;
        Ok(())
    }

    /// Forgets the keys of delivered records first seen before `before_ms`; after that, a replay of those
    /// records is queued again. Keys of records still pending are never forgotten: a key's `seen_at` is its
    /// record's `created_at`, so a key older than every pending record cannot belong to one.
    ///
    /// Call it only with a trusted `now_ms`: keys released without a trusted time are dated with it first,
    /// and held keys are never forgotten.
    pub fn prune_delivered(&mut self, before_ms: i64, now_ms: i64) -> Result<u64, OutboxError> {
        let transaction = self
            .connection
            .transaction()
            .map_err(OutboxError::classify)?;
        transaction
            .execute(
                "UPDATE seen SET seen_at = ?1 WHERE seen_at = ?2",
                params![now_ms, UNDATED],
            )
            .map_err(OutboxError::classify)?;
        let removed = transaction
            .execute(
                "DELETE FROM seen WHERE seen_at < ?1
                 AND seen_at < coalesce((SELECT min(created_at) FROM record WHERE seq >= ?2), ?1)
                 AND key NOT IN (SELECT key FROM held)",
                params![before_ms, self.acknowledged_below],
            )
            .map_err(OutboxError::classify)?;
        transaction.commit().map_err(OutboxError::classify)?;
        Ok(removed as u64)
    }

    /// Checkpoints after `autocheckpoint_pages` WAL pages and keeps at most `journal_size_limit` bytes of
    /// WAL file (see [`super::space`]).
    pub fn limit_wal(&mut self, limits: super::space::WalLimits) -> Result<(), OutboxError> {
        self.connection
            .query_row(
                &format!(
                    "PRAGMA wal_autocheckpoint = {}",
                    limits.autocheckpoint_pages
                ),
                [],
                |_| Ok(()),
            )
            .map_err(OutboxError::classify)?;
        self.connection
            .pragma_update(None, "journal_size_limit", limits.journal_size_limit as i64)
            .map_err(OutboxError::classify)
    }

    /// Bytes of free pages inside the database file, which new records use before the file grows.
    pub fn free_bytes(&self) -> Result<u64, OutboxError> {
        let pages: i64 = self
            .connection
            .query_row("PRAGMA freelist_count", [], |row| row.get(0))?;
        let page_size: i64 = self
            .connection
            .query_row("PRAGMA page_size", [], |row| row.get(0))?;
        Ok((pages * page_size) as u64)
    }

    /// The size of the write-ahead log file: what only it holds of the outbox.
    pub fn log_bytes(&self) -> u64 {
        self.connection
            .path()
            .and_then(|path| std::fs::metadata(format!("{path}-wal")).ok())
            .map_or(0, |metadata| metadata.len())
    }

    /// Folds the WAL back into the database file and truncates it; cheap when idle.
    pub fn checkpoint(&mut self) -> Result<(), OutboxError> {
        self.connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(OutboxError::classify)
    }

    pub fn stats(&self) -> Result<OutboxStats, OutboxError> {
        // A reader may look while the daemon is still creating the file; an outbox without tables is empty.
        let has_tables: bool = self.connection.query_row(
            "SELECT count(*) = 2 FROM sqlite_master WHERE type = 'table' AND name IN ('record', 'stat')",
            [],
            |row| row.get(0),
        )?;
        if !has_tables {
            return Ok(OutboxStats::default());
        }
        let (below, _) = read_acknowledged_below(&self.connection)?;
        // Counting reads every pending row (hundreds of megabytes with a long backlog), so the writer, which
        // is asked every few seconds, answers from its own count; the oldest comes from `record_created_at`.
        let oldest: Option<i64> = self.connection.query_row(
            "SELECT min(created_at) FROM record WHERE seq >= ?1",
            params![below],
            |row| row.get(0),
        )?;
        let queued: Option<i64> = match self.pending_kept {
            true => None,
            false => Some(self.connection.query_row(
                "SELECT count(*) FROM record WHERE seq >= ?1",
                params![below],
                |row| row.get(0),
            )?),
        };
        // An older daemon's file has no `held` until this version opens it for writing.
        // Held rows do not count toward the oldest: their creation time is from a clock nobody trusted (a
        // Pi booted on last year's time would show a backlog a year old).
        let held: i64 = self
            .connection
            .query_row("SELECT count(*) FROM held", [], |row| row.get(0))
            .unwrap_or(0);
        // An older daemon's file has no `quarantine` either.
        let quarantined_records: i64 = self
            .connection
            .query_row("SELECT count(*) FROM quarantine", [], |row| row.get(0))
            .unwrap_or(0);
        let mut stats = OutboxStats {
            pending: queued.map_or(self.pending, |queued| (queued + held) as u64),
            held: held as u64,
            oldest_pending_created_at_ms: oldest,
            quarantined_records: quarantined_records as u64,
            ..OutboxStats::default()
        };
        let mut counters = BTreeMap::new();
        let mut query = self
            .connection
            .prepare("SELECT name, value, text FROM stat")?;
        let rows = query.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?;
        for row in rows {
            let (name, value, text) = row?;
            match name.as_str() {
                "delivered_total" => stats.delivered_total = value as u64,
                "last_delivered_at" => stats.last_delivered_at_ms = Some(value),
                "rejected_full_total" => stats.rejected_full_total = value as u64,
                "duplicates_total" => stats.duplicates_total = value as u64,
                "last_uplink_error" => stats.last_uplink_error = text.map(|text| (value, text)),
                "quarantined" => stats.quarantined = text,
                "lost_total" => {
                    stats.lost_total = value as u64;
                    stats.last_loss = text;
                }
                other => {
                    if let Some(counter) = other.strip_prefix("counter.") {
                        counters.insert(counter.to_string(), value as u64);
                    }
                }
            }
        }
        stats.counters = counters;
        Ok(stats)
    }

    fn set_text_stat(&mut self, name: &str, text: &str) -> Result<(), OutboxError> {
        self.connection.execute(
            "INSERT INTO stat (name, value, text) VALUES (?1, 0, ?2)
             ON CONFLICT (name) DO UPDATE SET text = excluded.text",
            params![name, text],
        )?;
        Ok(())
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if let Some(mark) = self.mark.as_mut() {
            let _ = mark.sync_if_dirty();
        }
    }
}

fn configure(connection: &Connection) -> Result<(), OutboxError> {
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    let mode: String = connection.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(OutboxError::Storage(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
            Some(format!("journal_mode is {mode}, expected wal")),
        )));
    }
    // FULL makes every commit fsync the WAL: an accepted reading survives a power cut, not only a crash.
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.pragma_update(None, "journal_size_limit", 16 * 1024 * 1024)?;
    // A small page cache keeps the daemon's memory flat; the queue is read sequentially anyway.
    connection.pragma_update(None, "cache_size", -512)?;
    // Every statement the worker runs again and again stays prepared; rusqlite keeps 16 by default, about
    // as many as the worker has.
    connection.set_prepared_statement_cache_capacity(32);
    Ok(())
}

/// The columns [`checked_row`] reads, in its order.
const ROW_COLUMNS: &str = "seq, key, label, format, payload, created_at, checksum";

/// The rows of `table` after a seq, oldest first; the caller stops reading at its limit. The limit is not
/// a parameter: SQLite prepares a statement again each time a parameter of its `LIMIT` is bound, as the
/// value may change the plan, and that cost the drain a parse and a plan on every fetch.
fn fetch_query(table: &str) -> String {
    format!("SELECT {ROW_COLUMNS} FROM {table} WHERE seq > ?1 ORDER BY seq")
}

/// The record in a row read with [`ROW_COLUMNS`], or `None` if the row is damaged: a column no longer holds
/// the type it was written with (text that is not UTF-8, a number that is not one), or the checksum fails.
fn checked_row(row: &rusqlite::Row<'_>) -> Option<StoredRecord> {
    let record = StoredRecord {
        seq: row.get(0).ok()?,
        key: row.get(1).ok()?,
        label: row.get(2).ok()?,
        format: row.get(3).ok()?,
        payload: row.get(4).ok()?,
        created_at_ms: row.get(5).ok()?,
    };
    let checksum: i64 = row.get(6).ok()?;
    (checksum == checksum_of(&record)).then_some(record)
}

fn checksum_of(record: &StoredRecord) -> i64 {
    record_checksum(&record.key, &record.label, record.format, &record.payload)
}

/// The number of records ever stored, as the database counts it (0 for a new file or an older schema).
fn read_stored_total(connection: &Connection) -> Result<u64, OutboxError> {
    let has_stat: bool = connection.query_row(
        "SELECT count(*) = 1 FROM sqlite_master WHERE type = 'table' AND name = 'stat'",
        [],
        |row| row.get(0),
    )?;
    if !has_stat {
        return Ok(0);
    }
    let value: Option<i64> = connection
        .query_row(
            "SELECT value FROM stat WHERE name = 'stored_total'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(value.unwrap_or(0).max(0) as u64)
}

/// Schema 2 had no checksums: the records it stored get theirs now, computed from what they hold (so a
/// record damaged before the upgrade passes as it is). A row that no longer reads as a record keeps
/// checksum 0 and is quarantined when fetched. Runs inside the open's transaction, a batch at a time.
fn add_checksums_to_older_schema(connection: &Connection) -> Result<(), OutboxError> {
    const BATCH: i64 = 1000;
    for table in ["record", "held"] {
        let has_checksum: bool = connection.query_row(
            &format!(
                "SELECT count(*) = 1 FROM pragma_table_info('{table}') WHERE name = 'checksum'"
            ),
            [],
            |row| row.get(0),
        )?;
        if has_checksum {
            continue;
        }
        connection.execute_batch(&format!(
            "ALTER TABLE {table} ADD COLUMN checksum INTEGER NOT NULL DEFAULT 0"
        ))?;
        let mut read = connection.prepare(&format!(
            "SELECT seq, key, label, format, payload FROM {table} WHERE seq > ?1 ORDER BY seq LIMIT {BATCH}"
        ))?;
        let mut update =
            connection.prepare(&format!("UPDATE {table} SET checksum = ?2 WHERE seq = ?1"))?;
        let mut after = 0i64;
        loop {
            let rows: Vec<(i64, Option<i64>)> = read
                .query_map(params![after], |row| {
                    let checksum = (|| -> rusqlite::Result<i64> {
                        let key: String = row.get(1)?;
                        let label: String = row.get(2)?;
                        let payload: Vec<u8> = row.get(4)?;
                        Ok(record_checksum(&key, &label, row.get(3)?, &payload))
                    })();
                    Ok((row.get(0)?, checksum.ok()))
                })?
                .collect::<Result<_, _>>()?;
            let Some(&(last, _)) = rows.last() else {
                break;
            };
            for (seq, checksum) in rows {
                if let Some(checksum) = checksum {
                    update.execute(params![seq, checksum])?;
                }
            }
            after = last;
        }
    }
    Ok(())
}

/// Copies the database and its log, as found, beside them (`<path>.damaged-<unix ms>`), before the open
/// writes to them; `None` if no copy could be made (the open goes on: the devices' readings matter more).
/// The shared index (`-shm`) is not copied: it is rebuilt from the log by whoever opens the copy. Call it
/// with no connection to `path` open in this process.
fn keep_damaged_copy(path: &Path, now_ms: i64) -> Option<PathBuf> {
    let target = PathBuf::from(format!("{}.damaged-{now_ms}", path.display()));
    let copy = || -> std::io::Result<()> {
        integrity::copy_if_present(path, &target)?;
        integrity::copy_if_present(
            &PathBuf::from(format!("{}-wal", path.display())),
            &PathBuf::from(format!("{}-wal", target.display())),
        )?;
        Ok(())
    };
    copy().ok().map(|()| target)
}

fn bump(
    transaction: &rusqlite::Transaction<'_>,
    name: &str,
    delta: u64,
) -> Result<(), rusqlite::Error> {
    if delta == 0 {
        return Ok(());
    }
    transaction
        .prepare_cached(
            "INSERT INTO stat (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        )?
        .execute(params![name, delta as i64])?;
    Ok(())
}

/// The queue's acknowledged mark: every record with a lower seq was acknowledged, and whether it passed its
/// check. An older daemon's file has none (it removed every acknowledged row at once). A damaged mark
/// (its check fails, or it lies beyond every seq the table gave out) counts as none: readings already
/// delivered go out again, rather than a pending one being skipped.
pub(super) fn read_acknowledged_below(connection: &Connection) -> rusqlite::Result<(i64, bool)> {
    let stored: Option<(i64, Option<String>)> = connection
        .query_row(
            "SELECT value, text FROM stat WHERE name = 'acknowledged_below'",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let Some((below, check)) = stored else {
        return Ok((0, true));
    };
    let last_given: i64 = connection
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'record'",
            [],
            |row| row.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let intact = check.as_deref() == Some(acknowledged_mark_check(below).as_str())
        && (0..=last_given + 1).contains(&below);
    Ok(if intact { (below, true) } else { (0, false) })
}

/// `last_seq` and `whole_from` after a row was inserted with `seq`: SQLite gives the next seq, so
/// anything else leaves a hole below it (it cannot, unless the sequence was damaged).
fn next_seq(last_seq: i64, whole_from: i64, seq: i64) -> (i64, i64) {
    let whole_from = if seq == last_seq + 1 {
        whole_from
    } else {
        whole_from.max(seq)
    };
    (last_seq.max(seq), whole_from)
}

/// The highest seq `record` gave out: SQLite's sequence, or the highest row if the sequence reads lower
/// (it cannot, unless damaged).
fn read_last_seq(connection: &Connection) -> rusqlite::Result<i64> {
    connection.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'record'), 0),
                    coalesce((SELECT max(seq) FROM record), 0))",
        [],
        |row| row.get(0),
    )
}

/// The mark's check, kept beside it: a flipped bit in the mark would otherwise hide pending readings.
fn acknowledged_mark_check(below: i64) -> String {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(b"acknowledged_below");
    hasher.update(&below.to_le_bytes());
    format!("{:08x}", hasher.finalize())
}

fn set_stat(
    transaction: &rusqlite::Transaction<'_>,
    name: &str,
    value: i64,
) -> rusqlite::Result<()> {
    transaction
        .prepare_cached(
            "INSERT INTO stat (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        )?
        .execute(params![name, value])?;
    Ok(())
}

/// Sorted, de-duplicated `seqs` as inclusive runs of consecutive numbers.
fn consecutive_runs(seqs: &[i64]) -> Vec<(i64, i64)> {
    let mut sorted = seqs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(i64, i64)> = Vec::new();
    for seq in sorted {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == seq => *last = seq,
            _ => runs.push((seq, seq)),
        }
    }
    runs
}

fn is_corruption(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

/// Renames the database and its WAL/SHM side files; never deletes anything.
fn quarantine(path: &Path, now_ms: i64) -> Result<PathBuf, OutboxError> {
    let target = PathBuf::from(format!("{}.broken-{now_ms}", path.display()));
    std::fs::rename(path, &target).map_err(|source| OutboxError::Quarantine {
        path: path.display().to_string(),
        source,
    })?;
    for suffix in ["-wal", "-shm", ".committed"] {
        let side = PathBuf::from(format!("{}{suffix}", path.display()));
        if side.exists() {
            let side_target = PathBuf::from(format!("{}{suffix}", target.display()));
            std::fs::rename(&side, side_target).map_err(|source| OutboxError::Quarantine {
                path: side.display().to_string(),
                source,
            })?;
        }
    }
    Ok(target)
}

/// The file name of `path`, for the names SQLite gives its `-wal` and `-shm` files beside it.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or_else(String::new, |name| name.to_string_lossy().into_owned())
}

/// A `file:` URI that opens `path` as immutable: SQLite reads the file alone and never creates files beside it.
fn immutable_uri(path: &Path) -> String {
    // What a URI path cannot hold as it is: `%`, and the `?` and `#` that would end it.
    const SPECIAL: &percent_encoding::AsciiSet =
        &percent_encoding::CONTROLS.add(b'%').add(b'?').add(b'#');
    let encoded = percent_encoding::percent_encode(path.as_os_str().as_encoded_bytes(), SPECIAL);
    format!("file:{encoded}?immutable=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `status`'s fallback opens the outbox by URI; a state directory may hold any character a URI gives a
    /// meaning to.
    #[test]
    fn the_immutable_uri_opens_a_path_with_characters_a_uri_reserves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a?b#c%20d é").join("outbox.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (7);")
            .unwrap();
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
        let connection = Connection::open_with_flags(immutable_uri(&path), flags).unwrap();
        let x: i64 = connection
            .query_row("SELECT x FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(x, 7);
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
    }

    fn record(key: &str) -> NewRecord {
        NewRecord {
            key: key.to_string(),
            label: "pulse_oximetry".to_string(),
            format: 1,
            payload: format!("payload of {key}").into_bytes(),
            created_at_ms: 1_000,
            held: false,
        }
    }

    fn open(dir: &tempfile::TempDir, max_pending: u64) -> Outbox {
        Outbox::open(
            &dir.path().join("outbox.db"),
            OutboxOptions { max_pending },
            0,
        )
        .unwrap()
        .0
    }

    /// An outbox holding records `k0` to `k9`, as seqs 1 to 10.
    fn with_ten_records(dir: &tempfile::TempDir) -> Outbox {
        let mut outbox = open(dir, 100);
        let records: Vec<NewRecord> = (0..10).map(|i| record(&format!("k{i}"))).collect();
        outbox.append(&records).unwrap();
        outbox
    }

    fn keys(outbox: &mut Outbox) -> Vec<String> {
        outbox
            .fetch_after(0, 1000)
            .unwrap()
            .into_iter()
            .map(|r| r.key)
            .collect()
    }

    #[test]
    fn appended_records_come_back_in_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox.append(&[record("a"), record("b")]).unwrap();
        outbox.append(&[record("c")]).unwrap();
        drop(outbox);
        let mut outbox = open(&dir, 100);
        assert_eq!(keys(&mut outbox), ["a", "b", "c"]);
        assert_eq!(outbox.pending(), 3);
    }

    #[test]
    fn a_key_is_queued_once_while_pending_and_after_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        let outcomes = outbox
            .append(&[record("a"), record("a"), record("b")])
            .unwrap();
        assert_eq!(
            outcomes,
            [Appended::Stored, Appended::Duplicate, Appended::Stored]
        );
        let seq_of_a = outbox.fetch_after(0, 10).unwrap()[0].seq;
        assert_eq!(outbox.acknowledge(&[seq_of_a], 5_000).unwrap(), 1);
        assert_eq!(
            outbox.append(&[record("a")]).unwrap(),
            [Appended::Duplicate]
        );
        assert_eq!(keys(&mut outbox), ["b"]);
        let stats = outbox.stats().unwrap();
        assert_eq!(
            (stats.pending, stats.delivered_total, stats.duplicates_total),
            (1, 1, 2)
        );
        assert_eq!(stats.last_delivered_at_ms, Some(5_000));
    }

    #[test]
    fn pruned_delivered_keys_may_be_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox.append(&[record("a")]).unwrap();
        let seq = outbox.fetch_after(0, 10).unwrap()[0].seq;
        outbox.acknowledge(&[seq], 5_000).unwrap();
        assert_eq!(outbox.prune_delivered(5_001, 10_000).unwrap(), 1);
        assert_eq!(outbox.append(&[record("a")]).unwrap(), [Appended::Stored]);
    }

    fn held(key: &str, created_at_ms: i64) -> NewRecord {
        NewRecord {
            held: true,
            created_at_ms,
            ..record(key)
        }
    }

    #[test]
    fn a_held_record_is_durable_and_deduplicated_but_not_queued_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox
            .append(&[record("a"), held("b", 7), record("c")])
            .unwrap();
        assert_eq!(keys(&mut outbox), ["a", "c"]);
        assert_eq!(
            outbox.append(&[held("b", 8)]).unwrap(),
            [Appended::Duplicate]
        );
        drop(outbox);
        let mut outbox = open(&dir, 100);
        assert_eq!(outbox.pending(), 3);
        let stats = outbox.stats().unwrap();
        assert_eq!((stats.pending, stats.held), (3, 1));
        let waiting = outbox.fetch_held(0, 10).unwrap();
        assert_eq!(waiting.len(), 1);
        assert_eq!(
            (waiting[0].key.as_str(), waiting[0].created_at_ms),
            ("b", 7)
        );
        let moved = outbox
            .release(&[Release {
                seq: waiting[0].seq,
                payload: b"final".to_vec(),
                created_at_ms: Some(9),
            }])
            .unwrap();
        assert_eq!(moved, 1);
        // It joins the queue's end, with its final payload and time, and is held no more.
        assert_eq!(keys(&mut outbox), ["a", "c", "b"]);
        let released = outbox.fetch_after(0, 10).unwrap().pop().unwrap();
        assert_eq!(
            (released.payload, released.created_at_ms),
            (b"final".to_vec(), 9)
        );
        assert_eq!(outbox.stats().unwrap().held, 0);
        assert!(outbox.fetch_held(0, 10).unwrap().is_empty());
        // Released once: a second release of the same seq moves nothing.
        let again = Release {
            seq: waiting[0].seq,
            payload: b"other".to_vec(),
            created_at_ms: None,
        };
        assert_eq!(outbox.release(&[again]).unwrap(), 0);
        assert_eq!(outbox.pending(), 3);
    }

    #[test]
    fn a_key_stored_under_an_untrusted_clock_is_remembered_for_the_whole_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        // Stored while the hub believed it was 1 000 ms after the epoch; released without a known time.
        outbox.append(&[held("old-clock", 1_000)]).unwrap();
        let seq = outbox.fetch_held(0, 10).unwrap()[0].seq;
        let release = Release {
            seq,
            payload: b"p".to_vec(),
            created_at_ms: None,
        };
        outbox.release(&[release]).unwrap();
        let seq = outbox.fetch_after(0, 10).unwrap()[0].seq;
        outbox.acknowledge(&[seq], 2_000).unwrap();
        // The first trusted prune dates the key by its own clock instead of forgetting it at once ...
        assert_eq!(outbox.prune_delivered(50_000, 100_000).unwrap(), 0);
        assert_eq!(
            outbox.append(&[record("old-clock")]).unwrap(),
            [Appended::Duplicate]
        );
        // ... and a retention later it is forgotten like any other.
        assert_eq!(outbox.prune_delivered(100_001, 200_000).unwrap(), 1);
    }

    #[test]
    fn pruning_never_forgets_a_held_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox.append(&[held("waiting", 10)]).unwrap();
        assert_eq!(outbox.prune_delivered(i64::MAX, i64::MAX).unwrap(), 0);
        assert_eq!(
            outbox.append(&[held("waiting", 20)]).unwrap(),
            [Appended::Duplicate]
        );
    }

    /// Statistics and the dedup prune ask for the oldest pending creation time every few seconds; read
    /// through the index, that is one seek rather than a read of every pending row.
    #[test]
    fn the_oldest_pending_creation_time_is_read_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = open(&dir, 100);
        let plan: Vec<String> = outbox
            .connection
            .prepare("EXPLAIN QUERY PLAN SELECT min(created_at) FROM record WHERE seq >= ?1")
            .unwrap()
            .query_map(params![1], |row| row.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            plan,
            ["SEARCH record USING COVERING INDEX record_created_at"]
        );
    }

    #[test]
    fn pruning_never_forgets_a_pending_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox.append(&[record("a")]).unwrap();
        assert_eq!(outbox.prune_delivered(i64::MAX, i64::MAX).unwrap(), 0);
        assert_eq!(
            outbox.append(&[record("a")]).unwrap(),
            [Appended::Duplicate]
        );
    }

    #[test]
    fn a_full_outbox_refuses_new_records_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 2);
        let outcomes = outbox
            .append(&[record("a"), record("b"), record("c")])
            .unwrap();
        assert_eq!(
            outcomes,
            [Appended::Stored, Appended::Stored, Appended::RejectedFull]
        );
        assert_eq!(keys(&mut outbox), ["a", "b"]);
        assert_eq!(outbox.stats().unwrap().rejected_full_total, 1);
    }

    #[test]
    fn acknowledging_unknown_or_repeated_seqs_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox.append(&[record("a"), record("b")]).unwrap();
        let seqs: Vec<i64> = outbox
            .fetch_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        assert_eq!(outbox.acknowledge(&[seqs[0], seqs[0], 999], 1).unwrap(), 1);
        assert_eq!(keys(&mut outbox), ["b"]);
        assert_eq!(outbox.pending(), 1);
    }

    #[test]
    fn acknowledging_scattered_seqs_removes_exactly_those() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = with_ten_records(&dir);
        let seqs: Vec<i64> = outbox
            .fetch_after(0, 10)
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        let acked = [seqs[7], seqs[1], seqs[2], seqs[3], seqs[9], seqs[2]];
        assert_eq!(outbox.acknowledge(&acked, 1).unwrap(), 5);
        assert_eq!(keys(&mut outbox), ["k0", "k4", "k5", "k6", "k8"]);
        assert_eq!(
            outbox.append(&[record("k3"), record("k4")]).unwrap(),
            [Appended::Duplicate, Appended::Duplicate]
        );
    }

    /// A drain acknowledges in order from the queue's head; when no row is missing it must not read the
    /// rows again to count them, from a fresh file or a reopened one.
    #[test]
    fn an_outbox_without_holes_counts_acknowledged_runs_without_reading_them() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = with_ten_records(&dir);
        assert_eq!(outbox.whole_from(), 1);
        drop(outbox);
        let mut outbox = open(&dir, 100);
        assert_eq!(outbox.whole_from(), 1);
        assert_eq!(outbox.acknowledge(&[1, 2, 3], 1).unwrap(), 3);
        drop(outbox);
        let mut outbox = open(&dir, 100);
        assert_eq!(outbox.whole_from(), 4);
        // Out of order: the rows go at once, and the outbox counts from then on below the hole.
        assert_eq!(outbox.acknowledge(&[6], 1).unwrap(), 1);
        assert_eq!(outbox.whole_from(), 7);
        drop(outbox);
        let mut outbox = open(&dir, 100);
        assert_eq!(outbox.whole_from(), 11);
        assert_eq!(outbox.acknowledge(&[4, 5, 6, 7], 1).unwrap(), 3);
        assert_eq!(outbox.pending(), 3);
    }

    #[test]
    fn consecutive_runs_cover_each_seq_once() {
        assert_eq!(
            consecutive_runs(&[5, 1, 2, 3, 9, 2, 10]),
            [(1, 3), (5, 5), (9, 10)]
        );
        assert_eq!(consecutive_runs(&[]), []);
    }

    #[test]
    fn fetch_after_pages_through_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = with_ten_records(&dir);
        let first = outbox.fetch_after(0, 4).unwrap();
        let second = outbox.fetch_after(first.last().unwrap().seq, 4).unwrap();
        assert_eq!(first.len(), 4);
        assert_eq!(second[0].key, "k4");
    }

    #[test]
    fn fetching_with_other_limits_keeps_the_statement_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = with_ten_records(&dir);
        let sizes: Vec<usize> = [(0, 3), (3, 5), (5, 100)]
            .iter()
            .map(|&(after, limit)| outbox.fetch_after(after, limit).unwrap().len())
            .collect();
        assert_eq!(sizes, [3, 5, 5]);
        let statement = outbox
            .connection
            .prepare_cached(&fetch_query("record"))
            .unwrap();
        assert_eq!(
            statement.get_status(rusqlite::StatementStatus::RePrepare),
            0
        );
    }

    #[test]
    fn an_unreadable_database_is_moved_aside_not_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        std::fs::write(
            &path,
            b"this is not an sqlite database, but it is somebody's evidence",
        )
        .unwrap();
        let (mut outbox, report) =
            Outbox::open(&path, OutboxOptions { max_pending: 10 }, 42).unwrap();
        let moved = report.quarantined_to.unwrap();
        assert_eq!(moved, dir.path().join("outbox.db.broken-42"));
        assert!(std::fs::read(&moved)
            .unwrap()
            .starts_with(b"this is not an sqlite database"));
        outbox.append(&[record("a")]).unwrap();
        assert!(outbox
            .stats()
            .unwrap()
            .quarantined
            .unwrap()
            .contains("outbox.db.broken-42"));
    }

    #[test]
    fn counters_and_uplink_errors_show_in_stats() {
        let dir = tempfile::tempdir().unwrap();
        let mut outbox = open(&dir, 100);
        outbox
            .add_counters(&[("frames_rejected".to_string(), 2)])
            .unwrap();
        outbox
            .add_counters(&[("frames_rejected".to_string(), 3)])
            .unwrap();
        outbox.record_uplink_error("connection refused", 7).unwrap();
        let stats = outbox.stats().unwrap();
        assert_eq!(stats.counters["frames_rejected"], 5);
        assert_eq!(
            stats.last_uplink_error,
            Some((7, "connection refused".to_string()))
        );
    }
}

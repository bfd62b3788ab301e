//! Salvage: copies every readable, intact record out of a moved-aside outbox file (`.broken-*`, `.damaged-*`)
//! into the live outbox, deduplicated by key; and the lock that keeps salvage and the daemon apart.
//!
//! The source file is never changed: salvage works on a copy, whose write-ahead log is resealed
//! ([`integrity::reseal_wal`]) so that SQLite reads commits behind a damaged frame, and reads rows in a way
//! that steps over unreadable pages. A record whose checksum fails is counted and left behind.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::integrity::{self, record_checksum};
use super::{Appended, NewRecord, Outbox, OutboxError};

/// Rows read per query while the file reads cleanly.
const CHUNK: i64 = 256;
/// After a failed read, each seq of a window this wide is tried on its own.
const PROBE_WINDOW: i64 = 256;
/// Consecutive windows without one readable row after which the end of the table is assumed, when the
/// file no longer says where its table ends.
const MAX_EMPTY_WINDOWS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum SalvageError {
    #[error("cannot copy {path} to work on: {source}")]
    Copy {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} cannot be opened as a database at all: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// What salvaging one file found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// Intact records read from the file (queued and held).
    pub readable: u64,
    /// Of those, records the live outbox did not have: now queued (or held) again.
    pub copied: u64,
    /// Of those, records the live outbox already had or had delivered.
    pub duplicates: u64,
    /// Refused because the live outbox is full; run salvage again once it has drained.
    pub refused_full: u64,
    /// Rows whose checksum failed: left behind, never published.
    pub damaged: u64,
    /// Rows that could not be read at all.
    pub unreadable: u64,
    /// Write-ahead-log frames read after resealing the log.
    pub log_frames: u64,
}

/// An exclusive lock on the outbox, held by the daemon while it runs and by salvage while it writes, so the
/// two never write at once. `vitalsd status` reads without it.
pub struct OutboxLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another vitalsd holds {0}: stop the service first (systemctl stop vitalsd)")]
    Held(String),
    #[error("cannot lock {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl OutboxLock {
    /// Takes the lock beside `database` (`<database>.lock`) without waiting.
    pub fn acquire(database: &Path) -> Result<OutboxLock, LockError> {
        let path = PathBuf::from(format!("{}.lock", database.display()));
        let io = |source| LockError::Io {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // flock, not fcntl: SQLite's own fcntl locks on the database are not disturbed, and the lock goes
        // with the process however it ends.
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let locked = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&file),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if locked == 0 {
            return Ok(OutboxLock { _file: file });
        }
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::WouldBlock {
            Err(LockError::Held(path.display().to_string()))
        } else {
            Err(io(error))
        }
    }
}

/// The moved-aside outbox files in `state_dir` for the live database named `file_name`, oldest first.
pub fn moved_aside_files(state_dir: &Path, file_name: &str) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(state_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let Some(rest) = name.strip_prefix(file_name) else {
            continue;
        };
        let stamp = rest
            .strip_prefix(".broken-")
            .or_else(|| rest.strip_prefix(".damaged-"));
        if let Some(stamp) = stamp {
            if !stamp.is_empty() && stamp.bytes().all(|b| b.is_ascii_digit()) {
                found.push((stamp.parse::<u64>().unwrap_or(0), state_dir.join(name)));
            }
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

/// Copies the intact records of `source` into `live`.
pub fn salvage_file(live: &mut Outbox, source: &Path) -> Result<SalvageReport, SalvageError> {
    let work = WorkCopy::make(source)?;
    let mut report = SalvageReport {
        log_frames: work.log_frames,
        ..SalvageReport::default()
    };
    let connection =
        Connection::open(&work.database).map_err(|source_error| SalvageError::Open {
            path: source.display().to_string(),
            source: source_error,
        })?;
    for (table, held) in [("record", false), ("held", true)] {
        let mut copier = Copier {
            live: &mut *live,
            batch: Vec::new(),
            outcomes: Vec::new(),
            failed: None,
        };
        read_table(&connection, table, &mut report, |record| {
            copier.add(NewRecord { held, ..record })
        });
        copier.flush();
        if let Some(error) = copier.failed {
            return Err(error.into());
        }
        for outcome in copier.outcomes {
            match outcome {
                Appended::Stored => report.copied += 1,
                Appended::Duplicate => report.duplicates += 1,
                Appended::RejectedFull => report.refused_full += 1,
            }
        }
    }
    Ok(report)
}

/// Renames a salvaged file and its side files to `<name>.salvaged`, so that a later salvage (after the
/// duplicate memory forgot the ids) does not queue its readings again.
pub fn mark_salvaged(source: &Path) -> std::io::Result<PathBuf> {
    let target = PathBuf::from(format!("{}.salvaged", source.display()));
    std::fs::rename(source, &target)?;
    for suffix in ["-wal", "-shm", ".committed"] {
        let side = PathBuf::from(format!("{}{suffix}", source.display()));
        if side.exists() {
            std::fs::rename(&side, format!("{}{suffix}", target.display()))?;
        }
    }
    Ok(target)
}

/// Appends salvaged records to the live outbox a chunk at a time, so a large file never sits in memory.
struct Copier<'a> {
    live: &'a mut Outbox,
    batch: Vec<NewRecord>,
    outcomes: Vec<Appended>,
    failed: Option<OutboxError>,
}

impl Copier<'_> {
    fn add(&mut self, record: NewRecord) {
        self.batch.push(record);
        if self.batch.len() >= CHUNK as usize {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if self.failed.is_some() || batch.is_empty() {
            return;
        }
        match self.live.append(&batch) {
            Ok(outcomes) => self.outcomes.extend(outcomes),
            Err(error) => self.failed = Some(error),
        }
    }
}

/// Reads every row of `table` it can, passing on the intact ones.
fn read_table(
    connection: &Connection,
    table: &str,
    report: &mut SalvageReport,
    mut intact: impl FnMut(NewRecord),
) {
    let has_checksum = match column_names(connection, table) {
        Ok(columns) if columns.iter().any(|c| c == "seq") => {
            columns.iter().any(|c| c == "checksum")
        }
        // No such table (an old schema had no `held`), or its definition is unreadable.
        _ => return,
    };
    let columns = if has_checksum {
        "seq, key, label, format, payload, created_at, checksum"
    } else {
        "seq, key, label, format, payload, created_at, NULL"
    };
    let last_seq: Option<i64> = connection
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = ?1",
            params![table],
            |row| row.get(0),
        )
        .optional()
        .ok()
        .flatten();
    let mut take = |row: Row, report: &mut SalvageReport| {
        let intact_row = match row.checksum {
            Some(checksum) => {
                checksum == record_checksum(&row.key, &row.label, row.format, &row.payload)
            }
            // Files from before checksums: what reads cleanly is all there is to go on.
            None => true,
        };
        if intact_row {
            report.readable += 1;
            intact(NewRecord {
                key: row.key,
                label: row.label,
                format: row.format,
                payload: row.payload,
                created_at_ms: row.created_at_ms,
                held: false,
            });
        } else {
            report.damaged += 1;
        }
    };
    let mut after = 0i64;
    let mut empty_windows = 0u32;
    loop {
        match read_chunk(connection, table, columns, after) {
            // A clean read that finds nothing more is the end: the table's index said so.
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                for row in rows {
                    after = row.seq;
                    match row.fields {
                        Ok(fields) => take(fields, report),
                        Err(()) => report.unreadable += 1,
                    }
                }
                empty_windows = 0;
            }
            Err(_) => {
                let before = report.readable + report.damaged;
                after = probe_window(connection, table, columns, after, report, &mut take);
                if report.readable + report.damaged == before {
                    empty_windows += 1;
                    if last_seq.is_none() && empty_windows >= MAX_EMPTY_WINDOWS {
                        break;
                    }
                } else {
                    empty_windows = 0;
                }
            }
        }
        if let Some(last) = last_seq {
            if after >= last {
                break;
            }
        }
    }
}

struct Row {
    key: String,
    label: String,
    format: u32,
    payload: Vec<u8>,
    created_at_ms: i64,
    checksum: Option<i64>,
}

struct ReadRow {
    seq: i64,
    fields: Result<Row, ()>,
}

fn read_chunk(
    connection: &Connection,
    table: &str,
    columns: &str,
    after: i64,
) -> rusqlite::Result<Vec<ReadRow>> {
    let mut query = connection.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let rows = query.query_map(params![after, CHUNK], |row| {
        Ok(ReadRow {
            seq: row.get(0)?,
            fields: row_fields(row).map_err(|_| ()),
        })
    })?;
    rows.collect()
}

fn row_fields(row: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        key: row.get(1)?,
        label: row.get(2)?,
        format: row.get(3)?,
        payload: row.get(4)?,
        created_at_ms: row.get(5)?,
        checksum: row.get(6)?,
    })
}

/// Tries each seq after `after` in one window on its own; returns the window's end.
fn probe_window(
    connection: &Connection,
    table: &str,
    columns: &str,
    after: i64,
    report: &mut SalvageReport,
    take: &mut impl FnMut(Row, &mut SalvageReport),
) -> i64 {
    let end = after.saturating_add(PROBE_WINDOW);
    let Ok(mut query) =
        connection.prepare_cached(&format!("SELECT {columns} FROM {table} WHERE seq = ?1"))
    else {
        return end;
    };
    for seq in after + 1..=end {
        match query
            .query_row(params![seq], |row| Ok(row_fields(row)))
            .optional()
        {
            Ok(Some(Ok(row))) => take(row, report),
            Ok(Some(Err(_))) | Err(_) => report.unreadable += 1,
            Ok(None) => {}
        }
    }
    end
}

fn column_names(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut query = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let rows = query.query_map(params![table], |row| row.get(0))?;
    rows.collect()
}

/// A private copy of a moved-aside database and its log, removed when dropped.
struct WorkCopy {
    directory: PathBuf,
    database: PathBuf,
    log_frames: u64,
}

impl WorkCopy {
    fn make(source: &Path) -> Result<WorkCopy, SalvageError> {
        let directory = PathBuf::from(format!("{}.salvage", source.display()));
        let copy_error = |source_error| SalvageError::Copy {
            path: source.display().to_string(),
            source: source_error,
        };
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir(&directory).map_err(copy_error)?;
        let work = WorkCopy {
            database: directory.join("outbox.db"),
            directory,
            log_frames: 0,
        };
        std::fs::copy(source, &work.database).map_err(copy_error)?;
        let log = PathBuf::from(format!("{}-wal", source.display()));
        let mut work = work;
        match std::fs::read(&log) {
            Ok(mut bytes) => {
                work.log_frames = integrity::reseal_wal(&mut bytes) as u64;
                std::fs::write(work.directory.join("outbox.db-wal"), bytes).map_err(copy_error)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(copy_error(error)),
        }
        Ok(work)
    }
}

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

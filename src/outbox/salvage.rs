//! Salvage: copies every readable, intact record out of a moved-aside outbox file (`.broken-*`, `.damaged-*`)
//! into the live outbox, deduplicated by key; and the lock that keeps salvage and the daemon apart.
//!
//! The source file is never changed: salvage works on a copy. The log's frames are folded into the copy
//! ([`integrity::log_pages`]), also those behind a frame whose checksum fails, which SQLite would ignore; a
//! header SQLite refuses is written anew, since the pages behind it are as readable as ever. Rows are read
//! twice over: first through SQLite, stepping over the pages it cannot read, then by walking the file's
//! pages ([`pages`]) for the rows SQLite could not reach (leaves below a damaged interior page, pages it
//! rejects as a whole, all of them if it refuses the file's list of tables). A record is taken only if its
//! checksum holds; one whose checksum fails is counted and left behind.

mod pages;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use super::integrity::{self, record_checksum};
use super::{Appended, NewRecord, Outbox, OutboxError};
use pages::{Cell, Freelist, PageFile, SchemaEntry, Value};

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
    #[error(
        "{path} is not an outbox database, or its first page (the file header and the list of tables) is \
         unreadable: nothing could be read from it, and it is left as it is"
    )]
    NotAnOutbox { path: String },
    #[error("cannot read the pages of {path} one by one: {source}")]
    Pages {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

/// What salvaging one file found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// Intact records read from the file (queued and held), not counting those already delivered.
    pub readable: u64,
    /// Of those, records the live outbox did not have: now queued (or held) again.
    pub copied: u64,
    /// Of those, records the live outbox already had or had delivered.
    pub duplicates: u64,
    /// Refused because the live outbox is full; run salvage again once it has drained.
    pub refused_full: u64,
    /// Rows whose checksum failed, or whose columns no longer hold what was written: left behind, never
    /// published.
    pub damaged: u64,
    /// Of the intact records, those SQLite could not reach, read by walking the file's pages.
    pub read_from_pages: u64,
    /// Intact records on pages that could be the queue's or the held readings' (both tables were damaged
    /// and the record's seq fits either): left behind in the file, which is therefore not marked salvaged.
    pub unplaced: u64,
    /// Pages of the queue and of the held readings that do not read as such: the rows they held are lost.
    /// A damaged page below another damaged page is not seen, so this is a lower bound.
    pub unreadable_pages: u64,
    /// Records the broker had acknowledged that were still in the file (their rows are removed once the
    /// hub is quiet): delivered, so not queued again.
    pub already_delivered: u64,
    /// SQLite refused the file's header, and salvage wrote a new one on its copy.
    pub header_rebuilt: bool,
    /// Write-ahead-log frames folded into the work copy.
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
    /// The cause is in the message only (not a `source`), so that a report of the whole chain does not
    /// print it twice.
    #[error("cannot lock {path}: {message}")]
    Io { path: String, message: String },
}

impl OutboxLock {
    /// Takes the lock beside `database` (`<database>.lock`) without waiting.
    pub fn acquire(database: &Path) -> Result<OutboxLock, LockError> {
        let path = PathBuf::from(format!("{}.lock", database.display()));
        let io = |error: std::io::Error| LockError::Io {
            path: path.display().to_string(),
            message: crate::config::io_message(&error),
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
    let mut salvage = Salvage {
        acknowledged_below: 0,
        report: SalvageReport {
            log_frames: work.log_frames,
            ..SalvageReport::default()
        },
        copier: Copier {
            live,
            batch: Vec::new(),
            failed: None,
            copied: 0,
            duplicates: 0,
            refused_full: 0,
        },
    };
    let opened = work.open(source, &mut salvage.report)?;
    let file = PageFile::open(&work.database).map_err(|error| SalvageError::Pages {
        path: source.display().to_string(),
        source: error,
    })?;
    let (mut tables, roots) = match &opened {
        Opened::Sqlite(connection) => {
            // Without a readable mark, acknowledged rows still in the file are queued again: delivered
            // twice at worst, never lost.
            salvage.acknowledged_below =
                super::sqlite::read_acknowledged_below(connection).map_or(0, |(below, _)| below);
            let mut tables: Vec<Table> = [("record", false), ("held", true)]
                .into_iter()
                .filter_map(|(name, held)| Table::from_sqlite(connection, name, held))
                .collect();
            for table in &mut tables {
                read_table(connection, table, &mut salvage);
            }
            let roots: Vec<u32> = connection
                .prepare("SELECT rootpage FROM sqlite_schema WHERE rootpage > 0")
                .and_then(|mut query| query.query_map([], |row| row.get(0))?.collect())
                .unwrap_or_default();
            (tables, roots)
        }
        Opened::Pages(schema) => {
            let tables = [("record", false), ("held", true)]
                .into_iter()
                .filter_map(|(name, held)| Table::from_pages(&file, schema, name, held))
                .collect();
            (tables, schema.iter().map(|entry| entry.root).collect())
        }
    };
    read_pages(&file, &roots, &mut tables, &mut salvage);
    salvage.finish()
}

/// One salvage in progress: what it found, and where intact records go.
struct Salvage<'a> {
    /// The file's acknowledged mark: queued rows below it were delivered.
    acknowledged_below: i64,
    report: SalvageReport,
    copier: Copier<'a>,
}

impl Salvage<'_> {
    /// Takes `row` into the live outbox if it is intact, counts it as damaged otherwise.
    fn take(&mut self, seq: i64, row: Row, held: bool, from_pages: bool) {
        if !row.intact() {
            self.report.damaged += 1;
            return;
        }
        if !held && seq < self.acknowledged_below {
            self.report.already_delivered += 1;
            return;
        }
        self.report.readable += 1;
        if from_pages {
            self.report.read_from_pages += 1;
        }
        self.copier.add(NewRecord {
            key: row.key,
            label: row.label,
            format: row.format,
            payload: row.payload,
            created_at_ms: row.created_at_ms,
            held,
        });
    }

    fn finish(mut self) -> Result<SalvageReport, SalvageError> {
        self.copier.flush();
        if let Some(error) = self.copier.failed {
            return Err(error.into());
        }
        Ok(SalvageReport {
            copied: self.copier.copied,
            duplicates: self.copier.duplicates,
            refused_full: self.copier.refused_full,
            ..self.report
        })
    }
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
    failed: Option<OutboxError>,
    copied: u64,
    duplicates: u64,
    refused_full: u64,
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
            Ok(outcomes) => {
                for outcome in outcomes {
                    *match outcome {
                        Appended::Stored => &mut self.copied,
                        Appended::Duplicate => &mut self.duplicates,
                        Appended::RejectedFull => &mut self.refused_full,
                    } += 1;
                }
            }
            Err(error) => self.failed = Some(error),
        }
    }
}

/// A table of a moved-aside file that holds records: `record` (the queue) or `held`.
struct Table {
    name: &'static str,
    held: bool,
    has_checksum: bool,
    /// The highest seq the table ever gave out, if `sqlite_sequence` reads.
    last_seq: Option<i64>,
    root: Option<u32>,
    /// The seqs of the rows SQLite read (intact or not): the page walk leaves those alone.
    read: Vec<i64>,
}

impl Table {
    /// The table `name` as SQLite reads it, if the file has it and its definition reads (an old schema had
    /// no `held`).
    fn from_sqlite(connection: &Connection, name: &'static str, held: bool) -> Option<Table> {
        let columns = column_names(connection, name).ok()?;
        if !columns.iter().any(|c| c == "seq") {
            return None;
        }
        let last_seq = connection
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()
            .ok()
            .flatten();
        let root = connection
            .query_row(
                "SELECT rootpage FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                params![name],
                |row| row.get(0),
            )
            .ok();
        Some(Table {
            name,
            held,
            has_checksum: columns.iter().any(|c| c == "checksum"),
            last_seq,
            root,
            read: Vec::new(),
        })
    }

    /// The table `name` as the file's pages describe it, when SQLite cannot read the list of tables. A
    /// definition whose text is unreadable is taken to have checksums, as every outbox since schema 3 has.
    fn from_pages(
        file: &PageFile,
        schema: &[SchemaEntry],
        name: &'static str,
        held: bool,
    ) -> Option<Table> {
        let entry = schema
            .iter()
            .find(|entry| entry.table && entry.name == name)?;
        let has_checksum = entry
            .sql
            .as_deref()
            .is_none_or(|sql| sql.contains("checksum"));
        let last_seq = file.last_seq(schema, name);
        Some(Table {
            name,
            held,
            has_checksum,
            last_seq,
            root: Some(entry.root),
            read: Vec::new(),
        })
    }

    /// A row read from the pages, if its values have the shape of this table's rows.
    fn row(&self, values: &[Value]) -> Option<Row> {
        // The seq is the rowid, which the row itself stores as NULL.
        let [Value::Null, Value::Text(key), Value::Text(label), Value::Integer(format), Value::Blob(payload), Value::Integer(created_at_ms), rest @ ..] =
            values
        else {
            return None;
        };
        let checksum = match (self.has_checksum, rest) {
            (true, [Value::Integer(checksum)]) => Some(*checksum),
            (false, []) => None,
            _ => return None,
        };
        Some(Row {
            key: String::from_utf8(key.clone()).ok()?,
            label: String::from_utf8(label.clone()).ok()?,
            format: u32::try_from(*format).ok()?,
            payload: payload.clone(),
            created_at_ms: *created_at_ms,
            checksum,
        })
    }
}

/// Reads every row of `table` that SQLite can read, stepping over what it cannot.
fn read_table(connection: &Connection, table: &mut Table, salvage: &mut Salvage<'_>) {
    let columns = if table.has_checksum {
        "seq, key, label, format, payload, created_at, checksum"
    } else {
        "seq, key, label, format, payload, created_at, NULL"
    };
    let mut after = 0i64;
    let mut empty_windows = 0u32;
    loop {
        let mut handle = |read: ReadRow| {
            table.read.push(read.seq);
            match read.fields {
                Ok(row) => salvage.take(read.seq, row, table.held, false),
                Err(()) => salvage.report.damaged += 1,
            }
        };
        match read_chunk(connection, table.name, columns, after) {
            // A clean read that finds nothing more is the end: the table's index said so.
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                for row in rows {
                    after = row.seq;
                    handle(row);
                }
                empty_windows = 0;
            }
            Err(_) => {
                let found;
                (after, found) = probe_window(connection, table.name, columns, after, &mut handle);
                if found == 0 {
                    empty_windows += 1;
                    if table.last_seq.is_none() && empty_windows >= MAX_EMPTY_WINDOWS {
                        break;
                    }
                } else {
                    empty_windows = 0;
                }
            }
        }
        if table.last_seq.is_some_and(|last| after >= last) {
            break;
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

impl Row {
    fn intact(&self) -> bool {
        match self.checksum {
            Some(checksum) => {
                checksum == record_checksum(&self.key, &self.label, self.format, &self.payload)
            }
            // Files from before checksums: what reads cleanly is all there is to go on.
            None => true,
        }
    }
}

struct ReadRow {
    seq: i64,
    /// `Err` if a column does not hold the type it was written with.
    fields: Result<Row, ()>,
}

fn read_chunk(
    connection: &Connection,
    table: &str,
    columns: &str,
    after: i64,
) -> rusqlite::Result<Vec<ReadRow>> {
    let mut query = connection.prepare_cached(&format!(
        "SELECT {columns} FROM {table} WHERE seq > ?1 ORDER BY seq LIMIT {CHUNK}"
    ))?;
    let rows = query.query_map(params![after], |row| {
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

/// Tries each seq after `after` in one window on its own, so that the rows on readable pages past a page
/// SQLite cannot read are read all the same; returns the window's end and how many rows it found. A seq
/// that fails is left to the page walk ([`read_pages`]), which knows whether a row was there.
fn probe_window(
    connection: &Connection,
    table: &str,
    columns: &str,
    after: i64,
    handle: &mut impl FnMut(ReadRow),
) -> (i64, usize) {
    let end = after.saturating_add(PROBE_WINDOW);
    let Ok(mut query) =
        connection.prepare_cached(&format!("SELECT {columns} FROM {table} WHERE seq = ?1"))
    else {
        return (end, 0);
    };
    let mut found = 0;
    for seq in after + 1..=end {
        if let Ok(Some(fields)) = query
            .query_row(params![seq], |row| Ok(row_fields(row).map_err(|_| ())))
            .optional()
        {
            found += 1;
            handle(ReadRow { seq, fields });
        }
    }
    (end, found)
}

/// Walks the file's pages for the rows SQLite could not read: those on leaves SQLite rejected, and on
/// leaves it could not reach because a page above them is damaged (orphans, which no tree points to any
/// more). An orphan's rows go to the table it can only belong to: the one damaged table, or, if both are,
/// the one whose seqs reach that far; a row that could be either is counted and left behind.
/// `roots` are the roots of every tree in the file, so that no page of another tree is taken for an orphan.
fn read_pages(file: &PageFile, roots: &[u32], tables: &mut [Table], salvage: &mut Salvage<'_>) {
    let wanted: Vec<u32> = tables.iter().map(|table| table.root.unwrap_or(0)).collect();
    let freelist = if salvage.report.header_rebuilt {
        Freelist::Unknown
    } else {
        Freelist::FromHeader
    };
    let layout = file.layout(&wanted, roots, freelist);
    let mut damaged = Vec::new();
    for (table, tree) in tables.iter_mut().zip(&layout.trees) {
        salvage.report.unreadable_pages += tree.unreadable_pages;
        damaged.push(tree.unreadable_pages > 0);
        table.read.sort_unstable();
        for cell in tree
            .leaves
            .iter()
            .filter_map(|leaf| file.rows(*leaf))
            .flatten()
        {
            match cell {
                Cell::Row { rowid, .. } if table.read.binary_search(&rowid).is_ok() => {}
                Cell::Row {
                    rowid,
                    values: Some(values),
                } => match table.row(&values) {
                    Some(row) => salvage.take(rowid, row, table.held, true),
                    None => salvage.report.damaged += 1,
                },
                Cell::Row { values: None, .. } | Cell::Unreadable => salvage.report.damaged += 1,
            }
        }
    }
    if !damaged.contains(&true) {
        // Every tree reads whole, so a page none of them reaches holds nothing pending: a page freed
        // while the freelist that listed it was lost.
        return;
    }
    for cell in layout
        .orphans
        .iter()
        .filter_map(|page| file.rows(*page))
        .flatten()
    {
        let Cell::Row {
            rowid,
            values: Some(values),
        } = cell
        else {
            continue;
        };
        // The tables this row can be from: damaged ones whose seqs reach it and that did not read it.
        let owners: Vec<&Table> = (tables.iter().zip(&damaged))
            .filter(|(table, damaged)| **damaged && table.last_seq.is_none_or(|last| rowid <= last))
            .filter(|(table, _)| table.read.binary_search(&rowid).is_err())
            .map(|(table, _)| table)
            .collect();
        match owners[..] {
            // A stale copy of a row read already, or a seq no damaged table gave out: nothing pending.
            [] => {}
            [owner] => {
                // A row of another shape is an orphan of another table, say the quarantine.
                if let Some(row) = owner.row(&values) {
                    salvage.take(rowid, row, owner.held, true);
                }
            }
            _ => {
                let row = owners.iter().find_map(|table| table.row(&values));
                if row.is_some_and(|row| row.intact()) {
                    salvage.report.unplaced += 1;
                }
            }
        }
    }
}

fn column_names(connection: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut query = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let rows = query.query_map(params![table], |row| row.get(0))?;
    rows.collect()
}

/// A private copy of a moved-aside database with its log folded in, removed when dropped.
struct WorkCopy {
    directory: PathBuf,
    database: PathBuf,
    log_frames: u64,
    /// The page size the log's header states, if the file has a log.
    log_page_size: Option<u32>,
}

/// How a work copy can be read.
enum Opened {
    /// SQLite reads its list of tables.
    Sqlite(Connection),
    /// SQLite refuses it, but its list of tables reads page by page.
    Pages(Vec<SchemaEntry>),
}

impl WorkCopy {
    fn make(source: &Path) -> Result<WorkCopy, SalvageError> {
        let directory = PathBuf::from(format!("{}.salvage", source.display()));
        let copy_error = |source_error| SalvageError::Copy {
            path: source.display().to_string(),
            source: source_error,
        };
        // A pipe or a device would block the copy, or never end it, while the outbox lock is held.
        let metadata = std::fs::metadata(source).map_err(copy_error)?;
        if !metadata.is_file() {
            let kind = std::io::ErrorKind::InvalidInput;
            return Err(copy_error(std::io::Error::new(kind, "not a regular file")));
        }
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir(&directory).map_err(copy_error)?;
        let mut work = WorkCopy {
            database: directory.join("outbox.db"),
            directory,
            log_frames: 0,
            log_page_size: None,
        };
        std::fs::copy(source, &work.database).map_err(copy_error)?;
        let log = PathBuf::from(format!("{}-wal", source.display()));
        match std::fs::read(&log) {
            Ok(bytes) => {
                if let Some(pages) = integrity::log_pages(&bytes) {
                    work.fold_log(&bytes, &pages).map_err(copy_error)?;
                    work.log_frames = pages.frames.len() as u64;
                }
                work.log_page_size = integrity::wal_page_size(&bytes);
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(copy_error(error)),
        }
        Ok(work)
    }

    /// Writes the log's pages into the copy, as a checkpoint would, so that SQLite and the page walk both
    /// read one file, and the copy reads the same whether or not SQLite accepts it. Folding the frames here
    /// rather than letting SQLite read the log also takes the commits behind a frame whose checksum fails.
    fn fold_log(&self, log: &[u8], pages: &integrity::LogPages) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.database)?;
        let page_size = u64::from(pages.page_size);
        // Each frame adds one page at most, so a page number or size beyond that is a damaged frame
        // header, which must not make the copy enormous. Pages past the last commit's size do not exist
        // for SQLite either.
        let most = file.metadata()?.len() / page_size + pages.frames.len() as u64;
        let size = u64::from(pages.database_pages).min(most);
        for (page, content) in &pages.frames {
            if (1..=size).contains(&u64::from(*page)) {
                file.write_all_at(&log[content.clone()], u64::from(page - 1) * page_size)?;
            }
        }
        // The copy only grows: the last commit's size is read from a frame whose checksum may be the damage,
        // and cutting the copy to it would drop intact pages. Pages past a real commit's end can hold only
        // records the outbox had before; the copy into the live outbox skips those by id while the outbox
        // remembers them, and a backend drops a re-sent one by its id.
        let length = file.metadata()?.len().max(size * page_size);
        file.set_len(length)
    }

    /// How the copy can be read. If SQLite refuses the file's list of tables, the page walk reads it; if
    /// neither can, the copy gets a new header (the page size from the log's header, or else each size
    /// SQLite allows, its default first, which vitalsd keeps), since the pages behind a damaged header are
    /// as readable as ever. The list must name the outbox's queue.
    fn open(&self, source: &Path, report: &mut SalvageReport) -> Result<Opened, SalvageError> {
        let not_an_outbox = || SalvageError::NotAnOutbox {
            path: source.display().to_string(),
        };
        match outbox_connection(&self.database) {
            Ok(Some(connection)) => return Ok(Opened::Sqlite(connection)),
            Ok(None) => return Err(not_an_outbox()),
            Err(error) if !is_damage(&error) => {
                return Err(SalvageError::Open {
                    path: source.display().to_string(),
                    source: error,
                })
            }
            Err(_) => {}
        }
        if let Some(schema) = self.page_schema() {
            return Ok(Opened::Pages(schema));
        }
        let length = std::fs::metadata(&self.database)
            .map_err(|error| self.copy_error(source, error))?
            .len();
        let sizes = match self.log_page_size {
            Some(size) => vec![size],
            None => vec![4096, 1024, 2048, 8192, 16384, 32768, 65536, 512],
        };
        for page_size in sizes.into_iter().filter(|size| u64::from(*size) <= length) {
            self.write_header(page_size)
                .map_err(|error| self.copy_error(source, error))?;
            report.header_rebuilt = true;
            if let Ok(Some(connection)) = outbox_connection(&self.database) {
                return Ok(Opened::Sqlite(connection));
            }
            if let Some(schema) = self.page_schema() {
                return Ok(Opened::Pages(schema));
            }
        }
        report.header_rebuilt = false;
        Err(not_an_outbox())
    }

    /// The list of tables as the page walk reads it, if it names the queue.
    fn page_schema(&self) -> Option<Vec<SchemaEntry>> {
        let schema = PageFile::open(&self.database).ok()?.schema();
        schema
            .iter()
            .any(|entry| entry.table && entry.name == "record")
            .then_some(schema)
    }

    /// Writes a new file header into the copy: SQLite's fixed values, the page size, a log (WAL) file
    /// format, UTF-8 text, no freelist, and a database size left for SQLite to take from the file's length.
    fn write_header(&self, page_size: u32) -> std::io::Result<()> {
        let mut header = [0u8; 100];
        header[..16].copy_from_slice(b"SQLite format 3\0");
        let size_field = if page_size == 65536 {
            1
        } else {
            page_size as u16
        };
        header[16..18].copy_from_slice(&size_field.to_be_bytes());
        header[18] = 1;
        header[19] = 1;
        // The payload fractions SQLite requires.
        header[21..24].copy_from_slice(&[64, 32, 32]);
        // A change counter unlike the "version valid for" number below, so the size is read from the
        // file's length.
        header[24..28].copy_from_slice(&1u32.to_be_bytes());
        // Schema format 4, UTF-8.
        header[44..48].copy_from_slice(&4u32.to_be_bytes());
        header[56..60].copy_from_slice(&1u32.to_be_bytes());
        header[96..100].copy_from_slice(&rusqlite::version_number().to_be_bytes());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&self.database)?
            .write_all_at(&header, 0)
    }

    fn copy_error(&self, source: &Path, error: std::io::Error) -> SalvageError {
        SalvageError::Copy {
            path: source.display().to_string(),
            source: error,
        }
    }
}

/// A connection to `database` if SQLite reads its list of tables: `None` if that list has no queue.
fn outbox_connection(database: &Path) -> rusqlite::Result<Option<Connection>> {
    let connection = Connection::open(database)?;
    let queues: i64 = connection.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = 'record'",
        [],
        |row| row.get(0),
    )?;
    Ok((queues == 1).then_some(connection))
}

fn is_damage(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt)
    )
}

impl Drop for WorkCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

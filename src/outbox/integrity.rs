//! What lets the outbox notice damage SQLite cannot: a checksum per record, and the commit mark, a count of
//! every record ever stored kept in a small file outside the database and its write-ahead log.
//!
//! SQLite checks its pages' structure, not their contents: a changed byte inside a stored payload passes
//! `integrity_check`, and a damaged frame in the write-ahead log silently ends the log there, taking every
//! later commit with it. The record checksum catches the first; the commit mark, compared at open with the
//! count the database itself holds, catches the second.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The checksum a record carries: CRC-32 over its key, label, format and payload, each length-prefixed so
/// that bytes cannot move between fields unnoticed. CRC-32 finds every burst of up to 32 damaged bits and is
/// cheap enough to compute for every record on a Raspberry Pi.
pub fn record_checksum(key: &str, label: &str, format: u32, payload: &[u8]) -> i64 {
    let mut hasher = crc32fast::Hasher::new();
    for field in [key.as_bytes(), label.as_bytes()] {
        hasher.update(&(field.len() as u32).to_le_bytes());
        hasher.update(field);
    }
    hasher.update(&format.to_le_bytes());
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(payload);
    i64::from(hasher.finalize())
}

const MARK_MAGIC: &[u8; 4] = b"VSM1";
const MARK_LEN: usize = 16;

/// The commit mark file beside the database: `<database>.committed`.
pub fn mark_path(database: &Path) -> PathBuf {
    PathBuf::from(format!("{}.committed", database.display()))
}

/// What the commit mark file said when it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkReading {
    /// No file: a new outbox, or one written before marks existed.
    Missing,
    /// The file is there but is not a mark (damaged itself); nothing can be concluded from it.
    Unreadable,
    /// The number of records stored, as of the last commit this process or an earlier one wrote down.
    Stored(u64),
}

/// How long a written mark may wait for its fsync while commits keep coming.
const MARK_SYNC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The open commit mark file. It is rewritten in place after every commit that stored records, and only
/// after the commit: it can lag behind the database (a crash between the commit and the write), never run
/// ahead of it, so a mark above the database's own count always means committed records went missing.
/// Writing it costs one small `pwrite` per group commit. Its fsync is batched: at most a second after a
/// write while commits keep coming, at once when the outbox falls idle ([`CommitMark::sync_if_dirty`]),
/// and when the outbox closes; so after a power cut it lags by at most that much, and a loss in that
/// window goes unreported (never a loss reported that did not happen).
pub struct CommitMark {
    file: File,
    written: u64,
    dirty: bool,
    synced_at: std::time::Instant,
}

impl CommitMark {
    pub fn read(path: &Path) -> std::io::Result<MarkReading> {
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut file) => {
                file.read_to_end(&mut bytes)?;
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(MarkReading::Missing)
            }
            Err(error) => return Err(error),
        }
        Ok(decode_mark(&bytes).map_or(MarkReading::Unreadable, MarkReading::Stored))
    }

    /// Opens (creating if needed) the mark file and sets it to `stored`, durably.
    pub fn open(path: &Path, stored: u64) -> std::io::Result<CommitMark> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let mut mark = CommitMark {
            file,
            written: u64::MAX,
            dirty: false,
            synced_at: std::time::Instant::now(),
        };
        mark.write(stored)?;
        mark.sync()?;
        if let Some(parent) = path.parent() {
            // The directory entry of a newly created mark must survive a power cut too.
            File::open(parent)?.sync_all()?;
        }
        Ok(mark)
    }

    /// Records that `stored` records have been committed in total.
    pub fn write(&mut self, stored: u64) -> std::io::Result<()> {
        if stored == self.written {
            return Ok(());
        }
        self.file.write_all_at(&encode_mark(stored), 0)?;
        self.written = stored;
        self.dirty = true;
        if self.synced_at.elapsed() >= MARK_SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync_if_dirty(&mut self) -> std::io::Result<()> {
        if self.dirty {
            self.sync()?;
        }
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.dirty = false;
        self.synced_at = std::time::Instant::now();
        Ok(())
    }
}

fn encode_mark(stored: u64) -> [u8; MARK_LEN] {
    let mut bytes = [0u8; MARK_LEN];
    bytes[..4].copy_from_slice(MARK_MAGIC);
    bytes[4..12].copy_from_slice(&stored.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..12]);
    bytes[12..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn decode_mark(bytes: &[u8]) -> Option<u64> {
    if bytes.len() != MARK_LEN || &bytes[..4] != MARK_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[12..].try_into().ok()?);
    (crc32fast::hash(&bytes[..12]) == crc)
        .then(|| u64::from_le_bytes(bytes[4..12].try_into().unwrap()))
}

/// The pages of a SQLite write-ahead log that salvage folds into its copy of the database: every frame of
/// the log's current generation, up to the last one that ends a transaction, whatever its checksum says.
/// SQLite stops reading a log at the first frame whose checksum fails and so forgets every later commit,
/// while the records on those pages are mostly intact, and each record's own checksum tells the damaged
/// ones apart. Frames of older generations (whose salt differs from the header's) are stale and left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPages {
    pub page_size: u32,
    /// Page number and where its content lies in the log, in the log's order (a later frame wins).
    pub frames: Vec<(u32, std::ops::Range<usize>)>,
    /// The database's size in pages after the last commit.
    pub database_pages: u32,
}

/// The frames of `log` to fold into the database, or `None` if it is not a log or holds no commit.
pub fn log_pages(log: &[u8]) -> Option<LogPages> {
    const HEADER: usize = 32;
    const FRAME_HEADER: usize = 24;
    let page_size = wal_page_size(log)?;
    let frame_len = FRAME_HEADER + page_size as usize;
    let salt = &log[16..24];
    let mut frames = Vec::new();
    let mut committed = None;
    let mut offset = HEADER;
    while offset + frame_len <= log.len() && &log[offset + 8..offset + 16] == salt {
        let page = u32::from_be_bytes(log[offset..offset + 4].try_into().unwrap());
        let commit_size = u32::from_be_bytes(log[offset + 4..offset + 8].try_into().unwrap());
        frames.push((page, offset + FRAME_HEADER..offset + frame_len));
        offset += frame_len;
        if commit_size != 0 {
            committed = Some((frames.len(), commit_size));
        }
    }
    let (kept, database_pages) = committed?;
    frames.truncate(kept);
    Some(LogPages {
        page_size,
        frames,
        database_pages,
    })
}

/// The page size a write-ahead log's header states, if it is a log's header and the size one SQLite allows.
pub fn wal_page_size(bytes: &[u8]) -> Option<u32> {
    let header = bytes.get(..32)?;
    let magic = u32::from_be_bytes(header[0..4].try_into().unwrap());
    if !matches!(magic, 0x377f_0682 | 0x377f_0683) {
        return None;
    }
    let page_size = match u32::from_be_bytes(header[8..12].try_into().unwrap()) {
        1 => 65536,
        size => size,
    };
    ((512..=65536).contains(&page_size) && page_size.is_power_of_two()).then_some(page_size)
}

/// Copies a file, for keeping a damaged database and its log before anything writes to them again.
pub fn copy_if_present(from: &Path, to: &Path) -> std::io::Result<bool> {
    match File::open(from) {
        Ok(mut source) => {
            let mut target = File::create(to)?;
            std::io::copy(&mut source, &mut target)?;
            target.flush()?;
            target.sync_all()?;
            Ok(true)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_mark(bytes: &[u8], expected: Option<u64>) {
        assert_eq!(decode_mark(bytes), expected, "{}", hex::encode(bytes));
    }

    #[test]
    fn a_mark_reads_back_only_when_whole() {
        let good = encode_mark(14_465);
        check_mark(&good, Some(14_465));
        check_mark(&encode_mark(0), Some(0));
        check_mark(&good[..15], None);
        check_mark(&[], None);
        let mut flipped = good;
        flipped[5] ^= 0x01;
        check_mark(&flipped, None);
        let mut wrong_magic = good;
        wrong_magic[0] = b'X';
        check_mark(&wrong_magic, None);
        check_mark(&[0u8; 16], None);
    }

    #[test]
    fn a_changed_byte_in_any_field_changes_the_checksum() {
        let base = record_checksum("id-1", "pulse_oximetry", 1, b"{\"spo2\":95}");
        for other in [
            record_checksum("id-2", "pulse_oximetry", 1, b"{\"spo2\":95}"),
            record_checksum("id-1", "pulse_oximetrx", 1, b"{\"spo2\":95}"),
            record_checksum("id-1", "pulse_oximetry", 2, b"{\"spo2\":95}"),
            record_checksum("id-1", "pulse_oximetry", 1, b"{\"spo2\":35}"),
            // A byte moved from the key into the label.
            record_checksum("id-", "1pulse_oximetry", 1, b"{\"spo2\":95}"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(
            base,
            record_checksum("id-1", "pulse_oximetry", 1, b"{\"spo2\":95}")
        );
    }

    #[test]
    fn the_mark_file_is_created_rewritten_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = mark_path(&dir.path().join("outbox.db"));
        assert_eq!(CommitMark::read(&path).unwrap(), MarkReading::Missing);
        let mut mark = CommitMark::open(&path, 3).unwrap();
        assert_eq!(CommitMark::read(&path).unwrap(), MarkReading::Stored(3));
        mark.write(70_000).unwrap();
        assert_eq!(
            CommitMark::read(&path).unwrap(),
            MarkReading::Stored(70_000)
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert_eq!(CommitMark::read(&path).unwrap(), MarkReading::Unreadable);
    }
}

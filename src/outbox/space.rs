//! Room on the outbox's filesystem: the reserve file that keeps deleting delivered readings possible on a
//! full disk, the write-ahead log's limits (smaller still on a small filesystem), and the operator's message
//! when there is no room.
//!
//! # Why a reserve
//!
//! In WAL mode every transaction, a delete too, first writes its pages to the WAL, and a checkpoint may
//! have to grow the database file. On a full filesystem the uplink could then not remove what the broker
//! acknowledged, and a WAL that filled the filesystem could never be folded back. `outbox.reserve`, a
//! preallocated file next to the database, holds room for that work: when a delete or a checkpoint fails
//! for lack of space the worker deletes the reserve and tries again, and it makes a new reserve once the
//! filesystem has room for the reserve twice over (once for the reserve, once for the readings waiting).
//!
//! Size: under pressure a delete removes at most [`ACK_CHUNK`] records per transaction, each followed by a
//! `wal_checkpoint(TRUNCATE)`. Deleting a record writes at most four pages to the WAL whatever its payload's
//! size (its leaf, a sibling and the parent when the tree rebalances, a freelist trunk page; overflow pages
//! are only listed as free, not rewritten), plus the counters' page: at most 34 pages of 4 KiB, about
//! 140 KiB, and far less for consecutive readings, which share leaves. The reserve is 1 MiB; on a
//! filesystem under 16 MiB it is a sixteenth of the filesystem, never under 128 KiB.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The reserve file in the state directory.
pub const RESERVE_FILE: &str = "outbox.reserve";
/// Records acknowledged per transaction when a whole acknowledgement did not fit on the disk.
pub const ACK_CHUNK: usize = 8;
/// The reserve's size on a filesystem of 16 MiB or more.
const RESERVE_MAX: u64 = 1024 * 1024;
const RESERVE_MIN: u64 = 128 * 1024;
/// On a filesystem smaller than this the WAL is kept small too, so that folding it back into the database
/// never needs more room than the reserve gives.
const SMALL_FILESYSTEM: u64 = 256 * 1024 * 1024;
const PAGE: u64 = 4096;
/// On a filesystem with room, the log is folded into the database after this many pages (1 MiB) rather
/// than SQLite's 1,000: in a sustained burst, which never falls idle, what only the log holds is what damage
/// to it can cost. The ingest benchmark measures what the extra checkpoints cost.
const BURST_LOG_PAGES: u32 = 256;
/// The log file kept after a checkpoint on a filesystem with room.
const LOG_KEPT_BYTES: u64 = 16 * 1024 * 1024;

/// What `statvfs` says about a directory's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Bytes an unprivileged writer may still use.
    pub free: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

/// The room on the filesystem holding `dir`.
pub fn room(dir: &Path) -> io::Result<Room> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs is a plain C struct of integers, for which all zeroes is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a plain struct the call fills in.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = stat.f_frsize as u64;
    Ok(Room {
        free: stat.f_bavail as u64 * unit,
        total: stat.f_blocks as u64 * unit,
    })
}

impl Room {
    /// Below this much free space the outbox commits in small pieces and may wait for space; `status`
    /// calls the state directory low on space.
    pub fn is_low(&self) -> bool {
        self.free < 4 * reserve_size(self.total)
    }
}

/// The reserve's size for a filesystem of `total` bytes.
pub fn reserve_size(total: u64) -> u64 {
    (total / 16).clamp(RESERVE_MIN, RESERVE_MAX)
}

/// WAL settings: checkpoint after this many pages, and keep at most this many bytes of WAL file after a
/// checkpoint. A small filesystem gets a log no larger than the reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalLimits {
    pub autocheckpoint_pages: u32,
    pub journal_size_limit: u64,
}

pub fn wal_limits(total: u64) -> WalLimits {
    match total < SMALL_FILESYSTEM {
        true => {
            let bytes = reserve_size(total);
            WalLimits {
                autocheckpoint_pages: ((bytes / PAGE).max(16) as u32).min(BURST_LOG_PAGES),
                journal_size_limit: bytes,
            }
        }
        false => WalLimits {
            autocheckpoint_pages: BURST_LOG_PAGES,
            journal_size_limit: LOG_KEPT_BYTES,
        },
    }
}

/// The reserve file of one state directory.
pub struct Space {
    dir: PathBuf,
    reserve: PathBuf,
    size: u64,
    total: u64,
}

impl Space {
    /// Sizes the reserve for the filesystem holding `state_dir`; does not create it.
    pub fn new(state_dir: &Path) -> Space {
        let total = room(state_dir).map(|room| room.total).unwrap_or(0);
        Space {
            dir: state_dir.to_path_buf(),
            reserve: state_dir.join(RESERVE_FILE),
            size: reserve_size(total),
            total,
        }
    }

    pub fn reserve_size(&self) -> u64 {
        self.size
    }

    pub fn wal_limits(&self) -> WalLimits {
        wal_limits(self.total)
    }

    pub fn reserve_present(&self) -> bool {
        std::fs::metadata(&self.reserve).is_ok_and(|meta| meta.len() >= self.size)
    }

    /// Makes the reserve if it is missing and the filesystem has room for it twice over; returns whether
    /// it is in place.
    pub fn ensure_reserve(&self) -> bool {
        if self.reserve_present() {
            return true;
        }
        match room(&self.dir) {
            Ok(room) if room.free >= 2 * self.size => {}
            _ => return false,
        }
        match preallocate(&self.reserve, self.size) {
            Ok(()) => {
                tracing::info!(path = %self.reserve.display(), bytes = self.size, "Outbox reserve in place.");
                true
            }
            Err(error) => {
                let _ = std::fs::remove_file(&self.reserve);
                tracing::debug!(%error, "Could not make the outbox reserve yet.");
                false
            }
        }
    }

    /// On a small or nearly full filesystem, the most payload bytes one commit may carry, so that folding
    /// a commit into the database never needs more room than the reserve gives; `None` when there is
    /// room enough for commits of any size.
    pub fn commit_budget(&self) -> Option<u64> {
        let plenty =
            self.total >= SMALL_FILESYSTEM && room(&self.dir).is_ok_and(|room| !room.is_low());
        (!plenty).then_some(self.size / 4)
    }

    /// Deletes the reserve so that a delete or a checkpoint can use its room; returns whether there was one.
    pub fn release_reserve(&self) -> bool {
        match std::fs::remove_file(&self.reserve) {
            Ok(()) => {
                tracing::warn!(bytes = self.size, "The disk is full: released the outbox reserve so delivered readings can be removed.");
                true
            }
            Err(_) => false,
        }
    }
}

/// Writes a file of `size` bytes whose blocks are allocated, not a sparse one, and makes it durable.
fn preallocate(path: &Path, size: u64) -> io::Result<()> {
    let file = File::create(path)?;
    let length = libc::off_t::try_from(size)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "reserve too large"))?;
    // SAFETY: the descriptor is open for writing for the duration of the call.
    let status = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, length) };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status));
    }
    file.sync_all()
}

/// Why the outbox could not be opened, when the reason is a full filesystem: the operator's message.
/// `None` when the filesystem has room (the failure is something else).
pub fn no_space_message(state_dir: &Path, outbox_path: &Path, disk_full: bool) -> Option<String> {
    let room = room(state_dir).ok()?;
    // SQLite needs a few pages for the WAL index and the schema check; below this, opening fails.
    if !disk_full && room.free >= RESERVE_MIN {
        return None;
    }
    let mut files = Vec::new();
    // The files that hold readings; `-shm` is SQLite's index of the log, made again at every open.
    for suffix in ["", "-wal"] {
        let path = PathBuf::from(format!("{}{suffix}", outbox_path.display()));
        if let Ok(meta) = std::fs::metadata(&path) {
            files.push(format!(
                "{} {}",
                path.file_name().unwrap_or_default().to_string_lossy(),
                human(meta.len())
            ));
        }
    }
    // Read as `vitalsd status` reads it, which needs no room.
    let pending = super::Outbox::open_for_status(outbox_path)
        .and_then(|outbox| outbox.stats())
        .map(|stats| stats.pending);
    let files = match (files.is_empty(), pending) {
        (true, _) => "there is no outbox file yet".to_string(),
        (false, Ok(0)) => format!(
            "the outbox files take {}, with no reading waiting to be delivered",
            files.join(", ")
        ),
        (false, Ok(pending)) => format!(
            "the outbox files take {}. Do not delete them: they hold {pending} reading(s) not yet delivered",
            files.join(", ")
        ),
        (false, Err(_)) => format!(
            "the outbox files take {}. Do not delete them: they may hold readings not yet delivered",
            files.join(", ")
        ),
    };
    Some(format!(
        "state_dir {} has no free space ({} free of {}): the outbox cannot be opened. Free space on that \
         filesystem and start vitalsd again; {files}.",
        state_dir.display(),
        human(room.free),
        human(room.total)
    ))
}

/// Bytes for a person: `1.5 MiB`.
pub fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1024 * 1024 => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        b if b >= 1024 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_scales_with_small_filesystems_only() {
        const MIB: u64 = 1024 * 1024;
        for (total, reserve, autocheckpoint) in [
            (MIB, 128 * 1024, Some(32)),
            (2 * MIB, 128 * 1024, Some(32)),
            (8 * MIB, 512 * 1024, Some(128)),
            (16 * MIB, MIB, Some(256)),
            (100 * MIB, MIB, Some(256)),
            (32 * 1024 * MIB, MIB, Some(256)),
        ] {
            assert_eq!(reserve_size(total), reserve, "total {total}");
            assert_eq!(
                Some(wal_limits(total).autocheckpoint_pages),
                autocheckpoint,
                "total {total}"
            );
        }
    }

    #[test]
    fn the_reserve_is_made_released_and_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let space = Space::new(dir.path());
        assert!(!space.reserve_present());
        assert!(space.ensure_reserve());
        let meta = std::fs::metadata(dir.path().join(RESERVE_FILE)).unwrap();
        assert_eq!(meta.len(), space.reserve_size());
        // Allocated, not sparse: the blocks are really taken from the filesystem.
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 >= space.reserve_size());
        assert!(space.release_reserve());
        assert!(!space.release_reserve());
        assert!(space.ensure_reserve());
    }

    /// The message says whether the outbox holds readings, so the operator knows what deleting it would cost.
    #[test]
    fn the_full_disk_message_counts_the_readings_waiting_in_the_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.db");
        let options = super::super::OutboxOptions { max_pending: 10 };
        let (mut outbox, _) = super::super::Outbox::open(&path, options, 1).unwrap();
        let message = || no_space_message(dir.path(), &path, true).unwrap();
        assert!(
            message().contains("with no reading waiting to be delivered"),
            "{}",
            message()
        );
        let record = |key: &str| super::super::NewRecord {
            key: key.to_string(),
            label: "pulse_oximetry".to_string(),
            format: 1,
            payload: b"{}".to_vec(),
            created_at_ms: 1,
            held: false,
        };
        outbox.append(&[record("a"), record("b")]).unwrap();
        assert!(
            message().contains("Do not delete them: they hold 2 reading(s) not yet delivered"),
            "{}",
            message()
        );
        assert!(!message().contains("-shm"), "{}", message());
    }

    #[test]
    fn a_state_dir_with_room_is_not_called_full() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            no_space_message(dir.path(), &dir.path().join("outbox.db"), false),
            None
        );
        let message = no_space_message(dir.path(), &dir.path().join("outbox.db"), true).unwrap();
        assert!(message.starts_with(&format!(
            "state_dir {} has no free space",
            dir.path().display()
        )));
    }
}

//! What the hub keeps under `{state_dir}` beside the outbox: the bound devices and the download checkpoints.
//!
//! Each is a small file replaced whole and atomically (written to an unnamed temporary file, fsynced,
//! renamed over the old one, the directory fsynced), so a power cut leaves the old file or the new one.

pub mod checkpoints;
pub mod devices;

use std::io::Write;
use std::path::Path;

use atomic_write_file::unix::OpenOptionsExt as _;

/// Replaces the file at `path` with `bytes`, durably. The new file is the daemon's own: copying the old
/// file's owner would call `fchown`, which the unit's system call filter (`~@privileged`) answers by
/// killing the process (SIGSYS), as it did at the second clean stop of a daemon with a serial checkpoint.
pub fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = atomic_write_file::OpenOptions::new();
    options.preserve_owner(false);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_holds_the_new_bytes_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices.json");
        replace_file(&path, b"old\n").unwrap();
        replace_file(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new\n");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["devices.json"]);
    }
}

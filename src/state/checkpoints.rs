//! Per-device download checkpoints in the state directory: what a device's stored data the hub already
//! fetched, kept across reconnects and restarts so a re-plugged device is not downloaded again.
//!
//! One small text file per device under `{state_dir}/checkpoints/`, so the pipelines of several devices
//! never write the same file. A file is replaced atomically (write, fsync, rename, fsync the directory):
//! a power cut leaves the old checkpoint or the new one. A checkpoint is saved only after the records it
//! covers were handed to the outbox, so at worst a crash repeats a download, and the repeated readings
//! carry the same ids as before.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot {action} the download checkpoint {path}: {source}")]
pub struct CheckpointError {
    action: &'static str,
    path: PathBuf,
    source: std::io::Error,
}

/// Where one device's checkpoint lives.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    path: PathBuf,
}

/// A device id as a file name: letters, digits, `-`, `_` and `.` kept, everything else `_`, and a hash of
/// the whole id so two ids that differ only in replaced characters stay apart.
fn file_name(device_id: &str) -> String {
    let readable: String = device_id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .collect();
    let hash = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, device_id.as_bytes());
    format!("{readable}-{}.txt", &hash.simple().to_string()[..8])
}

impl CheckpointFile {
    pub fn new(state_dir: &Path, device_id: &str) -> CheckpointFile {
        CheckpointFile {
            path: state_dir.join("checkpoints").join(file_name(device_id)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved checkpoint; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<String>, CheckpointError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => Ok(Some(text.trim().to_string()).filter(|text| !text.is_empty())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CheckpointError {
                action: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    pub fn save(&self, checkpoint: &str) -> Result<(), CheckpointError> {
        let failed = |action: &'static str| {
            let path = self.path.clone();
            move |source| CheckpointError {
                action,
                path,
                source,
            }
        };
        let directory = self.path.parent().expect("the file lies in a directory");
        std::fs::create_dir_all(directory).map_err(failed("create the directory of"))?;
        super::replace_file(&self.path, format!("{checkpoint}\n").as_bytes())
            .map_err(failed("replace"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_and_loads_per_device() {
        let state = tempfile::tempdir().unwrap();
        let first = CheckpointFile::new(state.path(), "serial:cms50f/bedroom");
        let second = CheckpointFile::new(state.path(), "serial:cms50f_bedroom");
        assert_ne!(first.path(), second.path());
        assert_eq!(first.load().unwrap(), None);
        first.save("stored_sessions=2024-03-14T22:30:00").unwrap();
        assert_eq!(
            first.load().unwrap().as_deref(),
            Some("stored_sessions=2024-03-14T22:30:00")
        );
        assert_eq!(second.load().unwrap(), None);
        first.save("stored_sessions=2024-03-15T22:30:00").unwrap();
        assert_eq!(
            CheckpointFile::new(state.path(), "serial:cms50f/bedroom")
                .load()
                .unwrap()
                .as_deref(),
            Some("stored_sessions=2024-03-15T22:30:00")
        );
    }

    #[test]
    fn an_unwritable_state_directory_is_an_error_not_a_panic() {
        let state = tempfile::tempdir().unwrap();
        std::fs::write(state.path().join("checkpoints"), b"a file, not a directory").unwrap();
        let error = CheckpointFile::new(state.path(), "serial:x")
            .save("stored_sessions=2024-03-15T22:30:00")
            .unwrap_err();
        assert!(
            error.to_string().contains("cannot create the directory of"),
            "{error}"
        );
    }
}

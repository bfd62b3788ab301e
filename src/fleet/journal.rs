//! The command journal: every fleet command the hub verified, what became of it, and whether the broker
//! took its state, in `{state_dir}/fleet.db` (SQLite, `synchronous=FULL`). A request id in it is never
//! executed again, also after a restart. Entries are kept for good: a few hundred bytes per signed command,
//! and a forgotten one would let the broker's retained copy of an old command be judged anew.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

/// The journal file inside the state directory.
pub const JOURNAL_FILE: &str = "fleet.db";

#[derive(Debug, thiserror::Error)]
#[error("fleet command journal {path}: {source}")]
pub struct JournalError {
    path: String,
    source: rusqlite::Error,
}

/// The lifecycle state the hub publishes on `cmd/{request_id}/state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum State {
    Executing,
    Successful,
    Failed,
}

/// One command's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub request_id: String,
    pub command: String,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub state: State,
    /// A [`Refusal`](super::envelope::Refusal) name, when failed.
    pub reason: Option<String>,
    /// Words for people: why it failed, or what was done.
    pub detail: Option<String>,
    pub result: Option<serde_json::Value>,
    /// When the state was reached, ms since the epoch.
    pub at_ms: i64,
    /// The command finishes by restarting the daemon: found `executing` at the next start, it succeeded.
    pub completes_on_restart: bool,
    /// The broker acknowledged the publish of this state.
    pub published: bool,
}

pub struct Journal {
    connection: Connection,
    path: String,
}

impl Journal {
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let shown = path.display().to_string();
        let fail = |source| JournalError {
            path: shown.clone(),
            source,
        };
        let connection = Connection::open(path).map_err(fail)?;
        connection
            .execute_batch(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
                 CREATE TABLE IF NOT EXISTS commands (
                     request_id TEXT PRIMARY KEY,
                     command TEXT NOT NULL,
                     issued_at_ms INTEGER NOT NULL,
                     expires_at_ms INTEGER NOT NULL,
                     state TEXT NOT NULL,
                     reason TEXT,
                     detail TEXT,
                     result TEXT,
                     at_ms INTEGER NOT NULL,
                     completes_on_restart INTEGER NOT NULL DEFAULT 0,
                     published INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE TABLE IF NOT EXISTS episodes (key TEXT PRIMARY KEY);",
            )
            .map_err(fail)?;
        Ok(Journal {
            connection,
            path: shown,
        })
    }

    /// Opens an existing journal without writing to it, for `vitalsd status` beside a running daemon.
    pub fn open_read_only(path: &Path) -> Result<Journal, JournalError> {
        let connection =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
                |source| JournalError {
                    path: path.display().to_string(),
                    source,
                },
            )?;
        Ok(Journal {
            connection,
            path: path.display().to_string(),
        })
    }

    /// The `count` newest entries, newest first.
    pub fn recent(&self, count: usize) -> Result<Vec<Entry>, JournalError> {
        self.select(&format!("ORDER BY at_ms DESC, request_id LIMIT {count}"))
    }

    fn fail(&self, source: rusqlite::Error) -> JournalError {
        JournalError {
            path: self.path.clone(),
            source,
        }
    }

    /// The entry of `request_id`, if the hub saw it before.
    pub fn get(&self, request_id: &str) -> Result<Option<Entry>, JournalError> {
        self.connection
            .query_row(
                &format!("SELECT {COLUMNS} FROM commands WHERE request_id = ?1"),
                [request_id],
                entry,
            )
            .optional()
            .map_err(|e| self.fail(e))
    }

    /// Records a new entry; false when the request id is there already (the entry is left as it was).
    pub fn insert(&self, entry: &Entry) -> Result<bool, JournalError> {
        let inserted = self
            .connection
            .execute(
                "INSERT OR IGNORE INTO commands (request_id, command, issued_at_ms, expires_at_ms, state, \
                 reason, detail, result, at_ms, completes_on_restart, published) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    entry.request_id,
                    entry.command,
                    entry.issued_at_ms,
                    entry.expires_at_ms,
                    <&str>::from(entry.state),
                    entry.reason,
                    entry.detail,
                    entry.result.as_ref().map(|r| r.to_string()),
                    entry.at_ms,
                    entry.completes_on_restart,
                    entry.published,
                ],
            )
            .map_err(|e| self.fail(e))?;
        Ok(inserted == 1)
    }

    /// Moves an entry to its next state, not yet published.
    pub fn update(&self, entry: &Entry) -> Result<(), JournalError> {
        self.connection
            .execute(
                "UPDATE commands SET state = ?2, reason = ?3, detail = ?4, result = ?5, at_ms = ?6, \
                 completes_on_restart = ?7, published = 0 WHERE request_id = ?1",
                params![
                    entry.request_id,
                    <&str>::from(entry.state),
                    entry.reason,
                    entry.detail,
                    entry.result.as_ref().map(|r| r.to_string()),
                    entry.at_ms,
                    entry.completes_on_restart,
                ],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// The broker took the publish of `state` for `request_id` (a later state may be waiting already).
    pub fn mark_published(&self, request_id: &str, state: State) -> Result<(), JournalError> {
        self.connection
            .execute(
                "UPDATE commands SET published = 1 WHERE request_id = ?1 AND state = ?2",
                params![request_id, <&str>::from(state)],
            )
            .map_err(|e| self.fail(e))?;
        Ok(())
    }

    /// Entries whose current state the broker has not acknowledged, oldest first.
    pub fn unpublished(&self) -> Result<Vec<Entry>, JournalError> {
        self.select("WHERE published = 0 ORDER BY issued_at_ms, request_id")
    }

    /// Entries still `executing`: at a start, commands the previous run did not finish.
    pub fn executing(&self) -> Result<Vec<Entry>, JournalError> {
        self.select("WHERE state = 'executing' ORDER BY issued_at_ms, request_id")
    }

    /// The keys of the event episodes open at the last save.
    pub fn episodes(&self) -> Result<Vec<String>, JournalError> {
        let mut statement = self
            .connection
            .prepare("SELECT key FROM episodes ORDER BY key")
            .map_err(|e| self.fail(e))?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }

    /// Replaces the open episodes, so an event does not fire again after a restart within its episode.
    pub fn save_episodes<'k>(
        &mut self,
        keys: impl Iterator<Item = &'k String>,
    ) -> Result<(), JournalError> {
        let transaction = self.connection.transaction().map_err(|e| JournalError {
            path: self.path.clone(),
            source: e,
        })?;
        let saved = transaction
            .execute("DELETE FROM episodes", [])
            .and_then(|_| {
                for key in keys {
                    transaction.execute("INSERT INTO episodes (key) VALUES (?1)", [key])?;
                }
                Ok(())
            });
        saved
            .and_then(|()| transaction.commit())
            .map_err(|e| JournalError {
                path: self.path.clone(),
                source: e,
            })
    }

    fn select(&self, condition: &str) -> Result<Vec<Entry>, JournalError> {
        let mut statement = self
            .connection
            .prepare(&format!("SELECT {COLUMNS} FROM commands {condition}"))
            .map_err(|e| self.fail(e))?;
        let rows = statement.query_map([], entry).map_err(|e| self.fail(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.fail(e))
    }
}

const COLUMNS: &str =
    "request_id, command, issued_at_ms, expires_at_ms, state, reason, detail, result, at_ms, \
                       completes_on_restart, published";

fn entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let state: String = row.get(4)?;
    let result: Option<String> = row.get(7)?;
    Ok(Entry {
        request_id: row.get(0)?,
        command: row.get(1)?,
        issued_at_ms: row.get(2)?,
        expires_at_ms: row.get(3)?,
        state: state.parse().unwrap_or(State::Failed),
        reason: row.get(5)?,
        detail: row.get(6)?,
        result: result.and_then(|text| serde_json::from_str(&text).ok()),
        at_ms: row.get(8)?,
        completes_on_restart: row.get(9)?,
        published: row.get(10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executing(request_id: &str, expires_at_ms: i64) -> Entry {
        Entry {
            request_id: request_id.to_string(),
            command: "restart".to_string(),
            issued_at_ms: 0,
            expires_at_ms,
            state: State::Executing,
            reason: None,
            detail: None,
            result: None,
            at_ms: 0,
            completes_on_restart: true,
            published: false,
        }
    }

    #[test]
    fn a_request_id_is_recorded_once_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let journal = Journal::open(&path).unwrap();
        assert!(journal.insert(&executing("r1", 10)).unwrap());
        assert!(!journal.insert(&executing("r1", 20)).unwrap());
        journal.mark_published("r1", State::Executing).unwrap();
        drop(journal);

        let journal = Journal::open(&path).unwrap();
        let mut found = journal.get("r1").unwrap().unwrap();
        assert_eq!((found.expires_at_ms, found.published), (10, true));
        assert_eq!(journal.executing().unwrap().len(), 1);
        assert!(journal.unpublished().unwrap().is_empty());

        found.state = State::Successful;
        found.at_ms = 5;
        journal.update(&found).unwrap();
        found.published = false;
        // An acknowledgement of the earlier state does not cover the new one.
        journal.mark_published("r1", State::Executing).unwrap();
        assert_eq!(journal.unpublished().unwrap(), vec![found.clone()]);
        journal.mark_published("r1", State::Successful).unwrap();
        assert!(journal.executing().unwrap().is_empty());
    }
}

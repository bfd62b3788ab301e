//! Storage damage against the real SQLite files: changed payload bytes, a damaged or cut write-ahead log,
//! an older schema, and salvage from what was kept.

use std::path::{Path, PathBuf};

use super::salvage::{moved_aside_files, salvage_file, OutboxLock};
use super::{NewRecord, OpenReport, Outbox, OutboxOptions};

fn record(key: &str) -> NewRecord {
    NewRecord {
        key: key.to_string(),
        label: "pulse_oximetry".to_string(),
        format: 1,
        payload: format!("{{\"id\":\"{key}\",\"spo2\":95}}").into_bytes(),
        created_at_ms: 1_000,
        held: false,
    }
}

fn open(path: &Path) -> (Outbox, OpenReport) {
    Outbox::open(path, OutboxOptions { max_pending: 1000 }, 77).unwrap()
}

fn keys(outbox: &mut Outbox) -> Vec<String> {
    let mut keys: Vec<String> = outbox
        .fetch_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    keys.sort();
    keys
}

fn all_keys(count: usize) -> Vec<String> {
    let mut keys: Vec<String> = (0..count).map(|i| format!("k{i:02}")).collect();
    keys.sort();
    keys
}

/// What a crash leaves: the files as they are on disk while the process still runs (no final checkpoint).
fn crash_copy(from: &Path, to_dir: &Path) -> PathBuf {
    let to = to_dir.join("outbox.db");
    for suffix in ["", "-wal", ".committed"] {
        let source = PathBuf::from(format!("{}{suffix}", from.display()));
        if source.exists() {
            std::fs::copy(&source, format!("{}{suffix}", to.display())).unwrap();
        }
    }
    to
}

/// Twenty records in four commits, left in the WAL of a process that then "crashed".
fn crashed_outbox_with_twenty_records() -> (tempfile::TempDir, PathBuf) {
    let live = tempfile::tempdir().unwrap();
    let crashed = tempfile::tempdir().unwrap();
    let path = live.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    for commit in 0..4 {
        let batch: Vec<NewRecord> = (0..5)
            .map(|i| record(&format!("k{:02}", commit * 5 + i)))
            .collect();
        outbox.append(&batch).unwrap();
    }
    let copy = crash_copy(&path, crashed.path());
    drop(outbox);
    (crashed, copy)
}

fn wal_of(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

#[test]
fn a_changed_payload_byte_is_quarantined_never_returned_and_its_key_accepted_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    outbox
        .append(&[record("a"), record("b"), record("c")])
        .unwrap();
    // Damage as an SD card does it: the bytes change, the row's structure stays valid.
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE record SET payload = CAST(replace(CAST(payload AS TEXT), '95', '35') AS BLOB) WHERE key = 'b'",
            [],
        )
        .unwrap();
    drop(other);
    assert_eq!(keys(&mut outbox), ["a", "c"]);
    let quarantined = outbox.take_quarantined();
    assert_eq!(quarantined.len(), 1);
    assert_eq!(
        (quarantined[0].key.as_str(), quarantined[0].source),
        ("b", "record")
    );
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.pending, stats.quarantined_records), (2, 1));
    // Kept, as found.
    let kept: Vec<u8> = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT payload FROM quarantine WHERE key = 'b'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kept, b"{\"id\":\"b\",\"spo2\":35}");
    // The device's own copy of the reading is queued again.
    assert_eq!(
        outbox.append(&[record("b")]).unwrap(),
        [super::Appended::Stored]
    );
    assert_eq!(keys(&mut outbox), ["a", "b", "c"]);
}

#[test]
fn a_changed_type_or_key_is_damage_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    outbox
        .append(&[record("a"), record("b"), record("c"), record("d")])
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute("UPDATE record SET format = 'x' WHERE key = 'b'", [])
        .unwrap();
    other
        .execute("UPDATE record SET key = 'e' WHERE key = 'c'", [])
        .unwrap();
    drop(other);
    assert_eq!(keys(&mut outbox), ["a", "d"]);
    assert_eq!(outbox.stats().unwrap().quarantined_records, 2);
}

#[test]
fn held_records_are_checked_before_release_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    let held = |key| NewRecord {
        held: true,
        ..record(key)
    };
    outbox.append(&[held("a"), held("b")]).unwrap();
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE held SET label = 'weight' WHERE key = 'a'", [])
        .unwrap();
    let waiting: Vec<String> = outbox
        .fetch_held(0, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.key)
        .collect();
    assert_eq!(waiting, ["b"]);
    assert_eq!(outbox.take_quarantined()[0].source, "held");
}

#[test]
fn a_cut_write_ahead_log_is_reported_with_the_number_of_readings_lost() {
    let (_dir, path) = crashed_outbox_with_twenty_records();
    let wal = std::fs::read(wal_of(&path)).unwrap();
    std::fs::write(wal_of(&path), &wal[..wal.len() / 2]).unwrap();
    let (mut outbox, report) = open(&path);
    let left = keys(&mut outbox).len() as u64;
    assert!(left < 20, "cutting half the log should lose commits");
    let loss = report.lost.expect("the loss is reported");
    assert_eq!(loss.records, 20 - left);
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.lost_total, 20 - left);
    assert!(stats.last_loss.unwrap().contains("damaged-77"));
    // The files were kept as found, before this open wrote anything.
    let copy = loss.kept_copy.unwrap();
    assert_eq!(std::fs::read(wal_of(&copy)).unwrap(), &wal[..wal.len() / 2]);
    drop(outbox);
    // Reported once: the next open agrees with the mark it left.
    let (_, again) = open(&path);
    assert_eq!(again.lost, None);
}

#[test]
fn a_clean_crash_loses_nothing_and_reports_nothing() {
    let (_dir, path) = crashed_outbox_with_twenty_records();
    let (mut outbox, report) = open(&path);
    assert_eq!(report, OpenReport::default());
    assert_eq!(keys(&mut outbox), all_keys(20));
}

#[test]
fn salvage_recovers_the_commits_behind_a_damaged_log_frame() {
    let (dir, path) = crashed_outbox_with_twenty_records();
    // One changed byte in the first record's first copy in the log: SQLite stops reading the log there.
    let mut wal = std::fs::read(wal_of(&path)).unwrap();
    let at = wal
        .windows(6)
        .position(|w| w == b"\"k00\",")
        .expect("the record is in the log");
    wal[at + 2] ^= 0x20;
    std::fs::write(wal_of(&path), &wal).unwrap();
    let (mut live, report) = open(&path);
    let loss = report.lost.expect("the loss is reported");
    let survived = keys(&mut live).len() as u64;
    assert_eq!(loss.records, 20 - survived);
    assert_eq!(
        moved_aside_files(dir.path(), "outbox.db").unwrap(),
        [loss.kept_copy.clone().unwrap()]
    );
    let salvaged = salvage_file(&mut live, loss.kept_copy.as_ref().unwrap()).unwrap();
    assert!(salvaged.log_frames > 0);
    assert_eq!(salvaged.copied, 20 - survived);
    assert_eq!(salvaged.readable, salvaged.copied + salvaged.duplicates);
    assert_eq!(keys(&mut live), all_keys(20));
    // Salvaging again copies nothing twice.
    let again = salvage_file(&mut live, loss.kept_copy.as_ref().unwrap()).unwrap();
    assert_eq!(again.copied, 0);
}

#[test]
fn salvage_keeps_intact_records_of_an_unreadable_file_and_leaves_damaged_ones() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    let (mut outbox, _) = open(&old);
    outbox
        .append(&[record("a"), record("b"), record("c")])
        .unwrap();
    drop(outbox);
    rusqlite::Connection::open(&old)
        .unwrap()
        .execute(
            "UPDATE record SET payload = CAST('{}' AS BLOB) WHERE key = 'c'",
            [],
        )
        .unwrap();
    let (mut live, _) = open(&dir.path().join("outbox.db"));
    live.append(&[record("a")]).unwrap();
    let report = salvage_file(&mut live, &old).unwrap();
    assert_eq!(
        (
            report.readable,
            report.copied,
            report.duplicates,
            report.damaged
        ),
        (2, 1, 1, 1)
    );
    assert_eq!(keys(&mut live), ["a", "b"]);
    // The source file is left as it was; the work copy is gone.
    assert!(!dir.path().join("old.db.salvage").exists());
}

#[test]
fn an_outbox_of_schema_2_gets_checksums_and_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    write_schema_2(&path);
    let (mut outbox, report) = open(&path);
    assert_eq!(report, OpenReport::default());
    assert_eq!(keys(&mut outbox), ["a"]);
    assert_eq!(outbox.fetch_held(0, 10).unwrap().len(), 1);
    assert!(outbox.take_quarantined().is_empty());
}

/// An outbox as vitalsd wrote it before checksums: one queued record, one held.
fn write_schema_2(path: &Path) {
    {
        let old = rusqlite::Connection::open(path).unwrap();
        old.execute_batch(
            "PRAGMA journal_mode=WAL;
             CREATE TABLE record (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, label TEXT NOT NULL,
                 format INTEGER NOT NULL, payload BLOB NOT NULL, created_at INTEGER NOT NULL);
             CREATE TABLE held (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, label TEXT NOT NULL,
                 format INTEGER NOT NULL, payload BLOB NOT NULL, created_at INTEGER NOT NULL);
             CREATE TABLE seen (key TEXT PRIMARY KEY, seen_at INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE stat (name TEXT PRIMARY KEY, value INTEGER NOT NULL DEFAULT 0, text TEXT) WITHOUT ROWID;
             INSERT INTO record (key, label, format, payload, created_at) VALUES ('a', 'pulse_oximetry', 1, CAST('{\"id\":\"a\",\"spo2\":95}' AS BLOB), 1000);
             INSERT INTO held (key, label, format, payload, created_at) VALUES ('b', 'pulse_oximetry', 1, CAST('{\"id\":\"b\",\"spo2\":95}' AS BLOB), 1000);
             INSERT INTO seen VALUES ('a', 1000), ('b', 1000);
             PRAGMA user_version = 2;",
        )
        .unwrap();
    }
}

#[test]
fn counters_are_committed_with_the_records_they_count() {
    let (_dir, path) = {
        let live = tempfile::tempdir().unwrap();
        let crashed = tempfile::tempdir().unwrap();
        let path = live.path().join("outbox.db");
        let (mut outbox, _) = open(&path);
        for i in 0..3 {
            outbox
                .append_counted(&[record(&format!("k{i}"))], &[("readings".to_string(), 1)])
                .unwrap();
        }
        let copy = crash_copy(&path, crashed.path());
        (crashed, copy)
    };
    let (outbox, _) = open(&path);
    let stats = outbox.stats().unwrap();
    assert_eq!((stats.pending, stats.counters["readings"]), (3, 3));
}

#[test]
fn salvage_and_the_daemon_never_write_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let held = OutboxLock::acquire(&path).unwrap();
    let refused = OutboxLock::acquire(&path).err().unwrap().to_string();
    assert!(refused.contains("stop the service first"), "{refused}");
    drop(held);
    assert!(OutboxLock::acquire(&path).is_ok());
}

#[test]
fn reading_status_after_a_crash_leaves_the_write_ahead_log_for_the_next_start() {
    let (_dir, path) = crashed_outbox_with_twenty_records();
    let before = std::fs::read(wal_of(&path)).unwrap();
    let stats = Outbox::open_for_status(&path).unwrap().stats().unwrap();
    assert_eq!(stats.pending, 20);
    assert_eq!(std::fs::read(wal_of(&path)).unwrap(), before);
}

#[test]
fn text_that_is_not_utf8_is_damage_not_a_storage_failure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    let held = NewRecord {
        held: true,
        ..record("h")
    };
    outbox
        .append(&[record("a"), record("b"), held.clone()])
        .unwrap();
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute(
            "UPDATE record SET key = CAST(X'6BFF' AS TEXT) WHERE key = 'a'",
            [],
        )
        .unwrap();
    other
        .execute(
            "UPDATE held SET label = CAST(X'C328' AS TEXT) WHERE key = 'h'",
            [],
        )
        .unwrap();
    drop(other);
    assert_eq!(keys(&mut outbox), ["b"]);
    let waiting = outbox.fetch_held(0, 10).unwrap();
    assert!(waiting.is_empty());
    assert_eq!(outbox.stats().unwrap().quarantined_records, 2);
    let damaged = outbox.take_quarantined();
    assert_eq!(damaged[0].key, "k\u{fffd}");
}

#[test]
fn a_held_record_damaged_before_its_release_is_quarantined_not_released() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    let (mut outbox, _) = open(&path);
    let held = NewRecord {
        held: true,
        ..record("h")
    };
    outbox.append(&[held]).unwrap();
    let seq = outbox.fetch_held(0, 10).unwrap()[0].seq;
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute("UPDATE held SET format = 7 WHERE seq = ?1", [seq])
        .unwrap();
    let moved = outbox
        .release(&[super::Release {
            seq,
            payload: b"final".to_vec(),
            created_at_ms: Some(5),
        }])
        .unwrap();
    assert_eq!(moved, 0);
    assert!(keys(&mut outbox).is_empty());
    assert_eq!(outbox.stats().unwrap().quarantined_records, 1);
}

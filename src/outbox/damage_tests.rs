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

/// Whether a second process opening the outbox would find it in use. SQLite holds a read lock on one byte
/// of the shared index (its "DMS" byte, offset 128) for as long as a connection uses it, and a process that
/// gets a write lock on that byte takes itself for the only user and rebuilds the index. An open file
/// description lock conflicts with the traditional locks SQLite takes even inside the same process, so
/// asking for one here sees what another process would see, without reading /proc/locks (whose listing can
/// skip entries while other tests take and release locks).
fn another_process_would_find_it_in_use(shm: &std::fs::File) -> bool {
    use nix::fcntl::{fcntl, FcntlArg};
    let mut probe = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 128,
        l_len: 1,
        l_pid: 0,
    };
    fcntl(shm, FcntlArg::F_OFD_GETLK(&mut probe)).unwrap();
    probe.l_type != libc::F_UNLCK as libc::c_short
}

#[test]
fn keeping_a_copy_of_a_damaged_log_leaves_the_outbox_locked_against_other_processes() {
    let (_dir, path) = crashed_outbox_with_twenty_records();
    let wal = std::fs::read(wal_of(&path)).unwrap();
    std::fs::write(wal_of(&path), &wal[..wal.len() / 2]).unwrap();
    let (mut outbox, report) = open(&path);
    assert!(report.lost.is_some());
    keys(&mut outbox);
    // Without its lock on the shared index, another process opening the outbox (`vitalsd status`) would
    // take itself for the first and rebuild the index under the daemon.
    let shm_path = PathBuf::from(format!("{}-shm", path.display()));
    let shm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shm_path)
        .unwrap();
    assert!(
        another_process_would_find_it_in_use(&shm),
        "no lock on {}",
        shm_path.display()
    );
    // The probe can tell: with the outbox closed, the index (still open here, though SQLite removed its
    // name) is free.
    drop(outbox);
    assert!(!another_process_would_find_it_in_use(&shm));
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
fn a_log_frame_naming_a_page_far_beyond_the_file_is_left_out_of_the_fold() {
    let (_dir, path) = crashed_outbox_with_twenty_records();
    // A frame's page number, damaged: folded as it says, it would make the copy terabytes long. The frame
    // chosen holds a page that a later frame holds again, so nothing depends on its content.
    let mut wal = std::fs::read(wal_of(&path)).unwrap();
    let frame_len = 24 + u32::from_be_bytes(wal[8..12].try_into().unwrap()) as usize;
    let pages: Vec<[u8; 4]> = (32..wal.len())
        .step_by(frame_len)
        .map(|at| wal[at..at + 4].try_into().unwrap())
        .collect();
    let superseded = (0..pages.len())
        .find(|i| pages[i + 1..].contains(&pages[*i]))
        .expect("a page written twice");
    let at = 32 + superseded * frame_len;
    wal[at..at + 4].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    std::fs::write(wal_of(&path), &wal).unwrap();
    let live_dir = tempfile::tempdir().unwrap();
    let (mut live, _) = open(&live_dir.path().join("outbox.db"));
    let salvaged = salvage_file(&mut live, &path).unwrap();
    assert_eq!(salvaged.copied, 20);
    assert_eq!(keys(&mut live), all_keys(20));
}

#[test]
fn salvage_keeps_intact_records_and_leaves_one_whose_checksum_fails() {
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

/// An outbox at `path` with records "a" to "d", of which those at `positions` (0 for "a") were
/// acknowledged; none of their rows removed yet.
fn four_records_with_acknowledged(path: &Path, positions: &[usize]) -> Outbox {
    let (mut outbox, _) = open(path);
    outbox
        .append(&[record("a"), record("b"), record("c"), record("d")])
        .unwrap();
    let fetched = outbox.fetch_after(0, 4).unwrap();
    let seqs: Vec<i64> = positions.iter().map(|&i| fetched[i].seq).collect();
    outbox.acknowledge(&seqs, 5).unwrap();
    outbox
}

#[test]
fn salvage_leaves_records_acknowledged_before_their_rows_were_removed() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    // "a" and "b" move the mark; "d", acknowledged out of order, is deleted at once.
    let outbox = four_records_with_acknowledged(&old, &[0, 1, 3]);
    assert_eq!(outbox.unremoved(), 2);
    drop(outbox);
    let (mut live, _) = open(&dir.path().join("outbox.db"));
    let report = salvage_file(&mut live, &old).unwrap();
    assert_eq!(
        (report.readable, report.copied, report.already_delivered),
        (1, 1, 2)
    );
    assert_eq!(keys(&mut live), ["c"]);
}

#[test]
fn a_damaged_acknowledged_mark_sends_delivered_readings_again_and_hides_no_pending_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db");
    drop(four_records_with_acknowledged(&path, &[0, 1]));
    let (mut outbox, report) = open(&path);
    assert!(!report.acknowledged_mark_damaged);
    assert_eq!(keys(&mut outbox), ["c", "d"]);
    drop(outbox);
    // Damage that turns the mark from 3 into 5 (still within the seqs given out) would skip "c" and "d",
    // never delivered.
    let connection = rusqlite::Connection::open(&path).unwrap();
    let changed = connection
        .execute(
            "UPDATE stat SET value = 5 WHERE name = 'acknowledged_below' AND value = 3",
            [],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(connection);
    let (mut outbox, report) = open(&path);
    assert!(report.acknowledged_mark_damaged);
    assert_eq!(keys(&mut outbox), ["a", "b", "c", "d"]);
    assert_eq!(outbox.pending(), 4);
    assert_eq!(outbox.stats().unwrap().pending, 4);
}

#[test]
fn salvage_refuses_a_file_that_is_no_outbox_and_leaves_it_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let other_database = dir.path().join("other.db");
    rusqlite::Connection::open(&other_database)
        .unwrap()
        .execute_batch("CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('not readings');")
        .unwrap();
    let other_database = std::fs::read(&other_database).unwrap();
    #[rustfmt::skip]
    let cases: [(&str, &[u8]); 4] = [
        ("text", b"garbage where the outbox should be; keep me for forensics"),
        ("nothing", b""),
        ("a page of garbage", &garbage(5, 4096)),
        ("another database", &other_database),
    ];
    let (mut live, _) = open(&dir.path().join("outbox.db"));
    for (what, content) in cases {
        let file = dir.path().join("outbox.db.broken-1");
        std::fs::write(&file, content).unwrap();
        let error = salvage_file(&mut live, &file).expect_err(what).to_string();
        assert!(
            error.contains("is not an outbox database") && error.contains("outbox.db.broken-1"),
            "{what}: {error}"
        );
        assert_eq!(std::fs::read(&file).unwrap(), content, "{what}");
        assert!(!dir.path().join("outbox.db.broken-1.salvage").exists());
    }
    assert_eq!(live.pending(), 0);
}

#[test]
fn salvage_refuses_what_is_not_a_regular_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (mut live, _) = open(&dir.path().join("outbox.db"));
    let fifo = dir.path().join("outbox.db.broken-1");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let directory = dir.path().join("outbox.db.broken-2");
    std::fs::create_dir(&directory).unwrap();
    for file in [&fifo, &directory] {
        let error = salvage_file(&mut live, file)
            .expect_err("not a file")
            .to_string();
        assert!(error.contains("not a regular file"), "{error}");
        let scratch = format!("{}.salvage", file.display());
        assert!(!std::path::Path::new(&scratch).exists(), "{scratch}");
    }
    assert_eq!(live.pending(), 0);
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

/// One page of a table's B-tree, as SQLite's `dbstat` describes it before any damage.
#[derive(Debug, Clone)]
struct TreePage {
    page: u32,
    /// `/` for the root, `/000/` for its first child, `/000/003/` for that one's fourth, ...
    path: String,
    leaf: bool,
    /// The seqs of the rows on a leaf, read from its cells.
    seqs: Vec<i64>,
}

/// A real outbox of many pending readings over three levels of B-tree pages, folded into the database
/// file, and a few readings held for the hub clock. The oldest hundred readings are still pending (say the
/// broker refused them) and the next ones were delivered, so that freed pages still hold their old records.
struct Pristine {
    _dir: tempfile::TempDir,
    path: PathBuf,
    page_size: usize,
    /// Every record ever appended, by key: what salvage may return, byte for byte.
    written: std::collections::BTreeMap<String, NewRecord>,
    delivered: std::collections::BTreeSet<String>,
    /// The pending records by table (`false`: the queue, `true`: held) and seq.
    pending: std::collections::BTreeMap<(bool, i64), String>,
    queue: Vec<TreePage>,
    held: Vec<TreePage>,
}

const QUEUED: usize = 5000;
const STILL_PENDING: i64 = 100;
const DELIVERED: i64 = 500;
const HELD: usize = 6;

fn reading(key: &str, i: usize, held: bool) -> NewRecord {
    // About the size of a real reading; lengths vary so that rows do not line up with pages.
    NewRecord {
        key: key.to_string(),
        label: "pulse_oximetry".to_string(),
        format: 1,
        payload: format!(
            "{{\"id\":\"{key}\",\"spo2\":{},\"pulse\":{},\"note\":\"{}\"}}",
            90 + i % 10,
            60 + i % 40,
            "x".repeat(380 + i % 97)
        )
        .into_bytes(),
        created_at_ms: 1_700_000_000_000 + i as i64,
        held,
    }
}

fn pristine() -> Pristine {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outbox.db.broken-1");
    let mut written = std::collections::BTreeMap::new();
    {
        let (mut outbox, _) = Outbox::open(
            &path,
            OutboxOptions {
                max_pending: 100_000,
            },
            1,
        )
        .unwrap();
        // Held first: their seqs are the low ones, as on a hub whose clock was late at its first boot.
        let held: Vec<NewRecord> = (0..HELD)
            .map(|i| reading(&format!("h{i:03}"), i, true))
            .collect();
        let queued: Vec<NewRecord> = (0..QUEUED)
            .map(|i| reading(&format!("q{i:05}"), i, false))
            .collect();
        for batch in std::iter::once(&held[..]).chain(queued.chunks(250)) {
            outbox.append(batch).unwrap();
        }
        for record in held.iter().chain(&queued) {
            written.insert(record.key.clone(), record.clone());
        }
        let delivered: Vec<i64> = (STILL_PENDING + 1..=STILL_PENDING + DELIVERED).collect();
        assert_eq!(outbox.acknowledge(&delivered, 2).unwrap(), DELIVERED as u64);
    }
    // Folded into the file, so the damage below is all there is.
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let page_size = connection
        .query_row("PRAGMA page_size", [], |row| row.get::<_, i64>(0))
        .unwrap() as usize;
    let mut pending = std::collections::BTreeMap::new();
    for (table, held) in [("record", false), ("held", true)] {
        let mut query = connection
            .prepare(&format!("SELECT seq, key FROM {table}"))
            .unwrap();
        let rows = query
            .query_map([], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?))
            })
            .unwrap();
        for row in rows {
            let (seq, key) = row.unwrap();
            pending.insert((held, seq), key);
        }
    }
    let delivered = written
        .keys()
        .filter(|key| !pending.values().any(|k| k == *key))
        .cloned()
        .collect();
    let bytes = std::fs::read(&path).unwrap();
    let tree = |table: &str| -> Vec<TreePage> {
        let mut query = connection
            .prepare("SELECT pageno, path, pagetype FROM dbstat WHERE name = ?1 ORDER BY path")
            .unwrap();
        let pages = query
            .query_map([table], |row| {
                Ok((
                    row.get::<_, u32>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .unwrap();
        pages
            .map(|page| {
                let (page, path, kind) = page.unwrap();
                let leaf = kind == "leaf";
                let seqs = if leaf {
                    leaf_rowids(&bytes[(page as usize - 1) * page_size..][..page_size])
                } else {
                    Vec::new()
                };
                TreePage {
                    page,
                    path,
                    leaf,
                    seqs,
                }
            })
            .collect()
    };
    let (queue, held) = (tree("record"), tree("held"));
    drop(connection);
    assert!(
        queue.iter().any(|page| !page.leaf && page.path != "/"),
        "the queue needs interior pages below its root: {} pages",
        queue.len()
    );
    Pristine {
        _dir: dir,
        path,
        page_size,
        written,
        delivered,
        pending,
        queue,
        held,
    }
}

/// The rowids of a table leaf page, read from its cells (the file format's own layout, independent of the
/// salvage code): a cell count at byte 3, cell offsets from byte 8, each cell starting with two varints.
fn leaf_rowids(page: &[u8]) -> Vec<i64> {
    fn varint(bytes: &[u8]) -> (i64, usize) {
        let mut value = 0i64;
        for (i, byte) in bytes.iter().take(9).enumerate() {
            if i == 8 {
                return ((value << 8) | i64::from(*byte), 9);
            }
            value = (value << 7) | i64::from(byte & 0x7f);
            if byte & 0x80 == 0 {
                return (value, i + 1);
            }
        }
        unreachable!("a varint of a page SQLite wrote")
    }
    assert_eq!(page[0], 0x0d, "a table leaf page");
    let cells = u16::from_be_bytes([page[3], page[4]]) as usize;
    (0..cells)
        .map(|i| {
            let at = u16::from_be_bytes([page[8 + 2 * i], page[9 + 2 * i]]) as usize;
            let (_, size_len) = varint(&page[at..]);
            varint(&page[at + size_len..]).0
        })
        .collect()
}

/// What a damaged SD card sector does to a page: bytes nobody wrote.
fn garbage(seed: u64, length: usize) -> Vec<u8> {
    let mut random = fastrand::Rng::with_seed(seed);
    (0..length).map(|_| random.u8(..)).collect()
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    /// The n-th leaf page of the queue, in key order.
    QueueLeaf(usize),
    /// The queue's last leaf page, below its last interior page.
    LastQueueLeaf,
    /// The n-th interior page of the queue below its root.
    QueueInterior(usize),
    QueueRoot,
    /// The held table's only page.
    HeldPage,
    /// The file's first 100 bytes.
    Header,
    /// The first 512-byte sector: the header and page 1's own header, which says where its rows are.
    FirstSector,
    /// The text of a table's definition in the list of tables on page 1, which SQLite then refuses whole.
    TableDefinition,
    /// All of page 1: the header and the list of tables.
    FirstPage,
}

impl Pristine {
    /// The tree page a damage hits, if it hits one.
    fn target(&self, damage: Damage) -> Option<(bool, &TreePage)> {
        let interior = |n: usize| {
            self.queue
                .iter()
                .filter(|page| !page.leaf && page.path != "/")
                .nth(n)
                .expect("enough interior pages")
        };
        match damage {
            Damage::QueueLeaf(n) => Some((
                false,
                self.queue.iter().filter(|page| page.leaf).nth(n).unwrap(),
            )),
            Damage::LastQueueLeaf => {
                Some((false, self.queue.iter().rfind(|page| page.leaf).unwrap()))
            }
            Damage::QueueInterior(n) => Some((false, interior(n))),
            Damage::QueueRoot => Some((false, &self.queue[0])),
            Damage::HeldPage => {
                assert_eq!(self.held.len(), 1, "the held readings fit one page");
                Some((true, &self.held[0]))
            }
            Damage::Header | Damage::FirstSector | Damage::TableDefinition | Damage::FirstPage => {
                None
            }
        }
    }

    fn damage(&self, damages: &[Damage]) -> PathBuf {
        let mut bytes = std::fs::read(&self.path).unwrap();
        for (n, damage) in damages.iter().enumerate() {
            let (at, length) = match (damage, self.target(*damage)) {
                (Damage::Header, _) => (0, 100),
                (Damage::FirstSector, _) => (0, 512),
                (Damage::TableDefinition, _) => {
                    let text = b"payload BLOB NOT NULL";
                    let at = bytes[..self.page_size]
                        .windows(text.len())
                        .position(|w| w == text)
                        .expect("a table definition on page 1");
                    (at, text.len())
                }
                (Damage::FirstPage, _) => (0, self.page_size),
                (_, Some((_, page))) => ((page.page as usize - 1) * self.page_size, self.page_size),
                (_, None) => unreachable!(),
            };
            bytes[at..at + length].copy_from_slice(&garbage(n as u64 * 7919 + at as u64, length));
        }
        let damaged = self.path.with_file_name(format!(
            "outbox.db.damaged-{}",
            fastrand::u32(1_000_000..u32::MAX)
        ));
        std::fs::write(&damaged, bytes).unwrap();
        damaged
    }
}

/// The records salvage copied into a live outbox, by key, in full.
fn salvaged(live: &mut Outbox, held: bool) -> std::collections::BTreeMap<String, NewRecord> {
    let records = if held {
        live.fetch_held(0, 100_000).unwrap()
    } else {
        live.fetch_after(0, 100_000).unwrap()
    };
    assert!(
        live.take_quarantined().is_empty(),
        "salvage copied a damaged record"
    );
    records
        .into_iter()
        .map(|r| {
            let record = NewRecord {
                key: r.key,
                label: r.label,
                format: r.format,
                payload: r.payload,
                created_at_ms: r.created_at_ms,
                held,
            };
            (record.key.clone(), record)
        })
        .collect()
}

/// What one damaged file should give: salvage refuses it with `refused` in its error, or salvages it.
struct DamageCase {
    damage: &'static [Damage],
    refused: Option<&'static str>,
    header_rebuilt: bool,
    /// SQLite cannot read the file at all, so every record is read from the pages.
    pages_only: bool,
}

#[test]
fn salvage_takes_every_record_on_an_intact_page_of_a_really_damaged_file() {
    use Damage::*;
    let salvages = |damage, header_rebuilt| DamageCase {
        damage,
        refused: None,
        header_rebuilt,
        pages_only: false,
    };
    let pages_only = |damage, header_rebuilt| DamageCase {
        pages_only: true,
        ..salvages(damage, header_rebuilt)
    };
    #[rustfmt::skip]
    let cases = [
        salvages(&[QueueLeaf(5)], false),
        salvages(&[QueueLeaf(0), QueueLeaf(200), QueueLeaf(401)], false),
        salvages(&[QueueInterior(0)], false),
        salvages(&[QueueRoot], false),
        salvages(&[HeldPage], false),
        salvages(&[QueueInterior(0), LastQueueLeaf], false),
        salvages(&[QueueRoot, HeldPage], false),
        salvages(&[Header], true),
        salvages(&[Header, QueueInterior(0), LastQueueLeaf], true),
        pages_only(&[TableDefinition], false),
        pages_only(&[TableDefinition, QueueInterior(0), LastQueueLeaf], false),
        pages_only(&[Header, TableDefinition], true),
        pages_only(&[FirstSector, QueueInterior(0), LastQueueLeaf], true),
        DamageCase { refused: Some("first page"), ..salvages(&[FirstPage], false) },
    ];
    let pristine = pristine();
    let leaves = pristine.queue.iter().filter(|page| page.leaf).count();
    assert!(leaves > 401, "{leaves} leaves");
    let problems: Vec<String> = cases
        .iter()
        .flat_map(|case| {
            check_damage(&pristine, case)
                .into_iter()
                .map(move |problem| format!("{:?}: {problem}", case.damage))
        })
        .collect();
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Damages a copy of `pristine` as `case` says, salvages it into a fresh outbox, and lists what differs
/// from what the damage left readable.
fn check_damage(pristine: &Pristine, case: &DamageCase) -> Vec<String> {
    let mut problems = Vec::new();
    let file = pristine.damage(case.damage);
    let live_dir = tempfile::tempdir().unwrap();
    let (mut live, _) = Outbox::open(
        &live_dir.path().join("outbox.db"),
        OutboxOptions {
            max_pending: 100_000,
        },
        3,
    )
    .unwrap();
    let result = salvage_file(&mut live, &file);
    let report = match (result, case.refused) {
        (Ok(report), None) => report,
        (Err(error), Some(refused)) => {
            let error = error.to_string();
            if !error.contains(refused) || !error.contains(&file.display().to_string()) {
                problems.push(format!("refused with {error}"));
            }
            if live.pending() != 0 {
                problems.push(format!("refused, but copied {}", live.pending()));
            }
            return problems;
        }
        (Ok(report), Some(_)) => return vec![format!("salvaged: {report:?}")],
        (Err(error), None) => return vec![format!("refused: {error}")],
    };
    // What the damage destroyed: the rows on overwritten leaves. What only a walk over the file's pages can
    // reach: the rows on intact leaves below an overwritten interior page.
    let targets: Vec<(bool, &TreePage)> = case
        .damage
        .iter()
        .filter_map(|damage| pristine.target(*damage))
        .collect();
    let below = |page: &TreePage, held: bool| {
        targets.iter().any(|(h, target)| {
            *h == held && target.page != page.page && page.path.starts_with(&target.path)
        })
    };
    // A damaged page below another one is unseen by salvage, so the cases keep them apart.
    assert!(
        targets.iter().all(|(held, page)| !below(page, *held)),
        "nested damage in {:?}",
        case.damage
    );
    let mut lost = std::collections::BTreeSet::new();
    // An orphan's row that both damaged tables could have given out is left behind, counted.
    let mut unplaced = std::collections::BTreeSet::new();
    let both_damaged = [false, true]
        .iter()
        .all(|h| targets.iter().any(|(held, _)| held == h));
    let mut behind_damage = 0u64;
    let leaves = (pristine.queue.iter().map(|page| (false, page)))
        .chain(pristine.held.iter().map(|page| (true, page)))
        .filter(|(_, page)| page.leaf);
    for (held, page) in leaves {
        if targets
            .iter()
            .any(|(h, target)| *h == held && target.page == page.page)
        {
            lost.extend(page.seqs.iter().map(|seq| (held, *seq)));
        } else if below(page, held) {
            let others_last = if held { QUEUED } else { HELD } as i64;
            for seq in &page.seqs {
                if both_damaged && *seq <= others_last {
                    unplaced.insert((held, *seq));
                } else {
                    behind_damage += 1;
                }
            }
        }
    }
    let expected = |held: bool| -> std::collections::BTreeMap<String, NewRecord> {
        (pristine.pending.iter())
            .filter(|((h, seq), _)| *h == held && !lost.contains(&(held, *seq)))
            .filter(|((h, seq), _)| !unplaced.contains(&(*h, *seq)))
            .map(|(_, key)| (key.clone(), pristine.written[key].clone()))
            .collect()
    };
    // Exactly the intact records, byte for byte, each in its table; nothing delivered comes back.
    for held in [false, true] {
        let got = salvaged(&mut live, held);
        let want = expected(held);
        if got != want {
            let missing = want.keys().filter(|key| !got.contains_key(*key)).count();
            let invented = got.keys().filter(|key| !want.contains_key(*key)).count();
            let changed = (got.iter())
                .filter(|(key, record)| want.get(*key).is_some_and(|w| w != *record))
                .count();
            problems.push(format!(
                "held={held}: {missing} missing, {invented} not expected ({} delivered before), {changed} changed",
                got.keys().filter(|key| pristine.delivered.contains(*key)).count()
            ));
        }
    }
    let intact = (pristine.pending.len() - lost.len() - unplaced.len()) as u64;
    if case.pages_only {
        behind_damage = intact;
    }
    let counted = (
        report.readable,
        report.copied,
        report.duplicates,
        report.damaged,
        report.unplaced,
        report.read_from_pages,
        report.unreadable_pages,
        report.header_rebuilt,
    );
    let want = (
        intact,
        intact,
        0,
        0,
        unplaced.len() as u64,
        behind_damage,
        targets.len() as u64,
        case.header_rebuilt,
    );
    if counted != want {
        problems.push(format!(
            "(readable, copied, duplicates, damaged, unplaced, read_from_pages, unreadable_pages, \
             header_rebuilt) = {counted:?}, expected {want:?}"
        ));
    }
    problems
}

#[test]
fn salvage_never_invents_or_misplaces_a_record_whatever_the_damage() {
    let pristine = pristine();
    let original = std::fs::read(&pristine.path).unwrap();
    let pages = original.len() / pristine.page_size;
    let mut outcomes = std::collections::BTreeMap::<&str, u32>::new();
    for seed in 0..24u64 {
        let mut random = fastrand::Rng::with_seed(seed);
        let mut bytes = original.clone();
        let mut what = Vec::new();
        for _ in 0..random.usize(1..=4) {
            // Page 1, with the header and the list of tables, is written most often and so hit often.
            let page = if random.u8(0..5) == 0 {
                0
            } else {
                random.usize(0..pages)
            };
            let at = page * pristine.page_size;
            // The ways storage fails: a page of garbage, one bad 512-byte sector, a page that reads as
            // zeros, a few bits flipped.
            let (start, length, kind) = match random.u8(0..4) {
                0 => (at, pristine.page_size, "garbage"),
                1 => (
                    at + 512 * random.usize(0..pristine.page_size / 512),
                    512,
                    "sector",
                ),
                2 => (at, pristine.page_size, "zeros"),
                _ => (at, pristine.page_size, "bits"),
            };
            match kind {
                "zeros" => bytes[start..start + length].fill(0),
                "bits" => {
                    for _ in 0..8 {
                        bytes[start + random.usize(0..length)] ^= 1 << random.u8(0..8);
                    }
                }
                _ => bytes[start..start + length].copy_from_slice(&garbage(random.u64(..), length)),
            }
            what.push(format!("{kind} on page {}", page + 1));
        }
        let file = pristine
            .path
            .with_file_name(format!("outbox.db.damaged-{seed}"));
        std::fs::write(&file, &bytes).unwrap();
        let live_dir = tempfile::tempdir().unwrap();
        let (mut live, _) = Outbox::open(
            &live_dir.path().join("outbox.db"),
            OutboxOptions {
                max_pending: 100_000,
            },
            3,
        )
        .unwrap();
        let report = match salvage_file(&mut live, &file) {
            Ok(report) => report,
            Err(error) => {
                // Only a file whose list of tables is gone is refused, and then nothing was copied.
                assert!(
                    what.iter().any(|w| w.ends_with(" page 1")),
                    "{seed} {what:?}: {error}"
                );
                assert_eq!(live.pending(), 0);
                *outcomes.entry("refused").or_default() += 1;
                eprintln!("{seed} {what:?}: {error}");
                continue;
            }
        };
        for held in [false, true] {
            for (key, got) in salvaged(&mut live, held) {
                let written = &pristine.written[&key];
                // The checksum covers the key, label, format and payload, and where the record was.
                assert_eq!(
                    (&got.label, got.format, &got.payload, got.held),
                    (
                        &written.label,
                        written.format,
                        &written.payload,
                        written.held
                    ),
                    "{seed} {what:?}: {key}"
                );
            }
        }
        assert_eq!(
            report.readable,
            report.copied + report.duplicates,
            "{seed} {what:?}"
        );
        assert_eq!(report.copied, live.pending(), "{seed} {what:?}");
        *outcomes.entry("salvaged").or_default() += 1;
    }
    eprintln!("{outcomes:?}");
}

/// A lock that cannot be taken says why once, also when the whole chain of causes is reported.
#[test]
fn a_lock_that_cannot_be_taken_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let database = dir.path().join("missing").join("outbox.db");
    let error = OutboxLock::acquire(&database)
        .err()
        .expect("no directory to lock in");
    let chain = format!("{:#}", anyhow::Error::from(error));
    assert_eq!(
        chain,
        format!(
            "cannot lock {}.lock: No such file or directory",
            database.display()
        )
    );
}

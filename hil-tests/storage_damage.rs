//! Storage damage as an SD card does it, to the real files of the real daemon: a changed byte in a stored
//! reading, a damaged or cut write-ahead log, a damaged first sector, and salvage; and counters that a
//! kill -9 cannot part from the readings they count.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::delivery::rig;
use crate::support::nonin::SpotCheck;
use crate::support::wait_until;

fn wal(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", path.display()))
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|at| at + from)
}

/// Queues `count` spot checks with the broker away and waits until they are all in the outbox.
fn queue_with_broker_away(rig: &mut crate::delivery::Rig, count: u32) {
    for n in 0..count {
        rig.port.write(&SpotCheck::numbered(n).frame());
    }
    assert!(
        wait_until(Duration::from_secs(20), || rig.world.outbox_keys().len()
            == count as usize),
        "{}",
        rig.world.log()
    );
}

#[test]
fn a_changed_byte_in_a_stored_reading_is_quarantined_and_never_published() {
    let mut rig = rig();
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 10);
    let keys = rig.world.outbox_keys();
    assert!(daemon.terminate().success());
    // Reading 5 says SpO2 95 (its raw frame too). Change the value's first digit in the database file:
    // the page stays a valid page, so SQLite's own checks cannot see it.
    let victim = &keys[5];
    let path = rig.world.outbox_path();
    let mut bytes = std::fs::read(&path).unwrap();
    let id_at =
        find(&bytes, format!("\"id\":\"{victim}\"").as_bytes(), 0).expect("payload in the file");
    let value_at = find(&bytes, b"\"name\":\"spo2\",\"value\":95", id_at).expect("the SpO2 value");
    bytes[value_at + b"\"name\":\"spo2\",\"value\":".len()] = b'3';
    std::fs::write(&path, &bytes).unwrap();
    let integrity: String = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap();
    assert_eq!(
        integrity, "ok",
        "the damage is of the kind SQLite cannot see"
    );

    let _daemon = rig.world.start();
    rig.broker.restart();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(9, Duration::from_secs(30)),
        "{}",
        rig.world.log()
    );
    assert!(wait_until(Duration::from_secs(10), || {
        rig.world.status()["outbox"]["quarantined_records"] == 1
    }));
    // Nothing left to publish: the damaged reading cannot arrive later.
    assert!(wait_until(Duration::from_secs(10), || {
        rig.world.status()["outbox"]["pending"] == 0
    }));
    let delivered = rig.subscriber.unique_reading_ids();
    assert_eq!(delivered.len(), 9);
    assert!(
        !delivered.contains(victim),
        "a damaged reading was published"
    );
    assert!(rig
        .subscriber
        .readings()
        .iter()
        .all(|reading| { reading["values"][0]["value"] != 35 }));
    let status = rig.world.status();
    assert_eq!(status["outbox"]["pending"], 0);
    assert!(wait_until(Duration::from_secs(5), || rig
        .subscriber
        .messages()
        .iter()
        .any(
            |m| m.topic.ends_with("/status") && m.json()["outbox"]["quarantined_records"] == 1
        )));
    let log = rig.world.log();
    assert!(log.contains("failed its checksum"), "{log}");
    assert!(log.contains(victim.as_str()));
    // Kept, as found: the quarantine table still has it.
    let kept: i64 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT count(*) FROM quarantine WHERE key = ?1",
            [victim],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(kept, 1);
}

/// Leaves commits in the write-ahead log (the daemon folds it into the database a second after it falls
/// idle), so that the log can be damaged while it still holds them.
fn keep_commits_in_the_log(rig: &crate::delivery::Rig) {
    rig.world
        .append_config("[outbox]\nfold_log_seconds = 86400\n");
}

#[test]
fn salvage_refuses_the_live_outbox_and_leaves_its_readings_queued() {
    let mut rig = rig();
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 5);
    assert!(daemon.terminate().success());
    let path = rig.world.outbox_path();
    let queued = rig.world.outbox_keys();
    assert_eq!(queued.len(), 5);
    // The live file by its own name, and through a link to it.
    let link = rig.world.dir.path().join("looks-moved-aside.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    for file in [path.clone(), link] {
        let salvage = rig
            .world
            .command(&["outbox", "salvage", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&salvage.stderr);
        assert!(!salvage.status.success(), "{stderr}");
        assert!(stderr.contains("is the live outbox's own file"), "{stderr}");
    }
    assert_eq!(rig.world.outbox_keys(), queued);
}

#[test]
fn a_damaged_write_ahead_log_is_reported_at_start_and_salvage_recovers_every_reading() {
    let mut rig = rig();
    keep_commits_in_the_log(&rig);
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 20);
    let queued: std::collections::BTreeSet<String> = rig.world.outbox_keys().into_iter().collect();
    // Killed, so the readings are still in the log, not yet folded into the database file.
    daemon.kill9();
    let path = rig.world.outbox_path();
    let mut log_bytes = std::fs::read(wal(&path)).unwrap();
    assert!(log_bytes.len() > 32 + 24, "the readings are in the log");
    // One changed bit in the first frame's checksum: SQLite stops reading the log right there.
    log_bytes[32 + 17] ^= 0x04;
    std::fs::write(wal(&path), &log_bytes).unwrap();

    let mut daemon = rig.world.start();
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .world
            .log()
            .contains("STORED READINGS WERE LOST")),
        "{}",
        rig.world.log()
    );
    let status = rig.world.status();
    assert_eq!(status["outbox"]["lost_total"], 20, "{status}");
    assert_eq!(status["outbox"]["pending"], 0);
    assert!(rig.world.log().contains("lost=20"));
    // Salvage refuses while the daemon runs.
    let refused = rig.world.command(&["outbox", "salvage"]);
    assert!(
        !refused.status.success(),
        "salvage ran beside the daemon (daemon {}):\n{}\nlog:\n{}",
        daemon.state(),
        String::from_utf8_lossy(&refused.stdout),
        rig.world.log()
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("stop the service first"));
    assert!(daemon.terminate().success());

    let salvaged = rig.world.command(&["outbox", "salvage", "--json"]);
    let text = String::from_utf8_lossy(&salvaged.stdout).to_string();
    assert!(
        salvaged.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&salvaged.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["salvaged"][0]["report"]["copied"], 20, "{report}");
    assert_eq!(report["salvaged"][0]["report"]["damaged"], 0, "{report}");
    assert!(report["salvaged"][0]["renamed_to"]
        .as_str()
        .unwrap()
        .ends_with(".salvaged"));
    // Taken whole, so it is not offered again.
    let again = rig.world.command(&["outbox", "salvage"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("No moved-aside outbox files"));

    let _daemon = rig.world.start();
    rig.broker.restart();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(20, Duration::from_secs(30)),
        "{}",
        rig.world.log()
    );
    assert_eq!(rig.subscriber.unique_reading_ids(), queued);
}

#[test]
fn an_outbox_with_a_damaged_first_sector_is_moved_aside_and_salvage_recovers_every_reading() {
    let mut rig = rig();
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 20);
    let queued: std::collections::BTreeSet<String> = rig.world.outbox_keys().into_iter().collect();
    // A clean stop folds the log into the database, so the file alone holds the readings.
    assert!(daemon.terminate().success());
    let path = rig.world.outbox_path();
    assert!(!wal(&path).exists() || std::fs::metadata(wal(&path)).unwrap().len() == 0);
    // The first 512-byte sector, as a torn write leaves it: the file header and page 1's own header, which
    // says where the list of tables is. SQLite refuses the whole file.
    let mut bytes = std::fs::read(&path).unwrap();
    let mut random = fastrand::Rng::with_seed(17);
    bytes[..512].fill_with(|| random.u8(..));
    std::fs::write(&path, &bytes).unwrap();

    let mut daemon = rig.world.start();
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .world
            .log()
            .contains("THE OUTBOX DATABASE WAS UNREADABLE")),
        "{}",
        rig.world.log()
    );
    assert!(daemon.terminate().success());
    let salvaged = rig.world.command(&["outbox", "salvage", "--json"]);
    let text = String::from_utf8_lossy(&salvaged.stdout).to_string();
    assert!(
        salvaged.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&salvaged.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    let first = &report["salvaged"][0];
    assert!(
        first["file"]
            .as_str()
            .unwrap()
            .contains("outbox.db.broken-"),
        "{report}"
    );
    assert_eq!(first["report"]["copied"], 20, "{report}");
    assert_eq!(first["report"]["header_rebuilt"], true, "{report}");
    assert_eq!(first["report"]["read_from_pages"], 20, "{report}");
    assert!(first["renamed_to"].as_str().unwrap().ends_with(".salvaged"));

    let _daemon = rig.world.start();
    rig.broker.restart();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(20, Duration::from_secs(30)),
        "{}",
        rig.world.log()
    );
    assert_eq!(rig.subscriber.unique_reading_ids(), queued);
}

#[test]
fn a_cut_write_ahead_log_is_reported_at_start_with_its_count() {
    let mut rig = rig();
    keep_commits_in_the_log(&rig);
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 12);
    daemon.kill9();
    let path = rig.world.outbox_path();
    std::fs::write(wal(&path), b"").unwrap();
    let _daemon = rig.world.start();
    assert!(
        wait_until(Duration::from_secs(10), || rig
            .world
            .log()
            .contains("STORED READINGS WERE LOST")),
        "{}",
        rig.world.log()
    );
    assert_eq!(rig.world.status()["outbox"]["lost_total"], 12);
    let damaged_copies = std::fs::read_dir(rig.world.state_dir())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy().to_string();
            name.starts_with("outbox.db.damaged-")
                && !name.ends_with("-wal")
                && !name.ends_with("-shm")
        })
        .count();
    assert_eq!(damaged_copies, 1);
}

#[test]
fn status_counters_survive_kill_9_with_the_readings_they_count() {
    let mut rig = rig();
    rig.broker.stop();
    let mut daemon = rig.world.start();
    for n in 0..30 {
        rig.port.write(&SpotCheck::numbered(n).frame());
        // The pace of the simulated device: the readings come in several commits.
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(wait_until(Duration::from_secs(20), || rig
        .world
        .outbox_keys()
        .len()
        == 30));
    // At once: well inside the counters' periodic flush.
    daemon.kill9();
    let status = rig.world.status();
    assert_eq!(status["counters"]["readings"], 30, "{status}");
    assert_eq!(status["outbox"]["pending"], 30);
}

#[test]
fn once_idle_the_daemon_folds_its_log_into_the_database_so_log_damage_costs_nothing_stored() {
    let mut rig = rig();
    rig.broker.stop();
    let mut daemon = rig.world.start();
    queue_with_broker_away(&mut rig, 20);
    let path = rig.world.outbox_path();
    // The default: a second after the queues fall idle the log is folded and emptied.
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::metadata(wal(&path))
            .map(|m| m.len())
            .unwrap_or(0)
            == 0),
        "the log still holds {} bytes",
        std::fs::metadata(wal(&path)).unwrap().len()
    );
    daemon.kill9();
    // Whatever happens to the log now, nothing stored is in it.
    std::fs::write(wal(&path), b"damage").unwrap();
    let _daemon = rig.world.start();
    rig.broker.restart();
    assert!(
        rig.subscriber
            .wait_for_unique_readings(20, Duration::from_secs(30)),
        "{}",
        rig.world.log()
    );
    assert_eq!(rig.world.status()["outbox"]["lost_total"], 0);
    assert!(!rig
        .world
        .log()
        .contains(crate::support::daemon_phrase("STORED READINGS WERE LOST")));
}

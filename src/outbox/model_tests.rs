//! A model test of the outbox: random sequences of appends, fetches, acknowledgements, crashes and reopens
//! against the real SQLite file, checked after every step against an in-memory oracle of what was stored and
//! what the broker acknowledged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{Appended, NewRecord, Outbox, OutboxOptions, Release};

const MAX_PENDING: u64 = 12;

#[derive(Debug, Clone)]
enum Step {
    /// Appends records with these keys (drawn from a small set, so duplicates are common).
    Append(Vec<u8>),
    /// The uplink fetches up to `limit` records after its cursor and the broker acknowledges those picked
    /// by the mask (bit i for the i-th record fetched).
    PublishAndAck { limit: usize, mask: u32 },
    /// Acknowledgements of seqs that are not pending: beyond every seq given out (by this much), and every
    /// seq given out that is no longer pending. None of them may move anything.
    AckUnknown(u8),
    /// Appends records held back by their producer (readings waiting for a trusted hub clock).
    Hold(Vec<u8>),
    /// The producer releases up to this many held records, oldest first, into the queue.
    Release(usize),
    /// The storage damages the pending record at this index (modulo the queue's length): the next fetch
    /// moves it to the quarantine table, and its key may be queued again.
    Damage(usize),
    /// The worker, idle, removes up to this many acknowledged rows.
    RemoveAcknowledged(u64),
    /// The uplink's connection drops: its cursor starts again from the outbox's beginning.
    Reconnect,
    /// The process dies: the files stay as they are on disk, with no final checkpoint.
    Crash,
    /// A clean restart.
    Reopen,
    /// The process dies while an append or an acknowledgement runs: before its transaction committed (the
    /// files as before the step), or after it committed but before the commit mark outside the log was
    /// brought up to date (the mark lags). Neither is a loss.
    Interrupted { step: Box<Step>, committed: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..24, 1..6).prop_map(Step::Append),
        4 => (1usize..8, any::<u32>()).prop_map(|(limit, mask)| Step::PublishAndAck { limit, mask }),
        2 => (1u64..6).prop_map(Step::RemoveAcknowledged),
        1 => (0u8..4).prop_map(Step::AckUnknown),
        2 => proptest::collection::vec(0u8..24, 1..4).prop_map(Step::Hold),
        2 => (1usize..4).prop_map(Step::Release),
        1 => (0usize..16).prop_map(Step::Damage),
        1 => Just(Step::Reconnect),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
        2 => (
            prop_oneof![
                proptest::collection::vec(0u8..24, 1..6).prop_map(Step::Append),
                (1usize..8, any::<u32>()).prop_map(|(limit, mask)| Step::PublishAndAck { limit, mask }),
                (1u64..6).prop_map(Step::RemoveAcknowledged),
            ],
            any::<bool>()
        )
            .prop_map(|(step, committed)| Step::Interrupted { step: Box::new(step), committed }),
    ]
}

fn record(key: u8) -> NewRecord {
    NewRecord {
        key: format!("key-{key}"),
        label: "pulse_oximetry".to_string(),
        format: 1,
        payload: format!("{{\"id\":\"key-{key}\"}}").into_bytes(),
        created_at_ms: created_at(key),
        held: false,
    }
}

/// Creation times out of the order of storage, as a hub clock set back or a reading released from hold
/// give them.
fn created_at(key: u8) -> i64 {
    1_000 + i64::from(key) * 7 % 11
}

/// What must be true of the outbox, kept without SQLite.
#[derive(Default, Clone)]
struct Oracle {
    /// Records stored and not acknowledged, by the seq they must have been given, in storage order.
    pending: Vec<(i64, String)>,
    /// Keys of held records, oldest first: stored and pending, but not in the queue until released.
    held: Vec<String>,
    /// Records the storage damaged, moved to the quarantine table.
    quarantined: u64,
    /// Keys the broker acknowledged (and whose removal was committed).
    acknowledged: BTreeSet<String>,
    /// Seqs are never reused, not even after a crash: the next one is one more than any ever given.
    last_seq: i64,
}

impl Oracle {
    fn is_pending(&self, key: &str) -> bool {
        self.pending.iter().any(|(_, k)| k == key) || self.held.iter().any(|k| k == key)
    }

    /// Records stored and not acknowledged, held ones included.
    fn pending_count(&self) -> u64 {
        (self.pending.len() + self.held.len()) as u64
    }
}

struct Subject {
    directory: tempfile::TempDir,
    generation: u32,
    path: PathBuf,
    outbox: Option<Outbox>,
    cursor: i64,
}

fn scratch() -> tempfile::TempDir {
    // fsync is free on tmpfs, so thousands of sequences fit in a CI run.
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

impl Subject {
    fn new() -> Subject {
        let directory = scratch();
        let path = directory.path().join("0").join("outbox.db");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut subject = Subject {
            directory,
            generation: 0,
            path,
            outbox: None,
            cursor: 0,
        };
        subject.open();
        subject
    }

    fn open(&mut self) {
        let (outbox, report) = Outbox::open(
            &self.path,
            OutboxOptions {
                max_pending: MAX_PENDING,
            },
            5,
        )
        .unwrap();
        assert_eq!(
            report,
            super::OpenReport::default(),
            "a crash is not a loss"
        );
        self.outbox = Some(outbox);
        self.cursor = 0;
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.outbox.as_mut().unwrap()
    }

    /// Copies the files as they are now to a fresh directory: what the next process would find if this one
    /// died now.
    fn snapshot(&mut self) -> PathBuf {
        self.generation += 1;
        let next = self
            .directory
            .path()
            .join(self.generation.to_string())
            .join("outbox.db");
        std::fs::create_dir_all(next.parent().unwrap()).unwrap();
        for suffix in ["", "-wal", ".committed"] {
            let from = PathBuf::from(format!("{}{suffix}", self.path.display()));
            if from.exists() {
                std::fs::copy(&from, format!("{}{suffix}", next.display())).unwrap();
            }
        }
        next
    }

    /// Abandons the running outbox and opens the files at `path` as the next process would.
    fn restart_from(&mut self, path: PathBuf) {
        // The abandoned outbox's close happens after the copy was taken, so it cannot help the copy.
        self.outbox = None;
        self.path = path;
        self.open();
    }

    fn crash(&mut self) {
        let files = self.snapshot();
        self.restart_from(files);
    }
}

fn run(steps: Vec<Step>) {
    let mut subject = Subject::new();
    let mut oracle = Oracle::default();
    for step in steps {
        apply(&mut subject, &mut oracle, step);
        check_whole_queue(&mut subject, &oracle);
    }
}

fn apply(subject: &mut Subject, oracle: &mut Oracle, step: Step) {
    match step {
        Step::Append(ref keys) | Step::Hold(ref keys) => {
            let held = matches!(step, Step::Hold(_));
            let records: Vec<NewRecord> = keys
                .iter()
                .map(|k| NewRecord { held, ..record(*k) })
                .collect();
            let outcomes = subject.outbox().append(&records).unwrap();
            let mut batch_seen = BTreeSet::new();
            for (record, outcome) in records.iter().zip(outcomes) {
                let known = oracle.is_pending(&record.key)
                    || oracle.acknowledged.contains(&record.key)
                    || batch_seen.contains(&record.key);
                let expected = if known {
                    Appended::Duplicate
                } else if oracle.pending_count() >= MAX_PENDING {
                    Appended::RejectedFull
                } else {
                    Appended::Stored
                };
                assert_eq!(outcome, expected, "{}", record.key);
                if outcome == Appended::Stored && held {
                    oracle.held.push(record.key.clone());
                    batch_seen.insert(record.key.clone());
                } else if outcome == Appended::Stored {
                    oracle.last_seq += 1;
                    oracle.pending.push((oracle.last_seq, record.key.clone()));
                    batch_seen.insert(record.key.clone());
                }
            }
        }
        Step::PublishAndAck { limit, mask } => {
            let cursor = subject.cursor;
            let fetched = subject.outbox().fetch_after(cursor, limit).unwrap();
            // Oldest first, only pending records, nothing skipped after the cursor.
            let got: Vec<(i64, String)> = fetched.iter().map(|r| (r.seq, r.key.clone())).collect();
            let expected: Vec<(i64, String)> = oracle
                .pending
                .iter()
                .filter(|(seq, _)| *seq > cursor)
                .take(limit)
                .cloned()
                .collect();
            assert_eq!(got, expected);
            if let Some(last) = fetched.last() {
                subject.cursor = last.seq;
            }
            let acked: Vec<i64> = fetched
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, r)| r.seq)
                .collect();
            subject.outbox().acknowledge(&acked, 2_000).unwrap();
            for record in fetched.iter().filter(|r| acked.contains(&r.seq)) {
                oracle.pending.retain(|(seq, _)| *seq != record.seq);
                oracle.acknowledged.insert(record.key.clone());
            }
        }
        Step::AckUnknown(beyond) => {
            let pending: BTreeSet<i64> = oracle.pending.iter().map(|(seq, _)| *seq).collect();
            let mut unknown: Vec<i64> = (1..=oracle.last_seq)
                .filter(|seq| !pending.contains(seq))
                .collect();
            unknown.push(oracle.last_seq + 1 + i64::from(beyond));
            assert_eq!(subject.outbox().acknowledge(&unknown, 2_000).unwrap(), 0);
        }
        Step::Release(count) => {
            let held = subject.outbox().fetch_held(0, count).unwrap();
            let keys: Vec<&str> = held.iter().map(|r| r.key.as_str()).collect();
            let expected: Vec<&str> = oracle.held.iter().take(count).map(String::as_str).collect();
            assert_eq!(keys, expected);
            let released: Vec<Release> = held
                .iter()
                .map(|r| Release {
                    seq: r.seq,
                    payload: r.payload.clone(),
                    created_at_ms: None,
                })
                .collect();
            let moved = subject.outbox().release(&released).unwrap();
            assert_eq!(moved, held.len() as u64);
            // Each joins the queue's end with the next seq.
            for key in oracle.held.drain(..held.len()) {
                oracle.last_seq += 1;
                oracle.pending.push((oracle.last_seq, key));
            }
        }
        Step::Damage(index) => {
            if oracle.pending.is_empty() {
                return;
            }
            let (seq, _) = oracle.pending.remove(index % oracle.pending.len());
            let other = rusqlite::Connection::open(&subject.path).unwrap();
            other
                .execute(
                    "UPDATE record SET checksum = checksum + 1 WHERE seq = ?1",
                    [seq],
                )
                .unwrap();
            drop(other);
            // The next fetch (the check after this step) quarantines it.
            oracle.quarantined += 1;
        }
        Step::RemoveAcknowledged(limit) => {
            let before = subject.outbox().unremoved();
            let removed = subject.outbox().remove_acknowledged(limit).unwrap();
            assert_eq!(removed, before.min(limit));
        }
        Step::Reconnect => subject.cursor = 0,
        Step::Crash => subject.crash(),
        Step::Reopen => {
            subject.outbox = None;
            subject.open();
        }
        Step::Interrupted {
            step,
            committed: false,
        } => {
            let before = subject.snapshot();
            apply(subject, &mut oracle.clone(), *step);
            subject.restart_from(before);
        }
        Step::Interrupted {
            step,
            committed: true,
        } => {
            let before = subject.snapshot();
            apply(subject, oracle, *step);
            let after = subject.snapshot();
            let mark = |path: &Path| PathBuf::from(format!("{}.committed", path.display()));
            match std::fs::read(mark(&before)) {
                Ok(bytes) => std::fs::write(mark(&after), bytes).unwrap(),
                Err(_) => drop(std::fs::remove_file(mark(&after))),
            }
            subject.restart_from(after);
        }
    }
}

/// The outbox holds exactly the oracle's pending keys, in order, each once; nothing acknowledged is back.
/// The writer's statistics come from its own count; a reader's, counted from the file, must agree.
fn check_whole_queue(subject: &mut Subject, oracle: &Oracle) {
    let path = subject.path.clone();
    let outbox = subject.outbox();
    let all: Vec<(i64, String)> = outbox
        .fetch_after(0, 10_000)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.key))
        .collect();
    assert_eq!(all, oracle.pending);
    assert_eq!(outbox.pending(), oracle.pending_count());
    let stats = outbox.stats().unwrap();
    assert_eq!(stats.pending, oracle.pending_count());
    assert_eq!(stats.held, oracle.held.len() as u64);
    assert_eq!(stats.delivered_total, oracle.acknowledged.len() as u64);
    assert_eq!(stats.quarantined_records, oracle.quarantined);
    let oldest = oracle
        .pending
        .iter()
        .map(|(_, key)| key)
        .map(|key| key[4..].parse().unwrap())
        .map(created_at)
        .min();
    assert_eq!(stats.oldest_pending_created_at_ms, oldest);
    assert_eq!(outbox.unremoved(), outbox.count_unremoved_rows());
    assert!(
        outbox.knows_its_rows(),
        "the outbox's knowledge of its rows"
    );
    let counted = Outbox::open_for_status(&path).unwrap().stats().unwrap();
    assert_eq!(
        (counted.pending, counted.oldest_pending_created_at_ms),
        (stats.pending, oldest)
    );
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_outbox_agrees_with_its_oracle_through_crashes_and_reopens(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        run(steps);
    }
}

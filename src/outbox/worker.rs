//! The outbox worker: one thread owns the only writing connection; everything else talks to it through
//! [`OutboxHandle`]. Appends that queue up while a commit runs are committed together (group commit).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{Appended, NewRecord, Outbox, OutboxError, OutboxStats, Release, StoredRecord};

/// At most this many records go into one transaction; bounds latency and memory per commit.
const MAX_GROUP: usize = 1024;
/// Every this often the worker prunes old dedup keys and checkpoints the WAL.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(300);
const DAY_MS: i64 = 24 * 3600 * 1000;

enum Command {
    Append {
        records: Vec<NewRecord>,
        /// Counters committed in the same transaction as the records.
        counters: Vec<(String, u64)>,
        done: Option<oneshot::Sender<Vec<Appended>>>,
    },
    Acknowledge {
        seqs: Vec<i64>,
        now_ms: i64,
    },
    Fetch {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Vec<StoredRecord>>,
    },
    UplinkError {
        message: String,
        now_ms: i64,
    },
    Counters {
        deltas: Vec<(String, u64)>,
    },
    Stats {
        reply: oneshot::Sender<OutboxStats>,
    },
    FetchHeld {
        after: i64,
        limit: usize,
        reply: oneshot::Sender<Vec<StoredRecord>>,
    },
    Release {
        released: Vec<Release>,
        done: oneshot::Sender<u64>,
    },
}

/// A cheap, cloneable way to reach the outbox worker.
#[derive(Clone)]
pub struct OutboxHandle {
    commands: mpsc::Sender<Command>,
    appended: Arc<Notify>,
    quarantined: Arc<Notify>,
}

/// The worker stopped; its thread reports why through the join handle.
#[derive(Debug, thiserror::Error)]
#[error("the outbox worker has stopped")]
pub struct WorkerGone;

impl OutboxHandle {
    /// Queues records for the next group commit; waits only for room in the queue, not for the commit.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<(), WorkerGone> {
        self.append_counted(records, Vec::new()).await
    }

    /// Like [`OutboxHandle::append`], with counters committed in the same transaction as the records.
    pub async fn append_counted(
        &self,
        records: Vec<NewRecord>,
        counters: Vec<(String, u64)>,
    ) -> Result<(), WorkerGone> {
        self.commands
            .send(Command::Append {
                records,
                counters,
                done: None,
            })
            .await
            .map_err(|_| WorkerGone)
    }

    /// Appends and waits until the records are durable; returns what happened to each.
    pub async fn append_durable(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, WorkerGone> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Append {
                records,
                counters: Vec::new(),
                done: Some(done),
            })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Queues removal of records the broker acknowledged. Commands run in order, so a later fetch no longer sees them.
    pub async fn acknowledge(&self, seqs: Vec<i64>, now_ms: i64) -> Result<(), WorkerGone> {
        self.commands
            .send(Command::Acknowledge { seqs, now_ms })
            .await
            .map_err(|_| WorkerGone)
    }

    /// Asks for up to `limit` records after `after` without waiting for them, so the caller can keep
    /// working while the worker reads; the answer arrives on the returned receiver.
    pub async fn request_fetch_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<oneshot::Receiver<Vec<StoredRecord>>, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.commands
            .send(Command::Fetch {
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| WorkerGone)?;
        Ok(wait)
    }

    pub async fn fetch_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.commands
            .send(Command::Fetch {
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    pub async fn record_uplink_error(
        &self,
        message: String,
        now_ms: i64,
    ) -> Result<(), WorkerGone> {
        self.commands
            .send(Command::UplinkError { message, now_ms })
            .await
            .map_err(|_| WorkerGone)
    }

    pub async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), WorkerGone> {
        self.commands
            .send(Command::Counters { deltas })
            .await
            .map_err(|_| WorkerGone)
    }

    pub async fn stats(&self) -> Result<OutboxStats, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.commands
            .send(Command::Stats { reply })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Up to `limit` held records with `seq > after`, oldest first.
    pub async fn fetch_held(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.commands
            .send(Command::FetchHeld {
                after,
                limit,
                reply,
            })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Releases held records into the queue with their final payloads; waits for the commit and returns
    /// how many moved (0 when the disk was full: they stay held and the caller tries again later).
    pub async fn release(&self, released: Vec<Release>) -> Result<u64, WorkerGone> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Release { released, done })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Signalled after every commit that stored at least one new record.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// Signalled when a fetch found damaged records and quarantined them.
    pub fn quarantined(&self) -> Arc<Notify> {
        self.quarantined.clone()
    }
}

/// Starts the worker thread. It runs until every handle is dropped, or stops with an error on a storage
/// failure that must not be retried; the daemon then exits and systemd restarts it.
pub fn spawn_worker(
    outbox: Outbox,
    dedup_retention_days: u32,
    trusted_now_ms: fn() -> Option<i64>,
) -> (
    OutboxHandle,
    std::thread::JoinHandle<Result<(), OutboxError>>,
) {
    let (commands, receiver) = mpsc::channel(256);
    let appended = Arc::new(Notify::new());
    let quarantined = Arc::new(Notify::new());
    let handle = OutboxHandle {
        commands,
        appended: appended.clone(),
        quarantined: quarantined.clone(),
    };
    let retention_ms = i64::from(dedup_retention_days) * DAY_MS;
    let thread = std::thread::Builder::new()
        .name("outbox".to_string())
        .spawn(move || {
            run(
                outbox,
                receiver,
                Signals {
                    appended,
                    quarantined,
                },
                retention_ms,
                trusted_now_ms,
            )
        })
        .expect("invariant: the OS can start one thread at startup");
    (handle, thread)
}

/// What the worker tells the tasks that wait on it.
struct Signals {
    appended: Arc<Notify>,
    quarantined: Arc<Notify>,
}

fn run(
    mut outbox: Outbox,
    mut receiver: mpsc::Receiver<Command>,
    signals: Signals,
    retention_ms: i64,
    trusted_now_ms: fn() -> Option<i64>,
) -> Result<(), OutboxError> {
    let mut last_housekeeping = std::time::Instant::now();
    let mut held: Option<Command> = None;
    loop {
        let command = match held.take() {
            Some(command) => command,
            None => match receiver.blocking_recv() {
                Some(command) => command,
                None => break,
            },
        };
        match command {
            Command::Append {
                records,
                counters,
                done,
            } => {
                let mut batch = records;
                let mut batch_counters = counters;
                let mut waiters = vec![(0..batch.len(), done)];
                // Group commit: take every append already queued behind this one.
                while batch.len() < MAX_GROUP {
                    match receiver.try_recv() {
                        Ok(Command::Append {
                            records,
                            counters,
                            done,
                        }) => {
                            let start = batch.len();
                            batch.extend(records);
                            batch_counters.extend(counters);
                            waiters.push((start..batch.len(), done));
                        }
                        Ok(other) => {
                            held = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                let outcomes =
                    append_with_retry(&mut outbox, &batch, &sum_counters(batch_counters))?;
                report_append(&outcomes, outbox.pending());
                if outcomes.contains(&Appended::Stored) {
                    signals.appended.notify_one();
                }
                for (range, done) in waiters {
                    if let Some(done) = done {
                        let _ = done.send(outcomes[range].to_vec());
                    }
                }
            }
            Command::Acknowledge { seqs, now_ms } => {
                if let Err(error) = outbox.acknowledge(&seqs, now_ms) {
                    match error {
                        // The rows stay and are published again later: a duplicate, never a loss.
                        OutboxError::DiskFull(_) => {
                            tracing::error!(%error, "Could not remove delivered readings.")
                        }
                        other => return Err(other),
                    }
                }
            }
            Command::Fetch {
                after,
                limit,
                reply,
            } => {
                let records = outbox.fetch_after(after, limit)?;
                report_quarantined(&mut outbox, &signals);
                let _ = reply.send(records);
            }
            Command::UplinkError { message, now_ms } => {
                if let Err(error) = outbox.record_uplink_error(&message, now_ms) {
                    tracing::warn!(%error, "Could not record the uplink error.");
                }
            }
            Command::Counters { deltas } => {
                if let Err(error) = outbox.add_counters(&deltas) {
                    tracing::warn!(%error, "Could not record counters.");
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(outbox.stats()?);
            }
            Command::FetchHeld {
                after,
                limit,
                reply,
            } => {
                let records = outbox.fetch_held(after, limit)?;
                report_quarantined(&mut outbox, &signals);
                let _ = reply.send(records);
            }
            Command::Release { released, done } => {
                let moved = match outbox.release(&released) {
                    Ok(moved) => moved,
                    Err(OutboxError::DiskFull(error)) => {
                        tracing::error!(%error, "Could not release held readings; they stay held.");
                        0
                    }
                    Err(other) => return Err(other),
                };
                if moved > 0 {
                    signals.appended.notify_one();
                }
                let _ = done.send(moved);
            }
        }
        if receiver.is_empty() && held.is_none() {
            outbox.sync_mark();
        }
        if let Some(error) = outbox.take_mark_error() {
            tracing::error!(%error, "Cannot write the outbox's commit mark; a loss of stored readings may go unreported until it works again.");
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            last_housekeeping = std::time::Instant::now();
            housekeeping(&mut outbox, trusted_now_ms(), retention_ms);
        }
    }
    if let Err(error) = outbox.checkpoint() {
        tracing::debug!(%error, "Final checkpoint failed; SQLite replays the WAL on the next open.");
    }
    Ok(())
}

/// A full disk is retried until space appears: the readings wait in memory and the bounded queue pushes
/// back on the devices. Any other error stops the worker (an fsync error must not be retried).
fn append_with_retry(
    outbox: &mut Outbox,
    batch: &[NewRecord],
    counters: &[(String, u64)],
) -> Result<Vec<Appended>, OutboxError> {
    let mut delay = Duration::from_millis(500);
    loop {
        match outbox.append_counted(batch, counters) {
            Ok(outcomes) => return Ok(outcomes),
            Err(OutboxError::DiskFull(error)) => {
                tracing::error!(%error, records = batch.len(), retry_in = ?delay, "Outbox disk full; holding readings and retrying.");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
            Err(other) => return Err(other),
        }
    }
}

/// One delta per counter name: a group commit gathers many appends, each with its own deltas.
fn sum_counters(deltas: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (name, delta) in deltas {
        *sums.entry(name).or_insert(0) += delta;
    }
    sums.into_iter().collect()
}

/// Damaged records are never published; each is named (by its place and id, never its contents).
fn report_quarantined(outbox: &mut Outbox, signals: &Signals) {
    let damaged = outbox.take_quarantined();
    if !damaged.is_empty() {
        signals.quarantined.notify_one();
    }
    for record in damaged {
        tracing::error!(
            seq = record.seq,
            table = record.source,
            id = %record.key,
            "A stored reading failed its checksum (storage damage). It was moved to the quarantine table, \
             kept, and will not be published; the device's copy is accepted again if it sends it."
        );
    }
}

fn report_append(outcomes: &[Appended], pending: u64) {
    let rejected = outcomes
        .iter()
        .filter(|o| **o == Appended::RejectedFull)
        .count();
    if rejected > 0 {
        tracing::error!(
            rejected,
            pending,
            "Outbox full: refused new readings; they are counted in status."
        );
    }
    let duplicates = outcomes
        .iter()
        .filter(|o| **o == Appended::Duplicate)
        .count();
    if duplicates > 0 {
        tracing::debug!(duplicates, "Skipped readings already queued or delivered.");
    }
}

/// Prunes the dedup memory only by a trusted clock: a hub that booted on an old saved time would otherwise
/// forget ids early (or, ahead, keep them forever) and a device's replay would be queued again.
fn housekeeping(outbox: &mut Outbox, trusted_now_ms: Option<i64>, retention_ms: i64) {
    if let Some(now_ms) = trusted_now_ms {
        match outbox.prune_delivered(now_ms - retention_ms, now_ms) {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "Forgot old delivered reading ids."),
            Err(error) => tracing::warn!(%error, "Could not prune delivered reading ids."),
        }
    }
    if outbox.pending() == 0 {
        if let Err(error) = outbox.checkpoint() {
            tracing::debug!(%error, "Idle checkpoint failed.");
        }
    }
}

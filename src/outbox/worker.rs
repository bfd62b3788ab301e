//! The outbox worker: one thread owns the only writing connection; everything else talks to it through
//! [`OutboxHandle`]. Appends that queue up while a commit runs are committed together (group commit).
//!
//! Appends come on their own bounded queue. When the disk is full the worker keeps the batch that failed,
//! retries it on a timer, and stops taking appends meanwhile, so the queue fills and pushes back on the
//! devices; every other command (stats for the watchdog, fetch and acknowledge for the uplink) is still
//! answered. When every handle is gone (the daemon is stopping) a batch that still does not fit is given
//! up: it was never durable, so nobody was told it was stored.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, Notify};

use super::space::{Space, ACK_CHUNK};
use super::{Appended, NewRecord, Outbox, OutboxError, OutboxStats, Release, StoredRecord};

/// At most this many records go into one transaction; bounds latency and memory per commit.
const MAX_GROUP: usize = 1024;
/// Append requests waiting for the worker; when full (a slow or full disk), producers wait.
const APPEND_QUEUE: usize = 16;
const COMMAND_QUEUE: usize = 256;
/// Every this often the worker prunes old dedup keys and checkpoints the WAL.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(300);
const DAY_MS: i64 = 24 * 3600 * 1000;
/// A batch that did not fit is retried after this, doubling up to [`RETRY_MAX`]: a short maximum, so the
/// outbox takes readings again within seconds of space returning.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// While the disk stays full, a reminder is logged this often.
const STILL_FULL_LOG: Duration = Duration::from_secs(60);
/// Acknowledged rows are removed once the worker has had nothing to do for this long, so that a drain
/// never waits on their deletion.
const REMOVE_WHEN_QUIET_FOR: Duration = Duration::from_secs(1);
/// Acknowledged rows removed per turn of the worker (one transaction when there is room, transactions of
/// [`ACK_CHUNK`] on a small or nearly full disk): about 10 ms of work here with room, so a command that
/// arrives meanwhile waits no longer than that; the next turn goes on after it.
const REMOVAL_CHUNK: u64 = 2048;
/// More acknowledged rows than this are removed at once even while busy, so that a hub that is never
/// quiet (it always is, but a bound costs nothing) does not grow its file for ever.
const REMOVE_AT_ONCE_ABOVE: u64 = 200_000;

/// Records to append, and who waits for them to be durable.
struct AppendRequest {
    records: Vec<NewRecord>,
    /// Counters committed in the same transaction as the records.
    counters: Vec<(String, u64)>,
    done: Option<oneshot::Sender<Vec<Appended>>>,
}

/// Everything but appends: answered even while appends wait for disk space.
enum Command {
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
    appends: mpsc::Sender<AppendRequest>,
    appended: Arc<Notify>,
    quarantined: Arc<Notify>,
    progress: Arc<AtomicU64>,
}

/// The worker stopped; its thread reports why through the join handle.
#[derive(Debug, thiserror::Error)]
#[error("the outbox worker has stopped")]
pub struct WorkerGone;

impl OutboxHandle {
    /// Queues records for the next group commit; waits only for room in the queue, not for the commit.
    /// While the disk is full the queue stays full, so this waits until space returns.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<(), WorkerGone> {
        self.append_counted(records, Vec::new()).await
    }

    /// Like [`OutboxHandle::append`], with counters committed in the same transaction as the records.
    pub async fn append_counted(
        &self,
        records: Vec<NewRecord>,
        counters: Vec<(String, u64)>,
    ) -> Result<(), WorkerGone> {
        self.appends
            .send(AppendRequest {
                records,
                counters,
                done: None,
            })
            .await
            .map_err(|_| WorkerGone)
    }

    /// Queues records and their counters if the queue has room now; `Ok(false)` when it is full (a full
    /// disk, or a worker far behind), for producers that must not wait.
    pub fn try_append_counted(
        &self,
        records: Vec<NewRecord>,
        counters: Vec<(String, u64)>,
    ) -> Result<bool, WorkerGone> {
        match self.appends.try_send(AppendRequest {
            records,
            counters,
            done: None,
        }) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(_)) => Ok(false),
            Err(TrySendError::Closed(_)) => Err(WorkerGone),
        }
    }

    /// Appends and waits until the records are durable; returns what happened to each. Appends are
    /// committed in the order they were queued, so when this returns, every record this caller queued
    /// before is durable too.
    pub async fn append_durable(
        &self,
        records: Vec<NewRecord>,
    ) -> Result<Vec<Appended>, WorkerGone> {
        self.append_durable_counted(records, Vec::new()).await
    }

    /// Like [`OutboxHandle::append_durable`], with counters committed in the same transaction.
    pub async fn append_durable_counted(
        &self,
        records: Vec<NewRecord>,
        counters: Vec<(String, u64)>,
    ) -> Result<Vec<Appended>, WorkerGone> {
        let (done, wait) = oneshot::channel();
        self.appends
            .send(AppendRequest {
                records,
                counters,
                done: Some(done),
            })
            .await
            .map_err(|_| WorkerGone)?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Queues removal of records the broker acknowledged. Commands run in order, so a later fetch no longer sees them.
    pub async fn acknowledge(&self, seqs: Vec<i64>, now_ms: i64) -> Result<(), WorkerGone> {
        self.tell(Command::Acknowledge { seqs, now_ms }).await
    }

    /// Asks for up to `limit` records after `after` without waiting for them, so the caller can keep
    /// working while the worker reads; the answer arrives on the returned receiver.
    pub async fn request_fetch_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<oneshot::Receiver<Vec<StoredRecord>>, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.tell(Command::Fetch {
            after,
            limit,
            reply,
        })
        .await?;
        Ok(wait)
    }

    pub async fn fetch_after(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, WorkerGone> {
        self.ask(|reply| Command::Fetch {
            after,
            limit,
            reply,
        })
        .await
    }

    pub async fn record_uplink_error(
        &self,
        message: String,
        now_ms: i64,
    ) -> Result<(), WorkerGone> {
        self.tell(Command::UplinkError { message, now_ms }).await
    }

    pub async fn add_counters(&self, deltas: Vec<(String, u64)>) -> Result<(), WorkerGone> {
        self.tell(Command::Counters { deltas }).await
    }

    pub async fn stats(&self) -> Result<OutboxStats, WorkerGone> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Up to `limit` held records with `seq > after`, oldest first.
    pub async fn fetch_held(
        &self,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredRecord>, WorkerGone> {
        self.ask(|reply| Command::FetchHeld {
            after,
            limit,
            reply,
        })
        .await
    }

    /// Releases held records into the queue with their final payloads; waits for the commit and returns
    /// how many moved (0 when the disk was full: they stay held and the caller tries again later).
    pub async fn release(&self, released: Vec<Release>) -> Result<u64, WorkerGone> {
        self.ask(|done| Command::Release { released, done }).await
    }

    /// Sends a command that expects no answer.
    async fn tell(&self, command: Command) -> Result<(), WorkerGone> {
        self.commands.send(command).await.map_err(|_| WorkerGone)
    }

    /// Sends a command and waits for its answer.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, WorkerGone> {
        let (reply, wait) = oneshot::channel();
        self.tell(command(reply)).await?;
        wait.await.map_err(|_| WorkerGone)
    }

    /// Signalled after every commit that stored at least one new record.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// A count that grows with every step the worker takes: a worker slowed by its storage still moves it,
    /// a stuck one does not.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Signalled when a fetch found damaged records and quarantined them.
    pub fn quarantined(&self) -> Arc<Notify> {
        self.quarantined.clone()
    }
}

/// Starts the worker thread. It runs until every handle is dropped, or stops with an error on a storage
/// failure that must not be retried; the daemon then exits and systemd restarts it. `space` is the state
/// directory's reserve (see [`super::space`]).
pub fn spawn_worker(
    outbox: Outbox,
    space: Space,
    dedup_retention_days: u32,
    fold_log_after: Option<Duration>,
    trusted_now_ms: fn() -> Option<i64>,
) -> (
    OutboxHandle,
    std::thread::JoinHandle<Result<(), OutboxError>>,
) {
    let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
    let (appends, append_queue) = mpsc::channel(APPEND_QUEUE);
    let appended = Arc::new(Notify::new());
    let quarantined = Arc::new(Notify::new());
    let progress = Arc::new(AtomicU64::new(0));
    let handle = OutboxHandle {
        commands,
        appends,
        appended: appended.clone(),
        quarantined: quarantined.clone(),
        progress: progress.clone(),
    };
    let worker = Worker {
        outbox,
        space,
        appended,
        quarantined,
        retention_ms: i64::from(dedup_retention_days) * DAY_MS,
        trusted_now_ms,
        last_housekeeping: Instant::now(),
        last_fold: Instant::now(),
        fold_log_after,
        checkpoint_warned_at: None,
        progress: progress.clone(),
        stalled: None,
        unremoved: Vec::new(),
        unremoved_retry_at: None,
        unremoved_since: None,
        remove_at: None,
    };
    let thread = std::thread::Builder::new()
        .name("outbox".to_string())
        .spawn(move || {
            // The worker's own small runtime lets it wait for commands and for its retry timer at once;
            // SQLite calls block this thread only, never the daemon's runtime.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .expect("invariant: a timer-only runtime starts at startup");
            runtime.block_on(worker.serve(command_queue, append_queue))
        })
        .expect("invariant: the OS can start one thread at startup");
    (handle, thread)
}

/// Who waits for an append to be durable, and for which records of the batch.
type Waiter = (Range<usize>, Option<oneshot::Sender<Vec<Appended>>>);

/// Appended records and, per request, the range of them its waiter gets outcomes for.
struct Batch {
    records: Vec<NewRecord>,
    /// One delta per counter name, committed with the first records of the batch that are stored.
    counters: Vec<(String, u64)>,
    waiters: Vec<Waiter>,
}

/// A batch being stored, and once it did not fit, waiting for space. It is stored in pieces when the disk
/// is small or nearly full or as room appears (a whole group may need more WAL than a small filesystem
/// can hold at once); its waiters are answered when the last piece is stored.
struct Pending {
    batch: Batch,
    /// What happened to the records stored so far, a prefix of the batch.
    outcomes: Vec<Appended>,
    /// Records per transaction for the next try: halved when a try does not fit, doubled when one does.
    piece: usize,
    since: Instant,
    since_ms: i64,
    retry_at: tokio::time::Instant,
    delay: Duration,
    last_log: Instant,
}

struct Worker {
    outbox: Outbox,
    space: Space,
    appended: Arc<Notify>,
    quarantined: Arc<Notify>,
    retention_ms: i64,
    trusted_now_ms: fn() -> Option<i64>,
    last_housekeeping: Instant,
    /// When the write-ahead log was last folded into the database while idle.
    last_fold: Instant,
    fold_log_after: Option<Duration>,
    checkpoint_warned_at: Option<Instant>,
    /// Counts the worker's steps, so the watchdog can tell a busy worker from a stuck one.
    progress: Arc<AtomicU64>,
    /// The batch waiting for space; no appends are taken while there is one.
    stalled: Option<Pending>,
    /// Delivered records a full disk kept from being removed, retried at `unremoved_retry_at`.
    unremoved: Vec<i64>,
    unremoved_retry_at: Option<tokio::time::Instant>,
    unremoved_since: Option<Instant>,
    /// When the acknowledged rows still in the file are removed next.
    remove_at: Option<tokio::time::Instant>,
}

impl Worker {
    async fn serve(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut appends: mpsc::Receiver<AppendRequest>,
    ) -> Result<(), OutboxError> {
        if let Err(error) = self.outbox.limit_wal(self.space.wal_limits()) {
            tracing::warn!(%error, "Could not limit the write-ahead log's size.");
        }
        if !self.space.ensure_reserve() {
            tracing::warn!(
                bytes = self.space.reserve_size(),
                "No room for the outbox reserve; it is made once the state directory has room."
            );
        }
        // Rows a previous run acknowledged and left go at the first quiet moment.
        self.remove_when_quiet();
        let mut commands_open = true;
        let mut appends_open = true;
        while commands_open || appends_open || self.stalled.is_some() {
            // Every handle is gone, so the daemon is stopping: nobody waits for the batch any more.
            if !commands_open && self.stalled.is_some() {
                self.retry_stalled(true)?;
                continue;
            }
            let retry_at = self
                .stalled
                .as_ref()
                .map(|stalled| stalled.retry_at)
                .into_iter()
                .chain(self.unremoved_retry_at)
                .min();
            tokio::select! {
                // Commands first: a stream of appends must never delay the watchdog's stats or the
                // uplink's acknowledgements.
                biased;
                command = commands.recv(), if commands_open => match command {
                    Some(command) => {
                        self.handle(command)?;
                        self.remove_when_quiet();
                    }
                    None => commands_open = false,
                },
                _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                    // Removals first: the room they free is what the waiting readings need.
                    if self.unremoved_retry_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
                        self.acknowledge(&[], crate::clock::now_utc().timestamp_millis())?;
                    }
                    if self.stalled.as_ref().is_some_and(|stalled| stalled.retry_at <= tokio::time::Instant::now()) {
                        self.retry_stalled(false)?;
                    }
                }
                request = appends.recv(), if appends_open && self.stalled.is_none() => match request {
                    Some(request) => {
                        let batch = gather(request, &mut appends);
                        self.append(batch, !commands_open)?;
                        self.remove_when_quiet();
                    }
                    None => appends_open = false,
                },
                _ = tokio::time::sleep_until(self.remove_at.unwrap_or_else(tokio::time::Instant::now)), if self.remove_at.is_some() => {
                    self.remove_acknowledged(REMOVAL_CHUNK)?;
                }
            }
            self.progress.fetch_add(1, Ordering::Relaxed);
            if commands.is_empty() && appends.is_empty() {
                self.outbox.sync_mark();
                self.fold_log_when_idle();
            }
            if let Some(error) = self.outbox.take_mark_error() {
                tracing::error!(%error, "Cannot write the outbox's commit mark; a loss of stored readings may go unreported until it works again.");
            }
            if self.last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
                self.last_housekeeping = Instant::now();
                self.housekeeping();
            }
        }
        if let Err(error) = self.outbox.checkpoint() {
            tracing::debug!(%error, "Final checkpoint failed; SQLite replays the WAL on the next open.");
        }
        Ok(())
    }

    fn handle(&mut self, command: Command) -> Result<(), OutboxError> {
        match command {
            Command::Acknowledge { seqs, now_ms } => self.acknowledge(&seqs, now_ms)?,
            Command::Fetch {
                after,
                limit,
                reply,
            } => {
                let records = self.outbox.fetch_after(after, limit)?;
                self.report_quarantined();
                let _ = reply.send(records);
            }
            Command::UplinkError { message, now_ms } => {
                if let Err(error) = self.outbox.record_uplink_error(&message, now_ms) {
                    self.note_write_failure(&error, "Could not record the uplink error.");
                }
            }
            Command::Counters { deltas } => {
                if let Err(error) = self.outbox.add_counters(&deltas) {
                    self.note_write_failure(&error, "Could not record counters.");
                }
            }
            Command::Stats { reply } => {
                let mut stats = self.outbox.stats()?;
                stats.waiting_for_space_since_ms =
                    self.stalled.as_ref().map(|stalled| stalled.since_ms);
                let _ = reply.send(stats);
            }
            Command::FetchHeld {
                after,
                limit,
                reply,
            } => {
                let records = self.outbox.fetch_held(after, limit)?;
                self.report_quarantined();
                let _ = reply.send(records);
            }
            Command::Release { released, done } => {
                let moved = match self.outbox.release(&released) {
                    Ok(moved) => moved,
                    Err(error @ OutboxError::DiskFull(_)) => {
                        self.note_write_failure(
                            &error,
                            "Could not release held readings; they stay held.",
                        );
                        0
                    }
                    Err(other) => return Err(other),
                };
                if moved > 0 {
                    self.appended.notify_one();
                }
                let _ = done.send(moved);
            }
        }
        Ok(())
    }

    /// A write that is only bookkeeping failed; while the disk is known to be full that was said already.
    fn note_write_failure(&self, error: &OutboxError, what: &str) {
        if self.stalled.is_some() {
            tracing::debug!(%error, "{what}");
        } else {
            tracing::warn!(%error, "{what}");
        }
    }

    fn append(&mut self, batch: Batch, closing: bool) -> Result<(), OutboxError> {
        let mut stalled = Pending {
            piece: batch.records.len().max(1),
            batch,
            outcomes: Vec::new(),
            since: Instant::now(),
            since_ms: crate::clock::now_utc().timestamp_millis(),
            retry_at: tokio::time::Instant::now() + RETRY_FIRST,
            delay: RETRY_FIRST,
            last_log: Instant::now(),
        };
        if self.advance(&mut stalled)? {
            let outcomes = std::mem::take(&mut stalled.outcomes);
            self.finish(stalled.batch, &outcomes);
            return Ok(());
        }
        if closing {
            give_up(&stalled);
            return Ok(());
        }
        tracing::error!(
            records = stalled.batch.records.len() - stalled.outcomes.len(),
            "The outbox disk is full: new readings wait (devices are not read) until space returns; \
             stored readings are still delivered and removed."
        );
        self.stalled = Some(stalled);
        Ok(())
    }

    /// Stores what it can of the waiting batch; when `closing`, what still does not fit is given up.
    fn retry_stalled(&mut self, closing: bool) -> Result<(), OutboxError> {
        let Some(mut stalled) = self.stalled.take() else {
            return Ok(());
        };
        if self.advance(&mut stalled)? {
            tracing::warn!(
                waited_s = stalled.since.elapsed().as_secs(),
                "Disk space is back: the outbox takes readings again."
            );
            let outcomes = std::mem::take(&mut stalled.outcomes);
            self.finish(stalled.batch, &outcomes);
        } else if closing {
            give_up(&stalled);
        } else {
            if stalled.last_log.elapsed() >= STILL_FULL_LOG {
                stalled.last_log = Instant::now();
                tracing::error!(
                    waiting_s = stalled.since.elapsed().as_secs(),
                    "The outbox disk is still full; devices are not read."
                );
            }
            stalled.delay = (stalled.delay * 2).min(RETRY_MAX);
            stalled.retry_at = tokio::time::Instant::now() + stalled.delay;
            self.stalled = Some(stalled);
        }
        Ok(())
    }

    /// Stores as much of the batch as the disk takes; `true` once all of it is stored. On a small or
    /// nearly full filesystem it commits in pieces within the space's commit budget and folds each into
    /// the database at once, so the WAL never holds more than one commit the database has not taken and
    /// the reserve can always give the room that needs.
    fn advance(&mut self, pending: &mut Pending) -> Result<bool, OutboxError> {
        // Acknowledged rows left for a quiet moment take room new readings need once the disk runs low.
        if self.outbox.unremoved() > 0 && self.space.commit_budget().is_some() {
            self.remove_acknowledged(REMOVAL_CHUNK)?;
        }
        loop {
            let rest = &pending.batch.records[pending.outcomes.len()..];
            if rest.is_empty() {
                return Ok(true);
            }
            let budget = self.space.commit_budget();
            let mut piece = pending.piece.min(rest.len());
            if let Some(budget) = budget {
                piece = piece.min(records_within(rest, budget));
                if !self.may_grow(&rest[..piece])? {
                    return Ok(false);
                }
            }
            // The counters go with the first piece stored; a batch given up at shutdown takes them along.
            let counters = if pending.outcomes.is_empty() {
                pending.batch.counters.clone()
            } else {
                Vec::new()
            };
            match self.store(&rest[..piece], &counters) {
                Ok(outcomes) => {
                    pending.outcomes.extend(outcomes);
                    pending.piece = piece.saturating_mul(2);
                    if budget.is_some() {
                        self.make_room();
                    }
                }
                Err(OutboxError::DiskFull(_)) if piece > 1 => pending.piece = piece / 2,
                Err(OutboxError::DiskFull(error)) => {
                    tracing::debug!(%error, "A reading does not fit on the disk.");
                    return Ok(false);
                }
                Err(other) => return Err(other),
            }
        }
    }

    /// Whether a commit of `records` on a nearly full disk can be folded into the database come what may:
    /// the reserve is there to give the room the database grows by, or the database has free pages enough.
    /// Without either, the commit waits: the outbox must not take the room a delete needs.
    fn may_grow(&mut self, records: &[NewRecord]) -> Result<bool, OutboxError> {
        if self.space.ensure_reserve() {
            return Ok(true);
        }
        let needed: u64 = records.iter().map(stored_size).sum();
        Ok(self.outbox.free_bytes()? >= 2 * needed)
    }

    /// Appends; on a full disk makes what room it can without touching readings and tries once more.
    fn store(
        &mut self,
        records: &[NewRecord],
        counters: &[(String, u64)],
    ) -> Result<Vec<Appended>, OutboxError> {
        let result = match self.outbox.append_counted(records, counters) {
            Err(OutboxError::DiskFull(_)) => {
                self.make_room();
                self.outbox.append_counted(records, counters)
            }
            other => return other,
        };
        if matches!(result, Err(OutboxError::DiskFull(_))) {
            // The failed transaction's pages stay in the WAL file, taking the room a delete would need;
            // truncating the WAL gives it back.
            self.checkpoint();
        }
        result
    }

    /// Folds the WAL into the database. A failure on a full disk is expected (the next one folds it); any
    /// other failure (an I/O error) is an SD card going bad, said at warning level, at most once a minute.
    fn checkpoint(&mut self) {
        if let Err(error) = self.outbox.checkpoint() {
            self.checkpoint_failed(&error);
        }
    }

    fn checkpoint_failed(&mut self, error: &OutboxError) {
        if error.is_disk_full() {
            tracing::debug!(%error, "Checkpoint on a full disk failed.");
            return;
        }
        if self
            .checkpoint_warned_at
            .is_none_or(|at| at.elapsed() >= STILL_FULL_LOG)
        {
            self.checkpoint_warned_at = Some(Instant::now());
            tracing::warn!(%error, "Cannot fold the outbox's write-ahead log into its database (an I/O error: check the storage); retrying later.");
        }
    }

    /// Folds the WAL back into the database and truncates it, which returns a WAL that filled the
    /// filesystem to it; when the checkpoint itself needs room (the database file must grow), the reserve
    /// gives it. Then makes the reserve again if it fits.
    fn make_room(&mut self) {
        match self.outbox.checkpoint() {
            Ok(()) => {}
            Err(OutboxError::DiskFull(_)) if self.space.release_reserve() => {
                if let Err(error) = self.outbox.checkpoint() {
                    tracing::error!(%error, "The WAL cannot be folded into the outbox even with the reserve's room.");
                }
            }
            Err(error) => self.checkpoint_failed(&error),
        }
        self.space.ensure_reserve();
    }

    /// Removes acknowledged records, and those a full disk kept from being removed before. On a full
    /// disk each removal must still be written to the WAL first, so the records are removed a few at a
    /// time, with the reserve's room if needed and the WAL folded back after each step. What still cannot
    /// be removed is remembered and retried on a timer; it was delivered, so it is never lost, and the
    /// uplink does not publish it again unless it reconnects first.
    fn acknowledge(&mut self, seqs: &[i64], now_ms: i64) -> Result<(), OutboxError> {
        let mut seqs = seqs.to_vec();
        if !self.unremoved.is_empty() {
            seqs.append(&mut self.unremoved);
        }
        let error = match self.outbox.acknowledge(&seqs, now_ms) {
            Ok(_) => {
                // The retry timer must go with what it retried: left set, it stays due for ever and the
                // serve loop, which looks at it before appends, would never take a reading again.
                if self.unremoved_retry_at.is_some() {
                    self.removed_all();
                }
                // Deferring the removal needs room; on a small or nearly full disk the rows go right away,
                // a chunk per turn, as the room they free is what new readings need.
                if self.space.commit_budget().is_some()
                    || self.outbox.unremoved() > REMOVE_AT_ONCE_ABOVE
                {
                    self.remove_acknowledged(REMOVAL_CHUNK)?;
                }
                return Ok(());
            }
            Err(OutboxError::DiskFull(error)) => error,
            Err(other) => return Err(other),
        };
        tracing::debug!(%error, records = seqs.len(), "Removing delivered readings on a full disk, a few at a time.");
        self.make_room();
        for (index, chunk) in seqs.chunks(ACK_CHUNK).enumerate() {
            self.progress.fetch_add(1, Ordering::Relaxed);
            let mut result = self.outbox.acknowledge(chunk, now_ms);
            if matches!(result, Err(OutboxError::DiskFull(_))) && self.space.release_reserve() {
                result = self.outbox.acknowledge(chunk, now_ms);
            }
            match result {
                Ok(_) => {
                    self.checkpoint();
                }
                Err(OutboxError::DiskFull(error)) => {
                    if self.unremoved_since.is_none() {
                        tracing::error!(%error, "Could not remove delivered readings: the disk is full even without the reserve. They stay until there is room.");
                        self.unremoved_since = Some(Instant::now());
                    }
                    self.unremoved = seqs[index * ACK_CHUNK..].to_vec();
                    self.unremoved_retry_at = Some(tokio::time::Instant::now() + RETRY_MAX);
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
        }
        self.removed_all();
        Ok(())
    }

    /// Acknowledged rows wait in the file until the worker has been quiet a while.
    fn remove_when_quiet(&mut self) {
        if self.outbox.unremoved() > 0 {
            self.remove_at = Some(tokio::time::Instant::now() + REMOVE_WHEN_QUIET_FOR);
        }
    }

    /// Removes up to `limit` acknowledged rows, a chunk per transaction, and schedules the rest right
    /// after (commands still go first). On a small or nearly full disk the chunks are small and the WAL
    /// is folded back after each; a removal the full disk refuses is tried again with the reserve's room,
    /// then later: the rows were acknowledged, durably, so they are never published again meanwhile.
    fn remove_acknowledged(&mut self, limit: u64) -> Result<(), OutboxError> {
        self.remove_at = None;
        let tight = self.space.commit_budget().is_some();
        let chunk = if tight {
            ACK_CHUNK as u64
        } else {
            REMOVAL_CHUNK
        };
        let mut removed = 0;
        while self.outbox.unremoved() > 0 && removed < limit {
            self.progress.fetch_add(1, Ordering::Relaxed);
            let mut result = self.outbox.remove_acknowledged(chunk);
            if matches!(result, Err(OutboxError::DiskFull(_))) {
                self.make_room();
                result = self.outbox.remove_acknowledged(chunk);
                if matches!(result, Err(OutboxError::DiskFull(_))) && self.space.release_reserve() {
                    result = self.outbox.remove_acknowledged(chunk);
                }
            }
            match result {
                Ok(count) => {
                    removed += count.max(1);
                    if tight {
                        self.checkpoint();
                    }
                }
                Err(OutboxError::DiskFull(error)) => {
                    if self.unremoved_since.is_none() {
                        tracing::error!(%error, "Could not remove delivered readings: the disk is full even without the reserve. They stay until there is room.");
                        self.unremoved_since = Some(Instant::now());
                    }
                    self.remove_at = Some(tokio::time::Instant::now() + RETRY_MAX);
                    return Ok(());
                }
                Err(other) => return Err(other),
            }
        }
        if self.outbox.unremoved() > 0 {
            self.remove_at = Some(tokio::time::Instant::now());
        } else if self.unremoved.is_empty() {
            self.removed_all();
        }
        Ok(())
    }

    /// Nothing delivered is left unremoved: the retry timer stops, and the reserve is made again.
    fn removed_all(&mut self) {
        if let Some(since) = self.unremoved_since.take() {
            tracing::warn!(
                waited_s = since.elapsed().as_secs(),
                "Delivered readings removed now that there is room."
            );
        }
        self.unremoved_retry_at = None;
        self.space.ensure_reserve();
    }

    /// Damaged records are never published; each is named (by its place and id, never its contents).
    fn report_quarantined(&mut self) {
        let damaged = self.outbox.take_quarantined();
        if !damaged.is_empty() {
            self.quarantined.notify_one();
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

    fn finish(&mut self, batch: Batch, outcomes: &[Appended]) {
        report_append(outcomes, self.outbox.pending());
        if outcomes.contains(&Appended::Stored) {
            self.appended.notify_one();
        }
        for (range, done) in batch.waiters {
            if let Some(done) = done {
                let _ = done.send(outcomes[range].to_vec());
            }
        }
    }

    /// Prunes the dedup memory only by a trusted clock: a hub that booted on an old saved time would
    /// otherwise forget ids early (or, ahead, keep them forever) and a device's replay would be queued again.
    /// Folds the write-ahead log into the database and empties it once the queues fall idle, at most
    /// every `outbox.fold_log_seconds`. SQLite forgets every commit behind a damaged log frame, so what
    /// sits only in the log is what damage to it can cost; this keeps that to the last second of commits
    /// at a device's pace, and to at most `wal_autocheckpoint` pages in a sustained burst (which never
    /// falls idle).
    fn fold_log_when_idle(&mut self) {
        let Some(every) = self.fold_log_after else {
            return;
        };
        if self.last_fold.elapsed() < every || self.stalled.is_some() {
            return;
        }
        self.last_fold = Instant::now();
        if self.outbox.log_bytes() == 0 {
            return;
        }
        self.checkpoint();
    }

    fn housekeeping(&mut self) {
        if let Some(now_ms) = (self.trusted_now_ms)() {
            match self
                .outbox
                .prune_delivered(now_ms - self.retention_ms, now_ms)
            {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "Forgot old delivered reading ids."),
                Err(error) => {
                    self.note_write_failure(&error, "Could not prune delivered reading ids.")
                }
            }
        }
        if self.outbox.pending() == 0 {
            self.checkpoint();
        }
        self.space.ensure_reserve();
    }
}

/// Group commit: the request and every append already queued behind it, up to [`MAX_GROUP`] records.
fn gather(first: AppendRequest, appends: &mut mpsc::Receiver<AppendRequest>) -> Batch {
    let mut counters = first.counters;
    let mut batch = Batch {
        waiters: vec![(0..first.records.len(), first.done)],
        records: first.records,
        counters: Vec::new(),
    };
    while batch.records.len() < MAX_GROUP {
        let Ok(request) = appends.try_recv() else {
            break;
        };
        let start = batch.records.len();
        batch.records.extend(request.records);
        counters.extend(request.counters);
        batch
            .waiters
            .push((start..batch.records.len(), request.done));
    }
    batch.counters = sum_counters(counters);
    batch
}

/// One delta per counter name: a group commit gathers many appends, each with its own deltas.
fn sum_counters(deltas: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let mut sums = std::collections::BTreeMap::new();
    for (name, delta) in deltas {
        *sums.entry(name).or_insert(0) += delta;
    }
    sums.into_iter().collect()
}

/// How many of `records`, at least one, fit in `budget` bytes.
fn records_within(records: &[NewRecord], budget: u64) -> usize {
    let mut total = 0;
    let count = records
        .iter()
        .take_while(|record| {
            total += stored_size(record);
            total <= budget
        })
        .count();
    count.max(1)
}

/// About how many bytes a record takes in the database: its payload, its key twice (the record and the
/// dedup index), its label and row overhead.
fn stored_size(record: &NewRecord) -> u64 {
    (record.payload.len() + 2 * record.key.len() + record.label.len() + 64) as u64
}

/// The daemon is stopping and the disk is still full: the records not stored yet never will be, and
/// nobody was told they were (a waiter sees the worker gone). Devices that keep their records send them
/// again.
fn give_up(stalled: &Pending) {
    tracing::error!(
        dropped = stalled.batch.records.len() - stalled.outcomes.len(),
        "Stopping with the disk full: readings that were never stored are dropped."
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(payload_bytes: usize) -> NewRecord {
        NewRecord {
            key: "k".repeat(36),
            label: "pulse_oximetry".to_string(),
            format: 1,
            payload: vec![b'x'; payload_bytes],
            created_at_ms: 0,
            held: false,
        }
    }

    #[test]
    fn a_commit_budget_takes_whole_records_and_at_least_one() {
        // Each record is about its payload plus 150 bytes of key, label and row overhead.
        let records: Vec<NewRecord> = (0..10).map(|_| record(850)).collect();
        for (budget, expected) in [
            (0, 1),
            (999, 1),
            (1_000, 1),
            (2_000, 2),
            (5_500, 5),
            (1_000_000, 10),
        ] {
            assert_eq!(
                records_within(&records, budget),
                expected,
                "budget {budget}"
            );
        }
        assert_eq!(records_within(&[record(1_000_000)], 32 * 1024), 1);
    }

    /// The pipeline saves a download checkpoint after a durable append: that must cover every append it
    /// queued before, although stats travel on the other queue and could overtake them.
    #[tokio::test]
    async fn a_durable_append_returns_only_after_every_append_queued_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(
            &dir.path().join("outbox.db"),
            crate::outbox::OutboxOptions {
                max_pending: 100_000,
            },
            0,
        )
        .unwrap();
        let (handle, _worker) = spawn_worker(outbox, Space::new(dir.path()), 400, None, || None);
        let producer = {
            let handle = handle.clone();
            tokio::spawn(async move {
                for n in 0..200 {
                    let records = (0..50)
                        .map(|i| NewRecord {
                            key: format!("{n}-{i}"),
                            ..record(600)
                        })
                        .collect();
                    handle.append(records).await.unwrap();
                }
            })
        };
        producer.await.unwrap();
        let durable = handle.append_durable(Vec::new()).await.unwrap();
        assert!(durable.is_empty());
        let stats = handle.stats().await.unwrap();
        assert_eq!(stats.pending, 10_000);
        assert_eq!(stats.waiting_for_space_since_ms, None);
        assert!(dir.path().join(crate::outbox::space::RESERVE_FILE).exists());
    }
}

//! What the device tasks (the serial device task, the Bluetooth sessions and advertisement decoding)
//! share when they hand a pipeline's output to the outbox: how long records may still wait for room once
//! the daemon is stopping, the periodic counter flush, and when each device was last heard.

use std::time::Duration;

use tokio::sync::watch;

use crate::outbox::worker::WorkerGone;
use crate::outbox::OutboxHandle;
use crate::pipeline::Decoding;

/// When each serial device (by device id) last sent bytes, on a trusted hub clock: for the fleet twin.
pub type DeviceActivity = std::sync::Arc<
    std::sync::Mutex<std::collections::HashMap<String, chrono::DateTime<chrono::Utc>>>,
>;

/// Once the daemon is stopping, how long records may still wait for room in the outbox.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// How long a task's records may still wait for room in the outbox once the daemon is stopping: one
/// [`SHUTDOWN_GRACE`] from the moment it saw the stop, for all its waits together, so a full disk cannot
/// hold up the shutdown however many records are still queued in front of the task.
#[derive(Default)]
pub struct StopGrace {
    deadline: Option<tokio::time::Instant>,
    /// Records given up when the grace ran out.
    pub dropped: usize,
}

impl StopGrace {
    /// Waits for `handed` (records going into the outbox); `None` when the grace ran out first: the records
    /// were not stored.
    pub async fn until_stored<T>(
        &mut self,
        handed: impl std::future::Future<Output = T>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<T> {
        tokio::pin!(handed);
        let deadline = match self.deadline {
            Some(deadline) => deadline,
            None => {
                tokio::select! {
                    result = &mut handed => return Some(result),
                    _ = shutdown.wait_for(|stop| *stop) => {}
                }
                *self
                    .deadline
                    .insert(tokio::time::Instant::now() + SHUTDOWN_GRACE)
            }
        };
        // An outbox with room still takes the records after the deadline: the inner future is polled first.
        tokio::time::timeout_at(deadline, handed).await.ok()
    }
}

/// Writes the counters `decoding` gathered since the last flush to the outbox's statistics.
pub async fn flush_counters(
    decoding: &mut Decoding,
    outbox: &OutboxHandle,
) -> Result<(), WorkerGone> {
    let deltas = decoding.flush_counters();
    if deltas.is_empty() {
        return Ok(());
    }
    outbox.add_counters(deltas).await
}

//! The serial device task: drives one device's [`Decoding`] from its port's events, hands the records to
//! the outbox, passes the decoder's commands to the port, and loads and saves the download checkpoint.
//!
//! It polls the decoder twice a second and after every chunk, but only when no read bytes wait to be fed,
//! so bytes queued behind a slow disk never look like a silent device.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{DeviceCommand, PortEvent};
use crate::decode::{CommandPurpose, HostCommand};
use crate::hand_over::{flush_counters, StopGrace};
use crate::outbox::{NewRecord, OutboxHandle};
use crate::pipeline::{Decoding, DeviceSettings};
use crate::state::checkpoints::CheckpointFile;

/// How often counters are written to the outbox's statistics.
const COUNTER_FLUSH: Duration = Duration::from_secs(1);
/// How often the decoder is asked whether the device needs a command (a keep-alive, a timed-out question).
const DIALOG_POLL: Duration = Duration::from_millis(500);

/// Where a device's checkpoint is kept, and whether saving it is failing (reported once, and once again
/// when it works again).
struct Checkpoints {
    /// `None` keeps the checkpoint for the life of the task only.
    file: Option<CheckpointFile>,
    failing: bool,
}

impl Checkpoints {
    /// The saved checkpoint; one that cannot be read is reported and the device's stored data fetched again.
    fn load(&self, device: &str) -> Option<String> {
        match self.file.as_ref()?.load() {
            Ok(checkpoint) => checkpoint,
            Err(error) => {
                tracing::warn!(%device, %error, "Cannot read the download checkpoint; the device's stored data will be fetched again.");
                None
            }
        }
    }

    /// Saves `checkpoint` and tells `decoding` it is kept; a failed save is retried the next time.
    fn save(&mut self, decoding: &mut Decoding, checkpoint: String) {
        let device = decoding.settings().device.id.clone();
        let Some(file) = &self.file else {
            decoding.checkpoint_kept(checkpoint);
            return;
        };
        match file.save(&checkpoint) {
            Ok(()) => {
                if self.failing {
                    tracing::info!(%device, "Download checkpoint saved again.");
                }
                self.failing = false;
                decoding.checkpoint_kept(checkpoint);
            }
            Err(error) => {
                if !self.failing {
                    tracing::warn!(%device, %error, "Cannot save the download checkpoint; will retry. Until then a reconnect fetches the stored data again (with the same reading ids).");
                }
                self.failing = true;
            }
        }
    }
}

/// Runs until the transport's sender is gone; `shutdown` only limits how long records may wait for the
/// outbox. `checkpoints` is where the decoder's download checkpoint is kept (`None`: for the life of the
/// task only). Commands for the device go to the transport on `commands`, marked with the connection they
/// are for.
pub async fn run_device(
    settings: DeviceSettings,
    checkpoints: Option<CheckpointFile>,
    mut events: mpsc::Receiver<PortEvent>,
    commands: mpsc::Sender<DeviceCommand>,
    outbox: OutboxHandle,
    activity: crate::hand_over::DeviceActivity,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    let mut checkpoints = Checkpoints {
        file: checkpoints,
        failing: false,
    };
    let resumed = checkpoints.load(&settings.device.id);
    let device_id = settings.device.id.clone();
    let mut decoding = Decoding::new(settings, resumed);
    let mut flush = crate::clock::every(COUNTER_FLUSH);
    let mut dialog = crate::clock::every(DIALOG_POLL);
    let mut connection = None;
    let mut grace = StopGrace::default();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(PortEvent::Opened { connection: opened, identity }) => {
                    connection = Some(opened);
                    decoding.opened(identity);
                }
                Some(PortEvent::Bytes { bytes, received }) => {
                    if received.clock.is_trusted() {
                        let mut heard = activity.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                        heard.insert(device_id.clone(), received.wall);
                    }
                    let records: Vec<NewRecord> = decoding.feed(&bytes, &received).into_iter().flat_map(|(records, _)| records).collect();
                    hand_over(&mut decoding, &mut checkpoints, &outbox, records, &mut shutdown, &mut grace).await?;
                }
                Some(PortEvent::Closed { .. }) => {
                    connection = None;
                    decoding.closed();
                }
                None => break,
            },
            _ = flush.tick() => flush_counters(&mut decoding, &outbox).await?,
            _ = dialog.tick(), if connection.is_some() => {}
            _ = shutdown.changed() => {}
        }
        // The dialog's time-outs are judged only once every byte read so far was fed: bytes still queued
        // (behind a slow disk, say) are not a silent device.
        let Some(connection) = connection.filter(|_| events.is_empty()) else {
            continue;
        };
        let (records, to_send) = decoding.poll(&crate::clock::hub_now());
        let records = records
            .into_iter()
            .flat_map(|(records, _)| records)
            .collect();
        hand_over(
            &mut decoding,
            &mut checkpoints,
            &outbox,
            records,
            &mut shutdown,
            &mut grace,
        )
        .await?;
        for command in to_send {
            pass_on(
                &decoding.settings().device.id,
                connection,
                command,
                &commands,
            );
        }
    }
    if grace.dropped > 0 {
        tracing::warn!(
            device = %decoding.settings().device.id,
            records = grace.dropped,
            "Stopped while the outbox could not take more: readings not yet stored were dropped (a device that keeps its records sends them again)."
        );
    }
    flush_counters(&mut decoding, &outbox).await
}

/// Hands records to the outbox and then saves the decoder's checkpoint. When the checkpoint moved (and is
/// kept in a file), it waits until everything this task handed over is durable first, so the checkpoint
/// never covers a reading the outbox could still lose. While the outbox waits for disk space this waits
/// too, and the device is not read meanwhile; once the daemon is stopping it waits out the [`StopGrace`]
/// at most and then drops the records, which were never durable (the device's to send again).
async fn hand_over(
    decoding: &mut Decoding,
    checkpoints: &mut Checkpoints,
    outbox: &OutboxHandle,
    records: Vec<NewRecord>,
    shutdown: &mut watch::Receiver<bool>,
    grace: &mut StopGrace,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    let moved = decoding.checkpoint_moved();
    let durable = moved.is_some() && checkpoints.file.is_some();
    if records.is_empty() && !durable {
        if let Some(checkpoint) = moved {
            checkpoints.save(decoding, checkpoint);
        }
        return Ok(());
    }
    let count = records.len();
    // Counted with the records they count, so a kill cannot part them (nor a shutdown that drops them).
    let counters = decoding.take_counter_deltas();
    let handed = async {
        if durable {
            outbox
                .append_durable_counted(records, counters)
                .await
                .map(|_| ())
        } else {
            outbox.append_counted(records, counters).await
        }
    };
    let stored = grace.until_stored(handed, shutdown).await;
    match stored {
        Some(result) => {
            result?;
            if let Some(checkpoint) = moved {
                checkpoints.save(decoding, checkpoint);
            }
        }
        None => grace.dropped += count,
    }
    Ok(())
}

/// Hands a command to the transport without waiting: the transport may itself be waiting for this task to
/// take its bytes, and a dialog recovers from a lost command by its own time-outs.
fn pass_on(
    device: &str,
    connection: u64,
    command: HostCommand,
    commands: &mpsc::Sender<DeviceCommand>,
) {
    match command.purpose {
        CommandPurpose::RestartStream => {
            tracing::info!(%device, "The device stopped sending; starting its stream again.")
        }
        purpose => {
            tracing::debug!(%device, ?purpose, command = %hex::encode(&command.bytes), "Command for the device.")
        }
    }
    if let Err(error) = commands.try_send(DeviceCommand {
        connection,
        bytes: command.bytes,
    }) {
        tracing::debug!(%device, %error, "Could not pass a command to the transport.");
    }
}

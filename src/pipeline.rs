//! The device pipeline: transport bytes → protocol decoder → spot filter → payload → outbox records.
//!
//! One pipeline per device. It owns the decoder state for the current connection (a reconnect starts a
//! fresh decoder, so half a frame from before an unplug never glues onto bytes after it), counts rejected
//! frames, and hands finished records to the outbox worker, which makes them durable.

use std::time::Duration;

use chrono::Local;
use tokio::sync::{mpsc, watch};

use crate::clock::HubNow;
use crate::decode::{
    CommandPurpose, DecodeContext, DecodeEvent, FrameError, HostCommand, Protocol,
};
use crate::download_checkpoints::CheckpointFile;
use crate::measurement_time::DeviceClockCheck;
use crate::outbox::{NewRecord, OutboxHandle};
use crate::payload::{self, DeviceInfo};
use crate::reading::Reading;
use crate::serial::{DeviceCommand, PortEvent};
use crate::spot::{SpotFilter, SpotRule};

/// How often counters are written to the outbox's statistics.
const COUNTER_FLUSH: Duration = Duration::from_secs(1);
/// How often the decoder is asked whether the device needs a command (a keep-alive, a timed-out question).
const DIALOG_POLL: Duration = Duration::from_millis(500);
/// Once the daemon is stopping, how long records may still wait for room in the outbox.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Who a pipeline decodes for.
pub struct DeviceSettings {
    pub hub_id: String,
    pub device: DeviceInfo,
    pub protocol: Protocol,
    pub spot: SpotRule,
    /// Where the decoder's download checkpoint is kept; `None` keeps it for the life of the pipeline only.
    pub checkpoints: Option<CheckpointFile>,
}

#[derive(Default)]
struct Counters {
    frames_rejected: u64,
    bytes_skipped: u64,
    readings: u64,
    readings_withheld: u64,
    /// Rejected frames not yet mentioned in the log (a warning at most once per flush).
    rejections_unlogged: u64,
}

/// The I/O-free part of a pipeline: decoder, spot filter and counters for one device channel (a serial
/// port, or one characteristic of a Bluetooth device). Transports feed it; it hands back outbox records.
pub struct Decoding {
    settings: DeviceSettings,
    decoder: Box<dyn crate::decode::StreamDecoder>,
    spot: SpotFilter,
    counters: Counters,
    /// The device clock read in this session (a coincident time stamp), if the transport read one.
    device_clock: Option<DeviceClockCheck>,
    /// The decoder's checkpoint as last saved (or loaded).
    checkpoint: Option<String>,
    /// Saving the checkpoint failed and was reported; the next success is reported too.
    checkpoint_failing: bool,
}

impl Decoding {
    pub fn new(settings: DeviceSettings) -> Decoding {
        let checkpoint = settings
            .checkpoints
            .as_ref()
            .and_then(|file| match file.load() {
                Ok(checkpoint) => checkpoint,
                Err(error) => {
                    tracing::warn!(device = %settings.device.id, %error, "Cannot read the download checkpoint; the device's stored data will be fetched again.");
                    None
                }
            });
        let mut decoding = Decoding {
            decoder: settings.protocol.new_decoder(),
            spot: SpotFilter::new(settings.spot),
            settings,
            counters: Counters::default(),
            device_clock: None,
            checkpoint,
            checkpoint_failing: false,
        };
        decoding.resume_decoder();
        decoding
    }

    fn resume_decoder(&mut self) {
        if let Some(checkpoint) = &self.checkpoint {
            self.decoder.resume(checkpoint);
        }
    }

    /// What the device should be sent now, and the records the passing of time settled (a download that
    /// ended with a pause). Call it only when every byte read so far was fed.
    pub fn poll(&mut self, now: &HubNow) -> (Vec<(NewRecord, Reading)>, Vec<HostCommand>) {
        let mut polled = self.decoder.poll(now.wall, now.clock);
        self.received(&mut polled.events, now);
        let records = collect(
            &self.settings,
            polled.events,
            &mut self.spot,
            &mut self.counters,
        );
        (records, polled.commands)
    }

    /// Saves the decoder's checkpoint when it moved. Call it only after the records decoded so far were
    /// handed to the outbox, so the checkpoint never covers a reading the outbox does not have.
    pub fn save_checkpoint(&mut self) {
        let Some(text) = self
            .decoder
            .checkpoint()
            .filter(|current| Some(current) != self.checkpoint.as_ref())
        else {
            return;
        };
        let Some(file) = &self.settings.checkpoints else {
            self.checkpoint = Some(text);
            return;
        };
        match file.save(&text) {
            Ok(()) => {
                if self.checkpoint_failing {
                    tracing::info!(device = %self.settings.device.id, "Download checkpoint saved again.");
                }
                self.checkpoint_failing = false;
                self.checkpoint = Some(text);
            }
            Err(error) => {
                if !self.checkpoint_failing {
                    tracing::warn!(device = %self.settings.device.id, %error, "Cannot save the download checkpoint; will retry. Until then a reconnect fetches the stored data again (with the same reading ids).");
                }
                self.checkpoint_failing = true;
            }
        }
    }

    /// Whether the decoder's checkpoint moved since it was last saved.
    pub fn checkpoint_moved(&self) -> bool {
        self.settings.checkpoints.is_some()
            && self
                .decoder
                .checkpoint()
                .is_some_and(|current| Some(&current) != self.checkpoint.as_ref())
    }

    /// The device clock the transport read in this session; the time model judges the session's records
    /// by it, and every reading of the session carries it.
    pub fn device_clock_read(&mut self, check: Option<DeviceClockCheck>) {
        self.device_clock = check;
    }

    /// Notes on every decoded reading what the hub knew when it received it: whether its clock was
    /// trusted, the instant on the boot-time clock, and the device clock read in the session.
    fn received(&self, events: &mut [DecodeEvent], now: &HubNow) {
        for event in events {
            if let DecodeEvent::Reading(reading) = event {
                reading.hub_clock = now.clock;
                reading.received_since_boot = Some(now.boot_instant_at(reading.received_at));
                reading.device_clock = self.device_clock;
            }
        }
    }

    pub fn settings(&self) -> &DeviceSettings {
        &self.settings
    }

    /// A new connection: half a frame from before must not glue onto bytes after it.
    pub fn opened(&mut self) {
        self.decoder = self.settings.protocol.new_decoder();
        self.resume_decoder();
        self.spot = SpotFilter::new(self.settings.spot);
    }

    /// Decodes bytes; returns the records to make durable and the readings they came from.
    pub fn bytes(&mut self, bytes: &[u8], now: &HubNow) -> Vec<(NewRecord, Reading)> {
        let decoded = self.decode(bytes, now);
        self.records(decoded)
    }

    /// The first half of [`Decoding::bytes`], for a transport whose device dialog sees the decoded events
    /// before they become records (a glucose record waiting for its context): decodes bytes into events
    /// that carry what the hub knew when it received them.
    pub fn decode(&mut self, bytes: &[u8], now: &HubNow) -> Vec<DecodeEvent> {
        let mut decoded = self.decoder.feed(
            bytes,
            &DecodeContext {
                received_at: now.wall,
                time_zone: &Local,
                hub_clock: now.clock,
                device_clock: self.device_clock.as_ref(),
            },
        );
        self.received(&mut decoded, now);
        decoded
    }

    /// The second half of [`Decoding::bytes`]: decoded events through the spot filter into records,
    /// counting what is rejected or withheld.
    pub fn records(&mut self, events: Vec<DecodeEvent>) -> Vec<(NewRecord, Reading)> {
        collect(&self.settings, events, &mut self.spot, &mut self.counters)
    }

    /// The connection ended: a frame left unfinished is counted.
    pub fn closed(&mut self) {
        if let Some(error) = self.decoder.finish() {
            count_rejection(&self.settings, &error, &mut self.counters);
        }
    }

    /// The counters gathered since they were last taken, as outbox counter deltas, to be committed with the
    /// records they count ([`OutboxHandle::append_counted`]) so that no kill can part them.
    pub fn take_counter_deltas(&mut self) -> Vec<(String, u64)> {
        counter_deltas(&self.settings, &mut self.counters)
    }

    /// Writes the counters gathered since the last flush to the outbox's statistics.
    pub async fn flush_counters(
        &mut self,
        outbox: &OutboxHandle,
    ) -> Result<(), crate::outbox::worker::WorkerGone> {
        flush_counters(&self.settings, outbox, &mut self.counters).await
    }
}

/// Runs until the transport's sender is gone; `shutdown` only limits how long records may wait for the
/// outbox.
/// Commands for the device go to the transport on `commands`, marked with the connection they are for.
pub async fn run_device(
    settings: DeviceSettings,
    mut events: mpsc::Receiver<PortEvent>,
    commands: mpsc::Sender<DeviceCommand>,
    outbox: OutboxHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    let mut decoding = Decoding::new(settings);
    let mut flush = tokio::time::interval(COUNTER_FLUSH);
    let mut dialog = tokio::time::interval(DIALOG_POLL);
    let mut connection = None;
    let mut grace = StopGrace::default();
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(PortEvent::Opened { connection: opened }) => {
                    connection = Some(opened);
                    decoding.opened();
                }
                Some(PortEvent::Bytes { bytes, received }) => {
                    let records: Vec<NewRecord> = decoding.bytes(&bytes, &received).into_iter().map(|(record, _)| record).collect();
                    hand_over(&mut decoding, &outbox, records, &mut shutdown, &mut grace).await?;
                }
                Some(PortEvent::Closed { .. }) => {
                    connection = None;
                    decoding.closed();
                }
                None => break,
            },
            _ = flush.tick() => decoding.flush_counters(&outbox).await?,
            _ = dialog.tick(), if connection.is_some() => {}
            _ = shutdown.changed() => {}
        }
        // The dialog's time-outs are judged only once every byte read so far was fed: bytes still queued
        // (behind a slow disk, say) are not a silent device.
        let Some(connection) = connection.filter(|_| events.is_empty()) else {
            continue;
        };
        let (records, to_send) = decoding.poll(&crate::clock::hub_now());
        let records = records.into_iter().map(|(record, _)| record).collect();
        hand_over(&mut decoding, &outbox, records, &mut shutdown, &mut grace).await?;
        for command in to_send {
            pass_on(&decoding.settings.device.id, connection, command, &commands);
        }
    }
    if grace.dropped > 0 {
        tracing::warn!(
            device = %decoding.settings.device.id,
            records = grace.dropped,
            "Stopped while the outbox could not take more: readings not yet stored were dropped (a device that keeps its records sends them again)."
        );
    }
    decoding.flush_counters(&outbox).await
}

/// Hands records to the outbox and then saves the decoder's checkpoint. When the checkpoint moved, it
/// waits until everything this pipeline handed over is durable first, so the checkpoint never covers a
/// reading the outbox could still lose. While the outbox waits for disk space this waits too, and the
/// device is not read meanwhile; once the daemon is stopping it waits out the [`StopGrace`] at most and
/// then drops the records, which were never durable (the device's to send again).
async fn hand_over(
    decoding: &mut Decoding,
    outbox: &OutboxHandle,
    records: Vec<NewRecord>,
    shutdown: &mut watch::Receiver<bool>,
    grace: &mut StopGrace,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    let durable = decoding.checkpoint_moved();
    if records.is_empty() && !durable {
        decoding.save_checkpoint();
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
            decoding.save_checkpoint();
        }
        None => grace.dropped += count,
    }
    Ok(())
}

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

fn collect(
    settings: &DeviceSettings,
    decoded: Vec<DecodeEvent>,
    spot: &mut SpotFilter,
    counters: &mut Counters,
) -> Vec<(NewRecord, Reading)> {
    let mut records = Vec::new();
    for (index, event) in decoded.into_iter().enumerate() {
        match event {
            DecodeEvent::Reading(reading) if !reading.is_clinical() => {
                counters.readings_withheld += 1;
                tracing::debug!(
                    device = %settings.device.id,
                    flags = ?reading.flags,
                    "Withheld a reading that is not patient data."
                );
            }
            DecodeEvent::Reading(reading) => {
                let reading = if settings.protocol.is_continuous() {
                    spot.push(reading)
                } else {
                    Some(reading)
                };
                if let Some(reading) = reading {
                    counters.readings += 1;
                    records.push((record_of(settings, &reading, index), reading));
                }
            }
            DecodeEvent::Rejected(error) => count_rejection(settings, &error, counters),
        }
    }
    records
}

fn record_of(settings: &DeviceSettings, reading: &Reading, index: usize) -> NewRecord {
    let id = payload::reading_id(&settings.device.id, reading, index);
    tracing::debug!(device = %settings.device.id, %id, kind = reading.kind.as_str(), "Reading decoded.");
    NewRecord {
        payload: payload::to_json(&settings.hub_id, &id, &settings.device, reading),
        key: id,
        label: reading.kind.as_str().to_string(),
        format: payload::OUTBOX_FORMAT,
        created_at_ms: reading.received_at.timestamp_millis(),
        held: payload::held(reading).is_some(),
    }
}

fn count_rejection(settings: &DeviceSettings, error: &FrameError, counters: &mut Counters) {
    match error {
        FrameError::Garbage { count } => counters.bytes_skipped += *count as u64,
        other => {
            counters.frames_rejected += 1;
            counters.rejections_unlogged += 1;
            // The frame bytes may hold a measurement, so they are logged at debug level only.
            tracing::debug!(device = %settings.device.id, error = %other, "Rejected a malformed frame.");
        }
    }
}

async fn flush_counters(
    settings: &DeviceSettings,
    outbox: &OutboxHandle,
    counters: &mut Counters,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    if counters.rejections_unlogged > 0 {
        tracing::warn!(device = %settings.device.id, count = counters.rejections_unlogged, "Skipped malformed frames.");
        counters.rejections_unlogged = 0;
    }
    let deltas = counter_deltas(settings, counters);
    if deltas.is_empty() {
        return Ok(());
    }
    outbox.add_counters(deltas).await
}

fn counter_deltas(settings: &DeviceSettings, counters: &mut Counters) -> Vec<(String, u64)> {
    let taken = Counters {
        rejections_unlogged: counters.rejections_unlogged,
        ..std::mem::take(counters)
    };
    counters.rejections_unlogged = taken.rejections_unlogged;
    let device = &settings.device.id;
    let mut deltas = Vec::new();
    for (name, value) in [
        ("frames_rejected", taken.frames_rejected),
        ("bytes_skipped", taken.bytes_skipped),
        ("readings", taken.readings),
        ("readings_withheld", taken.readings_withheld),
    ] {
        if value > 0 {
            deltas.push((name.to_string(), value));
            deltas.push((format!("{name}.{device}"), value));
        }
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Transport;
    use crate::measurement_time::HubClock;

    fn test_now(wall: chrono::DateTime<chrono::Utc>) -> HubNow {
        HubNow {
            wall,
            boot: crate::reading::BootInstant {
                boot_id: "test-boot".into(),
                since_boot: std::time::Duration::from_secs(100),
            },
            clock: HubClock::Synchronized,
        }
    }

    /// A Contec recording downloaded while the hub clock was unsynchronised and published by a poll after NTP
    /// synchronised it is judged by the clock's trust at that poll, not at the last bytes fed.
    #[test]
    fn a_recording_published_after_the_clock_is_trusted_is_judged_by_the_trusted_clock() {
        let at = |s: i64, clock| HubNow {
            wall: test_now("2024-03-15T12:00:00Z".parse().unwrap()).wall
                + chrono::TimeDelta::seconds(s),
            clock,
            ..test_now("2024-03-15T12:00:00Z".parse().unwrap())
        };
        let bytes = |hex: &str| hex::decode(hex.replace(' ', "")).unwrap();
        let mut decoding = Decoding::new(DeviceSettings {
            hub_id: "hub".into(),
            device: DeviceInfo {
                id: "serial:contec".into(),
                transport: "serial",
                protocol: "contec-cms50",
                manufacturer: None,
                model: None,
                serial_number: None,
            },
            protocol: Protocol::ContecCms50,
            spot: SpotRule::default(),
            checkpoints: None,
        });
        let untrusted = HubClock::Unsynchronized;
        let mut records = Vec::new();
        records.extend(decoding.poll(&at(0, untrusted)).0);
        // One session, starting 2024-03-16 08:00 (20 h after the hub's time), 24 stored bytes.
        let answers =
            "0A 80 80 81 07 80 80 80 94 98 83 90 12 80 80 80 88 80 80 80 08 80 80 80 98 80 80 80";
        records.extend(decoding.bytes(&bytes(answers), &at(0, untrusted)));
        records.extend(decoding.poll(&at(0, untrusted)).0);
        records.extend(decoding.bytes(
            &bytes(&["0F 80 DE C2 DE C2 DE C2"; 4].join(" ")),
            &at(1, untrusted),
        ));
        records.extend(decoding.poll(&at(1, untrusted)).0);
        let trusted = at(3, HubClock::Synchronized);
        records.extend(decoding.poll(&trusted).0);
        // The trusted clock shows the recording would end in the hub's future: it is not published at all.
        assert_eq!(
            records.len(),
            0,
            "{:?}",
            records
                .iter()
                .map(|(_, r)| r.measured_at)
                .collect::<Vec<_>>()
        );
        for (record, reading) in &records {
            let ahead = reading.measured_at.signed_duration_since(trusted.wall);
            assert!(
                !(reading.hub_clock.is_trusted()
                    && !record.held
                    && ahead > crate::measurement_time::MAX_AHEAD),
                "published as {:?}, measured_at {} is {} h after the trusted hub clock",
                reading.hub_clock,
                reading.measured_at,
                ahead.num_hours()
            );
        }
    }

    /// Random bytes (what a device at another line speed, or line noise, looks like) fed through each serial
    /// protocol's decoder and spot filter must never produce a record for the backend.
    #[test]
    fn ten_megabytes_of_random_bytes_never_become_a_reading() {
        let megabytes: usize = std::env::var("VITALSD_NOISE_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let protocols = Protocol::ALL
            .into_iter()
            .filter(|p| p.transport() == Transport::Serial || *p == Protocol::Berrymed);
        for (round, protocol) in protocols.enumerate() {
            let mut decoding = Decoding::new(DeviceSettings {
                hub_id: "hub-test".into(),
                device: DeviceInfo {
                    id: "serial:noise".into(),
                    transport: "serial",
                    protocol: protocol.name(),
                    manufacturer: None,
                    model: None,
                    serial_number: None,
                },
                protocol,
                spot: SpotRule::default(),
                checkpoints: None,
            });
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (round as u64 + 1);
            let mut at: chrono::DateTime<chrono::Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
            let mut chunk = vec![0u8; 4096];
            let mut records = 0;
            for _ in 0..(megabytes * 1024 * 1024 / chunk.len()) {
                for byte in &mut chunk {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *byte = seed as u8;
                }
                // Chunks arrive about as fast as a 115200-baud line delivers them.
                at += chrono::TimeDelta::milliseconds(350);
                let now = test_now(at);
                records += decoding.bytes(&chunk, &now).len();
                // The dialog runs too, so noise that looks like answers may move it (a Contec download).
                records += decoding.poll(&now).0.len();
            }
            decoding.closed();
            assert_eq!(records, 0, "{} turned noise into readings", protocol.name());
        }
    }
}

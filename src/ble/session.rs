//! One connection to one bound Bluetooth device: connect, discover, read Device Information once, set
//! the device clock (recording its offset first), subscribe with the notification stream already open,
//! make every record durable as it arrives, fetch glucose records through the RACP, and end when the
//! device is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use uuid::Uuid;

use super::profile::{self, measurement_protocol};
use crate::bound_devices::{BoundDevices, DeviceStrings};
use crate::decode::current_time;
use crate::decode::glucose;
use crate::measurement_time::DeviceClockCheck;
use crate::outbox::OutboxHandle;
use crate::pipeline::{Decoding, StopGrace};
use crate::spot::SpotRule;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A device that sends nothing for this long is done with us; the hub lets go of the link.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a glucose meter may take to answer a RACP request.
const RACP_TIMEOUT: Duration = Duration::from_secs(30);

pub type SharedDevices = Arc<Mutex<BoundDevices>>;

pub struct SessionSettings {
    pub hub_id: String,
    pub spot: SpotRule,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The device disconnected or went quiet after delivering what it had.
    Finished { readings: usize },
    /// The daemon is stopping.
    Shutdown,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("Bluetooth: {0}")]
    Ble(#[from] btleplug::Error),
    #[error("connection attempt timed out after {0:?}")]
    Timeout(Duration),
    #[error("the device refused our keys: its bond is lost")]
    BondLost,
    #[error("the device requires pairing: {0}")]
    NeedsPairing(String),
    #[error("the outbox worker is gone")]
    OutboxGone,
}

impl From<crate::outbox::worker::WorkerGone> for SessionError {
    fn from(_: crate::outbox::worker::WorkerGone) -> Self {
        SessionError::OutboxGone
    }
}

/// Sorts a btleplug error: a refused key means a lost bond, a refused subscription means no pairing.
fn classify(error: btleplug::Error) -> SessionError {
    let text = error.to_string();
    if super::bluez::means_lost_bond(&text) {
        SessionError::BondLost
    } else if text.contains("NotPermitted")
        || text.contains("Not paired")
        || text.contains("Insufficient Authentication")
    {
        SessionError::NeedsPairing(text)
    } else {
        SessionError::Ble(error)
    }
}

/// Where a glucose meter's record transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GlucosePhase {
    Idle,
    /// Asked for the records after our last sequence number (or all, the first time).
    Fetching,
    /// Asked for the meter's last record, to see whether its numbering restarted.
    CheckingLast,
    /// The numbering restarted: asked for everything; keys already stored are not queued again.
    FetchingAll,
}

struct Channel {
    decoding: Decoding,
}

/// Runs one session; the caller decides about reconnecting.
pub async fn run(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    outbox: &OutboxHandle,
    settings: &SessionSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, peripheral.connect()).await {
        Err(_) => return Err(SessionError::Timeout(CONNECT_TIMEOUT)),
        Ok(Err(error)) => return Err(classify(error)),
        Ok(Ok(())) => {}
    }
    let result = collect(peripheral, address, devices, outbox, settings, shutdown).await;
    if peripheral.is_connected().await.unwrap_or(false) {
        let _ = peripheral.disconnect().await;
    }
    result
}

async fn collect(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    outbox: &OutboxHandle,
    settings: &SessionSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    peripheral.discover_services().await.map_err(classify)?;
    let characteristics: HashMap<Uuid, Characteristic> = peripheral
        .characteristics()
        .into_iter()
        .map(|c| (c.uuid, c))
        .collect();
    let now = crate::clock::now_utc();
    update(devices, address, |device| device.last_connected = Some(now));

    let information = read_information(peripheral, address, devices, &characteristics).await;
    if let Some(battery) = characteristics.get(&profile::BATTERY_LEVEL) {
        if let Ok(value) = peripheral.read(battery).await {
            if let Some(&percent) = value.first() {
                update(devices, address, |device| {
                    device.battery_percent = Some(percent.min(100))
                });
            }
        }
    }
    let clock = sync_clock(peripheral, address, devices, &characteristics).await;

    let mut channels: HashMap<Uuid, Channel> = HashMap::new();
    for (uuid, _) in characteristics
        .iter()
        .filter(|(uuid, _)| measurement_protocol(**uuid).is_some())
    {
        let protocol = measurement_protocol(*uuid).expect("filtered");
        let mut decoding = super::decoding_for(
            address,
            protocol,
            &information,
            &settings.hub_id,
            settings.spot,
        );
        decoding.device_clock_read(clock);
        channels.insert(*uuid, Channel { decoding });
    }

    // The stream must exist before the first subscription: cuffs start their burst of stored records
    // the moment the CCCD is written, and a match rule added later would miss them.
    let mut notifications = peripheral
        .notifications()
        .await
        .map_err(classify)?
        .peekable();
    let mut subscribe_to: Vec<&Characteristic> = channels
        .keys()
        .filter_map(|uuid| characteristics.get(uuid))
        .filter(|c| {
            c.properties
                .intersects(CharPropFlags::NOTIFY | CharPropFlags::INDICATE)
        })
        .collect();
    let racp = characteristics.get(&profile::RECORD_ACCESS_CONTROL_POINT);
    subscribe_to.extend(racp);
    subscribe_to.extend(
        characteristics
            .get(&profile::GLUCOSE_CONTEXT)
            .filter(|c| c.properties.contains(CharPropFlags::NOTIFY)),
    );
    // Indications first, so the intermediate-cuff-pressure notifications never delay a record.
    subscribe_to.sort_by_key(|c| !c.properties.contains(CharPropFlags::INDICATE));
    for characteristic in subscribe_to {
        peripheral
            .subscribe(characteristic)
            .await
            .map_err(classify)?;
    }

    let glucose_meter = racp.is_some() && channels.contains_key(&profile::sig(0x2A18));
    let mut glucose = GlucosePhase::Idle;
    if let (true, Some(racp)) = (glucose_meter, racp) {
        let last = devices
            .lock()
            .unwrap()
            .get(address)
            .and_then(|d| d.glucose_last_sequence);
        let request = match last {
            Some(sequence) => glucose::racp_report_from_sequence(sequence.wrapping_add(1)),
            None => glucose::racp_report_all(),
        };
        peripheral
            .write(racp, &request, WriteType::WithResponse)
            .await
            .map_err(classify)?;
        glucose = GlucosePhase::Fetching;
    }
    let mut restart_seen = false;
    let mut grace = StopGrace::default();
    let mut readings = 0usize;
    let mut connection_check = tokio::time::interval(Duration::from_secs(1));
    let mut last_activity = tokio::time::Instant::now();
    let mut racp_deadline = tokio::time::Instant::now() + RACP_TIMEOUT;
    let end = loop {
        tokio::select! {
            notification = notifications.next() => {
                let Some(notification) = notification else { break SessionEnd::Finished { readings } };
                last_activity = tokio::time::Instant::now();
                let received = crate::clock::hub_now();
                let received_at = received.wall;
                if notification.uuid == profile::RECORD_ACCESS_CONTROL_POINT {
                    let code = match glucose::decode_racp(&notification.value) {
                        Ok(glucose::RacpResponse::Completed { code, .. }) => code,
                        Ok(glucose::RacpResponse::NumberOfRecords(_)) => continue,
                        Err(error) => {
                            tracing::debug!(%address, %error, "Unreadable RACP response.");
                            continue;
                        }
                    };
                    // A record held for a context that did not come must count before the answer is judged.
                    if let Some(channel) = channels.get_mut(&profile::sig(0x2A18)) {
                        let held = channel.decoding.release_held();
                        readings += held.len();
                        let counters = channel.decoding.take_counter_deltas();
                        if !append(outbox, devices, address, (held, counters), glucose == GlucosePhase::CheckingLast, &mut restart_seen, shutdown, &mut grace).await? {
                            break SessionEnd::Shutdown;
                        }
                    }
                    let next = match (glucose, code) {
                        // Nothing past our last sequence number: either nothing is new, or the meter's
                        // numbering restarted (battery change, reset). Its last record tells which.
                        (GlucosePhase::Fetching, glucose::RacpResponseCode::NoRecordsFound) => Some((GlucosePhase::CheckingLast, glucose::racp_report_last())),
                        (GlucosePhase::CheckingLast, _) if restart_seen => Some((GlucosePhase::FetchingAll, glucose::racp_report_all())),
                        _ => None,
                    };
                    match (next, racp) {
                        (Some((phase, request)), Some(racp)) => {
                            peripheral.write(racp, &request, WriteType::WithResponse).await.map_err(classify)?;
                            glucose = phase;
                            racp_deadline = tokio::time::Instant::now() + RACP_TIMEOUT;
                        }
                        _ => break SessionEnd::Finished { readings },
                    }
                    continue;
                }
                if notification.uuid == profile::GLUCOSE_CONTEXT {
                    let Some(channel) = channels.get_mut(&profile::sig(0x2A18)) else { continue };
                    match glucose::decode_context(&notification.value) {
                        Ok(context) => {
                            let released = channel.decoding.context(&context);
                            readings += released.len();
                            let counters = channel.decoding.take_counter_deltas();
                            if !append(outbox, devices, address, (released, counters), glucose == GlucosePhase::CheckingLast, &mut restart_seen, shutdown, &mut grace).await? {
                                break SessionEnd::Shutdown;
                            }
                        }
                        Err(error) => tracing::debug!(%address, %error, "Unreadable glucose context."),
                    }
                    continue;
                }
                if notification.uuid == profile::sig(0x2A36) {
                    note_cuff_progress(devices, address, &notification.value, received_at);
                    continue;
                }
                let Some(channel) = channels.get_mut(&notification.uuid) else { continue };
                let decoded = channel.decoding.bytes(&notification.value, &received);
                readings += decoded.len();
                let counters = channel.decoding.take_counter_deltas();
                if !append(outbox, devices, address, (decoded, counters), glucose == GlucosePhase::CheckingLast, &mut restart_seen, shutdown, &mut grace).await? {
                    break SessionEnd::Shutdown;
                }
            }
            _ = connection_check.tick() => {
                for channel in channels.values_mut() {
                    channel.decoding.flush_counters(outbox).await?;
                }
                if !peripheral.is_connected().await.unwrap_or(false) {
                    // What the device sent before it dropped the link reached the bus ahead of the answer
                    // that says so, and waits in the stream: a busy hub reads it before ending, or loses
                    // the end of a burst the device has already deleted.
                    let queued = std::pin::Pin::new(&mut notifications).peek().now_or_never().flatten().is_some();
                    if !queued {
                        break SessionEnd::Finished { readings };
                    }
                }
                let idle = last_activity.elapsed() >= IDLE_TIMEOUT;
                let racp_late = glucose != GlucosePhase::Idle && tokio::time::Instant::now() >= racp_deadline;
                if idle || racp_late {
                    break SessionEnd::Finished { readings };
                }
            }
            _ = shutdown.changed() => break SessionEnd::Shutdown,
        }
    };
    for channel in channels.values_mut() {
        let held = channel.decoding.release_held();
        append(
            outbox,
            devices,
            address,
            (held, channel.decoding.take_counter_deltas()),
            false,
            &mut restart_seen,
            shutdown,
            &mut grace,
        )
        .await?;
        channel.decoding.closed();
        channel.decoding.flush_counters(outbox).await?;
    }
    save(devices);
    Ok(end)
}

/// Decoded records with their readings, and the counter deltas to commit with them.
type Decoded = (
    Vec<(crate::outbox::NewRecord, crate::reading::Reading)>,
    Vec<(String, u64)>,
);

/// Makes decoded records durable and only then notes what they say about the device: the last reading
/// time and, for a glucose meter, the newest sequence number (from which the next session asks for
/// records), so a meter's records count as read only once they are on disk. While checking a meter's last
/// record (`checking_last`), a record that differs from the one the hub stored means the numbering
/// restarted. Waits while the outbox waits for disk space; returns `false` when the daemon stopped first
/// (nothing was noted, so the next session asks for those records again).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site per kind of notification"
)]
async fn append(
    outbox: &OutboxHandle,
    devices: &SharedDevices,
    address: &str,
    (decoded, counters): Decoded,
    checking_last: bool,
    restart_seen: &mut bool,
    shutdown: &mut watch::Receiver<bool>,
    grace: &mut StopGrace,
) -> Result<bool, SessionError> {
    if decoded.is_empty() {
        // Nothing to store, but what was counted (rejected values) still goes to the statistics.
        if !counters.is_empty() {
            outbox.add_counters(counters).await?;
        }
        return Ok(true);
    }
    let newest = decoded
        .iter()
        .filter(|(_, reading)| reading.kind == crate::reading::Kind::BloodGlucose)
        .filter_map(|(_, reading)| {
            glucose::sequence_number(&reading.raw).map(|seq| (seq, reading.record_key.clone()))
        })
        .next_back();
    let received_at = decoded.last().map(|(_, reading)| reading.received_at);
    let count = decoded.len();
    let records = decoded.into_iter().map(|(record, _)| record).collect();
    let Some(outcomes) = grace
        .until_stored(outbox.append_durable_counted(records, counters), shutdown)
        .await
    else {
        tracing::warn!(%address, records = count, "Stopping while the outbox cannot take more: the device's records were not stored; it is asked for them again next time.");
        return Ok(false);
    };
    // A record the outbox refused (it holds `max_pending`) is not read: the meter is asked for it again.
    let outcomes = outcomes?;
    let newest = newest.filter(|_| !outcomes.contains(&crate::outbox::Appended::RejectedFull));
    let mut restarted = false;
    update(devices, address, |device| {
        device.last_reading_at = received_at.or(device.last_reading_at);
        if let Some((sequence, key)) = newest {
            if checking_last
                && (device.glucose_last_sequence != Some(sequence)
                    || device.glucose_last_key != key)
            {
                restarted = true;
            }
            if !checking_last || restarted || *restart_seen {
                device.glucose_last_sequence = Some(sequence);
                device.glucose_last_key = key;
            }
        }
    });
    if restarted && !*restart_seen {
        tracing::warn!(%address, "The glucose meter's record numbering restarted; reading all its records again (stored ones are not queued twice).");
    }
    *restart_seen |= restarted;
    Ok(true)
}

/// Intermediate Cuff Pressure is progress, not a reading: it is kept in memory for `vitalsd devices`.
fn note_cuff_progress(
    devices: &SharedDevices,
    address: &str,
    value: &[u8],
    received_at: chrono::DateTime<chrono::Utc>,
) {
    use crate::decode::MessageDecoder;
    let context = crate::decode::DecodeContext::trusted(received_at, &chrono::Local);
    let Ok(readings) =
        crate::decode::blood_pressure::IntermediateCuffPressureDecoder.decode(value, &context)
    else {
        return;
    };
    let Some(value) = readings.first().and_then(|reading| reading.values.first()) else {
        return;
    };
    let progress = value
        .value
        .map(|pressure| crate::bound_devices::CuffProgress {
            pressure,
            unit: value.measure.unit,
            at: received_at,
        });
    update(devices, address, |device| device.measuring = progress);
}

fn update(
    devices: &SharedDevices,
    address: &str,
    change: impl FnOnce(&mut crate::bound_devices::BoundDevice),
) {
    let mut devices = devices.lock().unwrap();
    if let Some(device) = devices.get_mut(address) {
        change(device);
    }
}

fn save(devices: &SharedDevices) {
    if let Err(error) = devices.lock().unwrap().save() {
        tracing::error!(%error, "Cannot save the device list.");
    }
}

/// Reads Device Information once per device and caches it in the device list.
async fn read_information(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    characteristics: &HashMap<Uuid, Characteristic>,
) -> DeviceStrings {
    if let Some(cached) = devices
        .lock()
        .unwrap()
        .get(address)
        .and_then(|d| d.information.clone())
    {
        return cached;
    }
    let mut strings = DeviceStrings::default();
    for (uuid, slot) in [
        (profile::MANUFACTURER_NAME, &mut strings.manufacturer),
        (profile::MODEL_NUMBER, &mut strings.model),
        (profile::SERIAL_NUMBER, &mut strings.serial_number),
        (profile::FIRMWARE_REVISION, &mut strings.firmware_revision),
    ] {
        if let Some(characteristic) = characteristics.get(&uuid) {
            match peripheral.read(characteristic).await {
                Ok(bytes) => {
                    let text = crate::decode::device_information::decode_string(&bytes);
                    *slot = (!text.is_empty()).then_some(text);
                }
                Err(error) => {
                    tracing::debug!(%address, %uuid, %error, "Device Information read failed.")
                }
            }
        }
    }
    update(devices, address, |device| {
        device.information = Some(strings.clone())
    });
    strings
}

/// Reads the device clock against the hub's (a coincident time stamp), then sets it: Date Time where the
/// device has it writable (A&D), else Current Time (Omron and the Current Time Service). The hub writes
/// its time only while it trusts its own clock: one boot on a stale saved time must not corrupt the cuff's
/// clock and every measurement stamped by it afterwards. A refused write is logged, not fatal.
async fn sync_clock(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    characteristics: &HashMap<Uuid, Characteristic>,
) -> Option<DeviceClockCheck> {
    let date_time = characteristics
        .get(&profile::DATE_TIME)
        .filter(|c| c.properties.contains(CharPropFlags::WRITE));
    let current_time = characteristics.get(&profile::CURRENT_TIME);
    let target = date_time.or(current_time)?;
    let is_date_time = target.uuid == profile::DATE_TIME;
    let mut check = None;
    if target.properties.contains(CharPropFlags::READ) {
        let hub = crate::clock::hub_now();
        let hub_local = crate::clock::now_local().naive_local();
        if let Ok(bytes) = peripheral.read(target).await {
            let device_time = if is_date_time {
                current_time::decode_date_time(&bytes).ok()
            } else {
                current_time::decode_current_time(&bytes)
                    .ok()
                    .map(|c| c.date_time)
            };
            if let Some(device_time) = device_time {
                let read = DeviceClockCheck {
                    device_time,
                    hub_time: hub.wall,
                    hub_local,
                    hub_clock: hub.clock,
                    set: false,
                };
                let not_set = device_time.plausible().is_none();
                update(devices, address, |device| {
                    device.clock_offset_s = read.offset().map(|o| o.num_seconds());
                    device.clock_not_set = not_set;
                    device.clock_checked_at = Some(hub.wall);
                    device.clock_set = false;
                });
                match read.offset() {
                    _ if not_set => tracing::info!(%address, "The device clock is not set."),
                    Some(offset) => {
                        tracing::info!(%address, offset_s = offset.num_seconds(), "Device clock checked.")
                    }
                    None => {
                        tracing::info!(%address, "Device clock read; the hub clock is not synchronised, so no offset is measured.")
                    }
                }
                check = Some(read);
            }
        }
    }
    // Judged by the same clock reading as the read, so a clock trusted only after the read cannot overwrite
    // a device clock the hub measured nothing against: its records would lose the reset rule unnoticed.
    let trusted = match &check {
        Some(read) => read.hub_clock.is_trusted(),
        None => crate::clock::hub_clock().is_trusted(),
    };
    if !trusted {
        tracing::info!(%address, "The hub clock is not synchronised; the device clock is left as it is.");
        return check;
    }
    let hub_local = crate::clock::now_local().naive_local();
    let value = if is_date_time {
        current_time::encode_date_time(hub_local).map(|bytes| bytes.to_vec())
    } else {
        current_time::encode_current_time(hub_local, current_time::ADJUST_EXTERNAL_REFERENCE)
            .map(|bytes| bytes.to_vec())
    };
    if let Some(value) = value {
        match peripheral
            .write(target, &value, WriteType::WithResponse)
            .await
        {
            Ok(()) => {
                if let Some(read) = &mut check {
                    read.set = true;
                }
                update(devices, address, |device| device.clock_set = true);
            }
            Err(error) => {
                tracing::warn!(%address, %error, "The device refused the time write; its time stamps are checked against the hub's.")
            }
        }
    }
    check
}

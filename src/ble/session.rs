//! One connection to one bound Bluetooth device, I/O only: connect, discover, read Device Information
//! once, read and set the device clock as `decode::current_time::ClockSync` decides, subscribe with the
//! notification stream already open, feed what arrives to the decoding channels and to the glucose
//! meter's `RecordDialog`, write the RACP requests the dialog makes, make every record durable as it
//! arrives, and end when the device (or the dialog) is done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use btleplug::api::{CharPropFlags, Characteristic, Peripheral as _, WriteType};
use btleplug::platform::Peripheral;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use uuid::Uuid;

use super::profile::{self, measurement_protocol};
use crate::decode::current_time::{ClockCharacteristic, ClockFound, ClockSync, ClockWrite};
use crate::decode::glucose::dialog::{Action, LastRecord, RecordDialog};
use crate::hand_over::{flush_counters, StopGrace};
use crate::model::measurement_time::DeviceClockCheck;
use crate::model::reading::Reading;
use crate::outbox::{NewRecord, OutboxHandle};
use crate::pipeline::Decoding;
use crate::spot::SpotRule;
use crate::state::devices::{BoundDevices, DeviceStrings};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// A device that sends nothing for this long is done with us; the hub lets go of the link.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a connection attempt looks whether its link came up and went down again.
const LINK_CHECK: Duration = Duration::from_millis(250);
const LINK_WENT_DOWN: &str = "the link went down before the device's services were resolved";

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
    /// BlueZ could not open the link's ATT channel: for a bonded device, possibly a lost bond
    /// ([`super::bluez::means_aborted_link`]).
    #[error("the link was aborted while it was being set up: {0}")]
    LinkAborted(String),
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
    } else if super::bluez::means_aborted_link(&text) {
        SessionError::LinkAborted(text)
    } else if text.contains("NotPermitted")
        || text.contains("Not paired")
        || text.contains("Insufficient Authentication")
    {
        SessionError::NeedsPairing(text)
    } else {
        SessionError::Ble(error)
    }
}

/// Glucose Measurement: glucose records, which go through the meter's [`RecordDialog`].
const GLUCOSE_MEASUREMENT: Uuid = profile::sig(0x2A18);
/// Intermediate Cuff Pressure: progress while a cuff inflates, never a reading.
const INTERMEDIATE_CUFF_PRESSURE: Uuid = profile::sig(0x2A36);

/// A peripheral's value notifications, as btleplug gives them.
type NotificationStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = btleplug::api::ValueNotification> + Send>>;

/// Runs one session; the caller decides about reconnecting.
pub async fn run(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    outbox: &OutboxHandle,
    settings: &SessionSettings,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SessionEnd, SessionError> {
    // The stream must exist before the link comes up. Cuffs start their burst of stored records the
    // moment indications are enabled, and for a bonded hub BlueZ enables them again by itself as soon as
    // the link is up, before this session has discovered or read a thing (the real stack does; see
    // ARCHITECTURE.md, BlueZ); a match rule added later would miss them. The stream names a value's
    // characteristic when it is read, after discovery.
    let notifications = peripheral.notifications().await.map_err(classify)?;
    let went_down = match connect(peripheral).await {
        Ok(()) => None,
        Err(SessionError::LinkAborted(reason)) if reason == LINK_WENT_DOWN => {
            Some(SessionError::LinkAborted(reason))
        }
        Err(error) => return Err(error),
    };
    // Also after a link that went down while connecting: a bonded device sends what it holds as soon as
    // BlueZ re-enables its subscription and may drop the link before BlueZ has resolved its services (the
    // real stack did so on a busy hub). What it sent, which BlueZ confirmed, waits in the stream, and
    // BlueZ keeps a bonded device's services on the bus; reading it is the only way not to lose records
    // the device now holds delivered. With nothing in the stream (a lost bond's link) the session fails
    // as the aborted link it was.
    let result = collect(
        peripheral,
        notifications,
        address,
        devices,
        outbox,
        settings,
        shutdown,
    )
    .await;
    let Some(error) = went_down else {
        if peripheral.is_connected().await.unwrap_or(false) {
            let _ = peripheral.disconnect().await;
        }
        return result;
    };
    match result {
        Ok(SessionEnd::Finished { readings }) if readings > 0 => {
            tracing::info!(%address, readings, "The device dropped the link before its services were resolved; read what it had sent.");
            Ok(SessionEnd::Finished { readings })
        }
        Ok(SessionEnd::Shutdown) => Ok(SessionEnd::Shutdown),
        Err(SessionError::OutboxGone) => Err(SessionError::OutboxGone),
        _ => Err(error),
    }
}

/// Brings the link up and waits until BlueZ has resolved the device's services, as btleplug's `connect`
/// does. That wait does not end when the link drops: with a device that forgot its bond, BlueZ 5.66 can
/// bring the link up and answer `Connect`, and the kernel then drops the link when encryption fails
/// (the real-BlueZ suite saw it), so a link that was up and went down before the services were resolved
/// is an aborted link, as the same failure is when BlueZ reports it, not a timeout.
async fn connect(peripheral: &Peripheral) -> Result<(), SessionError> {
    let connecting = peripheral.connect();
    tokio::pin!(connecting);
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(LINK_CHECK);
    let mut link_was_up = false;
    loop {
        tokio::select! {
            connected = &mut connecting => return connected.map_err(classify),
            _ = &mut deadline => return Err(SessionError::Timeout(CONNECT_TIMEOUT)),
            _ = check.tick() => {
                let up = peripheral.is_connected().await.unwrap_or(false);
                if link_was_up && !up {
                    return Err(SessionError::LinkAborted(LINK_WENT_DOWN.into()));
                }
                link_was_up |= up;
            }
        }
    }
}

async fn collect(
    peripheral: &Peripheral,
    notifications: NotificationStream,
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
    // Reads show up in the stream too (BlueZ signals the new Value); they are skipped below, as no
    // measurement channel has their UUID.
    let mut notifications = notifications.peekable();
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

    let mut channels: HashMap<Uuid, Decoding> = HashMap::new();
    for uuid in characteristics.keys() {
        let Some(protocol) = measurement_protocol(*uuid) else {
            continue;
        };
        let mut decoding = super::decoding_for(
            address,
            protocol,
            &information,
            &settings.hub_id,
            settings.spot,
        );
        decoding.device_clock_read(clock);
        channels.insert(*uuid, decoding);
    }

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
    // A device that sent its records on BlueZ's own re-subscription and dropped the link fails our
    // subscription; what it sent waits in the stream, so the loop reads that first and then ends with
    // the failure, unless something was stored.
    let mut subscribe_failed = None;
    for characteristic in subscribe_to {
        if let Err(error) = peripheral.subscribe(characteristic).await {
            subscribe_failed = Some(classify(error));
            break;
        }
    }

    let last = devices
        .lock()
        .unwrap()
        .get(address)
        .map(|device| LastRecord {
            sequence: device.glucose_last_sequence,
            key: device.glucose_last_key.clone(),
        })
        .unwrap_or_default();
    let mut glucose = RecordDialog::new(
        last,
        racp.is_some() && channels.contains_key(&GLUCOSE_MEASUREMENT),
    );
    let mut store = Store {
        outbox,
        devices,
        address,
        grace: StopGrace::default(),
        readings: 0,
    };
    let mut connection_check = tokio::time::interval(Duration::from_secs(1));
    let mut last_activity = tokio::time::Instant::now();
    let end = 'session: {
        if follow(peripheral, racp, &mut glucose).await? == Some(Action::Finished) {
            break 'session SessionEnd::Finished {
                readings: store.readings,
            };
        }
        loop {
            tokio::select! {
                notification = notifications.next() => {
                    let Some(notification) = notification else { break SessionEnd::Finished { readings: store.readings } };
                    last_activity = tokio::time::Instant::now();
                    let received = crate::clock::hub_now();
                    let (uuid, value) = (notification.uuid, notification.value);
                    let (channel, events) = match uuid {
                        profile::RECORD_ACCESS_CONTROL_POINT => match glucose.handle_racp(&value) {
                            Ok(events) => (GLUCOSE_MEASUREMENT, events),
                            Err(error) => {
                                tracing::debug!(%address, %error, "Unreadable RACP response.");
                                continue;
                            }
                        },
                        profile::GLUCOSE_CONTEXT if channels.contains_key(&GLUCOSE_MEASUREMENT) => match glucose.handle_context(&value) {
                            Ok(events) => (GLUCOSE_MEASUREMENT, events),
                            Err(error) => {
                                tracing::debug!(%address, %error, "Unreadable glucose context.");
                                continue;
                            }
                        },
                        INTERMEDIATE_CUFF_PRESSURE => {
                            note_cuff_progress(devices, address, &value, received.wall);
                            continue;
                        }
                        uuid => match channels.get_mut(&uuid) {
                            Some(decoding) if uuid == GLUCOSE_MEASUREMENT => {
                                (uuid, glucose.handle_measurement(decoding.decode(&value, &received)))
                            }
                            Some(decoding) => (uuid, decoding.decode(&value, &received)),
                            None => continue,
                        },
                    };
                    if let Some(decoding) = channels.get_mut(&channel) {
                        let records = decoding.records(events);
                        let counters = decoding.take_counter_deltas();
                        if !store.store(records, counters, &mut glucose, shutdown).await? {
                            break SessionEnd::Shutdown;
                        }
                    }
                    if follow(peripheral, racp, &mut glucose).await? == Some(Action::Finished) {
                        break SessionEnd::Finished { readings: store.readings };
                    }
                }
                _ = connection_check.tick() => {
                    for decoding in channels.values_mut() {
                        flush_counters(decoding, outbox).await?;
                    }
                    if subscribe_failed.is_some() || !peripheral.is_connected().await.unwrap_or(false) {
                        // What the device sent before it dropped the link reached the bus ahead of the
                        // answer that says so, and waits in the stream: a busy hub reads it before ending,
                        // or loses the end of a burst the device has already deleted.
                        let queued = std::pin::Pin::new(&mut notifications)
                            .peek()
                            .now_or_never()
                            .flatten()
                            .is_some();
                        if !queued {
                            match subscribe_failed.take() {
                                Some(error) if store.readings == 0 => return Err(error),
                                _ => break SessionEnd::Finished { readings: store.readings },
                            }
                        }
                    }
                    if last_activity.elapsed() >= IDLE_TIMEOUT {
                        break SessionEnd::Finished { readings: store.readings };
                    }
                    // A record whose context did not come while the answer waited for late records is
                    // stored before the answer is judged.
                    let overdue = glucose.release_overdue(std::time::Instant::now());
                    let glucose_channel = channels.get_mut(&GLUCOSE_MEASUREMENT);
                    if let Some(decoding) = glucose_channel.filter(|_| !overdue.is_empty()) {
                        let records = decoding.records(overdue);
                        let counters = decoding.take_counter_deltas();
                        if !store.store(records, counters, &mut glucose, shutdown).await? {
                            break SessionEnd::Shutdown;
                        }
                    }
                    if follow(peripheral, racp, &mut glucose).await? == Some(Action::Finished) {
                        break SessionEnd::Finished { readings: store.readings };
                    }
                }
                _ = shutdown.changed() => break SessionEnd::Shutdown,
            }
        }
    };
    for (uuid, decoding) in channels.iter_mut() {
        // A record still waiting for its context is stored as it is.
        let held = if *uuid == GLUCOSE_MEASUREMENT {
            glucose.finish()
        } else {
            Vec::new()
        };
        let records = decoding.records(held);
        let counters = decoding.take_counter_deltas();
        store
            .store(records, counters, &mut glucose, shutdown)
            .await?;
        decoding.closed();
        flush_counters(decoding, outbox).await?;
    }
    save(devices);
    Ok(end)
}

/// Does what the glucose dialog says now: writes its next RACP request, or reports that the transfer is
/// over.
async fn follow(
    peripheral: &Peripheral,
    racp: Option<&Characteristic>,
    glucose: &mut RecordDialog,
) -> Result<Option<Action>, SessionError> {
    let action = glucose.poll(std::time::Instant::now());
    if let (Some(Action::Write(request)), Some(racp)) = (&action, racp) {
        peripheral
            .write(racp, request, WriteType::WithResponse)
            .await
            .map_err(classify)?;
    }
    Ok(action)
}

/// Where a session's records go: the outbox, and then what they say about the device into the device list.
struct Store<'a> {
    outbox: &'a OutboxHandle,
    devices: &'a SharedDevices,
    address: &'a str,
    grace: StopGrace,
    /// Records handed over in this session.
    readings: usize,
}

impl Store<'_> {
    /// Makes records durable and only then notes what they say about the device: the last reading time
    /// and what the glucose dialog noted (the newest sequence number, from which the next session asks for
    /// records), so a meter's records count as read only once they are on disk. Waits while the outbox
    /// waits for disk space; returns `false` when the daemon stopped first (nothing was noted, so the next
    /// session asks for those records again).
    async fn store(
        &mut self,
        decoded: Vec<(NewRecord, Reading)>,
        counters: Vec<(String, u64)>,
        glucose: &mut RecordDialog,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, SessionError> {
        let address = self.address;
        if decoded.is_empty() {
            // Nothing to store, but what was counted (rejected values) still goes to the statistics.
            if !counters.is_empty() {
                self.outbox.add_counters(counters).await?;
            }
            return Ok(true);
        }
        self.readings += decoded.len();
        let received_at = decoded.last().map(|(_, reading)| reading.received_at);
        let count = decoded.len();
        let (records, readings): (Vec<NewRecord>, Vec<Reading>) = decoded.into_iter().unzip();
        let Some(outcomes) = self
            .grace
            .until_stored(
                self.outbox.append_durable_counted(records, counters),
                shutdown,
            )
            .await
        else {
            tracing::warn!(%address, records = count, "Stopping while the outbox cannot take more: the device's records were not stored; it is asked for them again next time.");
            return Ok(false);
        };
        // A record the outbox refused (it holds `max_pending`) is not read: the meter is asked for it again,
        // and the dialog notes nothing stored after it in this session.
        let all_taken = !outcomes?.contains(&crate::outbox::Appended::RejectedFull);
        let noted = glucose.handle_stored(&readings, all_taken);
        update(self.devices, address, |device| {
            device.last_reading_at = received_at.or(device.last_reading_at);
            if let Some(last) = noted.last {
                device.glucose_last_sequence = last.sequence;
                device.glucose_last_key = last.key;
            }
        });
        if noted.restart_found {
            tracing::warn!(%address, "The glucose meter's record numbering restarted; reading all its records again (stored ones are not queued twice).");
        }
        Ok(true)
    }
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
        .map(|pressure| crate::state::devices::CuffProgress {
            pressure,
            unit: value.measure.unit,
            at: received_at,
        });
    update(devices, address, |device| device.measuring = progress);
}

fn update(
    devices: &SharedDevices,
    address: &str,
    change: impl FnOnce(&mut crate::state::devices::BoundDevice),
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

/// Reads the device clock against the hub's (a coincident time stamp), then sets it, as
/// [`ClockSync`] decides: Date Time where the device has it writable (A&D), else Current Time (Omron and
/// the Current Time Service), and only while the hub trusts its own clock. A refused write is logged, not
/// fatal.
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
    let mut sync = ClockSync::new(date_time.is_some(), current_time.is_some())?;
    let target = match sync.characteristic() {
        ClockCharacteristic::DateTime => date_time,
        ClockCharacteristic::CurrentTime => current_time,
    }
    .expect("chosen from the characteristics present");
    if target.properties.contains(CharPropFlags::READ) {
        let hub = crate::clock::hub_now();
        let hub_local = crate::clock::now_local().naive_local();
        if let Ok(bytes) = peripheral.read(target).await {
            if let Some(found) = sync.handle_read(&bytes, hub.wall, hub_local, hub.clock) {
                update(devices, address, |device| {
                    device.clock_offset_s = match found {
                        ClockFound::Offset(offset) => Some(offset.num_seconds()),
                        ClockFound::NotSet | ClockFound::Unmeasured => None,
                    };
                    device.clock_not_set = found == ClockFound::NotSet;
                    device.clock_checked_at = Some(hub.wall);
                    device.clock_set = false;
                });
                match found {
                    ClockFound::NotSet => tracing::info!(%address, "The device clock is not set."),
                    ClockFound::Offset(offset) => {
                        tracing::info!(%address, offset_s = offset.num_seconds(), "Device clock checked.")
                    }
                    ClockFound::Unmeasured => {
                        tracing::info!(%address, "Device clock read; the hub clock is not synchronised, so no offset is measured.")
                    }
                }
            }
        }
    }
    let hub_local = crate::clock::now_local().naive_local();
    match sync.write(crate::clock::hub_clock(), hub_local) {
        ClockWrite::HubUntrusted => {
            tracing::info!(%address, "The hub clock is not synchronised; the device clock is left as it is.");
        }
        ClockWrite::Unencodable => {}
        ClockWrite::Write(value) => {
            match peripheral
                .write(target, &value, WriteType::WithResponse)
                .await
            {
                Ok(()) => {
                    sync.handle_written();
                    update(devices, address, |device| device.clock_set = true);
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "The device refused the time write; its time stamps are checked against the hub's.")
                }
            }
        }
    }
    sync.check()
}

//! One connection to one bound Bluetooth device, I/O only: connect, discover, read Device Information
//! once, read and set the device clock, subscribe with the notification stream already open, hand what
//! arrives to `ble::session_core`, write what it asks for, make every record durable as it arrives, and
//! end when it says so. Every decision (what to subscribe to, where a value goes, when the session is
//! over, what a lost link means) is the core's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btleplug::api::{
    Central as _, CentralEvent, CharPropFlags, Characteristic, Peripheral as _, WriteType,
};
use btleplug::platform::{Adapter, Peripheral};
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use uuid::Uuid;

use super::profile;
use super::session_core::{
    self, ClockPlan, Collected, DeviceNote, Found, LinkCheck, LinkDown, LinkWatch, Outcome, Polled,
    Properties, Received, SessionCore, Setup, Step,
};
use crate::decode::current_time::{ClockFound, ClockWrite};
use crate::decode::glucose::dialog::LastRecord;
use crate::hand_over::{flush_counters, StopGrace};
use crate::model::measurement_time::DeviceClockCheck;
use crate::model::reading::Reading;
use crate::outbox::{NewRecord, OutboxHandle};
use crate::spot::SpotRule;
use crate::state::devices::{BoundDevices, DeviceStrings};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a connection attempt looks whether its link came up and went down again.
const LINK_CHECK: Duration = Duration::from_millis(250);
/// How long after a failed attempt a link that comes back up is still let go (`let_go`).
const LINK_SETTLE: Duration = Duration::from_secs(2);
const LINK_WENT_DOWN: &str = "the link went down before the device's services were resolved";

pub type SharedDevices = Arc<Mutex<BoundDevices>>;

pub struct SessionSettings {
    pub hub_id: String,
    pub formats: crate::pipeline::Formats,
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
    /// The link stood too long before it went down for a refused key to have ended it
    /// ([`session_core::REFUSED_KEY_LINK_LIFETIME`]): it says nothing about the bond.
    #[error(
        "the link went down {0:.1?} after it came up, before the device's services were resolved"
    )]
    LinkDropped(Duration),
    #[error("the device requires pairing: {0}")]
    NeedsPairing(String),
    #[error("the outbox worker is gone")]
    OutboxGone,
}

impl SessionError {
    /// Whether the link came up and went down before the services were resolved, as [`connect`] sees it.
    fn is_link_down_while_connecting(&self) -> bool {
        match self {
            SessionError::LinkAborted(reason) => reason == LINK_WENT_DOWN,
            SessionError::LinkDropped(_) => true,
            _ => false,
        }
    }
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

/// A peripheral's value notifications, as btleplug gives them.
type NotificationStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = btleplug::api::ValueNotification> + Send>>;

/// Runs one session; the caller decides about reconnecting.
pub async fn run(
    adapter: &Adapter,
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
    // Also opened before the link comes up, for the same reason: the link's changes are signals.
    let mut changes = link_changes(adapter, peripheral).await?;
    let mut went_down = None;
    let setup = match connect(peripheral, &mut changes).await {
        Ok(()) => Setup::Up,
        Err(error) if error.is_link_down_while_connecting() => {
            went_down = Some(error);
            Setup::WentDown
        }
        Err(error) => {
            let_go(peripheral, Some((changes, &mut *shutdown))).await;
            return Err(error);
        }
    };
    // Nobody reads the adapter's events while the device is read; they would pile up.
    drop(changes);
    // Also after a link that went down while connecting (the real stack's busy hub, `session_core::outcome`):
    // what the device sent, which BlueZ confirmed, waits in the stream, and BlueZ keeps a bonded device's
    // services on the bus.
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
    let collected = match &result {
        Ok(SessionEnd::Finished { readings }) => Collected::Finished {
            readings: *readings,
        },
        Ok(SessionEnd::Shutdown) => Collected::Shutdown,
        Err(SessionError::OutboxGone) => Collected::OutboxGone,
        Err(_) => Collected::Failed,
    };
    match session_core::outcome(setup, collected) {
        Outcome::Disconnect => {
            let_go(peripheral, None).await;
            result
        }
        Outcome::AsCollected => result,
        Outcome::ReadBeforeDrop => {
            if let Collected::Finished { readings } = collected {
                tracing::info!(%address, readings, "The device dropped the link before its services were resolved; read what it had sent.");
            }
            result
        }
        Outcome::Aborted => {
            if let Err(error) = &result {
                tracing::debug!(%address, %error, "Nothing was read after the link went down.");
            }
            match link_changes(adapter, peripheral).await {
                Ok(changes) => let_go(peripheral, Some((changes, &mut *shutdown))).await,
                Err(_) => let_go(peripheral, None).await,
            }
            Err(went_down.unwrap_or_else(|| SessionError::LinkAborted(LINK_WENT_DOWN.into())))
        }
    }
}

/// Whether the device's link came up (true) or went down (false), as BlueZ signals it.
type LinkChanges = std::pin::Pin<Box<dyn futures_util::Stream<Item = bool> + Send>>;

async fn link_changes(
    adapter: &Adapter,
    peripheral: &Peripheral,
) -> Result<LinkChanges, SessionError> {
    let id = peripheral.id();
    let events = adapter.events().await.map_err(classify)?;
    Ok(Box::pin(events.filter_map(move |event| {
        let change = match event {
            CentralEvent::DeviceConnected(of) if of == id => Some(true),
            CentralEvent::DeviceDisconnected(of) if of == id => Some(false),
            _ => None,
        };
        std::future::ready(change)
    })))
}

/// Disconnects a link that is still up. After a failed attempt BlueZ may hold a link whose services will
/// never be resolved: the real stack brought a lost bond's link back up within a fraction of a second
/// and kept it, and while it stands the device does not advertise and every later `Connect` only waits
/// on it again. So after a failure a link that comes back up within [`LINK_SETTLE`] is let go as well,
/// unless the daemon is stopping.
async fn let_go(
    peripheral: &Peripheral,
    after_failure: Option<(LinkChanges, &mut watch::Receiver<bool>)>,
) {
    if peripheral.is_connected().await.unwrap_or(false) {
        let _ = peripheral.disconnect().await;
    }
    let Some((mut changes, shutdown)) = after_failure else {
        return;
    };
    let settle = tokio::time::sleep(LINK_SETTLE);
    tokio::pin!(settle);
    loop {
        tokio::select! {
            _ = &mut settle => return,
            _ = shutdown.changed() => return,
            change = changes.next() => match change {
                Some(true) => {
                    tracing::debug!("A failed attempt's link came back up; letting it go.");
                    let _ = peripheral.disconnect().await;
                }
                Some(false) => {}
                None => return,
            },
        }
    }
}

/// Brings the link up and waits until BlueZ has resolved the device's services, as btleplug's `connect`
/// does. That wait does not end when the link drops, so the link is watched meanwhile ([`LinkWatch`]; the
/// real-BlueZ suite saw a lost bond's link come up and go down). BlueZ's signals of the link's changes are
/// watched as well as its state: the real stack brought a lost bond's link back up within a fraction of a
/// second, which a look at the state now and then misses.
async fn connect(
    peripheral: &Peripheral,
    link_changes: &mut LinkChanges,
) -> Result<(), SessionError> {
    let connecting = peripheral.connect();
    tokio::pin!(connecting);
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    let mut check = crate::clock::every(LINK_CHECK);
    let mut watch = LinkWatch::default();
    loop {
        let up = tokio::select! {
            connected = &mut connecting => return connected.map_err(classify),
            _ = &mut deadline => return Err(SessionError::Timeout(CONNECT_TIMEOUT)),
            Some(up) = link_changes.next() => up,
            _ = check.tick() => peripheral.is_connected().await.unwrap_or(false),
        };
        match watch.checked(up, Instant::now()) {
            None => {}
            Some(LinkDown::Aborted) => {
                return Err(SessionError::LinkAborted(LINK_WENT_DOWN.into()))
            }
            Some(LinkDown::Dropped(stood)) => return Err(SessionError::LinkDropped(stood)),
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
    let found: Vec<Found> = characteristics
        .values()
        .map(|c| (c.uuid, properties(c.properties)))
        .collect();
    // Reads show up in the stream too (BlueZ signals the new Value); the core skips them, as no
    // measurement channel has their UUID.
    let mut notifications = notifications.peekable();
    let now = crate::clock::now_utc();
    update(devices, address, |device| device.last_connected = Some(now));

    let information = read_information(peripheral, address, devices, &characteristics).await;
    if let Some(battery) = characteristics.get(&profile::BATTERY_LEVEL) {
        if let Ok(value) = peripheral.read(battery).await {
            note(devices, address, session_core::battery(&value));
        }
    }
    let clock_plan = session_core::clock_plan(&found);
    let clock = sync_clock(peripheral, address, devices, &characteristics, clock_plan).await;

    // A device that sent its records on BlueZ's own re-subscription and dropped the link fails our
    // subscription; what it sent waits in the stream, so the loop reads that first and then ends as
    // `session_core::link_check` says.
    let mut subscribe_failed = None;
    for uuid in session_core::subscriptions(&found) {
        let Some(characteristic) = characteristics.get(&uuid) else {
            continue;
        };
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
    let channel_for = |protocol| {
        let mut decoding = super::decoding_for(
            address,
            protocol,
            &information,
            &settings.hub_id,
            &settings.formats,
            settings.spot,
        );
        decoding.device_clock_read(clock);
        decoding
    };
    let mut core = SessionCore::new(address, &found, channel_for, last, Instant::now());
    let mut store = Store {
        outbox,
        devices,
        address,
        grace: StopGrace::default(),
        readings: 0,
    };
    let mut connection_check = crate::clock::every(Duration::from_secs(1));
    let end = 'session: {
        if follow(peripheral, &characteristics, &mut core).await? == Some(Step::Finished) {
            break 'session SessionEnd::Finished {
                readings: store.readings,
            };
        }
        loop {
            tokio::select! {
                notification = notifications.next() => {
                    let Some(notification) = notification else { break SessionEnd::Finished { readings: store.readings } };
                    let received = crate::clock::hub_now();
                    match core.received(notification.uuid, &notification.value, &received, Instant::now()) {
                        Received::Nothing => continue,
                        Received::Note(device_note) => {
                            note(devices, address, Some(device_note));
                            continue;
                        }
                        Received::Store(batch) => {
                            if !store.store(batch.records, batch.counters, &mut core, shutdown).await? {
                                break SessionEnd::Shutdown;
                            }
                        }
                    }
                    if follow(peripheral, &characteristics, &mut core).await? == Some(Step::Finished) {
                        break SessionEnd::Finished { readings: store.readings };
                    }
                }
                _ = connection_check.tick() => {
                    for decoding in core.decodings() {
                        flush_counters(decoding, outbox).await?;
                    }
                    let connected = subscribe_failed.is_none() && peripheral.is_connected().await.unwrap_or(false);
                    let queued = !connected
                        && std::pin::Pin::new(&mut notifications)
                            .peek()
                            .now_or_never()
                            .flatten()
                            .is_some();
                    match session_core::link_check(subscribe_failed.take(), connected, queued, store.readings) {
                        LinkCheck::CarryOn(failed) => subscribe_failed = failed,
                        LinkCheck::Finished => break SessionEnd::Finished { readings: store.readings },
                        LinkCheck::Failed(error) => return Err(error),
                    }
                    match core.poll(Instant::now()) {
                        Polled::Idle => break SessionEnd::Finished { readings: store.readings },
                        Polled::Store(batch) => {
                            if !store.store(batch.records, batch.counters, &mut core, shutdown).await? {
                                break SessionEnd::Shutdown;
                            }
                        }
                        Polled::Follow => {}
                    }
                    if follow(peripheral, &characteristics, &mut core).await? == Some(Step::Finished) {
                        break SessionEnd::Finished { readings: store.readings };
                    }
                }
                _ = shutdown.changed() => break SessionEnd::Shutdown,
            }
        }
    };
    for batch in core.finish() {
        store
            .store(batch.records, batch.counters, &mut core, shutdown)
            .await?;
    }
    for decoding in core.decodings() {
        flush_counters(decoding, outbox).await?;
    }
    save(devices);
    Ok(end)
}

/// Does what the device's dialog asks for now: writes its next request, or reports that it is over.
async fn follow(
    peripheral: &Peripheral,
    characteristics: &HashMap<Uuid, Characteristic>,
    core: &mut SessionCore,
) -> Result<Option<Step>, SessionError> {
    let step = core.follow(Instant::now());
    if let Some(Step::Write {
        characteristic,
        value,
    }) = &step
    {
        if let Some(characteristic) = characteristics.get(characteristic) {
            peripheral
                .write(characteristic, value, WriteType::WithResponse)
                .await
                .map_err(classify)?;
        }
    }
    Ok(step)
}

/// What btleplug's flags say a characteristic offers.
fn properties(flags: CharPropFlags) -> Properties {
    Properties {
        read: flags.contains(CharPropFlags::READ),
        write: flags.contains(CharPropFlags::WRITE),
        notify: flags.contains(CharPropFlags::NOTIFY),
        indicate: flags.contains(CharPropFlags::INDICATE),
    }
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
        decoded: Vec<(Vec<NewRecord>, Reading)>,
        counters: Vec<(String, u64)>,
        core: &mut SessionCore,
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
        let (records, readings): (Vec<Vec<NewRecord>>, Vec<Reading>) = decoded.into_iter().unzip();
        let records = records.into_iter().flatten().collect();
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
        let noted = core.handle_stored(&readings, all_taken);
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

fn note(devices: &SharedDevices, address: &str, note: Option<DeviceNote>) {
    if let Some(note) = note {
        update(devices, address, |device| note.apply(device));
    }
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

/// Reads Device Information once per device (and once more after an upgrade that reads more of it) and
/// caches it in the device list.
async fn read_information(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    characteristics: &HashMap<Uuid, Characteristic>,
) -> DeviceStrings {
    let cached = devices
        .lock()
        .unwrap()
        .get(address)
        .and_then(|d| d.information.clone());
    if let Some(cached) = cached.as_ref().filter(|cached| cached.is_current()) {
        return cached.clone();
    }
    // A string the device answered before and does not answer now (a failed read) keeps its earlier value.
    let mut strings = DeviceStrings {
        read_version: 0,
        ..cached.unwrap_or_default()
    };
    // Only a complete read is cached for good; after a failed one (a device that hangs up early) the
    // next connection tries again.
    let mut complete = true;
    for (uuid, slot) in [
        (profile::MANUFACTURER_NAME, &mut strings.manufacturer),
        (profile::MODEL_NUMBER, &mut strings.model),
        (profile::SERIAL_NUMBER, &mut strings.serial_number),
        (profile::FIRMWARE_REVISION, &mut strings.firmware_revision),
        (profile::HARDWARE_REVISION, &mut strings.hardware_revision),
        (profile::SOFTWARE_REVISION, &mut strings.software_revision),
        (profile::SYSTEM_ID, &mut strings.system_id),
    ] {
        if let Some(characteristic) = characteristics.get(&uuid) {
            match peripheral.read(characteristic).await {
                Ok(bytes) if uuid == profile::SYSTEM_ID => {
                    match crate::decode::device_information::decode_system_id(&bytes) {
                        Ok(id) => *slot = Some(id.eui64()),
                        Err(error) => {
                            tracing::debug!(%address, %error, "System ID not understood.")
                        }
                    }
                }
                Ok(bytes) => {
                    let text = crate::decode::device_information::decode_string(&bytes);
                    if !text.is_empty() {
                        *slot = Some(text);
                    }
                }
                Err(error) => {
                    complete = false;
                    tracing::debug!(%address, %uuid, %error, "Device Information read failed.")
                }
            }
        }
    }
    if complete {
        strings.read_version = crate::state::devices::DEVICE_STRINGS_VERSION;
    }
    update(devices, address, |device| {
        device.information = Some(strings.clone())
    });
    strings
}

/// Reads the device clock against the hub's (a coincident time stamp), then sets it, on the
/// characteristic the core chose ([`session_core::clock_plan`]) and as its [`ClockPlan`]'s `ClockSync`
/// decides: only while the hub trusts its own clock. A refused write is logged, not fatal.
async fn sync_clock(
    peripheral: &Peripheral,
    address: &str,
    devices: &SharedDevices,
    characteristics: &HashMap<Uuid, Characteristic>,
    plan: Option<ClockPlan>,
) -> Option<DeviceClockCheck> {
    let ClockPlan {
        mut sync,
        characteristic,
        read,
    } = plan?;
    let target = characteristics.get(&characteristic)?;
    if read {
        let hub = crate::clock::hub_now();
        let hub_local = crate::clock::now_local().naive_local();
        if let Ok(bytes) = peripheral.read(target).await {
            if let Some(found) = sync.handle_read(&bytes, hub.wall, hub_local, hub.clock) {
                let checked = DeviceNote::ClockChecked {
                    found,
                    at: hub.wall,
                };
                note(devices, address, Some(checked));
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
                    note(devices, address, Some(DeviceNote::ClockSet));
                }
                Err(error) => {
                    tracing::warn!(%address, %error, "The device refused the time write; its time stamps are checked against the hub's.")
                }
            }
        }
    }
    sync.check()
}

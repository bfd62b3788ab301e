//! The Bluetooth transport: scans for bound devices on the configured adapter, runs a session with each
//! when it advertises, decodes advertisement-only devices, and recovers by itself from a powered-off
//! adapter or a restarted bluetoothd.
//!
//! `profile` is the pure table of what is read; `session_core` is a connection's decisions, sans-IO;
//! `session` is one connection, moving bytes and events between the device and that core; `bluez` is
//! what btleplug lacks (the pairing agent, `Pair`, `RemoveDevice`, watching `org.bluez`).

pub mod bluez;
pub mod operations;
pub mod profile;
pub mod session;
pub mod session_core;

use std::collections::HashMap;
use std::time::Duration;

use btleplug::api::{Central, CentralEvent, CentralState, Manager as _, Peripheral as _};
use btleplug::platform::{Adapter, Manager, Peripheral, PeripheralId};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::model::payload::{DeviceIdentity, DeviceInfo};
use crate::outbox::OutboxHandle;
use crate::pipeline::{Decoding, DeviceSettings};
use crate::spot::SpotRule;
use crate::state::devices::Reach;
use session::{SessionEnd, SessionError, SessionSettings, SharedDevices};

const RETRY_MIN: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(120);
/// After a session that ended normally the device has said what it had; it will advertise again when it
/// has a new measurement.
const AFTER_SESSION: Duration = Duration::from_secs(5);
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// How often advert-driven last-seen times alone are written to the device list.
const SEEN_SAVE_INTERVAL: Duration = Duration::from_secs(600);
/// How long the scan may go without reporting a single advert before the daemon stops and starts it.
/// BlueZ 5.66 can leave a client's discovery registered while the controller no longer scans: when a
/// restart of the scan fails while another client's start waits on it, the failure removes that client
/// and schedules no retry (seen in the real-BlueZ suite, `bluetoothctl scan on` beside the daemon). Its
/// `StartDiscovery` then still answers "in progress", so only the silence shows it. A scan that hears
/// nothing for a minute costs a restart; a wedged one would cost every reading until the hub restarted.
const SCAN_SILENCE_RESTART: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct BleSettings {
    pub adapter: String,
    pub hub_id: String,
    pub formats: crate::pipeline::Formats,
    pub spot: SpotRule,
}

#[derive(Debug, thiserror::Error)]
enum StackError {
    #[error("Bluetooth: {0}")]
    Ble(#[from] btleplug::Error),
    #[error("no Bluetooth adapter named {0}")]
    NoAdapter(String),
    #[error(transparent)]
    Bluez(#[from] bluez::BluezError),
    #[error("the outbox worker is gone")]
    OutboxGone,
}

/// Why the stack was torn down.
enum Restart {
    /// bluetoothd went away or came back.
    BluezRestarted,
    Shutdown,
}

/// Runs until `shutdown`; only a gone outbox worker ends it early.
pub async fn run(
    settings: BleSettings,
    devices: SharedDevices,
    outbox: OutboxHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), crate::outbox::worker::WorkerGone> {
    let mut delay = RETRY_MIN;
    loop {
        match run_stack(&settings, &devices, &outbox, &mut shutdown).await {
            Ok(Restart::Shutdown) => return Ok(()),
            Ok(Restart::BluezRestarted) => {
                tracing::warn!("bluetoothd restarted; rebuilding the Bluetooth stack.");
                delay = RETRY_MIN;
            }
            Err(StackError::OutboxGone) => return Err(crate::outbox::worker::WorkerGone),
            Err(error) => {
                tracing::warn!(%error, retry_in_s = delay.as_secs(), "Bluetooth is not available; retrying.");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return Ok(()),
        }
        delay = (delay * 2).min(RETRY_MAX);
    }
}

/// The adapter with this name (`hci0`); `None` when there is none.
pub async fn find_adapter(name: &str) -> Result<Option<Adapter>, btleplug::Error> {
    let manager = Manager::new().await?;
    for adapter in manager.adapters().await? {
        // btleplug lists adapters in no fixed order; its info starts with the adapter's name.
        let info = adapter.adapter_info().await?;
        if info.split_whitespace().next() == Some(name) {
            return Ok(Some(adapter));
        }
    }
    Ok(None)
}

/// The decoding channel for one protocol of a bound device, named `ble:ADDRESS` in payloads.
pub(crate) fn decoding_for(
    address: &str,
    protocol: crate::decode::Protocol,
    information: &crate::state::devices::DeviceStrings,
    hub_id: &str,
    formats: &crate::pipeline::Formats,
    spot: SpotRule,
) -> Decoding {
    Decoding::new(
        DeviceSettings {
            hub_id: hub_id.to_string(),
            formats: formats.clone(),
            device: DeviceInfo {
                id: format!("ble:{address}"),
                transport: protocol.transport(),
                protocol: protocol.name(),
                identity: DeviceIdentity {
                    manufacturer: information.manufacturer.clone(),
                    model: information.model.clone(),
                    serial_number: information.serial_number.clone(),
                    system_id: information.system_id.clone(),
                    address: Some(address.to_string()),
                    firmware: information.firmware_revision.clone(),
                    hardware: information.hardware_revision.clone(),
                    software: information.software_revision.clone(),
                },
                specialization: Some(protocol.specialization()),
            },
            protocol,
            spot,
            time_zone: &chrono::Local,
        },
        None,
    )
}

/// What a future in the supervisor's set of device work ended with.
enum Work {
    Session(Result<SessionEnd, SessionError>),
    Paired(Result<(), bluez::BluezError>),
}

type Pending<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (String, Work)> + Send + 'a>>;

/// How many links to a bonded device, each tried on one of its adverts, must be aborted while being set
/// up, with no working session between them, before the hub concludes that the device forgot the bond.
/// BlueZ 5.66 reports a refused key only as an aborted link ([`bluez::means_aborted_link`]), which a
/// device walking away mid-connect can also cause once; removing a good bond would cost a technician's
/// visit. Attempts that failed otherwise (cancelled, timed out, a link that stood seconds before it went
/// down) say nothing about the bond: with the real stack they came between a lost bond's aborted links,
/// so they neither count nor break the run.
const ABORTED_LINKS_FOR_LOST_BOND: u32 = 3;

/// Counts each bonded device's aborted links since its last working session.
#[derive(Default)]
struct AbortedLinks {
    in_a_row: HashMap<String, u32>,
}

impl AbortedLinks {
    /// Counts an aborted link; true when it makes the lost bond the likely cause (the count restarts).
    fn aborted(&mut self, address: &str, bonded: bool) -> bool {
        if !bonded {
            self.in_a_row.remove(address);
            return false;
        }
        let count = self.in_a_row.entry(address.to_string()).or_default();
        *count += 1;
        if *count >= ABORTED_LINKS_FOR_LOST_BOND {
            self.in_a_row.remove(address);
            return true;
        }
        false
    }

    /// A session that worked (or ended in a way that shows the link did) breaks the run.
    fn worked(&mut self, address: &str) {
        self.in_a_row.remove(address);
    }
}

/// When each bound device may be tried again.
#[derive(Default)]
struct Backoff {
    next: HashMap<String, (Instant, Duration)>,
}

impl Backoff {
    fn ready(&self, address: &str) -> bool {
        self.next
            .get(address)
            .is_none_or(|(at, _)| Instant::now() >= *at)
    }

    fn succeeded(&mut self, address: &str) {
        self.next.insert(
            address.to_string(),
            (Instant::now() + AFTER_SESSION, RETRY_MIN),
        );
    }

    fn retry_soon(&mut self, address: &str) {
        self.next
            .insert(address.to_string(), (Instant::now(), RETRY_MIN));
    }

    fn failed(&mut self, address: &str) -> Duration {
        let previous = self.next.get(address).map_or(RETRY_MIN / 2, |(_, d)| *d);
        let delay = (previous * 2).min(RETRY_MAX);
        let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 4));
        self.next.insert(
            address.to_string(),
            (Instant::now() + delay + jitter, delay),
        );
        delay + jitter
    }
}

async fn run_stack(
    settings: &BleSettings,
    devices: &SharedDevices,
    outbox: &OutboxHandle,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Restart, StackError> {
    let adapter = find_adapter(&settings.adapter)
        .await?
        .ok_or_else(|| StackError::NoAdapter(settings.adapter.clone()))?;
    let bluez = bluez::Bluez::connect(&settings.adapter).await?;
    let mut events = adapter.events().await?;
    let mut unfiltered = advertisement_only_bound(devices);
    // The scan is this connection's, not btleplug's, so the daemon can ask BlueZ whether it still runs
    // (`keep_scanning`); btleplug's events come from BlueZ's signals whoever scans.
    bluez
        .start_scan(&profile::discovery_services(unfiltered))
        .await?;
    tracing::info!(adapter = %settings.adapter, bound = devices.lock().unwrap().all().len(), "Bluetooth scanning.");
    let session_settings = SessionSettings {
        hub_id: settings.hub_id.clone(),
        formats: settings.formats.clone(),
        spot: settings.spot,
    };
    let owner_changed = bluez.owner_changed();
    tokio::pin!(owner_changed);
    let mut sessions: FuturesUnordered<Pending<'_>> = FuturesUnordered::new();
    let mut in_session: Vec<String> = Vec::new();
    let mut backoff = Backoff::default();
    let mut aborted_links = AbortedLinks::default();
    let mut advertisement_decoders: HashMap<(String, crate::decode::Protocol), Decoding> =
        HashMap::new();
    let mut housekeeping = crate::clock::every(HOUSEKEEPING);
    let mut dirty = false;
    // Last-seen times change with every advert; they are written with the next real change, or every
    // SEEN_SAVE_INTERVAL, not every few seconds (an fsync each time wears a hub's SD card).
    let mut seen_changed = false;
    let mut last_save = Instant::now();
    let mut powered_off = false;
    let mut last_advert = Instant::now();
    let outcome = loop {
        tokio::select! {
            event = events.next() => {
                let Some(event) = event else { break Restart::BluezRestarted };
                if heard_an_advert(&event) {
                    last_advert = Instant::now();
                }
                let (id, service_data) = match event {
                    CentralEvent::DeviceDiscovered(id)
                    | CentralEvent::DeviceUpdated(id)
                    | CentralEvent::RssiUpdate { id, .. }
                    | CentralEvent::ServicesAdvertisement { id, .. }
                    | CentralEvent::ManufacturerDataAdvertisement { id, .. } => (id, None),
                    CentralEvent::ServiceDataAdvertisement { id, service_data } => (id, Some(service_data)),
                    CentralEvent::StateUpdate(CentralState::PoweredOff) => {
                        if !powered_off {
                            tracing::warn!(adapter = %settings.adapter, "The Bluetooth adapter was powered off.");
                        }
                        powered_off = true;
                        continue;
                    }
                    // Only a change matters: restarting the scan sets Powered again, which some BlueZ
                    // builds signal even when it was already on.
                    CentralEvent::StateUpdate(CentralState::PoweredOn) if powered_off => {
                        // The signal may be an old one, queued before the look that found the adapter off
                        // (the scan's start sets Powered): only the adapter's state now says it is on.
                        if !matches!(adapter.adapter_state().await, Ok(CentralState::PoweredOn)) {
                            continue;
                        }
                        powered_off = false;
                        tracing::info!(adapter = %settings.adapter, "The Bluetooth adapter is on again; scanning.");
                        restart_scan(&bluez, unfiltered).await;
                        continue;
                    }
                    _ => continue,
                };
                let Some((peripheral, address)) = bound_peripheral(&adapter, &id, devices).await else { continue };
                let reach = {
                    let mut list = devices.lock().unwrap();
                    let Some(device) = list.get_mut(&address) else { continue };
                    device.last_seen = Some(crate::clock::now_utc());
                    seen_changed = true;
                    if device.needs_repairing { continue; }
                    device.reach
                };
                match reach {
                    Reach::Advertisement => {
                        let data = match service_data {
                            Some(data) => data,
                            None => peripheral.properties().await.ok().flatten().map(|p| p.service_data).unwrap_or_default(),
                        };
                        for (service, bytes) in data {
                            let Some(protocol) = profile::advertisement_protocol(service, &bytes) else { continue };
                            let decoding = advertisement_decoders.entry((address.clone(), protocol)).or_insert_with(|| {
                                decoding_for(&address, protocol, &Default::default(), &settings.hub_id, &settings.formats, settings.spot)
                            });
                            let received = crate::clock::hub_now();
                            let received_at = received.wall;
                            let records: Vec<_> = decoding.feed(&bytes, &received).into_iter().flat_map(|(records, _)| records).collect();
                            // The scan loop must not wait for a full disk (the sessions and the shutdown
                            // run in it). A scale repeats its advertisement for a while; a fresh decoder
                            // takes the repeat, which the old one would skip as already reported.
                            if !records.is_empty() {
                                if outbox.try_append_counted(records, decoding.take_counter_deltas()).map_err(|_| StackError::OutboxGone)? {
                                    if let Some(device) = devices.lock().unwrap().get_mut(&address) {
                                        device.last_reading_at = Some(received_at);
                                    }
                                } else {
                                    tracing::debug!(%address, "The outbox cannot take an advertised reading now.");
                                    advertisement_decoders.remove(&(address.clone(), protocol));
                                }
                            }
                        }
                    }
                    Reach::Connect => {
                        if in_session.contains(&address) || !backoff.ready(&address) {
                            continue;
                        }
                        in_session.push(address.clone());
                        let devices = devices.clone();
                        let outbox = outbox.clone();
                        let mut shutdown = shutdown.clone();
                        let session_settings = &session_settings;
                        let adapter = &adapter;
                        let work: Pending<'_> = Box::pin(async move {
                            let result = session::run(adapter, &peripheral, &address, &devices, &outbox, session_settings, &mut shutdown).await;
                            (address, Work::Session(result))
                        });
                        sessions.push(work);
                    }
                }
            }
            Some((address, work)) = sessions.next(), if !sessions.is_empty() => {
                in_session.retain(|a| *a != address);
                let result = match work {
                    Work::Session(result) => result,
                    Work::Paired(Ok(())) => {
                        tracing::info!(%address, "Paired through the hub's agent; reading it when it next advertises.");
                        if let Some(device) = devices.lock().unwrap().get_mut(&address) {
                            device.bonded = true;
                        }
                        dirty = true;
                        backoff.retry_soon(&address);
                        continue;
                    }
                    Work::Paired(Err(error)) => {
                        let retry = backoff.failed(&address);
                        tracing::warn!(%address, %error, retry_in_s = retry.as_secs(), "The device requires pairing and the hub could not pair it; run `vitalsd pair` for it.");
                        continue;
                    }
                };
                let bonded = devices.lock().unwrap().get(&address).is_some_and(|device| device.bonded);
                let lost_bond = match &result {
                    Err(SessionError::BondLost) => true,
                    Err(SessionError::LinkAborted(_)) => aborted_links.aborted(&address, bonded),
                    Err(SessionError::Timeout(_) | SessionError::LinkDropped(_)) => false,
                    Err(SessionError::Ble(error)) if bluez::means_failed_connect(&error.to_string()) => false,
                    _ => {
                        aborted_links.worked(&address);
                        false
                    }
                };
                match result {
                    Ok(SessionEnd::Finished { readings }) => {
                        tracing::info!(%address, readings, "Device session finished.");
                        backoff.succeeded(&address);
                    }
                    Ok(SessionEnd::Shutdown) => {}
                    Err(SessionError::OutboxGone) => return Err(StackError::OutboxGone),
                    Err(SessionError::BondLost | SessionError::LinkAborted(_)) if lost_bond => {
                        tracing::error!(%address, "The device lost its bond (it refused the hub's keys). The hub removed its own bond; pair it again with `vitalsd pair {address}`.", address = address);
                        if let Err(error) = bluez.remove_device(&address).await {
                            tracing::warn!(%address, %error, "Could not remove the stale bond.");
                        }
                        if let Some(device) = devices.lock().unwrap().get_mut(&address) {
                            device.needs_repairing = true;
                            device.bonded = false;
                        }
                        dirty = true;
                    }
                    // A bound device whose bond the hub no longer holds (cleared by hand, or never made):
                    // the technician already chose it, so the hub pairs it through its own agent, once per
                    // backoff step, without stalling the other sessions.
                    Err(SessionError::NeedsPairing(reason)) => {
                        tracing::warn!(%address, %reason, "The device requires pairing; pairing it through the hub's agent.");
                        in_session.push(address.clone());
                        let bluez = &bluez;
                        let work: Pending<'_> = Box::pin(async move {
                            let paired = match bluez.register_agent().await {
                                Ok(()) => bluez.pair(&address, bluez::PasskeySource::Nobody).await,
                                Err(error) => Err(error),
                            };
                            (address, Work::Paired(paired))
                        });
                        sessions.push(work);
                    }
                    Err(error) => {
                        let retry = backoff.failed(&address);
                        tracing::info!(%address, %error, retry_in_s = retry.as_secs(), "Device session failed; retrying when it advertises.");
                    }
                }
            }
            _ = housekeeping.tick() => {
                if dirty || (seen_changed && last_save.elapsed() >= SEEN_SAVE_INTERVAL) {
                    dirty = false;
                    seen_changed = false;
                    last_save = Instant::now();
                    if let Err(error) = devices.lock().unwrap().save() {
                        tracing::error!(%error, "Cannot save the device list.");
                    }
                }
                // The poll can see the adapter off before its signal arrives, and the scan restarted
                // here powers it on again: the operator must hear of the outage either way.
                if matches!(adapter.adapter_state().await, Ok(CentralState::PoweredOff)) {
                    if !powered_off {
                        tracing::warn!(adapter = %settings.adapter, "The Bluetooth adapter was powered off.");
                    }
                    powered_off = true;
                    restart_scan(&bluez, unfiltered).await;
                } else if !powered_off && last_advert.elapsed() >= SCAN_SILENCE_RESTART {
                    tracing::debug!(silent_s = last_advert.elapsed().as_secs(), "No advert heard; restarting the scan in case BlueZ stopped it.");
                    let _ = bluez.stop_scan().await;
                    restart_scan(&bluez, unfiltered).await;
                    last_advert = Instant::now();
                } else if !powered_off {
                    keep_scanning(&bluez, unfiltered).await;
                }
                // A scale bound (or unbound) through the running daemon changes what the scan must see.
                if advertisement_only_bound(devices) != unfiltered {
                    unfiltered = !unfiltered;
                    tracing::info!(unfiltered, "Scanning again with the discovery filter the bound devices need.");
                    let _ = bluez.stop_scan().await;
                    restart_scan(&bluez, unfiltered).await;
                }
                for decoding in advertisement_decoders.values_mut() {
                    crate::hand_over::flush_counters(decoding, outbox).await.map_err(|_| StackError::OutboxGone)?;
                }
            }
            _ = &mut owner_changed => break Restart::BluezRestarted,
            _ = shutdown.changed() => break Restart::Shutdown,
        }
    };
    // Let running sessions see the shutdown and hand over what they decoded.
    while let Some((_, work)) = sessions.next().await {
        if let Work::Session(Err(SessionError::OutboxGone)) = work {
            return Err(StackError::OutboxGone);
        }
    }
    let _ = bluez.stop_scan().await;
    if let Err(error) = devices.lock().unwrap().save() {
        tracing::error!(%error, "Cannot save the device list.");
    }
    Ok(outcome)
}

/// Whether an advertisement-only device is bound, so the scan must not filter by service UUIDs
/// ([`profile::discovery_services`]).
fn advertisement_only_bound(devices: &SharedDevices) -> bool {
    devices
        .lock()
        .unwrap()
        .all()
        .iter()
        .any(|device| device.reach == Reach::Advertisement)
}

/// Whether the event comes from an advert the scan reported (a property change of a connected device
/// does not show that the controller scans).
fn heard_an_advert(event: &CentralEvent) -> bool {
    matches!(
        event,
        CentralEvent::DeviceDiscovered(_)
            | CentralEvent::RssiUpdate { .. }
            | CentralEvent::ServicesAdvertisement { .. }
            | CentralEvent::ManufacturerDataAdvertisement { .. }
            | CentralEvent::ServiceDataAdvertisement { .. }
    )
}

/// Starting a scan also asks BlueZ to power the adapter; it fails quietly while the adapter stays off.
async fn restart_scan(bluez: &bluez::Bluez, unfiltered: bool) {
    let services = profile::discovery_services(unfiltered);
    if let Err(error) = bluez.start_scan(&services).await {
        tracing::debug!(%error, "Scan not restarted yet.");
    }
}

/// Starts the scan again if BlueZ dropped it without a signal (see `Bluez::keep_scanning`): without it
/// the hub would never hear a device again until it restarted.
async fn keep_scanning(bluez: &bluez::Bluez, unfiltered: bool) {
    match bluez
        .keep_scanning(&profile::discovery_services(unfiltered))
        .await
    {
        Ok(bluez::ScanState::Running) => {}
        Ok(bluez::ScanState::Restarted) => tracing::warn!(
            "BlueZ had stopped the hub's Bluetooth scan without notice (another program's scan can do \
             this); scanning again."
        ),
        Ok(bluez::ScanState::RegisteredButNotDiscovering) => {
            tracing::warn!(
                "BlueZ counts the hub's Bluetooth scan as running while the adapter does not discover \
                 (another program's scan can do this); starting it again."
            );
            let _ = bluez.stop_scan().await;
            restart_scan(bluez, unfiltered).await;
        }
        Err(error) => tracing::debug!(%error, "Could not check the scan."),
    }
}

/// The peripheral and its normalised address, only when the device is bound. The address comes from the
/// BlueZ object path in the id, so the many adverts of devices that are not bound cost no D-Bus call.
async fn bound_peripheral(
    adapter: &Adapter,
    id: &PeripheralId,
    devices: &SharedDevices,
) -> Option<(Peripheral, String)> {
    let address = address_of(&id.to_string())?;
    if !devices.lock().unwrap().is_bound(&address) {
        return None;
    }
    let peripheral = adapter.peripheral(id).await.ok()?;
    Some((peripheral, address))
}

/// `hci0/dev_AA_BB_CC_DD_EE_01` (a peripheral id: the object path under `/org/bluez/`) → `AA:BB:CC:DD:EE:01`.
fn address_of(peripheral_id: &str) -> Option<String> {
    let (_, device) = peripheral_id.rsplit_once("/dev_")?;
    crate::state::devices::normalise_address(device).ok()
}

#[cfg(test)]
mod tests {
    use super::{address_of, AbortedLinks};

    /// Feeds session outcomes for one device, `A` an aborted link while bonded, `a` one while not bonded,
    /// `f` an attempt that failed otherwise (no count), `o` a session that worked; `expected` lists where
    /// the hub concludes the bond is lost.
    #[track_caller]
    fn check(outcomes: &str, expected: &str) {
        let mut links = AbortedLinks::default();
        let verdicts: String = outcomes
            .chars()
            .map(|outcome| {
                let lost = match outcome {
                    'A' => links.aborted("AA:BB:CC:DD:EE:01", true),
                    'a' => links.aborted("AA:BB:CC:DD:EE:01", false),
                    'f' => false,
                    _ => {
                        links.worked("AA:BB:CC:DD:EE:01");
                        false
                    }
                };
                if lost {
                    'L'
                } else {
                    '.'
                }
            })
            .collect();
        assert_eq!(verdicts, expected, "outcomes {outcomes}");
    }

    #[test]
    fn a_lost_bond_is_concluded_from_aborted_links_in_a_row() {
        check("AAA", "..L");
        check("AA", "..");
        check("AAoAA", ".....");
        check("AAaA", "....");
        check("AAAAAA", "..L..L");
        check("aaaa", "....");
        check("oAAA", "...L");
        check("AfAfA", "....L");
        check("AffAoA", "......");
    }

    #[test]
    fn addresses_come_from_the_object_path() {
        assert_eq!(
            address_of("hci0/dev_AA_BB_CC_DD_EE_01").as_deref(),
            Some("AA:BB:CC:DD:EE:01")
        );
        assert_eq!(
            address_of("/org/bluez/hci1/dev_aa_bb_cc_dd_ee_0f").as_deref(),
            Some("AA:BB:CC:DD:EE:0F")
        );
        assert_eq!(address_of("hci0"), None);
        assert_eq!(address_of("hci0/dev_AA_BB"), None);
    }
}

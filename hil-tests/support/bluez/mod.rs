//! A simulated BlueZ: owns `org.bluez` on a private `dbus-daemon` that each test starts, and serves the
//! D-Bus surface btleplug and our pairing agent use, over simulated health devices that a test controls.
//!
//! The daemon under test reaches it through `DBUS_SYSTEM_BUS_ADDRESS`, so everything between the
//! daemon's BLE code and "the radio" is real: libdbus, btleplug, zbus, the bus daemon.

mod behaviour;
pub mod devices;
mod objects;
mod state;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::Connection;

pub use objects::{device_path, ADAPTER_PATH};
pub use state::{uuid16, DeviceState, SimState};

use objects::{Adapter, AgentManager, Characteristic, Device, Service};

/// A running simulator: the private bus, the connection that owns `org.bluez`, and the device state.
pub struct BluezSim {
    runtime: tokio::runtime::Runtime,
    bus_pid: i32,
    address: String,
    state: Arc<Mutex<SimState>>,
    connection: Mutex<Option<Connection>>,
    /// The advertising ticker and the watcher of clients leaving the bus, ended with bluetoothd.
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl BluezSim {
    /// Starts a private bus and a powered adapter `hci0` with no devices.
    pub fn start() -> BluezSim {
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--print-address=1", "--print-pid=1", "--fork", "--nosyslog"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start dbus-daemon ({error}); install it with `apt-get install dbus-daemon`")
            });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = lines.next().unwrap().unwrap().trim().to_string();
        let bus_pid: i32 = lines.next().unwrap().unwrap().trim().parse().unwrap();
        let _ = child.wait();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let state = Arc::new(Mutex::new(SimState {
            powered: true,
            ..SimState::default()
        }));
        let sim = BluezSim {
            runtime,
            bus_pid,
            address,
            state,
            connection: Mutex::new(None),
            tasks: Mutex::new(Vec::new()),
        };
        sim.bring_up();
        sim
    }

    /// The address to give the daemon as `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn bus_address(&self) -> &str {
        &self.address
    }

    fn bring_up(&self) {
        let state = self.state.clone();
        let address = self.address.clone();
        let connection = self.runtime.block_on(async move {
            let connection = zbus::connection::Builder::address(address.as_str())
                .unwrap()
                .serve_at("/", zbus::fdo::ObjectManager)
                .unwrap()
                .serve_at(
                    "/org/bluez",
                    AgentManager {
                        state: state.clone(),
                    },
                )
                .unwrap()
                .serve_at(
                    ADAPTER_PATH,
                    Adapter {
                        state: state.clone(),
                    },
                )
                .unwrap()
                .build()
                .await
                .unwrap();
            // A starting bluetoothd knows the devices it holds bonds for; the others appear when a scan
            // hears them again.
            let addresses: Vec<String> = state
                .lock()
                .unwrap()
                .devices
                .iter()
                .filter(|(_, device)| device.paired)
                .map(|(address, _)| address.clone())
                .collect();
            for address in addresses {
                export_device(&connection, &state, &address).await;
            }
            connection.request_name("org.bluez").await.unwrap();
            connection
        });
        *self.connection.lock().unwrap() = Some(connection.clone());
        let state = self.state.clone();
        let watcher = self
            .runtime
            .spawn(watch_clients(connection.clone(), state.clone()));
        let ticker = self.runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                advertise(&connection, &state).await;
            }
        });
        *self.tasks.lock().unwrap() = vec![ticker, watcher];
    }

    fn stop_tasks(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn connection(&self) -> Connection {
        self.connection
            .lock()
            .unwrap()
            .clone()
            .expect("bluetoothd is down")
    }

    /// Adds a device, in range and advertising.
    pub fn add_device(&self, address: &str, device: DeviceState) {
        self.state
            .lock()
            .unwrap()
            .devices
            .insert(address.to_string(), device);
        let connection = self.connection();
        let state = self.state.clone();
        let address = address.to_string();
        self.runtime
            .block_on(async move { export_device(&connection, &state, &address).await });
    }

    /// Reads or changes the simulated state; property signals are the caller's business (see `emit`).
    pub fn with<T>(&self, act: impl FnOnce(&mut SimState) -> T) -> T {
        act(&mut self.state.lock().unwrap())
    }

    pub fn device<T>(&self, address: &str, act: impl FnOnce(&mut DeviceState) -> T) -> T {
        act(self
            .state
            .lock()
            .unwrap()
            .devices
            .get_mut(address)
            .expect("no such device"))
    }

    /// Adds stored records to a device's measurement characteristic, delivered on the next subscription.
    pub fn store_records(&self, address: &str, characteristic: u16, records: &[Vec<u8>]) {
        self.device(address, |device| {
            device
                .stored
                .entry(uuid16(characteristic))
                .or_default()
                .extend(records.iter().cloned())
        });
    }

    /// Sends a notification now (a live measurement), if the hub is subscribed; returns whether it was sent.
    pub fn notify(&self, address: &str, characteristic: u16, value: &[u8]) -> bool {
        let connection = self.connection();
        let state = self.state.clone();
        self.runtime.block_on(notify(
            &connection,
            &state,
            address,
            &uuid16(characteristic),
            value,
        ))
    }

    /// Replaces a device's advertised service data (Xiaomi scales put their measurement there). While
    /// the hub scans, BlueZ reports it with the next advert it hears; while nothing scans, the device is
    /// taken to have been heard with it by an earlier scan (BlueZ keeps what it heard last).
    pub fn advertise_service_data(&self, address: &str, service: u16, data: &[u8]) {
        self.with(|state| {
            let discovering = state.discovering;
            let device = state.devices.get_mut(address).expect("no such device");
            device.service_data.insert(uuid16(service), data.to_vec());
            if !discovering {
                device.reported_service_data = device.service_data.clone();
            }
        });
    }

    pub fn set_in_range(&self, address: &str, in_range: bool) {
        self.device(address, |device| device.in_range = in_range);
    }

    /// Drops the link from the device's side.
    pub fn disconnect(&self, address: &str) {
        let connection = self.connection();
        let state = self.state.clone();
        let address = address.to_string();
        self.runtime
            .block_on(async move { set_connected(&connection, &state, &address, false).await });
    }

    /// Switches the adapter off (as rfkill would) or back on.
    pub fn set_powered(&self, powered: bool) {
        self.set_powered_unsignalled(powered);
        self.signal_powered();
    }

    /// Switches the adapter off or on without signalling it yet ([`BluezSim::signal_powered`] does): a
    /// client polling the adapter meanwhile sees the new state before the signal (the real stack's order
    /// on a busy hub).
    pub fn set_powered_unsignalled(&self, powered: bool) {
        let addresses: Vec<String> = self.with(|state| {
            state.powered = powered;
            state.power_locked_off = !powered;
            if !powered {
                // BlueZ frees every discovery client with its filter: a scanner must set both again.
                state.end_discovery();
            }
            state
                .devices
                .iter()
                .filter(|(_, d)| d.connected)
                .map(|(a, _)| a.clone())
                .collect()
        });
        for address in addresses {
            self.disconnect(&address);
        }
    }

    /// Forgets every client's discovery without a signal, keeping their filters and `Discovering`, as
    /// BlueZ 5.66 forgets a client whose `StartDiscovery` overtook another's `StopDiscovery` (the stop's
    /// completion removes the newcomer; the stopping client stays, so the adapter still discovers).
    pub fn forget_discovery_clients(&self) {
        self.with(|state| state.discovery_clients.clear());
    }

    /// Stops the controller's scan while every client stays registered as discovering, without a signal
    /// (BlueZ 5.66 after a restart of the scan failed while another client's start waited on it): a
    /// client's `StartDiscovery` is refused as in progress, and only a stop and a start scan again.
    pub fn wedge_discovery(&self) {
        self.with(|state| state.discovery_wedged = true);
    }

    /// Ends the controller's scan and signals `Discovering` false while every client stays registered as
    /// discovering (BlueZ 5.66 when another client's stop of the scan completed after a newcomer's start
    /// had matched the running filter and been answered at once): a client's `StartDiscovery` is refused
    /// as in progress, and only a stop and a start scan again.
    pub fn end_scan_keeping_clients(&self) {
        self.with(|state| state.discovering = false);
        self.signal_powered();
    }

    /// Signals the adapter's `Powered` and `Discovering` as they are now.
    pub fn signal_powered(&self) {
        let connection = self.connection();
        self.runtime.block_on(async move {
            let adapter = connection
                .object_server()
                .interface::<_, Adapter>(ADAPTER_PATH)
                .await
                .unwrap();
            let _ = adapter
                .get()
                .await
                .powered_changed(adapter.signal_emitter())
                .await;
            let _ = adapter
                .get()
                .await
                .discovering_changed(adapter.signal_emitter())
                .await;
        });
    }

    /// Simulates a bluetoothd restart: the `org.bluez` owner goes away with all its objects, and a new
    /// owner with a new unique name comes back with the adapter and the devices it knows.
    pub fn restart_bluetoothd(&self, down_for: Duration) {
        self.stop_tasks();
        let old = self.connection.lock().unwrap().take();
        self.with(|state| {
            state.end_discovery();
            state.agent = None;
            state.agents.clear();
            for device in state.devices.values_mut() {
                device.connected = false;
                device.services_resolved = false;
                device.exported = false;
                device.char_paths.clear();
                // Subscriptions live in bluetoothd's memory only.
                device.notifying.clear();
                device.subscriber = None;
                device.battery_plugin_subscribed = false;
                device.awaiting_hub_setup = false;
            }
        });
        if let Some(old) = old {
            self.runtime.block_on(async move {
                let _ = old.release_name("org.bluez").await;
                let _ = old.close().await;
            });
        }
        std::thread::sleep(down_for);
        self.bring_up();
    }

    /// Emits a PropertiesChanged for one Device1 property with its current value.
    pub fn emit_device(&self, address: &str, property: &str) {
        let connection = self.connection();
        let address = address.to_string();
        let property = property.to_string();
        self.runtime
            .block_on(async move { emit_device_property(&connection, &address, &property).await });
    }

    /// Every call a device received, in order (StartNotify, writes…), for assertions.
    pub fn calls(&self) -> Vec<String> {
        self.with(|state| state.calls.clone())
    }
}

impl Drop for BluezSim {
    fn drop(&mut self) {
        self.stop_tasks();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.bus_pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// One round of adverts from every device in range that is not connected, reported as BlueZ 5.66 does
/// while the adapter scans. With a filtered discovery (every discovering client set a filter, as btleplug
/// does) each report signals `RSSI`, even unchanged; without one only a change of 8 dBm or more does, so a
/// device that keeps advertising is not seen again. Service and manufacturer data are signalled when they
/// change: with `DuplicateData` bluetoothd would re-add them with every report, but in the rig the
/// controller filtered duplicate reports and bluetoothd got one per advert state. Only adverts the
/// discovery filters let through are reported (`reports_adverts_of`). A device BlueZ has no object for
/// (not bonded, not heard since bluetoothd started) appears with its first advert.
async fn advertise(connection: &Connection, state: &Arc<Mutex<SimState>>) {
    let mut heard: Vec<(String, bool, Vec<&'static str>)> = Vec::new();
    {
        let mut state = state.lock().unwrap();
        if !state.discovering || !state.powered || state.discovery_wedged {
            return;
        }
        let filtered = state.filtered_discovery();
        let reported: Vec<String> = state
            .devices
            .iter()
            .filter(|(_, device)| state.reports_adverts_of(device))
            .map(|(address, _)| address.clone())
            .collect();
        for (address, device) in state.devices.iter_mut() {
            if !device.in_range || device.connected || !reported.contains(address) {
                continue;
            }
            let mut signals = Vec::new();
            if filtered || (device.rssi - device.reported_rssi).abs() >= 8 {
                device.reported_rssi = device.rssi;
                signals.push("RSSI");
            }
            let changed = device.service_data != device.reported_service_data;
            if changed {
                device.reported_service_data = device.service_data.clone();
                signals.push("ServiceData");
            }
            let changed = device.manufacturer_data != device.reported_manufacturer_data;
            if changed {
                device.reported_manufacturer_data = device.manufacturer_data.clone();
                signals.push("ManufacturerData");
            }
            heard.push((address.clone(), device.exported, signals));
        }
    }
    for (address, exported, signals) in heard {
        if !exported {
            export_device(connection, state, &address).await;
            continue;
        }
        for signal in signals {
            emit_device_property(connection, &address, signal).await;
        }
    }
}

/// What BlueZ does when a client leaves the bus: it drops the client's agent, discovery (with its
/// filter) and notification subscriptions.
async fn watch_clients(connection: Connection, state: Arc<Mutex<SimState>>) {
    use futures_util::StreamExt;
    let Ok(dbus) = zbus::fdo::DBusProxy::new(&connection).await else {
        return;
    };
    let Ok(mut changes) = dbus.receive_name_owner_changed().await else {
        return;
    };
    while let Some(change) = changes.next().await {
        let Ok(args) = change.args() else { continue };
        if args.new_owner().is_some() {
            continue;
        }
        let gone = args.name().to_string();
        let stopped = {
            let mut state = state.lock().unwrap();
            if state
                .agent
                .as_ref()
                .is_some_and(|(owner, _, _)| *owner == gone)
            {
                state.agent = None;
            }
            for device in state.devices.values_mut() {
                if device.subscriber.as_deref() == Some(gone.as_str()) {
                    device.notifying.clear();
                    device.subscriber = None;
                }
            }
            state.stop_discovery_of(&gone)
        };
        if stopped {
            if let Ok(adapter) = connection
                .object_server()
                .interface::<_, Adapter>(ADAPTER_PATH)
                .await
            {
                let _ = adapter
                    .get()
                    .await
                    .discovering_changed(adapter.signal_emitter())
                    .await;
            }
        }
    }
}

pub(crate) async fn export_device(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
) {
    {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        if device.exported {
            return;
        }
        device.exported = true;
        // The object comes with what was heard in the advert that made it.
        device.reported_rssi = device.rssi;
        device.reported_service_data = device.service_data.clone();
        device.reported_manufacturer_data = device.manufacturer_data.clone();
    }
    let _ = connection
        .object_server()
        .at(
            device_path(address),
            Device {
                state: state.clone(),
                address: address.to_string(),
            },
        )
        .await;
}

pub(crate) async fn unexport_device(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
) {
    let char_paths: Vec<String> = {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        std::mem::take(&mut device.char_paths)
            .into_values()
            .collect()
    };
    let server = connection.object_server();
    let mut service_paths: Vec<String> = Vec::new();
    for path in char_paths {
        let _ = server.remove::<Characteristic, _>(path.as_str()).await;
        if let Some((service, _)) = path.rsplit_once('/') {
            if !service_paths.iter().any(|s| s == service) {
                service_paths.push(service.to_string());
            }
        }
    }
    for path in service_paths {
        let _ = server.remove::<Service, _>(path.as_str()).await;
    }
    let _ = server
        .remove::<Device, _>(device_path(address).as_str())
        .await;
    // A device still in range is found again, unpaired, by the next scan that hears it (`advertise`).
}

/// Exports the GATT objects of a device the first time it connects (BlueZ keeps them afterwards).
async fn export_gatt(connection: &Connection, state: &Arc<Mutex<SimState>>, address: &str) {
    let device_path = device_path(address);
    let characteristics = {
        let state = state.lock().unwrap();
        let device = &state.devices[address];
        if !device.char_paths.is_empty() {
            return;
        }
        device.characteristics.clone()
    };
    let server = connection.object_server();
    let mut services: Vec<String> = Vec::new();
    let mut paths = std::collections::HashMap::new();
    for (index, spec) in characteristics.iter().enumerate() {
        let service_index = match services.iter().position(|s| *s == spec.service) {
            Some(at) => at,
            None => {
                services.push(spec.service.clone());
                let at = services.len() - 1;
                let _ = server
                    .at(
                        format!("{device_path}/service{:04x}", 0x10 * (at + 1)),
                        Service {
                            uuid: spec.service.clone(),
                            device_path: device_path.clone(),
                        },
                    )
                    .await;
                at
            }
        };
        let service_path = format!("{device_path}/service{:04x}", 0x10 * (service_index + 1));
        let path = format!(
            "{service_path}/char{:04x}",
            0x10 * (service_index + 1) + index + 1
        );
        let _ = server
            .at(
                path.as_str(),
                Characteristic {
                    state: state.clone(),
                    address: address.to_string(),
                    uuid: spec.uuid.clone(),
                    service_path: service_path.clone(),
                    flags: spec.flags.iter().map(|f| f.to_string()).collect(),
                },
            )
            .await;
        paths.insert(spec.uuid.clone(), path);
    }
    state
        .lock()
        .unwrap()
        .devices
        .get_mut(address)
        .unwrap()
        .char_paths = paths;
}

pub(crate) async fn set_connected(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
    connected: bool,
) {
    if connected {
        connect(connection, state, address).await;
    } else {
        drop_link(connection, state, address).await;
    }
}

/// Drops the link (from either side).
pub(crate) async fn drop_link(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
) {
    {
        let mut state = state.lock().unwrap();
        let Some(device) = state.devices.get_mut(address) else {
            return;
        };
        if !device.connected {
            return;
        }
        device.connected = false;
        device.services_resolved = false;
        device.battery_plugin_subscribed = false;
        device.awaiting_hub_setup = false;
        // BlueZ keeps a bonded device's subscriptions for the next link; others end with this one.
        if !device.paired {
            device.notifying.clear();
            device.subscriber = None;
        }
    }
    emit_device_property(connection, address, "Connected").await;
    emit_device_property(connection, address, "ServicesResolved").await;
}

/// Brings the link up: `Connected`, the GATT objects, what BlueZ does by itself on a new link, then
/// `ServicesResolved`.
async fn connect(connection: &Connection, state: &Arc<Mutex<SimState>>, address: &str) {
    {
        let mut state = state.lock().unwrap();
        let Some(device) = state.devices.get_mut(address) else {
            return;
        };
        if device.connected {
            return;
        }
        device.connected = true;
        device.services_resolved = false;
    }
    emit_device_property(connection, address, "Connected").await;
    export_gatt(connection, state, address).await;
    let resubscribed: Vec<String> = {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        // The hub's battery plugin reads Battery Level on every link and subscribes to it itself;
        // neither reaches a D-Bus client (no `Value` signal).
        let battery = uuid16(0x2A19);
        if device.char_paths.contains_key(&battery) {
            device.reads.push(battery);
            device.battery_plugin_subscribed = true;
        }
        // For a bonded device BlueZ enables the subscriptions it holds again as soon as the link is
        // up ("Re-register subscribed notification client"), before services are resolved and
        // before the hub's code has done anything: a device that sends on "indications enabled"
        // sends now.
        let resubscribed: Vec<String> = if device.paired {
            device.notifying.iter().cloned().collect()
        } else {
            Vec::new()
        };
        for uuid in &resubscribed {
            device.calls.push(format!("CCC enabled by BlueZ {uuid}"));
        }
        device.awaiting_hub_setup = !resubscribed.is_empty();
        resubscribed
    };
    for uuid in resubscribed {
        if behaviour::sends_stored_records(&uuid) {
            behaviour::send_stored_records(connection, state, address, &uuid).await;
        }
    }
    let delay = state.lock().unwrap().devices[address].resolve_services_after;
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    let resolved = {
        let mut state = state.lock().unwrap();
        let device = state.devices.get_mut(address).unwrap();
        device.services_resolved = device.connected;
        device.services_resolved
    };
    if resolved || delay.is_none() {
        emit_device_property(connection, address, "ServicesResolved").await;
    }
}

/// A link that BlueZ reports up (and answers `Connect` for) and the kernel drops shortly after, before
/// the services are resolved, as when encryption with a forgotten bond's key fails.
pub(crate) async fn answer_then_drop_link(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
    stands: Duration,
) {
    if let Some(device) = state.lock().unwrap().devices.get_mut(address) {
        device.connected = true;
        device.services_resolved = false;
    }
    emit_device_property(connection, address, "Connected").await;
    let connection = connection.clone();
    let state = state.clone();
    let address = address.to_string();
    tokio::spawn(async move {
        tokio::time::sleep(stands).await;
        set_connected(&connection, &state, &address, false).await;
        let comes_back = state
            .lock()
            .unwrap()
            .devices
            .get(&address)
            .is_some_and(|device| device.lost_bond_link_comes_back);
        if comes_back {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(device) = state.lock().unwrap().devices.get_mut(&address) {
                device.connected = true;
            }
            emit_device_property(&connection, &address, "Connected").await;
        }
    });
}

/// A link that comes up and is dropped at once, before `Connect` returns its error: the kernel's
/// Device Connected and Disconnected both reach D-Bus.
pub(crate) async fn flash_link(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
) {
    for connected in [true, false] {
        state
            .lock()
            .unwrap()
            .devices
            .get_mut(address)
            .unwrap()
            .connected = connected;
        emit_device_property(connection, address, "Connected").await;
    }
}

/// Sends a characteristic value as a notification or indication: sets `Value` and signals it. Returns
/// false when the hub is not subscribed (or the link is down), as a real device could not send then.
pub(crate) async fn notify(
    connection: &Connection,
    state: &Arc<Mutex<SimState>>,
    address: &str,
    uuid: &str,
    value: &[u8],
) -> bool {
    let path = {
        let mut state = state.lock().unwrap();
        let Some(device) = state.devices.get_mut(address) else {
            return false;
        };
        if !device.connected {
            return false;
        }
        if !device.notifying.contains(uuid) {
            // Battery Level goes to the hub's battery plugin, never to a D-Bus client that did not
            // subscribe itself.
            return uuid == uuid16(0x2A19) && device.battery_plugin_subscribed;
        }
        device
            .last_notified
            .insert(uuid.to_string(), value.to_vec());
        device.char_paths.get(uuid).cloned()
    };
    let Some(path) = path else {
        return false;
    };
    let Ok(characteristic) = connection
        .object_server()
        .interface::<_, Characteristic>(path.as_str())
        .await
    else {
        return false;
    };
    let sent = characteristic
        .get()
        .await
        .value_changed(characteristic.signal_emitter())
        .await
        .is_ok();
    sent
}

pub(crate) async fn emit_device_property(connection: &Connection, address: &str, property: &str) {
    let Ok(device) = connection
        .object_server()
        .interface::<_, Device>(device_path(address).as_str())
        .await
    else {
        return;
    };
    let emitter = device.signal_emitter();
    let device = device.get().await;
    let _ = match property {
        "Connected" => device.connected_changed(emitter).await,
        "ServicesResolved" => device.services_resolved_changed(emitter).await,
        "Paired" => device.paired_changed(emitter).await,
        "RSSI" => device.r_s_s_i_changed(emitter).await,
        "ServiceData" => device.service_data_changed(emitter).await,
        "ManufacturerData" => device.manufacturer_data_changed(emitter).await,
        "Trusted" => device.trusted_changed(emitter).await,
        other => panic!("the simulator does not signal {other}"),
    };
}

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
    advertiser: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            advertiser: Mutex::new(None),
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
            let addresses: Vec<String> = state.lock().unwrap().devices.keys().cloned().collect();
            for address in addresses {
                export_device(&connection, &state, &address).await;
            }
            connection.request_name("org.bluez").await.unwrap();
            connection
        });
        *self.connection.lock().unwrap() = Some(connection.clone());
        let state = self.state.clone();
        let ticker = self.runtime.spawn(async move {
            let mut tick = 0i16;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                tick += 1;
                advertise(&connection, &state, tick).await;
            }
        });
        *self.advertiser.lock().unwrap() = Some(ticker);
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

    /// Replaces a device's advertised service data (Xiaomi scales put their measurement there); the
    /// change is signalled only if the discovery filter lets the device's adverts through.
    pub fn advertise_service_data(&self, address: &str, service: u16, data: &[u8]) {
        let reported = self.with(|state| {
            let uuids = state.filter_uuids.clone();
            let device = state.devices.get_mut(address).expect("no such device");
            device.service_data.insert(uuid16(service), data.to_vec());
            uuids.is_empty()
                || device
                    .advertised_services
                    .iter()
                    .any(|service| uuids.contains(service))
        });
        if reported {
            self.emit_device(address, "ServiceData");
        }
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
        let addresses: Vec<String> = self.with(|state| {
            state.powered = powered;
            state.power_locked_off = !powered;
            if !powered {
                state.discovering = false;
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
        if let Some(ticker) = self.advertiser.lock().unwrap().take() {
            ticker.abort();
        }
        let old = self.connection.lock().unwrap().take();
        self.with(|state| {
            state.discovering = false;
            state.agent = None;
            for device in state.devices.values_mut() {
                device.connected = false;
                device.services_resolved = false;
                device.exported = false;
                device.char_paths.clear();
                device.notifying.clear();
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
        if let Some(ticker) = self.advertiser.lock().unwrap().take() {
            ticker.abort();
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.bus_pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// Bumps the RSSI of every advertising device the discovery filter lets through, so btleplug sees
/// adverts while the hub scans.
async fn advertise(connection: &Connection, state: &Arc<Mutex<SimState>>, tick: i16) {
    let advertising: Vec<String> = {
        let mut state = state.lock().unwrap();
        if !state.discovering || !state.powered {
            return;
        }
        let uuids = state.filter_uuids.clone();
        state
            .devices
            .iter_mut()
            .filter(|(_, device)| device.in_range && device.exported && !device.connected)
            .filter(|(_, device)| {
                uuids.is_empty()
                    || device
                        .advertised_services
                        .iter()
                        .any(|service| uuids.contains(service))
            })
            .map(|(address, device)| {
                device.rssi = -60 - (tick % 2);
                address.clone()
            })
            .collect()
    };
    for address in advertising {
        emit_device_property(connection, &address, "RSSI").await;
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
    // A device still in range is found again by the next scan, unpaired.
    let in_range = state.lock().unwrap().devices[address].in_range;
    if in_range {
        export_device(connection, state, address).await;
    }
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
    {
        let mut state = state.lock().unwrap();
        let Some(device) = state.devices.get_mut(address) else {
            return;
        };
        if device.connected == connected {
            return;
        }
        device.connected = connected;
        device.services_resolved = false;
        if !connected {
            device.notifying.clear();
        }
    }
    emit_device_property(connection, address, "Connected").await;
    if connected {
        export_gatt(connection, state, address).await;
        state
            .lock()
            .unwrap()
            .devices
            .get_mut(address)
            .unwrap()
            .services_resolved = true;
    }
    emit_device_property(connection, address, "ServicesResolved").await;
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
        if !device.connected || !device.notifying.contains(uuid) {
            return false;
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

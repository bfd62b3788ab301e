//! The `org.bluez` D-Bus objects of the simulator: Adapter1, AgentManager1, Device1, GattService1 and
//! GattCharacteristic1, with BlueZ's object paths and property signals, over shared simulated state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

use super::state::{DeviceState, SimState};

pub const ADAPTER_PATH: &str = "/org/bluez/hci0";
/// How long a lost bond's link stands before the kernel drops it when BlueZ answers `Connect`.
pub const LOST_BOND_LINK_STANDS: Duration = Duration::from_millis(600);
/// How long a link stood unresolved before it went down, as the real stack's did after a restart.
pub const UNRESOLVED_LINK_STANDS: Duration = Duration::from_secs(4);

/// BlueZ's error names; bluez-async and our pairing code tell failures apart by them.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
pub enum BluezError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Failed(String),
    NotPermitted(String),
    NotReady(String),
    AuthenticationFailed(String),
    AuthenticationCanceled(String),
    InProgress(String),
    ConnectionAttemptFailed(String),
    AlreadyExists(String),
    DoesNotExist(String),
    NotConnected(String),
    InvalidArguments(String),
}

fn authentication_failed() -> BluezError {
    BluezError::AuthenticationFailed("Authentication Failed".into())
}

/// The unique bus name of a call's sender.
fn sender(header: &zbus::message::Header<'_>) -> String {
    header.sender().map(|s| s.to_string()).unwrap_or_default()
}

pub fn device_path(address: &str) -> String {
    format!("{ADAPTER_PATH}/dev_{}", address.replace(':', "_"))
}

pub struct Adapter {
    pub state: Arc<Mutex<SimState>>,
}

#[interface(name = "org.bluez.Adapter1")]
impl Adapter {
    async fn start_discovery(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        let started = {
            let mut state = self.state.lock().unwrap();
            if !state.powered {
                return Err(BluezError::NotReady("Resource Not Ready".into()));
            }
            // Only a start that starts is named "StartDiscovery": the daemon asks again every few
            // seconds to learn whether its scan still runs.
            let client = sender(&header);
            if state.discovery_clients.contains(&client) {
                state
                    .calls
                    .push("StartDiscovery (already discovering)".into());
                return Err(BluezError::InProgress(
                    "Operation already in progress".into(),
                ));
            }
            state.calls.push("StartDiscovery".into());
            state.discovery_wedged = false;
            state.discovery_clients.insert(client);
            let started = !state.discovering;
            state.discovering = true;
            started
        };
        if started {
            let _ = self.discovering_changed(&emitter).await;
        }
        Ok(())
    }

    /// Stops this client's discovery; the adapter keeps discovering while another client does.
    async fn stop_discovery(
        &self,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        let stopped = {
            let mut state = self.state.lock().unwrap();
            let client = sender(&header);
            if !state.discovery_clients.contains(&client) {
                return Err(BluezError::Failed("No discovery started".into()));
            }
            state.discovery_wedged = false;
            state.stop_discovery_of(&client)
        };
        if stopped {
            let _ = self.discovering_changed(&emitter).await;
        }
        Ok(())
    }

    /// Sets the calling client's filter; an empty one clears it.
    fn set_discovery_filter(
        &self,
        filter: HashMap<String, OwnedValue>,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BluezError> {
        let mut state = self.state.lock().unwrap();
        let mut keys: Vec<&String> = filter.keys().collect();
        keys.sort();
        state.calls.push(format!("SetDiscoveryFilter {keys:?}"));
        let client = sender(&header);
        if filter.is_empty() {
            state.discovery_filters.remove(&client);
        } else {
            let uuids = filter
                .get("UUIDs")
                .and_then(|uuids| Vec::<String>::try_from(uuids.try_clone().ok()?).ok())
                .unwrap_or_default()
                .into_iter()
                .map(|uuid| uuid.to_ascii_lowercase())
                .collect();
            state.discovery_filters.insert(client, uuids);
        }
        Ok(())
    }

    async fn remove_device(
        &self,
        device: OwnedObjectPath,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BluezError> {
        let address = {
            let mut state = self.state.lock().unwrap();
            state
                .calls
                .push(format!("RemoveDevice {}", device.as_str()));
            let found = state
                .devices
                .iter()
                .find(|(address, _)| device_path(address) == device.as_str())
                .map(|(address, _)| address.clone());
            let Some(address) = found else {
                return Err(BluezError::DoesNotExist("Does Not Exist".into()));
            };
            let device = state.devices.get_mut(&address).unwrap();
            device.paired = false;
            device.bonded = false;
            device.trusted = false;
            device.connected = false;
            device.exported = false;
            // BlueZ forgets the device with everything it held for it, subscriptions included.
            device.notifying.clear();
            device.subscriber = None;
            device.battery_plugin_subscribed = false;
            address
        };
        super::unexport_device(connection, &self.state, &address).await;
        Ok(())
    }

    #[zbus(property)]
    fn address(&self) -> String {
        "00:1A:7D:DA:71:13".into()
    }

    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }

    #[zbus(property)]
    fn name(&self) -> String {
        "vitalsd-sim".into()
    }

    #[zbus(property)]
    fn alias(&self) -> String {
        "vitalsd-sim".into()
    }

    #[zbus(property)]
    fn modalias(&self) -> String {
        "usb:v1D6Bp0246d0540".into()
    }

    // Unlike BlueZ, a Set signals Powered even when it does not change; the daemon must not loop on it.
    #[zbus(property)]
    fn powered(&self) -> bool {
        self.state.lock().unwrap().powered
    }

    #[zbus(property)]
    async fn set_powered(&mut self, powered: bool) {
        let mut state = self.state.lock().unwrap();
        if state.power_locked_off && powered {
            return;
        }
        state.powered = powered;
        state.calls.push(format!("Powered={powered}"));
    }

    #[zbus(property)]
    fn discovering(&self) -> bool {
        self.state.lock().unwrap().discovering
    }

    #[zbus(property)]
    fn discoverable(&self) -> bool {
        false
    }

    #[zbus(property)]
    fn pairable(&self) -> bool {
        true
    }

    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        Vec::new()
    }
}

pub struct AgentManager {
    pub state: Arc<Mutex<SimState>>,
}

#[interface(name = "org.bluez.AgentManager1")]
impl AgentManager {
    fn register_agent(
        &self,
        agent: OwnedObjectPath,
        capability: String,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BluezError> {
        let sender = sender(&header);
        let mut state = self.state.lock().unwrap();
        state.calls.push(format!("RegisterAgent {capability}"));
        state.agents.insert(
            sender.clone(),
            (agent.as_str().to_string(), capability.clone()),
        );
        state.agent = Some((sender, agent.as_str().to_string(), capability));
        Ok(())
    }

    fn request_default_agent(&self, _agent: OwnedObjectPath) -> Result<(), BluezError> {
        self.state
            .lock()
            .unwrap()
            .calls
            .push("RequestDefaultAgent".into());
        Ok(())
    }

    fn unregister_agent(
        &self,
        _agent: OwnedObjectPath,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BluezError> {
        let sender = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let mut state = self.state.lock().unwrap();
        state.agent = None;
        state.agents.remove(&sender);
        Ok(())
    }
}

pub struct Device {
    pub state: Arc<Mutex<SimState>>,
    pub address: String,
}

impl Device {
    fn with<T>(&self, read: impl FnOnce(&DeviceState) -> T) -> T {
        let state = self.state.lock().unwrap();
        read(&state.devices[&self.address])
    }
}

#[interface(name = "org.bluez.Device1")]
impl Device {
    async fn connect(&self, #[zbus(connection)] connection: &Connection) -> Result<(), BluezError> {
        let (refusal, link_came_up, answered_then_dropped) = {
            let mut state = self.state.lock().unwrap();
            state.calls.push(format!("Connect {}", self.address));
            let powered = state.powered;
            let device = state.devices.get_mut(&self.address).unwrap();
            device.connect_attempts += 1;
            let answers_then_drops = powered
                && device.in_range
                && device.bond_lost_on_device
                && device.paired
                && device.lost_bond_answers_connect;
            let aborted = || BluezError::Failed("le-connection-abort-by-local".into());
            if answers_then_drops {
                (None, true, Some(LOST_BOND_LINK_STANDS))
            } else if !powered {
                (
                    Some(BluezError::NotReady("Resource Not Ready".into())),
                    false,
                    None,
                )
            } else if !device.in_range {
                (Some(aborted()), false, None)
            } else if device.bond_lost_on_device && device.paired {
                // The device forgot the bond. BlueZ 5.66 brings the LE link up, asks for encryption with
                // the bond's key, the device has none and the kernel drops the link ("authentication
                // failure"); the ATT channel's connect gets "Permission denied", and `Connect` says no more
                // than this, as for any other aborted link (never "PIN or Key Missing").
                (Some(aborted()), true, None)
            } else if device.links_to_abort > 0 {
                device.links_to_abort -= 1;
                (Some(aborted()), true, None)
            } else if device.links_standing_unresolved > 0 {
                device.links_standing_unresolved -= 1;
                (None, true, Some(UNRESOLVED_LINK_STANDS))
            } else {
                (None, false, None)
            }
        };
        if let Some(stands) = answered_then_dropped {
            super::answer_then_drop_link(connection, &self.state, &self.address, stands).await;
            return Ok(());
        }
        if let Some(error) = refusal {
            if link_came_up {
                super::flash_link(connection, &self.state, &self.address).await;
            }
            return Err(error);
        }
        super::set_connected(connection, &self.state, &self.address, true).await;
        Ok(())
    }

    async fn disconnect(
        &self,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BluezError> {
        self.state
            .lock()
            .unwrap()
            .calls
            .push(format!("Disconnect {}", self.address));
        super::set_connected(connection, &self.state, &self.address, false).await;
        Ok(())
    }

    async fn pair(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
    ) -> Result<(), BluezError> {
        let caller = header.sender().map(|s| s.to_string()).unwrap_or_default();
        let (agent, behaviour_passkey, passkey_wait) = {
            let mut state = self.state.lock().unwrap();
            state.calls.push(format!("Pair {}", self.address));
            // As BlueZ does: the agent of the connection that called Pair, else the default one.
            let agent = match state.agents.get(&caller) {
                Some((path, capability)) => {
                    Some((caller.clone(), path.clone(), capability.clone()))
                }
                None => state.agent.clone(),
            };
            let device = state.devices.get_mut(&self.address).unwrap();
            if device.paired {
                return Err(BluezError::AlreadyExists("Already Exists".into()));
            }
            if !device.in_range {
                return Err(BluezError::ConnectionAttemptFailed("Page Timeout".into()));
            }
            if device.declines_pairing {
                // Real BlueZ 5.66: every SMP failure, a device that declines included, ends the bonding
                // with the kernel's "authentication failure", the same error as a device that lost its
                // bond; only whether a bond existed tells them apart.
                return Err(authentication_failed());
            }
            let passkey = if device.random_passkey {
                // The device's kernel picks the passkey when pairing starts, and never the same twice
                // in a row here, so a passkey learnt from an earlier attempt is always wrong.
                let previous = device.shown_passkey;
                device.shown_passkey = std::iter::repeat_with(|| fastrand::u32(0..1_000_000))
                    .find(|passkey| Some(*passkey) != previous);
                device.shown_passkey
            } else {
                device.passkey
            };
            (agent, passkey, device.passkey_wait)
        };
        let Some((sender, agent_path, _capability)) = agent else {
            // BlueZ 5.72 and later refuse to pair without an agent, even for Just Works.
            return Err(authentication_failed());
        };
        let device_path = ObjectPath::try_from(device_path(&self.address)).unwrap();
        let proxy = zbus::Proxy::new(
            connection,
            sender.as_str(),
            agent_path.as_str(),
            "org.bluez.Agent1",
        )
        .await
        .map_err(BluezError::ZBus)?;
        match behaviour_passkey {
            Some(expected) => {
                let arguments = (&device_path,);
                let asking = proxy.call("RequestPasskey", &arguments);
                let reply: Result<u32, zbus::Error> = match passkey_wait {
                    None => asking.await,
                    // BlueZ's side giving up on the agent (its request timeout, or the kernel's pairing
                    // timer): it cancels the agent's request and fails the pairing.
                    Some(limit) => match tokio::time::timeout(limit, asking).await {
                        Ok(reply) => reply,
                        Err(_) => {
                            let _: Result<(), zbus::Error> = proxy.call("Cancel", &()).await;
                            return Err(BluezError::AuthenticationCanceled(
                                "Authentication Canceled".into(),
                            ));
                        }
                    },
                };
                match reply {
                    Ok(given) if given == expected => {}
                    _ => return Err(authentication_failed()),
                }
            }
            None => {
                let reply: Result<(), zbus::Error> = proxy
                    .call("RequestConfirmation", &(&device_path, 0u32))
                    .await;
                if reply.is_err() {
                    return Err(authentication_failed());
                }
            }
        }
        {
            let mut state = self.state.lock().unwrap();
            let device = state.devices.get_mut(&self.address).unwrap();
            device.paired = true;
            device.bonded = true;
            device.bond_lost_on_device = false;
        }
        super::emit_device_property(connection, &self.address, "Paired").await;
        Ok(())
    }

    fn cancel_pairing(&self) -> Result<(), BluezError> {
        Ok(())
    }

    #[zbus(property)]
    fn address(&self) -> String {
        self.address.clone()
    }

    #[zbus(property)]
    fn address_type(&self) -> String {
        "public".into()
    }

    #[zbus(property)]
    fn name(&self) -> String {
        self.with(|d| d.name.clone())
    }

    #[zbus(property)]
    fn alias(&self) -> String {
        self.with(|d| d.name.clone())
    }

    #[zbus(property)]
    fn paired(&self) -> bool {
        self.with(|d| d.paired)
    }

    #[zbus(property)]
    fn bonded(&self) -> bool {
        self.with(|d| d.bonded)
    }

    #[zbus(property)]
    fn trusted(&self) -> bool {
        self.with(|d| d.trusted)
    }

    #[zbus(property)]
    fn set_trusted(&mut self, trusted: bool) {
        let mut state = self.state.lock().unwrap();
        state
            .calls
            .push(format!("Trusted={trusted} {}", self.address));
        state.devices.get_mut(&self.address).unwrap().trusted = trusted;
    }

    #[zbus(property)]
    fn blocked(&self) -> bool {
        false
    }

    #[zbus(property)]
    fn legacy_pairing(&self) -> bool {
        false
    }

    #[zbus(property)]
    fn connected(&self) -> bool {
        self.with(|d| d.connected)
    }

    #[zbus(property)]
    fn services_resolved(&self) -> bool {
        self.with(|d| d.connected && d.services_resolved)
    }

    /// What BlueZ last reported, not what the radio hears now (see `advertise`).
    #[zbus(property, name = "RSSI")]
    fn rssi(&self) -> i16 {
        self.with(|d| d.reported_rssi)
    }

    #[zbus(property, name = "UUIDs")]
    fn uuids(&self) -> Vec<String> {
        self.with(|d| d.advertised_services.clone())
    }

    #[zbus(property)]
    fn advertising_flags(&self) -> Vec<u8> {
        self.with(|d| vec![if d.pairing_mode { 0x05 } else { 0x06 }])
    }

    #[zbus(property)]
    fn adapter(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(ADAPTER_PATH).unwrap()
    }

    #[zbus(property)]
    fn service_data(&self) -> HashMap<String, OwnedValue> {
        self.with(|d| {
            d.reported_service_data
                .iter()
                .map(|(uuid, bytes)| {
                    (
                        uuid.clone(),
                        OwnedValue::try_from(Value::from(bytes.clone())).unwrap(),
                    )
                })
                .collect()
        })
    }

    #[zbus(property)]
    fn manufacturer_data(&self) -> HashMap<u16, OwnedValue> {
        self.with(|d| {
            d.reported_manufacturer_data
                .iter()
                .map(|(id, bytes)| {
                    (
                        *id,
                        OwnedValue::try_from(Value::from(bytes.clone())).unwrap(),
                    )
                })
                .collect()
        })
    }
}

pub struct Service {
    pub uuid: String,
    pub device_path: String,
}

#[interface(name = "org.bluez.GattService1")]
impl Service {
    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    #[zbus(property)]
    fn primary(&self) -> bool {
        true
    }

    #[zbus(property)]
    fn device(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.device_path.as_str()).unwrap()
    }
}

pub struct Characteristic {
    pub state: Arc<Mutex<SimState>>,
    pub address: String,
    pub uuid: String,
    pub service_path: String,
    pub flags: Vec<String>,
}

impl Characteristic {
    fn device<T>(&self, act: impl FnOnce(&mut DeviceState) -> T) -> T {
        let mut state = self.state.lock().unwrap();
        act(state.devices.get_mut(&self.address).unwrap())
    }
}

#[interface(name = "org.bluez.GattCharacteristic1")]
impl Characteristic {
    /// Reads the device's value. BlueZ caches what it read as the characteristic's `Value` and signals
    /// it, so every read also reaches a client's notification stream.
    async fn read_value(
        &self,
        _options: HashMap<String, OwnedValue>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<Vec<u8>, BluezError> {
        let value = self.device(|device| {
            if !device.connected {
                return Err(BluezError::NotConnected("Not Connected".into()));
            }
            device.reads.push(self.uuid.clone());
            let value = device.values.get(&self.uuid).cloned().unwrap_or_default();
            device
                .last_notified
                .insert(self.uuid.clone(), value.clone());
            Ok(value)
        })?;
        let _ = self.value_changed(&emitter).await;
        Ok(value)
    }

    async fn write_value(
        &self,
        value: Vec<u8>,
        _options: HashMap<String, OwnedValue>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), BluezError> {
        let outcome = self.device(|device| {
            if !device.connected {
                return Err(BluezError::NotConnected("Not Connected".into()));
            }
            device.writes.push((self.uuid.clone(), value.clone()));
            if device.refuse_time_writes
                && (self.uuid.starts_with("00002a08") || self.uuid.starts_with("00002a2b"))
            {
                return Err(BluezError::Failed(
                    "Operation failed with ATT error: 0x80".into(),
                ));
            }
            device.values.insert(self.uuid.clone(), value.clone());
            Ok(())
        });
        outcome?;
        super::behaviour::on_write(connection, &self.state, &self.address, &self.uuid, &value).await
    }

    /// Subscribes: the CCC write reaches the device, which may start sending at once. A subscription
    /// BlueZ already holds (a bonded device's, enabled again when the link came up) is answered
    /// without a new CCC write, so the device sees nothing.
    async fn start_notify(
        &self,
        #[zbus(connection)] connection: &Connection,
        #[zbus(header)] header: zbus::message::Header<'_>,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        let outcome = self.device(|device| {
            device.calls.push(format!("StartNotify {}", self.uuid));
            if !device.connected {
                Err(BluezError::NotConnected("Not Connected".into()))
            } else if device.behaviour.needs_bonding() && !device.paired {
                Err(BluezError::NotPermitted("Not paired".into()))
            } else {
                device.subscriber = Some(sender(&header));
                device.awaiting_hub_setup = false;
                Ok(device.notifying.insert(self.uuid.clone()))
            }
        });
        if !outcome? {
            return Ok(());
        }
        let _ = self.notifying_changed(&emitter).await;
        super::behaviour::on_subscribed(
            connection.clone(),
            self.state.clone(),
            self.address.clone(),
            self.uuid.clone(),
        );
        Ok(())
    }

    async fn stop_notify(
        &self,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) -> Result<(), BluezError> {
        let stopped = self.device(|device| {
            let stopped = device.notifying.remove(&self.uuid);
            if device.notifying.is_empty() {
                device.subscriber = None;
            }
            stopped
        });
        if !stopped {
            return Err(BluezError::Failed("No notify session started".into()));
        }
        let _ = self.notifying_changed(&emitter).await;
        Ok(())
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    #[zbus(property)]
    fn service(&self) -> OwnedObjectPath {
        OwnedObjectPath::try_from(self.service_path.as_str()).unwrap()
    }

    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        self.flags.clone()
    }

    #[zbus(property)]
    fn notifying(&self) -> bool {
        self.device(|device| device.notifying.contains(&self.uuid))
    }

    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        self.device(|device| {
            device
                .last_notified
                .get(&self.uuid)
                .cloned()
                .unwrap_or_default()
        })
    }
}

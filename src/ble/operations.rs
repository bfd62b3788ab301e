//! The technician's Bluetooth operations (scan, pair, unpair, list devices), written once and run either by
//! the daemon for its control socket or by the command itself when no daemon runs. Each reports progress
//! as JSON events through a callback, so both paths print the same thing.

use std::collections::HashMap;
use std::time::Duration;

use btleplug::api::{Central, CentralEvent, Peripheral as _, ScanFilter};
use btleplug::platform::Adapter;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::mpsc;

use crate::ble::bluez::{Bluez, BluezError, PasskeyQuestion, PasskeySource};
use crate::ble::profile;
use crate::ble::session::SharedDevices;
use crate::decode::current_time::{clock_verdict, ClockVerdict};
use crate::state::devices::{normalise_address, BoundDevice, Reach};

/// How long `pair` looks for a device that BlueZ has not seen yet.
const FIND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum TechnicianError {
    #[error(transparent)]
    Address(#[from] crate::state::devices::StoreError),
    #[error(transparent)]
    Bluez(#[from] BluezError),
    #[error("Bluetooth: {0}")]
    Ble(#[from] btleplug::Error),
    #[error("no Bluetooth adapter named {0}")]
    NoAdapter(String),
    #[error("{0} is not bound to this hub")]
    NotBound(String),
    /// The device asked for the passkey it shows and the technician gave none (or went away).
    #[error("no passkey was entered, so the device was not paired")]
    NoPasskey,
    /// The device (BlueZ, the kernel) stopped waiting before a passkey was entered.
    #[error("the device stopped waiting for its passkey before one was entered; pair again and enter it within 30 s")]
    PasskeyTooLate,
    #[error("a passkey is the 6 digits the device shows (000000 to 999999)")]
    BadPasskey,
}

/// What a client sends after its request, on the same connection: the answer to an event that asked a
/// question. One reply per question; lines sent before the question are not read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// The passkey the device shows, answering `passkey_requested`.
    Passkey { passkey: u32 },
    /// The technician entered none: the hub's agent rejects and the pairing fails.
    Cancel,
}

/// How `pair` gets the passkey of a device that shows one.
#[derive(Debug)]
pub enum PasskeyEntry<'a> {
    /// Given with the request (`--passkey N`): for devices whose passkey is fixed.
    Fixed(u32),
    /// Asked when the device asks: a `passkey_requested` event, answered by a [`Reply`] from here. A
    /// closed channel (the client went away) means no passkey: the agent rejects.
    Ask(&'a mut mpsc::Receiver<Reply>),
}

/// One event of a request. Absent optional values are sent as `null`, as clients have always seen them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A health device heard while scanning, or heard again with another signal strength.
    Device {
        address: String,
        name: Option<String>,
        model: Option<String>,
        rssi: Option<i16>,
        pairing_mode: Option<bool>,
        advertisement_only: bool,
        bound: bool,
    },
    Progress {
        message: String,
    },
    /// The device shows a passkey and the hub's agent waits for it: the client answers with a `passkey`
    /// [`Reply`] on the same connection (or `cancel`). The passkey itself never travels in an event.
    PasskeyRequested {
        address: String,
    },
    Paired {
        address: String,
        bonded: bool,
        message: String,
    },
    Unpaired {
        address: String,
        was_bound: bool,
        bond_removed: bool,
    },
    /// The bound devices, each as stored with its clock verdict (and cuff pressure while measuring) added.
    Devices {
        devices: Vec<serde_json::Value>,
    },
    Done,
    Error {
        message: String,
    },
}

impl Event {
    /// The event that ends a request's stream.
    pub fn is_last(&self) -> bool {
        matches!(self, Event::Done | Event::Error { .. })
    }

    /// The event as one line of the socket's protocol, newline included.
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("events serialise");
        line.push('\n');
        line
    }

    /// Reads one line a daemon sent. A line that is not an event (a daemon of another version, say) is
    /// shown to the technician as an error carrying the line, which also ends the request.
    pub fn from_line(line: &str) -> Event {
        serde_json::from_str(line).unwrap_or_else(|_| Event::Error {
            message: line.to_string(),
        })
    }
}

/// One progress or result event; the command prints it as text or, with `--json`, as one JSON line.
pub type Emit<'a> = &'a mut (dyn FnMut(Event) + Send);

async fn adapter_named(name: &str) -> Result<Adapter, TechnicianError> {
    crate::ble::find_adapter(name)
        .await?
        .ok_or_else(|| TechnicianError::NoAdapter(name.to_string()))
}

/// Lists nearby health devices for `duration`, emitting a `device` event whenever one is first seen or its
/// signal strength changes. Nothing about them is stored.
pub async fn scan(
    adapter_name: &str,
    duration: Duration,
    devices: &SharedDevices,
    emit: Emit<'_>,
) -> Result<(), TechnicianError> {
    let adapter = adapter_named(adapter_name).await?;
    let bluez = Bluez::connect_without_agent(adapter_name).await.ok();
    let mut events = adapter.events().await?;
    let scan_services = profile::scan_services();
    // Every device: a Xiaomi scale names its service only in its service data, which BlueZ's filter
    // does not look at; `health` below sorts them out.
    adapter
        .start_scan(ScanFilter {
            services: profile::discovery_services(true),
        })
        .await?;
    let deadline = tokio::time::sleep(duration);
    tokio::pin!(deadline);
    let mut last_rssi: HashMap<String, Option<i16>> = HashMap::new();
    loop {
        let event = tokio::select! {
            event = events.next() => match event { Some(event) => event, None => break },
            _ = &mut deadline => break,
        };
        let id = match event {
            CentralEvent::DeviceDiscovered(id)
            | CentralEvent::DeviceUpdated(id)
            | CentralEvent::RssiUpdate { id, .. }
            | CentralEvent::ServiceDataAdvertisement { id, .. }
            | CentralEvent::ServicesAdvertisement { id, .. } => id,
            _ => continue,
        };
        let Ok(peripheral) = adapter.peripheral(&id).await else {
            continue;
        };
        let Ok(Some(properties)) = peripheral.properties().await else {
            continue;
        };
        let health = properties
            .services
            .iter()
            .chain(properties.service_data.keys())
            .any(|s| scan_services.contains(s));
        if !health {
            continue;
        }
        let address = peripheral.address().to_string().to_ascii_uppercase();
        if last_rssi.get(&address) == Some(&properties.rssi) {
            continue;
        }
        last_rssi.insert(address.clone(), properties.rssi);
        let name = properties.local_name.clone();
        let pairing_mode = match &bluez {
            Some(bluez) => bluez.pairing_mode(&address).await,
            None => None,
        };
        let bound = devices.lock().unwrap().is_bound(&address);
        emit(Event::Device {
            address,
            model: name
                .as_deref()
                .and_then(crate::catalog::recognise_model)
                .map(str::to_string),
            name,
            rssi: properties.rssi,
            pairing_mode,
            advertisement_only: properties
                .service_data
                .iter()
                .any(|(s, d)| profile::advertisement_protocol(*s, d).is_some()),
            bound,
        });
    }
    let _ = adapter.stop_scan().await;
    Ok(())
}

/// Binds a device to the hub and bonds with it. Advertisement-only scales are bound without a bond.
pub async fn pair(
    adapter_name: &str,
    address: &str,
    mut passkey: PasskeyEntry<'_>,
    devices: &SharedDevices,
    emit: Emit<'_>,
) -> Result<(), TechnicianError> {
    let address = normalise_address(address)?;
    let bluez = Bluez::connect(adapter_name).await?;
    emit(Event::Progress {
        message: format!("Looking for {address}…"),
    });
    bluez.find_device(&address, FIND_TIMEOUT).await?;
    let name = bluez.device_name(&address).await;
    let advertisement_only = bluez.advertises_scale_data(&address).await;
    let now = crate::clock::now_utc();
    if advertisement_only {
        let mut device = BoundDevice::new(&address, Reach::Advertisement, name, now);
        device.bonded = false;
        bind(devices, device);
        emit(Event::Paired {
            address,
            bonded: false,
            message: "Bound. This scale only advertises its measurements, so no bond is needed."
                .to_string(),
        });
        return Ok(());
    }
    emit(Event::Progress {
        message: "Pairing; confirm on the device if it asks.".to_string(),
    });
    match pair_answering(&bluez, &address, &mut passkey, emit).await {
        Ok(()) => {}
        // A device whose bond we hold but which forgot it: start clean and pair again.
        Err(TechnicianError::Bluez(BluezError::BondLost)) => {
            emit(Event::Progress {
                message:
                    "The device refused the old keys; removing the stale bond and pairing again."
                        .to_string(),
            });
            bluez.remove_device(&address).await?;
            bluez.find_device(&address, FIND_TIMEOUT).await?;
            pair_answering(&bluez, &address, &mut passkey, emit).await?;
        }
        Err(error) => return Err(error),
    }
    let mut device = BoundDevice::new(&address, Reach::Connect, name, now);
    device.bonded = true;
    bind(devices, device);
    emit(Event::Paired {
        address,
        bonded: true,
        message:
            "Paired, trusted and bound. Readings will be collected when the device next connects."
                .to_string(),
    });
    Ok(())
}

/// How the technician's part in a passkey entry went, for naming a failed pairing by it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    NotAsked,
    /// Asked, and still waiting when the pairing ended.
    Waiting,
    Answered,
    NotGiven,
    Malformed,
    /// The agent stopped waiting (BlueZ cancelled, or the wait's bound) before an answer came.
    TooLate,
}

/// `Bluez::pair`, answering the agent's passkey questions meanwhile: each becomes a `passkey_requested`
/// event and waits for the client's reply. A failed pairing in which no passkey was entered says so.
async fn pair_answering(
    bluez: &Bluez,
    address: &str,
    passkey: &mut PasskeyEntry<'_>,
    emit: Emit<'_>,
) -> Result<(), TechnicianError> {
    let (questions_tx, mut questions) = mpsc::channel(1);
    let (source, replies) = match passkey {
        PasskeyEntry::Fixed(passkey) => (PasskeySource::Fixed(*passkey), None),
        PasskeyEntry::Ask(replies) => (PasskeySource::Ask(questions_tx), Some(&mut **replies)),
    };
    let mut entry = Entry::NotAsked;
    let paired = {
        let answering = answer_questions(address, &mut questions, replies, emit, &mut entry);
        tokio::select! {
            paired = bluez.pair(address, source) => paired,
            never = answering => match never {},
        }
    };
    match (paired, entry) {
        (Ok(()), _) => Ok(()),
        (Err(_), Entry::NotGiven) => Err(TechnicianError::NoPasskey),
        (Err(_), Entry::Malformed) => Err(TechnicianError::BadPasskey),
        (Err(_), Entry::Waiting | Entry::TooLate) => Err(TechnicianError::PasskeyTooLate),
        (Err(error), Entry::NotAsked | Entry::Answered) => Err(error.into()),
    }
}

/// Turns each passkey question of the agent into a `passkey_requested` event and hands the client's
/// reply back; runs until the pairing it serves ends.
async fn answer_questions(
    address: &str,
    questions: &mut mpsc::Receiver<PasskeyQuestion>,
    mut replies: Option<&mut mpsc::Receiver<Reply>>,
    emit: Emit<'_>,
    entry: &mut Entry,
) -> std::convert::Infallible {
    loop {
        let Some(mut question) = questions.recv().await else {
            return std::future::pending().await;
        };
        emit(Event::PasskeyRequested {
            address: address.to_string(),
        });
        *entry = Entry::Waiting;
        let reply = match replies.as_deref_mut() {
            Some(replies) => tokio::select! {
                reply = replies.recv() => reply,
                () = question.answer.closed() => {
                    *entry = Entry::TooLate;
                    continue;
                }
            },
            None => None,
        };
        let passkey = match reply {
            Some(Reply::Passkey { passkey }) if passkey <= MAX_PASSKEY => {
                *entry = Entry::Answered;
                Some(passkey)
            }
            Some(Reply::Passkey { .. }) => {
                *entry = Entry::Malformed;
                None
            }
            Some(Reply::Cancel) | None => {
                *entry = Entry::NotGiven;
                None
            }
        };
        if question.answer.send(passkey).is_err() {
            *entry = Entry::TooLate;
        }
    }
}

/// A passkey has six decimal digits.
pub const MAX_PASSKEY: u32 = 999_999;

fn bind(devices: &SharedDevices, device: BoundDevice) {
    let mut list = devices.lock().unwrap();
    list.bind(device);
    if let Err(error) = list.save() {
        tracing::error!(%error, "Cannot save the device list.");
    }
}

/// Unbinds the device and removes the hub's bond with it.
pub async fn unpair(
    adapter_name: &str,
    address: &str,
    devices: &SharedDevices,
    emit: Emit<'_>,
) -> Result<(), TechnicianError> {
    let address = normalise_address(address)?;
    let was_bound = {
        let mut list = devices.lock().unwrap();
        let was_bound = list.unbind(&address);
        if let Err(error) = list.save() {
            tracing::error!(%error, "Cannot save the device list.");
        }
        was_bound
    };
    let bond_removed = match Bluez::connect_without_agent(adapter_name).await {
        Ok(bluez) => bluez.remove_device(&address).await.is_ok(),
        Err(_) => false,
    };
    if !was_bound && !bond_removed {
        return Err(TechnicianError::NotBound(address));
    }
    emit(Event::Unpaired {
        address,
        was_bound,
        bond_removed,
    });
    Ok(())
}

/// The bound devices, with the clock verdict spelled out.
pub fn list(devices: &SharedDevices) -> Event {
    let list = devices.lock().unwrap();
    let entries: Vec<serde_json::Value> = list
        .all()
        .iter()
        .map(|device| {
            let mut value = serde_json::to_value(device).expect("serialisable");
            let by_hub = if device.clock_set {
                " (the hub set it)"
            } else {
                " (left as it was)"
            };
            let clock = if device.clock_checked_at.is_none() {
                "unknown".to_string()
            } else if device.clock_not_set {
                format!("not set{by_hub}")
            } else {
                match clock_verdict(device.clock_offset_s.map(chrono::TimeDelta::seconds)) {
                    ClockVerdict::NotSet => {
                        format!("not compared: the hub clock was not synchronised{by_hub}")
                    }
                    ClockVerdict::InSync => "in sync".to_string(),
                    ClockVerdict::Off(offset) => {
                        format!("was off by {} s{by_hub}", offset.num_seconds())
                    }
                }
            };
            value["clock"] = json!(clock);
            // A cuff reports its pressure while inflating; older than this, the measurement is over.
            let fresh = chrono::TimeDelta::seconds(10);
            if let Some(progress) = device
                .measuring
                .as_ref()
                .filter(|p| crate::clock::now_utc() - p.at <= fresh)
            {
                value["measuring"] =
                    json!({"cuff_pressure": progress.pressure, "unit": progress.unit});
            }
            value
        })
        .collect();
    Event::Devices { devices: entries }
}

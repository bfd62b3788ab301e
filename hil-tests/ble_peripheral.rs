//! A Bluetooth LE health device for the real-BlueZ suite: a GATT peripheral served by a real bluetoothd on
//! its own controller (`GattManager1.RegisterApplication`, `LEAdvertisingManager1.RegisterAdvertisement`),
//! with its own pairing agent, run inside the rig's VM.
//!
//! `ble-peripheral SCENARIO.json`: the scenario names the adapter, the device model, how the device's
//! agent answers, and the sessions: before each, the records it adds to its memory; in each, it advertises,
//! sends what it holds once the hub has enabled indications, stops advertising and drops the link, as A&D
//! devices do; a glucose meter instead keeps every record and answers the hub's Record Access Control Point
//! requests from them, and an advert-only device (a Xiaomi scale) changes its advertised service data step
//! by step and serves nothing. What happens is written as JSON lines to the scenario's `events` file, for
//! the test to read.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue, Value};
use zbus::{interface, Connection};

const APP_PATH: &str = "/org/vitalsd/peripheral";
const ADVERT_PATH: &str = "/org/vitalsd/peripheral/advertisement";
const AGENT_PATH: &str = "/org/vitalsd/peripheral/agent";
/// How often the device's agent asks to be BlueZ's default again: BlueZ sends the responding side's
/// pairing questions to the default agent, and the hub makes its own agent the default when it starts.
const DEFAULT_AGENT_EVERY: Duration = Duration::from_millis(200);
/// How long an indication may wait for the hub's confirmation.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// The Record Access Control Point (0x2A52).
const RACP: u16 = 0x2A52;
/// How long a glucose meter keeps the link after answering a request for records, if the hub neither
/// asks for more nor lets go first; then it drops the link, as meters do to save their battery.
const METER_LINGER: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// The controller the device lives on, e.g. `hci1`.
    adapter: String,
    model: Model,
    /// How the device's agent answers BlueZ's questions about pairing with the hub.
    #[serde(default)]
    agent: AgentAnswer,
    /// The IO capability the device's agent registers with: `NoInputNoOutput` (Just Works, the default)
    /// or `DisplayOnly` (a device with a display: the kernel picks a random passkey, the agent is asked
    /// to show it, and the hub must enter it).
    #[serde(default = "no_input_no_output")]
    capability: String,
    /// The records of each session, hex: added to the device's memory before it advertises again.
    sessions: Vec<Session>,
    /// Whether records sent in an earlier session are sent again (as A&D cuffs replay their memory).
    #[serde(default)]
    replay: bool,
    /// Where the JSON lines of what happened go.
    events: PathBuf,
    /// For an advert-only device: what it advertises, step by step (a weighing in progress, then
    /// stabilised, ...); the device never takes part in a connection of its own accord.
    #[serde(default)]
    adverts: Vec<AdvertStep>,
    /// Whether the device keeps its agent BlueZ's default. With two devices in the rig's one bluetoothd,
    /// only one may: BlueZ cancels a pairing question when the default agent changes under it, so the
    /// other device's side is answered by the first device's agent (both accept).
    #[serde(default = "yes")]
    keep_default_agent: bool,
}

fn yes() -> bool {
    true
}

/// One state of an advert-only device's advertisement: its service data, held for a while, as a scale
/// shows a weighing for some seconds.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdvertStep {
    /// The 16-bit service UUID the data is advertised under.
    service: u16,
    /// The service data, hex.
    data: String,
    /// How long the device advertises it before the next step.
    #[serde(default)]
    seconds: f64,
    /// Held until SIGUSR2 (someone steps on the scale) instead of for `seconds`.
    #[serde(default)]
    until_stepped_on: bool,
}

fn no_input_no_output() -> String {
    "NoInputNoOutput".into()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Model {
    /// A&D UA-651BLE-like: Blood Pressure with a writable Date Time, Device Information, Battery; Just Works.
    AndCuff,
    /// A Contour-like glucose meter, the simulator's `glucose_meter()`: Glucose (Measurement and Context
    /// notified, Feature, a Record Access Control Point written and indicated), Device Information; Just
    /// Works. It sends nothing on its own: the hub's RACP requests drive it (`run_meter_sessions`).
    GlucoseMeter,
    /// A body-composition scale: Body Composition Measurement 0x2A9C (indications; a record may be split
    /// over two of them) and Feature 0x2A9B, Device Information; Just Works.
    BodyCompositionScale,
    /// A Xiaomi Mi Body Composition Scale: its weighings are service data in its advertisement, nothing
    /// else (the scenario's `adverts`).
    XiaomiScale,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "kebab-case")]
enum AgentAnswer {
    #[default]
    Accept,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Session {
    records: Vec<String>,
    /// After this session, the device forgets its bond with the hub, as a device does after a factory
    /// reset or when its bond table is full: its stack removes the hub (`Adapter1.RemoveDevice` on the
    /// device's adapter, which drops the keys from the kernel and from /var/lib/bluetooth), while the
    /// hub keeps its own side.
    #[serde(default)]
    forget_bond: bool,
    /// The device waits for this file before it advertises the session, so that a scenario can do
    /// something to the hub's side first (power its adapter off, restart bluetoothd).
    #[serde(default)]
    wait_for: Option<PathBuf>,
    /// After sending, the device keeps the link (and stops advertising) until this file exists, so that
    /// a scenario can have the hub hold two links at once.
    #[serde(default)]
    hold_link_until: Option<PathBuf>,
    /// Glucose Measurement Contexts, hex, added with the records: the meter sends each right after the
    /// record with its sequence number.
    #[serde(default)]
    contexts: Vec<String>,
}

/// One characteristic of a model: service, characteristic, BlueZ flags, initial value.
type CharacteristicSpec = (u16, u16, &'static [&'static str], Vec<u8>);

struct ModelSpec {
    name: &'static str,
    advertised_service: u16,
    /// The characteristic whose indications carry the stored records.
    measurement: u16,
    characteristics: Vec<CharacteristicSpec>,
}

impl Model {
    fn spec(&self) -> ModelSpec {
        match self {
            // The measurement needs an encrypted link, as the cuff insists on its bond: an unpaired hub's
            // subscription is refused with "insufficient encryption".
            Model::AndCuff => ModelSpec {
                name: "A&D_UA-651BLE_1A2B3C",
                advertised_service: 0x1810,
                measurement: 0x2A35,
                characteristics: vec![
                    (0x1810, 0x2A35, &["indicate", "encrypt-indicate"], vec![]),
                    (0x1810, 0x2A49, &["read"], vec![0x27, 0x00]),
                    // Date Time, year 2000: the clock of a cuff whose battery was changed.
                    (
                        0x1810,
                        0x2A08,
                        &["read", "write"],
                        vec![0xD0, 0x07, 1, 1, 0, 0, 0],
                    ),
                    (0x180A, 0x2A29, &["read"], b"A&D Medical".to_vec()),
                    (0x180A, 0x2A24, &["read"], b"UA-651BLE".to_vec()),
                    (0x180A, 0x2A25, &["read"], b"5140300123".to_vec()),
                    (0x180F, 0x2A19, &["read", "notify"], vec![80]),
                ],
            },
            // No encryption required, as the simulator's meter does not insist on a bond; the hub pairs
            // Just Works all the same.
            Model::GlucoseMeter => ModelSpec {
                name: "Contour7812345",
                advertised_service: 0x1808,
                measurement: 0x2A18,
                characteristics: vec![
                    (0x1808, 0x2A18, &["notify"], vec![]),
                    (0x1808, 0x2A34, &["notify"], vec![]),
                    (0x1808, 0x2A52, &["write", "indicate"], vec![]),
                    (0x1808, 0x2A51, &["read"], vec![0x00, 0x00]),
                    (
                        0x180A,
                        0x2A29,
                        &["read"],
                        b"Ascensia Diabetes Care".to_vec(),
                    ),
                    (0x180A, 0x2A24, &["read"], b"Contour Next One".to_vec()),
                    (0x180A, 0x2A25, &["read"], b"7812345".to_vec()),
                ],
            },
            // The scenario's records are its indications: a two-packet record is two of them.
            Model::BodyCompositionScale => ModelSpec {
                name: "BCS-Scale_5A6B7C",
                advertised_service: 0x181B,
                measurement: 0x2A9C,
                characteristics: vec![
                    (0x181B, 0x2A9C, &["indicate", "encrypt-indicate"], vec![]),
                    // Time stamp, users, basal metabolism, muscle %, impedance, weight, height;
                    // 0.005 kg and 0.001 m resolution.
                    (0x181B, 0x2A9B, &["read"], vec![0x0F, 0xBF, 0x01, 0x00]),
                    (0x180A, 0x2A29, &["read"], b"Vitalsd Test".to_vec()),
                    (0x180A, 0x2A24, &["read"], b"BCS-1".to_vec()),
                    (0x180A, 0x2A25, &["read"], b"5A6B7C".to_vec()),
                ],
            },
            Model::XiaomiScale => ModelSpec {
                name: "MIBFS",
                advertised_service: 0x181B,
                measurement: 0,
                characteristics: vec![],
            },
        }
    }
}

/// A Date Time (0x2A08) value.
fn encode_date_time(at: chrono::NaiveDateTime) -> Vec<u8> {
    use chrono::{Datelike, Timelike};
    let mut bytes = (at.year() as u16).to_le_bytes().to_vec();
    bytes.extend(
        [at.month(), at.day(), at.hour(), at.minute(), at.second()].map(|field| field as u8),
    );
    bytes
}

fn decode_date_time(bytes: &[u8]) -> Option<chrono::NaiveDateTime> {
    let [y0, y1, month, day, hour, minute, second, ..] = *bytes else {
        return None;
    };
    chrono::NaiveDate::from_ymd_opt(
        i32::from(u16::from_le_bytes([y0, y1])),
        month.into(),
        day.into(),
    )?
    .and_hms_opt(hour.into(), minute.into(), second.into())
}

fn uuid16(short: u16) -> String {
    format!("0000{short:04x}-0000-1000-8000-00805f9b34fb")
}

/// The JSON lines the test reads.
#[derive(Clone)]
struct Events(Arc<Mutex<std::fs::File>>);

impl Events {
    /// Writes one event, with the guest's time in milliseconds (`t`) to order the events of two devices.
    fn record(&self, mut event: serde_json::Value) {
        use std::io::Write;
        event["t"] = json!(chrono::Utc::now().timestamp_millis());
        let mut file = self.0.lock().unwrap();
        let _ = writeln!(file, "{event}");
        let _ = file.flush();
    }
}

/// What the session loop hears from the D-Bus objects.
#[derive(Debug)]
enum Happening {
    /// BlueZ called StartNotify on the measurement: the hub enabled indications.
    Subscribed,
    /// The hub's link came up (`Connected`) on the device's adapter.
    HubConnected(OwnedObjectPath),
    HubDisconnected,
    Confirmed,
    /// The hub wrote a request to the Record Access Control Point.
    RacpWritten(Vec<u8>),
}

struct Characteristic {
    uuid: String,
    /// For a Date Time characteristic: how far the device's clock is from the real one. It runs on from
    /// what the hub writes, as a device clock does.
    clock: Option<chrono::TimeDelta>,
    service: OwnedObjectPath,
    flags: Vec<String>,
    value: Vec<u8>,
    notifying: bool,
    is_measurement: bool,
    events: Events,
    happenings: mpsc::Sender<Happening>,
}

#[interface(name = "org.bluez.GattCharacteristic1")]
impl Characteristic {
    fn read_value(&self, options: HashMap<String, OwnedValue>) -> Vec<u8> {
        let offset = options
            .get("offset")
            .and_then(|value| u16::try_from(value).ok())
            .unwrap_or(0) as usize;
        let value = match self.clock {
            Some(clock) => encode_date_time(chrono::Utc::now().naive_utc() + clock),
            None => self.value.clone(),
        };
        self.events
            .record(json!({"event": "read", "uuid": self.uuid, "value": hex::encode(&value)}));
        value.get(offset..).unwrap_or_default().to_vec()
    }

    fn write_value(&mut self, value: Vec<u8>, _options: HashMap<String, OwnedValue>) {
        self.events
            .record(json!({"event": "write", "uuid": self.uuid, "value": hex::encode(&value)}));
        if self.uuid == uuid16(RACP) {
            let _ = self
                .happenings
                .try_send(Happening::RacpWritten(value.clone()));
        }
        if self.clock.is_some() {
            if let Some(set) = decode_date_time(&value) {
                self.clock = Some(set - chrono::Utc::now().naive_utc());
            }
        }
        self.value = value;
    }

    async fn start_notify(&mut self) {
        self.events
            .record(json!({"event": "start_notify", "uuid": self.uuid}));
        self.notifying = true;
        if self.is_measurement {
            let _ = self.happenings.send(Happening::Subscribed).await;
        }
    }

    fn stop_notify(&mut self) {
        self.events
            .record(json!({"event": "stop_notify", "uuid": self.uuid}));
        self.notifying = false;
    }

    /// BlueZ calls this when the hub confirmed an indication.
    async fn confirm(&self) {
        let _ = self.happenings.send(Happening::Confirmed).await;
    }

    #[zbus(property, name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.clone()
    }

    #[zbus(property)]
    fn service(&self) -> OwnedObjectPath {
        self.service.clone()
    }

    #[zbus(property)]
    fn flags(&self) -> Vec<String> {
        self.flags.clone()
    }

    #[zbus(property)]
    fn value(&self) -> Vec<u8> {
        self.value.clone()
    }

    #[zbus(property)]
    fn notifying(&self) -> bool {
        self.notifying
    }
}

struct Service {
    uuid: String,
}

/// The application's object manager, which BlueZ asks for the GATT objects once on registration. BlueZ
/// allocates attribute handles in the order of its answer. zbus's own object manager answers in hash
/// order, which changed from one registration to the next: after a bluetoothd restart the device then
/// had another attribute table, the bonded hub kept its cached one (bluetoothd logged "DB Hash match:
/// skipping discovery") and its writes landed on other characteristics. A device's table is fixed by
/// its firmware, so this answer comes in one fixed order.
#[derive(Default)]
struct Application {
    objects: Objects,
}

type Objects = BTreeMap<PathKey, BTreeMap<String, BTreeMap<String, OwnedValue>>>;

/// An object path that sorts, as a key of the object manager's answer.
#[derive(Clone, PartialEq, Eq, serde::Serialize, zbus::zvariant::Type)]
struct PathKey(OwnedObjectPath);

impl Ord for PathKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.as_str().cmp(other.0.as_str())
    }
}

impl PartialOrd for PathKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Application {
    /// Adds an object's interface with the properties BlueZ reads at registration; later changes reach
    /// BlueZ as the interfaces' own PropertiesChanged signals.
    fn add<const N: usize>(
        &mut self,
        path: &str,
        interface: &str,
        properties: [(&str, Value<'_>); N],
    ) -> zbus::Result<()> {
        let mut values = BTreeMap::new();
        for (name, value) in properties {
            values.insert(name.to_string(), value.try_to_owned()?);
        }
        self.objects
            .entry(PathKey(ObjectPath::try_from(path)?.into()))
            .or_default()
            .insert(interface.to_string(), values);
        Ok(())
    }
}

#[interface(name = "org.freedesktop.DBus.ObjectManager")]
impl Application {
    fn get_managed_objects(&self) -> Objects {
        self.objects.clone()
    }
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
}

struct Advertisement {
    name: String,
    services: Vec<String>,
    /// Service data by UUID; BlueZ advertises a change as soon as the property says so.
    service_data: HashMap<String, Vec<u8>>,
}

#[interface(name = "org.bluez.LEAdvertisement1")]
impl Advertisement {
    fn release(&self) {}

    #[zbus(property, name = "Type")]
    fn kind(&self) -> String {
        "peripheral".into()
    }

    #[zbus(property, name = "ServiceUUIDs")]
    fn service_uuids(&self) -> Vec<String> {
        self.services.clone()
    }

    #[zbus(property)]
    fn service_data(&self) -> HashMap<String, OwnedValue> {
        self.service_data
            .iter()
            .filter_map(|(uuid, data)| {
                let value = OwnedValue::try_from(Value::from(data.clone())).ok()?;
                Some((uuid.clone(), value))
            })
            .collect()
    }

    #[zbus(property)]
    fn local_name(&self) -> String {
        self.name.clone()
    }

    #[zbus(property)]
    fn discoverable(&self) -> bool {
        true
    }
}

/// The device's own agent: it answers for the device's side of a pairing, as the device's stack would.
struct Agent {
    answer: AgentAnswer,
    events: Events,
}

impl Agent {
    fn decide(&self, method: &str, device: &ObjectPath<'_>) -> Result<(), AgentError> {
        self.events.record(
            json!({"event": "agent", "method": method, "device": device.as_str(),
            "answer": format!("{:?}", self.answer)}),
        );
        match self.answer {
            AgentAnswer::Accept => Ok(()),
            AgentAnswer::Reject => Err(AgentError::Rejected("the device's user declined".into())),
        }
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.bluez.Error")]
enum AgentError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Rejected(String),
}

#[interface(name = "org.bluez.Agent1")]
impl Agent {
    fn release(&self) {}

    fn request_confirmation(
        &self,
        device: ObjectPath<'_>,
        _passkey: u32,
    ) -> Result<(), AgentError> {
        self.decide("RequestConfirmation", &device)
    }

    fn request_authorization(&self, device: ObjectPath<'_>) -> Result<(), AgentError> {
        self.decide("RequestAuthorization", &device)
    }

    fn authorize_service(&self, device: ObjectPath<'_>, _uuid: String) -> Result<(), AgentError> {
        self.decide("AuthorizeService", &device)
    }

    /// The device's display: the passkey the kernel picked, which the hub's side must enter. Written to
    /// the events, where the scenario reads it as a technician reads the display.
    fn display_passkey(&self, device: ObjectPath<'_>, passkey: u32, entered: u16) {
        self.events
            .record(json!({"event": "agent", "method": "DisplayPasskey",
            "device": device.as_str(), "passkey": format!("{passkey:06}"), "entered": entered}));
    }

    fn cancel(&self) {
        self.events
            .record(json!({"event": "agent", "method": "Cancel"}));
    }
}

async fn call<B>(
    connection: &Connection,
    path: &str,
    interface: &str,
    method: &str,
    body: &B,
) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    connection
        .call_method(Some("org.bluez"), path, Some(interface), method, body)
        .await
        .map(|_| ())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: ble-peripheral SCENARIO.json")?;
    let scenario: Scenario = serde_json::from_slice(&std::fs::read(&path)?)?;
    let events = Events(Arc::new(Mutex::new(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&scenario.events)?,
    )));
    let spec = scenario.model.spec();
    let adapter_path = format!("/org/bluez/{}", scenario.adapter);
    let connection = Connection::system().await?;
    let (happen, mut happenings) = mpsc::channel(256);

    let server = connection.object_server();
    let mut application = Application::default();
    let mut services: Vec<u16> = Vec::new();
    let mut measurement_path = String::new();
    let mut paths: HashMap<u16, String> = HashMap::new();
    for (index, (service, characteristic, flags, value)) in spec.characteristics.iter().enumerate()
    {
        let service_index = match services.iter().position(|s| s == service) {
            Some(found) => found,
            None => {
                services.push(*service);
                let service_path = format!("{APP_PATH}/service{}", services.len() - 1);
                application.add(
                    &service_path,
                    "org.bluez.GattService1",
                    [
                        ("UUID", Value::from(uuid16(*service))),
                        ("Primary", Value::from(true)),
                    ],
                )?;
                server
                    .at(
                        service_path,
                        Service {
                            uuid: uuid16(*service),
                        },
                    )
                    .await?;
                services.len() - 1
            }
        };
        let service_path = format!("{APP_PATH}/service{service_index}");
        let path = format!("{service_path}/char{index}");
        if *characteristic == spec.measurement {
            measurement_path = path.clone();
        }
        application.add(
            &path,
            "org.bluez.GattCharacteristic1",
            [
                ("UUID", Value::from(uuid16(*characteristic))),
                (
                    "Service",
                    ObjectPath::try_from(service_path.as_str())?.into(),
                ),
                ("Flags", Value::from(flags.to_vec())),
                ("Value", Value::from(value.clone())),
                ("Notifying", Value::from(false)),
            ],
        )?;
        paths.insert(*characteristic, path.clone());
        server
            .at(
                path,
                Characteristic {
                    uuid: uuid16(*characteristic),
                    clock: (*characteristic == 0x2A08)
                        .then(|| decode_date_time(value))
                        .flatten()
                        .map(|set| set - chrono::Utc::now().naive_utc()),
                    service: OwnedObjectPath::try_from(service_path)?,
                    flags: flags.iter().map(|f| f.to_string()).collect(),
                    value: value.clone(),
                    notifying: false,
                    is_measurement: *characteristic == spec.measurement,
                    events: events.clone(),
                    happenings: happen.clone(),
                },
            )
            .await?;
    }
    server.at(APP_PATH, application).await?;
    server
        .at(
            AGENT_PATH,
            Agent {
                answer: scenario.agent,
                events: events.clone(),
            },
        )
        .await?;
    server
        .at(
            ADVERT_PATH,
            Advertisement {
                name: spec.name.to_string(),
                // A Xiaomi scale names its service only as the key of its service data.
                services: match scenario.model {
                    Model::XiaomiScale => Vec::new(),
                    _ => vec![uuid16(spec.advertised_service)],
                },
                service_data: HashMap::new(),
            },
        )
        .await?;

    // An advert-only device serves nothing of its own.
    let serves_gatt = !spec.characteristics.is_empty();
    register_with_bluez(
        &connection,
        &adapter_path,
        &scenario.capability,
        serves_gatt,
    )
    .await?;
    let keep_default = {
        let connection = connection.clone();
        let keep = scenario.keep_default_agent;
        tokio::spawn(async move {
            if !keep {
                return;
            }
            loop {
                let agent = ObjectPath::from_static_str_unchecked(AGENT_PATH);
                let _ = call(
                    &connection,
                    "/org/bluez",
                    "org.bluez.AgentManager1",
                    "RequestDefaultAgent",
                    &(&agent,),
                )
                .await;
                tokio::time::sleep(DEFAULT_AGENT_EVERY).await;
            }
        })
    };
    let advertising = Arc::new(AtomicBool::new(false));
    let bluez_restarts = follow_bluez_restarts(
        connection.clone(),
        adapter_path.clone(),
        scenario.capability.clone(),
        serves_gatt,
        measurement_path.clone(),
        advertising.clone(),
        events.clone(),
    )
    .await?;
    watch_hub_links(&connection, &adapter_path, happen.clone()).await?;
    events.record(json!({"event": "ready"}));

    // SIGUSR1 is the device's pairing button: it advertises afresh, as a device put into pairing mode
    // does. A device that forgot its bond is paired again this way.
    let pairing_button = {
        let connection = connection.clone();
        let adapter_path = adapter_path.clone();
        let events = events.clone();
        let mut pressed =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
        tokio::spawn(async move {
            while pressed.recv().await.is_some() {
                let advert = ObjectPath::from_static_str_unchecked(ADVERT_PATH);
                let manager = "org.bluez.LEAdvertisingManager1";
                let stopped = call(
                    &connection,
                    &adapter_path,
                    manager,
                    "UnregisterAdvertisement",
                    &(&advert,),
                )
                .await;
                let no_options: HashMap<&str, Value> = HashMap::new();
                let started = call(
                    &connection,
                    &adapter_path,
                    manager,
                    "RegisterAdvertisement",
                    &(&advert, &no_options),
                )
                .await;
                events.record(json!({"event": "pairing_mode",
                    "stopped": stopped.err().map(|e| e.to_string()),
                    "error": started.err().map(|e| e.to_string())}));
            }
        })
    };
    let session_loop = async {
        match scenario.model {
            Model::GlucoseMeter => {
                run_meter_sessions(
                    &connection,
                    &scenario,
                    &adapter_path,
                    &paths,
                    &events,
                    &mut happenings,
                    &advertising,
                )
                .await
            }
            _ if !scenario.adverts.is_empty() => {
                run_adverts(
                    &connection,
                    &scenario,
                    &adapter_path,
                    &events,
                    &mut happenings,
                )
                .await
            }
            _ => {
                run_sessions(
                    &connection,
                    &scenario,
                    &adapter_path,
                    &measurement_path,
                    &events,
                    &mut happenings,
                    &advertising,
                )
                .await
            }
        }
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        outcome = session_loop => {
            if let Err(error) = &outcome {
                events.record(json!({"event": "error", "message": error.to_string()}));
            }
            outcome?;
            // The device stays on the air as a bonded peer until the scenario ends.
            terminate.recv().await;
        }
        _ = terminate.recv() => {}
    }
    keep_default.abort();
    pairing_button.abort();
    bluez_restarts.abort();
    Ok(())
}

/// Registers the device's agent and GATT application with bluetoothd.
async fn register_with_bluez(
    connection: &Connection,
    adapter_path: &str,
    capability: &str,
    serves_gatt: bool,
) -> zbus::Result<()> {
    let agent = ObjectPath::from_static_str_unchecked(AGENT_PATH);
    call(
        connection,
        "/org/bluez",
        "org.bluez.AgentManager1",
        "RegisterAgent",
        &(&agent, capability),
    )
    .await?;
    if !serves_gatt {
        return Ok(());
    }
    let no_options: HashMap<&str, Value> = HashMap::new();
    call(
        connection,
        adapter_path,
        "org.bluez.GattManager1",
        "RegisterApplication",
        &(ObjectPath::from_static_str_unchecked(APP_PATH), &no_options),
    )
    .await
}

/// A device is a stack of its own: when the scenario restarts the guest's bluetoothd (which serves the
/// hub's controller and the device's alike), the device registers again with the new one and carries on
/// advertising if it was, as a real device would not have noticed anything but a dropped link.
async fn follow_bluez_restarts(
    connection: Connection,
    adapter_path: String,
    capability: String,
    serves_gatt: bool,
    measurement_path: String,
    advertising: Arc<AtomicBool>,
    events: Events,
) -> zbus::Result<tokio::task::JoinHandle<()>> {
    let bus = zbus::fdo::DBusProxy::new(&connection).await?;
    let mut owners = bus
        .receive_name_owner_changed_with_args(&[(0, "org.bluez")])
        .await?;
    Ok(tokio::spawn(async move {
        while let Some(change) = owners.next().await {
            let Ok(args) = change.args() else { continue };
            if args.new_owner().is_none() {
                events.record(json!({"event": "bluez_gone"}));
                // The hub's subscription went with bluetoothd's state.
                if let Ok(measurement) = connection
                    .object_server()
                    .interface::<_, Characteristic>(measurement_path.as_str())
                    .await
                {
                    measurement.get_mut().await.notifying = false;
                }
                continue;
            }
            // bluetoothd owns its name before it has set its adapters up: registering is retried
            // until the adapter takes it.
            let mut registered = Err(zbus::Error::Failure("not tried".into()));
            for _ in 0..100 {
                registered =
                    register_with_bluez(&connection, &adapter_path, &capability, serves_gatt).await;
                if registered.is_ok() {
                    break;
                }
                let agent = ObjectPath::from_static_str_unchecked(AGENT_PATH);
                let _ = call(
                    &connection,
                    "/org/bluez",
                    "org.bluez.AgentManager1",
                    "UnregisterAgent",
                    &(&agent,),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut advertised = None;
            if advertising.load(Ordering::SeqCst) {
                let no_options: HashMap<&str, Value> = HashMap::new();
                advertised = Some(
                    call(
                        &connection,
                        &adapter_path,
                        "org.bluez.LEAdvertisingManager1",
                        "RegisterAdvertisement",
                        &(
                            ObjectPath::from_static_str_unchecked(ADVERT_PATH),
                            &no_options,
                        ),
                    )
                    .await
                    .err()
                    .map(|e| e.to_string()),
                );
            }
            events.record(json!({"event": "bluez_back",
                "error": registered.err().map(|e| e.to_string()), "advertised": advertised}));
        }
    }))
}

/// Forwards the `Connected` changes of devices on the adapter (the hub, seen from the device's side).
async fn watch_hub_links(
    connection: &Connection,
    adapter_path: &str,
    happen: mpsc::Sender<Happening>,
) -> zbus::Result<()> {
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.bluez")?
        .interface("org.freedesktop.DBus.Properties")?
        .member("PropertiesChanged")?
        .path_namespace(adapter_path.to_string())?
        .arg(0, "org.bluez.Device1")?
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, connection, Some(64)).await?;
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Some(path) = message
                .header()
                .path()
                .map(|p| OwnedObjectPath::from(p.to_owned()))
            else {
                continue;
            };
            let Ok((_, changed, _)) =
                message
                    .body()
                    .deserialize::<(String, HashMap<String, OwnedValue>, Vec<String>)>()
            else {
                continue;
            };
            let Some(connected) = changed
                .get("Connected")
                .and_then(|value| bool::try_from(value).ok())
            else {
                continue;
            };
            let happening = if connected {
                Happening::HubConnected(path)
            } else {
                Happening::HubDisconnected
            };
            if happen.send(happening).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// The devices BlueZ knows on the adapter (the hub, seen from the device's side), or only those
/// connected right now.
async fn devices_on(
    connection: &Connection,
    adapter_path: &str,
    only_connected: bool,
) -> zbus::Result<Vec<OwnedObjectPath>> {
    type Objects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;
    let reply = connection
        .call_method(
            Some("org.bluez"),
            "/",
            Some("org.freedesktop.DBus.ObjectManager"),
            "GetManagedObjects",
            &(),
        )
        .await?;
    let objects: Objects = reply.body().deserialize()?;
    let prefix = format!("{adapter_path}/");
    Ok(objects
        .into_iter()
        .filter(|(path, _)| path.as_str().starts_with(&prefix))
        .filter(|(_, interfaces)| {
            let device = interfaces.get("org.bluez.Device1");
            let connected = device
                .and_then(|device| device.get("Connected"))
                .and_then(|value| bool::try_from(value).ok())
                .unwrap_or(false);
            device.is_some() && (connected || !only_connected)
        })
        .map(|(path, _)| path)
        .collect())
}

async fn run_sessions(
    connection: &Connection,
    scenario: &Scenario,
    adapter_path: &str,
    measurement_path: &str,
    events: &Events,
    happenings: &mut mpsc::Receiver<Happening>,
    advertising: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut memory: Vec<Vec<u8>> = Vec::new();
    let mut unsent_from = 0;
    let mut hub: Option<OwnedObjectPath> = None;
    let no_options: HashMap<&str, Value> = HashMap::new();
    let server = connection.object_server();
    for (number, session) in scenario.sessions.iter().enumerate() {
        for record in &session.records {
            memory.push(hex::decode(record)?);
        }
        if let Some(file) = &session.wait_for {
            while !file.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        advertising.store(true, Ordering::SeqCst);
        call(
            connection,
            adapter_path,
            "org.bluez.LEAdvertisingManager1",
            "RegisterAdvertisement",
            &(ObjectPath::try_from(ADVERT_PATH)?, &no_options),
        )
        .await?;
        events.record(json!({"event": "advertising", "session": number}));
        // A&D cuffs send their memory once indications are enabled: at the hub's first subscription
        // (StartNotify), or, for a bonded hub whose subscription BlueZ kept, when the link comes back.
        loop {
            match happenings
                .recv()
                .await
                .ok_or("the D-Bus objects went away")?
            {
                Happening::Subscribed => break,
                Happening::HubConnected(path) => {
                    events.record(json!({"event": "connected", "session": number}));
                    hub = Some(path);
                    let notifying = server
                        .interface::<_, Characteristic>(measurement_path)
                        .await?
                        .get()
                        .await
                        .notifying;
                    if notifying {
                        // The link is encrypted with the bond's keys shortly after it comes up.
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        break;
                    }
                }
                Happening::HubDisconnected => {
                    events.record(json!({"event": "disconnected", "session": number}));
                }
                Happening::Confirmed | Happening::RacpWritten(_) => {}
            }
        }
        let to_send = if scenario.replay {
            &memory[..]
        } else {
            &memory[unsent_from..]
        };
        let characteristic = server
            .interface::<_, Characteristic>(measurement_path)
            .await?;
        let mut confirmed = 0;
        for record in to_send {
            characteristic.get_mut().await.value = record.clone();
            characteristic
                .get()
                .await
                .value_changed(characteristic.signal_emitter())
                .await?;
            // One indication in flight at a time, as ATT allows.
            let deadline = tokio::time::sleep(CONFIRM_TIMEOUT);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    happening = happenings.recv() => match happening {
                        Some(Happening::Confirmed) => { confirmed += 1; break; }
                        Some(Happening::HubConnected(path)) => hub = Some(path),
                        Some(_) => {}
                        None => return Err("the D-Bus objects went away".into()),
                    },
                    _ = &mut deadline => break,
                }
            }
        }
        unsent_from = memory.len();
        events.record(
            json!({"event": "sent", "session": number, "records": to_send.len(),
            "confirmed": confirmed}),
        );
        advertising.store(false, Ordering::SeqCst);
        call(
            connection,
            adapter_path,
            "org.bluez.LEAdvertisingManager1",
            "UnregisterAdvertisement",
            &(ObjectPath::try_from(ADVERT_PATH)?,),
        )
        .await?;
        if let Some(file) = &session.hold_link_until {
            while !file.exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        drop_links(connection, adapter_path, hub.take(), events, number).await?;
        if session.forget_bond {
            for hub in devices_on(connection, adapter_path, false).await? {
                let forgot = call(
                    connection,
                    adapter_path,
                    "org.bluez.Adapter1",
                    "RemoveDevice",
                    &(&hub,),
                )
                .await;
                events.record(json!({"event": "forgot_bond", "session": number,
                    "hub": hub.as_str(), "error": forgot.err().map(|e| e.to_string())}));
            }
        }
        events.record(json!({"event": "session_end", "session": number}));
    }
    events.record(json!({"event": "done"}));
    Ok(())
}

/// Drops every link still up on the device's adapter, and the hub's (`hub`, when known), recording each as
/// `dropped_link` of session `number`. The hub's device object appears with the first link
/// (InterfacesAdded, no Connected signal), so the links are looked up rather than followed.
async fn drop_links(
    connection: &Connection,
    adapter_path: &str,
    hub: Option<OwnedObjectPath>,
    events: &Events,
    number: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut links = devices_on(connection, adapter_path, true).await?;
    links.extend(hub);
    links.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    links.dedup();
    for link in links {
        let dropped = call(
            connection,
            link.as_str(),
            "org.bluez.Device1",
            "Disconnect",
            &(),
        )
        .await;
        events.record(json!({"event": "dropped_link", "session": number,
            "error": dropped.err().map(|e| e.to_string())}));
    }
    Ok(())
}

/// A glucose meter's stored record: its sequence number, the Glucose Measurement and the context that
/// follows it, if any.
struct MeterRecord {
    sequence: u16,
    measurement: Vec<u8>,
    context: Option<Vec<u8>>,
}

/// A meter's answer to one RACP request: which of its records it sends (indices into its memory), then
/// the response it indicates.
fn answer_racp(memory: &[MeterRecord], request: &[u8]) -> (Vec<usize>, Vec<u8>) {
    let all = || (0..memory.len()).collect::<Vec<_>>();
    let from = |first: u16| {
        (0..memory.len())
            .filter(|&index| memory[index].sequence >= first)
            .collect::<Vec<_>>()
    };
    let response = |opcode: u8, code: u8| vec![0x06, 0x00, opcode, code];
    let records = |selected: Vec<usize>| {
        let code = if selected.is_empty() { 0x06 } else { 0x01 };
        (selected, response(0x01, code))
    };
    match request {
        // Report stored records: all, greater or equal to a sequence number, first, last.
        [0x01, 0x01] => records(all()),
        [0x01, 0x03, 0x01, lo, hi] => records(from(u16::from_le_bytes([*lo, *hi]))),
        [0x01, 0x05] => records(all().into_iter().take(1).collect()),
        [0x01, 0x06] => records(all().into_iter().last().into_iter().collect()),
        [0x01, ..] => (Vec::new(), response(0x01, 0x04)),
        // Report the number of stored records: all, or greater or equal to a sequence number.
        [0x04, 0x01] => (Vec::new(), number_of_records(memory.len())),
        [0x04, 0x03, 0x01, lo, hi] => (
            Vec::new(),
            number_of_records(from(u16::from_le_bytes([*lo, *hi])).len()),
        ),
        [0x04, ..] => (Vec::new(), response(0x04, 0x04)),
        // Delete, abort and anything else: this meter supports none of them.
        [opcode, ..] => (Vec::new(), response(*opcode, 0x02)),
        [] => (Vec::new(), response(0x00, 0x02)),
    }
}

fn number_of_records(count: usize) -> Vec<u8> {
    let [lo, hi] = (count as u16).to_le_bytes();
    vec![0x05, 0x00, lo, hi]
}

/// Sets a characteristic's value and tells BlueZ, which notifies or indicates it to the subscribed hub.
async fn send_value(connection: &Connection, path: &str, value: &[u8]) -> zbus::Result<()> {
    let characteristic = connection
        .object_server()
        .interface::<_, Characteristic>(path)
        .await?;
    characteristic.get_mut().await.value = value.to_vec();
    let sent = characteristic
        .get()
        .await
        .value_changed(characteristic.signal_emitter())
        .await;
    sent
}

/// A glucose meter's sessions. Before each, the session's records join the meter's memory, which keeps
/// every record (their sequence numbers only grow). In each, the meter advertises and answers the hub's
/// RACP requests: the selected records as Glucose Measurement notifications (each followed by its
/// context), then the response as an indication. Once it has answered a request for records, the session
/// ends when the hub lets go, or after `METER_LINGER` without another request, when the meter drops the
/// link itself.
async fn run_meter_sessions(
    connection: &Connection,
    scenario: &Scenario,
    adapter_path: &str,
    paths: &HashMap<u16, String>,
    events: &Events,
    happenings: &mut mpsc::Receiver<Happening>,
    advertising: &AtomicBool,
) -> Result<(), Box<dyn std::error::Error>> {
    let path = |uuid: u16| {
        paths
            .get(&uuid)
            .map(String::as_str)
            .ok_or("no such characteristic")
    };
    let (measurement, context, racp) = (path(0x2A18)?, path(0x2A34)?, path(RACP)?);
    let mut memory: Vec<MeterRecord> = Vec::new();
    let mut hub: Option<OwnedObjectPath> = None;
    let no_options: HashMap<&str, Value> = HashMap::new();
    for (number, session) in scenario.sessions.iter().enumerate() {
        let mut contexts: HashMap<u16, Vec<u8>> = HashMap::new();
        for value in &session.contexts {
            let value = hex::decode(value)?;
            let sequence = u16::from_le_bytes([value[1], value[2]]);
            contexts.insert(sequence, value);
        }
        for record in &session.records {
            let measurement = hex::decode(record)?;
            let sequence = u16::from_le_bytes([measurement[1], measurement[2]]);
            memory.push(MeterRecord {
                sequence,
                measurement,
                context: contexts.remove(&sequence),
            });
        }
        advertising.store(true, Ordering::SeqCst);
        call(
            connection,
            adapter_path,
            "org.bluez.LEAdvertisingManager1",
            "RegisterAdvertisement",
            &(ObjectPath::try_from(ADVERT_PATH)?, &no_options),
        )
        .await?;
        events.record(json!({"event": "advertising", "session": number}));
        let mut requests: std::collections::VecDeque<Vec<u8>> = Default::default();
        let mut served = false;
        let mut hub_gone = false;
        let linger = tokio::time::sleep(METER_LINGER);
        tokio::pin!(linger);
        loop {
            if let Some(request) = requests.pop_front() {
                let (selected, response) = answer_racp(&memory, &request);
                for &index in &selected {
                    send_value(connection, measurement, &memory[index].measurement).await?;
                    if let Some(value) = &memory[index].context {
                        send_value(connection, context, value).await?;
                    }
                }
                send_value(connection, racp, &response).await?;
                // One indication in flight at a time; requests written meanwhile wait their turn.
                let deadline = tokio::time::sleep(CONFIRM_TIMEOUT);
                tokio::pin!(deadline);
                let confirmed = loop {
                    tokio::select! {
                        happening = happenings.recv() => match happening {
                            Some(Happening::Confirmed) => break true,
                            Some(Happening::RacpWritten(next)) => requests.push_back(next),
                            Some(Happening::HubConnected(path)) => hub = Some(path),
                            Some(Happening::HubDisconnected) => {
                                events.record(json!({"event": "disconnected", "session": number}));
                                hub_gone = true;
                                break false;
                            }
                            Some(Happening::Subscribed) => {}
                            None => return Err("the D-Bus objects went away".into()),
                        },
                        _ = &mut deadline => break false,
                    }
                };
                events.record(json!({"event": "racp", "session": number,
                    "request": hex::encode(&request), "records": selected.len(),
                    "response": hex::encode(&response), "confirmed": confirmed}));
                served |= request.first() == Some(&0x01);
                linger
                    .as_mut()
                    .reset(tokio::time::Instant::now() + METER_LINGER);
                if hub_gone && served {
                    break;
                }
                continue;
            }
            tokio::select! {
                happening = happenings.recv() => match happening.ok_or("the D-Bus objects went away")? {
                    Happening::RacpWritten(request) => requests.push_back(request),
                    Happening::HubConnected(path) => {
                        events.record(json!({"event": "connected", "session": number}));
                        hub = Some(path);
                    }
                    Happening::HubDisconnected => {
                        events.record(json!({"event": "disconnected", "session": number}));
                        if served {
                            break;
                        }
                    }
                    Happening::Subscribed | Happening::Confirmed => {}
                },
                _ = &mut linger, if served => break,
            }
        }
        advertising.store(false, Ordering::SeqCst);
        call(
            connection,
            adapter_path,
            "org.bluez.LEAdvertisingManager1",
            "UnregisterAdvertisement",
            &(ObjectPath::try_from(ADVERT_PATH)?,),
        )
        .await?;
        // The meter drops whatever link is still up (the hub usually let go first).
        drop_links(connection, adapter_path, hub.take(), events, number).await?;
        events.record(json!({"event": "session_end", "session": number}));
    }
    events.record(json!({"event": "done"}));
    Ok(())
}

/// An advert-only device: advertises each step's service data for its time, changing the registered
/// advertisement in place (BlueZ watches its properties), and notes any link the hub makes, which there
/// should be none of.
async fn run_adverts(
    connection: &Connection,
    scenario: &Scenario,
    adapter_path: &str,
    events: &Events,
    happenings: &mut mpsc::Receiver<Happening>,
) -> Result<(), Box<dyn std::error::Error>> {
    let no_options: HashMap<&str, Value> = HashMap::new();
    let mut stepped_on =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    let server = connection.object_server();
    let advert = server.interface::<_, Advertisement>(ADVERT_PATH).await?;
    let set_step = |step: &AdvertStep| -> Result<HashMap<String, Vec<u8>>, hex::FromHexError> {
        Ok(HashMap::from([(
            uuid16(step.service),
            hex::decode(&step.data)?,
        )]))
    };
    let first = scenario.adverts.first().ok_or("no adverts")?;
    advert.get_mut().await.service_data = set_step(first)?;
    call(
        connection,
        adapter_path,
        "org.bluez.LEAdvertisingManager1",
        "RegisterAdvertisement",
        &(ObjectPath::try_from(ADVERT_PATH)?, &no_options),
    )
    .await?;
    for (number, step) in scenario.adverts.iter().enumerate() {
        if number > 0 {
            advert.get_mut().await.service_data = set_step(step)?;
            advert
                .get()
                .await
                .service_data_changed(advert.signal_emitter())
                .await?;
        }
        events.record(json!({"event": "advert", "step": number, "data": step.data}));
        let held = async {
            if step.until_stepped_on {
                stepped_on.recv().await;
            } else {
                tokio::time::sleep(Duration::from_secs_f64(step.seconds)).await;
            }
        };
        tokio::pin!(held);
        loop {
            tokio::select! {
                happening = happenings.recv() => match happening {
                    Some(Happening::HubConnected(path)) => events.record(
                        json!({"event": "connected", "step": number, "hub": path.as_str()})),
                    Some(Happening::HubDisconnected) => events.record(
                        json!({"event": "disconnected", "step": number})),
                    Some(_) => {}
                    None => return Err("the D-Bus objects went away".into()),
                },
                _ = &mut held => break,
            }
        }
    }
    call(
        connection,
        adapter_path,
        "org.bluez.LEAdvertisingManager1",
        "UnregisterAdvertisement",
        &(ObjectPath::try_from(ADVERT_PATH)?,),
    )
    .await?;
    // A hub's first link makes its device object appear on this adapter without a `Connected` signal
    // (InterfacesAdded), so the objects are listed too: a hub that never connected left none.
    let peers: Vec<String> = devices_on(connection, adapter_path, false)
        .await?
        .iter()
        .map(|path| path.to_string())
        .collect();
    events.record(json!({"event": "peers", "devices": peers}));
    events.record(json!({"event": "done"}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A meter holding records with sequence numbers 4 to 6 answers `request` by sending the records
    /// `sent` (their sequence numbers) and indicating `response`.
    #[track_caller]
    fn check(request: &str, sent: &[u16], response: &str) {
        let memory: Vec<MeterRecord> = (4..=6)
            .map(|sequence| MeterRecord {
                sequence,
                measurement: vec![0x02, sequence as u8, 0x00],
                context: None,
            })
            .collect();
        let (selected, answer) = answer_racp(&memory, &hex::decode(request).unwrap());
        let selected: Vec<u16> = selected.iter().map(|&i| memory[i].sequence).collect();
        assert_eq!(
            (selected.as_slice(), hex::encode(answer).as_str()),
            (sent, response)
        );
    }

    #[test]
    fn the_meter_answers_the_record_access_control_point() {
        check("0101", &[4, 5, 6], "06000101");
        check("0103010500", &[5, 6], "06000101");
        check("0103010700", &[], "06000106");
        check("0105", &[4], "06000101");
        check("0106", &[6], "06000101");
        check("0102010500", &[], "06000104");
        check("0401", &[], "05000300");
        check("0403010600", &[], "05000100");
        check("0201", &[], "06000202");
        check("0300", &[], "06000302");
        check("0c01", &[], "06000c02");
    }
}

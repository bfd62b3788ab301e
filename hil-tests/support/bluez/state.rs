//! The simulator's shared state: the adapter, each simulated device, and a log of the calls it received.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A full 128-bit UUID from a 16-bit SIG number, lower case as BlueZ writes it.
pub fn uuid16(short: u16) -> String {
    format!("0000{short:04x}-0000-1000-8000-00805f9b34fb")
}

/// What a simulated device does besides answering GATT calls.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// A&D UA-651BLE style: bonding required, Date Time writable in the BP service, stored records
    /// indicated right after subscription, then the cuff disconnects by itself.
    AndCuff,
    /// A standard-profile Omron style cuff: Current Time Service, passkey pairing, stays connected.
    OmronCuff,
    /// A pulse oximeter with PLX spot-check and continuous characteristics.
    Oximeter,
    /// A weight scale (UC-352BLE style: bonding, Date Time, burst then disconnect).
    Scale,
    /// A body-composition scale: bonding, its stored records (some split over two indications) right
    /// after subscription, then it disconnects.
    BodyCompositionScale,
    /// A glucose meter that answers Record Access Control Point requests.
    GlucoseMeter,
    /// A health thermometer.
    Thermometer,
    /// An advertisement-only scale (Xiaomi): no connection.
    Advertiser,
}

impl Behaviour {
    pub fn needs_bonding(&self) -> bool {
        matches!(
            self,
            Behaviour::AndCuff
                | Behaviour::OmronCuff
                | Behaviour::Scale
                | Behaviour::BodyCompositionScale
        )
    }
}

/// One GATT characteristic of a simulated device: its service, UUID and BlueZ flags.
#[derive(Debug, Clone)]
pub struct CharacteristicSpec {
    pub service: String,
    pub uuid: String,
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Clone)]
pub struct DeviceState {
    pub name: String,
    pub behaviour: Behaviour,
    pub rssi: i16,
    pub advertised_services: Vec<String>,
    pub service_data: BTreeMap<String, Vec<u8>>,
    pub manufacturer_data: BTreeMap<u16, Vec<u8>>,
    pub characteristics: Vec<CharacteristicSpec>,
    /// Object paths of the exported characteristics by UUID.
    pub char_paths: HashMap<String, String>,
    /// Readable characteristic values by UUID, and what the hub wrote last.
    pub values: HashMap<String, Vec<u8>>,
    pub last_notified: HashMap<String, Vec<u8>>,
    /// Stored records by measurement characteristic UUID, oldest first; delivered ones are forgotten only
    /// after a burst completed (a hub that missed part of a burst gets it again on the next connection).
    pub stored: BTreeMap<String, Vec<Vec<u8>>>,
    /// Glucose records as (sequence number, bytes).
    pub glucose_records: Vec<(u16, Vec<u8>)>,
    /// Glucose Measurement Context values, sent right after the record with the same sequence number.
    pub glucose_contexts: HashMap<u16, Vec<u8>>,
    /// While set, the meter holds back the records of a transfer from this sequence number on, and the
    /// answer that ends it, with the link up: a meter slow to send the rest of its records keeps the
    /// hub's session open at a point the test chooses. Clearing it sends the rest.
    pub glucose_gate: Option<u16>,
    pub passkey: Option<u32>,
    /// A device with a display whose kernel picks a new random passkey for each pairing, as real ones do
    /// (instead of the fixed `passkey`); `shown_passkey` is what it displays for the pairing under way.
    pub random_passkey: bool,
    pub shown_passkey: Option<u32>,
    /// The device (or its user) declines a first pairing; BlueZ reports it as a failed authentication.
    pub declines_pairing: bool,
    /// How long BlueZ waits for the hub's agent to answer `RequestPasskey` before it sends the agent
    /// `Cancel` and fails the pairing; `None`: as long as it takes.
    pub passkey_wait: Option<std::time::Duration>,
    pub in_range: bool,
    /// Advertising as LE Limited Discoverable (AD flags 0x05), as A&D devices do in pairing mode.
    pub pairing_mode: bool,
    pub exported: bool,
    pub connected: bool,
    pub services_resolved: bool,
    pub paired: bool,
    pub bonded: bool,
    pub trusted: bool,
    pub bond_lost_on_device: bool,
    /// With `bond_lost_on_device`: BlueZ answers `Connect` once the link is up, and the kernel drops the
    /// link when encryption fails, before the services are resolved (the real stack did this on some
    /// links), instead of `Connect` failing with an aborted link.
    pub lost_bond_answers_connect: bool,
    /// With `lost_bond_answers_connect`: the link the kernel dropped is back up 20 ms later and stays up
    /// with its services never resolved, until the hub disconnects it (the real stack did this too).
    pub lost_bond_link_comes_back: bool,
    /// BlueZ resolves the services this long after the link is up (a busy hub), and not at all if the
    /// link went down meanwhile.
    pub resolve_services_after: Option<std::time::Duration>,
    /// This many of the next links abort while being set up, for a reason other than a lost bond.
    pub links_to_abort: u32,
    /// This many of the next links come up, BlueZ answers `Connect`, and the link stands
    /// [`super::objects::UNRESOLVED_LINK_STANDS`] with its services never resolved before it goes down:
    /// the real stack did this three times in a row just after bluetoothd restarted.
    pub links_standing_unresolved: u32,
    pub refuse_time_writes: bool,
    /// Disconnect after this many records of the next burst (a link lost mid-burst), once.
    pub drop_link_after: Option<usize>,
    /// Characteristics the hub subscribed to over D-Bus. For a bonded device BlueZ keeps these across
    /// links and enables them again by itself as soon as a link is up.
    pub notifying: BTreeSet<String>,
    /// The bus name that subscribed; BlueZ drops its subscriptions when it leaves the bus.
    pub subscriber: Option<String>,
    /// The hub's own battery plugin subscribed to Battery Level on this link (no D-Bus `Value` follows).
    pub battery_plugin_subscribed: bool,
    /// BlueZ enabled the subscriptions again on this link and the hub has not subscribed itself yet.
    pub awaiting_hub_setup: bool,
    /// What BlueZ last reported over D-Bus of the adverts: RSSI, service data, manufacturer data.
    pub reported_rssi: i16,
    pub reported_service_data: BTreeMap<String, Vec<u8>>,
    pub reported_manufacturer_data: BTreeMap<u16, Vec<u8>>,
    pub reads: Vec<String>,
    pub writes: Vec<(String, Vec<u8>)>,
    pub calls: Vec<String>,
    pub connect_attempts: u32,
    /// Device clock as an offset from the host clock, in seconds, until the hub writes it.
    pub clock_offset_s: i64,
}

impl DeviceState {
    pub fn new(name: &str, behaviour: Behaviour) -> DeviceState {
        DeviceState {
            name: name.to_string(),
            behaviour,
            rssi: -60,
            advertised_services: Vec::new(),
            service_data: BTreeMap::new(),
            manufacturer_data: BTreeMap::new(),
            characteristics: Vec::new(),
            char_paths: HashMap::new(),
            values: HashMap::new(),
            last_notified: HashMap::new(),
            stored: BTreeMap::new(),
            glucose_records: Vec::new(),
            glucose_contexts: HashMap::new(),
            glucose_gate: None,
            passkey: None,
            random_passkey: false,
            shown_passkey: None,
            declines_pairing: false,
            passkey_wait: None,
            in_range: true,
            pairing_mode: false,
            exported: false,
            connected: false,
            services_resolved: false,
            paired: false,
            bonded: false,
            trusted: false,
            bond_lost_on_device: false,
            links_to_abort: 0,
            links_standing_unresolved: 0,
            lost_bond_answers_connect: false,
            lost_bond_link_comes_back: false,
            resolve_services_after: None,
            refuse_time_writes: false,
            drop_link_after: None,
            notifying: BTreeSet::new(),
            subscriber: None,
            battery_plugin_subscribed: false,
            awaiting_hub_setup: false,
            reported_rssi: -60,
            reported_service_data: BTreeMap::new(),
            reported_manufacturer_data: BTreeMap::new(),
            reads: Vec::new(),
            writes: Vec::new(),
            calls: Vec::new(),
            connect_attempts: 0,
            clock_offset_s: 0,
        }
    }

    pub fn characteristic(&mut self, service: u16, uuid: u16, flags: &[&'static str]) -> &mut Self {
        self.characteristics.push(CharacteristicSpec {
            service: uuid16(service),
            uuid: uuid16(uuid),
            flags: flags.to_vec(),
        });
        self
    }

    pub fn value(&mut self, uuid: u16, bytes: &[u8]) -> &mut Self {
        self.values.insert(uuid16(uuid), bytes.to_vec());
        self
    }

    pub fn device_information(
        &mut self,
        manufacturer: &str,
        model: &str,
        serial: &str,
    ) -> &mut Self {
        self.characteristic(0x180A, 0x2A29, &["read"])
            .characteristic(0x180A, 0x2A24, &["read"])
            .characteristic(0x180A, 0x2A25, &["read"])
            .value(0x2A29, manufacturer.as_bytes())
            .value(0x2A24, model.as_bytes())
            .value(0x2A25, serial.as_bytes())
    }

    /// The rest of Device Information: System ID (as the device sends it, little-endian) and the
    /// firmware, hardware and software revisions.
    pub fn system_id_and_revisions(
        &mut self,
        system_id: &[u8; 8],
        firmware: &str,
        hardware: &str,
        software: &str,
    ) -> &mut Self {
        self.characteristic(0x180A, 0x2A23, &["read"])
            .characteristic(0x180A, 0x2A26, &["read"])
            .characteristic(0x180A, 0x2A27, &["read"])
            .characteristic(0x180A, 0x2A28, &["read"])
            .value(0x2A23, system_id)
            .value(0x2A26, firmware.as_bytes())
            .value(0x2A27, hardware.as_bytes())
            .value(0x2A28, software.as_bytes())
    }

    pub fn battery(&mut self, percent: u8) -> &mut Self {
        self.characteristic(0x180F, 0x2A19, &["read", "notify"])
            .value(0x2A19, &[percent])
    }
}

#[derive(Debug, Default)]
pub struct SimState {
    pub powered: bool,
    /// Keeps the adapter off even when the hub asks to power it (rfkill).
    pub power_locked_off: bool,
    pub discovering: bool,
    /// Bus names that run a discovery, and the filters clients set (bus name → the filter's service
    /// UUIDs, lower case). BlueZ drops a client's filter when it stops discovering, leaves the bus, or the
    /// adapter powers off.
    pub discovery_clients: BTreeSet<String>,
    pub discovery_filters: BTreeMap<String, Vec<String>>,
    /// The controller stopped scanning while BlueZ still counts its clients as discovering (5.66 after a
    /// failed restart of the scan); a client's start or stop of a discovery restarts the scan.
    pub discovery_wedged: bool,
    pub devices: BTreeMap<String, DeviceState>,
    /// The registered agent: (bus name, object path, capability).
    pub agent: Option<(String, String, String)>,
    /// Every registered agent by the bus name that registered it: (object path, capability). BlueZ
    /// asks the agent of the connection that called `Pair`, and the default agent only when that
    /// connection has none.
    pub agents: BTreeMap<String, (String, String)>,
    pub calls: Vec<String>,
}

impl SimState {
    /// Whether BlueZ runs a filtered discovery: every discovering client set a filter. Then it reports
    /// RSSI on every advertising report, else only changes of 8 dBm or more.
    pub fn filtered_discovery(&self) -> bool {
        !self.discovery_clients.is_empty()
            && self
                .discovery_clients
                .iter()
                .all(|client| self.discovery_filters.contains_key(client))
    }

    /// Whether BlueZ 5.66 reports an advert of `device`: a discovering client without a filter, or
    /// with one that names no UUID, gets every advert; the others only adverts whose service list
    /// names one of their filter's UUIDs (the UUIDs of service data do not count).
    pub fn reports_adverts_of(&self, device: &DeviceState) -> bool {
        self.discovery_clients
            .iter()
            .any(|client| match self.discovery_filters.get(client) {
                Some(uuids) if !uuids.is_empty() => device
                    .advertised_services
                    .iter()
                    .any(|service| uuids.contains(service)),
                _ => true,
            })
    }

    /// Forgets a discovery client and its filter; returns whether discovery stopped with it.
    pub fn stop_discovery_of(&mut self, client: &str) -> bool {
        self.discovery_filters.remove(client);
        let was = self.discovering;
        if self.discovery_clients.remove(client) {
            self.discovering = !self.discovery_clients.is_empty();
        }
        was && !self.discovering
    }

    /// The adapter stopped all discovery (powered off, or bluetoothd restarted).
    pub fn end_discovery(&mut self) {
        self.discovery_clients.clear();
        self.discovery_filters.clear();
        self.discovering = false;
    }
}

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
    pub passkey: Option<u32>,
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
    pub refuse_time_writes: bool,
    /// Disconnect after this many records of the next burst (a link lost mid-burst), once.
    pub drop_link_after: Option<usize>,
    pub notifying: BTreeSet<String>,
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
            passkey: None,
            in_range: true,
            pairing_mode: false,
            exported: false,
            connected: false,
            services_resolved: false,
            paired: false,
            bonded: false,
            trusted: false,
            bond_lost_on_device: false,
            refuse_time_writes: false,
            drop_link_after: None,
            notifying: BTreeSet::new(),
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
    /// The discovery filter's service UUIDs, as the last SetDiscoveryFilter set them (until
    /// StopDiscovery): like BlueZ 5.66, adverts are reported only when they list one of them; the
    /// UUIDs of service data do not count.
    pub filter_uuids: Vec<String>,
    pub devices: BTreeMap<String, DeviceState>,
    /// The registered agent: (bus name, object path, capability).
    pub agent: Option<(String, String, String)>,
    pub calls: Vec<String>,
}

//! The hub's allow-list of bound Bluetooth devices and what it remembers about each (device information,
//! last contact, clock offset, the glucose sequence number), kept as one JSON file in the state directory.
//!
//! The daemon never connects to, stores or publishes anything about a device that is not in this list.
//! The file is replaced atomically (write, fsync, rename, fsync the directory), so a power cut leaves
//! either the old list or the new one. While the daemon runs it is the only writer; the technician
//! commands go through its control socket then.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const FILE: &str = "devices.json";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a valid device list ({source}); it was left in place, fix or remove it"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} is not a Bluetooth address (expected six hex pairs such as AA:BB:CC:DD:EE:FF)")]
    BadAddress(String),
}

/// How the hub reads a bound device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// The hub connects and reads GATT characteristics.
    Connect,
    /// The device only advertises its measurements (Xiaomi scales); the hub never connects.
    Advertisement,
}

/// Which characteristics a [`DeviceStrings`] was read from: raised whenever the hub reads more of them, so
/// that a device list saved by an older hub is read again once instead of lacking the new fields for good.
/// 1 added the hardware and software revisions and the System ID.
pub const DEVICE_STRINGS_VERSION: u32 = 1;

/// Device Information strings, read once and cached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStrings {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware_revision: Option<String>,
    // Read since a later version: a device list saved before lacks them (and its `read_version`).
    #[serde(default)]
    pub hardware_revision: Option<String>,
    #[serde(default)]
    pub software_revision: Option<String>,
    /// The System ID as an EUI-64, `FE-ED-AB-EE-DE-AD-77-C3`.
    #[serde(default)]
    pub system_id: Option<String>,
    /// The [`DEVICE_STRINGS_VERSION`] these were read with; 0 in a list saved before it existed.
    #[serde(default)]
    pub read_version: u32,
}

impl DeviceStrings {
    /// Whether these strings hold everything this hub reads, or the device must be read again.
    pub fn is_current(&self) -> bool {
        self.read_version >= DEVICE_STRINGS_VERSION
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BoundDevice {
    /// Upper-case `AA:BB:CC:DD:EE:FF`.
    pub address: String,
    pub reach: Reach,
    pub name: Option<String>,
    /// The model recognised from the advertised name, for people.
    pub model: Option<String>,
    pub bound_at: DateTime<Utc>,
    /// Whether the hub holds a bond (pairing keys) for it.
    #[serde(default)]
    pub bonded: bool,
    /// The device refused our keys: it lost its bond. The hub removed its own and waits for re-pairing.
    #[serde(default)]
    pub needs_repairing: bool,
    #[serde(default)]
    pub information: Option<DeviceStrings>,
    #[serde(default)]
    pub last_seen: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_connected: Option<DateTime<Utc>>,
    #[serde(default)]
    pub last_reading_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub battery_percent: Option<u8>,
    /// Device clock minus hub clock at the last sync, read before the hub set it.
    #[serde(default)]
    pub clock_offset_s: Option<i64>,
    /// The device's clock was not set (year 0 or the factory date) at the last sync.
    #[serde(default)]
    pub clock_not_set: bool,
    #[serde(default)]
    pub clock_checked_at: Option<DateTime<Utc>>,
    /// The hub wrote its time into the device at the last sync (it does only while it trusts its clock).
    #[serde(default)]
    pub clock_set: bool,
    /// The newest glucose record sequence number stored in the outbox for this meter.
    #[serde(default)]
    pub glucose_last_sequence: Option<u16>,
    /// The record key of that newest record, to notice a meter whose numbering restarted.
    #[serde(default)]
    pub glucose_last_key: Option<String>,
    /// The cuff pressure a cuff reports while it inflates (Intermediate Cuff Pressure): progress for the
    /// technician, never stored or published.
    #[serde(skip)]
    pub measuring: Option<CuffProgress>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CuffProgress {
    pub pressure: f64,
    pub unit: &'static str,
    pub at: DateTime<Utc>,
}

impl BoundDevice {
    pub fn new(
        address: &str,
        reach: Reach,
        name: Option<String>,
        now: DateTime<Utc>,
    ) -> BoundDevice {
        BoundDevice {
            address: address.to_string(),
            reach,
            model: name
                .as_deref()
                .and_then(crate::catalog::recognise_model)
                .map(str::to_string),
            name,
            bound_at: now,
            bonded: false,
            needs_repairing: false,
            information: None,
            last_seen: None,
            last_connected: None,
            last_reading_at: None,
            battery_percent: None,
            clock_offset_s: None,
            clock_not_set: false,
            clock_checked_at: None,
            clock_set: false,
            glucose_last_sequence: None,
            glucose_last_key: None,
            measuring: None,
        }
    }
}

impl BoundDevice {
    /// What the fleet twin and `vitalsd devices` call the device's state: `needs_pairing` (it lost its
    /// bond), `binding` (a bind waits for it to bond), `silent` (not seen for `silent_after`, judged only on
    /// a trusted clock: `now` is `None` otherwise) or `bound`.
    pub fn fleet_state(
        &self,
        now: Option<DateTime<Utc>>,
        silent_after: std::time::Duration,
        binding: bool,
    ) -> &'static str {
        let since = self.last_seen.unwrap_or(self.bound_at);
        let silent = now.is_some_and(|now| {
            (now - since)
                .to_std()
                .is_ok_and(|quiet| quiet >= silent_after)
        });
        if self.needs_repairing {
            "needs_pairing"
        } else if binding && !self.bonded {
            "binding"
        } else if silent {
            "silent"
        } else {
            "bound"
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct FileFormat {
    version: u32,
    devices: Vec<BoundDevice>,
}

/// The device list, loaded from and saved to `{state_dir}/devices.json`.
#[derive(Debug)]
pub struct BoundDevices {
    path: PathBuf,
    devices: Vec<BoundDevice>,
}

/// Normalises a Bluetooth address to upper case with colons; rejects anything else.
pub fn normalise_address(text: &str) -> Result<String, StoreError> {
    crate::model::payload::canonical_ble_address(text)
        .ok_or_else(|| StoreError::BadAddress(text.to_string()))
}

impl BoundDevices {
    pub fn load(state_dir: &Path) -> Result<BoundDevices, StoreError> {
        let path = state_dir.join(FILE);
        let devices = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<FileFormat>(&bytes)
                    .map_err(|source| StoreError::Corrupt {
                        path: path.clone(),
                        source,
                    })?
                    .devices
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        Ok(BoundDevices { path, devices })
    }

    pub fn save(&self) -> Result<(), StoreError> {
        let write_error = |source| StoreError::Write {
            path: self.path.clone(),
            source,
        };
        let document = FileFormat {
            version: 1,
            devices: self.devices.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&document).expect("device list serialises");
        bytes.push(b'\n');
        super::replace_file(&self.path, &bytes).map_err(write_error)?;
        Ok(())
    }

    pub fn all(&self) -> &[BoundDevice] {
        &self.devices
    }

    pub fn get(&self, address: &str) -> Option<&BoundDevice> {
        self.devices.iter().find(|d| d.address == address)
    }

    pub fn get_mut(&mut self, address: &str) -> Option<&mut BoundDevice> {
        self.devices.iter_mut().find(|d| d.address == address)
    }

    pub fn is_bound(&self, address: &str) -> bool {
        self.get(address).is_some()
    }

    /// Adds the device, or refreshes an existing entry while keeping what the hub learned about it.
    pub fn bind(&mut self, device: BoundDevice) {
        match self.get_mut(&device.address) {
            Some(existing) => {
                existing.reach = device.reach;
                existing.name = device.name.or(existing.name.take());
                existing.model = device.model.or(existing.model.take());
                existing.bonded = device.bonded;
                existing.needs_repairing = false;
            }
            None => self.devices.push(device),
        }
    }

    /// Removes the device; returns whether it was bound.
    pub fn unbind(&mut self, address: &str) -> bool {
        let before = self.devices.len();
        self.devices.retain(|d| d.address != address);
        self.devices.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_address(input: &str, expected: Option<&str>) {
        assert_eq!(
            normalise_address(input).ok().as_deref(),
            expected,
            "{input}"
        );
    }

    #[test]
    fn addresses() {
        check_address("aa:bb:cc:dd:ee:01", Some("AA:BB:CC:DD:EE:01"));
        check_address(" AA-BB-CC-DD-EE-01 ", Some("AA:BB:CC:DD:EE:01"));
        check_address("AA_BB_CC_DD_EE_01", Some("AA:BB:CC:DD:EE:01"));
        check_address("AA:BB:CC:DD:EE", None);
        check_address("AA:BB:CC:DD:EE:0G", None);
        check_address("AABBCCDDEE01", None);
        check_address("", None);
    }

    #[test]
    fn the_list_survives_a_save_and_load_and_keeps_what_it_learned_on_rebind() {
        let dir = tempfile::tempdir().unwrap();
        let now = "2026-11-22T10:00:00Z".parse().unwrap();
        let mut list = BoundDevices::load(dir.path()).unwrap();
        assert!(list.all().is_empty());
        list.bind(BoundDevice::new(
            "AA:BB:CC:DD:EE:01",
            Reach::Connect,
            Some("A&D_UA-651BLE_1A2B3C".into()),
            now,
        ));
        list.get_mut("AA:BB:CC:DD:EE:01")
            .unwrap()
            .glucose_last_sequence = Some(7);
        list.save().unwrap();

        let mut again = BoundDevices::load(dir.path()).unwrap();
        let device = again.get("AA:BB:CC:DD:EE:01").unwrap();
        assert_eq!(device.model.as_deref(), Some("A&D UA-651BLE"));
        assert_eq!(device.glucose_last_sequence, Some(7));
        again.bind(BoundDevice::new(
            "AA:BB:CC:DD:EE:01",
            Reach::Connect,
            None,
            now,
        ));
        assert_eq!(again.all().len(), 1);
        assert_eq!(
            again
                .get("AA:BB:CC:DD:EE:01")
                .unwrap()
                .glucose_last_sequence,
            Some(7)
        );
        assert!(again.unbind("AA:BB:CC:DD:EE:01"));
        assert!(!again.unbind("AA:BB:CC:DD:EE:01"));
    }

    #[test]
    fn a_corrupt_list_is_an_error_naming_the_file_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{not json").unwrap();
        let error = BoundDevices::load(dir.path()).unwrap_err();
        assert!(error.to_string().contains("devices.json"), "{error}");
        assert_eq!(std::fs::read(dir.path().join(FILE)).unwrap(), b"{not json");
    }
}

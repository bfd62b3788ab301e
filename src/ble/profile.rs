//! Which Bluetooth services and characteristics the hub reads, and with which decoder: the catalogue's
//! Bluetooth rows seen from a session (with the characteristics of a protocol's dialog), and the
//! session-level characteristics no protocol owns (clock, battery, device information); pure.

use uuid::Uuid;

pub use crate::catalog::sig;
use crate::catalog::{Link, PROTOCOLS};
use crate::decode::Protocol;

pub const DATE_TIME: Uuid = sig(0x2A08);
pub const CURRENT_TIME: Uuid = sig(0x2A2B);
pub const BATTERY_LEVEL: Uuid = sig(0x2A19);
pub const MANUFACTURER_NAME: Uuid = sig(0x2A29);
pub const MODEL_NUMBER: Uuid = sig(0x2A24);
pub const SERIAL_NUMBER: Uuid = sig(0x2A25);
pub const FIRMWARE_REVISION: Uuid = sig(0x2A26);
pub const HARDWARE_REVISION: Uuid = sig(0x2A27);
pub const SOFTWARE_REVISION: Uuid = sig(0x2A28);
pub const SYSTEM_ID: Uuid = sig(0x2A23);

/// The services a scan looks for: every one a protocol in the catalogue is read from.
pub fn scan_services() -> Vec<Uuid> {
    let mut services: Vec<Uuid> = Vec::new();
    for row in &PROTOCOLS {
        let service = match row.link {
            Link::Gatt { service, .. } | Link::Advertisement { service, .. } => service,
            Link::Serial(_) => continue,
        };
        if !services.contains(&service) {
            services.push(service);
        }
    }
    services
}

/// The services a scan asks BlueZ for. BlueZ (5.66) matches a discovery filter's UUIDs only against
/// the service UUID lists of an advert, never against the UUIDs its service data is filed under, so a
/// scale that names its service only there (Xiaomi) is reported only by a scan without UUIDs: a scan
/// that must see such devices takes every device and sorts them out itself.
pub fn discovery_services(find_advertisement_only: bool) -> Vec<Uuid> {
    if find_advertisement_only {
        Vec::new()
    } else {
        scan_services()
    }
}

/// The decoder for a measurement characteristic the hub subscribes to.
pub fn measurement_protocol(uuid: Uuid) -> Option<Protocol> {
    PROTOCOLS.iter().find_map(|row| match row.link {
        Link::Gatt { characteristic, .. } if characteristic == uuid => Some(row.protocol),
        _ => None,
    })
}

/// The decoder for an advertisement's service data, for devices that never connect.
pub fn advertisement_protocol(uuid: Uuid, data: &[u8]) -> Option<Protocol> {
    PROTOCOLS.iter().find_map(|row| match row.link {
        Link::Advertisement { service, data_len } if service == uuid && data_len == data.len() => {
            Some(row.protocol)
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{
        BERRYMED_SERVICE, BLOOD_PRESSURE_SERVICE, BODY_COMPOSITION_SERVICE, GLUCOSE_SERVICE,
        HEALTH_THERMOMETER_SERVICE, JUMPER_NOTIFY, JUMPER_SERVICE, PULSE_OXIMETER_SERVICE,
        WEIGHT_SCALE_SERVICE,
    };

    #[test]
    fn scan_services_are_the_health_services_and_the_vendor_oximeters() {
        assert_eq!(
            scan_services(),
            [
                BLOOD_PRESSURE_SERVICE,
                PULSE_OXIMETER_SERVICE,
                WEIGHT_SCALE_SERVICE,
                BODY_COMPOSITION_SERVICE,
                GLUCOSE_SERVICE,
                HEALTH_THERMOMETER_SERVICE,
                BERRYMED_SERVICE,
                JUMPER_SERVICE,
            ]
        );
    }

    #[track_caller]
    fn check_discovery(find_advertisement_only: bool, expected: &[Uuid]) {
        assert_eq!(
            discovery_services(find_advertisement_only),
            expected,
            "{find_advertisement_only}"
        );
    }

    #[test]
    fn a_scan_that_must_find_advertisement_only_scales_asks_for_every_device() {
        check_discovery(false, &scan_services());
        check_discovery(true, &[]);
    }

    #[test]
    fn characteristics_and_advertisements_map_to_protocols() {
        assert_eq!(
            measurement_protocol(sig(0x2A35)),
            Some(Protocol::BloodPressureMeasurement)
        );
        assert_eq!(
            measurement_protocol(JUMPER_NOTIFY),
            Some(Protocol::JumperOximeter)
        );
        assert_eq!(measurement_protocol(sig(0x2A49)), None);
        assert_eq!(
            advertisement_protocol(WEIGHT_SCALE_SERVICE, &[0; 10]),
            Some(Protocol::XiaomiScale)
        );
        assert_eq!(
            advertisement_protocol(BODY_COMPOSITION_SERVICE, &[0; 13]),
            Some(Protocol::XiaomiBodyCompositionScale)
        );
        assert_eq!(
            advertisement_protocol(BODY_COMPOSITION_SERVICE, &[0; 12]),
            None
        );
    }
}

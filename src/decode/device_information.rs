//! Device Information Service 0x180A: the identity strings (trimmed of the NUL and space padding devices
//! add), System ID, PnP ID, and a model guess from a BLE local name for the technician view.

use super::ieee11073::Cursor;
use super::FrameError;

pub const MANUFACTURER_NAME: u16 = 0x2A29;
pub const MODEL_NUMBER: u16 = 0x2A24;
pub const SERIAL_NUMBER: u16 = 0x2A25;
pub const HARDWARE_REVISION: u16 = 0x2A27;
pub const FIRMWARE_REVISION: u16 = 0x2A26;
pub const SOFTWARE_REVISION: u16 = 0x2A28;
pub const SYSTEM_ID: u16 = 0x2A23;
pub const PNP_ID: u16 = 0x2A50;

/// The strings are not NUL-terminated by the specification, yet devices pad them with NULs or spaces.
fn is_padding(c: char) -> bool {
    c == '\0' || c.is_whitespace()
}

/// A DIS string: UTF-8 (invalid bytes replaced), without leading or trailing NULs and whitespace.
pub fn decode_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(is_padding)
        .to_string()
}

/// System ID 0x2A23.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemId {
    /// The manufacturer-defined identifier, 40 bits.
    pub manufacturer_identifier: u64,
    /// The IEEE OUI of the manufacturer, 24 bits.
    pub organizationally_unique_identifier: u32,
}

/// Decodes a System ID: a 40-bit manufacturer-defined identifier, then a 24-bit OUI, both little-endian.
pub fn decode_system_id(bytes: &[u8]) -> Result<SystemId, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let identifier = cursor.take(5, "manufacturer identifier")?;
    let organizationally_unique_identifier = cursor.u24("organizationally unique identifier")?;
    Ok(SystemId {
        manufacturer_identifier: identifier
            .iter()
            .rev()
            .fold(0, |value, &byte| (value << 8) | u64::from(byte)),
        organizationally_unique_identifier,
    })
}

impl SystemId {
    /// The EUI-64 it makes, the OUI first, as the PHD implementation guide writes a `SYSID` identifier:
    /// `C4-F3-12-FF-FE-53-F2-C9`.
    pub fn eui64(&self) -> String {
        let value = (u64::from(self.organizationally_unique_identifier) << 40)
            | (self.manufacturer_identifier & 0xFF_FFFF_FFFF);
        let bytes = value.to_be_bytes().map(|byte| format!("{byte:02X}"));
        bytes.join("-")
    }
}

/// PnP ID 0x2A50.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PnpId {
    /// 1 = Bluetooth SIG company identifier, 2 = USB Implementer's Forum vendor ID.
    pub vendor_id_source: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub product_version: u16,
}

/// Decodes a PnP ID: vendor ID source u8, then vendor ID, product ID and product version, u16 LE each.
pub fn decode_pnp_id(bytes: &[u8]) -> Result<PnpId, FrameError> {
    let mut cursor = Cursor::new(bytes);
    Ok(PnpId {
        vendor_id_source: cursor.u8("vendor id source")?,
        vendor_id: cursor.u16("vendor id")?,
        product_id: cursor.u16("product id")?,
        product_version: cursor.u16("product version")?,
    })
}

/// The identity strings a device reported, each `None` until read or when the device sent only padding.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInformation {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub hardware_revision: Option<String>,
    pub firmware_revision: Option<String>,
    pub software_revision: Option<String>,
}

impl DeviceInformation {
    /// Stores the value read from one of the six string characteristics; other characteristics are ignored.
    pub fn set(&mut self, characteristic: u16, bytes: &[u8]) {
        let slot = match characteristic {
            MANUFACTURER_NAME => &mut self.manufacturer,
            MODEL_NUMBER => &mut self.model,
            SERIAL_NUMBER => &mut self.serial_number,
            HARDWARE_REVISION => &mut self.hardware_revision,
            FIRMWARE_REVISION => &mut self.firmware_revision,
            SOFTWARE_REVISION => &mut self.software_revision,
            _ => return,
        };
        let text = decode_string(bytes);
        *slot = (!text.is_empty()).then_some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, render_error};

    #[track_caller]
    fn check_string(bytes: &[u8], expected: &str) {
        assert_eq!(decode_string(bytes), expected, "{bytes:02x?}");
    }

    #[track_caller]
    fn check_system_id(hex: &str, expected: &str) {
        let rendered = match decode_system_id(&bytes_of(hex)) {
            Ok(id) => format!(
                "id={:#012x} oui={:#08x} eui64={}",
                id.manufacturer_identifier,
                id.organizationally_unique_identifier,
                id.eui64()
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
    }

    #[track_caller]
    fn check_pnp_id(hex: &str, expected: &str) {
        let rendered = match decode_pnp_id(&bytes_of(hex)) {
            Ok(id) => format!(
                "source={} vendor={:#06x} product={:#06x} version={:#06x}",
                id.vendor_id_source, id.vendor_id, id.product_id, id.product_version
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
    }

    /// Sets one characteristic on information that already has every string, and renders what changed.
    #[track_caller]
    fn check_set(characteristic: u16, bytes: &[u8], expected: &str) {
        let old = "old".to_string();
        let before = DeviceInformation {
            manufacturer: Some(old.clone()),
            model: Some(old.clone()),
            serial_number: Some(old.clone()),
            hardware_revision: Some(old.clone()),
            firmware_revision: Some(old.clone()),
            software_revision: Some(old.clone()),
        };
        let mut after = before.clone();
        after.set(characteristic, bytes);
        let fields = |info: &DeviceInformation| {
            [
                ("manufacturer", info.manufacturer.clone()),
                ("model", info.model.clone()),
                ("serial_number", info.serial_number.clone()),
                ("hardware_revision", info.hardware_revision.clone()),
                ("firmware_revision", info.firmware_revision.clone()),
                ("software_revision", info.software_revision.clone()),
            ]
        };
        let changed: Vec<String> = fields(&before)
            .into_iter()
            .zip(fields(&after))
            .filter(|(old, new)| old != new)
            .map(|(_, (name, value))| format!("{name}={value:?}"))
            .collect();
        assert_eq!(changed.join(" "), expected, "{characteristic:#06x}");
    }

    #[rustfmt::skip]
    #[test]
    fn strings_lose_their_padding() {
        check_string(b"A&D Medical\0\0", "A&D Medical");
        check_string(b"  UB-1100BLE ", "UB-1100BLE");
        check_string(b"\0 \0HEM-9200T\0 \t\r\n", "HEM-9200T");
        check_string(b"A&D  Medical", "A&D  Medical");
        check_string(b"A\0B", "A\0B");
        check_string(b"\0\0\0\0", "");
        check_string(b"", "");
        check_string("Gerät ".as_bytes(), "Gerät");
    }

    #[rustfmt::skip]
    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        check_string(&[0x55, 0xFF, 0x42], "U\u{FFFD}B");
        check_string(&[0xFF], "\u{FFFD}");
        check_string(&[0x41, 0xC3], "A\u{FFFD}");
        check_string(&[0xC3, 0x00, 0x00], "\u{FFFD}");
        check_string(&[0xED, 0xA0, 0x80], "\u{FFFD}\u{FFFD}\u{FFFD}");
    }

    #[rustfmt::skip]
    #[test]
    fn system_ids() {
        check_system_id("01 02 03 04 05 10 09 00", "id=0x0504030201 oui=0x000910 eui64=00-09-10-05-04-03-02-01");
        // Built from the device address 12:34:56:9A:BC:DE the way the specification says: 0x123456FFFE9ABCDE.
        check_system_id("DE BC 9A FE FF 56 34 12", "id=0xfffe9abcde oui=0x123456 eui64=12-34-56-FF-FE-9A-BC-DE");
        // HL7 Denmark's ContinuaBundleWithDevice: the A&D cuff C4:F3:12:53:F2:C9 is SYSID C4F312FFFE53F2C9.
        check_system_id("C9 F2 53 FE FF 12 F3 C4", "id=0xfffe53f2c9 oui=0xc4f312 eui64=C4-F3-12-FF-FE-53-F2-C9");
        check_system_id("FF FF FF FF FF FF FF FF", "id=0xffffffffff oui=0xffffff eui64=FF-FF-FF-FF-FF-FF-FF-FF");
        check_system_id("00 00 00 00 00 00 00 00", "id=0x0000000000 oui=0x000000 eui64=00-00-00-00-00-00-00-00");
        check_system_id("01 02 03 04 05 10 09 00 AA", "id=0x0504030201 oui=0x000910 eui64=00-09-10-05-04-03-02-01");
        check_system_id("01 02 03 04 05 10 09", "error too short for organizationally unique identifier");
        check_system_id("01 02 03 04", "error too short for manufacturer identifier");
        check_system_id("", "error too short for manufacturer identifier");
    }

    #[rustfmt::skip]
    #[test]
    fn pnp_ids() {
        check_pnp_id("01 59 00 34 12 00 01", "source=1 vendor=0x0059 product=0x1234 version=0x0100");
        check_pnp_id("02 C4 10 60 EA 00 01", "source=2 vendor=0x10c4 product=0xea60 version=0x0100");
        check_pnp_id("01 59 00 34 12 00 01 FF", "source=1 vendor=0x0059 product=0x1234 version=0x0100");
        check_pnp_id("01 59 00 34 12 00", "error too short for product version");
        check_pnp_id("01 59 00 34", "error too short for product id");
        check_pnp_id("01 59", "error too short for vendor id");
        check_pnp_id("", "error too short for vendor id source");
    }

    #[rustfmt::skip]
    #[test]
    fn set_stores_the_six_strings_and_ignores_the_rest() {
        check_set(MANUFACTURER_NAME, b"A&D Medical\0\0", r#"manufacturer=Some("A&D Medical")"#);
        check_set(MODEL_NUMBER, b"  UB-1100BLE ", r#"model=Some("UB-1100BLE")"#);
        check_set(SERIAL_NUMBER, b"5140300123", r#"serial_number=Some("5140300123")"#);
        check_set(HARDWARE_REVISION, b"HW 1.0", r#"hardware_revision=Some("HW 1.0")"#);
        check_set(FIRMWARE_REVISION, b"FW 2.1\0", r#"firmware_revision=Some("FW 2.1")"#);
        check_set(SOFTWARE_REVISION, b"SW 3", r#"software_revision=Some("SW 3")"#);
        check_set(SERIAL_NUMBER, b"\0\0  \0", "serial_number=None");
        check_set(MODEL_NUMBER, b"", "model=None");
        check_set(SYSTEM_ID, &bytes_of("01 02 03 04 05 10 09 00"), "");
        check_set(PNP_ID, &bytes_of("01 59 00 34 12 00 01"), "");
        check_set(0x2A2A, b"regulatory", "");
        check_set(0x2A19, &[0x64], "");
    }
}

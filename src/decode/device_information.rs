//! Device Information Service 0x180A: the identity strings (trimmed of the NUL and space padding devices
//! add), System ID and PnP ID.

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

/// A DIS string: UTF-8 (invalid bytes replaced), without leading or trailing NULs and whitespace.
pub fn decode_string(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemId {
    /// 40 bits.
    pub manufacturer_identifier: u64,
    /// 24 bits.
    pub organizationally_unique_identifier: u32,
}

pub fn decode_system_id(bytes: &[u8]) -> Result<SystemId, FrameError> {
    let mut cursor = Cursor::new(bytes);
    let low = cursor.u32("manufacturer identifier")?;
    let high = cursor.u8("manufacturer identifier")?;
    let oui = cursor.u24("organizationally unique identifier")?;
    Ok(SystemId {
        manufacturer_identifier: u64::from(low) | (u64::from(high) << 32),
        organizationally_unique_identifier: oui,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PnpId {
    pub vendor_id_source: u8,
    pub vendor_id: u16,
    pub product_id: u16,
    pub product_version: u16,
}

pub fn decode_pnp_id(bytes: &[u8]) -> Result<PnpId, FrameError> {
    let mut cursor = Cursor::new(bytes);
    Ok(PnpId {
        vendor_id_source: cursor.u8("vendor id source")?,
        vendor_id: cursor.u16("vendor id")?,
        product_id: cursor.u16("product id")?,
        product_version: cursor.u16("product version")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{bytes_of, render_error};

    #[track_caller]
    fn check_string(bytes: &[u8], expected: &str) {
        assert_eq!(decode_string(bytes), expected);
    }

    #[test]
    fn strings_lose_their_padding() {
        check_string(b"A&D Medical\0\0", "A&D Medical");
        check_string(b"  UB-1100BLE ", "UB-1100BLE");
        check_string(b"\0", "");
        check_string(&[0x55, 0xFF, 0x42], "U\u{FFFD}B");
    }

    #[test]
    fn system_and_pnp_ids() {
        assert_eq!(
            decode_system_id(&bytes_of("01 02 03 04 05 10 09 00")).unwrap(),
            SystemId {
                manufacturer_identifier: 0x05_0403_0201,
                organizationally_unique_identifier: 0x00_0910,
            }
        );
        assert_eq!(
            decode_pnp_id(&bytes_of("01 59 00 34 12 00 01")).unwrap(),
            PnpId {
                vendor_id_source: 1,
                vendor_id: 0x0059,
                product_id: 0x1234,
                product_version: 0x0100,
            }
        );
        assert_eq!(
            decode_system_id(&bytes_of("01 02 03 04 05 10 09")).map_err(|e| render_error(&e)),
            Err("error too short for organizationally unique identifier".to_string())
        );
        assert_eq!(
            decode_pnp_id(&bytes_of("01 59 00 34 12 00")).map_err(|e| render_error(&e)),
            Err("error too short for product version".to_string())
        );
    }
}

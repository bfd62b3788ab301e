//! The Record Access Control Point (0x2A52): the requests the hub writes to a glucose meter and the
//! responses it indicates back.

use crate::decode::ieee11073::Cursor;
use crate::decode::{hex_of, FrameError};

/// RACP: report all stored records.
pub fn report_all() -> Vec<u8> {
    vec![0x01, 0x01]
}

/// RACP: report the stored records whose sequence number is at least `first`.
pub fn report_from_sequence(first: u16) -> Vec<u8> {
    let [lo, hi] = first.to_le_bytes();
    vec![0x01, 0x03, 0x01, lo, hi]
}

/// RACP: report the last (newest) stored record.
pub fn report_last() -> Vec<u8> {
    vec![0x01, 0x06]
}

/// RACP: report the number of all stored records.
pub fn count_all() -> Vec<u8> {
    vec![0x04, 0x01]
}

/// RACP: abort the running procedure.
pub fn abort() -> Vec<u8> {
    vec![0x03, 0x00]
}

/// The outcome an RACP response code (opcode 0x06) reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseCode {
    Success,
    OpCodeNotSupported,
    InvalidOperator,
    OperatorNotSupported,
    InvalidOperand,
    NoRecordsFound,
    AbortUnsuccessful,
    ProcedureNotCompleted,
    OperandNotSupported,
    Other(u8),
}

/// An RACP indication from the meter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The procedure started by `request_opcode` ended (opcode 0x06).
    Completed {
        request_opcode: u8,
        code: ResponseCode,
    },
    /// The answer to a count request (opcode 0x05).
    NumberOfRecords(u32),
}

/// Decodes an RACP indication; requests and unknown opcodes are invalid here.
pub fn decode_response(bytes: &[u8]) -> Result<Response, FrameError> {
    let invalid = |reason: String| FrameError::Invalid {
        reason,
        raw: hex_of(bytes),
    };
    let mut cursor = Cursor::new(bytes);
    let opcode = cursor.u8("opcode")?;
    let _operator = cursor.u8("operator")?;
    match opcode {
        0x05 => {
            // GLS sends a uint16; Nordic's collector also accepts the 1- and 4-byte forms some meters send.
            let count = match cursor.remaining() {
                1 => u32::from(cursor.u8("count")?),
                2 => u32::from(cursor.u16("count")?),
                4 => cursor.u32("count")?,
                _ => {
                    return Err(invalid(
                        "a record count must be 1, 2 or 4 bytes".to_string(),
                    ))
                }
            };
            Ok(Response::NumberOfRecords(count))
        }
        0x06 => {
            let request_opcode = cursor.u8("request opcode")?;
            let code = match cursor.u8("response code")? {
                0x01 => ResponseCode::Success,
                0x02 => ResponseCode::OpCodeNotSupported,
                0x03 => ResponseCode::InvalidOperator,
                0x04 => ResponseCode::OperatorNotSupported,
                0x05 => ResponseCode::InvalidOperand,
                0x06 => ResponseCode::NoRecordsFound,
                0x07 => ResponseCode::AbortUnsuccessful,
                0x08 => ResponseCode::ProcedureNotCompleted,
                0x09 => ResponseCode::OperandNotSupported,
                other => ResponseCode::Other(other),
            };
            Ok(Response::Completed {
                request_opcode,
                code,
            })
        }
        other => Err(invalid(format!("opcode {other:#04x} is not a response"))),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::test_support::{bytes_of, render_error};

    #[track_caller]
    fn check(hex: &str, expected: &str) {
        let rendered = match decode_response(&bytes_of(hex)) {
            Ok(response) => format!("{response:?}"),
            Err(error) => render_error(&error),
        };
        assert_eq!(rendered, expected, "{hex}");
    }

    #[rustfmt::skip]
    #[test]
    fn racp_vectors_from_the_reference() {
        check("06 00 01 01", "Completed { request_opcode: 1, code: Success }");
        check("06 00 0C 02", "Completed { request_opcode: 12, code: OpCodeNotSupported }");
        check("06 00 01 03", "Completed { request_opcode: 1, code: InvalidOperator }");
        check("06 00 02 04", "Completed { request_opcode: 2, code: OperatorNotSupported }");
        check("06 00 01 05", "Completed { request_opcode: 1, code: InvalidOperand }");
        check("06 00 01 06", "Completed { request_opcode: 1, code: NoRecordsFound }");
        check("06 00 03 07", "Completed { request_opcode: 3, code: AbortUnsuccessful }");
        check("06 00 02 08", "Completed { request_opcode: 2, code: ProcedureNotCompleted }");
        check("06 00 02 09", "Completed { request_opcode: 2, code: OperandNotSupported }");
        check("05 00 02 01", "NumberOfRecords(258)");
        check("05 00 01", "NumberOfRecords(1)");
        check("05 00 04 03 02 01", "NumberOfRecords(16909060)");
        check("05 00 03 02 01", "error invalid: a record count must be 1, 2 or 4 bytes");
    }

    #[rustfmt::skip]
    #[test]
    fn racp_oddities() {
        check("06 00 01 0A", "Completed { request_opcode: 1, code: Other(10) }");
        check("06 00 01 00", "Completed { request_opcode: 1, code: Other(0) }");
        check("05 00", "error invalid: a record count must be 1, 2 or 4 bytes");
        check("05 00 01 02 03 04 05", "error invalid: a record count must be 1, 2 or 4 bytes");
        check("01 01", "error invalid: opcode 0x01 is not a response");
        check("07 00 01", "error invalid: opcode 0x07 is not a response");
        check("", "error too short for opcode");
        check("06", "error too short for operator");
        check("06 00", "error too short for request opcode");
        check("06 00 01", "error too short for response code");
    }

    #[test]
    fn racp_requests_from_the_reference() {
        assert_eq!(hex::encode(report_all()), "0101");
        assert_eq!(hex::encode(count_all()), "0401");
        assert_eq!(hex::encode(report_from_sequence(5)), "0103010500");
        assert_eq!(hex::encode(report_from_sequence(0x1234)), "0103013412");
        assert_eq!(hex::encode(report_last()), "0106");
        assert_eq!(hex::encode(abort()), "0300");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..32)) {
            let _ = decode_response(&bytes);
        }
    }
}

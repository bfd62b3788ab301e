//! Device protocols: pure byte-stream decoders from wire bytes (and a receive time passed in) to readings.
//!
//! Nothing under `decode/` does I/O, is `async`, or reads a clock; the `tidy` test enforces it.
//! A decoder is a small state machine fed with whatever chunks the transport read: it finds frame
//! boundaries itself, resynchronises after garbage, and reports a bad frame as a [`DecodeEvent::Rejected`]
//! value, never as a panic or an end of the stream.

pub mod ieee11073;
pub mod nonin;

use chrono::{DateTime, Utc};

use crate::reading::{HubTimeZone, Kind, Reading};

/// What a decoder needs from the outside world, passed in rather than read.
pub struct DecodeContext<'a> {
    /// When the hub read the bytes being fed.
    pub received_at: DateTime<Utc>,
    /// The hub's time zone, for devices whose clocks carry local wall time.
    pub time_zone: &'a dyn HubTimeZone,
}

/// One thing a decoder found in the bytes fed to it.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeEvent {
    Reading(Reading),
    Rejected(FrameError),
}

/// Why bytes on the wire did not become a reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame's checksum did not match its contents.
    #[error("checksum mismatch: expected {expected:#04x}, frame says {found:#04x} (frame {raw})")]
    Checksum {
        expected: u8,
        found: u8,
        raw: String,
    },
    /// A frame's length field or end marker is impossible, or a packet broke off.
    #[error("malformed frame: {reason} (bytes {raw})")]
    Malformed { reason: &'static str, raw: String },
    /// Bytes that belong to no frame, skipped while resynchronising.
    #[error("skipped {count} bytes outside any frame")]
    Garbage { count: usize },
    /// A message whose flags promise a field it does not have the bytes for.
    #[error(
        "message too short: {field} needs bytes up to {need}, the message has {have} (bytes {raw})"
    )]
    TooShort {
        field: &'static str,
        have: usize,
        need: usize,
        raw: String,
    },
    /// A message whose content is impossible (a value out of range, an unknown opcode).
    #[error("invalid message: {reason} (bytes {raw})")]
    Invalid { reason: String, raw: String },
    /// The input ended in the middle of a frame.
    #[error("truncated frame: {have} bytes of a frame that needs {need} (bytes {raw})")]
    Truncated {
        have: usize,
        need: usize,
        raw: String,
    },
}

/// A stateful, I/O-free decoder for one device connection.
pub trait StreamDecoder: Send {
    /// Feeds the next chunk of bytes from the wire; returns what complete frames it finished, in order.
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent>;

    /// Called when the input ends (a `decode` command line, a closed port): reports a frame left unfinished.
    fn finish(&mut self) -> Option<FrameError>;
}

/// A decoder for protocols whose every message is complete in itself: a GATT characteristic value or an
/// advertisement. There is no framing to find; a message that does not parse is one `FrameError`.
pub trait MessageDecoder: Send {
    /// Decodes one message. `Ok(vec![])` means "nothing to report" (an advertisement that is not a finished
    /// measurement, the first half of a two-packet record).
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError>;
}

/// Serial line settings a protocol needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud_rate: u32,
}

/// Every protocol this build decodes; the names are the `[[serial]] protocol` values and `vitalsd decode` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    NoninDf13,
    NoninDf8,
    NoninDf7,
    NoninDf2,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::NoninDf13,
        Protocol::NoninDf8,
        Protocol::NoninDf7,
        Protocol::NoninDf2,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::NoninDf13 => "nonin-df13",
            Protocol::NoninDf8 => "nonin-df8",
            Protocol::NoninDf7 => "nonin-df7",
            Protocol::NoninDf2 => "nonin-df2",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }

    /// One line for `vitalsd decode --list`.
    pub fn description(self) -> &'static str {
        match self {
            Protocol::NoninDf13 => {
                "Nonin Data Format 13: spot-checks with BCD timestamps, stored records oldest first"
            }
            Protocol::NoninDf8 => "Nonin Data Format 8: 4-byte live stream, one frame per second",
            Protocol::NoninDf7 => {
                "Nonin Data Format 7: 5-byte frames with 16-bit pleth, 25-frame packets"
            }
            Protocol::NoninDf2 => {
                "Nonin Data Format 2: 5-byte frames starting 01, 25-frame packets"
            }
        }
    }

    /// The kind of reading the protocol produces.
    pub fn kind(self) -> Kind {
        Kind::PulseOximetry
    }

    /// Continuous streams produce a value set every second or so; the pipeline turns them into spot readings.
    pub fn is_continuous(self) -> bool {
        !matches!(self, Protocol::NoninDf13)
    }

    pub fn line_settings(self) -> LineSettings {
        LineSettings { baud_rate: 9600 }
    }

    pub fn new_decoder(self) -> Box<dyn StreamDecoder> {
        match self {
            Protocol::NoninDf13 => Box::new(nonin::DataFormat13Decoder::default()),
            Protocol::NoninDf8 => Box::new(nonin::DataFormat8Decoder::default()),
            Protocol::NoninDf7 => Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df7)),
            Protocol::NoninDf2 => Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df2)),
        }
    }
}

/// Renders bytes for error messages and the payload's `raw` field: lowercase hex, no separators.
pub fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

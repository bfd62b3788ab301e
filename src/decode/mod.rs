//! Device protocols: pure byte-stream decoders from wire bytes (and a receive time passed in) to readings.
//!
//! Nothing under `decode/` does I/O, is `async`, or reads a clock; the `tidy` test enforces it.
//! A decoder is a small state machine fed with whatever chunks the transport read: it finds frame
//! boundaries itself, resynchronises after garbage, and reports a bad frame as a [`DecodeEvent::Rejected`]
//! value, never as a panic or an end of the stream.

pub mod berrymed;
pub mod blood_pressure;
pub mod body_composition;
pub mod contec;
pub mod current_time;
pub mod device_information;
pub mod glucose;
pub mod ieee11073;
pub mod jumper;
pub mod line;
pub mod masimo;
pub mod nonin;
pub mod pulse_oximeter;
pub mod tanita;
pub mod thermometer;
pub mod weight_scale;
pub mod xiaomi_scale;

use crate::model::reading::Reading;

/// What a decoder needs from the outside world, passed in rather than read: the receive time, the hub's
/// time zone, whether the hub trusted its clock, and the device clock read in the session.
pub use crate::model::measurement_time::HubTime as DecodeContext;

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

    /// What the hub should send the device now, given what was decoded so far and the time passed in (its
    /// timers run on `now.steady`), and what the passing of time settled (a download that ended with a
    /// pause). Protocols that hold a dialog with the device (start a stream, keep it alive, ask for stored
    /// data or the clock) answer here; the transport only writes the bytes. Called after every `feed` and
    /// about twice a second, never while bytes the transport read wait to be fed.
    fn poll(&mut self, _now: &DecodeContext<'_>) -> Polled {
        Polled::default()
    }

    /// Download progress that must outlive the connection (which stored sessions were already fetched), as
    /// opaque text the pipeline keeps in the state directory; `None` for protocols that keep none.
    fn checkpoint(&self) -> Option<String> {
        None
    }

    /// Takes back a checkpoint this protocol gave earlier; text it cannot read is ignored.
    fn resume(&mut self, _checkpoint: &str) {}
}

/// What a [`StreamDecoder::poll`] found: commands for the device, and events the time settled.
#[derive(Debug, Default, PartialEq)]
pub struct Polled {
    pub commands: Vec<HostCommand>,
    pub events: Vec<DecodeEvent>,
}

/// Bytes the hub sends a device in the course of its protocol's dialog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCommand {
    pub bytes: Vec<u8>,
    pub purpose: CommandPurpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandPurpose {
    /// A step of a dialog: a question, or the start of a stream.
    Dialog,
    /// Keeps a running stream going.
    KeepAlive,
    /// Starts again a stream that stopped on its own.
    RestartStream,
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

    /// The messages ended (the link is gone): reports a message left waiting for its continuation.
    fn finish(&mut self) -> Option<FrameError> {
        None
    }
}

/// Serial line settings a protocol needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud_rate: u32,
    pub parity: Parity,
}

/// A serial line's parity, named in lowercase in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString)]
#[strum(serialize_all = "lowercase")]
pub enum Parity {
    None,
    Odd,
    Even,
}

/// What the transport sends a device on its own right after the port opens, before any byte is decoded
/// (a Nonin 9560 listens for its data-format command only in its first seconds). Pure data; the serial
/// transport does the writing. Dialogs that depend on the device's answers go through
/// [`StreamDecoder::poll`] instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostCommands {
    pub on_open: Vec<Vec<u8>>,
}

/// How a protocol's bytes reach the hub; part of the payload's vocabulary, so it lives in the model.
pub use crate::model::payload::Transport;

/// Every protocol this build decodes: the key of the catalogue (`crate::catalog`), whose rows say
/// everything else about each (its name, link, decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(test, derive(strum::EnumIter))]
pub enum Protocol {
    NoninDf13,
    NoninDf8,
    NoninDf7,
    NoninDf2,
    BloodPressureMeasurement,
    IntermediateCuffPressure,
    PlxSpotCheck,
    PlxContinuous,
    WeightMeasurement,
    BodyCompositionMeasurement,
    GlucoseMeasurement,
    TemperatureMeasurement,
    XiaomiScale,
    XiaomiBodyCompositionScale,
    Berrymed,
    JumperOximeter,
    ContecCms50Legacy,
    ContecCms50,
    MasimoAscii,
    Tanita,
}

/// A message decoder seen as a stream decoder whose every `feed` is one whole message.
pub fn message_stream(decoder: Box<dyn MessageDecoder>) -> Box<dyn StreamDecoder> {
    Box::new(Messages(decoder))
}

/// Presents a message decoder as a stream decoder whose every `feed` is one whole message.
struct Messages(Box<dyn MessageDecoder>);

impl StreamDecoder for Messages {
    fn feed(&mut self, message: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        match self.0.decode(message, context) {
            Ok(readings) => readings.into_iter().map(DecodeEvent::Reading).collect(),
            Err(error) => vec![DecodeEvent::Rejected(error)],
        }
    }

    fn finish(&mut self) -> Option<FrameError> {
        self.0.finish()
    }
}

/// Renders bytes for error messages and the payload's `raw` field: lowercase hex, no separators.
pub fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

// Declared last: the `tidy` checks read production code up to the first test-only item.
#[cfg(test)]
pub(crate) mod test_support;

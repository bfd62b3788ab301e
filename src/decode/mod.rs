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

use chrono::{DateTime, Utc};

use crate::reading::Reading;

/// What a decoder needs from the outside world, passed in rather than read: the receive time, the hub's
/// time zone, whether the hub trusted its clock, and the device clock read in the session.
pub use crate::measurement_time::HubTime as DecodeContext;

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

    /// What the hub should send the device now, given what was decoded so far and the time passed in, and
    /// what the passing of time settled (a download that ended with a pause). Protocols that hold a dialog
    /// with the device (start a stream, keep it alive, ask for stored data) answer here; the transport only
    /// writes the bytes. Called after every `feed` and about twice a second, never while bytes the
    /// transport read wait to be fed.
    fn poll(
        &mut self,
        _now: DateTime<Utc>,
        _hub_clock: crate::measurement_time::HubClock,
    ) -> Polled {
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
}

/// Serial line settings a protocol needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    pub baud_rate: u32,
    pub parity: Parity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// How a protocol's bytes reach the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Serial,
    Ble,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Serial => "serial",
            Transport::Ble => "ble",
        }
    }
}

/// Every protocol this build decodes; the names are `vitalsd decode` names, and the serial ones are also
/// `[[serial]] protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

impl Protocol {
    pub const ALL: [Protocol; 20] = [
        Protocol::NoninDf13,
        Protocol::NoninDf8,
        Protocol::NoninDf7,
        Protocol::NoninDf2,
        Protocol::BloodPressureMeasurement,
        Protocol::IntermediateCuffPressure,
        Protocol::PlxSpotCheck,
        Protocol::PlxContinuous,
        Protocol::WeightMeasurement,
        Protocol::BodyCompositionMeasurement,
        Protocol::GlucoseMeasurement,
        Protocol::TemperatureMeasurement,
        Protocol::XiaomiScale,
        Protocol::XiaomiBodyCompositionScale,
        Protocol::Berrymed,
        Protocol::JumperOximeter,
        Protocol::ContecCms50Legacy,
        Protocol::ContecCms50,
        Protocol::MasimoAscii,
        Protocol::Tanita,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::NoninDf13 => "nonin-df13",
            Protocol::NoninDf8 => "nonin-df8",
            Protocol::NoninDf7 => "nonin-df7",
            Protocol::NoninDf2 => "nonin-df2",
            Protocol::BloodPressureMeasurement => "blood-pressure-measurement",
            Protocol::IntermediateCuffPressure => "intermediate-cuff-pressure",
            Protocol::PlxSpotCheck => "plx-spot-check",
            Protocol::PlxContinuous => "plx-continuous",
            Protocol::WeightMeasurement => "weight-measurement",
            Protocol::BodyCompositionMeasurement => "body-composition-measurement",
            Protocol::GlucoseMeasurement => "glucose-measurement",
            Protocol::TemperatureMeasurement => "temperature-measurement",
            Protocol::XiaomiScale => "xiaomi-scale",
            Protocol::XiaomiBodyCompositionScale => "xiaomi-body-composition-scale",
            Protocol::Berrymed => "berrymed",
            Protocol::JumperOximeter => "jumper-oximeter",
            Protocol::ContecCms50Legacy => "contec-cms50-legacy",
            Protocol::ContecCms50 => "contec-cms50",
            Protocol::MasimoAscii => "masimo-ascii",
            Protocol::Tanita => "tanita",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.name() == name)
    }

    /// One line for `vitalsd decode --list`.
    pub fn description(self) -> &'static str {
        match self {
            Protocol::NoninDf13 => "Nonin Data Format 13: spot-checks with BCD timestamps, stored records oldest first",
            Protocol::NoninDf8 => "Nonin Data Format 8: 4-byte live stream, one frame per second",
            Protocol::NoninDf7 => "Nonin Data Format 7: 5-byte frames with 16-bit pleth, 25-frame packets",
            Protocol::NoninDf2 => "Nonin Data Format 2: 5-byte frames starting 01, 25-frame packets",
            Protocol::BloodPressureMeasurement => "GATT 0x2A35 Blood Pressure Measurement",
            Protocol::IntermediateCuffPressure => "GATT 0x2A36 Intermediate Cuff Pressure (progress, never forwarded)",
            Protocol::PlxSpotCheck => "GATT 0x2A5E PLX Spot-check Measurement",
            Protocol::PlxContinuous => "GATT 0x2A5F PLX Continuous Measurement",
            Protocol::WeightMeasurement => "GATT 0x2A9D Weight Measurement",
            Protocol::BodyCompositionMeasurement => {
                "GATT 0x2A9C Body Composition Measurement (two-packet records: separate the values with /)"
            }
            Protocol::GlucoseMeasurement => "GATT 0x2A18 Glucose Measurement",
            Protocol::TemperatureMeasurement => "GATT 0x2A1C Temperature Measurement (also 0x2A1E)",
            Protocol::XiaomiScale => "Xiaomi Mi Smart Scale advertisement, service data 0x181D",
            Protocol::XiaomiBodyCompositionScale => "Xiaomi Mi Body Composition Scale advertisement, service data 0x181B",
            Protocol::Berrymed => "BerryMed BCI oximeter stream (5-byte packets)",
            Protocol::JumperOximeter => "Jumper JPD-500F / PLS-01BT oximeter notifications",
            Protocol::ContecCms50Legacy => "Contec CMS50D+/E legacy 5-byte stream (19200 8O1)",
            Protocol::ContecCms50 => "Contec CMS50D+/E/F \"7D 81\" protocol (115200 8N1; the hub starts and keeps the stream)",
            Protocol::MasimoAscii => "Masimo Rad-8 / Radical-7 ASCII 1 and ASCII 2 lines (9600 8N1)",
            Protocol::Tanita => "Tanita scale CSV lines \"{0,16,~0,1,...\" (9600 8N1, CR LF)",
        }
    }

    pub fn transport(self) -> Transport {
        match self {
            Protocol::NoninDf13
            | Protocol::NoninDf8
            | Protocol::NoninDf7
            | Protocol::NoninDf2
            | Protocol::ContecCms50Legacy
            | Protocol::ContecCms50
            | Protocol::MasimoAscii
            | Protocol::Tanita => Transport::Serial,
            _ => Transport::Ble,
        }
    }

    /// Continuous streams produce a value set every second or so; the pipeline turns them into spot readings.
    pub fn is_continuous(self) -> bool {
        matches!(
            self,
            Protocol::NoninDf8
                | Protocol::NoninDf7
                | Protocol::NoninDf2
                | Protocol::PlxContinuous
                | Protocol::Berrymed
                | Protocol::JumperOximeter
                | Protocol::ContecCms50Legacy
                | Protocol::ContecCms50
                | Protocol::MasimoAscii
        )
    }

    /// Whether every message (characteristic value, advertisement) is complete in itself, rather than a
    /// byte stream that needs framing. `vitalsd decode` separates several messages with `/`.
    pub fn is_message_based(self) -> bool {
        self.transport() == Transport::Ble && self != Protocol::Berrymed
    }

    /// Serial line settings, for serial protocols: 8 data bits, 1 stop bit, no flow control, and these.
    pub fn line_settings(self) -> Option<LineSettings> {
        let (baud_rate, parity) = match self {
            Protocol::ContecCms50Legacy => (19_200, Parity::Odd),
            Protocol::ContecCms50 => (115_200, Parity::None),
            protocol if protocol.transport() == Transport::Serial => (9600, Parity::None),
            _ => return None,
        };
        Some(LineSettings { baud_rate, parity })
    }

    /// What the hub sends the device as the port opens. `select_format` asks a Nonin 9560 to switch to this
    /// data format (it listens only in its first seconds after connecting, and stores the choice).
    pub fn host_commands(self, select_format: bool) -> HostCommands {
        let nonin_format = match self {
            Protocol::NoninDf13 => Some(0x0D),
            Protocol::NoninDf8 => Some(0x08),
            Protocol::NoninDf7 => Some(0x07),
            Protocol::NoninDf2 => Some(0x02),
            _ => None,
        };
        match nonin_format {
            Some(format) if select_format => HostCommands {
                on_open: vec![vec![0x02, 0x70, 0x02, 0x02, format, 0x03]],
            },
            _ => HostCommands::default(),
        }
    }

    pub fn new_decoder(self) -> Box<dyn StreamDecoder> {
        match self {
            Protocol::NoninDf13 => Box::new(nonin::DataFormat13Decoder::default()),
            Protocol::NoninDf8 => Box::new(nonin::DataFormat8Decoder::default()),
            Protocol::NoninDf7 => Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df7)),
            Protocol::NoninDf2 => Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df2)),
            Protocol::BloodPressureMeasurement => {
                messages(blood_pressure::BloodPressureMeasurementDecoder)
            }
            Protocol::IntermediateCuffPressure => {
                messages(blood_pressure::IntermediateCuffPressureDecoder)
            }
            Protocol::PlxSpotCheck => messages(pulse_oximeter::PlxSpotCheckDecoder),
            Protocol::PlxContinuous => messages(pulse_oximeter::PlxContinuousDecoder),
            Protocol::WeightMeasurement => messages(weight_scale::WeightMeasurementDecoder),
            Protocol::BodyCompositionMeasurement => {
                messages(body_composition::BodyCompositionMeasurementDecoder::default())
            }
            Protocol::GlucoseMeasurement => messages(glucose::GlucoseMeasurementDecoder),
            Protocol::TemperatureMeasurement => {
                messages(thermometer::TemperatureMeasurementDecoder)
            }
            Protocol::XiaomiScale => messages(xiaomi_scale::XiaomiScaleDecoder::default()),
            Protocol::XiaomiBodyCompositionScale => {
                messages(xiaomi_scale::XiaomiBodyCompositionScaleDecoder::default())
            }
            Protocol::Berrymed => Box::new(berrymed::BerrymedDecoder::default()),
            Protocol::JumperOximeter => messages(jumper::JumperOximeterDecoder),
            Protocol::ContecCms50Legacy => Box::new(berrymed::BerrymedDecoder::new(
                berrymed::BciFlavour::ContecLegacy,
            )),
            Protocol::ContecCms50 => Box::new(contec::ContecDecoder::default()),
            Protocol::MasimoAscii => Box::new(masimo::decoder()),
            Protocol::Tanita => Box::new(tanita::decoder()),
        }
    }
}

fn messages(decoder: impl MessageDecoder + 'static) -> Box<dyn StreamDecoder> {
    Box::new(Messages(decoder))
}

/// Presents a message decoder as a stream decoder whose every `feed` is one whole message.
struct Messages<D>(D);

impl<D: MessageDecoder> StreamDecoder for Messages<D> {
    fn feed(&mut self, message: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        match self.0.decode(message, context) {
            Ok(readings) => readings.into_iter().map(DecodeEvent::Reading).collect(),
            Err(error) => vec![DecodeEvent::Rejected(error)],
        }
    }

    fn finish(&mut self) -> Option<FrameError> {
        None
    }
}

/// Renders bytes for error messages and the payload's `raw` field: lowercase hex, no separators.
pub fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

// Declared last: the `tidy` checks read production code up to the first test-only item.
#[cfg(test)]
pub(crate) mod test_support;

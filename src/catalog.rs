//! The protocol catalogue: one typed row per protocol the hub decodes, and everything else reads it.
//!
//! A row says how the protocol's bytes reach the hub (serial line settings, a GATT characteristic, an
//! advertisement), whether its readings are a continuous stream or spot measurements, which decoder reads
//! it, and how the hub recognises a device that speaks it (USB adapter ids, listening, advertised names).
//! `vitalsd decode --list`, the Bluetooth profile, `vitalsd serial` and the configuration's `protocol`
//! check all read these rows, so adding a device is one decoder module, a `Protocol` variant with its row
//! here, and their tests (which hold every variant to exactly one row).
//! Pure data: it names decoder constructors but no transport.

use uuid::Uuid;

use crate::decode::{
    berrymed, blood_pressure, body_composition, contec, glucose, jumper, masimo, nonin,
    pulse_oximeter, tanita, thermometer, weight_scale, xiaomi_scale, HostCommands, LineSettings,
    MessageDecoder, Parity, Protocol, StreamDecoder, Transport,
};

/// Everything the hub knows about one protocol.
#[derive(Debug)]
pub struct ProtocolSpec {
    pub protocol: Protocol,
    /// The `vitalsd decode` name; also the `[[serial]] protocol` value and the payload's `device.protocol`.
    pub name: &'static str,
    /// One line for `vitalsd decode --list` and `vitalsd serial`.
    pub description: &'static str,
    pub link: Link,
    pub continuity: Continuity,
    pub decoder: Decoder,
    /// Advertised names of the Bluetooth devices known to speak this protocol, for `vitalsd scan` and the
    /// bound devices' model.
    pub models: &'static [Model],
    /// The kind of device that speaks it, as IEEE 11073 names the device specialisations.
    pub specialization: Specialization,
}

/// IEEE 11073-20601 device specialisations (`MDC_DEV_SPEC_PROFILE_*`, partition 8), the `device.specialization`
/// of a reading and the PHD implementation guide's `Device.specialization.systemType`: the code is 528384
/// plus the specialisation standard's number after 10400 (10404, pulse oximeters: 528388).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specialization {
    PulseOximeter = 528_388,
    BloodPressure = 528_391,
    Thermometer = 528_392,
    WeighingScale = 528_399,
    GlucoseMeter = 528_401,
    BodyComposition = 528_404,
}

/// How a protocol's bytes reach the hub.
#[derive(Debug)]
pub enum Link {
    Serial(SerialLink),
    /// Notifications or indications of one characteristic of a connected device.
    Gatt {
        service: Uuid,
        characteristic: Uuid,
        /// The dialog the hub holds with the device besides that characteristic, if any.
        dialog: Option<GattDialog>,
    },
    /// Service data of advertisements from a device that never connects, told apart by its length (Xiaomi
    /// scales put a non-SIG layout under the SIG weight and body composition UUIDs).
    Advertisement {
        service: Uuid,
        data_len: usize,
    },
}

/// A dialog a Bluetooth session holds with a device over characteristics besides its measurement one:
/// which dialog to build, and where its messages come and go. A session reads this, never fixed UUIDs, so
/// a second device with a dialog is a row and a dialog, not a change to the transport.
#[derive(Debug, Clone, Copy)]
pub struct GattDialog {
    pub dialog: Dialog,
    /// The control point the dialog writes its requests to and whose indications answer them. It is
    /// subscribed whenever the device has it; without it the dialog asks for nothing.
    pub control_point: Uuid,
    /// Characteristics whose notifications complete a measurement (a glucose record's context),
    /// subscribed when the device notifies them.
    pub companions: &'static [Uuid],
}

/// Which sans-IO dialog a session builds for a [`GattDialog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialog {
    /// A glucose meter's record transfer over the Record Access Control Point, with each record's
    /// context joined to it (`decode::glucose::dialog::RecordDialog`).
    GlucoseRecords,
}

/// A serial protocol's port settings and what the hub may do to recognise it.
#[derive(Debug)]
pub struct SerialLink {
    /// 8 data bits, 1 stop bit, no flow control, and these.
    pub line: LineSettings,
    /// Sent as the port opens when the configuration says `select_format = true`: asks the device to switch
    /// to this format (a Nonin 9560 listens for it only in its first seconds, and stores the choice).
    pub select_format: Option<&'static [u8]>,
    pub listen: Listen,
    /// USB adapters only this protocol's devices come with, so the ids alone name the protocol.
    pub adapters: &'static [UsbAdapter],
}

/// Whether `vitalsd serial` can recognise the protocol by listening to a port without sending anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listen {
    Passive,
    /// The device speaks only when asked, and asking is not passive.
    OnlyWhenAsked,
}

/// Whether readings come as a stream the pipeline turns into spot readings, or as spot readings already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continuity {
    /// A value set every second or so.
    Continuous,
    Spot,
    /// Values that show a measurement under way (a cuff's pressure while it inflates): a session keeps
    /// the latest in memory for `vitalsd devices`, and none of them is ever a reading.
    Progress,
}

/// The decoder a connection of this protocol gets.
#[derive(Debug, Clone, Copy)]
pub enum Decoder {
    /// A byte stream the decoder frames itself.
    Stream(fn() -> Box<dyn StreamDecoder>),
    /// Messages complete in themselves (characteristic values, advertisements); `vitalsd decode`
    /// separates several with `/`.
    Messages(fn() -> Box<dyn MessageDecoder>),
}

/// A device model by the prefix of the name it advertises (compared in upper case).
#[derive(Debug)]
pub struct Model {
    pub name_prefix: &'static str,
    pub model: &'static str,
}

/// A USB serial adapter by its vendor and product id.
#[derive(Debug)]
pub struct UsbAdapter {
    pub vid: u16,
    pub pid: u16,
    pub description: &'static str,
}

/// The Bluetooth SIG base UUID with a 16-bit number in it.
pub const fn sig(short: u16) -> Uuid {
    Uuid::from_u128(0x0000_0000_0000_1000_8000_0080_5f9b_34fb | ((short as u128) << 96))
}

pub const BLOOD_PRESSURE_SERVICE: Uuid = sig(0x1810);
pub const PULSE_OXIMETER_SERVICE: Uuid = sig(0x1822);
pub const WEIGHT_SCALE_SERVICE: Uuid = sig(0x181D);
pub const BODY_COMPOSITION_SERVICE: Uuid = sig(0x181B);
pub const GLUCOSE_SERVICE: Uuid = sig(0x1808);
pub const HEALTH_THERMOMETER_SERVICE: Uuid = sig(0x1809);
pub const BERRYMED_SERVICE: Uuid = Uuid::from_u128(0x49535343_fe7d_4ae5_8fa9_9fafd205e455);
pub const BERRYMED_NOTIFY: Uuid = Uuid::from_u128(0x49535343_1e4d_4bd9_ba61_23c647249616);
pub const JUMPER_SERVICE: Uuid = Uuid::from_u128(0xcdeacb80_5235_4c07_8846_93a37ee6b86d);
pub const JUMPER_NOTIFY: Uuid = Uuid::from_u128(0xcdeacb81_5235_4c07_8846_93a37ee6b86d);
pub const GLUCOSE_CONTEXT: Uuid = sig(0x2A34);
pub const RECORD_ACCESS_CONTROL_POINT: Uuid = sig(0x2A52);

/// A glucose meter's record transfer: records asked for through the RACP, contexts joined to them.
const GLUCOSE_RECORDS: GattDialog = GattDialog {
    dialog: Dialog::GlucoseRecords,
    control_point: RECORD_ACCESS_CONTROL_POINT,
    companions: &[GLUCOSE_CONTEXT],
};

const LINE_9600_8N1: LineSettings = LineSettings {
    baud_rate: 9600,
    parity: Parity::None,
};

/// The Nonin command that selects a data format: STX, op 0x70, two length bytes, the format, ETX.
const fn nonin_format(format: u8) -> [u8; 6] {
    [0x02, 0x70, 0x02, 0x02, format, 0x03]
}
const SELECT_DF13: [u8; 6] = nonin_format(0x0D);
const SELECT_DF8: [u8; 6] = nonin_format(0x08);
const SELECT_DF7: [u8; 6] = nonin_format(0x07);
const SELECT_DF2: [u8; 6] = nonin_format(0x02);

/// Every protocol, in the order `vitalsd decode --list` shows them.
#[rustfmt::skip]
pub const PROTOCOLS: [ProtocolSpec; 20] = [
    ProtocolSpec {
        protocol: Protocol::NoninDf13,
        specialization: Specialization::PulseOximeter,
        name: "nonin-df13",
        description: "Nonin Data Format 13: spot-checks with BCD timestamps, stored records oldest first",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: Some(&SELECT_DF13), listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Spot,
        decoder: Decoder::Stream(|| Box::new(nonin::DataFormat13Decoder::default())),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::NoninDf8,
        specialization: Specialization::PulseOximeter,
        name: "nonin-df8",
        description: "Nonin Data Format 8: 4-byte live stream, one frame per second",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: Some(&SELECT_DF8), listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(nonin::DataFormat8Decoder::default())),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::NoninDf7,
        specialization: Specialization::PulseOximeter,
        name: "nonin-df7",
        description: "Nonin Data Format 7: 5-byte frames with 16-bit pleth, 25-frame packets",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: Some(&SELECT_DF7), listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df7))),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::NoninDf2,
        specialization: Specialization::PulseOximeter,
        name: "nonin-df2",
        description: "Nonin Data Format 2: 5-byte frames starting 01, 25-frame packets",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: Some(&SELECT_DF2), listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(nonin::DataFormat2Decoder::new(nonin::Df2Variant::Df2))),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::BloodPressureMeasurement,
        specialization: Specialization::BloodPressure,
        name: "blood-pressure-measurement",
        description: "GATT 0x2A35 Blood Pressure Measurement",
        link: Link::Gatt { service: BLOOD_PRESSURE_SERVICE, characteristic: sig(0x2A35), dialog: None },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(blood_pressure::BloodPressureMeasurementDecoder)),
        models: &[
            Model { name_prefix: "A&D_UA-651", model: "A&D UA-651BLE" },
            Model { name_prefix: "BLESMART_", model: "Omron (BLESmart)" },
        ],
    },
    ProtocolSpec {
        protocol: Protocol::IntermediateCuffPressure,
        specialization: Specialization::BloodPressure,
        name: "intermediate-cuff-pressure",
        description: "GATT 0x2A36 Intermediate Cuff Pressure (progress, never forwarded)",
        link: Link::Gatt { service: BLOOD_PRESSURE_SERVICE, characteristic: sig(0x2A36), dialog: None },
        continuity: Continuity::Progress,
        decoder: Decoder::Messages(|| Box::new(blood_pressure::IntermediateCuffPressureDecoder)),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::PlxSpotCheck,
        specialization: Specialization::PulseOximeter,
        name: "plx-spot-check",
        description: "GATT 0x2A5E PLX Spot-check Measurement",
        link: Link::Gatt { service: PULSE_OXIMETER_SERVICE, characteristic: sig(0x2A5E), dialog: None },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(pulse_oximeter::PlxSpotCheckDecoder)),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::PlxContinuous,
        specialization: Specialization::PulseOximeter,
        name: "plx-continuous",
        description: "GATT 0x2A5F PLX Continuous Measurement",
        link: Link::Gatt { service: PULSE_OXIMETER_SERVICE, characteristic: sig(0x2A5F), dialog: None },
        continuity: Continuity::Continuous,
        decoder: Decoder::Messages(|| Box::new(pulse_oximeter::PlxContinuousDecoder)),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::WeightMeasurement,
        specialization: Specialization::WeighingScale,
        name: "weight-measurement",
        description: "GATT 0x2A9D Weight Measurement",
        link: Link::Gatt { service: WEIGHT_SCALE_SERVICE, characteristic: sig(0x2A9D), dialog: None },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(weight_scale::WeightMeasurementDecoder)),
        models: &[Model { name_prefix: "A&D_UC-352", model: "A&D UC-352BLE" }],
    },
    ProtocolSpec {
        protocol: Protocol::BodyCompositionMeasurement,
        specialization: Specialization::BodyComposition,
        name: "body-composition-measurement",
        description: "GATT 0x2A9C Body Composition Measurement (two-packet records: separate the values with /)",
        link: Link::Gatt { service: BODY_COMPOSITION_SERVICE, characteristic: sig(0x2A9C), dialog: None },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(body_composition::BodyCompositionMeasurementDecoder::default())),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::GlucoseMeasurement,
        specialization: Specialization::GlucoseMeter,
        name: "glucose-measurement",
        description: "GATT 0x2A18 Glucose Measurement",
        link: Link::Gatt { service: GLUCOSE_SERVICE, characteristic: sig(0x2A18), dialog: Some(GLUCOSE_RECORDS) },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(glucose::GlucoseMeasurementDecoder)),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::TemperatureMeasurement,
        specialization: Specialization::Thermometer,
        name: "temperature-measurement",
        description: "GATT 0x2A1C Temperature Measurement (also 0x2A1E)",
        link: Link::Gatt { service: HEALTH_THERMOMETER_SERVICE, characteristic: sig(0x2A1C), dialog: None },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(thermometer::TemperatureMeasurementDecoder)),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::XiaomiScale,
        specialization: Specialization::WeighingScale,
        name: "xiaomi-scale",
        description: "Xiaomi Mi Smart Scale advertisement, service data 0x181D",
        link: Link::Advertisement { service: WEIGHT_SCALE_SERVICE, data_len: 10 },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(xiaomi_scale::XiaomiScaleDecoder::default())),
        models: &[
            Model { name_prefix: "MI SCALE2", model: "Xiaomi Mi Smart Scale 2" },
            Model { name_prefix: "MI_SCALE", model: "Xiaomi Mi Smart Scale" },
        ],
    },
    ProtocolSpec {
        protocol: Protocol::XiaomiBodyCompositionScale,
        specialization: Specialization::BodyComposition,
        name: "xiaomi-body-composition-scale",
        description: "Xiaomi Mi Body Composition Scale advertisement, service data 0x181B",
        link: Link::Advertisement { service: BODY_COMPOSITION_SERVICE, data_len: 13 },
        continuity: Continuity::Spot,
        decoder: Decoder::Messages(|| Box::new(xiaomi_scale::XiaomiBodyCompositionScaleDecoder::default())),
        models: &[
            Model { name_prefix: "MIBCS", model: "Xiaomi Mi Body Composition Scale" },
            Model { name_prefix: "MIBFS", model: "Xiaomi Mi Body Composition Scale" },
        ],
    },
    ProtocolSpec {
        protocol: Protocol::Berrymed,
        specialization: Specialization::PulseOximeter,
        name: "berrymed",
        description: "BerryMed BCI oximeter stream (5-byte packets)",
        link: Link::Gatt { service: BERRYMED_SERVICE, characteristic: BERRYMED_NOTIFY, dialog: None },
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(berrymed::BerrymedDecoder::default())),
        models: &[
            Model { name_prefix: "BERRYMED", model: "BerryMed BCI oximeter" },
            Model { name_prefix: "BM1000", model: "BerryMed BCI oximeter" },
        ],
    },
    ProtocolSpec {
        protocol: Protocol::JumperOximeter,
        specialization: Specialization::PulseOximeter,
        name: "jumper-oximeter",
        description: "Jumper JPD-500F / PLS-01BT oximeter notifications",
        link: Link::Gatt { service: JUMPER_SERVICE, characteristic: JUMPER_NOTIFY, dialog: None },
        continuity: Continuity::Continuous,
        decoder: Decoder::Messages(|| Box::new(jumper::JumperOximeterDecoder)),
        models: &[Model { name_prefix: "MY OXIMETER", model: "Jumper JPD-500F" }],
    },
    ProtocolSpec {
        protocol: Protocol::ContecCms50Legacy,
        specialization: Specialization::PulseOximeter,
        name: "contec-cms50-legacy",
        description: "Contec CMS50D+/E legacy 5-byte stream (19200 8O1)",
        link: Link::Serial(SerialLink {
            line: LineSettings { baud_rate: 19_200, parity: Parity::Odd },
            select_format: None,
            listen: Listen::Passive,
            adapters: &[],
        }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(berrymed::BerrymedDecoder::new(berrymed::BciFlavour::ContecLegacy))),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::ContecCms50,
        specialization: Specialization::PulseOximeter,
        name: "contec-cms50",
        description: "Contec CMS50D+/E/F \"7D 81\" protocol (115200 8N1; the hub starts and keeps the stream)",
        link: Link::Serial(SerialLink {
            line: LineSettings { baud_rate: 115_200, parity: Parity::None },
            select_format: None,
            listen: Listen::OnlyWhenAsked,
            adapters: &[UsbAdapter { vid: 0x10C4, pid: 0xEA60, description: "Silicon Labs CP210x, the Contec CMS50 cable" }],
        }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(contec::ContecDecoder::default())),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::MasimoAscii,
        specialization: Specialization::PulseOximeter,
        name: "masimo-ascii",
        description: "Masimo Rad-8 / Radical-7 ASCII 1 and ASCII 2 lines (9600 8N1)",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: None, listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Continuous,
        decoder: Decoder::Stream(|| Box::new(masimo::decoder())),
        models: &[],
    },
    ProtocolSpec {
        protocol: Protocol::Tanita,
        specialization: Specialization::BodyComposition,
        name: "tanita",
        description: "Tanita scale CSV lines \"{0,16,~0,1,...\" (9600 8N1, CR LF)",
        link: Link::Serial(SerialLink { line: LINE_9600_8N1, select_format: None, listen: Listen::Passive, adapters: &[] }),
        continuity: Continuity::Spot,
        decoder: Decoder::Stream(|| Box::new(tanita::decoder())),
        models: &[],
    },
];

/// USB serial adapters that many device families use: the ids say what the adapter is, not the protocol.
#[rustfmt::skip]
pub const SHARED_ADAPTERS: [UsbAdapter; 4] = [
    UsbAdapter { vid: 0x0403, pid: 0x6001, description: "FTDI USB-serial (Masimo, Tanita and Nonin cables, among others)" },
    UsbAdapter { vid: 0x0403, pid: 0x6015, description: "FTDI USB-serial (Masimo, Tanita and Nonin cables, among others)" },
    UsbAdapter { vid: 0x067B, pid: 0x2303, description: "Prolific PL2303 USB-serial" },
    UsbAdapter { vid: 0x1A86, pid: 0x7523, description: "WCH CH340 USB-serial" },
];

/// Advertised-name prefixes that say only who made a device, not what it speaks; a model's own prefix
/// (in a protocol's row) is longer and wins.
#[rustfmt::skip]
pub const VENDORS: [Model; 2] = [
    Model { name_prefix: "A&D_", model: "A&D Medical" },
    Model { name_prefix: "NONIN", model: "Nonin oximeter" },
];

impl Protocol {
    /// Every protocol, in catalogue order.
    pub const ALL: [Protocol; PROTOCOLS.len()] = {
        let mut all = [Protocol::NoninDf13; PROTOCOLS.len()];
        let mut at = 0;
        while at < PROTOCOLS.len() {
            all[at] = PROTOCOLS[at].protocol;
            at += 1;
        }
        all
    };

    /// This protocol's catalogue row.
    pub fn spec(self) -> &'static ProtocolSpec {
        PROTOCOLS
            .iter()
            .find(|row| row.protocol == self)
            .expect("invariant: every protocol has a catalogue row (tested below)")
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        PROTOCOLS
            .iter()
            .find(|row| row.name == name)
            .map(|row| row.protocol)
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The IEEE 11073 device specialisation code of the devices that speak it.
    pub fn specialization(self) -> u32 {
        self.spec().specialization as u32
    }

    /// One line for `vitalsd decode --list`.
    pub fn description(self) -> &'static str {
        self.spec().description
    }

    pub fn transport(self) -> Transport {
        match self.spec().link {
            Link::Serial(_) => Transport::Serial,
            Link::Gatt { .. } | Link::Advertisement { .. } => Transport::Ble,
        }
    }

    /// Continuous streams produce a value set every second or so; the pipeline turns them into spot readings.
    pub fn is_continuous(self) -> bool {
        self.spec().continuity == Continuity::Continuous
    }

    /// Progress values (a cuff's pressure while it inflates) are shown, never stored as readings.
    pub fn is_progress(self) -> bool {
        self.spec().continuity == Continuity::Progress
    }

    /// The dialog a Bluetooth session holds with a device of this protocol, for a protocol that has one.
    pub fn gatt_dialog(self) -> Option<GattDialog> {
        match self.spec().link {
            Link::Gatt { dialog, .. } => dialog,
            _ => None,
        }
    }

    /// Whether every message (characteristic value, advertisement) is complete in itself, rather than a
    /// byte stream that needs framing. `vitalsd decode` separates several messages with `/`.
    pub fn is_message_based(self) -> bool {
        matches!(self.spec().decoder, Decoder::Messages(_))
    }

    /// Serial line settings, for serial protocols.
    pub fn line_settings(self) -> Option<LineSettings> {
        match &self.spec().link {
            Link::Serial(serial) => Some(serial.line),
            _ => None,
        }
    }

    /// Whether the hub can ask the device for this data format as the port opens (`select_format`).
    pub fn has_format_command(self) -> bool {
        matches!(
            self.spec().link,
            Link::Serial(SerialLink {
                select_format: Some(_),
                ..
            })
        )
    }

    /// What the hub sends the device as the port opens; `select_format` is the `[[serial]]` key.
    pub fn host_commands(self, select_format: bool) -> HostCommands {
        match &self.spec().link {
            Link::Serial(SerialLink {
                select_format: Some(command),
                ..
            }) if select_format => HostCommands {
                on_open: vec![command.to_vec()],
            },
            _ => HostCommands::default(),
        }
    }

    pub fn new_decoder(self) -> Box<dyn StreamDecoder> {
        match self.spec().decoder {
            Decoder::Stream(make) => make(),
            Decoder::Messages(make) => crate::decode::message_stream(make()),
        }
    }
}

/// A technician-facing model guess from an advertised name: the longest known prefix, model or vendor.
pub fn recognise_model(local_name: &str) -> Option<&'static str> {
    let upper = local_name.trim().to_ascii_uppercase();
    PROTOCOLS
        .iter()
        .flat_map(|row| row.models)
        .chain(&VENDORS)
        .filter(|known| upper.starts_with(known.name_prefix))
        .max_by_key(|known| known.name_prefix.len())
        .map(|known| known.model)
}

/// The protocol of a model [`recognise_model`] named, when the model is a device's and not only a vendor's.
pub fn protocol_of_model(model: &str) -> Option<Protocol> {
    PROTOCOLS
        .iter()
        .find(|row| row.models.iter().any(|known| known.model == model))
        .map(|row| row.protocol)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use strum::IntoEnumIterator;

    use super::*;

    #[test]
    fn the_fhir_gateway_lists_every_specialisation_the_catalogue_has() {
        let mut ours: Vec<u32> = PROTOCOLS
            .iter()
            .map(|row| row.specialization as u32)
            .collect();
        ours.sort_unstable();
        ours.dedup();
        assert_eq!(ours, crate::model::fhir::SPECIALIZATIONS);
    }

    #[test]
    fn every_protocol_has_exactly_one_row_and_names_are_unique() {
        for protocol in Protocol::iter() {
            let rows = PROTOCOLS.iter().filter(|r| r.protocol == protocol).count();
            assert_eq!(rows, 1, "{protocol:?} has {rows} rows");
        }
        let names: HashSet<&str> = PROTOCOLS.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), PROTOCOLS.len(), "a name is used twice");
        for row in &PROTOCOLS {
            let kebab = row
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            assert!(kebab, "{} is not kebab-case", row.name);
            assert_eq!(Protocol::from_name(row.name), Some(row.protocol));
        }
    }

    #[test]
    fn recognition_keys_name_one_protocol_each() {
        let mut characteristics = HashSet::new();
        let mut advertisements = HashSet::new();
        let mut adapters: HashSet<(u16, u16)> =
            SHARED_ADAPTERS.iter().map(|a| (a.vid, a.pid)).collect();
        assert_eq!(adapters.len(), SHARED_ADAPTERS.len());
        for row in &PROTOCOLS {
            match &row.link {
                Link::Gatt { characteristic, .. } => {
                    assert!(characteristics.insert(*characteristic), "{}", row.name)
                }
                Link::Advertisement { service, data_len } => {
                    assert!(advertisements.insert((*service, *data_len)), "{}", row.name)
                }
                Link::Serial(serial) => {
                    for adapter in serial.adapters {
                        assert!(adapters.insert((adapter.vid, adapter.pid)), "{}", row.name);
                    }
                }
            }
        }
        let prefixes: Vec<&str> = PROTOCOLS
            .iter()
            .flat_map(|row| row.models)
            .chain(&VENDORS)
            .map(|m| m.name_prefix)
            .collect();
        let unique: HashSet<&str> = prefixes.iter().copied().collect();
        assert_eq!(unique.len(), prefixes.len(), "a name prefix is used twice");
        for prefix in prefixes {
            assert_eq!(
                prefix,
                prefix.to_ascii_uppercase(),
                "compared in upper case"
            );
        }
    }

    #[test]
    fn dialog_and_progress_characteristics_route_to_one_place() {
        let measurements: HashSet<Uuid> = PROTOCOLS
            .iter()
            .filter_map(|row| match row.link {
                Link::Gatt { characteristic, .. } => Some(characteristic),
                _ => None,
            })
            .collect();
        for row in &PROTOCOLS {
            // A session sends a dialog's characteristics to the dialog, so none may be a measurement.
            if let Some(dialog) = row.protocol.gatt_dialog() {
                let mut used = dialog.companions.to_vec();
                used.push(dialog.control_point);
                for uuid in used {
                    assert!(!measurements.contains(&uuid), "{}: {uuid}", row.name);
                }
            }
            // A session decodes each progress value alone, never as part of a stream.
            if row.protocol.is_progress() {
                assert!(matches!(row.link, Link::Gatt { .. }), "{}", row.name);
                assert!(row.protocol.is_message_based(), "{}", row.name);
            }
        }
        let glucose = Protocol::GlucoseMeasurement.gatt_dialog().unwrap();
        assert_eq!(glucose.dialog, Dialog::GlucoseRecords);
        assert_eq!(glucose.control_point, sig(0x2A52));
        assert_eq!(glucose.companions, [sig(0x2A34)]);
        assert!(Protocol::IntermediateCuffPressure.is_progress());
        assert!(!Protocol::BloodPressureMeasurement.is_progress());
    }

    #[test]
    fn sig_uuids_have_the_base() {
        assert_eq!(
            sig(0x1810).to_string(),
            "00001810-0000-1000-8000-00805f9b34fb"
        );
        assert_eq!(
            BERRYMED_NOTIFY.to_string(),
            "49535343-1e4d-4bd9-ba61-23c647249616"
        );
    }

    #[track_caller]
    fn check_model(name: &str, expected: Option<&str>) {
        assert_eq!(recognise_model(name), expected, "{name}");
    }

    #[test]
    fn models() {
        check_model("A&D_UA-651BLE_1A2B3C", Some("A&D UA-651BLE"));
        check_model("A&D_UC-352BLE_4D5E6F", Some("A&D UC-352BLE"));
        check_model("A&D_UB-1100BLE", Some("A&D Medical"));
        check_model("BLESmart_0000016028FFB2735FEF", Some("Omron (BLESmart)"));
        check_model("BLEsmart_00000116", Some("Omron (BLESmart)"));
        check_model("My Oximeter", Some("Jumper JPD-500F"));
        check_model("BerryMed", Some("BerryMed BCI oximeter"));
        check_model("BM1000C", Some("BerryMed BCI oximeter"));
        check_model("MIBCS", Some("Xiaomi Mi Body Composition Scale"));
        check_model("MIBFS", Some("Xiaomi Mi Body Composition Scale"));
        check_model("MI SCALE2", Some("Xiaomi Mi Smart Scale 2"));
        check_model("MI_SCALE", Some("Xiaomi Mi Smart Scale"));
        check_model("  mi_scale  ", Some("Xiaomi Mi Smart Scale"));
        check_model("Nonin3230_501234567", Some("Nonin oximeter"));
        check_model("Headphones", None);
        check_model("", None);
    }

    #[test]
    fn line_settings_and_opening_commands() {
        let line = |p: Protocol| p.line_settings().map(|l| (l.baud_rate, l.parity));
        assert_eq!(line(Protocol::NoninDf8), Some((9600, Parity::None)));
        assert_eq!(
            line(Protocol::ContecCms50Legacy),
            Some((19_200, Parity::Odd))
        );
        assert_eq!(line(Protocol::ContecCms50), Some((115_200, Parity::None)));
        assert_eq!(line(Protocol::PlxSpotCheck), None);
        let on_open = |p: Protocol, select: bool| p.host_commands(select).on_open;
        assert_eq!(
            on_open(Protocol::NoninDf13, true),
            [vec![0x02, 0x70, 0x02, 0x02, 0x0D, 0x03]]
        );
        assert_eq!(
            on_open(Protocol::NoninDf2, true),
            [vec![0x02, 0x70, 0x02, 0x02, 0x02, 0x03]]
        );
        assert!(on_open(Protocol::NoninDf13, false).is_empty());
        assert!(on_open(Protocol::MasimoAscii, true).is_empty());
    }
}

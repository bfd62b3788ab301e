//! Shared table-test helpers for the message decoders: one context, one rendering of readings and errors.

use chrono::{DateTime, FixedOffset, Utc};

use super::{DecodeContext, FrameError, MessageDecoder, StreamDecoder};
use crate::model::reading::{Reading, Value};

/// The receive time every decoder test uses: noon UTC on 2024-03-15, after every vector's time stamp.
pub fn received_at() -> DateTime<Utc> {
    "2024-03-15T12:00:00Z".parse().unwrap()
}

pub fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).unwrap()
}

/// Parses hex with spaces; test vectors are written as in the reference.
pub fn bytes_of(hex: &str) -> Vec<u8> {
    hex::decode(hex.replace(' ', "")).unwrap()
}

pub fn render_value(value: &Value) -> String {
    match (value.value, value.special) {
        (Some(number), _) => format!("{}={number}{}", value.measure.name, unit(value)),
        (None, Some(special)) => format!("{}={}", value.measure.name, special.as_str()),
        (None, None) => format!("{}=?", value.measure.name),
    }
}

fn unit(value: &Value) -> String {
    match value.measure.unit {
        "%" | "/min" => String::new(),
        unit => format!("[{unit}]"),
    }
}

/// One line per reading: values with units, flags, time and its source, the user when known. Every reading
/// a table test renders is also made into its FHIR Bundle and checked ([`check_fhir`]).
pub fn render_reading(reading: &Reading) -> String {
    check_fhir(reading);
    let mut line = format!(
        "{} {} flags=[{}] at={} {}",
        reading.kind.as_str(),
        reading
            .values
            .iter()
            .map(render_value)
            .collect::<Vec<_>>()
            .join(" "),
        crate::model::reading::joined(&reading.flags),
        reading.measured_at.format("%Y-%m-%dT%H:%M:%S"),
        reading.time_source.as_str(),
    );
    if let Some(user) = reading.user_id {
        line.push_str(&format!(" user={user}"));
    }
    line
}

pub fn render_error(error: &FrameError) -> String {
    match error {
        FrameError::TooShort { field, .. } => format!("error too short for {field}"),
        FrameError::Invalid { reason, .. } => format!("error invalid: {reason}"),
        FrameError::Malformed { reason, .. } => format!("error malformed: {reason}"),
        FrameError::Checksum { .. } => "error checksum".to_string(),
        FrameError::Garbage { count } => format!("garbage {count}"),
        FrameError::Truncated { have, need, .. } => format!("truncated {have}/{need}"),
    }
}

pub fn render_result(result: Result<Vec<Reading>, FrameError>) -> Vec<String> {
    match result {
        Ok(readings) => readings.iter().map(render_reading).collect(),
        Err(error) => vec![render_error(&error)],
    }
}

/// Feeds each hex message (one characteristic value or advertisement) to one decoder, in order, and
/// renders everything the messages produced.
pub fn decode_messages(decoder: &mut dyn MessageDecoder, messages: &[&str]) -> Vec<String> {
    let zone = utc();
    let context = DecodeContext::trusted(received_at(), &zone);
    messages
        .iter()
        .flat_map(|hex| render_result(decoder.decode(&bytes_of(hex), &context)))
        .collect()
}

/// Feeds a byte stream in one piece and in small chunks, checks both agree, and renders the events.
pub fn decode_stream(make: fn() -> Box<dyn StreamDecoder>, hex: &str) -> Vec<String> {
    let bytes = bytes_of(hex);
    let zone = utc();
    let context = DecodeContext::trusted(received_at(), &zone);
    let run = |chunk: usize| {
        let mut decoder = make();
        let mut lines: Vec<String> = bytes
            .chunks(chunk.max(1))
            .flat_map(|part| decoder.feed(part, &context))
            .map(|event| match event {
                super::DecodeEvent::Reading(reading) => render_reading(&reading),
                super::DecodeEvent::Rejected(error) => render_error(&error),
            })
            .collect();
        lines.extend(decoder.finish().map(|error| render_error(&error)));
        lines
    };
    let whole = run(usize::MAX);
    for chunk in [1, 2, 3, 7] {
        assert_eq!(run(chunk), whole, "chunks of {chunk} differ from one feed");
    }
    whole
}

/// Decodes one message with the hub clock `clock` and renders its first reading followed by the time stamp
/// as the device sent it (`sent=`, `-` for none).
pub fn decode_against_clock(
    decoder: &mut dyn MessageDecoder,
    clock: crate::model::measurement_time::HubClock,
    hex: &str,
) -> String {
    let context = DecodeContext {
        received_at: received_at(),
        steady: received_at(),
        time_zone: &utc(),
        hub_clock: clock,
        device_clock: None,
    };
    let readings = decoder.decode(&bytes_of(hex), &context).unwrap();
    let sent = readings[0]
        .device_time
        .map_or("-".into(), |time| time.to_string());
    format!("{} sent={sent}", render_reading(&readings[0]))
}

/// Makes the FHIR Bundle the hub would publish for `reading` (with a subject and every national code set)
/// and checks the PHD rules the hub promises. With `VITALSD_FHIR_DUMP=1` the Bundle is also printed, as one
/// line after `FHIR-BUNDLE `, for the independent validator the HIL suite runs on every table case
/// (`fhir::every_decoder_table_case_makes_a_bundle_the_independent_library_accepts`); printed, not written
/// to a file, because decoders touch no files, not even in their tests.
pub fn check_fhir(reading: &Reading) {
    use crate::model::fhir::{self, FhirOptions, Subject};
    use crate::model::payload::{self, DeviceInfo, Transport};
    let device = DeviceInfo {
        id: "serial:table".to_string(),
        transport: Transport::Serial,
        protocol: "table",
        identity: Default::default(),
        specialization: Some(528_388),
    };
    let id = payload::reading_id(&device.id, reading, 0);
    let document = payload::to_json("table-hub", &id, &device, reading);
    let options = FhirOptions {
        subject: Some(Subject {
            system: "urn:example:patients".to_string(),
            value: "p-1".to_string(),
        }),
        device_subjects: Default::default(),
        code_sets: crate::model::fhir_codes::names()
            .into_iter()
            .filter_map(crate::model::fhir_codes::find)
            .collect(),
    };
    let bundle = fhir::bundle_of_payload(&document, &options).expect("a reading makes a Bundle");
    let json: serde_json::Value = serde_json::from_slice(&bundle).unwrap();
    fhir::assert_phd_rules(&json);
    if std::env::var_os("VITALSD_FHIR_DUMP").is_some() {
        // One println per Bundle: the lock on standard output keeps each on a line of its own.
        println!("FHIR-BUNDLE {json}");
    }
}

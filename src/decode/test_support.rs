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

/// One line per reading: values with units, flags, time and its source, the user when known.
pub fn render_reading(reading: &Reading) -> String {
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

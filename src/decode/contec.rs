//! The Contec CMS50D+/E/F "7D 81" protocol: typed messages whose payload bytes all carry bit 7 on the
//! wire, with their real most significant bits gathered in the second byte; and the host commands that
//! start the live stream and keep it alive.
//!
//! A message starts with its type byte, the only byte below 0x80, which is also how the decoder finds the
//! next message after garbage. Live data (type 0x01) becomes a reading; other message types (replies to
//! commands, stored-session data) are skipped without counting as errors.

use super::{hex_of, DecodeContext, DecodeEvent, FrameError, StreamDecoder};
use crate::codes;
use crate::reading::{Kind, Reading, Value};

const LIVE: u8 = 0x01;
const LIVE_LENGTH: usize = 9;
/// A message longer than this is not one; the bytes are dropped as garbage.
const MAX_MESSAGE: usize = 32;
const PULSE_INVALID: u8 = 0xFF;
const SPO2_INVALID: u8 = 0x7F;

/// A host command: `7D 81 <0x80|command> 80 80 80 80 80 80`.
pub fn command(code: u8) -> [u8; 9] {
    [0x7D, 0x81, 0x80 | code, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80]
}

/// Starts the live stream.
pub const START_LIVE: u8 = 0x21;
/// Keeps the live stream going; without it the device stops after about 30 s.
pub const KEEP_ALIVE: u8 = 0x2F;

#[derive(Debug, Default)]
pub struct ContecDecoder {
    buffer: Vec<u8>,
    skipped: usize,
}

/// Restores the payload bytes: bit i of byte 1 is the most significant bit of byte i + 2.
fn unpack(message: &[u8]) -> Vec<u8> {
    let high = message.get(1).copied().unwrap_or(0);
    message
        .iter()
        .enumerate()
        .map(|(index, byte)| match index {
            0 | 1 => *byte,
            _ => (byte & 0x7F) | (((high >> (index - 2)) & 1) << 7),
        })
        .collect()
}

fn live_reading(message: &[u8], context: &DecodeContext<'_>) -> Reading {
    let bytes = unpack(message);
    let (pulse, spo2) = (bytes[5], bytes[6]);
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, message);
    // 0 is what the device shows without a finger, as much "no reading" as the 0x7F/0xFF markers.
    reading.values = vec![
        Value::reported(
            &codes::SPO2,
            f64::from(spo2),
            spo2 == 0 || spo2 >= SPO2_INVALID,
        ),
        Value::reported(
            &codes::PULSE_RATE_OXIMETER,
            f64::from(pulse),
            pulse == 0 || pulse == PULSE_INVALID,
        ),
    ];
    reading
}

impl StreamDecoder for ContecDecoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        loop {
            let window = &self.buffer[start..];
            let Some(type_at) = window.iter().position(|byte| byte & 0x80 == 0) else {
                self.skipped += window.len();
                start = self.buffer.len();
                break;
            };
            self.skipped += type_at;
            start += type_at;
            let window = &self.buffer[start..];
            let kind = window[0];
            // The message runs until the next type byte; live data has a known length, so it need not wait.
            let next_type = window
                .iter()
                .skip(1)
                .position(|byte| byte & 0x80 == 0)
                .map(|p| p + 1);
            let length = match (kind, next_type) {
                (LIVE, _)
                    if window.len() >= LIVE_LENGTH
                        && next_type.is_none_or(|n| n >= LIVE_LENGTH) =>
                {
                    LIVE_LENGTH
                }
                (_, Some(next)) => next,
                (_, None) if window.len() > MAX_MESSAGE => {
                    self.skipped += window.len();
                    start = self.buffer.len();
                    break;
                }
                (_, None) => break,
            };
            let message = &window[..length];
            if self.skipped > 0 {
                events.push(DecodeEvent::Rejected(FrameError::Garbage {
                    count: self.skipped,
                }));
                self.skipped = 0;
            }
            if kind == LIVE {
                if length == LIVE_LENGTH {
                    events.push(DecodeEvent::Reading(live_reading(message, context)));
                } else {
                    events.push(DecodeEvent::Rejected(FrameError::Truncated {
                        have: length,
                        need: LIVE_LENGTH,
                        raw: hex_of(message),
                    }));
                }
            }
            start += length;
        }
        self.buffer.drain(..start);
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        let partial = std::mem::take(&mut self.buffer);
        let skipped = std::mem::take(&mut self.skipped);
        match partial.first() {
            Some(&LIVE) => Some(FrameError::Truncated {
                have: partial.len(),
                need: LIVE_LENGTH,
                raw: hex_of(&partial),
            }),
            _ => (skipped > 0).then_some(FrameError::Garbage { count: skipped }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_stream;

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(ContecDecoder::default())
    }

    #[track_caller]
    fn check(hex: &str, expected: &[&str]) {
        assert_eq!(decode_stream(make, hex), expected, "{hex}");
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn live_messages() {
        // The pulse's top bit travels in byte 1 (bit 3 for byte 5): 130, not 2.
        check("01 E8 85 B3 96 82 E1 FF FF", &[&format!("pulse_oximetry spo2=97 pulse_rate=130 flags=[] {HUB}")]);
        check("01 80 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3 96 80 80 FF FF", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[] {HUB}")]);
        check("01 88 85 B3 96 FF FF FF FF", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[] {HUB}")]);
        check("01 80 85 B3 96 C8 E2 FF FF 01 80 85 B3 96 C9 E1 FF FF", &[
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=97 pulse_rate=73 flags=[] {HUB}"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn other_messages_garbage_and_truncation() {
        // A reply to a command (type 0x0B here) is skipped quietly; the live message after it is read.
        check("0B 80 C3 D4 C5 01 80 85 B3 96 C8 E2 FF FF", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("FF FE 01 80 85 B3 96 C8 E2 FF FF", &["garbage 2", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3 01 80 85 B3 96 C8 E2 FF FF", &["truncated 4/9", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("01 80 85 B3", &["truncated 4/9"]);
    }

    #[test]
    fn host_commands() {
        assert_eq!(hex::encode(command(START_LIVE)), "7d81a1808080808080");
        assert_eq!(hex::encode(command(KEEP_ALIVE)), "7d81af808080808080");
    }
}

//! BerryMed BCI protocol oximeter stream: 5-byte packets at 100 Hz whose first byte alone has bit 7 set,
//! so a packet split across notifications, or several in one, are found by resynchronising on that bit.

use super::{hex_of, DecodeContext, DecodeEvent, FrameError, StreamDecoder};
use crate::codes;
use crate::decode::ieee11073::push_flags;
use crate::reading::{Kind, Reading, Special, Value};

const PACKET: usize = 5;
const SYNC: u8 = 0x80;
const SPO2_INVALID: u8 = 0x7F;
const PULSE_INVALID: u8 = 0xFF;

#[derive(Debug, Default)]
pub struct BerrymedDecoder {
    buffer: Vec<u8>,
    /// Bytes skipped since the last good packet, reported just before the next one.
    skipped: usize,
}

fn packet_reading(packet: &[u8], context: &DecodeContext<'_>) -> Reading {
    let [b1, _pleth, b3, b4, b5] = <[u8; PACKET]>::try_from(packet).expect("a whole packet");
    let spo2 = b5 & 0x7F;
    let pulse = ((b3 & 0x40) << 1) | (b4 & 0x7F);
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, packet);
    reading.values = vec![
        match spo2 {
            SPO2_INVALID => Value::special(&codes::SPO2, Special::Missing),
            spo2 => Value::number(&codes::SPO2, f64::from(spo2)),
        },
        match pulse {
            PULSE_INVALID => Value::special(&codes::PULSE_RATE_OXIMETER, Special::Missing),
            pulse => Value::number(&codes::PULSE_RATE_OXIMETER, f64::from(pulse)),
        },
    ];
    push_flags(
        &mut reading.flags,
        &[
            (b1 & 0x10 != 0, "no_signal"),
            (b1 & 0x20 != 0, "sensor_disconnected"),
            (b3 & 0x10 != 0, "no_finger"),
            (b3 & 0x20 != 0, "pulse_searching"),
        ],
    );
    reading
}

impl StreamDecoder for BerrymedDecoder {
    fn feed(&mut self, bytes: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        loop {
            let window = &self.buffer[start..];
            // Bytes before a head byte belong to no packet.
            let Some(head) = window.iter().position(|byte| byte & SYNC != 0) else {
                self.skipped += window.len();
                start = self.buffer.len();
                break;
            };
            self.skipped += head;
            start += head;
            let window = &self.buffer[start..];
            // A head byte inside the packet means the packet broke off there.
            if let Some(next_head) = window
                .iter()
                .take(PACKET)
                .skip(1)
                .position(|byte| byte & SYNC != 0)
            {
                self.skipped += next_head + 1;
                start += next_head + 1;
                continue;
            }
            if window.len() < PACKET {
                break;
            }
            if self.skipped > 0 {
                events.push(DecodeEvent::Rejected(FrameError::Garbage {
                    count: self.skipped,
                }));
                self.skipped = 0;
            }
            events.push(DecodeEvent::Reading(packet_reading(
                &window[..PACKET],
                context,
            )));
            start += PACKET;
        }
        self.buffer.drain(..start);
        events
    }

    fn finish(&mut self) -> Option<FrameError> {
        let partial = std::mem::take(&mut self.buffer);
        let skipped = std::mem::take(&mut self.skipped);
        if !partial.is_empty() {
            return Some(FrameError::Truncated {
                have: partial.len(),
                need: PACKET,
                raw: hex_of(&partial),
            });
        }
        (skipped > 0).then_some(FrameError::Garbage { count: skipped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_stream;

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(BerrymedDecoder::default())
    }

    #[track_caller]
    fn check(hex: &str, expected: &[&str]) {
        assert_eq!(decode_stream(make, hex), expected, "{hex}");
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn packets() {
        check("C4 32 05 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("84 20 47 02 5F", &[&format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}")]);
        check("80 00 50 7F 7F", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_finger] {HUB}")]);
        check("B0 00 20 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[no_signal,sensor_disconnected,pulse_searching] {HUB}")]);
        check("C4 32 05 48 62 84 20 47 02 5F", &[
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn resynchronisation() {
        check("01 02 03 C4 32 05 48 62", &["garbage 3", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        // A packet broken by the next head byte is skipped; the next packet still arrives.
        check("C4 32 05 84 20 47 02 5F", &["garbage 3", &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}")]);
        check("C4 32 05", &["truncated 3/5"]);
        check("01 02", &["garbage 2"]);
        check("", &[]);
    }

    #[test]
    fn random_bytes_never_panic() {
        let context = DecodeContext {
            received_at: crate::decode::test_support::received_at(),
            time_zone: &crate::decode::test_support::utc(),
        };
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        for _ in 0..200 {
            let mut decoder = BerrymedDecoder::default();
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let mut readings = 0;
            for chunk in bytes.chunks(7) {
                readings += decoder.feed(chunk, &context).len();
            }
            let _ = decoder.finish();
            assert!(readings <= bytes.len());
        }
    }
}

//! The 5-byte "BCI" oximeter packet family: BerryMed BCI over Bluetooth (100 Hz) and the legacy Contec
//! CMS50 serial stream (60 Hz), whose first byte alone has bit 7 set, so a packet split across reads or
//! notifications, or several in one, are found by resynchronising on that bit. The two differ only in the
//! names of their status bits.

use super::{hex_of, DecodeContext, DecodeEvent, FrameError, StreamDecoder};
use crate::decode::ieee11073::push_flags;
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Value};

const PACKET: usize = 5;
const SYNC: u8 = 0x80;
const SPO2_INVALID: u8 = 0x7F;
const PULSE_INVALID: u8 = 0xFF;

/// Which device's names the status bits get.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum BciFlavour {
    #[default]
    Berrymed,
    /// Contec CMS50D+/E legacy protocol (atbrask's names: finger out, dropping SpO2, probe error, searching).
    ContecLegacy,
}

/// Finds 5-byte BCI packets in a byte stream and turns each into a pulse oximetry reading at hub time.
#[derive(Debug, Default)]
pub struct BerrymedDecoder {
    flavour: BciFlavour,
    buffer: Vec<u8>,
    /// Bytes skipped since the last good packet, reported just before the next one.
    skipped: usize,
}

impl BerrymedDecoder {
    /// A decoder naming the status bits as `flavour`'s devices do; `default()` is the BerryMed one.
    pub fn new(flavour: BciFlavour) -> BerrymedDecoder {
        BerrymedDecoder {
            flavour,
            ..BerrymedDecoder::default()
        }
    }
}

fn packet_reading(
    packet: &[u8; PACKET],
    flavour: BciFlavour,
    context: &DecodeContext<'_>,
) -> Reading {
    let &[b1, _pleth, b3, b4, b5] = packet;
    let spo2 = b5 & 0x7F;
    let pulse = ((b3 & 0x40) << 1) | (b4 & 0x7F);
    let mut reading = Reading::at_hub_time(Kind::PulseOximetry, context.received_at, packet);
    reading.values = vec![
        Value::reported(
            &codes::SPO2,
            f64::from(spo2),
            spo2 == 0 || spo2 == SPO2_INVALID,
        ),
        Value::reported(
            &codes::PULSE_RATE_OXIMETER,
            f64::from(pulse),
            pulse == 0 || pulse == PULSE_INVALID,
        ),
    ];
    let table = match flavour {
        BciFlavour::Berrymed => [
            (b1 & 0x10 != 0, Flag::NoSignal),
            (b1 & 0x20 != 0, Flag::SensorDisconnected),
            (b3 & 0x10 != 0, Flag::NoFinger),
            (b3 & 0x20 != 0, Flag::PulseSearching),
        ],
        BciFlavour::ContecLegacy => [
            (b1 & 0x10 != 0, Flag::NoFinger),
            (b1 & 0x20 != 0, Flag::Spo2Dropping),
            (b3 & 0x10 != 0, Flag::SensorAlarm),
            (b3 & 0x20 != 0, Flag::PulseSearching),
        ],
    };
    push_flags(&mut reading.flags, &table);
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
            let Some(packet) = window.first_chunk::<PACKET>() else {
                break;
            };
            if self.skipped > 0 {
                events.push(DecodeEvent::Rejected(FrameError::Garbage {
                    count: self.skipped,
                }));
                self.skipped = 0;
            }
            events.push(DecodeEvent::Reading(packet_reading(
                packet,
                self.flavour,
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
    use proptest::prelude::*;

    use super::*;
    use crate::decode::test_support::{decode_stream, received_at, utc};

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
        check("C4 32 05 48 62 C4 33 05 48 62 C4 34 05 48 62", &[
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn values_and_flags() {
        check("84 20 00 7F 7F", &[&format!("pulse_oximetry spo2=missing pulse_rate=127 flags=[] {HUB}")]);
        check("84 20 40 00 64", &[&format!("pulse_oximetry spo2=100 pulse_rate=128 flags=[] {HUB}")]);
        check("84 20 40 7E 00", &[&format!("pulse_oximetry spo2=missing pulse_rate=254 flags=[] {HUB}")]);
        check("84 20 00 00 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=missing flags=[] {HUB}")]);
        check("80 00 10 00 00", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_finger] {HUB}")]);
        check("84 20 47 7F 5F", &[&format!("pulse_oximetry spo2=95 pulse_rate=missing flags=[] {HUB}")]);
        check("84 20 07 48 7F", &[&format!("pulse_oximetry spo2=missing pulse_rate=72 flags=[] {HUB}")]);
        check("90 00 00 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[no_signal] {HUB}")]);
        check("A0 00 00 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[sensor_disconnected] {HUB}")]);
        check("80 00 10 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[no_finger] {HUB}")]);
        check("80 00 20 48 62", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[pulse_searching] {HUB}")]);
        check("BF 64 7F 7F 7F", &[&format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_signal,sensor_disconnected,no_finger,pulse_searching] {HUB}")]);
    }

    fn contec() -> Box<dyn StreamDecoder> {
        Box::new(BerrymedDecoder::new(BciFlavour::ContecLegacy))
    }

    #[rustfmt::skip]
    #[test]
    fn contec_legacy_packets_name_their_bits_as_contec_does() {
        assert_eq!(decode_stream(contec, "C4 32 05 48 62"), [format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        assert_eq!(decode_stream(contec, "F0 00 70 7F 7F"), [format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_finger,spo2_dropping,sensor_alarm,pulse_searching] {HUB}")]);
        assert_eq!(decode_stream(contec, "90 00 00 00 00"), [format!("pulse_oximetry spo2=missing pulse_rate=missing flags=[no_finger] {HUB}")]);
        assert_eq!(decode_stream(contec, "84 20 47 02 5F 99"), [format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}"), "truncated 1/5".to_string()]);
    }

    #[rustfmt::skip]
    #[test]
    fn resynchronisation() {
        check("01 02 03 C4 32 05 48 62", &["garbage 3", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        // A packet broken by the next head byte is skipped; the next packet still arrives.
        check("C4 32 05 84 20 47 02 5F", &["garbage 3", &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}")]);
        check("01 02 C4 32 05 84 20 47 02 5F", &["garbage 5", &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}")]);
        check("C4 32 05 48 84 20 47 02 5F", &["garbage 4", &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}")]);
        check("C4 84 C4 32 05 48 62", &["garbage 2", &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}")]);
        check("C4 32 05 48 62 01 02 84 20 47 02 5F 03", &[
            &format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"),
            "garbage 2",
            &format!("pulse_oximetry spo2=95 pulse_rate=130 flags=[] {HUB}"),
            "garbage 1",
        ]);
        check("C4 32 05", &["truncated 3/5"]);
        check("C4 32 05 48 62 84", &[&format!("pulse_oximetry spo2=98 pulse_rate=72 flags=[] {HUB}"), "truncated 1/5"]);
        check("01 02", &["garbage 2"]);
        check("", &[]);
    }

    /// Feeds `bytes` in chunks of `chunk` bytes and returns every event, then what `finish` reports.
    fn feed_in_chunks(bytes: &[u8], chunk: usize) -> (Vec<DecodeEvent>, Option<FrameError>) {
        let time_zone = utc();
        let context = DecodeContext::trusted(received_at(), &time_zone);
        let mut decoder = BerrymedDecoder::default();
        let events = bytes
            .chunks(chunk.max(1))
            .flat_map(|part| decoder.feed(part, &context))
            .collect();
        (events, decoder.finish())
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_chunking_does_not_matter(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            chunk in 1usize..17,
        ) {
            let whole = feed_in_chunks(&bytes, usize::MAX);
            prop_assert_eq!(feed_in_chunks(&bytes, chunk), whole.clone());
            let (events, _) = whole;
            let readings = events.iter().filter(|event| matches!(event, DecodeEvent::Reading(_))).count();
            prop_assert!(readings <= bytes.len() / PACKET);
        }
    }
}

//! Body Composition Service: Body Composition Measurement 0x2A9C (including records split over two
//! indications) and the Body Composition Feature 0x2A9B.

use super::ieee11073::{bit_names, stamp, Cursor, DeviceDateTime};
use super::weight_scale::{
    body_weight, height, height_resolution, mass, weight_resolution, ScaleFeature,
};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading, Special, Value};

const UNSUCCESSFUL: u16 = 0xFFFF;
const UNKNOWN_USER: u8 = 0xFF;
const FLAG_MULTIPLE_PACKETS: u16 = 1 << 12;
/// Decodes 0x2A9C indications. A record split over two packets (flag bit 12) is held until its second
/// packet arrives and then reported once, with the fields of both.
///
/// The second packet is the next one on the link, however late: a device sends one indication at a
/// time, and the real stack delayed a second half by 10 s (a lost confirmation the device waited for).
/// A time limit there once reported the first half alone and then took that second half for the first
/// half of the next record, merging two weighings into one reading. The next packet completes the held
/// half only when it adds to it (`Packet::completes`); otherwise the held half is reported as partial.
#[derive(Debug, Default)]
pub struct BodyCompositionMeasurementDecoder {
    first_half: Option<Packet>,
}

#[derive(Debug, Clone, Default)]
struct Packet {
    imperial: bool,
    multiple: bool,
    body_fat: Option<u16>,
    time_stamp: Option<DeviceDateTime>,
    user_id: Option<u8>,
    /// The optional mass-like fields in flag order: basal metabolism, muscle %, muscle mass, fat-free mass,
    /// soft lean mass, body water mass, impedance, weight, height.
    fields: [Option<u16>; 9],
    raw: Vec<u8>,
}

const FIELD_NAMES: [&str; 9] = [
    "basal metabolism",
    "muscle percentage",
    "muscle mass",
    "fat free mass",
    "soft lean mass",
    "body water mass",
    "impedance",
    "weight",
    "height",
];

fn parse(message: &[u8]) -> Result<Packet, FrameError> {
    let mut cursor = Cursor::new(message);
    let flags = cursor.u16("flags")?;
    let body_fat = cursor.u16("body fat percentage")?;
    let time_stamp = (flags & 0x0002 != 0)
        .then(|| cursor.date_time("time stamp"))
        .transpose()?;
    let user_id = (flags & 0x0004 != 0)
        .then(|| cursor.u8("user id"))
        .transpose()?;
    let mut fields = [None; 9];
    for (index, field) in fields.iter_mut().enumerate() {
        if flags & (1 << (index + 3)) != 0 {
            *field = Some(cursor.u16(FIELD_NAMES[index])?);
        }
    }
    Ok(Packet {
        imperial: flags & 0x0001 != 0,
        multiple: flags & FLAG_MULTIPLE_PACKETS != 0,
        body_fat: Some(body_fat),
        time_stamp,
        user_id,
        fields,
        raw: message.to_vec(),
    })
}

impl Packet {
    /// Whether `second` can be the rest of this record: it repeats none of its fields (a body fat value
    /// only as the "unsuccessful" filler), so that no value of one measurement can end up beside those
    /// of another.
    fn completes(&self, second: &Packet) -> bool {
        let both = |a: bool, b: bool| a && b;
        let real_fat = |packet: &Packet| packet.body_fat.is_some_and(|fat| fat != UNSUCCESSFUL);
        !both(self.time_stamp.is_some(), second.time_stamp.is_some())
            && !both(real_fat(self), real_fat(second))
            && self.user_id.zip(second.user_id).is_none_or(|(a, b)| a == b)
            && !self
                .fields
                .iter()
                .zip(&second.fields)
                .any(|(mine, theirs)| both(mine.is_some(), theirs.is_some()))
    }

    /// Completes the first half with what the second adds; a field both halves carry keeps the first's value.
    fn merge(mut self, second: Packet) -> Result<Packet, FrameError> {
        if self.imperial != second.imperial {
            return Err(FrameError::Invalid {
                reason: "the two packets of a record disagree on units".to_string(),
                raw: hex_of(&[self.raw.as_slice(), second.raw.as_slice()].concat()),
            });
        }
        // The mandatory body fat field of a continuation packet may be the "unsuccessful" filler.
        if self.body_fat == Some(UNSUCCESSFUL) {
            self.body_fat = second.body_fat;
        }
        self.time_stamp = self.time_stamp.or(second.time_stamp);
        self.user_id = self.user_id.or(second.user_id);
        for (mine, theirs) in self.fields.iter_mut().zip(second.fields) {
            *mine = mine.or(theirs);
        }
        self.raw.extend_from_slice(&second.raw);
        Ok(self)
    }

    fn into_reading(self, context: &DecodeContext<'_>, partial: bool) -> Reading {
        let imperial = self.imperial;
        let mut reading =
            Reading::at_hub_time(Kind::BodyComposition, context.received_at, &self.raw);
        match self.body_fat {
            Some(UNSUCCESSFUL) | None => {
                reading.values.push(Value::special(
                    &codes::BODY_FAT_PERCENTAGE,
                    Special::NoMeasurement,
                ));
                reading.flags.push(Flag::MeasurementFailed);
            }
            Some(raw) => reading.values.push(Value::number(
                &codes::BODY_FAT_PERCENTAGE,
                f64::from(raw) / 10.0,
            )),
        }
        let [basal, muscle_pct, muscle, fat_free, soft_lean, water, impedance, weight, body_height] =
            self.fields;
        let masses = |raw: Option<u16>, kg, lb| raw.map(|raw| mass(raw, imperial, kg, lb));
        reading.values.extend(
            [
                basal.map(|raw| Value::number(&codes::BASAL_METABOLISM, f64::from(raw))),
                muscle_pct
                    .map(|raw| Value::number(&codes::MUSCLE_PERCENTAGE, f64::from(raw) / 10.0)),
                masses(muscle, &codes::MUSCLE_MASS_KG, &codes::MUSCLE_MASS_LB),
                masses(fat_free, &codes::FAT_FREE_MASS_KG, &codes::FAT_FREE_MASS_LB),
                masses(
                    soft_lean,
                    &codes::SOFT_LEAN_MASS_KG,
                    &codes::SOFT_LEAN_MASS_LB,
                ),
                masses(
                    water,
                    &codes::BODY_WATER_MASS_KG,
                    &codes::BODY_WATER_MASS_LB,
                ),
                impedance.map(|raw| Value::number(&codes::IMPEDANCE, f64::from(raw) / 10.0)),
                weight.map(|raw| body_weight(raw, imperial)),
                body_height.map(|raw| height(raw, imperial)),
            ]
            .into_iter()
            .flatten(),
        );
        if partial {
            reading.flags.push(Flag::PartialRecord);
        }
        reading.user_id = self.user_id.filter(|user| *user != UNKNOWN_USER);
        if let Some(time_stamp) = self.time_stamp {
            stamp(&mut reading, time_stamp, context);
            if crate::model::measurement_time::stamp_names_the_record(&reading) && !partial {
                reading.record_key = Some(format!("body-composition:{}", hex_of(&self.raw)));
            }
        }
        reading
    }
}

impl MessageDecoder for BodyCompositionMeasurementDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let packet = parse(message)?;
        let mut readings = Vec::new();
        if let Some(first) = self.first_half.take() {
            if first.completes(&packet) {
                readings.push(first.merge(packet)?.into_reading(context, false));
                return Ok(readings);
            }
            // Its second half never came: report what the first half holds rather than lose it.
            readings.push(first.into_reading(context, true));
        }
        if packet.multiple {
            self.first_half = Some(packet);
        } else {
            readings.push(packet.into_reading(context, false));
        }
        Ok(readings)
    }

    /// A first half still held when the link ends is counted as a rejected message, not dropped unseen.
    /// (Its values are not reported: the reading would need the time it was received, which the session
    /// end does not pass in; noted in ARCHITECTURE.md.)
    fn finish(&mut self) -> Option<FrameError> {
        let first = self.first_half.take()?;
        Some(FrameError::Invalid {
            reason: "the link ended before the second packet of a split record".to_string(),
            raw: hex_of(&first.raw),
        })
    }
}

/// What a body composition scale supports (0x2A9B).
pub fn decode_feature(bytes: &[u8]) -> Result<ScaleFeature, FrameError> {
    let word = Cursor::new(bytes).u32("body composition feature")?;
    Ok(ScaleFeature {
        supported: bit_names(
            word,
            &[
                (0, "time_stamp"),
                (1, "multiple_users"),
                (2, "basal_metabolism"),
                (3, "muscle_percentage"),
                (4, "muscle_mass"),
                (5, "fat_free_mass"),
                (6, "soft_lean_mass"),
                (7, "body_water_mass"),
                (8, "impedance"),
                (9, "weight"),
                (10, "height"),
            ],
        ),
        weight_resolution: weight_resolution((word >> 11) & 0x0F),
        height_resolution: height_resolution((word >> 15) & 0x07),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, render_error, render_reading,
        utc,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check(messages: &[&str], expected: &[&str]) {
        let mut decoder = BodyCompositionMeasurementDecoder::default();
        assert_eq!(
            decode_messages(&mut decoder, messages),
            expected,
            "{messages:?}"
        );
    }

    /// Like `check` for one message, against `clock`, with the time stamp as the device sent it (`sent=`,
    /// `-` for none).
    #[track_caller]
    fn check_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(
                &mut BodyCompositionMeasurementDecoder::default(),
                clock,
                hex
            ),
            expected,
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn body_composition_vectors() {
        check(&["1E 06 E1 00 E8 07 03 0F 07 1E 00 01 64 19 60 01 03 14 80 3E"],
            &["body_composition body_fat_percentage=22.5 basal_metabolism=6500[kJ] muscle_percentage=35.2 impedance=512.3[Ohm] body_weight=80[kg] flags=[] at=2024-03-15T07:30:00 device user=1"]);
        check(&["00 00 E1 00"], &[&format!("body_composition body_fat_percentage=22.5 flags=[] {HUB}")]);
        check(&["00 00 FF FF"], &[&format!("body_composition body_fat_percentage=no_measurement flags=[measurement_failed] {HUB}")]);
        check(&["00 04 E1 00 00 00"], &[&format!("body_composition body_fat_percentage=22.5 body_weight=missing flags=[] {HUB}")]);
        check(&["01 04 E1 00 00 00"], &[&format!("body_composition body_fat_percentage=22.5 body_weight=missing flags=[] {HUB}")]);
        // Every field, imperial units.
        check(&["F9 0F E1 00 64 19 60 01 10 27 20 4E 30 75 40 9C 03 14 A0 8C B4 02"],
            &[&format!("body_composition body_fat_percentage=22.5 basal_metabolism=6500[kJ] muscle_percentage=35.2 muscle_mass=100[[lb_av]] fat_free_mass=200[[lb_av]] soft_lean_mass=300[[lb_av]] body_water_mass=400[[lb_av]] impedance=512.3[Ohm] body_weight=360[[lb_av]] body_height=69.2[[in_i]] flags=[] {HUB}")]);
        // Reserved flag bits 13–15 do not shift fields.
        check(&["00 E0 E1 00"], &[&format!("body_composition body_fat_percentage=22.5 flags=[] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn a_record_split_over_two_packets_is_reported_once_merged() {
        check(&["1E 10 E1 00 E8 07 03 0F 07 1E 00 01 64 19 60 01", "00 1E FF FF 03 14 80 3E 08 07"],
            &["body_composition body_fat_percentage=22.5 basal_metabolism=6500[kJ] muscle_percentage=35.2 impedance=512.3[Ohm] body_weight=80[kg] body_height=1.8[m] flags=[] at=2024-03-15T07:30:00 device user=1"]);
        // The second packet may carry the flag too.
        check(&["00 10 E1 00", "00 1E FF FF 03 14 80 3E 08 07"],
            &[&format!("body_composition body_fat_percentage=22.5 impedance=512.3[Ohm] body_weight=80[kg] body_height=1.8[m] flags=[] {HUB}")]);
        check(&["00 10 E1 00", "01 04 FF FF 80 3E"],
            &["error invalid: the two packets of a record disagree on units"]);
    }

    /// Two weighings, each split in two (the real-BlueZ suite's scale): `F1 S1 F2 S2` in order.
    const F1: &str = "1E 10 E1 00 E8 07 03 0F 07 1E 00 01 64 19 60 01";
    const S1: &str = "00 1E FF FF 03 14 80 3E 08 07";
    const F2: &str = "1E 10 DD 00 E8 07 03 0E 07 1F 00 01 50 19 62 01";
    const S2: &str = "00 1E FF FF DF 13 30 3E 08 07";
    const W1: &str = "body_composition body_fat_percentage=22.5 basal_metabolism=6500[kJ] muscle_percentage=35.2 impedance=512.3[Ohm] body_weight=80[kg] body_height=1.8[m] flags=[] at=2024-03-15T07:30:00 device user=1";
    const W2: &str = "body_composition body_fat_percentage=22.1 basal_metabolism=6480[kJ] muscle_percentage=35.4 impedance=508.7[Ohm] body_weight=79.6[kg] body_height=1.8[m] flags=[] at=2024-03-14T07:31:00 device user=1";

    #[rustfmt::skip]
    #[test]
    fn the_next_packet_completes_a_split_record_only_when_it_adds_to_it() {
        check(&[F1, S1, F2, S2], &[W1, W2]);
        // A first half whose second never came is reported as partial, never merged with the next record.
        check(&[F1, F2, S2], &[
            "body_composition body_fat_percentage=22.5 basal_metabolism=6500[kJ] muscle_percentage=35.2 flags=[partial_record] at=2024-03-15T07:30:00 device user=1",
            W2,
        ]);
        // Two halves that both carry a weight are two records.
        check(&["00 14 E1 00 80 3E", "00 14 FF FF 80 3E"], &[
            &format!("body_composition body_fat_percentage=22.5 body_weight=80[kg] flags=[partial_record] {HUB}"),
        ]);
    }

    #[test]
    fn a_first_half_the_link_ended_after_is_counted_as_rejected() {
        let mut decoder = BodyCompositionMeasurementDecoder::default();
        let zone = utc();
        let context = DecodeContext::trusted(received_at(), &zone);
        assert!(decoder.decode(&bytes_of(F1), &context).unwrap().is_empty());
        let error = decoder.finish().map(|error| render_error(&error));
        assert_eq!(
            error.as_deref(),
            Some("error invalid: the link ended before the second packet of a split record")
        );
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn a_second_half_that_comes_late_still_completes_its_record() {
        // The real stack delayed a second half by 10 s (the device waited for a lost confirmation); a time
        // limit reported the first half alone and merged that second half with the next weighing.
        let mut decoder = BodyCompositionMeasurementDecoder::default();
        let zone = utc();
        let mut readings = Vec::new();
        for (seconds, packet) in [(0, F1), (10, S1), (10, F2), (10, S2)] {
            let context =
                DecodeContext::trusted(received_at() + chrono::TimeDelta::seconds(seconds), &zone);
            readings.extend(decoder.decode(&bytes_of(packet), &context).unwrap());
        }
        let rendered: Vec<String> = readings.iter().map(render_reading).collect();
        assert_eq!(rendered, [W1, W2]);
    }

    #[test]
    fn a_first_half_whose_second_never_comes_is_reported_as_partial() {
        let mut decoder = BodyCompositionMeasurementDecoder::default();
        let zone = utc();
        let at = |seconds| {
            DecodeContext::trusted(received_at() + chrono::TimeDelta::seconds(seconds), &zone)
        };
        let first = decoder.decode(&bytes_of("00 10 E1 00"), &at(0)).unwrap();
        assert!(first.is_empty());
        let later = decoder.decode(&bytes_of("00 00 DC 00"), &at(60)).unwrap();
        let fats: Vec<(Option<f64>, Vec<Flag>)> = later
            .iter()
            .map(|r| (r.values[0].value, r.flags.clone()))
            .collect();
        assert_eq!(
            fats,
            [
                (Some(22.5), vec![Flag::PartialRecord]),
                (Some(22.0), vec![])
            ]
        );
    }

    #[rustfmt::skip]
    #[test]
    fn device_clock_years_and_impossible_fields() {
        let invalid = format!("body_composition body_fat_percentage=22.5 flags=[device_clock_invalid] {HUB}");
        let ahead = format!("body_composition body_fat_percentage=22.5 flags=[device_clock_ahead] {HUB}");
        check(&["02 00 E1 00 00 00 00 00 00 00 00"], &[&invalid]);
        check(&["02 00 E1 00 00 00 01 01 00 00 00"], &[&invalid]);
        check(&["02 00 E1 00 CF 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["02 00 E1 00 D0 07 01 01 00 00 00"], &[&invalid]);
        check(&["02 00 E1 00 D9 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["02 00 E1 00 DA 07 01 01 00 00 00"], &["body_composition body_fat_percentage=22.5 flags=[] at=2010-01-01T00:00:00 device"]);
        check(&["02 00 E1 00 33 08 0C 1F 00 00 00"], &[&ahead]);
        check(&["02 00 E1 00 34 08 01 01 00 00 00"], &[&invalid]);
        check(&["02 00 E1 00 FF FF 01 01 00 00 00"], &[&invalid]);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check(&["02 00 E1 00 E8 07 00 0F 07 1E 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 0D 0F 07 1E 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 03 00 07 1E 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 03 20 07 1E 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 02 1E 07 1E 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 03 0F 18 00 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 03 0F 07 3C 00"], &[&invalid]);
        check(&["02 00 E1 00 E8 07 03 0F 07 1E 3C"], &[&invalid]);
        // A split record is judged by the time stamp its first packet carries.
        check(&["02 10 E1 00 D0 07 01 01 00 00 00", "00 02 FF FF 03 14"], &[&format!("body_composition body_fat_percentage=22.5 impedance=512.3[Ohm] flags=[device_clock_invalid] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_scale_ahead_and_the_time_sent_is_kept() {
        check_clock(HubClock::Trusted, "02 00 E1 00 E8 07 03 12 07 1E 00", &format!("body_composition body_fat_percentage=22.5 flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(HubClock::Unsynchronized, "02 00 E1 00 E8 07 03 12 07 1E 00", "body_composition body_fat_percentage=22.5 flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(HubClock::Unsynchronized, "02 00 E1 00 D9 07 0C 1F 17 3B 3B", &format!("body_composition body_fat_percentage=22.5 flags=[device_clock_invalid] {HUB} sent=2009-12-31 23:59:59"));
        check_clock(HubClock::Trusted, "02 00 E1 00 E8 07 03 0F 07 1E 00", "body_composition body_fat_percentage=22.5 flags=[] at=2024-03-15T07:30:00 device sent=2024-03-15 07:30:00");
    }

    #[rustfmt::skip]
    #[test]
    fn short_messages_are_errors() {
        check(&["00"], &["error too short for flags"]);
        check(&["00 00 E1"], &["error too short for body fat percentage"]);
        check(&["02 00 E1 00 E8 07 03"], &["error too short for time stamp"]);
        check(&["00 02 E1 00 03"], &["error too short for impedance"]);
        check(&["1E 06 E1 00 E8 07 03 0F 07 1E 00 01 64 19 60 01 03 14 80"], &["error too short for weight"]);
    }

    #[test]
    fn feature_vector() {
        let render = |hex: &str| match decode_feature(&bytes_of(hex)) {
            Ok(f) => format!(
                "{} | {} | {}",
                f.supported.join(","),
                f.weight_resolution,
                f.height_resolution
            ),
            Err(error) => render_error(&error),
        };
        assert_eq!(
            render("07 A3 01 00"),
            "time_stamp,multiple_users,basal_metabolism,impedance,weight | 0.05 kg / 0.1 lb | 0.001 m / 0.1 in"
        );
        assert_eq!(
            render("07 23"),
            "error too short for body composition feature"
        );
    }
}

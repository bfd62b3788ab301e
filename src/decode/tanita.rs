//! Tanita body-composition scales' serial output: one CR LF line of `KEY,VALUE` pairs after the
//! `{0,16,~0,1,…` control header, sent right after a measurement.
//!
//! A line becomes a `body_weight` reading (weight, BMI, height) and, when the scale measured them, a
//! `body_composition` reading (fat, muscle, bone, water, BMR, visceral fat, metabolic age, impedance).
//! Noise before the header (some models send a burst after the line) is skipped. The checksum rule is
//! inferred, not documented, so a mismatch is flagged `checksum_unverified` rather than rejected.

use super::line::LineDecoder;
use super::{hex_of, DecodeContext, DecodeEvent, FrameError};
use crate::model::codes::{self, Measure};
use crate::model::reading::{Flag, Kind, Reading, Special, Value};

const HEADER: &[u8] = b"{0,16,";

/// A decoder for Tanita lines.
pub fn decoder() -> LineDecoder {
    LineDecoder::new(parse_line)
}

/// The inferred checksum: the byte sum from `{` through the comma before `CS`, as two hex digits.
fn checksum_matches(line: &[u8]) -> Option<bool> {
    let at = find(line, b",CS,")?;
    let expected = line[..=at]
        .iter()
        .fold(0u8, |sum, byte| sum.wrapping_add(*byte));
    let written = std::str::from_utf8(&line[at + 4..]).ok()?.trim();
    Some(u8::from_str_radix(written.get(..2)?, 16).ok()? == expected)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Stones and pounds as `S L` or `S-L` (e.g. `10 7.5`), in pounds.
fn stone_pounds(text: &str) -> Option<f64> {
    let (stones, pounds) = text.trim().split_once([' ', '-'])?;
    Some(stones.trim().parse::<f64>().ok()? * 14.0 + pounds.trim().parse::<f64>().ok()?)
}

fn parse_line(line: &[u8], context: &DecodeContext<'_>) -> Vec<DecodeEvent> {
    let Some(start) = find(line, HEADER) else {
        return vec![DecodeEvent::Rejected(FrameError::Garbage {
            count: line.len(),
        })];
    };
    let mut events = Vec::new();
    if start > 0 {
        events.push(DecodeEvent::Rejected(FrameError::Garbage { count: start }));
    }
    let line = &line[start..];
    let malformed = |reason: &'static str| {
        DecodeEvent::Rejected(FrameError::Malformed {
            reason,
            raw: hex_of(line),
        })
    };
    let Ok(text) = std::str::from_utf8(line) else {
        events.push(malformed("not ASCII text"));
        return events;
    };
    let fields: Vec<&str> = text.split(',').collect();
    let mut pairs = Vec::new();
    let mut index = 2;
    while index + 1 < fields.len() {
        let (key, value) = (
            fields[index].trim(),
            fields[index + 1].trim().trim_matches('"'),
        );
        index += 2;
        if !key.starts_with('~') {
            pairs.push((key, value));
        }
    }
    let get = |key: &str| pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    // Every quantity of a Tanita line is a finite number of 0 or more, and a percentage at most 100.
    let number = |key: &str| -> Result<Option<f64>, &'static str> {
        let max = if matches!(key, "FW" | "ww") {
            100.0
        } else {
            f64::MAX
        };
        match get(key) {
            None | Some("") => Ok(None),
            Some(text) => match text.parse::<f64>() {
                Ok(number) if (0.0..=max).contains(&number) => Ok(Some(number)),
                Ok(_) => Err("number out of range"),
                Err(_) => Err("unreadable number"),
            },
        }
    };
    let parsed = (|| -> Result<(Vec<Value>, Vec<Value>), &'static str> {
        let pounds = get("Wp").is_some() || get("Ws").is_some();
        let mass = |key: &str,
                    kg: &'static Measure,
                    lb: &'static Measure|
         -> Result<Option<Value>, &'static str> {
            Ok(number(key)?.map(|v| Value::number(if pounds { lb } else { kg }, v)))
        };
        // No Tanita weighs more than 300 kg (661 lb); more is a damaged line, not a patient.
        if number("Wk")?.is_some_and(|kg| kg > 300.0) || number("Wp")?.is_some_and(|lb| lb > 661.0)
        {
            return Err("weight out of range");
        }
        let weight = match (number("Wk")?, number("Wp")?, get("Ws")) {
            (Some(kg), _, _) => Value::number(&codes::BODY_WEIGHT_KG, kg),
            (None, Some(lb), _) => Value::number(&codes::BODY_WEIGHT_LB, lb),
            (None, None, Some(text)) => Value::number(
                &codes::BODY_WEIGHT_LB,
                stone_pounds(text).ok_or("unreadable stone-pound weight")?,
            ),
            (None, None, None) => return Err("no weight in the line"),
        };
        // A 0 is a scale with nobody on it, not a weighing.
        let weight = if weight.value == Some(0.0) {
            Value::special(weight.measure, Special::Missing)
        } else {
            weight
        };
        let mut weight_values = vec![weight];
        weight_values.extend(number("MI")?.map(|v| Value::number(&codes::BMI, v)));
        weight_values
            .extend(number("Hm")?.map(|cm| Value::number(&codes::BODY_HEIGHT_M, cm / 100.0)));
        let composition: Vec<Value> = [
            number("FW")?.map(|v| Value::number(&codes::BODY_FAT_PERCENTAGE, v)),
            mass("fW", &codes::BODY_FAT_MASS_KG, &codes::BODY_FAT_MASS_LB)?,
            mass("MW", &codes::FAT_FREE_MASS_KG, &codes::FAT_FREE_MASS_LB)?,
            mass("mW", &codes::MUSCLE_MASS_KG, &codes::MUSCLE_MASS_LB)?,
            mass("bW", &codes::BONE_MASS_KG, &codes::BONE_MASS_LB)?,
            mass("wW", &codes::BODY_WATER_MASS_KG, &codes::BODY_WATER_MASS_LB)?,
            number("ww")?.map(|v| Value::number(&codes::BODY_WATER_PERCENTAGE, v)),
            // One basal metabolism: kJ where the scale gives it, else kcal.
            match number("rb")? {
                Some(kj) => Some(Value::number(&codes::BASAL_METABOLISM, kj)),
                None => number("rB")?.map(|v| Value::number(&codes::BASAL_METABOLISM_KCAL, v)),
            },
            number("IF")?.map(|v| Value::number(&codes::VISCERAL_FAT_RATING, v)),
            number("rA")?.map(|v| Value::number(&codes::METABOLIC_AGE, v)),
            number("ZF")?.map(|v| Value::number(&codes::IMPEDANCE, v)),
        ]
        .into_iter()
        .flatten()
        .collect();
        Ok((weight_values, composition))
    })();
    let (weight_values, composition) = match parsed {
        Ok(values) => values,
        Err(reason) => {
            events.push(malformed(reason));
            return events;
        }
    };
    let checksum_flag = match checksum_matches(line) {
        Some(false) => Some(Flag::ChecksumUnverified),
        _ => None,
    };
    // A line that carries the scale's date and time names its measurement; a resend gets the same ids. The
    // date's format is not documented, so only a date that shows a four-digit year of a set clock is taken
    // to name anything: a scale whose clock was never set (01/01/2000) stamps every weighing alike, and two
    // days of the same weight would be one record.
    let date = get("Da").or(get("DA")).or(get("DT"));
    let dated = date.is_some_and(shows_a_set_year) && get("TI").is_some();
    let mut make = |kind: Kind, values: Vec<Value>, name: &str| {
        let mut reading = Reading::at_hub_time(kind, context.received_at, line);
        reading.values = values;
        reading.flags.extend(checksum_flag);
        if dated {
            reading.record_key = Some(format!("tanita:{name}:{}", hex_of(line)));
        }
        events.push(DecodeEvent::Reading(reading));
    };
    make(Kind::BodyWeight, weight_values, "weight");
    if !composition.is_empty() {
        make(Kind::BodyComposition, composition, "composition");
    }
    events
}

/// Whether a date field holds a four-digit year among those a set clock shows (the time model's plausible
/// years).
fn shows_a_set_year(date: &str) -> bool {
    date.split(|c: char| !c.is_ascii_digit())
        .filter(|digits| digits.len() == 4)
        .filter_map(|digits| digits.parse::<i32>().ok())
        .any(|year| {
            (crate::model::measurement_time::MIN_PLAUSIBLE_YEAR
                ..=crate::model::measurement_time::MAX_PLAUSIBLE_YEAR)
                .contains(&year)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_stream;
    use crate::decode::StreamDecoder;

    fn make() -> Box<dyn StreamDecoder> {
        Box::new(decoder())
    }

    #[track_caller]
    fn check(text: &str, expected: &[&str]) {
        assert_eq!(
            decode_stream(make, &hex::encode(text)),
            expected,
            "{text:?}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn the_reference_line() {
        check("{0,16,~0,1,~1,1,~2,1,MO,\"WB-3000\",Hm,170.0,Wk,65.4,MI,22.6,CS,73\r\n",
            &[&format!("body_weight body_weight=65.4[kg] bmi=22.6[kg/m2] body_height=1.7[m] flags=[] {HUB}")]);
        // The same line with a wrong checksum is read, and flagged.
        check("{0,16,~0,1,~1,1,~2,1,MO,\"WB-3000\",Hm,170.0,Wk,65.4,MI,22.6,CS,74\r\n",
            &[&format!("body_weight body_weight=65.4[kg] bmi=22.6[kg/m2] body_height=1.7[m] flags=[checksum_unverified] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn body_composition_lines() {
        check("{0,16,~0,1,~1,1,~2,1,MO,\"BC-418\",DT,\"15/03/2024\",TI,\"07:30\",Bt,0,GE,1,AG,45,Hm,180.0,Pt,1.0,Wk,80.0,MI,24.7,FW,22.5,fW,18.0,MW,62.0,mW,58.9,bW,3.1,wW,45.4,ww,56.8,rb,7531,rB,1800,IF,9,rA,44,ZF,512\r\n", &[
            &format!("body_weight body_weight=80[kg] bmi=24.7[kg/m2] body_height=1.8[m] flags=[] {HUB}"),
            &format!("body_composition body_fat_percentage=22.5 body_fat_mass=18[kg] fat_free_mass=62[kg] muscle_mass=58.9[kg] bone_mass=3.1[kg] body_water_mass=45.4[kg] body_water_percentage=56.8 basal_metabolism=7531[kJ] visceral_fat_rating=9[{{score}}] metabolic_age=44[a] impedance=512[Ohm] flags=[] {HUB}"),
        ]);
        check("{0,16,~0,1,~1,1,~2,1,Wp,176.4,FW,22.5,fW,39.7\r\n", &[
            &format!("body_weight body_weight=176.4[[lb_av]] flags=[] {HUB}"),
            &format!("body_composition body_fat_percentage=22.5 body_fat_mass=39.7[[lb_av]] flags=[] {HUB}"),
        ]);
        check("{0,16,~0,1,Ws,12 8.4\r\n", &[&format!("body_weight body_weight=176.4[[lb_av]] flags=[] {HUB}")]);
        check("{0,16,~0,1,~1,1,~2,1,MO,\"WB-3000\",Hm,170.0,Wk,0.0,CS,7E\r\n", &[&format!("body_weight body_weight=missing body_height=1.7[m] flags=[] {HUB}")]);
        check("{0,16,~0,1,~1,1,~2,1,MO,\"WB-3000\",Wp,0.0,CS,80\r\n", &[&format!("body_weight body_weight=missing flags=[] {HUB}")]);
        check("{0,16,~0,1,Ws,0 0\r\n", &[&format!("body_weight body_weight=missing flags=[] {HUB}")]);
        // An SC-330 line as a public simulator sends it: a closing brace after the checksum, which matches;
        // both BMR keys (rb kJ, rB kcal) and rJ, which is no BMR.
        check("{0,16,~0,1,~1,1,~2,1,MO,\"SC-330\",SN,\"00000001\",ID,\"0000000000\",Da,\"25/09/2014\",TI,\"08:20\",Bt,0,GE,1,AG,34,Hm,191.0,Pt,0.0,Wk,89.2,FW,18.8,fW,16.8,MW,72.4,mW,68.8,sW,13,bW,3.6,wW,48.0,ww,53.8,MI,24.5,Sw,80.3,OV,11.1,IF,6,rb,8874,rB,2121,rJ,13,rA,29,ZF,501.8,CS,D9}\r\n", &[
            &format!("body_weight body_weight=89.2[kg] bmi=24.5[kg/m2] body_height=1.91[m] flags=[] {HUB}"),
            &format!("body_composition body_fat_percentage=18.8 body_fat_mass=16.8[kg] fat_free_mass=72.4[kg] muscle_mass=68.8[kg] bone_mass=3.6[kg] body_water_mass=48[kg] body_water_percentage=53.8 basal_metabolism=8874[kJ] visceral_fat_rating=6[{{score}}] metabolic_age=29[a] impedance=501.8[Ohm] flags=[] {HUB}"),
        ]);
    }

    #[rustfmt::skip]
    #[test]
    fn noise_and_broken_lines() {
        // The burst some scales send after a line, on its own line or glued to the next one.
        check("\u{0}\u{7f}xx\r\n", &["garbage 4"]);
        check("@@{0,16,~0,1,Wk,65.4\r\n", &["garbage 2", &format!("body_weight body_weight=65.4[kg] flags=[] {HUB}")]);
        check("{0,16,~0,1,Wk,6x.4\r\n", &["error malformed: unreadable number"]);
        check("{0,16,~0,1,Wk,-65.4\r\n", &["error malformed: number out of range"]);
        check("{0,16,~0,1,Wk,NaN\r\n", &["error malformed: number out of range"]);
        check("{0,16,~0,1,Wk,1e309\r\n", &["error malformed: number out of range"]);
        check("{0,16,~0,1,Wk,99999999\r\n", &["error malformed: weight out of range"]);
        check("{0,16,~0,1,Wp,700.0\r\n", &["error malformed: weight out of range"]);
        check("{0,16,~0,1,Wk,65.4,FW,150.0\r\n", &["error malformed: number out of range"]);
        check("{0,16,~0,1,Wk,65.4,FW,-5\r\n", &["error malformed: number out of range"]);
        check("{0,16,~0,1,MO,\"X\"\r\n", &["error malformed: no weight in the line"]);
        check("{0,16,~0,1,Wk,65", &["truncated 16/17"]);
    }

    #[test]
    fn a_dated_line_names_its_readings_and_an_undated_one_does_not() {
        let time_zone = crate::decode::test_support::utc();
        let context =
            DecodeContext::trusted(crate::decode::test_support::received_at(), &time_zone);
        let keys = |text: &str| -> Vec<Option<String>> {
            decoder()
                .feed(text.as_bytes(), &context)
                .into_iter()
                .filter_map(|event| match event {
                    DecodeEvent::Reading(reading) => Some(reading.record_key),
                    DecodeEvent::Rejected(_) => None,
                })
                .collect()
        };
        let dated = keys("{0,16,~0,1,DT,\"15/03/2024\",TI,\"07:30\",Wk,80.0,FW,22.5\r\n");
        assert_eq!(dated.len(), 2);
        assert!(dated.iter().all(Option::is_some));
        assert_ne!(dated[0], dated[1]);
        assert_eq!(keys("{0,16,~0,1,Wk,80.0\r\n"), [None]);
        // A clock never set (or a date that shows no year) names nothing.
        for undated in [
            "{0,16,~0,1,DA,\"01/01/2000\",TI,\"00:00\",Wk,80.0\r\n",
            "{0,16,~0,1,Da,\"15/03/24\",TI,\"07:30\",Wk,80.0\r\n",
            "{0,16,~0,1,DT,\"15/03/2024\",Wk,80.0\r\n",
        ] {
            assert_eq!(keys(undated), [None], "{undated}");
        }
        assert!(keys("{0,16,~0,1,Da,\"2024-03-15\",TI,\"07:30\",Wk,80.0\r\n")[0].is_some());
    }
}

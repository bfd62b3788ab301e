//! Health Thermometer Service: Temperature Measurement 0x2A1C (and Intermediate Temperature 0x2A1E, which
//! has the same layout).

use super::ieee11073::{patient_value_of, stamp, Cursor};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::model::codes;
use crate::model::reading::{Flag, Kind, Reading};

const FAHRENHEIT: u8 = 0x01;
const TIME_STAMP_PRESENT: u8 = 0x02;
const TEMPERATURE_TYPE_PRESENT: u8 = 0x04;

/// Temperature Type (0x2A1D) values as flags.
const SITES: [(u8, Flag); 9] = [
    (1, Flag::SiteArmpit),
    (2, Flag::SiteBody),
    (3, Flag::SiteEar),
    (4, Flag::SiteFinger),
    (5, Flag::SiteGastrointestinalTract),
    (6, Flag::SiteMouth),
    (7, Flag::SiteRectum),
    (8, Flag::SiteToe),
    (9, Flag::SiteTympanum),
];

/// Decodes 0x2A1C indications (and 0x2A1E notifications): one temperature each.
#[derive(Debug, Default)]
pub struct TemperatureMeasurementDecoder;

impl MessageDecoder for TemperatureMeasurementDecoder {
    fn decode(
        &mut self,
        message: &[u8],
        context: &DecodeContext<'_>,
    ) -> Result<Vec<Reading>, FrameError> {
        let mut cursor = Cursor::new(message);
        let flags = cursor.u8("flags")?;
        let temperature = cursor.float("temperature")?;
        let time_stamp = if flags & TIME_STAMP_PRESENT != 0 {
            Some(cursor.date_time("time stamp")?)
        } else {
            None
        };
        let site = if flags & TEMPERATURE_TYPE_PRESENT != 0 {
            Some(cursor.u8("temperature type")?)
        } else {
            None
        };

        let measure = if flags & FAHRENHEIT != 0 {
            &codes::BODY_TEMPERATURE_FAHRENHEIT
        } else {
            &codes::BODY_TEMPERATURE_CEL
        };
        let mut reading = Reading::at_hub_time(Kind::BodyTemperature, context.received_at, message);
        reading.values.push(patient_value_of(measure, temperature));
        reading.flags.extend(site.and_then(|code| {
            SITES
                .iter()
                .find(|(value, _)| *value == code)
                .map(|(_, name)| *name)
        }));
        if let Some(time_stamp) = time_stamp {
            stamp(&mut reading, time_stamp, context);
            // A stored record replayed by the thermometer carries the same time stamp and bytes, so the bytes
            // name it; without a trusted time stamp two equal temperatures would wrongly share one name.
            if crate::model::measurement_time::stamp_names_the_record(&reading) {
                reading.record_key = Some(format!("temperature:{}", hex_of(message)));
            }
        }
        Ok(vec![reading])
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::decode::test_support::{
        bytes_of, decode_against_clock, decode_messages, received_at, utc,
    };
    use crate::model::measurement_time::HubClock;

    #[track_caller]
    fn check(messages: &[&str], expected: &[&str]) {
        assert_eq!(
            decode_messages(&mut TemperatureMeasurementDecoder, messages),
            expected,
            "{messages:?}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    /// The reference's Nordic vector: 37.60 °C, 2012-12-05 11:50:27, finger.
    const NORDIC: &str = "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04";

    fn decode_one(hex: &str, received_at: chrono::DateTime<chrono::Utc>) -> Reading {
        let zone = utc();
        let context = DecodeContext::trusted(received_at, &zone);
        let mut readings = TemperatureMeasurementDecoder
            .decode(&bytes_of(hex), &context)
            .unwrap();
        assert_eq!(readings.len(), 1, "{hex}");
        readings.remove(0)
    }

    /// Like `check` for one message, against `clock`, with the time stamp as the device sent it (`sent=`,
    /// `-` for none).
    #[track_caller]
    fn check_clock(clock: HubClock, hex: &str, expected: &str) {
        assert_eq!(
            decode_against_clock(&mut TemperatureMeasurementDecoder, clock, hex),
            expected,
            "{hex}"
        );
    }

    fn key(hex: &str) -> Option<String> {
        decode_one(hex, received_at()).record_key
    }

    #[rustfmt::skip]
    #[test]
    fn vectors_from_the_reference() {
        check(&[NORDIC], &["body_temperature body_temperature=37.6[Cel] flags=[site_finger] at=2012-12-05T11:50:27 device"]);
        check(&["06 B0 0E 00 FE DC 07 0C 05 0B 32 1B"], &["error too short for temperature type"]);
        check(&["01 DA 03 00 FF"], &[&format!("body_temperature body_temperature=98.6[[degF]] flags=[] {HUB}")]);
        check(&["00 FF FF 7F 00"], &[&format!("body_temperature body_temperature=nan flags=[] {HUB}")]);
        check(&["04 6E 01 00 FF 06"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[site_mouth] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn special_values_stay_special() {
        check(&["00 00 00 80 00"], &[&format!("body_temperature body_temperature=nres flags=[] {HUB}")]);
        check(&["00 FE FF 7F 00"], &[&format!("body_temperature body_temperature=+inf flags=[] {HUB}")]);
        check(&["00 02 00 80 00"], &[&format!("body_temperature body_temperature=-inf flags=[] {HUB}")]);
        check(&["00 01 00 80 00"], &[&format!("body_temperature body_temperature=reserved flags=[] {HUB}")]);
        check(&["01 FF FF 7F 00"], &[&format!("body_temperature body_temperature=nan flags=[] {HUB}")]);
        check(&["00 00 00 00 00"], &[&format!("body_temperature body_temperature=missing flags=[] {HUB}")]);
        check(&["00 00 00 00 FF"], &[&format!("body_temperature body_temperature=missing flags=[] {HUB}")]);
        check(&["01 00 00 00 00"], &[&format!("body_temperature body_temperature=missing flags=[] {HUB}")]);
        check(&["00 9C FF FF FF"], &[&format!("body_temperature body_temperature=-10[Cel] flags=[] {HUB}")]);
    }

    #[rustfmt::skip]
    #[test]
    fn temperature_types_name_the_site() {
        let line = |flags: &str| format!("body_temperature body_temperature=36.6[Cel] flags=[{flags}] {HUB}");
        check(&["04 6E 01 00 FF 01"], &[&line("site_armpit")]);
        check(&["04 6E 01 00 FF 02"], &[&line("site_body")]);
        check(&["04 6E 01 00 FF 03"], &[&line("site_ear")]);
        check(&["04 6E 01 00 FF 04"], &[&line("site_finger")]);
        check(&["04 6E 01 00 FF 05"], &[&line("site_gastrointestinal_tract")]);
        check(&["04 6E 01 00 FF 07"], &[&line("site_rectum")]);
        check(&["04 6E 01 00 FF 08"], &[&line("site_toe")]);
        check(&["04 6E 01 00 FF 09"], &[&line("site_tympanum")]);
        check(&["04 6E 01 00 FF 00"], &[&line("")]);
        check(&["04 6E 01 00 FF 0A"], &[&line("")]);
        check(&["04 6E 01 00 FF FF"], &[&line("")]);
    }

    #[rustfmt::skip]
    #[test]
    fn time_stamps_and_reserved_flag_bits() {
        check(&["07 DA 03 00 FF E8 07 03 0F 07 1E 00 01"], &["body_temperature body_temperature=98.6[[degF]] flags=[site_armpit] at=2024-03-15T07:30:00 device"]);
        check(&["02 6E 01 00 FF 00 00 00 00 0B 32 1B"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_invalid] {HUB}")]);
        check(&["02 6E 01 00 FF E8 07 03 0F 0D 00 00"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_ahead] {HUB}")]);
        check(&["02 6E 01 00 FF D0 07 01 01 00 00 00"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_invalid] {HUB}")]);
        check(&["F8 6E 01 00 FF"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[] {HUB}")]);
        check(&["0E B0 0E 00 FE DC 07 0C 05 0B 32 1B 04"], &["body_temperature body_temperature=37.6[Cel] flags=[site_finger] at=2012-12-05T11:50:27 device"]);
        // Years 0, 1999 and 2009, the first plausible year, 2099 (ahead of the hub), 2100 and 65535.
        let invalid = format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_invalid] {HUB}");
        check(&["02 6E 01 00 FF 00 00 01 01 00 00 00"], &[&invalid]);
        check(&["02 6E 01 00 FF CF 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["02 6E 01 00 FF D9 07 0C 1F 17 3B 3B"], &[&invalid]);
        check(&["02 6E 01 00 FF DA 07 01 01 00 00 00"], &["body_temperature body_temperature=36.6[Cel] flags=[] at=2010-01-01T00:00:00 device"]);
        check(&["02 6E 01 00 FF 33 08 0C 1F 00 00 00"], &[&format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_ahead] {HUB}")]);
        check(&["02 6E 01 00 FF 34 08 01 01 00 00 00"], &[&invalid]);
        check(&["02 6E 01 00 FF FF FF 01 01 00 00 00"], &[&invalid]);
        // Month 0 and 13, day 0 and 32, 30 February, hour 24, minute 60, second 60.
        check(&["02 6E 01 00 FF E8 07 00 0F 07 1E 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 0D 0F 07 1E 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 03 00 07 1E 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 03 20 07 1E 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 02 1E 07 1E 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 03 0F 18 00 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 03 0F 07 3C 00"], &[&invalid]);
        check(&["02 6E 01 00 FF E8 07 03 0F 07 1E 3C"], &[&invalid]);
    }

    #[rustfmt::skip]
    #[test]
    fn only_a_trusted_hub_clock_finds_the_thermometer_ahead_and_the_time_sent_is_kept() {
        check_clock(HubClock::Trusted, "02 6E 01 00 FF E8 07 03 12 07 1E 00", &format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_ahead] {HUB} sent=2024-03-18 07:30:00"));
        check_clock(HubClock::Unsynchronized, "02 6E 01 00 FF E8 07 03 12 07 1E 00", "body_temperature body_temperature=36.6[Cel] flags=[] at=2024-03-18T07:30:00 device sent=2024-03-18 07:30:00");
        check_clock(HubClock::Unsynchronized, "02 6E 01 00 FF D0 07 01 01 00 00 00", &format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_invalid] {HUB} sent=2000-01-01 00:00:00"));
        check_clock(HubClock::Trusted, NORDIC, "body_temperature body_temperature=37.6[Cel] flags=[site_finger] at=2012-12-05T11:50:27 device sent=2012-12-05 11:50:27");
    }

    #[rustfmt::skip]
    #[test]
    fn short_messages_are_errors() {
        check(&[""], &["error too short for flags"]);
        check(&["00 6E 01 00"], &["error too short for temperature"]);
        check(&["02 6E 01 00 FF DC 07 0C 05 0B 32"], &["error too short for time stamp"]);
        check(&["04 6E 01 00 FF"], &["error too short for temperature type"]);
        check(&["06 6E 01 00 FF 06"], &["error too short for time stamp"]);
    }

    #[rustfmt::skip]
    #[test]
    fn each_message_is_one_reading() {
        check(&[NORDIC, "00 6E", "01 DA 03 00 FF"], &[
            "body_temperature body_temperature=37.6[Cel] flags=[site_finger] at=2012-12-05T11:50:27 device",
            "error too short for temperature",
            &format!("body_temperature body_temperature=98.6[[degF]] flags=[] {HUB}"),
        ]);
    }

    #[test]
    fn every_prefix_of_a_measurement_is_too_short() {
        let bytes = bytes_of(NORDIC);
        for length in 0..bytes.len() {
            let prefix = hex::encode(&bytes[..length]);
            let lines = decode_messages(&mut TemperatureMeasurementDecoder, &[&prefix]);
            assert!(lines[0].starts_with("error too short for "), "{prefix}");
        }
    }

    #[test]
    fn only_a_plausible_time_stamp_gives_a_record_key() {
        assert_eq!(
            key(NORDIC).as_deref(),
            Some("temperature:06b00e00fedc070c050b321b04")
        );
        let later: chrono::DateTime<chrono::Utc> = "2024-03-16T09:00:00Z".parse().unwrap();
        assert_eq!(
            decode_one(NORDIC, later).record_key,
            key(NORDIC),
            "a stored record replayed later is the same record"
        );
        assert_ne!(key(NORDIC), key("06 B0 0E 00 FE DC 07 0C 05 0B 32 1C 04"));
        assert_eq!(key("01 DA 03 00 FF"), None, "no time stamp");
        assert_eq!(
            key("02 6E 01 00 FF 00 00 00 00 0B 32 1B"),
            None,
            "clock not set"
        );
        // A clock ahead of the hub still names its record: identity must not depend on the hub clock.
        assert_eq!(
            key("02 6E 01 00 FF E8 07 03 0F 0D 00 00").as_deref(),
            Some("temperature:026e0100ffe807030f0d0000"),
            "clock ahead"
        );
    }

    #[test]
    fn readings_are_body_temperatures_in_the_unit_sent() {
        let celsius = decode_one(NORDIC, received_at());
        assert_eq!(celsius.kind, Kind::BodyTemperature);
        assert_eq!(celsius.values[0].measure, &codes::BODY_TEMPERATURE_CEL);
        assert!(celsius.is_clinical());
        let fahrenheit = decode_one("01 DA 03 00 FF", received_at());
        assert_eq!(
            fahrenheit.values[0].measure,
            &codes::BODY_TEMPERATURE_FAHRENHEIT
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..24)) {
            let zone = utc();
            let context = DecodeContext::trusted(received_at(), &zone);
            match TemperatureMeasurementDecoder.decode(&bytes, &context) {
                Ok(readings) => prop_assert_eq!(readings.len(), 1),
                Err(error) => prop_assert!(matches!(error, FrameError::TooShort { .. }), "{error}"),
            }
        }
    }
}

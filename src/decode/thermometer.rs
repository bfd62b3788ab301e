//! Health Thermometer Service: Temperature Measurement 0x2A1C (and Intermediate Temperature 0x2A1E, which
//! has the same layout).

use super::ieee11073::{stamp, value_of, Cursor};
use super::{hex_of, DecodeContext, FrameError, MessageDecoder};
use crate::codes;
use crate::reading::{Kind, Reading, TimeSource};

const SITES: [&str; 9] = [
    "site_armpit",
    "site_body",
    "site_ear",
    "site_finger",
    "site_gastrointestinal_tract",
    "site_mouth",
    "site_rectum",
    "site_toe",
    "site_tympanum",
];

/// Decodes 0x2A1C indications: one temperature each.
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
        let time_stamp = (flags & 0x02 != 0)
            .then(|| cursor.date_time("time stamp"))
            .transpose()?;
        let site = (flags & 0x04 != 0)
            .then(|| cursor.u8("temperature type"))
            .transpose()?;
        let measure = if flags & 0x01 != 0 {
            &codes::BODY_TEMPERATURE_FAHRENHEIT
        } else {
            &codes::BODY_TEMPERATURE_CEL
        };
        let mut reading = Reading::at_hub_time(Kind::BodyTemperature, context.received_at, message);
        reading.values.push(value_of(measure, temperature));
        if let Some(name) = site
            .and_then(|site| usize::from(site).checked_sub(1))
            .and_then(|i| SITES.get(i))
        {
            reading.flags.push(name);
        }
        if let Some(time_stamp) = time_stamp {
            stamp(&mut reading, time_stamp, context);
            if reading.time_source == TimeSource::Device {
                reading.record_key = Some(format!("temperature:{}", hex_of(message)));
            }
        }
        Ok(vec![reading])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::decode_messages;

    #[track_caller]
    fn check(hex: &str, expected: &str) {
        assert_eq!(
            decode_messages(&mut TemperatureMeasurementDecoder, &[hex]),
            [expected],
            "{hex}"
        );
    }

    const HUB: &str = "at=2024-03-15T12:00:00 hub";

    #[rustfmt::skip]
    #[test]
    fn temperature_vectors() {
        check("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04", "body_temperature body_temperature=37.6[Cel] flags=[site_finger] at=2012-12-05T11:50:27 device");
        check("06 B0 0E 00 FE DC 07 0C 05 0B 32 1B", "error too short for temperature type");
        check("01 DA 03 00 FF", &format!("body_temperature body_temperature=98.6[[degF]] flags=[] {HUB}"));
        check("00 FF FF 7F 00", &format!("body_temperature body_temperature=nan flags=[] {HUB}"));
        check("04 6E 01 00 FF 06", &format!("body_temperature body_temperature=36.6[Cel] flags=[site_mouth] {HUB}"));
        check("04 6E 01 00 FF 0A", &format!("body_temperature body_temperature=36.6[Cel] flags=[] {HUB}"));
        check("F8 6E 01 00 FF", &format!("body_temperature body_temperature=36.6[Cel] flags=[] {HUB}"));
        check("00 6E 01 00", "error too short for temperature");
        check("02 6E 01 00 FF 00 00 00 00 0B 32 1B", &format!("body_temperature body_temperature=36.6[Cel] flags=[device_clock_invalid] {HUB}"));
    }
}

//! The device pipeline's sans-IO core: transport bytes → protocol decoder → spot filter → payload → outbox
//! records, for one device channel (a serial port, or one characteristic of a Bluetooth device).
//!
//! `Decoding` owns the decoder state for the current connection (a reconnect starts a fresh decoder, so
//! half a frame from before an unplug never glues onto bytes after it), counts rejected frames and
//! withheld readings, and hands back records. It does no I/O and reads no clock: times and the time zone
//! are passed in, the download checkpoint comes in and goes out as a value (the transport's task loads and
//! saves it), and counters leave as deltas the caller commits to the outbox.

use crate::clock::HubNow;
use crate::decode::{DecodeContext, DecodeEvent, FrameError, HostCommand, Protocol};
use crate::model::fhir::{self, FhirOptions};
use crate::model::measurement_time::DeviceClockCheck;
use crate::model::payload::{self, DeviceIdentity, DeviceInfo};
use crate::model::reading::{HubTimeZone, Reading};
use crate::outbox::NewRecord;
use crate::spot::{SpotFilter, SpotRule};

/// The messages a reading becomes, one outbox record each: the `vitalsd.reading.v1` document and, if
/// configured, the FHIR Bundle made from it (`[output] formats`).
#[derive(Debug, Clone)]
pub struct Formats {
    pub reading_v1: bool,
    pub fhir: Option<std::sync::Arc<FhirOptions>>,
}

impl Default for Formats {
    fn default() -> Self {
        Formats {
            reading_v1: true,
            fhir: None,
        }
    }
}

/// Who a pipeline decodes for.
pub struct DeviceSettings {
    pub hub_id: String,
    pub formats: Formats,
    pub device: DeviceInfo,
    pub protocol: Protocol,
    pub spot: SpotRule,
    /// The hub's time zone, in which device wall times are read.
    pub time_zone: &'static (dyn HubTimeZone + Send + Sync),
}

#[derive(Default)]
struct Counters {
    frames_rejected: u64,
    bytes_skipped: u64,
    readings: u64,
    readings_withheld: u64,
    /// Rejected frames not yet mentioned in the log (a warning at most once per flush).
    rejections_unlogged: u64,
}

/// The I/O-free part of a pipeline: decoder, spot filter and counters for one device channel (a serial
/// port, or one characteristic of a Bluetooth device). Transports feed it; it hands back outbox records.
pub struct Decoding {
    settings: DeviceSettings,
    decoder: Box<dyn crate::decode::StreamDecoder>,
    spot: SpotFilter,
    counters: Counters,
    /// The device clock read in this session (a coincident time stamp), if the transport read one.
    device_clock: Option<DeviceClockCheck>,
    /// The decoder's checkpoint as the caller last kept it (or gave it at the start).
    checkpoint: Option<String>,
}

impl Decoding {
    /// A pipeline whose decoder resumes from `checkpoint`, the one its protocol gave in an earlier run.
    pub fn new(settings: DeviceSettings, checkpoint: Option<String>) -> Decoding {
        let mut decoding = Decoding {
            decoder: settings.protocol.new_decoder(),
            spot: SpotFilter::new(settings.spot),
            settings,
            counters: Counters::default(),
            device_clock: None,
            checkpoint,
        };
        decoding.resume_decoder();
        decoding
    }

    fn resume_decoder(&mut self) {
        if let Some(checkpoint) = &self.checkpoint {
            self.decoder.resume(checkpoint);
        }
    }

    /// What the device should be sent now, and the records the passing of time settled (a download that
    /// ended with a pause). Call it only when every byte read so far was fed.
    pub fn poll(&mut self, now: &HubNow) -> (Vec<(Vec<NewRecord>, Reading)>, Vec<HostCommand>) {
        let context = context(self.settings.time_zone, self.device_clock.as_ref(), now);
        let mut polled = self.decoder.poll(&context);
        self.received(&mut polled.events, now);
        (self.records(polled.events), polled.commands)
    }

    /// The decoder's checkpoint when it moved since the caller last kept one. Take it only after the
    /// records decoded so far were handed to the outbox, so a kept checkpoint never covers a reading the
    /// outbox does not have; then pass it to [`Decoding::checkpoint_kept`] once it is saved.
    pub fn checkpoint_moved(&self) -> Option<String> {
        self.decoder
            .checkpoint()
            .filter(|current| Some(current) != self.checkpoint.as_ref())
    }

    /// The caller saved this checkpoint: the next connection's decoder resumes from it.
    pub fn checkpoint_kept(&mut self, checkpoint: String) {
        self.checkpoint = Some(checkpoint);
    }

    /// The device clock the transport read in this session; the time model judges the session's records
    /// by it, and every reading of the session carries it.
    pub fn device_clock_read(&mut self, check: Option<DeviceClockCheck>) {
        self.device_clock = check;
    }

    /// Notes on every decoded reading what the hub knew when it received it: whether its clock was
    /// trusted, the instant on the boot-time clock, and the device clock read in the session.
    fn received(&self, events: &mut [DecodeEvent], now: &HubNow) {
        for event in events {
            if let DecodeEvent::Reading(reading) = event {
                reading.hub_clock = now.clock;
                reading.received_since_boot = Some(now.boot_instant_at(reading.received_at));
                // A decoder that reads the device clock itself (the Nonin 9560's) has set it already.
                reading.device_clock = self.device_clock.or(reading.device_clock);
            }
        }
    }

    pub fn settings(&self) -> &DeviceSettings {
        &self.settings
    }

    /// A new connection: half a frame from before must not glue onto bytes after it.
    pub fn opened(&mut self, identity: DeviceIdentity) {
        // A port may now lead to another device (a cable moved): the readings carry what is there now.
        self.settings.device.identity = identity;
        self.decoder = self.settings.protocol.new_decoder();
        self.resume_decoder();
        self.spot = SpotFilter::new(self.settings.spot);
    }

    /// Decodes bytes; returns the records to make durable and the readings they came from.
    pub fn feed(&mut self, bytes: &[u8], now: &HubNow) -> Vec<(Vec<NewRecord>, Reading)> {
        let decoded = self.decode(bytes, now);
        self.records(decoded)
    }

    /// The first half of [`Decoding::feed`], for a transport whose device dialog sees the decoded events
    /// before they become records (a glucose record waiting for its context): decodes bytes into events
    /// that carry what the hub knew when it received them.
    pub fn decode(&mut self, bytes: &[u8], now: &HubNow) -> Vec<DecodeEvent> {
        let context = context(self.settings.time_zone, self.device_clock.as_ref(), now);
        let mut decoded = self.decoder.feed(bytes, &context);
        self.received(&mut decoded, now);
        decoded
    }

    /// The second half of [`Decoding::feed`]: decoded events through the spot filter into records,
    /// counting what is rejected or withheld.
    pub fn records(&mut self, events: Vec<DecodeEvent>) -> Vec<(Vec<NewRecord>, Reading)> {
        collect(&self.settings, events, &mut self.spot, &mut self.counters)
    }

    /// The connection ended: a frame left unfinished is counted.
    pub fn closed(&mut self) {
        if let Some(error) = self.decoder.finish() {
            count_rejection(&self.settings, &error, &mut self.counters);
        }
    }

    /// The counters gathered since they were last taken, as outbox counter deltas, to be committed with the
    /// records they count ([`OutboxHandle::append_counted`]) so that no kill can part them.
    ///
    /// [`OutboxHandle::append_counted`]: crate::outbox::OutboxHandle::append_counted
    pub fn take_counter_deltas(&mut self) -> Vec<(String, u64)> {
        counter_deltas(&self.settings, &mut self.counters)
    }

    /// The periodic flush: logs the frames rejected since the last one (once, as a count) and returns the
    /// counter deltas for the caller to add to the outbox's statistics.
    pub fn flush_counters(&mut self) -> Vec<(String, u64)> {
        if self.counters.rejections_unlogged > 0 {
            tracing::warn!(device = %self.settings.device.id, count = self.counters.rejections_unlogged, "Skipped malformed frames.");
            self.counters.rejections_unlogged = 0;
        }
        self.take_counter_deltas()
    }
}

fn collect(
    settings: &DeviceSettings,
    decoded: Vec<DecodeEvent>,
    spot: &mut SpotFilter,
    counters: &mut Counters,
) -> Vec<(Vec<NewRecord>, Reading)> {
    let mut records = Vec::new();
    for (index, event) in decoded.into_iter().enumerate() {
        match event {
            DecodeEvent::Reading(reading) if !reading.is_clinical() => {
                counters.readings_withheld += 1;
                tracing::debug!(
                    device = %settings.device.id,
                    flags = ?reading.flags,
                    "Withheld a reading that is not patient data."
                );
            }
            DecodeEvent::Reading(reading) => {
                let reading = if settings.protocol.is_continuous() {
                    spot.push(reading)
                } else {
                    Some(reading)
                };
                if let Some(reading) = reading {
                    counters.readings += 1;
                    records.push((records_of(settings, &reading, index), reading));
                }
            }
            DecodeEvent::Rejected(error) => count_rejection(settings, &error, counters),
        }
    }
    records
}

/// The outbox records of one reading, one per configured format. A FHIR record is keyed by the reading id
/// and `/fhir`, so it is deduplicated like the reading; while the reading is held for a trusted hub clock
/// its payload is the reading's document and its subject as configured now, and the Bundle is made when its
/// times are final.
fn records_of(settings: &DeviceSettings, reading: &Reading, index: usize) -> Vec<NewRecord> {
    let id = payload::reading_id(&settings.device.id, reading, index);
    tracing::debug!(device = %settings.device.id, %id, kind = reading.kind.as_str(), "Reading decoded.");
    let document = payload::to_json(&settings.hub_id, &id, &settings.device, reading);
    let held = payload::held(reading).is_some();
    let record = |key: String, label: String, format: u32, payload: Vec<u8>| NewRecord {
        key,
        label,
        format,
        payload,
        created_at_ms: reading.received_at.timestamp_millis(),
        held,
    };
    let mut records = Vec::new();
    // A reading whose values have no code (parts of a body composition only) has no Observation to make.
    let coded = reading
        .values
        .iter()
        .any(|value| value.measure.mdc.is_some());
    if let (Some(options), true) = (&settings.formats.fhir, coded) {
        let payload = match held {
            true => fhir::held_document(&document, options),
            false => fhir::bundle_of_payload(&document, options),
        };
        match payload {
            Ok(payload) => {
                let key = format!("{id}/fhir");
                let label = reading.kind.as_str().to_string();
                records.push(record(key, label, fhir::OUTBOX_FORMAT, payload));
            }
            // Only a bug can get here (the document is this module's own); the reading.v1 record, if that
            // format is on, still goes out.
            Err(error) => {
                tracing::error!(device = %settings.device.id, %id, %error, "No FHIR Bundle for a reading.")
            }
        }
    }
    if settings.formats.reading_v1 {
        let label = reading.kind.as_str().to_string();
        records.insert(0, record(id, label, payload::OUTBOX_FORMAT, document));
    }
    records
}

fn count_rejection(settings: &DeviceSettings, error: &FrameError, counters: &mut Counters) {
    match error {
        FrameError::Garbage { count } => counters.bytes_skipped += *count as u64,
        other => {
            counters.frames_rejected += 1;
            counters.rejections_unlogged += 1;
            // The frame bytes may hold a measurement, so they are logged at debug level only.
            tracing::debug!(device = %settings.device.id, error = %other, "Rejected a malformed frame.");
        }
    }
}

fn counter_deltas(settings: &DeviceSettings, counters: &mut Counters) -> Vec<(String, u64)> {
    let taken = Counters {
        rejections_unlogged: counters.rejections_unlogged,
        ..std::mem::take(counters)
    };
    counters.rejections_unlogged = taken.rejections_unlogged;
    let device = &settings.device.id;
    let mut deltas = Vec::new();
    for (name, value) in [
        ("frames_rejected", taken.frames_rejected),
        ("bytes_skipped", taken.bytes_skipped),
        ("readings", taken.readings),
        ("readings_withheld", taken.readings_withheld),
    ] {
        if value > 0 {
            deltas.push((name.to_string(), value));
            deltas.push((format!("{name}.{device}"), value));
        }
    }
    deltas
}

/// What a decoder is told of the time: the wall clock for readings, the boot-time clock for its timers.
fn context<'a>(
    time_zone: &'a dyn HubTimeZone,
    device_clock: Option<&'a DeviceClockCheck>,
    now: &HubNow,
) -> DecodeContext<'a> {
    DecodeContext {
        received_at: now.wall,
        steady: chrono::DateTime::UNIX_EPOCH + now.boot.since_boot,
        time_zone,
        hub_clock: now.clock,
        device_clock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Transport;
    use crate::model::measurement_time::HubClock;

    /// The hub's time at `wall`, on a boot-time clock that runs with it (as it does while nothing steps it).
    fn test_now(wall: chrono::DateTime<chrono::Utc>) -> HubNow {
        let booted: chrono::DateTime<chrono::Utc> = "2024-01-01T00:00:00Z".parse().unwrap();
        HubNow {
            wall,
            boot: crate::model::reading::BootInstant {
                boot_id: "test-boot".into(),
                since_boot: (wall - booted).to_std().unwrap_or_default(),
            },
            clock: HubClock::Synchronized,
        }
    }

    /// With both formats a reading is two records: its document under its id, its Bundle under the id and
    /// `/fhir`; a reading held for a trusted clock holds both, the Bundle's record still the document, with
    /// the subject it arrived for.
    #[test]
    fn each_format_is_its_own_record_and_a_held_reading_holds_both() {
        let settings = || DeviceSettings {
            hub_id: "hub".into(),
            formats: Formats {
                reading_v1: true,
                fhir: Some(std::sync::Arc::new(FhirOptions {
                    subject: Some(crate::model::fhir::Subject {
                        system: "urn:example:patients".into(),
                        value: "p-1".into(),
                    }),
                    ..FhirOptions::default()
                })),
            },
            device: DeviceInfo {
                id: "serial:nonin".into(),
                transport: crate::decode::Transport::Serial,
                protocol: "nonin-df13",
                identity: Default::default(),
                specialization: Some(528_388),
            },
            protocol: Protocol::NoninDf13,
            spot: SpotRule::default(),
            time_zone: &chrono::Utc,
        };
        let frame =
            hex::decode("0002000D000E2024031510203000020000480061 6703".replace(' ', "")).unwrap();
        let shape = |now: &HubNow| -> Vec<(String, String, u32, bool, String)> {
            let mut decoding = Decoding::new(settings(), None);
            let decoded = decoding.feed(&frame, now);
            assert_eq!(decoded.len(), 1, "one reading");
            decoded[0]
                .0
                .iter()
                .map(|record| {
                    let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
                    let what = json["schema"]
                        .as_str()
                        .or(json["resourceType"].as_str())
                        .unwrap();
                    let key = record.key.replace(decoded[0].0[0].key.as_str(), "ID");
                    (
                        key,
                        record.label.clone(),
                        record.format,
                        record.held,
                        what.to_string(),
                    )
                })
                .collect()
        };
        let trusted = test_now("2024-03-15T12:00:00Z".parse().unwrap());
        assert_eq!(
            shape(&trusted),
            [
                (
                    "ID".into(),
                    "pulse_oximetry".into(),
                    1,
                    false,
                    "vitalsd.reading.v1".into()
                ),
                (
                    "ID/fhir".into(),
                    "pulse_oximetry".into(),
                    2,
                    false,
                    "Bundle".into()
                ),
            ]
        );
        let untrusted = HubNow {
            clock: HubClock::Unsynchronized,
            ..trusted
        };
        assert_eq!(
            shape(&untrusted),
            [
                (
                    "ID".into(),
                    "pulse_oximetry".into(),
                    1,
                    true,
                    "vitalsd.reading.v1".into()
                ),
                (
                    "ID/fhir".into(),
                    "pulse_oximetry".into(),
                    2,
                    true,
                    "vitalsd.reading.v1".into()
                ),
            ]
        );
        // The held Bundle's record keeps the patient of now for its release; the published document does not.
        let records = &Decoding::new(settings(), None).feed(&frame, &untrusted)[0].0;
        let held_for = |record: &NewRecord| {
            let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            json.get("held_for").map(|subject| subject["value"].clone())
        };
        assert_eq!(held_for(&records[0]), None);
        assert_eq!(held_for(&records[1]), Some("p-1".into()));
    }

    /// A Contec recording downloaded while the hub clock was unsynchronised and published by a poll after NTP
    /// synchronised it is judged by the clock's trust at that poll, not at the last bytes fed.
    #[test]
    fn a_recording_published_after_the_clock_is_trusted_is_judged_by_the_trusted_clock() {
        let at = |s: i64, clock| HubNow {
            wall: test_now("2024-03-15T12:00:00Z".parse().unwrap()).wall
                + chrono::TimeDelta::seconds(s),
            clock,
            ..test_now("2024-03-15T12:00:00Z".parse().unwrap())
        };
        let bytes = |hex: &str| hex::decode(hex.replace(' ', "")).unwrap();
        let mut decoding = contec(None);
        let untrusted = HubClock::Unsynchronized;
        let mut records = Vec::new();
        records.extend(decoding.poll(&at(0, untrusted)).0);
        // One session, starting 2024-03-16 08:00 (20 h after the hub's time), 24 stored bytes.
        let answers =
            "0A 80 80 81 07 80 80 80 94 98 83 90 12 80 80 80 88 80 80 80 08 80 80 80 98 80 80 80";
        records.extend(decoding.feed(&bytes(answers), &at(0, untrusted)));
        records.extend(decoding.poll(&at(0, untrusted)).0);
        records.extend(decoding.feed(
            &bytes(&["0F 80 DE C2 DE C2 DE C2"; 4].join(" ")),
            &at(1, untrusted),
        ));
        records.extend(decoding.poll(&at(1, untrusted)).0);
        let trusted = at(3, HubClock::Synchronized);
        records.extend(decoding.poll(&trusted).0);
        // The trusted clock shows the recording would end in the hub's future: it is not published at all.
        assert_eq!(
            records.len(),
            0,
            "{:?}",
            records
                .iter()
                .map(|(_, r)| r.measured_at)
                .collect::<Vec<_>>()
        );
        for (record, reading) in &records {
            let ahead = reading.measured_at.signed_duration_since(trusted.wall);
            assert!(
                !(reading.hub_clock.is_trusted()
                    && !record.iter().any(|r| r.held)
                    && ahead > crate::model::measurement_time::MAX_AHEAD),
                "published as {:?}, measured_at {} is {} h after the trusted hub clock",
                reading.hub_clock,
                reading.measured_at,
                ahead.num_hours()
            );
        }
    }

    /// A Contec CMS50 pipeline in UTC, resumed from `checkpoint`.
    fn contec(checkpoint: Option<&str>) -> Decoding {
        Decoding::new(
            DeviceSettings {
                hub_id: "hub".into(),
                formats: Formats::default(),
                device: DeviceInfo {
                    id: "serial:contec".into(),
                    transport: crate::decode::Transport::Serial,
                    protocol: "contec-cms50",
                    identity: Default::default(),
                    specialization: None,
                },
                protocol: Protocol::ContecCms50,
                spot: SpotRule::default(),
                time_zone: &chrono::Utc,
            },
            checkpoint.map(str::to_string),
        )
    }

    /// Plays a Contec device answering with one stored session from 2014-08-18 02:38:18 (seven samples):
    /// at each step's second the device's bytes are fed, then the pipeline is polled, as the serial task
    /// does. Returns the commands the hub sent (their command byte, as in `decode::contec`'s tables).
    fn download_one_session(decoding: &mut Decoding) -> Vec<String> {
        let steps = [
            (0, ""),
            (0, "0A 80 80 81"),
            (0, "07 80 80 80 94 8E 88 92"),
            (0, "12 80 80 80 82 A6 92 80"),
            (0, "08 80 80 80 8E 80 80 80"),
            (
                1,
                "0F 80 DE C2 DE C2 DE C2 0F 8A DE FF DE 82 DE C2 0F 80 E1 C4 FF FF FF FF",
            ),
            (3, ""),
        ];
        let start: chrono::DateTime<chrono::Utc> = "2024-03-15T12:00:00Z".parse().unwrap();
        let mut sent = Vec::new();
        for (second, hex) in steps {
            let now = test_now(start + chrono::TimeDelta::seconds(second));
            decoding.feed(&hex::decode(hex.replace(' ', "")).unwrap(), &now);
            let (_, commands) = decoding.poll(&now);
            sent.extend(
                commands
                    .iter()
                    .map(|command| format!("{:02x}", command.bytes[2])),
            );
        }
        sent
    }

    /// The checkpoint leaves the pipeline as a value once it moved, stops moving once the caller kept it,
    /// and a pipeline started from it does not ask for the session it covers again.
    #[test]
    fn the_download_checkpoint_is_a_value_the_caller_keeps_and_gives_back() {
        let mut first = contec(None);
        assert_eq!(first.checkpoint_moved(), None);
        let asked = download_one_session(&mut first);
        let checkpoint = first
            .checkpoint_moved()
            .expect("the download moved the checkpoint");
        assert_eq!(checkpoint, "stored_sessions=2014-08-18T02:38:18/14");
        first.checkpoint_kept(checkpoint.clone());
        assert_eq!(first.checkpoint_moved(), None);

        let mut resumed = contec(Some(&checkpoint));
        let asked_again = download_one_session(&mut resumed);
        assert_eq!(resumed.checkpoint_moved(), None);
        // Count, date, time, session start, length, download, live; resumed: no download.
        assert_eq!(asked.join(" "), "a7 a2 a3 a5 a4 a6 a1");
        assert_eq!(asked_again.join(" "), "a7 a2 a3 a5 a4 a1");
    }

    /// Random bytes (what a device at another line speed, or line noise, looks like) fed through each serial
    /// protocol's decoder and spot filter must never produce a record for the backend.
    #[test]
    fn ten_megabytes_of_random_bytes_never_become_a_reading() {
        let megabytes: usize = std::env::var("VITALSD_NOISE_MB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10);
        let protocols = Protocol::ALL
            .into_iter()
            .filter(|p| p.transport() == Transport::Serial || *p == Protocol::Berrymed);
        for (round, protocol) in protocols.enumerate() {
            let mut decoding = Decoding::new(
                DeviceSettings {
                    hub_id: "hub-test".into(),
                    formats: Formats::default(),
                    device: DeviceInfo {
                        id: "serial:noise".into(),
                        transport: crate::decode::Transport::Serial,
                        protocol: protocol.name(),
                        identity: Default::default(),
                        specialization: None,
                    },
                    protocol,
                    spot: SpotRule::default(),
                    time_zone: &chrono::Local,
                },
                None,
            );
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (round as u64 + 1);
            let mut at: chrono::DateTime<chrono::Utc> = "2026-11-22T10:00:00Z".parse().unwrap();
            let mut chunk = vec![0u8; 4096];
            let mut records = 0;
            for _ in 0..(megabytes * 1024 * 1024 / chunk.len()) {
                for byte in &mut chunk {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    *byte = seed as u8;
                }
                // Chunks arrive about as fast as a 115200-baud line delivers them.
                at += chrono::TimeDelta::milliseconds(350);
                let now = test_now(at);
                records += decoding.feed(&chunk, &now).len();
                // The dialog runs too, so noise that looks like answers may move it (a Contec download).
                records += decoding.poll(&now).0.len();
            }
            decoding.closed();
            assert_eq!(records, 0, "{} turned noise into readings", protocol.name());
        }
    }
}

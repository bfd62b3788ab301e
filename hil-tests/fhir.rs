//! The FHIR output is valid FHIR R4 by an independent library (the Python `fhir.resources` R4B models,
//! installed from `schema/check/fhir/requirements.txt` with pinned hashes), and follows the rules of the
//! PHD implementation guide this hub relies on, which those models do not check.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::daemon::BINARY;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A virtual environment with the pinned validator, made once per build directory.
fn validator() -> PathBuf {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _installing = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let venv = Path::new(REPO).join("target/fhir-validator");
    let python = venv.join("bin/python");
    if !python.exists() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 -m venv (.ci/run installs python3-venv)");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let requirements = Path::new(REPO).join("schema/check/fhir/requirements.txt");
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--require-hashes", "-r"])
            .arg(&requirements)
            .status()
            .expect("pip install");
        assert!(
            installed.success(),
            "pip install -r {} failed",
            requirements.display()
        );
    }
    python
}

/// Runs the validator on `bundles`; the output and whether it accepted them all.
fn validate(bundles: &[serde_json::Value]) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new(validator())
        .arg(Path::new(REPO).join("schema/check/fhir/validate.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the validator");
    let input = serde_json::to_vec(bundles).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Both formats, with the subject the FHIR output requires.
pub const BOTH_FORMATS: &str = "[output]\nformats = [\"reading.v1\", \"fhir\"]\n\n[fhir]\n\
                                subject_system = \"urn:example:patients\"\nsubject_value = \"p-0001\"\n";

/// The Bundles `vitalsd decode` prints, with both national code sets and a subject.
fn decode_fhir(protocol: &str, hex: &str) -> Vec<serde_json::Value> {
    let output = Command::new(BINARY)
        .args([
            "decode",
            "--format",
            "fhir",
            "--code-set",
            "dk",
            "--code-set",
            "no",
            "--subject",
            "urn:example:patients|p-0001",
            protocol,
            hex,
        ])
        .env("TZ", "UTC")
        .output()
        .expect("vitalsd decode");
    assert!(
        output.status.success(),
        "{protocol} {hex}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one Bundle per line"))
        .collect()
}

/// Captured bytes of every protocol that makes readings (all but the cuff's progress), from the decoders'
/// table tests and the protocol reference's vectors.
const CAPTURES: &[(&str, &str)] = &[
    ("nonin-df13", "00 02 00 0D 00 0E 20 24 03 15 10 20 30 00 02 00 00 48 00 61 67 03"),
    ("nonin-df8", "80486100 81025f00 837f7f00"),
    ("nonin-df7", "83 01 2C 00 B0 82 02 58 48 24 82 03 84 61 6A 82 04 B0 00 36 82 05 DC 00 63 82 07 08 00 91 82 08 34 00 BE 82 09 60 00 EB 82 0A 8C 61 79 82 0B B8 61 A6 82 0C E4 61 D3 82 0E 10 00 A0 82 0F 3C 00 CD 82 10 68 00 FA 82 11 94 48 6F 82 12 C0 61 B5 82 13 EC 61 E2 82 15 18 00 AF 82 16 44 00 DC 82 17 70 00 09 82 18 9C 48 7E 82 19 C8 00 63 82 1A F4 48 D8 82 1C 20 00 BE 82 1D 4C 00 EB"),
    ("nonin-df2", "01 83 2C 00 B0 01 82 58 48 23 01 82 84 61 68 01 82 B0 00 33 01 82 DC 00 5F 01 82 08 00 8B 01 82 34 00 B7 01 82 60 00 E3 01 82 8C 61 70 01 82 B8 61 9C 01 82 E4 61 C8 01 82 10 00 93 01 82 3C 00 BF 01 82 68 00 EB 01 82 94 48 5F 01 82 C0 61 A4 01 82 EC 61 D0 01 82 18 00 9B 01 82 44 00 C7 01 82 70 00 F3 01 82 9C 48 67 01 82 C8 00 4B 01 82 F4 48 BF 01 82 20 00 A3 01 82 4C 00 CF"),
    ("blood-pressure-measurement", "1E 8A 00 58 00 78 00 00 00 04 11 14 29 3B 3C 00 01 27 00"),
    ("plx-spot-check", "00 62 00 48 00"),
    ("plx-continuous", "1C 5F 00 5A 00 20 00 00 00 00 57 F0"),
    ("weight-measurement", "0E 80 3E E8 07 03 0F 07 1E 00 01 F7 00 08 07"),
    ("body-composition-measurement", "1E 10 E1 00 E8 07 03 0F 07 1E 00 01 64 19 60 01 / 00 1E FF FF 03 14 80 3E 08 07"),
    ("glucose-measurement", "03 05 00 E8 07 03 0F 07 1E 00 00 00 5F B0 11"),
    ("glucose-measurement", "06 06 00 E8 07 03 0F 08 00 00 35 C0 11"),
    ("temperature-measurement", "06 B0 0E 00 FE DC 07 0C 05 0B 32 1B 04"),
    ("xiaomi-scale", "22 9E 43 E5 07 04 0B 10 13 01"),
    ("xiaomi-body-composition-scale", "02 26 B2 07 05 04 0F 02 01 AC 01 86 42"),
    ("berrymed", "C4 32 05 48 62"),
    ("jumper-oximeter", "81 38 63 44"),
    ("contec-cms50-legacy", "C4 32 05 48 62"),
    ("contec-cms50", "01 80 85 B3 96 C8 E2 FF FF"),
    // 09/21/08 09:56:12 SpO2=097 PR=069 PI=04.69 EXC=800:SET
    ("masimo-ascii", "30392F32312F30382030393A35363A31322053704F323D3039372050523D3036392050493D30342E3639204558433D3830303A5345540D0A"),
    // {0,16,~0,1,~1,1,~2,1,MO,"WB-3000",Hm,170.0,Wk,65.4,MI,22.6,CS,73
    ("tanita", "7B30 2C31 362C 7E30 2C31 2C7E 312C 312C 7E32 2C31 2C4D 4F2C 2257 422D 3330 3030 222C 486D 2C31 3730 2E30 2C57 6B2C 3635 2E34 2C4D 492C 3232 2E36 2C43 532C 3733 0D0A"),
];

#[test]
fn every_protocol_that_makes_readings_has_a_capture_here() {
    for protocol in vitalsd::decode::Protocol::ALL {
        let name = protocol.name();
        if name == "intermediate-cuff-pressure" {
            continue; // The cuff's progress is never forwarded.
        }
        assert!(
            CAPTURES.iter().any(|(captured, _)| *captured == name),
            "no capture of {name}: every decoder's readings must also be checked as FHIR"
        );
    }
}

#[test]
fn every_bundle_is_valid_fhir_r4_by_an_independent_library() {
    let bundles: Vec<serde_json::Value> = CAPTURES
        .iter()
        .flat_map(|(protocol, hex)| decode_fhir(protocol, hex))
        .collect();
    assert!(bundles.len() >= CAPTURES.len());
    let (valid, report) = validate(&bundles);
    assert!(valid, "{report}");
}

#[test]
fn the_validator_refuses_what_fhir_does_not_define() {
    let mut bundle = decode_fhir(CAPTURES[0].0, CAPTURES[0].1).remove(0);
    bundle["entry"][2]["resource"]["valueQuantity"]["value"] = "ninety-seven".into();
    let (valid, report) = validate(&[bundle]);
    assert!(!valid, "{report}");
    assert!(report.contains("not a valid decimal"), "{report}");
}

#[test]
fn observations_follow_the_phd_profiles() {
    for (protocol, hex) in CAPTURES {
        for bundle in decode_fhir(protocol, hex) {
            let entries = bundle["entry"].as_array().unwrap();
            let gateway = &entries[0];
            let sensor = &entries[1];
            assert_eq!(gateway["resource"]["type"]["coding"][0]["code"], "531981");
            assert_eq!(sensor["resource"]["type"]["coding"][0]["code"], "65573");
            // PhdDevice: an identifier, and the specialisation with its version.
            assert!(sensor["resource"]["identifier"][0]["value"].is_string());
            assert!(
                sensor["resource"]["specialization"][0]["systemType"]["coding"][0]["code"]
                    .is_string(),
                "{protocol}"
            );
            assert_eq!(sensor["resource"]["specialization"][0]["version"], "1");
            // Required elements the device does not give are marked unknown, never made up.
            for key in ["manufacturer", "modelNumber"] {
                let unknown = &sensor["resource"][format!("_{key}")]["extension"][0]["valueCode"];
                assert!(
                    sensor["resource"][key].is_string() || unknown == "unknown",
                    "{protocol} {key}"
                );
            }
            assert!(
                sensor["resource"]["version"][0]["type"].is_object(),
                "{protocol}"
            );
            assert_eq!(
                gateway["resource"]["specialization"]
                    .as_array()
                    .unwrap()
                    .len(),
                6
            );
            for entry in &entries[2..] {
                let observation = &entry["resource"];
                assert_eq!(observation["resourceType"], "Observation", "{protocol}");
                // STU 2: the gateway extension is required, and the sensor is the device.
                assert_eq!(
                    observation["extension"][0]["valueReference"]["reference"],
                    gateway["fullUrl"]
                );
                assert_eq!(observation["device"]["reference"], sensor["fullUrl"]);
                assert_eq!(
                    observation["code"]["coding"][0]["system"],
                    "urn:iso:std:iso:11073:10101"
                );
                assert_eq!(
                    observation["category"][0]["coding"][0]["code"], "phd",
                    "{protocol}"
                );
                assert_eq!(
                    observation["subject"]["identifier"]["value"], "p-0001",
                    "{protocol}"
                );
                let profile = observation["meta"]["profile"][0].as_str().unwrap();
                assert!(
                    profile.starts_with("http://hl7.org/fhir/uv/phd/StructureDefinition/Phd"),
                    "{profile}"
                );
                // A value, or the reason there is none, or components that carry them.
                assert!(
                    observation["valueQuantity"].is_object()
                        || observation["dataAbsentReason"].is_object()
                        || observation["component"].is_array(),
                    "{protocol}: {observation}"
                );
                let identifier = &observation["identifier"][0];
                assert_eq!(
                    identifier["system"],
                    "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdBaseObservation"
                );
                let condition = format!(
                    "identifier={}|{}",
                    identifier["system"].as_str().unwrap(),
                    identifier["value"].as_str().unwrap()
                );
                assert_eq!(entry["request"]["ifNoneExist"], condition.as_str());
            }
        }
    }
}

/// Bundles by reading id, as they arrived on the FHIR topics.
fn bundles(
    subscriber: &crate::support::subscriber::Subscriber,
) -> Vec<(String, serde_json::Value)> {
    subscriber
        .messages()
        .into_iter()
        .filter(|message| message.topic.contains("/fhir/"))
        .map(|message| (message.topic.clone(), message.json()))
        .collect()
}

#[test]
fn with_both_formats_every_reading_arrives_once_on_each_topic_across_a_broker_outage() {
    use crate::support::broker::Broker;
    use crate::support::daemon::DaemonWorld;
    use crate::support::nonin::SpotCheck;
    use crate::support::subscriber::Subscriber;
    use std::collections::BTreeMap;
    use std::time::Duration;

    let mut broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut port = world.with_nonin_9560(&broker.url());
    world.append_config(
        "[output]\nformats = [\"reading.v1\", \"fhir\"]\n\n[fhir]\nsubject_system = \"urn:example:patients\"\n\
         subject_value = \"p-0001\"\ncode_sets = [\"dk\"]\n",
    );
    let _daemon = world.start();
    for n in 0..5 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    let both_arrived = |count: usize| {
        crate::support::wait_until(Duration::from_secs(30), || {
            subscriber.unique_reading_count() >= count && bundles(&subscriber).len() >= count
        })
    };
    assert!(both_arrived(5), "log:\n{}", world.log());
    // The hub has the broker's acknowledgements too: a record still awaiting its PUBACK when the broker
    // stops is rightly sent again (at least once), which is not what this test is about.
    assert!(crate::support::wait_until(Duration::from_secs(10), || {
        world.status()["outbox"]["pending"] == 0
    }));
    // Stopped, not killed, so the subscriber's session is saved: what follows waits in the hub's outbox.
    broker.stop();
    for n in 5..15 {
        port.write(&SpotCheck::numbered(n).frame());
    }
    // Each reading is two records, one per format.
    let queued = crate::support::wait_until(Duration::from_secs(20), || {
        world.status()["outbox"]["pending"] == 20
    });
    assert!(queued, "{}\n{}", world.status(), world.log());
    broker.restart();
    assert!(both_arrived(15), "log:\n{}", world.log());
    assert!(crate::support::wait_until(Duration::from_secs(10), || {
        world.status()["outbox"]["pending"] == 0
    }));
    assert_eq!(world.status()["outbox"]["delivered_total"], 30);

    let readings = subscriber.reading_counts();
    let mut bundle_counts: BTreeMap<String, usize> = BTreeMap::new();
    let received = bundles(&subscriber);
    for (topic, bundle) in &received {
        assert_eq!(topic, "vitalsd/v1/hub-test/fhir/pulse_oximetry");
        *bundle_counts
            .entry(bundle["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(readings.len(), 15);
    assert!(readings.values().all(|&count| count == 1), "{readings:?}");
    assert!(
        bundle_counts.values().all(|&count| count == 1),
        "{bundle_counts:?}"
    );
    // One Bundle per reading, named by the reading's id, with the reading's values.
    assert_eq!(
        bundle_counts.keys().collect::<Vec<_>>(),
        readings.keys().collect::<Vec<_>>()
    );
    let by_id: BTreeMap<String, serde_json::Value> = subscriber
        .readings()
        .into_iter()
        .map(|reading| (reading["id"].as_str().unwrap().to_string(), reading))
        .collect();
    for (_, bundle) in &received {
        let reading = &by_id[bundle["id"].as_str().unwrap()];
        let observation = &bundle["entry"][2]["resource"];
        assert_eq!(
            observation["valueQuantity"]["value"],
            reading["values"][0]["value"]
        );
        assert_eq!(observation["effectiveDateTime"], reading["measured_at"]);
        assert_eq!(observation["subject"]["identifier"]["value"], "p-0001");
        let codes: Vec<&str> = observation["code"]["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|coding| coding["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, ["150456", "2708-6", "NPU03011"]);
    }
    let bundles: Vec<serde_json::Value> = received.into_iter().map(|(_, bundle)| bundle).collect();
    let envelope: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(REPO).join("schema/fhir.r4.bundle.schema.json"))
            .unwrap(),
    )
    .unwrap();
    let envelope = jsonschema::validator_for(&envelope).unwrap();
    for bundle in &bundles {
        assert!(envelope.is_valid(bundle), "{bundle}");
    }
    let (valid, report) = validate(&bundles);
    assert!(valid, "{report}");
}

/// HL7 Denmark's ContinuaBundleWithDevice example (DK Core, `Bundle-ContinuaBundleWithDevice`): Poul's A&D
/// UA-651BLE cuff, 118/87/99 mmHg and pulse 93 at 2023-02-23T10:24:08+01:00 with an irregular pulse, its
/// clock read 9 s behind the gateway's. The same measurement as the cuff's bytes, through the daemon's own
/// pipeline, beside what the example carries. Where the example (written to PHD IG STU 1) and this hub (STU
/// 2) differ by design, the row says so.
#[test]
fn the_danish_continua_example_and_the_same_cuff_bytes_carry_the_same_codes_values_and_identity() {
    use vitalsd::clock::HubNow;
    use vitalsd::model::clocks::{DeviceClockCheck, DeviceDateTime, HubClock};
    use vitalsd::model::fhir::{FhirOptions, Subject};
    use vitalsd::model::payload::{DeviceIdentity, DeviceInfo};
    use vitalsd::model::reading::BootInstant;
    use vitalsd::pipeline::{Decoding, DeviceSettings, Formats};

    let copenhagen: &'static chrono::FixedOffset =
        Box::leak(Box::new(chrono::FixedOffset::east_opt(3600).unwrap()));
    let options = FhirOptions {
        subject: Some(Subject {
            system: "urn:oid:1.2.208.176.1.2".into(),
            value: "3001749995".into(),
        }),
        code_sets: vec![vitalsd::model::fhir_codes::find("dk").unwrap()],
        ..FhirOptions::default()
    };
    let settings = DeviceSettings {
        hub_id: "telma".into(),
        formats: Formats {
            reading_v1: false,
            fhir: Some(std::sync::Arc::new(options)),
        },
        // What the cuff's Device Information service and its advertisement say (the example's strings).
        device: DeviceInfo {
            id: "ble:C4:F3:12:53:F2:C9".into(),
            transport: vitalsd::decode::Transport::Ble,
            protocol: "blood-pressure-measurement",
            identity: DeviceIdentity {
                manufacturer: Some("A&D Medical ".into()),
                model: Some("UA-651BLE ".into()),
                serial_number: Some("5181000124".into()),
                system_id: Some("C4-F3-12-FF-FE-53-F2-C9".into()),
                address: Some("C4:F3:12:53:F2:C9".into()),
                firmware: Some("BLP009_02_005 ".into()),
                hardware: Some("0.00".into()),
                software: Some("0.00".into()),
            },
            specialization: Some(528_391),
        },
        protocol: vitalsd::decode::Protocol::BloodPressureMeasurement,
        spot: Default::default(),
        time_zone: copenhagen,
    };
    let now = HubNow {
        wall: "2023-02-23T09:24:34.467Z".parse().unwrap(),
        boot: BootInstant {
            boot_id: "boot".into(),
            since_boot: std::time::Duration::from_secs(600),
        },
        clock: HubClock::Synchronized,
    };
    let mut decoding = Decoding::new(settings, None);
    decoding.device_clock_read(Some(DeviceClockCheck {
        device_time: DeviceDateTime::Known("2023-02-23T10:24:25".parse().unwrap()),
        hub_time: now.wall,
        hub_local: "2023-02-23T10:24:34.467".parse().unwrap(),
        hub_clock: HubClock::Synchronized,
        set: false,
    }));
    // 0x2A35: flags 16 (time stamp, pulse rate, measurement status; mmHg), 118, 87, 99 as SFLOAT,
    // 2023-02-23 10:24:08, pulse 93, status 0004 (irregular pulse).
    let bytes =
        hex::decode("16 7600 5700 6300 E707 02 17 0A 18 08 5D00 0400".replace(' ', "")).unwrap();
    let records = decoding.feed(&bytes, &now);
    assert_eq!(records.len(), 1, "one reading");
    let record = &records[0].0[0];
    assert!(record.key.ends_with("/fhir"));
    let bundle: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    let (valid, report) = validate(std::slice::from_ref(&bundle));
    assert!(valid, "{report}");

    let entries = bundle["entry"].as_array().unwrap();
    let resource = |profile: &str| {
        entries
            .iter()
            .map(|entry| &entry["resource"])
            .find(|r| r["meta"]["profile"][0].as_str().unwrap().ends_with(profile))
            .unwrap_or_else(|| panic!("no {profile} in {bundle:#}"))
    };
    let codes = |code: &serde_json::Value| -> String {
        let mut codes: Vec<&str> = code["coding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["code"].as_str().unwrap())
            .collect();
        codes.sort_unstable();
        codes.join(" ")
    };
    let device = resource("/PhdDevice");
    let pressure = resource("/PhdCompoundNumericObservation");
    let pulse = resource("/PhdNumericObservation");
    let status = resource("/PhdBitsEnumerationObservation");
    let coincident = resource("/PhdCoincidentTimeStampObservation");
    // The same instant, whatever offset it is written with.
    let instant = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&chrono::Utc)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
    };
    let text = |value: &serde_json::Value| value.as_str().unwrap().to_string();
    let quantity = |part: &serde_json::Value| {
        format!(
            "{} = {} {}",
            codes(&part["code"]),
            part["valueQuantity"]["value"],
            text(&part["valueQuantity"]["code"])
        )
    };
    let pressure_url = &entries.iter().find(|e| e["resource"] == *pressure).unwrap()["fullUrl"];
    // (what, the example as its FSH writes it, this hub's Bundle, and why they differ where they may).
    // Codes are listed in ascending order on both sides: the example puts LOINC first, the hub MDC.
    let rows: Vec<(&str, String, String, Option<&str>)> = vec![
        ("device SYSID", "C4-F3-12-FF-FE-53-F2-C9".into(), text(&device["identifier"][0]["value"]), None),
        ("device BTMAC", "C4-F3-12-53-F2-C9".into(), text(&device["identifier"][1]["value"]), None),
        ("device manufacturer", "A&D Medical ".into(), text(&device["manufacturer"]), None),
        ("device model", "UA-651BLE ".into(), text(&device["modelNumber"]), None),
        ("device serial", "5181000124".into(), text(&device["serialNumber"]), None),
        ("device type", "65573".into(), codes(&device["type"]), None),
        ("device specialization", "528391".into(), codes(&device["specialization"][0]["systemType"]), None),
        ("device firmware", "531976 BLP009_02_005 ".into(), version(device, "531976"), None),
        ("device hardware", "531974 0.00".into(), version(device, "531974"), None),
        ("device software", "531975 0.00".into(), version(device, "531975"), None),
        ("device time sync", "68220 532224".into(), format!("{} {}", codes(&device["property"][0]["type"]), codes(&device["property"][0]["valueCode"][0])), None),
        ("pressure code", "150020 85354-9 ZZ3170".into(), codes(&pressure["code"]), Some("SKS ZZ3170 left out: DK Core advises against SKS procedure codes as observation codes")),
        ("pressure time", instant("2023-02-23T10:24:08+01:00"), instant(&text(&pressure["effectiveDateTime"])), None),
        ("systolic", "150021 8480-6 MCS88019 = 118 mm[Hg]".into(), quantity(&pressure["component"][0]), None),
        ("diastolic", "150022 8462-4 MCS88020 = 87 mm[Hg]".into(), quantity(&pressure["component"][1]), None),
        ("mean", "150023 = 99 mm[Hg]".into(), quantity(&pressure["component"][2]), Some("the hub adds the mean's LOINC code, 8478-0")),
        ("pulse", "149546 8867-4 NPU21692 = 93 /min".into(), quantity(pulse), None),
        ("status", "8410608: 8410608.2 = Y".into(), format!("{}: {} = {}", codes(&status["code"]), codes(&status["component"][0]["code"]), codes(&status["component"][0]["valueCodeableConcept"])), None),
        ("status derived from", "the pressure".into(), if status["derivedFrom"][0]["reference"] == *pressure_url { "the pressure".into() } else { status["derivedFrom"].to_string() }, None),
        ("coincident code", "67975".into(), codes(&coincident["code"]), None),
        ("coincident hub time", instant("2023-02-23T10:24:34.467+01:00"), instant(&text(&coincident["effectiveDateTime"])), None),
        ("coincident device time", "2023-02-23T10:24:25+01:00".into(), text(&coincident["valueDateTime"]), None),
        ("subject", "urn:oid:1.2.208.176.1.2|3001749995".into(), format!("{}|{}", text(&pressure["subject"]["identifier"]["system"]), text(&pressure["subject"]["identifier"]["value"])), None),
        ("pressure identifier", "C4F312FFFE53F2C9-3001749995-urn:oid:1.2.208.176.1.2-150020-118-266016-87-266016-99-266016-20230223T102408.00".into(), text(&pressure["identifier"][0]["value"]), Some("STU 1 appends value-unit pairs and the time as HL7 DTM; STU 2 the device's time in seconds since 2000")),
    ];
    let table: String = rows
        .iter()
        .map(|(what, example, ours, why)| {
            let why = why.map_or(String::new(), |why| format!("   ({why})"));
            format!("{what:<24} | {example:<60} | {ours}{why}\n")
        })
        .collect();
    println!("{table}");
    let alike: Vec<&str> = rows
        .iter()
        .filter(|(_, example, ours, _)| example == ours)
        .map(|(what, ..)| *what)
        .collect();
    let differing: Vec<&str> = rows
        .iter()
        .filter(|(_, example, ours, _)| example != ours)
        .map(|(what, ..)| *what)
        .collect();
    let expected_to_differ: Vec<&str> = rows
        .iter()
        .filter(|(.., why)| why.is_some())
        .map(|(what, ..)| *what)
        .collect();
    // Every row is the example's own, except those that name why they differ, and those do differ.
    assert_eq!(differing, expected_to_differ, "\n{table}");
    assert_eq!(alike.len() + differing.len(), rows.len());
    // The differences are exactly the ones named.
    let ours = |what: &str| rows.iter().find(|row| row.0 == what).unwrap().2.clone();
    assert_eq!(ours("pressure code"), "150020 85354-9");
    assert_eq!(ours("mean"), "150023 8478-0 = 99 mm[Hg]");
    assert_eq!(
        ours("pressure identifier"),
        "C4F312FFFE53F2C9-3001749995-urn:oid:1.2.208.176.1.2-150020-730463048"
    );
}

/// A PhdDevice's version of MDC type `code`, as "code value".
fn version(device: &serde_json::Value, code: &str) -> String {
    device["version"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["type"]["coding"][0]["code"] == code)
        .map(|v| format!("{code} {}", v["value"].as_str().unwrap()))
        .unwrap_or_default()
}

/// Every reading of every decoder's table tests, as the Bundle the hub would publish, by the independent
/// library: the library's own test binary prints them (`decode::test_support::check_fhir`), since those
/// cases live beside the decoders. `cargo test` builds that binary before it runs this suite.
#[test]
fn every_decoder_table_case_makes_a_bundle_the_independent_library_accepts() {
    let deps = Path::new(BINARY).parent().unwrap().join("deps");
    let is_library_tests = |path: &Path| {
        let name = path.file_name().unwrap().to_string_lossy();
        name.strip_prefix("vitalsd-")
            .is_some_and(|hash| hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()))
    };
    // The daemon's own binary and its unit tests have the same name pattern; the library's test binary is
    // the one that lists decoder tests. The newest, if earlier builds left others.
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&deps)
        .unwrap()
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| is_library_tests(path))
        .collect();
    candidates.sort_by_key(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok());
    // The binary's own unit tests (`src/main.rs`) list no decoder test, and the binary itself lists none.
    let lists_decoder_tests = |path: &PathBuf| {
        Command::new(path)
            .args(["--list", "--format", "terse", "decode::"])
            .output()
            .is_ok_and(|output| {
                output.status.success()
                    && String::from_utf8_lossy(&output.stdout)
                        .lines()
                        .any(|line| line.starts_with("decode::") && line.ends_with(": test"))
            })
    };
    let binary = candidates
        .into_iter()
        .rev()
        .find(lists_decoder_tests)
        .unwrap_or_else(|| {
            panic!(
                "no library test binary in {}: run `cargo test`, which builds it",
                deps.display()
            )
        });
    let output = Command::new(&binary)
        .args(["decode::", "--nocapture", "--test-threads", "2"])
        .env("VITALSD_FHIR_DUMP", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}: {}",
        binary.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let bundles: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.strip_prefix("FHIR-BUNDLE "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect();
    // Hundreds of cases; a handful would mean the printing or the filter broke.
    assert!(bundles.len() > 500, "{} Bundles", bundles.len());
    let (valid, report) = validate(&bundles);
    assert!(valid, "{report}");
}

//! The FHIR R4 wire format: one transaction Bundle per reading, shaped by the HL7 Personal Health Device
//! implementation guide STU 2 (PhdNumericObservation, PhdCompoundNumericObservation,
//! PhdBitsEnumerationObservation, PhdCoincidentTimeStampObservation, PhdDevice, PhgDevice).
//!
//! Pure, and a function of the published `vitalsd.reading.v1` document only: a backend that has the JSON
//! reading can compute the same Bundle, and a reading held for a trusted hub clock gets its Bundle when its
//! times are final. Each resource is created only if one with its identifier does not exist yet
//! (`ifNoneExist`), so two deliveries of one reading, or two hubs reading one device's record, store it once.

use std::collections::BTreeMap;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeDelta, Utc};
use serde::Deserialize;
use serde_json::{json, Value as Json};

use crate::model::fhir_codes::CodeSet;
use crate::model::payload::DeviceIdentity;
use crate::model::reading::Special;

pub const MDC: &str = "urn:iso:std:iso:11073:10101";
pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
/// The outbox format number of a FHIR record: its payload is the Bundle, or, while the record is held for
/// a trusted hub clock, the reading's `vitalsd.reading.v1` document the Bundle is made from on release.
pub const OUTBOX_FORMAT: u32 = 2;
/// The name in a Bundle message's MQTT 5 user property `schema`.
pub const SCHEMA_NAME: &str = "fhir.r4.bundle";
/// The MQTT 5 content type of a Bundle.
pub const CONTENT_TYPE: &str = "application/fhir+json; fhirVersion=4.0";
const PHD: &str = "http://hl7.org/fhir/uv/phd/StructureDefinition";
const FHIR_PROFILES: &str = "http://hl7.org/fhir/StructureDefinition";
const GATEWAY_DEVICE: &str = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice";
const COINCIDENT_REFERENCE: &str =
    "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference";
const CONTINUA_IDENTIFIERS: &str =
    "http://terminology.hl7.org/CodeSystem/ContinuaDeviceIdentifiers";
const SYSID_SYSTEM: &str = "urn:oid:1.2.840.10004.1.1.1.0.0.1.0.0.1.2680";
const BTMAC_SYSTEM: &str = "http://hl7.org/fhir/sid/eui-48/bluetooth";
const URI_SYSTEM: &str = "urn:ietf:rfc:3986";
const DATA_ABSENT: &str = "http://terminology.hl7.org/CodeSystem/data-absent-reason";
const DATA_ABSENT_EXTENSION: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const CATEGORIES: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const PHD_CATEGORIES: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/PhdObservationCategories";
const ASN1_TO_HL7: &str = "http://hl7.org/fhir/uv/phd/CodeSystem/ASN1ToHL7";
const YES_NO: &str = "http://terminology.hl7.org/CodeSystem/v2-0136";
const MEASUREMENT_STATUS: &str = "http://hl7.org/fhir/uv/pocd/CodeSystem/measurement-status";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// MDC_MOC_VMS_MDS_AHD: an application hosting device, the gateway.
const GATEWAY_TYPE: u32 = 531_981;
/// MDC_MOC_VMS_MDS_SIMP: a simple medical device, the sensor.
const SENSOR_TYPE: u32 = 65_573;
/// MDC_PRESS_BLD_NONINV and the LOINC blood pressure panel: the compound of systolic, diastolic and mean.
const BLOOD_PRESSURE: (u32, &str) = (150_020, "85354-9");
/// The status bit fields a PhdBitsEnumerationObservation reports, per reading kind: the field's MDC code,
/// then each reading flag that is one of its bits, with the bit's ASN1ToHL7 code `{mdc}.{bit}` and name.
type StatusBits = (
    &'static str,
    u32,
    &'static [(&'static str, u32, &'static str)],
);
const STATUS_BITS: [StatusBits; 3] = [
    // MDC_BLOOD_PRESSURE_MEASUREMENT_STATUS.
    (
        "blood_pressure",
        8_410_608,
        &[
            ("body_movement", 0, "body-movement"),
            ("cuff_loose", 1, "cuff-too-loose"),
            ("irregular_pulse", 2, "irregular-pulse"),
            ("pulse_rate_above_range", 3, "pulse-over-range-limit"),
            ("pulse_rate_below_range", 4, "pulse-under-range-limit"),
            ("improper_position", 5, "improper-body-position"),
        ],
    ),
    // MDC_PULS_OXIM_DEV_STATUS: the PLX Device and Sensor Status, and the Nonin bits of the same meaning.
    (
        "pulse_oximetry",
        150_604,
        &[
            ("sensor_disconnected", 0, "sensor-disconnected"),
            ("sensor_malfunctioning", 1, "sensor-malfunction"),
            ("sensor_displaced", 2, "sensor-displaced"),
            ("unknown_sensor", 3, "sensor-unsupported"),
            ("sensor_unconnected", 4, "sensor-off"),
            ("sensor_interference", 5, "sensor-interference"),
            ("signal_analysis_ongoing", 6, "signal-searching"),
            ("questionable_pulse", 7, "signal-pulse-questionable"),
            ("nonpulsatile_signal", 8, "signal-non-pulsatile"),
            ("erratic_signal", 9, "signal-erratic"),
            ("low_perfusion", 10, "signal-low-perfusion"),
            ("poor_signal", 11, "signal-poor"),
            ("inadequate_signal", 12, "signal-inadequate"),
            (
                "signal_processing_irregularity",
                13,
                "signal-processing-irregularity",
            ),
            ("equipment_malfunction", 14, "device-equipment-malfunction"),
            ("extended_display_update", 15, "device-extended-update"),
        ],
    ),
    // MDC_GLU_METER_DEV_STATUS: the Glucose Sensor Status Annunciation.
    (
        "blood_glucose",
        8_417_752,
        &[
            ("low_battery", 0, "device-battery-low"),
            ("sensor_malfunction", 1, "sensor-malfunction"),
            (
                "sample_size_insufficient",
                2,
                "sensor-sample-size-insufficient",
            ),
            ("strip_insertion_error", 3, "sensor-strip-insertion"),
            ("strip_type_incorrect", 4, "sensor-strip-type-incorrect"),
            ("result_above_range", 5, "sensor-result-too-high"),
            ("result_below_range", 6, "sensor-result-too-low"),
            ("sensor_temperature_high", 7, "sensor-temp-too-high"),
            ("sensor_temperature_low", 8, "sensor-temp-too-low"),
            ("read_interrupted", 9, "sensor-read-interrupt"),
            ("device_fault", 10, "device-gen-fault"),
        ],
    ),
];
/// MDC_ATTR_TIME_ABS: the device keeps local wall time without an offset; MDC_TIME_SYNC_PROTOCOL and its
/// values for the device (none: the hub sets it at most) and the hub (NTP).
const TIME_ABSOLUTE: u32 = 67_975;
const TIME_SYNC_PROTOCOL: u32 = 68_220;
const TIME_SYNC_NONE: u32 = 532_224;
const TIME_SYNC_NTPV4: u32 = 532_226;
/// The MDC codes of the revisions in `Device.version`: firmware, hardware, software.
const FIRMWARE: u32 = 531_976;
const HARDWARE: u32 = 531_974;
const SOFTWARE: u32 = 531_975;
/// The device specialisations the hub reads (`catalog::Specialization`, whose test keeps the two equal),
/// which the PhgDevice lists; a number here because the model sits below the catalogue.
pub const SPECIALIZATIONS: [u32; 6] = [528_388, 528_391, 528_392, 528_399, 528_401, 528_404];
/// MDC_ATTR_SUPPLEMENTAL_TYPES: the component that carries a supplemental type such as MDC_MODALITY_SPOT.
const SUPPLEMENTAL_TYPES: u32 = 68_193;

/// Who the readings are about, as the backend knows them: the hub never knows the patient, only the
/// identifier it is configured with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Subject {
    pub system: String,
    pub value: String,
}

/// What the FHIR output is configured with (`[fhir]`).
#[derive(Debug, Clone, Default)]
pub struct FhirOptions {
    /// The subject of every reading, unless its device has its own.
    pub subject: Option<Subject>,
    /// Subjects by device id, or by device id and user slot (`ble:…/user/2`) for a cuff or scale several
    /// people use, for a hub shared by two patients.
    pub device_subjects: BTreeMap<String, Subject>,
    /// National codings added beside the MDC and LOINC ones, in order.
    pub code_sets: Vec<&'static CodeSet>,
}

impl FhirOptions {
    /// The user slot's subject, else the device's, else the hub's.
    fn subject(&self, device_id: &str, user_id: Option<u8>) -> Option<&Subject> {
        let slot = user_id.and_then(|user| {
            self.device_subjects
                .get(&format!("{device_id}/user/{user}"))
        });
        slot.or_else(|| self.device_subjects.get(device_id))
            .or(self.subject.as_ref())
    }
}

/// The parts of a `vitalsd.reading.v1` document the Bundle is made from. Unknown keys are ignored: the
/// document may grow within v1.
#[derive(Debug, Clone, Deserialize)]
pub struct ReadingDocument {
    pub id: String,
    pub hub_id: String,
    pub device: DeviceDocument,
    pub kind: String,
    pub measured_at: DateTime<FixedOffset>,
    pub time_source: String,
    pub values: Vec<ValueDocument>,
    #[serde(default)]
    pub flags: Vec<String>,
    pub device_time: Option<NaiveDateTime>,
    pub user_id: Option<u8>,
    pub hub_clock: String,
    pub device_clock: Option<DeviceClockDocument>,
    #[serde(default)]
    pub supplemental: Vec<SupplementalDocument>,
    /// The subject decided when a held reading was received ([`held_document`]); never in a published
    /// document.
    #[serde(default)]
    pub held_for: Option<Subject>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceDocument {
    pub id: String,
    #[serde(flatten)]
    pub identity: DeviceIdentity,
    pub specialization: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ValueDocument {
    pub value: Option<serde_json::Number>,
    pub unit: String,
    pub mdc: Option<u32>,
    pub loinc: Option<String>,
    pub special: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeviceClockDocument {
    pub offset_s: i64,
    pub read_at: DateTime<Utc>,
    pub device_time: Option<NaiveDateTime>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SupplementalDocument {
    pub mdc: u32,
}

/// A stored reading that is not a `vitalsd.reading.v1` document; only a bug can make one.
#[derive(Debug, thiserror::Error)]
#[error("not a vitalsd.reading.v1 document: {0}")]
pub struct NotAReading(String);

/// The Bundle, as JSON bytes, for a `vitalsd.reading.v1` document's bytes.
pub fn bundle_of_payload(payload: &[u8], options: &FhirOptions) -> Result<Vec<u8>, NotAReading> {
    let document: ReadingDocument =
        serde_json::from_slice(payload).map_err(|error| NotAReading(error.to_string()))?;
    Ok(serde_json::to_vec(&bundle(&document, options))
        .expect("invariant: a JSON value serialises infallibly"))
}

/// The document a FHIR record holds while its reading waits for a trusted hub clock: the reading's
/// document and the subject `options` give it now. The Bundle is made at release, when the times are
/// final, but the patient is the one the hub was configured with when the reading arrived, not whoever the
/// configuration names by then.
pub fn held_document(document: &[u8], options: &FhirOptions) -> Result<Vec<u8>, NotAReading> {
    let not_a_reading = |error: serde_json::Error| NotAReading(error.to_string());
    let reading: ReadingDocument = serde_json::from_slice(document).map_err(not_a_reading)?;
    let mut fields: serde_json::Map<String, Json> =
        serde_json::from_slice(document).map_err(not_a_reading)?;
    if let Some(subject) = options.subject(&reading.device.id, reading.user_id) {
        let subject = serde_json::to_value(subject).map_err(not_a_reading)?;
        fields.insert("held_for".to_string(), subject);
    }
    serde_json::to_vec(&fields).map_err(not_a_reading)
}

/// The transaction Bundle for one reading.
pub fn bundle(document: &ReadingDocument, options: &FhirOptions) -> Json {
    let gateway = gateway_device(document);
    let sensor = sensor_device(document, options);
    let mut context = Context {
        gateway_url: full_url(&gateway),
        sensor_url: full_url(&sensor),
        device_key: device_key(document),
        subject: document
            .held_for
            .as_ref()
            .or_else(|| options.subject(&document.device.id, document.user_id)),
        code_sets: &options.code_sets,
        document,
        coincident_url: None,
    };
    let mut entries = vec![entry(gateway, "Device"), entry(sensor, "Device")];
    if let Some(coincident) = coincident_time_stamp(&context) {
        context.coincident_url = Some(full_url(&coincident));
        entries.push(entry(coincident, "Observation"));
    }
    entries.extend(
        observations(&context)
            .into_iter()
            .map(|observation| entry(observation, "Observation")),
    );
    json!({
        "resourceType": "Bundle",
        "id": document.id,
        "type": "transaction",
        "entry": entries,
    })
}

struct Context<'a> {
    gateway_url: String,
    sensor_url: String,
    /// The device part of an Observation's conditional-create identifier.
    device_key: String,
    subject: Option<&'a Subject>,
    code_sets: &'a [&'static CodeSet],
    document: &'a ReadingDocument,
    coincident_url: Option<String>,
}

/// A resource with the identifier a conditional create searches for, kept beside it until the entry is made.
struct Resource {
    json: Json,
    identifier: (String, String),
}

impl Resource {
    fn object(&mut self) -> &mut serde_json::Map<String, Json> {
        self.json
            .as_object_mut()
            .expect("a resource is a JSON object")
    }
}

fn entry(resource: Resource, kind: &str) -> Json {
    let (system, value) = &resource.identifier;
    json!({
        "fullUrl": full_url(&resource),
        "resource": resource.json,
        "request": {
            "method": "POST",
            "url": kind,
            "ifNoneExist": format!("identifier={}|{}", search_value(system), search_value(value)),
        },
    })
}

/// A token's system or value as a search parameter in `ifNoneExist`, a URL query: FHIR's search escapes
/// (`\|`, `\,`, `\$`, `\\`) for its own separators, then percent-encoding for what a query would read
/// otherwise (`+` as a space, `&`, `#`, `=`, `%`) and for anything not plain ASCII.
fn search_value(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '|' | ',' | '$' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    percent_encoding::utf8_percent_encode(&escaped, SEARCH_VALUE_ENCODED).to_string()
}

/// Everything but unreserved characters and the `:`, `/` and `@` of URIs, which a query may hold as they are.
const SEARCH_VALUE_ENCODED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'/')
    .remove(b'@');

/// A `urn:uuid:` derived from the resource's identifier, so that one resource has one URL in every Bundle.
fn full_url(resource: &Resource) -> String {
    let (system, value) = &resource.identifier;
    let name = format!("{system}|{value}");
    format!(
        "urn:uuid:{}",
        uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, name.as_bytes())
    )
}

fn coding(system: &str, code: impl ToString) -> Json {
    json!({ "system": system, "code": code.to_string() })
}

fn mdc_concept(code: u32) -> Json {
    json!({ "coding": [coding(MDC, code)] })
}

fn gateway_device(document: &ReadingDocument) -> Resource {
    let identifier = (
        URI_SYSTEM.to_string(),
        format!("urn:vitalsd:hub:{}", document.hub_id),
    );
    // The hub's clock is NTP's when the kernel says so; a hub configured to trust its clock names no method.
    let sync = match document.hub_clock.as_str() {
        "synchronized" => TIME_SYNC_NTPV4,
        _ => TIME_SYNC_NONE,
    };
    Resource {
        json: json!({
            "resourceType": "Device",
            "meta": { "profile": [format!("{PHD}/PhgDevice")] },
            "identifier": [{ "system": identifier.0, "value": identifier.1 }],
            "type": mdc_concept(GATEWAY_TYPE),
            "manufacturer": "vitalsd",
            "modelNumber": "vitalsd",
            "specialization": SPECIALIZATIONS
                .iter()
                .map(|code| json!({ "systemType": mdc_concept(*code), "version": "1" }))
                .collect::<Vec<_>>(),
            "version": [{ "type": mdc_concept(SOFTWARE), "value": env!("CARGO_PKG_VERSION") }],
            "property": [{ "type": mdc_concept(TIME_SYNC_PROTOCOL), "valueCode": [mdc_concept(sync)] }],
        }),
        identifier,
    }
}

/// The device's identifiers: its System ID and Bluetooth address where it has them, else the hub's name
/// for it (a serial device has neither).
fn sensor_identifiers(document: &ReadingDocument) -> Vec<(Option<&'static str>, String, String)> {
    let device = &document.device;
    let mut identifiers = Vec::new();
    if let Some(eui64) = &device.identity.system_id {
        identifiers.push((Some("SYSID"), SYSID_SYSTEM.to_string(), eui64.clone()));
    }
    if let Some(address) = &device.identity.address {
        identifiers.push((
            Some("BTMAC"),
            BTMAC_SYSTEM.to_string(),
            address.replace(':', "-"),
        ));
    }
    if identifiers.is_empty() {
        let name = format!("urn:vitalsd:device:{}:{}", document.hub_id, device.id);
        identifiers.push((None, URI_SYSTEM.to_string(), name));
    }
    identifiers
}

/// The device part of the PHD conditional-create identifier: the EUI-64 or EUI-48 as 16 or 12 capital hex
/// digits, else the hub's name for the device.
fn device_key(document: &ReadingDocument) -> String {
    let device = &document.device;
    let hex = |text: &String| text.replace(['-', ':'], "").to_uppercase();
    device
        .identity
        .system_id
        .as_ref()
        .or(device.identity.address.as_ref())
        .map(hex)
        .unwrap_or_else(|| format!("{}:{}", document.hub_id, device.id))
}

fn sensor_device(document: &ReadingDocument, options: &FhirOptions) -> Resource {
    let identifiers = sensor_identifiers(document);
    let first = (identifiers[0].1.clone(), identifiers[0].2.clone());
    let identifier: Vec<Json> = identifiers
        .iter()
        .map(|(kind, system, value)| match kind {
            Some(kind) => json!({
                "type": { "coding": [coding(CONTINUA_IDENTIFIERS, kind)] },
                "system": system,
                "value": value,
            }),
            None => json!({ "system": system, "value": value }),
        })
        .collect();
    let device = &document.device;
    let mut types = vec![coding(MDC, SENSOR_TYPE)];
    types.extend(options.code_sets.iter().filter_map(|set| {
        let (system, code) = set.instrument(
            device.identity.manufacturer.as_deref(),
            device.identity.model.as_deref(),
        )?;
        Some(coding(system, code))
    }));
    let mut resource = Resource {
        json: json!({
            "resourceType": "Device",
            "meta": { "profile": [format!("{PHD}/PhdDevice")] },
            "identifier": identifier,
            "type": { "coding": types },
        }),
        identifier: first,
    };
    let object = resource.object();
    // PhdDevice requires a manufacturer, a model and a version; what the device does not say is marked
    // unknown rather than made up.
    for (key, value, required) in [
        ("manufacturer", &device.identity.manufacturer, true),
        ("modelNumber", &device.identity.model, true),
        ("serialNumber", &device.identity.serial_number, false),
    ] {
        match value {
            Some(value) => {
                object.insert(key.to_string(), json!(value));
            }
            None if required => {
                object.insert(format!("_{key}"), unknown_value());
            }
            None => {}
        }
    }
    if let Some(code) = device.specialization {
        object.insert(
            "specialization".to_string(),
            json!([{ "systemType": mdc_concept(code), "version": "1" }]),
        );
    }
    let versions: Vec<Json> = [
        (FIRMWARE, &device.identity.firmware),
        (HARDWARE, &device.identity.hardware),
        (SOFTWARE, &device.identity.software),
    ]
    .into_iter()
    .filter_map(|(code, value)| {
        let value = value.as_ref()?;
        Some(json!({ "type": mdc_concept(code), "value": value }))
    })
    .collect();
    let versions = match versions.is_empty() {
        false => versions,
        true => vec![json!({ "type": mdc_concept(FIRMWARE), "_value": unknown_value() })],
    };
    object.insert("version".to_string(), Json::Array(versions));
    object.insert(
        "property".to_string(),
        json!([{ "type": mdc_concept(TIME_SYNC_PROTOCOL), "valueCode": [mdc_concept(TIME_SYNC_NONE)] }]),
    );
    resource
}

/// A primitive element's extension saying its value is unknown (`_manufacturer`, `_value`).
fn unknown_value() -> Json {
    json!({ "extension": [{ "url": DATA_ABSENT_EXTENSION, "valueCode": "unknown" }] })
}

/// Seconds since 2000-01-01, the epoch of the PHD's time stamp identifier, at the time's own resolution.
fn seconds_since_2000(time: NaiveDateTime) -> String {
    let epoch = NaiveDate::from_ymd_opt(2000, 1, 1)
        .expect("a valid date")
        .and_hms_opt(0, 0, 0)
        .expect("a valid time");
    let since = time.signed_duration_since(epoch);
    let millis = since.num_milliseconds();
    if millis % 1000 == 0 {
        format!("{}", millis / 1000)
    } else {
        format!("{}.{:03}", millis.div_euclid(1000), millis.rem_euclid(1000))
    }
}

/// The time stamp part of the conditional-create identifier ("Generating the PHD Reported Timestamp
/// Identifier"): the time as the device reported it, in local time without an offset as every device
/// here keeps it, so two hubs make the same identifier. Only a time stamp the hub believed names the
/// record: a clock never set stamps every record alike, and a reset clock repeats earlier stamps. Where
/// the hub's receive time stands in, the reading's own id takes the time stamp's place, so distinct
/// readings never share an identifier (and no other hub can make it).
fn reported_time_stamp(document: &ReadingDocument) -> String {
    match (document.time_source.as_str(), document.device_time) {
        ("device", Some(time)) => seconds_since_2000(time),
        _ => format!("id{}", document.id),
    }
}

/// The PHD conditional-create identifier: device, patient, type, reported time stamp and supplemental types.
fn observation_identifier(context: &Context<'_>, mdc: u32) -> (String, String) {
    let patient = context.subject.map_or("unknown".to_string(), |s| {
        format!("{}-{}", s.value, s.system)
    });
    let mut value = format!(
        "{}-{patient}-{mdc}-{}",
        context.device_key,
        reported_time_stamp(context.document)
    );
    for supplemental in &context.document.supplemental {
        value.push_str(&format!("-{}", supplemental.mdc));
    }
    (format!("{PHD}/PhdBaseObservation"), value)
}

fn effective(time: &DateTime<FixedOffset>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, false)
}

/// The FHIR vital-signs profile an Observation of this LOINC code and UCUM unit conforms to, if any: the
/// profiles fix both.
fn vital_sign(loinc: Option<&str>, unit: &str) -> Option<&'static str> {
    Some(match (loinc?, unit) {
        ("85354-9", "mm[Hg]") => "bp",
        ("8867-4", "/min") => "heartrate",
        ("2708-6", "%") => "oxygensat",
        ("29463-7", "kg" | "g" | "[lb_av]") => "bodyweight",
        ("8310-5", "Cel" | "[degF]") => "bodytemp",
        ("8302-2", "cm" | "[in_i]") => "bodyheight",
        ("39156-5", "kg/m2") => "bmi",
        _ => return None,
    })
}

fn observation_base(
    context: &Context<'_>,
    profile: &str,
    mdc: u32,
    code: Json,
    vital_sign: Option<&str>,
) -> Resource {
    let identifier = observation_identifier(context, mdc);
    let mut profiles = vec![format!("{PHD}/{profile}")];
    let mut categories = vec![json!({ "coding": [coding(PHD_CATEGORIES, "phd")] })];
    // The vital-signs profiles require a subject; without one the Observation claims only PHD's.
    if let Some(name) = vital_sign.filter(|_| context.subject.is_some()) {
        profiles.push(format!("{FHIR_PROFILES}/vitalsigns"));
        profiles.push(format!("{FHIR_PROFILES}/{name}"));
        categories.push(json!({ "coding": [coding(CATEGORIES, "vital-signs")] }));
    }
    let mut extensions = vec![
        json!({ "url": GATEWAY_DEVICE, "valueReference": { "reference": context.gateway_url } }),
    ];
    if let Some(url) = &context.coincident_url {
        extensions
            .push(json!({ "url": COINCIDENT_REFERENCE, "valueReference": { "reference": url } }));
    }
    let mut resource = Resource {
        json: json!({
            "resourceType": "Observation",
            "meta": { "profile": profiles },
            "extension": extensions,
            "identifier": [{ "system": identifier.0, "value": identifier.1 }],
            "status": "final",
            "category": categories,
            "code": code,
            "effectiveDateTime": effective(&context.document.measured_at),
            "device": { "reference": context.sensor_url },
        }),
        identifier,
    };
    if let Some(subject) = context.subject {
        resource.object().insert(
            "subject".to_string(),
            json!({ "identifier": { "system": subject.system, "value": subject.value } }),
        );
    }
    resource
}

/// The coincident time stamp: what the device's clock said when the hub read it in this session, so a
/// backend sees how far the device was off (PhdCoincidentTimeStampObservation, STU 2: about the device,
/// measured by the gateway).
fn coincident_time_stamp(context: &Context<'_>) -> Option<Resource> {
    let clock = context.document.device_clock.as_ref()?;
    let read_at = clock.read_at;
    let device_now = match clock.device_time {
        // The device's local time, with the offset the hub's zone had: local minus UTC, from the device's
        // time less the measured offset and the hub's UTC time, to the nearest quarter hour (every zone's
        // offset is one; the second `offset_s` leaves out is far below that).
        Some(device_time) => {
            let hub_local = device_time - TimeDelta::seconds(clock.offset_s);
            let seconds = hub_local
                .signed_duration_since(read_at.naive_utc())
                .num_seconds();
            let quarters = (seconds as f64 / 900.0).round() as i32;
            match FixedOffset::east_opt(quarters * 900) {
                Some(zone) => device_time
                    .and_local_timezone(zone)
                    .single()
                    .map(|time| time.to_rfc3339_opts(SecondsFormat::Secs, false)),
                None => None,
            }
        }
        None => None,
    }
    // A payload from before `device_time` was added: the hub's time plus the whole seconds of the offset.
    .unwrap_or_else(|| {
        (read_at + TimeDelta::seconds(clock.offset_s)).to_rfc3339_opts(SecondsFormat::Secs, true)
    });
    let identifier = (
        format!("{PHD}/PhdBaseObservation"),
        format!(
            "{}-{TIME_ABSOLUTE}-{}+0",
            context.device_key,
            seconds_since_2000(read_at.naive_utc())
        ),
    );
    Some(Resource {
        json: json!({
            "resourceType": "Observation",
            "meta": { "profile": [format!("{PHD}/PhdCoincidentTimeStampObservation")] },
            "extension": [{ "url": GATEWAY_DEVICE, "valueReference": { "reference": context.gateway_url } }],
            "identifier": [{ "system": identifier.0, "value": identifier.1 }],
            "status": "final",
            "category": [{ "coding": [coding(PHD_CATEGORIES, "phd")] }],
            "code": mdc_concept(TIME_ABSOLUTE),
            "subject": { "reference": context.sensor_url },
            "effectiveDateTime": read_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "valueDateTime": device_now,
            "device": { "reference": context.gateway_url },
            "component": [{
                "code": mdc_concept(TIME_SYNC_PROTOCOL),
                "valueCodeableConcept": mdc_concept(TIME_SYNC_NONE),
            }],
        }),
        identifier,
    })
}

fn observations(context: &Context<'_>) -> Vec<Resource> {
    let values = &context.document.values;
    let pressure = |mdc: u32| values.iter().find(|value| value.mdc == Some(mdc));
    let compound: Vec<&ValueDocument> = [150_021, 150_022, 150_023]
        .into_iter()
        .filter_map(pressure)
        .collect();
    let mut resources = Vec::new();
    if compound.len() >= 2 {
        resources.push(compound_observation(context, &compound));
    }
    for value in values {
        let in_compound = compound.len() >= 2 && compound.iter().any(|v| std::ptr::eq(*v, value));
        if let (false, Some(mdc)) = (in_compound, value.mdc) {
            resources.push(numeric_observation(context, mdc, value));
        }
    }
    // The status qualifies the measurement: the pressure, or the first value (SpO2, glucose).
    let measurement_url = resources.first().map(full_url);
    resources.extend(status_bits(context, measurement_url));
    resources
}

/// MDC first, then LOINC, then the configured national codings for this code and unit.
fn code_of(context: &Context<'_>, mdc: u32, loinc: Option<&str>, unit: &str) -> Json {
    let mut codings = vec![coding(MDC, mdc)];
    codings.extend(loinc.map(|code| coding(LOINC, code)));
    for set in context.code_sets {
        codings.extend(
            set.codings(mdc, unit).map(
                |row| json!({ "system": row.system, "code": row.code, "display": row.display }),
            ),
        );
    }
    json!({ "coding": codings })
}

/// What the device's measurement status says about a value: it is absent for a reason, or it stands with
/// an interpretation (`None` if the status says nothing).
#[derive(Default)]
struct MeasurementStatus {
    /// The data-absent reason that replaces every value (invalid, or not available).
    absent: Option<&'static str>,
    interpretation: Option<&'static str>,
    resource_status: &'static str,
    test_data: bool,
}

/// The PHD implementation guide's mapping of the measurement status (IEEE 11073-10206 ACOM, and the PLX
/// Measurement Status bits the decoders report as flags).
fn measurement_status(document: &ReadingDocument) -> MeasurementStatus {
    let has = |flag: &str| document.flags.iter().any(|f| f == flag);
    let mut status = MeasurementStatus {
        resource_status: "final",
        ..MeasurementStatus::default()
    };
    if has("invalid_measurement") {
        status.absent = Some("error");
        status.resource_status = "entered-in-error";
    } else if has("measurement_unavailable") {
        status.absent = Some("not-performed");
    }
    if has("questionable_measurement") {
        status.interpretation = Some("questionable");
    } else if has("calibration_ongoing") {
        status.interpretation = Some("calibration-ongoing");
    } else if has("early_estimate") {
        status.interpretation = Some("early-indication");
        if status.absent.is_none() {
            status.resource_status = "preliminary";
        }
    }
    status.test_data = has("testing_data") || has("demonstration_data");
    status
}

/// Puts the value or its data-absent reason into `object` (an Observation or one of its components).
fn put_value(
    object: &mut serde_json::Map<String, Json>,
    value: &ValueDocument,
    status: &MeasurementStatus,
) {
    let reason = match (&value.value, status.absent) {
        (_, Some(reason)) => reason,
        (Some(number), None) => {
            object.insert(
                "valueQuantity".to_string(),
                json!({ "value": number, "unit": value.unit, "system": UCUM, "code": value.unit }),
            );
            return;
        }
        (None, None) => data_absent_reason(value.special.as_deref()),
    };
    object.insert(
        "dataAbsentReason".to_string(),
        json!({ "coding": [coding(DATA_ABSENT, reason)] }),
    );
}

/// FHIR's reason for a value the device did not give, from the document's `special`.
fn data_absent_reason(special: Option<&str>) -> &'static str {
    match special.and_then(|special| special.parse().ok()) {
        Some(Special::NoMeasurement) => "not-performed",
        Some(Special::NotANumber) => "not-a-number",
        Some(Special::PositiveInfinity) => "positive-infinity",
        Some(Special::NegativeInfinity) => "negative-infinity",
        Some(Special::Missing | Special::NotAtThisResolution | Special::Reserved) | None => {
            "unknown"
        }
    }
}

/// The status, interpretation, security label and supplemental types every measurement Observation of the
/// reading shares.
fn put_status(resource: &mut Resource, status: &MeasurementStatus) {
    let object = resource.object();
    object.insert("status".to_string(), json!(status.resource_status));
    if let Some(code) = status.interpretation {
        object.insert(
            "interpretation".to_string(),
            json!([{ "coding": [coding(MEASUREMENT_STATUS, code)] }]),
        );
    }
    if status.test_data {
        object
            .get_mut("meta")
            .and_then(Json::as_object_mut)
            .expect("every resource has meta")
            .insert("security".to_string(), json!([coding(ACT_REASON, "HTEST")]));
    }
}

fn supplemental_components(context: &Context<'_>) -> Vec<Json> {
    context
        .document
        .supplemental
        .iter()
        .map(|supplemental| {
            json!({
                "code": mdc_concept(SUPPLEMENTAL_TYPES),
                "valueCodeableConcept": mdc_concept(supplemental.mdc),
            })
        })
        .collect()
}

fn numeric_observation(context: &Context<'_>, mdc: u32, value: &ValueDocument) -> Resource {
    let code = code_of(context, mdc, value.loinc.as_deref(), &value.unit);
    let vital_sign = vital_sign(value.loinc.as_deref(), &value.unit);
    let mut resource = observation_base(context, "PhdNumericObservation", mdc, code, vital_sign);
    let status = measurement_status(context.document);
    put_value(resource.object(), value, &status);
    put_status(&mut resource, &status);
    let components = supplemental_components(context);
    if !components.is_empty() {
        resource
            .object()
            .insert("component".to_string(), Json::Array(components));
    }
    resource
}

fn compound_observation(context: &Context<'_>, values: &[&ValueDocument]) -> Resource {
    let (mdc, loinc) = BLOOD_PRESSURE;
    let unit = values.first().map_or("", |value| value.unit.as_str());
    let code = code_of(context, mdc, Some(loinc), unit);
    // The blood pressure profile requires both a systolic and a diastolic component.
    let both = [150_021, 150_022]
        .iter()
        .all(|mdc| values.iter().any(|v| v.mdc == Some(*mdc)));
    let vital_sign = vital_sign(Some(loinc), unit).filter(|_| both);
    let mut resource = observation_base(
        context,
        "PhdCompoundNumericObservation",
        mdc,
        code,
        vital_sign,
    );
    let status = measurement_status(context.document);
    let mut components: Vec<Json> = values
        .iter()
        .filter_map(|value| {
            let mdc = value.mdc?;
            let mut component =
                json!({ "code": code_of(context, mdc, value.loinc.as_deref(), &value.unit) });
            put_value(
                component.as_object_mut().expect("a JSON object"),
                value,
                &status,
            );
            Some(component)
        })
        .collect();
    components.extend(supplemental_components(context));
    resource
        .object()
        .insert("component".to_string(), Json::Array(components));
    put_status(&mut resource, &status);
    resource
}

/// The status bits of the reading's kind that are set, as a PhdBitsEnumerationObservation derived from
/// the measurement they qualify. Only set bits are reported: they are events, and an unset one says nothing.
fn status_bits(context: &Context<'_>, measurement_url: Option<String>) -> Option<Resource> {
    let document = context.document;
    let (_, mdc, bits) = STATUS_BITS
        .iter()
        .find(|(kind, _, _)| *kind == document.kind)?;
    let set: Vec<&(&str, u32, &str)> = bits
        .iter()
        .filter(|(flag, _, _)| document.flags.iter().any(|f| f == flag))
        .collect();
    if set.is_empty() {
        return None;
    }
    let mut resource = observation_base(
        context,
        "PhdBitsEnumerationObservation",
        *mdc,
        mdc_concept(*mdc),
        None,
    );
    let components: Vec<Json> = set
        .iter()
        .map(|(_, bit, name)| {
            json!({
                "code": { "coding": [{ "system": ASN1_TO_HL7, "code": format!("{mdc}.{bit}"), "display": name }] },
                "valueCodeableConcept": { "coding": [coding(YES_NO, "Y")] },
            })
        })
        .collect();
    let object = resource.object();
    object.insert("component".to_string(), Json::Array(components));
    if let Some(url) = measurement_url {
        object.insert("derivedFrom".to_string(), json!([{ "reference": url }]));
    }
    Some(resource)
}

/// The PHD implementation guide's rules every Bundle keeps, which a FHIR R4 parser does not check: each
/// entry a conditional create on its resource's identifier, the hub and the device as PhgDevice and
/// PhdDevice, every measurement Observation from the device through the hub, MDC first, a value or the
/// reason there is none.
#[cfg(test)]
pub fn assert_phd_rules(bundle: &Json) {
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(bundle["type"], "transaction");
    for entry in entries {
        let resource = &entry["resource"];
        let identifier = &resource["identifier"][0];
        let condition = format!(
            "identifier={}|{}",
            search_value(identifier["system"].as_str().expect("an identifier system")),
            search_value(identifier["value"].as_str().expect("an identifier value"))
        );
        assert_eq!(
            entry["request"]["ifNoneExist"],
            condition.as_str(),
            "{entry}"
        );
        assert!(entry["fullUrl"].as_str().unwrap().starts_with("urn:uuid:"));
    }
    let (gateway, sensor) = (&entries[0], &entries[1]);
    assert_eq!(
        gateway["resource"]["meta"]["profile"][0],
        format!("{PHD}/PhgDevice")
    );
    assert_eq!(
        gateway["resource"]["type"]["coding"][0]["code"],
        GATEWAY_TYPE.to_string()
    );
    assert_eq!(
        sensor["resource"]["meta"]["profile"][0],
        format!("{PHD}/PhdDevice")
    );
    assert_eq!(
        sensor["resource"]["type"]["coding"][0]["code"],
        SENSOR_TYPE.to_string()
    );
    // The devices' required elements: present, or marked unknown.
    for device in [gateway, sensor] {
        let device = &device["resource"];
        for key in ["manufacturer", "modelNumber"] {
            let unknown = &device[format!("_{key}")]["extension"][0]["valueCode"];
            assert!(
                device[key].is_string() || unknown == "unknown",
                "{key}: {device}"
            );
        }
        assert!(
            device["version"][0]["type"]["coding"][0]["code"].is_string(),
            "{device}"
        );
        let specialization = &device["specialization"][0];
        assert!(
            specialization["systemType"]["coding"][0]["code"].is_string(),
            "{device}"
        );
        assert_eq!(specialization["version"], "1");
    }
    for entry in &entries[2..] {
        let observation = &entry["resource"];
        assert_eq!(observation["resourceType"], "Observation");
        assert_eq!(
            observation["code"]["coding"][0]["system"], MDC,
            "{observation}"
        );
        assert_eq!(observation["extension"][0]["url"], GATEWAY_DEVICE);
        assert_eq!(
            observation["extension"][0]["valueReference"]["reference"],
            gateway["fullUrl"]
        );
        assert_eq!(observation["category"][0]["coding"][0]["code"], "phd");
        let coincident =
            observation["meta"]["profile"][0] == format!("{PHD}/PhdCoincidentTimeStampObservation");
        let (about, by) = match coincident {
            true => (sensor, gateway),
            false => (gateway, sensor),
        };
        assert_eq!(
            observation["device"]["reference"], by["fullUrl"],
            "{observation}"
        );
        let profile = observation["meta"]["profile"][0].as_str().unwrap();
        match profile.rsplit('/').next().unwrap() {
            "PhdCoincidentTimeStampObservation" => {
                assert_eq!(observation["subject"]["reference"], about["fullUrl"]);
                assert!(observation["valueDateTime"].is_string());
            }
            profile => {
                let subject = &observation["subject"]["identifier"]["value"];
                assert!(subject.is_string(), "no subject: {observation}");
                // Components that carry values, not the supplemental types.
                let supplemental = json!({ "coding": [coding(MDC, SUPPLEMENTAL_TYPES)] });
                let parts = observation["component"].as_array().map_or(0, |parts| {
                    parts
                        .iter()
                        .filter(|part| part["code"] != supplemental)
                        .count()
                });
                let valued = match profile {
                    "PhdNumericObservation" => {
                        observation["valueQuantity"].is_object()
                            || observation["dataAbsentReason"].is_object()
                    }
                    "PhdCompoundNumericObservation" | "PhdBitsEnumerationObservation" => parts > 0,
                    other => panic!("an Observation of profile {other}"),
                };
                assert!(valued, "no value and no reason: {observation}");
            }
        }
        assert!(
            observation["valueQuantity"].is_null() || observation["dataAbsentReason"].is_null(),
            "a value and the reason it is absent: {observation}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codes;
    use crate::model::payload::{self, DeviceIdentity, DeviceInfo, Transport};
    use crate::model::reading::{Flag, Kind, Reading, Special, TimeSource, Value};

    fn reading(values: Vec<Value>, flags: Vec<Flag>) -> Reading {
        let mut reading = Reading::at_hub_time(
            Kind::BloodPressure,
            "2026-11-22T09:00:01Z".parse().unwrap(),
            &[0x1e],
        );
        reading.values = values;
        reading.flags = flags;
        reading.time_source = TimeSource::Device;
        reading.device_time = Some("2023-02-23T10:24:08".parse().unwrap());
        reading
    }

    fn cuff() -> DeviceInfo {
        DeviceInfo {
            id: "ble:C4:F3:12:53:F2:C9".to_string(),
            transport: Transport::Ble,
            protocol: "blood-pressure-measurement",
            identity: DeviceIdentity {
                manufacturer: Some("A&D Medical".to_string()),
                model: Some("UA-651BLE".to_string()),
                system_id: Some("C4-F3-12-FF-FE-53-F2-C9".to_string()),
                address: Some("C4:F3:12:53:F2:C9".to_string()),
                firmware: Some("1.02".to_string()),
                ..DeviceIdentity::default()
            },
            specialization: Some(528_391),
        }
    }

    fn serial() -> DeviceInfo {
        DeviceInfo {
            id: "serial:usb-Nonin".to_string(),
            transport: Transport::Serial,
            protocol: "nonin-df13",
            identity: DeviceIdentity::default(),
            specialization: Some(528_388),
        }
    }

    fn options(code_sets: &[&str]) -> FhirOptions {
        FhirOptions {
            subject: Some(Subject {
                system: "urn:oid:1.2.208.176.1.2".to_string(),
                value: "3001749995".to_string(),
            }),
            device_subjects: BTreeMap::new(),
            code_sets: code_sets
                .iter()
                .map(|name| crate::model::fhir_codes::find(name).unwrap())
                .collect(),
        }
    }

    /// The Bundle of a reading, made as the daemon makes it: from the published JSON document.
    fn bundle_of(device: &DeviceInfo, reading: &Reading, options: &FhirOptions) -> Json {
        let document = payload::to_json("hub-1", "reading-id", device, reading);
        let bundle =
            serde_json::from_slice(&bundle_of_payload(&document, options).unwrap()).unwrap();
        assert_phd_rules(&bundle);
        bundle
    }

    /// One line per entry: the profile's last part and what matters of the resource: a device's
    /// identifiers; an observation's identifier, status and value, components or absent reason.
    fn check(device: &DeviceInfo, values: Vec<Value>, flags: Vec<Flag>, expected: &[&str]) {
        let bundle = bundle_of(device, &reading(values, flags), &options(&[]));
        let lines: Vec<String> = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|entry| summary(&entry["resource"]))
            .collect();
        assert_eq!(lines, expected);
    }

    fn summary(resource: &Json) -> String {
        let profile = resource["meta"]["profile"][0].as_str().unwrap_or_default();
        let profile = profile.rsplit('/').next().unwrap_or_default();
        let text = |value: &Json| match value {
            Json::String(text) => text.clone(),
            other => other.to_string(),
        };
        let detail = match resource["resourceType"].as_str() {
            Some("Device") => resource["identifier"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| text(&id["value"]))
                .collect::<Vec<_>>()
                .join(" "),
            _ => {
                let value = match (
                    &resource["valueQuantity"],
                    &resource["component"],
                    &resource["valueDateTime"],
                ) {
                    (Json::Object(q), _, _) => text(&q["value"]),
                    (_, _, Json::String(time)) => time.clone(),
                    (_, Json::Array(parts), _) => parts
                        .iter()
                        .map(
                            |p| match (&p["valueQuantity"], &p["valueCodeableConcept"]) {
                                (Json::Object(q), _) => text(&q["value"]),
                                (_, Json::Object(c)) => format!(
                                    "{}={}",
                                    text(&p["code"]["coding"][0]["code"]),
                                    text(&c["coding"][0]["code"])
                                ),
                                _ => text(&p["dataAbsentReason"]["coding"][0]["code"]),
                            },
                        )
                        .collect::<Vec<_>>()
                        .join("/"),
                    _ => text(&resource["dataAbsentReason"]["coding"][0]["code"]),
                };
                format!(
                    "{} {} {value}",
                    text(&resource["identifier"][0]["value"]),
                    text(&resource["status"])
                )
            }
        };
        format!("{profile} {detail}")
    }

    const CUFF_KEY: &str = "C4F312FFFE53F2C9-3001749995-urn:oid:1.2.208.176.1.2";
    /// 2023-02-23T10:24:08 as the device reported it, in seconds since 2000-01-01.
    const REPORTED: &str = "730463048";

    #[test]
    fn a_value_the_device_did_not_give_has_fhirs_reason_for_its_special() {
        let table = [
            (Special::Missing, "unknown"),
            (Special::NoMeasurement, "not-performed"),
            (Special::NotANumber, "not-a-number"),
            (Special::NotAtThisResolution, "unknown"),
            (Special::PositiveInfinity, "positive-infinity"),
            (Special::NegativeInfinity, "negative-infinity"),
            (Special::Reserved, "unknown"),
        ];
        assert_eq!(
            table.len(),
            <Special as strum::IntoEnumIterator>::iter().count()
        );
        for (special, reason) in table {
            // Through the name the document carries, as the Bundle is made from the document.
            assert_eq!(
                data_absent_reason(Some(special.as_str())),
                reason,
                "{special:?}"
            );
        }
        assert_eq!(data_absent_reason(None), "unknown");
    }

    #[test]
    fn a_cuff_reading_is_a_gateway_a_sensor_a_compound_pressure_and_a_pulse() {
        check(
            &cuff(),
            vec![
                Value::number(&codes::SYSTOLIC, 118.0),
                Value::number(&codes::DIASTOLIC, 87.0),
                Value::number(&codes::MEAN_ARTERIAL_PRESSURE, 99.0),
                Value::number(&codes::PULSE_RATE_CUFF, 60.0),
            ],
            vec![],
            &[
                "PhgDevice urn:vitalsd:hub:hub-1",
                "PhdDevice C4-F3-12-FF-FE-53-F2-C9 C4-F3-12-53-F2-C9",
                &format!(
                    "PhdCompoundNumericObservation {CUFF_KEY}-150020-{REPORTED} final 118/87/99"
                ),
                &format!("PhdNumericObservation {CUFF_KEY}-149546-{REPORTED} final 60"),
            ],
        );
    }

    #[test]
    fn set_cuff_status_bits_become_a_bits_enumeration_derived_from_the_pressure() {
        check(
            &cuff(),
            vec![
                Value::number(&codes::SYSTOLIC, 118.0),
                Value::number(&codes::DIASTOLIC, 87.0),
            ],
            vec![Flag::IrregularPulse, Flag::CuffLoose],
            &[
                "PhgDevice urn:vitalsd:hub:hub-1",
                "PhdDevice C4-F3-12-FF-FE-53-F2-C9 C4-F3-12-53-F2-C9",
                &format!("PhdCompoundNumericObservation {CUFF_KEY}-150020-{REPORTED} final 118/87"),
                &format!("PhdBitsEnumerationObservation {CUFF_KEY}-8410608-{REPORTED} final 8410608.1=Y/8410608.2=Y"),
            ],
        );
    }

    #[test]
    fn a_missing_value_is_absent_with_a_reason_and_an_uncoded_one_is_left_out() {
        check(
            &serial(),
            vec![
                Value::number(&codes::SPO2, 97.0),
                Value::special(&codes::PULSE_RATE_OXIMETER, Special::Missing),
                Value::number(&codes::PERFUSION_INDEX, 3.1),
            ],
            vec![],
            &[
                "PhgDevice urn:vitalsd:hub:hub-1",
                "PhdDevice urn:vitalsd:device:hub-1:serial:usb-Nonin",
                &format!("PhdNumericObservation hub-1:serial:usb-Nonin-3001749995-urn:oid:1.2.208.176.1.2-150456-{REPORTED} final 97"),
                &format!("PhdNumericObservation hub-1:serial:usb-Nonin-3001749995-urn:oid:1.2.208.176.1.2-149530-{REPORTED} final unknown"),
            ],
        );
    }

    #[test]
    fn every_status_bit_is_a_flag_a_decoder_sets_and_each_kind_has_its_own_field() {
        use strum::IntoEnumIterator;
        let flags: Vec<&str> = Flag::iter().map(|flag| flag.as_str()).collect();
        for (kind, mdc, bits) in STATUS_BITS {
            for (flag, bit, _) in bits {
                assert!(flags.contains(flag), "{kind} {mdc}.{bit}: no flag {flag}");
            }
        }
        let spo2 = || vec![Value::number(&codes::SPO2, 97.0)];
        let mut oximetry = reading(spo2(), vec![Flag::SensorDisplaced, Flag::LowPerfusion]);
        oximetry.kind = Kind::PulseOximetry;
        let bundle = bundle_of(&serial(), &oximetry, &options(&[]));
        assert_eq!(
            summary(&bundle["entry"][3]["resource"]),
            format!("PhdBitsEnumerationObservation hub-1:serial:usb-Nonin-3001749995-urn:oid:1.2.208.176.1.2-150604-{REPORTED} final 150604.2=Y/150604.10=Y")
        );
        assert_eq!(
            bundle["entry"][3]["resource"]["derivedFrom"][0]["reference"],
            bundle["entry"][2]["fullUrl"]
        );
        // A cuff's bit on an oximeter's reading means nothing there.
        let mut other = reading(spo2(), vec![Flag::IrregularPulse]);
        other.kind = Kind::PulseOximetry;
        assert_eq!(
            bundle_of(&serial(), &other, &options(&[]))["entry"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn the_measurement_status_is_mapped_as_the_implementation_guide_says() {
        let spo2 = || vec![Value::number(&codes::SPO2, 97.0)];
        let key =
            format!("hub-1:serial:usb-Nonin-3001749995-urn:oid:1.2.208.176.1.2-150456-{REPORTED}");
        let observation = |flags| {
            let bundle = bundle_of(&serial(), &reading(spo2(), flags), &options(&[]));
            bundle["entry"][2]["resource"].clone()
        };
        let line = |flags| summary(&observation(flags));
        assert_eq!(
            line(vec![]),
            format!("PhdNumericObservation {key} final 97")
        );
        assert_eq!(
            line(vec![Flag::InvalidMeasurement]),
            format!("PhdNumericObservation {key} entered-in-error error")
        );
        assert_eq!(
            line(vec![Flag::MeasurementUnavailable]),
            format!("PhdNumericObservation {key} final not-performed")
        );
        assert_eq!(
            line(vec![Flag::EarlyEstimate]),
            format!("PhdNumericObservation {key} preliminary 97")
        );
        let interpretation =
            |flags| observation(flags)["interpretation"][0]["coding"][0]["code"].clone();
        assert_eq!(
            interpretation(vec![Flag::QuestionableMeasurement]),
            "questionable"
        );
        assert_eq!(
            interpretation(vec![Flag::CalibrationOngoing]),
            "calibration-ongoing"
        );
        assert_eq!(
            interpretation(vec![Flag::EarlyEstimate]),
            "early-indication"
        );
        assert_eq!(interpretation(vec![]), Json::Null);
        assert_eq!(
            observation(vec![Flag::TestingData])["meta"]["security"][0]["code"],
            "HTEST"
        );
    }

    #[test]
    fn a_read_device_clock_is_a_coincident_time_stamp_every_observation_refers_to() {
        let mut reading = reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]);
        reading.device_clock = Some(crate::model::clocks::DeviceClockCheck {
            device_time: crate::model::clocks::DeviceDateTime::Known(
                "2026-11-22T10:00:31".parse().unwrap(),
            ),
            hub_time: "2026-11-22T09:00:01.250Z".parse().unwrap(),
            hub_local: "2026-11-22T10:00:01.250".parse().unwrap(),
            hub_clock: crate::model::clocks::HubClock::Synchronized,
            set: false,
        });
        let bundle = bundle_of(&serial(), &reading, &options(&[]));
        let entries = bundle["entry"].as_array().unwrap();
        let coincident = &entries[2];
        assert_eq!(
            summary(&coincident["resource"]),
            "PhdCoincidentTimeStampObservation hub-1:serial:usb-Nonin-67975-848653201.250+0 final 2026-11-22T10:00:31+01:00"
        );
        // About the device, measured by the gateway (STU 2).
        assert_eq!(
            coincident["resource"]["subject"]["reference"],
            entries[1]["fullUrl"]
        );
        assert_eq!(
            coincident["resource"]["device"]["reference"],
            entries[0]["fullUrl"]
        );
        assert_eq!(
            entries[3]["resource"]["extension"][1],
            json!({ "url": COINCIDENT_REFERENCE, "valueReference": { "reference": coincident["fullUrl"] } })
        );
    }

    #[test]
    fn the_coincident_time_stamp_is_the_device_clock_exactly_as_read_in_the_hubs_zone() {
        let at = |device: &str, hub_utc: &str, hub_local: &str| {
            let mut reading = reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]);
            reading.device_clock = Some(crate::model::clocks::DeviceClockCheck {
                device_time: crate::model::clocks::DeviceDateTime::Known(device.parse().unwrap()),
                hub_time: hub_utc.parse().unwrap(),
                hub_local: hub_local.parse().unwrap(),
                hub_clock: crate::model::clocks::HubClock::Synchronized,
                set: false,
            });
            let bundle = bundle_of(&serial(), &reading, &options(&[]));
            bundle["entry"][2]["resource"]["valueDateTime"]
                .as_str()
                .unwrap()
                .to_string()
        };
        // A clock 29.75 s ahead, 0.25 s behind, and 3 h behind in a zone at +05:45.
        assert_eq!(
            at(
                "2026-11-22T10:00:31",
                "2026-11-22T09:00:01.250Z",
                "2026-11-22T10:00:01.250"
            ),
            "2026-11-22T10:00:31+01:00"
        );
        assert_eq!(
            at(
                "2026-11-22T10:00:01",
                "2026-11-22T09:00:01.250Z",
                "2026-11-22T10:00:01.250"
            ),
            "2026-11-22T10:00:01+01:00"
        );
        assert_eq!(
            at(
                "2026-11-22T11:45:00",
                "2026-11-22T09:00:00.999Z",
                "2026-11-22T14:45:00.999"
            ),
            "2026-11-22T11:45:00+05:45"
        );
        // A document from before the device's time was published: the hub's time plus the whole seconds.
        let mut document: serde_json::Value = serde_json::from_slice(&payload::to_json(
            "hub-1",
            "reading-id",
            &serial(),
            &reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]),
        ))
        .unwrap();
        document["device_clock"] =
            json!({ "offset_s": 29, "read_at": "2026-11-22T09:00:01.250Z", "set": false });
        let bundle = bundle_of_payload(document.to_string().as_bytes(), &options(&[])).unwrap();
        let bundle: Json = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(
            bundle["entry"][2]["resource"]["valueDateTime"],
            "2026-11-22T09:00:30Z"
        );
    }

    #[test]
    fn code_sets_add_their_codings_after_mdc_and_loinc() {
        let reading = reading(
            vec![
                Value::number(&codes::SYSTOLIC, 118.0),
                Value::number(&codes::DIASTOLIC, 87.0),
                Value::number(&codes::PULSE_RATE_CUFF, 60.0),
            ],
            vec![],
        );
        let codes_of = |code: &Json| {
            code["coding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["code"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let plain = bundle_of(&cuff(), &reading, &options(&[]));
        let danish = bundle_of(&cuff(), &reading, &options(&["dk"]));
        let pressure = |bundle: &Json| {
            let components = bundle["entry"][2]["resource"]["component"]
                .as_array()
                .unwrap()
                .clone();
            components
                .iter()
                .map(|c| codes_of(&c["code"]))
                .collect::<Vec<_>>()
        };
        assert_eq!(pressure(&plain), ["150021 8480-6", "150022 8462-4"]);
        assert_eq!(
            pressure(&danish),
            ["150021 8480-6 MCS88019", "150022 8462-4 MCS88020"]
        );
        assert_eq!(
            codes_of(&danish["entry"][3]["resource"]["code"]),
            "149546 8867-4 NPU21692"
        );
        // The Danish table knows no instrument code for this cuff model.
        assert_eq!(codes_of(&danish["entry"][1]["resource"]["type"]), "65573");
    }

    #[test]
    fn a_spot_modality_is_a_supplemental_component_and_part_of_the_identifier() {
        let mut reading = reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]);
        reading.supplemental = vec![crate::model::reading::Supplemental::ModalitySpot];
        let bundle = bundle_of(&serial(), &reading, &options(&[]));
        let observation = &bundle["entry"][2]["resource"];
        assert_eq!(
            observation["component"],
            json!([{ "code": mdc_concept(68_193), "valueCodeableConcept": mdc_concept(150_588) }])
        );
        assert!(observation["identifier"][0]["value"]
            .as_str()
            .unwrap()
            .ends_with(&format!("-150456-{REPORTED}-150588")));
    }

    #[test]
    fn a_device_with_its_own_subject_is_about_that_patient() {
        let mut options = options(&[]);
        let other = Subject {
            system: "urn:example:patients".to_string(),
            value: "p-2".to_string(),
        };
        options.device_subjects.insert(serial().id, other);
        let reading = reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]);
        let nonin = bundle_of(&serial(), &reading, &options);
        assert_eq!(
            nonin["entry"][2]["resource"]["subject"]["identifier"]["value"],
            "p-2"
        );
        let cuff_bundle = bundle_of(&cuff(), &reading, &options);
        assert_eq!(
            cuff_bundle["entry"][2]["resource"]["subject"]["identifier"]["value"],
            "3001749995"
        );
        // A multi-user cuff's second user, by slot.
        let spouse = Subject {
            system: "urn:example:patients".to_string(),
            value: "p-3".to_string(),
        };
        options
            .device_subjects
            .insert(format!("{}/user/2", cuff().id), spouse);
        let subject_of = |user| {
            let mut reading = reading.clone();
            reading.user_id = user;
            bundle_of(&cuff(), &reading, &options)["entry"][2]["resource"]["subject"]["identifier"]
                ["value"]
                .clone()
        };
        assert_eq!(subject_of(Some(2)), "p-3");
        assert_eq!(subject_of(Some(1)), "3001749995");
        assert_eq!(subject_of(None), "3001749995");
    }

    #[test]
    fn a_document_that_is_not_a_reading_is_an_error_not_a_panic() {
        assert!(bundle_of_payload(b"{\"schema\":\"vitalsd.status.v1\"}", &options(&[])).is_err());
        assert!(bundle_of_payload(b"\xff", &options(&[])).is_err());
    }

    #[test]
    fn vital_signs_profiles_are_claimed_only_for_their_code_and_unit() {
        let check = |loinc: &str, unit: &str, expected: Option<&str>| {
            assert_eq!(vital_sign(Some(loinc), unit), expected, "{loinc} {unit}");
        };
        check("85354-9", "mm[Hg]", Some("bp"));
        // The FHIR blood pressure profile fixes mm[Hg]: a cuff set to kPa is a PHD Observation only.
        check("85354-9", "kPa", None);
        check("8867-4", "/min", Some("heartrate"));
        check("2708-6", "%", Some("oxygensat"));
        check("29463-7", "[lb_av]", Some("bodyweight"));
        check("8310-5", "Cel", Some("bodytemp"));
        check("8302-2", "m", None);
        check("39156-5", "kg/m2", Some("bmi"));
        check("14743-9", "mmol/L", None);
        let bundle = bundle_of(
            &serial(),
            &reading(vec![Value::number(&codes::SPO2, 97.0)], vec![]),
            &options(&[]),
        );
        let observation = &bundle["entry"][2]["resource"];
        assert_eq!(
            observation["meta"]["profile"],
            json!([
                "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdNumericObservation",
                "http://hl7.org/fhir/StructureDefinition/vitalsigns",
                "http://hl7.org/fhir/StructureDefinition/oxygensat",
            ])
        );
        assert_eq!(
            observation["category"][1]["coding"][0]["code"],
            "vital-signs"
        );
    }

    #[test]
    fn identifiers_are_escaped_for_the_search_in_if_none_exist() {
        let check = |text: &str, expected: &str| assert_eq!(search_value(text), expected, "{text}");
        check("urn:oid:1.2.208.176.1.2", "urn:oid:1.2.208.176.1.2");
        check(
            "C4F312FFFE53F2C9-p-1-urn:x-67975-848653201.250+0",
            "C4F312FFFE53F2C9-p-1-urn:x-67975-848653201.250%2B0",
        );
        check(
            "https://example.org/patients?a=1&b#c",
            "https://example.org/patients%3Fa%3D1%26b%23c",
        );
        check("a|b,c$d\\e f", "a%5C%7Cb%5C%2Cc%5C%24d%5C%5Ce%20f");
        check("Søren", "S%C3%B8ren");
    }

    #[test]
    fn seconds_since_2000_keep_the_resolution_of_the_time() {
        let at = |text: &str| seconds_since_2000(text.parse().unwrap());
        assert_eq!(at("2000-01-01T00:00:00"), "0");
        assert_eq!(at("2021-11-22T11:56:00.567"), "690897360.567");
        assert_eq!(at("1999-12-31T23:59:59.500"), "-1.500");
    }
}

//! The normalised reading every decoder produces and every later stage consumes; pure data, no I/O.

use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, TimeZone, Utc};

use crate::model::clocks::{DeviceClockCheck, HubClock};
use crate::model::codes::Measure;

// The vocabularies below are published (payload, topics): strum derives their wire names from the
// variant names, and `as_str` is the one way to read them.

/// What a reading measures; also the last segment of its MQTT topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Kind {
    BloodPressure,
    PulseOximetry,
    BodyWeight,
    BodyComposition,
    BloodGlucose,
    BodyTemperature,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where `measured_at` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum TimeSource {
    /// The device's own clock stamped the measurement.
    Device,
    /// The hub's receive time stands in, because the device has no usable clock.
    Hub,
}

impl TimeSource {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A device's way of saying "there is no number here"; published as `"value": null` plus `"special"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[strum(serialize_all = "snake_case")]
pub enum Special {
    /// The device's "no data" sentinel (Nonin HR 511 / SpO2 127, Masimo `---`), or a 0 no patient can have
    /// (SpO2, pulse rate, blood pressure, weight, body temperature, glucose): a device that sends one has no number.
    Missing,
    /// The device says it attempted no measurement or the measurement failed.
    NoMeasurement,
    /// IEEE 11073 NaN.
    #[strum(serialize = "nan")]
    NotANumber,
    /// IEEE 11073 NRes (not at this resolution).
    #[strum(serialize = "nres")]
    NotAtThisResolution,
    /// IEEE 11073 +INF.
    #[strum(serialize = "+inf")]
    PositiveInfinity,
    /// IEEE 11073 -INF.
    #[strum(serialize = "-inf")]
    NegativeInfinity,
    /// IEEE 11073 reserved value.
    Reserved,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A quality or status flag of a reading, published by its snake_case name (`"low_perfusion"`). Decoders
/// push them in the device's bit order; the README lists them. Several devices share a name where they
/// mean the same thing (`low_battery`, `sensor_disconnected`, `pulse_searching`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, strum::IntoStaticStr, strum::Display)]
#[cfg_attr(test, derive(strum::EnumIter))]
#[strum(serialize_all = "snake_case")]
pub enum Flag {
    // Nonin status (also used by other oximeters with the same meaning).
    Smartpoint,
    FromMemory,
    LowBattery,
    NoMeasurement,
    Artifact,
    OutOfTrack,
    SensorAlarm,
    SensorDisconnected,
    LowPerfusion,
    MarginalPerfusion,
    // Blood pressure Measurement Status, and a failed measurement (every value NaN); cuff progress.
    BodyMovement,
    CuffLoose,
    IrregularPulse,
    PulseRateAboveRange,
    PulseRateBelowRange,
    ImproperPosition,
    MeasurementFailed,
    CuffPressureProgress,
    // PLX Measurement Status.
    MeasurementOngoing,
    EarlyEstimate,
    ValidatedData,
    FullyQualifiedData,
    DemonstrationData,
    TestingData,
    CalibrationOngoing,
    MeasurementUnavailable,
    QuestionableMeasurement,
    InvalidMeasurement,
    // PLX Device and Sensor Status.
    ExtendedDisplayUpdate,
    EquipmentMalfunction,
    SignalProcessingIrregularity,
    InadequateSignal,
    PoorSignal,
    ErraticSignal,
    NonpulsatileSignal,
    QuestionablePulse,
    SignalAnalysisOngoing,
    SensorInterference,
    SensorUnconnected,
    UnknownSensor,
    SensorDisplaced,
    SensorMalfunctioning,
    // Glucose Sensor Status Annunciation.
    SensorMalfunction,
    SampleSizeInsufficient,
    StripInsertionError,
    StripTypeIncorrect,
    ResultAboveRange,
    ResultBelowRange,
    SensorTemperatureHigh,
    SensorTemperatureLow,
    ReadInterrupted,
    DeviceFault,
    TimeFault,
    // Glucose sample type and location.
    SampleCapillaryWholeBlood,
    SampleCapillaryPlasma,
    SampleVenousWholeBlood,
    SampleVenousPlasma,
    SampleArterialWholeBlood,
    SampleArterialPlasma,
    SampleUndeterminedWholeBlood,
    SampleUndeterminedPlasma,
    SampleInterstitialFluid,
    LocationFinger,
    LocationAlternateSite,
    LocationEarlobe,
    ControlSolution,
    // Glucose Measurement Context: announced, then its meal, tester and health.
    ContextFollows,
    MealPreprandial,
    MealPostprandial,
    MealFasting,
    MealCasual,
    MealBedtime,
    TesterSelf,
    TesterHealthCareProfessional,
    TesterLabTest,
    HealthMinorIssues,
    HealthMajorIssues,
    HealthDuringMenses,
    HealthUnderStress,
    HealthNone,
    // Thermometer Temperature Type (the measurement site).
    SiteArmpit,
    SiteBody,
    SiteEar,
    SiteFinger,
    SiteGastrointestinalTract,
    SiteMouth,
    SiteRectum,
    SiteToe,
    SiteTympanum,
    // Scales.
    PartialRecord,
    ObjectMode,
    ConvertedFromJin,
    ChecksumUnverified,
    // Masimo exception bits.
    NoSensor,
    DefectiveSensor,
    PulseSearching,
    Interference,
    SensorOff,
    AmbientLight,
    UnrecognisedSensor,
    LowSignalIq,
    SetMode,
    // BerryMed and Contec status bits; a Contec recording downloaded from the oximeter.
    NoSignal,
    NoFinger,
    Spo2Dropping,
    PulseSearchingTooLong,
    LowSpo2Alarm,
    StoredSession,
    // Time (see the README's Time section).
    DeviceClockInvalid,
    DeviceClockReset,
    DeviceClockCorrected,
    DeviceClockAhead,
    HubClockUnresolved,
}

impl Flag {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Whether the flag marks a value as something other than a patient measurement: demonstration, test,
    /// control-solution, invalid or unavailable measurements and cuff-pressure progress.
    pub fn is_non_clinical(self) -> bool {
        matches!(
            self,
            Flag::DemonstrationData
                | Flag::TestingData
                | Flag::MeasurementUnavailable
                | Flag::InvalidMeasurement
                | Flag::ControlSolution
                | Flag::CuffPressureProgress
        )
    }
}

/// As the wire name, so logs and test failures read like the payload.
impl std::fmt::Debug for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl serde::Serialize for Flag {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// One measured quantity of a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub measure: &'static Measure,
    /// `None` exactly when `special` is set.
    pub value: Option<f64>,
    pub special: Option<Special>,
}

impl Value {
    /// A number; one with no JSON form (NaN, an infinity) becomes the special value that says so, so a
    /// payload never carries a null value without saying why.
    pub fn number(measure: &'static Measure, value: f64) -> Value {
        match value {
            _ if value.is_nan() => Value::special(measure, Special::NotANumber),
            f64::INFINITY => Value::special(measure, Special::PositiveInfinity),
            f64::NEG_INFINITY => Value::special(measure, Special::NegativeInfinity),
            _ => Value {
                measure,
                value: Some(value),
                special: None,
            },
        }
    }

    /// A number the device sent, or "missing" when it is the device's own no-data marker.
    pub fn reported(measure: &'static Measure, value: f64, missing: bool) -> Value {
        if missing {
            Value::special(measure, Special::Missing)
        } else {
            Value::number(measure, value)
        }
    }

    pub fn special(measure: &'static Measure, special: Special) -> Value {
        Value {
            measure,
            value: None,
            special: Some(special),
        }
    }
}

/// A decoded measurement, before the hub adds device identity and its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub kind: Kind,
    pub measured_at: DateTime<FixedOffset>,
    pub received_at: DateTime<Utc>,
    pub time_source: TimeSource,
    pub values: Vec<Value>,
    /// Quality and status flags, in a fixed order per decoder.
    pub flags: Vec<Flag>,
    /// The bytes of the source frame or packet.
    pub raw: Vec<u8>,
    /// The device's own user index (multi-user cuffs and scales), when it reports one; 0xFF (unknown user)
    /// is `None`.
    pub user_id: Option<u8>,
    /// The identity the device gives this record (its timestamp or sequence number plus what it measured), if any.
    /// Two decodes of the same stored record yield the same key; the hub derives the reading id from it.
    pub record_key: Option<String>,
    /// The device's time stamp exactly as it reported it (local wall time, no zone), when it sent one.
    pub device_time: Option<NaiveDateTime>,
    /// Whether the hub's clock was trusted when it received the bytes; the pipeline fills it in.
    pub hub_clock: HubClock,
    /// The device clock the hub read in this session, when it read one; the pipeline fills it in.
    pub device_clock: Option<DeviceClockCheck>,
    /// The receive instant on the boot-time clock, which a wall-clock step does not move; the pipeline fills
    /// it in. A reading received under an untrusted hub clock is resolved from it once the clock is trusted.
    pub received_since_boot: Option<BootInstant>,
    /// What further describes the measurement, such as its modality.
    pub supplemental: Vec<Supplemental>,
}

/// A supplemental type of a measurement (IEEE 11073 `MDC_ATTR_SUPPLEMENTAL_TYPES`), published in
/// `supplemental` by name and MDC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Supplemental {
    /// `MDC_MODALITY_SPOT`: a stable value, settled over several beats (a spot-check, or the hub's spot
    /// reading of a continuous stream), not a beat-to-beat one.
    ModalitySpot,
}

impl Supplemental {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn mdc(self) -> u32 {
        match self {
            Supplemental::ModalitySpot => 150_588,
        }
    }
}

/// An instant on the kernel's boot-time clock (`CLOCK_BOOTTIME`), which counts from boot, runs through
/// suspend, and is never stepped by NTP; meaningful only together with the id of the boot it counts from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BootInstant {
    pub boot_id: String,
    pub since_boot: std::time::Duration,
}

impl Reading {
    /// A reading stamped with the hub's receive time.
    pub fn at_hub_time(kind: Kind, received_at: DateTime<Utc>, raw: &[u8]) -> Reading {
        Reading {
            kind,
            measured_at: received_at.fixed_offset(),
            received_at,
            time_source: TimeSource::Hub,
            values: Vec::new(),
            flags: Vec::new(),
            raw: raw.to_vec(),
            user_id: None,
            record_key: None,
            device_time: None,
            hub_clock: HubClock::Trusted,
            device_clock: None,
            received_since_boot: None,
            supplemental: Vec::new(),
        }
    }

    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|v| v.measure.name == name)
    }

    /// Whether the reading is patient data for the clinical team. Demonstration, test, control-solution,
    /// invalid or unavailable measurements and cuff-pressure progress are not: the pipeline counts them
    /// (`readings_withheld` in `vitalsd status`) and logs them at debug level instead of publishing them.
    pub fn is_clinical(&self) -> bool {
        !self.flags.iter().any(|flag| flag.is_non_clinical())
    }
}

/// Resolves a device's wall-clock time (no zone on the wire) in the hub's time zone.
///
/// Passed into decoders so they stay free of I/O: production passes `chrono::Local`, tests a fixed offset.
pub trait HubTimeZone {
    /// `None` when the local time does not exist (a DST gap); an ambiguous time takes the earlier instant.
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<FixedOffset>>;

    /// An instant with this zone's offset at it.
    fn at(&self, instant: DateTime<Utc>) -> DateTime<FixedOffset>;
}

impl<Tz: TimeZone> HubTimeZone for Tz {
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<FixedOffset>> {
        // chrono orders the two instants of an ambiguous time by their offsets, not by when they happen,
        // so its `earliest` can be the later one; they are compared as instants here.
        match self.from_local_datetime(&local) {
            LocalResult::Single(time) => Some(time.fixed_offset()),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).fixed_offset()),
            LocalResult::None => None,
        }
    }

    fn at(&self, instant: DateTime<Utc>) -> DateTime<FixedOffset> {
        instant.with_timezone(self).fixed_offset()
    }
}

/// Flags as the decoder tests write them: their names, comma-separated.
#[cfg(test)]
pub(crate) fn joined(flags: &[Flag]) -> String {
    let names: Vec<&str> = flags.iter().map(|flag| flag.as_str()).collect();
    names.join(",")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use strum::IntoEnumIterator;

    use super::*;

    #[test]
    fn a_number_with_no_json_form_says_what_it_is() {
        let check = |number: f64, expected: (Option<f64>, Option<Special>)| {
            let value = Value::number(&crate::model::codes::SPO2, number);
            assert_eq!((value.value, value.special), expected, "{number}");
        };
        check(97.0, (Some(97.0), None));
        check(-0.5, (Some(-0.5), None));
        check(f64::NAN, (None, Some(Special::NotANumber)));
        check(f64::INFINITY, (None, Some(Special::PositiveInfinity)));
        check(f64::NEG_INFINITY, (None, Some(Special::NegativeInfinity)));
    }

    #[test]
    fn flag_names_are_unique_snake_case_and_serialise_as_themselves() {
        let mut names = HashSet::new();
        for flag in Flag::iter() {
            let name = flag.as_str();
            assert!(names.insert(name), "{name} twice");
            let snake = name.split('_').all(|word| {
                !word.is_empty()
                    && word
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            });
            assert!(snake, "{name} is not snake_case");
            assert_eq!(serde_json::to_string(&flag).unwrap(), format!("\"{name}\""));
        }
    }

    #[test]
    fn wire_names_follow_the_payload_and_keep_digits_inside_their_word() {
        assert_eq!(Flag::Spo2Dropping.as_str(), "spo2_dropping");
        assert_eq!(Flag::LowSpo2Alarm.as_str(), "low_spo2_alarm");
        assert_eq!(Special::PositiveInfinity.as_str(), "+inf");
        assert_eq!(Kind::BloodGlucose.as_str(), "blood_glucose");
        assert_eq!(TimeSource::Hub.as_str(), "hub");
        assert_eq!(HubClock::Unsynchronized.as_str(), "unsynchronized");
        assert_eq!(crate::decode::Transport::Ble.as_str(), "ble");
    }
}

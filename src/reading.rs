//! The normalised reading every decoder produces and every later stage consumes; pure data, no I/O.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};

use crate::codes::Measure;
use crate::measurement_time::{DeviceClockCheck, HubClock};

/// What a reading measures; also the last segment of its MQTT topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    BloodPressure,
    PulseOximetry,
    BodyWeight,
    BodyComposition,
    BloodGlucose,
    BodyTemperature,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::BloodPressure,
        Kind::PulseOximetry,
        Kind::BodyWeight,
        Kind::BodyComposition,
        Kind::BloodGlucose,
        Kind::BodyTemperature,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BloodPressure => "blood_pressure",
            Kind::PulseOximetry => "pulse_oximetry",
            Kind::BodyWeight => "body_weight",
            Kind::BodyComposition => "body_composition",
            Kind::BloodGlucose => "blood_glucose",
            Kind::BodyTemperature => "body_temperature",
        }
    }
}

/// Where `measured_at` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeSource {
    /// The device's own clock stamped the measurement.
    Device,
    /// The hub's receive time stands in, because the device has no usable clock.
    Hub,
}

impl TimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            TimeSource::Device => "device",
            TimeSource::Hub => "hub",
        }
    }
}

/// A device's way of saying "there is no number here"; published as `"value": null` plus `"special"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// The device's "no data" sentinel (Nonin HR 511 / SpO2 127, Masimo `---`), or a 0 no patient can have
    /// (SpO2, pulse rate, blood pressure, weight, body temperature, glucose): a device that sends one has no number.
    Missing,
    /// The device says it attempted no measurement or the measurement failed.
    NoMeasurement,
    /// IEEE 11073 NaN.
    NotANumber,
    /// IEEE 11073 NRes (not at this resolution).
    NotAtThisResolution,
    /// IEEE 11073 +INF.
    PositiveInfinity,
    /// IEEE 11073 -INF.
    NegativeInfinity,
    /// IEEE 11073 reserved value.
    Reserved,
}

impl Special {
    pub fn as_str(self) -> &'static str {
        match self {
            Special::Missing => "missing",
            Special::NoMeasurement => "no_measurement",
            Special::NotANumber => "nan",
            Special::NotAtThisResolution => "nres",
            Special::PositiveInfinity => "+inf",
            Special::NegativeInfinity => "-inf",
            Special::Reserved => "reserved",
        }
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
    pub fn number(measure: &'static Measure, value: f64) -> Value {
        Value {
            measure,
            value: Some(value),
            special: None,
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
    /// Quality and status flags, snake_case, in a fixed order per decoder.
    pub flags: Vec<&'static str>,
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
        }
    }

    pub fn value(&self, name: &str) -> Option<&Value> {
        self.values.iter().find(|v| v.measure.name == name)
    }

    /// Whether the reading is patient data for the clinical team. Demonstration, test, control-solution,
    /// invalid or unavailable measurements and cuff-pressure progress are not: the pipeline counts them
    /// (`readings_withheld` in `vitalsd status`) and logs them at debug level instead of publishing them.
    pub fn is_clinical(&self) -> bool {
        !self
            .flags
            .iter()
            .any(|flag| NON_CLINICAL_FLAGS.contains(flag))
    }
}

/// Flags that mark a decoded value as something other than a patient measurement.
pub const NON_CLINICAL_FLAGS: [&str; 6] = [
    "demonstration_data",
    "testing_data",
    "measurement_unavailable",
    "invalid_measurement",
    "control_solution",
    "cuff_pressure_progress",
];

/// Resolves a device's wall-clock time (no zone on the wire) in the hub's time zone.
///
/// Passed into decoders so they stay free of I/O: production passes `chrono::Local`, tests a fixed offset.
pub trait HubTimeZone {
    /// `None` when the local time does not exist (a DST gap); an ambiguous time takes the earlier instant.
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<FixedOffset>>;
}

impl<Tz: TimeZone> HubTimeZone for Tz {
    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<FixedOffset>> {
        self.from_local_datetime(&local)
            .earliest()
            .map(|t| t.fixed_offset())
    }
}

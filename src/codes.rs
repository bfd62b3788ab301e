//! Clinical codes: each measured quantity's value name, UCUM unit, IEEE 11073 MDC code and LOINC code; pure data.
//!
//! Names and codes are part of the public payload contract (`vitalsd.reading.v1`); the table follows
//! `operations.md` §6, and `codes_match_the_reference_table` keeps it honest.

/// One measurable quantity as it appears in a payload's `values[]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Measure {
    pub name: &'static str,
    pub unit: &'static str,
    pub mdc: u32,
    pub loinc: &'static str,
}

pub const SPO2: Measure = Measure {
    name: "spo2",
    unit: "%",
    mdc: 150456,
    loinc: "2708-6",
};
/// Pulse rate measured by a pulse oximeter (MDC_PULS_OXIM_PULS_RATE).
pub const PULSE_RATE_OXIMETER: Measure = Measure {
    name: "pulse_rate",
    unit: "/min",
    mdc: 149530,
    loinc: "8867-4",
};
/// Pulse rate measured by a blood pressure cuff (MDC_PULS_RATE_NON_INV).
pub const PULSE_RATE_CUFF: Measure = Measure {
    name: "pulse_rate",
    unit: "/min",
    mdc: 149546,
    loinc: "8867-4",
};
pub const SYSTOLIC: Measure = Measure {
    name: "systolic",
    unit: "mm[Hg]",
    mdc: 150021,
    loinc: "8480-6",
};
pub const DIASTOLIC: Measure = Measure {
    name: "diastolic",
    unit: "mm[Hg]",
    mdc: 150022,
    loinc: "8462-4",
};
pub const MEAN_ARTERIAL_PRESSURE: Measure = Measure {
    name: "mean_arterial_pressure",
    unit: "mm[Hg]",
    mdc: 150023,
    loinc: "8478-0",
};
pub const BODY_WEIGHT_KG: Measure = Measure {
    name: "body_weight",
    unit: "kg",
    mdc: 188736,
    loinc: "29463-7",
};
pub const BODY_TEMPERATURE_CEL: Measure = Measure {
    name: "body_temperature",
    unit: "Cel",
    mdc: 150364,
    loinc: "8310-5",
};

/// Every measure this build can publish; the payload schema test walks it.
pub const ALL: &[&Measure] = &[
    &SPO2,
    &PULSE_RATE_OXIMETER,
    &PULSE_RATE_CUFF,
    &SYSTOLIC,
    &DIASTOLIC,
    &MEAN_ARTERIAL_PRESSURE,
    &BODY_WEIGHT_KG,
    &BODY_TEMPERATURE_CEL,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(measure: &Measure, expected: (&str, &str, u32, &str)) {
        assert_eq!(
            (measure.name, measure.unit, measure.mdc, measure.loinc),
            expected
        );
    }

    #[test]
    fn codes_match_the_reference_table() {
        check(&SPO2, ("spo2", "%", 150456, "2708-6"));
        check(
            &PULSE_RATE_OXIMETER,
            ("pulse_rate", "/min", 149530, "8867-4"),
        );
        check(&PULSE_RATE_CUFF, ("pulse_rate", "/min", 149546, "8867-4"));
        check(&SYSTOLIC, ("systolic", "mm[Hg]", 150021, "8480-6"));
        check(&DIASTOLIC, ("diastolic", "mm[Hg]", 150022, "8462-4"));
        check(
            &MEAN_ARTERIAL_PRESSURE,
            ("mean_arterial_pressure", "mm[Hg]", 150023, "8478-0"),
        );
        check(&BODY_WEIGHT_KG, ("body_weight", "kg", 188736, "29463-7"));
        check(
            &BODY_TEMPERATURE_CEL,
            ("body_temperature", "Cel", 150364, "8310-5"),
        );
    }

    #[test]
    fn mdc_codes_are_partition_two_terms() {
        // Vital-sign codes live in the SCADA partition (2), so every code is 2 * 65536 + term.
        for measure in ALL {
            assert_eq!(
                measure.mdc >> 16,
                2,
                "{} has MDC {}",
                measure.name,
                measure.mdc
            );
        }
    }
}

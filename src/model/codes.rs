//! Clinical codes: each measured quantity's value name, UCUM unit, IEEE 11073 MDC code and LOINC code; pure data.
//!
//! Names and codes are part of the public payload contract (`vitalsd.reading.v1`); the table follows
//! `operations.md` §6, and `codes_match_the_reference_table` keeps it honest. A code that could not be
//! verified against a published value set is `None` (published as `null`) rather than guessed: a wrong
//! code is worse for a clinical backend than a missing one.

/// One measurable quantity as it appears in a payload's `values[]`.
#[derive(Debug, PartialEq, Eq)]
pub struct Measure {
    pub name: &'static str,
    pub unit: &'static str,
    pub mdc: Option<u32>,
    pub loinc: Option<&'static str>,
}

const fn measure(name: &'static str, unit: &'static str, mdc: u32, loinc: &'static str) -> Measure {
    Measure {
        name,
        unit,
        mdc: Some(mdc),
        loinc: Some(loinc),
    }
}

const fn uncoded(name: &'static str, unit: &'static str) -> Measure {
    Measure {
        name,
        unit,
        mdc: None,
        loinc: None,
    }
}

// Pulse oximetry.
pub const SPO2: Measure = measure("spo2", "%", 150456, "2708-6");
/// Pulse rate measured by a pulse oximeter (MDC_PULS_OXIM_PULS_RATE).
pub const PULSE_RATE_OXIMETER: Measure = measure("pulse_rate", "/min", 149530, "8867-4");
pub const PERFUSION_INDEX: Measure = uncoded("perfusion_index", "%");
/// The PLX Continuous "fast" and "slow" averages beside the normal one; no published code distinguishes them.
pub const SPO2_FAST: Measure = uncoded("spo2_fast", "%");
pub const PULSE_RATE_FAST: Measure = uncoded("pulse_rate_fast", "/min");
pub const SPO2_SLOW: Measure = uncoded("spo2_slow", "%");
pub const PULSE_RATE_SLOW: Measure = uncoded("pulse_rate_slow", "/min");

// Blood pressure; a cuff reports either mmHg or kPa and the unit it sent is kept.
pub const SYSTOLIC: Measure = measure("systolic", "mm[Hg]", 150021, "8480-6");
pub const DIASTOLIC: Measure = measure("diastolic", "mm[Hg]", 150022, "8462-4");
pub const MEAN_ARTERIAL_PRESSURE: Measure =
    measure("mean_arterial_pressure", "mm[Hg]", 150023, "8478-0");
pub const SYSTOLIC_KPA: Measure = measure("systolic", "kPa", 150021, "8480-6");
pub const DIASTOLIC_KPA: Measure = measure("diastolic", "kPa", 150022, "8462-4");
pub const MEAN_ARTERIAL_PRESSURE_KPA: Measure =
    measure("mean_arterial_pressure", "kPa", 150023, "8478-0");
/// Pulse rate measured by a blood pressure cuff (MDC_PULS_RATE_NON_INV).
pub const PULSE_RATE_CUFF: Measure = measure("pulse_rate", "/min", 149546, "8867-4");
/// The cuff pressure during inflation (Intermediate Cuff Pressure); progress, not a clinical reading.
pub const CUFF_PRESSURE: Measure = uncoded("cuff_pressure", "mm[Hg]");
pub const CUFF_PRESSURE_KPA: Measure = uncoded("cuff_pressure", "kPa");

// Weight and body composition.
pub const BODY_WEIGHT_KG: Measure = measure("body_weight", "kg", 188736, "29463-7");
pub const BODY_WEIGHT_LB: Measure = measure("body_weight", "[lb_av]", 188736, "29463-7");
pub const BODY_HEIGHT_M: Measure = measure("body_height", "m", 188740, "8302-2");
pub const BODY_HEIGHT_IN: Measure = measure("body_height", "[in_i]", 188740, "8302-2");
pub const BMI: Measure = measure("bmi", "kg/m2", 188752, "39156-5");
/// MDC_BODY_FAT is partition 2 term 57420; the LOINC code is not verified, so it is left out.
pub const BODY_FAT_PERCENTAGE: Measure = Measure {
    name: "body_fat_percentage",
    unit: "%",
    mdc: Some(188748),
    loinc: None,
};
pub const IMPEDANCE: Measure = uncoded("impedance", "Ohm");
pub const BASAL_METABOLISM: Measure = uncoded("basal_metabolism", "kJ");
pub const MUSCLE_PERCENTAGE: Measure = uncoded("muscle_percentage", "%");
pub const MUSCLE_MASS_KG: Measure = uncoded("muscle_mass", "kg");
pub const MUSCLE_MASS_LB: Measure = uncoded("muscle_mass", "[lb_av]");
pub const FAT_FREE_MASS_KG: Measure = uncoded("fat_free_mass", "kg");
pub const FAT_FREE_MASS_LB: Measure = uncoded("fat_free_mass", "[lb_av]");
pub const SOFT_LEAN_MASS_KG: Measure = uncoded("soft_lean_mass", "kg");
pub const SOFT_LEAN_MASS_LB: Measure = uncoded("soft_lean_mass", "[lb_av]");
pub const BODY_WATER_MASS_KG: Measure = uncoded("body_water_mass", "kg");
pub const BODY_WATER_MASS_LB: Measure = uncoded("body_water_mass", "[lb_av]");
pub const BODY_WATER_PERCENTAGE: Measure = uncoded("body_water_percentage", "%");
pub const BODY_FAT_MASS_KG: Measure = uncoded("body_fat_mass", "kg");
pub const BODY_FAT_MASS_LB: Measure = uncoded("body_fat_mass", "[lb_av]");
pub const BONE_MASS_KG: Measure = uncoded("bone_mass", "kg");
pub const BONE_MASS_LB: Measure = uncoded("bone_mass", "[lb_av]");
pub const BASAL_METABOLISM_KCAL: Measure = uncoded("basal_metabolism", "kcal");
/// Tanita's visceral fat rating, a dimensionless score (1–59).
pub const VISCERAL_FAT_RATING: Measure = uncoded("visceral_fat_rating", "{score}");
pub const METABOLIC_AGE: Measure = uncoded("metabolic_age", "a");

// Glucose: capillary whole blood by glucometer, in the unit the meter sent.
pub const GLUCOSE_MG_DL: Measure = measure("glucose", "mg/dL", 160184, "41653-7");
pub const GLUCOSE_MMOL_L: Measure = measure("glucose", "mmol/L", 160184, "14743-9");

// Temperature, unspecified site (the site, when the thermometer names one, goes into the flags).
pub const BODY_TEMPERATURE_CEL: Measure = measure("body_temperature", "Cel", 150364, "8310-5");
pub const BODY_TEMPERATURE_FAHRENHEIT: Measure =
    measure("body_temperature", "[degF]", 150364, "8310-5");

/// Every measure this build can publish; the payload schema test walks it.
pub const ALL: &[&Measure] = &[
    &SPO2,
    &PULSE_RATE_OXIMETER,
    &PERFUSION_INDEX,
    &SPO2_FAST,
    &PULSE_RATE_FAST,
    &SPO2_SLOW,
    &PULSE_RATE_SLOW,
    &SYSTOLIC,
    &DIASTOLIC,
    &MEAN_ARTERIAL_PRESSURE,
    &SYSTOLIC_KPA,
    &DIASTOLIC_KPA,
    &MEAN_ARTERIAL_PRESSURE_KPA,
    &PULSE_RATE_CUFF,
    &CUFF_PRESSURE,
    &CUFF_PRESSURE_KPA,
    &BODY_WEIGHT_KG,
    &BODY_WEIGHT_LB,
    &BODY_HEIGHT_M,
    &BODY_HEIGHT_IN,
    &BMI,
    &BODY_FAT_PERCENTAGE,
    &IMPEDANCE,
    &BASAL_METABOLISM,
    &MUSCLE_PERCENTAGE,
    &MUSCLE_MASS_KG,
    &MUSCLE_MASS_LB,
    &FAT_FREE_MASS_KG,
    &FAT_FREE_MASS_LB,
    &SOFT_LEAN_MASS_KG,
    &SOFT_LEAN_MASS_LB,
    &BODY_WATER_MASS_KG,
    &BODY_WATER_MASS_LB,
    &BODY_WATER_PERCENTAGE,
    &BODY_FAT_MASS_KG,
    &BODY_FAT_MASS_LB,
    &BONE_MASS_KG,
    &BONE_MASS_LB,
    &BASAL_METABOLISM_KCAL,
    &VISCERAL_FAT_RATING,
    &METABOLIC_AGE,
    &GLUCOSE_MG_DL,
    &GLUCOSE_MMOL_L,
    &BODY_TEMPERATURE_CEL,
    &BODY_TEMPERATURE_FAHRENHEIT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(measure: &Measure, expected: (&str, &str, Option<u32>, Option<&str>)) {
        assert_eq!(
            (measure.name, measure.unit, measure.mdc, measure.loinc),
            expected
        );
    }

    #[test]
    fn codes_match_the_reference_table() {
        check(&SPO2, ("spo2", "%", Some(150456), Some("2708-6")));
        check(
            &PULSE_RATE_OXIMETER,
            ("pulse_rate", "/min", Some(149530), Some("8867-4")),
        );
        check(
            &PULSE_RATE_CUFF,
            ("pulse_rate", "/min", Some(149546), Some("8867-4")),
        );
        check(
            &SYSTOLIC,
            ("systolic", "mm[Hg]", Some(150021), Some("8480-6")),
        );
        check(
            &DIASTOLIC,
            ("diastolic", "mm[Hg]", Some(150022), Some("8462-4")),
        );
        check(
            &MEAN_ARTERIAL_PRESSURE,
            (
                "mean_arterial_pressure",
                "mm[Hg]",
                Some(150023),
                Some("8478-0"),
            ),
        );
        check(
            &BODY_WEIGHT_KG,
            ("body_weight", "kg", Some(188736), Some("29463-7")),
        );
        check(
            &BODY_WEIGHT_LB,
            ("body_weight", "[lb_av]", Some(188736), Some("29463-7")),
        );
        check(
            &BODY_HEIGHT_M,
            ("body_height", "m", Some(188740), Some("8302-2")),
        );
        check(&BMI, ("bmi", "kg/m2", Some(188752), Some("39156-5")));
        check(
            &BODY_FAT_PERCENTAGE,
            ("body_fat_percentage", "%", Some(188748), None),
        );
        check(
            &GLUCOSE_MG_DL,
            ("glucose", "mg/dL", Some(160184), Some("41653-7")),
        );
        check(
            &GLUCOSE_MMOL_L,
            ("glucose", "mmol/L", Some(160184), Some("14743-9")),
        );
        check(
            &BODY_TEMPERATURE_CEL,
            ("body_temperature", "Cel", Some(150364), Some("8310-5")),
        );
    }

    #[test]
    fn mdc_codes_are_partition_two_terms() {
        // Vital-sign codes live in the SCADA partition (2), so every code is 2 * 65536 + term.
        for measure in ALL {
            if let Some(mdc) = measure.mdc {
                assert_eq!(mdc >> 16, 2, "{} has MDC {mdc}", measure.name);
            }
        }
    }

    #[test]
    fn names_are_snake_case_and_units_are_set() {
        for measure in ALL {
            assert!(measure
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
            assert!(!measure.unit.is_empty(), "{} has no unit", measure.name);
        }
    }
}

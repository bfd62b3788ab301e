//! The national code sets of the FHIR output: tables shipped as data (`config/fhir-codes/*.toml`), each
//! naming its sources and the choices it made where two receivers disagree.

use std::sync::LazyLock;

use serde::Deserialize;

/// The tables compiled in, by file: a table is data, but a hub must not start without the one it is
/// configured with, so they travel inside the binary.
const TABLES: [&str; 2] = [
    include_str!("../../config/fhir-codes/dk.toml"),
    include_str!("../../config/fhir-codes/no.toml"),
];

/// One national code set, such as `dk`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeSet {
    pub name: String,
    #[serde(default, rename = "coding")]
    codings: Vec<CodingRow>,
    #[serde(default, rename = "instrument")]
    instruments: Vec<InstrumentRow>,
}

/// A coding added to an Observation's `code` for an MDC code (and, where given, a unit).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodingRow {
    pub mdc: u32,
    pub unit: Option<String>,
    pub system: String,
    pub code: String,
    pub display: String,
    pub source: String,
}

/// An instrument code added to a PhdDevice's `type` for a device model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstrumentRow {
    manufacturer: String,
    model: String,
    system: String,
    code: String,
    #[allow(dead_code, reason = "documentation for the reader of the table")]
    source: String,
}

static CODE_SETS: LazyLock<Vec<CodeSet>> = LazyLock::new(|| {
    TABLES
        .iter()
        .map(|text| {
            toml::from_str(text).expect("invariant: the shipped code tables parse (tested)")
        })
        .collect()
});

/// The code set named `name`.
pub fn find(name: &str) -> Option<&'static CodeSet> {
    CODE_SETS.iter().find(|set| set.name == name)
}

/// The names of the shipped code sets, for error messages.
pub fn names() -> Vec<&'static str> {
    CODE_SETS.iter().map(|set| set.name.as_str()).collect()
}

impl CodeSet {
    /// The rows for a value of MDC code `mdc` in UCUM unit `unit`.
    pub fn codings<'a>(&'a self, mdc: u32, unit: &'a str) -> impl Iterator<Item = &'a CodingRow> {
        self.codings.iter().filter(move |row| {
            row.mdc == mdc && row.unit.as_deref().is_none_or(|wanted| wanted == unit)
        })
    }

    /// The instrument code (system, code) of a device model, if the table knows it.
    pub fn instrument(
        &self,
        manufacturer: Option<&str>,
        model: Option<&str>,
    ) -> Option<(&str, &str)> {
        let same =
            |a: &str, b: Option<&str>| b.is_some_and(|b| a.trim().eq_ignore_ascii_case(b.trim()));
        self.instruments
            .iter()
            .find(|row| same(&row.manufacturer, manufacturer) && same(&row.model, model))
            .map(|row| (row.system.as_str(), row.code.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_table_parses_names_itself_uniquely_and_cites_a_source() {
        let names = names();
        assert_eq!(names, ["dk", "no"]);
        for set in CODE_SETS.iter() {
            assert!(!set.codings.is_empty(), "{}", set.name);
            for row in &set.codings {
                assert!(!row.source.trim().is_empty(), "{} {}", set.name, row.code);
                assert!(!row.system.is_empty() && !row.code.is_empty());
            }
        }
    }

    fn check(set: &str, mdc: u32, unit: &str, expected: &[&str]) {
        let codes: Vec<&str> = find(set)
            .unwrap()
            .codings(mdc, unit)
            .map(|row| row.code.as_str())
            .collect();
        assert_eq!(codes, expected, "{set} {mdc} {unit}");
    }

    #[test]
    fn codings_are_found_by_code_and_unit() {
        check("dk", 150021, "mm[Hg]", &["MCS88019"]);
        // The MedCom codes name mmHg: a cuff set to kPa gets none.
        check("dk", 150022, "mm[Hg]", &["MCS88020"]);
        check("dk", 150022, "kPa", &[]);
        check("dk", 150456, "%", &["NPU03011"]);
        check("dk", 188736, "kg", &["NPU03804"]);
        // An NPU code names its unit: a weight in pounds or a glucose in mg/dL gets none.
        check("dk", 188736, "[lb_av]", &[]);
        check("dk", 160184, "mmol/L", &["NPU22089"]);
        check("dk", 160184, "mg/dL", &[]);
        check("no", 160184, "mmol/L", &["NPU02187"]);
        check("no", 150021, "mm[Hg]", &[]);
    }

    #[test]
    fn instruments_match_manufacturer_and_model_ignoring_case_and_padding() {
        let dk = find("dk").unwrap();
        assert_eq!(
            dk.instrument(Some("A&D Medical "), Some("ua-767pbt-ci")),
            Some(("urn:oid:1.2.208.184.100.3", "MCI00012"))
        );
        assert_eq!(dk.instrument(Some("A&D Medical"), Some("UA-651BLE")), None);
        assert_eq!(dk.instrument(None, Some("9560")), None);
    }
}

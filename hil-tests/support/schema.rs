//! The committed JSON Schemas (`schema/*.schema.json`), which every message a scenario reads must satisfy.

use std::sync::OnceLock;

/// Panics with every violation when `reading` does not satisfy `vitalsd.reading.v1`; the schema is compiled
/// once, as scenarios check thousands of readings.
pub fn assert_valid_reading(reading: &serde_json::Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| compile("vitalsd.reading.v1"));
    assert_satisfies(validator, "vitalsd.reading.v1", reading);
}

/// Panics with every violation when `document` does not satisfy the committed schema `name`.
pub fn assert_valid(name: &str, document: &serde_json::Value) {
    assert_satisfies(&compile(name), name, document);
}

fn compile(name: &str) -> jsonschema::Validator {
    let path = format!("{}/schema/{name}.schema.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn assert_satisfies(validator: &jsonschema::Validator, name: &str, document: &serde_json::Value) {
    let errors: Vec<String> = validator
        .iter_errors(document)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "document violates {name}: {errors:?}\n{document:#}"
    );
}

//! The committed JSON Schema of `vitalsd.reading.v1`, which every payload a scenario reads must satisfy.

use std::sync::OnceLock;

/// Panics with every violation when `reading` does not satisfy the schema.
pub fn assert_valid_reading(reading: &serde_json::Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../schema/vitalsd.reading.v1.schema.json"))
                .expect("schema is JSON");
        jsonschema::validator_for(&schema).expect("schema compiles")
    });
    let errors: Vec<String> = validator
        .iter_errors(reading)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(
        errors.is_empty(),
        "payload violates vitalsd.reading.v1: {errors:?}\n{reading:#}"
    );
}

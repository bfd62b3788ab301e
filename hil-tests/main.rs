//! The hardware-in-the-loop suite: the real `vitalsd` binary against a real Mosquitto, with simulated
//! devices behind real interfaces (pseudo-terminals), or real hardware when the environment names it.
//!
//! Hardware: set `VITALSD_HIL_SERIAL_PATH` (e.g. `/dev/serial/by-id/usb-Nonin...`) and
//! `VITALSD_HIL_SERIAL_PROTOCOL` (e.g. `nonin-df13`); the scenarios in `hardware.rs` then run against it.

#[allow(dead_code, reason = "shared with the benchmark, which uses the rest")]
mod support;

mod cli;
mod delivery;
mod faults;
mod hardware;
mod serial_link;
mod uplink_security;

use std::sync::OnceLock;

/// Validates a reading payload against the committed JSON Schema; every scenario's readings go through it.
pub fn assert_valid_reading(reading: &serde_json::Value) {
    static VALIDATOR: OnceLock<jsonschema::Validator> = OnceLock::new();
    let validator = VALIDATOR.get_or_init(|| {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/vitalsd.reading.v1.schema.json"))
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

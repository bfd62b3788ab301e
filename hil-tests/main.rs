//! The hardware-in-the-loop suite: the real `vitalsd` binary against a real Mosquitto, with simulated
//! devices behind real interfaces (pseudo-terminals), or real hardware when the environment names it.
//!
//! Hardware: set `VITALSD_HIL_SERIAL_PATH` (e.g. `/dev/serial/by-id/usb-Nonin...`) and
//! `VITALSD_HIL_SERIAL_PROTOCOL` (e.g. `nonin-df13`); the scenarios in `hardware.rs` then run against it.

#[allow(dead_code, reason = "shared with the benchmark, which uses the rest")]
mod support;

mod asyncapi;
mod bluetooth;
mod broker_refusal;
mod cli;
mod control_socket;
mod delivery;
mod disk_full;
mod faults;
mod fhir;
mod fleet;
mod hardware;
mod hub_clock;
mod mqtt5_properties;
mod serial_families;
mod serial_link;
mod service;
mod storage_damage;
mod uplink_security;

pub use support::schema::assert_valid_reading;

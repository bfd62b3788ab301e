//! vitalsd: a gateway daemon for remote patient monitoring.
//!
//! # Layout
//!
//! Data flows left to right; a module only depends on modules to its left.
//!
//! - `reading`, `codes`: the normalised reading and its clinical codes; pure data.
//! - `decode`: device protocols, bytes (and a receive time) in, readings out; sans I/O.
//! - `catalog`: one row per protocol (name, link, decoder, recognition); everything else reads it.
//! - `spot`: turns continuous streams into spot readings; sans I/O.
//! - `payload`: the public wire contract `vitalsd.reading.v1` (JSON) and reading ids.
//! - `config`: the validated configuration, loaded and checked in two stages.
//! - `download_checkpoints`: per device, which stored data was already fetched; small files in the state dir.
//! - `pipeline`: per device, transport bytes → decoder → spot filter → payload → outbox records; sans I/O.
//! - `outbox`: the crash-safe on-disk queue (SQLite); stores opaque records, knows no MQTT or devices.
//! - `held_readings`: releases readings held for a trusted hub clock, their times resolved.
//! - `serial`: the serial transport; opens ports, reads bytes, reopens after hot-unplug; `serial::device`
//!   drives a pipeline from a port and saves its download checkpoint.
//! - `mqtt`: the uplink; publishes outbox records and deletes them only after the broker's PUBACK.
//! - `app`: wiring; builds the tasks from the config, owns the channels and the shutdown signal.
//! - `cli`: the technician commands other than `run`.

pub mod app;
pub mod ble;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod codes;
pub mod config;
pub mod control;
pub mod decode;
pub mod hand_over;
pub mod held_readings;
pub mod measurement_time;
pub mod mqtt;
pub mod outbox;
pub mod payload;
pub mod pipeline;
pub mod reading;
pub mod serial;
pub mod serial_cli;
pub mod spot;
pub mod state;

#[cfg(test)]
mod tidy;

//! vitalsd: a gateway daemon for remote patient monitoring.
//!
//! The codemap, the layering and the invariants are in `ARCHITECTURE.md`; the `tidy` tests check that it
//! lists every module here and that the code keeps its order.

pub mod app;
pub mod ble;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod decode;
pub mod fleet;
pub mod hand_over;
pub mod held_readings;
pub mod log_tail;
pub mod model;
pub mod mqtt;
pub mod outbox;
pub mod pipeline;
pub mod serial;
pub mod spot;
pub mod state;

#[cfg(test)]
mod tidy;

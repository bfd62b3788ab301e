//! Fleet operations over MQTT: the retained twin, the events, and signed commands with their lifecycle
//! (README, "Fleet operations").

pub mod agent;
pub mod commands;
pub mod envelope;
pub mod journal;
pub mod twin;

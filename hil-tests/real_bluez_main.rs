//! The real-BlueZ suite (`real_bluez.rs`, the rig in `support/real_bluez/`) as a test target of its own:
//! cargo runs test targets one after another, so its VMs (TCG, CPU-bound) get the machine's cores to
//! themselves instead of sharing them with the other HIL scenarios. Under that load a cuff's `Connect`
//! took longer than the daemon's 20 s `CONNECT_TIMEOUT` and a scenario failed.

#[allow(dead_code, reason = "shared with the other HIL suites")]
mod support;

mod real_bluez;

pub use support::schema::assert_valid_reading;

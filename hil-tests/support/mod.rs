//! Test support for the HIL suite: a real Mosquitto per test, the real `vitalsd` binary, MQTT subscribers,
//! and simulated devices behind real pseudo-terminals.

pub mod bluez;
pub mod broker;
pub mod clock;
pub mod daemon;
pub mod nonin;
pub mod pty;
pub mod schema;
pub mod serial_devices;
pub mod subscriber;
pub mod usb;

use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

//! A Nonin 9560 simulator for trying vitalsd without hardware: a pseudo-terminal behind a by-id style
//! link that sends a Data Format 13 spot-check every few seconds, stamped with the current local time.
//!
//! `cargo run --example nonin-simulator -- target/quickstart/by-id/usb-Nonin_Medical_Inc._9560-if00-port0 5`

#[path = "support/nonin.rs"]
#[allow(dead_code)]
mod nonin;
#[path = "support/pty.rs"]
#[allow(dead_code, reason = "the simulator never unplugs")]
mod pty;

use std::time::Duration;

use chrono::{Datelike, Local, Timelike};

use nonin::SpotCheck;
use pty::SimulatedPort;

fn main() {
    let mut args = std::env::args().skip(1);
    let link = args.next().unwrap_or_else(|| {
        "target/quickstart/by-id/usb-Nonin_Medical_Inc._9560-if00-port0".to_string()
    });
    let every: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut port = SimulatedPort::plug_in(std::path::Path::new(&link));
    eprintln!("simulated Nonin 9560 plugged in at {link}; a spot-check every {every} s (Ctrl-C to unplug)");
    loop {
        let now = Local::now();
        let record = SpotCheck {
            time: (
                now.year() as u16,
                now.month() as u8,
                now.day() as u8,
                now.hour() as u8,
                now.minute() as u8,
                now.second() as u8,
            ),
            pulse_rate: 60 + fastrand::u16(0..25),
            spo2: 94 + fastrand::u8(0..5),
            from_memory: false,
        };
        port.write(&record.frame());
        eprintln!(
            "sent spot-check: SpO2 {} %, pulse {} /min",
            record.spo2, record.pulse_rate
        );
        std::thread::sleep(Duration::from_secs(every));
    }
}

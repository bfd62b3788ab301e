//! `cargo bench --bench plug`: from plugging in a known serial device to its first reading on the broker.
//!
//! A Nonin 9560 (Data Format 13) on a pseudo-terminal is plugged in behind its by-id link and sends a stored
//! spot-check at once, as the device does when it connects; the time until a subscriber has the reading is
//! measured over several plug-ins (`VITALSD_BENCH_PLUGS`, default 10). The daemon looks for a missing port
//! every second, so the expected figure is about that second plus the delivery latency.

#[path = "../hil-tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::broker::Broker;
use support::daemon::{DaemonWorld, SerialEntry};
use support::nonin::SpotCheck;
use support::pty::SimulatedPort;
use support::subscriber::Subscriber;

fn main() {
    let plugs: usize = std::env::var("VITALSD_BENCH_PLUGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let broker = Broker::start_volatile();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let link = world.by_id("usb-Nonin_Medical_Inc._9560-if00-port0");
    world.write_config(
        &broker.url(),
        &[],
        &[SerialEntry {
            path: link.clone(),
            protocol: "nonin-df13",
            id: None,
            extra: vec![],
        }],
    );
    let mut daemon = world.start();
    std::thread::sleep(Duration::from_secs(2));
    let mut times = Vec::new();
    for n in 0..plugs {
        let plugged = Instant::now();
        let mut port = SimulatedPort::plug_in(&link);
        port.write(&SpotCheck::numbered(n as u32 + 1).frame());
        while subscriber.unique_reading_ids().len() <= n
            && plugged.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        times.push(plugged.elapsed());
        port.unplug();
        // Let the daemon notice the unplug before the next plug-in.
        std::thread::sleep(Duration::from_millis(1500));
    }
    daemon.terminate();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("plug-in of a Nonin 9560 to its first reading on the broker, {plugs} plug-ins:");
    println!(
        "  median {:.0} ms, max {:.0} ms (target: ≤ 5 s plus the device's measurement time)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
    println!(
        "  delivered {} of {plugs}",
        subscriber.unique_reading_ids().len()
    );
}

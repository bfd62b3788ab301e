//! `cargo bench --bench plug`: from plugging in a known serial device to its first reading on the broker.
//!
//! A Nonin 9560 (Data Format 13) on a pseudo-terminal is plugged in behind its by-id link and sends a stored
//! spot-check at once, as the device does when it connects; the time until a subscriber has the reading is
//! measured over several plug-ins (`VITALSD_BENCH_PLUGS`, default 10). The daemon looks for a missing port
//! every second, so the expected figure is about that second plus the delivery latency.
//!
//! Then a Contec CMS50F, which the hub must talk to: plugged in with a new 20 s recording each time, the
//! time to the recording's first reading measures the whole dialog (stop the streams, session count, start,
//! length, data); plugged in with no recording, the time to the first live reading includes the 10 s the
//! spot rule waits for a steady finger, which is the device's own measurement time.

#[path = "../hil-tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::broker::Broker;
use support::daemon::{DaemonWorld, SerialEntry};
use support::nonin::SpotCheck;
use support::pty::SimulatedPort;
use support::serial_devices::{Contec, StoredSession};
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
    report("a Nonin 9560 to its first reading", &mut times);
    println!(
        "  delivered {} of {plugs}",
        subscriber.unique_reading_ids().len()
    );

    let (mut recorded, mut live) = contec_plug_ins(&broker, &subscriber, plugs);
    report(
        "a Contec CMS50F to the first reading of its new recording",
        &mut recorded,
    );
    println!("  delivered {} of {plugs}", recorded.len());
    report("a Contec CMS50F without a recording to its first live reading (10 s of it the spot rule's wait)", &mut live);
    println!("  delivered {} of {plugs}", live.len());
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

fn report(what: &str, times: &mut [Duration]) {
    if times.is_empty() {
        println!("plug-in of {what} on the broker: nothing delivered");
        return;
    }
    times.sort();
    println!("plug-in of {what} on the broker, {} plug-ins:", times.len());
    println!(
        "  median {:.0} ms, max {:.0} ms (target: ≤ 5 s plus the device's measurement time)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    );
}

/// Plugs a simulated CMS50F in `plugs` times with a new recording, then `plugs` times without one.
fn contec_plug_ins(
    broker: &Broker,
    subscriber: &Subscriber,
    plugs: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let world = DaemonWorld::new();
    let link =
        world.by_id("usb-Silicon_Labs_CP2102_USB_to_UART_Bridge_Controller_CMS50F-if00-port0");
    world.write_config(
        &broker.url(),
        &[],
        &[SerialEntry {
            path: link.clone(),
            protocol: "contec-cms50",
            id: None,
            extra: vec![],
        }],
    );
    let mut daemon = world.start();
    std::thread::sleep(Duration::from_secs(2));
    let contec_readings = |source: &str| {
        subscriber
            .readings()
            .iter()
            .filter(|r| r["device"]["protocol"] == "contec-cms50" && r["time_source"] == source)
            .count()
    };
    let measure = |recording: Option<StoredSession>, source: &str| {
        let before = contec_readings(source);
        let plugged = Instant::now();
        let mut contec = Contec::new(SimulatedPort::plug_in(&link));
        contec.sessions.extend(recording);
        while contec_readings(source) == before && plugged.elapsed() < Duration::from_secs(30) {
            contec.serve(97, 72);
        }
        let took = (contec_readings(source) > before).then(|| plugged.elapsed());
        contec.port.unplug();
        std::thread::sleep(Duration::from_millis(1500));
        took
    };
    let recorded = (0..plugs)
        .filter_map(|n| {
            let night = StoredSession {
                start: (2026, 11, 30, 22, n as u8),
                samples: vec![(95, 61); 20],
            };
            measure(Some(night), "device")
        })
        .collect();
    let live = (0..plugs).filter_map(|_| measure(None, "hub")).collect();
    daemon.terminate();
    (recorded, live)
}

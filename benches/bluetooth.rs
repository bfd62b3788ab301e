//! `cargo bench --bench bluetooth`: five simulated Bluetooth devices active at once against the real daemon,
//! the simulated BlueZ and one local Mosquitto. Prints readings expected, delivered and duplicated, the
//! daemon's peak RSS while the devices deliver, and its CPU use while the devices are bound but absent.
//!
//! `VITALSD_BENCH_IDLE_S` sets the idle measurement (default 60 s).

#[path = "../hil-tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use support::bluez::devices::{
    self, blood_pressure_record, date_time, glucose_record, spot_check_record, temperature_record,
    weight_record,
};
use support::bluez::BluezSim;
use support::broker::Broker;
use support::daemon::DaemonWorld;
use support::subscriber::Subscriber;

const DEVICES: [&str; 5] = [
    "AA:BB:CC:DD:EE:01",
    "AA:BB:CC:DD:EE:02",
    "AA:BB:CC:DD:EE:03",
    "AA:BB:CC:DD:EE:04",
    "AA:BB:CC:DD:EE:05",
];

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().unwrap();
    let stime: u64 = fields[12].parse().unwrap();
    utime + stime
}

fn main() {
    let idle_seconds = std::env::var("VITALSD_BENCH_IDLE_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60u64);
    let broker = Broker::start_volatile();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    world.write_config(&broker.url(), &[], &[]);
    world.append_config("[ble]\nadapter = \"hci0\"\n");
    let sim = BluezSim::start();
    let [cuff, oximeter, scale, meter, thermometer] = DEVICES;
    sim.add_device(cuff, devices::and_cuff());
    sim.add_device(oximeter, devices::oximeter());
    sim.add_device(scale, devices::scale());
    sim.add_device(meter, devices::glucose_meter());
    sim.add_device(thermometer, devices::thermometer());
    let day = |i: u16| date_time(2024, 3, 1 + (i / 60) as u8 % 28, 6, (i % 60) as u8, 0);
    sim.store_records(
        cuff,
        0x2A35,
        &(0..30)
            .map(|i| blood_pressure_record(120 + i % 20, 80, 93, 60, day(i)))
            .collect::<Vec<_>>(),
    );
    sim.store_records(
        oximeter,
        0x2A5E,
        &(0..20)
            .map(|i| spot_check_record(95 + i % 4, 60 + i, day(i)))
            .collect::<Vec<_>>(),
    );
    sim.store_records(
        scale,
        0x2A9D,
        &(0..20)
            .map(|i| weight_record(16_000 + i, day(i)))
            .collect::<Vec<_>>(),
    );
    sim.device(meter, |m| {
        m.glucose_records = (1..=100)
            .map(|seq| (seq, glucose_record(seq, day(seq), 80 + seq % 40)))
            .collect()
    });
    sim.store_records(
        thermometer,
        0x2A1C,
        &(0..20)
            .map(|i| temperature_record(365 + u32::from(i % 10), day(i)))
            .collect::<Vec<_>>(),
    );
    let expected = 30 + 20 + 20 + 100 + 20;
    let env = [("DBUS_SYSTEM_BUS_ADDRESS", sim.bus_address())];
    for address in DEVICES {
        let output = world.command_with_env(&["pair", address], &env);
        assert!(
            output.status.success(),
            "pair {address}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let mut daemon = world.start_with_env(&env);
    let started = Instant::now();
    let mut peak_kib = 0;
    while subscriber.unique_reading_ids().len() < expected
        && started.elapsed() < Duration::from_secs(120)
    {
        // Live values keep the oximeter's continuous characteristic busy meanwhile.
        sim.notify(oximeter, 0x2A5F, &[0x00, 0x62, 0x00, 0x48, 0x00]);
        peak_kib = peak_kib.max(daemon.memory_kib().0);
        std::thread::sleep(Duration::from_millis(200));
    }
    let delivered = subscriber.unique_reading_ids().len();
    let published = subscriber.readings().len();
    let collect_time = started.elapsed();
    peak_kib = peak_kib.max(daemon.memory_kib().0);

    for address in DEVICES {
        sim.set_in_range(address, false);
        sim.disconnect(address);
    }
    std::thread::sleep(Duration::from_secs(5));
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(daemon.pid());
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(idle_seconds));
    let used = (cpu_ticks(daemon.pid()) - before) as f64 / ticks_per_second;
    let idle_cpu = 100.0 * used / idle_started.elapsed().as_secs_f64();
    let idle_rss = daemon.memory_kib().1;
    daemon.terminate();

    println!("five simulated Bluetooth devices at once (cuff, oximeter, scale, glucose meter, thermometer):");
    println!("  stored records expected  {expected} (+ live oximeter spots)");
    println!(
        "  delivered (unique ids)   {delivered} in {:.1} s",
        collect_time.as_secs_f64()
    );
    println!(
        "  duplicates published     {}",
        published.saturating_sub(delivered)
    );
    println!(
        "  peak RSS                 {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!("idle, devices bound but absent, {idle_seconds} s:");
    println!("  CPU                      {idle_cpu:.2} % of one core");
    println!(
        "  RSS                      {:.1} MiB",
        idle_rss as f64 / 1024.0
    );
}

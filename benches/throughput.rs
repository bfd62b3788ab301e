//! `cargo bench`: the figures behind the README's targets, measured in one run against one local Mosquitto.
//!
//! (a) a raw rumqttc QoS 1 publisher, wide window, same payload size: the physical limit of this stack here;
//! (b) `vitalsd` draining 100,000 readings from its outbox, deleting only acknowledged ones, with its peak RSS;
//! (c) durable ingest of a 10,000-record burst written to a pseudo-terminal;
//! (d) latency from a frame written on the pseudo-terminal to the message reaching a subscriber.
//!
//! Sizes can be lowered for a quick look: `VITALSD_BENCH_DRAIN=20000 cargo bench`; `VITALSD_BENCH_ONLY=drain`
//! stops after (b), `VITALSD_BENCH_WINDOW=N` sets the daemon's `mqtt.window`, and
//! `VITALSD_BENCH_BROKER_INFLIGHT=N` the broker's `max_inflight_messages` (its MQTT 5 Receive Maximum), and
//! `VITALSD_BENCH_PROTOCOL=3.1.1` the daemon's `mqtt.protocol`, `VITALSD_BENCH_FOLD_LOG_SECONDS=N` its
//! `outbox.fold_log_seconds` for the drain.

#[path = "../hil-tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use support::broker::Broker;
use support::daemon::DaemonWorld;
use support::nonin::SpotCheck;
use support::subscriber::Subscriber;
use vitalsd::outbox::{NewRecord, Outbox, OutboxOptions};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let drain_count = env_or("VITALSD_BENCH_DRAIN", 100_000);
    let ingest_count = env_or("VITALSD_BENCH_INGEST", 10_000);
    let latency_count = env_or("VITALSD_BENCH_LATENCY", 300);
    let payload = sample_payload(0);
    println!(
        "vitalsd benchmark: payload {} bytes, {} cores",
        payload.len(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    // Mosquitto announces its `max_inflight_messages` (20 by default) to MQTT 5 clients as Receive Maximum,
    // which caps the daemon's window; `VITALSD_BENCH_BROKER_INFLIGHT=N` sets it, to measure that apart.
    let broker = match std::env::var("VITALSD_BENCH_BROKER_INFLIGHT") {
        Ok(n) => Broker::start_with(false, &[&format!("max_inflight_messages {n}")]),
        Err(_) => Broker::start_volatile(),
    };
    // The machine is shared and noisy, so (a) and (b) alternate for a few rounds and the medians are compared.
    let rounds = env_or("VITALSD_BENCH_ROUNDS", 5);
    let (mut raw_rates, mut raw5_rates, mut drain_rates, mut peaks, mut idles) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut raw5_cpus, mut drain_cpus, mut removal_cpus) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        raw_rates.push(raw_publisher_rate(broker.port, drain_count, payload.len()));
        let (raw5_rate, raw5_cpu) = raw_v5_publisher_rate(broker.port, drain_count, payload.len());
        raw5_rates.push(raw5_rate);
        raw5_cpus.push(raw5_cpu);
        let (drain_rate, drain_cpu, removal_cpu, peak_kib, idle_kib) =
            vitalsd_drain_rate(&broker, drain_count);
        drain_rates.push(drain_rate);
        drain_cpus.push(drain_cpu);
        removal_cpus.push(removal_cpu);
        peaks.push(peak_kib);
        idles.push(idle_kib);
    }
    let samples = |rates: &[f64]| {
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (raw_rate, raw5_rate, drain_rate) = (
        median(&raw_rates),
        median(&raw5_rates),
        median(&drain_rates),
    );
    println!(
        "(a) raw rumqttc QoS 1 publisher, inflight 100:   {raw_rate:>10.0} msg/s (median of {})",
        samples(&raw_rates)
    );
    println!(
        "(a5) the same over MQTT 5 (broker's Receive Max): {raw5_rate:>10.0} msg/s (median of {})",
        samples(&raw5_rates)
    );
    println!("(b) vitalsd outbox drain of {drain_count} readings:   {drain_rate:>10.0} msg/s (median of {})", samples(&drain_rates));
    println!(
        "    ratio of the medians, drain / raw MQTT 5:   {:>10.2}  (target >= 0.80)",
        drain_rate / raw5_rate
    );
    println!(
        "    ratio of the medians, drain / raw 3.1.1:    {:>10.2}",
        drain_rate / raw_rate
    );
    // Processor time per message is far steadier than rates on a shared machine: it is what a message
    // costs, whatever else the machine does meanwhile.
    println!(
        "    CPU per message, raw MQTT 5 client / daemon: {:>6.2} / {:.2} us (medians)",
        median(&raw5_cpus),
        median(&drain_cpus)
    );
    println!(
        "    CPU per message removing the acknowledged rows once quiet, after the drain: {:.2} us (median)",
        median(&removal_cpus)
    );
    let peak_kib = peaks.iter().copied().max().unwrap_or(0);
    let idle_kib = idles.iter().copied().max().unwrap_or(0);
    println!(
        "    vitalsd peak RSS while draining (max):      {:>10.1} MiB (target <= 16)",
        peak_kib as f64 / 1024.0
    );
    println!(
        "    vitalsd RSS right after draining (max):     {:>10.1} MiB",
        idle_kib as f64 / 1024.0
    );
    let idle_kib = idle_rss(&broker);
    println!(
        "    vitalsd RSS idle (fresh daemon, one port):  {:>10.1} MiB (target <= 10)",
        idle_kib as f64 / 1024.0
    );

    if std::env::var("VITALSD_BENCH_ONLY").is_ok_and(|v| v == "drain") {
        return;
    }
    let ingest_rate = durable_ingest_rate(ingest_count);
    println!("(c) durable ingest of a {ingest_count}-record burst:   {ingest_rate:>10.0} readings/s (target >= 5000)");

    let (p50, p99) = frame_to_subscriber_latency(&broker, latency_count);
    println!("(d) frame-to-subscriber latency over {latency_count} frames: p50 {:.1} ms, p99 {:.1} ms (target p99 <= 50)",
        p50.as_secs_f64() * 1000.0, p99.as_secs_f64() * 1000.0);
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// A realistic reading payload, as the daemon would store it.
/// The topic of the daemon's readings in the drain (hub `hub-test`, a pulse oximeter), which the raw
/// publishers use too.
const READING_TOPIC: &str = "vitalsd/v1/hub-test/readings/pulse_oximetry";

fn sample_payload(n: u32) -> Vec<u8> {
    let record = SpotCheck::numbered(n);
    let context = vitalsd::decode::DecodeContext::trusted(chrono::Utc::now(), &chrono::Utc);
    let mut decoder = vitalsd::decode::Protocol::NoninDf13.new_decoder();
    let Some(vitalsd::decode::DecodeEvent::Reading(reading)) =
        decoder.feed(&record.frame(), &context).into_iter().next()
    else {
        panic!("the simulator's frame did not decode");
    };
    let device = vitalsd::model::payload::DeviceInfo {
        id: "serial:usb-Nonin_9560-if00-port0".to_string(),
        transport: vitalsd::model::payload::Transport::Serial,
        protocol: "nonin-df13",
        identity: Default::default(),
        specialization: Some(528_388),
    };
    let id = vitalsd::model::payload::reading_id(&device.id, &reading, 0);
    vitalsd::model::payload::to_json("hub-bench", &id, &device, &reading)
}

fn raw_publisher_rate(port: u16, count: usize, payload_size: usize) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut options = MqttOptions::new("bench-raw", "127.0.0.1", port);
        options.set_inflight(100);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        loop {
            if let Event::Incoming(Incoming::ConnAck(_)) = eventloop.poll().await.expect("connect")
            {
                break;
            }
        }
        let payload = vec![b'x'; payload_size];
        let publisher = tokio::spawn(async move {
            for _ in 0..count {
                client
                    .publish(READING_TOPIC, QoS::AtLeastOnce, false, payload.clone())
                    .await
                    .expect("publish");
            }
            client
        });
        let started = Instant::now();
        let mut acked = 0;
        while acked < count {
            if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.expect("poll") {
                acked += 1;
            }
        }
        let elapsed = started.elapsed();
        drop(publisher.await);
        count as f64 / elapsed.as_secs_f64()
    })
}

/// (a5): the raw publisher over MQTT 5, which, like the daemon, keeps no more in flight than the broker's
/// Receive Maximum allows. Returns its rate and its processor time per message in microseconds (all of it
/// runs on this thread).
fn raw_v5_publisher_rate(port: u16, count: usize, payload_size: usize) -> (f64, f64) {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as QoS5;
    use rumqttc::v5::{AsyncClient as Client5, Event as Event5, MqttOptions as Options5};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let mut options = Options5::new("bench-raw-5", "127.0.0.1", port);
        options.set_outgoing_inflight_upper_limit(100);
        options.set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = Client5::new(options, 1000);
        loop {
            if let Event5::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.expect("connect") {
                break;
            }
        }
        let payload = vec![b'x'; payload_size];
        let publisher = tokio::spawn(async move {
            for _ in 0..count {
                // The message the daemon sends: a topic of the same shape and the `schema` user
                // property, so the broker does the same work for both.
                let properties = PublishProperties {
                    user_properties: vec![(
                        "schema".to_string(),
                        vitalsd::model::payload::SCHEMA_NAME.to_string(),
                    )],
                    ..PublishProperties::default()
                };
                client
                    .publish_with_properties(
                        READING_TOPIC,
                        QoS5::AtLeastOnce,
                        false,
                        payload.clone(),
                        properties,
                    )
                    .await
                    .expect("publish");
            }
            client
        });
        let started = Instant::now();
        let cpu_started = thread_cpu();
        let mut acked = 0;
        while acked < count {
            if let Event5::Incoming(Packet::PubAck(_)) = eventloop.poll().await.expect("poll") {
                acked += 1;
            }
        }
        let elapsed = started.elapsed();
        let cpu = thread_cpu() - cpu_started;
        drop(publisher.await);
        (
            count as f64 / elapsed.as_secs_f64(),
            cpu.as_secs_f64() * 1e6 / count as f64,
        )
    })
}

/// The processor time this thread has used.
fn thread_cpu() -> Duration {
    let mut time = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `time` is a valid timespec for the call to fill.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    assert_eq!(result, 0, "clock_gettime");
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

/// The processor time a process has used, all its threads, from `/proc` (in clock ticks of 10 ms).
fn process_cpu(pid: u32) -> Duration {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// The processor time of the process's thread called `name` (the outbox worker's is `outbox`).
fn named_thread_cpu(pid: u32, name: &str) -> Duration {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read /proc task")
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .map(|task| stat_cpu(&task.path().join("stat").display().to_string()))
        .sum()
}

fn stat_cpu(path: &str) -> Duration {
    let stat = std::fs::read_to_string(path).expect("read /proc stat");
    // The command name in parentheses may hold spaces; the fields after it are plain.
    let after_name = &stat[stat.rfind(')').expect("stat has a name") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}

/// The drain's rate, the daemon's processor time per message in microseconds during the drain and while
/// it removes the acknowledged rows afterwards, and its peak and idle RSS.
fn vitalsd_drain_rate(broker: &Broker, count: usize) -> (f64, f64, f64, u64, u64) {
    let world = DaemonWorld::new();
    let window = std::env::var("VITALSD_BENCH_WINDOW")
        .ok()
        .map(|w| format!("window = {w}"));
    let protocol = std::env::var("VITALSD_BENCH_PROTOCOL")
        .ok()
        .map(|p| format!("protocol = \"{p}\""));
    let extra: Vec<&str> = window.iter().chain(&protocol).map(String::as_str).collect();
    world.write_config(&broker.url(), &extra, &[]);
    if let Ok(seconds) = std::env::var("VITALSD_BENCH_FOLD_LOG_SECONDS") {
        world.append_config(&format!("[outbox]\nfold_log_seconds = {seconds}\n"));
    }
    std::fs::create_dir_all(world.state_dir()).unwrap();
    {
        let (mut outbox, _) = Outbox::open(
            &world.outbox_path(),
            OutboxOptions {
                max_pending: u64::MAX,
            },
            0,
        )
        .unwrap();
        let template = sample_payload(0);
        for start in (0..count).step_by(1000) {
            let batch: Vec<NewRecord> = (start..(start + 1000).min(count))
                .map(|i| NewRecord {
                    key: format!("bench-{i}"),
                    label: "pulse_oximetry".to_string(),
                    format: 1,
                    payload: template.clone(),
                    created_at_ms: i as i64,
                    held: false,
                })
                .collect();
            outbox.append(&batch).unwrap();
        }
    }
    let status = Subscriber::start(broker.port, "vitalsd/v1/+/status");
    let daemon = world.start();
    let online = support::wait_until(Duration::from_secs(30), || {
        status
            .messages()
            .iter()
            .any(|m| m.json()["state"] == "online")
    });
    assert!(online, "vitalsd did not connect: {}", world.log());
    let started = status
        .messages()
        .iter()
        .find(|m| m.json()["state"] == "online")
        .unwrap()
        .arrived;
    let cpu_started = process_cpu(daemon.pid());
    let outbox_cpu_started = named_thread_cpu(daemon.pid(), "outbox");
    let drained = support::wait_until(Duration::from_secs(600), || outbox_is_empty(&world));
    assert!(drained, "drain did not finish: {}", world.log());
    let elapsed = started.elapsed();
    let cpu = process_cpu(daemon.pid()) - cpu_started;
    let outbox_cpu = named_thread_cpu(daemon.pid(), "outbox") - outbox_cpu_started;
    println!(
        "    this round's drain: {:.2} us of daemon CPU per message, {:.2} us of it on the outbox thread",
        cpu.as_secs_f64() * 1e6 / count as f64,
        outbox_cpu.as_secs_f64() * 1e6 / count as f64
    );
    let removed = support::wait_until(Duration::from_secs(120), || outbox_has_no_rows(&world));
    assert!(
        removed,
        "the acknowledged rows were not removed: {}",
        world.log()
    );
    let removal_cpu = process_cpu(daemon.pid()) - cpu_started - cpu;
    let (peak, _) = daemon.memory_kib();
    std::thread::sleep(Duration::from_secs(3));
    let (_, idle) = daemon.memory_kib();
    (
        count as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / count as f64,
        removal_cpu.as_secs_f64() * 1e6 / count as f64,
        peak,
        idle,
    )
}

/// Resident memory of a daemon with one serial port and a connected broker, doing nothing.
fn idle_rss(broker: &Broker) -> u64 {
    let world = DaemonWorld::new();
    let _port = world.with_nonin_9560(&broker.url());
    let daemon = world.start();
    std::thread::sleep(Duration::from_secs(3));
    daemon.memory_kib().1
}

/// Whether the daemon has removed every row, acknowledged ones included.
fn outbox_has_no_rows(world: &DaemonWorld) -> bool {
    let connection = rusqlite::Connection::open(world.outbox_path()).unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    !connection
        .query_row("SELECT EXISTS (SELECT 1 FROM record)", [], |row| {
            row.get::<_, bool>(0)
        })
        .unwrap_or(true)
}

/// Rows below this seq were acknowledged; the daemon removes them once it is quiet.
const ACKNOWLEDGED_BELOW: &str =
    "coalesce((SELECT value FROM stat WHERE name = 'acknowledged_below'), 0)";

/// Whether the outbox holds no record the broker has not acknowledged. It reads one index entry, unlike
/// `count(*)`, which reads the whole table: at 100,000 records polled every 20 ms that took most of a
/// core from the daemon it measured.
fn outbox_is_empty(world: &DaemonWorld) -> bool {
    let connection = rusqlite::Connection::open(world.outbox_path()).unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    !connection
        .query_row(
            &format!("SELECT EXISTS (SELECT 1 FROM record WHERE seq >= {ACKNOWLEDGED_BELOW})"),
            [],
            |row| row.get::<_, bool>(0),
        )
        .unwrap_or(true)
}

fn pending(world: &DaemonWorld) -> i64 {
    let connection = rusqlite::Connection::open(world.outbox_path()).unwrap();
    connection.busy_timeout(Duration::from_secs(5)).unwrap();
    connection
        .query_row(
            &format!("SELECT count(*) FROM record WHERE seq >= {ACKNOWLEDGED_BELOW}"),
            [],
            |row| row.get(0),
        )
        .unwrap_or(0)
}

fn durable_ingest_rate(count: usize) -> f64 {
    // No broker: the outbox only fills, so counting its rows measures ingest alone.
    let world = DaemonWorld::new();
    // A leased port nobody listens on, held until the measurement ends.
    let away = support::lease_port();
    let mut port = world.with_nonin_9560(&format!("mqtt://127.0.0.1:{}", away.port));
    let _daemon = world.start();
    assert!(support::wait_until(Duration::from_secs(10), || world
        .outbox_path()
        .exists()));
    std::thread::sleep(Duration::from_millis(500));
    let mut burst = Vec::new();
    for n in 0..count as u32 {
        burst.extend(SpotCheck::numbered(n).frame());
    }
    let started = Instant::now();
    port.write(&burst);
    let done = support::wait_until(Duration::from_secs(120), || {
        pending(&world) as usize >= count
    });
    assert!(
        done,
        "ingest did not finish: {} of {count}",
        pending(&world)
    );
    count as f64 / started.elapsed().as_secs_f64()
}

fn frame_to_subscriber_latency(broker: &Broker, count: usize) -> (Duration, Duration) {
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/+/readings/#");
    let world = DaemonWorld::new();
    let mut port = world.with_nonin_9560(&broker.url());
    let _daemon = world.start();
    // A first reading proves the path is up before timing starts.
    port.write(&SpotCheck::numbered(1_000_000).frame());
    assert!(
        subscriber.wait_for_unique_readings(1, Duration::from_secs(30)),
        "{}",
        world.log()
    );
    let mut written = std::collections::HashMap::new();
    for n in 0..count as u32 {
        let record = SpotCheck::numbered(n);
        written.insert(record.measured_at_utc(), Instant::now());
        port.write(&record.frame());
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(subscriber.wait_for_unique_readings(count + 1, Duration::from_secs(60)));
    let mut latencies: Vec<Duration> = subscriber
        .messages()
        .iter()
        .filter_map(|m| {
            let at = m.json()["measured_at"].as_str()?.to_string();
            written.get(&at).map(|sent| m.arrived.duration_since(*sent))
        })
        .collect();
    latencies.sort();
    let pick = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize)
            .saturating_sub(1)
            .min(latencies.len() - 1)]
    };
    (pick(0.50), pick(0.99))
}

//! `cargo bench --bench fleet`: a fleet of real `vitalsd` processes, one simulated Nonin oximeter on a
//! pseudo-terminal each, against one local Mosquitto. The hubs connect; the broker stops (SIGTERM, so it
//! saves the subscriber's session); every oximeter then sends its backlog, which each hub stores; the
//! broker starts again and the benchmark measures how long until every reading reached the subscriber,
//! how many were lost or came twice, the most reconnections the broker saw in one second (the hubs'
//! jittered backoff spreads them), and the hubs' total memory.
//!
//! The hubs run the shipped reconnect settings (`reconnect_min_ms` 500, `reconnect_max_s` 60).
//! `VITALSD_BENCH_HUBS` (default 200) and `VITALSD_BENCH_BACKLOG` (default 1000) set the sizes.

#[path = "../hil-tests/support/mod.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::broker::Broker;
use support::daemon::{Daemon, DaemonWorld};
use support::nonin::SpotCheck;
use support::pty::SimulatedPort;
use support::subscriber::Subscriber;
use support::wait_until;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Hub {
    world: DaemonWorld,
    port: SimulatedPort,
    daemon: Daemon,
}

fn main() {
    let hubs = env_or("VITALSD_BENCH_HUBS", 200);
    let backlog = env_or("VITALSD_BENCH_BACKLOG", 1000);
    println!(
        "fleet benchmark: {hubs} hubs, {backlog} readings of backlog each, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // Persistent, so the subscriber's session (and what is queued for it) survives the restart; connection
    // notices with epoch timestamps, to count reconnections per second.
    let mut broker = Broker::start_with(
        true,
        &[
            "log_type notice",
            "connection_messages true",
            "log_timestamp true",
        ],
    );
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/+/readings/#");
    let started = Instant::now();
    let mut fleet: Vec<Hub> = (0..hubs)
        .map(|index| {
            let mut world = DaemonWorld::new();
            world.hub_id = format!("hub-{index:04}");
            let port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
            let config = format!(
                "[hub]\nid = \"{}\"\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nclock = \"trusted\"\n\n\
                 [mqtt]\nurl = \"{}\"\n\n[ble]\nenabled = false\n\n\
                 [[serial]]\npath = \"{}\"\nprotocol = \"nonin-df13\"\nid = \"oximeter-{index:04}\"\n",
                world.hub_id,
                world.state_dir().display(),
                world.runtime_dir().display(),
                broker.url(),
                port.link().display()
            );
            std::fs::write(world.config_path(), config).expect("write config");
            let daemon = world.start_with_env(&[("RUST_LOG", "info")]);
            Hub {
                world,
                port,
                daemon,
            }
        })
        .collect();
    let online = wait_until(Duration::from_secs(300), || {
        // The hubs and the subscriber.
        connected_clients(&broker.log()) > hubs
    });
    assert!(online, "not every hub connected:\n{}", tail(&broker.log()));
    println!(
        "started and connected {hubs} hubs in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    broker.stop();
    let filling = Instant::now();
    for (index, hub) in fleet.iter_mut().enumerate() {
        for n in 0..backlog {
            // A reading's id comes from its device id and record, not the hub: each hub's oximeter has an
            // id of its own (in the field, a by-id name with the device's serial number).
            hub.port
                .write(&SpotCheck::numbered((index * backlog + n) as u32).frame());
        }
    }
    let stored = wait_until(Duration::from_secs(600), || {
        fleet
            .iter()
            .all(|hub| support::daemon::outbox_keys(&hub.world.outbox_path()).len() >= backlog)
    });
    assert!(stored, "not every hub stored its backlog");
    println!(
        "{} readings written to {hubs} pseudo-terminals and stored in {:.1} s",
        hubs * backlog,
        filling.elapsed().as_secs_f64()
    );

    let log_before = broker.log().len();
    let restart = Instant::now();
    let restart_epoch = chrono::Utc::now().timestamp();
    broker.restart();
    let expected = hubs * backlog;
    let mut last = (0, Instant::now());
    let delivered = wait_until(Duration::from_secs(600), || {
        let count = subscriber.unique_reading_count();
        if count != last.0 {
            last = (count, Instant::now());
        }
        // Nothing new for a minute after the outboxes emptied: what is missing will not come.
        count >= expected || (last.1.elapsed() > Duration::from_secs(60) && outboxes_empty(&fleet))
    }) && subscriber.unique_reading_count() >= expected;
    let drain = restart.elapsed();
    let counts = subscriber.reading_counts();
    let unique = counts.len();
    let arrivals: usize = counts.values().sum();
    let emptied = wait_until(Duration::from_secs(60), || outboxes_empty(&fleet));
    let log = broker.log();
    let out_of_memory = log[log_before..]
        .matches("disconnected due to out of memory")
        .count();
    println!("hub connections the broker closed \"due to out of memory\": {out_of_memory}");
    let per_second = connections_per_second(&log[log_before..]);
    let peak = per_second.values().max().copied().unwrap_or(0);
    let busiest = per_second
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or(0, |(s, _)| s - restart_epoch);
    let rss_kib: u64 = fleet.iter().map(|hub| hub.daemon.memory_kib().1).sum();
    // A copy the broker sends again to the subscriber after the subscriber's own reconnection carries the
    // DUP flag; it says nothing about the hubs, which are measured by the rest.
    let redelivered = subscriber.redelivered();
    println!(
        "after the restart: every reading delivered {} in {:.1} s; lost {}; duplicates sent by hubs {}; \
         outboxes emptied: {emptied}",
        if delivered { "yes" } else { "NO" },
        drain.as_secs_f64(),
        expected.saturating_sub(unique),
        (arrivals - unique).saturating_sub(redelivered)
    );
    println!(
        "the subscriber: {} connections ({:?}), {redelivered} copies the broker sent it again",
        subscriber.connections(),
        subscriber.errors()
    );
    println!(
        "reconnections: {} in {} s, at most {peak} in one second ({} s after the restart)",
        per_second.values().sum::<usize>(),
        per_second.len(),
        busiest
    );
    println!(
        "total RSS of the {hubs} hubs: {:.1} MiB ({:.1} MiB each)",
        rss_kib as f64 / 1024.0,
        rss_kib as f64 / 1024.0 / hubs as f64
    );
    drop(fleet);
}

fn outboxes_empty(fleet: &[Hub]) -> bool {
    fleet
        .iter()
        .all(|hub| support::daemon::outbox_keys(&hub.world.outbox_path()).is_empty())
}

/// Clients that connected so far, by the broker's log.
fn connected_clients(log: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("New client connected"))
        .count()
}

/// Connections of hubs per second (epoch seconds), by the broker's log.
fn connections_per_second(log: &str) -> BTreeMap<i64, usize> {
    let mut seconds = BTreeMap::new();
    for line in log
        .lines()
        .filter(|line| line.contains("New client connected") && line.contains("vitalsd-hub-"))
    {
        if let Some(at) = line
            .split(':')
            .next()
            .and_then(|t| t.trim().parse::<i64>().ok())
        {
            *seconds.entry(at).or_insert(0) += 1;
        }
    }
    seconds
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

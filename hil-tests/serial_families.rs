//! The serial device families besides Nonin, each on its own pseudo-terminal, end to end to a subscriber:
//! Contec CMS50 (both protocols, the newer one started and kept alive by the hub), Masimo ASCII, Tanita.

use std::time::{Duration, Instant};

use crate::support::broker::Broker;
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::pty::SimulatedPort;
use crate::support::serial_devices::{
    contec_legacy_packet, masimo_line, tanita_line, Contec, StoredSession,
};
use crate::support::subscriber::Subscriber;
use crate::support::wait_until;

const START_LIVE: [u8; 9] = [0x7D, 0x81, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
const KEEP_ALIVE: [u8; 9] = [0x7D, 0x81, 0xAF, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn entry(port: &SimulatedPort, protocol: &'static str) -> SerialEntry {
    SerialEntry {
        path: port.link().to_path_buf(),
        protocol,
        id: None,
        extra: vec![],
    }
}

fn readings_of(subscriber: &Subscriber, protocol: &str) -> Vec<serde_json::Value> {
    subscriber
        .readings()
        .into_iter()
        .filter(|r| r["device"]["protocol"] == protocol)
        .collect()
}

fn value(reading: &serde_json::Value, name: &str) -> f64 {
    reading["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == name)
        .and_then(|v| v["value"].as_f64())
        .unwrap_or_else(|| panic!("no {name} in {reading}"))
}

#[test]
fn every_family_on_its_own_port_at_once_delivers_the_right_values() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut legacy =
        SimulatedPort::plug_in(&world.by_id("usb-Silicon_Labs_CP2102_CMS50D-if00-port0"));
    let mut contec = Contec::new(SimulatedPort::plug_in(
        &world.by_id("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"),
    ));
    let mut masimo = SimulatedPort::plug_in(&world.by_id("usb-FTDI_Rad-8-if00-port0"));
    let mut tanita = SimulatedPort::plug_in(&world.by_id("usb-FTDI_Tanita_BC-418-if00-port0"));
    world.write_config(
        &broker.url(),
        &[],
        &[
            entry(&legacy, "contec-cms50-legacy"),
            entry(&contec.port, "contec-cms50"),
            entry(&masimo, "masimo-ascii"),
            entry(&tanita, "tanita"),
        ],
    );
    let _daemon = world.start();
    std::thread::sleep(Duration::from_secs(2));
    tanita.write(&tanita_line(80.0, 22.5));

    // Fifteen seconds of one sample a second from each oximeter, with the pulse above 127 on the Contecs.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) {
        legacy.write(&contec_legacy_packet(97, 131));
        masimo.write(&masimo_line(96, 74));
        let second = Instant::now();
        while second.elapsed() < Duration::from_secs(1) {
            contec.serve(98, 140);
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || [
            "contec-cms50-legacy",
            "contec-cms50",
            "masimo-ascii"
        ]
        .iter()
        .all(|p| !readings_of(&subscriber, p).is_empty())),
        "readings: {:?}\nlog:\n{}",
        subscriber.readings(),
        world.log()
    );
    let legacy_spot = &readings_of(&subscriber, "contec-cms50-legacy")[0];
    assert_eq!(
        (value(legacy_spot, "spo2"), value(legacy_spot, "pulse_rate")),
        (97.0, 131.0)
    );
    let contec_spot = &readings_of(&subscriber, "contec-cms50")[0];
    assert_eq!(
        (value(contec_spot, "spo2"), value(contec_spot, "pulse_rate")),
        (98.0, 140.0)
    );
    let masimo_spot = &readings_of(&subscriber, "masimo-ascii")[0];
    assert_eq!(
        (value(masimo_spot, "spo2"), value(masimo_spot, "pulse_rate")),
        (96.0, 74.0)
    );
    assert_eq!(masimo_spot["time_source"], "hub");
    assert_eq!(masimo_spot["flags"], serde_json::json!(["set_mode"]));

    let tanita_readings = readings_of(&subscriber, "tanita");
    assert_eq!(tanita_readings.len(), 2, "{tanita_readings:?}");
    let weight = tanita_readings
        .iter()
        .find(|r| r["kind"] == "body_weight")
        .unwrap();
    assert_eq!(value(weight, "body_weight"), 80.0);
    let composition = tanita_readings
        .iter()
        .find(|r| r["kind"] == "body_composition")
        .unwrap();
    assert_eq!(value(composition, "body_fat_percentage"), 22.5);
    assert_eq!(value(composition, "impedance"), 512.0);
    assert_eq!(
        composition["flags"],
        serde_json::json!([]),
        "the checksum matched"
    );

    // The hub started the Contec's stream and kept it alive.
    assert_eq!(
        count(&contec.received, &START_LIVE),
        1,
        "{:02x?}",
        contec.received
    );
    assert!(
        count(&contec.received, &KEEP_ALIVE) >= 2,
        "{:02x?}",
        contec.received
    );
    for reading in subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
}

#[test]
fn a_contec_whose_stream_stops_is_started_again() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut contec = Contec::new(SimulatedPort::plug_in(
        &world.by_id("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"),
    ));
    contec.forgetful = true;
    world.write_config(&broker.url(), &[], &[entry(&contec.port, "contec-cms50")]);
    let _daemon = world.start();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25)
        && readings_of(&subscriber, "contec-cms50").is_empty()
    {
        let second = Instant::now();
        while second.elapsed() < Duration::from_secs(1) {
            contec.serve(95, 66);
        }
    }
    let starts = count(&contec.received, &START_LIVE);
    assert!(
        starts >= 2,
        "the stream was started {starts} time(s); log:\n{}",
        world.log()
    );
    assert!(world.log().contains("starting its stream again"));
    let readings = readings_of(&subscriber, "contec-cms50");
    assert!(
        !readings.is_empty(),
        "a spot reading from the restarted stream; log:\n{}",
        world.log()
    );
}

#[test]
fn noise_at_the_wrong_baud_rate_never_becomes_a_reading() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut ports: Vec<(SimulatedPort, &'static str)> = [
        "contec-cms50-legacy",
        "contec-cms50",
        "masimo-ascii",
        "tanita",
        "nonin-df8",
    ]
    .into_iter()
    .map(|protocol| {
        (
            SimulatedPort::plug_in(&world.by_id(&format!("usb-noise-{protocol}"))),
            protocol,
        )
    })
    .collect();
    let entries: Vec<SerialEntry> = ports
        .iter()
        .map(|(port, protocol)| entry(port, protocol))
        .collect();
    world.write_config(&broker.url(), &[], &entries);
    let _daemon = world.start();
    std::thread::sleep(Duration::from_secs(1));
    // What a device at another line speed looks like: a steady stream of random bytes.
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        for (port, _) in &mut ports {
            let noise: Vec<u8> = (0..600)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            port.write(&noise);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        subscriber.readings().is_empty(),
        "bogus readings: {:?}",
        subscriber.readings()
    );
    let status = world.status();
    let skipped: u64 = ports
        .iter()
        .map(|(port, _)| {
            let id = format!(
                "serial:{}",
                port.link().file_name().unwrap().to_string_lossy()
            );
            status["counters"][format!("bytes_skipped.{id}")]
                .as_u64()
                .unwrap_or(0)
                + status["counters"][format!("frames_rejected.{id}")]
                    .as_u64()
                    .unwrap_or(0)
        })
        .sum();
    assert!(skipped > 0, "the noise was counted: {status}");
}

#[test]
fn a_tanita_unplugged_mid_line_is_read_again_when_it_returns() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut tanita = SimulatedPort::plug_in(&world.by_id("usb-FTDI_Tanita_BC-418-if00-port0"));
    world.write_config(&broker.url(), &[], &[entry(&tanita, "tanita")]);
    let _daemon = world.start();
    std::thread::sleep(Duration::from_secs(2));
    let line = tanita_line(71.3, 19.0);
    tanita.write(&line[..20]);
    std::thread::sleep(Duration::from_millis(300));
    tanita.unplug();
    std::thread::sleep(Duration::from_secs(2));
    tanita.plug();
    // The daemon polls for the port every second.
    std::thread::sleep(Duration::from_secs(3));
    tanita.write(&line);
    assert!(
        wait_until(Duration::from_secs(10), || readings_of(
            &subscriber,
            "tanita"
        )
        .len()
            == 2),
        "log:\n{}",
        world.log()
    );
    let weight = readings_of(&subscriber, "tanita")
        .into_iter()
        .find(|r| r["kind"] == "body_weight")
        .unwrap();
    assert_eq!(value(&weight, "body_weight"), 71.3);
}

/// Writes Nonin DF8 frames once a second for `seconds` on another thread, handing the port back after.
fn stream_df8(mut port: SimulatedPort, seconds: u64) -> std::thread::JoinHandle<SimulatedPort> {
    std::thread::spawn(move || {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(seconds) {
            port.write(&crate::support::nonin::df8_frame(72, 97, false));
            std::thread::sleep(Duration::from_millis(500));
        }
        port
    })
}

#[test]
fn a_port_found_by_its_usb_ids_is_listed_recognised_and_read_even_after_moving_socket() {
    use crate::support::usb::FakeUsb;
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let usb = FakeUsb::new(&world.dir.path().join("usb"));
    let port = SimulatedPort::plug_in(&world.by_id("pty-nonin"));
    usb.plug("ttyUSB0", 0x0403, 0x6001, "A10K2", port.link());
    let env_owned = usb.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // The technician's view: the adapter, its ids, its by-id path, and the protocol heard on it.
    world.write_config(&broker.url(), &[], &[]);
    let streaming = stream_df8(port, 5);
    let output = world.command_with_env(&["serial", "--json", "--listen", "2"], &env);
    let port = streaming.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(listed["vid"], "0403");
    assert_eq!(listed["pid"], "6001");
    assert_eq!(listed["serial_number"], "A10K2");
    assert!(listed["by_id"]
        .as_str()
        .unwrap()
        .ends_with("usb-FTDI_FT232R_USB_UART_A10K2-if00-port0"));
    assert_eq!(listed["protocol"], "nonin-df8", "{listed}");

    // The configuration names the port by USB identity, not by path.
    world.append_config(
        "[[serial]]\nmatch = { vid = 0x0403, pid = 0x6001 }\nprotocol = \"nonin-df8\"\n",
    );
    let _daemon = world.start_with_env(&env);
    let port = stream_df8(port, 13).join().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !readings_of(
            &subscriber,
            "nonin-df8"
        )
        .is_empty()),
        "log:\n{}",
        world.log()
    );
    let reading = &readings_of(&subscriber, "nonin-df8")[0];
    assert_eq!(reading["device"]["id"], "serial:usb-0403-6001");

    // Unplugged and plugged into another socket: a new tty name, the same ids.
    let mut port = port;
    usb.unplug("ttyUSB0", "A10K2");
    port.unplug();
    std::thread::sleep(Duration::from_secs(2));
    port.plug();
    usb.plug("ttyUSB3", 0x0403, 0x6001, "A10K2", port.link());
    let _port = stream_df8(port, 14).join().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || readings_of(
            &subscriber,
            "nonin-df8"
        )
        .len()
            >= 2),
        "log:\n{}",
        world.log()
    );
}

#[test]
fn a_nonin_9560_is_asked_for_the_configured_data_format_when_the_port_opens() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut port = SimulatedPort::plug_in(&world.by_id("usb-Nonin_9560-if00-port0"));
    world.write_config(
        &broker.url(),
        &[],
        &[SerialEntry {
            path: port.link().to_path_buf(),
            protocol: "nonin-df8",
            id: None,
            extra: vec!["select_format = true".to_string()],
        }],
    );
    let _daemon = world.start();
    let received = port.read_for(Duration::from_secs(5));
    assert_eq!(
        received,
        [0x02, 0x70, 0x02, 0x02, 0x08, 0x03],
        "{received:02x?}"
    );
    // The device acknowledges and streams Data Format 8.
    port.write(&[0x06]);
    let port = stream_df8(port, 13).join().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || !readings_of(
            &subscriber,
            "nonin-df8"
        )
        .is_empty()),
        "log:\n{}",
        world.log()
    );
    drop(port);
}

/// A night the oximeter recorded: 22:00:00 on 2026-11-30, 700 s of SpO2 94 and pulse 131 (above 127, so
/// the high bits matter), then 60 s without a finger.
fn recorded_night() -> StoredSession {
    let mut samples = vec![(94, 131); 700];
    samples.extend(vec![(0x7F, 0xFF); 60]);
    StoredSession {
        start: (2026, 11, 30, 22, 0),
        samples,
    }
}

/// The spots of [`recorded_night`] on the device's timeline: 10 s into the night, then every 5 minutes.
const NIGHT_SPOTS: [&str; 3] = [
    "2026-11-30T22:00:10+00:00",
    "2026-11-30T22:05:10+00:00",
    "2026-11-30T22:10:10+00:00",
];

/// The Contec's readings with this `time_source`: `device` for recorded ones, `hub` for live ones.
fn contec_readings(subscriber: &Subscriber, source: &str) -> Vec<serde_json::Value> {
    readings_of(subscriber, "contec-cms50")
        .into_iter()
        .filter(|r| r["time_source"] == source)
        .collect()
}

fn measured_times(readings: &[serde_json::Value]) -> Vec<&str> {
    readings
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap())
        .collect()
}

#[test]
fn a_contec_stored_night_arrives_once_with_device_times_then_the_live_stream() {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut contec = Contec::new(SimulatedPort::plug_in(
        &world.by_id("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"),
    ));
    contec.sessions = vec![recorded_night()];
    world.write_config(&broker.url(), &[], &[entry(&contec.port, "contec-cms50")]);
    let mut daemon = world.start_with_env(&[("TZ", "UTC")]);
    let stored = |subscriber: &Subscriber| contec_readings(subscriber, "device");
    let live = |subscriber: &Subscriber| contec_readings(subscriber, "hub");
    contec.serve_until(Duration::from_secs(30), 97, 72, || {
        !live(&subscriber).is_empty()
    });
    assert!(
        !live(&subscriber).is_empty(),
        "no live reading after the download; log:\n{}",
        world.log()
    );
    // The spot rule ran on the device's timeline: a spot 10 s into the night, then every 5 minutes.
    let night = stored(&subscriber);
    assert_eq!(measured_times(&night), NIGHT_SPOTS, "log:\n{}", world.log());
    for reading in &night {
        assert_eq!(
            (value(reading, "spo2"), value(reading, "pulse_rate")),
            (94.0, 131.0)
        );
        assert_eq!(reading["flags"], serde_json::json!(["stored_session"]));
        crate::assert_valid_reading(reading);
    }
    assert_eq!(
        (
            value(&live(&subscriber)[0], "spo2"),
            value(&live(&subscriber)[0], "pulse_rate")
        ),
        (97.0, 72.0)
    );
    assert_eq!(contec.downloads, [0], "the night was downloaded once");

    // Unplugged, the daemon restarted, plugged in again: the night is known and not fetched again, and
    // the live stream resumes.
    contec.port.unplug();
    daemon.terminate();
    contec.port.plug();
    let live_before = live(&subscriber).len();
    let _daemon = world.start_with_env(&[("TZ", "UTC")]);
    contec.serve_until(Duration::from_secs(30), 96, 70, || {
        live(&subscriber).len() > live_before
    });
    assert!(
        live(&subscriber).len() > live_before,
        "no live reading after the restart; log:\n{}",
        world.log()
    );
    assert_eq!(contec.downloads, [0], "log:\n{}", world.log());
    assert_eq!(
        count(&contec.received, &[0x7D, 0x81, 0xA3]),
        2,
        "the hub asked for the session count on each connection"
    );
    assert_eq!(stored(&subscriber).len(), 3);
}

#[test]
fn a_damaged_contec_download_publishes_nothing_and_the_retry_delivers_the_night_with_the_right_times(
) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let mut contec = Contec::new(SimulatedPort::plug_in(
        &world.by_id("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"),
    ));
    contec.sessions = vec![recorded_night()];
    contec.damage_next_download = true;
    world.write_config(&broker.url(), &[], &[entry(&contec.port, "contec-cms50")]);
    let _daemon = world.start_with_env(&[("TZ", "UTC")]);
    let stored = |subscriber: &Subscriber| contec_readings(subscriber, "device");
    contec.serve_until(Duration::from_secs(30), 97, 72, || {
        stored(&subscriber).len() >= 3
    });
    assert_eq!(contec.downloads, [0, 0], "log:\n{}", world.log());
    assert_eq!(
        measured_times(&stored(&subscriber)),
        NIGHT_SPOTS,
        "log:\n{}",
        world.log()
    );
    assert!(
        world.log().contains("damaged on the line"),
        "log:\n{}",
        world.log()
    );
}

//! The serial device families besides Nonin, each on its own pseudo-terminal, end to end to a subscriber:
//! Contec CMS50 (both protocols, the newer one started and kept alive by the hub), Masimo ASCII, Tanita.

use std::time::{Duration, Instant};

use crate::support::daemon::{Daemon, SerialEntry};
use crate::support::nonin::df8_frame;
use crate::support::pty::SimulatedPort;
use crate::support::rig::Lab;
use crate::support::serial_devices::{
    contec_legacy_packet, masimo_line, tanita_line, Contec, StoredSession,
};
use crate::support::subscriber::Subscriber;
use crate::support::{wait_for, wait_until};

const START_LIVE: [u8; 9] = [0x7D, 0x81, 0xA1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];
const KEEP_ALIVE: [u8; 9] = [0x7D, 0x81, 0xAF, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80];

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

fn entry(port: &SimulatedPort, protocol: &'static str) -> SerialEntry {
    SerialEntry::of(port, protocol)
}

/// Waits until the daemon holds every one of `ports` open, so that what a device sends next is read.
fn wait_all_opened<'a>(daemon: &Daemon, ports: impl IntoIterator<Item = &'a SimulatedPort>) {
    for port in ports {
        daemon.wait_opened(port, Duration::from_secs(10));
    }
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
    let lab = Lab::new();
    let mut legacy = lab.plug_in("usb-Silicon_Labs_CP2102_CMS50D-if00-port0");
    let mut contec = Contec::new(lab.plug_in("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"));
    let mut masimo = lab.plug_in("usb-FTDI_Rad-8-if00-port0");
    let mut tanita = lab.plug_in("usb-FTDI_Tanita_BC-418-if00-port0");
    lab.configure(&[
        entry(&legacy, "contec-cms50-legacy"),
        entry(&contec.port, "contec-cms50"),
        entry(&masimo, "masimo-ascii"),
        entry(&tanita, "tanita"),
    ]);
    let daemon = lab.world.start();
    wait_all_opened(&daemon, [&legacy, &contec.port, &masimo, &tanita]);
    tanita.write(&tanita_line(80.0, 22.5));

    // One sample a second from each oximeter, with the pulse above 127 on the Contecs, until each has
    // given a spot and the hub has kept the Contec's stream alive twice.
    let oximeters = ["contec-cms50-legacy", "contec-cms50", "masimo-ascii"];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(40)
        && !(oximeters.iter().all(|p| !lab.readings_of(p).is_empty())
            && count(&contec.received, &KEEP_ALIVE) >= 2)
    {
        legacy.write(&contec_legacy_packet(97, 131));
        masimo.write(&masimo_line(96, 74));
        // The simulated Contec answers for a second: the pace of the devices.
        let second = Instant::now();
        while second.elapsed() < Duration::from_secs(1) {
            contec.serve(98, 140);
        }
    }
    assert!(
        oximeters.iter().all(|p| !lab.readings_of(p).is_empty()),
        "readings: {:?}\nlog:\n{}",
        lab.subscriber.readings(),
        lab.world.log()
    );
    let legacy_spot = &lab.readings_of("contec-cms50-legacy")[0];
    assert_eq!(
        (value(legacy_spot, "spo2"), value(legacy_spot, "pulse_rate")),
        (97.0, 131.0)
    );
    let contec_spot = &lab.readings_of("contec-cms50")[0];
    assert_eq!(
        (value(contec_spot, "spo2"), value(contec_spot, "pulse_rate")),
        (98.0, 140.0)
    );
    let masimo_spot = &lab.readings_of("masimo-ascii")[0];
    assert_eq!(
        (value(masimo_spot, "spo2"), value(masimo_spot, "pulse_rate")),
        (96.0, 74.0)
    );
    assert_eq!(masimo_spot["time_source"], "hub");
    assert_eq!(masimo_spot["flags"], serde_json::json!(["set_mode"]));

    let tanita_readings = lab.readings_of("tanita");
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
    for reading in lab.subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
}

#[test]
fn a_contec_whose_stream_stops_is_started_again() {
    let lab = Lab::new();
    let mut contec = Contec::new(lab.plug_in("usb-Silicon_Labs_CP2102_CMS50F-if00-port0"));
    contec.forgetful = true;
    lab.configure(&[entry(&contec.port, "contec-cms50")]);
    let _daemon = lab.world.start();
    contec.serve_until(Duration::from_secs(25), 95, 66, || {
        !lab.readings_of("contec-cms50").is_empty()
    });
    let starts = count(&contec.received, &START_LIVE);
    assert!(
        starts >= 2,
        "the stream was started {starts} time(s); log:\n{}",
        lab.world.log()
    );
    assert!(
        !lab.readings_of("contec-cms50").is_empty(),
        "a spot reading from the restarted stream; log:\n{}",
        lab.world.log()
    );
}

#[test]
fn noise_at_the_wrong_baud_rate_never_becomes_a_reading() {
    let lab = Lab::new();
    let mut ports: Vec<(SimulatedPort, &'static str)> = [
        "contec-cms50-legacy",
        "contec-cms50",
        "masimo-ascii",
        "tanita",
        "nonin-df8",
    ]
    .into_iter()
    .map(|protocol| (lab.plug_in(&format!("usb-noise-{protocol}")), protocol))
    .collect();
    // A scale that hears no noise gives the sentinel reading at the end.
    let mut sentinel = lab.plug_in("usb-FTDI_Tanita_BC-418-if00-port0");
    let mut entries: Vec<SerialEntry> = ports
        .iter()
        .map(|(port, protocol)| entry(port, protocol))
        .collect();
    entries.push(entry(&sentinel, "tanita"));
    lab.configure(&entries);
    let daemon = lab.world.start();
    wait_all_opened(&daemon, ports.iter().map(|(port, _)| port));
    // What a device at another line speed looks like: a steady stream of random bytes, for longer than the
    // spot rule's 10 s, so that noise which happened to look steady would have become a spot.
    let mut noise = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        for (port, _) in &mut ports {
            let bytes: Vec<u8> = (0..600).map(|_| noise.u8(..)).collect();
            port.write(&bytes);
        }
        // The pace of the simulated devices.
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for(
        "vitalsd to read all the noise",
        Duration::from_secs(20),
        || ports.iter().all(|(port, _)| port.unread() == 0),
        || lab.world.log(),
    );
    // Whatever the noise became was queued before the sentinel's two readings.
    sentinel.write(&tanita_line(75.0, 20.0));
    assert!(
        lab.subscriber
            .wait_for_unique_readings(2, Duration::from_secs(20)),
        "no sentinel reading; log:\n{}",
        lab.world.log()
    );
    let readings = lab.subscriber.readings();
    assert!(
        readings
            .iter()
            .all(|r| r["device"]["id"] == "serial:usb-FTDI_Tanita_BC-418-if00-port0"),
        "bogus readings: {readings:?}"
    );
    let status = lab.world.status();
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
    let lab = Lab::new();
    let mut tanita = lab.plug_in("usb-FTDI_Tanita_BC-418-if00-port0");
    lab.configure(&[entry(&tanita, "tanita")]);
    let daemon = lab.world.start();
    daemon.wait_opened(&tanita, Duration::from_secs(10));
    let line = tanita_line(71.3, 19.0);
    tanita.write(&line[..20]);
    wait_for(
        "vitalsd to read the first half of the line",
        Duration::from_secs(10),
        || tanita.unread() == 0,
        || lab.world.log(),
    );
    let tty = tanita.tty().to_path_buf();
    tanita.unplug();
    daemon.wait_closed(&tty, Duration::from_secs(10));
    tanita.plug();
    daemon.wait_opened(&tanita, Duration::from_secs(10));
    tanita.write(&line);
    assert!(
        wait_until(Duration::from_secs(10), || lab.readings_of("tanita").len()
            == 2),
        "log:\n{}",
        lab.world.log()
    );
    let weight = lab
        .readings_of("tanita")
        .into_iter()
        .find(|r| r["kind"] == "body_weight")
        .unwrap();
    assert_eq!(value(&weight, "body_weight"), 71.3);
}

/// Writes Nonin DF8 frames twice a second (the device sends one; the simulator is a little faster) until
/// `done` holds or `timeout` passes; returns whether `done` held.
fn stream_df8_until(
    port: &mut SimulatedPort,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    wait_until(timeout, || {
        port.write(&df8_frame(72, 97, false));
        // The pace of the simulated device, not a wait for the daemon.
        std::thread::sleep(Duration::from_millis(500));
        done()
    })
}

/// Names the port by its USB ids in the configuration, starts the daemon on `usb`'s fake sysfs, and
/// returns it with the first reading the streaming Nonin gave.
fn start_matched(
    lab: &Lab,
    usb: &crate::support::usb::FakeUsb,
    port: &mut SimulatedPort,
    (vid, pid): (u16, u16),
) -> (Daemon, serde_json::Value) {
    lab.world.append_config(&format!(
        "[[serial]]\nmatch = {{ vid = {vid:#06x}, pid = {pid:#06x} }}\nprotocol = \"nonin-df8\"\n"
    ));
    let env = usb.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let daemon = lab.world.start_with_env(&env);
    assert!(
        stream_df8_until(port, Duration::from_secs(30), || {
            !lab.readings_of("nonin-df8").is_empty()
        }),
        "log:\n{}",
        lab.world.log()
    );
    (daemon, lab.readings_of("nonin-df8").remove(0))
}

#[test]
fn a_port_found_by_its_usb_ids_is_listed_recognised_and_read_even_after_moving_socket() {
    use crate::support::usb::FakeUsb;
    let lab = Lab::new();
    let usb = FakeUsb::new(&lab.world.dir.path().join("usb"));
    let mut port = lab.plug_in("pty-nonin");
    usb.plug("ttyUSB0", 0x0403, 0x6001, "A10K2", port.link());
    let env_owned = usb.env();
    let env: Vec<(&str, &str)> = env_owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // The technician's view: the adapter, its ids, its by-id path, and the protocol heard on it.
    lab.configure(&[]);
    let output = std::thread::scope(|scope| {
        let listing = scope.spawn(|| {
            lab.world
                .command_with_env(&["serial", "--json", "--listen", "2"], &env)
        });
        stream_df8_until(&mut port, Duration::from_secs(30), || listing.is_finished());
        listing.join().unwrap()
    });
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
    let (daemon, reading) = start_matched(&lab, &usb, &mut port, (0x0403, 0x6001));
    assert_eq!(reading["device"]["id"], "serial:usb-0403-6001");
    // A generic cable's descriptor names its chip, not the oximeter: no identity is made up from it.
    assert_eq!(reading["device"]["manufacturer"], serde_json::Value::Null);
    assert_eq!(reading["device"]["serial_number"], serde_json::Value::Null);
    assert_eq!(reading["device"]["specialization"], 528388);

    // Unplugged and plugged into another socket: a new tty name, the same ids.
    usb.unplug("ttyUSB0", "A10K2");
    let tty = port.tty().to_path_buf();
    port.unplug();
    daemon.wait_closed(&tty, Duration::from_secs(10));
    port.plug();
    usb.plug("ttyUSB3", 0x0403, 0x6001, "A10K2", port.link());
    assert!(
        stream_df8_until(&mut port, Duration::from_secs(30), || {
            lab.readings_of("nonin-df8").len() >= 2
        }),
        "log:\n{}",
        lab.world.log()
    );
}

#[test]
fn a_device_with_its_own_usb_is_named_by_its_descriptor_in_every_reading() {
    use crate::support::usb::FakeUsb;
    let lab = Lab::new();
    let usb = FakeUsb::new(&lab.world.dir.path().join("usb"));
    let mut port = lab.plug_in("pty-nonin");
    let nonin = ("Nonin Medical Inc.", "Nonin 9560 USB");
    usb.plug_as("ttyACM0", (0x1a57, 0x0001), nonin, "501234567", port.link());
    lab.configure(&[]);
    let (_daemon, reading) = start_matched(&lab, &usb, &mut port, (0x1a57, 0x0001));
    let device = &reading["device"];
    assert_eq!(device["manufacturer"], "Nonin Medical Inc.", "{device}");
    assert_eq!(device["model"], "Nonin 9560 USB", "{device}");
    assert_eq!(device["serial_number"], "501234567", "{device}");
    assert_eq!(device["address"], serde_json::Value::Null, "{device}");
}

#[test]
fn a_nonin_9560_is_asked_for_the_configured_data_format_when_the_port_opens() {
    let lab = Lab::new();
    let mut port = lab.plug_in("usb-Nonin_9560-if00-port0");
    lab.configure(&[entry(&port, "nonin-df8").with(&["select_format = true"])]);
    let _daemon = lab.world.start();
    let select = [0x02, 0x70, 0x02, 0x02, 0x08, 0x03];
    let received = port.read_until(Duration::from_secs(10), |bytes| bytes.len() >= select.len());
    assert_eq!(received, select, "{received:02x?}");
    // The device acknowledges and streams Data Format 8.
    port.write(&[0x06]);
    assert!(
        stream_df8_until(&mut port, Duration::from_secs(30), || {
            !lab.readings_of("nonin-df8").is_empty()
        }),
        "log:\n{}",
        lab.world.log()
    );
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
    subscriber
        .readings()
        .into_iter()
        .filter(|r| r["device"]["protocol"] == "contec-cms50" && r["time_source"] == source)
        .collect()
}

fn measured_times(readings: &[serde_json::Value]) -> Vec<&str> {
    readings
        .iter()
        .map(|r| r["measured_at"].as_str().unwrap())
        .collect()
}

const CONTEC: &str = "usb-Silicon_Labs_CP2102_CMS50F-if00-port0";

/// A lab with a Contec CMS50F that recorded [`recorded_night`], and a daemon configured to read it.
fn contec_with_a_night() -> (Lab, Contec) {
    let lab = Lab::new();
    let mut contec = Contec::new(lab.plug_in(CONTEC));
    contec.sessions = vec![recorded_night()];
    lab.configure(&[entry(&contec.port, "contec-cms50")]);
    (lab, contec)
}

#[test]
fn a_contec_stored_night_arrives_once_with_device_times_then_the_live_stream() {
    let (lab, mut contec) = contec_with_a_night();
    let subscriber = &lab.subscriber;
    let mut daemon = lab.world.start_with_env(&[("TZ", "UTC")]);
    let stored = || contec_readings(subscriber, "device");
    let live = || contec_readings(subscriber, "hub");
    contec.serve_until(Duration::from_secs(30), 97, 72, || !live().is_empty());
    assert!(
        !live().is_empty(),
        "no live reading after the download; log:\n{}",
        lab.world.log()
    );
    // The spot rule ran on the device's timeline: a spot 10 s into the night, then every 5 minutes.
    let night = stored();
    assert_eq!(
        measured_times(&night),
        NIGHT_SPOTS,
        "log:\n{}",
        lab.world.log()
    );
    for reading in &night {
        assert_eq!(
            (value(reading, "spo2"), value(reading, "pulse_rate")),
            (94.0, 131.0)
        );
        assert_eq!(reading["flags"], serde_json::json!(["stored_session"]));
        crate::assert_valid_reading(reading);
    }
    assert_eq!(
        (value(&live()[0], "spo2"), value(&live()[0], "pulse_rate")),
        (97.0, 72.0)
    );
    assert_eq!(contec.downloads, [0], "the night was downloaded once");

    // Unplugged, the daemon restarted, plugged in again: the night is known and not fetched again, and
    // the live stream resumes. The first live reading after the restart is the sentinel: the dialog
    // decides about the recording before it starts the live stream.
    contec.port.unplug();
    daemon.terminate();
    contec.port.plug();
    let live_before = live().len();
    let _daemon = lab.world.start_with_env(&[("TZ", "UTC")]);
    contec.serve_until(Duration::from_secs(30), 96, 70, || {
        live().len() > live_before
    });
    assert!(
        live().len() > live_before,
        "no live reading after the restart; log:\n{}",
        lab.world.log()
    );
    assert_eq!(contec.downloads, [0], "log:\n{}", lab.world.log());
    assert_eq!(
        count(&contec.received, &[0x7D, 0x81, 0xA3]),
        2,
        "the hub asked for the session count on each connection"
    );
    assert_eq!(stored().len(), 3);
}

#[test]
fn a_damaged_contec_download_publishes_nothing_and_the_retry_delivers_the_night_with_the_right_times(
) {
    let (lab, mut contec) = contec_with_a_night();
    contec.damage_next_download = true;
    let _daemon = lab.world.start_with_env(&[("TZ", "UTC")]);
    let stored = || contec_readings(&lab.subscriber, "device");
    contec.serve_until(Duration::from_secs(30), 97, 72, || stored().len() >= 3);
    assert_eq!(contec.downloads, [0, 0], "log:\n{}", lab.world.log());
    assert_eq!(
        measured_times(&stored()),
        NIGHT_SPOTS,
        "log:\n{}",
        lab.world.log()
    );
    // The damaged download was counted where every broken frame is.
    let rejected = format!("frames_rejected.serial:{CONTEC}");
    wait_for(
        "the damaged download to be counted",
        Duration::from_secs(10),
        || lab.world.status()["counters"][&rejected].as_u64() >= Some(1),
        || lab.world.status().to_string(),
    );
}

//! Scenarios against real hardware, run when the environment names it:
//! `VITALSD_HIL_SERIAL_PATH` (the device's port) and `VITALSD_HIL_SERIAL_PROTOCOL` (its protocol name).
//! Take a measurement on the device while the test waits (`VITALSD_HIL_TIMEOUT_S`, default 120 s).
//! Bluetooth: `VITALSD_HIL_BLE_ADAPTER` and `VITALSD_HIL_BLE_ADDRESS` (see the test below).
//!
//! The build script turns these variables into cfgs: a test whose device is not named is compiled as
//! ignored, so the run reports it as skipped with the variable to set, never as passed. Changing a variable
//! rebuilds the suite.

use std::time::Duration;

use crate::support::broker::Broker;
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::subscriber::Subscriber;

struct RealSerialDevice {
    path: String,
    protocol: &'static str,
    timeout: Duration,
}

/// The device `VITALSD_HIL_SERIAL_PATH` names; the suite was built with it, so it must be set now too.
fn real_serial_device() -> RealSerialDevice {
    let path = required("VITALSD_HIL_SERIAL_PATH");
    let name =
        std::env::var("VITALSD_HIL_SERIAL_PROTOCOL").unwrap_or_else(|_| "nonin-df13".to_string());
    let protocol = vitalsd::decode::Protocol::from_name(&name)
        .unwrap_or_else(|| panic!("VITALSD_HIL_SERIAL_PROTOCOL={name} is not a protocol name"))
        .name();
    let seconds = std::env::var("VITALSD_HIL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    RealSerialDevice {
        path,
        protocol,
        timeout: Duration::from_secs(seconds),
    }
}

/// A variable the test's cfg says was set when the suite was built.
#[track_caller]
fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: set it (the suite was built without it, or run with --ignored)")
    })
}

#[test]
#[cfg_attr(
    not(vitalsd_hil_serial),
    ignore = "skipped: set VITALSD_HIL_SERIAL_PATH to run against a real serial device"
)]
fn a_real_serial_device_reading_arrives_and_survives_a_broker_outage() {
    let device = real_serial_device();
    let (mut broker, subscriber, world) = real_device_world(&device);
    let _daemon = world.start();
    eprintln!("take a measurement on the device at {} now", device.path);
    assert!(
        subscriber.wait_for_unique_readings(1, device.timeout),
        "no reading; log:\n{}",
        world.log()
    );
    let reading = &subscriber.readings()[0];
    crate::assert_valid_reading(reading);
    assert_eq!(reading["device"]["protocol"], device.protocol);

    // Stopped, not killed, so the subscriber's session is saved for certain rather than by an autosave.
    broker.stop();
    eprintln!("broker stopped: take another measurement now");
    let queued = crate::support::wait_until(device.timeout, || {
        world.status()["outbox"]["pending"].as_u64() >= Some(1)
    });
    assert!(queued, "no reading queued while the broker was down");
    broker.restart();
    assert!(subscriber.wait_for_unique_readings(2, Duration::from_secs(30)));
}

/// `VITALSD_HIL_BLE_ADAPTER` (e.g. `hci0`) and `VITALSD_HIL_BLE_ADDRESS` name a real adapter and device on
/// the machine's own BlueZ. The test pairs and binds the device (`VITALSD_HIL_BLE_PAIR=1` prompts to put it
/// in pairing mode first; `VITALSD_HIL_BLE_PASSKEY` for devices that show a passkey), then waits for a
/// reading.
#[test]
#[cfg_attr(
    not(vitalsd_hil_ble),
    ignore = "skipped: set VITALSD_HIL_BLE_ADAPTER and VITALSD_HIL_BLE_ADDRESS to run against a real Bluetooth device"
)]
fn a_real_bluetooth_device_is_paired_and_its_reading_arrives() {
    let (adapter, address) = (
        required("VITALSD_HIL_BLE_ADAPTER"),
        required("VITALSD_HIL_BLE_ADDRESS"),
    );
    let seconds = std::env::var("VITALSD_HIL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    world.write_config(&broker.url(), &[], &[]);
    world.append_config(&format!("[ble]\nadapter = \"{adapter}\"\n"));
    let system_bus = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
        .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".to_string());
    let env = [("DBUS_SYSTEM_BUS_ADDRESS", system_bus.as_str())];
    let mut args = vec!["pair", address.as_str()];
    let passkey = std::env::var("VITALSD_HIL_BLE_PASSKEY").unwrap_or_default();
    if !passkey.is_empty() {
        args.extend(["--passkey", passkey.as_str()]);
    }
    if std::env::var("VITALSD_HIL_BLE_PAIR").as_deref() == Ok("1") {
        eprintln!("Put {address} in pairing mode now.");
    }
    // For a device already bonded with this machine, pairing succeeds at once and only binds it.
    let output = world.command_with_env(&args, &env);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _daemon = world.start_with_env(&env);
    eprintln!("Take a measurement on {address} now ({seconds} s).");
    let id = format!("ble:{}", address.to_ascii_uppercase());
    let arrived = crate::support::wait_until(Duration::from_secs(seconds), || {
        subscriber
            .readings()
            .iter()
            .any(|r| r["device"]["id"] == id.as_str())
    });
    assert!(arrived, "no reading from {address}; log:\n{}", world.log());
    for reading in subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
}

/// Starts a daemon reading the real device, with a broker and a subscriber.
fn real_device_world(device: &RealSerialDevice) -> (Broker, Subscriber, DaemonWorld) {
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    world.write_config(
        &broker.url(),
        &[],
        &[SerialEntry {
            path: device.path.clone().into(),
            protocol: device.protocol,
            id: None,
            extra: vec![],
        }],
    );
    (broker, subscriber, world)
}

/// `VITALSD_HIL_REPLUG=1`: the test asks for the cable to be pulled during a measurement and plugged back.
#[test]
#[cfg_attr(
    not(vitalsd_hil_serial_replug),
    ignore = "skipped: set VITALSD_HIL_SERIAL_PATH and VITALSD_HIL_REPLUG=1 (someone at the device) to run"
)]
fn a_real_serial_device_unplugged_and_plugged_back_is_read_again() {
    let device = real_serial_device();
    let (_broker, subscriber, world) = real_device_world(&device);
    let _daemon = world.start();
    let path = std::path::PathBuf::from(&device.path);
    eprintln!(
        "start a measurement, then unplug {} while it runs",
        device.path
    );
    assert!(
        crate::support::wait_until(device.timeout, || !path.exists()),
        "{} never went away",
        device.path
    );
    let before = subscriber.unique_reading_ids().len();
    eprintln!("plug it back in and take a measurement");
    assert!(
        crate::support::wait_until(device.timeout, || path.exists()),
        "{} never came back",
        device.path
    );
    assert!(
        subscriber.wait_for_unique_readings(before + 1, device.timeout),
        "no reading after the device returned; log:\n{}",
        world.log()
    );
    for reading in subscriber.readings() {
        crate::assert_valid_reading(&reading);
    }
}

/// With `VITALSD_HIL_SERIAL_PROTOCOL=contec-cms50`: the stream goes on past the device's 30 s limit without a
/// restart (the hub keeps it alive), and with `VITALSD_HIL_CONTEC_STORED=1` (the oximeter holds a recording)
/// the recording arrives with device times once, and not again after a daemon restart.
#[test]
#[cfg_attr(
    not(vitalsd_hil_contec),
    ignore = "skipped: set VITALSD_HIL_SERIAL_PATH and VITALSD_HIL_SERIAL_PROTOCOL=contec-cms50 to run against a real Contec"
)]
fn a_real_contec_is_kept_alive_and_its_recording_arrives_once() {
    let device = real_serial_device();
    assert_eq!(
        device.protocol, "contec-cms50",
        "VITALSD_HIL_SERIAL_PROTOCOL"
    );
    let expect_recording = std::env::var("VITALSD_HIL_CONTEC_STORED").as_deref() == Ok("1");
    let (_broker, subscriber, world) = real_device_world(&device);
    let stored = |subscriber: &Subscriber| {
        subscriber
            .readings()
            .into_iter()
            .filter(|r| r["time_source"] == "device")
            .count()
    };
    let mut daemon = world.start();
    eprintln!("put a finger in the oximeter and keep it there for about 2 minutes");
    assert!(
        subscriber.wait_for_unique_readings(1, device.timeout),
        "no reading; log:\n{}",
        world.log()
    );
    // A minute is twice the device's own limit without a keep-alive: a duration by nature.
    std::thread::sleep(Duration::from_secs(60));
    assert!(
        !world.log().contains("starting its stream again"),
        "the stream stopped although it was kept alive; log:\n{}",
        world.log()
    );
    let recorded = stored(&subscriber);
    if expect_recording {
        assert!(recorded > 0, "no recorded reading; log:\n{}", world.log());
        for reading in subscriber.readings() {
            crate::assert_valid_reading(&reading);
        }
    }
    daemon.terminate();
    let live = |subscriber: &Subscriber| {
        subscriber
            .readings()
            .into_iter()
            .filter(|r| r["time_source"] == "hub")
            .count()
    };
    let live_before = live(&subscriber);
    let _daemon = world.start();
    // The live stream starts after the hub has decided about the recording: a live reading after the
    // restart is the sentinel, and a recording fetched again would have arrived before it.
    assert!(
        crate::support::wait_until(device.timeout, || live(&subscriber) > live_before),
        "no live reading after the restart; log:\n{}",
        world.log()
    );
    assert_eq!(
        stored(&subscriber),
        recorded,
        "the recording was fetched again; log:\n{}",
        world.log()
    );
}

/// `VITALSD_HIL_SERIAL_PATH_2` and `VITALSD_HIL_SERIAL_PROTOCOL_2` name a second device: both are read at once.
#[test]
#[cfg_attr(
    not(vitalsd_hil_serial_pair),
    ignore = "skipped: set VITALSD_HIL_SERIAL_PATH, VITALSD_HIL_SERIAL_PATH_2 and VITALSD_HIL_SERIAL_PROTOCOL_2 to run against two real serial devices"
)]
fn two_real_serial_devices_are_read_at_once() {
    let (first, path, name) = (
        real_serial_device(),
        required("VITALSD_HIL_SERIAL_PATH_2"),
        required("VITALSD_HIL_SERIAL_PROTOCOL_2"),
    );
    let second = vitalsd::decode::Protocol::from_name(&name)
        .unwrap_or_else(|| panic!("VITALSD_HIL_SERIAL_PROTOCOL_2={name} is not a protocol name"))
        .name();
    let broker = Broker::start();
    let subscriber = Subscriber::start(broker.port, "vitalsd/v1/#");
    let world = DaemonWorld::new();
    let entry = |path: &str, protocol| SerialEntry {
        path: path.into(),
        protocol,
        id: None,
        extra: vec![],
    };
    world.write_config(
        &broker.url(),
        &[],
        &[entry(&first.path, first.protocol), entry(&path, second)],
    );
    let _daemon = world.start();
    eprintln!(
        "take a measurement on both devices ({} and {path}) now",
        first.path
    );
    // Each port's readings carry its own device id, `serial:` and the link's file name.
    let id_of = |path: &str| {
        format!(
            "serial:{}",
            std::path::Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
        )
    };
    let (first_id, second_id) = (id_of(&first.path), id_of(&path));
    let from = |id: &str| {
        subscriber
            .readings()
            .iter()
            .any(|r| r["device"]["id"] == id)
    };
    assert!(
        crate::support::wait_until(first.timeout, || from(&first_id) && from(&second_id)),
        "readings: {:?}\nlog:\n{}",
        subscriber.readings(),
        world.log()
    );
}

//! Scenarios against real hardware, run when the environment names it:
//! `VITALSD_HIL_SERIAL_PATH` (the device's port) and `VITALSD_HIL_SERIAL_PROTOCOL` (its protocol name).
//! Take a measurement on the device while the test waits (`VITALSD_HIL_TIMEOUT_S`, default 120 s).
//! Bluetooth: `VITALSD_HIL_BLE_ADAPTER` and `VITALSD_HIL_BLE_ADDRESS` (see the test below).

use std::time::Duration;

use crate::support::broker::Broker;
use crate::support::daemon::{DaemonWorld, SerialEntry};
use crate::support::subscriber::Subscriber;

struct RealSerialDevice {
    path: String,
    protocol: &'static str,
    timeout: Duration,
}

fn real_serial_device() -> Option<RealSerialDevice> {
    let path = std::env::var("VITALSD_HIL_SERIAL_PATH").ok()?;
    let name =
        std::env::var("VITALSD_HIL_SERIAL_PROTOCOL").unwrap_or_else(|_| "nonin-df13".to_string());
    let protocol = vitalsd::decode::Protocol::from_name(&name)
        .unwrap_or_else(|| panic!("VITALSD_HIL_SERIAL_PROTOCOL={name} is not a protocol name"))
        .name();
    let seconds = std::env::var("VITALSD_HIL_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120);
    Some(RealSerialDevice {
        path,
        protocol,
        timeout: Duration::from_secs(seconds),
    })
}

#[test]
fn a_real_serial_device_reading_arrives_and_survives_a_broker_outage() {
    let Some(device) = real_serial_device() else {
        eprintln!("VITALSD_HIL_SERIAL_PATH is not set: no real serial device to test against");
        return;
    };
    let mut broker = Broker::start();
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

    std::thread::sleep(Duration::from_millis(1500));
    broker.kill();
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
fn a_real_bluetooth_device_is_paired_and_its_reading_arrives() {
    let (Ok(adapter), Ok(address)) = (
        std::env::var("VITALSD_HIL_BLE_ADAPTER"),
        std::env::var("VITALSD_HIL_BLE_ADDRESS"),
    ) else {
        eprintln!(
            "VITALSD_HIL_BLE_ADAPTER/ADDRESS are not set: no real Bluetooth device to test against"
        );
        return;
    };
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

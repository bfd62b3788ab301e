//! The technician's Bluetooth commands: `scan`, `pair`, `unpair` and `devices`. Each asks the running
//! daemon over its control socket, or runs the operation itself when no daemon runs, and prints the
//! events as text or, with `--json`, one JSON document per line.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{self, Event, Request};
use crate::state::devices::BoundDevices;

use super::load_config as load;

/// Runs `request` through the daemon or directly; returns whether it ended in success.
fn run(config: &Config, request: Request, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = false;
    let mut print = |event: &Event| {
        if *event == Event::Done {
            ok = true;
        } else if json {
            println!("{}", event.to_line().trim_end());
        }
        if !json {
            print_text(event);
        }
    };
    let outcome = runtime.block_on(async {
        match control::request(&config.hub.runtime_dir, &request, &mut print).await {
            Ok(Some(())) => Ok(()),
            Ok(None) => run_directly(config, request, &mut print).await,
            Err(error) => Err(format!(
                "cannot talk to the daemon at {}: {error}",
                control::socket_path(&config.hub.runtime_dir).display()
            )),
        }
    });
    if let Err(message) = outcome {
        eprintln!("error: {message}");
        return ExitCode::FAILURE;
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

async fn run_directly(
    config: &Config,
    request: Request,
    print: &mut dyn FnMut(&Event),
) -> Result<(), String> {
    let list = BoundDevices::load(&config.hub.state_dir).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&config.hub.state_dir).map_err(|error| error.to_string())?;
    let devices = Arc::new(Mutex::new(list));
    let (events_tx, mut events_rx) = mpsc::channel(256);
    // The sender goes when the operation ends, after its last event, which ends the printing.
    let work =
        async move { control::execute(request, &config.ble.adapter, &devices, &events_tx).await };
    let printing = async {
        while let Some(event) = events_rx.recv().await {
            print(&event);
        }
    };
    // A failure has been printed as the operation's last event, which also sets the exit status.
    let (_failure, ()) = tokio::join!(work, printing);
    Ok(())
}

fn text(value: &serde_json::Value) -> String {
    value
        .as_str()
        .map_or_else(|| "-".to_string(), str::to_string)
}

fn print_text(event: &Event) {
    match event {
        Event::Device {
            address,
            name,
            model,
            rssi,
            pairing_mode,
            bound,
            ..
        } => println!(
            "{}  {:>4} dBm  {:<34} {:<28} {}{}",
            address,
            rssi.map_or("?".to_string(), |rssi| rssi.to_string()),
            model.as_deref().unwrap_or("-"),
            name.as_deref().unwrap_or("-"),
            match pairing_mode {
                Some(true) => "pairing mode",
                Some(false) => "not in pairing mode",
                None => "pairing mode unknown",
            },
            if *bound { ", bound" } else { "" },
        ),
        Event::Progress { message } => println!("… {message}"),
        Event::Paired { message, .. } => println!("OK: {message}"),
        Event::Unpaired {
            address,
            bond_removed,
            ..
        } => println!(
            "OK: {address} unbound{}",
            if *bond_removed {
                " and its bond removed"
            } else {
                ""
            }
        ),
        Event::Devices { devices } => {
            if devices.is_empty() {
                println!("No devices are bound. Bind one with `vitalsd pair ADDRESS`.");
            }
            for device in devices {
                println!(
                    "{}  {:<28} last seen {}  last reading {}  battery {}  clock {}{}",
                    text(&device["address"]),
                    text(&device["model"]),
                    text(&device["last_seen"]),
                    text(&device["last_reading_at"]),
                    device["battery_percent"]
                        .as_u64()
                        .map_or("-".to_string(), |b| format!("{b}%")),
                    text(&device["clock"]),
                    if device["needs_repairing"] == true {
                        "  NEEDS RE-PAIRING (the device lost its bond)"
                    } else {
                        ""
                    },
                );
            }
        }
        Event::Error { message } => eprintln!("error: {message}"),
        Event::Done => {}
    }
}

pub fn scan(path: &Path, seconds: u64, json: bool) -> ExitCode {
    match load(path) {
        Ok(config) => run(
            &config,
            Request::Scan {
                seconds: Duration::from_secs(seconds).as_secs(),
            },
            json,
        ),
        Err(code) => code,
    }
}

pub fn pair(path: &Path, address: &str, passkey: Option<u32>, json: bool) -> ExitCode {
    match load(path) {
        Ok(config) => run(
            &config,
            Request::Pair {
                address: address.to_string(),
                passkey,
            },
            json,
        ),
        Err(code) => code,
    }
}

pub fn unpair(path: &Path, address: &str, json: bool) -> ExitCode {
    match load(path) {
        Ok(config) => run(
            &config,
            Request::Unpair {
                address: address.to_string(),
            },
            json,
        ),
        Err(code) => code,
    }
}

pub fn devices(path: &Path, json: bool) -> ExitCode {
    match load(path) {
        Ok(config) => run(&config, Request::Devices, json),
        Err(code) => code,
    }
}

//! The technician's Bluetooth commands: `scan`, `pair`, `unpair` and `devices`. Each asks the running
//! daemon over its control socket, or runs the operation itself when no daemon runs, and prints the
//! events as text or, with `--json`, one JSON document per line. When a device asks for the passkey it
//! shows, `pair` prompts for it and reads it from stdin.

use std::io::{BufRead, IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Config;
use crate::control::{self, Event, Reply, Request};
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
        let annotated = annotate(config, event);
        let event = annotated.as_ref().unwrap_or(event);
        if *event == Event::Done {
            ok = true;
        } else if json {
            println!("{}", event.to_line().trim_end());
        }
        if !json {
            print_text(event);
        }
    };
    let mut stdin = None;
    let outcome = runtime.block_on(async {
        let (events_tx, events_rx) = mpsc::channel(16);
        let (replies_tx, replies_rx) = mpsc::channel(1);
        let asking = control::request(&config.hub.runtime_dir, &request, events_tx, replies_rx);
        let answering = technician(events_rx, replies_tx, json, &mut print, &mut stdin);
        let (asked, ()) = tokio::join!(asking, answering);
        match asked {
            Ok(Some(())) => Ok(()),
            Ok(None) => run_directly(config, request, json, &mut print, &mut stdin).await,
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
    json: bool,
    print: &mut dyn FnMut(&Event),
    stdin: &mut Option<StdinLines>,
) -> Result<(), String> {
    let list = BoundDevices::load(&config.hub.state_dir).map_err(|error| error.to_string())?;
    std::fs::create_dir_all(&config.hub.state_dir).map_err(|error| error.to_string())?;
    let devices = Arc::new(Mutex::new(list));
    let (events_tx, events_rx) = mpsc::channel(256);
    let (replies_tx, replies_rx) = mpsc::channel(1);
    // The sender goes when the operation ends, after its last event, which ends the printing.
    let work = async move {
        control::execute(
            request,
            &config.ble.adapter,
            &devices,
            &events_tx,
            replies_rx,
        )
        .await
    };
    let answering = technician(events_rx, replies_tx, json, print, stdin);
    // A failure has been printed as the operation's last event, which also sets the exit status.
    let (_failure, ()) = tokio::join!(work, answering);
    Ok(())
}

/// How many entries that are not a passkey the technician may type before `pair` gives up.
const PASSKEY_TRIES: u32 = 3;

/// Prints a request's events until the last, and answers the questions they ask: for
/// `passkey_requested`, the passkey typed on stdin (prompted on stderr, or by the event itself with
/// `--json`). Waiting for the technician never holds up the events, so a pairing BlueZ gave up on ends
/// the prompt with its error.
async fn technician(
    mut events: mpsc::Receiver<Event>,
    replies: mpsc::Sender<Reply>,
    json: bool,
    print: &mut dyn FnMut(&Event),
    stdin: &mut Option<StdinLines>,
) {
    while let Some(event) = events.recv().await {
        print(&event);
        if !matches!(event, Event::PasskeyRequested { .. }) {
            continue;
        }
        let lines = stdin.get_or_insert_with(StdinLines::start);
        let mut tries = 0;
        let reply = loop {
            let line = tokio::select! {
                line = lines.next() => line,
                news = events.recv() => match news {
                    Some(news) => {
                        if !json {
                            // The prompt's line is still open.
                            eprintln!();
                        }
                        print(&news);
                        if news.is_last() {
                            return;
                        }
                        continue;
                    }
                    None => return,
                },
            };
            if !json && !std::io::stdin().is_terminal() {
                // Nothing echoed a piped entry, so end the prompt's line here.
                eprintln!();
            }
            let Some(line) = line else {
                break Reply::Cancel;
            };
            match parse_passkey(&line) {
                Ok(passkey) => break Reply::Passkey { passkey },
                Err(error) => {
                    tries += 1;
                    let message = if tries < PASSKEY_TRIES {
                        format!("{error}; try again")
                    } else {
                        format!("{error}; giving up after {PASSKEY_TRIES} tries")
                    };
                    if json {
                        print(&Event::Progress { message });
                    } else {
                        eprintln!("{message}");
                    }
                    if tries >= PASSKEY_TRIES {
                        break Reply::Cancel;
                    }
                    print(&event);
                }
            }
        };
        // A request that already ended says so through its events.
        let _ = replies.send(reply).await;
    }
}

/// What the technician typed, as a passkey: the six digits a device shows, spaces allowed between
/// them (displays often group them).
fn parse_passkey(line: &str) -> Result<u32, &'static str> {
    let digits: String = line.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if digits.is_empty() {
        return Err("nothing entered: type the 6 digits the device shows");
    }
    if digits.len() != 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a passkey: a passkey is the 6 digits the device shows");
    }
    digits
        .parse()
        .map_err(|_| "not a passkey: a passkey is the 6 digits the device shows")
}

/// The longest line read from stdin; a passkey needs 7 bytes.
const MAX_ENTRY_BYTES: u64 = 256;

/// Lines typed on stdin (or piped in), read by a thread of their own from the first question on, so a
/// pending read never holds up the request's events. The thread ends with stdin, or with the process.
struct StdinLines(mpsc::Receiver<String>);

impl StdinLines {
    fn start() -> StdinLines {
        let (lines_tx, lines) = mpsc::channel(1);
        let reading = move || {
            let mut input = std::io::stdin().lock();
            loop {
                let mut line = String::new();
                match (&mut input).take(MAX_ENTRY_BYTES).read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if lines_tx.blocking_send(line).is_err() {
                    return;
                }
            }
        };
        // Without the thread the channel is closed, which reads as stdin ended: no passkey.
        let _ = std::thread::Builder::new()
            .name("stdin".into())
            .spawn(reading);
        StdinLines(lines)
    }

    async fn next(&mut self) -> Option<String> {
        self.0.recv().await
    }
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
        Event::PasskeyRequested { .. } => eprint!("Enter the passkey the device shows: "),
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
                    "{}  {:<28} {:<13} last seen {}  last reading {}  battery {}  clock {}{}",
                    text(&device["address"]),
                    text(&device["model"]),
                    text(&device["state"]),
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

/// The device list with what the fleet twin shows for each device: its `state`, judged by the
/// configuration's `fleet.device_silent_after` (silence only on a trusted clock).
fn annotate(config: &Config, event: &Event) -> Option<Event> {
    let Event::Devices { devices } = event else {
        return None;
    };
    crate::clock::set_policy(config.hub.clock);
    let clock = crate::clock::hub_clock();
    let now = clock.is_trusted().then(crate::clock::now_utc);
    let devices = devices
        .iter()
        .map(|entry| {
            let mut entry = entry.clone();
            let stored =
                serde_json::from_value::<crate::state::devices::BoundDevice>(entry.clone());
            if let Ok(device) = stored {
                let state = device.fleet_state(now, config.fleet.device_silent_after, false);
                entry["state"] = serde_json::json!(state);
            }
            entry
        })
        .collect();
    Some(Event::Devices { devices })
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

#[cfg(test)]
mod tests {
    use super::parse_passkey;

    #[track_caller]
    fn check(typed: &str, expected: Result<u32, &str>) {
        assert_eq!(parse_passkey(typed), expected, "{typed:?}");
    }

    #[test]
    fn a_typed_passkey_is_six_digits_spaces_allowed() {
        let not = Err("not a passkey: a passkey is the 6 digits the device shows");
        let nothing = Err("nothing entered: type the 6 digits the device shows");
        check("123456\n", Ok(123456));
        check("  123456 \r\n", Ok(123456));
        check("123 456\n", Ok(123456));
        check("000042\n", Ok(42));
        check("000000", Ok(0));
        check("999999", Ok(999999));
        check("\n", nothing);
        check("   ", nothing);
        check("12345\n", not);
        check("1234567\n", not);
        check("42\n", not);
        check("12345a\n", not);
        check("+12345\n", not);
        check("-12345\n", not);
        check("１２３４５６\n", not);
        check("123-456\n", not);
    }
}

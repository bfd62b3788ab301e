//! The command line's commands: `run` (in `run`), the Bluetooth ones (in `ble`), and here `decode`, `status`,
//! `check-config` and `outbox salvage`; `docs` writes the man pages and completions.
//!
//! Data goes to stdout, diagnostics to stderr; each command returns its process exit code.

pub mod ble;
mod docs;
pub mod fleet;
pub mod run;
pub mod serial;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Local, TimeZone, Utc};

use crate::app::OUTBOX_FILE;
use crate::config::{Config, MqttProtocol};
use crate::decode::{DecodeContext, DecodeEvent, Protocol};
use crate::model::payload::{self, DeviceInfo};
use crate::mqtt::{refused_by_reason, REFUSED_COUNTER};
use crate::outbox::space;
use crate::outbox::{Outbox, OutboxStats};

pub use docs::generate_docs;

/// `vitalsd decode --list`.
pub fn list_protocols() -> ExitCode {
    let mut out = std::io::stdout().lock();
    for protocol in Protocol::ALL {
        let _ = writeln!(out, "{:<30} {}", protocol.name(), protocol.description());
    }
    ExitCode::SUCCESS
}

/// `vitalsd decode PROTOCOL HEX...`: prints one JSON reading per line, or with `fhir` (the code sets to
/// add) one FHIR Bundle per reading; any rejected or unfinished frame is reported on stderr and makes the
/// exit code 1.
pub fn decode(
    protocol_name: &str,
    hex_words: &[String],
    fhir: Option<(&[String], Option<&str>)>,
) -> ExitCode {
    let mut options = crate::model::fhir::FhirOptions::default();
    let (code_sets, subject) = fhir.unwrap_or_default();
    if let Some(subject) = subject {
        let Some((system, value)) = subject.split_once('|') else {
            eprintln!("error: --subject wants SYSTEM|VALUE, such as \"urn:example:patients|p-1\"");
            return ExitCode::from(2);
        };
        options.subject = Some(crate::model::fhir::Subject {
            system: system.to_string(),
            value: value.to_string(),
        });
    }
    for name in code_sets {
        match crate::model::fhir_codes::find(name) {
            Some(set) => options.code_sets.push(set),
            None => {
                let known = crate::model::fhir_codes::names().join(", ");
                eprintln!("error: unknown code set {name:?} (known: {known})");
                return ExitCode::from(2);
            }
        }
    }
    let Some(protocol) = Protocol::from_name(protocol_name) else {
        let known: Vec<&str> = Protocol::ALL.iter().map(|p| p.name()).collect();
        eprintln!(
            "error: unknown protocol {protocol_name:?} (known: {})",
            known.join(", ")
        );
        return ExitCode::from(2);
    };
    // Message protocols take one characteristic value or advertisement per `/`-separated part; streams
    // take all the bytes as they would arrive on the wire.
    let joined = hex_words.join(" ");
    let parts: Vec<&str> = if protocol.is_message_based() {
        joined.split('/').collect()
    } else {
        vec![joined.as_str()]
    };
    let mut messages = Vec::new();
    for part in parts {
        match parse_hex(part) {
            Ok(bytes) => messages.push(bytes),
            // Bad hex is bad input, like a bad checksum; 2 is for a command line clap refuses.
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::FAILURE;
            }
        }
    }
    let device = DeviceInfo {
        id: "decode".to_string(),
        transport: protocol.transport(),
        protocol: protocol.name(),
        identity: Default::default(),
        specialization: Some(protocol.specialization()),
    };
    let context = DecodeContext::trusted(crate::clock::now_utc(), &Local);
    let mut decoder = protocol.new_decoder();
    // A protocol with a dialog starts it as if the hub had asked its questions, so a captured download
    // (the device's side of it: a Contec's session count, start, length and data) decodes too; what it
    // would send is not needed here.
    let _ = decoder.poll(&context);
    let mut events: Vec<DecodeEvent> = messages
        .iter()
        .flat_map(|bytes| decoder.feed(bytes, &context))
        .collect();
    // Then as if the line had paused: a download at the end of the capture is settled.
    let later = context.received_at + chrono::TimeDelta::hours(1);
    let paused = DecodeContext {
        received_at: later,
        steady: later,
        ..context
    };
    events.extend(decoder.poll(&paused).events);
    events.extend(decoder.finish().map(DecodeEvent::Rejected));
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for (index, event) in events.into_iter().enumerate() {
        match event {
            DecodeEvent::Reading(reading) => {
                let id = payload::reading_id(&device.id, &reading, index);
                let mut json = payload::to_json("decode", &id, &device, &reading);
                if fhir.is_some() {
                    match crate::model::fhir::bundle_of_payload(&json, &options) {
                        Ok(bundle) => json = bundle,
                        Err(error) => {
                            failed = true;
                            eprintln!("error: {error}");
                            continue;
                        }
                    }
                }
                let _ = out.write_all(&json);
                let _ = out.write_all(b"\n");
            }
            DecodeEvent::Rejected(error) => {
                failed = true;
                eprintln!("error: {error}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Accepts hex with or without spaces, colons or a `0x` prefix per word.
fn parse_hex(text: &str) -> Result<Vec<u8>, String> {
    let cleaned: String = text
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .map(|word| {
            word.strip_prefix("0x")
                .or_else(|| word.strip_prefix("0X"))
                .unwrap_or(word)
        })
        .collect();
    if let Some((position, character)) =
        cleaned.char_indices().find(|(_, c)| !c.is_ascii_hexdigit())
    {
        return Err(format!(
            "not a hex digit: {character:?} at position {position}"
        ));
    }
    if cleaned.is_empty() {
        return Err("no bytes given".to_string());
    }
    if cleaned.len() % 2 != 0 {
        return Err(format!(
            "odd number of hex digits ({}): a byte is missing a digit",
            cleaned.len()
        ));
    }
    hex::decode(&cleaned).map_err(|error| error.to_string())
}

/// `vitalsd check-config`.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(path, crate::mqtt::tls::check) {
        Ok(config) => {
            println!(
                "{}: ok (hub {}, broker {}:{}{}, {} serial device(s))",
                path.display(),
                config.hub.id,
                config.mqtt.url.host,
                config.mqtt.url.port,
                if config.mqtt.url.tls { " with TLS" } else { "" },
                config.serial.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => print_config_errors(path, &errors),
    }
}

/// Restores the default action of SIGPIPE, which Rust's runtime ignores: a write to a pipe nobody reads
/// then ends the process, as it ends other command-line tools, instead of failing in `println!`, which panics.
pub fn end_quietly_when_output_is_closed() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler; nothing runs on another thread
    // yet.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The configuration, or its errors printed and the exit code to return.
pub(crate) fn load_config(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path, crate::mqtt::tls::check).map_err(|errors| print_config_errors(path, &errors))
}

fn print_config_errors(path: &Path, errors: &crate::config::ConfigErrors) -> ExitCode {
    eprintln!("{}: {} error(s)", path.display(), errors.0.len());
    for error in &errors.0 {
        eprintln!("{error}");
    }
    ExitCode::FAILURE
}

/// `vitalsd status`: reads the outbox (it works while the daemon runs).
pub fn status(path: &Path, json: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    crate::clock::set_policy(config.hub.clock);
    let outbox_path = config.hub.state_dir.join(OUTBOX_FILE);
    // Only an outbox known to be absent reads as empty: one the caller may not see (a state directory of
    // another group, an unmounted disk) must not look like an outbox with nothing pending.
    let stats = match outbox_path.try_exists() {
        Ok(true) => match Outbox::open_for_status(&outbox_path).and_then(|outbox| outbox.stats()) {
            Ok(stats) => Some(stats),
            Err(error) => {
                eprintln!("error: cannot read {}: {error}", outbox_path.display());
                return ExitCode::FAILURE;
            }
        },
        Ok(false) => None,
        Err(error) => {
            let shown = outbox_path.display();
            let message = crate::config::io_message(&error);
            eprintln!("error: cannot read {shown}: {message} (run as root or as a member of the daemon's group)");
            return ExitCode::FAILURE;
        }
    };
    let now = crate::clock::now_utc();
    let mut report = status_report(&outbox_path, stats.as_ref(), config.mqtt.protocol, now);
    report["state_dir"] = state_dir_report(&config.hub.state_dir);
    report["fleet"] = fleet_report(&config, path, stats.as_ref());
    if json {
        println!("{report}");
    } else {
        print_status(&report, path);
    }
    ExitCode::SUCCESS
}

/// `vitalsd outbox salvage`: copies the readable records of moved-aside outbox files into the live outbox.
/// Refuses while the daemon runs (it holds the outbox lock).
pub fn salvage(path: &Path, files: &[PathBuf], json: bool) -> ExitCode {
    use crate::outbox::salvage::{mark_salvaged, moved_aside_files, salvage_file, OutboxLock};
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let outbox_path = config.hub.state_dir.join(OUTBOX_FILE);
    let _lock = match OutboxLock::acquire(&outbox_path) {
        Ok(lock) => lock,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    let files = if files.is_empty() {
        match moved_aside_files(&config.hub.state_dir, OUTBOX_FILE) {
            Ok(found) => found,
            Err(error) => {
                eprintln!(
                    "error: cannot list {}: {error}",
                    config.hub.state_dir.display()
                );
                return ExitCode::FAILURE;
            }
        }
    } else {
        files.to_vec()
    };
    // The live outbox's own files are never salvaged: salvaging one would find every record already
    // known and then rename the live queue away as "salvaged".
    let state_dir =
        std::fs::canonicalize(&config.hub.state_dir).unwrap_or(config.hub.state_dir.clone());
    let live_files: Vec<PathBuf> = ["", "-wal", "-shm", ".committed", ".lock"]
        .iter()
        .map(|suffix| state_dir.join(format!("{OUTBOX_FILE}{suffix}")))
        .collect();
    if let Some(file) = files
        .iter()
        .find(|file| std::fs::canonicalize(file).is_ok_and(|found| live_files.contains(&found)))
    {
        eprintln!(
            "error: {} is the live outbox's own file; salvage reads moved-aside copies ({OUTBOX_FILE}.broken-*, \
             {OUTBOX_FILE}.damaged-*) or another hub's outbox file, never the live one",
            file.display()
        );
        return ExitCode::FAILURE;
    }
    if files.is_empty() && !json {
        println!(
            "No moved-aside outbox files (outbox.db.broken-* or outbox.db.damaged-*) in {}.",
            config.hub.state_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let now_ms = crate::clock::now_utc().timestamp_millis();
    let mut live = match Outbox::open(
        &outbox_path,
        crate::outbox::OutboxOptions {
            max_pending: config.outbox.max_pending,
        },
        now_ms,
    ) {
        Ok((outbox, _)) => outbox,
        Err(error) => {
            eprintln!("error: cannot open {}: {error}", outbox_path.display());
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut results = Vec::new();
    for file in &files {
        match salvage_file(&mut live, file) {
            Ok(report) => {
                if !json {
                    println!(
                        "{}: {} intact record(s): {} copied, {} already known, {} already delivered, \
                         {} refused (outbox full); {} damaged left behind, {} unreadable page(s)",
                        file.display(),
                        report.readable + report.already_delivered,
                        report.copied,
                        report.duplicates,
                        report.already_delivered,
                        report.refused_full,
                        report.damaged,
                        report.unreadable_pages
                    );
                    if report.read_from_pages > 0 {
                        println!(
                            "  {} of them read page by page, past damaged pages SQLite could not read",
                            report.read_from_pages
                        );
                    }
                    if report.header_rebuilt {
                        println!("  its header was unreadable: salvage read it with a new one");
                    }
                    if report.unplaced > 0 {
                        println!(
                            "  {} intact record(s) left in the file: both the queue and the held readings are \
                             damaged there, and nothing tells which of them these belong to",
                            report.unplaced
                        );
                    }
                }
                // A file holding records salvage could not take stays for the next run (after the outbox
                // drained) or for a closer look; one taken whole is renamed so that it is not salvaged again.
                let complete = report.refused_full == 0 && report.unplaced == 0;
                failed |= !complete;
                let renamed = if complete {
                    match mark_salvaged(file) {
                        Ok(renamed) => Some(renamed.display().to_string()),
                        Err(error) => {
                            eprintln!(
                                "{}: salvaged, but cannot rename it: {error}",
                                file.display()
                            );
                            None
                        }
                    }
                } else {
                    None
                };
                if let (Some(renamed), false) = (&renamed, json) {
                    println!("  renamed to {renamed}");
                }
                results.push(serde_json::json!({
                    "file": file.display().to_string(),
                    "report": report,
                    "renamed_to": renamed,
                }));
            }
            Err(error) => {
                failed = true;
                if !json {
                    eprintln!("{}: {error}", file.display());
                }
                results.push(serde_json::json!({"file": file.display().to_string(), "error": error.to_string()}));
            }
        }
    }
    if json {
        println!("{}", serde_json::json!({ "salvaged": results }));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn status_report(
    outbox_path: &Path,
    stats: Option<&OutboxStats>,
    protocol: MqttProtocol,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let empty = OutboxStats::default();
    let stats = stats.unwrap_or(&empty);
    let time = |ms: Option<i64>| ms.and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    let oldest = time(stats.oldest_pending_created_at_ms);
    serde_json::json!({
        "outbox": {
            "path": outbox_path.display().to_string(),
            "exists": outbox_path.exists(),
            "pending": stats.pending,
            "held_for_clock": stats.held,
            "hub_clock": crate::clock::hub_clock().as_str(),
            "oldest_pending_at": oldest.map(|t| t.to_rfc3339()),
            "oldest_pending_age_s": oldest.map(|t| (now - t).num_seconds().max(0)),
            "delivered_total": stats.delivered_total,
            "last_delivered_at": time(stats.last_delivered_at_ms).map(|t| t.to_rfc3339()),
            "rejected_full_total": stats.rejected_full_total,
            "duplicates_total": stats.duplicates_total,
            "quarantined": stats.quarantined,
            "quarantined_records": stats.quarantined_records,
            "lost_total": stats.lost_total,
            "last_loss": stats.last_loss,
        },
        "uplink": {
            "last_error": stats.last_uplink_error.as_ref().map(|(_, text)| text),
            "last_error_at": stats.last_uplink_error.as_ref().and_then(|(ms, _)| time(Some(*ms))).map(|t| t.to_rfc3339()),
            // Whether the broker acknowledged a reading after the error: then the error is over, although
            // with nothing pending an error that is over shows no delivery after it.
            "delivered_since_error": stats.last_uplink_error.as_ref().map(|(error_ms, _)| {
                stats.last_delivered_at_ms.is_some_and(|delivered_ms| delivered_ms > *error_ms)
            }),
            "protocol": protocol.as_str(),
            "refused_total": stats.counters.get(REFUSED_COUNTER).copied().unwrap_or(0),
            "refused": refused_by_reason(stats),
        },
        "counters": stats.counters,
    })
}

/// What the fleet twin shows of the hub (its devices with their states, the configuration's version),
/// the event episodes open and the newest fleet commands, read from the state directory.
fn fleet_report(
    config: &Config,
    config_path: &Path,
    stats: Option<&OutboxStats>,
) -> serde_json::Value {
    use crate::fleet::{agent, journal, twin};
    let state_dir = &config.hub.state_dir;
    let bluetooth = match config.ble.enabled {
        true => crate::state::devices::BoundDevices::load(state_dir)
            .map(|list| list.all().to_vec())
            .unwrap_or_default(),
        false => Vec::new(),
    };
    let journal_path = state_dir.join(journal::JOURNAL_FILE);
    let journal = journal_path
        .exists()
        .then(|| journal::Journal::open_read_only(&journal_path).ok())
        .flatten();
    let events: Vec<serde_json::Value> = journal
        .as_ref()
        .and_then(|journal| journal.episodes().ok())
        .unwrap_or_default()
        .iter()
        .map(|key| {
            let (event, device) = key.split_once('|').unwrap_or((key, ""));
            serde_json::json!({"event": event, "device": Some(device).filter(|d| !d.is_empty())})
        })
        .collect();
    let commands: Vec<serde_json::Value> = journal
        .as_ref()
        .and_then(|journal| journal.recent(10).ok())
        .unwrap_or_default()
        .iter()
        .map(|entry| {
            serde_json::json!({
                "request_id": entry.request_id,
                "command": entry.command,
                "state": <&str>::from(entry.state),
                "reason": entry.reason,
                "at": Utc.timestamp_millis_opt(entry.at_ms).single().map(|t| t.to_rfc3339()),
            })
        })
        .collect();
    let empty = OutboxStats::default();
    let clock = crate::clock::hub_clock();
    let serial = agent::serial_devices(config);
    let digest = agent::config_digest(config_path);
    let facts = twin::HubFacts {
        hub_id: &config.hub.id,
        at: crate::clock::now_utc(),
        hub_clock: clock.as_str(),
        clock_trusted: clock.is_trusted(),
        untrusted_for: std::time::Duration::ZERO,
        outbox: stats.unwrap_or(&empty),
        bluetooth: &bluetooth,
        binding: &[],
        serial: &serial,
        // The daemon's run time is not known here: a serial device never heard is not called silent.
        running_for: std::time::Duration::ZERO,
        config: &digest,
        capabilities: &crate::fleet::commands::CAPABILITIES,
    };
    let thresholds = twin::Thresholds {
        device_silent_after: config.fleet.device_silent_after,
        backlog_after: config.fleet.backlog_after,
    };
    let twin = twin::twin(&facts, thresholds);
    serde_json::json!({
        "devices": twin["devices"],
        "config": twin["config"],
        "open_events": events,
        "recent_commands": commands,
    })
}

/// Room on the state directory's filesystem. The daemon's own word on waiting for space is in memory (the
/// status topic, `systemctl status`); this is what the filesystem says, which holds with or without it.
fn state_dir_report(state_dir: &Path) -> serde_json::Value {
    let Ok(room) = space::room(state_dir) else {
        return serde_json::json!({ "path": state_dir.display().to_string() });
    };
    let reserve_file =
        std::fs::metadata(state_dir.join(space::RESERVE_FILE)).map_or(0, |m| m.len());
    serde_json::json!({
        "path": state_dir.display().to_string(),
        "free_bytes": room.free,
        "size_bytes": room.total,
        "reserve_bytes": reserve_file,
        "low_on_space": room.is_low(),
    })
}

/// `config_path` is for the commands the status suggests.
fn print_status(report: &serde_json::Value, config_path: &Path) {
    let outbox = &report["outbox"];
    let text = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "never".to_string(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match outbox["exists"].as_bool() {
        Some(false) => println!(
            "outbox                  {} does not exist: the daemon has not run with this state_dir",
            text(&outbox["path"])
        ),
        _ => println!("outbox                  {}", text(&outbox["path"])),
    }
    println!("pending readings        {}", outbox["pending"]);
    println!(
        "hub clock               {} ({} reading(s) held until it is trusted)",
        text(&outbox["hub_clock"]),
        outbox["held_for_clock"]
    );
    match outbox["oldest_pending_age_s"].as_i64() {
        Some(age) => println!(
            "oldest pending          {age} s old ({})",
            text(&outbox["oldest_pending_at"])
        ),
        None => println!("oldest pending          none"),
    }
    println!("readings delivered      {}", outbox["delivered_total"]);
    println!(
        "last delivery           {}",
        text(&outbox["last_delivered_at"])
    );
    let uplink = &report["uplink"];
    match uplink["last_error"].as_str() {
        Some(error) => println!(
            "last broker error       {} ({error}){}",
            text(&uplink["last_error_at"]),
            match uplink["delivered_since_error"].as_bool() {
                Some(true) => "; readings were delivered since",
                _ => "",
            }
        ),
        None => println!("last broker error       none"),
    }
    let refused: Vec<String> = uplink["refused"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    if uplink["protocol"] == "3.1.1" && refused.is_empty() {
        println!("refused by the broker   not detectable over MQTT 3.1.1 (see the README)");
    } else if refused.is_empty() {
        println!(
            "refused by the broker   {} (MQTT {})",
            uplink["refused_total"],
            text(&uplink["protocol"])
        );
    } else {
        println!(
            "refused by the broker   {} ({}; MQTT {})",
            uplink["refused_total"],
            refused.join(", "),
            text(&uplink["protocol"])
        );
    }
    println!("refused, outbox full    {}", outbox["rejected_full_total"]);
    println!("duplicates skipped      {}", outbox["duplicates_total"]);
    if let Some(quarantined) = outbox["quarantined"].as_str() {
        println!(
            "QUARANTINED OUTBOX      {quarantined}; try `vitalsd outbox salvage --config {}`",
            config_path.display()
        );
    }
    if outbox["quarantined_records"].as_u64().unwrap_or(0) > 0 {
        println!(
            "DAMAGED READINGS        {} (failed their checksum; kept in the quarantine table, not published)",
            outbox["quarantined_records"]
        );
    }
    if outbox["lost_total"].as_u64().unwrap_or(0) > 0 {
        println!(
            "LOST FROM STORAGE       {} ({}); try `vitalsd outbox salvage --config {}`",
            outbox["lost_total"],
            text(&outbox["last_loss"]),
            config_path.display()
        );
    }
    let fleet = &report["fleet"];
    for device in fleet["devices"].as_array().into_iter().flatten() {
        println!(
            "device                  {} ({}) {}, last seen {}",
            text(&device["id"]),
            text(&device["model"]).replace("never", "model unknown"),
            text(&device["state"]),
            text(&device["last_seen"])
        );
    }
    println!(
        "configuration           version {}, sha256 {}",
        text(&fleet["config"]["version"]).replace("never", "local"),
        text(&fleet["config"]["sha256"])
    );
    for event in fleet["open_events"].as_array().into_iter().flatten() {
        println!(
            "OPEN EVENT              {} {}",
            text(&event["event"]),
            event["device"].as_str().unwrap_or_default()
        );
    }
    for command in fleet["recent_commands"].as_array().into_iter().flatten() {
        println!(
            "fleet command           {} {} {} {} at {}",
            text(&command["request_id"]),
            text(&command["command"]),
            text(&command["state"]),
            command["reason"].as_str().unwrap_or_default(),
            text(&command["at"])
        );
    }
    let state_dir = &report["state_dir"];
    if let (Some(free), Some(size)) = (
        state_dir["free_bytes"].as_u64(),
        state_dir["size_bytes"].as_u64(),
    ) {
        println!(
            "state_dir free          {} of {} (reserve {})",
            space::human(free),
            space::human(size),
            space::human(state_dir["reserve_bytes"].as_u64().unwrap_or(0))
        );
    }
    if state_dir["low_on_space"] == true {
        println!("STATE DIR LOW ON SPACE  when the outbox cannot write, new readings wait and devices are not read");
    }
    if let Some(counters) = report["counters"].as_object() {
        // Refusals are shown on their own line above.
        for (name, value) in counters
            .iter()
            .filter(|(name, _)| !name.starts_with(REFUSED_COUNTER))
        {
            println!("{name:<23} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expected: Result<&str, &str>) {
        let got = parse_hex(input).map(hex::encode);
        assert_eq!(got.as_deref().map_err(|e| e.as_str()), expected);
    }

    #[test]
    fn hex_forms() {
        check("80486100", Ok("80486100"));
        check("80 48 61 00", Ok("80486100"));
        check("0x80 0x48", Ok("8048"));
        check("80:48", Ok("8048"));
        check(
            "8 0486",
            Err("odd number of hex digits (5): a byte is missing a digit"),
        );
        check("80zz", Err("not a hex digit: 'z' at position 2"));
        check("", Err("no bytes given"));
    }
}

//! The hub's twin (`vitalsd.twin.v1`, retained on `twin`) and its events (`vitalsd.event.v1` on `events`),
//! built from facts passed in. Pure: no clock reads, no I/O. Neither carries a reading or a value.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use crate::outbox::OutboxStats;
use crate::state::devices::BoundDevice;

pub const TWIN_SCHEMA: &str = "vitalsd.twin.v1";
pub const EVENT_SCHEMA: &str = "vitalsd.event.v1";
/// A battery at or under this many percent is reported as `device_battery_low`.
pub const BATTERY_LOW_PERCENT: u8 = 20;
/// An untrusted hub clock for longer than this is reported as `clock_unsynchronized`.
pub const CLOCK_UNSYNCHRONIZED_AFTER: Duration = Duration::from_secs(3600);

/// A configured serial device, as the twin shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialDevice {
    pub id: String,
    pub path: String,
    pub protocol: &'static str,
    /// When the port last gave bytes, if it has in this run.
    pub last_seen: Option<DateTime<Utc>>,
}

/// The configuration as files, for the twin: which fleet command last changed it, and a digest.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConfigDigest {
    pub version: Option<String>,
    pub sha256: String,
}

/// Everything the twin and the events are made of, read at one moment.
pub struct HubFacts<'a> {
    pub hub_id: &'a str,
    pub at: DateTime<Utc>,
    /// `hub.clock` trust as the status topic names it; events that compare times wait for a trusted clock.
    pub hub_clock: &'static str,
    pub clock_trusted: bool,
    /// How long the clock has been untrusted, by the boot clock; zero while it is trusted.
    pub untrusted_for: Duration,
    pub outbox: &'a OutboxStats,
    pub bluetooth: &'a [BoundDevice],
    /// Addresses a `bind_device` command is waiting to bond with.
    pub binding: &'a [String],
    pub serial: &'a [SerialDevice],
    /// How long the daemon has run: a serial device not heard at all in this run is silent once this
    /// passes the threshold.
    pub running_for: Duration,
    pub config: &'a ConfigDigest,
    pub capabilities: &'a [&'static str],
}

/// The thresholds of `[fleet]`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub device_silent_after: Duration,
    pub backlog_after: Duration,
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis(ms: Option<i64>) -> Value {
    ms.and_then(DateTime::from_timestamp_millis)
        .map_or(Value::Null, |at| json!(time(at)))
}

/// Whether a serial device has been quiet past the threshold: since it was last heard (judged on a trusted
/// clock only), or, not heard in this run, for as long as the daemon has run.
fn serial_silent(facts: &HubFacts, device: &SerialDevice, thresholds: Thresholds) -> bool {
    let after = thresholds.device_silent_after;
    match device.last_seen {
        Some(last) => {
            facts.clock_trusted && (facts.at - last).to_std().is_ok_and(|quiet| quiet >= after)
        }
        None => facts.running_for >= after,
    }
}

/// The twin document.
pub fn twin(facts: &HubFacts, thresholds: Thresholds) -> Value {
    let stats = facts.outbox;
    let mut devices: Vec<Value> = facts
        .bluetooth
        .iter()
        .map(|device| {
            let binding = facts.binding.contains(&device.address);
            let now = facts.clock_trusted.then_some(facts.at);
            let state = device.fleet_state(now, thresholds.device_silent_after, binding);
            let model = device
                .information
                .as_ref()
                .and_then(|info| info.model.clone())
                .or_else(|| device.model.clone());
            let protocol = device
                .model
                .as_deref()
                .and_then(crate::catalog::protocol_of_model)
                .map(|protocol| protocol.name());
            json!({
                "id": format!("ble:{}", device.address),
                "transport": "ble",
                "address": device.address,
                "protocol": protocol,
                "model": model,
                "bound_at": time(device.bound_at),
                "last_seen": device.last_seen.map(time),
                "last_session": device.last_connected.map(time),
                "last_reading_at": device.last_reading_at.map(time),
                "battery": device.battery_percent,
                "needs_repairing": device.needs_repairing,
                "state": state,
            })
        })
        .collect();
    // A bind waiting for its device: not bound yet, but the backend asked for it.
    let waiting = facts.binding.iter().filter(|address| {
        !facts
            .bluetooth
            .iter()
            .any(|device| device.address == **address)
    });
    devices.extend(waiting.map(|address| {
        json!({
            "id": format!("ble:{address}"),
            "transport": "ble",
            "address": address,
            "protocol": null,
            "model": null,
            "bound_at": null,
            "last_seen": null,
            "last_session": null,
            "last_reading_at": null,
            "battery": null,
            "needs_repairing": false,
            "state": "binding",
        })
    }));
    devices.extend(facts.serial.iter().map(|device| {
        let state = match serial_silent(facts, device, thresholds) {
            true => "silent",
            false => "configured",
        };
        json!({
            "id": device.id,
            "transport": "serial",
            "path": device.path,
            "protocol": device.protocol,
            "model": null,
            "bound_at": null,
            "last_seen": device.last_seen.map(time),
            "last_session": null,
            "last_reading_at": null,
            "battery": null,
            "needs_repairing": false,
            "state": state,
        })
    }));
    json!({
        "schema": TWIN_SCHEMA,
        "hub_id": facts.hub_id,
        "version": env!("CARGO_PKG_VERSION"),
        "at": time(facts.at),
        "hub_clock": facts.hub_clock,
        "outbox": {
            "pending": stats.pending,
            "held_for_clock": stats.held,
            "oldest_pending_at": millis(stats.oldest_pending_created_at_ms),
            "delivered_total": stats.delivered_total,
            "last_delivered_at": millis(stats.last_delivered_at_ms),
            "rejected_full_total": stats.rejected_full_total,
            "quarantined_records": stats.quarantined_records,
            "lost_total": stats.lost_total,
            "waiting_for_space_since": millis(stats.waiting_for_space_since_ms),
        },
        "devices": devices,
        "config": {"version": facts.config.version, "sha256": facts.config.sha256},
        "capabilities": facts.capabilities,
    })
}

/// The part of the twin whose change is worth a publish before the hourly one: not the time, not counters
/// that move with every reading, not last-seen times (a silence that starts changes a device's `state`).
pub fn significant(twin: &Value) -> Value {
    let devices: Vec<Value> = twin["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|device| {
            json!([
                device["id"],
                device["state"],
                device["battery"],
                device["model"],
                device["protocol"]
            ])
        })
        .collect();
    let outbox = &twin["outbox"];
    json!({
        "hub_clock": twin["hub_clock"],
        "devices": devices,
        "config": twin["config"],
        "backlog": outbox["pending"].as_u64().unwrap_or(0) > 0,
        "oldest_pending_at": outbox["oldest_pending_at"],
        "quarantined_records": outbox["quarantined_records"],
        "lost_total": outbox["lost_total"],
        "waiting_for_space": !outbox["waiting_for_space_since"].is_null(),
    })
}

/// A condition an event reports: its name, the device it is about, and words for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub event: &'static str,
    pub device: Option<String>,
    pub detail: String,
}

impl Condition {
    /// The episode's key: one episode per event and device.
    pub fn key(&self) -> String {
        format!("{}|{}", self.event, self.device.as_deref().unwrap_or(""))
    }

    /// The event document.
    pub fn event(&self, hub_id: &str, at: DateTime<Utc>) -> Value {
        json!({
            "schema": EVENT_SCHEMA,
            "hub_id": hub_id,
            "at": time(at),
            "event": self.event,
            "device": self.device,
            "detail": self.detail,
        })
    }
}

/// The conditions that hold now. Those that compare the hub's time with a stored one hold only on a trusted
/// clock, so a wrong clock never starts a silence or a backlog.
pub fn conditions(facts: &HubFacts, thresholds: Thresholds) -> Vec<Condition> {
    let mut found = Vec::new();
    let shown = |duration: Duration| humantime::format_duration(duration).to_string();
    for device in facts.bluetooth {
        let id = Some(format!("ble:{}", device.address));
        let now = facts.clock_trusted.then_some(facts.at);
        if device.fleet_state(now, thresholds.device_silent_after, false) == "silent" {
            let since = device
                .last_seen
                .map_or("since it was bound".to_string(), |at| {
                    format!("since {}", time(at))
                });
            found.push(Condition {
                event: "device_silent",
                device: id.clone(),
                detail: format!(
                    "not seen {since} (threshold {})",
                    shown(thresholds.device_silent_after)
                ),
            });
        }
        if device.needs_repairing {
            found.push(Condition {
                event: "device_needs_pairing",
                device: id.clone(),
                detail: "the device lost its bond; pair it again (bind_device)".to_string(),
            });
        }
        if let Some(percent) = device.battery_percent.filter(|p| *p <= BATTERY_LOW_PERCENT) {
            found.push(Condition {
                event: "device_battery_low",
                device: id.clone(),
                detail: format!("battery at {percent} %"),
            });
        }
    }
    for device in facts.serial {
        if serial_silent(facts, device, thresholds) {
            let since = device
                .last_seen
                .map_or("since the daemon started".to_string(), |at| {
                    format!("since {}", time(at))
                });
            found.push(Condition {
                event: "device_silent",
                device: Some(device.id.clone()),
                detail: format!(
                    "no bytes {since} (threshold {})",
                    shown(thresholds.device_silent_after)
                ),
            });
        }
    }
    let stats = facts.outbox;
    let oldest = stats
        .oldest_pending_created_at_ms
        .and_then(DateTime::from_timestamp_millis);
    if let Some(oldest) = oldest.filter(|_| facts.clock_trusted) {
        if (facts.at - oldest)
            .to_std()
            .is_ok_and(|age| age >= thresholds.backlog_after)
        {
            found.push(Condition {
                event: "outbox_backlog",
                device: None,
                detail: format!(
                    "{} reading(s) pending, the oldest from {}",
                    stats.pending,
                    time(oldest)
                ),
            });
        }
    }
    let mut faults = Vec::new();
    if stats.waiting_for_space_since_ms.is_some() {
        faults.push("the state directory is full; devices are not read".to_string());
    }
    if stats.quarantined_records > 0 {
        faults.push(format!(
            "{} record(s) failed their checksum and are quarantined",
            stats.quarantined_records
        ));
    }
    if stats.lost_total > 0 {
        faults.push(format!(
            "{} committed record(s) were lost to a damaged log",
            stats.lost_total
        ));
    }
    if !faults.is_empty() {
        found.push(Condition {
            event: "storage_fault",
            device: None,
            detail: faults.join("; "),
        });
    }
    if facts.untrusted_for >= CLOCK_UNSYNCHRONIZED_AFTER {
        found.push(Condition {
            event: "clock_unsynchronized",
            device: None,
            detail: format!(
                "the hub's clock has not been trusted for {} min; readings wait for it",
                facts.untrusted_for.as_secs() / 60
            ),
        });
    }
    found
}

/// Open episodes: an event fires when its condition starts, and again only after it cleared.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Episodes {
    open: BTreeSet<String>,
}

impl Episodes {
    pub fn from_keys(keys: impl IntoIterator<Item = String>) -> Episodes {
        Episodes {
            open: keys.into_iter().collect(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.open.iter()
    }

    /// Takes the conditions that hold now; returns those that started an episode.
    pub fn update(&mut self, now: Vec<Condition>) -> Vec<Condition> {
        let keys: BTreeSet<String> = now.iter().map(Condition::key).collect();
        let started = now
            .into_iter()
            .filter(|condition| !self.open.contains(&condition.key()))
            .collect();
        self.open = keys;
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::devices::Reach;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn cuff(last_seen: Option<&str>) -> BoundDevice {
        let mut device = BoundDevice::new(
            "00:AA:01:01:00:01",
            Reach::Connect,
            Some("A&D_UA-651_0001".to_string()),
            at("2026-12-01T00:00:00Z"),
        );
        device.last_seen = last_seen.map(at);
        device
    }

    fn check(
        now: &str,
        trusted: bool,
        untrusted_for: Duration,
        devices: &[BoundDevice],
        stats: OutboxStats,
        expected: &[&str],
    ) {
        let digest = ConfigDigest::default();
        let facts = HubFacts {
            hub_id: "hub",
            at: at(now),
            hub_clock: if trusted {
                "synchronized"
            } else {
                "unsynchronized"
            },
            clock_trusted: trusted,
            untrusted_for,
            outbox: &stats,
            bluetooth: devices,
            binding: &[],
            serial: &[],
            running_for: Duration::ZERO,
            config: &digest,
            capabilities: &[],
        };
        let thresholds = Thresholds {
            device_silent_after: 72 * HOUR,
            backlog_after: 24 * HOUR,
        };
        let found: Vec<String> = conditions(&facts, thresholds)
            .iter()
            .map(Condition::key)
            .collect();
        assert_eq!(found, expected, "{now} trusted {trusted}");
    }

    fn backlog(oldest: &str) -> OutboxStats {
        OutboxStats {
            pending: 3,
            oldest_pending_created_at_ms: Some(at(oldest).timestamp_millis()),
            ..OutboxStats::default()
        }
    }

    #[test]
    fn conditions_hold_by_threshold_and_only_on_a_trusted_clock_where_they_compare_times() {
        let none = OutboxStats::default();
        let seen = [cuff(Some("2026-12-02T00:00:00Z"))];
        let mut low = cuff(Some("2026-12-04T23:00:00Z"));
        low.battery_percent = Some(20);
        let mut lost_bond = cuff(Some("2026-12-04T23:00:00Z"));
        lost_bond.needs_repairing = true;
        let silent = "device_silent|ble:00:AA:01:01:00:01";
        check(
            "2026-12-04T23:59:59Z",
            true,
            Duration::ZERO,
            &seen,
            OutboxStats::default(),
            &[],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &seen,
            OutboxStats::default(),
            &[silent],
        );
        check(
            "2026-12-05T00:00:00Z",
            false,
            Duration::ZERO,
            &seen,
            OutboxStats::default(),
            &[],
        );
        // Never seen: silent from when it was bound.
        check(
            "2026-12-04T00:00:00Z",
            true,
            Duration::ZERO,
            &[cuff(None)],
            OutboxStats::default(),
            &[silent],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[low],
            OutboxStats::default(),
            &["device_battery_low|ble:00:AA:01:01:00:01"],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[lost_bond],
            OutboxStats::default(),
            &["device_needs_pairing|ble:00:AA:01:01:00:01"],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[],
            backlog("2026-12-04T00:00:01Z"),
            &[],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[],
            backlog("2026-12-04T00:00:00Z"),
            &["outbox_backlog|"],
        );
        check(
            "2026-12-05T00:00:00Z",
            false,
            Duration::ZERO,
            &[],
            backlog("2026-12-01T00:00:00Z"),
            &[],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[],
            OutboxStats {
                quarantined_records: 1,
                ..none.clone()
            },
            &["storage_fault|"],
        );
        check(
            "2026-12-05T00:00:00Z",
            true,
            Duration::ZERO,
            &[],
            OutboxStats {
                waiting_for_space_since_ms: Some(1),
                ..none.clone()
            },
            &["storage_fault|"],
        );
        check(
            "2026-12-05T00:00:00Z",
            false,
            HOUR - Duration::from_secs(1),
            &[],
            none.clone(),
            &[],
        );
        check(
            "2026-12-05T00:00:00Z",
            false,
            HOUR,
            &[],
            none,
            &["clock_unsynchronized|"],
        );
    }

    #[test]
    fn the_twin_lists_bound_binding_and_serial_devices_and_satisfies_its_schema() {
        let stats = OutboxStats {
            pending: 2,
            oldest_pending_created_at_ms: Some(1_700_000_000_000),
            ..OutboxStats::default()
        };
        let mut lost_bond = cuff(Some("2026-12-04T23:00:00Z"));
        lost_bond.address = "00:AA:01:01:00:02".to_string();
        lost_bond.needs_repairing = true;
        let bluetooth = [cuff(Some("2026-12-04T23:00:00Z")), lost_bond];
        let binding = [
            "00:AA:01:01:00:01".to_string(),
            "00:AA:01:01:00:09".to_string(),
        ];
        let serial = [SerialDevice {
            id: "oximeter-1".to_string(),
            path: "/dev/ttyUSB0".to_string(),
            protocol: "nonin-df13",
            last_seen: None,
        }];
        let digest = ConfigDigest {
            version: Some("ports-1".to_string()),
            sha256: "ab".repeat(32),
        };
        let facts = HubFacts {
            hub_id: "hub-0001",
            at: at("2026-12-05T00:00:00Z"),
            hub_clock: "synchronized",
            clock_trusted: true,
            untrusted_for: Duration::ZERO,
            outbox: &stats,
            bluetooth: &bluetooth,
            binding: &binding,
            serial: &serial,
            running_for: Duration::ZERO,
            config: &digest,
            capabilities: &crate::fleet::commands::CAPABILITIES,
        };
        let thresholds = Thresholds {
            device_silent_after: 72 * HOUR,
            backlog_after: 24 * HOUR,
        };
        let twin = twin(&facts, thresholds);
        let states: Vec<(&str, &str)> = twin["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["id"].as_str().unwrap(), d["state"].as_str().unwrap()))
            .collect();
        // The first cuff is bonded, so a bind of it again does not make it "binding".
        let mut bonded = bluetooth[0].clone();
        bonded.bonded = true;
        assert_eq!(
            states,
            [
                ("ble:00:AA:01:01:00:01", "binding"),
                ("ble:00:AA:01:01:00:02", "needs_pairing"),
                ("ble:00:AA:01:01:00:09", "binding"),
                ("oximeter-1", "configured"),
            ]
        );
        assert_eq!(bonded.fleet_state(Some(facts.at), 72 * HOUR, true), "bound");
        assert_eq!(
            twin["outbox"]["oldest_pending_at"],
            "2023-11-14T22:13:20.000Z"
        );
        let schema: Value =
            serde_json::from_str(include_str!("../../schema/vitalsd.twin.v1.schema.json")).unwrap();
        let validator = jsonschema::validator_for(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&twin)
            .map(|e| format!("{e} at {}", e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{errors:?}\n{twin:#}");
        assert!(
            !twin.to_string().contains("values"),
            "no readings in the twin"
        );
    }

    #[test]
    fn a_serial_device_is_silent_after_the_threshold_since_it_was_heard_or_since_the_daemon_started(
    ) {
        let port = |last_seen: Option<&str>| SerialDevice {
            id: "oximeter-1".to_string(),
            path: "/dev/ttyUSB0".to_string(),
            protocol: "nonin-df13",
            last_seen: last_seen.map(at),
        };
        let digest = ConfigDigest::default();
        let stats = OutboxStats::default();
        // (last heard, trusted clock, how long the daemon has run, silent)
        let table = [
            (Some("2026-12-02T00:00:01Z"), true, Duration::ZERO, false),
            (Some("2026-12-02T00:00:00Z"), true, Duration::ZERO, true),
            (Some("2026-12-02T00:00:00Z"), false, Duration::ZERO, false),
            (None, true, 72 * HOUR - Duration::from_secs(1), false),
            (None, false, 72 * HOUR, true),
        ];
        for (index, (heard, trusted, running_for, silent)) in table.into_iter().enumerate() {
            let serial = [port(heard)];
            let facts = HubFacts {
                hub_id: "hub",
                at: at("2026-12-05T00:00:00Z"),
                hub_clock: "synchronized",
                clock_trusted: trusted,
                untrusted_for: Duration::ZERO,
                outbox: &stats,
                bluetooth: &[],
                binding: &[],
                serial: &serial,
                running_for,
                config: &digest,
                capabilities: &[],
            };
            let thresholds = Thresholds {
                device_silent_after: 72 * HOUR,
                backlog_after: 24 * HOUR,
            };
            let state = &twin(&facts, thresholds)["devices"][0]["state"];
            let events: Vec<String> = conditions(&facts, thresholds)
                .iter()
                .map(Condition::key)
                .collect();
            let expected_state = if silent { "silent" } else { "configured" };
            assert_eq!(state, expected_state, "row {index}");
            assert_eq!(
                events == ["device_silent|oximeter-1"],
                silent,
                "row {index}: {events:?}"
            );
        }
    }

    #[test]
    fn an_event_fires_once_per_episode() {
        let condition = |event: &'static str| Condition {
            event,
            device: None,
            detail: String::new(),
        };
        let mut episodes = Episodes::default();
        // (conditions holding at each check, events fired)
        let table: [(&[&'static str], &[&'static str]); 5] = [
            (&["outbox_backlog"], &["outbox_backlog"]),
            (&["outbox_backlog", "storage_fault"], &["storage_fault"]),
            (&["outbox_backlog", "storage_fault"], &[]),
            (&["storage_fault"], &[]),
            (&["outbox_backlog", "storage_fault"], &["outbox_backlog"]),
        ];
        for (index, (holding, fired)) in table.into_iter().enumerate() {
            let started = episodes.update(holding.iter().map(|e| condition(e)).collect());
            let started: Vec<&str> = started.iter().map(|c| c.event).collect();
            assert_eq!(started, fired, "row {index}");
        }
    }
}

//! Releases the readings held in the outbox for a trusted hub clock: resolves their times from the
//! boot-time clock once the hub clock is trusted in the same boot, or flags them once their boot has ended.
//!
//! Why here, and not at publish time: the payload is final before it reaches the queue, so the uplink
//! publishes opaque bytes and a record republished after a reconnect or a crash is the same document. A
//! held reading is durable and claims its id from the moment it is received, so a device's re-sent
//! records are still queued once; only its times wait.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::clock::HubNow;
use crate::model::fhir::FhirOptions;
use crate::model::measurement_time::HubClock;
use crate::model::payload::{release_held, ClockResolution, HeldPayloadError};
use crate::outbox::worker::WorkerGone;
use crate::outbox::{OutboxHandle, Release};

/// How often the hub clock's trust is checked; sync usually arrives some seconds to minutes after boot.
const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Held records read and released per transaction.
const BATCH: usize = 512;

/// What a release pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Held records whose times were resolved from this boot's clock.
    pub resolved: u64,
    /// Held records of an earlier boot whose clock was never trusted, published with `hub_clock_unresolved`.
    pub unresolved: u64,
    /// Held records still waiting for this boot's clock (or that could not be read).
    pub waiting: u64,
}

/// Runs until `shutdown`: a pass at start (earlier boots' readings), then one every tick once this boot's
/// clock was trusted. A pass over an empty table is one indexed query, and a periodic one cannot miss a
/// reading held just after an earlier pass looked.
pub async fn run(
    outbox: OutboxHandle,
    fhir: FhirOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerGone> {
    let mut tick = crate::clock::every(CHECK_EVERY);
    let mut last_clock: Option<HubClock> = None;
    // When this boot's boot-time clock read zero, by a trusted wall clock. It stays true after the kernel
    // withdraws its trust (timesyncd's clock is "unsynchronised" again after hours without an NTP answer):
    // readings received meanwhile are still dated exactly, to the boot-time clock's drift.
    let mut boot_started_at: Option<DateTime<Utc>> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return Ok(()),
        }
        let now = crate::clock::hub_now();
        let first = last_clock.is_none();
        if last_clock != Some(now.clock) {
            match now.clock {
                HubClock::Unsynchronized => tracing::warn!(
                    "The hub clock is not synchronised: readings are held in the outbox, and no device clock is set, until it is."
                ),
                clock => tracing::info!(clock = clock.as_str(), "The hub clock is trusted."),
            }
            last_clock = Some(now.clock);
        }
        if now.clock.is_trusted() {
            boot_started_at = Some(boot_start(&now));
        }
        if first || boot_started_at.is_some() {
            let released = release_pass(&outbox, &now.boot.boot_id, boot_started_at, &fhir).await?;
            if released.resolved + released.unresolved > 0 {
                tracing::info!(
                    resolved = released.resolved,
                    unresolved = released.unresolved,
                    waiting = released.waiting,
                    "Released readings held for a trusted hub clock."
                );
            }
            if released.unresolved > 0 {
                tracing::warn!(
                    count = released.unresolved,
                    "Readings received before a reboot, while the hub clock was never trusted, were published with the flag hub_clock_unresolved: their receive times are the unsynchronised clock's."
                );
            }
        }
    }
}

/// When the boot-time clock read zero, by the wall clock of `now` (which the caller trusts).
pub fn boot_start(now: &HubNow) -> DateTime<Utc> {
    now.wall - chrono::TimeDelta::from_std(now.boot.since_boot).unwrap_or_default()
}

/// Releases every held record that can be released now: those of `boot_id` when its start is known by a
/// trusted clock, and those of any other boot. A held FHIR record becomes the Bundle of its released
/// reading, made with `fhir`.
pub async fn release_pass(
    outbox: &OutboxHandle,
    boot_id: &str,
    boot_started_at: Option<DateTime<Utc>>,
    fhir: &FhirOptions,
) -> Result<Released, WorkerGone> {
    let resolution = ClockResolution {
        boot_id,
        boot_started_at,
    };
    let mut released = Released::default();
    let mut after = 0;
    loop {
        let held = outbox.fetch_held(after, BATCH).await?;
        let Some(last) = held.last() else {
            return Ok(released);
        };
        after = last.seq;
        let full = held.len() == BATCH;
        let mut batch = Vec::new();
        for record in held {
            let released_payload = release_held(&record.payload, &resolution).and_then(|done| {
                let Some(mut done) = done else {
                    return Ok(None);
                };
                if record.format == crate::model::fhir::OUTBOX_FORMAT {
                    done.payload = crate::model::fhir::bundle_of_payload(&done.payload, fhir)
                        .map_err(|error| HeldPayloadError(error.to_string()))?;
                }
                Ok(Some(done))
            });
            match released_payload {
                Ok(Some(done)) => {
                    if done.received_at_ms.is_some() {
                        released.resolved += 1;
                    } else {
                        released.unresolved += 1;
                    }
                    batch.push(Release {
                        seq: record.seq,
                        payload: done.payload,
                        created_at_ms: done.received_at_ms,
                    });
                }
                Ok(None) => released.waiting += 1,
                Err(error) => {
                    // Never dropped: it stays held, visible in `vitalsd status`, for a later version to read.
                    tracing::error!(seq = record.seq, %error, "A held reading cannot be released.");
                    released.waiting += 1;
                }
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let moved = outbox.release(batch).await?;
            if moved < count {
                // A full disk: what did not move stays held and is tried at the next pass.
                return Ok(released);
            }
        }
        if !full {
            return Ok(released);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::codes;
    use crate::model::payload::{self, DeviceInfo};
    use crate::model::reading::{BootInstant, Kind, Reading, Value};
    use crate::outbox::{NewRecord, Outbox, OutboxOptions};

    fn now(boot_id: &str, since_boot_s: u64, clock: HubClock) -> HubNow {
        HubNow {
            wall: "2026-12-05T08:00:00Z".parse().unwrap(),
            boot: BootInstant {
                boot_id: boot_id.into(),
                since_boot: Duration::from_secs(since_boot_s),
            },
            clock,
        }
    }

    /// A reading received under an untrusted clock at `since_boot_s` of `boot_id`, as the pipeline stores it.
    fn held_record(boot_id: &str, since_boot_s: u64) -> NewRecord {
        let received: HubNow = now(boot_id, since_boot_s, HubClock::Unsynchronized);
        let mut reading = Reading::at_hub_time(
            Kind::PulseOximetry,
            "2020-01-01T00:00:00Z".parse().unwrap(),
            &[since_boot_s as u8],
        );
        reading.values = vec![Value::number(&codes::SPO2, 97.0)];
        reading.hub_clock = received.clock;
        reading.received_since_boot = Some(received.boot);
        let device = DeviceInfo {
            id: "serial:test".into(),
            transport: crate::decode::Transport::Serial,
            protocol: "nonin-df8",
            identity: Default::default(),
            specialization: None,
        };
        let id = payload::reading_id(&device.id, &reading, 0);
        NewRecord {
            payload: payload::to_json("hub", &id, &device, &reading),
            key: id,
            label: "pulse_oximetry".into(),
            format: payload::OUTBOX_FORMAT,
            created_at_ms: reading.received_at.timestamp_millis(),
            held: payload::held(&reading).is_some(),
        }
    }

    /// An outbox in `dir`, served by its worker thread.
    fn outbox_in(
        dir: &std::path::Path,
    ) -> (
        OutboxHandle,
        std::thread::JoinHandle<Result<(), crate::outbox::OutboxError>>,
    ) {
        let (outbox, _) = Outbox::open(
            &dir.join("outbox.db"),
            OutboxOptions { max_pending: 100 },
            0,
        )
        .unwrap();
        crate::outbox::spawn_worker(
            outbox,
            crate::outbox::space::Space::new(dir),
            400,
            None,
            || None,
        )
    }

    #[tokio::test]
    async fn held_readings_wait_for_their_boots_clock_and_earlier_boots_are_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _worker) = outbox_in(dir.path());
        outbox
            .append_durable(vec![
                held_record("old-boot", 50),
                held_record("this-boot", 60),
            ])
            .await
            .unwrap();
        assert!(outbox.fetch_after(0, 10).await.unwrap().is_empty());

        // This boot's clock is not trusted yet: only the earlier boot's reading can go, flagged.
        let pass = release_pass(&outbox, "this-boot", None, &FhirOptions::default())
            .await
            .unwrap();
        assert_eq!(
            pass,
            Released {
                resolved: 0,
                unresolved: 1,
                waiting: 1
            }
        );
        let queued = outbox.fetch_after(0, 10).await.unwrap();
        let first: serde_json::Value = serde_json::from_slice(&queued[0].payload).unwrap();
        assert_eq!(first["flags"], serde_json::json!(["hub_clock_unresolved"]));
        assert_eq!(first["received_at"], "2020-01-01T00:00:00.000Z");

        // Trust arrives 100 s into the boot at 08:00:00: the reading taken at 60 s was received 40 s before.
        let trusted = now("this-boot", 100, HubClock::Synchronized);
        let pass = release_pass(
            &outbox,
            "this-boot",
            Some(boot_start(&trusted)),
            &FhirOptions::default(),
        )
        .await
        .unwrap();
        assert_eq!(
            pass,
            Released {
                resolved: 1,
                unresolved: 0,
                waiting: 0
            }
        );
        let queued = outbox.fetch_after(0, 10).await.unwrap();
        let second: serde_json::Value = serde_json::from_slice(&queued[1].payload).unwrap();
        assert_eq!(second["received_at"], "2026-12-05T07:59:20.000Z");
        assert_eq!(second["measured_at"], "2026-12-05T07:59:20+00:00");
        assert_eq!(second["flags"], serde_json::json!([]));
        assert_eq!(
            queued[1].created_at_ms,
            "2026-12-05T07:59:20Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(outbox.stats().await.unwrap().held, 0);
    }

    #[tokio::test]
    async fn a_held_fhir_record_is_released_as_the_bundle_of_its_resolved_reading_and_first_subject(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _worker) = outbox_in(dir.path());
        let reading = held_record("this-boot", 60);
        let patient = |value: &str| FhirOptions {
            subject: Some(crate::model::fhir::Subject {
                system: "urn:example:patients".into(),
                value: value.into(),
            }),
            ..FhirOptions::default()
        };
        // The configuration named another patient by the time the clock was trusted (a restart between).
        let fhir = NewRecord {
            key: format!("{}/fhir", reading.key),
            format: crate::model::fhir::OUTBOX_FORMAT,
            payload: crate::model::fhir::held_document(&reading.payload, &patient("p-1")).unwrap(),
            ..reading
        };
        outbox.append_durable(vec![fhir]).await.unwrap();
        let trusted = now("this-boot", 100, HubClock::Synchronized);
        let options = patient("p-9");
        let pass = release_pass(&outbox, "this-boot", Some(boot_start(&trusted)), &options)
            .await
            .unwrap();
        assert_eq!(pass.resolved, 1);
        let queued = outbox.fetch_after(0, 10).await.unwrap();
        let bundle: serde_json::Value = serde_json::from_slice(&queued[0].payload).unwrap();
        assert_eq!(bundle["resourceType"], "Bundle");
        let observation = &bundle["entry"][2]["resource"];
        assert_eq!(
            observation["effectiveDateTime"],
            "2026-12-05T07:59:20+00:00"
        );
        assert_eq!(observation["subject"]["identifier"]["value"], "p-1");
        assert_eq!(observation["valueQuantity"]["value"], 97);
    }
}

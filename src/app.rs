//! Wiring: builds the daemon's tasks from the configuration, connects them with bounded channels, and
//! owns the shutdown signal. The only place that spawns tasks.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::ble;
use crate::config::Config;
use crate::control;
use crate::fleet;
use crate::model::payload::DeviceInfo;
use crate::mqtt::exchange::Exchange;
use crate::mqtt::{self, UplinkSettings};
use crate::outbox::space::{self, Space};
use crate::outbox::{spawn_worker, OpenReport, Outbox, OutboxOptions};
use crate::pipeline::DeviceSettings;
use crate::serial::{self, PortSettings};
use crate::state::devices::BoundDevices;

/// The outbox database inside the state directory.
pub const OUTBOX_FILE: &str = "outbox.db";
/// How long a stop waits for the outbox worker to finish what it is doing.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(5);

/// How the daemon stopped, when it stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to stop (a signal).
    Normally,
    /// A fleet command asked for a fresh start (a restart, or new serial ports): the caller starts again.
    ForRestart,
}

/// Runs the daemon until `shutdown` turns true or a part fails that must not be papered over.
/// `config_path` is where `config` was read from, for the commands the log tells an operator to run.
pub async fn run(
    config: Config,
    config_path: &Path,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Stopped> {
    std::fs::create_dir_all(&config.hub.state_dir).with_context(|| {
        format!(
            "cannot create state directory {}",
            config.hub.state_dir.display()
        )
    })?;
    crate::clock::set_policy(config.hub.clock);
    let outbox_path = config.hub.state_dir.join(OUTBOX_FILE);
    // Held for the daemon's life: `vitalsd outbox salvage` must not write while the daemon does.
    let _outbox_lock = crate::outbox::salvage::OutboxLock::acquire(&outbox_path)?;
    let (outbox, report) = open_outbox(&config, &outbox_path)?;
    if let Some(moved_to) = &report.quarantined_to {
        tracing::error!(
            moved_to = %moved_to.display(),
            reason = report.quarantine_reason.as_deref().unwrap_or(""),
            "THE OUTBOX DATABASE WAS UNREADABLE. It was moved to {}, not deleted, and a fresh outbox was started. \
             Readings in the old file were NOT forwarded; with the service stopped, recover what is readable \
             with `vitalsd outbox salvage --config {} {}`.",
            moved_to.display(),
            config_path.display(),
            moved_to.display()
        );
    }
    if let Some(loss) = &report.lost {
        tracing::error!(
            lost = loss.records,
            copy = %loss.kept_copy.as_ref().map_or("none".to_string(), |p| p.display().to_string()),
            "STORED READINGS WERE LOST: the outbox's write-ahead log was damaged or cut, and {} committed \
             reading(s) are missing. A copy of the files as found was kept; with the service stopped, run \
             `vitalsd outbox salvage --config {}` to recover what is readable.",
            loss.records,
            config_path.display()
        );
    }
    if let Some(problem) = &report.mark_problem {
        tracing::warn!(%problem, "The outbox's commit mark is unusable; loss detection starts again from now.");
    }
    if report.acknowledged_mark_damaged {
        tracing::error!("The outbox's record of which readings the broker acknowledged is damaged: every reading still in the file is sent again, so the backend may receive some twice (same reading ids). Check the storage.");
    }
    if report.index_deferred {
        tracing::warn!("No room in the state directory to index the outbox's creation times: status and fleet checks read the whole backlog until a later start builds the index.");
    }
    tracing::info!(path = %outbox_path.display(), pending = outbox.pending(), "Outbox open.");
    let space = Space::new(&config.hub.state_dir);
    let (outbox, worker) = spawn_worker(
        outbox,
        space,
        config.outbox.dedup_retention_days,
        config.outbox.fold_log_after,
        || {
            crate::clock::hub_clock()
                .is_trusted()
                .then(|| crate::clock::now_utc().timestamp_millis())
        },
    );
    let mut worker = tokio::task::spawn_blocking(move || worker.join());

    let (stop_tasks, stop_signal) = watch::channel(false);
    let mut devices = JoinSet::new();
    let activity = crate::hand_over::DeviceActivity::default();
    let formats = formats(&config);
    devices.spawn(crate::held_readings::run(
        outbox.clone(),
        // Held FHIR records from before a change of `[output] formats` still get their Bundles.
        config.fhir.options(),
        stop_signal.clone(),
    ));
    for port in &config.serial {
        let (events_tx, events_rx) = mpsc::channel(64);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let line = port.protocol.line_settings();
        let settings = PortSettings {
            location: port.path.clone(),
            baud_rate: port
                .baud_rate
                .or(line.map(|settings| settings.baud_rate))
                .unwrap_or(9600),
            parity: port
                .parity
                .or(line.map(|settings| settings.parity))
                .unwrap_or(crate::decode::Parity::None),
            commands: port.protocol.host_commands(port.select_format),
        };
        let port_stop = stop_signal.clone();
        devices.spawn(async move {
            serial::run_port(settings, events_tx, commands_rx, port_stop).await;
            Ok(())
        });
        let device = DeviceSettings {
            hub_id: config.hub.id.clone(),
            formats: formats.clone(),
            device: DeviceInfo {
                id: port.device_id.clone(),
                transport: port.protocol.transport(),
                protocol: port.protocol.name(),
                identity: Default::default(),
                specialization: Some(port.protocol.specialization()),
            },
            protocol: port.protocol,
            spot: crate::spot::SpotRule {
                stable_for: port.spot_stable,
                repeat_every: port.spot_repeat,
            },
            time_zone: &chrono::Local,
        };
        let checkpoints =
            crate::state::checkpoints::CheckpointFile::new(&config.hub.state_dir, &port.device_id);
        devices.spawn(serial::device::run_device(
            device,
            Some(checkpoints),
            events_rx,
            commands_tx,
            outbox.clone(),
            activity.clone(),
            stop_signal.clone(),
        ));
    }
    let mut bound_count = 0;
    let mut shared_devices = None;
    if config.ble.enabled {
        match BoundDevices::load(&config.hub.state_dir) {
            Ok(list) => {
                bound_count = list.all().len();
                let shared = std::sync::Arc::new(std::sync::Mutex::new(list));
                shared_devices = Some(shared.clone());
                let settings = ble::BleSettings {
                    adapter: config.ble.adapter.clone(),
                    hub_id: config.hub.id.clone(),
                    formats: formats.clone(),
                    spot: crate::spot::SpotRule::default(),
                };
                devices.spawn(ble::run(
                    settings,
                    shared.clone(),
                    outbox.clone(),
                    stop_signal.clone(),
                ));
                let control_settings = control::ControlSettings {
                    runtime_dir: config.hub.runtime_dir.clone(),
                    adapter: config.ble.adapter.clone(),
                    admin_group: config.ble.admin_group.clone(),
                };
                let control_stop = stop_signal.clone();
                devices.spawn(async move {
                    // Without the socket the technician commands still work once the daemon is stopped.
                    if let Err(error) = control::serve(control_settings, shared, control_stop).await
                    {
                        tracing::error!(%error, "The control socket is not available.");
                    }
                    Ok(())
                });
            }
            // Serial devices keep working; Bluetooth waits until someone fixes or removes the file.
            Err(error) => tracing::error!(%error, "Bluetooth devices are NOT read."),
        }
    }
    let (to_uplink, from_fleet) = mpsc::channel(64);
    let (to_fleet, from_uplink) = mpsc::channel(64);
    let (restart_trigger, mut restart_requested) = watch::channel(false);
    let fleet_settings = fleet::agent::FleetSettings {
        hub_id: config.hub.id.clone(),
        fleet: config.fleet.clone(),
        config_path: config_path.to_path_buf(),
        state_dir: config.hub.state_dir.clone(),
        adapter: config.ble.adapter.clone(),
        serial: fleet::agent::serial_devices(&config),
        config_digest: fleet::agent::config_digest(config_path),
        mqtt_protocol: config.mqtt.protocol,
    };
    let fleet_parts = fleet::agent::FleetParts {
        outbox: outbox.clone(),
        devices: shared_devices,
        activity,
        incoming: from_uplink,
        outgoing: to_uplink,
        restart: restart_trigger,
    };
    let fleet_stop = stop_signal.clone();
    devices.spawn(async move {
        // Readings flow without the fleet agent; only remote operation is lost.
        if let Err(error) = fleet::agent::run(fleet_settings, fleet_parts, fleet_stop).await {
            tracing::error!(%error, "Fleet operations stopped: no twin, events or commands until a restart.");
        }
        Ok(())
    });
    let exchange = Exchange {
        subscriptions: vec!["cmd/+".to_string()],
        outgoing: from_fleet,
        incoming: to_fleet,
    };
    let uplink_settings = UplinkSettings {
        hub_id: config.hub.id.clone(),
        mqtt: config.mqtt.clone(),
    };
    let mut uplink = tokio::spawn(mqtt::run(
        uplink_settings,
        outbox.clone(),
        Some(exchange),
        stop_signal.clone(),
    ));

    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "running; {} serial device(s), {} bound Bluetooth device(s)",
            config.serial.len(),
            bound_count
        )),
    ]);
    let watchdog_period = sd_notify::watchdog_enabled()
        .map(|period| period / 2)
        .unwrap_or(Duration::from_secs(3600));
    let mut watchdog = crate::clock::every(watchdog_period);
    let mut last_progress = outbox.progress();
    let mut failure: Option<anyhow::Error> = None;
    let mut uplink_done = false;
    let mut worker_done = false;
    let mut stopped = Stopped::Normally;
    // The fleet agent holds the sender; when it stops (its journal failed), readings go on without it.
    let mut restart_watched = true;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = restart_requested.changed(), if restart_watched => {
                if changed.is_err() {
                    restart_watched = false;
                } else if *restart_requested.borrow() {
                    stopped = Stopped::ForRestart;
                    break;
                }
            }
            result = &mut worker => {
                worker_done = true;
                failure = Some(match result {
                    Ok(Ok(Ok(()))) => anyhow::anyhow!("the outbox worker stopped unexpectedly"),
                    Ok(Ok(Err(error))) => anyhow::Error::new(error).context("outbox storage failed; stopping so nothing is accepted that cannot be stored"),
                    _ => anyhow::anyhow!("the outbox worker panicked"),
                });
                break;
            }
            result = &mut uplink => {
                uplink_done = true;
                failure = Some(match result {
                    Ok(Ok(())) => anyhow::anyhow!("the uplink stopped unexpectedly"),
                    Ok(Err(error)) => anyhow::Error::new(error).context("the uplink failed"),
                    Err(error) => anyhow::Error::new(error).context("the uplink panicked"),
                });
                break;
            }
            _ = watchdog.tick() => {
                // The ping proves the outbox worker still answers, not merely that a timer fires.
                // Stats never wait behind an append, so a full disk does not silence the watchdog; on slow
                // storage they may wait behind other work, and a worker that still makes progress is alive.
                let stats = tokio::time::timeout(Duration::from_secs(5), outbox.stats()).await;
                let progress = outbox.progress();
                let moving = progress != last_progress;
                last_progress = progress;
                if !matches!(stats, Ok(Ok(_))) && moving {
                    let _ = sd_notify::notify(&[
                        sd_notify::NotifyState::Watchdog,
                        sd_notify::NotifyState::Status("running; the outbox's storage is slow"),
                    ]);
                }
                if let Ok(Ok(stats)) = stats {
                    let status = match stats.waiting_for_space_since_ms {
                        Some(since_ms) => format!(
                            "waiting for space in state_dir since {}: devices are not read; {} reading(s) waiting in the outbox",
                            chrono::DateTime::from_timestamp_millis(since_ms).map(|t| t.to_rfc3339()).unwrap_or_default(),
                            stats.pending
                        ),
                        None => format!("running; {} reading(s) waiting in the outbox", stats.pending),
                    };
                    let _ = sd_notify::notify(&[
                        sd_notify::NotifyState::Watchdog,
                        sd_notify::NotifyState::Status(&status),
                    ]);
                }
            }
        }
    }
    if stopped == Stopped::ForRestart {
        // The same process starts again (cli::run), and says READY=1 once it has.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Reloading]);
        tracing::info!("Stopping to start again.");
    } else {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!("Shutting down.");
    }
    let _ = stop_tasks.send(true);
    while let Some(result) = devices.join_next().await {
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "A device pipeline ended early.");
        }
    }
    if !uplink_done {
        match tokio::time::timeout(Duration::from_secs(5), &mut uplink).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "Uplink stopped with an error."),
            Err(_) => uplink.abort(),
            _ => {}
        }
    }
    drop(outbox);
    if !worker_done {
        // What the worker still does at a stop (removing delivered readings, the last checkpoint) can wait
        // for the next start: everything accepted is durable already. Slow storage must not hold the stop
        // past systemd's timeout.
        match tokio::time::timeout(WORKER_STOP_GRACE, worker).await {
            Ok(Ok(Ok(Err(error)))) => {
                return Err(anyhow::Error::new(error).context("outbox storage failed"))
            }
            Ok(Ok(Err(_))) | Ok(Err(_)) => anyhow::bail!("the outbox worker panicked"),
            Ok(Ok(Ok(Ok(())))) => {}
            Err(_) => tracing::warn!(
                "The outbox worker is still busy with slow storage; stopping without waiting for it. \
                 Stored readings are safe; delivered ones not yet removed are sent again."
            ),
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(stopped),
    }
}

/// Opens the outbox; a full state directory is said in words an operator can act on. When the reserve
/// is there, its room is used to open (the daemon can then deliver, and so remove, stored readings).
fn open_outbox(config: &Config, outbox_path: &Path) -> anyhow::Result<(Outbox, OpenReport)> {
    let options = OutboxOptions {
        max_pending: config.outbox.max_pending,
    };
    let state_dir = &config.hub.state_dir;
    let open = || {
        Outbox::open(
            outbox_path,
            options,
            crate::clock::now_utc().timestamp_millis(),
        )
    };
    let no_space = |error: &crate::outbox::OutboxError| {
        space::no_space_message(state_dir, outbox_path, error.is_disk_full())
    };
    let mut result = open();
    if let Err(error) = &result {
        if no_space(error).is_some() && Space::new(state_dir).release_reserve() {
            result = open();
        }
    }
    result.map_err(|error| match no_space(&error) {
        Some(message) => anyhow::anyhow!("{message} (SQLite: {error})"),
        None => anyhow::Error::new(error)
            .context(format!("cannot open the outbox {}", outbox_path.display())),
    })
}

/// The messages each reading becomes (`[output] formats`, `[fhir]`).
fn formats(config: &Config) -> crate::pipeline::Formats {
    use crate::config::OutputFormat;
    crate::pipeline::Formats {
        reading_v1: config.output.formats.contains(&OutputFormat::ReadingV1),
        fhir: config
            .output
            .formats
            .contains(&OutputFormat::Fhir)
            .then(|| std::sync::Arc::new(config.fhir.options())),
    }
}

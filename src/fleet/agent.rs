//! The fleet agent: the task that publishes the twin and the events through the uplink's exchange, and
//! verifies, orders, executes and reports signed commands, keeping every request id in the journal.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep_until, Instant};

use super::commands::{Action, CAPABILITIES};
use super::envelope::{Command, Refusal, Refused, Timing, Verifier};
use super::journal::{Entry, Journal, JournalError, State, JOURNAL_FILE};
use super::twin::{self, ConfigDigest, Episodes, HubFacts, SerialDevice, Thresholds};
use crate::ble::operations::{self, PasskeyEntry};
use crate::ble::session::SharedDevices;
use crate::config::{Config, FleetConfig};
use crate::mqtt::exchange::{Incoming, Outgoing};
use crate::outbox::OutboxHandle;

/// The drop-in `set_serial_ports` writes, in the configuration's drop-in directory.
pub const FLEET_DROP_IN: &str = "50-fleet.toml";
/// How often the twin and the events are checked for changes: the twin's debounce.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The twin is published at least this often.
const TWIN_EVERY: Duration = Duration::from_secs(3600);
/// Commands that arrive together (the retained ones after a connect) are collected this long after the
/// last of them, at most `SETTLE_MAX` after the first, and then run in `issued_at` order.
const SETTLE: Duration = Duration::from_secs(1);
const SETTLE_MAX: Duration = Duration::from_secs(3);
/// How long a restart waits for the broker to take the command's `executing` state.
const RESTART_GRACE: Duration = Duration::from_secs(5);
/// Between attempts of a `bind_device` whose device was not found or did not pair.
const BIND_RETRY: Duration = Duration::from_secs(20);
/// Messages on `cmd/+` that are no valid command, answered per minute at most.
const UNVERIFIED_PER_MINUTE: usize = 10;
/// The largest diagnostics bundle published.
const MAX_BUNDLE_BYTES: usize = 96 * 1024;
/// Messages kept for the broker while disconnected; the twin and command states are rebuilt anyway, so
/// only events can be lost beyond this.
const MAX_QUEUED: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// What the agent needs from the configuration.
pub struct FleetSettings {
    pub hub_id: String,
    pub fleet: FleetConfig,
    pub config_path: PathBuf,
    pub state_dir: PathBuf,
    pub adapter: String,
    pub serial: Vec<SerialDevice>,
    pub config_digest: ConfigDigest,
    pub mqtt_protocol: crate::config::MqttProtocol,
}

/// The agent's channels and the parts of the hub it reads or asks.
pub struct FleetParts {
    pub outbox: OutboxHandle,
    /// The bound Bluetooth devices; `None` when Bluetooth is off.
    pub devices: Option<SharedDevices>,
    /// When each serial device last sent bytes.
    pub activity: crate::hand_over::DeviceActivity,
    pub incoming: mpsc::Receiver<Incoming>,
    pub outgoing: mpsc::Sender<Outgoing>,
    /// Turned true when a command needs the daemon to start again.
    pub restart: watch::Sender<bool>,
}

type Outcome = Result<Option<Value>, (Refusal, String)>;
type Running = Pin<Box<dyn Future<Output = (String, Outcome)> + Send>>;

/// Runs until `shutdown` turns true.
pub async fn run(
    settings: FleetSettings,
    parts: FleetParts,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), FleetError> {
    let journal = Journal::open(&settings.state_dir.join(JOURNAL_FILE))?;
    let mut agent = Agent::new(settings, parts, journal)?;
    let check_timer = sleep_until(Instant::now());
    let settle_timer = sleep_until(Instant::now());
    let restart_timer = sleep_until(Instant::now());
    tokio::pin!(check_timer, settle_timer, restart_timer);
    let mut incoming = std::mem::replace(&mut agent.parts.incoming, mpsc::channel(1).1);
    let outgoing = agent.parts.outgoing.clone();
    let (mut running, mut binds) = (FuturesUnordered::new(), FuturesUnordered::new());
    loop {
        agent.start_next().await?;
        for (is_bind, future) in agent.started.drain(..) {
            if is_bind {
                binds.push(future);
            } else {
                running.push(future);
            }
        }
        if let Some(until) = agent.settle_until() {
            if settle_timer.deadline() != until {
                settle_timer.as_mut().reset(until);
            }
        }
        if let Some((_, until)) = agent.restart_pending {
            if restart_timer.deadline() != until {
                restart_timer.as_mut().reset(until);
            }
        }
        let sending = agent.connected && !agent.queue.is_empty();
        tokio::select! {
            _ = shutdown.changed() => break,
            message = incoming.recv() => match message {
                Some(message) => agent.handle_incoming(message).await?,
                None => break,
            },
            permit = outgoing.reserve(), if sending => match permit {
                Ok(permit) => permit.send(agent.queue.pop_front().expect("not empty")),
                Err(_) => break,
            },
            _ = &mut check_timer => {
                check_timer.as_mut().reset(Instant::now() + CHECK_EVERY);
                agent.check().await?;
            }
            _ = &mut settle_timer, if agent.settle_until().is_some() => agent.settle(),
            (request_id, outcome) = next(&mut running), if !running.is_empty() => {
                agent.running = false;
                agent.finish(&request_id, outcome)?;
            }
            (request_id, outcome) = next(&mut binds), if !binds.is_empty() => {
                // A bind a later command ended was finished then; its future only winds down.
                if agent.binding.remove(&request_id).is_some() {
                    agent.finish(&request_id, outcome)?;
                }
            }
            _ = &mut restart_timer, if agent.restart_pending.is_some() => agent.restart(),
        }
    }
    Ok(())
}

async fn next(running: &mut FuturesUnordered<Running>) -> (String, Outcome) {
    running.next().await.expect("polled only when not empty")
}

struct Agent {
    settings: FleetSettings,
    parts: FleetParts,
    journal: Journal,
    connected: bool,
    queue: VecDeque<Outgoing>,
    next_token: u64,
    /// The command state each token's publish carries.
    tokens: HashMap<u64, (String, State)>,
    /// Commands verified and waiting for the batch they came in to settle: since, last arrival.
    arrivals: Vec<(Command, Action)>,
    settle: Option<(Instant, Instant)>,
    /// Commands waiting for a trusted hub clock, with the latest moment to wait till.
    waiting_for_clock: Vec<(Command, Instant)>,
    ready: VecDeque<(Command, Action)>,
    /// A command runs now (at most one; binds run beside it).
    running: bool,
    /// Commands started since the loop last took them: whether each is a bind, and its future.
    started: Vec<(bool, Running)>,
    /// Request id → address of the binds waiting for their device, and the handle that ends one early.
    binding: HashMap<String, (String, AbortHandle)>,
    /// The request id whose `executing` state must reach the broker before the restart, and the latest
    /// moment to wait till.
    restart_pending: Option<(String, Instant)>,
    /// A restart was asked for: nothing more is started.
    restarting: bool,
    /// When this run began, by the monotonic clock: a serial device not heard since is silent after the
    /// threshold.
    began: Instant,
    /// Diagnostics bundles waiting for their PUBACK, by token: the request id, the bundle, the result.
    bundles: HashMap<u64, (String, Vec<u8>, Value)>,
    /// Refusals of unverified messages answered in the current minute, and those left unanswered.
    unverified: (Instant, usize, usize),
    episodes: Episodes,
    /// The episode keys as the journal holds them.
    saved_episodes: Vec<String>,
    untrusted_since: Option<Instant>,
    last_significant: Option<Value>,
    twin_due: Instant,
}

impl Agent {
    fn new(
        settings: FleetSettings,
        parts: FleetParts,
        journal: Journal,
    ) -> Result<Agent, FleetError> {
        let now_ms = crate::clock::now_utc().timestamp_millis();
        // What the previous run left executing: a command that ends in a restart did what it had to; any
        // other was cut short, and is not run again.
        for mut entry in journal.executing()? {
            // A drop-in written just before a crash, before the journal said so, names its command.
            let applied = entry.command == "set_serial_ports"
                && settings.config_digest.version.as_deref() == Some(entry.request_id.as_str());
            if entry.completes_on_restart || applied {
                entry.state = State::Successful;
                tracing::info!(request_id = %entry.request_id, command = %entry.command, "Fleet command completed by the restart.");
            } else {
                entry.state = State::Failed;
                entry.reason = Some(Refusal::Interrupted.name().to_string());
                entry.detail = Some(
                    "the daemon stopped while the command ran; it is not run again".to_string(),
                );
                tracing::warn!(request_id = %entry.request_id, command = %entry.command, "A fleet command was cut short by a stop.");
            }
            entry.at_ms = now_ms;
            journal.update(&entry)?;
        }
        let saved_episodes = journal.episodes()?;
        let episodes = Episodes::from_keys(saved_episodes.clone());
        Ok(Agent {
            settings,
            parts,
            journal,
            connected: false,
            queue: VecDeque::new(),
            next_token: 1,
            tokens: HashMap::new(),
            arrivals: Vec::new(),
            settle: None,
            waiting_for_clock: Vec::new(),
            ready: VecDeque::new(),
            running: false,
            started: Vec::new(),
            binding: HashMap::new(),
            restart_pending: None,
            restarting: false,
            began: Instant::now(),
            bundles: HashMap::new(),
            unverified: (Instant::now(), 0, 0),
            episodes,
            saved_episodes,
            untrusted_since: None,
            last_significant: None,
            twin_due: Instant::now(),
        })
    }

    /// Queues a message for the broker. Command states of journaled commands (bounded by what signed
    /// commands there are) always find room; anything else is dropped past [`MAX_QUEUED`].
    fn enqueue(&mut self, message: Outgoing) {
        let journaled = message.token.is_some();
        if !journaled && self.queue.len() >= MAX_QUEUED {
            tracing::warn!(subtopic = %message.subtopic, "Fleet message dropped: too many wait for the broker.");
            return;
        }
        self.queue.push_back(message);
    }

    async fn handle_incoming(&mut self, message: Incoming) -> Result<(), FleetError> {
        match message {
            Incoming::Connected => {
                self.connected = true;
                // Whatever was queued for the old connection is stale or rebuilt below.
                self.queue.retain(|message| message.subtopic == "events");
                self.tokens.clear();
                self.last_significant = None;
                self.twin_due = Instant::now();
                for entry in self.journal.unpublished()? {
                    self.publish_state(&entry);
                }
                // A bundle the old connection lost goes out again.
                let bundles: Vec<_> = std::mem::take(&mut self.bundles).into_values().collect();
                for (request_id, payload, result) in bundles {
                    self.send_bundle(request_id, payload, result);
                }
                self.check().await?;
            }
            Incoming::Disconnected => self.connected = false,
            Incoming::Message {
                subtopic,
                payload,
                retained,
            } => {
                let request_id = subtopic.strip_prefix("cmd/").filter(|id| !id.contains('/'));
                match request_id {
                    // An empty retained message clears the command: the backend is done with it.
                    Some(request_id) if !payload.is_empty() => {
                        self.handle_command(request_id.to_string(), &payload, retained)?;
                    }
                    _ => {}
                }
            }
            Incoming::Published(token) => {
                if let Some((request_id, _, result)) = self.bundles.remove(&token) {
                    self.running = false;
                    self.finish(&request_id, Ok(Some(result)))?;
                }
                if let Some((request_id, state)) = self.tokens.remove(&token) {
                    self.journal.mark_published(&request_id, state)?;
                    if self
                        .restart_pending
                        .as_ref()
                        .is_some_and(|(pending, _)| *pending == request_id)
                    {
                        self.restart();
                    }
                }
            }
            Incoming::Refused(token, reason) => {
                if let Some((request_id, _, _)) = self.bundles.remove(&token) {
                    self.running = false;
                    let detail = format!("the MQTT broker refused the bundle: {reason}");
                    self.finish(&request_id, Err((Refusal::ExecutionFailed, detail)))?;
                }
                if let Some((request_id, _)) = self.tokens.remove(&token) {
                    tracing::error!(%request_id, reason, "The MQTT broker refused a fleet command's state; check its access rules for cmd/+/state.");
                }
            }
        }
        Ok(())
    }

    fn is_known(&self, request_id: &str) -> bool {
        let matches = |command: &Command| command.request_id == request_id;
        self.arrivals.iter().any(|(c, _)| matches(c))
            || self.ready.iter().any(|(c, _)| matches(c))
            || self.waiting_for_clock.iter().any(|(c, _)| matches(c))
    }

    fn handle_command(
        &mut self,
        request_id: String,
        payload: &[u8],
        retained: bool,
    ) -> Result<(), FleetError> {
        let verifier = Verifier {
            hub_id: &self.settings.hub_id,
            keys: &self.keys(),
            max_validity: self.settings.fleet.max_validity,
        };
        let command = match verifier.open(&request_id, payload) {
            Ok(command) => command,
            Err(Refused { refusal, detail }) => {
                // Not journaled: nothing proves who sent it, and its request id is only the topic's. A
                // command the hub knows keeps its recorded state: unsigned bytes never overwrite it.
                if !self.may_answer_unverified() {
                    return Ok(());
                }
                if let Some(entry) = self.journal.get(&request_id)? {
                    tracing::warn!(request_id = ?shown(&request_id), reason = refusal.name(), "A message that is no valid command was written on a known command's topic; its recorded state stands.");
                    self.publish_state(&entry);
                } else {
                    tracing::warn!(request_id = ?shown(&request_id), reason = refusal.name(), ?detail, "Fleet command refused.");
                    self.publish_unrecorded(&request_id, refusal, Some(detail));
                }
                return Ok(());
            }
        };
        if self.is_known(&request_id) {
            return Ok(());
        }
        if let Some(entry) = self.journal.get(&request_id)? {
            if retained {
                // The broker's copy of a command done before, seen again at a connect: its outcome stands.
                if !entry.published {
                    self.publish_state(&entry);
                }
            } else if entry.state == State::Executing {
                // A QoS 1 duplicate while it runs (the backend's client sent it again), not a replay: a
                // `failed` now would be followed by its real outcome.
                tracing::debug!(%request_id, "A fleet command arrived again at once; ignored.");
            } else {
                tracing::warn!(%request_id, "Fleet command refused: its request id was seen before.");
                let detail = format!(
                    "request id seen before; its outcome was {}",
                    <&str>::from(entry.state)
                );
                self.publish_unrecorded(&request_id, Refusal::Replayed, Some(detail));
            }
            return Ok(());
        }
        self.judge(command)
    }

    /// Decides a verified, new command by the hub's clock and its arguments.
    fn judge(&mut self, command: Command) -> Result<(), FleetError> {
        let now = trusted_now();
        match command.timing(now) {
            Timing::Refused(refusal) => {
                let detail = format!("valid from {} to {}", command.issued_at, command.expires_at);
                return self.refuse(&command, refusal, detail);
            }
            Timing::WaitForClock => {
                tracing::info!(request_id = %command.request_id, "Fleet command waits for a trusted hub clock.");
                let until = Instant::now() + command.longest_wait();
                self.waiting_for_clock.push((command, until));
                return Ok(());
            }
            Timing::Ready => {}
        }
        match Action::parse(&command) {
            Ok(action) => {
                let now = Instant::now();
                let since = self.settle.map_or(now, |(since, _)| since);
                self.settle = Some((since, now));
                self.arrivals.push((command, action));
                Ok(())
            }
            Err((refusal, detail)) => self.refuse(&command, refusal, detail),
        }
    }

    fn settle_until(&self) -> Option<Instant> {
        self.settle
            .map(|(since, last)| (last + SETTLE).min(since + SETTLE_MAX))
    }

    /// The batch has settled: its commands join the queue in `issued_at` order.
    fn settle(&mut self) {
        self.settle = None;
        let mut batch = std::mem::take(&mut self.arrivals);
        batch.sort_by(|(a, _), (b, _)| {
            (a.issued_at, &a.request_id).cmp(&(b.issued_at, &b.request_id))
        });
        self.ready.extend(batch);
    }

    /// Starts the next command when none runs (binds run beside the others).
    async fn start_next(&mut self) -> Result<(), FleetError> {
        while !self.running && self.restart_pending.is_none() && !self.restarting {
            let Some((command, action)) = self.ready.pop_front() else {
                break;
            };
            self.start(command, action).await?;
        }
        Ok(())
    }

    async fn start(&mut self, command: Command, action: Action) -> Result<(), FleetError> {
        // A command may have waited in the queue: its window is judged again as it starts.
        if let Timing::Refused(refusal) = command.timing(trusted_now()) {
            return self.refuse(
                &command,
                refusal,
                "expired while it waited its turn".to_string(),
            );
        }
        let completes_on_restart = matches!(action, Action::Restart);
        let mut entry = new_entry(&command, State::Executing, None, None);
        entry.completes_on_restart = completes_on_restart;
        if !self.journal.insert(&entry)? {
            self.publish_unrecorded(&command.request_id, Refusal::Replayed, None);
            return Ok(());
        }
        tracing::info!(request_id = %command.request_id, command = %command.command, "Fleet command executing.");
        self.publish_state(&entry);
        let request_id = command.request_id.clone();
        let devices = self.parts.devices.clone();
        let adapter = self.settings.adapter.clone();
        // The latest word on a device wins: a bind still waiting for it must not bond it after an unbind,
        // nor run beside a newer bind with other arguments. A restart ends every bind, so each is told so
        // now rather than found cut short by the next run.
        match &action {
            Action::BindDevice { address, .. } | Action::UnbindDevice { address } => {
                self.end_binds(Some(address), &command)?
            }
            Action::Restart => self.end_binds(None, &command)?,
            Action::SetSerialPorts { .. } | Action::Diagnostics => {}
        }
        match action {
            Action::Restart => {
                self.restart_pending = Some((request_id, Instant::now() + RESTART_GRACE));
            }
            Action::UnbindDevice { address } => {
                self.running = true;
                self.started.push((
                    false,
                    Box::pin(async move { (request_id, unbind(adapter, devices, address).await) }),
                ));
            }
            Action::BindDevice {
                address,
                passkey,
                window,
            } => {
                let (handle, registration) = AbortHandle::new_pair();
                self.binding
                    .insert(request_id.clone(), (address.clone(), handle));
                let bind = Abortable::new(
                    bind(adapter, devices, address, passkey, window),
                    registration,
                );
                // An ended bind's outcome is never used: it was finished when it was ended.
                let ended = || Err((Refusal::Interrupted, String::new()));
                let bind =
                    bind.map(move |outcome| (request_id, outcome.unwrap_or_else(|_| ended())));
                self.started.push((true, Box::pin(bind)));
            }
            Action::Diagnostics => match self.diagnostics(&request_id).await {
                // Finished when the broker took the bundle.
                Ok(()) => self.running = true,
                Err(failure) => self.finish(&request_id, Err(failure))?,
            },
            Action::SetSerialPorts { ports } => {
                let outcome = self.set_serial_ports(&command, ports);
                match outcome {
                    Ok(result) => {
                        self.end_binds(None, &command)?;
                        entry.completes_on_restart = true;
                        entry.result = result;
                        self.journal.update(&entry)?;
                        self.publish_state(&entry);
                        self.restart_pending = Some((request_id, Instant::now() + RESTART_GRACE));
                    }
                    Err(failure) => self.finish(&request_id, Err(failure))?,
                }
            }
        }
        Ok(())
    }

    /// Ends the binds waiting for `address` (every bind, for `None`) as `interrupted` by `by`; an ended
    /// bind never touches the device again.
    fn end_binds(&mut self, address: Option<&str>, by: &Command) -> Result<(), FleetError> {
        let ended: Vec<String> = self
            .binding
            .iter()
            .filter(|(_, (bound, _))| address.is_none_or(|address| bound == address))
            .map(|(request_id, _)| request_id.clone())
            .collect();
        for request_id in ended {
            if let Some((_, handle)) = self.binding.remove(&request_id) {
                handle.abort();
            }
            let detail = format!("ended by {} {}", by.command, by.request_id);
            self.finish(&request_id, Err((Refusal::Interrupted, detail)))?;
        }
        Ok(())
    }

    /// Records and publishes what became of a command that ran.
    fn finish(&mut self, request_id: &str, outcome: Outcome) -> Result<(), FleetError> {
        let Some(mut entry) = self.journal.get(request_id)? else {
            return Ok(());
        };
        entry.at_ms = crate::clock::now_utc().timestamp_millis();
        match outcome {
            Ok(result) => {
                entry.state = State::Successful;
                entry.result = result;
                tracing::info!(%request_id, command = %entry.command, "Fleet command successful.");
            }
            Err((refusal, detail)) => {
                entry.state = State::Failed;
                entry.reason = Some(refusal.name().to_string());
                tracing::warn!(%request_id, command = %entry.command, reason = refusal.name(), %detail, "Fleet command failed.");
                entry.detail = Some(detail);
            }
        }
        self.journal.update(&entry)?;
        self.publish_state(&entry);
        Ok(())
    }

    /// Refuses a verified command for good: journaled, so it is never run later either.
    fn refuse(
        &mut self,
        command: &Command,
        refusal: Refusal,
        detail: String,
    ) -> Result<(), FleetError> {
        tracing::warn!(request_id = %command.request_id, reason = refusal.name(), %detail, "Fleet command refused.");
        let entry = new_entry(command, State::Failed, Some(refusal), Some(detail));
        if self.journal.insert(&entry)? {
            self.publish_state(&entry);
        }
        Ok(())
    }

    fn publish_state(&mut self, entry: &Entry) {
        let mut document = json!({
            "state": <&str>::from(entry.state),
            "at": millis_text(entry.at_ms),
        });
        if let Some(reason) = &entry.reason {
            document["reason"] = json!(reason);
        }
        if let Some(detail) = &entry.detail {
            document["detail"] = json!(detail);
        }
        if let Some(result) = &entry.result {
            document["result"] = result.clone();
        }
        let token = self.next_token;
        self.next_token += 1;
        self.tokens
            .insert(token, (entry.request_id.clone(), entry.state));
        self.enqueue(Outgoing {
            subtopic: format!("cmd/{}/state", entry.request_id),
            payload: document.to_string().into_bytes(),
            retain: true,
            token: Some(token),
        });
    }

    /// A `failed` state for a command that is not journaled.
    ///
    /// A replay's answer is not retained: the retained state on the topic is the command's own outcome,
    /// which anyone who copied the envelope could otherwise overwrite by sending it again.
    fn publish_unrecorded(&mut self, request_id: &str, refusal: Refusal, detail: Option<String>) {
        let mut document = json!({
            "state": "failed",
            "at": millis_text(crate::clock::now_utc().timestamp_millis()),
            "reason": refusal.name(),
        });
        if let Some(detail) = detail {
            document["detail"] = json!(detail);
        }
        self.enqueue(Outgoing {
            subtopic: format!("cmd/{request_id}/state"),
            payload: document.to_string().into_bytes(),
            retain: refusal != Refusal::Replayed,
            token: None,
        });
    }

    fn restart(&mut self) {
        if let Some((request_id, _)) = self.restart_pending.take() {
            self.restarting = true;
            tracing::info!(%request_id, "Restarting the daemon for a fleet command.");
            let _ = self.parts.restart.send(true);
        }
    }

    fn keys(&self) -> std::collections::BTreeMap<String, ed25519_dalek::VerifyingKey> {
        let keys = self.settings.fleet.keys.iter();
        keys.map(|(name, key)| (name.clone(), key.key)).collect()
    }

    /// The periodic look: commands waiting for the clock, the twin, the events.
    async fn check(&mut self) -> Result<(), FleetError> {
        let trusted = trusted_now().is_some();
        self.untrusted_since = match (trusted, self.untrusted_since) {
            (true, _) => None,
            (false, None) => Some(Instant::now()),
            (false, since) => since,
        };
        let waiting = std::mem::take(&mut self.waiting_for_clock);
        for (command, until) in waiting {
            if trusted {
                self.judge(command)?;
            } else if Instant::now() >= until {
                let detail =
                    "the hub's clock was not trusted before the command expired".to_string();
                self.refuse(&command, Refusal::ClockUntrusted, detail)?;
            } else {
                self.waiting_for_clock.push((command, until));
            }
        }
        // States the broker has not taken yet (a lost publish) go out again while connected.
        if self.connected {
            let in_flight: Vec<String> = self.tokens.values().map(|(id, _)| id.clone()).collect();
            for entry in self.journal.unpublished()? {
                if !in_flight.contains(&entry.request_id) {
                    self.publish_state(&entry);
                }
            }
        }
        let Ok(stats) = self.parts.outbox.stats().await else {
            return Ok(());
        };
        let (twin, conditions) = self.with_facts(&stats, |facts, thresholds| {
            (
                twin::twin(facts, thresholds),
                twin::conditions(facts, thresholds),
            )
        });
        let started = self.episodes.update(conditions);
        // Saved before the events go out, so a restart never fires an episode's event twice.
        self.save_episodes()?;
        if !started.is_empty() {
            let at = crate::clock::now_utc();
            for condition in started {
                tracing::warn!(event = condition.event, device = ?condition.device, detail = %condition.detail, "Fleet event.");
                let event = condition.event(&self.settings.hub_id, at);
                self.enqueue(Outgoing {
                    subtopic: "events".to_string(),
                    payload: event.to_string().into_bytes(),
                    retain: false,
                    token: None,
                });
            }
        }
        let significant = twin::significant(&twin);
        if self.connected
            && (self.last_significant.as_ref() != Some(&significant)
                || Instant::now() >= self.twin_due)
        {
            self.last_significant = Some(significant);
            self.twin_due = Instant::now() + TWIN_EVERY;
            self.queue.retain(|message| message.subtopic != "twin");
            self.enqueue(Outgoing {
                subtopic: "twin".to_string(),
                payload: twin.to_string().into_bytes(),
                retain: true,
                token: None,
            });
        }
        Ok(())
    }

    /// Saves the open episodes when they differ from the saved ones.
    fn save_episodes(&mut self) -> Result<(), FleetError> {
        let open: Vec<String> = self.episodes.keys().cloned().collect();
        if self.saved_episodes != open {
            self.journal.save_episodes(open.iter())?;
            self.saved_episodes = open;
        }
        Ok(())
    }

    fn with_facts<T>(
        &self,
        stats: &crate::outbox::OutboxStats,
        make: impl FnOnce(&HubFacts, Thresholds) -> T,
    ) -> T {
        let bluetooth = match &self.parts.devices {
            Some(devices) => devices
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .all()
                .to_vec(),
            None => Vec::new(),
        };
        let binding: Vec<String> = self
            .binding
            .values()
            .map(|(address, _)| address.clone())
            .collect();
        let serial: Vec<SerialDevice> = {
            let heard = self
                .parts
                .activity
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let with_time = |device: &SerialDevice| SerialDevice {
                last_seen: heard.get(&device.id).copied(),
                ..device.clone()
            };
            self.settings.serial.iter().map(with_time).collect()
        };
        let clock = crate::clock::hub_clock();
        let facts = HubFacts {
            hub_id: &self.settings.hub_id,
            at: crate::clock::now_utc(),
            hub_clock: clock.as_str(),
            clock_trusted: clock.is_trusted(),
            untrusted_for: self
                .untrusted_since
                .map_or(Duration::ZERO, |since| since.elapsed()),
            outbox: stats,
            bluetooth: &bluetooth,
            binding: &binding,
            serial: &serial,
            running_for: self.began.elapsed(),
            config: &self.settings.config_digest,
            capabilities: &CAPABILITIES,
        };
        let thresholds = Thresholds {
            device_silent_after: self.settings.fleet.device_silent_after,
            backlog_after: self.settings.fleet.backlog_after,
        };
        make(&facts, thresholds)
    }

    /// Queues the diagnostics bundle on `diagnostics/{request_id}`: the status, the twin, the configuration
    /// files (which hold no secrets, only where to read them) and the last log lines at info and above.
    async fn diagnostics(&mut self, request_id: &str) -> Result<(), (Refusal, String)> {
        let stats = self.parts.outbox.stats().await.map_err(|error| {
            (
                Refusal::ExecutionFailed,
                format!("the outbox does not answer: {error}"),
            )
        })?;
        let twin = self.with_facts(&stats, twin::twin);
        let bundle = json!({
            "schema": "vitalsd.diagnostics.v1",
            "hub_id": self.settings.hub_id,
            "request_id": request_id,
            "at": millis_text(crate::clock::now_utc().timestamp_millis()),
            "status": crate::mqtt::status_document("online", &self.settings.hub_id, self.settings.mqtt_protocol, false, &stats),
            "twin": twin,
            "config": config_files(&self.settings.config_path),
            "log": crate::log_tail::lines(),
        });
        let mut bundle = bundle;
        let mut payload = bundle.to_string().into_bytes();
        // Oldest log lines go first until the bundle fits brokers' message limits (AWS IoT Core: 128 KB).
        while payload.len() > MAX_BUNDLE_BYTES {
            let Some(lines) = bundle["log"]
                .as_array_mut()
                .filter(|lines| !lines.is_empty())
            else {
                break;
            };
            let drop = lines.len().div_ceil(4);
            lines.drain(..drop);
            payload = bundle.to_string().into_bytes();
        }
        let result = json!({"topic": format!("diagnostics/{request_id}"), "bytes": payload.len()});
        self.send_bundle(request_id.to_string(), payload, result);
        Ok(())
    }

    /// Queues a diagnostics bundle with a token; the command finishes when the broker takes it.
    fn send_bundle(&mut self, request_id: String, payload: Vec<u8>, result: Value) {
        let token = self.next_token;
        self.next_token += 1;
        self.enqueue(Outgoing {
            subtopic: format!("diagnostics/{request_id}"),
            payload: payload.clone(),
            retain: false,
            token: Some(token),
        });
        self.bundles.insert(token, (request_id, payload, result));
    }

    /// Whether a message on `cmd/+` that is no valid command may be answered now: at most
    /// [`UNVERIFIED_PER_MINUTE`] a minute, since anyone who can write to the broker can send them, and each
    /// answer is a retained message.
    fn may_answer_unverified(&mut self) -> bool {
        let (since, answered, unanswered) = &mut self.unverified;
        if since.elapsed() >= Duration::from_secs(60) {
            if *unanswered > 0 {
                tracing::warn!(unanswered = *unanswered, "Messages on cmd/+ that are no valid command were not answered: too many in a minute.");
            }
            (*since, *answered, *unanswered) = (Instant::now(), 0, 0);
        }
        if *answered >= UNVERIFIED_PER_MINUTE {
            *unanswered += 1;
            return false;
        }
        *answered += 1;
        true
    }

    /// Validates the new `[[serial]]` list as the daemon would load it, then writes the drop-in atomically.
    fn set_serial_ports(&self, command: &Command, ports: Vec<Value>) -> Outcome {
        let count = ports.len();
        let text = drop_in_text(command, ports)?;
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        let path = &self.settings.config_path;
        let checked = Config::load_replacing(
            path,
            &env,
            Some(crate::mqtt::tls::check),
            Some((FLEET_DROP_IN, &text)),
        );
        if let Err(errors) = checked {
            return Err((Refusal::InvalidArgs, errors.to_string()));
        }
        let dir = crate::config::drop_in_dir(path);
        let written = std::fs::create_dir_all(&dir)
            .and_then(|()| crate::state::replace_file(&dir.join(FLEET_DROP_IN), text.as_bytes()));
        written.map_err(|error| {
            let detail = format!(
                "cannot write {}: {error}",
                dir.join(FLEET_DROP_IN).display()
            );
            (Refusal::ExecutionFailed, detail)
        })?;
        tracing::info!(request_id = %command.request_id, ports = count, "Serial ports set by a fleet command; restarting to apply them.");
        Ok(Some(
            json!({"ports": count, "file": dir.join(FLEET_DROP_IN)}),
        ))
    }
}

/// The drop-in's text: a first line naming the command that wrote it (the twin's `config.version`), then
/// the `serial` array.
fn drop_in_text(command: &Command, ports: Vec<Value>) -> Result<String, (Refusal, String)> {
    let ports: Result<Vec<toml::Value>, _> = ports.into_iter().map(toml::Value::try_from).collect();
    let ports = ports.map_err(|error| (Refusal::InvalidArgs, format!("ports: {error}")))?;
    let table = toml::Table::from_iter([("serial".to_string(), toml::Value::Array(ports))]);
    let body = toml::to_string(&table)
        .map_err(|error| (Refusal::InvalidArgs, format!("ports: {error}")))?;
    Ok(format!(
        "{VERSION_MARK}{}\n# Written by the fleet command set_serial_ports, issued at {}; replaced by the next one.\n{body}",
        command.request_id, command.issued_at
    ))
}

/// The configuration files, by path, each as the TOML it parses to: comments, where anything may have been
/// written (an old password, say), are left out. Values of keys named like a password or secret are
/// redacted, although the configuration only names where secrets are read, and so are the patient
/// identifiers of `[fhir]`: the bundle is for people who support hubs, not for the clinical record.
fn config_files(config_path: &std::path::Path) -> Value {
    let mut files = serde_json::Map::new();
    for file in crate::config::files(config_path) {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => match text.parse::<toml::Table>() {
                Ok(mut table) => {
                    redact(&mut table, "");
                    toml::to_string(&table).unwrap_or_else(|error| format!("# {error}"))
                }
                // The text is not shown: a file that does not parse may hold anything.
                Err(error) => format!("# not valid TOML: {}", error.message()),
            },
            Err(error) => format!("# cannot read: {error}"),
        };
        files.insert(file.display().to_string(), json!(text));
    }
    Value::Object(files)
}

/// Replaces, in `table` (at the key path `path`), the values of secret-like keys and `[fhir]`'s patient
/// identifiers.
fn redact(table: &mut toml::Table, path: &str) {
    for (key, value) in table.iter_mut() {
        let name = key.to_ascii_lowercase();
        let secret = (name.contains("password") || name.contains("secret"))
            && !name.ends_with("_file")
            && !name.ends_with("_credential");
        let patient =
            path == "fhir" && matches!(name.as_str(), "subject_value" | "device_subjects");
        match value {
            toml::Value::Table(inner) if patient => {
                for (_, value) in inner.iter_mut() {
                    *value = toml::Value::String("(redacted)".to_string());
                }
            }
            _ if secret || patient => *value = toml::Value::String("(redacted)".to_string()),
            toml::Value::Table(inner) => redact(
                inner,
                &format!("{path}{}{key}", if path.is_empty() { "" } else { "." }),
            ),
            toml::Value::Array(items) => {
                for item in items {
                    if let toml::Value::Table(inner) = item {
                        redact(inner, key);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The first line of the fleet drop-in: this, then the request id that wrote it.
const VERSION_MARK: &str = "# vitalsd fleet config version: ";

/// The digest of the configuration files the daemon read (the main file, then its drop-ins), and the request
/// id of the fleet command that last wrote its drop-in.
pub fn config_digest(config_path: &std::path::Path) -> ConfigDigest {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    let mut version = None;
    for file in crate::config::files(config_path) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        if file.file_name().is_some_and(|name| name == FLEET_DROP_IN) {
            let text = String::from_utf8_lossy(&bytes);
            version = text
                .lines()
                .next()
                .and_then(|line| line.strip_prefix(VERSION_MARK))
                .map(str::to_string);
        }
        // Named from the main file's directory, so that the digest does not depend on how `--config`
        // spelled its path (`vitalsd status` run by hand against the daemon's twin) or where a hub keeps it.
        let name = config_path
            .parent()
            .and_then(|dir| file.strip_prefix(dir).ok());
        hash.update(name.unwrap_or(&file).to_string_lossy().as_bytes());
        hash.update([0]);
        hash.update(&bytes);
        hash.update([0]);
    }
    ConfigDigest {
        version,
        sha256: hex::encode(hash.finalize()),
    }
}

/// The configured serial devices as the twin lists them.
pub fn serial_devices(config: &Config) -> Vec<SerialDevice> {
    let device = |port: &crate::config::SerialConfig| SerialDevice {
        id: port.device_id.clone(),
        path: port.path.describe(),
        protocol: port.protocol.name(),
        last_seen: None,
    };
    config.serial.iter().map(device).collect()
}

/// A request id from a topic nobody vouched for, short and without control characters, for the log.
fn shown(request_id: &str) -> String {
    request_id
        .chars()
        .take(64)
        .flat_map(char::escape_debug)
        .collect()
}

fn trusted_now() -> Option<DateTime<Utc>> {
    crate::clock::hub_clock()
        .is_trusted()
        .then(crate::clock::now_utc)
}

fn millis_text(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn new_entry(
    command: &Command,
    state: State,
    refusal: Option<Refusal>,
    detail: Option<String>,
) -> Entry {
    Entry {
        request_id: command.request_id.clone(),
        command: command.command.clone(),
        issued_at_ms: command.issued_at.timestamp_millis(),
        expires_at_ms: command.expires_at.timestamp_millis(),
        state,
        reason: refusal.map(|r| r.name().to_string()),
        detail,
        result: None,
        at_ms: crate::clock::now_utc().timestamp_millis(),
        completes_on_restart: false,
        published: false,
    }
}

async fn unbind(adapter: String, devices: Option<SharedDevices>, address: String) -> Outcome {
    let Some(devices) = devices else {
        return Err((
            Refusal::ExecutionFailed,
            "Bluetooth is off on this hub".to_string(),
        ));
    };
    let mut result = None;
    let mut emit = |event: operations::Event| {
        if let operations::Event::Unpaired {
            was_bound,
            bond_removed,
            ..
        } = event
        {
            result = Some(json!({"was_bound": was_bound, "bond_removed": bond_removed}));
        }
    };
    operations::unpair(&adapter, &address, &devices, &mut emit)
        .await
        .map(|()| result)
        .map_err(|error| (Refusal::ExecutionFailed, error.to_string()))
}

/// Pairs with the device when it advertises, trying again until the window closes.
async fn bind(
    adapter: String,
    devices: Option<SharedDevices>,
    address: String,
    passkey: Option<u32>,
    window: Duration,
) -> Outcome {
    let Some(devices) = devices else {
        return Err((
            Refusal::ExecutionFailed,
            "Bluetooth is off on this hub".to_string(),
        ));
    };
    let deadline = Instant::now() + window;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut result = None;
        let mut emit = |event: operations::Event| {
            if let operations::Event::Paired { bonded, .. } = event {
                result = Some(json!({"bonded": bonded, "attempts": attempts}));
            }
        };
        // Without a passkey in the command nobody can answer the device's question: it fails the attempt.
        let (_, mut no_answers) = mpsc::channel(1);
        let entry = match passkey {
            Some(passkey) => PasskeyEntry::Fixed(passkey),
            None => PasskeyEntry::Ask(&mut no_answers),
        };
        let error = match operations::pair(&adapter, &address, entry, &devices, &mut emit).await {
            Ok(()) => return Ok(result),
            Err(error) => error.to_string(),
        };
        let Some(pause) = bind_retry_after(deadline.saturating_duration_since(Instant::now()))
        else {
            let detail =
                format!("not bonded within the window after {attempts} attempt(s): {error}");
            return Err((Refusal::ExecutionFailed, detail));
        };
        let retry_in_s = pause.as_secs_f64();
        tracing::info!(%address, attempt = attempts, retry_in_s, %error, "A bind attempt failed; trying again.");
        tokio::time::sleep(pause).await;
    }
}

/// How long a bind whose attempt failed waits before the next, given what is left of its window: 20 s, or
/// half of what is left when that is sooner, so the last attempts still fall inside the window; none once
/// less than 2 s is left.
fn bind_retry_after(left: Duration) -> Option<Duration> {
    (left >= Duration::from_secs(2)).then(|| BIND_RETRY.min(left / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_bind_tries_again_inside_its_window() {
        let check = |left_ms: u64, expected_ms: Option<u64>| {
            let pause = bind_retry_after(Duration::from_millis(left_ms));
            assert_eq!(
                pause,
                expected_ms.map(Duration::from_millis),
                "with {left_ms} ms left"
            );
        };
        check(86_400_000, Some(20_000));
        check(40_000, Some(20_000));
        check(30_000, Some(15_000));
        check(10_000, Some(5_000));
        check(2_000, Some(1_000));
        check(1_999, None);
        check(0, None);
    }

    #[test]
    fn the_configuration_digest_does_not_depend_on_how_its_path_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vitalsd.toml");
        std::fs::write(&path, "[hub]\nid = \"hub-1\"\n").unwrap();
        std::fs::create_dir(crate::config::drop_in_dir(&path)).unwrap();
        std::fs::write(crate::config::drop_in_dir(&path).join("10-a.toml"), "").unwrap();
        let digest = |path: &std::path::Path| config_digest(path).sha256;
        let dotted = dir.path().join(".").join("vitalsd.toml");
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::copy(&path, elsewhere.path().join("vitalsd.toml")).unwrap();
        std::fs::create_dir(crate::config::drop_in_dir(
            &elsewhere.path().join("vitalsd.toml"),
        ))
        .unwrap();
        std::fs::write(
            crate::config::drop_in_dir(&elsewhere.path().join("vitalsd.toml")).join("10-a.toml"),
            "",
        )
        .unwrap();
        assert_eq!(digest(&path), digest(&dotted));
        assert_eq!(
            digest(&path),
            digest(&elsewhere.path().join("vitalsd.toml"))
        );
        // A drop-in of another name is another configuration.
        std::fs::rename(
            crate::config::drop_in_dir(&path).join("10-a.toml"),
            crate::config::drop_in_dir(&path).join("20-a.toml"),
        )
        .unwrap();
        assert_ne!(
            digest(&path),
            digest(&elsewhere.path().join("vitalsd.toml"))
        );
    }

    #[test]
    fn the_diagnostics_configuration_holds_no_comment_secret_or_patient() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vitalsd.toml");
        let text = "# old broker: password = \"hunter2\"\n[hub]\nid = \"hub-1\" # it was hunter3\n\
                    [mqtt]\nurl = \"mqtt://b\"\npassword = \"hunter4\"\npassword_file = \"/etc/p\"\n\
                    [fhir]\nsubject_value = \"3001749995\"\ndevice_subjects = { \"serial:x\" = \"0101010101\" }\n";
        std::fs::write(&path, text).unwrap();
        let drop_ins = crate::config::drop_in_dir(&path);
        std::fs::create_dir(&drop_ins).unwrap();
        std::fs::write(drop_ins.join("10-broken.toml"), "password = hunter5 =\n").unwrap();
        let files = config_files(&path);
        let main = files[path.display().to_string()].as_str().unwrap();
        let broken = files[drop_ins.join("10-broken.toml").display().to_string()]
            .as_str()
            .unwrap();
        for hidden in ["hunter", "3001749995", "0101010101"] {
            assert!(
                !main.contains(hidden) && !broken.contains(hidden),
                "{main}\n{broken}"
            );
        }
        for shown in [
            "id = \"hub-1\"",
            "password_file = \"/etc/p\"",
            "subject_value = \"(redacted)\"",
            "\"serial:x\" = \"(redacted)\"",
        ] {
            assert!(main.contains(shown), "{shown} in {main}");
        }
        assert!(broken.starts_with("# not valid TOML"), "{broken}");
    }
}

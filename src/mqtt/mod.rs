//! The MQTT uplink: publishes outbox records to the broker and removes each only after the broker took it.
//!
//! One task owns the MQTT client's event loop and every publish. rumqttc keeps in-flight and queued
//! publishes in memory only and drops them on a clean-start reconnect without telling anyone
//! (mqtt-outbox.md §2), so the outbox is the source of truth: the packet-id mapping ([`inflight`]) is reset
//! at every connection boundary, and after each CONNACK everything still in the outbox is published again,
//! oldest first. Acknowledged records are removed in batches; a crash between PUBACK and removal costs a
//! duplicate (every payload carries its stable `id`), never a loss.
//!
//! MQTT 5 is the default: its PUBACK says whether the broker took the message. A refused reading stays in
//! the outbox, is counted per reason and retried as [`refusal`] describes. MQTT 3.1.1 ([`link`]) is the
//! fallback for brokers without MQTT 5, and cannot see a refusal.

pub mod exchange;
pub mod inflight;
mod link;
pub mod refusal;
pub mod tls;
pub mod topic;

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::{MqttConfig, MqttProtocol};
use crate::outbox::worker::WorkerGone;
use crate::outbox::{OutboxHandle, OutboxStats, StoredRecord};
use exchange::{Exchange, Incoming, Outgoing};
use inflight::{Inflight, Slot};
use link::{Link, LinkEvent, NotQueued};
use refusal::{
    AckOutcome, AfterRefusal, Refusal, RefusalCounts, RefusalLog, RefusalReport, RetryGate,
};
use topic::Topics;

/// Client events handled per turn of the uplink's loop, at most.
const EVENT_BATCH: usize = 64;
/// Records fetched from the outbox per round trip.
const FETCH_BATCH: usize = 1024;
/// Acknowledged records removed per outbox transaction, and the longest an acknowledgement waits.
const ACK_BATCH: usize = 1024;
const ACK_DELAY: Duration = Duration::from_millis(20);
/// Publishes of the exchange (the fleet agent's) that may be in flight beyond the readings' window.
const EXCHANGE_SLOTS: usize = 4;
/// How long a clean shutdown waits for the broker to take the "offline" status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
/// How long a clean shutdown waits, after that, for the DISCONNECT to be written.
const DISCONNECT_GRACE: Duration = Duration::from_millis(500);
/// A connection that stayed up this long was healthy: the reconnect after it starts from the shortest delay.
/// A broker that accepts the connection and drops it at once (an unauthorised publish on some brokers, two
/// hubs with one client id) therefore meets a growing delay, not a reconnect every `reconnect_min`.
const STABLE_AFTER: Duration = Duration::from_secs(10);
/// The shortest wait for a PUBACK on a live connection before the client is restarted; at least twice
/// the keep-alive, so a slow broker is told apart from a publish the client lost.
const PUBACK_TIMEOUT_MIN: Duration = Duration::from_secs(30);
/// An identical broker error is logged and written to the outbox at most this often.
const ERROR_REPEAT: Duration = Duration::from_secs(60);
/// How long the uplink connects without its subscriptions after a message too large to read ended a
/// connection: readings go on, and the subscriptions are tried again after it.
const SUBSCRIPTIONS_PAUSE: Duration = Duration::from_secs(600);
/// The outbox counter of refused publishes; `REFUSED_COUNTER.{reason}` counts each reason.
pub const REFUSED_COUNTER: &str = "uplink_refused";

/// Why the uplink stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("outbox worker stopped")]
    OutboxGone(#[from] crate::outbox::worker::WorkerGone),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsFileError),
    #[error("cannot read the MQTT password: {0}")]
    Password(std::io::Error),
}

/// Everything the uplink needs from the configuration.
pub struct UplinkSettings {
    pub hub_id: String,
    pub mqtt: MqttConfig,
}

/// Runs until `shutdown` turns true. Broker trouble is retried forever with capped, jittered backoff.
/// `exchange`, when given, carries the messages of another part of the hub (the fleet agent).
pub async fn run(
    settings: UplinkSettings,
    outbox: OutboxHandle,
    exchange: Option<Exchange>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    let topics = Topics::new(&settings.mqtt.topic_prefix, &settings.hub_id);
    let mut uplink = Uplink::new(&settings, topics, outbox)?;
    let mut outgoing = match exchange {
        Some(exchange) => {
            uplink.subscriptions = exchange.subscriptions;
            uplink.incoming = Some(exchange.incoming);
            Some(exchange.outgoing)
        }
        None => None,
    };
    let mut backoff = Backoff::new(settings.mqtt.reconnect_min, settings.mqtt.reconnect_max);
    let appended = uplink.outbox.appended();
    let quarantined = uplink.outbox.quarantined();
    // Timers live across iterations and are re-armed, rather than rebuilt for every MQTT event.
    let ack_timer = sleep_until(Instant::now());
    let status_timer = sleep_until(uplink.status_due);
    let pause_timer = sleep_until(Instant::now());
    let burst_timer = sleep_until(Instant::now());
    let puback_timer = sleep_until(Instant::now());
    tokio::pin!(
        ack_timer,
        status_timer,
        pause_timer,
        burst_timer,
        puback_timer
    );
    loop {
        let mut paused = false;
        if uplink.connected {
            uplink.publish_held_message();
            uplink.fill_window().await?;
            uplink.retry_when_walk_ended().await?;
            let pause = if uplink.gate.is_throttled() {
                uplink.gate.wake_at(Instant::now().into_std())
            } else {
                None
            };
            if let Some(until) = pause {
                let until = Instant::from_std(until);
                if pause_timer.deadline() != until {
                    pause_timer.as_mut().reset(until);
                }
                paused = true;
            }
        }
        if let Some(deadline) = uplink.ack_deadline {
            if ack_timer.deadline() != deadline {
                ack_timer.as_mut().reset(deadline);
            }
        }
        let burst_end = uplink
            .refusal_log
            .ends_at(uplink.refusals_unanswered())
            .map(Instant::from_std);
        if let Some(end) = burst_end {
            if burst_timer.deadline() != end {
                burst_timer.as_mut().reset(end);
            }
        }
        let puback_due = if uplink.connected {
            uplink
                .inflight
                .oldest_sent()
                .map(|sent| Instant::from_std(sent) + uplink.puback_timeout)
        } else {
            None
        };
        if let Some(due) = puback_due {
            if puback_timer.deadline() != due {
                puback_timer.as_mut().reset(due);
            }
        }
        if status_timer.deadline() != uplink.status_due {
            status_timer.as_mut().reset(uplink.status_due);
        }
        let waiting_for_records = uplink.connected && uplink.exhausted && uplink.buffer.is_empty();
        // Exchange messages get a few slots past the readings' window, so a long backlog does not hold a
        // command's state back, and packet ids stay well inside what the window keeps free (see `link`).
        let take_message = uplink.connected
            && uplink.held_message.is_none()
            && outgoing.is_some()
            && uplink.inflight.len() < uplink.window + EXCHANGE_SLOTS;
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            event = uplink.link.poll() => uplink.handle_events(event).await?,
            _ = &mut ack_timer, if uplink.ack_deadline.is_some() => uplink.flush_acks().await?,
            _ = appended.notified(), if waiting_for_records => uplink.exhausted = false,
            _ = &mut pause_timer, if paused => {}
            _ = &mut puback_timer, if puback_due.is_some() => uplink.check_puback_timeout().await?,
            _ = &mut burst_timer, if burst_end.is_some() => {
                let unanswered = uplink.refusals_unanswered();
                let report = uplink.refusal_log.handle_time(Instant::now().into_std(), unanswered);
                uplink.handle_burst_report(report).await?;
            }
            _ = &mut status_timer, if uplink.connected => uplink.publish_status("online").await?,
            message = next_outgoing(&mut outgoing), if take_message => match message {
                Some(message) => {
                    uplink.held_message = Some(message);
                    uplink.publish_held_message();
                }
                None => outgoing = None,
            },
            // Storage damage is news for the backend at once, not at the next refresh.
            _ = quarantined.notified(), if uplink.connected => uplink.publish_status("online").await?,
        }
        // Every new attempt, after a lost connection or a deliberate restart, waits its turn.
        if let Some(lasted) = uplink.restarted.take() {
            let delay = backoff.next_delay(lasted);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = sleep(delay) => {}
            }
        }
    }
    uplink.shut_down().await
}

/// The next message from the exchange; never ready without one.
async fn next_outgoing(outgoing: &mut Option<mpsc::Receiver<Outgoing>>) -> Option<Outgoing> {
    match outgoing {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

struct Uplink {
    link: Link,
    /// Topic filters under the hub's base subscribed to at every connection, for `incoming`.
    subscriptions: Vec<String>,
    incoming: Option<mpsc::Sender<Incoming>>,
    /// A message from the exchange the client's queue had no room for yet.
    held_message: Option<Outgoing>,
    outbox: OutboxHandle,
    topics: Topics,
    hub_id: String,
    protocol: MqttProtocol,
    /// The configured window: publishes handed to the client and not yet acknowledged. The client itself
    /// keeps no more of them on the wire than the broker's Receive Maximum and holds the rest in its queue,
    /// so a PUBACK lets the next publish go out at once instead of after a turn of this task's loop.
    window: usize,
    inflight: Inflight,
    connected: bool,
    /// Records fetched but not yet published on this connection, oldest first.
    buffer: VecDeque<StoredRecord>,
    /// The highest seq fetched on this connection.
    cursor: i64,
    /// The last fetch returned everything the outbox had.
    exhausted: bool,
    /// A fetch asked for but not yet taken into `buffer`.
    next_batch: Option<oneshot::Receiver<Vec<StoredRecord>>>,
    acked: Vec<i64>,
    ack_deadline: Option<Instant>,
    status_due: Instant,
    /// `mqtt.status_interval_s`.
    status_interval: Duration,
    /// When this connection's CONNACK came.
    connected_at: Option<Instant>,
    /// The client was restarted after a connection that lasted this long (zero: it never came up); the
    /// next attempt waits for the backoff.
    restarted: Option<Duration>,
    errors: RepeatFilter,
    /// How long a publish may wait for its PUBACK on a live connection.
    puback_timeout: Duration,
    /// Pauses and retry passes after refusals.
    gate: RetryGate,
    refusal_log: RefusalLog,
    /// Refusals not yet added to the outbox's counters.
    refused_unsaved: RefusalCounts,
    /// A refused status or fleet publish was logged on this connection.
    status_refusal_logged: bool,
    /// Until when connections go without `subscriptions`, after a message too large to read.
    subscriptions_paused_until: Option<Instant>,
}

impl Uplink {
    fn new(
        settings: &UplinkSettings,
        topics: Topics,
        outbox: OutboxHandle,
    ) -> Result<Uplink, UplinkError> {
        let window = settings.mqtt.window;
        let link = Link::new(settings, topics.status(), window + 8)?;
        Ok(Uplink {
            link,
            subscriptions: Vec::new(),
            incoming: None,
            held_message: None,
            outbox,
            topics,
            hub_id: settings.hub_id.clone(),
            protocol: settings.mqtt.protocol,
            window,
            inflight: Inflight::default(),
            connected: false,
            buffer: VecDeque::new(),
            cursor: 0,
            exhausted: false,
            next_batch: None,
            acked: Vec::new(),
            ack_deadline: None,
            status_due: Instant::now(),
            status_interval: settings.mqtt.status_interval,
            connected_at: None,
            restarted: None,
            errors: RepeatFilter::default(),
            puback_timeout: (settings.mqtt.keep_alive * 2).max(PUBACK_TIMEOUT_MIN),
            gate: RetryGate::new(settings.mqtt.reconnect_min, settings.mqtt.reconnect_max),
            // A reading still refused is retried at least once per `reconnect_max` (jittered by up to 20 %),
            // so twice that without a refusal means none is left.
            refusal_log: RefusalLog::new(settings.mqtt.reconnect_max * 2),
            refused_unsaved: RefusalCounts::default(),
            status_refusal_logged: false,
            subscriptions_paused_until: None,
        })
    }

    /// Publishes outbox records until the window is full or the outbox has nothing more.
    async fn fill_window(&mut self) -> Result<(), UplinkError> {
        let window = if self.gate.is_throttled() {
            self.gate.window(self.window, Instant::now().into_std())
        } else {
            self.window
        };
        while self.inflight.len() < window {
            if let Some(pending) = self.next_batch.as_mut() {
                // Take a prefetched batch when it is ready, or wait for it when there is nothing else to send.
                let records = match pending.try_recv() {
                    Ok(records) => Some(records),
                    Err(oneshot::error::TryRecvError::Empty) if self.buffer.is_empty() => {
                        Some(pending.await.map_err(|_| WorkerGone)?)
                    }
                    Err(oneshot::error::TryRecvError::Empty) => None,
                    Err(oneshot::error::TryRecvError::Closed) => return Err(WorkerGone.into()),
                };
                if let Some(records) = records {
                    self.next_batch = None;
                    self.exhausted = records.len() < FETCH_BATCH;
                    if let Some(last) = records.last() {
                        self.cursor = last.seq;
                    }
                    self.buffer.extend(records);
                }
            }
            if self.next_batch.is_none() && !self.exhausted && self.buffer.len() < FETCH_BATCH / 2 {
                self.next_batch = Some(
                    self.outbox
                        .request_fetch_after(self.cursor, FETCH_BATCH)
                        .await?,
                );
                if self.buffer.is_empty() {
                    continue;
                }
            }
            let Some(mut record) = self.buffer.pop_front() else {
                break;
            };
            let (topic, format) = match record.format {
                crate::model::fhir::OUTBOX_FORMAT => {
                    (self.topics.fhir(&record.label), link::MessageFormat::Fhir)
                }
                _ => (
                    self.topics.reading(&record.label),
                    link::MessageFormat::ReadingV1,
                ),
            };
            self.inflight
                .handle_publish_requested(Slot::Record(record.seq));
            let payload = std::mem::take(&mut record.payload);
            if let Err(NotQueued(payload)) = self.link.try_publish_reading(topic, payload, format) {
                // The request queue is full; the record goes back and waits for the window to move.
                tracing::debug!("Publish queue full.");
                self.inflight.handle_publish_not_queued();
                if let Some(payload) = payload {
                    record.payload = payload;
                    self.buffer.push_front(record);
                } else {
                    // The payload did not come back; read it again from the outbox, which still holds it.
                    self.restart_walk(record.seq - 1);
                }
                break;
            }
            self.gate.handle_published(record.seq);
        }
        Ok(())
    }

    /// Starts a retry pass from the oldest reading once the walk has reached the end of the outbox past
    /// refused readings, nothing is in flight and the pause is over.
    async fn retry_when_walk_ended(&mut self) -> Result<(), UplinkError> {
        let walk_ended = self.exhausted && self.buffer.is_empty() && self.next_batch.is_none();
        if !self.gate.has_refused_behind()
            || !walk_ended
            || !self.inflight.is_empty()
            || !self.gate.handle_walk_ended(Instant::now().into_std())
        {
            return Ok(());
        }
        // Removals queued first, so the fetch no longer sees what the broker already took.
        self.flush_acks().await?;
        self.restart_walk(0);
        self.fill_window().await
    }

    /// Whether the broker still owes an answer that may be a refusal: refused readings wait for their retry
    /// pass, or publishes for their PUBACK. A burst of refusals cannot end before it has answered.
    fn refusals_unanswered(&self) -> bool {
        self.gate.has_refused_behind() || !self.inflight.is_empty()
    }

    /// The walk goes on after `seq`, forgetting what it fetched.
    fn restart_walk(&mut self, seq: i64) {
        self.buffer.clear();
        self.next_batch = None;
        self.cursor = seq;
        self.exhausted = false;
    }

    /// Handles `first` and the events the client has ready behind it, up to [`EVENT_BATCH`], so that a run
    /// of PUBACKs costs one turn of the uplink's loop rather than one each. A restart of the client ends
    /// the run: the new client is first polled after the backoff.
    async fn handle_events(&mut self, first: Result<LinkEvent, String>) -> Result<(), UplinkError> {
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(event) = next.take() {
            match event {
                Ok(event) => self.handle_event(event).await?,
                Err(error) => self.handle_connection_error(error).await?,
            }
            handled += 1;
            if handled < EVENT_BATCH && self.restarted.is_none() {
                next = self.link.try_poll();
            }
        }
        Ok(())
    }

    async fn handle_event(&mut self, event: LinkEvent) -> Result<(), UplinkError> {
        match event {
            LinkEvent::Connected { receive_maximum } => {
                tracing::info!(
                    protocol = self.protocol.as_str(),
                    window = self.window,
                    receive_maximum,
                    "Connected to the MQTT broker."
                );
                self.start_connection();
                // Subscriptions go first. A SUBSCRIBE takes a packet id from the same ring the client
                // numbers publishes from, a ring only as long as the broker's Receive Maximum, without
                // counting as a publish in flight. Sent between publishes, it lets the client wrap onto
                // the id of a publish still awaiting its PUBACK whenever acknowledgements lag (any real
                // round trip with a backlog), a collision on every connection. Sent first, the id the
                // ring wraps onto is the SUBSCRIBE's own.
                let paused = self
                    .subscriptions_paused_until
                    .is_some_and(|until| Instant::now() < until);
                for filter in self.subscriptions.iter().filter(|_| !paused) {
                    if !self.link.try_subscribe(self.topics.under(filter)) {
                        tracing::warn!(%filter, "Cannot subscribe: the MQTT client's queue is full.");
                    }
                }
                self.publish_status("online").await?;
                self.pass_on(Incoming::Connected).await;
            }
            LinkEvent::Message {
                topic,
                payload,
                retained,
            } => match self.topics.strip(&topic) {
                Some(subtopic) => {
                    let subtopic = subtopic.to_string();
                    self.pass_on(Incoming::Message {
                        subtopic,
                        payload,
                        retained,
                    })
                    .await;
                }
                None => tracing::debug!(%topic, "Message outside the hub's topics."),
            },
            LinkEvent::PubAck { pkid, outcome } => {
                match (self.inflight.handle_puback(pkid), outcome) {
                    (Some(Slot::Record(seq)), AckOutcome::Accepted) => {
                        self.gate.handle_accepted(seq);
                        self.acked.push(seq);
                        let report = if self.refusal_log.in_burst() {
                            let unanswered = self.refusals_unanswered();
                            self.refusal_log
                                .handle_accepted(Instant::now().into_std(), unanswered)
                        } else {
                            None
                        };
                        if report.is_some() {
                            self.handle_burst_report(report).await?;
                        } else if self.acked.len() >= ACK_BATCH {
                            self.flush_acks().await?;
                        } else if self.ack_deadline.is_none() {
                            self.ack_deadline = Some(Instant::now() + ACK_DELAY);
                        }
                    }
                    (Some(Slot::Record(seq)), AckOutcome::Refused(refusal)) => {
                        self.handle_refused(seq, refusal).await?;
                    }
                    (Some(Slot::Status), AckOutcome::Refused(refusal)) => {
                        if !self.status_refusal_logged {
                            self.status_refusal_logged = true;
                            tracing::warn!(
                                reason = refusal.name(),
                                topic = %self.topics.status(),
                                "The MQTT broker refused the hub's status message."
                            );
                        }
                    }
                    (Some(Slot::Status), AckOutcome::Accepted) => {}
                    (Some(Slot::Message(Some(token))), AckOutcome::Accepted) => {
                        self.pass_on(Incoming::Published(token)).await;
                    }
                    (Some(Slot::Message(Some(token))), AckOutcome::Refused(refusal)) => {
                        if !self.status_refusal_logged {
                            self.status_refusal_logged = true;
                            tracing::warn!(
                                reason = refusal.name(),
                                "The MQTT broker refused a fleet message; check its access rules for this hub's topics."
                            );
                        }
                        self.pass_on(Incoming::Refused(token, refusal.name())).await;
                    }
                    (Some(Slot::Message(None)), AckOutcome::Accepted) => {}
                    (Some(Slot::Message(None)), AckOutcome::Refused(refusal)) => {
                        if !self.status_refusal_logged {
                            self.status_refusal_logged = true;
                            tracing::warn!(
                                reason = refusal.name(),
                                "The MQTT broker refused a fleet message (twin, events or diagnostics); \
                                 check its access rules for this hub's topics."
                            );
                        }
                    }
                    (None, _) => {
                        tracing::debug!(pkid, "PUBACK for a publish of an earlier connection.")
                    }
                }
            }
            LinkEvent::PublishSent(pkid) => {
                if let Err(error) = self
                    .inflight
                    .handle_publish_sent(pkid, Instant::now().into_std())
                {
                    // The mapping can no longer be trusted: start a fresh connection and re-send from the outbox.
                    tracing::error!(%error, "Lost track of publishes in flight; reconnecting.");
                    self.restart_client().await?;
                }
            }
            LinkEvent::Collision(pkid) => {
                // rumqttc holds the publish back until the old use of the id is acknowledged, and may never
                // let go (rumqtt #1056); a fresh client re-sends everything from the outbox instead.
                self.restart_client().await?;
                // The status shows a hub that keeps reconnecting, not only its log.
                let message = "a packet id collided in the MQTT client".to_string();
                if self.record_uplink_error(message).await? {
                    tracing::warn!(
                        pkid,
                        "Packet id collision in the MQTT client; reconnecting."
                    );
                }
            }
            LinkEvent::TooLarge { bytes } => {
                // Most likely a retained fleet command: it would end every connection that subscribes
                // again, and each would send the readings in flight once more without their PUBACKs.
                self.subscriptions_paused_until = Some(Instant::now() + SUBSCRIPTIONS_PAUSE);
                tracing::error!(
                    bytes,
                    limit = link::MAX_PACKET,
                    protocol = self.protocol.as_str(),
                    "The broker sent a message larger than the hub reads, which ended the connection. The hub \
                     connects without its subscriptions (fleet commands) for 10 minutes so that readings keep \
                     going; clear the message (a retained command under cmd/) on the broker."
                );
                let minutes = SUBSCRIPTIONS_PAUSE.as_secs() / 60;
                let message = format!(
                    "the broker sent a message of {bytes} bytes, more than the hub reads; fleet commands \
                     are paused for {minutes} minutes"
                );
                self.handle_connection_error(message).await?;
            }
            LinkEvent::Disconnected | LinkEvent::Other => {}
        }
        Ok(())
    }

    /// A PUBACK that has not come within the timeout on a live connection will not come: the publish was
    /// lost on the way (a broker that drops it, or a client that lost track of it). A fresh client re-sends everything unacknowledged from the outbox, as after any
    /// reconnect, instead of the record and every retry pass waiting for the connection to drop.
    async fn check_puback_timeout(&mut self) -> Result<(), UplinkError> {
        if !self.connected
            || !self
                .inflight
                .puback_overdue(Instant::now().into_std(), self.puback_timeout)
        {
            return Ok(());
        }
        tracing::warn!(
            timeout_s = self.puback_timeout.as_secs(),
            "A publish got no PUBACK from the MQTT broker in time; reconnecting to send it again."
        );
        self.restart_client().await
    }

    /// The broker did not take a reading: it stays in the outbox, and the refusal is counted and logged
    /// once per burst (see [`refusal`]).
    async fn handle_refused(&mut self, seq: i64, refusal: Refusal) -> Result<(), UplinkError> {
        let now = Instant::now().into_std();
        self.refused_unsaved.add(refusal);
        if self.ack_deadline.is_none() {
            self.ack_deadline = Some(Instant::now() + ACK_DELAY);
        }
        if let AfterRefusal::JumpTo(frontier) = self.gate.handle_refused(seq, now, fastrand::f64())
        {
            self.restart_walk(frontier);
        }
        match self.refusal_log.handle_refused(refusal, now) {
            Some(RefusalReport::Started(refusal)) => {
                let message = format!(
                    "broker refused a reading: {} (PUBACK reason code >= 0x80)",
                    refusal.name()
                );
                tracing::error!(
                    reason = refusal.name(),
                    "The MQTT broker refused a reading; it stays in the outbox and is retried with backoff. \
                     Check the broker's access rules for this hub's user and topics."
                );
                self.outbox
                    .record_uplink_error(message, crate::clock::now_utc().timestamp_millis())
                    .await?;
                // The status topic shows the refusal at once rather than at the next refresh.
                self.flush_acks().await?;
                self.publish_status("online").await?;
            }
            Some(RefusalReport::Summary(counts)) => {
                let reasons: Vec<String> = counts
                    .iter()
                    .map(|(name, count)| format!("{name} {count}"))
                    .collect();
                tracing::error!(
                    refused = counts.total(),
                    reasons = %reasons.join(", "),
                    "The MQTT broker still refuses readings; they stay in the outbox."
                );
            }
            Some(RefusalReport::Ended { .. }) | None => {}
        }
        Ok(())
    }

    /// Logs the end of a burst of refusals, and the status topic stops saying "refusing" at once.
    async fn handle_burst_report(
        &mut self,
        report: Option<RefusalReport>,
    ) -> Result<(), UplinkError> {
        if let Some(RefusalReport::Ended { refused }) = report {
            tracing::info!(
                refused,
                "The MQTT broker takes readings again and has refused none for a while."
            );
            self.flush_acks().await?;
            if self.connected {
                self.publish_status("online").await?;
            }
        }
        Ok(())
    }

    fn start_connection(&mut self) {
        self.connected = true;
        self.inflight.handle_connection_lost();
        self.gate.handle_connected();
        self.restart_walk(0);
        self.connected_at = Some(Instant::now());
        self.status_refusal_logged = false;
    }

    async fn handle_connection_error(&mut self, message: String) -> Result<(), UplinkError> {
        let was_connected = self.connected;
        // A fresh client for the next attempt: no packet ids, collision or queue carried over (rumqtt
        // #1056), and the packet-id space fits a broker whose Receive Maximum changed.
        self.restart_client().await?;
        if self.record_uplink_error(message.clone()).await? {
            if was_connected {
                tracing::warn!(error = %message, "Lost the MQTT connection; readings stay in the outbox.");
            } else {
                tracing::warn!(error = %message, "Cannot reach the MQTT broker; readings stay in the outbox.");
            }
        }
        Ok(())
    }

    /// Records `message` as the uplink's last error for the status, unless it repeats the last one within
    /// [`ERROR_REPEAT`]; returns whether it did, and so whether to log it.
    async fn record_uplink_error(&mut self, message: String) -> Result<bool, UplinkError> {
        if !self
            .errors
            .should_report(&message, Instant::now().into_std())
        {
            return Ok(false);
        }
        self.outbox
            .record_uplink_error(message, crate::clock::now_utc().timestamp_millis())
            .await?;
        Ok(true)
    }

    /// Hands a message to the exchange's owner, which always takes it soon.
    async fn pass_on(&mut self, incoming: Incoming) {
        if let Some(sender) = &self.incoming {
            if sender.send(incoming).await.is_err() {
                self.incoming = None;
            }
        }
    }

    /// Queues the held exchange message, if the client has room; it stays held otherwise.
    fn publish_held_message(&mut self) {
        let Some(message) = self.held_message.take() else {
            return;
        };
        self.inflight
            .handle_publish_requested(Slot::Message(message.token));
        let topic = self.topics.under(&message.subtopic);
        if self
            .link
            .try_publish(topic, message.payload.clone(), message.retain)
            .is_err()
        {
            self.inflight.handle_publish_not_queued();
            self.held_message = Some(message);
        }
    }

    /// Drops the client and event loop (and so the connection) and builds new ones.
    async fn restart_client(&mut self) -> Result<(), UplinkError> {
        if self.connected {
            self.pass_on(Incoming::Disconnected).await;
        }
        self.connected = false;
        self.restarted = Some(
            self.connected_at
                .take()
                .map_or(Duration::ZERO, |at| at.elapsed()),
        );
        self.inflight.handle_connection_lost();
        // The next connection walks the outbox from its start again.
        self.restart_walk(0);
        self.flush_acks().await?;
        self.link.restart();
        Ok(())
    }

    /// Removes acknowledged records and saves refusal counters.
    async fn flush_acks(&mut self) -> Result<(), UplinkError> {
        self.ack_deadline = None;
        if !self.refused_unsaved.is_empty() {
            let refused = self.refused_unsaved.take();
            let mut deltas = vec![(REFUSED_COUNTER.to_string(), refused.total())];
            deltas.extend(
                refused
                    .iter()
                    .map(|(name, count)| (format!("{REFUSED_COUNTER}.{name}"), count)),
            );
            self.outbox.add_counters(deltas).await?;
        }
        if self.acked.is_empty() {
            return Ok(());
        }
        let seqs = std::mem::take(&mut self.acked);
        self.outbox
            .acknowledge(seqs, crate::clock::now_utc().timestamp_millis())
            .await?;
        Ok(())
    }

    async fn publish_status(&mut self, state: &str) -> Result<(), UplinkError> {
        self.status_due = Instant::now() + self.status_interval;
        let stats = self.outbox.stats().await?;
        let document = status_document(
            state,
            &self.hub_id,
            self.protocol,
            self.refusal_log.in_burst(),
            &stats,
        );
        self.inflight.handle_publish_requested(Slot::Status);
        if self
            .link
            .try_publish(
                self.topics.status(),
                document.to_string().into_bytes(),
                true,
            )
            .is_err()
        {
            tracing::debug!("Status publish not queued.");
            self.inflight.handle_publish_not_queued();
        }
        Ok(())
    }

    /// Publishes the retained "offline" status, waits briefly for the broker to acknowledge it and the
    /// readings in flight, and disconnects.
    ///
    /// The DISCONNECT waits for those PUBACKs: a broker that finds the connection closed while it writes
    /// one treats the stop as a lost connection and publishes the hub's will, `lost` after `offline`
    /// (Mosquitto before 2.0.22 logs it as "disconnected due to out of memory").
    async fn shut_down(mut self) -> Result<(), UplinkError> {
        if self.connected {
            self.publish_status("offline").await?;
            let acknowledged = Instant::now() + SHUTDOWN_GRACE;
            while self.connected && !self.inflight.is_empty() {
                tokio::select! {
                    _ = sleep_until(acknowledged) => break,
                    event = self.link.poll() => match event {
                        Ok(event) => self.handle_event(event).await?,
                        Err(_) => return self.flush_acks().await,
                    }
                }
            }
            self.link.try_disconnect();
            let sent = Instant::now() + DISCONNECT_GRACE;
            // A collision while waiting started a fresh client, which must not connect now.
            while self.connected {
                tokio::select! {
                    _ = sleep_until(sent) => break,
                    event = self.link.poll() => match event {
                        Ok(LinkEvent::Disconnected) | Err(_) => break,
                        Ok(event) => self.handle_event(event).await?,
                    }
                }
            }
        }
        self.flush_acks().await
    }
}

/// The retained status document. `refusing` is true while the broker refuses readings.
pub fn status_document(
    state: &str,
    hub_id: &str,
    protocol: MqttProtocol,
    refusing: bool,
    stats: &OutboxStats,
) -> serde_json::Value {
    let refused = refused_by_reason(stats);
    serde_json::json!({
        "state": state,
        "hub_id": hub_id,
        "version": env!("CARGO_PKG_VERSION"),
        "at": crate::clock::now_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "hub_clock": crate::clock::hub_clock().as_str(),
        "outbox": {
            "pending": stats.pending,
            "held_for_clock": stats.held,
            "rejected_full_total": stats.rejected_full_total,
            "delivered_total": stats.delivered_total,
            "quarantined_records": stats.quarantined_records,
            "lost_total": stats.lost_total,
            "waiting_for_space_since": stats
                .waiting_for_space_since_ms
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|at| at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        },
        "uplink": {
            "protocol": protocol.as_str(),
            "refusing": refusing,
            "refused_total": stats.counters.get(REFUSED_COUNTER).copied().unwrap_or(0),
            "refused": refused,
        },
    })
}

/// The refusal counters by reason name, from the outbox's counters.
pub fn refused_by_reason(stats: &OutboxStats) -> serde_json::Map<String, serde_json::Value> {
    let prefix = format!("{REFUSED_COUNTER}.");
    stats
        .counters
        .iter()
        .filter_map(|(name, count)| {
            name.strip_prefix(&prefix)
                .map(|reason| (reason.to_string(), serde_json::Value::from(*count)))
        })
        .collect()
}

/// Capped exponential backoff with ±20 % jitter, so a fleet of hubs does not reconnect in lockstep.
struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            current: min,
        }
    }

    /// The delay before the next attempt, after a connection that lasted `lasted` (zero if it never came
    /// up). Only a connection that stayed up [`STABLE_AFTER`] resets the delay to the shortest.
    fn next_delay(&mut self, lasted: Duration) -> Duration {
        if lasted >= STABLE_AFTER {
            self.current = self.min;
        }
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

/// Lets a broker error through when it differs from the last one let through, or that one is
/// [`ERROR_REPEAT`] old, so a reconnect loop does not log and write the same error every attempt.
#[derive(Debug, Default)]
struct RepeatFilter {
    last: Option<(String, std::time::Instant)>,
}

impl RepeatFilter {
    fn should_report(&mut self, message: &str, now: std::time::Instant) -> bool {
        let repeated = self.last.as_ref().is_some_and(|(last, at)| {
            last == message && now.saturating_duration_since(*at) < ERROR_REPEAT
        });
        if !repeated {
            self.last = Some((message.to_string(), now));
        }
        !repeated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_only_after_a_stable_connection() {
        let ms = Duration::from_millis;
        // (how long the connection that ended lasted, the delay's base before jitter)
        let table = [
            (Duration::ZERO, 100),
            (Duration::ZERO, 200),
            (Duration::ZERO, 400),
            (Duration::ZERO, 400),
            // Accepted and dropped at once, again and again: the delay keeps its cap.
            (ms(500), 400),
            (STABLE_AFTER - ms(1), 400),
            // A connection that stayed up starts the next round from the shortest delay.
            (STABLE_AFTER, 100),
            (Duration::ZERO, 200),
            (Duration::from_secs(3600), 100),
        ];
        let mut backoff = Backoff::new(ms(100), ms(400));
        for (index, (lasted, base)) in table.into_iter().enumerate() {
            let delay = backoff.next_delay(lasted).as_millis();
            assert!(
                delay >= base * 8 / 10 && delay <= base * 12 / 10,
                "row {index}: {delay} ms, base {base} ms"
            );
        }
    }

    #[test]
    fn an_identical_error_is_reported_at_most_once_a_minute() {
        let start = std::time::Instant::now();
        // (seconds since the start, error, reported)
        let table = [
            (0, "connection reset", true),
            (1, "connection reset", false),
            (59, "connection reset", false),
            (60, "connection reset", true),
            (61, "connection refused", true),
            (62, "connection reset", true),
            (63, "connection reset", false),
        ];
        let mut filter = RepeatFilter::default();
        for (index, (at, error, reported)) in table.into_iter().enumerate() {
            assert_eq!(
                filter.should_report(error, start + Duration::from_secs(at)),
                reported,
                "row {index}"
            );
        }
    }
}

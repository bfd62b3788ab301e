//! The MQTT uplink: publishes outbox records to the broker and removes each only after its PUBACK.
//!
//! One task owns the rumqttc event loop and every publish. rumqttc keeps in-flight and queued publishes in
//! memory only and drops them on a clean-session reconnect without telling anyone (mqtt-outbox.md §2), so
//! the outbox is the source of truth: the packet-id mapping ([`inflight`]) is reset at every connection
//! boundary, and after each CONNACK everything still in the outbox is published again, oldest first.
//! Acknowledged records are removed in batches; a crash between PUBACK and removal costs a duplicate
//! (every payload carries its stable `id`), never a loss.

pub mod inflight;
mod tls;
pub mod topic;

use std::collections::VecDeque;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, LastWill, MqttOptions, Outgoing, QoS,
};
use tokio::sync::{oneshot, watch};
use tokio::time::{sleep, sleep_until, Instant};

use crate::config::MqttConfig;
use crate::outbox::worker::WorkerGone;
use crate::outbox::{OutboxHandle, StoredRecord};
use inflight::{Inflight, Slot};
use topic::Topics;

/// Records fetched from the outbox per round trip.
const FETCH_BATCH: usize = 1024;
/// Acknowledged records removed per outbox transaction, and the longest an acknowledgement waits.
const ACK_BATCH: usize = 1024;
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How often the retained status is refreshed with outbox figures while connected.
const STATUS_REFRESH: Duration = Duration::from_secs(60);
/// How long a clean shutdown waits for the broker to take the "offline" status.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the uplink stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("outbox worker stopped")]
    OutboxGone(#[from] crate::outbox::worker::WorkerGone),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] tls::TlsSetupError),
    #[error("cannot read the MQTT password: {0}")]
    Password(std::io::Error),
}

/// Everything the uplink needs from the configuration.
pub struct UplinkSettings {
    pub hub_id: String,
    pub mqtt: MqttConfig,
}

/// Runs until `shutdown` turns true. Broker trouble is retried forever with capped, jittered backoff.
pub async fn run(
    settings: UplinkSettings,
    outbox: OutboxHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), UplinkError> {
    let topics = Topics::new(&settings.mqtt.topic_prefix, &settings.hub_id);
    let options = mqtt_options(&settings, &topics)?;
    let mut uplink = Uplink::new(options, &settings, topics, outbox);
    let mut backoff = Backoff::new(settings.mqtt.reconnect_min, settings.mqtt.reconnect_max);
    let appended = uplink.outbox.appended();
    // Timers live across iterations and are re-armed, rather than rebuilt for every MQTT event.
    let ack_timer = sleep_until(Instant::now());
    let status_timer = sleep_until(uplink.status_due);
    tokio::pin!(ack_timer, status_timer);
    loop {
        if uplink.connected {
            uplink.fill_window().await?;
        }
        if let Some(deadline) = uplink.ack_deadline {
            if ack_timer.deadline() != deadline {
                ack_timer.as_mut().reset(deadline);
            }
        }
        if status_timer.deadline() != uplink.status_due {
            status_timer.as_mut().reset(uplink.status_due);
        }
        let waiting_for_records = uplink.connected && uplink.exhausted && uplink.buffer.is_empty();
        tokio::select! {
            biased;
            _ = shutdown.changed() => break,
            event = uplink.eventloop.poll() => match event {
                Ok(event) => {
                    if uplink.handle_event(event).await? {
                        backoff.reset();
                    }
                }
                Err(error) => {
                    uplink.handle_connection_error(&error).await?;
                    let delay = backoff.next_delay();
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        _ = sleep(delay) => {}
                    }
                }
            },
            _ = &mut ack_timer, if uplink.ack_deadline.is_some() => uplink.flush_acks().await?,
            _ = appended.notified(), if waiting_for_records => uplink.exhausted = false,
            _ = &mut status_timer, if uplink.connected => uplink.publish_status("online").await?,
        }
    }
    uplink.shut_down().await
}

struct Uplink {
    client: AsyncClient,
    eventloop: rumqttc::EventLoop,
    outbox: OutboxHandle,
    topics: Topics,
    hub_id: String,
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
    last_error: Option<String>,
}

impl Uplink {
    fn new(
        options: MqttOptions,
        settings: &UplinkSettings,
        topics: Topics,
        outbox: OutboxHandle,
    ) -> Uplink {
        let window = settings.mqtt.window;
        let (client, eventloop) = AsyncClient::new(options, window + 8);
        Uplink {
            client,
            eventloop,
            outbox,
            topics,
            hub_id: settings.hub_id.clone(),
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
            last_error: None,
        }
    }

    /// Publishes outbox records until the window is full or the outbox has nothing more.
    async fn fill_window(&mut self) -> Result<(), UplinkError> {
        while self.inflight.len() < self.window {
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
            let topic = self.topics.reading(&record.label);
            self.inflight
                .handle_publish_requested(Slot::Record(record.seq));
            let payload = std::mem::take(&mut record.payload);
            if let Err(error) = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                // The request queue is full; the record goes back and waits for the window to move.
                tracing::debug!(%error, "Publish queue full.");
                self.inflight.handle_publish_not_queued();
                if let rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(publish)) = error
                {
                    record.payload = publish.payload.to_vec();
                    self.buffer.push_front(record);
                } else {
                    // The payload did not come back; read it again from the outbox, which still holds it.
                    self.buffer.clear();
                    self.next_batch = None;
                    self.exhausted = false;
                    self.cursor = record.seq - 1;
                }
                break;
            }
        }
        Ok(())
    }

    /// Returns true when the event shows a healthy connection (CONNACK).
    async fn handle_event(&mut self, event: Event) -> Result<bool, UplinkError> {
        match event {
            Event::Incoming(Incoming::ConnAck(connack)) => {
                tracing::info!(code = ?connack.code, "Connected to the MQTT broker.");
                self.start_connection();
                self.publish_status("online").await?;
                return Ok(true);
            }
            Event::Incoming(Incoming::PubAck(puback)) => {
                match self.inflight.handle_puback(puback.pkid) {
                    Some(Slot::Record(seq)) => {
                        self.acked.push(seq);
                        if self.acked.len() >= ACK_BATCH {
                            self.flush_acks().await?;
                        } else if self.ack_deadline.is_none() {
                            self.ack_deadline = Some(Instant::now() + ACK_DELAY);
                        }
                    }
                    Some(Slot::Status) => {}
                    None => tracing::debug!(
                        pkid = puback.pkid,
                        "PUBACK for a publish of an earlier connection."
                    ),
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) if pkid != 0 => {
                if let Err(error) = self.inflight.handle_publish_sent(pkid) {
                    // The mapping can no longer be trusted: start a fresh connection and re-send from the outbox.
                    tracing::error!(%error, "Lost track of publishes in flight; reconnecting.");
                    self.restart_client().await?;
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
                tracing::warn!(
                    pkid,
                    "Packet id collision in the MQTT client; waiting for its acknowledgement."
                );
            }
            _ => {}
        }
        Ok(false)
    }

    fn start_connection(&mut self) {
        self.connected = true;
        self.inflight.handle_connection_lost();
        self.buffer.clear();
        self.next_batch = None;
        self.cursor = 0;
        self.exhausted = false;
        self.last_error = None;
    }

    async fn handle_connection_error(
        &mut self,
        error: &ConnectionError,
    ) -> Result<(), UplinkError> {
        let was_connected = self.connected;
        self.connected = false;
        self.inflight.handle_connection_lost();
        self.buffer.clear();
        self.next_batch = None;
        self.flush_acks().await?;
        let message = describe(error);
        if self.last_error.as_deref() != Some(message.as_str()) {
            if was_connected {
                tracing::warn!(error = %message, "Lost the MQTT connection; readings stay in the outbox.");
            } else {
                tracing::warn!(error = %message, "Cannot reach the MQTT broker; readings stay in the outbox.");
            }
            self.outbox
                .record_uplink_error(message.clone(), crate::clock::now_utc().timestamp_millis())
                .await?;
            self.last_error = Some(message);
        }
        Ok(())
    }

    /// Drops the client and event loop (and so the connection) and builds new ones.
    async fn restart_client(&mut self) -> Result<(), UplinkError> {
        self.connected = false;
        self.inflight.handle_connection_lost();
        self.buffer.clear();
        self.next_batch = None;
        self.flush_acks().await?;
        let options = self.eventloop.mqtt_options.clone();
        let (client, eventloop) = AsyncClient::new(options, self.window + 8);
        self.client = client;
        self.eventloop = eventloop;
        Ok(())
    }

    async fn flush_acks(&mut self) -> Result<(), UplinkError> {
        self.ack_deadline = None;
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
        self.status_due = Instant::now() + STATUS_REFRESH;
        let stats = self.outbox.stats().await?;
        let document = serde_json::json!({
            "state": state,
            "hub_id": self.hub_id,
            "version": env!("CARGO_PKG_VERSION"),
            "at": crate::clock::now_utc().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "hub_clock": crate::clock::hub_clock().as_str(),
            "outbox": {
                "pending": stats.pending,
                "held_for_clock": stats.held,
                "rejected_full_total": stats.rejected_full_total,
                "delivered_total": stats.delivered_total,
            },
        });
        self.inflight.handle_publish_requested(Slot::Status);
        if let Err(error) = self.client.try_publish(
            self.topics.status(),
            QoS::AtLeastOnce,
            true,
            document.to_string().into_bytes(),
        ) {
            tracing::debug!(%error, "Status publish not queued.");
            self.inflight.handle_publish_not_queued();
        }
        Ok(())
    }

    /// Publishes the retained "offline" status, waits briefly for the broker to take it, and disconnects.
    async fn shut_down(mut self) -> Result<(), UplinkError> {
        if self.connected {
            self.publish_status("offline").await?;
            let _ = self.client.try_disconnect();
            let deadline = Instant::now() + SHUTDOWN_GRACE;
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    event = self.eventloop.poll() => match event {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                        Ok(event) => { self.handle_event(event).await?; }
                    }
                }
            }
        }
        self.flush_acks().await?;
        Ok(())
    }
}

fn describe(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}

fn mqtt_options(settings: &UplinkSettings, topics: &Topics) -> Result<MqttOptions, UplinkError> {
    let mqtt = &settings.mqtt;
    let mut options = MqttOptions::new(&mqtt.client_id, &mqtt.host, mqtt.port);
    options.set_keep_alive(mqtt.keep_alive);
    // The outbox owns retransmission, so the broker keeps no session for us (see the module docs).
    options.set_clean_session(true);
    // Packet ids cycle through 1..=inflight; keeping our window at most half of it means an id is never
    // reused while an earlier use may still be acknowledged, which sidesteps rumqtt #1014/#1056.
    options.set_inflight((mqtt.window * 2 + 8) as u16);
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    let will = serde_json::json!({"state": "lost", "hub_id": settings.hub_id});
    options.set_last_will(LastWill::new(
        topics.status(),
        will.to_string(),
        QoS::AtLeastOnce,
        true,
    ));
    if let Some(username) = &mqtt.username {
        let password = match &mqtt.password {
            Some(source) => source.read().map_err(UplinkError::Password)?,
            None => String::new(),
        };
        options.set_credentials(username, password);
    }
    if mqtt.tls {
        options.set_transport(rumqttc::Transport::tls_with_config(tls::client_config(
            mqtt,
        )?));
    }
    Ok(options)
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

    fn reset(&mut self) {
        self.current = self.min;
    }

    fn next_delay(&mut self) -> Duration {
        let base = self.current;
        self.current = (self.current * 2).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        let expected_bases = [100, 200, 400, 400, 400];
        for (delay, base) in delays.iter().zip(expected_bases) {
            assert!(
                *delay >= base * 8 / 10 && *delay <= base * 12 / 10,
                "{delays:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(120));
    }
}

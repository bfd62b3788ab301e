//! The MQTT client under the uplink: rumqttc's MQTT 5 client, or its MQTT 3.1.1 client as the configured
//! fallback, behind one small interface so the uplink's logic is written once.
//!
//! Both clients are built with a clean start and keep nothing across connections that the uplink relies
//! on: the outbox owns retransmission. The MQTT 5 session expires when the connection ends (session expiry
//! interval 0), so a broker keeps no queue for the hub either.

use std::pin::Pin;

use futures_util::{FutureExt, Stream, StreamExt};
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5::{PubAckReason, PublishProperties};

use super::refusal::{classify, AckOutcome};
use super::{tls, UplinkError, UplinkSettings};
use crate::config::MqttProtocol;

/// The largest packet either side may send: a reading is a few kilobytes at most.
pub(crate) const MAX_PACKET: u32 = 256 * 1024;

/// What the client reports, in the terms the uplink needs.
#[derive(Debug)]
pub enum LinkEvent {
    /// The broker accepted the connection. `receive_maximum` is its MQTT 5 limit on publishes awaiting
    /// a PUBACK (absent means 65,535; MQTT 3.1.1 has none).
    Connected {
        receive_maximum: Option<u16>,
    },
    /// The PUBACK for `pkid`.
    PubAck {
        pkid: u16,
        outcome: AckOutcome,
    },
    /// A QoS 1 publish went out with `pkid`.
    PublishSent(u16),
    /// The client found `pkid` still in flight when it wanted to reuse it and holds the publish back.
    Collision(u16),
    /// A message on a topic the uplink subscribed to; `retained` when the broker kept it from before the
    /// subscription (a live publish arrives with the flag cleared).
    Message {
        topic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    /// The broker sent a packet larger than the client reads (`bytes` long), which ended the connection.
    /// Over MQTT 3.1.1 the broker cannot be told the limit; a retained message that size would end every
    /// connection that subscribes to its topic.
    TooLarge {
        bytes: usize,
    },
    /// The client sent DISCONNECT.
    Disconnected,
    Other,
}

/// What a reading's message is, for its MQTT 5 properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    ReadingV1,
    Fhir,
}

/// A publish the client's request queue had no room for; the payload comes back when it can.
pub struct NotQueued(pub Option<Vec<u8>>);

/// The MQTT client: requests go in through `client`; `events` polls the event loop it owns.
///
/// The event loop is polled only through `events`, a stream that keeps an unfinished poll inside itself:
/// rumqttc's `poll` is not cancel-safe (a publish taken from the request queue and dropped half-written
/// never reaches the broker), and the uplink waits on it inside `select!`, which drops the losing futures.
pub struct Link {
    client: Client,
    options: Options,
    capacity: usize,
    events: Events,
}

enum Client {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

#[allow(
    clippy::large_enum_variant,
    reason = "the daemon has one, built once and never moved about"
)]
enum Options {
    V5(v5::MqttOptions),
    V311(rumqttc::MqttOptions),
}

#[allow(
    clippy::large_enum_variant,
    reason = "one at a time, moved once into its stream"
)]
enum EventLoop {
    V5(v5::EventLoop),
    V311(rumqttc::EventLoop),
}

/// The event loop's events; it ends after the first error, dropping the event loop and its connection.
type Events = Pin<Box<dyn Stream<Item = Result<LinkEvent, String>> + Send>>;

impl Link {
    /// `capacity` is the client's request queue: the uplink's window plus room for status publishes.
    pub fn new(
        settings: &UplinkSettings,
        status_topic: String,
        capacity: usize,
    ) -> Result<Link, UplinkError> {
        let mqtt = &settings.mqtt;
        let will = serde_json::json!({"state": "lost", "hub_id": settings.hub_id}).to_string();
        let credentials = match &mqtt.username {
            Some(username) => {
                let password = match &mqtt.password {
                    Some(source) => source.read().map_err(UplinkError::Password)?,
                    None => String::new(),
                };
                Some((username.clone(), password))
            }
            None => None,
        };
        let transport = if mqtt.url.tls {
            Some(rumqttc::Transport::tls_with_config(tls::client_config(
                mqtt,
            )?))
        } else {
            None
        };
        // The client numbers packets 1..=this. Keeping the uplink's window at most half of it means an id
        // is never reused while an earlier use may still be acknowledged, which sidesteps rumqtt #1014/#1056
        // (a packet-id collision that never clears). Under MQTT 5 the broker's Receive Maximum can lower
        // it (Mosquitto says 20); the client then keeps no more than that on the wire and holds the rest of
        // the uplink's window in its queue, counts on the broker acknowledging in order as MQTT requires
        // and on the uplink subscribing before it publishes (see `Connected` in the uplink), and the
        // uplink starts a fresh client if a collision happens anyway.
        let pkid_space = u16::try_from(mqtt.window * 2 + 8).unwrap_or(u16::MAX);
        let options = match mqtt.protocol {
            MqttProtocol::V5 => {
                let mut options =
                    v5::MqttOptions::new(&mqtt.client_id, &mqtt.url.host, mqtt.url.port);
                options.set_keep_alive(mqtt.keep_alive);
                options.set_clean_start(true);
                options.set_session_expiry_interval(Some(0));
                options.set_outgoing_inflight_upper_limit(pkid_space);
                options.set_max_packet_size(Some(MAX_PACKET));
                options.set_last_will(v5::mqttbytes::v5::LastWill::new(
                    status_topic,
                    will,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    true,
                    None,
                ));
                if let Some((username, password)) = credentials {
                    options.set_credentials(username, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                Options::V5(options)
            }
            MqttProtocol::V311 => {
                let mut options =
                    rumqttc::MqttOptions::new(&mqtt.client_id, &mqtt.url.host, mqtt.url.port);
                options.set_keep_alive(mqtt.keep_alive);
                options.set_clean_session(true);
                options.set_inflight(pkid_space);
                options.set_max_packet_size(MAX_PACKET as usize, MAX_PACKET as usize);
                options.set_last_will(rumqttc::LastWill::new(
                    status_topic,
                    will,
                    rumqttc::QoS::AtLeastOnce,
                    true,
                ));
                if let Some((username, password)) = credentials {
                    options.set_credentials(username, password);
                }
                if let Some(transport) = transport {
                    options.set_transport(transport);
                }
                Options::V311(options)
            }
        };
        let (client, eventloop) = options.client(capacity);
        Ok(Link {
            client,
            options,
            capacity,
            events: eventloop.into_events(),
        })
    }

    /// Drops the client and its event loop (and so the connection) and builds new ones from the same
    /// options, with nothing of the old state: no packet ids, no stashed collision, no queued requests, no
    /// events not yet taken. The new client connects when it is first polled.
    pub fn restart(&mut self) {
        let (client, eventloop) = self.options.client(self.capacity);
        self.client = client;
        self.events = eventloop.into_events();
    }

    /// The next event; an error means the connection is gone (or never came), described for the operator.
    /// Cancel-safe: a poll cut short goes on at the next call.
    pub async fn poll(&mut self) -> Result<LinkEvent, String> {
        match self.events.next().await {
            Some(event) => event,
            // The stream ends only after it reported an error, which restarts the link.
            None => Err("the MQTT client stopped".to_string()),
        }
    }

    /// The next event if the client has one without waiting for the network.
    pub fn try_poll(&mut self) -> Option<Result<LinkEvent, String>> {
        self.events.next().now_or_never().flatten()
    }

    /// Queues a reading: QoS 1, not retained, never an expiry (a reading is worth delivering however
    /// late), and under MQTT 5 the payload's schema name as the user property `schema` and, for a FHIR
    /// Bundle, its content type.
    pub fn try_publish_reading(
        &self,
        topic: String,
        payload: Vec<u8>,
        format: MessageFormat,
    ) -> Result<(), NotQueued> {
        match &self.client {
            Client::V5(client) => {
                let (schema, content_type) = match format {
                    MessageFormat::ReadingV1 => (crate::model::payload::SCHEMA_NAME, None),
                    MessageFormat::Fhir => (
                        crate::model::fhir::SCHEMA_NAME,
                        Some(crate::model::fhir::CONTENT_TYPE.to_string()),
                    ),
                };
                let properties = PublishProperties {
                    user_properties: vec![("schema".to_string(), schema.to_string())],
                    content_type,
                    ..PublishProperties::default()
                };
                client
                    .try_publish_with_properties(
                        topic,
                        v5::mqttbytes::QoS::AtLeastOnce,
                        false,
                        payload,
                        properties,
                    )
                    .map_err(|error| match error {
                        v5::ClientError::TryRequest(v5::Request::Publish(publish))
                        | v5::ClientError::Request(v5::Request::Publish(publish)) => {
                            NotQueued(Some(publish.payload.to_vec()))
                        }
                        _ => NotQueued(None),
                    })
            }
            Client::V311(client) => client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .map_err(|error| match error {
                    rumqttc::ClientError::TryRequest(rumqttc::Request::Publish(publish))
                    | rumqttc::ClientError::Request(rumqttc::Request::Publish(publish)) => {
                        NotQueued(Some(publish.payload.to_vec()))
                    }
                    _ => NotQueued(None),
                }),
        }
    }

    /// Queues a message that is not a reading (the status, the fleet's twin, events and command states), QoS 1.
    pub fn try_publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), NotQueued> {
        let queued = match &self.client {
            Client::V5(client) => client
                .try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, retain, payload)
                .is_ok(),
            Client::V311(client) => client
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, retain, payload)
                .is_ok(),
        };
        if queued {
            Ok(())
        } else {
            Err(NotQueued(None))
        }
    }

    /// Queues a QoS 1 subscription; false when the request queue had no room.
    pub fn try_subscribe(&self, filter: String) -> bool {
        match &self.client {
            Client::V5(client) => client
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .is_ok(),
            Client::V311(client) => client
                .try_subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .is_ok(),
        }
    }

    pub fn try_disconnect(&self) {
        let _ = match &self.client {
            Client::V5(client) => client.try_disconnect().is_ok(),
            Client::V311(client) => client.try_disconnect().is_ok(),
        };
    }
}

impl Options {
    fn client(&self, capacity: usize) -> (Client, EventLoop) {
        match self {
            Options::V5(options) => {
                let (client, eventloop) = v5::AsyncClient::new(options.clone(), capacity);
                (Client::V5(client), EventLoop::V5(eventloop))
            }
            Options::V311(options) => {
                let (client, eventloop) = rumqttc::AsyncClient::new(options.clone(), capacity);
                (Client::V311(client), EventLoop::V311(eventloop))
            }
        }
    }
}

impl EventLoop {
    fn into_events(self) -> Events {
        // The event loop is boxed because the stream moves its state into and out of a new future for every
        // event, and rumqttc's is over a kilobyte: in a profile of the drain, those copies took about a
        // twentieth of the uplink thread's samples.
        Box::pin(futures_util::stream::unfold(
            Some(Box::new(self)),
            |eventloop| async move {
                let mut eventloop = eventloop?;
                let event = eventloop.poll().await;
                let failed = event.is_err();
                Some((event, (!failed).then_some(eventloop)))
            },
        ))
    }

    async fn poll(&mut self) -> Result<LinkEvent, String> {
        match self {
            EventLoop::V5(eventloop) => {
                use v5::mqttbytes::v5::Packet;
                use v5::Event;
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(connack))) => Ok(LinkEvent::Connected {
                        receive_maximum: connack.properties.and_then(|p| p.receive_max),
                    }),
                    Ok(Event::Incoming(Packet::PubAck(puback))) => Ok(LinkEvent::PubAck {
                        pkid: puback.pkid,
                        outcome: classify(puback_code(puback.reason)),
                    }),
                    Ok(Event::Incoming(Packet::Publish(publish))) => Ok(LinkEvent::Message {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        payload: publish.payload.to_vec(),
                        retained: publish.retain,
                    }),
                    Ok(Event::Outgoing(outgoing)) => Ok(outgoing_event(outgoing)),
                    Ok(_) => Ok(LinkEvent::Other),
                    Err(v5::ConnectionError::MqttState(v5::StateError::Deserialization(
                        v5::mqttbytes::Error::PayloadSizeLimitExceeded { pkt_size, .. },
                    ))) => Ok(LinkEvent::TooLarge { bytes: pkt_size }),
                    Err(error) => Err(describe_v5(&error)),
                }
            }
            EventLoop::V311(eventloop) => {
                use rumqttc::{Event, Incoming};
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => Ok(LinkEvent::Connected {
                        receive_maximum: None,
                    }),
                    // MQTT 3.1.1 has no way to say no: a PUBACK is always "taken" (see the README).
                    Ok(Event::Incoming(Incoming::PubAck(puback))) => Ok(LinkEvent::PubAck {
                        pkid: puback.pkid,
                        outcome: AckOutcome::Accepted,
                    }),
                    Ok(Event::Incoming(Incoming::Publish(publish))) => Ok(LinkEvent::Message {
                        topic: publish.topic,
                        payload: publish.payload.to_vec(),
                        retained: publish.retain,
                    }),
                    Ok(Event::Outgoing(outgoing)) => Ok(outgoing_event(outgoing)),
                    Ok(_) => Ok(LinkEvent::Other),
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        Err(format!("broker refused the connection: {code:?}"))
                    }
                    Err(rumqttc::ConnectionError::MqttState(
                        rumqttc::StateError::AwaitPingResp,
                    )) => Err(NO_PING_RESPONSE.to_string()),
                    Err(rumqttc::ConnectionError::MqttState(
                        rumqttc::StateError::Deserialization(
                            rumqttc::Error::PayloadSizeLimitExceeded(bytes),
                        ),
                    )) => Ok(LinkEvent::TooLarge { bytes }),
                    Err(error) => Err(error.to_string()),
                }
            }
        }
    }
}

fn outgoing_event(outgoing: rumqttc::Outgoing) -> LinkEvent {
    match outgoing {
        rumqttc::Outgoing::Publish(pkid) if pkid != 0 => LinkEvent::PublishSent(pkid),
        rumqttc::Outgoing::AwaitAck(pkid) => LinkEvent::Collision(pkid),
        rumqttc::Outgoing::Disconnect => LinkEvent::Disconnected,
        _ => LinkEvent::Other,
    }
}

/// The PUBACK reason code on the wire; rumqttc only parses the codes MQTT 5.0 defines for PUBACK.
fn puback_code(reason: PubAckReason) -> u8 {
    match reason {
        PubAckReason::Success => 0x00,
        PubAckReason::NoMatchingSubscribers => 0x10,
        PubAckReason::UnspecifiedError => 0x80,
        PubAckReason::ImplementationSpecificError => 0x83,
        PubAckReason::NotAuthorized => 0x87,
        PubAckReason::TopicNameInvalid => 0x90,
        PubAckReason::PacketIdentifierInUse => 0x91,
        PubAckReason::QuotaExceeded => 0x97,
        PubAckReason::PayloadFormatInvalid => 0x99,
    }
}

fn describe_v5(error: &v5::ConnectionError) -> String {
    match error {
        v5::ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        v5::ConnectionError::MqttState(v5::StateError::ServerDisconnect {
            reason_code,
            reason_string,
        }) => match reason_string {
            Some(text) => format!("broker closed the connection: {reason_code:?} ({text})"),
            None => format!("broker closed the connection: {reason_code:?}"),
        },
        v5::ConnectionError::MqttState(v5::StateError::AwaitPingResp) => {
            NO_PING_RESPONSE.to_string()
        }
        other => other.to_string(),
    }
}

/// A connection that died without a close (a router that lost its uplink) shows only as a keep-alive ping
/// that got no answer; rumqttc says "Last pingreq isn't acked".
const NO_PING_RESPONSE: &str =
    "the broker stopped answering (no reply to a keep-alive ping): the network path may be down";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::refusal::Refusal;

    #[test]
    fn every_puback_reason_rumqttc_parses_is_classified() {
        let table = [
            (PubAckReason::Success, AckOutcome::Accepted),
            (PubAckReason::NoMatchingSubscribers, AckOutcome::Accepted),
            (
                PubAckReason::UnspecifiedError,
                AckOutcome::Refused(Refusal::UnspecifiedError),
            ),
            (
                PubAckReason::ImplementationSpecificError,
                AckOutcome::Refused(Refusal::ImplementationSpecificError),
            ),
            (
                PubAckReason::NotAuthorized,
                AckOutcome::Refused(Refusal::NotAuthorized),
            ),
            (
                PubAckReason::TopicNameInvalid,
                AckOutcome::Refused(Refusal::TopicNameInvalid),
            ),
            (
                PubAckReason::PacketIdentifierInUse,
                AckOutcome::Refused(Refusal::PacketIdentifierInUse),
            ),
            (
                PubAckReason::QuotaExceeded,
                AckOutcome::Refused(Refusal::QuotaExceeded),
            ),
            (
                PubAckReason::PayloadFormatInvalid,
                AckOutcome::Refused(Refusal::PayloadFormatInvalid),
            ),
        ];
        for (reason, outcome) in table {
            assert_eq!(classify(puback_code(reason)), outcome, "{reason:?}");
        }
    }
}

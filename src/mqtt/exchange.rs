//! The uplink's door for the rest of the hub: messages other than readings that a part (the fleet agent)
//! publishes under the hub's topics, and the messages on topics it subscribes to. The uplink knows
//! nothing of what they mean.

use tokio::sync::mpsc;

/// A message to publish, QoS 1, on `{prefix}/{hub_id}/{subtopic}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    pub subtopic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
    /// Given back as [`Incoming::Published`] once the broker acknowledged the publish.
    pub token: Option<u64>,
}

/// What the uplink passes on.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A connection came up and the subscriptions were asked for; retained messages follow.
    Connected,
    /// The connection is gone; what was published and not acknowledged may be lost.
    Disconnected,
    /// A message on a subscribed topic, `{prefix}/{hub_id}/` taken off.
    Message {
        subtopic: String,
        payload: Vec<u8>,
        retained: bool,
    },
    /// The broker acknowledged the publish with this token (and did not refuse it).
    Published(u64),
    /// The broker refused the publish with this token (MQTT 5), giving the reason's name.
    Refused(u64, &'static str),
}

/// The two channels and the topic filters (under the hub's base) to subscribe to at every connection.
pub struct Exchange {
    pub subscriptions: Vec<String>,
    pub outgoing: mpsc::Receiver<Outgoing>,
    pub incoming: mpsc::Sender<Incoming>,
}

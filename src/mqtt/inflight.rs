//! Sans-IO bookkeeping of publishes in flight: which outbox record each MQTT packet id belongs to.
//!
//! rumqttc's `publish()` returns no packet id; the event loop later reports `Outgoing::Publish(pkid)`
//! in the order the publishes were requested, and `Incoming::PubAck(pkid)` when the broker took one.
//! This type pairs them up. Its mapping is only valid within one connection: the uplink calls
//! [`Inflight::handle_connection_lost`] at every connection boundary, and everything unacknowledged is
//! published again from the outbox after the next CONNACK.
//!
//! It also keeps when each publish went out, so the uplink can tell a PUBACK that is overdue on a live
//! connection; the caller passes the time in.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What a publish carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An outbox record, by its sequence number.
    Record(i64),
    /// The hub's retained status message.
    Status,
    /// A message another part of the hub asked for through the [`Exchange`](super::exchange::Exchange),
    /// with the token it wants back when the broker took it.
    Message(Option<u64>),
}

#[derive(Debug, Default)]
pub struct Inflight {
    /// Requested publishes that the event loop has not yet given a packet id, oldest first.
    awaiting_pkid: VecDeque<Slot>,
    /// Publishes on the wire, by packet id, with when they went out.
    by_pkid: HashMap<u16, (Slot, Instant)>,
    /// Packet ids in the order they went out; entries already acknowledged are skipped lazily.
    sent_order: VecDeque<(u16, Instant)>,
}

/// An event that does not fit the bookkeeping; the uplink drops the connection to start clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflightError {
    /// The event loop sent a publish nobody asked for.
    #[error("publish with packet id {0} was never requested")]
    UnexpectedPublish(u16),
    /// A packet id was reused while still in flight.
    #[error("packet id {0} reused while in flight")]
    PacketIdReused(u16),
}

impl Inflight {
    /// Publishes requested or on the wire; the uplink keeps this below its window.
    pub fn len(&self) -> usize {
        self.awaiting_pkid.len() + self.by_pkid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The uplink handed a publish to the client.
    pub fn handle_publish_requested(&mut self, slot: Slot) {
        self.awaiting_pkid.push_back(slot);
    }

    /// A publish request the client refused synchronously (its queue was full) never reaches the wire.
    pub fn handle_publish_not_queued(&mut self) {
        self.awaiting_pkid.pop_back();
    }

    /// The event loop wrote a QoS 1 publish with `pkid` at `now`.
    pub fn handle_publish_sent(&mut self, pkid: u16, now: Instant) -> Result<(), InflightError> {
        let slot = self
            .awaiting_pkid
            .pop_front()
            .ok_or(InflightError::UnexpectedPublish(pkid))?;
        if self.by_pkid.insert(pkid, (slot, now)).is_some() {
            return Err(InflightError::PacketIdReused(pkid));
        }
        self.sent_order.push_back((pkid, now));
        Ok(())
    }

    /// When the oldest publish still waiting for its PUBACK went out.
    pub fn oldest_sent(&mut self) -> Option<Instant> {
        while let Some(&(pkid, sent)) = self.sent_order.front() {
            // An entry whose packet id was acknowledged (and perhaps reused since) is stale.
            if self.by_pkid.get(&pkid).is_some_and(|(_, at)| *at == sent) {
                return Some(sent);
            }
            self.sent_order.pop_front();
        }
        None
    }

    /// True when the oldest publish on the wire has waited `timeout` or longer for its PUBACK at `now`.
    pub fn puback_overdue(&mut self, now: Instant, timeout: Duration) -> bool {
        self.oldest_sent()
            .is_some_and(|sent| now.saturating_duration_since(sent) >= timeout)
    }

    /// The broker acknowledged `pkid`; returns what it carried, or `None` for an ack we no longer track
    /// (one that belongs to a connection already given up).
    pub fn handle_puback(&mut self, pkid: u16) -> Option<Slot> {
        self.by_pkid.remove(&pkid).map(|(slot, _)| slot)
    }

    /// The connection ended: nothing in flight will be acknowledged on this mapping any more.
    pub fn handle_connection_lost(&mut self) {
        self.awaiting_pkid.clear();
        self.by_pkid.clear();
        self.sent_order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Step {
        Request(Slot),
        NotQueued,
        Sent(u16),
        Ack(u16, Option<Slot>),
        Lost,
        Len(usize),
        SentFails(u16, InflightError),
        /// Seconds since the start.
        At(u64),
        /// When the oldest publish awaiting its PUBACK went out, in seconds since the start.
        Oldest(Option<u64>),
        /// Whether that publish has waited [`TIMEOUT`] or longer.
        Overdue(bool),
    }
    use Step::*;

    const TIMEOUT: Duration = Duration::from_secs(30);

    #[track_caller]
    fn check(steps: &[Step]) {
        let mut inflight = Inflight::default();
        let start = Instant::now();
        let mut now = start;
        for (index, step) in steps.iter().enumerate() {
            match step {
                Request(slot) => inflight.handle_publish_requested(*slot),
                NotQueued => inflight.handle_publish_not_queued(),
                Sent(pkid) => inflight.handle_publish_sent(*pkid, now).unwrap(),
                At(seconds) => now = start + Duration::from_secs(*seconds),
                Oldest(expected) => assert_eq!(
                    inflight.oldest_sent(),
                    expected.map(|s| start + Duration::from_secs(s)),
                    "step {index}"
                ),
                Overdue(expected) => assert_eq!(
                    inflight.puback_overdue(now, TIMEOUT),
                    *expected,
                    "step {index}"
                ),
                Ack(pkid, expected) => {
                    assert_eq!(inflight.handle_puback(*pkid), *expected, "step {index}")
                }
                Lost => inflight.handle_connection_lost(),
                Len(expected) => assert_eq!(inflight.len(), *expected, "step {index}"),
                SentFails(pkid, expected) => {
                    assert_eq!(
                        inflight.handle_publish_sent(*pkid, now),
                        Err(*expected),
                        "step {index}"
                    )
                }
            }
        }
    }

    #[test]
    fn acks_map_to_records_in_request_order() {
        check(&[
            Request(Slot::Record(10)),
            Request(Slot::Record(11)),
            Len(2),
            Sent(7),
            Sent(8),
            Ack(8, Some(Slot::Record(11))),
            Ack(7, Some(Slot::Record(10))),
            Len(0),
        ]);
    }

    #[test]
    fn status_publishes_take_their_own_slot() {
        check(&[
            Request(Slot::Status),
            Request(Slot::Record(1)),
            Sent(1),
            Sent(2),
            Ack(1, Some(Slot::Status)),
        ]);
    }

    #[test]
    fn a_connection_boundary_forgets_everything() {
        check(&[
            Request(Slot::Record(1)),
            Sent(5),
            Request(Slot::Record(2)),
            Lost,
            Len(0),
            Ack(5, None),
            Request(Slot::Record(1)),
            Sent(6),
            Ack(6, Some(Slot::Record(1))),
        ]);
    }

    #[test]
    fn stale_acks_are_ignored() {
        check(&[
            Ack(3, None),
            Request(Slot::Record(1)),
            Sent(4),
            Ack(3, None),
            Len(1),
        ]);
    }

    #[test]
    fn a_refused_request_is_forgotten() {
        check(&[
            Request(Slot::Record(1)),
            Request(Slot::Record(2)),
            NotQueued,
            Len(1),
            Sent(9),
            Ack(9, Some(Slot::Record(1))),
        ]);
    }

    #[test]
    fn inconsistent_events_are_errors_not_panics() {
        check(&[SentFails(1, InflightError::UnexpectedPublish(1))]);
        check(&[
            Request(Slot::Record(1)),
            Request(Slot::Record(2)),
            Sent(1),
            SentFails(1, InflightError::PacketIdReused(1)),
        ]);
    }

    #[test]
    fn a_puback_is_overdue_when_the_oldest_publish_on_the_wire_waited_the_timeout() {
        check(&[
            Oldest(None),
            Overdue(false),
            // Requested but not yet written: nothing is waiting for a PUBACK.
            Request(Slot::Record(1)),
            At(100),
            Overdue(false),
            Sent(1),
            Request(Slot::Record(2)),
            At(110),
            Sent(2),
            Oldest(Some(100)),
            At(129),
            Overdue(false),
            At(130),
            Overdue(true),
            // The oldest is acknowledged: the next one's age counts.
            Ack(1, Some(Slot::Record(1))),
            Oldest(Some(110)),
            Overdue(false),
            // Its packet id reused by a later publish: that one is as young as it is.
            Request(Slot::Status),
            Sent(1),
            Ack(2, Some(Slot::Record(2))),
            Oldest(Some(130)),
            At(160),
            Overdue(true),
            // A connection boundary: nothing is on the wire any more.
            Lost,
            Oldest(None),
            Overdue(false),
            Request(Slot::Record(3)),
            Sent(7),
            Oldest(Some(160)),
        ]);
    }
}

//! The control socket's messages: one JSON request line in, JSON event lines out, the last `done` or `error`;
//! an event that asks a question (`passkey_requested`) is answered by one JSON reply line on the same
//! connection.

use serde::{Deserialize, Serialize};

/// The events are the Bluetooth operations' own, with `done` and `error` for the end of every request;
/// so are the replies that answer them.
pub use crate::ble::operations::{Event, Reply};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Scan {
        seconds: u64,
    },
    Pair {
        address: String,
        passkey: Option<u32>,
    },
    Unpair {
        address: String,
    },
    Devices,
}

impl Request {
    /// A request that changes what is stored: which devices are bound and bonded. A scan drives the
    /// radio for a bounded time but changes nothing stored, so it is not one.
    pub fn changes_state(&self) -> Option<(&'static str, &str)> {
        match self {
            Request::Pair { address, .. } => Some(("pair", address)),
            Request::Unpair { address } => Some(("unpair", address)),
            Request::Scan { .. } | Request::Devices => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(event: Event, line: &str) {
        assert_eq!(event.to_line(), format!("{line}\n"));
        assert_eq!(Event::from_line(line), event);
    }

    #[test]
    fn events_keep_the_wire_format_clients_know() {
        check(Event::Done, r#"{"event":"done"}"#);
        check(
            Event::Error {
                message: "no".into(),
            },
            r#"{"event":"error","message":"no"}"#,
        );
        check(
            Event::Progress {
                message: "Pairing".into(),
            },
            r#"{"event":"progress","message":"Pairing"}"#,
        );
        check(
            Event::Device {
                address: "A4:C1:38:00:00:01".into(),
                name: None,
                model: Some("Nonin 3230".into()),
                rssi: Some(-60),
                pairing_mode: None,
                advertisement_only: false,
                bound: true,
            },
            r#"{"event":"device","address":"A4:C1:38:00:00:01","name":null,"model":"Nonin 3230","rssi":-60,"pairing_mode":null,"advertisement_only":false,"bound":true}"#,
        );
        check(
            Event::Paired {
                address: "A".into(),
                bonded: false,
                message: "Bound.".into(),
            },
            r#"{"event":"paired","address":"A","bonded":false,"message":"Bound."}"#,
        );
        check(
            Event::Unpaired {
                address: "A".into(),
                was_bound: true,
                bond_removed: false,
            },
            r#"{"event":"unpaired","address":"A","was_bound":true,"bond_removed":false}"#,
        );
        check(
            Event::Devices { devices: vec![] },
            r#"{"event":"devices","devices":[]}"#,
        );
        check(
            Event::PasskeyRequested {
                address: "00:AA:01:01:00:01".into(),
            },
            r#"{"event":"passkey_requested","address":"00:AA:01:01:00:01"}"#,
        );
    }

    #[track_caller]
    fn check_reply(line: &str, expected: Option<Reply>) {
        let read: Option<Reply> = serde_json::from_str(line).ok();
        assert_eq!(read, expected);
        if let Some(reply) = expected {
            assert_eq!(serde_json::to_string(&reply).unwrap(), line);
        }
    }

    #[test]
    fn replies_keep_their_wire_format_and_anything_else_is_not_a_reply() {
        check_reply(
            r#"{"reply":"passkey","passkey":123456}"#,
            Some(Reply::Passkey { passkey: 123456 }),
        );
        check_reply(
            r#"{"reply":"passkey","passkey":0}"#,
            Some(Reply::Passkey { passkey: 0 }),
        );
        check_reply(r#"{"reply":"cancel"}"#, Some(Reply::Cancel));
        // The range is the daemon's to check: a reply that says a number is read as one.
        check_reply(
            r#"{"reply":"passkey","passkey":1000000}"#,
            Some(Reply::Passkey { passkey: 1000000 }),
        );
        check_reply(r#"{"reply":"passkey","passkey":"123456"}"#, None);
        check_reply(r#"{"reply":"passkey","passkey":-1}"#, None);
        check_reply(r#"{"reply":"passkey"}"#, None);
        check_reply(r#"{"reply":"pin","pin":"0000"}"#, None);
        check_reply(r#"{"command":"pair","address":"A"}"#, None);
        check_reply("123456", None);
        check_reply("", None);
    }

    #[test]
    fn a_line_that_is_not_an_event_ends_the_request_as_an_error_that_quotes_it() {
        let event = Event::from_line("garbage");
        assert!(event.is_last());
        assert_eq!(
            event,
            Event::Error {
                message: "garbage".into()
            }
        );
        assert!(!Event::from_line(r#"{"event":"progress","message":"m"}"#).is_last());
    }

    #[test]
    fn requests_keep_their_wire_format() {
        let request: Request =
            serde_json::from_str(r#"{"command":"pair","address":"A","passkey":123456}"#).unwrap();
        assert_eq!(
            request,
            Request::Pair {
                address: "A".into(),
                passkey: Some(123456)
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::Devices).unwrap(),
            r#"{"command":"devices"}"#
        );
    }
}

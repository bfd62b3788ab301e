//! Signed fleet commands: the envelope on `cmd/{request_id}`, its Ed25519 signature, and the rules a
//! command must meet before the hub executes it. Pure: bytes, keys and the hub's time in, a verdict out.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// The schema name every command carries.
pub const COMMAND_SCHEMA: &str = "vitalsd.command.v1";
/// How far a command's `issued_at` may lie ahead of the hub's clock: the backend's clock and the hub's
/// are both synchronised, but not to the millisecond.
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why the hub did not execute a command: the `reason` of its `failed` state. The names are a contract
/// (README, "Fleet operations").
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumIter)]
#[strum(serialize_all = "snake_case")]
pub enum Refusal {
    /// Not an envelope, or the signed bytes are not a command of this schema.
    Malformed,
    /// `key_id` names no key in `[fleet] keys`.
    UnknownKey,
    /// The signature does not verify with the named key.
    BadSignature,
    /// The command's `request_id` is not the one in its topic.
    RequestIdMismatch,
    /// The command is for another hub.
    WrongHub,
    /// `expires_at` is not after `issued_at`, or more than `fleet.max_validity` after it.
    ValidityTooLong,
    /// `issued_at` lies ahead of the hub's clock.
    NotYetValid,
    /// `expires_at` has passed.
    Expired,
    /// The hub executed or refused this `request_id` before.
    Replayed,
    /// The hub's clock could not be trusted before the command expired.
    ClockUntrusted,
    /// The hub has no command of this name.
    UnknownCommand,
    /// The arguments are not what the command takes.
    InvalidArgs,
    /// The daemon stopped while the command ran, or a later command ended a waiting `bind_device`; it is
    /// not run again.
    Interrupted,
    /// The command ran and did not succeed; the state's `detail` says why.
    ExecutionFailed,
}

impl Refusal {
    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn from_name(name: &str) -> Option<Refusal> {
        use strum::IntoEnumIterator;
        Refusal::iter().find(|refusal| refusal.name() == name)
    }
}

/// A refusal of an envelope, and what in it was wrong, for the state's `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub refusal: Refusal,
    pub detail: String,
}

/// Anything the sender wrote is quoted at most this long: the detail goes back over MQTT.
const MAX_QUOTED: usize = 100;

fn refused(refusal: Refusal, detail: impl Into<String>) -> Refused {
    let detail: String = detail.into();
    let detail = match detail.char_indices().nth(2 * MAX_QUOTED) {
        Some((end, _)) => format!("{}…", &detail[..end]),
        None => detail,
    };
    Refused { refusal, detail }
}

/// Text the sender wrote, quoted, by its beginning if it is long.
fn quoted(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Whether `id` may be a request id: it is one level of an MQTT topic (`cmd/{request_id}`).
pub fn request_id_ok(id: &str) -> bool {
    (1..=128).contains(&id.chars().count())
        && !id
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '+' | '#'))
}

/// The envelope as the backend writes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// base64url of the command's JSON bytes.
    pub payload: String,
    /// base64url of the Ed25519 signature of exactly those bytes.
    pub signature: String,
    pub key_id: String,
}

/// A command as signed. `args` is checked by the command it names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub schema: String,
    pub hub_id: String,
    pub request_id: String,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub command: String,
    #[serde(default)]
    pub args: serde_json::Value,
}

/// What the hub checks a command against.
pub struct Verifier<'a> {
    pub hub_id: &'a str,
    pub keys: &'a BTreeMap<String, VerifyingKey>,
    pub max_validity: Duration,
}

impl Verifier<'_> {
    /// Opens the envelope that arrived on `cmd/{topic_request_id}`: the key, the signature, the command's
    /// schema, its request id, its hub and its validity window. Time and replays are judged apart
    /// ([`Command::timing`], the journal), because they need the clock and the disk.
    pub fn open(&self, topic_request_id: &str, bytes: &[u8]) -> Result<Command, Refused> {
        use Refusal::*;
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|error| {
            let detail = format!("not an envelope of payload, signature and key_id: {error}");
            refused(Malformed, detail)
        })?;
        let key = self.keys.get(&envelope.key_id).ok_or_else(|| {
            let detail = format!("no key {} in [fleet] keys", quoted(&envelope.key_id));
            refused(UnknownKey, detail)
        })?;
        // The standard alphabet's '+' and '/' are the likely mistake: base64url has '-' and '_'.
        let alphabet = "base64url (the alphabet with '-' and '_', padding optional)";
        let payload = URL_SAFE_NO_PAD
            .decode(envelope.payload.trim_end_matches('='))
            .map_err(|_| refused(Malformed, format!("the payload is not {alphabet}")))?;
        let signature = URL_SAFE_NO_PAD
            .decode(envelope.signature.trim_end_matches('='))
            .ok()
            .and_then(|bytes| Signature::from_slice(&bytes).ok())
            .ok_or_else(|| {
                let detail = format!("the signature is not 64 bytes of {alphabet}");
                refused(BadSignature, detail)
            })?;
        key.verify_strict(&payload, &signature).map_err(|_| {
            let detail = format!(
                "the signature does not verify with key {} over the payload's bytes",
                quoted(&envelope.key_id)
            );
            refused(BadSignature, detail)
        })?;
        let command: Command = serde_json::from_slice(&payload).map_err(|error| {
            refused(
                Malformed,
                format!("the payload is not a {COMMAND_SCHEMA}: {error}"),
            )
        })?;
        if command.schema != COMMAND_SCHEMA {
            let detail = format!("schema {}, not {COMMAND_SCHEMA:?}", quoted(&command.schema));
            return Err(refused(Malformed, detail));
        }
        if !request_id_ok(&command.request_id) {
            let detail = "request_id must be 1 to 128 characters without control characters, '/', '+' or '#'";
            return Err(refused(Malformed, detail));
        }
        if command.request_id != topic_request_id {
            let detail = format!(
                "request_id {} is not the topic's {}",
                quoted(&command.request_id),
                quoted(topic_request_id)
            );
            return Err(refused(RequestIdMismatch, detail));
        }
        if command.hub_id != self.hub_id {
            let detail = format!("for hub {}, not {:?}", quoted(&command.hub_id), self.hub_id);
            return Err(refused(WrongHub, detail));
        }
        let validity = (command.expires_at - command.issued_at).to_std();
        match validity {
            Ok(validity) if !validity.is_zero() && validity <= self.max_validity => Ok(command),
            Ok(validity) if !validity.is_zero() => Err(refused(
                ValidityTooLong,
                format!(
                    "valid for {} s; the hub takes at most {} s (fleet.max_validity)",
                    validity.as_secs(),
                    self.max_validity.as_secs()
                ),
            )),
            _ => Err(refused(
                ValidityTooLong,
                "expires_at is not after issued_at",
            )),
        }
    }
}

/// Whether a verified command may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timing {
    Ready,
    /// The hub's clock is not trusted: the command waits for it.
    WaitForClock,
    Refused(Refusal),
}

impl Command {
    /// Judges the command's window on the hub's clock: `now` is `None` while that clock is not trusted.
    pub fn timing(&self, now: Option<DateTime<Utc>>) -> Timing {
        let Some(now) = now else {
            return Timing::WaitForClock;
        };
        let skew = chrono::TimeDelta::from_std(CLOCK_SKEW).unwrap_or_default();
        if now + skew < self.issued_at {
            Timing::Refused(Refusal::NotYetValid)
        } else if now >= self.expires_at {
            Timing::Refused(Refusal::Expired)
        } else {
            Timing::Ready
        }
    }

    /// The longest the hub waits for a trusted clock, measured on the boot clock from the command's
    /// arrival: its whole validity, since an untrusted clock cannot say how much of it is left.
    pub fn longest_wait(&self) -> Duration {
        (self.expires_at - self.issued_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// Signs `command` into an envelope, as `vitalsd fleet sign` does.
pub fn seal(command: &Command, key: &SigningKey, key_id: &str) -> Envelope {
    let payload = serde_json::to_vec(command).expect("a command serialises");
    let signature = key.sign(&payload);
    Envelope {
        payload: URL_SAFE_NO_PAD.encode(&payload),
        signature: URL_SAFE_NO_PAD.encode(signature.to_bytes()),
        key_id: key_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HUB: &str = "hub-0001";
    const HOUR: Duration = Duration::from_secs(3600);

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn command(request_id: &str, hub_id: &str, issued: &str, expires: &str) -> Command {
        Command {
            schema: COMMAND_SCHEMA.to_string(),
            hub_id: hub_id.to_string(),
            request_id: request_id.to_string(),
            issued_at: at(issued),
            expires_at: at(expires),
            command: "restart".to_string(),
            args: serde_json::json!({}),
        }
    }

    fn sealed(command: &Command, seed: u8, key_id: &str) -> Vec<u8> {
        serde_json::to_vec(&seal(command, &key(seed), key_id)).unwrap()
    }

    fn check(topic_id: &str, bytes: &[u8], expected: Result<&str, Refusal>) {
        let keys = BTreeMap::from([("ops".to_string(), key(1).verifying_key())]);
        let verifier = Verifier {
            hub_id: HUB,
            keys: &keys,
            max_validity: 7 * 24 * HOUR,
        };
        let found = verifier.open(topic_id, bytes);
        assert_eq!(
            found
                .as_ref()
                .map(|c| c.request_id.as_str())
                .map_err(|r| r.refusal),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }

    #[test]
    fn envelopes_are_opened_only_when_every_rule_holds() {
        let good = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z");
        let other_hub = command(
            "r1",
            "hub-0002",
            "2026-12-06T10:00:00Z",
            "2026-12-06T11:00:00Z",
        );
        let week_and_a_second = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-13T10:00:01Z");
        let backwards = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T09:00:00Z");
        let mut wrong_schema = good.clone();
        wrong_schema.schema = "vitalsd.command.v2".to_string();
        let mut tampered: Envelope = serde_json::from_slice(&sealed(&good, 1, "ops")).unwrap();
        tampered.payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&command(
                "r1",
                HUB,
                "2026-12-06T10:00:00Z",
                "2026-12-07T11:00:00Z",
            ))
            .unwrap(),
        );
        let tampered = serde_json::to_vec(&tampered).unwrap();
        check("r1", &sealed(&good, 1, "ops"), Ok("r1"));
        check("r1", &sealed(&good, 2, "ops"), Err(Refusal::BadSignature));
        check("r1", &tampered, Err(Refusal::BadSignature));
        check("r1", &sealed(&good, 1, "lab"), Err(Refusal::UnknownKey));
        check(
            "r2",
            &sealed(&good, 1, "ops"),
            Err(Refusal::RequestIdMismatch),
        );
        check("r1", &sealed(&other_hub, 1, "ops"), Err(Refusal::WrongHub));
        check(
            "r1",
            &sealed(&week_and_a_second, 1, "ops"),
            Err(Refusal::ValidityTooLong),
        );
        check(
            "r1",
            &sealed(&backwards, 1, "ops"),
            Err(Refusal::ValidityTooLong),
        );
        check(
            "r1",
            &sealed(&wrong_schema, 1, "ops"),
            Err(Refusal::Malformed),
        );
        let long_id = "r".repeat(129);
        let long = command(
            &long_id,
            HUB,
            "2026-12-06T10:00:00Z",
            "2026-12-06T11:00:00Z",
        );
        check(&long_id, &sealed(&long, 1, "ops"), Err(Refusal::Malformed));
        let control = command("r\n1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z");
        check("r\n1", &sealed(&control, 1, "ops"), Err(Refusal::Malformed));
        check("r1", b"", Err(Refusal::Malformed));
        check(
            "r1",
            b"{\"payload\":\"e30\",\"signature\":\"AA\"}",
            Err(Refusal::Malformed),
        );
        check(
            "r1",
            b"{\"payload\":\"e30\",\"signature\":\"AA\",\"key_id\":\"ops\"}",
            Err(Refusal::BadSignature),
        );
        check(
            "r1",
            b"{\"payload\":\"!!\",\"signature\":\"AA\",\"key_id\":\"ops\"}",
            Err(Refusal::Malformed),
        );
    }

    #[test]
    fn a_refused_envelope_says_what_in_it_was_wrong() {
        let keys = BTreeMap::from([("ops".to_string(), key(1).verifying_key())]);
        let verifier = Verifier {
            hub_id: HUB,
            keys: &keys,
            max_validity: 7 * 24 * HOUR,
        };
        let detail = |bytes: &[u8]| verifier.open("r1", bytes).unwrap_err().detail;
        let signed = |payload: &[u8]| {
            let envelope = Envelope {
                payload: URL_SAFE_NO_PAD.encode(payload),
                signature: URL_SAFE_NO_PAD.encode(key(1).sign(payload).to_bytes()),
                key_id: "ops".to_string(),
            };
            serde_json::to_vec(&envelope).unwrap()
        };
        let good = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z");
        let mut standard: Envelope = serde_json::from_slice(&sealed(&good, 1, "ops")).unwrap();
        standard.signature.replace_range(..1, "+");
        let mut v2 = good.clone();
        v2.schema = "vitalsd.command.v2".to_string();
        let week_and_a_second = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-13T10:00:01Z");
        let backwards = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T09:00:00Z");
        let duplicate = br#"{"schema":"vitalsd.command.v1","hub_id":"hub-0001","hub_id":"hub-0002","request_id":"r1","issued_at":"2026-12-06T10:00:00Z","expires_at":"2026-12-06T11:00:00Z","command":"restart"}"#;
        let table: [(Vec<u8>, &str); 8] = [
            (b"42".to_vec(), "not an envelope of payload, signature and key_id: invalid type: integer"),
            (sealed(&good, 1, "lab"), "no key \"lab\" in [fleet] keys"),
            (serde_json::to_vec(&standard).unwrap(), "the signature is not 64 bytes of base64url (the alphabet with '-' and '_', padding optional)"),
            (sealed(&good, 2, "ops"), "the signature does not verify with key \"ops\" over the payload's bytes"),
            (signed(duplicate), "the payload is not a vitalsd.command.v1: duplicate field `hub_id`"),
            (sealed(&v2, 1, "ops"), "schema \"vitalsd.command.v2\", not \"vitalsd.command.v1\""),
            (sealed(&week_and_a_second, 1, "ops"), "valid for 604801 s; the hub takes at most 604800 s (fleet.max_validity)"),
            (sealed(&backwards, 1, "ops"), "expires_at is not after issued_at"),
        ];
        for (bytes, expected) in table {
            let found = detail(&bytes);
            assert!(found.starts_with(expected), "{found}");
        }
        // What the sender wrote comes back by its beginning only.
        let long = detail(&sealed(&good, 1, &"k".repeat(10_000)));
        assert!(long.len() < 300, "{long}");
    }

    #[test]
    fn a_command_runs_only_inside_its_window_on_a_trusted_clock() {
        let command = command("r1", HUB, "2026-12-06T10:00:00Z", "2026-12-06T11:00:00Z");
        // (the hub's trusted time, or None, and the verdict)
        let table = [
            (None, Timing::WaitForClock),
            (
                Some("2026-12-06T09:54:59Z"),
                Timing::Refused(Refusal::NotYetValid),
            ),
            (Some("2026-12-06T09:55:00Z"), Timing::Ready),
            (Some("2026-12-06T10:59:59Z"), Timing::Ready),
            (
                Some("2026-12-06T11:00:00Z"),
                Timing::Refused(Refusal::Expired),
            ),
        ];
        for (now, expected) in table {
            assert_eq!(command.timing(now.map(at)), expected, "{now:?}");
        }
        assert_eq!(command.longest_wait(), HOUR);
    }

    #[test]
    fn refusal_names_are_the_documented_ones() {
        let names: Vec<&str> = <Refusal as strum::IntoEnumIterator>::iter()
            .map(Refusal::name)
            .collect();
        assert_eq!(
            names,
            [
                "malformed",
                "unknown_key",
                "bad_signature",
                "request_id_mismatch",
                "wrong_hub",
                "validity_too_long",
                "not_yet_valid",
                "expired",
                "replayed",
                "clock_untrusted",
                "unknown_command",
                "invalid_args",
                "interrupted",
                "execution_failed",
            ]
        );
        assert_eq!(Refusal::from_name("replayed"), Some(Refusal::Replayed));
    }
}

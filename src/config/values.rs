//! What one value of the configuration may be: the `deserialize_with` functions of `Config`'s fields, which
//! check a value as serde reads it, and the checks behind them. A refusal's message quotes the bad value but
//! never repeats a secret.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{io_message, AdminGroup, BrokerUrl, MqttProtocol, PortLocation};
use crate::clock::ClockPolicy;
use crate::decode::{Parity, Protocol, Transport};

/// Quoted values longer than this are shown by their beginning only.
const MAX_QUOTED_CHARS: usize = 200;
/// Longer text in a name, prefix or filter is a damaged or generated file, not a setting; it would also
/// travel in every MQTT packet or log line that uses it.
const MAX_TEXT_CHARS: usize = 256;
/// Linux's `PATH_MAX`: a longer path cannot be opened.
const MAX_PATH_BYTES: usize = 4096;
/// The longest DNS name.
const MAX_HOST_CHARS: usize = 253;
const BAD_PORT: &str = "bad port: expected a number from 1 to 65535";
const BAD_HOST: &str =
    "invalid host: use a name of letters, digits, '-', '.' and '_', or an IP address";

/// Declares `deserialize_with` functions, `name: Read => Holds = check`: serde reads a `Read`, which `check`
/// turns into what the field holds (or an `Option` of it) or the message for its key.
macro_rules! checked {
    ($($name:ident: $read:ty => $holds:ty = $check:expr;)*) => {$(
        pub(super) fn $name<'de, D: Deserializer<'de>, T: From<$holds>>(value: D) -> Result<T, D::Error> {
            let check: fn($read) -> Result<$holds, String> = $check;
            check(<$read>::deserialize(value)?).map(T::from).map_err(D::Error::custom)
        }
    )*};
}

checked! {
    hub_id: String => String = |id| {
        let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
        // Lowercase because it goes into MQTT topics, where case matters and technicians read it aloud.
        let valid = (1..=64).contains(&id.len()) && id.bytes().all(allowed);
        ensure(valid, id, "is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'")
    };
    device_id: String => String = |id| {
        let problem = "is not a valid device id: use 1 to 128 characters without spaces, control \
                       characters, '/' or '|'";
        ensure(device_id_ok(&id), id, problem)
    };
    absolute: String => PathBuf = absolute_path;
    port_path: String => PortLocation = |path| absolute_path(path).map(PortLocation::Path);
    readable: String => PathBuf = |path| {
        let file = absolute_path(path)?;
        // Reading one byte also catches a directory, which opens fine.
        let read = std::fs::File::open(&file).and_then(|mut opened| opened.read(&mut [0u8; 1]));
        read.map_err(|error| format!("cannot read {}: {}", shown(&file), io_message(&error)))?;
        Ok(file)
    };
    non_empty: String => String = non_empty_text;
    credential: String => String = |name| {
        // A file name in $CREDENTIALS_DIRECTORY, so at most NAME_MAX bytes.
        let valid = !matches!(name.as_str(), "" | "." | "..") && !name.contains('/') && name.len() <= 255;
        let problem = "is not a credential name: use the name given to LoadCredential= (no '/')";
        ensure(valid, name, problem)
    };
    adapter: String => String = |name| {
        // The kernel's interface names are at most 15 bytes.
        let valid = non_empty_text(name.clone())?.chars().all(|c| c.is_ascii_alphanumeric());
        ensure(valid && name.len() <= 15, name, "is not an adapter name such as \"hci0\"")
    };
    group: String => AdminGroup = |name| match nix::unistd::Group::from_name(&non_empty_text(name.clone())?) {
        Ok(Some(group)) => Ok(AdminGroup { gid: group.gid.as_raw(), name }),
        Ok(None) => Err(format!(
            "no group {} on this system (create it with groupadd, or leave the key out)",
            q(&name)
        )),
        Err(error) => Err(format!("cannot look up group {}: {error}", q(&name))),
    };
    log_level: String => String = |level| {
        // A filter may name many modules, so it gets more room than a name.
        if level.is_empty() {
            return Err("must not be empty".to_string());
        }
        let level = at_most(level, 4 * MAX_TEXT_CHARS)?;
        let invalid = |error| format!("invalid log filter {}: {error}", q(&level));
        tracing_subscriber::EnvFilter::try_new(&level).map_err(invalid)?;
        Ok(level)
    };
    serial_protocol: String => Protocol = |name| {
        let serial = |protocol: &Protocol| protocol.transport() == Transport::Serial;
        let known: Vec<&str> = Protocol::ALL.iter().filter(|p| serial(p)).map(|p| p.name()).collect();
        let known = known.join(", ");
        match Protocol::from_name(&name) {
            Some(protocol) if serial(&protocol) => Ok(protocol),
            Some(_) => Err(format!("{} is not a serial protocol (serial: {known})", q(&name))),
            None => Err(format!("unknown protocol {} (known: {known})", q(&name))),
        }
    };
    topic_prefix: String => String = topic_prefix_text;
    broker_url: String => BrokerUrl = |url| parse_broker_url(&url);
    spot_seconds: f64 => Duration = |seconds| match seconds > 0.0 && seconds <= 86_400.0 {
        // More than a day is taken for a unit mistake (milliseconds as seconds); NaN fails both comparisons.
        true => Ok(Duration::from_secs_f64(seconds)),
        false => Err(format!("must be more than 0 and at most 86400 seconds, found {seconds}")),
    };
    clock: String => ClockPolicy = |clock| choice(clock, &[
        ("ntp", ClockPolicy::Ntp), ("trusted", ClockPolicy::Trusted),
    ], "is not a clock policy: use \"ntp\" (trust the clock only while the kernel says it is synchronised) \
        or \"trusted\" (a real-time clock or other source you vouch for)");
    mqtt_protocol: String => MqttProtocol = |version| choice(version, &[
        ("5", MqttProtocol::V5), ("3.1.1", MqttProtocol::V311),
    ], "is not a supported MQTT version: use \"5\" (the default) or \"3.1.1\" (for brokers without \
        MQTT 5; it cannot tell a refused reading from a delivered one)");
    parity: String => Parity = |parity| choice(parity, &[
        ("none", Parity::None), ("odd", Parity::Odd), ("even", Parity::Even),
    ], "is not a parity: use \"none\", \"odd\" or \"even\"");
}

/// An integer in `MIN..=MAX`, as the field's type `T` (or an `Option` of it, `O`).
pub(super) fn int<'de, D, T, O, const MIN: i64, const MAX: i64>(value: D) -> Result<O, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64>,
    O: From<T>,
{
    let number = i64::deserialize(value)?;
    let in_range = (MIN..=MAX)
        .contains(&number)
        .then(|| T::try_from(number).ok());
    let message = || D::Error::custom(format!("must be between {MIN} and {MAX}, found {number}"));
    in_range.flatten().map(O::from).ok_or_else(message)
}

pub(super) fn seconds<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
    value: D,
) -> Result<Duration, D::Error> {
    int::<D, u64, u64, MIN, MAX>(value).map(Duration::from_secs)
}

pub(super) fn millis<'de, D: Deserializer<'de>, const MIN: i64, const MAX: i64>(
    value: D,
) -> Result<Duration, D::Error> {
    int::<D, u64, u64, MIN, MAX>(value).map(Duration::from_millis)
}

/// `outbox.fold_log_seconds`, where 0 leaves folding to SQLite.
pub(super) fn fold_after<'de, D: Deserializer<'de>>(
    value: D,
) -> Result<Option<Duration>, D::Error> {
    seconds::<D, 0, 86_400>(value).map(|after| Some(after).filter(|after| !after.is_zero()))
}

/// Device ids go into payloads and reading ids (joined with `|`), and may go into topics later.
pub(super) fn device_id_ok(id: &str) -> bool {
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || c == '/' || c == '|';
    (1..=128).contains(&id.chars().count()) && !id.chars().any(forbidden)
}

/// A value quoted for a message; a long one by its beginning and length, so a bad value of megabytes is
/// not echoed back whole.
pub(super) fn q(text: &str) -> String {
    let length = text.chars().count();
    if length <= MAX_QUOTED_CHARS {
        return format!("{text:?}");
    }
    let prefix: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    let quoted = format!("{prefix:?}");
    format!("{}…\" ({length} characters)", &quoted[..quoted.len() - 1])
}

/// A path for a message: by its beginning and length if it is long, like a quoted value.
pub(super) fn shown(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let length = text.chars().count();
    match length > MAX_QUOTED_CHARS {
        true => format!(
            "{}… ({length} characters)",
            text.chars().take(MAX_QUOTED_CHARS).collect::<String>()
        ),
        false => text,
    }
}

/// `value` if it is valid, else an error that quotes it before `problem`.
fn ensure(valid: bool, value: String, problem: &str) -> Result<String, String> {
    match valid {
        true => Ok(value),
        false => Err(format!("{} {problem}", q(&value))),
    }
}

/// The meaning of one of a key's few possible values.
fn choice<T: Copy>(value: String, choices: &[(&str, T)], problem: &str) -> Result<T, String> {
    let found = choices.iter().find(|(name, _)| *name == value);
    found
        .map(|(_, meaning)| *meaning)
        .ok_or_else(|| format!("{} {problem}", q(&value)))
}

fn non_empty_text(text: String) -> Result<String, String> {
    match text.is_empty() {
        true => Err("must not be empty".to_string()),
        false => at_most(text, MAX_TEXT_CHARS),
    }
}

/// `text` if it has at most `max` characters.
fn at_most(text: String, max: usize) -> Result<String, String> {
    match text.chars().count() <= max {
        true => Ok(text),
        false => Err(format!(
            "must be at most {max} characters, found {}",
            q(&text)
        )),
    }
}

fn absolute_path(text: String) -> Result<PathBuf, String> {
    match (text.starts_with('/'), text.len() < MAX_PATH_BYTES) {
        (true, true) => Ok(PathBuf::from(text)),
        (true, false) => Err(format!(
            "must be shorter than {MAX_PATH_BYTES} bytes, found {}",
            q(&text)
        )),
        (false, _) => Err(format!("must be an absolute path, found {}", q(&text))),
    }
}

fn topic_prefix_text(prefix: String) -> Result<String, String> {
    let problem = if prefix.is_empty() || prefix.chars().count() > MAX_TEXT_CHARS {
        return non_empty_text(prefix);
    } else if prefix.contains('\0') {
        return Err("must not contain a NUL character".to_string());
    } else if prefix.contains(['+', '#']) {
        "must not contain the MQTT wildcards '+' or '#'"
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        "must not start or end with '/'"
    } else if prefix.contains("//") {
        "must not contain an empty level"
    } else if prefix.starts_with('$') {
        "must not start with '$' (reserved for the broker)"
    } else {
        return Ok(prefix);
    };
    Err(format!("{problem}, found {}", q(&prefix)))
}

/// Parses `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`, with `[IPv6]` hosts.
///
/// Messages never repeat the url or a part of it after the host: it might hold a password.
fn parse_broker_url(text: &str) -> Result<BrokerUrl, String> {
    use url::{Host, ParseError};
    // Without "//", "broker:1883" is a url of scheme "broker".
    let Some((_, rest)) = text.split_once("://") else {
        return Err("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]".to_string());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let unbracketed = authority.matches(':').count() > 1 && !authority.contains(['[', '@']);
    let url = url::Url::parse(text).map_err(|error| match error {
        ParseError::EmptyHost | ParseError::InvalidPort if unbracketed => {
            "an IPv6 address must be in brackets, as in mqtt://[::1]:1883".to_string()
        }
        ParseError::EmptyHost => "missing host".to_string(),
        ParseError::InvalidPort => BAD_PORT.to_string(),
        ParseError::InvalidIpv6Address => "invalid IPv6 address in brackets".to_string(),
        ParseError::InvalidDomainCharacter => BAD_HOST.to_string(),
        other => format!("not a url: {other}"),
    })?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => return Err(format!("unsupported scheme {}", q(other))),
    };
    let host = match url.host() {
        _ if !url.username().is_empty() || url.password().is_some() => {
            let use_keys = "use mqtt.username and mqtt.password_file or mqtt.password_credential";
            return Err(format!(
                "must not contain a user name or password: {use_keys}"
            ));
        }
        _ if !matches!(url.path(), "" | "/")
            || url.query().is_some()
            || url.fragment().is_some() =>
        {
            return Err(
                "unexpected path, query or fragment: the url names only the broker".to_string(),
            );
        }
        None => return Err("missing host".to_string()),
        Some(Host::Ipv6(address)) => address.to_string(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Domain(name)) => name.to_string(),
    };
    if host.chars().count() > MAX_HOST_CHARS {
        return Err(format!(
            "host longer than {MAX_HOST_CHARS} characters, the longest DNS name"
        ));
    }
    // A url may hold characters in its host that no DNS name or address has.
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(BAD_HOST.to_string());
    }
    match url.port().unwrap_or(default_port) {
        0 => Err(BAD_PORT.to_string()),
        port => Ok(BrokerUrl { host, port, tls }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        let hub_id = |id: &str| hub_id::<_, String>(&figment::value::Value::from(id)).is_ok();
        for id in ["a", "hub-0001", "ward_3", &"x".repeat(64)] {
            assert!(hub_id(id), "{id:?} should be valid");
        }
        for id in ["", "Hub", "hub 1", "hub/1", "hub+", "hüb", &"x".repeat(65)] {
            assert!(!hub_id(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn device_ids() {
        for id in [
            "serial:usb-Nonin_Medical_Inc._9560-if00-port0",
            "a",
            "cuff#1+x",
            &"é".repeat(128),
        ] {
            assert!(device_id_ok(id), "{id:?} should be valid");
        }
        for id in ["", "a b", "a/b", "a|b", "a\tb", &"x".repeat(129)] {
            assert!(!device_id_ok(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn broker_url_errors_never_repeat_a_password() {
        for url in [
            "mqtts://hub:hunter2@broker:8883",
            "hub:hunter2@broker",
            "mqtt://hub:hunter2@broker:x",
            "mqtt://hub:hunter2@[::1",
            "mqtt://broker/hunter2",
        ] {
            let message = parse_broker_url(url).expect_err("a bad url");
            assert!(!message.contains("hunter2"), "{message}");
        }
    }

    #[test]
    fn broker_urls_parse_to_host_port_and_tls() {
        let cases = [
            ("mqtt://localhost", "localhost", 1883, false),
            ("mqtt://10.0.0.2:1884", "10.0.0.2", 1884, false),
            (
                "mqtts://broker.example.org",
                "broker.example.org",
                8883,
                true,
            ),
            (
                "mqtts://broker.example.org:443/",
                "broker.example.org",
                443,
                true,
            ),
            ("mqtt://[2001:db8::1]:1883", "2001:db8::1", 1883, false),
            ("mqtt://a_b.example:01883", "a_b.example", 1883, false),
        ];
        for (url, host, port, tls) in cases {
            let host = host.to_string();
            assert_eq!(
                parse_broker_url(url),
                Ok(BrokerUrl { host, port, tls }),
                "for {url}"
            );
        }
        assert_eq!(
            parse_broker_url("mqtt://broker:+1883"),
            Err("bad port: expected a number from 1 to 65535".to_string())
        );
    }
}

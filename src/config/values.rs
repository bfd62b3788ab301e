//! What one value of the configuration may be: the `deserialize_with` functions of `Config`'s fields, which
//! check a value as serde reads it. A refusal's message quotes the bad value but never repeats a secret.

use std::io::Read;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use super::{io_message, AdminGroup, BrokerUrl, FleetKey, MqttProtocol, PortLocation, UsbMatch};
use crate::clock::ClockPolicy;
use crate::decode::{Parity, Protocol, Transport};

/// Quoted values longer than this are shown by their beginning only.
const MAX_QUOTED_CHARS: usize = 200;
/// Longer text in a name, prefix or filter is a damaged or generated file, not a setting; it would also
/// travel in every MQTT packet or log line that uses it.
const MAX_TEXT_CHARS: usize = 256;
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
        ensure(hub_id_ok(&id), id, "is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'")
    };
    device_id: String => String = |id| {
        let problem = "is not a valid device id: use 1 to 128 characters without spaces, control \
                       characters, '/' or '|'";
        ensure(device_id_ok(&id), id, problem)
    };
    absolute: String => PathBuf = absolute_path;
    port_path: String => PortLocation = |path| absolute_path(path).map(PortLocation::Path);
    // Reading one byte also catches a directory, which opens fine.
    readable: String => PathBuf = |path| {
        let file = absolute_path(path)?;
        let read = std::fs::File::open(&file).and_then(|mut opened| opened.read(&mut [0u8; 1]));
        read.map_err(|error| format!("cannot read {}: {}", shown(&file), io_message(&error)))?;
        Ok(file)
    };
    non_empty: String => String = |name| text(name, MAX_TEXT_CHARS);
    // An identifier system is a URI (`urn:oid:...`, `https://...`): a scheme, a colon and more.
    uri: String => String = |uri| {
        let uri = text(uri, MAX_TEXT_CHARS)?;
        let scheme = uri.split_once(':').map(|(scheme, rest)| (scheme, rest.is_empty()));
        let valid = matches!(scheme, Some((scheme, false)) if scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            && !uri.contains(char::is_whitespace);
        ensure(valid, uri, "is not a URI: use an identifier system such as \"urn:oid:1.2.208.176.1.2\" or \"https://example.org/patients\"")
    };
    formats: Vec<String> => Vec<super::OutputFormat> = |names| {
        let formats = each_once(names, |name| name.parse().ok(), "is not a format: use \"reading.v1\" and/or \"fhir\"")?;
        match formats.is_empty() {
            true => Err("is empty: name at least one format, such as [\"reading.v1\"]".to_string()),
            false => Ok(formats),
        }
    };
    code_sets: Vec<String> => Vec<&'static crate::model::fhir_codes::CodeSet> = |names| {
        let known = crate::model::fhir_codes::names().join("\", \"");
        each_once(names, crate::model::fhir_codes::find, &format!("is not a code set: the hub has \"{known}\""))
    };
    // A file name in $CREDENTIALS_DIRECTORY, so at most NAME_MAX bytes.
    credential: String => String = |name| {
        let valid = !matches!(name.as_str(), "" | "." | "..") && !name.contains('/') && name.len() <= 255;
        ensure(valid, name, "is not a credential name: use the name given to LoadCredential= (no '/')")
    };
    // The kernel's interface names are at most 15 bytes.
    adapter: String => String = |name| {
        let valid = text(name.clone(), MAX_TEXT_CHARS)?.chars().all(|c| c.is_ascii_alphanumeric());
        ensure(valid && name.len() <= 15, name, "is not an adapter name such as \"hci0\"")
    };
    group: String => AdminGroup = |name| {
        let (quoted, name) = (q(&name), text(name, MAX_TEXT_CHARS)?);
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(group)) => Ok(AdminGroup { gid: group.gid.as_raw(), name }),
            Ok(None) => Err(format!("no group {quoted} on this system (create it with groupadd, or leave \
                                     the key out)")),
            Err(error) => Err(format!("cannot look up group {quoted}: {error}")),
        }
    };
    // A filter may name many modules, so it gets more room than a name.
    log_level: String => String = |level| {
        let level = text(level, 4 * MAX_TEXT_CHARS)?;
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
    topic_prefix: String => String = |prefix| {
        let prefix = text(prefix, MAX_TEXT_CHARS)?;
        let problem = if prefix.contains('\0') {
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
    };
    broker_url: String => BrokerUrl = |url| parse_broker_url(&url);
    // More than a day is taken for a unit mistake (milliseconds as seconds); NaN fails both comparisons.
    spot_seconds: f64 => Duration = |seconds| match seconds > 0.0 && seconds <= 86_400.0 {
        true => Ok(Duration::from_secs_f64(seconds)),
        false => Err(format!("must be more than 0 and at most 86400 seconds, found {seconds}")),
    };
    keep_alive: i64 => Duration = |s| range(s, 5, 3600).map(Duration::from_secs);
    reconnect_min: i64 => Duration = |ms| range(ms, 1, 3_600_000).map(Duration::from_millis);
    reconnect_max: i64 => Duration = |s| range(s, 1, 86_400).map(Duration::from_secs);
    window: i64 => usize = |count| range(count, 1, 256).map(|count| count as usize);
    status_interval: i64 => Duration = |s| range(s, 10, 86_400).map(Duration::from_secs);
    // A hub's disk holds tens of millions of readings at most; more is a typing mistake.
    max_pending: i64 => u64 = |count| range(count, 1, 100_000_000);
    retention_days: i64 => u32 = |days| range(days, 1, 36_500).map(|days| days as u32);
    // 0 leaves folding to SQLite.
    fold_after: i64 => Option<Duration> = |s| {
        Ok(Some(range(s, 0, 86_400)?).filter(|s| *s > 0).map(Duration::from_secs))
    };
    baud_rate: i64 => u32 = |rate| range(rate, 300, 4_000_000).map(|rate| rate as u32);
    usb_id: i64 => u16 = |id| range(id, 0, 0xFFFF).map(|id| id as u16);
    usb: UsbMatch => PortLocation = |usb| {
        Ok(PortLocation::Usb { vid: usb.vid, pid: usb.pid, serial_number: usb.serial })
    };
    clock: String => ClockPolicy = |clock| choice(clock, "is not a clock policy: use \"ntp\" (trust the \
        clock only while the kernel says it is synchronised) or \"trusted\" (a real-time clock or other source \
        you vouch for)");
    mqtt_protocol: String => MqttProtocol = |version| choice(version, "is not a supported MQTT version: use \
        \"5\" (the default) or \"3.1.1\" (for brokers without MQTT 5; it cannot tell a refused reading from a \
        delivered one)");
    // A minute to a year: shorter is a unit mistake, longer is never.
    fleet_duration: String => Duration = |text| {
        let shown = q(&text);
        let duration = humantime::parse_duration(text.trim())
            .map_err(|error| format!("is not a duration such as \"72h\" or \"7days\": {error}, found {shown}"))?;
        match (60..=365 * 86_400).contains(&duration.as_secs()) {
            true => Ok(duration),
            false => Err(format!("must be between 1 minute and 365 days, found {shown}")),
        }
    };
    fleet_key: String => FleetKey = |path| {
        use ed25519_dalek::pkcs8::DecodePublicKey as _;
        let path = absolute_path(path)?;
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {}", shown(&path), io_message(&error)))?;
        // The parser's own words name what it expected, not what it found (an RSA key is "unsupported
        // algorithm OID: 1.3.101.112", Ed25519's), so they are left out.
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&text).map_err(|_| {
            format!("{} is not an Ed25519 public key in PEM (openssl pkey -pubout)", shown(&path))
        })?;
        Ok(FleetKey { path, key })
    };
    parity: String => Parity = |parity| choice(parity, "is not a parity: use \"none\", \"odd\" or \"even\"");
}

/// Hub ids are lowercase because they go into MQTT topics, where case matters and technicians read them
/// aloud.
pub(crate) fn hub_id_ok(id: &str) -> bool {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    (1..=64).contains(&id.len()) && id.bytes().all(allowed)
}

/// Device ids go into payloads and reading ids (joined with `|`), and may go into topics later.
pub(super) fn device_id_ok(id: &str) -> bool {
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || c == '/' || c == '|';
    (1..=128).contains(&id.chars().count()) && !id.chars().any(forbidden)
}

/// A value quoted for a message; a long one by its beginning and length, so a bad value of megabytes is
/// not echoed back whole.
pub(super) fn q(text: &str) -> String {
    let (prefix, length) = beginning(text);
    let quoted = format!("{prefix:?}");
    match length {
        Some(length) => format!("{}…\" ({length} characters)", &quoted[..quoted.len() - 1]),
        None => quoted,
    }
}

/// A path for a message: by its beginning and length if it is long, like a quoted value.
pub(super) fn shown(path: &std::path::Path) -> String {
    match beginning(&path.display().to_string()) {
        (prefix, Some(length)) => format!("{prefix}… ({length} characters)"),
        (text, None) => text,
    }
}

/// The first `MAX_QUOTED_CHARS` characters of `text`, and its length if that is not all of it.
fn beginning(text: &str) -> (String, Option<usize>) {
    let length = text.chars().count();
    let prefix = text.chars().take(MAX_QUOTED_CHARS).collect();
    (
        prefix,
        Some(length).filter(|length| *length > MAX_QUOTED_CHARS),
    )
}

/// The items a list of names names, each at most once, in the list's order.
fn each_once<T>(
    names: Vec<String>,
    find: impl Fn(&str) -> Option<T>,
    unknown: &str,
) -> Result<Vec<T>, String> {
    let mut found = Vec::new();
    for (index, name) in names.iter().enumerate() {
        found.push(find(name).ok_or_else(|| format!("{} {unknown}", q(name)))?);
        if names[..index].contains(name) {
            return Err(format!("{} is listed twice", q(name)));
        }
    }
    Ok(found)
}

/// `value` if it is valid, else an error that quotes it before `problem`.
fn ensure(valid: bool, value: String, problem: &str) -> Result<String, String> {
    match valid {
        true => Ok(value),
        false => Err(format!("{} {problem}", q(&value))),
    }
}

/// The meaning of one of a key's few possible values, which the type names.
fn choice<T: FromStr>(value: String, problem: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{} {problem}", q(&value)))
}

/// Some text of at most `max` characters.
fn text(text: String, max: usize) -> Result<String, String> {
    match text.chars().count() {
        0 => Err("must not be empty".to_string()),
        length if length > max => Err(format!(
            "must be at most {max} characters, found {}",
            q(&text)
        )),
        _ => Ok(text),
    }
}

/// `number` if it is in `min..=max`.
fn range(number: i64, min: i64, max: i64) -> Result<u64, String> {
    match (min..=max).contains(&number) {
        // Every range starts at 0 or above.
        true => Ok(number.unsigned_abs()),
        false => Err(format!("must be between {min} and {max}, found {number}")),
    }
}

/// A path the daemon can open: absolute, and shorter than Linux's `PATH_MAX`.
fn absolute_path(text: String) -> Result<PathBuf, String> {
    match (text.starts_with('/'), text.len() < 4096) {
        (true, true) => Ok(PathBuf::from(text)),
        (true, false) => Err(format!(
            "must be shorter than 4096 bytes, found {}",
            q(&text)
        )),
        (false, _) => Err(format!("must be an absolute path, found {}", q(&text))),
    }
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
    let credentials = !url.username().is_empty() || url.password().is_some();
    let more = !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some();
    let host = match url.host() {
        _ if credentials => {
            let keys = "use mqtt.username and mqtt.password_file or mqtt.password_credential";
            return Err(format!("must not contain a user name or password: {keys}"));
        }
        _ if more => {
            return Err("unexpected path, query or fragment: the url names only the broker".into())
        }
        None => return Err("missing host".to_string()),
        Some(Host::Ipv6(address)) => address.to_string(),
        Some(host) => host.to_string(),
    };
    if host.chars().count() > 253 {
        return Err("host longer than 253 characters, the longest DNS name".to_string());
    }
    // A url may hold characters in its host that no DNS name or address has.
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':');
    match url.port().unwrap_or(default_port) {
        _ if !host.chars().all(allowed) => Err(BAD_HOST.to_string()),
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

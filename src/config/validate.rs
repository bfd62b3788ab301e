//! The second stage: reads each table of the layered configuration into its serde mirror key by key, then
//! checks how the values fit together, collecting every error with its key path and, for a value a drop-in
//! or a variable set, where it came from.
//!
//! The mirrors' field types (`values`) check their values as serde reads them (a hub id, an absolute path,
//! an integer in range), so a bad value is reported under its key just like a value of the wrong type, and
//! is left out of the mirror. The `check_*` functions then fill in defaults and run the checks that span
//! several keys; a configuration with any error is never returned, so the defaults that stand in for
//! refused keys never leave this module.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

use super::file::{self, key_path, SECTIONS, SERIAL};
use super::values::{
    device_id, q, Absolute, Adapter, BrokerUrl, Clock, Credential, DeviceId, Group,
};
use super::values::{
    HubId, Int, LogLevel, NonEmpty, ParityName, Readable, Seconds, SerialProtocol,
};
use super::values::{TopicPrefix, Url, Version};
use super::PortLocation;
use super::{BleConfig, Config, ConfigError, HubConfig, LogConfig};
use super::{MqttConfig, OutboxConfig, SecretSource, SerialConfig};
use crate::decode::Protocol;
use crate::spot::SpotRule;

/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;
const USB_EXAMPLE: &str = "{ vid = 0x10c4, pid = 0xea60 }";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HubFile {
    id: Option<HubId>,
    state_dir: Option<Absolute>,
    runtime_dir: Option<Absolute>,
    clock: Option<Clock>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MqttFile {
    url: Option<Url>,
    topic_prefix: Option<TopicPrefix>,
    client_id: Option<NonEmpty>,
    username: Option<NonEmpty>,
    /// Read whole by `check_password`, as the uplink reads it.
    password_file: Option<Absolute>,
    password_credential: Option<Credential>,
    ca_file: Option<Readable>,
    client_cert_file: Option<Readable>,
    client_key_file: Option<Readable>,
    keep_alive_s: Option<Int<5, 3600>>,
    reconnect_min_ms: Option<Int<1, 3_600_000>>,
    reconnect_max_s: Option<Int<1, 86_400>>,
    window: Option<Int<1, 256>>,
    protocol: Option<Version>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutboxFile {
    /// A hub's disk holds tens of millions of readings at most; more is a typing mistake.
    max_pending: Option<Int<1, 100_000_000>>,
    dedup_retention_days: Option<Int<1, 36_500>>,
    fold_log_seconds: Option<Int<0, 86_400>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BleFile {
    enabled: Option<bool>,
    adapter: Option<Adapter>,
    admin_group: Option<Group>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogFile {
    level: Option<LogLevel>,
}

/// One `[[serial]]` entry.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SerialFile {
    path: Option<Absolute>,
    /// A [`UsbMatch`] table, read on its own so that each of its keys is checked.
    #[serde(rename = "match")]
    usb: Option<IgnoredAny>,
    protocol: Option<SerialProtocol>,
    id: Option<DeviceId>,
    baud_rate: Option<Int<300, 4_000_000>>,
    parity: Option<ParityName>,
    select_format: Option<bool>,
    spot_stable_s: Option<Seconds>,
    spot_repeat_s: Option<Seconds>,
}

/// `match = { vid = 0x10c4, pid = 0xea60, serial = "0001" }`: a port found by its USB identity.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UsbMatch {
    vid: Option<Int<0, 0xFFFF>>,
    pid: Option<Int<0, 0xFFFF>>,
    serial: Option<NonEmpty>,
}

/// What validation reads from the environment besides the overrides.
#[derive(Default)]
pub(super) struct Environment<'a> {
    /// `$CREDENTIALS_DIRECTORY`, where systemd set it: a credential named in the file must be there.
    pub credentials_dir: Option<&'a Path>,
    /// `$RUNTIME_DIRECTORY`, where systemd set it: the default of `hub.runtime_dir`.
    pub runtime_dir: Option<&'a Path>,
    pub uplink: Option<super::UplinkCheck>,
}

/// Turns the layered configuration into a [`Config`], or every error found.
pub(super) fn validate(figment: &Figment, env: &Environment) -> Result<Config, Vec<ConfigError>> {
    let root = figment
        .find_value("")
        .unwrap_or_else(|_| Dict::new().into());
    let sections = root.as_dict().cloned().unwrap_or_default();
    let mut c = Checker {
        figment,
        root: &root,
        env,
        rejected: HashSet::new(),
        orders: HashMap::from([(String::new(), SECTIONS)]),
        errors: Vec::new(),
    };
    for (name, value) in &sections {
        let tables = value
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v.as_dict().is_some()));
        let message = match value.as_dict().is_some() || tables {
            _ if SECTIONS.contains(&name.as_str()) => continue,
            true => "unknown section",
            false => "unknown key",
        };
        c.report(&key_path("", name), message);
    }
    let section = |name| sections.get(name);
    let hub = check_hub(&mut c, section("hub"));
    let before = c.errors.len();
    let mqtt = check_mqtt(&mut c, section("mqtt"), &hub.id);
    // The TLS files are read as the uplink will read them, so a file that would stop it is an error now
    // rather than an exit at start; they can be read only once the rest of `[mqtt]` is valid.
    if let (true, true, Some(uplink)) = (c.errors.len() == before, mqtt.tls, c.env.uplink) {
        if let Err((key, problem)) = uplink(&mqtt) {
            c.report(&key_path("mqtt", key), problem);
        }
    }
    if let Some(password) = &mqtt.password {
        check_password(&mut c, password);
    }
    let outbox: OutboxFile = c.table("outbox", section("outbox"), "a table");
    let ble: BleFile = c.table("ble", section("ble"), "a table");
    let log: LogFile = c.table("log", section("log"), "a table");
    let fold_log_seconds = outbox.fold_log_seconds.map_or(1, |seconds| seconds.0);
    let config = Config {
        hub,
        mqtt,
        outbox: OutboxConfig {
            max_pending: outbox.max_pending.map_or(1_000_000, |count| count.0),
            dedup_retention_days: outbox.dedup_retention_days.map_or(400, |days| days.0) as u32,
            fold_log_after: (fold_log_seconds > 0).then(|| Duration::from_secs(fold_log_seconds)),
        },
        ble: BleConfig {
            enabled: ble.enabled.unwrap_or(true),
            adapter: ble.adapter.map_or("hci0".into(), Into::into),
            admin_group: ble.admin_group.map(Into::into),
        },
        serial: check_serial(&mut c, section(SERIAL)),
        log: LogConfig {
            level: log.level.map_or("info".into(), Into::into),
        },
    };
    c.finish(config)
}

/// Reads tables into their mirrors and collects errors.
struct Checker<'a> {
    figment: &'a Figment,
    root: &'a Value,
    env: &'a Environment<'a>,
    /// Keys (and tables) whose value was refused: reported once, never again as missing.
    rejected: HashSet<String>,
    /// The keys of each table read, by its path, in the order its mirror declares them.
    orders: HashMap<String, &'static [&'static str]>,
    /// Key paths, before their origin is added, and messages.
    errors: Vec<(String, String)>,
}

impl Checker<'_> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    /// A required key's value; reported missing if absent.
    fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.missing(path, "missing");
        }
        value
    }

    /// Reports a missing key, unless it or its table was refused, which is reported already.
    fn missing(&mut self, path: &str, message: &str) {
        let inside = |r: &String| {
            path.strip_prefix(r.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if !self.rejected.iter().any(inside) {
            self.report(path, message);
        }
    }

    /// Whether the key was set, even to a value that was refused.
    fn given<T>(&self, path: &str, value: &Option<T>) -> bool {
        value.is_some() || self.rejected.contains(path)
    }

    /// Reads the table at `path` into its mirror key by key, so that every refused key and every unknown
    /// key is reported, not only the first; those keys are left out of the mirror.
    fn table<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        value: Option<&Value>,
        what: &str,
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        let Some(dict) = value.as_dict() else {
            let found = type_name(&value.to_actual());
            self.report(path, format!("expected {what}, found {found}"));
            self.rejected.insert(path.to_string());
            return T::default();
        };
        self.orders.insert(path.to_string(), fields::<T>());
        let mut valid = Dict::new();
        for (key, value) in dict {
            // A variable's text is read as a number or boolean where it looks like one, else as a string.
            let variable = self
                .figment
                .get_metadata(value.tag())
                .and_then(file::variable);
            let typed = value
                .as_str()
                .filter(|_| variable.is_some())
                .and_then(file::env_scalar);
            let read = |form: &Value| match T::deserialize(&single(key, form)) {
                Ok(_) => Ok(form.clone()),
                Err(error) => Err((
                    matches!(error.kind, Kind::InvalidType(..)),
                    describe(&error, form),
                )),
            };
            // Text is what a variable holds, so a typed reading of the wrong type falls back to it.
            let verdict = match typed.as_ref().map(read) {
                Some(Err((true, _))) | None => read(value),
                Some(verdict) => verdict,
            };
            match verdict {
                Ok(form) => drop(valid.insert(key.clone(), form)),
                Err((_, message)) => {
                    let key_path = key_path(path, key);
                    self.report(&key_path, message);
                    self.rejected.insert(key_path);
                }
            }
        }
        // Each key was read alone into this mirror, so together they read too.
        Value::from(valid).deserialize().unwrap_or_else(|error| {
            self.report(path, describe(&error, value));
            T::default()
        })
    }

    /// The errors in the order of the example file, each with where its value came from; the order the
    /// checks found them in would change with every refactoring.
    fn finish(mut self, config: Config) -> Result<Config, Vec<ConfigError>> {
        if self.errors.is_empty() {
            return Ok(config);
        }
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_cached_key(|(path, _)| self.rank(path));
        let labelled = errors
            .into_iter()
            .map(|(path, message)| ConfigError::new(self.label(&path), message));
        Err(labelled.collect())
    }

    /// Sorts by key as the mirrors declare them (unknown keys after, by name), and entries by index.
    fn rank(&self, path: &str) -> Vec<(usize, String, usize)> {
        let mut table = String::new();
        let rank = |(name, index): (&str, Option<usize>)| {
            let keys = self.orders.get(&table).copied().unwrap_or_default();
            let position = keys
                .iter()
                .position(|key| *key == name)
                .unwrap_or(usize::MAX);
            table = key_path(&table, name) + &index.map(|i| format!("[{i}]")).unwrap_or_default();
            (position, name.to_string(), index.unwrap_or(0))
        };
        segments(path).map(rank).collect()
    }

    /// `path` with the drop-in or variable that set its value, or the array holding it: a table merged from
    /// several layers has no one origin.
    fn label(&self, path: &str) -> String {
        let (mut value, mut tag) = (Some(self.root), None);
        for (name, index) in segments(path) {
            value = value.and_then(|table| table.as_dict()?.get(name));
            tag = value
                .filter(|value| value.as_dict().is_none())
                .map(Value::tag)
                .or(tag);
            value = value
                .and_then(|array| array.as_array()?.get(index?))
                .or(value);
        }
        match tag
            .and_then(|tag| self.figment.get_metadata(tag))
            .and_then(file::origin)
        {
            Some(origin) => format!("{path} (from {origin})"),
            None => path.to_string(),
        }
    }
}

/// A table of one key, to read that key alone into a mirror.
fn single(key: &str, value: &Value) -> Value {
    Dict::from([(key.to_string(), value.clone())]).into()
}

/// The keys of mirror `T` in declaration order. serde gives them, in that order, only when it refuses an
/// unknown key, so this offers it one: the empty key, which no mirror has.
fn fields<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(&single("", &Value::from(0))).map_err(|error| error.kind) {
        Err(Kind::UnknownField(_, fields)) => fields,
        _ => &[],
    }
}

/// The keys and array indices along a key path such as `serial[1].match.pid`.
fn segments(path: &str) -> impl Iterator<Item = (&str, Option<usize>)> {
    path.split('.').map(
        |segment| match segment.strip_suffix(']').and_then(|s| s.split_once('[')) {
            Some((name, index)) => (name, index.parse().ok()),
            None => (segment, None),
        },
    )
}

/// A mirror's complaint about `value` in the words of the rest of the messages.
fn describe(error: &figment::Error, value: &Value) -> String {
    let Kind::InvalidType(actual, expected) = &error.kind else {
        return match error.kind {
            Kind::UnknownField(..) => "unknown key".to_string(),
            ref other => other.to_string(),
        };
    };
    let expected = match expected.as_str() {
        "i64" => "an integer",
        // The only floats are the spot timings.
        "f64" => "a number of seconds",
        other => other,
    };
    // toml hands serde a date-time as a table of one private key.
    let datetime = value.find_ref("$__toml_private_datetime").is_some();
    let found = if datetime {
        "a date-time".to_string()
    } else {
        type_name(actual)
    };
    format!("expected {expected}, found {found}")
}

fn type_name(actual: &Actual) -> String {
    let name = match actual {
        Actual::Str(_) => "a string",
        Actual::Signed(_) | Actual::Unsigned(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Bool(_) => "a boolean",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        other => return other.to_string(),
    };
    name.to_string()
}

fn check_hub(c: &mut Checker, section: Option<&Value>) -> HubConfig {
    let hub: HubFile = c.table("hub", section, "a table");
    // systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; the key overrides both.
    let runtime_dir = c.env.runtime_dir.unwrap_or(Path::new("/run/vitalsd"));
    let id = c.required("hub.id", hub.id);
    let state_dir = c.required("hub.state_dir", hub.state_dir);
    HubConfig {
        id: id.map(Into::into).unwrap_or_default(),
        state_dir: state_dir.map(Into::into).unwrap_or_default(),
        runtime_dir: hub.runtime_dir.map_or(runtime_dir.into(), Into::into),
        clock: hub.clock.map(Into::into).unwrap_or_default(),
    }
}

fn check_mqtt(c: &mut Checker, section: Option<&Value>, hub_id: &str) -> MqttConfig {
    let m: MqttFile = c.table("mqtt", section, "a table");
    let url: Option<BrokerUrl> = c.required("mqtt.url", m.url).map(Into::into);
    let has_file = c.given("mqtt.password_file", &m.password_file);
    let has_credential = c.given("mqtt.password_credential", &m.password_credential);
    if has_file && has_credential {
        let message = "conflicts with mqtt.password_file: set only one";
        c.report("mqtt.password_credential", message);
    }
    if (has_file || has_credential) && !c.given("mqtt.username", &m.username) {
        let message = "missing (MQTT sends a password only together with a user name)";
        c.report("mqtt.username", message);
    }
    let ca = c.given("mqtt.ca_file", &m.ca_file);
    let cert = c.given("mqtt.client_cert_file", &m.client_cert_file);
    let key = c.given("mqtt.client_key_file", &m.client_key_file);
    if url.as_ref().is_some_and(|url| !url.tls) {
        let given = [("ca", ca), ("client_cert", cert), ("client_key", key)];
        for (file, _) in given.iter().filter(|(_, given)| *given) {
            c.report(&format!("mqtt.{file}_file"), "needs an mqtts:// url");
        }
    } else if cert != key {
        let (given, without) = if cert {
            ("cert", "key")
        } else {
            ("key", "cert")
        };
        let message = format!("given without mqtt.client_{without}_file");
        c.report(&format!("mqtt.client_{given}_file"), message);
    }
    let min_ms = m.reconnect_min_ms.map_or(500, |ms| ms.0);
    let max_s = m.reconnect_max_s.map_or(60, |s| s.0);
    if min_ms > max_s * 1000 && !c.rejected.contains("mqtt.reconnect_max_s") {
        let message = format!("{min_ms} ms is longer than mqtt.reconnect_max_s ({max_s} s)");
        c.report("mqtt.reconnect_min_ms", message);
    }
    let url = url.unwrap_or_default();
    let password_file = m.password_file.map(|file| SecretSource::File(file.0));
    MqttConfig {
        host: url.host,
        port: url.port,
        tls: url.tls,
        topic_prefix: m.topic_prefix.map_or("vitalsd/v1".into(), Into::into),
        client_id: m
            .client_id
            .map_or_else(|| format!("vitalsd-{hub_id}"), Into::into),
        username: m.username.map(Into::into),
        password: password_file.or(m
            .password_credential
            .map(|name| SecretSource::Credential(name.0))),
        ca_file: m.ca_file.map(Into::into),
        client_cert_file: m.client_cert_file.map(Into::into),
        client_key_file: m.client_key_file.map(Into::into),
        keep_alive: Duration::from_secs(m.keep_alive_s.map_or(30, |s| s.0)),
        reconnect_min: Duration::from_millis(min_ms),
        reconnect_max: Duration::from_secs(max_s),
        window: m.window.map_or(128, |window| window.0) as usize,
        protocol: m.protocol.map(Into::into).unwrap_or_default(),
    }
}

/// Reads the password as the uplink will, so a file that would stop it is an error now rather than an exit
/// at start. The password itself never enters a message.
fn check_password(c: &mut Checker, source: &SecretSource) {
    let dir = c.env.credentials_dir;
    let (key, shown) = match (source, dir) {
        (SecretSource::File(path), _) => ("mqtt.password_file", path.clone()),
        (SecretSource::Credential(name), Some(dir)) => ("mqtt.password_credential", dir.join(name)),
        // A credential is readable only where systemd provides it, as in the unit's ExecStartPre.
        (SecretSource::Credential(_), None) => return,
    };
    let shown = shown.display();
    let problem = match source.read_from(dir.map(Into::into)) {
        Err(error) => format!("cannot read {error}"),
        Ok(password) if password.is_empty() => {
            format!("{shown}: empty; the file must hold the password")
        }
        Ok(password) if password.contains(['\n', '\r']) => format!(
            "{shown}: more than one line; the file must hold just the password (one trailing newline is ignored)"
        ),
        Ok(_) => return,
    };
    c.report(key, problem);
}

fn check_serial(c: &mut Checker, section: Option<&Value>) -> Vec<SerialConfig> {
    let entries = match section {
        None => return Vec::new(),
        Some(Value::Array(_, entries)) if entries.len() > MAX_SERIAL_PORTS => {
            let count = entries.len();
            let message =
                format!("{count} entries; a hub reads at most {MAX_SERIAL_PORTS} serial ports");
            c.report(SERIAL, message);
            return Vec::new();
        }
        Some(Value::Array(_, entries)) => entries,
        Some(other) => {
            let found = type_name(&other.to_actual());
            let message = format!("expected an array of tables ([[serial]]), found {found}");
            c.report(SERIAL, message);
            return Vec::new();
        }
    };
    let mut locations: HashMap<PortLocation, usize> = HashMap::new();
    // Two paths that lead to one device node (a by-id link and its /dev/ttyUSB0) are one port.
    let mut devices: HashMap<PathBuf, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut ports = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let path = format!("{SERIAL}[{index}]");
        let (port, location, id) = check_serial_entry(c, &path, entry);
        // Duplicates are checked on whatever is valid, so they show up with the entry's other errors.
        let mut duplicate_path = true;
        if let Some(location) = location {
            let by_path = matches!(location, PortLocation::Path(_));
            let key = key_path(&path, if by_path { "path" } else { "match" });
            let device = match &location {
                PortLocation::Path(file) => std::fs::canonicalize(file).ok(),
                PortLocation::Usb { .. } => None,
            };
            let shown = location.describe();
            if let Some(first) = locations.get(&location) {
                c.report(
                    &key,
                    format!("{shown} is already used by {SERIAL}[{first}]"),
                );
            } else if let Some((device, first)) =
                device.iter().find_map(|d| Some((d, devices.get(d)?)))
            {
                let device = device.display();
                let message =
                    format!("{shown} leads to {device}, already read by {SERIAL}[{first}]");
                c.report(&key, message);
            } else {
                devices.extend(device.map(|device| (device, index)));
                locations.insert(location, index);
                duplicate_path = false;
            }
        }
        match id.map(|(id, given)| (ids.get(&id), id, given)) {
            // The same path already explains a clash of default ids.
            Some((Some(_), _, false)) if duplicate_path => {}
            Some((Some(first), id, given)) => {
                let (default, advice) = match given {
                    true => ("", ""),
                    false => (" (the default from path)", ": set id"),
                };
                let message = format!(
                    "{}{default} is already used by {SERIAL}[{first}]{advice}",
                    q(&id)
                );
                c.report(&key_path(&path, "id"), message);
            }
            Some((None, id, _)) => drop(ids.insert(id, index)),
            None => {}
        }
        ports.push(port);
    }
    ports
}

/// One `[[serial]]` entry, with its location and device id (and whether that was given rather than
/// derived) where they are valid, for the duplicate checks.
#[allow(clippy::type_complexity)]
fn check_serial_entry(
    c: &mut Checker,
    path: &str,
    entry: &Value,
) -> (SerialConfig, Option<PortLocation>, Option<(String, bool)>) {
    let s: SerialFile = c.table(path, Some(entry), "a table");
    let key = |name: &str| key_path(path, name);
    let location = match (c.given(&key("path"), &s.path), s.usb.is_some()) {
        (true, false) => s.path.map(|file| PortLocation::Path(file.0)),
        (false, true) => {
            let table = entry.as_dict().and_then(|entry| entry.get("match"));
            check_usb_match(c, &key("match"), table)
        }
        (false, false) => {
            let example =
                format!("missing (or name the port by its USB identity: match = {USB_EXAMPLE})");
            c.missing(&key("path"), &example);
            None
        }
        (true, true) => {
            c.report(&key("match"), "set path or match, not both");
            None
        }
    };
    let protocol: Option<Protocol> = c.required(&key("protocol"), s.protocol).map(Into::into);
    let id = match (s.id, &location) {
        (Some(id), _) => Some((id.0, true)),
        (None, Some(location)) if !c.rejected.contains(&key("id")) => {
            let (by, problem) = match location {
                PortLocation::Path(_) => ("path", "names no device file"),
                PortLocation::Usb { .. } => ("match", "has a serial a device id cannot hold"),
            };
            let derived = default_id(location).filter(|id| device_id(id).is_ok());
            if derived.is_none() {
                let message =
                    format!("{problem}, so the default id cannot be derived from it: set id");
                c.report(&key(by), message);
            }
            derived.map(|id| (id, false))
        }
        (None, _) => None,
    };
    if let (Some(true), Some(protocol)) = (s.select_format, protocol) {
        if !protocol.name().starts_with("nonin-") {
            let message = format!(
                "only Nonin data formats can be selected, not {}",
                q(protocol.name())
            );
            c.report(&key("select_format"), message);
        }
    }
    let spot = SpotRule::default();
    let port = SerialConfig {
        path: location
            .clone()
            .unwrap_or(PortLocation::Path(PathBuf::new())),
        protocol: protocol.unwrap_or(Protocol::ALL[0]),
        device_id: id.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        baud_rate: s.baud_rate.map(|rate| rate.0 as u32),
        parity: s.parity.map(Into::into),
        select_format: s.select_format.unwrap_or(false),
        spot: SpotRule {
            stable_for: s.spot_stable_s.map_or(spot.stable_for, Into::into),
            repeat_every: s.spot_repeat_s.map_or(spot.repeat_every, Into::into),
        },
    };
    (port, location, id)
}

/// The id of a port without one: `serial:` and the device file's name, or its USB identity.
fn default_id(location: &PortLocation) -> Option<String> {
    match location {
        PortLocation::Path(file) => Some(format!("serial:{}", file.file_name()?.to_string_lossy())),
        PortLocation::Usb {
            vid,
            pid,
            serial_number,
        } => {
            let serial = serial_number.as_ref().map(|serial| format!("-{serial}"));
            Some(format!(
                "serial:usb-{vid:04x}-{pid:04x}{}",
                serial.unwrap_or_default()
            ))
        }
    }
}

fn check_usb_match(c: &mut Checker, path: &str, table: Option<&Value>) -> Option<PortLocation> {
    let usb: UsbMatch = c.table(path, table, &format!("a table such as {USB_EXAMPLE}"));
    let vid = c.required(&key_path(path, "vid"), usb.vid);
    let pid = c.required(&key_path(path, "pid"), usb.pid);
    // Without its serial, the match would find another port.
    if c.rejected.contains(&key_path(path, "serial")) {
        return None;
    }
    Some(PortLocation::Usb {
        vid: vid?.0 as u16,
        pid: pid?.0 as u16,
        serial_number: usb.serial.map(Into::into),
    })
}

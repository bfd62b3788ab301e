//! The second stage: reads each table of the layered configuration into its serde mirror, key by key, then
//! checks the values and how they fit together in one `check_*` function per section, collecting every error
//! with its key path and, for a value a drop-in or a variable set, where it came from.
//!
//! A check that fails reports its error and returns a placeholder (the type's default), so that every later
//! check still runs; a configuration with any error is never returned, so no placeholder leaves this module.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;

use super::file::{self, key_path, BleFile, HubFile, LogFile, MqttFile, OutboxFile, SerialFile};
use super::file::{UsbMatch, SECTIONS, SERIAL};
use super::{io_message, AdminGroup, BleConfig, Config, ConfigError, HubConfig, LogConfig};
use super::{MqttConfig, MqttProtocol, OutboxConfig, SecretSource, SerialConfig};
use crate::clock::ClockPolicy;
use crate::decode::{Parity, Protocol, Transport};
use crate::serial::ports::PortLocation;
use crate::spot::SpotRule;

/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;
/// Quoted values longer than this are shown by their beginning only.
const MAX_QUOTED_CHARS: usize = 200;
const USB_EXAMPLE: &str = "{ vid = 0x10c4, pid = 0xea60 }";
const BAD_PORT: &str = "bad port: expected a number from 1 to 65535";
const BAD_HOST: &str =
    "invalid host: use a name of letters, digits, '-', '.' and '_', or an IP address";
const CLOCK_POLICIES: &str =
    "is not a clock policy: use \"ntp\" (trust the clock only while the kernel says \
    it is synchronised) or \"trusted\" (a real-time clock or other source you vouch for)";
const MQTT_VERSIONS: &str =
    "is not a supported MQTT version: use \"5\" (the default) or \"3.1.1\" (for \
    brokers without MQTT 5; it cannot tell a refused reading from a delivered one)";

/// What validation reads from the environment besides the overrides.
#[derive(Default)]
pub(super) struct Environment<'a> {
    /// `$CREDENTIALS_DIRECTORY`, where systemd set it: a credential named in the file must be there.
    pub credentials_dir: Option<&'a Path>,
    /// `$RUNTIME_DIRECTORY`, where systemd set it: the default of `hub.runtime_dir`.
    pub runtime_dir: Option<&'a Path>,
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
    for (name, value) in sections
        .iter()
        .filter(|(name, _)| !SECTIONS.contains(&name.as_str()))
    {
        let tables = value
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v.as_dict().is_some()));
        let is_section = value.as_dict().is_some() || tables;
        let message = if is_section {
            "unknown section"
        } else {
            "unknown key"
        };
        c.report(&key_path("", name), message);
    }
    let hub = check_hub(&mut c, sections.get("hub"));
    let before = c.errors.len();
    let mqtt = check_mqtt(&mut c, sections.get("mqtt"), &hub.id);
    if c.errors.len() == before {
        check_mqtt_files(&mut c, &mqtt);
    }
    let config = Config {
        hub,
        mqtt,
        outbox: check_outbox(&mut c, sections.get("outbox")),
        ble: check_ble(&mut c, sections.get("ble")),
        serial: check_serial(&mut c, sections.get(SERIAL)),
        log: check_log(&mut c, sections.get("log")),
    };
    c.finish(config)
}

/// Reads tables into their mirrors and collects errors.
struct Checker<'a> {
    figment: &'a Figment,
    root: &'a Value,
    env: &'a Environment<'a>,
    /// Keys (and tables) whose value had the wrong type: reported once, never again as missing.
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

    /// A check's verdict on a value: the value, or `None` with the error reported under `path`.
    fn ok<T>(&mut self, path: &str, verdict: Result<T, String>) -> Option<T> {
        verdict.map_err(|message| self.report(path, message)).ok()
    }

    /// The value, or a placeholder with the error reported under `path`.
    fn check<T: Default>(&mut self, path: &str, verdict: Result<T, String>) -> T {
        self.ok(path, verdict).unwrap_or_default()
    }

    /// An optional key through `check`: `None` if it is absent, or invalid and reported.
    fn opt<U, T>(
        &mut self,
        path: &str,
        value: Option<U>,
        check: impl FnOnce(U) -> Result<T, String>,
    ) -> Option<T> {
        let verdict = check(value?);
        self.ok(path, verdict)
    }

    /// A required key's value; reported missing if absent.
    fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.missing(path, "missing");
        }
        value
    }

    /// Reports a missing key, unless it or its table had the wrong type, which is reported already.
    fn missing(&mut self, path: &str, message: &str) {
        let inside = |r: &String| {
            path.strip_prefix(r.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if !self.rejected.iter().any(inside) {
            self.report(path, message);
        }
    }

    /// Whether the key was set, even to a value of the wrong type.
    fn given<T>(&self, path: &str, value: &Option<T>) -> bool {
        value.is_some() || self.rejected.contains(path)
    }

    /// An integer key in `min..=max`, `default` if absent.
    fn int(&mut self, path: &str, value: Option<i64>, default: i64, (min, max): (i64, i64)) -> u64 {
        self.check(path, range(value.unwrap_or(default), min, max))
    }

    /// An absolute path to a file the daemon must be able to read (a password, a certificate, a key).
    fn file(&mut self, path: &str, value: &Option<String>) -> Option<PathBuf> {
        let file = self.opt(path, value.as_deref(), absolute)?;
        self.ok(path, readable(&file)).map(|()| file)
    }

    /// Reads the table at `path` into its mirror key by key, so that every key of the wrong type and every
    /// unknown key is reported, not only the first; those keys are left out of the mirror.
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
            self.report(
                path,
                format!("expected {what}, found {}", type_name(&value.to_actual())),
            );
            self.rejected.insert(path.to_string());
            return T::default();
        };
        self.orders.insert(path.to_string(), fields::<T>());
        let mut valid = Dict::new();
        for (key, value) in dict {
            // A variable's text is read as a number or boolean where it looks like one, else as a string.
            let from_env = self
                .figment
                .get_metadata(value.tag())
                .and_then(file::variable);
            let typed = value
                .as_str()
                .filter(|_| from_env.is_some())
                .and_then(file::env_scalar);
            let forms: Vec<&Value> = typed.iter().chain([value]).collect();
            match forms
                .iter()
                .find(|form| T::deserialize(&single(key, form)).is_ok())
            {
                Some(form) => drop(valid.insert(key.clone(), (*form).clone())),
                None => {
                    let key_path = key_path(path, key);
                    if let Err(error) = T::deserialize(&single(key, forms[0])) {
                        self.report(&key_path, describe(&error, forms[0]));
                    }
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
    let id = c.required("hub.id", hub.id.as_deref());
    let state_dir = c.required("hub.state_dir", hub.state_dir.as_deref());
    // systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; the key overrides both.
    let runtime_dir = c.env.runtime_dir.unwrap_or(Path::new("/run/vitalsd"));
    let policies = [("ntp", ClockPolicy::Ntp), ("trusted", ClockPolicy::Trusted)];
    let clock = |clock| choice(clock, &policies, CLOCK_POLICIES);
    HubConfig {
        id: c.opt("hub.id", id, hub_id).unwrap_or_default(),
        state_dir: c
            .opt("hub.state_dir", state_dir, absolute)
            .unwrap_or_default(),
        runtime_dir: c
            .opt("hub.runtime_dir", hub.runtime_dir.as_deref(), absolute)
            .unwrap_or(runtime_dir.into()),
        clock: c
            .opt("hub.clock", hub.clock.as_deref(), clock)
            .unwrap_or_default(),
    }
}

fn check_mqtt(c: &mut Checker, section: Option<&Value>, hub_id: &str) -> MqttConfig {
    let m: MqttFile = c.table("mqtt", section, "a table");
    let url = c.required("mqtt.url", m.url.as_deref());
    let url = c.opt("mqtt.url", url, broker_url);
    let password_file = c.file("mqtt.password_file", &m.password_file);
    let credential = m.password_credential.as_deref();
    let mut credential = c.opt("mqtt.password_credential", credential, credential_name);
    // A credential is checked where systemd provides it, as in the unit's ExecStartPre.
    if let (Some(name), Some(dir)) = (&credential, c.env.credentials_dir) {
        let readable = readable(&dir.join(name));
        credential = c.ok("mqtt.password_credential", readable).and(credential);
    }
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
    let cert = c.given("mqtt.client_cert_file", &m.client_cert_file);
    let key = c.given("mqtt.client_key_file", &m.client_key_file);
    if url.as_ref().is_some_and(|url| !url.tls) {
        let ca = c.given("mqtt.ca_file", &m.ca_file);
        let keys = [
            ("ca_file", ca),
            ("client_cert_file", cert),
            ("client_key_file", key),
        ];
        for (key, _) in keys.iter().filter(|(_, given)| *given) {
            c.report(&key_path("mqtt", key), "needs an mqtts:// url");
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
    let min_ms = c.int(
        "mqtt.reconnect_min_ms",
        m.reconnect_min_ms,
        500,
        (1, 3_600_000),
    );
    let max_s = c.int("mqtt.reconnect_max_s", m.reconnect_max_s, 60, (1, 86_400));
    if max_s > 0 && min_ms > max_s * 1000 && !c.rejected.contains("mqtt.reconnect_max_s") {
        let message = format!("{min_ms} ms is longer than mqtt.reconnect_max_s ({max_s} s)");
        c.report("mqtt.reconnect_min_ms", message);
    }
    let versions = [("5", MqttProtocol::V5), ("3.1.1", MqttProtocol::V311)];
    let protocol = |version| choice(version, &versions, MQTT_VERSIONS);
    let prefix = topic_prefix(m.topic_prefix.as_deref().unwrap_or("vitalsd/v1"));
    let url = url.unwrap_or_default();
    MqttConfig {
        host: url.host,
        port: url.port,
        tls: url.tls,
        topic_prefix: c.check("mqtt.topic_prefix", prefix),
        client_id: match &m.client_id {
            Some(client_id) => c.check("mqtt.client_id", non_empty(client_id)),
            None => format!("vitalsd-{hub_id}"),
        },
        username: c.opt("mqtt.username", m.username.as_deref(), non_empty),
        password: password_file
            .map(SecretSource::File)
            .or(credential.map(SecretSource::Credential)),
        ca_file: c.file("mqtt.ca_file", &m.ca_file),
        client_cert_file: c.file("mqtt.client_cert_file", &m.client_cert_file),
        client_key_file: c.file("mqtt.client_key_file", &m.client_key_file),
        keep_alive: Duration::from_secs(c.int("mqtt.keep_alive_s", m.keep_alive_s, 30, (5, 3600))),
        reconnect_min: Duration::from_millis(min_ms),
        reconnect_max: Duration::from_secs(max_s),
        window: c.int("mqtt.window", m.window, 128, (1, 256)) as usize,
        protocol: c
            .opt("mqtt.protocol", m.protocol.as_deref(), protocol)
            .unwrap_or_default(),
    }
}

/// Reads the TLS files and the password as the uplink will, so a file that would stop it is an
/// error now rather than an exit at start.
fn check_mqtt_files(c: &mut Checker, mqtt: &MqttConfig) {
    if mqtt.tls {
        if let Err(error) = super::tls_files::client_config(mqtt) {
            c.report(&key_path("mqtt", error.key), error.file_problem());
        }
    }
    let dir = c.env.credentials_dir;
    let (key, shown, source) = match (&mqtt.password, dir) {
        (Some(source @ SecretSource::File(path)), _) => {
            ("mqtt.password_file", path.clone(), source)
        }
        (Some(source @ SecretSource::Credential(name)), Some(dir)) => {
            ("mqtt.password_credential", dir.join(name), source)
        }
        // A credential is readable only where systemd provides it, as in the unit's ExecStartPre.
        _ => return,
    };
    // The password itself never enters a message.
    let problem = match source.read_from(dir.map(Into::into)) {
        Err(error) => format!("cannot read {error}"),
        Ok(password) if password.is_empty() => {
            format!("{}: empty; the file must hold the password", shown.display())
        }
        Ok(password) if password.contains(['\n', '\r']) => format!(
            "{}: more than one line; the file must hold just the password (one trailing newline is ignored)",
            shown.display()
        ),
        Ok(_) => return,
    };
    c.report(key, problem);
}

fn check_outbox(c: &mut Checker, section: Option<&Value>) -> OutboxConfig {
    let o: OutboxFile = c.table("outbox", section, "a table");
    let max_pending = c.int(
        "outbox.max_pending",
        o.max_pending,
        1_000_000,
        (1, i64::MAX),
    );
    let days = c.int(
        "outbox.dedup_retention_days",
        o.dedup_retention_days,
        400,
        (1, 36_500),
    );
    let fold = c.int(
        "outbox.fold_log_seconds",
        o.fold_log_seconds,
        1,
        (0, 86_400),
    );
    OutboxConfig {
        max_pending,
        dedup_retention_days: days as u32,
        fold_log_after: Some(fold)
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs),
    }
}

fn check_ble(c: &mut Checker, section: Option<&Value>) -> BleConfig {
    let b: BleFile = c.table("ble", section, "a table");
    BleConfig {
        enabled: b.enabled.unwrap_or(true),
        adapter: c.check(
            "ble.adapter",
            adapter_name(b.adapter.as_deref().unwrap_or("hci0")),
        ),
        admin_group: c.opt("ble.admin_group", b.admin_group.as_deref(), system_group),
    }
}

fn check_log(c: &mut Checker, section: Option<&Value>) -> LogConfig {
    let l: LogFile = c.table("log", section, "a table");
    let level = non_empty(l.level.as_deref().unwrap_or("info")).and_then(|level| {
        let invalid = |error| format!("invalid log filter {}: {error}", q(&level));
        tracing_subscriber::EnvFilter::try_new(&level).map_err(invalid)?;
        Ok(level)
    });
    LogConfig {
        level: c.check("log.level", level),
    }
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
            c.report(
                SERIAL,
                format!("expected an array of tables ([[serial]]), found {found}"),
            );
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
            if let Some(first) = locations.get(&location) {
                let message = format!(
                    "{} is already used by {SERIAL}[{first}]",
                    location.describe()
                );
                c.report(&key, message);
            } else if let Some(first) = device.as_ref().and_then(|device| devices.get(device)) {
                let (file, device) = (location.describe(), device.unwrap_or_default());
                let message = format!(
                    "{file} leads to {}, already read by {SERIAL}[{first}]",
                    device.display()
                );
                c.report(&key, message);
            } else {
                devices.extend(device.map(|device| (device, index)));
                locations.insert(location, index);
                duplicate_path = false;
            }
        }
        if let Some((id, given)) = id {
            match ids.get(&id) {
                // The same path already explains a clash of default ids.
                Some(_) if !given && duplicate_path => {}
                Some(first) => {
                    let (default, advice) = if given {
                        ("", "")
                    } else {
                        (" (the default from path)", ": set id")
                    };
                    let message = format!(
                        "{}{default} is already used by {SERIAL}[{first}]{advice}",
                        q(&id)
                    );
                    c.report(&key_path(&path, "id"), message);
                }
                None => drop(ids.insert(id, index)),
            }
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
    let location = match (s.path.as_deref(), s.usb.is_some()) {
        (Some(file), false) => c.ok(&key("path"), absolute(file)).map(PortLocation::Path),
        (None, true) => check_usb_match(
            c,
            &key("match"),
            entry.as_dict().and_then(|e| e.get("match")),
        ),
        (None, false) => {
            let message =
                format!("missing (or name the port by its USB identity: match = {USB_EXAMPLE})");
            c.missing(&key("path"), &message);
            None
        }
        (Some(_), true) => {
            c.report(&key("match"), "set path or match, not both");
            None
        }
    };
    let protocol = c.required(&key("protocol"), s.protocol.as_deref());
    let protocol = c.opt(&key("protocol"), protocol, serial_protocol);
    let id = match (&s.id, &location) {
        (Some(id), _) => c
            .opt(&key("id"), Some(id.as_str()), device_id)
            .map(|id| (id, true)),
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
    let parities = [
        ("none", Parity::None),
        ("odd", Parity::Odd),
        ("even", Parity::Even),
    ];
    let parity = |parity| {
        choice(
            parity,
            &parities,
            "is not a parity: use \"none\", \"odd\" or \"even\"",
        )
    };
    let timing = |c: &mut Checker, name: &str, value: Option<f64>, default: Duration| {
        c.opt(&key(name), value, seconds).unwrap_or(default)
    };
    let spot = SpotRule::default();
    let port = SerialConfig {
        path: location
            .clone()
            .unwrap_or(PortLocation::Path(PathBuf::new())),
        protocol: protocol.unwrap_or(Protocol::ALL[0]),
        device_id: id.as_ref().map(|(id, _)| id.clone()).unwrap_or_default(),
        baud_rate: c
            .opt(&key("baud_rate"), s.baud_rate, |rate| {
                range(rate, 300, 4_000_000)
            })
            .map(|rate| rate as u32),
        parity: c.opt(&key("parity"), s.parity.as_deref(), parity),
        select_format: s.select_format.unwrap_or(false),
        spot: SpotRule {
            stable_for: timing(c, "spot_stable_s", s.spot_stable_s, spot.stable_for),
            repeat_every: timing(c, "spot_repeat_s", s.spot_repeat_s, spot.repeat_every),
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
    let mut id = |name: &str, value: Option<i64>| {
        let key = key_path(path, name);
        let id = c.required(&key, value)?;
        c.ok(&key, range(id, 0, 0xFFFF)).map(|id| id as u16)
    };
    let (vid, pid) = (id("vid", usb.vid), id("pid", usb.pid));
    let serial_number = match usb.serial {
        Some(serial) => Some(c.ok(&key_path(path, "serial"), non_empty(&serial))?),
        None => None,
    };
    Some(PortLocation::Usb {
        vid: vid?,
        pid: pid?,
        serial_number,
    })
}

/// A value quoted for a message; a long one by its beginning and length, so a bad value of megabytes is
/// not echoed back whole.
fn q(text: &str) -> String {
    let length = text.chars().count();
    if length <= MAX_QUOTED_CHARS {
        return format!("{text:?}");
    }
    let prefix: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    let quoted = format!("{prefix:?}");
    format!("{}…\" ({length} characters)", &quoted[..quoted.len() - 1])
}

/// `value` if it is valid, else an error that quotes it before `problem`.
fn ensure(valid: bool, value: &str, problem: &str) -> Result<String, String> {
    match valid {
        true => Ok(value.to_string()),
        false => Err(format!("{} {problem}", q(value))),
    }
}

/// The meaning of one of a key's few possible values.
fn choice<T: Copy>(value: &str, choices: &[(&str, T)], problem: &str) -> Result<T, String> {
    let found = choices
        .iter()
        .find(|(name, _)| *name == value)
        .map(|(_, meaning)| *meaning);
    found.ok_or_else(|| format!("{} {problem}", q(value)))
}

fn range(number: i64, min: i64, max: i64) -> Result<u64, String> {
    match (min..=max).contains(&number) {
        // Every range starts at 0 or above.
        true => Ok(number.unsigned_abs()),
        false if max == i64::MAX => Err(format!("must be at least {min}, found {number}")),
        false => Err(format!("must be between {min} and {max}, found {number}")),
    }
}

/// Seconds, more than 0 and at most a day: more is taken for a unit mistake (milliseconds as seconds).
fn seconds(seconds: f64) -> Result<Duration, String> {
    // The comparisons are false for NaN.
    match seconds > 0.0 && seconds <= 86_400.0 {
        true => Ok(Duration::from_secs_f64(seconds)),
        false => Err(format!(
            "must be more than 0 and at most 86400 seconds, found {seconds}"
        )),
    }
}

fn non_empty(text: &str) -> Result<String, String> {
    match text.is_empty() {
        true => Err("must not be empty".to_string()),
        false => Ok(text.to_string()),
    }
}

fn absolute(text: &str) -> Result<PathBuf, String> {
    match text.starts_with('/') {
        true => Ok(PathBuf::from(text)),
        false => Err(format!("must be an absolute path, found {}", q(text))),
    }
}

fn readable(file: &Path) -> Result<(), String> {
    // Reading one byte also catches a directory, which opens fine.
    let read = std::fs::File::open(file).and_then(|mut opened| opened.read(&mut [0u8; 1]));
    read.map(drop)
        .map_err(|error| format!("cannot read {}: {}", file.display(), io_message(&error)))
}

/// Lowercase because it goes into MQTT topics, where case matters and technicians read it aloud.
fn hub_id(id: &str) -> Result<String, String> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_';
    let valid = (1..=64).contains(&id.len()) && id.bytes().all(allowed);
    ensure(
        valid,
        id,
        "is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'",
    )
}

/// Device ids go into payloads and reading ids (joined with `|`), and may go into topics later.
fn device_id(id: &str) -> Result<String, String> {
    let forbidden = |c: char| c.is_whitespace() || c.is_control() || c == '/' || c == '|';
    let valid = (1..=128).contains(&id.chars().count()) && !id.chars().any(forbidden);
    let problem = "is not a valid device id: use 1 to 128 characters without spaces, control \
                   characters, '/' or '|'";
    ensure(valid, id, problem)
}

fn adapter_name(name: &str) -> Result<String, String> {
    let valid = non_empty(name)?.chars().all(|c| c.is_ascii_alphanumeric());
    ensure(valid, name, "is not an adapter name such as \"hci0\"")
}

/// A group name that exists on this system (`/etc/group` or whatever NSS consults), with its id.
fn system_group(name: &str) -> Result<AdminGroup, String> {
    let name = non_empty(name)?;
    match nix::unistd::Group::from_name(&name) {
        Ok(Some(group)) => Ok(AdminGroup {
            name,
            gid: group.gid.as_raw(),
        }),
        Ok(None) => Err(format!(
            "no group {} on this system (create it with groupadd, or leave the key out)",
            q(&name)
        )),
        Err(error) => Err(format!("cannot look up group {}: {error}", q(&name))),
    }
}

/// A systemd credential name, as given to `LoadCredential=`.
fn credential_name(name: &str) -> Result<String, String> {
    let valid = !matches!(name, "" | "." | "..") && !name.contains('/');
    ensure(
        valid,
        name,
        "is not a credential name: use the name given to LoadCredential= (no '/')",
    )
}

fn serial_protocol(name: &str) -> Result<Protocol, String> {
    let serial = |protocol: &Protocol| protocol.transport() == Transport::Serial;
    let known: Vec<&str> = Protocol::ALL
        .iter()
        .filter(|p| serial(p))
        .map(|p| p.name())
        .collect();
    match Protocol::from_name(name) {
        Some(protocol) if serial(&protocol) => Ok(protocol),
        Some(_) => Err(format!(
            "{} is not a serial protocol (serial: {})",
            q(name),
            known.join(", ")
        )),
        None => Err(format!(
            "unknown protocol {} (known: {})",
            q(name),
            known.join(", ")
        )),
    }
}

fn topic_prefix(prefix: &str) -> Result<String, String> {
    let problem = if prefix.is_empty() {
        return Err("must not be empty".to_string());
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
        return Ok(prefix.to_string());
    };
    Err(format!("{problem}, found {}", q(prefix)))
}

#[derive(Debug, PartialEq, Default)]
struct BrokerUrl {
    host: String,
    port: u16,
    tls: bool,
}

/// Parses `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]`, with `[IPv6]` hosts.
///
/// Messages never repeat the url or a part of it after the host: it might hold a password.
fn broker_url(text: &str) -> Result<BrokerUrl, String> {
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
        for id in ["a", "hub-0001", "ward_3", &"x".repeat(64)] {
            assert!(hub_id(id).is_ok(), "{id:?} should be valid");
        }
        for id in ["", "Hub", "hub 1", "hub/1", "hub+", "hüb", &"x".repeat(65)] {
            assert!(hub_id(id).is_err(), "{id:?} should be invalid");
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
            assert!(device_id(id).is_ok(), "{id:?} should be valid");
        }
        for id in ["", "a b", "a/b", "a|b", "a\tb", &"x".repeat(129)] {
            assert!(device_id(id).is_err(), "{id:?} should be invalid");
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
            let message = broker_url(url).expect_err("a bad url");
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
                broker_url(url),
                Ok(BrokerUrl { host, port, tls }),
                "for {url}"
            );
        }
        assert_eq!(
            broker_url("mqtt://broker:+1883"),
            Err("bad port: expected a number from 1 to 65535".to_string())
        );
    }
}

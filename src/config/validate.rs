//! The second stage: reads each table of the layered configuration into its serde mirror, key by key, then
//! checks the values and how they fit together in one `check_*` function per section, collecting every error
//! with its key path and, for a value a drop-in or a variable set, where it came from.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::de::DeserializeOwned;

use super::file::{
    self, key_path, BleFile, HubFile, LogFile, MqttFile, OutboxFile, SerialFile, UsbMatch,
    SECTIONS, SERIAL,
};
use super::{
    io_message, AdminGroup, BleConfig, Config, ConfigError, HubConfig, LogConfig, MqttConfig,
    MqttProtocol, OutboxConfig, SecretSource, SerialConfig,
};
use crate::clock::ClockPolicy;
use crate::decode::{Parity, Protocol, Transport};
use crate::serial::ports::PortLocation;
use crate::spot::SpotRule;

/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;
const DEFAULT_TOPIC_PREFIX: &str = "vitalsd/v1";
const DEFAULT_RUNTIME_DIR: &str = "/run/vitalsd";
const MAX_HUB_ID_CHARS: usize = 64;
const MAX_DEVICE_ID_CHARS: usize = 128;
/// Spot timings above a day are taken for a unit mistake (milliseconds given as seconds).
const MAX_SPOT_SECONDS: f64 = 86_400.0;
/// Quoted values longer than this are shown by their beginning only.
const MAX_QUOTED_CHARS: usize = 200;
const USB_EXAMPLE: &str = "{ vid = 0x10c4, pid = 0xea60 }";

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
        let is_section = value.as_dict().is_some()
            || value
                .as_array()
                .is_some_and(|entries| entries.iter().all(|entry| entry.as_dict().is_some()));
        let message = if is_section {
            "unknown section"
        } else {
            "unknown key"
        };
        c.report(&key_path("", name), message);
    }
    let hub_file: HubFile = c.table("hub", sections.get("hub"), "a table");
    let hub = check_hub(&mut c, &hub_file);
    let hub_id = hub_file.id.as_deref().filter(|id| hub_id(id).is_ok());
    let mqtt = check_mqtt(&mut c, sections.get("mqtt"), hub_id);
    if let Some(mqtt) = &mqtt {
        check_mqtt_files(&mut c, mqtt);
    }
    let outbox = check_outbox(&mut c, sections.get("outbox"));
    let ble = check_ble(&mut c, sections.get("ble"));
    let serial = check_serial(&mut c, sections.get(SERIAL));
    let log = check_log(&mut c, sections.get("log"));
    let config = (|| {
        Some(Config {
            hub: hub?,
            mqtt: mqtt?,
            outbox: outbox?,
            ble: ble?,
            serial: serial?,
            log: log?,
        })
    })();
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

    /// Reports a required key that is absent, unless it or its table was rejected for its type.
    fn missing(&mut self, path: &str, message: &str) {
        let rejected = self.rejected.iter().any(|rejected| {
            path.strip_prefix(rejected.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        });
        if !rejected {
            self.report(path, message);
        }
    }

    fn required<T>(&mut self, path: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.missing(path, "missing");
        }
        value
    }

    /// An optional key through `check`: `Some(None)` if absent, `None` if invalid.
    fn optional<T, U>(
        &mut self,
        path: &str,
        value: Option<T>,
        check: impl FnOnce(T) -> Result<U, String>,
    ) -> Option<Option<U>> {
        match value {
            None => Some(None),
            Some(value) => self.ok(path, check(value)).map(Some),
        }
    }

    /// Whether the key was set, even to a value of the wrong type.
    fn given<T>(&self, path: &str, value: &Option<T>) -> bool {
        value.is_some() || self.rejected.contains(path)
    }

    /// An integer key in `min..=max`, `default` if absent.
    fn int(
        &mut self,
        path: &str,
        value: Option<i64>,
        default: i64,
        min: i64,
        max: i64,
    ) -> Option<u64> {
        if self.rejected.contains(path) {
            return None;
        }
        self.ok(path, range(value.unwrap_or(default), min, max))
    }

    /// An absolute path to a file the daemon must be able to read (a password, a certificate, a key).
    fn file(&mut self, path: &str, value: Option<&String>) -> Option<Option<PathBuf>> {
        let file = self.optional(path, value, |text| absolute(text))?;
        if let Some(file) = &file {
            self.ok(path, readable(file))?;
        }
        Some(file)
    }

    /// Reads the table at `path` into its mirror key by key, so that every key of the wrong type and every
    /// unknown key is reported, not only the first; those keys are left out of the mirror.
    fn table<T: DeserializeOwned + Default>(
        &mut self,
        path: &str,
        value: Option<&Value>,
        expected: &str,
    ) -> T {
        let Some(value) = value else {
            return T::default();
        };
        let Some(dict) = value.as_dict() else {
            let found = type_name(&value.to_actual());
            self.report(path, format!("expected {expected}, found {found}"));
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
                Some(form) => {
                    valid.insert(key.clone(), (*form).clone());
                }
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
    fn finish(mut self, config: Option<Config>) -> Result<Config, Vec<ConfigError>> {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by_cached_key(|(path, _)| self.rank(path));
        match config {
            Some(config) if errors.is_empty() => Ok(config),
            _ => Err(errors
                .into_iter()
                .map(|(path, message)| ConfigError::new(self.label(&path), message))
                .collect()),
        }
    }

    /// Sorts by key as the mirrors declare them (unknown keys after, by name), and entries by index.
    fn rank(&self, path: &str) -> Vec<(usize, String, usize)> {
        let mut table = String::new();
        segments(path)
            .map(|(name, index)| {
                let position = self
                    .orders
                    .get(&table)
                    .and_then(|keys| keys.iter().position(|key| *key == name));
                table = key_path(&table, name);
                if let Some(index) = index {
                    table.push_str(&format!("[{index}]"));
                }
                (
                    position.unwrap_or(usize::MAX),
                    name.to_string(),
                    index.unwrap_or(0),
                )
            })
            .collect()
    }

    /// `path` with the drop-in or variable that set its value, or the array holding it: a table merged from
    /// several layers has no one origin.
    fn label(&self, path: &str) -> String {
        let mut value = Some(self.root);
        let mut tag = None;
        for (name, index) in segments(path) {
            value = value.and_then(|table| table.as_dict()?.get(name));
            if let Some(found) = value.filter(|found| found.as_dict().is_none()) {
                tag = Some(found.tag());
            }
            if let Some(index) = index {
                value = value.and_then(|array| array.as_array()?.get(index));
            }
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
    path.split('.').map(|segment| {
        match segment
            .strip_suffix(']')
            .and_then(|rest| rest.split_once('['))
        {
            Some((name, index)) => (name, index.parse().ok()),
            None => (segment, None),
        }
    })
}

/// A mirror's complaint about `value` in the words of the rest of the messages.
fn describe(error: &figment::Error, value: &Value) -> String {
    match &error.kind {
        // toml hands serde a date-time as a table of one private key.
        Kind::InvalidType(_, expected) if value.find_ref("$__toml_private_datetime").is_some() => {
            format!("expected {}, found a date-time", expected_name(expected))
        }
        Kind::InvalidType(actual, expected) => {
            format!(
                "expected {}, found {}",
                expected_name(expected),
                type_name(actual)
            )
        }
        Kind::UnknownField(..) => "unknown key".to_string(),
        other => other.to_string(),
    }
}

/// serde's name for what a mirror expects, where it is not already a phrase.
fn expected_name(expected: &str) -> &str {
    match expected {
        "i64" => "an integer",
        // The only floats are the spot timings.
        "f64" => "a number of seconds",
        other => other,
    }
}

fn type_name(actual: &Actual) -> String {
    match actual {
        Actual::Str(_) => "a string",
        Actual::Signed(_) | Actual::Unsigned(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Bool(_) => "a boolean",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        other => return other.to_string(),
    }
    .to_string()
}

fn check_hub(c: &mut Checker, hub: &HubFile) -> Option<HubConfig> {
    let id = c.required("hub.id", hub.id.as_deref());
    let id = id.and_then(|id| c.ok("hub.id", hub_id(id)));
    let state_dir = c.required("hub.state_dir", hub.state_dir.as_deref());
    let state_dir = state_dir.and_then(|dir| c.ok("hub.state_dir", absolute(dir)));
    // systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; the key overrides both.
    let default_runtime = c.env.runtime_dir.unwrap_or(Path::new(DEFAULT_RUNTIME_DIR));
    let runtime_dir = c.optional("hub.runtime_dir", hub.runtime_dir.as_deref(), absolute);
    let clock = c.optional("hub.clock", hub.clock.as_deref(), |clock| match clock {
        "ntp" => Ok(ClockPolicy::Ntp),
        "trusted" => Ok(ClockPolicy::Trusted),
        other => Err(format!("{} is not a clock policy: use \"ntp\" (trust the clock only while the kernel says it is synchronised) or \"trusted\" (a real-time clock or other source you vouch for)", q(other))),
    });
    Some(HubConfig {
        id: id?,
        state_dir: state_dir?,
        runtime_dir: runtime_dir?.unwrap_or_else(|| default_runtime.to_path_buf()),
        clock: clock?.unwrap_or_default(),
    })
}

fn check_mqtt(
    c: &mut Checker,
    section: Option<&Value>,
    hub_id: Option<&str>,
) -> Option<MqttConfig> {
    let m: MqttFile = c.table("mqtt", section, "a table");
    let url = c.required("mqtt.url", m.url.as_deref());
    let url = url.and_then(|url| c.ok("mqtt.url", parse_broker_url(url)));
    let prefix = m.topic_prefix.as_deref().unwrap_or(DEFAULT_TOPIC_PREFIX);
    let topic_prefix = c.ok("mqtt.topic_prefix", check_topic_prefix(prefix));
    let client_id = match &m.client_id {
        Some(client_id) => c.ok("mqtt.client_id", non_empty(client_id)),
        None => hub_id.map(|id| format!("vitalsd-{id}")),
    };
    let username = c.optional("mqtt.username", m.username.as_deref(), non_empty);
    let password_file = c.file("mqtt.password_file", m.password_file.as_ref());
    let credential = c.optional(
        "mqtt.password_credential",
        m.password_credential.as_deref(),
        credential_name,
    );
    // A credential is checked where systemd provides it, as in the unit's ExecStartPre.
    let credential = match (credential, c.env.credentials_dir) {
        (Some(Some(name)), Some(dir)) => c
            .ok("mqtt.password_credential", readable(&dir.join(&name)))
            .map(|()| Some(name)),
        (credential, _) => credential,
    };
    let ca_file = c.file("mqtt.ca_file", m.ca_file.as_ref());
    let client_cert_file = c.file("mqtt.client_cert_file", m.client_cert_file.as_ref());
    let client_key_file = c.file("mqtt.client_key_file", m.client_key_file.as_ref());
    let keep_alive = c.int("mqtt.keep_alive_s", m.keep_alive_s, 30, 5, 3600);
    let reconnect_min = c.int(
        "mqtt.reconnect_min_ms",
        m.reconnect_min_ms,
        500,
        1,
        3_600_000,
    );
    let reconnect_max = c.int("mqtt.reconnect_max_s", m.reconnect_max_s, 60, 1, 86_400);
    let window = c.int("mqtt.window", m.window, 128, 1, 256);
    let protocol = c.optional("mqtt.protocol", m.protocol.as_deref(), |protocol| match protocol {
        "5" => Ok(MqttProtocol::V5),
        "3.1.1" => Ok(MqttProtocol::V311),
        other => Err(format!("{} is not a supported MQTT version: use \"5\" (the default) or \"3.1.1\" (for brokers without MQTT 5; it cannot tell a refused reading from a delivered one)", q(other))),
    });

    let has_file = c.given("mqtt.password_file", &m.password_file);
    let has_credential = c.given("mqtt.password_credential", &m.password_credential);
    if has_file && has_credential {
        c.report(
            "mqtt.password_credential",
            "conflicts with mqtt.password_file: set only one",
        );
    }
    if (has_file || has_credential) && !c.given("mqtt.username", &m.username) {
        c.report(
            "mqtt.username",
            "missing (MQTT sends a password only together with a user name)",
        );
    }
    let tls_files = [
        ("mqtt.ca_file", c.given("mqtt.ca_file", &m.ca_file)),
        (
            "mqtt.client_cert_file",
            c.given("mqtt.client_cert_file", &m.client_cert_file),
        ),
        (
            "mqtt.client_key_file",
            c.given("mqtt.client_key_file", &m.client_key_file),
        ),
    ];
    if url.as_ref().is_some_and(|url| !url.tls) {
        for (key, _) in tls_files.iter().filter(|(_, given)| *given) {
            c.report(key, "needs an mqtts:// url");
        }
    } else {
        match (tls_files[1].1, tls_files[2].1) {
            (true, false) => c.report(
                "mqtt.client_cert_file",
                "given without mqtt.client_key_file",
            ),
            (false, true) => c.report(
                "mqtt.client_key_file",
                "given without mqtt.client_cert_file",
            ),
            _ => {}
        }
    }
    if let (Some(min_ms), Some(max_s)) = (reconnect_min, reconnect_max) {
        if min_ms > max_s * 1000 {
            let message = format!("{min_ms} ms is longer than mqtt.reconnect_max_s ({max_s} s)");
            c.report("mqtt.reconnect_min_ms", message);
        }
    }

    let password = match (password_file?, credential?) {
        (Some(file), _) => Some(SecretSource::File(file)),
        (None, Some(name)) => Some(SecretSource::Credential(name)),
        (None, None) => None,
    };
    let url = url?;
    Some(MqttConfig {
        host: url.host,
        port: url.port,
        tls: url.tls,
        topic_prefix: topic_prefix?,
        client_id: client_id?,
        username: username?,
        password,
        ca_file: ca_file?,
        client_cert_file: client_cert_file?,
        client_key_file: client_key_file?,
        keep_alive: Duration::from_secs(keep_alive?),
        reconnect_min: Duration::from_millis(reconnect_min?),
        reconnect_max: Duration::from_secs(reconnect_max?),
        window: usize::try_from(window?).ok()?,
        protocol: protocol?.unwrap_or_default(),
    })
}

/// Reads the TLS files and the password as the uplink will, so a file that would stop it is an
/// error now rather than an exit at start.
fn check_mqtt_files(c: &mut Checker, mqtt: &MqttConfig) {
    if mqtt.tls {
        if let Err(error) = super::tls_files::client_config(mqtt) {
            c.report(&key_path("mqtt", error.key), error.file_problem());
        }
    }
    let Some(source) = &mqtt.password else {
        return;
    };
    let credentials_dir = c.env.credentials_dir;
    let (key, shown) = match source {
        SecretSource::File(path) => ("mqtt.password_file", path.clone()),
        SecretSource::Credential(name) => match credentials_dir {
            Some(dir) => ("mqtt.password_credential", dir.join(name)),
            // Readable only where systemd provides it, as in the unit's ExecStartPre.
            None => return,
        },
    };
    // The password itself never enters a message.
    let problem = match source.read_from(credentials_dir.map(|dir| dir.as_os_str().to_owned())) {
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

fn check_outbox(c: &mut Checker, section: Option<&Value>) -> Option<OutboxConfig> {
    let o: OutboxFile = c.table("outbox", section, "a table");
    let max_pending = c.int("outbox.max_pending", o.max_pending, 1_000_000, 1, i64::MAX);
    let retention = c.int(
        "outbox.dedup_retention_days",
        o.dedup_retention_days,
        400,
        1,
        36_500,
    );
    let fold = c.int("outbox.fold_log_seconds", o.fold_log_seconds, 1, 0, 86_400);
    Some(OutboxConfig {
        max_pending: max_pending?,
        dedup_retention_days: u32::try_from(retention?).ok()?,
        fold_log_after: Some(fold?)
            .filter(|&seconds| seconds > 0)
            .map(Duration::from_secs),
    })
}

fn check_ble(c: &mut Checker, section: Option<&Value>) -> Option<BleConfig> {
    let b: BleFile = c.table("ble", section, "a table");
    let adapter = c.ok(
        "ble.adapter",
        adapter_name(b.adapter.as_deref().unwrap_or("hci0")),
    );
    let admin_group = c.optional("ble.admin_group", b.admin_group.as_deref(), system_group);
    Some(BleConfig {
        enabled: b.enabled.unwrap_or(true),
        adapter: adapter?,
        admin_group: admin_group?,
    })
}

fn check_log(c: &mut Checker, section: Option<&Value>) -> Option<LogConfig> {
    let l: LogFile = c.table("log", section, "a table");
    let level = non_empty(l.level.as_deref().unwrap_or("info")).and_then(|level| {
        match tracing_subscriber::EnvFilter::try_new(&level) {
            Ok(_) => Ok(level),
            Err(error) => Err(format!("invalid log filter {}: {error}", q(&level))),
        }
    });
    Some(LogConfig {
        level: c.ok("log.level", level)?,
    })
}

fn check_serial(c: &mut Checker, section: Option<&Value>) -> Option<Vec<SerialConfig>> {
    let entries = match section {
        None => return Some(Vec::new()),
        Some(Value::Array(_, entries)) => entries,
        Some(other) => {
            let found = type_name(&other.to_actual());
            c.report(
                SERIAL,
                format!("expected an array of tables ([[serial]]), found {found}"),
            );
            return None;
        }
    };
    if entries.len() > MAX_SERIAL_PORTS {
        let message = format!(
            "{} entries; a hub reads at most {MAX_SERIAL_PORTS} serial ports",
            entries.len()
        );
        c.report(SERIAL, message);
        return None;
    }
    let mut ports = Some(Vec::new());
    let mut locations: HashMap<PortLocation, usize> = HashMap::new();
    // Two paths that lead to one device node (a by-id link and its /dev/ttyUSB0) are one port.
    let mut devices: HashMap<PathBuf, usize> = HashMap::new();
    let mut ids: HashMap<String, usize> = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let path = format!("{SERIAL}[{index}]");
        let (location, device_id, port) = check_serial_entry(c, &path, entry);
        // Duplicates are checked on whatever is valid, so they show up together with the entry's other errors.
        let mut duplicate_path = false;
        if let Some(location) = &location {
            if let Some(first) = locations.get(location) {
                duplicate_path = true;
                let key = match location {
                    PortLocation::Path(_) => "path",
                    PortLocation::Usb { .. } => "match",
                };
                let message = format!(
                    "{} is already used by {SERIAL}[{first}]",
                    location.describe()
                );
                c.report(&key_path(&path, key), message);
            } else {
                locations.insert(location.clone(), index);
                if let PortLocation::Path(file) = location {
                    if let Ok(device) = std::fs::canonicalize(file) {
                        if let Some(first) = devices.get(&device) {
                            duplicate_path = true;
                            let (file, device) = (file.display(), device.display());
                            let message = format!(
                                "{file} leads to {device}, already read by {SERIAL}[{first}]"
                            );
                            c.report(&key_path(&path, "path"), message);
                        } else {
                            devices.insert(device, index);
                        }
                    }
                }
            }
        }
        if let Some((id, given)) = &device_id {
            match ids.get(id) {
                // The same path already explains a clash of default ids.
                Some(first) if *given || !duplicate_path => {
                    let message = if *given {
                        format!("{} is already used by {SERIAL}[{first}]", q(id))
                    } else {
                        format!("{} (the default from path) is already used by {SERIAL}[{first}]: set id", q(id))
                    };
                    c.report(&key_path(&path, "id"), message);
                }
                Some(_) => {}
                None => {
                    ids.insert(id.clone(), index);
                }
            }
        }
        match (&mut ports, port) {
            (Some(ports), Some(port)) => ports.push(port),
            _ => ports = None,
        }
    }
    ports
}

/// One `[[serial]]` entry: its location and device id (and whether the id was given) for the duplicate
/// checks, and the whole entry if it is valid.
#[allow(clippy::type_complexity)]
fn check_serial_entry(
    c: &mut Checker,
    path: &str,
    entry: &Value,
) -> (
    Option<PortLocation>,
    Option<(String, bool)>,
    Option<SerialConfig>,
) {
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
    let protocol = protocol.and_then(|name| c.ok(&key("protocol"), serial_protocol(name)));
    let device_id = match (&s.id, &location) {
        (Some(id), _) => c.ok(&key("id"), device_id(id)).map(|id| (id, true)),
        (None, _) if c.rejected.contains(&key("id")) => None,
        (
            None,
            Some(PortLocation::Usb {
                vid,
                pid,
                serial_number,
            }),
        ) => {
            let id = match serial_number {
                Some(serial) => format!("serial:usb-{vid:04x}-{pid:04x}-{serial}"),
                None => format!("serial:usb-{vid:04x}-{pid:04x}"),
            };
            device_id(&id).ok().map(|id| (id, false))
        }
        (None, Some(PortLocation::Path(file))) => {
            let derived = file
                .file_name()
                .map(|name| format!("serial:{}", name.to_string_lossy()));
            let derived = derived.and_then(|id| device_id(&id).ok());
            if derived.is_none() {
                let message =
                    "names no device file, so the default id cannot be derived from it: set id";
                c.report(&key("path"), message);
            }
            derived.map(|id| (id, false))
        }
        (None, None) => None,
    };
    let baud_rate = c.optional(&key("baud_rate"), s.baud_rate, |rate| {
        range(rate, 300, 4_000_000)
    });
    let parity = c.optional(&key("parity"), s.parity.as_deref(), |parity| match parity {
        "none" => Ok(Parity::None),
        "odd" => Ok(Parity::Odd),
        "even" => Ok(Parity::Even),
        other => Err(format!(
            "{} is not a parity: use \"none\", \"odd\" or \"even\"",
            q(other)
        )),
    });
    let select_format = s.select_format.unwrap_or(false);
    if let (true, Some(protocol)) = (select_format, protocol) {
        if !protocol.name().starts_with("nonin-") {
            let message = format!(
                "only Nonin data formats can be selected, not {}",
                q(protocol.name())
            );
            c.report(&key("select_format"), message);
        }
    }
    let defaults = SpotRule::default();
    let stable_for = c.optional(&key("spot_stable_s"), s.spot_stable_s, seconds);
    let repeat_every = c.optional(&key("spot_repeat_s"), s.spot_repeat_s, seconds);
    let config = (|| {
        Some(SerialConfig {
            path: location.clone()?,
            protocol: protocol?,
            device_id: device_id.clone()?.0,
            baud_rate: baud_rate?.map(u32::try_from).transpose().ok()?,
            parity: parity?,
            select_format,
            spot: SpotRule {
                stable_for: stable_for?.unwrap_or(defaults.stable_for),
                repeat_every: repeat_every?.unwrap_or(defaults.repeat_every),
            },
        })
    })();
    (location, device_id, config)
}

fn check_usb_match(c: &mut Checker, path: &str, table: Option<&Value>) -> Option<PortLocation> {
    let usb: UsbMatch = c.table(path, table, &format!("a table such as {USB_EXAMPLE}"));
    let mut id = |name: &str, value: Option<i64>| {
        let key = key_path(path, name);
        let id = c.required(&key, value)?;
        c.ok(&key, range(id, 0, 0xFFFF))
            .and_then(|id| u16::try_from(id).ok())
    };
    let (vid, pid) = (id("vid", usb.vid), id("pid", usb.pid));
    let serial_number = c.optional(&key_path(path, "serial"), usb.serial.as_deref(), non_empty);
    Some(PortLocation::Usb {
        vid: vid?,
        pid: pid?,
        serial_number: serial_number?,
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

fn range(number: i64, min: i64, max: i64) -> Result<u64, String> {
    if (min..=max).contains(&number) {
        // Every range starts at 0 or above.
        Ok(number.unsigned_abs())
    } else if max == i64::MAX {
        Err(format!("must be at least {min}, found {number}"))
    } else {
        Err(format!("must be between {min} and {max}, found {number}"))
    }
}

/// Seconds, more than 0 and at most a day.
fn seconds(seconds: f64) -> Result<Duration, String> {
    // The comparisons are false for NaN.
    if seconds > 0.0 && seconds <= MAX_SPOT_SECONDS {
        return Ok(Duration::from_secs_f64(seconds));
    }
    Err(format!(
        "must be more than 0 and at most {MAX_SPOT_SECONDS} seconds, found {seconds}"
    ))
}

fn non_empty(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(text.to_string())
}

fn absolute(text: &str) -> Result<PathBuf, String> {
    if !text.starts_with('/') {
        return Err(format!("must be an absolute path, found {}", q(text)));
    }
    Ok(PathBuf::from(text))
}

fn readable(file: &Path) -> Result<(), String> {
    // Reading one byte also catches a directory, which opens fine.
    match std::fs::File::open(file).and_then(|mut opened| opened.read(&mut [0u8; 1])) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "cannot read {}: {}",
            file.display(),
            io_message(&error)
        )),
    }
}

/// Lowercase because it goes into MQTT topics, where case matters and technicians read it aloud.
fn hub_id(id: &str) -> Result<String, String> {
    let valid = (1..=MAX_HUB_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !valid {
        return Err(format!(
            "{} is not a valid hub id: use 1 to {MAX_HUB_ID_CHARS} characters of a-z, 0-9, '-' and '_'",
            q(id)
        ));
    }
    Ok(id.to_string())
}

/// Device ids go into payloads and reading ids (joined with `|`), and may go into topics later.
fn device_id(id: &str) -> Result<String, String> {
    let valid = (1..=MAX_DEVICE_ID_CHARS).contains(&id.chars().count())
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '|');
    if !valid {
        return Err(format!(
            "{} is not a valid device id: use 1 to {MAX_DEVICE_ID_CHARS} characters without spaces, \
             control characters, '/' or '|'",
            q(id)
        ));
    }
    Ok(id.to_string())
}

fn adapter_name(name: &str) -> Result<String, String> {
    let name = non_empty(name)?;
    if !name.chars().all(|ch| ch.is_ascii_alphanumeric()) {
        return Err(format!(
            "{} is not an adapter name such as \"hci0\"",
            q(&name)
        ));
    }
    Ok(name)
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
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "{} is not a credential name: use the name given to LoadCredential= (no '/')",
            q(name)
        ));
    }
    Ok(name.to_string())
}

fn serial_protocol(name: &str) -> Result<Protocol, String> {
    let known: Vec<&str> = Protocol::ALL
        .iter()
        .filter(|protocol| protocol.transport() == Transport::Serial)
        .map(|protocol| protocol.name())
        .collect();
    match Protocol::from_name(name) {
        Some(protocol) if protocol.transport() == Transport::Serial => Ok(protocol),
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

fn check_topic_prefix(prefix: &str) -> Result<String, String> {
    let found = q(prefix);
    if prefix.is_empty() {
        Err("must not be empty".to_string())
    } else if prefix.contains(['+', '#']) {
        Err(format!(
            "must not contain the MQTT wildcards '+' or '#', found {found}"
        ))
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Err(format!("must not start or end with '/', found {found}"))
    } else if prefix.contains("//") {
        Err(format!("must not contain an empty level, found {found}"))
    } else if prefix.starts_with('$') {
        Err(format!(
            "must not start with '$' (reserved for the broker), found {found}"
        ))
    } else if prefix.contains('\0') {
        Err("must not contain a NUL character".to_string())
    } else {
        Ok(prefix.to_string())
    }
}

#[derive(Debug, PartialEq)]
struct BrokerUrl {
    host: String,
    port: u16,
    tls: bool,
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
    let url = url::Url::parse(text).map_err(|error| {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        match error {
            ParseError::EmptyHost | ParseError::InvalidPort
                if authority.matches(':').count() > 1 && !authority.contains(['[', '@']) =>
            {
                "an IPv6 address must be in brackets, as in mqtt://[::1]:1883".to_string()
            }
            ParseError::EmptyHost => "missing host".to_string(),
            ParseError::InvalidPort => "bad port: expected a number from 1 to 65535".to_string(),
            ParseError::InvalidIpv6Address => "invalid IPv6 address in brackets".to_string(),
            ParseError::InvalidDomainCharacter => INVALID_HOST.to_string(),
            other => format!("not a url: {other}"),
        }
    })?;
    let (tls, default_port) = match url.scheme() {
        "mqtt" => (false, 1883),
        "mqtts" => (true, 8883),
        other => return Err(format!("unsupported scheme {}", q(other))),
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password: use mqtt.username and mqtt.password_file or \
                    mqtt.password_credential"
            .to_string());
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "unexpected path, query or fragment: the url names only the broker".to_string(),
        );
    }
    let host = match url.host() {
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
        return Err(INVALID_HOST.to_string());
    }
    match url.port().unwrap_or(default_port) {
        0 => Err("bad port: expected a number from 1 to 65535".to_string()),
        port => Ok(BrokerUrl { host, port, tls }),
    }
}

const INVALID_HOST: &str =
    "invalid host: use a name of letters, digits, '-', '.' and '_', or an IP address";

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

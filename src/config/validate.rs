//! The second stage: walks the merged TOML table by hand into a validated [`Config`], collecting every error
//! with its key path: wrong types, missing and unknown keys, out-of-range values and cross-field conflicts.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::{Table, Value};

use super::file::{key_path, Layers, Sources};
use super::{
    io_message, AdminGroup, BleConfig, Config, ConfigError, HubConfig, LogConfig, MqttConfig,
    MqttProtocol, OutboxConfig, SecretSource, SerialConfig,
};
use crate::clock::ClockPolicy;
use crate::decode::{Parity, Protocol, Transport};
use crate::serial::ports::PortLocation;
use crate::spot::SpotRule;

/// The top-level tables; the environment overlay may set keys in these.
pub(super) const TABLE_SECTIONS: [&str; 5] = ["hub", "mqtt", "outbox", "ble", "log"];
/// The array of tables, one per serial device.
pub(super) const SERIAL_SECTION: &str = "serial";

const HUB_KEYS: &[&str] = &["id", "state_dir", "runtime_dir", "clock"];
const BLE_KEYS: &[&str] = &["enabled", "adapter", "admin_group"];
const MQTT_KEYS: &[&str] = &[
    "url",
    "topic_prefix",
    "client_id",
    "username",
    "password_file",
    "password_credential",
    "ca_file",
    "client_cert_file",
    "client_key_file",
    "keep_alive_s",
    "reconnect_min_ms",
    "reconnect_max_s",
    "window",
    "protocol",
];
const OUTBOX_KEYS: &[&str] = &["max_pending", "dedup_retention_days", "fold_log_seconds"];
const SERIAL_KEYS: &[&str] = &[
    "path",
    "match",
    "protocol",
    "id",
    "baud_rate",
    "parity",
    "select_format",
    "spot_stable_s",
    "spot_repeat_s",
];
const LOG_KEYS: &[&str] = &["level"];
/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;

const DEFAULT_TOPIC_PREFIX: &str = "vitalsd/v1";
const DEFAULT_KEEP_ALIVE_S: i64 = 30;
const DEFAULT_RECONNECT_MIN_MS: i64 = 500;
const DEFAULT_RECONNECT_MAX_S: i64 = 60;
const DEFAULT_WINDOW: i64 = 128;
const DEFAULT_MAX_PENDING: i64 = 1_000_000;
const DEFAULT_DEDUP_RETENTION_DAYS: i64 = 400;
const DEFAULT_FOLD_LOG_SECONDS: i64 = 1;
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_ADAPTER: &str = "hci0";
const DEFAULT_RUNTIME_DIR: &str = "/run/vitalsd";
const MQTT_PORT: u16 = 1883;
const MQTTS_PORT: u16 = 8883;
const MAX_HUB_ID_CHARS: usize = 64;
const MAX_DEVICE_ID_CHARS: usize = 128;
/// Spot timings above a day are taken for a unit mistake (milliseconds given as seconds).
const MAX_SPOT_SECONDS: f64 = 86_400.0;

/// Turns the merged layers into a [`Config`], or every error found; `credentials_dir` is
/// `$CREDENTIALS_DIRECTORY` if systemd set it, to check that a credential named in the file exists.
pub(super) fn validate(
    layers: &Layers,
    credentials_dir: Option<&Path>,
) -> Result<Config, Vec<ConfigError>> {
    let mut checker = Checker {
        sources: &layers.sources,
        credentials_dir,
        errors: Vec::new(),
    };
    let root = &layers.table;
    let (hub_id, state_dir, runtime_dir, clock) = checker.hub(root);
    let mqtt = checker.mqtt(root, hub_id.as_deref());
    if let Some(mqtt) = &mqtt {
        checker.mqtt_files(mqtt);
    }
    let outbox = checker.outbox(root);
    let ble = checker.ble(root);
    let serial = checker.serial(root);
    let log = checker.log(root);
    checker.unknown_sections(root);
    match (
        hub_id,
        state_dir,
        runtime_dir,
        clock,
        mqtt,
        outbox,
        ble,
        serial,
        log,
    ) {
        (
            Some(id),
            Some(state_dir),
            Some(runtime_dir),
            Some(clock),
            Some(mqtt),
            Some(outbox),
            Some(ble),
            Some(serial),
            Some(log),
        ) if checker.errors.is_empty() => Ok(Config {
            hub: HubConfig {
                id,
                state_dir,
                runtime_dir,
                clock,
            },
            mqtt,
            outbox,
            ble,
            serial,
            log,
        }),
        _ => Err(checker.errors),
    }
}

/// A key's value: absent, present but invalid (already reported), or valid.
enum Field<T> {
    Absent,
    Invalid,
    Valid(T),
}

impl<T> Field<T> {
    /// The value, or `default` if the key is absent; `None` if it is invalid.
    fn or(self, default: T) -> Option<T> {
        match self {
            Field::Absent => Some(default),
            Field::Invalid => None,
            Field::Valid(value) => Some(value),
        }
    }

    /// For keys without a default: `Some(None)` if absent, `None` if invalid.
    fn optional(self) -> Option<Option<T>> {
        match self {
            Field::Absent => Some(None),
            Field::Invalid => None,
            Field::Valid(value) => Some(Some(value)),
        }
    }

    fn is_present(&self) -> bool {
        !matches!(self, Field::Absent)
    }
}

/// A table being read, such as `mqtt` or `serial[1]`.
struct Section<'t> {
    path: String,
    table: Option<&'t Table>,
    /// The section exists but is not a table: its keys are not reported missing again.
    broken: bool,
}

impl<'t> Section<'t> {
    fn key(&self, key: &str) -> String {
        key_path(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'t Value> {
        self.table.and_then(|table| table.get(key))
    }
}

/// Reads values and collects errors.
struct Checker<'a> {
    sources: &'a Sources,
    credentials_dir: Option<&'a Path>,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        let message = shorten_quoted(&message.into());
        self.errors
            .push(ConfigError::new(self.sources.label(path), message));
    }

    fn wrong_type(&mut self, path: &str, expected: &str, found: &Value) {
        self.report(
            path,
            format!("expected {expected}, found {}", type_name(found)),
        );
    }

    fn section<'t>(&mut self, root: &'t Table, name: &str) -> Section<'t> {
        match root.get(name) {
            None => Section {
                path: name.to_string(),
                table: None,
                broken: false,
            },
            Some(Value::Table(table)) => Section {
                path: name.to_string(),
                table: Some(table),
                broken: false,
            },
            Some(other) => {
                self.wrong_type(name, "a table", other);
                Section {
                    path: name.to_string(),
                    table: None,
                    broken: true,
                }
            }
        }
    }

    fn field<T>(
        &mut self,
        section: &Section<'_>,
        key: &str,
        read: impl FnOnce(&mut Self, &str, &Value) -> Option<T>,
    ) -> Field<T> {
        match section.get(key) {
            None => Field::Absent,
            Some(value) => match read(self, &section.key(key), value) {
                Some(value) => Field::Valid(value),
                None => Field::Invalid,
            },
        }
    }

    /// The value of a required key; reports it missing if absent.
    fn required<T>(&mut self, section: &Section<'_>, key: &str, field: Field<T>) -> Option<T> {
        match field {
            Field::Absent => {
                if !section.broken {
                    self.report(&section.key(key), "missing");
                }
                None
            }
            Field::Invalid => None,
            Field::Valid(value) => Some(value),
        }
    }

    /// Reports keys in sorted order, which does not depend on whether toml preserves the file's order.
    fn unknown_keys(&mut self, section: &Section<'_>, known: &[&str]) {
        let mut unknown: Vec<&String> = section
            .table
            .into_iter()
            .flat_map(Table::keys)
            .filter(|key| !known.contains(&key.as_str()))
            .collect();
        unknown.sort();
        for key in unknown {
            self.report(&section.key(key), "unknown key");
        }
    }

    fn unknown_sections(&mut self, root: &Table) {
        let mut entries: Vec<(&String, &Value)> = root.iter().collect();
        entries.sort_by_key(|(key, _)| *key);
        for (key, value) in entries {
            if !TABLE_SECTIONS.contains(&key.as_str()) && key != SERIAL_SECTION {
                let is_section = value.is_table()
                    || value
                        .as_array()
                        .is_some_and(|a| a.iter().all(Value::is_table));
                self.report(
                    &key_path("", key),
                    if is_section {
                        "unknown section"
                    } else {
                        "unknown key"
                    },
                );
            }
        }
    }

    fn string(&mut self, path: &str, value: &Value) -> Option<String> {
        match (value, self.sources.env_text(path)) {
            (Value::String(text), _) => Some(text.clone()),
            // A variable's text looked like a number or boolean, but this key wants the text.
            (_, Some(text)) => Some(text.to_string()),
            (other, None) => {
                self.wrong_type(path, "a string", other);
                None
            }
        }
    }

    fn non_empty_string(&mut self, path: &str, value: &Value) -> Option<String> {
        let text = self.string(path, value)?;
        if text.is_empty() {
            self.report(path, "must not be empty");
            return None;
        }
        Some(text)
    }

    fn integer(&mut self, path: &str, value: &Value, min: i64, max: i64) -> Option<i64> {
        let Value::Integer(number) = *value else {
            self.wrong_type(path, "an integer", value);
            return None;
        };
        if (min..=max).contains(&number) {
            return Some(number);
        }
        if max == i64::MAX {
            self.report(path, format!("must be at least {min}, found {number}"));
        } else {
            self.report(
                path,
                format!("must be between {min} and {max}, found {number}"),
            );
        }
        None
    }

    /// Seconds as an integer or a float, more than 0.
    fn seconds(&mut self, path: &str, value: &Value) -> Option<Duration> {
        let seconds = match *value {
            Value::Integer(number) => number as f64,
            Value::Float(number) => number,
            _ => {
                self.wrong_type(path, "a number of seconds", value);
                return None;
            }
        };
        // The comparisons are false for NaN.
        if seconds > 0.0 && seconds <= MAX_SPOT_SECONDS {
            return Some(Duration::from_secs_f64(seconds));
        }
        self.report(
            path,
            format!("must be more than 0 and at most {MAX_SPOT_SECONDS} seconds, found {seconds}"),
        );
        None
    }

    fn absolute_path(&mut self, path: &str, value: &Value) -> Option<PathBuf> {
        let text = self.string(path, value)?;
        if !text.starts_with('/') {
            self.report(path, format!("must be an absolute path, found {text:?}"));
            return None;
        }
        Some(PathBuf::from(text))
    }

    /// An absolute path to a file the daemon must be able to read (a password, a certificate, a key).
    fn readable_file(&mut self, path: &str, value: &Value) -> Option<PathBuf> {
        let file = self.absolute_path(path, value)?;
        self.check_readable(path, &file)?;
        Some(file)
    }

    fn check_readable(&mut self, path: &str, file: &Path) -> Option<()> {
        // Reading one byte also catches a directory, which opens fine.
        match std::fs::File::open(file).and_then(|mut opened| opened.read(&mut [0u8; 1])) {
            Ok(_) => Some(()),
            Err(error) => {
                self.report(
                    path,
                    format!("cannot read {}: {}", file.display(), io_message(&error)),
                );
                None
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn hub(
        &mut self,
        root: &Table,
    ) -> (
        Option<String>,
        Option<PathBuf>,
        Option<PathBuf>,
        Option<ClockPolicy>,
    ) {
        let hub = self.section(root, "hub");
        let id = self.field(&hub, "id", |c, path, value| {
            let id = c.string(path, value)?;
            if !is_hub_id(&id) {
                c.report(
                    path,
                    format!(
                        "{id:?} is not a valid hub id: use 1 to {MAX_HUB_ID_CHARS} characters of a-z, 0-9, '-' and '_'"
                    ),
                );
                return None;
            }
            Some(id)
        });
        let id = self.required(&hub, "id", id);
        let state_dir = self.field(&hub, "state_dir", Self::absolute_path);
        let state_dir = self.required(&hub, "state_dir", state_dir);
        // systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; the key overrides both.
        let default_runtime = std::env::var_os("RUNTIME_DIRECTORY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        let runtime_dir = self
            .field(&hub, "runtime_dir", Self::absolute_path)
            .or(default_runtime);
        let clock = self
            .field(&hub, "clock", |c, path, value| {
                match c.string(path, value)?.as_str() {
                    "ntp" => Some(ClockPolicy::Ntp),
                    "trusted" => Some(ClockPolicy::Trusted),
                    other => {
                        c.report(
                            path,
                            format!("{other:?} is not a clock policy: use \"ntp\" (trust the clock only while the kernel says it is synchronised) or \"trusted\" (a real-time clock or other source you vouch for)"),
                        );
                        None
                    }
                }
            })
            .or(ClockPolicy::default());
        self.unknown_keys(&hub, HUB_KEYS);
        (id, state_dir, runtime_dir, clock)
    }

    fn boolean(&mut self, path: &str, value: &Value) -> Option<bool> {
        match value {
            Value::Boolean(flag) => Some(*flag),
            other => {
                self.wrong_type(path, "a boolean", other);
                None
            }
        }
    }

    fn ble(&mut self, root: &Table) -> Option<BleConfig> {
        let ble = self.section(root, "ble");
        let enabled = self.field(&ble, "enabled", Self::boolean);
        let adapter = self.field(&ble, "adapter", |c, path, value| {
            let name = c.non_empty_string(path, value)?;
            if !name.chars().all(|ch| ch.is_ascii_alphanumeric()) {
                c.report(
                    path,
                    format!("{name:?} is not an adapter name such as \"hci0\""),
                );
                return None;
            }
            Some(name)
        });
        let admin_group = self.field(&ble, "admin_group", Self::system_group);
        self.unknown_keys(&ble, BLE_KEYS);
        Some(BleConfig {
            enabled: enabled.or(true)?,
            adapter: adapter.or(DEFAULT_ADAPTER.to_string())?,
            admin_group: admin_group.optional()?,
        })
    }

    /// A group name that exists on this system (`/etc/group` or whatever NSS consults), with its id.
    fn system_group(&mut self, path: &str, value: &Value) -> Option<AdminGroup> {
        let name = self.non_empty_string(path, value)?;
        match nix::unistd::Group::from_name(&name) {
            Ok(Some(group)) => Some(AdminGroup {
                name,
                gid: group.gid.as_raw(),
            }),
            Ok(None) => {
                self.report(path, format!("no group {name:?} on this system (create it with groupadd, or leave the key out)"));
                None
            }
            Err(error) => {
                self.report(path, format!("cannot look up group {name:?}: {error}"));
                None
            }
        }
    }

    fn mqtt(&mut self, root: &Table, hub_id: Option<&str>) -> Option<MqttConfig> {
        let mqtt = self.section(root, "mqtt");
        let url = self.field(&mqtt, "url", |c, path, value| {
            let text = c.string(path, value)?;
            parse_broker_url(&text)
                .map_err(|message| c.report(path, message))
                .ok()
        });
        let url = self.required(&mqtt, "url", url);
        let topic_prefix = self.field(&mqtt, "topic_prefix", |c, path, value| {
            let prefix = c.string(path, value)?;
            check_topic_prefix(&prefix)
                .map_err(|message| c.report(path, message))
                .ok()?;
            Some(prefix)
        });
        let client_id = self.field(&mqtt, "client_id", Self::non_empty_string);
        let username = self.field(&mqtt, "username", Self::non_empty_string);
        let password_file = self.field(&mqtt, "password_file", Self::readable_file);
        let password_credential = self.field(&mqtt, "password_credential", Self::credential);
        let ca_file = self.field(&mqtt, "ca_file", Self::readable_file);
        let client_cert_file = self.field(&mqtt, "client_cert_file", Self::readable_file);
        let client_key_file = self.field(&mqtt, "client_key_file", Self::readable_file);
        let keep_alive_s = self.field(&mqtt, "keep_alive_s", |c, path, value| {
            c.integer(path, value, 5, 3600)
        });
        let reconnect_min_ms = self.field(&mqtt, "reconnect_min_ms", |c, path, value| {
            c.integer(path, value, 1, 3_600_000)
        });
        let reconnect_max_s = self.field(&mqtt, "reconnect_max_s", |c, path, value| {
            c.integer(path, value, 1, 86_400)
        });
        let window = self.field(&mqtt, "window", |c, path, value| {
            c.integer(path, value, 1, 256)
        });
        let protocol = self
            .field(&mqtt, "protocol", |c, path, value| {
                match c.string(path, value)?.as_str() {
                    "5" => Some(MqttProtocol::V5),
                    "3.1.1" => Some(MqttProtocol::V311),
                    other => {
                        c.report(
                            path,
                            format!("{other:?} is not a supported MQTT version: use \"5\" (the default) or \"3.1.1\" (for brokers without MQTT 5; it cannot tell a refused reading from a delivered one)"),
                        );
                        None
                    }
                }
            })
            .or(MqttProtocol::default());
        self.unknown_keys(&mqtt, MQTT_KEYS);

        if password_file.is_present() && password_credential.is_present() {
            self.report(
                &mqtt.key("password_credential"),
                "conflicts with mqtt.password_file: set only one",
            );
        }
        if (password_file.is_present() || password_credential.is_present())
            && !username.is_present()
        {
            self.report(
                &mqtt.key("username"),
                "missing (MQTT sends a password only together with a user name)",
            );
        }
        if let Some(url) = &url {
            for (key, field) in [
                ("ca_file", &ca_file),
                ("client_cert_file", &client_cert_file),
                ("client_key_file", &client_key_file),
            ] {
                if field.is_present() && !url.tls {
                    self.report(&mqtt.key(key), "needs an mqtts:// url");
                }
            }
        }
        if url.as_ref().is_none_or(|url| url.tls) {
            match (client_cert_file.is_present(), client_key_file.is_present()) {
                (true, false) => self.report(
                    &mqtt.key("client_cert_file"),
                    "given without mqtt.client_key_file",
                ),
                (false, true) => self.report(
                    &mqtt.key("client_key_file"),
                    "given without mqtt.client_cert_file",
                ),
                _ => {}
            }
        }
        let reconnect_min_ms = reconnect_min_ms.or(DEFAULT_RECONNECT_MIN_MS);
        let reconnect_max_s = reconnect_max_s.or(DEFAULT_RECONNECT_MAX_S);
        if let (Some(min_ms), Some(max_s)) = (reconnect_min_ms, reconnect_max_s) {
            if min_ms > max_s * 1000 {
                self.report(
                    &mqtt.key("reconnect_min_ms"),
                    format!("{min_ms} ms is longer than mqtt.reconnect_max_s ({max_s} s)"),
                );
            }
        }

        let client_id = match client_id {
            Field::Absent => hub_id.map(|id| format!("vitalsd-{id}")),
            Field::Invalid => None,
            Field::Valid(client_id) => Some(client_id),
        };
        let password = match (password_file.optional()?, password_credential.optional()?) {
            (Some(file), _) => Some(SecretSource::File(file)),
            (None, Some(name)) => Some(SecretSource::Credential(name)),
            (None, None) => None,
        };
        let url = url?;
        Some(MqttConfig {
            host: url.host,
            port: url.port,
            tls: url.tls,
            topic_prefix: topic_prefix.or(DEFAULT_TOPIC_PREFIX.to_string())?,
            client_id: client_id?,
            username: username.optional()?,
            password,
            ca_file: ca_file.optional()?,
            client_cert_file: client_cert_file.optional()?,
            client_key_file: client_key_file.optional()?,
            keep_alive: Duration::from_secs(
                u64::try_from(keep_alive_s.or(DEFAULT_KEEP_ALIVE_S)?).ok()?,
            ),
            reconnect_min: Duration::from_millis(u64::try_from(reconnect_min_ms?).ok()?),
            reconnect_max: Duration::from_secs(u64::try_from(reconnect_max_s?).ok()?),
            window: usize::try_from(window.or(DEFAULT_WINDOW)?).ok()?,
            protocol: protocol?,
        })
    }

    /// Reads the TLS files and the password as the uplink will, so a file that would stop it is an
    /// error now rather than an exit at start.
    fn mqtt_files(&mut self, mqtt: &MqttConfig) {
        if mqtt.tls {
            if let Err(error) = super::tls_files::client_config(mqtt) {
                self.report(&key_path("mqtt", error.key), error.file_problem());
            }
        }
        let Some(source) = &mqtt.password else {
            return;
        };
        let (key, shown) = match source {
            SecretSource::File(path) => ("password_file", path.clone()),
            SecretSource::Credential(name) => match self.credentials_dir {
                Some(dir) => ("password_credential", dir.join(name)),
                // Readable only where systemd provides it, as in the unit's ExecStartPre.
                None => return,
            },
        };
        let credentials_dir = self.credentials_dir.map(|dir| dir.as_os_str().to_owned());
        // The password itself never enters a message.
        let problem = match source.read_from(credentials_dir) {
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
        self.report(&key_path("mqtt", key), problem);
    }

    /// A systemd credential name; checked against `$CREDENTIALS_DIRECTORY` when systemd set it.
    fn credential(&mut self, path: &str, value: &Value) -> Option<String> {
        let name = self.string(path, value)?;
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            self.report(path, format!("{name:?} is not a credential name: use the name given to LoadCredential= (no '/')"));
            return None;
        }
        if let Some(dir) = self.credentials_dir {
            self.check_readable(path, &dir.join(&name))?;
        }
        Some(name)
    }

    fn outbox(&mut self, root: &Table) -> Option<OutboxConfig> {
        let outbox = self.section(root, "outbox");
        let max_pending = self.field(&outbox, "max_pending", |c, path, value| {
            c.integer(path, value, 1, i64::MAX)
        });
        let retention = self.field(&outbox, "dedup_retention_days", |c, path, value| {
            c.integer(path, value, 1, 36_500)
        });
        let fold = self.field(&outbox, "fold_log_seconds", |c, path, value| {
            c.integer(path, value, 0, 86_400)
        });
        self.unknown_keys(&outbox, OUTBOX_KEYS);
        let fold_seconds = u64::try_from(fold.or(DEFAULT_FOLD_LOG_SECONDS)?).ok()?;
        Some(OutboxConfig {
            max_pending: u64::try_from(max_pending.or(DEFAULT_MAX_PENDING)?).ok()?,
            dedup_retention_days: u32::try_from(retention.or(DEFAULT_DEDUP_RETENTION_DAYS)?)
                .ok()?,
            fold_log_after: (fold_seconds > 0).then(|| Duration::from_secs(fold_seconds)),
        })
    }

    fn serial(&mut self, root: &Table) -> Option<Vec<SerialConfig>> {
        let entries = match root.get(SERIAL_SECTION) {
            None => return Some(Vec::new()),
            Some(Value::Array(entries)) => entries,
            Some(other) => {
                self.report(
                    SERIAL_SECTION,
                    format!(
                        "expected an array of tables ([[serial]]), found {}",
                        type_name(other)
                    ),
                );
                return None;
            }
        };
        if entries.len() > MAX_SERIAL_PORTS {
            self.report(
                SERIAL_SECTION,
                format!(
                    "{} entries; a hub reads at most {MAX_SERIAL_PORTS} serial ports",
                    entries.len()
                ),
            );
            return None;
        }
        let mut ports = Vec::new();
        let mut all_valid = true;
        let mut paths: HashMap<PortLocation, usize> = HashMap::new();
        // Two paths that lead to one device node (a by-id link and its /dev/ttyUSB0) are one port.
        let mut devices: HashMap<std::path::PathBuf, usize> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let entry_path = format!("{SERIAL_SECTION}[{index}]");
            let Value::Table(table) = entry else {
                self.wrong_type(&entry_path, "a table", entry);
                all_valid = false;
                continue;
            };
            let section = Section {
                path: entry_path,
                table: Some(table),
                broken: false,
            };
            let entry = self.serial_entry(&section);
            // Duplicates are checked on whatever is valid, so they show up together with the entry's other errors.
            let mut duplicate_path = false;
            if let Some(location) = &entry.path {
                if let Some(first) = paths.get(location) {
                    duplicate_path = true;
                    let message = format!(
                        "{} is already used by {SERIAL_SECTION}[{first}]",
                        location.describe()
                    );
                    let key = match location {
                        PortLocation::Path(_) => "path",
                        PortLocation::Usb { .. } => "match",
                    };
                    self.report(&section.key(key), message);
                } else {
                    paths.insert(location.clone(), index);
                    if let PortLocation::Path(path) = location {
                        if let Ok(device) = std::fs::canonicalize(path) {
                            if let Some(first) = devices.get(&device) {
                                duplicate_path = true;
                                self.report(
                                    &section.key("path"),
                                    format!(
                                        "{} leads to {}, already read by {SERIAL_SECTION}[{first}]",
                                        path.display(),
                                        device.display()
                                    ),
                                );
                            } else {
                                devices.insert(device, index);
                            }
                        }
                    }
                }
            }
            if let Some(id) = &entry.device_id {
                if let Some(first) = ids.get(id) {
                    // The same path already explains a clash of default ids.
                    if entry.id_given || !duplicate_path {
                        let message = if entry.id_given {
                            format!("{id:?} is already used by {SERIAL_SECTION}[{first}]")
                        } else {
                            format!("{id:?} (the default from path) is already used by {SERIAL_SECTION}[{first}]: set id")
                        };
                        self.report(&section.key("id"), message);
                    }
                } else {
                    ids.insert(id.clone(), index);
                }
            }
            match entry.config {
                Some(port) => ports.push(port),
                None => all_valid = false,
            }
        }
        all_valid.then_some(ports)
    }

    /// `match = { vid = 0x10c4, pid = 0xea60, serial = "0001" }`: a port found by its USB identity.
    fn usb_match(&mut self, key: &str, value: &Value) -> Option<PortLocation> {
        let Value::Table(table) = value else {
            self.wrong_type(key, "a table such as { vid = 0x10c4, pid = 0xea60 }", value);
            return None;
        };
        let mut id = |name: &str| -> Option<u16> {
            let path = format!("{key}.{name}");
            match table.get(name) {
                None => {
                    self.report(&path, "missing");
                    None
                }
                Some(value) => self.integer(&path, value, 0, 0xFFFF).map(|v| v as u16),
            }
        };
        let (vid, pid) = (id("vid"), id("pid"));
        let serial_number = match table.get("serial") {
            None => Some(None),
            Some(value) => self
                .non_empty_string(&format!("{key}.serial"), value)
                .map(Some),
        };
        for unknown in table
            .keys()
            .filter(|k| !["vid", "pid", "serial"].contains(&k.as_str()))
        {
            self.report(&format!("{key}.{unknown}"), "unknown key");
        }
        Some(PortLocation::Usb {
            vid: vid?,
            pid: pid?,
            serial_number: serial_number?,
        })
    }

    fn serial_entry(&mut self, section: &Section<'_>) -> SerialEntry {
        let by_path = self.field(section, "path", Self::absolute_path);
        let by_usb = self.field(section, "match", Self::usb_match);
        let path = match (by_path, by_usb) {
            (Field::Valid(path), Field::Absent) => Some(PortLocation::Path(path)),
            (Field::Absent, Field::Valid(location)) => Some(location),
            (Field::Absent, Field::Absent) => {
                self.report(
                    &section.key("path"),
                    "missing (or name the port by its USB identity: match = { vid = 0x10c4, pid = 0xea60 })",
                );
                None
            }
            (Field::Valid(_), Field::Valid(_)) => {
                self.report(&section.key("match"), "set path or match, not both");
                None
            }
            _ => None,
        };
        let protocol = self.field(section, "protocol", |c, key, value| {
            let name = c.string(key, value)?;
            let known: Vec<&str> = Protocol::ALL
                .iter()
                .filter(|p| p.transport() == Transport::Serial)
                .map(|p| p.name())
                .collect();
            match Protocol::from_name(&name) {
                Some(protocol) if protocol.transport() == Transport::Serial => Some(protocol),
                Some(_) => {
                    c.report(
                        key,
                        format!(
                            "{name:?} is not a serial protocol (serial: {})",
                            known.join(", ")
                        ),
                    );
                    None
                }
                None => {
                    c.report(
                        key,
                        format!("unknown protocol {name:?} (known: {})", known.join(", ")),
                    );
                    None
                }
            }
        });
        let protocol = self.required(section, "protocol", protocol);
        let id = self.field(section, "id", |c, key, value| {
            let id = c.string(key, value)?;
            if !is_device_id(&id) {
                c.report(
                    key,
                    format!(
                        "{id:?} is not a valid device id: use 1 to {MAX_DEVICE_ID_CHARS} characters without spaces, \
                         control characters, '/' or '|'"
                    ),
                );
                return None;
            }
            Some(id)
        });
        let baud_rate = self.field(section, "baud_rate", |c, key, value| {
            c.integer(key, value, 300, 4_000_000)
                .and_then(|rate| u32::try_from(rate).ok())
        });
        let parity = self.field(section, "parity", |c, key, value| {
            match c.string(key, value)?.as_str() {
                "none" => Some(Parity::None),
                "odd" => Some(Parity::Odd),
                "even" => Some(Parity::Even),
                other => {
                    c.report(
                        key,
                        format!("{other:?} is not a parity: use \"none\", \"odd\" or \"even\""),
                    );
                    None
                }
            }
        });
        let select_format = self.field(section, "select_format", Self::boolean);
        if let (Field::Valid(true), Some(protocol)) = (&select_format, protocol) {
            if !protocol.name().starts_with("nonin-") {
                self.report(
                    &section.key("select_format"),
                    format!(
                        "only Nonin data formats can be selected, not {:?}",
                        protocol.name()
                    ),
                );
            }
        }
        let stable_for = self.field(section, "spot_stable_s", Self::seconds);
        let repeat_every = self.field(section, "spot_repeat_s", Self::seconds);
        self.unknown_keys(section, SERIAL_KEYS);

        let device_id = match (id, &path) {
            (Field::Valid(id), _) => Some(id),
            (
                Field::Absent,
                Some(PortLocation::Usb {
                    vid,
                    pid,
                    serial_number,
                }),
            ) => Some(match serial_number {
                Some(serial) => format!("serial:usb-{vid:04x}-{pid:04x}-{serial}"),
                None => format!("serial:usb-{vid:04x}-{pid:04x}"),
            })
            .filter(|id| is_device_id(id)),
            (Field::Absent, Some(PortLocation::Path(path))) => {
                let derived = path
                    .file_name()
                    .map(|name| format!("serial:{}", name.to_string_lossy()));
                match derived {
                    Some(id) if is_device_id(&id) => Some(id),
                    _ => {
                        self.report(
                            &section.key("path"),
                            "names no device file, so the default id cannot be derived from it: set id",
                        );
                        None
                    }
                }
            }
            _ => None,
        };
        let defaults = SpotRule::default();
        let config = match (
            path.clone(),
            protocol,
            device_id.clone(),
            baud_rate.optional(),
            stable_for.or(defaults.stable_for),
            repeat_every.or(defaults.repeat_every),
            parity.optional(),
            select_format.or(false),
        ) {
            (
                Some(path),
                Some(protocol),
                Some(device_id),
                Some(baud_rate),
                Some(stable_for),
                Some(repeat_every),
                Some(parity),
                Some(select_format),
            ) => Some(SerialConfig {
                path,
                protocol,
                device_id,
                baud_rate,
                parity,
                select_format,
                spot: SpotRule {
                    stable_for,
                    repeat_every,
                },
            }),
            _ => None,
        };
        SerialEntry {
            path,
            device_id,
            id_given: section.get("id").is_some(),
            config,
        }
    }

    fn log(&mut self, root: &Table) -> Option<LogConfig> {
        let log = self.section(root, "log");
        let level = self.field(&log, "level", |c, path, value| {
            let level = c.non_empty_string(path, value)?;
            if let Err(error) = tracing_subscriber::EnvFilter::try_new(&level) {
                c.report(path, format!("invalid log filter {level:?}: {error}"));
                return None;
            }
            Some(level)
        });
        self.unknown_keys(&log, LOG_KEYS);
        Some(LogConfig {
            level: level.or(DEFAULT_LOG_LEVEL.to_string())?,
        })
    }
}

/// What one `[[serial]]` table yielded: its parts that are valid, for the duplicate checks, and the whole if all are.
struct SerialEntry {
    path: Option<PortLocation>,
    device_id: Option<String>,
    id_given: bool,
    config: Option<SerialConfig>,
}

/// Quoted values longer than this are shown by their beginning only.
const MAX_QUOTED_CHARS: usize = 200;

/// Shortens every quoted value in an error message to its first characters and its length, so a bad value
/// of megabytes is not echoed back whole; messages quote values with `{:?}`, so a quote inside one is
/// escaped and only an unescaped quote ends it.
fn shorten_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(1024));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' {
            continue;
        }
        let mut quoted = String::new();
        let mut escaped = false;
        let mut closed = false;
        for inner in chars.by_ref() {
            if inner == '"' && !escaped {
                closed = true;
                break;
            }
            escaped = inner == '\\' && !escaped;
            quoted.push(inner);
        }
        let length = quoted.chars().count();
        if length > MAX_QUOTED_CHARS {
            let mut prefix: String = quoted.chars().take(MAX_QUOTED_CHARS).collect();
            // Never end the prefix inside an escape, which would swallow the closing quote.
            if prefix.ends_with('\\') && !prefix.ends_with("\\\\") {
                prefix.pop();
            }
            out.push_str(&prefix);
            out.push_str(&format!("…\" ({length} characters)"));
        } else {
            out.push_str(&quoted);
            if closed {
                out.push('"');
            }
        }
    }
    out
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Lowercase because it goes into MQTT topics, where case matters and technicians read it aloud.
fn is_hub_id(id: &str) -> bool {
    (1..=MAX_HUB_ID_CHARS).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Device ids go into payloads and reading ids (joined with `|`), and may go into topics later.
fn is_device_id(id: &str) -> bool {
    (1..=MAX_DEVICE_ID_CHARS).contains(&id.chars().count())
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '|')
}

fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        Err("must not be empty".to_string())
    } else if prefix.contains(['+', '#']) {
        Err(format!(
            "must not contain the MQTT wildcards '+' or '#', found {prefix:?}"
        ))
    } else if prefix.starts_with('/') || prefix.ends_with('/') {
        Err(format!("must not start or end with '/', found {prefix:?}"))
    } else if prefix.contains("//") {
        Err(format!("must not contain an empty level, found {prefix:?}"))
    } else if prefix.starts_with('$') {
        Err(format!(
            "must not start with '$' (reserved for the broker), found {prefix:?}"
        ))
    } else if prefix.contains('\0') {
        Err("must not contain a NUL character".to_string())
    } else {
        Ok(())
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
/// Messages never repeat the whole url: it might hold a password.
fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err("expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]".to_string());
    };
    let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
        "mqtt" => (false, MQTT_PORT),
        "mqtts" => (true, MQTTS_PORT),
        _ => return Err(format!("unsupported scheme {scheme:?}")),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, remainder) = rest.split_at(authority_end);
    if authority.contains('@') {
        return Err("must not contain a user name or password: use mqtt.username and mqtt.password_file or \
                    mqtt.password_credential"
            .to_string());
    }
    if !remainder.is_empty() && remainder != "/" {
        return Err(
            "unexpected path, query or fragment: the url names only the broker".to_string(),
        );
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("missing ']' after the IPv6 address".to_string());
        };
        if address.is_empty()
            || !address
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(format!("invalid IPv6 address {address:?}"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("unexpected {after:?} after the IPv6 address")),
            },
        };
        (address, port)
    } else {
        match authority.matches(':').count() {
            0 => (authority, None),
            1 => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
            _ => {
                return Err(
                    "an IPv6 address must be in brackets, as in mqtt://[::1]:1883".to_string(),
                )
            }
        }
    };
    if host.is_empty() {
        return Err("missing host".to_string());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':'))
    {
        return Err(format!("invalid host {host:?}"));
    }
    let port = match port {
        None => default_port,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port != 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => {
                return Err(format!(
                    "bad port {text:?}: expected a number from 1 to 65535"
                ))
            }
        },
    };
    Ok(BrokerUrl {
        host: host.to_string(),
        port,
        tls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids() {
        for id in ["a", "hub-0001", "ward_3", &"x".repeat(64)] {
            assert!(is_hub_id(id), "{id:?} should be valid");
        }
        for id in ["", "Hub", "hub 1", "hub/1", "hub+", "hüb", &"x".repeat(65)] {
            assert!(!is_hub_id(id), "{id:?} should be invalid");
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
            assert!(is_device_id(id), "{id:?} should be valid");
        }
        for id in ["", "a b", "a/b", "a|b", "a\tb", &"x".repeat(129)] {
            assert!(!is_device_id(id), "{id:?} should be invalid");
        }
    }

    #[test]
    fn broker_url_errors_never_repeat_a_password() {
        let message =
            parse_broker_url("mqtts://hub:hunter2@broker:8883").expect_err("credentials in url");
        assert!(!message.contains("hunter2"), "{message}");
        let message = parse_broker_url("hub:hunter2@broker").expect_err("no scheme");
        assert!(!message.contains("hunter2"), "{message}");
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
        ];
        for (url, host, port, tls) in cases {
            assert_eq!(
                parse_broker_url(url),
                Ok(BrokerUrl {
                    host: host.to_string(),
                    port,
                    tls
                }),
                "for {url}"
            );
        }
        assert_eq!(
            parse_broker_url("mqtt://broker:+1883"),
            Err(r#"bad port "+1883": expected a number from 1 to 65535"#.to_string())
        );
    }
}

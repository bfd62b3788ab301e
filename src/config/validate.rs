//! The second stage: deserializes the layered values into [`Config`] with serde, then checks how keys fit
//! together, collecting every error with its key path and, for a value a drop-in or a variable set, where
//! it came from.
//!
//! serde stops at the first value it refuses (of the wrong type, refused by its field's check in `values`, or
//! under an unknown key), so each refusal is reported, that value taken out, and the rest read again until
//! it reads. The defaults that stand in for refused keys never leave this module: a configuration with any
//! error is never returned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::Figment;
use serde::Deserialize;

use super::file::{self, key_path};
use super::values::{device_id_ok, q};
use super::{
    Config, ConfigError, MqttConfig, PortLocation, SecretSource, SerialConfig, UplinkCheck,
};
use crate::spot::SpotRule;

/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;
const USB_EXAMPLE: &str = "{ vid = 0x10c4, pid = 0xea60 }";

/// What validation reads from the environment besides the overrides, and the uplink's check.
#[derive(Default)]
pub(super) struct Environment<'a> {
    /// `$CREDENTIALS_DIRECTORY`, where systemd set it: a credential named in the file must be there.
    pub credentials_dir: Option<&'a Path>,
    /// `$RUNTIME_DIRECTORY`, where systemd set it: the default of `hub.runtime_dir`.
    pub runtime_dir: Option<&'a Path>,
    pub uplink: Option<UplinkCheck>,
}

/// Turns the layered configuration into a [`Config`], or every error found.
pub(super) fn validate(figment: &Figment, env: &Environment) -> Result<Config, Vec<ConfigError>> {
    let given = figment
        .find_value("")
        .unwrap_or_else(|_| Dict::new().into());
    let mut c = Checks {
        figment,
        given: &given,
        errors: Vec::new(),
    };
    let mut config = c.read(given.clone());
    for key in ["hub.id", "hub.state_dir", "mqtt.url"] {
        c.require(key, "missing");
    }
    if !c.given("hub.runtime_dir") {
        // systemd's RuntimeDirectory= sets $RUNTIME_DIRECTORY; the key overrides both.
        config.hub.runtime_dir = env.runtime_dir.unwrap_or(Path::new("/run/vitalsd")).into();
    }
    c.check_mqtt(&mut config.mqtt, &config.hub.id, env);
    c.check_serial(&mut config.serial);
    if c.errors.is_empty() {
        return Ok(config);
    }
    // In the order of the example file: the order the checks found them in would change with every
    // refactoring.
    c.errors.sort_by_cached_key(|(path, _)| rank(path));
    let errors = c
        .errors
        .iter()
        .map(|(path, message)| ConfigError::new(c.label(path), message));
    Err(errors.collect())
}

/// The keys of the table at `table` (a key path's segments) as [`Config`] declares them. serde lists them,
/// in that order, when it refuses an unknown key, so this offers it one there: the empty key.
pub(super) fn keys_at(table: &[(&str, Option<usize>)]) -> &'static [&'static str] {
    let mut probe = Value::from(Dict::from([(String::new(), Value::from(0))]));
    for (name, index) in table.iter().rev() {
        if index.is_some() {
            probe = Value::from(vec![probe]);
        }
        probe = Value::from(Dict::from([(name.to_string(), probe)]));
    }
    match Config::deserialize(&probe).map_err(|error| error.kind) {
        Err(Kind::UnknownField(key, keys)) if key.is_empty() => keys,
        _ => &[],
    }
}

/// Sorts by key as `Config` declares them (unknown keys after, by name), and entries by index.
fn rank(path: &str) -> Vec<(usize, String, usize)> {
    let segments = segments(path);
    let rank = |(depth, (name, index)): (usize, &(&str, Option<usize>))| {
        let keys = keys_at(&segments[..depth]);
        let position = keys
            .iter()
            .position(|key| key == name)
            .unwrap_or(usize::MAX);
        (position, name.to_string(), index.unwrap_or(0))
    };
    segments.iter().enumerate().map(rank).collect()
}

/// The keys and array indices along a key path such as `serial[1].match.pid`.
fn segments(path: &str) -> Vec<(&str, Option<usize>)> {
    let segment = |segment| match str::strip_suffix(segment, ']').and_then(|s| s.split_once('[')) {
        Some((name, index)) => (name, index.parse().ok()),
        None => (segment, None),
    };
    path.split('.').map(segment).collect()
}

/// Whether `path` is `table` or inside it.
fn within(path: &str, table: &str) -> bool {
    let rest = path.strip_prefix(table);
    rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

struct Checks<'a> {
    figment: &'a Figment,
    /// Every value as layered, before any was refused.
    given: &'a Value,
    /// Key paths, before their origin is added, and messages.
    errors: Vec<(String, String)>,
}

impl Checks<'_> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    /// The value at a key path as layered.
    fn value(&self, path: &str) -> Option<&Value> {
        segments(path)
            .into_iter()
            .try_fold(self.given, |value, (name, index)| {
                let value = value.as_dict()?.get(name)?;
                match index {
                    Some(index) => value.as_array()?.get(index),
                    None => Some(value),
                }
            })
    }

    /// Whether the key was set, even to a value that was refused.
    fn given(&self, path: &str) -> bool {
        self.value(path).is_some()
    }

    /// Whether the key, or a table holding it, has an error.
    fn refused(&self, path: &str) -> bool {
        self.errors.iter().any(|(error, _)| within(path, error))
    }

    /// Reports a missing key, unless it or its table was refused, which is reported already.
    fn require(&mut self, path: &str, message: &str) {
        if !self.given(path) && !self.refused(path) {
            self.report(path, message);
        }
    }

    /// Deserializes `root`, reporting and taking out each value serde refuses until the rest reads.
    fn read(&mut self, mut root: Value) -> Config {
        let serial = root
            .find_ref("serial")
            .and_then(Value::as_array)
            .map(|entries| entries.len());
        if let Some(count) = serial.filter(|count| *count > MAX_SERIAL_PORTS) {
            let message =
                format!("{count} entries; a hub reads at most {MAX_SERIAL_PORTS} serial ports");
            self.report("serial", message);
            take(&mut root, &["serial".to_string()]);
        }
        // The errors of variables' text where a typed reading was tried instead.
        let mut text_errors: HashMap<Vec<String>, String> = HashMap::new();
        loop {
            let error = match Config::deserialize(&root) {
                Ok(config) => return config,
                Err(error) => error,
            };
            let path = shown_path(&root, &error.path);
            let Some(value) = at(&mut root, &error.path).filter(|_| !error.path.is_empty()) else {
                self.report(&path, error.kind.to_string());
                return Config::default();
            };
            let wrong_type = matches!(error.kind, Kind::InvalidType(..));
            // A variable's text is read as a TOML integer, float or boolean where it looks like one and the key
            // wants another type.
            let typed = match value {
                Value::String(tag, text)
                    if wrong_type && !text_errors.contains_key(&error.path) =>
                {
                    let variable = self
                        .figment
                        .get_metadata(*tag)
                        .and_then(|m| m.source.as_ref()?.custom());
                    variable.and_then(|_| file::env_scalar(text, *tag))
                }
                _ => None,
            };
            let message = describe(&error, value);
            if let Some(typed) = typed {
                *value = typed;
                text_errors.insert(error.path, message);
                continue;
            }
            // Text is what a variable holds, so a typed reading of the wrong type is reported as the text's.
            let message = match text_errors.remove(&error.path) {
                Some(text_error) if wrong_type => text_error,
                _ => message,
            };
            self.report(&path, message);
            take(&mut root, &error.path);
        }
    }

    fn check_mqtt(&mut self, m: &mut MqttConfig, hub_id: &str, env: &Environment) {
        let keys = [
            "password_file",
            "password_credential",
            "username",
            "ca_file",
        ];
        let [file, credential, user, ca] = keys.map(|key| self.given(&key_path("mqtt", key)));
        let [cert, key] =
            ["client_cert_file", "client_key_file"].map(|key| self.given(&key_path("mqtt", key)));
        if !self.given("mqtt.client_id") {
            m.client_id = format!("vitalsd-{hub_id}");
        }
        if file && credential {
            let message = "conflicts with mqtt.password_file: set only one";
            self.report("mqtt.password_credential", message);
        }
        if (file || credential) && !user {
            let message = "missing (MQTT sends a password only together with a user name)";
            self.report("mqtt.username", message);
        }
        if self.given("mqtt.url") && !self.refused("mqtt.url") && !m.url.tls {
            for (name, given) in [("ca", ca), ("client_cert", cert), ("client_key", key)] {
                if given {
                    self.report(&format!("mqtt.{name}_file"), "needs an mqtts:// url");
                }
            }
        } else if cert != key {
            let (given, without) = if cert {
                ("cert", "key")
            } else {
                ("key", "cert")
            };
            let message = format!("given without mqtt.client_{without}_file");
            self.report(&format!("mqtt.client_{given}_file"), message);
        }
        let (min, max) = (m.reconnect_min, m.reconnect_max);
        if min > max && !self.refused("mqtt.reconnect_max_s") {
            let message = format!(
                "{} ms is longer than mqtt.reconnect_max_s ({} s)",
                min.as_millis(),
                max.as_secs()
            );
            self.report("mqtt.reconnect_min_ms", message);
        }
        // The TLS files are read as the uplink will read them, so a file that would stop it is an error now
        // rather than an exit at start; they can be read only once the rest of `[mqtt]` is valid.
        let valid = !self.errors.iter().any(|(path, _)| within(path, "mqtt"));
        if let (true, true, Some(uplink)) = (valid, m.url.tls, env.uplink) {
            if let Err((key, problem)) = uplink(m) {
                self.report(&key_path("mqtt", key), problem);
            }
        }
        let credential = m.password_credential.clone().map(SecretSource::Credential);
        m.password = m
            .password_file
            .clone()
            .map(SecretSource::File)
            .or(credential);
        if let Some(password) = &m.password {
            self.check_password(password, env.credentials_dir);
        }
    }

    /// Reads the password as the uplink will, so a file that would stop it is an error now rather than an
    /// exit at start. The password itself never enters a message.
    fn check_password(&mut self, source: &SecretSource, dir: Option<&Path>) {
        let (key, shown) = match (source, dir) {
            (SecretSource::File(path), _) => ("mqtt.password_file", path.clone()),
            (SecretSource::Credential(name), Some(dir)) => {
                ("mqtt.password_credential", dir.join(name))
            }
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
        self.report(key, problem);
    }

    fn check_serial(&mut self, ports: &mut [SerialConfig]) {
        let mut locations: HashMap<PortLocation, usize> = HashMap::new();
        // Two paths that lead to one device node (a by-id link and its /dev/ttyUSB0) are one port.
        let mut devices: HashMap<PathBuf, usize> = HashMap::new();
        let mut ids: HashMap<String, usize> = HashMap::new();
        for (index, port) in ports.iter_mut().enumerate() {
            let key = |name: &str| format!("serial[{index}].{name}");
            match (self.given(&key("path")), self.given(&key("match"))) {
                (false, false) => {
                    let message = format!(
                        "missing (or name the port by its USB identity: match = {USB_EXAMPLE})"
                    );
                    self.require(&key("path"), &message);
                }
                (true, true) => self.report(&key("match"), "set path or match, not both"),
                (false, true) => {
                    self.require(&key("match.vid"), "missing");
                    self.require(&key("match.pid"), "missing");
                }
                (true, false) => {}
            }
            self.require(&key("protocol"), "missing");
            if let Some(usb) = port.usb.take() {
                port.path = PortLocation::Usb {
                    vid: usb.vid,
                    pid: usb.pid,
                    serial_number: usb.serial,
                };
            }
            let spot = SpotRule::default();
            port.spot = SpotRule {
                stable_for: port.spot_stable_s.unwrap_or(spot.stable_for),
                repeat_every: port.spot_repeat_s.unwrap_or(spot.repeat_every),
            };
            if port.select_format
                && !self.refused(&key("protocol"))
                && !port.protocol.name().starts_with("nonin-")
            {
                let message = format!(
                    "only Nonin data formats can be selected, not {}",
                    q(port.protocol.name())
                );
                self.report(&key("select_format"), message);
            }
            // Without its serial, a match would find another port.
            let parts = ["path", "match.vid", "match.pid", "match.serial"];
            let location = parts
                .iter()
                .all(|part| !self.refused(&key(part)))
                .then(|| port.path.clone());
            let id = match &location {
                _ if self.given(&key("id")) => {
                    (!self.refused(&key("id"))).then(|| (port.device_id.clone(), true))
                }
                Some(location) => {
                    let (by, problem) = match location {
                        PortLocation::Path(_) => ("path", "names no device file"),
                        PortLocation::Usb { .. } => {
                            ("match", "has a serial a device id cannot hold")
                        }
                    };
                    port.device_id = default_id(location)
                        .filter(|id| device_id_ok(id))
                        .unwrap_or_default();
                    if port.device_id.is_empty() {
                        let message = format!(
                            "{problem}, so the default id cannot be derived from it: set id"
                        );
                        self.report(&key(by), message);
                    }
                    Some((port.device_id.clone(), false)).filter(|(id, _)| !id.is_empty())
                }
                None => None,
            };
            // Duplicates are checked on whatever is valid, so they show up with the entry's other errors.
            let mut duplicate_path = true;
            if let Some(location) = location {
                let key = key(if matches!(location, PortLocation::Path(_)) {
                    "path"
                } else {
                    "match"
                });
                let device = match &location {
                    PortLocation::Path(file) => std::fs::canonicalize(file).ok(),
                    PortLocation::Usb { .. } => None,
                };
                let shown = location.describe();
                if let Some(first) = locations.get(&location) {
                    self.report(&key, format!("{shown} is already used by serial[{first}]"));
                } else if let Some((device, first)) =
                    device.iter().find_map(|d| Some((d, devices.get(d)?)))
                {
                    let device = device.display();
                    let message =
                        format!("{shown} leads to {device}, already read by serial[{first}]");
                    self.report(&key, message);
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
                        "{}{default} is already used by serial[{first}]{advice}",
                        q(&id)
                    );
                    self.report(&key("id"), message);
                }
                Some((None, id, _)) => drop(ids.insert(id, index)),
                None => {}
            }
        }
    }

    /// `path` with the drop-in or variable that set its value, or the array holding it: a table merged from
    /// several layers has no one origin.
    fn label(&self, path: &str) -> String {
        let (mut value, mut tag) = (Some(self.given), None);
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

/// The default id of a port: `serial:` and the device file's name, or its USB identity.
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

/// The value at a path of keys and array indices, as serde's errors give it.
fn at<'v>(root: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |value, key| match value {
        Value::Dict(_, dict) => dict.get_mut(key),
        Value::Array(_, items) => items.get_mut(key.parse::<usize>().ok()?),
        _ => None,
    })
}

/// Takes a refused value out: a key from its table, an array entry replaced by an empty table so that the
/// indices of the others stay as the file gives them.
fn take(root: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match at(root, parent) {
        Some(Value::Dict(_, dict)) => drop(dict.remove(last)),
        Some(Value::Array(_, items)) => {
            if let Some(item) = last
                .parse::<usize>()
                .ok()
                .and_then(|index| items.get_mut(index))
            {
                *item = Dict::new().into();
            }
        }
        _ => {}
    }
}

/// A path of serde's error as a key path such as `serial[1].match.pid`.
fn shown_path(root: &Value, path: &[String]) -> String {
    let (mut shown, mut value) = (String::new(), Some(root));
    for key in path {
        match value {
            Some(Value::Array(_, items)) => {
                shown.push_str(&format!("[{key}]"));
                value = key.parse::<usize>().ok().and_then(|index| items.get(index));
            }
            _ => {
                shown = key_path(&shown, key);
                value = value.and_then(|table| table.as_dict()?.get(key));
            }
        }
    }
    shown
}

/// serde's refusal of `value` in the words of the rest of the messages.
fn describe(error: &figment::Error, value: &Value) -> String {
    let section = value.as_dict().is_some()
        || value
            .as_array()
            .is_some_and(|a| a.iter().all(|v| v.as_dict().is_some()));
    let (actual, expected) = match &error.kind {
        Kind::InvalidType(actual, expected) => (actual, expected),
        Kind::UnknownField(..) if error.path.len() == 1 && section => {
            return "unknown section".into()
        }
        Kind::UnknownField(..) => return "unknown key".into(),
        other => return other.to_string(),
    };
    let expected = match expected.as_str() {
        "i64" => "an integer",
        // The only floats are the spot timings, and the only array the serial ports.
        "f64" => "a number of seconds",
        "a sequence" => "an array of tables ([[serial]])",
        table if table.starts_with("struct ") => "a table",
        other => other,
    };
    let found = match actual {
        // toml hands serde a date-time as a table of one private key.
        _ if value.find_ref("$__toml_private_datetime").is_some() => "a date-time",
        Actual::Str(_) => "a string",
        Actual::Signed(_) | Actual::Unsigned(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Bool(_) => "a boolean",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        other => return format!("expected {expected}, found {other}"),
    };
    format!("expected {expected}, found {found}")
}

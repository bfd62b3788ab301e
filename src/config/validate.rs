//! The second stage: deserializes the layered values into [`Config`], then checks how keys fit together,
//! collecting every error with its key path and, for a value a drop-in or a variable set, where it came from.
//!
//! serde stops at the first value it refuses (of the wrong type, refused by its field's check, or under an
//! unknown key), so each refused value is reported, taken out, and the rest read again until it reads. The
//! defaults that stand in for refused values never leave this module: a configuration with errors is never
//! returned.

use std::collections::HashMap;
use std::path::Path;

use figment::error::{Actual, Kind};
use figment::value::{Dict, Value};
use figment::{Figment, Source};
use serde::Deserialize;

use super::file::{env_scalar, key_path};
use super::values::{self as v, device_id_ok, q};
use super::{
    Config, ConfigError, FhirConfig, MqttConfig, OutputFormat, PortLocation, SecretSource,
    SerialConfig, UplinkCheck,
};
use crate::model::payload::canonical_ble_address;

/// A hub has tens of serial ports, not thousands; a longer list is a generated or damaged file, and
/// validating each entry of it would cost memory for nothing.
const MAX_SERIAL_PORTS: usize = 64;
const NO_PORT: &str =
    "missing (or name the port by its USB identity: match = { vid = 0x10c4, pid = 0xea60 })";

/// Turns the layered configuration into a [`Config`], or every error found. Of `env`, systemd's
/// `$RUNTIME_DIRECTORY` is the default of `hub.runtime_dir`, and a credential named in the file must be in
/// its `$CREDENTIALS_DIRECTORY`; `uplink` is run on a valid `[mqtt]` with TLS.
pub(super) fn validate(
    figment: &Figment,
    env: &[(String, String)],
    uplink: Option<UplinkCheck>,
) -> Result<Config, Vec<ConfigError>> {
    let var = |name: &str| {
        let value = env.iter().rev().find(|(variable, _)| variable == name)?;
        Some(Path::new(&value.1)).filter(|dir| !dir.as_os_str().is_empty())
    };
    let given = figment.find_value("").unwrap_or(Value::from(Dict::new()));
    let mut c = Checks {
        figment,
        given: &given,
        errors: Vec::new(),
    };
    let mut config = c.read(given.clone());
    let (hub, mqtt) = (&mut config.hub, &mut config.mqtt);
    // These keys have no default, so an empty value was not given (or was refused).
    c.require("hub.id", !hub.id.is_empty());
    c.require("hub.state_dir", !hub.state_dir.as_os_str().is_empty());
    c.require("mqtt.url", !mqtt.url.host.is_empty());
    // A directory the daemon makes if missing, so only something else in its place, or in the place of a
    // directory above it, is an error now.
    let existing = hub.state_dir.ancestors().find(|dir| dir.exists());
    if let Some(file) = existing.filter(|dir| !dir.is_dir()) {
        let message = format!("{} exists and is not a directory", v::shown(file));
        c.report("hub.state_dir", message);
    }
    if hub.runtime_dir.as_os_str().is_empty() {
        let systemd = var("RUNTIME_DIRECTORY");
        hub.runtime_dir = systemd.unwrap_or(Path::new("/run/vitalsd")).into();
    }
    if mqtt.client_id.is_empty() {
        mqtt.client_id = format!("vitalsd-{}", hub.id);
    }
    c.check_mqtt(mqtt, var(super::CREDENTIALS_DIRECTORY), uplink);
    c.check_serial(&mut config.serial);
    for name in config.fleet.keys.keys() {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
            let message =
                "is not a key name: use 1 to 64 characters of letters, digits, '-', '_' and '.'";
            c.report(&format!("fleet.keys.{name}"), message);
        }
    }
    let fhir_on = config.output.formats.contains(&OutputFormat::Fhir);
    c.check_fhir(&config.fhir, fhir_on, &config.serial);
    if c.errors.is_empty() {
        return Ok(config);
    }
    // In the order of the example file, not in the order the checks happen to find them.
    c.errors.sort_by_cached_key(|(path, _)| rank(path));
    let label = |(path, message): &(String, String)| ConfigError::new(c.label(path), message);
    Err(c.errors.iter().map(label).collect())
}

/// The keys of the table at `table` as [`Config`] declares them. serde lists them, in that order, when it
/// refuses an unknown key, so this offers it one there: the empty key.
pub(super) fn keys_at(table: &[(&str, Option<usize>)]) -> &'static [&'static str] {
    let mut probe = Value::from(Dict::from([(String::new(), Value::from(0))]));
    for (name, index) in table.iter().rev() {
        let inner = index.map_or(probe.clone(), |_| Value::from(vec![probe]));
        probe = Value::from(Dict::from([(name.to_string(), inner)]));
    }
    match Config::deserialize(&probe).map_err(|error| error.kind) {
        Err(Kind::UnknownField(key, keys)) if key.is_empty() => keys,
        _ => &[],
    }
}

/// Sorts by key as `Config` declares them (unknown keys after, by name), and entries by index.
fn rank(path: &str) -> Vec<(usize, String, usize)> {
    let segments = segments(path);
    let rank = |depth: usize| {
        let (name, index) = segments[depth];
        let keys = keys_at(&segments[..depth]);
        let position = keys
            .iter()
            .position(|key| *key == name)
            .unwrap_or(usize::MAX);
        (position, name.to_string(), index.unwrap_or(0))
    };
    (0..segments.len()).map(rank).collect()
}

/// Whether `path` is `table` or inside it.
fn within(path: &str, table: &str) -> bool {
    let rest = path.strip_prefix(table);
    rest.is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// The keys and array indices along a key path such as `serial[1].match.pid`.
fn segments(path: &str) -> Vec<(&str, Option<usize>)> {
    let segment = |segment| match str::strip_suffix(segment, ']').and_then(|s| s.split_once('[')) {
        Some((name, index)) => (name, index.parse().ok()),
        None => (segment, None),
    };
    path.split('.').map(segment).collect()
}

struct Checks<'a> {
    figment: &'a Figment,
    /// Every value as layered, refused ones included.
    given: &'a Value,
    /// Key paths, before their origin is added, and messages.
    errors: Vec<(String, String)>,
}

impl Checks<'_> {
    fn report(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((path.to_string(), message.into()));
    }

    /// Reports a key that is not given, unless it or its table was refused: that is reported already.
    fn require(&mut self, path: &str, given: bool) {
        // A port may be named by its USB identity instead.
        let port = path.ends_with("].path");
        if !given && !self.refused(path) {
            self.report(path, if port { NO_PORT } else { "missing" });
        }
    }

    /// Whether the key, or a table holding it, has an error.
    fn refused(&self, path: &str) -> bool {
        self.errors.iter().any(|(error, _)| within(path, error))
    }

    /// Deserializes `root`, reporting and taking out each value serde refuses until the rest reads.
    fn read(&mut self, mut root: Value) -> Config {
        let count = root
            .find_ref("serial")
            .and_then(Value::as_array)
            .map_or(0, |ports| ports.len());
        if count > MAX_SERIAL_PORTS {
            let message =
                format!("{count} entries; a hub reads at most {MAX_SERIAL_PORTS} serial ports");
            self.report("serial", message);
            take(&mut root, &["serial".to_string()]);
        }
        loop {
            let error = match Config::deserialize(&root) {
                Ok(config) => return config,
                Err(error) => error,
            };
            let (value, path) = at(&mut root, &error.path);
            let Some(value) = value.filter(|_| !error.path.is_empty()) else {
                self.report(&path, error.kind.to_string());
                return Config::default();
            };
            // A variable holds text, read as an integer, float or boolean where the key wants one; if that is
            // refused too, for its type, the refusal is the text's.
            let metadata = self.figment.get_metadata(value.tag());
            let variable = metadata.and_then(|m| m.source.as_ref()?.custom()).is_some();
            if let (true, Kind::InvalidType(..), Value::String(tag, text)) =
                (variable, &error.kind, &*value)
            {
                if let Some(typed) = env_scalar(text, *tag) {
                    *value = typed;
                    continue;
                }
            }
            self.report(&path, describe(&error, value, variable));
            take(&mut root, &error.path);
        }
    }

    fn check_mqtt(
        &mut self,
        m: &mut MqttConfig,
        credentials: Option<&Path>,
        uplink: Option<UplinkCheck>,
    ) {
        let table = self.given;
        let given = |key: &str| table.find_ref(&format!("mqtt.{key}")).is_some();
        let (file, credential) = (given("password_file"), given("password_credential"));
        if file && credential {
            let message = "conflicts with mqtt.password_file: set only one";
            self.report("mqtt.password_credential", message);
        }
        if (file || credential) && !given("username") {
            let message = "missing (MQTT sends a password only together with a user name)";
            self.report("mqtt.username", message);
        }
        let (cert, key) = (given("client_cert_file"), given("client_key_file"));
        if !m.url.host.is_empty() && !m.url.tls {
            for key in ["ca_file", "client_cert_file", "client_key_file"]
                .into_iter()
                .filter(|key| given(key))
            {
                self.report(&format!("mqtt.{key}"), "needs an mqtts:// url");
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
        let (min, max) = (m.reconnect_min.as_millis(), m.reconnect_max.as_secs());
        if min > u128::from(max) * 1000 && !self.refused("mqtt.reconnect_max_s") {
            let message = format!("{min} ms is longer than mqtt.reconnect_max_s ({max} s)");
            self.report("mqtt.reconnect_min_ms", message);
        }
        // The TLS files and the password are read as the uplink will read them, so a file that would stop it is
        // an error now rather than an exit at start. The TLS files can be read once the keys that name them are
        // valid, whatever else is wrong; a credential only where systemd provides it, as in the unit's
        // ExecStartPre.
        let tls_keys = ["url", "ca_file", "client_cert_file", "client_key_file"];
        let valid = !self.errors.iter().any(|(path, _)| {
            tls_keys
                .iter()
                .any(|key| within(path, &format!("mqtt.{key}")))
        });
        let uplink = uplink.filter(|_| valid && m.url.tls);
        if let Some(Err((key, problem))) = uplink.map(|uplink| uplink(m)) {
            self.report(&key_path("mqtt", key), problem);
        }
        let credential = m.password_credential.clone().map(SecretSource::Credential);
        m.password = m
            .password_file
            .clone()
            .map(SecretSource::File)
            .or(credential);
        let (key, path) = match (&m.password, credentials) {
            (Some(SecretSource::File(path)), _) => ("mqtt.password_file", path.clone()),
            (Some(SecretSource::Credential(name)), Some(dir)) => {
                ("mqtt.password_credential", dir.join(name))
            }
            _ => return,
        };
        let shown = path.display();
        // The password itself never enters a message.
        let problem = match SecretSource::File(path.clone()).read() {
            Err(error) => format!("cannot read {error}"),
            Ok(password) if password.is_empty() => format!("{shown}: empty; the file must hold the password"),
            Ok(password) if password.contains(['\n', '\r']) => format!(
                "{shown}: more than one line; the file must hold just the password (one trailing newline is ignored)"
            ),
            Ok(_) => return,
        };
        self.report(key, problem);
    }

    /// A subject is an identifier in a system: a value needs its system, and a system a value to qualify.
    fn check_fhir(&mut self, fhir: &FhirConfig, fhir_on: bool, ports: &[SerialConfig]) {
        // A PHD Observation must have a subject, so every device needs one: the hub's, or its own.
        if fhir_on && fhir.subject_value.is_none() && !self.refused("fhir.subject_value") {
            let message =
                "missing: the FHIR output needs the identifier of the patient the readings are \
                           about, as the backend knows them (with subject_system)";
            self.report("fhir.subject_value", message);
        }
        let values = fhir.subject_value.is_some() || !fhir.device_subjects.is_empty();
        if (values || fhir_on)
            && fhir.subject_system.is_none()
            && !self.refused("fhir.subject_system")
        {
            let message =
                "missing: subject_value and device_subjects are identifiers in this system";
            self.report("fhir.subject_system", message);
        }
        if !values
            && !fhir_on
            && fhir.subject_system.is_some()
            && !self.refused("fhir.subject_value")
        {
            let message =
                "missing: subject_system is set, so give the identifier in it (or device_subjects)";
            self.report("fhir.subject_value", message);
        }
        for (device, value) in &fhir.device_subjects {
            let path = format!("fhir.device_subjects.{device}");
            // A device id, or a device id and one of its user slots (`/user/0` to `/user/254`).
            let (id, slot) = match device.rsplit_once("/user/") {
                Some((id, slot)) => (id, slot.parse::<u8>().ok().filter(|n| *n != 255)),
                None => (device.as_str(), Some(0)),
            };
            // The subject is looked up by the exact id a reading carries, so an id no device will have sends
            // that device's readings to the hub's patient: a Bluetooth id must be written as the hub writes
            // it, and any other must be a serial port's (unless the ports have errors of their own).
            let is_port = ports.iter().any(|port| port.device_id == id);
            let address = id
                .strip_prefix("ble:")
                .filter(|_| !is_port)
                .map(canonical_ble_address);
            let port_errors = self.errors.iter().any(|(path, _)| within(path, "serial"));
            let serial = port_errors || is_port;
            if !device_id_ok(id) || slot.is_none() {
                let message = "is not a device id, or a device id and a user slot such as \"ble:C4:F3:12:53:F2:C9/user/2\"";
                self.report(&path, format!("{} {message}", q(device)));
            } else if let Some(Some(address)) =
                address.as_ref().filter(|a| a.as_deref() != Some(&id[4..]))
            {
                let message = format!(
                    "{} is not how the hub writes that device's id: use \"ble:{address}\"",
                    q(id)
                );
                self.report(&path, message);
            } else if address == Some(None) || (address.is_none() && !serial) {
                let message = format!(
                    "{} is neither a [[serial]] entry's id nor \"ble:\" and a Bluetooth address such as \
                     \"ble:C4:F3:12:53:F2:C9\"; no reading would carry it",
                    q(id)
                );
                self.report(&path, message);
            } else if value.trim().is_empty() || value.len() > 256 {
                self.report(&path, "is not an identifier: use 1 to 256 characters");
            }
        }
    }

    fn check_serial(&mut self, ports: &mut [SerialConfig]) {
        // The first entry of each port and device id; two paths that lead to one device node (a by-id link
        // and its /dev/ttyUSB0) are one port.
        let (mut ports_at, mut devices, mut ids) = (HashMap::new(), HashMap::new(), HashMap::new());
        let entries = self.given.find_ref("serial").and_then(Value::as_array);
        for (index, port) in ports.iter_mut().enumerate() {
            let key = |name: &str| format!("serial[{index}].{name}");
            let entry = entries.and_then(|entries| entries.get(index));
            let given = |name: &str| entry.and_then(|entry| entry.find_ref(name)).is_some();
            let (by, required) = match (given("path"), given("match")) {
                (_, true) => ("match", &["match.vid", "match.pid", "protocol"][..]),
                _ => ("path", &["path", "protocol"][..]),
            };
            if given("path") && given("match") {
                self.report(&key("match"), "set path or match, not both");
            }
            for name in required {
                self.require(&key(name), given(name));
            }
            if let Some(usb) = port.usb.take() {
                port.path = usb;
            }
            let protocol = port.protocol.name();
            // The catalogue says which protocols have a format command; today those are Nonin's.
            if port.select_format
                && !port.protocol.has_format_command()
                && !self.refused(&key("protocol"))
            {
                let message = format!(
                    "only Nonin data formats can be selected, not {}",
                    q(protocol)
                );
                self.report(&key("select_format"), message);
            }
            // Duplicates are checked on whatever is valid, so they show up with the entry's other errors.
            // Without its serial, a match would find another port.
            let parts = ["path", "match.vid", "match.pid", "match.serial"];
            let location = parts.iter().all(|part| !self.refused(&key(part)));
            if location && !given("id") {
                let id = default_id(&port.path).filter(|id| device_id_ok(id));
                port.device_id = id.unwrap_or_default();
                if port.device_id.is_empty() {
                    let problem = match by {
                        "path" => "names no device file",
                        _ => "has a serial a device id cannot hold",
                    };
                    let message =
                        format!("{problem}, so the default id cannot be derived from it: set id");
                    self.report(&key(by), message);
                }
            }
            let mut clash = None;
            if location {
                let shown = port.path.describe();
                let device = match &port.path {
                    PortLocation::Path(file) => std::fs::canonicalize(file).ok(),
                    PortLocation::Usb { .. } => None,
                };
                let device = device.map(|device| device.display().to_string());
                let first_device = device
                    .as_ref()
                    .and_then(|device| devices.get(device).copied());
                clash = match (ports_at.get(&shown).copied(), first_device) {
                    (Some(first), _) => Some(format!("{shown} is already used by serial[{first}]")),
                    (None, Some(first)) => {
                        let device = device.unwrap_or_default();
                        Some(format!(
                            "{shown} leads to {device}, already read by serial[{first}]"
                        ))
                    }
                    (None, None) => {
                        devices.extend(device.map(|device| (device, index)));
                        ports_at.insert(shown, index);
                        None
                    }
                };
            }
            if let Some(message) = &clash {
                self.report(&key(by), message.clone());
            }
            let id_valid = match given("id") {
                true => !self.refused(&key("id")),
                false => location && !port.device_id.is_empty(),
            };
            match ids.get(&port.device_id).copied().filter(|_| id_valid) {
                // The same path already explains a clash of default ids.
                Some(_) if clash.is_some() && !given("id") => {}
                Some(first) => {
                    let (default, advice) = match given("id") {
                        true => ("", ""),
                        false => (" (the default from path)", ": set id"),
                    };
                    let id = q(&port.device_id);
                    let message =
                        format!("{id}{default} is already used by serial[{first}]{advice}");
                    self.report(&key("id"), message);
                }
                None if id_valid => drop(ids.insert(port.device_id.clone(), index)),
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
        match tag.and_then(|tag| self.figment.get_metadata(tag)?.source.as_ref()) {
            Some(Source::File(file)) => format!("{path} (from {})", file.display()),
            Some(Source::Custom(variable)) => format!("{path} (from {variable})"),
            _ => path.to_string(),
        }
    }
}

/// The default id of a port: `serial:` and the device file's name, or its USB identity.
fn default_id(location: &PortLocation) -> Option<String> {
    Some(match location {
        PortLocation::Path(file) => format!("serial:{}", file.file_name()?.to_string_lossy()),
        PortLocation::Usb {
            vid,
            pid,
            serial_number,
        } => {
            let serial = serial_number
                .as_ref()
                .map_or(String::new(), |serial| format!("-{serial}"));
            format!("serial:usb-{vid:04x}-{pid:04x}{serial}")
        }
    })
}

/// The value at a path of serde's error, and the path as a key path such as `serial[1].match.pid`.
fn at<'v>(root: &'v mut Value, path: &[String]) -> (Option<&'v mut Value>, String) {
    let (mut value, mut shown) = (Some(root), String::new());
    for key in path {
        (value, shown) = match value {
            Some(Value::Array(_, items)) => (
                key.parse().ok().and_then(|i: usize| items.get_mut(i)),
                format!("{shown}[{key}]"),
            ),
            Some(Value::Dict(_, dict)) => (dict.get_mut(key), key_path(&shown, key)),
            _ => (None, key_path(&shown, key)),
        };
    }
    (value, shown)
}

/// Takes a refused value out: a key from its table; an array entry is emptied instead, so that the others
/// keep their indices.
fn take(root: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match at(root, parent).0 {
        Some(Value::Dict(_, dict)) => drop(dict.remove(last)),
        Some(array) => {
            if let Some(entry) = at(array, std::slice::from_ref(last)).0 {
                *entry = Dict::new().into();
            }
        }
        None => {}
    }
}

/// serde's refusal of `value` in the words of the rest of the messages; a variable's value is text, whatever
/// it was read as.
fn describe(error: &figment::Error, value: &Value, variable: bool) -> String {
    let tables = value
        .as_array()
        .is_some_and(|a| a.iter().all(|v| v.as_dict().is_some()));
    let (actual, expected) = match &error.kind {
        Kind::InvalidType(actual, expected) => (actual, expected.as_str()),
        Kind::UnknownField(..)
            if error.path.len() == 1 && (tables || value.as_dict().is_some()) =>
        {
            return "unknown section".into()
        }
        Kind::UnknownField(..) => return "unknown key".into(),
        other => return other.to_string(),
    };
    let expected = match expected {
        "i64" => "an integer",
        // The only floats are the spot timings.
        "f64" => "a number of seconds",
        "a sequence" if error.path.first().is_some_and(|key| key == "serial") => {
            "an array of tables ([[serial]])"
        }
        // A variable's text is never read as an array.
        "a sequence" if variable => {
            return "expected an array, which a variable cannot hold: set it in a drop-in".into()
        }
        "a sequence" => "an array",
        table if table.starts_with("struct ") => "a table",
        other => other,
    };
    let found = match actual {
        _ if variable => "a string",
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

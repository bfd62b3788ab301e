//! The validated configuration: the only config type the rest of the daemon sees.
//!
//! Loading has two stages. `file` layers the defaults, `vitalsd.toml`, its drop-ins `vitalsd.toml.d/*.toml`
//! and the `VITALSD_<SECTION>__<KEY>` environment overrides with figment, which remembers where each value
//! came from; `validate` deserializes the result into these types with serde, their fields checked by
//! `values` as they are read, then checks how keys fit together, collecting every problem with its key path
//! rather than stopping at the first.
//! A [`Config`] never holds a secret: passwords are referenced through [`SecretSource`] and read when needed.

mod file;
pub use file::drop_in_dir;
pub(crate) use values::hub_id_ok;

/// The files the configuration is read from, in the order they are layered: `path`, then its drop-ins
/// (an unreadable drop-in directory counts as none).
pub fn files(path: &Path) -> Vec<PathBuf> {
    let drop_ins = file::drop_in_files(path).unwrap_or_default();
    std::iter::once(path.to_path_buf())
        .chain(drop_ins)
        .collect()
}
mod validate;
mod values;

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::decode::{Parity, Protocol};
use crate::spot::SpotRule;
use values as v;

/// The defaults, the layer under the files; those of `hub.runtime_dir` and `mqtt.client_id` depend on others.
const DEFAULTS: &str = r#"
    mqtt = { topic_prefix = "vitalsd/v1", keep_alive_s = 30, reconnect_min_ms = 500, reconnect_max_s = 60,
             window = 128, protocol = "5", status_interval_s = 60 }
    outbox = { max_pending = 1_000_000, dedup_retention_days = 400, fold_log_seconds = 1 }
    ble = { enabled = true, adapter = "hci0" }
    log = { level = "info" }
    fleet = { device_silent_after = "72h", backlog_after = "24h", max_validity = "7days" }
    output = { formats = ["reading.v1"] }
"#;

/// The whole validated configuration. Keys are declared in the example file's order, which errors follow.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub hub: HubConfig,
    pub mqtt: MqttConfig,
    pub outbox: OutboxConfig,
    pub ble: BleConfig,
    pub serial: Vec<SerialConfig>,
    pub log: LogConfig,
    pub fleet: FleetConfig,
    pub output: OutputConfig,
    pub fhir: FhirConfig,
}

/// `[output]`: what the hub publishes for each reading.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    #[serde(deserialize_with = "v::formats")]
    pub formats: Vec<OutputFormat>,
}

/// A message format of a reading (README, "For backend developers").
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString)]
pub enum OutputFormat {
    /// `vitalsd.reading.v1` on `{prefix}/{hub}/readings/{kind}`.
    #[strum(serialize = "reading.v1")]
    ReadingV1,
    /// A FHIR R4 transaction Bundle on `{prefix}/{hub}/fhir/{kind}`.
    #[strum(serialize = "fhir")]
    Fhir,
}

/// `[fhir]`: who the FHIR output's readings are about, and which national codes it adds.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FhirConfig {
    /// The identifier system of `subject_value` and of every `device_subjects` value.
    #[serde(deserialize_with = "v::uri")]
    pub subject_system: Option<String>,
    #[serde(deserialize_with = "v::non_empty")]
    pub subject_value: Option<String>,
    /// Device id (or device id, `/user/` and a user slot) to subject value, for a device used by someone
    /// else than the hub's patient.
    pub device_subjects: std::collections::BTreeMap<String, String>,
    #[serde(deserialize_with = "v::code_sets")]
    pub code_sets: Vec<&'static crate::model::fhir_codes::CodeSet>,
}

impl FhirConfig {
    /// The options the FHIR output is made with.
    pub fn options(&self) -> crate::model::fhir::FhirOptions {
        use crate::model::fhir::Subject;
        let subject = |value: &String| {
            Some(Subject {
                system: self.subject_system.clone()?,
                value: value.clone(),
            })
        };
        crate::model::fhir::FhirOptions {
            subject: self.subject_value.as_ref().and_then(subject),
            device_subjects: self
                .device_subjects
                .iter()
                .filter_map(|(device, value)| Some((device.clone(), subject(value)?)))
                .collect(),
            code_sets: self.code_sets.clone(),
        }
    }
}

/// `[fleet]`: remote operation over MQTT (README, "Fleet operations").
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// The public keys whose signatures the hub accepts on commands, by the `key_id` that names them.
    pub keys: std::collections::BTreeMap<String, FleetKey>,
    /// A bound device not seen for this long is reported as `device_silent`.
    #[serde(deserialize_with = "v::fleet_duration")]
    pub device_silent_after: Duration,
    /// The outbox's oldest pending reading older than this is reported as `outbox_backlog`.
    #[serde(deserialize_with = "v::fleet_duration")]
    pub backlog_after: Duration,
    /// The longest a command may be valid, from `issued_at` to `expires_at`.
    #[serde(deserialize_with = "v::fleet_duration")]
    pub max_validity: Duration,
}

/// An Ed25519 public key in PEM (`openssl pkey -pubout`), read when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKey {
    pub path: PathBuf,
    pub key: ed25519_dalek::VerifyingKey,
}

impl<'de> Deserialize<'de> for FleetKey {
    fn deserialize<D: serde::Deserializer<'de>>(value: D) -> Result<FleetKey, D::Error> {
        v::fleet_key(value)
    }
}

/// `[ble]`: the Bluetooth collector. Bound devices live in the state directory, not here.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BleConfig {
    /// Off on hubs without Bluetooth, so the daemon does not keep looking for BlueZ.
    pub enabled: bool,
    #[serde(deserialize_with = "v::adapter")]
    pub adapter: String,
    /// When set, only root, the daemon's own user and this group's members may pair and unpair through the
    /// control socket; without it, anyone who can open the socket may.
    #[serde(deserialize_with = "v::group")]
    pub admin_group: Option<AdminGroup>,
}

/// A system group, resolved to its id when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminGroup {
    pub name: String,
    pub gid: u32,
}

/// `[hub]`: who this hub is and where it keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubConfig {
    /// 1 to 64 characters of `a-z`, `0-9`, `-` and `_`; it goes into MQTT topics.
    #[serde(deserialize_with = "v::hub_id")]
    pub id: String,
    /// Holds the outbox database and the bound-device list.
    #[serde(deserialize_with = "v::absolute")]
    pub state_dir: PathBuf,
    /// Holds the control socket (`control.sock`); defaults to systemd's `$RUNTIME_DIRECTORY`.
    #[serde(deserialize_with = "v::absolute")]
    pub runtime_dir: PathBuf,
    #[serde(deserialize_with = "v::clock")]
    pub clock: crate::clock::ClockPolicy,
}

/// `[mqtt]`: the broker connection.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    #[serde(deserialize_with = "v::broker_url")]
    pub url: BrokerUrl,
    #[serde(deserialize_with = "v::topic_prefix")]
    pub topic_prefix: String,
    #[serde(deserialize_with = "v::non_empty")]
    pub client_id: String,
    #[serde(deserialize_with = "v::non_empty")]
    pub username: Option<String>,
    /// `password_file` or `password_credential`, whichever is set.
    #[serde(skip)]
    pub password: Option<SecretSource>,
    #[serde(deserialize_with = "v::absolute")]
    password_file: Option<PathBuf>,
    #[serde(deserialize_with = "v::credential")]
    password_credential: Option<String>,
    /// Only with `url.tls`, as are the client certificate and key, which come together.
    #[serde(deserialize_with = "v::readable")]
    pub ca_file: Option<PathBuf>,
    #[serde(deserialize_with = "v::readable")]
    pub client_cert_file: Option<PathBuf>,
    #[serde(deserialize_with = "v::readable")]
    pub client_key_file: Option<PathBuf>,
    #[serde(rename = "keep_alive_s", deserialize_with = "v::keep_alive")]
    pub keep_alive: Duration,
    /// At most `reconnect_max`.
    #[serde(rename = "reconnect_min_ms", deserialize_with = "v::reconnect_min")]
    pub reconnect_min: Duration,
    #[serde(rename = "reconnect_max_s", deserialize_with = "v::reconnect_max")]
    pub reconnect_max: Duration,
    /// How many publishes may await their PUBACK at once.
    #[serde(deserialize_with = "v::window")]
    pub window: usize,
    #[serde(deserialize_with = "v::mqtt_protocol")]
    pub protocol: MqttProtocol,
    /// How often the retained status is refreshed while connected.
    #[serde(rename = "status_interval_s", deserialize_with = "v::status_interval")]
    pub status_interval: Duration,
}

/// `mqtt://HOST[:PORT]`, or `mqtts://HOST[:PORT]` for TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

/// The MQTT version the uplink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, strum::EnumString, strum::IntoStaticStr)]
pub enum MqttProtocol {
    /// A PUBACK says whether the broker took the message.
    #[default]
    #[strum(serialize = "5")]
    V5,
    /// For brokers without MQTT 5; a broker that refuses a publish still acknowledges it.
    #[strum(serialize = "3.1.1")]
    V311,
}

impl MqttProtocol {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// Where a secret is read from; the secret itself never enters the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `password_file`: a file of its own, absolute.
    File(PathBuf),
    /// `password_credential`: a systemd credential (`LoadCredential=`), read from `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

impl SecretSource {
    /// Reads the secret now; one trailing newline is dropped.
    pub fn read(&self) -> Result<String, io::Error> {
        self.read_from(std::env::var_os(CREDENTIALS_DIRECTORY))
    }

    fn read_from(&self, credentials_dir: Option<OsString>) -> Result<String, io::Error> {
        let path = match (self, credentials_dir) {
            (SecretSource::File(path), _) => path.clone(),
            (SecretSource::Credential(name), Some(dir)) => PathBuf::from(dir).join(name),
            (SecretSource::Credential(name), None) => {
                let message = format!(
                    "${CREDENTIALS_DIRECTORY} is not set, so the systemd credential {name:?} is not available \
                     (the unit must load it with LoadCredential=)"
                );
                return Err(io::Error::new(io::ErrorKind::NotFound, message));
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|error| {
            let message = format!("{}: {}", values::shown(&path), io_message(&error));
            io::Error::new(error.kind(), message)
        })?;
        let line = text
            .strip_suffix('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line));
        Ok(line.unwrap_or(&text).to_string())
    }
}

/// `[outbox]`: the on-disk queue's limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    #[serde(deserialize_with = "v::max_pending")]
    pub max_pending: u64,
    #[serde(deserialize_with = "v::retention_days")]
    pub dedup_retention_days: u32,
    /// How soon, once idle, commits are folded from the write-ahead log into the database; `None` leaves it
    /// to SQLite's own checkpoints.
    #[serde(rename = "fold_log_seconds", deserialize_with = "v::fold_after")]
    pub fold_log_after: Option<Duration>,
}

/// One `[[serial]]` entry: a device on a serial port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialConfig {
    /// `path` (preferably a `/dev/serial/by-id/...` link), or the USB identity `match` gives.
    #[serde(deserialize_with = "v::port_path")]
    pub path: PortLocation,
    #[serde(rename = "match", deserialize_with = "v::usb")]
    usb: Option<PortLocation>,
    #[serde(deserialize_with = "v::serial_protocol")]
    pub protocol: Protocol,
    /// `id`, unique across entries; defaults to `serial:` and the file name of `path`.
    #[serde(rename = "id", deserialize_with = "v::device_id")]
    pub device_id: String,
    /// Overrides the protocol's line speed and parity.
    #[serde(deserialize_with = "v::baud_rate")]
    pub baud_rate: Option<u32>,
    #[serde(deserialize_with = "v::parity")]
    pub parity: Option<Parity>,
    /// Ask a Nonin 9560 for this data format when the port opens.
    pub select_format: bool,
    /// `spot_stable_s` and `spot_repeat_s`: the [`SpotRule`] for a continuous stream.
    #[serde(rename = "spot_stable_s", deserialize_with = "v::spot_seconds")]
    pub spot_stable: Duration,
    #[serde(rename = "spot_repeat_s", deserialize_with = "v::spot_seconds")]
    pub spot_repeat: Duration,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig {
            path: PortLocation::Path(PathBuf::new()),
            usb: None,
            protocol: Protocol::ALL[0],
            device_id: String::new(),
            baud_rate: None,
            parity: None,
            select_format: false,
            spot_stable: SpotRule::default().stable_for,
            spot_repeat: SpotRule::default().repeat_every,
        }
    }
}

/// `match = { vid = 0x10c4, pid = 0xea60, serial = "0001" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    default,
    expecting = "a table such as { vid = 0x10c4, pid = 0xea60 }"
)]
pub(super) struct UsbMatch {
    #[serde(deserialize_with = "v::usb_id")]
    vid: u16,
    #[serde(deserialize_with = "v::usb_id")]
    pid: u16,
    #[serde(deserialize_with = "v::non_empty")]
    serial: Option<String>,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive such as `info,vitalsd::serial=debug`.
    #[serde(deserialize_with = "v::log_level")]
    pub level: String,
}

/// The environment variable systemd sets to the directory of the unit's credentials.
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

impl Config {
    /// Loads `path`, then its drop-ins `path.d/*.toml` in lexical order (tables merged key by key, later wins),
    /// then the `VITALSD_<SECTION>__<KEY>` environment overrides, and validates the result.
    /// `uplink` is run on a valid `[mqtt]` with TLS, and what it finds is an error of its key.
    pub fn load(path: &Path, uplink: UplinkCheck) -> Result<Config, ConfigErrors> {
        let env: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect();
        Config::load_with_env(path, &env, Some(uplink))
    }

    /// [`Config::load`] with the environment passed in.
    pub fn load_with_env(
        path: &Path,
        env: &[(String, String)],
        uplink: Option<UplinkCheck>,
    ) -> Result<Config, ConfigErrors> {
        Config::load_replacing(path, env, uplink, None)
    }

    /// [`Config::load_with_env`] as it would be with the drop-in `replacing` (a file name in `path.d` and its
    /// text) in place of the file of that name, or added: a drop-in is validated before it is written.
    pub fn load_replacing(
        path: &Path,
        env: &[(String, String)],
        uplink: Option<UplinkCheck>,
        replacing: Option<(&str, &str)>,
    ) -> Result<Config, ConfigErrors> {
        let figment = file::read_files(path, replacing).map_err(ConfigErrors)?;
        let (figment, mut errors) = file::layer_env(figment, env);
        match validate::validate(&figment, env, uplink) {
            Ok(config) if errors.is_empty() => Ok(config),
            result => {
                errors.extend(result.err().into_iter().flatten());
                Err(ConfigErrors(errors))
            }
        }
    }
}

/// What the uplink makes of a valid `[mqtt]` with TLS before it connects (it reads the TLS files), run during
/// validation so `check-config` finds what would stop `run`: the key at fault and the problem.
pub type UplinkCheck = fn(&MqttConfig) -> Result<(), (&'static str, String)>;

/// Every problem found in a configuration, in a stable order, one a line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One problem: the key path it is about (with the drop-in or variable that set it) and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{path}{}{message}", if .path.is_empty() { "" } else { ": " })]
pub struct ConfigError {
    /// Such as `mqtt.url`, `serial[1].protocol` or `mqtt.keep_alive_s (from VITALSD_MQTT__KEEP_ALIVE_S)`;
    /// a file name for a syntax error, empty for an unreadable main file.
    pub path: String,
    pub message: String,
}

impl ConfigError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An I/O error's text without the `(os error N)` suffix, for messages a technician reads.
pub(crate) fn io_message(error: &io::Error) -> String {
    let text = error.to_string();
    match (error.raw_os_error(), text.rfind(" (os error ")) {
        (Some(_), Some(at)) => text[..at].to_string(),
        _ => text,
    }
}

/// How a configured port is found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortLocation {
    Path(PathBuf),
    Usb {
        vid: u16,
        pid: u16,
        serial_number: Option<String>,
    },
}

impl PortLocation {
    /// For logs and status.
    pub fn describe(&self) -> String {
        match self {
            PortLocation::Path(path) => path.display().to_string(),
            PortLocation::Usb {
                vid,
                pid,
                serial_number: Some(serial),
            } => format!("USB {vid:04x}:{pid:04x} serial {serial}"),
            PortLocation::Usb { vid, pid, .. } => format!("USB {vid:04x}:{pid:04x}"),
        }
    }
}

#[cfg(test)]
impl Config {
    /// Parses and validates one TOML text without drop-ins, environment or uplink check; `origin` names it in
    /// a syntax error.
    pub(crate) fn from_toml_str(text: &str, origin: &str) -> Result<Config, ConfigErrors> {
        let layer = file::parse(text, origin, None).map_err(|error| ConfigErrors(vec![error]))?;
        let figment = file::defaults().merge(layer);
        validate::validate(&figment, &[], None).map_err(ConfigErrors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Validates `toml` and compares the error lines; no expected errors means it must be valid.
    #[track_caller]
    fn check(toml: &str, expected_errors: &[&str]) {
        let actual: Vec<String> = match Config::from_toml_str(toml, "test.toml") {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(actual, expected_errors, "for config:\n{toml}");
    }

    #[track_caller]
    fn valid(toml: &str) -> Config {
        match Config::from_toml_str(toml, "test.toml") {
            Ok(config) => config,
            Err(errors) => panic!("unexpected errors:\n{errors}\nfor config:\n{toml}"),
        }
    }

    /// A committed test file (`testdata/`): TLS files made once with openssl, a password file.
    fn fixture(name: &str) -> String {
        format!("{}/testdata/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    const MINIMAL: &str = r#"
        [hub]
        id = "hub-0001"
        state_dir = "/var/lib/vitalsd"

        [mqtt]
        url = "mqtt://127.0.0.1"
    "#;

    /// `MINIMAL` plus `extra` lines appended to `[mqtt]`.
    fn with_mqtt(extra: &str) -> String {
        format!("{MINIMAL}\n{extra}\n")
    }

    fn with_serial(entries: &str) -> String {
        format!("{MINIMAL}\n{entries}\n")
    }

    #[test]
    fn the_hub_clock_policy_is_ntp_unless_the_operator_vouches_for_the_clock() {
        assert_eq!(valid(MINIMAL).hub.clock, crate::clock::ClockPolicy::Ntp);
        let trusted = MINIMAL.replace("state_dir = ", "clock = \"trusted\"\nstate_dir = ");
        assert_eq!(
            valid(&trusted).hub.clock,
            crate::clock::ClockPolicy::Trusted
        );
    }

    #[test]
    fn a_fleet_key_file_that_holds_no_ed25519_public_key_is_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vitalsd.toml");
        let (text, empty) = (dir.path().join("text.pub"), dir.path().join("empty.pub"));
        write(&text, "not a key\n");
        write(&empty, "");
        let keys = format!("[fleet]\nkeys = {{ a = {text:?}, b = {empty:?} }}");
        write(&path, &format!("{MINIMAL}\n{keys}"));
        let errors = Config::load_with_env(&path, &[], None).unwrap_err();
        let shown: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
        let problem = "is not an Ed25519 public key in PEM (openssl pkey -pubout)";
        assert_eq!(
            shown,
            [
                format!("fleet.keys.a: {} {problem}", text.display()),
                format!("fleet.keys.b: {} {problem}", empty.display()),
            ]
        );
    }

    #[test]
    fn the_fhir_output_is_off_by_default_and_takes_its_subjects_and_code_sets() {
        assert_eq!(valid(MINIMAL).output.formats, [OutputFormat::ReadingV1]);
        let config = valid(&format!(
            "{MINIMAL}\n[output]\nformats = [\"reading.v1\", \"fhir\"]\n[fhir]\nsubject_system = \"urn:oid:1.2.208.176.1.2\"\n\
             subject_value = \"3001749995\"\ndevice_subjects = {{ \"serial:spouse\" = \"0101010101\", \"ble:C4:F3:12:53:F2:C9/user/2\" = \"p-2\" }}\ncode_sets = [\"dk\"]\n\
             [[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\nid = \"serial:spouse\""
        ));
        assert_eq!(
            config.output.formats,
            [OutputFormat::ReadingV1, OutputFormat::Fhir]
        );
        let options = config.fhir.options();
        let subject = options.subject.unwrap();
        assert_eq!(
            (subject.system.as_str(), subject.value.as_str()),
            ("urn:oid:1.2.208.176.1.2", "3001749995")
        );
        assert_eq!(options.device_subjects["serial:spouse"].value, "0101010101");
        // A port's id is taken as it is, even one that looks like a Bluetooth device's.
        let port_named_like_ble = valid(&format!(
            "{MINIMAL}\n[fhir]\nsubject_system = \"urn:x:p\"\ndevice_subjects = {{ \"ble:spare\" = \"p-2\" }}\n\
             [[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\nid = \"ble:spare\""
        ));
        assert_eq!(port_named_like_ble.fhir.device_subjects["ble:spare"], "p-2");
        assert_eq!(options.code_sets.len(), 1);
        assert_eq!(options.code_sets[0].name, "dk");
    }

    #[test]
    fn a_minimal_config_gets_every_default() {
        let config = valid(MINIMAL);
        assert_eq!(
            config.hub,
            HubConfig {
                id: "hub-0001".into(),
                state_dir: "/var/lib/vitalsd".into(),
                runtime_dir: "/run/vitalsd".into(),
                clock: crate::clock::ClockPolicy::Ntp,
            }
        );
        assert_eq!(
            config.ble,
            BleConfig {
                enabled: true,
                adapter: "hci0".into(),
                admin_group: None,
            }
        );
        assert_eq!(
            config.mqtt,
            MqttConfig {
                url: BrokerUrl {
                    host: "127.0.0.1".into(),
                    port: 1883,
                    tls: false,
                },
                topic_prefix: "vitalsd/v1".into(),
                client_id: "vitalsd-hub-0001".into(),
                username: None,
                password: None,
                password_file: None,
                password_credential: None,
                ca_file: None,
                client_cert_file: None,
                client_key_file: None,
                keep_alive: Duration::from_secs(30),
                reconnect_min: Duration::from_millis(500),
                reconnect_max: Duration::from_secs(60),
                window: 128,
                protocol: MqttProtocol::V5,
                status_interval: Duration::from_secs(60),
            }
        );
        assert_eq!(
            config.outbox,
            OutboxConfig {
                max_pending: 1_000_000,
                dedup_retention_days: 400,
                fold_log_after: Some(std::time::Duration::from_secs(1)),
            }
        );
        assert!(config.serial.is_empty());
        assert_eq!(
            config.log,
            LogConfig {
                level: "info".into()
            }
        );
    }

    #[test]
    fn every_key_set_overrides_its_default() {
        let config = valid(
            &r#"
            [hub]
            id = "ward_3-b"
            state_dir = "/srv/vitalsd"

            [mqtt]
            url = "mqtts://broker.example.org"
            topic_prefix = "rpm/v2"
            client_id = "custom"
            username = "hub"
            password_file = "PASSWORD"
            ca_file = "CA"
            client_cert_file = "CERT"
            client_key_file = "KEY"
            keep_alive_s = 5
            reconnect_min_ms = 60000
            reconnect_max_s = 60
            window = 256
            protocol = "3.1.1"

            [outbox]
            max_pending = 1
            dedup_retention_days = 1
            fold_log_seconds = 0

            [[serial]]
            path = "/dev/ttyUSB0"
            protocol = "nonin-df8"
            id = "oximeter-1"
            baud_rate = 19200
            spot_stable_s = 2.5
            spot_repeat_s = 3600

            [[serial]]
            path = "/dev/serial/by-id/usb-Nonin_9560-if00-port0"
            protocol = "nonin-df13"

            [log]
            level = "info,vitalsd::serial=debug"
            "#
            .replace("PASSWORD", &fixture("mqtt-password"))
            .replace("CA", &fixture("tls/ca.pem"))
            .replace("CERT", &fixture("tls/hub.pem"))
            .replace("KEY", &fixture("tls/hub.key")),
        );
        assert_eq!(config.hub.id, "ward_3-b");
        let mqtt = &config.mqtt;
        assert_eq!(
            (mqtt.url.host.as_str(), mqtt.url.port, mqtt.url.tls),
            ("broker.example.org", 8883, true)
        );
        assert_eq!(
            (mqtt.topic_prefix.as_str(), mqtt.client_id.as_str()),
            ("rpm/v2", "custom")
        );
        assert_eq!(mqtt.username.as_deref(), Some("hub"));
        assert_eq!(
            mqtt.password,
            Some(SecretSource::File(fixture("mqtt-password").into()))
        );
        assert_eq!(
            mqtt.client_key_file.as_deref(),
            Some(Path::new(&fixture("tls/hub.key")))
        );
        assert_eq!(mqtt.keep_alive, Duration::from_secs(5));
        assert_eq!(
            (mqtt.reconnect_min, mqtt.reconnect_max),
            (Duration::from_secs(60), Duration::from_secs(60))
        );
        assert_eq!(mqtt.window, 256);
        assert_eq!(mqtt.protocol, MqttProtocol::V311);
        assert_eq!(
            config.outbox,
            OutboxConfig {
                max_pending: 1,
                dedup_retention_days: 1,
                fold_log_after: None,
            }
        );
        let [first, second] = config.serial.as_slice() else {
            panic!("two serial entries expected")
        };
        assert_eq!(first.protocol, Protocol::NoninDf8);
        assert_eq!(
            (first.device_id.as_str(), first.baud_rate),
            ("oximeter-1", Some(19200))
        );
        assert_eq!(
            (first.spot_stable, first.spot_repeat),
            (Duration::from_millis(2500), Duration::from_secs(3600))
        );
        assert_eq!(second.device_id, "serial:usb-Nonin_9560-if00-port0");
        assert_eq!(second.baud_rate, None);
        let default_spot = SpotRule::default();
        assert_eq!(
            (second.spot_stable, second.spot_repeat),
            (default_spot.stable_for, default_spot.repeat_every)
        );
        assert_eq!(config.log.level, "info,vitalsd::serial=debug");
    }

    #[test]
    fn the_admin_group_is_resolved_to_its_id() {
        // Group 0 exists on every Linux system, under whatever name it has there.
        let root_group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(0))
            .expect("look up group 0")
            .expect("group 0 exists");
        let config = valid(&format!(
            "{MINIMAL}\n[ble]\nadmin_group = \"{}\"",
            root_group.name
        ));
        assert_eq!(
            config.ble.admin_group,
            Some(AdminGroup {
                name: root_group.name,
                gid: 0
            })
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let config = match Config::from_toml_str(
            include_str!("../../config/vitalsd.toml"),
            "config/vitalsd.toml",
        ) {
            Ok(config) => config,
            Err(errors) => panic!("config/vitalsd.toml:\n{errors}"),
        };
        assert_eq!(config.hub.id, "hub-0001");
        assert_eq!(config.serial.len(), 1);
        assert_eq!(
            config.serial[0].device_id,
            "serial:usb-Nonin_Medical_Inc._9560-if00-port0"
        );
    }

    #[test]
    fn broker_urls() {
        #[track_caller]
        fn broker(url: &str) -> (String, u16, bool) {
            let mqtt = valid(&MINIMAL.replace("mqtt://127.0.0.1", url)).mqtt;
            (mqtt.url.host, mqtt.url.port, mqtt.url.tls)
        }
        assert_eq!(
            broker("mqtt://broker.local"),
            ("broker.local".into(), 1883, false)
        );
        assert_eq!(
            broker("mqtts://broker.local"),
            ("broker.local".into(), 8883, true)
        );
        assert_eq!(
            broker("MQTTS://broker.local:8884/"),
            ("broker.local".into(), 8884, true)
        );
        // As in any url, an empty port is the scheme's default.
        assert_eq!(broker("mqtt://broker:"), ("broker".into(), 1883, false));
        assert_eq!(broker("mqtt://[::1]:1884"), ("::1".into(), 1884, false));
        assert_eq!(broker("mqtts://[fe80::1]"), ("fe80::1".into(), 8883, true));

        let url_errors: &[(&str, &str)] = &[
            ("htp://broker", r#"unsupported scheme "htp""#),
            ("broker:1883", "expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]"),
            ("mqtt://", "missing host"),
            ("mqtt://:1883", "missing host"),
            ("mqtt://broker:0", "bad port: expected a number from 1 to 65535"),
            ("mqtt://broker:70000", "bad port: expected a number from 1 to 65535"),
            ("mqtt://broker:mqtt", "bad port: expected a number from 1 to 65535"),
            ("mqtt://bro ker", "invalid host: use a name of letters, digits, '-', '.' and '_', or an IP address"),
            ("mqtt://bro!ker", "invalid host: use a name of letters, digits, '-', '.' and '_', or an IP address"),
            ("mqtt://::1", "an IPv6 address must be in brackets, as in mqtt://[::1]:1883"),
            ("mqtt://fe80::1:1883", "an IPv6 address must be in brackets, as in mqtt://[::1]:1883"),
            ("mqtt://[::1", "invalid IPv6 address in brackets"),
            ("mqtt://[::1]x", "invalid IPv6 address in brackets"),
            ("mqtt://[::g]", "invalid IPv6 address in brackets"),
            (
                "mqtt://hub:secret@broker",
                "must not contain a user name or password: use mqtt.username and mqtt.password_file or mqtt.password_credential",
            ),
            ("mqtt://broker/topic", "unexpected path, query or fragment: the url names only the broker"),
            ("mqtt://broker?x=1", "unexpected path, query or fragment: the url names only the broker"),
        ];
        for (url, message) in url_errors {
            check(
                &MINIMAL.replace("mqtt://127.0.0.1", url),
                &[&format!("mqtt.url: {message}")],
            );
        }
    }

    #[test]
    fn errors_name_their_key_path() {
        let cases: &[(&str, &[&str])] = &[
            // Missing required keys and sections.
            ("", &["hub.id: missing", "hub.state_dir: missing", "mqtt.url: missing"]),
            ("[hub]\nid = \"h\"\nstate_dir = \"/s\"", &["mqtt.url: missing"]),
            // Wrong types.
            (&with_mqtt("keep_alive_s = \"30\""), &["mqtt.keep_alive_s: expected an integer, found a string"]),
            (&with_mqtt("window = 1.5"), &["mqtt.window: expected an integer, found a float"]),
            (&with_mqtt("username = 7"), &["mqtt.username: expected a string, found an integer"]),
            (&with_mqtt("topic_prefix = [\"a\"]"), &["mqtt.topic_prefix: expected a string, found an array"]),
            (&MINIMAL.replace("\"mqtt://127.0.0.1\"", "true"), &["mqtt.url: expected a string, found a boolean"]),
            (&MINIMAL.replace("\"hub-0001\"", "1979-05-27"), &["hub.id: expected a string, found a date-time"]),
            (
                "hub = \"hub-0001\"\n[mqtt]\nurl = \"mqtt://b\"",
                &["hub: expected a table, found a string"],
            ),
            (&format!("{MINIMAL}\n[log]\nlevel = 3"), &["log.level: expected a string, found an integer"]),
            (&format!("{MINIMAL}\n[ble]\nenabled = \"yes\"\nadapter = \"hci 0\"\nadaptor = 1"), &[
                "ble.enabled: expected a boolean, found a string",
                "ble.adapter: \"hci 0\" is not an adapter name such as \"hci0\"",
                "ble.adaptor: unknown key",
            ]),
            (&format!("{MINIMAL}\n[ble]\nadmin_group = \"no-such-group-vitalsd\""), &[
                "ble.admin_group: no group \"no-such-group-vitalsd\" on this system (create it with groupadd, or leave the key out)",
            ]),
            (&format!("{MINIMAL}\n[ble]\nadmin_group = \"\""), &["ble.admin_group: must not be empty"]),
            (&format!("{MINIMAL}\n[ble]\nadmin_group = 0"), &["ble.admin_group: expected a string, found an integer"]),
            (&MINIMAL.replace("state_dir = ", "runtime_dir = \"run\"\nstate_dir = "), &["hub.runtime_dir: must be an absolute path, found \"run\""]),
            (&MINIMAL.replace("state_dir = ", "clock = \"gps\"\nstate_dir = "), &["hub.clock: \"gps\" is not a clock policy: use \"ntp\" (trust the clock only while the kernel says it is synchronised) or \"trusted\" (a real-time clock or other source you vouch for)"]),
            (&MINIMAL.replace("state_dir = ", "clock = true\nstate_dir = "), &["hub.clock: expected a string, found a boolean"]),
            (&format!("{MINIMAL}\n[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"blood-pressure-measurement\""), &[
                "serial[0].protocol: \"blood-pressure-measurement\" is not a serial protocol (serial: nonin-df13, nonin-df8, nonin-df7, nonin-df2, contec-cms50-legacy, contec-cms50, masimo-ascii, tanita)",
            ]),
            (&format!("{MINIMAL}\n[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"tanita\"\nparity = \"mark\"\nselect_format = true"), &[
                "serial[0].parity: \"mark\" is not a parity: use \"none\", \"odd\" or \"even\"",
                "serial[0].select_format: only Nonin data formats can be selected, not \"tanita\"",
            ]),
            (&format!("serial = 1\n{MINIMAL}"), &["serial: expected an array of tables ([[serial]]), found an integer"]),
            (&format!("{MINIMAL}\n[serial]\npath = \"/dev/ttyS0\""), &[
                "serial: expected an array of tables ([[serial]]), found a table",
            ]),
            // Out-of-range values.
            (&with_mqtt("keep_alive_s = 4"), &["mqtt.keep_alive_s: must be between 5 and 3600, found 4"]),
            (&with_mqtt("keep_alive_s = 3601"), &["mqtt.keep_alive_s: must be between 5 and 3600, found 3601"]),
            (&with_mqtt("window = 0"), &["mqtt.window: must be between 1 and 256, found 0"]),
            (&with_mqtt("window = 257"), &["mqtt.window: must be between 1 and 256, found 257"]),
            (&with_mqtt("status_interval_s = 9"), &["mqtt.status_interval_s: must be between 10 and 86400, found 9"]),
            (&with_mqtt("protocol = \"3.1\""), &["mqtt.protocol: \"3.1\" is not a supported MQTT version: use \"5\" (the default) or \"3.1.1\" (for brokers without MQTT 5; it cannot tell a refused reading from a delivered one)"]),
            (&with_mqtt("protocol = 5"), &["mqtt.protocol: expected a string, found an integer"]),
            (&with_mqtt("reconnect_min_ms = 0"), &["mqtt.reconnect_min_ms: must be between 1 and 3600000, found 0"]),
            (&with_mqtt("reconnect_max_s = 0"), &["mqtt.reconnect_max_s: must be between 1 and 86400, found 0"]),
            (&format!("{MINIMAL}\n[outbox]\nmax_pending = 0"), &["outbox.max_pending: must be between 1 and 100000000, found 0"]),
            (&format!("{MINIMAL}\n[fleet]\ndevice_silent_after = \"5s\"\nmax_validity = \"forever\""), &[
                "fleet.device_silent_after: must be between 1 minute and 365 days, found \"5s\"",
                "fleet.max_validity: is not a duration such as \"72h\" or \"7days\": expected number at 0, found \"forever\"",
            ]),
            (&format!("{MINIMAL}\n[fleet]\nkeys = {{ ops = \"/nonexistent/vitalsd/ops.pub\" }}"), &[
                "fleet.keys.ops: cannot read /nonexistent/vitalsd/ops.pub: No such file or directory",
            ]),
            // Output formats and FHIR subjects.
            (&format!("{MINIMAL}\n[output]\nformats = \"fhir\""), &[
                "output.formats: expected an array, found a string",
            ]),
            (&format!("{MINIMAL}\n[output]\nformats = []"), &[
                "output.formats: is empty: name at least one format, such as [\"reading.v1\"]",
            ]),
            (&format!("{MINIMAL}\n[output]\nformats = [\"fhir\", \"hl7v2\"]"), &[
                "output.formats: \"hl7v2\" is not a format: use \"reading.v1\" and/or \"fhir\"",
            ]),
            (&format!("{MINIMAL}\n[output]\nformats = [\"reading.v1\", \"fhir\"]"), &[
                "fhir.subject_system: missing: subject_value and device_subjects are identifiers in this system",
                "fhir.subject_value: missing: the FHIR output needs the identifier of the patient the readings are about, as the backend knows them (with subject_system)",
            ]),
            (&format!("{MINIMAL}\n[fhir]\nsubject_system = \"urn:x:p\"\nsubject_value = \"p\"\ndevice_subjects = {{ \"ble:AA/user/255\" = \"p-2\", \"ble:AA/user/x\" = \"p-3\" }}"), &[
                "fhir.device_subjects.ble:AA/user/255: \"ble:AA/user/255\" is not a device id, or a device id and a user slot such as \"ble:C4:F3:12:53:F2:C9/user/2\"",
                "fhir.device_subjects.ble:AA/user/x: \"ble:AA/user/x\" is not a device id, or a device id and a user slot such as \"ble:C4:F3:12:53:F2:C9/user/2\"",
            ]),
            (&format!("{MINIMAL}\n[output]\nformats = [\"fhir\", \"fhir\"]"), &[
                "output.formats: \"fhir\" is listed twice",
            ]),
            (&format!("{MINIMAL}\n[fhir]\nsubject_value = \"p-1\"\ncode_sets = [\"se\"]"), &[
                "fhir.subject_system: missing: subject_value and device_subjects are identifiers in this system",
                "fhir.code_sets: \"se\" is not a code set: the hub has \"dk\", \"no\"",
            ]),
            (&format!("{MINIMAL}\n[fhir]\nsubject_system = \"cpr number\"\nsubject_value = \"p-1\""), &[
                "fhir.subject_system: \"cpr number\" is not a URI: use an identifier system such as \"urn:oid:1.2.208.176.1.2\" or \"https://example.org/patients\"",
            ]),
            (&format!("{MINIMAL}\n[fhir]\nsubject_system = \"urn:oid:1.2.208.176.1.2\""), &[
                "fhir.subject_value: missing: subject_system is set, so give the identifier in it (or device_subjects)",
            ]),
            (&format!("{MINIMAL}\n[fhir]\nsubject_system = \"urn:x:p\"\ndevice_subjects = {{ \"a b\" = \"p-2\", \"serial:ttyUSB0\" = \" \" }}\n[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\""), &[
                "fhir.device_subjects.a b: \"a b\" is not a device id, or a device id and a user slot such as \"ble:C4:F3:12:53:F2:C9/user/2\"",
                "fhir.device_subjects.serial:ttyUSB0: is not an identifier: use 1 to 256 characters",
            ]),
            // A subject under an id no reading carries would send that device's readings to the hub's patient.
            (&format!("{MINIMAL}\n[fhir]\nsubject_system = \"urn:x:p\"\ndevice_subjects = {{ \"serial:TTYUSB0\" = \"p-2\", \"ble:c4-f3-12-53-f2-c9/user/1\" = \"p-3\", \"ble:C4:F3\" = \"p-4\" }}\n[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\""), &[
                "fhir.device_subjects.ble:C4:F3: \"ble:C4:F3\" is neither a [[serial]] entry's id nor \"ble:\" and a Bluetooth address such as \"ble:C4:F3:12:53:F2:C9\"; no reading would carry it",
                "fhir.device_subjects.ble:c4-f3-12-53-f2-c9/user/1: \"ble:c4-f3-12-53-f2-c9\" is not how the hub writes that device's id: use \"ble:C4:F3:12:53:F2:C9\"",
                "fhir.device_subjects.serial:TTYUSB0: \"serial:TTYUSB0\" is neither a [[serial]] entry's id nor \"ble:\" and a Bluetooth address such as \"ble:C4:F3:12:53:F2:C9\"; no reading would carry it",
            ]),
            (&format!("{MINIMAL}\n[outbox]\ndedup_retention_days = 0"), &[
                "outbox.dedup_retention_days: must be between 1 and 36500, found 0",
            ]),
            (&format!("{MINIMAL}\n[outbox]\nfold_log_seconds = -1"), &[
                "outbox.fold_log_seconds: must be between 0 and 86400, found -1",
            ]),
            // Hub identity.
            ("[hub]\nid = \"Hub 1\"\nstate_dir = \"/s\"\n[mqtt]\nurl = \"mqtt://b\"", &[
                r#"hub.id: "Hub 1" is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"#,
            ]),
            ("[hub]\nid = \"\"\nstate_dir = \"/s\"\n[mqtt]\nurl = \"mqtt://b\"", &[
                r#"hub.id: "" is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"#,
            ]),
            (&format!("[hub]\nid = \"{}\"\nstate_dir = \"/s\"\n[mqtt]\nurl = \"mqtt://b\"", "a".repeat(65)), &[&format!(
                r#"hub.id: "{}" is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"#,
                "a".repeat(65)
            )]),
            ("[hub]\nid = \"h\"\nstate_dir = \"var/lib\"\n[mqtt]\nurl = \"mqtt://b\"", &[
                r#"hub.state_dir: must be an absolute path, found "var/lib""#,
            ]),
            // Topic prefix.
            (&with_mqtt("topic_prefix = \"\""), &["mqtt.topic_prefix: must not be empty"]),
            (&with_mqtt("topic_prefix = \"a/+/b\""), &[
                r#"mqtt.topic_prefix: must not contain the MQTT wildcards '+' or '#', found "a/+/b""#,
            ]),
            (&with_mqtt("topic_prefix = \"a/#\""), &[
                r#"mqtt.topic_prefix: must not contain the MQTT wildcards '+' or '#', found "a/#""#,
            ]),
            (&with_mqtt("topic_prefix = \"/a\""), &[r#"mqtt.topic_prefix: must not start or end with '/', found "/a""#]),
            (&with_mqtt("topic_prefix = \"a/\""), &[r#"mqtt.topic_prefix: must not start or end with '/', found "a/""#]),
            (&with_mqtt("topic_prefix = \"a//b\""), &[r#"mqtt.topic_prefix: must not contain an empty level, found "a//b""#]),
            (&with_mqtt("topic_prefix = \"$SYS/x\""), &[
                r#"mqtt.topic_prefix: must not start with '$' (reserved for the broker), found "$SYS/x""#,
            ]),
            // Other string checks.
            (&with_mqtt("client_id = \"\""), &["mqtt.client_id: must not be empty"]),
            (&with_mqtt("username = \"\""), &["mqtt.username: must not be empty"]),
            (&format!("{MINIMAL}\n[log]\nlevel = \"\""), &["log.level: must not be empty"]),
            (&format!("{MINIMAL}\n[log]\nlevel = \"vitalsd=loud\""), &[
                r#"log.level: invalid log filter "vitalsd=loud": error parsing level filter: expected one of "off", "error", "warn", "info", "debug", "trace", or a number 0-5"#,
            ]),
            // Unknown keys and sections, every one of them.
            (&with_mqtt("pasword_file = \"/x\"\nkeepalive = 3"), &[
                "mqtt.keepalive: unknown key",
                "mqtt.pasword_file: unknown key",
            ]),
            (&format!("{MINIMAL}\n[bluetooth]\nadapter = \"hci0\"\n[[usb]]\nx = 1"), &[
                "bluetooth: unknown section",
                "usb: unknown section",
            ]),
            (&format!("debug = true\n{MINIMAL}"), &["debug: unknown key"]),
            // Cross-field checks.
            (&with_mqtt("reconnect_min_ms = 61000"), &[
                "mqtt.reconnect_min_ms: 61000 ms is longer than mqtt.reconnect_max_s (60 s)",
            ]),
            (&with_mqtt("reconnect_min_ms = 5000\nreconnect_max_s = 2"), &[
                "mqtt.reconnect_min_ms: 5000 ms is longer than mqtt.reconnect_max_s (2 s)",
            ]),
            (&with_mqtt(&format!("password_file = \"{}\"", fixture("mqtt-password"))), &[
                "mqtt.username: missing (MQTT sends a password only together with a user name)",
            ]),
            (&with_mqtt("ca_file = \"/dev/null\""), &["mqtt.ca_file: needs an mqtts:// url"]),
            (&with_mqtt("client_cert_file = \"/dev/null\"\nclient_key_file = \"/dev/null\""), &[
                "mqtt.client_cert_file: needs an mqtts:// url",
                "mqtt.client_key_file: needs an mqtts:// url",
            ]),
            // Files that must be readable.
            (&with_mqtt("username = \"u\"\npassword_file = \"/nonexistent/vitalsd/password\""), &[
                "mqtt.password_file: cannot read /nonexistent/vitalsd/password: No such file or directory",
            ]),
            (&with_mqtt("username = \"u\"\npassword_file = \"/\""), &["mqtt.password_file: cannot read /: Is a directory"]),
            // The password is read even when another key of [mqtt] is wrong.
            (&with_mqtt("window = 0\nusername = \"u\"\npassword_file = \"/nonexistent/vitalsd/password\""), &[
                "mqtt.password_file: cannot read /nonexistent/vitalsd/password: No such file or directory",
                "mqtt.window: must be between 1 and 256, found 0",
            ]),
            (&with_mqtt("username = \"u\"\npassword_file = \"secret\""), &[
                r#"mqtt.password_file: must be an absolute path, found "secret""#,
            ]),
            (&with_mqtt("username = \"u\"\npassword_credential = \"../x\""), &[
                r#"mqtt.password_credential: "../x" is not a credential name: use the name given to LoadCredential= (no '/')"#,
            ]),
        ];
        for (toml, expected) in cases {
            check(toml, expected);
        }
    }

    #[test]
    fn a_password_file_is_read_as_the_uplink_reads_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"s3cret", None),
            (b"s3cret\n", None),
            (b"s3cret\r\n", None),
            (b"", Some("empty; the file must hold the password")),
            (b"\n", Some("empty; the file must hold the password")),
            (b"s3cret\nsecond line\n", Some("more than one line; the file must hold just the password (one trailing newline is ignored)")),
            (b"s3cret\n\n", Some("more than one line; the file must hold just the password (one trailing newline is ignored)")),
        ];
        for (index, (content, problem)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("password-{index}"));
            write(&path, std::str::from_utf8(content).unwrap());
            let toml = with_mqtt(&format!(
                "username = \"hub\"\npassword_file = \"{}\"",
                path.display()
            ));
            let expected: Vec<String> = problem
                .iter()
                .map(|problem| format!("mqtt.password_file: {}: {problem}", path.display()))
                .collect();
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            check(&toml, &expected);
            // No message ever holds the password.
            if let Err(errors) = Config::from_toml_str(&toml, "test.toml") {
                assert!(!errors.to_string().contains("s3cret"), "{errors}");
            }
        }
    }

    #[test]
    fn password_sources() {
        let config = valid(&with_mqtt(
            "username = \"hub\"\npassword_credential = \"mqtt-password\"",
        ));
        assert_eq!(
            config.mqtt.password,
            Some(SecretSource::Credential("mqtt-password".into()))
        );
        check(&with_mqtt(&format!("username = \"hub\"\npassword_file = \"{}\"\npassword_credential = \"mqtt-password\"", fixture("mqtt-password"))), &[
            "mqtt.password_credential: conflicts with mqtt.password_file: set only one",
        ]);
    }

    #[test]
    fn a_huge_bad_value_is_quoted_by_its_beginning_only() {
        let error_for = |id: &str| {
            let toml = MINIMAL.replace("\"hub-0001\"", &format!("'{id}'"));
            match Config::from_toml_str(&toml, "test.toml") {
                Ok(_) => panic!("a bad hub id was accepted"),
                Err(errors) => errors.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
            }
        };
        let errors = error_for(&"x".repeat(1_000_000));
        assert_eq!(
            errors,
            [format!(
                "hub.id: \"{}…\" (1000000 characters) is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'",
                "x".repeat(200)
            )]
        );
        // Escaped quotes inside the value neither end the quoting early nor leak the rest.
        let errors = error_for(&"a\"b".repeat(300_000));
        assert_eq!(errors.len(), 1);
        assert!(errors[0].len() < 400, "{}", &errors[0][..400]);
        assert!(
            errors[0].ends_with(
                "is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"
            ),
            "{}",
            errors[0]
        );
    }

    /// Sane upper bounds: a name, path, host or key far longer than any real one is refused, and the
    /// message shows only its beginning.
    #[test]
    fn overlong_names_paths_hosts_and_keys_are_refused_by_their_beginning() {
        let x = |n: usize| "x".repeat(n);
        let shown = |n: usize| format!("\"{}…\" ({n} characters)", x(200));
        let cases: Vec<(String, Vec<String>)> = vec![
            (with_mqtt(&format!("client_id = \"{}\"", x(256))), vec![]),
            (with_mqtt(&format!("client_id = \"{}\"", x(257))), vec![format!("mqtt.client_id: must be at most 256 characters, found {}", shown(257))]),
            (with_mqtt(&format!("topic_prefix = \"{}\"", x(10_000))), vec![format!("mqtt.topic_prefix: must be at most 256 characters, found {}", shown(10_000))]),
            (MINIMAL.replace("127.0.0.1", &x(253)), vec![]),
            (MINIMAL.replace("127.0.0.1", &x(254)), vec!["mqtt.url: host longer than 253 characters, the longest DNS name".to_string()]),
            (MINIMAL.replace("/var/lib/vitalsd", &format!("/{}", x(5000))), vec![format!("hub.state_dir: must be shorter than 4096 bytes, found \"/{}…\" (5001 characters)", x(199))]),
            (with_mqtt(&format!("{} = 1", x(1_000_000))), vec![format!("mqtt.{}: unknown key", shown(1_000_000))]),
            (format!("{MINIMAL}\n[ble]\nadapter = \"hci0123456789abc\""), vec!["ble.adapter: \"hci0123456789abc\" is not an adapter name such as \"hci0\"".to_string()]),
            (format!("{MINIMAL}\n[outbox]\nmax_pending = 100000001"), vec!["outbox.max_pending: must be between 1 and 100000000, found 100000001".to_string()]),
        ];
        for (toml, expected) in cases {
            let actual: Vec<String> = match Config::from_toml_str(&toml, "test.toml") {
                Ok(_) => Vec::new(),
                Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
            };
            assert_eq!(actual, expected, "for config of {} bytes", toml.len());
        }
    }

    #[test]
    fn a_file_larger_than_a_mebibyte_is_refused_before_it_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vitalsd.toml");
        let entry = "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\n";
        write(&path, &format!("{MINIMAL}{}", entry.repeat(200_001)));
        let message = format!(
            "cannot read {}: larger than 1 MiB; a configuration is a few kilobytes",
            path.display()
        );
        let errors = Config::load_with_env(&path, &[], None).unwrap_err();
        assert_eq!(errors.to_string(), message);
        let drop_in = dir.path().join("vitalsd.toml.d/big.toml");
        write(&path, MINIMAL);
        std::fs::create_dir(dir.path().join("vitalsd.toml.d")).unwrap();
        write(&drop_in, &format!("# {}\n", "x".repeat(2 << 20)));
        let errors = Config::load_with_env(&path, &[], None).unwrap_err();
        let message = format!(
            "{0}: cannot read {0}: larger than 1 MiB; a configuration is a few kilobytes",
            drop_in.display()
        );
        assert_eq!(errors.to_string(), message);
    }

    #[test]
    fn a_link_and_the_device_it_leads_to_are_one_port() {
        let dir = tempfile::tempdir().unwrap();
        let device = dir.path().join("ttyUSB0");
        std::fs::write(&device, b"").unwrap();
        let link = dir.path().join("usb-Nonin_9560-if00-port0");
        std::os::unix::fs::symlink(&device, &link).unwrap();
        let entry = |path: &std::path::Path, id: &str| {
            format!(
                "[[serial]]\npath = \"{}\"\nprotocol = \"nonin-df13\"\nid = \"{id}\"\n",
                path.display()
            )
        };
        let toml = format!("{MINIMAL}\n{}{}", entry(&device, "a"), entry(&link, "b"));
        let message = format!(
            "serial[1].path: {} leads to {}, already read by serial[0]",
            link.display(),
            std::fs::canonicalize(&device).unwrap().display()
        );
        check(&toml, &[&message]);
    }

    #[test]
    fn a_hub_reads_tens_of_serial_ports_not_thousands() {
        let entry = |n: usize| {
            format!("[[serial]]\npath = \"/dev/ttyUSB{n}\"\nprotocol = \"nonin-df13\"\n")
        };
        let many: String = (0..65).map(entry).collect();
        check(
            &format!("{MINIMAL}\n{many}"),
            &["serial: 65 entries; a hub reads at most 64 serial ports"],
        );
        let enough: String = (0..64).map(entry).collect();
        check(&format!("{MINIMAL}\n{enough}"), &[]);
    }

    #[test]
    fn serial_entries() {
        let cases: &[(&str, &[&str])] = &[
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"", &[]),
            ("[[serial]]\nprotocol = \"nonin-df13\"", &["serial[0].path: missing (or name the port by its USB identity: match = { vid = 0x10c4, pid = 0xea60 })"]),
            ("[[serial]]\nprotocol = \"tanita\"\npath = \"/dev/ttyUSB0\"\nmatch = { vid = 0x0403, pid = 0x6001 }", &["serial[0].match: set path or match, not both"]),
            ("[[serial]]\nprotocol = \"tanita\"\nmatch = { vid = 0x0403, pid = 70000, model = 1 }", &[
                "serial[0].match.pid: must be between 0 and 65535, found 70000",
                "serial[0].match.model: unknown key",
            ]),
            ("[[serial]]\nprotocol = \"tanita\"\nmatch = { vid = 0x0403, pid = 0x6001 }\n[[serial]]\nprotocol = \"masimo-ascii\"\nmatch = { vid = 0x0403, pid = 0x6001 }", &[
                "serial[1].match: USB 0403:6001 is already used by serial[0]",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"", &["serial[0].protocol: missing"]),
            // A match whose serial is refused finds no port, so it clashes with no other.
            ("[[serial]]\nprotocol = \"tanita\"\nmatch = { vid = 1, pid = 2, serial = \"\" }\n\
              [[serial]]\nprotocol = \"tanita\"\nmatch = { vid = 1, pid = 2, serial = \"\" }", &[
                "serial[0].match.serial: must not be empty",
                "serial[1].match.serial: must not be empty",
            ]),
            ("[[serial]]\npath = \"ttyUSB0\"\nprotocol = \"nonin-df13\"", &[
                r#"serial[0].path: must be an absolute path, found "ttyUSB0""#,
            ]),
            ("[[serial]]\npath = \"/\"\nprotocol = \"nonin-df13\"", &[
                "serial[0].path: names no device file, so the default id cannot be derived from it: set id",
            ]),
            ("[[serial]]\nprotocol = \"tanita\"\nmatch = { vid = 0x0403, pid = 0x6001, serial = \"A B\" }", &[
                "serial[0].match: has a serial a device id cannot hold, so the default id cannot be derived from it: set id",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df99\"", &[
                r#"serial[0].protocol: unknown protocol "nonin-df99" (known: nonin-df13, nonin-df8, nonin-df7, nonin-df2, contec-cms50-legacy, contec-cms50, masimo-ascii, tanita)"#,
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\nbaud_rate = 299", &[
                "serial[0].baud_rate: must be between 300 and 4000000, found 299",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\nbaud_rate = \"9600\"", &[
                "serial[0].baud_rate: expected an integer, found a string",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nspot_stable_s = 0", &[
                "serial[0].spot_stable_s: must be more than 0 and at most 86400 seconds, found 0",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nspot_repeat_s = -1.5", &[
                "serial[0].spot_repeat_s: must be more than 0 and at most 86400 seconds, found -1.5",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nspot_repeat_s = nan", &[
                "serial[0].spot_repeat_s: must be more than 0 and at most 86400 seconds, found NaN",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nspot_repeat_s = \"5m\"", &[
                "serial[0].spot_repeat_s: expected a number of seconds, found a string",
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nid = \"oxi meter\"", &[
                r#"serial[0].id: "oxi meter" is not a valid device id: use 1 to 128 characters without spaces, control characters, '/' or '|'"#,
            ]),
            ("[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nbaud = 9600\nstop_bits = 2", &[
                "serial[0].baud: unknown key",
                "serial[0].stop_bits: unknown key",
            ]),
            // Uniqueness, with the default ids too.
            (
                "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nid = \"oximeter\"\n\
                 [[serial]]\npath = \"/dev/ttyUSB1\"\nprotocol = \"nonin-df8\"\nid = \"oximeter\"",
                &[r#"serial[1].id: "oximeter" is already used by serial[0]"#],
            ),
            (
                "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nid = \"serial:ttyUSB1\"\n\
                 [[serial]]\npath = \"/dev/ttyUSB1\"\nprotocol = \"nonin-df8\"",
                &[r#"serial[1].id: "serial:ttyUSB1" (the default from path) is already used by serial[0]: set id"#],
            ),
            (
                "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\nid = \"a\"\n\
                 [[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df13\"\nid = \"b\"",
                &["serial[1].path: /dev/ttyUSB0 is already used by serial[0]"],
            ),
        ];
        for (entries, expected) in cases {
            check(&with_serial(entries), expected);
        }
        check(
            &format!(
                "serial = [1, {{ path = \"/dev/ttyUSB0\", protocol = \"nonin-df8\" }}]\n{MINIMAL}"
            ),
            &["serial[0]: expected a table, found an integer"],
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        check(
            r#"
            [hub]
            id = "Hub 1"

            [mqtt]
            url = "htp://broker"
            keep_alive_s = "soon"
            pasword_file = "/x"
            window = 1000

            [[serial]]
            path = "/dev/ttyUSB0"
            protocol = "nonin-df99"

            [[serial]]
            path = "/dev/ttyUSB0"
            protocol = "nonin-df8"
            "#,
            &[
                r#"hub.id: "Hub 1" is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"#,
                "hub.state_dir: missing",
                r#"mqtt.url: unsupported scheme "htp""#,
                "mqtt.keep_alive_s: expected an integer, found a string",
                "mqtt.window: must be between 1 and 256, found 1000",
                "mqtt.pasword_file: unknown key",
                r#"serial[0].protocol: unknown protocol "nonin-df99" (known: nonin-df13, nonin-df8, nonin-df7, nonin-df2, contec-cms50-legacy, contec-cms50, masimo-ascii, tanita)"#,
                "serial[1].path: /dev/ttyUSB0 is already used by serial[0]",
            ],
        );
    }

    #[test]
    fn a_syntax_error_is_one_error_with_line_and_column() {
        check("[hub]\nid = hub-0001\n", &["test.toml: TOML parse error at line 2, column 6: string values must be quoted, expected literal string"]);
        check(
            "[hub]\nid = \"a\"\nid = \"b\"\n",
            &["test.toml: TOML parse error at line 3, column 1: duplicate key"],
        );
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    fn write(path: &Path, text: &str) {
        std::fs::write(path, text).expect("write test file");
    }

    #[test]
    fn environment_variables_override_single_keys() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(&path, MINIMAL);
        let vars = env(&[
            ("VITALSD_CONFIG", "/elsewhere.toml"),
            ("VITALSD_HIL_SERIAL_PATH", "/dev/ttyUSB9"),
            ("PATH", "/usr/bin"),
            ("VITALSD_MQTT__URL", "mqtts://broker.example.org:8884"),
            ("VITALSD_MQTT__KEEP_ALIVE_S", "45"),
            ("VITALSD_HUB__ID", "1234"),
            ("VITALSD_MQTT__USERNAME", "true"),
            ("VITALSD_OUTBOX__MAX_PENDING", "1_000"),
            ("VITALSD_LOG__LEVEL", "debug"),
        ]);
        let config = match Config::load_with_env(&path, &vars, None) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        assert_eq!(
            (
                config.mqtt.url.host.as_str(),
                config.mqtt.url.port,
                config.mqtt.url.tls
            ),
            ("broker.example.org", 8884, true)
        );
        assert_eq!(config.mqtt.keep_alive, Duration::from_secs(45));
        // A string key keeps the variable's text even when it looks like a number or boolean.
        assert_eq!(config.hub.id, "1234");
        assert_eq!(config.mqtt.client_id, "vitalsd-1234");
        assert_eq!(config.mqtt.username.as_deref(), Some("true"));
        assert_eq!(config.outbox.max_pending, 1000);
        assert_eq!(config.log.level, "debug");
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(&path, MINIMAL);
        let errors = |vars: &[(&str, &str)]| -> Vec<String> {
            match Config::load_with_env(&path, &env(vars), None) {
                Ok(_) => Vec::new(),
                Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
            }
        };
        assert_eq!(errors(&[("VITALSD_MQTT__KEEP_ALIVE_S", "soon")]), [
            "mqtt.keep_alive_s (from VITALSD_MQTT__KEEP_ALIVE_S): expected an integer, found a string"
        ]);
        assert_eq!(
            errors(&[("VITALSD_MQTT__WINDOW", "0")]),
            ["mqtt.window (from VITALSD_MQTT__WINDOW): must be between 1 and 256, found 0"]
        );
        assert_eq!(
            errors(&[("VITALSD_MQTT__URL", "htp://x")]),
            [r#"mqtt.url (from VITALSD_MQTT__URL): unsupported scheme "htp""#]
        );
        assert_eq!(
            errors(&[("VITALSD_MQTT__KEEPALIVE", "3")]),
            ["mqtt.keepalive (from VITALSD_MQTT__KEEPALIVE): unknown key"]
        );
        assert_eq!(
            errors(&[("VITALSD_MQQT__URL", "mqtt://b")]),
            ["mqqt.url (from VITALSD_MQQT__URL): unknown section"]
        );
        // A variable's text that looks like a number is read as text where the key wants text.
        assert_eq!(
            errors(&[("VITALSD_HUB__STATE_DIR", "5")]),
            [r#"hub.state_dir (from VITALSD_HUB__STATE_DIR): must be an absolute path, found "5""#]
        );
        assert_eq!(
            errors(&[("VITALSD_MQTT__WINDOW", "true")]),
            ["mqtt.window (from VITALSD_MQTT__WINDOW): expected an integer, found a string"]
        );
        assert_eq!(errors(&[("VITALSD_OUTPUT__FORMATS", "fhir")]), [
            "output.formats (from VITALSD_OUTPUT__FORMATS): expected an array, which a variable cannot hold: set it in a drop-in"
        ]);
        assert_eq!(errors(&[("VITALSD_SERIAL__PATH", "/dev/ttyUSB0")]), [
            "serial.path (from VITALSD_SERIAL__PATH): [[serial]] entries cannot be set from the environment"
        ]);
        // One underscore where two belong: not read, and said so, rather than ignored.
        assert_eq!(errors(&[("VITALSD_MQTT_WINDOW", "0")]), [
            "VITALSD_MQTT_WINDOW: is not read: a variable names its section and key with two underscores, as VITALSD_MQTT__WINDOW"
        ]);
        assert_eq!(errors(&[("VITALSD_MQTT_TOPIC_PREFIX", "x")]), [
            "VITALSD_MQTT_TOPIC_PREFIX: is not read: a variable names its section and key with two underscores, as VITALSD_MQTT__TOPIC_PREFIX"
        ]);
        // Other variables of the prefix are not configuration: the test suites' hooks, VITALSD_CONFIG.
        assert!(errors(&[("VITALSD_FHIR_DUMP", "x"), ("VITALSD_CONFIG", "/x")]).is_empty());
        assert_eq!(
            errors(&[("VITALSD_MQTT__", "x")]),
            ["VITALSD_MQTT__: expected VITALSD_<SECTION>__<KEY>"]
        );
        assert_eq!(
            errors(&[
                ("VITALSD_MQTT__WINDOW", "0"),
                ("VITALSD_HUB__STATE_DIR", "relative")
            ]),
            [
                r#"hub.state_dir (from VITALSD_HUB__STATE_DIR): must be an absolute path, found "relative""#,
                "mqtt.window (from VITALSD_MQTT__WINDOW): must be between 1 and 256, found 0",
            ]
        );
    }

    #[test]
    fn a_state_dir_that_is_a_file_is_an_error_and_a_missing_one_is_made_later() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(&path, MINIMAL);
        let load = |state_dir: &Path| {
            let shown = state_dir.display().to_string();
            let vars = env(&[("VITALSD_HUB__STATE_DIR", shown.as_str())]);
            Config::load_with_env(&path, &vars, None).map_err(|errors| errors.to_string())
        };
        let expected = format!(
            "hub.state_dir (from VITALSD_HUB__STATE_DIR): {} exists and is not a directory",
            path.display()
        );
        assert_eq!(load(&path).err(), Some(expected.clone()));
        assert_eq!(load(&path.join("state")).err(), Some(expected));
        assert!(load(&dir.path().join("state")).is_ok());
        assert!(load(dir.path()).is_ok());
    }

    #[test]
    fn the_credentials_directory_is_checked_when_systemd_sets_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(
            &path,
            &with_mqtt("username = \"hub\"\npassword_credential = \"mqtt-password\""),
        );
        let credentials = dir.path().join("credentials");
        std::fs::create_dir(&credentials).expect("credentials dir");
        let vars = env(&[(
            "CREDENTIALS_DIRECTORY",
            credentials.to_str().expect("utf-8 temp dir"),
        )]);
        let errors = match Config::load_with_env(&path, &vars, None) {
            Ok(_) => panic!("a missing credential must be reported"),
            Err(errors) => errors.to_string(),
        };
        assert_eq!(
            errors,
            format!(
                "mqtt.password_credential: cannot read {}/mqtt-password: No such file or directory",
                credentials.display()
            )
        );
        write(&credentials.join("mqtt-password"), "s3cret\n");
        assert!(Config::load_with_env(&path, &vars, None).is_ok());
    }

    /// The runtime directory comes from the environment the loader is given, never from the process's own.
    #[test]
    fn the_runtime_directory_defaults_to_the_one_systemd_sets() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(&path, MINIMAL);
        let runtime_dir =
            |vars: &[(&str, &str)]| match Config::load_with_env(&path, &env(vars), None) {
                Ok(config) => config.hub.runtime_dir,
                Err(errors) => panic!("{errors}"),
            };
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "/run/vitalsd"),
            (&[("RUNTIME_DIRECTORY", "")], "/run/vitalsd"),
            (
                &[("RUNTIME_DIRECTORY", "/run/vitalsd-test-unit")],
                "/run/vitalsd-test-unit",
            ),
        ];
        for (vars, expected) in cases {
            assert_eq!(runtime_dir(vars), Path::new(expected), "for {vars:?}");
        }
        write(
            &path,
            &MINIMAL.replace("state_dir = ", "runtime_dir = \"/srv/run\"\nstate_dir = "),
        );
        assert_eq!(
            runtime_dir(&[("RUNTIME_DIRECTORY", "/run/x")]),
            Path::new("/srv/run")
        );
    }

    #[test]
    fn drop_ins_merge_key_by_key_in_lexical_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        write(
            &path,
            &format!("{MINIMAL}\nkeep_alive_s = 10\nwindow = 8\n"),
        );
        let drop_ins = dir.path().join("vitalsd.toml.d");
        std::fs::create_dir(&drop_ins).expect("drop-in dir");
        write(
            &drop_ins.join("20-broker.toml"),
            "[mqtt]\nurl = \"mqtts://broker.example.org\"\nkeep_alive_s = 20\n",
        );
        write(
            &drop_ins.join("10-first.toml"),
            "[mqtt]\nkeep_alive_s = 15\nurl = \"mqtt://ignored\"\n[log]\nlevel = \"warn\"\n",
        );
        write(
            &drop_ins.join("30-serial.toml"),
            "[[serial]]\npath = \"/dev/ttyUSB0\"\nprotocol = \"nonin-df8\"\n",
        );
        write(&drop_ins.join("README"), "not toml, not read");
        write(&drop_ins.join(".hidden.toml"), "not = [valid");
        let config = match Config::load_with_env(&path, &[], None) {
            Ok(config) => config,
            Err(errors) => panic!("{errors}"),
        };
        assert_eq!(
            (config.mqtt.url.host.as_str(), config.mqtt.url.tls),
            ("broker.example.org", true)
        );
        assert_eq!(config.mqtt.keep_alive, Duration::from_secs(20));
        assert_eq!(config.mqtt.window, 8);
        assert_eq!(config.log.level, "warn");
        assert_eq!(config.hub.id, "hub-0001");
        assert_eq!(config.serial.len(), 1);

        // The environment wins over every file.
        let config =
            match Config::load_with_env(&path, &env(&[("VITALSD_MQTT__KEEP_ALIVE_S", "25")]), None)
            {
                Ok(config) => config,
                Err(errors) => panic!("{errors}"),
            };
        assert_eq!(config.mqtt.keep_alive, Duration::from_secs(25));

        // Errors in values from a drop-in name the drop-in.
        let bad = drop_ins.join("40-bad.toml");
        write(&bad, "[mqtt]\nwindow = 0\ntypo = 1\n");
        let errors = match Config::load_with_env(&path, &[], None) {
            Ok(_) => panic!("the bad drop-in must be reported"),
            Err(errors) => errors.to_string(),
        };
        assert_eq!(
            errors,
            format!(
                "mqtt.window (from {bad}): must be between 1 and 256, found 0\nmqtt.typo (from {bad}): unknown key",
                bad = bad.display()
            )
        );

        // Syntax errors in several files are all reported, each naming its file.
        write(&bad, "[mqtt\n");
        write(&path, "[hub]\nid = \n");
        let errors = match Config::load_with_env(&path, &[], None) {
            Ok(_) => panic!("syntax errors must be reported"),
            Err(errors) => errors.0,
        };
        assert_eq!(
            errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            [path.display().to_string(), bad.display().to_string()]
        );
        assert!(
            errors
                .iter()
                .all(|e| e.message.starts_with("TOML parse error at line ")),
            "{errors:?}"
        );
    }

    #[test]
    fn an_unreadable_file_is_one_error_naming_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("missing.toml");
        let errors = match Config::load_with_env(&path, &[], None) {
            Ok(_) => panic!("a missing file must be reported"),
            Err(errors) => errors.0,
        };
        assert_eq!(
            errors,
            [ConfigError::new(
                "",
                format!("cannot read {}: No such file or directory", path.display())
            )]
        );
        assert_eq!(
            errors[0].to_string(),
            format!("cannot read {}: No such file or directory", path.display())
        );
    }

    #[test]
    fn secrets_are_read_when_needed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cases = [
            ("plain", "plain"),
            ("line\n", "line"),
            ("crlf\r\n", "crlf"),
            ("two\n\n", "two\n"),
            ("", ""),
        ];
        for (index, (stored, expected)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("secret-{index}"));
            write(&path, stored);
            assert_eq!(
                SecretSource::File(path)
                    .read_from(None)
                    .expect("read secret file"),
                expected
            );
        }
        write(&dir.path().join("mqtt-password"), "s3cret\n");
        let credential = SecretSource::Credential("mqtt-password".into());
        assert_eq!(
            credential
                .read_from(Some(dir.path().into()))
                .expect("read credential"),
            "s3cret"
        );
        let unset = credential
            .read_from(None)
            .expect_err("no credentials directory");
        assert!(
            unset
                .to_string()
                .contains("CREDENTIALS_DIRECTORY is not set"),
            "{unset}"
        );
        let missing = SecretSource::File(dir.path().join("nope"))
            .read_from(None)
            .expect_err("missing file");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        assert!(
            missing
                .to_string()
                .ends_with("nope: No such file or directory"),
            "{missing}"
        );
    }

    #[test]
    fn debug_output_holds_no_password() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("password");
        write(&secret, "hunter2\n");
        let config = valid(&with_mqtt(&format!(
            "username = \"hub\"\npassword_file = \"{}\"",
            secret.display()
        )));
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("password"), "{debug}");
    }
}

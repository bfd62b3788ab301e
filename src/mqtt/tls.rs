//! TLS for the uplink: the files `[mqtt]` names (the CA bundle, the client certificate and its key), read
//! and turned into a rustls client configuration (ring provider) for rumqttc. [`check`] runs the same code
//! while the configuration is validated, so `check-config` finds exactly what would stop the uplink.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{io_message, MqttConfig};

/// Debian's bundle of public CAs, used when `mqtt.ca_file` is not set.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Larger than any CA bundle; a bigger file (or a device such as `/dev/zero`) is not a PEM file, and
/// reading it whole would cost memory for nothing.
const MAX_PEM_BYTES: u64 = 4 << 20;

/// A TLS file that cannot be used: which key named it, the file, and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("mqtt.{key}: {}", self.file_problem())]
pub struct TlsFileError {
    /// `ca_file`, `client_cert_file` or `client_key_file`.
    pub key: &'static str,
    pub path: PathBuf,
    /// Whether the path is the system's bundle, used because `mqtt.ca_file` is not set.
    pub default: bool,
    pub problem: String,
}

impl TlsFileError {
    /// The file and what is wrong with it, for a message that names the key itself.
    pub fn file_problem(&self) -> String {
        let default = if self.default {
            " (the system's CA bundle, used because mqtt.ca_file is not set)"
        } else {
            ""
        };
        format!("{}{default}: {}", self.path.display(), self.problem)
    }

    /// Makes the error for a problem with the file `key` names.
    fn blaming(key: &'static str, path: &Path, default: bool) -> impl Fn(String) -> TlsFileError {
        let path = path.to_path_buf();
        move |problem| TlsFileError {
            key,
            path: path.clone(),
            default,
            problem,
        }
    }
}

/// The uplink's check of a valid `[mqtt]` with TLS (a [`crate::config::UplinkCheck`]): the key whose file
/// would stop it, and what is wrong.
pub fn check(mqtt: &MqttConfig) -> Result<(), (&'static str, String)> {
    rustls_config(mqtt)
        .map(drop)
        .map_err(|error| (error.key, error.file_problem()))
}

/// The TLS setup rumqttc connects with.
pub fn client_config(mqtt: &MqttConfig) -> Result<rumqttc::TlsConfiguration, TlsFileError> {
    let config = rustls_config(mqtt)?;
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

/// Reads the CA bundle (`mqtt.ca_file`, or the system's), and the client certificate and key if both are
/// set, and builds the rustls client configuration.
fn rustls_config(mqtt: &MqttConfig) -> Result<rustls::ClientConfig, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (ca_path, default) = match mqtt.ca_file.as_deref() {
        Some(path) => (path, false),
        None => (Path::new(SYSTEM_CA_BUNDLE), true),
    };
    let ca_error = TlsFileError::blaming("ca_file", ca_path, default);
    let mut roots = rustls::RootCertStore::empty();
    for (index, certificate) in certificates(ca_path)
        .map_err(&ca_error)?
        .into_iter()
        .enumerate()
    {
        roots.add(certificate).map_err(|error| {
            ca_error(format!(
                "certificate {} is not a usable CA certificate: {error}",
                index + 1
            ))
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|error| ca_error(format!("no TLS version to use: {error}")))?
        .with_root_certificates(roots);
    let (cert_path, key_path) = match (&mqtt.client_cert_file, &mqtt.client_key_file) {
        (Some(cert_path), Some(key_path)) => (cert_path, key_path),
        _ => return Ok(builder.with_no_client_auth()),
    };
    let cert_error = TlsFileError::blaming("client_cert_file", cert_path, false);
    let key_error = TlsFileError::blaming("client_key_file", key_path, false);
    let chain = certificates(cert_path).map_err(&cert_error)?;
    let key = PrivateKeyDer::from_pem_slice(&read_pem(key_path).map_err(&key_error)?).map_err(
        |error| match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                key_error("no PEM private key found (PKCS#8, PKCS#1 or SEC1)".to_string())
            }
            other => key_error(pem_problem(&other)),
        },
    )?;
    // Loaded here as well as in `with_client_auth_cert`, so a bad key is blamed on the key file.
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|error| key_error(format!("not a usable private key: {error}")))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|error| match error {
            rustls::Error::InconsistentKeys(_) => {
                key_error("does not belong to the certificate in mqtt.client_cert_file".to_string())
            }
            other => cert_error(format!("not a usable certificate: {other}")),
        })
}

/// The PEM certificates in a file, at least one.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read_pem(path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_problem(&error))?;
    if certificates.is_empty() {
        return Err("no PEM certificate found".to_string());
    }
    Ok(certificates)
}

/// What is wrong with a PEM file, in words (the library's own text for some shows raw bytes).
fn pem_problem(error: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { .. } => "not valid PEM: a section has no END line".to_string(),
        Error::IllegalSectionStart { .. } => {
            "not valid PEM: a section begins inside another".to_string()
        }
        Error::Base64Decode(_) => "not valid PEM: a section is not valid base64".to_string(),
        other => format!("not valid PEM: {other}"),
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| format!("cannot read: {}", io_message(&error)))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(format!(
            "larger than {} MiB: not a PEM file",
            MAX_PEM_BYTES >> 20
        ));
    }
    Ok(bytes)
}

/// The configuration's TLS cases, loaded with this module's check as `check-config` loads them.
#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// Loads `toml` as the main file with the uplink's check and compares the error lines; no expected errors
    /// means it must be valid.
    #[track_caller]
    fn check(toml: &str, expected_errors: &[&str]) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vitalsd.toml");
        std::fs::write(&path, toml).expect("write test file");
        let actual: Vec<String> = match Config::load_with_env(&path, &[], Some(super::check)) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        };
        assert_eq!(actual, expected_errors, "for config:\n{toml}");
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

    #[test]
    fn tls_settings() {
        let tls = MINIMAL.replace("mqtt://127.0.0.1", "mqtts://broker");
        let cases: &[(&str, &[&str])] = &[
            ("ca_file = \"CA\"\nclient_cert_file = \"CERT\"\nclient_key_file = \"KEY\"", &[]),
            ("ca_file = \"CA\"", &[]),
            ("ca_file = \"CA\"\nclient_cert_file = \"CERT\"", &["mqtt.client_cert_file: given without mqtt.client_key_file"]),
            ("ca_file = \"CA\"\nclient_key_file = \"KEY\"", &["mqtt.client_key_file: given without mqtt.client_cert_file"]),
            ("ca_file = \"/nonexistent/ca.pem\"", &["mqtt.ca_file: cannot read /nonexistent/ca.pem: No such file or directory"]),
            ("ca_file = \"CA\"\nclient_cert_file = \"/nonexistent/hub.pem\"\nclient_key_file = \"KEY\"", &[
                "mqtt.client_cert_file: cannot read /nonexistent/hub.pem: No such file or directory",
            ]),
        ];
        for (extra, expected) in cases {
            let extra = extra
                .replace("CA", &fixture("tls/ca.pem"))
                .replace("CERT", &fixture("tls/hub.pem"))
                .replace("KEY", &fixture("tls/hub.key"));
            check(&format!("{tls}\n{extra}\n"), expected);
        }
    }

    /// What `run` would trip over in the TLS files is found by loading the configuration, with the key.
    #[test]
    fn tls_files_are_parsed_as_the_uplink_parses_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write test file");
            path.display().to_string()
        };
        let ca = fixture("tls/ca.pem");
        let cert = fixture("tls/hub.pem");
        let key = fixture("tls/hub.key");
        let valid_ca = std::fs::read_to_string(&ca).expect("fixture");
        let empty = file("empty", b"");
        let garbage = file("garbage", b"this is not a certificate\n\x00\xff");
        let bad_base64 = file(
            "bad-base64.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let not_der = file(
            "not-der.pem",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let unterminated = file(
            "unterminated.pem",
            valid_ca.replace("-----END CERTIFICATE-----", "").as_bytes(),
        );
        let not_a_key = file(
            "not-a-key.pem",
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        let other_key = fixture("tls/other.key");
        // (ca_file, client_cert_file, client_key_file, expected errors)
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Vec<String>);
        let cases: Vec<Case> = vec![
            (&ca, Some(&cert), Some(&key), vec![]),
            // Without a client certificate.
            (&ca, None, None, vec![]),
            (&empty, None, None, vec![format!("mqtt.ca_file: {empty}: no PEM certificate found")]),
            (&garbage, None, None, vec![format!("mqtt.ca_file: {garbage}: no PEM certificate found")]),
            // A key where the CA should be is not a certificate either.
            (&key, None, None, vec![format!("mqtt.ca_file: {key}: no PEM certificate found")]),
            (&bad_base64, None, None, vec![format!(
                "mqtt.ca_file: {bad_base64}: not valid PEM: a section is not valid base64"
            )]),
            (&unterminated, None, None, vec![format!(
                "mqtt.ca_file: {unterminated}: not valid PEM: a section has no END line"
            )]),
            (&not_der, None, None, vec![format!(
                "mqtt.ca_file: {not_der}: certificate 1 is not a usable CA certificate: invalid peer certificate: BadEncoding"
            )]),
            (&ca, Some(&garbage), Some(&key), vec![format!("mqtt.client_cert_file: {garbage}: no PEM certificate found")]),
            (&ca, Some(&not_der), Some(&key), vec![format!(
                "mqtt.client_cert_file: {not_der}: not a usable certificate: invalid peer certificate: BadEncoding"
            )]),
            (&ca, Some(&cert), Some(&empty), vec![format!(
                "mqtt.client_key_file: {empty}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)"
            )]),
            (&ca, Some(&cert), Some(&cert), vec![format!(
                "mqtt.client_key_file: {cert}: no PEM private key found (PKCS#8, PKCS#1 or SEC1)"
            )]),
            (&ca, Some(&cert), Some(&not_a_key), vec![format!(
                "mqtt.client_key_file: {not_a_key}: not a usable private key: unexpected error: failed to parse private key as RSA, ECDSA, or EdDSA"
            )]),
            (&ca, Some(&cert), Some(&other_key), vec![format!(
                "mqtt.client_key_file: {other_key}: does not belong to the certificate in mqtt.client_cert_file"
            )]),
        ];
        for (ca_file, cert_file, key_file, expected) in cases {
            let mut toml = format!(
                "{}\nca_file = \"{ca_file}\"\n",
                MINIMAL.replace("mqtt://127.0.0.1", "mqtts://broker")
            );
            if let (Some(cert_file), Some(key_file)) = (cert_file, key_file) {
                toml.push_str(&format!(
                    "client_cert_file = \"{cert_file}\"\nclient_key_file = \"{key_file}\"\n"
                ));
            }
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            check(&toml, &expected);
        }
    }

    /// A bad key elsewhere does not hide what `run` would trip over in the TLS files.
    #[test]
    fn tls_files_are_read_even_when_another_section_has_errors() {
        let not_a_certificate = fixture("mqtt-password");
        let toml = format!(
            "[hub]\nid = \"Hub\"\nstate_dir = \"/s\"\n[mqtt]\nurl = \"mqtts://b\"\nca_file = \"{not_a_certificate}\""
        );
        check(
            &toml,
            &[
                r#"hub.id: "Hub" is not a valid hub id: use 1 to 64 characters of a-z, 0-9, '-' and '_'"#,
                &format!("mqtt.ca_file: {not_a_certificate}: no PEM certificate found"),
            ],
        );
    }

    /// Nor does a bad key beside them in `[mqtt]`, which the TLS setup does not read.
    #[test]
    fn tls_files_are_read_even_when_another_mqtt_key_has_errors() {
        let not_a_certificate = fixture("mqtt-password");
        let toml = format!(
            "[hub]\nid = \"hub\"\nstate_dir = \"/s\"\n[mqtt]\nurl = \"mqtts://b\"\nwindow = 0\nca_file = \"{not_a_certificate}\""
        );
        check(
            &toml,
            &[
                &format!("mqtt.ca_file: {not_a_certificate}: no PEM certificate found"),
                "mqtt.window: must be between 1 and 256, found 0",
            ],
        );
    }
}

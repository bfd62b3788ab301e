//! The TLS files `[mqtt]` names (the CA bundle, the client certificate and its key), read and turned into
//! a rustls client configuration in one place, so `check-config` finds exactly what would stop the uplink.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{io_message, MqttConfig};

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

/// Reads the CA bundle (`mqtt.ca_file`, or the system's), and the client certificate and key if both are
/// set, and builds the rustls client configuration the uplink connects with.
pub fn client_config(mqtt: &MqttConfig) -> Result<rustls::ClientConfig, TlsFileError> {
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

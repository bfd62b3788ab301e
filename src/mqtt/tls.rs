//! TLS for the uplink: rustls with the ring provider, a CA file, and an optional client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::MqttConfig;

/// Debian's bundle of public CAs, used when `mqtt.ca_file` is not set.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read {path}: {message}")]
    Pem { path: String, message: String },
    #[error("{path} holds no certificate")]
    NoCertificate { path: String },
    #[error("invalid TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

pub fn client_config(mqtt: &MqttConfig) -> Result<rumqttc::TlsConfiguration, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = mqtt
        .ca_file
        .as_deref()
        .unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(ca_path)? {
        roots.add(certificate)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&mqtt.client_cert_file, &mqtt.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let key =
                PrivateKeyDer::from_pem_file(key_path).map_err(|error| TlsSetupError::Pem {
                    path: key_path.display().to_string(),
                    message: error.to_string(),
                })?;
            builder.with_client_auth_cert(certificates(cert_path)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem_error = |error: rustls::pki_types::pem::Error| TlsSetupError::Pem {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(pem_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_error)?;
    if certificates.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certificates)
}

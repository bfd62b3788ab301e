//! TLS for the uplink: rustls with the ring provider, a CA file, and an optional client certificate. The
//! files are read and checked by `config::tls_files`, the same code `check-config` runs.

use std::sync::Arc;

use crate::config::tls_files;
use crate::config::MqttConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(transparent)]
    File(#[from] tls_files::TlsFileError),
}

pub fn client_config(mqtt: &MqttConfig) -> Result<rumqttc::TlsConfiguration, TlsSetupError> {
    let config = tls_files::client_config(mqtt)?;
    Ok(rumqttc::TlsConfiguration::Rustls(Arc::new(config)))
}

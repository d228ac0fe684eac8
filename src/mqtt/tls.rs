//! The rustls client configuration of the broker connection, from [`TlsFiles`] (see
//! [`crate::tls`] for which roots are trusted).

use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::ClientConfig;

use super::error::MqttError;
use super::options::TlsFiles;

/// Builds the client configuration: trust roots from `ca_file` (else the system bundle) and,
/// when both are given, the client certificate and key.
pub(super) fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, MqttError> {
    crate::tls::client_config(files, &[])
        .map(Arc::new)
        .map_err(|e| MqttError::Tls {
            file: e.file,
            reason: e.reason,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_reported_with_its_path() {
        let files = TlsFiles {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        match client_config(&files) {
            Err(MqttError::Tls { file, .. }) => assert_eq!(file, "/nonexistent/ca.pem"),
            other => panic!("{other:?}"),
        }
    }
}

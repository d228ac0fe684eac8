//! rustls client configuration from [`TlsFiles`]. The crypto provider is the process default
//! if one is installed, else *ring* (the one reqwest already links), so no second provider is
//! compiled in.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use rumqttc::tokio_rustls::rustls::pki_types::pem::PemObject;
use rumqttc::tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rumqttc::tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::error::MqttError;
use super::options::TlsFiles;

/// System CA bundles, in the order OpenSSL-based tools look for them.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Builds the client configuration: trust roots from `ca_file` (else the system bundle) and,
/// when both are given, the client certificate and key.
pub(super) fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, MqttError> {
    let roots = match &files.ca_file {
        Some(path) => read_roots(path)?,
        None => system_roots()?,
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(ring::default_provider()));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("protocol versions", e))?
        .with_root_certificates(roots);
    let config = match (&files.cert_file, &files.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file)?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| tls_error(&key_file.display().to_string(), e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls_error(&cert_file.display().to_string(), e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn read_roots(path: &Path) -> Result<RootCertStore, MqttError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(path)?);
    if added == 0 {
        return Err(tls_error(
            &path.display().to_string(),
            "no usable CA certificate in the file",
        ));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, MqttError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for path in candidates {
        if path.is_file() {
            return read_roots(&path);
        }
    }
    Err(tls_error(
        "tls.ca_file",
        "not set, and no system CA bundle was found (set SSL_CERT_FILE or tls.ca_file)",
    ))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, MqttError> {
    let file = path.display().to_string();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(&file, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&file, e))?;
    if certs.is_empty() {
        return Err(tls_error(&file, "no PEM certificate in the file"));
    }
    Ok(certs)
}

fn tls_error(file: &str, reason: impl std::fmt::Display) -> MqttError {
    MqttError::Tls {
        file: file.to_owned(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mqtt-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

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

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = temp_file("empty-ca.pem", "not a certificate\n");
        let files = TlsFiles {
            ca_file: Some(path),
            ..TlsFiles::default()
        };
        assert!(matches!(client_config(&files), Err(MqttError::Tls { .. })));
    }

    #[test]
    fn the_system_bundle_is_used_without_a_ca_file() {
        if !SYSTEM_BUNDLES.iter().any(|p| Path::new(p).is_file()) {
            return; // no bundle on this machine: nothing to check
        }
        assert!(client_config(&TlsFiles::default()).is_ok());
    }
}

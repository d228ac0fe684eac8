//! TLS client settings shared by both sides: which CA certificates are trusted and which
//! client certificate is shown, as PEM files, turned into a rustls [`ClientConfig`].
//!
//! Trust: the CA certificates of `ca_file` when it is given, *instead of* the system's; else
//! the system's CA bundle (`SSL_CERT_FILE`, else the usual distribution paths, e.g.
//! `/etc/ssl/certs/ca-certificates.crt` from Debian's `ca-certificates`). Nothing is compiled
//! in. The crypto provider is the process default if one is installed, else *ring*.
//!
//! A leaf module: it knows nothing of Bayeux, MQTT, the bridge or config files, so the Bayeux
//! client library, the MQTT client and the config validator all use it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// System CA bundles, in the order OpenSSL-based tools look for them.
pub const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// TLS material, all PEM files. All `None` (the default): trust the system's CA bundle and
/// show no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates trusted to sign the server's certificate, *replacing* the system's
    /// bundle. Without it, the system's CA bundle is used (`SSL_CERT_FILE`, else the usual
    /// distribution paths).
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// Private key (PKCS#8, PKCS#1 or SEC1) of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// Which file (or setting) could not be used, and why. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct TlsError {
    /// The file at fault, or `ca_file` when no system bundle was found.
    pub file: String,
    /// The setting the file was given as: `ca_file`, `cert_file` or `key_file`.
    pub setting: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl TlsError {
    fn new(file: &Path, setting: &'static str, reason: impl fmt::Display) -> Self {
        TlsError {
            file: file.display().to_string(),
            setting,
            reason: reason.to_string(),
        }
    }
}

/// Builds the client configuration: trust roots from `ca_file` (else the system bundle) and,
/// when both are given, the client certificate and key. `alpn` is offered as is (e.g.
/// `http/1.1`; empty for MQTT).
pub fn client_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
    let roots = match &files.ca_file {
        Some(path) => read_roots(path)?,
        None => system_roots()?,
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(ring::default_provider()));
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(Path::new("(rustls)"), "ca_file", e))?
        .with_root_certificates(roots);
    let mut config = match (&files.cert_file, &files.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certs(cert_file, "cert_file")?;
            // The parser's error never quotes the key.
            let pem = crate::files::read_capped(key_file, crate::files::MAX_SECRET_BYTES)
                .map_err(|e| TlsError::new(key_file, "key_file", e))?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
                TlsError::new(key_file, "key_file", format!("no usable private key: {e}"))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::new(cert_file, "cert_file", e))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(cert_file), None) => {
            return Err(TlsError::new(
                cert_file,
                "key_file",
                "cert_file and key_file must be set together",
            ));
        }
        (None, Some(key_file)) => {
            return Err(TlsError::new(
                key_file,
                "cert_file",
                "cert_file and key_file must be set together",
            ));
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The system CA bundle in use: `SSL_CERT_FILE` if set, else the first of
/// [`SYSTEM_BUNDLES`] that exists.
pub fn system_bundle() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(path));
    }
    SYSTEM_BUNDLES
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    match system_bundle() {
        Some(path) => read_roots(&path),
        None => Err(TlsError {
            file: "(system CA bundle)".to_owned(),
            setting: "ca_file",
            reason: "ca_file is not set and no system CA bundle was found (install \
                     ca-certificates, set SSL_CERT_FILE, or set ca_file)"
                .to_owned(),
        }),
    }
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(read_certs(path, "ca_file")?);
    if added == 0 {
        return Err(TlsError::new(
            path,
            "ca_file",
            "no usable CA certificate in the file",
        ));
    }
    Ok(roots)
}

fn read_certs(
    path: &Path,
    setting: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = crate::files::read_capped(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|e| TlsError::new(path, setting, e))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, setting, e))?;
    if certs.is_empty() {
        return Err(TlsError::new(
            path,
            setting,
            "no PEM certificate in the file",
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
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
        let err = client_config(&files, &[]).unwrap_err();
        assert_eq!(err.file, "/nonexistent/ca.pem");
        assert_eq!(err.setting, "ca_file");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = temp_file("empty-ca.pem", "not a certificate\n");
        let files = TlsFiles {
            ca_file: Some(path.clone()),
            ..TlsFiles::default()
        };
        let err = client_config(&files, &[]).unwrap_err();
        assert_eq!(err.file, path.display().to_string());
        assert!(err.reason.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let files = TlsFiles {
            cert_file: Some("/nonexistent/c.pem".into()),
            ..TlsFiles::default()
        };
        let err = client_config(&files, &[]).unwrap_err();
        assert_eq!(err.setting, "key_file");
    }

    #[test]
    fn the_system_bundle_is_used_without_a_ca_file() {
        assert!(
            system_bundle().is_some(),
            "no system CA bundle on this machine (looked at SSL_CERT_FILE and {SYSTEM_BUNDLES:?}): \
             install it with `apt-get install ca-certificates` (scripts/install-deps does)"
        );
        let config = client_config(&TlsFiles::default(), &[b"http/1.1"]).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }
}

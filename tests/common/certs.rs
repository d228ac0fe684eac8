//! Test certificates, generated in-process (rcgen) into a temporary directory: a CA, a server
//! certificate it signs for `localhost` and `127.0.0.1`, a client certificate it signs, an
//! expired server certificate it signs, and a second, unrelated CA (the "wrong" one).
#![allow(dead_code)]

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, date_time_ymd,
};

use super::bridge::TempDir;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// The generated files; the directory goes when this is dropped.
pub struct Pki {
    dir: TempDir,
    /// The CA the server and client certificates are signed by.
    pub ca: PathBuf,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    /// Server certificate for `localhost` and `127.0.0.1`, valid 2000–2100.
    pub server: Pair,
    /// Server certificate for the same names, expired (valid 2000–2001).
    pub expired: Pair,
    /// Client certificate (`CN=bridge`), for mutual TLS.
    pub client: Pair,
}

impl Pki {
    /// Generates everything into a new temporary directory.
    pub fn generate() -> Pki {
        let dir = TempDir::new("pki");
        let (ca_pem, ca) = new_ca("Test CA");
        let (other_pem, _) = new_ca("Some other CA");
        let ca_path = dir.file("ca.pem", ca_pem);
        let other_ca = dir.file("other-ca.pem", other_pem);
        let server = leaf(&dir, "server", &ca, true, (2000, 2100));
        let expired = leaf(&dir, "expired", &ca, true, (2000, 2001));
        let client = leaf(&dir, "client", &ca, false, (2000, 2100));
        Pki {
            dir,
            ca: ca_path,
            other_ca,
            server,
            expired,
            client,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = date_time_ymd(2000, 1, 1);
    params.not_after = date_time_ymd(2100, 1, 1);
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(
    dir: &TempDir,
    name: &str,
    issuer: &Issuer<'static, KeyPair>,
    server: bool,
    (from, to): (i32, i32),
) -> Pair {
    let names = if server {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        Vec::new()
    };
    let mut params = CertificateParams::new(names).expect("valid names");
    let cn = if server { "localhost" } else { "bridge" };
    params.distinguished_name.push(DnType::CommonName, cn);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    params.not_before = date_time_ymd(from, 1, 1);
    params.not_after = date_time_ymd(to, 1, 1);
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("leaf certificate");
    Pair {
        cert: dir.file(&format!("{name}.pem"), cert.pem()),
        key: dir.file(&format!("{name}-key.pem"), key.serialize_pem()),
    }
}

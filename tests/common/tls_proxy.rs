//! A TLS-terminating proxy (tokio-rustls) on a free loopback port, in front of a plain
//! HTTP server (the Node Bayeux servers, the Salesforce fake), so the bridge can be tested
//! against an HTTPS endpoint. It presents a given certificate, may require a client
//! certificate signed by a given CA, and counts handshakes and the bytes it forwarded after
//! one: a client that refused the certificate has sent nothing (no request, no credential).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use super::certs::Pair;

/// What the proxy saw.
#[derive(Debug, Default)]
pub struct Counters {
    /// TLS handshakes that completed.
    pub handshakes: AtomicU64,
    /// TLS handshakes that failed (the client refused our certificate, or we refused its).
    pub failed_handshakes: AtomicU64,
    /// Bytes received from clients after a handshake (requests, and so any credential).
    pub bytes_from_clients: AtomicU64,
}

/// A running proxy; stopped when dropped.
pub struct TlsProxy {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// What it saw.
    pub counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl TlsProxy {
    /// Listens on a free loopback port with `server`'s certificate and key, forwarding to
    /// `127.0.0.1:<upstream>`; with `client_ca`, only clients whose certificate that CA
    /// signed get through.
    pub async fn start(server: &Pair, upstream: u16, client_ca: Option<&Path>) -> TlsProxy {
        let provider = Arc::new(ring::default_provider());
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&server.cert)
            .expect("server certificate file")
            .collect::<Result<_, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(&server.key).expect("server key");
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca).expect("client CA file") {
                    roots
                        .add(cert.expect("client CA"))
                        .expect("client CA added");
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local address").port();
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            upstream,
            Arc::clone(&counters),
        ));
        TlsProxy {
            port,
            counters,
            task,
        }
    }

    /// Completed handshakes so far.
    pub fn handshakes(&self) -> u64 {
        self.counters.handshakes.load(Ordering::SeqCst)
    }

    /// Failed handshakes so far.
    pub fn failed_handshakes(&self) -> u64 {
        self.counters.failed_handshakes.load(Ordering::SeqCst)
    }

    /// Bytes clients sent through a completed handshake so far.
    pub fn bytes_from_clients(&self) -> u64 {
        self.counters.bytes_from_clients.load(Ordering::SeqCst)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: u16,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let tls = match acceptor.accept(client).await {
                Ok(tls) => {
                    counters.handshakes.fetch_add(1, Ordering::SeqCst);
                    tls
                }
                Err(_) => {
                    counters.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                return;
            };
            pipe(tls, server, &counters).await;
        });
    }
}

/// Copies both ways until either side closes, counting what the client sent.
async fn pipe(
    client: tokio_rustls::server::TlsStream<TcpStream>,
    server: TcpStream,
    counters: &Counters,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut server_read, mut server_write) = server.into_split();
    let upward = async {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    counters
                        .bytes_from_clients
                        .fetch_add(n as u64, Ordering::SeqCst);
                    if server_write.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server_write.shutdown().await;
    };
    let downward = async {
        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
        let _ = client_write.shutdown().await;
    };
    tokio::join!(upward, downward);
}

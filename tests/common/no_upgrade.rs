//! A loopback HTTP proxy that refuses WebSocket upgrades, in front of a real server: what a
//! corporate proxy or load balancer without WebSocket support does.
//!
//! Scripted rather than a real proxy because the test needs exactly this one behaviour, on a
//! free port, without installing one: every connection's first request head is read; one
//! that asks for an upgrade (`Upgrade:` header) is answered `403 Forbidden` and closed, and
//! counted; any other is passed on to the target together with everything after it (the
//! connection becomes a plain tunnel, so keep-alive requests pass too).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The largest request head read before giving up on a connection.
const MAX_HEAD: usize = 64 * 1024;

/// The proxy; dropping it stops accepting (open tunnels end with their peers).
pub struct NoUpgrade {
    port: u16,
    refused: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl NoUpgrade {
    /// A proxy to `127.0.0.1:target` on a free loopback port.
    pub async fn start(target: u16) -> NoUpgrade {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the proxy cannot bind a loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the proxy's address: {e}"))
            .port();
        let refused = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&refused);
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(serve(client, target, Arc::clone(&counter)));
            }
        });
        NoUpgrade {
            port,
            refused,
            accepting,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many upgrade requests were refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for NoUpgrade {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn serve(mut client: TcpStream, target: u16, refused: Arc<AtomicU64>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match client.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if text.lines().any(|l| l.starts_with("upgrade:")) {
        refused.fetch_add(1, Ordering::SeqCst);
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await else {
        return;
    };
    if server.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

//! A TCP gate in front of a real server: while open it forwards each connection to the
//! target port on loopback; closing it drops every connection and refuses new ones (accepted,
//! then closed at once). A test uses it to take one client's way to the broker away, and to
//! give it back at a moment of its choosing, while its own clients talk to the broker
//! directly.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A gate listening on a free loopback port.
pub struct Gate {
    port: u16,
    open: watch::Sender<bool>,
    accepting: JoinHandle<()>,
}

impl Gate {
    /// An open gate to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("the gate cannot bind a loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the gate's address: {e}"))
            .port();
        let (open, is_open) = watch::channel(true);
        let target = SocketAddr::from(([127, 0, 0, 1], target));
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*is_open.borrow() {
                    drop(client);
                    continue;
                }
                tokio::spawn(forward(client, target, is_open.clone()));
            }
        });
        Gate {
            port,
            open,
            accepting,
        }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Drops every connection and refuses new ones until [`Gate::open`].
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Forwards new connections again.
    pub fn open(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.accepting.abort();
    }
}

/// Copies both ways until either side closes or the gate closes.
async fn forward(mut client: TcpStream, target: SocketAddr, mut is_open: watch::Receiver<bool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
        _ = is_open.wait_for(|open| !*open) => {}
    }
}

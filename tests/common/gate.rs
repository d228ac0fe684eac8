//! A loopback fault proxy ("gate") in front of a real server. Clients connect to the gate's
//! port; each connection is forwarded to the target port on loopback. A test puts one
//! client's way to a server through a gate (its own clients talk to the server directly) and
//! breaks that way in a chosen manner at a moment of its choosing.
//!
//! # Modes
//!
//! Switchable at any time; each switch applies at once to the connections already open and
//! to the ones that come later.
//!
//! - [`Gate::open`] (the start mode): forwards bytes both ways.
//! - [`Gate::blackhole`]: a dead network path. Connections stay open but nothing passes:
//!   the gate reads and writes nothing, no FIN, no RST. What the peers send waits in the
//!   kernel's buffers and then in theirs, as it waits for TCP's retransmissions on a dead
//!   path, and arrives once the gate opens again (a path that comes back before TCP gives
//!   up); follow with [`Gate::close`] or [`Gate::refuse`] for one that does not. New
//!   connections are accepted and held the same way; the target hears of them only once the
//!   gate opens again. A peer finds out only through its own timeouts and keep-alives.
//!   ([`Stats::discarded`] stays 0; it is kept for the counters' shape.)
//! - [`Gate::refuse`]: nothing listens. The listening socket is closed at once, so new
//!   connections fail with `ECONNREFUSED`, and open connections are reset (RST) on both
//!   sides. Any other mode binds the same port again.
//! - [`Gate::close`]: open connections are closed with a FIN on both sides; new connections
//!   are accepted and closed at once. (As always in TCP, a side whose bytes the gate had not
//!   read yet gets an RST instead.)
//! - [`Gate::slow_drip`]: forwards at most N bytes per second in each direction of each
//!   connection; the rest waits in the kernel's buffers (the sender feels back-pressure).
//! - [`Gate::reset_mid_response`]: forwards the client's bytes, but of the next chunk the
//!   target sends on a connection only the first part, then resets (RST) both sides: a reply
//!   cut off in the middle. If the chunk holds the end of an HTTP header (`\r\n\r\n`),
//!   the cut falls in the middle of what follows it (the body); otherwise in the middle of
//!   the chunk. Every connection that gets a reply is cut this way until another mode;
//!   [`Stats::cut`] counts them.
//!
//! [`Gate::stats`] counts connections and bytes, and [`Gate::wait_until`] /
//! [`Gate::wait_connections`] / [`Gate::wait_accepted`] await a count (e.g. "the client
//! reconnected") instead of sleeping.
//!
//! Inside the proxy's tasks a failed connect, read or write only ends that connection; set-up
//! (binding a port) panics with a message, as the other helpers do.

use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long [`Gate::open`] (and the other modes) keep trying to bind the port again after
/// [`Gate::refuse`] while it is taken (e.g. a client's connection happened to get it as its
/// ephemeral port).
const REBIND_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two attempts to bind a taken port. Nothing announces that a port became
/// free, so this one wait is a retry interval.
const REBIND_RETRY: Duration = Duration::from_millis(20);
/// The largest chunk read from one side before it is written to the other.
const BUFFER: usize = 16 * 1024;

/// What the gate does with connections; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward both ways.
    Open,
    /// Hold connections open, forward nothing, discard what arrives.
    Blackhole,
    /// Not listening; open connections are reset.
    Refuse,
    /// Close open connections (FIN); accept and close new ones.
    Close,
    /// Forward at most this many bytes per second per direction (at least 1).
    SlowDrip(u64),
    /// Forward the first part of the target's next chunk, then reset both sides.
    ResetMidResponse,
}

/// What went through the gate so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections open through the gate now.
    pub connections: usize,
    /// Client connections accepted since the start (including those closed at once).
    pub accepted: u64,
    /// Bytes written to the target (client → server).
    pub to_target: u64,
    /// Bytes written to clients (server → client).
    pub to_client: u64,
    /// Bytes read from either side and thrown away while blackholed.
    pub discarded: u64,
    /// Replies cut off and reset in [`Mode::ResetMidResponse`].
    pub cut: u64,
}

impl Stats {
    /// Bytes forwarded in both directions.
    pub fn forwarded(&self) -> u64 {
        self.to_target + self.to_client
    }
}

/// A gate listening on a free loopback port; dropping it closes every connection.
pub struct Gate {
    port: u16,
    mode: watch::Sender<Mode>,
    stats: Arc<watch::Sender<Stats>>,
    /// `None` while refusing. Shared with the accept task, which only locks it while polling
    /// (never across an await), so [`Gate::refuse`] closes the socket before it returns.
    listener: Arc<Mutex<Option<TcpListener>>>,
    accepting: JoinHandle<()>,
}

impl Gate {
    /// An open gate to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Gate {
        let listener =
            bind(0).unwrap_or_else(|e| panic!("the gate cannot bind a loopback port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the gate's address: {e}"))
            .port();
        let (mode, mode_rx) = watch::channel(Mode::Open);
        let stats = Arc::new(watch::Sender::new(Stats::default()));
        let listener = Arc::new(Mutex::new(Some(listener)));
        let target = SocketAddr::from(([127, 0, 0, 1], target));
        let accepting = tokio::spawn(accept_loop(
            Arc::clone(&listener),
            target,
            mode_rx,
            Arc::clone(&stats),
        ));
        Gate {
            port,
            mode,
            stats,
            listener,
            accepting,
        }
    }

    /// The port clients connect to (the same in every mode).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forwards both ways, on open and new connections.
    pub fn open(&self) {
        self.set_mode(Mode::Open);
    }

    /// Keeps connections open but forwards nothing; see the module doc.
    pub fn blackhole(&self) {
        self.set_mode(Mode::Blackhole);
    }

    /// Stops listening (new connections are refused; this is done when it returns) and
    /// resets open connections.
    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    /// Closes open connections with a FIN and closes new ones at once, until another mode.
    pub fn close(&self) {
        self.set_mode(Mode::Close);
    }

    /// Forwards at most `bytes_per_sec` (at least 1) per direction of each connection.
    pub fn slow_drip(&self, bytes_per_sec: u64) {
        self.set_mode(Mode::SlowDrip(bytes_per_sec.max(1)));
    }

    /// Cuts the next reply on each connection in the middle and resets the connection; see
    /// the module doc.
    pub fn reset_mid_response(&self) {
        self.set_mode(Mode::ResetMidResponse);
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Switches to `mode`. Leaving [`Mode::Refuse`] binds the port again first (retrying for
    /// a few seconds while it is taken), so a client may connect as soon as this returns.
    pub fn set_mode(&self, mode: Mode) {
        let mut listener = lock(&self.listener);
        if mode == Mode::Refuse {
            // Dropping the socket here, not in the accept task, makes the refusal immediate.
            *listener = None;
        } else if listener.is_none() {
            *listener = Some(self.rebind());
        }
        drop(listener);
        // Wakes the accept task (to poll the new listener) and every connection.
        self.mode.send_replace(mode);
    }

    /// Counts of connections and bytes so far.
    pub fn stats(&self) -> Stats {
        *self.stats.borrow()
    }

    /// Client connections open through the gate now.
    pub fn connections(&self) -> usize {
        self.stats().connections
    }

    /// Bytes forwarded so far, both directions together (see [`Gate::stats`] for each).
    pub fn bytes_forwarded(&self) -> u64 {
        self.stats().forwarded()
    }

    /// Waits until exactly `n` client connections are open; panics after `timeout`.
    pub async fn wait_connections(&self, n: usize, timeout: Duration) -> Stats {
        self.wait_until(&format!("{n} open connections"), timeout, |s| {
            s.connections == n
        })
        .await
    }

    /// Waits until at least `n` connections were accepted since the start (a reconnect
    /// shows as one more); panics after `timeout`.
    pub async fn wait_accepted(&self, n: u64, timeout: Duration) -> Stats {
        self.wait_until(&format!("{n} accepted connections"), timeout, |s| {
            s.accepted >= n
        })
        .await
    }

    /// Waits until `condition` holds for the counts; panics after `timeout`, naming `what`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        condition: impl FnMut(&Stats) -> bool,
    ) -> Stats {
        let mut stats = self.stats.subscribe();
        match tokio::time::timeout(timeout, stats.wait_for(condition)).await {
            Ok(Ok(reached)) => *reached,
            // The sender lives in `self`, so the wait cannot fail otherwise.
            _ => panic!(
                "the gate on port {} did not reach {what} within {timeout:?}; it has {:?}",
                self.port,
                self.stats()
            ),
        }
    }

    /// Binds the gate's port again after a refusal.
    fn rebind(&self) -> TcpListener {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match bind(self.port) {
                Ok(listener) => return listener,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    // A short blocking retry in set-up code; the port is almost always free.
                    std::thread::sleep(REBIND_RETRY);
                }
                Err(e) => panic!(
                    "the gate cannot bind 127.0.0.1:{} again (tried for {REBIND_TIMEOUT:?}): {e}",
                    self.port
                ),
            }
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        lock(&self.listener).take();
        self.mode.send_replace(Mode::Close);
        self.accepting.abort();
    }
}

/// A loopback listener on `port` (0: any free one), with `SO_REUSEADDR` so the port can be
/// bound again while old connections on it linger in `TIME_WAIT`.
fn bind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Accepts connections from whatever listener is in `slot`, until the gate is dropped.
async fn accept_loop(
    slot: Arc<Mutex<Option<TcpListener>>>,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    stats: Arc<watch::Sender<Stats>>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = poll_fn(|cx| poll_accept(&slot, cx)) => accepted,
            // A new mode may come with a new listener in the slot; poll that one.
            changed = mode.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        match accepted {
            Ok(client) => {
                let connection = Connection::new(Arc::clone(&stats));
                tokio::spawn(connection.serve(client, target, mode.clone()));
            }
            // Accept errors on loopback are transient (an aborted handshake, no file
            // descriptors for a moment); the pause keeps a persistent one from spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Polls the listener in `slot`; pending while there is none (the mode change that puts one
/// back wakes the accept task).
fn poll_accept(
    slot: &Mutex<Option<TcpListener>>,
    cx: &mut Context<'_>,
) -> Poll<io::Result<TcpStream>> {
    match lock(slot).as_ref() {
        Some(listener) => listener.poll_accept(cx).map_ok(|(stream, _)| stream),
        None => Poll::Pending,
    }
}

/// One client connection through the gate; counts itself open while it lives.
struct Connection {
    stats: Arc<watch::Sender<Stats>>,
}

impl Connection {
    fn new(stats: Arc<watch::Sender<Stats>>) -> Connection {
        stats.send_modify(|s| {
            s.connections += 1;
            s.accepted += 1;
        });
        Connection { stats }
    }

    /// Holds the client until the gate lets it through, connects to the target, forwards,
    /// and ends the connection the way the mode says.
    async fn serve(
        self,
        mut client: TcpStream,
        target: SocketAddr,
        mut mode: watch::Receiver<Mode>,
    ) {
        // Until the target is connected, only the client side exists: a blackholed new
        // connection never reaches the target.
        let mut client_open = true;
        let mut server = loop {
            // Copied out: the borrow holds a lock and must not live across an await.
            let current = *mode.borrow_and_update();
            match current {
                Mode::Open | Mode::SlowDrip(_) | Mode::ResetMidResponse if client_open => {
                    match TcpStream::connect(target).await {
                        Ok(server) => break server,
                        Err(_) => return,
                    }
                }
                Mode::Refuse => {
                    reset(&client);
                    return;
                }
                Mode::Blackhole => {}
                // Closing, or the client left while blackholed.
                _ => return,
            }
            if client_open {
                client_open = self.discard_until_change(&mut client, &mut mode).await;
            } else if mode.changed().await.is_err() {
                return;
            }
        };
        {
            let (client_read, client_write) = client.split();
            let (server_read, server_write) = server.split();
            let up = self.pump(client_read, server_write, mode.clone(), Direction::ToTarget);
            let down = self.pump(server_read, client_write, mode.clone(), Direction::ToClient);
            // Both end on `Refuse` and `Close`, both end once each side closed, and a failure
            // of either ends the other.
            let _ = tokio::try_join!(up, down);
        }
        if matches!(*mode.borrow(), Mode::Refuse | Mode::ResetMidResponse) {
            reset(&client);
            reset(&server);
        }
        // Otherwise dropping both streams closes them with a FIN.
    }

    /// Waits, reading nothing from `client`, until the mode changes; false if the gate is
    /// gone.
    async fn discard_until_change(
        &self,
        _client: &mut TcpStream,
        mode: &mut watch::Receiver<Mode>,
    ) -> bool {
        mode.changed().await.is_ok()
    }

    /// Copies `from` → `to` as the mode says, until `from` ends (then shuts `to` down for
    /// writing once forwarding, so a half-close passes through). `Err` ends the connection.
    async fn pump(
        &self,
        mut from: tokio::net::tcp::ReadHalf<'_>,
        mut to: tokio::net::tcp::WriteHalf<'_>,
        mut mode: watch::Receiver<Mode>,
        direction: Direction,
    ) -> Result<(), ()> {
        let mut buf = vec![0; BUFFER];
        // Bytes read but not yet written: buf[start..end]. Kept across mode changes, since
        // single reads and writes are cancel-safe but a cancelled write_all is not.
        let (mut start, mut end) = (0, 0);
        let mut from_open = true;
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Refuse | Mode::Close => return Ok(()), // The caller ends the connection.
                // Nothing is read or written: what the peers send waits in the kernel's
                // buffers (and then in the senders'), as it waits for TCP's retransmissions
                // on a dead path, and goes on once the gate opens again.
                Mode::Blackhole => mode.changed().await.map_err(|_| ())?,
                Mode::ResetMidResponse
                    if start < end && matches!(direction, Direction::ToClient) =>
                {
                    // Only the first part of the reply, then the caller resets both sides.
                    let cut = cut_point(&buf[start..end]);
                    if to.write_all(&buf[start..start + cut]).await.is_ok() {
                        let _ = to.flush().await;
                        self.count(|s| {
                            s.to_client += cut as u64;
                            s.cut += 1;
                        });
                    }
                    return Err(());
                }
                Mode::Open | Mode::SlowDrip(_) | Mode::ResetMidResponse if start < end => {
                    let rate = match current {
                        Mode::SlowDrip(rate) => Some(rate),
                        _ => None,
                    };
                    tokio::select! {
                        written = to.write(&buf[start..end]) => match written {
                            Ok(0) | Err(_) => return Err(()),
                            Ok(n) => {
                                start += n;
                                self.count(|s| *direction.counter(s) += n as u64);
                                if let Some(rate) = rate {
                                    self.drip_pause(n, rate, &mut mode).await;
                                }
                            }
                        },
                        _ = mode.changed() => {}
                    }
                }
                Mode::Open | Mode::SlowDrip(_) | Mode::ResetMidResponse if !from_open => {
                    let _ = to.shutdown().await;
                    return Ok(());
                }
                Mode::Open | Mode::SlowDrip(_) | Mode::ResetMidResponse => {
                    // In slow drip, read no more than a second's worth: the rest stays in
                    // the kernel and pushes back on the sender.
                    let limit = match current {
                        Mode::SlowDrip(rate) => usize::try_from(rate).unwrap_or(BUFFER).min(BUFFER),
                        _ => BUFFER,
                    };
                    tokio::select! {
                        read = from.read(&mut buf[..limit]) => match read {
                            Ok(0) => from_open = false,
                            Ok(n) => (start, end) = (0, n),
                            Err(_) => return Err(()),
                        },
                        _ = mode.changed() => {}
                    }
                }
            }
        }
    }

    /// After writing `n` bytes at `rate` bytes per second, waits the time they take; a mode
    /// change cuts the wait short.
    async fn drip_pause(&self, n: usize, rate: u64, mode: &mut watch::Receiver<Mode>) {
        let pause = Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = mode.changed() => {}
        }
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        self.stats.send_modify(update);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.stats.send_modify(|s| s.connections -= 1);
    }
}

/// Which way a pump copies, for the byte counters.
#[derive(Clone, Copy)]
enum Direction {
    ToTarget,
    ToClient,
}

impl Direction {
    fn counter(self, stats: &mut Stats) -> &mut u64 {
        match self {
            Direction::ToTarget => &mut stats.to_target,
            Direction::ToClient => &mut stats.to_client,
        }
    }
}

/// How many bytes of `chunk` [`Mode::ResetMidResponse`] lets through: half of what follows
/// an HTTP header's end if the chunk holds one, else half the chunk (at least one byte, never
/// all of it when it has two or more).
fn cut_point(chunk: &[u8]) -> usize {
    let body_start = chunk
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |i| i + 4);
    let cut = body_start + (chunk.len() - body_start) / 2;
    cut.clamp(1, chunk.len().saturating_sub(1).max(1))
}

/// Makes dropping `stream` send an RST instead of a FIN. A socket that cannot take the option
/// is closed with a FIN instead; nothing better is possible then.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

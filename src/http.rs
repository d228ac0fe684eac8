//! The optional HTTP listener: `/metrics` (Prometheus), `/livez` and `/readyz`.
//!
//! Off unless `[http] listen` is set. It knows nothing of the bridge: it calls the
//! [`Endpoints`] it is given. Binding beyond loopback exposes metrics (topic filters, channel
//! names, counts) to the network; there is no authentication.
//!
//! Bounded, so that a slow or hostile client cannot take the process's file descriptors
//! (which the Bayeux and MQTT connections need) or its memory ([`Limits`]):
//! - at most `http.max_connections` connections are served at once; one more is accepted and
//!   closed at once (counted in `bridge_http_connections_refused_total`), so it releases its
//!   file descriptor immediately and the client sees a closed connection rather than a hang;
//! - a request header must arrive within [`HEADER_READ_TIMEOUT`] of the connection opening
//!   or of the previous response (an idle keep-alive connection is closed then too);
//! - a connection lives at most [`CONNECTION_LIFETIME`]: then it is closed once the request
//!   in progress is answered, or after another [`HEADER_READ_TIMEOUT`] at the latest;
//! - after a failed accept (e.g. `EMFILE`) the listener pauses, from [`ACCEPT_PAUSE_MIN`]
//!   doubling to [`ACCEPT_PAUSE_MAX`] while accepts keep failing, and logs at most one
//!   warning per [`LOG_EVERY`] with the number of failures in between.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::metrics::HttpMetrics;

/// Default `http.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Time a client has to send a complete request header.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a connection is served.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The first pause after a failed accept.
pub const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(100);
/// The longest pause after failed accepts.
pub const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);
/// At most one warning per this period for refused connections and for failed accepts.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The listener's bounds; [`Limits::default`] has the documented values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once (`http.max_connections`); more are closed at once.
    pub max_connections: usize,
    /// Time a client has to send a complete request header.
    pub header_read_timeout: Duration,
    /// The longest a connection is served.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_lifetime: CONNECTION_LIFETIME,
        }
    }
}

/// Readiness as the endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ready {
    /// Whether the service is ready.
    pub ready: bool,
    /// Why not (empty when ready).
    pub reasons: Vec<String>,
    /// What is wrong while the service stays ready (e.g. a side that is down while the
    /// spool absorbs the outage); reported in the body only when not empty.
    pub degraded: Vec<String>,
}

/// What the endpoints serve.
pub trait Endpoints: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    /// Current readiness.
    fn ready(&self) -> Ready;
}

/// Binds `addr`; errors name the address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

/// The listener could not be bound: the address, and the system's error (its kind tells
/// e.g. an address in use from a missing permission).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// Why it could not be bound.
    pub source: std::io::Error,
}

/// Counts events and tells when to log them: the first at once, then at most one line per
/// [`LOG_EVERY`] carrying how many happened since the last line.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// Records one event at `now`; `Some(n)` when a line is due, `n` events since the last.
    fn event(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        match self.last {
            Some(last) if now.duration_since(last) < LOG_EVERY => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        }
    }
}

/// The pause after `failures` accepts failed in a row (from 1): [`ACCEPT_PAUSE_MIN`],
/// doubling up to [`ACCEPT_PAUSE_MAX`].
fn accept_pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    ACCEPT_PAUSE_MIN
        .saturating_mul(1 << doublings)
        .min(ACCEPT_PAUSE_MAX)
}

/// Decrements the open-connections gauge when a connection task ends, however it ends.
struct Open(HttpMetrics);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// Serves until `shutdown` resolves, within `limits`, counting in `metrics`.
pub async fn serve(
    listener: TcpListener,
    endpoints: Arc<dyn Endpoints>,
    limits: Limits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()>,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(
            %addr,
            max_connections = limits.max_connections,
            "HTTP listener started (/metrics, /livez, /readyz)."
        );
    }
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = Throttle::default();
    let mut accept_failures = AcceptFailures::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => {
                accept_failures.in_a_row = 0;
                pair
            }
            Err(e) => {
                let pause = accept_failures.failed(&e, &metrics);
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            refuse(
                stream,
                peer,
                &mut refusals,
                &metrics,
                limits.max_connections,
            );
            continue;
        };
        metrics.open.inc();
        let open = Open(metrics.clone());
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, endpoints, limits, open).await;
        });
    }
}

/// Accepts that failed in a row, and the throttle of their warnings.
#[derive(Debug, Default)]
struct AcceptFailures {
    in_a_row: u32,
    log: Throttle,
}

impl AcceptFailures {
    /// Counts and (throttled) logs a failed accept; the pause before the next.
    ///
    /// Out of file descriptors and the like. Accepting again at once would fail again at
    /// once (a busy loop, and a log line each time): the listener pauses, and keeps serving
    /// the connections already open.
    fn failed(&mut self, error: &std::io::Error, metrics: &HttpMetrics) -> Duration {
        metrics.accept_errors.inc();
        self.in_a_row = self.in_a_row.saturating_add(1);
        let pause = accept_pause(self.in_a_row);
        if let Some(failed) = self.log.event(Instant::now()) {
            warn!(
                %error,
                failed,
                pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                "HTTP accept failed; pausing the listener."
            );
        }
        pause
    }
}

/// Closes a connection over `http.max_connections` now, so that it holds no file descriptor
/// and the client learns at once, rather than waiting in the backlog for a slot.
fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    refusals: &mut Throttle,
    metrics: &HttpMetrics,
    max_connections: usize,
) {
    drop(stream);
    metrics.refused.inc();
    if let Some(refused) = refusals.event(Instant::now()) {
        warn!(
            %peer,
            refused,
            max_connections,
            "HTTP connection refused: http.max_connections are open."
        );
    }
}

/// Serves one connection until the client closes it, a request header is late, or its
/// lifetime is over.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    endpoints: Arc<dyn Endpoints>,
    limits: Limits,
    open: Open,
) {
    let service = service_fn(move |request| {
        let endpoints = Arc::clone(&endpoints);
        async move { Ok::<_, Infallible>(respond(&request, endpoints.as_ref())) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let (result, lifetime_over) = tokio::select! {
        result = connection.as_mut() => (result, false),
        () = tokio::time::sleep(limits.connection_lifetime) => {
            // Let the request in progress (if any) be answered, then close; a client
            // that does not read its answer is dropped after the grace period.
            open.0.timed_out.inc();
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.header_read_timeout, connection).await {
                Ok(result) => (result, true),
                Err(_) => {
                    debug!(%peer, "HTTP connection dropped at the end of its lifetime.");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        // A header that did not arrive in time (counted once per connection).
        if e.is_timeout() && !lifetime_over {
            open.0.timed_out.inc();
        }
        debug!(%peer, error = %e, "HTTP connection ended with an error.");
    }
}

fn respond(request: &Request<Incoming>, endpoints: &dyn Endpoints) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(endpoints.metrics())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let ready = endpoints.ready();
            let status = if ready.ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            let mut body = serde_json::json!({ "ready": ready.ready, "reasons": ready.reasons });
            if !ready.degraded.is_empty() {
                body["degraded"] = ready.degraded.into();
            }
            let body = body.to_string();
            let mut response = Response::new(Full::new(Bytes::from(body + "\n")));
            *response.status_mut() = status;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez or /readyz\n",
        ),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `bayeux-mqtt-bridge health --url URL`: exits 0 if `url` answers 200 (Docker's
/// HEALTHCHECK without curl in the image).
pub async fn probe(url: &str) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::OK {
        Ok(())
    } else {
        Err(format!("{url}: HTTP {status}: {}", body.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Ready);

    impl Endpoints for Fixed {
        fn metrics(&self) -> String {
            "bridge_ready 1\n# EOF\n".to_owned()
        }
        fn ready(&self) -> Ready {
            self.0.clone()
        }
    }

    #[tokio::test]
    async fn serves_metrics_livez_and_readyz() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let not_ready = Ready {
            ready: false,
            reasons: vec!["MQTT broker not connected".into()],
            degraded: Vec::new(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Arc::new(Fixed(not_ready)),
            Limits::default(),
            HttpMetrics::default(),
            async {
                let _ = stopped.await;
            },
        ));
        let base = format!("http://{addr}");
        let get = |path: &str| reqwest::get(format!("{base}{path}"));
        let metrics = get("/metrics").await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(metrics.text().await.unwrap().contains("bridge_ready 1"));
        assert_eq!(get("/livez").await.unwrap().status(), 200);
        let ready = get("/readyz").await.unwrap();
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["reasons"][0], "MQTT broker not connected");
        assert_eq!(get("/nope").await.unwrap().status(), 404);
        assert!(
            probe(&format!("{base}/readyz"))
                .await
                .unwrap_err()
                .contains("503")
        );
        assert!(probe(&format!("{base}/livez")).await.is_ok());
        let _ = stop.send(());
        server.await.unwrap();
    }

    #[test]
    fn accept_pauses_double_from_the_minimum_to_the_maximum() {
        assert_eq!(accept_pause(1), ACCEPT_PAUSE_MIN);
        assert_eq!(accept_pause(2), ACCEPT_PAUSE_MIN * 2);
        assert_eq!(accept_pause(4), ACCEPT_PAUSE_MIN * 8);
        assert_eq!(accept_pause(5), ACCEPT_PAUSE_MAX);
        assert_eq!(accept_pause(u32::MAX), ACCEPT_PAUSE_MAX);
    }

    #[test]
    fn throttle_logs_the_first_event_then_one_line_per_period_with_the_count() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        assert_eq!(throttle.event(start), Some(1));
        for _ in 0..99 {
            assert_eq!(throttle.event(start + Duration::from_secs(1)), None);
        }
        assert_eq!(throttle.event(start + LOG_EVERY), Some(100));
        assert_eq!(throttle.event(start + LOG_EVERY), None);
    }

    /// Serves `Fixed` endpoints with `limits`; the listener's address, its metrics and the
    /// sender that stops it.
    async fn start(limits: Limits) -> (SocketAddr, HttpMetrics, tokio::sync::oneshot::Sender<()>) {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = HttpMetrics::default();
        let ready = Ready {
            ready: true,
            reasons: Vec::new(),
            degraded: Vec::new(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            listener,
            Arc::new(Fixed(ready)),
            limits,
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        (addr, metrics, stop)
    }

    /// Reads until the server closes the connection; panics if it stays open for `within`.
    async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut received = Vec::new();
        let read = tokio::time::timeout(within, async {
            let mut buf = [0u8; 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => received.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        assert!(
            read.is_ok(),
            "the connection is still open after {within:?}"
        );
        received
    }

    #[tokio::test]
    async fn a_connection_is_closed_at_the_end_of_its_lifetime_even_while_it_sends_requests() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits {
            connection_lifetime: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, metrics, _stop) = start(limits).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        // A keep-alive client that keeps asking: the header timeout never fires.
        let asking = async {
            loop {
                if stream
                    .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let within = tokio::time::timeout(Duration::from_secs(5), asking).await;
        assert!(within.is_ok(), "still served 5 s after opening");
        assert!(opened.elapsed() >= Duration::from_millis(300));
        assert_eq!(metrics.timed_out.get(), 1);
        assert_eq!(metrics.open.get(), 0);
    }

    #[tokio::test]
    async fn a_partial_header_is_closed_after_the_header_timeout() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            ..Limits::default()
        };
        let (addr, metrics, _stop) = start(limits).await;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /livez HTTP/1.1\r\nHo")
            .await
            .unwrap();
        closed_within(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(metrics.timed_out.get(), 1);
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once_and_counted() {
        use tokio::io::AsyncWriteExt;
        let limits = Limits {
            max_connections: 3,
            ..Limits::default()
        };
        let (addr, metrics, _stop) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..3 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = extra
            .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let answer = closed_within(&mut extra, Duration::from_secs(5)).await;
        assert!(answer.is_empty(), "the extra connection was answered");
        assert_eq!(metrics.refused.get(), 1);
        assert_eq!(metrics.open.get(), 3);
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let response = reqwest::get(format!("http://{addr}/livez")).await;
            if response.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "/livez not answered after the idle ones closed"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

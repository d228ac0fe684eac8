//! Scripted fake Bayeux long-polling HTTP server for integration tests.
//!
//! Why a scripted server exists: the faults the client must survive are ones
//! that real servers (CometD, Faye) cannot be made to produce on demand —
//! Salesforce-style `403::Unknown client` with `advice.reconnect = "handshake"`,
//! `advice.reconnect = "none"`, HTTP 500, a non-JSON body, a response stalled
//! past the client's deadline, an over-cap (huge) body, a dropped connection, a
//! truncated chunked body.
//! Here each test scripts the server's behaviour with a handler
//! `Fn(&Request) -> Reply`, and asserts on what the client sent.
//!
//! Protocol: a deliberately minimal hand-written HTTP/1.1 server on plain tokio
//! TCP, bound to `127.0.0.1:0`. It reads the request line, headers and a body
//! given by `Content-Length` or `Transfer-Encoding: chunked`; it answers
//! `Expect: 100-continue`; it keeps connections alive for any number of
//! sequential requests and closes after answering a request that carries
//! `Connection: close` (or an HTTP/1.0 request without `keep-alive`). Every
//! accepted connection gets a fresh [`Request::connection_id`], so tests can see
//! keep-alive reuse and concurrent connections. Any path is accepted; the
//! conventional one is [`FakeServer::url`].
//!
//! Ordering: for each request the handler is called first, then the request is
//! appended to the log (waking [`FakeServer::wait_for`]), then the reply is
//! sent. So once `wait_for` has seen a request, the handler has already chosen
//! its reply (and updated any state it keeps), even for [`Reply::Stall`].
//!
//! A panicking handler kills only that connection's task: the client sees the
//! connection closed, and the panic message goes to stderr.
//!
//! Dropping the [`FakeServer`] stops it: the accept task and every connection
//! task (including stalled and delayed ones) are aborted, which closes their
//! sockets.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Longest request line, header line or chunk-size line accepted.
const MAX_LINE: u64 = 64 * 1024;
/// Most header lines accepted in one request.
const MAX_HEADERS: usize = 200;
/// Largest request body accepted (the client under test sends small batches).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Size of the chunks a [`Reply::Huge`] body is streamed in.
const HUGE_CHUNK: usize = 64 * 1024;

/// One HTTP request received by the [`FakeServer`].
#[derive(Debug, Clone)]
pub struct Request {
    /// Request method, e.g. `POST`.
    pub method: String,
    /// Request target as sent (path plus any query), e.g. `/cometd`.
    pub path: String,
    /// Headers in arrival order, names as sent (look up with [`Request::header`]).
    pub headers: Vec<(String, String)>,
    /// Body decoded as UTF-8 (lossily), after undoing chunked transfer coding.
    pub body: String,
    /// The body parsed as Bayeux messages: a JSON array's elements, or a single
    /// JSON object wrapped in a one-element vector; empty if the body is not
    /// JSON or is some other JSON value.
    pub messages: Vec<Value>,
    /// Which TCP connection carried the request: 1 for the first accepted
    /// connection, 2 for the next, and so on.
    pub connection_id: u64,
}

impl Request {
    /// Value of the first header called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `channel` of the first message, if any.
    pub fn channel(&self) -> Option<&str> {
        self.messages.first()?.get("channel")?.as_str()
    }

    /// `channel` of every message in the batch that has one, in order.
    pub fn channels(&self) -> Vec<&str> {
        self.messages
            .iter()
            .filter_map(|m| m.get("channel")?.as_str())
            .collect()
    }

    /// Whether the connection must be closed after answering this request.
    fn wants_close(&self, http10: bool) -> bool {
        let tokens = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |t: &str| tokens.split(',').any(|x| x.trim() == t);
        has("close") || (http10 && !has("keep-alive"))
    }
}

/// What the [`FakeServer`] does with a request, as chosen by the test's handler.
#[derive(Debug, Clone)]
pub enum Reply {
    /// `200 OK`, `Content-Type: application/json`, the value serialized.
    Json(Value),
    /// The given status with a `text/plain` body, e.g. `Status(500, "boom".into())`.
    Status(u16, String),
    /// The given status with this raw body labelled `Content-Type:
    /// application/json` whatever it holds, e.g. `Body(200, "not json".into())`.
    Body(u16, String),
    /// Read the request and never answer: the socket stays open (and is
    /// drained) until the client closes it or the server is dropped.
    Stall,
    /// `200 OK`, `application/json`, a syntactically valid JSON array of at
    /// least N bytes: one delivery message on `/fake/huge` whose `data.blob` is
    /// a long string. Sent with `Transfer-Encoding: chunked` (no
    /// `Content-Length`) in 64 KiB chunks, so the client's body cap must work
    /// while streaming. If the client stops reading, the connection is dropped.
    Huge(usize),
    /// Close the connection without answering.
    Close,
    /// `200 OK`, `application/json`, `Transfer-Encoding: chunked`, but only the first half
    /// of this JSON value's text is sent (one chunk), then the connection is closed (FIN)
    /// without the final zero-length chunk: a truncated chunked body. No real server does
    /// this on purpose; a proxy or a crash in mid-reply does.
    TruncatedChunked(Value),
    /// Apply the inner reply after this delay (tokio time, so it follows a
    /// paused clock). Use it to hold a `/meta/connect` the way a real server
    /// does for up to `advice.timeout` when there is nothing to deliver.
    Delayed(Duration, Box<Reply>),
    /// Add a `Set-Cookie` header (the full header value, e.g.
    /// `"BAYEUX_BROWSER=abc; Path=/"`) to the inner reply. Ignored when the
    /// inner reply sends no response (`Stall`, `Close`).
    SetCookie(String, Box<Reply>),
    /// Add a header (name, value) to the inner reply, e.g. a redirect's `Location`.
    Header(&'static str, String, Box<Reply>),
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// State shared by the [`FakeServer`] handle and its tasks.
struct Shared {
    handler: Box<Handler>,
    log: Mutex<Vec<Request>>,
    /// Bumped after each request is logged; [`FakeServer::wait_for`] watches it.
    arrivals: watch::Sender<u64>,
}

/// Connection tasks, aborted together when the server is dropped.
struct Connections {
    closed: bool,
    tasks: JoinSet<()>,
}

/// A scripted Bayeux HTTP server on `127.0.0.1`, stopped when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    connections: Arc<Mutex<Connections>>,
    accept: JoinHandle<()>,
}

impl FakeServer {
    /// Binds `127.0.0.1:0` and serves every request with `handler`. The
    /// handler may be called concurrently from several connections.
    pub async fn start<F>(handler: F) -> FakeServer
    where
        F: Fn(&Request) -> Reply + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake server: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake server: local address of listener");
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            log: Mutex::new(Vec::new()),
            arrivals: watch::channel(0).0,
        });
        let connections = Arc::new(Mutex::new(Connections {
            closed: false,
            tasks: JoinSet::new(),
        }));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            Arc::clone(&connections),
        ));
        FakeServer {
            addr,
            shared,
            connections,
            accept,
        }
    }

    /// The Bayeux endpoint: `http://127.0.0.1:PORT/cometd`.
    pub fn url(&self) -> String {
        format!("http://{}/cometd", self.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.shared.log).clone()
    }

    /// How many requests have been received so far.
    pub fn request_count(&self) -> usize {
        lock(&self.shared.log).len()
    }

    /// Waits until `pred` holds for the request log and returns that log.
    /// Re-checks on every new request (no polling). Panics after `timeout`
    /// with `what` and the whole request log.
    pub async fn wait_for<P>(&self, what: &str, timeout: Duration, pred: P) -> Vec<Request>
    where
        P: Fn(&[Request]) -> bool,
    {
        // A fresh receiver has seen the current value, so any request logged
        // after this line makes `changed()` ready; earlier ones are in the
        // snapshot below.
        let mut arrivals = self.shared.arrivals.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let snapshot = self.requests();
            if pred(&snapshot) {
                return snapshot;
            }
            match tokio::time::timeout_at(deadline, arrivals.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self.shared`, so it cannot be gone; treat
                // it like a timeout rather than spin.
                Ok(Err(_)) | Err(_) => panic!(
                    "fake server: timed out after {timeout:?} waiting for {what}; \
                     {} request(s) received:\n{}",
                    snapshot.len(),
                    describe(&self.requests())
                ),
            }
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.accept.abort();
        let mut connections = lock(&self.connections);
        connections.closed = true;
        connections.tasks.abort_all();
    }
}

/// Locks, ignoring poisoning (a panicking handler must not hide the log).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One line per request, for timeout panics.
fn describe(requests: &[Request]) -> String {
    const MAX_BODY_SHOWN: usize = 400;
    let mut out = String::new();
    for (i, r) in requests.iter().enumerate() {
        let mut body: String = r.body.chars().take(MAX_BODY_SHOWN).collect();
        if body.len() < r.body.len() {
            body.push_str("...");
        }
        out.push_str(&format!(
            "  #{i} conn={} {} {} {body}\n",
            r.connection_id, r.method, r.path
        ));
    }
    if out.is_empty() {
        out.push_str("  (none)\n");
    }
    out
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    connections: Arc<Mutex<Connections>>,
) {
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let mut connections = lock(&connections);
        if connections.closed {
            return;
        }
        while connections.tasks.try_join_next().is_some() {}
        connections
            .tasks
            .spawn(serve_connection(Arc::clone(&shared), stream, next_id));
    }
}

type Conn = BufReader<TcpStream>;

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, connection_id: u64) {
    let mut conn = BufReader::new(stream);
    loop {
        let (request, http10) = match read_request(&mut conn, connection_id).await {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let body = format!("fake server: bad request: {e}");
                let _ =
                    write_response(&mut conn, 400, "text/plain", &[], body.as_bytes(), true).await;
                return;
            }
            Err(_) => return,
        };
        let close = request.wants_close(http10);
        let reply = (shared.handler)(&request);
        lock(&shared.log).push(request);
        shared.arrivals.send_modify(|n| *n += 1);
        match send_reply(&mut conn, reply, close).await {
            Ok(true) if !close => {}
            _ => return,
        }
    }
}

/// Sends `reply`; `Ok(true)` if the connection may serve another request.
async fn send_reply(conn: &mut Conn, mut reply: Reply, close: bool) -> io::Result<bool> {
    let mut extra: Vec<(&str, String)> = Vec::new();
    let reply = loop {
        reply = match reply {
            Reply::Delayed(delay, inner) => {
                tokio::time::sleep(delay).await;
                *inner
            }
            Reply::SetCookie(cookie, inner) => {
                extra.push(("Set-Cookie", cookie));
                *inner
            }
            Reply::Header(name, value, inner) => {
                extra.push((name, value));
                *inner
            }
            other => break other,
        };
    };
    match reply {
        Reply::Json(value) => {
            let body = serde_json::to_vec(&value).expect("fake server: serialize JSON reply");
            write_response(conn, 200, "application/json", &extra, &body, close).await?;
        }
        Reply::Status(status, text) => {
            let ctype = "text/plain; charset=utf-8";
            write_response(conn, status, ctype, &extra, text.as_bytes(), close).await?;
        }
        Reply::Body(status, raw) => {
            write_response(
                conn,
                status,
                "application/json",
                &extra,
                raw.as_bytes(),
                close,
            )
            .await?;
        }
        Reply::Huge(size) => write_huge(conn, size, &extra, close).await?,
        Reply::Stall => {
            // Drain until the client gives up (EOF or error); abort on drop.
            let mut sink = [0u8; 4096];
            while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            return Ok(false);
        }
        Reply::Close => return Ok(false),
        Reply::TruncatedChunked(value) => {
            let body = serde_json::to_vec(&value).expect("fake server: serialize JSON reply");
            let half = &body[..body.len() / 2];
            let head = response_head(
                200,
                "application/json",
                &extra,
                "Transfer-Encoding: chunked",
                false,
            );
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(format!("{:x}\r\n", half.len()).as_bytes());
            bytes.extend_from_slice(half);
            bytes.extend_from_slice(b"\r\n");
            let stream = conn.get_mut();
            stream.write_all(&bytes).await?;
            stream.flush().await?;
            let _ = stream.shutdown().await;
            return Ok(false);
        }
        Reply::Delayed(..) | Reply::SetCookie(..) | Reply::Header(..) => {
            unreachable!("unwrapped above")
        }
    }
    Ok(true)
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Scripted",
    }
}

fn response_head(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    framing: &str,
    close: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\n{framing}\r\n",
        reason(status)
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    head
}

async fn write_response(
    conn: &mut Conn,
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let framing = format!("Content-Length: {}", body.len());
    let mut bytes = response_head(status, content_type, extra, &framing, close).into_bytes();
    bytes.extend_from_slice(body);
    let stream = conn.get_mut();
    stream.write_all(&bytes).await?;
    if close {
        stream.shutdown().await?;
    }
    Ok(())
}

async fn write_huge(
    conn: &mut Conn,
    size: usize,
    extra: &[(&str, String)],
    close: bool,
) -> io::Result<()> {
    const PREFIX: &[u8] = br#"[{"channel":"/fake/huge","data":{"blob":""#;
    const SUFFIX: &[u8] = br#""}}]"#;
    let head = response_head(
        200,
        "application/json",
        extra,
        "Transfer-Encoding: chunked",
        close,
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).await?;
    let mut scratch = Vec::with_capacity(HUGE_CHUNK + 16);
    write_chunk(stream, &mut scratch, PREFIX).await?;
    let filler = [b'x'; HUGE_CHUNK];
    let mut left = size.saturating_sub(PREFIX.len() + SUFFIX.len());
    while left > 0 {
        let n = left.min(HUGE_CHUNK);
        write_chunk(stream, &mut scratch, &filler[..n]).await?;
        left -= n;
    }
    write_chunk(stream, &mut scratch, SUFFIX).await?;
    stream.write_all(b"0\r\n\r\n").await?;
    if close {
        stream.shutdown().await?;
    }
    Ok(())
}

/// Writes `data` as one chunk of a chunked body, in one write.
async fn write_chunk(stream: &mut TcpStream, scratch: &mut Vec<u8>, data: &[u8]) -> io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    scratch.extend_from_slice(data);
    scratch.extend_from_slice(b"\r\n");
    stream.write_all(scratch).await
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line (up to and including `\n`) into `buf`, returning it without
/// the line ending; `None` at a clean EOF before any byte.
async fn read_line(conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<Option<String>> {
    buf.clear();
    let n = (&mut *conn).take(MAX_LINE).read_until(b'\n', buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return if n as u64 >= MAX_LINE {
            Err(bad("line too long"))
        } else {
            Err(io::ErrorKind::UnexpectedEof.into())
        };
    }
    let line = String::from_utf8_lossy(buf);
    Ok(Some(line.trim_end_matches(['\r', '\n']).to_owned()))
}

/// Reads one request; `None` if the peer closed the connection between
/// requests. The flag is whether the request was HTTP/1.0.
async fn read_request(conn: &mut Conn, connection_id: u64) -> io::Result<Option<(Request, bool)>> {
    let mut buf = Vec::new();
    // Tolerate empty lines before the request line (RFC 9112 section 2.2).
    let request_line = loop {
        match read_line(conn, &mut buf).await? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("malformed request line {request_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported version {version:?}")));
    }
    let http10 = version == "HTTP/1.0";

    let mut headers = Vec::new();
    loop {
        let line = read_line(conn, &mut buf)
            .await?
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        if line.is_empty() {
            break;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("malformed header {line:?}")))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut request = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body: String::new(),
        messages: Vec::new(),
        connection_id,
    };

    if request
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await?;
    }

    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(conn, &mut buf).await?
    } else if let Some(len) = request.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        if len > MAX_BODY {
            return Err(bad(format!("body of {len} bytes is too large")));
        }
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await?;
        body
    } else {
        Vec::new()
    };
    request.body = String::from_utf8_lossy(&body).into_owned();
    request.messages = match serde_json::from_slice(&body) {
        Ok(Value::Array(messages)) => messages,
        Ok(message @ Value::Object(_)) => vec![message],
        _ => Vec::new(),
    };
    Ok(Some((request, http10)))
}

async fn read_chunked(conn: &mut Conn, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line(conn, buf)
            .await?
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| bad(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Skip trailers up to the terminating empty line.
            loop {
                let trailer = read_line(conn, buf)
                    .await?
                    .ok_or(io::ErrorKind::UnexpectedEof)?;
                if trailer.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("chunked body is too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        conn.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        conn.read_exact(&mut crlf).await?;
        if &crlf != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

/// Builders for typical scripted Bayeux replies. Each takes the request
/// message it answers and echoes its `id` (and `clientId` where a real server
/// would), so replies correlate as the client expects.
pub mod bayeux {
    use serde_json::{Map, Value, json};

    use super::{Reply, Request};

    /// Copies `keys` that are present in `req` into `reply`.
    fn echo(req: &Value, mut reply: Map<String, Value>, keys: &[&str]) -> Value {
        for key in keys {
            if let Some(value) = req.get(*key) {
                reply.insert((*key).to_owned(), value.clone());
            }
        }
        Value::Object(reply)
    }

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!("built with json!({{..}})"),
        }
    }

    /// Successful `/meta/handshake` reply: version `1.0`,
    /// `supportedConnectionTypes: ["long-polling"]`, the given `clientId`,
    /// advice `{reconnect: "retry", interval: 0, timeout: 2000}`.
    pub fn handshake_ok(req: &Value, client_id: &str) -> Value {
        let reply = json!({
            "channel": "/meta/handshake",
            "successful": true,
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "clientId": client_id,
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 2000},
        });
        echo(req, object(reply), &["id"])
    }

    /// Successful `/meta/connect` reply, with `advice` if given.
    pub fn connect_ok(req: &Value, advice: Option<Value>) -> Value {
        let mut reply = object(json!({"channel": "/meta/connect", "successful": true}));
        if let Some(advice) = advice {
            reply.insert("advice".to_owned(), advice);
        }
        echo(req, reply, &["id", "clientId"])
    }

    /// Successful `/meta/subscribe` reply echoing `subscription`.
    pub fn subscribe_ok(req: &Value) -> Value {
        let reply = object(json!({"channel": "/meta/subscribe", "successful": true}));
        echo(req, reply, &["id", "clientId", "subscription"])
    }

    /// Successful publish acknowledgement on the request's channel.
    pub fn publish_ok(req: &Value) -> Value {
        echo(req, object(json!({"successful": true})), &["channel", "id"])
    }

    /// Generic success (e.g. `/meta/unsubscribe`, `/meta/disconnect`):
    /// echoes `channel`, `id`, `clientId`, `subscription`.
    pub fn ok(req: &Value) -> Value {
        let reply = object(json!({"successful": true}));
        echo(req, reply, &["channel", "id", "clientId", "subscription"])
    }

    /// Unsuccessful reply with `error`, and `advice` if given; echoes
    /// `channel`, `id`, `clientId`, `subscription`.
    pub fn failure(req: &Value, error: &str, advice: Option<Value>) -> Value {
        let mut reply = object(json!({"successful": false, "error": error}));
        if let Some(advice) = advice {
            reply.insert("advice".to_owned(), advice);
        }
        echo(req, reply, &["channel", "id", "clientId", "subscription"])
    }

    /// Salesforce-style expired session: `403::Unknown client` with advice
    /// `{reconnect: "handshake", interval: 0}`.
    pub fn unknown_client(req: &Value) -> Value {
        let advice = json!({"reconnect": "handshake", "interval": 0});
        failure(req, "403::Unknown client", Some(advice))
    }

    /// A message delivered to a subscriber: `{channel, data}`.
    pub fn delivery(channel: &str, data: Value) -> Value {
        json!({"channel": channel, "data": data})
    }

    /// `Reply::Json` with one reply message per message of the request's batch
    /// (in order, in one JSON array), each made by `f`.
    pub fn reply_all(req: &Request, f: impl Fn(&Value) -> Value) -> Reply {
        Reply::Json(Value::Array(req.messages.iter().map(f).collect()))
    }
}

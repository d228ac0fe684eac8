//! The WebSocket transport: batches as JSON arrays in text frames over one connection.
//!
//! The URL is the Bayeux URL with CometD's scheme mapping (`http`→`ws`, `https`→`wss`). The
//! upgrade request carries what a long-polling request carries: the configured headers, the
//! bearer token, and the cookies of the jar this transport shares with the client's
//! long-polling transport (`BAYEUX_BROWSER`, load-balancer cookies); cookies the upgrade
//! response sets go into that jar. `wss` uses the TLS settings of [`TlsFiles`] (the same
//! trust and client certificate as long-polling). Proxies from the environment are not used
//! (with `auto`, a WebSocket that cannot connect falls back to long-polling, which uses them).
//!
//! A socket has no request/response pairing, so the transport makes one: [`Transport::send`]
//! writes the batch as one frame and resolves once a reply has come for every message of it
//! (replies are matched by message `id`). Everything else (deliveries, whether pushed while
//! the long poll is held or flushed with a `/meta/connect` reply) goes to
//! [`Transport::pushed`], in arrival order, so that deliveries keep the server's order; the
//! deliveries of frames that arrived together go as one batch. When the deadline passes
//! with only some replies in, those are the answer (the session treats the rest as
//! unanswered).
//!
//! Failures: a closed or broken connection fails every request in flight with
//! [`TransportError::Io`] and the next request opens a new connection. A request that gets
//! no reply within its deadline (for `/meta/connect`, `advice.timeout` + the network
//! allowance) drops the connection too: no data for that long means a dead path, which a
//! fresh connection detects or avoids. Frames are capped at the response body cap
//! ([`TransportError::TooLarge`]); a frame that is not a Bayeux batch fails the connection
//! ([`TransportError::Decode`]). Pings are answered by the WebSocket library.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use reqwest::cookie::{CookieStore, Jar};
use reqwest::header::{AUTHORIZATION, COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use url::Url;

use super::{SendFuture, Transport};
use crate::bayeux::error::TransportError;
use crate::bayeux::http::{bearer_value, redacted_url, redirect_target};
use crate::bayeux::message::{DecodeError, Kind, Message, decode_batch_limited, encode_batch};
use crate::tls::TlsFiles;

/// Batches of pushed deliveries buffered for the driver before the socket is no longer read
/// (back-pressure reaches the server through TCP).
const PUSHED_FRAMES: usize = 16;
/// The most deliveries handed to the driver at once (those of frames that arrived together).
const PUSH_BATCH: usize = 1024;

/// Any byte stream a WebSocket can run over (plain TCP or TLS).
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Socket = WebSocketStream<Box<dyn Stream>>;

/// The WebSocket transport. `Debug` shows the URL without user info or query.
pub struct WebSocket {
    inner: Arc<Inner>,
    pushed: Mutex<Option<mpsc::Receiver<Vec<Message>>>>,
}

struct Inner {
    /// The `ws`/`wss` URL.
    url: Url,
    /// The `http`/`https` URL the cookies belong to.
    cookie_url: Url,
    headers: HeaderMap,
    jar: Arc<Jar>,
    /// For `wss`.
    tls: Option<Arc<rustls::ClientConfig>>,
    max_frame: usize,
    max_messages: usize,
    bearer: RwLock<Option<HeaderValue>>,
    /// The open connection, if any; opened by the first request that needs one.
    connection: tokio::sync::Mutex<Option<Arc<Connection>>>,
    pushed: mpsc::Sender<Vec<Message>>,
}

/// One open WebSocket: its write half and the requests awaiting replies; a task reads.
struct Connection {
    writer: tokio::sync::Mutex<SplitSink<Socket, Frame>>,
    waiting: Arc<Mutex<Waiting>>,
    reader: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Requests in flight on one connection.
#[derive(Default)]
struct Waiting {
    /// Set once the connection failed; later requests fail at once.
    failed: Option<TransportError>,
    next: u64,
    batches: HashMap<u64, Batch>,
    /// Which batch each awaited message id belongs to.
    by_id: HashMap<String, u64>,
}

struct Batch {
    /// Replies still awaited.
    awaited: usize,
    replies: Vec<Message>,
    done: Option<oneshot::Sender<Result<Vec<Message>, TransportError>>>,
}

impl WebSocket {
    /// A transport for the Bayeux URL `url` (`http`/`https`, mapped to `ws`/`wss`), sending
    /// `headers` on the upgrade, keeping cookies in `jar`, taking frames of at most
    /// `max_frame` bytes and at most `max_messages` messages.
    pub fn new(
        url: &Url,
        headers: HeaderMap,
        jar: Arc<Jar>,
        max_frame: usize,
        max_messages: usize,
        tls: &TlsFiles,
    ) -> Result<Self, String> {
        let mut ws_url = url.clone();
        let secure = match url.scheme() {
            "http" => false,
            "https" => true,
            other => return Err(format!("unsupported URL scheme {other:?}")),
        };
        ws_url
            .set_scheme(if secure { "wss" } else { "ws" })
            .map_err(|()| "cannot map the URL to ws/wss".to_owned())?;
        let tls = if secure {
            let config = crate::tls::client_config(tls, &[b"http/1.1"])
                .map_err(|e| format!("TLS setup failed: {} {e}", e.setting))?;
            Some(Arc::new(config))
        } else {
            None
        };
        let (pushed, rx) = mpsc::channel(PUSHED_FRAMES);
        Ok(WebSocket {
            inner: Arc::new(Inner {
                url: ws_url,
                cookie_url: url.clone(),
                headers,
                jar,
                tls,
                max_frame: max_frame.max(1),
                max_messages: max_messages.max(1),
                bearer: RwLock::new(None),
                connection: tokio::sync::Mutex::new(None),
                pushed,
            }),
            pushed: Mutex::new(Some(rx)),
        })
    }
}

impl std::fmt::Debug for WebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("url", &redacted_url(&self.inner.url))
            .field("max_frame", &self.inner.max_frame)
            .finish_non_exhaustive()
    }
}

impl Transport for WebSocket {
    fn name(&self) -> &'static str {
        "websocket"
    }

    fn set_bearer_token(&self, token: Option<&str>) -> Result<(), String> {
        let value = bearer_value(token)?;
        *self
            .inner
            .bearer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = value;
        Ok(())
    }

    fn send(&self, messages: Vec<Message>, deadline: Duration) -> SendFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let end = tokio::time::Instant::now() + deadline;
            let (connection, key, rx) =
                match tokio::time::timeout_at(end, inner.start(messages)).await {
                    Ok(started) => started?,
                    Err(_) => return Err(TransportError::Timeout(deadline)),
                };
            let guard = Deregister {
                waiting: Arc::clone(&connection.waiting),
                key,
            };
            match tokio::time::timeout_at(end, rx).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(TransportError::Io("the connection was dropped".to_owned())),
                Err(_) => {
                    let partial = guard.take_replies();
                    if !partial.is_empty() {
                        return Ok(partial);
                    }
                    inner
                        .discard(&connection, TransportError::Timeout(deadline))
                        .await;
                    Err(TransportError::Timeout(deadline))
                }
            }
        })
    }

    fn pushed(&self) -> Option<mpsc::Receiver<Vec<Message>>> {
        self.pushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// Removes a batch from its connection's table when its request ends or is abandoned.
struct Deregister {
    waiting: Arc<Mutex<Waiting>>,
    key: u64,
}

impl Deregister {
    /// The replies that came in so far (the batch is forgotten).
    fn take_replies(&self) -> Vec<Message> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.forget(self.key)
    }
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        waiting.forget(self.key);
    }
}

impl Waiting {
    fn forget(&mut self, key: u64) -> Vec<Message> {
        self.by_id.retain(|_, k| *k != key);
        self.batches
            .remove(&key)
            .map(|b| b.replies)
            .unwrap_or_default()
    }

    /// Fails every request in flight with `error`, and later ones.
    fn fail(&mut self, error: TransportError) {
        self.by_id.clear();
        for (_, batch) in self.batches.drain() {
            if let Some(done) = batch.done {
                let _ = done.send(Err(error.clone()));
            }
        }
        self.failed.get_or_insert(error);
    }

    /// Hands the replies among the messages of one frame to the requests they answer;
    /// returns the rest (deliveries), in order, for [`Transport::pushed`]: every delivery
    /// takes that one path, so deliveries keep the server's order whatever frames carry them.
    fn route(&mut self, messages: Vec<Message>) -> Vec<Message> {
        let mut rest = Vec::with_capacity(messages.len());
        let mut answered = false;
        for message in messages {
            match self.claim(&message) {
                Some(key) => {
                    answered = true;
                    if let Some(batch) = self.batches.get_mut(&key) {
                        batch.replies.push(message);
                    }
                }
                None => rest.push(message),
            }
        }
        if answered {
            for batch in self.batches.values_mut() {
                if batch.awaited == 0
                    && let Some(done) = batch.done.take()
                {
                    let _ = done.send(Ok(std::mem::take(&mut batch.replies)));
                }
            }
            self.batches.retain(|_, b| b.done.is_some());
        }
        rest
    }

    /// The batch `message` answers, if it is a reply to a message in flight.
    fn claim(&mut self, message: &Message) -> Option<u64> {
        let id = message.id.as_ref()?;
        // A delivery carries its publisher's id, which may be ours; only a `/service`
        // delivery is a reply (see the session's `receive`).
        if message.kind() == Kind::Delivery && !message.channel.starts_with("/service/") {
            return None;
        }
        let key = self.by_id.remove(id)?;
        if let Some(batch) = self.batches.get_mut(&key) {
            batch.awaited = batch.awaited.saturating_sub(1);
        }
        Some(key)
    }
}

type Started = (
    Arc<Connection>,
    u64,
    oneshot::Receiver<Result<Vec<Message>, TransportError>>,
);

impl Inner {
    /// Registers `messages` as awaiting replies and writes them as one frame.
    async fn start(self: &Arc<Self>, messages: Vec<Message>) -> Result<Started, TransportError> {
        let connection = self.connection().await?;
        let (done, rx) = oneshot::channel();
        let key = {
            let mut waiting = connection
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(error) = &waiting.failed {
                return Err(error.clone());
            }
            waiting.next += 1;
            let key = waiting.next;
            let ids: Vec<String> = messages.iter().filter_map(|m| m.id.clone()).collect();
            for id in &ids {
                waiting.by_id.insert(id.clone(), key);
            }
            waiting.batches.insert(
                key,
                Batch {
                    awaited: ids.len(),
                    replies: Vec::new(),
                    done: Some(done),
                },
            );
            key
        };
        let text = String::from_utf8(encode_batch(&messages))
            .map_err(|_| TransportError::Io("the batch is not UTF-8".to_owned()))?;
        let written = connection.writer.lock().await.send(Frame::text(text)).await;
        if let Err(e) = written {
            let error = TransportError::Io(format!("WebSocket write failed: {e}"));
            self.discard(&connection, error.clone()).await;
            return Err(error);
        }
        Ok((connection, key, rx))
    }

    /// The open connection, opening one if there is none or it failed.
    async fn connection(self: &Arc<Self>) -> Result<Arc<Connection>, TransportError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            let failed = connection
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed
                .is_some();
            if !failed {
                return Ok(Arc::clone(connection));
            }
        }
        *slot = None;
        let connection = Arc::new(self.open().await?);
        *slot = Some(Arc::clone(&connection));
        Ok(connection)
    }

    /// Fails what is in flight on `connection` and forgets it, if it is still the open one.
    async fn discard(&self, connection: &Arc<Connection>, error: TransportError) {
        connection
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .fail(error);
        let mut slot = self.connection.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, connection)) {
            *slot = None;
        }
    }

    /// Connects, upgrades and starts the reader.
    async fn open(&self) -> Result<Connection, TransportError> {
        let host = self
            .url
            .host_str()
            .ok_or_else(|| TransportError::Io("the URL has no host".to_owned()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = self
            .url
            .port_or_known_default()
            .ok_or_else(|| TransportError::Io("the URL has no port".to_owned()))?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| TransportError::Io(format!("WebSocket connect failed: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let stream: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = rustls_pki_types::ServerName::try_from(host)
                    .map_err(|e| TransportError::Io(format!("invalid TLS server name: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::clone(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| TransportError::Io(format!("TLS handshake failed: {e}")))?;
                Box::new(tls)
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_frame))
            .max_frame_size(Some(self.max_frame));
        let request = self.upgrade_request()?;
        let (socket, response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config))
                .await
                .map_err(|e| self.upgrade_error(e))?;
        let mut cookies = response.headers().get_all(SET_COOKIE).iter();
        self.jar.set_cookies(&mut cookies, &self.cookie_url);
        let (writer, reader) = socket.split();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let reader = tokio::spawn(read(
            reader,
            Arc::clone(&waiting),
            self.pushed.clone(),
            self.max_messages,
            self.max_frame,
        ));
        Ok(Connection {
            writer: tokio::sync::Mutex::new(writer),
            waiting,
            reader,
        })
    }

    /// The upgrade request: the headers, the bearer token and the jar's cookies.
    fn upgrade_request(&self) -> Result<tungstenite::handshake::client::Request, TransportError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| TransportError::Io(format!("invalid WebSocket request: {e}")))?;
        let headers = request.headers_mut();
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        if let Some(bearer) = self
            .bearer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            headers.insert(AUTHORIZATION, bearer);
        }
        if let Some(mut cookies) = self.jar.cookies(&self.cookie_url) {
            cookies.set_sensitive(true);
            headers.insert(COOKIE, cookies);
        }
        Ok(request)
    }

    /// A failed upgrade as a transport error: the HTTP status when the server answered.
    fn upgrade_error(&self, e: tungstenite::Error) -> TransportError {
        match e {
            tungstenite::Error::Http(response) => {
                let status = response.status();
                if status.is_redirection() {
                    TransportError::Redirect {
                        status: status.as_u16(),
                        location: redirect_target(&self.cookie_url, response.headers()),
                    }
                } else {
                    TransportError::Status {
                        status: status.as_u16(),
                    }
                }
            }
            other => TransportError::Io(format!("WebSocket upgrade failed: {other}")),
        }
    }
}

/// Reads frames until the connection ends, handing replies to their requests and the rest
/// to `pushed`; then fails what is still in flight. Deliveries of frames that have already
/// arrived are handed over together (up to [`PUSH_BATCH`] messages): one wake-up of the
/// driver for a burst, as a long-poll response would be, instead of one per frame.
async fn read(
    mut reader: SplitStream<Socket>,
    waiting: Arc<Mutex<Waiting>>,
    pushed: mpsc::Sender<Vec<Message>>,
    max_messages: usize,
    max_frame: usize,
) {
    let mut burst: Vec<Message> = Vec::new();
    let error = loop {
        let next = if burst.is_empty() {
            reader.next().await
        } else {
            match reader.next().now_or_never() {
                Some(next) => next,
                None => {
                    // Nothing more has arrived: hand the burst over, then wait.
                    if pushed.send(std::mem::take(&mut burst)).await.is_err() {
                        break TransportError::Io("the client is gone".to_owned());
                    }
                    continue;
                }
            }
        };
        let messages = match frame(next, max_messages, max_frame) {
            Ok(Some(messages)) => messages,
            Ok(None) => continue,
            Err(error) => break error,
        };
        let rest = waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .route(messages);
        burst.extend(rest);
        if burst.len() >= PUSH_BATCH && pushed.send(std::mem::take(&mut burst)).await.is_err() {
            break TransportError::Io("the client is gone".to_owned());
        }
    };
    // What arrived before the failure is still delivered.
    if !burst.is_empty() {
        let _ = pushed.send(burst).await;
    }
    waiting
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .fail(error);
}

/// The messages of what the socket gave: `Ok(None)` for a control frame, `Err` when the
/// connection is over (closed, broken, or a frame that is not a Bayeux batch).
fn frame(
    next: Option<Result<Frame, tungstenite::Error>>,
    max_messages: usize,
    max_frame: usize,
) -> Result<Option<Vec<Message>>, TransportError> {
    let text = match next {
        None | Some(Ok(Frame::Close(_))) => {
            return Err(TransportError::Io(
                "the server closed the WebSocket".to_owned(),
            ));
        }
        Some(Err(tungstenite::Error::Capacity(_))) => {
            return Err(TransportError::TooLarge { cap: max_frame });
        }
        Some(Err(e)) => return Err(TransportError::Io(format!("WebSocket failed: {e}"))),
        Some(Ok(Frame::Text(text))) => text,
        Some(Ok(Frame::Binary(_))) => {
            return Err(TransportError::Decode(
                "a binary WebSocket frame".to_owned(),
            ));
        }
        Some(Ok(_)) => return Ok(None),
    };
    match decode_batch_limited(text.as_bytes(), max_messages) {
        Ok(messages) => Ok(Some(messages)),
        Err(DecodeError::TooMany { cap }) => Err(TransportError::TooManyMessages { cap }),
        Err(DecodeError::Empty) => Err(TransportError::Decode("empty frame".to_owned())),
        Err(DecodeError::Invalid(why)) => Err(TransportError::Decode(why)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(value: serde_json::Value) -> Message {
        crate::bayeux::message::decode_batch(value.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
            .remove(0)
    }

    fn waiting_for(
        ids: &[&str],
    ) -> (
        Waiting,
        oneshot::Receiver<Result<Vec<Message>, TransportError>>,
    ) {
        let mut waiting = Waiting::default();
        let (done, rx) = oneshot::channel();
        for id in ids {
            waiting.by_id.insert((*id).to_owned(), 1);
        }
        waiting.batches.insert(
            1,
            Batch {
                awaited: ids.len(),
                replies: Vec::new(),
                done: Some(done),
            },
        );
        (waiting, rx)
    }

    #[test]
    fn replies_pair_by_id_and_every_delivery_is_pushed() {
        let (mut waiting, mut rx) = waiting_for(&["7"]);
        // A delivery carrying our own publish id is not the reply.
        let pushed = waiting.route(vec![message(json!({"channel":"/a","id":"7","data":1}))]);
        assert_eq!(pushed.len(), 1);
        assert!(rx.try_recv().is_err());
        let rest = waiting.route(vec![
            message(json!({"channel":"/a","data":2})),
            message(json!({"channel":"/meta/connect","id":"7","successful":true})),
        ]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].channel, "/a");
        let replies = rx
            .try_recv()
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].channel, "/meta/connect");
        assert!(waiting.batches.is_empty() && waiting.by_id.is_empty());
    }

    #[test]
    fn a_batch_waits_for_every_reply_and_a_failure_ends_it() {
        let (mut waiting, mut rx) = waiting_for(&["1", "2"]);
        waiting.route(vec![message(
            json!({"channel":"/x","id":"1","successful":true}),
        )]);
        assert!(rx.try_recv().is_err());
        waiting.fail(TransportError::Io("gone".into()));
        assert!(matches!(rx.try_recv(), Ok(Err(TransportError::Io(_)))));
        assert!(waiting.failed.is_some());
    }

    #[test]
    fn the_url_maps_to_ws_and_wss() {
        let jar = Arc::new(Jar::default());
        let url = Url::parse("http://h:1/cometd").unwrap_or_else(|e| panic!("{e}"));
        let ws = WebSocket::new(&url, HeaderMap::new(), jar, 10, 10, &TlsFiles::default())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ws.inner.url.as_str(), "ws://h:1/cometd");
        assert!(ws.pushed().is_some() && ws.pushed().is_none());
    }
}

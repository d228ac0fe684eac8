//! The [`Client`] handle and what it hands out ([`Events`], [`Subscription`]).
//!
//! [`Client::new`] spawns one driver task (`super::driver`) that owns the [`Session`], the
//! transport and every timer, and returns a cloneable [`Client`] (commands go over a bounded
//! channel) and the [`Events`] stream.
//!
//! Deliveries are fanned out to every local [`Subscription`] whose pattern matches, with
//! `send().await`: a slow subscriber slows the client down (back-pressure reaches the server
//! as a later `/meta/connect`) instead of growing a queue without bound. A subscriber that
//! awaits its own publishes must therefore read deliveries on another task.

use std::sync::{Arc, OnceLock};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{Instrument, info_span};

use super::channel::{ChannelPattern, validate_publish_channel};
use super::driver::{Command, Driver};
use super::error::{ClientError, PublishError};
use super::event::{Event, StopReason};
pub use super::http::redacted_url;
use super::liveness::{Liveness, Pulse};
use super::message::{Data, Message};
pub use super::options::ClientOptions;
use super::session::{Session, SessionOptions};
use super::transport::callback_polling::CallbackPolling;
use super::transport::long_polling::LongPolling;
use super::transport::websocket::WebSocket;
use super::transport::{Transport, TransportChoice};
use super::transports::{InUse, Transports};

/// A cloneable handle to a running client. When every handle is dropped the client
/// disconnects.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    subscription_buffer: usize,
    stopped: Arc<OnceLock<StopReason>>,
    pulse: Pulse,
    in_use: InUse,
}

/// Lifecycle events and unroutable messages, in order. Reading them is optional; if the
/// buffer fills, further events are logged and dropped.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// The server's verdict on a queued publish (see [`Client::publish_queued`]).
#[derive(Debug)]
pub struct Verdict {
    rx: oneshot::Receiver<Result<Message, PublishError>>,
}

impl std::future::Future for Verdict {
    type Output = Result<Message, PublishError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(PublishError::Closed)))
    }
}

/// Messages delivered on channels matching one pattern.
#[derive(Debug)]
pub struct Subscription {
    patterns: Vec<ChannelPattern>,
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[ChannelPattern] {
        &self.patterns
    }

    /// The next delivery; `None` once the client has stopped or the pattern was unsubscribed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// A delivery that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }

    /// [`Subscription::recv`] for hand-written futures and streams: `Ready(None)` once the
    /// client has stopped or the pattern was unsubscribed.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

/// The headers of `options` for every request, each value marked sensitive: any of them may
/// carry a credential (`Authorization`, `X-Api-Key`, a cookie), and a sensitive value is left
/// out of `Debug` output (reqwest's client and request, hyper, our logs).
fn static_headers(options: &ClientOptions) -> Result<HeaderMap, ClientError> {
    let mut headers = HeaderMap::new();
    if options.token_source.is_some()
        && options
            .headers
            .iter()
            .any(|(n, _)| n.trim().eq_ignore_ascii_case("authorization"))
    {
        return Err(ClientError::Options(
            "set either a token source or an Authorization header, not both".to_owned(),
        ));
    }
    for (name, value) in &options.headers {
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ClientError::Options(format!("invalid HTTP header name {name:?}")))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| ClientError::Options(format!("invalid value for HTTP header {name}")))?;
        value.set_sensitive(true);
        headers.append(name, value);
    }
    Ok(headers)
}

/// The transports `options.transport` asks for, sharing one cookie jar.
fn transports(options: &ClientOptions, headers: HeaderMap) -> Result<Transports, String> {
    let jar = Arc::new(reqwest::cookie::Jar::default());
    let (url, max_body, tls) = (&options.url, options.max_response_bytes, &options.tls);
    let max_messages = options.max_messages_per_reply;
    if options.transport == TransportChoice::CallbackPolling {
        let transport = CallbackPolling::new(url.clone(), headers, max_body, tls, jar)?
            .with_max_messages(max_messages);
        return Ok(Transports::single(Arc::new(transport)));
    }
    let http = LongPolling::with_jar(
        url.clone(),
        headers.clone(),
        max_body,
        tls,
        Arc::clone(&jar),
    )?
    .with_max_messages(max_messages);
    if options.transport == TransportChoice::LongPolling {
        return Ok(Transports::single(Arc::new(http)));
    }
    let ws = WebSocket::new(url, headers, jar, max_body, max_messages, tls)?;
    Ok(Transports::with_websocket(
        options.transport,
        Arc::new(http),
        Arc::new(ws),
        options.backoff,
    ))
}

/// The extensions, with `json-comment-filtered` offered at handshake first when asked for.
fn with_comment_filter(options: &ClientOptions) -> Vec<Arc<dyn super::ext::Extension>> {
    let mut extensions = options.extensions.clone();
    if options.json_comment_filtered {
        let mut fields = Map::new();
        fields.insert("json-comment-filtered".to_owned(), Value::Bool(true));
        extensions.insert(0, Arc::new(super::ext::HandshakeExt::new(fields)));
    }
    extensions
}

impl Client {
    /// Starts a client on the current tokio runtime. It handshakes at once and keeps its
    /// session alive until [`Client::disconnect`], the server's `reconnect: none`, or the
    /// last handle being dropped.
    pub fn new(options: ClientOptions) -> Result<(Client, Events), ClientError> {
        let headers = static_headers(&options)?;
        match options.url.scheme() {
            "http" | "https" => {}
            other => {
                return Err(ClientError::Options(format!(
                    "unsupported URL scheme {other:?}"
                )));
            }
        }
        let transports = transports(&options, headers).map_err(ClientError::Options)?;
        Ok(Self::start(options, transports))
    }

    /// Starts a client over a given transport (tests, other transports); `options.transport`
    /// is not used.
    pub fn with_transport(
        options: ClientOptions,
        transport: Arc<dyn Transport>,
    ) -> (Client, Events) {
        Self::start(options, Transports::single(transport))
    }

    fn start(options: ClientOptions, transports: Transports) -> (Client, Events) {
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let subscription_buffer = options.subscription_buffer.max(1);
        let (event_tx, event_rx) = mpsc::channel(options.event_buffer.max(1));
        let session_options = SessionOptions {
            connection_types: transports.offered(),
            backoff: options.backoff,
            max_queued: options.max_queued,
            max_batch: options.max_batch,
            seed: None,
            uses_tokens: options.token_source.is_some(),
            max_auth_attempts: options.max_auth_attempts,
            max_request_bytes: options.max_request_bytes,
            extensions: with_comment_filter(&options),
            retry_publishes: options.retry_publishes,
        };
        let span = info_span!("bayeux", server = %redacted_url(&options.url));
        let now = Instant::now().into_std();
        let session = Session::new(session_options, now);
        let stopped = Arc::new(OnceLock::new());
        let pulse = Pulse::new(now, options.default_timeout + options.max_network_delay);
        let in_use = transports.in_use();
        let driver = Driver::new(
            session,
            transports,
            options,
            cmd_rx,
            event_tx,
            Arc::clone(&stopped),
            pulse.clone(),
        );
        tokio::spawn(driver.run().instrument(span));
        (
            Client {
                commands: cmd_tx,
                subscription_buffer,
                stopped,
                pulse,
                in_use,
            },
            Events { rx: event_rx },
        )
    }

    /// Subscribes to a channel or pattern (`/a/b`, `/a/*`, `/a/**`). The subscription is
    /// kept across re-handshakes; confirmation arrives as [`Event::SubscriptionConfirmed`].
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, ClientError> {
        self.subscribe_all(&[pattern]).await
    }

    /// One local subscription for several patterns: each delivery that matches any of them
    /// is received once.
    pub async fn subscribe_all(&self, patterns: &[&str]) -> Result<Subscription, ClientError> {
        let mut parsed = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            let pattern = ChannelPattern::parse(pattern)?;
            if pattern.is_meta() {
                return Err(ClientError::InvalidChannel(
                    super::channel::InvalidChannel {
                        name: pattern.to_string(),
                        reason: "/meta/ channels are the protocol's own and cannot be subscribed to",
                    },
                ));
            }
            parsed.push(pattern);
        }
        let (tx, rx) = mpsc::channel(self.subscription_buffer);
        self.send(Command::Subscribe {
            patterns: parsed.clone(),
            tx,
        })
        .await?;
        Ok(Subscription {
            patterns: parsed,
            rx,
        })
    }

    /// Removes every local subscription to exactly `pattern` and unsubscribes on the server.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        let pattern = ChannelPattern::parse(pattern)?;
        self.send(Command::Unsubscribe { pattern }).await
    }

    /// Publishes `data` (a [`Value`], or JSON text as a [`Data`]) on `channel` and waits for
    /// the server's verdict. While the client is not connected the message waits in a bounded
    /// queue and is sent after the handshake.
    pub async fn publish(
        &self,
        channel: &str,
        data: impl Into<Data>,
    ) -> Result<Message, PublishError> {
        self.publish_with_ext(channel, data, None).await
    }

    /// [`Client::publish`] with `ext` fields on the message.
    pub async fn publish_with_ext(
        &self,
        channel: &str,
        data: impl Into<Data>,
        ext: Option<Map<String, Value>>,
    ) -> Result<Message, PublishError> {
        self.publish_queued(channel, data, ext).await?.await
    }

    /// Hands a publish to the client and returns, once it is queued, the future of its
    /// verdict. Awaiting this call in a loop keeps messages in order while their verdicts are
    /// awaited concurrently (awaiting several [`Client::publish`] futures at once does not
    /// guarantee the order they reach the client in).
    pub async fn publish_queued(
        &self,
        channel: &str,
        data: impl Into<Data>,
        ext: Option<Map<String, Value>>,
    ) -> Result<Verdict, PublishError> {
        let parsed = validate_publish_channel(channel)?;
        if parsed.is_meta() {
            return Err(PublishError::InvalidChannel(
                super::channel::InvalidChannel {
                    name: channel.to_owned(),
                    reason: "/meta/ channels are the protocol's own and cannot be published to",
                },
            ));
        }
        let (reply, verdict) = oneshot::channel();
        let command = Command::Publish {
            channel: channel.to_owned(),
            data: data.into(),
            ext,
            reply,
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| PublishError::Closed)?;
        Ok(Verdict { rx: verdict })
    }

    /// Sends `/meta/disconnect` after anything queued and waits until the client stopped.
    pub async fn disconnect(&self) {
        let (done, stopped) = oneshot::channel();
        if self
            .commands
            .send(Command::Disconnect { done })
            .await
            .is_ok()
        {
            let _ = stopped.await;
        }
    }

    /// How long since the client last heard from the server, and how long a healthy session
    /// goes without (see [`Liveness`]).
    pub fn liveness(&self) -> Liveness {
        self.pulse.at(Instant::now().into_std())
    }

    /// The name of the transport the session uses (`websocket`, `long-polling`,
    /// `callback-polling`): the one its last `/meta/connect` went over, or before the first
    /// one the transport configured. `None` until `auto` has a session.
    pub fn transport(&self) -> Option<&'static str> {
        self.in_use.get()
    }

    /// Whether the client task has ended.
    pub fn is_closed(&self) -> bool {
        self.commands.is_closed()
    }

    /// Why the client stopped for good, once it has: the same reason as its last event,
    /// [`Event::Stopped`], but readable from any handle and never lost
    /// to a full event buffer. Set before any call can fail with a closed client.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.stopped.get().cloned()
    }

    async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| ClientError::Closed)
    }
}

#[cfg(test)]
mod header_tests {
    use url::Url;

    use super::*;

    #[test]
    fn static_header_values_stay_out_of_the_transports_debug_output() {
        let options = ClientOptions {
            url: Url::parse("http://user:url-secret-3@127.0.0.1/cometd?k=url-secret-4")
                .unwrap_or_else(|e| panic!("{e}")),
            headers: vec![
                ("Authorization".into(), "Bearer tok-secret-1".into()),
                ("X-Api-Key".into(), "key-secret-2".into()),
            ],
            ..ClientOptions::default()
        };
        let headers = static_headers(&options).unwrap_or_else(|e| panic!("{e}"));
        let transport =
            LongPolling::new(options.url.clone(), headers, 1024).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{transport:?} {transport:#?}");
        assert!(shown.contains("x-api-key"), "{shown}");
        for secret in [
            "tok-secret-1",
            "key-secret-2",
            "url-secret-3",
            "url-secret-4",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }
}

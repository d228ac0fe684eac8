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
use super::verdict::{Reply, Verdict, VerdictSender};

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

/// Messages delivered on channels matching one pattern.
#[derive(Debug)]
pub struct Subscription {
    patterns: Vec<ChannelPattern>,
    /// Boxed: a channel allocates room for 32 entries at its creation, which for a whole
    /// `Message` would be over 10 KiB per subscription (100 MiB with 10,000 of them).
    rx: mpsc::Receiver<Box<Message>>,
}

impl Subscription {
    /// The patterns subscribed to.
    pub fn patterns(&self) -> &[ChannelPattern] {
        &self.patterns
    }

    /// The next delivery; `None` once the client has stopped or the pattern was unsubscribed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|m| *m)
    }

    /// A delivery that has already arrived, without waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok().map(|m| *m)
    }

    /// [`Subscription::recv`] for hand-written futures and streams: `Ready(None)` once the
    /// client has stopped or the pattern was unsubscribed.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Message>> {
        self.rx.poll_recv(cx).map(|m| m.map(|m| *m))
    }
}

/// Whether `channel` may be published to: a valid channel name without wildcards, not a
/// `/meta/` one.
fn publishable(channel: &str) -> Result<(), PublishError> {
    if validate_publish_channel(channel)?.is_meta() {
        return Err(PublishError::InvalidChannel(
            super::channel::InvalidChannel {
                name: channel.to_owned(),
                reason: "/meta/ channels are the protocol's own and cannot be published to",
            },
        ));
    }
    Ok(())
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
        let (reply, verdict) = Reply::once();
        self.enqueue(channel, data.into(), ext, reply).await?;
        Ok(verdict)
    }

    /// Hands a publish to the client like [`Client::publish_queued`], but its verdict comes
    /// as a [`TaggedVerdict`](super::TaggedVerdict) carrying `tag` on `verdicts`, the
    /// channel of a [`verdict_channel`](super::verdict_channel): a caller with many
    /// publishes in flight reads all their verdicts from one channel, with no future or
    /// oneshot channel per message. Tags are the caller's own (the client does not look at
    /// them).
    ///
    /// Every publish this accepts reports exactly once on `verdicts`: the server's reply, or
    /// [`PublishError::Closed`] if the client stops first. One it refuses at once (an invalid
    /// channel, a closed client) returns the error here and never reports.
    pub async fn publish_tagged(
        &self,
        channel: &str,
        data: impl Into<Data>,
        ext: Option<Map<String, Value>>,
        tag: u64,
        verdicts: &VerdictSender,
    ) -> Result<(), PublishError> {
        let reply = Reply::tagged(tag, verdicts);
        self.enqueue(channel, data.into(), ext, reply).await
    }

    /// Checks `channel` and queues the publish, whose verdict goes to `reply`.
    async fn enqueue(
        &self,
        channel: &str,
        data: Data,
        ext: Option<Map<String, Value>>,
        reply: Reply,
    ) -> Result<(), PublishError> {
        if let Err(e) = publishable(channel) {
            reply.discard();
            return Err(e);
        }
        let command = Command::Publish {
            channel: channel.to_owned(),
            data,
            ext,
            reply,
        };
        self.commands.send(command).await.map_err(|back| {
            if let Command::Publish { reply, .. } = back.0 {
                reply.discard();
            }
            PublishError::Closed
        })
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

/// Tagged publishes through a client whose transport answers in memory (no server: the
/// protocol side is the session's, tested on its own).
#[cfg(test)]
mod tagged_tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use serde_json::json;
    use url::Url;

    use super::*;
    use crate::bayeux::transport::SendFuture;
    use crate::bayeux::verdict::{TaggedVerdict, verdict_channel};

    /// Accepts the handshake and the first connect (later connects are held for ever), and
    /// every publish except those on `/refused`.
    #[derive(Default)]
    struct Loopback {
        connects: AtomicUsize,
    }

    fn reply(message: &Message) -> Message {
        let mut reply = json!({"channel": message.channel, "id": message.id, "successful": true});
        match message.channel.as_str() {
            "/meta/handshake" => {
                reply["clientId"] = json!("c1");
                reply["version"] = json!("1.0");
                reply["supportedConnectionTypes"] = json!(["long-polling"]);
                reply["advice"] = json!({"reconnect": "retry", "interval": 0, "timeout": 30000});
            }
            "/refused" => {
                reply["successful"] = json!(false);
                reply["error"] = json!("403::denied");
            }
            _ => {}
        }
        serde_json::from_value(reply).unwrap_or_else(|e| panic!("{e}"))
    }

    impl Transport for Loopback {
        fn name(&self) -> &'static str {
            "long-polling"
        }

        fn send(&self, messages: Vec<Message>, _deadline: Duration) -> SendFuture {
            let connect = messages.iter().any(|m| m.channel == "/meta/connect");
            if connect && self.connects.fetch_add(1, Ordering::Relaxed) > 0 {
                return Box::pin(std::future::pending());
            }
            let replies = messages.iter().map(reply).collect();
            Box::pin(async move { Ok(replies) })
        }
    }

    fn client() -> Client {
        let options = ClientOptions {
            url: Url::parse("http://127.0.0.1/cometd").unwrap_or_else(|e| panic!("{e}")),
            ..ClientOptions::default()
        };
        Client::with_transport(options, Arc::new(Loopback::default())).0
    }

    async fn next(verdicts: &mut crate::bayeux::Verdicts) -> TaggedVerdict {
        tokio::time::timeout(Duration::from_secs(10), verdicts.recv())
            .await
            .unwrap_or_else(|_| panic!("no verdict"))
            .unwrap_or_else(|| panic!("the verdict channel ended"))
    }

    #[tokio::test]
    async fn each_tagged_publish_reports_its_verdict_once_under_its_tag() {
        let client = client();
        let (sender, mut verdicts) = verdict_channel();
        for (tag, channel) in [(10, "/a"), (11, "/refused"), (12, "/b")] {
            let sent = client
                .publish_tagged(channel, json!({"n": tag}), None, tag, &sender)
                .await;
            assert_eq!(sent, Ok(()));
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            let verdict = next(&mut verdicts).await;
            got.push((verdict.tag, verdict.result.map(|m| m.channel)));
        }
        got.sort_by_key(|(tag, _)| *tag);
        assert_eq!(got[0], (10, Ok("/a".to_owned())));
        assert!(
            matches!(&got[1], (11, Err(PublishError::Refused(e))) if e.code == Some(403)),
            "{got:?}"
        );
        assert_eq!(got[2], (12, Ok("/b".to_owned())));
        // The plain publish still works beside them.
        let reply = client.publish("/c", json!(1)).await.map(|m| m.channel);
        assert_eq!(reply, Ok("/c".to_owned()));
        assert!(verdicts.try_recv().is_none(), "each reported once");
    }

    #[tokio::test]
    async fn a_publish_refused_at_once_returns_its_error_and_never_reports() {
        let client = client();
        let (sender, mut verdicts) = verdict_channel();
        for channel in ["/a/*", "/meta/x", "no-slash"] {
            let sent = client
                .publish_tagged(channel, json!(1), None, 1, &sender)
                .await;
            assert!(
                matches!(sent, Err(PublishError::InvalidChannel(_))),
                "{sent:?}"
            );
        }
        client.disconnect().await;
        let sent = client
            .publish_tagged("/a", json!(1), None, 2, &sender)
            .await;
        assert_eq!(sent, Err(PublishError::Closed));
        drop(sender);
        assert!(verdicts.recv().await.is_none(), "nothing reported");
    }

    #[tokio::test]
    async fn publishes_the_client_never_answers_report_closed_when_it_stops() {
        let (client, _events) = Client::with_transport(
            ClientOptions {
                url: Url::parse("http://127.0.0.1/cometd").unwrap_or_else(|e| panic!("{e}")),
                ..ClientOptions::default()
            },
            Arc::new(Silent),
        );
        let (sender, mut verdicts) = verdict_channel();
        let sent = client
            .publish_tagged("/a", json!(1), None, 4, &sender)
            .await;
        assert_eq!(sent, Ok(()));
        drop(client);
        let verdict = next(&mut verdicts).await;
        assert_eq!(
            (verdict.tag, verdict.result),
            (4, Err(PublishError::Closed))
        );
    }

    /// Never answers: the handshake waits for ever.
    struct Silent;

    impl Transport for Silent {
        fn name(&self) -> &'static str {
            "long-polling"
        }

        fn send(&self, _messages: Vec<Message>, _deadline: Duration) -> SendFuture {
            Box::pin(std::future::pending())
        }
    }
}

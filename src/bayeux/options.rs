//! [`ClientOptions`]: everything a [`Client`](super::Client) needs to know.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::auth::TokenSource;
use super::ext::Extension;
use super::http::redacted_url;
use crate::backoff::BackoffOptions;
use crate::tls::TlsFiles;

pub use super::transport::TransportChoice;

/// Everything a client needs to know. `Default` gives the documented defaults and an
/// unusable URL; set [`ClientOptions::url`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The Bayeux endpoint, e.g. `http://127.0.0.1:8080/cometd`.
    pub url: Url,
    /// Extra HTTP headers sent on every request (e.g. `Authorization`). Never logged.
    pub headers: Vec<(String, String)>,
    /// Allowance for the network on top of the server's hold time: the deadline of a
    /// `/meta/connect` is `advice.timeout` + this; of any other request, this alone.
    /// Default 10 s.
    pub max_network_delay: Duration,
    /// `advice.timeout` assumed until the server sends one. Default 60 s.
    pub default_timeout: Duration,
    /// Largest accepted response body. Default 10 MiB.
    pub max_response_bytes: usize,
    /// Most messages accepted in one response: a reply with more is refused like a bad
    /// reply ([`TransportError::TooManyMessages`](super::TransportError)), before the
    /// message past the cap is decoded, which bounds the memory one reply takes (a message
    /// costs some 350 bytes decoded, however short its JSON). Default 100,000
    /// ([`DEFAULT_MAX_MESSAGES`](super::message::DEFAULT_MAX_MESSAGES)).
    pub max_messages_per_reply: usize,
    /// Backoff for failing handshakes, connects and subscriptions. Default 1 s steps to 30 s,
    /// 20 % jitter.
    pub backoff: BackoffOptions,
    /// Publishes that may wait for a connection. Default 1000.
    pub max_queued: usize,
    /// Most messages in one request. Default 100.
    pub max_batch: usize,
    /// Deliveries buffered per subscription before the client waits for the reader.
    /// Default 1024.
    pub subscription_buffer: usize,
    /// Events buffered before further events are dropped (and logged). Default 1024.
    pub event_buffer: usize,
    /// Message hooks, applied in order.
    pub extensions: Vec<Arc<dyn Extension>>,
    /// Where the bearer token comes from (e.g. [`OAuthTokenSource`](super::auth::OAuthTokenSource)).
    /// With one, a token is fetched before the first handshake and again whenever the server
    /// refuses it, and sent as `Authorization: Bearer` on every request; `headers` must then
    /// hold no `Authorization`. Default none.
    pub token_source: Option<Arc<dyn TokenSource>>,
    /// With a token source: how many fresh tokens in a row the server may refuse before the
    /// client stops with [`StopReason::AuthenticationFailed`](super::StopReason). Default 5.
    pub max_auth_attempts: u32,
    /// Largest request body in bytes; batches are split to stay under it, and a message
    /// larger on its own fails with [`PublishError::TooLarge`](super::PublishError::TooLarge). 0 (the default): no limit.
    /// Salesforce: 32768.
    pub max_request_bytes: usize,
    /// Publishes of a request that failed without an answer (the outcome is unknown) go
    /// again, ahead of everything queued after them and after a backoff, instead of
    /// failing with [`PublishError::Transport`](super::PublishError): they keep their
    /// order, and one may reach the server twice. Default `false`.
    pub retry_publishes: bool,
    /// HTTPS trust and client certificate, for the Bayeux endpoint and (when the bridge
    /// builds one) the token endpoint. Default: the system's CA bundle, no client
    /// certificate. See [`crate::tls`].
    pub tls: TlsFiles,
    /// Which transport(s) to use. Default [`TransportChoice::Auto`]: WebSocket where the
    /// server offers it and the upgrade works, else long-polling.
    pub transport: TransportChoice,
    /// Offer the `json-comment-filtered` extension in the handshake (CometD 1.x-era servers
    /// then wrap replies as `/*[...]*/`). Wrapped replies are accepted either way. Default
    /// `false`.
    pub json_comment_filtered: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            url: Url::parse("http://127.0.0.1/cometd")
                .unwrap_or_else(|_| unreachable!("a valid literal")),
            headers: Vec::new(),
            max_network_delay: Duration::from_secs(10),
            default_timeout: Duration::from_secs(60),
            max_response_bytes: 10 * 1024 * 1024,
            max_messages_per_reply: super::message::DEFAULT_MAX_MESSAGES,
            backoff: BackoffOptions::default(),
            max_queued: 1000,
            max_batch: 100,
            subscription_buffer: 1024,
            event_buffer: 1024,
            extensions: Vec::new(),
            token_source: None,
            max_auth_attempts: 5,
            max_request_bytes: 0,
            retry_publishes: false,
            tls: TlsFiles::default(),
            transport: TransportChoice::Auto,
            json_comment_filtered: false,
        }
    }
}

impl ClientOptions {
    /// Defaults for `url`.
    pub fn new(url: Url) -> Self {
        ClientOptions {
            url,
            ..ClientOptions::default()
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may be credentials: show names only.
        let header_names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("ClientOptions")
            .field("url", &redacted_url(&self.url))
            .field("headers", &header_names)
            .field("max_network_delay", &self.max_network_delay)
            .field("default_timeout", &self.default_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_messages_per_reply", &self.max_messages_per_reply)
            .field("backoff", &self.backoff)
            .field("max_queued", &self.max_queued)
            .field("max_batch", &self.max_batch)
            .field("extensions", &self.extensions.len())
            .field("token_source", &self.token_source)
            .field("max_auth_attempts", &self.max_auth_attempts)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("retry_publishes", &self.retry_publishes)
            .field("tls", &self.tls)
            .field("transport", &self.transport)
            .field("json_comment_filtered", &self.json_comment_filtered)
            .finish()
    }
}

//! The long-polling transport: each batch is an HTTP POST of a JSON array; the reply is the
//! response body.
//!
//! One `reqwest::Client`, and so one cookie jar and one connection pool, per transport and so
//! per Bayeux client: CometD servers bind a session to its `BAYEUX_BROWSER` cookie and
//! Salesforce needs its load-balancer cookies, and sharing a jar between two sessions makes a
//! CometD server answer with `multiple-clients` advice. There is no client-wide timeout:
//! every request gets its own deadline from the driver (`advice.timeout` + network delay for
//! `/meta/connect`). Bodies are read in chunks up to a cap, so an oversized reply is a
//! reported failure, not an allocation of unbounded size.
//!
//! HTTPS trusts what [`TlsFiles`] says (the system's CA bundle by default; see [`crate::tls`])
//! and may show a client certificate. Proxies come from the environment (`HTTPS_PROXY`,
//! `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, as reqwest reads them): the client never turns them
//! off.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use url::Url;

use super::{SendFuture, Transport};
use crate::bayeux::error::TransportError;
use crate::bayeux::http::{
    bearer_value, describe_http_error, http_client, redacted_url, redirect_target,
};
use crate::bayeux::message::{DecodeError, Message, decode_batch_limited, encode_batch};
use crate::tls::TlsFiles;

/// Long-polling over HTTP(S). `Debug` shows the URL without user info or query; header
/// values are sensitive (see `Client::new`), so reqwest's `Debug` leaves them out.
#[derive(Clone)]
pub struct LongPolling {
    pub(super) http: reqwest::Client,
    pub(super) url: Url,
    pub(super) max_body: usize,
    /// The most messages taken from one reply.
    pub(super) max_messages: usize,
    /// The current `Authorization` value from a token source, marked sensitive.
    bearer: Arc<RwLock<Option<HeaderValue>>>,
}

impl LongPolling {
    /// A transport for `url` sending `headers` on every request, accepting reply bodies of
    /// at most `max_body` bytes, trusting the system's CA bundle for HTTPS.
    pub fn new(url: Url, headers: HeaderMap, max_body: usize) -> Result<Self, String> {
        Self::with_tls(url, headers, max_body, &TlsFiles::default())
    }

    /// [`LongPolling::new`] with the HTTPS trust and client certificate of `tls`.
    pub fn with_tls(
        url: Url,
        headers: HeaderMap,
        max_body: usize,
        tls: &TlsFiles,
    ) -> Result<Self, String> {
        Self::with_jar(url, headers, max_body, tls, Arc::default())
    }

    /// [`LongPolling::with_tls`] keeping cookies in `jar` (shared with the client's other
    /// transports, so that a WebSocket upgrade carries the session's cookies).
    pub fn with_jar(
        url: Url,
        headers: HeaderMap,
        max_body: usize,
        tls: &TlsFiles,
        jar: Arc<reqwest::cookie::Jar>,
    ) -> Result<Self, String> {
        let http = http_client(&url, tls)?
            .cookie_provider(jar)
            .default_headers(headers)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(LongPolling {
            http,
            url,
            max_body,
            max_messages: crate::bayeux::message::DEFAULT_MAX_MESSAGES,
            bearer: Arc::default(),
        })
    }

    /// Refuses replies of more than `max_messages` messages
    /// ([`TransportError::TooManyMessages`]); default
    /// [`DEFAULT_MAX_MESSAGES`](crate::bayeux::message::DEFAULT_MAX_MESSAGES).
    pub fn with_max_messages(mut self, max_messages: usize) -> Self {
        self.max_messages = max_messages.max(1);
        self
    }
}

impl LongPolling {
    /// The current `Authorization` value from a token source, if any.
    pub(super) fn bearer(&self) -> Option<HeaderValue> {
        self.bearer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for LongPolling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPolling")
            .field("http", &self.http)
            .field("url", &redacted_url(&self.url))
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Transport for LongPolling {
    fn name(&self) -> &'static str {
        "long-polling"
    }

    fn set_bearer_token(&self, token: Option<&str>) -> Result<(), String> {
        let value = bearer_value(token)?;
        *self.bearer.write().unwrap_or_else(PoisonError::into_inner) = value;
        Ok(())
    }

    fn send(&self, messages: Vec<Message>, deadline: Duration) -> SendFuture {
        let mut request = self
            .http
            .post(self.url.clone())
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=UTF-8"),
            )
            .body(encode_batch(&messages));
        if let Some(value) = self.bearer() {
            request = request.header(AUTHORIZATION, value);
        }
        let (max_body, max_messages) = (self.max_body, self.max_messages);
        Box::pin(async move {
            match tokio::time::timeout(deadline, exchange(request, max_body, max_messages)).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(deadline)),
            }
        })
    }
}

async fn exchange(
    request: reqwest::RequestBuilder,
    max_body: usize,
    max_messages: usize,
) -> Result<Vec<Message>, TransportError> {
    let body = fetch(request, max_body).await?;
    decode(&body, max_messages)
}

/// Sends `request` and reads a `200 OK` body of at most `max_body` bytes.
pub(super) async fn fetch(
    request: reqwest::RequestBuilder,
    max_body: usize,
) -> Result<bytes::Bytes, TransportError> {
    let mut response = request.send().await.map_err(io_error)?;
    let status = response.status();
    if status.is_redirection() {
        return Err(TransportError::Redirect {
            status: status.as_u16(),
            location: redirect_target(response.url(), response.headers()),
        });
    }
    if status != reqwest::StatusCode::OK {
        return Err(TransportError::Status {
            status: status.as_u16(),
        });
    }
    let declared = response
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > max_body) {
        return Err(TransportError::TooLarge { cap: max_body });
    }
    // A body that arrives in one chunk is decoded where it is; otherwise the chunks are
    // joined (once: the first two tell the size to reserve when there is no length).
    let too_large = || TransportError::TooLarge { cap: max_body };
    let first = response
        .chunk()
        .await
        .map_err(io_error)?
        .unwrap_or_default();
    if first.len() > max_body {
        return Err(too_large());
    }
    let body = match response.chunk().await.map_err(io_error)? {
        None => first,
        Some(second) => {
            let mut body = Vec::with_capacity(
                declared
                    .unwrap_or(4 * (first.len() + second.len()))
                    .min(max_body),
            );
            body.extend_from_slice(&first);
            let mut next = Some(second);
            while let Some(chunk) = next {
                if body.len() + chunk.len() > max_body {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
                next = response.chunk().await.map_err(io_error)?;
            }
            body.into()
        }
    };
    Ok(body)
}

/// Decodes a reply body, quoting its start in the error when it is not JSON at all.
pub(super) fn decode(body: &[u8], max_messages: usize) -> Result<Vec<Message>, TransportError> {
    decode_batch_limited(body, max_messages).map_err(|e| match e {
        DecodeError::Empty => TransportError::Decode("empty body".to_owned()),
        DecodeError::TooMany { cap } => TransportError::TooManyMessages { cap },
        // A JSON body may carry payloads, which are not for logs; a proxy's error page is
        // recognisable from its start.
        DecodeError::Invalid(why) if looks_like_json(body) => TransportError::Decode(why),
        DecodeError::Invalid(why) => {
            TransportError::Decode(format!("{why}; body starts with {:?}", excerpt(body)))
        }
    })
}

/// Whether `body` starts like a JSON array or object (after whitespace), comment-filtered
/// or not.
pub(super) fn looks_like_json(body: &[u8]) -> bool {
    let body = body.trim_ascii_start();
    let body = body.strip_prefix(b"/*").unwrap_or(body);
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'[' | b'{')
    )
}

/// The first bytes of a body, as text, for error messages (a proxy's HTML error page is
/// recognisable from its start).
pub(super) fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 120;
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX)]);
    let mut shown: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if body.len() > MAX {
        shown.push('…');
    }
    shown
}

/// A failed request as a transport error.
fn io_error(e: reqwest::Error) -> TransportError {
    TransportError::Io(describe_http_error(e))
}

#[cfg(test)]
mod redirect_tests {
    use super::*;

    #[test]
    fn only_a_body_that_is_not_json_is_quoted_in_a_decode_error() {
        assert!(looks_like_json(
            b" \n[{\"channel\":\"/a\",\"data\":\"secret\"} x"
        ));
        assert!(looks_like_json(b"{\"data\":1}"));
        assert!(looks_like_json(b"/*[{\"data\":1}"));
        assert!(!looks_like_json(b"<html>Down</html>"));
        assert!(!looks_like_json(b""));
    }

    #[test]
    fn a_redirect_target_is_resolved_and_loses_its_credentials() {
        let base = Url::parse("https://bayeux.example/cometd").unwrap_or_else(|e| panic!("{e}"));
        let mut headers = HeaderMap::new();
        assert_eq!(redirect_target(&base, &headers), "(no Location)");
        headers.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("http://user:secret@evil.example/x?token=abc#f"),
        );
        assert_eq!(redirect_target(&base, &headers), "http://evil.example/x");
        headers.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("/other"),
        );
        assert_eq!(
            redirect_target(&base, &headers),
            "https://bayeux.example/other"
        );
    }
}

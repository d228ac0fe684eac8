//! The callback-polling transport (JSONP): each batch is an HTTP GET with the batch as the
//! `message=` parameter and the callback's name as `jsonp=`; the reply is a script body
//! `callback([...]);` (Faye prefixes `/**/`).
//!
//! It exists for servers and proxies that allow only GET; it costs more than long-polling
//! (every batch URL-encoded into the request line). URLs are kept under [`MAX_URL`]
//! characters (what the CometD JavaScript client allows, `maxURILength`): a longer batch is
//! sent as several requests, one after the other, whose replies are joined; a single
//! message too long for a URL fails the request. The reply is parsed strictly: only the
//! expected callback wrapper around a JSON batch is accepted.
//!
//! The HTTP side (cookie jar, headers, bearer token, TLS, body cap) is the long-polling
//! transport's.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap};
use url::Url;

use super::long_polling::{LongPolling, decode, excerpt, fetch};
use super::{SendFuture, Transport};
use crate::bayeux::error::TransportError;
use crate::bayeux::message::{Message, encode_batch};
use crate::tls::TlsFiles;

/// The longest request URL sent, in characters.
pub const MAX_URL: usize = 2000;
/// The callback name sent as `jsonp=` (Faye's and CometD's default).
pub const CALLBACK: &str = "jsonpcallback";

/// Callback-polling over HTTP(S) GET. `Debug` shows the URL without user info or query.
#[derive(Clone, Debug)]
pub struct CallbackPolling {
    http: LongPolling,
}

impl CallbackPolling {
    /// A transport for `url` with the HTTP settings of [`LongPolling::with_jar`].
    pub fn new(
        url: Url,
        headers: HeaderMap,
        max_body: usize,
        tls: &TlsFiles,
        jar: Arc<reqwest::cookie::Jar>,
    ) -> Result<Self, String> {
        Ok(CallbackPolling {
            http: LongPolling::with_jar(url, headers, max_body, tls, jar)?,
        })
    }

    /// See [`LongPolling::with_max_messages`].
    pub fn with_max_messages(mut self, max_messages: usize) -> Self {
        self.http = self.http.with_max_messages(max_messages);
        self
    }
}

impl Transport for CallbackPolling {
    fn name(&self) -> &'static str {
        "callback-polling"
    }

    fn set_bearer_token(&self, token: Option<&str>) -> Result<(), String> {
        self.http.set_bearer_token(token)
    }

    fn send(&self, messages: Vec<Message>, deadline: Duration) -> SendFuture {
        let http = self.http.clone();
        Box::pin(async move {
            let requests = split(&http.url, &messages)?;
            let exchange = async {
                let mut replies = Vec::new();
                for url in requests {
                    replies.extend(get(&http, url).await?);
                }
                Ok(replies)
            };
            match tokio::time::timeout(deadline, exchange).await {
                Ok(result) => result,
                Err(_) => Err(TransportError::Timeout(deadline)),
            }
        })
    }
}

/// One GET and its strictly parsed reply.
async fn get(http: &LongPolling, url: Url) -> Result<Vec<Message>, TransportError> {
    let mut request = http.http.get(url);
    if let Some(value) = http.bearer() {
        request = request.header(AUTHORIZATION, value);
    }
    let body = fetch(request, http.max_body).await?;
    let json = unwrap_callback(&body, CALLBACK)?;
    decode(json, http.max_messages)
}

/// The request URLs for `messages`: as few as keep each under [`MAX_URL`], in order.
fn split(base: &Url, messages: &[Message]) -> Result<Vec<Url>, TransportError> {
    let url = request_url(base, messages);
    if url.as_str().len() <= MAX_URL || messages.is_empty() {
        return Ok(vec![url]);
    }
    if messages.len() == 1 {
        return Err(TransportError::Io(format!(
            "a message to {} is too long for a callback-polling URL ({} > {MAX_URL} characters)",
            messages[0].channel,
            url.as_str().len()
        )));
    }
    let (first, second) = messages.split_at(messages.len() / 2);
    let mut urls = split(base, first)?;
    urls.extend(split(base, second)?);
    Ok(urls)
}

/// `base` with `message=<batch>&jsonp=<callback>` added to its query.
fn request_url(base: &Url, messages: &[Message]) -> Url {
    let batch = String::from_utf8_lossy(&encode_batch(messages)).into_owned();
    let mut url = base.clone();
    url.query_pairs_mut()
        .append_pair("message", &batch)
        .append_pair("jsonp", CALLBACK);
    url
}

/// The JSON inside `/**/callback(...);`: an optional `/**/`, exactly `callback`, `(`, the
/// JSON, `)` and an optional `;`, with whitespace only around the whole.
fn unwrap_callback<'a>(body: &'a [u8], callback: &str) -> Result<&'a [u8], TransportError> {
    let trimmed = body.trim_ascii();
    let unwrapped = trimmed
        .strip_prefix(b"/**/")
        .unwrap_or(trimmed)
        .strip_prefix(callback.as_bytes())
        .and_then(|rest| rest.strip_prefix(b"("))
        .and_then(|rest| rest.strip_suffix(b";").unwrap_or(rest).strip_suffix(b")"));
    unwrapped.ok_or_else(|| {
        TransportError::Decode(format!(
            "not a {callback}(...) callback; body starts with {:?}",
            excerpt(body)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_expected_callback_wrapper_is_accepted() {
        let ok =
            |body: &[u8]| unwrap_callback(body, "jsonpcallback").and_then(|json| decode(json, 10));
        let batch = br#"[{"channel":"/a","data":1}]"#;
        for good in [
            [&b"/**/jsonpcallback("[..], batch, b");"].concat(),
            [&b"jsonpcallback("[..], batch, b")\n"].concat(),
        ] {
            let messages = ok(&good).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(messages[0].channel, "/a");
        }
        for bad in [
            &br#"other([{"channel":"/a"}]);"#[..],
            br#"jsonpcallback[{"channel":"/a"}]"#,
            br#"jsonpcallback([{"channel":"/a"}]);alert(1)"#,
            br#"x/**/jsonpcallback([{"channel":"/a"}]);"#,
            br#"[{"channel":"/a"}]"#,
        ] {
            assert!(ok(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_long_batch_is_split_to_keep_each_url_short() {
        let base = Url::parse("http://h/cometd").unwrap_or_else(|e| panic!("{e}"));
        let messages: Vec<Message> = (0..40)
            .map(|i| {
                let mut m = Message::new(format!("/chat/room-{i}"));
                m.data = Some(serde_json::json!({"text": "x".repeat(30)}).into());
                m
            })
            .collect();
        let urls = split(&base, &messages).unwrap_or_else(|e| panic!("{e}"));
        assert!(urls.len() > 1);
        assert!(urls.iter().all(|u| u.as_str().len() <= MAX_URL));
        let mut big = Message::new("/big");
        big.data = Some(serde_json::json!("y".repeat(MAX_URL)).into());
        assert!(split(&base, &[big]).is_err());
    }
}

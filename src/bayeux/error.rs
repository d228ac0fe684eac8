//! Errors of the Bayeux client, one enum per layer.
//!
//! - [`ServerError`]: an `error` string from the server, parsed leniently in the CometD
//!   (`402::session_unknown`), Faye (`401:<id>:Unknown client`) and Salesforce
//!   (`403::Unknown client`) dialects.
//! - [`TransportError`]: the request did not produce a Bayeux batch (HTTP, IO, deadline,
//!   body cap, garbage).
//! - [`ClientError`] / [`PublishError`]: what a caller of [`super::Client`] sees.

use std::fmt;
use std::time::Duration;

use super::channel::InvalidChannel;

/// A server `error` string: `code:args:message`, all parts optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The three-digit code, if the string starts with one.
    pub code: Option<u16>,
    /// Comma-separated arguments between the first and second colon.
    pub args: Vec<String>,
    /// The human-readable part.
    pub message: String,
    /// The string as the server sent it.
    pub raw: String,
}

impl ServerError {
    /// Parses an error string; never fails. A string that does not follow the
    /// `code:args:message` grammar becomes a code-less message (as Faye does).
    pub fn parse(raw: &str) -> ServerError {
        let plain = || ServerError {
            code: None,
            args: Vec::new(),
            message: raw.trim().to_owned(),
            raw: raw.to_owned(),
        };
        let mut parts = raw.splitn(3, ':');
        let (Some(code), Some(args), Some(message)) = (parts.next(), parts.next(), parts.next())
        else {
            // Salesforce sometimes sends "400 Channel name not specified" (no colons).
            let code = raw
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()));
            return match code.and_then(|c| c.parse().ok()) {
                Some(code) => ServerError {
                    code: Some(code),
                    args: Vec::new(),
                    message: raw[3..].trim().to_owned(),
                    raw: raw.to_owned(),
                },
                None => plain(),
            };
        };
        let code = code.trim();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return plain();
        }
        ServerError {
            code: code.parse().ok(),
            args: args
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
            message: message.trim().to_owned(),
            raw: raw.to_owned(),
        }
    }

    /// Whether the server no longer knows the session: CometD `402::session_unknown`, Faye
    /// `401:<id>:Unknown client`, Salesforce `403::Unknown client`, spec `402:<id>:Unknown
    /// Client ID`. Used only when the reply carries no advice: advice decides first.
    pub fn is_unknown_session(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        matches!(self.code, Some(401..=403))
            && (m.contains("unknown client")
                || m.contains("session_unknown")
                || m.contains("unknown session"))
    }
}

impl ServerError {
    /// Whether the server refused the credentials rather than the session: Salesforce's
    /// `401::Authentication invalid` (a revoked or expired token) and `401::Request requires
    /// authentication`, and `403::Handshake denied` (which it sends for a bad token at the
    /// handshake). Faye's `401:<id>:Unknown client` is an unknown session, not this.
    pub fn is_authentication_failure(&self) -> bool {
        if self.is_unknown_session() {
            return false;
        }
        match self.code {
            Some(401) => true,
            Some(403) => self.message.eq_ignore_ascii_case("handshake denied"),
            _ => false,
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Why a request did not produce a Bayeux batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Connection refused, reset, DNS, TLS and other IO-level failures.
    #[error("request failed: {0}")]
    Io(String),
    /// No complete response within the request's deadline.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// The server answered with a non-200 status.
    #[error("HTTP status {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The server answered with a redirect, which the client does not follow: it would
    /// carry the session's cookies and headers (credentials) to another address, maybe
    /// over plain HTTP.
    #[error(
        "HTTP status {status}: the server redirects to {location}; redirects are not \
         followed (set the URL to the final address)"
    )]
    Redirect {
        /// The HTTP status code (3xx).
        status: u16,
        /// Where to, without user info or query (which may carry credentials).
        location: String,
    },
    /// The response body was larger than the configured cap.
    #[error("response body exceeds the {cap}-byte cap")]
    TooLarge {
        /// The cap in bytes.
        cap: usize,
    },
    /// The body was empty or not a Bayeux batch.
    #[error("bad response body: {0}")]
    Decode(String),
    /// The body held more messages than the cap (`ClientOptions::max_messages_per_reply`):
    /// decoded, it would take far more memory than its bytes.
    #[error("response holds more than {cap} messages")]
    TooManyMessages {
        /// The cap.
        cap: usize,
    },
}

/// Why a token could not be fetched from a [`super::auth::TokenSource`]. Never holds a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the credentials for good (`invalid_grant`,
    /// `invalid_client`, an unusable private key, ...): retrying cannot help.
    #[error("the token endpoint refused the credentials: {0}")]
    Refused(String),
    /// The token endpoint could not be reached or failed (network, timeout, HTTP 5xx or
    /// 429): worth retrying later.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

impl TokenError {
    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, TokenError::Refused(_))
    }
}

/// Errors returned by the [`super::Client`] handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The client has stopped (disconnected, or the server said `reconnect: none`).
    #[error("the Bayeux client has stopped")]
    Closed,
    /// A channel or pattern is not valid.
    #[error(transparent)]
    InvalidChannel(#[from] InvalidChannel),
    /// The client options are unusable.
    #[error("invalid client options: {0}")]
    Options(String),
}

/// Why a publish did not get `successful: true`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The server refused the message.
    #[error("server refused the publish: {0}")]
    Refused(ServerError),
    /// The request carrying the message failed; the server may or may not have it.
    #[error("publish outcome unknown: {0}")]
    Transport(TransportError),
    /// Too many messages are already waiting for a connection.
    #[error("publish queue is full ({0} messages waiting)")]
    QueueFull(usize),
    /// The client stopped before the server answered.
    #[error("the Bayeux client stopped before the server answered")]
    Closed,
    /// The channel is not valid for publishing.
    #[error(transparent)]
    InvalidChannel(#[from] InvalidChannel),
    /// The message alone is larger than the request size cap
    /// ([`super::ClientOptions::max_request_bytes`]); it was not sent.
    #[error("the message is {size} bytes as JSON, over the {cap}-byte request cap; not sent")]
    TooLarge {
        /// The message's size in the request, in bytes.
        size: usize,
        /// The cap.
        cap: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_dialects_of_unknown_client() {
        let cometd = ServerError::parse("402::session_unknown");
        assert_eq!(cometd.code, Some(402));
        assert!(cometd.args.is_empty());
        assert_eq!(cometd.message, "session_unknown");
        let faye = ServerError::parse("401:abc123:Unknown client");
        assert_eq!(faye.code, Some(401));
        assert_eq!(faye.args, vec!["abc123"]);
        let sf = ServerError::parse("403::Unknown client");
        for e in [&cometd, &faye, &sf] {
            assert!(e.is_unknown_session(), "{e}");
        }
        assert!(ServerError::parse("402:xj3sjdsjdsjad:Unknown Client ID").is_unknown_session());
    }

    #[test]
    fn other_errors_are_not_unknown_session() {
        for raw in [
            "403::handshake_denied",
            "405:/foo bar:Invalid channel",
            "weird",
            "",
            "Unknown client",
        ] {
            assert!(!ServerError::parse(raw).is_unknown_session(), "{raw}");
        }
    }

    #[test]
    fn authentication_failures_are_told_from_unknown_sessions() {
        for raw in [
            "401::Authentication invalid",
            "401::Request requires authentication",
            "403::Handshake denied",
        ] {
            assert!(ServerError::parse(raw).is_authentication_failure(), "{raw}");
        }
        for raw in [
            "401:abc123:Unknown client",
            "403::Unknown client",
            "402::session_unknown",
            "403::Organization concurrent user limit exceeded",
            "403::Publish not allowed",
            "400::Invalid connection type",
        ] {
            assert!(
                !ServerError::parse(raw).is_authentication_failure(),
                "{raw}"
            );
        }
    }

    #[test]
    fn lenient_parsing_keeps_unstructured_strings() {
        let e = ServerError::parse("something broke");
        assert_eq!(e.code, None);
        assert_eq!(e.message, "something broke");
        let e = ServerError::parse("400 Channel name not specified");
        assert_eq!(e.code, Some(400));
        assert_eq!(e.message, "Channel name not specified");
        let e = ServerError::parse("403:a,/foo/bar:Subscription denied");
        assert_eq!(e.args, vec!["a", "/foo/bar"]);
        let e = ServerError::parse("400::The replayId {N} you provided was invalid: really");
        assert_eq!(
            e.message,
            "The replayId {N} you provided was invalid: really"
        );
    }
}

//! What the client tells its caller: lifecycle facts and messages it could not route.

use std::time::{Duration, Instant};

use super::error::{PublishError, TransportError};
use super::message::Message;

/// What the session does next after losing its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Send `/meta/connect` again after the wait.
    Retry(Duration),
    /// Handshake again (new session, resubscribe everything) after the wait.
    Handshake(Duration),
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The caller asked to disconnect (or dropped every handle).
    Disconnected,
    /// The server said not to reconnect (`reconnect: none` or a negative `interval`).
    ServerRefused {
        /// The server's error string, if it sent one.
        error: Option<String>,
    },
    /// The token source refused the credentials, or the server refused
    /// `max_auth_attempts` fresh tokens in a row.
    AuthenticationFailed {
        /// What was refused, and by whom (never a secret).
        reason: String,
    },
    /// Client and server have no transport in common.
    NoCommonTransport {
        /// What the client offered.
        client: Vec<String>,
        /// What the server accepts.
        server: Vec<String>,
    },
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Disconnected => f.write_str("disconnected by the client"),
            StopReason::ServerRefused { error: Some(e) } => {
                write!(
                    f,
                    "the server refused to continue the session ({e}) and advised not to reconnect"
                )
            }
            StopReason::ServerRefused { error: None } => {
                f.write_str("the server advised not to reconnect")
            }
            StopReason::AuthenticationFailed { reason } => {
                write!(f, "authentication failed for good: {reason}")
            }
            StopReason::NoCommonTransport { client, server } => write!(
                f,
                "no transport in common: client offers {client:?}, server accepts {server:?}"
            ),
        }
    }
}

/// Why a received message could not be routed to anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// A delivery on a channel no local subscription matches.
    NoSubscription,
    /// A reply whose `id` matches no request in flight (late, duplicate or unknown).
    UnexpectedReply,
    /// A `/meta/connect` reply whose `id` is not the outstanding connect.
    MismatchedConnect,
    /// A publish verdict whose caller has gone away.
    CallerGone,
}

/// A lifecycle fact or an unroutable message, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A handshake succeeded; `rehandshake` is true for every one after the first.
    Handshaken {
        /// The session id.
        client_id: String,
        /// The transport chosen.
        connection_type: String,
        /// Whether an earlier session existed.
        rehandshake: bool,
    },
    /// A handshake attempt failed; another follows after `retry_in`.
    HandshakeFailed {
        /// What went wrong.
        reason: String,
        /// Consecutive failed attempts.
        attempt: u32,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// A token was fetched from the token source; a handshake with it follows.
    TokenRefreshed {
        /// Whether it is the first token of this client.
        initial: bool,
    },
    /// The server refused the token, or the token endpoint was unavailable; a new token is
    /// fetched after `retry_in`. (When this cannot help, [`Event::Stopped`] with
    /// [`StopReason::AuthenticationFailed`] follows instead.)
    AuthenticationFailed {
        /// What went wrong (never a secret).
        reason: String,
        /// Consecutive failures of this kind.
        attempt: u32,
        /// Wait before the next token fetch.
        retry_in: Duration,
    },
    /// The first successful `/meta/connect` of a session or after a failure.
    Connected,
    /// A `/meta/connect` failed; `next` says what follows.
    ConnectFailed {
        /// What went wrong.
        reason: String,
        /// Consecutive failed attempts.
        attempt: u32,
        /// What the session does next.
        next: Next,
    },
    /// A session the server had accepted is gone: the server no longer knows it (e.g.
    /// `402::session_unknown`, `403::Unknown client`), it expired while nobody polled, or the
    /// server asked for a new handshake. A new handshake and resubscription follow. Messages
    /// the server published on `subscriptions` after `last_connected` and before the new
    /// session's subscriptions are confirmed may never be delivered (unless an extension such
    /// as replay recovers them). Emitted once per lost session, before the
    /// [`Event::ConnectFailed`] or [`Event::Disconnected`] that may accompany it.
    SessionLost {
        /// Why the session was given up.
        reason: String,
        /// When the last `/meta/connect` of the lost session succeeded (`None`: none did).
        last_connected: Option<Instant>,
        /// The remote subscriptions the lost session had confirmed, in order.
        subscriptions: Vec<String>,
    },
    /// The connection was lost (emitted once per outage, before the retries).
    Disconnected {
        /// What went wrong.
        reason: String,
    },
    /// The server confirmed a subscription (after every handshake, for every subscription).
    SubscriptionConfirmed {
        /// The pattern.
        subscription: String,
    },
    /// The server refused a subscription or the request failed; it is retried after
    /// `retry_in`.
    SubscriptionFailed {
        /// The pattern.
        subscription: String,
        /// The server's error or the transport failure.
        error: String,
        /// Consecutive failures of this subscription.
        attempt: u32,
        /// Wait before the next attempt.
        retry_in: Duration,
    },
    /// The server confirmed (or refused) an unsubscribe.
    Unsubscribed {
        /// The pattern.
        subscription: String,
        /// `None` on success, the server's error otherwise.
        error: Option<String>,
    },
    /// The server reported several sessions for this client's cookie (`multiple-clients`).
    MultipleClients,
    /// A response was refused as a bad reply: larger than `max_response_bytes`, holding more
    /// than `max_messages_per_reply` messages, or not a Bayeux batch. The request fails as
    /// any failed request does ([`Event::ConnectFailed`], a failed subscription or publish);
    /// this event says why, for counting.
    BadReply {
        /// The transport's error ([`TransportError::TooLarge`],
        /// [`TransportError::TooManyMessages`] or [`TransportError::Decode`]).
        error: TransportError,
    },
    /// A message nobody could take.
    Unrouted {
        /// Why.
        reason: Unrouted,
        /// The message as received.
        message: Box<Message>,
    },
    /// A publish failed and its caller no longer waits for the verdict.
    PublishFailed {
        /// The message id.
        id: String,
        /// Why it failed.
        error: PublishError,
    },
    /// The client stopped for good; no event follows.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

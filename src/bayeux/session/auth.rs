//! Tokens: when to fetch one, and what a refused one does to the session.
//!
//! With a token source, a session starts by asking for a token ([`Output::FetchToken`]); the
//! handshake follows once [`Session::on_token`] reports one. When the server refuses the
//! token (HTTP 401, `401::Authentication invalid`, `403::Handshake denied`), the session is
//! dropped, and a new token is fetched after a backoff; the next handshake starts a new
//! session, which resubscribes everything. `max_auth_attempts` refusals in a row (no
//! successful `/meta/connect` between them) stop the client: a server that keeps refusing
//! fresh tokens must not get a handshake storm (Salesforce counts concurrent clients). A
//! token endpoint that is unavailable is retried with capped backoff for as long as it takes;
//! one that refuses the credentials stops the client at once.

use std::time::Instant;

use super::{MAX_PUBLISH_REQUEUES, Output, Pending, Phase, Session};
use crate::backoff::Backoff;
use crate::bayeux::error::{ServerError, TokenError, TransportError};
use crate::bayeux::event::{Event, StopReason};

/// Token bookkeeping of a session whose driver has a token source.
#[derive(Debug)]
pub(super) struct AuthState {
    /// When to ask for the next token; `None` while one is held or being fetched.
    pub(super) fetch_at: Option<Instant>,
    /// A fetch is in flight.
    fetching: bool,
    /// Tokens fetched so far.
    fetched: u32,
    /// Server refusals since the last successful `/meta/connect`.
    refusals: u32,
    /// Wait before re-fetching after a refusal; reset by a successful connect.
    refusal_backoff: Backoff,
    /// Wait before retrying an unavailable token endpoint; reset by a token.
    fetch_backoff: Backoff,
}

impl AuthState {
    pub(super) fn new(refusal_backoff: Backoff, fetch_backoff: Backoff, now: Instant) -> Self {
        AuthState {
            fetch_at: Some(now),
            fetching: false,
            fetched: 0,
            refusals: 0,
            refusal_backoff,
            fetch_backoff,
        }
    }
}

impl Session {
    /// The result of the token fetch asked for with [`Output::FetchToken`]. On success the
    /// driver has already installed the token.
    pub fn on_token(&mut self, result: Result<(), TokenError>, now: Instant) {
        self.drain_inbox();
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        auth.fetching = false;
        if self.phase == Phase::Stopped {
            return;
        }
        match result {
            Ok(()) => {
                auth.fetch_backoff.reset();
                auth.fetched += 1;
                let initial = auth.fetched == 1;
                self.handshake_at = Some(now);
                self.event(Event::TokenRefreshed { initial });
            }
            Err(error) if error.is_permanent() => {
                self.stop(StopReason::AuthenticationFailed {
                    reason: error.to_string(),
                });
            }
            Err(error) => {
                let retry_in = auth.fetch_backoff.next_delay();
                let attempt = auth.fetch_backoff.attempts();
                auth.fetch_at = Some(now + retry_in);
                self.event(Event::AuthenticationFailed {
                    reason: error.to_string(),
                    attempt,
                    retry_in,
                });
            }
        }
        self.pump(now);
    }

    /// Whether a failure is the server refusing the token (and a token source can replace
    /// it).
    pub(super) fn is_auth_refusal(&self, error: &ServerError) -> bool {
        self.auth.is_some() && error.is_authentication_failure()
    }

    /// Whether a transport failure is the server refusing the token (HTTP 401).
    pub(super) fn is_auth_status(&self, error: &TransportError) -> bool {
        self.auth.is_some() && matches!(error, TransportError::Status { status: 401 })
    }

    /// The server refused the token: drop the session and fetch a new token after a
    /// backoff, or stop after `max_auth_attempts` refusals in a row.
    pub(super) fn auth_refused(&mut self, reason: String, now: Instant) {
        if matches!(self.phase, Phase::Stopped | Phase::Disconnecting { .. }) {
            return;
        }
        let max = self.options.max_auth_attempts.max(1);
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        auth.refusals += 1;
        let attempt = auth.refusals;
        if attempt >= max {
            self.stop(StopReason::AuthenticationFailed {
                reason: format!("{reason} ({attempt} consecutive refusals of fresh tokens)"),
            });
            return;
        }
        let retry_in = auth.refusal_backoff.next_delay();
        auth.fetch_at = Some(now + retry_in);
        self.drop_session(reason.clone());
        self.handshake_at = None;
        self.event(Event::AuthenticationFailed {
            reason,
            attempt,
            retry_in,
        });
    }

    /// Puts the publishes of a refused request back for the next session (each at most
    /// `MAX_PUBLISH_REQUEUES` times); the rest of the batch is left to `unanswered`.
    pub(super) fn requeue_publishes(&mut self, batch: &[String]) {
        for id in batch {
            let requeues = self.requeued.get(id).copied().unwrap_or(0);
            if requeues >= MAX_PUBLISH_REQUEUES {
                continue;
            }
            if let Some(Pending::Publish(sent)) = self.pending.get(id) {
                let mut again = (**sent).clone();
                again.client_id = None;
                self.pending.remove(id);
                self.requeued.insert(id.clone(), requeues + 1);
                self.to_requeue.push(again);
            }
        }
    }

    /// A `/meta/connect` succeeded: the token works.
    pub(super) fn auth_confirmed(&mut self) {
        if let Some(auth) = self.auth.as_mut() {
            auth.refusals = 0;
            auth.refusal_backoff.reset();
        }
    }

    /// Asks for a token if one is due.
    pub(super) fn pump_token(&mut self, now: Instant) {
        if self.phase != Phase::Unconnected {
            return;
        }
        let Some(auth) = self.auth.as_mut() else {
            return;
        };
        if !auth.fetching && auth.fetch_at.is_some_and(|t| t <= now) {
            auth.fetch_at = None;
            auth.fetching = true;
            self.outputs.push_back(Output::FetchToken);
        }
    }
}

//! What to do after a failure: retry, handshake again, or stop.

use std::time::{Duration, Instant};

use super::{Lane, Link, Output, Pending, Phase, Session, SubState, set_state};
use crate::bayeux::advice::{Advice, Reconnect};
use crate::bayeux::error::{PublishError, ServerError};
use crate::bayeux::event::{Event, Next, StopReason};

impl Session {
    /// A `/meta/connect` failed: with a server reply (`Some`) or at the transport (`None`).
    pub(super) fn connect_failed(
        &mut self,
        reply: Option<(ServerError, Option<Advice>)>,
        transport: String,
        now: Instant,
    ) {
        let (reason, action) = match reply {
            Some((error, own)) => {
                let action = own
                    .and_then(|a| a.reconnect)
                    .or_else(|| error.is_unknown_session().then_some(Reconnect::Handshake))
                    .or(self.advice.reconnect)
                    .unwrap_or(Reconnect::Retry);
                (error.raw, action)
            }
            None => (transport, Reconnect::Retry),
        };
        self.link_failing(&reason);
        if action == Reconnect::None || self.advice.forbids_reconnect() {
            self.stop(StopReason::ServerRefused {
                error: Some(reason),
            });
            return;
        }
        let since = *self.unconnected_since.get_or_insert(now);
        if action == Reconnect::Handshake {
            let attempt = self.connect_backoff.attempts() + 1;
            let wait = self.rehandshake(reason.clone(), self.advice.interval(), now);
            self.event(Event::ConnectFailed {
                reason,
                attempt,
                next: Next::Handshake(wait),
            });
            return;
        }
        self.retry_connect(reason, since, now);
    }

    /// Marks the link of a handshaken session failing and reports a disconnection if it was
    /// connected.
    fn link_failing(&mut self, reason: &str) {
        if let Phase::Handshaken(link) = &mut self.phase {
            let was_connected = *link == Link::Connected;
            // Until a connect succeeds again, nothing but connects is sent, and each asks
            // for an immediate answer.
            *link = Link::Failing;
            if was_connected {
                self.event(Event::Disconnected {
                    reason: reason.to_owned(),
                });
            }
        }
    }

    /// Schedules the next connect after the advised interval plus backoff, or a handshake if
    /// by then the server will have dropped the session (unconnected since `since`).
    fn retry_connect(&mut self, reason: String, since: Instant, now: Instant) {
        let wait = self.advice.interval() + self.connect_backoff.next_delay();
        // CometD: once the outage outlives what the server keeps a session for, the session
        // is gone and connecting again can only earn "unknown session": handshake instead.
        let expired = self.advice.max_interval().is_some_and(|max| {
            let timeout = Duration::from_millis(self.advice.timeout.unwrap_or(0));
            now.duration_since(since) + wait > timeout + self.advice.interval() + max
        });
        let attempt = self.connect_backoff.attempts();
        if expired {
            let why = format!("{reason}; the session has expired on the server");
            let wait = self.rehandshake(why.clone(), wait, now);
            self.event(Event::ConnectFailed {
                reason: why,
                attempt,
                next: Next::Handshake(wait),
            });
        } else {
            self.event(Event::ConnectFailed {
                reason,
                attempt,
                next: Next::Retry(wait),
            });
            self.connect_at = Some(now + wait);
        }
    }

    pub(super) fn handshake_failed(&mut self, reason: String, now: Instant) {
        self.phase = Phase::Unconnected;
        let retry_in = self.advice.interval() + self.handshake_backoff.next_delay();
        let attempt = self.handshake_backoff.attempts();
        self.handshake_at = Some(now + retry_in);
        self.event(Event::HandshakeFailed {
            reason,
            attempt,
            retry_in,
        });
    }

    /// Drops the session and schedules a handshake after `wait` (the advised interval) and
    /// returns the actual wait. The first re-handshake after a working connection is
    /// immediate; further ones before a connect succeeds again back off, so a server that
    /// accepts handshakes but forgets the session at once gets no handshake storm
    /// (aiocometd#1, faye#542).
    pub(super) fn rehandshake(&mut self, reason: String, wait: Duration, now: Instant) -> Duration {
        if matches!(
            self.phase,
            Phase::Unconnected | Phase::Handshaking | Phase::Stopped | Phase::Disconnecting { .. }
        ) {
            return wait;
        }
        let wait = if self.handshakes_since_connect > 0 {
            wait + self.handshake_backoff.next_delay()
        } else {
            wait
        };
        self.drop_session(reason);
        self.handshake_at = Some(now + wait);
        wait
    }

    /// Forgets the session (its id, its outstanding connect, its confirmed subscriptions);
    /// the caller schedules what comes next.
    pub(super) fn drop_session(&mut self, reason: String) {
        if self.is_handshaken() {
            let subscriptions = self
                .subs
                .iter()
                .filter(|(_, s)| !s.local_only && s.state == SubState::Confirmed)
                .map(|(pattern, _)| pattern.clone())
                .collect();
            let last_connected = self.last_connected.take();
            self.event(Event::SessionLost {
                reason: reason.clone(),
                last_connected,
                subscriptions,
            });
        }
        if self.is_connected() {
            self.event(Event::Disconnected { reason });
        }
        self.phase = Phase::Unconnected;
        self.client_id = None;
        self.connect_at = None;
        if let Some(abandoned) = self.connect_id.take() {
            self.abandoned_connect = Some(abandoned);
            self.outputs.push_back(Output::Abort(Lane::Connect));
        }
        for sub in self.subs.values_mut() {
            if !sub.local_only {
                set_state(&mut self.sub_counts, sub, SubState::Wanted);
            }
        }
    }

    pub(super) fn stop(&mut self, reason: StopReason) {
        if self.phase == Phase::Stopped {
            return;
        }
        self.phase = Phase::Stopped;
        self.handshake_at = None;
        self.connect_at = None;
        if let Some(abandoned) = self.connect_id.take() {
            self.abandoned_connect = Some(abandoned);
            self.outputs.push_back(Output::Abort(Lane::Connect));
        }
        let mut ids: Vec<String> = self.outbox.drain(..).filter_map(|m| m.id).collect();
        ids.extend(
            self.pending
                .drain()
                .filter_map(|(id, p)| matches!(p, Pending::Publish(_)).then_some(id)),
        );
        for id in ids {
            self.outputs.push_back(Output::PublishDone {
                id,
                result: Err(PublishError::Closed),
            });
        }
        self.stop_reason = Some(reason.clone());
        self.event(Event::Stopped { reason });
    }
}

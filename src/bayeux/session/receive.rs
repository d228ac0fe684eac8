//! Taking in replies and deliveries.

use std::time::Instant;

use super::{
    Link, MAX_PUBLISH_REQUEUES, Output, Pending, Phase, Session, SubState, linear_backoff,
    set_state,
};
use crate::bayeux::advice::{Advice, Reconnect};
use crate::bayeux::channel::{
    META_CONNECT, META_DISCONNECT, META_HANDSHAKE, META_SUBSCRIBE, META_UNSUBSCRIBE,
};
use crate::bayeux::error::{PublishError, ServerError, TransportError};
use crate::bayeux::event::{Event, StopReason, Unrouted};
use crate::bayeux::message::{Kind, Message};

impl Session {
    pub(super) fn receive(&mut self, msg: Message, now: Instant) {
        if let Some(advice) = &msg.advice {
            let newer = Advice::from_value(advice, self.connection_type.as_deref());
            self.advice.merge(&newer);
        }
        match msg.kind() {
            Kind::Meta => match msg.channel.as_str() {
                META_HANDSHAKE => self.on_handshake_reply(msg, now),
                META_CONNECT => {
                    if msg.id.is_some() && msg.id == self.connect_id {
                        self.connect_id = None;
                        self.on_connect_reply(msg, now);
                    } else if msg.id.is_some() && msg.id == self.abandoned_connect {
                        // The reply to a long poll given up on; nothing to do.
                    } else {
                        self.unrouted(Unrouted::MismatchedConnect, msg);
                    }
                }
                META_SUBSCRIBE | META_UNSUBSCRIBE => self.on_subscription_reply(msg, now),
                META_DISCONNECT => self.on_disconnect_message(msg, now),
                _ => self.unrouted(Unrouted::UnexpectedReply, msg),
            },
            Kind::Delivery => {
                // A `/service` reply may come back as a message with data and the request's id.
                let is_service_reply = msg.channel.starts_with("/service/")
                    && msg.id.as_ref().is_some_and(|id| {
                        matches!(self.pending.get(id), Some(Pending::Publish(_)))
                    });
                if is_service_reply {
                    self.on_publish_reply(msg, now);
                } else {
                    self.outputs.push_back(Output::Deliver(msg));
                }
            }
            Kind::PublishReply => self.on_publish_reply(msg, now),
        }
    }

    pub(super) fn on_handshake_reply(&mut self, msg: Message, now: Instant) {
        if !matches!(
            msg.id.as_ref().and_then(|id| self.pending.remove(id)),
            Some(Pending::Handshake)
        ) || self.phase != Phase::Handshaking
        {
            self.unrouted(Unrouted::UnexpectedReply, msg);
            return;
        }
        if !msg.is_successful() {
            self.handshake_refused(&msg, now);
            return;
        }
        let server_types = msg.supported_connection_types.clone().unwrap_or_default();
        let chosen = if msg.supported_connection_types.is_none() {
            // Some servers omit it on success; fall back to our first (mandatory) transport.
            self.options.connection_types.first().cloned()
        } else {
            self.options
                .connection_types
                .iter()
                .find(|t| server_types.contains(t))
                .cloned()
        };
        let Some(connection_type) = chosen else {
            self.stop(StopReason::NoCommonTransport {
                client: self.options.connection_types.clone(),
                server: server_types,
            });
            return;
        };
        let Some(client_id) = msg.client_id.clone().filter(|c| !c.is_empty()) else {
            self.handshake_failed("handshake reply carried no clientId".to_owned(), now);
            return;
        };
        self.start_session(client_id, connection_type, now);
    }

    /// An unsuccessful handshake reply: no common transport and a refusal that forbids
    /// reconnecting stop the client, an authentication refusal fetches a new token, anything
    /// else is retried after a backoff.
    fn handshake_refused(&mut self, msg: &Message, now: Instant) {
        if !self.shares_a_transport(msg) {
            // Faye refuses a handshake offering none of its transports, naming them.
            let server = msg.supported_connection_types.clone().unwrap_or_default();
            self.stop(StopReason::NoCommonTransport {
                client: self.options.connection_types.clone(),
                server,
            });
            return;
        }
        let error = msg
            .error
            .clone()
            .unwrap_or_else(|| "handshake refused".to_owned());
        if self.is_auth_refusal(&ServerError::parse(&error)) {
            // Salesforce names the real cause in ext.sfdc.failureReason.
            let why = failure_reason(msg)
                .map(|r| format!("{error} ({r})"))
                .unwrap_or(error);
            self.phase = Phase::Unconnected;
            self.auth_refused(why, now);
            return;
        }
        let own = msg
            .advice
            .as_ref()
            .map(|a| Advice::from_value(a, None))
            .unwrap_or_default();
        if own.reconnect == Some(Reconnect::None) || own.forbids_reconnect() {
            self.stop(StopReason::ServerRefused { error: Some(error) });
        } else {
            self.handshake_failed(error, now);
        }
    }

    /// Enters the new session `client_id` on `connection_type`: connects at once and
    /// subscribes again to everything the server should know.
    fn start_session(&mut self, client_id: String, connection_type: String, now: Instant) {
        let rehandshake = self.handshakes > 0;
        self.handshakes += 1;
        self.handshakes_since_connect += 1;
        self.phase = Phase::Handshaken(Link::Fresh);
        self.client_id = Some(client_id.clone());
        self.connection_type = Some(connection_type.clone());
        self.connect_backoff.reset();
        self.connect_at = Some(now);
        self.multiple_clients_reported = false;
        for sub in self.subs.values_mut() {
            if !sub.local_only {
                set_state(&mut self.sub_counts, sub, SubState::Wanted);
                sub.failures = 0;
            }
        }
        self.event(Event::Handshaken {
            client_id,
            connection_type,
            rehandshake,
        });
    }

    /// Whether a handshake reply leaves a transport both sides have: true when it names no
    /// `supportedConnectionTypes` or one of ours.
    fn shares_a_transport(&self, msg: &Message) -> bool {
        msg.supported_connection_types
            .as_ref()
            .is_none_or(|server| {
                self.options
                    .connection_types
                    .iter()
                    .any(|t| server.contains(t))
            })
    }

    pub(super) fn on_connect_reply(&mut self, msg: Message, now: Instant) {
        if !self.is_handshaken() {
            return;
        }
        if !msg.is_successful() {
            let error = ServerError::parse(msg.error.as_deref().unwrap_or("connect failed"));
            if self.is_auth_refusal(&error) {
                self.auth_refused(error.raw, now);
                return;
            }
            let own = msg
                .advice
                .as_ref()
                .map(|a| Advice::from_value(a, self.connection_type.as_deref()));
            self.connect_failed(Some((error, own)), String::new(), now);
            return;
        }
        self.connect_backoff.reset();
        self.auth_confirmed();
        // Only a session that works (a successful connect) proves the handshakes are not
        // looping: a server that accepts handshakes but forgets the session at once must
        // not get a handshake storm (aiocometd#1, faye#542).
        self.handshake_backoff.reset();
        self.handshakes_since_connect = 0;
        self.unconnected_since = None;
        self.last_connected = Some(now);
        let was_connected = self.is_connected();
        self.phase = Phase::Handshaken(Link::Connected);
        if !was_connected {
            self.event(Event::Connected);
        }
        if self.advice.multiple_clients == Some(true) && !self.multiple_clients_reported {
            self.multiple_clients_reported = true;
            self.event(Event::MultipleClients);
        }
        match self.advice.reconnect {
            Some(Reconnect::None) => self.stop(StopReason::ServerRefused { error: None }),
            Some(Reconnect::Handshake) => {
                let interval = self.advice.interval();
                self.rehandshake("server advised a new handshake".to_owned(), interval, now);
            }
            _ if self.advice.forbids_reconnect() => {
                self.stop(StopReason::ServerRefused { error: None })
            }
            _ => self.connect_at = Some(now + self.advice.interval()),
        }
    }

    pub(super) fn on_subscription_reply(&mut self, msg: Message, now: Instant) {
        let pending = msg.id.as_ref().and_then(|id| self.pending.remove(id));
        match pending {
            Some(Pending::Subscribe(pattern)) => {
                let error = (!msg.is_successful()).then(|| {
                    msg.error
                        .clone()
                        .unwrap_or_else(|| "subscribe refused".into())
                });
                self.subscribe_result(&pattern, msg.id.as_deref(), error, now);
            }
            Some(Pending::Unsubscribe(pattern)) => {
                let error = (!msg.is_successful()).then(|| {
                    msg.error
                        .clone()
                        .unwrap_or_else(|| "unsubscribe refused".into())
                });
                self.event(Event::Unsubscribed {
                    subscription: pattern,
                    error,
                });
            }
            Some(other) => {
                // Not ours to consume; put it back.
                if let Some(id) = msg.id.clone() {
                    self.pending.insert(id, other);
                }
                self.unrouted(Unrouted::UnexpectedReply, msg);
            }
            None => self.unrouted(Unrouted::UnexpectedReply, msg),
        }
    }

    pub(super) fn subscribe_result(
        &mut self,
        pattern: &str,
        id: Option<&str>,
        error: Option<String>,
        now: Instant,
    ) {
        let Some(sub) = self.subs.get_mut(pattern) else {
            return; // unsubscribed meanwhile
        };
        if !matches!(&sub.state, SubState::Sending(sent) if Some(sent.as_str()) == id) {
            return; // a reply from an earlier session or attempt
        }
        match error {
            None => {
                set_state(&mut self.sub_counts, sub, SubState::Confirmed);
                sub.failures = 0;
                self.event(Event::SubscriptionConfirmed {
                    subscription: pattern.to_owned(),
                });
            }
            Some(error) if ServerError::parse(&error).is_unknown_session() => {
                // The session is gone; the re-handshake resubscribes everything.
                set_state(&mut self.sub_counts, sub, SubState::Wanted);
                let interval = self.advice.interval();
                self.rehandshake(error, interval, now);
            }
            Some(error) => self.subscription_failed(pattern, error, now),
        }
    }

    /// Subscription `pattern` failed with `error`: it is retried after a backoff that grows
    /// with its consecutive failures.
    pub(super) fn subscription_failed(&mut self, pattern: &str, error: String, now: Instant) {
        let Some(sub) = self.subs.get_mut(pattern) else {
            return;
        };
        sub.failures += 1;
        let attempt = sub.failures;
        let retry_in = linear_backoff(&self.sub_backoff, attempt);
        let retry_at = now + retry_in;
        set_state(&mut self.sub_counts, sub, SubState::Failed { retry_at });
        self.event(Event::SubscriptionFailed {
            subscription: pattern.to_owned(),
            error,
            attempt,
            retry_in,
        });
    }

    pub(super) fn on_publish_reply(&mut self, msg: Message, now: Instant) {
        let Some(id) = msg.id.clone() else {
            self.unrouted(Unrouted::UnexpectedReply, msg);
            return;
        };
        match self.pending.remove(&id) {
            Some(Pending::Publish(sent)) => {
                let requeues = self.requeued.remove(&id).unwrap_or(0);
                if msg.is_successful() || msg.kind() == Kind::Delivery {
                    self.outputs.push_back(Output::PublishDone {
                        id,
                        result: Ok(msg),
                    });
                    return;
                }
                let error = ServerError::parse(msg.error.as_deref().unwrap_or("publish refused"));
                if error.is_unknown_session() && requeues < MAX_PUBLISH_REQUEUES {
                    // The server did not take it: send it again in the next session.
                    let mut again = *sent;
                    again.client_id = None;
                    self.requeued.insert(id, requeues + 1);
                    self.to_requeue.push(again);
                    let interval = self.advice.interval();
                    self.rehandshake(error.raw.clone(), interval, now);
                } else {
                    self.outputs.push_back(Output::PublishDone {
                        id,
                        result: Err(PublishError::Refused(error)),
                    });
                }
            }
            Some(other) => {
                self.pending.insert(id, other);
                self.unrouted(Unrouted::UnexpectedReply, msg);
            }
            None => self.unrouted(Unrouted::UnexpectedReply, msg),
        }
    }

    pub(super) fn on_disconnect_message(&mut self, msg: Message, now: Instant) {
        if let Some(Pending::Disconnect) = msg.id.as_ref().and_then(|id| self.pending.remove(id)) {
            self.stop(StopReason::Disconnected);
            return;
        }
        // A server-initiated disconnect ends the session (spec; CometD `isReply`).
        match self.advice.reconnect {
            Some(Reconnect::None) => self.stop(StopReason::ServerRefused {
                error: msg.error.clone(),
            }),
            _ if self.is_handshaken() => {
                let interval = self.advice.interval();
                self.rehandshake("server sent /meta/disconnect".to_owned(), interval, now);
            }
            _ => self.unrouted(Unrouted::UnexpectedReply, msg),
        }
    }

    /// Messages of the other lane's batch that got no reply (or whose request failed).
    pub(super) fn unanswered(&mut self, batch: Vec<String>, reason: &str, now: Instant) {
        for id in batch {
            let Some(pending) = self.pending.remove(&id) else {
                continue;
            };
            match pending {
                Pending::Handshake => {
                    if self.phase == Phase::Handshaking {
                        self.handshake_failed(reason.to_owned(), now);
                    }
                }
                Pending::Publish(_) => {
                    self.requeued.remove(&id);
                    let err = PublishError::Transport(TransportError::Decode(reason.to_owned()));
                    self.outputs.push_back(Output::PublishDone {
                        id,
                        result: Err(err),
                    });
                }
                Pending::Subscribe(pattern) => {
                    self.subscribe_result(&pattern, Some(&id), Some(reason.to_owned()), now)
                }
                Pending::Unsubscribe(pattern) => self.event(Event::Unsubscribed {
                    subscription: pattern,
                    error: Some(reason.to_owned()),
                }),
                Pending::Disconnect => self.stop(StopReason::Disconnected),
            }
        }
    }
}

/// Salesforce's `ext.sfdc.failureReason` of a refusal, if any.
fn failure_reason(msg: &Message) -> Option<String> {
    msg.ext
        .as_ref()?
        .get("sfdc")?
        .get("failureReason")?
        .as_str()
        .map(str::to_owned)
}

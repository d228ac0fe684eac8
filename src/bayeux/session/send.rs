//! Starting requests: the handshake, the long poll and batches of everything else.

use std::time::Instant;

use serde_json::{Value, json};

use super::{Lane, Link, Output, Pending, Phase, Session, SubState, set_state};
use crate::bayeux::advice::Advice;
use crate::bayeux::channel::{
    META_CONNECT, META_DISCONNECT, META_HANDSHAKE, META_SUBSCRIBE, META_UNSUBSCRIBE,
};
use crate::bayeux::error::PublishError;
use crate::bayeux::event::Event;
use crate::bayeux::message::Message;

impl Session {
    /// Starts whatever may start now.
    pub(super) fn pump(&mut self, now: Instant) {
        self.pump_token(now);
        if self.phase == Phase::Unconnected
            && self.other_batch.is_none()
            && self.handshake_at.is_some_and(|t| t <= now)
        {
            self.send_handshake();
        }
        if self.is_handshaken()
            && self.connect_id.is_none()
            && self.connect_at.is_some_and(|t| t <= now)
        {
            self.send_connect();
        }
        if self.batch_retry_at.is_some_and(|t| t <= now) {
            self.batch_retry_at = None;
        }
        let can_send = matches!(
            self.phase,
            Phase::Handshaken(Link::Fresh | Link::Connected) | Phase::Disconnecting { .. }
        ) && self.batch_retry_at.is_none();
        if can_send && self.other_batch.is_none() {
            self.send_batch(now);
        }
    }

    pub(super) fn send_handshake(&mut self) {
        self.phase = Phase::Handshaking;
        self.handshake_at = None;
        // Advice belongs to a session: forget the old one (cometd/cometd#722).
        self.advice = Advice::default();
        self.connection_type = None;
        let id = self.new_id();
        let mut msg = Message::new(META_HANDSHAKE);
        msg.id = Some(id.clone());
        msg.version = Some("1.0".to_owned());
        msg.minimum_version = Some("1.0".to_owned());
        msg.supported_connection_types = Some(self.options.connection_types.clone());
        self.outgoing(&mut msg);
        self.pending.insert(id.clone(), Pending::Handshake);
        self.other_batch = Some(vec![id]);
        self.outputs.push_back(Output::Send {
            lane: Lane::Other,
            messages: vec![msg],
        });
    }

    pub(super) fn send_connect(&mut self) {
        self.connect_at = None;
        let id = self.new_id();
        let mut msg = Message::new(META_CONNECT);
        msg.id = Some(id.clone());
        msg.client_id.clone_from(&self.client_id);
        msg.connection_type.clone_from(&self.connection_type);
        if self.phase != Phase::Handshaken(Link::Connected) {
            // Ask the server to answer at once, so a lost session is found out quickly.
            msg.advice = Some(json!({ "timeout": 0 }));
        }
        self.outgoing(&mut msg);
        self.connect_id = Some(id);
        self.outputs.push_back(Output::Send {
            lane: Lane::Connect,
            messages: vec![msg],
        });
    }

    /// Starts one request with what is waiting: subscriptions first, then the outbox
    /// (publishes, unsubscribes), then a requested disconnect. At most `max_batch` messages
    /// and, with a cap, at most `max_request_bytes` bytes: what does not fit waits for the
    /// next request, and a message larger than the cap on its own is refused unsent.
    pub(super) fn send_batch(&mut self, now: Instant) {
        let max = self.options.max_batch.max(1);
        let mut batch = Batch::new(self.options.max_request_bytes);
        if self.is_handshaken() {
            self.batch_subscribes(&mut batch, max, now);
        }
        self.batch_outbox(&mut batch, max);
        let disconnect_due = matches!(self.phase, Phase::Disconnecting { sent: false, .. });
        if disconnect_due && self.outbox.is_empty() && batch.len() < max {
            self.batch_disconnect(&mut batch);
        }
        if batch.messages.is_empty() {
            return;
        }
        let ids = batch.messages.iter().filter_map(|m| m.id.clone()).collect();
        self.other_batch = Some(ids);
        self.outputs.push_back(Output::Send {
            lane: Lane::Other,
            messages: batch.messages,
        });
    }

    /// Adds a `/meta/subscribe` for each wanted subscription (at most `max`) that fits.
    fn batch_subscribes(&mut self, batch: &mut Batch, max: usize, now: Instant) {
        let wanted = match self.sub_counts.wanted {
            0 => None,
            _ => Some(self.subs.iter()),
        };
        let wanted: Vec<String> = (wanted.into_iter().flatten())
            .filter(|(_, s)| s.state == SubState::Wanted)
            .map(|(p, _)| p.clone())
            .take(max)
            .collect();
        for pattern in wanted {
            let id = self.new_id();
            let mut msg = Message::new(META_SUBSCRIBE);
            msg.client_id.clone_from(&self.client_id);
            msg.subscription = Some(Value::String(pattern.clone()));
            msg.id = Some(id.clone());
            self.outgoing(&mut msg);
            match batch.fit(&msg) {
                Fit::Yes(size) => {
                    if let Some(sub) = self.subs.get_mut(&pattern) {
                        set_state(&mut self.sub_counts, sub, SubState::Sending(id.clone()));
                    }
                    self.pending.insert(id, Pending::Subscribe(pattern));
                    batch.push(msg, size);
                }
                Fit::NextRequest => break,
                Fit::Never(size) => self.subscribe_too_large(&pattern, size, batch.cap, now),
            }
        }
    }

    /// Adds outbox messages (publishes, unsubscribes) until the batch holds `max` or the
    /// next one does not fit.
    fn batch_outbox(&mut self, batch: &mut Batch, max: usize) {
        while batch.len() < max {
            let Some(mut msg) = self.outbox.pop_front() else {
                break;
            };
            let id = match msg.id.clone() {
                Some(id) => id,
                None => self.new_id(),
            };
            msg.id = Some(id.clone());
            let mut wire = msg.clone();
            wire.client_id.clone_from(&self.client_id);
            self.outgoing(&mut wire);
            let size = match batch.fit(&wire) {
                Fit::Yes(size) => size,
                Fit::NextRequest => {
                    self.outbox.push_front(msg);
                    break;
                }
                Fit::Never(size) => {
                    self.too_large(msg, size, batch.cap);
                    continue;
                }
            };
            let pending = if msg.channel == META_UNSUBSCRIBE {
                Pending::Unsubscribe(msg.subscriptions().into_iter().next().unwrap_or_default())
            } else {
                Pending::Publish(Box::new(msg))
            };
            self.pending.insert(id, pending);
            batch.push(wire, size);
        }
    }

    /// Adds the requested `/meta/disconnect` and gives up the pending long poll.
    fn batch_disconnect(&mut self, batch: &mut Batch) {
        let id = self.new_id();
        let mut msg = Message::new(META_DISCONNECT);
        msg.client_id.clone_from(&self.client_id);
        msg.id = Some(id.clone());
        self.outgoing(&mut msg);
        // A disconnect always fits a request of its own.
        if let Fit::Yes(size) | Fit::Never(size) = batch.fit(&msg) {
            if let Phase::Disconnecting { sent, .. } = &mut self.phase {
                *sent = true;
            }
            self.pending.insert(id, Pending::Disconnect);
            batch.push(msg, size);
            if let Some(abandoned) = self.connect_id.take() {
                self.abandoned_connect = Some(abandoned);
                self.outputs.push_back(Output::Abort(Lane::Connect));
            }
        }
    }

    /// A publish or unsubscribe that can never fit the request cap.
    fn too_large(&mut self, msg: Message, size: usize, cap: usize) {
        let Some(id) = msg.id.clone() else {
            return;
        };
        if msg.channel == META_UNSUBSCRIBE {
            let pattern = msg.subscriptions().into_iter().next().unwrap_or_default();
            self.event(Event::Unsubscribed {
                subscription: pattern,
                error: Some(PublishError::TooLarge { size, cap }.to_string()),
            });
            return;
        }
        self.requeued.remove(&id);
        self.outputs.push_back(Output::PublishDone {
            id,
            result: Err(PublishError::TooLarge { size, cap }),
        });
    }

    /// A subscribe that can never fit the request cap: failed, retried with backoff (an
    /// extension may shrink it meanwhile).
    fn subscribe_too_large(&mut self, pattern: &str, size: usize, cap: usize, now: Instant) {
        let error = format!("the subscribe request is {size} bytes, over the {cap}-byte cap");
        self.subscription_failed(pattern, error, now);
    }
}

/// Whether a message fits the request being built.
enum Fit {
    /// Yes; its size in bytes.
    Yes(usize),
    /// Not with what is already in it: next request.
    NextRequest,
    /// Not even alone; its size in bytes.
    Never(usize),
}

/// A request being built, with its size as JSON (`[m1,m2,...]`).
struct Batch {
    messages: Vec<Message>,
    bytes: usize,
    /// 0: no limit.
    cap: usize,
}

impl Batch {
    fn new(cap: usize) -> Self {
        Batch {
            messages: Vec::new(),
            bytes: 2,
            cap,
        }
    }

    fn len(&self) -> usize {
        self.messages.len()
    }

    fn fit(&self, msg: &Message) -> Fit {
        if self.cap == 0 {
            return Fit::Yes(0);
        }
        let size = encoded_len(msg);
        let separator = usize::from(!self.messages.is_empty());
        if size + 2 > self.cap {
            Fit::Never(size)
        } else if self.bytes + separator + size > self.cap {
            Fit::NextRequest
        } else {
            Fit::Yes(size)
        }
    }

    fn push(&mut self, msg: Message, size: usize) {
        self.bytes += size + usize::from(!self.messages.is_empty());
        self.messages.push(msg);
    }
}

/// A message's size in a request body (the transport encodes batches as compact JSON).
pub(super) fn encoded_len(msg: &Message) -> usize {
    serde_json::to_vec(msg).map_or(0, |v| v.len())
}

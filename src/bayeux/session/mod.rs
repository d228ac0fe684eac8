//! The Bayeux session state machine. No IO, no timers, no tasks.
//!
//! Inputs are calls (`subscribe`, `publish`, `disconnect`), transport results
//! ([`Session::on_response`]) and the passage of time ([`Session::on_timer`]); every input
//! takes `now`. Outputs are queued [`Output`]s that the driver drains with
//! [`Session::poll_output`]: batches to send on one of two lanes, events, deliveries and
//! publish verdicts. [`Session::next_deadline`] tells the driver when to call `on_timer`.
//!
//! Invariants this module keeps (and tests):
//! - at most one `/meta/connect` outstanding ([`Lane::Connect`]), at most one other request
//!   in flight ([`Lane::Other`]), the handshake always alone in its request;
//! - the next connect waits `advice.interval`; the first connect after a handshake or a
//!   failure asks `advice: {timeout: 0}`;
//! - advice is reset at every handshake; decisions come from the reply's own advice, then the
//!   error code, then the remembered advice;
//! - handshake and connect failures back off (interval + capped jittered backoff), reset
//!   after success;
//! - the subscription table belongs to the session: after every handshake everything is
//!   resubscribed and each reply is checked; failures are retried with backoff;
//! - with tokens ([`SessionOptions::uses_tokens`]) no handshake starts without a fresh one
//!   ([`Output::FetchToken`]); a refused token ends the session, and a new one is fetched
//!   after a backoff, at most `max_auth_attempts` times in a row (the decisions are in
//!   `auth.rs`);
//! - no request other than the handshake and the connect is larger than
//!   [`SessionOptions::max_request_bytes`] (extensions' additions included): batches are
//!   split, and a message too large on its own is refused without being sent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod auth;
mod decide;
mod receive;
mod send;
#[cfg(test)]
mod tests;

use serde_json::Value;

use super::advice::Advice;
use super::channel::{ChannelPattern, META_UNSUBSCRIBE};
use super::error::{PublishError, TransportError};
use super::event::{Event, StopReason, Unrouted};
use super::ext::Extension;
use super::message::{Data, Message};
use crate::backoff::{Backoff, BackoffOptions};

/// How many times a publish refused with "unknown session" is re-sent after a re-handshake.
/// Such a publish was not processed by the server, so re-sending it cannot duplicate it.
const MAX_PUBLISH_REQUEUES: u32 = 2;

/// Session settings (the pure part of the client options).
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Transports this client implements, in order of preference.
    pub connection_types: Vec<String>,
    /// Backoff for handshakes, connects and subscriptions.
    pub backoff: BackoffOptions,
    /// Publishes that may wait for a connection before `publish` fails with `QueueFull`.
    pub max_queued: usize,
    /// Most messages sent in one request (besides the handshake and connect).
    pub max_batch: usize,
    /// Seed for backoff jitter; `None` seeds from the OS.
    pub seed: Option<u64>,
    /// Whether the driver has a token source: a token is fetched ([`Output::FetchToken`])
    /// before each new session, and refused tokens are replaced.
    pub uses_tokens: bool,
    /// Consecutive refusals of freshly fetched tokens after which the session stops
    /// (at least 1).
    pub max_auth_attempts: u32,
    /// Largest request body in bytes (0: no limit). Does not apply to the handshake and the
    /// connect, which are always alone in their request.
    pub max_request_bytes: usize,
    /// Outgoing hooks, applied to each message as it is put into a request (so that the
    /// size cap counts what they add).
    pub extensions: Vec<Arc<dyn Extension>>,
    /// Publishes of a request that failed without an answer (outcome unknown) go again,
    /// ahead of everything queued after them and after a backoff, instead of failing with
    /// [`PublishError::Transport`]: their order is kept, and one may reach the server twice.
    pub retry_publishes: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            connection_types: vec!["long-polling".to_owned()],
            backoff: BackoffOptions::default(),
            max_queued: 1000,
            max_batch: 100,
            seed: None,
            uses_tokens: false,
            max_auth_attempts: 5,
            max_request_bytes: 0,
            extensions: Vec::new(),
            retry_publishes: false,
        }
    }
}

/// Which request slot a batch goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// The single outstanding `/meta/connect` (the long poll).
    Connect,
    /// Everything else, one request at a time: handshake, (un)subscribe, publish, disconnect.
    Other,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send this batch on this lane, then report the result with `on_response`.
    Send {
        /// The lane.
        lane: Lane,
        /// The messages, in order.
        messages: Vec<Message>,
    },
    /// Abandon the request in flight on this lane; no `on_response` is expected for it.
    Abort(Lane),
    /// Tell the caller.
    Event(Event),
    /// Fan this message out to the local subscriptions that match it.
    Deliver(Message),
    /// Fetch a token from the token source and report it with [`Session::on_token`].
    FetchToken,
    /// The verdict for the publish with this id.
    PublishDone {
        /// The id [`Session::publish`] returned.
        id: String,
        /// The server's reply, or why there is none.
        result: Result<Message, PublishError>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Unconnected,
    Handshaking,
    /// A session exists; the link says where its `/meta/connect` stands.
    Handshaken(Link),
    /// [`Session::disconnect`] was called in a session whose connect was not failing.
    Disconnecting {
        /// Whether the last `/meta/connect` had succeeded (the session still counts as
        /// connected until it stops).
        connected: bool,
        /// Whether the `/meta/disconnect` has gone out in a batch.
        sent: bool,
    },
    Stopped,
}

/// Where the `/meta/connect` of a handshaken session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// No connect has succeeded in this session yet.
    Fresh,
    /// The last connect succeeded.
    Connected,
    /// The last connect failed; the next one is scheduled. Nothing else is sent meanwhile.
    Failing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SubState {
    /// Must be sent (after a handshake, a failure or a new subscribe).
    Wanted,
    /// Sent with this message id.
    Sending(String),
    /// The server confirmed it in this session.
    Confirmed,
    /// Refused or failed; retried at `retry_at`.
    Failed { retry_at: Instant },
}

/// How many subscriptions wait to be sent (`Wanted`) or retried (`Failed`). With thousands
/// of subscriptions, the session looks through them only when some do, not at every wake
/// and request. Every change of a subscription's state goes through [`set_state`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct SubCounts {
    wanted: usize,
    failed: usize,
}

impl SubCounts {
    /// The counts of `subs`, counted.
    fn of<'a>(subs: impl Iterator<Item = &'a Subscription>) -> SubCounts {
        let mut counts = SubCounts::default();
        subs.for_each(|sub| counts.add(&sub.state));
        counts
    }

    fn add(&mut self, state: &SubState) {
        match state {
            SubState::Wanted => self.wanted += 1,
            SubState::Failed { .. } => self.failed += 1,
            SubState::Sending(_) | SubState::Confirmed => {}
        }
    }

    fn remove(&mut self, state: &SubState) {
        match state {
            SubState::Wanted => self.wanted = self.wanted.saturating_sub(1),
            SubState::Failed { .. } => self.failed = self.failed.saturating_sub(1),
            SubState::Sending(_) | SubState::Confirmed => {}
        }
    }
}

/// Sets `sub`'s state, keeping `counts` (the session's) up to date.
fn set_state(counts: &mut SubCounts, sub: &mut Subscription, state: SubState) {
    counts.remove(&sub.state);
    counts.add(&state);
    sub.state = state;
}

#[derive(Debug, Clone)]
struct Subscription {
    /// Changed only by [`set_state`].
    state: SubState,
    failures: u32,
    /// `/service/**` patterns are local only: Faye refuses remote subscriptions to them and
    /// CometD treats them as a no-op; replies are routed by id.
    local_only: bool,
}

#[derive(Debug, Clone)]
enum Pending {
    Handshake,
    Publish(Box<Message>),
    Subscribe(String),
    Unsubscribe(String),
    Disconnect,
}

/// The protocol state of one Bayeux client.
#[derive(Debug)]
pub struct Session {
    options: SessionOptions,
    phase: Phase,
    /// Why the session stopped, once `phase` is `Stopped`.
    stop_reason: Option<StopReason>,
    client_id: Option<String>,
    connection_type: Option<String>,
    handshakes: u32,
    /// Successful handshakes since the last successful connect.
    handshakes_since_connect: u32,
    next_id: u64,
    advice: Advice,
    subs: BTreeMap<String, Subscription>,
    /// The states of `subs`, counted.
    sub_counts: SubCounts,
    outbox: VecDeque<Message>,
    pending: HashMap<String, Pending>,
    /// Publishes refused with "unknown session", by id: how often each was re-sent.
    requeued: HashMap<String, u32>,
    /// Publishes to put back at the head of the outbox once the current response is done.
    to_requeue: Vec<Message>,
    /// Ids sent in the request in flight on the other lane.
    other_batch: Option<Vec<String>>,
    /// Id of the outstanding `/meta/connect`.
    connect_id: Option<String>,
    /// Id of the last `/meta/connect` given up on (re-handshake, stop): its reply, if it
    /// still comes, is expected and dropped quietly.
    abandoned_connect: Option<String>,
    handshake_at: Option<Instant>,
    connect_at: Option<Instant>,
    unconnected_since: Option<Instant>,
    /// When the last `/meta/connect` of the current session succeeded.
    last_connected: Option<Instant>,
    multiple_clients_reported: bool,
    connect_backoff: Backoff,
    handshake_backoff: Backoff,
    /// With `retry_publishes`: the wait before publishes of a failed request go again.
    publish_backoff: Backoff,
    /// No batch starts before then (publishes of a failed request wait to go again).
    batch_retry_at: Option<Instant>,
    sub_backoff: BackoffOptions,
    /// Token state, when the driver has a token source.
    auth: Option<auth::AuthState>,
    outputs: VecDeque<Output>,
    /// The rest of a `/meta/connect` response, read as outputs are polled (see
    /// [`Session::poll_output`]).
    inbox: Option<Inbox>,
}

/// A `/meta/connect` response not yet read through. A long poll that carries a server-side
/// backlog holds tens of thousands of deliveries; read all at once, each would sit in the
/// response's vector and again, moved, in the output queue, both sized for the whole
/// response. Read one message per polled output instead, the output queue stays short and
/// the response's vector is the only copy.
#[derive(Debug)]
struct Inbox {
    messages: std::vec::IntoIter<Message>,
    /// The id of the connect the response answers, when it was sent.
    sent_id: Option<String>,
    /// When the response arrived: what the session treats as now while reading it.
    now: Instant,
}

impl Session {
    /// A new session that handshakes as soon as the driver polls it.
    pub fn new(options: SessionOptions, now: Instant) -> Self {
        let seed = options.seed;
        let options_uses_tokens = options.uses_tokens;
        let backoff = |salt: u64| match seed {
            Some(s) => Backoff::with_seed(options.backoff, s ^ salt),
            None => Backoff::new(options.backoff),
        };
        let auth = options
            .uses_tokens
            .then(|| auth::AuthState::new(backoff(3), backoff(4), now));
        let mut session = Session {
            connect_backoff: backoff(1),
            handshake_backoff: backoff(2),
            publish_backoff: backoff(5),
            batch_retry_at: None,
            auth,
            sub_backoff: options.backoff,
            options,
            phase: Phase::Unconnected,
            stop_reason: None,
            client_id: None,
            connection_type: None,
            handshakes: 0,
            handshakes_since_connect: 0,
            next_id: 0,
            advice: Advice::default(),
            subs: BTreeMap::new(),
            sub_counts: SubCounts::default(),
            outbox: VecDeque::new(),
            pending: HashMap::new(),
            requeued: HashMap::new(),
            to_requeue: Vec::new(),
            other_batch: None,
            connect_id: None,
            abandoned_connect: None,
            // With tokens, the handshake waits for the first one.
            handshake_at: (!options_uses_tokens).then_some(now),
            connect_at: None,
            unconnected_since: None,
            last_connected: None,
            multiple_clients_reported: false,
            outputs: VecDeque::new(),
            inbox: None,
        };
        session.pump(now);
        session
    }

    /// The next queued output, if any.
    ///
    /// The messages of a `/meta/connect` response are read as outputs are taken: the session
    /// reads the next one only when the outputs of the previous ones have all been polled.
    /// Every other input method ([`Session::on_response`], [`Session::on_timer`],
    /// [`Session::publish`], ...) first reads the rest of the response, so the order in which
    /// inputs take effect is the same either way. Until the outputs have been polled to the
    /// end, the state that the query methods report may not include the whole response yet.
    pub fn poll_output(&mut self) -> Option<Output> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            if !self.read_inbox() {
                return None;
            }
        }
    }

    /// Reads the next message of the pending response, or finishes the response once all are
    /// read. False when there is no pending response.
    fn read_inbox(&mut self) -> bool {
        let Some(inbox) = self.inbox.as_mut() else {
            return false;
        };
        let now = inbox.now;
        match inbox.messages.next() {
            Some(message) => self.receive(message, now),
            None => {
                let sent_id = self.inbox.take().and_then(|inbox| inbox.sent_id);
                self.finish_connect_response(sent_id, now);
            }
        }
        true
    }

    /// Reads the whole rest of the pending response, if any.
    fn drain_inbox(&mut self) {
        while self.read_inbox() {}
    }

    /// When the driver must call [`Session::on_timer`] next.
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.phase == Phase::Stopped {
            return None;
        }
        debug_assert_eq!(self.sub_counts, SubCounts::of(self.subs.values()));
        let failed = match self.sub_counts.failed {
            0 => None,
            _ => Some(self.subs.values()),
        };
        let sub_retry = failed.into_iter().flatten().filter_map(|s| match s.state {
            SubState::Failed { retry_at } => Some(retry_at),
            _ => None,
        });
        let token_at = self.auth.as_ref().and_then(|a| a.fetch_at);
        [
            self.handshake_at,
            self.connect_at,
            token_at,
            self.batch_retry_at,
        ]
        .into_iter()
        .flatten()
        .chain(sub_retry)
        .min()
    }

    /// Time has passed: start what is due.
    pub fn on_timer(&mut self, now: Instant) {
        self.drain_inbox();
        if self.sub_counts.failed > 0 {
            for sub in self.subs.values_mut() {
                if matches!(sub.state, SubState::Failed { retry_at } if retry_at <= now) {
                    set_state(&mut self.sub_counts, sub, SubState::Wanted);
                }
            }
        }
        self.pump(now);
    }

    /// Whether the session has stopped for good.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// Why the session stopped for good, once it has (before the outputs that report it).
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop_reason.as_ref()
    }

    /// The current session id, if handshaken.
    pub fn client_id(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The connection type negotiated at the last handshake (or set since with
    /// [`Session::set_connection_type`]), while a session exists.
    pub fn connection_type(&self) -> Option<&str> {
        self.connection_type.as_deref()
    }

    /// The driver moved this session to another transport (a fallback): later
    /// `/meta/connect`s name `connection_type`, and advice is read for it. Ignored without a
    /// session.
    pub fn set_connection_type(&mut self, connection_type: &str) {
        self.drain_inbox();
        if self.client_id.is_some() && self.connection_type.is_some() {
            self.connection_type = Some(connection_type.to_owned());
        }
    }

    /// Offers `connection_types` (in order of preference) from the next handshake on.
    pub fn set_offered_connection_types(&mut self, connection_types: Vec<String>) {
        if !connection_types.is_empty() {
            self.options.connection_types = connection_types;
        }
    }

    /// The remembered advice.
    pub fn advice(&self) -> &Advice {
        &self.advice
    }

    /// Whether the last `/meta/connect` succeeded.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.phase,
            Phase::Handshaken(Link::Connected)
                | Phase::Disconnecting {
                    connected: true,
                    ..
                }
        )
    }

    /// Whether a session exists and is not being disconnected.
    fn is_handshaken(&self) -> bool {
        matches!(self.phase, Phase::Handshaken(_))
    }

    /// Adds a pattern to the subscription table. Subscribing to a pattern already in the
    /// table only re-reports its confirmation.
    pub fn subscribe(&mut self, pattern: &ChannelPattern, now: Instant) {
        self.drain_inbox();
        if let Some(existing) = self.subs.get(pattern.as_str()) {
            if existing.state == SubState::Confirmed {
                self.event(Event::SubscriptionConfirmed {
                    subscription: pattern.to_string(),
                });
            }
            return;
        }
        let local_only = pattern.is_service();
        let state = if local_only {
            SubState::Confirmed
        } else {
            SubState::Wanted
        };
        self.sub_counts.add(&state);
        self.subs.insert(
            pattern.to_string(),
            Subscription {
                state,
                failures: 0,
                local_only,
            },
        );
        if local_only {
            self.event(Event::SubscriptionConfirmed {
                subscription: pattern.to_string(),
            });
        }
        self.pump(now);
    }

    /// Removes a pattern from the subscription table and unsubscribes on the server.
    pub fn unsubscribe(&mut self, pattern: &str, now: Instant) {
        self.drain_inbox();
        let Some(sub) = self.subs.remove(pattern) else {
            return;
        };
        self.sub_counts.remove(&sub.state);
        let on_server =
            !sub.local_only && matches!(sub.state, SubState::Confirmed | SubState::Sending(_));
        if on_server && self.is_handshaken() {
            let mut msg = Message::new(META_UNSUBSCRIBE);
            msg.subscription = Some(Value::String(pattern.to_owned()));
            self.outbox.push_back(msg);
        } else {
            self.event(Event::Unsubscribed {
                subscription: pattern.to_owned(),
                error: None,
            });
        }
        self.pump(now);
    }

    /// Queues a publish and returns its id; the verdict arrives as [`Output::PublishDone`].
    pub fn publish(
        &mut self,
        channel: &str,
        data: impl Into<Data>,
        ext: Option<serde_json::Map<String, Value>>,
        now: Instant,
    ) -> Result<String, PublishError> {
        self.drain_inbox();
        if matches!(self.phase, Phase::Stopped | Phase::Disconnecting { .. }) {
            return Err(PublishError::Closed);
        }
        // Counting the publishes means a scan; it can only reach the limit when the whole
        // outbox does, so the common case costs nothing.
        if self.outbox.len() >= self.options.max_queued {
            let queued = self
                .outbox
                .iter()
                .filter(|m| !m.channel.starts_with("/meta/"))
                .count();
            if queued >= self.options.max_queued {
                return Err(PublishError::QueueFull(queued));
            }
        }
        let mut msg = Message::new(channel);
        msg.data = Some(data.into());
        msg.ext = ext;
        let id = self.new_id();
        msg.id = Some(id.clone());
        self.outbox.push_back(msg);
        self.pump(now);
        Ok(id)
    }

    /// Sends `/meta/disconnect` (after anything already queued) and stops.
    pub fn disconnect(&mut self, now: Instant) {
        self.drain_inbox();
        match self.phase {
            Phase::Stopped | Phase::Disconnecting { .. } => {}
            Phase::Handshaken(link) if link != Link::Failing => {
                self.phase = Phase::Disconnecting {
                    connected: link == Link::Connected,
                    sent: false,
                };
                self.handshake_at = None;
                self.connect_at = None;
                self.pump(now);
            }
            _ => self.stop(StopReason::Disconnected),
        }
    }

    /// The result of the request on `lane`.
    pub fn on_response(
        &mut self,
        lane: Lane,
        result: Result<Vec<Message>, TransportError>,
        now: Instant,
    ) {
        self.drain_inbox();
        if self.phase == Phase::Stopped {
            return;
        }
        match (lane, result) {
            (Lane::Connect, Ok(messages)) => {
                // Read as outputs are polled; `finish_connect_response` at the end.
                self.inbox = Some(Inbox {
                    messages: messages.into_iter(),
                    sent_id: self.connect_id.clone(),
                    now,
                });
                return;
            }
            (Lane::Connect, Err(e)) => {
                self.connect_id = None;
                if self.is_handshaken() && self.is_auth_status(&e) {
                    self.auth_refused(e.to_string(), now);
                } else if self.is_handshaken() {
                    self.connect_failed(None, e.to_string(), now);
                }
            }
            (Lane::Other, result) => self.on_other_response(result, now),
        }
        self.after_response(now);
    }

    /// The result of a request on [`Lane::Other`]: its replies, or a failure that leaves
    /// its messages unanswered.
    fn on_other_response(&mut self, result: Result<Vec<Message>, TransportError>, now: Instant) {
        let batch = self.other_batch.take().unwrap_or_default();
        match result {
            Ok(messages) => {
                self.publish_backoff.reset();
                for msg in messages {
                    self.receive(msg, now);
                }
                self.unanswered(batch, "the server sent no reply to this message", now);
            }
            Err(e) if self.is_auth_status(&e) => {
                // The server took nothing from this request: publishes go again in
                // the next session, with a new token.
                self.requeue_publishes(&batch);
                if matches!(self.phase, Phase::Handshaking | Phase::Handshaken(_)) {
                    self.auth_refused(e.to_string(), now);
                }
                self.unanswered(batch, &e.to_string(), now);
            }
            Err(e) => {
                if self.options.retry_publishes {
                    self.retry_publishes(&batch, now);
                }
                self.unanswered(batch, &e.to_string(), now);
            }
        }
    }

    /// Messages the server sent outside any reply (deliveries pushed over a socket).
    pub fn on_pushed(&mut self, messages: Vec<Message>, now: Instant) {
        self.drain_inbox();
        if self.phase == Phase::Stopped {
            return;
        }
        for msg in messages {
            self.receive(msg, now);
        }
        self.after_response(now);
    }

    /// The end of a `/meta/connect` response whose messages have all been read.
    fn finish_connect_response(&mut self, sent_id: Option<String>, now: Instant) {
        // A reply handler clears `connect_id`; if it is still set the response did not answer
        // the connect.
        if sent_id.is_some() && self.connect_id == sent_id {
            self.connect_id = None;
            if self.is_handshaken() {
                self.connect_failed(None, "response carried no /meta/connect reply".into(), now);
            }
        }
        self.after_response(now);
    }

    /// Puts the publishes of a request that failed without an answer back at the head of the
    /// outbox, in their order and under their ids, to go again after a backoff (what else
    /// the request held is left to `unanswered`).
    fn retry_publishes(&mut self, batch: &[String], now: Instant) {
        let mut again = Vec::new();
        for id in batch {
            if let Some(Pending::Publish(_)) = self.pending.get(id)
                && let Some(Pending::Publish(sent)) = self.pending.remove(id)
            {
                again.push(*sent);
            }
        }
        if again.is_empty() {
            return;
        }
        for msg in again.into_iter().rev() {
            self.outbox.push_front(msg);
        }
        self.batch_retry_at = Some(now + self.publish_backoff.next_delay());
    }

    /// After any response: requeue what must go again, and send what is due.
    fn after_response(&mut self, now: Instant) {
        for msg in std::mem::take(&mut self.to_requeue).into_iter().rev() {
            self.outbox.push_front(msg);
        }
        self.pump(now);
    }

    // ----- helpers ----------------------------------------------------------------------

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    /// Runs the outgoing extension hooks on a message about to be sent.
    fn outgoing(&self, message: &mut Message) {
        for ext in &self.options.extensions {
            ext.outgoing(message);
        }
    }

    fn unrouted(&mut self, reason: Unrouted, message: Message) {
        self.event(Event::Unrouted {
            reason,
            message: Box::new(message),
        });
    }
}

/// The deterministic (unjittered) wait before attempt `attempt` of a subscription.
fn linear_backoff(options: &BackoffOptions, attempt: u32) -> Duration {
    options.increment.saturating_mul(attempt).min(options.max)
}

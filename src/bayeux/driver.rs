//! The driver task: owns the [`Session`], the transport and every timer.
//!
//! Its loop `select!`s over four things only: the two request lanes, the token fetch, the
//! session's next deadline and the command channel; each arm hands its input to the session
//! and then carries out the session's outputs (start requests, fetch a token, emit events,
//! fan deliveries out, settle publishes). A fetched token goes straight to the transport
//! (`Authorization: Bearer`); the session only learns that there is one.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};
use tokio::sync::mpsc::error::{SendError, TrySendError};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, trace, warn};

use super::auth::{AccessToken, TokenFuture};
use super::channel::{ChannelIndex, ChannelPattern};
use super::error::{PublishError, TokenError, TransportError};
use super::event::{Event, Next, StopReason, Unrouted};
use super::liveness::Pulse;
use super::message::{Data, Message};
use super::options::ClientOptions;
use super::session::{Lane, Output, Session};
use super::transport::SendFuture;
use super::transports::Transports;
use super::verdict::Reply;
use crate::log_limit::{self, LogLimiter};

/// What a [`Client`](super::Client) handle asks of the driver.
pub(super) enum Command {
    Subscribe {
        patterns: Vec<ChannelPattern>,
        tx: mpsc::Sender<Box<Message>>,
    },
    Unsubscribe {
        pattern: ChannelPattern,
    },
    Publish {
        channel: String,
        data: Data,
        ext: Option<Map<String, Value>>,
        reply: Reply,
    },
    Disconnect {
        done: oneshot::Sender<()>,
    },
}

struct Listener {
    patterns: Vec<ChannelPattern>,
    tx: mpsc::Sender<Box<Message>>,
}

pub(super) struct Driver {
    session: Session,
    transports: Transports,
    /// Batches a push transport received outside any reply.
    pushed: Option<mpsc::Receiver<Vec<Message>>>,
    options: ClientOptions,
    commands: mpsc::Receiver<Command>,
    commands_open: bool,
    events: mpsc::Sender<Event>,
    listeners: Vec<Listener>,
    /// The listeners' patterns by listener position; `None` after a change to `listeners`
    /// until the next delivery builds it again (so that many subscriptions in a row cost one
    /// build).
    index: Option<ChannelIndex>,
    publishes: HashMap<String, Reply>,
    connect_lane: Option<SendFuture>,
    other_lane: Option<SendFuture>,
    token_lane: Option<TokenFuture>,
    disconnect_waiters: Vec<oneshot::Sender<()>>,
    /// Why the client stopped, for [`Client::stop_reason`](super::Client::stop_reason); set
    /// before the handles can see the client closed.
    stopped: Arc<OnceLock<StopReason>>,
    /// Warnings that can come once per message (unroutable, unclaimed, dropped events) are
    /// rate-limited.
    log_limit: LogLimiter,
    /// When the last response arrived, for [`Client::liveness`](super::Client::liveness).
    pulse: Pulse,
}

enum Wake {
    Response(Lane, Result<Vec<Message>, TransportError>),
    /// Messages the server sent outside any reply (`None`: the transport is gone).
    Pushed(Option<Vec<Message>>),
    Token(Result<AccessToken, TokenError>),
    Timer,
    Command(Option<Command>),
    /// A rate-limit window with suppressed warnings has ended.
    Report,
}

impl Driver {
    pub(super) fn new(
        session: Session,
        transports: Transports,
        options: ClientOptions,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
        stopped: Arc<OnceLock<StopReason>>,
        pulse: Pulse,
    ) -> Self {
        Driver {
            session,
            pushed: transports.pushed(),
            transports,
            options,
            commands,
            commands_open: true,
            events,
            listeners: Vec::new(),
            index: None,
            publishes: HashMap::new(),
            connect_lane: None,
            other_lane: None,
            token_lane: None,
            disconnect_waiters: Vec::new(),
            stopped,
            log_limit: LogLimiter::default(),
            pulse,
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.carry_out().await;
            if self.session.is_stopped() {
                break;
            }
            self.expect_exchange();
            let deadline = self.session.next_deadline().map(Instant::from_std);
            let report_at = self.log_limit.next_report().map(Instant::from_std);
            let wake = tokio::select! {
                result = poll_lane(&mut self.other_lane) => Wake::Response(Lane::Other, result),
                result = poll_lane(&mut self.connect_lane) => Wake::Response(Lane::Connect, result),
                batch = poll_pushed(&mut self.pushed) => Wake::Pushed(batch),
                result = poll_token(&mut self.token_lane) => Wake::Token(result),
                _ = sleep_until(deadline) => Wake::Timer,
                command = self.commands.recv(), if self.commands_open => Wake::Command(command),
                _ = sleep_until(report_at) => Wake::Report,
            };
            let now = Instant::now().into_std();
            match wake {
                Wake::Response(lane, result) => self.response(lane, result, now),
                Wake::Pushed(Some(messages)) => {
                    self.pulse.heard(now);
                    let messages = self.incoming(messages);
                    self.session.on_pushed(messages, now);
                }
                Wake::Pushed(None) => self.pushed = None,
                Wake::Token(result) => {
                    self.token_lane = None;
                    let result = result.and_then(|token| self.install(&token));
                    self.session.on_token(result, now);
                }
                Wake::Timer => self.session.on_timer(now),
                Wake::Report => log_limit::report(&self.log_limit.expired(now), log_limit::WINDOW),
                Wake::Command(Some(command)) => self.command(command, now),
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use this session any more.
                    self.commands_open = false;
                    self.session.disconnect(now);
                }
            }
        }
        for waiter in self.disconnect_waiters.drain(..) {
            let _ = waiter.send(());
        }
        debug!("Bayeux client task ended.");
    }

    /// The result of the request on `lane`, for the session (or, for a failed trial of a
    /// WebSocket, the fallback).
    fn response(
        &mut self,
        lane: Lane,
        result: Result<Vec<Message>, TransportError>,
        now: std::time::Instant,
    ) {
        match lane {
            Lane::Other => self.other_lane = None,
            Lane::Connect => self.connect_lane = None,
        }
        if let Some(fallback) = self.transports.on_result(lane, &result, now) {
            let reason = result.as_ref().err().map(ToString::to_string);
            let to = self.transports.http_name();
            warn!(
                reason = reason.as_deref().unwrap_or("?"),
                transport = to,
                retry_websocket_after = ?fallback.retry_after,
                "WebSocket failed before its first /meta/connect; falling back for this session."
            );
            self.session.set_connection_type(to);
            let request = self
                .transports
                .route(Lane::Connect, &mut fallback.connect.clone());
            let deadline = self.options.max_network_delay;
            self.connect_lane = Some(request.send(fallback.connect, deadline));
            return;
        }
        match &result {
            Ok(_) => self.pulse.heard(now),
            Err(
                e @ (TransportError::TooLarge { .. }
                | TransportError::TooManyMessages { .. }
                | TransportError::Decode(_)),
            ) => self.emit(Event::BadReply { error: e.clone() }),
            Err(_) => {}
        }
        let result = result.map(|messages| self.incoming(messages));
        if let Err(e) = &result {
            debug!(?lane, error = %e, "Request failed.");
        }
        self.session.on_response(lane, result, now);
    }

    /// Tells the pulse how soon the next exchange is due with the current advice: a connect
    /// follows the last reply after `interval` and is held up to `timeout`, plus the network's
    /// allowance.
    fn expect_exchange(&self) {
        let advice = self.session.advice();
        self.pulse.expect(
            advice.timeout_or(self.options.default_timeout)
                + advice.interval()
                + self.options.max_network_delay,
        );
    }

    fn command(&mut self, command: Command, now: std::time::Instant) {
        match command {
            Command::Subscribe { patterns, tx } => {
                for pattern in &patterns {
                    self.session.subscribe(pattern, now);
                }
                self.listeners.push(Listener { patterns, tx });
                self.index = None;
            }
            Command::Unsubscribe { pattern } => {
                for listener in &mut self.listeners {
                    listener.patterns.retain(|p| *p != pattern);
                }
                self.listeners.retain(|l| !l.patterns.is_empty());
                self.index = None;
                self.session.unsubscribe(pattern.as_str(), now);
            }
            Command::Publish {
                channel,
                data,
                ext,
                reply,
            } => match self.session.publish(&channel, data, ext, now) {
                Ok(id) => {
                    self.publishes.insert(id, reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Disconnect { done } => {
                self.disconnect_waiters.push(done);
                self.session.disconnect(now);
            }
        }
    }

    /// Carries out everything the session asked for.
    async fn carry_out(&mut self) {
        while let Some(output) = self.session.poll_output() {
            // Before the output reaches a caller: a publish failing with `Closed` must find
            // the reason already there. (The session reads a response as its outputs are
            // polled, so a stop can come up between two outputs.)
            self.note_stop_reason();
            match output {
                Output::Send { lane, messages } => self.start(lane, messages),
                Output::Abort(Lane::Connect) => self.connect_lane = None,
                Output::Abort(Lane::Other) => self.other_lane = None,
                Output::Event(event) => {
                    self.follow(&event);
                    self.emit(event);
                }
                Output::Deliver(message) => self.deliver(message).await,
                Output::PublishDone { id, result } => self.publish_done(id, result),
                Output::FetchToken => self.fetch_token(),
            }
        }
        self.note_stop_reason();
    }

    /// Keeps the session's stop reason for [`Client::stop_reason`](super::Client::stop_reason)
    /// once there is one.
    fn note_stop_reason(&self) {
        if self.stopped.get().is_none()
            && let Some(reason) = self.session.stop_reason()
        {
            let _ = self.stopped.set(reason.clone());
        }
    }

    fn fetch_token(&mut self) {
        match &self.options.token_source {
            Some(source) => {
                debug!("Fetching a token.");
                self.token_lane = Some(source.fetch());
            }
            None => {
                // Cannot happen: the session asks only when told there is a source.
                let none = TokenError::Refused("no token source".to_owned());
                self.session.on_token(Err(none), Instant::now().into_std());
            }
        }
    }

    /// Makes the transports send `token` from now on.
    fn install(&self, token: &AccessToken) -> Result<(), TokenError> {
        self.transports
            .set_bearer_token(Some(token.secret()))
            .map_err(TokenError::Refused)
    }

    /// Keeps the routing in step with the session: which transport a new session uses, and
    /// when a WebSocket has proven itself.
    fn follow(&mut self, event: &Event) {
        match event {
            Event::Handshaken {
                connection_type, ..
            } => {
                let now = Instant::now().into_std();
                match self.transports.on_handshaken(connection_type, now) {
                    Some(instead) => {
                        info!(
                            offered = %connection_type,
                            transport = instead,
                            "WebSocket fell back recently; this session stays on {instead}."
                        );
                        self.session.set_connection_type(instead);
                    }
                    None => info!(transport = %connection_type, "Session transport."),
                }
            }
            Event::Connected => self.transports.on_connected(),
            _ => {}
        }
    }

    fn start(&mut self, lane: Lane, mut messages: Vec<Message>) {
        // The session has already applied the outgoing extension hooks.
        let transport = self.transports.route(lane, &mut messages);
        let deadline = match lane {
            // A WebSocket on trial: its connect asks for an immediate answer.
            Lane::Connect if self.transports.is_trial() => self.options.max_network_delay,
            Lane::Connect => {
                self.session
                    .advice()
                    .timeout_or(self.options.default_timeout)
                    + self.options.max_network_delay
            }
            Lane::Other => self.options.max_network_delay,
        };
        if tracing::enabled!(tracing::Level::DEBUG) {
            let what: Vec<String> = messages.iter().map(Message::describe).collect();
            debug!(?lane, transport = transport.name(), messages = ?what, ?deadline, "Sending.");
        }
        let request = transport.send(messages, deadline);
        match lane {
            Lane::Connect => self.connect_lane = Some(request),
            Lane::Other => self.other_lane = Some(request),
        }
    }

    fn incoming(&self, mut messages: Vec<Message>) -> Vec<Message> {
        for message in &mut messages {
            for ext in &self.options.extensions {
                ext.incoming(message);
            }
            trace!(channel = %message.channel, message = ?message, "Received.");
        }
        messages
    }

    async fn deliver(&mut self, message: Message) {
        let mut delivered = false;
        let mut gone = Vec::new();
        // Every matching listener but the last gets a copy; the last one takes the message.
        let matching = self.matching(&message.channel);
        let last = matching.last().copied();
        let mut message = Some(message);
        for i in matching {
            let copy = if Some(i) == last {
                message.take()
            } else {
                message.clone()
            };
            let Some(copy) = copy else { break };
            // Without a send future unless the reader is behind (then wait: back-pressure).
            let sent = match self.listeners[i].tx.try_send(Box::new(copy)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(copy)) => self.listeners[i]
                    .tx
                    .send(copy)
                    .await
                    .map_err(|SendError(back)| back),
                Err(TrySendError::Closed(back)) => Err(back),
            };
            match sent {
                Ok(()) => delivered = true,
                Err(back) => {
                    gone.push(i);
                    if message.is_none() {
                        message = Some(*back);
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.forget(gone);
        }
        if !delivered && let Some(message) = message {
            self.emit(Event::Unrouted {
                reason: Unrouted::NoSubscription,
                message: Box::new(message),
            });
        }
    }

    /// The positions of the listeners with a pattern that matches `channel`, ascending: from
    /// an index of their patterns (built again after the listeners changed), so that a
    /// delivery costs the same with one subscription or ten thousand.
    fn matching(&mut self, channel: &str) -> Vec<usize> {
        let listeners = &self.listeners;
        self.index
            .get_or_insert_with(|| {
                let mut index = ChannelIndex::new();
                for (i, listener) in listeners.iter().enumerate() {
                    for pattern in &listener.patterns {
                        index.insert(pattern, i);
                    }
                }
                index
            })
            .matches(channel)
    }

    /// Drops the listeners `gone` (ascending indices) whose readers went away, and
    /// unsubscribes the patterns nobody else reads.
    fn forget(&mut self, gone: Vec<usize>) {
        let now = Instant::now().into_std();
        self.index = None;
        for i in gone.into_iter().rev() {
            let listener = self.listeners.remove(i);
            for pattern in listener.patterns {
                if !self.listeners.iter().any(|l| l.patterns.contains(&pattern)) {
                    debug!(subscription = %pattern, "Last reader dropped; unsubscribing.");
                    self.session.unsubscribe(pattern.as_str(), now);
                }
            }
        }
    }

    fn publish_done(&mut self, id: String, result: Result<Message, PublishError>) {
        let unclaimed = match self.publishes.remove(&id) {
            Some(reply) => reply.send(result),
            None => Some(result),
        };
        match unclaimed {
            None => {}
            Some(Ok(message)) => self.emit(Event::Unrouted {
                reason: Unrouted::CallerGone,
                message: Box::new(message),
            }),
            Some(Err(error)) => self.emit(Event::PublishFailed { id, error }),
        }
    }

    fn emit(&mut self, event: Event) {
        self.log_event(&event);
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event)) => {
                // Never the event itself above trace: an unroutable one holds a payload.
                trace!(?event, "Dropped event.");
                const FULL: &str =
                    "Event buffer full; the event is dropped (read Events to keep up).";
                if self.allow(FULL) {
                    warn!(event = event_name(&event), "{FULL}");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Whether a warning that can repeat once per message may be logged now.
    fn allow(&mut self, key: &'static str) -> bool {
        let now = Instant::now().into_std();
        log_limit::report(&self.log_limit.expired(now), log_limit::WINDOW);
        self.log_limit.allow(key, now)
    }

    /// Logs `event`: lifecycle events as they come, those that can come once per message
    /// rate-limited.
    fn log_event(&mut self, event: &Event) {
        match event {
            Event::Unrouted { reason, message } => {
                const UNROUTED: &str = "Message could not be routed.";
                if self.allow(UNROUTED) {
                    warn!(?reason, channel = %message.channel, id = ?message.id, "{UNROUTED}")
                }
            }
            Event::PublishFailed { id, error } if *error != PublishError::Closed => {
                const UNCLAIMED: &str = "Publish failed and nobody awaits it.";
                if self.allow(UNCLAIMED) {
                    warn!(%id, %error, "{UNCLAIMED}")
                }
            }
            _ => log_event(event),
        }
    }
}

/// The variant's name, for logs (never its fields: some hold payloads).
fn event_name(event: &Event) -> &'static str {
    match event {
        Event::Handshaken { .. } => "Handshaken",
        Event::HandshakeFailed { .. } => "HandshakeFailed",
        Event::TokenRefreshed { .. } => "TokenRefreshed",
        Event::AuthenticationFailed { .. } => "AuthenticationFailed",
        Event::Connected => "Connected",
        Event::ConnectFailed { .. } => "ConnectFailed",
        Event::SessionLost { .. } => "SessionLost",
        Event::Disconnected { .. } => "Disconnected",
        Event::SubscriptionConfirmed { .. } => "SubscriptionConfirmed",
        Event::SubscriptionFailed { .. } => "SubscriptionFailed",
        Event::Unsubscribed { .. } => "Unsubscribed",
        Event::MultipleClients => "MultipleClients",
        Event::BadReply { .. } => "BadReply",
        Event::Unrouted { .. } => "Unrouted",
        Event::PublishFailed { .. } => "PublishFailed",
        Event::Stopped { .. } => "Stopped",
    }
}

/// Logs a lifecycle event (the per-message ones go through [`Driver::log_event`]).
fn log_event(event: &Event) {
    match event {
        Event::Handshaken { .. }
        | Event::HandshakeFailed { .. }
        | Event::TokenRefreshed { .. }
        | Event::AuthenticationFailed { .. } => log_session_event(event),
        Event::Connected
        | Event::ConnectFailed { .. }
        | Event::SessionLost { .. }
        | Event::Disconnected { .. } => log_connection_event(event),
        Event::SubscriptionConfirmed { .. }
        | Event::SubscriptionFailed { .. }
        | Event::Unsubscribed { .. } => log_subscription_event(event),
        Event::MultipleClients
        | Event::Unrouted { .. }
        | Event::BadReply { .. }
        | Event::PublishFailed { .. }
        | Event::Stopped { .. } => log_other_event(event),
    }
}

/// Logs a handshake or token event (the others are [`log_event`]'s other groups).
fn log_session_event(event: &Event) {
    match event {
        Event::Handshaken {
            client_id: _,
            connection_type,
            rehandshake,
        } => {
            info!(%connection_type, rehandshake, "Handshake succeeded.")
        }
        Event::HandshakeFailed {
            reason,
            attempt,
            retry_in,
        } => {
            warn!(%reason, attempt, ?retry_in, "Handshake failed; will retry.")
        }
        Event::TokenRefreshed { initial: true } => info!("Token fetched."),
        Event::TokenRefreshed { initial: false } => info!("Token refreshed."),
        Event::AuthenticationFailed {
            reason,
            attempt,
            retry_in,
        } => {
            warn!(%reason, attempt, ?retry_in, "Authentication failed; will fetch a new token.")
        }
        _ => {}
    }
}

/// Logs a `/meta/connect` event: connected, failed, session lost or disconnected.
fn log_connection_event(event: &Event) {
    match event {
        Event::Connected => info!("Connected."),
        Event::ConnectFailed {
            reason,
            attempt,
            next: Next::Retry(wait),
        } => {
            warn!(%reason, attempt, ?wait, "Connect failed; will retry.")
        }
        Event::ConnectFailed {
            reason,
            attempt,
            next: Next::Handshake(wait),
        } => {
            warn!(%reason, attempt, ?wait, "Connect failed; will handshake again.")
        }
        Event::SessionLost {
            reason,
            last_connected,
            subscriptions,
        } => {
            let idle = last_connected.map(|at| at.elapsed());
            warn!(%reason, ?idle, ?subscriptions, "Session lost; will handshake again.")
        }
        Event::Disconnected { reason } => warn!(%reason, "Disconnected."),
        _ => {}
    }
}

/// Logs a subscribe or unsubscribe outcome.
fn log_subscription_event(event: &Event) {
    match event {
        Event::SubscriptionConfirmed { subscription } => info!(%subscription, "Subscribed."),
        Event::SubscriptionFailed {
            subscription,
            error,
            attempt,
            retry_in,
        } => {
            warn!(%subscription, %error, attempt, ?retry_in, "Subscription failed; will retry.")
        }
        Event::Unsubscribed {
            subscription,
            error: None,
        } => info!(%subscription, "Unsubscribed."),
        Event::Unsubscribed {
            subscription,
            error: Some(error),
        } => {
            warn!(%subscription, %error, "Unsubscribe failed.")
        }
        _ => {}
    }
}

/// Logs a server warning, an unroutable or bad reply, an unawaited publish failure, or the
/// client's stop.
fn log_other_event(event: &Event) {
    match event {
        Event::MultipleClients => warn!(
            "The server reports several sessions sharing this client's cookie (multiple-clients advice)."
        ),
        Event::Unrouted { reason, message } => {
            warn!(?reason, channel = %message.channel, id = ?message.id, "Message could not be routed.")
        }
        // The failed request is logged as such (a failed connect, subscription or publish).
        Event::BadReply { error } => debug!(%error, "Bad reply."),
        // Its caller gave up; at shutdown that is expected and not worth a warning.
        Event::PublishFailed {
            id,
            error: PublishError::Closed,
        } => {
            debug!(%id, "Publish abandoned at shutdown; nobody awaits it.")
        }
        Event::PublishFailed { id, error } => {
            warn!(%id, %error, "Publish failed and nobody awaits it.")
        }
        Event::Stopped {
            reason: reason @ StopReason::AuthenticationFailed { .. },
        } => error!(%reason, "Bayeux client stopped."),
        Event::Stopped { reason } => info!(%reason, "Bayeux client stopped."),
        _ => {}
    }
}

async fn poll_lane(lane: &mut Option<SendFuture>) -> Result<Vec<Message>, TransportError> {
    match lane {
        Some(request) => request.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn poll_pushed(pushed: &mut Option<mpsc::Receiver<Vec<Message>>>) -> Option<Vec<Message>> {
    match pushed {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn poll_token(lane: &mut Option<TokenFuture>) -> Result<AccessToken, TokenError> {
    match lane {
        Some(fetch) => fetch.as_mut().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

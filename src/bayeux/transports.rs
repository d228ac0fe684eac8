//! Which transport carries each request: the driver's routing between the transports of
//! one client, and the WebSocket fallback of `auto`.
//!
//! The handshake always goes over long-polling (every Bayeux server has it, and its reply
//! names the server's transports even when ours are not among them, so that a configured
//! `websocket` the server lacks is an error naming what it offers). With
//! [`TransportChoice::WebSocket`] everything after it goes over WebSocket. With
//! [`TransportChoice::Auto`] the handshake offers `websocket` first. When the server picks it, the
//! session's `/meta/connect`s go over WebSocket; everything else stays on long-polling until
//! the first connect over WebSocket has succeeded (so nothing but that connect is at risk
//! while the WebSocket is unproven), then goes over WebSocket too. A WebSocket that fails
//! before that (upgrade refused, a 4xx on the upgrade, no answer) makes the driver resend
//! the connect over long-polling and keep the session there; WebSocket is tried again only
//! at a later handshake, and only once a backoff since the fallback has passed, so a broken
//! proxy cannot make the client flip-flop. Once a WebSocket has carried a successful connect
//! its failures are the session's (retried over WebSocket, as CometD's `stickyReconnect`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc;

use super::channel::META_HANDSHAKE;
use super::error::TransportError;
use super::message::Message;
use super::session::Lane;
use super::transport::{Transport, TransportChoice};
use crate::backoff::{Backoff, BackoffOptions};

/// Where the WebSocket of an `auto` or `websocket` client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ws {
    /// The current session does not use it.
    Unused,
    /// The session uses it; no connect over it has succeeded yet.
    Trying,
    /// A connect over it has succeeded in this session.
    Proven,
    /// It failed before its first successful connect: not used before this instant.
    Avoided(Instant),
}

/// The name of the transport in use, shared with the client handles.
#[derive(Debug, Clone, Default)]
pub(super) struct InUse(Arc<Mutex<Option<&'static str>>>);

impl InUse {
    pub(super) fn get(&self) -> Option<&'static str> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, name: &'static str) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(name);
    }
}

/// A fallback from WebSocket to long-polling, for the driver to carry out and log.
pub(super) struct Fallback {
    /// The connect to send again, over long-polling.
    pub(super) connect: Vec<Message>,
    /// When WebSocket may be tried again (at a handshake).
    pub(super) retry_after: std::time::Duration,
}

/// The transports of one client and the routing between them.
pub(super) struct Transports {
    choice: TransportChoice,
    /// Long-polling or callback-polling (or the one transport given).
    http: Arc<dyn Transport>,
    ws: Option<Arc<dyn Transport>>,
    state: Ws,
    backoff: Backoff,
    /// The connect in flight over an unproven WebSocket, to resend on a fallback.
    trial: Option<Vec<Message>>,
    in_use: InUse,
}

impl Transports {
    /// One transport for everything.
    pub(super) fn single(transport: Arc<dyn Transport>) -> Self {
        let in_use = InUse::default();
        in_use.set(transport.name());
        Transports {
            choice: TransportChoice::LongPolling,
            http: transport,
            ws: None,
            state: Ws::Unused,
            backoff: Backoff::new(BackoffOptions::default()),
            trial: None,
            in_use,
        }
    }

    /// `http` (long-polling) and `ws` as `choice` says, with `backoff` between fallbacks.
    pub(super) fn with_websocket(
        choice: TransportChoice,
        http: Arc<dyn Transport>,
        ws: Arc<dyn Transport>,
        backoff: BackoffOptions,
    ) -> Self {
        let mut transports = Self::single(http);
        transports.choice = choice;
        transports.ws = Some(ws);
        transports.backoff = Backoff::new(backoff);
        transports
    }

    /// The connection types to offer, in order of preference.
    pub(super) fn offered(&self) -> Vec<String> {
        match self.ws {
            None => vec![self.http.name().to_owned()],
            Some(_) => self.choice.offered(),
        }
    }

    /// Who reads the name of the transport in use.
    pub(super) fn in_use(&self) -> InUse {
        self.in_use.clone()
    }

    /// The pushed batches of the WebSocket, once.
    pub(super) fn pushed(&self) -> Option<mpsc::Receiver<Vec<Message>>> {
        self.ws.as_ref().and_then(|ws| ws.pushed())
    }

    /// Every transport sends `token` from now on.
    pub(super) fn set_bearer_token(&self, token: Option<&str>) -> Result<(), String> {
        self.http.set_bearer_token(token)?;
        match &self.ws {
            Some(ws) => ws.set_bearer_token(token),
            None => Ok(()),
        }
    }

    /// A handshake negotiated `connection_type`. Returns the connection type the session
    /// must use instead, when WebSocket is avoided after a recent fallback.
    pub(super) fn on_handshaken(
        &mut self,
        connection_type: &str,
        now: Instant,
    ) -> Option<&'static str> {
        self.trial = None;
        if self.ws.is_none() || connection_type != "websocket" {
            if !matches!(self.state, Ws::Avoided(_)) {
                self.state = Ws::Unused;
            }
            return None;
        }
        match self.state {
            Ws::Avoided(until) if now < until && self.choice == TransportChoice::Auto => {
                Some(self.http.name())
            }
            _ => {
                self.state = Ws::Trying;
                None
            }
        }
    }

    /// A `/meta/connect` succeeded.
    pub(super) fn on_connected(&mut self) {
        if self.state == Ws::Trying {
            self.state = Ws::Proven;
            self.backoff.reset();
        }
        self.trial = None;
    }

    /// The transport for a batch on `lane` (a connect is stamped with its name).
    pub(super) fn route(&mut self, lane: Lane, messages: &mut [Message]) -> Arc<dyn Transport> {
        let transport = match (&self.ws, self.state) {
            (None, _) => Arc::clone(&self.http),
            (Some(_), _)
                if messages
                    .first()
                    .is_some_and(|m| m.channel == META_HANDSHAKE) =>
            {
                Arc::clone(&self.http)
            }
            (Some(ws), _) if self.choice == TransportChoice::WebSocket => Arc::clone(ws),
            (Some(ws), Ws::Proven) => Arc::clone(ws),
            (Some(ws), Ws::Trying) if lane == Lane::Connect => {
                self.trial = Some(messages.to_vec());
                Arc::clone(ws)
            }
            (Some(_), _) => Arc::clone(&self.http),
        };
        if lane == Lane::Connect {
            for message in messages.iter_mut() {
                message.connection_type = Some(transport.name().to_owned());
            }
            self.in_use.set(transport.name());
        }
        transport
    }

    /// Whether the connect in flight is the trial of an unproven WebSocket (which asks for
    /// an immediate answer, so needs no more than the network's allowance).
    pub(super) fn is_trial(&self) -> bool {
        self.trial.is_some()
    }

    /// The result of a request on `lane`: a failed trial connect of `auto` is a fallback,
    /// whatever the failure (a 401/403 on the upgrade too: the handshake over long-polling
    /// just took the same credentials, so it is a proxy's refusal).
    pub(super) fn on_result(
        &mut self,
        lane: Lane,
        result: &Result<Vec<Message>, TransportError>,
        now: Instant,
    ) -> Option<Fallback> {
        if lane != Lane::Connect || self.trial.is_none() {
            return None;
        }
        if self.choice != TransportChoice::Auto || result.is_ok() {
            self.trial = None;
            return None;
        }
        let mut connect = self.trial.take()?;
        let retry_after = self.backoff.next_delay();
        self.state = Ws::Avoided(now + retry_after);
        for message in &mut connect {
            message.connection_type = Some(self.http.name().to_owned());
        }
        self.in_use.set(self.http.name());
        Some(Fallback {
            connect,
            retry_after,
        })
    }

    /// The name of the fallback transport.
    pub(super) fn http_name(&self) -> &'static str {
        self.http.name()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bayeux::transport::SendFuture;

    struct Named(&'static str);

    impl Transport for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn send(&self, _messages: Vec<Message>, _deadline: Duration) -> SendFuture {
            Box::pin(std::future::pending())
        }
    }

    fn auto() -> Transports {
        Transports::with_websocket(
            TransportChoice::Auto,
            Arc::new(Named("long-polling")),
            Arc::new(Named("websocket")),
            BackoffOptions {
                increment: Duration::from_secs(10),
                max: Duration::from_secs(60),
                jitter: 0.0,
            },
        )
    }

    fn route(t: &mut Transports, lane: Lane, channel: &str) -> (&'static str, Option<String>) {
        let mut messages = vec![Message::new(channel)];
        let name = t.route(lane, &mut messages).name();
        (name, messages.remove(0).connection_type)
    }

    #[test]
    fn auto_tries_websocket_for_the_connect_only_until_it_has_carried_one() {
        let mut t = auto();
        let now = Instant::now();
        assert_eq!(t.offered(), vec!["websocket", "long-polling"]);
        assert_eq!(route(&mut t, Lane::Other, META_HANDSHAKE).0, "long-polling");
        assert_eq!(t.on_handshaken("websocket", now), None);
        assert_eq!(
            route(&mut t, Lane::Connect, "/meta/connect"),
            ("websocket", Some("websocket".into()))
        );
        assert!(t.is_trial());
        assert_eq!(
            route(&mut t, Lane::Other, "/meta/subscribe").0,
            "long-polling"
        );
        assert!(t.on_result(Lane::Connect, &Ok(Vec::new()), now).is_none());
        t.on_connected();
        assert_eq!(route(&mut t, Lane::Other, "/a").0, "websocket");
        assert_eq!(t.in_use().get(), Some("websocket"));
    }

    #[test]
    fn a_failed_trial_falls_back_and_websocket_waits_for_a_handshake_after_the_backoff() {
        let mut t = auto();
        let now = Instant::now();
        t.on_handshaken("websocket", now);
        route(&mut t, Lane::Connect, "/meta/connect");
        let failed = Err(TransportError::Status { status: 403 });
        let fallback = t
            .on_result(Lane::Connect, &failed, now)
            .unwrap_or_else(|| panic!("no fallback"));
        assert_eq!(fallback.retry_after, Duration::from_secs(10));
        assert_eq!(
            fallback.connect[0].connection_type.as_deref(),
            Some("long-polling")
        );
        assert_eq!(t.in_use().get(), Some("long-polling"));
        assert_eq!(
            route(&mut t, Lane::Connect, "/meta/connect").0,
            "long-polling"
        );
        // A handshake within the backoff stays on long-polling; one after it tries again.
        assert_eq!(t.on_handshaken("websocket", now), Some("long-polling"));
        assert_eq!(
            t.on_handshaken("websocket", now + Duration::from_secs(11)),
            None
        );
        assert_eq!(route(&mut t, Lane::Connect, "/meta/connect").0, "websocket");
        // The second fallback waits longer.
        let second = t.on_result(Lane::Connect, &failed, now);
        assert_eq!(second.map(|f| f.retry_after), Some(Duration::from_secs(20)));
    }

    #[test]
    fn websocket_only_never_falls_back_and_one_transport_takes_everything() {
        let mut t = Transports::with_websocket(
            TransportChoice::WebSocket,
            Arc::new(Named("long-polling")),
            Arc::new(Named("websocket")),
            BackoffOptions::default(),
        );
        let now = Instant::now();
        assert_eq!(t.offered(), vec!["websocket"]);
        assert_eq!(route(&mut t, Lane::Other, META_HANDSHAKE).0, "long-polling");
        t.on_handshaken("websocket", now);
        assert_eq!(route(&mut t, Lane::Other, "/meta/subscribe").0, "websocket");
        route(&mut t, Lane::Connect, "/meta/connect");
        let failed = Err(TransportError::Io("refused".into()));
        assert!(t.on_result(Lane::Connect, &failed, now).is_none());

        let mut one = Transports::single(Arc::new(Named("callback-polling")));
        assert_eq!(one.offered(), vec!["callback-polling"]);
        assert_eq!(
            route(&mut one, Lane::Other, META_HANDSHAKE).0,
            "callback-polling"
        );
        assert_eq!(
            route(&mut one, Lane::Connect, "/meta/connect").1.as_deref(),
            Some("callback-polling")
        );
    }
}

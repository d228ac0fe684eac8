//! The client task: it only polls rumqttc and routes what comes out (to the tracker and the
//! event channel), sleeping the backoff after every failure. rumqttc sends pings only while it
//! is polled, so nothing here waits on anything else for long: the one wait on the
//! application is for room in the event channel for a QoS 1/2 message, which the broker's
//! in-flight limit bounds.
//!
//! `poll()` is never cancelled while connected (rumqttc may be mid-write and would lose a
//! packet); only the stop signal, which ends everything, interrupts it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::time::Instant;
use tracing::{Span, debug, error, info, warn};

use crate::backoff::Backoff;

use super::engine::Engine;
use super::options::{MqttOptions, Protocol};
use super::tracker::{Ev, Replay, Tracker};
use super::{ConnectionError, MqttEvent, QoS};

/// Most requests rumqttc writes to the socket before it flushes. One `writev` and one
/// wake-up of the broker per batch instead of per packet; PUBLISH_SLOTS publishes plus acks
/// are in its request channel at most, so a batch rarely reaches this.
const REQUEST_BATCH: usize = 64;

/// How many slots of an in-flight window of `window` publishes must be free before new
/// requests go out while publishes are in flight: half of it. At full speed the broker's
/// PUBACKs then free room in groups and the publishes go out in groups, in one write each,
/// instead of two or three per write and wake-up, with no wait while the window is
/// mostly free (vendor/rumqttc/PATCHES.md, "Holding writes for room"; CHANGELOG, "Benchmark history", item 13).
///
/// None while the client also receives messages it must acknowledge: their acks wait in the
/// same request channel, and holding them back stalled both directions under two-way load
/// (until the next keep-alive ping) and held the broker's sends to us back.
fn write_hold(window: u16, receives_acked: bool) -> u16 {
    if receives_acked { 0 } else { window / 2 }
}

/// State shared by the handles and the driver.
pub(super) struct Shared {
    tracker: Mutex<Tracker>,
    /// Publishes allowed in rumqttc's request channel at once (back-pressure for callers).
    pub(super) permits: Arc<Semaphore>,
    /// Woken when no publish is outstanding.
    pub(super) idle: Arc<Notify>,
    pub(super) protocol: Protocol,
    /// `mqtt{broker}`, for logs from handle methods.
    pub(super) span: Span,
}

impl Shared {
    pub(super) fn new(
        tracker: Tracker,
        permits: Arc<Semaphore>,
        idle: Arc<Notify>,
        protocol: Protocol,
        span: Span,
    ) -> Self {
        Shared {
            tracker: Mutex::new(tracker),
            permits,
            idle,
            protocol,
            span,
        }
    }

    /// The tracker. Never held across an `.await`. A panic while it was held is a bug, but
    /// the state is still the best there is, so a poisoned lock is used anyway.
    pub(super) fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The task; see the module documentation.
pub(super) struct Driver {
    engine: Engine,
    shared: Arc<Shared>,
    events: mpsc::Sender<MqttEvent>,
    backoff: Backoff,
    /// `MqttOptions::stable_after`.
    stable_after: Duration,
    connect_timeout: Duration,
    connected: bool,
    /// When the current connection's CONNACK came.
    connected_at: Option<Instant>,
    ever_connected: bool,
    failed_attempts: u32,
    /// Set once our DISCONNECT was written: the task ends.
    disconnected: bool,
    /// Publishes to send again after a CONNACK that are not in rumqttc's `pending` queue yet:
    /// they are fed in one at a time as its in-flight window allows (see `top_up`).
    backlog: VecDeque<Replay>,
    /// Our in-flight limit (`MqttOptions::inflight`).
    inflight_limit: u16,
    /// rumqttc's in-flight limit on this connection: ours, or the broker's smaller receive
    /// maximum.
    window: u16,
    /// Events handled together (kept for its capacity).
    batch: Vec<Ev>,
    /// QoS 0 messages dropped since the last `Dropped` event: last topic and count.
    dropped: Option<(String, u64)>,
    stop: watch::Receiver<bool>,
    stopped: watch::Sender<bool>,
}

impl Driver {
    pub(super) fn new(
        engine: Engine,
        shared: Arc<Shared>,
        events: mpsc::Sender<MqttEvent>,
        options: &MqttOptions,
        stop: watch::Receiver<bool>,
        stopped: watch::Sender<bool>,
    ) -> Self {
        Driver {
            engine,
            shared,
            events,
            backoff: Backoff::new(options.backoff),
            stable_after: options.stable_after,
            connect_timeout: options.connect_timeout,
            connected: false,
            connected_at: None,
            ever_connected: false,
            failed_attempts: 0,
            disconnected: false,
            backlog: VecDeque::new(),
            inflight_limit: options.inflight,
            window: options.inflight,
            batch: Vec::new(),
            dropped: None,
            stop,
            stopped,
        }
    }

    /// Runs until the stop signal (or the last handle is dropped), or our DISCONNECT went out.
    pub(super) async fn run(mut self) {
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            // An error means every handle is gone: stop as well.
            _ = stop.wait_for(|stop| *stop) => debug!("Stop requested."),
            () = self.main_loop() => {}
        }
        self.shared.lock().stop();
        self.stopped.send_replace(true);
        info!("MQTT client stopped.");
    }

    async fn main_loop(&mut self) {
        while !self.disconnected {
            let polled = if self.connected {
                self.top_up();
                let receives_acked = self.shared.lock().receives_acked();
                self.engine
                    .set_write_hold(write_hold(self.window, receives_acked));
                // While the backlog is not empty, requests from the channel (newer) must not
                // follow a backlog publish in the same poll: one request per poll, as
                // `top_up` expects.
                self.engine.set_request_batch(if self.backlog.is_empty() {
                    REQUEST_BATCH
                } else {
                    1
                });
                self.engine.poll().await
            } else {
                // Not connected, rumqttc holds no state a cancelled connect could corrupt.
                tokio::time::timeout(self.connect_timeout, self.engine.poll())
                    .await
                    .unwrap_or(Err(ConnectionError::Timeout(self.connect_timeout)))
            };
            match polled {
                Ok(Ev::ConnAck {
                    session_present,
                    max_packet_size,
                    receive_maximum,
                }) => {
                    self.window = receive_maximum.map_or(self.inflight_limit, |broker| {
                        broker.min(self.inflight_limit)
                    });
                    self.on_connack(session_present, max_packet_size).await
                }
                Ok(event) => {
                    // With the events rumqttc buffered behind this one, under one lock.
                    let mut batch = std::mem::take(&mut self.batch);
                    batch.push(event);
                    self.engine.take_ready_events(&mut batch);
                    self.on_events(batch.drain(..)).await;
                    self.batch = batch;
                }
                Err(error) => {
                    let wait = self.on_error(error).await;
                    if !self.disconnected {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        info!("Disconnected from the MQTT broker.");
    }

    async fn on_connack(&mut self, session_present: bool, max_packet_size: Option<u32>) {
        let resubscribe = !self.ever_connected;
        let (resent, republished) = {
            let mut tracker = self.shared.lock();
            let replays = tracker.on_connack(session_present, resubscribe, max_packet_size);
            let resent = replays
                .iter()
                .filter(|r| matches!(r, Replay::Resend { .. } | Replay::Release { .. }))
                .count();
            let (fresh, other): (Vec<Replay>, Vec<Replay>) = replays
                .into_iter()
                .partition(|r| matches!(r, Replay::Fresh(_)));
            let republished = fresh.len();
            // Before the next poll, so rumqttc sends these ahead of its request channel.
            // Retransmissions were in flight together before; new publishes wait for room
            // in the window, or a broker would see more than its receive maximum.
            self.engine.push_pending(other);
            self.backlog = fresh.into();
            tracker.flush_deferred();
            (resent, republished)
        };
        self.connected = true;
        self.ever_connected = true;
        self.failed_attempts = 0;
        // The backoff starts over only once this connection proved stable (see `on_error`).
        self.connected_at = Some(Instant::now());
        info!(
            session_present,
            resent,
            republished,
            window = self.window,
            "Connected to the MQTT broker."
        );
        self.deliver(MqttEvent::Connected { session_present }).await;
    }

    /// Moves the next backlog publish into rumqttc's `pending` queue if rumqttc would
    /// otherwise read its request channel now (pending empty, window not full, no packet id
    /// collision). Called before every poll, and rumqttc takes one request per poll, so
    /// messages from the channel (newer) never overtake the backlog (older), which keeps the
    /// tracker's order. One at a time also keeps rumqttc from sending past the window (its
    /// `pending` queue ignores it) and from overwriting a held colliding publish.
    fn top_up(&mut self) {
        if !self.engine.pending_is_empty() || self.engine.has_collision() {
            return;
        }
        let needs_room = match self.backlog.front() {
            None => return,
            Some(Replay::Fresh(message)) => message.qos != QoS::AtMostOnce,
            Some(_) => false,
        };
        if needs_room && self.engine.inflight() >= self.window {
            return;
        }
        self.engine.push_pending(self.backlog.pop_front());
    }

    async fn on_events(&mut self, events: impl IntoIterator<Item = Ev>) {
        let mut out = Vec::new();
        {
            let mut tracker = self.shared.lock();
            for event in events {
                if event == Ev::OutDisconnect {
                    self.disconnected = true;
                }
                tracker.on_event(event, &mut out);
            }
            tracker.flush_deferred();
        }
        for event in out {
            self.deliver(event).await;
        }
    }

    /// Handles a poll error and returns how long to wait before the next attempt.
    async fn on_error(&mut self, error: ConnectionError) -> Duration {
        let buffered = self.engine.take_buffered_events();
        self.on_events(buffered).await;
        let mut drained = self.engine.take_pending();
        // The backlog lies between rumqttc's pending requests and its channel in the
        // tracker's order, and is handed back the same way.
        drained.publishes += std::mem::take(&mut self.backlog).len();
        self.shared.lock().on_connection_lost(drained);
        // A connection that lasted starts the backoff over; one that dropped soon after its
        // CONNACK (flapping) does not.
        let lived = self.connected_at.take().map(|at| at.elapsed());
        if lived.is_some_and(|lived| lived >= self.stable_after) {
            self.backoff.reset();
        }

        // Refused credentials stay refused until someone changes them: retrying sooner
        // than the longest interval only floods the broker's log.
        let retry_in = if error.is_credentials_refused() {
            self.backoff.longest_delay()
        } else {
            self.backoff.next_delay()
        };
        if std::mem::take(&mut self.connected) {
            warn!(%error, ?retry_in, ?lived, "Lost the connection to the MQTT broker; reconnecting.");
            self.deliver(MqttEvent::Disconnected { error }).await;
            return retry_in;
        }
        self.failed_attempts = self.failed_attempts.saturating_add(1);
        let attempt = self.failed_attempts;
        if error.is_credentials_refused() {
            error!(
                %error,
                attempt,
                ?retry_in,
                "The MQTT broker refused the credentials; check the user name and password. \
                 Will retry after the longest backoff interval."
            );
        } else {
            warn!(%error, attempt, ?retry_in, "Could not connect to the MQTT broker; will retry.");
        }
        self.deliver(MqttEvent::ConnectFailed {
            error,
            attempt,
            retry_in,
        })
        .await;
        retry_in
    }

    /// Hands an event to the application. QoS 0 messages are dropped (and counted) when the
    /// channel is full, as are `ConnectFailed` reports (logged anyway); anything else waits.
    async fn deliver(&mut self, event: MqttEvent) {
        self.report_drops();
        let event = match self.events.try_send(event) {
            Ok(()) | Err(TrySendError::Closed(_)) => return,
            Err(TrySendError::Full(event)) => event,
        };
        match event {
            MqttEvent::Message(message) if message.qos == QoS::AtMostOnce => {
                self.count_drop(message.topic);
            }
            MqttEvent::ConnectFailed { .. } => {
                debug!("Event channel full; a ConnectFailed event was not delivered.");
            }
            event => {
                debug!("Event channel full; waiting for the application to read.");
                // Closed means nobody reads events any more; nothing to do.
                let _ = self.events.send(event).await;
            }
        }
    }

    fn count_drop(&mut self, topic: String) {
        match &mut self.dropped {
            Some((last, count)) => {
                *last = topic;
                *count += 1;
            }
            None => {
                warn!(%topic, "Event channel full; dropping incoming QoS 0 messages.");
                self.dropped = Some((topic, 1));
            }
        }
    }

    fn report_drops(&mut self) {
        let Some((topic, count)) = self.dropped.take() else {
            return;
        };
        let event = MqttEvent::Dropped {
            topic: topic.clone(),
            count,
            reason: format!("{count} QoS 0 message(s) dropped: the event channel was full"),
        };
        if let Err(TrySendError::Full(_)) = self.events.try_send(event) {
            self.dropped = Some((topic, count));
        }
    }
}

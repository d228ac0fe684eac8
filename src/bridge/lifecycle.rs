//! Watching the Bayeux client's lifecycle, and the drain at shutdown.
//!
//! The drain runs in three steps, each bounded by the deadline (minus a second kept for the
//! goodbyes): MQTT → Bayeux settles first (what it did not get a verdict for stays with the
//! broker); then the Bayeux client delivers what it holds and disconnects, and Bayeux → MQTT
//! forwards until its subscriptions end and the broker acknowledged; then the `offline` status
//! and the MQTT disconnect. Nothing received is dropped without being counted.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::gaps::{self, GapKind};
use super::readiness::Readiness;
use super::shutdown::{Shutdown, Step};
use super::spooled::Delivery;
use super::stats::{self, Direction, Stats};
use super::{BridgeError, Shared, b2m};
use crate::bayeux::{self, Event};
use crate::metrics::{CauseLabels, OutcomeLabels};
use crate::mqtt::{MqttHandle, QoS};

/// Watches a Bayeux client's events on a task of its own (so a reload can replace it).
pub(crate) fn spawn_watcher(
    events: bayeux::Events,
    shared: &Arc<Shared>,
) -> tokio::task::JoinHandle<BridgeError> {
    tokio::spawn(watch_bayeux(events, Arc::clone(shared)))
}

/// Follows the Bayeux client's events for metrics, readiness, lost sessions and replay gaps;
/// resolves with the reason if the client stops for good, or a replay gap stops the bridge.
async fn watch_bayeux(mut events: bayeux::Events, shared: Arc<Shared>) -> BridgeError {
    let mut lost: Option<LostSession> = None;
    while let Some(event) = events.recv().await {
        if let Event::Stopped { reason } = &event {
            return BridgeError::BayeuxStopped(reason.to_string());
        }
        count_event(&shared.stats, &event);
        follow_readiness(&shared.readiness, &event);
        follow_transport(&shared, &event);
        if let Some(stop) = track_gaps(&mut lost, &shared, event).await {
            return stop;
        }
    }
    BridgeError::BayeuxStopped("the Bayeux client ended".to_owned())
}

/// Counts `event` in the metrics it belongs to (handshakes, reconnects, tokens, bad replies).
fn count_event(stats: &Stats, event: &Event) {
    let count = |family: &Family<CauseLabels, Counter>, cause| {
        family
            .get_or_create(&CauseLabels {
                side: "bayeux",
                cause,
            })
            .inc();
    };
    let metrics = &stats.metrics;
    match event {
        Event::Handshaken { rehandshake, .. } => count(
            &metrics.handshakes,
            if *rehandshake {
                "rehandshake"
            } else {
                "initial"
            },
        ),
        Event::HandshakeFailed { .. } => count(&metrics.reconnects, "handshake_failed"),
        Event::ConnectFailed { next, .. } => {
            let cause = match next {
                bayeux::Next::Retry(_) => "connect_failed",
                bayeux::Next::Handshake(_) => "session_lost",
            };
            count(&metrics.reconnects, cause);
        }
        Event::TokenRefreshed { .. } => {
            let labels = OutcomeLabels { outcome: "ok" };
            metrics.tokens.get_or_create(&labels).inc();
        }
        Event::AuthenticationFailed { .. } => {
            let labels = OutcomeLabels { outcome: "error" };
            metrics.tokens.get_or_create(&labels).inc();
        }
        Event::BadReply { error } => {
            let cause = match error {
                bayeux::TransportError::TooLarge { .. } => "too_large",
                bayeux::TransportError::TooManyMessages { .. } => "too_many_messages",
                _ => "invalid",
            };
            count(&metrics.bad_replies, cause);
        }
        _ => {}
    }
}

/// On each successful connect, marks the transport the session uses in the metrics (after
/// an `auto` fallback, long-polling).
fn follow_transport(shared: &Shared, event: &Event) {
    if matches!(event, Event::Connected)
        && let Some(transport) = shared.bayeux().transport()
    {
        shared.stats.metrics.set_transport(transport);
    }
}

/// Tells readiness what `event` says about the Bayeux side: a new session, connected or not,
/// a subscription confirmed.
fn follow_readiness(readiness: &Readiness, event: &Event) {
    match event {
        Event::Handshaken { .. } => readiness.bayeux_new_session(),
        Event::Connected => readiness.bayeux_connected(true),
        Event::ConnectFailed { .. } | Event::Disconnected { .. } => {
            readiness.bayeux_connected(false)
        }
        Event::SubscriptionConfirmed { subscription } => readiness.bayeux_confirmed(subscription),
        _ => {}
    }
}

/// Follows lost sessions until the new session has subscribed again (then their gap is
/// reported), and subscriptions the server refused; returns the error when a refused replay
/// id stops the bridge.
async fn track_gaps(
    lost: &mut Option<LostSession>,
    shared: &Arc<Shared>,
    event: Event,
) -> Option<BridgeError> {
    match event {
        Event::SessionLost {
            reason,
            last_connected,
            subscriptions,
        } if !subscriptions.is_empty() => {
            let back_pressured = shared.b2m_pressure.was_full_since(last_connected);
            let since = last_connected.map_or_else(SystemTime::now, gaps::wall_clock);
            *lost = Some(LostSession::add(
                lost.take(),
                since,
                reason,
                subscriptions,
                back_pressured,
            ));
        }
        Event::SubscriptionConfirmed { subscription } => {
            resubscribed(lost, shared, &subscription);
        }
        Event::Unsubscribed { subscription, .. } => {
            if let Some(session) = lost {
                session.waiting.remove(&subscription);
            }
        }
        Event::SubscriptionFailed {
            subscription,
            error,
            ..
        } => return subscription_failed(shared, &subscription, &error).await,
        _ => {}
    }
    None
}

/// The new session confirmed `subscription`: once it has confirmed every subscription of
/// the `lost` session, that session's gap is reported.
fn resubscribed(lost: &mut Option<LostSession>, shared: &Arc<Shared>, subscription: &str) {
    let Some(session) = lost else {
        return;
    };
    session.waiting.remove(subscription);
    if session.waiting.is_empty() {
        let gap = session.gap(shared);
        *lost = None;
        // On a task of its own: a broker that is down as well must not hold up the readiness
        // events behind.
        let shared = Arc::clone(shared);
        tokio::spawn(async move { gaps::report(&shared, &gap, gaps::REPORT_TIMEOUT).await });
    }
}

/// The server refused `subscription` with `error`: with replay, a refused stored replay id
/// is a gap, reported; it stops the bridge (the error returned) when `replay.on_invalid`
/// says so.
async fn subscription_failed(
    shared: &Shared,
    subscription: &str,
    error: &str,
) -> Option<BridgeError> {
    let gap = shared
        .replay
        .as_ref()
        .and_then(|r| r.on_subscription_failed(subscription, error))?;
    warn!(
        channel = %gap.channel,
        last_good_replay_id = gap.last_good,
        resumed_from = ?gap.resumed_from,
        error = %gap.error,
        "The Bayeux server refused the stored replay id: events after it that the server no \
         longer retains are lost."
    );
    gaps::report(shared, &gap.report(), gaps::REPORT_TIMEOUT).await;
    if gap.resumed_from.is_some() {
        return None;
    }
    Some(BridgeError::ReplayGap {
        channel: gap.channel,
        last_good: gap.last_good,
        error: gap.error,
    })
}

/// A lost Bayeux session whose gap ends when the new session has subscribed again.
struct LostSession {
    /// The last successful `/meta/connect` of the lost session.
    since: SystemTime,
    /// Why it was lost (the server's error).
    reason: String,
    /// What it had subscribed.
    subscriptions: BTreeSet<String>,
    /// What the new session has not confirmed yet.
    waiting: BTreeSet<String>,
    /// Whether the Bayeux → MQTT queue was full meanwhile (the bridge had stopped polling).
    back_pressured: bool,
}

impl LostSession {
    /// The session lost `since`, with `subscriptions`; added to the `earlier` one when it was
    /// lost again before the new session subscribed (one longer gap).
    fn add(
        earlier: Option<LostSession>,
        since: SystemTime,
        reason: String,
        subscriptions: Vec<String>,
        back_pressured: bool,
    ) -> LostSession {
        match earlier {
            Some(mut earlier) => {
                earlier.subscriptions.extend(subscriptions.iter().cloned());
                earlier.waiting.extend(subscriptions);
                earlier.back_pressured |= back_pressured;
                earlier.reason = reason;
                earlier
            }
            None => LostSession {
                since,
                reason,
                subscriptions: subscriptions.iter().cloned().collect(),
                waiting: subscriptions.into_iter().collect(),
                back_pressured,
            },
        }
    }

    /// The `session_expired` gap, ending now; covered when the server honours replay.
    fn gap(&self, shared: &Shared) -> gaps::Gap {
        let mut gap = gaps::Gap::new(GapKind::SessionExpired, Direction::BayeuxToMqtt);
        gap.names = self.subscriptions.iter().cloned().collect();
        gap.since = Some(self.since);
        gap.covered = shared.replay.as_ref().is_some_and(|r| r.honoured());
        let routes: Vec<usize> = shared
            .routes()
            .iter()
            .filter(|r| r.subscribes_bayeux() && self.subscriptions.contains(r.bayeux.as_str()))
            .map(|r| r.number())
            .collect();
        gap.extra.insert("routes".to_owned(), routes.into());
        gap.extra
            .insert("reason".to_owned(), self.reason.clone().into());
        gap.extra
            .insert("back_pressured".to_owned(), self.back_pressured.into());
        gap
    }
}

/// Reports `shutdown_abandoned` gaps for what each direction received and did not deliver by
/// the drain deadline; the reports wait for the broker until `until` at most.
async fn report_abandoned(shared: &Shared, b2m: u64, m2b: u64, until: Instant) {
    let started = SystemTime::now();
    for (direction, count) in [
        (Direction::BayeuxToMqtt, b2m),
        (Direction::MqttToBayeux, m2b),
    ] {
        if count == 0 {
            continue;
        }
        let mut gap = gaps::Gap::new(GapKind::ShutdownAbandoned, direction);
        gap.count = Some(count);
        gap.since = Some(started);
        let routes = shared.routes();
        let (covered, why) = match direction {
            Direction::BayeuxToMqtt => {
                gap.names = routes
                    .iter()
                    .filter(|r| r.subscribes_bayeux())
                    .map(|r| r.bayeux.as_str().to_owned())
                    .collect();
                (
                    shared.replay.as_ref().is_some_and(|r| r.honoured()),
                    "received from the Bayeux server, not acknowledged by the broker; replayed \
                     after the restart only with [replay] on a server that supports it",
                )
            }
            Direction::MqttToBayeux => {
                gap.names = routes
                    .iter()
                    .filter(|r| r.subscribes_mqtt())
                    .map(|r| r.mqtt_filter.clone())
                    .collect();
                (
                    shared.persistent_mqtt_session.load(Ordering::Relaxed),
                    "not acknowledged to the broker, which delivers QoS 1 and 2 messages again \
                     to a persistent session; QoS 0 ones are lost",
                )
            }
        };
        gap.names.dedup();
        gap.covered = covered;
        gap.extra.insert("reason".to_owned(), why.into());
        // The report goes out before `offline` either way; waiting for its acknowledgement
        // must not cost the goodbyes their time.
        let wait = until
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        gaps::report(shared, &gap, wait).await;
    }
}

/// Waits until every permit of `permits` is back (nothing in flight) or `until`.
pub(super) async fn all_back(permits: &Semaphore, capacity: usize, until: Instant) {
    let n = u32::try_from(capacity).unwrap_or(u32::MAX);
    if let Ok(Ok(all)) = tokio::time::timeout_at(until.into(), permits.acquire_many(n)).await {
        // Give them back: counting only.
        drop(all);
    }
}

/// Publishes the `offline` status and disconnects from the broker within the deadline.
pub(super) async fn finish(shared: &Shared, mqtt: &MqttHandle, deadline: Instant) {
    let status_topic = shared.status_topic();
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(200))
    };
    // With [cluster], the empty record: the others see this member gone.
    let payload = match shared.cluster {
        Some(_) => bytes::Bytes::new(),
        None => "offline".into(),
    };
    let offline = mqtt.publish(&status_topic, payload, QoS::AtLeastOnce, true);
    if tokio::time::timeout(left() / 2, offline).await.is_err() {
        warn!("Could not publish the offline status in time.");
    }
    mqtt.disconnect(left()).await;
}

pub(super) fn log_summary(stats: &Stats) {
    for direction in [Direction::BayeuxToMqtt, Direction::MqttToBayeux] {
        let s = stats.of(direction);
        info!(%direction, received = stats::read(&s.received), forwarded = stats::read(&s.forwarded),
            echoes = stats::read(&s.echoes), dropped = ?s.drops(), "Totals.");
    }
}

/// The running pipelines; they stop at the steps of the bridge's [`Shutdown`].
pub(super) struct Pipelines {
    pub(super) b2m: JoinHandle<()>,
    pub(super) m2b: JoinHandle<()>,
    pub(super) b2m_permits: Arc<Semaphore>,
    pub(super) m2b_permits: Arc<Semaphore>,
    /// With `[spool]`: the delivery tasks.
    pub(super) delivery: Option<Delivery>,
}

/// Drains both directions by `deadline` and says goodbye to both sides.
pub(super) async fn drain(
    shared: &Shared,
    mqtt: &MqttHandle,
    mut pipelines: Pipelines,
    shutdown: &Shutdown,
    capacity: usize,
    deadline: Instant,
) {
    if let Some(delivery) = pipelines.delivery.take() {
        return drain_spooled(
            shared, mqtt, pipelines, delivery, shutdown, capacity, deadline,
        )
        .await;
    }
    let Pipelines {
        b2m,
        m2b,
        b2m_permits,
        m2b_permits,
        delivery: _,
    } = pipelines;
    let reserve = Duration::from_secs(1);
    let until = deadline.checked_sub(reserve).unwrap_or(deadline);
    // 1. MQTT → Bayeux stops taking messages and lets those in flight get their verdict
    //    (unacknowledged ones are delivered again by the broker).
    stop_mqtt_to_bayeux(shutdown, m2b, &m2b_permits, capacity, until).await;
    let m2b_abandoned = shared.m2b_left_pending.load(Ordering::Relaxed)
        + shared.m2b_in_flight.load(Ordering::Relaxed) as u64;
    debug!("Drain: MQTT → Bayeux settled.");
    disconnect_publisher(shared, until).await;
    // 2. The Bayeux client delivers what it holds, sends /meta/disconnect and closes the
    //    subscriptions; Bayeux → MQTT forwards until they end, then waits for the broker.
    disconnect_bayeux(shared, until).await;
    debug!("Drain: Bayeux client disconnected.");
    drain_bayeux_to_mqtt(shutdown, b2m, &b2m_permits, capacity, until).await;
    debug!("Drain: Bayeux → MQTT settled.");
    // Still unacknowledged now, they fail at the disconnect below: with what the pipeline
    // could not even take, lost unless replay brings them back after the restart.
    let b2m_abandoned = shared.b2m_abandoned.load(Ordering::Relaxed)
        + shared.b2m_in_flight.load(Ordering::Relaxed) as u64;
    report_abandoned(shared, b2m_abandoned, m2b_abandoned, until).await;
    // 3. Goodbye to the broker; publishes still unacknowledged fail and count as dropped.
    finish(shared, mqtt, deadline).await;
    all_back(
        &b2m_permits,
        capacity,
        Instant::now() + Duration::from_millis(500),
    )
    .await;
}

/// [`drain`] with the spool: both directions stop taking messages and make what they took
/// durable; the delivery tasks deliver what the deadline allows; what is left stays in the
/// spool for the next start (nothing is abandoned).
async fn drain_spooled(
    shared: &Shared,
    mqtt: &MqttHandle,
    pipelines: Pipelines,
    delivery: Delivery,
    shutdown: &Shutdown,
    capacity: usize,
    deadline: Instant,
) {
    let Pipelines {
        b2m,
        m2b,
        b2m_permits,
        m2b_permits,
        delivery: _,
    } = pipelines;
    let reserve = Duration::from_secs(1);
    let until = deadline.checked_sub(reserve).unwrap_or(deadline);
    // 1. Stop taking: MQTT → Bayeux at once (the broker keeps what was not taken), Bayeux →
    //    MQTT once the Bayeux client handed over what it holds; both made durable.
    stop_mqtt_to_bayeux(shutdown, m2b, &m2b_permits, capacity, until).await;
    disconnect_bayeux(shared, until).await;
    drain_bayeux_to_mqtt(shutdown, b2m, &b2m_permits, capacity, until).await;
    debug!("Drain: both directions stopped taking; what they took is in the spool.");
    // 2. Deliver what the deadline allows.
    if let Some(spools) = &shared.spools
        && tokio::time::timeout_at(until.into(), spools_empty(spools))
            .await
            .is_err()
    {
        info!("Drain deadline: undelivered messages stay in the spool for the next start.");
    }
    shutdown.advance(Step::StopDeliveries);
    let _ = tokio::time::timeout_at(until.into(), delivery.m2b).await;
    let _ = tokio::time::timeout_at(until.into(), delivery.b2m).await;
    all_back(&delivery.m2b_permits, capacity, until).await;
    disconnect_publisher(shared, until).await;
    all_back(&delivery.b2m_permits, capacity, until).await;
    debug!("Drain: deliveries from the spool settled.");
    // 3. Goodbye to the broker; publishes still unacknowledged stay in the spool.
    finish(shared, mqtt, deadline).await;
    all_back(
        &delivery.b2m_permits,
        capacity,
        Instant::now() + Duration::from_millis(500),
    )
    .await;
}

/// Stops MQTT → Bayeux taking messages and waits, until `until` at most, for it to end and
/// for what it took to settle.
async fn stop_mqtt_to_bayeux(
    shutdown: &Shutdown,
    mut m2b: JoinHandle<()>,
    permits: &Semaphore,
    capacity: usize,
    until: Instant,
) {
    shutdown.advance(Step::StopMqttToBayeux);
    if tokio::time::timeout_at(until.into(), &mut m2b)
        .await
        .is_err()
    {
        m2b.abort();
    }
    all_back(permits, capacity, until).await;
}

/// Lets Bayeux → MQTT forward until its subscriptions end, stopping it at `until` (what it
/// still buffers is counted as dropped), and waits for what it took to settle.
async fn drain_bayeux_to_mqtt(
    shutdown: &Shutdown,
    mut b2m: JoinHandle<()>,
    permits: &Semaphore,
    capacity: usize,
    until: Instant,
) {
    shutdown.advance(Step::DrainBayeuxToMqtt);
    if tokio::time::timeout_at(until.into(), &mut b2m)
        .await
        .is_err()
    {
        // Deadline: the pipeline counts what it still buffers as dropped, then ends.
        shutdown.advance(Step::StopBayeuxToMqtt);
        let grace = b2m::LEFTOVER_WAIT + Duration::from_millis(200);
        if tokio::time::timeout(grace, &mut b2m).await.is_err() {
            b2m.abort();
        }
    }
    all_back(permits, capacity, until).await;
}

/// The Bayeux client delivers what it holds, sends `/meta/disconnect` and closes its
/// subscriptions, by `until`.
async fn disconnect_bayeux(shared: &Shared, until: Instant) {
    let bayeux = shared.bayeux();
    if tokio::time::timeout_at(until.into(), bayeux.disconnect())
        .await
        .is_err()
    {
        warn!("The Bayeux server did not answer /meta/disconnect in time.");
    }
}

/// Ends the publishing session of MQTT → Bayeux, when there is one, by `until`.
async fn disconnect_publisher(shared: &Shared, until: Instant) {
    if let Some(publisher) = shared.set_publisher(None)
        && tokio::time::timeout_at(until.into(), publisher.disconnect())
            .await
            .is_err()
    {
        warn!(
            "The Bayeux server did not answer the publishing session's /meta/disconnect in time."
        );
    }
}

/// Resolves once both spool queues are empty (everything in them delivered).
async fn spools_empty(spools: &super::spooled::Spools) {
    loop {
        let changed = spools.b2m.changed();
        let changed_m2b = spools.m2b.changed();
        if spools.b2m.stats().entries == 0 && spools.m2b.stats().entries == 0 {
            return;
        }
        tokio::select! {
            () = changed => {}
            () = changed_m2b => {}
        }
    }
}

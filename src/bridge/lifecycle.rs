//! Watching the Bayeux client's lifecycle, and the drain at shutdown.
//!
//! The drain runs in three steps, each bounded by the deadline (minus a second kept for the
//! goodbyes): MQTT → Bayeux settles first (what it did not get a verdict for stays with the
//! broker); then the Bayeux client delivers what it holds and disconnects, and Bayeux → MQTT
//! forwards until its subscriptions end and the broker acknowledged; then the `offline` status
//! and the MQTT disconnect. Nothing received is dropped without being counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::replay::Gap;
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

/// Follows the Bayeux client's events for readiness and replay gaps; resolves with the reason
/// if the client stops for good, or a replay gap stops the bridge.
async fn watch_bayeux(mut events: bayeux::Events, shared: Arc<Shared>) -> BridgeError {
    let readiness = &shared.readiness;
    let stats = &shared.stats;
    let count = |family: &prometheus_client::metrics::family::Family<
        CauseLabels,
        prometheus_client::metrics::counter::Counter,
    >,
                 cause| {
        family
            .get_or_create(&CauseLabels {
                side: "bayeux",
                cause,
            })
            .inc();
    };
    while let Some(event) = events.recv().await {
        match event {
            Event::Handshaken { rehandshake, .. } => {
                count(
                    &stats.metrics.handshakes,
                    if rehandshake {
                        "rehandshake"
                    } else {
                        "initial"
                    },
                );
                readiness.bayeux_new_session()
            }
            Event::HandshakeFailed { .. } => count(&stats.metrics.reconnects, "handshake_failed"),
            Event::Connected => readiness.bayeux_connected(true),
            Event::ConnectFailed { next, .. } => {
                let cause = match next {
                    bayeux::Next::Retry(_) => "connect_failed",
                    bayeux::Next::Handshake(_) => "session_lost",
                };
                count(&stats.metrics.reconnects, cause);
                readiness.bayeux_connected(false)
            }
            Event::Disconnected { .. } => readiness.bayeux_connected(false),
            Event::SubscriptionConfirmed { subscription } => {
                readiness.bayeux_confirmed(&subscription)
            }
            Event::SubscriptionFailed {
                subscription,
                error,
                ..
            } => {
                let gap = shared
                    .replay
                    .as_ref()
                    .and_then(|r| r.on_subscription_failed(&subscription, &error));
                if let Some(gap) = gap {
                    report_gap(&shared, &gap).await;
                    if gap.resumed_from.is_none() {
                        return BridgeError::ReplayGap {
                            channel: gap.channel,
                            last_good: gap.last_good,
                            error: gap.error,
                        };
                    }
                }
            }
            Event::TokenRefreshed { .. } => {
                let labels = OutcomeLabels { outcome: "ok" };
                stats.metrics.tokens.get_or_create(&labels).inc();
            }
            Event::AuthenticationFailed { .. } => {
                let labels = OutcomeLabels { outcome: "error" };
                stats.metrics.tokens.get_or_create(&labels).inc();
            }
            Event::Stopped { reason } => return BridgeError::BayeuxStopped(reason.to_string()),
            _ => {}
        }
    }
    BridgeError::BayeuxStopped("the Bayeux client ended".to_owned())
}

/// Reports a replay gap loudly: a warning, and a non-retained message on the status topic
/// (the retained `online`/`offline` stays as it is). The metric is counted by the replay
/// state.
async fn report_gap(shared: &Shared, gap: &Gap) {
    warn!(
        channel = %gap.channel,
        last_good_replay_id = gap.last_good,
        resumed_from = ?gap.resumed_from,
        error = %gap.error,
        "The Bayeux server refused the stored replay id: events after it that the server no \
         longer retains are lost."
    );
    let mqtt = shared.mqtt();
    let status_topic = shared.status_topic();
    let publish = mqtt.publish(
        &status_topic,
        gap.status_message().into(),
        QoS::AtLeastOnce,
        false,
    );
    match tokio::time::timeout(GAP_REPORT_TIMEOUT, publish).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "Could not publish the replay gap on the status topic."),
        Err(_) => warn!("The replay gap report was not acknowledged by the broker in time."),
    }
}

/// How long a gap report waits for the broker before the watcher goes on.
const GAP_REPORT_TIMEOUT: Duration = Duration::from_secs(5);

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
    let offline = mqtt.publish(&status_topic, "offline".into(), QoS::AtLeastOnce, true);
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

/// The running pipelines and the signals that stop them.
pub(super) struct Pipelines {
    pub(super) b2m: JoinHandle<()>,
    pub(super) m2b: JoinHandle<()>,
    pub(super) stop_m2b: watch::Sender<bool>,
    pub(super) drain_b2m: watch::Sender<bool>,
    pub(super) stop_b2m: watch::Sender<bool>,
    pub(super) b2m_permits: Arc<Semaphore>,
    pub(super) m2b_permits: Arc<Semaphore>,
}

/// Drains both directions by `deadline` and says goodbye to both sides.
pub(super) async fn drain(
    shared: &Shared,
    mqtt: &MqttHandle,
    pipelines: Pipelines,
    capacity: usize,
    deadline: Instant,
) {
    let Pipelines {
        b2m,
        m2b,
        stop_m2b,
        drain_b2m,
        stop_b2m,
        b2m_permits,
        m2b_permits,
    } = pipelines;
    // 1. MQTT → Bayeux stops taking messages and lets those in flight get their verdict
    //    (unacknowledged ones are delivered again by the broker).
    let _ = stop_m2b.send(true);
    let reserve = Duration::from_secs(1);
    let until = |reserve: Duration| deadline.checked_sub(reserve).unwrap_or(deadline);
    let mut m2b = m2b;
    if tokio::time::timeout_at(until(reserve).into(), &mut m2b)
        .await
        .is_err()
    {
        m2b.abort();
    }
    all_back(&m2b_permits, capacity, until(reserve)).await;
    debug!("Drain: MQTT → Bayeux settled.");
    if let Some(publisher) = shared.set_publisher(None)
        && tokio::time::timeout_at(until(reserve).into(), publisher.disconnect())
            .await
            .is_err()
    {
        warn!(
            "The Bayeux server did not answer the publishing session's /meta/disconnect in time."
        );
    }
    // 2. The Bayeux client delivers what it holds, sends /meta/disconnect and closes the
    //    subscriptions; Bayeux → MQTT forwards until they end, then waits for the broker.
    let bayeux = shared.bayeux();
    if tokio::time::timeout_at(until(reserve).into(), bayeux.disconnect())
        .await
        .is_err()
    {
        warn!("The Bayeux server did not answer /meta/disconnect in time.");
    }
    debug!("Drain: Bayeux client disconnected.");
    let _ = drain_b2m.send(true);
    let mut b2m = b2m;
    if tokio::time::timeout_at(until(reserve).into(), &mut b2m)
        .await
        .is_err()
    {
        // Deadline: the pipeline counts what it still buffers as dropped, then ends.
        let _ = stop_b2m.send(true);
        let grace = b2m::LEFTOVER_WAIT + Duration::from_millis(200);
        if tokio::time::timeout(grace, &mut b2m).await.is_err() {
            b2m.abort();
        }
    }
    all_back(&b2m_permits, capacity, until(reserve)).await;
    debug!("Drain: Bayeux → MQTT settled.");
    // 3. Goodbye to the broker; publishes still unacknowledged fail and count as dropped.
    finish(shared, mqtt, deadline).await;
    all_back(
        &b2m_permits,
        capacity,
        Instant::now() + Duration::from_millis(500),
    )
    .await;
}

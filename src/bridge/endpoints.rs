//! What the HTTP listener serves for the bridge: metrics with the live queue gauges, and
//! readiness that reflects the data plane (connected, subscribed, and queues below their
//! high-water mark, so a bridge whose connections are up but that cannot forward is not
//! ready).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::readiness::Readiness;
use super::stats::{Direction, Stats};
use crate::http::{Endpoints, Ready};
use crate::metrics::{DirectionLabels, Metrics};
use crate::spool::{Queue, QueueStats};

/// Sets the spool metrics of `direction` from `stats`.
fn spool_metrics(m: &Metrics, direction: Direction, stats: &QueueStats) {
    let labels = DirectionLabels {
        direction: direction.as_str(),
    };
    m.spool_messages
        .get_or_create(&labels)
        .set(i64::try_from(stats.entries).unwrap_or(i64::MAX));
    m.spool_bytes
        .get_or_create(&labels)
        .set(i64::try_from(stats.bytes).unwrap_or(i64::MAX));
    let age = stats
        .oldest
        .and_then(|t| t.elapsed().ok())
        .map_or(0.0, |d| d.as_secs_f64());
    m.spool_oldest_age.get_or_create(&labels).set(age);
    // The store keeps running totals; the counters catch up to them.
    let commits = m.spool_commits.get_or_create(&labels);
    commits.inc_by(stats.commits.saturating_sub(commits.get()));
    let seconds = m.spool_commit_seconds.get_or_create(&labels);
    let behind = stats.commit_seconds_total - seconds.get();
    if behind > 0.0 {
        seconds.inc_by(behind);
    }
}

/// A queue more than this full (in percent of its capacity) makes the bridge not ready.
pub const HIGH_WATER_PERCENT: usize = 80;

/// The bridge's endpoints.
pub struct BridgeEndpoints {
    pub(super) stats: Arc<Stats>,
    pub(super) readiness: Arc<Readiness>,
    pub(super) b2m: Arc<AtomicUsize>,
    pub(super) m2b: Arc<AtomicUsize>,
    pub(super) capacity: usize,
    /// With `[spool]`: its queues (Bayeux → MQTT, MQTT → Bayeux) and its byte budget.
    pub(super) spool: Option<(Queue, Queue, u64)>,
}

/// A spool more than this full (in percent of `spool.max_bytes`) makes the bridge not ready.
pub const SPOOL_HIGH_WATER_PERCENT: u64 = 90;

impl BridgeEndpoints {
    fn queues(&self) -> [(Direction, usize); 2] {
        [
            (Direction::BayeuxToMqtt, self.b2m.load(Ordering::Relaxed)),
            (Direction::MqttToBayeux, self.m2b.load(Ordering::Relaxed)),
        ]
    }
}

impl Endpoints for BridgeEndpoints {
    fn metrics(&self) -> String {
        let m = &self.stats.metrics;
        for (direction, in_flight) in self.queues() {
            let labels = DirectionLabels {
                direction: direction.as_str(),
            };
            m.in_flight
                .get_or_create(&labels)
                .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
            m.capacity
                .get_or_create(&labels)
                .set(i64::try_from(self.capacity).unwrap_or(i64::MAX));
        }
        if let Some((b2m, m2b, _)) = &self.spool {
            for (direction, queue) in [
                (Direction::BayeuxToMqtt, b2m),
                (Direction::MqttToBayeux, m2b),
            ] {
                spool_metrics(m, direction, &queue.stats());
            }
        }
        m.encode()
    }

    fn ready(&self) -> Ready {
        let mut reasons = self.readiness.reasons();
        // With the spool, a side that is down is absorbed: ready, but degraded.
        let degraded = match &self.spool {
            Some(_) => std::mem::take(&mut reasons),
            None => Vec::new(),
        };
        if let Some((b2m, m2b, max)) = &self.spool {
            let used = b2m.stats().bytes + m2b.stats().bytes;
            if used.saturating_mul(100) > max.saturating_mul(SPOOL_HIGH_WATER_PERCENT) {
                reasons.push(format!(
                    "spool above its high-water mark: {used} of {max} bytes"
                ));
            }
        }
        for (direction, in_flight) in self.queues() {
            if in_flight * 100 > self.capacity * HIGH_WATER_PERCENT {
                reasons.push(format!(
                    "{direction} queue above its high-water mark: {in_flight} of {} in flight",
                    self.capacity
                ));
            }
        }
        Ready {
            ready: reasons.is_empty(),
            reasons,
            degraded,
        }
    }
}

//! What the HTTP listener serves for the bridge: metrics with the live queue gauges, and
//! readiness that reflects the data plane (connected, subscribed, and queues below their
//! high-water mark, so a bridge whose connections are up but that cannot forward is not
//! ready).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::readiness::Readiness;
use super::stats::{Direction, Stats};
use crate::http::{Endpoints, Ready};
use crate::metrics::DirectionLabels;

/// A queue more than this full (in percent of its capacity) makes the bridge not ready.
pub const HIGH_WATER_PERCENT: usize = 80;

/// The bridge's endpoints.
pub struct BridgeEndpoints {
    pub(super) stats: Arc<Stats>,
    pub(super) readiness: Arc<Readiness>,
    pub(super) b2m: Arc<AtomicUsize>,
    pub(super) m2b: Arc<AtomicUsize>,
    pub(super) capacity: usize,
}

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
        m.encode()
    }

    fn ready(&self) -> Ready {
        let mut reasons = self.readiness.reasons();
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
        }
    }
}

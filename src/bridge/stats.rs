//! Counters of what the bridge did, per direction: received, forwarded, dropped by reason,
//! echoes suppressed. Cheap (atomics), shared by the pipelines. Each record goes both to the
//! per-direction totals logged at shutdown and to the Prometheus [`Metrics`] (per route).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::{DirectionLabels, DropLabels, Metrics, RouteLabels};

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Bayeux channel → MQTT topic.
    BayeuxToMqtt,
    /// MQTT topic → Bayeux channel.
    MqttToBayeux,
}

impl Direction {
    /// The name used in logs and config (`bayeux_to_mqtt`, `mqtt_to_bayeux`).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::BayeuxToMqtt => "bayeux_to_mqtt",
            Direction::MqttToBayeux => "mqtt_to_bayeux",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Counters of one direction.
#[derive(Debug, Default)]
pub struct DirectionStats {
    /// Messages taken from the source side.
    pub received: AtomicU64,
    /// Messages the destination side acknowledged.
    pub forwarded: AtomicU64,
    /// Own messages that came back and were not forwarded again.
    pub echoes: AtomicU64,
    dropped: Mutex<BTreeMap<&'static str, u64>>,
}

impl DirectionStats {
    /// Counts a drop for `reason` (a short snake_case word).
    pub fn dropped(&self, reason: &'static str) {
        self.dropped_many(reason, 1);
    }

    /// Counts `n` drops for `reason`.
    pub fn dropped_many(&self, reason: &'static str, n: u64) {
        let mut dropped = self
            .dropped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *dropped.entry(reason).or_default() += n;
    }

    /// Drops so far, by reason.
    pub fn drops(&self) -> BTreeMap<&'static str, u64> {
        self.dropped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// All drops so far.
    pub fn dropped_total(&self) -> u64 {
        self.drops().values().sum()
    }
}

/// Counters of both directions.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bayeux → MQTT.
    pub bayeux_to_mqtt: DirectionStats,
    /// MQTT → Bayeux.
    pub mqtt_to_bayeux: DirectionStats,
    /// The same, per route, for `/metrics`; plus connection and subscription state.
    pub metrics: Metrics,
}

impl Stats {
    /// A message was taken from the source side for `route` (1-based).
    pub fn received(&self, direction: Direction, route: usize) {
        bump(&self.of(direction).received);
        let labels = RouteLabels {
            direction: direction.as_str(),
            route: route_label(route),
        };
        self.metrics.received.get_or_create(&labels).inc();
    }

    /// The destination side acknowledged a message of `route`.
    pub fn forwarded(&self, direction: Direction, route: usize) {
        bump(&self.of(direction).forwarded);
        self.metrics
            .forwarded(direction.as_str(), route_label(route));
    }

    /// An own publish came back and was not forwarded again.
    pub fn echo(&self, direction: Direction) {
        bump(&self.of(direction).echoes);
        let labels = DirectionLabels {
            direction: direction.as_str(),
        };
        self.metrics.echoes.get_or_create(&labels).inc();
    }

    /// A message of `route` (0: none) was dropped for `reason`.
    pub fn dropped(&self, direction: Direction, route: usize, reason: &'static str) {
        self.dropped_many(direction, route, reason, 1);
    }

    /// `n` messages of `route` (0: none) were dropped for `reason`.
    pub fn dropped_many(&self, direction: Direction, route: usize, reason: &'static str, n: u64) {
        self.of(direction).dropped_many(reason, n);
        let labels = DropLabels {
            direction: direction.as_str(),
            route: route_label(route),
            reason,
        };
        self.metrics.dropped.get_or_create(&labels).inc_by(n);
    }

    /// The counters of `direction`.
    pub fn of(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::BayeuxToMqtt => &self.bayeux_to_mqtt,
            Direction::MqttToBayeux => &self.mqtt_to_bayeux,
        }
    }
}

fn route_label(route: usize) -> u32 {
    u32::try_from(route).unwrap_or(u32::MAX)
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Reads a counter.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason() {
        let stats = Stats::default();
        stats.dropped(Direction::MqttToBayeux, 1, "binary_payload");
        stats.dropped(Direction::MqttToBayeux, 1, "binary_payload");
        stats.dropped(Direction::MqttToBayeux, 2, "unmapped");
        assert!(stats.metrics.encode().contains(
            r#"bridge_messages_dropped_total{direction="mqtt_to_bayeux",route="1",reason="binary_payload"} 2"#
        ));
        let d = stats.mqtt_to_bayeux.drops();
        assert_eq!(d.get("binary_payload"), Some(&2));
        assert_eq!(stats.mqtt_to_bayeux.dropped_total(), 3);
        assert_eq!(stats.bayeux_to_mqtt.dropped_total(), 0);
    }
}

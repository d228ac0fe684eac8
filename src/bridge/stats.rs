//! Counters of what the bridge did, per direction: received, forwarded, dropped by reason,
//! echoes suppressed. Cheap (atomics), shared by the pipelines; logged at shutdown and the
//! source of the metrics endpoint later.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
        let mut dropped = self
            .dropped
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *dropped.entry(reason).or_default() += 1;
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
}

impl Stats {
    /// The counters of `direction`.
    pub fn of(&self, direction: Direction) -> &DirectionStats {
        match direction {
            Direction::BayeuxToMqtt => &self.bayeux_to_mqtt,
            Direction::MqttToBayeux => &self.mqtt_to_bayeux,
        }
    }
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
        stats.of(Direction::MqttToBayeux).dropped("binary_payload");
        stats.of(Direction::MqttToBayeux).dropped("binary_payload");
        stats.of(Direction::MqttToBayeux).dropped("unmapped");
        let d = stats.mqtt_to_bayeux.drops();
        assert_eq!(d.get("binary_payload"), Some(&2));
        assert_eq!(stats.mqtt_to_bayeux.dropped_total(), 3);
        assert_eq!(stats.bayeux_to_mqtt.dropped_total(), 0);
    }
}

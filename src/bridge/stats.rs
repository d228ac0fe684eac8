//! Counters of what the bridge did, per direction: received, forwarded, dropped by reason,
//! echoes suppressed. Cheap (atomics), shared by the pipelines. Each record goes both to the
//! per-direction totals logged at shutdown and to the Prometheus [`Metrics`] (per route).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

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
    /// The Prometheus series a message of each route touches, looked up once instead of per
    /// message (a `Family` lookup takes a lock and hashes the labels). Routes past the end
    /// are looked up each time.
    hot: [OnceLock<RouteSeries>; HOT_ROUTES],
    last_forward: OnceLock<Gauge<f64, AtomicU64>>,
}

/// Routes whose series [`DirectionStats`] keeps at hand: route numbers 0 to 31.
const HOT_ROUTES: usize = 32;

/// `bridge_messages_received_total` and `bridge_messages_forwarded_total` of one route.
#[derive(Debug)]
struct RouteSeries {
    received: Counter,
    forwarded: Counter,
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
        self.count_route(direction, route, |s| &s.received, &self.metrics.received);
    }

    /// The destination side acknowledged a message of `route`.
    pub fn forwarded(&self, direction: Direction, route: usize) {
        let stats = self.of(direction);
        bump(&stats.forwarded);
        self.count_route(direction, route, |s| &s.forwarded, &self.metrics.forwarded);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        stats
            .last_forward
            .get_or_init(|| {
                let labels = DirectionLabels {
                    direction: direction.as_str(),
                };
                self.metrics.last_forward.get_or_create(&labels).clone()
            })
            .set(now);
    }

    /// Adds one to `route`'s series: the one kept at hand (`pick`), or else `family`'s.
    fn count_route(
        &self,
        direction: Direction,
        route: usize,
        pick: impl Fn(&RouteSeries) -> &Counter,
        family: &Family<RouteLabels, Counter>,
    ) {
        match self.series(direction, route) {
            Some(series) => {
                pick(series).inc();
            }
            None => {
                family.get_or_create(&route_labels(direction, route)).inc();
            }
        }
    }

    /// The series of `route`, resolved on first use; `None` past [`HOT_ROUTES`].
    fn series(&self, direction: Direction, route: usize) -> Option<&RouteSeries> {
        let slot = self.of(direction).hot.get(route)?;
        Some(slot.get_or_init(|| {
            let labels = route_labels(direction, route);
            RouteSeries {
                received: self.metrics.received.get_or_create(&labels).clone(),
                forwarded: self.metrics.forwarded.get_or_create(&labels).clone(),
            }
        }))
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

fn route_labels(direction: Direction, route: usize) -> RouteLabels {
    RouteLabels {
        direction: direction.as_str(),
        route: route_label(route),
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

    #[test]
    fn received_and_forwarded_reach_the_route_series_for_every_route_number() {
        let stats = Stats::default();
        // A route kept at hand and one past them, looked up each time.
        for route in [1, HOT_ROUTES + 7] {
            for _ in 0..3 {
                stats.received(Direction::BayeuxToMqtt, route);
            }
            stats.forwarded(Direction::BayeuxToMqtt, route);
            stats.forwarded(Direction::BayeuxToMqtt, route);
            let text = stats.metrics.encode();
            for (name, n) in [("received", 3), ("forwarded", 2)] {
                let line = format!(
                    r#"bridge_messages_{name}_total{{direction="bayeux_to_mqtt",route="{route}"}} {n}"#
                );
                assert!(text.contains(&line), "no `{line}` in\n{text}");
            }
        }
        assert_eq!(stats.bayeux_to_mqtt.received.load(Ordering::Relaxed), 6);
        assert_eq!(stats.bayeux_to_mqtt.forwarded.load(Ordering::Relaxed), 4);
        let text = stats.metrics.encode();
        assert!(
            text.contains(r#"bridge_last_forward_timestamp_seconds{direction="bayeux_to_mqtt"}"#)
        );
        assert!(
            !text.contains(r#"bridge_last_forward_timestamp_seconds{direction="mqtt_to_bayeux"}"#)
        );
    }
}

//! Counters of what the bridge did, per direction: received, forwarded, dropped by reason,
//! echoes suppressed. Cheap (atomics), shared by the pipelines. Each record goes both to the
//! per-direction totals logged at shutdown and to the Prometheus [`Metrics`] (per route).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
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
    last_forward: OnceLock<Gauge<f64, AtomicU64>>,
}

/// The `route` label of messages no route took (route number 0).
pub const NO_ROUTE: &str = "none";
/// The `route` label of every route with `http.per_route_metrics = false`.
pub const ALL_ROUTES: &str = "all";

/// The `route` label of each route number, and the Prometheus series a message of each
/// route touches, looked up once instead of per message (a `Family` lookup takes a lock and
/// hashes the labels). Replaced when the routes change.
#[derive(Debug)]
struct RouteTable {
    /// By route number; `[0]` is [`NO_ROUTE`]. With `per_route` off: `[NO_ROUTE, ALL_ROUTES]`.
    labels: Vec<Arc<str>>,
    per_route: bool,
    /// By direction, then as `labels`.
    series: [Vec<OnceLock<RouteSeries>>; 2],
}

impl Default for RouteTable {
    /// Before the routes are known: per route, without names.
    fn default() -> Self {
        RouteTable::new(Vec::new(), true)
    }
}

impl RouteTable {
    fn new(names: Vec<String>, per_route: bool) -> Self {
        let names = match per_route {
            true => names,
            false => vec![ALL_ROUTES.to_owned()],
        };
        let labels: Vec<Arc<str>> = std::iter::once(NO_ROUTE.to_owned())
            .chain(names)
            .map(Arc::from)
            .collect();
        let slots = || labels.iter().map(|_| OnceLock::new()).collect();
        RouteTable {
            series: [slots(), slots()],
            labels,
            per_route,
        }
    }

    /// Where `route` is in `labels`, if it is.
    fn slot(&self, route: usize) -> Option<usize> {
        let slot = match self.per_route {
            false => route.min(1),
            true => route,
        };
        (slot < self.labels.len()).then_some(slot)
    }

    /// The `route` label of route number `route`.
    fn label(&self, route: usize) -> Arc<str> {
        match self.slot(route).and_then(|slot| self.labels.get(slot)) {
            Some(label) => Arc::clone(label),
            // Before the routes are known (tests), or a number a reload removed.
            None if route == 0 => Arc::from(NO_ROUTE),
            None => Arc::from(format!("route[{route}]")),
        }
    }
}

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
    routes: RwLock<RouteTable>,
}

impl Stats {
    /// The routes' names (`names[0]` is route 1's), the `route` label of their series; with
    /// `per_route` false every route counts under [`ALL_ROUTES`].
    pub fn set_routes(&self, names: Vec<String>, per_route: bool) {
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = RouteTable::new(names, per_route);
    }

    /// Whether series per route (and per subscription) are wanted (`http.per_route_metrics`).
    pub fn per_route(&self) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .per_route
    }

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
        let table = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let labels = || RouteLabels {
            direction: direction.as_str(),
            route: table.label(route),
        };
        let cell = (table.slot(route)).and_then(|slot| table.series[direction as usize].get(slot));
        match cell {
            Some(cell) => {
                let series = cell.get_or_init(|| RouteSeries {
                    received: self.metrics.received.get_or_create(&labels()).clone(),
                    forwarded: self.metrics.forwarded.get_or_create(&labels()).clone(),
                });
                pick(series).inc();
            }
            None => {
                family.get_or_create(&labels()).inc();
            }
        }
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
        let route = self.route_label(route);
        let labels = DropLabels {
            direction: direction.as_str(),
            route,
            reason,
        };
        self.metrics.dropped.get_or_create(&labels).inc_by(n);
    }

    /// The `route` label value of `route` (0: none): its name, or `all` without per-route
    /// series.
    pub fn route_label(&self, route: usize) -> std::sync::Arc<str> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .label(route)
    }

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
        stats.dropped(Direction::MqttToBayeux, 1, "binary_payload");
        stats.dropped(Direction::MqttToBayeux, 1, "binary_payload");
        stats.dropped(Direction::MqttToBayeux, 2, "unmapped");
        assert!(stats.metrics.encode().contains(
            r#"bridge_messages_dropped_total{direction="mqtt_to_bayeux",route="route[1]",reason="binary_payload"} 2"#
        ));
        let d = stats.mqtt_to_bayeux.drops();
        assert_eq!(d.get("binary_payload"), Some(&2));
        assert_eq!(stats.mqtt_to_bayeux.dropped_total(), 3);
        assert_eq!(stats.bayeux_to_mqtt.dropped_total(), 0);
    }

    #[test]
    fn received_and_forwarded_reach_the_route_series_for_every_route_number() {
        let stats = Stats::default();
        stats.set_routes(vec!["route[1]".into(), "route[2]".into()], true);
        // A route kept at hand and one past them (a reload removed it), looked up each time.
        for route in [1, 7] {
            for _ in 0..3 {
                stats.received(Direction::BayeuxToMqtt, route);
            }
            stats.forwarded(Direction::BayeuxToMqtt, route);
            stats.forwarded(Direction::BayeuxToMqtt, route);
            let text = stats.metrics.encode();
            for (name, n) in [("received", 3), ("forwarded", 2)] {
                let line = format!(
                    r#"bridge_messages_{name}_total{{direction="bayeux_to_mqtt",route="route[{route}]"}} {n}"#
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

    #[test]
    fn routes_are_labelled_by_name_or_all_together() {
        let stats = Stats::default();
        stats.set_routes(vec!["orders".into(), "route[2]".into()], true);
        stats.received(Direction::MqttToBayeux, 1);
        stats.received(Direction::MqttToBayeux, 2);
        stats.dropped(Direction::MqttToBayeux, 0, "unmapped");
        let text = stats.metrics.encode();
        for line in [
            r#"bridge_messages_received_total{direction="mqtt_to_bayeux",route="orders"} 1"#,
            r#"bridge_messages_received_total{direction="mqtt_to_bayeux",route="route[2]"} 1"#,
            r#"bridge_messages_dropped_total{direction="mqtt_to_bayeux",route="none",reason="unmapped"} 1"#,
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        let stats = Stats::default();
        stats.set_routes(vec!["orders".into(), "route[2]".into()], false);
        stats.received(Direction::MqttToBayeux, 1);
        stats.received(Direction::MqttToBayeux, 2);
        stats.dropped(Direction::MqttToBayeux, 2, "unmapped");
        let text = stats.metrics.encode();
        for line in [
            r#"bridge_messages_received_total{direction="mqtt_to_bayeux",route="all"} 2"#,
            r#"bridge_messages_dropped_total{direction="mqtt_to_bayeux",route="all",reason="unmapped"} 1"#,
        ] {
            assert!(text.contains(line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("orders"), "{text}");
    }
}

//! Prometheus metrics: names, labels and record helpers, in the Prometheus text format via the
//! `prometheus-client` crate. A leaf module: it knows metric names, not where the numbers come
//! from. Names follow the Prometheus conventions (`_total` counters, base units).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// `direction` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// `bayeux_to_mqtt` or `mqtt_to_bayeux`.
    pub direction: &'static str,
}

/// `direction` and `route` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// `bayeux_to_mqtt` or `mqtt_to_bayeux`.
    pub direction: &'static str,
    /// The route's `name` (default `route[<n>]`); `all` with `http.per_route_metrics =
    /// false`, `none` when no route applies.
    pub route: std::sync::Arc<str>,
}

/// `direction`, `route` and `reason` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `bayeux_to_mqtt` or `mqtt_to_bayeux`.
    pub direction: &'static str,
    /// As in [`RouteLabels`].
    pub route: std::sync::Arc<str>,
    /// Why, e.g. `binary_payload`, `unmapped`, `bayeux_refused`.
    pub reason: &'static str,
}

/// `side` and `cause` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabels {
    /// `bayeux` or `mqtt`.
    pub side: &'static str,
    /// Why, e.g. `connect_failed`, `session_unknown`, `initial`.
    pub cause: &'static str,
}

/// `side` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SideLabels {
    /// `bayeux` or `mqtt`.
    pub side: &'static str,
}

/// `side` and `subscription` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// `bayeux` or `mqtt`.
    pub side: &'static str,
    /// The channel pattern or topic filter.
    pub subscription: String,
}

/// `channel` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The Bayeux channel.
    pub channel: String,
}

/// `kind` and `direction` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GapLabels {
    /// `replay_gap`, `session_expired`, `mqtt_session_lost` or `shutdown_abandoned`.
    pub kind: &'static str,
    /// `bayeux_to_mqtt` or `mqtt_to_bayeux`.
    pub direction: &'static str,
}

/// `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `websocket`, `long-polling` or `callback-polling`.
    pub transport: &'static str,
}

/// `outcome` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ok` or `error`.
    pub outcome: &'static str,
}

/// `role` label of `bridge_cluster_role`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    /// `unknown`, `active`, `standby` or `partitioned`.
    pub role: &'static str,
}

/// `member_id` label of `bridge_cluster_member`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MemberLabels {
    /// A member of the group, as this member sees it.
    pub member_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Every metric the bridge exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `bridge_messages_received_total{direction,route}`.
    pub received: Family<RouteLabels, Counter>,
    /// `bridge_messages_forwarded_total{direction,route}`.
    pub forwarded: Family<RouteLabels, Counter>,
    /// `bridge_messages_dropped_total{direction,route,reason}`.
    pub dropped: Family<DropLabels, Counter>,
    /// `bridge_dead_letters_total{direction,route,reason}`: undeliverable messages published
    /// to a dead-letter topic (and acknowledged by the broker).
    pub dead_letters: Family<DropLabels, Counter>,
    /// `bridge_echoes_suppressed_total{direction}`.
    pub echoes: Family<DirectionLabels, Counter>,
    /// `bridge_publish_errors_total{side,cause}`: failed publish attempts (retried or not).
    pub publish_errors: Family<CauseLabels, Counter>,
    /// `bridge_in_flight_messages{direction}`: taken from the source, not yet acknowledged.
    pub in_flight: Family<DirectionLabels, Gauge>,
    /// `bridge_queue_capacity{direction}`.
    pub capacity: Family<DirectionLabels, Gauge>,
    /// `bridge_reconnects_total{side,cause}`.
    pub reconnects: Family<CauseLabels, Counter>,
    /// `bridge_bad_replies_total{side,cause}`: Bayeux responses refused as bad replies
    /// (`too_large`, `too_many_messages`, `invalid`).
    pub bad_replies: Family<CauseLabels, Counter>,
    /// `bridge_handshakes_total{side,cause}` (Bayeux: `initial` or `rehandshake`).
    pub handshakes: Family<CauseLabels, Counter>,
    /// `bridge_connected{side}`: 1 while connected.
    pub connected: Family<SideLabels, Gauge>,
    /// `bridge_bayeux_transport{transport}`: 1 for the transport the Bayeux session uses
    /// (its last `/meta/connect` went over it), 0 for one it used before.
    pub transport: Family<TransportLabels, Gauge>,
    /// `bridge_subscription_confirmed{side,subscription}`: 1 while confirmed.
    pub subscriptions: Family<SubscriptionLabels, Gauge>,
    /// `bridge_last_forward_timestamp_seconds{direction}`.
    pub last_forward: Family<DirectionLabels, Gauge<f64, AtomicU64>>,
    /// `bridge_ready`: 1 while ready.
    pub ready: Gauge,
    /// `bridge_cluster_role{role}`: 1 for this member's role in its `[cluster]`.
    pub cluster_role: Family<RoleLabels, Gauge>,
    /// `bridge_cluster_member{member_id}`: 1 for each live member this member sees.
    pub cluster_members: Family<MemberLabels, Gauge>,
    /// `bridge_cluster_routes_owned`: Bayeux → MQTT routes this member forwards now.
    pub cluster_routes_owned: Gauge,
    /// `bridge_cluster_not_forwarded_total`: Bayeux messages a member received and left to
    /// the member that owns their route.
    pub cluster_not_forwarded: Counter,
    /// `bridge_replay_checkpoint{channel}`: the replay id the channel resumes after.
    pub checkpoint: Family<ChannelLabels, Gauge>,
    /// `bridge_replay_checkpoint_timestamp_seconds{channel}`: Unix time the channel's
    /// checkpoint last advanced (its age is `time()` minus this).
    pub checkpoint_time: Family<ChannelLabels, Gauge<f64, AtomicU64>>,
    /// `bridge_replay_checkpoint_writes_total{outcome}`.
    pub checkpoint_writes: Family<OutcomeLabels, Counter>,
    /// `bridge_replay_gaps_total{channel}`: stored replay ids the server refused.
    pub replay_gaps: Family<ChannelLabels, Counter>,
    /// `bridge_gaps_total{kind,direction}`: spans in which messages may have been lost (or
    /// were recovered by replay or redelivery), each also logged and published on the status
    /// topic.
    pub gaps: Family<GapLabels, Counter>,
    /// `bridge_bayeux_tokens_total{outcome}`: access tokens fetched (`ok`), and refusals or
    /// failures that made the client fetch again (`error`).
    pub tokens: Family<OutcomeLabels, Counter>,
    /// `bridge_spool_messages{direction}`: messages in the spool (`[spool]`).
    pub spool_messages: Family<DirectionLabels, Gauge>,
    /// `bridge_spool_bytes{direction}`: their bytes, as counted against `spool.max_bytes`.
    pub spool_bytes: Family<DirectionLabels, Gauge>,
    /// `bridge_spool_oldest_age_seconds{direction}`: how long the oldest has waited (0 when
    /// the spool is empty).
    pub spool_oldest_age: Family<DirectionLabels, Gauge<f64, AtomicU64>>,
    /// `bridge_spool_commits_total{direction}`: spool commits (each one fsync).
    pub spool_commits: Family<DirectionLabels, Counter>,
    /// `bridge_spool_commit_seconds_total{direction}`: time spent committing (fsync).
    pub spool_commit_seconds: Family<DirectionLabels, Counter<f64, AtomicU64>>,
    /// The HTTP listener's connections (`bridge_http_*`).
    pub http: HttpMetrics,
}

/// The HTTP listener's connection metrics; clones share the values.
#[derive(Debug, Clone, Default)]
pub struct HttpMetrics {
    /// `bridge_http_connections_open`: connections being served.
    pub open: Gauge,
    /// `bridge_http_connections_refused_total`: connections closed at once because
    /// `http.max_connections` were open.
    pub refused: Counter,
    /// `bridge_http_connections_timed_out_total`: connections closed because the request
    /// header did not arrive in time or the connection reached its lifetime.
    pub timed_out: Counter,
    /// `bridge_http_accept_errors_total`: failed accepts (e.g. out of file descriptors).
    pub accept_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("bridge");
        let m = Metrics {
            received: Family::default(),
            forwarded: Family::default(),
            dropped: Family::default(),
            dead_letters: Family::default(),
            echoes: Family::default(),
            publish_errors: Family::default(),
            in_flight: Family::default(),
            capacity: Family::default(),
            reconnects: Family::default(),
            bad_replies: Family::default(),
            handshakes: Family::default(),
            connected: Family::default(),
            subscriptions: Family::default(),
            transport: Family::default(),
            last_forward: Family::default(),
            ready: Gauge::default(),
            cluster_role: Family::default(),
            cluster_members: Family::default(),
            cluster_routes_owned: Gauge::default(),
            cluster_not_forwarded: Counter::default(),
            checkpoint: Family::default(),
            checkpoint_time: Family::default(),
            checkpoint_writes: Family::default(),
            replay_gaps: Family::default(),
            gaps: Family::default(),
            tokens: Family::default(),
            spool_messages: Family::default(),
            spool_bytes: Family::default(),
            spool_oldest_age: Family::default(),
            spool_commits: Family::default(),
            spool_commit_seconds: Family::default(),
            http: HttpMetrics::default(),
            registry: Registry::default(),
        };
        m.register_messages(&mut registry);
        m.register_spool(&mut registry);
        m.register_queues(&mut registry);
        m.register_connections(&mut registry);
        m.register_cluster(&mut registry);
        m.register_replay(&mut registry);
        m.register_http(&mut registry);
        registry.register(
            "build",
            "Build information",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Metrics { registry, ..m }
    }

    /// Registers the message counters of both directions.
    fn register_messages(&self, registry: &mut Registry) {
        registry.register(
            "messages_received",
            "Messages taken from the source side",
            self.received.clone(),
        );
        registry.register(
            "messages_forwarded",
            "Messages the destination side acknowledged",
            self.forwarded.clone(),
        );
        registry.register(
            "messages_dropped",
            "Messages not forwarded, by reason",
            self.dropped.clone(),
        );
        registry.register(
            "dead_letters",
            "Undeliverable messages published to a dead-letter topic, by reason",
            self.dead_letters.clone(),
        );
        registry.register(
            "echoes_suppressed",
            "Own publishes that came back and were not forwarded again",
            self.echoes.clone(),
        );
        registry.register(
            "publish_errors",
            "Failed publish attempts, by side and cause",
            self.publish_errors.clone(),
        );
    }

    /// Registers the metrics of the durable spool.
    fn register_spool(&self, registry: &mut Registry) {
        registry.register(
            "spool_messages",
            "Messages in the durable spool, waiting for their destination",
            self.spool_messages.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes of the messages in the spool, as counted against spool.max_bytes",
            self.spool_bytes.clone(),
        );
        registry.register(
            "spool_oldest_age_seconds",
            "How long the oldest message in the spool has waited",
            self.spool_oldest_age.clone(),
        );
        registry.register(
            "spool_commits",
            "Spool commits (each one fsync)",
            self.spool_commits.clone(),
        );
        registry.register(
            "spool_commit_seconds",
            "Time spent committing to the spool (fsync included)",
            self.spool_commit_seconds.clone(),
        );
    }

    /// Registers the metrics of the bounded queues of both directions.
    fn register_queues(&self, registry: &mut Registry) {
        registry.register(
            "in_flight_messages",
            "Messages taken from the source and not yet acknowledged by the destination",
            self.in_flight.clone(),
        );
        registry.register(
            "queue_capacity",
            "Most messages in flight per direction before back-pressure",
            self.capacity.clone(),
        );
    }

    /// Marks `name` as the Bayeux transport in use (and any other as not).
    pub fn set_transport(&self, name: &'static str) {
        for known in ["websocket", "long-polling", "callback-polling"] {
            if known != name
                && self
                    .transport
                    .get(&TransportLabels { transport: known })
                    .is_some()
            {
                self.transport
                    .get_or_create(&TransportLabels { transport: known })
                    .set(0);
            }
        }
        self.transport
            .get_or_create(&TransportLabels { transport: name })
            .set(1);
    }

    /// Registers the metrics of the connections to both sides and of readiness.
    fn register_connections(&self, registry: &mut Registry) {
        registry.register(
            "reconnects",
            "Lost connections or failed attempts, by side and cause",
            self.reconnects.clone(),
        );
        registry.register(
            "bad_replies",
            "Bayeux responses refused as bad replies, by cause",
            self.bad_replies.clone(),
        );
        registry.register(
            "handshakes",
            "Successful Bayeux handshakes, initial or after a lost session",
            self.handshakes.clone(),
        );
        registry.register(
            "connected",
            "1 while the side is connected",
            self.connected.clone(),
        );
        registry.register(
            "bayeux_transport",
            "1 for the transport the Bayeux session uses",
            self.transport.clone(),
        );
        registry.register(
            "subscription_confirmed",
            "1 while the subscription is confirmed by the server or broker",
            self.subscriptions.clone(),
        );
        registry.register(
            "last_forward_timestamp_seconds",
            "Unix time of the last forwarded message",
            self.last_forward.clone(),
        );
        registry.register(
            "ready",
            "1 while the bridge is ready (see /readyz)",
            self.ready.clone(),
        );
    }

    /// The `[cluster]` families (a member's role and the membership it sees).
    fn register_cluster(&self, registry: &mut Registry) {
        registry.register(
            "cluster_role",
            "1 for this member's role in its [cluster] (unknown, active, standby, partitioned)",
            self.cluster_role.clone(),
        );
        registry.register(
            "cluster_member",
            "1 for each live member of the [cluster] group this member sees",
            self.cluster_members.clone(),
        );
        registry.register(
            "cluster_routes_owned",
            "Bayeux → MQTT routes this member forwards now",
            self.cluster_routes_owned.clone(),
        );
        registry.register(
            "cluster_not_forwarded",
            "Bayeux messages received and left to the member that owns their route",
            self.cluster_not_forwarded.clone(),
        );
    }

    /// Registers the metrics of replay checkpoints, gaps and OAuth tokens.
    fn register_replay(&self, registry: &mut Registry) {
        registry.register(
            "replay_checkpoint",
            "Replay id of the last event acknowledged by the broker, per channel (in memory)",
            self.checkpoint.clone(),
        );
        registry.register(
            "replay_checkpoint_timestamp_seconds",
            "Unix time the channel's checkpoint last advanced (in memory)",
            self.checkpoint_time.clone(),
        );
        registry.register(
            "replay_checkpoint_writes",
            "Writes of the checkpoint file, by outcome",
            self.checkpoint_writes.clone(),
        );
        registry.register(
            "replay_gaps",
            "Stored replay ids the server refused (events lost), per channel",
            self.replay_gaps.clone(),
        );
        registry.register(
            "gaps",
            "Spans in which messages may have been lost, by kind (replay_gap, session_expired, \
         mqtt_session_lost, shutdown_abandoned) and direction",
            self.gaps.clone(),
        );
        registry.register(
        "bayeux_tokens",
        "OAuth access tokens fetched (ok), and refused tokens or token endpoint failures (error)",
        self.tokens.clone(),
    );
    }

    /// Registers the metrics of the HTTP listener.
    fn register_http(&self, registry: &mut Registry) {
        registry.register(
            "http_connections_open",
            "Connections the HTTP listener is serving",
            self.http.open.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed at once because http.max_connections were open",
            self.http.refused.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "HTTP connections closed because the request header did not arrive in time or the \
         connection reached its lifetime",
            self.http.timed_out.clone(),
        );
        registry.register(
            "http_accept_errors",
            "Failed accepts on the HTTP listener (e.g. out of file descriptors)",
            self.http.accept_errors.clone(),
        );
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transport_in_use_is_1_and_one_used_before_0() {
        let m = Metrics::new();
        m.set_transport("websocket");
        assert!(
            m.encode()
                .contains(r#"bridge_bayeux_transport{transport="websocket"} 1"#)
        );
        m.set_transport("long-polling");
        let text = m.encode();
        assert!(
            text.contains(r#"bridge_bayeux_transport{transport="long-polling"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"bridge_bayeux_transport{transport="websocket"} 0"#),
            "{text}"
        );
        assert!(!text.contains("callback-polling"), "{text}");
    }

    #[test]
    fn exposition_has_prefixed_names_labels_and_build_info() {
        let m = Metrics::new();
        m.received
            .get_or_create(&RouteLabels {
                direction: "bayeux_to_mqtt",
                route: "orders".into(),
            })
            .inc();
        m.last_forward
            .get_or_create(&DirectionLabels {
                direction: "bayeux_to_mqtt",
            })
            .set(1.0);
        m.dropped
            .get_or_create(&DropLabels {
                direction: "mqtt_to_bayeux",
                route: "route[2]".into(),
                reason: "binary_payload",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(
                r#"bridge_messages_received_total{direction="bayeux_to_mqtt",route="orders"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"bridge_messages_dropped_total{direction="mqtt_to_bayeux",route="route[2]",reason="binary_payload"} 1"#));
        assert!(text.contains("bridge_build_info{version="));
        assert!(text.contains("# TYPE bridge_last_forward_timestamp_seconds gauge"));
        assert!(text.ends_with("# EOF\n"));
    }
}

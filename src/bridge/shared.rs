//! What both pipelines share: the current routes and clients (replaced by reloads), the
//! counters, loop-prevention filters, replay state, and each message's place in its
//! direction's bounded queue.

use crate::log_limit::SharedLimiter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tracing::warn;

use super::cluster::Cluster;
use super::dead_letter::{DeadLetters, Undeliverable};
use super::echo::EchoFilter;
use super::gaps::Pressure;
use super::mapping::{Route, Routes};
use super::readiness::Readiness;
use super::replay::{self, Replay};
use super::spooled::Spools;
use super::stats::{Direction, Stats};
use crate::bayeux::{self, Client};
use crate::config::{BinaryPolicy, Config, MqttConfig, MqttProtocol};
use crate::metrics::CauseLabels;
use crate::mqtt::MqttHandle;

/// A message's place in its direction's bounded queue: the semaphore permit (released when
/// the destination acknowledged it) plus the in-flight count the metrics report.
pub(crate) struct Slot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl Slot {
    pub(crate) fn new(
        permit: tokio::sync::OwnedSemaphorePermit,
        count: &Arc<std::sync::atomic::AtomicUsize>,
    ) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Slot {
            _permit: permit,
            count: Arc::clone(count),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.count
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// State both pipelines share.
pub(crate) struct Shared {
    /// The current routes (replaced by a reload).
    routes: RwLock<Arc<Routes>>,
    /// `http.per_route_metrics` (read at the start).
    per_route_metrics: bool,
    /// The current Bayeux client (replaced when a reload changes `[bayeux]`).
    bayeux: RwLock<Client>,
    /// The Bayeux session MQTT → Bayeux publishes through when it is not `bayeux`
    /// (`super::publisher`).
    publisher: RwLock<Option<Client>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) binary_payloads: BinaryPolicy,
    /// The retained online/offline topic (replaced with `[mqtt]` on a reload).
    status_topic: RwLock<String>,
    /// The current MQTT client (replaced when a reload changes `[mqtt]`, only through
    /// [`Shared::set_mqtt`]); the pipelines keep a copy for their hot path and take it again
    /// when the reload tells them to (`b2m::Control::Resume`, `m2b::Swap`).
    mqtt: RwLock<MqttHandle>,
    /// Messages in flight Bayeux → MQTT.
    pub(crate) b2m_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Messages in flight MQTT → Bayeux.
    pub(crate) m2b_in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Own publishes to Bayeux, which the server echoes back to our subscriptions.
    bayeux_echoes: Mutex<EchoFilter>,
    /// Own publishes to MQTT, on 3.1.1 only (MQTT 5 subscriptions use No Local).
    mqtt_echoes: Option<Mutex<EchoFilter>>,
    /// Replay extension and checkpoints, with `[replay] enabled`.
    pub(super) replay: Option<Arc<Replay>>,
    /// The durable spool and its queues, with `[spool] enabled`.
    pub(crate) spools: Option<Spools>,
    /// When the Bayeux → MQTT queue was full (for `session_expired` gaps).
    pub(crate) b2m_pressure: Pressure,
    /// When MQTT → Bayeux could not take messages (for `broker_queue_at_risk` gaps).
    pub(crate) m2b_pressure: Pressure,
    /// Whether the bridge asks the broker for a session that outlives the connection
    /// (`clean_start = false`, and on MQTT 5 a non-zero session expiry).
    pub(crate) persistent_mqtt_session: AtomicBool,
    /// The MQTT session as the bridge last saw it (for `mqtt_session_lost` gaps).
    pub(crate) mqtt_session: Mutex<MqttSession>,
    /// The retained `online` status announcements (`super::m2b::announce_online`).
    pub(crate) announcing: Mutex<Announcing>,
    /// Bayeux messages received and never forwarded because the drain deadline passed.
    pub(crate) b2m_abandoned: std::sync::atomic::AtomicU64,
    /// MQTT messages received and not yet taken when MQTT → Bayeux stopped.
    pub(crate) m2b_left_pending: std::sync::atomic::AtomicU64,
    /// Rate limit of the warnings that can come once per message.
    pub(crate) log_limit: SharedLimiter,
    /// Where undeliverable messages go (`dead_letter_topic`).
    pub(crate) dead_letters: DeadLetters,
    /// With `[cluster]`: the group as this member sees it, and its role (read at the start).
    pub(crate) cluster: Option<Cluster>,
}

/// What the bridge knows of its MQTT session.
#[derive(Debug, Default)]
pub(crate) struct MqttSession {
    /// A connection was accepted at least once.
    pub(crate) had_session: bool,
    /// When the last connection was lost, while it is lost.
    pub(crate) lost_at: Option<std::time::SystemTime>,
}

/// Whether `config` asks the broker for a session that outlives the connection.
fn persistent(config: &MqttConfig) -> bool {
    !config.clean_start && (config.protocol == MqttProtocol::V311 || config.session_expiry_secs > 0)
}

/// How long an own publish is remembered for echo suppression.
const ECHO_TTL: Duration = Duration::from_secs(60);

impl Shared {
    /// The state of a bridge starting with `config` and these clients; no routes yet.
    pub(super) fn new(
        config: &Config,
        bayeux: Client,
        mqtt: MqttHandle,
        stats: Arc<Stats>,
        readiness: Arc<Readiness>,
        replay: Option<Arc<Replay>>,
        spools: Option<Spools>,
    ) -> Shared {
        let v311 = config.mqtt.protocol == MqttProtocol::V311;
        let stats_for_dead_letters = Arc::clone(&stats);
        Shared {
            routes: RwLock::new(Arc::new(Routes::default())),
            per_route_metrics: config.http.per_route_metrics,
            bayeux: RwLock::new(bayeux),
            publisher: RwLock::new(None),
            stats,
            readiness,
            binary_payloads: config.bridge.binary_payloads,
            status_topic: RwLock::new(config.mqtt.status_topic.clone()),
            mqtt: RwLock::new(mqtt),
            b2m_in_flight: Arc::default(),
            m2b_in_flight: Arc::default(),
            bayeux_echoes: Mutex::new(EchoFilter::new(ECHO_TTL)),
            mqtt_echoes: v311.then(|| Mutex::new(EchoFilter::new(ECHO_TTL))),
            replay,
            spools,
            b2m_pressure: Pressure::default(),
            m2b_pressure: Pressure::default(),
            persistent_mqtt_session: AtomicBool::new(persistent(&config.mqtt)),
            mqtt_session: Mutex::default(),
            announcing: Mutex::default(),
            b2m_abandoned: Default::default(),
            m2b_left_pending: Default::default(),
            log_limit: SharedLimiter::default(),
            dead_letters: DeadLetters::new(
                config.bridge.dead_letter_topic.clone(),
                v311,
                Arc::clone(&stats_for_dead_letters),
            ),
            cluster: (config.cluster.as_ref()).map(|c| Cluster::new(c, &config.mqtt)),
        }
    }

    /// The MQTT session state.
    pub(crate) fn mqtt_session(&self) -> MutexGuard<'_, MqttSession> {
        self.mqtt_session.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn announcing(&self) -> MutexGuard<'_, Announcing> {
        self.announcing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `options` with the replay extension, when replay is on.
    pub(crate) fn with_replay(&self, options: bayeux::ClientOptions) -> bayeux::ClientOptions {
        replay::with_extension(options, self.replay.as_deref())
    }

    /// The current routes.
    pub(crate) fn routes(&self) -> Arc<Routes> {
        Arc::clone(&self.routes.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the routes (indexed for the pipelines), and the names their metrics carry.
    pub(crate) fn set_routes(&self, routes: Vec<Route>) {
        self.dead_letters.set_routes(&routes);
        let names = routes.iter().map(|r| r.name.clone()).collect();
        self.stats.set_routes(names, self.per_route_metrics);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Routes::new(routes));
    }

    /// The current Bayeux client.
    pub(crate) fn bayeux(&self) -> Client {
        self.bayeux
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current MQTT client.
    pub(crate) fn mqtt(&self) -> MqttHandle {
        self.mqtt.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current status topic.
    pub(crate) fn status_topic(&self) -> String {
        self.status_topic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Switches to a new MQTT client (a reload changed `[mqtt]`) configured by `config`.
    pub(crate) fn set_mqtt(&self, mqtt: MqttHandle, config: &MqttConfig) {
        *self.mqtt.write().unwrap_or_else(|p| p.into_inner()) = mqtt;
        self.dead_letters
            .set_v311(config.protocol == MqttProtocol::V311);
        *self.status_topic.write().unwrap_or_else(|p| p.into_inner()) = config.status_topic.clone();
        self.persistent_mqtt_session
            .store(persistent(config), Ordering::Relaxed);
        // A new client (perhaps of another broker) starts without a session of its own.
        *self.mqtt_session() = MqttSession::default();
    }

    pub(crate) fn set_bayeux(&self, client: Client) {
        *self.bayeux.write().unwrap_or_else(|p| p.into_inner()) = client;
    }

    /// The Bayeux client MQTT → Bayeux publishes through: the publishing session when there
    /// is one, otherwise the current client.
    pub(crate) fn publisher(&self) -> Client {
        let publisher = self.publisher.read().unwrap_or_else(|p| p.into_inner());
        match publisher.as_ref() {
            Some(client) => client.clone(),
            None => self.bayeux(),
        }
    }

    /// Whether MQTT → Bayeux publishes through a session of its own.
    pub(crate) fn has_publisher(&self) -> bool {
        self.publisher
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Replaces the publishing session; returns the one it replaces.
    pub(crate) fn set_publisher(&self, client: Option<Client>) -> Option<Client> {
        std::mem::replace(
            &mut *self.publisher.write().unwrap_or_else(|p| p.into_inner()),
            client,
        )
    }
    pub(crate) fn bayeux_echoes(&self) -> MutexGuard<'_, EchoFilter> {
        self.bayeux_echoes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn mqtt_echoes(&self) -> Option<MutexGuard<'_, EchoFilter>> {
        self.mqtt_echoes
            .as_ref()
            .map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Counts a lost connection or failed attempt on the MQTT side.
    pub(crate) fn count_reconnect(&self, cause: &'static str) {
        let labels = CauseLabels {
            side: "mqtt",
            cause,
        };
        self.stats.metrics.reconnects.get_or_create(&labels).inc();
    }

    /// Counts a failed publish attempt on `side` (`bayeux` or `mqtt`).
    pub(crate) fn count_publish_error(&self, side: &'static str, cause: &'static str) {
        let labels = CauseLabels { side, cause };
        self.stats
            .metrics
            .publish_errors
            .get_or_create(&labels)
            .inc();
    }

    /// Logs and counts a message that will not be forwarded.
    pub(crate) fn drop_message(
        &self,
        direction: Direction,
        reason: &'static str,
        route: usize,
        name: &str,
        detail: &str,
    ) {
        self.stats.dropped(direction, route, reason);
        const DROPPED: &str = "Message dropped.";
        if self.log_limit.allow(DROPPED) {
            warn!(%direction, reason, route, name, detail, "{DROPPED}");
        }
    }

    /// Whether Bayeux → MQTT publishes of `route` carry MQTT 5 properties
    /// (`route.properties`, default on with MQTT 5).
    pub(crate) fn properties_on(&self, route: &Route) -> bool {
        route.properties.unwrap_or(true) && !self.dead_letters.is_v311()
    }

    /// A message that cannot be delivered: published to its dead-letter topic when there is
    /// one (`super::dead_letter`), otherwise logged and counted as dropped
    /// ([`Shared::drop_message`]).
    pub(crate) fn reject(&self, letter: Undeliverable) {
        self.reject_then(letter, || {});
    }

    /// [`Shared::reject`], then `then` once the dead letter is published (or failed and was
    /// counted), or at once without a dead-letter topic (see [`super::dead_letter::Then`]).
    pub(crate) fn reject_then(&self, letter: Undeliverable, then: impl FnOnce() + Send + 'static) {
        let topic = if self.dead_letters.enabled() {
            self.dead_letters.topic_for(&self.routes(), letter.route)
        } else {
            None
        };
        let Some(topic) = topic else {
            self.drop_message(
                letter.direction,
                letter.reason,
                letter.route,
                letter.name(),
                &letter.error,
            );
            return then();
        };
        const DEAD: &str = "Message not delivered; publishing it to the dead-letter topic.";
        if self.log_limit.allow(DEAD) {
            warn!(direction = %letter.direction, reason = letter.reason, route = letter.route,
                name = letter.name(), detail = %letter.error, dead_letter_topic = %topic, "{DEAD}");
        }
        self.dead_letters
            .send(self.mqtt(), topic, letter, Box::new(then));
    }
}

/// The retained `online` status announcements: at most one publish in flight, and at most
/// one more asked for while it is. A connection that keeps dropping before the broker
/// acknowledges the announcement would otherwise pile up one more QoS 1 publish per
/// CONNACK, every one of them sent again after each reconnect. One in flight is enough: the
/// MQTT client sends it again on the next connection, after the broker published the will.
#[derive(Debug, Default)]
pub(crate) struct Announcing {
    in_flight: bool,
    again: bool,
}

impl Announcing {
    /// A connection came up: whether to publish now (`false`: one is in flight; it is
    /// published once more when that one ends).
    pub(crate) fn begin(&mut self) -> bool {
        if self.in_flight {
            self.again = true;
            return false;
        }
        self.in_flight = true;
        true
    }

    /// The publish in flight ended: whether to publish once more (a connection came up
    /// meanwhile, and the publish may have been acknowledged on the one before it).
    pub(crate) fn end(&mut self) -> bool {
        if std::mem::take(&mut self.again) {
            return true;
        }
        self.in_flight = false;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::Announcing;

    #[test]
    fn one_announcement_at_a_time_and_one_more_for_the_connections_meanwhile() {
        let mut a = Announcing::default();
        assert!(a.begin(), "the first connection publishes");
        // Five more CONNACKs while it is on its way: no more publishes pile up.
        for _ in 0..5 {
            assert!(!a.begin());
        }
        assert!(a.end(), "published once more for the connections meanwhile");
        assert!(!a.end(), "and then no more");
        assert!(a.begin(), "the next connection publishes again");
        assert!(!a.end());
    }
}

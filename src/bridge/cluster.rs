//! `[cluster]`: replicas of one bridge that share its work through the MQTT broker, with no
//! other infrastructure.
//!
//! - **Membership** ([`membership`], pure): every member keeps a retained record on its status
//!   topic, `bayeux-mqtt-bridge/cluster/<group>/members/<member_id>` (JSON while connected;
//!   the last will and a clean shutdown clear it with a zero-length retained message), and
//!   subscribes to the group's records. MQTT gives a connection one will: with `[cluster]`
//!   the status topic *is* the member record, so the one will serves both.
//! - **Role**: a member knows its role once its own record of the current connection came
//!   back to it (logged as `Cluster role.` with the role, the members and the routes it
//!   forwards, at each change of any of them). The broker handles a connection's packets in order and the subscription to
//!   the records goes out before the record, so by then every record retained at subscribe
//!   time has arrived. Until then, and from the moment the broker is lost, it forwards no
//!   Bayeux → MQTT message and is not ready.
//! - **Gating** ([`Cluster::forwards`]): Bayeux → MQTT (and `both`) routes are forwarded only
//!   by the member the mode names; the others stay subscribed on Bayeux and leave the
//!   messages (counted in `bridge_cluster_not_forwarded_total`).
//! - **MQTT → Bayeux**: every member subscribes through `$share/<group>/<filter>` (without No
//!   Local, which MQTT 5 forbids there); every MQTT publish carries the user property
//!   `bridge-group: <group>`, and a message carrying the member's own group is not forwarded
//!   back to Bayeux.

pub(crate) mod membership;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

use super::Shared;
use super::mapping::Route;
use crate::config::{ClusterConfig, ClusterMode, Config, MqttConfig};
use crate::metrics::{MemberLabels, RoleLabels};
use crate::mqtt::{IncomingMessage, MqttHandle, Properties, QoS};
use membership::{Record, Seen, View};

/// The user property naming the group on every MQTT publish of a member.
pub(crate) const GROUP_PROPERTY: &str = "bridge-group";

/// The roles `bridge_cluster_role` knows.
const ROLES: [&str; 4] = ["unknown", "active", "standby", "partitioned"];

/// One member's view of its group and its role.
#[derive(Debug)]
pub(crate) struct Cluster {
    config: ClusterConfig,
    /// The member topics' common prefix, `.../members/`.
    prefix: String,
    /// Tells this process's records apart from an earlier one's.
    start: String,
    state: Mutex<State>,
    /// Whether the role is known, for [`Cluster::decide`] to wait on.
    known: tokio::sync::watch::Sender<bool>,
    /// How long [`Cluster::decide`] holds a message while the role is not known.
    hold: Duration,
}

#[derive(Debug, Default)]
struct State {
    view: View,
    /// The live members, this one included, sorted.
    members: Vec<String>,
    connected: bool,
    /// Counts connections, for the records' incarnation.
    connection: u64,
    /// The own record of the current connection came back.
    known: bool,
    /// The role, members and owned routes last reported.
    reported: (&'static str, Vec<String>, Vec<String>),
}

impl Cluster {
    /// A member of `config`'s group, not connected yet.
    pub(crate) fn new(config: &ClusterConfig, mqtt: &MqttConfig) -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Cluster {
            prefix: config.members_filter().trim_end_matches('+').to_owned(),
            config: config.clone(),
            start: format!("{}-{start}", std::process::id()),
            state: Mutex::new(State {
                reported: ("unknown", Vec::new(), Vec::new()),
                ..State::default()
            }),
            known: tokio::sync::watch::Sender::new(false),
            hold: 2 * mqtt.keep_alive() + mqtt.connect_timeout(),
        }
    }

    /// Whether `topic` is a member record of the group.
    pub(crate) fn is_member_topic(&self, topic: &str) -> bool {
        membership::member_of(&self.prefix, topic).is_some()
    }

    /// Whether this member forwards Bayeux messages of `route` now: connected, its role known,
    /// and the mode gives it the route.
    pub(crate) fn forwards(&self, route: &Route) -> bool {
        self.forwards_in(&self.lock(), route)
    }

    /// [`Cluster::forwards`], once the role is known: while it is not (the broker was lost,
    /// or the member's new record has not come back yet), the message waits, at most
    /// 2 × keep-alive + the connect timeout. A member cut off from the broker has taken
    /// messages it believed its own, which the standbys left: if it is still the one to
    /// forward them once it is back, they go out late (and may double what a member that took
    /// over meanwhile forwarded) instead of being lost; if not, they are left.
    pub(crate) async fn decide(&self, route: &Route) -> bool {
        let mut known = self.known.subscribe();
        let _ = tokio::time::timeout(self.hold, known.wait_for(|k| *k)).await;
        self.forwards(route)
    }

    /// Whether `properties` say that a member of this group published the message.
    pub(crate) fn published_by_group(&self, properties: &Properties) -> bool {
        (properties.user.iter()).any(|(k, v)| k == GROUP_PROPERTY && *v == self.config.group)
    }

    /// `properties` with the group's user property added (created when there are none).
    pub(crate) fn mark(&self, properties: Option<Arc<Properties>>) -> Arc<Properties> {
        let mut properties = properties.map(|p| (*p).clone()).unwrap_or_default();
        (properties.user).push((GROUP_PROPERTY.to_owned(), self.config.group.clone()));
        Arc::new(properties)
    }

    fn incarnation(&self, connection: u64) -> String {
        format!("{}-{connection}", self.start)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The filter a route subscribes to on MQTT: shared within the group with `[cluster]`.
pub(crate) fn share(cluster: Option<&ClusterConfig>, filter: String) -> String {
    match cluster {
        Some(c) => format!("$share/{}/{filter}", c.group),
        None => filter,
    }
}

/// The MQTT connection is up: a new incarnation, whose record goes out now (after the
/// subscriptions, which the client sends first on a connect). Without the old session the
/// records of the others come again with the subscription.
pub(super) fn connected(shared: &Arc<Shared>, mqtt: &MqttHandle, session_present: bool) {
    let Some(cluster) = &shared.cluster else {
        return;
    };
    let mut s = cluster.lock();
    s.connected = true;
    s.known = false;
    s.connection += 1;
    if !session_present {
        s.view.clear();
    }
    s.members = s.view.members(&cluster.config.member_id);
    drop(s);
    update(shared, mqtt, true);
}

/// The broker is lost: the member stops forwarding at once, and is not ready, until it knows
/// its role again.
pub(super) fn disconnected(shared: &Arc<Shared>, mqtt: &MqttHandle) {
    let Some(cluster) = &shared.cluster else {
        return;
    };
    let mut s = cluster.lock();
    s.connected = false;
    s.known = false;
    drop(s);
    update(shared, mqtt, false);
}

/// A message on one of the group's member topics: applied to the view, and acknowledged.
pub(super) fn on_record(shared: &Arc<Shared>, mqtt: &MqttHandle, message: IncomingMessage) {
    mqtt.ack(message.token);
    let Some(cluster) = &shared.cluster else {
        return;
    };
    let Some(member) = membership::member_of(&cluster.prefix, &message.topic) else {
        return;
    };
    let seen = membership::read(&message.payload);
    let mut s = cluster.lock();
    if member == cluster.config.member_id {
        let current = cluster.incarnation(s.connection);
        match &seen {
            Seen::Online { incarnation } if *incarnation == current => s.known = s.connected,
            Seen::Online { incarnation }
                if !incarnation.starts_with(&cluster.start)
                    && shared
                        .log_limit
                        .allow("Another process uses this member id.") =>
            {
                warn!(member_id = %member, "Another process uses this member id (cluster.member_id must differ per replica), or this member restarted before the broker noticed.");
            }
            _ => {}
        }
    } else if s.view.apply(member, &seen) {
        s.members = s.view.members(&cluster.config.member_id);
    }
    drop(s);
    update(shared, mqtt, false);
}

/// Recomputes the role; when it, the membership or the routes changed (or `announce`, on a
/// new connection): logs it, sets the metrics and readiness, and publishes the record again.
/// Only then: the record comes back to this member, and must not be published once more.
fn update(shared: &Arc<Shared>, mqtt: &MqttHandle, announce: bool) {
    let Some(cluster) = &shared.cluster else {
        return;
    };
    let routes = shared.routes();
    let mut s = cluster.lock();
    let role = role_of(cluster, &s);
    let owned: Vec<String> = (routes.iter())
        .filter(|r| r.subscribes_bayeux() && cluster.forwards_in(&s, r))
        .map(|r| r.name.clone())
        .collect();
    let (members, connection, known) = (s.members.clone(), s.connection, s.known);
    let now = (role, members.clone(), owned.clone());
    let changed = now != s.reported;
    s.reported = now;
    drop(s);
    if changed {
        // Before readiness, so that "Cluster role." precedes "Bridge ready.".
        info!(role, members = %members.join(","), routes = %owned.join(","), "Cluster role.");
    }
    shared.readiness.cluster_role_known(known);
    cluster.known.send_replace(known);
    mirror(shared, role, &members, owned.len());
    if !changed && !announce {
        return;
    }
    let record = Record {
        status: "online".to_owned(),
        group: cluster.config.group.clone(),
        member_id: cluster.config.member_id.clone(),
        incarnation: cluster.incarnation(connection),
        mode: cluster.config.mode.as_str().to_owned(),
        role: role.to_owned(),
        routes: if cluster.config.mode == ClusterMode::Partitioned {
            owned
        } else {
            Vec::new()
        },
        members,
    };
    publish(shared, mqtt, &record);
}

impl Cluster {
    /// [`Cluster::forwards`] with the state locked already.
    fn forwards_in(&self, s: &State, route: &Route) -> bool {
        s.connected
            && s.known
            && membership::forwards(
                self.config.mode,
                &s.members,
                &self.config.member_id,
                &route.name,
            )
    }
}

/// The role the state gives.
fn role_of(cluster: &Cluster, s: &State) -> &'static str {
    if !s.connected || !s.known {
        return "unknown";
    }
    match cluster.config.mode {
        ClusterMode::Partitioned => "partitioned",
        ClusterMode::ActiveStandby
            if s.members
                .first()
                .is_none_or(|m| *m == cluster.config.member_id) =>
        {
            "active"
        }
        ClusterMode::ActiveStandby => "standby",
    }
}

/// `bridge_cluster_*` gauges.
fn mirror(shared: &Shared, role: &'static str, members: &[String], owned: usize) {
    let m = &shared.stats.metrics;
    for r in ROLES {
        (m.cluster_role.get_or_create(&RoleLabels { role: r })).set(i64::from(r == role));
    }
    m.cluster_members.clear();
    for member in members {
        let labels = MemberLabels {
            member_id: member.clone(),
        };
        m.cluster_members.get_or_create(&labels).set(1);
    }
    m.cluster_routes_owned
        .set(i64::try_from(owned).unwrap_or(i64::MAX));
}

/// Publishes `record` as the member's retained status, while connected (the last one
/// published is what the others see; a failure is logged and the next change tries again).
fn publish(shared: &Shared, mqtt: &MqttHandle, record: &Record) {
    if !shared.cluster.as_ref().is_some_and(|c| c.lock().connected) {
        return;
    }
    let Ok(payload) = serde_json::to_vec(record) else {
        return;
    };
    let (mqtt, topic) = (mqtt.clone(), shared.status_topic());
    tokio::spawn(async move {
        if let Err(e) = mqtt
            .publish(&topic, payload.into(), QoS::AtLeastOnce, true)
            .await
        {
            warn!(%topic, error = %e, "Could not publish the cluster member record.");
        }
    });
}

/// What `check` prints about `[cluster]`.
pub(crate) fn describe(config: &Config) -> String {
    let Some(c) = &config.cluster else {
        return "cluster: off (no [cluster])\n".to_owned();
    };
    format!(
        "cluster: group {:?}, member {:?}, mode {}, hot_standby {}; member record and status \
         topic {} (cleared by the last will), members seen on {}; MQTT → Bayeux routes \
         subscribe through $share/{}/<filter>\n",
        c.group,
        c.member_id,
        c.mode,
        c.hot_standby,
        c.member_topic(),
        c.members_filter(),
        c.group,
    )
}

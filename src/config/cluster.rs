//! `[cluster]`: replicas of one bridge that share its work through the MQTT broker.
//!
//! The keys, their defaults (filled in by [`fill_defaults`] at load) and the checks
//! ([`validate`], part of the one validator `check` and the daemon use). What the bridge does
//! with them is in `bridge::cluster`.

use serde::Deserialize;

use super::validate::Invalid;
use super::{ClusterMode, Config, MqttProtocol, de_non_empty};

/// The first levels of every member record topic:
/// `bayeux-mqtt-bridge/cluster/<group>/members/<member_id>`.
pub const MEMBER_TOPIC_ROOT: &str = "bayeux-mqtt-bridge/cluster";

/// The longest `cluster.group` and `cluster.member_id`.
const MAX_NAME: usize = 64;

/// `[cluster]`: cooperation with other replicas of the same bridge. Absent by default: the
/// bridge works alone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The group's name: replicas with the same group and routes form one bridge. Required;
    /// 1 to 64 letters, digits, `-`, `_` or `.` (it is a topic level and the share name of
    /// `$share/<group>/...`).
    pub group: String,
    /// This replica's id in the group; must differ per replica. Default `mqtt.client_id`
    /// (filled in by [`load`](super::load())); same characters as `group`.
    #[serde(default, deserialize_with = "de_non_empty")]
    pub member_id: String,
    /// `"active_standby"` (default): the live member with the lowest id forwards every
    /// Bayeux → MQTT route. `"partitioned"`: the routes are spread over the live members.
    #[serde(default)]
    pub mode: ClusterMode,
    /// Standbys keep a bounded replay buffer so that a takeover loses nothing. Not supported
    /// yet: only `false` (the default) is accepted (`true` is refused).
    #[serde(default)]
    pub hot_standby: bool,
}

impl ClusterConfig {
    /// The retained record of `member_id` (which is also its status topic).
    pub fn member_topic(&self) -> String {
        format!(
            "{}/{}/members/{}",
            MEMBER_TOPIC_ROOT, self.group, self.member_id
        )
    }

    /// The filter every member subscribes to, to see the group's records.
    pub fn members_filter(&self) -> String {
        format!("{}/{}/members/+", MEMBER_TOPIC_ROOT, self.group)
    }
}

/// Fills in `cluster.member_id` (from `mqtt.client_id`) and, with `[cluster]`, the status
/// topic, which is the member's record. Runs before the plain status topic default.
pub(super) fn fill_defaults(config: &mut Config) {
    let Some(cluster) = &mut config.cluster else {
        return;
    };
    if cluster.member_id.is_empty() {
        cluster.member_id = config.mqtt.client_id.clone();
    }
    if config.mqtt.status_topic.is_empty() {
        config.mqtt.status_topic = cluster.member_topic();
    }
}

/// Whether `name` can be a group or member id: a topic level without wildcards and a share
/// name.
fn name(key: &str, value: &str, hint: &str) -> Result<(), Invalid> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        return Ok(());
    }
    Err(Invalid::new(
        key,
        format!("must be 1 to {MAX_NAME} letters, digits, '-', '_' or '.', found {value:?}{hint}"),
    ))
}

/// `[cluster]` and what it needs of the rest: MQTT 5 (shared subscriptions, user
/// properties), the status topic as the member record, no `hot_standby` yet.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    let Some(c) = &config.cluster else {
        return Ok(());
    };
    name("cluster.group", &c.group, "")?;
    let hint = if c.member_id == config.mqtt.client_id {
        " (taken from mqtt.client_id: set cluster.member_id)"
    } else {
        ""
    };
    name("cluster.member_id", &c.member_id, hint)?;
    if config.mqtt.protocol != MqttProtocol::V5 {
        return Err(Invalid::new(
            "mqtt.protocol",
            "[cluster] needs MQTT 5 (shared subscriptions and user properties); set \
             mqtt.protocol = \"5\"",
        ));
    }
    if config.mqtt.status_topic != c.member_topic() {
        return Err(Invalid::new(
            "mqtt.status_topic",
            format!(
                "with [cluster] the status topic is the member's record {:?}: leave \
                 mqtt.status_topic out",
                c.member_topic()
            ),
        ));
    }
    if c.hot_standby {
        return Err(Invalid::new(
            "cluster.hot_standby",
            "true is not supported yet (standbys keep their Bayeux subscriptions but no replay \
             buffer); leave it out or set false",
        ));
    }
    Ok(())
}

/// Valid `[cluster]` settings that are probably not what was meant.
pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.cluster.is_some() && config.replay.enabled {
        out.push(
            "[cluster] with [replay]: each member keeps its own checkpoint file, so a member \
             that takes over resumes from its own live subscription, not from where the \
             failed one stopped (replay.store = \"mqtt\" is not available yet)"
                .to_owned(),
        );
    }
    out
}

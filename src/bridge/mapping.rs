//! Routes: `[[route]]` tables compiled into rules that say what the bridge subscribes to on
//! each side and how a channel name becomes a topic name and back. Pure: no IO.
//!
//! # Rewriting
//!
//! A route pairs a Bayeux channel or pattern with an MQTT topic or filter. Each side is a
//! literal prefix followed by at most one wildcard, and the wildcards correspond:
//!
//! | Bayeux | MQTT | example |
//! |---|---|---|
//! | none | none | `/a/b` ↔ `x/y` |
//! | `*` (exactly one segment) | `+` as the last level | `/sf/*` ↔ `salesforce/+` |
//! | `**` (one or more segments) | `#` | `/sf/events/**` ↔ `salesforce/#` |
//!
//! The literal prefixes may differ in content and length (a prefix rewrite); what the
//! wildcard matched is copied across unchanged, segment for segment. Bayeux allows a
//! wildcard only as the last segment, so an MQTT `+` that is followed by more levels
//! (`sensors/+/temp`) has no positional counterpart and is refused; write `{1}` at that level
//! instead (`/sensors/*` ↔ `sensors/{1}/temp`: the `*` segment goes there, and the bridge
//! subscribes to `sensors/+/temp`). Everything else that cannot be translated both ways is
//! refused at compile time: different numbers or kinds of wildcards, `/meta/**` channels,
//! `/service/**` channels to subscribe to, topics starting with `$`, invalid names.
//!
//! # What does not translate at run time
//!
//! A name that matches a route can still lack a counterpart; the translation functions then
//! return an [`Untranslatable`], and the bridge drops the message (never sends it), logs it
//! with the name escaped, counts it under the reason [`Untranslatable::reason`] and
//! acknowledges it to its source so that it is not delivered again. `unmapped`:
//!
//! - MQTT `#` also matches its parent level (`sensors/#` matches `sensors`), but `**` needs at
//!   least one segment (`/sensors/**` does not match `/sensors`): the topic `sensors` has no
//!   channel.
//! - MQTT levels may be empty (`sensors//a`), channel segments may not.
//! - A topic that yields a `/meta/` channel, or a `/service/` one under a route that does not
//!   name `/service/`.
//! - A captured channel segment that holds `+` or `#` (MQTT wildcards), or a topic that would
//!   start with `$` (the broker's own topics).
//!
//! `invalid_name`: every generated name is checked against the other side's grammar before
//! anything is sent. A topic must pass [`crate::mqtt::validate_topic`] (no NUL, no control
//! character U+0001–U+001F or U+007F–U+009F, no Unicode non-character, at most 65 535
//! bytes): Mosquitto closes the connection on a publish that breaks this, and at QoS ≥ 1
//! would be sent the same publish after every reconnect, stopping both directions for good.
//! A channel must pass [`validate_channel_name`] (the Bayeux grammar as CometD accepts it:
//! ASCII letters, digits, space and `- _ ! ~ ( ) $ @ . # + { }`).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use crate::bayeux::channel::{ChannelPattern, Wildcard, validate_channel_name};
use crate::config::{ConfigError, RouteConfig};
pub use crate::config::{Direction, PayloadMode};

use crate::mqtt::{is_forbidden, validate_topic};
use names::{filter_matches, mqtt_levels};

/// A route that cannot be compiled: which route (numbered from 1), which key, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("route[{route}].{field}: {reason}")]
pub struct MappingError {
    /// Route number, 1-based (`route[1]` is the first `[[route]]`).
    pub route: usize,
    /// The key within the route: `bayeux` or `mqtt`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

impl MappingError {
    /// The dotted key, e.g. `route[3].mqtt`.
    pub fn key(&self) -> String {
        format!("route[{}].{}", self.route, self.field)
    }

    /// The same error as a [`ConfigError`] of `file`, for uniform `check` output.
    pub fn in_file(self, file: &Path) -> ConfigError {
        ConfigError {
            file: file.to_owned(),
            key: Some(self.key()),
            reason: self.reason,
        }
    }
}

/// Why a name that reached a route has no counterpart on the other side (see the module
/// docs). The message is dropped and counted under [`Untranslatable::reason`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untranslatable {
    /// The name does not match the route, or its match has no counterpart under it.
    #[error("{0}")]
    Unmapped(&'static str),
    /// The generated name breaks the other side's grammar; it was never sent.
    #[error("the generated name {name:?} is not valid: {reason}")]
    InvalidName {
        /// The generated name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Untranslatable {
    /// The drop reason it is counted under: `unmapped` or `invalid_name`.
    pub fn reason(&self) -> &'static str {
        match self {
            Untranslatable::Unmapped(_) => "unmapped",
            Untranslatable::InvalidName { .. } => "invalid_name",
        }
    }
}

/// One level of the MQTT side: literal text, or where the Bayeux wildcard's segment(s) go.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture,
}

/// A compiled route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Position in the file, from 0 (`routes[index]`). Logs and errors use [`Route::number`].
    pub index: usize,
    /// `route[n].name`, or `route[<n>]`: the `route` label of its metrics.
    pub name: String,
    /// The Bayeux channel or pattern.
    pub bayeux: ChannelPattern,
    /// The MQTT filter the bridge subscribes to (for `mqtt_to_bayeux`/`both`); with `{1}`
    /// written as `+`.
    pub mqtt_filter: String,
    /// Which way the route forwards.
    pub direction: Direction,
    /// MQTT QoS: of the publishes (Bayeux → MQTT) and of the subscription (MQTT → Bayeux).
    pub qos: u8,
    /// Retain flag of the MQTT publishes.
    pub retain: bool,
    /// What a Bayeux → MQTT publish carries.
    pub payload: PayloadMode,
    /// MQTT 5 properties on Bayeux → MQTT publishes; `None`: on with MQTT 5.
    pub properties: Option<bool>,
    /// MQTT → Bayeux: the topic and user properties into the Bayeux message's `ext`.
    pub ext_properties: bool,
    /// This route's dead-letter topic, instead of the bridge's.
    pub dead_letter_topic: Option<String>,
    /// The MQTT side as written (may hold `{1}`).
    mqtt_template: String,
    /// Literal channel segments before the wildcard.
    bayeux_prefix: Vec<String>,
    /// The MQTT side, level by level; at most one `Capture`.
    mqtt_levels: Vec<Level>,
}

/// Compiles every route, refusing the first that cannot be translated.
pub fn compile(routes: &[RouteConfig]) -> Result<Vec<Route>, MappingError> {
    routes
        .iter()
        .enumerate()
        .map(|(index, config)| compile_one(index, config))
        .collect()
}

/// A [`MappingError`] of route `index` (from 0).
fn error(index: usize, field: &'static str, reason: String) -> MappingError {
    MappingError {
        route: index + 1,
        field,
        reason,
    }
}

fn compile_one(index: usize, config: &RouteConfig) -> Result<Route, MappingError> {
    let bayeux = bayeux_side(config).map_err(|r| error(index, "bayeux", r))?;
    let mqtt_levels = mqtt_side(&bayeux, &config.mqtt).map_err(|r| error(index, "mqtt", r))?;
    let mqtt_filter = filter_of(&mqtt_levels, bayeux.wildcard());
    let bayeux_prefix = literal_prefix(&bayeux);
    // A route that publishes to Bayeux generates channels from this prefix: a prefix outside
    // the grammar would make every one of them invalid.
    if config.direction != Direction::BayeuxToMqtt {
        publishable(&bayeux, &bayeux_prefix).map_err(|r| error(index, "bayeux", r))?;
    }
    Ok(Route {
        index,
        name: (config.name.clone()).unwrap_or_else(|| format!("route[{}]", index + 1)),
        bayeux,
        mqtt_filter,
        direction: config.direction,
        qos: config.qos,
        retain: config.retain,
        payload: config.payload.clone(),
        properties: config.properties,
        ext_properties: config.ext_properties,
        dead_letter_topic: config.dead_letter_topic.clone(),
        mqtt_template: config.mqtt.clone(),
        bayeux_prefix,
        mqtt_levels,
    })
}

/// The Bayeux side: a valid pattern, not `/meta/`, and `/service/` only to publish to.
fn bayeux_side(config: &RouteConfig) -> Result<ChannelPattern, String> {
    let bayeux = ChannelPattern::parse(&config.bayeux)
        .map_err(|e| format!("{:?} is not a valid channel: {}", config.bayeux, e.reason))?;
    if bayeux.is_meta() {
        return Err(format!(
            "{bayeux} is a /meta/ channel: those belong to the Bayeux protocol itself"
        ));
    }
    if bayeux.is_service() && config.direction != Direction::MqttToBayeux {
        return Err(format!(
            "{bayeux} is a /service/ channel: nothing is broadcast there to subscribe to \
             (direction = \"mqtt_to_bayeux\" can publish to it)"
        ));
    }
    Ok(bayeux)
}

/// The MQTT side, level by level: a valid filter whose wildcards correspond to `bayeux`'s,
/// without characters that brokers refuse.
fn mqtt_side(bayeux: &ChannelPattern, mqtt: &str) -> Result<Vec<Level>, String> {
    let levels = mqtt_levels(bayeux, mqtt)?;
    if let Some(c) = mqtt.chars().find(|&c| is_forbidden(c)) {
        return Err(format!(
            "{mqtt:?} holds U+{:04X}: control characters and Unicode non-characters are \
             malformed for MQTT brokers",
            u32::from(c)
        ));
    }
    Ok(levels)
}

/// The MQTT filter of `levels`: the capture becomes `+` (`*`) or `#` (`**`).
fn filter_of(levels: &[Level], wildcard: Wildcard) -> String {
    levels
        .iter()
        .map(|level| match (level, wildcard) {
            (Level::Literal(text), _) => text.as_str(),
            (Level::Capture, Wildcard::Deep) => "#",
            (Level::Capture, _) => "+",
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The literal channel segments before the wildcard.
fn literal_prefix(bayeux: &ChannelPattern) -> Vec<String> {
    let text = bayeux.as_str();
    let literal = match bayeux.wildcard() {
        Wildcard::None => text,
        Wildcard::One => &text[..text.len() - 2],
        Wildcard::Deep => &text[..text.len() - 3],
    };
    literal
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether channels generated under `prefix` can be published (the Bayeux grammar).
fn publishable(bayeux: &ChannelPattern, prefix: &[String]) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    validate_channel_name(&format!("/{}", prefix.join("/"))).map_err(|e| {
        format!(
            "{bayeux} cannot be published to: {} (the bridge publishes only names of the \
             Bayeux grammar as CometD accepts it)",
            e.reason
        )
    })
}

impl Route {
    /// Route number, from 1, as in `check` output, logs and errors (`route[1]`).
    pub fn number(&self) -> usize {
        self.index + 1
    }

    /// How `check` and `explain` name the route: `route[3]`, with its name when it has one
    /// of its own (`route[3] "orders"`).
    pub fn label(&self) -> String {
        let number = format!("route[{}]", self.number());
        match self.name == number {
            true => number,
            false => format!("{number} {:?}", self.name),
        }
    }

    /// Whether the bridge subscribes to [`Route::bayeux`] (direction `bayeux_to_mqtt` or
    /// `both`).
    pub fn subscribes_bayeux(&self) -> bool {
        matches!(self.direction, Direction::BayeuxToMqtt | Direction::Both)
    }

    /// Whether the bridge subscribes to [`Route::mqtt_filter`] (direction `mqtt_to_bayeux` or
    /// `both`).
    pub fn subscribes_mqtt(&self) -> bool {
        matches!(self.direction, Direction::MqttToBayeux | Direction::Both)
    }

    /// Whether `channel` matches this route's Bayeux pattern.
    pub fn matches_channel(&self, channel: &str) -> bool {
        self.bayeux.matches(channel)
    }

    /// Whether `topic` matches this route's MQTT filter (MQTT rules: `#` also matches the
    /// parent level, wildcards at the start do not match `$` topics).
    pub fn matches_topic(&self, topic: &str) -> bool {
        filter_matches(&self.mqtt_filter, topic)
    }

    /// The MQTT topic for a message on `channel`, or why there is none: the channel does not
    /// match the Bayeux pattern or a captured segment cannot be a topic level (holds `+` or
    /// `#`, or would start the topic with `$`): [`Untranslatable::Unmapped`]; the topic is not
    /// a valid MQTT topic name (a control character or non-character, NUL, too long):
    /// [`Untranslatable::InvalidName`].
    pub fn channel_to_topic(&self, channel: &str) -> Result<String, Untranslatable> {
        if !self.bayeux.matches(channel) {
            return Err(Untranslatable::Unmapped(
                "the channel does not match the route's Bayeux pattern",
            ));
        }
        // The segments after the literal prefix, as one `a/b/c` slice of the channel.
        let mut captured = channel.get(1..).unwrap_or_default();
        for _ in 0..self.bayeux_prefix.len() {
            captured = captured.split_once('/').map_or("", |(_, rest)| rest);
        }
        if captured.contains(['+', '#']) {
            return Err(Untranslatable::Unmapped(
                "the channel holds `+` or `#`, which are wildcards in MQTT",
            ));
        }
        let mut topic = String::with_capacity(channel.len() + 16);
        for (i, level) in self.mqtt_levels.iter().enumerate() {
            if i > 0 {
                topic.push('/');
            }
            match level {
                Level::Literal(text) => topic.push_str(text),
                Level::Capture => topic.push_str(captured),
            }
        }
        if topic.starts_with('$') {
            return Err(Untranslatable::Unmapped(
                "the topic would start with `$`, which is the broker's own namespace",
            ));
        }
        match validate_topic(&topic) {
            Ok(()) => Ok(topic),
            Err(reason) => Err(Untranslatable::InvalidName {
                name: topic,
                reason,
            }),
        }
    }

    /// The Bayeux channel for a message on `topic`, or why there is none: the topic does not
    /// match the MQTT side, a captured level is empty, or the result is a `/meta/` channel or
    /// a `/service/` channel the route does not name: [`Untranslatable::Unmapped`]; the
    /// channel breaks the Bayeux grammar ([`validate_channel_name`]):
    /// [`Untranslatable::InvalidName`].
    pub fn topic_to_channel(&self, topic: &str) -> Result<String, Untranslatable> {
        const NO_MATCH: Untranslatable =
            Untranslatable::Unmapped("the topic does not match the route's MQTT side");
        if topic.starts_with('$') {
            return Err(NO_MATCH);
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let n = self.mqtt_levels.len();
        let deep = self.bayeux.wildcard() == Wildcard::Deep;
        if levels.len() != n && !(deep && levels.len() > n) {
            return Err(NO_MATCH);
        }
        let mut captured: &[&str] = &[];
        for (i, level) in self.mqtt_levels.iter().enumerate() {
            match level {
                Level::Literal(text) if text != levels[i] => return Err(NO_MATCH),
                Level::Literal(_) => {}
                Level::Capture if deep => captured = &levels[i..],
                Level::Capture => captured = &levels[i..=i],
            }
        }
        if captured.iter().any(|level| level.is_empty()) {
            return Err(Untranslatable::Unmapped(
                "the topic has an empty level, which cannot be a channel segment",
            ));
        }
        let channel = format!(
            "/{}",
            (self.bayeux_prefix.iter().map(String::as_str))
                .chain(captured.iter().copied())
                .collect::<Vec<_>>()
                .join("/")
        );
        // `/service/` channels are the server's request/response services: only a route that
        // names them (its Bayeux side starts with `/service/`) may publish there, never a
        // catch-all such as `/**`.
        if channel.starts_with("/service/")
            && self.bayeux_prefix.first().map(String::as_str) != Some("service")
        {
            return Err(Untranslatable::Unmapped(
                "the channel would be a /service/ channel, which only a route naming /service/ \
                 may publish to",
            ));
        }
        if channel == "/meta" || channel.starts_with("/meta/") {
            return Err(Untranslatable::Unmapped(
                "the channel would be a /meta/ channel, which belongs to the protocol",
            ));
        }
        match validate_channel_name(&channel) {
            Ok(()) => Ok(channel),
            Err(e) => Err(Untranslatable::InvalidName {
                name: channel,
                reason: e.reason.to_owned(),
            }),
        }
    }
}

/// Checks `routes` for `replay.enabled = true`: every route that subscribes to Bayeux must
/// name one channel, no wildcard. Replay positions are per concrete channel (Salesforce's
/// replay extension takes one `"<channel>": replayId` entry per subscribed channel and has
/// no way to resume a pattern), so a wildcard subscription could never resume, while its
/// deliveries would bring one position per channel name the server sends. At most
/// `max_channels` distinct channels may be subscribed (the checkpoint store's bound).
pub fn check_replay(routes: &[Route], max_channels: usize) -> Result<(), MappingError> {
    if let Some(route) = routes
        .iter()
        .find(|r| r.subscribes_bayeux() && !r.bayeux.is_literal())
    {
        return Err(MappingError {
            route: route.number(),
            field: "bayeux",
            reason: format!(
                "{} is a pattern, but replay.enabled = true: replay positions are kept per \
                 concrete channel (the Salesforce replay extension resumes named channels, \
                 not patterns), so a wildcard subscription cannot resume; give each channel \
                 its own route, or turn replay off",
                route.bayeux
            ),
        });
    }
    let subscriptions = bayeux_subscriptions(routes);
    if subscriptions.len() > max_channels
        && let Some(route) = routes.iter().rfind(|r| r.subscribes_bayeux())
    {
        return Err(MappingError {
            route: route.number(),
            field: "bayeux",
            reason: format!(
                "with replay.enabled = true the routes may subscribe to at most {max_channels} \
                 Bayeux channels (the checkpoint store's bound); they subscribe to {}",
                subscriptions.len()
            ),
        });
    }
    Ok(())
}

/// The distinct Bayeux patterns the bridge subscribes to, in route order.
pub fn bayeux_subscriptions(routes: &[Route]) -> Vec<ChannelPattern> {
    let mut seen = HashSet::new();
    routes
        .iter()
        .filter(|r| r.subscribes_bayeux() && seen.insert(&r.bayeux))
        .map(|r| r.bayeux.clone())
        .collect()
}

/// The distinct MQTT filters the bridge subscribes to, in route order, each with the highest
/// QoS of the routes that share it.
pub fn mqtt_subscriptions(routes: &[Route]) -> Vec<(String, u8)> {
    let mut out: Vec<(String, u8)> = Vec::new();
    let mut at: HashMap<&str, usize> = HashMap::new();
    for route in routes.iter().filter(|r| r.subscribes_mqtt()) {
        match at.get(route.mqtt_filter.as_str()) {
            Some(&i) => out[i].1 = out[i].1.max(route.qos),
            None => {
                at.insert(&route.mqtt_filter, out.len());
                out.push((route.mqtt_filter.clone(), route.qos));
            }
        }
    }
    out
}

mod explain;
mod index;
mod loops;
mod names;
mod report;
#[cfg(test)]
mod tests;

pub use explain::{Explanation, Query, explain};
use index::PatternTrie;
pub use index::Routes;
pub use loops::{Loop, find as find_loops};
pub use report::{describe, warnings};

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
//! return `None`, and the bridge logs and counts the message as unmapped:
//!
//! - MQTT `#` also matches its parent level (`sensors/#` matches `sensors`), but `**` needs at
//!   least one segment (`/sensors/**` does not match `/sensors`): the topic `sensors` has no
//!   channel.
//! - MQTT levels may be empty (`sensors//a`), channel segments may not.
//! - A captured topic level that is not a valid channel segment (holds `*`, a control
//!   character) or yields a `/meta/` channel.
//! - A captured channel segment that holds `+`, `#` or NUL, or a topic that would start
//!   with `$`.

use std::path::Path;

use crate::bayeux::channel::{ChannelPattern, Wildcard, validate_publish_channel};
use crate::config::{ConfigError, RouteConfig};
pub use crate::config::{Direction, PayloadMode};

use names::{MQTT_MAX_NAME, filter_matches, mqtt_levels};

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

fn compile_one(index: usize, config: &RouteConfig) -> Result<Route, MappingError> {
    let err = |field, reason: String| MappingError {
        route: index + 1,
        field,
        reason,
    };
    let bayeux = ChannelPattern::parse(&config.bayeux).map_err(|e| {
        err(
            "bayeux",
            format!("{:?} is not a valid channel: {}", config.bayeux, e.reason),
        )
    })?;
    if bayeux.is_meta() {
        return Err(err(
            "bayeux",
            format!("{bayeux} is a /meta/ channel: those belong to the Bayeux protocol itself"),
        ));
    }
    if bayeux.is_service() && config.direction != Direction::MqttToBayeux {
        return Err(err(
            "bayeux",
            format!(
                "{bayeux} is a /service/ channel: nothing is broadcast there to subscribe to \
                 (direction = \"mqtt_to_bayeux\" can publish to it)"
            ),
        ));
    }
    let mqtt_levels = mqtt_levels(&bayeux, &config.mqtt).map_err(|r| err("mqtt", r))?;
    let wildcard = bayeux.wildcard();
    let mqtt_filter = mqtt_levels
        .iter()
        .map(|level| match (level, wildcard) {
            (Level::Literal(text), _) => text.as_str(),
            (Level::Capture, Wildcard::Deep) => "#",
            (Level::Capture, _) => "+",
        })
        .collect::<Vec<_>>()
        .join("/");
    let text = bayeux.as_str();
    let literal = match wildcard {
        Wildcard::None => text,
        Wildcard::One => &text[..text.len() - 2],
        Wildcard::Deep => &text[..text.len() - 3],
    };
    let bayeux_prefix = literal
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    Ok(Route {
        index,
        bayeux,
        mqtt_filter,
        direction: config.direction,
        qos: config.qos,
        retain: config.retain,
        payload: config.payload,
        mqtt_template: config.mqtt.clone(),
        bayeux_prefix,
        mqtt_levels,
    })
}
impl Route {
    /// Route number, from 1, as in `check` output, logs and errors (`route[1]`).
    pub fn number(&self) -> usize {
        self.index + 1
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

    /// The MQTT topic for a message on `channel`, or `None` if the channel does not match the
    /// Bayeux pattern or a captured segment cannot be a topic level (holds `+`, `#` or NUL,
    /// or would start the topic with `$`).
    pub fn channel_to_topic(&self, channel: &str) -> Option<String> {
        if !self.bayeux.matches(channel) {
            return None;
        }
        // The segments after the literal prefix, as one `a/b/c` slice of the channel.
        let mut captured = channel.get(1..).unwrap_or_default();
        for _ in 0..self.bayeux_prefix.len() {
            captured = captured.split_once('/').map_or("", |(_, rest)| rest);
        }
        if captured.contains(['+', '#', '\0']) {
            return None;
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
        (!topic.starts_with('$') && topic.len() <= MQTT_MAX_NAME).then_some(topic)
    }

    /// The Bayeux channel for a message on `topic`, or `None` if the topic does not match
    /// the MQTT side or a captured level cannot be a channel segment (empty, holds `*` or a
    /// control character) or the result is a `/meta/` channel.
    pub fn topic_to_channel(&self, topic: &str) -> Option<String> {
        if topic.starts_with('$') {
            return None;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let n = self.mqtt_levels.len();
        let deep = self.bayeux.wildcard() == Wildcard::Deep;
        if levels.len() != n && !(deep && levels.len() > n) {
            return None;
        }
        let mut captured: &[&str] = &[];
        for (i, level) in self.mqtt_levels.iter().enumerate() {
            match level {
                Level::Literal(text) if text != levels[i] => return None,
                Level::Literal(_) => {}
                Level::Capture if deep => captured = &levels[i..],
                Level::Capture => captured = &levels[i..=i],
            }
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
            return None;
        }
        match validate_publish_channel(&channel) {
            Ok(pattern) if !pattern.is_meta() => Some(channel),
            _ => None,
        }
    }
}

/// The distinct Bayeux patterns the bridge subscribes to, in route order.
pub fn bayeux_subscriptions(routes: &[Route]) -> Vec<ChannelPattern> {
    let mut out: Vec<ChannelPattern> = Vec::new();
    for route in routes.iter().filter(|r| r.subscribes_bayeux()) {
        if !out.contains(&route.bayeux) {
            out.push(route.bayeux.clone());
        }
    }
    out
}

/// The distinct MQTT filters the bridge subscribes to, in route order, each with the highest
/// QoS of the routes that share it.
pub fn mqtt_subscriptions(routes: &[Route]) -> Vec<(String, u8)> {
    let mut out: Vec<(String, u8)> = Vec::new();
    for route in routes.iter().filter(|r| r.subscribes_mqtt()) {
        match out
            .iter_mut()
            .find(|(filter, _)| *filter == route.mqtt_filter)
        {
            Some((_, qos)) => *qos = (*qos).max(route.qos),
            None => out.push((route.mqtt_filter.clone(), route.qos)),
        }
    }
    out
}

mod names;
mod report;
#[cfg(test)]
mod tests;

pub use report::{describe, warnings};

//! `explain`: where a message on one concrete channel or topic goes, route by route, and why
//! a route that nearly matches does not take it. Pure.

use std::fmt::Write as _;

use crate::bayeux::channel::Wildcard;

use super::names::filter_matches;
use super::{Route, Routes};

/// What `explain` is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// A message on this Bayeux channel.
    Channel(String),
    /// A message on this MQTT topic.
    Topic(String),
}

/// `explain`'s answer: the text to print, and how many routes take the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// One block per route that matches or nearly matches, in route order.
    pub text: String,
    /// Routes that forward the message.
    pub applies: usize,
}

/// What one route does with the message.
enum Verdict {
    /// It forwards the message to this name.
    Applies(String),
    /// It matches (or nearly), but does not forward it, for this reason.
    Not(String),
}

/// Explains what `routes` do with a message on `query`.
pub fn explain(routes: &[Route], query: &Query) -> Explanation {
    let index = Routes::new(routes.to_vec());
    let mut text = String::new();
    let mut applies = 0;
    let mut targets: Vec<(String, String)> = Vec::new();
    let (side, name) = match query {
        Query::Channel(c) => ("Bayeux channel", c),
        Query::Topic(t) => ("MQTT topic", t),
    };
    let _ = writeln!(text, "{side} {name}:");
    for route in routes {
        let verdict = match query {
            Query::Channel(channel) => for_channel(route, channel),
            Query::Topic(topic) => for_topic(route, topic),
        };
        match verdict {
            Some(Verdict::Applies(to)) => {
                let duplicate = targets.iter().find(|(t, _)| *t == to).map(|(_, by)| by);
                if let (Query::Topic(_), Some(by)) = (query, duplicate) {
                    let _ = writeln!(
                        text,
                        "\n{}  does not apply: {to} is already a target of {by} (a topic is \
                         published to each distinct channel once)",
                        route.label()
                    );
                    continue;
                }
                applies += 1;
                targets.push((to.clone(), route.label()));
                applies_block(&mut text, &index, route, query, &to);
            }
            Some(Verdict::Not(why)) => {
                let _ = writeln!(text, "\n{}  does not apply: {why}", route.label());
            }
            None => {}
        }
    }
    let _ = match applies {
        0 => writeln!(text, "\nNo route applies: the bridge does not forward it."),
        1 => writeln!(text, "\n1 route applies."),
        n => writeln!(text, "\n{n} routes apply."),
    };
    Explanation { text, applies }
}

/// The lines about a route that forwards the message to `to`.
fn applies_block(out: &mut String, index: &Routes, route: &Route, query: &Query, to: &str) {
    let (from, to_side, settings) = match query {
        Query::Channel(c) => (
            c,
            "MQTT topic",
            format!(
                "qos {}, retain {}, payload {}",
                route.qos, route.retain, route.payload
            ),
        ),
        Query::Topic(t) => (
            t,
            "Bayeux channel",
            format!("qos {} (of the MQTT subscription)", route.qos),
        ),
    };
    let _ = writeln!(
        out,
        "\n{}  applies: {from} → {to_side} {to}\n  direction {}, {settings}",
        route.label(),
        route.direction
    );
    // The bridge's own publish comes back when it also reads the name it publishes to.
    let readers: Vec<String> = match query {
        Query::Channel(_) => index.mqtt_matches(to).map(Route::label).collect(),
        Query::Topic(_) => index.bayeux_matches(to).map(Route::label).collect(),
    };
    let _ = match readers.is_empty() {
        true => writeln!(
            out,
            "  loop prevention: not needed (no route reads {to} back)"
        ),
        false => writeln!(
            out,
            "  loop prevention: applies ({} read {to} back; the bridge's own publish is not \
             forwarded again)",
            readers.join(", ")
        ),
    };
}

/// What `route` does with a message on `channel`: `None` when it has nothing to do with it.
fn for_channel(route: &Route, channel: &str) -> Option<Verdict> {
    if route.matches_channel(channel) {
        if !route.subscribes_bayeux() {
            return Some(Verdict::Not(format!(
                "its direction is {}: it publishes to {channel} but does not subscribe to it",
                route.direction
            )));
        }
        if channel.starts_with("/service/") || channel.starts_with("/meta/") {
            return Some(Verdict::Not(format!(
                "{} matches, but the server answers {channel} itself and never broadcasts \
                 it, so the subscription does not receive it",
                route.bayeux
            )));
        }
        return Some(match route.channel_to_topic(channel) {
            Ok(topic) => Verdict::Applies(topic),
            Err(e) => Verdict::Not(format!("{} matches, but {e}", route.bayeux)),
        });
    }
    channel_near_miss(route, channel).map(Verdict::Not)
}

/// Why `route`'s pattern nearly matches `channel` but does not, if it does nearly.
fn channel_near_miss(route: &Route, channel: &str) -> Option<String> {
    let segments: Vec<&str> = channel.strip_prefix('/')?.split('/').collect();
    let prefix = &route.bayeux_prefix;
    let under = segments.len() >= prefix.len() && segments.iter().zip(prefix).all(|(s, p)| s == p);
    let extra = segments.len().saturating_sub(prefix.len());
    match route.bayeux.wildcard() {
        Wildcard::One if under && extra > 1 => Some(format!(
            "{} matches exactly one more segment, {channel} has {extra}; `**` would match \
             them all",
            route.bayeux
        )),
        Wildcard::Deep | Wildcard::One if under && extra == 0 => Some(format!(
            "{} needs one more segment: it does not match {channel} itself",
            route.bayeux
        )),
        Wildcard::None if under && extra > 0 && route.subscribes_bayeux() => Some(format!(
            "{} names one channel; {}/* or {}/** would take {channel}",
            route.bayeux, route.bayeux, route.bayeux
        )),
        _ => None,
    }
}

/// What `route` does with a message on `topic`: `None` when it has nothing to do with it.
fn for_topic(route: &Route, topic: &str) -> Option<Verdict> {
    if topic.starts_with('$') {
        return filter_matches(&route.mqtt_filter, topic.trim_start_matches('$')).then(|| {
            Verdict::Not(format!(
                "{topic} starts with `$`, the broker's own topics, which wildcards do not \
                 match and routes cannot name"
            ))
        });
    }
    if route.matches_topic(topic) {
        if !route.subscribes_mqtt() {
            return Some(Verdict::Not(format!(
                "its direction is {}: it publishes to {topic} but does not subscribe to it",
                route.direction
            )));
        }
        let levels = topic.split('/').count();
        if route.bayeux.wildcard() == Wildcard::Deep && levels < route.mqtt_levels.len() {
            return Some(Verdict::Not(format!(
                "{} also matches its parent level {topic}, but {} needs one more segment, so \
                 {topic} has no channel",
                route.mqtt_filter, route.bayeux
            )));
        }
        return Some(match route.topic_to_channel(topic) {
            Ok(channel) => Verdict::Applies(channel),
            Err(e) => Verdict::Not(format!("{} matches, but {e}", route.mqtt_filter)),
        });
    }
    topic_near_miss(route, topic).map(Verdict::Not)
}

/// Why `route`'s filter nearly matches `topic` but does not, if it does nearly.
fn topic_near_miss(route: &Route, topic: &str) -> Option<String> {
    let more = topic.split('/').count() > route.mqtt_levels.len();
    if route.bayeux.wildcard() != Wildcard::One || !route.subscribes_mqtt() || !more {
        return None;
    }
    // `+` takes exactly one level: would `#` at the same place match?
    let deep = route.mqtt_filter.replacen('+', "#", 1);
    let prefix = deep.split("/#").next().unwrap_or_default();
    let candidate = format!("{prefix}/#");
    filter_matches(&candidate, topic).then(|| {
        format!(
            "{} takes exactly one level at the `+`; {topic} has more there (`#` with a \
             `**` route would take them)",
            route.mqtt_filter
        )
    })
}

//! What `check` shows about compiled routes: a description with example rewrites, and
//! warnings about overlapping routes and keys without effect. Pure.

use std::fmt::Write as _;

use crate::bayeux::channel::{ChannelPattern, Wildcard};

use super::{Direction, PatternTrie, PayloadMode, Route, bayeux_subscriptions, mqtt_subscriptions};

impl Route {
    /// One or two (channel, topic) pairs that show how this route rewrites names.
    fn examples(&self) -> Vec<(String, String)> {
        let samples: &[&str] = match self.bayeux.wildcard() {
            Wildcard::None => &[""],
            Wildcard::One => &["x"],
            Wildcard::Deep => &["x", "x/y"],
        };
        samples
            .iter()
            .filter_map(|sample| {
                let channel = match sample {
                    &"" => self.bayeux.as_str().to_owned(),
                    s => format!(
                        "/{}",
                        self.bayeux_prefix
                            .iter()
                            .map(String::as_str)
                            .chain(s.split('/'))
                            .collect::<Vec<_>>()
                            .join("/")
                    ),
                };
                let topic = self.channel_to_topic(&channel).ok()?;
                Some((channel, topic))
            })
            .collect()
    }
}

/// A level of a pattern, for overlap checks.
#[derive(Debug, Clone, Copy)]
pub(super) enum Seg<'a> {
    Literal(&'a str),
    One,
    /// The last level; matches at least `deep_min` levels.
    Deep,
}

pub(super) fn bayeux_segs(pattern: &ChannelPattern) -> Vec<Seg<'_>> {
    pattern.as_str()[1..]
        .split('/')
        .map(|s| match s {
            "*" => Seg::One,
            "**" => Seg::Deep,
            s => Seg::Literal(s),
        })
        .collect()
}

pub(super) fn mqtt_segs(filter: &str) -> Vec<Seg<'_>> {
    filter
        .split('/')
        .map(|s| match s {
            "+" => Seg::One,
            "#" => Seg::Deep,
            s => Seg::Literal(s),
        })
        .collect()
}

/// Whether some name matches both `a` and `b`: the plain pairwise rule that
/// [`super::PatternTrie::overlapping`] is tested against. `deep_min` is how many levels the trailing
/// deep wildcard needs: 1 for Bayeux `**`, 0 for MQTT `#` (which matches its parent).
#[cfg(test)]
pub(super) fn overlap(a: &[Seg], b: &[Seg], deep_min: usize) -> bool {
    // A pattern's possible lengths: exactly len, or at least len - 1 + deep_min.
    let reaches = |p: &[Seg], n: usize| match p.last() {
        Some(Seg::Deep) => true,
        _ => p.len() >= n,
    };
    match (a.first(), b.first()) {
        (None, None) => true,
        (Some(Seg::Deep), _) => reaches(b, deep_min),
        (_, Some(Seg::Deep)) => reaches(a, deep_min),
        (None, _) | (_, None) => false,
        (Some(Seg::Literal(x)), Some(Seg::Literal(y))) if x != y => false,
        (Some(_), Some(_)) => overlap(&a[1..], &b[1..], deep_min),
    }
}

/// Pairs of routes that forward the same message in the same direction, in route order.
/// Each route is looked up in a trie of the routes before it, so that the cost grows with the
/// overlaps found, not with the square of the number of routes.
fn overlaps(routes: &[Route]) -> Vec<String> {
    let mut pairs: Vec<(usize, usize, bool)> = Vec::new();
    let mut bayeux = PatternTrie::new(1);
    let mut mqtt = PatternTrie::new(0);
    for (b, route) in routes.iter().enumerate() {
        if route.subscribes_bayeux() {
            let segs = bayeux_segs(&route.bayeux);
            pairs.extend(bayeux.overlapping(&segs).into_iter().map(|a| (a, b, false)));
            bayeux.insert(&segs, b);
        }
        if route.subscribes_mqtt() {
            let segs = mqtt_segs(&route.mqtt_filter);
            pairs.extend(mqtt.overlapping(&segs).into_iter().map(|a| (a, b, true)));
            mqtt.insert(&segs, b);
        }
    }
    pairs.sort_unstable();
    pairs
        .into_iter()
        .filter_map(|(a, b, mqtt)| Some((routes.get(a)?, routes.get(b)?, mqtt)))
        .map(|(a, b, mqtt)| match mqtt {
            false => format!(
                "{} ({}) and {} ({}) overlap: a Bayeux message on a channel both match is \
                 forwarded to MQTT once per route",
                a.label(),
                a.bayeux,
                b.label(),
                b.bayeux
            ),
            true => format!(
                "{} ({}) and {} ({}) overlap: an MQTT message on a topic both match is \
                 forwarded to Bayeux once per distinct channel",
                a.label(),
                a.mqtt_filter,
                b.label(),
                b.mqtt_filter
            ),
        })
        .collect()
}

/// Valid routes that are probably mistakes: two routes that forward the same message in the
/// same direction (it is then forwarded once per route), routes that feed each other's
/// messages back across directions (see [`super::find_loops`]), and keys that have no effect.
pub fn warnings(routes: &[Route]) -> Vec<String> {
    let mut out = overlaps(routes);
    out.extend(super::loops::warnings(routes));
    for route in routes.iter().filter(|r| !r.subscribes_bayeux()) {
        let n = route.number();
        if route.retain {
            out.push(format!(
                "route[{n}].retain has no effect: the route only forwards MQTT → Bayeux"
            ));
        }
        if route.payload != PayloadMode::Data {
            out.push(format!(
                "route[{n}].payload has no effect: the route only forwards MQTT → Bayeux"
            ));
        }
    }
    for route in routes.iter().filter(|r| r.mqtt_template.starts_with('/')) {
        out.push(format!(
            "route[{}].mqtt {:?} starts with '/', so its first level is empty; MQTT topics \
             usually do not",
            route.number(),
            route.mqtt_template
        ));
    }
    out
}

/// What `bayeux-mqtt-bridge check` prints: each route with its direction, what it
/// subscribes to and publishes on each side and example rewrites; then every subscription
/// the bridge will make, and the warnings.
pub fn describe(routes: &[Route]) -> String {
    let mut out = String::new();
    let plural = if routes.len() == 1 { "" } else { "s" };
    let _ = writeln!(out, "{} route{plural}:", routes.len());
    for route in routes {
        describe_route(&mut out, route);
    }
    let bayeux: Vec<String> = bayeux_subscriptions(routes)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mqtt: Vec<String> = mqtt_subscriptions(routes)
        .iter()
        .map(|(filter, qos)| format!("{filter} (qos {qos})"))
        .collect();
    let list = |items: Vec<String>| {
        if items.is_empty() {
            "none".to_owned()
        } else {
            items.join(", ")
        }
    };
    let _ = writeln!(out, "\nBayeux subscriptions: {}", list(bayeux));
    let _ = writeln!(out, "MQTT subscriptions: {}", list(mqtt));
    let warnings = warnings(routes);
    if !warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings:");
        for warning in warnings {
            let _ = writeln!(out, "  - {warning}");
        }
    }
    out
}

fn describe_route(out: &mut String, route: &Route) {
    let _ = write!(
        out,
        "\n{}  {}  qos {}",
        route.label(),
        route.direction,
        route.qos
    );
    if route.subscribes_bayeux() {
        let _ = write!(out, ", retain {}, payload {}", route.retain, route.payload);
    }
    let mqtt = if route.mqtt_template == route.mqtt_filter {
        route.mqtt_filter.clone()
    } else {
        format!("{} (filter {})", route.mqtt_template, route.mqtt_filter)
    };
    let (arrow, line) = match route.direction {
        Direction::BayeuxToMqtt => (
            "→",
            format!("subscribe Bayeux {}, publish MQTT {mqtt}", route.bayeux),
        ),
        Direction::MqttToBayeux => (
            "←",
            format!("subscribe MQTT {mqtt}, publish Bayeux {}", route.bayeux),
        ),
        Direction::Both => (
            "↔",
            format!(
                "subscribe and publish Bayeux {} and MQTT {mqtt}",
                route.bayeux
            ),
        ),
    };
    let _ = writeln!(out, "\n  {line}");
    for (i, (channel, topic)) in route.examples().into_iter().enumerate() {
        let label = if i == 0 { "e.g." } else { "    " };
        let _ = writeln!(out, "  {label} {channel} {arrow} {topic}");
    }
    let literal_levels = route.mqtt_levels.len() - 1;
    if route.subscribes_mqtt() && route.bayeux.wildcard() == Wildcard::Deep && literal_levels > 0 {
        let parent = route
            .mqtt_filter
            .strip_suffix("/#")
            .unwrap_or(&route.mqtt_filter);
        let _ = writeln!(
            out,
            "  not forwarded: topic {parent} (matches {} but {} needs one more segment)",
            route.mqtt_filter, route.bayeux
        );
    }
}

//! The loop lint of `check`: pairs of routes whose translations feed each other across
//! directions. Pure.
//!
//! Route A forwards a channel to a topic that route B reads, and B forwards that topic to a
//! channel that A reads: a message can go round. Within one bridge the echo suppression
//! stops it (the bridge's own MQTT publishes do not come back: No Local with MQTT 5, the echo
//! filter with 3.1.1; its own Bayeux publishes that the server delivers back are recognised by
//! the Bayeux echo filter), so the warning says so, and what it costs: an identical message
//! from someone else within the echo window is dropped once, and a second bridge (or any
//! client relaying between the two sides) with the same routes would not be stopped. A route
//! with `direction = "both"` is its own such pair and is not reported; two routes (`both` or
//! not) are.

use std::collections::HashSet;

use super::Route;
use super::index::PatternTrie;
use super::report::{Seg, mqtt_segs};

/// A loop between two routes: `forth` forwards `channel` to `topic`, which `back` forwards
/// to `back_channel`, a channel `forth` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// The route that forwards Bayeux → MQTT.
    pub forth: usize,
    /// The route that forwards MQTT → Bayeux.
    pub back: usize,
    /// An example channel.
    pub channel: String,
    /// What `forth` makes of it.
    pub topic: String,
    /// What `back` makes of `topic`.
    pub back_channel: String,
}

/// Every pair of distinct routes that feed each other (each pair once, in route order).
/// Each Bayeux → MQTT route is looked up in a trie of the MQTT filters, so the cost grows
/// with the pairs that overlap, not with the square of the number of routes.
pub fn find(routes: &[Route]) -> Vec<Loop> {
    let mut filters = PatternTrie::new(0);
    for route in routes.iter().filter(|r| r.subscribes_mqtt()) {
        filters.insert(&mqtt_segs(&route.mqtt_filter), route.index);
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for forth in routes.iter().filter(|r| r.subscribes_bayeux()) {
        for b in filters.overlapping(&mqtt_segs(&forth.mqtt_filter)) {
            let Some(back) = routes.get(b) else { continue };
            if back.index == forth.index || seen.contains(&(back.index, forth.index)) {
                continue;
            }
            if let Some(found) = example(forth, back) {
                seen.insert((forth.index, back.index));
                out.push(found);
            }
        }
    }
    out.sort_by_key(|l| (l.forth.min(l.back), l.forth.max(l.back)));
    out
}

/// A channel that goes round `forth` then `back` and arrives where `forth` reads, if any.
fn example(forth: &Route, back: &Route) -> Option<Loop> {
    let meet = meeting_topic(
        &mqtt_segs(&forth.mqtt_filter),
        &mqtt_segs(&back.mqtt_filter),
    )?;
    // `#` also matches its parent level and `**` needs a segment: try one level deeper too.
    [meet.clone(), format!("{meet}/x")]
        .into_iter()
        .find_map(|topic| {
            let channel = forth.topic_to_channel(&topic).ok()?;
            let topic = forth.channel_to_topic(&channel).ok()?;
            if !back.matches_topic(&topic) {
                return None;
            }
            let back_channel = back.topic_to_channel(&topic).ok()?;
            let loops = forth.matches_channel(&back_channel);
            loops.then_some(Loop {
                forth: forth.index,
                back: back.index,
                channel,
                topic,
                back_channel,
            })
        })
}

/// A concrete topic that both filters match (wildcards filled with `x`), if they overlap.
fn meeting_topic(a: &[Seg], b: &[Seg]) -> Option<String> {
    let mut levels: Vec<&str> = Vec::new();
    let (mut a, mut b) = (a, b);
    loop {
        match (a.split_first(), b.split_first()) {
            (None, None) => break,
            (Some((Seg::Deep, _)), None) | (None, Some((Seg::Deep, _))) => break,
            (Some((Seg::Deep, _)), Some(_)) => return Some(filled(&levels, b)),
            (Some(_), Some((Seg::Deep, _))) => return Some(filled(&levels, a)),
            (None, Some(_)) | (Some(_), None) => return None,
            (Some((x, rest_a)), Some((y, rest_b))) => {
                levels.push(match (x, y) {
                    (Seg::Literal(p), Seg::Literal(q)) if p != q => return None,
                    (Seg::Literal(p), _) | (_, Seg::Literal(p)) => p,
                    _ => "x",
                });
                (a, b) = (rest_a, rest_b);
            }
        }
    }
    Some(levels.join("/"))
}

/// `levels` followed by `rest` with its wildcards as `x` (a trailing `#` as nothing).
fn filled(levels: &[&str], rest: &[Seg]) -> String {
    let tail = rest.iter().filter_map(|seg| match seg {
        Seg::Literal(text) => Some(*text),
        Seg::One => Some("x"),
        Seg::Deep => None,
    });
    levels
        .iter()
        .copied()
        .chain(tail)
        .collect::<Vec<_>>()
        .join("/")
}

/// `check`'s warning about `found`.
pub fn describe(routes: &[Route], found: &Loop) -> String {
    let label = |i: usize| routes.get(i).map_or_else(String::new, Route::label);
    format!(
        "{} and {} feed each other across directions: {} → {} ({}), then {} → {} ({}), \
         which {} reads again. Echo suppression covers it within this bridge (its own \
         publishes are recognised and not forwarded back; an identical message from someone \
         else within 60 s is dropped once); a second bridge or a client relaying between the \
         two sides with the same routes would loop. Use one route with direction = \"both\" \
         if both ways are meant",
        label(found.forth),
        label(found.back),
        found.channel,
        found.topic,
        label(found.forth),
        found.topic,
        found.back_channel,
        label(found.back),
        label(found.forth),
    )
}

/// `check`'s warnings about every loop between two routes.
pub fn warnings(routes: &[Route]) -> Vec<String> {
    find(routes).iter().map(|l| describe(routes, l)).collect()
}

//! Indexes of the routes keyed by segments (tries), so that routing a message and checking
//! thousands of routes do not try every route in turn. Pure.
//!
//! - [`Routes`]: the compiled routes with an index of each side, for the pipelines: which
//!   routes take a message on a channel ([`ChannelIndex`], `*`/`**`) or a topic
//!   ([`PatternTrie`], `+`/`#`), in route order.
//! - [`PatternTrie::overlapping`]: which patterns some name matches together with a given
//!   pattern, for `check`'s overlap and loop warnings, in time that grows with the number of
//!   overlaps found rather than with the square of the number of routes.

use std::collections::HashMap;
use std::ops::Deref;

use crate::bayeux::channel::ChannelIndex;

use super::Route;
use super::report::{Seg, mqtt_segs};

/// Patterns of [`Seg`]s, each with an id: literal levels, a one-level wildcard anywhere (MQTT
/// `+`; Bayeux `*` only last) and a trailing deep wildcard (`#`, `**`).
#[derive(Debug, Clone, Default)]
pub(super) struct PatternTrie {
    root: Node,
    /// How many levels the deep wildcard needs: 0 for MQTT `#` (it matches its parent
    /// level), 1 for Bayeux `**`.
    deep_min: usize,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    /// The one-level wildcard at this level.
    one: Option<Box<Node>>,
    /// Patterns that end here.
    exact: Vec<usize>,
    /// Patterns with the deep wildcard here (`<path>/#`).
    deep: Vec<usize>,
}

impl Node {
    /// Every id in this subtree.
    fn all(&self, out: &mut Vec<usize>) {
        out.extend_from_slice(&self.exact);
        out.extend_from_slice(&self.deep);
        for child in self.literal.values().chain(self.one.as_deref()) {
            child.all(out);
        }
    }
}

impl PatternTrie {
    /// An empty trie for MQTT filters (`deep_min` 0) or Bayeux patterns (`deep_min` 1).
    pub(super) fn new(deep_min: usize) -> Self {
        PatternTrie {
            root: Node::default(),
            deep_min,
        }
    }

    /// Adds the pattern `segs` under `id`.
    pub(super) fn insert(&mut self, segs: &[Seg], id: usize) {
        let mut node = &mut self.root;
        for seg in segs {
            node = match seg {
                Seg::Literal(text) => node.literal.entry((*text).into()).or_default(),
                Seg::One => node.one.get_or_insert_with(Box::default),
                Seg::Deep => {
                    node.deep.push(id);
                    return;
                }
            };
        }
        node.exact.push(id);
    }

    /// The ids of the patterns that some name matches together with `segs` (see
    /// `report::overlap`, which it is tested against), ascending, each once. A concrete topic is a pattern of
    /// literals only, so this also answers which filters match a topic.
    pub(super) fn overlapping(&self, segs: &[Seg]) -> Vec<usize> {
        let mut out = Vec::new();
        self.walk(&self.root, segs, &mut out);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The ids of the filters that match the concrete `topic`, ascending, into `out`: the
    /// same as [`PatternTrie::overlapping`] with the topic's levels as literals, without
    /// collecting the levels first (it runs for every message).
    pub(super) fn topic_matches(&self, topic: &str, out: &mut Vec<usize>) {
        self.walk_topic(&self.root, topic.split('/'), out);
        out.sort_unstable();
        out.dedup();
    }

    fn walk_topic(&self, node: &Node, mut levels: std::str::Split<'_, char>, out: &mut Vec<usize>) {
        let Some(level) = levels.next() else {
            out.extend_from_slice(&node.exact);
            if self.deep_min == 0 {
                out.extend_from_slice(&node.deep);
            }
            return;
        };
        out.extend_from_slice(&node.deep);
        if let Some(child) = node.literal.get(level) {
            self.walk_topic(child, levels.clone(), out);
        }
        if let Some(child) = node.one.as_deref() {
            self.walk_topic(child, levels, out);
        }
    }

    fn walk(&self, node: &Node, segs: &[Seg], out: &mut Vec<usize>) {
        let Some((first, rest)) = segs.split_first() else {
            // The query ends here: patterns that end here, and `#` (which matches its parent).
            out.extend_from_slice(&node.exact);
            if self.deep_min == 0 {
                out.extend_from_slice(&node.deep);
            }
            return;
        };
        // A deep wildcard here takes the query's remaining levels, however many (at least
        // one here).
        out.extend_from_slice(&node.deep);
        match first {
            Seg::Deep => {
                // The query's deep wildcard takes any of the patterns below, and those ending
                // here when it may match nothing.
                if self.deep_min == 0 {
                    out.extend_from_slice(&node.exact);
                }
                for child in node.literal.values().chain(node.one.as_deref()) {
                    child.all(out);
                }
            }
            Seg::One => {
                for child in node.literal.values().chain(node.one.as_deref()) {
                    self.walk(child, rest, out);
                }
            }
            Seg::Literal(text) => {
                for child in node
                    .literal
                    .get(*text)
                    .into_iter()
                    .chain(node.one.as_deref())
                {
                    self.walk(child, rest, out);
                }
            }
        }
    }
}

/// The compiled routes with an index of each side; dereferences to the routes in file order.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// The Bayeux patterns of the routes that subscribe to Bayeux, by route index.
    channels: ChannelIndex,
    /// The MQTT filters of the routes that subscribe to MQTT, by route index.
    topics: PatternTrie,
}

impl Routes {
    /// Indexes `routes` (compiled, in file order: `routes[i].index == i`).
    pub fn new(routes: Vec<Route>) -> Self {
        let mut channels = ChannelIndex::new();
        let mut topics = PatternTrie::new(0);
        for (i, route) in routes.iter().enumerate() {
            if route.subscribes_bayeux() {
                channels.insert(&route.bayeux, i);
            }
            if route.subscribes_mqtt() {
                topics.insert(&mqtt_segs(&route.mqtt_filter), i);
            }
        }
        Routes {
            routes,
            channels,
            topics,
        }
    }

    /// The routes that subscribe to Bayeux and whose pattern matches `channel`, in order.
    pub fn bayeux_matches(&self, channel: &str) -> impl Iterator<Item = &Route> {
        let ids = self.channels.matches(channel);
        ids.into_iter().filter_map(|i| self.routes.get(i))
    }

    /// Whether a route that subscribes to Bayeux matches `channel` (a publish there can come
    /// back).
    pub fn any_bayeux_match(&self, channel: &str) -> bool {
        self.channels.any_match(channel)
    }

    /// The routes that subscribe to MQTT and whose filter matches `topic` (MQTT rules:
    /// wildcards do not match the broker's `$` topics), in order.
    pub fn mqtt_matches(&self, topic: &str) -> impl Iterator<Item = &Route> {
        // Route filters never start with `$` (refused when compiled), and their wildcards
        // do not match such topics: no route takes one.
        let mut ids = Vec::new();
        if !topic.starts_with('$') {
            self.topics.topic_matches(topic, &mut ids);
        }
        ids.into_iter().filter_map(|i| self.routes.get(i))
    }
}

impl Deref for Routes {
    type Target = [Route];

    fn deref(&self) -> &[Route] {
        &self.routes
    }
}

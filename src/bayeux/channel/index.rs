//! [`ChannelIndex`]: which of many patterns match a channel, found by walking the channel's
//! segments once through a trie instead of trying every pattern. Pure.
//!
//! A Bayeux wildcard can only be a pattern's last segment, so every pattern that matches a
//! channel lies on the one path of the channel's own segments: the walk never branches, and
//! its cost grows with the channel's length, not with the number of patterns.

use std::collections::HashMap;

use super::{ChannelPattern, Wildcard};

/// Patterns, each with an id (its position in some list of the caller's); answers which ids
/// match a channel, with the same rules as [`ChannelPattern::matches`].
#[derive(Debug, Clone, Default)]
pub struct ChannelIndex {
    root: Node,
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Patterns naming exactly this channel.
    exact: Vec<usize>,
    /// `<this>/*`.
    one: Vec<usize>,
    /// `<this>/**`.
    deep: Vec<usize>,
}

impl ChannelIndex {
    /// An empty index.
    pub fn new() -> Self {
        ChannelIndex::default()
    }

    /// Adds `pattern` under `id`. An id may be added under several patterns, and a pattern
    /// under several ids.
    pub fn insert(&mut self, pattern: &ChannelPattern, id: usize) {
        let mut node = &mut self.root;
        for segment in &pattern.prefix {
            node = node.children.entry(segment.as_str().into()).or_default();
        }
        match pattern.wildcard() {
            Wildcard::None => node.exact.push(id),
            Wildcard::One => node.one.push(id),
            Wildcard::Deep => node.deep.push(id),
        }
    }

    /// The ids of the patterns that match `channel`, ascending, each once.
    pub fn matches(&self, channel: &str) -> Vec<usize> {
        let mut out = Vec::new();
        self.visit(channel, |ids| out.extend_from_slice(ids));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether any pattern matches `channel`.
    pub fn any_match(&self, channel: &str) -> bool {
        let mut any = false;
        self.visit(channel, |ids| any |= !ids.is_empty());
        any
    }

    /// Calls `found` with the ids of each trie node whose patterns match `channel`.
    fn visit(&self, channel: &str, mut found: impl FnMut(&[usize])) {
        let Some(rest) = channel.strip_prefix('/') else {
            return;
        };
        let count = rest.split('/').count();
        // A wildcard never matches an empty segment: `**` at depth d needs the segments from
        // d on to be non-empty, so it matches only past the last empty one.
        let last_empty = (rest.split('/').enumerate())
            .filter(|(_, segment)| segment.is_empty())
            .map(|(depth, _)| depth)
            .last();
        let mut node = &self.root;
        for (depth, segment) in rest.split('/').enumerate() {
            if last_empty.is_none_or(|e| e < depth) {
                found(&node.deep);
            }
            if depth + 1 == count && !segment.is_empty() {
                found(&node.one);
            }
            match node.children.get(segment) {
                Some(child) => node = child,
                None => return,
            }
        }
        found(&node.exact);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[&str]) -> ChannelIndex {
        let mut index = ChannelIndex::new();
        for (id, p) in patterns.iter().enumerate() {
            index.insert(&ChannelPattern::parse(p).unwrap(), id);
        }
        index
    }

    #[test]
    fn finds_every_matching_pattern_in_id_order() {
        let index = index(&[
            "/a/**", "/a/b", "/a/*", "/**", "/*", "/a/b/**", "/x/**", "/a/b",
        ]);
        assert_eq!(index.matches("/a/b"), vec![0, 1, 2, 3, 7]);
        assert_eq!(index.matches("/a/b/c"), vec![0, 3, 5]);
        assert_eq!(index.matches("/a"), vec![3, 4]);
        assert_eq!(index.matches("/q"), vec![3, 4]);
        assert!(index.any_match("/q"));
    }

    #[test]
    fn wildcards_never_match_empty_segments() {
        let index = index(&["/a/**", "/a/*", "/**"]);
        assert_eq!(index.matches("/a/"), Vec::<usize>::new());
        assert_eq!(index.matches("/a//b"), Vec::<usize>::new());
        assert_eq!(index.matches("/a/b/"), Vec::<usize>::new());
        assert!(!index.any_match("no-slash"));
    }
}

//! Channel names and subscription patterns.
//!
//! A channel is `/` followed by segments separated by `/`. A pattern may end in `*` (exactly
//! one more segment) or `**` (one or more segments); wildcards anywhere else are invalid
//! (Bayeux spec, "Channels"). `/meta/**` is the protocol's own namespace and `/service/**` is
//! request/response with the server. Pure: no IO.
//!
//! Two levels of strictness:
//!
//! - [`ChannelPattern::parse`] accepts any segment text except control characters and
//!   Unicode non-characters, so that names configured or received from a server with a wider
//!   grammar still work.
//! - [`validate_channel_name`] checks a concrete name a program *generates* (for example from
//!   an MQTT topic) against the grammar that servers enforce: the Bayeux specification's
//!   ("Channels": a segment is one or more ASCII letters, digits and `- _ ! ~ ( ) $ @`)
//!   widened by the characters the CometD server also accepts (space and `. # + { }`). Faye
//!   enforces the specification's grammar and answers anything else with `405 Invalid
//!   channel`; cometd-nodejs-server checks nothing and relays even control characters to its
//!   subscribers.

use std::fmt;

mod index;

pub use index::ChannelIndex;

/// `/meta/handshake`.
pub const META_HANDSHAKE: &str = "/meta/handshake";
/// `/meta/connect`.
pub const META_CONNECT: &str = "/meta/connect";
/// `/meta/disconnect`.
pub const META_DISCONNECT: &str = "/meta/disconnect";
/// `/meta/subscribe`.
pub const META_SUBSCRIBE: &str = "/meta/subscribe";
/// `/meta/unsubscribe`.
pub const META_UNSUBSCRIBE: &str = "/meta/unsubscribe";

/// Why a channel name or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid channel {name:?}: {reason}")]
pub struct InvalidChannel {
    /// The refused text.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The wildcard at the end of a pattern, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Wildcard {
    /// No wildcard: the pattern names one channel.
    None,
    /// `/a/*`: exactly one more segment.
    One,
    /// `/a/**`: one or more segments.
    Deep,
}

/// A validated channel name or subscription pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelPattern {
    text: String,
    /// Literal segments (without the trailing wildcard).
    prefix: Vec<String>,
    wildcard: Wildcard,
}

impl ChannelPattern {
    /// Parses and validates `text` as a channel or pattern.
    pub fn parse(text: &str) -> Result<Self, InvalidChannel> {
        let bad = |reason| InvalidChannel {
            name: text.to_owned(),
            reason,
        };
        let rest = text
            .strip_prefix('/')
            .ok_or_else(|| bad("must start with '/'"))?;
        if rest.is_empty() {
            return Err(bad("has no segments"));
        }
        let segments: Vec<&str> = rest.split('/').collect();
        let last = segments.len() - 1;
        let mut wildcard = Wildcard::None;
        let mut prefix = Vec::with_capacity(segments.len());
        for (i, seg) in segments.iter().enumerate() {
            if seg.is_empty() {
                return Err(bad("has an empty segment"));
            }
            if seg.chars().any(char::is_control) {
                return Err(bad("contains a control character"));
            }
            if seg.chars().any(is_non_character) {
                return Err(bad("contains a Unicode non-character"));
            }
            match *seg {
                "*" | "**" if i != last => {
                    return Err(bad("wildcards are allowed only as the last segment"));
                }
                "*" => wildcard = Wildcard::One,
                "**" => wildcard = Wildcard::Deep,
                s if s.contains('*') => return Err(bad("'*' must be a whole segment")),
                s => prefix.push(s.to_owned()),
            }
        }
        if wildcard != Wildcard::None && prefix.is_empty() && text != "/**" && text != "/*" {
            return Err(bad("has no segments"));
        }
        Ok(ChannelPattern {
            text: text.to_owned(),
            prefix,
            wildcard,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The trailing wildcard.
    pub fn wildcard(&self) -> Wildcard {
        self.wildcard
    }

    /// Whether this names a single channel (no wildcard).
    pub fn is_literal(&self) -> bool {
        self.wildcard == Wildcard::None
    }

    /// Whether this is in the protocol's `/meta/**` namespace.
    pub fn is_meta(&self) -> bool {
        self.prefix.first().is_some_and(|s| s == "meta")
    }

    /// Whether this is in the request/response `/service/**` namespace.
    pub fn is_service(&self) -> bool {
        self.prefix.first().is_some_and(|s| s == "service")
    }

    /// Whether a message on `channel` matches this pattern. `channel` is not re-validated:
    /// a channel that is not a valid name simply matches literally or not at all.
    pub fn matches(&self, channel: &str) -> bool {
        let Some(rest) = channel.strip_prefix('/') else {
            return false;
        };
        // Without collecting the segments: this runs for every delivery.
        let mut segments = rest.split('/');
        if !self
            .prefix
            .iter()
            .all(|p| segments.next() == Some(p.as_str()))
        {
            return false;
        }
        match self.wildcard {
            Wildcard::None => segments.next().is_none(),
            Wildcard::One => {
                segments.next().is_some_and(|s| !s.is_empty()) && segments.next().is_none()
            }
            Wildcard::Deep => {
                let mut extra = segments.peekable();
                extra.peek().is_some() && extra.all(|s| !s.is_empty())
            }
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Validates a channel for publishing: a valid name without wildcards.
pub fn validate_publish_channel(channel: &str) -> Result<ChannelPattern, InvalidChannel> {
    let pattern = ChannelPattern::parse(channel)?;
    if !pattern.is_literal() {
        return Err(InvalidChannel {
            name: channel.to_owned(),
            reason: "wildcards are not allowed when publishing",
        });
    }
    Ok(pattern)
}

/// Whether `c` is a Unicode non-character: U+FDD0–U+FDEF, or the last two code points of a
/// plane (U+xxFFFE, U+xxFFFF).
fn is_non_character(c: char) -> bool {
    let code = u32::from(c);
    (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE
}

/// Whether `c` may appear in a segment of a generated channel name (see the module docs):
/// an ASCII letter or digit, a mark of the Bayeux grammar (`- _ ! ~ ( ) $ @`), or one of
/// CometD's additions (space, `.`, `#`, `+`, `{`, `}`).
pub fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '-' | '_' | '!' | '~' | '(' | ')' | '$' | '@' | ' ' | '.' | '#' | '+' | '{' | '}'
        )
}

/// Checks a concrete channel name that a program generated, before it is published or sent
/// anywhere: `/` and one or more non-empty segments of [`is_segment_char`] characters, no
/// wildcard. Stricter than [`ChannelPattern::parse`]; see the module docs for the grammar.
pub fn validate_channel_name(channel: &str) -> Result<(), InvalidChannel> {
    let bad = |reason| InvalidChannel {
        name: channel.to_owned(),
        reason,
    };
    let rest = channel
        .strip_prefix('/')
        .ok_or_else(|| bad("must start with '/'"))?;
    for segment in rest.split('/') {
        if segment.is_empty() {
            return Err(bad("has an empty segment"));
        }
        if segment.contains('*') {
            return Err(bad("'*' is a wildcard, not allowed in a channel name"));
        }
        if segment
            .chars()
            .any(|c| c.is_control() || is_non_character(c))
        {
            return Err(bad(
                "contains a control character or a Unicode non-character",
            ));
        }
        if !segment.chars().all(is_segment_char) {
            return Err(bad(
                "a segment may hold only ASCII letters, digits, space and - _ ! ~ ( ) $ @ . # + { } \
                 (the Bayeux grammar as CometD accepts it)",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ChannelPattern {
        ChannelPattern::parse(s).unwrap()
    }

    #[test]
    fn matching_follows_the_spec_table() {
        // (pattern, channel, matches?) — the examples from the Bayeux spec, "Channel Globbing".
        let table = [
            ("/foo/*", "/foo/bar", true),
            ("/foo/*", "/foo", false),
            ("/foo/*", "/foo/bar/boo", false),
            ("/foo/**", "/foo/bar", true),
            ("/foo/**", "/foo/bar/boo", true),
            ("/foo/**", "/foo", false),
            ("/foo/bar", "/foo/bar", true),
            ("/foo/bar", "/foo/bar/baz", false),
            ("/foo/bar", "/foo/ba", false),
            ("/**", "/a/b/c", true),
            ("/*", "/a", true),
            ("/*", "/a/b", false),
            ("/foo/*", "foo/bar", false),
            ("/foo/*", "/foo/", false),
            ("/foo/**", "/foo/a//b", false),
            ("/foo/**", "/foo/a/", false),
            ("/**", "/", false),
            ("/*", "/", false),
            ("/foo/bar", "/foo", false),
        ];
        for (pattern, channel, expected) in table {
            assert_eq!(
                p(pattern).matches(channel),
                expected,
                "{pattern} vs {channel}"
            );
        }
    }

    #[test]
    fn invalid_names_are_refused_with_a_reason() {
        for bad in [
            "",
            "/",
            "foo",
            "/foo//bar",
            "/foo/",
            "/foo/*/bar",
            "/foo/b*r",
            "/**/x",
            "/a\nb",
            "/a\u{85}b",
            "/a\u{fdd0}",
            "/a/\u{fffe}",
        ] {
            let err = ChannelPattern::parse(bad).unwrap_err();
            assert_eq!(err.name, bad);
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn classifies_meta_and_service() {
        assert!(p("/meta/connect").is_meta());
        assert!(p("/service/echo").is_service());
        assert!(!p("/metadata").is_meta());
        assert!(!p("/a/service").is_service());
    }

    #[test]
    fn publish_channels_may_not_be_wild() {
        assert!(validate_publish_channel("/a/b").is_ok());
        assert!(validate_publish_channel("/a/*").is_err());
        assert!(validate_publish_channel("/a/**").is_err());
    }

    #[test]
    fn generated_names_follow_the_bayeux_grammar() {
        for good in [
            "/a",
            "/a/b",
            "/event/Order_Event__e",
            "/topic/My-Topic.v2",
            "/a b/c d",
            "/x/!~()$@",
            "/x/{room}/#1+2",
            "/meta/connect",
        ] {
            assert_eq!(validate_channel_name(good), Ok(()), "{good:?}");
        }
        for bad in [
            "",
            "/",
            "a/b",
            "/a//b",
            "/a/",
            "/a/*",
            "/a/**",
            "/a/b*",
            "/a\u{1}b",
            "/a\u{7f}",
            "/a\u{9f}",
            "/a\tb",
            "/a\u{fdd0}",
            "/a\u{10ffff}",
            "/küche",
            "/a,b",
            "/a?b=1",
            "/a%20b",
            "/a\\b",
            "/a\"b",
        ] {
            let error = validate_channel_name(bad).unwrap_err();
            assert_eq!(error.name, bad);
            assert!(!error.reason.is_empty(), "{bad:?}");
        }
    }

    #[test]
    fn salesforce_style_names_are_valid() {
        for name in [
            "/event/Order_Event__e",
            "/data/ChangeEvents",
            "/topic/My-Topic.v2",
        ] {
            assert!(ChannelPattern::parse(name).is_ok(), "{name}");
        }
    }
}

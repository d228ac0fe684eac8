//! The MQTT side of a route as written: filter syntax, `{1}`, and whether its wildcards
//! correspond to the Bayeux pattern's. Also MQTT filter matching. Pure.
//!
//! Private to the mapping for now; the `mqtt` module's `validate_filter` and `filter_matches`
//! cover the same ground.

use crate::bayeux::channel::{ChannelPattern, Wildcard};

use super::Level;

/// The longest MQTT topic or filter (a two-byte length prefix).
pub(super) const MQTT_MAX_NAME: usize = 65_535;

/// The MQTT side of a route, level by level, with the level that takes the Bayeux wildcard's
/// segment(s) marked; or why it is not a valid filter or does not correspond to `bayeux`.
pub(super) fn mqtt_levels(bayeux: &ChannelPattern, mqtt: &str) -> Result<Vec<Level>, String> {
    correspond(bayeux, mqtt, parse_mqtt(mqtt)?)
}

/// A level of the MQTT side as written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    Plus,
    Hash,
    /// `{n}`.
    Placeholder(String),
}

/// Splits and validates the MQTT side: a valid topic filter, or one with `{n}` levels.
fn parse_mqtt(text: &str) -> Result<Vec<Token>, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    if text.len() > MQTT_MAX_NAME {
        return Err("is longer than 65535 bytes".into());
    }
    if text.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if text.starts_with('$') {
        return Err(format!(
            "{text:?} starts with '$': such topics are the broker's own ($SYS) and cannot be \
             bridged"
        ));
    }
    let levels: Vec<&str> = text.split('/').collect();
    let last = levels.len() - 1;
    let mut tokens = Vec::with_capacity(levels.len());
    for (i, level) in levels.into_iter().enumerate() {
        let token = match level {
            "#" if i != last => return Err(format!("{text:?}: '#' must be the last level")),
            "#" => Token::Hash,
            "+" => Token::Plus,
            l if l.contains(['+', '#']) => {
                return Err(format!("{text:?}: '+' and '#' must be whole levels"));
            }
            l if l.len() > 2
                && l.starts_with('{')
                && l.ends_with('}')
                && l[1..l.len() - 1].bytes().all(|b| b.is_ascii_digit()) =>
            {
                Token::Placeholder(l.to_owned())
            }
            l => Token::Literal(l.to_owned()),
        };
        tokens.push(token);
    }
    Ok(tokens)
}

/// Checks that the MQTT side's wildcards correspond to the Bayeux pattern's, and returns its
/// levels with the capture marked.
fn correspond(
    bayeux: &ChannelPattern,
    mqtt: &str,
    tokens: Vec<Token>,
) -> Result<Vec<Level>, String> {
    let plus = tokens.iter().filter(|t| **t == Token::Plus).count();
    let hash = tokens.iter().filter(|t| **t == Token::Hash).count();
    if tokens.iter().any(|t| matches!(t, Token::Placeholder(_))) {
        check_placeholder(bayeux, mqtt, &tokens, plus + hash)?;
    } else {
        check_positional(bayeux, mqtt, &tokens, plus, hash)?;
    }
    // The checks leave exactly one non-literal level when the pattern has a wildcard, and
    // none otherwise: that level is where the wildcard's segment(s) go.
    Ok(tokens
        .into_iter()
        .map(|token| match token {
            Token::Literal(text) => Level::Literal(text),
            Token::Plus | Token::Hash | Token::Placeholder(_) => Level::Capture,
        })
        .collect())
}

/// `*` ↔ a last `+`, `**` ↔ `#`, nothing ↔ nothing.
fn check_positional(
    bayeux: &ChannelPattern,
    mqtt: &str,
    tokens: &[Token],
    plus: usize,
    hash: usize,
) -> Result<(), String> {
    let wildcard = bayeux.wildcard();
    let wildcards = plus + hash;
    let at = tokens
        .iter()
        .position(|t| matches!(t, Token::Plus | Token::Hash));
    match (wildcard, at) {
        (Wildcard::None, None) => Ok(()),
        (Wildcard::None, Some(_)) => Err(format!(
            "{mqtt:?} has a wildcard but the Bayeux channel {bayeux} has none; wildcards must \
             correspond (`*` ↔ `+`, `**` ↔ `#`)"
        )),
        (_, None) => {
            let hint = if wildcard == Wildcard::One { "+" } else { "#" };
            Err(format!(
                "{mqtt:?} has no wildcard but the Bayeux pattern {bayeux} has one; add `{hint}` \
                 as the last level"
            ))
        }
        (_, Some(_)) if wildcards > 1 => Err(format!(
            "{mqtt:?} has {wildcards} wildcards but a Bayeux pattern has at most one (its last \
             segment), so they cannot correspond"
        )),
        (Wildcard::One, Some(_)) if hash == 1 => Err(format!(
            "{bayeux} ends in `*` (exactly one segment), which corresponds to `+`, not `#`"
        )),
        (Wildcard::Deep, Some(_)) if plus == 1 => Err(format!(
            "{bayeux} ends in `**` (one or more segments), which corresponds to `#`, not `+`"
        )),
        (_, Some(at)) if at != tokens.len() - 1 => Err(format!(
            "the `+` at level {} of {mqtt:?} is followed by more levels, but a Bayeux wildcard \
             can only be the last segment, so they cannot correspond by position; write `{{1}}` \
             at that level to put the `*` segment there",
            at + 1
        )),
        (_, Some(_)) => Ok(()),
    }
}

/// `{1}` once, standing for the Bayeux `*` at any level or for `**` at the last level.
fn check_placeholder(
    bayeux: &ChannelPattern,
    mqtt: &str,
    tokens: &[Token],
    wildcards: usize,
) -> Result<(), String> {
    if wildcards > 0 {
        return Err(format!(
            "{mqtt:?} mixes `{{1}}` with `+`/`#`; use one or the other"
        ));
    }
    let mut found = None;
    for (i, token) in tokens.iter().enumerate() {
        let Token::Placeholder(text) = token else {
            continue;
        };
        if text != "{1}" {
            return Err(format!(
                "{mqtt:?}: only `{{1}}` exists (a Bayeux pattern has at most one wildcard), \
                 found `{text}`"
            ));
        }
        if found.is_some() {
            return Err(format!("{mqtt:?}: `{{1}}` may appear only once"));
        }
        found = Some(i);
    }
    match (bayeux.wildcard(), found) {
        (Wildcard::None, _) => Err(format!(
            "{mqtt:?} refers to `{{1}}`, the Bayeux wildcard, but {bayeux} has none"
        )),
        (Wildcard::Deep, Some(at)) if at != tokens.len() - 1 => Err(format!(
            "{bayeux} ends in `**` (one or more segments), so `{{1}}` must be the last level \
             of {mqtt:?} (like `#`)"
        )),
        _ => Ok(()),
    }
}

/// MQTT filter matching (MQTT 5 §4.7).
pub(super) fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        match (f, topic_levels.next()) {
            ("#", _) => return true,
            (_, None) => return false,
            ("+", Some(_)) => {}
            (literal, Some(level)) if literal == level => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

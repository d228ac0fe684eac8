//! MQTT topic names and topic filters: validation and matching (MQTT 3.1.1 §4.7, 5.0 §4.7).
//! Pure; the same rules hold for both protocol versions.
//!
//! Besides the wildcard rules, a name is refused if it holds a code point that MQTT's UTF-8
//! strings must not (NUL) or should not contain (MQTT 3.1.1 §1.5.3, MQTT 5 §1.5.4): the
//! control characters U+0001–U+001F and U+007F–U+009F, and the Unicode non-characters
//! (U+FDD0–U+FDEF and the last two code points of every plane, U+xxFFFE and U+xxFFFF).
//! Mosquitto treats a packet holding one as malformed and closes the connection, so a
//! publish to such a topic would take the whole connection down (and, at QoS ≥ 1, again
//! after every reconnect).

use bytes::Bytes;

/// The longest topic or filter MQTT can encode (a two-byte length prefix).
pub(super) const MAX_TOPIC_BYTES: usize = 65_535;

/// Checks a topic name that messages are published to: not empty, no `+` or `#` wildcards,
/// no NUL, control or non-character code point (see the module docs), at most 65 535 bytes.
/// The error says what is wrong.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    check_common(topic, "topic")?;
    if topic.contains(['+', '#']) {
        return Err("wildcards (`+`, `#`) are only allowed in subscription filters".to_owned());
    }
    Ok(())
}

/// Checks a subscription filter: not empty, no NUL, control or non-character code point, at
/// most 65 535 bytes, `+` only as a whole
/// level, `#` only as the whole last level. The error says what is wrong.
pub fn validate_filter(filter: &str) -> Result<(), String> {
    check_common(filter, "filter")?;
    let levels: Vec<&str> = filter.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must be a whole level, not part of {level:?}"));
        }
        if level.contains('#') {
            if *level != "#" {
                return Err(format!("`#` must be a whole level, not part of {level:?}"));
            }
            if index + 1 != levels.len() {
                return Err("`#` is only allowed as the last level".to_owned());
            }
        }
    }
    Ok(())
}

/// Whether `topic` matches `filter` under MQTT rules: `+` matches exactly one level (possibly
/// empty), `#` matches the parent level and any number of levels below, and a topic starting
/// with `$` (e.g. `$SYS/...`) is not matched by a filter starting with a wildcard. Expects a
/// valid filter and topic (see [`validate_filter`], [`validate_topic`]).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn check_common(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("a {what} must not be empty"));
    }
    if value.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "the {what} is {} bytes long; MQTT allows at most {MAX_TOPIC_BYTES}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err(format!("a {what} must not contain the NUL character"));
    }
    if let Some(c) = value.chars().find(|&c| is_forbidden(c)) {
        return Err(format!(
            "a {what} must not contain U+{:04X} (control characters and Unicode \
             non-characters are malformed for MQTT brokers such as Mosquitto)",
            u32::from(c)
        ));
    }
    Ok(())
}

/// `value` with every character MQTT's strings must not hold ([`is_forbidden`]) written as
/// an escape (`\u{1}`), so that it can be sent; borrowed when there is none.
pub fn escape_forbidden(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.chars().any(is_forbidden) {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        if is_forbidden(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Checks a string sent in a property: at most 65 535 bytes, no NUL, control or
/// non-character code point. `what` names it in the error.
pub(crate) fn validate_string(value: &str, what: &str) -> Result<(), String> {
    if value.len() > MAX_TOPIC_BYTES {
        return Err(format!(
            "{what} is {} bytes long; MQTT allows at most {MAX_TOPIC_BYTES}",
            value.len()
        ));
    }
    match value.chars().find(|&c| is_forbidden(c)) {
        Some(c) => Err(format!(
            "{what} contains U+{:04X} (control characters and Unicode non-characters are \
             malformed for MQTT brokers such as Mosquitto)",
            u32::from(c)
        )),
        None => Ok(()),
    }
}

/// Whether MQTT's UTF-8 strings must not or should not hold `c`: a control character
/// (U+0000–U+001F, U+007F–U+009F) or a Unicode non-character (U+FDD0–U+FDEF, U+xxFFFE,
/// U+xxFFFF). Surrogates cannot occur in a Rust `str`.
pub fn is_forbidden(c: char) -> bool {
    let code = u32::from(c);
    c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE
}

/// A topic name, valid UTF-8, held as [`Bytes`] so that the tracker's copy of a publish and
/// rumqttc's share it instead of copying it.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::mqtt) struct TopicName(Bytes);

impl TopicName {
    pub(in crate::mqtt) fn as_str(&self) -> &str {
        // Built only from a `String` (see `From`), so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub(in crate::mqtt) fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

impl From<String> for TopicName {
    fn from(topic: String) -> Self {
        TopicName(Bytes::from(topic))
    }
}

impl std::fmt::Display for TopicName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_characters_are_escaped_and_clean_strings_borrowed() {
        assert!(matches!(
            escape_forbidden("a/b ü"),
            std::borrow::Cow::Borrowed("a/b ü")
        ));
        assert_eq!(
            escape_forbidden("/p/a\u{1}b\u{85}\u{fdd0}"),
            "/p/a\\u{1}b\\u{85}\\u{fdd0}"
        );
        assert!(validate_string(&escape_forbidden("x\0y\u{1f}"), "v").is_ok());
        let err = validate_string("x\u{1}", "the user property \"channel\"").unwrap_err();
        assert!(
            err.starts_with("the user property \"channel\" contains U+0001"),
            "{err}"
        );
        assert!(validate_string(&"x".repeat(65_536), "v").is_err());
    }

    #[test]
    fn publish_topics_without_wildcards_are_valid() {
        for topic in [
            "a",
            "a/b",
            "/a",
            "a/",
            "a//b",
            "$SYS/x",
            "sport/tennis player1",
            "ü/€",
        ] {
            assert_eq!(validate_topic(topic), Ok(()), "{topic:?}");
        }
    }

    #[test]
    fn publish_topics_with_wildcards_nul_or_no_name_are_rejected() {
        for topic in ["", "a/+", "a/#", "+", "#", "a+b", "a\0b"] {
            assert!(validate_topic(topic).is_err(), "{topic:?}");
        }
    }

    #[test]
    fn control_characters_and_non_characters_are_refused_in_topics_and_filters() {
        for bad in [
            '\u{1}',
            '\u{9}',
            '\u{a}',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            '\u{85}',
            '\u{9f}',
            '\u{fdd0}',
            '\u{fdef}',
            '\u{fffe}',
            '\u{ffff}',
            '\u{1fffe}',
            '\u{10ffff}',
        ] {
            let topic = format!("a/b{bad}c");
            let error = validate_topic(&topic).unwrap_err();
            assert!(
                error.contains(&format!("U+{:04X}", u32::from(bad))),
                "{topic:?}: {error}"
            );
            assert!(validate_filter(&topic).is_err(), "{topic:?}");
            assert!(is_forbidden(bad), "{bad:?}");
        }
        // Their neighbours are ordinary characters.
        for good in [
            '\u{20}',
            '\u{7e}',
            '\u{a0}',
            '\u{fdcf}',
            '\u{fdf0}',
            '\u{fffd}',
            '\u{10000}',
        ] {
            let topic = format!("a/b{good}c");
            assert_eq!(validate_topic(&topic), Ok(()), "{topic:?}");
            assert!(!is_forbidden(good), "{good:?}");
        }
    }

    #[test]
    fn a_topic_of_65535_bytes_is_the_longest_allowed() {
        assert_eq!(validate_topic(&"a".repeat(MAX_TOPIC_BYTES)), Ok(()));
        let error = validate_topic(&"a".repeat(MAX_TOPIC_BYTES + 1)).unwrap_err();
        assert!(error.contains("65536"), "{error}");
    }

    #[test]
    fn filters_with_whole_level_wildcards_are_valid() {
        for filter in [
            "#", "+", "a/#", "a/+/b", "+/+", "/+", "a/+/#", "$SYS/#", "a//b", "+/",
        ] {
            assert_eq!(validate_filter(filter), Ok(()), "{filter:?}");
        }
    }

    #[test]
    fn filters_with_partial_or_misplaced_wildcards_are_rejected() {
        for filter in [
            "", "a+", "a/b+/c", "a/#/b", "#/a", "a#", "a/b#", "##", "a\0",
        ] {
            assert!(validate_filter(filter).is_err(), "{filter:?}");
        }
    }

    #[test]
    fn matching_follows_the_mqtt_rules() {
        let table = [
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/+", "a/b", true),
            ("a/+", "a/", true),
            ("a/+", "a", false),
            ("a/+", "a/b/c", false),
            ("+/b", "a/b", true),
            ("+", "a", true),
            ("+", "a/b", false),
            ("+/+", "/a", true),
            ("a/#", "a", true),
            ("a/#", "a/b", true),
            ("a/#", "a/b/c", true),
            ("a/#", "b/a", false),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("/a", "a", false),
            ("a//b", "a//b", true),
            ("a/+/b", "a//b", true),
        ];
        for (filter, topic, expected) in table {
            assert_eq!(
                filter_matches(filter, topic),
                expected,
                "{filter:?} vs {topic:?}"
            );
        }
    }

    #[test]
    fn dollar_topics_are_not_matched_by_a_leading_wildcard() {
        assert!(!filter_matches("#", "$SYS/broker/uptime"));
        assert!(!filter_matches("+/broker/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/#", "$SYS/broker/uptime"));
        assert!(filter_matches("$SYS/+/uptime", "$SYS/broker/uptime"));
        assert!(filter_matches("a/#", "a/$b"));
    }
}

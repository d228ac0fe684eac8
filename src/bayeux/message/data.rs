//! The `data` of a publish or a delivery, kept as JSON text.
//!
//! A client that forwards events (the bridge, `sub`) never looks inside them, so a delivery's
//! `data` is kept exactly as the server sent it: validated by the parser, stored in one
//! allocation, and written out again byte for byte. Building a `serde_json::Value` tree of
//! every event instead costs several allocations per field and some 700 bytes for a small
//! object (a `BTreeMap` node), which a long-poll reply with a backlog multiplies by tens of
//! thousands. Whoever needs the structure asks for it: [`Data::to_value`], [`Data::parse`].

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// One JSON value, held as its text.
///
/// Always valid JSON: it comes from the parser ([`Data::from_json`], decoding a message) or
/// from a [`Value`]. Equality compares the text, so `{"a":1}` and `{ "a": 1 }` differ; compare
/// [`Data::to_value`]s for equality of content.
#[derive(Clone)]
pub struct Data(Box<RawValue>);

impl Data {
    /// Validates `json` (one JSON value; surrounding whitespace is dropped) and keeps it as is.
    pub fn from_json(json: impl Into<String>) -> Result<Data, serde_json::Error> {
        const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
        let json = json.into();
        // `RawValue::from_string` takes the text without copying when it has no surrounding
        // whitespace and no spare capacity.
        let trimmed = json.trim_matches(JSON_WHITESPACE);
        let json = if trimmed.len() == json.len() {
            json
        } else {
            trimmed.to_owned()
        };
        RawValue::from_string(json).map(Data)
    }

    /// The compact JSON text of `value`.
    pub fn from_value(value: &Value) -> Data {
        // A `Value` always serializes (its keys are strings, its numbers finite) and its
        // compact text is valid JSON; `null` is the fallback that cannot be reached.
        serde_json::value::to_raw_value(value).map_or_else(|_| Data::null(), Data)
    }

    /// JSON `null`.
    pub fn null() -> Data {
        Data(RawValue::NULL.to_owned())
    }

    /// The JSON text.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    /// The JSON text, taken out without copying.
    pub fn into_json(self) -> Box<str> {
        self.0.into()
    }

    /// Whether this is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.json() == "null"
    }

    /// The content as a [`Value`] tree. Fails only for JSON that `serde_json` will not build a
    /// tree of: nesting deeper than 128 levels.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        self.parse()
    }

    /// The content as a `T`.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.json())
    }
}

impl From<Value> for Data {
    fn from(value: Value) -> Data {
        Data::from_value(&value)
    }
}

impl From<&Value> for Data {
    fn from(value: &Value) -> Data {
        Data::from_value(value)
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Data) -> bool {
        self.json() == other.json()
    }
}

impl Eq for Data {}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl fmt::Display for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

impl Serialize for Data {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Data {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Data, D::Error> {
        Box::<RawValue>::deserialize(deserializer).map(Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_text_is_kept_as_given_apart_from_surrounding_whitespace() {
        let data = Data::from_json(" {\"b\": 1, \"a\": [1.50, 2e3]}\n").unwrap();
        assert_eq!(data.json(), "{\"b\": 1, \"a\": [1.50, 2e3]}");
        assert_eq!(
            data.to_value().unwrap(),
            json!({"a": [1.5, 2000.0], "b": 1})
        );
        assert!(Data::from_json("{\"a\":").is_err());
        assert!(Data::from_json("1 2").is_err());
        assert!(Data::from_json("").is_err());
        // Only JSON's own whitespace is dropped: a form feed is not JSON.
        assert!(Data::from_json("\u{c}42").is_err());
    }

    #[test]
    fn a_value_becomes_its_compact_text() {
        assert_eq!(Data::from(json!({"t": 21.5})).json(), r#"{"t":21.5}"#);
        assert_eq!(Data::from(Value::Null), Data::null());
        assert!(Data::null().is_null());
        assert!(!Data::from(json!("null")).is_null());
    }

    #[test]
    fn serializes_as_the_json_it_holds() {
        let data = Data::from_json("{\"x\": 1}").unwrap();
        assert_eq!(serde_json::to_string(&data).unwrap(), "{\"x\": 1}");
        assert_eq!(serde_json::to_value(&data).unwrap(), json!({"x": 1}));
        let back: Data = serde_json::from_str("[1, {\"y\":null}]").unwrap();
        assert_eq!(back.json(), "[1, {\"y\":null}]");
        // From a tree too (a message built from a `Value`).
        let back: Data = serde_json::from_value(json!({"z": true})).unwrap();
        assert_eq!(back.to_value().unwrap(), json!({"z": true}));
    }

    #[test]
    fn parses_into_a_type() {
        #[derive(Deserialize)]
        struct Event {
            seq: u64,
        }
        let data = Data::from_json(r#"{"seq":7,"pad":"x"}"#).unwrap();
        assert_eq!(data.parse::<Event>().unwrap().seq, 7);
    }
}

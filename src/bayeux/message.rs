//! Bayeux messages and batches: the wire codec.
//!
//! A [`Message`] is one JSON object with a `channel`; messages travel in JSON arrays
//! ("batches"). This module turns bytes into messages and back and classifies a message
//! (meta reply, publish acknowledgement, delivery). It does no IO and knows nothing about
//! sessions or transports.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::channel::{
    META_CONNECT, META_DISCONNECT, META_HANDSHAKE, META_SUBSCRIBE, META_UNSUBSCRIBE,
};

/// One Bayeux message.
///
/// Known fields are typed; every other field the server sends (Salesforce's `EventType`,
/// CometD's `x-messages`, ...) is kept in [`Message::other`] so nothing is lost on a round trip.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The channel this message is sent on or was delivered from.
    pub channel: String,
    /// Correlation id (alphanumeric). Replies to meta messages echo it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_id"
    )]
    pub id: Option<String>,
    /// The session id the server assigned at handshake.
    #[serde(rename = "clientId", default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Application payload of a publish or a delivery. A `"data": null` on the wire is
    /// `Some(Value::Null)`: still a delivery, unlike a message without `data`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub data: Option<Value>,
    /// Reply verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub successful: Option<bool>,
    /// Reply error string (`code:args:message`), see [`super::error::ServerError`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Server advice (or client advice on `/meta/connect`), see [`super::advice`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advice: Option<Value>,
    /// Extension fields, namespaced by extension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// Subscription pattern(s) of `/meta/subscribe` and `/meta/unsubscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    /// Protocol version (handshake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Lowest protocol version accepted (handshake).
    #[serde(
        rename = "minimumVersion",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub minimum_version: Option<String>,
    /// Transports offered (handshake request) or accepted (handshake reply).
    #[serde(
        rename = "supportedConnectionTypes",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub supported_connection_types: Option<Vec<String>>,
    /// Transport in use (`/meta/connect`).
    #[serde(
        rename = "connectionType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub connection_type: Option<String>,
    /// Every other field, kept verbatim.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

/// What a received message is, by the rules the CometD clients use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A reply on a `/meta/**` channel (or a server-initiated meta message).
    Meta,
    /// A non-meta message without `data`: the server's verdict on a publish.
    PublishReply,
    /// A non-meta message with `data`: an event for subscribers.
    Delivery,
}

impl Message {
    /// A message on `channel` with every other field empty.
    pub fn new(channel: impl Into<String>) -> Self {
        Message {
            channel: channel.into(),
            ..Message::default()
        }
    }

    /// Classifies a received message.
    pub fn kind(&self) -> Kind {
        if self.channel.starts_with("/meta/") {
            Kind::Meta
        } else if self.data.is_some() {
            Kind::Delivery
        } else {
            Kind::PublishReply
        }
    }

    /// `successful` as a bool; a missing field counts as unsuccessful.
    pub fn is_successful(&self) -> bool {
        self.successful == Some(true)
    }

    /// Whether this is a reply to (or a request on) one of the session meta channels.
    pub fn is_meta(&self, meta: &str) -> bool {
        self.channel == meta
    }

    /// Subscription patterns named by a (un)subscribe message or reply.
    pub fn subscriptions(&self) -> Vec<String> {
        match &self.subscription {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A short description for logs: channel and id, never the payload.
    pub fn describe(&self) -> String {
        match &self.id {
            Some(id) => format!("{} (id {id})", self.channel),
            None => self.channel.clone(),
        }
    }
}

/// Reasons a response body is not a Bayeux batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is empty (CometD treats an empty 200 as a transport failure).
    #[error("empty response body")]
    Empty,
    /// The body is not JSON, or not JSON of the expected shape.
    #[error("response is not a Bayeux message batch: {0}")]
    Invalid(String),
}

/// Decodes a batch. The spec says batches SHOULD be arrays and a single object MAY be
/// accepted, so both are.
pub fn decode_batch(body: &[u8]) -> Result<Vec<Message>, DecodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| DecodeError::Invalid(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => {
            return Err(DecodeError::Invalid(format!(
                "expected an array of messages, got {}",
                json_type(&other)
            )));
        }
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value::<Message>(item)
                .map_err(|e| DecodeError::Invalid(format!("message {i}: {e}")))
        })
        .collect()
}

/// Encodes a batch as a JSON array (always an array, as the spec recommends).
pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    // Serializing a struct of strings, bools and `Value`s cannot fail: `Value` keys are
    // always strings and there are no non-finite floats in a `Value`.
    serde_json::to_vec(messages).unwrap_or_else(|_| b"[]".to_vec())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D>(deserializer: D) -> Result<Option<Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Value::deserialize(deserializer).map(Some)
}

/// Accepts ids sent as strings or numbers (some servers echo numeric ids).
fn lenient_id<'de, D>(deserializer: D) -> Result<Option<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = Option::<Value>::deserialize(deserializer)?;
    Ok(match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => Some(other.to_string()),
    })
}

/// True for the channels whose replies the session itself consumes.
pub fn is_session_meta(channel: &str) -> bool {
    matches!(
        channel,
        META_HANDSHAKE | META_CONNECT | META_DISCONNECT | META_SUBSCRIBE | META_UNSUBSCRIBE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_an_array_and_a_bare_object() {
        let arr = br#"[{"channel":"/a","data":1},{"channel":"/meta/connect","successful":true}]"#;
        let msgs = decode_batch(arr).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].kind(), Kind::Delivery);
        assert_eq!(msgs[1].kind(), Kind::Meta);
        let one = decode_batch(br#"{"channel":"/a","successful":true,"id":"7"}"#).unwrap();
        assert_eq!(one[0].kind(), Kind::PublishReply);
        assert_eq!(one[0].id.as_deref(), Some("7"));
    }

    #[test]
    fn keeps_unknown_fields_on_a_round_trip() {
        let body = br#"[{"channel":"/a","data":{"x":1},"EventType":"created","x-messages":2}]"#;
        let msgs = decode_batch(body).unwrap();
        assert_eq!(msgs[0].other.get("EventType"), Some(&json!("created")));
        let back: Value = serde_json::from_slice(&encode_batch(&msgs)).unwrap();
        assert_eq!(back[0]["x-messages"], json!(2));
        assert_eq!(back[0]["data"], json!({"x":1}));
        assert!(
            back[0].get("clientId").is_none(),
            "absent fields are not serialized"
        );
    }

    #[test]
    fn a_null_data_field_is_still_a_delivery() {
        let msgs = decode_batch(
            br#"[{"channel":"/a","data":null},{"channel":"/a","id":"1","successful":true}]"#,
        )
        .unwrap();
        assert_eq!(msgs[0].data, Some(Value::Null));
        assert_eq!(msgs[0].kind(), Kind::Delivery);
        assert_eq!(msgs[1].kind(), Kind::PublishReply);
        let back: Value = serde_json::from_slice(&encode_batch(&msgs[..1])).unwrap();
        assert_eq!(back[0], json!({"channel":"/a","data":null}));
    }

    #[test]
    fn numeric_ids_are_accepted_as_strings() {
        let msgs = decode_batch(br#"[{"channel":"/meta/connect","id":12}]"#).unwrap();
        assert_eq!(msgs[0].id.as_deref(), Some("12"));
    }

    #[test]
    fn rejects_empty_and_non_json_and_wrong_shapes() {
        assert_eq!(decode_batch(b"  \n"), Err(DecodeError::Empty));
        assert!(matches!(
            decode_batch(b"<html>"),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(decode_batch(b"42"), Err(DecodeError::Invalid(_))));
        assert!(matches!(
            decode_batch(br#"[{"data":1}]"#),
            Err(DecodeError::Invalid(_))
        ));
        assert!(matches!(
            decode_batch(br#"[1]"#),
            Err(DecodeError::Invalid(_))
        ));
    }

    #[test]
    fn subscriptions_accepts_string_and_array() {
        let mut m = Message::new(META_SUBSCRIBE);
        m.subscription = Some(json!("/a/*"));
        assert_eq!(m.subscriptions(), vec!["/a/*"]);
        m.subscription = Some(json!(["/a", "/b/**"]));
        assert_eq!(m.subscriptions(), vec!["/a", "/b/**"]);
    }
}

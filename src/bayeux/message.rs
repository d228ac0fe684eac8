//! Bayeux messages and batches: the wire codec.
//!
//! A [`Message`] is one JSON object with a `channel`; messages travel in JSON arrays
//! ("batches"). This module turns bytes into messages and back and classifies a message
//! (meta reply, publish acknowledgement, delivery). It does no IO and knows nothing about
//! sessions or transports.

mod data;
mod decode;

use std::cell::Cell;

use serde::Serialize;
use serde::de::DeserializeSeed;
use serde_json::{Map, Value};

pub use data::Data;
use decode::BatchSeed;

use super::channel::{
    META_CONNECT, META_DISCONNECT, META_HANDSHAKE, META_SUBSCRIBE, META_UNSUBSCRIBE,
};

/// One Bayeux message.
///
/// Known fields are typed; every other field the server sends (Salesforce's `EventType`,
/// CometD's `x-messages`, ...) is kept in [`Message::other`] so nothing is lost on a round trip.
/// Deserializing (hand-written, in `decode`) accepts numeric ids as strings and keeps a
/// `"data": null` as `Some(Data::null())`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Message {
    /// The channel this message is sent on or was delivered from.
    pub channel: String,
    /// Correlation id (alphanumeric). Replies to meta messages echo it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The session id the server assigned at handshake.
    #[serde(rename = "clientId", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Application payload of a publish or a delivery, as the JSON text it arrived as (see
    /// [`Data`]). A `"data": null` on the wire is `Some(Data::null())`: still a delivery,
    /// unlike a message without `data`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Data>,
    /// Reply verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful: Option<bool>,
    /// Reply error string (`code:args:message`), see [`super::error::ServerError`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Server advice (or client advice on `/meta/connect`), see [`super::advice`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Value>,
    /// Extension fields, namespaced by extension.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ext: Option<Map<String, Value>>,
    /// Subscription pattern(s) of `/meta/subscribe` and `/meta/unsubscribe`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<Value>,
    /// Protocol version (handshake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Lowest protocol version accepted (handshake).
    #[serde(rename = "minimumVersion", skip_serializing_if = "Option::is_none")]
    pub minimum_version: Option<String>,
    /// Transports offered (handshake request) or accepted (handshake reply).
    #[serde(
        rename = "supportedConnectionTypes",
        skip_serializing_if = "Option::is_none"
    )]
    pub supported_connection_types: Option<Vec<String>>,
    /// Transport in use (`/meta/connect`).
    #[serde(rename = "connectionType", skip_serializing_if = "Option::is_none")]
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

    /// `data` as a [`Value`] tree: `None` without `data` (or for JSON nested too deeply for
    /// a tree, see [`Data::to_value`]).
    pub fn data_value(&self) -> Option<Value> {
        self.data.as_ref()?.to_value().ok()
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
    /// The batch holds more messages than the cap (see [`decode_batch_limited`]).
    #[error("response holds more than {cap} messages")]
    TooMany {
        /// The cap.
        cap: usize,
    },
}

/// The most messages [`decode_batch`] takes from one batch (100,000): a body of the default
/// 10 MiB cap holds that many messages of 100 bytes, more than a server sends in one reply,
/// and they take some 40 MB decoded. Without a count cap a 10 MiB body of minimal messages
/// (`{"channel":"/a"}`, 17 bytes) decodes into 600,000 of them: some 250 MB.
pub const DEFAULT_MAX_MESSAGES: usize = 100_000;

/// Decodes a batch. The spec says batches SHOULD be arrays and a single object MAY be
/// accepted, so both are.
///
/// The body is parsed straight into [`Message`]s, one after the other: no tree of the whole
/// batch is built first, so a long-poll reply carrying a backlog of thousands of messages
/// costs the messages themselves and little more.
///
/// At most [`DEFAULT_MAX_MESSAGES`] messages are taken; see [`decode_batch_limited`].
pub fn decode_batch(body: &[u8]) -> Result<Vec<Message>, DecodeError> {
    decode_batch_limited(body, DEFAULT_MAX_MESSAGES)
}

/// [`decode_batch`] taking at most `max_messages` messages (at least 1): a batch with more
/// is [`DecodeError::TooMany`], found before the message past the cap is built, so decoding
/// never holds more than `max_messages` messages whatever the body.
///
/// A body wrapped as comment-filtered JSON (`/*[...]*/`, what CometD 1.x-era servers send
/// against JSON hijacking, see [`strip_comment_filter`]) is accepted on every transport.
pub fn decode_batch_limited(body: &[u8], max_messages: usize) -> Result<Vec<Message>, DecodeError> {
    let max_messages = max_messages.max(1);
    let body = strip_comment_filter(body)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(DecodeError::Empty);
    }
    // The index of the message being decoded, to name it in an error.
    let at = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let too_many = Cell::new(false);
    let batch = BatchSeed {
        at: &at,
        capacity: decode::capacity_hint(body).min(max_messages),
        max: max_messages,
        too_many: &too_many,
    }
    .deserialize(&mut deserializer)
    .and_then(|batch| deserializer.end().map(|()| batch));
    if too_many.get() {
        return Err(DecodeError::TooMany { cap: max_messages });
    }
    batch.map_err(|e| match at.get() {
        Some(i) => DecodeError::Invalid(format!("message {i}: {e}")),
        None => DecodeError::Invalid(e.to_string()),
    })
}

/// The JSON inside a comment-filtered body: exactly one leading `/*` and one trailing `*/`
/// (whitespace around either allowed) around the rest, which must then be JSON on its own
/// (a second wrapper inside fails to parse). A body without the leading `/*` is returned as
/// it is; one with `/*` but no closing `*/` is refused.
pub fn strip_comment_filter(body: &[u8]) -> Result<&[u8], DecodeError> {
    let trimmed = body.trim_ascii();
    let Some(inner) = trimmed.strip_prefix(b"/*") else {
        return Ok(body);
    };
    inner.strip_suffix(b"*/").ok_or_else(|| {
        DecodeError::Invalid("comment-filtered body without a closing */".to_owned())
    })
}

/// Encodes a batch as a JSON array (always an array, as the spec recommends).
pub fn encode_batch(messages: &[Message]) -> Vec<u8> {
    // Serializing a struct of strings, bools and `Value`s cannot fail: `Value` keys are
    // always strings and there are no non-finite floats in a `Value`.
    serde_json::to_vec(messages).unwrap_or_else(|_| b"[]".to_vec())
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
    fn a_comment_filtered_body_is_accepted_strictly() {
        let wrapped = b" /*[{\"channel\":\"/a\",\"data\":\"*/\"}]*/\n";
        let msgs = decode_batch(wrapped).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].channel, "/a");
        assert!(decode_batch(b"/*{\"channel\":\"/b\"}*/").is_ok());
        // Nothing else: no second wrapper, nothing after it, a closing */ required.
        for bad in [
            &b"/*/*[{\"channel\":\"/a\"}]*/*/"[..],
            b"/*[{\"channel\":\"/a\"}]*/ x",
            b"/*[{\"channel\":\"/a\"}]",
            b"x/*[{\"channel\":\"/a\"}]*/",
            b"/*[{\"channel\":\"/a\"}]*/*/",
        ] {
            assert!(
                matches!(decode_batch(bad), Err(DecodeError::Invalid(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(decode_batch(b"/* */"), Err(DecodeError::Empty));
    }

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
        assert_eq!(msgs[0].data, Some(Data::null()));
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
    fn an_error_names_the_message_it_is_in() {
        let err = decode_batch(br#"[{"channel":"/a","data":1},{"data":1}]"#).unwrap_err();
        let DecodeError::Invalid(why) = err else {
            panic!("not Invalid: {err:?}");
        };
        assert!(
            why.starts_with("message 1: missing field `channel`"),
            "{why}"
        );
        let err = decode_batch(br#"{"channel":"/a","successful":"yes"}"#).unwrap_err();
        assert!(matches!(&err, DecodeError::Invalid(why) if why.starts_with("message 0: ")));
        let err = decode_batch(br#"[{"channel":"/a"}] x"#).unwrap_err();
        assert!(matches!(&err, DecodeError::Invalid(why) if why.starts_with("trailing")));
    }

    #[test]
    fn a_typed_field_given_twice_is_refused_and_other_fields_keep_the_last() {
        assert!(matches!(
            decode_batch(br#"[{"channel":"/a","channel":"/b"}]"#),
            Err(DecodeError::Invalid(why)) if why.contains("duplicate field `channel`")
        ));
        let msgs = decode_batch(br#"[{"channel":"/a","x":1,"x":2}]"#).unwrap();
        assert_eq!(msgs[0].other.get("x"), Some(&json!(2)));
    }

    #[test]
    fn every_field_is_decoded_into_its_place() {
        let body = br#"[{"channel":"/meta/handshake","id":"1","clientId":"c1","successful":true,
            "error":"403::x","advice":{"reconnect":"retry"},"ext":{"ack":true},
            "subscription":["/a"],"version":"1.0","minimumVersion":"1.0",
            "supportedConnectionTypes":["long-polling"],"connectionType":"long-polling",
            "advice2":null}]"#;
        let m = &decode_batch(body).unwrap()[0];
        assert_eq!(m.client_id.as_deref(), Some("c1"));
        assert_eq!(m.error.as_deref(), Some("403::x"));
        assert_eq!(m.advice, Some(json!({"reconnect":"retry"})));
        assert_eq!(
            m.ext.as_ref().and_then(|e| e.get("ack")),
            Some(&json!(true))
        );
        assert_eq!(m.subscriptions(), vec!["/a"]);
        assert_eq!(m.version.as_deref(), Some("1.0"));
        assert_eq!(m.minimum_version.as_deref(), Some("1.0"));
        assert_eq!(
            m.supported_connection_types.as_deref(),
            Some(&["long-polling".to_owned()][..])
        );
        assert_eq!(m.connection_type.as_deref(), Some("long-polling"));
        assert_eq!(m.other.get("advice2"), Some(&Value::Null));
        // Null optional fields are absent, as with the derived decoder.
        let m = &decode_batch(br#"[{"channel":"/a","id":null,"clientId":null,"advice":null}]"#)
            .unwrap()[0];
        assert_eq!((&m.id, &m.client_id, &m.advice), (&None, &None, &None));
    }

    #[test]
    fn the_capacity_hint_counts_top_level_elements_and_is_bounded_by_the_size() {
        let body = br#"[{"channel":"/a","data":{"x":[1,2],"s":"a,b\\\",]"}},{"channel":"/b"}]"#;
        assert_eq!(decode::capacity_hint(body), 2);
        assert_eq!(decode_batch(body).unwrap().len(), 2);
        assert_eq!(decode::capacity_hint(br#"{"channel":"/a"}"#), 1);
        // Commas alone cannot reserve more than a minimal message per 15 bytes.
        let commas: Vec<u8> = std::iter::once(b'[').chain([b','; 149]).collect();
        assert_eq!(decode::capacity_hint(&commas), 10);
        assert_eq!(decode::capacity_hint(b"[,,,,,,,,,,,,,,,,,,,,,,,,,,,,,]"), 2);
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

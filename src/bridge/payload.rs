//! Message bodies between the two sides. Pure: no IO.
//!
//! MQTT → Bayeux: a payload that is valid JSON becomes the Bayeux `data` as is; other UTF-8
//! text becomes a JSON string; anything else is binary, refused or wrapped as
//! `{"base64": "..."}` by [`BinaryPolicy`]. Bayeux → MQTT: the message's `data` as JSON, the
//! whole message, or the value at a JSON pointer (RFC 6901) in the data, by the route's
//! [`PayloadMode`]; with MQTT 5, the publish's properties ([`mqtt_properties`]) say what it is
//! and where it came from.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use serde_json::value::RawValue;

use crate::bayeux::{Data, Message};
pub use crate::config::{BinaryPolicy, PayloadMode};
use crate::mqtt::Properties;

/// A Bayeux → MQTT payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttPayload {
    /// What is published.
    pub bytes: Bytes,
    /// A JSON string published as its text (`text/plain`), not as JSON.
    pub text: bool,
}

impl MqttPayload {
    fn json(bytes: Bytes) -> MqttPayload {
        MqttPayload { bytes, text: false }
    }
}

/// Why a Bayeux message has no MQTT payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The route's JSON pointer names no value in the data.
    #[error("the data has no value at JSON pointer {pointer:?}")]
    PointerNotFound {
        /// The route's pointer.
        pointer: String,
    },
}

impl SelectError {
    /// The reason label of the drop or dead letter.
    pub fn reason(&self) -> &'static str {
        match self {
            SelectError::PointerNotFound { .. } => "pointer_not_found",
        }
    }
}

/// Why an MQTT payload was not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is not UTF-8 and `bridge.binary_payloads = "refuse"`.
    #[error(
        "payload of {len} bytes is not UTF-8 (invalid at byte {valid_up_to}) and \
         bridge.binary_payloads = \"refuse\""
    )]
    Binary {
        /// Payload length in bytes.
        len: usize,
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
}

/// The Bayeux `data` for an MQTT payload.
///
/// JSON text (any JSON value, surrounding whitespace allowed) is used as is, byte for byte
/// apart from that whitespace; other UTF-8 text, including the empty payload, becomes a JSON
/// string; non-UTF-8 bytes are refused or base64-wrapped per `binary`.
pub fn mqtt_to_bayeux_data(payload: &[u8], binary: BinaryPolicy) -> Result<Data, PayloadError> {
    match std::str::from_utf8(payload) {
        Ok(text) => Ok(Data::from_json(text)
            .unwrap_or_else(|_| Data::from_value(&Value::String(text.to_owned())))),
        Err(e) => match binary {
            BinaryPolicy::Refuse => Err(PayloadError::Binary {
                len: payload.len(),
                valid_up_to: e.valid_up_to(),
            }),
            BinaryPolicy::Base64 => {
                let mut wrapped = serde_json::Map::new();
                wrapped.insert("base64".to_owned(), Value::String(STANDARD.encode(payload)));
                Ok(Data::from_value(&Value::Object(wrapped)))
            }
        },
    }
}

/// The MQTT payload for a Bayeux message: its `data` exactly as the server sent it (`null`
/// when it has none), moved out of the message without copying; or with
/// [`PayloadMode::Message`] the whole message as JSON without `clientId` (the bridge's own
/// session id means nothing to MQTT subscribers), the message left as it was; or with
/// [`PayloadMode::Pointer`] the value the pointer names in the data, as the server wrote it
/// (a JSON string as its text), the message left as it was. Only a pointer can fail.
pub fn bayeux_to_mqtt_payload(
    message: &mut Message,
    mode: &PayloadMode,
) -> Result<MqttPayload, SelectError> {
    match mode {
        PayloadMode::Data => Ok(MqttPayload::json(match message.data.take() {
            Some(data) => Bytes::from(data.into_json().into_boxed_bytes()),
            None => Bytes::from_static(b"null"),
        })),
        PayloadMode::Message => Ok(MqttPayload::json(whole_message(message))),
        PayloadMode::Pointer(pointer) => {
            let not_found = || SelectError::PointerNotFound {
                pointer: pointer.clone(),
            };
            let data = message.data.as_ref().ok_or_else(not_found)?;
            let value = select(data.json(), pointer).ok_or_else(not_found)?;
            Ok(match serde_json::from_str::<String>(value) {
                Ok(text) => MqttPayload {
                    bytes: Bytes::from(text),
                    text: true,
                },
                Err(_) => MqttPayload::json(Bytes::copy_from_slice(value.as_bytes())),
            })
        }
    }
}

/// The whole message as JSON, without `clientId`.
pub fn whole_message(message: &mut Message) -> Bytes {
    let client_id = message.client_id.take();
    // Serializing a `Message` cannot fail: every map in it has string keys.
    let json = serde_json::to_vec(&*message)
        .unwrap_or_else(|_| unreachable!("a Message always serializes"));
    message.client_id = client_id;
    Bytes::from(json)
}

/// The JSON text of the value `pointer` (RFC 6901, checked by the config validator) names
/// in `json`, without parsing more than the objects and arrays on the way.
fn select<'a>(json: &'a str, pointer: &str) -> Option<&'a str> {
    let mut current = json.trim();
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        let next: &'a RawValue = match current.as_bytes().first() {
            Some(b'{') => {
                let object: std::collections::HashMap<String, &'a RawValue> =
                    serde_json::from_str(current).ok()?;
                object.get(&token).copied()?
            }
            Some(b'[') => {
                let index = array_index(&token)?;
                let array: Vec<&'a RawValue> = serde_json::from_str(current).ok()?;
                array.get(index).copied()?
            }
            _ => return None,
        };
        current = next.get().trim();
    }
    Some(current)
}

/// An array index token: digits without a leading zero (RFC 6901 §4); `-` (past the end)
/// names no value.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// The content type of a Bayeux → MQTT payload.
pub fn content_type(payload: &MqttPayload) -> &'static str {
    if payload.text {
        "text/plain"
    } else {
        "application/json"
    }
}

/// The MQTT 5 properties of a Bayeux → MQTT publish: the content type, and the user
/// properties `bayeux-channel`, `bayeux-id` (when the message has an id) and `replay-id`
/// (when the event has one: `replay_id`, read before the data was taken).
pub fn mqtt_properties(
    message: &Message,
    replay_id: Option<i64>,
    payload: &MqttPayload,
) -> Properties {
    let mut user = vec![(
        "bayeux-channel".to_owned(),
        property_value(&message.channel),
    )];
    if let Some(id) = &message.id {
        user.push(("bayeux-id".to_owned(), property_value(id)));
    }
    if let Some(replay_id) = replay_id {
        user.push(("replay-id".to_owned(), replay_id.to_string()));
    }
    Properties {
        content_type: Some(content_type(payload).to_owned()),
        user,
    }
}

/// The longest user property value the bridge makes, in bytes.
const MAX_PROPERTY_BYTES: usize = 4096;

/// `value` as a user property value: characters MQTT brokers refuse in strings (control
/// characters, non-characters) escaped as `\u{1}`, and cut at [`MAX_PROPERTY_BYTES`] (with
/// `…`). A server's message id, a channel or an error text can hold anything; sent as is,
/// the broker would close the connection and a QoS ≥ 1 publish would follow every reconnect.
pub(crate) fn property_value(value: &str) -> String {
    let escaped = crate::mqtt::escape_forbidden(value);
    if escaped.len() <= MAX_PROPERTY_BYTES {
        return escaped.into_owned();
    }
    let mut end = MAX_PROPERTY_BYTES - '…'.len_utf8();
    while !escaped.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &escaped[..end])
}

/// The event's replay id (`data.event.replayId`), looked for only when the data's text holds
/// `"replayId"` at all: most deliveries of most servers have none, and then their data is not
/// parsed again.
pub fn event_replay_id(message: &Message) -> Option<i64> {
    message
        .data
        .as_ref()
        .filter(|data| data.json().contains("\"replayId\""))
        .and_then(|_| crate::bayeux::ext::replay::replay_id(message))
}

/// The Bayeux `ext` fields of an MQTT message (`route.ext_properties`): `mqtt-topic`, and
/// each MQTT 5 user property (a repeated name keeps its last value).
pub fn mqtt_ext(topic: &str, properties: &Properties) -> serde_json::Map<String, Value> {
    let mut ext = serde_json::Map::new();
    for (name, value) in &properties.user {
        ext.insert(name.clone(), Value::String(value.clone()));
    }
    ext.insert("mqtt-topic".to_owned(), Value::String(topic.to_owned()));
    ext
}

/// What the echo filter compares: `data` in one canonical form (compact, keys sorted,
/// numbers as `serde_json` writes them), so that the server's copy of an own publish matches
/// however the server re-encodes it. JSON too deep for a tree is compared as its text.
pub fn echo_fingerprint(data: &Data) -> Vec<u8> {
    data.to_value()
        .ok()
        .and_then(|value| serde_json::to_vec(&value).ok())
        .unwrap_or_else(|| data.json().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn property_values_are_escaped_and_bounded() {
        assert_eq!(property_value("/a/b"), "/a/b");
        assert_eq!(property_value("/a\u{1}b"), "/a\\u{1}b");
        let long = property_value(&"ü".repeat(5000));
        assert!(
            long.len() <= MAX_PROPERTY_BYTES && long.ends_with('…'),
            "{}",
            long.len()
        );
    }

    #[test]
    fn mqtt_payloads_become_bayeux_data_by_content() {
        // (payload, policy, expected data)
        // (payload, policy, expected data as JSON text)
        let table: [(&[u8], BinaryPolicy, &str); 12] = [
            (br#"{"t":21.5}"#, BinaryPolicy::Refuse, r#"{"t":21.5}"#),
            (
                br#"{"b": 1, "a": 2.50}"#,
                BinaryPolicy::Refuse,
                r#"{"b": 1, "a": 2.50}"#,
            ),
            (b"[1,2]", BinaryPolicy::Refuse, "[1,2]"),
            (b" 42 \n", BinaryPolicy::Refuse, "42"),
            (b"true", BinaryPolicy::Refuse, "true"),
            (b"null", BinaryPolicy::Refuse, "null"),
            (br#""quoted""#, BinaryPolicy::Refuse, r#""quoted""#),
            (b"hello world", BinaryPolicy::Refuse, r#""hello world""#),
            (b"", BinaryPolicy::Refuse, r#""""#),
            (b"{broken", BinaryPolicy::Refuse, r#""{broken""#),
            (b"1 2", BinaryPolicy::Refuse, r#""1 2""#),
            ("21,5 °C".as_bytes(), BinaryPolicy::Refuse, r#""21,5 °C""#),
        ];
        for (payload, policy, expected) in table {
            assert_eq!(
                mqtt_to_bayeux_data(payload, policy).map(|d| d.json().to_owned()),
                Ok(expected.to_owned()),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }

    #[test]
    fn binary_payloads_are_refused_by_default() {
        let err = mqtt_to_bayeux_data(&[0x61, 0xff, 0x00], BinaryPolicy::Refuse).unwrap_err();
        assert_eq!(
            err,
            PayloadError::Binary {
                len: 3,
                valid_up_to: 1
            }
        );
        assert_eq!(
            err.to_string(),
            "payload of 3 bytes is not UTF-8 (invalid at byte 1) and \
             bridge.binary_payloads = \"refuse\""
        );
    }

    #[test]
    fn binary_payloads_are_wrapped_in_base64_when_configured() {
        let data = mqtt_to_bayeux_data(&[0xde, 0xad, 0xbe, 0xef], BinaryPolicy::Base64);
        assert_eq!(data, Ok(json!({"base64": "3q2+7w=="}).into()));
    }

    #[test]
    fn text_payloads_ignore_the_binary_policy() {
        assert_eq!(
            mqtt_to_bayeux_data(b"plain", BinaryPolicy::Base64),
            Ok(json!("plain").into())
        );
    }

    fn bytes(message: &mut Message, mode: PayloadMode) -> Bytes {
        bayeux_to_mqtt_payload(message, &mode).unwrap().bytes
    }

    fn delivery() -> Message {
        let mut message = Message::new("/sensors/a");
        message.data = Some(json!({"t": 21.5}).into());
        message.id = Some("7".into());
        message.client_id = Some("secret-session".into());
        message
    }

    #[test]
    fn data_mode_publishes_the_data_as_json() {
        let payload = bytes(&mut delivery(), PayloadMode::Data);
        assert_eq!(&payload[..], br#"{"t":21.5}"#);
    }

    #[test]
    fn data_mode_publishes_the_data_byte_for_byte() {
        let mut message = delivery();
        let as_sent = r#"{"z": 1.50, "a": [1e3, "\u00e9"]}"#;
        message.data = Some(Data::from_json(as_sent).unwrap());
        let payload = bytes(&mut message, PayloadMode::Data);
        assert_eq!(&payload[..], as_sent.as_bytes());
    }

    #[test]
    fn echo_fingerprints_ignore_how_the_json_is_written() {
        let ours = Data::from_json(r#"{"b": 1.50, "a": [1, 2]}"#).unwrap();
        let echoed = Data::from_json(r#"{"a":[1,2],"b":1.5}"#).unwrap();
        assert_eq!(echo_fingerprint(&ours), echo_fingerprint(&echoed));
        let other = Data::from_json(r#"{"a":[1,2],"b":1.6}"#).unwrap();
        assert_ne!(echo_fingerprint(&ours), echo_fingerprint(&other));
    }

    #[test]
    fn data_mode_publishes_null_when_there_is_no_data() {
        let payload = bytes(&mut Message::new("/a"), PayloadMode::Data);
        assert_eq!(&payload[..], b"null");
    }

    #[test]
    fn message_mode_publishes_the_whole_message_without_client_id() {
        let mut message = delivery();
        message.other.insert("EventType".into(), json!("created"));
        let payload = bytes(&mut message, PayloadMode::Message);
        assert_eq!(message.client_id.as_deref(), Some("secret-session"));
        let value: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            value,
            json!({"channel": "/sensors/a", "id": "7", "data": {"t": 21.5}, "EventType": "created"})
        );
    }

    #[test]
    fn json_round_trips_through_both_directions() {
        let original = br#"{"a":[1,"x",null],"b":{"c":false}}"#;
        let data = mqtt_to_bayeux_data(original, BinaryPolicy::Refuse).unwrap();
        let mut message = Message::new("/a");
        message.data = Some(data);
        assert_eq!(&bytes(&mut message, PayloadMode::Data)[..], original);
    }

    fn salesforce_event() -> Message {
        let mut message = Message::new("/data/AccountChangeEvent");
        let data = r#"{"schema":"s1","payload":{"Name":"Acme","Amount":1.50,"a/b":{"~k":[10,"x"]}},
                      "event":{"replayId":42},"note":"plain"}"#;
        message.data = Some(Data::from_json(data).unwrap());
        message.id = Some("9".into());
        message
    }

    #[test]
    fn a_pointer_selects_a_value_as_the_server_wrote_it() {
        // (pointer, expected payload, published as text)
        let table: [(&str, &str, bool); 7] = [
            (
                "/payload",
                r#"{"Name":"Acme","Amount":1.50,"a/b":{"~k":[10,"x"]}}"#,
                false,
            ),
            ("/payload/Amount", "1.50", false),
            ("/payload/a~1b/~0k", r#"[10,"x"]"#, false),
            ("/payload/a~1b/~0k/0", "10", false),
            ("/payload/a~1b/~0k/1", "x", true),
            ("/event/replayId", "42", false),
            ("/note", "plain", true),
        ];
        for (pointer, expected, text) in table {
            let mut message = salesforce_event();
            let payload =
                bayeux_to_mqtt_payload(&mut message, &PayloadMode::Pointer(pointer.into()));
            assert_eq!(
                payload,
                Ok(MqttPayload {
                    bytes: Bytes::copy_from_slice(expected.as_bytes()),
                    text
                }),
                "{pointer}"
            );
            assert!(message.data.is_some(), "the data stays for a dead letter");
        }
    }

    #[test]
    fn a_pointer_to_nothing_is_pointer_not_found() {
        for pointer in [
            "/missing",
            "/payload/Name/deeper",
            "/payload/a~1b/~0k/2",
            "/payload/a~1b/~0k/-",
            "/payload/a~1b/~0k/01",
            "/payload/a~1b/~0k/x",
            "/payload/a/b",
        ] {
            let err = bayeux_to_mqtt_payload(
                &mut salesforce_event(),
                &PayloadMode::Pointer(pointer.into()),
            )
            .unwrap_err();
            assert_eq!(err.reason(), "pointer_not_found", "{pointer}");
            assert_eq!(
                err.to_string(),
                format!("the data has no value at JSON pointer {pointer:?}")
            );
        }
        let without_data =
            bayeux_to_mqtt_payload(&mut Message::new("/a"), &PayloadMode::Pointer("/x".into()));
        assert!(without_data.is_err());
    }

    #[test]
    fn properties_name_the_channel_the_id_and_the_replay_id() {
        let message = salesforce_event();
        let json = MqttPayload::json(Bytes::from_static(b"{}"));
        let properties = mqtt_properties(&message, Some(42), &json);
        assert_eq!(properties.content_type.as_deref(), Some("application/json"));
        assert_eq!(
            properties.user,
            [
                (
                    "bayeux-channel".to_owned(),
                    "/data/AccountChangeEvent".to_owned()
                ),
                ("bayeux-id".to_owned(), "9".to_owned()),
                ("replay-id".to_owned(), "42".to_owned()),
            ]
        );
        let text = MqttPayload {
            bytes: Bytes::from_static(b"x"),
            text: true,
        };
        let bare = mqtt_properties(&Message::new("/a"), None, &text);
        assert_eq!(bare.content_type.as_deref(), Some("text/plain"));
        assert_eq!(bare.user, [("bayeux-channel".to_owned(), "/a".to_owned())]);
    }

    #[test]
    fn ext_properties_carry_the_topic_and_the_user_properties() {
        let properties = Properties {
            content_type: None,
            user: vec![
                ("site".into(), "a".into()),
                ("site".into(), "b".into()),
                ("mqtt-topic".into(), "spoofed".into()),
            ],
        };
        let ext = mqtt_ext("in/x", &properties);
        assert_eq!(
            Value::Object(ext),
            json!({"site": "b", "mqtt-topic": "in/x"})
        );
    }

    #[test]
    fn the_replay_id_is_read_only_from_events_that_have_one() {
        assert_eq!(event_replay_id(&salesforce_event()), Some(42));
        assert_eq!(event_replay_id(&delivery()), None);
        let mut text = Message::new("/a");
        text.data = Some(json!({"note": "replayId", "event": {}}).into());
        assert_eq!(event_replay_id(&text), None);
    }
}

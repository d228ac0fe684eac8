//! Message bodies between the two sides. Pure: no IO.
//!
//! MQTT → Bayeux: a payload that is valid JSON becomes the Bayeux `data` as is; other UTF-8
//! text becomes a JSON string; anything else is binary, refused or wrapped as
//! `{"base64": "..."}` by [`BinaryPolicy`]. Bayeux → MQTT: the message's `data` as JSON, or
//! the whole message, by the route's [`PayloadMode`].

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::Value;

use crate::bayeux::{Data, Message};
pub use crate::config::{BinaryPolicy, PayloadMode};

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
/// session id means nothing to MQTT subscribers), the message left as it was.
pub fn bayeux_to_mqtt_payload(message: &mut Message, mode: PayloadMode) -> Bytes {
    match mode {
        PayloadMode::Data => match message.data.take() {
            Some(data) => Bytes::from(data.into_json().into_boxed_bytes()),
            None => Bytes::from_static(b"null"),
        },
        PayloadMode::Message => {
            let client_id = message.client_id.take();
            // Serializing a `Message` cannot fail: every map in it has string keys.
            let json = serde_json::to_vec(&*message)
                .unwrap_or_else(|_| unreachable!("a Message always serializes"));
            message.client_id = client_id;
            Bytes::from(json)
        }
    }
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

    fn delivery() -> Message {
        let mut message = Message::new("/sensors/a");
        message.data = Some(json!({"t": 21.5}).into());
        message.id = Some("7".into());
        message.client_id = Some("secret-session".into());
        message
    }

    #[test]
    fn data_mode_publishes_the_data_as_json() {
        let payload = bayeux_to_mqtt_payload(&mut delivery(), PayloadMode::Data);
        assert_eq!(&payload[..], br#"{"t":21.5}"#);
    }

    #[test]
    fn data_mode_publishes_the_data_byte_for_byte() {
        let mut message = delivery();
        let as_sent = r#"{"z": 1.50, "a": [1e3, "\u00e9"]}"#;
        message.data = Some(Data::from_json(as_sent).unwrap());
        let payload = bayeux_to_mqtt_payload(&mut message, PayloadMode::Data);
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
        let payload = bayeux_to_mqtt_payload(&mut Message::new("/a"), PayloadMode::Data);
        assert_eq!(&payload[..], b"null");
    }

    #[test]
    fn message_mode_publishes_the_whole_message_without_client_id() {
        let mut message = delivery();
        message.other.insert("EventType".into(), json!("created"));
        let payload = bayeux_to_mqtt_payload(&mut message, PayloadMode::Message);
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
        assert_eq!(
            &bayeux_to_mqtt_payload(&mut message, PayloadMode::Data)[..],
            original
        );
    }
}

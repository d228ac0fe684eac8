//! Deserializing messages and batches straight from the parser.
//!
//! `#[derive(Deserialize)]` with `#[serde(flatten)]` buffers every message in serde's private
//! `Content` tree before it fills the struct, and a batch used to go through a whole
//! `serde_json::Value` first: two trees of each message on top of the message itself. Here a
//! batch is read element by element, and each known field goes straight into its place: `data`
//! as its JSON text (see [`super::Data`]); only `advice`, `ext`, `subscription` and unknown
//! fields become `Value`s, as they are kept as such.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::Message;

/// A batch: an array of messages, or a single message. Records in `at` the index of the
/// message being read, so that an error can name it.
pub(super) struct BatchSeed<'a> {
    pub(super) at: &'a Cell<Option<usize>>,
    /// Room to reserve for an array: see [`capacity_hint`].
    pub(super) capacity: usize,
    /// The most messages taken; one more sets `too_many` and fails the batch.
    pub(super) max: usize,
    /// Set when the batch holds more than `max` messages.
    pub(super) too_many: &'a Cell<bool>,
}

/// How many messages a batch body holds at most, counted without parsing: the commas
/// between top-level array elements, plus one, and never more than a minimal message
/// (`{"channel":""}`, 14 bytes, and a comma) per 15 bytes, whatever the body is.
///
/// A long-poll reply with a backlog holds tens of thousands of messages; reserving for them
/// at once, instead of doubling the vector as they come, saves the copies and the up to
/// half-empty vector (a `Message` is some 350 bytes).
pub(super) fn capacity_hint(body: &[u8]) -> usize {
    let mut depth = 0u32;
    let mut in_string = false;
    let mut escaped = false;
    let mut commas = 0usize;
    for &b in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => commas += 1,
            _ => {}
        }
    }
    (commas + 1).min(body.len() / 15)
}

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BatchSeed<'_> {
    type Value = Vec<Message>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of messages or a single message")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut messages = Vec::with_capacity(self.capacity);
        loop {
            if messages.len() == self.max {
                // Is there one more? Skimmed, not built: `IgnoredAny` allocates nothing.
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    self.too_many.set(true);
                    return Err(de::Error::custom("too many messages"));
                }
                break;
            }
            self.at.set(Some(messages.len()));
            match seq.next_element::<Message>()? {
                Some(message) => messages.push(message),
                None => break,
            }
        }
        self.at.set(None);
        Ok(messages)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.at.set(Some(0));
        let message = MessageVisitor.visit_map(map)?;
        self.at.set(None);
        Ok(vec![message])
    }
}

impl<'de> Deserialize<'de> for Message {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

/// A field name: one of the typed fields, or any other (kept in [`Message::other`]).
enum Field {
    Channel,
    Id,
    ClientId,
    Data,
    Successful,
    Error,
    Advice,
    Ext,
    Subscription,
    Version,
    MinimumVersion,
    SupportedConnectionTypes,
    ConnectionType,
    Other(String),
}

impl Field {
    /// The typed field named `name`, if it is one.
    fn known(name: &str) -> Option<Field> {
        Some(match name {
            "channel" => Field::Channel,
            "id" => Field::Id,
            "clientId" => Field::ClientId,
            "data" => Field::Data,
            "successful" => Field::Successful,
            "error" => Field::Error,
            "advice" => Field::Advice,
            "ext" => Field::Ext,
            "subscription" => Field::Subscription,
            "version" => Field::Version,
            "minimumVersion" => Field::MinimumVersion,
            "supportedConnectionTypes" => Field::SupportedConnectionTypes,
            "connectionType" => Field::ConnectionType,
            _ => return None,
        })
    }

    /// The wire name and a bit of its own, for a typed field.
    fn typed(&self) -> Option<(&'static str, u16)> {
        Some(match self {
            Field::Channel => ("channel", 1),
            Field::Id => ("id", 1 << 1),
            Field::ClientId => ("clientId", 1 << 2),
            Field::Data => ("data", 1 << 3),
            Field::Successful => ("successful", 1 << 4),
            Field::Error => ("error", 1 << 5),
            Field::Advice => ("advice", 1 << 6),
            Field::Ext => ("ext", 1 << 7),
            Field::Subscription => ("subscription", 1 << 8),
            Field::Version => ("version", 1 << 9),
            Field::MinimumVersion => ("minimumVersion", 1 << 10),
            Field::SupportedConnectionTypes => ("supportedConnectionTypes", 1 << 11),
            Field::ConnectionType => ("connectionType", 1 << 12),
            Field::Other(_) => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
        Ok(Field::known(name).unwrap_or_else(|| Field::Other(name.to_owned())))
    }

    fn visit_string<E: de::Error>(self, name: String) -> Result<Field, E> {
        Ok(Field::known(&name).unwrap_or(Field::Other(name)))
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = Message;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Bayeux message (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Message, A::Error> {
        let mut message = Message::default();
        let mut channel = None;
        let mut seen = 0u16;
        while let Some(field) = map.next_key::<Field>()? {
            if let Some((name, bit)) = field.typed() {
                if seen & bit != 0 {
                    return Err(de::Error::duplicate_field(name));
                }
                seen |= bit;
            }
            match field {
                Field::Channel => channel = Some(map.next_value::<String>()?),
                Field::Id => message.id = lenient_id(map.next_value()?),
                Field::ClientId => message.client_id = map.next_value()?,
                // Present means `Some`, even for `null`: still a delivery.
                Field::Data => message.data = Some(map.next_value()?),
                Field::Successful => message.successful = map.next_value()?,
                Field::Error => message.error = map.next_value()?,
                Field::Advice => message.advice = map.next_value()?,
                Field::Ext => message.ext = map.next_value()?,
                Field::Subscription => message.subscription = map.next_value()?,
                Field::Version => message.version = map.next_value()?,
                Field::MinimumVersion => message.minimum_version = map.next_value()?,
                Field::SupportedConnectionTypes => {
                    message.supported_connection_types = map.next_value()?
                }
                Field::ConnectionType => message.connection_type = map.next_value()?,
                Field::Other(name) => {
                    let value = map.next_value::<Value>()?;
                    message.other.insert(name, value);
                }
            }
        }
        message.channel = channel.ok_or_else(|| de::Error::missing_field("channel"))?;
        Ok(message)
    }
}

/// Ids sent as strings or numbers (some servers echo numeric ids) are kept as strings; a
/// `null` is no id.
fn lenient_id(value: Option<Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(other) => Some(other.to_string()),
    }
}

//! What a spool entry holds: a message in its final form, so that delivery after a restart
//! needs no route lookup (a route changed by a reload or a restart meanwhile does not change
//! where a spooled message goes).
//!
//! Layout, all integers little-endian, strings as a length `u32` and UTF-8: a version byte
//! ([`VERSION`], or [`VERSION_EXTRA`] when the message has MQTT 5 properties or a Bayeux
//! `ext`; entries without are written as before, so an older version reads them), then
//! - Bayeux → MQTT ([`ToMqtt`]): route `u32`, QoS `u8`, retain `u8`, topic; with
//!   [`VERSION_EXTRA`] the properties: content type flag `u8` (0/1) and string, user
//!   property count `u32` and each name and value; then the payload (the rest);
//! - MQTT → Bayeux ([`ToBayeux`]): route `u32`, channel, source topic (for logs); with
//!   [`VERSION_EXTRA`] the `ext` object as JSON text; then the data (JSON text, the rest).
//!
//! Decoding never panics: a short or malformed entry is an error naming what is wrong, and
//! the caller drops it and counts it.

use bytes::{BufMut, Bytes, BytesMut};

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::bayeux::Data;
use crate::mqtt::{Properties, QoS};

/// The entry layout version.
pub(super) const VERSION: u8 = 1;

/// The entry layout version with MQTT 5 properties or a Bayeux `ext`.
pub(super) const VERSION_EXTRA: u8 = 2;

/// The version byte of a pack: several messages in one spool entry.
const PACK_VERSION: u8 = 0x50;

/// Several encoded messages as one spool entry (one B-tree insert and one removal for all of
/// them): [`PACK_VERSION`], the count `u32`, then each message as its length `u32` and its
/// bytes.
pub(crate) fn pack(messages: &[Bytes]) -> Bytes {
    let len = 5 + messages.iter().map(|m| 4 + m.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(PACK_VERSION);
    out.put_u32_le(u32::try_from(messages.len()).unwrap_or(u32::MAX));
    for message in messages {
        out.put_u32_le(u32::try_from(message.len()).unwrap_or(u32::MAX));
        out.put_slice(message);
    }
    out.freeze()
}

/// The messages of a [`pack`], sharing its bytes.
pub(crate) fn unpack(entry: &Bytes) -> Result<Vec<Bytes>, &'static str> {
    let mut r = Reader {
        bytes: entry,
        at: 0,
    };
    if r.u8()? != PACK_VERSION {
        return Err("not a pack of messages");
    }
    let count = r.u32()? as usize;
    // Each message takes at least its 4-byte length: a count beyond that is damage.
    if count > entry.len() / 4 {
        return Err("message count out of range");
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u32()? as usize;
        let start = r.at;
        r.take(len)?;
        out.push(entry.slice(start..r.at));
    }
    if r.at != entry.len() {
        return Err("bytes after the last message");
    }
    Ok(out)
}

/// A Bayeux → MQTT message as it will be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToMqtt {
    pub(crate) route: usize,
    pub(crate) qos: QoS,
    pub(crate) retain: bool,
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) properties: Option<Arc<Properties>>,
}

/// An MQTT → Bayeux message as it will be published.
#[derive(Debug, Clone)]
pub(crate) struct ToBayeux {
    pub(crate) route: usize,
    pub(crate) channel: String,
    /// The MQTT topic it came from, for logs.
    pub(crate) topic: String,
    pub(crate) data: Data,
    /// Fields for the Bayeux message's `ext` (`route.ext_properties`).
    pub(crate) ext: Option<Map<String, Value>>,
}

impl ToMqtt {
    pub(crate) fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(11 + self.topic.len() + self.payload.len());
        out.put_u8(if self.properties.is_some() {
            VERSION_EXTRA
        } else {
            VERSION
        });
        out.put_u32_le(route_u32(self.route));
        out.put_u8(self.qos.as_u8());
        out.put_u8(u8::from(self.retain));
        put_str(&mut out, &self.topic);
        if let Some(properties) = &self.properties {
            out.put_u8(u8::from(properties.content_type.is_some()));
            put_str(&mut out, properties.content_type.as_deref().unwrap_or(""));
            out.put_u32_le(u32::try_from(properties.user.len()).unwrap_or(u32::MAX));
            for (name, value) in &properties.user {
                put_str(&mut out, name);
                put_str(&mut out, value);
            }
        }
        out.put_slice(&self.payload);
        out.freeze()
    }

    pub(crate) fn decode(entry: &Bytes) -> Result<ToMqtt, &'static str> {
        let (mut r, version) = Reader::new(entry)?;
        let route = r.u32()? as usize;
        let qos = match r.u8()? {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            2 => QoS::ExactlyOnce,
            _ => return Err("QoS out of range"),
        };
        let retain = match r.u8()? {
            0 => false,
            1 => true,
            _ => return Err("retain flag out of range"),
        };
        let topic = r.string()?;
        let properties = if version == VERSION_EXTRA {
            Some(Arc::new(r.properties()?))
        } else {
            None
        };
        Ok(ToMqtt {
            route,
            qos,
            retain,
            topic,
            payload: entry.slice(r.at..),
            properties,
        })
    }
}

impl ToBayeux {
    pub(crate) fn encode(&self) -> Bytes {
        let json = self.data.json();
        let mut out =
            BytesMut::with_capacity(13 + self.channel.len() + self.topic.len() + json.len());
        out.put_u8(if self.ext.is_some() {
            VERSION_EXTRA
        } else {
            VERSION
        });
        out.put_u32_le(route_u32(self.route));
        put_str(&mut out, &self.channel);
        put_str(&mut out, &self.topic);
        if let Some(ext) = &self.ext {
            put_str(&mut out, &Value::Object(ext.clone()).to_string());
        }
        out.put_slice(json.as_bytes());
        out.freeze()
    }

    pub(crate) fn decode(entry: &Bytes) -> Result<ToBayeux, &'static str> {
        let (mut r, version) = Reader::new(entry)?;
        let route = r.u32()? as usize;
        let channel = r.string()?;
        let topic = r.string()?;
        let ext = if version == VERSION_EXTRA {
            let text = r.string()?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(ext)) => Some(ext),
                _ => return Err("ext is not a JSON object"),
            }
        } else {
            None
        };
        let json = std::str::from_utf8(&entry[r.at..]).map_err(|_| "data is not UTF-8")?;
        let data = Data::from_json(json).map_err(|_| "data is not JSON")?;
        Ok(ToBayeux {
            route,
            channel,
            topic,
            data,
            ext,
        })
    }
}

fn route_u32(route: usize) -> u32 {
    u32::try_from(route).unwrap_or(u32::MAX)
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Topics and channels are far below 4 GiB (packet and body limits).
    out.put_u32_le(u32::try_from(s.len()).unwrap_or(u32::MAX));
    out.put_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader after the version byte, and the version.
    fn new(bytes: &'a [u8]) -> Result<(Self, u8), &'static str> {
        let mut r = Reader { bytes, at: 0 };
        match r.u8()? {
            version @ (VERSION | VERSION_EXTRA) => Ok((r, version)),
            _ => Err("unknown entry version"),
        }
    }

    fn properties(&mut self) -> Result<Properties, &'static str> {
        let has_content_type = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err("content type flag out of range"),
        };
        let content_type = self.string()?;
        let count = self.u32()? as usize;
        // Each property takes at least its two 4-byte lengths: a count beyond that is damage.
        if count > self.bytes.len().saturating_sub(self.at) / 8 {
            return Err("user property count out of range");
        }
        let mut user = Vec::with_capacity(count);
        for _ in 0..count {
            user.push((self.string()?, self.string()?));
        }
        Ok(Properties {
            content_type: has_content_type.then_some(content_type),
            user,
        })
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], &'static str> {
        let end = self.at.checked_add(n).ok_or("length overflow")?;
        let slice = self.bytes.get(self.at..end).ok_or("entry cut short")?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "name is not UTF-8")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_entries_round_trip_and_damaged_ones_are_errors() {
        let message = ToMqtt {
            route: 7,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "a/b".to_owned(),
            payload: Bytes::from_static(b"{\"id\":1}"),
            properties: None,
        };
        let entry = message.encode();
        assert_eq!(ToMqtt::decode(&entry), Ok(message));
        for cut in 0..entry.len() - 8 {
            assert!(ToMqtt::decode(&entry.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut bad = entry.to_vec();
        bad[0] = 9;
        assert_eq!(
            ToMqtt::decode(&Bytes::from(bad)),
            Err("unknown entry version")
        );
        let mut huge = entry.to_vec();
        huge[7..11].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(ToMqtt::decode(&Bytes::from(huge)).is_err());
    }

    #[test]
    fn packs_round_trip_and_damaged_ones_are_errors() {
        let messages = vec![
            Bytes::from_static(b"one"),
            Bytes::new(),
            Bytes::from_static(b"three"),
        ];
        let packed = pack(&messages);
        assert_eq!(unpack(&packed), Ok(messages));
        for cut in 0..packed.len() {
            assert!(unpack(&packed.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = packed.to_vec();
        longer.push(0);
        assert!(unpack(&Bytes::from(longer)).is_err());
        let mut huge = packed.to_vec();
        huge[1..5].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(&Bytes::from(huge)).is_err());
        assert_eq!(unpack(&pack(&[])), Ok(Vec::new()));
    }

    #[test]
    fn bayeux_entries_round_trip_and_damaged_ones_are_errors() {
        let message = ToBayeux {
            route: 2,
            channel: "/c/d".to_owned(),
            topic: "c/d".to_owned(),
            data: Data::from_json(r#"{"x": [1, 2]}"#).unwrap_or_else(|e| panic!("{e}")),
            ext: None,
        };
        let entry = message.encode();
        let back = ToBayeux::decode(&entry).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (
                back.route,
                back.channel.as_str(),
                back.topic.as_str(),
                back.data.json()
            ),
            (2, "/c/d", "c/d", r#"{"x": [1, 2]}"#)
        );
        for cut in 0..entry.len() {
            let _ = ToBayeux::decode(&entry.slice(..cut));
        }
        assert_eq!(
            ToBayeux::decode(&entry.slice(..entry.len() - 1)).err(),
            Some("data is not JSON")
        );
    }

    #[test]
    fn properties_and_ext_round_trip_in_the_extra_version() {
        let message = ToMqtt {
            route: 1,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "a/b".to_owned(),
            payload: Bytes::from_static(b"x"),
            properties: Some(Arc::new(Properties {
                content_type: Some("text/plain".into()),
                user: vec![
                    ("bayeux-channel".into(), "/a/b".into()),
                    ("k".into(), "".into()),
                ],
            })),
        };
        let entry = message.encode();
        assert_eq!(entry[0], VERSION_EXTRA);
        assert_eq!(ToMqtt::decode(&entry), Ok(message));
        for cut in 0..entry.len() - 1 {
            assert!(ToMqtt::decode(&entry.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut ext = Map::new();
        ext.insert("mqtt-topic".into(), Value::String("c/d".into()));
        let message = ToBayeux {
            route: 2,
            channel: "/c/d".to_owned(),
            topic: "c/d".to_owned(),
            data: Data::from_json("1").unwrap_or_else(|e| panic!("{e}")),
            ext: Some(ext.clone()),
        };
        let entry = message.encode();
        assert_eq!(entry[0], VERSION_EXTRA);
        let back = ToBayeux::decode(&entry).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((back.ext, back.data.json()), (Some(ext), "1"));
    }
}

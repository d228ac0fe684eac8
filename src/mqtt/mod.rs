//! The daemon's MQTT client: a reconnecting, at-least-once wrapper around rumqttc (MQTT 5 or
//! 3.1.1) that the rest of the daemon can use without knowing rumqttc's sharp edges.
//!
//! It owns the broker connection, the session, subscriptions, publish acknowledgements and
//! ordered manual acks. It knows nothing of the other side of the bridge, of config files or
//! of metrics.
//!
//! # Use
//!
//! [`start`] validates [`MqttOptions`], spawns the client task and returns a cloneable
//! [`MqttHandle`] plus a channel of [`MqttEvent`]s (lifecycle facts and incoming messages).
//! A publish's outcome comes as a future ([`MqttHandle::publish`],
//! [`MqttHandle::publish_queued`]) or, for a caller that publishes continuously, tagged on
//! one channel for many publishes ([`MqttHandle::publish_tagged`], [`outcome_channel`]).
//!
//! # Guarantees
//!
//! - **Publishing is at-least-once.** [`MqttHandle::publish`] resolves `Ok` when the broker
//!   acknowledged the message (QoS 1 PUBACK, QoS 2 PUBCOMP; QoS 0 once it was written). Until
//!   then the client keeps the message: after a reconnect it is sent again, with its packet id
//!   if the broker kept the session, or as a new publish if the session was lost. The broker
//!   (and subscribers) may therefore see a message twice; they never silently lose one the
//!   caller was told was acknowledged. Nothing survives the process: un-acknowledged messages
//!   die with it.
//! - **Incoming acks are released in receive order** (MQTT-4.6.0-2): [`MqttHandle::ack`] on
//!   message 2 before message 1 holds 2's PUBACK until 1 is acknowledged. A message not
//!   acknowledged before the connection drops is redelivered by the broker (if the session
//!   survives) and shows up again as a new [`IncomingMessage`].
//! - **Subscriptions survive session loss**: after a CONNACK without a session (and on the
//!   first connect) the client subscribes every [`SubscriptionSpec`] itself.
//! - **Reconnects back off** ([`crate::backoff`]) after every failure, reset once a
//!   connection has lasted `MqttOptions::stable_after` (a connection that drops soon after
//!   its CONNACK keeps the waits growing).
//!   When the broker refuses the credentials ([`ConnectionError::CredentialsRefused`]) the
//!   wait is the longest interval at once: retrying sooner cannot succeed.
//!
//! # Layout
//!
//! - `options`, `error`, `topic`, `tls`: settings, errors, topic rules (and the shared
//!   `TopicName`), rustls setup.
//! - `tracker/`: the bookkeeping, no IO: `publish` (publish ↔ packet id correlation and what
//!   is sent again after a reconnect), `acks` (ordered acks), `controls` (the subscription
//!   set, SUBACK/UNSUBACK).
//! - `engine/`: the two rumqttc event loops (v5, v3.1.1) behind one interface; `convert`
//!   translates their types.
//! - `driver`: the task that only polls rumqttc and routes what comes out.
//! - `client`: [`start`] and the [`MqttHandle`]; `outcome`: the tagged outcome channel of
//!   [`MqttHandle::publish_tagged`].

mod client;
mod driver;
mod engine;
mod error;
mod options;
mod outcome;
mod tls;
mod topic;
mod tracker;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

pub use client::{MqttHandle, Publish, PublishCompletion, start};
pub use error::{ConnectionError, MqttError};
pub use options::{MqttOptions, Protocol, TlsFiles, Will};
pub use outcome::{Outcome, OutcomeSender, Outcomes, outcome_channel};
pub use topic::{escape_forbidden, filter_matches, is_forbidden, validate_filter, validate_topic};

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QoS {
    /// QoS 0: fire and forget.
    AtMostOnce,
    /// QoS 1: acknowledged, may be duplicated.
    AtLeastOnce,
    /// QoS 2: acknowledged in two steps, not duplicated by the protocol itself.
    ExactlyOnce,
}

impl QoS {
    /// The level as a number (0, 1, 2).
    pub fn as_u8(self) -> u8 {
        match self {
            QoS::AtMostOnce => 0,
            QoS::AtLeastOnce => 1,
            QoS::ExactlyOnce => 2,
        }
    }
}

impl TryFrom<u8> for QoS {
    type Error = MqttError;

    fn try_from(value: u8) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(QoS::AtMostOnce),
            1 => Ok(QoS::AtLeastOnce),
            2 => Ok(QoS::ExactlyOnce),
            other => Err(MqttError::InvalidQoS(other)),
        }
    }
}

/// One subscription the client keeps in place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriptionSpec {
    /// Topic filter (see [`validate_filter`]).
    pub filter: String,
    /// Highest QoS wanted. QoS 2 is requested as QoS 1: rumqttc 0.25 forgets its QoS 2
    /// receive state on reconnect and would then drop the connection on the broker's PUBREL
    /// retransmission, in a loop. Manual acks give at-least-once either way.
    pub qos: QoS,
    /// MQTT 5: do not deliver our own publishes back to us (loop prevention). Ignored on
    /// MQTT 3.1.1, which has no such option.
    pub no_local: bool,
}

impl SubscriptionSpec {
    /// A subscription without `no_local`.
    pub fn new(filter: impl Into<String>, qos: QoS) -> Self {
        SubscriptionSpec {
            filter: filter.into(),
            qos,
            no_local: false,
        }
    }
}

/// What the client reports on the event channel, in the order it happened.
#[derive(Debug)]
pub enum MqttEvent {
    /// The broker accepted the connection. Without `session_present` (and on the first
    /// connect) the client subscribes every [`SubscriptionSpec`] again by itself.
    Connected {
        /// Whether the broker resumed the previous session.
        session_present: bool,
    },
    /// A connection attempt failed; the client sleeps `retry_in`, then tries again.
    ConnectFailed {
        /// Why the attempt failed. When the broker refused the credentials, `retry_in` is
        /// the longest backoff interval.
        error: ConnectionError,
        /// Consecutive failed attempts in this outage, from 1.
        attempt: u32,
        /// The wait before the next attempt.
        retry_in: Duration,
    },
    /// An established connection was lost (once per outage); reconnecting follows.
    Disconnected {
        /// Why it was lost.
        error: ConnectionError,
    },
    /// The broker confirmed a subscription.
    Subscribed {
        /// The filter.
        filter: String,
    },
    /// The broker refused a subscription (it stays in the set and is tried again after the
    /// next session loss).
    SubscribeFailed {
        /// The filter.
        filter: String,
        /// The broker's reason code.
        reason: String,
    },
    /// An incoming message. QoS 1/2 messages must be passed to [`MqttHandle::ack`].
    Message(IncomingMessage),
    /// An incoming message larger than [`MqttOptions::max_packet_size`] was acknowledged
    /// (QoS 1/2) and dropped; it is not delivered. Only on MQTT 3.1.1, which cannot tell the
    /// broker the limit (an MQTT 5 broker drops such messages itself). Refusing it instead
    /// would lose the connection, and a broker with the session would send it again after
    /// every reconnect.
    Oversized {
        /// The topic it was published to.
        topic: String,
        /// Its encoded PUBLISH packet size, in bytes.
        size: usize,
        /// `max_packet_size`.
        limit: usize,
    },
    /// Incoming messages were dropped: QoS 0 messages arriving while the event channel was
    /// full. `topic` is the last dropped message's topic; `reason` says how many.
    Dropped {
        /// Topic of the (last) dropped message.
        topic: String,
        /// How many messages were dropped.
        count: u64,
        /// Why, and how many.
        reason: String,
    },
}

/// MQTT 5 properties of a publish, outgoing or incoming. MQTT 3.1.1 has none: they are not
/// sent, and incoming messages have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// The content type (a MIME type such as `application/json`).
    pub content_type: Option<String>,
    /// User properties, in order (a name may repeat).
    pub user: Vec<(String, String)>,
}

impl Properties {
    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.user.is_empty()
    }

    /// Checks that every string is one an MQTT broker accepts (see [`escape_forbidden`] to
    /// make one so); the error names the property.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(content_type) = &self.content_type {
            topic::validate_string(content_type, "the content type")?;
        }
        for (name, value) in &self.user {
            topic::validate_string(name, &format!("the user property name {name:?}"))?;
            topic::validate_string(value, &format!("the user property {name:?}"))?;
        }
        Ok(())
    }

    /// The encoded length of these properties in a PUBLISH, without the length prefix
    /// (MQTT 5 §3.3.2.3: an identifier byte, then a two-byte length and the UTF-8 bytes of
    /// each string).
    pub(crate) fn encoded_len(&self) -> usize {
        let content_type = self.content_type.as_ref().map_or(0, |t| 3 + t.len());
        let user: usize = self.user.iter().map(|(k, v)| 5 + k.len() + v.len()).sum();
        content_type + user
    }
}

/// A message delivered by the broker.
pub struct IncomingMessage {
    /// The topic it was published to.
    pub topic: String,
    /// The message body.
    pub payload: Bytes,
    /// The QoS it was delivered with.
    pub qos: QoS,
    /// Whether it is a retained message (sent because we subscribed).
    pub retain: bool,
    /// Its MQTT 5 properties (content type, user properties); empty on MQTT 3.1.1.
    pub properties: Properties,
    /// Pass to [`MqttHandle::ack`] once the message is processed (QoS 1/2).
    pub token: AckToken,
}

impl fmt::Debug for IncomingMessage {
    // The payload and the user properties' values are left out: message contents are logged
    // at TRACE only, by whoever chooses to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IncomingMessage")
            .field("topic", &self.topic)
            .field("payload_len", &self.payload.len())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("content_type", &self.properties.content_type)
            .field("user_properties", &self.properties.user.len())
            .field("token", &self.token)
            .finish()
    }
}

/// Identifies one received message for [`MqttHandle::ack`]. Opaque: it carries the
/// connection it arrived on, its receive sequence number and packet id. A token from a
/// connection that has since been lost is ignored (the broker redelivers the message).
#[derive(Debug, PartialEq, Eq)]
pub struct AckToken {
    pub(crate) epoch: u64,
    pub(crate) seq: u64,
    pub(crate) pkid: u16,
    pub(crate) qos: QoS,
}

impl AckToken {
    /// Whether acknowledging does anything (false for QoS 0 messages).
    pub fn needs_ack(&self) -> bool {
        self.qos != QoS::AtMostOnce
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_converts_both_ways() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            assert_eq!(QoS::try_from(qos.as_u8()), Ok(qos));
        }
        assert_eq!(QoS::try_from(3), Err(MqttError::InvalidQoS(3)));
    }
}

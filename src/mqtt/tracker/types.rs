//! What the tracker exchanges with the driver, the engine and the handles.

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::mqtt::error::MqttError;
use crate::mqtt::outcome::TaggedReply;
use crate::mqtt::topic::TopicName;
use crate::mqtt::{QoS, SubscriptionSpec};

/// Where a waiting caller gets its result.
pub(in crate::mqtt) type Reply = oneshot::Sender<Result<(), MqttError>>;

/// Where a publish's outcome goes.
#[derive(Debug)]
pub(in crate::mqtt) enum PublishReply {
    /// To a caller awaiting this one publish ([`crate::mqtt::PublishCompletion`]).
    Once(Reply),
    /// Tagged, on a channel that many publishes share ([`crate::mqtt::Outcomes`]).
    Tagged(TaggedReply),
}

impl PublishReply {
    pub(in crate::mqtt) fn send(self, result: Result<(), MqttError>) {
        match self {
            // The caller may have stopped waiting; the outcome is then nobody's business.
            PublishReply::Once(reply) => {
                let _ = reply.send(result);
            }
            PublishReply::Tagged(reply) => reply.send(result),
        }
    }

    /// For a publish that was refused before it was queued: the caller learns it from the
    /// error it gets back, not as an outcome too.
    pub(in crate::mqtt) fn discard(self) {
        if let PublishReply::Tagged(reply) = self {
            reply.discard();
        }
    }
}

/// A message to publish.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::mqtt) struct OutMessage {
    pub topic: TopicName,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties (shared: the message is cloned for each send attempt).
    pub properties: Option<std::sync::Arc<crate::mqtt::Properties>>,
}

/// A request for rumqttc's request channel.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::mqtt) enum Request {
    Publish(OutMessage),
    Subscribe(Vec<SubscriptionSpec>),
    Unsubscribe(String),
    /// PUBACK (QoS 1) or PUBREC (QoS 2) for an incoming message of connection `epoch`.
    Ack {
        pkid: u16,
        qos: QoS,
        epoch: u64,
    },
    Disconnect,
}

/// A request placed directly in rumqttc's `pending` queue after a CONNACK.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::mqtt) enum Replay {
    /// Retransmission of an un-acked publish under its packet id (session resumed).
    Resend {
        pkid: u16,
        message: OutMessage,
    },
    /// Retransmission of a PUBREL (QoS 2 publish whose PUBREC arrived; session resumed).
    Release {
        pkid: u16,
    },
    /// A publish without packet id (rumqttc assigns one).
    Fresh(OutMessage),
    Subscribe(Vec<SubscriptionSpec>),
    Unsubscribe(String),
}

/// What the driver counted in rumqttc's `pending` queue when it took it out after a drop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(in crate::mqtt) struct Drained {
    /// Publishes without packet id: the oldest `publishes` unbound messages.
    pub publishes: usize,
    /// Subscribe and unsubscribe requests: the oldest unbound controls.
    pub controls: usize,
}

/// rumqttc's request channel, non-blocking.
pub(in crate::mqtt) trait Sink: Send {
    /// Sends if there is room now; `false` when the channel is full (or closed).
    fn try_send(&self, request: &Request) -> bool;
}

/// An event the tracker understands, already translated from rumqttc's v5 or v3.1.1 types.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::mqtt) enum Ev {
    ConnAck {
        session_present: bool,
        /// The broker's maximum packet size (MQTT 5 CONNACK property).
        max_packet_size: Option<u32>,
        /// The broker's receive maximum (MQTT 5 CONNACK property).
        receive_maximum: Option<u16>,
    },
    Publish {
        /// The encoded size of the PUBLISH packet, in bytes.
        size: usize,
        topic: String,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        pkid: u16,
        /// MQTT 5 properties (`None` on MQTT 3.1.1, or when it has none).
        properties: Option<crate::mqtt::Properties>,
    },
    /// `failure` is an MQTT 5 reason code other than success.
    PubAck {
        pkid: u16,
        failure: Option<String>,
    },
    PubRec {
        pkid: u16,
        failure: Option<String>,
    },
    PubComp {
        pkid: u16,
        failure: Option<String>,
    },
    SubAck {
        pkid: u16,
        codes: Vec<Result<(), String>>,
    },
    UnsubAck {
        pkid: u16,
        failure: Option<String>,
    },
    /// rumqttc took a publish off its queue and wrote it (`0` for QoS 0).
    OutPublish(u16),
    /// rumqttc took a publish off its queue but holds it: the packet id is still in use.
    OutAwaitAck(u16),
    OutSubscribe(u16),
    OutUnsubscribe(u16),
    OutDisconnect,
    /// Anything else (pings, acks we sent, ...).
    Other,
}

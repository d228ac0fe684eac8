//! Incoming QoS 1/2 messages: acks released in receive order (MQTT-4.6.0-2), per
//! connection epoch (see the parent module).

use tracing::debug;

use super::{Request, Tracker};
use crate::mqtt::{AckToken, IncomingMessage, MqttEvent, QoS};

/// An incoming QoS 1/2 message waiting for the application's ack.
pub(super) struct Received {
    pub(super) seq: u64,
    pub(super) pkid: u16,
    pub(super) qos: QoS,
    pub(super) acked: bool,
}

impl Tracker {
    /// Marks a received message as processed and releases the acks that are now in order.
    pub(in crate::mqtt) fn ack(&mut self, token: AckToken) {
        if token.qos == QoS::AtMostOnce || self.stopped {
            return;
        }
        if token.epoch != self.epoch {
            debug!(
                pkid = token.pkid,
                "Ack for a message of an earlier connection ignored; the broker redelivers it."
            );
            return;
        }
        let Ok(index) = self.received.binary_search_by_key(&token.seq, |r| r.seq) else {
            debug!(pkid = token.pkid, "Message acknowledged twice.");
            return;
        };
        self.received[index].acked = true;
        while let Some(first) = self.received.front() {
            if !first.acked {
                break;
            }
            let request = Request::Ack {
                pkid: first.pkid,
                qos: first.qos,
                epoch: self.epoch,
            };
            self.received.pop_front();
            self.send(request);
        }
    }

    /// The event for an incoming message of `size` bytes: the message, or, when it is over
    /// our `max_packet_size`, `Oversized` after acknowledging it.
    pub(super) fn deliver_or_drop_oversized(
        &mut self,
        message: IncomingMessage,
        size: usize,
    ) -> MqttEvent {
        if size <= self.own_max_packet {
            return MqttEvent::Message(message);
        }
        // Only on MQTT 3.1.1, where the broker cannot be told the limit (the engine lets
        // rumqttc read it; see there). Acknowledged, in receive order, so that the broker
        // does not send it again.
        let IncomingMessage {
            topic,
            payload,
            token,
            ..
        } = message;
        drop(payload);
        debug!(%topic, size, limit = self.own_max_packet, "Incoming message over max_packet_size acknowledged and dropped.");
        self.ack(token);
        MqttEvent::Oversized {
            topic,
            size,
            limit: self.own_max_packet,
        }
    }

    pub(super) fn receive(&mut self, qos: QoS, pkid: u16) -> AckToken {
        if qos == QoS::AtMostOnce {
            return AckToken {
                epoch: self.epoch,
                seq: 0,
                pkid: 0,
                qos,
            };
        }
        let seq = self.next_receive_seq;
        self.next_receive_seq += 1;
        self.received.push_back(Received {
            seq,
            pkid,
            qos,
            acked: false,
        });
        AckToken {
            epoch: self.epoch,
            seq,
            pkid,
            qos,
        }
    }
}

//! Outgoing publishes: queueing, binding to packet ids, completion, and what is sent again
//! after a reconnect (see the parent module).

use tracing::{error, trace};

use super::{OutMessage, PublishReply, Replay, Request, Tracker};
use crate::mqtt::QoS;
use crate::mqtt::error::MqttError;

/// A publish being tracked until the broker acknowledges it.
pub(super) struct Outgoing {
    pub(super) seq: u64,
    pub(super) message: OutMessage,
    /// Encoded packet size, checked again when a broker announces a smaller maximum.
    pub(super) size: usize,
    pub(super) reply: Option<PublishReply>,
}

impl Tracker {
    /// Queues a publish (the caller holds a publish permit, which this consumes).
    pub(in crate::mqtt) fn enqueue_publish(
        &mut self,
        message: OutMessage,
        size: usize,
        reply: PublishReply,
    ) -> Result<(), MqttError> {
        if self.closing || self.stopped {
            reply.discard();
            return Err(MqttError::Shutdown);
        }
        let seq = self.take_seq();
        self.unbound.push_back(Outgoing {
            seq,
            message: message.clone(),
            size,
            reply: Some(reply),
        });
        self.send(Request::Publish(message));
        Ok(())
    }

    /// With a session, un-acked publishes are resent under their packet ids (and PUBRELs);
    /// without, they go back to the front of `unbound` to be published again.
    pub(super) fn replay_in_flight(&mut self, session_present: bool, replays: &mut Vec<Replay>) {
        let limit = self.packet_limit();
        let mut in_flight: Vec<(u16, Outgoing, bool)> = self
            .awaiting
            .drain()
            .map(|(pkid, entry)| (pkid, entry, false))
            .chain(
                self.released
                    .drain()
                    .map(|(pkid, entry)| (pkid, entry, true)),
            )
            .collect();
        in_flight.sort_by_key(|(_, entry, _)| entry.seq);
        if !session_present {
            for (_, entry, _) in in_flight.into_iter().rev() {
                self.unbound.push_front(entry);
                self.held += 1;
            }
            return;
        }
        for (pkid, entry, released) in in_flight {
            if released {
                replays.push(Replay::Release { pkid });
                self.released.insert(pkid, entry);
            } else if entry.size > limit {
                self.fail_too_large(entry, limit);
            } else {
                replays.push(Replay::Resend {
                    pkid,
                    message: entry.message.clone(),
                });
                self.awaiting.insert(pkid, entry);
            }
        }
    }

    /// The held messages (outside rumqttc's channel), as new publishes.
    pub(super) fn replay_held(&mut self, replays: &mut Vec<Replay>) {
        let limit = self.packet_limit();
        let count = self.held.min(self.unbound.len());
        let held: Vec<Outgoing> = self.unbound.drain(..count).collect();
        let mut kept = Vec::with_capacity(held.len());
        for entry in held {
            if entry.size > limit {
                self.fail_too_large(entry, limit);
            } else {
                replays.push(Replay::Fresh(entry.message.clone()));
                kept.push(entry);
            }
        }
        self.held = kept.len();
        for entry in kept.into_iter().rev() {
            self.unbound.push_front(entry);
        }
    }

    /// Takes the oldest unbound publish: rumqttc just took it off its queue.
    pub(super) fn pop_unbound(&mut self) -> Option<Outgoing> {
        let Some(entry) = self.unbound.pop_front() else {
            error!("Internal error: rumqttc sent a publish that was not queued here.");
            return None;
        };
        if self.held > 0 {
            self.held -= 1;
        } else if self.in_channel > 0 {
            self.in_channel -= 1;
            self.permits.add_permits(1);
        } else {
            error!(topic = %entry.message.topic, "Internal error: a deferred publish was sent by rumqttc.");
        }
        Some(entry)
    }

    /// rumqttc sent a QoS 0 publish: it is done.
    pub(super) fn on_out_publish_qos0(&mut self) {
        if let Some(entry) = self.pop_unbound() {
            if entry.message.qos != QoS::AtMostOnce {
                error!(topic = %entry.message.topic, "Internal error: a QoS 0 send was matched to a QoS 1/2 publish.");
            }
            self.complete(entry, Ok(()));
        }
    }

    /// rumqttc took a publish whose next packet id, `pkid`, is still in flight (a collision).
    pub(super) fn on_await_ack(&mut self, pkid: u16) {
        // rumqttc holds this publish until `pkid` is acknowledged, then reports
        // `Outgoing::Publish(pkid)` for it. It holds only one: the driver feeds it
        // nothing more meanwhile, so a second one would be a bug.
        if let Some(entry) = self.pop_unbound()
            && let Some((_, lost)) = self.collided.replace((pkid, entry))
        {
            error!(topic = %lost.message.topic, "Internal error: a second packet id collision; the first publish fails.");
            self.complete(lost, Err(MqttError::Shutdown));
        }
    }

    pub(super) fn on_out_publish(&mut self, pkid: u16) {
        if matches!(&self.collided, Some((held, _)) if *held == pkid) {
            if let Some((_, entry)) = self.collided.take() {
                self.awaiting.insert(pkid, entry);
            }
        } else if self.awaiting.contains_key(&pkid) {
            trace!(pkid, "Publish sent again after reconnecting.");
        } else if let Some(entry) = self.pop_unbound()
            && let Some(previous) = self.awaiting.insert(pkid, entry)
        {
            // Cannot happen: rumqttc does not reuse a packet id before its ack.
            error!(pkid, "Internal error: packet id reused while in flight.");
            self.complete(previous, Err(MqttError::Shutdown));
        }
    }

    pub(super) fn finish_publish(&mut self, entry: Outgoing, failure: Option<String>) {
        let result = match failure {
            None => Ok(()),
            Some(reason) => Err(MqttError::Rejected {
                topic: entry.message.topic.to_string(),
                reason,
            }),
        };
        self.complete(entry, result);
    }

    fn fail_too_large(&mut self, entry: Outgoing, limit: usize) {
        let error = MqttError::PayloadTooLarge {
            topic: entry.message.topic.to_string(),
            size: entry.size,
            max: limit,
        };
        self.complete(entry, Err(error));
    }

    pub(super) fn complete(&mut self, mut entry: Outgoing, result: Result<(), MqttError>) {
        if let Some(reply) = entry.reply.take() {
            reply.send(result);
        }
        if self.outstanding() == 0 {
            self.idle.notify_waiters();
        }
    }
}

//! The bookkeeping of one client, shared by the handles and the driver task under one mutex.
//! No IO beyond non-blocking sends into rumqttc's request channel (through [`Sink`]) and
//! completing oneshot replies, so it never waits and never holds the lock across an `.await`.
//!
//! # Publish correlation
//!
//! rumqttc has no per-publish completion. It reports `Outgoing::Publish(pkid)` when it takes a
//! publish off its queue, and `PubAck`/`PubComp(pkid)` when the broker acknowledges it. Every
//! publish enters rumqttc through this tracker, in the order of `unbound`, so the oldest
//! unbound message is the one an `Outgoing::Publish` is about: it gets bound to that packet
//! id. An `Outgoing::Publish` for a packet id that is already bound is a retransmission.
//!
//! `unbound` is laid out as `[held][in channel][deferred]`:
//! - *held*: outside rumqttc's request channel: listed by [`Tracker::on_connack`] for the
//!   driver, which feeds them to rumqttc's `pending` queue, or taken back when the connection
//!   dropped;
//! - *in channel*: in rumqttc's bounded request channel (each holds a publish permit);
//! - *deferred*: waiting in `deferred` because the channel was full (also holds a permit).
//!
//! # After a reconnect
//!
//! When a connection drops, rumqttc moves everything it had not finished (un-acked publishes,
//! and whatever sat in its request channel) into its `pending` queue, and clears that queue if
//! the next CONNACK has no session. The driver therefore takes `pending` out on every drop
//! (only counting what was in it) and [`Tracker::on_connack`] builds the replay list itself
//! from what is tracked here: with a session, un-acked publishes again under their packet ids
//! (and PUBRELs); without one, every un-acked message as a new publish, after subscribing
//! everything again.
//!
//! # Incoming acks
//!
//! QoS 1/2 messages are remembered in receive order; [`Tracker::ack`] marks one and releases
//! PUBACK/PUBREC for the acknowledged prefix only (MQTT-4.6.0-2). A connection drop starts a
//! new epoch: acks for messages of an earlier connection are ignored, since their packet ids
//! mean nothing (or something else) on the new one.

mod acks;
mod controls;
mod publish;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};
use tracing::debug;

use super::error::MqttError;
use super::options::MQTT_MAX_PACKET;
use super::{IncomingMessage, MqttEvent, QoS, SubscriptionSpec};
use acks::Received;
use controls::Control;
use publish::Outgoing;
pub(super) use types::{Drained, Ev, OutMessage, PublishReply, Replay, Reply, Request, Sink};

/// See the module documentation.
pub(super) struct Tracker {
    sink: Box<dyn Sink>,
    /// Bounds publishes in rumqttc's channel (plus deferred ones); see `in_channel`.
    permits: Arc<Semaphore>,
    /// Woken whenever no publish is outstanding any more.
    idle: Arc<Notify>,
    connected: bool,
    closing: bool,
    stopped: bool,
    own_max_packet: usize,
    broker_max_packet: Option<usize>,
    next_seq: u64,

    unbound: VecDeque<Outgoing>,
    held: usize,
    in_channel: usize,
    awaiting: HashMap<u16, Outgoing>,
    released: HashMap<u16, Outgoing>,
    collided: Option<(u16, Outgoing)>,

    subscriptions: Vec<SubscriptionSpec>,
    controls: VecDeque<Control>,
    controls_held: usize,
    controls_bound: HashMap<u16, Control>,
    subscribe_waiters: HashMap<String, Vec<Reply>>,
    unsubscribe_waiters: HashMap<String, Vec<Reply>>,

    epoch: u64,
    next_receive_seq: u64,
    received: VecDeque<Received>,

    deferred: VecDeque<Request>,
}

impl Tracker {
    pub(super) fn new(
        sink: Box<dyn Sink>,
        permits: Arc<Semaphore>,
        idle: Arc<Notify>,
        subscriptions: Vec<SubscriptionSpec>,
        own_max_packet: usize,
    ) -> Self {
        let mut tracker = Tracker {
            sink,
            permits,
            idle,
            connected: false,
            closing: false,
            stopped: false,
            own_max_packet,
            broker_max_packet: None,
            next_seq: 0,
            unbound: VecDeque::new(),
            held: 0,
            in_channel: 0,
            awaiting: HashMap::new(),
            released: HashMap::new(),
            collided: None,
            subscriptions: Vec::new(),
            controls: VecDeque::new(),
            controls_held: 0,
            controls_bound: HashMap::new(),
            subscribe_waiters: HashMap::new(),
            unsubscribe_waiters: HashMap::new(),
            epoch: 0,
            next_receive_seq: 0,
            received: VecDeque::new(),
            deferred: VecDeque::new(),
        };
        for spec in subscriptions {
            tracker.upsert_subscription(spec);
        }
        tracker
    }

    /// Whether a CONNACK arrived and the connection has not dropped since.
    pub(super) fn is_connected(&self) -> bool {
        self.connected
    }

    /// Whether the client stopped (no operation can succeed any more).
    pub(super) fn is_stopped(&self) -> bool {
        self.stopped
    }

    /// Whether the broker may send messages that need our acknowledgement (a subscription at
    /// QoS 1 or 2): their PUBACK/PUBREC requests then share rumqttc's request channel with
    /// our publishes.
    pub(super) fn receives_acked(&self) -> bool {
        self.subscriptions.iter().any(|s| s.qos != QoS::AtMostOnce)
    }

    /// Refuses new publishes and subscriptions from now on (graceful disconnect).
    pub(super) fn close(&mut self) {
        self.closing = true;
    }

    /// The largest PUBLISH packet that may be sent now.
    pub(super) fn packet_limit(&self) -> usize {
        self.own_max_packet
            .min(self.broker_max_packet.unwrap_or(MQTT_MAX_PACKET))
    }

    /// Publishes handed in but not yet acknowledged.
    pub(super) fn outstanding(&self) -> usize {
        self.unbound.len()
            + self.awaiting.len()
            + self.released.len()
            + usize::from(self.collided.is_some())
    }

    /// Queues a DISCONNECT behind everything already queued.
    pub(super) fn request_disconnect(&mut self) {
        self.send(Request::Disconnect);
    }

    /// Applies one rumqttc event (not `ConnAck`, which is [`Tracker::on_connack`]); events for
    /// the application are appended to `out`.
    pub(super) fn on_event(&mut self, event: Ev, out: &mut Vec<MqttEvent>) {
        match event {
            Ev::OutPublish(0) => self.on_out_publish_qos0(),
            Ev::OutPublish(pkid) => self.on_out_publish(pkid),
            Ev::OutAwaitAck(pkid) => self.on_await_ack(pkid),
            Ev::PubAck { pkid, failure } => match self.awaiting.remove(&pkid) {
                Some(entry) => self.finish_publish(entry, failure),
                None => debug!(pkid, "PUBACK for no publish in flight."),
            },
            Ev::PubRec { pkid, failure } => match self.awaiting.remove(&pkid) {
                Some(entry) if failure.is_none() => {
                    self.released.insert(pkid, entry);
                }
                Some(entry) => self.finish_publish(entry, failure),
                None => debug!(pkid, "PUBREC for no publish in flight."),
            },
            Ev::PubComp { pkid, failure } => match self.released.remove(&pkid) {
                Some(entry) => self.finish_publish(entry, failure),
                None => debug!(pkid, "PUBCOMP for no publish in flight."),
            },
            Ev::OutSubscribe(pkid) | Ev::OutUnsubscribe(pkid) => {
                if let Some(control) = self.pop_control() {
                    self.controls_bound.insert(pkid, control);
                }
            }
            Ev::SubAck { pkid, codes } => self.on_suback(pkid, codes, out),
            Ev::UnsubAck { pkid, failure } => self.on_unsuback(pkid, failure),
            Ev::Publish {
                size,
                topic,
                payload,
                qos,
                retain,
                pkid,
                properties,
            } => {
                let token = self.receive(qos, pkid);
                let message = IncomingMessage {
                    topic,
                    payload,
                    qos,
                    retain,
                    properties: properties.unwrap_or_default(),
                    token,
                };
                out.push(self.deliver_or_drop_oversized(message, size));
            }
            Ev::ConnAck { .. } | Ev::OutDisconnect | Ev::Other => {}
        }
    }

    /// The connection dropped and the driver took rumqttc's `pending` queue out; `drained`
    /// is what it counted there.
    pub(super) fn on_connection_lost(&mut self, drained: Drained) {
        self.connected = false;
        // Publishes: whatever rumqttc drained from its channel is held from now on.
        let from_channel = drained
            .publishes
            .saturating_sub(self.held)
            .min(self.in_channel);
        self.in_channel -= from_channel;
        self.permits.add_permits(from_channel);
        self.held = self.held.max(drained.publishes);
        if let Some((_, entry)) = self.collided.take() {
            // Older than everything unbound; rumqttc's copy was discarded with the state.
            self.unbound.push_front(entry);
            self.held += 1;
        }
        self.held = self.held.min(self.unbound.len());
        self.controls_held = drained.controls.min(self.controls.len());
        // Acks: packet ids of this connection mean nothing on the next one.
        self.epoch += 1;
        self.received.clear();
        self.deferred
            .retain(|request| !matches!(request, Request::Ack { .. }));
    }

    /// A CONNACK arrived. Returns what the driver must place in rumqttc's `pending` queue:
    /// with a session, un-acked publishes under their packet ids; without one, a subscription
    /// of everything (also when `resubscribe` is set) and every un-acked message as a new
    /// publish. Messages too large for the broker's announced limit fail here.
    pub(super) fn on_connack(
        &mut self,
        session_present: bool,
        resubscribe: bool,
        broker_max_packet: Option<u32>,
    ) -> Vec<Replay> {
        self.connected = true;
        self.broker_max_packet = broker_max_packet.map(|m| m as usize);
        let mut replays = Vec::new();
        self.replay_in_flight(session_present, &mut replays);
        if resubscribe || !session_present {
            self.replace_controls_with_full_subscription(&mut replays);
        } else {
            self.replay_controls(&mut replays);
        }
        self.replay_held(&mut replays);
        replays
    }

    /// Sends what had to wait for room in rumqttc's channel, in order; stale acks are dropped.
    pub(super) fn flush_deferred(&mut self) {
        while let Some(request) = self.deferred.front() {
            if matches!(request, Request::Ack { epoch, .. } if *epoch != self.epoch) {
                self.deferred.pop_front();
                continue;
            }
            if !self.sink.try_send(request) {
                break;
            }
            if matches!(request, Request::Publish(_)) {
                self.in_channel += 1;
            }
            self.deferred.pop_front();
        }
    }

    /// The client stopped: everything still waiting fails with [`MqttError::Shutdown`].
    pub(super) fn stop(&mut self) {
        self.stopped = true;
        self.closing = true;
        self.connected = false;
        let entries: Vec<Outgoing> = self
            .unbound
            .drain(..)
            .chain(self.awaiting.drain().map(|(_, e)| e))
            .chain(self.released.drain().map(|(_, e)| e))
            .chain(self.collided.take().map(|(_, e)| e))
            .collect();
        for entry in entries {
            self.complete(entry, Err(MqttError::Shutdown));
        }
        for reply in self
            .subscribe_waiters
            .drain()
            .chain(self.unsubscribe_waiters.drain())
            .flat_map(|(_, replies)| replies)
        {
            let _ = reply.send(Err(MqttError::Shutdown));
        }
        self.deferred.clear();
        self.received.clear();
        self.permits.close();
        self.idle.notify_waiters();
    }

    pub(super) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Sends now if nothing is deferred and there is room; otherwise defers (keeping order).
    pub(super) fn send(&mut self, request: Request) {
        if self.deferred.is_empty() && self.sink.try_send(&request) {
            if matches!(request, Request::Publish(_)) {
                self.in_channel += 1;
            }
        } else {
            self.deferred.push_back(request);
        }
    }
}

//! Bayeux → MQTT: deliveries of each route's subscription become MQTT publishes.
//!
//! Each message takes a permit from the direction's semaphore before it is read, and holds it
//! until the broker has acknowledged the publish, so at most `queue_capacity` messages are in
//! flight or waiting for the broker. When they are all taken the loop stops reading, the Bayeux
//! client's subscription buffer fills, and the client stops polling the server: back-pressure,
//! not drops. Publishes are handed to the MQTT client in delivery order.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::stream::SelectAll;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{debug, trace, warn};

use super::checkpoint::Ticket;
use super::dead_letter::Undeliverable;
use super::mapping::Route;
use super::payload::{bayeux_to_mqtt_payload, echo_fingerprint, event_replay_id, mqtt_properties};
use super::shutdown::Signal;
use super::spooled::{Intake, OnDurable, ToMqtt};
use super::stats::Direction;
use super::{Shared, Slot, qos_of};
use crate::bayeux::{Message, Subscription};
use crate::mqtt::{MqttError, MqttHandle, Properties};
pub(crate) use settlement::{Pending, Settlement, reject_and_release};
use settlement::{redeliver_after_restart, release_ticket};

mod settlement;

/// Where taken messages go: straight to the broker, or with `[spool]` into the spool (its
/// delivery task publishes them, `super::spooled::b2m`).
struct Outputs {
    settlement: Settlement,
    intake: Option<Intake>,
}

/// A change to the set of routes the pipeline reads (live reload).
pub(super) enum Control {
    /// Start reading `subscription` for `route`, identified by `key`.
    Add {
        key: u64,
        route: Arc<Route>,
        subscription: Subscription,
    },
    /// Route `key` changed but reads the same Bayeux pattern: keep its subscription (nothing
    /// buffered is lost), forward by the new rule from now on.
    Replace { key: u64, route: Arc<Route> },
    /// Stop taking messages (a reload is replacing the MQTT client).
    Pause,
    /// Take messages again, publishing through the current MQTT client ([`Shared::mqtt`]).
    Resume,
    /// Stop reading route `key`. What its subscription still buffers is taken and counted as
    /// dropped (`route_removed`), then its stream ends.
    Remove { key: u64 },
}

type Deliveries = SelectAll<Reading>;

/// The routes being read, by key, and how to stop each one's stream.
#[derive(Default)]
struct Live {
    routes: HashMap<u64, Arc<Route>>,
    cancels: HashMap<u64, oneshot::Sender<()>>,
    /// Not taking messages while the MQTT client is replaced.
    paused: bool,
}

/// How long, after the drain deadline, received messages are still counted as dropped while
/// the Bayeux client winds down.
pub(super) const LEFTOVER_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How the pipeline is told to end.
pub(super) struct Stop {
    /// Soft: keep forwarding until every subscription has ended (the Bayeux client closes them
    /// after delivering what it holds), then stop.
    pub(super) draining: Signal,
    /// Hard: stop now (the drain deadline); whatever is still buffered is counted as dropped.
    pub(super) now: Signal,
}

/// Runs until the subscriptions end after `stop.draining`, or `stop.now`.
pub(super) async fn run(
    shared: Arc<Shared>,
    routes: Vec<(u64, Arc<Route>, Subscription)>,
    permits: Arc<Semaphore>,
    stop: Stop,
    control: mpsc::Receiver<Control>,
) {
    let mut pipeline = Pipeline::new(shared, routes, permits, stop, control);
    pipeline.take_until_stopped().await;
    pipeline.count_left_over().await;
    debug!("Bayeux → MQTT pipeline stopped taking messages.");
}

/// The running pipeline: what it reads, where it forwards to, and what stops it.
struct Pipeline {
    shared: Arc<Shared>,
    /// The pipeline's copy of the current MQTT client, which `shared` owns; taken again at
    /// each [`Control::Resume`] (a reload replaced it).
    mqtt: MqttHandle,
    deliveries: Deliveries,
    live: Live,
    out: Outputs,
    control: mpsc::Receiver<Control>,
    permits: Arc<Semaphore>,
    draining: Signal,
    stop: Signal,
}

impl Pipeline {
    fn new(
        shared: Arc<Shared>,
        routes: Vec<(u64, Arc<Route>, Subscription)>,
        permits: Arc<Semaphore>,
        stop: Stop,
        control: mpsc::Receiver<Control>,
    ) -> Pipeline {
        let out = Outputs {
            settlement: Settlement::start(Arc::clone(&shared)),
            intake: shared
                .spools
                .is_some()
                .then(|| Intake::start(Arc::clone(&shared), Direction::BayeuxToMqtt).0),
        };
        let mut pipeline = Pipeline {
            mqtt: shared.mqtt(),
            shared,
            deliveries: SelectAll::new(),
            live: Live::default(),
            out,
            control,
            permits,
            draining: stop.draining,
            stop: stop.now,
        };
        for (key, route, subscription) in routes {
            pipeline.add(key, route, subscription);
        }
        pipeline
    }

    /// Takes messages, each with a permit, and forwards them, until told to stop.
    async fn take_until_stopped(&mut self) {
        while let Some(permit) = self.next_permit().await {
            let Some((key, message)) = self.next_message().await else {
                break;
            };
            self.take(key, message, permit).await;
            self.take_waiting().await;
        }
    }

    /// Waits for a free permit (room in the queue), applying control changes meanwhile;
    /// `None` once the pipeline is to stop.
    async fn next_permit(&mut self) -> Option<OwnedSemaphorePermit> {
        loop {
            // All permits taken: the queue is full and the Bayeux client will stop polling.
            let full = self.permits.available_permits() == 0 && !self.live.paused;
            if full {
                self.shared.b2m_pressure.full();
            }
            let permit = tokio::select! {
                biased;
                () = self.stop.wait() => return None,
                () = self.draining.wait(), if self.deliveries.is_empty() => return None,
                Some(change) = self.control.recv() => {
                    self.apply(change);
                    continue;
                }
                permit = self.permits.clone().acquire_owned(), if !self.live.paused => match permit {
                    Ok(permit) => permit,
                    Err(_) => return None,
                },
            };
            if full {
                self.shared.b2m_pressure.relieved();
            }
            return Some(permit);
        }
    }

    /// Waits for the next message of any route, applying control changes meanwhile; `None`
    /// once the pipeline is to stop.
    async fn next_message(&mut self) -> Option<(u64, Message)> {
        loop {
            tokio::select! {
                biased;
                () = self.stop.wait() => return None,
                () = self.draining.wait(), if self.deliveries.is_empty() => return None,
                Some(change) = self.control.recv() => self.apply(change),
                // `None`: the last stream just ended; loop to re-check the conditions above.
                next = self.deliveries.next(), if !self.deliveries.is_empty() && !self.live.paused => if let Some(next) = next {
                    return Some(next);
                },
            }
        }
    }

    /// While messages are already waiting and permits are free, takes them without the
    /// selects of [`Pipeline::next_permit`] and [`Pipeline::next_message`] (setting up their
    /// futures costs more than the message), applying any control change first so that a
    /// pause or removal applies before the next message.
    async fn take_waiting(&mut self) {
        while !self.live.paused && !self.stop.is_set() {
            if let Ok(change) = self.control.try_recv() {
                self.apply(change);
                continue;
            }
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(Some((key, message))) = self.deliveries.next().now_or_never() else {
                break;
            };
            self.take(key, message, permit).await;
        }
    }

    /// Stopped at the deadline: what the subscriptions still hold, and what the Bayeux client
    /// hands over until it has stopped and closed them, will not be forwarded. Counts it.
    async fn count_left_over(&mut self) {
        let shared = &self.shared;
        let (deliveries, live) = (&mut self.deliveries, &self.live);
        let mut left = 0usize;
        let counting = async {
            while let Some((key, message)) = deliveries.next().await {
                left += 1;
                let route = live.routes.get(&key).map_or(0, |r| r.number());
                // Received from the server, never forwarded: in both totals.
                shared.stats.received(Direction::BayeuxToMqtt, route);
                shared
                    .stats
                    .dropped(Direction::BayeuxToMqtt, route, "shutdown");
                trace!(channel = %message.channel, "Not forwarded: shutting down.");
            }
        };
        let _ = tokio::time::timeout(LEFTOVER_WAIT, counting).await;
        if left > 0 {
            shared
                .b2m_abandoned
                .fetch_add(left as u64, std::sync::atomic::Ordering::Relaxed);
            warn!(
                left,
                "Drain deadline reached; Bayeux messages received but not forwarded are dropped."
            );
        }
    }

    /// Forwards `message` by its route, or counts it as dropped if a reload removed the route.
    async fn take(&self, key: u64, message: Message, permit: OwnedSemaphorePermit) {
        let shared = &self.shared;
        let Some(route) = self.live.routes.get(&key) else {
            // Left over from a route a reload removed.
            shared.stats.received(Direction::BayeuxToMqtt, 0);
            shared.drop_message(
                Direction::BayeuxToMqtt,
                "route_removed",
                0,
                &message.channel,
                "received before its route was removed by a reload",
            );
            return;
        };
        let slot = Slot::new(permit, &shared.b2m_in_flight);
        forward(shared, &self.mqtt, route, message, slot, &self.out).await;
    }

    /// Applies a control change; a resume also switches the pipeline to the current MQTT
    /// client.
    fn apply(&mut self, change: Control) {
        match change {
            Control::Add {
                key,
                route,
                subscription,
            } => self.add(key, route, subscription),
            Control::Replace { key, route } => {
                self.live.routes.insert(key, route);
            }
            Control::Pause => self.live.paused = true,
            Control::Resume => {
                self.live.paused = false;
                self.mqtt = self.shared.mqtt();
            }
            Control::Remove { key } => {
                self.live.routes.remove(&key);
                if let Some(cancel) = self.live.cancels.remove(&key) {
                    let _ = cancel.send(());
                }
            }
        }
    }

    /// Starts reading `subscription` for `route`, identified by `key`.
    fn add(&mut self, key: u64, route: Arc<Route>, subscription: Subscription) {
        let (cancel, cancelled) = oneshot::channel::<()>();
        self.live.cancels.insert(key, cancel);
        self.live.routes.insert(key, route);
        self.deliveries.push(Reading {
            key,
            subscription,
            cancelled: Some(cancelled),
        });
    }
}

/// A warning that can come once per message (rate-limited).
pub(crate) const REFUSED: &str = "MQTT refused the publish.";

/// One route's deliveries as a stream of `(key, message)`. Once cancelled it hands over what
/// is already buffered, then ends.
struct Reading {
    key: u64,
    subscription: Subscription,
    cancelled: Option<oneshot::Receiver<()>>,
}

impl Stream for Reading {
    type Item = (u64, Message);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let key = self.key;
        if let Some(cancelled) = self.cancelled.as_mut() {
            if Pin::new(cancelled).poll(cx).is_pending() {
                return self
                    .subscription
                    .poll_recv(cx)
                    .map(|message| message.map(|m| (key, m)));
            }
            self.cancelled = None;
        }
        Poll::Ready(self.subscription.try_recv().map(|m| (key, m)))
    }
}

/// Forwards `message` by `route`: into the spool with `[spool]`, else to the broker.
async fn forward(
    shared: &Arc<Shared>,
    mqtt: &MqttHandle,
    route: &Route,
    mut message: Message,
    slot: Slot,
    out: &Outputs,
) {
    if let Some(cluster) = &shared.cluster
        && !cluster.decide(route).await
    {
        // Another member forwards this route (or the role stayed unknown): left to it.
        shared.stats.metrics.cluster_not_forwarded.inc();
        return;
    }
    let Some(ticket) = admit(shared, route, &message) else {
        return;
    };
    // Not shaped: dead-lettered or dropped, and done for the replay checkpoint (so it is
    // not delivered again: it would fail the same way).
    let Shaped {
        topic,
        payload,
        properties,
    } = match shape(shared, route, &mut message) {
        Ok(shaped) => shaped,
        Err(letter) => return reject_and_release(shared, *letter, ticket, None),
    };
    if let Some(intake) = &out.intake {
        let shaped = Shaped {
            topic,
            payload,
            properties,
        };
        return spool(intake, route, &message.channel, shaped, slot, ticket);
    }
    record_mqtt_echo(shared, &topic, &payload);
    trace!(channel = %message.channel, %topic, payload = %String::from_utf8_lossy(&payload), "Forwarding to MQTT.");
    // Kept for a dead letter only when there can be one.
    let original = shared.dead_letters.enabled().then(|| payload.clone());
    let pending = Pending {
        slot,
        ticket,
        route: route.number(),
        key: None,
        original: original.clone(),
    };
    if let Err((e, pending)) = out
        .settlement
        .publish(mqtt, topic.clone(), payload, properties, route, pending)
        .await
    {
        let ticket = pending.and_then(|p| p.ticket);
        refused(shared, route, &message, topic, e, ticket, original);
    }
}

/// Hands a message from `channel`, shaped for `route`, to the spool; its slot and replay
/// ticket are released once it is durable there.
fn spool(
    intake: &Intake,
    route: &Route,
    channel: &str,
    shaped: Shaped,
    slot: Slot,
    ticket: Option<Ticket>,
) {
    let Shaped {
        topic,
        payload,
        properties,
    } = shaped;
    trace!(%channel, %topic, payload = %String::from_utf8_lossy(&payload), "Spooling for MQTT.");
    let entry = ToMqtt {
        route: route.number(),
        qos: qos_of(route.qos),
        retain: route.retain,
        topic,
        payload,
        properties,
    };
    let then = OnDurable::Bayeux { slot, ticket };
    intake.submit(vec![entry.encode()], then, route.number(), channel);
}

/// A message shaped for MQTT.
struct Shaped {
    topic: String,
    payload: bytes::Bytes,
    properties: Option<Arc<Properties>>,
}

/// The topic, payload and (with MQTT 5) properties of `message` on `route`, or why it has
/// none. An untranslatable channel is never sent: a topic with a control character would
/// make the broker close the connection, and at QoS ≥ 1 the same publish would follow every
/// reconnect.
fn shape(
    shared: &Shared,
    route: &Route,
    message: &mut Message,
) -> Result<Shaped, Box<Undeliverable>> {
    let topic = route.channel_to_topic(&message.channel).map_err(|e| {
        Box::new(Undeliverable::from_bayeux(
            message,
            route.number(),
            e.reason(),
            e.to_string(),
        ))
    })?;
    let replay_id = shared
        .properties_on(route)
        .then(|| event_replay_id(message));
    let payload = match bayeux_to_mqtt_payload(message, &route.payload) {
        Ok(payload) => payload,
        Err(e) => {
            let mut letter =
                Undeliverable::from_bayeux(message, route.number(), e.reason(), e.to_string());
            letter.topic = Some(topic);
            return Err(Box::new(letter));
        }
    };
    let mut properties =
        replay_id.map(|replay_id| Arc::new(mqtt_properties(message, replay_id, &payload)));
    if let Some(cluster) = &shared.cluster {
        // Other members must not forward it back to Bayeux.
        properties = Some(cluster.mark(properties));
    }
    Ok(Shaped {
        topic,
        payload: payload.bytes,
        properties,
    })
}

/// The MQTT client refused the publish at once: counted, and dead-lettered with `original`
/// (kept when there can be a dead letter) or dropped. Not when it was refused because the
/// client stopped: then it comes back after the restart (with replay), or is lost.
fn refused(
    shared: &Arc<Shared>,
    route: &Route,
    message: &Message,
    topic: String,
    e: MqttError,
    ticket: Option<Ticket>,
    original: Option<bytes::Bytes>,
) {
    if shared.log_limit.allow(REFUSED) {
        warn!(channel = %message.channel, error = %e, "{REFUSED}");
    }
    shared.count_publish_error("mqtt", e.reason());
    let redeliver = redeliver_after_restart(&e);
    let mut letter = Undeliverable::from_bayeux(message, route.number(), e.reason(), e.to_string());
    letter.topic = Some(topic);
    match original {
        Some(payload) if !redeliver => {
            letter.payload = payload;
            reject_and_release(shared, letter, ticket, None);
        }
        _ => {
            release_ticket(shared, ticket, redeliver);
            shared.drop_message(
                Direction::BayeuxToMqtt,
                letter.reason,
                letter.route,
                &message.channel,
                &letter.error,
            );
        }
    }
}

/// Counts `message` as received by `route` and opens its replay ticket; `None` (the ticket
/// abandoned: the checkpoint may pass it) when it is an own publish echoed by the Bayeux
/// server, which is not forwarded back.
fn admit(shared: &Shared, route: &Route, message: &Message) -> Option<Option<Ticket>> {
    shared
        .stats
        .received(Direction::BayeuxToMqtt, route.number());
    let ticket = shared
        .replay
        .as_ref()
        .and_then(|r| r.begin(message, &route.bayeux));
    if is_own_echo(shared, message) {
        shared.stats.echo(Direction::BayeuxToMqtt);
        release_ticket(shared, ticket, false);
        debug!(channel = %message.channel, route = route.number(), "Own publish echoed by the Bayeux server; not forwarded back.");
        return None;
    }
    Some(ticket)
}

/// Remembers an own publish to `topic` for echo suppression, when it can come back: only a
/// topic the bridge also subscribes to can (MQTT 3.1.1 has no No Local).
pub(crate) fn record_mqtt_echo(shared: &Shared, topic: &str, payload: &[u8]) {
    if let Some(mut echoes) = shared.mqtt_echoes()
        && shared.routes().mqtt_matches(topic).next().is_some()
    {
        echoes.record(topic, payload, Instant::now());
    }
}

/// Whether `message` is the Bayeux server's copy of one of the bridge's own publishes. The
/// data is serialised for the comparison only while some own publish can still come back.
fn is_own_echo(shared: &Shared, message: &Message) -> bool {
    let mut echoes = shared.bayeux_echoes();
    if echoes.is_empty() {
        return false;
    }
    let data = message
        .data
        .as_ref()
        .map_or_else(|| b"null".to_vec(), echo_fingerprint);
    echoes.take(&message.channel, &data, Instant::now())
}

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

use super::mapping::Route;
use super::payload::{bayeux_to_mqtt_payload, echo_fingerprint};
use super::shutdown::Signal;
use super::spooled::{Intake, OnDurable, ToMqtt};
use super::stats::Direction;
use super::{Shared, Slot, qos_of};
use crate::bayeux::{Message, Subscription};
use crate::mqtt::MqttHandle;
pub(crate) use settlement::{Pending, Settlement};
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
    mut control: mpsc::Receiver<Control>,
) {
    let Stop {
        mut draining,
        now: mut stop,
    } = stop;
    // The pipeline's copy of the current MQTT client, which `shared` owns; taken again at
    // each `Control::Resume` (a reload replaced it).
    let mut mqtt = shared.mqtt();
    let mut deliveries: Deliveries = SelectAll::new();
    let mut live = Live::default();
    let out = Outputs {
        settlement: Settlement::start(Arc::clone(&shared)),
        intake: shared
            .spools
            .is_some()
            .then(|| Intake::start(Arc::clone(&shared), Direction::BayeuxToMqtt).0),
    };
    for (key, route, subscription) in routes {
        add(&mut deliveries, &mut live, key, route, subscription);
    }
    'taking: loop {
        // All permits taken: the queue is full and the Bayeux client will stop polling.
        let full = permits.available_permits() == 0 && !live.paused;
        if full {
            shared.b2m_pressure.full();
        }
        let permit = tokio::select! {
            biased;
            () = stop.wait() => break,
            () = draining.wait(), if deliveries.is_empty() => break,
            Some(change) = control.recv() => {
                apply(&shared, &mut deliveries, &mut live, &mut mqtt, change);
                continue;
            }
            permit = permits.clone().acquire_owned(), if !live.paused => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        if full {
            shared.b2m_pressure.relieved();
        }
        let (key, message) = loop {
            tokio::select! {
                biased;
                () = stop.wait() => break 'taking,
                () = draining.wait(), if deliveries.is_empty() => break 'taking,
                Some(change) = control.recv() => {
                    apply(&shared, &mut deliveries, &mut live, &mut mqtt, change);
                }
                // `None`: the last stream just ended; loop to re-check the conditions above.
                next = deliveries.next(), if !deliveries.is_empty() && !live.paused => if let Some(next) = next {
                    break next;
                },
            }
        };
        take(&shared, &mqtt, &live, key, message, permit, &out).await;
        // While messages are already waiting and permits are free, take them without the
        // selects above (setting up their futures costs more than the message), stopping at
        // any control change so that a pause or removal applies before the next message.
        while !live.paused && !stop.is_set() {
            if let Ok(change) = control.try_recv() {
                apply(&shared, &mut deliveries, &mut live, &mut mqtt, change);
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                break;
            };
            let Some(Some((key, message))) = deliveries.next().now_or_never() else {
                break;
            };
            take(&shared, &mqtt, &live, key, message, permit, &out).await;
        }
    }
    // Stopped at the deadline: what the subscriptions still hold, and what the Bayeux client
    // hands over until it has stopped and closed them, will not be forwarded. Count it.
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
    debug!("Bayeux → MQTT pipeline stopped taking messages.");
}

/// A warning that can come once per message (rate-limited).
pub(crate) const REFUSED: &str = "MQTT refused the publish.";

/// Forwards `message` by its route, or counts it as dropped if a reload removed the route.
async fn take(
    shared: &Arc<Shared>,
    mqtt: &MqttHandle,
    live: &Live,
    key: u64,
    message: Message,
    permit: OwnedSemaphorePermit,
    out: &Outputs,
) {
    let Some(route) = live.routes.get(&key) else {
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
    forward(shared, mqtt, route, message, slot, out).await;
}

/// Applies a control change; a resume also switches the pipeline to the current MQTT client.
fn apply(
    shared: &Shared,
    deliveries: &mut Deliveries,
    live: &mut Live,
    mqtt: &mut MqttHandle,
    change: Control,
) {
    match change {
        Control::Add {
            key,
            route,
            subscription,
        } => add(deliveries, live, key, route, subscription),
        Control::Replace { key, route } => {
            live.routes.insert(key, route);
        }
        Control::Pause => live.paused = true,
        Control::Resume => {
            live.paused = false;
            *mqtt = shared.mqtt();
        }
        Control::Remove { key } => {
            live.routes.remove(&key);
            if let Some(cancel) = live.cancels.remove(&key) {
                let _ = cancel.send(());
            }
        }
    }
}

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

fn add(
    deliveries: &mut Deliveries,
    live: &mut Live,
    key: u64,
    route: Arc<Route>,
    subscription: Subscription,
) {
    let (cancel, cancelled) = oneshot::channel::<()>();
    live.cancels.insert(key, cancel);
    live.routes.insert(key, route);
    deliveries.push(Reading {
        key,
        subscription,
        cancelled: Some(cancelled),
    });
}

async fn forward(
    shared: &Arc<Shared>,
    mqtt: &MqttHandle,
    route: &Route,
    mut message: Message,
    slot: Slot,
    out: &Outputs,
) {
    shared
        .stats
        .received(Direction::BayeuxToMqtt, route.number());
    let ticket = shared
        .replay
        .as_ref()
        .and_then(|r| r.begin(&message, &route.bayeux));
    if is_own_echo(shared, &message) {
        shared.stats.echo(Direction::BayeuxToMqtt);
        release_ticket(shared, ticket, false);
        debug!(channel = %message.channel, route = route.number(), "Own publish echoed by the Bayeux server; not forwarded back.");
        return;
    }
    // An untranslatable channel is dropped, never sent, and done for the replay checkpoint
    // (so it is not delivered again): a topic with a control character would make the broker
    // close the connection, and at QoS ≥ 1 the same publish would follow every reconnect.
    let topic = match route.channel_to_topic(&message.channel) {
        Ok(topic) => topic,
        Err(e) => {
            release_ticket(shared, ticket, false);
            shared.drop_message(
                Direction::BayeuxToMqtt,
                e.reason(),
                route.number(),
                &message.channel,
                &e.to_string(),
            );
            return;
        }
    };
    let payload = bayeux_to_mqtt_payload(&mut message, route.payload);
    if let Some(intake) = &out.intake {
        trace!(channel = %message.channel, %topic, payload = %String::from_utf8_lossy(&payload), "Spooling for MQTT.");
        let entry = ToMqtt {
            route: route.number(),
            qos: qos_of(route.qos),
            retain: route.retain,
            topic,
            payload,
        };
        let then = OnDurable::Bayeux { slot, ticket };
        intake.submit(vec![entry.encode()], then, route.number(), &message.channel);
        return;
    }
    record_mqtt_echo(shared, &topic, &payload);
    trace!(channel = %message.channel, %topic, payload = %String::from_utf8_lossy(&payload), "Forwarding to MQTT.");
    let pending = Pending {
        slot,
        ticket,
        route: route.number(),
        key: None,
    };
    if let Err((e, pending)) = out
        .settlement
        .publish(mqtt, topic, payload, route, pending)
        .await
    {
        if shared.log_limit.allow(REFUSED) {
            warn!(channel = %message.channel, error = %e, "{REFUSED}");
        }
        shared.count_publish_error("mqtt", e.reason());
        let ticket = pending.and_then(|p| p.ticket);
        release_ticket(shared, ticket, redeliver_after_restart(&e));
        shared.drop_message(
            Direction::BayeuxToMqtt,
            e.reason(),
            route.number(),
            &message.channel,
            &e.to_string(),
        );
    }
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

//! MQTT → Bayeux: messages from the broker become Bayeux publishes; each is acknowledged to
//! the broker only after the Bayeux server answered `successful: true` (at-least-once).
//!
//! Acks are released in receive order by the MQTT client. A publish whose request failed
//! without an answer is sent again by the Bayeux client itself, ahead of later ones and after
//! a backoff (`ClientOptions::retry_publishes`, which the bridge turns on), so order holds; a
//! duplicate is possible if the first try reached the server. Other failures (the client was
//! replaced or stopped) are retried here with backoff. One the server refuses for good is
//! dropped, counted and acknowledged so it does not block the messages behind it. At shutdown, unanswered messages are left
//! unacknowledged for the broker to deliver again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, trace, warn};

use super::gaps::{self, Gap, GapKind};
use super::mapping::Routes;
use super::payload::{echo_fingerprint, mqtt_to_bayeux_data};
use super::settling::Settler;
use super::shutdown::Signal;
use super::spooled::{Intake, OnDurable, ToBayeux};
use super::stats::Direction;
use super::{Shared, Slot};
use crate::backoff::{Backoff, BackoffOptions};
use crate::bayeux::{Client, PublishError, Verdict};
use crate::mqtt::{IncomingMessage, MqttEvent, MqttHandle, QoS};

/// A new MQTT client and its events, after a reload changed `[mqtt]`. They come as a pair,
/// not as a change of [`Shared::mqtt`] alone: a message is acknowledged through the client
/// that delivered it.
pub(super) type Swap = (MqttHandle, mpsc::Receiver<MqttEvent>);

/// Most messages waiting for a slot before the loop stops reading events.
const PENDING_LIMIT: usize = 4096;

/// Runs until `stop` is set or the MQTT client has ended.
///
/// Lifecycle events (connected, subscribed, disconnected) are handled as they come, even when
/// every slot is taken (the Bayeux side is down); messages wait in `pending` for a slot. QoS 1
/// and 2 messages there are bounded by the broker's in-flight window (they are not
/// acknowledged yet); QoS 0 floods are bounded by [`PENDING_LIMIT`], beyond which the loop
/// stops reading until slots free up.
pub(super) async fn run(
    shared: Arc<Shared>,
    mqtt: MqttHandle,
    mut events: mpsc::Receiver<MqttEvent>,
    permits: Arc<Semaphore>,
    mut stop: Signal,
    mut swaps: mpsc::Receiver<Swap>,
) {
    let mut mqtt = mqtt;
    let out = Outputs {
        settler: Settler::start(),
        intake: shared
            .spools
            .is_some()
            .then(|| Intake::start(Arc::clone(&shared), Direction::MqttToBayeux).0),
    };
    let mut pending: VecDeque<IncomingMessage> = VecDeque::new();
    let mut open = true;
    let retries_stop = stop.clone();
    enum Wake {
        Stop,
        Slot(Option<OwnedSemaphorePermit>),
        Event(Option<MqttEvent>),
        Swap(Swap),
    }
    loop {
        // Messages wait and every slot is taken: the broker holds what comes next.
        if !pending.is_empty() && permits.available_permits() == 0 {
            shared.m2b_pressure.full();
        }
        let wake = tokio::select! {
            biased;
            () = stop.wait() => Wake::Stop,
            Some(swap) = swaps.recv() => Wake::Swap(swap),
            permit = permits.clone().acquire_owned(), if !pending.is_empty() => Wake::Slot(permit.ok()),
            event = events.recv(), if open && pending.len() < PENDING_LIMIT => Wake::Event(event),
            else => Wake::Stop,
        };
        match wake {
            Wake::Stop | Wake::Slot(None) => break,
            Wake::Slot(Some(permit)) => {
                if let Some(since) = shared.m2b_pressure.relieved_since() {
                    report_held_back(&shared, since);
                }
                let Some(message) = pending.pop_front() else {
                    continue;
                };
                let slot = Slot::new(permit, &shared.m2b_in_flight);
                let bayeux = shared.publisher();
                let stop = retries_stop.clone();
                forward(&shared, &bayeux, &mqtt, message, slot, stop, &out).await;
            }
            Wake::Event(None) => open = false,
            Wake::Event(Some(MqttEvent::Message(message))) => pending.push_back(message),
            Wake::Event(Some(event)) => lifecycle(&shared, &mqtt, event),
            Wake::Swap((handle, new_events)) => {
                // Messages of the old connection that were not forwarded yet are not
                // acknowledged: the broker delivers them again on the new one.
                debug!(
                    dropped_pending = pending.len(),
                    "Switching to the new MQTT client."
                );
                pending.clear();
                mqtt = handle;
                events = new_events;
                open = true;
            }
        }
    }
    // Messages still pending are not acknowledged: the broker delivers them again.
    shared
        .m2b_left_pending
        .store(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
    debug!(
        pending = pending.len(),
        "MQTT → Bayeux pipeline stopped taking messages."
    );
}

fn lifecycle(shared: &Arc<Shared>, mqtt: &MqttHandle, event: MqttEvent) {
    match event {
        MqttEvent::Connected { session_present } => {
            shared.readiness.mqtt_connected(session_present);
            announce_online(shared, mqtt);
            session_lost(shared, session_present);
        }
        MqttEvent::Disconnected { .. } => {
            shared.mqtt_session().lost_at = Some(SystemTime::now());
            shared.count_reconnect("disconnected");
            shared.readiness.mqtt_disconnected()
        }
        MqttEvent::ConnectFailed { error, .. } => {
            let refused = error.is_credentials_refused();
            shared.count_reconnect(if refused {
                "credentials_refused"
            } else {
                "connect_failed"
            });
            shared.readiness.mqtt_credentials_refused(refused);
        }
        MqttEvent::Subscribed { filter } => shared.readiness.mqtt_subscribed(&filter),
        // MQTT 3.1.1 only: the broker could not be told `mqtt.max_packet_size`. The client
        // acknowledged the message already (see `MqttEvent::Oversized`).
        MqttEvent::Oversized { topic, size, limit } => {
            let route = (shared.routes().mqtt_matches(&topic).next()).map_or(0, |r| r.number());
            shared.drop_message(
                Direction::MqttToBayeux,
                "payload_too_large",
                route,
                &topic,
                &format!(
                    "the MQTT message is {size} bytes, over mqtt.max_packet_size ({limit}); \
                     acknowledged to the broker and dropped"
                ),
            );
        }
        MqttEvent::Dropped {
            topic,
            count,
            reason,
        } => {
            let route = (shared.routes().mqtt_matches(&topic).next()).map_or(0, |r| r.number());
            shared
                .stats
                .dropped_many(Direction::MqttToBayeux, route, "receiver_full", count);
            if shared.log_limit.allow("Messages dropped.") {
                warn!(%topic, count, route, %reason, "Messages dropped.");
            }
        }
        _ => {}
    }
}

/// The MQTT filters the routes subscribe to, for gap reports.
fn subscribed_filters(shared: &Shared) -> Vec<String> {
    let mut filters: Vec<String> = shared
        .routes()
        .iter()
        .filter(|r| r.subscribes_mqtt())
        .map(|r| r.mqtt_filter.clone())
        .collect();
    filters.dedup();
    filters
}

/// Reports a `broker_queue_at_risk` gap when MQTT → Bayeux could not take messages since
/// `since` for at least [`gaps::AT_RISK_AFTER`]: the broker held them meanwhile, and drops
/// what goes over its per-client limit without telling the client.
fn report_held_back(shared: &Arc<Shared>, since: std::time::Instant) {
    if since.elapsed() < gaps::AT_RISK_AFTER {
        return;
    }
    let mut gap = Gap::new(GapKind::BrokerQueueAtRisk, Direction::MqttToBayeux);
    gap.names = subscribed_filters(shared);
    gap.since = Some(gaps::wall_clock(since));
    gap.extra.insert(
        "reason".to_owned(),
        "MQTT → Bayeux could not take messages (the Bayeux side did not accept them, or the \
         spool was full); the broker held them for the bridge, up to its per-client queue \
         limit (Mosquitto: max_queued_messages, 1000 by default), and drops the rest without \
         telling the client"
            .into(),
    );
    let shared = Arc::clone(shared);
    tokio::spawn(async move { gaps::report(&shared, &gap, gaps::REPORT_TIMEOUT).await });
}

/// Reports a `mqtt_session_lost` gap when the broker answered without the persistent session
/// the bridge asked for, after having had one: what it queued for the bridge meanwhile (QoS 1
/// and 2 messages on the subscribed filters) is gone.
fn session_lost(shared: &Arc<Shared>, session_present: bool) {
    let since = {
        let mut session = shared.mqtt_session();
        let had = std::mem::replace(&mut session.had_session, true);
        let since = session.lost_at.take();
        if session_present
            || !had
            || !shared
                .persistent_mqtt_session
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        since
    };
    let mut gap = Gap::new(GapKind::MqttSessionLost, Direction::MqttToBayeux);
    gap.names = subscribed_filters(shared);
    if gap.names.is_empty() {
        // Nothing subscribed: the broker queued nothing for the bridge.
        return;
    }
    gap.since = since;
    gap.extra.insert(
        "reason".to_owned(),
        "the broker answered CONNACK without the persistent session (clean_start = false) the \
         bridge had"
            .into(),
    );
    let shared = Arc::clone(shared);
    tokio::spawn(async move { gaps::report(&shared, &gap, gaps::REPORT_TIMEOUT).await });
}

/// Publishes the retained `online` status (the will says `offline`).
fn announce_online(shared: &Arc<Shared>, mqtt: &MqttHandle) {
    let mqtt = mqtt.clone();
    let topic = shared.status_topic();
    tokio::spawn(async move {
        match mqtt
            .publish(&topic, "online".into(), QoS::AtLeastOnce, true)
            .await
        {
            Ok(()) => info!(%topic, "Status online."),
            Err(e) => warn!(%topic, error = %e, "Could not publish the online status."),
        }
    });
}

/// Forwards `message` to the Bayeux channels its routes map it to (or with `[spool]` into
/// the spool); it is acknowledged to the broker once every target settled, or at once when
/// it is an own echo, nothing takes it, or it cannot be converted.
async fn forward(
    shared: &Arc<Shared>,
    bayeux: &Client,
    mqtt: &MqttHandle,
    message: IncomingMessage,
    permit: Slot,
    stop: Signal,
    out: &Outputs,
) {
    let now = Instant::now();
    if own_echo(shared, &message, now) {
        mqtt.ack(message.token);
        return;
    }
    let routes = shared.routes();
    let targets = targets(shared, &routes, &message.topic);
    let first_route = targets.first().map_or(0, |(route, _)| *route);
    shared.stats.received(Direction::MqttToBayeux, first_route);
    if targets.is_empty() {
        mqtt.ack(message.token);
        return;
    }
    let data = match mqtt_to_bayeux_data(&message.payload, shared.binary_payloads) {
        Ok(data) => data,
        Err(e) => {
            shared.drop_message(
                Direction::MqttToBayeux,
                "binary_payload",
                first_route,
                &message.topic,
                &e.to_string(),
            );
            mqtt.ack(message.token);
            return;
        }
    };
    if let Some(intake) = &out.intake {
        return spool(intake, mqtt, message, permit, targets, data);
    }
    trace!(topic = %message.topic, payload = %String::from_utf8_lossy(&message.payload), "Forwarding to Bayeux.");
    let Some(verdicts) = publish_all(shared, bayeux, &routes, targets, data, now).await else {
        return; // shutting down: the broker keeps the message
    };
    let shared = Arc::clone(shared);
    let mqtt = mqtt.clone();
    out.settler.settle(async move {
        let _permit = permit;
        let mut all_settled = true;
        for pending in verdicts {
            all_settled &= settle(&shared, pending, &message.payload, stop.clone()).await;
        }
        if all_settled {
            mqtt.ack(message.token);
        }
    });
}

/// Whether `message` is an own publish coming back from the broker (MQTT 3.1.1 only); it is
/// counted as such and not forwarded.
fn own_echo(shared: &Shared, message: &IncomingMessage, now: Instant) -> bool {
    let Some(mut echoes) = shared.mqtt_echoes() else {
        return false;
    };
    if !echoes.take(&message.topic, &message.payload, now) {
        return false;
    }
    shared.stats.received(Direction::MqttToBayeux, 0);
    shared.stats.echo(Direction::MqttToBayeux);
    debug!(topic = %message.topic, "Own publish came back from the broker; not forwarded back.");
    true
}

/// The routes and Bayeux channels `topic` goes to, each channel once. An untranslatable
/// topic is dropped for that route (and, when no route takes it, acknowledged by the caller
/// so that the broker does not deliver it again).
fn targets(shared: &Shared, routes: &Routes, topic: &str) -> Vec<(usize, String)> {
    let mut targets: Vec<(usize, String)> = Vec::new();
    for route in routes.mqtt_matches(topic) {
        match route.topic_to_channel(topic) {
            Ok(channel) if !targets.iter().any(|(_, c)| *c == channel) => {
                targets.push((route.number(), channel))
            }
            Ok(_) => {}
            Err(e) => shared.drop_message(
                Direction::MqttToBayeux,
                e.reason(),
                route.number(),
                topic,
                &e.to_string(),
            ),
        }
    }
    targets
}

/// Hands `message`, converted to `data`, for each of its `targets` to the spool; it is
/// acknowledged to the broker once durable there.
fn spool(
    intake: &Intake,
    mqtt: &MqttHandle,
    message: IncomingMessage,
    permit: Slot,
    targets: Vec<(usize, String)>,
    data: crate::bayeux::Data,
) {
    trace!(topic = %message.topic, payload = %String::from_utf8_lossy(&message.payload), "Spooling for Bayeux.");
    let first_route = targets.first().map_or(0, |(route, _)| *route);
    let entries = targets
        .into_iter()
        .map(|(route, channel)| {
            ToBayeux {
                route,
                channel,
                topic: message.topic.clone(),
                data: data.clone(),
            }
            .encode()
        })
        .collect();
    let then = OnDurable::Mqtt {
        slot: permit,
        token: message.token,
        mqtt: mqtt.clone(),
    };
    intake.submit(entries, then, first_route, &message.topic);
}

/// Publishes `data` on each target channel, recording it for the echo filter where it can
/// come back; returns the verdicts to wait for, or `None` when the Bayeux client is closed
/// (shutting down). A channel the client refuses at once is dropped and counted.
async fn publish_all(
    shared: &Shared,
    bayeux: &Client,
    routes: &Routes,
    targets: Vec<(usize, String)>,
    data: crate::bayeux::Data,
    now: Instant,
) -> Option<Vec<Pending>> {
    // The serialized data, for the echo filter: made only when a target channel is one the
    // bridge also reads (the only way it can come back).
    let mut fingerprint: Option<Vec<u8>> = None;
    let mut verdicts = Vec::with_capacity(targets.len());
    let last = targets.len().saturating_sub(1);
    let mut data = Some(data);
    for (i, (route, channel)) in targets.into_iter().enumerate() {
        let Some(value) = (if i == last { data.take() } else { data.clone() }) else {
            break;
        };
        record_echo(
            shared,
            routes,
            &channel,
            &value,
            Some(&mut fingerprint),
            now,
        );
        match bayeux.publish_queued(&channel, value, None).await {
            Ok(verdict) => verdicts.push(Pending {
                route,
                channel,
                verdict,
            }),
            Err(PublishError::Closed) => return None,
            Err(e) => shared.drop_message(
                Direction::MqttToBayeux,
                "invalid_channel",
                route,
                &channel,
                &e.to_string(),
            ),
        }
    }
    Some(verdicts)
}

/// Whether a publish on `channel` can come back from the Bayeux server: only on a channel
/// the bridge also reads.
pub(crate) fn echoes_back(routes: &Routes, channel: &str) -> bool {
    routes.any_bayeux_match(channel)
}

pub(crate) struct Pending {
    pub(crate) route: usize,
    pub(crate) channel: String,
    pub(crate) verdict: Verdict,
}

/// Where taken messages go: straight to the Bayeux server, or with `[spool]` into the spool
/// (its delivery task publishes them, `super::spooled::m2b`).
struct Outputs {
    settler: Settler,
    intake: Option<Intake>,
}

/// Waits for the verdict, retrying failed requests; returns whether the message may be
/// acknowledged (accepted, or refused for good and counted as dropped). A retry makes the
/// Bayeux data from the MQTT `payload` again, so that no copy is kept for the common case.
pub(crate) async fn settle(
    shared: &Shared,
    pending: Pending,
    payload: &[u8],
    mut stop: Signal,
) -> bool {
    let Pending {
        route,
        channel,
        verdict,
    } = pending;
    let mut backoff = Backoff::new(BackoffOptions {
        max: Duration::from_secs(30),
        ..BackoffOptions::default()
    });
    let mut result = verdict.await;
    loop {
        let e = match result {
            Ok(_) => {
                shared.stats.forwarded(Direction::MqttToBayeux, route);
                return true;
            }
            Err(e) => e,
        };
        if dropped_for_good(shared, route, &channel, &e) {
            return true;
        }
        // Shutting down: leave it to the broker. Otherwise the client was replaced by a
        // reload (new [bayeux] settings): publish again through the current one.
        if matches!(e, PublishError::Closed) && stop.is_set() {
            return false;
        }
        shared.count_publish_error("bayeux", "transport");
        let wait = backoff.next_delay();
        if shared.log_limit.allow("Bayeux publish failed; retrying.") {
            warn!(%channel, error = %e, ?wait, "Bayeux publish failed; retrying.");
        }
        tokio::select! {
            () = stop.wait() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        // Made from the same payload the first time, so this does not fail; if it did, the
        // message is dropped as it would have been then.
        let Some(data) = retry_data(shared, route, &channel, payload) else {
            return true;
        };
        result = shared.publisher().publish(&channel, data).await;
    }
}

/// Drops and counts a message whose publish failed for good: the server refused it, its
/// channel is invalid, or it is over `bayeux.max_request_bytes` (it can never be sent).
/// `false` for a failure worth retrying (closed client, transport, full queue).
fn dropped_for_good(shared: &Shared, route: usize, channel: &str, error: &PublishError) -> bool {
    let (reason, detail) = match error {
        PublishError::Refused(refusal) => {
            shared.count_publish_error("bayeux", "refused");
            ("bayeux_refused", refusal.raw.clone())
        }
        PublishError::InvalidChannel(e) => ("invalid_channel", e.to_string()),
        PublishError::TooLarge { .. } => ("payload_too_large", error.to_string()),
        PublishError::Closed | PublishError::Transport(_) | PublishError::QueueFull(_) => {
            return false;
        }
    };
    shared.drop_message(Direction::MqttToBayeux, reason, route, channel, &detail);
    true
}

/// The Bayeux data of a retry of `payload` on `channel`, made again from the MQTT payload and
/// recorded for the echo filter as the first try was; `None` (counted as dropped) if it
/// cannot be made.
fn retry_data(
    shared: &Shared,
    route: usize,
    channel: &str,
    payload: &[u8],
) -> Option<crate::bayeux::Data> {
    let data = match mqtt_to_bayeux_data(payload, shared.binary_payloads) {
        Ok(data) => data,
        Err(e) => {
            shared.drop_message(
                Direction::MqttToBayeux,
                "binary_payload",
                route,
                channel,
                &e.to_string(),
            );
            return None;
        }
    };
    record_echo(
        shared,
        &shared.routes(),
        channel,
        &data,
        None,
        Instant::now(),
    );
    Some(data)
}

/// Records a publish on `channel` for the echo filter when it can come back (the bridge also
/// reads `channel`); `fingerprint` keeps the serialized data for the other targets of the
/// same message.
pub(crate) fn record_echo(
    shared: &Shared,
    routes: &Routes,
    channel: &str,
    data: &crate::bayeux::Data,
    fingerprint: Option<&mut Option<Vec<u8>>>,
    now: Instant,
) {
    if !echoes_back(routes, channel) {
        return;
    }
    let mut own = None;
    let fingerprint = fingerprint
        .unwrap_or(&mut own)
        .get_or_insert_with(|| echo_fingerprint(data));
    shared.bayeux_echoes().record(channel, fingerprint, now);
}

//! MQTT → Bayeux: messages from the broker become Bayeux publishes; each is acknowledged to
//! the broker only after the Bayeux server answered `successful: true` (at-least-once).
//!
//! Acks are released in receive order by the MQTT client. A publish whose request failed
//! without an answer is sent again by the Bayeux client itself, ahead of later ones and after
//! a backoff (`ClientOptions::retry_publishes`, which the bridge turns on), so order holds; a
//! duplicate is possible if the first try reached the server. Other failures (the client was
//! replaced or stopped) are retried with backoff by the settlement task
//! ([`settlement`]), which reads every verdict from one tagged channel. One the server
//! refuses for good is dropped, counted and acknowledged so it does not block the messages
//! behind it. At shutdown, unanswered messages are left unacknowledged for the broker to
//! deliver again.

mod settlement;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{debug, info, trace, warn};

use super::cluster;
use super::dead_letter::Undeliverable;
use super::gaps::{self, Gap, GapKind};
use super::mapping::Routes;
use super::payload::{echo_fingerprint, mqtt_ext, mqtt_to_bayeux_data};
use super::shutdown::Signal;
use super::spooled::{Intake, OnDurable, ToBayeux};
use super::stats::Direction;
use super::{Shared, Slot};
use crate::mqtt::{AckToken, ConnectionError, IncomingMessage, MqttEvent, MqttHandle, QoS};
pub(crate) use settlement::{Destination, Held, Settlement, Source};

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
    events: mpsc::Receiver<MqttEvent>,
    permits: Arc<Semaphore>,
    mut stop: Signal,
    mut swaps: mpsc::Receiver<Swap>,
) {
    let out = Outputs::start(&shared, stop.clone());
    let mut input = Input {
        mqtt,
        events,
        open: true,
        pending: VecDeque::new(),
    };
    loop {
        match next(&shared, &permits, &mut input, &mut stop, &mut swaps).await {
            Wake::Stop | Wake::Slot(None) => break,
            Wake::Slot(Some(permit)) => take(&shared, &mut input, permit, &out).await,
            Wake::Event(None) => input.open = false,
            Wake::Event(Some(MqttEvent::Message(message)))
                if shared
                    .cluster
                    .as_ref()
                    .is_some_and(|c| c.is_member_topic(&message.topic)) =>
            {
                cluster::on_record(&shared, &input.mqtt, message)
            }
            Wake::Event(Some(MqttEvent::Message(message))) => input.pending.push_back(message),
            Wake::Event(Some(event)) => lifecycle(&shared, &input.mqtt, event),
            Wake::Swap(swap) => input.swap(swap),
        }
    }
    // Messages still pending are not acknowledged: the broker delivers them again.
    let left = input.pending.len();
    shared
        .m2b_left_pending
        .store(left as u64, std::sync::atomic::Ordering::Relaxed);
    debug!(
        pending = left,
        "MQTT → Bayeux pipeline stopped taking messages."
    );
}

/// Where the pipeline's messages come from: the MQTT client that delivered them, its events,
/// and the messages received and waiting for a slot.
struct Input {
    mqtt: MqttHandle,
    events: mpsc::Receiver<MqttEvent>,
    /// Whether `events` may still bring something.
    open: bool,
    pending: VecDeque<IncomingMessage>,
}

impl Input {
    /// Switches to the new MQTT client of a reload.
    fn swap(&mut self, (mqtt, events): Swap) {
        // Messages of the old connection that were not forwarded yet are not acknowledged:
        // the broker delivers them again on the new one.
        debug!(
            dropped_pending = self.pending.len(),
            "Switching to the new MQTT client."
        );
        self.pending.clear();
        self.mqtt = mqtt;
        self.events = events;
        self.open = true;
    }
}

enum Wake {
    Stop,
    Slot(Option<OwnedSemaphorePermit>),
    Event(Option<MqttEvent>),
    Swap(Swap),
}

/// Waits for what comes next: the stop, a reload's new client, a slot for the first pending
/// message, or an event (while fewer than [`PENDING_LIMIT`] messages wait).
async fn next(
    shared: &Shared,
    permits: &Arc<Semaphore>,
    input: &mut Input,
    stop: &mut Signal,
    swaps: &mut mpsc::Receiver<Swap>,
) -> Wake {
    let waiting = !input.pending.is_empty();
    // Messages wait and every slot is taken: the broker holds what comes next.
    if waiting && permits.available_permits() == 0 {
        shared.m2b_pressure.full();
    }
    let reading = input.open && input.pending.len() < PENDING_LIMIT;
    tokio::select! {
        biased;
        () = stop.wait() => Wake::Stop,
        Some(swap) = swaps.recv() => Wake::Swap(swap),
        permit = permits.clone().acquire_owned(), if waiting => Wake::Slot(permit.ok()),
        event = input.events.recv(), if reading => Wake::Event(event),
        else => Wake::Stop,
    }
}

/// Takes the first pending message into the slot of `permit` and forwards it.
async fn take(
    shared: &Arc<Shared>,
    input: &mut Input,
    permit: OwnedSemaphorePermit,
    out: &Outputs,
) {
    if let Some(since) = shared.m2b_pressure.relieved_since() {
        report_held_back(shared, since);
    }
    let Some(message) = input.pending.pop_front() else {
        return;
    };
    let slot = Slot::new(permit, &shared.m2b_in_flight);
    forward(shared, &input.mqtt, message, slot, out).await;
}

fn lifecycle(shared: &Arc<Shared>, mqtt: &MqttHandle, event: MqttEvent) {
    match event {
        MqttEvent::Connected { session_present } => {
            shared.readiness.mqtt_connected(session_present);
            match shared.cluster {
                Some(_) => cluster::connected(shared, mqtt, session_present),
                None => announce_online(shared, mqtt),
            }
            session_lost(shared, session_present);
        }
        MqttEvent::Disconnected { .. } => {
            shared.mqtt_session().lost_at = Some(SystemTime::now());
            shared.count_reconnect("disconnected");
            cluster::disconnected(shared, mqtt);
            shared.readiness.mqtt_disconnected()
        }
        MqttEvent::ConnectFailed { error, .. } => connect_failed(shared, &error),
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

/// A connect attempt failed: counted as a reconnect by its cause, and readiness told whether
/// the broker refused our credentials (reported apart from a broker that is down).
fn connect_failed(shared: &Shared, error: &ConnectionError) {
    let refused = error.is_credentials_refused();
    shared.count_reconnect(if refused {
        "credentials_refused"
    } else {
        "connect_failed"
    });
    shared.readiness.mqtt_credentials_refused(refused);
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

/// Whether a member of this bridge's `[cluster]` group published `message` (its user
/// property says so): not forwarded back to Bayeux. No Local cannot do this: MQTT 5 forbids
/// it on shared subscriptions, and the publisher may be another member.
fn from_own_group(shared: &Shared, message: &IncomingMessage) -> bool {
    let own = (shared.cluster.as_ref()).is_some_and(|c| c.published_by_group(&message.properties));
    if own {
        shared.stats.echo(Direction::MqttToBayeux);
        debug!(topic = %message.topic, "Published by a member of the cluster group; not forwarded back.");
    }
    own
}

/// Publishes the retained `online` status (the will says `offline`); at most one at a time
/// (see [`super::shared::Announcing`]).
fn announce_online(shared: &Arc<Shared>, mqtt: &MqttHandle) {
    if !shared.announcing().begin() {
        debug!("Status online still on its way; announced again once it is done.");
        return;
    }
    let shared = Arc::clone(shared);
    let mut mqtt = mqtt.clone();
    tokio::spawn(async move {
        loop {
            let topic = shared.status_topic();
            match mqtt
                .publish(&topic, "online".into(), QoS::AtLeastOnce, true)
                .await
            {
                Ok(()) => info!(%topic, "Status online."),
                Err(e) => warn!(%topic, error = %e, "Could not publish the online status."),
            }
            if !shared.announcing().end() {
                return;
            }
            mqtt = shared.mqtt();
        }
    });
}

/// Forwards `message` to the Bayeux channels its routes map it to (or with `[spool]` into
/// the spool); it is acknowledged to the broker once every target settled, or at once when
/// it is an own echo, nothing takes it, or it cannot be converted.
async fn forward(
    shared: &Arc<Shared>,
    mqtt: &MqttHandle,
    message: IncomingMessage,
    slot: Slot,
    out: &Outputs,
) {
    if own_echo(shared, &message, Instant::now()) || from_own_group(shared, &message) {
        mqtt.ack(message.token);
        return;
    }
    let (targets, letters) = targets(&shared.routes(), &message);
    let first_route = targets.first().map_or(0, |t| t.route);
    shared.stats.received(Direction::MqttToBayeux, first_route);
    // A message nothing takes is acknowledged once its dead letters (if any) are done.
    if targets.is_empty() {
        return reject_all(shared, letters, ack_later(mqtt, message.token));
    }
    // Other routes take it: it is acknowledged when they settled.
    reject_all(shared, letters, || {});
    let data = match mqtt_to_bayeux_data(&message.payload, shared.binary_payloads) {
        Ok(data) => data,
        Err(e) => {
            let letter = Undeliverable::from_mqtt(
                &message.topic,
                message.payload.clone(),
                first_route,
                "binary_payload",
                e.to_string(),
            );
            return shared.reject_then(letter, ack_later(mqtt, message.token));
        }
    };
    match out {
        Outputs::Spool(intake) => spool(intake, mqtt, message, slot, targets, data),
        Outputs::Bayeux(settlement) => {
            trace!(topic = %message.topic, payload = %String::from_utf8_lossy(&message.payload), "Forwarding to Bayeux.");
            let IncomingMessage { payload, token, .. } = message;
            let source = Source::Mqtt {
                mqtt: mqtt.clone(),
                token,
            };
            // A closed client is the settlement's to judge: at shutdown the broker keeps the
            // message; a client a reload replaced is tried again through the new one.
            let held = Held { slot, source };
            settlement
                .publish(shared, held, payload, &targets, data)
                .await;
        }
    }
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

/// The routes and Bayeux channels `message` goes to, each channel once, with the `ext` of
/// its route; and for each route that cannot translate its topic, what to dead-letter (the
/// caller does, and acknowledges the message once that is done when no route takes it, so
/// that the broker does not deliver it again).
fn targets(routes: &Routes, message: &IncomingMessage) -> (Vec<Destination>, Vec<Undeliverable>) {
    let topic = message.topic.as_str();
    let mut targets: Vec<Destination> = Vec::new();
    let mut letters = Vec::new();
    for route in routes.mqtt_matches(topic) {
        match route.topic_to_channel(topic) {
            Ok(channel) if !targets.iter().any(|t| t.channel == channel) => {
                targets.push(Destination {
                    route: route.number(),
                    channel,
                    ext: route
                        .ext_properties
                        .then(|| mqtt_ext(topic, &message.properties)),
                })
            }
            Ok(_) => {}
            Err(e) => letters.push(Undeliverable::from_mqtt(
                topic,
                message.payload.clone(),
                route.number(),
                e.reason(),
                e.to_string(),
            )),
        }
    }
    (targets, letters)
}

/// Acknowledges `token` through `mqtt` when called.
fn ack_later(mqtt: &MqttHandle, token: AckToken) -> impl FnOnce() + Send + 'static {
    let mqtt = mqtt.clone();
    move || mqtt.ack(token)
}

/// Dead-letters (or drops) every one of `letters`; `then` runs once all are done, at once
/// when there is none.
fn reject_all(shared: &Shared, letters: Vec<Undeliverable>, then: impl FnOnce() + Send + 'static) {
    if letters.is_empty() {
        return then();
    }
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(letters.len()));
    let then = Arc::new(std::sync::Mutex::new(Some(then)));
    for letter in letters {
        let (left, then) = (Arc::clone(&left), Arc::clone(&then));
        shared.reject_then(letter, move || {
            if left.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                let then = then.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(then) = then {
                    then();
                }
            }
        });
    }
}

/// Hands `message`, converted to `data`, for each of its `targets` to the spool; it is
/// acknowledged to the broker once durable there.
fn spool(
    intake: &Intake,
    mqtt: &MqttHandle,
    message: IncomingMessage,
    permit: Slot,
    targets: Vec<Destination>,
    data: crate::bayeux::Data,
) {
    trace!(topic = %message.topic, payload = %String::from_utf8_lossy(&message.payload), "Spooling for Bayeux.");
    let first_route = targets.first().map_or(0, |t| t.route);
    let entries = targets
        .into_iter()
        .map(|target| {
            ToBayeux {
                route: target.route,
                channel: target.channel,
                topic: message.topic.clone(),
                data: data.clone(),
                ext: target.ext,
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

/// Whether a publish on `channel` can come back from the Bayeux server: only on a channel
/// the bridge also reads.
pub(crate) fn echoes_back(routes: &Routes, channel: &str) -> bool {
    routes.any_bayeux_match(channel)
}

/// Where taken messages go: to the Bayeux server, settled on the settlement task, or with
/// `[spool]` into the spool (its delivery task publishes them, `super::spooled::m2b`).
enum Outputs {
    Bayeux(Settlement),
    Spool(Intake),
}

impl Outputs {
    /// The outputs of a pipeline that stops at `stop`.
    fn start(shared: &Arc<Shared>, stop: Signal) -> Outputs {
        match shared.spools {
            Some(_) => Outputs::Spool(Intake::start(Arc::clone(shared), Direction::MqttToBayeux).0),
            None => Outputs::Bayeux(Settlement::start(Arc::clone(shared), stop)),
        }
    }
}

/// Records a publish on `channel` for the echo filter when it can come back (the bridge also
/// reads `channel`); `fingerprint` keeps the serialized data for the other targets of the
/// same message.
fn record_echo(
    shared: &Shared,
    channel: &str,
    data: &crate::bayeux::Data,
    fingerprint: &mut Option<Vec<u8>>,
) {
    if !echoes_back(&shared.routes(), channel) {
        return;
    }
    let fingerprint = fingerprint.get_or_insert_with(|| echo_fingerprint(data));
    shared
        .bayeux_echoes()
        .record(channel, fingerprint, Instant::now());
}

//! Bayeux → MQTT publish outcomes: what each publish in flight holds (its queue slot, its
//! checkpoint ticket) and how its outcome is recorded, on a task of its own.

use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{Instrument, error};

use crate::bridge::checkpoint::Ticket;
use crate::bridge::dead_letter::Undeliverable;
use crate::bridge::ledger::Ledger;
use crate::bridge::mapping::Route;
use crate::bridge::spooled::Key;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot, qos_of};
use crate::mqtt::{
    MqttError, MqttHandle, Outcome, OutcomeSender, Properties, Publish, outcome_channel,
};

/// What a publish in flight holds until its outcome is recorded: its queue slot (released
/// only then, so a drain that waits for every permit also waits for the checkpoints), its
/// checkpoint ticket and its route.
pub(crate) struct Pending {
    pub(crate) slot: Slot,
    pub(crate) ticket: Option<Ticket>,
    pub(crate) route: usize,
    /// With the spool: where it is there; settled once the broker acknowledged it.
    pub(crate) key: Option<Key>,
    /// The payload, kept for a dead letter when there can be one.
    pub(crate) original: Option<bytes::Bytes>,
}

/// Publishes for the pipeline and records their outcomes on a task of its own, from one
/// channel of tagged outcomes ([`MqttHandle::publish_tagged`]): no future, oneshot channel or
/// task per message.
pub(crate) struct Settlement {
    ledger: Arc<Mutex<Ledger<Pending>>>,
    outcomes: OutcomeSender,
}

fn lock(ledger: &Mutex<Ledger<Pending>>) -> MutexGuard<'_, Ledger<Pending>> {
    // The ledger is consistent after every call; a panic elsewhere does not change that.
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Settlement {
    /// Starts the recording task, in the current span. It ends once this is dropped and
    /// every publish made through it has its outcome, so a pipeline that stops does not cut
    /// short the messages still waiting (the drain waits for their queue permits).
    pub(crate) fn start(shared: Arc<Shared>) -> Settlement {
        let (outcomes, mut reports) = outcome_channel();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let book = Arc::clone(&ledger);
        let record = async move {
            while let Some(outcome) = reports.recv().await {
                let pending = lock(&book).take(outcome.tag);
                match pending {
                    Some(pending) => record_outcome(&shared, pending, outcome),
                    None => error!(
                        tag = outcome.tag,
                        "Internal error: the outcome of a publish that is not in flight."
                    ),
                }
            }
            let left = lock(&book).len();
            if left > 0 {
                error!(left, "Internal error: publishes left without an outcome.");
            }
        };
        tokio::spawn(record.in_current_span());
        Settlement { ledger, outcomes }
    }

    /// Hands the publish to the MQTT client; its outcome is recorded when it comes. If the
    /// client refuses it at once, `pending` comes back with the error.
    pub(super) async fn publish(
        &self,
        mqtt: &MqttHandle,
        topic: String,
        payload: bytes::Bytes,
        properties: Option<Arc<Properties>>,
        route: &Route,
        pending: Pending,
    ) -> Result<(), (MqttError, Option<Pending>)> {
        let message = Publish::new(topic, payload, qos_of(route.qos), route.retain, properties);
        self.publish_message(mqtt, message, pending).await
    }

    /// [`Settlement::publish`] with the QoS and retain flag given in `message`.
    pub(crate) async fn publish_message(
        &self,
        mqtt: &MqttHandle,
        message: Publish,
        pending: Pending,
    ) -> Result<(), (MqttError, Option<Pending>)> {
        let tag = lock(&self.ledger).insert(pending);
        mqtt.publish_tagged(message, tag, &self.outcomes)
            .await
            .map_err(|e| (e, lock(&self.ledger).take(tag)))
    }
}

/// Records the outcome of a publish: the checkpoint and the counters, or a drop.
fn record_outcome(shared: &Arc<Shared>, pending: Pending, outcome: Outcome) {
    let Pending {
        slot,
        ticket,
        route,
        key,
        original,
    } = pending;
    let spooled = key.zip(shared.spools.as_ref());
    match &outcome.result {
        Ok(()) => {
            if let (Some(replay), Some(ticket)) = (&shared.replay, ticket) {
                replay.ack(ticket);
            }
            if let Some((key, spools)) = spooled {
                spools.settled(Direction::BayeuxToMqtt, key);
            }
            shared.stats.forwarded(Direction::BayeuxToMqtt, route);
        }
        // With the spool, a publish the client gave back unacknowledged (it was stopped:
        // replaced by a reload, or shutdown) stays there and is sent again.
        Err(e) if redeliver_after_restart(e) && spooled.is_some() => {
            if let Some((key, spools)) = spooled {
                spools.b2m_rewind.request(key);
            }
        }
        Err(e) => failed(shared, e, outcome.topic(), route, ticket, key, original),
    }
    drop(slot);
}

/// A publish the broker refused (or the client gave back, without the spool): dead-lettered
/// with `original` when the message itself is the problem and there can be a dead letter,
/// otherwise dropped and counted; either way done for the checkpoint and the spool.
fn failed(
    shared: &Arc<Shared>,
    e: &MqttError,
    topic: &str,
    route: usize,
    ticket: Option<Ticket>,
    key: Option<Key>,
    original: Option<bytes::Bytes>,
) {
    shared.count_publish_error("mqtt", e.reason());
    match original {
        // Refused by the broker: the message itself is the problem.
        Some(payload) if !redeliver_after_restart(e) => {
            let letter = Undeliverable {
                direction: Direction::BayeuxToMqtt,
                reason: e.reason(),
                route,
                channel: None,
                topic: Some(topic.to_owned()),
                error: e.to_string(),
                payload,
                extra: Vec::new(),
            };
            reject_and_release(shared, letter, ticket, key);
        }
        _ => {
            if let (Some(key), Some(spools)) = (key, &shared.spools) {
                spools.settled(Direction::BayeuxToMqtt, key);
            }
            release_ticket(shared, ticket, redeliver_after_restart(e));
            shared.drop_message(
                Direction::BayeuxToMqtt,
                e.reason(),
                route,
                topic,
                &e.to_string(),
            );
        }
    }
}

/// Dead-letters `letter` (or drops it, without a dead-letter topic); once that is done, so is
/// the message: its replay ticket is let go (the checkpoint may pass it) and, from the
/// spool, its entry `key` is settled. Until then a restart delivers it again.
pub(crate) fn reject_and_release(
    shared: &Arc<Shared>,
    letter: Undeliverable,
    ticket: Option<Ticket>,
    key: Option<Key>,
) {
    let done = Arc::clone(shared);
    shared.reject_then(letter, move || {
        release_ticket(&done, ticket, false);
        if let (Some(key), Some(spools)) = (key, &done.spools) {
            spools.settled(Direction::BayeuxToMqtt, key);
        }
    });
}

/// A message that will not be forwarded: its checkpoint ticket is abandoned (the checkpoint
/// may pass it: it is dropped on purpose and counted) unless it should come back after a
/// restart, in which case the ticket is dropped and holds the checkpoint back.
pub(super) fn release_ticket(shared: &Shared, ticket: Option<Ticket>, redeliver: bool) {
    if let (Some(replay), Some(ticket)) = (&shared.replay, ticket)
        && !redeliver
    {
        replay.abandon(ticket);
    }
}

/// Whether an event whose publish failed this way should be delivered again after a restart:
/// yes when the client shut down before the broker acknowledged it, no when the broker or the
/// message itself is the problem (it would fail again).
pub(super) fn redeliver_after_restart(e: &MqttError) -> bool {
    matches!(e, MqttError::Shutdown | MqttError::NoRuntime)
}

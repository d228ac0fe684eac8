//! Bayeux → MQTT delivery from the spool: entries in order, at most `bridge.queue_capacity`
//! publishes in flight; an entry leaves the spool once the broker acknowledged it (or refused
//! it for good). See the parent module.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{debug, trace, warn};

use super::{Item, Key, Source, Spools, Step, ToMqtt};
use crate::bridge::b2m::{Pending, Settlement, record_mqtt_echo, reject_and_release};
use crate::bridge::dead_letter::Undeliverable;
use crate::bridge::shutdown::Signal;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot};
use crate::mqtt::{MqttError, Publish, validate_topic};

/// How long a rewind waits before reading again, so that removals of entries acknowledged
/// just before are committed (the spool commits them within `spool::REMOVE_DELAY`) and not
/// read, and sent, again.
const REWIND_SETTLE: Duration = Duration::from_millis(120);

/// Delivers until `stop` is set; publishes in flight then finish on their own (the
/// drain waits for them up to its deadline; those that fail stay in the spool).
pub(crate) async fn deliver(shared: Arc<Shared>, permits: Arc<Semaphore>, mut stop: Signal) {
    let Some(spools) = shared.spools.as_ref() else {
        return;
    };
    let mut source = Source::new(spools, Direction::BayeuxToMqtt);
    let mut paused = spools.b2m_paused.subscribe();
    let settlement = Settlement::start(Arc::clone(&shared));
    loop {
        if stop.is_set() {
            break;
        }
        if *paused.borrow() {
            tokio::select! {
                () = stop.wait() => break,
                _ = paused.wait_for(|p| !*p) => continue,
            }
        }
        if let Some(key) = spools.b2m_rewind.take() {
            debug!(
                pack = key.seq,
                index = key.index,
                "Delivering again from a message the MQTT client gave back."
            );
            tokio::time::sleep(REWIND_SETTLE).await;
            source.rewind(key);
        }
        let interrupt = async {
            tokio::select! {
                _ = paused.wait_for(|p| *p) => {}
                () = spools.b2m_rewind.requested() => {}
            }
        };
        let entries = match source.step(&permits, &mut stop, interrupt).await {
            Step::Deliver(entries) => entries,
            Step::Again => continue,
            Step::Stop => break,
        };
        deliver_read(&shared, spools, &settlement, &mut source, &permits, entries).await;
    }
    debug!("Bayeux → MQTT delivery from the spool stopped.");
}

/// Publishes the entries of one read in order, each with a permit; stops early, rewinding
/// `source` to the entry not published, when no permit is free or the MQTT client stopped.
async fn deliver_read(
    shared: &Arc<Shared>,
    spools: &Spools,
    settlement: &Settlement,
    source: &mut Source,
    permits: &Arc<Semaphore>,
    entries: Vec<Item>,
) {
    for item in entries {
        let (key, data) = match item {
            Item::Message(key, data) => (key, data),
            Item::Damaged(seq, reason) => {
                damaged(shared, &spools.b2m, Direction::BayeuxToMqtt, seq, reason);
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Not expected (at most `free` were read): deliver it next time.
            source.rewind(key);
            break;
        };
        let Some(message) = decode_checked(shared, spools, key, &data) else {
            continue;
        };
        let slot = Slot::new(permit, &shared.b2m_in_flight);
        if publish(shared, settlement, key, message, slot)
            .await
            .is_break()
        {
            source.rewind(key);
            break;
        }
    }
}

/// The message of the spool entry `key`, checked; `None` when it cannot be decoded or its
/// topic is invalid (it is settled and counted as dropped).
fn decode_checked(shared: &Shared, spools: &Spools, key: Key, data: &Bytes) -> Option<ToMqtt> {
    let message = match ToMqtt::decode(data) {
        Ok(message) => message,
        Err(reason) => {
            spools.settled(Direction::BayeuxToMqtt, key);
            shared.drop_message(
                Direction::BayeuxToMqtt,
                "spool_entry_damaged",
                0,
                &format!("spool entry {}.{}", key.seq, key.index),
                reason,
            );
            return None;
        }
    };
    // Checked again here: the entry may have been spooled by a version that did not
    // check, and a topic the broker finds malformed would close the connection.
    if let Err(reason) = validate_topic(&message.topic) {
        spools.settled(Direction::BayeuxToMqtt, key);
        shared.drop_message(
            Direction::BayeuxToMqtt,
            "invalid_name",
            message.route,
            &message.topic,
            &reason,
        );
        return None;
    }
    Some(message)
}

/// Publishes the spool entry `key` through the current MQTT client; it is settled when the
/// broker acknowledged it. A refused publish is dead-lettered (or counted as dropped) and
/// then settled; `Break` when
/// the client was stopped (a reload replaced it, or shutdown): deliver again from here
/// through the current one.
async fn publish(
    shared: &Arc<Shared>,
    settlement: &Settlement,
    key: Key,
    message: ToMqtt,
    slot: Slot,
) -> ControlFlow<()> {
    record_mqtt_echo(shared, &message.topic, &message.payload);
    trace!(topic = %message.topic, pack = key.seq, index = key.index, "Forwarding to MQTT from the spool.");
    let mqtt = shared.mqtt();
    let ToMqtt {
        route,
        qos,
        retain,
        topic,
        payload,
        properties,
    } = message;
    // Kept for a dead letter only when there can be one.
    let original = shared.dead_letters.enabled().then(|| payload.clone());
    let pending = Pending {
        slot,
        ticket: None,
        route,
        key: Some(key),
        original: original.clone(),
    };
    let publish = Publish::new(topic.clone(), payload, qos, retain, properties);
    let Err((e, _)) = settlement.publish_message(&mqtt, publish, pending).await else {
        return ControlFlow::Continue(());
    };
    if matches!(e, MqttError::Shutdown | MqttError::NoRuntime) {
        return ControlFlow::Break(());
    }
    if shared.log_limit.allow(crate::bridge::b2m::REFUSED) {
        warn!(%topic, error = %e, "{}", crate::bridge::b2m::REFUSED);
    }
    shared.count_publish_error("mqtt", e.reason());
    let letter = Undeliverable {
        direction: Direction::BayeuxToMqtt,
        reason: e.reason(),
        route,
        channel: None,
        topic: Some(topic),
        error: e.to_string(),
        payload: original.unwrap_or_default(),
        extra: Vec::new(),
    };
    // The entry is settled once the dead letter is done (see `reject_and_release`).
    reject_and_release(shared, letter, None, Some(key));
    ControlFlow::Continue(())
}

/// A spool entry that is not a pack of messages: removed and counted as one dropped message.
pub(super) fn damaged(
    shared: &Shared,
    queue: &crate::spool::Queue,
    direction: Direction,
    seq: u64,
    reason: &str,
) {
    queue.remove(seq);
    shared.drop_message(
        direction,
        "spool_entry_damaged",
        0,
        &format!("spool entry {seq}"),
        reason,
    );
}

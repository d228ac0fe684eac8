//! MQTT → Bayeux delivery from the spool: entries in order, at most `bridge.queue_capacity`
//! publishes awaiting a verdict; an entry leaves the spool once the Bayeux server accepted it
//! (or refused it for good). Verdicts are settled, and failed requests retried with backoff,
//! by the same settlement task as without the spool (`crate::bridge::m2b::Settlement`). See
//! the parent module.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tracing::{debug, trace};

use super::b2m::damaged;
use super::{Item, Key, Source, Spools, Step, ToBayeux};
use crate::bayeux::channel::validate_channel_name;
use crate::bridge::m2b::{self, Destination, Held, Settlement};
use crate::bridge::shutdown::Signal;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot};

/// Delivers until `stop` is set; verdicts still awaited then are awaited by the settlement
/// task (what gets none stays in the spool).
pub(crate) async fn deliver(shared: Arc<Shared>, permits: Arc<Semaphore>, mut stop: Signal) {
    let Some(spools) = shared.spools.as_ref() else {
        return;
    };
    let mut source = Source::new(spools, Direction::MqttToBayeux);
    let settlement = Settlement::start(Arc::clone(&shared), stop.clone());
    'reading: loop {
        let entries = match source
            .step(&permits, &mut stop, std::future::pending())
            .await
        {
            Step::Deliver(entries) => entries,
            Step::Again => continue,
            Step::Stop => break,
        };
        for item in entries {
            let (key, data) = match item {
                Item::Message(key, data) => (key, data),
                Item::Damaged(seq, reason) => {
                    damaged(&shared, &spools.m2b, Direction::MqttToBayeux, seq, reason);
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                source.rewind(key);
                break;
            };
            let Some(message) = decode(&shared, spools, key, &data) else {
                continue;
            };
            let slot = Slot::new(permit, &shared.m2b_in_flight);
            let open = publish(&shared, &settlement, key, message, slot).await;
            if !open && stop.is_set() {
                // Shutting down: what is not delivered stays in the spool.
                break 'reading;
            }
        }
    }
    debug!("MQTT → Bayeux delivery from the spool stopped.");
}

/// The Bayeux publish spooled as `data` at `key`; `None` when it cannot go out (damaged, or
/// an invalid channel): then it is dropped, counted and settled in the spool.
fn decode(shared: &Shared, spools: &Spools, key: Key, data: &Bytes) -> Option<ToBayeux> {
    let message = match ToBayeux::decode(data) {
        Ok(message) => message,
        Err(reason) => {
            spools.settled(Direction::MqttToBayeux, key);
            shared.drop_message(
                Direction::MqttToBayeux,
                "spool_entry_damaged",
                0,
                &format!("spool entry {}.{}", key.seq, key.index),
                reason,
            );
            return None;
        }
    };
    // Checked again here: the entry may have been spooled by a version that did not check.
    if let Err(e) = validate_channel_name(&message.channel) {
        spools.settled(Direction::MqttToBayeux, key);
        shared.drop_message(
            Direction::MqttToBayeux,
            "invalid_name",
            message.route,
            &message.channel,
            e.reason,
        );
        return None;
    }
    Some(message)
}

/// Publishes the spooled `message` of `key`, which holds `slot` until it is settled; `false`
/// when the Bayeux client was found closed.
async fn publish(
    shared: &Shared,
    settlement: &Settlement,
    key: Key,
    message: ToBayeux,
    slot: Slot,
) -> bool {
    let ToBayeux {
        route,
        channel,
        topic,
        data,
        ext,
    } = message;
    trace!(%topic, %channel, pack = key.seq, index = key.index, "Forwarding to Bayeux from the spool.");
    // The data is JSON text, so "the payload" it is made from again on a retry is that text.
    let payload = Bytes::copy_from_slice(data.json().as_bytes());
    let held = Held {
        slot,
        source: m2b::Source::Spool(key),
    };
    // Recorded for the echo filter now, not when it was spooled: the echo comes back after
    // this publish.
    settlement
        .publish(
            shared,
            held,
            payload,
            &[Destination {
                route,
                channel,
                ext,
            }],
            data,
        )
        .await
}

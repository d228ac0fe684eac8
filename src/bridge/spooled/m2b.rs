//! MQTT → Bayeux delivery from the spool: entries in order, at most `bridge.queue_capacity`
//! publishes awaiting a verdict; an entry leaves the spool once the Bayeux server accepted it
//! (or refused it for good). Failed requests are retried with backoff as without the spool.
//! See the parent module.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tracing::{debug, trace};

use super::b2m::damaged;
use super::{Item, Source, Step, ToBayeux};
use crate::bayeux::PublishError;
use crate::bayeux::channel::validate_channel_name;
use crate::bridge::m2b::{Pending, record_echo, settle};
use crate::bridge::settling::Settler;
use crate::bridge::shutdown::Signal;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot};

/// Delivers until `stop` is set; verdicts still awaited then are awaited by the settling
/// task (what gets none stays in the spool).
pub(crate) async fn deliver(shared: Arc<Shared>, permits: Arc<Semaphore>, mut stop: Signal) {
    let Some(spools) = shared.spools.as_ref() else {
        return;
    };
    let queue = spools.m2b.clone();
    let mut source = Source::new(spools, Direction::MqttToBayeux);
    let settler = Settler::start();
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
                    damaged(&shared, &queue, Direction::MqttToBayeux, seq, reason);
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                source.rewind(key);
                break;
            };
            let message = match ToBayeux::decode(&data) {
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
                    continue;
                }
            };
            let ToBayeux {
                route,
                channel,
                topic,
                data,
                ext,
            } = message;
            // Checked again here: the entry may have been spooled by a version that did not
            // check.
            if let Err(e) = validate_channel_name(&channel) {
                spools.settled(Direction::MqttToBayeux, key);
                shared.drop_message(
                    Direction::MqttToBayeux,
                    "invalid_name",
                    route,
                    &channel,
                    e.reason,
                );
                continue;
            }
            // Recorded now, not when it was spooled: the echo comes back after this publish.
            record_echo(
                &shared,
                &shared.routes(),
                &channel,
                &data,
                None,
                Instant::now(),
            );
            trace!(%topic, %channel, pack = key.seq, index = key.index, "Forwarding to Bayeux from the spool.");
            let json = data.json().as_bytes().to_vec();
            let verdict = match shared
                .publisher()
                .publish_queued(&channel, data, ext.clone())
                .await
            {
                Ok(verdict) => verdict,
                // Shutting down: it stays in the spool.
                Err(PublishError::Closed) if stop.is_set() => break 'reading,
                Err(e) => {
                    spools.settled(Direction::MqttToBayeux, key);
                    shared.drop_message(
                        Direction::MqttToBayeux,
                        "invalid_channel",
                        route,
                        &channel,
                        &e.to_string(),
                    );
                    continue;
                }
            };
            let slot = Slot::new(permit, &shared.m2b_in_flight);
            let (shared, stop) = (Arc::clone(&shared), stop.clone());
            settler.settle(async move {
                let _slot = slot;
                let pending = Pending {
                    route,
                    channel,
                    verdict,
                    ext,
                };
                // The data is JSON text, so "the payload" it is made from again on a retry
                // is that text.
                if settle(&shared, pending, &json, stop).await
                    && let Some(spools) = &shared.spools
                {
                    spools.settled(Direction::MqttToBayeux, key);
                }
            });
        }
    }
    debug!("MQTT → Bayeux delivery from the spool stopped.");
}

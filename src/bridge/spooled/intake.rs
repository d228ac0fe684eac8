//! The intake: what a pipeline takes is made durable in group commits, handed on to the
//! delivery task, and only then acknowledged to its source.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, warn};

use super::record;
use super::source::Feed;
use crate::bridge::checkpoint::Ticket;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot};
use crate::mqtt::{AckToken, MqttHandle};
use crate::spool::{Queue, SpoolError};

/// How long a failed spool write waits before it is tried again (a disk error: full disk,
/// I/O error). The messages keep their slots meanwhile, so the source is back-pressured.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// Most messages one intake commit takes.
const INTAKE_BATCH: usize = 1024;

/// What is done with a message once it is durable in the spool.
pub(crate) enum OnDurable {
    /// Bayeux → MQTT: the replay checkpoint may pass the event; its slot is free.
    Bayeux { slot: Slot, ticket: Option<Ticket> },
    /// MQTT → Bayeux: the broker gets its acknowledgement; the slot is free.
    Mqtt {
        slot: Slot,
        token: AckToken,
        mqtt: MqttHandle,
    },
}

impl OnDurable {
    fn done(self, shared: &Shared) {
        match self {
            OnDurable::Bayeux { slot, ticket } => {
                if let (Some(replay), Some(ticket)) = (&shared.replay, ticket) {
                    replay.ack(ticket);
                }
                drop(slot);
            }
            OnDurable::Mqtt { slot, token, mqtt } => {
                mqtt.ack(token);
                drop(slot);
            }
        }
    }
}

/// One message for the intake: its entries (one per destination) and what to do once they
/// are durable.
type Taken = (Vec<Bytes>, OnDurable);

/// Where a pipeline hands messages to be made durable; see the module docs.
pub(crate) struct Intake {
    tx: mpsc::UnboundedSender<Taken>,
    shared: Arc<Shared>,
    direction: Direction,
}

impl Intake {
    /// Starts the intake task of `direction`, in the current span. It ends once every
    /// `Intake` is dropped and what was handed over is durable (or the queue was closed).
    pub(crate) fn start(shared: Arc<Shared>, direction: Direction) -> (Intake, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_intake(Arc::clone(&shared), direction, rx).in_current_span());
        (
            Intake {
                tx,
                shared,
                direction,
            },
            task,
        )
    }

    /// Hands over one message (`name`: its channel or topic, for logs). Unbounded here: the
    /// caller's slots bound it. A message larger than the whole spool could never be
    /// written: it is dropped and counted (`spool_too_small`) instead of blocking its side
    /// for good, and acknowledged upstream like any other refused message.
    pub(crate) fn submit(&self, entries: Vec<Bytes>, then: OnDurable, route: usize, name: &str) {
        let size: u64 = entries.iter().map(|e| e.len() as u64 + 4).sum::<u64>() + 5;
        let max = self
            .shared
            .spools
            .as_ref()
            .map_or(u64::MAX, |s| s.spool.max_bytes());
        if size + crate::spool::ENTRY_OVERHEAD > max {
            self.shared.drop_message(
                self.direction,
                "spool_too_small",
                route,
                name,
                &format!("{size} bytes do not fit in a spool of spool.max_bytes = {max}"),
            );
            then.done(&self.shared);
            return;
        }
        if self.tx.send((entries, then)).is_err() {
            error!("Internal error: the spool intake stopped before its pipeline.");
        }
    }
}

async fn run_intake(
    shared: Arc<Shared>,
    direction: Direction,
    mut rx: mpsc::UnboundedReceiver<Taken>,
) {
    let Some(spools) = shared.spools.as_ref() else {
        return;
    };
    let queue = spools.queue(direction).clone();
    let full = AtomicBool::new(false);
    let mut items: Vec<Taken> = Vec::new();
    // What arrives while a batch is committed waits in the channel and forms the next one.
    while rx.recv_many(&mut items, INTAKE_BATCH).await > 0 {
        let entries = packs(&items);
        if !append(&queue, spools.feed(direction), entries, direction, &full).await {
            // Closed at shutdown: nothing becomes durable; the sources keep the messages
            // (MQTT: unacknowledged, redelivered; Bayeux: counted as abandoned).
            return;
        }
        // Tests and operators following a backlog wait for this line.
        debug!(%direction, messages = items.len(), "Spooled.");
        for (_, then) in items.drain(..) {
            then.done(&shared);
        }
    }
}

/// Most bytes of one pack, unless a single message is larger: keeps an entry well below
/// the smallest `spool.max_bytes`, so that a batch of small messages always fits once room
/// is freed.
const PACK_BYTES: usize = 64 * 1024;

/// The messages of `items` as packs (spool entries) of at most [`PACK_BYTES`] each, in order.
fn packs(items: &[Taken]) -> Vec<Bytes> {
    let mut packs = Vec::new();
    let mut messages: Vec<Bytes> = Vec::new();
    let mut bytes = 0;
    for message in items.iter().flat_map(|(entries, _)| entries.iter()) {
        if !messages.is_empty() && bytes + message.len() > PACK_BYTES {
            packs.push(record::pack(&messages));
            messages.clear();
            bytes = 0;
        }
        bytes += message.len() + 4;
        messages.push(message.clone());
    }
    if !messages.is_empty() {
        packs.push(record::pack(&messages));
    }
    packs
}

/// Appends until it is durable, handing the entries to the delivery task as soon as they
/// have their numbers; `false` once the queue is closed.
async fn append(
    queue: &Queue,
    feed: &Feed,
    entries: Vec<Bytes>,
    direction: Direction,
    full: &AtomicBool,
) -> bool {
    loop {
        // Created before the attempt, so that room freed meanwhile is not missed.
        let changed = queue.changed();
        let durable = match queue.append_early(entries.clone()) {
            Ok((first, durable)) => {
                if full.swap(false, Ordering::Relaxed) {
                    info!(%direction, "The spool has room again; taking messages.");
                }
                feed.offer(first, entries.clone());
                durable
            }
            Err(SpoolError::Full { needed, used, max }) => {
                if !full.swap(true, Ordering::Relaxed) {
                    warn!(%direction, needed, used, max,
                        "The spool is full; not taking more messages from this side until deliveries free room (back-pressure).");
                }
                changed.await;
                continue;
            }
            Err(SpoolError::Closed) => return false,
            Err(e) => {
                error!(%direction, error = %e, retry_in = ?WRITE_RETRY,
                    "Could not write to the spool; not taking more messages from this side meanwhile.");
                tokio::time::sleep(WRITE_RETRY).await;
                continue;
            }
        };
        match durable.await {
            Ok(()) => return true,
            Err(SpoolError::Closed) => return false,
            Err(e) => {
                // The delivery task may have sent them already; appended again they may
                // be sent twice (at-least-once).
                error!(%direction, error = %e, retry_in = ?WRITE_RETRY,
                    "Could not commit to the spool; writing again.");
                tokio::time::sleep(WRITE_RETRY).await;
            }
        }
    }
}

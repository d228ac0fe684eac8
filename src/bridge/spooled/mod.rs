//! The durable spool in the pipelines (`[spool] enabled`).
//!
//! With the spool, each direction is cut in two at the disk:
//!
//! 1. **Intake.** The pipeline's reading loop (`b2m::run`, `m2b::run`) turns each message
//!    into its final form (an MQTT publish: route, QoS, retain, topic, payload; a Bayeux
//!    publish: route, channel, data) and hands it to the direction's [`Intake`], holding its
//!    queue slot. The intake task takes every message waiting and appends them to the
//!    direction's spool queue in one commit (group commit, fsync), packed into as few spool
//!    entries of at most 64 KiB as it can (one B-tree insert for many messages); only then
//!    is the source told: the MQTT message is acknowledged to the broker, the Bayeux event's replay
//!    checkpoint may advance, and the slot is free again. The reading loop therefore keeps
//!    reading while the destination is down, as long as the disk keeps up and the spool has
//!    room: the Bayeux session keeps polling (so the server never expires it because of us)
//!    and the broker's per-client queue never fills.
//! 2. **Delivery.** One task per direction ([`b2m::deliver`], [`m2b::deliver`]) reads the
//!    queue in order from its cursor and publishes with at most `bridge.queue_capacity`
//!    messages in flight. An entry leaves the spool only once the destination acknowledged
//!    it (broker PUBACK/PUBCOMP, Bayeux `successful: true`) or refused it for good (then it
//!    is dropped and counted, as without the spool). Messages go out in spool order, which
//!    is the order they were received in, so order per route holds across restarts.
//!    The intake hands each pack to the delivery task as soon as it has its sequence number
//!    ([`Feed`]), so delivery does not wait for the fsync; the task reads the disk for a
//!    backlog (after a restart, or when the feed overflowed). A [`Book`] per direction
//!    settles each message of a pack; the pack leaves the spool once all of them are.
//!
//! A full spool (`spool.max_bytes`) back-pressures: the intake waits for room, the reading
//! loop runs out of slots and stops reading that side, exactly as without the spool; a
//! Bayeux session that then expires is reported as a `session_expired` gap.
//!
//! After a restart the delivery tasks start from the first entry left in the queue: what was
//! durable and not acknowledged goes out again (duplicates only for what was in flight, and
//! for the other messages of its pack).

pub(super) mod b2m;
mod intake;
pub(super) mod m2b;
mod record;
mod source;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span};

pub(super) use intake::{Intake, OnDurable};
pub(super) use record::{ToBayeux, ToMqtt};
pub(crate) use source::{Book, Feed, Key, Rewind};
use source::{Item, Source, Step};

use super::Shared;
use super::shutdown::{Shutdown, Step as ShutdownStep};
use super::stats::Direction;
use crate::config::SpoolConfig;
use crate::spool::{Queue, Spool, SpoolError};

/// The queue names in `spool.dir` (files `<name>.redb`).
pub(super) const B2M_QUEUE: &str = "bayeux_to_mqtt";
/// See [`B2M_QUEUE`].
pub(super) const M2B_QUEUE: &str = "mqtt_to_bayeux";

/// The spool and its two queues, with what the delivery tasks share with the rest.
pub(crate) struct Spools {
    pub(super) spool: Spool,
    pub(super) b2m: Queue,
    pub(super) m2b: Queue,
    /// Bayeux → MQTT delivery paused (a reload is replacing the MQTT client).
    pub(super) b2m_paused: watch::Sender<bool>,
    /// Where a delivery task must go back to after publishes failed without a verdict
    /// (the MQTT client they went to was replaced): the smallest such sequence number.
    pub(super) b2m_rewind: Rewind,
    /// Fresh entries from each intake to its delivery task.
    pub(super) b2m_feed: Feed,
    pub(super) m2b_feed: Feed,
    /// What of each pack is settled, per direction.
    pub(super) b2m_book: Arc<Book>,
    pub(super) m2b_book: Arc<Book>,
}

impl Spools {
    /// Opens the spool and its two queues (blocking: each queue's file is checked whole).
    pub(super) fn open(config: &SpoolConfig) -> Result<Spools, SpoolError> {
        let spool = Spool::open(&config.dir, config.max_bytes)?;
        let b2m = spool.queue(B2M_QUEUE)?;
        let m2b = spool.queue(M2B_QUEUE)?;
        for (direction, queue) in [
            (Direction::BayeuxToMqtt, &b2m),
            (Direction::MqttToBayeux, &m2b),
        ] {
            let stats = queue.stats();
            if stats.entries > 0 {
                info!(%direction, entries = stats.entries, bytes = stats.bytes, file = %queue.file().display(),
                    "Spooled messages from before the restart will be delivered first.");
            }
        }
        Ok(Spools {
            spool,
            b2m,
            m2b,
            b2m_paused: watch::channel(false).0,
            b2m_rewind: Rewind::default(),
            b2m_feed: Feed::new(),
            m2b_feed: Feed::new(),
            b2m_book: Arc::default(),
            m2b_book: Arc::default(),
        })
    }

    /// The queue of `direction`.
    pub(super) fn queue(&self, direction: Direction) -> &Queue {
        match direction {
            Direction::BayeuxToMqtt => &self.b2m,
            Direction::MqttToBayeux => &self.m2b,
        }
    }

    /// The feed of `direction`.
    pub(super) fn feed(&self, direction: Direction) -> &Feed {
        match direction {
            Direction::BayeuxToMqtt => &self.b2m_feed,
            Direction::MqttToBayeux => &self.m2b_feed,
        }
    }

    /// The book of `direction`.
    pub(super) fn book(&self, direction: Direction) -> &Arc<Book> {
        match direction {
            Direction::BayeuxToMqtt => &self.b2m_book,
            Direction::MqttToBayeux => &self.m2b_book,
        }
    }

    /// Message `key` of `direction` is settled: its pack leaves the spool once all of its
    /// messages are.
    pub(super) fn settled(&self, direction: Direction, key: Key) {
        if self.book(direction).settle(key) {
            self.queue(direction).remove(key.seq);
        }
    }

    /// Commits pending removals and closes both queues.
    pub(super) async fn close(&self) {
        self.b2m.close().await;
        self.m2b.close().await;
    }
}

/// Opens the spool of `config` on tokio's blocking pool (opening checks each file whole).
pub(super) async fn open(config: &SpoolConfig) -> Result<Spools, SpoolError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || Spools::open(&config))
        .await
        .unwrap_or_else(|e| {
            Err(SpoolError::Io {
                file: PathBuf::new(),
                source: std::io::Error::other(format!("the spool could not be opened: {e}")),
            })
        })
}

/// Logs what stays in the spool at shutdown, for the next start.
pub(super) fn log_left(spools: &Spools) {
    for direction in [Direction::BayeuxToMqtt, Direction::MqttToBayeux] {
        let stats = spools.queue(direction).stats();
        if stats.entries > 0 {
            info!(%direction, entries = stats.entries, bytes = stats.bytes,
                "Messages left in the spool; they are delivered after the restart.");
        }
    }
}

/// The two delivery tasks; they stop at [`ShutdownStep::StopDeliveries`].
pub(crate) struct Delivery {
    pub(super) b2m: JoinHandle<()>,
    pub(super) m2b: JoinHandle<()>,
    pub(super) b2m_permits: Arc<Semaphore>,
    pub(super) m2b_permits: Arc<Semaphore>,
}

impl Delivery {
    /// Starts delivering from the spool, with `capacity` messages in flight per direction,
    /// when the bridge has one.
    pub(super) fn start(
        shared: &Arc<Shared>,
        capacity: usize,
        shutdown: &Shutdown,
    ) -> Option<Delivery> {
        shared.spools.as_ref()?;
        let b2m_stopped = shutdown.signal(ShutdownStep::StopDeliveries);
        let m2b_stopped = shutdown.signal(ShutdownStep::StopDeliveries);
        let b2m_permits = Arc::new(Semaphore::new(capacity));
        let m2b_permits = Arc::new(Semaphore::new(capacity));
        let b2m = tokio::spawn(
            b2m::deliver(Arc::clone(shared), Arc::clone(&b2m_permits), b2m_stopped)
                .instrument(info_span!("bayeux_to_mqtt", from = "spool")),
        );
        let m2b = tokio::spawn(
            m2b::deliver(Arc::clone(shared), Arc::clone(&m2b_permits), m2b_stopped)
                .instrument(info_span!("mqtt_to_bayeux", from = "spool")),
        );
        Some(Delivery {
            b2m,
            m2b,
            b2m_permits,
            m2b_permits,
        })
    }
}

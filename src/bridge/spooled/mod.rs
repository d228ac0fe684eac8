//! The durable spool in the pipelines (`[spool] enabled`).
//!
//! With the spool, each direction is cut in two at the disk:
//!
//! 1. **Intake.** The pipeline's reading loop (`b2m::run`, `m2b::run`) turns each message
//!    into its final form (an MQTT publish: route, QoS, retain, topic, payload; a Bayeux
//!    publish: route, channel, data) and hands it to the direction's [`Intake`], holding its
//!    queue slot. The intake task takes every message waiting and appends them to the
//!    direction's spool queue in one commit (group commit, fsync), packed into as few spool
//!    entries as [`PACK_BYTES`] allows (one B-tree insert for many messages); only then is the source
//!    told: the MQTT message is acknowledged to the broker, the Bayeux event's replay
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
//! durable and not acknowledged goes out again (duplicates only for what was in flight).

pub(super) mod b2m;
pub(super) mod m2b;
mod record;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, error, info, info_span, warn};

pub(super) use record::{ToBayeux, ToMqtt};

use super::Shared;
use super::Slot;
use super::checkpoint::Ticket;
use super::stats::Direction;
use crate::config::SpoolConfig;
use crate::mqtt::{AckToken, MqttHandle};
use crate::spool::{Queue, Spool, SpoolError};

/// The queue names in `spool.dir` (files `<name>.redb`).
pub(super) const B2M_QUEUE: &str = "bayeux_to_mqtt";
/// See [`B2M_QUEUE`].
pub(super) const M2B_QUEUE: &str = "mqtt_to_bayeux";

/// How long a failed spool write waits before it is tried again (a disk error: full disk,
/// I/O error). The messages keep their slots meanwhile, so the source is back-pressured.
const WRITE_RETRY: Duration = Duration::from_secs(1);

/// Most messages one intake commit takes.
const INTAKE_BATCH: usize = 1024;

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

/// The two delivery tasks and how to stop them.
pub(crate) struct Delivery {
    pub(super) b2m: JoinHandle<()>,
    pub(super) m2b: JoinHandle<()>,
    pub(super) stop_b2m: watch::Sender<bool>,
    pub(super) stop_m2b: watch::Sender<bool>,
    pub(super) b2m_permits: Arc<Semaphore>,
    pub(super) m2b_permits: Arc<Semaphore>,
}

impl Delivery {
    /// Starts delivering from the spool, with `capacity` messages in flight per direction,
    /// when the bridge has one.
    pub(super) fn start(shared: &Arc<Shared>, capacity: usize) -> Option<Delivery> {
        shared.spools.as_ref()?;
        let (stop_b2m, b2m_stopped) = watch::channel(false);
        let (stop_m2b, m2b_stopped) = watch::channel(false);
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
            stop_b2m,
            stop_m2b,
            b2m_permits,
            m2b_permits,
        })
    }
}

/// Batches of fresh entries, handed from the intake to the delivery task as soon as they
/// have their sequence numbers, so that delivery does not wait for the commit (the
/// acknowledgement upstream still does). Bounded: a batch that does not fit is left out,
/// and the delivery task reads it from the disk instead.
pub(crate) struct Feed {
    tx: mpsc::Sender<Fresh>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Fresh>>>,
}

/// Entries appended together: sequence numbers `first`, `first + 1`, …
pub(super) struct Fresh {
    first: u64,
    entries: Vec<Bytes>,
}

/// Packs a delivery task takes at once, at most.
const PACKS_AT_ONCE: usize = 8;

/// Batches the feed holds at most.
const FEED_BATCHES: usize = 64;

impl Feed {
    fn new() -> Feed {
        let (tx, rx) = mpsc::channel(FEED_BATCHES);
        Feed {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    fn offer(&self, first: u64, entries: Vec<Bytes>) {
        // Full (the delivery task is behind) or gone: it reads these from the disk.
        let _ = self.tx.try_send(Fresh { first, entries });
    }

    /// The receiving end, for the one delivery task.
    fn take(&self) -> Option<mpsc::Receiver<Fresh>> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// A message's place in the spool: its pack (spool entry) and its index there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    pub(crate) seq: u64,
    pub(crate) index: u32,
}

/// Which messages of each pack being delivered are settled (acknowledged, or dropped for
/// good). A pack leaves the spool once all of its messages are.
#[derive(Default)]
pub(crate) struct Book {
    packs: std::sync::Mutex<HashMap<u64, Pack>>,
}

struct Pack {
    settled: Vec<bool>,
    left: usize,
}

impl Book {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pack>> {
        self.packs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following pack `seq` of `count` messages, unless it is followed already.
    fn open(&self, seq: u64, count: usize) {
        self.lock().entry(seq).or_insert_with(|| Pack {
            settled: vec![false; count],
            left: count,
        });
    }

    /// Whether message `key` is settled already (not sent again after a rewind).
    fn is_settled(&self, key: Key) -> bool {
        self.lock()
            .get(&key.seq)
            .and_then(|p| p.settled.get(key.index as usize).copied())
            .unwrap_or(false)
    }

    /// Message `key` is settled; true when that was its pack's last one (remove the pack).
    pub(super) fn settle(&self, key: Key) -> bool {
        let mut packs = self.lock();
        let Some(pack) = packs.get_mut(&key.seq) else {
            return false;
        };
        match pack.settled.get_mut(key.index as usize) {
            Some(settled) if !*settled => {
                *settled = true;
                pack.left -= 1;
            }
            _ => return false,
        }
        if pack.left == 0 {
            packs.remove(&key.seq);
            return true;
        }
        false
    }
}

/// One thing a delivery task gets from its [`Source`].
pub(super) enum Item {
    /// A message to deliver.
    Message(Key, Bytes),
    /// A spool entry that is not a pack of messages (damaged): remove it and count it.
    Damaged(u64, &'static str),
}

/// Where a delivery task gets its messages, in order: packs from the feed while it goes on
/// right where the task is, from the disk otherwise (a backlog from before a restart, packs
/// the feed left out, a rewind); each pack's messages one by one.
pub(super) struct Source {
    queue: Queue,
    book: Arc<Book>,
    feed: Option<mpsc::Receiver<Fresh>>,
    head: Option<Fresh>,
    /// The sequence number of the next pack to take.
    cursor: u64,
    /// The pack being delivered and the index of its next message.
    current: Option<(u64, Vec<Bytes>, usize)>,
    /// Packs taken and not yet started, in order.
    taken: std::collections::VecDeque<(u64, Bytes)>,
}

impl Source {
    pub(super) fn new(spools: &Spools, direction: Direction) -> Source {
        Source {
            queue: spools.queue(direction).clone(),
            book: Arc::clone(spools.book(direction)),
            feed: spools.feed(direction).take(),
            head: None,
            cursor: 0,
            current: None,
            taken: std::collections::VecDeque::new(),
        }
    }

    /// Up to `limit` messages to deliver next, in order; empty when there is nothing yet
    /// (then [`Source::wait`], with a `changed` future made before this call).
    pub(super) fn next(&mut self, limit: usize) -> Result<Vec<Item>, SpoolError> {
        let mut out = Vec::new();
        while out.len() < limit {
            if let Some((seq, messages, next)) = self.current.as_mut() {
                let seq = *seq;
                while out.len() < limit && *next < messages.len() {
                    let key = Key {
                        seq,
                        index: u32::try_from(*next).unwrap_or(u32::MAX),
                    };
                    if !self.book.is_settled(key) {
                        out.push(Item::Message(key, messages[*next].clone()));
                    }
                    *next += 1;
                }
                if *next >= messages.len() {
                    self.current = None;
                }
                continue;
            }
            if self.taken.is_empty() {
                // A few packs at a time: a backlog is read as it is delivered.
                let packs = self.packs(limit.min(PACKS_AT_ONCE))?;
                self.taken.extend(packs);
            }
            let Some((seq, entry)) = self.taken.pop_front() else {
                break;
            };
            match record::unpack(&entry) {
                // Nothing to deliver (the intake makes no empty packs; one would be damage).
                Ok(messages) if messages.is_empty() => self.queue.remove(seq),
                Ok(messages) => {
                    self.book.open(seq, messages.len());
                    self.current = Some((seq, messages, 0));
                }
                Err(reason) => out.push(Item::Damaged(seq, reason)),
            }
        }
        Ok(out)
    }

    /// Up to `limit` packs from the cursor on: from the feed when it goes on right there,
    /// from the disk otherwise.
    fn packs(&mut self, limit: usize) -> Result<Vec<(u64, Bytes)>, SpoolError> {
        loop {
            if self.head.is_none() {
                self.head = self.feed.as_mut().and_then(|f| f.try_recv().ok());
            }
            let Some(head) = self.head.as_mut() else {
                break;
            };
            let end = head.first + head.entries.len() as u64;
            if end <= self.cursor {
                self.head = None;
                continue;
            }
            if head.first > self.cursor {
                // A gap: packs the feed left out, or a rewind. The disk has them.
                break;
            }
            let skip = usize::try_from(self.cursor - head.first).unwrap_or(usize::MAX);
            let out: Vec<(u64, Bytes)> = (self.cursor..)
                .zip(head.entries.iter().skip(skip).take(limit).cloned())
                .collect();
            self.cursor += out.len() as u64;
            if self.cursor >= end {
                self.head = None;
            }
            return Ok(out);
        }
        let entries = self.queue.read_from(self.cursor, limit)?;
        if let Some(last) = entries.last() {
            self.cursor = last.seq + 1;
        }
        Ok(entries.into_iter().map(|e| (e.seq, e.data)).collect())
    }

    /// Waits for a fresh pack or for `changed` (a commit, or room freed).
    pub(super) async fn wait(&mut self, changed: impl std::future::Future<Output = ()>) {
        match (self.head.is_none(), self.feed.as_mut()) {
            (true, Some(feed)) => tokio::select! {
                fresh = feed.recv() => self.head = fresh,
                () = changed => {}
            },
            _ => changed.await,
        }
    }

    /// Delivers again from the pack of `key` on, what of it is not settled.
    pub(super) fn rewind(&mut self, key: Key) {
        let from = match &self.current {
            Some((seq, ..)) => (*seq).min(key.seq),
            None => key.seq,
        };
        let from = self.taken.front().map_or(from, |(seq, _)| from.min(*seq));
        self.cursor = self.cursor.min(from);
        self.current = None;
        self.taken.clear();
    }
}

/// A request to deliver again from an earlier message.
#[derive(Default)]
pub(crate) struct Rewind {
    to: std::sync::Mutex<Option<Key>>,
    notify: Notify,
}

impl Rewind {
    /// Asks the delivery task to deliver again from `key` (or earlier, if asked so already).
    pub(super) fn request(&self, key: Key) {
        let mut to = self.to.lock().unwrap_or_else(|p| p.into_inner());
        let earlier = |a: Key, b: Key| {
            if (b.seq, b.index) < (a.seq, a.index) {
                b
            } else {
                a
            }
        };
        *to = Some(to.map_or(key, |t| earlier(t, key)));
        drop(to);
        self.notify.notify_one();
    }

    /// The pending request, if any.
    pub(super) fn take(&self) -> Option<Key> {
        self.to.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Resolves at the next request (or at once if one came since the last `take`).
    pub(super) async fn requested(&self) {
        self.notify.notified().await;
    }
}

/// What is done with a message once it is durable in the spool.
pub(super) enum OnDurable {
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
pub(super) struct Intake {
    tx: mpsc::UnboundedSender<Taken>,
    shared: Arc<Shared>,
    direction: Direction,
}

impl Intake {
    /// Starts the intake task of `direction`, in the current span. It ends once every
    /// `Intake` is dropped and what was handed over is durable (or the queue was closed).
    pub(super) fn start(shared: Arc<Shared>, direction: Direction) -> (Intake, JoinHandle<()>) {
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
    pub(super) fn submit(&self, entries: Vec<Bytes>, then: OnDurable, route: usize, name: &str) {
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

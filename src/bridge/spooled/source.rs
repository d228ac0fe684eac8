//! Where a delivery task gets its messages ([`Source`]): fresh packs from the intake
//! ([`Feed`]), the disk for a backlog; which messages of each pack are settled ([`Book`]);
//! and requests to deliver again from an earlier message ([`Rewind`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};

use super::record;
use super::{Direction, Spools};
use crate::spool::{Queue, SpoolError};

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
    pub(super) fn new() -> Feed {
        let (tx, rx) = mpsc::channel(FEED_BATCHES);
        Feed {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    pub(super) fn offer(&self, first: u64, entries: Vec<Bytes>) {
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

/// What a delivery task does next ([`Source::step`]).
pub(super) enum Step {
    /// Deliver these, in order; a slot is free for each.
    Deliver(Vec<Item>),
    /// Look again (a slot came free, something was appended, or the caller was interrupted).
    Again,
    /// Stop delivering.
    Stop,
}

/// Messages read from the spool at once, at most.
const READ_BATCH: usize = 256;

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
    taken: VecDeque<(u64, Bytes)>,
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
            taken: VecDeque::new(),
        }
    }

    /// The delivery loop's shared step: as many messages as `permits` has free slots (at
    /// most a read's worth), or a wait until a slot comes free, something is appended,
    /// `interrupt` resolves (the caller's own wake-ups) or `stop` is set.
    pub(super) async fn step(
        &mut self,
        permits: &tokio::sync::Semaphore,
        stop: &mut crate::bridge::shutdown::Signal,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Step {
        if stop.is_set() {
            return Step::Stop;
        }
        // Before reading: what is committed after the read is not missed.
        let changed = self.queue.changed();
        let free = permits.available_permits();
        if free == 0 {
            return tokio::select! {
                () = stop.wait() => Step::Stop,
                permit = permits.acquire() => {
                    drop(permit);
                    Step::Again
                }
                () = interrupt => Step::Again,
            };
        }
        match self.next(free.min(READ_BATCH)) {
            Ok(items) if !items.is_empty() => Step::Deliver(items),
            Ok(_) => tokio::select! {
                () = stop.wait() => Step::Stop,
                () = self.wait(changed) => Step::Again,
                () = interrupt => Step::Again,
            },
            Err(e) => {
                tracing::warn!(file = %self.queue.file().display(), error = %e,
                    "Could not read the spool; trying again.");
                tokio::select! {
                    () = stop.wait() => Step::Stop,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => Step::Again,
                }
            }
        }
    }

    /// Up to `limit` messages to deliver next, in order; empty when there is nothing yet
    /// (then [`Source::wait`], with a `changed` future made before this call).
    fn next(&mut self, limit: usize) -> Result<Vec<Item>, SpoolError> {
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
    async fn wait(&mut self, changed: impl std::future::Future<Output = ()>) {
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
    pub(crate) fn request(&self, key: Key) {
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

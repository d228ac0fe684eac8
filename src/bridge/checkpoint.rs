//! Durable replay checkpoints: per Bayeux channel, the replay id from which a restarted bridge
//! resumes its subscription.
//!
//! The store knows nothing of Bayeux messages, MQTT or the bridge's tasks. It is a plain
//! struct: the caller wraps it in a `Mutex`, calls [`begin`](CheckpointStore::begin) when it
//! takes a message, [`ack`](CheckpointStore::ack) or [`abandon`](CheckpointStore::abandon)
//! when the message is done, and [`flush`](CheckpointStore::flush) (or
//! [`flush_if_due`](CheckpointStore::flush_if_due)) from a timer and at shutdown.
//!
//! # The guarantee
//!
//! A stored replay id is always that of an event which the MQTT broker acknowledged (or which
//! the bridge dropped on purpose, see [`abandon`](CheckpointStore::abandon)) **and every
//! event received before it on that channel was too**. Nothing still in flight, and nothing
//! received after an event still in flight, is ever covered by a stored id. When the bridge
//! resubscribes from a stored id the server delivers every retained event after it, so
//! delivery to MQTT is **at-least-once**: no event is lost, some may be published twice.
//!
//! Duplicates appear in exactly two places:
//!
//! - **The in-flight window.** Events received after the oldest unacknowledged one may already
//!   be acknowledged when the bridge stops, but the checkpoint cannot pass the unacknowledged
//!   one, so they are delivered again. At most the number of messages in flight on the channel
//!   (bounded by `bridge.queue_capacity`).
//! - **The unflushed interval.** The checkpoint advances in memory on every acknowledgement and
//!   reaches the disk in batches. A crash (`kill -9`, power loss) forgets the advances since
//!   the last successful flush, and their events are delivered again: at most the events of one
//!   flush interval. A clean shutdown that flushes after draining adds none.
//!
//! Events are lost only where the store cannot help: when a stored id is older than what the
//! server still retains (the bridge's replay-gap policy reports those), and on servers
//! without replay at all.
//!
//! # Receive order, not id arithmetic
//!
//! Replay ids are opaque: Salesforce's increase but are not contiguous (`4711` may be followed
//! by `4790`), so a gap says nothing about a missing event and `id + 1` means nothing. The
//! store therefore orders the messages of a channel by the order of their
//! [`begin`](CheckpointStore::begin) calls, which must be the order in which the server
//! delivered them, and stores the id of the last message of the longest acknowledged prefix.
//! Ids are never compared. If the server delivers older events again (after a resubscribe
//! from an older position), the checkpoint may move back to them: that adds duplicates, never
//! losses.
//!
//! # Durability
//!
//! The state lives in `checkpoints.json` in the state directory (systemd `StateDirectory`):
//!
//! ```json
//! {"version": 1, "channels": {"/event/Foo": {"replay_id": 4711, "updated": "1718000000"}}}
//! ```
//!
//! `updated` is the Unix time (seconds, as a string; a number is accepted too) of the
//! channel's last advance. A flush writes `checkpoints.json.tmp` in the same directory (a new
//! file, mode 0600; whatever was at that path, a symlink included, is removed first and never
//! followed), syncs it, renames it over `checkpoints.json` and syncs the directory, so after `kill -9` or a
//! power loss the file holds either the previous or the new checkpoints in full. A leftover
//! temporary file (a flush interrupted before its rename) is ignored and removed at
//! [`open`](CheckpointStore::open). A missing file is an empty store; a file that cannot be
//! read or parsed is refused with [`CheckpointError`], never replaced by an empty store: the
//! caller decides whether to stop or start over.
//!
//! # Cost
//!
//! [`begin`](CheckpointStore::begin), [`ack`](CheckpointStore::ack) and
//! [`abandon`](CheckpointStore::abandon) work in memory in amortised constant time (one
//! allocation the first time a channel is seen). The only IO is in
//! [`open`](CheckpointStore::open) and the flush functions. To keep the file write and its
//! syncs out of the caller's lock, take a [`snapshot`](CheckpointStore::snapshot) under the
//! lock, [`write`](Snapshot::write) it without, and report it back with
//! [`flushed`](CheckpointStore::flushed).
//!
//! # Channel keys
//!
//! Channels are stored exactly as given: the store neither normalises nor validates them. The
//! bridge passes the key of the *subscription* a message arrived on,
//! `bayeux::ext::replay::channel_key(subscribed channel)`, which is the key under which the
//! replay extension sends the position, so that [`all`](CheckpointStore::all) can be handed to
//! `ReplayExtension::set` unchanged. (Versions before this one passed the channel each message
//! was delivered on; for the literal channels that replay allows the two are the same, so
//! their files load and resume unchanged.)
//!
//! # Bounds
//!
//! A store keeps at most [`MAX_CHECKPOINTS`] checkpoints. [`prune`](CheckpointStore::prune)
//! (called by the bridge at start) forgets the least recently advanced checkpoints of
//! channels nothing subscribes to any more until the store is within its bound, and
//! recording a new channel beyond the bound forgets the least recently advanced other one.
//! Messages in flight are bounded by the caller (`bridge.queue_capacity`).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod file;

use file::{
    Entry, FileV1, create_dir, decode, lock_dir, remove_leftover, sync_dir, unix_now, write_synced,
};

/// The name of the checkpoint file in the state directory.
pub const FILE_NAME: &str = "checkpoints.json";
/// The name of the temporary file a flush writes before renaming it over [`FILE_NAME`].
pub const TEMP_FILE_NAME: &str = "checkpoints.json.tmp";
/// The lock file that keeps two bridges from sharing a state directory.
pub const LOCK_FILE_NAME: &str = "checkpoints.lock";
/// The file format version this build reads and writes.
pub const VERSION: u64 = 1;
/// The most checkpoints a store keeps (see the [module docs](self#bounds)).
pub const MAX_CHECKPOINTS: usize = 1000;

/// Why the checkpoint store could not be opened or written. Each variant names the path.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The state directory could not be created or synced.
    #[error("checkpoint directory {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The checkpoint file exists but could not be read.
    #[error("cannot read checkpoint file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The checkpoint file is not a valid version 1 checkpoint file.
    #[error(
        "checkpoint file {} is corrupt: {detail}; repair it, or move it away to resume every \
         channel from its configured default",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it (with the line and column where the parser has them).
        detail: String,
    },
    /// Another process holds the state directory's lock.
    #[error(
        "{} is locked by another process: another bridge uses this state directory; give each \
         bridge its own replay.state_dir",
        path.display()
    )]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// A flush failed; the previous checkpoint file is left as it was.
    #[error("cannot write checkpoint file {}: {source}", path.display())]
    Write {
        /// The file being written or renamed.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
}

/// A message taken from a channel and not yet done. Hand it back to
/// [`ack`](CheckpointStore::ack) or [`abandon`](CheckpointStore::abandon) of the store that
/// issued it. A ticket that is dropped instead holds its channel's checkpoint back for the
/// rest of the process (safe: its events are delivered again after a restart), which is what
/// a shutdown that gives up on messages in flight wants.
#[derive(Debug)]
#[must_use = "a ticket never acknowledged holds its channel's checkpoint back"]
pub struct Ticket {
    channel: Arc<str>,
    seq: u64,
}

impl Ticket {
    /// The channel the message was taken from.
    pub fn channel(&self) -> &str {
        &self.channel
    }
}

/// A channel's checkpoint moved: what to pass to `ReplayExtension::set` so that a
/// re-handshake in this process resumes from it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advance {
    /// The channel, as given to [`begin`](CheckpointStore::begin).
    pub channel: Arc<str>,
    /// Its new checkpoint.
    pub replay_id: i64,
}

/// The durable per-channel replay checkpoints plus, per channel, the messages in flight in
/// receive order. See the [module docs](self) for the guarantee.
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    file: PathBuf,
    temp: PathBuf,
    /// The checkpoints, persisted or not.
    channels: BTreeMap<String, Entry>,
    /// Per channel, the messages begun and not yet passed by the checkpoint.
    windows: HashMap<Arc<str>, Window>,
    /// Bumped by every change to `channels`.
    generation: u64,
    /// The generation the file holds.
    persisted: u64,
    /// When [`flush_if_due`](Self::flush_if_due) last tried to write.
    last_attempt: Option<Instant>,
    /// Held (locked) for the store's lifetime; the lock goes with the process.
    _lock: File,
}

impl CheckpointStore {
    /// Opens the store in `dir`: creates the directory if it is missing (mode 0700 on unix),
    /// removes a leftover temporary file and loads `checkpoints.json` if there is one. A
    /// missing file is an empty store; an unreadable or corrupt one is an error.
    pub fn open(dir: &Path) -> Result<CheckpointStore, CheckpointError> {
        create_dir(dir)?;
        let lock = lock_dir(dir)?;
        let file = dir.join(FILE_NAME);
        let temp = dir.join(TEMP_FILE_NAME);
        remove_leftover(&temp);
        let channels = match crate::files::read_capped(&file, crate::files::MAX_CONFIG_BYTES) {
            Ok(bytes) => decode(&bytes).map_err(|detail| CheckpointError::Corrupt {
                path: file.clone(),
                detail,
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(CheckpointError::Read { path: file, source }),
        };
        Ok(CheckpointStore {
            dir: dir.to_owned(),
            file,
            temp,
            channels,
            windows: HashMap::new(),
            generation: 0,
            persisted: 0,
            last_attempt: None,
            _lock: lock,
        })
    }

    /// The checkpoint file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The checkpoint of `channel`: the replay id to resume from.
    pub fn get(&self, channel: &str) -> Option<i64> {
        self.channels.get(channel).map(|e| e.replay_id)
    }

    /// Every checkpoint, by channel: what to `ReplayExtension::set` at startup.
    pub fn all(&self) -> BTreeMap<String, i64> {
        self.channels
            .iter()
            .map(|(channel, e)| (channel.clone(), e.replay_id))
            .collect()
    }

    /// Forgets the checkpoint of `channel` (for example one the server rejected, once the
    /// replay-gap policy has chosen where to resume) and returns it. Messages in flight on the
    /// channel still advance it when they are done.
    pub fn remove(&mut self, channel: &str) -> Option<i64> {
        let removed = self.channels.remove(channel)?;
        self.generation += 1;
        Some(removed.replay_id)
    }

    /// Sets the checkpoint of `channel` to `replay_id` (for example `-1` or `-2` after the
    /// server refused the stored id, so that a restart resumes where the replay-gap policy
    /// chose, not from the configured default). Messages in flight on the channel still
    /// advance it when they are done.
    pub fn reset(&mut self, channel: &str, replay_id: i64) {
        let entry = Entry {
            replay_id,
            updated: unix_now(),
        };
        self.channels.insert(channel.to_owned(), entry);
        self.generation += 1;
    }

    /// Forgets checkpoints until at most `limit` are left, least recently advanced first, and
    /// only those of channels not in `keep` (the channels subscribed to now, whose positions
    /// are always kept). Returns the forgotten channels; the next flush writes the file
    /// without them.
    pub fn prune(&mut self, keep: &BTreeSet<String>, limit: usize) -> Vec<String> {
        let excess = self.channels.len().saturating_sub(limit);
        if excess == 0 {
            return Vec::new();
        }
        let mut stale: Vec<(u64, String)> = self
            .channels
            .iter()
            .filter(|(channel, _)| !keep.contains(*channel))
            .map(|(channel, entry)| (entry.updated, channel.clone()))
            .collect();
        stale.sort();
        let forgotten: Vec<String> = stale
            .into_iter()
            .take(excess)
            .map(|(_, channel)| channel)
            .collect();
        for channel in &forgotten {
            self.channels.remove(channel);
        }
        if !forgotten.is_empty() {
            self.generation += 1;
        }
        forgotten
    }

    /// How many checkpoints the store holds.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    /// Whether the store holds no checkpoint.
    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Records that the message with `replay_id` was taken from `channel`. Call it in the
    /// order the server delivered the channel's messages: that order, not the ids, decides
    /// what the checkpoint may pass.
    pub fn begin(&mut self, channel: &str, replay_id: i64) -> Ticket {
        match self.windows.get_mut(channel) {
            Some(window) => window.begin(replay_id),
            None => {
                let mut window = Window::new(Arc::from(channel));
                let ticket = window.begin(replay_id);
                self.windows.insert(Arc::clone(&window.channel), window);
                ticket
            }
        }
    }

    /// The broker acknowledged the ticket's message. Advances the channel's checkpoint over
    /// every message now done that has no earlier message still in flight, and returns the new
    /// checkpoint if it changed.
    pub fn ack(&mut self, ticket: Ticket) -> Option<Advance> {
        self.complete(ticket)
    }

    /// The ticket's message will not be forwarded and must not be delivered again: dropped by
    /// policy (unmapped channel, own echo, a publish the broker refused for good, ...) and
    /// counted as such. For the checkpoint it is done, exactly like [`ack`](Self::ack). A
    /// message that should be delivered again after a restart is not abandoned: drop its
    /// ticket instead.
    pub fn abandon(&mut self, ticket: Ticket) -> Option<Advance> {
        self.complete(ticket)
    }

    /// How many messages of `channel` the checkpoint has not passed yet: those in flight plus
    /// those done but waiting behind an earlier one.
    pub fn in_flight(&self, channel: &str) -> usize {
        self.windows.get(channel).map_or(0, |w| w.pending.len())
    }

    /// Whether some checkpoint changed since the last successful flush.
    pub fn dirty(&self) -> bool {
        self.generation != self.persisted
    }

    /// Writes the checkpoints if they changed since the last successful flush (see the
    /// [module docs](self#durability) for how). On error the store stays dirty and the file
    /// keeps its previous content.
    pub fn flush(&mut self) -> Result<(), CheckpointError> {
        if let Some(snapshot) = self.snapshot() {
            snapshot.write()?;
            self.flushed(snapshot);
        }
        Ok(())
    }

    /// [`flush`](Self::flush)es when the store is dirty and the last attempt made here is at
    /// least `interval` before `now` (or there was none), and returns whether it wrote. Call
    /// it as often as convenient (after each ack, from a timer): the file is written at most
    /// once per `interval`, failed attempts included. A longer interval costs less IO and, after
    /// a crash, more duplicates: up to `interval` of acknowledged events are delivered again.
    pub fn flush_if_due(
        &mut self,
        now: Instant,
        interval: Duration,
    ) -> Result<bool, CheckpointError> {
        if !self.dirty() {
            return Ok(false);
        }
        if self
            .last_attempt
            .is_some_and(|last| now.saturating_duration_since(last) < interval)
        {
            return Ok(false);
        }
        self.last_attempt = Some(now);
        self.flush()?;
        Ok(true)
    }

    /// A copy of the checkpoints to write, or `None` when nothing changed since the last
    /// successful flush. Write it with [`Snapshot::write`] (no borrow of the store, so outside
    /// the caller's lock), then report success with [`flushed`](Self::flushed). At most one
    /// snapshot may be written at a time: they share the temporary file.
    pub fn snapshot(&self) -> Option<Snapshot> {
        self.dirty().then(|| Snapshot {
            dir: self.dir.clone(),
            file: self.file.clone(),
            temp: self.temp.clone(),
            generation: self.generation,
            file_content: FileV1 {
                version: VERSION,
                channels: self.channels.clone(),
            },
        })
    }

    /// `snapshot` was written: the store is clean unless something changed after it was taken.
    pub fn flushed(&mut self, snapshot: Snapshot) {
        self.persisted = self.persisted.max(snapshot.generation);
    }

    fn complete(&mut self, ticket: Ticket) -> Option<Advance> {
        let replay_id = self
            .windows
            .get_mut(&*ticket.channel)?
            .complete(ticket.seq)?;
        let updated = unix_now();
        match self.channels.get_mut(&*ticket.channel) {
            Some(entry) if entry.replay_id == replay_id => return None,
            Some(entry) => *entry = Entry { replay_id, updated },
            None => {
                let entry = Entry { replay_id, updated };
                self.channels.insert(ticket.channel.to_string(), entry);
                if self.channels.len() > MAX_CHECKPOINTS {
                    self.evict_oldest_except(&ticket.channel);
                }
            }
        }
        self.generation += 1;
        Some(Advance {
            channel: ticket.channel,
            replay_id,
        })
    }
}

impl CheckpointStore {
    /// Forgets the least recently advanced checkpoint other than `channel`'s.
    fn evict_oldest_except(&mut self, channel: &str) {
        let oldest = self
            .channels
            .iter()
            .filter(|(c, _)| c.as_str() != channel)
            .min_by_key(|(_, entry)| entry.updated)
            .map(|(c, _)| c.clone());
        if let Some(oldest) = oldest {
            self.channels.remove(&oldest);
        }
    }
}

/// The checkpoints as of [`CheckpointStore::snapshot`], ready to be written.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    file: PathBuf,
    temp: PathBuf,
    generation: u64,
    file_content: FileV1,
}

impl Snapshot {
    /// Writes the checkpoint file atomically and durably: the temporary file, synced, renamed
    /// over the checkpoint file, then the directory synced. If any step fails the checkpoint
    /// file holds its previous content (or, if only the directory sync failed, the new one
    /// without the guarantee that it survives a power loss).
    pub fn write(&self) -> Result<(), CheckpointError> {
        let write_error = |path: &Path, source| CheckpointError::Write {
            path: path.to_owned(),
            source,
        };
        // Plain maps of strings and integers: serialising cannot fail, but an empty file must
        // never replace a good one, so a failure is still an error.
        let bytes = serde_json::to_vec_pretty(&self.file_content)
            .map_err(|e| write_error(&self.temp, io::Error::other(e)))?;
        if let Err(source) = write_synced(&self.temp, &bytes) {
            // Best effort: `open` ignores a leftover temporary file anyway.
            let _ = fs::remove_file(&self.temp);
            return Err(write_error(&self.temp, source));
        }
        fs::rename(&self.temp, &self.file).map_err(|source| write_error(&self.file, source))?;
        // The rename is durable only once the directory entry is.
        sync_dir(&self.dir).map_err(|source| CheckpointError::Dir {
            path: self.dir.clone(),
            source,
        })
    }
}

/// Per channel, the messages begun and not yet passed by the checkpoint, in receive order.
#[derive(Debug)]
struct Window {
    channel: Arc<str>,
    /// The sequence number of `pending[0]`.
    first_seq: u64,
    pending: VecDeque<Pending>,
}

#[derive(Debug)]
struct Pending {
    replay_id: i64,
    done: bool,
}

impl Window {
    fn new(channel: Arc<str>) -> Self {
        Window {
            channel,
            first_seq: 0,
            pending: VecDeque::new(),
        }
    }

    fn begin(&mut self, replay_id: i64) -> Ticket {
        let seq = self.first_seq + self.pending.len() as u64;
        self.pending.push_back(Pending {
            replay_id,
            done: false,
        });
        Ticket {
            channel: Arc::clone(&self.channel),
            seq,
        }
    }

    /// Marks message `seq` done and pops the done prefix; returns the replay id of the last
    /// message popped, if any.
    fn complete(&mut self, seq: u64) -> Option<i64> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let pending = self.pending.get_mut(index)?;
        if pending.done {
            return None;
        }
        pending.done = true;
        let mut last = None;
        while let Some(front) = self.pending.front() {
            if !front.done {
                break;
            }
            last = Some(front.replay_id);
            self.pending.pop_front();
            self.first_seq += 1;
        }
        last
    }
}

#[cfg(test)]
mod tests;

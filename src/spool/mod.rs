//! A durable spool: named FIFO queues of byte strings kept on disk while the side they are
//! for is down, shared by one byte budget.
//!
//! A leaf module: it takes a directory and a byte budget and knows nothing of Bayeux, MQTT,
//! the bridge or config files.
//!
//! # Format
//!
//! One [redb](https://docs.rs/redb) database file per queue, `<dir>/<name>.redb`, with two
//! tables:
//!
//! - `entries`: `u64` sequence number → value. A value is a header of [`HEADER_LEN`] bytes
//!   (the entry format version, [`ENTRY_VERSION`], then the append time as Unix
//!   milliseconds, `u64` little-endian) followed by the entry's bytes.
//! - `meta`: `&str` → `u64`: `format_version` ([`FORMAT_VERSION`]) and `next_seq`, the next
//!   sequence number to assign, so numbers keep growing across restarts even when the queue
//!   was emptied. Numbers start at 1.
//!
//! A file of another format version, or of a redb file format this build cannot read, is
//! [`SpoolError::Incompatible`]; a file that fails its checksums or holds malformed values is
//! [`SpoolError::Corrupt`]. Both name the file and the recovery command,
//! `bayeux-mqtt-bridge spool-recover --config FILE`, which moves such files aside
//! ([`recover()`]).
//!
//! # Durability
//!
//! [`Queue::append`] resolves only after the transaction holding its entries has been
//! committed with redb's `Durability::Immediate` (fsync). One writer thread per queue
//! commits: it takes every request waiting and commits them in one transaction (group
//! commit), so concurrent appends share an fsync. Removals ([`Queue::remove`]) ride on the
//! next commit, at most [`REMOVE_DELAY`] later: after a crash an entry removed just before it
//! may be read again (at-least-once). Every commit and fsync runs on the writer thread,
//! never on an async worker; reads run on the caller's thread and only take a redb read
//! transaction (a snapshot; they never wait for the writer).
//!
//! After a crash, power loss or SIGKILL, redb finds the last commit whose checksums hold and
//! rolls back a torn one when the file is opened; [`Spool::queue`] additionally checks the
//! whole file's checksums and every value's header, so damage is reported at start rather
//! than in the middle of a delivery.
//!
//! # Budget
//!
//! `max_bytes` bounds the logical size of all queues of a [`Spool`]: for each entry its
//! bytes plus [`ENTRY_OVERHEAD`] (key and header). The files themselves are larger: B-tree
//! pages are partly filled, and redb grows a file in large steps and keeps freed pages for
//! reuse rather than shrinking it. 100 000 entries of 200 bytes made a 74 MB file for 20 MB
//! of entries (3.7 times; `examples/spool_bench.rs`).
//!
//! # Why redb
//!
//! Pure Rust (no C toolchain, no `unsafe` FFI), ACID transactions with crash recovery and
//! checksummed pages, one file per database, maintained, and small. A write-ahead log of
//! our own would need its own torn-write detection, compaction and tests; SQLite would
//! bring a C library for a key → value need.

mod format;
mod queue;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

pub use format::{ENTRY_OVERHEAD, ENTRY_VERSION, FORMAT_VERSION, HEADER_LEN};
pub use queue::{Durable, Entry, Queue, QueueStats};
pub use recover::{Recovered, Recovery, recover};

/// How long a removal may wait for a commit when no append comes along.
pub const REMOVE_DELAY: Duration = Duration::from_millis(50);

/// The command that moves damaged spool files aside, named in errors.
pub const RECOVER_COMMAND: &str = "bayeux-mqtt-bridge spool-recover --config FILE";

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The batch would take the spool over its byte budget; nothing of it was written.
    #[error(
        "the spool is full: {needed} more bytes would exceed its budget of {max} bytes \
         ({used} in use)"
    )]
    Full {
        /// Bytes the refused batch counts for.
        needed: u64,
        /// Bytes in use when it was refused.
        used: u64,
        /// The budget.
        max: u64,
    },
    /// The file is damaged (failed checksums, malformed values).
    #[error(
        "{}: the spool file is damaged: {reason}; run `{RECOVER_COMMAND}` to move it \
         aside (its entries may be lost)", file.display()
    )]
    Corrupt {
        /// The queue file.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file was written in a format this build cannot read.
    #[error(
        "{}: the spool file has {what} version {found_version}, this build reads version \
         {supported_version}; run `{RECOVER_COMMAND}` to move it aside, or use the build \
         that wrote it", file.display()
    )]
    Incompatible {
        /// The queue file.
        file: PathBuf,
        /// Which format: `"spool format"` or `"redb file format"`.
        what: &'static str,
        /// The version found.
        found_version: u64,
        /// The version this build reads.
        supported_version: u64,
    },
    /// The file is open in another process (another bridge on the same spool).
    #[error("{}: the spool file is in use by another process", file.display())]
    Busy {
        /// The queue file.
        file: PathBuf,
    },
    /// A file system error.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file or directory.
        file: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A queue name that cannot be a file name.
    #[error("invalid spool queue name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// The queue was closed.
    #[error("the spool queue is closed")]
    Closed,
}

impl SpoolError {
    /// The same error, for a second waiter (`io::Error` is not `Clone`).
    fn duplicate(&self) -> SpoolError {
        match self {
            SpoolError::Full { needed, used, max } => SpoolError::Full {
                needed: *needed,
                used: *used,
                max: *max,
            },
            SpoolError::Corrupt { file, reason } => SpoolError::Corrupt {
                file: file.clone(),
                reason: reason.clone(),
            },
            SpoolError::Incompatible {
                file,
                what,
                found_version,
                supported_version,
            } => SpoolError::Incompatible {
                file: file.clone(),
                what,
                found_version: *found_version,
                supported_version: *supported_version,
            },
            SpoolError::Busy { file } => SpoolError::Busy { file: file.clone() },
            SpoolError::Io { file, source } => SpoolError::Io {
                file: file.clone(),
                source: io::Error::new(source.kind(), source.to_string()),
            },
            SpoolError::InvalidName { name, reason } => SpoolError::InvalidName {
                name: name.clone(),
                reason,
            },
            SpoolError::Closed => SpoolError::Closed,
        }
    }

    fn io(file: &Path, source: io::Error) -> SpoolError {
        SpoolError::Io {
            file: file.to_owned(),
            source,
        }
    }
}

/// A spool directory and its byte budget; hands out [`Queue`]s. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Spool {
    inner: Arc<SpoolInner>,
}

#[derive(Debug)]
struct SpoolInner {
    dir: PathBuf,
    max_bytes: u64,
    /// Shared with every queue: reserved on append, released when removals commit.
    budget: Arc<Budget>,
    /// Open queues by name: a redb file can be open only once per process.
    queues: Mutex<HashMap<String, Queue>>,
}

/// The bytes in use across the queues of a spool, and a notification when some are freed.
#[derive(Debug, Default)]
struct Budget {
    max: u64,
    used: AtomicU64,
    freed: Arc<Notify>,
}

impl Budget {
    /// Takes `bytes` of the budget, or says why not.
    fn reserve(&self, bytes: u64) -> Result<(), SpoolError> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .map(drop)
            .map_err(|used| SpoolError::Full {
                needed: bytes,
                used,
                max: self.max,
            })
    }

    /// Counts bytes already on disk (a queue being opened), even over the budget.
    fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives `bytes` back and wakes whoever waits for room.
    fn release(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        // Never below zero, even if the accounting were off.
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
        self.freed.notify_waiters();
    }
}

impl Spool {
    /// Creates `dir` (mode 0700 on Unix) if needed. `max_bytes` is shared by all queues of
    /// this spool.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        create_dir(dir)?;
        Ok(Spool {
            inner: Arc::new(SpoolInner {
                dir: dir.to_owned(),
                max_bytes,
                budget: Arc::new(Budget {
                    max: max_bytes,
                    ..Budget::default()
                }),
                queues: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Opens (creating if absent) the queue `name` (file `<dir>/<name>.redb`), recovering
    /// after a crash; its entries count against `max_bytes` from the start. Opening a queue
    /// that is already open returns the same queue.
    ///
    /// Names are 1 to 100 ASCII letters, digits, `-`, `_` and `.`, not starting with `.`.
    /// Blocks while the file is checked (it is read whole): call it at start-up, or from
    /// `spawn_blocking`.
    pub fn queue(&self, name: &str) -> Result<Queue, SpoolError> {
        check_name(name)?;
        let mut queues = self
            .inner
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(queue) = queues.get(name)
            && !queue.is_closed()
        {
            return Ok(queue.clone());
        }
        let file = self.inner.dir.join(format!("{name}.redb"));
        let queue = Queue::open(file, Arc::clone(&self.inner.budget))?;
        queues.insert(name.to_owned(), queue.clone());
        Ok(queue)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The byte budget shared by all queues.
    pub fn max_bytes(&self) -> u64 {
        self.inner.max_bytes
    }

    /// Bytes in use by all open queues (entries plus [`ENTRY_OVERHEAD`] each), including
    /// appends in progress.
    pub fn used_bytes(&self) -> u64 {
        self.inner.budget.used.load(Ordering::Acquire)
    }
}

/// Checks that `dir` can hold a spool: creates it (0700 on Unix) if needed, then creates,
/// writes, syncs and removes a probe file in it. For `check` and for the daemon's start-up,
/// so that an unusable directory is reported before anything is taken from a server.
pub fn probe_dir(dir: &Path) -> Result<(), SpoolError> {
    create_dir(dir)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(b"probe")?;
            file.sync_all()
        });
    let removed = fs::remove_file(&probe);
    result.map_err(|e| SpoolError::io(&probe, e))?;
    removed.map_err(|e| SpoolError::io(&probe, e))
}

/// Creates `dir` (0700 on Unix) unless it exists, and syncs its parent so the new entry
/// survives a power loss.
fn create_dir(dir: &Path) -> Result<(), SpoolError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| SpoolError::io(dir, e))?;
    let parent = match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    sync_dir(parent).map_err(|e| SpoolError::io(parent, e))
}

/// fsyncs a directory (its entries), on Unix.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn check_name(name: &str) -> Result<(), SpoolError> {
    let invalid = |reason| {
        Err(SpoolError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 100 {
        return invalid("must be 1 to 100 characters long");
    }
    if name.starts_with('.') {
        return invalid("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return invalid("may hold only ASCII letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

//! One queue: its handle ([`Queue`]) and its writer thread, which does every commit.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{Notify, oneshot};

use super::format::{self, ENTRIES, ENTRY_OVERHEAD, META, META_NEXT_SEQ, redb_error};
use super::{Budget, REMOVE_DELAY, SpoolError};

/// One entry read back from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its sequence number (from 1, growing across restarts).
    pub seq: u64,
    /// When it was appended (millisecond precision).
    pub appended_at: SystemTime,
    /// Its bytes, as appended.
    pub data: Bytes,
}

/// Resolves once the entries of an [`Queue::append_early`] are durable (or their commit
/// failed).
#[derive(Debug)]
#[must_use = "the entries are written anyway; await this to learn when they are durable"]
pub struct Durable(oneshot::Receiver<Result<(), SpoolError>>);

impl Future for Durable {
    type Output = Result<(), SpoolError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(SpoolError::Closed)))
    }
}

/// A queue's figures, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    /// Entries on disk (removals count once committed).
    pub entries: u64,
    /// Their budget bytes (data plus [`ENTRY_OVERHEAD`] each).
    pub bytes: u64,
    /// Append time of the oldest entry on disk.
    pub oldest: Option<SystemTime>,
    /// Commits (each one fsync) since the queue was opened.
    pub commits: u64,
    /// Time spent in those commits, in seconds (the fsync-time metric).
    pub commit_seconds_total: f64,
    /// Logical bytes appended (entry data only) since the queue was opened: set against the
    /// file's growth this gives the write amplification.
    pub written_bytes: u64,
}

/// A durable FIFO queue of byte strings in one file. Cheap to clone; every clone is the same
/// queue.
#[derive(Debug, Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    file: PathBuf,
    /// `None` once closed.
    db: RwLock<Option<Arc<Database>>>,
    /// To the writer thread; `None` once closed. Held while a sequence number is assigned
    /// and the append sent, so that the writer gets appends in sequence order.
    requests: Mutex<Option<mpsc::Sender<Request>>>,
    /// The next sequence number to assign (under the `requests` lock).
    next_seq: AtomicU64,
    /// Removals not yet taken by the writer. Collected here rather than sent one by one, so
    /// that the writer thread wakes up once per batch of removals, not once per entry.
    removals: Arc<Mutex<Vec<u64>>>,
    budget: Arc<Budget>,
    appended: Arc<Notify>,
    stats: Arc<Mutex<QueueStats>>,
}

enum Request {
    Append {
        /// The sequence number of the first entry; the others follow.
        first: u64,
        entries: Vec<Bytes>,
        cost: u64,
        reply: oneshot::Sender<Result<(), SpoolError>>,
    },
    /// Removals were added to the shared list (sent when it stops being empty).
    Removals,
    Close(oneshot::Sender<()>),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every step: a panic elsewhere while
    // holding one leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Queue {
    /// Opens `file` and starts its writer thread. Blocking.
    pub(super) fn open(file: PathBuf, budget: Arc<Budget>) -> Result<Queue, SpoolError> {
        let opened = format::open(&file)?;
        let db = Arc::new(opened.db);
        let stats = Arc::new(Mutex::new(QueueStats {
            entries: opened.entries,
            bytes: opened.bytes,
            oldest: opened.oldest,
            ..QueueStats::default()
        }));
        let appended = Arc::new(Notify::new());
        let (sender, receiver) = mpsc::channel();
        let removals = Arc::new(Mutex::new(Vec::new()));
        let writer = Writer {
            removals_in: Arc::clone(&removals),
            file: file.clone(),
            db: Arc::clone(&db),
            budget: Arc::clone(&budget),
            appended: Arc::clone(&appended),
            stats: Arc::clone(&stats),
        };
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        std::thread::Builder::new()
            .name(format!("spool-{name}"))
            .spawn(move || writer.run(receiver))
            .map_err(|e| SpoolError::io(&file, e))?;
        budget.add(opened.bytes);
        Ok(Queue {
            shared: Arc::new(Shared {
                file,
                db: RwLock::new(Some(db)),
                requests: Mutex::new(Some(sender)),
                next_seq: AtomicU64::new(opened.next_seq),
                removals,
                budget,
                appended,
                stats,
            }),
        })
    }

    /// The queue's file.
    pub fn file(&self) -> &Path {
        &self.shared.file
    }

    /// Appends `entries` in order and resolves once they are durable on disk (a redb commit
    /// with `Durability::Immediate`). Concurrent appends are group-committed: the queue's
    /// writer thread takes every request waiting and commits them in one transaction.
    /// Returns the assigned sequence numbers, consecutive, in order.
    ///
    /// `Err(SpoolError::Full { .. })` when the batch would take the spool over its budget:
    /// nothing of it is written (wait for [`changed`](Self::changed) and retry; a batch
    /// larger than the whole budget never fits). Dropping the future does not cancel the
    /// write.
    pub async fn append(&self, entries: Vec<Bytes>) -> Result<Vec<u64>, SpoolError> {
        let count = entries.len() as u64;
        let (first, durable) = self.append_early(entries)?;
        durable.await?;
        Ok((first..first + count).collect())
    }

    /// Starts appending `entries` and returns at once with the sequence number of the first
    /// (the others follow it) and a future that resolves once they are durable, as
    /// [`append`](Self::append) does. The numbers are known before the commit, so a reader
    /// may act on the entries while they are written, e.g. send them on, and
    /// [`remove`](Self::remove) them before the commit finished (the removal goes into the
    /// same or a later commit). If the commit fails, the future says so and those numbers
    /// are never used; appending the entries again gives them new numbers.
    ///
    /// `Err(SpoolError::Full { .. })` or `Err(SpoolError::Closed)` at once, with nothing
    /// written; an empty `entries` is durable at once.
    pub fn append_early(&self, entries: Vec<Bytes>) -> Result<(u64, Durable), SpoolError> {
        if entries.is_empty() {
            let (reply, answer) = oneshot::channel();
            let _ = reply.send(Ok(()));
            return Ok((
                self.shared.next_seq.load(Ordering::Relaxed),
                Durable(answer),
            ));
        }
        let cost = entries
            .iter()
            .map(|e| e.len() as u64 + ENTRY_OVERHEAD)
            .sum();
        self.shared.budget.reserve(cost)?;
        let (reply, answer) = oneshot::channel();
        let count = entries.len() as u64;
        let requests = lock(&self.shared.requests);
        let first = self.shared.next_seq.load(Ordering::Relaxed);
        let sent = match &*requests {
            Some(sender) => sender
                .send(Request::Append {
                    first,
                    entries,
                    cost,
                    reply,
                })
                .is_ok(),
            None => false,
        };
        if !sent {
            drop(requests);
            self.shared.budget.release(cost);
            return Err(SpoolError::Closed);
        }
        self.shared.next_seq.store(first + count, Ordering::Relaxed);
        drop(requests);
        // The writer releases the reservation itself if the commit fails.
        Ok((first, Durable(answer)))
    }

    /// Up to `limit` entries with sequence number >= `from`, in order. Blocking, but cheap:
    /// a redb read transaction, which never waits for the writer. Entries removed but not
    /// yet committed are still returned: readers keep their own position.
    pub fn read_from(&self, from: u64, limit: usize) -> Result<Vec<Entry>, SpoolError> {
        let db = self
            .shared
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(SpoolError::Closed)?;
        let file = &self.shared.file;
        let txn = db.begin_read().map_err(|e| redb_error(file, e))?;
        let table = txn.open_table(ENTRIES).map_err(|e| redb_error(file, e))?;
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in table.range(from..).map_err(|e| redb_error(file, e))? {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(|e| redb_error(file, e))?;
            let (appended_at, data) =
                format::decode(value.value()).map_err(|r| format::corrupt(file, r))?;
            out.push(Entry {
                seq: key.value(),
                appended_at,
                data: Bytes::copy_from_slice(data),
            });
        }
        Ok(out)
    }

    /// The entry was delivered: it is removed. Removals go into the writer's next commit
    /// (within [`REMOVE_DELAY`], or with the next append), not fsync'd one by one; their
    /// bytes return to the budget once committed. Unknown numbers are ignored; so is a
    /// removal after [`close`](Self::close).
    pub fn remove(&self, seq: u64) {
        if self.is_closed() {
            return;
        }
        let first = {
            let mut removals = lock(&self.shared.removals);
            removals.push(seq);
            removals.len() == 1
        };
        if first {
            self.send(Request::Removals);
        }
    }

    /// Resolves when anything was appended to this queue, or freed in any queue of the
    /// spool, after the call (not when the future is first polled), or when the queue is
    /// closed. For a reader waiting for entries and for a writer waiting for room after
    /// [`SpoolError::Full`]. A tokio `Notify` underneath: wake-ups are not counted, so
    /// check the queue again after each one.
    pub fn changed(&self) -> impl Future<Output = ()> + Send + 'static {
        let appended = Arc::clone(&self.shared.appended).notified_owned();
        let freed = Arc::clone(&self.shared.budget.freed).notified_owned();
        async move {
            tokio::select! {
                () = appended => {}
                () = freed => {}
            }
        }
    }

    /// Commits pending removals durably, stops the writer thread and closes the file
    /// (idempotent). Appends waiting when it is called are committed first; later calls
    /// fail with [`SpoolError::Closed`]. Called at shutdown.
    pub async fn close(&self) {
        let sender = lock(&self.shared.requests).take();
        let Some(sender) = sender else {
            return;
        };
        let (done, finished) = oneshot::channel();
        if sender.send(Request::Close(done)).is_ok() {
            let _ = finished.await;
        }
        drop(sender);
        self.shared
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // Its entries no longer count against the spool (they will again when reopened).
        let bytes = lock(&self.shared.stats).bytes;
        self.shared.budget.release(bytes);
        self.shared.appended.notify_waiters();
    }

    /// The queue's figures.
    pub fn stats(&self) -> QueueStats {
        *lock(&self.shared.stats)
    }

    pub(super) fn is_closed(&self) -> bool {
        lock(&self.shared.requests).is_none()
    }

    /// Hands a request to the writer; false once closed.
    fn send(&self, request: Request) -> bool {
        match &*lock(&self.shared.requests) {
            Some(sender) => sender.send(request).is_ok(),
            None => false,
        }
    }
}

/// The writer thread's state.
struct Writer {
    /// [`Queue::remove`]'s list.
    removals_in: Arc<Mutex<Vec<u64>>>,
    file: PathBuf,
    db: Arc<Database>,
    budget: Arc<Budget>,
    appended: Arc<Notify>,
    stats: Arc<Mutex<QueueStats>>,
}

/// One append of a commit.
struct Append {
    first: u64,
    entries: Vec<Bytes>,
    cost: u64,
    reply: oneshot::Sender<Result<(), SpoolError>>,
}

/// Appends of one commit, in arrival (and so sequence) order.
type Appends = Vec<Append>;

/// Sorts one request into the appends of the next commit or the close requests.
fn take(request: Request, appends: &mut Appends, closing: &mut Vec<oneshot::Sender<()>>) {
    match request {
        Request::Append {
            first,
            entries,
            cost,
            reply,
        } => appends.push(Append {
            first,
            entries,
            cost,
            reply,
        }),
        Request::Removals => {}
        Request::Close(done) => closing.push(done),
    }
}

/// What one commit changed.
struct Committed {
    removed: u64,
    freed: u64,
    oldest: Option<SystemTime>,
}

impl Writer {
    /// Takes requests until closed: every request waiting goes into one commit; removals
    /// alone wait up to [`REMOVE_DELAY`] for company. Removals are not sent one by one: the
    /// first of a batch wakes the thread ([`Request::Removals`]), and the list is taken when
    /// the next commit is made, so the thread wakes about once per commit, not per removal.
    fn run(mut self, requests: mpsc::Receiver<Request>) {
        let mut removals: Vec<u64> = Vec::new();
        let mut deadline: Option<Instant> = None;
        let mut closing: Vec<oneshot::Sender<()>> = Vec::new();
        let mut disconnected = false;
        loop {
            let first = match deadline {
                None => requests.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) => requests.recv_timeout(at.saturating_duration_since(Instant::now())),
            };
            let mut appends: Appends = Vec::new();
            match first {
                Ok(Request::Removals) => {
                    deadline.get_or_insert_with(|| Instant::now() + REMOVE_DELAY);
                }
                Ok(request) => take(request, &mut appends, &mut closing),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            let due = deadline.is_some_and(|at| Instant::now() >= at);
            let stopping = disconnected || !closing.is_empty();
            if appends.is_empty() && !due && !stopping {
                // Removals only, not due yet: wait for company or the deadline.
                continue;
            }
            let stopping = self.gather(
                &requests,
                &mut appends,
                &mut removals,
                &mut closing,
                disconnected,
            );
            deadline = self.commit_batch(appends, &mut removals, stopping);
            if stopping {
                break;
            }
        }
        // The file closes with the last handle: ours, before anyone is told it is closed.
        drop(self);
        for done in closing {
            let _ = done.send(());
        }
    }

    /// Gathers the rest of a commit: the removals made so far, and every request waiting.
    /// True if the writer stops after it (the channel is `disconnected` or a close was asked
    /// for); then every removal made before that is in it too.
    fn gather(
        &self,
        requests: &mpsc::Receiver<Request>,
        appends: &mut Appends,
        removals: &mut Vec<u64>,
        closing: &mut Vec<oneshot::Sender<()>>,
        disconnected: bool,
    ) -> bool {
        // Removals are taken before the channel is drained: the append of every entry
        // removed so far was sent before its removal, so it is in this commit or an
        // earlier one, never a later one.
        removals.extend(std::mem::take(&mut *lock(&self.removals_in)));
        while let Ok(request) = requests.try_recv() {
            take(request, appends, closing);
        }
        let stopping = disconnected || !closing.is_empty();
        if stopping {
            // Removals made before `close` was called, after the take above; their
            // appends were sent before `close`, so they were drained above.
            removals.extend(std::mem::take(&mut *lock(&self.removals_in)));
        }
        stopping
    }

    /// Commits a batch, if there is one; the removals' deadline after it. Removals a failed
    /// commit did not make are kept for the next and retried after another delay (unless
    /// the writer is `stopping`).
    fn commit_batch(
        &mut self,
        appends: Appends,
        removals: &mut Vec<u64>,
        stopping: bool,
    ) -> Option<Instant> {
        if appends.is_empty() && removals.is_empty() {
            return None;
        }
        let failed = self.commit(appends, removals);
        if failed && !stopping {
            Some(Instant::now() + REMOVE_DELAY)
        } else {
            removals.clear();
            None
        }
    }

    /// Commits `appends` and `removals` in one transaction and answers the appends. True if
    /// the commit failed.
    fn commit(&mut self, appends: Appends, removals: &[u64]) -> bool {
        let started = Instant::now();
        let now = SystemTime::now();
        let result = self.transaction(&appends, removals, now);
        let elapsed = started.elapsed().as_secs_f64();
        let cost: u64 = appends.iter().map(|a| a.cost).sum();
        match result {
            Ok(committed) => {
                let count: u64 = appends.iter().map(|a| a.entries.len() as u64).sum();
                let written: u64 = appends
                    .iter()
                    .flat_map(|a| a.entries.iter())
                    .map(|e| e.len() as u64)
                    .sum();
                {
                    let mut stats = lock(&self.stats);
                    stats.entries = (stats.entries + count).saturating_sub(committed.removed);
                    stats.bytes = (stats.bytes + cost).saturating_sub(committed.freed);
                    stats.oldest = committed.oldest;
                    stats.commits += 1;
                    stats.commit_seconds_total += elapsed;
                    stats.written_bytes += written;
                }
                // Readers first: a `changed` made once an append resolved must not be woken
                // by that append's own commit.
                if count > 0 {
                    self.appended.notify_waiters();
                }
                for append in appends {
                    let _ = append.reply.send(Ok(()));
                }
                self.budget.release(committed.freed);
                false
            }
            Err(error) => {
                tracing::warn!(
                    file = %self.file.display(),
                    %error,
                    "Spool commit failed."
                );
                self.budget.release(cost);
                for append in appends {
                    let _ = append.reply.send(Err(error.duplicate()));
                }
                true
            }
        }
    }

    /// One write transaction: the batches from `next_seq` on, the removals, `next_seq`.
    fn transaction(
        &self,
        appends: &[Append],
        removals: &[u64],
        now: SystemTime,
    ) -> Result<Committed, SpoolError> {
        let file = &self.file;
        let txn = self.db.begin_write().map_err(|e| redb_error(file, e))?;
        let mut committed = Committed {
            removed: 0,
            freed: 0,
            oldest: None,
        };
        {
            let mut table = txn.open_table(ENTRIES).map_err(|e| redb_error(file, e))?;
            let mut next = None;
            for append in appends {
                for (seq, entry) in (append.first..).zip(&append.entries) {
                    let value = format::encode(entry, now);
                    table
                        .insert(seq, value.as_slice())
                        .map_err(|e| redb_error(file, e))?;
                    next = Some(seq + 1);
                }
            }
            for &removal in removals {
                if let Some(old) = table.remove(removal).map_err(|e| redb_error(file, e))? {
                    committed.removed += 1;
                    committed.freed += format::cost(old.value().len());
                }
            }
            if let Some((_, value)) = table.first().map_err(|e| redb_error(file, e))? {
                let (at, _) =
                    format::decode(value.value()).map_err(|r| format::corrupt(file, r))?;
                committed.oldest = Some(at);
            }
            if let Some(next) = next {
                let mut meta = txn.open_table(META).map_err(|e| redb_error(file, e))?;
                meta.insert(META_NEXT_SEQ, next)
                    .map_err(|e| redb_error(file, e))?;
            }
        }
        txn.commit().map_err(|e| redb_error(file, e))?;
        Ok(committed)
    }
}

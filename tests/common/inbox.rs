//! An event-driven collector for tests: a background task or thread pushes items, tests wait
//! until a condition holds for what arrived so far (no sleeps).

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Items pushed by a background task or thread, with event-driven waits on them.
pub struct Inbox<T> {
    tx: Arc<watch::Sender<Vec<T>>>,
}

impl<T> Clone for Inbox<T> {
    fn clone(&self) -> Self {
        Inbox {
            tx: Arc::clone(&self.tx),
        }
    }
}

impl<T: Clone + Debug> Inbox<T> {
    pub fn new() -> Self {
        Inbox {
            tx: Arc::new(watch::channel(Vec::new()).0),
        }
    }

    pub fn push(&self, item: T) {
        self.tx.send_modify(|items| items.push(item));
    }

    pub fn snapshot(&self) -> Vec<T> {
        self.tx.borrow().clone()
    }

    /// How many items arrived so far.
    pub fn count(&self) -> usize {
        self.tx.borrow().len()
    }

    /// Waits until `done` holds for everything received so far.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[T]) -> bool,
    ) {
        let mut rx = self.tx.subscribe();
        if tokio::time::timeout(timeout, rx.wait_for(|items| done(items)))
            .await
            .is_err()
        {
            let items = self.snapshot();
            let skip = items.len().saturating_sub(12);
            panic!(
                "waiting for {what}: timed out after {timeout:?}; {} items arrived, the last: \
                 {:#?}",
                items.len(),
                &items[skip..]
            );
        }
    }
}

//! Waiting for outcomes on one task: each pipeline hands over, per message, a future that
//! awaits the destination's answer and records it (acknowledgement, counters, checkpoint).
//! One task runs them all concurrently instead of one spawned task per message.

use std::future::Future;
use std::pin::Pin;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tracing::Instrument;

/// One message's wait for its outcome.
pub(super) type Settling = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a pipeline hands its [`Settling`] futures.
pub(super) struct Settler {
    tx: mpsc::UnboundedSender<Settling>,
}

impl Settler {
    /// Starts the task, in the current span. It ends once every `Settler` is dropped and the
    /// last future handed over is done, so a pipeline that stops does not cut short the
    /// messages still waiting (the drain waits for their queue permits).
    pub(super) fn start() -> Settler {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(settle_all(rx).in_current_span());
        Settler { tx }
    }

    /// Hands over `settling`, which runs to its end whatever happens to the caller.
    pub(super) fn settle(&self, settling: impl Future<Output = ()> + Send + 'static) {
        if let Err(mpsc::error::SendError(orphan)) = self.tx.send(Box::pin(settling)) {
            // The task ends only after every Settler is gone; never lose a message anyway.
            tokio::spawn(orphan);
        }
    }
}

async fn settle_all(mut incoming: mpsc::UnboundedReceiver<Settling>) {
    let mut running = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            next = incoming.recv(), if open => match next {
                Some(settling) => running.push(settling),
                None => open = false,
            },
            Some(()) = running.next(), if !running.is_empty() => {}
            else => return,
        }
    }
}

//! How a publish's verdict reaches its caller: a [`Verdict`] future per publish
//! ([`Client::publish_queued`]), or one channel of tagged verdicts for many publishes
//! ([`Client::publish_tagged`]).
//!
//! A caller that publishes continuously and records each verdict would otherwise hold a
//! [`Verdict`] per message: a oneshot channel each, and something to poll them all. Instead
//! it tags each publish with a number of its own and reads the verdicts, tagged the same way,
//! from one channel ([`verdict_channel`]).
//!
//! [`Client::publish_queued`]: super::Client::publish_queued
//! [`Client::publish_tagged`]: super::Client::publish_tagged

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use super::error::PublishError;
use super::message::Message;

/// The server's verdict on a publish: its reply (`successful: true`), or why it failed.
pub type PublishResult = Result<Message, PublishError>;

/// The server's verdict on a queued publish (see [`Client::publish_queued`]).
///
/// [`Client::publish_queued`]: super::Client::publish_queued
#[derive(Debug)]
pub struct Verdict {
    rx: oneshot::Receiver<PublishResult>,
}

impl Future for Verdict {
    type Output = PublishResult;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(PublishError::Closed)))
    }
}

/// The verdict on one tagged publish ([`Client::publish_tagged`]).
///
/// [`Client::publish_tagged`]: super::Client::publish_tagged
#[derive(Debug)]
pub struct TaggedVerdict {
    /// The caller's tag of the publish.
    pub tag: u64,
    /// The server's reply, or why the publish failed ([`PublishError::Closed`] when the
    /// client stopped before a verdict).
    pub result: PublishResult,
}

/// Where tagged publishes report; cloning is cheap.
#[derive(Debug, Clone)]
pub struct VerdictSender {
    tx: mpsc::UnboundedSender<TaggedVerdict>,
}

/// The verdicts of the publishes tagged for this channel's [`VerdictSender`]s, each exactly
/// once, in the order they are known (not necessarily the publishing order).
///
/// The channel is unbounded: it holds at most one verdict per publish in flight, which the
/// caller bounds by how many it lets wait.
#[derive(Debug)]
pub struct Verdicts {
    rx: mpsc::UnboundedReceiver<TaggedVerdict>,
}

/// A new channel of tagged verdicts.
pub fn verdict_channel() -> (VerdictSender, Verdicts) {
    let (tx, rx) = mpsc::unbounded_channel();
    (VerdictSender { tx }, Verdicts { rx })
}

impl Verdicts {
    /// The next verdict. `None` once every [`VerdictSender`] is dropped and every publish
    /// tagged for this channel has reported.
    pub async fn recv(&mut self) -> Option<TaggedVerdict> {
        self.rx.recv().await
    }

    /// The next verdict if one is there already.
    pub fn try_recv(&mut self) -> Option<TaggedVerdict> {
        self.rx.try_recv().ok()
    }
}

/// Where the driver sends a publish's verdict.
#[derive(Debug)]
pub(super) enum Reply {
    /// To its own [`Verdict`].
    Once(oneshot::Sender<PublishResult>),
    /// Tagged, on the caller's channel.
    Tagged(TaggedReply),
}

impl Reply {
    /// A reply to a [`Verdict`] of its own.
    pub(super) fn once() -> (Reply, Verdict) {
        let (tx, rx) = oneshot::channel();
        (Reply::Once(tx), Verdict { rx })
    }

    /// A reply tagged `tag` on `verdicts`.
    pub(super) fn tagged(tag: u64, verdicts: &VerdictSender) -> Reply {
        Reply::Tagged(TaggedReply {
            tag,
            tx: Some(verdicts.tx.clone()),
        })
    }

    /// Delivers `result`; gives it back when nobody receives it any more.
    pub(super) fn send(self, result: PublishResult) -> Option<PublishResult> {
        match self {
            Reply::Once(tx) => tx.send(result).err(),
            Reply::Tagged(mut reply) => reply.report(result),
        }
    }

    /// Drops the reply without a verdict: the publish was refused at once and its caller
    /// has the error.
    pub(super) fn discard(self) {
        if let Reply::Tagged(mut reply) = self {
            reply.tx = None;
        }
    }
}

/// The promise to report one tagged publish's verdict. Dropped without a report (the client
/// stopped), it reports [`PublishError::Closed`], so every tagged publish reports exactly
/// once, as a [`Verdict`] resolves to `Closed` then.
#[derive(Debug)]
pub(super) struct TaggedReply {
    tag: u64,
    tx: Option<mpsc::UnboundedSender<TaggedVerdict>>,
}

impl TaggedReply {
    /// Sends `result`; gives it back when nobody receives it any more.
    fn report(&mut self, result: PublishResult) -> Option<PublishResult> {
        let Some(tx) = self.tx.take() else {
            return Some(result);
        };
        let verdict = TaggedVerdict {
            tag: self.tag,
            result,
        };
        tx.send(verdict)
            .err()
            .map(|mpsc::error::SendError(back)| back.result)
    }
}

impl Drop for TaggedReply {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Nobody to give it back to: the receiver is gone or will see it.
            let _ = self.report(Err(PublishError::Closed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(channel: &str) -> Message {
        serde_json::from_value(serde_json::json!({"channel": channel, "successful": true}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn tagged_replies_report_on_one_channel_with_their_tags_in_the_order_they_come() {
        let (sender, mut verdicts) = verdict_channel();
        let first = Reply::tagged(7, &sender);
        let second = Reply::tagged(8, &sender);
        assert!(second.send(Err(PublishError::QueueFull(3))).is_none());
        assert!(first.send(Ok(accepted("/a"))).is_none());
        let v = verdicts.try_recv().unwrap_or_else(|| panic!("a verdict"));
        assert_eq!((v.tag, v.result), (8, Err(PublishError::QueueFull(3))));
        let v = verdicts.try_recv().unwrap_or_else(|| panic!("a verdict"));
        assert_eq!(v.tag, 7);
        assert_eq!(v.result.map(|m| m.channel), Ok("/a".to_owned()));
        assert!(verdicts.try_recv().is_none(), "each reports once");
    }

    #[test]
    fn a_tagged_reply_dropped_without_a_verdict_reports_closed_and_a_discarded_one_nothing() {
        let (sender, mut verdicts) = verdict_channel();
        drop(Reply::tagged(1, &sender));
        Reply::tagged(2, &sender).discard();
        let v = verdicts.try_recv().unwrap_or_else(|| panic!("a verdict"));
        assert_eq!((v.tag, v.result), (1, Err(PublishError::Closed)));
        assert!(
            verdicts.try_recv().is_none(),
            "the discarded one does not report"
        );
    }

    #[test]
    fn a_verdict_nobody_receives_comes_back_to_the_driver() {
        let (sender, verdicts) = verdict_channel();
        drop(verdicts);
        let back = Reply::tagged(1, &sender).send(Ok(accepted("/a")));
        assert_eq!(
            back.map(|r| r.map(|m| m.channel)),
            Some(Ok("/a".to_owned()))
        );
        let (once, verdict) = Reply::once();
        drop(verdict);
        assert!(once.send(Err(PublishError::Closed)).is_some());
    }

    #[tokio::test]
    async fn the_channel_ends_once_every_sender_and_reply_is_gone() {
        let (sender, mut verdicts) = verdict_channel();
        let pending = Reply::tagged(5, &sender);
        drop(sender);
        drop(pending);
        let v = verdicts.recv().await.unwrap_or_else(|| panic!("a verdict"));
        assert_eq!((v.tag, v.result), (5, Err(PublishError::Closed)));
        assert!(verdicts.recv().await.is_none());
    }
}

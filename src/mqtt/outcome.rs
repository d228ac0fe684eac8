//! Outcomes of many publishes on one channel ([`MqttHandle::publish_tagged`]).
//!
//! A caller that publishes continuously and records each outcome (the bridge) would otherwise
//! hold a [`PublishCompletion`] per message: a oneshot channel each, and something to poll
//! them all. Instead it tags each publish with a number of its own and reads the outcomes,
//! tagged the same way, from one channel.
//!
//! [`MqttHandle::publish_tagged`]: super::MqttHandle::publish_tagged
//! [`PublishCompletion`]: super::PublishCompletion

use tokio::sync::mpsc;

use super::error::MqttError;
use super::topic::TopicName;

/// How one tagged publish ended: `Ok` once the broker acknowledged it (QoS 1 PUBACK, QoS 2
/// PUBCOMP; QoS 0 once written), as for [`MqttHandle::publish`](super::MqttHandle::publish).
#[derive(Debug)]
pub struct Outcome {
    /// The caller's tag of the publish.
    pub tag: u64,
    pub result: Result<(), MqttError>,
    topic: TopicName,
}

impl Outcome {
    /// The topic the message was published to.
    pub fn topic(&self) -> &str {
        self.topic.as_str()
    }
}

/// Where tagged publishes report; cloning is cheap.
#[derive(Debug, Clone)]
pub struct OutcomeSender {
    tx: mpsc::UnboundedSender<Outcome>,
}

/// The outcomes of the publishes tagged for this channel's [`OutcomeSender`]s, each exactly
/// once, in the order they are known (not necessarily the publishing order).
#[derive(Debug)]
pub struct Outcomes {
    rx: mpsc::UnboundedReceiver<Outcome>,
}

/// A new outcome channel.
pub fn outcome_channel() -> (OutcomeSender, Outcomes) {
    let (tx, rx) = mpsc::unbounded_channel();
    (OutcomeSender { tx }, Outcomes { rx })
}

impl Outcomes {
    /// The next outcome. `None` once every [`OutcomeSender`] is dropped and every publish
    /// tagged for this channel has reported.
    pub async fn recv(&mut self) -> Option<Outcome> {
        self.rx.recv().await
    }

    /// The next outcome if one is there already.
    pub fn try_recv(&mut self) -> Option<Outcome> {
        self.rx.try_recv().ok()
    }
}

impl OutcomeSender {
    pub(super) fn promise(&self, tag: u64, topic: TopicName) -> TaggedReply {
        TaggedReply {
            tag,
            topic,
            tx: Some(self.tx.clone()),
        }
    }
}

/// The promise to report one publish's outcome. Dropped without a report (the client went
/// away), it reports [`MqttError::Shutdown`], so every tagged publish reports exactly once.
#[derive(Debug)]
pub(in crate::mqtt) struct TaggedReply {
    tag: u64,
    topic: TopicName,
    tx: Option<mpsc::UnboundedSender<Outcome>>,
}

impl TaggedReply {
    pub(in crate::mqtt) fn send(mut self, result: Result<(), MqttError>) {
        self.report(result);
    }

    /// Never reports (the publish was refused and the caller got the error).
    pub(in crate::mqtt) fn discard(mut self) {
        self.tx = None;
    }

    fn report(&mut self, result: Result<(), MqttError>) {
        if let Some(tx) = self.tx.take() {
            // A receiver that is gone no longer wants outcomes.
            let _ = tx.send(Outcome {
                tag: self.tag,
                result,
                topic: self.topic.clone(),
            });
        }
    }
}

impl Drop for TaggedReply {
    fn drop(&mut self) {
        self.report(Err(MqttError::Shutdown));
    }
}

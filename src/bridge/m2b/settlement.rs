//! MQTT → Bayeux verdicts: what each message awaiting its Bayeux verdicts holds (its queue
//! slot, whom to acknowledge it to, its payload for retries) and how the verdicts settle it,
//! on a task of its own fed from one channel of tagged verdicts
//! ([`Client::publish_tagged`](crate::bayeux::Client::publish_tagged)): no future, oneshot
//! channel or task per message.
//!
//! A message goes to one or more channels (its targets), each a publish under a tag of its
//! own. A target is settled once the server accepted it, or refused it for good (dropped and
//! counted). Once every target of a message is, the message is acknowledged to the broker
//! through the client that delivered it (from the spool: its entry is settled there) and its
//! slot is freed. A target whose client was closed while the pipeline stops leaves its
//! message unacknowledged: the broker delivers it again (it stays in the spool). Any other
//! failure (the client was replaced by a reload, the request failed, the queue was full) is
//! published again after a backoff through the current publisher, with data made again from
//! the payload, so that no copy of it is kept for the common case.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{Instrument, error, warn};

use super::record_echo;
use crate::backoff::{Backoff, BackoffOptions};
use crate::bayeux::verdict::PublishResult;
use crate::bayeux::{
    Client, Data, PublishError, TaggedVerdict, VerdictSender, Verdicts, verdict_channel,
};
use crate::bridge::dead_letter::Undeliverable;
use crate::bridge::ledger::Ledger;
use crate::bridge::payload::mqtt_to_bayeux_data;
use crate::bridge::shutdown::Signal;
use crate::bridge::spooled::Key;
use crate::bridge::stats::Direction;
use crate::bridge::{Shared, Slot};
use crate::mqtt::{AckToken, MqttHandle};

/// The longest wait between two tries of a failed publish.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Whom a settled message is reported to.
pub(crate) enum Source {
    /// The broker, through the client that delivered it.
    Mqtt { mqtt: MqttHandle, token: AckToken },
    /// The spool it was delivered from.
    Spool(Key),
}

/// What a message holds until it is settled: its queue slot (freed only then, so a drain
/// that waits for every permit also waits for the settlements) and whom to tell.
pub(crate) struct Held {
    pub(crate) slot: Slot,
    pub(crate) source: Source,
}

/// A message awaiting the verdicts of its targets.
struct Awaiting<M> {
    held: M,
    /// The MQTT payload, to make the data of a retry from.
    payload: Bytes,
    /// Targets not settled yet.
    open: usize,
    /// Whether it may be acknowledged: no longer once a target was left at shutdown.
    acknowledge: bool,
}

/// Where a message goes: a channel, by a route, with the Bayeux `ext` of that route
/// (`route.ext_properties`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Destination {
    pub(crate) route: usize,
    pub(crate) channel: String,
    pub(crate) ext: Option<Map<String, Value>>,
}

/// One target of a message: a publish on one channel.
struct Target {
    message: u64,
    route: usize,
    channel: String,
    ext: Option<Map<String, Value>>,
    /// The waits between its tries, from its first failure on.
    backoff: Option<Backoff>,
}

/// Which messages await which publishes, by tag. Pure: the task does the IO.
struct Book<M> {
    messages: Ledger<Awaiting<M>>,
    publishes: Ledger<Target>,
}

impl<M> Default for Book<M> {
    fn default() -> Self {
        Book {
            messages: Ledger::default(),
            publishes: Ledger::default(),
        }
    }
}

impl<M> Book<M> {
    /// Enters a message bound for `targets` (at least one: without, it would never end);
    /// returns the tags to publish them under, in order.
    fn open(&mut self, held: M, payload: Bytes, targets: &[Destination]) -> Vec<u64> {
        let message = self.messages.insert(Awaiting {
            held,
            payload,
            open: targets.len(),
            acknowledge: true,
        });
        targets
            .iter()
            .map(|target| {
                self.publishes.insert(Target {
                    message,
                    route: target.route,
                    channel: target.channel.clone(),
                    ext: target.ext.clone(),
                    backoff: None,
                })
            })
            .collect()
    }

    /// Takes the target published under `tag` out, for its verdict.
    fn take(&mut self, tag: u64) -> Option<Target> {
        self.publishes.take(tag)
    }

    /// Enters `target` again, for another try; returns its new tag.
    fn again(&mut self, target: Target) -> u64 {
        self.publishes.insert(target)
    }

    /// The payload of `target`'s message.
    fn payload(&self, target: &Target) -> Option<Bytes> {
        self.messages.get(target.message).map(|m| m.payload.clone())
    }

    /// Ends `target`, taken out of the book: settled, or left at shutdown (`acknowledge`
    /// false). Once its message's last target has ended, returns what the message held and
    /// whether it may be acknowledged.
    fn end(&mut self, target: Target, acknowledge: bool) -> Option<(M, bool)> {
        let message = self.messages.get_mut(target.message)?;
        message.acknowledge &= acknowledge;
        message.open = message.open.saturating_sub(1);
        if message.open > 0 {
            return None;
        }
        let done = self.messages.take(target.message)?;
        Some((done.held, done.acknowledge))
    }

    /// Whether no message awaits anything.
    fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }
}

/// What a publish's verdict means for its target.
#[derive(Debug, PartialEq)]
enum Judgement {
    /// The server accepted it.
    Accepted,
    /// It can never go through (refused by the server, invalid channel, too large): dropped
    /// and counted with this reason and detail.
    ForGood {
        reason: &'static str,
        detail: String,
    },
    /// The client was closed while the pipeline stops: left to the broker (or the spool).
    LeftAtStop,
    /// Worth another try: the client was replaced by a reload, the request failed, the queue
    /// was full.
    Retry(PublishError),
}

/// Judges `result`, the verdict on a publish; `stopping`: the pipeline's stop is set.
fn judge(result: PublishResult, stopping: bool) -> Judgement {
    let error = match result {
        Ok(_) => return Judgement::Accepted,
        Err(error) => error,
    };
    let (reason, detail) = match &error {
        PublishError::Refused(refusal) => ("bayeux_refused", refusal.raw.clone()),
        PublishError::InvalidChannel(e) => ("invalid_channel", e.to_string()),
        PublishError::TooLarge { .. } => ("payload_too_large", error.to_string()),
        PublishError::Closed if stopping => return Judgement::LeftAtStop,
        PublishError::Closed | PublishError::Transport(_) | PublishError::QueueFull(_) => {
            return Judgement::Retry(error);
        }
    };
    Judgement::ForGood { reason, detail }
}

impl Judgement {
    /// Whether the target's message may still be acknowledged once the target ends this way.
    fn acknowledges(&self) -> bool {
        !matches!(self, Judgement::LeftAtStop)
    }
}

/// Targets waiting for their next try, by when it is due.
#[derive(Default)]
struct Retries {
    /// By due time, and a number to keep targets due at the same instant apart.
    waiting: BTreeMap<(Instant, u64), Target>,
    added: u64,
}

impl Retries {
    fn add(&mut self, at: Instant, target: Target) {
        self.added += 1;
        self.waiting.insert((at, self.added), target);
    }

    /// When the next one is due.
    fn next_at(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|((at, _), _)| *at)
    }

    /// The next target due by `now`.
    fn due(&mut self, now: Instant) -> Option<Target> {
        let ((at, _), _) = self.waiting.first_key_value()?;
        if *at > now {
            return None;
        }
        self.waiting.pop_first().map(|(_, target)| target)
    }

    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Every target waiting, to end them (shutdown).
    fn take_all(&mut self) -> std::collections::btree_map::IntoValues<(Instant, u64), Target> {
        std::mem::take(&mut self.waiting).into_values()
    }
}

fn lock<M>(book: &Mutex<Book<M>>) -> MutexGuard<'_, Book<M>> {
    // The book is consistent after every call; a panic elsewhere does not change that.
    book.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Publishes a pipeline's messages and settles them on a task of its own.
pub(crate) struct Settlement {
    book: Arc<Mutex<Book<Held>>>,
    verdicts: VerdictSender,
    /// The publishes the client refused at once, judged on the task like verdicts.
    refused: mpsc::UnboundedSender<TaggedVerdict>,
}

impl Settlement {
    /// Starts the settlement task, in the current span. It ends once this is dropped and
    /// every message handed over is settled (or left at shutdown), so a pipeline that stops
    /// does not cut short the messages still waiting (the drain waits for their slots).
    /// `stop` is the pipeline's: from then on, a message whose client is closed is left to
    /// the broker (or the spool), and one waiting for a retry is too.
    pub(crate) fn start(shared: Arc<Shared>, stop: Signal) -> Settlement {
        let (verdicts, incoming) = verdict_channel();
        let (refused, refusals) = mpsc::unbounded_channel();
        let book = Arc::new(Mutex::new(Book::default()));
        let (dead_lettered, lettered) = mpsc::unbounded_channel();
        let task = Task {
            shared,
            book: Arc::clone(&book),
            verdicts: verdicts.clone(),
            retries: Retries::default(),
            stop,
            dead_lettered,
        };
        tokio::spawn(task.run(incoming, refusals, lettered).in_current_span());
        Settlement {
            book,
            verdicts,
            refused,
        }
    }

    /// Publishes `data`, made from the MQTT `payload`, on each of `targets` (route and
    /// channel) through the current publisher, in order; the message holds `held` until it
    /// is settled. Returns `false` when the Bayeux client was found closed (the message is
    /// then settled like any other whose client closed).
    pub(crate) async fn publish(
        &self,
        shared: &Shared,
        held: Held,
        payload: Bytes,
        targets: &[Destination],
        data: Data,
    ) -> bool {
        if targets.is_empty() {
            finish(shared, held, true);
            return true;
        }
        let tags = lock(&self.book).open(held, payload, targets);
        let bayeux = shared.publisher();
        // The serialized data, for the echo filter: made once for all targets, and only
        // when one is a channel the bridge also reads (the only way it can come back).
        let mut fingerprint: Option<Vec<u8>> = None;
        let mut open = true;
        let mut data = Some(data);
        for (i, (target, tag)) in targets.iter().zip(tags).enumerate() {
            let last = i + 1 == targets.len();
            let Some(value) = (if last { data.take() } else { data.clone() }) else {
                break;
            };
            let publish = Publish {
                channel: &target.channel,
                data: value,
                ext: target.ext.clone(),
                tag,
            };
            let sent = send(shared, &bayeux, publish, &mut fingerprint, &self.verdicts);
            if let Err(e) = sent.await {
                open &= e != PublishError::Closed;
                let _ = self.refused.send(TaggedVerdict {
                    tag,
                    result: Err(e),
                });
            }
        }
        open
    }
}

/// One try of one target.
struct Publish<'a> {
    channel: &'a str,
    data: Data,
    ext: Option<Map<String, Value>>,
    tag: u64,
}

/// Hands `publish` to `bayeux`, its verdict to come on `verdicts`; recorded first for the
/// echo filter where it can come back (`fingerprint`: the serialized data, kept for the
/// message's other targets). A message's first try and its retries go out through here.
async fn send(
    shared: &Shared,
    bayeux: &Client,
    publish: Publish<'_>,
    fingerprint: &mut Option<Vec<u8>>,
    verdicts: &VerdictSender,
) -> Result<(), PublishError> {
    let Publish {
        channel,
        data,
        ext,
        tag,
    } = publish;
    record_echo(shared, channel, &data, fingerprint);
    bayeux
        .publish_tagged(channel, data, ext, tag, verdicts)
        .await
}

/// The Bayeux data of an MQTT `payload`, or `None` when it cannot be made (binary, with
/// `bridge.binary_payloads = "refuse"`): then the message is dead-lettered or dropped and
/// counted (`name`: its topic, or on a retry the channel). A message's first try and its
/// retries are made here.
pub(super) fn bayeux_data(
    shared: &Shared,
    payload: &Bytes,
    route: usize,
    name: &str,
) -> Option<Data> {
    match mqtt_to_bayeux_data(payload, shared.binary_payloads) {
        Ok(data) => Some(data),
        Err(e) => {
            shared.reject(Undeliverable::from_mqtt(
                name,
                payload.clone(),
                route,
                "binary_payload",
                e.to_string(),
            ));
            None
        }
    }
}

/// Tells whom the message came from that it is settled (`acknowledge`), and frees its slot.
/// A message left at shutdown is not acknowledged: the broker delivers it again, or it stays
/// in the spool.
fn finish(shared: &Shared, held: Held, acknowledge: bool) {
    let Held { slot, source } = held;
    if acknowledge {
        match source {
            Source::Mqtt { mqtt, token } => mqtt.ack(token),
            Source::Spool(key) => {
                if let Some(spools) = &shared.spools {
                    spools.settled(Direction::MqttToBayeux, key);
                }
            }
        }
    }
    drop(slot);
}

/// The settlement task's state.
struct Task {
    shared: Arc<Shared>,
    book: Arc<Mutex<Book<Held>>>,
    /// Where retries report.
    verdicts: VerdictSender,
    retries: Retries,
    stop: Signal,
    /// Targets refused for good whose dead letter is done: they end then, so that their
    /// message is acknowledged only once the dead letter is safe with the broker.
    dead_lettered: mpsc::UnboundedSender<Target>,
}

impl Task {
    async fn run(
        mut self,
        mut verdicts: Verdicts,
        mut refused: mpsc::UnboundedReceiver<TaggedVerdict>,
        mut lettered: mpsc::UnboundedReceiver<Target>,
    ) {
        let mut open = true;
        // A copy to wait on, so that the handlers below may use the task's own.
        let mut stop = self.stop.clone();
        while open || !lock(&self.book).is_empty() {
            let next_retry = self.retries.next_at();
            let waiting = !self.retries.is_empty();
            tokio::select! {
                Some(verdict) = verdicts.recv() => self.verdict(verdict),
                Some(target) = lettered.recv() => self.end(target, true),
                verdict = refused.recv(), if open => match verdict {
                    Some(verdict) => self.verdict(verdict),
                    // The pipeline is gone: nothing new comes.
                    None => open = false,
                },
                () = sleep_until(next_retry) => {
                    while let Some(target) = self.retries.due(Instant::now()) {
                        self.retry(target).await;
                    }
                }
                // Shutting down: what waits for a retry is left to the broker (or the spool).
                () = stop.wait(), if waiting => {
                    for target in self.retries.take_all() {
                        self.end(target, false);
                    }
                }
            }
        }
    }

    /// Settles the target of `verdict`, or has it tried again later.
    fn verdict(&mut self, verdict: TaggedVerdict) {
        let Some(target) = lock(&self.book).take(verdict.tag) else {
            error!(
                tag = verdict.tag,
                "Internal error: the verdict of a publish that is not in flight."
            );
            return;
        };
        let judgement = judge(verdict.result, self.stop.is_set());
        let acknowledge = judgement.acknowledges();
        let (route, channel) = (target.route, target.channel.as_str());
        match judgement {
            Judgement::Accepted => self.shared.stats.forwarded(Direction::MqttToBayeux, route),
            Judgement::ForGood { reason, detail } => {
                if reason == "bayeux_refused" {
                    self.shared.count_publish_error("bayeux", "refused");
                }
                let payload = lock(&self.book).payload(&target).unwrap_or_default();
                let letter =
                    Undeliverable::refused_by_bayeux(channel, payload, route, reason, detail);
                // Ended once the dead letter is done (at once without a dead-letter topic).
                // If this task is gone by then, the message stays unacknowledged and the
                // broker delivers it again.
                let done = self.dead_lettered.clone();
                return self.shared.reject_then(letter, move || {
                    let _ = done.send(target);
                });
            }
            Judgement::LeftAtStop => {}
            Judgement::Retry(error) => return self.retry_later(target, &error),
        }
        self.end(target, acknowledge);
    }

    /// Has `target`, whose publish failed with `error`, tried again after its backoff
    /// (unless the pipeline is stopping: then it is left to the broker or the spool).
    fn retry_later(&mut self, mut target: Target, error: &PublishError) {
        self.shared.count_publish_error("bayeux", "transport");
        let wait = target
            .backoff
            .get_or_insert_with(|| {
                Backoff::new(BackoffOptions {
                    max: MAX_RETRY_WAIT,
                    ..BackoffOptions::default()
                })
            })
            .next_delay();
        const RETRYING: &str = "Bayeux publish failed; retrying.";
        if self.shared.log_limit.allow(RETRYING) {
            warn!(channel = %target.channel, %error, ?wait, "{RETRYING}");
        }
        if self.stop.is_set() {
            return self.end(target, false);
        }
        self.retries.add(Instant::now() + wait, target);
    }

    /// Publishes `target` again through the current publisher, with data made again from
    /// its message's payload.
    async fn retry(&mut self, target: Target) {
        let payload = lock(&self.book).payload(&target);
        let data =
            payload.and_then(|p| bayeux_data(&self.shared, &p, target.route, &target.channel));
        let Some(data) = data else {
            // Made from the same payload the first time, so this does not happen; if it
            // did, the message is dropped (and counted) as it would have been then.
            return self.end(target, true);
        };
        let (channel, ext) = (target.channel.clone(), target.ext.clone());
        let tag = lock(&self.book).again(target);
        let bayeux = self.shared.publisher();
        let publish = Publish {
            channel: &channel,
            data,
            ext,
            tag,
        };
        let mut fingerprint = None;
        let sent = send(
            &self.shared,
            &bayeux,
            publish,
            &mut fingerprint,
            &self.verdicts,
        );
        if let Err(e) = sent.await {
            self.verdict(TaggedVerdict {
                tag,
                result: Err(e),
            });
        }
    }

    /// Ends `target`, and its message once that was its last.
    fn end(&self, target: Target, acknowledge: bool) {
        let done = lock(&self.book).end(target, acknowledge);
        if let Some((held, acknowledge)) = done {
            finish(&self.shared, held, acknowledge);
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bayeux::{Message, ServerError};

    fn targets(channels: &[&str]) -> Vec<Destination> {
        channels
            .iter()
            .enumerate()
            .map(|(route, channel)| Destination {
                route,
                channel: (*channel).to_owned(),
                ext: None,
            })
            .collect()
    }

    fn accepted() -> PublishResult {
        serde_json::from_value::<Message>(serde_json::json!({"channel": "/a", "successful": true}))
            .map_err(|e| panic!("{e}"))
    }

    fn refused() -> PublishResult {
        Err(PublishError::Refused(ServerError::parse("403::denied")))
    }

    /// Judges `result` for the target of `tag` and ends it as the task does; returns what
    /// ended with it (the message, and whether it is acknowledged).
    fn settle(
        book: &mut Book<&'static str>,
        tag: u64,
        result: PublishResult,
        stopping: bool,
    ) -> Option<(&'static str, bool)> {
        let target = book
            .take(tag)
            .unwrap_or_else(|| panic!("tag {tag} in flight"));
        let judgement = judge(result, stopping);
        assert!(!matches!(judgement, Judgement::Retry(_)), "{judgement:?}");
        book.end(target, judgement.acknowledges())
    }

    #[test]
    fn a_message_to_two_channels_is_acknowledged_once_both_are_accepted_in_either_order() {
        for order in [[0, 1], [1, 0]] {
            let mut book = Book::default();
            let tags = book.open("m", Bytes::from_static(b"1"), &targets(&["/a", "/b"]));
            assert_eq!(tags.len(), 2);
            assert_eq!(settle(&mut book, tags[order[0]], accepted(), false), None);
            assert!(!book.is_empty(), "still waiting for the other channel");
            assert_eq!(
                settle(&mut book, tags[order[1]], accepted(), false),
                Some(("m", true))
            );
            assert!(book.is_empty());
        }
    }

    #[test]
    fn a_refusal_for_good_still_acknowledges_the_message() {
        let mut book = Book::default();
        let tags = book.open("m", Bytes::from_static(b"1"), &targets(&["/a", "/b"]));
        assert_eq!(
            judge(refused(), false),
            Judgement::ForGood {
                reason: "bayeux_refused",
                detail: "403::denied".to_owned()
            }
        );
        assert_eq!(settle(&mut book, tags[1], refused(), false), None);
        assert_eq!(
            settle(&mut book, tags[0], accepted(), false),
            Some(("m", true))
        );
        let invalid = PublishError::InvalidChannel(crate::bayeux::channel::InvalidChannel {
            name: "/a/*".to_owned(),
            reason: "wildcards are not allowed when publishing",
        });
        assert!(matches!(
            judge(Err(invalid), false),
            Judgement::ForGood {
                reason: "invalid_channel",
                ..
            }
        ));
        let large = PublishError::TooLarge { size: 9, cap: 1 };
        assert!(matches!(
            judge(Err(large), true),
            Judgement::ForGood {
                reason: "payload_too_large",
                ..
            }
        ));
    }

    #[test]
    fn a_client_closed_at_stop_leaves_the_message_unacknowledged_even_if_another_target_passed() {
        let mut book = Book::default();
        let tags = book.open("m", Bytes::from_static(b"1"), &targets(&["/a", "/b"]));
        assert_eq!(
            judge(Err(PublishError::Closed), true),
            Judgement::LeftAtStop
        );
        assert_eq!(
            settle(&mut book, tags[0], Err(PublishError::Closed), true),
            None
        );
        assert_eq!(
            settle(&mut book, tags[1], accepted(), true),
            Some(("m", false))
        );
        assert!(book.is_empty());
    }

    #[test]
    fn other_failures_are_retried_under_a_new_tag_with_the_payload_kept() {
        for error in [
            PublishError::Closed,
            PublishError::QueueFull(9),
            PublishError::Transport(crate::bayeux::TransportError::Io("reset".into())),
        ] {
            assert_eq!(judge(Err(error.clone()), false), Judgement::Retry(error));
        }
        // A failed request is retried even while stopping; the task then leaves it.
        let transport = PublishError::Transport(crate::bayeux::TransportError::Io("x".into()));
        assert!(matches!(judge(Err(transport), true), Judgement::Retry(_)));
        let mut book = Book::default();
        let tags = book.open("m", Bytes::from_static(b"payload"), &targets(&["/a"]));
        let target = book.take(tags[0]).unwrap_or_else(|| panic!("in flight"));
        assert_eq!(book.payload(&target).as_deref(), Some(&b"payload"[..]));
        let again = book.again(target);
        assert_ne!(again, tags[0], "tags are not reused");
        assert!(book.take(tags[0]).is_none());
        assert_eq!(
            settle(&mut book, again, accepted(), false),
            Some(("m", true))
        );
    }

    #[test]
    fn retries_come_due_in_time_order_and_can_all_be_taken_at_shutdown() {
        let target = |message| Target {
            message,
            route: 0,
            channel: "/a".to_owned(),
            ext: None,
            backoff: None,
        };
        let now = Instant::now();
        let mut retries = Retries::default();
        retries.add(now + Duration::from_secs(2), target(2));
        retries.add(now + Duration::from_secs(1), target(1));
        retries.add(now + Duration::from_secs(1), target(3));
        assert_eq!(retries.next_at(), Some(now + Duration::from_secs(1)));
        assert!(retries.due(now).is_none(), "none due yet");
        let due: Vec<u64> = std::iter::from_fn(|| retries.due(now + Duration::from_secs(1)))
            .map(|t| t.message)
            .collect();
        assert_eq!(due, [1, 3]);
        assert_eq!(
            retries.take_all().map(|t| t.message).collect::<Vec<_>>(),
            [2]
        );
        assert!(retries.is_empty() && retries.next_at().is_none());
    }
}

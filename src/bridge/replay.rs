//! Replay in the bridge: the Bayeux replay extension fed from durable checkpoints, so that
//! Bayeux → MQTT resumes after any restart or re-handshake from the last event the broker
//! acknowledged (see [`checkpoint`](super::checkpoint) for the exact guarantee).
//!
//! [`Replay`] ties three things together:
//! - the [`ReplayExtension`] every Bayeux client of the bridge carries: at startup it is set
//!   to the stored checkpoints, and every advance of a checkpoint is set on it too, so a
//!   re-handshake in this process resumes from the same place a restart would;
//! - the [`CheckpointStore`], which `b2m` tells about each event it takes ([`Replay::begin`])
//!   and each one done ([`Replay::ack`], [`Replay::abandon`]);
//! - the flusher ([`Replay::run_flusher`]), which writes the store every
//!   `replay.checkpoint_interval_ms` outside the store's lock, and a last time after the drain.
//!
//! A stored id the server refuses (older than its retention, or unknown) is a gap: events
//! were lost. [`Replay::on_subscription_failed`] recognises the refusal and applies
//! `replay.on_invalid`; the caller reports the [`Gap`] (log, metric, status topic).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};
use tracing::{debug, info, warn};

use super::checkpoint::{CheckpointError, CheckpointStore, MAX_CHECKPOINTS, Ticket};
use super::gaps::{self, GapKind};
use super::stats::Direction;
use super::stats::Stats;
use crate::bayeux::ext::replay::{self as ext, ReplayExtension};
use crate::bayeux::{ChannelPattern, Message};
use crate::config::{ReplayConfig, ReplayInvalidPolicy};
use crate::metrics::{ChannelLabels, OutcomeLabels};

/// The bridge's replay state: extension, checkpoint store and policy.
#[derive(Debug)]
pub(crate) struct Replay {
    extension: Arc<ReplayExtension>,
    store: Mutex<CheckpointStore>,
    /// One flush at a time: snapshots share the temporary file.
    flushing: tokio::sync::Mutex<()>,
    interval: Duration,
    policy: ReplayInvalidPolicy,
    stats: Arc<Stats>,
}

/// A stored replay id the server refused, and what the bridge did about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Gap {
    /// The channel.
    pub(crate) channel: String,
    /// The refused id: the last event acknowledged by the broker before the gap.
    pub(crate) last_good: i64,
    /// Where the channel resumes (`-1` or `-2`), or `None` with the `stop` policy.
    pub(crate) resumed_from: Option<i64>,
    /// The server's error.
    pub(crate) error: String,
}

impl Gap {
    /// The gap as reported: the status message keeps the fields of earlier versions
    /// (`channel`, `last_good_replay_id`, `resumed_from`, `error`).
    pub(crate) fn report(&self) -> gaps::Gap {
        let mut gap = gaps::Gap::new(GapKind::ReplayGap, Direction::BayeuxToMqtt);
        gap.names = vec![self.channel.clone()];
        if let Value::Object(extra) = json!({
            "channel": self.channel,
            "last_good_replay_id": self.last_good,
            "resumed_from": self.resumed_from,
            "error": self.error,
        }) {
            gap.extra = extra;
        }
        gap
    }
}

impl Replay {
    /// Opens the checkpoint store under `config.state_dir` and sets the stored checkpoints of
    /// `subscriptions` (the Bayeux channels the routes subscribe to) on a new replay
    /// extension. Checkpoints of other channels (routes removed since, or a file written by
    /// an older version that keyed them by delivered channel under a wildcard route) stay in
    /// the file, up to [`checkpoint::MAX_CHECKPOINTS`](super::checkpoint::MAX_CHECKPOINTS) in
    /// all, least recently advanced forgotten first; they resume if a route subscribes to
    /// their channel again.
    pub(crate) fn open(
        config: &ReplayConfig,
        stats: Arc<Stats>,
        subscriptions: &[String],
    ) -> Result<Replay, CheckpointError> {
        let mut store = CheckpointStore::open(&config.state_dir)?;
        let keys: BTreeSet<String> = subscriptions
            .iter()
            .map(|s| ext::channel_key(s).to_owned())
            .collect();
        let forgotten = store.prune(&keys, MAX_CHECKPOINTS);
        if !forgotten.is_empty() {
            warn!(
                file = %store.path().display(),
                count = forgotten.len(),
                limit = MAX_CHECKPOINTS,
                "Forgot the oldest checkpoints of channels no route subscribes to: the file held \
                 more than the limit."
            );
        }
        let extension = Arc::new(ReplayExtension::with_default(config.start_from));
        let stored = store.all();
        let mut resumed = 0;
        for (channel, replay_id) in stored.iter().filter(|(c, _)| keys.contains(*c)) {
            extension.set(channel, *replay_id);
            stats
                .metrics
                .checkpoint
                .get_or_create(&ChannelLabels {
                    channel: channel.clone(),
                })
                .set(*replay_id);
            info!(channel, replay_id, "Resuming from the stored checkpoint.");
            resumed += 1;
        }
        info!(
            file = %store.path().display(),
            channels = resumed,
            kept_unsubscribed = stored.len() - resumed,
            start_from = config.start_from,
            "Replay checkpoints loaded."
        );
        Ok(Replay {
            extension,
            store: Mutex::new(store),
            flushing: tokio::sync::Mutex::new(()),
            interval: config.checkpoint_interval(),
            policy: config.on_invalid,
            stats,
        })
    }

    /// Whether the server accepted the replay extension for the current session: then what
    /// it published while a lost session was not polled is replayed to the new one.
    pub(crate) fn honoured(&self) -> bool {
        self.extension.is_enabled()
    }

    /// The extension to add to every Bayeux client of the bridge.
    pub(crate) fn extension(&self) -> Arc<ReplayExtension> {
        Arc::clone(&self.extension)
    }

    fn store(&self) -> MutexGuard<'_, CheckpointStore> {
        // Every store operation completes its bookkeeping before it can fail or panic.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `message` was taken from the subscription `subscribed`, if it carries a
    /// replay id. Call in delivery order. The checkpoint is the subscription's (the key its
    /// `/meta/subscribe` sends), not the delivered channel's: so it is the one a resubscribe
    /// resumes from, and the number of checkpoints is bounded by the routes, not by the
    /// channel names a server sends.
    pub(crate) fn begin(&self, message: &Message, subscribed: &ChannelPattern) -> Option<Ticket> {
        let replay_id = ext::replay_id(message)?;
        Some(
            self.store()
                .begin(ext::channel_key(subscribed.as_str()), replay_id),
        )
    }

    /// The broker acknowledged the ticket's event.
    pub(crate) fn ack(&self, ticket: Ticket) {
        let advance = self.store().ack(ticket);
        self.advanced(advance);
    }

    /// The ticket's event was dropped on purpose and must not be delivered again.
    pub(crate) fn abandon(&self, ticket: Ticket) {
        let advance = self.store().abandon(ticket);
        self.advanced(advance);
    }

    fn advanced(&self, advance: Option<super::checkpoint::Advance>) {
        if let Some(advance) = advance {
            self.extension.set(&advance.channel, advance.replay_id);
            let labels = ChannelLabels {
                channel: advance.channel.to_string(),
            };
            let metrics = &self.stats.metrics;
            metrics
                .checkpoint
                .get_or_create(&labels)
                .set(advance.replay_id);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            metrics.checkpoint_time.get_or_create(&labels).set(now);
        }
    }

    /// Writes the checkpoints if they changed since the last write. The file IO runs on a
    /// blocking thread, outside the store's lock. A failure is logged and counted; the store
    /// stays dirty and the next flush tries again.
    pub(crate) async fn flush(&self) -> bool {
        let _one_at_a_time = self.flushing.lock().await;
        let Some(snapshot) = self.store().snapshot() else {
            return true;
        };
        let written =
            tokio::task::spawn_blocking(move || snapshot.write().map(|()| snapshot)).await;
        let outcome = match written {
            Ok(Ok(snapshot)) => {
                self.store().flushed(snapshot);
                debug!("Replay checkpoints written.");
                true
            }
            Ok(Err(e)) => {
                warn!(error = %e, "Could not write the replay checkpoints; retrying at the next interval.");
                false
            }
            Err(e) => {
                warn!(error = %e, "The checkpoint writer failed; retrying at the next interval.");
                false
            }
        };
        self.stats
            .metrics
            .checkpoint_writes
            .get_or_create(&OutcomeLabels {
                outcome: if outcome { "ok" } else { "error" },
            })
            .inc();
        outcome
    }

    /// Flushes every `checkpoint_interval_ms` until `stop` is set. The final flush, after
    /// the drain, is the caller's.
    pub(crate) async fn run_flusher(self: Arc<Self>, mut stop: super::shutdown::Signal) {
        let mut interval = tokio::time::interval(self.interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopped = tokio::select! {
                () = stop.wait() => true,
                _ = interval.tick() => false,
            };
            if stopped {
                return;
            }
            self.flush().await;
        }
    }

    /// The server refused the subscription `channel` with `error`. If that is a refused
    /// stored replay id, applies `replay.on_invalid` (the client's next attempt resumes from
    /// `-1` or `-2`, also stored as the checkpoint; or, with `stop`, nothing changes), counts
    /// the gap and returns it for the caller to report. Any other failure is left to the
    /// client's retries.
    pub(crate) fn on_subscription_failed(&self, channel: &str, error: &str) -> Option<Gap> {
        if !is_invalid_replay_id(error) {
            return None;
        }
        let last_good = self.extension.resume_from(channel);
        if last_good < 0 {
            // -1 or -2 refused: not a stored position, nothing to fall back from.
            return None;
        }
        let resumed_from = match self.policy {
            ReplayInvalidPolicy::Latest => Some(ext::NEW_EVENTS_ONLY),
            ReplayInvalidPolicy::Earliest => Some(ext::ALL_RETAINED),
            ReplayInvalidPolicy::Stop => None,
        };
        let key = ext::channel_key(channel);
        if let Some(from) = resumed_from {
            self.extension.set(key, from);
            // Stored too: a restart before the next event is acknowledged must resume from
            // the policy's choice, not from `replay.start_from`.
            self.store().reset(key, from);
        }
        self.stats
            .metrics
            .replay_gaps
            .get_or_create(&ChannelLabels {
                channel: key.to_owned(),
            })
            .inc();
        Some(Gap {
            channel: key.to_owned(),
            last_good,
            resumed_from,
            error: error.to_owned(),
        })
    }
}

/// `options` with `replay`'s extension added, if any.
pub(crate) fn with_extension(
    mut options: crate::bayeux::ClientOptions,
    replay: Option<&Replay>,
) -> crate::bayeux::ClientOptions {
    if let Some(replay) = replay {
        options.extensions.push(replay.extension());
    }
    options
}

/// Whether a subscribe error is the server refusing the replay id it was given (Salesforce:
/// `400::The replayId {N} you provided was invalid. ...`).
fn is_invalid_replay_id(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    error.contains("replayid") && (error.contains("invalid") || error.contains("expired"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn recognises_salesforce_replay_refusals_only() {
        assert!(is_invalid_replay_id(
            "400::The replayId {42} you provided was invalid. Please provide a valid ID, -2 to \
             replay all events, or -1 to replay only new events."
        ));
        assert!(!is_invalid_replay_id(
            "400::The channel you requested to subscribe to does not exist"
        ));
        assert!(!is_invalid_replay_id("403::Unknown client"));
    }

    fn replay(policy: ReplayInvalidPolicy, dir: &std::path::Path) -> Replay {
        let config = ReplayConfig {
            enabled: true,
            state_dir: dir.to_owned(),
            on_invalid: policy,
            ..ReplayConfig::default()
        };
        Replay::open(
            &config,
            Arc::new(Stats::default()),
            &["/event/A".to_owned(), "/event/B".to_owned()],
        )
        .expect("opens")
    }

    fn temp_dir(label: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bridge-replay-{label}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn event(channel: &str, id: i64) -> Message {
        let mut m = Message::new(channel);
        m.data = Some(json!({"event": {"replayId": id}, "payload": {}}).into());
        m
    }

    fn sub(pattern: &str) -> ChannelPattern {
        ChannelPattern::parse(pattern).expect("a valid pattern")
    }

    const REFUSED: &str = "400::The replayId {7} you provided was invalid.";

    #[test]
    fn acknowledged_events_move_the_extension_and_a_refused_id_falls_back_by_policy() {
        let dir = temp_dir("policy");
        let r = replay(ReplayInvalidPolicy::Earliest, &dir);
        let t = r
            .begin(&event("/event/A", 7), &sub("/event/A"))
            .expect("has an id");
        assert!(
            r.begin(&Message::new("/event/A"), &sub("/event/A"))
                .is_none(),
            "no id, no ticket"
        );
        r.ack(t);
        assert_eq!(r.extension.get("/event/A"), Some(7));
        let gap = r
            .on_subscription_failed("/event/A", REFUSED)
            .expect("a gap");
        assert_eq!(gap.last_good, 7);
        assert_eq!(gap.resumed_from, Some(ext::ALL_RETAINED));
        assert_eq!(r.extension.get("/event/A"), Some(ext::ALL_RETAINED));
        assert_eq!(r.store().get("/event/A"), Some(ext::ALL_RETAINED));
        let metrics = r.stats.metrics.encode();
        assert!(
            metrics.contains(r#"bridge_replay_gaps_total{channel="/event/A"} 1"#),
            "{metrics}"
        );
        // -2 refused again is not a second gap.
        assert!(r.on_subscription_failed("/event/A", REFUSED).is_none());
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn stop_policy_keeps_the_checkpoint() {
        let dir = temp_dir("stop");
        let r = replay(ReplayInvalidPolicy::Stop, &dir);
        let t = r
            .begin(&event("/event/A", 7), &sub("/event/A"))
            .expect("has an id");
        r.ack(t);
        let gap = r
            .on_subscription_failed("/event/A", REFUSED)
            .expect("a gap");
        assert_eq!(gap.resumed_from, None);
        assert_eq!(r.store().get("/event/A"), Some(7));
        std::fs::remove_dir_all(dir).ok();
    }

    /// Issue 14, item 2: the checkpoint is the subscription's key, whatever channel the
    /// event was delivered on, so many channel names keep one checkpoint and one metric
    /// series, and the key is the one the subscribe sends (it used to be the delivered
    /// channel, which a pattern subscription never sent back).
    #[test]
    fn checkpoints_are_kept_per_subscription_not_per_delivered_channel() {
        let dir = temp_dir("per-subscription");
        let r = replay(ReplayInvalidPolicy::Latest, &dir);
        let pattern = sub("/event/**");
        for n in 0..5_000 {
            let t = r
                .begin(&event(&format!("/event/E{n}"), n), &pattern)
                .expect("has an id");
            r.ack(t);
        }
        let filtered = sub("/topic/Orders?Status=Open");
        let t = r
            .begin(&event("/topic/Orders", 42), &filtered)
            .expect("has an id");
        r.ack(t);
        assert_eq!(
            r.store().all(),
            BTreeMap::from([
                ("/event/**".to_owned(), 4_999),
                ("/topic/Orders".to_owned(), 42)
            ])
        );
        assert_eq!(r.extension.positions().len(), 2);
        let metrics = r.stats.metrics.encode();
        let series = metrics
            .lines()
            .filter(|l| l.starts_with("bridge_replay_checkpoint{"))
            .count();
        assert_eq!(series, 2, "{metrics}");
        std::fs::remove_dir_all(dir).ok();
    }

    /// A file written by an older version (keyed by delivered channel) loads: the entries of
    /// the channels the routes subscribe to resume them; the others stay in the file but are
    /// neither sent nor exported as metrics.
    #[test]
    fn an_old_file_resumes_the_subscribed_channels_and_keeps_the_others() {
        let dir = temp_dir("old-file");
        std::fs::write(
            dir.join(super::super::checkpoint::FILE_NAME),
            r#"{"version": 1, "channels": {
                "/event/A": {"replay_id": 5, "updated": "100"},
                "/event/Gone": {"replay_id": 6, "updated": "100"}
            }}"#,
        )
        .expect("write the old file");
        let r = replay(ReplayInvalidPolicy::Latest, &dir);
        assert_eq!(r.extension.resume_from("/event/A"), 5);
        assert_eq!(r.extension.get("/event/Gone"), None);
        assert_eq!(r.store().get("/event/Gone"), Some(6), "kept in the file");
        let metrics = r.stats.metrics.encode();
        assert!(
            metrics.contains(r#"bridge_replay_checkpoint{channel="/event/A"} 5"#),
            "{metrics}"
        );
        assert!(!metrics.contains("/event/Gone"), "{metrics}");
        std::fs::remove_dir_all(dir).ok();
    }

    #[tokio::test]
    async fn flushed_checkpoints_are_loaded_into_the_extension_at_open() {
        let dir = temp_dir("reopen");
        let r = replay(ReplayInvalidPolicy::Latest, &dir);
        let first = r
            .begin(&event("/event/A", 3), &sub("/event/A"))
            .expect("id");
        let second = r
            .begin(&event("/event/A", 9), &sub("/event/A"))
            .expect("id");
        r.ack(second);
        assert_eq!(r.extension.get("/event/A"), None, "3 is still in flight");
        r.ack(first);
        assert!(r.flush().await);
        drop(r);
        let reopened = replay(ReplayInvalidPolicy::Latest, &dir);
        assert_eq!(reopened.extension.resume_from("/event/A"), 9);
        assert_eq!(
            reopened.extension.resume_from("/event/B"),
            ext::NEW_EVENTS_ONLY
        );
        std::fs::remove_dir_all(dir).ok();
    }
}

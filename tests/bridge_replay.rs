//! Nothing lost across restarts (issue 5): the bridge binary with `[replay]` on, against the
//! Salesforce-like fake (`tests/peers/salesforce.js`, a scripted server of the project's own:
//! no real Bayeux server offers replay ids, retention and expiry offline) and a real
//! Mosquitto broker, both started by the test on free loopback ports.
//!
//! Each test prints its lost and duplicated counts. Synchronisation is by events: the
//! bridge's JSON log lines, the test subscriber's deliveries, the fake's stats. Every wait has
//! a deadline and fails with what was seen.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use common::bridge::{BridgeProcess, ConfigFile, TempDir};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, id_counts, mqtt_options};
use common::salesforce::{CLIENT_ID, CLIENT_SECRET, SalesforceFake};

const WAIT: Duration = Duration::from_secs(30);
const CHANNEL: &str = "/event/Order__e";
const TOPIC: &str = "sf/order";
const STATUS: &str = "replay-test/status";
const TOKEN: &str = "static-test-token";
/// The log filter of the bridges in these tests.
const REPLAY_LOG: &str = "info,bayeux_mqtt_bridge::bridge::replay=debug";
/// `bridge.queue_capacity` in these tests: the most events in flight at once.
const CAPACITY: usize = 32;

/// One bridge configuration: the fake, the broker, a state directory that outlives each
/// bridge process, and the replay policy.
struct Setup {
    dir: TempDir,
    url: String,
    broker_port: u16,
    policy: &'static str,
    interval_ms: u64,
    /// `Some(token_url)`: authenticate with OAuth client credentials instead of a static token.
    oauth: Option<String>,
}

impl Setup {
    fn new(fake: &SalesforceFake, broker: &Mosquitto, policy: &'static str) -> Setup {
        let dir = TempDir::new("replay");
        dir.file("token", TOKEN.as_bytes());
        dir.file("client-secret", CLIENT_SECRET.as_bytes());
        Setup {
            dir,
            url: fake.url.clone(),
            broker_port: broker.port(),
            policy,
            interval_ms: 50,
            oauth: None,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn toml(&self) -> String {
        let auth = match &self.oauth {
            None => format!(
                "token_file = \"{}\"\n",
                self.dir.path().join("token").display()
            ),
            Some(token_url) => format!(
                "[bayeux.oauth]\ntoken_url = \"{token_url}\"\ngrant = \"client_credentials\"\n\
                 client_id = \"{CLIENT_ID}\"\nclient_secret_file = \"{}\"\n",
                self.dir.path().join("client-secret").display()
            ),
        };
        format!(
            r#"
[bayeux]
url = "{url}"
max_request_bytes = 32768
backoff_increment_ms = 100
backoff_max_ms = 500

{auth}
[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "replay-test-bridge"
status_topic = "{STATUS}"
backoff_increment_ms = 100
backoff_max_ms = 500

[bridge]
queue_capacity = {CAPACITY}
drain_timeout_secs = 5

[replay]
enabled = true
state_dir = "{state}"
checkpoint_interval_ms = {interval}
on_invalid = "{policy}"

[[route]]
bayeux = "{CHANNEL}"
mqtt = "{TOPIC}"
direction = "bayeux_to_mqtt"
qos = 1
"#,
            url = self.url,
            port = self.broker_port,
            state = self.state_dir().display(),
            interval = self.interval_ms,
            policy = self.policy,
        )
    }

    /// Starts a bridge and waits until it is ready (subscribed on both sides).
    async fn start(&self) -> (ConfigFile, BridgeProcess) {
        let config = ConfigFile::new(&self.toml());
        // Debug for the replay module: its "Replay checkpoints written." is an event to wait on.
        let bridge = BridgeProcess::spawn(&config, &[("RUST_LOG", REPLAY_LOG)]);
        bridge.wait_for_log("Bridge ready.", WAIT).await;
        (config, bridge)
    }

    /// The durable checkpoint of `CHANNEL`, read from the state directory.
    fn stored_checkpoint(&self) -> Option<i64> {
        stored_checkpoint(&self.state_dir())
    }
}

fn stored_checkpoint(state_dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(state_dir.join("checkpoints.json")).ok()?;
    let file: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("checkpoints.json is not JSON ({e}): {text}"));
    file["channels"][CHANNEL]["replay_id"].as_i64()
}

/// An event as the MQTT subscriber got it: the fake's per-channel `seq` and its replay id.
fn events(peer: &MqttPeer) -> Vec<(u64, i64)> {
    peer.inbox
        .snapshot()
        .iter()
        .filter(|g| g.topic == TOPIC)
        .map(|g| {
            let data = g.json();
            let seq = data["payload"]["seq"].as_u64();
            let id = data["event"]["replayId"].as_i64();
            match (seq, id) {
                (Some(seq), Some(id)) => (seq, id),
                _ => panic!("not a fake event on {TOPIC}: {data}"),
            }
        })
        .collect()
}

/// How often each seq arrived.
fn counts(events: &[(u64, i64)]) -> BTreeMap<u64, usize> {
    id_counts(events.iter().map(|(seq, _)| *seq))
}

async fn wait_for_seqs(peer: &MqttPeer, what: &str, wanted: impl Iterator<Item = u64>) {
    let wanted: BTreeSet<u64> = wanted.collect();
    peer.inbox
        .wait_until(what, WAIT, |got| {
            let have: BTreeSet<u64> = got
                .iter()
                .filter(|g| g.topic == TOPIC)
                .filter_map(|g| g.json()["payload"]["seq"].as_u64())
                .collect();
            wanted.is_subset(&have)
        })
        .await;
}

/// The `ext.replay` position of the last subscribe to `CHANNEL` the fake received.
async fn last_subscribe_position(fake: &SalesforceFake) -> Option<i64> {
    let stats = fake.stats().await;
    let subscribes = stats["subscribes"].as_array()?;
    subscribes
        .iter()
        .rev()
        .find(|s| s["subscription"] == CHANNEL)
        .and_then(|s| s["replay"][CHANNEL].as_i64())
}

/// SIGKILL in the middle of a stream, events published while the bridge is down, restart:
/// every event reaches MQTT, and only events after the durable checkpoint can arrive twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_loses_nothing() {
    let broker = Mosquitto::start_async().await;
    let fake = Arc::new(SalesforceFake::start(&[
        "--token",
        TOKEN,
        "--poll-timeout-ms",
        "5000",
    ]));
    let setup = Setup::new(&fake, &broker, "stop");
    let peer = MqttPeer::connect(mqtt_options(&broker, "replay-test-sub"), &[TOPIC]).await;
    let (_config, mut bridge) = setup.start().await;

    // A paced stream in small batches from a task of its own, so the kill and the restart
    // both happen while it flows.
    const BATCH: usize = 10;
    const TOTAL: u64 = 1000;
    let total = TOTAL;
    let (progress, mut published) = tokio::sync::watch::channel(0u64);
    let publisher = {
        let fake = Arc::clone(&fake);
        tokio::spawn(async move {
            for _ in 0..TOTAL / BATCH as u64 {
                fake.publish(CHANNEL, BATCH).await;
                progress.send_modify(|n| *n += BATCH as u64);
                // Pacing of the load generator, not synchronisation.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    peer.inbox
        .wait_until("a fifth of the stream on MQTT", WAIT, |got| {
            got.len() as u64 >= total / 5
        })
        .await;
    bridge
        .wait_for_log("Replay checkpoints written.", WAIT)
        .await;
    let status = bridge.kill().await;
    assert!(!status.success(), "SIGKILL must kill the bridge");
    let durable = setup
        .stored_checkpoint()
        .expect("a checkpoint was flushed before the kill");
    let before_restart = events(&peer);
    // Events the server retains while no bridge runs.
    let down_since = *published.borrow();
    tokio::time::timeout(WAIT, published.wait_for(|n| *n >= down_since + 100))
        .await
        .expect("the publisher stalled")
        .expect("the publisher ended early");
    let (_config, mut bridge) = setup.start().await;
    assert_eq!(
        last_subscribe_position(&fake).await,
        Some(durable),
        "the restarted bridge resumes from the durable checkpoint"
    );
    publisher.await.expect("the publisher task");
    wait_for_seqs(&peer, "every event on MQTT", 1..=total).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));

    let got = events(&peer);
    let counts = counts(&got);
    let lost = (1..=total).filter(|s| !counts.contains_key(s)).count();
    let duplicated: Vec<u64> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    println!(
        "SIGKILL mid-stream: {total} events, lost = {lost}, duplicated = {}, received before \
         the kill = {}, durable checkpoint at the kill = {durable}",
        duplicated.len(),
        before_restart.len()
    );
    assert_eq!(lost, 0, "events lost across the SIGKILL");
    // Duplicates only after the durable checkpoint: events the broker had acknowledged but
    // the last flush had not recorded yet, or that were still in flight.
    let id_of: BTreeMap<u64, i64> = got.iter().copied().collect();
    for seq in &duplicated {
        assert!(
            id_of[seq] > durable,
            "event {seq} (replay id {}) at or before the durable checkpoint {durable} arrived \
             twice",
            id_of[seq]
        );
    }
    // And no more than what had arrived after the checkpoint before the kill.
    let after_checkpoint = before_restart
        .iter()
        .filter(|(_, id)| *id > durable)
        .count();
    assert!(
        duplicated.len() <= after_checkpoint,
        "{} duplicates, but only {after_checkpoint} events had arrived after the checkpoint",
        duplicated.len()
    );
}

/// A clean stop (SIGTERM) flushes after the drain: the restart delivers no duplicate at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_restart_resumes_exactly_after_the_last_acknowledged_event() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--token", TOKEN, "--poll-timeout-ms", "5000"]);
    let mut setup = Setup::new(&fake, &broker, "stop");
    // A long interval: only the final flush after the drain can store the last position.
    setup.interval_ms = 60_000;
    let peer = MqttPeer::connect(mqtt_options(&broker, "replay-clean-sub"), &[TOPIC]).await;
    let (_config, mut bridge) = setup.start().await;
    let first = fake.publish(CHANNEL, 40).await;
    wait_for_seqs(&peer, "the first 40 events", 1..=40).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    assert_eq!(
        setup.stored_checkpoint(),
        first.last().and_then(|e| e["replayId"].as_i64())
    );
    fake.publish(CHANNEL, 25).await;
    let (_config, mut bridge) = setup.start().await;
    wait_for_seqs(&peer, "the 25 events published while stopped", 41..=65).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let counts = counts(&events(&peer));
    let lost = (1..=65).filter(|s| !counts.contains_key(s)).count();
    let duplicated = counts.values().filter(|n| **n > 1).count();
    println!("clean restart: 65 events, lost = {lost}, duplicated = {duplicated}");
    assert_eq!((lost, duplicated), (0, 0));
}

/// Runs a bridge until it has stored a checkpoint, stops it, lets the server forget that
/// event (retention), publishes `later` more, and starts a bridge with `policy`. Returns the
/// stored id, the second bridge and its config (to keep the file alive).
async fn expire_checkpoint(
    fake: &SalesforceFake,
    setup: &Setup,
    peer: &MqttPeer,
    later: usize,
    keep: usize,
) -> (i64, ConfigFile, BridgeProcess) {
    let (_config, mut bridge) = setup.start().await;
    fake.publish(CHANNEL, 10).await;
    wait_for_seqs(peer, "the first 10 events", 1..=10).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let stored = setup.stored_checkpoint().expect("a stored checkpoint");
    fake.publish(CHANNEL, later).await;
    fake.control(
        "trim",
        serde_json::json!({"keep": keep, "channel": CHANNEL}),
    )
    .await;
    let config = ConfigFile::new(&setup.toml());
    let bridge = BridgeProcess::spawn(&config, &[]);
    (stored, config, bridge)
}

const GAP_LOG: &str = "The Bayeux server refused the stored replay id: events after it that the \
                       server no longer retains are lost.";

/// The status-topic report of a gap.
async fn gap_report(peer: &MqttPeer) -> Value {
    peer.inbox
        .wait_until("a replay gap report on the status topic", WAIT, |got| {
            got.iter()
                .any(|g| g.topic == STATUS && g.payload.starts_with(b"{"))
        })
        .await;
    peer.inbox
        .snapshot()
        .iter()
        .find(|g| g.topic == STATUS && g.payload.starts_with(b"{"))
        .map(|g| g.json())
        .expect("found above")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_checkpoint_with_earliest_replays_what_is_retained_and_reports_the_gap() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--token", TOKEN, "--poll-timeout-ms", "5000"]);
    let setup = Setup::new(&fake, &broker, "earliest");
    let peer = MqttPeer::connect(
        mqtt_options(&broker, "replay-earliest-sub"),
        &[TOPIC, STATUS],
    )
    .await;
    // 30 more events; the server keeps only the newest 5 (seq 36..=40).
    let (stored, _config, mut bridge) = expire_checkpoint(&fake, &setup, &peer, 30, 5).await;
    let line = bridge.wait_for_log(GAP_LOG, WAIT).await;
    assert_eq!(line.str_field("channel"), Some(CHANNEL));
    assert_eq!(
        line.field("last_good_replay_id"),
        Some(&Value::from(stored))
    );
    let report = gap_report(&peer).await;
    assert_eq!(report["event"], "replay_gap");
    assert_eq!(report["channel"], CHANNEL);
    assert_eq!(report["last_good_replay_id"], stored);
    assert_eq!(report["resumed_from"], -2);
    wait_for_seqs(&peer, "the 5 retained events", 36..=40).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let counts = counts(&events(&peer));
    let lost: Vec<u64> = (1..=40).filter(|s| !counts.contains_key(s)).collect();
    println!(
        "expired checkpoint, earliest: lost = {} (the server no longer had them), \
         duplicated = {}",
        lost.len(),
        counts.values().filter(|n| **n > 1).count()
    );
    assert_eq!(
        lost,
        (11..=35).collect::<Vec<_>>(),
        "exactly the expired events are missing"
    );
    assert!(
        setup.stored_checkpoint().is_some(),
        "the new position is stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_checkpoint_with_latest_takes_new_events_only_and_reports_the_gap() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--token", TOKEN, "--poll-timeout-ms", "5000"]);
    let setup = Setup::new(&fake, &broker, "latest");
    let peer =
        MqttPeer::connect(mqtt_options(&broker, "replay-latest-sub"), &[TOPIC, STATUS]).await;
    let (stored, _config, mut bridge) = expire_checkpoint(&fake, &setup, &peer, 30, 5).await;
    let report = gap_report(&peer).await;
    assert_eq!(report["last_good_replay_id"], stored);
    assert_eq!(report["resumed_from"], -1);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    fake.publish(CHANNEL, 3).await;
    wait_for_seqs(&peer, "the 3 events published after the gap", 41..=43).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let counts = counts(&events(&peer));
    let missing: Vec<u64> = (1..=43).filter(|s| !counts.contains_key(s)).collect();
    println!(
        "expired checkpoint, latest: lost = {} (reported), duplicated = {}",
        missing.len(),
        counts.values().filter(|n| **n > 1).count()
    );
    assert_eq!(missing, (11..=40).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_checkpoint_with_stop_exits_non_zero_naming_the_channel_and_id() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--token", TOKEN, "--poll-timeout-ms", "5000"]);
    let setup = Setup::new(&fake, &broker, "stop");
    let peer = MqttPeer::connect(mqtt_options(&broker, "replay-stop-sub"), &[TOPIC, STATUS]).await;
    let (stored, _config, mut bridge) = expire_checkpoint(&fake, &setup, &peer, 30, 5).await;
    let report = gap_report(&peer).await;
    assert_eq!(report["resumed_from"], Value::Null);
    let status = bridge
        .wait_exit("the bridge to stop on the gap", WAIT)
        .await;
    assert!(!status.success(), "the bridge must stop with an error");
    let failed = bridge
        .lines()
        .into_iter()
        .find(|l| l.is("Bridge failed."))
        .unwrap_or_else(|| panic!("no `Bridge failed.` line:\n{}", bridge.tail(20)));
    let error = failed.str_field("error").unwrap_or_default().to_owned();
    assert!(
        error.contains(CHANNEL) && error.contains(&stored.to_string()),
        "the error names the channel and the last good id: {error}"
    );
    assert_eq!(
        setup.stored_checkpoint(),
        Some(stored),
        "stop keeps the checkpoint for the operator"
    );
}

/// `403::Unknown client` in the middle of a stream (Salesforce expires sessions every few
/// hours) is routine: the bridge handshakes again and resubscribes from its in-memory
/// checkpoints, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_mid_stream_resumes_from_the_checkpoint() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--token", TOKEN, "--poll-timeout-ms", "5000"]);
    let setup = Setup::new(&fake, &broker, "stop");
    let peer = MqttPeer::connect(mqtt_options(&broker, "replay-expiry-sub"), &[TOPIC]).await;
    let (_config, mut bridge) = setup.start().await;
    fake.publish(CHANNEL, 200).await;
    peer.inbox
        .wait_until("some of the first 200 events", WAIT, |got| got.len() >= 50)
        .await;
    let expired = fake.control("expire-sessions", serde_json::json!({})).await;
    assert_eq!(expired["expired"], 1, "{expired}");
    // Events while the bridge has no session: they are only reachable by replay.
    fake.publish(CHANNEL, 100).await;
    bridge
        .wait_until("a second handshake", WAIT, |lines| {
            lines.iter().filter(|l| l.is("Subscribed.")).count() >= 2
        })
        .await;
    let resumed_from = last_subscribe_position(&fake)
        .await
        .expect("the resubscribe carries a replay position");
    assert!(
        resumed_from > 0,
        "resumed from a checkpoint, not {resumed_from}"
    );
    fake.publish(CHANNEL, 100).await;
    wait_for_seqs(&peer, "all 400 events", 1..=400).await;
    // The lost session is a gap that replay covers: reported at info, not as a loss.
    let covered = bridge
        .wait_for_line("the covered session_expired gap", WAIT, |l| {
            l.str_field("kind") == Some("session_expired")
        })
        .await;
    assert!(
        covered
            .message()
            .is_some_and(|m| m.starts_with("Gap covered")),
        "{}",
        covered.raw
    );
    assert_eq!(
        bridge.count("Possible message loss."),
        0,
        "{}",
        bridge.tail(30)
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let counts = counts(&events(&peer));
    let duplicated = counts.values().filter(|n| **n > 1).count();
    println!(
        "403::Unknown client mid-stream: 400 events, lost = 0, duplicated = {duplicated} \
         (resumed from replay id {resumed_from})"
    );
    // Redelivered after the resubscribe: what was in flight (at most CAPACITY) or still
    // buffered in the Bayeux client (at most CAPACITY too) when the session ended.
    assert!(
        duplicated <= 2 * CAPACITY,
        "{duplicated} duplicates: more than the in-flight and buffered window of {}",
        2 * CAPACITY
    );
}

/// Every access token revoked in the middle of a stream: the bridge (OAuth client credentials)
/// fetches a new token, starts a new session and resubscribes from its checkpoint, losing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_replaced_without_losing_events() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start(&["--poll-timeout-ms", "5000"]);
    let mut setup = Setup::new(&fake, &broker, "stop");
    setup.oauth = Some(fake.token_url().to_string());
    let peer = MqttPeer::connect(mqtt_options(&broker, "replay-oauth-sub"), &[TOPIC]).await;
    let (_config, mut bridge) = setup.start().await;
    fake.publish(CHANNEL, 150).await;
    peer.inbox
        .wait_until("some of the first 150 events", WAIT, |got| got.len() >= 50)
        .await;
    let revoked = fake.control("revoke", serde_json::json!({})).await;
    assert!(revoked["revoked"].as_u64() >= Some(1), "{revoked}");
    // Events while the bridge's session is gone: reachable only by replay.
    fake.publish(CHANNEL, 100).await;
    bridge.wait_for_log("Token refreshed.", WAIT).await;
    bridge
        .wait_until("a subscription in the new session", WAIT, |lines| {
            lines.iter().filter(|l| l.is("Subscribed.")).count() >= 2
        })
        .await;
    fake.publish(CHANNEL, 50).await;
    wait_for_seqs(&peer, "all 300 events", 1..=300).await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(20));
    let stats = fake.stats().await;
    let counts = counts(&events(&peer));
    let duplicated = counts.values().filter(|n| **n > 1).count();
    println!(
        "token revoked mid-stream: 300 events, lost = 0, duplicated = {duplicated}, tokens \
         issued = {}",
        stats["tokensIssued"]
    );
    assert!(stats["tokensIssued"].as_u64() >= Some(2), "{stats}");
    assert!(duplicated <= 2 * CAPACITY, "{duplicated} duplicates");
}

/// Replay with a wildcard route is refused at start (issue 14, item 2): replay positions are
/// per concrete channel (Salesforce's replay extension resumes named channels, not
/// patterns), so such a route could never resume, and keeping one position per channel name
/// the server sends grew memory, `checkpoints.json` and the metric series without bound.
/// `check` and the daemon both exit 2 naming the file, the key and the reason; a route that
/// only publishes to a pattern's channels (`mqtt_to_bayeux`) does not subscribe and is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_with_a_wildcard_subscription_is_refused_at_start_with_exit_2() {
    let dir = TempDir::new("replay-wildcard");
    let toml = |routes: &str| {
        format!(
            "[bayeux]\nurl = \"http://127.0.0.1:9/cometd\"\n\n[mqtt]\nhost = \"127.0.0.1\"\n\
             port = 9\n\n[replay]\nenabled = true\nstate_dir = \"{}\"\n\n{routes}",
            dir.path().join("state").display()
        )
    };
    let wildcard = toml(
        "[[route]]\nbayeux = \"/event/Order__e\"\nmqtt = \"sf/order\"\n\
         direction = \"bayeux_to_mqtt\"\n\n\
         [[route]]\nbayeux = \"/event/**\"\nmqtt = \"sf/#\"\ndirection = \"both\"\n",
    );
    let config = ConfigFile::new(&wildcard);
    let checked = common::bridge::check(config.path());
    assert_eq!(checked.status.code(), Some(2), "{checked:?}");
    for expected in [
        config.path().display().to_string(),
        "route[2].bayeux".to_owned(),
        "/event/** is a pattern, but replay.enabled = true".to_owned(),
    ] {
        assert!(
            checked.stderr.contains(&expected),
            "{expected:?} in {checked:?}"
        );
    }
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    let status = bridge
        .wait_exit("the daemon refusing the config", Duration::from_secs(10))
        .await;
    assert_eq!(status.code(), Some(2), "log:\n{}", bridge.tail(20));
    assert!(
        bridge.tail(20).contains("route[2].bayeux"),
        "log:\n{}",
        bridge.tail(20)
    );
    assert!(
        !dir.path().join("state").join("checkpoints.json").exists(),
        "nothing was started"
    );

    // Publishing to a pattern's channels subscribes to nothing on the Bayeux side.
    let publishing = toml(
        "[[route]]\nbayeux = \"/event/**\"\nmqtt = \"sf/#\"\ndirection = \"mqtt_to_bayeux\"\n",
    );
    let config = ConfigFile::new(&publishing);
    let checked = common::bridge::check(config.path());
    assert_eq!(checked.status.code(), Some(0), "{checked:?}");
}

//! Issue 14, items 3, 6 and 7: what a hostile or stalled Bayeux server can do to the daemon's
//! log, its readiness and its memory, on the real binary (`common::bridge`) with a real
//! Mosquitto.
//!
//! - A flood of deliveries on channels the bridge never subscribed to: the scripted fake
//!   server (`common::fake_server`) sends them, as a real server never delivers on a channel
//!   nobody subscribed to. The log must stay bounded (rate-limited warnings and one line
//!   with the number suppressed) and never show a payload at info or warn.
//! - A stalled data plane: a real CometD server behind the fault proxy (`common::gate`),
//!   blackholed: `/readyz` must say not ready, with the stall as a reason, within the bound
//!   the Bayeux client computes from the advice, and ready again once the path opens.
//! - A reply of more messages than the cap (scripted: a real server sends what was
//!   published): refused before it is decoded, counted, and the session carries on.
//! - `log.file` renamed by logrotate: SIGHUP opens it again, and the reload still happens.
//!
//! Synchronisation is by the bridge's JSON log lines and, where `/readyz` is the thing under
//! test, by polling it at short intervals up to a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use common::bridge::{BridgeProcess, ConfigFile, LogLine};
use common::fake_server::{FakeServer, Reply, Request, bayeux};
use common::mosquitto::Mosquitto;

/// Longest any single expected event may take. Generous: it only bounds failures.
const WAIT: Duration = Duration::from_secs(20);

/// What the flood's payloads carry; it must never appear in the log at info or above.
const MARKER: &str = "payload-marker-9f3c";

/// Unroutable deliveries the fake server sends in one reply: more than the Bayeux client's
/// event buffer (1024), so the "buffer full" path is flooded too.
const FLOOD: usize = 3000;

/// The Bayeux client's rate limit (`log_limit::BURST`).
const BURST: usize = 10;

const UNROUTED: &str = "Message could not be routed.";
const BUFFER_FULL: &str = "Event buffer full; the event is dropped (read Events to keep up).";
const SUPPRESSED: &str = "Repeated warnings suppressed.";

fn bridge_toml(url: &str, broker: &Mosquitto, client_id: &str, extra: &str) -> String {
    format!(
        "[bayeux]\n\
         url = \"{url}\"\n\
         backoff_increment_ms = 100\n\
         backoff_max_ms = 1000\n\
         max_network_delay_secs = 2\n\
         \n\
         [mqtt]\n\
         host = \"{host}\"\n\
         port = {port}\n\
         client_id = \"{client_id}\"\n\
         connect_timeout_secs = 2\n\
         keep_alive_secs = 5\n\
         backoff_increment_ms = 100\n\
         backoff_max_ms = 1000\n\
         \n\
         [bridge]\n\
         drain_timeout_secs = 3\n\
         {extra}\n\
         [[route]]\n\
         bayeux = \"/demo/x\"\n\
         mqtt = \"demo/x\"\n\
         direction = \"bayeux_to_mqtt\"\n",
        host = broker.host(),
        port = broker.port(),
    )
}

/// Handshake, subscribe and disconnect succeed; the first `/meta/connect` after the subscribe
/// is answered with `flood` deliveries on a channel nobody subscribed to; every other
/// connect is held for half a second, as a real server holds it.
fn flooding(flood: usize) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let subscribed = AtomicBool::new(false);
    let flooded = AtomicBool::new(false);
    move |req| {
        let mut replies = Vec::new();
        let mut hold = false;
        for message in &req.messages {
            match message.get("channel").and_then(Value::as_str).unwrap_or("") {
                "/meta/handshake" => replies.push(bayeux::handshake_ok(message, "flood-client")),
                "/meta/subscribe" => {
                    subscribed.store(true, Ordering::SeqCst);
                    replies.push(bayeux::subscribe_ok(message));
                }
                "/meta/connect" => {
                    replies.push(bayeux::connect_ok(message, None));
                    if subscribed.load(Ordering::SeqCst) && !flooded.swap(true, Ordering::SeqCst) {
                        for i in 0..flood {
                            replies.push(bayeux::delivery(
                                "/elsewhere/x",
                                json!({"secret": MARKER, "n": i}),
                            ));
                        }
                    } else {
                        hold = true;
                    }
                }
                _ => replies.push(bayeux::ok(message)),
            }
        }
        let reply = Reply::Json(Value::Array(replies));
        if hold {
            Reply::Delayed(Duration::from_millis(500), Box::new(reply))
        } else {
            reply
        }
    }
}

fn count(lines: &[LogLine], message: &str) -> usize {
    lines.iter().filter(|l| l.is(message)).count()
}

fn suppressed_of(lines: &[LogLine], warning: &str) -> u64 {
    lines
        .iter()
        .filter(|l| l.is(SUPPRESSED) && l.str_field("warning") == Some(warning))
        .filter_map(|l| l.u64_field("suppressed"))
        .sum()
}

#[tokio::test]
async fn a_flood_of_unroutable_messages_logs_a_bounded_number_of_lines_without_payloads() {
    let broker = Mosquitto::start_async().await;
    let server = FakeServer::start(flooding(FLOOD)).await;
    let config = ConfigFile::new(&bridge_toml(&server.url(), &broker, "bounds-flood", ""));
    // Info, as a production bridge logs; payloads may appear at trace only.
    let mut bridge = BridgeProcess::spawn(&config, &[("RUST_LOG", "info")]);
    let started = Instant::now();
    // The limiter reports a window once it has ended (10 s after its first line).
    bridge
        .wait_until(
            "the count of suppressed unroutable warnings",
            WAIT,
            |lines| suppressed_of(lines, UNROUTED) > 0,
        )
        .await;
    let lines = bridge.lines();
    let logged = count(&lines, UNROUTED);
    let suppressed = suppressed_of(&lines, UNROUTED);
    assert!(
        logged <= BURST,
        "{logged} unroutable warnings for {FLOOD} messages (at most {BURST} expected)"
    );
    assert_eq!(
        logged as u64 + suppressed,
        FLOOD as u64,
        "every unroutable message is either logged or counted as suppressed"
    );
    assert!(
        count(&lines, BUFFER_FULL) <= BURST,
        "{} buffer-full warnings",
        count(&lines, BUFFER_FULL)
    );
    let leaks: Vec<&str> = lines
        .iter()
        .filter(|l| l.raw.contains(MARKER))
        .map(|l| l.raw.as_str())
        .collect();
    assert!(
        leaks.is_empty(),
        "payload text in the log at info level ({} lines), e.g. {:.300}",
        leaks.len(),
        leaks[0]
    );
    let total = lines.len();
    assert!(
        total < 200,
        "{total} log lines within {:?} of a {FLOOD}-message flood",
        started.elapsed()
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(40));
}

// ---------------------------------------------------------------------------------------
// log.file: reopened on SIGHUP (logrotate), and the reload still happens
// ---------------------------------------------------------------------------------------

/// Polls `path` until its text satisfies `done`; fails after [`WAIT`] with what it holds.
async fn wait_file(path: &std::path::Path, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "waiting for {what} in {}: timed out; it holds:\n{text}",
            path.display()
        );
        // Polling a file: nothing announces a write to it.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn sighup_reopens_a_rotated_log_file_and_still_reloads_the_config() {
    let broker = Mosquitto::start_async().await;
    let server = common::peers::PeerServer::start_async(common::peers::PeerKind::CometD).await;
    let dir = common::bridge::TempDir::new("bounds-logrotate");
    let log = dir.path().join("bridge.log");
    let extra = format!("\n[log]\nfile = \"{}\"\n", log.display());
    let config = ConfigFile::new(&bridge_toml(
        &server.url(),
        &broker,
        "bounds-rotate",
        &extra,
    ));
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    wait_file(&log, "Bridge ready.", |t| t.contains("\"Bridge ready.\"")).await;

    // logrotate without copytruncate: rename, then signal.
    let rotated = dir.path().join("bridge.log.1");
    std::fs::rename(&log, &rotated).expect("rename the log file");
    bridge.signal("HUP");
    let fresh = wait_file(&log, "Config reloaded.", |t| {
        t.contains("\"Config reloaded.\"")
    })
    .await;
    assert!(fresh.contains("\"Log file reopened.\""), "{fresh}");
    let old = std::fs::read_to_string(&rotated).expect("the rotated file");
    assert!(
        !old.contains("Config reloaded."),
        "the reload was logged to the rotated file:\n{old}"
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(40));
    let fresh = std::fs::read_to_string(&log).expect("the new log file");
    assert!(fresh.contains("\"Bridge stopped.\""), "{fresh}");
}

// ---------------------------------------------------------------------------------------
// A stalled Bayeux data plane is not ready
// ---------------------------------------------------------------------------------------

/// The CometD server's long-poll hold in the stall test.
const HOLD_MS: u64 = 2000;
/// `bayeux.max_network_delay_secs` of the test bridges.
const NETWORK_DELAY_SECS: u64 = 2;
/// The stall bound the Bayeux client computes: advice timeout + interval (CometD: 0) +
/// network delay + the 5 s margin (`bayeux::liveness::STALL_MARGIN`).
const STALL_BOUND: Duration = Duration::from_secs(HOLD_MS / 1000 + NETWORK_DELAY_SECS + 5);
const STALLED: &str = "Bayeux data plane stalled";

/// `/readyz` as (status, reasons).
async fn readyz(port: u16) -> Option<(u16, Vec<String>)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/readyz"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.ok()?;
    let reasons = body["reasons"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    Some((status, reasons))
}

/// Polls `/readyz` until `done` holds; fails after `within` with the last answer.
async fn wait_readyz(
    port: u16,
    what: &str,
    within: Duration,
    done: impl Fn(u16, &[String]) -> bool,
) -> Duration {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < within {
        if let Some((status, reasons)) = readyz(port).await {
            if done(status, &reasons) {
                return started.elapsed();
            }
            last = Some((status, reasons));
        }
        // Polling the endpoint under test.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/readyz: {what} not within {within:?}; last answer {last:?}");
}

/// Starts the bridge for `url` with an HTTP listener on a free loopback port.
async fn spawn_with_http(
    url: &str,
    broker: &Mosquitto,
    client: &str,
) -> (ConfigFile, BridgeProcess, u16) {
    let toml_for = |port: u16| {
        let extra = format!("\n[http]\nlisten = \"127.0.0.1:{port}\"\n");
        bridge_toml(url, broker, client, &extra)
    };
    BridgeProcess::spawn_with_http(toml_for, &[], WAIT).await
}

#[tokio::test]
async fn a_blackholed_bayeux_path_makes_the_bridge_not_ready_within_the_stall_bound() {
    use common::gate::Gate;
    use common::peers::{PeerKind, PeerServer};
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_with_timeout_async(PeerKind::CometD, HOLD_MS).await;
    let gate = Gate::start(server.port()).await;
    let url = format!("http://127.0.0.1:{}/cometd", gate.port());
    let (_config, mut bridge, port) = spawn_with_http(&url, &broker, "bounds-stall").await;
    wait_readyz(port, "ready", WAIT, |status, _| status == 200).await;

    gate.blackhole();
    let took = wait_readyz(port, "the stall reported", WAIT, |status, reasons| {
        status == 503 && reasons.iter().any(|r| r.starts_with(STALLED))
    })
    .await;
    // The last exchange was at most one hold before the blackhole; the check runs every
    // second.
    let allowed = STALL_BOUND + Duration::from_secs(2);
    assert!(
        took <= allowed,
        "the stall showed after {took:?}, over the {allowed:?} allowed"
    );

    gate.open();
    wait_readyz(port, "ready again", WAIT, |status, _| status == 200).await;
    // `/readyz` reads the liveness when asked; the log line comes from the check that runs
    // every second, so it may follow the first 200 by up to a second.
    bridge
        .wait_until("the recovery logged", WAIT, |lines| {
            lines
                .iter()
                .any(|l| l.is("Bayeux data plane moving again."))
        })
        .await;
    let lines = bridge.lines();
    assert_eq!(
        count(&lines, "Bayeux data plane stalled."),
        1,
        "{}",
        bridge.tail(40)
    );
    assert_eq!(
        count(&lines, "Bayeux data plane moving again."),
        1,
        "{}",
        bridge.tail(40)
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(40));
}

// ---------------------------------------------------------------------------------------
// A reply of more messages than the cap is a bad reply, counted, and the bridge recovers
// ---------------------------------------------------------------------------------------

/// The Bayeux client's default `max_messages_per_reply`.
const MAX_MESSAGES: usize = 100_000;

#[tokio::test]
async fn a_reply_over_the_message_cap_is_refused_counted_and_the_bridge_recovers() {
    let broker = Mosquitto::start_async().await;
    let server = FakeServer::start(flooding(MAX_MESSAGES + 1)).await;
    let (_config, mut bridge, port) = spawn_with_http(&server.url(), &broker, "bounds-cap").await;
    let failed = |l: &LogLine| {
        l.is("Connect failed; will retry.")
            && l.str_field("reason")
                .is_some_and(|r| r.contains(&format!("more than {MAX_MESSAGES} messages")))
    };
    bridge
        .wait_until("the refused reply", WAIT, |lines| lines.iter().any(failed))
        .await;
    // The normal failure path: connect again, ready again.
    wait_readyz(port, "ready after the bad reply", WAIT, |status, _| {
        status == 200
    })
    .await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    assert!(
        metrics.contains(r#"bridge_bad_replies_total{side="bayeux",cause="too_many_messages"} 1"#),
        "{metrics}"
    );
    let lines = bridge.lines();
    assert_eq!(
        count(&lines, UNROUTED),
        0,
        "no message of the refused reply was decoded"
    );
    assert!(
        !lines.iter().any(|l| l.raw.contains(MARKER)),
        "payload in the log"
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(40));
}

/// The library's own option: a client with `max_messages_per_reply = 5` refuses a reply of
/// 10 messages as a bad reply, retries the connect and carries on.
#[tokio::test]
async fn the_client_option_sets_the_message_cap() {
    use bayeux_mqtt_bridge::bayeux::{Client, ClientOptions, Event, TransportError};
    let server = FakeServer::start(flooding(10)).await;
    let mut options = ClientOptions::new(server.url().parse().expect("the fake server's URL"));
    options.max_messages_per_reply = 5;
    options.max_network_delay = Duration::from_secs(2);
    let (client, mut events) = Client::new(options).expect("a client");
    let _subscription = client.subscribe("/demo/x").await.expect("subscribe");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no recovery within {WAIT:?}; events {seen:?}"))
            .expect("the client keeps running");
        let connected_again = matches!(event, Event::Connected)
            && seen
                .iter()
                .any(|e| matches!(e, Event::ConnectFailed { .. }));
        seen.push(event);
        if connected_again {
            break;
        }
    }
    assert!(
        seen.contains(&Event::BadReply {
            error: TransportError::TooManyMessages { cap: 5 }
        }),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Unrouted { .. })),
        "a message of the refused reply was decoded: {seen:?}"
    );
    client.disconnect().await;
}

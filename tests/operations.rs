//! Operations tests (issue 4, "Tests"): metrics, health endpoints, live reload and sd_notify,
//! on the real binary (`common::bridge`) with a real Mosquitto broker (`common::mosquitto`)
//! and real CometD servers (`common::peers`), each started by the test on free loopback ports.
//!
//! Synchronisation is by events: the bridge's JSON log lines (`Bridge ready.`, `Config
//! reloaded.`, …), the test clients' deliveries and the datagrams on a test `NOTIFY_SOCKET`.
//! Polling happens only where an HTTP endpoint or a broker's log is the thing looked at
//! (`/readyz`, `/metrics`, mosquitto -v), at short intervals up to a deadline. Every wait has
//! a deadline and fails with what was seen. That something does *not* happen is proved with a
//! final marker message along the same ordered path where there is one; the one observation
//! window left (a changed Bayeux server: two servers share no order) is commented where used.
//! The restart and outage scenarios run against both CometD and Faye.
//!
//! Tests 1–6 are the list. Tests 7–10 go further into live reload: SIGTERM while a
//! reload waits for the broker, a changed route with messages waiting in the bridge, a
//! `[bayeux] url` change while the old server is down, and the subscription gauges after a
//! reload removed routes. Tests 11–12 are issue 13's gap reports: a Bayeux session lost while
//! the broker was away, and a broker that lost the bridge's persistent session.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::ops::Range;
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BINARY, BridgeProcess, ConfigFile, LogLine, TempDir};
use common::gate::Gate;
use common::inbox::Inbox;
use common::mosquitto::{self, Mosquitto};
use common::mqtt_peer::{MqttPeer, mqtt_options};
use common::peers::{PeerKind, PeerServer};

/// Longest any single expected event may take. Generous: it only bounds failures.
const WAIT: Duration = Duration::from_secs(20);
/// The span the bridge's publishing Bayeux session logs in (`bridge::publisher`).
const PUBLISHING_SESSION: &str = "publishing_session";
/// Interval between two requests when polling an HTTP endpoint under test.
const POLL: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------------------------
// Bridge configuration and process
// ---------------------------------------------------------------------------------------------

/// One `[[route]]` table at QoS 1.
fn route(bayeux: &str, mqtt: &str, direction: &str) -> String {
    format!(
        "[[route]]\nbayeux = \"{bayeux}\"\nmqtt = \"{mqtt}\"\ndirection = \"{direction}\"\nqos = 1\n"
    )
}

/// What a test's bridge config is made of; [`Setup::toml`] renders it with a set of routes.
struct Setup {
    url: String,
    host: &'static str,
    port: u16,
    client_id: String,
    /// `[http] listen = "127.0.0.1:<port>"` when set.
    http_port: Option<u16>,
    /// Lines added to `[bayeux]` (e.g. an invalid key).
    bayeux_extra: String,
    /// `bridge.queue_capacity`.
    queue_capacity: usize,
}

impl Setup {
    fn new(url: &str, broker: &Mosquitto, client_id: &str, http: bool) -> Setup {
        Setup {
            url: url.to_owned(),
            host: broker.host(),
            port: broker.port(),
            client_id: client_id.to_owned(),
            http_port: http.then_some(0),
            bayeux_extra: String::new(),
            queue_capacity: QUEUE_CAPACITY,
        }
    }

    /// A config with fast reconnects on both sides, a short drain and a small queue.
    fn toml(&self, routes: &[String]) -> String {
        let http = match self.http_port {
            Some(port) => format!("[http]\nlisten = \"127.0.0.1:{port}\"\n"),
            None => String::new(),
        };
        format!(
            "[bayeux]\n\
             url = \"{url}\"\n\
             backoff_increment_ms = 100\n\
             backoff_max_ms = 1000\n\
             max_network_delay_secs = 5\n\
             {bayeux_extra}\n\
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
             queue_capacity = {queue_capacity}\n\
             drain_timeout_secs = 3\n\
             \n\
             {http}\n\
             {routes}",
            url = self.url,
            bayeux_extra = self.bayeux_extra,
            queue_capacity = self.queue_capacity,
            host = self.host,
            port = self.port,
            client_id = self.client_id,
            routes = routes.concat(),
        )
    }
}

/// `bridge.queue_capacity` of the test bridges, unless a test sets another.
const QUEUE_CAPACITY: usize = 64;

/// Writes the config of `setup` with `routes` and runs the bridge on it. With an HTTP
/// listener, picks a free port and waits until the listener started, trying another port if
/// the bridge could not bind it (another test took it in between).
async fn spawn_bridge(
    setup: &mut Setup,
    routes: &[String],
    env: &[(&str, &str)],
) -> (ConfigFile, BridgeProcess) {
    if setup.http_port.is_none() {
        let config = ConfigFile::new(&setup.toml(routes));
        let bridge = BridgeProcess::spawn(&config, env);
        return (config, bridge);
    }
    // The port the bridge listens on stays in `setup` (the last one tried).
    let (config, bridge, _) = BridgeProcess::spawn_with_http(
        |port| {
            setup.http_port = Some(port);
            setup.toml(routes)
        },
        env,
        WAIT,
    )
    .await;
    (config, bridge)
}

/// SIGTERMs the bridge and checks that it exited 0.
async fn stop(bridge: &mut BridgeProcess) {
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "the bridge exited with {status} after SIGTERM; its log ends:\n{}",
        bridge.tail(40)
    );
}

/// Rewrites the bridge's config file (the bridge reads it only on SIGHUP).
fn rewrite(config: &ConfigFile, toml: &str) {
    std::fs::write(config.path(), toml)
        .unwrap_or_else(|e| panic!("cannot rewrite {}: {e}", config.path().display()));
}

/// Waits for the Bayeux client's `Subscribed.` line for `pattern` number `n` (from 1): the
/// server confirmed the subscription, so publishes on it reach the bridge from now on.
async fn wait_bayeux_subscribed(bridge: &BridgeProcess, pattern: &str, n: usize) {
    bridge
        .wait_until(
            &format!("Bayeux confirmation #{n} of {pattern}"),
            WAIT,
            |lines| {
                lines
                    .iter()
                    .filter(|l| l.is("Subscribed.") && l.str_field("subscription") == Some(pattern))
                    .count()
                    >= n
            },
        )
        .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// The bridge's HTTP listener.
struct Http {
    base: String,
    client: reqwest::Client,
}

/// One `/metrics` sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` exposition.
#[derive(Debug, Clone)]
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    fn parse(text: String) -> Scrape {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unreadable metric line {l:?}")))
            .collect();
        Scrape { text, samples }
    }

    /// The value of the sample with exactly these labels, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == wanted)
            .map(|s| s.value)
    }

    /// [`Scrape::get`], failing (with the exposition) when absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in /metrics:\n{}", self.text))
    }

    /// A counter: absent counts as 0 (a family shows a label set only once it is used).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every sample of `name`, as `labels → value`.
    fn family(&self, name: &str) -> BTreeMap<BTreeMap<String, String>, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }
}

/// Parses `name{a="x",b="y"} value` (label values may hold escaped quotes).
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let (start, c) = chars.next()?;
            if c == '}' {
                rest = &after[start + 1..];
                break;
            }
            if c == ',' {
                continue;
            }
            let eq = after[start..].find('=')? + start;
            let key = after[start..eq].to_owned();
            while chars.peek()?.0 <= eq {
                chars.next();
            }
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()?.1 {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break,
                    other => value.push(other),
                }
            }
            labels.insert(key, value);
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

impl Http {
    fn new(setup: &Setup) -> Http {
        let port = setup.http_port.expect("the bridge has an HTTP listener");
        Http {
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .expect("an HTTP client"),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// GET `path`: status, content type and body.
    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: body: {e}"));
        (status, content_type, body)
    }

    async fn scrape(&self) -> Scrape {
        let (status, content_type, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        assert!(
            content_type.starts_with("application/openmetrics-text")
                || content_type.starts_with("text/plain"),
            "GET /metrics: content type {content_type:?}"
        );
        assert!(
            body.ends_with("# EOF\n"),
            "an OpenMetrics exposition ends with # EOF:\n{body}"
        );
        Scrape::parse(body)
    }

    /// Scrapes `/metrics` until `done` holds (the metric under test), up to [`WAIT`].
    async fn scrape_until(&self, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
        let deadline = Instant::now() + WAIT;
        loop {
            let scrape = self.scrape().await;
            if done(&scrape) {
                return scrape;
            }
            if Instant::now() > deadline {
                panic!(
                    "waiting for {what} in /metrics: timed out after {WAIT:?}; the last \
                     scrape:\n{}",
                    scrape.text
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls `/readyz` until it answers `want`, checking that `/livez` answers 200 each time;
    /// returns the `/readyz` body as JSON.
    async fn wait_readyz(&self, want: u16, what: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (live, _, body) = self.get("/livez").await;
            assert_eq!(live, 200, "/livez while waiting for {what}: {body}");
            let (status, content_type, body) = self.get("/readyz").await;
            if status == want {
                assert_eq!(content_type, "application/json", "/readyz content type");
                return serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("/readyz body is not JSON ({e}): {body}"));
            }
            if Instant::now() > deadline {
                panic!("waiting for {what}: /readyz still answers {status} after {WAIT:?}: {body}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Polls a broker's log until `done` holds for it; returns the log.
async fn wait_broker_log(broker: &Mosquitto, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = broker.log();
        if done(&log) {
            return log;
        }
        if Instant::now() > deadline {
            panic!("waiting for {what} in the broker's log: timed out after {WAIT:?}:\n{log}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `bayeux-mqtt-bridge health --url URL`: exit code and stderr.
async fn health(url: &str) -> (Option<i32>, String) {
    let output = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(BINARY)
            .args(["health", "--url", url])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`health --url {url}` still runs after {WAIT:?}"))
    .unwrap_or_else(|e| panic!("cannot run {BINARY} health: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// 1. Metrics
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_change_as_traffic_flows() {
    const N: u64 = 25;
    const B2M: &str = "bayeux_to_mqtt";
    const M2B: &str = "mqtt_to_bayeux";
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = server.url();
    let mqtt_sub = MqttPeer::connect(mqtt_options(&broker, "ops-metrics-sub"), &["m/out/#"]).await;
    let mqtt_pub = MqttPeer::connect(mqtt_options(&broker, "ops-metrics-pub"), &[]).await;
    let bayeux_sub = BayeuxPeer::subscriber(&url, "/m/in/**", WAIT).await;
    let bayeux_pub = BayeuxPeer::publisher(&url, WAIT);
    let mut setup = Setup::new(&url, &broker, "ops-metrics", true);
    let routes = [
        route("/m/out/*", "m/out/+", B2M),
        route("/m/in/*", "m/in/+", M2B),
    ];
    let (_config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let http = Http::new(&setup);

    // Before any traffic: state gauges, build info, nothing counted yet.
    let before = http
        .scrape_until("bridge_ready 1", |s| {
            s.get("bridge_ready", &[]) == Some(1.0)
        })
        .await;
    for (name, labels, want) in [
        ("bridge_connected", vec![("side", "mqtt")], 1.0),
        ("bridge_connected", vec![("side", "bayeux")], 1.0),
        (
            "bridge_subscription_confirmed",
            vec![("side", "bayeux"), ("subscription", "/m/out/*")],
            1.0,
        ),
        (
            "bridge_subscription_confirmed",
            vec![("side", "mqtt"), ("subscription", "m/in/+")],
            1.0,
        ),
        ("bridge_ready", vec![], 1.0),
        (
            "bridge_build_info",
            vec![("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        ),
        (
            "bridge_queue_capacity",
            vec![("direction", B2M)],
            QUEUE_CAPACITY as f64,
        ),
        (
            "bridge_queue_capacity",
            vec![("direction", M2B)],
            QUEUE_CAPACITY as f64,
        ),
        ("bridge_in_flight_messages", vec![("direction", B2M)], 0.0),
        ("bridge_in_flight_messages", vec![("direction", M2B)], 0.0),
    ] {
        assert_eq!(
            before.value(name, &labels),
            want,
            "{name}{labels:?} once ready; the exposition:\n{}",
            before.text
        );
    }
    let handshakes = before.value(
        "bridge_handshakes_total",
        &[("side", "bayeux"), ("cause", "initial")],
    );
    assert!(
        handshakes >= 1.0,
        "bridge_handshakes_total{{side=bayeux,cause=initial}} = {handshakes}"
    );
    for name in [
        "bridge_messages_received_total",
        "bridge_messages_forwarded_total",
        "bridge_messages_dropped_total",
        "bridge_last_forward_timestamp_seconds",
    ] {
        assert!(
            before.family(name).values().all(|v| *v == 0.0),
            "{name} before any traffic: {:?}",
            before.family(name)
        );
    }

    // N messages each way.
    let started = SystemTime::now();
    bayeux_pub.publish_ids("/m/out/x", 0..N).await;
    mqtt_pub.publish_ids("m/in/x", 0..N).await;
    let all: BTreeSet<u64> = (0..N).collect();
    mqtt_sub
        .wait_for_ids("N ids Bayeux → MQTT", "m/out/", all.iter().copied())
        .await;
    bayeux_sub
        .wait_for_ids("N ids MQTT → Bayeux", "/m/in/", all.iter().copied())
        .await;
    // A message counts as forwarded once the destination acknowledged it, which may be a
    // moment after the test client saw it.
    let b2m = [("direction", B2M), ("route", "route[1]")];
    let m2b = [("direction", M2B), ("route", "route[2]")];
    let n = N as f64;
    let after = http
        .scrape_until("N forwarded each way", |s| {
            s.counter("bridge_messages_forwarded_total", &b2m) >= n
                && s.counter("bridge_messages_forwarded_total", &m2b) >= n
        })
        .await;
    let counts = |s: &Scrape, name: &str| {
        (
            s.counter(name, &b2m) - before.counter(name, &b2m),
            s.counter(name, &m2b) - before.counter(name, &m2b),
        )
    };
    assert_eq!(
        counts(&after, "bridge_messages_received_total"),
        (n, n),
        "received (Bayeux → MQTT route 1, MQTT → Bayeux route 2)"
    );
    assert_eq!(
        counts(&after, "bridge_messages_forwarded_total"),
        (n, n),
        "forwarded (Bayeux → MQTT route 1, MQTT → Bayeux route 2)"
    );
    for name in [
        "bridge_messages_received_total",
        "bridge_messages_forwarded_total",
    ] {
        assert_eq!(
            after.family(name).len(),
            2,
            "{name} has only the two routes' label sets: {:?}",
            after.family(name)
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let since = started.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    for direction in [B2M, M2B] {
        let last = after.value(
            "bridge_last_forward_timestamp_seconds",
            &[("direction", direction)],
        );
        // Whole-second slack: the bridge and the test read the same clock, but the
        // exposition may round.
        assert!(
            since - 1.0 <= last && last <= now + 1.0,
            "bridge_last_forward_timestamp_seconds{{direction={direction}}} = {last}, not \
             within the traffic ({since} .. {now})"
        );
    }
    assert!(
        after
            .family("bridge_messages_dropped_total")
            .values()
            .all(|v| *v == 0.0),
        "no drops yet: {:?}",
        after.family("bridge_messages_dropped_total")
    );

    // A binary MQTT payload is refused under the default policy: counted as dropped.
    mqtt_pub
        .publish("m/in/bin", vec![0xff_u8, 0xfe, 0x00, 0x80])
        .await;
    let dropped = [
        ("direction", M2B),
        ("route", "route[2]"),
        ("reason", "binary_payload"),
    ];
    let after_drop = http
        .scrape_until("the binary payload drop", |s| {
            s.counter("bridge_messages_dropped_total", &dropped) >= 1.0
        })
        .await;
    assert_eq!(
        after_drop.family("bridge_messages_dropped_total"),
        BTreeMap::from([(
            dropped
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            1.0
        )]),
        "exactly one drop, with direction, route and reason"
    );
    assert_eq!(
        counts(&after_drop, "bridge_messages_received_total"),
        (n, n + 1.0),
        "the dropped message was received"
    );
    assert_eq!(
        counts(&after_drop, "bridge_messages_forwarded_total"),
        (n, n),
        "the dropped message was not forwarded"
    );

    stop(&mut bridge).await;
    // The exit totals agree with what /metrics said.
    let totals = bridge.totals(B2M);
    assert_eq!((totals.received, totals.forwarded), (N, N), "{totals:?}");
    assert!(totals.dropped.is_empty(), "{totals:?}");
    let totals = bridge.totals(M2B);
    assert_eq!(
        (totals.received, totals.forwarded, totals.dropped),
        (N + 1, N, BTreeMap::from([("binary_payload".to_owned(), 1)])),
        "MQTT → Bayeux totals"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. /readyz, /livez and `health`
// ---------------------------------------------------------------------------------------------

async fn readyz_goes_503_when_mosquitto_stops_and_200_when_it_is_back(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let mut broker = Mosquitto::start_async().await;
    let url = server.url();
    let mut setup = Setup::new(&url, &broker, "ops-readyz", true);
    let routes = [
        route("/r/out/*", "r/out/+", "bayeux_to_mqtt"),
        route("/r/in/*", "r/in/+", "mqtt_to_bayeux"),
    ];
    let (_config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    let http = Http::new(&setup);
    let readyz = http.url("/readyz");

    let body = http.wait_readyz(200, "ready at start").await;
    assert_eq!(
        body,
        json!({ "ready": true, "reasons": [] }),
        "/readyz body"
    );
    let (code, stderr) = health(&readyz).await;
    assert_eq!(code, Some(0), "`health` while ready: {stderr}");
    assert!(
        bridge.count("Bridge ready.") >= 1,
        "/readyz said 200 before the bridge logged ready; log:\n{}",
        bridge.tail(30)
    );

    // The broker dies: not ready, with a reason naming the MQTT side.
    broker.kill();
    let body = http
        .wait_readyz(503, "not ready with the broker down")
        .await;
    assert_eq!(body["ready"], json!(false), "/readyz body {body}");
    let reasons: Vec<String> = body["reasons"]
        .as_array()
        .unwrap_or_else(|| panic!("no reasons list in {body}"))
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("MQTT")),
        "a reason names the MQTT side: {reasons:?}"
    );
    assert!(
        !reasons.iter().any(|r| r.contains("Bayeux server")),
        "the Bayeux side is still connected: {reasons:?}"
    );
    let (code, stderr) = health(&readyz).await;
    assert_eq!(code, Some(1), "`health` while not ready: {stderr}");
    assert!(
        stderr.contains("503") && stderr.contains("MQTT"),
        "`health` says why: {stderr}"
    );
    let scrape = http.scrape().await;
    assert_eq!(scrape.value("bridge_connected", &[("side", "mqtt")]), 0.0);
    assert_eq!(scrape.value("bridge_ready", &[]), 0.0);

    // Back on the same port: ready again once reconnected and resubscribed.
    broker.restart_async().await;
    let body = http
        .wait_readyz(200, "ready after the broker is back")
        .await;
    assert_eq!(
        body,
        json!({ "ready": true, "reasons": [] }),
        "/readyz body"
    );
    let (code, stderr) = health(&readyz).await;
    assert_eq!(code, Some(0), "`health` after recovery: {stderr}");
    let scrape = http.scrape().await;
    assert_eq!(scrape.value("bridge_connected", &[("side", "mqtt")]), 1.0);
    assert_eq!(scrape.value("bridge_ready", &[]), 1.0);
    assert!(
        scrape.counter(
            "bridge_reconnects_total",
            &[("side", "mqtt"), ("cause", "disconnected")]
        ) >= 1.0,
        "the lost connection is counted:\n{}",
        scrape.text
    );
    let (live, _, _) = http.get("/livez").await;
    assert_eq!(live, 200, "/livez at the end");
    stop(&mut bridge).await;
    // Nothing listens any more: `health` fails.
    let (code, stderr) = health(&readyz).await;
    assert_eq!(code, Some(1), "`health` with the bridge stopped: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_503_when_mosquitto_stops_and_200_when_it_is_back_cometd() {
    readyz_goes_503_when_mosquitto_stops_and_200_when_it_is_back(PeerKind::CometD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_goes_503_when_mosquitto_stops_and_200_when_it_is_back_faye() {
    readyz_goes_503_when_mosquitto_stops_and_200_when_it_is_back(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------------
// 3. SIGHUP: routes added and removed while an untouched route flows
// ---------------------------------------------------------------------------------------------

/// Pace of the background publisher on the untouched route.
const PACE: Duration = Duration::from_millis(10);

/// One publish of the background publisher.
#[derive(Debug, Clone)]
struct Sent {
    id: u64,
    /// Why it failed, if it did.
    error: Option<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_and_removes_a_route_while_an_untouched_route_keeps_flowing_with_none_lost() {
    const B2M: &str = "bayeux_to_mqtt";
    const M2B: &str = "mqtt_to_bayeux";
    /// Messages on A that must arrive before the reload, and be sent after it.
    const AROUND: usize = 30;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = server.url();
    let mqtt_sub = MqttPeer::connect(
        mqtt_options(&broker, "ops-hup-sub"),
        &["keep/#", "gone/#", "added/#"],
    )
    .await;
    let mqtt_pub = MqttPeer::connect(mqtt_options(&broker, "ops-hup-pub"), &[]).await;
    let bayeux_sub = BayeuxPeer::subscriber(&url, "/mq/**", WAIT).await;
    let bayeux_pub = BayeuxPeer::publisher(&url, WAIT);
    let mut setup = Setup::new(&url, &broker, "ops-hup", false);
    let route_a = route("/keep/*", "keep/+", B2M);
    let route_b = route("/gone/*", "gone/+", B2M);
    let route_c = route("/added/*", "added/+", B2M);
    let route_d = route("/mq/new/*", "mq/new/+", M2B);
    let route_e = route("/mq/old/*", "mq/old/+", M2B);
    let (config, mut bridge) =
        spawn_bridge(&mut setup, &[route_a.clone(), route_b, route_e], &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    // The routes to be removed work before the reload.
    bayeux_pub
        .publish("/gone/x", json!({ "b": "before" }))
        .await;
    mqtt_sub.wait_for("gone/x", &json!({ "b": "before" })).await;
    mqtt_pub
        .publish("mq/old/x", json!({ "e": "before" }).to_string())
        .await;
    bayeux_sub
        .wait_for("/mq/old/x", &json!({ "e": "before" }))
        .await;

    // Numbered messages on A, one after the other, until told to stop.
    let sent: Inbox<Sent> = Inbox::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let streamer = {
        let publisher = BayeuxPeer::publisher(&url, WAIT);
        let (sent, stopping) = (sent.clone(), Arc::clone(&stopping));
        tokio::spawn(async move {
            let mut id = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                match tokio::time::timeout(
                    WAIT,
                    publisher.client.publish("/keep/n", json!({ "id": id })),
                )
                .await
                {
                    Ok(Ok(_)) => sent.push(Sent { id, error: None }),
                    Ok(Err(e)) => sent.push(Sent {
                        id,
                        error: Some(e.to_string()),
                    }),
                    Err(_) => sent.push(Sent {
                        id,
                        error: Some(format!("no verdict within {WAIT:?}")),
                    }),
                }
                id += 1;
                tokio::time::sleep(PACE).await; // pacing of the load generator
            }
        })
    };
    mqtt_sub
        .inbox
        .wait_until(
            &format!("{AROUND} messages on A before the reload"),
            WAIT,
            |got| got.iter().filter(|g| g.topic == "keep/n").count() >= AROUND,
        )
        .await;

    // Reload: B and E removed, C and D added, A untouched (and still first).
    rewrite(&config, &setup.toml(&[route_a, route_c, route_d]));
    bridge.signal("HUP");
    let reloaded = bridge.wait_for_log("Config reloaded.", WAIT).await;
    let sent_at_reload = sent.snapshot().len();
    let summary = reloaded.str_field("summary").unwrap_or_default().to_owned();
    for part in [
        "stopped reading /gone/*",
        "started reading /added/*",
        "unsubscribing from mq/old/+",
        "subscribing to mq/new/+",
    ] {
        assert!(
            summary.contains(part),
            "the reload summary says {part:?}: {}",
            reloaded.raw
        );
    }
    assert!(
        !summary.contains("/keep/"),
        "the untouched route A is not part of the reload: {}",
        reloaded.raw
    );
    // C reads once the server confirmed it; D's filter is subscribed before the reload ends.
    wait_bayeux_subscribed(&bridge, "/added/*", 1).await;
    bayeux_pub
        .publish("/added/x", json!({ "c": "after" }))
        .await;
    mqtt_sub.wait_for("added/x", &json!({ "c": "after" })).await;
    mqtt_pub
        .publish("mq/new/x", json!({ "d": "after" }).to_string())
        .await;
    bayeux_sub
        .wait_for("/mq/new/x", &json!({ "d": "after" }))
        .await;
    // The removed routes no longer forward.
    bayeux_pub.publish("/gone/x", json!({ "b": "after" })).await;
    mqtt_pub
        .publish("mq/old/x", json!({ "e": "after" }).to_string())
        .await;

    sent.wait_until(
        &format!("{AROUND} more messages on A after the reload"),
        WAIT,
        |s| s.len() >= sent_at_reload + AROUND,
    )
    .await;
    stopping.store(true, Ordering::Relaxed);
    streamer.await.expect("the publisher task");
    let sent = sent.snapshot();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.error.is_some()).collect();
    assert!(failed.is_empty(), "publishes on A failed: {failed:?}");
    let ids: BTreeSet<u64> = sent.iter().map(|s| s.id).collect();
    mqtt_sub
        .wait_for_ids("every message on A at MQTT", "keep/", ids.iter().copied())
        .await;
    // Barriers instead of an observation window: a marker on a kept route each way, sent
    // after everything above by the same publishers. One Bayeux session carries every route,
    // Bayeux → MQTT and MQTT → Bayeux each keep delivery order, so a late duplicate on A or a
    // forward on a removed route would arrive before the markers.
    bayeux_pub
        .publish("/added/marker", json!({ "c": "marker" }))
        .await;
    mqtt_pub
        .publish("mq/new/marker", json!({ "d": "marker" }).to_string())
        .await;
    mqtt_sub
        .wait_for("added/marker", &json!({ "c": "marker" }))
        .await;
    bayeux_sub
        .wait_for("/mq/new/marker", &json!({ "d": "marker" }))
        .await;

    let counts = mqtt_sub.ids("keep/");
    let lost: Vec<u64> = ids
        .iter()
        .filter(|id| !counts.contains_key(id))
        .copied()
        .collect();
    let duplicated: BTreeMap<u64, usize> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    let unexpected: Vec<u64> = counts
        .keys()
        .filter(|id| !ids.contains(id))
        .copied()
        .collect();
    eprintln!(
        "reload under traffic: {} sent on A ({} after the reload started), {} lost, {} \
         duplicated",
        ids.len(),
        ids.len().saturating_sub(sent_at_reload),
        lost.len(),
        duplicated.len()
    );
    assert!(
        lost.is_empty(),
        "messages on A lost across the reload: {lost:?}"
    );
    assert!(
        duplicated.is_empty(),
        "messages on A delivered more than once (id → times): {duplicated:?}"
    );
    assert!(unexpected.is_empty(), "ids never sent: {unexpected:?}");
    assert_eq!(
        mqtt_sub.on("gone/x"),
        vec![json!({ "b": "before" })],
        "the removed Bayeux → MQTT route B forwarded only before the reload"
    );
    assert_eq!(
        bayeux_sub.on("/mq/old/x"),
        vec![json!({ "e": "before" })],
        "the removed MQTT → Bayeux route E forwarded only before the reload"
    );
    assert_eq!(mqtt_sub.on("added/x").len(), 1, "C forwarded once");
    assert_eq!(bayeux_sub.on("/mq/new/x").len(), 1, "D forwarded once");
    assert_eq!(
        bridge.count("Connected to the MQTT broker."),
        1,
        "a route reload does not reconnect MQTT"
    );
    assert_eq!(
        bridge.count_outside("Handshake succeeded.", PUBLISHING_SESSION),
        1,
        "a route reload does not start a new Bayeux session"
    );
    stop(&mut bridge).await;
    let totals = bridge.totals(B2M);
    assert!(
        totals.dropped.is_empty(),
        "nothing dropped Bayeux → MQTT: {totals:?}"
    );
    assert_eq!(totals.received, totals.forwarded, "{totals:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. A bad config on SIGHUP
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_on_sighup_is_refused_and_the_bridge_keeps_working() {
    const REFUSED: &str = "Config reload refused; the running config stays in force.";
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = server.url();
    let mqtt_sub =
        MqttPeer::connect(mqtt_options(&broker, "ops-bad-sub"), &["ok/#", "new/#"]).await;
    let mqtt_pub = MqttPeer::connect(mqtt_options(&broker, "ops-bad-pub"), &[]).await;
    let bayeux_sub = BayeuxPeer::subscriber(&url, "/okm/**", WAIT).await;
    let bayeux_pub = BayeuxPeer::publisher(&url, WAIT);
    let mut setup = Setup::new(&url, &broker, "ops-bad", true);
    let good = [
        route("/ok/*", "ok/+", "bayeux_to_mqtt"),
        route("/okm/*", "okm/+", "mqtt_to_bayeux"),
    ];
    let (config, mut bridge) = spawn_bridge(&mut setup, &good, &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let http = Http::new(&setup);
    let path = config.path().display().to_string();

    let round_trip = |tag: &'static str| {
        let (bayeux_pub, mqtt_sub, mqtt_pub, bayeux_sub) =
            (&bayeux_pub, &mqtt_sub, &mqtt_pub, &bayeux_sub);
        async move {
            bayeux_pub.publish("/ok/x", json!({ "tag": tag })).await;
            mqtt_sub.wait_for("ok/x", &json!({ "tag": tag })).await;
            mqtt_pub
                .publish("okm/x", json!({ "tag": tag }).to_string())
                .await;
            bayeux_sub.wait_for("/okm/x", &json!({ "tag": tag })).await;
        }
    };
    round_trip("before").await;

    // 1. An unknown key. The bad file also drops the routes: had it been applied, nothing
    //    would flow below.
    setup.bayeux_extra = "colour = \"blue\"".to_owned();
    rewrite(
        &config,
        &setup.toml(&[route("/other/*", "other/+", "bayeux_to_mqtt")]),
    );
    bridge.signal("HUP");
    let refused = bridge.wait_for_log(REFUSED, WAIT).await;
    let error = refused.str_field("error").unwrap_or_default();
    assert!(
        error.contains(&path) && error.contains("bayeux.colour") && error.contains("unknown key"),
        "the refusal names the file, the key and the reason: {}",
        refused.raw
    );
    assert_eq!(
        refused.json.as_ref().and_then(|j| j["level"].as_str()),
        Some("ERROR"),
        "{}",
        refused.raw
    );
    round_trip("after the unknown key").await;

    // 2. A route that does not compile (valid TOML, invalid topic filter).
    setup.bayeux_extra.clear();
    rewrite(
        &config,
        &setup.toml(&[route("/ok/*", "ok/#/x", "bayeux_to_mqtt")]),
    );
    bridge.signal("HUP");
    let refused = bridge.wait_for_nth(REFUSED, 2, WAIT).await;
    let error = refused.str_field("error").unwrap_or_default();
    assert!(
        error.contains(&path) && error.contains("route[1].mqtt"),
        "the refusal names the file and the route key: {}",
        refused.raw
    );
    round_trip("after the bad route").await;
    assert_eq!(bridge.count("Config reloaded."), 0, "nothing was applied");
    let (status, _, body) = http.get("/readyz").await;
    assert_eq!(status, 200, "still ready after two refused reloads: {body}");

    // 3. A good file again, with one more route: applied.
    let mut fixed = good.to_vec();
    fixed.push(route("/new/*", "new/+", "bayeux_to_mqtt"));
    rewrite(&config, &setup.toml(&fixed));
    bridge.signal("HUP");
    let reloaded = bridge.wait_for_log("Config reloaded.", WAIT).await;
    assert!(
        reloaded
            .str_field("summary")
            .is_some_and(|s| s.contains("started reading /new/*")),
        "{}",
        reloaded.raw
    );
    assert_eq!(bridge.count(REFUSED), 2, "the good file is not refused");
    wait_bayeux_subscribed(&bridge, "/new/*", 1).await;
    bayeux_pub.publish("/new/x", json!({ "tag": "new" })).await;
    mqtt_sub.wait_for("new/x", &json!({ "tag": "new" })).await;
    round_trip("after the good reload").await;
    assert_eq!(
        mqtt_sub.inbox.snapshot().len(),
        5,
        "each message once: {:?}",
        mqtt_sub.inbox.snapshot()
    );
    stop(&mut bridge).await;
}

// ---------------------------------------------------------------------------------------------
// 5. sd_notify
// ---------------------------------------------------------------------------------------------

/// A datagram the fake service manager received.
#[derive(Debug, Clone)]
struct Notification {
    text: String,
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`; a thread collects what
/// arrives until the socket is dropped.
struct FakeSystemd {
    _dir: TempDir,
    path: std::path::PathBuf,
    inbox: Inbox<Notification>,
    done: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl FakeSystemd {
    fn bind() -> FakeSystemd {
        let dir = TempDir::new("ops-notify");
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        // A timeout so the thread sees `done` without a datagram.
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("a read timeout");
        let inbox = Inbox::new();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let (inbox, done) = (inbox.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 8192];
                while !done.load(Ordering::Relaxed) {
                    match socket.recv(&mut buf) {
                        Ok(n) => inbox.push(Notification {
                            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        }),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => panic!("NOTIFY_SOCKET recv: {e}"),
                    }
                }
            })
        };
        FakeSystemd {
            _dir: dir,
            path,
            inbox,
            done,
            reader: Some(reader),
        }
    }

    /// Everything but `WATCHDOG=1`, in order.
    fn states(&self) -> Vec<String> {
        self.inbox
            .snapshot()
            .into_iter()
            .map(|n| n.text)
            .filter(|t| t != "WATCHDOG=1")
            .collect()
    }

    /// Waits until the non-watchdog notifications satisfy `done`.
    async fn wait_states(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        self.inbox
            .wait_until(what, WAIT, |all| {
                let states: Vec<String> = all
                    .iter()
                    .map(|n| n.text.clone())
                    .filter(|t| t != "WATCHDOG=1")
                    .collect();
                done(&states)
            })
            .await;
    }
}

impl Drop for FakeSystemd {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sd_notify_messages_are_observed_through_notify_socket() {
    assert!(
        std::env::var_os("WATCHDOG_PID").is_none(),
        "this test needs WATCHDOG_PID unset in its environment (the bridge inherits it, and \
         a WATCHDOG_PID for another process turns its watchdog off)"
    );
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = server.url();
    let systemd = FakeSystemd::bind();
    let mut setup = Setup::new(&url, &broker, "ops-notify", false);
    let routes = [
        route("/n/out/*", "n/out/+", "bayeux_to_mqtt"),
        route("/n/in/*", "n/in/+", "mqtt_to_bayeux"),
    ];
    let socket = systemd.path.to_str().expect("a UTF-8 temp path").to_owned();
    let (_config, mut bridge) = spawn_bridge(
        &mut setup,
        &routes,
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    )
    .await;

    // Start-up: STATUS first, READY=1 once the clients have started (not waiting for the
    // peers), then STATUS=Forwarding once both sides are up and subscribed.
    systemd
        .wait_states("READY=1", |s| s.iter().any(|t| t == "READY=1"))
        .await;
    let states = systemd.states();
    assert!(
        states[0].starts_with("STATUS=Connecting"),
        "the first notification says what it is doing: {states:?}"
    );
    systemd
        .wait_states("STATUS=Forwarding after READY=1", |s| {
            s.iter()
                .skip_while(|t| *t != "READY=1")
                .any(|t| t.starts_with("STATUS=Forwarding"))
        })
        .await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let states = systemd.states();
    assert_eq!(
        states.iter().filter(|t| *t == "READY=1").count(),
        1,
        "READY=1 once at start-up: {states:?}"
    );
    for needed in ["Connected to the MQTT broker.", "Handshake succeeded."] {
        bridge.wait_for_log(needed, WAIT).await;
    }
    wait_bayeux_subscribed(&bridge, "/n/out/*", 1).await;

    // The watchdog: every WATCHDOG_USEC / 2 = 200 ms.
    let watchdogs_at_ready = systemd
        .inbox
        .snapshot()
        .iter()
        .filter(|n| n.text == "WATCHDOG=1")
        .count();
    let window = Instant::now();
    systemd
        .inbox
        .wait_until(
            "two more WATCHDOG=1 within 1.5 s",
            Duration::from_millis(1500),
            |all| all.iter().filter(|n| n.text == "WATCHDOG=1").count() >= watchdogs_at_ready + 2,
        )
        .await;
    eprintln!("two watchdog pings in {:?}", window.elapsed());

    // Reload: RELOADING=1 (with the monotonic time), then READY=1.
    let before_reload = systemd.states().len();
    bridge.signal("HUP");
    bridge.wait_for_log("Config reloaded.", WAIT).await;
    systemd
        .wait_states("RELOADING=1 then READY=1", |s| {
            s.len() >= before_reload + 2 && s[before_reload..].iter().any(|t| t == "READY=1")
        })
        .await;
    let states = systemd.states();
    let reload = &states[before_reload..];
    let usec = reload[0]
        .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("RELOADING=1 with MONOTONIC_USEC first: {reload:?}"));
    assert!(usec > 0, "{reload:?}");
    assert_eq!(reload[1], "READY=1", "READY=1 ends the reload: {reload:?}");

    // SIGTERM: STOPPING=1, exit 0.
    let before_stop = systemd.states().len();
    stop(&mut bridge).await;
    systemd
        .wait_states("STOPPING=1", |s| {
            s[before_stop..].iter().any(|t| t == "STOPPING=1")
        })
        .await;
    let states = systemd.states();
    let stopping = &states[before_stop..];
    assert_eq!(
        stopping[0], "STOPPING=1",
        "STOPPING=1 first at shutdown: {stopping:?}"
    );
    assert!(
        !stopping.iter().any(|t| t == "READY=1"),
        "no READY=1 while stopping: {stopping:?}"
    );
    let all = systemd.inbox.snapshot();
    let watchdogs = all.iter().filter(|n| n.text == "WATCHDOG=1").count();
    eprintln!(
        "sd_notify: {} notifications, {watchdogs} of them WATCHDOG=1; the rest: {:?}",
        all.len(),
        systemd.states()
    );
}

/// READY=1 means "started", not "forwarding": with the broker unreachable at start the bridge
/// still tells systemd it is up (so `TimeoutStartSec=` does not kill it) and says in STATUS=
/// what it waits for; once the broker is back it forwards without a second READY=1.
async fn ready_is_sent_while_the_broker_is_unreachable(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let mut broker = Mosquitto::start_async().await;
    // Nothing listens on the broker's port until the restart below.
    broker.kill();
    let url = server.url();
    let systemd = FakeSystemd::bind();
    let mut setup = Setup::new(&url, &broker, "ops-ready-down", false);
    let routes = [route("/r/out/*", "r/out/+", "bayeux_to_mqtt")];
    let socket = systemd.path.to_str().expect("a UTF-8 temp path").to_owned();
    let (_config, mut bridge) =
        spawn_bridge(&mut setup, &routes, &[("NOTIFY_SOCKET", &socket)]).await;

    systemd
        .wait_states("READY=1 with the broker down", |s| {
            s.iter().any(|t| t == "READY=1")
        })
        .await;
    // The Bayeux side comes up meanwhile; STATUS= names the broker as what is missing.
    systemd
        .wait_states("a STATUS= naming the broker", |s| {
            s.iter().any(|t| {
                t.starts_with("STATUS=Not ready")
                    && t.contains("MQTT broker not connected")
                    && t.contains("Bayeux connected, 1/1 subscriptions")
            })
        })
        .await;
    assert!(
        !bridge.lines().iter().any(|l| l.is("Bridge ready.")),
        "the bridge cannot be ready without its broker:\n{}",
        bridge.tail(20)
    );

    broker.restart_async().await;
    systemd
        .wait_states("STATUS=Forwarding once the broker is back", |s| {
            s.iter().any(|t| t.starts_with("STATUS=Forwarding"))
        })
        .await;
    let states = systemd.states();
    assert_eq!(
        states.iter().filter(|t| *t == "READY=1").count(),
        1,
        "one READY=1: {states:?}"
    );
    stop(&mut bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_while_the_broker_is_unreachable_cometd() {
    ready_is_sent_while_the_broker_is_unreachable(PeerKind::CometD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_sent_while_the_broker_is_unreachable_faye() {
    ready_is_sent_while_the_broker_is_unreachable(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------------
// 6. A changed [bayeux] url
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_bayeux_url_reconnects_only_the_bayeux_side() {
    let (first, second) = tokio::join!(
        PeerServer::start_async(PeerKind::CometD),
        PeerServer::start_async(PeerKind::CometD)
    );
    let broker = Mosquitto::start_async().await;
    let (url1, url2) = (first.url(), second.url());
    let mqtt_sub = MqttPeer::connect(mqtt_options(&broker, "ops-url-sub"), &["x/#"]).await;
    let mqtt_pub = MqttPeer::connect(mqtt_options(&broker, "ops-url-pub"), &[]).await;
    let sub1 = BayeuxPeer::subscriber(&url1, "/y/**", WAIT).await;
    let sub2 = BayeuxPeer::subscriber(&url2, "/y/**", WAIT).await;
    let pub1 = BayeuxPeer::publisher(&url1, WAIT);
    let pub2 = BayeuxPeer::publisher(&url2, WAIT);
    let mut setup = Setup::new(&url1, &broker, "ops-url", false);
    let routes = [
        route("/x/*", "x/+", "bayeux_to_mqtt"),
        route("/y/*", "y/+", "mqtt_to_bayeux"),
    ];
    let (config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    pub1.publish("/x/a", json!({ "server": 1 })).await;
    mqtt_sub.wait_for("x/a", &json!({ "server": 1 })).await;
    mqtt_pub
        .publish("y/a", json!({ "to": "first" }).to_string())
        .await;
    sub1.wait_for("/y/a", &json!({ "to": "first" })).await;
    let handshakes = bridge.count("Handshake succeeded.");
    let mqtt_connects = bridge.count("Connected to the MQTT broker.");
    // MQTT → Bayeux publishes through a Bayeux session of its own (the bridge reads Bayeux
    // too): one subscribing and one publishing session.
    assert_eq!(
        (
            bridge.count_outside("Handshake succeeded.", PUBLISHING_SESSION),
            handshakes,
            mqtt_connects
        ),
        (1, 2, 1),
        "one session each (and one Bayeux session that publishes)"
    );

    setup.url = url2.clone();
    rewrite(&config, &setup.toml(&routes));
    bridge.signal("HUP");
    let reloaded = bridge.wait_for_log("Config reloaded.", WAIT).await;
    assert!(
        reloaded
            .str_field("summary")
            .is_some_and(|s| s.contains("reconnected to the Bayeux server")),
        "{}",
        reloaded.raw
    );
    bridge
        .wait_for_nth("Handshake succeeded.", handshakes + 1, WAIT)
        .await;
    wait_bayeux_subscribed(&bridge, "/x/*", 2).await;
    bridge.wait_for_nth("Bridge ready.", 2, WAIT).await;

    // Bayeux → MQTT from the second server; MQTT → Bayeux to it.
    pub2.publish("/x/b", json!({ "server": 2 })).await;
    mqtt_sub.wait_for("x/b", &json!({ "server": 2 })).await;
    mqtt_pub
        .publish("y/b", json!({ "to": "second" }).to_string())
        .await;
    sub2.wait_for("/y/b", &json!({ "to": "second" })).await;
    // The first server is no longer read: it says that the bridge's old session, the one
    // subscribed to /x/*, ended, and that no other session there reads /x/* any more.
    let ended = first
        .wait_for_stderr_line(WAIT, |l| {
            l.starts_with("session ended: ") && l.contains("/x/* (")
        })
        .await
        .unwrap_or_else(|| {
            panic!(
                "the first server saw no end of the bridge's session reading /x/*; its \
                 stderr:\n{}\nbridge log:\n{}",
                first.stderr_output(),
                bridge.tail(30)
            )
        });
    assert!(
        ended.contains("/x/* (0 others)"),
        "another session still reads /x/* on the first server: {ended}"
    );
    // And what is published there now does not come through, ahead of a marker published
    // on the second server after it.
    pub1.publish("/x/c", json!({ "server": 1, "after": true }))
        .await;
    pub2.publish("/x/d", json!({ "server": 2, "marker": true }))
        .await;
    mqtt_sub
        .wait_for("x/d", &json!({ "server": 2, "marker": true }))
        .await;
    assert!(
        mqtt_sub.on("x/c").is_empty(),
        "the old server's channel is still read after the reload"
    );
    assert!(
        sub1.on("/y/b").is_empty(),
        "MQTT → Bayeux still went to the old server"
    );
    assert_eq!(
        sub2.on("/y/b"),
        vec![json!({ "to": "second" })],
        "once to the new server"
    );
    assert_eq!(
        mqtt_sub.on("x/b"),
        vec![json!({ "server": 2 })],
        "once from the new server"
    );

    assert_eq!(
        bridge.count("Connected to the MQTT broker."),
        mqtt_connects,
        "the MQTT side was not reconnected; log:\n{}",
        bridge.tail(40)
    );
    for line in [
        "Disconnected from the MQTT broker.",
        "Lost the connection to the MQTT broker; reconnecting.",
    ] {
        assert_eq!(bridge.count(line), 0, "{line:?} during a [bayeux] reload");
    }
    let handshake = bridge
        .wait_for_nth("Handshake succeeded.", handshakes + 1, WAIT)
        .await;
    assert_eq!(
        handshake
            .json
            .as_ref()
            .and_then(|j| j["span"]["server"].as_str()),
        Some(url2.as_str()),
        "the new handshake is with the second server: {}",
        handshake.raw
    );
    stop(&mut bridge).await;
}

// ---------------------------------------------------------------------------------------------
// 7. SIGTERM while a reload waits for the broker
// ---------------------------------------------------------------------------------------------

/// A reload that adds an MQTT → Bayeux route subscribes its filter at the broker; with the
/// broker down, that subscription waits for the broker to come back. SIGTERM in the meantime
/// must still drain and exit by the drain deadline (`drain_timeout_secs = 3` here), as it does
/// without a reload: a container runtime or systemd kills the process a few seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_a_reload_waits_for_the_broker_still_exits_by_the_drain_deadline() {
    /// `drain_timeout_secs` in [`Setup`].
    const DRAIN: Duration = Duration::from_secs(3);
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let mut broker = Mosquitto::start_async().await;
    let url = server.url();
    let mut setup = Setup::new(&url, &broker, "ops-hup-down", false);
    let old = route("/h/old/*", "h/old/+", "mqtt_to_bayeux");
    let (config, mut bridge) = spawn_bridge(&mut setup, std::slice::from_ref(&old), &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    broker.kill();
    bridge.wait_for_log("Bridge not ready.", WAIT).await;
    rewrite(
        &config,
        &setup.toml(&[old, route("/h/new/*", "h/new/+", "mqtt_to_bayeux")]),
    );
    bridge.signal("HUP");
    bridge.wait_for_log("Reloading the config.", WAIT).await;

    bridge.signal("TERM");
    // A bridge that did not act on SIGTERM during the reload would never log this (the broker
    // stays down, so the reload waits for good).
    bridge
        .wait_for_log("Shutdown requested; draining.", WAIT)
        .await;
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit status {status}");
    // How fast, by the bridge's own log rather than the test's clock: the signal is acted on
    // well within the drain deadline of the reload that was waiting (the span includes the
    // test reading that line and sending the signal), and the drain keeps its deadline
    // (plus the second it keeps for the goodbyes, which the dead broker does not answer).
    let acted = bridge.logged_between("Reloading the config.", "Shutdown requested; draining.");
    let drained = bridge.logged_between("Shutdown requested; draining.", "Totals.");
    assert!(
        acted < DRAIN && drained <= DRAIN + Duration::from_secs(1),
        "SIGTERM acted on {acted:?} after the reload began, drain took {drained:?} (deadline \
         {DRAIN:?}); the bridge's log ends:\n{}",
        bridge.tail(20)
    );
}

// ---------------------------------------------------------------------------------------------
// 8. A changed route with messages waiting in the bridge
// ---------------------------------------------------------------------------------------------

/// `RUST_LOG` that adds the Bayeux client's `Received.` trace line for every message it got
/// from the server, and the pipeline's `Forwarding to MQTT.` line for every message it took.
const TRACE_RECEIVED_AND_FORWARDING: (&str, &str) = (
    "RUST_LOG",
    "info,bayeux_mqtt_bridge::bayeux::driver=trace,bayeux_mqtt_bridge::bridge::b2m=trace",
);

/// How many `channel` deliveries the bridge's Bayeux client received (its `Received.` trace
/// lines; such a line has a second `message` field, the message's `Debug` form, which is the
/// one the JSON parser keeps).
fn client_received(lines: &[LogLine], channel: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.str_field("channel") == Some(channel))
        .filter(|l| l.message().is_some_and(|m| m.starts_with("Message {")))
        .count()
}

/// Sends a signal by name to a process with `kill(1)`.
fn signal_pid(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("cannot run kill -{name}: {e}"));
    assert!(status.success(), "kill -{name} {pid} failed: {status}");
}

/// A route whose MQTT side changes (same Bayeux pattern, new topic) is replaced. Messages the
/// bridge's Bayeux client has already received but the pipeline has not taken yet (they wait
/// for queue slots while the broker is slow) must still be forwarded, to the old topic or the
/// new one: the server's subscription to the pattern never ends, and Bayeux does not deliver
/// a message twice, so a message the bridge throws away is gone.
///
/// The broker is frozen (SIGSTOP) so that it acknowledges nothing: the bridge fills its
/// `queue_capacity` (64) slots with publishes awaiting a PUBACK, and the rest of the 100
/// messages wait in the Bayeux client's subscription buffer. Then the route changes, the
/// broker is thawed, and every message is looked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_route_forwards_or_counts_the_messages_already_taken_from_bayeux() {
    const N: u64 = 100;
    const AFTER: Range<u64> = 1000..1010;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let pid_dir = TempDir::new("ops-mosquitto-pid");
    let pid_file = pid_dir.path().join("mosquitto.pid");
    let broker =
        Mosquitto::start_configured_async(false, &format!("pid_file {}", pid_file.display())).await;
    let broker_pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("mosquitto's pid file {}: {e}", pid_file.display()))
        .trim()
        .parse()
        .expect("a pid in mosquitto's pid file");
    let url = server.url();
    let mqtt_sub =
        MqttPeer::connect(mqtt_options(&broker, "ops-chg-sub"), &["chg/#", "chg2/#"]).await;
    let publisher = BayeuxPeer::publisher(&url, WAIT);
    let mut setup = Setup::new(&url, &broker, "ops-chg", false);
    let (config, mut bridge) = spawn_bridge(
        &mut setup,
        &[route("/chg/*", "chg/+", "bayeux_to_mqtt")],
        &[TRACE_RECEIVED_AND_FORWARDING],
    )
    .await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    signal_pid(broker_pid, "STOP");
    publisher.publish_ids("/chg/n", 0..N).await;
    bridge
        .wait_until(
            "the bridge's Bayeux client to receive all N and the pipeline to fill its slots",
            WAIT,
            |lines| {
                client_received(lines, "/chg/n") >= N as usize
                    && lines.iter().filter(|l| l.is("Forwarding to MQTT.")).count()
                        >= QUEUE_CAPACITY
            },
        )
        .await;
    let taken = bridge.count("Forwarding to MQTT.");
    assert_eq!(
        taken, QUEUE_CAPACITY,
        "with the broker frozen the pipeline takes exactly queue_capacity messages"
    );

    rewrite(
        &config,
        &setup.toml(&[route("/chg/*", "chg2/+", "bayeux_to_mqtt")]),
    );
    bridge.signal("HUP");
    bridge.wait_for_log("Config reloaded.", WAIT).await;
    signal_pid(broker_pid, "CONT");
    // The route still reads /chg/*, so the reload kept its subscription (no second
    // confirmation): publishes reach the new rule at once.
    publisher.publish_ids("/chg/n", AFTER).await;
    let after: BTreeSet<u64> = AFTER.collect();
    mqtt_sub
        .wait_for_ids(
            "the messages after the reload",
            "chg2/",
            after.iter().copied(),
        )
        .await;
    // Barrier instead of an observation window: one more id, published last on the same
    // route. Bayeux → MQTT keeps delivery order, so stragglers and duplicates of the ids
    // above (whatever the bridge still held when the route changed) would arrive before it.
    const MARKER: u64 = 2000;
    publisher.publish_ids("/chg/n", MARKER..MARKER + 1).await;
    mqtt_sub
        .wait_for_ids("the final marker id", "chg2/", [MARKER])
        .await;

    let old = mqtt_sub.ids("chg/");
    let new = mqtt_sub.ids("chg2/");
    let mut both = old.clone();
    for (id, n) in &new {
        *both.entry(*id).or_default() += n;
    }
    let lost: Vec<u64> = (0..N).filter(|id| !both.contains_key(id)).collect();
    let duplicated: BTreeMap<u64, usize> = both
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(i, n)| (*i, *n))
        .collect();
    stop(&mut bridge).await;
    let totals = bridge.totals("bayeux_to_mqtt");
    let dropped: u64 = totals.dropped.values().sum();
    eprintln!(
        "changed route: {N} sent before the reload, {} arrived on the old topic, {} on the new, \
         {} lost; bridge totals {totals:?}",
        old.len(),
        new.keys().filter(|id| **id < N).count(),
        lost.len()
    );
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    // First the worse failure: a loss that is not even counted (every drop is to be logged
    // and counted).
    assert!(
        lost.len() as u64 <= dropped,
        "{} of the {N} messages the bridge's Bayeux client had received were neither forwarded \
         nor counted as dropped when the route changed (totals: received {}, forwarded {}, \
         dropped {:?}); lost ids: {lost:?}",
        lost.len(),
        totals.received,
        totals.forwarded,
        totals.dropped
    );
    assert!(
        lost.is_empty(),
        "messages already taken from Bayeux were dropped by the route change: {lost:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. A changed [bayeux] url while the old server is down
// ---------------------------------------------------------------------------------------------

/// The reason to change `[bayeux] url` is often that the old server is gone. MQTT → Bayeux
/// messages the bridge took while it was gone wait for the Bayeux side (each holds its
/// MQTT acknowledgement, and acknowledgements go to the broker in order). After the reload
/// they must reach the new server (or go back to the broker), and the messages after them
/// must keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_messages_waiting_for_a_dead_bayeux_server_reach_the_new_one_after_a_url_reload() {
    const WAITING: Range<u64> = 0..5;
    const AFTER: Range<u64> = 5..45;
    let (mut first, second) = tokio::join!(
        PeerServer::start_async(PeerKind::CometD),
        PeerServer::start_async(PeerKind::CometD)
    );
    let broker = Mosquitto::start_async().await;
    let url2 = second.url();
    let mqtt_pub = MqttPeer::connect(mqtt_options(&broker, "ops-dead-pub"), &[]).await;
    let sub2 = BayeuxPeer::subscriber(&url2, "/y/**", WAIT).await;
    let mut setup = Setup::new(&first.url(), &broker, "ops-dead", false);
    let routes = [route("/y/*", "y/+", "mqtt_to_bayeux")];
    let (config, mut bridge) = spawn_bridge(
        &mut setup,
        &routes,
        &[("RUST_LOG", "info,bayeux_mqtt_bridge::bridge::m2b=trace")],
    )
    .await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    first.kill();
    bridge.wait_for_log("Bridge not ready.", WAIT).await;
    mqtt_pub.publish_ids("y/n", WAITING).await;
    bridge
        .wait_until("the bridge to take the waiting messages", WAIT, |lines| {
            lines
                .iter()
                .filter(|l| l.is("Forwarding to Bayeux."))
                .count()
                >= WAITING.end as usize
        })
        .await;

    setup.url = url2.clone();
    rewrite(&config, &setup.toml(&routes));
    bridge.signal("HUP");
    bridge.wait_for_log("Config reloaded.", WAIT).await;
    bridge.wait_for_nth("Bridge ready.", 2, WAIT).await;
    mqtt_pub.publish_ids("y/n", AFTER).await;

    let wanted: BTreeSet<u64> = (WAITING.start..AFTER.end).collect();
    let deadline = Duration::from_secs(10);
    let arrived = tokio::time::timeout(
        deadline,
        sub2.wait_for_ids("every id at the new server", "/y/", wanted.iter().copied()),
    )
    .await
    .is_ok();
    let counts = sub2.ids("/y/");
    let missing_waiting: Vec<u64> = WAITING.filter(|id| !counts.contains_key(id)).collect();
    let missing_after: Vec<u64> = AFTER.filter(|id| !counts.contains_key(id)).collect();
    assert!(
        arrived,
        "within {deadline:?} of the reload to the new server, missing: the messages taken while \
         the old server was down {missing_waiting:?}, and those published after the reload \
         {missing_after:?}; the bridge's log ends:\n{}",
        bridge.tail(15)
    );
    stop(&mut bridge).await;
}

// ---------------------------------------------------------------------------------------------
// 10. /metrics after a reload removed subscriptions
// ---------------------------------------------------------------------------------------------

/// `bridge_subscription_confirmed` is "1 while the subscription is confirmed". After a reload
/// removed a route, the bridge has unsubscribed: the series must go away or read 0, not stay
/// at 1 for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_removed_by_a_reload_are_no_longer_reported_confirmed() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = server.url();
    let mut setup = Setup::new(&url, &broker, "ops-gauge", true);
    let keep = route("/s/keep/*", "s/keep/+", "bayeux_to_mqtt");
    let (config, mut bridge) = spawn_bridge(
        &mut setup,
        &[
            keep.clone(),
            route("/s/gone/*", "s/gone/+", "bayeux_to_mqtt"),
            route("/s/old/*", "s/old/+", "mqtt_to_bayeux"),
        ],
        &[],
    )
    .await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let http = Http::new(&setup);
    let confirmed = |side: &'static str, subscription: &'static str| {
        [("side", side), ("subscription", subscription)]
    };
    let before = http
        .scrape_until("bridge_ready 1", |s| {
            s.get("bridge_ready", &[]) == Some(1.0)
        })
        .await;
    for (side, subscription) in [
        ("bayeux", "/s/keep/*"),
        ("bayeux", "/s/gone/*"),
        ("mqtt", "s/old/+"),
    ] {
        assert_eq!(
            before.get(
                "bridge_subscription_confirmed",
                &confirmed(side, subscription)
            ),
            Some(1.0),
            "{side} {subscription} before the reload"
        );
    }

    rewrite(&config, &setup.toml(&[keep]));
    bridge.signal("HUP");
    bridge.wait_for_log("Config reloaded.", WAIT).await;
    bridge
        .wait_for_line("the server's unsubscribe of /s/gone/*", WAIT, |l| {
            l.is("Unsubscribed.") && l.str_field("subscription") == Some("/s/gone/*")
        })
        .await;
    let after = http.scrape().await;
    assert_eq!(
        after.get(
            "bridge_subscription_confirmed",
            &confirmed("bayeux", "/s/keep/*")
        ),
        Some(1.0),
        "the kept subscription"
    );
    let stale: Vec<(BTreeMap<String, String>, f64)> = after
        .family("bridge_subscription_confirmed")
        .into_iter()
        .filter(|(labels, value)| {
            *value != 0.0
                && ["/s/gone/*", "s/old/+"]
                    .contains(&labels.get("subscription").map_or("", String::as_str))
        })
        .collect();
    assert!(
        stale.is_empty(),
        "subscriptions the reload removed (and the bridge unsubscribed) are still reported \
         confirmed: {stale:?}"
    );
    stop(&mut bridge).await;
}

/// A reload that changes `[mqtt]` (here: the broker's port) connects to the new broker and
/// carries on in both directions there, without touching the Bayeux session.
#[tokio::test]
async fn a_changed_mqtt_broker_reconnects_only_the_mqtt_side() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let (first, second) = tokio::join!(Mosquitto::start_async(), Mosquitto::start_async());
    let url = server.url();
    let sub1 = MqttPeer::connect(mqtt_options(&first, "ops-mq-sub1"), &["m/#"]).await;
    let sub2 = MqttPeer::connect(mqtt_options(&second, "ops-mq-sub2"), &["m/#"]).await;
    let pub2 = MqttPeer::connect(mqtt_options(&second, "ops-mq-pub2"), &[]).await;
    let bayeux_pub = BayeuxPeer::publisher(&url, WAIT);
    let bayeux_sub = BayeuxPeer::subscriber(&url, "/n/**", WAIT).await;
    let mut setup = Setup::new(&url, &first, "ops-mq", false);
    let routes = [
        route("/m/*", "m/+", "bayeux_to_mqtt"),
        route("/n/*", "n/+", "mqtt_to_bayeux"),
    ];
    let (config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    bayeux_pub.publish("/m/a", json!({ "broker": 1 })).await;
    sub1.wait_for("m/a", &json!({ "broker": 1 })).await;
    let handshakes = bridge.count("Handshake succeeded.");

    setup.port = second.port();
    rewrite(&config, &setup.toml(&routes));
    bridge.signal("HUP");
    let reloaded = bridge.wait_for_log("Config reloaded.", WAIT).await;
    assert!(
        reloaded
            .str_field("summary")
            .is_some_and(|s| s.contains("reconnected to the MQTT broker")),
        "{}",
        reloaded.raw
    );
    bridge.wait_for_nth("Bridge ready.", 2, WAIT).await;

    bayeux_pub.publish("/m/b", json!({ "broker": 2 })).await;
    sub2.wait_for("m/b", &json!({ "broker": 2 })).await;
    pub2.publish("n/b", json!({ "from": 2 }).to_string()).await;
    bayeux_sub.wait_for("/n/b", &json!({ "from": 2 })).await;
    // No observation window: the old broker's own log (mosquitto -v) is the record of what
    // it got from the bridge. Once it logged the bridge's session ending, nothing more can
    // come over that session; a publish of m/b would have been logged as received, and a
    // second session would have been logged as connecting.
    let old_log = wait_broker_log(
        &first,
        "the bridge's session on the old broker to end",
        |log| log.contains("Client ops-mq disconnected"),
    )
    .await;
    let lines = |pred: &dyn Fn(&str) -> bool| old_log.lines().filter(|l| pred(l)).count();
    assert_eq!(
        (
            lines(&|l| l.contains("New client connected") && l.contains(" as ops-mq (")),
            lines(&|l| l.contains("Received PUBLISH from ops-mq (") && l.contains("'m/b'")),
        ),
        (1, 0),
        "the old broker saw the bridge connect once and never got m/b; its log:\n{old_log}"
    );
    assert!(
        sub1.on("m/b").is_empty(),
        "still publishing to the old broker"
    );
    assert_eq!(
        bridge.count("Handshake succeeded."),
        handshakes,
        "the Bayeux session was not touched; log:\n{}",
        bridge.tail(40)
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status:?}");
}

// ---------------------------------------------------------------------------------------------
// 11–12. Gap reports (issue 13)
// ---------------------------------------------------------------------------------------------

/// The status messages (JSON ones only: `online`/`offline` are plain text) with `event`.
fn status_events(status: &MqttPeer, event: &str) -> Vec<Value> {
    status
        .inbox
        .snapshot()
        .iter()
        .filter_map(|got| serde_json::from_slice::<Value>(&got.payload).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// Waits for the bridge's `Possible message loss.` line of `kind`.
async fn wait_gap_line(bridge: &BridgeProcess, kind: &str) -> LogLine {
    bridge
        .wait_for_line(&format!("a {kind} gap warning"), WAIT, |l| {
            l.is("Possible message loss.") && l.str_field("kind") == Some(kind)
        })
        .await
}

/// The broker goes away while Bayeux messages keep coming: the bridge's small queue fills, it
/// stops polling the CometD server, the server expires the session (`maxInterval` 1 s), and
/// after the broker is back the bridge gets `402::session_unknown` and subscribes again in a
/// new session. What the server published meanwhile is gone: the bridge must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bayeux_session_expired_during_back_pressure_is_reported_as_a_gap() {
    let server =
        PeerServer::start_with_args_async(PeerKind::CometD, &["--max-interval", "1000"]).await;
    let mut broker = Mosquitto::start_async().await;
    // The bridge reaches the broker through the gate, so the status subscriber below is
    // subscribed before the bridge can report anything.
    let gate = Gate::start(broker.port()).await;
    let url = server.url();
    let mut setup = Setup::new(&url, &broker, "ops-gap-session", true);
    setup.port = gate.port();
    setup.queue_capacity = 5;
    let routes = [route("/g/out/*", "g/out/+", "bayeux_to_mqtt")];
    let (_config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    let http = Http::new(&setup);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = BayeuxPeer::publisher(&url, WAIT);

    // The broker stops; the Bayeux server keeps publishing far more than the bridge holds.
    gate.close();
    broker.kill();
    publisher.publish_ids("/g/out/a", 0..40).await;
    // The bridge's session expires on the server (it writes a line when it does).
    if server
        .wait_for_stderr_line(WAIT, |l| l.starts_with("session expired"))
        .await
        .is_none()
    {
        panic!(
            "the CometD server did not expire the bridge's session within {WAIT:?}; bridge \
             log:\n{}",
            bridge.tail(30)
        );
    }

    broker.restart_async().await;
    let status_topic = "bayeux-mqtt-bridge/ops-gap-session/status";
    let status = MqttPeer::connect(
        mqtt_options(&broker, "ops-gap-session-status"),
        &[status_topic],
    )
    .await;
    gate.open();

    let line = wait_gap_line(&bridge, "session_expired").await;
    assert_eq!(
        line.str_field("direction"),
        Some("bayeux_to_mqtt"),
        "{}",
        line.raw
    );
    assert_eq!(line.str_field("names"), Some("/g/out/*"), "{}", line.raw);
    status
        .inbox
        .wait_until("the session_expired status event", WAIT, |all| {
            all.iter().any(|got| {
                serde_json::from_slice::<Value>(&got.payload)
                    .is_ok_and(|v| v["event"] == "session_expired")
            })
        })
        .await;
    let events = status_events(&status, "session_expired");
    assert_eq!(events.len(), 1, "one gap: {events:?}");
    let event = &events[0];
    assert_eq!(event["direction"], "bayeux_to_mqtt", "{event}");
    assert_eq!(event["channels"], json!(["/g/out/*"]), "{event}");
    assert_eq!(event["routes"], json!([1]), "{event}");
    assert_eq!(event["back_pressured"], true, "the queue was full: {event}");
    assert_eq!(event["covered"], false, "no replay on CometD: {event}");
    let reason = event["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("402"), "the server's error: {event}");
    let since = event["since"].as_str().expect("a since time");
    let until = event["until"].as_str().expect("an until time");
    assert!(since < until && until.ends_with('Z'), "{event}");
    let scrape = http
        .scrape_until("the session_expired gap counter", |s| {
            s.counter(
                "bridge_gaps_total",
                &[("kind", "session_expired"), ("direction", "bayeux_to_mqtt")],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        scrape.counter(
            "bridge_gaps_total",
            &[("kind", "session_expired"), ("direction", "bayeux_to_mqtt")]
        ),
        1.0
    );
    // And the bridge forwards again in the new session.
    let sub = MqttPeer::connect(mqtt_options(&broker, "ops-gap-session-sub"), &["g/out/#"]).await;
    publisher.publish_ids("/g/out/a", 100..101).await;
    sub.wait_for_ids("a forward in the new session", "g/out/", 100..101)
        .await;
    stop(&mut bridge).await;
}

/// A broker restarted without persistence loses the session the bridge asked to keep
/// (`clean_start = false`): what it had queued for the bridge is gone, and the bridge says so.
async fn a_broker_that_lost_the_persistent_session_is_reported_as_a_gap(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let mut broker = Mosquitto::start_async().await;
    let gate = Gate::start(broker.port()).await;
    let url = server.url();
    let mut setup = Setup::new(&url, &broker, "ops-gap-mqtt", true);
    setup.port = gate.port();
    let routes = [route("/s/in/*", "s/in/+", "mqtt_to_bayeux")];
    let (_config, mut bridge) = spawn_bridge(&mut setup, &routes, &[]).await;
    let http = Http::new(&setup);
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    // Restarted without persistence: every session is gone.
    gate.close();
    broker.restart_async().await;
    let status_topic = "bayeux-mqtt-bridge/ops-gap-mqtt/status";
    let status = MqttPeer::connect(
        mqtt_options(&broker, "ops-gap-mqtt-status"),
        &[status_topic],
    )
    .await;
    gate.open();

    let line = wait_gap_line(&bridge, "mqtt_session_lost").await;
    assert_eq!(
        line.str_field("direction"),
        Some("mqtt_to_bayeux"),
        "{}",
        line.raw
    );
    status
        .inbox
        .wait_until("the mqtt_session_lost status event", WAIT, |all| {
            all.iter().any(|got| {
                serde_json::from_slice::<Value>(&got.payload)
                    .is_ok_and(|v| v["event"] == "mqtt_session_lost")
            })
        })
        .await;
    let events = status_events(&status, "mqtt_session_lost");
    assert_eq!(events.len(), 1, "one gap: {events:?}");
    let event = &events[0];
    assert_eq!(event["direction"], "mqtt_to_bayeux", "{event}");
    assert_eq!(event["topics"], json!(["s/in/+"]), "{event}");
    assert!(event["since"].is_string(), "since the disconnect: {event}");
    assert_eq!(event["covered"], false, "{event}");
    http.scrape_until("the mqtt_session_lost gap counter", |s| {
        s.counter(
            "bridge_gaps_total",
            &[
                ("kind", "mqtt_session_lost"),
                ("direction", "mqtt_to_bayeux"),
            ],
        ) == 1.0
    })
    .await;
    // The first connect of the run had no session either; that is no gap.
    assert_eq!(
        bridge.count("Possible message loss."),
        1,
        "{}",
        bridge.tail(30)
    );
    stop(&mut bridge).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_the_persistent_session_is_reported_as_a_gap_cometd() {
    a_broker_that_lost_the_persistent_session_is_reported_as_a_gap(PeerKind::CometD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_lost_the_persistent_session_is_reported_as_a_gap_faye() {
    a_broker_that_lost_the_persistent_session_is_reported_as_a_gap(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------------
// Refused MQTT credentials
// ---------------------------------------------------------------------------------------------

/// The MQTT client's log line for a CONNACK refusing the credentials.
const CREDENTIALS_REFUSED: &str = "The MQTT broker refused the credentials; check the user name \
     and password. Will retry after the longest backoff interval.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_mqtt_credentials_are_reported_as_such_and_retried_at_the_longest_interval() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = mosquitto::start_with_password_async("bridge", "right").await;
    let url = server.url();
    let systemd = FakeSystemd::bind();
    let mut setup = Setup::new(&url, &broker, "ops-refused", true);
    let routes = [route("/r/out/*", "r/out/+", "bayeux_to_mqtt")];
    let socket = systemd.path.to_str().expect("a UTF-8 temp path").to_owned();
    let env = [
        ("NOTIFY_SOCKET", socket.as_str()),
        ("BAYEUX_MQTT_BRIDGE__MQTT__USERNAME", "bridge"),
        ("BAYEUX_MQTT_BRIDGE__MQTT__PASSWORD", "wrong-secret-7"),
    ];
    let (_config, mut bridge) = spawn_bridge(&mut setup, &routes, &env).await;
    let http = Http::new(&setup);

    // Three refusals: each logged at error, each announcing the longest wait
    // (`backoff_max_ms = 1000`, less up to 20 % jitter), not the growing steps of an
    // unreachable broker (100 ms, 200 ms, 300 ms, less the jitter).
    bridge.wait_for_nth(CREDENTIALS_REFUSED, 3, WAIT).await;
    let refusals: Vec<LogLine> = bridge
        .lines()
        .into_iter()
        .filter(|l| l.is(CREDENTIALS_REFUSED))
        .collect();
    for line in &refusals {
        assert_eq!(
            line.json.as_ref().and_then(|j| j["level"].as_str()),
            Some("ERROR"),
            "{}",
            line.raw
        );
        let retry_in = line.str_field("retry_in").and_then(parse_debug_duration);
        assert!(
            retry_in
                .is_some_and(|d| d >= Duration::from_millis(800) && d <= Duration::from_secs(1)),
            "the longest interval (800 ms to 1 s with jitter): {}",
            line.raw
        );
    }
    assert_eq!(
        bridge.count("Could not connect to the MQTT broker; will retry."),
        0,
        "refused credentials are not reported as an unreachable broker:\n{}",
        bridge.tail(20)
    );
    assert!(
        !bridge
            .lines()
            .iter()
            .any(|l| l.raw.contains("wrong-secret-7")),
        "the password reached the log"
    );

    let scrape = http
        .scrape_until("the refusals counted", |s| {
            s.counter(
                "bridge_reconnects_total",
                &[("side", "mqtt"), ("cause", "credentials_refused")],
            ) >= 1.0
        })
        .await;
    assert_eq!(
        scrape.counter(
            "bridge_reconnects_total",
            &[("side", "mqtt"), ("cause", "connect_failed")]
        ),
        0.0,
        "{}",
        scrape.text
    );
    let body = http
        .wait_readyz(503, "not ready with refused credentials")
        .await;
    assert!(
        body["reasons"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("MQTT broker refused the credentials"))),
        "/readyz body {body}"
    );
    systemd
        .wait_states("a STATUS= naming the refused credentials", |s| {
            s.iter().any(|t| {
                t.starts_with("STATUS=Not ready")
                    && t.contains("MQTT broker refused the credentials")
            })
        })
        .await;
    stop(&mut bridge).await;
}

/// A `Duration` as its `Debug` form prints it in a log field (`1s`, `881.002879ms`).
fn parse_debug_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic() || c == 'µ')?);
    let value: f64 = number.parse().ok()?;
    let secs = match unit {
        "s" => value,
        "ms" => value / 1e3,
        "µs" => value / 1e6,
        "ns" => value / 1e9,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

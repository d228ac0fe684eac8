//! Fault handling of the Bayeux client against a scripted server.
//!
//! These tests use the scripted fake server (`tests/common/fake_server.rs`) rather than a real
//! CometD or Faye server because real servers cannot be made to produce these faults on
//! demand: Salesforce-style `403::Unknown client` with `reconnect: handshake`, `reconnect:
//! none` on a connect or handshake, HTTP 500/503, non-JSON bodies, a `/meta/connect` stalled
//! past its deadline, an over-cap body, refused subscriptions and publishes, a
//! server-initiated `/meta/disconnect`. Each test scripts the server with a handler and
//! asserts on both the client's [`Event`]s and the requests the server saw.
//!
//! Synchronisation is by events ([`Events::recv`] under a timeout) or
//! [`FakeServer::wait_for`]; the only sleeps are bounded observation windows that prove an
//! *absence* of requests, and are commented as such.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bayeux_mqtt_bridge::backoff::BackoffOptions;
use bayeux_mqtt_bridge::bayeux::ext::HandshakeExt;
use bayeux_mqtt_bridge::bayeux::{
    Client, ClientError, ClientOptions, Event, Events, Next, PublishError, StopReason, Unrouted,
};
use common::fake_server::bayeux::{self, reply_all};
use common::fake_server::{FakeServer, Reply, Request};
use serde_json::{Value, json};
use url::Url;

/// Generous bound for anything that should happen within a few hundred milliseconds.
const WAIT: Duration = Duration::from_secs(5);
/// How long the scripted server holds a `/meta/connect` that has nothing to deliver.
const HOLD: Duration = Duration::from_millis(200);
/// Backoff step of every client here (no jitter, so waits are exact and grow strictly).
const STEP: Duration = Duration::from_millis(100);

// ----- helpers ------------------------------------------------------------------------

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Options for a client of `server`: small network allowance, 100 ms backoff steps, no
/// jitter.
fn options(server: &FakeServer) -> ClientOptions {
    let url = Url::parse(&server.url()).expect("fake server URL parses");
    ClientOptions {
        max_network_delay: ms(1000),
        backoff: BackoffOptions {
            increment: STEP,
            max: ms(1000),
            jitter: 0.0,
        },
        ..ClientOptions::new(url)
    }
}

fn start(options: ClientOptions) -> (Client, Events) {
    Client::new(options).expect("client options are valid")
}

/// Whether a `/meta/connect` asks to be answered at once (`advice: {timeout: 0}`), as the
/// first connect of a session and the first after a failure do.
fn wants_immediate(req: &Request) -> bool {
    req.messages
        .first()
        .is_some_and(|m| m["advice"]["timeout"] == json!(0))
}

/// `clientId` of the request's first message.
fn client_id_of(req: &Request) -> Option<&str> {
    req.messages.first()?.get("clientId")?.as_str()
}

/// A healthy server's reply to each message of a non-connect, non-handshake batch.
fn other_ok(m: &Value) -> Value {
    match m["channel"].as_str() {
        Some("/meta/subscribe") => bayeux::subscribe_ok(m),
        Some(c) if c.starts_with("/meta/") => bayeux::ok(m),
        _ => bayeux::publish_ok(m),
    }
}

/// A successful connect reply followed by `extra` messages, after `delay`.
fn connect_with(req: &Request, extra: Vec<Value>, delay: Duration) -> Reply {
    let mut batch: Vec<Value> = req
        .messages
        .iter()
        .map(|m| bayeux::connect_ok(m, None))
        .collect();
    batch.extend(extra);
    Reply::Delayed(delay, Box::new(Reply::Json(Value::Array(batch))))
}

/// A healthy server's `/meta/connect` with nothing to deliver: answered at once when the
/// client asks for it, else held for [`HOLD`] like a real long poll.
fn held_connect(req: &Request) -> Reply {
    let hold = if wants_immediate(req) {
        Duration::ZERO
    } else {
        HOLD
    };
    connect_with(req, Vec::new(), hold)
}

/// A healthy server: handshakes succeed with `client_id`, connects are held, everything
/// else succeeds.
fn healthy(req: &Request, client_id: &str) -> Reply {
    match req.channel() {
        Some("/meta/handshake") => reply_all(req, |m| bayeux::handshake_ok(m, client_id)),
        Some("/meta/connect") => held_connect(req),
        _ => reply_all(req, other_ok),
    }
}

/// Requests whose first message is on `channel`.
fn on(requests: &[Request], channel: &str) -> Vec<Request> {
    requests
        .iter()
        .filter(|r| r.channel() == Some(channel))
        .cloned()
        .collect()
}

/// Reads events until one satisfies `pred` and returns it; panics (listing every event
/// skipped) if the stream ends or nothing matches within [`WAIT`].
async fn expect_event(events: &mut Events, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if pred(&event) => return event,
            Ok(Some(event)) => skipped.push(event),
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {skipped:#?}"),
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}; saw {skipped:#?}"),
        }
    }
}

/// Reads events up to and including the first that satisfies `last`, and returns them all.
async fn events_until(
    events: &mut Events,
    what: &str,
    last: impl Fn(&Event) -> bool,
) -> Vec<Event> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => {
                let done = last(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(None) => panic!("event stream ended while waiting for {what}; saw {seen:#?}"),
            Err(_) => panic!("timed out after {WAIT:?} waiting for {what}; saw {seen:#?}"),
        }
    }
}

/// Waits until the event stream ends, i.e. the client task has finished. Panics if another
/// event arrives first.
async fn expect_end(events: &mut Events) {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(None) => {}
        Ok(Some(event)) => panic!("expected the event stream to end, got {event:#?}"),
        Err(_) => panic!("the client task did not end within {WAIT:?}"),
    }
}

fn is_connected(e: &Event) -> bool {
    matches!(e, Event::Connected)
}

fn is_handshaken(e: &Event, rehandshake: bool) -> bool {
    matches!(e, Event::Handshaken { rehandshake: r, .. } if *r == rehandshake)
}

/// Gaps between consecutive instants.
fn gaps(times: &[Instant]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Handshake reply with the given advice replacing the default one.
fn handshake_with_advice(m: &Value, client_id: &str, advice: Value) -> Value {
    let mut reply = bayeux::handshake_ok(m, client_id);
    reply["advice"] = advice;
    reply
}

// ----- session loss and refusal -------------------------------------------------------

/// Salesforce expires sessions with `403::Unknown client` and `reconnect: handshake` on the
/// long poll. The client must handshake again, resubscribe with the new clientId and keep
/// receiving.
#[tokio::test]
async fn unknown_client_on_connect_rehandshakes_resubscribes_and_receives() {
    #[derive(Default)]
    struct State {
        handshakes: usize,
        subscribed: HashSet<String>,
        delivered: bool,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let server = FakeServer::start({
        let state = Arc::clone(&state);
        move |req| {
            let mut st = state.lock().unwrap();
            let cid = client_id_of(req).unwrap_or_default().to_owned();
            match req.channel() {
                Some("/meta/handshake") => {
                    st.handshakes += 1;
                    let id = format!("c{}", st.handshakes);
                    reply_all(req, |m| bayeux::handshake_ok(m, &id))
                }
                Some("/meta/subscribe") => {
                    st.subscribed.insert(cid);
                    reply_all(req, other_ok)
                }
                // The first session expires once it is subscribed.
                Some("/meta/connect")
                    if cid == "c1" && st.subscribed.contains("c1") && !wants_immediate(req) =>
                {
                    Reply::Delayed(ms(50), Box::new(reply_all(req, bayeux::unknown_client)))
                }
                // The second session gets a delivery once it has resubscribed.
                Some("/meta/connect")
                    if cid == "c2"
                        && st.subscribed.contains("c2")
                        && !st.delivered
                        && !wants_immediate(req) =>
                {
                    st.delivered = true;
                    let event = bayeux::delivery("/topic/a", json!({"n": 1}));
                    connect_with(req, vec![event], ms(50))
                }
                _ => healthy(req, "unused"),
            }
        }
    })
    .await;
    let (client, mut events) = start(options(&server));
    let mut sub = client.subscribe("/topic/a").await.expect("subscribe");

    let first = expect_event(&mut events, "the first Handshaken", |e| {
        matches!(e, Event::Handshaken { .. })
    })
    .await;
    assert_eq!(
        first,
        Event::Handshaken {
            client_id: "c1".into(),
            connection_type: "long-polling".into(),
            rehandshake: false
        }
    );
    expect_event(&mut events, "the first SubscriptionConfirmed", |e| {
        matches!(e, Event::SubscriptionConfirmed { subscription } if subscription == "/topic/a")
    })
    .await;
    let failed = expect_event(&mut events, "ConnectFailed for the unknown client", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    let Event::ConnectFailed { reason, next, .. } = failed else {
        unreachable!()
    };
    assert!(reason.contains("Unknown client"), "reason: {reason}");
    assert!(matches!(next, Next::Handshake(_)), "next: {next:?}");
    let again = expect_event(&mut events, "the re-handshake", |e| {
        matches!(e, Event::Handshaken { .. })
    })
    .await;
    assert_eq!(
        again,
        Event::Handshaken {
            client_id: "c2".into(),
            connection_type: "long-polling".into(),
            rehandshake: true
        }
    );
    expect_event(&mut events, "SubscriptionConfirmed after re-handshake", |e| {
        matches!(e, Event::SubscriptionConfirmed { subscription } if subscription == "/topic/a")
    })
    .await;

    let requests = server
        .wait_for("a subscribe with the new clientId", WAIT, |reqs| {
            reqs.iter()
                .any(|r| r.channel() == Some("/meta/subscribe") && client_id_of(r) == Some("c2"))
        })
        .await;
    assert_eq!(on(&requests, "/meta/handshake").len(), 2, "two handshakes");
    let resubscribe = on(&requests, "/meta/subscribe")
        .into_iter()
        .find(|r| client_id_of(r) == Some("c2"))
        .expect("resubscribe");
    assert_eq!(resubscribe.messages[0]["subscription"], json!("/topic/a"));

    let message = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("timed out waiting for the delivery after re-handshake")
        .expect("subscription open");
    assert_eq!(message.channel, "/topic/a");
    assert_eq!(message.data_value(), Some(json!({"n": 1})));
}

/// `reconnect: none` on a connect reply ends the client for good: it says why, sends
/// nothing more, fails what is pending and refuses new work.
#[tokio::test]
async fn reconnect_none_on_connect_stops_the_client_for_good() {
    let publish_seen = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let publish_seen = Arc::clone(&publish_seen);
        move |req| match req.channel() {
            Some("/meta/connect")
                if publish_seen.load(Ordering::SeqCst) && !wants_immediate(req) =>
            {
                let reply = reply_all(req, |m| {
                    let advice = json!({"reconnect": "none"});
                    bayeux::failure(m, "401::Authentication invalid", Some(advice))
                });
                Reply::Delayed(ms(50), Box::new(reply))
            }
            Some("/topic/p") => {
                // Keep the publish in flight until the client stops.
                publish_seen.store(true, Ordering::SeqCst);
                Reply::Stall
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (client, mut events) = start(options(&server));
    let publisher = tokio::spawn({
        let client = client.clone();
        async move { client.publish("/topic/p", json!({"x": 1})).await }
    });

    let stopped = expect_event(&mut events, "Stopped", |e| {
        matches!(e, Event::Stopped { .. })
    })
    .await;
    assert_eq!(
        stopped,
        Event::Stopped {
            reason: StopReason::ServerRefused {
                error: Some("401::Authentication invalid".into())
            }
        }
    );
    let verdict = tokio::time::timeout(WAIT, publisher)
        .await
        .expect("the pending publish did not resolve after Stopped")
        .expect("publisher task");
    assert_eq!(verdict.map(|m| m.id), Err(PublishError::Closed));
    // The handle tells the same reason, without reading the events.
    assert_eq!(
        client.stop_reason(),
        Some(StopReason::ServerRefused {
            error: Some("401::Authentication invalid".into())
        })
    );
    expect_end(&mut events).await;

    // Observation window: prove the absence of further requests (no retry, no handshake).
    let seen = server.request_count();
    tokio::time::sleep(ms(1500)).await;
    let requests = server.requests();
    assert_eq!(
        requests.len(),
        seen,
        "requests after Stopped: {:#?}",
        &requests[seen..]
    );
    assert_eq!(on(&requests, "/meta/handshake").len(), 1);

    let result = client.subscribe("/topic/a").await;
    assert!(
        matches!(result, Err(ClientError::Closed)),
        "subscribe after stop: {result:?}"
    );
    assert!(client.is_closed());
}

/// A handshake refused with `reconnect: none` is final: exactly one handshake is sent.
#[tokio::test]
async fn handshake_refused_with_reconnect_none_stops_after_one_attempt() {
    let server = FakeServer::start(|req| {
        reply_all(req, |m| {
            let advice = json!({"reconnect": "none"});
            bayeux::failure(m, "403::Handshake denied", Some(advice))
        })
    })
    .await;
    let (client, mut events) = start(options(&server));

    let first = tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("timed out waiting for the first event")
        .expect("an event before the stream ends");
    assert_eq!(
        first,
        Event::Stopped {
            reason: StopReason::ServerRefused {
                error: Some("403::Handshake denied".into())
            }
        }
    );
    expect_end(&mut events).await;
    // Observation window: prove that no second handshake follows.
    tokio::time::sleep(ms(500)).await;
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "requests: {requests:#?}");
    assert_eq!(requests[0].channel(), Some("/meta/handshake"));
    assert_eq!(
        client.publish("/topic/p", json!(1)).await.map(|m| m.id),
        Err(PublishError::Closed)
    );
}

// ----- transport failures of the long poll --------------------------------------------

/// HTTP 500 on `/meta/connect`: the client retries with growing waits and recovers.
#[tokio::test]
async fn http_500_on_connect_retries_with_growing_waits_then_recovers() {
    let connects = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let server = FakeServer::start({
        let connects = Arc::clone(&connects);
        let times = Arc::clone(&times);
        move |req| match req.channel() {
            Some("/meta/connect") => {
                // Connect 1 succeeds, 2..=4 fail, 5 (the recovery) and later succeed.
                let n = connects.fetch_add(1, Ordering::SeqCst) + 1;
                if (2..=5).contains(&n) {
                    times.lock().unwrap().push(Instant::now());
                }
                if (2..=4).contains(&n) {
                    Reply::Status(500, "Internal Server Error".into())
                } else {
                    held_connect(req)
                }
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (_client, mut events) = start(options(&server));

    expect_event(&mut events, "the first Connected", is_connected).await;
    let outage = events_until(&mut events, "Connected after the 500s", is_connected).await;
    let failures: Vec<(u32, Duration)> = outage
        .iter()
        .filter_map(|e| match e {
            Event::ConnectFailed {
                reason,
                attempt,
                next,
            } => {
                assert!(reason.contains("500"), "reason: {reason}");
                match next {
                    Next::Retry(wait) => Some((*attempt, *wait)),
                    Next::Handshake(_) => panic!("500 must not cause a handshake: {e:?}"),
                }
            }
            _ => None,
        })
        .collect();
    let attempts: Vec<u32> = failures.iter().map(|f| f.0).collect();
    let waits: Vec<Duration> = failures.iter().map(|f| f.1).collect();
    assert_eq!(attempts, [1, 2, 3], "events: {outage:#?}");
    assert!(waits.windows(2).all(|w| w[0] < w[1]), "waits: {waits:?}");

    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "three failing connects and the recovery");
    // The growth is asserted on the waits the client announces (above). The server's clock
    // brackets each wait (the failure is answered before it starts, the retry arrives after it
    // ends), so a measured gap is never shorter than its wait; how much longer is up to the
    // scheduler, so the gaps themselves are not compared with each other.
    let gaps = gaps(&times);
    for (gap, wait) in gaps.iter().zip(&waits) {
        assert!(
            gap >= wait,
            "gap {gap:?} shorter than announced wait {wait:?}"
        );
    }
}

/// A 200 reply whose body is not JSON is a failed connect, reported as a bad body; the
/// client recovers.
#[tokio::test]
async fn non_json_connect_body_is_a_failed_connect_and_client_recovers() {
    let garbled = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let garbled = Arc::clone(&garbled);
        move |req| match req.channel() {
            Some("/meta/connect")
                if !wants_immediate(req) && !garbled.swap(true, Ordering::SeqCst) =>
            {
                Reply::Body(200, "<html><body>Down for maintenance</body></html>".into())
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (_client, mut events) = start(options(&server));

    expect_event(&mut events, "the first Connected", is_connected).await;
    let failed = expect_event(&mut events, "ConnectFailed for the HTML body", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    let Event::ConnectFailed { reason, next, .. } = failed else {
        unreachable!()
    };
    assert!(
        reason.contains("response body") && reason.contains("Down for maintenance"),
        "reason: {reason}"
    );
    assert!(matches!(next, Next::Retry(_)), "next: {next:?}");
    expect_event(&mut events, "Connected again", is_connected).await;
}

/// A long poll held past `advice.timeout + max_network_delay` is abandoned as timed out
/// (after about 800 ms here, not the 60 s default) and a new connect follows.
#[tokio::test]
async fn stalled_connect_times_out_after_advice_timeout_plus_network_delay() {
    let stalled_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let server = FakeServer::start({
        let stalled_at = Arc::clone(&stalled_at);
        move |req| match req.channel() {
            Some("/meta/handshake") => reply_all(req, |m| {
                let advice = json!({"reconnect": "retry", "interval": 0, "timeout": 500});
                handshake_with_advice(m, "c1", advice)
            }),
            Some("/meta/connect") if !wants_immediate(req) => {
                let mut at = stalled_at.lock().unwrap();
                if at.is_none() {
                    *at = Some(Instant::now());
                    Reply::Stall
                } else {
                    held_connect(req)
                }
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (_client, mut events) = start(ClientOptions {
        max_network_delay: ms(300),
        ..options(&server)
    });

    expect_event(&mut events, "the first Connected", is_connected).await;
    let failed = expect_event(&mut events, "ConnectFailed for the stalled poll", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    let elapsed = stalled_at
        .lock()
        .unwrap()
        .expect("the server saw the stalled connect")
        .elapsed();
    let Event::ConnectFailed { reason, next, .. } = failed else {
        unreachable!()
    };
    assert!(reason.contains("no response within"), "reason: {reason}");
    assert!(matches!(next, Next::Retry(_)), "next: {next:?}");
    assert!(
        elapsed >= ms(700) && elapsed < ms(3000),
        "gave up after {elapsed:?}, expected about 800 ms"
    );

    let requests = server
        .wait_for("a connect after the stalled one", WAIT, |reqs| {
            on(reqs, "/meta/connect").len() >= 3
        })
        .await;
    assert_eq!(on(&requests, "/meta/handshake").len(), 1, "no re-handshake");
    expect_event(&mut events, "Connected again", is_connected).await;
}

/// A reply larger than `max_response_bytes` is a failed connect naming the cap, not an
/// unbounded allocation; the client keeps polling.
#[tokio::test]
async fn over_cap_connect_body_fails_with_the_cap_and_client_keeps_going() {
    let huge_sent = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let huge_sent = Arc::clone(&huge_sent);
        move |req| match req.channel() {
            Some("/meta/connect")
                if !wants_immediate(req) && !huge_sent.swap(true, Ordering::SeqCst) =>
            {
                Reply::Huge(1_000_000)
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (_client, mut events) = start(ClientOptions {
        max_response_bytes: 64 * 1024,
        ..options(&server)
    });

    expect_event(&mut events, "the first Connected", is_connected).await;
    let failed = expect_event(&mut events, "ConnectFailed for the huge body", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    let Event::ConnectFailed { reason, next, .. } = failed else {
        unreachable!()
    };
    assert!(reason.contains("65536-byte cap"), "reason: {reason}");
    assert!(matches!(next, Next::Retry(_)), "next: {next:?}");
    server
        .wait_for("a connect after the huge reply", WAIT, |reqs| {
            on(reqs, "/meta/connect").len() >= 3
        })
        .await;
    expect_event(&mut events, "Connected again", is_connected).await;
}

// ----- handshake, subscribe and publish failures --------------------------------------

/// HTTP 503 on the handshake: retried with growing waits, attempts counted, until it works.
#[tokio::test]
async fn http_503_on_handshake_retries_with_growing_waits() {
    let handshakes = Arc::new(AtomicUsize::new(0));
    let times = Arc::new(Mutex::new(Vec::new()));
    let server = FakeServer::start({
        let handshakes = Arc::clone(&handshakes);
        let times = Arc::clone(&times);
        move |req| match req.channel() {
            Some("/meta/handshake") => {
                times.lock().unwrap().push(Instant::now());
                if handshakes.fetch_add(1, Ordering::SeqCst) < 3 {
                    Reply::Status(503, "Service Unavailable".into())
                } else {
                    healthy(req, "c1")
                }
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (_client, mut events) = start(options(&server));

    let seen = events_until(&mut events, "Handshaken after the 503s", |e| {
        is_handshaken(e, false)
    })
    .await;
    let failures: Vec<(u32, Duration)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::HandshakeFailed {
                reason,
                attempt,
                retry_in,
            } => {
                assert!(reason.contains("503"), "reason: {reason}");
                Some((*attempt, *retry_in))
            }
            _ => None,
        })
        .collect();
    let attempts: Vec<u32> = failures.iter().map(|f| f.0).collect();
    let waits: Vec<Duration> = failures.iter().map(|f| f.1).collect();
    assert_eq!(attempts, [1, 2, 3], "events: {seen:#?}");
    assert!(waits.windows(2).all(|w| w[0] < w[1]), "retry_in: {waits:?}");

    let times = times.lock().unwrap().clone();
    assert_eq!(times.len(), 4, "three failed handshakes and the good one");
    // As for connects: growth on the announced waits, each measured gap at least its wait.
    let gaps = gaps(&times);
    for (gap, wait) in gaps.iter().zip(&waits) {
        assert!(gap >= wait, "gap {gap:?} shorter than retry_in {wait:?}");
    }
}

/// A refused subscription is retried (attempts counted) until the server accepts it; then
/// deliveries flow.
#[tokio::test]
async fn refused_subscription_is_retried_until_confirmed_then_delivers() {
    let subscribes = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let subscribes = Arc::clone(&subscribes);
        let delivered = Arc::clone(&delivered);
        move |req| match req.channel() {
            Some("/meta/subscribe") => {
                if subscribes.fetch_add(1, Ordering::SeqCst) < 2 {
                    reply_all(req, |m| bayeux::failure(m, "403::subscribe_denied", None))
                } else {
                    reply_all(req, other_ok)
                }
            }
            Some("/meta/connect")
                if subscribes.load(Ordering::SeqCst) > 2
                    && !wants_immediate(req)
                    && !delivered.swap(true, Ordering::SeqCst) =>
            {
                let event = bayeux::delivery("/topic/a", json!({"n": 7}));
                connect_with(req, vec![event], ms(50))
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (client, mut events) = start(options(&server));
    let mut sub = client.subscribe("/topic/a").await.expect("subscribe");

    let seen = events_until(&mut events, "SubscriptionConfirmed", |e| {
        matches!(e, Event::SubscriptionConfirmed { .. })
    })
    .await;
    let failures: Vec<(u32, &str)> = seen
        .iter()
        .filter_map(|e| match e {
            Event::SubscriptionFailed {
                subscription,
                error,
                attempt,
                ..
            } => {
                assert_eq!(subscription, "/topic/a");
                Some((*attempt, error.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        failures,
        [(1, "403::subscribe_denied"), (2, "403::subscribe_denied")],
        "events: {seen:#?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Event::SubscriptionConfirmed {
            subscription: "/topic/a".into()
        })
    );
    assert_eq!(subscribes.load(Ordering::SeqCst), 3);

    let message = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("timed out waiting for a delivery after the subscription was confirmed")
        .expect("subscription open");
    assert_eq!(message.data_value(), Some(json!({"n": 7})));
}

/// Publishes made while the handshake is under way wait, go out together in one request
/// after it, and each gets its own verdict by id (the server answers in reverse order).
#[tokio::test]
async fn publishes_before_handshake_are_batched_and_verdicts_correlate_by_id() {
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/handshake") => Reply::Delayed(ms(300), Box::new(healthy(req, "c1"))),
        Some("/topic/p") => {
            let mut replies: Vec<Value> = req
                .messages
                .iter()
                .map(|m| {
                    if m["data"]["n"] == json!(2) {
                        bayeux::failure(m, "403::publish_denied", None)
                    } else {
                        bayeux::publish_ok(m)
                    }
                })
                .collect();
            replies.reverse();
            Reply::Json(Value::Array(replies))
        }
        _ => healthy(req, "c1"),
    })
    .await;
    let (client, _events) = start(options(&server));

    let (first, second) = tokio::time::timeout(WAIT, async {
        tokio::join!(
            client.publish("/topic/p", json!({"n": 1})),
            client.publish("/topic/p", json!({"n": 2})),
        )
    })
    .await
    .expect("timed out waiting for the publish verdicts");

    let requests = server.requests();
    let handshake = requests
        .iter()
        .position(|r| r.channel() == Some("/meta/handshake"))
        .expect("a handshake");
    assert_eq!(requests[handshake].messages.len(), 1, "handshake alone");
    let carrying: Vec<(usize, &Request)> = requests
        .iter()
        .enumerate()
        .filter(|(_, r)| r.channels().contains(&"/topic/p"))
        .collect();
    assert_eq!(carrying.len(), 1, "one request for both: {requests:#?}");
    let (index, batch) = carrying[0];
    assert!(index > handshake, "sent after the handshake");
    let published: Vec<&Value> = batch
        .messages
        .iter()
        .filter(|m| m["channel"] == json!("/topic/p"))
        .collect();
    assert_eq!(published.len(), 2);
    let id_of = |n: i64| {
        published
            .iter()
            .find(|m| m["data"]["n"] == json!(n))
            .and_then(|m| m["id"].as_str())
            .expect("publish with an id")
            .to_owned()
    };

    let accepted = first.expect("publish n=1 accepted");
    assert_eq!(accepted.id, Some(id_of(1)));
    assert_eq!(accepted.successful, Some(true));
    match second {
        Err(PublishError::Refused(error)) => {
            assert_eq!(error.raw, "403::publish_denied");
            assert_eq!(error.code, Some(403));
        }
        other => panic!("publish n=2 should be refused, got {other:?}"),
    }
}

// ----- what every request carries -----------------------------------------------------

/// Configured headers go on every request; a handshake extension's `ext` on the handshake
/// only.
#[tokio::test]
async fn custom_header_on_every_request_and_handshake_ext_on_handshake_only() {
    let server = FakeServer::start(|req| healthy(req, "c1")).await;
    let fields = json!({"auth": {"token": "t0k"}})
        .as_object()
        .cloned()
        .expect("an object");
    let (client, _events) = start(ClientOptions {
        headers: vec![("Authorization".into(), "Bearer secret".into())],
        extensions: vec![Arc::new(HandshakeExt::new(fields))],
        ..options(&server)
    });
    let _sub = client.subscribe("/topic/a").await.expect("subscribe");
    tokio::time::timeout(WAIT, client.publish("/topic/p", json!(1)))
        .await
        .expect("timed out waiting for the publish")
        .expect("publish accepted");
    let requests = server
        .wait_for("a held connect after the first", WAIT, |reqs| {
            on(reqs, "/meta/connect").len() >= 3
        })
        .await;

    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer secret"),
            "request {:?} lacks the header",
            r.channels()
        );
    }
    let mut handshakes = 0;
    for m in requests.iter().flat_map(|r| &r.messages) {
        if m["channel"] == json!("/meta/handshake") {
            handshakes += 1;
            assert_eq!(m["ext"]["auth"], json!({"token": "t0k"}), "handshake {m}");
        } else {
            assert!(m["ext"].get("auth").is_none(), "ext leaked onto {m}");
        }
    }
    assert_eq!(handshakes, 1);
    let channels: HashSet<&str> = requests.iter().flat_map(|r| r.channels()).collect();
    for channel in ["/meta/connect", "/meta/subscribe", "/topic/p"] {
        assert!(channels.contains(channel), "no {channel} request seen");
    }
}

/// The session cookie set on the handshake goes back on every later request, and each
/// client has its own jar: two clients of one server never carry each other's cookie.
#[tokio::test]
async fn each_client_carries_only_its_own_session_cookie() {
    let handshakes = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start({
        let handshakes = Arc::clone(&handshakes);
        move |req| match req.channel() {
            Some("/meta/handshake") => {
                let n = handshakes.fetch_add(1, Ordering::SeqCst) + 1;
                let cookie = format!("BAYEUX_BROWSER=b{n}; Path=/; HttpOnly");
                let reply = healthy(req, &format!("c{n}"));
                Reply::SetCookie(cookie, Box::new(reply))
            }
            _ => healthy(req, "unused"),
        }
    })
    .await;
    // Client A's session is c1 with cookie b1, B's is c2 with b2 (started one after the
    // other, so the numbering is known).
    let (a, mut a_events) = start(options(&server));
    let _a_sub = a.subscribe("/topic/a").await.expect("subscribe");
    expect_event(&mut a_events, "A connected", is_connected).await;
    let (b, mut b_events) = start(options(&server));
    let _b_sub = b.subscribe("/topic/b").await.expect("subscribe");
    expect_event(&mut b_events, "B connected", is_connected).await;

    // Two connects of A logged after B handshook: the second was sent after the first was
    // logged, i.e. certainly after B's cookie arrived (a shared jar would now hold b2).
    let after_b = server.request_count();
    let requests = server
        .wait_for(
            "two connects of each client after B connected",
            WAIT,
            |reqs| {
                let later = &reqs[after_b.min(reqs.len())..];
                ["c1", "c2"].iter().all(|c| {
                    later
                        .iter()
                        .filter(|r| r.channel() == Some("/meta/connect"))
                        .filter(|r| client_id_of(r) == Some(c))
                        .count()
                        >= 2
                })
            },
        )
        .await;

    assert_eq!(handshakes.load(Ordering::SeqCst), 2);
    for r in &requests {
        match r.channel() {
            Some("/meta/handshake") => {
                assert_eq!(r.header("cookie"), None, "a first handshake has no cookie")
            }
            _ => {
                let cid = client_id_of(r).expect("a clientId on every later request");
                let own = format!("BAYEUX_BROWSER=b{}", &cid[1..]);
                assert_eq!(
                    r.header("cookie"),
                    Some(own.as_str()),
                    "request {:?} of {cid}",
                    r.channels()
                );
            }
        }
    }
    for cid in ["c1", "c2"] {
        let kinds: HashSet<&str> = requests
            .iter()
            .filter(|r| client_id_of(r) == Some(cid))
            .flat_map(|r| r.channels())
            .collect();
        assert!(
            kinds.contains("/meta/connect") && kinds.contains("/meta/subscribe"),
            "{cid} sent {kinds:?}"
        );
    }
}

// ----- what the server pushes ---------------------------------------------------------

/// A delivery in a long poll's reply for a channel nobody subscribed to is reported as
/// unrouted, not silently dropped and not given to another subscription.
#[tokio::test]
async fn delivery_for_unsubscribed_channel_in_held_connect_is_unrouted() {
    let delivered = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let delivered = Arc::clone(&delivered);
        move |req| match req.channel() {
            Some("/meta/connect")
                if !wants_immediate(req) && !delivered.swap(true, Ordering::SeqCst) =>
            {
                let stray = bayeux::delivery("/topic/elsewhere", json!({"n": 1}));
                connect_with(req, vec![stray], HOLD)
            }
            _ => healthy(req, "c1"),
        }
    })
    .await;
    let (client, mut events) = start(options(&server));
    let mut sub = client.subscribe("/topic/a").await.expect("subscribe");

    let unrouted = expect_event(&mut events, "Unrouted", |e| {
        matches!(e, Event::Unrouted { .. })
    })
    .await;
    let Event::Unrouted { reason, message } = unrouted else {
        unreachable!()
    };
    assert_eq!(reason, Unrouted::NoSubscription);
    assert_eq!(message.channel, "/topic/elsewhere");
    assert_eq!(message.data_value(), Some(json!({"n": 1})));
    // Already routed (the event follows the fan-out): nothing may be buffered for /topic/a.
    assert!(
        tokio::time::timeout(Duration::ZERO, sub.recv())
            .await
            .is_err(),
        "the stray delivery reached /topic/a"
    );
}

/// A `/meta/disconnect` the server pushes (no id: not a reply to us) in a connect reply ends
/// the session, and the client handshakes again instead of stopping.
#[tokio::test]
async fn server_initiated_disconnect_in_connect_reply_rehandshakes() {
    let handshakes = Arc::new(AtomicUsize::new(0));
    let kicked = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let handshakes = Arc::clone(&handshakes);
        let kicked = Arc::clone(&kicked);
        move |req| match req.channel() {
            Some("/meta/handshake") => {
                let n = handshakes.fetch_add(1, Ordering::SeqCst) + 1;
                healthy(req, &format!("c{n}"))
            }
            Some("/meta/connect")
                if client_id_of(req) == Some("c1")
                    && !wants_immediate(req)
                    && !kicked.swap(true, Ordering::SeqCst) =>
            {
                // CometD's order: queued messages first, then the connect reply.
                let mut batch = vec![json!({"channel": "/meta/disconnect", "successful": true})];
                batch.extend(req.messages.iter().map(|m| bayeux::connect_ok(m, None)));
                Reply::Delayed(ms(50), Box::new(Reply::Json(Value::Array(batch))))
            }
            _ => healthy(req, "unused"),
        }
    })
    .await;
    let (_client, mut events) = start(options(&server));

    expect_event(&mut events, "the first Connected", is_connected).await;
    let seen = events_until(&mut events, "the re-handshake", |e| is_handshaken(e, true)).await;
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Stopped { .. })),
        "events: {seen:#?}"
    );
    assert_eq!(
        seen.last(),
        Some(&Event::Handshaken {
            client_id: "c2".into(),
            connection_type: "long-polling".into(),
            rehandshake: true
        })
    );
    let requests = server
        .wait_for("a connect of the new session", WAIT, |reqs| {
            reqs.iter()
                .any(|r| r.channel() == Some("/meta/connect") && client_id_of(r) == Some("c2"))
        })
        .await;
    assert_eq!(on(&requests, "/meta/handshake").len(), 2);
    expect_event(&mut events, "Connected in the new session", is_connected).await;
}

/// A server that redirects is not followed: the redirect would carry the session's cookies
/// and headers to another address. The client reports it (naming the target, without its
/// credentials) and backs off like any failed handshake; the target never hears from it.
/// (A scripted server: the real ones cannot be made to redirect.)
#[tokio::test]
async fn a_redirect_is_reported_and_never_followed() {
    let target = FakeServer::start(|req| healthy(req, "c1")).await;
    let location = format!("http://user:pw@{}/cometd?token=secret", target.addr());
    let server = FakeServer::start(move |_| {
        Reply::Header(
            "Location",
            location.clone(),
            Box::new(Reply::Status(307, "moved".into())),
        )
    })
    .await;
    let (_client, mut events) = start(options(&server));
    let failed = expect_event(&mut events, "a failed handshake", |e| {
        matches!(e, Event::HandshakeFailed { .. })
    })
    .await;
    let Event::HandshakeFailed { reason, .. } = failed else {
        unreachable!("matched above")
    };
    assert!(
        reason.contains("307") && reason.contains("redirects are not followed"),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("http://{}/cometd", target.addr())),
        "names the target: {reason}"
    );
    assert!(
        !reason.contains("secret") && !reason.contains("pw@"),
        "without credentials: {reason}"
    );
    assert_eq!(target.request_count(), 0, "the redirect was not followed");
}

/// The token endpoint's redirect is not followed either: a 307/308 would re-send the form
/// (client secret, refresh token or signed assertion) to the new address. The fetch fails
/// for good, naming the status and the target without its credentials, and the target never
/// hears from the client. (A scripted server: the real token endpoints cannot be made to
/// redirect.)
#[tokio::test]
async fn a_token_endpoint_redirect_is_refused_and_the_form_never_sent_again() {
    use bayeux_mqtt_bridge::bayeux::TokenError;
    use bayeux_mqtt_bridge::bayeux::auth::{Grant, OAuthTokenSource, TokenSource};

    let target = FakeServer::start(|_| Reply::Status(200, "{}".into())).await;
    for status in [307, 308] {
        let location = format!("http://user:pw@{}/token?code=secret", target.addr());
        let endpoint = FakeServer::start(move |_| {
            Reply::Header(
                "Location",
                location.clone(),
                Box::new(Reply::Status(status, "moved".into())),
            )
        })
        .await;
        let source = OAuthTokenSource::new(
            Url::parse(&format!("http://{}/token", endpoint.addr())).expect("a URL"),
            Grant::ClientCredentials {
                client_id: "cid".into(),
                client_secret: "client-s3cret".into(),
            },
            None,
            Duration::from_secs(5),
        )
        .expect("a token source");
        let error = source.fetch().await.expect_err("a redirect is not a token");
        let TokenError::Refused(reason) = &error else {
            panic!("{status}: a redirect is refused for good, got {error:?}")
        };
        assert!(
            reason.contains(&status.to_string()) && reason.contains("redirects are not followed"),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("http://{}/token", target.addr())),
            "names the target: {reason}"
        );
        assert!(
            !reason.contains("secret") && !reason.contains("pw@"),
            "without credentials: {reason}"
        );
        assert_eq!(
            endpoint.request_count(),
            1,
            "{status}: one request, no retry"
        );
    }
    assert_eq!(target.request_count(), 0, "the redirect was not followed");
}

//! The ack and replay extensions of the Bayeux client on the wire.
//!
//! - Ack: against the real npm `cometd-nodejs-server`, started with `--ack` (its
//!   acknowledged-messages extension, `ack-extension.js`) and without it. The assertions look
//!   at the messages the client actually sent and received (a recording [`Extension`] placed
//!   after the one under test) as well as at deliveries.
//! - Replay: against the scripted fake server (`tests/common/fake_server.rs`). Replay is a
//!   Salesforce extension and no replay-capable Bayeux server can be run offline: Salesforce
//!   is a hosted service, and neither cometd-nodejs-server nor Faye implements `ext.replay`.
//!   The fake server speaks Salesforce's wire format as documented
//!   (../shared/reference/bayeux-protocol.md §1.12, §3): handshake reply
//!   `ext: {"replay": true, "payload.format": true}`, events carrying `data.event.replayId`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bayeux_mqtt_bridge::bayeux::client::Events;
use bayeux_mqtt_bridge::bayeux::ext::replay::replay_id;
use bayeux_mqtt_bridge::bayeux::ext::{AckExtension, ReplayExtension};
use bayeux_mqtt_bridge::bayeux::{Event, Extension, Message};
use common::bayeux_client::{confirmed, fast_options, next_message, start, wait_event};
use common::fake_server::bayeux::{self, reply_all};
use common::fake_server::{FakeServer, Reply, Request};
use common::peers::{PeerKind, PeerServer};
use serde_json::{Value, json};

/// Generous bound for anything the fake server should see within a few hundred milliseconds.
const WAIT: Duration = Duration::from_secs(10);
/// How long the fake server holds a `/meta/connect` that has nothing to deliver.
const HOLD: Duration = Duration::from_millis(200);

// ----- recording ------------------------------------------------------------------------

/// One `/meta/handshake` or `/meta/connect` message, as the client sent or received it.
#[derive(Debug, Clone)]
enum Seen {
    Sent(Message),
    Received(Message),
}

/// Records handshake and connect messages in both directions, in the order the client
/// handled them. Placed after the extension under test, it sees what that one added.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Recorder {
    fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    fn sent(&self, channel: &str) -> Vec<Message> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Sent(m) if m.channel == channel => Some(m),
                _ => None,
            })
            .collect()
    }

    fn received(&self, channel: &str) -> Vec<Message> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::Received(m) if m.channel == channel => Some(m),
                _ => None,
            })
            .collect()
    }
}

fn recorded(channel: &str) -> bool {
    channel == "/meta/handshake" || channel == "/meta/connect"
}

impl Extension for Recorder {
    fn outgoing(&self, message: &mut Message) {
        if recorded(&message.channel) {
            self.0.lock().unwrap().push(Seen::Sent(message.clone()));
        }
    }

    fn incoming(&self, message: &mut Message) {
        if recorded(&message.channel) {
            self.0.lock().unwrap().push(Seen::Received(message.clone()));
        }
    }
}

/// `ext.<key>` of a message.
fn ext_field<'a>(message: &'a Message, key: &str) -> Option<&'a Value> {
    message.ext.as_ref()?.get(key)
}

// ----- ack against cometd-nodejs-server ---------------------------------------------------

/// With the server's ack extension installed, the client's offer is accepted (old reply
/// form, `ext.ack: true`), every `/meta/connect` acknowledges the batch of the connect reply
/// before it, batch numbers advance with each delivery, and each message arrives once.
#[tokio::test]
async fn ack_is_negotiated_with_cometd_and_every_connect_acknowledges_the_last_batch() {
    const MESSAGES: i64 = 8;
    let server = PeerServer::start_with_args_async(PeerKind::CometD, &["--ack"]).await;
    let ack = Arc::new(AckExtension::new());
    let recorder = Arc::new(Recorder::default());
    let (subscriber, mut events) = start(
        fast_options(&server.url()),
        vec![ack.clone(), recorder.clone()],
    );
    let mut sub = subscriber.subscribe("/ack/stream").await.unwrap();
    confirmed(&mut events, "/ack/stream").await;

    // Negotiation, as the server sent it.
    let handshake_request = &recorder.sent("/meta/handshake")[0];
    assert_eq!(ext_field(handshake_request, "ack"), Some(&json!(true)));
    let handshake_reply = &recorder.received("/meta/handshake")[0];
    eprintln!("handshake reply ext: {:?}", handshake_reply.ext);
    assert_eq!(ext_field(handshake_reply, "ack"), Some(&json!(true)));
    assert!(ack.is_enabled());

    // One message at a time, so each arrives on its own connect reply, which closes a batch.
    let (publisher, _publisher_events) = start(fast_options(&server.url()), vec![]);
    let mut batches = vec![ack.last_batch()];
    let mut received = Vec::new();
    for n in 1..=MESSAGES {
        publisher
            .publish("/ack/stream", json!({"n": n}))
            .await
            .unwrap();
        let m = next_message(&mut sub, &format!("message {n}")).await;
        received.push(m.data_value().unwrap()["n"].as_i64().unwrap());
        // The connect reply went through the extensions before the delivery was handed on.
        batches.push(ack.last_batch());
    }
    assert!(
        batches.windows(2).all(|w| w[1] > w[0]),
        "the batch advances with every delivery: {batches:?}"
    );

    // Exactly once: the server re-sends unacknowledged batches ahead of anything newer, so
    // a duplicate would arrive before this sentinel.
    publisher
        .publish("/ack/stream", json!({"n": "end"}))
        .await
        .unwrap();
    let sentinel = next_message(&mut sub, "the sentinel").await;
    assert_eq!(sentinel.data_value().unwrap()["n"], json!("end"));
    assert!(sub.try_recv().is_none(), "nothing after the sentinel");
    assert_eq!(received, (1..=MESSAGES).collect::<Vec<_>>());

    // On the wire: each connect request carries the batch of the last successful connect
    // reply received before it (0 before the first).
    let mut last_batch = 0;
    let mut connects = 0;
    for seen in recorder.seen() {
        match seen {
            Seen::Sent(m) if m.channel == "/meta/connect" => {
                connects += 1;
                assert_eq!(
                    ext_field(&m, "ack"),
                    Some(&json!(last_batch)),
                    "connect request {connects}"
                );
            }
            Seen::Received(m) if m.channel == "/meta/connect" && m.is_successful() => {
                let batch = ext_field(&m, "ack").and_then(Value::as_i64);
                let batch = batch.expect("every successful connect reply names its batch");
                assert!(
                    batch > last_batch,
                    "batches increase: {batch} after {last_batch}"
                );
                last_batch = batch;
            }
            _ => {}
        }
    }
    assert!(connects as i64 > MESSAGES, "{connects} connects");
    let replies: Vec<_> = recorder.received("/meta/connect");
    eprintln!(
        "first connect replies ext: {:?}",
        replies.iter().take(3).map(|m| &m.ext).collect::<Vec<_>>()
    );

    publisher.disconnect().await;
    subscriber.disconnect().await;
}

/// A server without the ack extension ignores the offer: the handshake reply has no
/// `ext.ack`, connects carry none, and delivery works as usual.
async fn ack_is_not_used_without_server_support(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let ack = Arc::new(AckExtension::new());
    let recorder = Arc::new(Recorder::default());
    let (subscriber, mut events) = start(
        fast_options(&server.url()),
        vec![ack.clone(), recorder.clone()],
    );
    let mut sub = subscriber.subscribe("/plain/stream").await.unwrap();
    confirmed(&mut events, "/plain/stream").await;
    let (publisher, _publisher_events) = start(fast_options(&server.url()), vec![]);
    for n in 1..=3 {
        publisher
            .publish("/plain/stream", json!({"n": n}))
            .await
            .unwrap();
        let m = next_message(&mut sub, &format!("message {n}")).await;
        assert_eq!(m.data_value(), Some(json!({"n": n})));
    }

    assert_eq!(
        ext_field(&recorder.sent("/meta/handshake")[0], "ack"),
        Some(&json!(true)),
        "offered anyway"
    );
    let reply = &recorder.received("/meta/handshake")[0];
    assert_eq!(ext_field(reply, "ack"), None, "{kind:?}: {:?}", reply.ext);
    assert!(!ack.is_enabled());
    assert_eq!(ack.last_batch(), 0);
    let connects = recorder.sent("/meta/connect");
    assert!(!connects.is_empty());
    for m in &connects {
        assert_eq!(ext_field(m, "ack"), None, "{kind:?}: {m:?}");
    }

    publisher.disconnect().await;
    subscriber.disconnect().await;
}

#[tokio::test]
async fn ack_is_not_used_by_cometd_without_its_ack_extension() {
    ack_is_not_used_without_server_support(PeerKind::CometD).await;
}

#[tokio::test]
async fn ack_is_not_used_by_faye() {
    ack_is_not_used_without_server_support(PeerKind::Faye).await;
}

// ----- replay against the scripted server ----------------------------------------------

/// Waits until the server confirmed every one of `patterns`, in any order.
async fn confirmed_all(events: &mut Events, patterns: &[&str]) {
    let mut missing: BTreeSet<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(WAIT, async {
        while !missing.is_empty() {
            match events.recv().await {
                Some(Event::SubscriptionConfirmed { subscription }) => {
                    missing.remove(&subscription);
                }
                Some(other) => seen.push(other),
                None => return false,
            }
        }
        true
    })
    .await;
    assert_eq!(
        outcome,
        Ok(true),
        "waiting for confirmation of {missing:?}; other events: {seen:#?}"
    );
}

/// `clientId` of the request's first message.
fn client_id_of(req: &Request) -> &str {
    req.messages
        .first()
        .and_then(|m| m.get("clientId"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// A connect reply followed by `extra` deliveries; with nothing to deliver it is held for
/// [`HOLD`] like a real long poll, unless the client asks for an immediate answer (the first
/// connect of a session does).
fn connect_reply(req: &Request, extra: Vec<Value>) -> Reply {
    let immediate = req
        .messages
        .first()
        .is_some_and(|m| m["advice"]["timeout"] == json!(0));
    let hold = if immediate || !extra.is_empty() {
        Duration::ZERO
    } else {
        HOLD
    };
    let mut batch: Vec<Value> = req
        .messages
        .iter()
        .map(|m| bayeux::connect_ok(m, None))
        .collect();
    batch.extend(extra);
    Reply::Delayed(hold, Box::new(Reply::Json(Value::Array(batch))))
}

/// Every `/meta/subscribe` message the server received, with its session, as
/// `(clientId, subscription, ext.replay)`.
fn subscribes(requests: &[Request]) -> Vec<(String, Value, Option<Value>)> {
    requests
        .iter()
        .flat_map(|r| r.messages.iter())
        .filter(|m| m["channel"] == json!("/meta/subscribe"))
        .map(|m| {
            let cid = m["clientId"].as_str().unwrap_or_default().to_owned();
            let replay = m.get("ext").and_then(|e| e.get("replay")).cloned();
            (cid, m["subscription"].clone(), replay)
        })
        .collect()
}

/// The replay map the session `cid` sent, merged over all its subscribe messages. Each
/// message must name exactly the channels it subscribes to, if it has a map at all.
fn replay_map(requests: &[Request], cid: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for (c, subscription, replay) in subscribes(requests) {
        if c != cid {
            continue;
        }
        if let Some(replay) = replay {
            let Value::Object(entries) = replay else {
                panic!("ext.replay is not an object: {replay}");
            };
            let channels: Vec<&str> = match &subscription {
                Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                other => other.as_str().into_iter().collect(),
            };
            let keys: BTreeSet<&str> = entries.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                channels.into_iter().collect::<BTreeSet<_>>(),
                "the replay map of a subscribe to {subscription}"
            );
            map.extend(entries);
        }
    }
    map
}

/// Channels the session `cid` subscribed to.
fn subscribed(requests: &[Request], cid: &str) -> Vec<String> {
    let mut channels = Vec::new();
    for (c, subscription, _) in subscribes(requests) {
        if c == cid {
            match subscription {
                Value::String(s) => channels.push(s),
                Value::Array(items) => {
                    channels.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)))
                }
                _ => {}
            }
        }
    }
    channels.sort();
    channels
}

/// A Salesforce-like server accepts `ext.replay`: every subscribe names the channel's
/// replay id, the one `set` or the default `-1`. Events carry `data.event.replayId`, which
/// the extension reports but does not store; after the session expires
/// (`403::Unknown client`), the resubscribe resumes from what the caller `set` since.
#[tokio::test]
async fn subscribes_carry_the_replay_map_when_the_server_accepts_replay() {
    #[derive(Default)]
    struct State {
        handshakes: usize,
        foo_subscribed: bool,
        event_sent: bool,
    }
    let state = Arc::new(Mutex::new(State::default()));
    let expire = Arc::new(AtomicBool::new(false));
    let server = FakeServer::start({
        let state = Arc::clone(&state);
        let expire = Arc::clone(&expire);
        move |req| {
            let mut st = state.lock().unwrap();
            let cid = client_id_of(req).to_owned();
            match req.channel() {
                Some("/meta/handshake") => {
                    st.handshakes += 1;
                    let id = format!("s{}", st.handshakes);
                    reply_all(req, |m| {
                        let mut reply = bayeux::handshake_ok(m, &id);
                        reply["ext"] = json!({"replay": true, "payload.format": true});
                        reply
                    })
                }
                Some("/meta/connect") if cid == "s1" && expire.load(Ordering::SeqCst) => {
                    reply_all(req, bayeux::unknown_client)
                }
                // One event, once the first session has subscribed to its channel.
                Some("/meta/connect") if cid == "s1" && st.foo_subscribed && !st.event_sent => {
                    st.event_sent = true;
                    let event = bayeux::delivery(
                        "/event/Foo",
                        json!({"event": {"replayId": 4712}, "payload": {"n": 1}}),
                    );
                    connect_reply(req, vec![event])
                }
                Some("/meta/connect") => connect_reply(req, Vec::new()),
                Some("/meta/subscribe") => {
                    if cid == "s1"
                        && subscribed(std::slice::from_ref(req), "s1")
                            .iter()
                            .any(|c| c == "/event/Foo")
                    {
                        st.foo_subscribed = true;
                    }
                    reply_all(req, bayeux::subscribe_ok)
                }
                _ => reply_all(req, bayeux::ok),
            }
        }
    })
    .await;
    let replay = Arc::new(ReplayExtension::new());
    replay.set("/event/Foo", 4711);
    let (client, mut events) = start(fast_options(&server.url()), vec![replay.clone()]);
    let mut foo = client.subscribe("/event/Foo").await.unwrap();
    let _bar = client.subscribe("/event/Bar").await.unwrap();
    confirmed_all(&mut events, &["/event/Bar", "/event/Foo"]).await;
    assert!(replay.is_enabled());

    let requests = server.requests();
    let handshake = &requests[0].messages[0];
    assert_eq!(handshake["ext"]["replay"], json!(true));
    assert_eq!(
        subscribed(&requests, "s1"),
        vec!["/event/Bar", "/event/Foo"]
    );
    assert_eq!(
        replay_map(&requests, "s1"),
        BTreeMap::from([
            ("/event/Bar".to_owned(), json!(-1)),
            ("/event/Foo".to_owned(), json!(4711)),
        ])
    );

    // The event is seen, not stored: only the caller's `set` moves the position.
    let event = next_message(&mut foo, "the replayed event").await;
    assert_eq!(replay_id(&event), Some(4712));
    assert_eq!(replay.last_seen("/event/Foo"), Some(4712));
    assert_eq!(replay.get("/event/Foo"), Some(4711));
    replay.set("/event/Foo", 4712);

    // The session expires; the new one resubscribes from the positions set.
    expire.store(true, Ordering::SeqCst);
    wait_event(
        &mut events,
        "the second session",
        |e| matches!(e, Event::Handshaken { client_id, .. } if client_id == "s2"),
    )
    .await;
    let requests = server
        .wait_for("both resubscribes of s2", WAIT, |reqs| {
            subscribed(reqs, "s2") == ["/event/Bar", "/event/Foo"]
        })
        .await;
    assert_eq!(
        replay_map(&requests, "s2"),
        BTreeMap::from([
            ("/event/Bar".to_owned(), json!(-1)),
            ("/event/Foo".to_owned(), json!(4712)),
        ])
    );
    client.disconnect().await;
}

/// A server that does not accept `ext.replay` (no `ext.replay: true` in the handshake reply)
/// gets no replay map on subscribe, even for channels whose position was set.
#[tokio::test]
async fn subscribes_carry_no_replay_map_when_the_server_does_not_accept_replay() {
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/handshake") => reply_all(req, |m| bayeux::handshake_ok(m, "plain")),
        Some("/meta/connect") => connect_reply(req, Vec::new()),
        Some("/meta/subscribe") => reply_all(req, bayeux::subscribe_ok),
        _ => reply_all(req, bayeux::ok),
    })
    .await;
    let replay = Arc::new(ReplayExtension::new());
    replay.set("/event/Foo", 4711);
    let (client, mut events) = start(fast_options(&server.url()), vec![replay.clone()]);
    let _foo = client.subscribe("/event/Foo").await.unwrap();
    confirmed(&mut events, "/event/Foo").await;

    let requests = server.requests();
    assert_eq!(requests[0].messages[0]["ext"]["replay"], json!(true));
    let subs = subscribes(&requests);
    assert_eq!(subs.len(), 1, "{subs:?}");
    assert_eq!(subs[0].1, json!("/event/Foo"));
    assert_eq!(subs[0].2, None, "no ext.replay");
    assert!(!replay.is_enabled());
    client.disconnect().await;
}

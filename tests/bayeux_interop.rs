//! The Bayeux client against real servers: npm `cometd-nodejs-server` (long-polling only)
//! and npm `faye` (long-polling, WebSocket, callback-polling), started by the tests on free
//! loopback ports (tests/peers). The round trip, fan-out, restart and publish-while-down
//! scenarios run over long-polling on both servers and over WebSocket and callback-polling
//! on Faye; the rest use the default transport (`auto`: WebSocket on Faye).
//!
//! Every scenario runs against both servers. Where the two servers legitimately differ (the
//! CometD Node server delivers a message once per matching server-side subscription, Faye
//! once per client) the assertions say so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::sync::{Arc, Mutex};

use bayeux_mqtt_bridge::bayeux::{
    ClientOptions, Event, Extension, Message, PublishError, TransportChoice,
};
use common::bayeux_client::{confirmed, fast_options, next_message, start, wait_event};
use common::peers::{PeerKind, PeerServer};
use serde_json::json;

/// The scenarios below name their transport; the rest of the file uses the default.
const LONG_POLLING: TransportChoice = TransportChoice::LongPolling;

/// [`fast_options`] over `transport`.
fn over(transport: TransportChoice, url: &str) -> ClientOptions {
    ClientOptions {
        transport,
        ..fast_options(url)
    }
}

async fn round_trip(kind: PeerKind, transport: TransportChoice) {
    let server = PeerServer::start_async(kind).await;
    let (subscriber, mut sub_events) = start(over(transport, &server.url()), vec![]);
    let mut sub = subscriber.subscribe("/chat/room").await.unwrap();
    confirmed(&mut sub_events, "/chat/room").await;
    assert_eq!(subscriber.transport(), Some(transport.as_str()));

    let (publisher, _events) = start(over(transport, &server.url()), vec![]);
    let reply = publisher
        .publish("/chat/room", json!({"text": "hello", "n": 1}))
        .await;
    let reply = reply.expect("the server accepts the publish");
    assert_eq!(reply.successful, Some(true));

    let got = next_message(&mut sub, "the published message").await;
    assert_eq!(got.channel, "/chat/room");
    assert_eq!(got.data_value(), Some(json!({"text": "hello", "n": 1})));
    publisher.disconnect().await;
    subscriber.disconnect().await;
    assert!(matches!(
        wait_event(&mut sub_events, "stop", |e| matches!(
            e,
            Event::Stopped { .. }
        ))
        .await,
        Event::Stopped {
            reason: bayeux_mqtt_bridge::bayeux::StopReason::Disconnected
        }
    ));
}

#[tokio::test]
async fn round_trip_on_cometd() {
    round_trip(PeerKind::CometD, LONG_POLLING).await;
}

#[tokio::test]
async fn round_trip_on_faye() {
    round_trip(PeerKind::Faye, LONG_POLLING).await;
}

/// Every delivery goes to every local subscription that matches it, following the spec's
/// `*` (one segment) and `**` (one or more segments) rules.
async fn wildcard_fan_out(kind: PeerKind, transport: TransportChoice) {
    let server = PeerServer::start_async(kind).await;
    let (client, mut events) = start(over(transport, &server.url()), vec![]);
    let mut one = client.subscribe("/fan/*").await.unwrap();
    let mut deep = client.subscribe("/fan/**").await.unwrap();
    let mut exact = client.subscribe("/fan/a").await.unwrap();
    for p in ["/fan/*", "/fan/**", "/fan/a"] {
        confirmed(&mut events, p).await;
    }
    // The last one only `/fan/**` matches: once it has arrived, every copy of the earlier
    // ones has been handed to every subscription (fan-out happens in arrival order).
    for (channel, n) in [
        ("/fan/a", 1),
        ("/fan/a/b", 2),
        ("/fan/z", 3),
        ("/fan/end/now", 4),
    ] {
        client.publish(channel, json!({"n": n})).await.unwrap();
    }
    let mut deep_seen = Vec::new();
    while deep_seen.last() != Some(&4) {
        let m = next_message(&mut deep, "deliveries on /fan/**").await;
        deep_seen.push(m.data_value().unwrap()["n"].as_i64().unwrap());
    }
    let drain = |s: &mut bayeux_mqtt_bridge::bayeux::Subscription| {
        let mut seen = Vec::new();
        while let Some(m) = s.try_recv() {
            seen.push(m.data_value().unwrap()["n"].as_i64().unwrap());
        }
        seen
    };
    let one_seen = drain(&mut one);
    let exact_seen = drain(&mut exact);
    let distinct = |mut v: Vec<i64>| {
        v.dedup();
        v
    };
    assert_eq!(
        distinct(deep_seen.clone()),
        vec![1, 2, 3, 4],
        "/fan/** matches every depth"
    );
    assert_eq!(
        distinct(one_seen.clone()),
        vec![1, 3],
        "/fan/* matches one segment only"
    );
    assert_eq!(
        distinct(exact_seen.clone()),
        vec![1],
        "/fan/a matches itself only"
    );
    if kind == PeerKind::Faye {
        // Faye sends each message once per client: exactly one copy per subscription.
        assert_eq!(
            (deep_seen.len(), one_seen.len(), exact_seen.len()),
            (4, 2, 1)
        );
    } else {
        // The CometD Node server sends one copy per matching server-side subscription (three
        // for /fan/a, one for /fan/a/b, two for /fan/z); the client fans every copy out to
        // every matching local subscription.
        assert_eq!(deep_seen, vec![1, 1, 1, 2, 3, 3, 4]);
        assert_eq!(one_seen, vec![1, 1, 1, 3, 3]);
        assert_eq!(exact_seen, vec![1, 1, 1]);
    }
    client.disconnect().await;
}

#[tokio::test]
async fn wildcard_fan_out_on_cometd() {
    wildcard_fan_out(PeerKind::CometD, LONG_POLLING).await;
}

#[tokio::test]
async fn wildcard_fan_out_on_faye() {
    wildcard_fan_out(PeerKind::Faye, LONG_POLLING).await;
}

/// The server is killed and restarted on the same port while the client is subscribed: the
/// client finds its session gone, handshakes again, resubscribes, and receives what is
/// published after the restart.
async fn survives_server_restart(kind: PeerKind, transport: TransportChoice) {
    let mut server = PeerServer::start_async(kind).await;
    let (client, mut events) = start(over(transport, &server.url()), vec![]);
    let mut sub = client.subscribe("/restart/x").await.unwrap();
    confirmed(&mut events, "/restart/x").await;

    server.kill();
    wait_event(&mut events, "the outage to be noticed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    server.restart_async().await;

    wait_event(&mut events, "a new handshake", |e| {
        matches!(
            e,
            Event::Handshaken {
                rehandshake: true,
                ..
            }
        )
    })
    .await;
    confirmed(&mut events, "/restart/x").await;

    let (publisher, _e) = start(over(transport, &server.url()), vec![]);
    publisher
        .publish("/restart/x", json!("after restart"))
        .await
        .unwrap();
    let got = next_message(&mut sub, "a message published after the restart").await;
    assert_eq!(got.data_value(), Some(json!("after restart")));
    client.disconnect().await;
}

#[tokio::test]
async fn survives_server_restart_on_cometd() {
    survives_server_restart(PeerKind::CometD, LONG_POLLING).await;
}

#[tokio::test]
async fn survives_server_restart_on_faye() {
    survives_server_restart(PeerKind::Faye, LONG_POLLING).await;
}

/// A publish made while the server is down waits in the queue and is delivered after the
/// client reconnects.
async fn publish_while_disconnected_is_delivered_after_reconnect(
    kind: PeerKind,
    transport: TransportChoice,
) {
    let mut server = PeerServer::start_async(kind).await;
    let (client, mut events) = start(over(transport, &server.url()), vec![]);
    let mut sub = client.subscribe("/queued/x").await.unwrap();
    confirmed(&mut events, "/queued/x").await;

    server.kill();
    wait_event(&mut events, "the outage to be noticed", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;
    let publisher = client.clone();
    let verdict = tokio::spawn(async move {
        publisher
            .publish("/queued/x", json!({"queued": true}))
            .await
    });
    server.restart_async().await;

    let reply = tokio::time::timeout(common::bayeux_client::EVENT_TIMEOUT, verdict)
        .await
        .expect("the queued publish is answered after the restart")
        .unwrap();
    assert!(reply.is_ok(), "{reply:?}");
    let got = next_message(&mut sub, "the queued message").await;
    assert_eq!(got.data_value(), Some(json!({"queued": true})));
    client.disconnect().await;
}

#[tokio::test]
async fn publish_while_disconnected_is_delivered_after_reconnect_on_cometd() {
    publish_while_disconnected_is_delivered_after_reconnect(PeerKind::CometD, LONG_POLLING).await;
}

#[tokio::test]
async fn publish_while_disconnected_is_delivered_after_reconnect_on_faye() {
    publish_while_disconnected_is_delivered_after_reconnect(PeerKind::Faye, LONG_POLLING).await;
}

/// Invalid channels are reported: wildcards and `/meta/` by the client before sending,
/// others by the server (Faye checks the spec grammar; the CometD Node server accepts
/// `/foo bar`).
async fn publish_to_invalid_channel_reports_the_error(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let (client, _events) = start(fast_options(&server.url()), vec![]);
    for channel in ["/foo/*", "/foo/**", "/meta/foo", "foo", "/foo//bar"] {
        let err = client.publish(channel, json!(1)).await.unwrap_err();
        assert!(
            matches!(err, PublishError::InvalidChannel(_)),
            "{channel}: {err:?}"
        );
        assert!(err.to_string().contains(channel), "{err}");
    }
    let spaced = client.publish("/foo bar", json!(1)).await;
    match kind {
        PeerKind::Faye => match spaced {
            Err(PublishError::Refused(e)) => {
                assert_eq!(e.code, Some(405));
                assert_eq!(e.raw, "405:/foo bar:Invalid channel");
            }
            other => panic!("Faye refuses /foo bar, got {other:?}"),
        },
        PeerKind::CometD => assert!(spaced.is_ok(), "{spaced:?}"),
    }
    // The session is still fine afterwards.
    client.publish("/foo/bar", json!(2)).await.unwrap();
    client.disconnect().await;
}

#[tokio::test]
async fn publish_to_invalid_channel_reports_the_error_on_cometd() {
    publish_to_invalid_channel_reports_the_error(PeerKind::CometD).await;
}

#[tokio::test]
async fn publish_to_invalid_channel_reports_the_error_on_faye() {
    publish_to_invalid_channel_reports_the_error(PeerKind::Faye).await;
}

/// Records the advice of every incoming message.
#[derive(Debug, Default)]
struct AdviceLog(Mutex<Vec<serde_json::Value>>);

impl Extension for AdviceLog {
    fn incoming(&self, message: &mut Message) {
        if let Some(advice) = &message.advice {
            self.0.lock().unwrap().push(advice.clone());
        }
    }
}

/// Two clients in one process each have their own cookie jar, so the CometD server sees two
/// browsers and gives neither the `multiple-clients` advice (which makes it return every long
/// poll at once, after 2 s). A control with a shared jar shows the server does send it.
#[tokio::test]
async fn two_clients_on_one_cometd_server_each_keep_a_normal_long_poll() {
    let server = PeerServer::start_with_timeout_async(PeerKind::CometD, 1000).await;
    let log_a = Arc::new(AdviceLog::default());
    let log_b = Arc::new(AdviceLog::default());
    let (a, mut events_a) = start(fast_options(&server.url()), vec![log_a.clone()]);
    let (b, mut events_b) = start(fast_options(&server.url()), vec![log_b.clone()]);
    let mut sub_a = a.subscribe("/two/x").await.unwrap();
    let mut sub_b = b.subscribe("/two/x").await.unwrap();
    confirmed(&mut events_a, "/two/x").await;
    confirmed(&mut events_b, "/two/x").await;
    // Let each client complete a few held long polls (the server holds each for 1 s).
    for n in 0..3 {
        a.publish("/two/x", json!(n)).await.unwrap();
        assert_eq!(
            next_message(&mut sub_a, "a's delivery").await.data_value(),
            Some(json!(n))
        );
        assert_eq!(
            next_message(&mut sub_b, "b's delivery").await.data_value(),
            Some(json!(n))
        );
    }
    // An observation window, not a synchronisation: the advice would come back on a held poll,
    // so give each client two more full poll cycles (1 s each) to receive it if it were sent.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    for log in [&log_a, &log_b] {
        let advice = log.0.lock().unwrap();
        assert!(
            advice.iter().all(|a| a.get("multiple-clients").is_none()),
            "no multiple-clients advice expected: {advice:?}"
        );
    }

    // Control: two sessions sharing one jar do get the advice from this server.
    let shared = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .unwrap();
    let mut saw_multiple = false;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let hs: serde_json::Value = shared
            .post(server.url())
            .json(&json!([{"channel":"/meta/handshake","version":"1.0","supportedConnectionTypes":["long-polling"]}]))
            .send().await.unwrap().json().await.unwrap();
        ids.push(hs[0]["clientId"].as_str().unwrap().to_owned());
    }
    let polls = ids.iter().map(|id| {
        shared
            .post(server.url())
            .json(
                &json!([{"channel":"/meta/connect","clientId":id,"connectionType":"long-polling"}]),
            )
            .send()
    });
    for reply in futures_util::future::join_all(polls).await {
        let body: serde_json::Value = reply.unwrap().json().await.unwrap();
        saw_multiple |= body.to_string().contains("multiple-clients");
    }
    assert!(
        saw_multiple,
        "control: a shared jar triggers multiple-clients on this server"
    );
    a.disconnect().await;
    b.disconnect().await;
}

#[tokio::test]
async fn round_trip_on_faye_over_websocket() {
    round_trip(PeerKind::Faye, TransportChoice::WebSocket).await;
}

#[tokio::test]
async fn round_trip_on_faye_over_callback_polling() {
    round_trip(PeerKind::Faye, TransportChoice::CallbackPolling).await;
}

#[tokio::test]
async fn wildcard_fan_out_on_faye_over_websocket() {
    wildcard_fan_out(PeerKind::Faye, TransportChoice::WebSocket).await;
}

#[tokio::test]
async fn wildcard_fan_out_on_faye_over_callback_polling() {
    wildcard_fan_out(PeerKind::Faye, TransportChoice::CallbackPolling).await;
}

#[tokio::test]
async fn survives_server_restart_on_faye_over_websocket() {
    survives_server_restart(PeerKind::Faye, TransportChoice::WebSocket).await;
}

#[tokio::test]
async fn survives_server_restart_on_faye_over_callback_polling() {
    survives_server_restart(PeerKind::Faye, TransportChoice::CallbackPolling).await;
}

#[tokio::test]
async fn publish_while_disconnected_is_delivered_after_reconnect_on_faye_over_websocket() {
    publish_while_disconnected_is_delivered_after_reconnect(
        PeerKind::Faye,
        TransportChoice::WebSocket,
    )
    .await;
}

#[tokio::test]
async fn publish_while_disconnected_is_delivered_after_reconnect_on_faye_over_callback_polling() {
    publish_while_disconnected_is_delivered_after_reconnect(
        PeerKind::Faye,
        TransportChoice::CallbackPolling,
    )
    .await;
}

//! Transport selection, negotiation and fallback (issue 16), and comment-filtered JSON.
//!
//! Against real servers (tests/peers): npm `faye` offers WebSocket, long-polling and
//! callback-polling; npm `cometd-nodejs-server` long-polling only. A proxy that refuses
//! upgrades is the scripted `tests/common/no_upgrade.rs`; a dead path is the gate
//! (`tests/common/gate.rs`) in blackhole mode. The round trip, fan-out, restart and
//! publish-while-down scenarios over each transport are in `bayeux_interop.rs`.
//!
//! Comment-filtered replies (`/*[...]*/`) come from the scripted fake server
//! (`tests/common/fake_server.rs`): the servers that send them (CometD 1.x era) are not
//! available from a package registry, and neither Faye nor the CometD Node server can be
//! made to wrap their replies.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use bayeux_mqtt_bridge::bayeux::{
    Client, ClientOptions, Event, Events, StopReason, Subscription, TransportChoice,
};
use common::bayeux_client::{confirmed, fast_options, next_message, start, wait_event};
use common::fake_server::bayeux;
use common::fake_server::{FakeServer, Reply, Request};
use common::gate::Gate;
use common::no_upgrade::NoUpgrade;
use common::peers::{PeerKind, PeerServer};
use serde_json::{Value, json};

/// Generous bound for a scripted server's requests.
const WAIT: Duration = Duration::from_secs(10);

fn over(transport: TransportChoice, url: &str) -> ClientOptions {
    ClientOptions {
        transport,
        ..fast_options(url)
    }
}

/// `url` with its port replaced by `port` (to go through a proxy on loopback).
fn via(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

/// Subscribes `client` to `channel` and waits for the confirmation.
async fn subscribed(client: &Client, events: &mut Events, channel: &str) -> Subscription {
    let sub = client.subscribe(channel).await.unwrap();
    confirmed(events, channel).await;
    sub
}

/// A message published by a separate long-polling client arrives on `sub`.
async fn delivers(server_url: &str, sub: &mut Subscription, channel: &str, n: u64) {
    let (publisher, _events) = start(over(TransportChoice::LongPolling, server_url), vec![]);
    publisher.publish(channel, json!({ "n": n })).await.unwrap();
    let got = next_message(sub, &format!("message {n} on {channel}")).await;
    assert_eq!(got.data_value(), Some(json!({ "n": n })));
    publisher.disconnect().await;
}

#[tokio::test]
async fn auto_uses_websocket_where_the_server_offers_it() {
    let server = PeerServer::start_async(PeerKind::Faye).await;
    let (client, mut events) = start(fast_options(&server.url()), vec![]);
    let mut sub = subscribed(&client, &mut events, "/auto/ws").await;
    delivers(&server.url(), &mut sub, "/auto/ws", 1).await;
    assert_eq!(client.transport(), Some("websocket"));
    client.disconnect().await;
}

#[tokio::test]
async fn auto_uses_long_polling_on_the_cometd_node_server() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let (client, mut events) = start(fast_options(&server.url()), vec![]);
    let handshake = wait_event(&mut events, "the handshake", |e| {
        matches!(e, Event::Handshaken { .. })
    })
    .await;
    assert!(
        matches!(&handshake, Event::Handshaken { connection_type, .. } if connection_type == "long-polling"),
        "{handshake:?}"
    );
    let mut sub = subscribed(&client, &mut events, "/auto/lp").await;
    delivers(&server.url(), &mut sub, "/auto/lp", 1).await;
    assert_eq!(client.transport(), Some("long-polling"));
    client.disconnect().await;
}

#[tokio::test]
async fn a_configured_transport_the_server_lacks_stops_the_client_naming_what_it_offers() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let (client, mut events) = start(over(TransportChoice::WebSocket, &server.url()), vec![]);
    let stopped = wait_event(&mut events, "the stop", |e| {
        matches!(e, Event::Stopped { .. })
    })
    .await;
    let Event::Stopped { reason } = stopped else {
        unreachable!()
    };
    assert_eq!(
        reason,
        StopReason::NoCommonTransport {
            client: vec!["websocket".into()],
            server: vec!["long-polling".into()],
        }
    );
    assert!(reason.to_string().contains("long-polling"), "{reason}");
    assert_eq!(client.stop_reason(), Some(reason));
}

/// A proxy that refuses the upgrade: the session falls back to long-polling, keeps its
/// subscription and delivers; WebSocket is not tried again within the session.
#[tokio::test]
async fn auto_falls_back_to_long_polling_when_a_proxy_refuses_the_upgrade() {
    let server = PeerServer::start_async(PeerKind::Faye).await;
    let proxy = NoUpgrade::start(server.port()).await;
    let (client, mut events) = start(fast_options(&via(&server.url(), proxy.port())), vec![]);
    let mut sub = client.subscribe("/fallback/x").await.unwrap();
    // A publish queued before the fallback is not lost either.
    let early = {
        let client = client.clone();
        tokio::spawn(async move { client.publish("/fallback/x", json!({"n": 0})).await })
    };
    // Both, in either order: the subscription goes over long-polling while the WebSocket
    // is on trial.
    let (mut is_confirmed, mut is_connected) = (false, false);
    while !(is_confirmed && is_connected) {
        match wait_event(&mut events, "the confirmation and a connect", |e| {
            matches!(e, Event::Connected | Event::SubscriptionConfirmed { .. })
        })
        .await
        {
            Event::Connected => is_connected = true,
            _ => is_confirmed = true,
        }
    }
    assert!(proxy.refused() >= 1, "the client tried WebSocket first");
    assert_eq!(client.transport(), Some("long-polling"));
    early.await.unwrap().expect("the early publish is answered");
    assert_eq!(
        next_message(&mut sub, "the early publish")
            .await
            .data_value(),
        Some(json!({"n": 0}))
    );
    for n in 1..=3 {
        delivers(&server.url(), &mut sub, "/fallback/x", n).await;
    }
    assert_eq!(proxy.refused(), 1, "no second upgrade within the session");
    client.disconnect().await;
}

/// A WebSocket whose path goes dead mid-stream (nothing passes, no FIN, no RST) is given up
/// within `advice.timeout` + `max_network_delay`, and a new connection is opened; once the
/// path is back, the session delivers again.
#[tokio::test]
async fn a_websocket_that_stops_answering_is_replaced_within_the_bound() {
    let server = PeerServer::start_with_timeout_async(PeerKind::Faye, 1000).await;
    let gate = Gate::start(server.port()).await;
    let options = ClientOptions {
        max_network_delay: Duration::from_secs(1),
        ..over(TransportChoice::WebSocket, &via(&server.url(), gate.port()))
    };
    let (client, mut events) = start(options, vec![]);
    let mut sub = subscribed(&client, &mut events, "/dead/x").await;
    delivers(&server.url(), &mut sub, "/dead/x", 1).await;
    let before = gate.stats().accepted;

    gate.blackhole();
    let cut = Instant::now();
    // The connect in flight was sent at most one hold (1 s) ago and gets advice.timeout
    // (1 s) + max_network_delay (1 s); the client then connects anew.
    let bound = Duration::from_secs(2);
    gate.wait_accepted(before + 1, bound + Duration::from_secs(5))
        .await;
    let took = cut.elapsed();
    assert!(
        took <= bound + Duration::from_secs(2),
        "a new connection after {took:?}"
    );
    wait_event(&mut events, "the failed connect", |e| {
        matches!(e, Event::ConnectFailed { .. })
    })
    .await;

    gate.open();
    wait_event(&mut events, "the connect after the path is back", |e| {
        matches!(e, Event::Connected)
    })
    .await;
    delivers(&server.url(), &mut sub, "/dead/x", 2).await;
    assert_eq!(client.transport(), Some("websocket"));
    client.disconnect().await;
}

// ----- comment-filtered JSON (scripted server) ------------------------------------------

/// Answers like a CometD 1.x server with comment filtering: every reply body `/*[...]*/`.
fn wrapped(req: &Request) -> Reply {
    let replies: Vec<Value> = req
        .messages
        .iter()
        .flat_map(|m| match m["channel"].as_str().unwrap_or("") {
            "/meta/handshake" => vec![bayeux::handshake_ok(m, "c1")],
            "/meta/connect" => vec![
                bayeux::delivery("/wrapped", json!({"n": 1})),
                bayeux::connect_ok(m, None),
            ],
            "/meta/subscribe" => vec![bayeux::subscribe_ok(m)],
            "/meta/disconnect" => vec![bayeux::ok(m)],
            _ => vec![bayeux::publish_ok(m)],
        })
        .collect();
    let body = format!("/*{}*/", Value::Array(replies));
    let is_connect = req.channel() == Some("/meta/connect");
    if is_connect {
        // Held as a server holds a long poll, so that the client does not spin.
        Reply::Delayed(Duration::from_millis(200), Box::new(Reply::Body(200, body)))
    } else {
        Reply::Body(200, body)
    }
}

#[tokio::test]
async fn comment_filtered_replies_are_read_and_the_extension_is_offered_when_asked() {
    let server = FakeServer::start(wrapped).await;
    let options = ClientOptions {
        json_comment_filtered: true,
        ..over(TransportChoice::LongPolling, &server.url())
    };
    let (client, mut events) = start(options, vec![]);
    let mut sub = subscribed(&client, &mut events, "/wrapped").await;
    let got = next_message(&mut sub, "a delivery in a wrapped reply").await;
    assert_eq!(got.data_value(), Some(json!({"n": 1})));
    let reply = client.publish("/out", json!("x")).await.unwrap();
    assert_eq!(reply.successful, Some(true));
    client.disconnect().await;
    let handshake = server
        .requests()
        .into_iter()
        .find(|r| r.channel() == Some("/meta/handshake"))
        .unwrap();
    assert_eq!(
        handshake.messages[0]["ext"]["json-comment-filtered"],
        json!(true)
    );

    // Without the option the extension is not offered; wrapped replies are still read.
    let (client, mut events) = start(over(TransportChoice::LongPolling, &server.url()), vec![]);
    let _sub = subscribed(&client, &mut events, "/wrapped").await;
    client.disconnect().await;
    let handshakes: Vec<Request> = server
        .requests()
        .into_iter()
        .filter(|r| r.channel() == Some("/meta/handshake"))
        .collect();
    assert_eq!(handshakes.len(), 2);
    assert!(handshakes[1].messages[0]["ext"]["json-comment-filtered"].is_null());
}

// ----- the upgrade request (scripted server) --------------------------------------------

/// A server that offers WebSocket, sets a session cookie at handshake and answers every
/// upgrade with 400: what the upgrade request carries can be read from the log, and the
/// client falls back. (Faye sets no cookie and cannot show the request it got.)
fn offers_websocket_and_refuses_upgrades(req: &Request) -> Reply {
    if req.header("upgrade").is_some() {
        return Reply::Status(400, "no WebSocket here".into());
    }
    let replies: Vec<Value> = req
        .messages
        .iter()
        .map(|m| match m["channel"].as_str().unwrap_or("") {
            "/meta/handshake" => {
                let mut reply = bayeux::handshake_ok(m, "c1");
                reply["supportedConnectionTypes"] = json!(["websocket", "long-polling"]);
                reply
            }
            "/meta/connect" => bayeux::connect_ok(m, None),
            "/meta/subscribe" => bayeux::subscribe_ok(m),
            _ => bayeux::ok(m),
        })
        .collect();
    let reply = Reply::Json(Value::Array(replies));
    match req.channel() {
        Some("/meta/handshake") => {
            Reply::SetCookie("BAYEUX_BROWSER=b1; Path=/".into(), Box::new(reply))
        }
        Some("/meta/connect") => Reply::Delayed(Duration::from_millis(200), Box::new(reply)),
        _ => reply,
    }
}

#[tokio::test]
async fn the_upgrade_carries_the_cookies_headers_and_token_and_a_4xx_falls_back() {
    let server = FakeServer::start(offers_websocket_and_refuses_upgrades).await;
    let options = ClientOptions {
        headers: vec![("X-Api-Key".into(), "k-123".into())],
        token_source: Some(std::sync::Arc::new(
            bayeux_mqtt_bridge::bayeux::StaticToken::new("tok-456"),
        )),
        ..fast_options(&server.url())
    };
    let (client, mut events) = start(options, vec![]);
    let _sub = subscribed(&client, &mut events, "/up/x").await;
    let upgrades = server
        .wait_for("an upgrade and a connect after it", WAIT, |log| {
            let upgrade = log.iter().position(|r| r.header("upgrade").is_some());
            upgrade.is_some_and(|at| {
                log[at..]
                    .iter()
                    .any(|r| r.channel() == Some("/meta/connect"))
            })
        })
        .await;
    let upgrade = upgrades
        .iter()
        .find(|r| r.header("upgrade").is_some())
        .unwrap();
    assert_eq!(upgrade.method, "GET");
    assert_eq!(upgrade.path, "/cometd");
    assert!(
        upgrade
            .header("upgrade")
            .unwrap()
            .eq_ignore_ascii_case("websocket")
    );
    assert_eq!(upgrade.header("cookie"), Some("BAYEUX_BROWSER=b1"));
    assert_eq!(upgrade.header("x-api-key"), Some("k-123"));
    assert_eq!(upgrade.header("authorization"), Some("Bearer tok-456"));
    // The connect after the refused upgrade went over long-polling, naming it.
    let after: Vec<&Request> = upgrades
        .iter()
        .skip_while(|r| r.header("upgrade").is_none())
        .filter(|r| r.channel() == Some("/meta/connect"))
        .collect();
    assert_eq!(
        after[0].messages[0]["connectionType"],
        json!("long-polling")
    );
    assert_eq!(client.transport(), Some("long-polling"));
    assert_eq!(
        upgrades
            .iter()
            .filter(|r| r.header("upgrade").is_some())
            .count(),
        1
    );
    client.disconnect().await;
}

// ----- wss -----------------------------------------------------------------------------

/// `https://` maps to `wss://`, with the same trust (`ca_file`) and client certificate as
/// long-polling: Faye behind a TLS proxy that requires a client certificate.
#[tokio::test]
async fn websocket_over_tls_uses_the_ca_file_and_shows_the_client_certificate() {
    let pki = common::certs::Pki::generate();
    let server = PeerServer::start_async(PeerKind::Faye).await;
    let proxy = common::tls_proxy::TlsProxy::start(&pki.server, server.port(), Some(&pki.ca)).await;
    let url = format!("https://localhost:{}/bayeux", proxy.port);
    let options = ClientOptions {
        tls: bayeux_mqtt_bridge::tls::TlsFiles {
            ca_file: Some(pki.ca.clone()),
            cert_file: Some(pki.client.cert.clone()),
            key_file: Some(pki.client.key.clone()),
        },
        ..over(TransportChoice::WebSocket, &url)
    };
    let (client, mut events) = start(options, vec![]);
    let mut sub = subscribed(&client, &mut events, "/tls/x").await;
    delivers(&server.url(), &mut sub, "/tls/x", 1).await;
    assert_eq!(client.transport(), Some("websocket"));
    // The handshake (long-polling) and the WebSocket each went through the proxy's TLS.
    assert!(proxy.handshakes() >= 2, "{} handshakes", proxy.handshakes());
    assert_eq!(proxy.failed_handshakes(), 0);
    client.disconnect().await;
}

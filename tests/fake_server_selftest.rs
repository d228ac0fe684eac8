//! Self-tests of the scripted fake Bayeux server (`tests/common/fake_server.rs`):
//! each `Reply` variant behaves as documented when driven by a real reqwest
//! client, and the request log, `wait_for`, keep-alive and shutdown work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::fake_server::bayeux::{self, reply_all};
use common::fake_server::{FakeServer, Reply, Request};
use serde_json::{Value, json};

/// Generous bound for events that should happen at once.
const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .build()
        .expect("build reqwest client")
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> reqwest::Response {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("POST to fake server")
}

fn handshake_msg() -> Value {
    json!([{
        "channel": "/meta/handshake",
        "id": "1",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling"],
    }])
}

fn ok_json(_: &Request) -> Reply {
    Reply::Json(json!([]))
}

#[tokio::test]
async fn json_reply_and_request_is_recorded() {
    let server =
        FakeServer::start(|req| reply_all(req, |m| bayeux::handshake_ok(m, "client-1"))).await;
    assert!(server.url().starts_with("http://127.0.0.1:"));
    assert!(server.url().ends_with("/cometd"));

    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "Json reply content type"
    );
    let body: Value = resp.json().await.expect("Json reply parses");
    assert_eq!(
        body,
        json!([{
            "channel": "/meta/handshake",
            "successful": true,
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "clientId": "client-1",
            "advice": {"reconnect": "retry", "interval": 0, "timeout": 2000},
            "id": "1",
        }])
    );

    assert_eq!(server.request_count(), 1);
    let reqs = server.requests();
    let req = &reqs[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/cometd");
    assert_eq!(req.header("CONTENT-TYPE"), Some("application/json"));
    assert_eq!(req.header("x-absent"), None);
    assert_eq!(req.channel(), Some("/meta/handshake"));
    assert_eq!(req.messages, handshake_msg().as_array().unwrap().clone());
    assert_eq!(
        serde_json::from_str::<Value>(&req.body).expect("recorded body is the JSON sent"),
        handshake_msg()
    );
}

#[tokio::test]
async fn batch_gets_one_reply_per_message() {
    let server = FakeServer::start(|req| {
        reply_all(req, |m| match m["channel"].as_str() {
            Some("/meta/subscribe") => bayeux::subscribe_ok(m),
            Some("/meta/connect") => bayeux::unknown_client(m),
            _ => bayeux::publish_ok(m),
        })
    })
    .await;
    let batch = json!([
        {"channel": "/meta/subscribe", "id": "2", "clientId": "c", "subscription": "/a"},
        {"channel": "/chat", "id": "3", "clientId": "c", "data": {"x": 1}},
        {"channel": "/meta/connect", "id": "4", "clientId": "c", "connectionType": "long-polling"},
    ]);
    let body: Value = post(&client(), &server.url(), &batch)
        .await
        .json()
        .await
        .expect("batch reply parses");
    assert_eq!(
        body,
        json!([
            {"channel": "/meta/subscribe", "successful": true, "id": "2", "clientId": "c", "subscription": "/a"},
            {"channel": "/chat", "successful": true, "id": "3"},
            {"channel": "/meta/connect", "successful": false, "error": "403::Unknown client",
             "advice": {"reconnect": "handshake", "interval": 0}, "id": "4", "clientId": "c"},
        ])
    );
    assert_eq!(
        server.requests()[0].channels(),
        ["/meta/subscribe", "/chat", "/meta/connect"]
    );
}

#[test]
fn bayeux_builders() {
    let req = json!({"channel": "/meta/connect", "id": "7", "clientId": "c1"});
    assert_eq!(
        bayeux::connect_ok(&req, None),
        json!({"channel": "/meta/connect", "successful": true, "id": "7", "clientId": "c1"})
    );
    assert_eq!(
        bayeux::connect_ok(&req, Some(json!({"reconnect": "none"})))["advice"],
        json!({"reconnect": "none"})
    );
    let failure = bayeux::failure(&req, "402::Unknown", Some(json!({"reconnect": "none"})));
    assert_eq!(
        failure,
        json!({"channel": "/meta/connect", "successful": false, "error": "402::Unknown",
               "advice": {"reconnect": "none"}, "id": "7", "clientId": "c1"})
    );
    let unsub =
        json!({"channel": "/meta/unsubscribe", "id": "8", "clientId": "c1", "subscription": "/a"});
    assert_eq!(
        bayeux::ok(&unsub),
        json!({"channel": "/meta/unsubscribe", "successful": true, "id": "8",
               "clientId": "c1", "subscription": "/a"})
    );
    assert_eq!(
        bayeux::delivery("/chat", json!({"text": "hi"})),
        json!({"channel": "/chat", "data": {"text": "hi"}})
    );
    // No id in the request: none in the reply.
    assert!(
        bayeux::handshake_ok(&json!({"channel": "/meta/handshake"}), "x")
            .get("id")
            .is_none()
    );
}

#[tokio::test]
async fn status_reply() {
    let server = FakeServer::start(|_| Reply::Status(500, "boom".into())).await;
    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 500);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(resp.text().await.expect("status body"), "boom");
}

#[tokio::test]
async fn raw_body_reply_is_labelled_json() {
    let server = FakeServer::start(|_| Reply::Body(200, "not json".into())).await;
    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.text().await.expect("raw body"), "not json");

    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert!(
        resp.json::<Value>().await.is_err(),
        "a non-JSON body must fail to decode"
    );
}

#[tokio::test]
async fn stall_makes_client_time_out_and_server_keeps_serving() {
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/connect") => Reply::Stall,
        _ => Reply::Json(json!([])),
    })
    .await;
    let timeout = Duration::from_millis(300);
    let stalling = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client with timeout");
    let started = Instant::now();
    let err = stalling
        .post(server.url())
        .json(&json!([{"channel": "/meta/connect"}]))
        .send()
        .await
        .expect_err("stalled request must not be answered");
    assert!(err.is_timeout(), "expected a timeout, got {err:?}");
    assert!(started.elapsed() >= timeout);
    assert_eq!(server.requests()[0].channel(), Some("/meta/connect"));

    // Other connections are unaffected.
    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn huge_body_is_valid_json_of_at_least_n_bytes() {
    let size = 11 * 1024 * 1024;
    let server = FakeServer::start(move |_| Reply::Huge(size)).await;
    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(
        resp.content_length(),
        None,
        "Huge is streamed chunked, without Content-Length"
    );
    let bytes = resp.bytes().await.expect("huge body");
    assert!(bytes.len() >= size, "got only {} bytes", bytes.len());
    let body: Value = serde_json::from_slice(&bytes).expect("huge body is valid JSON");
    assert_eq!(body[0]["channel"], "/fake/huge");
    assert!(body[0]["data"]["blob"].as_str().unwrap().len() > size - 100);
}

#[tokio::test]
async fn huge_body_abandoned_by_client_does_not_break_server() {
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/connect") => Reply::Huge(64 * 1024 * 1024),
        _ => Reply::Json(json!([])),
    })
    .await;
    let c = client();
    let mut resp = post(&c, &server.url(), &json!([{"channel": "/meta/connect"}])).await;
    // Read a little, then give up (as a client enforcing a body cap does).
    let first = resp
        .chunk()
        .await
        .expect("first chunk")
        .expect("non-empty body");
    assert!(first.starts_with(b"[{"));
    drop(resp);
    let resp = post(&c, &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn close_drops_connection_without_answer() {
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/connect") => Reply::Close,
        _ => Reply::Json(json!([])),
    })
    .await;
    let c = client();
    let err = c
        .post(server.url())
        .json(&json!([{"channel": "/meta/connect"}]))
        .send()
        .await
        .expect_err("closed connection must fail the request");
    assert!(
        !err.is_timeout(),
        "expected a connection error, got {err:?}"
    );
    assert_eq!(server.request_count(), 1, "reqwest did not retry");
    // The same client recovers on a new connection.
    let resp = post(&c, &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
    let reqs = server.requests();
    assert_ne!(reqs[0].connection_id, reqs[1].connection_id);
}

#[tokio::test]
async fn delayed_reply_arrives_after_delay() {
    let delay = Duration::from_millis(200);
    let server = FakeServer::start(move |req| {
        Reply::Delayed(
            delay,
            Box::new(reply_all(req, |m| bayeux::connect_ok(m, None))),
        )
    })
    .await;
    let started = Instant::now();
    let body: Value = post(
        &client(),
        &server.url(),
        &json!([{"channel": "/meta/connect", "id": "5", "clientId": "c"}]),
    )
    .await
    .json()
    .await
    .expect("delayed reply parses");
    assert!(started.elapsed() >= delay);
    assert_eq!(body[0]["successful"], true);
    assert_eq!(body[0]["id"], "5");
}

#[tokio::test(start_paused = true)]
async fn delayed_reply_follows_paused_tokio_clock() {
    // An hour-long hold completes at once when tokio time is paused.
    let server = FakeServer::start(|_| {
        Reply::Delayed(Duration::from_secs(3600), Box::new(Reply::Json(json!([]))))
    })
    .await;
    let started = Instant::now();
    let resp = post(&client(), &server.url(), &handshake_msg()).await;
    assert_eq!(resp.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test]
async fn set_cookie_is_sent_back_by_cookie_store() {
    let server = FakeServer::start(|req| {
        if req.channel() == Some("/meta/handshake") {
            Reply::SetCookie(
                "BAYEUX_BROWSER=abc123; Path=/".into(),
                Box::new(Reply::Delayed(
                    Duration::ZERO,
                    Box::new(reply_all(req, |m| bayeux::handshake_ok(m, "c"))),
                )),
            )
        } else {
            reply_all(req, |m| bayeux::connect_ok(m, None))
        }
    })
    .await;
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .build()
        .expect("client with cookie store");
    let resp = post(&c, &server.url(), &handshake_msg()).await;
    assert_eq!(
        resp.headers()["set-cookie"],
        "BAYEUX_BROWSER=abc123; Path=/"
    );
    let body: Value = resp.json().await.expect("handshake reply");
    assert_eq!(body[0]["clientId"], "c");
    post(&c, &server.url(), &json!([{"channel": "/meta/connect"}])).await;
    let reqs = server.requests();
    assert_eq!(reqs[0].header("cookie"), None);
    assert_eq!(reqs[1].header("cookie"), Some("BAYEUX_BROWSER=abc123"));
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let server = FakeServer::start(ok_json).await;
    let c = client();
    for _ in 0..5 {
        let resp = post(&c, &server.url(), &handshake_msg()).await;
        assert_eq!(resp.status(), 200);
        resp.bytes()
            .await
            .expect("body read so the connection is reusable");
    }
    let reqs = server.requests();
    assert_eq!(reqs.len(), 5);
    assert!(
        reqs.iter()
            .all(|r| r.connection_id == reqs[0].connection_id),
        "all requests on one connection: {:?}",
        reqs.iter().map(|r| r.connection_id).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn connection_close_is_honored() {
    let server = FakeServer::start(ok_json).await;
    let c = client();
    for _ in 0..2 {
        let resp = c
            .post(server.url())
            .header("connection", "close")
            .json(&handshake_msg())
            .send()
            .await
            .expect("POST with Connection: close");
        assert_eq!(resp.headers()["connection"], "close");
        resp.bytes().await.expect("body");
    }
    let reqs = server.requests();
    assert_ne!(reqs[0].connection_id, reqs[1].connection_id);
}

#[tokio::test]
async fn concurrent_requests_use_separate_connections() {
    // A held long-poll and a second request in flight at the same time.
    let server = FakeServer::start(|req| match req.channel() {
        Some("/meta/connect") => Reply::Delayed(
            Duration::from_millis(300),
            Box::new(reply_all(req, |m| bayeux::connect_ok(m, None))),
        ),
        _ => reply_all(req, bayeux::publish_ok),
    })
    .await;
    let c = client();
    let url = server.url();
    let long_poll = json!([{"channel": "/meta/connect", "id": "1"}]);
    let (connect, publish) = tokio::join!(post(&c, &url, &long_poll), async {
        server
            .wait_for("the long-poll", WAIT, |r| {
                r.iter().any(|r| r.channel() == Some("/meta/connect"))
            })
            .await;
        post(
            &c,
            &url,
            &json!([{"channel": "/chat", "id": "2", "data": 1}]),
        )
        .await
    });
    assert_eq!(connect.status(), 200);
    assert_eq!(publish.status(), 200);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_ne!(reqs[0].connection_id, reqs[1].connection_id);
}

#[tokio::test]
async fn chunked_request_body_is_parsed() {
    let server = FakeServer::start(ok_json).await;
    let parts: Vec<Result<&'static str, std::io::Error>> =
        vec![Ok(r#"[{"channel":"/meta/"#), Ok(r#"handshake","id":"9"}]"#)];
    let resp = client()
        .post(server.url())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            parts,
        )))
        .send()
        .await
        .expect("chunked POST");
    assert_eq!(resp.status(), 200);
    let req = &server.requests()[0];
    assert_eq!(req.header("transfer-encoding"), Some("chunked"));
    assert_eq!(req.body, r#"[{"channel":"/meta/handshake","id":"9"}]"#);
    assert_eq!(req.channel(), Some("/meta/handshake"));
}

#[tokio::test]
async fn single_object_and_non_json_bodies() {
    let server = FakeServer::start(ok_json).await;
    let c = client();
    post(&c, &server.url(), &json!({"channel": "/meta/handshake"})).await;
    c.post(server.url())
        .body("message=oops")
        .send()
        .await
        .expect("POST non-JSON");
    let reqs = server.requests();
    assert_eq!(reqs[0].messages.len(), 1, "single object is wrapped");
    assert_eq!(reqs[0].channel(), Some("/meta/handshake"));
    assert!(reqs[1].messages.is_empty());
    assert_eq!(reqs[1].body, "message=oops");
    assert_eq!(reqs[1].channel(), None);
}

#[tokio::test]
async fn wait_for_wakes_on_new_request() {
    let seen = Arc::new(AtomicUsize::new(0));
    let handler_seen = Arc::clone(&seen);
    let server = FakeServer::start(move |_| {
        handler_seen.fetch_add(1, Ordering::SeqCst);
        Reply::Stall
    })
    .await;
    let mut waiting = Box::pin(server.wait_for("a /meta/connect", WAIT, |r| {
        r.iter().any(|r| r.channel() == Some("/meta/connect"))
    }));
    // Nothing received yet: the wait is pending, not satisfied up front.
    assert!(futures_util::poll!(&mut waiting).is_pending());

    let url = server.url();
    let request = tokio::spawn(async move {
        // Stalled forever; it ends when the server is dropped.
        client()
            .post(url)
            .json(&json!([{"channel": "/meta/connect"}]))
            .send()
            .await
    });
    let reqs = waiting.await;
    assert_eq!(reqs.len(), 1);
    // The handler ran before the request was logged.
    assert_eq!(seen.load(Ordering::SeqCst), 1);

    // Dropping the server closes the stalled connection, failing the request.
    drop(server);
    let outcome = tokio::time::timeout(WAIT, request)
        .await
        .expect("stalled request ends once the server is dropped")
        .expect("request task");
    assert!(outcome.is_err(), "expected an error, got {outcome:?}");
}

#[tokio::test]
#[should_panic(expected = "waiting for a subscribe")]
async fn wait_for_panics_with_description_on_timeout() {
    let server = FakeServer::start(ok_json).await;
    post(&client(), &server.url(), &handshake_msg()).await;
    server
        .wait_for("a subscribe", Duration::from_millis(50), |r| {
            r.iter().any(|r| r.channel() == Some("/meta/subscribe"))
        })
        .await;
}

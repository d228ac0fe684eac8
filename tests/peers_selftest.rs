//! Checks the test harness itself: the Node Bayeux servers in tests/peers
//! start, answer a raw handshake, honour the long-poll timeout, and can be
//! killed and restarted on the same port.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use common::peers::{PeerKind, PeerServer};
use serde_json::{Value, json};

/// A client with a cookie store: cometd-nodejs-server only finds a session
/// when the `BAYEUX_BROWSER` cookie set by the handshake is sent back.
/// Without connection pooling: after a kill, a pooled keep-alive connection
/// to the dead process fails the next request (with a send error, not a
/// connect error), which is not what these tests are about.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build reqwest client")
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> reqwest::Result<Value> {
    client
        .post(url)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json::<Value>()
        .await
}

/// Sends a raw handshake, asserts it succeeded and returns the clientId.
async fn handshake(client: &reqwest::Client, url: &str) -> String {
    let reply = post(
        client,
        url,
        json!([{
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }]),
    )
    .await
    .unwrap_or_else(|e| panic!("handshake POST to {url} failed: {e}"));
    let first = &reply[0];
    assert_eq!(first["channel"], "/meta/handshake", "reply: {reply}");
    assert_eq!(first["successful"], true, "reply: {reply}");
    first["clientId"]
        .as_str()
        .unwrap_or_else(|| panic!("handshake reply without clientId: {reply}"))
        .to_owned()
}

async fn connect(client: &reqwest::Client, url: &str, client_id: &str, advice: Value) -> Value {
    let mut message = json!({
        "channel": "/meta/connect",
        "clientId": client_id,
        "connectionType": "long-polling",
    });
    if !advice.is_null() {
        message["advice"] = advice;
    }
    let reply = post(client, url, json!([message]))
        .await
        .unwrap_or_else(|e| panic!("connect POST to {url} failed: {e}"));
    reply
        .as_array()
        .and_then(|messages| messages.iter().find(|m| m["channel"] == "/meta/connect"))
        .unwrap_or_else(|| panic!("no /meta/connect reply in {reply}"))
        .clone()
}

async fn handshake_works(kind: PeerKind) {
    let server = PeerServer::start(kind);
    assert_ne!(server.port(), 0);
    assert_eq!(
        server.url(),
        format!("http://127.0.0.1:{}{}", server.port(), kind.path())
    );
    let client = http_client();
    let client_id = handshake(&client, &server.url()).await;
    assert!(!client_id.is_empty());
}

#[tokio::test]
async fn cometd_handshake_succeeds() {
    handshake_works(PeerKind::CometD).await;
}

#[tokio::test]
async fn faye_handshake_succeeds() {
    handshake_works(PeerKind::Faye).await;
}

async fn kill_and_restart_on_same_port(kind: PeerKind) {
    let mut server = PeerServer::start_async(kind).await;
    let port = server.port();
    let url = server.url();
    let client = http_client();
    let old_client_id = handshake(&client, &url).await;

    server.kill();
    assert!(!server.is_running());
    let refused = post(&client, &url, json!([{ "channel": "/meta/handshake" }])).await;
    let error = refused.expect_err("a killed server must not answer");
    assert!(
        error.is_connect(),
        "expected a connect error, got {error:?}"
    );

    server.restart_async().await;
    assert!(server.is_running());
    assert_eq!(server.port(), port, "restart must keep the port");
    assert_eq!(server.url(), url);

    // It is a new server: the old session is unknown there...
    let reply = connect(&client, &url, &old_client_id, json!({ "timeout": 0 })).await;
    assert_eq!(
        reply["successful"], false,
        "old session after restart: {reply}"
    );
    assert_eq!(reply["advice"]["reconnect"], "handshake", "reply: {reply}");
    // ...and a new handshake works.
    let new_client_id = handshake(&client, &url).await;
    assert_ne!(new_client_id, old_client_id);

    // Restarting a running server (sync variant) works too.
    server.restart();
    assert_eq!(server.port(), port);
    handshake(&client, &url).await;
}

#[tokio::test]
async fn cometd_kill_and_restart_on_same_port() {
    kill_and_restart_on_same_port(PeerKind::CometD).await;
}

#[tokio::test]
async fn faye_kill_and_restart_on_same_port() {
    kill_and_restart_on_same_port(PeerKind::Faye).await;
}

/// `start_with_timeout` sets how long the server holds a `/meta/connect`.
async fn long_poll_timeout_is_applied(kind: PeerKind) {
    const TIMEOUT_MS: u64 = 700;
    let server = PeerServer::start_with_timeout_async(kind, TIMEOUT_MS).await;
    let url = server.url();
    let client = http_client();
    let client_id = handshake(&client, &url).await;

    // The first connect with advice.timeout 0 is answered at once by both.
    let first = connect(&client, &url, &client_id, json!({ "timeout": 0 })).await;
    assert_eq!(first["successful"], true, "reply: {first}");
    assert_eq!(first["advice"]["timeout"], TIMEOUT_MS, "reply: {first}");

    // A connect without advice is held for the server's timeout.
    let started = Instant::now();
    let held = connect(&client, &url, &client_id, Value::Null).await;
    let elapsed = started.elapsed();
    assert_eq!(held["successful"], true, "reply: {held}");
    assert!(
        elapsed >= Duration::from_millis(TIMEOUT_MS - 200),
        "connect was held only {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "connect was held {elapsed:?}, far longer than {TIMEOUT_MS} ms"
    );
}

#[tokio::test]
async fn cometd_long_poll_timeout_is_applied() {
    long_poll_timeout_is_applied(PeerKind::CometD).await;
}

#[tokio::test]
async fn faye_long_poll_timeout_is_applied() {
    long_poll_timeout_is_applied(PeerKind::Faye).await;
}

#[tokio::test]
async fn servers_get_distinct_ports_and_drop_stops_them() {
    let cometd = PeerServer::start(PeerKind::CometD);
    let faye = PeerServer::start(PeerKind::Faye);
    assert_ne!(cometd.port(), faye.port());
    let urls = [cometd.url(), faye.url()];
    drop(cometd);
    drop(faye);
    let client = http_client();
    for url in urls {
        let error = post(&client, &url, json!([{ "channel": "/meta/handshake" }]))
            .await
            .expect_err("a dropped server must not answer");
        assert!(
            error.is_connect(),
            "{url}: expected a connect error, got {error:?}"
        );
    }
}

/// `restart` keeps retrying while something else still holds the port.
#[tokio::test]
async fn restart_waits_for_a_busy_port() {
    let mut server = PeerServer::start_async(PeerKind::Faye).await;
    let port = server.port();
    server.kill();
    // Occupy the port, and free it a little later: the restart must fail to
    // bind at first and succeed once the port is free. (The delay only
    // shapes the scenario; the assertions do not depend on it.)
    let blocker = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port} after kill: {e}"));
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(blocker);
    });
    server.restart_async().await;
    release.await.expect("release task");
    assert!(server.is_running());
    assert_eq!(server.port(), port);
    handshake(&http_client(), &server.url()).await;
}

/// The CometD server announces on stderr, for tests to wait for, a session that ends by
/// `/meta/disconnect` (with its subscriptions and how many other sessions read each) and one
/// that expires without polling ([`PeerServer::idle_session`]).
#[tokio::test]
async fn cometd_announces_ended_and_expired_sessions() {
    const WAIT: Duration = Duration::from_secs(20);
    let server =
        PeerServer::start_with_args_async(PeerKind::CometD, &["--max-interval", "2000"]).await;
    let url = server.url();
    let (leaving, staying) = (http_client(), http_client());
    let leaving_id = handshake(&leaving, &url).await;
    let staying_id = handshake(&staying, &url).await;
    for (client, id, subscription) in [
        (&leaving, &leaving_id, "/a/*"),
        (&leaving, &leaving_id, "/b"),
        (&staying, &staying_id, "/a/*"),
    ] {
        let reply = post(
            client,
            &url,
            json!([{ "channel": "/meta/subscribe", "clientId": id, "subscription": subscription }]),
        )
        .await
        .unwrap_or_else(|e| panic!("subscribe POST to {url} failed: {e}"));
        assert_eq!(reply[0]["successful"], true, "reply: {reply}");
    }
    let idle = server.idle_session().await;
    post(
        &leaving,
        &url,
        json!([{ "channel": "/meta/disconnect", "clientId": leaving_id }]),
    )
    .await
    .unwrap_or_else(|e| panic!("disconnect POST to {url} failed: {e}"));
    let prefix = format!("session ended: {leaving_id} ");
    let ended = server
        .wait_for_stderr_line(WAIT, |l| l.starts_with(&prefix))
        .await
        .unwrap_or_else(|| panic!("no end announced; stderr:\n{}", server.stderr_output()));
    assert_eq!(ended, format!("{prefix}/a/* (1 others), /b (0 others)"));
    let expired = format!("session expired: {idle}");
    assert!(
        server
            .wait_for_stderr_line(WAIT, |l| l == expired)
            .await
            .is_some(),
        "no expiry announced; stderr:\n{}",
        server.stderr_output()
    );
}

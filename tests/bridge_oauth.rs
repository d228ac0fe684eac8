//! The bridge daemon with `[bayeux.oauth]`: the real binary (`common::bridge`), a real
//! Mosquitto broker, and the Salesforce fake `tests/peers/salesforce.js` as the Bayeux server
//! and token endpoint (a scripted fake, not Salesforce, which cannot be run offline; see
//! `tests/common/salesforce.rs`). Synchronisation is by the bridge's JSON log lines.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::bridge::{BridgeProcess, ConfigFile};
use common::mosquitto::Mosquitto;
use common::salesforce::{CLIENT_ID, CLIENT_SECRET, SalesforceFake};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn config(fake: &SalesforceFake, broker: &Mosquitto) -> ConfigFile {
    ConfigFile::new(&format!(
        r#"
[bayeux]
url = "{url}"
max_request_bytes = 32768
backoff_increment_ms = 200
backoff_max_ms = 1000

[bayeux.oauth]
token_url = "{token_url}"
grant = "client_credentials"
client_id = "{CLIENT_ID}"
client_secret_file = "client-secret"

[mqtt]
host = "{host}"
port = {port}

[[route]]
bayeux = "/event/Order__e"
mqtt = "sf/order"
direction = "bayeux_to_mqtt"
"#,
        url = fake.url,
        token_url = fake.token_url(),
        host = broker.host(),
        port = broker.port(),
    ))
}

/// No log line shows the client secret or a bearer token.
fn assert_no_secret(bridge: &BridgeProcess, secret: &str) {
    for line in bridge.lines() {
        let text = format!("{line:?}");
        assert!(!text.contains(secret), "the secret is logged: {text}");
        assert!(!text.contains("Bearer "), "a token is logged: {text}");
    }
}

/// The bridge fetches its token, becomes ready, and when every token is revoked it logs the
/// refusal, fetches a new token and subscribes again in a new session.
#[tokio::test]
async fn the_bridge_fetches_its_token_and_replaces_a_revoked_one() {
    let fake = SalesforceFake::start_async(&[]).await;
    let broker = Mosquitto::start_async().await;
    let config = config(&fake, &broker);
    std::fs::write(
        config.dir().join("client-secret"),
        format!("{CLIENT_SECRET}\n"),
    )
    .unwrap();
    let mut bridge = BridgeProcess::spawn(&config, &[("RUST_LOG", "debug")]);
    bridge.wait_for_log("Token fetched.", WAIT).await;
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    fake.control("revoke", json!({})).await;
    bridge
        .wait_for_log("Authentication failed; will fetch a new token.", WAIT)
        .await;
    bridge.wait_for_log("Token refreshed.", WAIT).await;
    bridge.wait_for_nth("Subscribed.", 2, WAIT).await;
    let stats = fake.stats().await;
    assert_eq!(stats["tokensIssued"], 2, "{stats}");
    assert_eq!(stats["handshakes"], 2, "{stats}");
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{status}");
    assert_no_secret(&bridge, CLIENT_SECRET);
}

/// Credentials the token endpoint refuses stop the bridge with exit code 1 and an error that
/// names the reason but not the secret; the server sees one token request and no handshake.
#[tokio::test]
async fn refused_credentials_stop_the_bridge_with_exit_code_1() {
    let fake = SalesforceFake::start_async(&[]).await;
    let broker = Mosquitto::start_async().await;
    let config = config(&fake, &broker);
    std::fs::write(config.dir().join("client-secret"), "wrong-s3cret\n").unwrap();
    let mut bridge = BridgeProcess::spawn(&config, &[("RUST_LOG", "debug")]);
    let status = bridge
        .wait_exit("exit after refused credentials", WAIT)
        .await;
    assert_eq!(status.code(), Some(1), "{}", bridge.tail(30));
    assert!(
        bridge
            .lines()
            .iter()
            .any(|l| format!("{l:?}").contains("invalid_client")),
        "{}",
        bridge.tail(30)
    );
    assert_no_secret(&bridge, "wrong-s3cret");
    let stats = fake.stats().await;
    assert_eq!(stats["tokenRequests"]["client_credentials"], 1, "{stats}");
    assert_eq!(stats["handshakes"], 0, "{stats}");
}

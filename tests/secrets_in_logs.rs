//! No secret reaches the daemon's output, even at `trace`: the real binary runs with
//! `RUST_LOG=trace` against real peers (Mosquitto, the Node CometD server, and the Salesforce
//! fake `tests/peers/salesforce.js` as token endpoint, a scripted fake because Salesforce
//! cannot be run offline) once for every kind of secret, until it is ready (both sides
//! connected, subscriptions made, so every request that carries a secret has been sent),
//! and then every line it wrote is searched for the secret strings.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use common::bridge::{BridgeProcess, ConfigFile};
use common::mosquitto::Mosquitto;
use common::peers::{PeerKind, PeerServer};
use common::salesforce::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SalesforceFake};

const WAIT: Duration = Duration::from_secs(30);
const JWT_KEY: &str = include_str!("fixtures/jwt-test-key.pem");
/// The start of every access token the Salesforce fake issues (its org id and `!`).
const ISSUED_TOKEN_PREFIX: &str = "00D000000000001!";

const MQTT_PASSWORD: &str = "mqtt-pw-Zq81";
const HEADER_SECRET: &str = "hdr-secret-Vx27";
const BEARER_HEADER: &str = "bearer-hdr-Kp44";
const TOKEN_FILE_SECRET: &str = "token-file-Wm93";

/// The `[mqtt]` section, with a user and password.
fn mqtt_section(broker: &Mosquitto) -> String {
    format!(
        "[mqtt]\nhost = \"{}\"\nport = {}\nusername = \"bridge\"\npassword = \"{MQTT_PASSWORD}\"\n",
        broker.host(),
        broker.port()
    )
}

const ROUTE: &str = "[[route]]\nbayeux = \"/event/Order__e\"\nmqtt = \"sf/order\"\n\
                     direction = \"bayeux_to_mqtt\"\n";

/// Runs the daemon at trace on `config` until it is ready, stops it, and fails if any of
/// `secrets` (or a bearer token the fake issued) is in its output.
async fn assert_trace_output_is_clean(config: &ConfigFile, secrets: &[&str]) {
    let mut bridge = BridgeProcess::spawn(config, &[("RUST_LOG", "trace")]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    bridge.terminate(WAIT).await;
    let lines = bridge.lines();
    // Trace output really is on: the HTTP and TLS crates' records are there.
    assert!(
        lines.iter().any(|l| l.raw.contains("\"level\":\"TRACE\"")),
        "no TRACE record: the test does not run at trace"
    );
    for line in &lines {
        for secret in secrets.iter().chain([&ISSUED_TOKEN_PREFIX]) {
            assert!(
                !line.raw.contains(secret),
                "a secret ({secret}) is in the output: {}",
                line.raw
            );
        }
    }
}

/// The secret lines of a PEM private key (its base64 body).
fn key_body(pem: &str) -> Vec<&str> {
    pem.lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 20)
        .collect()
}

#[tokio::test]
async fn oauth_grants_static_headers_and_the_mqtt_password_stay_out_of_trace_output() {
    let fake = SalesforceFake::start_async(&["--refresh-token", REFRESH_TOKEN]).await;
    let broker = Mosquitto::start_async().await;
    let head = |oauth: &str| {
        format!(
            "[bayeux]\nurl = \"{url}\"\nmax_request_bytes = 32768\n\
             headers = {{ X-Api-Key = \"{HEADER_SECRET}\" }}\n\
             [bayeux.oauth]\ntoken_url = \"{token_url}\"\nclient_id = \"{CLIENT_ID}\"\n{oauth}\n\
             {mqtt}{ROUTE}",
            url = fake.url,
            token_url = fake.token_url(),
            mqtt = mqtt_section(&broker),
        )
    };
    // client_credentials: the client secret, from a file.
    let config = ConfigFile::new(&head(
        "grant = \"client_credentials\"\nclient_secret_file = \"client-secret\"",
    ));
    std::fs::write(config.dir().join("client-secret"), CLIENT_SECRET).unwrap();
    assert_trace_output_is_clean(&config, &[CLIENT_SECRET, HEADER_SECRET, MQTT_PASSWORD]).await;

    // refresh_token: the refresh token and the client secret, inline.
    let config = ConfigFile::new(&head(&format!(
        "grant = \"refresh_token\"\nrefresh_token = \"{REFRESH_TOKEN}\"\n\
         client_secret = \"{CLIENT_SECRET}\""
    )));
    assert_trace_output_is_clean(
        &config,
        &[REFRESH_TOKEN, CLIENT_SECRET, HEADER_SECRET, MQTT_PASSWORD],
    )
    .await;

    // jwt_bearer: the signing key and the signed assertion (a JWT: `eyJ...`).
    let config = ConfigFile::new(&head(
        "grant = \"jwt_bearer\"\nusername = \"user@example.com\"\n\
         private_key_file = \"jwt-key.pem\"",
    ));
    std::fs::write(config.dir().join("jwt-key.pem"), JWT_KEY).unwrap();
    let mut secrets = key_body(JWT_KEY);
    secrets.extend([HEADER_SECRET, MQTT_PASSWORD, "eyJhbGciOiJSUzI1NiIs"]);
    assert_trace_output_is_clean(&config, &secrets).await;
    let stats = fake.stats().await;
    assert_eq!(stats["tokensIssued"], 3, "{stats}");
}

#[tokio::test]
async fn a_token_file_and_an_authorization_header_stay_out_of_trace_output() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let url = format!("{}{}", server.url(), "");
    let mqtt = mqtt_section(&broker);
    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"{url}\"\ntoken_file = \"token\"\n{mqtt}{ROUTE}"
    ));
    std::fs::write(config.dir().join("token"), TOKEN_FILE_SECRET).unwrap();
    assert_trace_output_is_clean(&config, &[TOKEN_FILE_SECRET, MQTT_PASSWORD]).await;

    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"{url}\"\n\
         headers = {{ Authorization = \"Bearer {BEARER_HEADER}\", X-Api-Key = \"{HEADER_SECRET}\" }}\n\
         {mqtt}{ROUTE}"
    ));
    assert_trace_output_is_clean(&config, &[BEARER_HEADER, HEADER_SECRET, MQTT_PASSWORD]).await;
}

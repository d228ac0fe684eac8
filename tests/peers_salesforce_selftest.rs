//! Checks the Salesforce Streaming API fake in `tests/peers/salesforce.js`
//! over raw HTTP: the OAuth token endpoint, bearer-token checks, the
//! `sfdc-stream` cookie, replay ids and retention, `401::Authentication
//! invalid`, `403::Handshake denied`, `403::Unknown client` and the control
//! endpoints the bridge tests script it with.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::salesforce::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SalesforceFake, http_client};

const CHANNEL: &str = "/event/Order__e";

/// POSTs a form to the token endpoint; returns the status and JSON body.
async fn token_request(fake: &SalesforceFake, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let response = http_client(false)
        .post(format!("{}/services/oauth2/token", fake.base))
        .form(form)
        .send()
        .await
        .expect("token request");
    let status = response.status();
    (status, response.json().await.expect("token reply is JSON"))
}

async fn client_credentials_token(fake: &SalesforceFake) -> String {
    let (status, body) = token_request(
        fake,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", CLIENT_SECRET),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "token reply: {body}");
    assert_eq!(body["token_type"], "Bearer", "token reply: {body}");
    assert_eq!(
        body["instance_url"],
        fake.base.as_str(),
        "token reply: {body}"
    );
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

async fn control(fake: &SalesforceFake, name: &str, body: Value) -> Value {
    fake.control(name, body).await
}

async fn stats(fake: &SalesforceFake) -> Value {
    fake.stats().await
}

/// POSTs Bayeux messages with a bearer token; returns the status and the replies.
async fn bayeux(
    client: &reqwest::Client,
    fake: &SalesforceFake,
    token: &str,
    messages: Value,
) -> (StatusCode, Vec<Value>) {
    let response = client
        .post(&fake.url)
        .bearer_auth(token)
        .json(&messages)
        .send()
        .await
        .expect("Bayeux request");
    let status = response.status();
    let replies: Value = response.json().await.expect("Bayeux reply is JSON");
    let replies = replies
        .as_array()
        .expect("Bayeux reply is an array")
        .clone();
    (status, replies)
}

async fn handshake(client: &reqwest::Client, fake: &SalesforceFake, token: &str) -> String {
    let (status, replies) = bayeux(
        client,
        fake,
        token,
        json!([{
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "ext": { "replay": true },
        }]),
    )
    .await;
    let reply = &replies[0];
    assert_eq!(status, StatusCode::OK, "handshake: {reply}");
    assert_eq!(reply["successful"], true, "handshake: {reply}");
    assert_eq!(
        reply["ext"],
        json!({"replay": true, "payload.format": true}),
        "handshake: {reply}"
    );
    reply["clientId"].as_str().expect("clientId").to_owned()
}

fn connect_message(client_id: &str, advice: Value) -> Value {
    let mut message = json!({
        "channel": "/meta/connect",
        "clientId": client_id,
        "connectionType": "long-polling",
    });
    if !advice.is_null() {
        message["advice"] = advice;
    }
    message
}

fn subscribe_message(client_id: &str, replay_from: Value) -> Value {
    json!({
        "channel": "/meta/subscribe",
        "clientId": client_id,
        "subscription": CHANNEL,
        "ext": { "replay": { CHANNEL: replay_from } },
    })
}

/// The replay ids of the events in a connect reply, checking their shape.
fn delivered_replay_ids(replies: &[Value]) -> Vec<i64> {
    assert_eq!(
        replies[0]["channel"], "/meta/connect",
        "replies: {replies:?}"
    );
    assert_eq!(replies[0]["successful"], true, "replies: {replies:?}");
    replies[1..]
        .iter()
        .map(|event| {
            assert_eq!(event["channel"], CHANNEL, "event: {event}");
            assert!(event["data"]["event"]["EventUuid"].is_string(), "{event}");
            event["data"]["event"]["replayId"]
                .as_i64()
                .expect("replayId")
        })
        .collect()
}

fn replay_ids(published: &Value) -> Vec<i64> {
    let events = published["events"].as_array().expect("events");
    events
        .iter()
        .map(|e| e["replayId"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn oauth_grants() {
    let fake = SalesforceFake::start(&[]);
    let started = Instant::now();
    let first = client_credentials_token(&fake).await;
    let second = client_credentials_token(&fake).await;
    assert_ne!(first, second, "each grant issues a new token");

    let wrong_secret = [
        ("grant_type", "client_credentials"),
        ("client_id", CLIENT_ID),
        ("client_secret", "wrong"),
    ];
    let (status, body) = token_request(&fake, &wrong_secret).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client", "reply: {body}");

    let refresh = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", REFRESH_TOKEN),
    ];
    let (status, body) = token_request(&fake, &refresh).await;
    assert_eq!(status, StatusCode::OK, "reply: {body}");
    let unknown_refresh = [
        ("grant_type", "refresh_token"),
        ("client_id", CLIENT_ID),
        ("refresh_token", "nope"),
    ];
    let (status, body) = token_request(&fake, &unknown_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_grant", "reply: {body}");

    // JWT bearer: the signature is not checked, the issuer is.
    let jwt = |iss: &str| {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let claims = json!({"iss": iss, "sub": "user@example.com", "aud": fake.base});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{header}.{claims}.c2lnbmF0dXJl")
    };
    let grant = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    let good = jwt(CLIENT_ID);
    let (status, body) = token_request(&fake, &[("grant_type", grant), ("assertion", &good)]).await;
    assert_eq!(status, StatusCode::OK, "reply: {body}");
    let jwt_token = body["access_token"].as_str().expect("access_token");
    let bad_iss = jwt("someone-else");
    let (status, body) =
        token_request(&fake, &[("grant_type", grant), ("assertion", &bad_iss)]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "invalid_client", "reply: {body}");

    // Every issued token works on the Bayeux endpoint.
    for token in [first.as_str(), second.as_str(), jwt_token] {
        handshake(&http_client(true), &fake, token).await;
    }
    let stats = stats(&fake).await;
    assert_eq!(stats["tokensIssued"], 4, "stats: {stats}");
    assert_eq!(stats["tokenRequests"]["client_credentials"], 3, "{stats}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn replay_from_retained_events() {
    let fake = SalesforceFake::start(&[]);
    let started = Instant::now();
    let token = client_credentials_token(&fake).await;
    let publish = json!({"channel": CHANNEL, "count": 5, "payload": {"Note__c": "hi"}});
    let published = replay_ids(&control(&fake, "publish", publish).await);
    assert_eq!(published.len(), 5);
    assert!(published.windows(2).all(|w| w[0] < w[1]), "{published:?}");

    let client = http_client(true);
    let client_id = handshake(&client, &fake, &token).await;
    let (_, replies) = bayeux(
        &client,
        &fake,
        &token,
        json!([subscribe_message(&client_id, json!(-2))]),
    )
    .await;
    assert_eq!(replies[0]["successful"], true, "subscribe: {replies:?}");
    let connect = json!([connect_message(&client_id, json!({"timeout": 0}))]);
    let (_, replies) = bayeux(&client, &fake, &token, connect.clone()).await;
    assert_eq!(
        delivered_replay_ids(&replies),
        published,
        "-2 replays all, in order"
    );
    let seqs: Vec<_> = replies[1..]
        .iter()
        .map(|e| e["data"]["payload"]["seq"].clone())
        .collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5].map(|n| json!(n)));
    assert_eq!(replies[1]["data"]["payload"]["Note__c"], "hi");

    // Resubscribing from a retained id delivers the events after it.
    let from_second = subscribe_message(&client_id, json!(published[1]));
    bayeux(&client, &fake, &token, json!([from_second])).await;
    let (_, replies) = bayeux(&client, &fake, &token, connect.clone()).await;
    assert_eq!(delivered_replay_ids(&replies), published[2..]);

    // A held connect is answered as soon as an event is published.
    let held = {
        let (client, token) = (client.clone(), token.clone());
        let message = json!([connect_message(&client_id, Value::Null)]);
        let url = fake.url.clone();
        tokio::spawn(async move {
            let response = client.post(url).bearer_auth(token).json(&message).send();
            response
                .await
                .expect("held connect")
                .json::<Vec<Value>>()
                .await
        })
    };
    let one = json!({"channel": CHANNEL, "count": 1});
    let newest = replay_ids(&control(&fake, "publish", one).await);
    let replies = held.await.expect("join").expect("held connect JSON");
    assert_eq!(delivered_replay_ids(&replies), newest);

    // After a trim, an id that is no longer retained is rejected.
    let trimmed = control(&fake, "trim", json!({"keep": 2})).await;
    assert_eq!(trimmed["removed"], 4);
    let expired = subscribe_message(&client_id, json!(published[0]));
    let (status, replies) = bayeux(&client, &fake, &token, json!([expired])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replies[0]["successful"], false, "{replies:?}");
    assert_eq!(
        replies[0]["error"],
        format!(
            "400::The replayId {{{}}} you provided was invalid. Please provide a valid ID, \
             -2 to replay all events, or -1 to replay only new events.",
            published[0]
        )
    );
    // The stats record every subscribe with its replay map.
    let stats = stats(&fake).await;
    let subscribes = stats["subscribes"].as_array().expect("subscribes");
    assert_eq!(subscribes.len(), 3, "stats: {stats}");
    assert_eq!(subscribes[0]["replay"], json!({ CHANNEL: -2 }));
    assert_eq!(subscribes[2]["successful"], false);
    assert_eq!(stats["eventsPublished"], 6, "stats: {stats}");
    assert_eq!(stats["channels"][CHANNEL]["retained"], 2, "stats: {stats}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn bad_and_revoked_tokens_are_refused() {
    let fake = SalesforceFake::start(&["--token", "static-token"]);
    let client = http_client(true);
    let client_id = handshake(&client, &fake, "static-token").await;
    let first = json!([connect_message(&client_id, json!({"timeout": 0}))]);
    let (status, _) = bayeux(&client, &fake, "static-token", first).await;
    assert_eq!(status, StatusCode::OK);

    // A connect held when the token is revoked gets the 401 at once.
    let held = {
        let client = client.clone();
        let message = json!([connect_message(&client_id, Value::Null)]);
        let url = fake.url.clone();
        tokio::spawn(async move {
            let response = client.post(url).bearer_auth("static-token").json(&message);
            let response = response.send().await.expect("held connect");
            (response.status(), response.json::<Vec<Value>>().await)
        })
    };
    let revoked = control(&fake, "revoke", json!({"token": "static-token"})).await;
    assert_eq!(revoked["revoked"], 1);
    let (status, replies) = held.await.expect("join");
    let replies = replies.expect("401 body is JSON");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(replies[0]["error"], "401::Authentication invalid");
    assert_eq!(replies[0]["advice"]["reconnect"], "none");

    // Later connects and handshakes with that token are refused too.
    let again = json!([connect_message(&client_id, json!({"timeout": 0}))]);
    let (status, replies) = bayeux(&client, &fake, "static-token", again).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{replies:?}");
    assert_eq!(replies[0]["error"], "401::Authentication invalid");
    let shake = json!([{
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling"],
    }]);
    let (status, replies) = bayeux(&client, &fake, "static-token", shake).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(replies[0]["successful"], false);
    assert_eq!(replies[0]["error"], "403::Handshake denied");
    assert_eq!(replies[0]["advice"]["reconnect"], "none");
    assert_eq!(
        replies[0]["ext"]["sfdc"]["failureReason"],
        "401::Authentication invalid"
    );
}

fn assert_unknown_client(replies: &[Value]) {
    assert_eq!(replies[0]["successful"], false, "{replies:?}");
    assert_eq!(replies[0]["error"], "403::Unknown client", "{replies:?}");
    assert_eq!(
        replies[0]["advice"],
        json!({"reconnect": "handshake", "interval": 0})
    );
}

#[tokio::test]
async fn expired_sessions_and_missing_cookies_are_unknown_clients() {
    let fake = SalesforceFake::start(&[]);
    let token = client_credentials_token(&fake).await;
    let client = http_client(true);
    let client_id = handshake(&client, &fake, &token).await;
    let connect = json!([connect_message(&client_id, json!({"timeout": 0}))]);

    // Without the sfdc-stream cookie the session is not found.
    let (status, replies) = bayeux(&http_client(false), &fake, &token, connect.clone()).await;
    assert_eq!(status, StatusCode::OK);
    assert_unknown_client(&replies);

    let (_, replies) = bayeux(&client, &fake, &token, connect.clone()).await;
    assert_eq!(replies[0]["successful"], true, "{replies:?}");
    let expired = control(&fake, "expire-sessions", json!({})).await;
    assert_eq!(expired["expired"], 1);
    let (status, replies) = bayeux(&client, &fake, &token, connect).await;
    assert_eq!(status, StatusCode::OK);
    assert_unknown_client(&replies);
}

#[tokio::test]
async fn idle_sessions_expire() {
    let fake = SalesforceFake::start(&["--session-timeout-ms", "300"]);
    let token = client_credentials_token(&fake).await;
    let client = http_client(true);
    // A session nobody connects on expires by itself (--session-timeout-ms).
    // Nothing announces the expiry on the wire, so the stats are polled.
    let idle = handshake(&client, &fake, &token).await;
    let deadline = Instant::now() + Duration::from_secs(4);
    while stats(&fake).await["sessions"]["expired"] != 1 {
        assert!(Instant::now() < deadline, "the idle session did not expire");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let late = json!([connect_message(&idle, json!({"timeout": 0}))]);
    let (_, replies) = bayeux(&client, &fake, &token, late).await;
    assert_unknown_client(&replies);
}

#[tokio::test]
async fn oversized_requests_get_413() {
    let fake = SalesforceFake::start(&["--token", "t"]);
    let big = json!([{"channel": "/meta/handshake", "padding": "x".repeat(40_000)}]);
    let response = http_client(false)
        .post(&fake.url)
        .bearer_auth("t")
        .json(&big)
        .send()
        .await
        .expect("oversized request");
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

//! The Bayeux client against Salesforce behaviour: OAuth tokens (client credentials, refresh
//! token, JWT bearer), re-authentication when a token is revoked mid-stream (with the replay
//! extension, so nothing is lost), bounded attempts when credentials are refused, and the
//! 32 KiB request cap.
//!
//! The server is the scripted fake `tests/peers/salesforce.js` (started by
//! `tests/common/salesforce.rs`), not Salesforce: Salesforce is a hosted service that cannot
//! be run offline. The fake implements the documented wire behaviour (bearer-token checks,
//! `401::Authentication invalid`, `403::Handshake denied` with `ext.sfdc.failureReason`, the
//! OAuth token endpoint, HTTP 413 over 32768 bytes, replay ids) and counts what it saw
//! (`/_control/stats`), which the assertions read. It does not verify JWT signatures; the
//! unit tests in `src/bayeux/auth.rs` do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bayeux_mqtt_bridge::bayeux::client::Events;
use bayeux_mqtt_bridge::bayeux::ext::ReplayExtension;
use bayeux_mqtt_bridge::bayeux::ext::replay::replay_id;
use bayeux_mqtt_bridge::bayeux::{
    Client, ClientOptions, Event, Extension, Grant, OAuthTokenSource, PublishError, StaticToken,
    StopReason, TokenSource,
};
use common::bayeux_client::{EVENT_TIMEOUT, confirmed, fast_options, next_message, wait_event};
use common::inbox::Inbox;
use common::salesforce::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SalesforceFake};
use serde_json::json;

const CHANNEL: &str = "/event/Order__e";
/// Salesforce's request body cap.
const SF_CAP: usize = 32768;
const JWT_KEY: &str = include_str!("fixtures/jwt-test-key.pem");

fn oauth(fake: &SalesforceFake, grant: Grant) -> Arc<dyn TokenSource> {
    Arc::new(
        OAuthTokenSource::new(fake.token_url(), grant, None, Duration::from_secs(10))
            .expect("token source"),
    )
}

fn client_credentials(secret: &str) -> Grant {
    Grant::ClientCredentials {
        client_id: CLIENT_ID.into(),
        client_secret: secret.into(),
    }
}

/// Options for the fake with `source`, a fast backoff and Salesforce's request cap.
fn options(fake: &SalesforceFake, source: Arc<dyn TokenSource>) -> ClientOptions {
    let mut options = fast_options(&fake.url);
    options.token_source = Some(source);
    options.max_request_bytes = SF_CAP;
    options
}

fn start(options: ClientOptions, extensions: Vec<Arc<dyn Extension>>) -> (Client, Events) {
    common::bayeux_client::start(options, extensions)
}

/// `data.payload.seq` of an event from the fake.
fn seq(message: &bayeux_mqtt_bridge::bayeux::Message) -> u64 {
    message
        .data_value()
        .and_then(|d| d["payload"]["seq"].as_u64())
        .unwrap_or_else(|| panic!("event without data.payload.seq: {message:?}"))
}

/// Waits for the client to stop and returns why.
async fn stopped(events: &mut Events) -> StopReason {
    match wait_event(events, "the client to stop", |e| {
        matches!(e, Event::Stopped { .. })
    })
    .await
    {
        Event::Stopped { reason } => reason,
        _ => unreachable!(),
    }
}

/// Each grant fetches a token from the token endpoint, handshakes with it (the fake accepts
/// no other token) and receives events.
#[tokio::test]
async fn each_oauth_grant_obtains_a_token_and_receives_events() {
    let grants = [
        ("client_credentials", client_credentials(CLIENT_SECRET)),
        (
            "refresh_token",
            Grant::RefreshToken {
                client_id: CLIENT_ID.into(),
                client_secret: Some(CLIENT_SECRET.into()),
                refresh_token: REFRESH_TOKEN.into(),
            },
        ),
        (
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
            Grant::JwtBearer {
                client_id: CLIENT_ID.into(),
                username: "integration@example.com".into(),
                audience: "https://login.salesforce.com".into(),
                private_key_pem: JWT_KEY.into(),
            },
        ),
    ];
    for (grant_type, grant) in grants {
        let fake = SalesforceFake::start_async(&[]).await;
        let (client, mut events) = start(options(&fake, oauth(&fake, grant)), vec![]);
        wait_event(&mut events, "the first token", |e| {
            *e == Event::TokenRefreshed { initial: true }
        })
        .await;
        let mut sub = client.subscribe(CHANNEL).await.unwrap();
        confirmed(&mut events, CHANNEL).await;
        fake.publish(CHANNEL, 3).await;
        let mut seqs = Vec::new();
        for _ in 0..3 {
            seqs.push(seq(&next_message(&mut sub, "an event").await));
        }
        assert_eq!(seqs, [1, 2, 3], "{grant_type}");
        let stats = fake.stats().await;
        assert_eq!(
            stats["tokenRequests"][grant_type], 1,
            "{grant_type}: {stats}"
        );
        assert_eq!(stats["tokensIssued"], 1, "{grant_type}: {stats}");
        assert_eq!(stats["handshakes"], 1, "{grant_type}: {stats}");
        assert_eq!(stats["handshakesDenied"], 0, "{grant_type}: {stats}");
        client.disconnect().await;
    }
}

/// All tokens are revoked while events flow: the held long poll is answered with HTTP 401,
/// the client fetches a new token, starts a new session and resubscribes with the replay
/// id of the last event it processed, so the events published meanwhile arrive too. Lost
/// and duplicated events are counted and printed; none may be lost.
#[tokio::test]
async fn a_token_revoked_mid_stream_is_replaced_and_replay_loses_no_event() {
    const BEFORE: usize = 25;
    const DURING: usize = 25;
    const AFTER: usize = 10;
    let total = BEFORE + DURING + AFTER;
    let fake = SalesforceFake::start_async(&[]).await;
    let replay = Arc::new(ReplayExtension::new());
    let (client, mut events) = start(
        options(&fake, oauth(&fake, client_credentials(CLIENT_SECRET))),
        vec![replay.clone()],
    );
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    confirmed(&mut events, CHANNEL).await;

    // The application: processes each event, then moves the replay position past it.
    let received: Inbox<u64> = Inbox::new();
    let reader = {
        let received = received.clone();
        let replay = Arc::clone(&replay);
        tokio::spawn(async move {
            while let Some(message) = sub.recv().await {
                received.push(seq(&message));
                if let Some(id) = replay_id(&message) {
                    replay.set(CHANNEL, id);
                }
            }
        })
    };
    let events_log: Inbox<Event> = Inbox::new();
    let watcher = {
        let events_log = events_log.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                events_log.push(event);
            }
        })
    };

    let first = fake.publish(CHANNEL, BEFORE).await;
    received
        .wait_until("the events before the revocation", EVENT_TIMEOUT, |s| {
            s.len() >= BEFORE
        })
        .await;
    let position = first.last().and_then(|e| e["replayId"].as_i64()).unwrap();
    let revoked = fake.control("revoke", json!({})).await;
    assert_eq!(revoked["revoked"], 1, "{revoked}");
    assert_eq!(revoked["sessionsDropped"], 1, "{revoked}");
    fake.publish(CHANNEL, DURING).await;
    events_log
        .wait_until("a new session", EVENT_TIMEOUT, |events| {
            events.contains(&Event::TokenRefreshed { initial: false })
                && events.iter().any(|e| {
                    matches!(
                        e,
                        Event::Handshaken {
                            rehandshake: true,
                            ..
                        }
                    )
                })
        })
        .await;
    fake.publish(CHANNEL, AFTER).await;
    received
        .wait_until("every event", EVENT_TIMEOUT, |s| {
            (1..=total as u64).all(|n| s.contains(&n))
        })
        .await;

    let seen = received.snapshot();
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for n in &seen {
        *counts.entry(*n).or_default() += 1;
    }
    let lost: Vec<u64> = (1..=total as u64)
        .filter(|n| !counts.contains_key(n))
        .collect();
    let duplicated: Vec<u64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| *n)
        .collect();
    println!(
        "published {total}, received {}, lost {} {lost:?}, duplicated {} {duplicated:?}",
        seen.len(),
        lost.len(),
        duplicated.len()
    );
    assert!(lost.is_empty(), "lost events: {lost:?}");

    let stats = fake.stats().await;
    assert_eq!(stats["tokensIssued"], 2, "{stats}");
    assert_eq!(stats["handshakes"], 2, "{stats}");
    assert_eq!(stats["connectsUnauthorized"], 1, "{stats}");
    // The new session resumed after the last event processed before the revocation.
    let subscribes = stats["subscribes"].as_array().unwrap();
    assert_eq!(subscribes.len(), 2, "{stats}");
    assert_eq!(subscribes[1]["replay"][CHANNEL], json!(position), "{stats}");
    let log = events_log.snapshot();
    assert!(
        log.iter().any(|e| matches!(
            e,
            Event::AuthenticationFailed { attempt: 1, reason, .. } if reason.contains("401")
        )),
        "{log:#?}"
    );
    client.disconnect().await;
    reader.abort();
    watcher.abort();
}

/// A token endpoint that refuses the client's credentials (`invalid_client`) stops the
/// client at once: one token request, no handshake, a terminal error naming the reason and
/// not the secret.
#[tokio::test]
async fn refused_credentials_end_the_client_with_a_terminal_error() {
    let fake = SalesforceFake::start_async(&[]).await;
    let (client, mut events) = start(
        options(&fake, oauth(&fake, client_credentials("wrong-s3cret"))),
        vec![],
    );
    let reason = stopped(&mut events).await;
    match &reason {
        StopReason::AuthenticationFailed { reason } => {
            assert!(reason.contains("invalid_client"), "{reason}");
            assert!(!reason.contains("s3cret"), "{reason}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    assert!(events.recv().await.is_none(), "nothing after Stopped");
    assert!(client.is_closed());
    let stats = fake.stats().await;
    assert_eq!(stats["tokenRequests"]["client_credentials"], 1, "{stats}");
    assert_eq!(stats["tokenRequestsFailed"], 1, "{stats}");
    assert_eq!(stats["handshakes"], 0, "{stats}");
    assert_eq!(stats["handshakesDenied"], 0, "{stats}");
}

/// A server that refuses every token gets exactly `max_auth_attempts` handshakes, spaced by
/// the backoff, and then the client stops: no handshake storm. (A static token the fake
/// does not know stands for tokens the server keeps refusing.)
#[tokio::test]
async fn a_server_refusing_every_token_gets_max_auth_attempts_handshakes_then_the_client_stops() {
    const ATTEMPTS: u32 = 3;
    let fake = SalesforceFake::start_async(&[]).await;
    let mut options = options(&fake, Arc::new(StaticToken::new("not-a-known-token")));
    options.max_auth_attempts = ATTEMPTS;
    let (_client, mut events) = start(options, vec![]);
    let mut refusals = Vec::new();
    let reason = loop {
        match tokio::time::timeout(EVENT_TIMEOUT, events.recv()).await {
            Ok(Some(Event::AuthenticationFailed {
                attempt, retry_in, ..
            })) => refusals.push((attempt, retry_in)),
            Ok(Some(Event::Stopped { reason })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("the client did not stop: {other:?}; refusals {refusals:?}"),
        }
    };
    let attempts: Vec<u32> = refusals.iter().map(|(a, _)| *a).collect();
    assert_eq!(attempts, [1, 2], "{refusals:?}");
    assert!(
        refusals[1].1 > refusals[0].1,
        "the waits grow: {refusals:?}"
    );
    match reason {
        StopReason::AuthenticationFailed { reason } => {
            assert!(reason.contains("403::Handshake denied"), "{reason}");
            assert!(reason.contains("401::Authentication invalid"), "{reason}");
        }
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    let stats = fake.stats().await;
    assert_eq!(stats["handshakesDenied"], ATTEMPTS, "{stats}");
    assert_eq!(stats["handshakes"], 0, "{stats}");
}

/// A token endpoint that is briefly unavailable (HTTP 503) is retried with backoff until it
/// answers; the client then works normally.
#[tokio::test]
async fn an_unavailable_token_endpoint_is_retried_until_it_answers() {
    let fake = SalesforceFake::start_async(&[]).await;
    fake.control("fail-token-requests", json!({"count": 2, "status": 503}))
        .await;
    let (client, mut events) = start(
        options(&fake, oauth(&fake, client_credentials(CLIENT_SECRET))),
        vec![],
    );
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    let mut failures = Vec::new();
    loop {
        match tokio::time::timeout(EVENT_TIMEOUT, events.recv()).await {
            Ok(Some(Event::AuthenticationFailed {
                attempt, reason, ..
            })) => {
                assert!(reason.contains("503"), "{reason}");
                failures.push(attempt);
            }
            Ok(Some(Event::SubscriptionConfirmed { .. })) => break,
            Ok(Some(Event::Stopped { reason })) => panic!("stopped: {reason}"),
            Ok(Some(_)) => {}
            other => panic!("no confirmation: {other:?}"),
        }
    }
    assert_eq!(failures, [1, 2]);
    fake.publish(CHANNEL, 1).await;
    assert_eq!(seq(&next_message(&mut sub, "an event").await), 1);
    let stats = fake.stats().await;
    assert_eq!(stats["tokenRequests"]["client_credentials"], 3, "{stats}");
    assert_eq!(stats["tokensIssued"], 1, "{stats}");
    client.disconnect().await;
}

/// Long channel names whose subscribes (with their `ext.replay` maps) and publishes add up to
/// far more than 32768 bytes per batch. With the cap every request stays under it: every
/// subscription is confirmed, every publish reaches the server (which refuses client
/// publishes with `403::Publish not allowed`, so a verdict from the server proves the
/// message got there) and the fake never answers 413. The same load without the cap is
/// shown to hit 413, so the load really needs splitting.
#[tokio::test]
async fn requests_are_split_under_the_32_kib_cap() {
    const CHANNELS: usize = 100;
    const PUBLISHES: usize = 80;
    let channels: Vec<String> = (0..CHANNELS)
        .map(|i| format!("/event/{}_{i:03}__e", "Long_Platform_Event_Name".repeat(8)))
        .collect();
    let patterns: Vec<&str> = channels.iter().map(String::as_str).collect();

    for cap in [0, SF_CAP] {
        let fake = SalesforceFake::start_async(&[]).await;
        let mut options = options(&fake, oauth(&fake, client_credentials(CLIENT_SECRET)));
        options.max_request_bytes = cap;
        let replay = Arc::new(ReplayExtension::new());
        let (client, mut events) = start(options, vec![replay]);
        wait_event(&mut events, "the handshake", |e| {
            matches!(e, Event::Handshaken { .. })
        })
        .await;
        let _sub = client.subscribe_all(&patterns).await.unwrap();
        if cap == 0 {
            // Without the cap the first subscribe batch is refused with 413.
            wait_event(
                &mut events,
                "a refused subscribe",
                |e| matches!(e, Event::SubscriptionFailed { error, .. } if error.contains("413")),
            )
            .await;
            let stats = fake.stats().await;
            assert!(stats["rejectedTooLarge"].as_u64() > Some(0), "{stats}");
            client.disconnect().await;
            continue;
        }
        let mut pending: Vec<&str> = patterns.clone();
        while !pending.is_empty() {
            match wait_event(&mut events, "confirmations", |e| {
                matches!(
                    e,
                    Event::SubscriptionConfirmed { .. } | Event::SubscriptionFailed { .. }
                )
            })
            .await
            {
                Event::SubscriptionConfirmed { subscription } => {
                    pending.retain(|p| *p != subscription)
                }
                other => panic!("a subscription failed: {other:?}"),
            }
        }
        // Many publishes queued at once leave in few, full requests.
        let mut verdicts = Vec::new();
        for i in 0..PUBLISHES {
            let data = json!({ "n": i, "text": "p".repeat(1000) });
            verdicts.push(
                client
                    .publish_queued(&channels[0], data, None)
                    .await
                    .unwrap(),
            );
        }
        for verdict in verdicts {
            match verdict.await {
                Err(PublishError::Refused(e)) => assert_eq!(e.raw, "403::Publish not allowed"),
                other => panic!("expected the server's refusal, got {other:?}"),
            }
        }
        let stats = fake.stats().await;
        assert_eq!(stats["rejectedTooLarge"], 0, "{stats}");
        assert_eq!(
            stats["subscribes"].as_array().map(Vec::len),
            Some(CHANNELS),
            "each subscription sent once"
        );
        client.disconnect().await;
    }
}

/// A message larger than the cap on its own is refused by the client without being sent;
/// the client keeps working.
#[tokio::test]
async fn a_message_over_the_cap_is_refused_locally_with_a_clear_error() {
    let fake = SalesforceFake::start_async(&[]).await;
    let (client, mut events) = start(
        options(&fake, oauth(&fake, client_credentials(CLIENT_SECRET))),
        vec![],
    );
    let mut sub = client.subscribe(CHANNEL).await.unwrap();
    confirmed(&mut events, CHANNEL).await;
    let error = client
        .publish(CHANNEL, json!({ "text": "x".repeat(SF_CAP) }))
        .await
        .unwrap_err();
    match &error {
        PublishError::TooLarge { size, cap } => {
            assert!(*size > SF_CAP, "{error}");
            assert_eq!(*cap, SF_CAP);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(
        error.to_string().contains("32768-byte request cap"),
        "{error}"
    );
    // Still working: a normal publish reaches the server, events arrive.
    let small = client.publish(CHANNEL, json!({"n": 1})).await.unwrap_err();
    assert!(matches!(small, PublishError::Refused(_)), "{small:?}");
    fake.publish(CHANNEL, 1).await;
    assert_eq!(seq(&next_message(&mut sub, "an event").await), 1);
    let stats = fake.stats().await;
    assert_eq!(stats["rejectedTooLarge"], 0, "{stats}");
    client.disconnect().await;
}

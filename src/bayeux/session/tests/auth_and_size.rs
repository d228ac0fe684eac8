//! Tokens (fetch before the handshake, replace a refused one, stop after bounded refusals)
//! and the request size cap (batches split, oversized messages refused unsent).

use super::*;

const MAX_AUTH: u32 = 3;

fn with_tokens() -> Harness {
    Harness::with(SessionOptions {
        uses_tokens: true,
        max_auth_attempts: MAX_AUTH,
        ..options()
    })
}

fn with_cap(cap: usize) -> Harness {
    Harness::with(SessionOptions {
        max_request_bytes: cap,
        max_queued: 1000,
        ..options()
    })
}

impl Harness {
    /// Removes the token requests seen so far and returns how many there were.
    fn token_requests(&mut self) -> usize {
        self.collect();
        let before = self.out.len();
        self.out.retain(|o| *o != Output::FetchToken);
        before - self.out.len()
    }

    fn token(&mut self, result: Result<(), TokenError>) {
        self.session.on_token(result, self.now);
    }

    /// Answers the pending handshake with Salesforce's refusal of a bad token.
    fn deny_handshake(&mut self) {
        let hs = self.sent(Lane::Other);
        assert_eq!(hs[0].channel, META_HANDSHAKE);
        self.reply(
            Lane::Other,
            vec![
                json!({"channel":"/meta/handshake","id":hs[0].id,"successful":false,
                "error":"403::Handshake denied","advice":{"reconnect":"none"},
                "ext":{"sfdc":{"failureReason":"401::Authentication invalid"}}}),
            ],
        );
    }

    fn stopped_reason(&mut self) -> Option<StopReason> {
        self.events().into_iter().find_map(|e| match e {
            Event::Stopped { reason } => Some(reason),
            _ => None,
        })
    }
}

fn auth_failed(events: &[Event]) -> Vec<(u32, Duration)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::AuthenticationFailed {
                attempt, retry_in, ..
            } => Some((*attempt, *retry_in)),
            _ => None,
        })
        .collect()
}

#[test]
fn with_a_token_source_the_handshake_waits_for_the_first_token() {
    let mut h = with_tokens();
    assert_eq!(h.token_requests(), 1);
    assert!(h.nothing_sent(Lane::Other), "no handshake before a token");
    h.advance(SEC * 10);
    assert_eq!(h.token_requests(), 0, "one fetch at a time");
    h.token(Ok(()));
    assert_eq!(h.events(), vec![Event::TokenRefreshed { initial: true }]);
    assert_eq!(h.sent(Lane::Other)[0].channel, META_HANDSHAKE);
}

#[test]
fn a_denied_handshake_fetches_a_new_token_after_a_backoff_and_stops_after_the_bound() {
    let mut h = with_tokens();
    let mut fetches = h.token_requests();
    for attempt in 1..MAX_AUTH {
        h.token(Ok(()));
        h.deny_handshake();
        let events = h.events();
        assert_eq!(
            auth_failed(&events),
            vec![(attempt, SEC * attempt)],
            "{events:#?}"
        );
        assert!(h.session.next_deadline().is_some());
        // Nothing is fetched or sent before the backoff has passed: no storm.
        h.advance(SEC * attempt - Duration::from_millis(1));
        assert_eq!(h.token_requests(), 0);
        assert!(h.nothing_sent(Lane::Other));
        h.advance(Duration::from_millis(1));
        fetches += h.token_requests();
        assert_eq!(fetches, attempt as usize + 1);
    }
    h.token(Ok(()));
    h.deny_handshake();
    match h.stopped_reason() {
        Some(StopReason::AuthenticationFailed { reason }) => {
            assert!(reason.contains("403::Handshake denied"), "{reason}");
            assert!(reason.contains("401::Authentication invalid"), "{reason}");
            assert!(reason.contains("3 consecutive"), "{reason}");
        }
        other => panic!("expected an authentication stop, got {other:?}"),
    }
    assert!(h.session.is_stopped());
    assert_eq!(fetches, MAX_AUTH as usize);
}

#[test]
fn an_http_401_on_the_long_poll_replaces_the_token_and_resubscribes_in_a_new_session() {
    let mut h = with_tokens();
    h.token_requests();
    h.token(Ok(()));
    h.session.subscribe(&pattern("/event/A"), h.now);
    h.connected("c1");
    let subs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/subscribe","id":subs[0].id,"successful":true,"subscription":"/event/A"})]);
    let _poll = h.sent(Lane::Connect);
    h.session.on_response(
        Lane::Connect,
        Err(TransportError::Status { status: 401 }),
        h.now,
    );
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. }))
    );
    assert_eq!(auth_failed(&events), vec![(1, SEC)]);
    assert!(h.session.client_id().is_none(), "the session is dropped");
    h.advance(SEC);
    assert_eq!(h.token_requests(), 1);
    h.token(Ok(()));
    assert_eq!(h.events(), vec![Event::TokenRefreshed { initial: false }]);
    h.accept_handshake("c2", json!({}));
    let resubscribe = h.sent(Lane::Other);
    assert_eq!(resubscribe[0].channel, META_SUBSCRIBE);
    assert_eq!(resubscribe[0].client_id.as_deref(), Some("c2"));
}

#[test]
fn a_working_connect_resets_the_refusal_count() {
    let mut h = with_tokens();
    h.token_requests();
    for round in 0..(MAX_AUTH * 2) {
        h.token(Ok(()));
        h.connected(&format!("c{round}"));
        let _poll = h.sent(Lane::Connect);
        h.reply(
            Lane::Connect,
            vec![
                json!({"channel":"/meta/connect","id":_poll[0].id,"successful":false,
                "error":"401::Authentication invalid","advice":{"reconnect":"none"}}),
            ],
        );
        let events = h.events();
        assert_eq!(auth_failed(&events), vec![(1, SEC)], "round {round}");
        h.advance(SEC);
        assert_eq!(h.token_requests(), 1);
    }
    assert!(!h.session.is_stopped());
}

#[test]
fn an_unavailable_token_endpoint_is_retried_with_capped_backoff_and_a_refusal_stops() {
    let mut h = with_tokens();
    h.token_requests();
    let mut waits = Vec::new();
    for _ in 0..40 {
        h.token(Err(TokenError::Unavailable("HTTP 503".into())));
        let events = h.events();
        let failed = auth_failed(&events);
        assert_eq!(failed.len(), 1, "{events:#?}");
        waits.push(failed[0].1);
        h.advance(failed[0].1);
        assert_eq!(h.token_requests(), 1);
    }
    assert_eq!(waits[0], SEC);
    assert_eq!(waits[1], SEC * 2);
    assert_eq!(
        *waits.last().unwrap(),
        SEC * 30,
        "capped at the backoff max"
    );
    assert!(!h.session.is_stopped());
    h.token(Err(TokenError::Refused("HTTP 400 invalid_client".into())));
    assert_eq!(
        h.stopped_reason(),
        Some(StopReason::AuthenticationFailed {
            reason: "the token endpoint refused the credentials: HTTP 400 invalid_client".into()
        })
    );
}

#[test]
fn without_a_token_source_a_denied_handshake_still_stops_at_once() {
    let mut h = Harness::new();
    h.deny_handshake();
    assert!(matches!(
        h.stopped_reason(),
        Some(StopReason::ServerRefused { .. })
    ));
    assert_eq!(h.token_requests(), 0);
}

#[test]
fn publishes_of_a_request_refused_with_http_401_go_again_in_the_next_session() {
    let mut h = with_tokens();
    h.token_requests();
    h.token(Ok(()));
    h.connected("c1");
    let id = h.session.publish("/a", json!(1), None, h.now).unwrap();
    let batch = h.sent(Lane::Other);
    assert_eq!(batch[0].id.as_deref(), Some(id.as_str()));
    h.session.on_response(
        Lane::Other,
        Err(TransportError::Status { status: 401 }),
        h.now,
    );
    assert!(h.publish_results().is_empty(), "not failed: requeued");
    h.advance(SEC);
    h.token_requests();
    h.token(Ok(()));
    h.accept_handshake("c2", json!({}));
    let again = h.sent(Lane::Other);
    assert_eq!(again[0].id.as_deref(), Some(id.as_str()));
    assert_eq!(again[0].client_id.as_deref(), Some("c2"));
}

// ----- request size cap ---------------------------------------------------------------

fn body_len(batch: &[Message]) -> usize {
    serde_json::to_vec(batch).unwrap().len()
}

#[test]
fn subscriptions_are_split_into_requests_under_the_cap() {
    const CAP: usize = 1000;
    let mut h = with_cap(CAP);
    let patterns: Vec<String> = (0..40)
        .map(|i| format!("/event/Channel_{i:03}__e"))
        .collect();
    for p in &patterns {
        h.session.subscribe(&pattern(p), h.now);
    }
    h.accept_handshake("c1", json!({}));
    let mut sent = Vec::new();
    let mut requests = 0;
    while !h.nothing_sent(Lane::Other) {
        let batch = h.sent(Lane::Other);
        requests += 1;
        assert!(
            body_len(&batch) <= CAP,
            "request of {} bytes",
            body_len(&batch)
        );
        let replies = batch
            .iter()
            .map(|m| json!({"channel":"/meta/subscribe","id":m.id,"successful":true,"subscription":m.subscription}))
            .collect();
        sent.extend(
            batch
                .iter()
                .filter_map(|m| m.subscriptions().into_iter().next()),
        );
        h.reply(Lane::Other, replies);
    }
    let mut expected = patterns.clone();
    expected.sort();
    sent.sort();
    assert_eq!(sent, expected, "every subscription sent once");
    assert!(requests > 1, "one request would be {} bytes", 40 * 80);
}

#[test]
fn queued_publishes_are_split_in_order_and_each_request_fills_up_to_the_cap() {
    const CAP: usize = 2048;
    let mut h = with_cap(CAP);
    let ids: Vec<String> = (0..30)
        .map(|i| {
            h.session
                .publish("/a", json!({"n": i, "pad": "x".repeat(200)}), None, h.now)
                .unwrap()
        })
        .collect();
    h.accept_handshake("c1", json!({}));
    let mut order = Vec::new();
    while !h.nothing_sent(Lane::Other) {
        let batch = h.sent(Lane::Other);
        let len = body_len(&batch);
        assert!(len <= CAP, "request of {len} bytes");
        // Not split needlessly: one more message (~260 bytes) would not have fitted.
        if order.len() + batch.len() < ids.len() {
            assert!(len + 240 > CAP, "request of {len} bytes left room");
        }
        order.extend(batch.iter().filter_map(|m| m.id.clone()));
        let replies = batch
            .iter()
            .map(|m| json!({"channel":"/a","id":m.id,"successful":true}))
            .collect();
        h.reply(Lane::Other, replies);
    }
    assert_eq!(order, ids);
    assert_eq!(h.publish_results().len(), ids.len());
}

#[test]
fn a_message_larger_than_the_cap_alone_fails_unsent_and_the_rest_go() {
    const CAP: usize = 1024;
    let mut h = with_cap(CAP);
    let small = h.session.publish("/a", json!(1), None, h.now).unwrap();
    let big = h
        .session
        .publish("/a", json!("x".repeat(CAP)), None, h.now)
        .unwrap();
    let after = h.session.publish("/a", json!(2), None, h.now).unwrap();
    h.accept_handshake("c1", json!({}));
    let batch = h.sent(Lane::Other);
    let ids: Vec<_> = batch.iter().filter_map(|m| m.id.clone()).collect();
    assert_eq!(ids, vec![small, after]);
    let results = h.publish_results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].0, big);
    match &results[0].1 {
        Err(PublishError::TooLarge { size, cap }) => {
            assert!(*size > CAP);
            assert_eq!(*cap, CAP);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn the_cap_counts_what_extensions_add() {
    #[derive(Debug)]
    struct Padding;
    impl Extension for Padding {
        fn outgoing(&self, message: &mut Message) {
            if message.channel == "/a" {
                let ext = message.ext.get_or_insert_with(Default::default);
                ext.insert("pad".into(), json!("p".repeat(300)));
            }
        }
    }
    const CAP: usize = 1000;
    let mut h = Harness::with(SessionOptions {
        max_request_bytes: CAP,
        extensions: vec![Arc::new(Padding)],
        ..options()
    });
    for i in 0..3 {
        h.session.publish("/a", json!(i), None, h.now).unwrap();
    }
    h.accept_handshake("c1", json!({}));
    let first = h.sent(Lane::Other);
    assert!(first.iter().all(|m| m.ext.is_some()), "hooks ran");
    assert_eq!(first.len(), 2, "three padded messages exceed the cap");
    assert!(body_len(&first) <= CAP);
}

#[test]
fn without_a_cap_everything_goes_in_one_request() {
    let mut h = Harness::with(SessionOptions {
        max_queued: 1000,
        ..options()
    });
    for i in 0..50 {
        h.session
            .publish("/a", json!({"n": i, "pad": "x".repeat(1000)}), None, h.now)
            .unwrap();
    }
    h.accept_handshake("c1", json!({}));
    assert_eq!(h.sent(Lane::Other).len(), 50);
}

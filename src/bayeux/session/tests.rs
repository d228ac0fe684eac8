//! Behaviour of the session state machine, driven by hand with a fake clock.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::bayeux::channel::{ChannelPattern, META_DISCONNECT, META_HANDSHAKE, META_SUBSCRIBE};
use crate::bayeux::error::TokenError;
use crate::bayeux::event::Next;

const SEC: Duration = Duration::from_secs(1);

fn options() -> SessionOptions {
    SessionOptions {
        backoff: BackoffOptions {
            jitter: 0.0,
            ..BackoffOptions::default()
        },
        max_queued: 3,
        seed: Some(7),
        ..SessionOptions::default()
    }
}

struct Harness {
    session: Session,
    now: Instant,
    /// Outputs not yet looked at.
    out: Vec<Output>,
}

fn msg(v: Value) -> Message {
    serde_json::from_value(v).unwrap()
}

impl Harness {
    fn new() -> Self {
        Self::with(options())
    }

    fn with(options: SessionOptions) -> Self {
        let now = Instant::now();
        let mut h = Harness {
            session: Session::new(options, now),
            now,
            out: Vec::new(),
        };
        h.collect();
        h
    }

    fn collect(&mut self) {
        while let Some(o) = self.session.poll_output() {
            self.out.push(o);
        }
    }

    /// Removes and returns the one batch sent on `lane`; panics if there is none.
    fn sent(&mut self, lane: Lane) -> Vec<Message> {
        self.collect();
        let pos = self
            .out
            .iter()
            .position(|o| matches!(o, Output::Send { lane: l, .. } if *l == lane))
            .unwrap_or_else(|| panic!("nothing sent on {lane:?}; outputs: {:#?}", self.out));
        match self.out.remove(pos) {
            Output::Send { messages, .. } => messages,
            _ => unreachable!(),
        }
    }

    fn nothing_sent(&mut self, lane: Lane) -> bool {
        self.collect();
        !self
            .out
            .iter()
            .any(|o| matches!(o, Output::Send { lane: l, .. } if *l == lane))
    }

    fn events(&mut self) -> Vec<Event> {
        self.collect();
        let mut events = Vec::new();
        self.out.retain(|o| match o {
            Output::Event(e) => {
                events.push(e.clone());
                false
            }
            _ => true,
        });
        events
    }

    fn publish_results(&mut self) -> Vec<(String, Result<Message, PublishError>)> {
        self.collect();
        let mut done = Vec::new();
        self.out.retain(|o| match o {
            Output::PublishDone { id, result } => {
                done.push((id.clone(), result.clone()));
                false
            }
            _ => true,
        });
        done
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.session.on_timer(self.now);
    }

    fn reply(&mut self, lane: Lane, replies: Vec<Value>) {
        let batch = replies.into_iter().map(msg).collect();
        self.session.on_response(lane, Ok(batch), self.now);
    }

    fn fail(&mut self, lane: Lane) {
        self.session.on_response(
            lane,
            Err(TransportError::Io("connection refused".into())),
            self.now,
        );
    }

    /// Answers the pending handshake successfully.
    fn accept_handshake(&mut self, client_id: &str, advice: Value) {
        let hs = self.sent(Lane::Other);
        assert_eq!(hs.len(), 1, "the handshake travels alone");
        assert_eq!(hs[0].channel, META_HANDSHAKE);
        self.reply(
            Lane::Other,
            vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":client_id,
                        "version":"1.0","supportedConnectionTypes":["long-polling","websocket"],"advice":advice})],
        );
    }

    /// Answers the outstanding connect.
    fn answer_connect(&mut self, extra: Value) -> Message {
        let c = self.sent(Lane::Connect);
        let mut reply = json!({"channel":"/meta/connect","id":c[0].id,"successful":true});
        if let (Some(r), Some(e)) = (reply.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                r.insert(k.clone(), v.clone());
            }
        }
        self.reply(Lane::Connect, vec![reply]);
        c.into_iter().next().unwrap()
    }

    fn connected(&mut self, client_id: &str) {
        self.accept_handshake(
            client_id,
            json!({"reconnect":"retry","interval":0,"timeout":30000}),
        );
        self.answer_connect(json!({}));
        self.events();
    }
}

fn pattern(p: &str) -> ChannelPattern {
    ChannelPattern::parse(p).unwrap()
}

#[test]
fn first_request_is_a_lone_handshake_with_version_and_transports() {
    let mut h = Harness::new();
    let hs = h.sent(Lane::Other);
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0].version.as_deref(), Some("1.0"));
    assert_eq!(hs[0].minimum_version.as_deref(), Some("1.0"));
    assert_eq!(
        hs[0].supported_connection_types,
        Some(vec!["long-polling".to_owned()])
    );
    assert!(hs[0].client_id.is_none());
}

#[test]
fn first_connect_after_handshake_asks_for_an_immediate_answer_and_later_ones_do_not() {
    let mut h = Harness::new();
    h.accept_handshake(
        "c1",
        json!({"reconnect":"retry","interval":0,"timeout":30000}),
    );
    let first = h.answer_connect(json!({}));
    assert_eq!(first.advice, Some(json!({"timeout":0})));
    assert_eq!(first.client_id.as_deref(), Some("c1"));
    assert_eq!(first.connection_type.as_deref(), Some("long-polling"));
    let second = h.answer_connect(json!({}));
    assert_eq!(second.advice, None);
    assert_eq!(
        h.events(),
        vec![
            Event::Handshaken {
                client_id: "c1".into(),
                connection_type: "long-polling".into(),
                rehandshake: false
            },
            Event::Connected,
        ]
    );
}

#[test]
fn only_one_connect_is_ever_outstanding() {
    let mut h = Harness::new();
    h.accept_handshake("c1", json!({"interval":0}));
    let _c = h.sent(Lane::Connect);
    for _ in 0..5 {
        h.advance(SEC);
        let _ = h.session.publish("/a", json!(1), None, h.now);
        assert!(h.nothing_sent(Lane::Connect));
    }
}

#[test]
fn next_connect_waits_for_the_advised_interval() {
    let mut h = Harness::new();
    h.accept_handshake("c1", json!({"interval":0}));
    h.answer_connect(json!({"advice":{"interval":500}}));
    assert!(h.nothing_sent(Lane::Connect));
    assert_eq!(
        h.session.next_deadline(),
        Some(h.now + Duration::from_millis(500))
    );
    h.advance(Duration::from_millis(499));
    assert!(h.nothing_sent(Lane::Connect));
    h.advance(Duration::from_millis(1));
    assert_eq!(h.sent(Lane::Connect).len(), 1);
}

#[test]
fn subscriptions_are_sent_after_the_handshake_in_one_batch_and_each_reply_is_checked() {
    let mut h = Harness::new();
    h.session.subscribe(&pattern("/a/*"), h.now);
    h.session.subscribe(&pattern("/b/**"), h.now);
    h.accept_handshake("c1", json!({}));
    let batch = h.sent(Lane::Other);
    assert_eq!(batch.len(), 2);
    assert!(
        batch
            .iter()
            .all(|m| m.channel == META_SUBSCRIBE && m.client_id.as_deref() == Some("c1"))
    );
    h.reply(Lane::Other, vec![
        json!({"channel":"/meta/subscribe","id":batch[0].id,"successful":true,"subscription":"/a/*"}),
        json!({"channel":"/meta/subscribe","id":batch[1].id,"successful":false,"error":"403::subscribe_denied","subscription":"/b/**"}),
    ]);
    let events = h.events();
    assert!(events.contains(&Event::SubscriptionConfirmed {
        subscription: "/a/*".into()
    }));
    assert!(events.contains(&Event::SubscriptionFailed {
        subscription: "/b/**".into(),
        error: "403::subscribe_denied".into(),
        attempt: 1,
        retry_in: SEC,
    }));
    // The refused one is retried after its backoff, alone.
    h.advance(SEC);
    let retry = h.sent(Lane::Other);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].subscriptions(), vec!["/b/**"]);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/subscribe","id":retry[0].id,"successful":false,"error":"403::subscribe_denied"})]);
    let events = h.events();
    assert!(
        matches!(&events[..], [Event::SubscriptionFailed { attempt: 2, retry_in, .. }] if *retry_in == 2 * SEC)
    );
}

#[test]
fn unknown_session_on_connect_rehandshakes_at_once_and_resubscribes_everything() {
    for error in [
        "402::session_unknown",
        "401:c1:Unknown client",
        "403::Unknown client",
    ] {
        let mut h = Harness::new();
        h.session.subscribe(&pattern("/a"), h.now);
        h.accept_handshake("c1", json!({"interval":0}));
        let sub = h.sent(Lane::Other);
        h.reply(
            Lane::Other,
            vec![json!({"channel":"/meta/subscribe","id":sub[0].id,"successful":true})],
        );
        h.answer_connect(json!({}));
        h.events();
        // Failure without advice: the error code decides.
        h.answer_connect(json!({"successful":false,"error":error}));
        let events = h.events();
        assert!(events.iter().any(|e| matches!(e, Event::ConnectFailed { next: Next::Handshake(d), .. } if d.is_zero())), "{error}: {events:?}");
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::Disconnected { .. }))
        );
        h.accept_handshake("c2", json!({"interval":0}));
        assert!(matches!(
            h.events()[..],
            [Event::Handshaken {
                rehandshake: true,
                ..
            }]
        ));
        let resub = h.sent(Lane::Other);
        assert_eq!(resub[0].subscriptions(), vec!["/a"]);
        assert_eq!(resub[0].client_id.as_deref(), Some("c2"));
    }
}

#[test]
fn a_lost_session_is_reported_with_its_last_connect_and_confirmed_subscriptions() {
    let mut h = Harness::new();
    h.session.subscribe(&pattern("/a"), h.now);
    h.session.subscribe(&pattern("/service/x"), h.now);
    h.accept_handshake("c1", json!({"interval":0}));
    let sub = h.sent(Lane::Other);
    h.reply(
        Lane::Other,
        vec![json!({"channel":"/meta/subscribe","id":sub[0].id,"successful":true})],
    );
    h.answer_connect(json!({}));
    let connected_at = h.now;
    h.events();
    h.advance(Duration::from_secs(3));
    h.answer_connect(json!({"successful":false,"error":"402::session_unknown"}));
    let events = h.events();
    let lost: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::SessionLost { .. }))
        .collect();
    assert_eq!(
        lost,
        vec![&Event::SessionLost {
            reason: "402::session_unknown".to_owned(),
            last_connected: Some(connected_at),
            subscriptions: vec!["/a".to_owned()],
        }],
        "{events:?}"
    );
    // A handshake that is refused before any session exists loses nothing.
    h.fail(Lane::Other);
    assert!(
        !h.events()
            .iter()
            .any(|e| matches!(e, Event::SessionLost { .. }))
    );
}

#[test]
fn advice_decides_before_the_error_code() {
    let mut h = Harness::new();
    h.connected("c1");
    // A code that looks like "unknown client" but advice says retry: retry it is.
    h.answer_connect(json!({"successful":false,"error":"402::session_unknown","advice":{"reconnect":"retry","interval":0}}));
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::ConnectFailed {
            next: Next::Retry(_),
            ..
        }
    )));
    // An unremarkable error with handshake advice: handshake.
    h.advance(SEC);
    h.answer_connect(
        json!({"successful":false,"error":"500::oops","advice":{"reconnect":"handshake"}}),
    );
    assert!(h.events().iter().any(|e| matches!(
        e,
        Event::ConnectFailed {
            next: Next::Handshake(_),
            ..
        }
    )));
}

#[test]
fn advice_is_reset_at_every_handshake() {
    let mut h = Harness::new();
    h.accept_handshake(
        "c1",
        json!({"reconnect":"retry","interval":5000,"timeout":1000}),
    );
    assert_eq!(h.session.advice().interval, Some(5000));
    h.answer_connect(json!({"successful":false,"error":"402::session_unknown","advice":{"reconnect":"handshake","interval":0}}));
    // No connect has worked yet, so this re-handshake backs off by one step.
    h.advance(SEC);
    // The new session's handshake reply carries no advice: nothing of the old one survives.
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c2","supportedConnectionTypes":["long-polling"]})]);
    assert_eq!(*h.session.advice(), Advice::default());
}

#[test]
fn reconnect_none_stops_and_fails_queued_publishes() {
    let mut h = Harness::new();
    h.connected("c1");
    let _c = h.sent(Lane::Connect);
    h.session.on_response(Lane::Connect, Ok(vec![]), h.now); // no reply: a failure, retried
    let id = h.session.publish("/a", json!(1), None, h.now).unwrap();
    h.events();
    h.advance(SEC);
    h.answer_connect(json!({"successful":false,"error":"401::Authentication invalid","advice":{"reconnect":"none"}}));
    let events = h.events();
    assert!(
        matches!(events.last(), Some(Event::Stopped { reason: StopReason::ServerRefused { error: Some(e) } }) if e == "401::Authentication invalid"),
        "{events:?}"
    );
    assert!(h.session.is_stopped());
    assert_eq!(
        h.session.stop_reason(),
        Some(&StopReason::ServerRefused {
            error: Some("401::Authentication invalid".into())
        })
    );
    assert_eq!(
        h.session.next_deadline(),
        None,
        "no retry of any kind after `none`"
    );
    assert!(matches!(&h.publish_results()[..], [(i, Err(PublishError::Closed))] if *i == id));
}

#[test]
fn refused_handshake_with_none_stops_without_retrying() {
    let mut h = Harness::new();
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":false,"error":"403::Handshake denied","advice":{"reconnect":"none"}})]);
    assert!(h.session.is_stopped());
    assert!(matches!(h.events()[..], [Event::Stopped { .. }]));
}

#[test]
fn failing_connects_back_off_linearly_with_the_interval_as_floor_and_reset_after_success() {
    let mut h = Harness::new();
    h.accept_handshake("c1", json!({"interval":2000,"timeout":30000}));
    h.answer_connect(json!({}));
    h.events();
    let mut waits = Vec::new();
    for _ in 0..4 {
        h.advance(Duration::from_secs(60));
        let _ = h.sent(Lane::Connect);
        h.fail(Lane::Connect);
        for e in h.events() {
            if let Event::ConnectFailed {
                next: Next::Retry(w),
                ..
            } = e
            {
                waits.push(w);
            }
        }
    }
    assert_eq!(waits, vec![3 * SEC, 4 * SEC, 5 * SEC, 6 * SEC]);
    h.advance(Duration::from_secs(60));
    let retry = h.answer_connect(json!({}));
    assert_eq!(
        retry.advice,
        Some(json!({"timeout":0})),
        "first connect after a failure asks timeout 0"
    );
    assert_eq!(h.events(), vec![Event::Connected]);
    h.advance(Duration::from_secs(3));
    let _ = h.sent(Lane::Connect);
    h.fail(Lane::Connect);
    assert!(h.events().iter().any(|e| *e
        == Event::ConnectFailed {
            reason: "request failed: connection refused".into(),
            attempt: 1,
            next: Next::Retry(3 * SEC)
        }));
}

#[test]
fn an_outage_longer_than_max_interval_switches_to_handshake() {
    let mut h = Harness::new();
    h.accept_handshake(
        "c1",
        json!({"interval":0,"timeout":1000,"maxInterval":2000}),
    );
    h.answer_connect(json!({}));
    h.events();
    let mut next = Vec::new();
    for _ in 0..3 {
        let _ = h.sent(Lane::Connect);
        h.fail(Lane::Connect);
        for e in h.events() {
            if let Event::ConnectFailed { next: n, .. } = e {
                next.push(n);
            }
        }
        h.advance(Duration::from_secs(10));
        if !h.nothing_sent(Lane::Other) {
            break;
        }
    }
    // 1 s + 2 s waits stay under timeout + interval + maxInterval = 3 s; the third would not.
    assert_eq!(next[0], Next::Retry(SEC));
    assert!(matches!(next.last(), Some(Next::Handshake(_))), "{next:?}");
    assert_eq!(h.sent(Lane::Other)[0].channel, META_HANDSHAKE);
}

#[test]
fn a_server_that_forgets_every_session_does_not_get_a_handshake_storm() {
    let mut h = Harness::new();
    let mut waits = Vec::new();
    for i in 0..4 {
        h.accept_handshake(&format!("c{i}"), json!({"interval":0}));
        h.answer_connect(json!({"successful":false,"error":"402::session_unknown","advice":{"reconnect":"handshake","interval":0}}));
        for e in h.events() {
            if let Event::ConnectFailed {
                next: Next::Handshake(w),
                ..
            } = e
            {
                waits.push(w);
            }
        }
        h.advance(Duration::from_secs(60));
    }
    assert_eq!(waits, vec![SEC, 2 * SEC, 3 * SEC, 4 * SEC]);
}

#[test]
fn the_first_rehandshake_after_a_working_session_is_immediate() {
    let mut h = Harness::new();
    h.connected("c1");
    h.answer_connect(json!({"successful":false,"error":"403::Unknown client","advice":{"reconnect":"handshake","interval":0}}));
    assert!(h.events().iter().any(
        |e| matches!(e, Event::ConnectFailed { next: Next::Handshake(d), .. } if d.is_zero())
    ));
    assert_eq!(h.sent(Lane::Other)[0].channel, META_HANDSHAKE);
}

#[test]
fn failing_handshakes_back_off() {
    let mut h = Harness::new();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let _ = h.sent(Lane::Other);
        h.fail(Lane::Other);
        for e in h.events() {
            if let Event::HandshakeFailed { retry_in, .. } = e {
                waits.push(retry_in);
            }
        }
        assert!(
            h.nothing_sent(Lane::Other),
            "no handshake before the wait is over"
        );
        h.advance(Duration::from_secs(30));
    }
    assert_eq!(waits, vec![SEC, 2 * SEC, 3 * SEC]);
}

#[test]
fn publishes_wait_for_the_handshake_and_go_in_one_batch() {
    let mut h = Harness::new();
    let a = h.session.publish("/x", json!(1), None, h.now).unwrap();
    let b = h.session.publish("/y", json!(2), None, h.now).unwrap();
    h.accept_handshake("c1", json!({}));
    let batch = h.sent(Lane::Other);
    assert_eq!(
        batch
            .iter()
            .map(|m| m.id.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![a.clone(), b.clone()]
    );
    assert!(batch.iter().all(|m| m.client_id.as_deref() == Some("c1")));
    h.reply(
        Lane::Other,
        vec![
            json!({"channel":"/x","id":a,"successful":true}),
            json!({"channel":"/y","id":b,"successful":false,"error":"403::publish_denied"}),
        ],
    );
    let results = h.publish_results();
    assert!(results[0].1.is_ok());
    assert!(
        matches!(&results[1].1, Err(PublishError::Refused(e)) if e.raw == "403::publish_denied")
    );
}

#[test]
fn the_publish_queue_is_bounded() {
    let mut h = Harness::new();
    for _ in 0..3 {
        h.session.publish("/x", json!(1), None, h.now).unwrap();
    }
    assert_eq!(
        h.session.publish("/x", json!(1), None, h.now),
        Err(PublishError::QueueFull(3))
    );
}

#[test]
fn publishes_refused_for_an_unknown_session_are_resent_in_order_after_rehandshake() {
    let mut h = Harness::new();
    let a = h.session.publish("/x", json!(1), None, h.now).unwrap();
    let b = h.session.publish("/x", json!(2), None, h.now).unwrap();
    h.connected("c1");
    let batch = h.sent(Lane::Other);
    assert_eq!(batch.len(), 2);
    h.reply(
        Lane::Other,
        vec![
            json!({"channel":"/x","id":a,"successful":false,"error":"402::session_unknown"}),
            json!({"channel":"/x","id":b,"successful":false,"error":"402::session_unknown"}),
        ],
    );
    assert!(
        h.publish_results().is_empty(),
        "not failed: they will be resent"
    );
    h.accept_handshake("c2", json!({}));
    let again = h.sent(Lane::Other);
    assert_eq!(
        again
            .iter()
            .map(|m| m.id.clone().unwrap())
            .collect::<Vec<_>>(),
        vec![a.clone(), b]
    );
    assert!(again.iter().all(|m| m.client_id.as_deref() == Some("c2")));
    h.reply(
        Lane::Other,
        vec![json!({"channel":"/x","id":a,"successful":true})],
    );
    let results = h.publish_results();
    assert_eq!(
        results.len(),
        2,
        "one accepted, one unanswered: {results:?}"
    );
    assert!(results[0].1.is_ok());
    assert!(matches!(results[1].1, Err(PublishError::Transport(_))));
}

#[test]
fn a_failed_request_fails_its_publishes_as_outcome_unknown_and_retries_its_subscriptions() {
    let mut h = Harness::new();
    h.connected("c1");
    h.session.subscribe(&pattern("/s"), h.now);
    let _ = h.sent(Lane::Other);
    let id = h.session.publish("/x", json!(1), None, h.now).unwrap();
    h.fail(Lane::Other);
    let events = h.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::SubscriptionFailed { attempt: 1, .. }))
    );
    let batch = h.sent(Lane::Other);
    assert_eq!(
        batch[0].id.as_deref(),
        Some(id.as_str()),
        "the publish queued meanwhile goes next"
    );
}

#[test]
fn with_retry_publishes_a_failed_request_sends_its_publishes_again_first_after_a_backoff() {
    let mut h = Harness::with(SessionOptions {
        retry_publishes: true,
        ..options()
    });
    h.connected("c1");
    let a = h.session.publish("/x", json!(1), None, h.now).unwrap();
    let first = h.sent(Lane::Other);
    assert_eq!(first.len(), 1);
    // Queued behind the request in flight.
    let b = h.session.publish("/x", json!(2), None, h.now).unwrap();
    let c = h.session.publish("/x", json!(3), None, h.now).unwrap();
    h.fail(Lane::Other);
    assert!(h.publish_results().is_empty(), "not failed: they go again");
    assert!(
        h.nothing_sent(Lane::Other),
        "nothing goes out before the backoff"
    );
    let wait = h
        .session
        .next_deadline()
        .map(|t| t.saturating_duration_since(h.now));
    assert!(wait.is_some_and(|w| w > Duration::ZERO), "{wait:?}");
    h.advance(Duration::from_secs(60));
    let again = h.sent(Lane::Other);
    let ids: Vec<String> = again.iter().map(|m| m.id.clone().unwrap()).collect();
    assert_eq!(
        ids,
        vec![a.clone(), b.clone(), c.clone()],
        "in order, under their ids"
    );
    h.reply(
        Lane::Other,
        [a, b, c]
            .iter()
            .map(|id| json!({"channel":"/x","id":id,"successful":true}))
            .collect(),
    );
    let results = h.publish_results();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
}

/// The counts of subscriptions waiting to be sent or retried, which spare the session a
/// look through every subscription at each wake, follow every change of state.
#[test]
fn the_counts_of_waiting_subscriptions_follow_every_change() {
    let mut h = Harness::new();
    let check = |h: &Harness, wanted: usize, failed: usize| {
        assert_eq!(h.session.sub_counts, SubCounts::of(h.session.subs.values()));
        assert_eq!(h.session.sub_counts, SubCounts { wanted, failed });
    };
    h.session.subscribe(&pattern("/a"), h.now);
    h.session.subscribe(&pattern("/b"), h.now);
    h.session.subscribe(&pattern("/service/c"), h.now);
    check(&h, 2, 0);
    h.accept_handshake("c1", json!({}));
    check(&h, 0, 0);
    let batch = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![
        json!({"channel":"/meta/subscribe","id":batch[0].id,"successful":true,"subscription":"/a"}),
        json!({"channel":"/meta/subscribe","id":batch[1].id,"successful":false,"error":"403::denied","subscription":"/b"}),
    ]);
    check(&h, 0, 1);
    h.advance(SEC);
    check(&h, 0, 0);
    let retry = h.sent(Lane::Other);
    assert_eq!(
        retry[0].subscriptions(),
        vec!["/b"],
        "retried after its backoff"
    );
    h.fail(Lane::Other);
    check(&h, 0, 1);
    h.session.unsubscribe("/b", h.now);
    check(&h, 0, 0);
    h.session.subscribe(&pattern("/d"), h.now);
    let _ = h.sent(Lane::Other);
    check(&h, 0, 0);
}

#[test]
fn service_subscriptions_stay_local() {
    let mut h = Harness::new();
    h.connected("c1");
    h.session.subscribe(&pattern("/service/echo"), h.now);
    assert_eq!(
        h.events(),
        vec![Event::SubscriptionConfirmed {
            subscription: "/service/echo".into()
        }]
    );
    assert!(h.nothing_sent(Lane::Other));
}

#[test]
fn a_service_reply_with_data_resolves_the_publish_by_id() {
    let mut h = Harness::new();
    h.connected("c1");
    let id = h
        .session
        .publish("/service/echo", json!({"q":1}), None, h.now)
        .unwrap();
    let _ = h.sent(Lane::Other);
    h.reply(
        Lane::Other,
        vec![json!({"channel":"/service/echo","id":id,"data":{"a":2}})],
    );
    let results = h.publish_results();
    assert_eq!(
        results[0].1.as_ref().unwrap().data,
        Some(json!({"a":2}).into())
    );
}

#[test]
fn a_connect_response_is_read_as_its_outputs_are_taken() {
    let mut h = Harness::new();
    h.connected("c1");
    let c = h.sent(Lane::Connect);
    let mut batch: Vec<Value> = (0..1000)
        .map(|n| json!({"channel":"/a/b","data":{"n":n}}))
        .collect();
    batch.push(json!({"channel":"/meta/connect","id":c[0].id,"successful":true}));
    h.reply(Lane::Connect, batch);
    // One message is read per output taken: the queue never holds the response again.
    let mut seen = Vec::new();
    let mut next_connect = None;
    while let Some(output) = h.session.poll_output() {
        assert!(
            h.session.outputs.len() <= 1,
            "{} outputs queued at once",
            h.session.outputs.len()
        );
        match output {
            Output::Deliver(m) => {
                assert!(
                    next_connect.is_none(),
                    "the next connect went before a delivery"
                );
                seen.push(m.data_value().unwrap()["n"].as_u64().unwrap());
            }
            Output::Send {
                lane: Lane::Connect,
                messages,
            } => next_connect = Some(messages),
            _ => {}
        }
    }
    assert_eq!(
        seen,
        (0..1000).collect::<Vec<u64>>(),
        "in order, all of them"
    );
    assert!(
        next_connect.is_some(),
        "the next connect after the response"
    );
}

#[test]
fn any_other_input_reads_the_rest_of_a_pending_response_first() {
    let mut h = Harness::new();
    h.connected("c1");
    let c = h.sent(Lane::Connect);
    h.reply(
        Lane::Connect,
        vec![
            json!({"channel":"/a/b","data":1}),
            json!({"channel":"/a/b","data":2}),
            json!({"channel":"/meta/connect","id":c[0].id,"successful":true}),
        ],
    );
    assert!(matches!(h.session.poll_output(), Some(Output::Deliver(_))));
    // A publish now: the rest of the response takes effect before it, as if read at once.
    let id = h.session.publish("/x", json!(3), None, h.now).unwrap();
    let rest: Vec<Output> = std::iter::from_fn(|| h.session.poll_output()).collect();
    let delivered = rest
        .iter()
        .position(|o| matches!(o, Output::Deliver(m) if m.data_value() == Some(json!(2))))
        .expect("the second delivery");
    let connect = rest
        .iter()
        .position(|o| {
            matches!(
                o,
                Output::Send {
                    lane: Lane::Connect,
                    ..
                }
            )
        })
        .expect("the next connect");
    let publish = rest
        .iter()
        .position(|o| {
            matches!(o, Output::Send { lane: Lane::Other, messages }
                if messages.iter().any(|m| m.id.as_deref() == Some(id.as_str())))
        })
        .expect("the publish");
    assert!(delivered < connect && connect < publish, "{rest:#?}");
}

#[test]
fn deliveries_and_stray_replies_are_surfaced() {
    let mut h = Harness::new();
    h.connected("c1");
    let c = h.sent(Lane::Connect);
    h.reply(
        Lane::Connect,
        vec![
            json!({"channel":"/a/b","data":{"v":1}}),
            json!({"channel":"/meta/connect","id":"999","successful":true}),
            json!({"channel":"/x","id":"12345","successful":true}),
            json!({"channel":"/meta/connect","id":c[0].id,"successful":true}),
        ],
    );
    h.collect();
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::Deliver(m) if m.channel == "/a/b"))
    );
    let events = h.events();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Unrouted {
            reason: crate::bayeux::Unrouted::MismatchedConnect,
            ..
        }
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Unrouted {
            reason: crate::bayeux::Unrouted::UnexpectedReply,
            ..
        }
    )));
}

#[test]
fn no_common_transport_stops_with_both_lists() {
    let mut h = Harness::new();
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c","supportedConnectionTypes":["websocket"]})]);
    assert_eq!(
        h.events(),
        vec![Event::Stopped {
            reason: StopReason::NoCommonTransport {
                client: vec!["long-polling".into()],
                server: vec!["websocket".into()],
            }
        }]
    );
}

#[test]
fn disconnect_flushes_queued_publishes_then_sends_meta_disconnect() {
    let mut h = Harness::new();
    h.connected("c1");
    let _long_poll = h.sent(Lane::Connect);
    h.session.subscribe(&pattern("/s"), h.now);
    let sub = h.sent(Lane::Other);
    let id = h.session.publish("/x", json!(1), None, h.now).unwrap();
    h.session.disconnect(h.now);
    h.reply(
        Lane::Other,
        vec![json!({"channel":"/meta/subscribe","id":sub[0].id,"successful":true})],
    );
    let batch = h.sent(Lane::Other);
    assert_eq!(
        batch.iter().map(|m| m.channel.as_str()).collect::<Vec<_>>(),
        vec!["/x", META_DISCONNECT]
    );
    assert!(
        h.out.contains(&Output::Abort(Lane::Connect)),
        "the long poll is abandoned"
    );
    h.reply(
        Lane::Other,
        vec![
            json!({"channel":"/x","id":id,"successful":true}),
            json!({"channel":"/meta/disconnect","id":batch[1].id,"successful":true}),
        ],
    );
    assert!(h.publish_results()[0].1.is_ok());
    assert!(matches!(
        h.events().last(),
        Some(Event::Stopped {
            reason: StopReason::Disconnected
        })
    ));
}

#[test]
fn a_server_initiated_disconnect_ends_the_session() {
    let mut h = Harness::new();
    h.connected("c1");
    let c = h.sent(Lane::Connect);
    // CometD sends queued messages before the connect reply in the same response.
    h.reply(
        Lane::Connect,
        vec![
            json!({"channel":"/meta/disconnect","successful":true}),
            json!({"channel":"/meta/connect","id":c[0].id,"successful":true}),
        ],
    );
    assert_eq!(h.sent(Lane::Other)[0].channel, META_HANDSHAKE);
    let events = h.events();
    assert!(
        !events.iter().any(|e| matches!(e, Event::Unrouted { .. })),
        "the abandoned long poll's reply is expected, not unroutable: {events:?}"
    );
}

#[test]
fn multiple_clients_advice_is_reported_once_per_session() {
    let mut h = Harness::new();
    h.accept_handshake("c1", json!({}));
    h.answer_connect(json!({"advice":{"multiple-clients":true,"interval":2000}}));
    h.advance(Duration::from_secs(2));
    h.answer_connect(json!({}));
    let n = h
        .events()
        .iter()
        .filter(|e| **e == Event::MultipleClients)
        .count();
    assert_eq!(n, 1);
}

mod auth_and_size;

fn offering(types: &[&str]) -> SessionOptions {
    SessionOptions {
        connection_types: types.iter().map(|&t| t.to_owned()).collect(),
        ..options()
    }
}

#[test]
fn the_handshake_offers_our_transports_in_order_and_the_connect_names_the_first_the_server_allows()
{
    let mut h = Harness::with(offering(&["websocket", "long-polling"]));
    let hs = h.sent(Lane::Other);
    assert_eq!(
        hs[0].supported_connection_types,
        Some(vec!["websocket".to_owned(), "long-polling".to_owned()])
    );
    // The server's order does not matter; ours does.
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c","supportedConnectionTypes":["long-polling","callback-polling","websocket"]})]);
    assert_eq!(h.session.connection_type(), Some("websocket"));
    let connect = h.sent(Lane::Connect);
    assert_eq!(connect[0].connection_type.as_deref(), Some("websocket"));

    let mut h = Harness::with(offering(&["websocket", "long-polling"]));
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c","supportedConnectionTypes":["long-polling"]})]);
    let connect = h.sent(Lane::Connect);
    assert_eq!(connect[0].connection_type.as_deref(), Some("long-polling"));
}

#[test]
fn a_refused_handshake_naming_no_transport_of_ours_stops_and_names_the_servers() {
    let mut h = Harness::with(offering(&["websocket"]));
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":false,
        "error":"301:websocket:Connection types not supported","supportedConnectionTypes":["long-polling","callback-polling"]})]);
    assert_eq!(
        h.events(),
        vec![Event::Stopped {
            reason: StopReason::NoCommonTransport {
                client: vec!["websocket".into()],
                server: vec!["long-polling".into(), "callback-polling".into()],
            }
        }]
    );
    assert!(h.session.is_stopped());
}

#[test]
fn a_fallback_renames_the_next_connect_and_a_new_offer_applies_at_the_next_handshake() {
    let mut h = Harness::with(offering(&["websocket", "long-polling"]));
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c","supportedConnectionTypes":["websocket","long-polling"],"advice":{"reconnect":"retry","interval":0,"timeout":30000}})]);
    let _ws_connect = h.sent(Lane::Connect);
    h.session.set_connection_type("long-polling");
    h.session
        .set_offered_connection_types(vec!["long-polling".to_owned()]);
    h.fail(Lane::Connect);
    h.advance(Duration::from_secs(60));
    let connect = h.sent(Lane::Connect);
    assert_eq!(connect[0].connection_type.as_deref(), Some("long-polling"));
    // A lost session: the next handshake offers the new list.
    h.reply(Lane::Connect, vec![json!({"channel":"/meta/connect","id":connect[0].id,"successful":false,"error":"402::Unknown client","advice":{"reconnect":"handshake","interval":0}})]);
    h.advance(Duration::from_secs(60));
    let hs = h.sent(Lane::Other);
    assert_eq!(
        hs[0].supported_connection_types,
        Some(vec!["long-polling".to_owned()])
    );
}

#[test]
fn pushed_deliveries_are_delivered_and_a_pushed_connect_reply_counts() {
    let mut h = Harness::with(offering(&["websocket"]));
    let hs = h.sent(Lane::Other);
    h.reply(Lane::Other, vec![json!({"channel":"/meta/handshake","id":hs[0].id,"successful":true,"clientId":"c","supportedConnectionTypes":["websocket"]})]);
    let connect = h.sent(Lane::Connect);
    h.events();
    h.session.on_pushed(
        vec![
            msg(json!({"channel":"/a","data":1})),
            msg(json!({"channel":"/meta/connect","id":connect[0].id,"successful":true})),
        ],
        h.now,
    );
    h.collect();
    assert!(
        h.out
            .iter()
            .any(|o| matches!(o, Output::Deliver(m) if m.channel == "/a"))
    );
    assert!(h.session.is_connected());
    assert_eq!(h.events(), vec![Event::Connected]);
}

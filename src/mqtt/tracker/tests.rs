//! Unit tests of the tracker, against a fake request channel.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::*;
use crate::mqtt::AckToken;
use crate::mqtt::outcome::{OutcomeSender, Outcomes, outcome_channel};

/// A request channel of fixed capacity that the test drains by hand.
#[derive(Clone)]
struct FakeChannel {
    queue: Arc<Mutex<VecDeque<Request>>>,
    capacity: usize,
}

impl Sink for FakeChannel {
    fn try_send(&self, request: &Request) -> bool {
        let mut queue = self.queue.lock().unwrap();
        if queue.len() >= self.capacity {
            return false;
        }
        queue.push_back(request.clone());
        true
    }
}

impl FakeChannel {
    fn take(&self) -> Option<Request> {
        self.queue.lock().unwrap().pop_front()
    }

    fn drain(&self) -> Vec<Request> {
        self.queue.lock().unwrap().drain(..).collect()
    }
}

struct Harness {
    tracker: Tracker,
    channel: FakeChannel,
    permits: Arc<Semaphore>,
}

fn harness(capacity: usize) -> Harness {
    let channel = FakeChannel {
        queue: Arc::default(),
        capacity,
    };
    let permits = Arc::new(Semaphore::new(100));
    let tracker = Tracker::new(
        Box::new(channel.clone()),
        Arc::clone(&permits),
        Arc::new(Notify::new()),
        vec![SubscriptionSpec::new("in/#", QoS::AtLeastOnce)],
        1 << 20,
    );
    Harness {
        tracker,
        channel,
        permits,
    }
}

fn message(n: u32, qos: QoS) -> OutMessage {
    OutMessage {
        topic: format!("t/{n}").into(),
        payload: Bytes::from(n.to_string()),
        qos,
        retain: false,
        properties: None,
    }
}

impl Harness {
    fn publish(&mut self, n: u32, qos: QoS) -> oneshot::Receiver<Result<(), MqttError>> {
        self.permits.try_acquire().unwrap().forget();
        let (reply, result) = oneshot::channel();
        self.tracker
            .enqueue_publish(message(n, qos), 10, PublishReply::Once(reply))
            .unwrap();
        result
    }

    fn publish_tagged(&mut self, n: u32, qos: QoS, outcomes: &OutcomeSender) {
        self.permits.try_acquire().unwrap().forget();
        let message = message(n, qos);
        let reply = PublishReply::Tagged(outcomes.promise(u64::from(n), message.topic.clone()));
        self.tracker.enqueue_publish(message, 10, reply).unwrap();
    }

    fn event(&mut self, event: Ev) -> Vec<MqttEvent> {
        let mut out = Vec::new();
        self.tracker.on_event(event, &mut out);
        self.tracker.flush_deferred();
        out
    }

    fn incoming(&mut self, pkid: u16) -> AckToken {
        let mut out = self.event(Ev::Publish {
            size: 12,
            topic: "in/x".into(),
            payload: Bytes::from_static(b"p"),
            qos: QoS::AtLeastOnce,
            retain: false,
            pkid,
            properties: None,
        });
        match out.pop() {
            Some(MqttEvent::Message(m)) => m.token,
            other => panic!("{other:?}"),
        }
    }

    fn connack(&mut self, session_present: bool) -> Vec<Replay> {
        let replays = self.tracker.on_connack(session_present, false, None);
        self.tracker.flush_deferred();
        replays
    }
}

fn result(rx: &mut oneshot::Receiver<Result<(), MqttError>>) -> Option<Result<(), MqttError>> {
    rx.try_recv().ok()
}

#[test]
fn a_publish_completes_on_the_puback_of_the_packet_id_it_was_sent_under() {
    let mut h = harness(10);
    let mut first = h.publish(1, QoS::AtLeastOnce);
    let mut second = h.publish(2, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(7));
    h.event(Ev::OutPublish(8));
    h.event(Ev::PubAck {
        pkid: 8,
        failure: None,
    });
    assert_eq!(result(&mut second), Some(Ok(())));
    assert_eq!(result(&mut first), None);
    h.event(Ev::PubAck {
        pkid: 7,
        failure: None,
    });
    assert_eq!(result(&mut first), Some(Ok(())));
    assert_eq!(h.tracker.outstanding(), 0);
    assert_eq!(h.permits.available_permits(), 100);
}

#[test]
fn qos0_completes_when_written_and_qos2_on_pubcomp() {
    let mut h = harness(10);
    let mut zero = h.publish(1, QoS::AtMostOnce);
    let mut two = h.publish(2, QoS::ExactlyOnce);
    h.event(Ev::OutPublish(0));
    assert_eq!(result(&mut zero), Some(Ok(())));
    h.event(Ev::OutPublish(1));
    h.event(Ev::PubRec {
        pkid: 1,
        failure: None,
    });
    assert_eq!(result(&mut two), None);
    h.event(Ev::PubComp {
        pkid: 1,
        failure: None,
    });
    assert_eq!(result(&mut two), Some(Ok(())));
}

#[test]
fn a_failure_reason_code_rejects_the_publish() {
    let mut h = harness(10);
    let mut rx = h.publish(1, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(1));
    h.event(Ev::PubAck {
        pkid: 1,
        failure: Some("NotAuthorized".into()),
    });
    assert!(matches!(
        result(&mut rx),
        Some(Err(MqttError::Rejected { .. }))
    ));
}

#[test]
fn a_collided_publish_is_bound_when_rumqttc_finally_sends_it() {
    let mut h = harness(10);
    let mut old = h.publish(1, QoS::AtLeastOnce);
    let mut new = h.publish(2, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(1));
    h.event(Ev::OutAwaitAck(1));
    h.event(Ev::PubAck {
        pkid: 1,
        failure: None,
    });
    assert_eq!(result(&mut old), Some(Ok(())));
    h.event(Ev::OutPublish(1));
    assert_eq!(result(&mut new), None);
    h.event(Ev::PubAck {
        pkid: 1,
        failure: None,
    });
    assert_eq!(result(&mut new), Some(Ok(())));
}

#[test]
fn with_a_resumed_session_unacked_publishes_are_resent_under_their_packet_ids() {
    let mut h = harness(10);
    let mut sent = h.publish(1, QoS::AtLeastOnce);
    let mut queued = h.publish(2, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(5));
    // The connection drops: rumqttc drained the second publish from its channel.
    h.channel.drain();
    h.tracker.on_connection_lost(Drained {
        publishes: 1,
        controls: 0,
    });
    let replays = h.tracker.on_connack(true, false, None);
    assert_eq!(
        replays,
        vec![
            Replay::Resend {
                pkid: 5,
                message: message(1, QoS::AtLeastOnce)
            },
            Replay::Fresh(message(2, QoS::AtLeastOnce)),
        ]
    );
    // rumqttc replays them in that order.
    h.event(Ev::OutPublish(5));
    h.event(Ev::OutPublish(6));
    h.event(Ev::PubAck {
        pkid: 5,
        failure: None,
    });
    h.event(Ev::PubAck {
        pkid: 6,
        failure: None,
    });
    assert_eq!(result(&mut sent), Some(Ok(())));
    assert_eq!(result(&mut queued), Some(Ok(())));
    assert_eq!(h.permits.available_permits(), 100);
}

#[test]
fn without_a_session_everything_unacked_is_published_again_after_resubscribing() {
    let mut h = harness(10);
    let mut a = h.publish(1, QoS::AtLeastOnce);
    let mut b = h.publish(2, QoS::ExactlyOnce);
    let mut c = h.publish(3, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(1));
    h.event(Ev::OutPublish(2));
    h.event(Ev::PubRec {
        pkid: 2,
        failure: None,
    });
    h.channel.drain();
    h.tracker.on_connection_lost(Drained {
        publishes: 1,
        controls: 0,
    });
    // A publish arrives during the outage; it stays in rumqttc's channel.
    let mut d = h.publish(4, QoS::AtLeastOnce);
    let replays = h.connack(false);
    assert_eq!(
        replays,
        vec![
            Replay::Subscribe(vec![SubscriptionSpec::new("in/#", QoS::AtLeastOnce)]),
            Replay::Fresh(message(1, QoS::AtLeastOnce)),
            Replay::Fresh(message(2, QoS::ExactlyOnce)),
            Replay::Fresh(message(3, QoS::AtLeastOnce)),
        ]
    );
    h.event(Ev::OutSubscribe(1));
    for pkid in 2..=5 {
        h.event(Ev::OutPublish(pkid));
    }
    h.event(Ev::PubAck {
        pkid: 2,
        failure: None,
    });
    h.event(Ev::PubRec {
        pkid: 3,
        failure: None,
    });
    h.event(Ev::PubComp {
        pkid: 3,
        failure: None,
    });
    h.event(Ev::PubAck {
        pkid: 4,
        failure: None,
    });
    assert_eq!(result(&mut a), Some(Ok(())));
    assert_eq!(result(&mut b), Some(Ok(())));
    assert_eq!(result(&mut c), Some(Ok(())));
    assert_eq!(result(&mut d), None);
    h.event(Ev::PubAck {
        pkid: 5,
        failure: None,
    });
    assert_eq!(result(&mut d), Some(Ok(())));
    assert_eq!(h.tracker.outstanding(), 0);
    assert_eq!(h.permits.available_permits(), 100);
}

#[test]
fn the_full_subscription_is_confirmed_filter_by_filter() {
    let mut h = harness(10);
    let (reply, mut waiter) = oneshot::channel();
    h.tracker
        .enqueue_subscribe(SubscriptionSpec::new("b/+", QoS::AtMostOnce), reply)
        .unwrap();
    h.channel.drain();
    h.tracker.on_connection_lost(Drained {
        publishes: 0,
        controls: 1,
    });
    let replays = h.connack(false);
    assert_eq!(
        replays,
        vec![Replay::Subscribe(vec![
            SubscriptionSpec::new("in/#", QoS::AtLeastOnce),
            SubscriptionSpec::new("b/+", QoS::AtMostOnce),
        ])]
    );
    h.event(Ev::OutSubscribe(1));
    let out = h.event(Ev::SubAck {
        pkid: 1,
        codes: vec![Ok(()), Err("NotAuthorized".into())],
    });
    assert!(matches!(&out[0], MqttEvent::Subscribed { filter } if filter == "in/#"));
    assert!(matches!(&out[1], MqttEvent::SubscribeFailed { filter, .. } if filter == "b/+"));
    assert!(matches!(
        waiter.try_recv(),
        Ok(Err(MqttError::SubscribeRefused { .. }))
    ));
}

#[test]
fn acks_are_released_in_receive_order() {
    let mut h = harness(10);
    let first = h.incoming(11);
    let second = h.incoming(12);
    let third = h.incoming(13);
    h.tracker.ack(second);
    assert_eq!(h.channel.take(), None, "2 waits for 1");
    h.tracker.ack(first);
    let ack = |pkid| Request::Ack {
        pkid,
        qos: QoS::AtLeastOnce,
        epoch: 0,
    };
    assert_eq!(h.channel.drain(), vec![ack(11), ack(12)]);
    h.tracker.ack(third);
    assert_eq!(h.channel.drain(), vec![ack(13)]);
}

#[test]
fn an_incoming_message_over_the_packet_limit_is_acknowledged_in_order_and_reported_not_delivered() {
    let mut h = harness(10);
    let first = h.incoming(11);
    let out = h.event(Ev::Publish {
        size: (1 << 20) + 1,
        topic: "in/big".into(),
        payload: Bytes::from_static(b"big"),
        qos: QoS::AtLeastOnce,
        retain: false,
        pkid: 12,
        properties: None,
    });
    match out.as_slice() {
        [MqttEvent::Oversized { topic, size, limit }] => assert_eq!(
            (topic.as_str(), *size, *limit),
            ("in/big", (1 << 20) + 1, 1 << 20)
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.channel.take(),
        None,
        "its PUBACK waits for the message before"
    );
    let third = h.incoming(13);
    h.tracker.ack(first);
    let ack = |pkid| Request::Ack {
        pkid,
        qos: QoS::AtLeastOnce,
        epoch: 0,
    };
    assert_eq!(h.channel.drain(), vec![ack(11), ack(12)]);
    h.tracker.ack(third);
    assert_eq!(h.channel.drain(), vec![ack(13)]);
}

#[test]
fn an_incoming_message_at_the_packet_limit_is_delivered() {
    let mut h = harness(10);
    let out = h.event(Ev::Publish {
        size: 1 << 20,
        topic: "in/x".into(),
        payload: Bytes::from_static(b"p"),
        qos: QoS::AtMostOnce,
        retain: false,
        pkid: 0,
        properties: None,
    });
    assert!(matches!(out.as_slice(), [MqttEvent::Message(_)]), "{out:?}");
}

#[test]
fn acks_from_an_earlier_connection_are_ignored() {
    let mut h = harness(10);
    let stale = h.incoming(1);
    h.tracker.on_connection_lost(Drained::default());
    h.connack(true);
    let fresh = h.incoming(1);
    h.tracker.ack(stale);
    assert_eq!(h.channel.take(), None);
    h.tracker.ack(fresh);
    assert!(matches!(
        h.channel.take(),
        Some(Request::Ack { pkid: 1, .. })
    ));
}

#[test]
fn a_full_channel_defers_requests_in_order_until_rumqttc_takes_some() {
    let mut h = harness(1);
    let mut a = h.publish(1, QoS::AtMostOnce);
    let _b = h.publish(2, QoS::AtMostOnce);
    assert_eq!(h.tracker.deferred.len(), 1);
    // rumqttc takes the first request and reports it; the driver then flushes.
    h.channel.take();
    h.event(Ev::OutPublish(0));
    assert_eq!(result(&mut a), Some(Ok(())));
    assert!(h.tracker.deferred.is_empty());
    assert_eq!(
        h.channel.drain(),
        vec![Request::Publish(message(2, QoS::AtMostOnce))]
    );
}

#[test]
fn a_smaller_broker_limit_fails_held_messages_that_no_longer_fit() {
    let mut h = harness(10);
    let mut rx = h.publish(1, QoS::AtLeastOnce);
    h.channel.drain();
    h.tracker.on_connection_lost(Drained {
        publishes: 1,
        controls: 0,
    });
    let replays = h.tracker.on_connack(true, false, Some(5));
    assert!(replays.is_empty());
    assert!(matches!(
        result(&mut rx),
        Some(Err(MqttError::PayloadTooLarge { max: 5, .. }))
    ));
}

#[test]
fn stopping_fails_everything_outstanding() {
    let mut h = harness(10);
    let mut rx = h.publish(1, QoS::AtLeastOnce);
    h.event(Ev::OutPublish(1));
    h.tracker.stop();
    assert_eq!(result(&mut rx), Some(Err(MqttError::Shutdown)));
    let (reply, _) = oneshot::channel();
    assert_eq!(
        h.tracker
            .enqueue_publish(message(2, QoS::AtMostOnce), 10, PublishReply::Once(reply)),
        Err(MqttError::Shutdown)
    );
}

fn outcome(outcomes: &mut Outcomes) -> Option<(u64, Result<(), MqttError>)> {
    outcomes.try_recv().map(|o| {
        assert_eq!(o.topic(), format!("t/{}", o.tag));
        (o.tag, o.result)
    })
}

#[test]
fn tagged_publishes_report_once_each_with_their_tag() {
    let mut h = harness(10);
    let (sender, mut outcomes) = outcome_channel();
    h.publish_tagged(1, QoS::AtLeastOnce, &sender);
    h.publish_tagged(2, QoS::AtLeastOnce, &sender);
    h.publish_tagged(3, QoS::AtMostOnce, &sender);
    h.event(Ev::OutPublish(7));
    h.event(Ev::OutPublish(8));
    assert_eq!(outcome(&mut outcomes), None);
    h.event(Ev::OutPublish(0));
    assert_eq!(outcome(&mut outcomes), Some((3, Ok(()))));
    h.event(Ev::PubAck {
        pkid: 8,
        failure: Some("quota exceeded".into()),
    });
    assert!(matches!(
        outcome(&mut outcomes),
        Some((2, Err(MqttError::Rejected { .. })))
    ));
    h.event(Ev::PubAck {
        pkid: 7,
        failure: None,
    });
    assert_eq!(outcome(&mut outcomes), Some((1, Ok(()))));
    assert_eq!(outcome(&mut outcomes), None);
    assert_eq!(h.tracker.outstanding(), 0);
}

#[test]
fn a_tagged_publish_left_behind_reports_shutdown_and_a_refused_one_nothing() {
    let mut h = harness(10);
    let (sender, mut outcomes) = outcome_channel();
    h.publish_tagged(1, QoS::AtLeastOnce, &sender);
    h.event(Ev::OutPublish(1));
    h.publish_tagged(2, QoS::AtLeastOnce, &sender);
    // Dropping the tracker with both still outstanding (a client that went away).
    drop(h.tracker);
    let mut reported = vec![outcome(&mut outcomes), outcome(&mut outcomes)];
    reported.sort_by_key(|o| o.as_ref().map(|(tag, _)| *tag));
    assert_eq!(
        reported,
        [
            Some((1, Err(MqttError::Shutdown))),
            Some((2, Err(MqttError::Shutdown)))
        ]
    );

    let mut h = harness(10);
    h.tracker.stop();
    let reply = PublishReply::Tagged(sender.promise(3, "t/3".to_owned().into()));
    assert_eq!(
        h.tracker
            .enqueue_publish(message(3, QoS::AtLeastOnce), 10, reply),
        Err(MqttError::Shutdown)
    );
    drop(sender);
    drop(h.tracker);
    assert_eq!(outcome(&mut outcomes), None);
}

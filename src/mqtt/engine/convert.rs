//! Translation between rumqttc's v5 / v3.1.1 types and the tracker's.

use rumqttc::v5::mqttbytes::QoS as QoS5;
use rumqttc::v5::mqttbytes::v5 as p5;

use crate::mqtt::tracker::{Ev, OutMessage, Replay};
use crate::mqtt::{ConnectionError, Properties, QoS, SubscriptionSpec};

pub(super) fn qos5(qos: QoS) -> QoS5 {
    match qos {
        QoS::AtMostOnce => QoS5::AtMostOnce,
        QoS::AtLeastOnce => QoS5::AtLeastOnce,
        QoS::ExactlyOnce => QoS5::ExactlyOnce,
    }
}

pub(super) fn qos4(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

pub(super) fn from_qos5(qos: QoS5) -> QoS {
    match qos {
        QoS5::AtMostOnce => QoS::AtMostOnce,
        QoS5::AtLeastOnce => QoS::AtLeastOnce,
        QoS5::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(super) fn from_qos4(qos: rumqttc::QoS) -> QoS {
    match qos {
        rumqttc::QoS::AtMostOnce => QoS::AtMostOnce,
        rumqttc::QoS::AtLeastOnce => QoS::AtLeastOnce,
        rumqttc::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// Subscriptions ask for QoS 1 at most (see [`SubscriptionSpec::qos`]).
pub(super) fn subscribed_qos(spec: &SubscriptionSpec) -> QoS {
    spec.qos.min(QoS::AtLeastOnce)
}

pub(super) fn filter5(spec: &SubscriptionSpec) -> p5::Filter {
    let mut filter = p5::Filter::new(spec.filter.clone(), qos5(subscribed_qos(spec)));
    filter.nolocal = spec.no_local;
    filter
}

pub(super) fn filter4(spec: &SubscriptionSpec) -> rumqttc::SubscribeFilter {
    rumqttc::SubscribeFilter::new(spec.filter.clone(), qos4(subscribed_qos(spec)))
}

/// Built field by field: `p5::Publish::new` would copy the topic (twice, through a `String`).
pub(super) fn publish5(m: OutMessage, pkid: u16, dup: bool) -> p5::Publish {
    p5::Publish {
        dup,
        qos: qos5(m.qos),
        retain: m.retain,
        topic: m.topic.bytes(),
        pkid,
        payload: m.payload,
        properties: m.properties.as_deref().map(properties5),
    }
}

fn properties5(properties: &Properties) -> p5::PublishProperties {
    p5::PublishProperties {
        content_type: properties.content_type.clone(),
        user_properties: properties.user.clone(),
        ..p5::PublishProperties::default()
    }
}

/// What the application sees of an incoming publish's properties.
fn from_properties5(properties: p5::PublishProperties) -> Properties {
    Properties {
        content_type: properties.content_type,
        user: properties.user_properties,
    }
}

pub(super) fn publish4(m: OutMessage, pkid: u16, dup: bool) -> rumqttc::Publish {
    let mut publish = rumqttc::Publish::from_bytes(m.topic.as_str(), qos4(m.qos), m.payload);
    publish.retain = m.retain;
    publish.pkid = pkid;
    publish.dup = dup;
    publish
}

pub(super) fn replay5(replay: Replay) -> rumqttc::v5::Request {
    use rumqttc::v5::Request as R;
    match replay {
        Replay::Resend { pkid, message } => R::Publish(publish5(message, pkid, true)),
        Replay::Release { pkid } => R::PubRel(p5::PubRel::new(pkid, None)),
        Replay::Fresh(message) => R::Publish(publish5(message, 0, false)),
        Replay::Subscribe(specs) => {
            R::Subscribe(p5::Subscribe::new_many(specs.iter().map(filter5), None))
        }
        Replay::Unsubscribe(filter) => R::Unsubscribe(p5::Unsubscribe::new(filter, None)),
    }
}

pub(super) fn replay4(replay: Replay) -> rumqttc::Request {
    use rumqttc::Request as R;
    match replay {
        Replay::Resend { pkid, message } => R::Publish(publish4(message, pkid, true)),
        Replay::Release { pkid } => R::PubRel(rumqttc::PubRel::new(pkid)),
        Replay::Fresh(message) => R::Publish(publish4(message, 0, false)),
        Replay::Subscribe(specs) => {
            R::Subscribe(rumqttc::Subscribe::new_many(specs.iter().map(filter4)))
        }
        Replay::Unsubscribe(filter) => R::Unsubscribe(rumqttc::Unsubscribe::new(filter)),
    }
}

pub(super) fn outgoing_ev(outgoing: rumqttc::Outgoing) -> Ev {
    use rumqttc::Outgoing as O;
    match outgoing {
        O::Publish(pkid) => Ev::OutPublish(pkid),
        O::AwaitAck(pkid) => Ev::OutAwaitAck(pkid),
        O::Subscribe(pkid) => Ev::OutSubscribe(pkid),
        O::Unsubscribe(pkid) => Ev::OutUnsubscribe(pkid),
        O::Disconnect => Ev::OutDisconnect,
        O::PubAck(_) | O::PubRec(_) | O::PubRel(_) | O::PubComp(_) | O::PingReq | O::PingResp => {
            Ev::Other
        }
    }
}

/// `None` for success codes, the code's name otherwise.
fn failure<T: PartialEq + std::fmt::Debug>(code: T, successes: &[T]) -> Option<String> {
    (!successes.contains(&code)).then(|| format!("{code:?}"))
}

pub(super) fn incoming5(packet: p5::Packet) -> Ev {
    use p5::Packet as P;
    match packet {
        P::ConnAck(connack) => Ev::ConnAck {
            session_present: connack.session_present,
            max_packet_size: connack.properties.as_ref().and_then(|p| p.max_packet_size),
            receive_maximum: connack.properties.as_ref().and_then(|p| p.receive_max),
        },
        P::Publish(publish) => Ev::Publish {
            size: publish.size(),
            // MQTT 5 requires UTF-8 topics; a broker that breaks this gets a lossy topic
            // rather than a dropped connection.
            topic: String::from_utf8_lossy(&publish.topic).into_owned(),
            payload: publish.payload,
            qos: from_qos5(publish.qos),
            retain: publish.retain,
            pkid: publish.pkid,
            properties: publish.properties.map(from_properties5),
        },
        P::PubAck(ack) => Ev::PubAck {
            pkid: ack.pkid,
            failure: puback_failure5(ack.reason),
        },
        P::PubRec(rec) => Ev::PubRec {
            pkid: rec.pkid,
            failure: pubrec_failure5(rec.reason),
        },
        P::PubComp(comp) => Ev::PubComp {
            pkid: comp.pkid,
            failure: failure(comp.reason, &[p5::PubCompReason::Success]),
        },
        P::SubAck(suback) => Ev::SubAck {
            pkid: suback.pkid,
            codes: suback_codes5(suback.return_codes),
        },
        P::UnsubAck(unsuback) => Ev::UnsubAck {
            pkid: unsuback.pkid,
            failure: unsuback_failure5(unsuback.reasons),
        },
        _ => Ev::Other,
    }
}

/// A PUBACK's failure: "no matching subscribers" is a success (the broker took the message).
fn puback_failure5(reason: p5::PubAckReason) -> Option<String> {
    failure(
        reason,
        &[
            p5::PubAckReason::Success,
            p5::PubAckReason::NoMatchingSubscribers,
        ],
    )
}

/// A PUBREC's failure: "no matching subscribers" is a success (the broker took the message).
fn pubrec_failure5(reason: p5::PubRecReason) -> Option<String> {
    failure(
        reason,
        &[
            p5::PubRecReason::Success,
            p5::PubRecReason::NoMatchingSubscribers,
        ],
    )
}

/// A SUBACK's outcome per filter: granted (at any QoS), or the reason code's name.
fn suback_codes5(codes: Vec<p5::SubscribeReasonCode>) -> Vec<Result<(), String>> {
    codes
        .into_iter()
        .map(|code| match code {
            p5::SubscribeReasonCode::Success(_) => Ok(()),
            other => Err(format!("{other:?}")),
        })
        .collect()
}

/// An UNSUBACK's first failure: "no subscription existed" is a success (none is left).
fn unsuback_failure5(reasons: Vec<p5::UnsubAckReason>) -> Option<String> {
    reasons.into_iter().find_map(|reason| {
        failure(
            reason,
            &[
                p5::UnsubAckReason::Success,
                p5::UnsubAckReason::NoSubscriptionExisted,
            ],
        )
    })
}

pub(super) fn incoming4(packet: rumqttc::Packet) -> Ev {
    use rumqttc::Packet as P;
    match packet {
        P::ConnAck(connack) => Ev::ConnAck {
            session_present: connack.session_present,
            max_packet_size: None,
            receive_maximum: None,
        },
        P::Publish(publish) => Ev::Publish {
            size: publish.size(),
            topic: publish.topic,
            payload: publish.payload,
            qos: from_qos4(publish.qos),
            retain: publish.retain,
            pkid: publish.pkid,
            properties: None,
        },
        P::PubAck(ack) => Ev::PubAck {
            pkid: ack.pkid,
            failure: None,
        },
        P::PubRec(rec) => Ev::PubRec {
            pkid: rec.pkid,
            failure: None,
        },
        P::PubComp(comp) => Ev::PubComp {
            pkid: comp.pkid,
            failure: None,
        },
        P::SubAck(suback) => Ev::SubAck {
            pkid: suback.pkid,
            codes: suback
                .return_codes
                .into_iter()
                .map(|code| match code {
                    rumqttc::SubscribeReasonCode::Success(_) => Ok(()),
                    rumqttc::SubscribeReasonCode::Failure => Err("Failure (0x80)".to_owned()),
                })
                .collect(),
        },
        P::UnsubAck(unsuback) => Ev::UnsubAck {
            pkid: unsuback.pkid,
            failure: None,
        },
        _ => Ev::Other,
    }
}

/// A v5 event loop error, typed: a CONNACK refusing our user name or password (0x86) or
/// authorization (0x87) is told apart from the rest.
pub(super) fn connection_error5(error: rumqttc::v5::ConnectionError) -> ConnectionError {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
    match error {
        rumqttc::v5::ConnectionError::ConnectionRefused(
            code @ (Code::BadUserNamePassword | Code::NotAuthorized),
        ) => ConnectionError::CredentialsRefused {
            code: format!("{code:?}"),
        },
        rumqttc::v5::ConnectionError::ConnectionRefused(code) => ConnectionError::Refused {
            code: format!("{code:?}"),
        },
        other => ConnectionError::Network(other.to_string()),
    }
}

/// A v3.1.1 event loop error, typed: CONNACK return codes 4 (bad user name or password) and
/// 5 (not authorized) are told apart from the rest.
pub(super) fn connection_error4(error: rumqttc::ConnectionError) -> ConnectionError {
    use rumqttc::ConnectReturnCode as Code;
    match error {
        rumqttc::ConnectionError::ConnectionRefused(
            code @ (Code::BadUserNamePassword | Code::NotAuthorized),
        ) => ConnectionError::CredentialsRefused {
            code: format!("{code:?}"),
        },
        rumqttc::ConnectionError::ConnectionRefused(code) => ConnectionError::Refused {
            code: format!("{code:?}"),
        },
        other => ConnectionError::Network(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::mqtt::Protocol;
    use crate::mqtt::engine::publish_packet_size;

    #[test]
    fn refused_credentials_are_told_apart_from_other_refusals_on_both_protocols() {
        use rumqttc::ConnectReturnCode as C4;
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as C5;
        let refused4 = |c| connection_error4(rumqttc::ConnectionError::ConnectionRefused(c));
        let refused5 = |c| connection_error5(rumqttc::v5::ConnectionError::ConnectionRefused(c));
        for error in [
            refused4(C4::BadUserNamePassword),
            refused4(C4::NotAuthorized),
            refused5(C5::BadUserNamePassword),
            refused5(C5::NotAuthorized),
        ] {
            assert!(error.is_credentials_refused(), "{error:?}");
            assert_eq!(error.reason(), "credentials_refused");
        }
        for error in [
            refused4(C4::ServiceUnavailable),
            refused4(C4::BadClientId),
            refused5(C5::ServerUnavailable),
            refused5(C5::Banned),
        ] {
            assert!(
                matches!(error, ConnectionError::Refused { .. }),
                "{error:?}"
            );
        }
        let io = connection_error4(rumqttc::ConnectionError::RequestsDone);
        assert!(matches!(io, ConnectionError::Network(_)), "{io:?}");
    }

    #[test]
    fn the_publish_size_matches_rumqttc_encoding() {
        for payload_len in [0, 1, 100, 127, 128, 16_000, 16_384, 2_097_152, 3_000_000] {
            for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
                let topic = "some/topic";
                let payload = Bytes::from(vec![0u8; payload_len]);
                let mut v5 = p5::Publish::new(topic, qos5(qos), payload.clone(), None);
                v5.pkid = 1;
                let mut v4 = rumqttc::Publish::from_bytes(topic, qos4(qos), payload);
                v4.pkid = 1;
                assert_eq!(
                    publish_packet_size(Protocol::V5, topic, payload_len, qos, 0),
                    v5.size(),
                    "v5 {payload_len} {qos:?}"
                );
                assert_eq!(
                    publish_packet_size(Protocol::V311, topic, payload_len, qos, 0),
                    v4.size(),
                    "v3 {payload_len} {qos:?}"
                );
            }
        }
    }

    #[test]
    fn the_publish_size_with_properties_matches_rumqttc_encoding() {
        let long = "v".repeat(200);
        for properties in [
            Properties {
                content_type: Some("application/json".into()),
                user: vec![("source-channel".into(), "/a/b".into())],
            },
            Properties {
                content_type: None,
                user: vec![("k".into(), long.clone()), ("k".into(), String::new())],
            },
        ] {
            for payload_len in [0, 100, 16_300, 70_000] {
                let payload = Bytes::from(vec![0u8; payload_len]);
                let mut v5 = p5::Publish::new(
                    "t",
                    QoS5::AtLeastOnce,
                    payload,
                    Some(properties5(&properties)),
                );
                v5.pkid = 1;
                let size = publish_packet_size(
                    Protocol::V5,
                    "t",
                    payload_len,
                    QoS::AtLeastOnce,
                    properties.encoded_len(),
                );
                assert_eq!(size, v5.size(), "{payload_len} {properties:?}");
            }
        }
    }

    #[test]
    fn subscriptions_never_ask_for_qos_2() {
        let spec = SubscriptionSpec {
            filter: "a/#".into(),
            qos: QoS::ExactlyOnce,
            no_local: true,
        };
        let f = filter5(&spec);
        assert_eq!(f.qos, QoS5::AtLeastOnce);
        assert!(f.nolocal);
        assert_eq!(filter4(&spec).qos, rumqttc::QoS::AtLeastOnce);
    }
}

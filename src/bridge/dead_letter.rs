//! Dead letters: a message the bridge cannot deliver (the Bayeux server refused it, it is too
//! large for the broker or the server, binary where refused, its name cannot be translated,
//! the route's JSON pointer names nothing in it) is published, with its original payload and
//! why, to the route's `dead_letter_topic` or `bridge.dead_letter_topic`, at QoS 1, instead
//! of being only logged and counted.
//!
//! With MQTT 5 the payload is the original one and the why is in user properties (`reason`,
//! `route`, `source`, `channel` and/or `topic`, `error`); MQTT 3.1.1 has no properties, so
//! the payload is a JSON envelope holding the same fields and the original payload
//! ([`envelope`]).
//!
//! Never a loop: the config validator refuses a dead-letter topic that a route reads, so the
//! bridge never receives its own dead letters; and a dead letter that cannot be published is
//! not dead-lettered again, only dropped and counted as it would be without a dead-letter
//! topic. Each one published is counted (`bridge_dead_letters_total{direction,route,reason}`).
//! At most [`IN_FLIGHT`] wait for the broker at once; more are dropped and counted (memory
//! stays bounded while the broker is away).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::mapping::Route;
use super::payload::property_value;
use super::stats::{Direction, Stats};
use crate::log_limit::SharedLimiter;
use crate::metrics::DropLabels;
use crate::mqtt::{MqttError, MqttHandle, Properties, QoS};

/// What the source of an undeliverable message is told once its dead letter is published, or
/// failed and was counted as a drop: the acknowledgement to the broker, the settled spool
/// entry, the replay ticket let go. Until then the message is not done, so a shutdown or
/// crash before the broker acknowledged the dead letter delivers the message again (the
/// broker's session, the spool, replay) rather than losing it.
pub(crate) type Then = Box<dyn FnOnce() + Send + 'static>;

/// Most dead letters waiting for the broker's acknowledgement at once.
pub(crate) const IN_FLIGHT: usize = 256;

/// A message the bridge cannot deliver, and why.
#[derive(Debug, Clone)]
pub(crate) struct Undeliverable {
    /// The direction it was going.
    pub(crate) direction: Direction,
    /// The reason label, as for drops (`bayeux_refused`, `pointer_not_found`, ...).
    pub(crate) reason: &'static str,
    /// Its route (from 1; 0 when none applies).
    pub(crate) route: usize,
    /// The Bayeux channel it came from or was going to, when known.
    pub(crate) channel: Option<String>,
    /// The MQTT topic it came from or was going to, when known.
    pub(crate) topic: Option<String>,
    /// The error text (the server's, for a refusal).
    pub(crate) error: String,
    /// The original payload: the Bayeux `data` (or the MQTT payload made from it), or the
    /// MQTT payload.
    pub(crate) payload: Bytes,
    /// Extra user properties / envelope fields (`count` of a gap placeholder).
    pub(crate) extra: Vec<(&'static str, String)>,
}

impl Undeliverable {
    /// A Bayeux message of `route` that cannot go to MQTT: its `data` is the payload.
    pub(crate) fn from_bayeux(
        message: &crate::bayeux::Message,
        route: usize,
        reason: &'static str,
        error: String,
    ) -> Undeliverable {
        let payload = message.data.as_ref().map_or_else(
            || Bytes::from_static(b"null"),
            |data| Bytes::copy_from_slice(data.json().as_bytes()),
        );
        Undeliverable {
            direction: Direction::BayeuxToMqtt,
            reason,
            route,
            channel: Some(message.channel.clone()),
            topic: None,
            error,
            payload,
            extra: Vec::new(),
        }
    }

    /// An MQTT message of `route` that the Bayeux server (or client) refused on `channel`.
    pub(crate) fn refused_by_bayeux(
        channel: &str,
        payload: Bytes,
        route: usize,
        reason: &'static str,
        error: String,
    ) -> Undeliverable {
        Undeliverable {
            channel: Some(channel.to_owned()),
            topic: None,
            ..Undeliverable::from_mqtt("", payload, route, reason, error)
        }
    }

    /// An MQTT message of `route` on `topic` that cannot go to Bayeux.
    pub(crate) fn from_mqtt(
        topic: &str,
        payload: Bytes,
        route: usize,
        reason: &'static str,
        error: String,
    ) -> Undeliverable {
        Undeliverable {
            direction: Direction::MqttToBayeux,
            reason,
            route,
            channel: None,
            topic: Some(topic.to_owned()),
            error,
            payload,
            extra: Vec::new(),
        }
    }

    /// `bayeux` or `mqtt`: the side the message came from.
    pub(crate) fn source(&self) -> &'static str {
        match self.direction {
            Direction::BayeuxToMqtt => "bayeux",
            Direction::MqttToBayeux => "mqtt",
        }
    }

    /// Whether it is a gap's placeholder (with a `count`), not a message.
    pub(crate) fn is_placeholder(&self) -> bool {
        self.extra.iter().any(|(name, _)| *name == "count")
    }

    /// The channel or topic, for a log line.
    pub(crate) fn name(&self) -> &str {
        match self.direction {
            Direction::BayeuxToMqtt => self.channel.as_deref().or(self.topic.as_deref()),
            Direction::MqttToBayeux => self.topic.as_deref().or(self.channel.as_deref()),
        }
        .unwrap_or("")
    }

    /// The fields that say why, in order: `reason`, `route`, `source`, `channel`, `topic`,
    /// `error`, then any extra ones.
    fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("reason", self.reason.to_owned()),
            ("route", self.route.to_string()),
            ("source", self.source().to_owned()),
        ];
        if let Some(channel) = &self.channel {
            fields.push(("channel", channel.clone()));
        }
        if let Some(topic) = &self.topic {
            fields.push(("topic", topic.clone()));
        }
        fields.push(("error", self.error.clone()));
        fields.extend(self.extra.iter().cloned());
        fields
    }
}

/// The MQTT 5 properties of a dead letter: each field as a user property.
pub(crate) fn properties(letter: &Undeliverable) -> Properties {
    Properties {
        content_type: None,
        user: letter
            .fields()
            .into_iter()
            .map(|(name, value)| (name.to_owned(), property_value(&value)))
            .collect(),
    }
}

/// The MQTT 3.1.1 dead letter: a JSON object of the fields plus the original payload, as
/// `payload` (JSON when it is JSON, otherwise a string when it is UTF-8 text) or as
/// `payload_base64` (binary).
pub(crate) fn envelope(letter: &Undeliverable) -> Bytes {
    let mut object = Map::new();
    for (name, value) in letter.fields() {
        object.insert(name.to_owned(), Value::String(value));
    }
    match std::str::from_utf8(&letter.payload) {
        Ok(text) => {
            let payload = serde_json::from_str::<Value>(text)
                .unwrap_or_else(|_| Value::String(text.to_owned()));
            object.insert("payload".to_owned(), payload);
        }
        Err(_) => {
            let encoded = STANDARD.encode(&letter.payload);
            object.insert("payload_base64".to_owned(), Value::String(encoded));
        }
    }
    // Serializing a map of strings and parsed JSON cannot fail.
    Bytes::from(serde_json::to_vec(&Value::Object(object)).unwrap_or_default())
}

/// Where dead letters go and how they are counted.
#[derive(Debug)]
pub(crate) struct DeadLetters {
    /// `bridge.dead_letter_topic`.
    topic: Option<String>,
    /// Whether any topic is set (the bridge's or a route's): the pipelines keep a copy of
    /// what they publish only then.
    enabled: AtomicBool,
    /// MQTT 3.1.1: envelopes instead of properties.
    v311: AtomicBool,
    permits: Arc<Semaphore>,
    counting: Arc<Counting>,
}

/// How dead letters are counted, on the publishing tasks too.
#[derive(Debug)]
struct Counting {
    stats: Arc<Stats>,
    log_limit: SharedLimiter,
}

impl DeadLetters {
    pub(crate) fn new(topic: Option<String>, v311: bool, stats: Arc<Stats>) -> DeadLetters {
        DeadLetters {
            enabled: AtomicBool::new(topic.is_some()),
            topic,
            v311: AtomicBool::new(v311),
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            counting: Arc::new(Counting {
                stats,
                log_limit: SharedLimiter::default(),
            }),
        }
    }

    /// Whether any dead-letter topic is set.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The routes changed (start, reload): whether one sets a topic of its own.
    pub(crate) fn set_routes(&self, routes: &[Route]) {
        let any = self.topic.is_some() || routes.iter().any(|r| r.dead_letter_topic.is_some());
        self.enabled.store(any, Ordering::Relaxed);
    }

    /// The MQTT client changed (reload): which protocol it speaks.
    pub(crate) fn set_v311(&self, v311: bool) {
        self.v311.store(v311, Ordering::Relaxed);
    }

    /// Whether the MQTT client speaks 3.1.1 (no properties).
    pub(crate) fn is_v311(&self) -> bool {
        self.v311.load(Ordering::Relaxed)
    }

    /// The dead-letter topic of `route` (from 1; 0: the bridge's).
    pub(crate) fn topic_for(&self, routes: &[Route], route: usize) -> Option<String> {
        routes
            .iter()
            .find(|r| r.number() == route)
            .and_then(|r| r.dead_letter_topic.clone())
            .or_else(|| self.topic.clone())
    }

    /// Publishes `letter` to `topic` through `mqtt` on a task of its own
    /// ([`DeadLetters::deliver`]), then runs `then` (see [`Then`]).
    pub(crate) fn send(&self, mqtt: MqttHandle, topic: String, letter: Undeliverable, then: Then) {
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.counting
                .failed(&letter, "too many dead letters waiting for the broker");
            return then();
        };
        let delivery = self.deliver(mqtt, topic, letter);
        tokio::spawn(async move {
            let _permit = permit;
            delivery.await;
            then();
        });
    }

    /// Publishes `letter` to `topic` through `mqtt`: counted as a dead letter once the broker
    /// acknowledged it, as a drop (of its reason) if it cannot be published. One too large
    /// for the broker goes without its payload (`payload_omitted` gives its size).
    pub(crate) fn deliver(
        &self,
        mqtt: MqttHandle,
        topic: String,
        letter: Undeliverable,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let v311 = self.v311.load(Ordering::Relaxed);
        let counting = Arc::clone(&self.counting);
        async move {
            let mut published = publish(&mqtt, &topic, &letter, v311).await;
            if let Err(MqttError::PayloadTooLarge { .. }) = published
                && !letter.payload.is_empty()
            {
                let mut without = letter.clone();
                without.payload = Bytes::new();
                without
                    .extra
                    .push(("payload_omitted", letter.payload.len().to_string()));
                published = publish(&mqtt, &topic, &without, v311).await;
            }
            match published {
                Ok(()) => counting.published(&letter, &topic),
                Err(e) => {
                    counting.failed(&letter, &format!("dead letter to {topic:?} failed: {e}"))
                }
            }
        }
    }
}

/// Publishes `letter` to `topic` at QoS 1 and waits for the broker's acknowledgement.
async fn publish(
    mqtt: &MqttHandle,
    topic: &str,
    letter: &Undeliverable,
    v311: bool,
) -> Result<(), MqttError> {
    let (payload, properties) = if v311 {
        (envelope(letter), None)
    } else {
        (letter.payload.clone(), Some(Arc::new(properties(letter))))
    };
    mqtt.publish_queued_with(topic, payload, QoS::AtLeastOnce, false, properties)
        .await?
        .await
}

impl Counting {
    fn published(&self, letter: &Undeliverable, topic: &str) {
        let labels = DropLabels {
            direction: letter.direction.as_str(),
            route: self.stats.route_label(letter.route),
            reason: letter.reason,
        };
        self.stats.metrics.dead_letters.get_or_create(&labels).inc();
        debug!(reason = letter.reason, route = letter.route, name = letter.name(), %topic, "Dead letter published.");
    }

    /// A dead letter that could not be published: the message is dropped and counted as
    /// without a dead-letter topic.
    fn failed(&self, letter: &Undeliverable, why: &str) {
        // A gap placeholder stands for messages already counted (as the gap).
        if !letter.is_placeholder() {
            self.stats
                .dropped(letter.direction, letter.route, letter.reason);
        }
        const FAILED: &str = "Message dropped: its dead letter could not be published.";
        if self.log_limit.allow(FAILED) {
            warn!(direction = %letter.direction, reason = letter.reason, route = letter.route,
                name = letter.name(), detail = %letter.error, error = why, "{FAILED}");
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refused() -> Undeliverable {
        Undeliverable {
            direction: Direction::MqttToBayeux,
            reason: "bayeux_refused",
            route: 2,
            channel: Some("/out/a".into()),
            topic: Some("in/a".into()),
            error: "403::Forbidden".into(),
            payload: Bytes::from_static(br#"{"t":1}"#),
            extra: Vec::new(),
        }
    }

    #[test]
    fn mqtt5_dead_letters_carry_why_in_user_properties() {
        let properties = properties(&refused());
        let user: Vec<(&str, &str)> = properties
            .user
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            user,
            [
                ("reason", "bayeux_refused"),
                ("route", "2"),
                ("source", "mqtt"),
                ("channel", "/out/a"),
                ("topic", "in/a"),
                ("error", "403::Forbidden"),
            ]
        );
    }

    #[test]
    fn mqtt311_envelopes_hold_the_fields_and_the_original_payload() {
        let value: Value = serde_json::from_slice(&envelope(&refused())).unwrap();
        assert_eq!(
            value,
            json!({"reason": "bayeux_refused", "route": "2", "source": "mqtt",
                   "channel": "/out/a", "topic": "in/a", "error": "403::Forbidden",
                   "payload": {"t": 1}})
        );
        let mut text = refused();
        text.payload = Bytes::from_static(b"plain text");
        let value: Value = serde_json::from_slice(&envelope(&text)).unwrap();
        assert_eq!(value["payload"], json!("plain text"));
        let mut binary = refused();
        binary.payload = Bytes::from_static(&[0xde, 0xad, 0xbe, 0xef]);
        let value: Value = serde_json::from_slice(&envelope(&binary)).unwrap();
        assert_eq!(value["payload_base64"], json!("3q2+7w=="));
        assert!(value.get("payload").is_none());
    }

    #[test]
    fn the_source_is_the_side_the_message_came_from() {
        let mut letter = refused();
        assert_eq!((letter.source(), letter.name()), ("mqtt", "in/a"));
        letter.direction = Direction::BayeuxToMqtt;
        assert_eq!((letter.source(), letter.name()), ("bayeux", "/out/a"));
    }
}

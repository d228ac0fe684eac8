//! A test MQTT client on the library's MQTT client, collecting what arrives and what happens
//! to its connection, and helpers for payloads of the form `{"id": n}`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use bayeux_mqtt_bridge::backoff::BackoffOptions;
use bayeux_mqtt_bridge::mqtt::{
    self, IncomingMessage, MqttEvent, MqttHandle, MqttOptions, Properties, QoS, SubscriptionSpec,
};
use bytes::Bytes;
use serde_json::{Value, json};

use super::inbox::Inbox;
use super::mosquitto::Mosquitto;

/// Longest any single expected event may take unless a test asks for another deadline
/// ([`MqttPeer::connect_with`]). Generous: it only bounds failures.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Collecting what arrives
// ---------------------------------------------------------------------------------------------

/// An MQTT message as a test client received it.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// MQTT 5 properties (empty on 3.1.1).
    pub properties: Properties,
}

impl Got {
    /// The value of the user property `name` (the last one, if repeated).
    pub fn user_property(&self, name: &str) -> Option<&str> {
        self.properties
            .user
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON ({e}): {:?}", self.topic, self))
    }

    /// The `id` of a `{"id": n}` payload; panics (failing the test) on any other payload.
    pub fn id(&self) -> u64 {
        expect_id(&self.json())
    }
}

/// The `id` of `{"id": n}`, if `data` has a numeric one.
pub fn id_of(data: &Value) -> Option<u64> {
    data.get("id").and_then(Value::as_u64)
}

/// The `id` of `{"id": n}`; panics (failing the test) when `data` has no numeric id.
pub fn expect_id(data: &Value) -> u64 {
    id_of(data).unwrap_or_else(|| panic!("no numeric id in {data}"))
}

/// How often each id arrived.
pub fn id_counts(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

/// The ids of `wanted` that never arrived.
pub fn missing(counts: &BTreeMap<u64, usize>, wanted: impl IntoIterator<Item = u64>) -> Vec<u64> {
    wanted
        .into_iter()
        .filter(|id| !counts.contains_key(id))
        .collect()
}

/// How many arrivals were repeats of an id that had arrived before.
pub fn duplicates(counts: &BTreeMap<u64, usize>) -> usize {
    counts.values().map(|n| n - 1).sum()
}

// ---------------------------------------------------------------------------------------------
// Test clients
// ---------------------------------------------------------------------------------------------

/// Options for a test MQTT client: fast, jitter-free reconnects.
pub fn mqtt_options(broker: &Mosquitto, client_id: &str) -> MqttOptions {
    let mut options = MqttOptions::new(broker.host(), broker.port(), client_id);
    options.backoff = BackoffOptions {
        increment: Duration::from_millis(100),
        max: Duration::from_secs(1),
        jitter: 0.0,
    };
    options.connect_timeout = Duration::from_secs(2);
    options
}

/// What happened to a test MQTT client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Life {
    Connected { session_present: bool },
    Disconnected,
}

/// A test client on the library's MQTT client. A background task acknowledges and collects
/// every message, and records the connection's events.
pub struct MqttPeer {
    pub handle: MqttHandle,
    pub inbox: Inbox<Got>,
    pub life: Inbox<Life>,
    /// Deadline of each of this client's waits.
    wait: Duration,
}

impl MqttPeer {
    /// Connects, subscribes every filter at QoS 1 and waits until each is subscribed (or the
    /// broker resumed a session, which keeps them); every wait of the client is [`WAIT`].
    pub async fn connect(options: MqttOptions, filters: &[&str]) -> MqttPeer {
        let filters: Vec<(&str, QoS)> = filters.iter().map(|f| (*f, QoS::AtLeastOnce)).collect();
        MqttPeer::connect_with(options, &filters, WAIT).await
    }

    /// Connects and waits until every filter is subscribed at its QoS (or the broker resumed
    /// a session, which keeps them); `wait` bounds this and each later wait of the client.
    pub async fn connect_with(
        options: MqttOptions,
        filters: &[(&str, QoS)],
        wait: Duration,
    ) -> MqttPeer {
        let name = options.client_id.clone();
        let specs = filters
            .iter()
            .map(|(filter, qos)| SubscriptionSpec::new(*filter, *qos))
            .collect();
        let (handle, mut events) = mqtt::start(options, specs).expect("valid MQTT options");
        let inbox = Inbox::new();
        let life = Inbox::new();
        let mut pending: BTreeSet<String> = filters.iter().map(|(f, _)| f.to_string()).collect();
        let mut connected = false;
        let deadline = tokio::time::Instant::now() + wait;
        while !connected || !pending.is_empty() {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "MQTT client {name}: not connected and subscribed within {wait:?} \
                         (connected: {connected}, pending: {pending:?})"
                    )
                })
                .unwrap_or_else(|| panic!("MQTT client {name} stopped"));
            match event {
                MqttEvent::Connected { session_present } => {
                    connected = true;
                    life.push(Life::Connected { session_present });
                    if session_present {
                        pending.clear();
                    }
                }
                MqttEvent::Subscribed { filter } => {
                    pending.remove(&filter);
                }
                MqttEvent::SubscribeFailed { filter, reason } => {
                    panic!("MQTT client {name}: subscription {filter} refused: {reason}")
                }
                MqttEvent::Message(message) => record(&handle, &inbox, message),
                _ => {}
            }
        }
        let (task_handle, task_inbox, task_life) = (handle.clone(), inbox.clone(), life.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    MqttEvent::Message(message) => record(&task_handle, &task_inbox, message),
                    MqttEvent::Connected { session_present } => {
                        task_life.push(Life::Connected { session_present })
                    }
                    MqttEvent::Disconnected { .. } => task_life.push(Life::Disconnected),
                    _ => {}
                }
            }
        });
        MqttPeer {
            handle,
            inbox,
            life,
            wait,
        }
    }

    /// Publishes at QoS 1 and waits for the broker's acknowledgement.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) {
        self.publish_qos(topic, payload, QoS::AtLeastOnce).await;
    }

    /// Publishes at `qos` and waits for the broker's acknowledgement.
    pub async fn publish_qos(&self, topic: &str, payload: impl Into<Bytes>, qos: QoS) {
        let wait = self.wait;
        tokio::time::timeout(wait, self.handle.publish(topic, payload.into(), qos, false))
            .await
            .unwrap_or_else(|_| panic!("publish to {topic}: not acknowledged within {wait:?}"))
            .unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
    }

    /// Publishes at QoS 1 with MQTT 5 `properties` and waits for the broker's acknowledgement.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        properties: Properties,
    ) {
        let wait = self.wait;
        let publish = async {
            self.handle
                .publish_queued_with(
                    topic,
                    payload.into(),
                    QoS::AtLeastOnce,
                    false,
                    Some(std::sync::Arc::new(properties)),
                )
                .await?
                .await
        };
        tokio::time::timeout(wait, publish)
            .await
            .unwrap_or_else(|_| panic!("publish to {topic}: not acknowledged within {wait:?}"))
            .unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
    }

    /// The first message that arrived on exactly `topic`, waiting for it.
    pub async fn first_on(&self, topic: &str) -> Got {
        self.inbox
            .wait_until(&format!("a message on {topic}"), self.wait, |got| {
                got.iter().any(|g| g.topic == topic)
            })
            .await;
        self.inbox
            .snapshot()
            .into_iter()
            .find(|g| g.topic == topic)
            .unwrap_or_else(|| panic!("no message on {topic}"))
    }

    /// Publishes `{"id": n}` for every id at QoS 1, pipelined, and waits for every PUBACK.
    pub async fn publish_ids(&self, topic: &str, ids: Range<u64>) {
        let wait = self.wait;
        let mut completions = Vec::new();
        for id in ids {
            let payload = Bytes::from(json!({ "id": id }).to_string());
            let completion = self
                .handle
                .publish_queued(topic, payload, QoS::AtLeastOnce, false)
                .await
                .unwrap_or_else(|e| panic!("publish of id {id} to {topic} refused: {e}"));
            completions.push((id, completion));
        }
        for (id, completion) in completions {
            tokio::time::timeout(wait, completion)
                .await
                .unwrap_or_else(|_| panic!("id {id} on {topic}: no PUBACK within {wait:?}"))
                .unwrap_or_else(|e| panic!("id {id} on {topic} failed: {e}"));
        }
    }

    /// What arrived on exactly `topic`, as JSON.
    pub fn on(&self, topic: &str) -> Vec<Value> {
        self.inbox
            .snapshot()
            .iter()
            .filter(|g| g.topic == topic)
            .map(Got::json)
            .collect()
    }

    /// Waits until `payload` arrived on `topic`.
    pub async fn wait_for(&self, topic: &str, payload: &Value) {
        self.inbox
            .wait_until(&format!("{payload} on MQTT {topic}"), self.wait, |got| {
                got.iter().any(|g| g.topic == topic && g.json() == *payload)
            })
            .await;
    }

    /// How often each `{"id": n}` arrived on topics starting with `prefix`; other payloads
    /// there are skipped.
    pub fn ids(&self, prefix: &str) -> BTreeMap<u64, usize> {
        id_counts(ids_on(&self.inbox.snapshot(), prefix, |g| id_of(&g.json())))
    }

    /// How often each `{"id": n}` arrived on topics starting with `prefix`; any other payload
    /// there fails the test.
    pub fn ids_strict(&self, prefix: &str) -> BTreeMap<u64, usize> {
        id_counts(ids_on(&self.inbox.snapshot(), prefix, |g| Some(g.id())))
    }

    /// Waits until every id of `wanted` arrived on topics starting with `prefix`; other
    /// payloads there are skipped.
    pub async fn wait_for_ids(
        &self,
        what: &str,
        prefix: &str,
        wanted: impl IntoIterator<Item = u64>,
    ) {
        self.wait_for_ids_by(what, prefix, wanted, |g| id_of(&g.json()))
            .await;
    }

    /// Waits until every id of `wanted` arrived on topics starting with `prefix`; any other
    /// payload there fails the test.
    pub async fn wait_for_ids_strict(
        &self,
        what: &str,
        prefix: &str,
        wanted: impl IntoIterator<Item = u64>,
    ) {
        self.wait_for_ids_by(what, prefix, wanted, |g| Some(g.id()))
            .await;
    }

    async fn wait_for_ids_by(
        &self,
        what: &str,
        prefix: &str,
        wanted: impl IntoIterator<Item = u64>,
        id: fn(&Got) -> Option<u64>,
    ) {
        let wanted: BTreeSet<u64> = wanted.into_iter().collect();
        self.inbox
            .wait_until(what, self.wait, |got| {
                wanted.is_subset(&ids_on(got, prefix, id).collect())
            })
            .await;
    }
}

/// The ids (by `id`) of what arrived on topics starting with `prefix`.
fn ids_on<'a>(
    got: &'a [Got],
    prefix: &'a str,
    id: impl Fn(&Got) -> Option<u64> + 'a,
) -> impl Iterator<Item = u64> + 'a {
    got.iter()
        .filter(move |g| g.topic.starts_with(prefix))
        .filter_map(id)
}

/// Acknowledges `message` and collects it.
pub fn record(handle: &MqttHandle, inbox: &Inbox<Got>, message: IncomingMessage) {
    let IncomingMessage {
        topic,
        payload,
        qos,
        retain,
        properties,
        token,
    } = message;
    handle.ack(token);
    inbox.push(Got {
        topic,
        payload,
        qos,
        retain,
        properties,
    });
}

//! A test MQTT client on the library's MQTT client, collecting what arrives, and helpers for
//! payloads of the form `{"id": n}`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use bayeux_mqtt_bridge::backoff::BackoffOptions;
use bayeux_mqtt_bridge::mqtt::{
    self, IncomingMessage, MqttEvent, MqttHandle, MqttOptions, QoS, SubscriptionSpec,
};
use bytes::Bytes;
use serde_json::{Value, json};

use super::inbox::Inbox;
use super::mosquitto::Mosquitto;

/// Longest any single expected event may take. Generous: it only bounds failures.
const WAIT: Duration = Duration::from_secs(20);

/// An MQTT message as a test client received it.
#[derive(Debug, Clone)]
pub struct Got {
    pub topic: String,
    pub payload: Bytes,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("payload on {} is not JSON ({e}): {:?}", self.topic, self))
    }
}

pub fn id_of(data: &Value) -> Option<u64> {
    data.get("id").and_then(Value::as_u64)
}

/// How often each id arrived.
pub fn id_counts(ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, usize> {
    let mut counts = BTreeMap::new();
    for id in ids {
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
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

/// A test client on the library's MQTT client. A background task acknowledges and collects
/// every message.
pub struct MqttPeer {
    pub handle: MqttHandle,
    pub inbox: Inbox<Got>,
}

impl MqttPeer {
    /// Connects and waits until every filter is subscribed.
    pub async fn connect(options: MqttOptions, filters: &[&str]) -> MqttPeer {
        let name = options.client_id.clone();
        let specs = filters
            .iter()
            .map(|filter| SubscriptionSpec::new(*filter, QoS::AtLeastOnce))
            .collect();
        let (handle, mut events) = mqtt::start(options, specs).expect("valid MQTT options");
        let inbox = Inbox::new();
        let mut pending: BTreeSet<String> = filters.iter().map(|f| f.to_string()).collect();
        let mut connected = false;
        let deadline = tokio::time::Instant::now() + WAIT;
        while !connected || !pending.is_empty() {
            let event = tokio::time::timeout_at(deadline, events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "MQTT client {name}: not connected and subscribed within {WAIT:?} \
                         (connected: {connected}, pending: {pending:?})"
                    )
                })
                .unwrap_or_else(|| panic!("MQTT client {name} stopped"));
            match event {
                MqttEvent::Connected { session_present } => {
                    connected = true;
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
        let (task_handle, task_inbox) = (handle.clone(), inbox.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let MqttEvent::Message(message) = event {
                    record(&task_handle, &task_inbox, message);
                }
            }
        });
        MqttPeer { handle, inbox }
    }

    /// Publishes at QoS 1 and waits for the broker's acknowledgement.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) {
        tokio::time::timeout(
            WAIT,
            self.handle
                .publish(topic, payload.into(), QoS::AtLeastOnce, false),
        )
        .await
        .unwrap_or_else(|_| panic!("publish to {topic}: not acknowledged within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("publish to {topic} failed: {e}"));
    }

    /// Publishes `{"id": n}` for every id at QoS 1, pipelined, and waits for every PUBACK.
    pub async fn publish_ids(&self, topic: &str, ids: Range<u64>) {
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
            tokio::time::timeout(WAIT, completion)
                .await
                .unwrap_or_else(|_| panic!("id {id} on {topic}: no PUBACK within {WAIT:?}"))
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
            .wait_until(&format!("{payload} on MQTT {topic}"), WAIT, |got| {
                got.iter().any(|g| g.topic == topic && g.json() == *payload)
            })
            .await;
    }

    /// How often each `{"id": n}` arrived on topics starting with `prefix`.
    pub fn ids(&self, prefix: &str) -> BTreeMap<u64, usize> {
        id_counts(
            self.inbox
                .snapshot()
                .iter()
                .filter(|g| g.topic.starts_with(prefix))
                .filter_map(|g| id_of(&g.json())),
        )
    }

    /// Waits until every id of `wanted` arrived on topics starting with `prefix`.
    pub async fn wait_for_ids(&self, what: &str, prefix: &str, wanted: &BTreeSet<u64>) {
        self.inbox
            .wait_until(what, WAIT, |got| {
                let have: BTreeSet<u64> = got
                    .iter()
                    .filter(|g| g.topic.starts_with(prefix))
                    .filter_map(|g| id_of(&g.json()))
                    .collect();
                wanted.is_subset(&have)
            })
            .await;
    }
}

pub fn record(handle: &MqttHandle, inbox: &Inbox<Got>, message: IncomingMessage) {
    handle.ack(message.token);
    inbox.push(Got {
        topic: message.topic,
        payload: message.payload,
    });
}

//! A test Bayeux client on the library's Bayeux client, collecting the deliveries of its
//! subscription (if any).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use bayeux_mqtt_bridge::bayeux::{Client, Data, Message};
use serde_json::{Value, json};

use super::bayeux_client::{confirmed, fast_options, start as start_bayeux_client};
use super::inbox::Inbox;
use super::mqtt_peer::{expect_id, id_counts, id_of};

/// A test client on the library's Bayeux client. Deliveries of its subscription (if any) are
/// collected by a background task, and its events are drained by another.
pub struct BayeuxPeer {
    pub client: Client,
    pub inbox: Inbox<Message>,
    /// Deadline of each of this client's waits.
    wait: Duration,
}

impl BayeuxPeer {
    /// A client that only publishes (it handshakes in the background; publishes wait). `wait`
    /// bounds each of its waits.
    pub fn publisher(url: &str, wait: Duration) -> BayeuxPeer {
        let (client, mut events) = start_bayeux_client(fast_options(url), Vec::new());
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        BayeuxPeer {
            client,
            inbox: Inbox::new(),
            wait,
        }
    }

    /// A client subscribed to `pattern`; returns once the server confirmed it. `wait` bounds
    /// each of its later waits.
    pub async fn subscriber(url: &str, pattern: &str, wait: Duration) -> BayeuxPeer {
        let (client, mut events) = start_bayeux_client(fast_options(url), Vec::new());
        let mut subscription = client
            .subscribe(pattern)
            .await
            .unwrap_or_else(|e| panic!("subscribe {pattern}: {e}"));
        confirmed(&mut events, pattern).await;
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let inbox = Inbox::new();
        let task_inbox = inbox.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.recv().await {
                task_inbox.push(message);
            }
        });
        BayeuxPeer {
            client,
            inbox,
            wait,
        }
    }

    /// Publishes and waits for the server's `successful: true`.
    pub async fn publish(&self, channel: &str, data: impl Into<Data>) {
        let wait = self.wait;
        tokio::time::timeout(wait, self.client.publish(channel, data))
            .await
            .unwrap_or_else(|_| panic!("publish on {channel}: no verdict within {wait:?}"))
            .unwrap_or_else(|e| panic!("publish on {channel} failed: {e}"));
    }

    /// Publishes `{"id": n}` for every id, pipelined, and waits for every verdict.
    pub async fn publish_ids(&self, channel: &str, ids: Range<u64>) {
        let wait = self.wait;
        let mut verdicts = Vec::new();
        for id in ids {
            let verdict = self
                .client
                .publish_queued(channel, json!({ "id": id }), None)
                .await
                .unwrap_or_else(|e| panic!("publish of id {id} on {channel} refused: {e}"));
            verdicts.push((id, verdict));
        }
        for (id, verdict) in verdicts {
            tokio::time::timeout(wait, verdict)
                .await
                .unwrap_or_else(|_| panic!("id {id} on {channel}: no verdict within {wait:?}"))
                .unwrap_or_else(|e| panic!("id {id} on {channel} failed: {e}"));
        }
    }

    /// The data of every delivery on exactly `channel`.
    pub fn on(&self, channel: &str) -> Vec<Value> {
        self.inbox
            .snapshot()
            .into_iter()
            .filter(|m| m.channel == channel)
            .map(|m| m.data_value().unwrap_or(Value::Null))
            .collect()
    }

    /// Waits until `data` arrived on `channel`.
    pub async fn wait_for(&self, channel: &str, data: &Value) {
        self.inbox
            .wait_until(
                &format!("{data} on Bayeux {channel}"),
                self.wait,
                |messages| {
                    messages
                        .iter()
                        .any(|m| m.channel == channel && m.data_value().as_ref() == Some(data))
                },
            )
            .await;
    }

    /// How often each `{"id": n}` arrived on channels starting with `prefix`; other
    /// deliveries there are skipped.
    pub fn ids(&self, prefix: &str) -> BTreeMap<u64, usize> {
        id_counts(
            self.inbox
                .snapshot()
                .iter()
                .filter(|m| m.channel.starts_with(prefix))
                .filter_map(|m| id_of(&m.data_value()?)),
        )
    }

    /// How often each `{"id": n}` arrived on channels starting with `prefix`; any other
    /// delivery there (also one without data) fails the test.
    pub fn ids_strict(&self, prefix: &str) -> BTreeMap<u64, usize> {
        id_counts(
            self.inbox
                .snapshot()
                .iter()
                .filter(|m| m.channel.starts_with(prefix))
                .map(|m| expect_id(&m.data_value().unwrap_or(Value::Null))),
        )
    }

    /// Waits until every id of `wanted` arrived on channels starting with `prefix`; other
    /// deliveries there are skipped.
    pub async fn wait_for_ids(
        &self,
        what: &str,
        prefix: &str,
        wanted: impl IntoIterator<Item = u64>,
    ) {
        let wanted: BTreeSet<u64> = wanted.into_iter().collect();
        self.inbox
            .wait_until(what, self.wait, |messages| {
                let have: BTreeSet<u64> = messages
                    .iter()
                    .filter(|m| m.channel.starts_with(prefix))
                    .filter_map(|m| id_of(&m.data_value()?))
                    .collect();
                wanted.is_subset(&have)
            })
            .await;
    }
}

/// Publishes `data` on `channel` as a plain HTTP client of the CometD Node server: a
/// handshake, then one publish in the session the `BAYEUX_BROWSER` cookie names. The
/// project's Bayeux client refuses to publish on a channel with a control character, but
/// cometd-nodejs-server checks nothing and relays such a channel to its subscribers, as a
/// buggy or hostile server or publisher could; this sends one to it.
pub async fn raw_cometd_publish(url: &str, channel: &str, data: Value) {
    let http = reqwest::Client::builder()
        .cookie_store(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client");
    let post = |body: Value| {
        let request = http.post(url).json(&body);
        async move {
            let reply: Value = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("POST {body}: {e}"))
                .json()
                .await
                .unwrap_or_else(|e| panic!("reply to {body}: {e}"));
            reply
        }
    };
    let handshake = post(json!([{
        "channel": "/meta/handshake",
        "version": "1.0",
        "supportedConnectionTypes": ["long-polling"],
    }]))
    .await;
    let client_id = handshake[0]["clientId"]
        .as_str()
        .unwrap_or_else(|| panic!("handshake reply without clientId: {handshake}"))
        .to_owned();
    let reply = post(json!([{
        "channel": channel,
        "clientId": client_id,
        "id": "1",
        "data": data,
    }]))
    .await;
    assert_eq!(
        reply[0]["successful"],
        json!(true),
        "the server accepted the publish on {channel:?}: {reply}"
    );
}

//! Salesforce's replay extension (`ext.replay`): resume a subscription from a stored position.
//!
//! Salesforce keeps the events of a channel for a retention window (24 h or 72 h) and numbers
//! each with an opaque, increasing but non-contiguous `replayId`. A subscriber says where to
//! resume from, per channel, in the `/meta/subscribe` request; the server then delivers the
//! retained events *after* that id before the live ones.
//!
//! Wire format (Salesforce "Message Durability"; EMP-Connector `ReplayExtension`):
//!
//! | message                   | field                                                       |
//! |---------------------------|-------------------------------------------------------------|
//! | handshake request         | `ext.replay: true`                                          |
//! | handshake reply           | `ext.replay: true` when the server supports replay          |
//! | `/meta/subscribe` request | `ext.replay: {"<channel>": <replayId>, ...}` (JSON numbers) |
//! | delivery                  | `data.event.replayId` (number)                              |
//!
//! The replay id is [`NEW_EVENTS_ONLY`] (`-1`, only events published from now on),
//! [`ALL_RETAINED`] (`-2`, every retained event), or the id of the last event processed. The
//! key of the map is the subscribed channel without any `?query` (a filtered PushTopic
//! subscription `/topic/T?Field=x` resumes under `/topic/T`). EMP-Connector sends its whole
//! map on each subscribe; sending the entries of the channels being subscribed is enough, and
//! this extension always sends one for each (the extension's default when none was
//! [`set`](ReplayExtension::set)), so the server never reports the channel as missing from
//! the map.
//!
//! **The stored position moves only when the caller calls [`ReplayExtension::set`].**
//! Incoming events are read ([`ReplayExtension::last_seen`], [`replay_id`]) but never advance
//! it: unlike EMP-Connector, whose extension overwrites the position with every id it
//! *receives* (before the application has processed the event), a caller here sets the id of
//! the last event it has fully handled (for the bridge: whose MQTT publish the broker
//! acknowledged), so a re-handshake or resubscribe resumes after that event and nothing still
//! in flight is skipped. Nothing is persisted here either; storing positions across restarts
//! is the caller's job.
//!
//! Positions are kept per key as given to [`ReplayExtension::set`]; the caller bounds them
//! (the extension cannot know which keys matter). Replay is per concrete channel: for a
//! wildcard subscription the map would carry the pattern as the key, which Salesforce does not
//! resume from, so resume named channels.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use super::Extension;
use crate::bayeux::channel::{META_HANDSHAKE, META_SUBSCRIBE};
use crate::bayeux::message::{Kind, Message};

/// The `ext` key of this extension.
pub const REPLAY_FIELD: &str = "replay";
/// Replay id asking for new events only (the server's tip).
pub const NEW_EVENTS_ONLY: i64 = -1;
/// Replay id asking for every event still in the retention window.
pub const ALL_RETAINED: i64 = -2;
/// The most channels whose last received replay id [`ReplayExtension::last_seen`] tracks.
/// Deliveries on further channels are not tracked: a server that sends ever new channel
/// names (to a wildcard subscription) cannot grow the map without bound.
pub const MAX_LAST_SEEN: usize = 1024;

/// The client side of Salesforce's replay extension, holding a channel → replay id map. Add
/// it to [`ClientOptions::extensions`](crate::bayeux::ClientOptions::extensions) and keep a
/// clone of the `Arc` to set positions and read what arrived.
///
/// ```
/// use std::sync::Arc;
/// use bayeux_mqtt_bridge::bayeux::ClientOptions;
/// use bayeux_mqtt_bridge::bayeux::ext::{ALL_RETAINED, Extension, ReplayExtension};
///
/// let replay = Arc::new(ReplayExtension::new());
/// replay.set("/event/Order__e", 4711); // resume after the stored checkpoint
/// replay.set("/data/AccountChangeEvent", ALL_RETAINED);
/// let mut options = ClientOptions::new("https://example.my.salesforce.com/cometd/62.0".parse()?);
/// options.extensions.push(Arc::clone(&replay) as Arc<dyn Extension>);
/// # Ok::<(), url::ParseError>(())
/// ```
#[derive(Debug)]
pub struct ReplayExtension {
    /// Sent for channels without an entry.
    default_id: i64,
    state: Mutex<ReplayState>,
}

#[derive(Debug, Default)]
struct ReplayState {
    /// Whether the current session's handshake reply accepted `ext.replay`.
    enabled: bool,
    /// Where each channel resumes from: only [`ReplayExtension::set`] writes it.
    positions: HashMap<String, i64>,
    /// The replay id of the most recent event received on each channel.
    last_seen: HashMap<String, i64>,
}

impl Default for ReplayExtension {
    fn default() -> Self {
        ReplayExtension::new()
    }
}

impl ReplayExtension {
    /// An empty map whose channels resume with [`NEW_EVENTS_ONLY`] until [`set`](Self::set).
    pub fn new() -> Self {
        ReplayExtension::with_default(NEW_EVENTS_ONLY)
    }

    /// An empty map whose channels resume from `default_id` (usually [`NEW_EVENTS_ONLY`] or
    /// [`ALL_RETAINED`]) until [`set`](Self::set).
    pub fn with_default(default_id: i64) -> Self {
        ReplayExtension {
            default_id,
            state: Mutex::new(ReplayState::default()),
        }
    }

    /// The replay id sent for channels without an entry.
    pub fn default_id(&self) -> i64 {
        self.default_id
    }

    /// Whether the server accepted `ext.replay` for the current session. Before that (and
    /// with servers without replay) subscribes carry no replay map.
    pub fn is_enabled(&self) -> bool {
        self.state().enabled
    }

    /// Sets where `channel` resumes from at its next `/meta/subscribe` (after a re-handshake,
    /// a failed subscribe, or a new subscription): the id of the last event fully processed,
    /// or [`NEW_EVENTS_ONLY`] / [`ALL_RETAINED`]. This is the only way the position moves. A
    /// subscription already confirmed is not affected until it is sent again.
    pub fn set(&self, channel: &str, replay_id: i64) {
        self.state()
            .positions
            .insert(channel_key(channel).to_owned(), replay_id);
    }

    /// The position [`set`](Self::set) for `channel`, if any.
    pub fn get(&self, channel: &str) -> Option<i64> {
        self.state().positions.get(channel_key(channel)).copied()
    }

    /// Forgets the position of `channel` (it resumes from the default again) and returns it.
    pub fn remove(&self, channel: &str) -> Option<i64> {
        self.state().positions.remove(channel_key(channel))
    }

    /// The replay id the next subscribe to `channel` will carry: its position, or the
    /// default.
    pub fn resume_from(&self, channel: &str) -> i64 {
        self.get(channel).unwrap_or(self.default_id)
    }

    /// Every position set, by channel.
    pub fn positions(&self) -> BTreeMap<String, i64> {
        let state = self.state();
        state
            .positions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The replay id of the most recent event received on `channel` while replay was enabled
    /// (received by this client, not necessarily processed by its caller). Observability only:
    /// it does not change where the channel resumes from. At most [`MAX_LAST_SEEN`] channels
    /// are tracked, the first ones seen.
    pub fn last_seen(&self, channel: &str) -> Option<i64> {
        self.state().last_seen.get(channel_key(channel)).copied()
    }

    fn state(&self) -> MutexGuard<'_, ReplayState> {
        // Every write is a single insert, remove or assignment: a panic elsewhere while the
        // lock was held cannot leave the maps half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds the replay map for the channels of a subscribe request.
    fn add_replay_map(&self, message: &mut Message) {
        let channels = message.subscriptions();
        if channels.is_empty() {
            return;
        }
        let entries: Vec<(String, i64)> = {
            let state = self.state();
            if !state.enabled {
                return;
            }
            channels
                .iter()
                .map(|c| {
                    let key = channel_key(c);
                    let id = state.positions.get(key).copied();
                    (key.to_owned(), id.unwrap_or(self.default_id))
                })
                .collect()
        };
        let ext = message.ext.get_or_insert_with(Map::new);
        let slot = ext
            .entry(REPLAY_FIELD)
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        if let Value::Object(map) = slot {
            for (key, id) in entries {
                map.insert(key, Value::from(id));
            }
        }
    }
}

impl Extension for ReplayExtension {
    fn outgoing(&self, message: &mut Message) {
        if message.channel == META_HANDSHAKE {
            // A new session: replay is off until this handshake's reply accepts it.
            self.state().enabled = false;
            message
                .ext
                .get_or_insert_with(Map::new)
                .insert(REPLAY_FIELD.to_owned(), Value::Bool(true));
        } else if message.channel == META_SUBSCRIBE {
            self.add_replay_map(message);
        }
    }

    fn incoming(&self, message: &mut Message) {
        if message.channel == META_HANDSHAKE {
            if message.is_successful() {
                let accepted = message.ext.as_ref().and_then(|e| e.get(REPLAY_FIELD));
                self.state().enabled = accepted == Some(&Value::Bool(true));
            }
        } else if message.kind() == Kind::Delivery
            && let Some(id) = replay_id(message)
        {
            let mut state = self.state();
            let key = channel_key(&message.channel);
            if state.enabled {
                if let Some(seen) = state.last_seen.get_mut(key) {
                    *seen = id;
                } else if state.last_seen.len() < MAX_LAST_SEEN {
                    state.last_seen.insert(key.to_owned(), id);
                }
            }
        }
    }
}

/// The replay id of a delivered event (`data.event.replayId`), if it has one.
pub fn replay_id(message: &Message) -> Option<i64> {
    /// Just the path to the id: the rest of the event is skipped, not built.
    #[derive(serde::Deserialize)]
    struct Delivered {
        event: Option<EventHeader>,
    }
    #[derive(serde::Deserialize)]
    struct EventHeader {
        #[serde(rename = "replayId")]
        replay_id: Option<Value>,
    }
    let delivered: Delivered = message.data.as_ref()?.parse().ok()?;
    delivered.event?.replay_id?.as_i64()
}

/// The key a channel has in the replay map: the channel without any `?query`.
pub fn channel_key(channel: &str) -> &str {
    channel.split_once('?').map_or(channel, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn handshake_reply(successful: bool, ext: Option<Value>) -> Message {
        let mut m = Message::new(META_HANDSHAKE);
        m.successful = Some(successful);
        m.ext = ext.map(|v| v.as_object().cloned().unwrap());
        m
    }

    /// A hook that has sent a handshake and received a successful reply with `ext`.
    fn after_handshake(hook: ReplayExtension, ext: Option<Value>) -> ReplayExtension {
        hook.outgoing(&mut Message::new(META_HANDSHAKE));
        hook.incoming(&mut handshake_reply(true, ext));
        hook
    }

    fn enabled(hook: ReplayExtension) -> ReplayExtension {
        after_handshake(hook, Some(json!({"replay": true, "payload.format": true})))
    }

    /// `ext.replay` of an outgoing subscribe to `subscription`.
    fn subscribe_replay(hook: &ReplayExtension, subscription: Value) -> Option<Value> {
        let mut m = Message::new(META_SUBSCRIBE);
        m.subscription = Some(subscription);
        hook.outgoing(&mut m);
        m.ext.and_then(|mut e| e.remove(REPLAY_FIELD))
    }

    fn delivery(channel: &str, data: Value) -> Message {
        let mut m = Message::new(channel);
        m.data = Some(data.into());
        m
    }

    #[test]
    fn the_handshake_asks_for_replay_and_keeps_other_ext_fields() {
        let hook = ReplayExtension::new();
        let mut hs = Message::new(META_HANDSHAKE);
        hs.ext = json!({"auth": "t"}).as_object().cloned();
        hook.outgoing(&mut hs);
        assert_eq!(
            Value::Object(hs.ext.unwrap()),
            json!({"auth": "t", "replay": true})
        );
        assert!(!hook.is_enabled(), "asking is not agreeing");
    }

    #[test]
    fn replay_is_enabled_only_by_a_successful_reply_with_replay_true() {
        // (successful, reply ext, enabled)
        let table: Vec<(bool, Option<Value>, bool)> = vec![
            (true, Some(json!({"replay": true})), true),
            (
                true,
                Some(json!({"replay": true, "payload.format": true})),
                true,
            ),
            (true, Some(json!({"replay": false})), false),
            (true, Some(json!({"replay": "true"})), false),
            (true, Some(json!({"replay": {"enabled": true}})), false),
            (true, Some(json!({"ack": true})), false),
            (true, None, false),
            (false, Some(json!({"replay": true})), false),
        ];
        for (successful, ext, expected) in table {
            let case = format!("successful {successful}, ext {ext:?}");
            let hook = ReplayExtension::new();
            hook.outgoing(&mut Message::new(META_HANDSHAKE));
            hook.incoming(&mut handshake_reply(successful, ext));
            assert_eq!(hook.is_enabled(), expected, "{case}");
            let sent = subscribe_replay(&hook, json!("/event/Foo"));
            assert_eq!(sent.is_some(), expected, "{case}: {sent:?}");
        }
    }

    #[test]
    fn subscribes_carry_the_position_set_or_the_default() {
        let hook = enabled(ReplayExtension::new());
        hook.set("/event/Foo", 4711);
        hook.set("/data/ChangeEvents", ALL_RETAINED);
        // (subscription, expected ext.replay)
        let table = [
            (json!("/event/Foo"), json!({"/event/Foo": 4711})),
            (
                json!("/data/ChangeEvents"),
                json!({"/data/ChangeEvents": -2}),
            ),
            (json!("/event/Bar"), json!({"/event/Bar": -1})),
            (
                json!(["/event/Foo", "/event/Bar"]),
                json!({"/event/Foo": 4711, "/event/Bar": -1}),
            ),
            (
                json!("/topic/Orders?Status=Open"),
                json!({"/topic/Orders": -1}),
            ),
        ];
        for (subscription, expected) in table {
            let case = format!("{subscription}");
            assert_eq!(
                subscribe_replay(&hook, subscription),
                Some(expected),
                "{case}"
            );
        }
    }

    #[test]
    fn the_default_is_configurable() {
        let hook = enabled(ReplayExtension::with_default(ALL_RETAINED));
        assert_eq!(hook.default_id(), ALL_RETAINED);
        assert_eq!(
            subscribe_replay(&hook, json!("/event/Foo")),
            Some(json!({"/event/Foo": -2}))
        );
        assert_eq!(hook.resume_from("/event/Foo"), ALL_RETAINED);
    }

    #[test]
    fn positions_are_keyed_by_channel_without_query() {
        let hook = ReplayExtension::new();
        hook.set("/topic/Orders?Status=Open", 12);
        assert_eq!(hook.get("/topic/Orders"), Some(12));
        assert_eq!(hook.get("/topic/Orders?Status=Closed"), Some(12));
        assert_eq!(
            hook.positions(),
            BTreeMap::from([("/topic/Orders".to_owned(), 12)])
        );
        assert_eq!(hook.remove("/topic/Orders"), Some(12));
        assert_eq!(hook.get("/topic/Orders"), None);
        assert_eq!(hook.resume_from("/topic/Orders"), NEW_EVENTS_ONLY);
    }

    #[test]
    fn an_existing_replay_map_is_merged_into() {
        let hook = enabled(ReplayExtension::new());
        hook.set("/event/Foo", 5);
        let mut m = Message::new(META_SUBSCRIBE);
        m.subscription = Some(json!("/event/Foo"));
        m.ext = json!({"replay": {"/event/Other": 1}, "x": 1})
            .as_object()
            .cloned();
        hook.outgoing(&mut m);
        assert_eq!(
            Value::Object(m.ext.unwrap()),
            json!({"replay": {"/event/Other": 1, "/event/Foo": 5}, "x": 1})
        );
    }

    #[test]
    fn deliveries_are_seen_but_do_not_move_the_position() {
        let hook = enabled(ReplayExtension::new());
        hook.set("/event/Foo", 10);
        for id in [11, 12, 13] {
            let data = json!({"event": {"replayId": id}, "payload": {"n": id}});
            hook.incoming(&mut delivery("/event/Foo", data));
        }
        assert_eq!(hook.last_seen("/event/Foo"), Some(13));
        assert_eq!(hook.get("/event/Foo"), Some(10), "only set() moves it");
        assert_eq!(
            subscribe_replay(&hook, json!("/event/Foo")),
            Some(json!({"/event/Foo": 10}))
        );
        hook.set("/event/Foo", 12);
        assert_eq!(
            subscribe_replay(&hook, json!("/event/Foo")),
            Some(json!({"/event/Foo": 12}))
        );
    }

    #[test]
    fn messages_without_a_numeric_replay_id_are_not_seen() {
        let hook = enabled(ReplayExtension::new());
        let cases = [
            delivery("/event/Foo", json!({"payload": 1})),
            delivery("/event/Foo", json!({"event": {"replayId": "7"}})),
            delivery("/event/Foo", json!({"event": {}})),
            delivery("/event/Foo", json!(null)),
            Message::new("/event/Foo"),
        ];
        for mut m in cases {
            let case = format!("{m:?}");
            assert_eq!(replay_id(&m), None, "{case}");
            hook.incoming(&mut m);
            assert_eq!(hook.last_seen("/event/Foo"), None, "{case}");
        }
    }

    #[test]
    fn without_agreement_nothing_is_sent_or_seen() {
        let hook = after_handshake(ReplayExtension::new(), None);
        hook.set("/event/Foo", 10);
        assert_eq!(subscribe_replay(&hook, json!("/event/Foo")), None);
        hook.incoming(&mut delivery(
            "/event/Foo",
            json!({"event": {"replayId": 11}}),
        ));
        assert_eq!(hook.last_seen("/event/Foo"), None);
    }

    #[test]
    fn a_new_handshake_disables_replay_until_its_reply_but_keeps_positions() {
        let hook = enabled(ReplayExtension::new());
        hook.set("/event/Foo", 10);
        hook.outgoing(&mut Message::new(META_HANDSHAKE));
        assert!(!hook.is_enabled());
        hook.incoming(&mut handshake_reply(true, Some(json!({"replay": true}))));
        assert_eq!(
            subscribe_replay(&hook, json!("/event/Foo")),
            Some(json!({"/event/Foo": 10}))
        );
    }

    #[test]
    fn other_messages_are_left_alone() {
        let hook = enabled(ReplayExtension::new());
        for channel in [
            "/meta/connect",
            "/meta/unsubscribe",
            "/meta/disconnect",
            "/chat",
        ] {
            let mut m = Message::new(channel);
            m.subscription = Some(json!("/event/Foo"));
            hook.outgoing(&mut m);
            assert!(m.ext.is_none(), "{channel}");
        }
    }

    #[test]
    fn last_seen_stays_bounded_however_many_channels_are_delivered() {
        let hook = enabled(ReplayExtension::new());
        for n in 0..10_000i64 {
            let data = json!({"event": {"replayId": n}});
            hook.incoming(&mut delivery(&format!("/event/E{n}"), data));
        }
        assert_eq!(hook.state().last_seen.len(), MAX_LAST_SEEN);
        assert_eq!(hook.last_seen("/event/E0"), Some(0));
        assert_eq!(hook.last_seen("/event/E9999"), None, "past the bound");
        // A channel already tracked is still updated.
        hook.incoming(&mut delivery(
            "/event/E0",
            json!({"event": {"replayId": 77}}),
        ));
        assert_eq!(hook.last_seen("/event/E0"), Some(77));
        assert!(hook.positions().is_empty(), "deliveries set no position");
    }

    #[test]
    fn channel_keys_drop_the_query() {
        for (channel, key) in [
            ("/event/Foo", "/event/Foo"),
            ("/topic/T?a=1&b=2", "/topic/T"),
            ("/topic/T?", "/topic/T"),
        ] {
            assert_eq!(channel_key(channel), key);
        }
    }
}

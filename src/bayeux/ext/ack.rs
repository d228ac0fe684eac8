//! CometD's acknowledgement extension (`ext.ack`): reliable, ordered server-to-client delivery.
//!
//! When both sides support it, the server keeps every message it sends a session in a queue,
//! numbered by *batch*, and delivers them only on `/meta/connect` replies. Each connect reply
//! closes a batch and names it in `ext.ack`; the client's next `/meta/connect` sends back the
//! last batch number it received, and the server drops the messages up to that batch and
//! re-sends the rest. A connect reply lost on the way (a broken connection, a timed-out long
//! poll) is therefore delivered again on the next connect, in order. It covers server→client
//! messages only, and only within one session: a new handshake starts over, and messages
//! queued for a session the server has expired are gone.
//!
//! Wire format (CometD reference "Message Acknowledgment"; the CometD Java and JavaScript
//! `AckExtension`s; cometd-nodejs-server `ack-extension.js`):
//!
//! - handshake request: `ext.ack: true` (offered);
//! - handshake reply: `ext.ack: true` (old form; what cometd-nodejs-server sends), or
//!   `ext.ack: {"enabled": true, "batch": N}` (new form; CometD Java when it may deliver
//!   messages during the handshake, in batch `N`);
//! - `/meta/connect` request: `ext.ack: <last batch number received>`;
//! - `/meta/connect` reply: `ext.ack: <the batch number this reply closes>`.
//!
//! As in the CometD clients, the position starts at `0` at every handshake (servers number
//! batches from 1, so `0` acknowledges nothing; older clients sent `-1`, which the servers
//! treat the same way), is taken from a new-form handshake reply's `batch`, and then from each
//! *successful* connect reply. "Received" means the reply reached this client and went through
//! the extension hooks: acknowledgement is per transport round trip, not per application
//! processing, so it does not replace an application-level checkpoint.

use std::sync::{Mutex, MutexGuard, PoisonError};

use serde_json::{Map, Value};

use super::Extension;
use crate::bayeux::channel::{META_CONNECT, META_HANDSHAKE};
use crate::bayeux::message::Message;

/// The `ext` key of this extension.
pub const ACK_FIELD: &str = "ack";

/// The client side of CometD's acknowledgement extension. Add it to
/// [`ClientOptions::extensions`](crate::bayeux::ClientOptions::extensions) and keep a clone
/// of the `Arc` to observe it.
///
/// It always offers `ext.ack` at handshake; it sends acknowledgements only in sessions whose
/// handshake reply accepted the offer, so it is harmless with servers that lack the extension.
#[derive(Debug, Default)]
pub struct AckExtension {
    state: Mutex<AckState>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct AckState {
    /// Whether the current session's handshake reply accepted acknowledgements.
    enabled: bool,
    /// The last batch number received in this session (what the next connect sends).
    batch: i64,
}

impl AckExtension {
    /// A fresh extension: not enabled until a handshake reply accepts it.
    pub fn new() -> Self {
        AckExtension::default()
    }

    /// Whether the server accepted acknowledgements for the current session.
    pub fn is_enabled(&self) -> bool {
        self.state().enabled
    }

    /// The last batch number received in the current session: what the next `/meta/connect`
    /// carries in `ext.ack` (when enabled). `0` until the server has sent one.
    pub fn last_batch(&self) -> i64 {
        self.state().batch
    }

    fn state(&self) -> MutexGuard<'_, AckState> {
        // The state is two plain values, each write complete on its own: a panic elsewhere
        // while the lock was held cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Extension for AckExtension {
    fn outgoing(&self, message: &mut Message) {
        if message.channel == META_HANDSHAKE {
            // A new session starts over: nothing negotiated, nothing received.
            *self.state() = AckState::default();
            ext_mut(message).insert(ACK_FIELD.to_owned(), Value::Bool(true));
        } else if message.channel == META_CONNECT {
            let state = *self.state();
            if state.enabled {
                ext_mut(message).insert(ACK_FIELD.to_owned(), Value::from(state.batch));
            }
        }
    }

    fn incoming(&self, message: &mut Message) {
        if message.channel == META_HANDSHAKE {
            if !message.is_successful() {
                return;
            }
            let (enabled, batch) = negotiated(message.ext.as_ref().and_then(|e| e.get(ACK_FIELD)));
            let mut state = self.state();
            state.enabled = enabled;
            if let (true, Some(batch)) = (enabled, batch) {
                state.batch = batch;
            }
        } else if message.channel == META_CONNECT && message.is_successful() {
            let batch = message
                .ext
                .as_ref()
                .and_then(|e| e.get(ACK_FIELD))
                .and_then(Value::as_i64);
            let mut state = self.state();
            if let (true, Some(batch)) = (state.enabled, batch) {
                state.batch = batch;
            }
        }
    }
}

/// Reads a handshake reply's `ext.ack`: whether acknowledgements are enabled, and the batch
/// the new form names.
fn negotiated(field: Option<&Value>) -> (bool, Option<i64>) {
    match field {
        Some(Value::Bool(enabled)) => (*enabled, None),
        Some(Value::Object(ack)) => (
            ack.get("enabled") == Some(&Value::Bool(true)),
            ack.get("batch").and_then(Value::as_i64),
        ),
        _ => (false, None),
    }
}

fn ext_mut(message: &mut Message) -> &mut Map<String, Value> {
    message.ext.get_or_insert_with(Map::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(channel: &str, successful: Option<bool>, ext: Option<Value>) -> Message {
        let mut m = Message::new(channel);
        m.successful = successful;
        m.ext = ext.map(|v| v.as_object().cloned().unwrap());
        m
    }

    fn handshake_reply(ext: Option<Value>) -> Message {
        msg(META_HANDSHAKE, Some(true), ext)
    }

    fn connect_reply(ack: Value) -> Message {
        msg(META_CONNECT, Some(true), Some(json!({ "ack": ack })))
    }

    /// What the extension puts in `ext.ack` of an outgoing `/meta/connect`.
    fn connect_ack(hook: &AckExtension) -> Option<Value> {
        let mut connect = Message::new(META_CONNECT);
        hook.outgoing(&mut connect);
        connect.ext.and_then(|mut e| e.remove(ACK_FIELD))
    }

    /// A hook that has sent a handshake and received `reply`.
    fn after_handshake(reply: Message) -> AckExtension {
        let hook = AckExtension::new();
        hook.outgoing(&mut Message::new(META_HANDSHAKE));
        hook.incoming(&mut reply.clone());
        hook
    }

    #[test]
    fn the_handshake_offers_ack_and_keeps_other_ext_fields() {
        let hook = AckExtension::new();
        let mut hs = msg(META_HANDSHAKE, None, Some(json!({"auth": "t"})));
        hook.outgoing(&mut hs);
        assert_eq!(
            Value::Object(hs.ext.unwrap()),
            json!({"auth": "t", "ack": true})
        );
        assert!(!hook.is_enabled(), "offering is not agreeing");
    }

    #[test]
    fn the_handshake_reply_decides_whether_acks_are_enabled() {
        // (reply ext, successful, enabled, last batch)
        let table: Vec<(Option<Value>, bool, bool, i64)> = vec![
            (Some(json!({"ack": true})), true, true, 0),
            (
                Some(json!({"ack": {"enabled": true, "batch": 7}})),
                true,
                true,
                7,
            ),
            (Some(json!({"ack": {"enabled": true}})), true, true, 0),
            (
                Some(json!({"ack": {"enabled": false, "batch": 7}})),
                true,
                false,
                0,
            ),
            (Some(json!({"ack": false})), true, false, 0),
            (Some(json!({"ack": "true"})), true, false, 0),
            (Some(json!({"ack": 1})), true, false, 0),
            (Some(json!({"other": true})), true, false, 0),
            (None, true, false, 0),
            (Some(json!({"ack": true})), false, false, 0),
        ];
        for (ext, successful, enabled, batch) in table {
            let case = format!("{ext:?}, successful {successful}");
            let hook = after_handshake(msg(META_HANDSHAKE, Some(successful), ext));
            assert_eq!(hook.is_enabled(), enabled, "{case}");
            assert_eq!(hook.last_batch(), batch, "{case}");
            let expected = enabled.then(|| json!(batch));
            assert_eq!(connect_ack(&hook), expected, "{case}");
        }
    }

    #[test]
    fn connect_requests_carry_the_last_batch_received() {
        let hook = after_handshake(handshake_reply(Some(json!({"ack": true}))));
        assert_eq!(connect_ack(&hook), Some(json!(0)));
        for batch in [1, 2, 5] {
            hook.incoming(&mut connect_reply(json!(batch)));
            assert_eq!(hook.last_batch(), batch);
            assert_eq!(connect_ack(&hook), Some(json!(batch)));
        }
    }

    #[test]
    fn the_new_form_batch_is_acknowledged_by_the_first_connect() {
        let hook = after_handshake(handshake_reply(Some(
            json!({"ack": {"enabled": true, "batch": 3}}),
        )));
        assert_eq!(connect_ack(&hook), Some(json!(3)));
    }

    #[test]
    fn connect_replies_that_do_not_carry_a_batch_change_nothing() {
        let hook = after_handshake(handshake_reply(Some(json!({"ack": true}))));
        hook.incoming(&mut connect_reply(json!(4)));
        let cases = [
            msg(META_CONNECT, Some(false), Some(json!({"ack": 9}))),
            msg(META_CONNECT, None, Some(json!({"ack": 9}))),
            msg(META_CONNECT, Some(true), None),
            connect_reply(json!("9")),
            connect_reply(json!(true)),
            msg("/meta/subscribe", Some(true), Some(json!({"ack": 9}))),
            msg("/chat", None, Some(json!({"ack": 9}))),
        ];
        for mut m in cases {
            let case = format!("{m:?}");
            hook.incoming(&mut m);
            assert_eq!(hook.last_batch(), 4, "{case}");
        }
    }

    #[test]
    fn without_agreement_connects_carry_no_ack_and_batches_are_ignored() {
        let hook = after_handshake(handshake_reply(None));
        hook.incoming(&mut connect_reply(json!(3)));
        assert_eq!(hook.last_batch(), 0);
        let mut connect = Message::new(META_CONNECT);
        hook.outgoing(&mut connect);
        assert!(connect.ext.is_none(), "no ext is added at all");
    }

    #[test]
    fn a_new_handshake_starts_over() {
        let hook = after_handshake(handshake_reply(Some(json!({"ack": true}))));
        hook.incoming(&mut connect_reply(json!(6)));
        hook.outgoing(&mut Message::new(META_HANDSHAKE));
        assert!(!hook.is_enabled());
        assert_eq!(hook.last_batch(), 0);
        assert_eq!(connect_ack(&hook), None);
        hook.incoming(&mut handshake_reply(Some(json!({"ack": true}))));
        assert_eq!(connect_ack(&hook), Some(json!(0)));
    }

    #[test]
    fn other_messages_are_left_alone() {
        let hook = after_handshake(handshake_reply(Some(json!({"ack": true}))));
        for channel in [
            "/meta/subscribe",
            "/meta/unsubscribe",
            "/meta/disconnect",
            "/chat",
        ] {
            let mut m = Message::new(channel);
            hook.outgoing(&mut m);
            assert!(m.ext.is_none(), "{channel}");
        }
    }
}

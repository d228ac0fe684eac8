//! Extension hooks: see and change messages on their way out and in.
//!
//! An extension adds `ext` fields to the handshake (authentication tokens, `ext.replay`,
//! `ext.ack`) or to any outgoing message, and reads incoming `ext`. Hooks are synchronous and
//! pure transforms; they run on the driver task in the order the extensions were given.
//!
//! Provided: [`HandshakeExt`] (fixed handshake fields), [`AckExtension`] (CometD's
//! acknowledged delivery, [`ack`]) and [`ReplayExtension`] (Salesforce's replay ids,
//! [`replay`]). The last two keep state that the caller reads (and, for replay, sets) through
//! a clone of the `Arc` it put in the options.

use super::message::Message;

pub mod ack;
pub mod replay;

pub use ack::AckExtension;
pub use replay::{ALL_RETAINED, NEW_EVENTS_ONLY, ReplayExtension};

/// A message hook. Both methods default to doing nothing.
pub trait Extension: Send + Sync + std::fmt::Debug {
    /// Called for every outgoing message, handshake included, as it is put into a request.
    /// With a request size cap (`ClientOptions::max_request_bytes`) a message that does not
    /// fit is deferred to the next request and the hook runs again on it then, so hooks
    /// should set fields rather than accumulate.
    fn outgoing(&self, _message: &mut Message) {}
    /// Called for every incoming message before the session sees it.
    fn incoming(&self, _message: &mut Message) {}
}

/// Adds fixed `ext` fields to every handshake (e.g. credentials some servers expect there).
#[derive(Debug, Clone, Default)]
pub struct HandshakeExt {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl HandshakeExt {
    /// Hook that merges `fields` into the handshake's `ext`.
    pub fn new(fields: serde_json::Map<String, serde_json::Value>) -> Self {
        HandshakeExt { fields }
    }
}

impl Extension for HandshakeExt {
    fn outgoing(&self, message: &mut Message) {
        if message.channel == super::channel::META_HANDSHAKE {
            let ext = message.ext.get_or_insert_with(Default::default);
            for (k, v) in &self.fields {
                ext.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn handshake_ext_only_touches_the_handshake() {
        let hook = HandshakeExt::new(
            json!({"auth": {"token": "t"}})
                .as_object()
                .cloned()
                .unwrap(),
        );
        let mut hs = Message::new("/meta/handshake");
        hook.outgoing(&mut hs);
        assert_eq!(hs.ext.unwrap()["auth"]["token"], json!("t"));
        let mut other = Message::new("/meta/connect");
        hook.outgoing(&mut other);
        assert!(other.ext.is_none());
    }
}

//! Transports move batches of messages; they never look inside one (beyond the ids that
//! pair a reply with its request on a socket).
//!
//! The driver hands a [`Transport`] a batch and a deadline and gets back the batch the server
//! answered with, or a [`TransportError`]. A transport over a socket (WebSocket) also hands
//! over what the server sends on its own, outside any reply: [`Transport::pushed`].
//!
//! Implemented: [`long_polling`] (HTTP POST), [`websocket`] (text frames, `ws`/`wss`) and
//! [`callback_polling`] (JSONP over HTTP GET). Which one a client uses is its
//! [`TransportChoice`].

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use super::error::TransportError;
use super::message::Message;

pub mod callback_polling;
pub mod long_polling;
pub mod websocket;

/// The future a transport returns for one request.
pub type SendFuture = Pin<Box<dyn Future<Output = Result<Vec<Message>, TransportError>> + Send>>;

/// A way to exchange message batches with a Bayeux server.
pub trait Transport: Send + Sync {
    /// The `connectionType` name.
    fn name(&self) -> &'static str;
    /// Sends `messages` as one request and resolves to the server's reply batch. The whole
    /// exchange (connect, send, wait, read) must finish within `deadline`.
    fn send(&self, messages: Vec<Message>, deadline: Duration) -> SendFuture;
    /// Sends `Authorization: Bearer <token>` on every later request (`None`: no such
    /// header). Transports that cannot carry a token refuse; the error never quotes it.
    fn set_bearer_token(&self, _token: Option<&str>) -> Result<(), String> {
        Err(format!(
            "the {} transport cannot send a bearer token",
            self.name()
        ))
    }
    /// The batches the server sends outside a reply (deliveries pushed over a socket), in
    /// arrival order. A request/response transport has none (the default); a push transport
    /// hands its receiver out once, to the first caller.
    fn pushed(&self) -> Option<mpsc::Receiver<Vec<Message>>> {
        None
    }
}

/// Which transport a client uses (`bayeux.transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TransportChoice {
    /// WebSocket where the server offers it and the upgrade works, else long-polling; a
    /// WebSocket that fails before its first successful `/meta/connect` falls back to
    /// long-polling for that session.
    #[default]
    Auto,
    /// WebSocket only.
    WebSocket,
    /// HTTP long-polling only.
    LongPolling,
    /// JSONP callback-polling (HTTP GET) only.
    CallbackPolling,
}

impl TransportChoice {
    /// Every accepted name, in the order documented.
    pub const NAMES: [&'static str; 4] = ["auto", "websocket", "long-polling", "callback-polling"];

    /// The choice called `name` (one of [`TransportChoice::NAMES`]).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "auto" => Some(TransportChoice::Auto),
            "websocket" => Some(TransportChoice::WebSocket),
            "long-polling" => Some(TransportChoice::LongPolling),
            "callback-polling" => Some(TransportChoice::CallbackPolling),
            _ => None,
        }
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportChoice::Auto => "auto",
            TransportChoice::WebSocket => "websocket",
            TransportChoice::LongPolling => "long-polling",
            TransportChoice::CallbackPolling => "callback-polling",
        }
    }

    /// The connection types offered in the handshake, in order of preference.
    pub fn offered(self) -> Vec<String> {
        let names: &[&str] = match self {
            TransportChoice::Auto => &["websocket", "long-polling"],
            TransportChoice::WebSocket => &["websocket"],
            TransportChoice::LongPolling => &["long-polling"],
            TransportChoice::CallbackPolling => &["callback-polling"],
        };
        names.iter().map(|&n| n.to_owned()).collect()
    }
}

impl std::fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_auto_prefers_websocket() {
        for name in TransportChoice::NAMES {
            let choice = TransportChoice::parse(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(choice.as_str(), name);
        }
        assert_eq!(TransportChoice::parse("ws"), None);
        assert_eq!(
            TransportChoice::Auto.offered(),
            vec!["websocket".to_owned(), "long-polling".to_owned()]
        );
        assert_eq!(TransportChoice::default(), TransportChoice::Auto);
    }
}

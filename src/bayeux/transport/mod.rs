//! Transports move batches of messages; they never look inside one.
//!
//! The driver hands a [`Transport`] a batch and a deadline and gets back the batch the server
//! answered with, or a [`TransportError`]. Only long-polling is implemented so far.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::error::TransportError;
use super::message::Message;

pub mod long_polling;

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
}

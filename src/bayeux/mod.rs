//! A Bayeux (CometD) client.
//!
//! Reusable on its own: this module knows nothing of MQTT, the bridge, config files or
//! metrics. [`auth`] fetches bearer tokens (a fixed one, or OAuth 2.0 grants). The pure parts — [`message`] (codec), [`channel`] (names and patterns),
//! [`advice`], [`session`] (the protocol state machine) and [`ext`] (extension hooks) — do no
//! IO and are tested without a runtime. [`client`] hands out a cloneable [`Client`] built from [`ClientOptions`] (`options`);
//! its commands go to the driver task (`driver`), which owns the session, the transport and
//! the timers. [`verdict`] is how a publish's verdict reaches its caller: a [`Verdict`]
//! future each, or for many publishes in flight one channel of tagged verdicts
//! ([`Client::publish_tagged`]). `http` holds what both HTTP clients share (settings,
//! log-safe URLs and errors). Dependencies point one way: `client` → `driver` →
//! `session`/`transport`/`auth` → `http`, and `client`/`driver` → `verdict`.

pub mod advice;
pub mod auth;
pub mod channel;
pub mod client;
mod driver;
pub mod error;
pub mod event;
pub mod ext;
mod http;
pub mod liveness;
pub mod message;
mod options;
pub mod session;
pub mod transport;
mod transports;
pub mod verdict;

pub use auth::{AccessToken, Grant, OAuthTokenSource, StaticToken, TokenSource};
pub use channel::ChannelPattern;
pub use client::{Client, ClientOptions, Events, Subscription};
pub use error::{ClientError, PublishError, ServerError, TokenError, TransportError};
pub use event::{Event, Next, StopReason, Unrouted};
pub use ext::Extension;
pub use liveness::Liveness;
pub use message::{Data, Message};
pub use transport::TransportChoice;
pub use verdict::{TaggedVerdict, Verdict, VerdictSender, Verdicts, verdict_channel};

//! The configuration file: what it may contain, its defaults, and [`load`], which reads it,
//! applies environment overrides, reads secret files and validates everything before the
//! daemon connects to anything.
//!
//! The `///` docs on the fields below are the user documentation of each key
//! (`docs/configuration.md` follows them). Every struct rejects unknown keys: a typo must not
//! silently disable a route or a setting. Durations are stored as the integers the file
//! holds (the `_secs`/`_ms` suffix is the unit) and read as [`Duration`] through the
//! accessor methods.
//!
//! A leaf module: it knows nothing of the Bayeux client, MQTT or the bridge. Routes are only
//! range-checked here; `bridge::mapping::compile` checks channel and topic names.

mod load;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use url::Url;

pub use load::{ENV_PREFIX, ENV_SEPARATOR, env_var_for, load, load_with_env};

/// Why a configuration could not be loaded: which file, which key, and what is wrong.
///
/// Displayed as `<file>: <key>: <reason>` (or `<file>: <reason>` when no single key is to
/// blame, e.g. a TOML syntax error). Keys are dotted paths as written in the file
/// (`mqtt.port`, `bayeux.headers.X-Api-Key`); routes are numbered from 1 (`route[2].qos` is
/// the second `[[route]]`). Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The offending key, when there is one.
    pub key: Option<String>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {key}: {}", self.file.display(), self.reason),
            None => write!(f, "{}: {}", self.file.display(), self.reason),
        }
    }
}

/// A secret string (password, token, header value). `Debug` and `Display` print `<redacted>`;
/// use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Defines an enum read from a fixed set of strings, with an error that lists them.
macro_rules! choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
        #[serde(try_from = "String")]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value as written in the file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(text: String) -> Result<Self, String> {
                $name::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| {
                        let all: Vec<String> =
                            $name::ALL.iter().map(|v| format!("{:?}", v.as_str())).collect();
                        format!("expected one of {}, found {text:?}", all.join(", "))
                    })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

choice! {
    /// Which MQTT protocol version to speak (`mqtt.protocol`).
    pub enum MqttProtocol {
        /// `"5"`: MQTT 5 (the default). Needed for No Local on the bridge's own subscriptions.
        #[default]
        V5 = "5",
        /// `"3.1.1"`: MQTT 3.1.1, for brokers without MQTT 5.
        V311 = "3.1.1",
    }
}

choice! {
    /// How the bridge gets its Bayeux token from an OAuth 2.0 token endpoint
    /// (`bayeux.oauth.grant`).
    pub enum OAuthGrant {
        /// `"client_credentials"`: the connected app's `client_id` and `client_secret`.
        #[default]
        ClientCredentials = "client_credentials",
        /// `"jwt_bearer"`: an RS256 assertion signed with `private_key_file`, for `username`.
        JwtBearer = "jwt_bearer",
        /// `"refresh_token"`: trades `refresh_token` for access tokens.
        RefreshToken = "refresh_token",
    }
}

choice! {
    /// Which way a route forwards (`route[n].direction`).
    pub enum Direction {
        /// `"bayeux_to_mqtt"`: subscribe on Bayeux, publish to MQTT.
        #[default]
        BayeuxToMqtt = "bayeux_to_mqtt",
        /// `"mqtt_to_bayeux"`: subscribe on MQTT, publish to Bayeux.
        MqttToBayeux = "mqtt_to_bayeux",
        /// `"both"`: both of the above, without echoing the bridge's own messages back.
        Both = "both",
    }
}

choice! {
    /// What a Bayeux → MQTT publish carries (`route[n].payload`).
    pub enum PayloadMode {
        /// `"data"`: the Bayeux message's `data`, as JSON (the default).
        #[default]
        Data = "data",
        /// `"message"`: the whole Bayeux message as JSON (`channel`, `data`, `id`, `ext`, ...),
        /// without the bridge's own `clientId`.
        Message = "message",
    }
}

choice! {
    /// What to do with MQTT → Bayeux payloads that are not UTF-8 (`bridge.binary_payloads`).
    pub enum BinaryPolicy {
        /// `"refuse"`: log, count and acknowledge the message without forwarding it (the
        /// default).
        #[default]
        Refuse = "refuse",
        /// `"base64"`: forward `{"base64": "<the payload, base64>"}` as the `data`.
        Base64 = "base64",
    }
}

choice! {
    /// Log line format (`log.format`).
    pub enum LogFormat {
        /// `"text"`: human-readable lines (the default; suits journald).
        #[default]
        Text = "text",
        /// `"json"`: one JSON object per line (suits Docker log collectors).
        Json = "json",
    }
}

choice! {
    /// What to do when the server rejects a stored replay id (`replay.on_invalid`).
    pub enum ReplayInvalidPolicy {
        /// `"latest"`: resubscribe with -1 (new events only); the gap is reported (default).
        #[default]
        Latest = "latest",
        /// `"earliest"`: resubscribe with -2 (every event the server still retains).
        Earliest = "earliest",
        /// `"stop"`: stop the bridge (exit 1) so an operator decides.
        Stop = "stop",
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[bayeux]`: the Bayeux (CometD) server. Required.
    pub bayeux: BayeuxConfig,
    /// `[mqtt]`: the MQTT broker. Required.
    pub mqtt: MqttConfig,
    /// `[bridge]`: queues and shutdown. Optional.
    #[serde(default)]
    pub bridge: BridgeConfig,
    /// `[log]`: logging. Optional.
    #[serde(default)]
    pub log: LogConfig,
    /// `[http]`: the optional metrics and health listener. Optional; off by default.
    #[serde(default)]
    pub http: HttpConfig,
    /// `[replay]`: the replay extension (Salesforce) and durable checkpoints. Off by default.
    #[serde(default)]
    pub replay: ReplayConfig,
    /// `[[route]]`: what is forwarded where. At least one is required. Cannot be set from the
    /// environment.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
}

impl Config {
    /// Settings that are valid but probably not what was meant; `check` prints them and the
    /// daemon logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }
}

/// `[bayeux]`: the Bayeux server and how to talk to it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BayeuxConfig {
    /// The Bayeux endpoint, `http://` or `https://`, e.g. `http://127.0.0.1:8080/cometd`.
    /// Required.
    #[serde(deserialize_with = "de_url")]
    pub url: Url,
    /// HTTP headers sent on every request, e.g. `{ "X-Api-Key" = "..." }`. Values are secrets:
    /// never logged. After [`load`], also holds `Authorization` from `token_file`.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A file whose content (trimmed) is a bearer token: [`load`] adds the header
    /// `Authorization: Bearer <token>`. May not be combined with an `Authorization` header.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Allowance for the network: the deadline of a `/meta/connect` is the server's
    /// `advice.timeout` plus this; of any other request, this alone. Default 10, at least 1.
    #[serde(default = "defaults::max_network_delay_secs")]
    pub max_network_delay_secs: u64,
    /// Largest accepted HTTP response body; a larger one fails the request. Default 10485760
    /// (10 MiB), at least 1024.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Backoff step added per consecutive failure (handshake, connect, subscribe). Default
    /// 1000, at least 1.
    #[serde(default = "defaults::backoff_increment_ms")]
    pub backoff_increment_ms: u64,
    /// Longest backoff wait. Default 30000; at least `backoff_increment_ms`.
    #[serde(default = "defaults::bayeux_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Largest HTTP request body: batches are split to stay under it, and a message larger
    /// on its own is dropped (`payload_too_large`). Default 0 (no limit); Salesforce needs
    /// 32768. 0 or at least 1024.
    #[serde(default)]
    pub max_request_bytes: usize,
    /// Offer CometD's ack extension (reliable delivery within a session): used only when the
    /// server's handshake reply accepts it, harmless otherwise. Default `true`.
    #[serde(default = "defaults::ack_extension")]
    pub ack_extension: bool,
    /// `[bayeux.oauth]`: fetch (and refresh) the bearer token from an OAuth 2.0 token
    /// endpoint. Optional; may not be combined with `token_file` or an `Authorization`
    /// header.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
}

/// `[bayeux.oauth]`: where the bearer token comes from when it is not fixed. The token is
/// fetched before the first handshake and again whenever the server refuses it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The token endpoint, e.g. `https://login.salesforce.com/services/oauth2/token`.
    /// Required.
    #[serde(deserialize_with = "de_url")]
    pub token_url: Url,
    /// `"client_credentials"`, `"jwt_bearer"` or `"refresh_token"`. Required.
    pub grant: OAuthGrant,
    /// The connected app's client (consumer) id; the JWT's `iss`. Required.
    #[serde(deserialize_with = "de_non_empty")]
    pub client_id: String,
    /// The client secret: required with `client_credentials`, optional with
    /// `refresh_token`. A secret: prefer `client_secret_file`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (trimmed). After [`load`], read into
    /// `client_secret`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The user the token is for (the JWT's `sub`); `jwt_bearer` only, required there.
    #[serde(default)]
    pub username: Option<String>,
    /// PEM file of the RSA private key that signs the JWT (PKCS#8 or PKCS#1); `jwt_bearer`
    /// only, required there. After [`load`], its content is in `private_key`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The content of `private_key_file` (not a key of the file).
    #[serde(skip)]
    pub private_key: Option<Secret>,
    /// The JWT's `aud`. Default `"https://login.salesforce.com"` (sandboxes:
    /// `"https://test.salesforce.com"`).
    #[serde(default = "defaults::oauth_audience")]
    pub audience: String,
    /// The refresh token; `refresh_token` grant only, required there (or
    /// `refresh_token_file`). A secret: prefer the file.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// A file holding the refresh token (trimmed). After [`load`], read into
    /// `refresh_token`.
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// The `scope` asked for. Default none (the app's configured scopes).
    #[serde(default)]
    pub scope: Option<String>,
    /// How many fresh tokens in a row the server may refuse (HTTP 401,
    /// `401::Authentication invalid`, `403::Handshake denied`) before the bridge stops
    /// (exit 1). Default 5, at least 1.
    #[serde(default = "defaults::max_auth_attempts")]
    pub max_auth_attempts: u32,
}

impl BayeuxConfig {
    /// `max_network_delay_secs` as a duration.
    pub fn max_network_delay(&self) -> Duration {
        Duration::from_secs(self.max_network_delay_secs)
    }

    /// `backoff_increment_ms` as a duration.
    pub fn backoff_increment(&self) -> Duration {
        Duration::from_millis(self.backoff_increment_ms)
    }

    /// `backoff_max_ms` as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// The headers as (name, value) pairs, values exposed: for the Bayeux client options only.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.clone(), value.expose().to_owned()))
            .collect()
    }
}

impl fmt::Debug for BayeuxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry credentials (user info, query): show neither.
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        f.debug_struct("BayeuxConfig")
            .field("url", &url.as_str())
            .field("headers", &self.headers)
            .field("token_file", &self.token_file)
            .field("max_network_delay_secs", &self.max_network_delay_secs)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("backoff_increment_ms", &self.backoff_increment_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("oauth", &self.oauth)
            .finish()
    }
}

/// `[mqtt]`: the broker and the bridge's MQTT session.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// Broker host name or IP address (not a URL). Required.
    pub host: String,
    /// Broker port. Default 1883 (use 8883 with `[mqtt.tls]`).
    #[serde(default = "defaults::mqtt_port")]
    pub port: u16,
    /// MQTT client id; must be non-empty. Default `bayeux-mqtt-bridge-<hostname>`, which stays
    /// the same across restarts so the broker can keep the persistent session. In containers
    /// the hostname changes with each new container: set it explicitly there. Longer than 23
    /// characters is allowed (brokers accept it in practice).
    #[serde(default = "defaults::client_id")]
    pub client_id: String,
    /// User name. Optional.
    #[serde(default)]
    pub username: Option<String>,
    /// Password. Optional; not together with `password_file`. After [`load`], also holds
    /// the content of `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file whose content (trimmed) is the password. Optional.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Protocol version: `"5"` (default) or `"3.1.1"`.
    #[serde(default)]
    pub protocol: MqttProtocol,
    /// Keep-alive interval. Default 30, between 1 and 65535.
    #[serde(default = "defaults::keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Start a new session at each connect, discarding the broker's queued messages and
    /// subscriptions (MQTT 3.1.1: clean session). Default false: the broker keeps the session
    /// and queues QoS 1/2 messages while the bridge is away.
    #[serde(default)]
    pub clean_start: bool,
    /// How long the broker keeps the session after a disconnect (MQTT 5 only). Default 3600.
    #[serde(default = "defaults::session_expiry_secs")]
    pub session_expiry_secs: u32,
    /// Largest MQTT packet sent or accepted, in bytes. Default 1048576 (1 MiB), between 1024
    /// and 268435460.
    #[serde(default = "defaults::max_packet_size")]
    pub max_packet_size: u32,
    /// Most QoS 1/2 publishes awaiting the broker's acknowledgement at once. Default 100, at
    /// least 1.
    #[serde(default = "defaults::inflight")]
    pub inflight: u16,
    /// Deadline for the TCP/TLS connection and the CONNACK. Default 10, at least 1.
    #[serde(default = "defaults::connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Backoff step added per consecutive failed connection. Default 1000, at least 1.
    #[serde(default = "defaults::backoff_increment_ms")]
    pub backoff_increment_ms: u64,
    /// Longest wait between connection attempts. Default 60000; at least
    /// `backoff_increment_ms`.
    #[serde(default = "defaults::mqtt_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Retained status topic: `online` while connected, `offline` as the last will and at a
    /// clean shutdown. Default `bayeux-mqtt-bridge/<client_id>/status` (filled in by
    /// [`load`]). Must be a valid topic name without wildcards.
    #[serde(default, deserialize_with = "de_non_empty")]
    pub status_topic: String,
    /// `[mqtt.tls]`: connect with TLS. Optional; its presence (even empty) enables TLS.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

impl MqttConfig {
    /// `keep_alive_secs` as a duration.
    pub fn keep_alive(&self) -> Duration {
        Duration::from_secs(self.keep_alive_secs)
    }

    /// `session_expiry_secs` as a duration.
    pub fn session_expiry(&self) -> Duration {
        Duration::from_secs(u64::from(self.session_expiry_secs))
    }

    /// `connect_timeout_secs` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// `backoff_increment_ms` as a duration.
    pub fn backoff_increment(&self) -> Duration {
        Duration::from_millis(self.backoff_increment_ms)
    }

    /// `backoff_max_ms` as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }
}

/// `[mqtt.tls]`: TLS to the broker (rustls). Files must exist when the config is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) to trust. Default: the system's CA bundle
    /// (`/etc/ssl/certs/ca-certificates.crt` and the other usual paths).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for brokers that require client certificates. Set
    /// together with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Set together with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// `[bridge]`: forwarding limits and shutdown.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Messages in flight or waiting, per direction, before the bridge stops taking more from
    /// the other side (back-pressure, not drops). Default 1000, at least 1.
    #[serde(default = "defaults::queue_capacity")]
    pub queue_capacity: usize,
    /// On SIGTERM/SIGINT, how long to let in-flight messages finish before disconnecting.
    /// Default 8 (under Docker's 10 s stop timeout), at least 1.
    #[serde(default = "defaults::drain_timeout_secs")]
    pub drain_timeout_secs: u64,
    /// MQTT → Bayeux payloads that are not UTF-8: `"refuse"` (default: logged, counted and
    /// acknowledged) or `"base64"` (forwarded as `{"base64": "..."}`).
    #[serde(default)]
    pub binary_payloads: BinaryPolicy,
}

impl BridgeConfig {
    /// `drain_timeout_secs` as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            queue_capacity: defaults::queue_capacity(),
            drain_timeout_secs: defaults::drain_timeout_secs(),
            binary_payloads: BinaryPolicy::default(),
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or filter directives such as
    /// `info,bayeux_mqtt_bridge=debug`. Default `info`. `RUST_LOG` wins when set.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// `"text"` (default) or `"json"`.
    #[serde(default)]
    pub format: LogFormat,
    /// Append logs to this file instead of stderr. Optional; its directory must exist.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::log_level(),
            format: LogFormat::default(),
            file: None,
        }
    }
}

/// `[replay]`: resume Bayeux → MQTT from durable checkpoints after any restart.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// Offer the replay extension at handshake, subscribe from stored replay ids, and store
    /// per channel the id of the last event the MQTT broker acknowledged. Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Directory of `checkpoints.json` (systemd's `StateDirectory`). Default
    /// `/var/lib/bayeux-mqtt-bridge`; a relative path is taken from the config file's directory.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// How often acknowledged positions are written (atomically, with fsync). After a crash,
    /// events of at most this long are delivered again. Default 1000, at least 10.
    #[serde(default = "defaults::checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Where a channel without a checkpoint starts: -1 new events only (default), -2 every
    /// event the server retains.
    #[serde(default = "defaults::start_from")]
    pub start_from: i64,
    /// A stored id the server rejects (expired, unknown): `"latest"` (default), `"earliest"`
    /// or `"stop"`. Every such gap is logged, counted and published on the status topic.
    #[serde(default)]
    pub on_invalid: ReplayInvalidPolicy,
}

impl ReplayConfig {
    /// `checkpoint_interval_ms` as a duration.
    pub fn checkpoint_interval(&self) -> Duration {
        Duration::from_millis(self.checkpoint_interval_ms)
    }
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            enabled: false,
            state_dir: defaults::state_dir(),
            checkpoint_interval_ms: defaults::checkpoint_interval_ms(),
            start_from: defaults::start_from(),
            on_invalid: ReplayInvalidPolicy::default(),
        }
    }
}

/// `[http]`: the metrics and health listener.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve `/metrics`, `/livez` and `/readyz` on, e.g. `"127.0.0.1:9464"`. Off
    /// when unset (the default). Anything beyond loopback exposes the metrics, which name
    /// channels and topics, to the network without authentication.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
}

/// `[[route]]`: one forwarding rule between a Bayeux channel (pattern) and an MQTT topic
/// (filter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Bayeux channel or pattern: `/a/b`, `/a/*` (one more segment) or `/a/**` (one or more).
    /// Not `/meta/**`. Required.
    pub bayeux: String,
    /// MQTT topic or filter: `a/b`, `a/+` (corresponds to `*`) or `a/#` (corresponds to
    /// `**`); `{1}` may stand for the Bayeux `*` segment at any level (`a/{1}/b`). Not
    /// starting with `$`. Required.
    pub mqtt: String,
    /// `"bayeux_to_mqtt"`, `"mqtt_to_bayeux"` or `"both"`. Required.
    pub direction: Direction,
    /// QoS of the MQTT publishes (Bayeux → MQTT) and of the MQTT subscription (MQTT →
    /// Bayeux): 0, 1 or 2. Default 1.
    #[serde(default = "defaults::qos")]
    pub qos: u8,
    /// Publish to MQTT with the retain flag (Bayeux → MQTT only). Default false.
    #[serde(default)]
    pub retain: bool,
    /// What a Bayeux → MQTT publish carries: `"data"` (default) or `"message"`.
    #[serde(default)]
    pub payload: PayloadMode,
}

/// Default values, shared by serde and the `Default` impls.
mod defaults {
    pub const fn ack_extension() -> bool {
        true
    }
    pub fn state_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("/var/lib/bayeux-mqtt-bridge")
    }
    pub const fn checkpoint_interval_ms() -> u64 {
        1000
    }
    pub const fn start_from() -> i64 {
        -1
    }
    pub const fn max_network_delay_secs() -> u64 {
        10
    }
    pub const fn max_response_bytes() -> usize {
        10 * 1024 * 1024
    }
    pub const fn backoff_increment_ms() -> u64 {
        1000
    }
    pub const fn bayeux_backoff_max_ms() -> u64 {
        30_000
    }
    pub fn oauth_audience() -> String {
        "https://login.salesforce.com".to_owned()
    }
    pub const fn max_auth_attempts() -> u32 {
        5
    }
    pub const fn mqtt_port() -> u16 {
        1883
    }
    pub fn client_id() -> String {
        super::load::default_client_id(super::load::hostname().as_deref())
    }
    pub const fn keep_alive_secs() -> u64 {
        30
    }
    pub const fn session_expiry_secs() -> u32 {
        3600
    }
    pub const fn max_packet_size() -> u32 {
        1024 * 1024
    }
    pub const fn inflight() -> u16 {
        100
    }
    pub const fn connect_timeout_secs() -> u64 {
        10
    }
    pub const fn mqtt_backoff_max_ms() -> u64 {
        60_000
    }
    pub const fn queue_capacity() -> usize {
        1000
    }
    pub const fn drain_timeout_secs() -> u64 {
        8
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
    pub const fn qos() -> u8 {
        1
    }
}

fn de_url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Url, D::Error> {
    let text = String::deserialize(deserializer)?;
    // url's errors do not repeat the input, which may hold credentials.
    Url::parse(text.trim()).map_err(|e| serde::de::Error::custom(format!("not a valid URL: {e}")))
}

/// A string that, when present, is not empty (absence means "use the default").
fn de_non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Err(serde::de::Error::custom(
            "must not be empty (leave the key out for the default)",
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug_and_display() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "<redacted>");
        assert_eq!(format!("{secret}"), "<redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn choices_parse_their_documented_strings_only() {
        assert_eq!(
            MqttProtocol::try_from("3.1.1".to_owned()),
            Ok(MqttProtocol::V311)
        );
        assert_eq!(Direction::try_from("both".to_owned()), Ok(Direction::Both));
        let err = Direction::try_from("Both".to_owned()).unwrap_err();
        assert_eq!(
            err,
            r#"expected one of "bayeux_to_mqtt", "mqtt_to_bayeux", "both", found "Both""#
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        assert_eq!(MqttProtocol::default(), MqttProtocol::V5);
        assert_eq!(PayloadMode::default(), PayloadMode::Data);
        assert_eq!(BinaryPolicy::default(), BinaryPolicy::Refuse);
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let bridge = BridgeConfig::default();
        assert_eq!(bridge.queue_capacity, 1000);
        assert_eq!(bridge.drain_timeout(), Duration::from_secs(8));
        assert_eq!(LogConfig::default().level, "info");
    }

    #[test]
    fn config_error_display_names_file_key_and_reason() {
        let with_key = ConfigError {
            file: "/etc/b.toml".into(),
            key: Some("mqtt.port".into()),
            reason: "must be at least 1".into(),
        };
        assert_eq!(
            with_key.to_string(),
            "/etc/b.toml: mqtt.port: must be at least 1"
        );
        let without = ConfigError {
            key: None,
            ..with_key
        };
        assert_eq!(without.to_string(), "/etc/b.toml: must be at least 1");
    }
}

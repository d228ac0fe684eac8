//! The configuration file: what it may contain, its defaults, and [`load()`], which reads it,
//! applies environment overrides, reads secret files and validates everything before the
//! daemon connects to anything.
//!
//! The `///` docs on the fields below are the user documentation of each key
//! (`docs/configuration.md` follows them). Every struct rejects unknown keys: a typo must not
//! silently disable a route or a setting. Durations are stored as the integers the file
//! holds (the `_secs`/`_ms` suffix is the unit) and read as [`Duration`](std::time::Duration) through the
//! accessor methods.
//!
//! A leaf module: it knows nothing of the Bayeux client, MQTT or the bridge. Routes are only
//! range-checked here; `bridge::mapping::compile` checks channel and topic names.

mod bayeux;
mod cluster;
mod load;
mod mqtt;
mod sections;
mod validate;

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use url::Url;

pub use bayeux::{BayeuxConfig, OAuthConfig};
pub use cluster::{ClusterConfig, MEMBER_TOPIC_ROOT};
pub use load::{ENV_PREFIX, ENV_SEPARATOR, env_var_for, load, load_with_env};
pub use mqtt::{MqttConfig, TlsConfig};
pub use sections::{BridgeConfig, HttpConfig, LogConfig, ReplayConfig, RouteConfig, SpoolConfig};

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
    /// Which Bayeux transport the bridge uses (`bayeux.transport`).
    pub enum BayeuxTransport {
        /// `"auto"`: WebSocket where the server offers it and the upgrade works, else
        /// long-polling (a WebSocket that fails before its first `/meta/connect` falls back
        /// for that session).
        #[default]
        Auto = "auto",
        /// `"websocket"`: WebSocket only (`ws://`/`wss://` on the same URL).
        WebSocket = "websocket",
        /// `"long-polling"`: HTTP POST long-polling only.
        LongPolling = "long-polling",
        /// `"callback-polling"`: JSONP over HTTP GET only.
        CallbackPolling = "callback-polling",
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

/// What a Bayeux → MQTT publish carries (`route[n].payload`): `"data"`, `"message"`, or a
/// JSON pointer (RFC 6901) into the data such as `"/payload"`. Any other text is read as a
/// pointer and refused by the validator unless it is one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(from = "String")]
pub enum PayloadMode {
    /// `"data"`: the Bayeux message's `data`, as JSON (the default).
    #[default]
    Data,
    /// `"message"`: the whole Bayeux message as JSON (`channel`, `data`, `id`, `ext`, ...),
    /// without the bridge's own `clientId`.
    Message,
    /// `"/a/b"`: the value at this JSON pointer in the `data`; a JSON string is published as
    /// its text.
    Pointer(String),
}

impl From<String> for PayloadMode {
    fn from(text: String) -> Self {
        match text.as_str() {
            "data" => PayloadMode::Data,
            "message" => PayloadMode::Message,
            _ => PayloadMode::Pointer(text),
        }
    }
}

impl fmt::Display for PayloadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadMode::Data => f.write_str("data"),
            PayloadMode::Message => f.write_str("message"),
            PayloadMode::Pointer(pointer) => f.write_str(pointer),
        }
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
    /// The daemon's CPU scheduling policy on Linux (`bridge.cpu_scheduling`).
    pub enum CpuScheduling {
        /// `"batch"`: a process started under the normal policy switches to `SCHED_BATCH`
        /// (the default); one started under another policy keeps it.
        #[default]
        Batch = "batch",
        /// `"inherit"`: keep the policy the process was started with.
        Inherit = "inherit",
    }
}

choice! {
    /// How the members of a `[cluster]` share the Bayeux → MQTT routes (`cluster.mode`).
    pub enum ClusterMode {
        /// `"active_standby"`: the live member with the lowest `member_id` forwards them all
        /// (the default).
        #[default]
        ActiveStandby = "active_standby",
        /// `"partitioned"`: each route goes to one live member, chosen by rendezvous hashing
        /// of the route's name.
        Partitioned = "partitioned",
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
    /// `[spool]`: the durable on-disk spool for messages whose destination is down. Off by
    /// default.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[cluster]`: replicas that share the work through the MQTT broker. Off by default.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// `[[route]]`: what is forwarded where. At least one is required. Cannot be set from the
    /// environment.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
}

impl Config {
    /// Settings that are valid but probably not what was meant; `check` prints them and the
    /// daemon logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = validate::warnings(self);
        out.extend(cluster::warnings(self));
        out
    }
}

/// Default values, shared by serde and the `Default` impls.
mod defaults {
    pub const fn ack_extension() -> bool {
        true
    }
    pub fn state_dir() -> std::path::PathBuf {
        std::path::PathBuf::from("/var/lib/bayeux-mqtt-bridge")
    }
    pub fn spool_dir() -> std::path::PathBuf {
        state_dir().join("spool")
    }
    pub const fn spool_max_bytes() -> u64 {
        1024 * 1024 * 1024
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
    use std::time::Duration;

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
        assert_eq!(CpuScheduling::default(), CpuScheduling::Batch);
        assert_eq!(LogFormat::default(), LogFormat::Text);
        let bridge = BridgeConfig::default();
        assert_eq!(bridge.queue_capacity, 1000);
        assert_eq!(bridge.drain_timeout(), Duration::from_secs(8));
        assert_eq!(LogConfig::default().level, "info");
        let spool = SpoolConfig::default();
        assert!(!spool.enabled);
        assert_eq!(
            spool.dir,
            std::path::Path::new("/var/lib/bayeux-mqtt-bridge/spool")
        );
        assert_eq!(spool.max_bytes, 1 << 30);
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

//! `[bridge]`, `[log]`, `[replay]`, `[spool]`, `[http]` and `[[route]]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{
    BinaryPolicy, CpuScheduling, Direction, LogFormat, PayloadMode, ReplayInvalidPolicy, defaults,
};

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
    /// `"batch"` (default): on Linux, a daemon started under the normal scheduling policy
    /// switches to `SCHED_BATCH`, so that under load it is woken less often, for more work
    /// each time; `"inherit"` keeps the policy it was started with. Takes effect at start.
    #[serde(default)]
    pub cpu_scheduling: CpuScheduling,
    /// MQTT topic where messages the bridge cannot deliver are published (at QoS 1, with
    /// their original payload and why); default none: they are only logged and counted.
    /// A route's `dead_letter_topic` overrides it. No route may subscribe to it.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
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
            cpu_scheduling: CpuScheduling::default(),
            dead_letter_topic: None,
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

/// `[spool]`: keep messages on disk while the side they are for is down.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// Keep messages in a durable spool on disk while their destination is unreachable.
    /// Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// Directory of the spool files (one `<queue>.redb` per queue; created with mode 0700).
    /// Default `/var/lib/bayeux-mqtt-bridge/spool`; a relative path is taken from the config
    /// file's directory.
    #[serde(default = "defaults::spool_dir")]
    pub dir: PathBuf,
    /// Bytes the spool may hold, all queues together (each message counts its payload plus
    /// 17 bytes). The files on disk take several times as much (3.7 times for 200-byte
    /// messages). Default 1073741824
    /// (1 GiB), at least 1048576 (1 MiB).
    #[serde(default = "defaults::spool_max_bytes")]
    pub max_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            enabled: false,
            dir: defaults::spool_dir(),
            max_bytes: defaults::spool_max_bytes(),
        }
    }
}

/// `[http]`: the metrics and health listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to serve `/metrics`, `/livez` and `/readyz` on, e.g. `"127.0.0.1:9464"`. Off
    /// when unset (the default). Anything beyond loopback exposes the metrics, which name
    /// channels and topics, to the network without authentication.
    #[serde(default)]
    pub listen: Option<std::net::SocketAddr>,
    /// Connections served at once; one more is closed at once (and counted in
    /// `bridge_http_connections_refused_total`). Default 64, from 1 to 4096.
    #[serde(default = "default_http_max_connections")]
    pub max_connections: usize,
    /// Whether the message counters (`bridge_messages_*_total`) have a series per route
    /// (`route` = the route's `name`). With `false` every route counts under
    /// `route="all"`: one series per direction (and drop reason) however many routes there
    /// are, for mapping files with thousands of routes; and no
    /// `bridge_subscription_confirmed` series per subscription. Default true. Changes at a
    /// restart.
    #[serde(default = "default_per_route_metrics")]
    pub per_route_metrics: bool,
}

fn default_per_route_metrics() -> bool {
    true
}

fn default_http_max_connections() -> usize {
    crate::http::DEFAULT_MAX_CONNECTIONS
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: None,
            max_connections: default_http_max_connections(),
            per_route_metrics: default_per_route_metrics(),
        }
    }
}

/// `[[route]]`: one forwarding rule between a Bayeux channel (pattern) and an MQTT topic
/// (filter).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for the route, unique among the routes: the `route` label of its metrics, and
    /// how logs, `check` and `explain` name it beside its number. Default `route[<n>]` (`n`
    /// counting the `[[route]]` tables from 1). At most 128 characters, none of them a
    /// control character; not `all` or `none` (the labels of all routes together and of
    /// messages no route took).
    #[serde(default)]
    pub name: Option<String>,
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
    /// What a Bayeux → MQTT publish carries: `"data"` (default), `"message"`, or a JSON
    /// pointer (RFC 6901) into the data such as `"/payload"`.
    #[serde(default)]
    pub payload: PayloadMode,
    /// MQTT 5: Bayeux → MQTT publishes carry a content type and the user properties
    /// `bayeux-channel`, `bayeux-id` and `replay-id`. Default true with MQTT 5 (`None`);
    /// MQTT 3.1.1 has no properties.
    #[serde(default)]
    pub properties: Option<bool>,
    /// MQTT → Bayeux: put `mqtt-topic` and the publish's MQTT 5 user properties into the
    /// Bayeux message's `ext`. Default false.
    #[serde(default)]
    pub ext_properties: bool,
    /// This route's dead-letter topic, instead of `bridge.dead_letter_topic`.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
}

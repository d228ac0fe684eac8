//! bayeux-mqtt-bridge: a daemon that keeps Bayeux (CometD) subscriptions open and moves
//! channel traffic to MQTT topics and back.
//!
//! # Layout
//!
//! - [`bayeux`]: a reusable Bayeux client library. Pure parts (`message`, `channel`,
//!   `advice`, `session`, `ext`) do no IO; `client` drives them over a `transport`. It knows
//!   nothing of MQTT, the bridge, config files or metrics.
//! - [`backoff`]: the capped, jittered backoff shared by both sides.
//! - [`config`]: the configuration file (TOML + `BAYEUX_MQTT_BRIDGE__*` environment
//!   overrides + secret files), loaded and validated before anything connects; a leaf.
//! - [`bridge`]: the daemon joining both sides; `bridge::mapping` (routes: channel ↔ topic
//!   rewriting) and `bridge::payload` (message body conversion) are pure.
//! - [`cli`]: the `sub` and `pub` operator tools.
//! - [`files`]: warnings about secret files, state directories and the log file that other
//!   users can open.
//! - [`http`]: the optional HTTP listener (`/metrics`, `/livez`, `/readyz`), bounded in
//!   connections, header time and connection lifetime; knows nothing of the bridge (it calls
//!   the endpoints it is given).
//! - [`log_limit`]: rate limiting of warnings that can repeat once per message (at most a
//!   burst per key per window, then one line with the count suppressed); a leaf.
//! - [`metrics`]: Prometheus metric names, labels and record helpers; a leaf.
//! - [`mqtt`]: the reconnecting, at-least-once MQTT client (rumqttc, MQTT 5 or 3.1.1); knows
//!   nothing of Bayeux or the bridge.
//! - [`notify`]: sd_notify for systemd `Type=notify` (`READY=1`, `STATUS=`, `WATCHDOG=1`,
//!   `RELOADING=1`, `STOPPING=1`) over `NOTIFY_SOCKET`; a no-op outside systemd.
//! - [`scheduling`]: the daemon's CPU scheduling policy (`SCHED_BATCH` by default, Linux).
//! - [`shutdown`]: SIGTERM/SIGINT handling.
//! - [`spool`]: durable on-disk queues (redb, one file per queue, a shared byte budget) for
//!   messages whose destination is down; knows nothing of Bayeux, MQTT, the bridge or config
//!   files.
//! - [`telemetry`]: `tracing` setup (text or JSON, stderr or a file).
//! - [`tls`]: TLS client settings (trusted CAs, client certificate) shared by both sides; a
//!   leaf.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into these.

pub mod backoff;
pub mod bayeux;
pub mod bridge;
pub mod cli;
pub mod config;
pub mod files;
pub mod http;
pub mod log_limit;
pub mod metrics;
pub mod mqtt;
pub mod notify;
pub mod scheduling;
pub mod shutdown;
pub mod spool;
pub mod telemetry;
pub mod tls;

//! `[mqtt]` and `[mqtt.tls]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{MqttProtocol, Secret, de_non_empty, defaults};

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
    /// Password. Optional; not together with `password_file`. After [`load`](super::load()), also holds
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
    /// [`load`](super::load())). Must be a valid topic name without wildcards.
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

/// `[mqtt.tls]` and `[bayeux.tls]`: TLS settings (rustls). Files must exist and hold PEM
/// when the config is loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA certificate(s) to trust, *instead of* the system's. Default: the
    /// system's CA bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt` and the
    /// other usual paths).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for servers that require client certificates. Set
    /// together with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Set together with `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The files, as the TLS layer takes them.
    pub fn files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

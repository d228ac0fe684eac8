//! Runtime settings of the MQTT client and their validation. Defaults follow
//! `../shared/reference/bridge-anchors.md` §4c (MQTT 5, persistent session, 30 s keep-alive,
//! 1 MiB packets, 1 s → 60 s reconnect backoff).

use std::fmt;
use std::time::Duration;

use crate::backoff::BackoffOptions;

use super::QoS;
use super::error::MqttError;
use super::topic::validate_topic;

/// The largest packet MQTT can frame: a remaining length of 268 435 455 bytes plus a 5-byte
/// fixed header.
pub(super) const MQTT_MAX_PACKET: usize = 268_435_460;

/// The MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// MQTT 5.0: session expiry, reason codes, receive maximum, no-local subscriptions.
    #[default]
    V5,
    /// MQTT 3.1.1, for brokers without MQTT 5.
    V311,
}

/// TLS material, all PEM files. With `MqttOptions::tls` set the client speaks TLS (rustls).
pub use crate::tls::TlsFiles;

/// The message the broker publishes for us if the connection ends without a DISCONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic of the will message.
    pub topic: String,
    /// Body of the will message (at most 65 535 bytes).
    pub payload: Vec<u8>,
    /// QoS the broker publishes it with.
    pub qos: QoS,
    /// Whether the broker retains it.
    pub retain: bool,
}

/// Settings of one MQTT client connection.
#[derive(Clone, PartialEq)]
pub struct MqttOptions {
    /// Broker host name or IP address.
    pub host: String,
    /// Broker port (1883 plain, 8883 TLS by convention).
    pub port: u16,
    /// Client identifier; it names the broker-side session, so it must be stable and unique.
    /// May be empty only with `clean_start` (the broker then assigns one).
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// Password (needs `username`). Never logged; `Debug` shows it redacted.
    pub password: Option<String>,
    /// Protocol version. Default MQTT 5.
    pub protocol: Protocol,
    /// Interval of keep-alive pings. Default 30 s. Whole seconds (fractions are cut off);
    /// at least 1 s for MQTT 3.1.1 and 5 s for MQTT 5 (a rumqttc limit), at most 65 535 s.
    pub keep_alive: Duration,
    /// Start a new session on every connect instead of resuming the broker-side one. Default
    /// `false`: the broker keeps subscriptions and un-acknowledged messages across outages.
    pub clean_start: bool,
    /// How long an MQTT 5 broker keeps the session after the connection ends. Default 1 h.
    /// Whole seconds. Ignored for MQTT 3.1.1, where a persistent session never expires.
    pub session_expiry: Duration,
    /// Largest packet sent or accepted, in bytes. Default 1 MiB. An MQTT 5 broker is told
    /// this limit, and a smaller one it announces is honoured for publishes. An MQTT 3.1.1
    /// broker cannot be told it: a larger incoming message is read (up to the protocol's
    /// maximum), acknowledged and reported as [`super::MqttEvent::Oversized`], not delivered.
    pub max_packet_size: usize,
    /// Most QoS 1/2 messages in flight per direction: unacknowledged publishes we send, and
    /// (MQTT 5 receive maximum) unacknowledged messages the broker sends us. Default 100.
    pub inflight: u16,
    /// Capacity of the event channel returned by [`super::start`]. Default 1024; at least
    /// `inflight`. When it is full, QoS 0 messages are dropped (and reported) while QoS 1/2
    /// messages and lifecycle events wait for room.
    pub event_buffer: usize,
    /// Speak TLS with these files; `None` means plain TCP.
    pub tls: Option<TlsFiles>,
    /// Last will, published by the broker if we vanish without a DISCONNECT.
    pub last_will: Option<Will>,
    /// Reconnect backoff. Default 1 s steps up to 60 s with 20 % jitter.
    pub backoff: BackoffOptions,
    /// How long a connection must last before its end starts the backoff over. Default 10 s.
    /// A connection that ends sooner (a broker or proxy that accepts and then closes it,
    /// another client taking over the client id) keeps the waits growing, so a flapping
    /// connection does not reconnect every `backoff.increment`.
    pub stable_after: Duration,
    /// Deadline of one connection attempt (TCP, TLS, CONNECT/CONNACK). Default 10 s.
    pub connect_timeout: Duration,
}

impl MqttOptions {
    /// Options with the defaults above.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        MqttOptions {
            host: host.into(),
            port,
            client_id: client_id.into(),
            username: None,
            password: None,
            protocol: Protocol::V5,
            keep_alive: Duration::from_secs(30),
            clean_start: false,
            session_expiry: Duration::from_secs(3600),
            max_packet_size: 1024 * 1024,
            inflight: 100,
            event_buffer: 1024,
            tls: None,
            last_will: None,
            backoff: BackoffOptions {
                increment: Duration::from_secs(1),
                max: Duration::from_secs(60),
                jitter: 0.2,
            },
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// `host:port`, as shown in logs.
    pub fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Checks every field, so that nothing fails (or panics inside rumqttc) later. TLS files
    /// are read by [`super::start`], not here.
    pub fn validate(&self) -> Result<(), MqttError> {
        self.validate_identity()?;
        self.validate_protocol_limits()?;
        self.validate_flow_control()?;
        self.validate_reconnects()?;
        self.validate_tls_and_will()
    }

    /// Where to connect and as whom: host, port, client id and credentials.
    fn validate_identity(&self) -> Result<(), MqttError> {
        if self.host.trim().is_empty() {
            return Err(invalid("host", "must not be empty".into()));
        }
        if self.port == 0 {
            return Err(invalid("port", "must not be 0".into()));
        }
        check_string("client_id", &self.client_id)?;
        if self.client_id.is_empty() && !self.clean_start {
            return Err(invalid(
                "client_id",
                "must not be empty for a persistent session (clean_start = false)".into(),
            ));
        }
        if let Some(username) = &self.username {
            check_string("username", username)?;
        }
        match &self.password {
            Some(_) if self.username.is_none() => {
                return Err(invalid("password", "needs a username".into()));
            }
            Some(password) if password.len() > u16::MAX as usize => {
                return Err(invalid("password", "is longer than 65535 bytes".into()));
            }
            _ => {}
        }
        Ok(())
    }

    /// What the protocol can encode: keep-alive, session expiry, packet size.
    fn validate_protocol_limits(&self) -> Result<(), MqttError> {
        let min_keep_alive = match self.protocol {
            Protocol::V311 => 1,
            Protocol::V5 => 5,
        };
        let keep_alive = self.keep_alive.as_secs();
        if keep_alive < min_keep_alive || keep_alive > u64::from(u16::MAX) {
            return Err(invalid(
                "keep_alive",
                format!(
                    "{:?} is out of range: {min_keep_alive} s to 65535 s for {:?}",
                    self.keep_alive, self.protocol
                ),
            ));
        }
        if self.session_expiry.as_secs() > u64::from(u32::MAX) {
            return Err(invalid(
                "session_expiry",
                format!("{:?} exceeds 4294967295 s", self.session_expiry),
            ));
        }
        if !(128..=MQTT_MAX_PACKET).contains(&self.max_packet_size) {
            return Err(invalid(
                "max_packet_size",
                format!(
                    "{} is out of range: 128 to {MQTT_MAX_PACKET} bytes",
                    self.max_packet_size
                ),
            ));
        }
        Ok(())
    }

    /// The in-flight window and the event buffer that must hold it.
    fn validate_flow_control(&self) -> Result<(), MqttError> {
        if self.inflight == 0 {
            return Err(invalid("inflight", "must be at least 1".into()));
        }
        if self.event_buffer < usize::from(self.inflight) {
            return Err(invalid(
                "event_buffer",
                format!(
                    "{} is smaller than inflight ({}): incoming QoS 1/2 messages would stall \
                     the connection",
                    self.event_buffer, self.inflight
                ),
            ));
        }
        Ok(())
    }

    /// The connect timeout and the reconnect backoff.
    fn validate_reconnects(&self) -> Result<(), MqttError> {
        if self.connect_timeout.is_zero() || self.connect_timeout.as_secs() > u64::from(u16::MAX) {
            return Err(invalid(
                "connect_timeout",
                format!(
                    "{:?} is out of range: above 0, at most 65535 s",
                    self.connect_timeout
                ),
            ));
        }
        if self.backoff.increment.is_zero() {
            return Err(invalid(
                "backoff.increment",
                "must be above 0 (a zero backoff reconnects in a tight loop)".into(),
            ));
        }
        if self.backoff.max < self.backoff.increment {
            return Err(invalid(
                "backoff.max",
                format!(
                    "{:?} is below backoff.increment ({:?})",
                    self.backoff.max, self.backoff.increment
                ),
            ));
        }
        Ok(())
    }

    /// The TLS client certificate pair and the last will.
    fn validate_tls_and_will(&self) -> Result<(), MqttError> {
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(invalid(
                "tls",
                "cert_file and key_file must be given together".into(),
            ));
        }
        if let Some(will) = &self.last_will {
            validate_topic(&will.topic).map_err(|reason| MqttError::InvalidTopic {
                topic: will.topic.clone(),
                reason,
            })?;
            if will.payload.len() > usize::from(u16::MAX) {
                return Err(invalid(
                    "last_will.payload",
                    format!("is {} bytes; at most 65535", will.payload.len()),
                ));
            }
        }
        Ok(())
    }
}

/// An [`MqttError::InvalidOption`].
fn invalid(option: &'static str, reason: String) -> MqttError {
    MqttError::InvalidOption { option, reason }
}

impl fmt::Debug for MqttOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("protocol", &self.protocol)
            .field("keep_alive", &self.keep_alive)
            .field("clean_start", &self.clean_start)
            .field("session_expiry", &self.session_expiry)
            .field("max_packet_size", &self.max_packet_size)
            .field("inflight", &self.inflight)
            .field("event_buffer", &self.event_buffer)
            .field("tls", &self.tls)
            .field("last_will", &self.last_will)
            .field("backoff", &self.backoff)
            .field("stable_after", &self.stable_after)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// An MQTT UTF-8 string field: a two-byte length and no NUL (MQTT-1.5.3-2).
fn check_string(option: &'static str, value: &str) -> Result<(), MqttError> {
    if value.len() > usize::from(u16::MAX) {
        return Err(MqttError::InvalidOption {
            option,
            reason: format!("is {} bytes; at most 65535", value.len()),
        });
    }
    if value.contains('\0') {
        return Err(MqttError::InvalidOption {
            option,
            reason: "must not contain the NUL character".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MqttOptions {
        MqttOptions::new("broker.example", 1883, "bridge-1")
    }

    fn rejected_option(options: &MqttOptions) -> &'static str {
        match options.validate() {
            Err(MqttError::InvalidOption { option, .. }) => option,
            other => panic!("expected an invalid option, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid_and_match_the_reference() {
        let o = options();
        assert_eq!(o.validate(), Ok(()));
        assert_eq!(o.protocol, Protocol::V5);
        assert_eq!(o.keep_alive, Duration::from_secs(30));
        assert!(!o.clean_start);
        assert_eq!(o.session_expiry, Duration::from_secs(3600));
        assert_eq!(o.max_packet_size, 1 << 20);
        assert_eq!(o.inflight, 100);
        assert_eq!(o.backoff.increment, Duration::from_secs(1));
        assert_eq!(o.backoff.max, Duration::from_secs(60));
        assert_eq!(o.connect_timeout, Duration::from_secs(10));
    }

    #[test]
    fn debug_output_redacts_the_password() {
        let o = MqttOptions {
            username: Some("user".into()),
            password: Some("hunter2".into()),
            ..options()
        };
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("user"), "{shown}");
    }

    #[test]
    fn keep_alive_limits_depend_on_the_protocol() {
        let mut o = options();
        o.keep_alive = Duration::from_secs(4);
        assert_eq!(rejected_option(&o), "keep_alive");
        o.protocol = Protocol::V311;
        assert_eq!(o.validate(), Ok(()));
        o.keep_alive = Duration::from_millis(500);
        assert_eq!(rejected_option(&o), "keep_alive");
        o.keep_alive = Duration::from_secs(65_536);
        assert_eq!(rejected_option(&o), "keep_alive");
    }

    #[test]
    fn out_of_range_fields_are_named() {
        type Change = fn(&mut MqttOptions);
        let cases: Vec<(&str, Change)> = vec![
            ("host", |o| o.host = " ".into()),
            ("port", |o| o.port = 0),
            ("client_id", |o| o.client_id = String::new()),
            ("client_id", |o| o.client_id = "a\0b".into()),
            ("password", |o| o.password = Some("p".into())),
            ("max_packet_size", |o| o.max_packet_size = 10),
            ("max_packet_size", |o| o.max_packet_size = usize::MAX),
            ("inflight", |o| o.inflight = 0),
            ("event_buffer", |o| o.event_buffer = 10),
            ("connect_timeout", |o| o.connect_timeout = Duration::ZERO),
            ("backoff.increment", |o| {
                o.backoff.increment = Duration::ZERO
            }),
            ("backoff.max", |o| o.backoff.max = Duration::from_millis(1)),
            ("session_expiry", |o| {
                o.session_expiry = Duration::from_secs(u64::MAX)
            }),
            ("tls", |o| {
                o.tls = Some(TlsFiles {
                    cert_file: Some("c.pem".into()),
                    ..TlsFiles::default()
                })
            }),
        ];
        for (expected, change) in cases {
            let mut o = options();
            change(&mut o);
            assert_eq!(rejected_option(&o), expected);
        }
    }

    #[test]
    fn an_empty_client_id_is_allowed_only_with_clean_start() {
        let mut o = options();
        o.client_id = String::new();
        o.clean_start = true;
        assert_eq!(o.validate(), Ok(()));
    }

    #[test]
    fn a_will_needs_a_publishable_topic() {
        let mut o = options();
        o.last_will = Some(Will {
            topic: "status/#".into(),
            payload: b"offline".to_vec(),
            qos: QoS::AtLeastOnce,
            retain: true,
        });
        assert!(matches!(o.validate(), Err(MqttError::InvalidTopic { .. })));
    }

    #[test]
    fn broker_address_brackets_ipv6_hosts() {
        assert_eq!(options().broker(), "broker.example:1883");
        let o = MqttOptions::new("::1", 1883, "x");
        assert_eq!(o.broker(), "[::1]:1883");
    }
}

//! What a caller of the MQTT client sees go wrong. Network and broker trouble is not an error
//! here: the client reconnects and reports it as an [`super::MqttEvent`].

/// An MQTT client error; each variant carries the offending value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MqttError {
    /// An [`super::MqttOptions`] field is out of range or inconsistent.
    #[error("invalid MQTT option `{option}`: {reason}")]
    InvalidOption {
        /// The field name.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A topic cannot be published to (see [`super::validate_topic`]).
    #[error("invalid MQTT topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic as given.
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A publish's property (content type, user property name or value) is not a string an
    /// MQTT broker accepts (see [`super::Properties::validate`]); sending it would make the
    /// broker close the connection, and at QoS ≥ 1 the same publish would follow every
    /// reconnect.
    #[error("invalid MQTT property on topic {topic:?}: {reason}")]
    InvalidProperty {
        /// The topic of the publish.
        topic: String,
        /// What is wrong, naming the property.
        reason: String,
    },
    /// A subscription filter is malformed (see [`super::validate_filter`]).
    #[error("invalid MQTT topic filter {filter:?}: {reason}")]
    InvalidFilter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A number that is not a QoS level (0, 1 or 2).
    #[error("invalid MQTT QoS {0}: expected 0, 1 or 2")]
    InvalidQoS(u8),
    /// The PUBLISH packet would exceed the maximum packet size (ours, or the broker's when it
    /// announced a smaller one). Nothing was sent; the connection is unaffected.
    #[error("a publish to {topic:?} would be a {size}-byte packet; the limit is {max} bytes")]
    PayloadTooLarge {
        /// The topic of the refused message.
        topic: String,
        /// The encoded packet size.
        size: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// A TLS file could not be used.
    #[error("MQTT TLS setup failed ({file}): {reason}")]
    Tls {
        /// The file (or setting) at fault.
        file: String,
        /// What went wrong.
        reason: String,
    },
    /// An MQTT 5 broker acknowledged a publish with a failure reason code (e.g.
    /// `NotAuthorized`, `QuotaExceeded`). Sending it again would not help, so it is not.
    #[error("the MQTT broker refused the publish to {topic:?}: {reason}")]
    Rejected {
        /// The topic of the refused message.
        topic: String,
        /// The broker's reason code.
        reason: String,
    },
    /// The broker answered a subscription with a failure code.
    #[error("the MQTT broker refused the subscription to {filter:?}: {reason}")]
    SubscribeRefused {
        /// The refused filter.
        filter: String,
        /// The broker's reason code.
        reason: String,
    },
    /// An MQTT 5 broker answered an unsubscription with a failure code.
    #[error("the MQTT broker refused to unsubscribe {filter:?}: {reason}")]
    UnsubscribeRefused {
        /// The filter.
        filter: String,
        /// The broker's reason code.
        reason: String,
    },
    /// The client was shut down ([`super::MqttHandle::disconnect`], or every handle was
    /// dropped) before the operation completed.
    #[error("the MQTT client has shut down")]
    Shutdown,
    /// [`super::start`] was called outside a Tokio runtime.
    #[error("the MQTT client must be started from within a Tokio runtime")]
    NoRuntime,
}

impl MqttError {
    /// A short, stable label for metrics and logs (`snake_case`).
    pub fn reason(&self) -> &'static str {
        match self {
            MqttError::InvalidOption { .. } => "invalid_option",
            MqttError::InvalidTopic { .. } => "invalid_topic",
            MqttError::InvalidProperty { .. } => "invalid_property",
            MqttError::InvalidFilter { .. } => "invalid_filter",
            MqttError::InvalidQoS(_) => "invalid_qos",
            MqttError::PayloadTooLarge { .. } => "payload_too_large",
            MqttError::Tls { .. } => "tls",
            MqttError::Rejected { .. } => "rejected",
            MqttError::SubscribeRefused { .. } => "subscribe_refused",
            MqttError::UnsubscribeRefused { .. } => "unsubscribe_refused",
            MqttError::Shutdown => "shutdown",
            MqttError::NoRuntime => "no_runtime",
        }
    }
}

/// Why a connection attempt failed or an established connection was lost (see
/// [`super::MqttEvent::ConnectFailed`] and [`super::MqttEvent::Disconnected`]). The client
/// reconnects after any of them; what differs is how long it waits and what the
/// application should tell its operator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    /// The broker refused our credentials: CONNACK "bad user name or password" or "not
    /// authorized" (MQTT 3.1.1 return codes 4 and 5, MQTT 5 reason codes 0x86 and 0x87).
    /// Trying again at once will not help until someone changes the credentials or the
    /// broker's password file, so the client waits the longest backoff interval.
    #[error("the MQTT broker refused the credentials ({code})")]
    CredentialsRefused {
        /// The broker's return (reason) code.
        code: String,
    },
    /// The broker refused the connection for another reason (a CONNACK failure code such
    /// as "server unavailable" or "bad client id").
    #[error("the MQTT broker refused the connection ({code})")]
    Refused {
        /// The broker's return (reason) code.
        code: String,
    },
    /// No CONNACK within the connect timeout.
    #[error("no connection within the connect timeout ({0:?})")]
    Timeout(std::time::Duration),
    /// Network, TLS or protocol trouble, as rumqttc describes it.
    #[error("{0}")]
    Network(String),
}

impl ConnectionError {
    /// A short, stable label for metrics and logs (`snake_case`).
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectionError::CredentialsRefused { .. } => "credentials_refused",
            ConnectionError::Refused { .. } => "refused",
            ConnectionError::Timeout(_) => "timeout",
            ConnectionError::Network(_) => "network",
        }
    }

    /// Whether the broker refused our user name or password.
    pub fn is_credentials_refused(&self) -> bool {
        matches!(self, ConnectionError::CredentialsRefused { .. })
    }
}

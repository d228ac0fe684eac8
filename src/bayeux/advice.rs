//! Server advice: how and when to reconnect.
//!
//! Any reply may carry `advice`; newly received keys supersede the remembered ones, and the
//! CometD server only sends advice when it changes, so the session remembers the merged
//! result and resets it at every handshake (cometd/cometd#722: stale `handshake` advice
//! reused after a reply without advice caused a handshake loop). Per-transport sub-objects
//! (`"long-polling": {...}`) take precedence over the general keys. Pure: no IO.

use std::time::Duration;

use serde_json::{Map, Value};

/// The longest `timeout` advice taken as given (10 minutes): a server holds a `/meta/connect`
/// for seconds to a few minutes (CometD 30 s, Salesforce 110 s). A longer one, from a buggy
/// or hostile server, would park the client with nothing noticing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);

/// The longest `interval` advice taken as given (10 minutes), for the same reason.
pub const MAX_INTERVAL: Duration = Duration::from_secs(600);

/// The longest `maxInterval` advice taken as given (1 day).
pub const MAX_MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn millis(limit: Duration) -> i64 {
    i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
}

/// The `reconnect` advice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Send `/meta/connect` again after `interval` (and backoff when failing).
    Retry,
    /// The server dropped the session: handshake again, never retry the connect.
    Handshake,
    /// Hard failure: neither retry nor handshake.
    None,
}

impl Reconnect {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "retry" => Some(Reconnect::Retry),
            "handshake" => Some(Reconnect::Handshake),
            "none" => Some(Reconnect::None),
            _ => None,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reconnect::Retry => "retry",
            Reconnect::Handshake => "handshake",
            Reconnect::None => "none",
        }
    }
}

/// Advice fields, each present only if some server message set it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Advice {
    /// `reconnect`.
    pub reconnect: Option<Reconnect>,
    /// `interval` in ms: minimum wait before the next `/meta/connect`. Negative means "do
    /// not reconnect".
    pub interval: Option<i64>,
    /// `timeout` in ms: how long the server holds a `/meta/connect`.
    pub timeout: Option<u64>,
    /// `maxInterval` in ms (CometD): how long the server keeps a session without a connect.
    pub max_interval: Option<u64>,
    /// `multiple-clients`: the server saw several sessions for one browser cookie.
    pub multiple_clients: Option<bool>,
    /// `hosts`: alternative servers (recorded, not acted on).
    pub hosts: Option<Vec<String>>,
}

impl Advice {
    /// Reads advice from a message's `advice` object. Unknown keys and values of the wrong
    /// type are ignored; `transport` selects a per-transport sub-object that overrides the
    /// general keys.
    pub fn from_value(value: &Value, transport: Option<&str>) -> Advice {
        let Some(obj) = value.as_object() else {
            return Advice::default();
        };
        let mut advice = Advice::read(obj);
        if let Some(sub) = transport
            .and_then(|t| obj.get(t))
            .and_then(Value::as_object)
        {
            advice.merge(&Advice::read(sub));
        }
        advice
    }

    fn read(obj: &Map<String, Value>) -> Advice {
        Advice {
            reconnect: obj
                .get("reconnect")
                .and_then(Value::as_str)
                .and_then(Reconnect::parse),
            // Clamped to [`MAX_INTERVAL`] (a negative one still forbids reconnecting).
            interval: obj
                .get("interval")
                .and_then(as_i64)
                .map(|i| i.min(millis(MAX_INTERVAL))),
            timeout: obj
                .get("timeout")
                .and_then(as_i64)
                .map(|t| t.clamp(0, millis(MAX_TIMEOUT)) as u64),
            max_interval: obj
                .get("maxInterval")
                .and_then(as_i64)
                .map(|t| t.clamp(0, millis(MAX_MAX_INTERVAL)) as u64),
            multiple_clients: obj.get("multiple-clients").and_then(Value::as_bool),
            hosts: obj.get("hosts").and_then(Value::as_array).map(|hosts| {
                hosts
                    .iter()
                    .filter_map(|h| h.as_str().map(str::to_owned))
                    .collect()
            }),
        }
    }

    /// Overwrites every field that `newer` sets.
    pub fn merge(&mut self, newer: &Advice) {
        if newer.reconnect.is_some() {
            self.reconnect = newer.reconnect;
        }
        if newer.interval.is_some() {
            self.interval = newer.interval;
        }
        if newer.timeout.is_some() {
            self.timeout = newer.timeout;
        }
        if newer.max_interval.is_some() {
            self.max_interval = newer.max_interval;
        }
        if newer.multiple_clients.is_some() {
            self.multiple_clients = newer.multiple_clients;
        }
        if newer.hosts.is_some() {
            self.hosts.clone_from(&newer.hosts);
        }
    }

    /// Whether nothing was set.
    pub fn is_empty(&self) -> bool {
        *self == Advice::default()
    }

    /// `interval` as a wait, with a negative interval read as zero (callers check
    /// [`Advice::forbids_reconnect`] first).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval.unwrap_or(0).max(0) as u64)
    }

    /// `timeout`, or `default` when the server never said.
    pub fn timeout_or(&self, default: Duration) -> Duration {
        self.timeout.map(Duration::from_millis).unwrap_or(default)
    }

    /// `maxInterval`, if the server sent one.
    pub fn max_interval(&self) -> Option<Duration> {
        self.max_interval.map(Duration::from_millis)
    }

    /// A negative `interval` means "do not reconnect" (spec, `interval` advice).
    pub fn forbids_reconnect(&self) -> bool {
        self.interval.is_some_and(|i| i < 0)
    }
}

fn as_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_f64().map(|f| f as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_all_known_keys_and_ignores_junk() {
        let a = Advice::from_value(
            &json!({"reconnect":"handshake","interval":250,"timeout":20000,"maxInterval":10000,
                    "multiple-clients":true,"hosts":["h1"],"weird":1}),
            None,
        );
        assert_eq!(a.reconnect, Some(Reconnect::Handshake));
        assert_eq!(a.interval(), Duration::from_millis(250));
        assert_eq!(a.timeout, Some(20000));
        assert_eq!(a.max_interval(), Some(Duration::from_secs(10)));
        assert_eq!(a.multiple_clients, Some(true));
        assert_eq!(a.hosts, Some(vec!["h1".to_owned()]));
        let junk = Advice::from_value(&json!({"reconnect":"sometimes","interval":"soon"}), None);
        assert!(junk.is_empty());
        assert!(Advice::from_value(&json!("nope"), None).is_empty());
    }

    #[test]
    fn newer_keys_supersede_older_ones_and_absent_keys_are_kept() {
        let mut remembered = Advice::from_value(
            &json!({"reconnect":"retry","interval":0,"timeout":30000}),
            None,
        );
        remembered.merge(&Advice::from_value(&json!({"interval":2000}), None));
        assert_eq!(remembered.reconnect, Some(Reconnect::Retry));
        assert_eq!(remembered.interval, Some(2000));
        assert_eq!(remembered.timeout, Some(30000));
    }

    #[test]
    fn per_transport_advice_overrides_general_keys() {
        let a = Advice::from_value(
            &json!({"timeout":1000,"long-polling":{"timeout":5000},"websocket":{"timeout":9}}),
            Some("long-polling"),
        );
        assert_eq!(a.timeout, Some(5000));
    }

    #[test]
    fn advice_of_centuries_is_clamped_to_documented_bounds() {
        let a = Advice::from_value(
            &json!({"interval": 9_000_000_000_000_i64, "timeout": 1e300, "maxInterval": i64::MAX}),
            None,
        );
        assert_eq!(a.interval(), MAX_INTERVAL);
        assert_eq!(a.timeout_or(Duration::ZERO), MAX_TIMEOUT);
        assert_eq!(a.max_interval(), Some(MAX_MAX_INTERVAL));
        assert!(!a.forbids_reconnect());
        let usual = Advice::from_value(&json!({"interval": 0, "timeout": 110_000}), None);
        assert_eq!(usual.timeout_or(Duration::ZERO), Duration::from_secs(110));
    }

    #[test]
    fn negative_interval_forbids_reconnect() {
        let a = Advice::from_value(&json!({"interval":-1}), None);
        assert!(a.forbids_reconnect());
        assert_eq!(a.interval(), Duration::ZERO);
    }
}

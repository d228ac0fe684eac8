//! Gaps: every place where messages may have been lost although nothing was dropped by the
//! bridge itself, made visible (issue 13, "no silent loss").
//!
//! A [`Gap`] has a [`GapKind`] and a direction. [`report`] writes it three ways: a warning log
//! line (`Possible message loss.`, or an info line when something else covers it), the
//! counter `bridge_gaps_total{kind,direction}`, and a non-retained JSON message on the status
//! topic (the retained `online`/`offline` stays as it is), e.g.
//! `{"event":"session_expired","direction":"bayeux_to_mqtt","channels":["/a/**"],...}`.
//!
//! The kinds:
//! - `replay_gap`: the Bayeux server refused a stored replay id ([`super::replay`]);
//! - `session_expired`: the Bayeux session was lost and a new one subscribed again;
//! - `mqtt_session_lost`: the broker answered without the persistent session it had;
//! - `shutdown_abandoned`: received, not delivered when the drain deadline passed;
//! - `broker_queue_at_risk`: MQTT → Bayeux could not take messages for a while (the Bayeux
//!   side did not accept them, or the spool was full), so the broker held them, and a
//!   broker drops what goes over its per-client queue limit without telling the client.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};
use tracing::{info, warn};

use super::Shared;
use super::dead_letter::Undeliverable;
use super::stats::Direction;
use crate::metrics::GapLabels;
use crate::mqtt::QoS;

/// What kind of possible loss a [`Gap`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GapKind {
    /// A stored replay id was refused: events after it that the server no longer retains.
    ReplayGap,
    /// The Bayeux session was lost: what the server published between the last successful
    /// `/meta/connect` and the new session's subscriptions.
    SessionExpired,
    /// The MQTT broker lost the bridge's persistent session: QoS 1/2 messages it had queued.
    MqttSessionLost,
    /// Messages received and not delivered when the drain deadline passed.
    ShutdownAbandoned,
    /// MQTT → Bayeux stopped taking messages for at least [`AT_RISK_AFTER`]: the broker
    /// queued them for the bridge up to its own limit and may have dropped the rest.
    BrokerQueueAtRisk,
}

/// How long MQTT → Bayeux must have been unable to take messages before it is reported as
/// a `broker_queue_at_risk` gap: shorter spans are ordinary flow control.
pub(crate) const AT_RISK_AFTER: Duration = Duration::from_secs(1);

impl GapKind {
    /// The `kind` label and the status message's `event`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GapKind::ReplayGap => "replay_gap",
            GapKind::SessionExpired => "session_expired",
            GapKind::MqttSessionLost => "mqtt_session_lost",
            GapKind::ShutdownAbandoned => "shutdown_abandoned",
            GapKind::BrokerQueueAtRisk => "broker_queue_at_risk",
        }
    }
}

/// A span of time in which messages may have been lost.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gap {
    pub(crate) kind: GapKind,
    pub(crate) direction: Direction,
    /// The Bayeux channels (Bayeux → MQTT) or MQTT topics/filters (MQTT → Bayeux) concerned.
    pub(crate) names: Vec<String>,
    /// Start of the span, when known.
    pub(crate) since: Option<SystemTime>,
    /// End of the span.
    pub(crate) until: SystemTime,
    /// How many messages, when known.
    pub(crate) count: Option<u64>,
    /// Whether something recovers the messages (replay, the broker's redelivery): then the
    /// gap is reported at info, not as a loss.
    pub(crate) covered: bool,
    /// Kind-specific fields of the status message (and of the log line, as `detail`).
    pub(crate) extra: Map<String, Value>,
}

impl Gap {
    /// A gap of `kind` in `direction` ending now, with nothing else known yet.
    pub(crate) fn new(kind: GapKind, direction: Direction) -> Gap {
        Gap {
            kind,
            direction,
            names: Vec::new(),
            since: None,
            until: SystemTime::now(),
            count: None,
            covered: false,
            extra: Map::new(),
        }
    }

    /// The non-retained message published on the status topic.
    pub(crate) fn status_message(&self) -> Vec<u8> {
        let names = match self.direction {
            Direction::BayeuxToMqtt => "channels",
            Direction::MqttToBayeux => "topics",
        };
        let mut message = json!({
            "event": self.kind.as_str(),
            "direction": self.direction.as_str(),
            names: self.names,
            "since": self.since.map(rfc3339),
            "until": rfc3339(self.until),
            "count": self.count,
            "covered": self.covered,
        });
        if let Some(object) = message.as_object_mut() {
            object.extend(self.extra.clone());
        }
        message.to_string().into_bytes()
    }
}

/// Logs and counts `gap`, and publishes it on the status topic (waiting at most `wait` for
/// the broker's acknowledgement).
pub(crate) async fn report(shared: &Shared, gap: &Gap, wait: Duration) {
    log(gap);
    shared
        .stats
        .metrics
        .gaps
        .get_or_create(&GapLabels {
            kind: gap.kind.as_str(),
            direction: gap.direction.as_str(),
        })
        .inc();
    let mqtt = shared.mqtt();
    let status_topic = shared.status_topic();
    let payload = gap.status_message();
    let placeholder = placeholder(shared, gap, &payload);
    let publish = mqtt.publish(&status_topic, payload.into(), QoS::AtLeastOnce, false);
    match tokio::time::timeout(wait, publish).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(kind = gap.kind.as_str(), error = %e,
            "Could not publish the gap on the status topic."),
        Err(_) => warn!(
            kind = gap.kind.as_str(),
            "The gap report was not acknowledged by the broker in time."
        ),
    }
    if let Some(placeholder) = placeholder
        && tokio::time::timeout(wait, placeholder).await.is_err()
    {
        warn!(
            kind = gap.kind.as_str(),
            "The gap's dead letter was not acknowledged by the broker in time."
        );
    }
}

/// With a dead-letter topic, a gap whose message count is known also goes there, as one
/// placeholder for the messages it lost: reason the gap's kind, user property (or envelope
/// field) `count`, and the status message as the payload. Never counted as a drop (it is not
/// a message).
fn placeholder(
    shared: &Shared,
    gap: &Gap,
    status: &[u8],
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let count = gap.count.filter(|n| *n > 0)?;
    let topic = shared.dead_letters.topic_for(&[], 0)?;
    let names = gap.names.join(",");
    let mut letter = Undeliverable {
        direction: gap.direction,
        reason: gap.kind.as_str(),
        route: 0,
        channel: None,
        topic: None,
        error: format!("{count} message(s) lost ({})", gap.kind.as_str()),
        payload: bytes::Bytes::copy_from_slice(status),
        extra: vec![("count", count.to_string())],
    };
    match gap.direction {
        Direction::BayeuxToMqtt => letter.channel = Some(names),
        Direction::MqttToBayeux => letter.topic = Some(names),
    }
    Some(shared.dead_letters.deliver(shared.mqtt(), topic, letter))
}

/// How long a gap report waits for the broker while the bridge runs.
pub(crate) const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

fn log(gap: &Gap) {
    let kind = gap.kind.as_str();
    let direction = gap.direction.as_str();
    let names = gap.names.join(", ");
    let since = gap.since.map(rfc3339);
    let until = rfc3339(gap.until);
    let detail = Value::Object(gap.extra.clone()).to_string();
    if gap.covered {
        info!(kind, direction, names, since, until, count = gap.count, %detail,
            "Gap covered: messages of this span are recovered (replay or redelivery).");
    } else {
        warn!(kind, direction, names, since, until, count = gap.count, %detail,
            "Possible message loss.");
    }
}

/// Whether the Bayeux → MQTT queue was full (back-pressure), and when it last was.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    state: Mutex<PressureState>,
}

#[derive(Debug, Default)]
struct PressureState {
    /// Full since then, if full now.
    full_since: Option<Instant>,
    /// When the queue was last full (the end of the last full span).
    last_full: Option<Instant>,
}

impl Pressure {
    /// The queue is full now.
    pub(crate) fn full(&self) {
        let mut s = self.lock();
        s.full_since.get_or_insert_with(Instant::now);
    }

    /// The queue has room again.
    pub(crate) fn relieved(&self) {
        let mut s = self.lock();
        if s.full_since.take().is_some() {
            s.last_full = Some(Instant::now());
        }
    }

    /// The queue has room again: when it became full, if it was.
    pub(crate) fn relieved_since(&self) -> Option<Instant> {
        let mut s = self.lock();
        let since = s.full_since.take();
        if since.is_some() {
            s.last_full = Some(Instant::now());
        }
        since
    }

    /// Whether the queue was full at some time since `since` (any time, with `None`).
    pub(crate) fn was_full_since(&self, since: Option<Instant>) -> bool {
        let s = self.lock();
        s.full_since.is_some()
            || s.last_full
                .is_some_and(|last| since.is_none_or(|since| last >= since))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PressureState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The wall-clock time `instant` stood for (`instant` is in the past).
pub(crate) fn wall_clock(instant: Instant) -> SystemTime {
    SystemTime::now()
        .checked_sub(instant.elapsed())
        .unwrap_or(UNIX_EPOCH)
}

/// `time` as RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn the_status_message_names_kind_direction_span_and_extra_fields() {
        let mut gap = Gap::new(GapKind::SessionExpired, Direction::BayeuxToMqtt);
        gap.names = vec!["/a/**".to_owned()];
        gap.since = Some(UNIX_EPOCH);
        gap.until = UNIX_EPOCH + Duration::from_secs(1);
        gap.extra.insert("back_pressured".to_owned(), json!(true));
        let message: Value =
            serde_json::from_slice(&gap.status_message()).expect("the message is JSON");
        assert_eq!(
            message,
            json!({"event":"session_expired","direction":"bayeux_to_mqtt","channels":["/a/**"],
                   "since":"1970-01-01T00:00:00.000Z","until":"1970-01-01T00:00:01.000Z",
                   "count":null,"covered":false,"back_pressured":true})
        );
    }

    #[test]
    fn pressure_remembers_a_full_queue_after_it_drained() {
        let p = Pressure::default();
        let before = Instant::now();
        assert!(!p.was_full_since(None));
        p.full();
        assert!(p.was_full_since(Some(Instant::now())), "full now");
        p.relieved();
        assert!(p.was_full_since(Some(before)));
        assert!(!p.was_full_since(Some(Instant::now() + Duration::from_secs(1))));
    }
}

//! Whether the bridge can forward: both sides connected and every subscription confirmed.
//!
//! Fed by the pipelines' view of each side's events; logs each transition at info ("Bridge
//! ready." / "Bridge not ready: …"), which is also what tests and operators wait for. The
//! HTTP `/readyz` endpoint reads the same state, and systemd's `STATUS=` line shows it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::stats::Stats;
use crate::bayeux::Liveness;
use crate::metrics::{SideLabels, SubscriptionLabels};
use crate::notify::Notifier;

#[derive(Debug, Default)]
struct State {
    bayeux_wanted: BTreeSet<String>,
    mqtt_wanted: BTreeSet<String>,
    bayeux_connected: bool,
    mqtt_connected: bool,
    /// The broker refused the credentials on the last connection attempt.
    mqtt_credentials_refused: bool,
    /// The wanted subscriptions not confirmed yet (kept rather than the confirmed ones, so
    /// that each confirmation and each readiness check costs the same with one subscription
    /// or ten thousand).
    bayeux_missing: BTreeSet<String>,
    mqtt_missing: BTreeSet<String>,
    /// Why the Bayeux data plane counts as stalled, while it does (see
    /// [`Readiness::bayeux_liveness`]).
    bayeux_stalled: Option<String>,
    /// With `[cluster]`: whether the member knows its role (`None` without one).
    cluster_role_known: Option<bool>,
    ready: bool,
    /// The last `STATUS=` sent.
    status: String,
}

/// The `STATUS=` line: forwarding, or what the bridge waits for and where each side stands.
fn status_line(s: &State, reasons: &[String]) -> String {
    if reasons.is_empty() {
        return "Forwarding: both sides connected, subscriptions confirmed".to_owned();
    }
    let side = |name: &str, up: bool, missing: &BTreeSet<String>, wanted: &BTreeSet<String>| {
        format!(
            "{name} {}, {}/{} subscriptions",
            if up { "connected" } else { "not connected" },
            wanted.len() - missing.len(),
            wanted.len()
        )
    };
    format!(
        "Not ready: {}. {}; {}",
        reasons.join("; "),
        side(
            "Bayeux",
            s.bayeux_connected,
            &s.bayeux_missing,
            &s.bayeux_wanted
        ),
        side("MQTT", s.mqtt_connected, &s.mqtt_missing, &s.mqtt_wanted),
    )
}

/// Names the first [`LISTED`] of `names`, and how many more there are.
fn listed(names: &BTreeSet<String>) -> String {
    let first: Vec<&str> = names.iter().take(LISTED).map(String::as_str).collect();
    match names.len().saturating_sub(LISTED) {
        0 => first.join(", "),
        more => format!("{} and {more} more", first.join(", ")),
    }
}

/// How many missing subscriptions the reasons name (the rest are counted).
const LISTED: usize = 10;

/// Shared readiness state.
#[derive(Debug)]
pub struct Readiness {
    state: Mutex<State>,
    /// Where the state is mirrored as gauges (`bridge_connected`, `bridge_ready`, ...).
    stats: Option<Arc<Stats>>,
    /// systemd, told `STATUS=` whenever it changes.
    notifier: Option<Arc<Notifier>>,
}

impl Readiness {
    /// Readiness for a bridge that subscribes to `bayeux` channels and `mqtt` filters.
    pub fn new(
        bayeux: impl IntoIterator<Item = String>,
        mqtt: impl IntoIterator<Item = String>,
    ) -> Self {
        let (bayeux_wanted, mqtt_wanted): (BTreeSet<String>, BTreeSet<String>) =
            (bayeux.into_iter().collect(), mqtt.into_iter().collect());
        Readiness {
            state: Mutex::new(State {
                bayeux_missing: bayeux_wanted.clone(),
                mqtt_missing: mqtt_wanted.clone(),
                bayeux_wanted,
                mqtt_wanted,
                ..State::default()
            }),
            stats: None,
            notifier: None,
        }
    }

    /// Tells systemd what the bridge waits for (`STATUS=`) whenever that changes. `READY=1` is
    /// not sent from here: the daemon sends it once its clients have started (see
    /// [`crate::bridge::run`]), so a peer down at boot does not fail the unit's start.
    pub fn with_notifier(mut self, notifier: Option<Arc<Notifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Mirrors the state into `stats`' gauges.
    pub fn with_stats(mut self, stats: Arc<Stats>) -> Self {
        self.stats = Some(stats);
        self.mirror_subscriptions();
        self
    }

    /// A member of a `[cluster]`: not ready until it knows its role.
    pub fn with_cluster(self, cluster: bool) -> Self {
        if cluster {
            self.lock().cluster_role_known = Some(false);
        }
        self
    }

    /// Whether the cluster member knows its role (see `bridge::cluster`).
    pub fn cluster_role_known(&self, known: bool) {
        self.update(|s| {
            if s.cluster_role_known.is_some() {
                s.cluster_role_known = Some(known);
            }
        });
    }

    /// Whether the bridge is ready now.
    pub fn is_ready(&self) -> bool {
        self.lock().ready
    }

    /// The `STATUS=` line for the current state.
    pub fn status(&self) -> String {
        let state = self.lock();
        status_line(&state, &self.reasons_of(&state))
    }

    /// Why the bridge is not ready (empty when it is).
    pub fn reasons(&self) -> Vec<String> {
        let state = self.lock();
        self.reasons_of(&state)
    }

    /// The Bayeux side connected (`true`) or lost its connection (`false`).
    pub fn bayeux_connected(&self, up: bool) {
        self.update(|s| s.bayeux_connected = up);
    }

    /// A new Bayeux session: every subscription must be confirmed again.
    pub fn bayeux_new_session(&self) {
        self.update(|s| s.bayeux_missing = s.bayeux_wanted.clone());
        self.mirror_subscriptions();
    }

    /// The Bayeux server confirmed `channel`.
    pub fn bayeux_confirmed(&self, channel: &str) {
        let mut confirmed = false;
        self.update(|s| confirmed = s.bayeux_missing.remove(channel));
        if confirmed {
            self.mirror_subscription("bayeux", channel, true);
        }
    }

    /// What must be subscribed from now on (after a reload). Subscriptions no longer wanted
    /// are forgotten, also in the metrics; a re-added one counts only once confirmed again.
    pub fn set_wanted(
        &self,
        bayeux: impl IntoIterator<Item = String>,
        mqtt: impl IntoIterator<Item = String>,
    ) {
        let (bayeux, mqtt): (BTreeSet<String>, BTreeSet<String>) =
            (bayeux.into_iter().collect(), mqtt.into_iter().collect());
        let mut gone: Vec<(&'static str, String)> = Vec::new();
        self.update(|s| {
            gone.extend(
                s.bayeux_wanted
                    .difference(&bayeux)
                    .map(|b| ("bayeux", b.clone())),
            );
            gone.extend(s.mqtt_wanted.difference(&mqtt).map(|m| ("mqtt", m.clone())));
            // Still confirmed: wanted before and now, and not missing before.
            let missing =
                |new: &BTreeSet<String>, old: &BTreeSet<String>, was: &BTreeSet<String>| {
                    new.iter()
                        .filter(|x| !old.contains(*x) || was.contains(*x))
                        .cloned()
                        .collect()
                };
            s.bayeux_missing = missing(&bayeux, &s.bayeux_wanted, &s.bayeux_missing);
            s.mqtt_missing = missing(&mqtt, &s.mqtt_wanted, &s.mqtt_missing);
            s.bayeux_wanted = bayeux;
            s.mqtt_wanted = mqtt;
        });
        self.mirror_subscriptions();
        if let Some(stats) = &self.stats {
            for (side, subscription) in gone {
                stats
                    .metrics
                    .subscriptions
                    .remove(&SubscriptionLabels { side, subscription });
            }
        }
    }

    /// The Bayeux client's [`Liveness`], checked periodically: a session that has gone
    /// longer than its advice allows without any exchange with the server is stalled (a
    /// dead path, a reply that never ends, a client that no longer turns), and the bridge is
    /// not ready while it is, even if the session still counts as connected.
    pub fn bayeux_liveness(&self, liveness: Liveness) {
        let stalled = liveness.is_stalled().then(|| {
            format!(
                "Bayeux data plane stalled: no exchange with the server within {} s",
                liveness.expected_within.as_secs()
            )
        });
        if self.lock().bayeux_stalled != stalled {
            match &stalled {
                Some(reason) => warn!(%reason, "Bayeux data plane stalled."),
                None => info!("Bayeux data plane moving again."),
            }
            self.update(|s| s.bayeux_stalled = stalled);
        }
    }

    /// The MQTT side connected; with a present session the broker kept the subscriptions.
    pub fn mqtt_connected(&self, session_present: bool) {
        self.update(|s| {
            s.mqtt_connected = true;
            s.mqtt_credentials_refused = false;
            if session_present {
                s.mqtt_missing.clear();
            } else {
                s.mqtt_missing = s.mqtt_wanted.clone();
            }
        });
        self.mirror_subscriptions();
    }

    /// The MQTT side lost its connection.
    pub fn mqtt_disconnected(&self) {
        self.update(|s| s.mqtt_connected = false);
    }

    /// A connection attempt to the broker failed; `refused` when it refused the credentials
    /// (said as such by `/readyz` and `STATUS=` until an attempt fails otherwise or succeeds).
    pub fn mqtt_credentials_refused(&self, refused: bool) {
        self.update(|s| s.mqtt_credentials_refused = refused);
    }

    /// The broker confirmed `filter`.
    pub fn mqtt_subscribed(&self, filter: &str) {
        let mut confirmed = false;
        self.update(|s| confirmed = s.mqtt_missing.remove(filter));
        if confirmed {
            self.mirror_subscription("mqtt", filter, true);
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.lock();
        change(&mut state);
        let reasons = self.reasons_of(&state);
        let ready = reasons.is_empty();
        self.mirror(&state, ready);
        if ready != state.ready {
            state.ready = ready;
            if ready {
                info!("Bridge ready.");
            } else {
                info!(reasons = %reasons.join("; "), "Bridge not ready.");
            }
        }
        if let Some(notifier) = &self.notifier {
            let status = status_line(&state, &reasons);
            if status != state.status {
                notifier.status(&status);
                state.status = status;
            }
        }
    }

    fn mirror(&self, s: &State, ready: bool) {
        let Some(stats) = &self.stats else { return };
        let m = &stats.metrics;
        let flag = |b: bool| i64::from(b);
        m.connected
            .get_or_create(&SideLabels { side: "bayeux" })
            .set(flag(s.bayeux_connected));
        m.connected
            .get_or_create(&SideLabels { side: "mqtt" })
            .set(flag(s.mqtt_connected));
        m.ready.set(flag(ready));
    }

    /// Sets every wanted subscription's gauge (after a change to many of them). None with
    /// `http.per_route_metrics = false`: `bridge_ready` tells whether all are confirmed.
    fn mirror_subscriptions(&self) {
        if !self.stats.as_ref().is_some_and(|s| s.per_route()) {
            return;
        }
        let state = self.lock();
        for (side, wanted, missing) in [
            ("bayeux", &state.bayeux_wanted, &state.bayeux_missing),
            ("mqtt", &state.mqtt_wanted, &state.mqtt_missing),
        ] {
            for subscription in wanted {
                self.mirror_subscription(side, subscription, !missing.contains(subscription));
            }
        }
    }

    /// Sets one subscription's gauge.
    fn mirror_subscription(&self, side: &'static str, subscription: &str, confirmed: bool) {
        let Some(stats) = self.stats.as_ref().filter(|s| s.per_route()) else {
            return;
        };
        let labels = SubscriptionLabels {
            side,
            subscription: subscription.to_owned(),
        };
        (stats.metrics.subscriptions.get_or_create(&labels)).set(i64::from(confirmed));
    }

    fn reasons_of(&self, s: &State) -> Vec<String> {
        let mut reasons = Vec::new();
        if !s.bayeux_connected {
            reasons.push("Bayeux server not connected".to_owned());
        }
        if let Some(stalled) = &s.bayeux_stalled {
            reasons.push(stalled.clone());
        }
        if !s.mqtt_connected {
            reasons.push(if s.mqtt_credentials_refused {
                "MQTT broker refused the credentials".to_owned()
            } else {
                "MQTT broker not connected".to_owned()
            });
        }
        if s.cluster_role_known == Some(false) {
            reasons.push("cluster role not known yet (waiting for the group's records)".to_owned());
        }
        for (side, missing) in [("Bayeux", &s.bayeux_missing), ("MQTT", &s.mqtt_missing)] {
            if !missing.is_empty() {
                reasons.push(format!(
                    "{side} subscriptions not confirmed: {}",
                    listed(missing)
                ));
            }
        }
        reasons
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn many_missing_subscriptions_are_named_ten_at_a_time_and_counted() {
        let channels: Vec<String> = (10..25).map(|i| format!("/c/{i}")).collect();
        let r = Readiness::new(channels.clone(), []);
        r.bayeux_connected(true);
        r.mqtt_connected(false);
        r.bayeux_confirmed("/c/10");
        r.bayeux_confirmed("/not/wanted");
        assert_eq!(
            r.reasons(),
            vec![
                "Bayeux subscriptions not confirmed: /c/11, /c/12, /c/13, /c/14, /c/15, /c/16, \
                 /c/17, /c/18, /c/19, /c/20 and 4 more"
            ]
        );
        assert!(
            r.status().ends_with(
                "Bayeux connected, 1/15 subscriptions; MQTT connected, 0/0 subscriptions"
            ),
            "{}",
            r.status()
        );
        for channel in &channels {
            r.bayeux_confirmed(channel);
        }
        assert!(r.is_ready());
    }

    #[test]
    fn ready_only_with_both_sides_up_and_everything_confirmed() {
        let r = Readiness::new(["/a".to_owned()], ["t/#".to_owned()]);
        assert!(!r.is_ready());
        r.bayeux_connected(true);
        r.bayeux_confirmed("/a");
        r.mqtt_connected(false);
        assert!(!r.is_ready());
        assert_eq!(r.reasons(), vec!["MQTT subscriptions not confirmed: t/#"]);
        r.mqtt_subscribed("t/#");
        assert!(r.is_ready());
        r.bayeux_new_session();
        assert!(
            !r.is_ready(),
            "a new Bayeux session must confirm its subscriptions again"
        );
        r.bayeux_confirmed("/a");
        assert!(r.is_ready());
        r.mqtt_disconnected();
        assert!(!r.is_ready());
        r.mqtt_connected(true);
        assert!(
            r.is_ready(),
            "a present session keeps the broker-side subscriptions"
        );
    }

    #[test]
    fn refused_mqtt_credentials_are_reported_as_such_until_the_next_outcome() {
        let r = Readiness::new([], []);
        r.bayeux_connected(true);
        assert_eq!(r.reasons(), vec!["MQTT broker not connected"]);
        r.mqtt_credentials_refused(true);
        assert_eq!(r.reasons(), vec!["MQTT broker refused the credentials"]);
        assert!(
            r.status()
                .starts_with("Not ready: MQTT broker refused the credentials."),
            "{}",
            r.status()
        );
        r.mqtt_credentials_refused(false);
        assert_eq!(r.reasons(), vec!["MQTT broker not connected"]);
        r.mqtt_credentials_refused(true);
        r.mqtt_connected(false);
        assert!(r.is_ready());
        r.mqtt_disconnected();
        assert_eq!(r.reasons(), vec!["MQTT broker not connected"]);
    }

    #[test]
    fn a_stalled_bayeux_session_is_not_ready_even_while_connected() {
        use std::time::Duration;
        let r = Readiness::new(["/a".to_owned()], []);
        r.bayeux_connected(true);
        r.bayeux_confirmed("/a");
        r.mqtt_connected(false);
        assert!(r.is_ready());
        let live = |since: u64| Liveness {
            since_exchange: Duration::from_secs(since),
            expected_within: Duration::from_secs(45),
        };
        r.bayeux_liveness(live(45));
        assert!(r.is_ready());
        r.bayeux_liveness(live(46));
        assert!(!r.is_ready());
        assert_eq!(
            r.reasons(),
            vec!["Bayeux data plane stalled: no exchange with the server within 45 s"]
        );
        r.bayeux_liveness(live(0));
        assert!(r.is_ready());
    }

    #[test]
    fn subscription_gauges_follow_per_route_metrics() {
        for per_route in [true, false] {
            let stats = Arc::new(Stats::default());
            stats.set_routes(vec!["route[1]".into()], per_route);
            let r = Readiness::new(["/a".to_owned(), "/b".to_owned()], [])
                .with_stats(Arc::clone(&stats));
            r.bayeux_connected(true);
            r.bayeux_confirmed("/a");
            let text = stats.metrics.encode();
            assert_eq!(
                text.contains(
                    r#"bridge_subscription_confirmed{side="bayeux",subscription="/a"} 1"#
                ),
                per_route,
                "{text}"
            );
            assert_eq!(
                text.contains(
                    r#"bridge_subscription_confirmed{side="bayeux",subscription="/b"} 0"#
                ),
                per_route,
                "{text}"
            );
        }
    }

    #[test]
    fn a_reload_forgets_removed_subscriptions_and_waits_for_new_ones() {
        let stats = Arc::new(Stats::default());
        let r =
            Readiness::new(["/a".to_owned()], ["t/#".to_owned()]).with_stats(Arc::clone(&stats));
        r.bayeux_connected(true);
        r.bayeux_confirmed("/a");
        r.mqtt_connected(false);
        r.mqtt_subscribed("t/#");
        assert!(r.is_ready());
        r.set_wanted(["/b".to_owned()], ["t/#".to_owned()]);
        assert_eq!(r.reasons(), vec!["Bayeux subscriptions not confirmed: /b"]);
        let text = stats.metrics.encode();
        assert!(!text.contains(r#"subscription="/a""#), "{text}");
        r.bayeux_confirmed("/b");
        assert!(r.is_ready());
        // Re-adding /a later: not confirmed until the server says so again.
        r.set_wanted(["/a".to_owned(), "/b".to_owned()], ["t/#".to_owned()]);
        assert!(!r.is_ready());
    }

    #[test]
    fn a_cluster_member_is_ready_only_once_it_knows_its_role() {
        let r = Readiness::new(["/a".to_owned()], ["t/#".to_owned()]).with_cluster(true);
        r.bayeux_connected(true);
        r.bayeux_confirmed("/a");
        r.mqtt_connected(true);
        assert_eq!(
            r.reasons(),
            vec!["cluster role not known yet (waiting for the group's records)"]
        );
        r.cluster_role_known(true);
        assert!(r.is_ready());
        r.cluster_role_known(false);
        assert!(!r.is_ready());
        // Without [cluster] the role is no condition.
        let alone = Readiness::new(Vec::<String>::new(), Vec::<String>::new());
        alone.bayeux_connected(true);
        alone.mqtt_connected(true);
        alone.cluster_role_known(false);
        assert!(alone.is_ready());
    }
}

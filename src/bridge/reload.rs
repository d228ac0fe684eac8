//! Live reload (SIGHUP, `systemctl reload`): re-read the config and apply it without dropping
//! either connection.
//!
//! - Routes: new ones subscribe, removed ones unsubscribe, changed ones are replaced; routes
//!   that did not change keep their subscriptions, so their traffic never pauses.
//! - `[bayeux]` changed: a new Bayeux client takes over (new session, every route subscribed
//!   on it); the old one finishes what it has queued and disconnects. The MQTT side is
//!   untouched.
//! - `[mqtt]` changed: Bayeux → MQTT pauses and lets its publishes be acknowledged, the old
//!   MQTT client disconnects cleanly, a new one connects with the new settings, and both
//!   pipelines continue on it. MQTT messages not yet forwarded stay unacknowledged and the
//!   broker delivers them again. The Bayeux side is untouched.
//! - `[spool]` changed: the reload is refused (the spool files are open and hold messages).
//! - `[cluster]` changed: refused too (the member record and its will belong to the connection).
//! - `[bridge]`, `[log]`, `[http]`, `[replay]` changed: logged; they take effect at the next
//!   restart.
//! - An invalid file is refused with a log line naming the file, key and reason; the running
//!   config stays in force.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How long a reload of `[mqtt]` waits for Bayeux → MQTT publishes to be acknowledged, and
/// then for the old client to disconnect.
const SETTLE: Duration = Duration::from_secs(3);

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::mapping::{self, Route};
use super::{
    BridgeError, Shared, b2m, bayeux_options, mqtt_specs, publisher, queued, spawn_watcher, wanted,
};
use crate::bayeux::{Client, Subscription};
use crate::config::{self, Config, RouteConfig};
use crate::notify::Notifier;

/// A Bayeux → MQTT route the pipeline is reading.
struct LiveRoute {
    key: u64,
    config: RouteConfig,
    route: Arc<Route>,
}

/// How the running Bayeux → MQTT routes compare with those of a reloaded file.
struct RouteDiff {
    /// Running routes that stay (their config did not change).
    kept: Vec<LiveRoute>,
    /// Running routes whose config is no longer in the file.
    removed: Vec<LiveRoute>,
    /// Routes of the file that are not running.
    added: Vec<(RouteConfig, Route)>,
}

impl RouteDiff {
    /// Compares the `running` routes with the Bayeux → MQTT ones among `configs`, compiled
    /// as `routes`.
    fn new(running: Vec<LiveRoute>, configs: &[RouteConfig], routes: &[Route]) -> RouteDiff {
        let mut wanted: Vec<(RouteConfig, Route)> = configs
            .iter()
            .cloned()
            .zip(routes.iter().cloned())
            .filter(|(_, r)| r.subscribes_bayeux())
            .collect();
        let mut kept = Vec::new();
        let mut removed = Vec::new();
        for live in running {
            match wanted.iter().position(|(config, _)| *config == live.config) {
                Some(pos) => {
                    wanted.remove(pos);
                    kept.push(live);
                }
                None => removed.push(live),
            }
        }
        RouteDiff {
            kept,
            removed,
            added: wanted,
        }
    }

    /// Pairs each removed route with an added one that reads the same Bayeux pattern: a
    /// changed route. Returns them, under the running route's key with the new config and
    /// route, no longer among the removed and the added.
    fn changed_in_place(&mut self) -> Vec<LiveRoute> {
        let mut changed = Vec::new();
        for live in std::mem::take(&mut self.removed) {
            let same = self
                .added
                .iter()
                .position(|(_, r)| r.bayeux == live.route.bayeux);
            match same {
                Some(pos) => {
                    let (config, route) = self.added.remove(pos);
                    changed.push(LiveRoute {
                        key: live.key,
                        config,
                        route: Arc::new(route),
                    });
                }
                None => self.removed.push(live),
            }
        }
        changed
    }

    /// Whether a route that stays or is added reads `pattern`.
    fn still_reads(&self, pattern: &str) -> bool {
        self.kept.iter().any(|k| k.route.bayeux.as_str() == pattern)
            || self.added.iter().any(|(_, r)| r.bayeux.as_str() == pattern)
    }
}

/// What a reload compares against and changes.
pub(super) struct Live {
    config: Config,
    b2m_routes: Vec<LiveRoute>,
    next_key: u64,
    b2m: mpsc::Sender<b2m::Control>,
    m2b: mpsc::Sender<super::m2b::Swap>,
    /// Where a publishing session that stops for good reports it (`super::publisher`).
    fatal: mpsc::Sender<BridgeError>,
}

impl Live {
    pub(super) fn new(
        config: Config,
        b2m: mpsc::Sender<b2m::Control>,
        m2b: mpsc::Sender<super::m2b::Swap>,
        fatal: mpsc::Sender<BridgeError>,
    ) -> Self {
        Live {
            config,
            b2m_routes: Vec::new(),
            next_key: 0,
            b2m,
            m2b,
            fatal,
        }
    }

    /// The config in force.
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    /// Subscribes every Bayeux → MQTT route on `client`; returns what the pipeline reads.
    pub(super) async fn subscribe_all(
        &mut self,
        client: &Client,
        configs: &[RouteConfig],
        routes: &[Route],
    ) -> Result<Vec<(u64, Arc<Route>, Subscription)>, BridgeError> {
        let mut out = Vec::new();
        for (config, route) in configs
            .iter()
            .zip(routes)
            .filter(|(_, r)| r.subscribes_bayeux())
        {
            let subscription = client.subscribe(route.bayeux.as_str()).await?;
            let key = self.key();
            let route = Arc::new(route.clone());
            self.b2m_routes.push(LiveRoute {
                key,
                config: config.clone(),
                route: Arc::clone(&route),
            });
            out.push((key, route, subscription));
        }
        Ok(out)
    }

    /// Re-reads `path` and applies it; never fails the bridge.
    pub(super) async fn reload(
        &mut self,
        path: &Path,
        shared: &Arc<Shared>,
        watcher: &mut JoinHandle<BridgeError>,
        notifier: Option<&Notifier>,
    ) {
        info!(file = %path.display(), "Reloading the config.");
        if let Some(n) = notifier {
            n.reloading();
        }
        match self.apply(path, shared, watcher).await {
            Ok(summary) => info!(%summary, "Config reloaded."),
            Err(e) => {
                error!(error = %e, "Config reload refused; the running config stays in force.")
            }
        }
        if let Some(n) = notifier {
            // systemd waits for READY=1 after RELOADING=1, whatever the outcome.
            n.ready();
        }
    }

    /// Applies the config in `path` (see the module docs); returns what changed.
    async fn apply(
        &mut self,
        path: &Path,
        shared: &Arc<Shared>,
        watcher: &mut JoinHandle<BridgeError>,
    ) -> Result<String, String> {
        let (new, routes) = self.load_checked(path)?;
        let mut summary = Vec::new();
        if new.bayeux != self.config.bayeux {
            self.replace_bayeux(&new, &routes, shared, watcher).await?;
            summary
                .push("reconnected to the Bayeux server with the new [bayeux] settings".to_owned());
        } else {
            summary.extend(
                self.update_bayeux_routes(&new, &routes, &shared.bayeux())
                    .await?,
            );
        }
        if new.bayeux != self.config.bayeux || publisher::needed(&routes) != shared.has_publisher()
        {
            self.replace_publisher(&new, &routes, shared)?;
        }
        if new.mqtt != self.config.mqtt {
            self.replace_mqtt(&new, &routes, shared).await?;
            summary.push("reconnected to the MQTT broker with the new [mqtt] settings".to_owned());
        } else {
            summary.extend(self.update_mqtt_subscriptions(&routes, shared));
        }
        let (channels, filters) = wanted(&routes, self.config.cluster.as_ref());
        shared.set_routes(routes);
        shared.readiness.set_wanted(channels, filters);
        self.adopt(new);
        if summary.is_empty() {
            summary.push("no route changes".to_owned());
        }
        Ok(summary.join("; "))
    }

    /// Loads `path` and checks it as the daemon's start would, and against what cannot change
    /// while running (`[spool]`); returns it with its routes compiled. Warns about what it
    /// changes that takes effect only at the next restart.
    fn load_checked(&self, path: &Path) -> Result<(Config, Vec<Route>), String> {
        let new = config::load(path).map_err(|e| e.to_string())?;
        super::preflight(&new, path).map_err(|e| e.to_string())?;
        if new.spool != self.config.spool {
            // The spool's files are open and hold messages: moving or shrinking it under the
            // running pipelines could lose or reorder them.
            return Err(format!(
                "{}: [spool] changed; a running bridge cannot switch spools safely: restart \
                 it to apply the change (what the current spool holds is delivered first if \
                 the directory stays the same)",
                path.display()
            ));
        }
        if new.cluster != self.config.cluster {
            // The member record, its will and the shared subscriptions belong to the running
            // connection and group.
            return Err(format!(
                "{}: [cluster] changed; restart the bridge to apply it",
                path.display()
            ));
        }
        // Checked against the running `[replay]`: a change to it waits for a restart.
        let routes = super::compile_routes(&new, self.config.replay.enabled)
            .map_err(|e| e.in_file(path).to_string())?;
        for warning in new.warnings().into_iter().chain(mapping::warnings(&routes)) {
            warn!(%warning, "Config warning.");
        }
        for (section, changed) in [
            ("[bridge]", new.bridge != self.config.bridge),
            ("[log]", new.log != self.config.log),
            ("[http]", new.http != self.config.http),
            ("[replay]", new.replay != self.config.replay),
        ] {
            if changed {
                warn!(
                    section,
                    "This section changed; it takes effect at the next restart."
                );
            }
        }
        Ok((new, routes))
    }

    /// Makes `new` the config in force, except for the sections that are not applied live:
    /// they keep their running values, so the next reload still sees them as changed.
    fn adopt(&mut self, new: Config) {
        let running = std::mem::replace(&mut self.config, new);
        self.config.bridge = running.bridge;
        self.config.log = running.log;
        self.config.http = running.http;
        self.config.replay = running.replay;
    }

    /// Routes diff on the running Bayeux client.
    async fn update_bayeux_routes(
        &mut self,
        new: &Config,
        routes: &[Route],
        client: &Client,
    ) -> Result<Vec<String>, String> {
        let mut diff = RouteDiff::new(std::mem::take(&mut self.b2m_routes), &new.route, routes);
        let mut summary = Vec::new();
        let applied = self.apply_diff(&mut diff, client, &mut summary).await;
        // What the pipeline reads now, also after a failure half-way: the routes kept, changed
        // or added, and the removed ones not reached yet. A later reload compares with this,
        // so it neither subscribes a route twice nor forgets one.
        self.b2m_routes = diff.kept;
        self.b2m_routes.append(&mut diff.removed);
        applied.map(|()| summary)
    }

    /// Applies `diff` to the pipeline and `client`, moving each route into `diff.kept` once
    /// it is read and out of `diff.removed` once it is not.
    async fn apply_diff(
        &mut self,
        diff: &mut RouteDiff,
        client: &Client,
        summary: &mut Vec<String>,
    ) -> Result<(), String> {
        // A changed route that still reads the same pattern keeps its subscription: nothing
        // it has buffered is lost, and the server sees no unsubscribe/subscribe.
        for changed in diff.changed_in_place() {
            let replace = b2m::Control::Replace {
                key: changed.key,
                route: Arc::clone(&changed.route),
            };
            let _ = self.b2m.send(replace).await;
            summary.push(format!(
                "changed the route reading {}",
                changed.route.bayeux
            ));
            diff.kept.push(changed);
        }
        while let Some(live) = diff.removed.pop() {
            let _ = self.b2m.send(b2m::Control::Remove { key: live.key }).await;
            let pattern = live.route.bayeux.as_str();
            if !diff.still_reads(pattern) {
                client
                    .unsubscribe(pattern)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            summary.push(format!("stopped reading {pattern}"));
        }
        for (config, route) in std::mem::take(&mut diff.added) {
            let subscription = client
                .subscribe(route.bayeux.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let key = self.key();
            let route = Arc::new(route);
            summary.push(format!("started reading {}", route.bayeux));
            let _ = self
                .b2m
                .send(b2m::Control::Add {
                    key,
                    route: Arc::clone(&route),
                    subscription,
                })
                .await;
            diff.kept.push(LiveRoute { key, config, route });
        }
        Ok(())
    }

    /// A new Bayeux client for new `[bayeux]` settings; the old one winds down.
    async fn replace_bayeux(
        &mut self,
        new: &Config,
        routes: &[Route],
        shared: &Arc<Shared>,
        watcher: &mut JoinHandle<BridgeError>,
    ) -> Result<(), String> {
        let (client, events) =
            Client::new(shared.with_replay(bayeux_options(new, queued(new, routes))))
                .map_err(|e| e.to_string())?;
        // Subscribed on the new client first: if that fails, the pipeline still reads the
        // old one's routes and the reload is refused as a whole.
        let old_routes = std::mem::take(&mut self.b2m_routes);
        let subscriptions = match self.subscribe_all(&client, &new.route, routes).await {
            Ok(subscriptions) => subscriptions,
            Err(e) => {
                self.b2m_routes = old_routes;
                return Err(e.to_string());
            }
        };
        for live in old_routes {
            let _ = self.b2m.send(b2m::Control::Remove { key: live.key }).await;
        }
        for (key, route, subscription) in subscriptions {
            let _ = self
                .b2m
                .send(b2m::Control::Add {
                    key,
                    route,
                    subscription,
                })
                .await;
        }
        let old = shared.bayeux();
        shared.set_bayeux(client);
        watcher.abort();
        shared.readiness.bayeux_connected(false);
        shared.readiness.bayeux_new_session();
        *watcher = spawn_watcher(events, shared);
        // Publishes already queued on the old client are sent before its /meta/disconnect.
        tokio::spawn(async move { old.disconnect().await });
        Ok(())
    }

    /// A new publishing session for new `[bayeux]` settings or routes (or none, when the
    /// routes no longer need one); the old one finishes what it has queued and disconnects.
    fn replace_publisher(
        &self,
        new: &Config,
        routes: &[Route],
        shared: &Shared,
    ) -> Result<(), String> {
        let client = publisher::start(new, routes, &self.fatal).map_err(|e| e.to_string())?;
        if let Some(old) = shared.set_publisher(client) {
            tokio::spawn(async move { old.disconnect().await });
        }
        Ok(())
    }

    /// A new MQTT client for new `[mqtt]` settings; see the module docs for the order.
    async fn replace_mqtt(
        &mut self,
        new: &Config,
        routes: &[Route],
        shared: &Arc<Shared>,
    ) -> Result<(), String> {
        let options = super::mqtt_options(new);
        options.validate().map_err(|e| e.to_string())?;
        let _ = self.b2m.send(b2m::Control::Pause).await;
        if let Some(spools) = &shared.spools {
            spools.b2m_paused.send_replace(true);
        }
        let settle_until = tokio::time::Instant::now() + SETTLE;
        while shared
            .b2m_in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            && tokio::time::Instant::now() < settle_until
        {
            // Polled, bounded: completions do not announce "all done".
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old = shared.mqtt();
        old.disconnect(SETTLE).await;
        shared.readiness.mqtt_disconnected();
        let (mqtt, events) =
            crate::mqtt::start(options, mqtt_specs(routes, self.config.cluster.as_ref()))
                .map_err(|e| e.to_string())?;
        shared.set_mqtt(mqtt.clone(), &new.mqtt);
        let _ = self.m2b.send((mqtt.clone(), events)).await;
        let _ = self.b2m.send(b2m::Control::Resume).await;
        if let Some(spools) = &shared.spools {
            spools.b2m_paused.send_replace(false);
        }
        Ok(())
    }

    /// MQTT filters diff on the running MQTT client. The (un)subscribes are handed over and
    /// not awaited: with the broker down they would wait for it, and a reload must never hold
    /// up a shutdown. Readiness follows the broker's confirmations.
    fn update_mqtt_subscriptions(&self, routes: &[Route], shared: &Shared) -> Vec<String> {
        let cluster = self.config.cluster.as_ref();
        let old = mqtt_specs(&shared.routes(), cluster);
        let new = mqtt_specs(routes, cluster);
        let mut summary = Vec::new();
        for spec in old
            .iter()
            .filter(|o| !new.iter().any(|n| n.filter == o.filter))
        {
            let (mqtt, filter) = (shared.mqtt(), spec.filter.clone());
            summary.push(format!("unsubscribing from {filter}"));
            tokio::spawn(async move {
                if let Err(e) = mqtt.unsubscribe(&filter).await {
                    warn!(%filter, error = %e, "MQTT unsubscribe after a reload failed.");
                }
            });
        }
        for spec in new
            .iter()
            .filter(|n| !old.iter().any(|o| o.filter == n.filter && o.qos == n.qos))
        {
            let (mqtt, spec) = (shared.mqtt(), spec.clone());
            summary.push(format!("subscribing to {}", spec.filter));
            tokio::spawn(async move {
                let filter = spec.filter.clone();
                if let Err(e) = mqtt.subscribe(spec).await {
                    warn!(%filter, error = %e, "MQTT subscribe after a reload failed.");
                }
            });
        }
        summary
    }

    fn key(&mut self) -> u64 {
        self.next_key += 1;
        self.next_key
    }
}

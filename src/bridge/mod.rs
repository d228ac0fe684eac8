//! The bridge: the only part of the daemon that sees both sides.
//!
//! [`run`] turns a loaded [`Config`] into a running bridge: it compiles the routes
//! ([`mapping`]), starts the Bayeux client and the MQTT client, and runs one pipeline per
//! direction (`b2m`: Bayeux → MQTT, `m2b`: MQTT → Bayeux) until the shutdown future
//! resolves; then it drains (stops taking messages, waits for those in flight up to
//! `bridge.drain_timeout_secs`), publishes the retained `offline` status, sends
//! `/meta/disconnect` and disconnects from the broker.
//!
//! Delivery guarantees: each direction has `bridge.queue_capacity` permits; a message holds
//! one from the moment it is taken from its source until its destination acknowledged it, so
//! when a side is down messages wait (bounded) and then the bridge stops taking more
//! (back-pressure) instead of dropping. Every drop is logged with its reason and counted.

pub mod checkpoint;
mod dead_letter;
pub mod echo;
mod gaps;
pub mod mapping;
pub mod payload;
pub mod readiness;
mod replay;
pub mod stats;

mod b2m;
mod cluster;
pub mod endpoints;
mod ledger;
mod lifecycle;
mod m2b;
pub mod options;
mod publisher;
mod reload;
mod shared;
mod shutdown;
mod spooled;

use lifecycle::{log_summary, spawn_watcher};
pub use options::{bayeux_options, mqtt_options};
pub(crate) use options::{mqtt_specs, qos_of, queued, wanted};
pub(crate) use shared::{Shared, Slot};

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::bayeux::{self, Client};
use crate::config::{Config, ConfigError};
use crate::mqtt::{self};
use readiness::Readiness;
use replay::Replay;
use shutdown::{Shutdown, Step};
use stats::Stats;

/// Why the bridge could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The routes do not compile (the route and field are in the error).
    #[error("{0}")]
    Mapping(#[from] mapping::MappingError),
    /// The Bayeux client could not start.
    #[error("Bayeux client: {0}")]
    Bayeux(#[from] bayeux::ClientError),
    /// The MQTT client could not start.
    #[error("MQTT client: {0}")]
    Mqtt(#[from] mqtt::MqttError),
    /// The HTTP listener could not start.
    #[error("HTTP listener: {0}")]
    Http(#[from] crate::http::BindError),
    /// The Bayeux server ended the session for good.
    #[error("the Bayeux client stopped: {0}")]
    BayeuxStopped(String),
    /// The spool could not be opened (damaged, incompatible, or its directory unusable).
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::SpoolError),
    /// The replay checkpoints could not be opened.
    #[error("replay checkpoints: {0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    /// A stored replay id was refused and `replay.on_invalid = "stop"`.
    #[error(
        "the Bayeux server refused the stored replay id {last_good} of {channel} ({error}); \
         stopping as replay.on_invalid = \"stop\" asks: events after it may be lost. Set \
         on_invalid to \"latest\" or \"earliest\", or remove the channel from the checkpoint \
         file, to resume"
    )]
    ReplayGap {
        /// The channel.
        channel: String,
        /// The refused id.
        last_good: i64,
        /// The server's error.
        error: String,
    },
}

/// Compiles the routes of `config` and checks them against its other sections (with replay
/// on, no wildcard subscriptions: [`mapping::check_replay`]). For `check`, the daemon's start
/// and reloads (with the running `[replay]`: it changes only at a restart).
pub fn compile_routes(
    config: &Config,
    replay_enabled: bool,
) -> Result<Vec<mapping::Route>, mapping::MappingError> {
    let routes = mapping::compile(&config.route)?;
    if replay_enabled {
        mapping::check_replay(&routes, checkpoint::MAX_CHECKPOINTS)?;
    }
    Ok(routes)
}

/// What `bayeux-mqtt-bridge check` prints: the compiled routes, what the bridge subscribes to
/// on each side, and warnings.
pub fn describe(config: &Config) -> Result<String, mapping::MappingError> {
    let routes = compile_routes(config, config.replay.enabled)?;
    let mut text = mapping::describe(&routes);
    text.push_str(&transport_line(&config.bayeux));
    if config.replay.enabled {
        text.push_str(&format!(
            "replay: on; checkpoints in {}, written every {} ms; channels without one start \
             from {}; a refused stored id: {}\n",
            config
                .replay
                .state_dir
                .join(checkpoint::FILE_NAME)
                .display(),
            config.replay.checkpoint_interval_ms,
            config.replay.start_from,
            config.replay.on_invalid.as_str(),
        ));
    }
    text.push_str(&spool_line(&config.spool));
    text.push_str(&cluster::describe(config));
    let warnings: Vec<String> = config
        .warnings()
        .into_iter()
        .chain(mapping::warnings(&routes))
        .chain(crate::files::warnings(config))
        .collect();
    for warning in warnings {
        text.push_str(&format!("warning: {warning}\n"));
    }
    Ok(text)
}

/// Everything that can be found wrong with a loaded config before connecting, for `check`,
/// the daemon's start and a reload alike, so that the daemon never refuses what `check`
/// accepted: the routes, the MQTT client's options (the backstop behind the config file's
/// own checks), the OAuth signing key and the spool directory. Errors name `file`. Returns
/// what `check` prints.
pub fn preflight(config: &Config, file: &std::path::Path) -> Result<String, ConfigError> {
    let in_file = |key: &str, reason: String| ConfigError {
        file: file.to_owned(),
        key: Some(key.to_owned()),
        reason,
    };
    let description = describe(config).map_err(|e| e.in_file(file))?;
    mqtt_options(config)
        .validate()
        .map_err(|e| in_file("mqtt", e.to_string()))?;
    if let Some(oauth) = &config.bayeux.oauth
        && oauth.grant == crate::config::OAuthGrant::JwtBearer
        && let Some(pem) = &oauth.private_key
    {
        bayeux::auth::parse_rsa_key(pem.expose()).map_err(|e| {
            let reason = match e {
                bayeux::TokenError::Refused(why) | bayeux::TokenError::Unavailable(why) => why,
            };
            in_file("bayeux.oauth.private_key_file", reason)
        })?;
    }
    probe_spool(config, file)?;
    Ok(description)
}

/// `check`'s line about the Bayeux transport.
fn transport_line(bayeux: &crate::config::BayeuxConfig) -> String {
    let what = match bayeux.transport {
        crate::config::BayeuxTransport::Auto => {
            "WebSocket where the server offers it, else long-polling"
        }
        crate::config::BayeuxTransport::WebSocket => "WebSocket only",
        crate::config::BayeuxTransport::LongPolling => "long-polling only",
        crate::config::BayeuxTransport::CallbackPolling => "callback-polling (JSONP) only",
    };
    let filtered = if bayeux.json_comment_filtered {
        "; json-comment-filtered offered"
    } else {
        ""
    };
    format!("transport: {} ({what}){filtered}\n", bayeux.transport)
}

/// `check`'s line about `[spool]`.
fn spool_line(spool: &crate::config::SpoolConfig) -> String {
    if spool.enabled {
        format!(
            "spool: on; {}, at most {} bytes\n",
            spool.dir.display(),
            spool.max_bytes
        )
    } else {
        "spool: off (spool.enabled = false)\n".to_owned()
    }
}

/// Checks that the spool directory of an enabled `[spool]` can be created and written
/// ([`crate::spool::probe_dir`]), as an error of the config file `file` naming `spool.dir`.
/// For `check` and for the daemon's start-up.
pub fn probe_spool(config: &Config, file: &std::path::Path) -> Result<(), ConfigError> {
    if !config.spool.enabled {
        return Ok(());
    }
    crate::spool::probe_dir(&config.spool.dir).map_err(|e| ConfigError {
        file: file.to_owned(),
        key: Some("spool.dir".to_owned()),
        reason: format!("cannot be used: {e}"),
    })
}

/// How often the Bayeux client's liveness is checked for readiness.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Where a running bridge re-reads its config from, and the requests (SIGHUP) to do so.
#[derive(Debug)]
pub struct ReloadSource {
    /// The config file.
    pub path: std::path::PathBuf,
    /// One item per reload request.
    pub requests: mpsc::Receiver<()>,
}

/// Runs the bridge until `shutdown` resolves, then drains and disconnects.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<Arc<Stats>, BridgeError> {
    run_with_reload(config, shutdown, None).await
}

/// [`run`], re-reading the config file on each reload request.
pub async fn run_with_reload(
    config: Config,
    shutdown: impl Future<Output = ()>,
    reload: Option<ReloadSource>,
) -> Result<Arc<Stats>, BridgeError> {
    let mut bridge = Bridge::start(config, reload).await?;
    let outcome = bridge.run(shutdown).await;
    let stats = bridge.drain().await;
    outcome.map(|()| stats)
}

/// A started bridge: its tasks, and what the run loop and the drain need of them.
struct Bridge {
    shared: Arc<Shared>,
    notifier: Option<Arc<crate::notify::Notifier>>,
    /// The running config and the means to apply a reload.
    live: reload::Live,
    reload: Option<ReloadSource>,
    /// Watches the Bayeux client's events (replaced by a reload of `[bayeux]`).
    watcher: JoinHandle<BridgeError>,
    /// What stops the bridge for good (a publishing session that ended).
    fatal: mpsc::Receiver<BridgeError>,
    pipelines: lifecycle::Pipelines,
    /// The one shutdown signal of the pipelines and the other tasks.
    stop: Shutdown,
    /// With `[replay]`: the periodic checkpoint flush.
    flusher: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    capacity: usize,
}

impl Bridge {
    /// Checks and opens what the bridge needs, starts both clients, subscribes the routes and
    /// spawns the pipelines and the HTTP listener; then tells systemd the start is complete.
    async fn start(config: Config, reload: Option<ReloadSource>) -> Result<Bridge, BridgeError> {
        let routes = compile_routes(&config, config.replay.enabled)?;
        for warning in mapping::warnings(&routes) {
            warn!(%warning, "Route warning.");
        }
        let capacity = config.bridge.queue_capacity.max(1);
        // Before anything connects: a damaged spool stops the start.
        let spools = match config.spool.enabled {
            true => Some(spooled::open(&config.spool).await?),
            false => None,
        };
        let stats = Arc::new(Stats::default());
        let names = routes.iter().map(|r| r.name.clone()).collect();
        stats.set_routes(names, config.http.per_route_metrics);
        let (notifier, readiness) = reporters(&routes, config.cluster.as_ref(), &stats);
        let listener = match config.http.listen {
            Some(addr) => Some(crate::http::bind(addr).await?),
            None => None,
        };
        let (shared, mqtt_events, bayeux_events) =
            start_clients(&config, &routes, &stats, &readiness, spools)?;
        let stop = Shutdown::default();
        let flusher = shared
            .replay
            .clone()
            .map(|r| tokio::spawn(r.run_flusher(stop.signal(Step::StopFlusher))));
        let (fatal, fatal_rx) = mpsc::channel(1);
        shared.set_publisher(publisher::start(&config, &routes, &fatal)?);
        let (live, pipelines) = start_pipelines(
            &shared,
            &config,
            routes,
            mqtt_events,
            fatal,
            &stop,
            capacity,
        )
        .await?;
        let http = listener.map(|listener| spawn_http(listener, &shared, &config, &stop, capacity));
        tell_started(notifier.as_deref(), &readiness);
        let watcher = spawn_watcher(bayeux_events, &shared);
        Ok(Bridge {
            shared,
            notifier,
            live,
            reload,
            watcher,
            fatal: fatal_rx,
            pipelines,
            stop,
            flusher,
            http,
            capacity,
        })
    }

    /// Runs until `shutdown` resolves (`Ok`) or the bridge must stop (the error): applies
    /// reloads, pings the watchdog, flushes rate-limited warnings and checks the Bayeux
    /// client's liveness.
    async fn run(&mut self, shutdown: impl Future<Output = ()>) -> Result<(), BridgeError> {
        let notifier = self.notifier.clone();
        let shared = Arc::clone(&self.shared);
        // WATCHDOG=1 from this loop, so a loop that stops turning stops the pings.
        let mut watchdog = notifier
            .as_ref()
            .and_then(|n| n.watchdog_interval())
            .map(tokio::time::interval);
        // Rate-limited warnings: what a window held back is reported once it ends, also when
        // nothing comes after it.
        let mut log_flush = tokio::time::interval(crate::log_limit::WINDOW);
        // A stalled Bayeux data plane has no event of its own: its liveness is looked at.
        let mut liveness = tokio::time::interval(LIVENESS_CHECK);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    info!("Shutdown requested; draining.");
                    return Ok(());
                }
                stopped = &mut self.watcher => {
                    return Err(stopped.unwrap_or_else(|e| {
                        BridgeError::BayeuxStopped(format!("the Bayeux event watcher failed: {e}"))
                    }));
                }
                Some(stopped) = self.fatal.recv() => return Err(stopped),
                _ = tick(&mut watchdog) => ping(notifier.as_deref()),
                _ = log_flush.tick() => shared.log_limit.flush(),
                _ = liveness.tick() => shared.readiness.bayeux_liveness(shared.bayeux().liveness()),
                Some(()) = next_reload(&mut self.reload) => {
                    let Some(path) = self.reload.as_ref().map(|r| r.path.clone()) else {
                        continue;
                    };
                    let reloading =
                        self.live.reload(&path, &shared, &mut self.watcher, notifier.as_deref());
                    tokio::pin!(reloading);
                    // A reload never holds up a shutdown (nor the watchdog).
                    let stop = loop {
                        tokio::select! {
                            () = &mut reloading => break false,
                            () = &mut shutdown => break true,
                            _ = tick(&mut watchdog) => ping(notifier.as_deref()),
                        }
                    };
                    if stop {
                        info!("Shutdown requested during a reload; draining.");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Drains the pipelines by `bridge.drain_timeout_secs`, says goodbye to both sides, saves
    /// the last checkpoints and closes the HTTP listener; returns the counters.
    async fn drain(self) -> Arc<Stats> {
        let Bridge {
            shared,
            notifier,
            live,
            watcher,
            pipelines,
            stop,
            flusher,
            http,
            capacity,
            ..
        } = self;
        let deadline = Instant::now() + live.config().bridge.drain_timeout();
        if let Some(n) = &notifier {
            n.stopping();
            n.status("Draining: finishing messages in flight");
        }
        lifecycle::drain(
            &shared,
            &shared.mqtt(),
            pipelines,
            &stop,
            capacity,
            deadline,
        )
        .await;
        watcher.abort();
        if let Some(spools) = &shared.spools {
            // Removals of what was delivered become durable; the rest goes out after a restart.
            spools.close().await;
            spooled::log_left(spools);
        }
        // Every message in flight has its outcome now (or was given up at the deadline): the
        // last checkpoints, so a restart resumes exactly after what the broker acknowledged.
        stop.advance(Step::StopFlusher);
        if let Some(flusher) = flusher {
            let _ = flusher.await;
        }
        if let Some(replay) = &shared.replay
            && replay.flush().await
        {
            info!("Replay checkpoints saved.");
        }
        log_summary(&shared.stats);
        stop.advance(Step::CloseHttp);
        if let Some(http) = http {
            let _ = http.await;
        }
        Arc::clone(&shared.stats)
    }
}

/// Who is told the bridge's state: systemd's notifier (when systemd started the daemon), told
/// that the bridge is connecting, and readiness of what `routes` subscribe to, which reports
/// to the notifier and the counters.
fn reporters(
    routes: &[mapping::Route],
    cluster: Option<&crate::config::ClusterConfig>,
    stats: &Arc<Stats>,
) -> (Option<Arc<crate::notify::Notifier>>, Arc<Readiness>) {
    let notifier = crate::notify::Notifier::from_env().map(Arc::new);
    if let Some(n) = &notifier {
        n.status("Connecting to the Bayeux server and the MQTT broker");
    }
    let (bayeux_channels, mqtt_filters) = wanted(routes, cluster);
    let readiness = Arc::new(
        Readiness::new(bayeux_channels, mqtt_filters)
            .with_stats(Arc::clone(stats))
            .with_notifier(notifier.clone())
            .with_cluster(cluster.is_some()),
    );
    (notifier, readiness)
}

/// Tells systemd that the start is complete, with the readiness as `STATUS=`.
///
/// The config is valid and both clients run (connecting with backoff): the daemon does its
/// job, so systemd's start is complete. Whether the data plane is up is STATUS= and /readyz;
/// a peer down at boot must not make systemd kill and restart the daemon.
fn tell_started(notifier: Option<&crate::notify::Notifier>, readiness: &Readiness) {
    if let Some(n) = notifier {
        n.ready();
        n.status(&readiness.status());
    }
}

/// Starts the MQTT client and the Bayeux client (with `[replay]`, its extension on the
/// checkpoints opened here) and the state both pipelines share; they connect with backoff.
fn start_clients(
    config: &Config,
    routes: &[mapping::Route],
    stats: &Arc<Stats>,
    readiness: &Arc<Readiness>,
    spools: Option<spooled::Spools>,
) -> Result<(Arc<Shared>, mpsc::Receiver<mqtt::MqttEvent>, bayeux::Events), BridgeError> {
    // No Local on every subscription: the bridge never wants its own publishes back.
    let (mqtt, mqtt_events) = mqtt::start(
        mqtt_options(config),
        mqtt_specs(routes, config.cluster.as_ref()),
    )?;
    let replay = match config.replay.enabled {
        true => Some(Arc::new(Replay::open(
            &config.replay,
            Arc::clone(stats),
            &wanted(routes, None).0,
        )?)),
        false => None,
    };
    let (bayeux, bayeux_events) = Client::new(replay::with_extension(
        bayeux_options(config, queued(config, routes)),
        replay.as_deref(),
    ))?;
    let shared = Arc::new(Shared::new(
        config,
        bayeux,
        mqtt,
        Arc::clone(stats),
        Arc::clone(readiness),
        replay,
        spools,
    ));
    Ok((shared, mqtt_events, bayeux_events))
}

/// Subscribes the Bayeux → MQTT routes on the Bayeux client, makes `routes` the running
/// ones and spawns the pipelines; returns them with what a reload needs to change them.
async fn start_pipelines(
    shared: &Arc<Shared>,
    config: &Config,
    routes: Vec<mapping::Route>,
    mqtt_events: mpsc::Receiver<mqtt::MqttEvent>,
    fatal: mpsc::Sender<BridgeError>,
    stop: &Shutdown,
    capacity: usize,
) -> Result<(reload::Live, lifecycle::Pipelines), BridgeError> {
    let (b2m_control, b2m_control_rx) = mpsc::channel(64);
    let (m2b_swap, m2b_swap_rx) = mpsc::channel(1);
    let mut live = reload::Live::new(config.clone(), b2m_control, m2b_swap, fatal);
    let initial = live
        .subscribe_all(&shared.bayeux(), &config.route, &routes)
        .await?;
    let (bayeux_channels, mqtt_filters) = wanted(&routes, config.cluster.as_ref());
    shared.set_routes(routes);
    info!(bayeux = ?bayeux_channels, mqtt = ?mqtt_filters, "Bridge starting.");
    let pipelines = spawn_pipelines(
        shared,
        initial,
        (mqtt_events, m2b_swap_rx),
        b2m_control_rx,
        stop,
        capacity,
    );
    Ok((live, pipelines))
}

/// Spawns both pipelines (and with `[spool]` the deliveries from it), each with
/// `capacity` messages in flight at most.
fn spawn_pipelines(
    shared: &Arc<Shared>,
    initial: Vec<(u64, Arc<mapping::Route>, bayeux::Subscription)>,
    (mqtt_events, m2b_swaps): (mpsc::Receiver<mqtt::MqttEvent>, mpsc::Receiver<m2b::Swap>),
    b2m_control: mpsc::Receiver<b2m::Control>,
    stop: &Shutdown,
    capacity: usize,
) -> lifecycle::Pipelines {
    let b2m_permits = Arc::new(Semaphore::new(capacity));
    let m2b_permits = Arc::new(Semaphore::new(capacity));
    let b2m = tokio::spawn(
        b2m::run(
            Arc::clone(shared),
            initial,
            Arc::clone(&b2m_permits),
            b2m::Stop {
                draining: stop.signal(Step::DrainBayeuxToMqtt),
                now: stop.signal(Step::StopBayeuxToMqtt),
            },
            b2m_control,
        )
        .instrument(info_span!("bayeux_to_mqtt")),
    );
    let m2b = tokio::spawn(
        m2b::run(
            Arc::clone(shared),
            shared.mqtt(),
            mqtt_events,
            Arc::clone(&m2b_permits),
            stop.signal(Step::StopMqttToBayeux),
            m2b_swaps,
        )
        .instrument(info_span!("mqtt_to_bayeux")),
    );
    lifecycle::Pipelines {
        b2m,
        m2b,
        b2m_permits,
        m2b_permits,
        delivery: spooled::Delivery::start(shared, capacity, stop),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until the shutdown closes it.
fn spawn_http(
    listener: tokio::net::TcpListener,
    shared: &Shared,
    config: &Config,
    stop: &Shutdown,
    capacity: usize,
) -> JoinHandle<()> {
    let endpoints = Arc::new(endpoints::BridgeEndpoints {
        stats: Arc::clone(&shared.stats),
        readiness: Arc::clone(&shared.readiness),
        b2m: Arc::clone(&shared.b2m_in_flight),
        m2b: Arc::clone(&shared.m2b_in_flight),
        capacity,
        spool: shared
            .spools
            .as_ref()
            .map(|s| (s.b2m.clone(), s.m2b.clone(), s.spool.max_bytes())),
    });
    let limits = crate::http::Limits {
        max_connections: config.http.max_connections,
        ..crate::http::Limits::default()
    };
    let mut closed = stop.signal(Step::CloseHttp);
    tokio::spawn(crate::http::serve(
        listener,
        endpoints,
        limits,
        shared.stats.metrics.http.clone(),
        async move { closed.wait().await },
    ))
}

/// The next watchdog tick, or never when the watchdog is off.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn ping(notifier: Option<&crate::notify::Notifier>) {
    if let Some(n) = notifier {
        n.watchdog();
    }
}

async fn next_reload(reload: &mut Option<ReloadSource>) -> Option<()> {
    match reload {
        Some(source) => source.requests.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::BridgeError;

    #[test]
    fn a_route_error_reads_as_before_and_keeps_its_route_and_key() {
        let error = super::mapping::MappingError {
            route: 3,
            field: "mqtt",
            reason: "bad filter".to_owned(),
        };
        let bridge = BridgeError::from(error.clone());
        assert_eq!(bridge.to_string(), "route[3].mqtt: bad filter");
        assert!(matches!(bridge, BridgeError::Mapping(e) if e.key() == "route[3].mqtt"));
    }

    #[tokio::test]
    async fn an_address_in_use_reads_as_before_and_can_be_told_apart() {
        let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = taken.local_addr().expect("its address");
        let error = crate::http::bind(addr)
            .await
            .expect_err("the port is taken");
        let bridge = BridgeError::from(error);
        let text = bridge.to_string();
        assert!(
            text.starts_with(&format!("HTTP listener: cannot listen on {addr}: ")),
            "{text}"
        );
        assert!(
            matches!(&bridge, BridgeError::Http(e) if e.source.kind() == std::io::ErrorKind::AddrInUse)
        );
    }
}

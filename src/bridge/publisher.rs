//! The Bayeux session that MQTT → Bayeux publishes through, when Bayeux → MQTT also reads
//! from the same server.
//!
//! A Bayeux server may hand a session's queued deliveries to whichever of its requests it
//! answers first: CometD servers do so unless `metaConnectDeliveryOnly` is set (their ack
//! extension sets it). With one session for both directions, the bridge's publishes went out
//! while its `/meta/connect` was held, the server put some deliveries into the publish
//! replies, and two replies on two connections raced each other: Bayeux → MQTT messages
//! reached MQTT out of order (issue 13 measured 494 of 180,000 under two-way load). A session
//! that only publishes has nothing queued, so the subscribing session gets its deliveries on
//! `/meta/connect` replies only, in the server's order.
//!
//! The publishing session has its own cookies (a CometD server allows one long poll per
//! browser cookie) and no extensions: it subscribes to nothing, so there is nothing to
//! acknowledge or replay. Its own publishes still come back to the subscribing session when a
//! route reads the channel; the echo filter catches them as before.

use tokio::sync::mpsc;
use tracing::{debug, error, info, info_span};

use super::mapping::Route;
use super::{BridgeError, bayeux_options, queued};
use crate::bayeux::{self, Client, Event, StopReason};
use crate::config::Config;

/// Whether `routes` need a publishing session of their own: some route publishes to Bayeux
/// and some route reads from it.
pub(super) fn needed(routes: &[Route]) -> bool {
    routes.iter().any(Route::subscribes_mqtt) && routes.iter().any(Route::subscribes_bayeux)
}

/// Starts the publishing session for `config`, when `routes` need one. Its events are
/// followed on a task of its own, which sends the reason on `fatal` if it stops for good.
pub(super) fn start(
    config: &Config,
    routes: &[Route],
    fatal: &mpsc::Sender<BridgeError>,
) -> Result<Option<Client>, BridgeError> {
    if !needed(routes) {
        return Ok(None);
    }
    let mut options = bayeux_options(config, queued(config, routes));
    options.extensions.clear();
    // Its logs (handshakes, reconnects) say which session they are about.
    let (client, events) = info_span!("publishing_session").in_scope(|| Client::new(options))?;
    tokio::spawn(watch(events, fatal.clone()));
    info!(
        "MQTT → Bayeux publishes through a Bayeux session of their own, so that deliveries never ride on publish replies (order)."
    );
    Ok(Some(client))
}

/// Follows the publishing session's events until it ends; a stop for good is fatal, as for
/// the subscribing session, unless the bridge itself disconnected it (a reload replaced it,
/// or shutdown).
async fn watch(mut events: bayeux::Events, fatal: mpsc::Sender<BridgeError>) {
    while let Some(event) = events.recv().await {
        match event {
            Event::Stopped {
                reason: StopReason::Disconnected,
            } => return,
            Event::Stopped { reason } => {
                error!(%reason, "The publishing Bayeux session stopped.");
                let _ = fatal
                    .send(BridgeError::BayeuxStopped(format!(
                        "the publishing session: {reason}"
                    )))
                    .await;
                return;
            }
            other => debug!(event = ?other, "Publishing session."),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::mapping;
    use crate::config::{Direction, PayloadMode, RouteConfig};

    fn routes(directions: &[Direction]) -> Vec<Route> {
        let configs: Vec<RouteConfig> = directions
            .iter()
            .enumerate()
            .map(|(i, d)| RouteConfig {
                name: None,
                bayeux: format!("/r{i}/*"),
                mqtt: format!("r{i}/+"),
                direction: *d,
                qos: 1,
                retain: false,
                payload: PayloadMode::Data,
                properties: None,
                ext_properties: false,
                dead_letter_topic: None,
            })
            .collect();
        mapping::compile(&configs).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_session_of_its_own_only_when_the_bridge_both_reads_and_publishes_on_bayeux() {
        use Direction::*;
        assert!(!needed(&routes(&[BayeuxToMqtt])));
        assert!(!needed(&routes(&[MqttToBayeux, MqttToBayeux])));
        assert!(needed(&routes(&[BayeuxToMqtt, MqttToBayeux])));
        assert!(needed(&routes(&[Both])));
        assert!(!needed(&[]));
    }
}

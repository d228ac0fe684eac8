//! Turning the config file into the two clients' options, in one place.

use std::sync::Arc;

use crate::backoff::BackoffOptions;
use crate::bayeux::auth::{Grant, OAuthTokenSource, TokenFuture, TokenSource};
use crate::bayeux::{ClientOptions, TokenError, TransportChoice};
use crate::config::{
    BayeuxTransport, ClusterConfig, Config, MqttProtocol, OAuthConfig, OAuthGrant,
};
use crate::mqtt::{self, MqttOptions, QoS, SubscriptionSpec, TlsFiles, Will};

use super::mapping::{self, Route};

/// The Bayeux client options the config asks for.
pub fn bayeux_options(config: &Config, queued: usize) -> ClientOptions {
    let b = &config.bayeux;
    let mut options = ClientOptions::new(b.url.clone());
    options.headers = b.header_pairs();
    options.max_network_delay = b.max_network_delay();
    options.max_response_bytes = b.max_response_bytes;
    options.backoff = BackoffOptions {
        increment: b.backoff_increment(),
        max: b.backoff_max(),
        ..BackoffOptions::default()
    };
    options.max_queued = queued;
    options.subscription_buffer = config.bridge.queue_capacity.clamp(1, 1024);
    // Every subscription's confirmation is an event, and a (re-)handshake confirms them all
    // at once: the client drops events past the buffer, and readiness waits for each one.
    options.event_buffer = options.event_buffer.max(config.route.len() + 1024);
    options.max_request_bytes = b.max_request_bytes;
    // MQTT → Bayeux keeps its order across a failed request: the client sends the failed
    // publishes again ahead of later ones (a duplicate is possible, as with any retry).
    options.retry_publishes = true;
    if b.ack_extension {
        // A fresh one per client: its batch number belongs to one client's sessions.
        options
            .extensions
            .push(std::sync::Arc::new(crate::bayeux::ext::AckExtension::new()));
    }
    options.transport = transport(b.transport);
    options.json_comment_filtered = b.json_comment_filtered;
    options.tls = b.tls.as_ref().map(|t| t.files()).unwrap_or_default();
    if let Some(oauth) = &b.oauth {
        options.max_auth_attempts = oauth.max_auth_attempts;
        // Token requests get the same network allowance and TLS settings as Bayeux
        // requests.
        options.token_source = Some(token_source(oauth, b.max_network_delay(), &options.tls));
    }
    options
}

/// The Bayeux client's name for `bayeux.transport`.
pub fn transport(setting: BayeuxTransport) -> TransportChoice {
    match setting {
        BayeuxTransport::Auto => TransportChoice::Auto,
        BayeuxTransport::WebSocket => TransportChoice::WebSocket,
        BayeuxTransport::LongPolling => TransportChoice::LongPolling,
        BayeuxTransport::CallbackPolling => TransportChoice::CallbackPolling,
    }
}

/// The token source `[bayeux.oauth]` describes. One that cannot be built (a key that is PEM
/// but not RSA) refuses every fetch, so the client stops at once, naming the reason.
fn token_source(
    c: &OAuthConfig,
    timeout: std::time::Duration,
    tls: &TlsFiles,
) -> Arc<dyn TokenSource> {
    let exposed = |s: &Option<crate::config::Secret>| {
        s.as_ref()
            .map(|s| s.expose().to_owned())
            .unwrap_or_default()
    };
    let grant = match c.grant {
        OAuthGrant::ClientCredentials => Grant::ClientCredentials {
            client_id: c.client_id.clone(),
            client_secret: exposed(&c.client_secret),
        },
        OAuthGrant::RefreshToken => Grant::RefreshToken {
            client_id: c.client_id.clone(),
            client_secret: c.client_secret.as_ref().map(|s| s.expose().to_owned()),
            refresh_token: exposed(&c.refresh_token),
        },
        OAuthGrant::JwtBearer => Grant::JwtBearer {
            client_id: c.client_id.clone(),
            username: c.username.clone().unwrap_or_default(),
            audience: c.audience.clone(),
            private_key_pem: exposed(&c.private_key),
        },
    };
    match OAuthTokenSource::with_tls(c.token_url.clone(), grant, c.scope.clone(), timeout, tls) {
        Ok(source) => Arc::new(source),
        Err(error) => Arc::new(Unusable(error)),
    }
}

/// A token source whose configuration cannot work.
#[derive(Debug)]
struct Unusable(TokenError);

impl TokenSource for Unusable {
    fn fetch(&self) -> TokenFuture {
        let error = self.0.clone();
        Box::pin(async move { Err(error) })
    }
}

/// The MQTT client options the config asks for, with the `offline` status as the will (with
/// `[cluster]`, a zero-length retained will that clears the member record).
pub fn mqtt_options(config: &Config) -> MqttOptions {
    let m = &config.mqtt;
    let mut options = MqttOptions::new(m.host.clone(), m.port, m.client_id.clone());
    options.username = m.username.clone();
    options.password = m.password.as_ref().map(|p| p.expose().to_owned());
    options.protocol = match m.protocol {
        MqttProtocol::V5 => mqtt::Protocol::V5,
        MqttProtocol::V311 => mqtt::Protocol::V311,
    };
    options.keep_alive = m.keep_alive();
    options.clean_start = m.clean_start;
    options.session_expiry = m.session_expiry();
    options.max_packet_size = m.max_packet_size as usize;
    options.inflight = m.inflight;
    // Room for every message the broker may send before we acknowledge one (the client's
    // own check): a large `mqtt.inflight` must not make a valid config fail at start.
    options.event_buffer = options.event_buffer.max(usize::from(m.inflight));
    options.connect_timeout = m.connect_timeout();
    options.backoff = BackoffOptions {
        increment: m.backoff_increment(),
        max: m.backoff_max(),
        ..BackoffOptions::default()
    };
    options.tls = m.tls.as_ref().map(|t| t.files());
    options.last_will = Some(Will {
        topic: m.status_topic.clone(),
        payload: offline_status(config).to_vec(),
        qos: QoS::AtLeastOnce,
        retain: true,
    });
    options
}

/// What the status topic says when the bridge is gone: `offline`, or with `[cluster]`
/// nothing (the member record is cleared).
pub(crate) fn offline_status(config: &Config) -> &'static [u8] {
    match config.cluster {
        Some(_) => b"",
        None => b"offline",
    }
}

/// The MQTT QoS of a route's 0–2 number (validated when the routes compiled).
pub(crate) fn qos_of(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// The Bayeux channels and MQTT filters `routes` (and with `[cluster]` the member records)
/// subscribe to.
pub(crate) fn wanted(
    routes: &[Route],
    cluster: Option<&ClusterConfig>,
) -> (Vec<String>, Vec<String>) {
    let channels = mapping::bayeux_subscriptions(routes)
        .iter()
        .map(ToString::to_string)
        .collect();
    let filters = mqtt_specs(routes, cluster)
        .into_iter()
        .map(|s| s.filter)
        .collect();
    (channels, filters)
}

/// The MQTT subscriptions of `routes`, all with No Local; with `[cluster]` shared within the
/// group (MQTT 5 forbids No Local there: the group's user property prevents loops instead,
/// see `super::cluster`), and first the group's member records (without No Local: a member
/// waits for its own record).
pub(crate) fn mqtt_specs(
    routes: &[Route],
    cluster: Option<&ClusterConfig>,
) -> Vec<SubscriptionSpec> {
    let members = cluster.map(|c| SubscriptionSpec {
        filter: c.members_filter(),
        qos: QoS::AtLeastOnce,
        no_local: false,
    });
    let routes = mapping::mqtt_subscriptions(routes)
        .into_iter()
        .map(|(filter, qos)| SubscriptionSpec {
            filter: super::cluster::share(cluster, filter),
            qos: qos_of(qos),
            no_local: cluster.is_none(),
        });
    members.into_iter().chain(routes).collect()
}

/// How many publishes the Bayeux client may queue: one per route for every message in flight.
pub(crate) fn queued(config: &Config, routes: &[Route]) -> usize {
    let m2b_routes = routes.iter().filter(|r| r.subscribes_mqtt()).count().max(1);
    config.bridge.queue_capacity.max(1) * m2b_routes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "bridge-options-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bridge.toml");
        let toml = format!(
            "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n{extra}\n[mqtt]\nhost = \"h\"\n\
             [[route]]\nbayeux = \"/a\"\nmqtt = \"a\"\ndirection = \"both\"\n"
        );
        std::fs::write(&path, toml).expect("write config");
        let config = crate::config::load(&path).expect("valid config");
        std::fs::remove_dir_all(dir).ok();
        config
    }

    #[test]
    fn every_valid_mqtt_section_gives_valid_client_options() {
        // `preflight` refuses what the client's own check refuses: a config that passes the
        // file's checks must pass the client's too (a large inflight once did not).
        let c = config("").mqtt;
        for (inflight, keep_alive) in [(1, 5), (100, 30), (5000, 65535), (u16::MAX, 5)] {
            let mut config = config("");
            config.mqtt = crate::config::MqttConfig {
                inflight,
                keep_alive_secs: keep_alive,
                ..c.clone()
            };
            assert_eq!(mqtt_options(&config).validate(), Ok(()), "{inflight}");
        }
    }

    #[test]
    fn the_ack_extension_is_offered_unless_turned_off() {
        assert_eq!(bayeux_options(&config(""), 1).extensions.len(), 1);
        let off = config("ack_extension = false");
        assert_eq!(bayeux_options(&off, 1).extensions.len(), 0);
    }

    #[test]
    fn the_event_buffer_holds_a_confirmation_for_every_route() {
        let mut many = config("");
        let route = many.route[0].clone();
        many.route = vec![route; 5000];
        // 10,000 routes lost about 4,000 confirmations with the 1024 default, and the bridge
        // never got ready.
        assert!(bayeux_options(&many, 1).event_buffer >= 5000 + 1024);
        assert_eq!(bayeux_options(&config(""), 1).event_buffer, 1025);
    }

    #[test]
    fn a_cluster_member_shares_its_mqtt_subscriptions_and_its_will_clears_the_record() {
        let mut c = config("");
        let routes = mapping::compile(&c.route).expect("routes");
        let alone = mqtt_specs(&routes, None);
        assert_eq!(alone.len(), 1);
        assert!(alone[0].no_local && alone[0].filter == "a");
        assert_eq!(
            mqtt_options(&c).last_will.expect("will").payload,
            b"offline"
        );
        let cluster = crate::config::ClusterConfig {
            group: "g".into(),
            member_id: "m1".into(),
            mode: crate::config::ClusterMode::ActiveStandby,
            hot_standby: false,
        };
        c.mqtt.status_topic = cluster.member_topic();
        c.cluster = Some(cluster.clone());
        let specs = mqtt_specs(&routes, Some(&cluster));
        let filters: Vec<(&str, bool)> = specs
            .iter()
            .map(|s| (s.filter.as_str(), s.no_local))
            .collect();
        // The records first (the own one is the role barrier, so no No Local), then the
        // route's filter shared in the group (MQTT 5 forbids No Local there).
        assert_eq!(
            filters,
            [
                ("bayeux-mqtt-bridge/cluster/g/members/+", false),
                ("$share/g/a", false)
            ]
        );
        assert_eq!(
            wanted(&routes, Some(&cluster)).1,
            ["bayeux-mqtt-bridge/cluster/g/members/+", "$share/g/a"]
        );
        let will = mqtt_options(&c).last_will.expect("will");
        assert_eq!(will.topic, "bayeux-mqtt-bridge/cluster/g/members/m1");
        assert!(will.payload.is_empty() && will.retain);
    }
}

//! rumqttc's two event loops (MQTT 5 and 3.1.1) behind one interface, translating their
//! packets into the tracker's [`Ev`] and its requests into rumqttc's. The only module that
//! names rumqttc types (besides `tls`).

mod convert;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::tokio_rustls::rustls::ClientConfig;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{TlsConfiguration, Transport};

use super::options::{MQTT_MAX_PACKET, MqttOptions, Protocol};
use super::tracker::{Drained, Ev, Replay, Request, Sink};
use super::{ConnectionError, QoS};
use convert::{
    connection_error4, connection_error5, filter4, filter5, incoming4, incoming5, outgoing_ev,
    publish5, qos4, qos5, replay4, replay5,
};

/// The sending side of rumqttc's request channel.
#[derive(Clone)]
pub(super) enum Sender {
    V5(rumqttc::v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

/// rumqttc's event loop for the chosen protocol.
///
/// rumqttc's `MqttOptions` print the password in their `Debug` output (the `credentials`
/// field). They are built for [`Engine::new`] (by [`rumqttc_options5`] or
/// [`rumqttc_options4`]) and moved into the event loop at once; neither
/// `Engine` nor [`Sender`] implements `Debug`, so they cannot reach a log line. Our own
/// [`MqttOptions`] redact the password.
pub(super) enum Engine {
    V5(Box<rumqttc::v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// The encoded size of a PUBLISH packet (MQTT 3.1.1 §3.3, 5.0 §3.3); `properties_len` is
/// the encoded length of its MQTT 5 properties ([`super::Properties::encoded_len`]), not
/// sent on 3.1.1.
pub(super) fn publish_packet_size(
    protocol: Protocol,
    topic: &str,
    payload_len: usize,
    qos: QoS,
    properties_len: usize,
) -> usize {
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let properties = match protocol {
        Protocol::V5 => varint_len(properties_len) + properties_len,
        Protocol::V311 => 0,
    };
    let remaining = 2 + topic.len() + packet_id + properties + payload_len;
    1 + varint_len(remaining) + remaining
}

/// The bytes of MQTT's variable byte integer for `n`.
fn varint_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Socket options: rumqttc's connection timeout (whole seconds) and `TCP_NODELAY`.
///
/// With Nagle's algorithm (rumqttc's default) a QoS 0 publish that finds earlier data not
/// yet acknowledged waits for the broker's delayed ACK: 9 ms at the median and 25 ms at p99
/// at 2,000 msg/s, against 0.8 and 4 ms with `TCP_NODELAY`. Since writes are batched (see
/// `set_request_batch`) it costs no measurable CPU (docs/benchmarks.md).
fn network_options(connection_timeout: u64) -> rumqttc::NetworkOptions {
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(connection_timeout);
    network.set_tcp_nodelay(true);
    network
}

/// rumqttc's MQTT 5 options for ours; `rumqttc_timeout` in whole seconds (see
/// [`Engine::new`]).
fn rumqttc_options5(
    options: &MqttOptions,
    transport: Transport,
    rumqttc_timeout: u64,
) -> rumqttc::v5::MqttOptions {
    let mut o = rumqttc::v5::MqttOptions::new(
        options.client_id.clone(),
        options.host.clone(),
        options.port,
    );
    o.set_keep_alive(Duration::from_secs(options.keep_alive.as_secs()))
        .set_clean_start(options.clean_start)
        .set_manual_acks(true)
        .set_transport(transport)
        .set_connection_timeout(rumqttc_timeout)
        .set_outgoing_inflight_upper_limit(options.inflight)
        .set_receive_maximum(Some(options.inflight))
        .set_max_packet_size(Some(
            u32::try_from(options.max_packet_size).unwrap_or(u32::MAX),
        ))
        .set_session_expiry_interval(Some(
            u32::try_from(options.session_expiry.as_secs()).unwrap_or(u32::MAX),
        ))
        .set_network_options(network_options(rumqttc_timeout));
    if let Some(username) = &options.username {
        o.set_credentials(
            username.clone(),
            options.password.clone().unwrap_or_default(),
        );
    }
    if let Some(will) = &options.last_will {
        o.set_last_will(p5::LastWill::new(
            will.topic.clone(),
            will.payload.clone(),
            qos5(will.qos),
            will.retain,
            None,
        ));
    }
    o
}

/// rumqttc's MQTT 3.1.1 options for ours (its network options are set on the event loop).
fn rumqttc_options4(options: &MqttOptions, transport: Transport) -> rumqttc::MqttOptions {
    let mut o = rumqttc::MqttOptions::new(
        options.client_id.clone(),
        options.host.clone(),
        options.port,
    );
    o.set_keep_alive(Duration::from_secs(options.keep_alive.as_secs()))
        .set_clean_session(options.clean_start)
        .set_manual_acks(true)
        .set_transport(transport)
        .set_inflight(options.inflight)
        // MQTT 3.1.1 cannot tell the broker our limit, so it sends larger messages anyway.
        // rumqttc would refuse to decode one and drop the connection, and with a persistent
        // session the broker sends the same message again after every reconnect (a poison
        // message). So rumqttc reads anything the protocol can frame, and the tracker
        // acknowledges and drops what is over `max_packet_size` (`MqttEvent::Oversized`).
        // The broker's own limit bounds the memory one such message takes.
        .set_max_packet_size(MQTT_MAX_PACKET, options.max_packet_size);
    if let Some(username) = &options.username {
        o.set_credentials(
            username.clone(),
            options.password.clone().unwrap_or_default(),
        );
    }
    if let Some(will) = &options.last_will {
        o.set_last_will(rumqttc::LastWill::new(
            will.topic.clone(),
            will.payload.clone(),
            qos4(will.qos),
            will.retain,
        ));
    }
    o
}

impl Engine {
    /// Creates the event loop and its request channel (`capacity` requests).
    pub(super) fn new(
        options: &MqttOptions,
        tls: Option<Arc<ClientConfig>>,
        capacity: usize,
    ) -> (Sender, Engine) {
        // Our own timeout (`MqttOptions::connect_timeout`) fires first; rumqttc's, in whole
        // seconds, is a backstop and also bounds a flush while connected.
        let rumqttc_timeout = options.connect_timeout.as_secs().saturating_add(1);
        let transport = match tls {
            Some(config) => Transport::Tls(TlsConfiguration::Rustls(config)),
            None => Transport::Tcp,
        };
        match options.protocol {
            Protocol::V5 => {
                let o = rumqttc_options5(options, transport, rumqttc_timeout);
                let (client, event_loop) = rumqttc::v5::AsyncClient::new(o, capacity);
                (Sender::V5(client), Engine::V5(Box::new(event_loop)))
            }
            Protocol::V311 => {
                let o = rumqttc_options4(options, transport);
                let (client, mut event_loop) = rumqttc::AsyncClient::new(o, capacity);
                event_loop.set_network_options(network_options(rumqttc_timeout));
                (Sender::V311(client), Engine::V311(Box::new(event_loop)))
            }
        }
    }

    /// The next event. Polling again after an error reconnects at once; the caller sleeps.
    /// Cancel-safe only while not connected (rumqttc may be mid-write otherwise).
    pub(super) async fn poll(&mut self) -> Result<Ev, ConnectionError> {
        match self {
            Engine::V5(event_loop) => match event_loop.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => Ok(incoming5(packet)),
                Ok(rumqttc::v5::Event::Outgoing(outgoing)) => Ok(outgoing_ev(outgoing)),
                Err(e) => Err(connection_error5(e)),
            },
            Engine::V311(event_loop) => match event_loop.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => Ok(incoming4(packet)),
                Ok(rumqttc::Event::Outgoing(outgoing)) => Ok(outgoing_ev(outgoing)),
                Err(e) => Err(connection_error4(e)),
            },
        }
    }

    /// Moves the events rumqttc has already buffered (the rest of a batch of packets read or
    /// requests written at once) to `out`, up to a CONNACK, which only [`Engine::poll`]
    /// returns. Taking them here rather than one per `poll` saves building rumqttc's poll
    /// future (2.7 KB) for each.
    pub(super) fn take_ready_events(&mut self, out: &mut Vec<Ev>) {
        self.drain_events(out, true);
    }

    /// After a poll error: the events rumqttc had buffered but not returned yet (they
    /// happened; the tracker must see them before the drop is handled).
    pub(super) fn take_buffered_events(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        self.drain_events(&mut out, false);
        out
    }

    /// Moves rumqttc's buffered events to `out`, translated; with `until_connack`, stops
    /// before a CONNACK and leaves it buffered.
    fn drain_events(&mut self, out: &mut Vec<Ev>, until_connack: bool) {
        match self {
            Engine::V5(event_loop) => {
                while let Some(event) = event_loop.state.events.pop_front() {
                    if until_connack
                        && let rumqttc::v5::Event::Incoming(p5::Packet::ConnAck(..)) = &event
                    {
                        event_loop.state.events.push_front(event);
                        break;
                    }
                    out.push(match event {
                        rumqttc::v5::Event::Incoming(packet) => incoming5(packet),
                        rumqttc::v5::Event::Outgoing(outgoing) => outgoing_ev(outgoing),
                    });
                }
            }
            Engine::V311(event_loop) => {
                while let Some(event) = event_loop.state.events.pop_front() {
                    if until_connack
                        && let rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(..)) = &event
                    {
                        event_loop.state.events.push_front(event);
                        break;
                    }
                    out.push(match event {
                        rumqttc::Event::Incoming(packet) => incoming4(packet),
                        rumqttc::Event::Outgoing(outgoing) => outgoing_ev(outgoing),
                    });
                }
            }
        }
    }

    /// After a poll error: empties rumqttc's replay queue (and its collision slot, which its
    /// own cleanup keeps) and counts the requests that came from its request channel or
    /// from an earlier replay list. The tracker rebuilds the replay list on CONNACK.
    pub(super) fn take_pending(&mut self) -> Drained {
        let mut drained = Drained::default();
        match self {
            Engine::V5(event_loop) => {
                event_loop.state.collision = None;
                for request in std::mem::take(&mut event_loop.pending) {
                    match request {
                        rumqttc::v5::Request::Publish(p) if p.pkid == 0 => drained.publishes += 1,
                        rumqttc::v5::Request::Subscribe(_)
                        | rumqttc::v5::Request::Unsubscribe(_) => drained.controls += 1,
                        _ => {}
                    }
                }
            }
            Engine::V311(event_loop) => {
                event_loop.state.collision = None;
                for request in std::mem::take(&mut event_loop.pending) {
                    match request {
                        rumqttc::Request::Publish(p) if p.pkid == 0 => drained.publishes += 1,
                        rumqttc::Request::Subscribe(_) | rumqttc::Request::Unsubscribe(_) => {
                            drained.controls += 1
                        }
                        _ => {}
                    }
                }
            }
        }
        drained
    }

    /// Queues requests that rumqttc sends before anything from its request channel, and
    /// regardless of its in-flight limit.
    pub(super) fn push_pending(&mut self, replays: impl IntoIterator<Item = Replay>) {
        match self {
            Engine::V5(event_loop) => event_loop.pending.extend(replays.into_iter().map(replay5)),
            Engine::V311(event_loop) => event_loop.pending.extend(replays.into_iter().map(replay4)),
        }
    }

    /// Sets how many requests rumqttc writes before one flush (vendor/rumqttc/PATCHES.md):
    /// after the first, it takes more only from its request channel, only while its
    /// `pending` queue is empty, its in-flight window has room and no packet id collides.
    pub(super) fn set_request_batch(&mut self, batch: usize) {
        match self {
            Engine::V5(event_loop) => event_loop.request_batch = batch,
            Engine::V311(event_loop) => event_loop.request_batch = batch,
        }
    }

    /// Sets how many slots of the in-flight window must be free before rumqttc takes new
    /// requests while something is in flight (vendor/rumqttc/PATCHES.md, "Holding writes for
    /// room"); 0 takes them as soon as there is one slot.
    pub(super) fn set_write_hold(&mut self, hold: u16) {
        match self {
            Engine::V5(event_loop) => event_loop.write_hold = hold,
            Engine::V311(event_loop) => event_loop.write_hold = hold,
        }
    }

    /// Whether rumqttc's `pending` queue is empty (it then reads its request channel, unless
    /// its in-flight window is full).
    pub(super) fn pending_is_empty(&self) -> bool {
        match self {
            Engine::V5(event_loop) => event_loop.pending.is_empty(),
            Engine::V311(event_loop) => event_loop.pending.is_empty(),
        }
    }

    /// Whether rumqttc holds a publish whose packet id is still in use (it then reads no
    /// new requests, and a second one would overwrite the first).
    pub(super) fn has_collision(&self) -> bool {
        match self {
            Engine::V5(event_loop) => event_loop.state.collision.is_some(),
            Engine::V311(event_loop) => event_loop.state.collision.is_some(),
        }
    }

    /// QoS 1/2 publishes rumqttc has in flight.
    pub(super) fn inflight(&self) -> u16 {
        match self {
            Engine::V5(event_loop) => event_loop.state.inflight(),
            Engine::V311(event_loop) => event_loop.state.inflight(),
        }
    }
}

impl Sink for Sender {
    fn try_send(&self, request: &Request) -> bool {
        match self {
            Sender::V5(client) => match request {
                // Topic and payload shared with the tracker's copy, not copied
                // (`try_send_publish` is a patch: vendor/rumqttc/PATCHES.md).
                Request::Publish(m) => client
                    .try_send_publish(publish5(m.clone(), 0, false))
                    .is_ok(),
                Request::Subscribe(specs) => {
                    client.try_subscribe_many(specs.iter().map(filter5)).is_ok()
                }
                Request::Unsubscribe(filter) => client.try_unsubscribe(filter.clone()).is_ok(),
                Request::Ack { pkid, qos, .. } => {
                    let mut publish = p5::Publish::new("", qos5(*qos), bytes::Bytes::new(), None);
                    publish.pkid = *pkid;
                    client.try_ack(&publish).is_ok()
                }
                Request::Disconnect => client.try_disconnect().is_ok(),
            },
            Sender::V311(client) => match request {
                // rumqttc 0.25 has no non-blocking bytes publish for 3.1.1: this copies.
                Request::Publish(m) => client
                    .try_publish(m.topic.as_str(), qos4(m.qos), m.retain, m.payload.to_vec())
                    .is_ok(),
                Request::Subscribe(specs) => {
                    client.try_subscribe_many(specs.iter().map(filter4)).is_ok()
                }
                Request::Unsubscribe(filter) => client.try_unsubscribe(filter.clone()).is_ok(),
                Request::Ack { pkid, qos, .. } => {
                    let mut publish = rumqttc::Publish::new("", qos4(*qos), Vec::new());
                    publish.pkid = *pkid;
                    client.try_ack(&publish).is_ok()
                }
                Request::Disconnect => client.try_disconnect().is_ok(),
            },
        }
    }
}

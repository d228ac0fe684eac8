//! Order per route under two-way load (issue 13, "Order"): the real binary, a real Mosquitto
//! and the real CometD Node server without its ack extension, a server that hands a session's
//! queued deliveries to whichever of its requests it answers first.
//!
//! With one Bayeux session for both directions, the bridge's publishes (MQTT → Bayeux) went
//! out while its `/meta/connect` was held, so the server put some deliveries into the publish
//! replies; two replies on two connections then raced each other, and Bayeux → MQTT messages
//! reached MQTT out of order (the issue measured 494 of 180,000). The bridge now publishes
//! through a session of its own, so deliveries ride on `/meta/connect` replies only.
//!
//! The same load also stalled both directions on the old code: the MQTT client held its
//! request channel back for room in the in-flight window while the PUBACKs for incoming
//! messages waited in that channel, and only the next keep-alive ping woke it. The keep-alive
//! here is an hour, so a stall shows up as a timeout instead of a slow pass.
//!
//! Synchronisation is by events: the bridge's `Bridge ready.` log line and the test clients'
//! deliveries; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use bayeux_mqtt_bridge::mqtt::QoS;

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BridgeProcess, ConfigFile};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, mqtt_options};
use common::peers::{PeerKind, PeerServer};

const WAIT: Duration = Duration::from_secs(60);
/// Messages each way, in rounds: enough that, on the old code, publish replies carried
/// deliveries many times over (each round overlaps both directions).
const ROUNDS: u64 = 20;
const PER_ROUND: u64 = 250;

/// Ids that arrived after a larger id (each counted once), in arrival order.
fn out_of_order(ids: &[u64]) -> Vec<(u64, u64)> {
    let mut highest: Option<u64> = None;
    let mut late = Vec::new();
    for &id in ids {
        match highest {
            Some(h) if id < h => late.push((id, h)),
            _ => highest = Some(id),
        }
    }
    late
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bayeux_to_mqtt_keeps_order_while_mqtt_to_bayeux_publishes_on_the_same_server() {
    two_way_load_keeps_order(None).await;
}

/// The same through the durable spool, which both directions then pass through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_keep_order_under_two_way_load_through_the_spool() {
    let dir = common::bridge::TempDir::new("order-spool");
    two_way_load_keeps_order(Some(&dir.path().join("spool"))).await;
}

async fn two_way_load_keeps_order(spool: Option<&std::path::Path>) {
    let spool = spool.map_or(String::new(), |dir| {
        format!("[spool]\nenabled = true\ndir = \"{}\"\n\n", dir.display())
    });
    let server = PeerServer::start_async(PeerKind::CometD).await;
    // The publisher below sends each round as fast as Mosquitto takes it, faster than the
    // bridge acknowledges on a loaded machine (and, with the spool, after each commit), so a
    // burst waits in the broker's queue for the bridge, which drops beyond
    // `max_queued_messages` (1000): lift that limit, order is what this test is about.
    // (`tests/bridge_spool.rs` covers the broker's queue.)
    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 0\n").await;
    let url = server.url();
    let config = ConfigFile::new(&format!(
        "{spool}[bayeux]\nurl = \"{url}\"\nbackoff_increment_ms = 100\nbackoff_max_ms = 1000\n\n\
         [mqtt]\nhost = \"{host}\"\nport = {port}\nclient_id = \"order-bridge\"\nkeep_alive_secs = 3600\n\n\
         [[route]]\nbayeux = \"/up/*\"\nmqtt = \"up/+\"\ndirection = \"bayeux_to_mqtt\"\nqos = 1\n\n\
         [[route]]\nbayeux = \"/down/*\"\nmqtt = \"down/+\"\ndirection = \"mqtt_to_bayeux\"\nqos = 1\n",
        host = broker.host(),
        port = broker.port(),
    ));
    let up = MqttPeer::connect_with(
        mqtt_options(&broker, "order-up-subscriber"),
        &[("up/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let down_publisher =
        MqttPeer::connect(mqtt_options(&broker, "order-down-publisher"), &[]).await;
    let up_publisher = BayeuxPeer::publisher(&url, WAIT);
    let down = BayeuxPeer::subscriber(&url, "/down/*", WAIT).await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    let total = ROUNDS * PER_ROUND;
    for round in 0..ROUNDS {
        let ids = round * PER_ROUND..(round + 1) * PER_ROUND;
        // Both directions at once: the bridge publishes to Bayeux while deliveries for its
        // subscription are queued at the server.
        tokio::join!(
            up_publisher.publish_ids("/up/x", ids.clone()),
            down_publisher.publish_ids("down/x", ids),
        );
    }
    up.wait_for_ids("every Bayeux → MQTT id", "up/", 0..total)
        .await;
    down.wait_for_ids("every MQTT → Bayeux id", "/down/", 0..total)
        .await;

    let arrived: Vec<u64> = up.inbox.snapshot().iter().map(|g| g.id()).collect();
    let late = out_of_order(&arrived);
    assert!(
        late.is_empty(),
        "{} of {} Bayeux → MQTT messages arrived after a later one (id, after): {:?}",
        late.len(),
        arrived.len(),
        &late[..late.len().min(20)]
    );
    let bayeux_arrived: Vec<u64> = down
        .inbox
        .snapshot()
        .iter()
        .filter_map(|m| common::mqtt_peer::id_of(&m.data_value()?))
        .collect();
    let late = out_of_order(&bayeux_arrived);
    assert!(
        late.is_empty(),
        "{} MQTT → Bayeux messages arrived after a later one: {:?}",
        late.len(),
        &late[..late.len().min(20)]
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "bridge exit: {status}\n{}",
        bridge.tail(30)
    );
}

#[test]
fn out_of_order_names_each_late_id_once() {
    assert_eq!(out_of_order(&[0, 1, 2, 3]), vec![]);
    assert_eq!(out_of_order(&[0, 2, 1, 3]), vec![(1, 2)]);
    assert_eq!(out_of_order(&[3, 0, 1, 2]), vec![(0, 3), (1, 3), (2, 3)]);
}

/// Messages that arrived first, each id once (later copies, which at-least-once allows, are
/// left out).
fn first_arrivals(ids: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// MQTT → Bayeux keeps its order when the Bayeux server's path fails under a stream: the
/// bridge reaches the server through the gate, which blackholes it for a while. Requests in
/// flight fail without an answer; their publishes must go again ahead of the ones queued
/// behind them (before the fix each was retried on its own backoff, and they arrived
/// shuffled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_bayeux_keeps_order_across_a_failed_bayeux_request() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 0\n").await;
    let gate = common::gate::Gate::start(server.port()).await;
    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"http://127.0.0.1:{gate}/cometd\"\nbackoff_increment_ms = 100\n\
         backoff_max_ms = 500\nmax_network_delay_secs = 1\n\n\
         [mqtt]\nhost = \"{host}\"\nport = {port}\nclient_id = \"order-retry\"\n\n\
         [[route]]\nbayeux = \"/down/*\"\nmqtt = \"down/+\"\ndirection = \"mqtt_to_bayeux\"\nqos = 1\n",
        gate = gate.port(),
        host = broker.host(),
        port = broker.port(),
    ));
    let down = BayeuxPeer::subscriber(&server.url(), "/down/*", WAIT).await;
    let publisher = MqttPeer::connect(mqtt_options(&broker, "order-retry-pub"), &[]).await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    // The path goes dead for 1.5 s while messages flow: the request in flight gets no answer
    // and fails at the bridge's network deadline (1 s); then every connection is reset (what
    // the path held is lost) and new ones are refused for a moment; then it comes back.
    let total = 600u64;
    for round in 0..total / 10 {
        match round {
            5 => gate.blackhole(),
            // The dead path ends in resets: what it held is gone.
            35 => gate.refuse(),
            40 => gate.open(),
            _ => {}
        }
        publisher
            .publish_ids("down/x", round * 10..(round + 1) * 10)
            .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    down.wait_for_ids("every message", "/down/", 0..total).await;
    let arrived: Vec<u64> = down
        .inbox
        .snapshot()
        .iter()
        .filter_map(|m| common::mqtt_peer::id_of(&m.data_value()?))
        .collect();
    let late = out_of_order(&first_arrivals(&arrived));
    assert!(
        late.is_empty(),
        "{} messages arrived (first) after a later one: {:?}",
        late.len(),
        &late[..late.len().min(20)]
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "bridge exit: {status}\n{}",
        bridge.tail(30)
    );
}

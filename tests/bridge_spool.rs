//! The durable spool (issue 13), end to end: the real binary with `[spool]` on, a real
//! Mosquitto, the real CometD Node server, and a TCP gate of our own (`common::gate`) that
//! takes one peer away from the bridge only, while the test's own clients keep talking to it.
//!
//! - Bayeux → MQTT: the broker's path is cut for longer than the server keeps a session that
//!   does not poll (`--max-interval 1000`; the server's expiry of an idle session of the
//!   test's own marks the time), with a queue of 5: without the spool the session expires
//!   and what is published meanwhile is lost (see the gap test in `tests/operations.rs`);
//!   with it, the bridge keeps taking messages, nothing is lost and the session never
//!   expires.
//! - MQTT → Bayeux: the Bayeux server's path is cut while more arrives than the broker queues
//!   for a client (`max_queued_messages 50`): with the spool the bridge keeps acknowledging,
//!   so the broker drops nothing.
//! - A bridge SIGKILLed while the broker is unreachable delivers, after a restart with the
//!   same spool, everything it had taken in.
//! - A damaged spool file stops the start with the file and the recovery command.
//! - A full spool back-pressures, and the Bayeux session that then expires is a reported gap.
//!
//! The Bayeux → MQTT outage is a blackhole (no FIN, no RST; bytes vanish), as a dead network
//! path is; the others close and refuse connections.
//!
//! Synchronisation is by events: the bridge's JSON log lines (the intake's `Spooled.` line
//! after each commit says how many messages became durable), the test clients' deliveries
//! and the CometD server's `session expired:` line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use bayeux_mqtt_bridge::mqtt::QoS;
use serde_json::json;

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BridgeProcess, ConfigFile, LogLine, TempDir};
use common::gate::Gate;
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, mqtt_options};
use common::peers::{PeerKind, PeerServer};

const WAIT: Duration = Duration::from_secs(30);

/// `RUST_LOG` with the spool intake's `Spooled.` lines (one per commit, with how many
/// messages it made durable).
const DEBUG_SPOOL: (&str, &str) = ("RUST_LOG", "info,bayeux_mqtt_bridge::bridge::spooled=debug");

struct Setup<'a> {
    spool: bool,
    url: String,
    broker_port: u16,
    client_id: &'a str,
    spool_dir: &'a Path,
    max_bytes: u64,
    routes: &'a str,
}

impl Setup<'_> {
    fn toml(&self) -> String {
        format!(
            "[bayeux]\nurl = \"{url}\"\nbackoff_increment_ms = 100\nbackoff_max_ms = 500\n\n\
             [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{id}\"\n\
             connect_timeout_secs = 2\nbackoff_increment_ms = 100\nbackoff_max_ms = 500\n\n\
             [bridge]\nqueue_capacity = 5\ndrain_timeout_secs = 3\n\n\
             [spool]\nenabled = {spool}\ndir = \"{dir}\"\nmax_bytes = {max}\n\n{routes}",
            spool = self.spool,
            url = self.url,
            port = self.broker_port,
            id = self.client_id,
            dir = self.spool_dir.display(),
            max = self.max_bytes,
            routes = self.routes,
        )
    }
}

fn route(bayeux: &str, mqtt: &str, direction: &str) -> String {
    format!(
        "[[route]]\nbayeux = \"{bayeux}\"\nmqtt = \"{mqtt}\"\ndirection = \"{direction}\"\nqos = 1\n\n"
    )
}

/// Waits until the bridge made `n` messages of `direction` durable (its `Spooled.` lines).
async fn wait_spooled(bridge: &BridgeProcess, direction: &str, n: u64) {
    bridge
        .wait_until(
            &format!("{n} {direction} messages spooled"),
            WAIT,
            |lines| {
                lines
                    .iter()
                    .filter(|l| l.is("Spooled.") && l.str_field("direction") == Some(direction))
                    .filter_map(|l| l.u64_field("messages"))
                    .sum::<u64>()
                    >= n
            },
        )
        .await;
}

/// Ids that arrived after a larger one.
fn late(ids: &[u64]) -> Vec<u64> {
    let mut highest = None;
    let mut late = Vec::new();
    for &id in ids {
        match highest {
            Some(h) if id < h => late.push(id),
            _ => highest = Some(id),
        }
    }
    late
}

fn loss_lines(lines: &[LogLine]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.is("Possible message loss."))
        .map(|l| l.raw.clone())
        .collect()
}

/// Waits until the CometD server says it expired a session.
async fn wait_session_expired(server: &PeerServer, bridge: &BridgeProcess) {
    if server
        .wait_for_stderr_line(WAIT, |l| l.starts_with("session expired"))
        .await
        .is_none()
    {
        panic!(
            "the CometD server did not expire the bridge's session within {WAIT:?}; bridge \
             log:\n{}",
            bridge.tail(30)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bayeux_to_mqtt_loses_nothing_when_the_broker_is_away_longer_than_the_bayeux_session() {
    let server =
        PeerServer::start_with_args_async(PeerKind::CometD, &["--max-interval", "1000"]).await;
    let broker = Mosquitto::start_async().await;
    let gate = Gate::start(broker.port()).await;
    let dir = TempDir::new("spool-b2m");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: true,
        url: server.url(),
        broker_port: gate.port(),
        client_id: "spool-b2m",
        spool_dir: &spool_dir,
        max_bytes: 64 << 20,
        routes: &route("/sp/*", "sp/+", "bayeux_to_mqtt"),
    };
    let config = ConfigFile::new(&setup.toml());
    let subscriber = MqttPeer::connect_with(
        mqtt_options(&broker, "spool-b2m-sub"),
        &[("sp/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let mut bridge = BridgeProcess::spawn(&config, &[DEBUG_SPOOL]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = BayeuxPeer::publisher(&server.url(), WAIT);

    // The broker's path goes dead without a FIN or RST: the bridge finds out only by its
    // keep-alive, and what it writes meanwhile is lost on the way.
    gate.blackhole();
    // The outage lasts until the server has expired a session that stopped polling when it
    // began (its own clock for "longer than the bridge's session would live without
    // polling"), and at least 60 times the bridge's queue of 5. Each round of 5 goes out once
    // the previous one is durable: the spool takes them all while the broker is away, and
    // the Bayeux client never holds more than it can hand over, so it keeps polling even
    // when a slow disk makes each commit take long.
    let idle = server.idle_session().await;
    let idle_expired = format!("session expired: {idle}");
    let mut n = 0u64;
    while n < 300 || !server.stderr_output().contains(&idle_expired) {
        publisher.publish_ids("/sp/x", n..n + 5).await;
        n += 5;
        wait_spooled(&bridge, "bayeux_to_mqtt", n).await;
    }
    eprintln!("Broker away while {n} messages were published and spooled.");
    let expired: Vec<String> = server
        .stderr_output()
        .lines()
        .filter(|l| l.starts_with("session expired: ") && !l.ends_with(&idle))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        expired,
        Vec::<String>::new(),
        "the bridge kept its Bayeux session alive while the broker was away"
    );
    gate.open();
    subscriber
        .wait_for_ids("every message after the outage", "sp/", 0..n)
        .await;
    let ids: Vec<u64> = subscriber.inbox.snapshot().iter().map(|g| g.id()).collect();
    assert_eq!(late(&ids), Vec::<u64>::new(), "in order: {ids:?}");
    assert_eq!(loss_lines(&bridge.lines()), Vec::<String>::new(), "no gap");
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", bridge.tail(20));
    assert_eq!(
        bridge.count("Session lost; will handshake again."),
        0,
        "the bridge lost no Bayeux session"
    );
    let totals = bridge.totals("bayeux_to_mqtt");
    assert_eq!((totals.received, totals.forwarded), (n, n), "{totals:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_to_bayeux_loses_nothing_when_the_bayeux_server_is_away_beyond_the_broker_queue() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 50\n").await;
    let gate = Gate::start(server.port()).await;
    let dir = TempDir::new("spool-m2b");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: true,
        url: format!("http://127.0.0.1:{}/cometd", gate.port()),
        broker_port: broker.port(),
        client_id: "spool-m2b",
        spool_dir: &spool_dir,
        max_bytes: 64 << 20,
        routes: &route("/sq/*", "sq/+", "mqtt_to_bayeux"),
    };
    let config = ConfigFile::new(&setup.toml());
    let subscriber = BayeuxPeer::subscriber(&server.url(), "/sq/*", WAIT).await;
    let mut bridge = BridgeProcess::spawn(&config, &[DEBUG_SPOOL]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = MqttPeer::connect(mqtt_options(&broker, "spool-m2b-pub"), &[]).await;

    gate.close();
    // Six times what the broker queues for a client that does not acknowledge, at about
    // 100 msg/s (a burst faster than any client acknowledges would overflow the broker's
    // queue with or without a spool).
    for round in 0..30u64 {
        publisher
            .publish_ids("sq/x", round * 10..(round + 1) * 10)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_spooled(&bridge, "mqtt_to_bayeux", 300).await;
    gate.open();
    subscriber
        .wait_for_ids("every message after the outage", "/sq/", 0..300)
        .await;
    let ids: Vec<u64> = subscriber
        .inbox
        .snapshot()
        .iter()
        .filter_map(|m| common::mqtt_peer::id_of(&m.data_value()?))
        .collect();
    assert_eq!(late(&ids), Vec::<u64>::new(), "in order: {ids:?}");
    assert!(
        !broker.log().contains("dropped"),
        "the broker dropped messages for the bridge:\n{}",
        broker.log()
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", bridge.tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_while_the_broker_is_away_delivers_what_it_took_after_a_restart() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let gate = Gate::start(broker.port()).await;
    let dir = TempDir::new("spool-kill");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: true,
        url: server.url(),
        broker_port: gate.port(),
        client_id: "spool-kill",
        spool_dir: &spool_dir,
        max_bytes: 64 << 20,
        routes: &route("/sk/*", "sk/+", "bayeux_to_mqtt"),
    };
    let config = ConfigFile::new(&setup.toml());
    let subscriber = MqttPeer::connect_with(
        mqtt_options(&broker, "spool-kill-sub"),
        &[("sk/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let mut bridge = BridgeProcess::spawn(&config, &[DEBUG_SPOOL]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = BayeuxPeer::publisher(&server.url(), WAIT);
    gate.close();
    publisher.publish_ids("/sk/x", 0..200).await;
    wait_spooled(&bridge, "bayeux_to_mqtt", 200).await;
    bridge.kill().await;

    gate.open();
    let mut restarted = BridgeProcess::spawn(&config, &[]);
    restarted.wait_for_log("Bridge ready.", WAIT).await;
    subscriber
        .wait_for_ids("everything taken before the kill", "sk/", 0..200)
        .await;
    let ids: Vec<u64> = subscriber.inbox.snapshot().iter().map(|g| g.id()).collect();
    assert_eq!(late(&ids), Vec::<u64>::new(), "in order: {ids:?}");
    let (status, _) = restarted.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", restarted.tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_spool_stops_the_start_naming_the_file_and_the_recovery_command() {
    let dir = TempDir::new("spool-damaged");
    let spool_dir = dir.path().join("spool");
    std::fs::create_dir_all(&spool_dir).unwrap_or_else(|e| panic!("{e}"));
    let damaged = spool_dir.join("bayeux_to_mqtt.redb");
    std::fs::write(&damaged, vec![0x5a; 64 * 1024]).unwrap_or_else(|e| panic!("{e}"));
    // Nothing listens on these ports: the start must fail before connecting anywhere.
    let setup = Setup {
        spool: true,
        url: "http://127.0.0.1:9/cometd".to_owned(),
        broker_port: 9,
        client_id: "spool-damaged",
        spool_dir: &spool_dir,
        max_bytes: 64 << 20,
        routes: &route("/sd/*", "sd/+", "bayeux_to_mqtt"),
    };
    let config = ConfigFile::new(&setup.toml());
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    let status = bridge.wait_exit("the refused start", WAIT).await;
    assert!(!status.success(), "a damaged spool must stop the start");
    let log = bridge.tail(20);
    assert!(
        log.contains(&damaged.display().to_string()) && log.contains("spool-recover"),
        "the error names the file and the recovery command:\n{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    let recover = std::process::Command::new(common::bridge::BINARY)
        .args(["spool-recover", "--config"])
        .arg(config.path())
        .output()
        .unwrap_or_else(|e| panic!("spool-recover: {e}"));
    assert!(recover.status.success(), "{recover:?}");
    assert!(!damaged.exists(), "moved aside");
    let mut again = BridgeProcess::spawn(&config, &[]);
    again.wait_for_log("Bridge starting.", WAIT).await;
    let (status, _) = again.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", again.tail(20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_back_pressures_and_the_expired_session_is_a_reported_gap() {
    let server =
        PeerServer::start_with_args_async(PeerKind::CometD, &["--max-interval", "1000"]).await;
    let broker = Mosquitto::start_async().await;
    let gate = Gate::start(broker.port()).await;
    let dir = TempDir::new("spool-full");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: true,
        url: server.url(),
        broker_port: gate.port(),
        client_id: "spool-full",
        spool_dir: &spool_dir,
        max_bytes: 1 << 20,
        routes: &route("/sf/*", "sf/+", "bayeux_to_mqtt"),
    };
    let config = ConfigFile::new(&setup.toml());
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = BayeuxPeer::publisher(&server.url(), WAIT);
    gate.close();
    // 100 messages of 20 kB: twice the spool's 1 MiB.
    let pad = "x".repeat(20_000);
    for id in 0..100u64 {
        publisher
            .publish("/sf/x", json!({ "id": id, "pad": pad }))
            .await;
    }
    bridge
        .wait_for_log(
            "The spool is full; not taking more messages from this side until deliveries free room (back-pressure).",
            WAIT,
        )
        .await;
    wait_session_expired(&server, &bridge).await;
    gate.open();
    let gap = bridge
        .wait_for_line("the session_expired gap", WAIT, |l| {
            l.is("Possible message loss.") && l.str_field("kind") == Some("session_expired")
        })
        .await;
    assert_eq!(
        gap.str_field("direction"),
        Some("bayeux_to_mqtt"),
        "{}",
        gap.raw
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", bridge.tail(20));
}

/// Without the spool the same MQTT → Bayeux outage loses messages at the broker, which the
/// bridge cannot see; it reports the span as a `broker_queue_at_risk` gap instead of staying
/// silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_spool_a_bayeux_outage_beyond_the_broker_queue_is_a_reported_gap() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 50\n").await;
    let gate = Gate::start(server.port()).await;
    let dir = TempDir::new("nospool-m2b");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: false,
        url: format!("http://127.0.0.1:{}/cometd", gate.port()),
        broker_port: broker.port(),
        client_id: "nospool-m2b",
        spool_dir: &spool_dir,
        max_bytes: 64 << 20,
        routes: &route("/nq/*", "nq/+", "mqtt_to_bayeux"),
    };
    let config = ConfigFile::new(&setup.toml());
    let subscriber = BayeuxPeer::subscriber(&server.url(), "/nq/*", WAIT).await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = MqttPeer::connect(mqtt_options(&broker, "nospool-m2b-pub"), &[]).await;

    gate.close();
    for round in 0..30u64 {
        publisher
            .publish_ids("nq/x", round * 10..(round + 1) * 10)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gate.open();
    let gap = bridge
        .wait_for_line("the broker_queue_at_risk gap", WAIT, |l| {
            l.is("Possible message loss.") && l.str_field("kind") == Some("broker_queue_at_risk")
        })
        .await;
    assert_eq!(
        gap.str_field("direction"),
        Some("mqtt_to_bayeux"),
        "{}",
        gap.raw
    );
    assert_eq!(gap.str_field("names"), Some("nq/+"), "{}", gap.raw);
    // What the gap warns of did happen: the broker dropped messages for the bridge. A
    // marker sent after the outage arrives after everything the broker kept.
    publisher.publish_ids("nq/x", 1000..1001).await;
    subscriber
        .wait_for_ids("the marker after the outage", "/nq/", 1000..1001)
        .await;
    assert!(
        subscriber.ids("/nq/").len() < 301,
        "the broker kept everything; the test no longer shows a loss"
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", bridge.tail(20));
}

/// A message larger than the whole spool could never be written: it is dropped and counted
/// (`spool_too_small`) instead of holding its side back for good, and what follows flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_spool_is_dropped_and_counted_and_the_rest_flows() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let broker = Mosquitto::start_async().await;
    let dir = TempDir::new("spool-small");
    let spool_dir = dir.path().join("spool");
    let setup = Setup {
        spool: true,
        url: server.url(),
        broker_port: broker.port(),
        client_id: "spool-small",
        spool_dir: &spool_dir,
        max_bytes: 1 << 20,
        routes: &route("/ss/*", "ss/+", "bayeux_to_mqtt"),
    };
    let config = ConfigFile::new(&setup.toml());
    let subscriber = MqttPeer::connect_with(
        mqtt_options(&broker, "spool-small-sub"),
        &[("ss/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let publisher = BayeuxPeer::publisher(&server.url(), WAIT);
    publisher
        .publish("/ss/x", json!({ "id": 0, "pad": "y".repeat(1_200_000) }))
        .await;
    publisher.publish_ids("/ss/x", 1..2).await;
    subscriber
        .wait_for_ids("the message after the oversized one", "ss/", 1..2)
        .await;
    let drop = bridge
        .wait_for_line("the oversized message's drop", WAIT, |l| {
            l.is("Message dropped.") && l.str_field("reason") == Some("spool_too_small")
        })
        .await;
    assert_eq!(drop.str_field("name"), Some("/ss/x"), "{}", drop.raw);
    assert_eq!(
        subscriber.ids("ss/").keys().copied().collect::<Vec<_>>(),
        [1]
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "exit {status}; {}", bridge.tail(20));
    let totals = bridge.totals("bayeux_to_mqtt");
    assert_eq!(
        totals.dropped.get("spool_too_small"),
        Some(&1),
        "{totals:?}"
    );
}

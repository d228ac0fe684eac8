//! Faults on the connections of the running daemon (issue 14, "Proof, not just fixes").
//!
//! MQTT: the bridge reaches a real Mosquitto through the loopback fault proxy
//! (`tests/common/gate.rs`) while messages flow both ways at QoS 1 between a real CometD
//! server and the broker. The path goes dead without an RST (blackhole), slows to a drip,
//! or is reset (RST) mid-stream. Each time the bridge must recover by itself, count the
//! lost connection in `bridge_reconnects_total{side="mqtt"}`, and lose no message: QoS 1
//! keeps an unacknowledged publish on both ends (the bridge resends its own; the broker
//! redelivers the ones the bridge had not acknowledged), so every id must arrive
//! (duplicates are allowed by at-least-once).
//!
//! On the Bayeux connection: replies reset (RST) mid-body by the gate in front of the real
//! CometD server with its acknowledgement extension, and truncated chunked bodies from the
//! scripted server (`tests/common/fake_server.rs`, which alone can send one). Other Bayeux
//! faults are covered in `tests/bridge_order.rs` (blackhole, then resets),
//! `tests/bridge_spool.rs` (close) and, for the client library against a scripted server,
//! `tests/bayeux_faults.rs`.
//!
//! Synchronisation: the bridge's `Bridge ready.` line, the gate's connection counts, the
//! reconnect counter in `/metrics` (polled: a counter has no event to await) and the test
//! clients' deliveries; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use bayeux_mqtt_bridge::mqtt::QoS;

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BridgeProcess, ConfigFile, free_port};
use common::gate::{Gate, Mode};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, mqtt_options};
use common::peers::{PeerKind, PeerServer};

const WAIT: Duration = Duration::from_secs(90);
/// Messages each way.
const TOTAL: u64 = 400;
/// Sent in rounds of this many, [`ROUND_GAP`] apart, so that the fault lands mid-stream.
const PER_ROUND: u64 = 10;
const ROUND_GAP: Duration = Duration::from_millis(50);
/// Gap between two scrapes of `/metrics` while waiting for a counter.
const POLL: Duration = Duration::from_millis(200);

/// `bridge_reconnects_total{side=SIDE,...}` summed over causes, from `/metrics`.
async fn reconnects(http_port: u16, side: Side) -> f64 {
    let label = match side {
        Side::Mqtt => "side=\"mqtt\"",
        Side::Bayeux => "side=\"bayeux\"",
    };
    let url = format!("http://127.0.0.1:{http_port}/metrics");
    let body = match reqwest::get(&url).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => return 0.0,
    };
    body.lines()
        .filter(|l| l.starts_with("bridge_reconnects_total{") && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_reconnects_above(
    http_port: u16,
    side: Side,
    before: f64,
    bridge: &BridgeProcess,
) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = reconnects(http_port, side).await;
        if now > before {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge_reconnects_total{{side={side:?}}} stayed at {now} for {WAIT:?}; the \
             bridge's log ends:\n{}",
            bridge.tail(30)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Which of the bridge's connections goes through the gate.
#[derive(Debug, Clone, Copy)]
enum Side {
    Mqtt,
    Bayeux,
}

/// What the gate does to that connection.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing passes, no FIN, no RST; the bridge's keep-alive must notice.
    Blackhole,
    /// A few bytes per second each way.
    SlowDrip,
    /// Every connection reset (RST) and new ones refused for a moment.
    Reset,
    /// Replies cut off in the middle and the connection reset (RST), a few times.
    ResetMidResponse,
}

async fn fault_loses_nothing(side: Side, fault: Fault) {
    // With the acknowledgement extension: a connect reply cut off is delivered again.
    let server = PeerServer::start_with_args_async(PeerKind::CometD, &["--ack"]).await;
    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 0\n").await;
    let gate = Gate::start(match side {
        Side::Mqtt => broker.port(),
        Side::Bayeux => server.port(),
    })
    .await;
    let (bayeux_url, mqtt_port) = match side {
        Side::Mqtt => (server.url(), gate.port()),
        Side::Bayeux => (
            format!("http://127.0.0.1:{}/cometd", gate.port()),
            broker.port(),
        ),
    };
    let http_port = free_port();
    let url = server.url();
    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"{bayeux_url}\"\nbackoff_increment_ms = 100\nbackoff_max_ms = 1000\n\
         max_network_delay_secs = 2\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {mqtt_port}\nclient_id = \"faults-bridge\"\n\
         keep_alive_secs = 5\nconnect_timeout_secs = 2\nbackoff_increment_ms = 100\n\
         backoff_max_ms = 1000\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [[route]]\nbayeux = \"/up/*\"\nmqtt = \"up/+\"\ndirection = \"bayeux_to_mqtt\"\nqos = 1\n\n\
         [[route]]\nbayeux = \"/down/*\"\nmqtt = \"down/+\"\ndirection = \"mqtt_to_bayeux\"\nqos = 1\n",
    ));
    let up = MqttPeer::connect_with(
        mqtt_options(&broker, "faults-up-subscriber"),
        &[("up/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let down_publisher = MqttPeer::connect(mqtt_options(&broker, "faults-down-pub"), &[]).await;
    let up_publisher = BayeuxPeer::publisher(&url, WAIT);
    let down = BayeuxPeer::subscriber(&url, "/down/*", WAIT).await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    gate.wait_accepted(1, WAIT).await;
    let before = reconnects(http_port, side).await;

    let rounds = TOTAL / PER_ROUND;
    for round in 0..rounds {
        if round == rounds / 4 {
            match fault {
                Fault::Blackhole => gate.blackhole(),
                Fault::SlowDrip => gate.slow_drip(64),
                Fault::Reset => gate.refuse(),
                Fault::ResetMidResponse => gate.reset_mid_response(),
            }
        }
        let ids = round * PER_ROUND..(round + 1) * PER_ROUND;
        tokio::join!(
            up_publisher.publish_ids("/up/x", ids.clone()),
            down_publisher.publish_ids("down/x", ids),
        );
        tokio::time::sleep(ROUND_GAP).await;
    }
    // The bridge noticed: a blackhole through its keep-alive (no RST ever comes), a reset at
    // once. A slow drip may or may not cost a connection; it is counted if it does.
    if let Fault::ResetMidResponse = fault {
        // Several replies cut: long-poll replies carrying deliveries, publish replies.
        gate.wait_until("5 replies cut off", WAIT, |s| s.cut >= 5)
            .await;
    }
    let counted = match fault {
        Fault::Blackhole | Fault::Reset | Fault::ResetMidResponse => {
            wait_reconnects_above(http_port, side, before, &bridge).await
        }
        Fault::SlowDrip => reconnects(http_port, side).await,
    };
    assert_eq!(
        gate.mode(),
        match fault {
            Fault::Blackhole => Mode::Blackhole,
            Fault::SlowDrip => Mode::SlowDrip(64),
            Fault::Reset => Mode::Refuse,
            Fault::ResetMidResponse => Mode::ResetMidResponse,
        }
    );
    gate.open();

    up.wait_for_ids("every Bayeux → MQTT id after the fault", "up/", 0..TOTAL)
        .await;
    down.wait_for_ids("every MQTT → Bayeux id after the fault", "/down/", 0..TOTAL)
        .await;
    eprintln!(
        "{side:?} {fault:?}: {} reconnects counted, {} replies cut; {} Bayeux → MQTT and {} \
         MQTT → Bayeux deliveries for {TOTAL} ids each way",
        counted - before,
        gate.stats().cut,
        up.inbox.snapshot().len(),
        down.inbox.snapshot().len(),
    );
    // The bridge is healthy afterwards: a fresh message goes through at once both ways.
    up_publisher.publish_ids("/up/x", TOTAL..TOTAL + 1).await;
    down_publisher.publish_ids("down/x", TOTAL..TOTAL + 1).await;
    up.wait_for_ids("a message after recovery", "up/", [TOTAL])
        .await;
    down.wait_for_ids("a message after recovery", "/down/", [TOTAL])
        .await;

    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "bridge exit: {status}\n{}",
        bridge.tail(30)
    );
    let totals = bridge.totals("bayeux_to_mqtt");
    assert!(
        totals.dropped.values().all(|&n| n == 0),
        "Bayeux → MQTT dropped messages: {totals:?}"
    );
    let totals = bridge.totals("mqtt_to_bayeux");
    assert!(
        totals.dropped.values().all(|&n| n == 0),
        "MQTT → Bayeux dropped messages: {totals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_blackhole_without_rst_is_noticed_by_keep_alive_and_loses_nothing_at_qos_1() {
    fault_loses_nothing(Side::Mqtt, Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_slow_drip_loses_nothing_at_qos_1() {
    fault_loses_nothing(Side::Mqtt, Fault::SlowDrip).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_reset_mid_stream_is_counted_and_loses_nothing_at_qos_1() {
    fault_loses_nothing(Side::Mqtt, Fault::Reset).await;
}

/// Bayeux replies (long-poll replies carrying deliveries, and the replies to the bridge's
/// publishes) cut off mid-body by an RST: the server's acknowledgement extension delivers
/// a lost connect reply again, and the bridge sends a publish whose reply it lost again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bayeux_replies_reset_mid_response_are_counted_and_lose_nothing_at_qos_1() {
    fault_loses_nothing(Side::Bayeux, Fault::ResetMidResponse).await;
}

/// Long-poll replies whose chunked body is cut short (the first half sent, then a FIN
/// without the final chunk) and long polls closed without an answer, from a scripted Bayeux server
/// (`tests/common/fake_server.rs`: no real server sends a truncated chunked body, and the
/// scripted one also lets the test decide exactly which replies break). The server keeps
/// each delivery batch until the bridge's acknowledgement extension confirms it, as
/// CometD's does, so a broken reply is delivered again on the next `/meta/connect`: every id
/// must reach MQTT, the failed connects are counted in
/// `bridge_reconnects_total{side="bayeux"}`, and the bridge keeps its session (one
/// handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_chunked_bayeux_replies_are_counted_and_lose_nothing_with_the_ack_extension() {
    use std::sync::{Arc, Mutex};

    use common::fake_server::{FakeServer, Reply, bayeux};
    use serde_json::{Value, json};

    const IDS: u64 = 200;
    const PER_BATCH: u64 = 20;

    #[derive(Default)]
    struct State {
        handshakes: u64,
        /// The batch sent last and not yet acknowledged: its number and ids.
        unacked: Option<(u64, Vec<u64>)>,
        batches: u64,
        next_id: u64,
        /// Sends so far, to choose which replies break.
        sends: u64,
        truncated: u64,
        closed: u64,
    }

    let state = Arc::new(Mutex::new(State::default()));
    let server = FakeServer::start({
        let state = Arc::clone(&state);
        move |req| {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let Some(first) = req.messages.first().cloned() else {
                return Reply::Status(400, "no messages".into());
            };
            match req.channel() {
                Some("/meta/handshake") => {
                    st.handshakes += 1;
                    let mut reply = bayeux::handshake_ok(&first, "fault-client");
                    reply["ext"] = json!({"ack": true});
                    Reply::Json(json!([reply]))
                }
                Some("/meta/connect") => {
                    let acked = first
                        .pointer("/ext/ack")
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    if st.unacked.as_ref().is_some_and(|(b, _)| *b <= acked) {
                        st.unacked = None;
                    }
                    if st.unacked.is_none() && st.next_id < IDS {
                        st.batches += 1;
                        let ids: Vec<u64> =
                            (st.next_id..(st.next_id + PER_BATCH).min(IDS)).collect();
                        st.next_id += ids.len() as u64;
                        st.unacked = Some((st.batches, ids));
                    }
                    let Some((batch, ids)) = st.unacked.clone() else {
                        // Nothing to deliver: hold the long poll a little, as a server does.
                        let mut reply = bayeux::connect_ok(&first, None);
                        reply["ext"] = json!({"ack": st.batches});
                        return Reply::Delayed(
                            Duration::from_millis(200),
                            Box::new(Reply::Json(json!([reply]))),
                        );
                    };
                    let mut reply = bayeux::connect_ok(&first, None);
                    reply["ext"] = json!({"ack": batch});
                    let mut messages = vec![reply];
                    messages.extend(
                        ids.iter()
                            .map(|id| bayeux::delivery("/up/x", json!({"id": id}))),
                    );
                    st.sends += 1;
                    // Every third reply breaks: truncated chunked, then closed unanswered.
                    match st.sends % 6 {
                        2 => {
                            st.truncated += 1;
                            Reply::TruncatedChunked(Value::Array(messages))
                        }
                        5 => {
                            st.closed += 1;
                            Reply::Close
                        }
                        _ => Reply::Json(Value::Array(messages)),
                    }
                }
                _ => bayeux::reply_all(req, bayeux::ok),
            }
        }
    })
    .await;

    let broker = Mosquitto::start_configured_async(false, "max_queued_messages 0\n").await;
    let http_port = free_port();
    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"{url}\"\nbackoff_increment_ms = 100\nbackoff_max_ms = 500\n\
         max_network_delay_secs = 2\n\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"faults-chunked\"\n\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\n\
         [[route]]\nbayeux = \"/up/*\"\nmqtt = \"up/+\"\ndirection = \"bayeux_to_mqtt\"\nqos = 1\n",
        url = server.url(),
        port = broker.port(),
    ));
    let up = MqttPeer::connect_with(
        mqtt_options(&broker, "faults-chunked-sub"),
        &[("up/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    up.wait_for_ids("every id despite the broken replies", "up/", 0..IDS)
        .await;
    let counted = wait_reconnects_above(http_port, Side::Bayeux, 0.0, &bridge).await;
    let (truncated, closed, handshakes) = {
        let st = state.lock().unwrap_or_else(|p| p.into_inner());
        (st.truncated, st.closed, st.handshakes)
    };
    eprintln!(
        "truncated chunked: {truncated} replies truncated, {closed} closed unanswered, \
         {counted} Bayeux reconnects counted, {} MQTT deliveries for {IDS} ids, {handshakes} \
         handshake(s)",
        up.inbox.snapshot().len()
    );
    assert!(
        truncated >= 3,
        "only {truncated} truncated replies were sent"
    );
    assert!(
        counted >= truncated as f64,
        "{truncated} truncated replies but only {counted} failed connects counted"
    );
    assert_eq!(handshakes, 1, "a broken reply must not cost the session");
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "bridge exit: {status}\n{}",
        bridge.tail(30)
    );
    let totals = bridge.totals("bayeux_to_mqtt");
    assert!(
        totals.dropped.values().all(|&n| n == 0),
        "Bayeux → MQTT dropped messages: {totals:?}"
    );
}

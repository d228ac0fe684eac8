//! The soak run behind `scripts/soak` (issue 14): not part of `cargo test` (its target has
//! `test = false` in Cargo.toml, so it is neither run nor reported as skipped), run
//! with `scripts/soak`, which sets the knobs below and builds in release mode.
//!
//! The real binary between a real CometD server and a real (persistent) Mosquitto, at
//! `SOAK_RATE` messages per second in each direction at QoS 1 for `SOAK_SECONDS`, with the
//! broker restarted every `SOAK_RESTART_SECS`. The bridge's resident memory (VmRSS from
//! /proc/PID/status) is read after `SOAK_WARMUP_SECS` and at the end; the end value must be
//! within 10 % of the first, and every id sent must arrive on the other side (0 lost;
//! duplicates, which at-least-once allows, are counted and printed).
//!
//! Only the broker is restarted: the CometD Node server keeps no state across a restart, so
//! what it held for the bridge's session would be lost by the protocol itself, not by the
//! bridge (`tests/bridge_end_to_end.rs` covers a Bayeux server restart).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bayeux_mqtt_bridge::mqtt::QoS;

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BridgeProcess, ConfigFile};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, id_of, mqtt_options};
use common::peers::{PeerKind, PeerServer};

const WAIT: Duration = Duration::from_secs(120);
/// Publishing happens in ticks of this length.
const TICK: Duration = Duration::from_millis(100);

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_both_directions_with_broker_restarts() {
    let seconds = knob("SOAK_SECONDS", 3600);
    let restart_every = knob("SOAK_RESTART_SECS", 300);
    let warmup = knob("SOAK_WARMUP_SECS", 300);
    let rate = knob("SOAK_RATE", 500);
    let per_tick = (rate * TICK.as_millis() as u64 / 1000).max(1);

    let server = PeerServer::start_async(PeerKind::CometD).await;
    let mut broker = Mosquitto::start_configured_async(true, "max_queued_messages 0\n").await;
    let url = server.url();
    let config = ConfigFile::new(&format!(
        "[bayeux]\nurl = \"{url}\"\nbackoff_increment_ms = 100\nbackoff_max_ms = 1000\n\n\
         [mqtt]\nhost = \"{host}\"\nport = {port}\nclient_id = \"soak-bridge\"\n\
         backoff_increment_ms = 100\nbackoff_max_ms = 1000\n\n\
         [[route]]\nbayeux = \"/up/*\"\nmqtt = \"up/+\"\ndirection = \"bayeux_to_mqtt\"\nqos = 1\n\n\
         [[route]]\nbayeux = \"/down/*\"\nmqtt = \"down/+\"\ndirection = \"mqtt_to_bayeux\"\nqos = 1\n",
        host = broker.host(),
        port = broker.port(),
    ));
    let up = MqttPeer::connect_with(
        mqtt_options(&broker, "soak-up-subscriber"),
        &[("up/#", QoS::AtLeastOnce)],
        WAIT,
    )
    .await;
    let down_publisher = MqttPeer::connect(mqtt_options(&broker, "soak-down-pub"), &[]).await;
    let up_publisher = BayeuxPeer::publisher(&url, WAIT);
    let down = BayeuxPeer::subscriber(&url, "/down/*", WAIT).await;
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    let pid = bridge.pid();

    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut next_restart = Duration::from_secs(restart_every);
    let mut restarts = 0u32;
    let mut warm_rss = None;
    eprintln!(
        "soak: {seconds} s at {rate} msg/s each way, broker restart every {restart_every} s, \
         RSS baseline after {warmup} s; bridge pid {pid}, start RSS {} KiB",
        rss_kib(pid)
    );
    while started.elapsed() < Duration::from_secs(seconds) {
        ticker.tick().await;
        let ids = sent..sent + per_tick;
        tokio::join!(
            up_publisher.publish_ids("/up/x", ids.clone()),
            down_publisher.publish_ids("down/x", ids),
        );
        sent += per_tick;
        if warm_rss.is_none() && started.elapsed() >= Duration::from_secs(warmup) {
            let rss = rss_kib(pid);
            eprintln!(
                "soak: RSS after {:?}: {rss} KiB ({sent} sent each way)",
                started.elapsed()
            );
            warm_rss = Some(rss);
        }
        if started.elapsed() >= next_restart {
            next_restart += Duration::from_secs(restart_every);
            restarts += 1;
            eprintln!(
                "soak: restarting the broker ({restarts}) at {:?}",
                started.elapsed()
            );
            broker.terminate();
            broker.restart_async().await;
        }
    }
    let elapsed = started.elapsed();

    // Every id arrives; the check is cheap until enough deliveries are there.
    up.inbox
        .wait_until("every Bayeux → MQTT id", WAIT, |got| {
            got.len() as u64 >= sent
                && got
                    .iter()
                    .filter(|g| g.topic.starts_with("up/"))
                    .filter_map(|g| id_of(&g.json()))
                    .collect::<BTreeSet<_>>()
                    .len() as u64
                    == sent
        })
        .await;
    down.inbox
        .wait_until("every MQTT → Bayeux id", WAIT, |got| {
            got.len() as u64 >= sent
                && got
                    .iter()
                    .filter(|m| m.channel.starts_with("/down/"))
                    .filter_map(|m| id_of(&m.data_value()?))
                    .collect::<BTreeSet<_>>()
                    .len() as u64
                    == sent
        })
        .await;
    let end_rss = rss_kib(pid);
    let warm_rss = warm_rss.unwrap_or(end_rss);
    let up_got = up.inbox.snapshot().len() as u64;
    let down_got = down.inbox.snapshot().len() as u64;
    let growth = (end_rss as f64 / warm_rss as f64 - 1.0) * 100.0;
    println!(
        "soak-result seconds={:.0} rate_each_way={:.0}/s sent_each_way={sent} lost=0 \
         duplicates_b2m={} duplicates_m2b={} broker_restarts={restarts} \
         rss_after_warmup_kib={warm_rss} rss_end_kib={end_rss} rss_growth={growth:+.1}%",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        up_got - sent,
        down_got - sent,
    );
    assert!(
        end_rss as f64 <= warm_rss as f64 * 1.10,
        "resident memory grew from {warm_rss} KiB after the warm-up to {end_rss} KiB at the end \
         ({growth:+.1} %, over 10 %)"
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(
        status.success(),
        "bridge exit: {status}\n{}",
        bridge.tail(30)
    );
}

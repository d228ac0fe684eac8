//! An unreachable server: the client retries its handshake with bounded, growing delays and
//! does not spin. In a file of its own so the process CPU time measured here is this test's.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use bayeux_mqtt_bridge::bayeux::Event;
use common::bayeux_client::{fast_options, start};

/// User + system CPU time of this process, from /proc/self/stat (Linux).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat (Linux)");
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on every Linux platform Rust supports.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn an_unreachable_server_gets_bounded_retries_with_growing_delay_and_no_spin() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/cometd");
    // Taken before the client starts: its first attempt cannot come earlier.
    let cpu_before = cpu_time();
    let started = Instant::now();
    let (client, mut events) = start(fast_options(&url), vec![]); // 250 ms steps, 2 s cap
    let mut failures: Vec<(u32, Duration)> = Vec::new();
    while failures.len() < 8 {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("a handshake failure is reported within 10 s")
            .expect("the client keeps running");
        match event {
            Event::HandshakeFailed {
                attempt, retry_in, ..
            } => failures.push((attempt, retry_in)),
            other => panic!("only handshake failures are expected, got {other:?}"),
        }
    }
    let wall = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_before);

    let attempts: Vec<u32> = failures.iter().map(|f| f.0).collect();
    assert_eq!(attempts, (1..=8).collect::<Vec<_>>());
    let advertised: Vec<Duration> = failures.iter().map(|f| f.1).collect();
    // Linear 250 ms steps capped at 2 s, each shortened by at most 20 % jitter.
    for (i, wait) in advertised.iter().enumerate() {
        let full = Duration::from_millis(250 * (i as u64 + 1)).min(Duration::from_secs(2));
        assert!(
            *wait <= full && *wait >= full.mul_f64(0.8),
            "attempt {}: {wait:?}",
            i + 1
        );
    }
    // The growth is asserted on the waits the client announces (above), not on when the
    // events happen to be received. That it honours them shows in the total: the eighth
    // failure cannot come before the first seven waits have passed since the client started.
    let waited: Duration = advertised[..7].iter().sum();
    assert!(
        wall >= waited,
        "8 attempts in {wall:?}, before the announced waits {advertised:?} ({waited:?}) passed"
    );
    eprintln!(
        "8 handshake attempts in {wall:?}; waits {advertised:?}; CPU {cpu:?} ({:.2} % of wall)",
        cpu.as_secs_f64() / wall.as_secs_f64() * 100.0
    );
    // 7 waits of at least 0.2+0.4+...: over 5 s of wall time (asserted above through the
    // announced waits); a spinning client would burn a core for all of it.
    assert!(
        cpu < wall / 20,
        "CPU {cpu:?} over {wall:?}: the client must sleep between retries"
    );
    client.disconnect().await;
}

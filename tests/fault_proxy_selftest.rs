//! Tests the test harness, not the product: the loopback fault proxy in
//! `tests/common/gate.rs` ([`Gate`]), in each of its modes, in front of a tiny echo server.
//!
//! Everything waits for events (bytes, EOF, errors, the gate's counters) with a generous
//! deadline; the only fixed waits are the bounded windows in which nothing may arrive.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::gate::{Gate, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Deadline for anything that should happen.
const WAIT: Duration = Duration::from_secs(3);
/// How long a read waits to show that nothing arrives. A bounded window, not a
/// synchronisation: on loopback an echo takes well under a millisecond.
const NOTHING: Duration = Duration::from_millis(300);

/// An echo server on a free loopback port that counts the connections it accepted.
struct Echo {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Echo {
    async fn start() -> Echo {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Echo { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn connect(gate: &Gate) -> TcpStream {
    TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], gate.port())))
        .await
        .unwrap()
}

/// Sends `message` and reads it back.
async fn assert_echoes(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut got = vec![0; message.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut got))
        .await
        .expect("the echo came back in time")
        .expect("the echo came back");
    assert_eq!(got, message);
}

/// Asserts that `expected` arrives on `stream` (without sending anything first).
async fn assert_receives(stream: &mut TcpStream, expected: &[u8]) {
    let mut got = vec![0; expected.len()];
    tokio::time::timeout(WAIT, stream.read_exact(&mut got))
        .await
        .expect("the held bytes came back in time")
        .expect("the held bytes came back");
    assert_eq!(got, expected);
}

/// Asserts that nothing arrives on `stream` within [`NOTHING`] (no bytes, no EOF, no error).
async fn assert_silent(stream: &mut TcpStream) {
    let mut buf = [0; 64];
    let read = tokio::time::timeout(NOTHING, stream.read(&mut buf)).await;
    assert!(read.is_err(), "expected silence, got {read:?}");
}

/// Reads until EOF or an error, within [`WAIT`].
async fn read_end(stream: &mut TcpStream) -> std::io::Result<usize> {
    let mut buf = [0; 64];
    tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the connection ended in time")
}

#[tokio::test]
async fn an_open_gate_forwards_both_ways_and_counts() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    assert_eq!(gate.mode(), Mode::Open);
    let mut client = connect(&gate).await;
    gate.wait_connections(1, WAIT).await;
    assert_echoes(&mut client, b"hello").await;
    let stats = gate
        .wait_until("5 bytes each way", WAIT, |s| s.forwarded() == 10)
        .await;
    assert_eq!((stats.to_target, stats.to_client), (5, 5), "{stats:?}");
    assert_eq!((stats.accepted, stats.discarded), (1, 0), "{stats:?}");
    assert_eq!(gate.bytes_forwarded(), 10);

    let mut second = connect(&gate).await;
    gate.wait_connections(2, WAIT).await;
    assert_echoes(&mut second, b"again").await;
    drop(client);
    drop(second);
    let stats = gate.wait_connections(0, WAIT).await;
    assert_eq!(stats.accepted, 2, "{stats:?}");
    assert_eq!(gate.connections(), 0);
}

#[tokio::test]
async fn a_blackhole_holds_connections_open_and_forwards_nothing() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    let mut old = connect(&gate).await;
    assert_echoes(&mut old, b"before").await;

    gate.blackhole();
    let mut new = connect(&gate).await;
    gate.wait_connections(2, WAIT).await;
    old.write_all(b"held").await.unwrap();
    new.write_all(b"held too").await.unwrap();
    let (_, _) = tokio::join!(assert_silent(&mut old), assert_silent(&mut new));
    // Still open: writing works and nothing was closed or reset.
    old.write_all(b"!").await.unwrap();
    new.write_all(b"!").await.unwrap();
    assert_eq!(gate.connections(), 2);
    assert_eq!(
        echo.accepted(),
        1,
        "the new connection never reached the target"
    );
    assert_eq!(gate.stats().to_target, 6, "nothing passed after `before`");

    gate.open();
    // What was sent into the hole arrives now, as after TCP's retransmissions on a path that
    // came back; each kind of connection works: one from before, one held, a new one.
    assert_receives(&mut old, b"held!").await;
    assert_receives(&mut new, b"held too!").await;
    assert_echoes(&mut old, b"old again").await;
    let mut newest = connect(&gate).await;
    assert_echoes(&mut newest, b"newest").await;
    assert_eq!(echo.accepted(), 3);
    assert_eq!(gate.stats().discarded, 0);
}

#[tokio::test]
async fn refusing_refuses_new_connections_and_resets_open_ones() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    let mut old = connect(&gate).await;
    assert_echoes(&mut old, b"before").await;

    gate.refuse();
    let refused = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], gate.port()))).await;
    assert_eq!(
        refused.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionRefused),
        "{refused:?}"
    );
    let read = read_end(&mut old).await;
    assert_eq!(
        read.as_ref().map_err(std::io::Error::kind).err(),
        Some(ErrorKind::ConnectionReset),
        "{read:?}"
    );
    gate.wait_connections(0, WAIT).await;

    gate.open();
    let mut new = connect(&gate).await;
    assert_echoes(&mut new, b"after").await;
}

#[tokio::test]
async fn closing_ends_open_connections_and_new_ones_with_eof() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    let mut old = connect(&gate).await;
    assert_echoes(&mut old, b"before").await;

    gate.close();
    assert_eq!(read_end(&mut old).await.unwrap(), 0, "EOF");
    let mut new = connect(&gate).await;
    assert_eq!(read_end(&mut new).await.unwrap(), 0, "EOF");
    let stats = gate.wait_connections(0, WAIT).await;
    assert_eq!(stats.accepted, 2, "{stats:?}");

    gate.open();
    let mut again = connect(&gate).await;
    assert_echoes(&mut again, b"after").await;
}

#[tokio::test]
async fn a_slow_drip_holds_bytes_back_until_the_gate_opens() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    let mut client = connect(&gate).await;
    gate.slow_drip(100);
    let message: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    client.write_all(&message).await.unwrap();
    // A second's worth goes through at once, then the gate pauses for a second.
    let mut got = vec![0; 1000];
    tokio::time::timeout(WAIT, client.read_exact(&mut got[..100]))
        .await
        .expect("the first drip in time")
        .unwrap();
    assert_silent(&mut client).await;
    assert_eq!(gate.stats().to_target, 100);

    // Opening cuts the pause short on the live connection.
    gate.open();
    tokio::time::timeout(WAIT, client.read_exact(&mut got[100..]))
        .await
        .expect("the rest in time")
        .unwrap();
    assert_eq!(got, message);
}

#[tokio::test]
#[should_panic(expected = "did not reach 1 open connections")]
async fn waiting_for_connections_that_never_come_fails_with_the_counts() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    gate.wait_connections(1, Duration::from_millis(50)).await;
}

#[tokio::test]
async fn reset_mid_response_lets_half_a_body_through_then_resets() {
    let echo = Echo::start().await;
    let gate = Gate::start(echo.port).await;
    let mut stream = connect(&gate).await;
    assert_echoes(&mut stream, b"before").await;

    gate.reset_mid_response();
    assert_eq!(gate.mode(), Mode::ResetMidResponse);
    // An HTTP-shaped "reply": the header and half of the 40-byte body come back, then RST.
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n";
    let body = [b'x'; 40];
    let mut message = head.to_vec();
    message.extend_from_slice(&body);
    stream.write_all(&message).await.unwrap();
    let mut got = Vec::new();
    let end = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 256];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e.kind()),
            }
        }
    })
    .await
    .expect("the cut reply ended in time");
    assert_eq!(
        got.len(),
        head.len() + 20,
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.starts_with(head));
    assert_eq!(
        end,
        Err(ErrorKind::ConnectionReset),
        "the connection ends with an RST"
    );
    assert_eq!(gate.stats().cut, 1);

    // Open again: new connections forward whole replies.
    gate.open();
    let mut again = connect(&gate).await;
    assert_echoes(&mut again, &message).await;
}

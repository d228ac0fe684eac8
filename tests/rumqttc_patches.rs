//! The patched rumqttc event loop on its own (vendor/rumqttc/PATCHES.md): what it writes to
//! the socket, poll by poll.
//!
//! The broker here is scripted, on a loopback socket the test reads itself: how many packets
//! one `poll` wrote, and whether a poll wrote anything at all, is exactly what the patches
//! change and what no real broker reports. Everything else about the patched event loop
//! (delivery, order, replay across broker restarts) is tested against a real Mosquitto in
//! tests/mqtt_client.rs.
//!
//! Each test also runs the event loop with the patch's knob at its default (upstream's
//! behaviour) and checks that the difference shows, so it cannot pass without the patch
//! doing its work.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use bytes::Bytes;
use std::io::{Read, Write};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Longest any expected step may take; it only bounds failures.
const WAIT: Duration = Duration::from_secs(30);

const CONNECT: u8 = 1;
const PUBLISH: u8 = 3;
/// CONNACK, session not present, accepted (MQTT 3.1.1).
const CONNACK_V4: [u8; 4] = [0x20, 0x02, 0x00, 0x00];
/// CONNACK, session not present, success, no properties (MQTT 5).
const CONNACK_V5: [u8; 5] = [0x20, 0x03, 0x00, 0x00, 0x00];

/// The broker's end of one connection: what the client wrote, packet by packet.
///
/// After the CONNACK it is a plain non-blocking std socket: its reads are real `recv` calls,
/// which see at once what the client flushed (tokio's `try_read` would answer from readiness
/// the runtime may not have polled yet).
struct Wire {
    stream: std::net::TcpStream,
    buffer: Vec<u8>,
}

impl Wire {
    /// Accepts the client's connection and answers its CONNECT.
    async fn accept(listener: &TcpListener, connack: &[u8]) -> Wire {
        let (mut stream, _) = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("the client connects")
            .expect("accept");
        let mut buffer = Vec::new();
        let connect = loop {
            if let Some(packet) = split_packet(&mut buffer) {
                break packet;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("CONNECT from the client")
                .expect("read from the client");
            assert!(n > 0, "the client closed the connection");
            buffer.extend_from_slice(&chunk[..n]);
        };
        assert_eq!(connect.0, CONNECT, "the first packet is CONNECT");
        stream.write_all(connack).await.expect("write CONNACK");
        let stream = stream.into_std().expect("a std socket");
        Wire { stream, buffer }
    }

    /// Writes to the client (a few bytes: the socket buffer takes them at once).
    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to the client");
    }

    /// Every whole packet the client has written so far, without waiting. On loopback a
    /// flushed write is in our receive buffer by the time the client's `poll` returns.
    fn packets_now(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut chunk = [0u8; 65536];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("the client closed the connection"),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("read from the client: {e}"),
            }
        }
        std::iter::from_fn(|| split_packet(&mut self.buffer)).collect()
    }

    /// How many PUBLISH packets the client has written since the last look.
    fn publishes_now(&mut self) -> usize {
        self.packets_now()
            .iter()
            .filter(|(kind, _)| *kind == PUBLISH)
            .count()
    }
}

/// Takes one whole packet off the front of `buffer`, if there is one: its type and bytes.
fn split_packet(buffer: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    let first = *buffer.first()?;
    // Remaining length: a variable byte integer of up to four bytes.
    let mut length = 0usize;
    let mut shift = 0;
    let mut at = 1;
    loop {
        let byte = *buffer.get(at)?;
        length |= usize::from(byte & 0x7f) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let end = at + length;
    if buffer.len() < end {
        return None;
    }
    let packet: Vec<u8> = buffer.drain(..end).collect();
    Some((first >> 4, packet))
}

/// PUBACK for `pkid` (MQTT 3.1.1).
fn puback(pkid: u16) -> [u8; 4] {
    let [hi, lo] = pkid.to_be_bytes();
    [0x40, 0x02, hi, lo]
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.expect("bind")
}

/// An MQTT 3.1.1 client with no keep-alive (no pings in the way) and this in-flight window,
/// connected to a scripted broker.
async fn connect_v4(inflight: u16) -> (rumqttc::AsyncClient, rumqttc::EventLoop, Wire) {
    let listener = listener().await;
    let port = listener.local_addr().expect("local address").port();
    let mut options = rumqttc::MqttOptions::new("patched", "127.0.0.1", port);
    options
        .set_keep_alive(Duration::ZERO)
        .set_inflight(inflight);
    let (client, mut event_loop) = rumqttc::AsyncClient::new(options, 64);
    // As the bridge does (src/mqtt/engine): without it, Nagle's algorithm keeps every small
    // write after the first in the kernel until the scripted broker's ACK.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    event_loop.set_network_options(network);
    let (connected, wire) = tokio::join!(
        tokio::time::timeout(WAIT, event_loop.poll()),
        Wire::accept(&listener, &CONNACK_V4)
    );
    assert!(
        matches!(
            connected,
            Ok(Ok(rumqttc::Event::Incoming(rumqttc::Incoming::ConnAck(_))))
        ),
        "{connected:?}"
    );
    (client, event_loop, wire)
}

async fn poll(event_loop: &mut rumqttc::EventLoop) -> rumqttc::Event {
    tokio::time::timeout(WAIT, event_loop.poll())
        .await
        .expect("an event")
        .expect("no connection error")
}

fn queue_publishes(client: &rumqttc::AsyncClient, n: usize) {
    for i in 0..n {
        client
            .try_publish("t/x", rumqttc::QoS::AtLeastOnce, false, vec![i as u8])
            .expect("room in the request channel");
    }
}

// ---------------------------------------------------------------------------------------------
// Batched writes: `request_batch`
// ---------------------------------------------------------------------------------------------

/// What one poll writes with five publishes waiting, and the `Outgoing` events of the next
/// polls.
async fn five_queued_publishes(request_batch: usize) -> (Vec<usize>, Vec<u16>) {
    let (client, mut event_loop, mut wire) = connect_v4(20).await;
    event_loop.request_batch = request_batch;
    queue_publishes(&client, 5);
    let mut written = Vec::new();
    let mut outgoing = Vec::new();
    for _ in 0..5 {
        match poll(&mut event_loop).await {
            rumqttc::Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => outgoing.push(pkid),
            other => panic!("expected an outgoing publish, got {other:?}"),
        }
        written.push(wire.publishes_now());
    }
    (written, outgoing)
}

#[tokio::test]
async fn a_batch_of_queued_publishes_goes_out_in_one_poll_and_its_events_in_the_next_ones() {
    let (written, outgoing) = five_queued_publishes(64).await;
    assert_eq!(
        written,
        [5, 0, 0, 0, 0],
        "publishes on the wire after each poll, request_batch = 64"
    );
    assert_eq!(
        outgoing,
        [1, 2, 3, 4, 5],
        "one Outgoing::Publish per poll, in order"
    );

    // Upstream's behaviour (the default): one request per poll.
    let (written, outgoing) = five_queued_publishes(1).await;
    assert_eq!(
        written,
        [1, 1, 1, 1, 1],
        "publishes on the wire after each poll, request_batch = 1"
    );
    assert_eq!(outgoing, [1, 2, 3, 4, 5]);
}

/// A batch stops at the in-flight window: nothing beyond it is written.
#[tokio::test]
async fn a_batch_stops_at_a_full_window() {
    let (client, mut event_loop, mut wire) = connect_v4(3).await;
    event_loop.request_batch = 64;
    queue_publishes(&client, 5);
    poll(&mut event_loop).await;
    assert_eq!(wire.publishes_now(), 3, "the window is 3");
    for _ in 0..2 {
        poll(&mut event_loop).await; // the batch's buffered events
    }
    wire.send(&puback(1));
    let acked = poll(&mut event_loop).await;
    assert!(
        matches!(acked, rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(ref a)) if a.pkid == 1),
        "{acked:?}"
    );
    poll(&mut event_loop).await;
    assert_eq!(wire.publishes_now(), 1, "one slot freed, one more publish");
}

// ---------------------------------------------------------------------------------------------
// Holding writes for room: `write_hold`
// ---------------------------------------------------------------------------------------------

/// A window of 4, full; two more publishes waiting; the broker acknowledges one. Returns how
/// many publishes the next poll wrote, or `None` if that poll was still waiting (held) when
/// the runtime had nothing else to do.
async fn after_one_ack_of_a_full_window(write_hold: u16) -> (Option<usize>, Wire) {
    let (client, mut event_loop, mut wire) = connect_v4(4).await;
    event_loop.request_batch = 64;
    event_loop.write_hold = write_hold;
    queue_publishes(&client, 4);
    for _ in 0..4 {
        poll(&mut event_loop).await;
    }
    assert_eq!(wire.publishes_now(), 4, "the window is full");
    queue_publishes(&client, 2);
    wire.send(&puback(1));
    let acked = poll(&mut event_loop).await;
    assert!(
        matches!(acked, rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(ref a)) if a.pkid == 1),
        "{acked:?}"
    );
    // With the clock paused, the timeout fires only once the runtime has nothing left to do
    // (socket readiness is looked at first): a poll that can write does so before it.
    tokio::time::pause();
    let next = tokio::time::timeout(Duration::from_secs(60), event_loop.poll()).await;
    tokio::time::resume();
    let written = match next {
        Ok(event) => {
            event.expect("no connection error");
            Some(wire.publishes_now())
        }
        Err(_) => None,
    };
    if written.is_none() {
        // The rest: the second ack frees half the window, and both waiting publishes go out
        // together in the poll after it.
        assert_eq!(wire.publishes_now(), 0, "nothing written while held");
        wire.send(&puback(2));
        let acked = poll(&mut event_loop).await;
        assert!(
            matches!(acked, rumqttc::Event::Incoming(rumqttc::Incoming::PubAck(ref a)) if a.pkid == 2),
            "{acked:?}"
        );
        poll(&mut event_loop).await;
        assert_eq!(
            wire.publishes_now(),
            2,
            "both held publishes in the poll after room was made"
        );
    }
    (written, wire)
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn with_write_hold_new_publishes_wait_until_half_the_window_is_free_then_go_together() {
    let (written, _wire) = after_one_ack_of_a_full_window(2).await;
    assert_eq!(
        written, None,
        "with write_hold = 2 and one slot free, the poll must hold the waiting publishes"
    );

    // Upstream's behaviour (the default): a publish goes out as soon as one slot is free.
    let (written, _wire) = after_one_ack_of_a_full_window(0).await;
    assert_eq!(
        written,
        Some(1),
        "with write_hold = 0, one publish per freed slot"
    );
}

// ---------------------------------------------------------------------------------------------
// Publishing a prebuilt packet: `v5::AsyncClient::try_send_publish`
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_prebuilt_v5_publish_goes_out_as_built() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Publish;

    let listener = listener().await;
    let port = listener.local_addr().expect("local address").port();
    let mut options = rumqttc::v5::MqttOptions::new("patched-v5", "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(60));
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    let (client, mut event_loop) = rumqttc::v5::AsyncClient::new(options, 64);
    let (connected, mut wire) = tokio::join!(
        tokio::time::timeout(WAIT, event_loop.poll()),
        Wire::accept(&listener, &CONNACK_V5)
    );
    assert!(matches!(connected, Ok(Ok(_))), "{connected:?}");

    let payload = Bytes::from_static(b"prebuilt payload");
    let mut publish = Publish::new("pre/built", QoS::AtMostOnce, payload.clone(), None);
    publish.retain = true;
    client
        .try_send_publish(publish)
        .expect("room in the request channel");
    let event = tokio::time::timeout(WAIT, event_loop.poll())
        .await
        .expect("an event")
        .expect("no connection error");
    assert!(
        matches!(
            event,
            rumqttc::v5::Event::Outgoing(rumqttc::Outgoing::Publish(0))
        ),
        "{event:?}"
    );
    let packets = wire.packets_now();
    let [(kind, packet)] = &packets[..] else {
        panic!("one packet after the poll, got {packets:?}");
    };
    assert_eq!(*kind, PUBLISH);
    assert_eq!(packet[0] & 0x0f, 0x01, "QoS 0, retain set: {packet:?}");
    // Fixed header (2 bytes here), topic length, topic, properties length (0), payload.
    let mut expected = vec![0x00, 0x09];
    expected.extend_from_slice(b"pre/built");
    expected.push(0x00);
    expected.extend_from_slice(&payload);
    assert_eq!(&packet[2..], &expected[..], "the packet as built");
}

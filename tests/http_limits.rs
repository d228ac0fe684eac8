//! The HTTP listener's bounds (issue 14, item 4) on the real daemon: a request header that
//! never completes is cut off, connections beyond `http.max_connections` are closed at once
//! and do not keep `/livez` from answering once the idle ones are gone, hundreds of idle
//! connections hold no more than `http.max_connections` file descriptors, running out of file
//! descriptors pauses the listener instead of spinning on failed accepts, and the image's
//! `BAYEUX_MQTT_BRIDGE__HTTP__LISTEN` turns the listener on for a config without `[http]`.
//!
//! No peer is needed: `/livez` answers whether or not the Bayeux server and the broker are
//! reachable, so the config points both at loopback ports where nothing listens (the bridge
//! keeps retrying them in the background). Synchronisation is by the daemon's JSON log lines;
//! the only sleep-like waits are the bounded observation window that proves the listener does
//! not spin, and short polling intervals where an HTTP endpoint is the thing under test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::bridge::{BridgeProcess, ConfigFile, HTTP_STARTED, LogLine, free_port};

/// Longest any single expected event may take. Generous: it only bounds failures.
const WAIT: Duration = Duration::from_secs(20);
/// The daemon's header read timeout (`http::HEADER_READ_TIMEOUT`).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two requests when polling an HTTP endpoint under test.
const POLL: Duration = Duration::from_millis(50);

/// A config whose peers are loopback ports nobody listens on, with the listener on
/// `http_port` and `http_extra` lines added to `[http]`.
fn toml(http_port: u16, http_extra: &str) -> String {
    let bayeux_port = free_port();
    let mqtt_port = free_port();
    format!(
        "[bayeux]\n\
         url = \"http://127.0.0.1:{bayeux_port}/cometd\"\n\
         backoff_increment_ms = 500\n\
         backoff_max_ms = 2000\n\
         \n\
         [mqtt]\n\
         host = \"127.0.0.1\"\n\
         port = {mqtt_port}\n\
         client_id = \"http-limits\"\n\
         backoff_increment_ms = 500\n\
         backoff_max_ms = 2000\n\
         \n\
         [http]\n\
         listen = \"127.0.0.1:{http_port}\"\n\
         {http_extra}\n\
         \n\
         [[route]]\n\
         bayeux = \"/h/*\"\n\
         mqtt = \"h/+\"\n\
         direction = \"bayeux_to_mqtt\"\n"
    )
}

/// Runs the daemon with an HTTP listener on a free port and waits until it listens.
async fn spawn_bridge(http_extra: &str) -> (ConfigFile, BridgeProcess, u16) {
    BridgeProcess::spawn_with_http(|port| toml(port, http_extra), &[], WAIT).await
}

/// One `GET path` on a new connection: the status and body, or `None` if the connection
/// was closed (or failed) without an answer.
async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    if !matches!(read, Ok(Ok(_))) && response.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Polls `path` until it answers 200; its body. Fails after [`WAIT`].
async fn get_ok(port: u16, path: &str, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((200, body)) = get(port, path).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {path} does not answer 200 after {WAIT:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The value of the sample `name` (without labels) in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in /metrics:\n{metrics}"))
}

/// Reads until the server closes `stream`: how long that took, and what it sent. Fails if
/// it stays open for `within`.
async fn wait_closed(stream: &mut TcpStream, within: Duration, what: &str) -> (Duration, Vec<u8>) {
    let start = Instant::now();
    let mut received = Vec::new();
    let read = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "{what}: still open after {within:?}");
    (start.elapsed(), received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_header_that_never_completes_is_cut_off_after_the_header_timeout() {
    let (_config, mut bridge, port) = spawn_bridge("").await;
    let mut partial = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .await
        .unwrap();
    // A connection that sends nothing at all is cut off the same way.
    let mut silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (after, received) = wait_closed(
        &mut partial,
        HEADER_READ_TIMEOUT + WAIT,
        "a connection with half a header",
    )
    .await;
    assert!(
        after >= HEADER_READ_TIMEOUT - Duration::from_secs(1),
        "closed after {after:?}, before the header timeout"
    );
    assert!(
        received.is_empty() || String::from_utf8_lossy(&received).starts_with("HTTP/1.1 408"),
        "unexpected answer to half a header: {:?}",
        String::from_utf8_lossy(&received)
    );
    wait_closed(&mut silent, WAIT, "a connection that sends nothing").await;
    let metrics = get_ok(port, "/metrics", "after the timeouts").await;
    assert_eq!(
        sample(&metrics, "bridge_http_connections_timed_out_total"),
        2.0
    );
    let _ = bridge.terminate(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once_and_livez_answers_once_idle_ones_close()
 {
    const MAX: usize = 4;
    let (_config, mut bridge, port) = spawn_bridge(&format!("max_connections = {MAX}")).await;
    let mut idle = Vec::new();
    for _ in 0..MAX {
        idle.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // Each extra connection is closed at once, without an answer, well before any timeout.
    for n in 0..3 {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let _ = extra
            .write_all(b"GET /livez HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            .await;
        let (after, received) = wait_closed(
            &mut extra,
            Duration::from_secs(5),
            "a connection beyond the cap",
        )
        .await;
        assert!(
            received.is_empty(),
            "extra connection {n} was answered after {after:?}: {:?}",
            String::from_utf8_lossy(&received)
        );
    }
    bridge
        .wait_for_log(
            "HTTP connection refused: http.max_connections are open.",
            WAIT,
        )
        .await;
    drop(idle);
    get_ok(port, "/livez", "once the idle connections closed").await;
    let metrics = get_ok(port, "/metrics", "once the idle connections closed").await;
    // The three above, and any poll of /livez that came before the bridge saw the idle
    // connections close.
    let refused = sample(&metrics, "bridge_http_connections_refused_total");
    assert!(refused >= 3.0, "{refused} connections counted as refused");
    // The idle connections are gone (the /metrics request itself is open, and perhaps the
    // /livez one is still being closed).
    let open = sample(&metrics, "bridge_http_connections_open");
    assert!((1.0..=2.0).contains(&open), "{open} connections open");
    let _ = bridge.terminate(WAIT).await;
}

/// The number of file descriptors `pid` has open.
fn open_fds(pid: u32) -> u64 {
    let dir = format!("/proc/{pid}/fd");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {dir}: {e}"))
        .count() as u64
}

/// Sets the soft and hard `RLIMIT_NOFILE` of the running process `pid` to `limit`.
fn limit_fds(pid: u32, limit: u64) {
    let rlimit = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    let pid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
    // SAFETY: prlimit reads `rlimit`, a valid local, and writes nothing (old limit is null).
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
    assert_eq!(
        rc,
        0,
        "prlimit on the bridge failed: {}",
        std::io::Error::last_os_error()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_pauses_the_listener_instead_of_spinning() {
    // A cap above the descriptor limit, so that accept itself fails (EMFILE).
    let (_config, mut bridge, port) = spawn_bridge("max_connections = 4096").await;
    get_ok(port, "/livez", "before the limit").await;
    let headroom = 8;
    limit_fds(bridge.pid(), open_fds(bridge.pid()) + headroom);
    let mut clients = Vec::new();
    for _ in 0..headroom * 4 {
        clients.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let failed = |l: &LogLine| {
        l.message()
            .is_some_and(|m| m.starts_with("HTTP accept failed"))
    };
    bridge.wait_for_line("a failed accept", WAIT, failed).await;
    // Observation window: a listener that retries at once logs thousands of failures here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logged = bridge.lines().iter().filter(|l| failed(l)).count();
    assert!(
        logged <= 2,
        "{logged} lines about failed accepts in about 2 s; the listener spins"
    );
    drop(clients);
    get_ok(port, "/livez", "once the clients closed").await;
    let metrics = get_ok(port, "/metrics", "once the clients closed").await;
    let errors = sample(&metrics, "bridge_http_accept_errors_total");
    // Pauses of 100 ms doubling to 1 s: a few tens at most in the seconds the test took.
    assert!(
        (1.0..=40.0).contains(&errors),
        "{errors} failed accepts counted; expected a paused retry"
    );
    let _ = bridge.terminate(WAIT).await;
}

#[test]
fn max_connections_out_of_range_is_refused_with_the_key() {
    for bad in ["0", "4097"] {
        let config = ConfigFile::new(&toml(free_port(), &format!("max_connections = {bad}")));
        let checked = common::bridge::check(config.path());
        assert_eq!(checked.status.code(), Some(2), "check accepted {bad}");
        assert!(
            checked.stderr.contains("http.max_connections")
                && checked
                    .stderr
                    .contains(&format!("from 1 to 4096, found {bad}")),
            "{}",
            checked.stderr
        );
    }
}

/// The value the image's Dockerfile gives `name` with `ENV name=value`.
fn dockerfile_env(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    text.lines()
        .find_map(|l| {
            l.strip_prefix("ENV ")?
                .trim()
                .strip_prefix(name)?
                .strip_prefix('=')
        })
        .unwrap_or_else(|| panic!("{path} has no `ENV {name}=…`"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_images_listener_variable_serves_health_with_a_config_without_http() {
    const VAR: &str = "BAYEUX_MQTT_BRIDGE__HTTP__LISTEN";
    // The image's address on a port of the test's (the image's own port may be taken here).
    let image = dockerfile_env(VAR);
    let (host, image_port) = image.rsplit_once(':').expect("address:port");
    assert_eq!(
        host, "127.0.0.1",
        "the image listens beyond loopback by default"
    );
    assert_eq!(image_port, "9464", "the image's HEALTHCHECK asks port 9464");
    let toml = toml(free_port(), "");
    let without_http = toml
        .split_once("[http]")
        .map(|(a, b)| {
            format!(
                "{a}{}",
                &b[b.find("[[route]]").expect("routes after [http]")..]
            )
        })
        .expect("an [http] section to drop");
    let config = ConfigFile::new(&without_http);
    let port = free_port();
    let address = format!("{host}:{port}");
    let mut bridge = BridgeProcess::spawn(&config, &[(VAR, &address)]);
    let started = bridge.wait_for_log(HTTP_STARTED, WAIT).await;
    assert_eq!(started.str_field("addr"), Some(address.as_str()));
    let output = tokio::process::Command::new(common::bridge::BINARY)
        .args(["health", "--url", &format!("http://{address}/livez")])
        .output()
        .await
        .expect("run health");
    assert!(
        output.status.success(),
        "health failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = bridge.terminate(WAIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_connections_hold_at_most_max_connections_file_descriptors() {
    const OPENED: usize = 300;
    const MAX: usize = 64; // the default
    let (_config, mut bridge, port) = spawn_bridge("").await;
    get_ok(port, "/livez", "before the flood").await;
    let before = open_fds(bridge.pid());
    let mut streams = Vec::new();
    for _ in 0..OPENED {
        streams.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The served ones stay open until the header timeout (10 s); the others are closed at
    // once, so within 5 s exactly OPENED - MAX see the end of the stream.
    let reads = streams.into_iter().map(|mut stream| {
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .is_ok();
            (closed, stream)
        })
    });
    let mut closed = 0;
    let mut open = Vec::new();
    for read in reads.collect::<Vec<_>>() {
        let (was_closed, stream) = read.await.unwrap();
        if was_closed {
            closed += 1;
        } else {
            open.push(stream);
        }
    }
    assert_eq!(closed, OPENED - MAX, "connections closed at once");
    let during = open_fds(bridge.pid());
    eprintln!("bridge file descriptors: {before} before, {during} with {OPENED} idle connections");
    assert!(
        during <= before + MAX as u64 + 8,
        "{during} descriptors open with {OPENED} idle connections ({before} before)"
    );
    drop(open);
    get_ok(port, "/livez", "once the idle connections closed").await;
    let _ = bridge.terminate(WAIT).await;
}

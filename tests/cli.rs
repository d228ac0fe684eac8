//! End-to-end tests of the `sub` and `pub` command line tools: the real binary, run as a
//! child process, against real Bayeux servers (CometD and Faye, see `common::peers`) and
//! against the scripted fake server (faults real servers cannot be made to produce).
//!
//! Synchronisation is by events only: `sub`'s stdout is read line by line, its stderr is
//! watched for log lines (with `RUST_LOG=info` the library logs `Subscribed.` when the
//! server confirms a subscription), and the fake server's request log is awaited. Every
//! wait has a deadline and fails with the child's captured stdout and stderr.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::fake_server::{FakeServer, Reply, Request, bayeux};
use common::peers::{PeerKind, PeerServer};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

const BIN: &str = env!("CARGO_BIN_EXE_bayeux-mqtt-bridge");

/// Longest any single wait (a stdout line, a log line, an exit) may take before the test
/// fails. Generous: it only bounds failures, passing tests never wait for it.
const WAIT: Duration = Duration::from_secs(20);

/// The bearer token of the header test; it must never show up in the logs.
const SECRET: &str = "t0ken";

// ---------------------------------------------------------------------------------------
// Running the binary
// ---------------------------------------------------------------------------------------

/// Everything the child wrote to stderr so far, and whether stderr reached EOF.
#[derive(Debug, Default)]
struct StderrLog {
    text: String,
    closed: bool,
}

/// A running `bayeux-mqtt-bridge` child. Killed when dropped.
struct Cli {
    child: Child,
    what: String,
    started: Instant,
    stdout: mpsc::UnboundedReceiver<String>,
    stdout_seen: Vec<String>,
    stderr: watch::Receiver<StderrLog>,
}

/// How a [`Cli`] ended.
#[derive(Debug)]
struct Finished {
    what: String,
    status: ExitStatus,
    /// Every stdout line, including those already read with [`Cli::next_line`].
    stdout: Vec<String>,
    stderr: String,
    elapsed: Duration,
}

impl Finished {
    fn context(&self) -> String {
        format!(
            "command: {}\nexit: {:?} after {:?}\nstdout ({} lines):\n{}\nstderr:\n{}",
            self.what,
            self.status,
            self.elapsed,
            self.stdout.len(),
            self.stdout.join("\n"),
            self.stderr
        )
    }

    #[track_caller]
    fn assert_success(&self) {
        assert_eq!(
            self.status.code(),
            Some(0),
            "expected exit code 0\n{}",
            self.context()
        );
    }

    #[track_caller]
    fn assert_failure(&self) {
        assert!(
            matches!(self.status.code(), Some(code) if code != 0),
            "expected a non-zero exit code\n{}",
            self.context()
        );
        assert!(
            self.stderr.contains("error"),
            "expected an error message on stderr\n{}",
            self.context()
        );
    }
}

impl Cli {
    /// Starts the binary with `args`. `RUST_LOG` is not inherited (only `env` sets it) and
    /// colours are off, so stderr is plain text.
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Cli {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let env_text: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let what = format!("{} bayeux-mqtt-bridge {:?}", env_text.join(" "), args);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));

        let stdout = child.stdout.take().expect("stdout is piped");
        let (stdout_tx, stdout_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if stdout_tx.send(line).is_err() {
                    break;
                }
            }
        });

        let stderr = child.stderr.take().expect("stderr is piped");
        let (stderr_tx, stderr_rx) = watch::channel(StderrLog::default());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                stderr_tx.send_modify(|log| {
                    log.text.push_str(&line);
                    log.text.push('\n');
                });
            }
            stderr_tx.send_modify(|log| log.closed = true);
        });

        Cli {
            child,
            what,
            started: Instant::now(),
            stdout: stdout_rx,
            stdout_seen: Vec::new(),
            stderr: stderr_rx,
        }
    }

    fn stderr_text(&self) -> String {
        self.stderr.borrow().text.clone()
    }

    fn context(&self) -> String {
        format!(
            "command: {}\nstdout so far ({} lines):\n{}\nstderr so far:\n{}",
            self.what,
            self.stdout_seen.len(),
            self.stdout_seen.join("\n"),
            self.stderr_text()
        )
    }

    /// The next stdout line; `None` at EOF.
    async fn next_line(&mut self) -> Option<String> {
        match tokio::time::timeout(WAIT, self.stdout.recv()).await {
            Ok(Some(line)) => {
                self.stdout_seen.push(line.clone());
                Some(line)
            }
            Ok(None) => None,
            Err(_) => panic!("no stdout line within {WAIT:?}\n{}", self.context()),
        }
    }

    /// Waits until `done` holds for stderr. Fails at the deadline, or at once if stderr
    /// reached EOF (the process exited) without `done` holding.
    async fn wait_stderr(&mut self, what: &str, done: impl Fn(&StderrLog) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (satisfied, closed) = {
                let log = self.stderr.borrow_and_update();
                (done(&log), log.closed)
            };
            if satisfied {
                return;
            }
            if closed {
                panic!(
                    "stderr closed (the process exited) before {what}\n{}",
                    self.context()
                );
            }
            // An error means the reader task ended; it marks `closed` first, so the next
            // round reports it.
            if tokio::time::timeout_at(deadline, self.stderr.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {WAIT:?} waiting for {what}\n{}",
                    self.context()
                );
            }
        }
    }

    /// Waits until the library has logged `Subscribed.` at least `n` times (needs
    /// `RUST_LOG=info` or `-v`).
    async fn wait_subscribed(&mut self, n: usize) {
        let what = format!("{n} `Subscribed.` log line(s)");
        self.wait_stderr(&what, |log| subscribed_count(&log.text) >= n)
            .await;
    }

    /// Sends SIGTERM.
    async fn terminate(&self) {
        let pid = self.child.id().expect("the child is still running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .expect("run `kill`");
        assert!(status.success(), "kill -TERM {pid} failed: {status}");
    }

    /// Waits for the exit, then for EOF on stdout and stderr.
    async fn finish(mut self) -> Finished {
        let status = match tokio::time::timeout(WAIT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for the child failed: {e}\n{}", self.context()),
            Err(_) => panic!("did not exit within {WAIT:?}\n{}", self.context()),
        };
        let elapsed = self.started.elapsed();
        while self.next_line().await.is_some() {}
        self.wait_stderr("EOF on stderr", |log| log.closed).await;
        Finished {
            what: self.what.clone(),
            status,
            stdout: std::mem::take(&mut self.stdout_seen),
            stderr: self.stderr_text(),
            elapsed,
        }
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        // Fails only if the child has already exited (and been reaped).
        let _ = self.child.start_kill();
    }
}

/// Runs the binary to completion.
async fn run(args: &[&str], env: &[(&str, &str)]) -> Finished {
    Cli::spawn(args, env).finish().await
}

/// `pub --url URL CHANNEL JSON`.
async fn publish(url: &str, channel: &str, data: &Value) -> Finished {
    run(&["pub", "--url", url, channel, &data.to_string()], &[]).await
}

/// Starts `sub --url URL [extra] CHANNEL` with `RUST_LOG=info` and waits until the server
/// has confirmed the subscription.
async fn subscribed(url: &str, extra: &[&str], channel: &str) -> Cli {
    let mut args = vec!["sub", "--url", url];
    args.extend_from_slice(extra);
    args.push(channel);
    let mut sub = Cli::spawn(&args, &[("RUST_LOG", "info")]);
    sub.wait_subscribed(1).await;
    sub
}

fn subscribed_count(stderr: &str) -> usize {
    stderr
        .lines()
        .filter(|line| line.contains("Subscribed."))
        .count()
}

/// Parses a stdout line of `sub` and checks it is a JSON object with this channel and data.
#[track_caller]
fn assert_delivery(line: &str, channel: &str, data: &Value) {
    let message: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
    assert!(message.is_object(), "not a JSON object: {line}");
    assert_eq!(message["channel"], json!(channel), "line: {line}");
    assert_eq!(&message["data"], data, "line: {line}");
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

// ---------------------------------------------------------------------------------------
// A scripted Bayeux server
// ---------------------------------------------------------------------------------------

/// How long the fake server holds a `/meta/connect` that has nothing to deliver, as a real
/// server holds it for `advice.timeout` (here kept short).
const HOLD: Duration = Duration::from_millis(500);

/// What the fake server does with `/meta/connect`.
#[derive(Clone)]
enum Script {
    /// Hold every connect for [`HOLD`], deliver nothing.
    Idle,
    /// Once a subscribe has been seen, deliver this message (once) with the next connect.
    Deliver { channel: &'static str, data: Value },
    /// Refuse every connect with `403::Forbidden` and `advice.reconnect: none`.
    Forbidden,
}

/// A handler answering handshake, connect, subscribe, disconnect (and anything else with a
/// generic success) according to `script`.
fn scripted(script: Script) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
    let subscribed = AtomicBool::new(false);
    let delivered = AtomicBool::new(false);
    move |req| {
        let mut replies = Vec::new();
        let mut hold = false;
        for message in &req.messages {
            match message.get("channel").and_then(Value::as_str).unwrap_or("") {
                "/meta/handshake" => replies.push(bayeux::handshake_ok(message, "fake-client")),
                "/meta/subscribe" => {
                    subscribed.store(true, Ordering::SeqCst);
                    replies.push(bayeux::subscribe_ok(message));
                }
                "/meta/connect" => match &script {
                    Script::Forbidden => replies.push(bayeux::failure(
                        message,
                        "403::Forbidden",
                        Some(json!({"reconnect": "none"})),
                    )),
                    Script::Deliver { channel, data }
                        if subscribed.load(Ordering::SeqCst)
                            && !delivered.swap(true, Ordering::SeqCst) =>
                    {
                        replies.push(bayeux::connect_ok(message, None));
                        replies.push(bayeux::delivery(channel, data.clone()));
                    }
                    _ => {
                        replies.push(bayeux::connect_ok(message, None));
                        hold = true;
                    }
                },
                _ => replies.push(bayeux::ok(message)),
            }
        }
        let reply = Reply::Json(Value::Array(replies));
        if hold {
            Reply::Delayed(HOLD, Box::new(reply))
        } else {
            reply
        }
    }
}

fn has_channel(requests: &[Request], channel: &str) -> bool {
    requests.iter().any(|r| r.channels().contains(&channel))
}

// ---------------------------------------------------------------------------------------
// 1. sub prints deliveries (wildcards `*` and `**`), pub succeeds
// ---------------------------------------------------------------------------------------

async fn sub_prints_deliveries_for_wildcards(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let url = server.url();

    let (mut one, mut deep) = tokio::join!(
        subscribed(&url, &["--count", "2"], "/demo/*"),
        subscribed(&url, &["--count", "1"], "/demo/**"),
    );

    // Two segments below /demo: only `/demo/**` matches.
    let deep_data = json!({"depth": 2, "path": ["x", "y"]});
    let published = publish(&url, "/demo/x/y", &deep_data).await;
    published.assert_success();
    assert!(published.stdout.is_empty(), "{}", published.context());
    let line = deep.next_line().await.expect("a line for /demo/x/y");
    assert_delivery(&line, "/demo/x/y", &deep_data);
    let deep = deep.finish().await;
    deep.assert_success();
    assert_eq!(deep.stdout.len(), 1, "{}", deep.context());

    // One segment below /demo: `/demo/*` matches (`/demo/**` has exited by now).
    let first = json!({"n": 1, "text": "hello"});
    let second = json!({"n": 2, "nested": {"ok": true, "list": [1, 2.5, null]}});
    for data in [&first, &second] {
        let published = publish(&url, "/demo/a", data).await;
        published.assert_success();
        assert!(published.stdout.is_empty(), "{}", published.context());
        let line = one.next_line().await.expect("a line for /demo/a");
        assert_delivery(&line, "/demo/a", data);
    }
    let one = one.finish().await;
    one.assert_success();
    // Exactly the two /demo/a messages: not /demo/x/y, nothing else.
    assert_eq!(one.stdout.len(), 2, "{}", one.context());
}

#[tokio::test]
async fn sub_prints_deliveries_for_wildcards_cometd() {
    sub_prints_deliveries_for_wildcards(PeerKind::CometD).await;
}

#[tokio::test]
async fn sub_prints_deliveries_for_wildcards_faye() {
    sub_prints_deliveries_for_wildcards(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------
// 2. pub refuses wildcard and /meta/ channels
// ---------------------------------------------------------------------------------------

async fn pub_rejects_wildcard_and_meta_channels(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let url = server.url();
    let data = json!({"x": 1});
    let (one, deep, meta) = tokio::join!(
        publish(&url, "/demo/*", &data),
        publish(&url, "/demo/**", &data),
        publish(&url, "/meta/foo", &data),
    );
    for (channel, out) in [("/demo/*", one), ("/demo/**", deep), ("/meta/foo", meta)] {
        out.assert_failure();
        assert!(
            out.stderr.contains(channel),
            "stderr should name {channel}\n{}",
            out.context()
        );
        assert!(out.stdout.is_empty(), "{}", out.context());
    }
}

#[tokio::test]
async fn pub_rejects_wildcard_and_meta_channels_cometd() {
    pub_rejects_wildcard_and_meta_channels(PeerKind::CometD).await;
}

#[tokio::test]
async fn pub_rejects_wildcard_and_meta_channels_faye() {
    pub_rejects_wildcard_and_meta_channels(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------
// 3. a server refusal reaches stderr
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pub_reports_the_server_refusal_faye() {
    let server = PeerServer::start_async(PeerKind::Faye).await;
    let out = publish(&server.url(), "/foo bar", &json!({"x": 1})).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("405:/foo bar:Invalid channel"),
        "stderr should carry Faye's error\n{}",
        out.context()
    );
    assert!(out.stdout.is_empty(), "{}", out.context());
}

/// The counterpart of the Faye test: the channel is not refused locally, CometD accepts it
/// and delivers it (a `sub` on `/**` receives it).
#[tokio::test]
async fn pub_channel_with_a_space_is_accepted_and_delivered_cometd() {
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let mut sub = subscribed(&url, &["--count", "1"], "/**").await;
    let data = json!({"x": 1});
    let out = publish(&url, "/foo bar", &data).await;
    out.assert_success();
    let line = sub.next_line().await.expect("a line for /foo bar");
    assert_delivery(&line, "/foo bar", &data);
    sub.finish().await.assert_success();
}

// ---------------------------------------------------------------------------------------
// 4. sub survives a server restart
// ---------------------------------------------------------------------------------------

async fn sub_survives_a_server_restart(kind: PeerKind) {
    let mut server = PeerServer::start_async(kind).await;
    let url = server.url();
    let mut sub = subscribed(&url, &["--count", "1"], "/demo/restart").await;

    // A fresh server on the same port: no sessions, no subscriptions.
    server.kill();
    server.restart_async().await;
    sub.wait_subscribed(2).await;

    let data = json!({"after": "restart"});
    publish(&url, "/demo/restart", &data).await.assert_success();
    let line = sub.next_line().await.expect("a line after the restart");
    assert_delivery(&line, "/demo/restart", &data);
    let sub = sub.finish().await;
    sub.assert_success();
    assert_eq!(sub.stdout.len(), 1, "{}", sub.context());
}

#[tokio::test]
async fn sub_survives_a_server_restart_cometd() {
    sub_survives_a_server_restart(PeerKind::CometD).await;
}

#[tokio::test]
async fn sub_survives_a_server_restart_faye() {
    sub_survives_a_server_restart(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------
// 5. --header reaches every request and is never logged
// ---------------------------------------------------------------------------------------

/// Runs `sub --header 'Authorization: Bearer t0ken' --count 1` against the fake server,
/// with the given verbosity flags and environment, until it printed the one message.
async fn header_is_sent_and_not_logged(flags: &[&str], env: &[(&str, &str)]) {
    let data = json!({"hello": "world"});
    let server = FakeServer::start(scripted(Script::Deliver {
        channel: "/demo/x",
        data: data.clone(),
    }))
    .await;
    let url = server.url();
    let header = format!("Authorization: Bearer {SECRET}");
    let mut args = vec!["sub", "--url", &url, "--header", &header, "--count", "1"];
    args.extend_from_slice(flags);
    args.push("/demo/x");
    let mut sub = Cli::spawn(&args, env);
    let line = sub.next_line().await.expect("the scripted delivery");
    assert_delivery(&line, "/demo/x", &data);
    let out = sub.finish().await;
    out.assert_success();

    let requests = server
        .wait_for("/meta/disconnect", WAIT, |r| {
            has_channel(r, "/meta/disconnect")
        })
        .await;
    for channel in ["/meta/handshake", "/meta/subscribe", "/meta/connect"] {
        assert!(has_channel(&requests, channel), "no {channel} request");
    }
    let expected = format!("Bearer {SECRET}");
    for request in &requests {
        assert_eq!(
            request.header("authorization"),
            Some(expected.as_str()),
            "request without the header: {request:?}"
        );
    }

    // The logs were really verbose (trace level), and still do not show the secret.
    assert!(
        out.stderr.contains("TRACE") && out.stderr.contains("Received."),
        "expected trace-level logs\n{}",
        out.context()
    );
    assert!(
        !out.stderr.contains(SECRET),
        "the header value leaked into the logs\n{}",
        out.context()
    );
}

#[tokio::test]
async fn header_reaches_every_request_and_is_not_logged_with_vv() {
    header_is_sent_and_not_logged(&["-vv"], &[]).await;
}

#[tokio::test]
async fn header_reaches_every_request_and_is_not_logged_with_rust_log_trace() {
    header_is_sent_and_not_logged(&["-vv"], &[("RUST_LOG", "trace")]).await;
}

// ---------------------------------------------------------------------------------------
// 6. -v logs go to stderr only
// ---------------------------------------------------------------------------------------

async fn verbose_logs_stay_off_stdout(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let url = server.url();
    let mut sub = Cli::spawn(
        &["sub", "--url", &url, "--count", "1", "-v", "/demo/verbose"],
        &[],
    );
    sub.wait_subscribed(1).await;
    let data = json!({"verbose": true});
    publish(&url, "/demo/verbose", &data).await.assert_success();
    let out = sub.finish().await;
    out.assert_success();
    assert!(
        out.stderr.contains("DEBUG"),
        "-v should log at debug level\n{}",
        out.context()
    );
    assert_eq!(out.stdout.len(), 1, "{}", out.context());
    for line in &out.stdout {
        assert_delivery(line, "/demo/verbose", &data);
    }
}

#[tokio::test]
async fn verbose_logs_stay_off_stdout_cometd() {
    verbose_logs_stay_off_stdout(PeerKind::CometD).await;
}

#[tokio::test]
async fn verbose_logs_stay_off_stdout_faye() {
    verbose_logs_stay_off_stdout(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------
// 7. pub: invalid JSON, unreachable server
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn pub_rejects_invalid_json() {
    let url = format!("http://127.0.0.1:{}/cometd", closed_port());
    let out = run(&["pub", "--url", &url, "/demo/a", "{not json"], &[]).await;
    out.assert_failure();
    assert!(
        out.stderr.contains("JSON"),
        "stderr should say the argument is not JSON\n{}",
        out.context()
    );
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[track_caller]
fn assert_gave_up_in_time(out: &Finished) {
    out.assert_failure();
    assert!(
        out.elapsed < Duration::from_secs(8),
        "pub --timeout 2 took too long\n{}",
        out.context()
    );
    assert!(out.stdout.is_empty(), "{}", out.context());
}

#[tokio::test]
async fn pub_gives_up_on_a_refused_connection() {
    let url = format!("http://127.0.0.1:{}/cometd", closed_port());
    let out = run(
        &["pub", "--url", &url, "--timeout", "2", "/demo/a", "{}"],
        &[],
    )
    .await;
    assert_gave_up_in_time(&out);
}

#[tokio::test]
async fn pub_gives_up_on_a_server_that_never_answers() {
    let server = FakeServer::start(|_| Reply::Stall).await;
    let url = server.url();
    let out = run(
        &["pub", "--url", &url, "--timeout", "2", "/demo/a", "{}"],
        &[],
    )
    .await;
    assert_gave_up_in_time(&out);
}

// ---------------------------------------------------------------------------------------
// 8. sub stops on `reconnect: none`
// ---------------------------------------------------------------------------------------

/// Repeated: whether the reason reaches stderr can depend on which of "the subscription
/// ended" and "the client stopped, because ..." `sub` notices first, so one run would catch
/// a lost reason only some of the time. A run takes a few milliseconds.
#[tokio::test]
async fn sub_exits_non_zero_when_the_server_says_reconnect_none() {
    let server = FakeServer::start(scripted(Script::Forbidden)).await;
    says_why_every_time(&server, &["sub", "/demo/x"]).await;
}

/// A server that refuses every message with `403::Forbidden` and `reconnect: none`, so the
/// client stops right after its handshake.
async fn refusing_server() -> FakeServer {
    FakeServer::start(|req: &Request| {
        bayeux::reply_all(req, |m| {
            bayeux::failure(m, "403::Forbidden", Some(json!({"reconnect": "none"})))
        })
    })
    .await
}

/// `args` (with `--url` of a [`refusing_server`] first) fails every time with the server's
/// reason on stderr, whether the client stopped before or after the tool handed it its
/// work. Repeated for the same kind of race as above.
async fn always_says_why(args: &[&str]) {
    says_why_every_time(&refusing_server().await, args).await;
}

/// `args` (with `--url` of `server` first), run 20 times, fails every time with nothing on
/// stdout and the server's reason (`403::Forbidden`) on stderr.
async fn says_why_every_time(server: &FakeServer, args: &[&str]) {
    const RUNS: usize = 20;
    let url = server.url();
    let mut lost = Vec::new();
    for _ in 0..RUNS {
        let mut argv = vec![args[0], "--url", &url];
        argv.extend_from_slice(&args[1..]);
        let out = run(&argv, &[]).await;
        out.assert_failure();
        assert!(out.stdout.is_empty(), "{}", out.context());
        if !out.stderr.contains("403::Forbidden") {
            lost.push(out);
        }
    }
    assert!(
        lost.is_empty(),
        "in {} of {RUNS} runs stderr did not carry the server's reason (403::Forbidden); \
         the first such run:\n{}",
        lost.len(),
        lost[0].context()
    );
}

#[tokio::test]
async fn pub_exits_non_zero_with_the_reason_when_the_handshake_is_refused_for_good() {
    always_says_why(&["pub", "/demo/x", "{}"]).await;
}

#[tokio::test]
async fn sub_exits_non_zero_with_the_reason_when_the_handshake_is_refused_for_good() {
    always_says_why(&["sub", "/demo/x"]).await;
}

// ---------------------------------------------------------------------------------------
// 9. SIGTERM: disconnect, exit 0
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn sub_disconnects_and_exits_0_on_sigterm() {
    let server = FakeServer::start(scripted(Script::Idle)).await;
    let sub = subscribed(&server.url(), &[], "/demo/x").await;
    sub.terminate().await;
    let out = sub.finish().await;
    out.assert_success();
    assert!(out.stdout.is_empty(), "{}", out.context());
    server
        .wait_for("/meta/disconnect", WAIT, |r| {
            has_channel(r, "/meta/disconnect")
        })
        .await;
}

/// Against a real server the signal arrives while a `/meta/connect` is held (CometD holds it
/// for 30 s, Faye for 60 s): `sub` must not wait for it.
async fn sub_exits_0_on_sigterm_during_a_long_poll(kind: PeerKind) {
    let server = PeerServer::start_async(kind).await;
    let mut sub = subscribed(&server.url(), &[], "/demo/term").await;
    sub.wait_stderr("`Connected.`", |log| log.text.contains("Connected."))
        .await;
    let signalled = Instant::now();
    sub.terminate().await;
    let out = sub.finish().await;
    out.assert_success();
    assert!(out.stdout.is_empty(), "{}", out.context());
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "sub took {:?} to exit after SIGTERM\n{}",
        signalled.elapsed(),
        out.context()
    );
}

#[tokio::test]
async fn sub_exits_0_on_sigterm_during_a_long_poll_cometd() {
    sub_exits_0_on_sigterm_during_a_long_poll(PeerKind::CometD).await;
}

#[tokio::test]
async fn sub_exits_0_on_sigterm_during_a_long_poll_faye() {
    sub_exits_0_on_sigterm_during_a_long_poll(PeerKind::Faye).await;
}

// ---------------------------------------------------------------------------------------
// 8. --header-file keeps tokens out of argv
// ---------------------------------------------------------------------------------------

/// Writes `content` to a header file with the given Unix mode.
fn header_file(dir: &common::bridge::TempDir, mode: u32, content: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.file("headers.txt", content);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .expect("chmod the header file");
    path.to_str().expect("UTF-8 temp path").to_owned()
}

/// The Salesforce fake refuses every request without its token: `sub` with the token only in
/// a `--header-file` is served, and the token appears nowhere in its logs.
#[tokio::test]
async fn sub_sends_the_token_of_a_header_file_and_never_logs_it() {
    const TOKEN: &str = "file-t0ken-4b1d";
    let fake = common::salesforce::SalesforceFake::start_async(&["--token", TOKEN]).await;
    let dir = common::bridge::TempDir::new("cli-header-file");
    let path = header_file(
        &dir,
        0o600,
        &format!("# Salesforce session\n\nAuthorization: Bearer {TOKEN}\n"),
    );
    let mut sub = Cli::spawn(
        &[
            "sub",
            "--url",
            &fake.url,
            "--header-file",
            &path,
            "--count",
            "1",
            "-vv",
            "/event/Foo__e",
        ],
        &[],
    );
    sub.wait_subscribed(1).await;
    fake.publish("/event/Foo__e", 1).await;
    let line = sub.next_line().await.expect("the published event");
    let message: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(message["channel"], json!("/event/Foo__e"), "{line}");
    let out = sub.finish().await;
    out.assert_success();
    assert!(
        !out.stderr.contains(TOKEN),
        "the token leaked into the logs\n{}",
        out.context()
    );
    assert!(
        !out.stderr.contains("readable by its group"),
        "a 0600 file drew the loose-mode warning\n{}",
        out.context()
    );

    // Without the file the same server refuses the session: the header did the work.
    let refused = run(
        &[
            "pub",
            "--url",
            &fake.url,
            "--timeout",
            "10",
            "/event/Foo__e",
            "{}",
        ],
        &[],
    )
    .await;
    refused.assert_failure();
    assert!(
        refused.stderr.contains("Handshake denied"),
        "{}",
        refused.context()
    );
}

/// `--header` and `--header-file` add up: the fake server sees both on every request.
#[tokio::test]
async fn header_file_headers_are_merged_with_header_flags() {
    let server = FakeServer::start(scripted(Script::Idle)).await;
    let url = server.url();
    let dir = common::bridge::TempDir::new("cli-header-merge");
    let path = header_file(&dir, 0o600, "X-From-File: f1\n# X-Commented: no\n");
    let out = run(
        &[
            "pub",
            "--url",
            &url,
            "--header",
            "X-From-Flag: a1",
            "--header-file",
            &path,
            "/demo/x",
            "{}",
        ],
        &[],
    )
    .await;
    out.assert_success();
    let requests = server
        .wait_for("the publish", WAIT, |r| has_channel(r, "/demo/x"))
        .await;
    for request in &requests {
        assert_eq!(request.header("x-from-flag"), Some("a1"), "{request:?}");
        assert_eq!(request.header("x-from-file"), Some("f1"), "{request:?}");
        assert_eq!(request.header("x-commented"), None, "{request:?}");
    }
}

/// A bad line is refused before anything is sent, naming the file and the line number but
/// not quoting it; a file others may read draws a warning.
#[tokio::test]
async fn a_bad_header_file_line_is_named_without_its_value_and_a_loose_file_is_warned_about() {
    let server = FakeServer::start(scripted(Script::Idle)).await;
    let url = server.url();
    let dir = common::bridge::TempDir::new("cli-header-bad");
    let path = header_file(&dir, 0o644, "X-Ok: 1\n\nBearer s3cret-value\n");
    let out = run(
        &[
            "pub",
            "--url",
            &url,
            "--header-file",
            &path,
            "/demo/x",
            "{}",
        ],
        &[],
    )
    .await;
    out.assert_failure();
    assert!(
        out.stderr
            .contains(&format!("{path} line 3: expected 'Name: value'")),
        "{}",
        out.context()
    );
    assert!(!out.stderr.contains("s3cret"), "{}", out.context());
    assert!(
        out.stderr
            .contains("(mode 0644) can be read or written by its group and all users"),
        "no warning about a 0644 header file\n{}",
        out.context()
    );
    assert!(server.requests().is_empty(), "a request went out");
}

// ---------------------------------------------------------------------------------------
// --transport
// ---------------------------------------------------------------------------------------

/// `sub --transport websocket` and `pub --transport callback-polling` on Faye: each uses the
/// transport asked for (the log names it) and the message goes through.
#[tokio::test]
async fn sub_and_pub_use_the_transport_asked_for_faye() {
    let server = PeerServer::start_async(PeerKind::Faye).await;
    let url = server.url();
    let mut sub = subscribed(&url, &["--count", "1", "--transport", "websocket"], "/t/x").await;
    sub.wait_stderr("the session's transport in the log", |log| {
        log.text.contains("Session transport.") && log.text.contains("transport=websocket")
    })
    .await;
    let data = json!({"over": "jsonp"});
    let published = run(
        &[
            "pub",
            "--url",
            &url,
            "--transport",
            "callback-polling",
            "-v",
            "/t/x",
            &data.to_string(),
        ],
        &[],
    )
    .await;
    published.assert_success();
    assert!(
        published.stderr.contains("transport=callback-polling"),
        "{}",
        published.context()
    );
    let line = sub.next_line().await.expect("a line for /t/x");
    assert_delivery(&line, "/t/x", &data);
    sub.finish().await.assert_success();
}

#[tokio::test]
async fn an_unknown_transport_is_refused_naming_the_choices() {
    let out = run(
        &[
            "pub",
            "--url",
            "http://127.0.0.1:9/x",
            "--transport",
            "ws",
            "/a",
            "1",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", out.context());
    assert!(
        out.stderr
            .contains("expected one of auto, websocket, long-polling, callback-polling"),
        "{}",
        out.context()
    );
}

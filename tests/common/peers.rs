//! Real Bayeux servers for integration tests.
//!
//! Each [`PeerServer`] is a child process running `tests/peers/server.js`
//! under Node: either cometd-nodejs-server (long-polling, mounted at
//! `/cometd`) or a Faye `NodeAdapter` (mounted at `/bayeux`), listening on
//! 127.0.0.1. The Node dependencies are installed by `scripts/test`
//! (`npm ci --prefix tests/peers`).
//!
//! The server prints one JSON line (`{"port":N,"path":"/cometd"}`) on stdout
//! once it listens; starting waits for that line (not for a fixed time). The
//! child is started with `--exit-on-stdin-eof` and its stdin is held open by
//! the [`PeerServer`], so a test process that dies without running `Drop`
//! does not leave servers behind.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long a server may take to print its port before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`PeerServer::restart`] keeps retrying while the port is still in use.
const RESTART_BIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two bind attempts on a port that is still in use. Nothing
/// announces that a port became free, so this one wait is a retry interval.
const RESTART_BIND_RETRY: Duration = Duration::from_millis(100);
/// Exit code of server.js when its port is already in use.
const EXIT_ADDR_IN_USE: i32 = 3;

/// Which Bayeux server implementation to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerKind {
    /// cometd-nodejs-server, long-polling transport, path `/cometd`.
    CometD,
    /// Faye `NodeAdapter`, path `/bayeux`.
    Faye,
}

impl PeerKind {
    /// Both kinds, for tests that run against every server.
    pub const ALL: [PeerKind; 2] = [PeerKind::CometD, PeerKind::Faye];

    /// The `--kind` argument of server.js.
    pub fn arg(self) -> &'static str {
        match self {
            PeerKind::CometD => "cometd",
            PeerKind::Faye => "faye",
        }
    }

    /// The HTTP path the Bayeux endpoint is mounted at.
    pub fn path(self) -> &'static str {
        match self {
            PeerKind::CometD => "/cometd",
            PeerKind::Faye => "/bayeux",
        }
    }
}

/// A running (or killed, and restartable) Bayeux server child process.
pub struct PeerServer {
    kind: PeerKind,
    long_poll_timeout_ms: Option<u64>,
    /// More server.js arguments (e.g. `--ack`), kept for restarts.
    extra_args: Vec<String>,
    port: u16,
    path: String,
    running: Option<Running>,
}

/// The live child process and what is attached to it.
struct Running {
    child: Child,
    /// Held so that the child's stdin stays open; dropping it makes the
    /// child exit (it runs with `--exit-on-stdin-eof`).
    _stdin: ChildStdin,
    stderr: Arc<Mutex<String>>,
    /// Told whenever a line was added to `stderr`.
    stderr_grew: Arc<tokio::sync::Notify>,
}

/// Why one launch attempt did not produce a listening server.
enum LaunchError {
    /// The fixed port was still in use (server.js exited with code 3).
    AddrInUse { stderr: String },
    /// Anything else; the message is ready to be shown to the user.
    Other(String),
}

impl PeerServer {
    /// Starts the server on a free loopback port and waits until it prints
    /// its port (at most 30 s; after that the test fails with the child's
    /// stderr). Uses the server's default long-poll timeout (CometD: 30 s,
    /// Faye: 60 s).
    pub fn start(kind: PeerKind) -> PeerServer {
        Self::start_inner(kind, None, Vec::new())
    }

    /// Like [`PeerServer::start`], with the server's long-poll timeout (how
    /// long a `/meta/connect` is held) set to `long_poll_timeout_ms`.
    pub fn start_with_timeout(kind: PeerKind, long_poll_timeout_ms: u64) -> PeerServer {
        Self::start_inner(kind, Some(long_poll_timeout_ms), Vec::new())
    }

    /// [`PeerServer::start`] on tokio's blocking pool, for async tests.
    pub async fn start_async(kind: PeerKind) -> PeerServer {
        tokio::task::spawn_blocking(move || PeerServer::start(kind))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// [`PeerServer::start_with_timeout`] on tokio's blocking pool.
    pub async fn start_with_timeout_async(kind: PeerKind, long_poll_timeout_ms: u64) -> PeerServer {
        tokio::task::spawn_blocking(move || {
            PeerServer::start_with_timeout(kind, long_poll_timeout_ms)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// Like [`PeerServer::start_async`], with more server.js arguments, e.g. `&["--ack"]`
    /// (cometd only: installs the server's acknowledgement extension) or
    /// `&["--ack", "--timeout", "1000"]`. They are kept for [`PeerServer::restart`].
    pub async fn start_with_args_async(kind: PeerKind, extra_args: &[&str]) -> PeerServer {
        let extra_args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || PeerServer::start_inner(kind, None, extra_args))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    fn start_inner(
        kind: PeerKind,
        long_poll_timeout_ms: Option<u64>,
        extra_args: Vec<String>,
    ) -> PeerServer {
        let (running, port, path) = match launch(kind, long_poll_timeout_ms, 0, &extra_args) {
            Ok(launched) => launched,
            Err(LaunchError::AddrInUse { stderr }) => {
                panic!("{kind:?} test server could not bind a free port; its stderr:\n{stderr}")
            }
            Err(LaunchError::Other(message)) => panic!("{message}"),
        };
        PeerServer {
            kind,
            long_poll_timeout_ms,
            extra_args,
            port,
            path,
            running: Some(running),
        }
    }

    pub fn kind(&self) -> PeerKind {
        self.kind
    }

    /// The loopback port the server listens on (kept across kill/restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The Bayeux endpoint, e.g. `http://127.0.0.1:PORT/cometd`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.path)
    }

    /// Whether the child process is (as far as we know) still running.
    pub fn is_running(&mut self) -> bool {
        match self.running.as_mut() {
            Some(running) => matches!(running.child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Everything the server wrote to stderr so far (for diagnostics).
    pub fn stderr_output(&self) -> String {
        self.running
            .as_ref()
            .map(|running| lock(&running.stderr).clone())
            .unwrap_or_default()
    }

    /// Waits, at most `timeout`, until the server has written a line to stderr for which
    /// `matches` holds, and returns it; `None` if none came (or the server is not running).
    /// The server announces there, for instance, a session that expired or ended
    /// (tests/peers/server.js).
    pub async fn wait_for_stderr_line(
        &self,
        timeout: Duration,
        matches: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let running = self.running.as_ref()?;
        let (stderr, grew) = (&running.stderr, &running.stderr_grew);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Before looking: a line added after the look still wakes the wait below.
            let grown = grew.notified();
            if let Some(line) = lock(stderr).lines().find(|l| matches(l)) {
                return Some(line.to_owned());
            }
            tokio::time::timeout_at(deadline, grown).await.ok()?;
        }
    }

    /// Opens a session that never polls: one `/meta/handshake`, no `/meta/connect`. Returns
    /// its id. CometD expires it once its `maxInterval` has passed after the handshake and
    /// says so on stderr (`session expired: <id>`): a clock of the server's own for "longer
    /// than a session lives without polling".
    pub async fn idle_session(&self) -> String {
        let handshake = serde_json::json!([{
            "channel": "/meta/handshake",
            "version": "1.0",
            "supportedConnectionTypes": ["long-polling"],
        }]);
        let reply: serde_json::Value = reqwest::Client::new()
            .post(self.url())
            .json(&handshake)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("handshake of an idle session with {}: {e}", self.url()))
            .json()
            .await
            .unwrap_or_else(|e| panic!("handshake reply of {}: {e}", self.url()));
        match reply[0]["clientId"].as_str() {
            Some(id) if reply[0]["successful"] == true => id.to_owned(),
            _ => panic!(
                "{} refused the idle session's handshake: {reply}",
                self.url()
            ),
        }
    }

    /// SIGKILLs the child and waits for it to exit. Does nothing if it is
    /// not running. New connections are refused; an HTTP client's pooled
    /// keep-alive connection to the dead process fails its next request
    /// with a send error (not a connect error), unless the client noticed
    /// the close first.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            // kill() fails only if the child already exited; wait() reaps it
            // either way so no zombie is left.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Kills the server if it runs, then starts a fresh one (no sessions,
    /// no subscriptions) on the same port, with the same options. Retries
    /// for up to 10 s while the port is still in use.
    pub fn restart(&mut self) {
        self.kill();
        let running = relaunch_on_port(
            self.kind,
            self.long_poll_timeout_ms,
            self.port,
            &self.extra_args,
        );
        self.running = Some(running);
    }

    /// [`PeerServer::restart`] with the waiting done on tokio's blocking pool.
    pub async fn restart_async(&mut self) {
        self.kill();
        let (kind, timeout, port) = (self.kind, self.long_poll_timeout_ms, self.port);
        let args = self.extra_args.clone();
        let running =
            tokio::task::spawn_blocking(move || relaunch_on_port(kind, timeout, port, &args))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        self.running = Some(running);
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl std::fmt::Debug for PeerServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerServer")
            .field("kind", &self.kind)
            .field("url", &self.url())
            .field("running", &self.running.is_some())
            .finish()
    }
}

fn relaunch_on_port(
    kind: PeerKind,
    long_poll_timeout_ms: Option<u64>,
    port: u16,
    extra_args: &[String],
) -> Running {
    let deadline = Instant::now() + RESTART_BIND_TIMEOUT;
    loop {
        match launch(kind, long_poll_timeout_ms, port, extra_args) {
            Ok((running, actual, _)) => {
                assert_eq!(
                    actual, port,
                    "{kind:?} test server restarted on port {actual} instead of {port}"
                );
                return running;
            }
            Err(LaunchError::AddrInUse { stderr }) => {
                if Instant::now() >= deadline {
                    panic!(
                        "{kind:?} test server could not bind 127.0.0.1:{port} again within \
                         {RESTART_BIND_TIMEOUT:?}; last stderr:\n{stderr}"
                    );
                }
                thread::sleep(RESTART_BIND_RETRY);
            }
            Err(LaunchError::Other(message)) => panic!("{message}"),
        }
    }
}

fn lock(buffer: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn peers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("peers")
}

const INSTALL_HINT: &str = "The integration tests run real Bayeux servers under Node.js. \
     Run `scripts/test` (it installs everything), or by hand: \
     `apt-get install nodejs npm && npm ci --prefix tests/peers`.";

/// Panics with installation instructions unless the Node packages are there.
fn check_installed(dir: &Path) {
    for package in ["cometd-nodejs-server", "faye"] {
        let package_json = dir.join("node_modules").join(package).join("package.json");
        if !package_json.is_file() {
            panic!(
                "{} is missing: the Node test servers are not installed. {INSTALL_HINT}",
                package_json.display()
            );
        }
    }
}

/// Starts server.js once and waits for its "listening" line.
fn launch(
    kind: PeerKind,
    long_poll_timeout_ms: Option<u64>,
    port: u16,
    extra_args: &[String],
) -> Result<(Running, u16, String), LaunchError> {
    let dir = peers_dir();
    check_installed(&dir);

    let mut command = Command::new("node");
    command
        .current_dir(&dir)
        .arg("server.js")
        .args(["--kind", kind.arg()])
        .args(["--port", &port.to_string()])
        .arg("--exit-on-stdin-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(ms) = long_poll_timeout_ms {
        command.args(["--timeout", &ms.to_string()]);
    }
    command.args(extra_args);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`node` was not found on PATH. {INSTALL_HINT}")
        }
        Err(e) => panic!("could not start `node server.js` in {}: {e}", dir.display()),
    };
    let stdin = child.stdin.take().expect("child stdin is piped");
    let stdout = child.stdout.take().expect("child stdout is piped");
    let stderr_pipe = child.stderr.take().expect("child stderr is piped");

    // Collect stderr continuously (also keeps the pipe from filling up) and
    // echo it, so a failing test's captured output shows the server's log.
    let stderr = Arc::new(Mutex::new(String::new()));
    let stderr_grew = Arc::new(tokio::sync::Notify::new());
    let stderr_thread = {
        let stderr = Arc::clone(&stderr);
        let grew = Arc::clone(&stderr_grew);
        let label = format!("{} pid {}", kind.arg(), child.id());
        thread::spawn(move || {
            let mut reader = BufReader::new(stderr_pipe);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        eprint!("[peer {label}] {line}");
                        lock(&stderr).push_str(&line);
                        grew.notify_waiters();
                    }
                }
            }
        })
    };

    // Read the first stdout line on a thread so that waiting for it can have
    // a deadline; keep draining stdout after that.
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<String>>();
    thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let result = reader.read_line(&mut first).map(|_| first);
        let failed = !matches!(&result, Ok(line) if !line.is_empty());
        let _ = ready_tx.send(result);
        if !failed {
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            if !rest.trim().is_empty() {
                eprintln!("[peer] unexpected stdout from server.js: {rest}");
            }
        }
    });

    let line = match ready_rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) if !line.is_empty() => line,
        other => {
            let what = match other {
                Ok(Ok(_)) => "exited without printing its port".to_owned(),
                Ok(Err(e)) => format!("stdout could not be read: {e}"),
                Err(_) => format!("did not print its port within {START_TIMEOUT:?}"),
            };
            let (status, stderr_text) = reap(child, stderr_thread, &stderr);
            if status.and_then(|s| s.code()) == Some(EXIT_ADDR_IN_USE) {
                return Err(LaunchError::AddrInUse {
                    stderr: stderr_text,
                });
            }
            return Err(LaunchError::Other(format!(
                "{kind:?} test server (node {}/server.js --port {port}) {what} ({}); \
                 stderr:\n{stderr_text}",
                dir.display(),
                status.map_or_else(|| "exit status unknown".to_owned(), |s| s.to_string()),
            )));
        }
    };

    let parsed: Option<(u16, String)> = serde_json::from_str::<serde_json::Value>(line.trim())
        .ok()
        .and_then(|value| {
            let port = u16::try_from(value.get("port")?.as_u64()?).ok()?;
            let path = value.get("path")?.as_str()?.to_owned();
            Some((port, path))
        });
    let Some((actual_port, path)) = parsed else {
        let (_, stderr_text) = reap(child, stderr_thread, &stderr);
        return Err(LaunchError::Other(format!(
            "{kind:?} test server printed {line:?} instead of {{\"port\":N,\"path\":\"...\"}}; \
             stderr:\n{stderr_text}"
        )));
    };

    Ok((
        Running {
            child,
            _stdin: stdin,
            stderr,
            stderr_grew,
        },
        actual_port,
        path,
    ))
}

/// Kills a child that failed to start, reaps it and returns its exit status
/// and everything it wrote to stderr.
fn reap(
    mut child: Child,
    stderr_thread: thread::JoinHandle<()>,
    stderr: &Mutex<String>,
) -> (Option<ExitStatus>, String) {
    let _ = child.kill();
    let status = child.wait().ok();
    // The child has exited, so its stderr reaches EOF and the thread ends.
    let _ = stderr_thread.join();
    let text = lock(stderr).clone();
    (status, text)
}

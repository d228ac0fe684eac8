//! The bridge daemon (`bayeux-mqtt-bridge --config FILE`) as a child process, for end-to-end
//! tests.
//!
//! [`ConfigFile`] writes a TOML file into its own temporary directory. [`BridgeProcess::spawn`]
//! runs the real binary on it with `NO_COLOR=1`, `RUST_LOG=info` (unless the caller sets
//! another) and `BAYEUX_MQTT_BRIDGE__LOG__FORMAT=json`, so every log line is one JSON object
//! the tests can read field by field. A thread reads stderr line by line into a
//! [`tokio::sync::watch`] channel, so tests wait for log lines (`Bridge ready.`, `Totals.`,
//! …) as events, with a deadline, instead of sleeping. Every line is also echoed to the test's
//! captured output, so a failing test shows what the bridge said.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

/// The daemon under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_bayeux-mqtt-bridge");

/// Prefix of the daemon's environment overrides; inherited ones are removed.
const ENV_PREFIX: &str = "BAYEUX_MQTT_BRIDGE__";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The daemon's log line once its HTTP listener accepts connections.
pub const HTTP_STARTED: &str = "HTTP listener started (/metrics, /livez, /readyz).";

/// How many free ports [`BridgeProcess::spawn_with_http`] tries.
const HTTP_PORT_TRIES: usize = 5;

/// A free loopback port: free when asked; another process may take it before it is used
/// (which [`BridgeProcess::spawn_with_http`] retries).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// A scratch directory, removed when dropped. World-writable, so that a Mosquitto started as
/// root (which then runs as user `mosquitto`) can write files such as a pid file there.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates a new, empty directory under the system's temporary directory.
    pub fn new(label: &str) -> TempDir {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!(
            "{label}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `content` to `name` in the directory and returns its path.
    pub fn file(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path.join(name);
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A bridge configuration file in its own temporary directory (removed when dropped).
#[derive(Debug)]
pub struct ConfigFile {
    dir: TempDir,
    path: PathBuf,
}

impl ConfigFile {
    /// Writes `toml` to `bridge.toml` in a new temporary directory.
    pub fn new(toml: &str) -> ConfigFile {
        let dir = TempDir::new("bridge-e2e");
        let path = dir.file("bridge.toml", toml.as_bytes());
        ConfigFile { dir, path }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// One line the bridge wrote to stderr, parsed if it is a JSON log record.
#[derive(Debug, Clone)]
pub struct LogLine {
    /// The line as written.
    pub raw: String,
    /// The JSON record, if the line is one.
    pub json: Option<Value>,
}

impl LogLine {
    fn new(raw: String) -> LogLine {
        let json = serde_json::from_str::<Value>(&raw)
            .ok()
            .filter(Value::is_object);
        LogLine { raw, json }
    }

    /// The event's message (`fields.message`), e.g. `Bridge ready.`.
    pub fn message(&self) -> Option<&str> {
        self.field("message").and_then(Value::as_str)
    }

    /// One field of the event (`fields.<name>`).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.json.as_ref()?.get("fields")?.get(name)
    }

    /// A string field.
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.field(name).and_then(Value::as_str)
    }

    /// An integer field.
    pub fn u64_field(&self, name: &str) -> Option<u64> {
        self.field(name).and_then(Value::as_u64)
    }

    /// Whether this is the event `message`.
    pub fn is(&self, message: &str) -> bool {
        self.message() == Some(message)
    }

    /// When the bridge logged the event, by its own clock: the record's RFC 3339 UTC
    /// `timestamp` (`2026-12-07T10:10:10.123456Z`) as time since the Unix epoch. Spans
    /// between two of these are what the bridge took, free of the test's own scheduling.
    pub fn timestamp(&self) -> Option<Duration> {
        let text = self.json.as_ref()?.get("timestamp")?.as_str()?;
        let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
        let mut ymd = date.splitn(3, '-').map(str::parse::<i64>);
        let (y, m, d) = (ymd.next()?.ok()?, ymd.next()?.ok()?, ymd.next()?.ok()?);
        let mut hms = time.splitn(3, ':');
        let (h, min) = (
            hms.next()?.parse::<u64>().ok()?,
            hms.next()?.parse::<u64>().ok()?,
        );
        let seconds = hms.next()?.parse::<f64>().ok()?;
        // Days from the civil date (Howard Hinnant's days_from_civil).
        let y = if m <= 2 { y - 1 } else { y };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
        Some(
            Duration::from_secs(days * 86_400 + h * 3_600 + min * 60)
                + Duration::from_secs_f64(seconds),
        )
    }

    /// Whether the event was logged inside a span named `name` (at any depth).
    pub fn in_span(&self, name: &str) -> bool {
        self.json
            .as_ref()
            .and_then(|j| j.get("spans"))
            .and_then(Value::as_array)
            .is_some_and(|spans| spans.iter().any(|s| s["name"] == name))
    }
}

/// What the stderr reader collected so far.
#[derive(Debug, Default)]
pub struct LogState {
    /// Every line, in order.
    pub lines: Vec<LogLine>,
    /// Whether stderr reached EOF (the process exited).
    pub closed: bool,
}

/// One direction's `Totals.` line, logged when the bridge exits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages taken from the source side.
    pub received: u64,
    /// Messages the destination acknowledged.
    pub forwarded: u64,
    /// Own messages that came back and were not forwarded.
    pub echoes: u64,
    /// Drops by reason.
    pub dropped: BTreeMap<String, u64>,
}

/// A running `bayeux-mqtt-bridge --config FILE`. Killed (SIGKILL) when dropped.
pub struct BridgeProcess {
    child: Child,
    pid: u32,
    log: watch::Receiver<LogState>,
    reader: Option<thread::JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

impl BridgeProcess {
    /// Runs the daemon on `config` with `env` added to (and overriding) the defaults
    /// `NO_COLOR=1`, `RUST_LOG=info` and JSON logs. Inherited `RUST_LOG` and
    /// `BAYEUX_MQTT_BRIDGE__*` variables are removed first.
    pub fn spawn(config: &ConfigFile, env: &[(&str, &str)]) -> BridgeProcess {
        Self::spawn_with(config, env, |_| {})
    }

    /// [`BridgeProcess::spawn`], with `adjust` applied to the command last (for example to
    /// start it under another scheduling policy).
    pub fn spawn_with(
        config: &ConfigFile,
        env: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> BridgeProcess {
        let mut command = Command::new(BINARY);
        command
            .arg("--config")
            .arg(config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text == "RUST_LOG" || name_text.to_ascii_uppercase().starts_with(ENV_PREFIX) {
                command.env_remove(&name);
            }
        }
        command
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env("BAYEUX_MQTT_BRIDGE__LOG__FORMAT", "json");
        for (name, value) in env {
            command.env(name, value);
        }
        adjust(&mut command);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}"));
        let pid = child.id();
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, log) = watch::channel(LogState::default());
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[bridge {pid}] {line}");
                tx.send_modify(|state| state.lines.push(LogLine::new(line)));
            }
            tx.send_modify(|state| state.closed = true);
        });
        BridgeProcess {
            child,
            pid,
            log,
            reader: Some(reader),
            exit: None,
        }
    }

    /// Runs the daemon on the config `toml_for(port)` writes for an HTTP listener on `port`, a
    /// free loopback port, with `env`, and waits (at most `wait`) until it listens; tries
    /// another port if the bridge could not bind it (another process took it in between).
    /// Returns the config, the bridge and the port.
    pub async fn spawn_with_http(
        mut toml_for: impl FnMut(u16) -> String,
        env: &[(&str, &str)],
        wait: Duration,
    ) -> (ConfigFile, BridgeProcess, u16) {
        let bind_failed = |l: &LogLine| {
            l.is("Bridge failed.")
                && l.str_field("error")
                    .is_some_and(|e| e.contains("HTTP listener"))
        };
        for _ in 0..HTTP_PORT_TRIES {
            let port = free_port();
            let config = ConfigFile::new(&toml_for(port));
            let bridge = BridgeProcess::spawn(&config, env);
            bridge
                .wait_until("the HTTP listener to start", wait, |lines| {
                    lines.iter().any(|l| l.is(HTTP_STARTED) || bind_failed(l))
                })
                .await;
            if bridge.lines().iter().any(|l| l.is(HTTP_STARTED)) {
                return (config, bridge, port);
            }
            eprintln!("HTTP port {port} was taken; trying another");
        }
        panic!("the bridge could not bind an HTTP port in {HTTP_PORT_TRIES} attempts");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<LogLine> {
        self.log.borrow().lines.clone()
    }

    /// How many events `message` were logged so far.
    pub fn count(&self, message: &str) -> usize {
        self.log
            .borrow()
            .lines
            .iter()
            .filter(|l| l.is(message))
            .count()
    }

    /// How many events `message` were logged so far outside any span named `span`.
    pub fn count_outside(&self, message: &str, span: &str) -> usize {
        self.log
            .borrow()
            .lines
            .iter()
            .filter(|l| l.is(message) && !l.in_span(span))
            .count()
    }

    /// The time the bridge's own log puts between the first event `from` and the first event
    /// `to` after it (e.g. from `Shutdown requested; draining.` to the `Totals.` it logs when
    /// the drain is over). Panics, with the log's end, if either is missing.
    pub fn logged_between(&self, from: &str, to: &str) -> Duration {
        let lines = self.lines();
        let stamp = |message: &str, skip: usize| {
            lines
                .iter()
                .enumerate()
                .skip(skip)
                .find(|(_, l)| l.is(message))
                .and_then(|(i, l)| Some((i, l.timestamp()?)))
                .unwrap_or_else(|| {
                    panic!(
                        "no timestamped \"{message}\" in the log; it ends:\n{}",
                        self.tail(30)
                    )
                })
        };
        let (start, began) = stamp(from, 0);
        let (_, ended) = stamp(to, start + 1);
        ended.saturating_sub(began)
    }

    /// The last `n` lines, for failure messages.
    pub fn tail(&self, n: usize) -> String {
        let state = self.log.borrow();
        let skip = state.lines.len().saturating_sub(n);
        state.lines[skip..]
            .iter()
            .map(|l| l.raw.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until `done` holds for the lines so far; fails after `timeout`, or at once when
    /// the process exited without it holding, with the log's tail.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&[LogLine]) -> bool,
    ) {
        let mut rx = self.log.clone();
        let mut satisfied = false;
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|state| {
                satisfied = done(&state.lines);
                satisfied || state.closed
            }),
        )
        .await;
        match waited {
            Ok(Ok(_)) if satisfied => {}
            Ok(_) => panic!(
                "waiting for {what}: the bridge (pid {}) exited first; its log ends:\n{}",
                self.pid,
                self.tail(60)
            ),
            Err(_) => panic!(
                "waiting for {what}: timed out after {timeout:?}; the bridge's log ends:\n{}",
                self.tail(60)
            ),
        }
    }

    /// Waits for the `n`-th (from 1) event `message` and returns it.
    pub async fn wait_for_nth(&self, message: &str, n: usize, timeout: Duration) -> LogLine {
        self.wait_until(&format!("log event {message:?} #{n}"), timeout, |lines| {
            lines.iter().filter(|l| l.is(message)).count() >= n
        })
        .await;
        self.lines()
            .into_iter()
            .filter(|l| l.is(message))
            .nth(n - 1)
            .expect("the event was seen")
    }

    /// Waits for the first event `message` and returns it.
    pub async fn wait_for_log(&self, message: &str, timeout: Duration) -> LogLine {
        self.wait_for_nth(message, 1, timeout).await
    }

    /// Waits for the first line matching `pred` and returns it.
    pub async fn wait_for_line(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&LogLine) -> bool,
    ) -> LogLine {
        self.wait_until(what, timeout, |lines| lines.iter().any(&pred))
            .await;
        self.lines()
            .into_iter()
            .find(|l| pred(l))
            .expect("the line was seen")
    }

    /// Sends a signal by name (`TERM`, `STOP`, `CONT`, …) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill -{name}: {e}"));
        assert!(
            status.success(),
            "kill -{name} {} failed: {status}",
            self.pid
        );
    }

    /// Waits for the process to exit (its stderr closing) and reaps it.
    pub async fn wait_exit(&mut self, what: &str, timeout: Duration) -> ExitStatus {
        if let Some(status) = self.exit {
            return status;
        }
        let mut rx = self.log.clone();
        // An error means the reader thread is gone, which it only is after EOF.
        if tokio::time::timeout(timeout, rx.wait_for(|state| state.closed))
            .await
            .is_err()
        {
            panic!(
                "waiting for {what}: the bridge (pid {}) still runs after {timeout:?}; its log \
                 ends:\n{}",
                self.pid,
                self.tail(60)
            );
        }
        // Stderr is closed: the process has exited or is exiting, so this returns at once.
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("cannot reap the bridge: {e}"));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.exit = Some(status);
        status
    }

    /// Sends SIGTERM and waits (up to `timeout`) until the process exited; returns its exit
    /// status and the time from the signal to the exit.
    pub async fn terminate(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal("TERM");
        let status = self.wait_exit("exit after SIGTERM", timeout).await;
        (status, start.elapsed())
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait_exit("exit after SIGKILL", Duration::from_secs(10))
            .await
    }

    /// The `Totals.` of `direction` (`bayeux_to_mqtt` or `mqtt_to_bayeux`), logged at exit.
    pub fn totals(&self, direction: &str) -> Totals {
        let lines = self.lines();
        let line = lines
            .iter()
            .find(|l| l.is("Totals.") && l.str_field("direction") == Some(direction))
            .unwrap_or_else(|| {
                panic!(
                    "no Totals. line for {direction}; the bridge's log ends:\n{}",
                    self.tail(40)
                )
            });
        let number = |name: &str| {
            line.u64_field(name)
                .unwrap_or_else(|| panic!("Totals. without {name}: {}", line.raw))
        };
        let dropped = line
            .str_field("dropped")
            .and_then(|text| serde_json::from_str::<BTreeMap<String, u64>>(text).ok())
            .unwrap_or_else(|| panic!("Totals. with unreadable dropped: {}", line.raw));
        Totals {
            received: number("received"),
            forwarded: number("forwarded"),
            echoes: number("echoes"),
            dropped,
        }
    }
}

impl Drop for BridgeProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// What `bayeux-mqtt-bridge check --config FILE` did.
#[derive(Debug)]
pub struct CheckOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `bayeux-mqtt-bridge check --config <path>` to completion (no inherited overrides).
pub fn check(path: &Path) -> CheckOutput {
    let mut command = Command::new(BINARY);
    command.arg("check").arg("--config").arg(path);
    for (name, _) in std::env::vars_os() {
        if name
            .to_string_lossy()
            .to_ascii_uppercase()
            .starts_with(ENV_PREFIX)
        {
            command.env_remove(&name);
        }
    }
    let output = command
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {BINARY} check: {e}"));
    CheckOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl BridgeProcess {
    /// Whether the event `message` is logged within `timeout`: like
    /// [`BridgeProcess::wait_for_log`], but answers `false` (instead of failing) when it is not
    /// logged in time or the process exits first, so the caller can fail with its own message.
    pub async fn logs_within(&self, message: &str, timeout: Duration) -> bool {
        let mut rx = self.log.clone();
        let mut seen = false;
        let _ = tokio::time::timeout(
            timeout,
            rx.wait_for(|state| {
                seen = state.lines.iter().any(|l| l.is(message));
                seen || state.closed
            }),
        )
        .await;
        seen
    }
}

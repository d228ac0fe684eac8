//! A real Mosquitto broker for integration tests.
//!
//! Each [`Mosquitto`] is a `/usr/sbin/mosquitto` child process (Debian package `mosquitto`)
//! listening on a free loopback port, configured by a generated file in its own temporary
//! directory: `listener <port> 127.0.0.1`, `allow_anonymous true`, and `persistence false`
//! unless [`Mosquitto::start_persistent`] asked for a persistence file there. It runs with
//! `-v`; starting waits for its "mosquitto version … running" log line (not for a fixed time).
//! Everything it logs is kept for [`Mosquitto::log`] and shown if it fails to start.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::bridge::free_port;

/// Where Debian installs the broker.
const BINARY: &str = "/usr/sbin/mosquitto";
/// How long the broker may take to log that it runs.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Mosquitto::restart`] keeps retrying while the port is still taken.
const REBIND_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two attempts to bind a taken port. Nothing announces that a port became
/// free, so this one wait is a retry interval.
const REBIND_RETRY: Duration = Duration::from_millis(100);

const INSTALL_HINT: &str = "The MQTT integration tests run a real Mosquitto broker. Run \
     `scripts/test` (it installs everything), or by hand: `apt-get install mosquitto`.";

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// A running (or killed, and restartable) Mosquitto broker.
pub struct Mosquitto {
    setup: Setup,
    running: Option<Running>,
}

/// The live process and the thread collecting its log.
struct Running {
    child: Child,
    reader: thread::JoinHandle<()>,
}

impl Running {
    /// Waits for the process to exit and for the reader to take its last log lines.
    fn reap(mut self) {
        let _ = self.child.wait();
        let _ = self.reader.join();
    }
}

/// What a broker is launched with; the same on every restart.
#[derive(Clone)]
struct Setup {
    port: u16,
    dir: PathBuf,
    persistence: bool,
    extra_config: String,
    log: Arc<Mutex<String>>,
}

/// Why one launch did not produce a running broker.
enum LaunchError {
    AddrInUse,
    Other(String),
}

/// What the stderr reader reports to the launcher.
enum Startup {
    Running,
    Exited,
}

impl Mosquitto {
    /// Starts a broker without persistence on a free loopback port.
    pub fn start() -> Mosquitto {
        Self::start_with(false)
    }

    /// Starts a broker that saves its state (sessions, subscriptions, queued messages) in its
    /// temporary directory when it exits gracefully ([`Mosquitto::terminate`]) and reloads it
    /// on [`Mosquitto::restart`].
    pub fn start_persistent() -> Mosquitto {
        Self::start_with(true)
    }

    /// [`Mosquitto::start`] on tokio's blocking pool.
    pub async fn start_async() -> Mosquitto {
        blocking(Mosquitto::start).await
    }

    /// [`Mosquitto::start_persistent`] on tokio's blocking pool.
    pub async fn start_persistent_async() -> Mosquitto {
        blocking(Mosquitto::start_persistent).await
    }

    /// Starts a broker with `extra_config` lines appended to the generated configuration.
    pub fn start_configured(persistence: bool, extra_config: &str) -> Mosquitto {
        Self::start_inner(persistence, extra_config.to_owned())
    }

    /// [`Mosquitto::start_configured`] on tokio's blocking pool.
    pub async fn start_configured_async(persistence: bool, extra_config: &str) -> Mosquitto {
        let extra = extra_config.to_owned();
        blocking(move || Mosquitto::start_inner(persistence, extra)).await
    }

    fn start_with(persistence: bool) -> Mosquitto {
        Self::start_inner(persistence, String::new())
    }

    fn start_inner(persistence: bool, extra_config: String) -> Mosquitto {
        check_installed();
        let dir = std::env::temp_dir().join(format!(
            "mosquitto-test-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        // Mosquitto started as root drops to user `mosquitto`, which must still be able to
        // write its persistence file here.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        let mut broker = Mosquitto {
            setup: Setup {
                port: 0,
                dir,
                persistence,
                extra_config,
                log: Arc::default(),
            },
            running: None,
        };
        for _ in 0..20 {
            broker.setup.port = free_port();
            match broker.setup.launch() {
                Ok(running) => {
                    broker.running = Some(running);
                    return broker;
                }
                Err(LaunchError::AddrInUse) => continue,
                Err(LaunchError::Other(message)) => panic!("{message}"),
            }
        }
        panic!("mosquitto found no free loopback port in 20 attempts");
    }

    /// The broker's host (always IPv4 loopback).
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The broker's port (kept across kill/restart).
    pub fn port(&self) -> u16 {
        self.setup.port
    }

    /// Whether the broker process runs.
    pub fn is_running(&mut self) -> bool {
        self.running
            .as_mut()
            .is_some_and(|running| matches!(running.child.try_wait(), Ok(None)))
    }

    /// Everything the broker logged so far (all runs); complete up to the last
    /// [`Mosquitto::kill`] or [`Mosquitto::terminate`].
    pub fn log(&self) -> String {
        lock(&self.setup.log).clone()
    }

    /// SIGKILLs the broker and reaps it: connections drop without a word and nothing is
    /// saved. Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            // kill() fails only if the child already exited; reaping works either way.
            let _ = running.child.kill();
            running.reap();
        }
    }

    /// SIGTERMs the broker and waits until it exited; it closes every connection and, with
    /// persistence, saves its state first. Does nothing if it is not running.
    pub fn terminate(&mut self) {
        if let Some(mut running) = self.running.take() {
            let sent = Command::new("kill")
                .args(["-TERM", &running.child.id().to_string()])
                .status()
                .is_ok_and(|status| status.success());
            if !sent {
                let _ = running.child.kill();
            }
            running.reap();
        }
    }

    /// Kills the broker if it runs and starts it again on the same port with the same
    /// configuration (and, with persistence, the state it saved). Retries for up to 10 s while
    /// the port is still taken.
    pub fn restart(&mut self) {
        self.kill();
        self.running = Some(self.setup.relaunch());
    }

    /// [`Mosquitto::restart`] with the waiting done on tokio's blocking pool.
    pub async fn restart_async(&mut self) {
        self.kill();
        let setup = self.setup.clone();
        self.running = Some(blocking(move || setup.relaunch()).await);
    }
}

impl Setup {
    fn config_path(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    fn write_config(&self) {
        let mut config = format!("listener {} 127.0.0.1\nallow_anonymous true\n", self.port);
        if self.persistence {
            config.push_str(&format!(
                "persistence true\npersistence_location {}/\npersistence_file mosquitto.db\n",
                self.dir.display()
            ));
        } else {
            config.push_str("persistence false\n");
        }
        config.push_str(&self.extra_config);
        config.push('\n');
        std::fs::write(self.config_path(), config)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", self.config_path().display()));
    }

    /// Launches on the same port, retrying while it is still taken.
    fn relaunch(&self) -> Running {
        let deadline = Instant::now() + REBIND_TIMEOUT;
        loop {
            match self.launch() {
                Ok(running) => return running,
                Err(LaunchError::AddrInUse) if Instant::now() < deadline => {
                    thread::sleep(REBIND_RETRY)
                }
                Err(LaunchError::AddrInUse) => panic!(
                    "mosquitto could not bind 127.0.0.1:{} again within {REBIND_TIMEOUT:?}; \
                     log:\n{}",
                    self.port,
                    lock(&self.log)
                ),
                Err(LaunchError::Other(message)) => panic!("{message}"),
            }
        }
    }

    /// Starts the process once and waits for its "running" line.
    fn launch(&self) -> Result<Running, LaunchError> {
        self.write_config();
        let mut child = Command::new(BINARY)
            .arg("-c")
            .arg(self.config_path())
            .arg("-v")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BINARY}: {e}. {INSTALL_HINT}"));
        let Some(stderr) = child.stderr.take() else {
            panic!("mosquitto's stderr is not piped");
        };
        let (startup_tx, startup_rx) = mpsc::channel::<Startup>();
        let log = Arc::clone(&self.log);
        let this_run = Arc::new(Mutex::new(String::new()));
        let this_run_writer = Arc::clone(&this_run);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                for buffer in [&log, &this_run_writer] {
                    let mut buffer = lock(buffer);
                    buffer.push_str(&line);
                    buffer.push('\n');
                }
                if line.contains("mosquitto version") && line.ends_with(" running") {
                    let _ = startup_tx.send(Startup::Running);
                }
            }
            let _ = startup_tx.send(Startup::Exited);
        });
        let outcome = startup_rx.recv_timeout(START_TIMEOUT);
        if let Ok(Startup::Running) = outcome {
            return Ok(Running { child, reader });
        }
        let _ = child.kill();
        let status = child.wait();
        let _ = reader.join();
        let this_run = lock(&this_run).clone();
        if this_run.contains("Address already in use") {
            return Err(LaunchError::AddrInUse);
        }
        Err(LaunchError::Other(format!(
            "mosquitto on port {} did not start within {START_TIMEOUT:?} ({status:?}); \
             log:\n{this_run}",
            self.port
        )))
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.setup.dir);
    }
}

impl std::fmt::Debug for Mosquitto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mosquitto")
            .field("port", &self.setup.port)
            .field("persistence", &self.setup.persistence)
            .field("running", &self.running.is_some())
            .finish()
    }
}

fn check_installed() {
    if !Path::new(BINARY).is_file() {
        panic!("{BINARY} is missing. {INSTALL_HINT}");
    }
}

/// Starts a broker that admits only `user` with `password` (a `mosquitto_passwd` file,
/// `allow_anonymous false`), on tokio's blocking pool.
pub async fn start_with_password_async(user: &str, password: &str) -> Mosquitto {
    let dir = std::env::temp_dir().join(format!(
        "mosquitto-passwd-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let file = dir.join("passwd");
    let status = Command::new("mosquitto_passwd")
        .arg("-c")
        .arg("-b")
        .arg(&file)
        .args([user, password])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run mosquitto_passwd ({e}). {INSTALL_HINT}"));
    assert!(status.success(), "mosquitto_passwd failed: {status}");
    // The broker drops to user `mosquitto` and must still read the file.
    for (path, mode) in [(&dir, 0o755), (&file, 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
    }
    Mosquitto::start_configured_async(
        false,
        &format!("allow_anonymous false\npassword_file {}\n", file.display()),
    )
    .await
}

fn lock(log: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

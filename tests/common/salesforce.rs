//! The Salesforce Streaming API fake (`tests/peers/salesforce.js`) as a child process, for
//! tests of the Bayeux client against Salesforce behaviour (bearer tokens, the OAuth token
//! endpoint, replay ids, the 32 KiB request cap). It is a scripted fake, not Salesforce: no
//! Salesforce can be run offline; its header comment documents what it does.
//!
//! Starting waits for the one JSON line the fake prints once it listens. The child runs with
//! `--exit-on-stdin-eof` and its stdin is held here, so it dies with the test process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::{Value, json};

/// The connected app's id the fake accepts.
pub const CLIENT_ID: &str = "test-client-id";
/// The connected app's secret the fake accepts.
pub const CLIENT_SECRET: &str = "test-client-secret";
/// A refresh token the fake accepts.
pub const REFRESH_TOKEN: &str = "test-refresh-token";

/// A running `salesforce.js`; killed on drop.
pub struct SalesforceFake {
    child: Child,
    _stdin: ChildStdin,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// The Bayeux endpoint, `<base>/cometd/60.0`.
    pub url: String,
}

impl SalesforceFake {
    /// Starts the fake with the test client id, secret and refresh token, plus `extra_args`.
    pub fn start(extra_args: &[&str]) -> SalesforceFake {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
        let mut child = Command::new("node")
            .current_dir(&dir)
            .args(["salesforce.js", "--exit-on-stdin-eof"])
            .args(["--client-id", CLIENT_ID, "--client-secret", CLIENT_SECRET])
            .args(["--refresh-token", REFRESH_TOKEN])
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "could not run `node salesforce.js` in {}: {e}. The test servers need \
                     Node.js: run `scripts/test` (it installs Node and tests/peers/node_modules)",
                    dir.display()
                )
            });
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[salesforce.js] {line}");
            }
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_default();
        let ready: Value = serde_json::from_str(line.trim()).unwrap_or_else(|_| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "salesforce.js printed {line:?} (within 30 s) instead of \
                 {{\"port\":N,\"path\":...}}; its stderr is above. Is Node.js installed \
                 (`scripts/test` installs it)?"
            )
        });
        let base = format!("http://127.0.0.1:{}", ready["port"]);
        let url = format!("{base}{}", ready["path"].as_str().expect("path"));
        SalesforceFake {
            child,
            _stdin: stdin,
            base,
            url,
        }
    }

    /// [`SalesforceFake::start`] on tokio's blocking pool, for async tests.
    pub async fn start_async(extra_args: &[&str]) -> SalesforceFake {
        let args: Vec<String> = extra_args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            SalesforceFake::start(&args)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> url::Url {
        format!("{}/services/oauth2/token", self.base)
            .parse()
            .expect("token URL")
    }

    /// POSTs to a control endpoint and returns its JSON reply.
    pub async fn control(&self, name: &str, body: Value) -> Value {
        let response = http()
            .post(format!("{}/_control/{name}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(response.status().is_success(), "/_control/{name}");
        response.json().await.expect("control reply is JSON")
    }

    /// The fake's counters (`GET /_control/stats`).
    pub async fn stats(&self) -> Value {
        http()
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats JSON")
    }

    /// Publishes `count` events on `channel`; returns their `{replayId, seq}` list.
    pub async fn publish(&self, channel: &str, count: usize) -> Vec<Value> {
        let reply = self
            .control("publish", json!({"channel": channel, "count": count}))
            .await;
        reply["events"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for SalesforceFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http() -> reqwest::Client {
    http_client(false)
}

/// A reqwest client for the tests' own requests, with or without a cookie jar.
pub fn http_client(cookies: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(cookies)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("reqwest client")
}

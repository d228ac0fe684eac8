//! The Salesforce Streaming API fake (`tests/peers/salesforce.js`, a scripted test server:
//! no real server offers Salesforce's replay, retention and token behaviour offline), started
//! on a free loopback port, with its control endpoints.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

/// The connected app's client id the fake is started with.
pub const CLIENT_ID: &str = "test-client-id";
/// The connected app's client secret the fake is started with.
pub const CLIENT_SECRET: &str = "test-client-secret";
/// A refresh token the fake accepts.
pub const REFRESH_TOKEN: &str = "refresh-1";

/// The fake, run as `node tests/peers/salesforce.js`; killed on drop. It runs
/// with `--exit-on-stdin-eof` and we hold its stdin, so it also dies with us.
pub struct SalesforceFake {
    child: Child,
    _stdin: ChildStdin,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The Bayeux endpoint.
    pub url: String,
}

impl SalesforceFake {
    /// Starts the fake with the test client id, secret and refresh token, plus `extra_args`.
    pub fn start(extra_args: &[&str]) -> SalesforceFake {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers");
        let mut child = Command::new("node")
            .current_dir(&dir)
            .args([
                "salesforce.js",
                "--exit-on-stdin-eof",
                "--client-id",
                CLIENT_ID,
            ])
            .args([
                "--client-secret",
                CLIENT_SECRET,
                "--refresh-token",
                REFRESH_TOKEN,
            ])
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
        // Forward the server's log into the (captured) test output.
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
                 {{\"port\":N,\"path\":...}}; its stderr is above"
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

    /// The OAuth token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/services/oauth2/token", self.base)
    }

    /// POSTs `body` to `/_control/{name}` and returns the JSON reply.
    pub async fn control(&self, name: &str, body: Value) -> Value {
        let response = http_client(false)
            .post(format!("{}/_control/{name}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert_eq!(response.status(), StatusCode::OK, "/_control/{name}");
        response.json().await.expect("control reply is JSON")
    }

    /// `GET /_control/stats`.
    pub async fn stats(&self) -> Value {
        let url = format!("{}/_control/stats", self.base);
        let response = http_client(false).get(url).send().await.expect("stats");
        response.json().await.expect("stats JSON")
    }

    /// Publishes `count` events on `channel`; returns their replay ids in order.
    pub async fn publish(&self, channel: &str, count: usize) -> Vec<i64> {
        let reply = self
            .control(
                "publish",
                serde_json::json!({"channel": channel, "count": count, "payload": {}}),
            )
            .await;
        reply["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["replayId"].as_i64().expect("replayId"))
            .collect()
    }
}

impl Drop for SalesforceFake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reqwest client for the tests' own requests, with or without a cookie jar.
pub fn http_client(cookies: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(cookies)
        .timeout(Duration::from_secs(20))
        .build()
        .expect("build reqwest client")
}

//! `contrib/`: the Grafana dashboard and the Prometheus alert rules use only metrics and
//! labels the bridge exports. A bridge with `[replay]`, `[spool]`, a dead-letter topic and the
//! HTTP listener runs between the Salesforce-like fake (replay ids, session expiry, refused
//! publishes: `tests/peers/salesforce.js`) and a real Mosquitto, with traffic that makes every
//! family the files use have samples (forwards, a drop, a dead letter, a lost Bayeux session);
//! then every metric name and label in every query of both files must be in its live
//! `/metrics`. `promtool check rules` validates the rules file (Prometheus's `promtool`,
//! which `scripts/install-deps` installs; without it that test fails and says how to
//! install it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use common::bridge::{BridgeProcess, ConfigFile, TempDir};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{MqttPeer, mqtt_options};
use common::salesforce::SalesforceFake;

const WAIT: Duration = Duration::from_secs(30);
const TOKEN: &str = "static-test-token";
/// Labels Prometheus adds to every scraped series (not in `/metrics`).
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One query of a contrib file: where it is, its PromQL, and the labels its legend or
/// annotations name.
#[derive(Debug)]
struct Query {
    origin: String,
    expr: String,
    shown_labels: BTreeSet<String>,
}

/// Every query of the dashboard: panel targets (with their legends) and template variables.
fn dashboard_queries() -> Vec<Query> {
    let path = repo_file("contrib/grafana/bayeux-mqtt-bridge.json");
    let text = std::fs::read_to_string(&path).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let legend = target["legendFormat"].as_str().unwrap_or("");
            queries.push(Query {
                origin: format!("panel {:?}", panel["title"]),
                expr: target["expr"].as_str().expect("expr").to_owned(),
                shown_labels: between(legend, "{{", "}}"),
            });
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label)
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .expect("label_values(metric, label)");
            let (metric, label) = inner.split_once(',').expect("two arguments");
            queries.push(Query {
                origin: format!("variable {:?}", variable["name"]),
                expr: metric.trim().to_owned(),
                shown_labels: BTreeSet::from([label.trim().to_owned()]),
            });
        }
    }
    assert!(queries.len() > 15, "{queries:#?}");
    queries
}

/// Every rule of the rules file: its `expr` (one line, or a `|` block) and the `$labels.x`
/// of its annotations.
fn rule_queries() -> Vec<Query> {
    let path = repo_file("contrib/prometheus/bayeux-mqtt-bridge.rules.yml");
    let text = std::fs::read_to_string(&path).expect("the rules");
    let mut queries: Vec<Query> = Vec::new();
    let mut lines = text.lines().peekable();
    let mut name = String::new();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(alert) = trimmed.strip_prefix("- alert:") {
            name = alert.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let mut expr = expr.trim().to_owned();
            if expr == "|" {
                let indent = line.len() - trimmed.len();
                expr.clear();
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || next_indent <= indent {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
            }
            queries.push(Query {
                origin: format!("rule {name}"),
                expr,
                shown_labels: BTreeSet::new(),
            });
        } else if let Some(query) = queries.last_mut() {
            query.shown_labels.extend(
                between(line, "$labels.", " ")
                    .into_iter()
                    .map(|l| l.trim_end_matches(['}', '"']).to_owned()),
            );
        }
    }
    assert!(queries.len() >= 10, "{queries:#?}");
    queries
}

/// What stands between each `open` and the next `close` in `text`, trimmed.
fn between(text: &str, open: &str, close: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        rest = &rest[start + open.len()..];
        let end = rest.find(close).unwrap_or(rest.len());
        out.insert(rest[..end].trim().to_owned());
        rest = &rest[end..];
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The `bridge_*` metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("bridge_") {
        if expr[..i].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let name: String = expr[i..].chars().take_while(|c| is_ident(*c)).collect();
        out.insert(name);
    }
    out
}

/// The label names a PromQL expression uses: in `by`/`without`/`on`/`ignoring`/`group_*`
/// lists and in `{label op "value"}` matchers.
fn label_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for keyword in [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        for (i, _) in expr.match_indices(keyword) {
            let before = expr[..i].chars().next_back();
            let after = expr[i + keyword.len()..].trim_start();
            if before.is_some_and(is_ident) || !after.starts_with('(') {
                continue;
            }
            let list = &after[1..after.find(')').expect("a closing parenthesis")];
            out.extend(
                list.split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned),
            );
        }
    }
    for (i, _) in expr.match_indices('{') {
        out.extend(pairs(&expr[i + 1..]));
    }
    out
}

/// The names of `name op "value"` pairs up to the closing `}` (values may hold commas and
/// escaped quotes).
fn pairs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| is_ident(*c)) {
            name.push(c);
        }
        if name.is_empty() {
            return out;
        }
        out.insert(name);
        // The operator, then the quoted value.
        if !chars.by_ref().any(|c| c == '"') {
            return out;
        }
        let mut escaped = false;
        for c in chars.by_ref() {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => break,
                _ => escaped = false,
            }
        }
    }
}

/// The live `/metrics`: each sample name and the label names it has.
fn samples(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name: String = line.chars().take_while(|c| is_ident(*c)).collect();
        let labels = out.entry(name.clone()).or_default();
        if let Some(rest) = line[name.len()..].strip_prefix('{') {
            labels.extend(pairs(rest));
        }
    }
    out
}

/// What `queries` use that the live samples lack, one line each.
fn missing(queries: &[Query], live: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for query in queries {
        let metrics = metric_names(&query.expr);
        if metrics.is_empty() {
            problems.push(format!(
                "{}: no bridge_ metric in {:?}",
                query.origin, query.expr
            ));
        }
        for metric in &metrics {
            if !live.contains_key(metric) {
                problems.push(format!("{}: no samples of {metric}", query.origin));
            }
        }
        let labels = label_names(&query.expr)
            .into_iter()
            .chain(query.shown_labels.iter().cloned())
            .filter(|l| !TARGET_LABELS.contains(&l.as_str()));
        for label in labels {
            let found = metrics
                .iter()
                .any(|m| live.get(m).is_some_and(|ls| ls.contains(&label)));
            if !found {
                problems.push(format!(
                    "{}: label {label:?} is on none of {metrics:?}",
                    query.origin
                ));
            }
        }
    }
    problems
}

#[test]
fn the_query_parsers_find_names_and_labels() {
    let expr = r#"(time() - bridge_a_seconds > 3600) and on (instance) sum by (direction, route) (rate(bridge_b_total{direction="x",reason!~"y,z"}[$__rate_interval]))"#;
    assert_eq!(
        metric_names(expr),
        BTreeSet::from(["bridge_a_seconds".to_owned(), "bridge_b_total".to_owned()])
    );
    assert_eq!(
        label_names(expr),
        ["instance", "direction", "route", "reason"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    let live = samples(
        "# TYPE bridge_b counter\nbridge_b_total{direction=\"a,\\\"b\",route=\"1\"} 3\nbridge_ready 1\n",
    );
    assert_eq!(
        live["bridge_b_total"],
        BTreeSet::from(["direction".to_owned(), "route".to_owned()])
    );
    assert!(live["bridge_ready"].is_empty());
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let rules = repo_file("contrib/prometheus/bayeux-mqtt-bridge.rules.yml");
    match std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool check rules {}:\n{}{}",
            rules.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        // A missing tool is a failure, never a silent pass: the rules would go unchecked.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "promtool is not installed, so the alert rules cannot be validated; install it \
             with scripts/install-deps (Debian package `prometheus`: \
             `apt-get install --no-install-recommends prometheus`)"
        ),
        Err(e) => panic!("cannot run promtool: {e}"),
    }
}

fn bridge_toml(fake: &SalesforceFake, broker: &Mosquitto, dir: &TempDir, http: u16) -> String {
    let token = dir.file("token", TOKEN);
    format!(
        r#"
[bayeux]
url = "{url}"
token_file = "{token}"
max_request_bytes = 32768
backoff_increment_ms = 100
backoff_max_ms = 500

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "contrib-bridge"
status_topic = "contrib/status"
backoff_increment_ms = 100
backoff_max_ms = 500

[replay]
enabled = true
state_dir = "{state}"
checkpoint_interval_ms = 50

[spool]
enabled = true
dir = "{spool}"

[http]
listen = "127.0.0.1:{http}"

[[route]]
bayeux = "/event/Order__e"
mqtt = "contrib/order"
direction = "bayeux_to_mqtt"

[[route]]
bayeux = "/event/Missing__e"
mqtt = "contrib/missing"
direction = "bayeux_to_mqtt"
payload = "/payload/Missing"
dead_letter_topic = "contrib/dead"

[[route]]
bayeux = "/event/*"
mqtt = "contrib/in/+"
direction = "mqtt_to_bayeux"
"#,
        url = fake.url,
        token = token.display(),
        port = broker.port(),
        state = dir.path().join("state").display(),
        spool = dir.path().join("spool").display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_of_the_dashboard_and_the_rules_is_exported() {
    let mut queries = dashboard_queries();
    queries.extend(rule_queries());
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start_async(&["--token", TOKEN]).await;
    let dir = TempDir::new("contrib");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let peer = MqttPeer::connect(mqtt_options(&broker, "contrib-peer"), &["contrib/#"]).await;
    let config = ConfigFile::new(&bridge_toml(&fake, &broker, &dir, http));
    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;

    // Forwards (and a checkpoint), a dead letter, a drop (the fake refuses client publishes
    // and that route has no dead-letter topic), then a lost Bayeux session (a reconnect, a
    // new handshake and a gap).
    fake.publish("/event/Order__e", 3).await;
    fake.control(
        "publish",
        json!({"channel": "/event/Missing__e", "count": 1}),
    )
    .await;
    peer.publish("contrib/in/Order__e", "{}").await;
    peer.inbox
        .wait_until("the forwards and the dead letter", WAIT, |got| {
            got.iter().filter(|g| g.topic == "contrib/order").count() == 3
                && got.iter().any(|g| g.topic == "contrib/dead")
        })
        .await;
    bridge.wait_for_log("Message dropped.", WAIT).await;
    fake.control("expire-sessions", json!({})).await;

    let url = format!("http://127.0.0.1:{http}/metrics");
    let deadline = tokio::time::Instant::now() + WAIT;
    let problems = loop {
        let text = reqwest::get(&url)
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let problems = missing(&queries, &samples(&text));
        if problems.is_empty() {
            break problems;
        }
        if tokio::time::Instant::now() > deadline {
            break problems;
        }
        // Polling the endpoint under test until the session loss is counted.
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        problems.is_empty(),
        "contrib queries use what /metrics lacks:\n{}",
        problems.join("\n")
    );
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(30));
}

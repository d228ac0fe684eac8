//! Message shaping and dead letters (issue 18), end to end: the bridge binary between real
//! peers started by the tests on free loopback ports: Mosquitto, the CometD server
//! (cometd-nodejs-server), and for Salesforce's event envelope (`{"schema", "payload",
//! "event": {"replayId"}}`) and its refusal of client publishes the Salesforce-like fake
//! (`tests/peers/salesforce.js`: no real Bayeux server offers these offline).
//!
//! Covered: each `route.payload` mode (data, message, JSON pointer to an object and to a
//! string), MQTT 5 properties both ways (content type and `bayeux-channel`/`replay-id` on
//! Bayeux → MQTT, `mqtt-topic` and user properties into `ext` on MQTT → Bayeux), each
//! dead-letter reason (`pointer_not_found`, `bayeux_refused`, `binary_payload`,
//! `invalid_name`, `payload_too_large` both ways), the per-route override, the counter in
//! `/metrics`, and the MQTT 3.1.1 envelope form.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::time::Duration;

use bayeux_mqtt_bridge::mqtt::Properties;
use serde_json::{Value, json};

use common::bayeux_peer::BayeuxPeer;
use common::bridge::{BridgeProcess, ConfigFile, TempDir};
use common::mosquitto::Mosquitto;
use common::mqtt_peer::{Got, MqttPeer, mqtt_options};
use common::peers::{PeerKind, PeerServer};
use common::salesforce::SalesforceFake;

const WAIT: Duration = Duration::from_secs(30);
const DEAD: &str = "shaping/dead";
const TOKEN: &str = "static-test-token";

/// A bridge config: `head` is anything before `[mqtt]` after the URL (auth, limits),
/// `mqtt` extra `[mqtt]` keys, `bridge` extra `[bridge]` keys.
fn toml(url: &str, broker: &Mosquitto, client: &str, sections: [&str; 3], routes: &str) -> String {
    let [head, mqtt, bridge] = sections;
    format!(
        r#"
[bayeux]
url = "{url}"
backoff_increment_ms = 100
backoff_max_ms = 500
{head}

[mqtt]
host = "127.0.0.1"
port = {port}
client_id = "{client}"
status_topic = "shaping/{client}/status"
backoff_increment_ms = 100
backoff_max_ms = 500
{mqtt}

[bridge]
dead_letter_topic = "{DEAD}"
drain_timeout_secs = 3
{bridge}

{routes}
"#,
        port = broker.port(),
    )
}

/// Starts the bridge and waits until it is ready.
async fn start(toml: &str) -> (ConfigFile, BridgeProcess) {
    let config = ConfigFile::new(toml);
    let bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    (config, bridge)
}

/// The user properties of `got` as `(name, value)` pairs of `&str`.
fn user(got: &Got) -> Vec<(&str, &str)> {
    got.properties
        .user
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// The dead letter on `topic` whose `reason` property is `reason`.
async fn dead_letter(peer: &MqttPeer, topic: &str, reason: &str) -> Got {
    peer.inbox
        .wait_until(&format!("a {reason} dead letter on {topic}"), WAIT, |got| {
            got.iter()
                .any(|g| g.topic == topic && g.user_property("reason") == Some(reason))
        })
        .await;
    peer.inbox
        .snapshot()
        .into_iter()
        .find(|g| g.topic == topic && g.user_property("reason") == Some(reason))
        .expect("found above")
}

/// The 3.1.1 envelope on `topic` whose `reason` field is `reason`.
async fn envelope(peer: &MqttPeer, topic: &str, reason: &str) -> Value {
    let is = |g: &Got| {
        g.topic == topic
            && serde_json::from_slice::<Value>(&g.payload)
                .is_ok_and(|v| v["reason"] == json!(reason))
    };
    peer.inbox
        .wait_until(&format!("a {reason} envelope on {topic}"), WAIT, |got| {
            got.iter().any(is)
        })
        .await;
    peer.inbox
        .snapshot()
        .iter()
        .find(|g| is(g))
        .map(Got::json)
        .expect("found above")
}

async fn stop(bridge: &mut BridgeProcess) {
    let (status, _) = bridge.terminate(WAIT).await;
    assert!(status.success(), "{}", bridge.tail(30));
}

/// Salesforce-style events through each payload mode, with MQTT 5 properties (and one route
/// without); a pointer that names nothing and a publish Salesforce refuses go to the dead
/// letter topics with why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn salesforce_events_by_payload_mode_with_properties_and_their_dead_letters() {
    let broker = Mosquitto::start_async().await;
    let fake = SalesforceFake::start_async(&["--token", TOKEN]).await;
    let dir = TempDir::new("shaping-sf");
    let token = dir.file("token", TOKEN);
    let peer = MqttPeer::connect(
        mqtt_options(&broker, "shaping-sf-sub"),
        &["sf/#", "shaping/#"],
    )
    .await;
    let route = |n: &str, extra: &str| {
        format!(
            "[[route]]\nbayeux = \"/event/{n}__e\"\nmqtt = \"sf/{n}\"\n\
             direction = \"bayeux_to_mqtt\"\n{extra}\n"
        )
    };
    let routes = [
        route("Data", "payload = \"data\""),
        route("Message", "payload = \"message\""),
        route("Record", "payload = \"/payload\""),
        route("Name", "payload = \"/payload/Name\""),
        route(
            "Missing",
            "payload = \"/payload/Missing\"\ndead_letter_topic = \"shaping/dead/missing\"",
        ),
        route("Bare", "properties = false"),
        "[[route]]\nbayeux = \"/event/*\"\nmqtt = \"sfin/+\"\ndirection = \"mqtt_to_bayeux\"\n"
            .to_owned(),
    ]
    .concat();
    let head = format!(
        "token_file = \"{}\"\nmax_request_bytes = 32768",
        token.display()
    );
    let (_config, mut bridge) = start(&toml(
        &fake.url,
        &broker,
        "shaping-sf",
        [&head, "", ""],
        &routes,
    ))
    .await;
    let mut replay_ids = std::collections::BTreeMap::new();
    for name in ["Data", "Message", "Record", "Name", "Missing", "Bare"] {
        let channel = format!("/event/{name}__e");
        let reply = fake
            .control(
                "publish",
                json!({"channel": channel, "count": 1, "payload": {"Name": "Acme"}}),
            )
            .await;
        let id = reply["events"][0]["replayId"].as_i64().expect("a replayId");
        replay_ids.insert(name, id.to_string());
    }
    let replay = |name: &str| replay_ids[name].as_str();

    let data = peer.first_on("sf/Data").await;
    let event = data.json();
    assert_eq!(event["payload"], json!({"Name": "Acme", "seq": 1}));
    assert_eq!(event["event"]["replayId"].to_string(), replay("Data"));
    assert!(event["schema"].is_string(), "the whole envelope: {event}");
    assert_eq!(
        data.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(data.user_property("bayeux-channel"), Some("/event/Data__e"));
    assert_eq!(data.user_property("replay-id"), Some(replay("Data")));

    let message = peer.first_on("sf/Message").await.json();
    assert_eq!(message["channel"], json!("/event/Message__e"));
    assert_eq!(message["data"]["payload"]["Name"], json!("Acme"));
    assert!(message.get("clientId").is_none(), "{message}");

    let record = peer.first_on("sf/Record").await;
    assert_eq!(record.json(), json!({"Name": "Acme", "seq": 1}));
    assert_eq!(
        record.properties.content_type.as_deref(),
        Some("application/json")
    );
    assert_eq!(record.user_property("replay-id"), Some(replay("Record")));

    let name = peer.first_on("sf/Name").await;
    assert_eq!(
        name.text(),
        "Acme",
        "a JSON string is published as its text"
    );
    assert_eq!(name.properties.content_type.as_deref(), Some("text/plain"));

    let bare = peer.first_on("sf/Bare").await;
    assert_eq!(bare.json()["payload"]["Name"], json!("Acme"));
    assert_eq!(bare.properties, Properties::default(), "properties = false");

    // The route's own dead-letter topic, not the bridge's.
    let missing = dead_letter(&peer, "shaping/dead/missing", "pointer_not_found").await;
    assert_eq!(
        user(&missing),
        [
            ("reason", "pointer_not_found"),
            ("route", "5"),
            ("source", "bayeux"),
            ("channel", "/event/Missing__e"),
            ("topic", "sf/Missing"),
            (
                "error",
                "the data has no value at JSON pointer \"/payload/Missing\""
            ),
        ]
    );
    assert_eq!(
        missing.json()["event"]["replayId"].to_string(),
        replay("Missing"),
        "the original data"
    );

    // MQTT → Salesforce: the fake refuses client publishes, as Salesforce does.
    peer.publish("sfin/Order__e", r#"{"n":1}"#).await;
    let refused = dead_letter(&peer, DEAD, "bayeux_refused").await;
    assert_eq!(
        user(&refused),
        [
            ("reason", "bayeux_refused"),
            ("route", "7"),
            ("source", "mqtt"),
            ("channel", "/event/Order__e"),
            ("error", "403::Publish not allowed"),
        ]
    );
    assert_eq!(refused.json(), json!({"n": 1}));

    stop(&mut bridge).await;
    assert!(
        !peer
            .inbox
            .snapshot()
            .iter()
            .any(|g| g.topic == "sf/Missing"),
        "nothing published for the missing pointer"
    );
    let totals = bridge.totals("bayeux_to_mqtt");
    assert_eq!(totals.forwarded, 5, "{totals:?}");
    assert!(
        totals.dropped.is_empty(),
        "dead letters are not drops: {totals:?}"
    );
}

/// MQTT → Bayeux with `ext_properties`: the topic and the publish's user properties arrive
/// in the Bayeux message's `ext`; a route without it sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_user_properties_reach_the_bayeux_ext() {
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let bayeux = BayeuxPeer::subscriber(&url, "/ext/**", WAIT).await;
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-ext-pub"), &[]).await;
    let routes = "[[route]]\nbayeux = \"/ext/on/*\"\nmqtt = \"ext/on/+\"\n\
                  direction = \"mqtt_to_bayeux\"\next_properties = true\n\
                  [[route]]\nbayeux = \"/ext/off/*\"\nmqtt = \"ext/off/+\"\n\
                  direction = \"mqtt_to_bayeux\"\n";
    let (_config, mut bridge) =
        start(&toml(&url, &broker, "shaping-ext", ["", "", ""], routes)).await;
    let properties = Properties {
        content_type: Some("application/json".into()),
        user: vec![
            ("site".into(), "north".into()),
            ("shift".into(), "2".into()),
        ],
    };
    peer.publish_with("ext/on/a", r#"{"t":1}"#, properties.clone())
        .await;
    peer.publish_with("ext/off/a", r#"{"t":2}"#, properties)
        .await;
    bayeux
        .inbox
        .wait_until("both messages", WAIT, |m| m.len() >= 2)
        .await;
    let got = bayeux.inbox.snapshot();
    let on = got.iter().find(|m| m.channel == "/ext/on/a").expect("on");
    let ext = on.ext.clone().map(Value::Object);
    assert_eq!(
        ext.as_ref()
            .map(|e| (&e["mqtt-topic"], &e["site"], &e["shift"])),
        Some((&json!("ext/on/a"), &json!("north"), &json!("2"))),
        "{on:?}"
    );
    let off = got.iter().find(|m| m.channel == "/ext/off/a").expect("off");
    assert!(
        off.ext
            .as_ref()
            .is_none_or(|e| !e.contains_key("mqtt-topic")),
        "{off:?}"
    );
    stop(&mut bridge).await;
}

/// What the bridge cannot deliver to CometD or to the broker goes to the dead-letter topic
/// with the original payload and why, and is counted in `bridge_dead_letters_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_messages_are_dead_lettered_with_why_and_counted() {
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let bayeux = BayeuxPeer::publisher(&url, WAIT);
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-dl-sub"), &[DEAD]).await;
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let routes = "[[route]]\nbayeux = \"/in/*\"\nmqtt = \"in/+\"\ndirection = \"mqtt_to_bayeux\"\n\
                  [[route]]\nbayeux = \"/out/*\"\nmqtt = \"out/+\"\ndirection = \"bayeux_to_mqtt\"\n";
    let sections = [
        "max_request_bytes = 1024",
        "max_packet_size = 4096",
        &format!("[http]\nlisten = \"127.0.0.1:{http_port}\""),
    ];
    // `[http]` closes `[bridge]`: nothing of it follows.
    let (_config, mut bridge) = start(&toml(&url, &broker, "shaping-dl", sections, routes)).await;

    peer.publish("in/bin", vec![0xde, 0xad, 0xbe, 0xef]).await;
    let binary = dead_letter(&peer, DEAD, "binary_payload").await;
    assert_eq!(&binary.payload[..], [0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        (
            binary.user_property("source"),
            binary.user_property("topic"),
            binary.user_property("route")
        ),
        (Some("mqtt"), Some("in/bin"), Some("1"))
    );

    peer.publish("in/küche", "{}").await;
    let name = dead_letter(&peer, DEAD, "invalid_name").await;
    assert_eq!(name.user_property("topic"), Some("in/küche"));
    assert_eq!(name.text(), "{}");

    // Over max_request_bytes, within the bridge's max_packet_size.
    let big = json!({ "text": "x".repeat(1500) }).to_string();
    peer.publish("in/big", big.clone()).await;
    let too_large = dead_letter(&peer, DEAD, "payload_too_large").await;
    assert_eq!(too_large.user_property("channel"), Some("/in/big"));
    assert_eq!(too_large.text(), big, "the whole original payload");

    // Bayeux → MQTT over the bridge's max_packet_size: the dead letter cannot hold it either,
    // so it says why and how large it was.
    bayeux
        .publish("/out/big", json!({ "text": "y".repeat(6000) }))
        .await;
    peer.inbox
        .wait_until("the Bayeux → MQTT dead letter", WAIT, |got| {
            got.iter()
                .any(|g| g.user_property("source") == Some("bayeux"))
        })
        .await;
    let out = peer
        .inbox
        .snapshot()
        .into_iter()
        .find(|g| g.user_property("source") == Some("bayeux"))
        .expect("found above");
    assert_eq!(
        (
            out.user_property("reason"),
            out.user_property("channel"),
            out.user_property("topic"),
            out.payload.is_empty()
        ),
        (
            Some("payload_too_large"),
            Some("/out/big"),
            Some("out/big"),
            true
        ),
        "{out:?}"
    );
    let omitted: usize = out
        .user_property("payload_omitted")
        .unwrap()
        .parse()
        .unwrap();
    assert!(omitted > 6000, "{omitted}");

    // Counted once the broker acknowledged the dead letter, which may be after the
    // subscriber got it: the endpoint is polled until then.
    let wanted: Vec<String> = [
        ("mqtt_to_bayeux", 1, "binary_payload"),
        ("mqtt_to_bayeux", 1, "invalid_name"),
        ("mqtt_to_bayeux", 1, "payload_too_large"),
        ("bayeux_to_mqtt", 2, "payload_too_large"),
    ]
    .iter()
    .map(|(direction, route, reason)| {
        format!(
            "bridge_dead_letters_total{{direction=\"{direction}\",route=\"route[{route}]\",reason=\"{reason}\"}} 1"
        )
    })
    .collect();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{http_port}/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        let missing: Vec<&String> = wanted.iter().filter(|l| !metrics.contains(*l)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing:?} not in\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(&mut bridge).await;
    assert!(bridge.totals("mqtt_to_bayeux").dropped.is_empty());
}

/// MQTT 3.1.1 has no properties: the dead letter is a JSON envelope of the same fields and
/// the original payload (as JSON, or base64 when binary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_dead_letters_are_json_envelopes() {
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-311-sub"), &[DEAD]).await;
    let routes = "[[route]]\nbayeux = \"/in/*\"\nmqtt = \"in/+\"\ndirection = \"mqtt_to_bayeux\"\n";
    let (_config, mut bridge) = start(&toml(
        &url,
        &broker,
        "shaping-311",
        ["max_request_bytes = 1024", "protocol = \"3.1.1\"", ""],
        routes,
    ))
    .await;
    peer.publish("in/bin", vec![0xde, 0xad, 0xbe, 0xef]).await;
    let binary = envelope(&peer, DEAD, "binary_payload").await;
    assert_eq!(
        binary,
        json!({
            "reason": "binary_payload", "route": "1", "source": "mqtt", "topic": "in/bin",
            "error": "payload of 4 bytes is not UTF-8 (invalid at byte 2) and \
                      bridge.binary_payloads = \"refuse\"",
            "payload_base64": "3q2+7w==",
        })
    );
    let big = json!({ "text": "x".repeat(2000) });
    peer.publish("in/big", big.to_string()).await;
    let too_large = envelope(&peer, DEAD, "payload_too_large").await;
    assert_eq!(
        (
            &too_large["channel"],
            &too_large["source"],
            &too_large["payload"]
        ),
        (&json!("/in/big"), &json!("mqtt"), &big)
    );
    let got = peer.inbox.snapshot();
    assert!(
        got.iter().all(|g| g.properties == Properties::default()),
        "no properties on 3.1.1"
    );
    stop(&mut bridge).await;
}

/// A broker that refuses some topics (an ACL): a Bayeux → MQTT publish it refuses (MQTT 5
/// PUBACK "not authorized", known only when the acknowledgement comes) is dead-lettered as
/// `rejected`; a dead letter it refuses is not sent anywhere else: the message is dropped
/// and counted as without a dead-letter topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_publishes_are_dead_lettered_and_a_refused_dead_letter_is_counted_as_dropped() {
    let dir = TempDir::new("shaping-acl");
    let acl = dir.file("acl", "topic deny denied/#\ntopic readwrite #\n");
    use std::os::unix::fs::PermissionsExt;
    for (path, mode) in [(dir.path(), 0o755), (acl.as_path(), 0o644)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let broker =
        Mosquitto::start_configured_async(false, &format!("acl_file {}\n", acl.display())).await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let bayeux = BayeuxPeer::publisher(&url, WAIT);
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-acl-sub"), &[DEAD]).await;
    let routes = "[[route]]\nbayeux = \"/deny/*\"\nmqtt = \"denied/+\"\ndirection = \"bayeux_to_mqtt\"\n\
                  [[route]]\nbayeux = \"/in/*\"\nmqtt = \"in/+\"\ndirection = \"mqtt_to_bayeux\"\n\
                  dead_letter_topic = \"denied/dead\"\n";
    let (_config, mut bridge) =
        start(&toml(&url, &broker, "shaping-acl", ["", "", ""], routes)).await;
    bayeux.publish("/deny/a", json!({"n": 1})).await;
    let rejected = dead_letter(&peer, DEAD, "rejected").await;
    assert_eq!(
        (
            rejected.user_property("source"),
            rejected.user_property("topic"),
            rejected.user_property("route")
        ),
        (Some("bayeux"), Some("denied/a"), Some("1"))
    );
    assert!(
        rejected
            .user_property("error")
            .is_some_and(|e| e.contains("NotAuthorized")),
        "{rejected:?}"
    );
    assert_eq!(rejected.json(), json!({"n": 1}));

    peer.publish("in/bin", vec![0xff]).await;
    bridge
        .wait_for_log(
            "Message dropped: its dead letter could not be published.",
            WAIT,
        )
        .await;
    stop(&mut bridge).await;
    assert_eq!(
        bridge.totals("mqtt_to_bayeux").dropped,
        std::collections::BTreeMap::from([("binary_payload".to_owned(), 1)])
    );
}

/// With `[spool]`, the properties of Bayeux → MQTT publishes and the `ext` of MQTT → Bayeux
/// ones are stored with the message and sent by the delivery tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_and_ext_survive_the_spool() {
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let dir = TempDir::new("shaping-spool");
    let bayeux = BayeuxPeer::subscriber(&url, "/sp/in/*", WAIT).await;
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-spool-sub"), &["sp/out/#"]).await;
    let routes = "[[route]]\nbayeux = \"/sp/out/*\"\nmqtt = \"sp/out/+\"\n\
                  direction = \"bayeux_to_mqtt\"\npayload = \"/v\"\n\
                  [[route]]\nbayeux = \"/sp/in/*\"\nmqtt = \"sp/in/+\"\n\
                  direction = \"mqtt_to_bayeux\"\next_properties = true\n";
    let spool = format!(
        "[spool]\nenabled = true\ndir = \"{}\"",
        dir.path().join("spool").display()
    );
    let (_config, mut bridge) = start(&toml(
        &url,
        &broker,
        "shaping-spool",
        ["", "", &spool],
        routes,
    ))
    .await;
    BayeuxPeer::publisher(&url, WAIT)
        .publish("/sp/out/a", json!({"v": "text"}))
        .await;
    let out = peer.first_on("sp/out/a").await;
    assert_eq!(out.text(), "text");
    assert_eq!(out.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(out.user_property("bayeux-channel"), Some("/sp/out/a"));
    let properties = Properties {
        content_type: None,
        user: vec![("site".into(), "south".into())],
    };
    peer.publish_with("sp/in/b", "1", properties).await;
    bayeux
        .inbox
        .wait_until("the MQTT message", WAIT, |m| !m.is_empty())
        .await;
    let got = bayeux.inbox.snapshot();
    let ext = got[0].ext.clone().map(Value::Object).unwrap_or_default();
    assert_eq!(
        (&ext["mqtt-topic"], &ext["site"]),
        (&json!("sp/in/b"), &json!("south")),
        "{:?}",
        got[0]
    );
    stop(&mut bridge).await;
}

/// A gap with a known count (here `shutdown_abandoned`: MQTT messages taken while the Bayeux
/// server stopped answering, still unanswered at the drain deadline) leaves one placeholder
/// dead letter: reason the gap's kind, `count`, and the gap report as the payload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_with_a_count_leaves_a_placeholder_dead_letter() {
    use common::gate::Gate;
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let gate = Gate::start(server.port()).await;
    let url = format!("http://127.0.0.1:{}/cometd", gate.port());
    let peer = MqttPeer::connect(mqtt_options(&broker, "shaping-gap-sub"), &[DEAD]).await;
    let routes =
        "[[route]]\nbayeux = \"/held/*\"\nmqtt = \"held/+\"\ndirection = \"mqtt_to_bayeux\"\n";
    let config = ConfigFile::new(&toml(&url, &broker, "shaping-gap", ["", "", ""], routes));
    let mut bridge = BridgeProcess::spawn(
        &config,
        &[("RUST_LOG", "info,bayeux_mqtt_bridge::bridge::m2b=trace")],
    );
    bridge.wait_for_log("Bridge ready.", WAIT).await;
    gate.blackhole();
    for n in 0..3 {
        peer.publish(&format!("held/{n}"), "{}").await;
    }
    bridge.wait_for_nth("Forwarding to Bayeux.", 3, WAIT).await;
    stop(&mut bridge).await;
    let placeholder = dead_letter(&peer, DEAD, "shutdown_abandoned").await;
    assert_eq!(
        (
            placeholder.user_property("source"),
            placeholder.user_property("count"),
            placeholder.user_property("topic"),
        ),
        (Some("mqtt"), Some("3"), Some("held/+"))
    );
    let report = placeholder.json();
    assert_eq!(
        (&report["event"], &report["count"]),
        (&json!("shutdown_abandoned"), &json!(3))
    );
    assert!(bridge.totals("mqtt_to_bayeux").dropped.is_empty());
}

/// Bayeux → MQTT `invalid_name`: a channel whose topic the broker would refuse (a control
/// character; the CometD Node server relays it, as a buggy or hostile server could) is never
/// published on that topic but dead-lettered with its channel (escaped: as a user property
/// it would make Mosquitto close the connection, and the QoS 1 dead letter would follow
/// every reconnect, which this test found), the topic left out (there is none), and the
/// original data; the message after it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untranslatable_bayeux_channel_is_dead_lettered() {
    let broker = Mosquitto::start_async().await;
    let server = PeerServer::start_async(PeerKind::CometD).await;
    let url = server.url();
    let bayeux = BayeuxPeer::publisher(&url, WAIT);
    let peer = MqttPeer::connect(
        mqtt_options(&broker, "shaping-b2m-name-sub"),
        &[DEAD, "p/#"],
    )
    .await;
    let routes = "[[route]]\nbayeux = \"/p/**\"\nmqtt = \"p/#\"\ndirection = \"bayeux_to_mqtt\"\n";
    let (_config, mut bridge) = start(&toml(
        &url,
        &broker,
        "shaping-b2m-name",
        ["", "", ""],
        routes,
    ))
    .await;

    common::bayeux_peer::raw_cometd_publish(&url, "/p/a\u{1}b", json!({ "n": 1 })).await;
    bayeux.publish("/p/ok", json!({ "n": 2 })).await;
    let letter = dead_letter(&peer, DEAD, "invalid_name").await;
    assert_eq!(
        (
            letter.user_property("source"),
            letter.user_property("channel"),
            letter.user_property("topic"),
            letter.user_property("route"),
        ),
        // Escaped: MQTT brokers refuse control characters in user properties as in topics.
        (Some("bayeux"), Some("/p/a\\u{1}b"), None, Some("1")),
        "{letter:?}"
    );
    assert_eq!(letter.json(), json!({ "n": 1 }), "the original data");
    peer.inbox
        .wait_until("the message after it", WAIT, |got| {
            got.iter().any(|g| g.topic == "p/ok")
        })
        .await;
    assert!(
        peer.inbox
            .snapshot()
            .iter()
            .all(|g| g.topic == DEAD || g.topic == "p/ok"),
        "nothing else was published: {:?}",
        peer.inbox.snapshot()
    );
    stop(&mut bridge).await;
}

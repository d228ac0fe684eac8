//! The configuration files: every example in `config/` loads, validates and compiles; bad
//! files fail naming the file, the key and the reason; environment variables override keys;
//! secrets stay out of errors and debug output.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::{Path, PathBuf};

use bayeux_mqtt_bridge::bridge::mapping;
use bayeux_mqtt_bridge::config::{
    Config, ConfigError, Direction, LogFormat, MqttProtocol, env_var_for, load, load_with_env,
};
use common::bridge::TempDir;
use common::certs::Pki;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Loads and compiles, as `check` does.
fn check(path: &Path, vars: &[(&str, &str)]) -> Result<(Config, Vec<mapping::Route>), ConfigError> {
    let config = load_with_env(path, env(vars))?;
    let routes = mapping::compile(&config.route).map_err(|e| e.in_file(path))?;
    Ok((config, routes))
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
}

const MINIMAL: &str = r#"
[bayeux]
url = "http://127.0.0.1:8080/cometd"

[mqtt]
host = "127.0.0.1"

[[route]]
bayeux = "/sensors/**"
mqtt = "sensors/#"
direction = "bayeux_to_mqtt"
"#;

#[test]
fn every_example_config_loads_validates_and_compiles() {
    let scratch = TempDir::new("config");
    let token = scratch.file("token", "abc.def\n");
    let password = scratch.file("password", "pw\n");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(repo_file("config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        // The secret files the examples name do not exist here; point at stand-ins.
        let vars = match name.as_str() {
            "salesforce.toml" => vec![
                (
                    "BAYEUX_MQTT_BRIDGE__BAYEUX__OAUTH__CLIENT_SECRET_FILE",
                    token.to_str().unwrap(),
                ),
                (
                    "BAYEUX_MQTT_BRIDGE__MQTT__PASSWORD_FILE",
                    password.to_str().unwrap(),
                ),
            ],
            _ => vec![],
        };
        let (config, routes) = check(&path, &vars).unwrap_or_else(|e| panic!("{e}"));
        assert!(!routes.is_empty(), "{name}");
        assert_eq!(config.warnings(), Vec::<String>::new(), "{name}");
        assert_eq!(mapping::warnings(&routes), Vec::<String>::new(), "{name}");
        assert!(mapping::describe(&routes).contains("route[1]"), "{name}");
        seen.push(name);
    }
    seen.sort();
    assert_eq!(seen, ["bridge.toml", "quickstart.toml", "salesforce.toml"]);
}

#[test]
fn the_reference_config_sets_every_key_to_its_default() {
    let scratch = TempDir::new("config");
    let minimal = scratch.file("minimal.toml", MINIMAL);
    let minimal = load_with_env(&minimal, []).unwrap();
    let full = load_with_env(&repo_file("config/bridge.toml"), []).unwrap();
    assert_eq!(full.bayeux, minimal.bayeux);
    assert_eq!(full.mqtt, minimal.mqtt);
    assert_eq!(full.bridge, minimal.bridge);
    assert_eq!(full.log, minimal.log);
    assert_eq!(full.http, minimal.http);
    assert_eq!(full.route[0], minimal.route[0]);
}

/// Every key there is, as written in the file.
const ALL_KEYS: &[&str] = &[
    "bayeux.url",
    "bayeux.headers",
    "bayeux.token_file",
    "bayeux.max_network_delay_secs",
    "bayeux.max_response_bytes",
    "bayeux.backoff_increment_ms",
    "bayeux.backoff_max_ms",
    "bayeux.max_request_bytes",
    "bayeux.ack_extension",
    "bayeux.transport",
    "bayeux.json_comment_filtered",
    "bayeux.allow_cleartext_credentials",
    "bayeux.tls.ca_file",
    "bayeux.tls.cert_file",
    "bayeux.tls.key_file",
    "bayeux.oauth.token_url",
    "bayeux.oauth.grant",
    "bayeux.oauth.client_id",
    "bayeux.oauth.client_secret",
    "bayeux.oauth.client_secret_file",
    "bayeux.oauth.username",
    "bayeux.oauth.private_key_file",
    "bayeux.oauth.audience",
    "bayeux.oauth.refresh_token",
    "bayeux.oauth.refresh_token_file",
    "bayeux.oauth.scope",
    "bayeux.oauth.max_auth_attempts",
    "mqtt.host",
    "mqtt.port",
    "mqtt.client_id",
    "mqtt.username",
    "mqtt.password",
    "mqtt.password_file",
    "mqtt.protocol",
    "mqtt.keep_alive_secs",
    "mqtt.clean_start",
    "mqtt.session_expiry_secs",
    "mqtt.max_packet_size",
    "mqtt.inflight",
    "mqtt.connect_timeout_secs",
    "mqtt.backoff_increment_ms",
    "mqtt.backoff_max_ms",
    "mqtt.status_topic",
    "mqtt.tls.ca_file",
    "mqtt.tls.cert_file",
    "mqtt.tls.key_file",
    "bridge.queue_capacity",
    "bridge.drain_timeout_secs",
    "bridge.binary_payloads",
    "bridge.dead_letter_topic",
    "log.level",
    "log.format",
    "log.file",
    "http.listen",
    "http.per_route_metrics",
    "replay.enabled",
    "replay.state_dir",
    "replay.checkpoint_interval_ms",
    "replay.start_from",
    "replay.on_invalid",
    "spool.enabled",
    "spool.dir",
    "spool.max_bytes",
    "cluster.group",
    "cluster.member_id",
    "cluster.mode",
    "cluster.hot_standby",
    "route.name",
    "route.bayeux",
    "route.mqtt",
    "route.direction",
    "route.qos",
    "route.retain",
    "route.payload",
    "route.properties",
    "route.ext_properties",
    "route.dead_letter_topic",
];

#[test]
fn every_key_is_in_the_reference_config_and_the_docs() {
    let example = std::fs::read_to_string(repo_file("config/bridge.toml")).unwrap();
    let docs = std::fs::read_to_string(repo_file("docs/configuration.md")).unwrap();
    // docs/configuration.md holds the one key table; the README links to it instead of
    // keeping a copy.
    let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
    assert!(
        readme.contains("(docs/configuration.md)"),
        "README.md does not link to docs/configuration.md"
    );
    for key in ALL_KEYS {
        assert!(
            docs.contains(&format!("| `{key}` |")),
            "docs/configuration.md's key tables lack a row for `{key}`"
        );
        let name = key.rsplit('.').next().unwrap();
        assert!(
            example.contains(&format!("{name} = ")),
            "config/bridge.toml lacks {key}"
        );
        assert!(
            docs.contains(&format!("`{key}`")),
            "docs/configuration.md lacks `{key}`"
        );
        if !key.starts_with("route.") {
            assert!(
                docs.contains(&env_var_for(key)),
                "docs lack {}",
                env_var_for(key)
            );
        }
    }
}

#[test]
fn an_unknown_key_is_refused_rather_than_ignored() {
    let scratch = TempDir::new("config");
    let path = scratch.file(
        "typo.toml",
        MINIMAL.replace("direction = ", "directon = \"both\"\ndirection = "),
    );
    let err = check(&path, &[]).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("route[1].directon"));
    assert_eq!(
        err.to_string(),
        format!(
            "{}: route[1].directon: unknown key (known keys here: `name`, `bayeux`, `mqtt`, \
             `direction`, `qos`, `retain`, `payload`, `properties`, `ext_properties`, \
             `dead_letter_topic`)",
            path.display()
        )
    );
}

/// (file content, environment, expected key, expected reason)
type BadCase<'a> = (String, Vec<(&'a str, &'a str)>, &'a str, String);

#[test]
fn bad_files_name_the_file_the_key_and_the_reason() {
    let scratch = TempDir::new("config");
    let ca = scratch.file("ca.pem", "not checked here");
    let missing = scratch.path().join("missing.pem");
    let empty = scratch.file("empty-secret", " \n");
    let ca = ca.display();
    let missing_text = missing.display();
    let route = "[[route]]\nbayeux = \"/a/*\"\nmqtt = \"a/+\"\ndirection = \"both\"\n";
    let head = "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n[mqtt]\nhost = \"h\"\n";
    // (file content, environment, expected key, expected reason)
    let table: Vec<BadCase> = vec![
        (
            format!("{head}hots = \"x\"\n{route}"),
            vec![],
            "mqtt.hots",
            "unknown key (known keys here: `host`, `port`, `client_id`, `username`, `password`, \
             `password_file`, `protocol`, `keep_alive_secs`, `clean_start`, \
             `session_expiry_secs`, `max_packet_size`, `inflight`, `connect_timeout_secs`, \
             `backoff_increment_ms`, `backoff_max_ms`, `status_topic`, `tls`)"
                .into(),
        ),
        (
            format!("{head}{route}[loging]\nlevel = \"info\"\n"),
            vec![],
            "loging",
            "unknown key (known keys here: `bayeux`, `mqtt`, `bridge`, `log`, `http`, `replay`, `spool`, `cluster`, `route`)"
                .into(),
        ),
        (
            format!("{head}port = \"abc\"\n{route}"),
            vec![],
            "mqtt.port",
            "expected an integer, found string \"abc\"".into(),
        ),
        (
            format!("{head}port = 70000\n{route}"),
            vec![],
            "mqtt.port",
            "expected an unsigned 16 bit integer, found 64-bit unsigned integer `70000`".into(),
        ),
        (
            format!("{head}port = 0\n{route}"),
            vec![],
            "mqtt.port",
            "must be at least 1, found 0".into(),
        ),
        (
            format!("{head}protocol = \"4\"\n{route}"),
            vec![],
            "mqtt.protocol",
            "expected one of \"5\", \"3.1.1\", found \"4\"".into(),
        ),
        (
            format!(
                "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\ntransport = \"ws\"\n\
                 [mqtt]\nhost = \"h\"\n{route}"
            ),
            vec![],
            "bayeux.transport",
            "expected one of \"auto\", \"websocket\", \"long-polling\", \"callback-polling\", \
             found \"ws\""
                .into(),
        ),
        (
            format!("[mqtt]\nhost = \"h\"\n{route}"),
            vec![],
            "bayeux",
            "required section [bayeux] is missing".into(),
        ),
        (
            format!("[bayeux]\n[mqtt]\nhost = \"h\"\n{route}"),
            vec![],
            "bayeux.url",
            "required key is missing".into(),
        ),
        (
            format!("[bayeux]\nurl = \"ws://x/cometd\"\n[mqtt]\nhost = \"h\"\n{route}"),
            vec![],
            "bayeux.url",
            "must be an http:// or https:// URL, found ws://".into(),
        ),
        (
            format!("[bayeux]\nurl = \"http://x/c\"\n[mqtt]\nhost = \"mqtt://broker\"\n{route}"),
            vec![],
            "mqtt.host",
            "must be a host name or IP address, not a URL (set mqtt.port and [mqtt.tls] apart)"
                .into(),
        ),
        (
            head.to_owned(),
            vec![],
            "route",
            "at least one [[route]] is required; the bridge would forward nothing".into(),
        ),
        (
            format!("{head}{route}{route}qos = 3\n"),
            vec![],
            "route[2].qos",
            "must be 0, 1 or 2, found 3".into(),
        ),
        (
            format!("{head}{route}[[route]]\nbayeux = \"/b\"\nmqtt = \"b\"\ndirection = \"up\"\n"),
            vec![],
            "route[2].direction",
            "expected one of \"bayeux_to_mqtt\", \"mqtt_to_bayeux\", \"both\", found \"up\"".into(),
        ),
        (
            format!("{head}{route}[[route]]\nbayeux = \"/b\"\nmqtt = \"b\"\n"),
            vec![],
            "route[2].direction",
            "required key is missing".into(),
        ),
        (
            format!(
                "{head}{route}[[route]]\nbayeux = \"/b/*\"\nmqtt = \"b/#\"\ndirection = \"both\"\n"
            ),
            vec![],
            "route[2].mqtt",
            "/b/* ends in `*` (exactly one segment), which corresponds to `+`, not `#`".into(),
        ),
        (
            format!(
                "{head}{route}[[route]]\nbayeux = \"/meta/**\"\nmqtt = \"m/#\"\ndirection = \"bayeux_to_mqtt\"\n"
            ),
            vec![],
            "route[2].bayeux",
            "/meta/** is a /meta/ channel: those belong to the Bayeux protocol itself".into(),
        ),
        (
            format!("{head}password = \"pw\"\npassword_file = \"secret\"\n{route}"),
            vec![],
            "mqtt.password_file",
            "set either mqtt.password or mqtt.password_file, not both".into(),
        ),
        (
            format!("{head}password_file = \"{}\"\n{route}", empty.display()),
            vec![],
            "mqtt.password_file",
            format!("{} is empty", empty.display()),
        ),
        (
            format!("{head}password_file = \"missing.pem\"\n{route}"),
            vec![],
            "mqtt.password_file",
            format!("cannot read {missing_text}: No such file or directory (os error 2)"),
        ),
        (
            format!("{head}protocol = \"3.1.1\"\npassword = \"pw\"\n{route}"),
            vec![],
            "mqtt.username",
            "is required with mqtt.password (a password cannot be sent without a user name)"
                .into(),
        ),
        (
            format!("{head}[mqtt.tls]\ncert_file = \"{ca}\"\n{route}"),
            vec![],
            "mqtt.tls.key_file",
            "cert_file and key_file must be set together".into(),
        ),
        (
            format!("{head}[mqtt.tls]\nca_file = \"missing.pem\"\n{route}"),
            vec![],
            "mqtt.tls.ca_file",
            format!("cannot read {missing_text}: No such file or directory (os error 2)"),
        ),
        (
            format!(
                "[bayeux]\nurl = \"http://x/c\"\ntoken_file = \"{ca}\"\nheaders = {{ authorization = \"Basic x\" }}\n[mqtt]\nhost = \"h\"\n{route}"
            ),
            vec![],
            "bayeux.token_file",
            "set either bayeux.headers.authorization or bayeux.token_file, not both".into(),
        ),
        (
            format!(
                "[bayeux]\nurl = \"http://x/c\"\nheaders = {{ \"X Key\" = \"v\" }}\n[mqtt]\nhost = \"h\"\n{route}"
            ),
            vec![],
            "bayeux.headers.X Key",
            "is not a valid HTTP header name".into(),
        ),
        (
            format!("{head}client_id = \"a+b\"\n{route}"),
            vec![],
            "mqtt.status_topic",
            "\"bayeux-mqtt-bridge/a+b/status\" is not a topic name: it holds a wildcard \
             (derived from mqtt.client_id: set mqtt.status_topic)"
                .into(),
        ),
        (
            format!("{head}status_topic = \"\"\n{route}"),
            vec![],
            "mqtt.status_topic",
            "must not be empty (leave the key out for the default)".into(),
        ),
        (
            format!("{head}keep_alive_secs = 0\n{route}"),
            vec![],
            "mqtt.keep_alive_secs",
            "must be at least 5, found 0 with mqtt.protocol = \"5\"".into(),
        ),
        (
            format!("{head}{route}[bridge]\ndrain_timeout_secs = 0\n"),
            vec![],
            "bridge.drain_timeout_secs",
            "must be at least 1, found 0".into(),
        ),
        (
            format!("{head}{route}[log]\nlevel = \"verbose\"\n"),
            vec![],
            "log.level",
            "expected a level (trace, debug, info, warn, error, off) or directives like \
             \"info,bayeux_mqtt_bridge=debug\", found \"verbose\""
                .into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__MQTT__PORT", "eighty")],
            "mqtt.port",
            "expected an integer, found string \"eighty\" (set by environment variable \
             BAYEUX_MQTT_BRIDGE__MQTT__PORT)"
                .into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__MQTT__INFLIGHT", "0")],
            "mqtt.inflight",
            "must be at least 1, found 0 (set by environment variable \
             BAYEUX_MQTT_BRIDGE__MQTT__INFLIGHT)"
                .into(),
        ),
        (
            format!("{head}[replay]\nstart_from = 5\n{route}"),
            vec![],
            "replay.start_from",
            "must be -1 (new events only) or -2 (all retained), found 5".into(),
        ),
        (
            format!("{head}[replay]\ncheckpoint_interval_ms = 1\n{route}"),
            vec![],
            "replay.checkpoint_interval_ms",
            "must be at least 10, found 1".into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__REPLAY__ON_INVALID", "skip")],
            "replay.on_invalid",
            "expected one of \"latest\", \"earliest\", \"stop\", found \"skip\" (set by \
             environment variable BAYEUX_MQTT_BRIDGE__REPLAY__ON_INVALID)"
                .into(),
        ),
        (
            format!("{head}[spool]\nmax_bytes = 1048575\n{route}"),
            vec![],
            "spool.max_bytes",
            "must be at least 1048576, found 1048575".into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__SPOOL__MAX_BYTES", "1125899906842625")],
            "spool.max_bytes",
            "must be at most 1125899906842624 (1 PiB), found 1125899906842625 (set by \
             environment variable BAYEUX_MQTT_BRIDGE__SPOOL__MAX_BYTES)"
                .into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__SPOOL__ENABLED", "maybe")],
            "spool.enabled",
            "expected a boolean, found string \"maybe\" (set by environment variable \
             BAYEUX_MQTT_BRIDGE__SPOOL__ENABLED)"
                .into(),
        ),
        (
            format!("{head}[spool]\nmax_size = 5\n{route}"),
            vec![],
            "spool.max_size",
            "unknown key (known keys here: `enabled`, `dir`, `max_bytes`)".into(),
        ),
        (
            format!("{head}{route}payload = \"payload\"\n"),
            vec![],
            "route[1].payload",
            "expected \"data\", \"message\" or a JSON pointer (RFC 6901) such as \
             \"/payload\", found \"payload\""
                .into(),
        ),
        (
            format!("{head}{route}payload = \"/a~2b\"\n"),
            vec![],
            "route[1].payload",
            "\"/a~2b\" is not a JSON pointer (RFC 6901): '~' must be followed by 0 or 1 \
             (\"~0\" stands for '~', \"~1\" for '/')"
                .into(),
        ),
        (
            format!("{head}[bridge]\ndead_letter_topic = \"a/dead\"\n{route}"),
            vec![],
            "bridge.dead_letter_topic",
            "\"a/dead\" is read by route[1] (mqtt = \"a/+\"): the bridge would forward its \
             own dead letters; choose a topic no route subscribes to"
                .into(),
        ),
        (
            format!("{head}{route}dead_letter_topic = \"dead/#\"\n"),
            vec![],
            "route[1].dead_letter_topic",
            "\"dead/#\" is not a topic name: it holds a wildcard".into(),
        ),
        (
            format!("{head}{route}"),
            vec![("BAYEUX_MQTT_BRIDGE__ROUTE__0__QOS", "2")],
            "route",
            "routes cannot be set from the environment (BAYEUX_MQTT_BRIDGE__ROUTE__0__QOS); \
             write them as [[route]] tables in the file"
                .into(),
        ),
        (
            format!("{head}{route}name = \"orders\"\n{route}name = \"orders\"\n"),
            vec![],
            "route[2].name",
            "route[1] and route[2] have the same name; names must be unique (a route without \
             `name` is called route[<n>])"
                .into(),
        ),
        (
            format!("{head}{route}{route}name = \"route[1]\"\n"),
            vec![],
            "route[2].name",
            "route[1] and route[2] have the same name; names must be unique (a route without \
             `name` is called route[<n>])"
                .into(),
        ),
        (
            format!("{head}{route}name = \"all\"\n"),
            vec![],
            "route[1].name",
            "\"all\" is reserved: the metrics use route=\"all\" with http.per_route_metrics = \
             false and route=\"none\" for messages no route took"
                .into(),
        ),
        (
            format!("{head}{route}name = \"\"\n"),
            vec![],
            "route[1].name",
            "must not be empty (leave the key out for route[<n>])".into(),
        ),
    ];
    for (i, (content, vars, key, reason)) in table.into_iter().enumerate() {
        let path = scratch.file(&format!("bad-{i}.toml"), &content);
        let err = match check(&path, &vars) {
            Ok(_) => panic!("case {i} loaded:\n{content}"),
            Err(err) => err,
        };
        assert_eq!(err.file, path, "case {i}");
        assert_eq!(
            err.to_string(),
            format!("{}: {key}: {reason}", path.display()),
            "case {i}:\n{content}"
        );
    }
}

#[test]
fn toml_syntax_errors_give_the_position_but_not_the_line() {
    let scratch = TempDir::new("config");
    let path = scratch.file(
        "syntax.toml",
        "[bayeux]\nurl = \"http://x/c\"\n[mqtt]\nhost = \"h\"\npassword = \"s3cret\n",
    );
    let err = load_with_env(&path, []).unwrap_err();
    assert_eq!(err.key, None);
    assert!(
        err.reason
            .starts_with("TOML parse error at line 5, column 19"),
        "{err}"
    );
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[test]
fn a_missing_file_is_reported_with_its_path() {
    let err = load_with_env(Path::new("/nonexistent/bridge.toml"), []).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/nonexistent/bridge.toml: cannot read the file: No such file or directory (os error 2)"
    );
}

#[test]
fn environment_variables_override_keys() {
    let scratch = TempDir::new("config");
    let pki = Pki::generate();
    let ca = &pki.ca;
    let path = scratch.file(
        "env.toml",
        MINIMAL.replace(
            "[mqtt]",
            "headers = { \"X-Api-Key\" = \"from-file\", \"X-Other\" = \"o\" }\n\n[mqtt]",
        ),
    );
    let config = load_with_env(
        &path,
        env(&[
            ("BAYEUX_MQTT_BRIDGE__MQTT__HOST", "broker.internal"),
            ("BAYEUX_MQTT_BRIDGE__MQTT__PORT", "8883"),
            ("bayeux_mqtt_bridge__mqtt__clean_start", "true"),
            ("BAYEUX_MQTT_BRIDGE__MQTT__PROTOCOL", "3.1.1"),
            (
                "BAYEUX_MQTT_BRIDGE__MQTT__TLS__CA_FILE",
                ca.to_str().unwrap(),
            ),
            (
                "BAYEUX_MQTT_BRIDGE__BAYEUX__URL",
                "https://cometd.example/cometd",
            ),
            ("BAYEUX_MQTT_BRIDGE__BAYEUX__HEADERS__X_API_KEY", "from-env"),
            ("BAYEUX_MQTT_BRIDGE__LOG__FORMAT", "json"),
            // Empty variables are ignored (compose files pass unset ones as empty).
            ("BAYEUX_MQTT_BRIDGE__LOG__LEVEL", ""),
            // Not ours: a single underscore after the prefix.
            ("BAYEUX_MQTT_BRIDGE_MQTT__PORT", "1"),
        ]),
    )
    .unwrap();
    assert_eq!(config.mqtt.host, "broker.internal");
    assert_eq!(config.mqtt.port, 8883);
    assert!(config.mqtt.clean_start);
    assert_eq!(config.mqtt.protocol, MqttProtocol::V311);
    assert_eq!(
        config.mqtt.tls.unwrap().ca_file.as_deref(),
        Some(ca.as_path())
    );
    assert_eq!(config.bayeux.url.as_str(), "https://cometd.example/cometd");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "info");
    // The variable's header replaces the file's spelling of the same header.
    let headers: Vec<(String, String)> = config.bayeux.header_pairs();
    assert_eq!(
        headers,
        [
            ("X-Other".to_owned(), "o".to_owned()),
            ("x-api-key".to_owned(), "from-env".to_owned())
        ]
    );
    assert_eq!(config.route[0].direction, Direction::BayeuxToMqtt);
}

#[test]
fn the_spool_section_defaults_resolves_relative_dirs_and_takes_environment_overrides() {
    let scratch = TempDir::new("config");
    let path = scratch.file("plain.toml", MINIMAL);
    let config = load_with_env(&path, []).unwrap();
    assert!(!config.spool.enabled);
    assert_eq!(
        config.spool.dir,
        Path::new("/var/lib/bayeux-mqtt-bridge/spool")
    );
    assert_eq!(config.spool.max_bytes, 1 << 30);

    let path = scratch.file(
        "spool.toml",
        format!("{MINIMAL}\n[spool]\nenabled = true\ndir = \"queue\"\nmax_bytes = 2097152\n"),
    );
    let config = load_with_env(&path, []).unwrap();
    assert!(config.spool.enabled);
    assert_eq!(config.spool.dir, scratch.path().join("queue"));
    assert_eq!(config.spool.max_bytes, 2 << 20);

    // Environment values are strings: booleans and integers are parsed from them.
    let config = load_with_env(
        &path,
        env(&[
            ("BAYEUX_MQTT_BRIDGE__SPOOL__ENABLED", "false"),
            ("BAYEUX_MQTT_BRIDGE__SPOOL__DIR", "/srv/spool"),
            ("BAYEUX_MQTT_BRIDGE__SPOOL__MAX_BYTES", "5368709120"),
        ]),
    )
    .unwrap();
    assert!(!config.spool.enabled);
    assert_eq!(config.spool.dir, Path::new("/srv/spool"));
    assert_eq!(config.spool.max_bytes, 5 << 30);
    let plain = scratch.file("plain.toml", MINIMAL);
    let config = load_with_env(
        &plain,
        env(&[("BAYEUX_MQTT_BRIDGE__SPOOL__ENABLED", "true")]),
    )
    .unwrap();
    assert!(config.spool.enabled);
}

#[test]
fn the_quickstart_config_takes_its_ports_from_the_environment() {
    let config = load_with_env(
        &repo_file("config/quickstart.toml"),
        env(&[
            (
                "BAYEUX_MQTT_BRIDGE__BAYEUX__URL",
                "http://127.0.0.1:41234/cometd",
            ),
            ("BAYEUX_MQTT_BRIDGE__MQTT__PORT", "41235"),
        ]),
    )
    .unwrap();
    assert_eq!(config.bayeux.url.port(), Some(41234));
    assert_eq!(config.mqtt.port, 41235);
    assert_eq!(
        config.mqtt.status_topic,
        "bayeux-mqtt-bridge/bayeux-mqtt-bridge-quickstart/status"
    );
}

#[test]
fn secret_files_become_the_password_and_a_bearer_header() {
    let scratch = TempDir::new("config");
    scratch.file("token", "  tok-123\n");
    scratch.file("mqtt-password", "pw-456\n");
    // Relative paths are relative to the config file's directory.
    let path = scratch.file(
        "secrets.toml",
        MINIMAL
            .replace("[mqtt]", "token_file = \"token\"\n\n[mqtt]")
            .replace(
                "host = \"127.0.0.1\"",
                "host = \"127.0.0.1\"\nusername = \"u\"\npassword_file = \"mqtt-password\"",
            ),
    );
    let config = load_with_env(&path, []).unwrap();
    assert_eq!(config.mqtt.password.as_ref().unwrap().expose(), "pw-456");
    assert_eq!(
        config.bayeux.header_pairs(),
        [("Authorization".to_owned(), "Bearer tok-123".to_owned())]
    );
    assert_eq!(config.bayeux.token_file, Some(scratch.path().join("token")));
}

/// A secret file is read with a cap: `/dev/zero` (or a wrong path to a huge file) is a
/// config error naming the key, not an allocation without end.
#[test]
fn an_endless_or_huge_secret_file_is_refused_not_read_whole() {
    let scratch = TempDir::new("config");
    scratch.file("token", "t".repeat(64 * 1024 + 1));
    for (line, key) in [
        ("token_file = \"/dev/zero\"", "bayeux.token_file"),
        ("token_file = \"token\"", "bayeux.token_file"),
    ] {
        let path = scratch.file(
            "huge.toml",
            MINIMAL.replace("[mqtt]", &format!("{line}\n\n[mqtt]")),
        );
        let error = load_with_env(&path, []).unwrap_err().to_string();
        assert!(error.contains(key), "{line}: {error}");
        assert!(error.contains("larger than 65536 bytes"), "{line}: {error}");
    }
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let scratch = TempDir::new("config");
    scratch.file("token", "tok-secret-1\n");
    let path = scratch.file(
        "secrets.toml",
        MINIMAL
            .replace(
                "url = \"http://127.0.0.1:8080/cometd\"",
                "url = \"https://user:url-secret-2@x.example/cometd?key=url-secret-3\"\n\
                 token_file = \"token\"\nheaders = { \"X-Api-Key\" = \"hdr-secret-4\" }",
            )
            .replace(
                "host = \"127.0.0.1\"",
                "host = \"h\"\nusername = \"u\"\npassword = \"pw-secret-5\"",
            ),
    );
    let config = load_with_env(&path, []).unwrap();
    let debug = format!("{config:?} {config:#?}");
    for secret in [
        "tok-secret-1",
        "url-secret-2",
        "url-secret-3",
        "hdr-secret-4",
        "pw-secret-5",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("<redacted>"));

    // [bayeux.oauth]: the secrets, and credentials in the token URL.
    scratch.file("client-secret", "oauth-secret-6\n");
    let path = scratch.file(
        "oauth.toml",
        MINIMAL.replace(
            "[mqtt]",
            "[bayeux.oauth]\n\
             token_url = \"https://u:tok-url-secret-7@login.example/token?key=tok-url-secret-8\"\n\
             grant = \"refresh_token\"\nclient_id = \"c\"\nclient_secret_file = \"client-secret\"\n\
             refresh_token = \"refresh-secret-9\"\n\n[mqtt]",
        ),
    );
    let config = load_with_env(&path, []).unwrap();
    let debug = format!("{config:?} {config:#?}");
    for secret in [
        "oauth-secret-6",
        "tok-url-secret-7",
        "tok-url-secret-8",
        "refresh-secret-9",
    ] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    assert!(debug.contains("login.example/token"), "{debug}");
}

#[test]
fn load_reads_the_process_environment() {
    let path = repo_file("config/quickstart.toml");
    // SAFETY (edition 2024 makes set_var unsafe): every environment access in this test
    // binary goes through std, which serialises it; only this test calls `load`.
    unsafe { std::env::set_var("BAYEUX_MQTT_BRIDGE__BRIDGE__QUEUE_CAPACITY", "7") };
    let config = load(&path);
    unsafe { std::env::remove_var("BAYEUX_MQTT_BRIDGE__BRIDGE__QUEUE_CAPACITY") };
    assert_eq!(config.unwrap().bridge.queue_capacity, 7);
}

/// Runs `check` and the daemon on `path`; both must refuse it with exit 2 and the same
/// `error: <file>: <key>: <reason>` line, which is returned. A daemon that starts instead
/// (it would run until stopped) is killed after a deadline and the test fails.
fn refused_alike(path: &Path) -> String {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let check = common::bridge::check(path);
    assert_eq!(
        check.status.code(),
        Some(2),
        "check did not refuse {}: {}{}",
        path.display(),
        check.stdout,
        check.stderr
    );
    let mut daemon = std::process::Command::new(common::bridge::BINARY)
        .arg("--config")
        .arg(path)
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run the daemon: {e}"));
    // A refused config exits at once; polling is the only way to bound the wait for a child
    // process without a runtime.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            panic!(
                "the daemon started on {} instead of refusing it",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut daemon_err = String::new();
    let _ = daemon
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut daemon_err));
    assert_eq!(
        status.code(),
        Some(2),
        "the daemon did not refuse {} at start: {daemon_err}",
        path.display()
    );
    assert_eq!(check.stderr.trim(), daemon_err.trim(), "{}", path.display());
    check.stderr.trim().to_owned()
}

#[test]
fn check_and_the_daemon_refuse_the_same_configs_with_the_same_message() {
    let scratch = TempDir::new("config");
    let ec_key = scratch.file(
        "ec-key.pem",
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    let head = "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n[mqtt]\nhost = \"127.0.0.1\"\n";
    let route = "[[route]]\nbayeux = \"/a\"\nmqtt = \"a\"\ndirection = \"both\"\n";
    // The largest integer TOML holds; as seconds it overflows `Instant` arithmetic.
    let max = i64::MAX;
    let cases: Vec<(String, &str, String)> = vec![
        (
            format!("{head}keep_alive_secs = 3\n{route}"),
            "mqtt.keep_alive_secs",
            "must be at least 5, found 3 with mqtt.protocol = \"5\"".into(),
        ),
        (
            format!("{head}password = \"pw\"\n{route}"),
            "mqtt.username",
            "is required with mqtt.password (a password cannot be sent without a user name)".into(),
        ),
        (
            format!("{head}connect_timeout_secs = {max}\n{route}"),
            "mqtt.connect_timeout_secs",
            format!("must be at most 3600, found {max}"),
        ),
        (
            format!("{head}backoff_max_ms = {max}\n{route}"),
            "mqtt.backoff_max_ms",
            format!("must be at most 3600000, found {max}"),
        ),
        (
            head.replace("[mqtt]", &format!("max_network_delay_secs = {max}\n[mqtt]")) + route,
            "bayeux.max_network_delay_secs",
            format!("must be at most 3600, found {max}"),
        ),
        (
            head.replace("[mqtt]", "backoff_increment_ms = 3600001\n[mqtt]") + route,
            "bayeux.backoff_increment_ms",
            "must be at most 3600000, found 3600001".into(),
        ),
        (
            head.replace("[mqtt]", &format!("max_response_bytes = {max}\n[mqtt]")) + route,
            "bayeux.max_response_bytes",
            format!("must be at most 1073741824, found {max}"),
        ),
        (
            format!("{head}{route}[bridge]\ndrain_timeout_secs = {max}\n"),
            "bridge.drain_timeout_secs",
            format!("must be at most 3600, found {max}"),
        ),
        (
            format!("{head}{route}[bridge]\nqueue_capacity = {max}\n"),
            "bridge.queue_capacity",
            format!("must be at most 1000000, found {max}"),
        ),
        (
            format!("{head}{route}[replay]\ncheckpoint_interval_ms = {max}\n"),
            "replay.checkpoint_interval_ms",
            format!("must be at most 3600000, found {max}"),
        ),
        (
            head.replace(
                "[mqtt]",
                &format!(
                    "[bayeux.oauth]\ntoken_url = \"http://127.0.0.1/token\"\n\
                     grant = \"jwt_bearer\"\nclient_id = \"c\"\nusername = \"u\"\n\
                     private_key_file = \"{}\"\n[mqtt]",
                    ec_key.display()
                ),
            ) + route,
            "bayeux.oauth.private_key_file",
            "the private key: not a usable RSA key".into(),
        ),
    ];
    for (i, (content, key, reason)) in cases.into_iter().enumerate() {
        let path = scratch.file(&format!("refused-{i}.toml"), &content);
        let message = refused_alike(&path);
        let expected = format!("error: {}: {key}: {reason}", path.display());
        assert!(
            message.starts_with(&expected),
            "case {i}: expected {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn credentials_over_plain_http_to_another_host_are_refused_unless_allowed() {
    let scratch = TempDir::new("config");
    let token = scratch.file("token", "tok\n");
    let route = "[[route]]\nbayeux = \"/a\"\nmqtt = \"a\"\ndirection = \"both\"\n";
    let bayeux = |url: &str, extra: &str| {
        format!("[bayeux]\nurl = \"{url}\"\n{extra}\n[mqtt]\nhost = \"h\"\n{route}")
    };
    let oauth = |token_url: &str| {
        format!(
            "[bayeux.oauth]\ntoken_url = \"{token_url}\"\ngrant = \"client_credentials\"\n\
             client_id = \"c\"\nclient_secret = \"s\"\n"
        )
    };
    let refused = "is plain http:// to a host that is not loopback: anyone on the path could \
                   read and reuse the credentials. Use https://, or set \
                   bayeux.allow_cleartext_credentials = true if the network is trusted";
    let token_line = format!("token_file = \"{}\"", token.display());
    let bad = [
        (
            bayeux(
                "http://bayeux.example/cometd",
                "headers = { X-Api-Key = \"k\" }",
            ),
            "bayeux.url",
            format!("{refused} (bayeux.headers.X-Api-Key is sent)"),
        ),
        (
            bayeux("http://10.0.0.1/cometd", &token_line),
            "bayeux.url",
            format!("{refused} (bayeux.token_file is sent)"),
        ),
        (
            bayeux("http://u:p@bayeux.example/cometd", ""),
            "bayeux.url",
            format!("{refused} (the URL's user or password is sent)"),
        ),
        (
            bayeux(
                "http://bayeux.example/cometd",
                &oauth("https://login.example/token"),
            ),
            "bayeux.url",
            format!("{refused} (the token of [bayeux.oauth] is sent)"),
        ),
        (
            bayeux(
                "https://bayeux.example/cometd",
                &oauth("http://login.example/token"),
            ),
            "bayeux.oauth.token_url",
            format!("{refused} (the grant's secrets are sent)"),
        ),
    ];
    for (i, (content, key, reason)) in bad.into_iter().enumerate() {
        let path = scratch.file(&format!("cleartext-{i}.toml"), &content);
        let message = refused_alike(&path);
        assert_eq!(
            message,
            format!("error: {}: {key}: {reason}", path.display()),
            "case {i}"
        );
        // The key that allows it.
        let allowed = content.replace("[mqtt]", "allow_cleartext_credentials = true\n[mqtt]");
        let allowed = allowed.replacen(
            "[bayeux.oauth]",
            "allow_cleartext_credentials = true\n[bayeux.oauth]",
            1,
        );
        // In a [bayeux.oauth] case the key went before the sub-table; drop the copy after it.
        let allowed = if allowed.contains("[bayeux.oauth]") {
            let (head, tail) = allowed.split_once("[bayeux.oauth]").unwrap();
            format!(
                "{head}[bayeux.oauth]{}",
                tail.replace("allow_cleartext_credentials = true\n", "")
            )
        } else {
            allowed
        };
        let path = scratch.file(&format!("cleartext-allowed-{i}.toml"), &allowed);
        load_with_env(&path, []).unwrap_or_else(|e| panic!("case {i}: {e}\n{allowed}"));
    }
    // Loopback, https, and plain http without credentials are fine.
    for (i, content) in [
        bayeux("http://localhost:8080/cometd", &token_line),
        bayeux("http://127.0.0.7/cometd", "headers = { X-Api-Key = \"k\" }"),
        bayeux("http://[::1]:8080/cometd", &oauth("http://127.0.0.1/token")),
        bayeux("https://bayeux.example/cometd", &token_line),
        bayeux("http://bayeux.example/cometd", ""),
    ]
    .into_iter()
    .enumerate()
    {
        let path = scratch.file(&format!("fine-{i}.toml"), &content);
        load_with_env(&path, []).unwrap_or_else(|e| panic!("case {i}: {e}\n{content}"));
    }
}

#[test]
fn bayeux_tls_files_are_read_relative_to_the_config_and_bad_pem_is_refused_at_start() {
    let pki = Pki::generate();
    let scratch = TempDir::new("config");
    std::fs::copy(&pki.ca, scratch.path().join("ca.pem")).unwrap();
    std::fs::copy(&pki.client.cert, scratch.path().join("client.pem")).unwrap();
    std::fs::copy(&pki.client.key, scratch.path().join("client-key.pem")).unwrap();
    let not_pem = scratch.file("not-pem.pem", "hello\n");
    let with_tls = |tls: &str| MINIMAL.replace("[mqtt]", &format!("[bayeux.tls]\n{tls}\n\n[mqtt]"));
    let path = scratch.file(
        "good.toml",
        with_tls("ca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client-key.pem\""),
    );
    let config = load_with_env(&path, []).unwrap();
    let tls = config.bayeux.tls.unwrap();
    assert_eq!(tls.ca_file, Some(scratch.path().join("ca.pem")));
    assert_eq!(tls.key_file, Some(scratch.path().join("client-key.pem")));
    let bad = [
        (
            with_tls("ca_file = \"not-pem.pem\""),
            "bayeux.tls.ca_file",
            format!("{}: no PEM certificate in the file", not_pem.display()),
        ),
        (
            with_tls(
                "ca_file = \"ca.pem\"\ncert_file = \"not-pem.pem\"\nkey_file = \"client-key.pem\"",
            ),
            "bayeux.tls.cert_file",
            format!("{}: no PEM certificate in the file", not_pem.display()),
        ),
        (
            with_tls("cert_file = \"client.pem\"\nkey_file = \"not-pem.pem\""),
            "bayeux.tls.key_file",
            format!("{}: no usable private key: ", not_pem.display()),
        ),
        (
            with_tls("cert_file = \"client.pem\""),
            "bayeux.tls.key_file",
            "cert_file and key_file must be set together".to_owned(),
        ),
    ];
    for (i, (content, key, reason)) in bad.into_iter().enumerate() {
        let path = scratch.file(&format!("bad-tls-{i}.toml"), &content);
        let message = refused_alike(&path);
        let expected = format!("error: {}: {key}: {reason}", path.display());
        assert!(
            message.starts_with(&expected),
            "case {i}: expected {expected:?}, got {message:?}"
        );
    }
}

#[test]
fn check_prints_the_transport() {
    let scratch = TempDir::new("transport");
    let route = "[[route]]\nbayeux = \"/a/*\"\nmqtt = \"a/+\"\ndirection = \"both\"\n";
    let file = |extra: &str| {
        format!(
            "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n{extra}[mqtt]\nhost = \"h\"\n\
             [spool]\nenabled = false\n{route}"
        )
    };
    let default = scratch.file("default.toml", file(""));
    let out = common::bridge::check(&default);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "transport: auto (WebSocket where the server offers it, else long-polling)\n"
        ),
        "{}",
        out.stdout
    );
    let chosen = scratch.file(
        "ws.toml",
        file("transport = \"websocket\"\njson_comment_filtered = true\n"),
    );
    let out = common::bridge::check(&chosen);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout
            .contains("transport: websocket (WebSocket only); json-comment-filtered offered\n"),
        "{}",
        out.stdout
    );
}

#[test]
fn a_transport_salesforce_lacks_is_warned_about() {
    let scratch = TempDir::new("sf-transport");
    let route = "[[route]]\nbayeux = \"/a/*\"\nmqtt = \"a/+\"\ndirection = \"both\"\n";
    let file = |transport: &str| {
        format!(
            "[bayeux]\nurl = \"https://example.my.salesforce.com/cometd/62.0\"\n\
             max_request_bytes = 32768\ntransport = \"{transport}\"\n\
             [mqtt]\nhost = \"h\"\n{route}"
        )
    };
    let path = scratch.file("ws.toml", file("websocket"));
    let (config, _) = check(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        config.warnings(),
        vec![
            "bayeux.url is a Salesforce endpoint, which offers long-polling only, but \
             bayeux.transport is \"websocket\": the bridge will stop at its first handshake; \
             use \"auto\" or \"long-polling\""
                .to_owned()
        ]
    );
    let path = scratch.file("auto.toml", file("auto"));
    let (config, _) = check(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.warnings(), Vec::<String>::new());
}

#[test]
fn shaping_keys_that_do_nothing_are_warned_about() {
    let scratch = TempDir::new("config");
    let path = scratch.file(
        "shaping.toml",
        r#"
[bayeux]
url = "http://127.0.0.1/cometd"
[mqtt]
host = "h"
protocol = "3.1.1"
[[route]]
bayeux = "/a"
mqtt = "a"
direction = "bayeux_to_mqtt"
properties = true
ext_properties = true
[[route]]
bayeux = "/b"
mqtt = "b"
direction = "mqtt_to_bayeux"
properties = false
"#,
    );
    let config = load_with_env(&path, []).unwrap();
    assert_eq!(
        config.warnings(),
        [
            "route[1].properties = true has no effect with mqtt.protocol = \"3.1.1\", which \
             has no properties",
            "route[1].ext_properties has no effect: the route only forwards Bayeux → MQTT",
            "route[2].properties has no effect: the route only forwards MQTT → Bayeux",
        ]
    );
}

/// Runs `bayeux-mqtt-bridge explain --config <path> <args>` to completion.
fn explain(path: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let output = std::process::Command::new(common::bridge::BINARY)
        .arg("explain")
        .arg("--config")
        .arg(path)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run explain: {e}"));
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn explain_exits_0_when_a_route_applies_1_when_none_does_and_2_on_a_bad_config() {
    let scratch = TempDir::new("config");
    let head = "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n[mqtt]\nhost = \"h\"\n";
    let path = scratch.file(
        "explain.toml",
        format!(
            "{head}[[route]]\nname = \"sensors\"\nbayeux = \"/sensors/*\"\nmqtt = \"s/+\"\n\
             direction = \"both\"\nqos = 2\n"
        ),
    );
    let (code, out, err) = explain(&path, &["--channel", "/sensors/a"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains(
            "route[1] \"sensors\"  applies: /sensors/a → MQTT topic s/a\n  direction both, qos 2"
        ),
        "{out}"
    );
    let (code, out, err) = explain(&path, &["--topic", "s/a/b"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("s/+ takes exactly one level at the `+`"),
        "{out}"
    );
    let (code, out, err) = explain(&path, &["--channel", "/sensors/*"]);
    assert_eq!(code, Some(2), "{out}{err}");
    let (code, _, err) = explain(&path, &["--channel", "/a", "--topic", "a"]);
    assert_eq!(code, Some(2), "{err}");
    let bad = scratch.file(
        "bad.toml",
        format!("{head}[[route]]\nbayeux = \"/a/*\"\nmqtt = \"a/#\"\ndirection = \"both\"\n"),
    );
    let (code, out, err) = explain(&bad, &["--channel", "/a/b"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("route[1].mqtt"), "{err}");
}

#[test]
fn check_and_explain_take_a_file_of_ten_thousand_routes() {
    let scratch = TempDir::new("config");
    let mut text =
        String::from("[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n[mqtt]\nhost = \"h\"\n");
    for i in 1..=10_000 {
        text.push_str(&format!(
            "[[route]]\nbayeux = \"/r/{i}/**\"\nmqtt = \"r/{i}/#\"\ndirection = \"both\"\n"
        ));
    }
    // Two routes that feed each other, for the loop lint.
    text.push_str(
        "[[route]]\nname = \"out\"\nbayeux = \"/loop/**\"\nmqtt = \"l/#\"\n\
         direction = \"bayeux_to_mqtt\"\n\
         [[route]]\nname = \"back\"\nbayeux = \"/loop/in/*\"\nmqtt = \"l/+\"\n\
         direction = \"mqtt_to_bayeux\"\n",
    );
    let path = scratch.file("many.toml", &text);
    let check = common::bridge::check(&path);
    assert_eq!(check.status.code(), Some(0), "{}", check.stderr);
    assert!(
        check.stdout.starts_with("10002 routes:"),
        "{}",
        &check.stdout[..200]
    );
    let warnings: Vec<&str> = check
        .stdout
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(
            "warning: route[10001] \"out\" and route[10002] \"back\" feed each other across \
             directions: /loop/x → l/x (route[10001] \"out\"), then l/x → /loop/in/x"
        ),
        "{warnings:?}"
    );
    let (code, out, err) = explain(&path, &["--topic", "r/9876/a/b"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("route[9876]  applies: r/9876/a/b → Bayeux channel /r/9876/a/b"),
        "{out}"
    );
    assert!(out.ends_with("\n1 route applies.\n"), "{out}");
}

/// `[cluster]` (issue 19): the defaults filled in at load, `check`'s line, and every refusal
/// naming its key, from the one validator `check` and the daemon share.
#[test]
fn cluster_settings_load_print_and_refuse_what_cannot_work() {
    let scratch = TempDir::new("config");
    let with = |name: &str, mqtt_extra: &str, cluster: &str| {
        let text = MINIMAL.replace(
            "host = \"127.0.0.1\"\n",
            &format!("host = \"127.0.0.1\"\nclient_id = \"bridge-a\"\n{mqtt_extra}\n"),
        );
        scratch.file(name, format!("{text}\n[cluster]\n{cluster}\n"))
    };
    let path = with("ok.toml", "", "group = \"orders\"\n");
    let config = load_with_env(&path, []).unwrap();
    let cluster = config.cluster.as_ref().unwrap();
    assert_eq!(
        cluster.member_id, "bridge-a",
        "member_id defaults to mqtt.client_id"
    );
    assert_eq!(cluster.mode.as_str(), "active_standby");
    assert!(!cluster.hot_standby);
    assert_eq!(
        config.mqtt.status_topic, "bayeux-mqtt-bridge/cluster/orders/members/bridge-a",
        "the status topic is the member record"
    );
    let out = common::bridge::check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "cluster: group \"orders\", member \"bridge-a\", mode active_standby, hot_standby \
             false; member record and status topic \
             bayeux-mqtt-bridge/cluster/orders/members/bridge-a (cleared by the last will), \
             members seen on bayeux-mqtt-bridge/cluster/orders/members/+; MQTT → Bayeux routes \
             subscribe through $share/orders/<filter>"
        ),
        "{}",
        out.stdout
    );
    let path = with(
        "partitioned.toml",
        "",
        "group = \"orders\"\nmember_id = \"m-2\"\nmode = \"partitioned\"\n",
    );
    let config = load_with_env(&path, []).unwrap();
    assert_eq!(
        config.cluster.as_ref().unwrap().mode.as_str(),
        "partitioned"
    );
    assert!(config.mqtt.status_topic.ends_with("/members/m-2"));

    let refused = [
        (
            "v311.toml",
            "protocol = \"3.1.1\"",
            "group = \"g\"",
            "mqtt.protocol",
            "needs MQTT 5",
        ),
        (
            "group.toml",
            "",
            "group = \"a/b\"",
            "cluster.group",
            "letters, digits",
        ),
        (
            "share.toml",
            "",
            "group = \"a+\"",
            "cluster.group",
            "letters, digits",
        ),
        (
            "member.toml",
            "",
            "group = \"g\"\nmember_id = \"x#\"",
            "cluster.member_id",
            "letters, digits",
        ),
        (
            "status.toml",
            "status_topic = \"mine/status\"",
            "group = \"g\"",
            "mqtt.status_topic",
            "the member's record",
        ),
        (
            "hot.toml",
            "",
            "group = \"g\"\nhot_standby = true",
            "cluster.hot_standby",
            "not supported yet",
        ),
        (
            "mode.toml",
            "",
            "group = \"g\"\nmode = \"both\"",
            "cluster.mode",
            "expected one of",
        ),
        (
            "nogroup.toml",
            "",
            "mode = \"partitioned\"",
            "cluster",
            "group",
        ),
    ];
    for (name, mqtt_extra, cluster, key, reason) in refused {
        let path = with(name, mqtt_extra, cluster);
        let error = load_with_env(&path, []).unwrap_err().to_string();
        assert!(
            error.contains(key) && error.contains(reason),
            "{name}: {error}"
        );
        let out = common::bridge::check(&path);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", out.stdout);
    }
    // A client id that cannot be a member id is named as the default's source.
    let text = MINIMAL.replace(
        "host = \"127.0.0.1\"\n",
        "host = \"127.0.0.1\"\nclient_id = \"a b\"\n",
    );
    let path = scratch.file("client.toml", format!("{text}\n[cluster]\ngroup = \"g\"\n"));
    let error = load_with_env(&path, []).unwrap_err().to_string();
    assert!(error.contains("taken from mqtt.client_id"), "{error}");
}

//! Range and cross-field checks on a deserialized [`Config`], and warnings about valid but
//! doubtful settings. Pure, except that referenced TLS files must hold usable PEM and the log
//! directory must exist.
//!
//! Every number has an upper bound as well as a lower one (see the `MAX_*` constants and
//! docs/configuration.md): a time near `u64::MAX` would overflow `Duration`/`Instant`
//! arithmetic at run time, and a size that large is a typo.

use std::net::{IpAddr, Ipv6Addr};
use std::path::Path;

use url::{Host, Url};

use super::{
    BayeuxConfig, BayeuxTransport, BridgeConfig, Config, Direction, LogConfig, MqttConfig,
    MqttProtocol, OAuthConfig, OAuthGrant, PayloadMode, RouteConfig, TlsConfig,
};

/// The largest MQTT packet the protocol can describe (remaining length 268,435,455 plus a
/// five-byte fixed header).
const MQTT_MAX_PACKET: u32 = 268_435_460;

/// The longest setting in seconds (`*_secs`, except `mqtt.keep_alive_secs` and
/// `mqtt.session_expiry_secs`, which the protocol bounds): one hour.
pub(crate) const MAX_SECS: u64 = 3600;
/// The longest setting in milliseconds (`*_ms`): one hour.
pub(crate) const MAX_MS: u64 = 3_600_000;
/// The largest byte size of an HTTP body (`bayeux.max_response_bytes`,
/// `bayeux.max_request_bytes`): 1 GiB.
pub(crate) const MAX_BODY_BYTES: u64 = 1 << 30;
/// The largest `bridge.queue_capacity`.
pub(crate) const MAX_QUEUE: u64 = 1_000_000;
/// The largest `bayeux.oauth.max_auth_attempts`.
pub(crate) const MAX_AUTH_ATTEMPTS: u64 = 1000;

/// A key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Invalid {
    pub key: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Checks every section; the first problem found is returned.
pub(super) fn validate(config: &Config) -> Result<(), Invalid> {
    bayeux(&config.bayeux)?;
    // Before [mqtt]: a bad group or member id would otherwise read as a bad status topic.
    super::cluster::validate(config)?;
    mqtt(&config.mqtt)?;
    bridge(&config.bridge)?;
    log(&config.log)?;
    replay(&config.replay)?;
    spool(&config.spool)?;
    http(&config.http)?;
    routes(&config.route)?;
    dead_letters(config)
}

/// The largest `http.max_connections`: each connection holds a file descriptor.
const HTTP_MAX_CONNECTIONS: usize = 4096;

fn http(c: &super::HttpConfig) -> Result<(), Invalid> {
    if !(1..=HTTP_MAX_CONNECTIONS).contains(&c.max_connections) {
        return Err(Invalid::new(
            "http.max_connections",
            format!(
                "must be from 1 to {HTTP_MAX_CONNECTIONS}, found {}",
                c.max_connections
            ),
        ));
    }
    Ok(())
}

fn replay(c: &super::ReplayConfig) -> Result<(), Invalid> {
    within(
        "replay.checkpoint_interval_ms",
        c.checkpoint_interval_ms,
        10,
        MAX_MS,
    )?;
    if c.start_from != -1 && c.start_from != -2 {
        return Err(Invalid::new(
            "replay.start_from",
            format!(
                "must be -1 (new events only) or -2 (all retained), found {}",
                c.start_from
            ),
        ));
    }
    Ok(())
}

/// The smallest `spool.max_bytes`: room for a useful backlog of typical messages.
const SPOOL_MIN_BYTES: u64 = 1 << 20;
/// The largest `spool.max_bytes` (1 PiB): more is a typo, not a disk.
const SPOOL_MAX_BYTES: u64 = 1 << 50;

fn spool(c: &super::SpoolConfig) -> Result<(), Invalid> {
    at_least("spool.max_bytes", c.max_bytes, SPOOL_MIN_BYTES)?;
    if c.max_bytes > SPOOL_MAX_BYTES {
        return Err(Invalid::new(
            "spool.max_bytes",
            format!(
                "must be at most {SPOOL_MAX_BYTES} (1 PiB), found {}",
                c.max_bytes
            ),
        ));
    }
    Ok(())
}

fn at_least(key: &str, value: u64, min: u64) -> Result<(), Invalid> {
    if value < min {
        return Err(Invalid::new(
            key,
            format!("must be at least {min}, found {value}"),
        ));
    }
    Ok(())
}

/// `min <= value <= max`.
fn within(key: &str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    at_least(key, value, min)?;
    if value > max {
        return Err(Invalid::new(
            key,
            format!("must be at most {max}, found {value}"),
        ));
    }
    Ok(())
}

fn backoff(section: &str, increment_ms: u64, max_ms: u64) -> Result<(), Invalid> {
    within(
        &format!("{section}.backoff_increment_ms"),
        increment_ms,
        1,
        MAX_MS,
    )?;
    if max_ms > MAX_MS {
        return Err(Invalid::new(
            format!("{section}.backoff_max_ms"),
            format!("must be at most {MAX_MS}, found {max_ms}"),
        ));
    }
    if max_ms < increment_ms {
        return Err(Invalid::new(
            format!("{section}.backoff_max_ms"),
            format!("must be at least backoff_increment_ms ({increment_ms}), found {max_ms}"),
        ));
    }
    Ok(())
}

fn bayeux(c: &BayeuxConfig) -> Result<(), Invalid> {
    http_url("bayeux.url", &c.url)?;
    bayeux_headers(c)?;
    within(
        "bayeux.max_network_delay_secs",
        c.max_network_delay_secs,
        1,
        MAX_SECS,
    )?;
    within(
        "bayeux.max_response_bytes",
        c.max_response_bytes as u64,
        1024,
        MAX_BODY_BYTES,
    )?;
    let request = c.max_request_bytes as u64;
    if request != 0 && !(1024..=MAX_BODY_BYTES).contains(&request) {
        let bound = if request < 1024 {
            "at least 1024".to_owned()
        } else {
            format!("at most {MAX_BODY_BYTES}")
        };
        return Err(Invalid::new(
            "bayeux.max_request_bytes",
            format!("must be 0 (no limit) or {bound}, found {request}"),
        ));
    }
    if let Some(oauth) = &c.oauth {
        self::oauth(oauth)?;
    }
    backoff("bayeux", c.backoff_increment_ms, c.backoff_max_ms)?;
    cleartext(c)?;
    let uses_https = c.url.scheme() == "https"
        || c.oauth
            .as_ref()
            .is_some_and(|o| o.token_url.scheme() == "https");
    if uses_https || c.tls.is_some() {
        let tls = c.tls.clone().unwrap_or_default();
        self::tls("bayeux.tls", &tls)?;
    }
    Ok(())
}

/// An `http://` or `https://` URL with a host.
fn http_url(key: &str, url: &Url) -> Result<(), Invalid> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Invalid::new(
            key,
            format!(
                "must be an http:// or https:// URL, found {}://",
                url.scheme()
            ),
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(key, "has no host"));
    }
    Ok(())
}

/// `bayeux.headers`: valid names, and values a header line can carry.
fn bayeux_headers(c: &BayeuxConfig) -> Result<(), Invalid> {
    for (name, value) in &c.headers {
        let key = format!("bayeux.headers.{name}");
        if !is_header_name(name) {
            return Err(Invalid::new(key, "is not a valid HTTP header name"));
        }
        // The value itself is never quoted: it may be a credential.
        if !value
            .expose()
            .chars()
            .all(|c| c == '\t' || (' '..='~').contains(&c))
        {
            return Err(Invalid::new(
                key,
                "the value may hold only printable ASCII (no line breaks or control characters)",
            ));
        }
    }
    Ok(())
}

/// Refuses credentials over plain HTTP to a host that is not loopback, unless
/// `bayeux.allow_cleartext_credentials` says so.
fn cleartext(c: &BayeuxConfig) -> Result<(), Invalid> {
    if c.allow_cleartext_credentials {
        return Ok(());
    }
    let hint = "is plain http:// to a host that is not loopback: anyone on the path could \
                read and reuse the credentials. Use https://, or set \
                bayeux.allow_cleartext_credentials = true if the network is trusted";
    let in_url = !c.url.username().is_empty() || c.url.password().is_some();
    let what = if let Some(name) = c.headers.keys().next() {
        // token_file has become an Authorization header by now.
        if c.token_file.is_some() && name.eq_ignore_ascii_case("authorization") {
            Some("bayeux.token_file".to_owned())
        } else {
            Some(format!("bayeux.headers.{name}"))
        }
    } else if c.oauth.is_some() {
        Some("the token of [bayeux.oauth]".to_owned())
    } else if in_url {
        Some("the URL's user or password".to_owned())
    } else {
        None
    };
    if let Some(what) = what
        && is_cleartext(&c.url)
    {
        return Err(Invalid::new(
            "bayeux.url",
            format!("{hint} ({what} is sent)"),
        ));
    }
    if let Some(oauth) = &c.oauth
        && is_cleartext(&oauth.token_url)
    {
        return Err(Invalid::new(
            "bayeux.oauth.token_url",
            format!("{hint} (the grant's secrets are sent)"),
        ));
    }
    Ok(())
}

/// `http://` to a host other than 127.0.0.0/8, `::1` or `localhost`.
fn is_cleartext(url: &Url) -> bool {
    if url.scheme() != "http" {
        return false;
    }
    let loopback = match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip == Ipv6Addr::LOCALHOST || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
                || name.ends_with(".localhost")
                || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    };
    !loopback
}

/// A TLS section: `cert_file` and `key_file` together, and every file readable and holding
/// usable PEM (the same code the clients use).
fn tls(section: &str, tls: &TlsConfig) -> Result<(), Invalid> {
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        let missing = if tls.cert_file.is_some() {
            "key_file"
        } else {
            "cert_file"
        };
        return Err(Invalid::new(
            format!("{section}.{missing}"),
            "cert_file and key_file must be set together",
        ));
    }
    for (name, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(path) = file {
            readable_file(path).map_err(|r| Invalid::new(format!("{section}.{name}"), r))?;
        }
    }
    crate::tls::client_config(&tls.files(), &[])
        .map(drop)
        .map_err(|e| Invalid::new(format!("{section}.{}", e.setting), e.to_string()))
}

fn oauth(c: &OAuthConfig) -> Result<(), Invalid> {
    http_url("bayeux.oauth.token_url", &c.token_url)?;
    within(
        "bayeux.oauth.max_auth_attempts",
        c.max_auth_attempts.into(),
        1,
        MAX_AUTH_ATTEMPTS,
    )?;
    grant_keys(c)
}

/// The keys of `[bayeux.oauth]` that its grant requires, and those it does not use.
fn grant_keys(c: &OAuthConfig) -> Result<(), Invalid> {
    let grant = Grant(format!("with grant = {:?}", c.grant.as_str()));
    // A secret read from a file is reported under the key that was written.
    let client_secret = match c.client_secret_file {
        Some(_) => "client_secret_file",
        None => "client_secret",
    };
    let refresh_token = match c.refresh_token_file {
        Some(_) => "refresh_token_file",
        None => "refresh_token",
    };
    match c.grant {
        OAuthGrant::ClientCredentials => {
            grant.required(
                "client_secret",
                c.client_secret.is_some(),
                " (or client_secret_file)",
            )?;
            grant.unused("username", c.username.is_some())?;
            grant.unused("private_key_file", c.private_key_file.is_some())?;
            grant.unused(refresh_token, c.refresh_token.is_some())?;
        }
        OAuthGrant::JwtBearer => {
            grant.required(
                "username",
                c.username.as_deref().is_some_and(|u| !u.is_empty()),
                "",
            )?;
            grant.required("private_key_file", c.private_key.is_some(), "")?;
            if c.audience.is_empty() {
                return Err(Invalid::new("bayeux.oauth.audience", "must not be empty"));
            }
            grant.unused(client_secret, c.client_secret.is_some())?;
            grant.unused(refresh_token, c.refresh_token.is_some())?;
        }
        OAuthGrant::RefreshToken => {
            grant.required(
                "refresh_token",
                c.refresh_token.is_some(),
                " (or refresh_token_file)",
            )?;
            grant.unused("username", c.username.is_some())?;
            grant.unused("private_key_file", c.private_key_file.is_some())?;
        }
    }
    Ok(())
}

/// `with grant = "<name>"`: the reason's tail for a key of `[bayeux.oauth]` that the grant
/// requires or does not use.
struct Grant(String);

impl Grant {
    /// `bayeux.oauth.<name>` must be present (`hint` follows the reason).
    fn required(&self, name: &str, present: bool, hint: &str) -> Result<(), Invalid> {
        if present {
            Ok(())
        } else {
            Err(Invalid::new(
                format!("bayeux.oauth.{name}"),
                format!("is required {}{hint}", self.0),
            ))
        }
    }

    /// `bayeux.oauth.<name>` must be absent.
    fn unused(&self, name: &str, present: bool) -> Result<(), Invalid> {
        if present {
            Err(Invalid::new(
                format!("bayeux.oauth.{name}"),
                format!("is not used {}", self.0),
            ))
        } else {
            Ok(())
        }
    }
}

/// RFC 9110 `token`.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn mqtt(c: &MqttConfig) -> Result<(), Invalid> {
    mqtt_host(&c.host)?;
    at_least("mqtt.port", c.port.into(), 1)?;
    if c.client_id.is_empty() {
        return Err(Invalid::new("mqtt.client_id", "must not be empty"));
    }
    mqtt_string("mqtt.client_id", &c.client_id)?;
    mqtt_credentials(c)?;
    keep_alive(c)?;
    at_least("mqtt.max_packet_size", c.max_packet_size.into(), 1024)?;
    if c.max_packet_size > MQTT_MAX_PACKET {
        return Err(Invalid::new(
            "mqtt.max_packet_size",
            format!(
                "must be at most {MQTT_MAX_PACKET}, found {}",
                c.max_packet_size
            ),
        ));
    }
    at_least("mqtt.inflight", c.inflight.into(), 1)?;
    within(
        "mqtt.connect_timeout_secs",
        c.connect_timeout_secs,
        1,
        MAX_SECS,
    )?;
    backoff("mqtt", c.backoff_increment_ms, c.backoff_max_ms)?;
    status_topic(c)?;
    if let Some(tls) = &c.tls {
        self::tls("mqtt.tls", tls)?;
    }
    Ok(())
}

/// `mqtt.host`: a host name or IP address, not empty and not a URL.
fn mqtt_host(host: &str) -> Result<(), Invalid> {
    let host = host.trim();
    if host.is_empty() {
        return Err(Invalid::new("mqtt.host", "must not be empty"));
    }
    if host.contains("://") {
        return Err(Invalid::new(
            "mqtt.host",
            "must be a host name or IP address, not a URL (set mqtt.port and [mqtt.tls] apart)",
        ));
    }
    if host.contains(|c: char| c.is_whitespace() || c == '/') {
        return Err(Invalid::new(
            "mqtt.host",
            "must be a host name or IP address",
        ));
    }
    Ok(())
}

/// `mqtt.username` and `mqtt.password`: a password only with a user name, both within
/// MQTT's string limits.
fn mqtt_credentials(c: &MqttConfig) -> Result<(), Invalid> {
    if c.password.is_some() && c.username.is_none() {
        // MQTT 3.1.1 forbids it; MQTT 5 allows it, but the client (rumqttc) cannot send it.
        let key = if c.password_file.is_some() {
            "mqtt.password_file"
        } else {
            "mqtt.password"
        };
        return Err(Invalid::new(
            "mqtt.username",
            format!("is required with {key} (a password cannot be sent without a user name)"),
        ));
    }
    if let Some(username) = &c.username {
        mqtt_string("mqtt.username", username)?;
    }
    if let Some(password) = &c.password
        && password.expose().len() > usize::from(u16::MAX)
    {
        return Err(Invalid::new("mqtt.password", "is longer than 65535 bytes"));
    }
    Ok(())
}

/// `mqtt.keep_alive_secs`, whose lower bound depends on `mqtt.protocol`.
fn keep_alive(c: &MqttConfig) -> Result<(), Invalid> {
    // rumqttc's MQTT 5 client needs a keep-alive of at least 5 s (it refuses less).
    let min_keep_alive = match c.protocol {
        MqttProtocol::V5 => 5,
        MqttProtocol::V311 => 1,
    };
    within(
        "mqtt.keep_alive_secs",
        c.keep_alive_secs,
        min_keep_alive,
        u64::from(u16::MAX),
    )
    .map_err(|e| {
        Invalid::new(
            e.key,
            format!("{} with mqtt.protocol = \"{}\"", e.reason, c.protocol),
        )
    })
}

/// `mqtt.status_topic` (set, or derived from `mqtt.client_id`): a topic the bridge may
/// publish to.
fn status_topic(c: &MqttConfig) -> Result<(), Invalid> {
    if let Err(reason) = topic_name(&c.status_topic) {
        let derived = format!("bayeux-mqtt-bridge/{}/status", c.client_id);
        let hint = if c.status_topic == derived {
            " (derived from mqtt.client_id: set mqtt.status_topic)"
        } else {
            ""
        };
        return Err(Invalid::new("mqtt.status_topic", format!("{reason}{hint}")));
    }
    Ok(())
}

/// An MQTT UTF-8 string: at most 65535 bytes, no NUL.
fn mqtt_string(key: &str, value: &str) -> Result<(), Invalid> {
    if value.len() > usize::from(u16::MAX) {
        return Err(Invalid::new(key, "is longer than 65535 bytes"));
    }
    if value.contains('\0') {
        return Err(Invalid::new(key, "must not contain NUL"));
    }
    Ok(())
}

/// An MQTT topic name the bridge may publish to: no wildcards, no NUL, not a `$` topic.
fn topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("must not be empty".into());
    }
    if topic.contains(['+', '#']) {
        return Err(format!(
            "{topic:?} is not a topic name: it holds a wildcard"
        ));
    }
    if topic.contains('\0') {
        return Err("must not contain NUL".into());
    }
    if topic.starts_with('$') {
        return Err(format!(
            "{topic:?} starts with '$', which is reserved for the broker"
        ));
    }
    if topic.len() > usize::from(u16::MAX) {
        return Err("is longer than 65535 bytes".into());
    }
    Ok(())
}

fn readable_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn bridge(c: &BridgeConfig) -> Result<(), Invalid> {
    within(
        "bridge.queue_capacity",
        c.queue_capacity as u64,
        1,
        MAX_QUEUE,
    )?;
    within(
        "bridge.drain_timeout_secs",
        c.drain_timeout_secs,
        1,
        MAX_SECS,
    )
}

fn log(c: &LogConfig) -> Result<(), Invalid> {
    log_level(&c.level).map_err(|r| Invalid::new("log.level", r))?;
    if let Some(file) = &c.file {
        if file.is_dir() {
            return Err(Invalid::new(
                "log.file",
                format!("{} is a directory", file.display()),
            ));
        }
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir
            && !dir.is_dir()
        {
            return Err(Invalid::new(
                "log.file",
                format!("directory {} does not exist", dir.display()),
            ));
        }
    }
    Ok(())
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A level or comma-separated `tracing` directives whose levels are all known names. A bare
/// word is accepted only if it is a level: `inof` would otherwise mean "everything from the
/// target `inof`".
fn log_level(text: &str) -> Result<(), String> {
    let is_level = |s: &str| LEVELS.iter().any(|l| l.eq_ignore_ascii_case(s.trim()));
    let bad = || {
        format!(
            "expected a level ({}) or directives like \"info,bayeux_mqtt_bridge=debug\", \
             found {text:?}",
            LEVELS.join(", ")
        )
    };
    if text.trim().is_empty() {
        return Err(bad());
    }
    for directive in text.split(',') {
        let ok = match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(bad());
        }
    }
    Ok(())
}

fn routes(routes: &[RouteConfig]) -> Result<(), Invalid> {
    if routes.is_empty() {
        return Err(Invalid::new(
            "route",
            "at least one [[route]] is required; the bridge would forward nothing",
        ));
    }
    let mut names = std::collections::HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        if route.qos > 2 {
            return Err(Invalid::new(
                format!("route[{}].qos", i + 1),
                format!("must be 0, 1 or 2, found {}", route.qos),
            ));
        }
        if let PayloadMode::Pointer(pointer) = &route.payload {
            json_pointer(pointer)
                .map_err(|reason| Invalid::new(format!("route[{}].payload", i + 1), reason))?;
        }
        if let Some(name) = &route.name {
            route_name(name)
                .map_err(|reason| Invalid::new(format!("route[{}].name", i + 1), reason))?;
        }
        let name = route
            .name
            .clone()
            .unwrap_or_else(|| format!("route[{}]", i + 1));
        if let Some(first) = names.insert(name, i + 1) {
            let key = match route.name {
                Some(_) => format!("route[{}].name", i + 1),
                None => format!("route[{first}].name"),
            };
            return Err(Invalid::new(
                key,
                format!(
                    "route[{first}] and route[{}] have the same name; names must be unique \
                     (a route without `name` is called route[<n>])",
                    i + 1
                ),
            ));
        }
    }
    Ok(())
}

/// The longest `route[n].name`.
const MAX_ROUTE_NAME: usize = 128;

/// Checks a `route[n].name` as written.
fn route_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty (leave the key out for route[<n>])".into());
    }
    if name.chars().count() > MAX_ROUTE_NAME {
        return Err(format!("is longer than {MAX_ROUTE_NAME} characters"));
    }
    if name.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if name == "all" || name == "none" {
        return Err(format!(
            "{name:?} is reserved: the metrics use route=\"all\" with http.per_route_metrics \
             = false and route=\"none\" for messages no route took"
        ));
    }
    Ok(())
}

/// An RFC 6901 JSON pointer: empty (refused here: that is `"data"`), or `/`-separated tokens
/// in which `~` is only ever followed by `0` or `1`.
fn json_pointer(pointer: &str) -> Result<(), String> {
    let expected = || {
        format!(
            "expected \"data\", \"message\" or a JSON pointer (RFC 6901) such as \"/payload\", \
             found {pointer:?}"
        )
    };
    if !pointer.starts_with('/') {
        return Err(expected());
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(format!(
                "{pointer:?} is not a JSON pointer (RFC 6901): '~' must be followed by 0 or 1 \
                 (\"~0\" stands for '~', \"~1\" for '/')"
            ));
        }
    }
    Ok(())
}

/// Dead-letter topics are topic names the bridge may publish to, and no route reads one
/// (the bridge would forward its own dead letters, and its failures would loop).
fn dead_letters(config: &Config) -> Result<(), Invalid> {
    let bridge = config.bridge.dead_letter_topic.as_deref();
    let mut topics: Vec<(String, &str)> = Vec::new();
    if let Some(topic) = bridge {
        topics.push(("bridge.dead_letter_topic".to_owned(), topic));
    }
    for (i, route) in config.route.iter().enumerate() {
        if let Some(topic) = route.dead_letter_topic.as_deref() {
            topics.push((format!("route[{}].dead_letter_topic", i + 1), topic));
        }
    }
    for (key, topic) in &topics {
        topic_name(topic).map_err(|reason| Invalid::new(key.clone(), reason))?;
        mqtt_string(key, topic)?;
        let reader = config.route.iter().enumerate().find(|(_, r)| {
            r.direction != Direction::BayeuxToMqtt
                && crate::mqtt::filter_matches(&r.mqtt.replace("{1}", "+"), topic)
        });
        if let Some((n, route)) = reader {
            return Err(Invalid::new(
                key.clone(),
                format!(
                    "{topic:?} is read by route[{}] (mqtt = {:?}): the bridge would forward \
                     its own dead letters; choose a topic no route subscribes to",
                    n + 1,
                    route.mqtt
                ),
            ));
        }
    }
    Ok(())
}

/// Message shaping keys that do nothing where they are set.
fn shaping_warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let v311 = config.mqtt.protocol == MqttProtocol::V311;
    for (i, route) in config.route.iter().enumerate() {
        let n = i + 1;
        if route.properties == Some(true) && v311 {
            out.push(format!(
                "route[{n}].properties = true has no effect with mqtt.protocol = \"3.1.1\", \
                 which has no properties"
            ));
        }
        if route.properties.is_some() && route.direction == Direction::MqttToBayeux {
            out.push(format!(
                "route[{n}].properties has no effect: the route only forwards MQTT → Bayeux"
            ));
        }
        if route.ext_properties && route.direction == Direction::BayeuxToMqtt {
            out.push(format!(
                "route[{n}].ext_properties has no effect: the route only forwards Bayeux → MQTT"
            ));
        }
    }
    out
}

/// `[mqtt]` settings that are probably mistakes: a port that does not match the TLS setting,
/// a clean start.
fn mqtt_warnings(mqtt: &MqttConfig) -> Vec<String> {
    let mut out = Vec::new();
    match (&mqtt.tls, mqtt.port) {
        (Some(_), 1883) => out.push(
            "[mqtt.tls] is set but mqtt.port is 1883, the usual plain-text port (TLS is \
             usually 8883)"
                .to_owned(),
        ),
        (None, 8883) => {
            out.push("mqtt.port is 8883, the usual TLS port, but [mqtt.tls] is not set".to_owned())
        }
        _ => {}
    }
    if mqtt.clean_start {
        out.push(
            "mqtt.clean_start = true: messages the broker queued while the bridge was away \
             are discarded at each connect"
                .to_owned(),
        );
    }
    out
}

/// Valid settings that are probably mistakes.
pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let bridge = &config.bridge;
    if bridge.drain_timeout_secs >= 10 {
        out.push(format!(
            "bridge.drain_timeout_secs = {} is not under Docker's default 10 s stop timeout: \
             `docker stop` kills the bridge before it has drained (raise --stop-timeout)",
            bridge.drain_timeout_secs
        ));
    }
    out.extend(mqtt_warnings(&config.mqtt));
    let url = &config.bayeux.url;
    if url
        .host_str()
        .is_some_and(|h| h.ends_with(".salesforce.com"))
        && config.bayeux.max_request_bytes == 0
    {
        out.push(
            "bayeux.url is a Salesforce endpoint but bayeux.max_request_bytes is 0 (no limit): \
             Salesforce refuses requests over 32768 bytes; set bayeux.max_request_bytes = 32768"
                .to_owned(),
        );
    }
    let salesforce = url
        .host_str()
        .is_some_and(|h| h.ends_with(".salesforce.com"));
    if salesforce
        && matches!(
            config.bayeux.transport,
            BayeuxTransport::WebSocket | BayeuxTransport::CallbackPolling
        )
    {
        out.push(format!(
            "bayeux.url is a Salesforce endpoint, which offers long-polling only, but \
             bayeux.transport is \"{}\": the bridge will stop at its first handshake; use \
             \"auto\" or \"long-polling\"",
            config.bayeux.transport
        ));
    }
    out.extend(shaping_warnings(config));
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    if url.scheme() == "http" && !loopback && !config.bayeux.headers.is_empty() {
        out.push(
            "bayeux.url is plain http:// to a remote host: bayeux.headers (and any token) \
             travel unencrypted"
                .to_owned(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_accept_levels_and_directives_only() {
        for ok in [
            "info",
            "DEBUG",
            "warn,bayeux_mqtt_bridge=trace",
            "off",
            "rumqttc=error",
        ] {
            assert!(log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["", "inof", "info,", "bayeux_mqtt_bridge", "a=loud", "=info"] {
            assert!(log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn status_topics_must_be_publishable_names() {
        assert!(topic_name("bayeux-mqtt-bridge/gw/status").is_ok());
        for bad in ["", "a/+/b", "a/#", "$SYS/x", "a\0b"] {
            assert!(topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_http_tokens() {
        assert!(is_header_name("X-Api-Key"));
        assert!(is_header_name("Authorization"));
        assert!(!is_header_name("X Api"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a:b"));
    }

    #[test]
    fn backoff_max_may_not_be_below_the_increment() {
        assert!(backoff("mqtt", 1000, 1000).is_ok());
        let err = backoff("mqtt", 1000, 500).unwrap_err();
        assert_eq!(err.key, "mqtt.backoff_max_ms");
        assert_eq!(
            err.reason,
            "must be at least backoff_increment_ms (1000), found 500"
        );
        assert_eq!(
            backoff("bayeux", 0, 5).unwrap_err().key,
            "bayeux.backoff_increment_ms"
        );
    }
}

//! Reading a configuration: the TOML file, then environment overrides, then secret files and
//! relative paths, then validation. Also turns the `config` crate's errors into
//! [`ConfigError`]s that name the key as written in the file, with routes numbered from 1.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use config::{Environment, File, FileFormat};

use super::validate::{self, Invalid};
use super::{Config, ConfigError, Secret};

/// Prefix of the environment variables that override keys: `BAYEUX_MQTT_BRIDGE__MQTT__HOST`
/// overrides `mqtt.host`.
pub const ENV_PREFIX: &str = "BAYEUX_MQTT_BRIDGE";
/// Separates the prefix and the levels of a key in an environment variable name.
pub const ENV_SEPARATOR: &str = "__";

/// The environment variable that overrides `key` (a dotted path such as `mqtt.tls.ca_file`).
pub fn env_var_for(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for level in key.split('.') {
        name.push_str(ENV_SEPARATOR);
        name.push_str(&level.to_uppercase().replace('-', "_"));
    }
    name
}

/// Reads `path` (TOML) with overrides from the process environment, reads secret files and
/// validates the result. See [`load_with_env`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        // Variables that are not Unicode cannot be ours unless their value is broken.
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) if is_ours(&name) => {
                return Err(ConfigError {
                    file: path.to_owned(),
                    key: None,
                    reason: format!("environment variable {name} is not valid UTF-8"),
                });
            }
            Err(_) => {}
        }
    }
    load_with_env(path, env)
}

/// Like [`load`], with `env` standing in for the process environment (tests use this).
///
/// Steps: parse the file; apply every `BAYEUX_MQTT_BRIDGE__<SECTION>__<KEY>` variable (empty
/// ones are ignored; names are case-insensitive; in `bayeux.headers` names `_` becomes `-`);
/// deserialize, refusing unknown keys; resolve relative paths against the file's directory;
/// fill in `mqtt.status_topic`; read `mqtt.password_file` into `mqtt.password` and
/// `bayeux.token_file` into an `Authorization: Bearer` header; validate.
pub fn load_with_env(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let fail = |key: Option<String>, reason: String| ConfigError {
        file: path.to_owned(),
        key,
        reason,
    };
    let text = crate::files::read_capped_text(path, crate::files::MAX_CONFIG_BYTES)
        .map_err(|e| fail(None, format!("cannot read the file: {e}")))?;
    let overrides = Overrides::from_env(env).map_err(|(k, r)| fail(Some(k), r))?;
    let raw = config::Config::builder()
        .add_source(File::from_str(&text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .separator(ENV_SEPARATOR)
                .source(Some(overrides.vars.clone())),
        )
        .build()
        .map_err(|e| convert(path, e, &overrides))?;
    let mut config: Config = raw
        .try_deserialize()
        .map_err(|e| convert(path, e, &overrides))?;
    let base = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    resolve(&mut config, &base, &overrides)
        .and_then(|()| validate::validate(&config))
        .map_err(|Invalid { key, reason }| fail(Some(key.clone()), overrides.note(&key, reason)))?;
    Ok(config)
}

/// The environment variables that apply, and which key each one sets.
struct Overrides {
    /// Variable name → value, as handed to the `config` crate.
    vars: HashMap<String, String>,
    /// Dotted key (lower case) → variable name, for error messages.
    keys: BTreeMap<String, String>,
}

fn is_ours(name: &str) -> bool {
    let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
    name.len() > prefix.len()
        && name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
}

impl Overrides {
    fn from_env(env: impl IntoIterator<Item = (String, String)>) -> Result<Self, (String, String)> {
        let prefix_len = ENV_PREFIX.len() + ENV_SEPARATOR.len();
        let mut vars = HashMap::new();
        let mut keys = BTreeMap::new();
        for (name, value) in env {
            if !is_ours(&name) {
                continue;
            }
            // Docker and compose files pass unset variables as empty ones.
            if value.is_empty() {
                continue;
            }
            let mut key = name[prefix_len..]
                .to_lowercase()
                .replace(ENV_SEPARATOR, ".");
            let mut var = name.clone();
            if key == "route" || key.starts_with("route.") || key.starts_with("route[") {
                return Err((
                    "route".to_owned(),
                    format!(
                        "routes cannot be set from the environment ({name}); write them as \
                         [[route]] tables in the file"
                    ),
                ));
            }
            if let Some(header) = key.strip_prefix("bayeux.headers.") {
                // Environment variable names cannot hold `-`, header names rarely hold `_`.
                let header = header.replace('_', "-");
                key = format!("bayeux.headers.{header}");
                var = format!(
                    "{ENV_PREFIX}{ENV_SEPARATOR}bayeux{ENV_SEPARATOR}headers{ENV_SEPARATOR}{header}"
                );
            }
            vars.insert(var, value);
            keys.insert(key, name);
        }
        Ok(Overrides { vars, keys })
    }

    /// `reason`, plus which variable set `key` if one did.
    fn note(&self, key: &str, reason: String) -> String {
        match self.keys.get(&key.to_lowercase()) {
            Some(var) => format!("{reason} (set by environment variable {var})"),
            None => reason,
        }
    }
}

/// Turns the `config` crate's error into ours, naming the key as written and routes from 1.
fn convert(path: &Path, error: config::ConfigError, overrides: &Overrides) -> ConfigError {
    let (key, reason) = describe(error);
    let key = key.map(|k| one_based(&k));
    let reason = match &key {
        Some(k) => overrides.note(k, reason),
        None => reason,
    };
    ConfigError {
        file: path.to_owned(),
        key,
        reason,
    }
}

/// (key, reason) of a `config` crate error. Unknown keys are reported by serde as a message
/// ("unknown field `x`, expected one of ...") wrapped with the key of the enclosing table.
fn describe(error: config::ConfigError) -> (Option<String>, String) {
    use config::ConfigError as E;
    match error {
        E::NotFound(key) if !key.contains(['.', '[']) => {
            let reason = format!("required section [{key}] is missing");
            (Some(key), reason)
        }
        E::NotFound(key) => (Some(key), "required key is missing".to_owned()),
        E::Type {
            unexpected,
            expected,
            key,
            ..
        } => (key, format!("expected {expected}, found {unexpected}")),
        E::At { error, key, .. } => {
            let (inner_key, reason) = describe(*error);
            let key = match (key, inner_key) {
                (Some(outer), Some(inner)) if inner.starts_with('[') => {
                    Some(format!("{outer}{inner}"))
                }
                (Some(outer), Some(inner)) => Some(format!("{outer}.{inner}")),
                (outer, inner) => outer.or(inner),
            };
            (key, reason)
        }
        E::Message(message) => message_to_key(message),
        E::FileParse { cause, .. } => (None, toml_reason(&cause.to_string())),
        other => (None, other.to_string()),
    }
}

/// Pulls the field name out of serde's unknown-field message.
fn message_to_key(message: String) -> (Option<String>, String) {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return (None, message);
    };
    let Some((field, tail)) = rest.split_once('`') else {
        return (None, message);
    };
    let hint = tail
        .strip_prefix(", expected one of ")
        .or_else(|| tail.strip_prefix(", expected "))
        .map(|known| format!(" (known keys here: {known})"))
        .unwrap_or_default();
    (Some(field.to_owned()), format!("unknown key{hint}"))
}

/// The TOML parser's message without the quoted source line, which could hold a secret:
/// "TOML parse error at line 3, column 12: invalid string".
fn toml_reason(text: &str) -> String {
    let mut lines = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty());
    let head = lines.next().unwrap_or("invalid TOML").to_owned();
    let detail: Vec<&str> = lines
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with('|')
                || t.split_once('|')
                    .is_some_and(|(n, _)| n.trim().parse::<u64>().is_ok()))
        })
        .collect();
    if detail.is_empty() {
        head
    } else {
        format!("{head}: {}", detail.join("; "))
    }
}

/// `route[0].qos` → `route[1].qos`: the `config` crate counts from 0, people from 1. It also
/// leaves out the dot after an index in some errors (`route[0]qos`).
fn one_based(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut rest = key;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..=open]);
        rest = &rest[open + 1..];
        let close = rest.find(']').unwrap_or(rest.len());
        match rest[..close].parse::<usize>() {
            Ok(n) => out.push_str(&(n + 1).to_string()),
            Err(_) => out.push_str(&rest[..close]),
        }
        rest = &rest[close..];
        if let Some(after) = rest.strip_prefix(']')
            && after.starts_with(|c: char| c.is_alphanumeric() || c == '_')
        {
            out.push_str("].");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Relative paths, derived defaults and secret files.
fn resolve(config: &mut Config, base: &Path, overrides: &Overrides) -> Result<(), Invalid> {
    resolve_paths(config, base);
    // Before the status topic's default: a cluster member's status topic is its record.
    super::cluster::fill_defaults(config);
    if config.mqtt.status_topic.is_empty() {
        config.mqtt.status_topic = format!("bayeux-mqtt-bridge/{}/status", config.mqtt.client_id);
    }
    drop_shadowed_headers(&mut config.bayeux.headers, overrides);
    resolve_mqtt_password(&mut config.mqtt)?;
    if let Some(oauth) = &mut config.bayeux.oauth {
        if config.bayeux.token_file.is_some() {
            return Err(Invalid::new(
                "bayeux.oauth",
                "set either bayeux.token_file or [bayeux.oauth], not both",
            ));
        }
        if let Some(name) = authorization_header(&config.bayeux.headers) {
            return Err(Invalid::new(
                "bayeux.oauth",
                format!("set either bayeux.headers.{name} or [bayeux.oauth], not both"),
            ));
        }
        resolve_oauth(oauth)?;
    }
    resolve_token_file(&mut config.bayeux)
}

/// Makes the configured paths that are relative relative to `base` (the config file's
/// directory).
fn resolve_paths(config: &mut Config, base: &Path) {
    let relative = |p: &mut Option<PathBuf>| {
        if let Some(path) = p
            && path.is_relative()
        {
            *path = base.join(&*path);
        }
    };
    relative(&mut config.bayeux.token_file);
    if let Some(oauth) = &mut config.bayeux.oauth {
        relative(&mut oauth.client_secret_file);
        relative(&mut oauth.private_key_file);
        relative(&mut oauth.refresh_token_file);
    }
    relative(&mut config.mqtt.password_file);
    relative(&mut config.log.file);
    if config.replay.state_dir.is_relative() {
        config.replay.state_dir = base.join(&config.replay.state_dir);
    }
    if config.spool.dir.is_relative() {
        config.spool.dir = base.join(&config.spool.dir);
    }
    for tls in [&mut config.mqtt.tls, &mut config.bayeux.tls]
        .into_iter()
        .flatten()
    {
        relative(&mut tls.ca_file);
        relative(&mut tls.cert_file);
        relative(&mut tls.key_file);
    }
}

/// Reads `mqtt.password_file` into `mqtt.password`.
fn resolve_mqtt_password(mqtt: &mut super::MqttConfig) -> Result<(), Invalid> {
    if let Some(file) = &mqtt.password_file {
        if mqtt.password.is_some() {
            return Err(Invalid::new(
                "mqtt.password_file",
                "set either mqtt.password or mqtt.password_file, not both",
            ));
        }
        let password = read_secret(file).map_err(|r| Invalid::new("mqtt.password_file", r))?;
        mqtt.password = Some(Secret(password));
    }
    Ok(())
}

/// Reads `bayeux.token_file` into an `Authorization: Bearer` header.
fn resolve_token_file(bayeux: &mut super::BayeuxConfig) -> Result<(), Invalid> {
    if let Some(file) = &bayeux.token_file {
        if let Some(name) = authorization_header(&bayeux.headers) {
            return Err(Invalid::new(
                "bayeux.token_file",
                format!("set either bayeux.headers.{name} or bayeux.token_file, not both"),
            ));
        }
        let token = read_secret(file).map_err(|r| Invalid::new("bayeux.token_file", r))?;
        if token.chars().any(char::is_control) {
            return Err(Invalid::new(
                "bayeux.token_file",
                format!("{} holds a line break or control character", file.display()),
            ));
        }
        bayeux.headers.insert(
            "Authorization".to_owned(),
            Secret(format!("Bearer {token}")),
        );
    }
    Ok(())
}

/// The name of the `Authorization` header in `headers`, as written (any case).
fn authorization_header(headers: &BTreeMap<String, Secret>) -> Option<&str> {
    headers
        .keys()
        .find(|n| n.eq_ignore_ascii_case("authorization"))
        .map(String::as_str)
}

/// Reads the secret files of `[bayeux.oauth]`.
fn resolve_oauth(oauth: &mut super::OAuthConfig) -> Result<(), Invalid> {
    for (key, file, value, other) in [
        (
            "bayeux.oauth.client_secret_file",
            &oauth.client_secret_file,
            &mut oauth.client_secret,
            "client_secret",
        ),
        (
            "bayeux.oauth.refresh_token_file",
            &oauth.refresh_token_file,
            &mut oauth.refresh_token,
            "refresh_token",
        ),
    ] {
        if let Some(file) = file {
            if value.is_some() {
                return Err(Invalid::new(
                    key,
                    format!("set either bayeux.oauth.{other} or {key}, not both"),
                ));
            }
            *value = Some(Secret(read_secret(file).map_err(|r| Invalid::new(key, r))?));
        }
    }
    if let Some(file) = &oauth.private_key_file {
        let key = "bayeux.oauth.private_key_file";
        let pem = read_secret(file).map_err(|r| Invalid::new(key, r))?;
        if !pem.contains("-----BEGIN") || !pem.contains("PRIVATE KEY-----") {
            return Err(Invalid::new(
                key,
                format!(
                    "{} holds no PEM private key (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
                    file.display()
                ),
            ));
        }
        oauth.private_key = Some(Secret(pem));
    }
    Ok(())
}

/// An environment variable sets a header in lower case; drop the file's spelling of the same
/// header so it is not sent twice.
fn drop_shadowed_headers(headers: &mut BTreeMap<String, Secret>, overrides: &Overrides) {
    for key in overrides.keys.keys() {
        if let Some(name) = key.strip_prefix("bayeux.headers.") {
            headers.retain(|n, _| n == name || !n.eq_ignore_ascii_case(name));
        }
    }
}

/// The trimmed content of a secret file; never quotes the content.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = crate::files::read_capped_text(path, crate::files::MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret.to_owned())
}

/// This machine's host name, if it can be found.
pub(super) fn hostname() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var_os("HOSTNAME").and_then(|h: OsString| h.into_string().ok()))
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// `bayeux-mqtt-bridge-<hostname>`, with characters brokers may refuse replaced by `-`.
pub(super) fn default_client_id(hostname: Option<&str>) -> String {
    match hostname {
        Some(host) if !host.is_empty() => {
            let host: String = host
                .chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            format!("bayeux-mqtt-bridge-{host}")
        }
        _ => "bayeux-mqtt-bridge".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_var_names_follow_the_documented_form() {
        assert_eq!(env_var_for("mqtt.host"), "BAYEUX_MQTT_BRIDGE__MQTT__HOST");
        assert_eq!(
            env_var_for("mqtt.tls.ca_file"),
            "BAYEUX_MQTT_BRIDGE__MQTT__TLS__CA_FILE"
        );
        assert_eq!(
            env_var_for("bayeux.headers.X-Api-Key"),
            "BAYEUX_MQTT_BRIDGE__BAYEUX__HEADERS__X_API_KEY"
        );
    }

    #[test]
    fn route_indexes_become_one_based() {
        assert_eq!(one_based("route[0].qos"), "route[1].qos");
        assert_eq!(one_based("route[9]"), "route[10]");
        assert_eq!(one_based("route[1]direction"), "route[2].direction");
        assert_eq!(one_based("mqtt.port"), "mqtt.port");
    }

    #[test]
    fn unknown_field_messages_name_the_field() {
        let (key, reason) =
            message_to_key("unknown field `hots`, expected one of `host`, `port`".to_owned());
        assert_eq!(key.as_deref(), Some("hots"));
        assert_eq!(reason, "unknown key (known keys here: `host`, `port`)");
    }

    #[test]
    fn toml_errors_drop_the_quoted_source_line() {
        let text = "TOML parse error at line 3, column 12\n  |\n3 | password = \"s3cret\n  |            ^\ninvalid basic string\n";
        let reason = toml_reason(text);
        assert_eq!(
            reason,
            "TOML parse error at line 3, column 12: invalid basic string"
        );
        assert!(!reason.contains("s3cret"));
    }

    #[test]
    fn default_client_id_is_derived_from_the_hostname() {
        assert_eq!(
            default_client_id(Some("gw-01.example")),
            "bayeux-mqtt-bridge-gw-01.example"
        );
        assert_eq!(default_client_id(Some("a b+c")), "bayeux-mqtt-bridge-a-b-c");
        assert_eq!(default_client_id(None), "bayeux-mqtt-bridge");
    }

    #[test]
    fn route_overrides_from_the_environment_are_refused() {
        let env = [(
            "BAYEUX_MQTT_BRIDGE__ROUTE__0__QOS".to_owned(),
            "2".to_owned(),
        )];
        let Err((key, reason)) = Overrides::from_env(env) else {
            panic!("accepted a route override");
        };
        assert_eq!(key, "route");
        assert!(
            reason.contains("cannot be set from the environment"),
            "{reason}"
        );
    }

    #[test]
    fn header_names_from_the_environment_use_dashes() {
        let env = [(
            "BAYEUX_MQTT_BRIDGE__BAYEUX__HEADERS__X_API_KEY".to_owned(),
            "k".to_owned(),
        )];
        let overrides = Overrides::from_env(env).unwrap();
        assert!(overrides.keys.contains_key("bayeux.headers.x-api-key"));
        let vars: Vec<String> = overrides.vars.keys().map(|k| k.to_lowercase()).collect();
        assert_eq!(vars, ["bayeux_mqtt_bridge__bayeux__headers__x-api-key"]);
    }
}

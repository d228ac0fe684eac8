//! `[bayeux]` and `[bayeux.oauth]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::{BayeuxTransport, OAuthGrant, Secret, TlsConfig, de_non_empty, de_url, defaults};

/// `[bayeux]`: the Bayeux server and how to talk to it.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BayeuxConfig {
    /// The Bayeux endpoint, `http://` or `https://`, e.g. `http://127.0.0.1:8080/cometd`.
    /// Required.
    #[serde(deserialize_with = "de_url")]
    pub url: Url,
    /// HTTP headers sent on every request, e.g. `{ "X-Api-Key" = "..." }`. Values are secrets:
    /// never logged. After [`load`](super::load()), also holds `Authorization` from `token_file`.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// A file whose content (trimmed) is a bearer token: [`load`](super::load()) adds the header
    /// `Authorization: Bearer <token>`. May not be combined with an `Authorization` header.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Allowance for the network: the deadline of a `/meta/connect` is the server's
    /// `advice.timeout` plus this; of any other request, this alone. Default 10, at least 1.
    #[serde(default = "defaults::max_network_delay_secs")]
    pub max_network_delay_secs: u64,
    /// Largest accepted HTTP response body; a larger one fails the request. Default 10485760
    /// (10 MiB), at least 1024.
    #[serde(default = "defaults::max_response_bytes")]
    pub max_response_bytes: usize,
    /// Backoff step added per consecutive failure (handshake, connect, subscribe). Default
    /// 1000, at least 1.
    #[serde(default = "defaults::backoff_increment_ms")]
    pub backoff_increment_ms: u64,
    /// Longest backoff wait. Default 30000; at least `backoff_increment_ms`.
    #[serde(default = "defaults::bayeux_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Largest HTTP request body: batches are split to stay under it, and a message larger
    /// on its own is dropped (`payload_too_large`). Default 0 (no limit); Salesforce needs
    /// 32768. 0 or at least 1024.
    #[serde(default)]
    pub max_request_bytes: usize,
    /// Offer CometD's ack extension (reliable delivery within a session): used only when the
    /// server's handshake reply accepts it, harmless otherwise. Default `true`.
    #[serde(default = "defaults::ack_extension")]
    pub ack_extension: bool,
    /// The transport: `"auto"` (default; WebSocket where the server offers it and the upgrade
    /// works, else long-polling), `"websocket"`, `"long-polling"` or `"callback-polling"`.
    #[serde(default)]
    pub transport: BayeuxTransport,
    /// Offer the `json-comment-filtered` extension at handshake (CometD 1.x-era servers
    /// then wrap replies as `/*[...]*/`; wrapped replies are accepted either way). Default
    /// `false`.
    #[serde(default)]
    pub json_comment_filtered: bool,
    /// `[bayeux.oauth]`: fetch (and refresh) the bearer token from an OAuth 2.0 token
    /// endpoint. Optional; may not be combined with `token_file` or an `Authorization`
    /// header.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
    /// `[bayeux.tls]`: the CA certificates trusted for `https://` (the Bayeux endpoint and
    /// the token endpoint) and a client certificate. Optional: without it the system's CA
    /// bundle is trusted and no client certificate is shown. Unlike `[mqtt.tls]`, its
    /// presence does not turn TLS on: the URL's scheme does.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Allow credentials (any `headers` value, `token_file`, `[bayeux.oauth]`, a user or
    /// password in the URL) over plain `http://` to a host that is not loopback
    /// (127.0.0.0/8, `::1`, `localhost`). Default `false`: such a config is refused, since
    /// anyone on the path could read and reuse them.
    #[serde(default)]
    pub allow_cleartext_credentials: bool,
}

/// `[bayeux.oauth]`: where the bearer token comes from when it is not fixed. The token is
/// fetched before the first handshake and again whenever the server refuses it. `Debug`
/// shows no secret (they are [`Secret`]s) and the token URL without user info or query.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    /// The token endpoint, e.g. `https://login.salesforce.com/services/oauth2/token`.
    /// Required.
    #[serde(deserialize_with = "de_url")]
    pub token_url: Url,
    /// `"client_credentials"`, `"jwt_bearer"` or `"refresh_token"`. Required.
    pub grant: OAuthGrant,
    /// The connected app's client (consumer) id; the JWT's `iss`. Required.
    #[serde(deserialize_with = "de_non_empty")]
    pub client_id: String,
    /// The client secret: required with `client_credentials`, optional with
    /// `refresh_token`. A secret: prefer `client_secret_file`.
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client secret (trimmed). After [`load`](super::load()), read into
    /// `client_secret`.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The user the token is for (the JWT's `sub`); `jwt_bearer` only, required there.
    #[serde(default)]
    pub username: Option<String>,
    /// PEM file of the RSA private key that signs the JWT (PKCS#8 or PKCS#1); `jwt_bearer`
    /// only, required there. After [`load`](super::load()), its content is in `private_key`.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The content of `private_key_file` (not a key of the file).
    #[serde(skip)]
    pub private_key: Option<Secret>,
    /// The JWT's `aud`. Default `"https://login.salesforce.com"` (sandboxes:
    /// `"https://test.salesforce.com"`).
    #[serde(default = "defaults::oauth_audience")]
    pub audience: String,
    /// The refresh token; `refresh_token` grant only, required there (or
    /// `refresh_token_file`). A secret: prefer the file.
    #[serde(default)]
    pub refresh_token: Option<Secret>,
    /// A file holding the refresh token (trimmed). After [`load`](super::load()), read into
    /// `refresh_token`.
    #[serde(default)]
    pub refresh_token_file: Option<PathBuf>,
    /// The `scope` asked for. Default none (the app's configured scopes).
    #[serde(default)]
    pub scope: Option<String>,
    /// How many fresh tokens in a row the server may refuse (HTTP 401,
    /// `401::Authentication invalid`, `403::Handshake denied`) before the bridge stops
    /// (exit 1). Default 5, at least 1.
    #[serde(default = "defaults::max_auth_attempts")]
    pub max_auth_attempts: u32,
}

impl BayeuxConfig {
    /// `max_network_delay_secs` as a duration.
    pub fn max_network_delay(&self) -> Duration {
        Duration::from_secs(self.max_network_delay_secs)
    }

    /// `backoff_increment_ms` as a duration.
    pub fn backoff_increment(&self) -> Duration {
        Duration::from_millis(self.backoff_increment_ms)
    }

    /// `backoff_max_ms` as a duration.
    pub fn backoff_max(&self) -> Duration {
        Duration::from_millis(self.backoff_max_ms)
    }

    /// The headers as (name, value) pairs, values exposed: for the Bayeux client options only.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.clone(), value.expose().to_owned()))
            .collect()
    }
}

impl fmt::Debug for BayeuxConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry credentials (user info, query): show neither.
        f.debug_struct("BayeuxConfig")
            .field("url", &shown_url(&self.url))
            .field("headers", &self.headers)
            .field("token_file", &self.token_file)
            .field("max_network_delay_secs", &self.max_network_delay_secs)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("backoff_increment_ms", &self.backoff_increment_ms)
            .field("backoff_max_ms", &self.backoff_max_ms)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("ack_extension", &self.ack_extension)
            .field("transport", &self.transport)
            .field("json_comment_filtered", &self.json_comment_filtered)
            .field("oauth", &self.oauth)
            .field("tls", &self.tls)
            .field(
                "allow_cleartext_credentials",
                &self.allow_cleartext_credentials,
            )
            .finish()
    }
}

/// `url` without user info, query or fragment, for `Debug` output.
fn shown_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    url.to_string()
}

impl fmt::Debug for OAuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthConfig")
            .field("token_url", &shown_url(&self.token_url))
            .field("grant", &self.grant)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("client_secret_file", &self.client_secret_file)
            .field("username", &self.username)
            .field("private_key_file", &self.private_key_file)
            .field("private_key", &self.private_key)
            .field("audience", &self.audience)
            .field("refresh_token", &self.refresh_token)
            .field("refresh_token_file", &self.refresh_token_file)
            .field("scope", &self.scope)
            .field("max_auth_attempts", &self.max_auth_attempts)
            .finish()
    }
}

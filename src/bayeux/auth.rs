//! Where the client's bearer token comes from: a fixed token, or an OAuth 2.0 token endpoint.
//!
//! A [`TokenSource`] hands out an [`AccessToken`]; the driver sends it as
//! `Authorization: Bearer <token>` on every request. The driver asks for a fresh one before
//! the first handshake and whenever the server refuses the current one (HTTP 401,
//! `401::Authentication invalid`, `403::Handshake denied`); the session decides when, with
//! backoff and a bound on consecutive refusals (see `session/auth.rs`).
//!
//! [`OAuthTokenSource`] implements the grants Salesforce documents for servers (RFC 6749
//! §4.4 client credentials, §6 refresh token, RFC 7523 JWT bearer): each fetch is one
//! form-encoded POST to the token endpoint, and the reply's `access_token` (and
//! `instance_url`, kept for the caller) is used. Errors say whether retrying can help
//! ([`TokenError::Unavailable`]: network, HTTP 5xx, 429) or not ([`TokenError::Refused`]:
//! `invalid_grant`, `invalid_client`, an unusable key).
//!
//! No secret (token, client secret, refresh token, private key, signed assertion) is ever
//! part of a `Debug` output, an error or a log line.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::rsa::KeyPair;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use url::Url;

pub use super::error::TokenError;
use super::http::{describe_http_error, http_client, redacted_url, redirect_target};
use crate::tls::TlsFiles;

/// The `grant_type` of the JWT bearer flow (RFC 7523).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Salesforce's default audience for JWT assertions (production orgs).
pub const SALESFORCE_AUDIENCE: &str = "https://login.salesforce.com";
/// Lifetime of a signed JWT assertion (Salesforce accepts at most 3 minutes).
const ASSERTION_LIFETIME: Duration = Duration::from_secs(180);
/// Largest token endpoint reply read.
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// Longest part of a server's `error_description` quoted in an error.
const MAX_DESCRIPTION: usize = 200;

/// The future of one token fetch.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<AccessToken, TokenError>> + Send>>;

/// Hands out bearer tokens. `fetch` is called before the first handshake and after every
/// refusal of the current token; it must return a fresh token, not a cached one.
pub trait TokenSource: Send + Sync + fmt::Debug {
    /// Fetches a token.
    fn fetch(&self) -> TokenFuture;
}

/// A bearer token and, from OAuth, the instance it belongs to. `Debug` hides the token.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    token: String,
    instance_url: Option<String>,
}

impl AccessToken {
    /// A token without instance URL.
    pub fn new(token: impl Into<String>) -> Self {
        AccessToken {
            token: token.into(),
            instance_url: None,
        }
    }

    /// The token itself. Never log it.
    pub fn secret(&self) -> &str {
        &self.token
    }

    /// The `instance_url` the token endpoint returned, if any (Salesforce: the org's base
    /// URL).
    pub fn instance_url(&self) -> Option<&str> {
        self.instance_url.as_deref()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"<redacted>")
            .field("instance_url", &self.instance_url)
            .finish()
    }
}

/// A fixed token (from a file, the environment or the caller). A refused static token cannot
/// be replaced, so after `max_auth_attempts` refusals the client stops.
#[derive(Clone)]
pub struct StaticToken(AccessToken);

impl StaticToken {
    /// A source that always returns `token`.
    pub fn new(token: impl Into<String>) -> Self {
        StaticToken(AccessToken::new(token))
    }
}

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(<redacted>)")
    }
}

impl TokenSource for StaticToken {
    fn fetch(&self) -> TokenFuture {
        let token = self.0.clone();
        Box::pin(async move { Ok(token) })
    }
}

/// An OAuth 2.0 grant and its credentials.
#[derive(Clone)]
pub enum Grant {
    /// `grant_type=client_credentials` with the connected app's id and secret.
    ClientCredentials {
        /// The client (consumer) id.
        client_id: String,
        /// The client secret.
        client_secret: String,
    },
    /// `grant_type=refresh_token`: trades a long-lived refresh token for access tokens.
    RefreshToken {
        /// The client id.
        client_id: String,
        /// The client secret, if the app requires it.
        client_secret: Option<String>,
        /// The refresh token.
        refresh_token: String,
    },
    /// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`: an RS256-signed assertion
    /// with `iss` = client id, `sub` = user name, `aud` = audience, `exp` = now + 3 min.
    JwtBearer {
        /// The client id (the assertion's `iss`).
        client_id: String,
        /// The user the token is for (the assertion's `sub`).
        username: String,
        /// The assertion's `aud`, e.g. [`SALESFORCE_AUDIENCE`].
        audience: String,
        /// The RSA private key, PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
        private_key_pem: String,
    },
}

impl Grant {
    /// The grant's name as in `grant_type`, shortened for the JWT grant (for logs).
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials { .. } => "client_credentials",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::JwtBearer { .. } => "jwt_bearer",
        }
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::ClientCredentials { client_id, .. } => f
                .debug_struct("ClientCredentials")
                .field("client_id", client_id)
                .field("client_secret", &"<redacted>")
                .finish(),
            Grant::RefreshToken {
                client_id,
                client_secret,
                ..
            } => f
                .debug_struct("RefreshToken")
                .field("client_id", client_id)
                .field(
                    "client_secret",
                    &client_secret.as_ref().map(|_| "<redacted>"),
                )
                .field("refresh_token", &"<redacted>")
                .finish(),
            Grant::JwtBearer {
                client_id,
                username,
                audience,
                ..
            } => f
                .debug_struct("JwtBearer")
                .field("client_id", client_id)
                .field("username", username)
                .field("audience", audience)
                .field("private_key_pem", &"<redacted>")
                .finish(),
        }
    }
}

/// Fetches tokens from an OAuth 2.0 token endpoint (e.g.
/// `https://login.salesforce.com/services/oauth2/token`).
#[derive(Clone)]
pub struct OAuthTokenSource {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    token_url: Url,
    grant: Grant,
    scope: Option<String>,
    /// The parsed private key of a JWT grant.
    key: Option<KeyPair>,
}

impl fmt::Debug for OAuthTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthTokenSource")
            .field("token_url", &redacted_url(&self.inner.token_url))
            .field("grant", &self.inner.grant)
            .field("scope", &self.inner.scope)
            .finish()
    }
}

impl OAuthTokenSource {
    /// A source for `grant` at `token_url`, each request given at most `timeout`, trusting
    /// the system's CA bundle for HTTPS. Fails if the URL is not HTTP(S) or a JWT grant's key
    /// is not a usable RSA key.
    pub fn new(
        token_url: Url,
        grant: Grant,
        scope: Option<String>,
        timeout: Duration,
    ) -> Result<Self, TokenError> {
        Self::with_tls(token_url, grant, scope, timeout, &TlsFiles::default())
    }

    /// [`OAuthTokenSource::new`] with the HTTPS trust and client certificate of `tls`; also
    /// fails if a TLS file cannot be used.
    pub fn with_tls(
        token_url: Url,
        grant: Grant,
        scope: Option<String>,
        timeout: Duration,
        tls: &TlsFiles,
    ) -> Result<Self, TokenError> {
        if !matches!(token_url.scheme(), "http" | "https") {
            return Err(TokenError::Refused(format!(
                "the token URL must be http:// or https://, found {}://",
                token_url.scheme()
            )));
        }
        let key = match &grant {
            Grant::JwtBearer {
                private_key_pem, ..
            } => Some(parse_rsa_key(private_key_pem)?),
            _ => None,
        };
        // A redirect would re-send the form (client secret, refresh token, assertion)
        // elsewhere: reported, never followed (`http_client` turns following off).
        let http = http_client(&token_url, tls)
            .map_err(TokenError::Refused)?
            .timeout(timeout)
            .build()
            .map_err(|e| TokenError::Refused(format!("cannot build the HTTP client: {e}")))?;
        Ok(OAuthTokenSource {
            inner: Arc::new(Inner {
                http,
                token_url,
                grant,
                scope,
                key,
            }),
        })
    }

    /// The grant this source uses.
    pub fn grant(&self) -> &Grant {
        &self.inner.grant
    }
}

impl TokenSource for OAuthTokenSource {
    fn fetch(&self) -> TokenFuture {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.fetch().await })
    }
}

impl Inner {
    async fn fetch(&self) -> Result<AccessToken, TokenError> {
        let form = self.form()?;
        let response = self
            .http
            .post(self.token_url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| TokenError::Unavailable(describe_http_error(e)))?;
        let status = response.status();
        if status.is_redirection() {
            let location = redirect_target(response.url(), response.headers());
            return Err(TokenError::Refused(format!(
                "HTTP {status}: the token endpoint redirects to {location}; redirects are not \
                 followed (set token_url to the final address)",
                status = status.as_u16()
            )));
        }
        let body = read_capped(response).await?;
        classify(status.as_u16(), &body)
    }

    /// The form fields of one token request.
    fn form(&self) -> Result<Vec<(&'static str, String)>, TokenError> {
        let mut form = Vec::new();
        match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
            } => {
                form.push(("grant_type", "client_credentials".to_owned()));
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", client_secret.clone()));
            }
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
            } => {
                form.push(("grant_type", "refresh_token".to_owned()));
                form.push(("refresh_token", refresh_token.clone()));
                form.push(("client_id", client_id.clone()));
                if let Some(secret) = client_secret {
                    form.push(("client_secret", secret.clone()));
                }
            }
            Grant::JwtBearer {
                client_id,
                username,
                audience,
                ..
            } => {
                let key = self.key.as_ref().ok_or_else(|| {
                    TokenError::Refused("the JWT grant has no private key".to_owned())
                })?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let claims = json!({
                    "iss": client_id,
                    "sub": username,
                    "aud": audience,
                    "exp": (now + ASSERTION_LIFETIME).as_secs(),
                });
                form.push(("grant_type", JWT_BEARER_GRANT.to_owned()));
                form.push(("assertion", sign_rs256(key, &claims)?));
            }
        }
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.clone()));
        }
        Ok(form)
    }
}

/// Parses a PEM RSA private key (PKCS#8 or PKCS#1). The error never quotes the key.
pub fn parse_rsa_key(pem: &str) -> Result<KeyPair, TokenError> {
    let refused = |why: String| TokenError::Refused(format!("the private key: {why}"));
    let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| refused("no PEM private key found".to_owned()))?;
    match &der {
        PrivateKeyDer::Pkcs8(key) => KeyPair::from_pkcs8(key.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(key) => KeyPair::from_der(key.secret_pkcs1_der()),
        _ => return Err(refused("not an RSA key (RS256 needs RSA)".to_owned())),
    }
    .map_err(|e| refused(format!("not a usable RSA key ({e})")))
}

/// `base64url(header).base64url(claims).base64url(RS256 signature)`.
fn sign_rs256(key: &KeyPair, claims: &Value) -> Result<String, TokenError> {
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        signing_input.as_bytes(),
        &mut signature,
    )
    .map_err(|_| TokenError::Refused("could not sign the JWT assertion".to_owned()))?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| TokenError::Unavailable(describe_http_error(e)))?
    {
        if body.len() + chunk.len() > MAX_REPLY_BYTES {
            return Err(TokenError::Unavailable(format!(
                "the reply is larger than {MAX_REPLY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Turns a token endpoint reply into a token or a classified error. Pure.
pub fn classify(status: u16, body: &[u8]) -> Result<AccessToken, TokenError> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|j| j.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    if status == 200 {
        let token = field("access_token").filter(|t| !t.is_empty() && is_header_safe(t));
        return match token {
            Some(token) => Ok(AccessToken {
                token,
                instance_url: field("instance_url"),
            }),
            None => Err(TokenError::Refused(
                "HTTP 200 without a usable access_token (is token_url the token endpoint?)"
                    .to_owned(),
            )),
        };
    }
    let error = field("error");
    let mut reason = format!("HTTP {status}");
    if let Some(error) = &error {
        reason.push_str(&format!(" {error}"));
    }
    if let Some(description) = field("error_description") {
        let shown: String = description
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_DESCRIPTION)
            .collect();
        reason.push_str(&format!(": {shown}"));
    }
    let transient = matches!(status, 408 | 425 | 429 | 500..=599)
        || error.as_deref() == Some("temporarily_unavailable");
    if transient {
        Err(TokenError::Unavailable(reason))
    } else {
        Err(TokenError::Refused(reason))
    }
}

/// Whether `token` can go into an HTTP header as is.
fn is_header_safe(token: &str) -> bool {
    token.bytes().all(|b| (0x21..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reply_yields_the_token_and_the_instance_url() {
        let body = br#"{"access_token":"00D!abc","instance_url":"https://x.my.salesforce.com","token_type":"Bearer"}"#;
        let token = classify(200, body).unwrap();
        assert_eq!(token.secret(), "00D!abc");
        assert_eq!(token.instance_url(), Some("https://x.my.salesforce.com"));
        assert!(!format!("{token:?}").contains("00D!abc"));
    }

    #[test]
    fn refusals_are_permanent_and_outages_transient() {
        let refused = [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"expired"}"#,
            ),
            (400, r#"{"error":"invalid_client"}"#),
            (401, r#"{"error":"invalid_client"}"#),
            (400, r#"{"error":"unsupported_grant_type"}"#),
            (200, r#"{"token_type":"Bearer"}"#),
            (200, "<html>login</html>"),
        ];
        for (status, body) in refused {
            let e = classify(status, body.as_bytes()).unwrap_err();
            assert!(e.is_permanent(), "{status} {body}: {e}");
        }
        let transient = [
            (503, r#"{"error":"temporarily_unavailable"}"#),
            (500, "oops"),
            (429, ""),
            (400, r#"{"error":"temporarily_unavailable"}"#),
        ];
        for (status, body) in transient {
            let e = classify(status, body.as_bytes()).unwrap_err();
            assert!(!e.is_permanent(), "{status} {body}: {e}");
        }
        let e = classify(
            400,
            br#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the token endpoint refused the credentials: HTTP 400 invalid_grant: expired \
             access/refresh token"
        );
    }

    #[test]
    fn debug_output_hides_every_secret() {
        let grants = [
            Grant::ClientCredentials {
                client_id: "cid".into(),
                client_secret: "s3cret-1".into(),
            },
            Grant::RefreshToken {
                client_id: "cid".into(),
                client_secret: Some("s3cret-2".into()),
                refresh_token: "s3cret-3".into(),
            },
        ];
        for grant in grants {
            let source = OAuthTokenSource::new(
                "http://127.0.0.1:1/token".parse().unwrap(),
                grant,
                None,
                Duration::from_secs(1),
            )
            .unwrap();
            let shown = format!("{source:?}");
            assert!(shown.contains("cid"), "{shown}");
            assert!(!shown.contains("s3cret"), "{shown}");
        }
        assert!(!format!("{:?}", StaticToken::new("s3cret-4")).contains("s3cret"));
    }

    const PKCS8: &str = include_str!("../../tests/fixtures/jwt-test-key.pem");
    const PKCS1: &str = include_str!("../../tests/fixtures/jwt-test-key-pkcs1.pem");
    const EC: &str = include_str!("../../tests/fixtures/ec-test-key.pem");

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn jwt_assertions_are_rs256_signed_with_the_documented_claims() {
        for pem in [PKCS8, PKCS1] {
            let source = OAuthTokenSource::new(
                "https://login.example/services/oauth2/token"
                    .parse()
                    .unwrap(),
                Grant::JwtBearer {
                    client_id: "cid".into(),
                    username: "user@example.com".into(),
                    audience: SALESFORCE_AUDIENCE.into(),
                    private_key_pem: pem.into(),
                },
                None,
                Duration::from_secs(1),
            )
            .unwrap();
            assert!(!format!("{source:?}").contains("PRIVATE KEY"));
            let form = source.inner.form().unwrap();
            assert_eq!(form[0], ("grant_type", JWT_BEARER_GRANT.to_owned()));
            let assertion = &form[1].1;
            let parts: Vec<&str> = assertion.split('.').collect();
            assert_eq!(parts.len(), 3);
            assert_eq!(decode_part(parts[0])["alg"], "RS256");
            let claims = decode_part(parts[1]);
            assert_eq!(claims["iss"], "cid");
            assert_eq!(claims["sub"], "user@example.com");
            assert_eq!(claims["aud"], SALESFORCE_AUDIENCE);
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let exp = claims["exp"].as_u64().unwrap();
            assert!(exp > now.as_secs() && exp <= now.as_secs() + 180, "{exp}");
            // The signature verifies with the key's public half.
            let key = parse_rsa_key(pem).unwrap();
            let public = ring::signature::UnparsedPublicKey::new(
                &ring::signature::RSA_PKCS1_2048_8192_SHA256,
                key.public().as_ref().to_vec(),
            );
            let signed = format!("{}.{}", parts[0], parts[1]);
            let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            public.verify(signed.as_bytes(), &signature).unwrap();
        }
    }

    #[test]
    fn a_non_rsa_key_is_refused() {
        let e = parse_rsa_key(EC).unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("RSA"), "{e}");
    }

    #[test]
    fn the_other_grants_send_their_fields() {
        let form = |grant| {
            OAuthTokenSource::new(
                "http://127.0.0.1:1/token".parse().unwrap(),
                grant,
                Some("api".into()),
                Duration::from_secs(1),
            )
            .unwrap()
            .inner
            .form()
            .unwrap()
        };
        let cc = form(Grant::ClientCredentials {
            client_id: "cid".into(),
            client_secret: "cs".into(),
        });
        let names: Vec<&str> = cc.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["grant_type", "client_id", "client_secret", "scope"]);
        let rt = form(Grant::RefreshToken {
            client_id: "cid".into(),
            client_secret: None,
            refresh_token: "rt".into(),
        });
        assert_eq!(rt[0].1, "refresh_token");
        assert_eq!(rt[1], ("refresh_token", "rt".to_owned()));
        assert!(!rt.iter().any(|(n, _)| *n == "client_secret"));
    }

    #[test]
    fn a_key_that_is_not_pem_is_refused_without_quoting_it() {
        let e = parse_rsa_key("s3cret garbage").unwrap_err();
        assert!(e.is_permanent());
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }
}

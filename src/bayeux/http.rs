//! HTTP helpers both HTTP clients share (the Bayeux transport and the token endpoint's):
//! the client settings, and errors and URLs made fit for logs (no credentials).

use url::Url;

use crate::tls::TlsFiles;

/// The URL without user info or query (which may carry credentials), for logs.
pub fn redacted_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.to_string()
}

/// The `Authorization: Bearer <token>` value of `token` (`None`: no such header), marked
/// sensitive so that no `Debug` shows it; the error never quotes the token.
pub(crate) fn bearer_value(
    token: Option<&str>,
) -> Result<Option<reqwest::header::HeaderValue>, String> {
    let Some(token) = token else {
        return Ok(None);
    };
    let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the token is not a valid HTTP header value".to_owned())?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// The settings both HTTP clients (Bayeux and token endpoint) share: HTTP/1.1, no redirects
/// followed (a redirect is reported: `TransportError::Redirect`), proxies from the
/// environment, and for an `https://` URL (or with TLS files given) the TLS settings of
/// `tls`. Fails, naming the file, when a TLS file cannot be used.
pub(crate) fn http_client(url: &Url, tls: &TlsFiles) -> Result<reqwest::ClientBuilder, String> {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only();
    if url.scheme() != "https" && *tls == TlsFiles::default() {
        // Plain HTTP: no TLS settings to read (nor a system bundle to need).
        return Ok(builder);
    }
    let config = crate::tls::client_config(tls, &[b"http/1.1"])
        .map_err(|e| format!("TLS setup failed: {} {e}", e.setting))?;
    Ok(builder.use_preconfigured_tls(config))
}

/// Describes a reqwest error without its URL (which may carry credentials), with its causes.
pub(crate) fn describe_http_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Where a redirect points, for the error: the `Location` resolved against `base`, without
/// user info or query; "(no Location)" or "(an invalid Location)" otherwise.
pub(crate) fn redirect_target(base: &Url, headers: &reqwest::header::HeaderMap) -> String {
    match headers.get(reqwest::header::LOCATION) {
        None => "(no Location)".to_owned(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|location| base.join(location).ok())
            .map_or_else(
                || "(an invalid Location)".to_owned(),
                |mut target| {
                    let _ = target.set_username("");
                    let _ = target.set_password(None);
                    target.set_query(None);
                    target.set_fragment(None);
                    target.to_string()
                },
            ),
    }
}

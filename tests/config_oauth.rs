//! `[bayeux] max_request_bytes` and `[bayeux.oauth]` in the configuration file: defaults,
//! secret files (read, resolved relative to the file, never shown), and validation errors that
//! name the key and the reason. Also that the bridge turns them into client options.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use bayeux_mqtt_bridge::bridge::bayeux_options;
use bayeux_mqtt_bridge::config::{OAuthGrant, load_with_env};
use common::bridge::TempDir;

const KEY: &str = include_str!("fixtures/jwt-test-key.pem");

/// A complete file whose `[bayeux]` section ends with `bayeux_extra` (e.g. an oauth table).
fn config(bayeux_extra: &str) -> String {
    format!(
        "[bayeux]\nurl = \"https://x.my.salesforce.com/cometd/62.0\"\nmax_request_bytes = 32768\n\
         {bayeux_extra}\n\n[mqtt]\nhost = \"h\"\n\n[[route]]\nbayeux = \"/event/A__e\"\n\
         mqtt = \"a\"\ndirection = \"bayeux_to_mqtt\"\n"
    )
}

const OAUTH: &str = "[bayeux.oauth]\ntoken_url = \"https://login.salesforce.com/services/oauth2/token\"\nclient_id = \"cid\"\n";

#[test]
fn defaults_are_no_request_cap_and_no_oauth() {
    let scratch = TempDir::new("config-oauth");
    let path = scratch.file(
        "b.toml",
        "[bayeux]\nurl = \"http://127.0.0.1/cometd\"\n[mqtt]\nhost = \"h\"\n[[route]]\n\
         bayeux = \"/a\"\nmqtt = \"a\"\ndirection = \"both\"\n",
    );
    let config = load_with_env(&path, []).unwrap();
    assert_eq!(config.bayeux.max_request_bytes, 0);
    assert!(config.bayeux.oauth.is_none());
    let options = bayeux_options(&config, 10);
    assert_eq!(options.max_request_bytes, 0);
    assert!(options.token_source.is_none());
}

#[test]
fn each_grant_loads_with_its_secret_files_resolved_and_read() {
    let scratch = TempDir::new("config-oauth");
    scratch.file("secret", "cs-secret-1\n");
    scratch.file("refresh", " rt-secret-2 \n");
    scratch.file("key.pem", KEY);
    let cases = [
        (
            "grant = \"client_credentials\"\nclient_secret_file = \"secret\"\n",
            OAuthGrant::ClientCredentials,
        ),
        (
            "grant = \"refresh_token\"\nrefresh_token_file = \"refresh\"\n",
            OAuthGrant::RefreshToken,
        ),
        (
            "grant = \"jwt_bearer\"\nusername = \"u@example.com\"\nprivate_key_file = \"key.pem\"\n\
             max_auth_attempts = 2\nscope = \"api\"\n",
            OAuthGrant::JwtBearer,
        ),
    ];
    for (table, grant) in cases {
        let path = scratch.file("b.toml", config(&format!("{OAUTH}{table}")));
        let config = load_with_env(&path, []).unwrap_or_else(|e| panic!("{grant}: {e}"));
        let oauth = config.bayeux.oauth.clone().unwrap();
        assert_eq!(oauth.grant, grant);
        assert_eq!(oauth.audience, "https://login.salesforce.com");
        match grant {
            OAuthGrant::ClientCredentials => {
                assert_eq!(oauth.client_secret.unwrap().expose(), "cs-secret-1");
                assert_eq!(
                    oauth.client_secret_file,
                    Some(scratch.path().join("secret"))
                );
                assert_eq!(oauth.max_auth_attempts, 5);
            }
            OAuthGrant::RefreshToken => {
                assert_eq!(oauth.refresh_token.unwrap().expose(), "rt-secret-2");
            }
            OAuthGrant::JwtBearer => {
                assert!(oauth.private_key.unwrap().expose().contains("PRIVATE KEY"));
                assert_eq!(oauth.max_auth_attempts, 2);
            }
        }
        let options = bayeux_options(&config, 10);
        assert_eq!(options.max_request_bytes, 32768);
        assert!(options.token_source.is_some(), "{grant}");
        // Neither the config nor the options show a secret.
        let debug = format!("{config:?} {options:?}");
        for secret in ["cs-secret-1", "rt-secret-2", "PRIVATE KEY"] {
            assert!(!debug.contains(secret), "{secret} shown: {debug}");
        }
    }
}

#[test]
fn secrets_can_come_from_the_environment() {
    let scratch = TempDir::new("config-oauth");
    let path = scratch.file(
        "b.toml",
        config(&format!("{OAUTH}grant = \"client_credentials\"\n")),
    );
    let config = load_with_env(
        &path,
        [(
            "BAYEUX_MQTT_BRIDGE__BAYEUX__OAUTH__CLIENT_SECRET".to_owned(),
            "env-secret".to_owned(),
        )],
    )
    .unwrap();
    let oauth = config.bayeux.oauth.unwrap();
    assert_eq!(oauth.client_secret.unwrap().expose(), "env-secret");
}

#[test]
fn bad_oauth_settings_name_the_key_and_the_reason() {
    let scratch = TempDir::new("config-oauth");
    scratch.file("secret", "s\n");
    scratch.file("token", "t\n");
    scratch.file("not-a-key.pem", "hello\n");
    let cc = "grant = \"client_credentials\"\nclient_secret = \"s\"\n";
    // (bayeux section additions, expected key, expected reason)
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("{OAUTH}grant = \"jwt_bearer\"\nusername = \"u\"\n"),
            "bayeux.oauth.private_key_file",
            "is required with grant = \"jwt_bearer\"",
        ),
        (
            format!(
                "{OAUTH}grant = \"jwt_bearer\"\nprivate_key_file = \"not-a-key.pem\"\nusername = \"u\"\n"
            ),
            "bayeux.oauth.private_key_file",
            "holds no PEM private key",
        ),
        (
            format!("{OAUTH}grant = \"client_credentials\"\n"),
            "bayeux.oauth.client_secret",
            "is required with grant = \"client_credentials\" (or client_secret_file)",
        ),
        (
            format!("{OAUTH}grant = \"refresh_token\"\n"),
            "bayeux.oauth.refresh_token",
            "is required with grant = \"refresh_token\" (or refresh_token_file)",
        ),
        (
            format!("{OAUTH}{cc}username = \"u\"\n"),
            "bayeux.oauth.username",
            "is not used with grant = \"client_credentials\"",
        ),
        (
            format!("{OAUTH}{cc}client_secret_file = \"secret\"\n"),
            "bayeux.oauth.client_secret_file",
            "set either bayeux.oauth.client_secret or bayeux.oauth.client_secret_file, not both",
        ),
        (
            format!("{OAUTH}grant = \"password\"\n"),
            "bayeux.oauth.grant",
            "expected one of \"client_credentials\", \"jwt_bearer\", \"refresh_token\"",
        ),
        (
            format!("{OAUTH}{cc}max_auth_attempts = 0\n"),
            "bayeux.oauth.max_auth_attempts",
            "must be at least 1, found 0",
        ),
        (
            format!("{OAUTH}{cc}private_key = \"x\"\n"),
            "bayeux.oauth.private_key",
            "unknown key",
        ),
        (
            format!("{OAUTH}{cc}").replace("https://login", "ftp://login"),
            "bayeux.oauth.token_url",
            "must be an http:// or https:// URL",
        ),
        (
            format!("token_file = \"token\"\n{OAUTH}{cc}"),
            "bayeux.oauth",
            "set either bayeux.token_file or [bayeux.oauth], not both",
        ),
        (
            format!("headers = {{ Authorization = \"Bearer x\" }}\n{OAUTH}{cc}"),
            "bayeux.oauth",
            "set either bayeux.headers.Authorization or [bayeux.oauth], not both",
        ),
        (
            "max_request_bytes = 100\n".to_owned(),
            "bayeux.max_request_bytes",
            "must be 0 (no limit) or at least 1024, found 100",
        ),
    ];
    for (extra, key, reason) in cases {
        // max_request_bytes appears once: drop the default line when a case sets it.
        let text = if extra.starts_with("max_request_bytes") {
            config(&extra).replace("max_request_bytes = 32768\n", "")
        } else {
            config(&extra)
        };
        let path = scratch.file("bad.toml", &text);
        let error = load_with_env(&path, []).expect_err(&extra);
        assert_eq!(error.key.as_deref(), Some(key), "{extra}: {error}");
        assert!(
            error.reason.contains(reason),
            "{extra}: expected {reason:?} in {error}"
        );
        assert!(!error.to_string().contains("Bearer x"), "{error}");
    }
}

#[test]
fn a_salesforce_url_without_a_request_cap_is_warned_about() {
    let scratch = TempDir::new("config-oauth");
    let path = scratch.file(
        "b.toml",
        config("").replace("max_request_bytes = 32768\n", ""),
    );
    let warnings = load_with_env(&path, []).unwrap().warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("bayeux.max_request_bytes = 32768")),
        "{warnings:?}"
    );
}

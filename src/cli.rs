//! The operator tools: `sub` and `pub` test a Bayeux endpoint the way `mosquitto_sub` and
//! `mosquitto_pub` test a broker (messages go to stdout, one compact JSON object per line;
//! logs go to stderr); `explain` tells where a message on a channel or topic goes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use url::Url;

use crate::bayeux::{Client, ClientError, ClientOptions, Event, PublishError, TransportChoice};
use crate::bridge::mapping::Query;

/// Options shared by `sub` and `pub`.
#[derive(Debug, Args)]
pub struct EndpointArgs {
    /// The Bayeux endpoint, e.g. http://127.0.0.1:8080/cometd.
    #[arg(long)]
    pub url: Url,
    /// An HTTP header sent on every request, as 'Name: value' (repeatable). Other users can
    /// read the command line (ps): put tokens in a --header-file instead.
    #[arg(long = "header", value_name = "'Name: value'", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// A file of 'Name: value' lines, one header each, sent as --header is (repeatable):
    /// keeps tokens out of the command line. Blank lines and lines starting with # are
    /// ignored. Should be readable by its owner only.
    #[arg(long = "header-file", value_name = "PATH")]
    pub header_files: Vec<PathBuf>,
    /// The transport: auto (WebSocket where the server offers it and the upgrade works,
    /// else long-polling), websocket, long-polling or callback-polling.
    #[arg(long, value_name = "TRANSPORT", default_value = "auto", value_parser = parse_transport)]
    pub transport: TransportChoice,
}

fn parse_transport(raw: &str) -> Result<TransportChoice, String> {
    TransportChoice::parse(raw)
        .ok_or_else(|| format!("expected one of {}", TransportChoice::NAMES.join(", ")))
}

/// `sub` arguments.
#[derive(Debug, Args)]
pub struct SubArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Disconnect and exit 0 after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Channels or patterns (/a/b, /a/*, /a/**).
    #[arg(required = true, value_name = "CHANNEL")]
    pub channels: Vec<String>,
}

/// `pub` arguments.
#[derive(Debug, Args)]
pub struct PubArgs {
    #[command(flatten)]
    pub endpoint: EndpointArgs,
    /// Give up if the server has not answered within this many seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// The channel to publish on.
    #[arg(value_name = "CHANNEL")]
    pub channel: String,
    /// The message's data, as JSON.
    #[arg(value_name = "JSON")]
    pub json: String,
}

/// `explain` arguments.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("name").required(true).args(["channel", "topic"])))]
pub struct ExplainArgs {
    /// The bridge's TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// A Bayeux channel: where does a message on it go?
    #[arg(long, value_name = "NAME")]
    pub channel: Option<String>,
    /// An MQTT topic: where does a message on it go?
    #[arg(long, value_name = "NAME")]
    pub topic: Option<String>,
}

/// Exit code of `explain` for a config file that cannot be used (as `check`).
const EXIT_CONFIG: u8 = 2;

/// Runs `explain`: prints what each route does with a message on the channel or topic; exit
/// 0 when at least one route forwards it, 1 when none does, 2 when the config file (or the
/// name) cannot be used.
pub fn explain(args: &ExplainArgs) -> ExitCode {
    let query = match (&args.channel, &args.topic) {
        (Some(channel), _) => match crate::bayeux::channel::validate_publish_channel(channel) {
            Ok(_) => Query::Channel(channel.clone()),
            Err(e) => return usage(&format!("--channel: {e}")),
        },
        (None, Some(topic)) => match crate::mqtt::validate_topic(topic) {
            Ok(()) if !topic.contains(['+', '#']) => Query::Topic(topic.clone()),
            Ok(()) => return usage("--topic: a topic name has no wildcards (`+`, `#`)"),
            Err(reason) => return usage(&format!("--topic {topic:?}: {reason}")),
        },
        (None, None) => return usage("give --channel NAME or --topic NAME"),
    };
    let routes = crate::config::load(&args.config).and_then(|config| {
        crate::bridge::compile_routes(&config, config.replay.enabled)
            .map_err(|e| e.in_file(&args.config))
    });
    let routes = match routes {
        Ok(routes) => routes,
        Err(e) => return usage(&e.to_string()),
    };
    let explanation = crate::bridge::mapping::explain(&routes, &query);
    print!("{}", explanation.text);
    match explanation.applies {
        0 => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    }
}

/// A config file or argument that cannot be used: exit 2.
fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_CONFIG)
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| "expected 'Name: value'".to_owned())?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the header name is empty".to_owned());
    }
    Ok((name.to_owned(), value.trim().to_owned()))
}

/// The headers of a `--header-file`: one `Name: value` per line; blank lines and lines
/// whose first non-blank character is `#` are skipped. A bad line is an error naming the
/// file and the line number, never quoting the line (it may hold a token).
fn parse_header_file(path: &Path, text: &str) -> Result<Vec<(String, String)>, String> {
    let mut headers = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let header = parse_header(line)
            .map_err(|why| format!("{} line {}: {why}", path.display(), i + 1))?;
        headers.push(header);
    }
    Ok(headers)
}

/// Reads a `--header-file`, warning when others than its owner may read it.
fn read_header_file(path: &Path) -> Result<Vec<(String, String)>, String> {
    let bytes = crate::files::read_capped(path, crate::files::MAX_SECRET_BYTES)
        .map_err(|e| format!("cannot read header file {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| format!("header file {} is not UTF-8 text", path.display()))?;
    warn_if_loose(path);
    parse_header_file(path, &text)
}

/// Warns when its group or other users can read or write `path`: it holds credentials
/// (the same check and wording as the daemon's secret files, `files::warning`).
fn warn_if_loose(path: &Path) {
    if let Some(warning) = crate::files::warning("--header-file", path, crate::files::Kind::Secret)
    {
        tracing::warn!("{warning}");
    }
}

/// Every header of `endpoint`: the `--header` ones, then those of each `--header-file`.
fn headers_of(endpoint: &EndpointArgs) -> Result<Vec<(String, String)>, String> {
    let mut headers = endpoint.headers.clone();
    for path in &endpoint.header_files {
        headers.extend(read_header_file(path)?);
    }
    Ok(headers)
}

fn client_for(endpoint: &EndpointArgs) -> Result<(Client, crate::bayeux::client::Events), String> {
    let mut options = ClientOptions::new(endpoint.url.clone());
    options.headers = headers_of(endpoint)?;
    options.transport = endpoint.transport;
    Client::new(options).map_err(|e| e.to_string())
}

/// Runs `sub`: prints deliveries until `--count` is reached, the server stops the session,
/// or SIGINT/SIGTERM.
pub async fn sub(args: SubArgs) -> ExitCode {
    let (client, mut events) = match client_for(&args.endpoint) {
        Ok(pair) => pair,
        Err(e) => return fail(&e),
    };
    let patterns: Vec<&str> = args.channels.iter().map(String::as_str).collect();
    let mut subscription = match client.subscribe_all(&patterns).await {
        Ok(s) => s,
        // The client stopped before it took the subscription (a server that refused the
        // session for good).
        Err(ClientError::Closed) => return stopped(&client),
        Err(e) => return fail(&e.to_string()),
    };
    if args.count == Some(0) {
        client.disconnect().await;
        return ExitCode::SUCCESS;
    }
    let mut printed = 0u64;
    let mut stdout = std::io::stdout().lock();
    let shutdown = crate::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            message = subscription.recv() => {
                let Some(message) = message else {
                    return stopped(&client);
                };
                let line = serde_json::to_string(&printable(message)).unwrap_or_default();
                if writeln!(stdout, "{line}").and_then(|()| stdout.flush()).is_err() {
                    // stdout closed (e.g. piped into `head`): stop quietly.
                    client.disconnect().await;
                    return ExitCode::SUCCESS;
                }
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    client.disconnect().await;
                    return ExitCode::SUCCESS;
                }
            }
            event = events.recv() => match event {
                Some(Event::Stopped { .. }) | None => return stopped(&client),
                Some(_) => {}
            },
            () = &mut shutdown => {
                client.disconnect().await;
                return ExitCode::SUCCESS;
            }
        }
    }
}

/// Runs `pub`: publishes one message and exits 0 if the server answered `successful: true`.
pub async fn publish(args: PubArgs) -> ExitCode {
    let data: serde_json::Value = match serde_json::from_str(&args.json) {
        Ok(v) => v,
        Err(e) => return fail(&format!("the JSON argument is not valid JSON: {e}")),
    };
    let (client, _events) = match client_for(&args.endpoint) {
        Ok(pair) => pair,
        Err(e) => return fail(&e),
    };
    let verdict = tokio::time::timeout(
        Duration::from_secs(args.timeout),
        client.publish(&args.channel, data),
    )
    .await;
    let code = match verdict {
        Ok(Ok(_reply)) => ExitCode::SUCCESS,
        // The client stopped (a server that refused the session for good): say why.
        Ok(Err(PublishError::Closed)) => return stopped(&client),
        Ok(Err(e)) => fail(&e.to_string()),
        Err(_) => fail(&format!(
            "no answer from the server within {} s",
            args.timeout
        )),
    };
    // Bounded: a dead server must not keep the tool hanging on its way out.
    let _ = tokio::time::timeout(Duration::from_secs(5), client.disconnect()).await;
    code
}

/// The delivered message without the session id, which is not the reader's business, and
/// on one line: `data` is kept as the server wrote it, and a server may indent its JSON. A
/// line break in JSON text is always whitespace between tokens (strings cannot hold one
/// unescaped), so dropping them leaves the same JSON.
fn printable(mut message: crate::bayeux::Message) -> crate::bayeux::Message {
    message.client_id = None;
    if let Some(data) = &message.data
        && data.json().contains(['\n', '\r'])
        && let Ok(one_line) = crate::bayeux::Data::from_json(data.json().replace(['\n', '\r'], ""))
    {
        message.data = Some(one_line);
    }
    message
}

/// The client has stopped: fails with its reason.
fn stopped(client: &Client) -> ExitCode {
    match client.stop_reason() {
        Some(reason) => fail(&format!("the Bayeux client stopped: {reason}")),
        None => fail("the Bayeux client stopped"),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    #[test]
    fn printed_messages_are_one_line_with_the_data_as_sent() {
        let mut message = crate::bayeux::Message::new("/a");
        message.client_id = Some("session".into());
        message.data = Some(
            crate::bayeux::Data::from_json("{\r\n  \"b\": [1,\n 2],\n  \"a\": \"x y\"\n}").unwrap(),
        );
        let line = serde_json::to_string(&super::printable(message)).unwrap();
        assert_eq!(
            line,
            r#"{"channel":"/a","data":{  "b": [1, 2],  "a": "x y"}}"#
        );
    }

    use super::*;

    #[test]
    fn headers_parse_as_name_colon_value() {
        assert_eq!(
            parse_header("Authorization: Bearer a:b").unwrap(),
            ("Authorization".into(), "Bearer a:b".into())
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": v").is_err());
    }

    #[test]
    fn a_header_file_skips_blank_lines_and_comments() {
        let text = "# the token\n\nAuthorization: Bearer a:b\r\n  # indented comment\nX-Two:2\n";
        assert_eq!(
            parse_header_file(Path::new("h.txt"), text).unwrap(),
            vec![
                ("Authorization".into(), "Bearer a:b".into()),
                ("X-Two".into(), "2".into())
            ]
        );
    }

    #[test]
    fn a_bad_header_line_names_file_and_line_but_not_its_text() {
        let text = "X-Ok: 1\n# c\nBearer s3cret-token\n";
        let err = parse_header_file(Path::new("/etc/h.txt"), text).unwrap_err();
        assert_eq!(err, "/etc/h.txt line 3: expected 'Name: value'");
        assert!(!err.contains("s3cret"), "{err}");
        let err = parse_header_file(Path::new("h"), ": s3cret").unwrap_err();
        assert!(
            err.starts_with("h line 1: ") && !err.contains("s3cret"),
            "{err}"
        );
    }
}

//! Property tests (proptest) for what the daemon reads from files, through the public API:
//! the configuration loader, the replay checkpoint file and the spool's queue files (issue
//! 14, "Proof, not just fixes"). Whatever the bytes, the reader returns a value or its typed
//! error naming the file; it never panics.
//!
//! The case count is proptest's default (256) for the cheap readers and smaller for the
//! spool (each case writes, syncs and checks a database file); `PROPTEST_CASES` overrides
//! both. The fuzz harness (`tests/fuzz_inputs.rs`) runs the config loader for longer.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use bayeux_mqtt_bridge::bridge::checkpoint::{CheckpointError, CheckpointStore, FILE_NAME};
use bayeux_mqtt_bridge::config::load_with_env;
use bayeux_mqtt_bridge::spool::{Spool, SpoolError};
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "prop-files-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a scratch directory");
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Case count: `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        ..ProptestConfig::default()
    }
}

/// Applies byte-level damage: flips, overwrites of a run, a cut, an insertion.
fn mutate(mut bytes: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    for (at, kind, value) in edits {
        if bytes.is_empty() {
            bytes.push(*value);
            continue;
        }
        let i = at.index(bytes.len());
        match kind % 5 {
            0 => bytes[i] ^= value | 1,
            1 => {
                let end = (i + usize::from(*value) * 16).min(bytes.len());
                bytes[i..end].fill(*value);
            }
            2 => bytes.truncate(i),
            3 => bytes.insert(i, *value),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(prop::sample::Index, u8, u8)>> {
    prop::collection::vec(
        (any::<prop::sample::Index>(), any::<u8>(), any::<u8>()),
        1..6,
    )
}

// ---------------------------------------------------------------------------------------
// The configuration loader
// ---------------------------------------------------------------------------------------

/// A valid configuration the structured cases start from.
pub const BASE_CONFIG: &str = "[bayeux]\nurl = \"http://127.0.0.1:8080/cometd\"\n\n\
    [mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nclient_id = \"prop\"\n\n\
    [[route]]\nbayeux = \"/a/*\"\nmqtt = \"a/+\"\ndirection = \"both\"\n";

/// Every (section, key) the loader knows, plus some it does not.
const KEYS: &[(&str, &str)] = &[
    ("bayeux", "url"),
    ("bayeux", "token_file"),
    ("bayeux", "max_network_delay_secs"),
    ("bayeux", "max_response_bytes"),
    ("bayeux", "backoff_increment_ms"),
    ("bayeux", "backoff_max_ms"),
    ("bayeux", "max_request_bytes"),
    ("bayeux", "ack_extension"),
    ("bayeux.headers", "Authorization"),
    ("bayeux.headers", "X-Any"),
    ("bayeux.oauth", "token_url"),
    ("bayeux.oauth", "grant"),
    ("bayeux.oauth", "client_id"),
    ("bayeux.oauth", "client_secret"),
    ("bayeux.oauth", "username"),
    ("bayeux.oauth", "audience"),
    ("bayeux.oauth", "scope"),
    ("bayeux.oauth", "refresh_token"),
    ("bayeux.oauth", "max_auth_attempts"),
    ("mqtt", "host"),
    ("mqtt", "port"),
    ("mqtt", "client_id"),
    ("mqtt", "username"),
    ("mqtt", "password"),
    ("mqtt", "protocol"),
    ("mqtt", "keep_alive_secs"),
    ("mqtt", "clean_start"),
    ("mqtt", "session_expiry_secs"),
    ("mqtt", "max_packet_size"),
    ("mqtt", "inflight"),
    ("mqtt", "connect_timeout_secs"),
    ("mqtt", "backoff_increment_ms"),
    ("mqtt", "backoff_max_ms"),
    ("mqtt", "status_topic"),
    ("mqtt.tls", "ca_file"),
    ("bridge", "queue_capacity"),
    ("bridge", "drain_timeout_secs"),
    ("bridge", "binary_payloads"),
    ("bridge", "cpu_scheduling"),
    ("log", "level"),
    ("log", "format"),
    ("replay", "enabled"),
    ("replay", "checkpoint_interval_ms"),
    ("replay", "start_from"),
    ("replay", "on_invalid"),
    ("spool", "enabled"),
    ("spool", "max_bytes"),
    ("http", "listen"),
    ("route", "bayeux"),
    ("route", "mqtt"),
    ("route", "direction"),
    ("route", "qos"),
    ("route", "retain"),
    ("route", "payload"),
    ("bayeux", "unknown_key"),
    ("nonsense", "key"),
];

/// A TOML value as text: numbers at and beyond every bound, strings of every kind, other
/// types where a number or string is expected.
fn toml_value() -> impl Strategy<Value = String> {
    let string = prop_oneof![
        Just(String::new()),
        "[a-z0-9_./:-]{0,20}",
        ".{0,12}",
        prop::sample::select(vec![
            "5",
            "3.1.1",
            "both",
            "bayeux_to_mqtt",
            "mqtt_to_bayeux",
            "data",
            "message",
            "refuse",
            "base64",
            "batch",
            "other",
            "json",
            "text",
            "debug",
            "latest",
            "earliest",
            "/a/**",
            "/meta/x",
            "/service/**",
            "a/#",
            "$SYS/x",
            "a/{1}",
            "127.0.0.1:0",
            "http://x",
            "https://[::1]:1/x",
            "ftp://x",
            "client_credentials",
            "password",
            "jwt_bearer",
            "refresh_token",
        ])
        .prop_map(str::to_owned),
    ];
    let quoted = string.prop_map(|s| {
        serde_json::to_string(&s).expect("a string serializes") // JSON escapes are TOML escapes
    });
    prop_oneof![
        4 => quoted,
        3 => prop_oneof![
            any::<i64>(),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(0),
            Just(-1),
            Just(u32::MAX as i64 + 1),
            Just(65_536),
            Just(18_446_744_073_709),
        ]
        .prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| {
            if f.is_nan() { "nan".to_owned() } else if f.is_infinite() { "inf".to_owned() } else { format!("{f:?}") }
        }),
        1 => any::<bool>().prop_map(|b| b.to_string()),
        1 => Just("[1, \"a\", true]".to_owned()),
        1 => Just("{ x = 1 }".to_owned()),
        1 => Just("1979-05-27T07:32:00Z".to_owned()),
    ]
}

/// The base configuration with some keys set to random values, as TOML text.
fn mutated_config() -> impl Strategy<Value = String> {
    prop::collection::vec((prop::sample::select(KEYS), toml_value()), 1..6).prop_map(|sets| {
        let mut sections: BTreeMap<&str, Vec<(&str, String)>> = BTreeMap::new();
        for ((section, key), value) in sets {
            sections.entry(section).or_default().push((key, value));
        }
        let mut text = String::new();
        let base = |section: &str| -> Vec<(&str, String)> {
            match section {
                "bayeux" => vec![("url", "\"http://127.0.0.1:8080/cometd\"".into())],
                "mqtt" => vec![
                    ("host", "\"127.0.0.1\"".into()),
                    ("client_id", "\"p\"".into()),
                ],
                "route" => vec![
                    ("bayeux", "\"/a/*\"".into()),
                    ("mqtt", "\"a/+\"".into()),
                    ("direction", "\"both\"".into()),
                ],
                _ => vec![],
            }
        };
        for section in ["bayeux", "mqtt", "route"] {
            sections.entry(section).or_default();
        }
        for (section, sets) in sections {
            let mut keys: BTreeMap<&str, String> = base(section).into_iter().collect();
            keys.extend(sets);
            if section == "route" {
                text.push_str("[[route]]\n");
            } else {
                text.push_str(&format!("[{section}]\n"));
            }
            for (k, v) in keys {
                text.push_str(&format!("{k:?} = {v}\n"));
            }
            text.push('\n');
        }
        text
    })
}

/// Loads `text` as a config file: a config or an error naming this file.
fn check_config(dir: &Path, text: &[u8]) -> Result<(), TestCaseError> {
    let path = dir.join("bridge.toml");
    fs::write(&path, text).expect("writes the config");
    match load_with_env(&path, Vec::new()) {
        Ok(config) => {
            // What loads is self-consistent: it has routes and both sides.
            prop_assert!(!config.route.is_empty());
        }
        Err(e) => {
            prop_assert_eq!(&e.file, &path);
            prop_assert!(!e.reason.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_bytes_as_a_config_file_load_or_fail_naming_the_file(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let dir = Scratch::new("config-bytes");
        check_config(&dir.0, &bytes)?;
    }

    #[test]
    fn damaged_config_files_load_or_fail_naming_the_file(edits in edits()) {
        let dir = Scratch::new("config-damaged");
        check_config(&dir.0, &mutate(BASE_CONFIG.as_bytes().to_vec(), &edits))?;
    }

    #[test]
    fn any_value_for_any_key_loads_or_fails_naming_the_file(text in mutated_config()) {
        let dir = Scratch::new("config-keys");
        check_config(&dir.0, text.as_bytes())?;
    }
}

#[test]
fn the_base_config_loads() {
    let dir = Scratch::new("config-base");
    let path = dir.0.join("bridge.toml");
    fs::write(&path, BASE_CONFIG).expect("writes the config");
    load_with_env(&path, Vec::new()).expect("the base config is valid");
}

// ---------------------------------------------------------------------------------------
// The checkpoint file
// ---------------------------------------------------------------------------------------

/// A valid checkpoint file with these positions.
fn checkpoint_file(positions: &BTreeMap<String, i64>) -> Vec<u8> {
    let channels: serde_json::Map<String, serde_json::Value> = positions
        .iter()
        .map(|(c, id)| {
            (
                c.clone(),
                serde_json::json!({ "replay_id": id, "updated": "0" }),
            )
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "version": 1, "channels": channels }))
        .expect("serializes")
}

fn positions() -> impl Strategy<Value = BTreeMap<String, i64>> {
    prop::collection::btree_map("/[a-z]{1,6}(/[a-z*]{1,4}){0,2}", any::<i64>(), 0..5)
}

/// Opens a store over `bytes`: it holds the file's positions, or it is a typed error.
fn check_checkpoint(bytes: &[u8]) -> Result<Option<BTreeMap<String, i64>>, TestCaseError> {
    let dir = Scratch::new("checkpoint");
    fs::write(dir.0.join(FILE_NAME), bytes).expect("writes the file");
    match CheckpointStore::open(&dir.0) {
        Ok(store) => Ok(Some(store.all())),
        Err(CheckpointError::Corrupt { path, detail }) => {
            prop_assert_eq!(path, dir.0.join(FILE_NAME));
            prop_assert!(!detail.is_empty());
            Ok(None)
        }
        Err(other) => Err(TestCaseError::fail(format!("unexpected error: {other}"))),
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_bytes_as_a_checkpoint_file_open_or_are_reported_corrupt(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        check_checkpoint(&bytes)?;
    }

    #[test]
    fn a_written_checkpoint_file_reads_back(positions in positions()) {
        let dir = Scratch::new("checkpoint-round-trip");
        {
            let mut store = CheckpointStore::open(&dir.0).expect("an empty store opens");
            for (channel, id) in &positions {
                store.reset(channel, *id);
            }
            store.flush().expect("flushes");
        }
        let store = CheckpointStore::open(&dir.0).expect("reopens");
        prop_assert_eq!(store.all(), positions.clone());
        // The hand-written form of the same file reads the same.
        prop_assert_eq!(check_checkpoint(&checkpoint_file(&positions))?, Some(positions));
    }

    #[test]
    fn damaged_checkpoint_files_open_or_are_reported_corrupt(positions in positions(), edits in edits()) {
        check_checkpoint(&mutate(checkpoint_file(&positions), &edits))?;
    }
}

// ---------------------------------------------------------------------------------------
// The spool's queue files
// ---------------------------------------------------------------------------------------

const SPOOL_ENTRIES: u64 = 300;

fn entry(i: u64) -> Bytes {
    Bytes::from(format!("entry {i:06} ").repeat(8))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A healthy queue file holding [`SPOOL_ENTRIES`] entries, made once.
fn healthy_queue_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = Scratch::new("spool-base");
        runtime().block_on(async {
            let spool = Spool::open(&dir.0, 1 << 26).expect("a spool");
            let queue = spool.queue("q").expect("a queue");
            let batch: Vec<Bytes> = (0..SPOOL_ENTRIES).map(entry).collect();
            queue.append(batch).await.expect("appends");
            let file = queue.file().to_owned();
            queue.close().await;
            fs::read(file).expect("reads the queue file")
        })
    })
}

/// Opens a spool whose queue file holds `bytes`: either the queue opens and reads back the
/// entries it was written with (redb's checksums let no damaged entry through), or opening
/// fails with a typed error naming the file.
fn check_spool(bytes: &[u8]) -> Result<(), TestCaseError> {
    let dir = Scratch::new("spool");
    let file = dir.0.join("q.redb");
    fs::write(&file, bytes).expect("writes the queue file");
    let rt = runtime();
    let spool = Spool::open(&dir.0, 1 << 26).expect("a spool directory");
    match spool.queue("q") {
        Ok(queue) => {
            let read = queue.read_from(0, usize::MAX);
            rt.block_on(queue.close());
            match read {
                Ok(entries) => {
                    for e in &entries {
                        prop_assert!(e.seq >= 1 && e.seq <= SPOOL_ENTRIES, "seq {}", e.seq);
                        prop_assert_eq!(&e.data, &entry(e.seq - 1), "entry {} changed", e.seq);
                    }
                }
                Err(SpoolError::Corrupt { file: f, .. }) => prop_assert_eq!(f, file),
                Err(other) => return Err(TestCaseError::fail(format!("read: {other}"))),
            }
        }
        Err(SpoolError::Corrupt { file: f, reason }) => {
            prop_assert_eq!(f, file);
            prop_assert!(!reason.is_empty());
        }
        Err(SpoolError::Incompatible { file: f, .. }) => prop_assert_eq!(f, file),
        Err(other) => return Err(TestCaseError::fail(format!("open: {other}"))),
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn a_damaged_queue_file_opens_intact_or_is_a_typed_error(edits in edits()) {
        check_spool(&mutate(healthy_queue_file().to_vec(), &edits))?;
    }

    #[test]
    fn random_bytes_as_a_queue_file_are_a_typed_error(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        check_spool(&bytes)?;
    }

    #[test]
    fn a_queue_file_with_a_damaged_page_opens_intact_or_is_a_typed_error(
        page in any::<prop::sample::Index>(),
        offset in 0usize..4096,
        noise in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut bytes = healthy_queue_file().to_vec();
        let pages = bytes.len() / 4096;
        let at = (page.index(pages.max(1)) * 4096 + offset).min(bytes.len().saturating_sub(noise.len()));
        let end = (at + noise.len()).min(bytes.len());
        bytes[at..end].copy_from_slice(&noise[..end - at]);
        check_spool(&bytes)?;
    }
}

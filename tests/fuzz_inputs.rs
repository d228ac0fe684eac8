//! A fuzz harness that runs on stable Rust (issue 14, "Proof, not just fixes"): each target
//! takes seed inputs (valid replies, packets, files), mutates them at random (bit flips, byte
//! runs, cuts, insertions, splices, duplicated chunks, interesting tokens) and feeds them to
//! the code that reads that input from the network or a file:
//!
//! - `bayeux_reply`: a long-polling reply body through [`decode_batch`], and what decodes
//!   through the Bayeux session state machine ([`Session`]): handshake, subscribe, connect
//!   and publish replies, advice, deliveries, timers.
//! - `token_reply`: a token endpoint reply (status and body) through [`auth::classify`].
//! - `mqtt_v4_packets` / `mqtt_v5_packets`: bytes from the broker through rumqttc's packet
//!   decoders (the ones the daemon's MQTT client reads with), packet after packet.
//! - `config_file`: a configuration file through the loader.
//!
//! Each case must return (a value or an error) without a panic, and the most memory live at
//! once while it runs (measured by a counting allocator on the case's thread) must stay
//! under a bound proportional to the input; the largest ratio seen is printed.
//!
//! Budget per target: `FUZZ_CASES` cases (default 2,000, what `cargo test` and CI run) or,
//! if set, `FUZZ_SECONDS` seconds. `FUZZ_SEED` fixes the random seed (printed at the start
//! of each target, so a failure can be replayed). `scripts/fuzz` runs this in release mode.
//! A panicking case prints its input (escaped) before failing the test.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use bayeux_mqtt_bridge::backoff::BackoffOptions;
use bayeux_mqtt_bridge::bayeux::auth;
use bayeux_mqtt_bridge::bayeux::channel::ChannelPattern;
use bayeux_mqtt_bridge::bayeux::message::decode_batch;
use bayeux_mqtt_bridge::bayeux::session::{Lane, Output, Session, SessionOptions};
use bayeux_mqtt_bridge::config::load_with_env;
use bytes::BytesMut;

// ---------------------------------------------------------------------------------------
// Allocation accounting: bytes live on this thread, and the peak since the last reset.
// ---------------------------------------------------------------------------------------

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // `try_with`: during thread teardown the slots may be gone.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

// SAFETY: forwards to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size() as isize);
        // SAFETY: same layout, as the caller guarantees for `alloc`.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        account(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        account(new_size as isize - layout.size() as isize);
        // SAFETY: as for `GlobalAlloc::realloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the most bytes it had live at once (beyond what was live before).
fn peak_of(f: impl FnOnce()) -> usize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    (PEAK.with(Cell::get) - base).max(0) as usize
}

// ---------------------------------------------------------------------------------------
// Randomness and mutation
// ---------------------------------------------------------------------------------------

/// xorshift64*: fast, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Tokens worth inserting: JSON and TOML syntax, Bayeux keys, edge numbers, UTF-8 edges.
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"false",
    b"-1",
    b"0",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1.5",
    b"\"channel\"",
    b"\"/meta/connect\"",
    b"\"/meta/handshake\"",
    b"\"successful\"",
    b"\"advice\"",
    b"\"reconnect\"",
    b"\"handshake\"",
    b"\"none\"",
    b"\"interval\"",
    b"\"timeout\"",
    b"\"data\"",
    b"\"id\"",
    b"\"clientId\"",
    b"\"ext\"",
    b"\"error\"",
    b"\"403::Unknown client\"",
    b"\"access_token\"",
    b"\"instance_url\"",
    b"\xff",
    b"\xc3",
    b"\xf0\x9f\x98",
    b"\xef\xbf\xbe",
    b"\n",
    b"=",
    b"[[route]]\n",
    b"[bayeux]\n",
    b"\"\"\"",
    b"'''",
    b"\x00",
    b"\x7f",
    b"\xff\xff\xff\x7f",
    b"\x80\x80\x80\x80\x01",
];

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], input: &mut Vec<u8>) {
    let rounds = 1 + rng.below(8);
    for _ in 0..rounds {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.byte();
            }
            2 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(32));
                input.drain(i..i + n);
            }
            3 => {
                let i = rng.below(len + 1);
                let token = TOKENS[rng.below(TOKENS.len())];
                input.splice(i..i, token.iter().copied());
            }
            4 if len > 0 => {
                // Duplicate a chunk (repetition finds amplification).
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let chunk = input[i..i + n].to_vec();
                let times = 1 + rng.below(16);
                let at = rng.below(len + 1);
                for _ in 0..times {
                    input.splice(at..at, chunk.iter().copied());
                }
            }
            5 => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below(other.len() - i);
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[i..i + n].iter().copied());
                }
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            7 if len > 0 => {
                // Interesting byte values.
                let i = rng.below(len);
                input[i] = [0, 0x7f, 0x80, 0xff, b'"', b'\\', b'}', b']'][rng.below(8)];
            }
            _ => {
                let i = rng.below(len + 1);
                input.insert(i, rng.byte());
            }
        }
        // Keep inputs at a size where a case stays cheap.
        input.truncate(64 * 1024);
    }
}

/// The budget: `FUZZ_SECONDS` if set, else `FUZZ_CASES` (default 2,000).
enum Budget {
    Cases(u64),
    Time(Duration),
}

fn budget() -> Budget {
    let var = |name| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    match var("FUZZ_SECONDS") {
        Some(secs) => Budget::Time(Duration::from_secs(secs)),
        None => Budget::Cases(var("FUZZ_CASES").unwrap_or(2_000)),
    }
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1
}

/// Fuzzes `target` with mutations of `seeds` within the budget; fails on a panic (printing
/// the input) or on a case whose live memory exceeded `factor` × its length + `slack` bytes.
fn fuzz(name: &str, seeds: &[Vec<u8>], factor: usize, slack: usize, mut target: impl FnMut(&[u8])) {
    let seed = seed();
    let mut rng = Rng(seed);
    eprintln!("fuzz {name}: seed {seed}");
    let started = Instant::now();
    let budget = budget();
    let mut cases = 0u64;
    let mut worst = (0.0f64, 0usize, 0usize);
    let mut input = Vec::new();
    loop {
        match budget {
            Budget::Cases(n) if cases >= n => break,
            Budget::Time(t) if cases.is_multiple_of(256) && started.elapsed() >= t => break,
            _ => {}
        }
        input.clear();
        input.extend_from_slice(&seeds[rng.below(seeds.len())]);
        // A few cases run the seeds as they are.
        if cases >= seeds.len() as u64 {
            mutate(&mut rng, seeds, &mut input);
        }
        let mut peak = 0;
        let outcome = catch_unwind(AssertUnwindSafe(|| peak = peak_of(|| target(&input))));
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            panic!(
                "fuzz {name}: case {cases} (seed {seed}) panicked: {message}\ninput ({} bytes): {:?}",
                input.len(),
                String::from_utf8_lossy(&input)
            );
        }
        let ratio = peak as f64 / input.len().max(1) as f64;
        if ratio > worst.0 && input.len() >= 64 {
            worst = (ratio, peak, input.len());
        }
        assert!(
            peak <= factor * input.len() + slack,
            "fuzz {name}: case {cases} (seed {seed}) had {peak} bytes live for a {}-byte input: {:?}",
            input.len(),
            String::from_utf8_lossy(&input)
        );
        cases += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    // One line per target, read by scripts/fuzz.
    println!(
        "fuzz-result target={name} cases={cases} seconds={secs:.1} rate={:.0}/s worst_memory_ratio={:.0}x ({} bytes live for {} input bytes)",
        cases as f64 / secs.max(1e-9),
        worst.0,
        worst.1,
        worst.2
    );
}

// ---------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------

fn bayeux_seeds() -> Vec<Vec<u8>> {
    [
        r#"[{"channel":"/meta/handshake","successful":true,"clientId":"c1","version":"1.0","supportedConnectionTypes":["long-polling"],"advice":{"reconnect":"retry","interval":0,"timeout":30000},"id":"1","ext":{"ack":true}}]"#,
        r#"[{"channel":"/meta/subscribe","successful":true,"subscription":"/a/**","clientId":"c1","id":"2"}]"#,
        r#"[{"channel":"/meta/connect","successful":true,"clientId":"c1","id":"3","advice":{"reconnect":"retry","interval":0,"timeout":30000,"long-polling":{"timeout":100}},"ext":{"ack":1}},{"channel":"/a/b","data":{"x":1,"y":[1,2,{"z":null}]},"id":"9"},{"channel":"/a/c/d","data":"text"}]"#,
        r#"[{"channel":"/meta/connect","successful":false,"error":"403::Unknown client","advice":{"reconnect":"handshake","interval":500},"id":"4"}]"#,
        r#"[{"channel":"/meta/connect","successful":false,"error":"402:x:y","advice":{"reconnect":"none"},"id":"5"}]"#,
        r#"{"channel":"/meta/disconnect","successful":true,"id":"6"}"#,
        r#"[{"channel":"/a/b","successful":true,"id":"7"},{"channel":"/a/b","successful":false,"error":"400::bad","id":"8"}]"#,
        r#"[{"channel":"/meta/subscribe","successful":false,"subscription":["/a/**","/b"],"error":"403:/a/**:denied","id":"2"}]"#,
        r#"[{"channel":"/topic/x","data":{"event":{"replayId":42},"payload":{"k":"v"}},"channel2":1,"EventType":"created"}]"#,
        r#"[{"channel":"/meta/handshake","successful":true,"clientId":1234,"id":1,"advice":{"timeout":1e300,"interval":-1}}]"#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn session_options() -> SessionOptions {
    SessionOptions {
        backoff: BackoffOptions {
            jitter: 0.0,
            ..BackoffOptions::default()
        },
        seed: Some(1),
        max_queued: 8,
        ..SessionOptions::default()
    }
}

/// Drives a session with `messages` as the answer to every request for a few rounds.
fn drive_session(body: &[u8]) {
    let Ok(messages) = decode_batch(body) else {
        return;
    };
    let mut now = Instant::now();
    let mut session = Session::new(session_options(), now);
    if let Ok(pattern) = ChannelPattern::parse("/a/**") {
        session.subscribe(&pattern, now);
    }
    let _ = session.publish("/a/p", bayeux_mqtt_bridge::bayeux::Data::null(), None, now);
    for round in 0..6 {
        let mut sent = Vec::new();
        for _ in 0..1000 {
            match session.poll_output() {
                Some(Output::Send { lane, .. }) => sent.push(lane),
                Some(_) => {}
                None => break,
            }
        }
        if sent.is_empty() {
            match session.next_deadline() {
                Some(at) => {
                    now = at.max(now);
                    session.on_timer(now);
                }
                None => break,
            }
        }
        for lane in sent {
            // The same reply to everything; every other round answer the long poll with an
            // error instead, so both paths run.
            let reply = if lane == Lane::Connect && round % 2 == 1 {
                Err(bayeux_mqtt_bridge::bayeux::TransportError::Timeout(
                    Duration::from_secs(1),
                ))
            } else {
                Ok(messages.clone())
            };
            session.on_response(lane, reply, now);
        }
        if session.is_stopped() {
            break;
        }
    }
}

#[test]
fn bayeux_reply() {
    // A decoded batch is a few hundred bytes per message; the session keeps a few copies.
    fuzz(
        "bayeux_reply",
        &bayeux_seeds(),
        2_000,
        1 << 20,
        drive_session,
    );
}

#[test]
fn token_reply() {
    let seeds: Vec<Vec<u8>> = [
        r#"{"access_token":"00Dxx!AQ0","instance_url":"https://x.my.salesforce.com","id":"u","token_type":"Bearer","issued_at":"1","signature":"s"}"#,
        r#"{"error":"invalid_grant","error_description":"authentication failure"}"#,
        r#"{"error":"temporarily_unavailable","error_description":"try later\u0000\n"}"#,
        r#"{"access_token":"","scope":"api"}"#,
        "<html>502 Bad Gateway</html>",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let statuses = [200u16, 400, 401, 403, 404, 408, 429, 500, 502, 503, 0, 999];
    let mut n = 0usize;
    fuzz("token_reply", &seeds, 64, 1 << 16, |body| {
        n += 1;
        let _ = auth::classify(statuses[n % statuses.len()], body);
    });
}

/// Reads packet after packet until the decoder asks for more bytes or refuses.
fn read_packets<P, E>(bytes: &[u8], read: impl Fn(&mut BytesMut) -> Result<P, E>) {
    let mut stream = BytesMut::from(bytes);
    for _ in 0..1000 {
        let before = stream.len();
        if read(&mut stream).is_err() || stream.len() >= before {
            break;
        }
    }
}

#[test]
fn mqtt_v4_packets() {
    let seeds: Vec<Vec<u8>> = vec![
        vec![0x20, 0x02, 0x00, 0x00], // CONNACK
        vec![0x32, 0x0a, 0, 3, b'a', b'/', b'b', 0, 1, b'h', b'i', b'!'], // PUBLISH QoS 1
        vec![0x30, 0x06, 0, 1, b'x', b'p', b'a', b'y'], // PUBLISH QoS 0
        vec![0x90, 0x04, 0, 1, 0x01, 0x80], // SUBACK
        vec![
            0x40, 0x02, 0, 1, 0x50, 0x02, 0, 2, 0x62, 0x02, 0, 2, 0x70, 0x02, 0, 2,
        ], // PUBACK, PUBREC, PUBREL, PUBCOMP
        vec![0xb0, 0x02, 0, 3, 0xd0, 0x00], // UNSUBACK, PINGRESP
        vec![
            0x3d, 0x0c, 0, 4, b't', b'/', 0xc3, 0xa9, 0, 7, 0xff, 0xfe, 0, 1,
        ], // PUBLISH QoS 2 dup retain
    ];
    fuzz("mqtt_v4_packets", &seeds, 64, 1 << 16, |bytes| {
        read_packets(bytes, |s| rumqttc::mqttbytes::v4::Packet::read(s, 1 << 20));
    });
}

#[test]
fn mqtt_v5_packets() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let seeds: Vec<Vec<u8>> = vec![
        // CONNACK with properties: session expiry, receive maximum, max packet size,
        // assigned client id, topic alias maximum, reason string, user property.
        vec![
            0x20, 0x24, 0x00, 0x00, 0x21, 0x11, 0, 0, 0x0e, 0x10, 0x21, 0, 10, 0x27, 0, 1, 0, 0,
            0x12, 0, 2, b'i', b'd', 0x22, 0, 5, 0x1f, 0, 2, b'o', b'k', 0x26, 0, 1, b'k', 0, 1,
            b'v',
        ],
        vec![0x20, 0x03, 0x00, 0x00, 0x00],
        // PUBLISH QoS 1 with topic alias, payload format, content type, user property.
        vec![
            0x32, 0x19, 0, 3, b'a', b'/', b'b', 0, 1, 0x0d, 0x23, 0, 1, 0x01, 1, 0x03, 0, 1, b'j',
            0x26, 0, 1, b'k', 0, 1, b'v', b'h', b'i',
        ],
        vec![0x90, 0x05, 0, 1, 0x00, 0x01, 0x80], // SUBACK
        vec![0x40, 0x02, 0, 1, 0x40, 0x04, 0, 2, 0x10, 0x00], // PUBACK ×2
        vec![0xe0, 0x05, 0x8e, 0x03, 0x1f, 0, 0], // DISCONNECT
        vec![0xd0, 0x00, 0xb0, 0x04, 0, 3, 0x00, 0x11], // PINGRESP, UNSUBACK
    ];
    fuzz("mqtt_v5_packets", &seeds, 64, 1 << 16, |bytes| {
        read_packets(bytes, |s| Packet::read(s, Some(1 << 20)));
    });
}

#[test]
fn config_file() {
    let dir = std::env::temp_dir().join(format!("fuzz-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    let path = dir.join("bridge.toml");
    let seeds: Vec<Vec<u8>> = vec![
        std::fs::read("config/bridge.toml").expect("config/bridge.toml"),
        b"[bayeux]\nurl = \"http://127.0.0.1:8080/cometd\"\nmax_network_delay_secs = 18446744073709551615\n\n[bayeux.headers]\nX-A = \"b\"\n\n[mqtt]\nhost = \"127.0.0.1\"\nport = 1883\nprotocol = \"3.1.1\"\nkeep_alive_secs = 5\nusername = \"u\"\npassword = \"p\"\n\n[bridge]\nqueue_capacity = 1\n\n[replay]\nenabled = true\nstart_from = -2\n\n[spool]\nenabled = true\nmax_bytes = 1\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\nbayeux = \"/a/*\"\nmqtt = \"x/{1}/y\"\ndirection = \"both\"\nqos = 2\nretain = true\npayload = \"message\"\n".to_vec(),
        b"[bayeux]\nurl = \"https://x.example/cometd/58.0\"\n\n[bayeux.oauth]\ntoken_url = \"https://login.example/services/oauth2/token\"\ngrant = \"client_credentials\"\nclient_id = \"id\"\nclient_secret = \"s\"\n\n[mqtt]\nhost = \"::1\"\n\n[mqtt.tls]\n\n[[route]]\nbayeux = \"/event/**\"\nmqtt = \"sf/#\"\ndirection = \"bayeux_to_mqtt\"\n".to_vec(),
    ];
    fuzz("config_file", &seeds, 4_096, 8 << 20, |text| {
        if std::fs::write(&path, text).is_ok() {
            let _ = load_with_env(&path, Vec::new());
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

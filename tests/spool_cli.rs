//! The spool on the command line: `check` describes `[spool]` and refuses a directory it
//! cannot write; `spool-recover` moves damaged queue files aside and leaves healthy ones.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::path::Path;
use std::process::{Command, Output};

use bayeux_mqtt_bridge::spool::Spool;
use bytes::Bytes;
use common::bridge::{BINARY, TempDir};

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

fn run(args: &[&str], config: &Path) -> Output {
    Command::new(BINARY)
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("BAYEUX_MQTT_BRIDGE__SPOOL__ENABLED")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_describes_the_spool_and_creates_its_directory() {
    let scratch = TempDir::new("spool-check");
    let off = scratch.file("off.toml", MINIMAL);
    let out = run(&["check"], &off);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("spool: off (spool.enabled = false)\n"),
        "{}",
        text(&out.stdout)
    );

    let on = scratch.file(
        "on.toml",
        format!("{MINIMAL}\n[spool]\nenabled = true\ndir = \"data/spool\"\nmax_bytes = 2097152\n"),
    );
    let out = run(&["check"], &on);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dir = scratch.path().join("data/spool");
    assert!(
        text(&out.stdout).contains(&format!(
            "spool: on; {}, at most 2097152 bytes\n",
            dir.display()
        )),
        "{}",
        text(&out.stdout)
    );
    assert!(dir.is_dir());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "no probe left");
}

#[test]
fn check_refuses_a_spool_directory_it_cannot_create() {
    let scratch = TempDir::new("spool-check");
    let blocker = scratch.file("not-a-dir", "a regular file");
    let config = scratch.file(
        "bad.toml",
        format!(
            "{MINIMAL}\n[spool]\nenabled = true\ndir = \"{}\"\n",
            blocker.join("spool").display()
        ),
    );
    let out = run(&["check"], &config);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!(
            "error: {}: spool.dir: cannot be used: {}",
            config.display(),
            blocker.join("spool").display()
        )),
        "{stderr}"
    );
}

#[test]
fn spool_recover_moves_a_damaged_file_aside_and_keeps_a_healthy_one() {
    let scratch = TempDir::new("spool-recover");
    let dir = scratch.path().join("spool");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let spool = Spool::open(&dir, 1 << 20).unwrap();
        let queue = spool.queue("healthy").unwrap();
        queue
            .append(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
            .await
            .unwrap();
        queue.close().await;
    });
    let damaged = dir.join("damaged.redb");
    std::fs::write(&damaged, vec![0x5A; 8192]).unwrap();
    let config = scratch.file(
        "bridge.toml",
        format!("{MINIMAL}\n[spool]\nenabled = true\ndir = \"spool\"\n"),
    );

    let out = run(&["spool-recover"], &config);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with(&format!(
            "{}: moved aside to {}.damaged-",
            damaged.display(),
            damaged.display()
        )),
        "{stdout}"
    );
    assert!(
        lines[0].ends_with("0 entries could still be read from it"),
        "{stdout}"
    );
    assert_eq!(
        lines[1],
        format!("{}: healthy, 2 entries", dir.join("healthy.redb").display())
    );
    assert!(!damaged.exists());
    let moved: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("damaged.redb.damaged-"))
        .collect();
    assert_eq!(moved.len(), 1);

    // Nothing left to do.
    let out = run(&["spool-recover"], &config);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}: healthy, 2 entries\n",
            dir.join("healthy.redb").display()
        )
    );
}

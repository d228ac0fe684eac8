//! File modes (issue 14, item 13) on the real daemon: secret files and state directories
//! that other users can open draw one warning each at start (key, path and mode, never the
//! content), in the daemon's log and in `check`; a directory the operator made keeps its
//! mode; a log file the daemon creates is 0600 and its state directories 0700, whatever the
//! umask.
//!
//! No peer is needed: the warnings come before the bridge connects, so the config points the
//! Bayeux server and the broker at loopback ports where nothing listens.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::bridge::{BridgeProcess, ConfigFile, check, free_port};

/// Longest any single expected event may take. Generous: it only bounds failures.
const WAIT: Duration = Duration::from_secs(20);
/// The secrets in the files; none may appear in any output.
const PASSWORD: &str = "pw-4a1f0c9e-never-logged";
const TOKEN: &str = "tok-77d2b1e3-never-logged";

/// A config with peers nobody answers for, and `extra` appended (sections of its own).
fn toml(extra: &str) -> String {
    format!(
        "[bayeux]\n\
         url = \"http://127.0.0.1:{}/cometd\"\n\
         token_file = \"token\"\n\
         \n\
         [mqtt]\n\
         host = \"127.0.0.1\"\n\
         port = {}\n\
         client_id = \"file-modes\"\n\
         username = \"bridge\"\n\
         password_file = \"password\"\n\
         \n\
         {extra}\n\
         [[route]]\n\
         bayeux = \"/f/*\"\n\
         mqtt = \"f/+\"\n\
         direction = \"bayeux_to_mqtt\"\n",
        free_port(),
        free_port()
    )
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("cannot stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loose_secret_files_and_state_dirs_are_warned_about_once_without_their_content() {
    let config = ConfigFile::new(&toml(
        "[spool]\nenabled = true\ndir = \"spool\"\nmax_bytes = 1048576\n",
    ));
    let dir = config.dir();
    let password = dir.join("password");
    let token = dir.join("token");
    std::fs::write(&password, PASSWORD).unwrap();
    std::fs::write(&token, TOKEN).unwrap();
    chmod(&password, 0o644);
    chmod(&token, 0o640);
    // A state directory the operator made, open to everyone: named, never changed.
    let spool = dir.join("spool");
    std::fs::create_dir(&spool).unwrap();
    chmod(&spool, 0o755);

    let mut bridge = BridgeProcess::spawn(&config, &[]);
    bridge.wait_for_log("Bridge starting.", WAIT).await;
    let warnings: Vec<String> = bridge
        .lines()
        .iter()
        .filter(|l| l.is("File mode warning."))
        .filter_map(|l| l.str_field("warning").map(str::to_owned))
        .collect();
    let expect = [
        (
            "mqtt.password_file",
            &password,
            "0644",
            "its group and all users",
        ),
        ("bayeux.token_file", &token, "0640", "its group;"),
        ("spool.dir", &spool, "0755", "its group and all users"),
    ];
    for (key, path, mode, who) in expect {
        let prefix = format!("{key}: {} (mode {mode})", path.display());
        let found: Vec<_> = warnings.iter().filter(|w| w.starts_with(&prefix)).collect();
        assert_eq!(
            found.len(),
            1,
            "one warning starting {prefix:?}; warnings: {warnings:#?}"
        );
        assert!(found[0].contains(who), "{}", found[0]);
    }
    assert_eq!(warnings.len(), 3, "{warnings:#?}");
    assert_eq!(
        mode_of(&spool),
        0o755,
        "the operator's directory was changed"
    );
    let _ = bridge.terminate(WAIT).await;
    let everything = bridge.tail(usize::MAX);
    for secret in [PASSWORD, TOKEN] {
        assert!(!everything.contains(secret), "a secret is in the log");
    }

    // `check` reports the same.
    let checked = check(config.path());
    assert!(checked.status.success(), "check failed: {}", checked.stderr);
    for (key, ..) in expect {
        assert!(
            checked.stdout.contains(&format!("warning: {key}: ")),
            "check does not warn about {key}:\n{}",
            checked.stdout
        );
    }
    assert!(!checked.stdout.contains(PASSWORD) && !checked.stdout.contains(TOKEN));

    // Private files and directories draw nothing.
    chmod(&password, 0o600);
    chmod(&token, 0o400);
    chmod(&spool, 0o700);
    let checked = check(config.path());
    assert!(
        !checked.stdout.contains("mode 0"),
        "a warning about private files:\n{}",
        checked.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_file_and_state_dirs_the_daemon_creates_are_private_under_a_permissive_umask() {
    let config = ConfigFile::new(&toml(
        "[log]\nfile = \"bridge.log\"\nformat = \"json\"\n\n\
         [spool]\nenabled = true\ndir = \"state/spool\"\nmax_bytes = 1048576\n",
    ));
    let dir = config.dir();
    for (name, content) in [("password", PASSWORD), ("token", TOKEN)] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        chmod(&path, 0o600);
    }
    let log = dir.join("bridge.log");
    let mut bridge = BridgeProcess::spawn_with(&config, &[], |command| {
        // SAFETY: umask is async-signal-safe and touches only the child's own mask.
        unsafe {
            command.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            });
        }
    });
    // The daemon logs to the file, not to stderr: wait until its start line is there.
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Bridge starting.")) {
        assert!(
            Instant::now() < deadline,
            "{} has no start line after {WAIT:?}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mode_of(&log), 0o600, "the new log file's mode");
    // Created by the daemon, with the directory above it: 0700 both.
    assert_eq!(
        mode_of(&dir.join("state")),
        0o700,
        "the new state directory's mode"
    );
    assert_eq!(
        mode_of(&dir.join("state/spool")),
        0o700,
        "the new spool directory's mode"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("File mode warning."),
        "private files drew a warning:
{text}"
    );
    let _ = bridge.terminate(WAIT).await;
}

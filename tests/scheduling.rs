//! `bridge.cpu_scheduling`: the daemon switches itself, and so every thread it starts, from the
//! normal scheduling policy to `SCHED_BATCH` by default; `inherit`, or a policy the process
//! was started under, leaves the policy alone; a refused switch is logged and the daemon runs
//! on. Read from `/proc/<pid>/task/*/stat` (Linux).
//!
//! The policy is applied at start, before anything connects, so these runs need no peers:
//! both point at a loopback port nobody listens on, and the daemon keeps retrying until it is
//! stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

mod common;

use std::os::unix::process::CommandExt;
use std::time::Duration;

use common::bridge::{BridgeProcess, ConfigFile};

const WAIT: Duration = Duration::from_secs(10);

/// `SCHED_OTHER`, `SCHED_BATCH` and `SCHED_IDLE`, as `/proc` shows them.
const OTHER: u32 = 0;
const BATCH: u32 = 3;
const IDLE: u32 = 5;

const SWITCHED: &str = "Switched to the batch CPU scheduling policy.";
const KEPT: &str = "Kept the CPU scheduling policy the process was started with.";
const REFUSED: &str = "Could not switch to the batch CPU scheduling policy; running under the \
                       one the process was started with. It can be set where the process is \
                       started (systemd CPUSchedulingPolicy=batch, chrt --batch 0).";

/// A config whose peers are a loopback port nobody listens on.
fn unreachable_config() -> ConfigFile {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"));
    ConfigFile::new(&format!(
        r#"
[bayeux]
url = "http://127.0.0.1:{port}/cometd"

[mqtt]
host = "127.0.0.1"
port = {port}

[[route]]
bayeux = "/sched/**"
mqtt = "sched/#"
direction = "bayeux_to_mqtt"
"#
    ))
}

/// The scheduling policy of each of the process's threads (field 41 of `stat`).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/task (Linux): {e}"));
    let mut policies = Vec::new();
    for task in tasks {
        let path = task.expect("a task entry").path();
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else {
            continue; // the thread ended in between
        };
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // After the command name (in parentheses, may hold spaces) come fields 3, 4, ...
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 1..];
        let policy = rest
            .split_whitespace()
            .nth(41 - 3)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| panic!("no policy field in {stat:?}"));
        policies.push((name.trim().to_owned(), policy));
    }
    policies
}

/// Set-up run in the child between `fork` and `exec`; it must be async-signal-safe (system
/// calls on its own stack only, no allocation).
type BeforeExec = fn() -> std::io::Result<()>;

/// Starts the daemon with a pool of two runtime workers, so that there are threads started
/// after the policy was applied, and waits until the runtime runs (it logs `Bridge
/// starting.` from inside it, after the workers were started).
async fn start(
    config: &ConfigFile,
    env: &[(&str, &str)],
    before_exec: Option<BeforeExec>,
) -> BridgeProcess {
    let mut all_env = vec![("TOKIO_WORKER_THREADS", "2")];
    all_env.extend_from_slice(env);
    let bridge = BridgeProcess::spawn_with(config, &all_env, |command| {
        if let Some(before_exec) = before_exec {
            // SAFETY: every `BeforeExec` here only makes system calls on data on its own
            // stack, which is async-signal-safe, as code between fork and exec must be.
            unsafe {
                command.pre_exec(before_exec);
            }
        }
    });
    bridge.wait_for_log("Bridge starting.", WAIT).await;
    bridge
}

fn assert_every_thread(bridge: &BridgeProcess, policy: u32) {
    let policies = thread_policies(bridge.pid());
    assert!(
        policies.len() >= 3,
        "the main thread and two runtime workers: {policies:?}"
    );
    assert!(
        policies.iter().all(|(_, p)| *p == policy),
        "every thread under policy {policy}: {policies:?}"
    );
}

#[tokio::test]
async fn by_default_the_daemon_and_every_thread_it_starts_run_under_sched_batch() {
    let config = unreachable_config();
    let mut bridge = start(&config, &[], None).await;
    let line = bridge.wait_for_log(SWITCHED, WAIT).await;
    assert_eq!(line.str_field("policy"), Some("batch"));
    assert_every_thread(&bridge, BATCH);
    bridge.kill().await;
}

#[tokio::test]
async fn inherit_keeps_the_normal_policy() {
    let config = unreachable_config();
    // Through the environment, as the README documents for every key.
    let env = [("BAYEUX_MQTT_BRIDGE__BRIDGE__CPU_SCHEDULING", "inherit")];
    let mut bridge = start(&config, &env, None).await;
    let line = bridge.wait_for_log(KEPT, WAIT).await;
    assert_eq!(line.str_field("policy"), Some("other"));
    assert_eq!(bridge.count(SWITCHED), 0);
    assert_every_thread(&bridge, OTHER);
    bridge.kill().await;
}

/// As systemd's `CPUSchedulingPolicy=idle` or `chrt --idle 0` would start it: the operator's
/// choice stands although the config asks for `batch` (the default).
#[tokio::test]
async fn a_policy_the_daemon_was_started_under_is_kept() {
    let config = unreachable_config();
    let mut bridge = start(&config, &[], Some(under_sched_idle)).await;
    let line = bridge.wait_for_log(KEPT, WAIT).await;
    assert_eq!(line.str_field("policy"), Some("idle"));
    assert_eq!(bridge.count(SWITCHED), 0);
    assert_every_thread(&bridge, IDLE);
    bridge.kill().await;
}

/// Where a system call filter refuses the change, as the shipped systemd unit's
/// `SystemCallFilter=~@resources` does, the daemon says so and runs on under the policy it
/// was started with. The filter here is a seccomp program installed in the child before
/// `exec`: `sched_setscheduler` fails with EPERM, every other call is allowed.
#[tokio::test]
async fn a_refused_switch_is_logged_and_the_daemon_runs_on() {
    let config = unreachable_config();
    let mut bridge = start(&config, &[], Some(refuse_sched_setscheduler)).await;
    let line = bridge.wait_for_log(REFUSED, WAIT).await;
    assert_eq!(line.str_field("policy"), Some("other"));
    let error = line.str_field("error").unwrap_or_default();
    assert!(error.contains("os error 1"), "EPERM is reported: {error:?}");
    assert_eq!(bridge.count(SWITCHED), 0);
    assert_every_thread(&bridge, OTHER);
    bridge.kill().await;
}

/// Puts the calling process under `SCHED_IDLE`, as `chrt --idle 0` would.
fn under_sched_idle() -> std::io::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler only reads `param`, which outlives the call; pid 0 is the
    // calling thread.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0 as libc::c_long,
            libc::c_long::from(libc::SCHED_IDLE),
            &param as *const libc::sched_param,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Installs a seccomp filter on the calling process: `sched_setscheduler` fails with EPERM.
/// (It compares the system call number only, without checking the architecture, which is
/// enough for a test of a native binary.)
fn refuse_sched_setscheduler() -> std::io::Result<()> {
    let statement = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let nr = u32::try_from(libc::SYS_sched_setscheduler)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let filter = [
        // A = seccomp_data.nr (offset 0).
        statement(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
        // Not sched_setscheduler: skip the next statement.
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: nr,
        },
        statement(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        ),
        statement(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with these options reads `program` (and the filter it points to), which
    // outlive the calls; no-new-privileges first, as an unprivileged filter requires.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &program as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

//! The daemon's CPU scheduling policy (`bridge.cpu_scheduling`).
//!
//! At full speed the bridge spends more of its CPU time being woken up than forwarding: at
//! Bayeux → MQTT QoS 1 the broker's PUBACKs arrive a few per TCP segment, and under the
//! normal policy each segment wakes the bridge at once, preempting whatever runs on that CPU,
//! for a few microseconds of work. Under `SCHED_BATCH` a woken task does not preempt: it runs
//! when the CPU's current task blocks or its time slice ends, by when more segments have
//! arrived, so the same work takes fewer, longer turns (a third fewer context switches and
//! about 16 % less CPU per message in `scripts/bench`; CHANGELOG, "Benchmark history", item 14). On an
//! idle CPU it runs at once, as before; on a busy one a message may wait up to a time slice
//! (a few milliseconds) longer. Its priority among normal tasks (its nice value) is
//! unchanged.
//!
//! Only a process started under the normal policy (`SCHED_OTHER`) is switched: a policy set
//! where it was started (systemd's `CPUSchedulingPolicy=`, `chrt`) is the operator's and is
//! kept. The switch is for the calling thread, so [`apply`] must run before the runtime
//! starts threads; they inherit it.

use std::fmt;
use std::io;

use crate::config::CpuScheduling;

/// A Linux scheduling policy, as `sched_getscheduler(2)` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy(i32);

impl Policy {
    /// `SCHED_OTHER`, the normal time-sharing policy.
    pub const OTHER: Policy = Policy(0);
    /// `SCHED_BATCH`.
    pub const BATCH: Policy = Policy(3);
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The names systemd's CPUSchedulingPolicy= and chrt use.
        match self.0 {
            0 => f.write_str("other"),
            1 => f.write_str("fifo"),
            2 => f.write_str("rr"),
            3 => f.write_str("batch"),
            5 => f.write_str("idle"),
            6 => f.write_str("deadline"),
            n => write!(f, "policy {n}"),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Switched from the normal policy to `SCHED_BATCH`.
    Switched,
    /// Left as the process was started: `inherit` was asked for, or the process was started
    /// under a policy other than the normal one (already `batch`, or the operator's choice).
    Kept(Policy),
    /// The switch or the query was refused (a system call filter, a security module); the
    /// process runs under the policy it was started with (`other`, when the query worked).
    Failed {
        /// The policy the process runs under, if it could be read.
        policy: Option<Policy>,
        /// Why.
        error: io::Error,
    },
    /// Not Linux: scheduling policies are left alone.
    Unsupported,
}

impl Outcome {
    /// Logs the outcome at start (info: none of them stops the bridge).
    pub fn log(&self) {
        match self {
            Outcome::Switched => tracing::info!(
                policy = %Policy::BATCH,
                "Switched to the batch CPU scheduling policy."
            ),
            Outcome::Kept(policy) => tracing::info!(
                policy = %policy,
                "Kept the CPU scheduling policy the process was started with."
            ),
            Outcome::Failed { policy, error } => tracing::info!(
                policy = %policy.map_or_else(|| "unknown".to_owned(), |p| p.to_string()),
                %error,
                "Could not switch to the batch CPU scheduling policy; running under the one \
                 the process was started with. It can be set where the process is started \
                 (systemd CPUSchedulingPolicy=batch, chrt --batch 0)."
            ),
            Outcome::Unsupported => {
                tracing::debug!("CPU scheduling policies are left alone on this operating system.")
            }
        }
    }
}

/// Applies `wanted` to the calling thread (and so to every thread it starts afterwards).
pub fn apply(wanted: CpuScheduling) -> Outcome {
    if !cfg!(target_os = "linux") {
        return Outcome::Unsupported;
    }
    let current = match sys::current() {
        Ok(policy) => policy,
        Err(error) => {
            return Outcome::Failed {
                policy: None,
                error,
            };
        }
    };
    if wanted == CpuScheduling::Inherit || current != Policy::OTHER {
        return Outcome::Kept(current);
    }
    match sys::set_batch() {
        Ok(()) => Outcome::Switched,
        Err(error) => Outcome::Failed {
            policy: Some(current),
            error,
        },
    }
}

#[cfg(target_os = "linux")]
mod sys {
    use super::Policy;
    use std::io;

    // The system calls rather than the C library's wrappers: musl's `sched_setscheduler`
    // always fails with ENOSYS (POSIX means the process, Linux sets one thread).

    pub fn current() -> io::Result<Policy> {
        const PID_SELF: libc::c_long = 0;
        // SAFETY: sched_getscheduler(pid) takes no pointers; pid 0 is the calling thread.
        let rc = unsafe { libc::syscall(libc::SYS_sched_getscheduler, PID_SELF) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = libc::c_long::from(libc::SCHED_RESET_ON_FORK);
        i32::try_from(rc & !flags)
            .map(Policy)
            .map_err(|_| io::Error::other(format!("unexpected scheduling policy {rc}")))
    }

    pub fn set_batch() -> io::Result<()> {
        const PID_SELF: libc::c_long = 0;
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid `struct sched_param` that outlives the call, which only
        // reads it; pid 0 is the calling thread.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_sched_setscheduler,
                PID_SELF,
                libc::c_long::from(libc::SCHED_BATCH),
                &param as *const libc::sched_param,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

#[cfg(not(target_os = "linux"))]
mod sys {
    use super::Policy;
    use std::io;

    pub fn current() -> io::Result<Policy> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "scheduling policies are Linux's",
        ))
    }

    pub fn set_batch() -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "scheduling policies are Linux's",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_named_as_systemd_and_chrt_name_them() {
        assert_eq!(Policy::OTHER.to_string(), "other");
        assert_eq!(Policy::BATCH.to_string(), "batch");
        assert_eq!(Policy(5).to_string(), "idle");
        assert_eq!(Policy(1).to_string(), "fifo");
        assert_eq!(Policy(2).to_string(), "rr");
        assert_eq!(Policy(6).to_string(), "deadline");
        assert_eq!(Policy(9).to_string(), "policy 9");
    }

    /// On a thread of its own (the policy is per thread): `inherit` keeps `other`, `batch`
    /// switches it, and a second `batch` keeps what is now `batch`.
    #[cfg(target_os = "linux")]
    #[test]
    fn batch_switches_only_from_the_normal_policy() {
        let outcomes = std::thread::spawn(|| {
            let started = sys::current().map_err(|e| e.to_string())?;
            if started != Policy::OTHER {
                return Err(format!(
                    "the test thread started under {started}, not other"
                ));
            }
            let inherit = apply(CpuScheduling::Inherit);
            let first = apply(CpuScheduling::Batch);
            let second = apply(CpuScheduling::Batch);
            let now = sys::current().map_err(|e| e.to_string())?;
            Ok((
                format!("{inherit:?}"),
                format!("{first:?}"),
                format!("{second:?}"),
                now,
            ))
        })
        .join()
        .expect("the test thread does not panic");
        let (inherit, first, second, now) = outcomes.expect("policies can be read");
        assert_eq!(inherit, "Kept(Policy(0))");
        assert_eq!(first, "Switched");
        assert_eq!(second, "Kept(Policy(3))");
        assert_eq!(now, Policy::BATCH);
    }
}

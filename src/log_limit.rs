//! Rate limiting of repeated warnings, so that a flood of bad input cannot flood the log.
//!
//! A warning that can repeat once per message (an unroutable delivery, a dropped message, a
//! refused publish) goes through a [`LogLimiter`] under a fixed key (the warning's text): at
//! most [`BURST`] lines per key per [`WINDOW`]; what is held back is counted, and once the
//! window has ended one line says how many were suppressed ([`report`]). Keys are `&'static
//! str`, never text from the network, so the limiter's memory is bounded by the number of
//! call sites. The counting is pure (time is an argument) and unit-tested; [`SharedLimiter`]
//! adds a lock and the clock for callers on several tasks.
//!
//! Leaf module: used by the Bayeux library, the MQTT wrapper and the bridge alike.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines per key per window.
pub const BURST: u32 = 10;

/// The window: a key logs at most [`BURST`] lines per 10 seconds.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The text of the line that reports suppressed warnings.
pub const SUPPRESSED: &str = "Repeated warnings suppressed.";

#[derive(Debug)]
struct Window {
    key: &'static str,
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Counts lines per key; see the module doc.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window: Duration,
    windows: Vec<Window>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(BURST, WINDOW)
    }
}

impl LogLimiter {
    /// At most `burst` lines (at least 1) per key per `window`.
    pub fn new(burst: u32, window: Duration) -> Self {
        LogLimiter {
            burst: burst.max(1),
            window,
            windows: Vec::new(),
        }
    }

    /// Whether one more line under `key` may be logged at `now`; if not, it is counted as
    /// suppressed. Call [`LogLimiter::expired`] first (as [`SharedLimiter`] does), or the
    /// count of a window that ended is lost when the next one starts.
    pub fn allow(&mut self, key: &'static str, now: Instant) -> bool {
        let window = self.window;
        match self.windows.iter_mut().find(|w| w.key == key) {
            Some(w) if now.saturating_duration_since(w.start) < window => {
                if w.logged < self.burst {
                    w.logged += 1;
                    true
                } else {
                    w.suppressed += 1;
                    false
                }
            }
            Some(w) => {
                *w = Window {
                    key,
                    start: now,
                    logged: 1,
                    suppressed: 0,
                };
                true
            }
            None => {
                self.windows.push(Window {
                    key,
                    start: now,
                    logged: 1,
                    suppressed: 0,
                });
                true
            }
        }
    }

    /// The keys whose window ended by `now` with lines suppressed, with how many; those
    /// windows are forgotten (the next line under the key starts a new one).
    pub fn expired(&mut self, now: Instant) -> Vec<(&'static str, u64)> {
        let window = self.window;
        let mut out = Vec::new();
        self.windows.retain(|w| {
            if now.saturating_duration_since(w.start) < window {
                return true;
            }
            if w.suppressed > 0 {
                out.push((w.key, w.suppressed));
            }
            false
        });
        out
    }

    /// When the first window with suppressed lines ends: when [`LogLimiter::expired`] has
    /// something to report. `None` while nothing is suppressed.
    pub fn next_report(&self) -> Option<Instant> {
        self.windows
            .iter()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.start + self.window)
            .min()
    }
}

/// Logs one warning per key of `expired` with the number of lines suppressed.
pub fn report(expired: &[(&'static str, u64)], window: Duration) {
    for (key, suppressed) in expired {
        tracing::warn!(
            warning = key,
            suppressed,
            window = ?window,
            "{SUPPRESSED}"
        );
    }
}

/// A [`LogLimiter`] behind a lock, on the real clock.
#[derive(Debug, Default)]
pub struct SharedLimiter {
    inner: Mutex<LogLimiter>,
}

impl SharedLimiter {
    /// Whether one more line under `key` may be logged now (reporting ended windows first).
    pub fn allow(&self, key: &'static str) -> bool {
        let now = Instant::now();
        let mut limiter = self.lock();
        let expired = limiter.expired(now);
        let window = limiter.window;
        let allowed = limiter.allow(key, now);
        drop(limiter);
        report(&expired, window);
        allowed
    }

    /// Reports the windows that have ended; call it periodically (every [`WINDOW`]) so a
    /// flood that stopped is still reported.
    pub fn flush(&self) {
        let mut limiter = self.lock();
        let expired = limiter.expired(Instant::now());
        let window = limiter.window;
        drop(limiter);
        report(&expired, window);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogLimiter> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_logs_its_burst_per_window_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(10));
        let allowed = (0..100).filter(|_| l.allow("a", t0)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow("b", t0), "another key has a window of its own");
        assert_eq!(l.next_report(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(l.expired(t0 + Duration::from_secs(9)), vec![]);
        assert_eq!(l.expired(t0 + Duration::from_secs(10)), vec![("a", 97)]);
        assert_eq!(l.next_report(), None);
        assert!(
            l.allow("a", t0 + Duration::from_secs(11)),
            "a new window logs again"
        );
    }

    #[test]
    fn a_window_without_suppressed_lines_reports_nothing() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(3, Duration::from_secs(1));
        assert!(l.allow("a", t0) && l.allow("a", t0));
        assert_eq!(l.next_report(), None);
        assert_eq!(l.expired(t0 + Duration::from_secs(5)), vec![]);
        assert!(l.windows.is_empty(), "ended windows are forgotten");
    }

    #[test]
    fn a_window_that_ended_restarts_on_the_next_line_even_unreported() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(1, Duration::from_secs(1));
        assert!(l.allow("a", t0));
        assert!(!l.allow("a", t0));
        assert!(l.allow("a", t0 + Duration::from_secs(2)));
        assert!(!l.allow("a", t0 + Duration::from_secs(2)));
        assert_eq!(l.expired(t0 + Duration::from_secs(3)), vec![("a", 1)]);
    }
}

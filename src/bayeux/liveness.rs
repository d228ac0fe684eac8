//! Whether the client still hears from the server: the time since the last exchange, and
//! the longest a healthy session goes without one.
//!
//! A healthy long-polling session completes a `/meta/connect` at least every `advice.timeout`
//! (the server's hold) + `advice.interval` (the client's pause) + the network's allowance;
//! [`Liveness::is_stalled`] says when that has been exceeded by more than [`STALL_MARGIN`]. A
//! session stuck on a dead path, a reply that never ends or a driver that no longer turns
//! shows here even while the session still counts as connected.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Slack on top of the expected bound before the session counts as stalled.
pub const STALL_MARGIN: Duration = Duration::from_secs(5);

/// How recently the client completed an exchange with the server, and how recently it
/// should have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Since the last successful response (any request), or since the client started.
    pub since_exchange: Duration,
    /// The longest a healthy session goes without one: `advice.timeout` + `advice.interval`
    /// + `max_network_delay` + [`STALL_MARGIN`], with the current advice.
    pub expected_within: Duration,
}

impl Liveness {
    /// Whether the client has gone longer than expected without an exchange.
    pub fn is_stalled(&self) -> bool {
        self.since_exchange > self.expected_within
    }
}

#[derive(Debug)]
struct State {
    last_exchange: Instant,
    expected_within: Duration,
}

/// Shared between the driver (which records) and the handles (which read).
#[derive(Debug, Clone)]
pub(super) struct Pulse(Arc<Mutex<State>>);

impl Pulse {
    /// A pulse starting `now`, expecting an exchange within `expected` (+ the margin).
    pub(super) fn new(now: Instant, expected: Duration) -> Self {
        Pulse(Arc::new(Mutex::new(State {
            last_exchange: now,
            expected_within: expected + STALL_MARGIN,
        })))
    }

    /// A response arrived at `now`.
    pub(super) fn heard(&self, now: Instant) {
        self.lock().last_exchange = now;
    }

    /// The advice changed what to expect: within `expected` (+ the margin).
    pub(super) fn expect(&self, expected: Duration) {
        self.lock().expected_within = expected + STALL_MARGIN;
    }

    /// The liveness at `now`.
    pub(super) fn at(&self, now: Instant) -> Liveness {
        let state = self.lock();
        Liveness {
            since_exchange: now.saturating_duration_since(state.last_exchange),
            expected_within: state.expected_within,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalled_only_past_the_expected_bound_and_a_response_resets_it() {
        let t0 = Instant::now();
        let pulse = Pulse::new(t0, Duration::from_secs(10));
        let bound = Duration::from_secs(10) + STALL_MARGIN;
        assert!(!pulse.at(t0 + bound).is_stalled());
        assert!(pulse.at(t0 + bound + Duration::from_millis(1)).is_stalled());
        pulse.heard(t0 + bound);
        assert_eq!(pulse.at(t0 + bound).since_exchange, Duration::ZERO);
        assert!(!pulse.at(t0 + bound * 2).is_stalled());
        pulse.expect(Duration::from_secs(100));
        assert!(
            !pulse.at(t0 + bound * 5).is_stalled(),
            "longer advice, longer bound"
        );
    }
}

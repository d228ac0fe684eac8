//! Capped, jittered, linearly growing backoff, shared by the Bayeux client and (later) the
//! MQTT side.
//!
//! Attempt `n` (1-based) waits `min(n × increment, max)`, shortened by up to `jitter` (a
//! fraction) at random so that many clients restarting together do not retry in lockstep.
//! [`Backoff::reset`] after any success. CometD's clients use 1 s steps up to 30 s; those are
//! the defaults. Pure: the random source is seeded, so tests are deterministic.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffOptions {
    /// Added per consecutive failure. Default 1 s.
    pub increment: Duration,
    /// Upper bound of one wait. Default 30 s.
    pub max: Duration,
    /// Fraction (0.0–1.0) by which a wait may be shortened at random. Default 0.2.
    pub jitter: f64,
}

impl Default for BackoffOptions {
    fn default() -> Self {
        BackoffOptions {
            increment: Duration::from_secs(1),
            max: Duration::from_secs(30),
            jitter: 0.2,
        }
    }
}

/// A backoff sequence.
#[derive(Debug, Clone)]
pub struct Backoff {
    options: BackoffOptions,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A sequence seeded from the OS.
    pub fn new(options: BackoffOptions) -> Self {
        Self::with_seed(options, rand::rng().random())
    }

    /// A deterministic sequence (tests).
    pub fn with_seed(options: BackoffOptions, seed: u64) -> Self {
        let jitter = if options.jitter.is_finite() {
            options.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Backoff {
            options: BackoffOptions { jitter, ..options },
            attempt: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The wait before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let full = self
            .options
            .increment
            .saturating_mul(self.attempt)
            .min(self.options.max);
        self.jittered(full)
    }

    /// The wait before the next attempt when an earlier retry cannot help (e.g. refused
    /// credentials): the maximum, shortened by the jitter like any other wait. Counts one
    /// more failure.
    pub fn longest_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.jittered(self.options.max)
    }

    fn jittered(&mut self, full: Duration) -> Duration {
        if self.options.jitter == 0.0 {
            return full;
        }
        let cut: f64 = self.rng.random_range(0.0..=self.options.jitter);
        full.mul_f64(1.0 - cut)
    }

    /// Consecutive failures counted so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(jitter: f64) -> BackoffOptions {
        BackoffOptions {
            increment: Duration::from_secs(1),
            max: Duration::from_secs(4),
            jitter,
        }
    }

    #[test]
    fn grows_linearly_then_caps() {
        let mut b = Backoff::with_seed(opts(0.0), 1);
        let seq: Vec<u64> = (0..6).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(seq, vec![1, 2, 3, 4, 4, 4]);
        assert_eq!(b.attempts(), 6);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(opts(0.0), 1);
        b.next_delay();
        b.next_delay();
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn the_longest_delay_is_the_maximum_from_the_first_failure() {
        let mut b = Backoff::with_seed(opts(0.0), 1);
        assert_eq!(b.longest_delay(), Duration::from_secs(4));
        assert_eq!(b.attempts(), 1);
        let mut b = Backoff::with_seed(opts(0.2), 3);
        let d = b.longest_delay();
        assert!(d <= Duration::from_secs(4) && d >= Duration::from_secs(4).mul_f64(0.8));
    }

    #[test]
    fn jitter_only_shortens_and_stays_within_the_fraction() {
        let mut b = Backoff::with_seed(opts(0.2), 42);
        for n in 1..=10u32 {
            let full = Duration::from_secs(u64::from(n.min(4)));
            let d = b.next_delay();
            assert!(d <= full && d >= full.mul_f64(0.8), "attempt {n}: {d:?}");
        }
    }

    #[test]
    fn with_twenty_percent_jitter_early_waits_still_grow() {
        let mut b = Backoff::with_seed(
            BackoffOptions {
                max: Duration::from_secs(30),
                ..opts(0.2)
            },
            7,
        );
        let waits: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(waits.windows(2).all(|w| w[0] < w[1]), "{waits:?}");
    }

    #[test]
    fn nonsense_jitter_is_clamped() {
        let mut b = Backoff::with_seed(
            BackoffOptions {
                jitter: f64::NAN,
                ..opts(0.0)
            },
            1,
        );
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        let mut b = Backoff::with_seed(
            BackoffOptions {
                jitter: 7.0,
                ..opts(0.0)
            },
            1,
        );
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}

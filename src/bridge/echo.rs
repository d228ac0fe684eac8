//! Loop prevention: remembers what the bridge itself published so the copy that comes back
//! through the other direction can be recognised and dropped.
//!
//! A Bayeux server delivers a message to every subscriber of its channel, the publisher
//! included, and MQTT 3.1.1 has no No Local option. With `direction = "both"` (or two routes
//! that mirror each other) every forwarded message would otherwise come straight back. Each
//! publish the bridge makes is recorded as a fingerprint of (name, payload); the first
//! matching message seen within `ttl` consumes one record and is dropped as an echo. A
//! message from someone else with the same name and payload in that window is dropped once
//! too: the price of having no origin marker on the wire. Pure: the caller passes `now`.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

/// Fingerprints of recent own publishes, each valid for `ttl`.
#[derive(Debug)]
pub struct EchoFilter {
    ttl: Duration,
    /// Most records kept: beyond it the oldest goes first (its echo, if it still came, would
    /// be forwarded once), so a flood of own publishes cannot grow the filter without bound.
    max: usize,
    /// Records given up to the cap since the start.
    evicted: u64,
    /// Fingerprint → expiry times of the outstanding records (one per publish).
    pending: HashMap<u64, VecDeque<Instant>>,
    /// Insertion order, for expiring old records cheaply.
    order: VecDeque<(Instant, u64)>,
}

impl EchoFilter {
    /// A filter whose records expire after `ttl`, with at most [`EchoFilter::DEFAULT_MAX`]
    /// records.
    pub fn new(ttl: Duration) -> Self {
        Self::with_max(ttl, Self::DEFAULT_MAX)
    }

    /// The default cap: a few megabytes, far more than the publishes whose echoes are still
    /// on their way (they come back within milliseconds).
    pub const DEFAULT_MAX: usize = 100_000;

    /// A filter whose records expire after `ttl`, with at most `max` (at least 1) records.
    pub fn with_max(ttl: Duration, max: usize) -> Self {
        EchoFilter {
            ttl,
            max: max.max(1),
            evicted: 0,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records given up to the cap since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records that the bridge published `payload` on `name`.
    pub fn record(&mut self, name: &str, payload: &[u8], now: Instant) {
        self.expire(now);
        while self.order.len() >= self.max {
            self.evict_oldest();
        }
        let key = fingerprint(name, payload);
        let expires = now + self.ttl;
        self.pending.entry(key).or_default().push_back(expires);
        self.order.push_back((expires, key));
    }

    /// Whether a message seen on `name` is the echo of an own publish; consumes the record.
    pub fn take(&mut self, name: &str, payload: &[u8], now: Instant) -> bool {
        self.expire(now);
        let key = fingerprint(name, payload);
        let Some(records) = self.pending.get_mut(&key) else {
            return false;
        };
        let found = records.pop_front().is_some();
        if records.is_empty() {
            self.pending.remove(&key);
        }
        found
    }

    /// Records still outstanding.
    pub fn len(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }

    /// Whether no records are outstanding.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Drops the oldest record (if it was not consumed already).
    fn evict_oldest(&mut self) {
        let Some((expires, key)) = self.order.pop_front() else {
            return;
        };
        if let Some(records) = self.pending.get_mut(&key) {
            // The oldest record of this key, if it is this one (records of one key are in
            // the order they were made; a consumed one is gone from the front already).
            if records.front() == Some(&expires) {
                records.pop_front();
                self.evicted += 1;
            }
            if records.is_empty() {
                self.pending.remove(&key);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(expires, key)) = self.order.front() {
            if expires > now {
                break;
            }
            self.order.pop_front();
            if let Some(records) = self.pending.get_mut(&key) {
                // Records of one key expire in the order they were made.
                if records.front().is_some_and(|t| *t <= now) {
                    records.pop_front();
                }
                if records.is_empty() {
                    self.pending.remove(&key);
                }
            }
        }
    }
}

fn fingerprint(name: &str, payload: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    payload.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn an_own_publish_is_recognised_once() {
        let now = Instant::now();
        let mut f = EchoFilter::new(TTL);
        f.record("/a", b"1", now);
        assert!(f.take("/a", b"1", now));
        assert!(
            !f.take("/a", b"1", now),
            "a second identical message is not an echo"
        );
    }

    #[test]
    fn name_and_payload_must_both_match() {
        let now = Instant::now();
        let mut f = EchoFilter::new(TTL);
        f.record("/a", b"1", now);
        assert!(!f.take("/b", b"1", now));
        assert!(!f.take("/a", b"2", now));
        assert!(f.take("/a", b"1", now));
    }

    #[test]
    fn repeated_publishes_are_counted() {
        let now = Instant::now();
        let mut f = EchoFilter::new(TTL);
        f.record("/a", b"x", now);
        f.record("/a", b"x", now);
        assert_eq!(f.len(), 2);
        assert!(f.take("/a", b"x", now));
        assert!(f.take("/a", b"x", now));
        assert!(!f.take("/a", b"x", now));
        assert!(f.is_empty());
    }

    #[test]
    fn a_flood_of_records_is_capped_by_dropping_the_oldest() {
        let now = Instant::now();
        let mut f = EchoFilter::with_max(TTL, 3);
        for n in 0..1000u32 {
            f.record("/a", &n.to_le_bytes(), now);
        }
        assert_eq!(f.len(), 3, "bounded");
        assert_eq!(f.evicted(), 997);
        assert!(
            !f.take("/a", &0u32.to_le_bytes(), now),
            "the oldest went first"
        );
        assert!(
            f.take("/a", &999u32.to_le_bytes(), now),
            "the newest is kept"
        );
        assert!(f.order.len() <= 3, "the order list is bounded too");
    }

    #[test]
    fn records_expire_after_the_ttl() {
        let now = Instant::now();
        let mut f = EchoFilter::new(TTL);
        f.record("/a", b"1", now);
        f.record("/a", b"1", now + Duration::from_secs(20));
        assert!(!f.is_empty());
        // The first record has expired, the second has not.
        assert!(f.take("/a", b"1", now + Duration::from_secs(31)));
        assert!(!f.take("/a", b"1", now + Duration::from_secs(31)));
        let later = now + Duration::from_secs(40);
        f.record("/b", b"2", later);
        assert!(
            !f.take("/b", b"2", later + TTL),
            "a record is gone once its ttl is over"
        );
        assert!(f.is_empty());
    }
}

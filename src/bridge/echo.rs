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
    /// Fingerprint → expiry times of the outstanding records (one per publish).
    pending: HashMap<u64, VecDeque<Instant>>,
    /// Insertion order, for expiring old records cheaply.
    order: VecDeque<(Instant, u64)>,
}

impl EchoFilter {
    /// A filter whose records expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        EchoFilter {
            ttl,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Records that the bridge published `payload` on `name`.
    pub fn record(&mut self, name: &str, payload: &[u8], now: Instant) {
        self.expire(now);
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

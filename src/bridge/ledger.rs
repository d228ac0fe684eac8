//! Entries in flight by tag, for the pipelines that publish many messages and read their
//! outcomes, tagged, from one channel (`b2m::settlement`, `m2b::settlement`).

use std::collections::HashMap;

/// Entries in flight, by tag (consecutive numbers). Outcomes may come in any order; the map
/// holds only what is in flight (at most `queue_capacity` entries in a pipeline), so an entry
/// that waits long does not make it grow with the ones that pass it.
pub(super) struct Ledger<T> {
    next: u64,
    entries: HashMap<u64, T>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            next: 0,
            entries: HashMap::new(),
        }
    }
}

impl<T> Ledger<T> {
    /// Adds `entry` and returns its tag.
    pub(super) fn insert(&mut self, entry: T) -> u64 {
        let tag = self.next;
        self.next += 1;
        self.entries.insert(tag, entry);
        tag
    }

    /// Takes the entry of `tag` out, if it is still there.
    pub(super) fn take(&mut self, tag: u64) -> Option<T> {
        self.entries.remove(&tag)
    }

    /// The entry of `tag`, if it is there.
    pub(super) fn get(&self, tag: u64) -> Option<&T> {
        self.entries.get(&tag)
    }

    /// The entry of `tag`, to change, if it is there.
    pub(super) fn get_mut(&mut self, tag: u64) -> Option<&mut T> {
        self.entries.get_mut(&tag)
    }

    /// How many entries are still there.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is there.
    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn the_ledger_hands_out_consecutive_tags_and_takes_entries_in_any_order() {
        let mut ledger = Ledger::default();
        let tags: Vec<u64> = ["a", "b", "c", "d"]
            .into_iter()
            .map(|e| ledger.insert(e))
            .collect();
        assert_eq!(tags, [0, 1, 2, 3]);
        assert_eq!(ledger.take(2), Some("c"));
        assert_eq!(ledger.take(2), None, "taken once only");
        assert_eq!(ledger.take(0), Some("a"));
        assert_eq!(ledger.take(9), None, "never handed out");
        assert_eq!(ledger.insert("e"), 4, "tags are not reused");
        assert_eq!(ledger.len(), 3);
        assert_eq!(ledger.get(1), Some(&"b"));
        if let Some(entry) = ledger.get_mut(1) {
            *entry = "B";
        }
        assert_eq!(ledger.get(1), Some(&"B"), "changed in place");
        for tag in [4, 1, 3] {
            assert!(ledger.take(tag).is_some());
        }
        assert!(ledger.is_empty());
    }

    #[test]
    fn an_entry_that_waits_long_does_not_make_the_ledger_grow() {
        let mut ledger = Ledger::default();
        let slow = ledger.insert(0);
        for n in 1..10_000 {
            let tag = ledger.insert(n);
            assert_eq!(ledger.take(tag), Some(n));
        }
        assert_eq!(ledger.entries.len(), 1);
        assert_eq!(ledger.take(slow), Some(0));
    }
}

//! The membership protocol's pure part (no IO): member records, the set of live members they
//! give, and who forwards which Bayeux → MQTT route.
//!
//! Each member keeps a retained record under
//! `bayeux-mqtt-bridge/cluster/<group>/members/<member_id>`: a JSON object with
//! `"status": "online"` while it is connected, cleared (a zero-length retained message) by
//! its last will when it dies and at a clean shutdown. Every member subscribes to the group's
//! records, so every member sees the same set once the broker has delivered the changes.
//!
//! - `active_standby`: the live member with the lowest id (byte order) forwards every route.
//! - `partitioned`: each route goes to the live member with the highest rendezvous score of
//!   (member id, route name) ([`owner`]), so a member that joins takes only the routes it
//!   scores highest on, and one that leaves gives only its own routes away.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::config::ClusterMode;

/// A member record as published on its topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Always `online` (a record that is gone is a zero-length message).
    pub status: String,
    pub group: String,
    pub member_id: String,
    /// Which process and connection published it (see [`View::apply`]).
    pub incarnation: String,
    pub mode: String,
    /// `unknown`, `active`, `standby` or `partitioned`.
    pub role: String,
    /// With `partitioned`: the routes (names) this member forwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The live members this member sees, itself included.
    pub members: Vec<String>,
}

/// What a message on a member topic says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The member is online; its record came from `incarnation`.
    Online { incarnation: String },
    /// The record is gone (zero-length payload): the member died or stopped.
    Gone,
    /// Something else (a non-retained status event, garbage): ignored.
    Other,
}

/// Reads a message published on a member topic.
pub fn read(payload: &[u8]) -> Seen {
    if payload.is_empty() {
        return Seen::Gone;
    }
    match serde_json::from_slice::<Record>(payload) {
        Ok(record) if record.status == "online" => Seen::Online {
            incarnation: record.incarnation,
        },
        _ => Seen::Other,
    }
}

/// The member id a member topic names, when `topic` is `<prefix><member_id>` with a
/// non-empty id of one level.
pub fn member_of<'a>(prefix: &str, topic: &'a str) -> Option<&'a str> {
    topic
        .strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// This member's view of the group: the other members whose records are online.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    others: BTreeSet<String>,
}

impl View {
    /// Applies what the record of `member` says; `true` when the set of members changed.
    pub fn apply(&mut self, member: &str, seen: &Seen) -> bool {
        match seen {
            Seen::Online { .. } => self.others.insert(member.to_owned()),
            Seen::Gone => self.others.remove(member),
            Seen::Other => false,
        }
    }

    /// Forgets every other member (their records come again with the next subscription).
    pub fn clear(&mut self) {
        self.others.clear();
    }

    /// The live members, `own` included, sorted.
    pub fn members(&self, own: &str) -> Vec<String> {
        let mut all: BTreeSet<String> = self.others.clone();
        all.insert(own.to_owned());
        all.into_iter().collect()
    }
}

/// Whether `own` forwards the route named `route` among the live `members` (sorted, `own`
/// included) in `mode`.
pub fn forwards(mode: ClusterMode, members: &[String], own: &str, route: &str) -> bool {
    match mode {
        ClusterMode::ActiveStandby => members.first().is_none_or(|first| first == own),
        ClusterMode::Partitioned => owner(members, route).is_none_or(|o| o == own),
    }
}

/// The member that forwards the route named `route`: the highest rendezvous score, ties
/// broken by the lower id. `None` when there are no members.
pub fn owner<'a>(members: &'a [String], route: &str) -> Option<&'a str> {
    members
        .iter()
        .map(|m| (score(m, route), std::cmp::Reverse(m)))
        .max()
        .map(|(_, std::cmp::Reverse(m))| m.as_str())
}

/// The rendezvous score of `member` for `route`: FNV-1a over both (with a separator that
/// neither can hold), then a 64-bit finaliser (splitmix64's) so that the scores spread
/// evenly. Fixed here rather than `std`'s hasher, whose output may change between Rust
/// versions: members built by different compilers must agree.
fn score(member: &str, route: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in member.bytes().chain([0xff]).chain(route.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(names: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn records_online_gone_and_other() {
        let record = Record {
            status: "online".into(),
            group: "g".into(),
            member_id: "a".into(),
            incarnation: "1-1".into(),
            mode: "active_standby".into(),
            role: "active".into(),
            routes: vec![],
            members: vec!["a".into()],
        };
        let json = serde_json::to_vec(&record).expect("serialises");
        assert_eq!(
            read(&json),
            Seen::Online {
                incarnation: "1-1".into()
            }
        );
        assert_eq!(read(b""), Seen::Gone);
        assert_eq!(read(b"offline"), Seen::Other);
        assert_eq!(read(br#"{"event":"replay_gap"}"#), Seen::Other);
    }

    #[test]
    fn member_topics_name_one_level() {
        let prefix = "bayeux-mqtt-bridge/cluster/g/members/";
        assert_eq!(member_of(prefix, &format!("{prefix}b-2")), Some("b-2"));
        assert_eq!(member_of(prefix, prefix), None);
        assert_eq!(member_of(prefix, &format!("{prefix}a/b")), None);
        assert_eq!(member_of(prefix, "other/topic"), None);
    }

    #[test]
    fn the_view_follows_records_and_always_holds_its_own_member() {
        let mut view = View::default();
        let online = Seen::Online {
            incarnation: "x".into(),
        };
        assert!(view.apply("b", &online));
        assert!(!view.apply("b", &online));
        assert!(!view.apply("c", &Seen::Other));
        assert_eq!(view.members("c"), ids(&["b", "c"]));
        assert!(view.apply("b", &Seen::Gone));
        assert_eq!(view.members("c"), ids(&["c"]));
    }

    #[test]
    fn active_standby_makes_the_lowest_live_id_active_for_every_route() {
        let members = ids(&["m2", "m1", "m3"]);
        for route in ["r1", "r2"] {
            assert!(forwards(ClusterMode::ActiveStandby, &members, "m1", route));
            assert!(!forwards(ClusterMode::ActiveStandby, &members, "m2", route));
        }
        // m1 dies: m2 takes over.
        let members = ids(&["m2", "m3"]);
        assert!(forwards(ClusterMode::ActiveStandby, &members, "m2", "r1"));
    }

    #[test]
    fn partitioned_gives_each_route_to_exactly_one_member() {
        let members = ids(&["a", "b", "c"]);
        let routes: Vec<String> = (0..60).map(|i| format!("route-{i}")).collect();
        let mut per_member = [0; 3];
        for route in &routes {
            let owners: Vec<usize> = (0..3)
                .filter(|&i| forwards(ClusterMode::Partitioned, &members, &members[i], route))
                .collect();
            assert_eq!(owners.len(), 1, "{route}: {owners:?}");
            per_member[owners[0]] += 1;
        }
        // Spread: every member gets some of 60 routes.
        assert!(per_member.iter().all(|&n| n > 5), "{per_member:?}");
    }

    #[test]
    fn scores_are_fixed_across_builds() {
        // Members built by different compilers must agree on the owners.
        assert_eq!(score("a", "r"), FIXED_SCORE);
        assert_eq!(owner(&ids(&["a", "b", "c"]), "orders"), Some(FIXED_OWNER));
    }

    /// `score("a", "r")` as this code computes it today.
    const FIXED_SCORE: u64 = 15_071_584_790_836_553_889;

    /// The owner of route `orders` among a, b, c, as this code computes it today.
    const FIXED_OWNER: &str = "a";

    proptest! {
        #[test]
        fn a_joining_member_moves_only_its_own_share(
            members in proptest::collection::btree_set("[a-z0-9]{1,8}", 1..6),
            joining in "[a-z0-9]{1,8}",
            routes in proptest::collection::vec("[a-z0-9/._-]{1,12}", 1..40),
        ) {
            prop_assume!(!members.contains(&joining));
            let before: Vec<String> = members.iter().cloned().collect();
            let mut after = before.clone();
            after.push(joining.clone());
            after.sort();
            for route in &routes {
                let old = owner(&before, route);
                let new = owner(&after, route);
                // A route either stays where it was or goes to the new member.
                prop_assert!(new == old || new == Some(joining.as_str()),
                    "{route}: {old:?} -> {new:?}");
            }
        }

        #[test]
        fn a_leaving_member_gives_away_only_its_own_routes(
            members in proptest::collection::btree_set("[a-z0-9]{1,8}", 2..6),
            routes in proptest::collection::vec("[a-z0-9/._-]{1,12}", 1..40),
        ) {
            let before: Vec<String> = members.iter().cloned().collect();
            let leaving = before[0].clone();
            let after: Vec<String> = before[1..].to_vec();
            for route in &routes {
                let old = owner(&before, route);
                if old != Some(leaving.as_str()) {
                    prop_assert_eq!(owner(&after, route), old);
                }
            }
        }
    }
}

//! The LPM tables as the kernel holds them: the entries of the longest prefix
//! a table can hold in an exact-match hash in front of its trie, every shorter
//! one in the trie.
//!
//! - Peers: host prefixes (an IPv4 /32, an IPv6 /128: prefix length 128 in the
//!   key space) in `PEER_HOSTS_*`, the rest in `PEERS_*`.
//! - Rules: exact-port entries (`RuleKey::EXACT_PORT_PREFIX`, the longest a
//!   rule key has: port ranges split into port prefixes of at most 16 bits) in
//!   `RULE_PORTS_*`, the rest in `RULES_*`.
//!
//! Why: a trie's lookup deepens with its number of entries (10,000 host peers
//! with a port each cost a new flow ~50% more than 10), a hash lookup does not.
//! Exactness: an entry of the longest prefix is the longest match an address
//! (a rule key) can have, so a hit in the hash is what the trie holding every
//! entry would answer; on a miss no such entry covers the key, and the trie of
//! the shorter entries answers as the full one would. The kernel asks the hash
//! first, then the trie (`ebpf/src/tables.rs`); so does `compile::testgen::TableModel`.
use agent_common::{RuleKey, Verdict};

/// Prefix length of a host prefix in the peer key space (IPv4 is IPv4-mapped).
pub const HOST_PREFIX: u32 = 128;

/// One copy of an LPM table, split as the kernel holds it.
#[derive(Debug, PartialEq, Eq)]
pub struct Split<K, V> {
    /// The hash: key -> value of the entries of the longest prefix.
    pub exact: Vec<(K, V)>,
    /// The trie: (prefix length, key, value) of the shorter entries.
    pub prefixes: Vec<(u32, K, V)>,
}

impl<K: Copy, V: Copy> Split<K, V> {
    /// Entries of prefix length `exact_len` to the hash, the rest to the trie.
    pub fn of(entries: &[(u32, K, V)], exact_len: u32) -> Self {
        let mut out = Split {
            exact: Vec::new(),
            prefixes: Vec::new(),
        };
        for &(len, key, value) in entries {
            if len == exact_len {
                out.exact.push((key, value));
            } else {
                out.prefixes.push((len, key, value));
            }
        }
        out
    }
}

/// A hash's entries back as (prefix length `exact_len`, key, value): the
/// inverse of [`Split::of`] for what the kernel's hash holds.
pub fn merged<K, V>(exact: Vec<(K, V)>, exact_len: u32) -> impl Iterator<Item = (u32, K, V)> {
    exact.into_iter().map(move |(k, v)| (exact_len, k, v))
}

/// Encoded peer prefixes (`Encoded::peers`): host addresses and shorter prefixes.
pub fn peers(entries: &[(u32, [u8; 16], u32)]) -> Split<[u8; 16], u32> {
    Split::of(entries, HOST_PREFIX)
}

/// Encoded rule keys (`Encoded::rules`): exact ports and the rest.
pub fn rules(entries: &[(u32, RuleKey, Verdict)]) -> Split<RuleKey, Verdict> {
    Split::of(entries, RuleKey::EXACT_PORT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::tables::peer_key;

    #[test]
    fn host_prefixes_of_both_families_go_to_the_hash() {
        let entries: Vec<(u32, [u8; 16], u32)> = [
            ("10.0.0.1/32", 1),
            ("10.0.0.0/24", 2),
            ("fd00::1/128", 3),
            ("fd00::/64", 4),
            ("0.0.0.0/0", 5),
        ]
        .iter()
        .map(|(net, class)| {
            let (len, addr) = peer_key(&net.parse().unwrap());
            (len, addr, *class)
        })
        .collect();
        let split = peers(&entries);
        let classes: Vec<u32> = split.exact.iter().map(|(_, c)| *c).collect();
        assert_eq!(classes, vec![1, 3]);
        let rest: Vec<(u32, u32)> = split.prefixes.iter().map(|(l, _, c)| (*l, *c)).collect();
        assert_eq!(rest, vec![(120, 2), (64, 4), (96, 5)]);
    }

    #[test]
    fn exact_ports_go_to_the_hash() {
        let key = RuleKey::default();
        let entries = [
            (RuleKey::EXACT_PORT_PREFIX, key, Verdict::default()),
            (RuleKey::EXACT_PORT_PREFIX - 1, key, Verdict::default()),
            (RuleKey::ANY_PROTOCOL_PREFIX, key, Verdict::default()),
        ];
        let split = rules(&entries);
        assert_eq!(split.exact.len(), 1);
        let lens: Vec<u32> = split.prefixes.iter().map(|(l, _, _)| *l).collect();
        assert_eq!(lens, vec![111, 80]);
    }
}

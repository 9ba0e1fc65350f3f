//! Lookups in the policy tables (layout and lookup order in `agent_common`).
//! The tables are double-buffered: userspace fills the inactive copy, then
//! flips `ACTIVE.generation` in one write; `Tables::live` is the one place that
//! picks a copy, so all four lookups of a packet read the same generation.
use agent_common::{
    ActiveTables, GroupKey, RuleKey, SourcePortKey, Verdict, PEER_CLASS_WORLD, PEER_GROUP_ANY,
};
use aya_ebpf::maps::lpm_trie::Key;

use crate::maps::{
    ACTIVE, GROUPS_0, GROUPS_1, PEERS_0, PEERS_1, PEER_HOSTS_0, PEER_HOSTS_1, RULES_0, RULES_1,
    RULE_PORTS_0, RULE_PORTS_1, SPORTS_0, SPORTS_1,
};

/// `ACTIVE[0]`, read once per packet (all zero before userspace wrote it).
#[inline(always)]
pub fn active() -> ActiveTables {
    match ACTIVE.get(0) {
        Some(a) => *a,
        None => ActiveTables::default(),
    }
}

/// The live copy of the tables.
pub struct Tables {
    generation: u32,
}

impl Tables {
    #[inline(always)]
    pub fn of(active: &ActiveTables) -> Self {
        Tables {
            generation: active.generation,
        }
    }

    /// `lookup` in the live one of a map's two copies: generation 0 is the
    /// `_0` map. A branch around two calls rather than a call on a chosen map:
    /// each call then has one known map, which keeps the verifier's work on
    /// `from_endpoint` about half as large.
    #[inline(always)]
    fn live<T, R>(
        &self,
        copy_0: &'static T,
        copy_1: &'static T,
        lookup: impl FnOnce(&'static T) -> R,
    ) -> R {
        if self.generation == 0 {
            lookup(copy_0)
        } else {
            lookup(copy_1)
        }
    }

    /// The class of `addr`; an address no prefix covers is "world". Host
    /// prefixes are in the hash `PEER_HOSTS_*` (flat in their number, where a
    /// trie deepens), shorter ones in the trie `PEERS_*`: a host prefix is the
    /// longest an address can match, so a hit is the answer and a miss leaves
    /// it to the trie (`agent::dataplane::exact`).
    #[inline(always)]
    pub fn peer_class(&self, addr: &[u8; 16]) -> u32 {
        // SAFETY: a plain u32, copied out at once.
        let host = self.live(&PEER_HOSTS_0, &PEER_HOSTS_1, |m| {
            unsafe { m.get(addr) }.copied()
        });
        if let Some(class) = host {
            return class;
        }
        let key = Key::new(128, *addr);
        self.live(&PEERS_0, &PEERS_1, |m| m.get(&key).copied())
            .unwrap_or(PEER_CLASS_WORLD)
    }

    /// The class of the initiator's source port; 0 on a miss (tables that do
    /// not classify this endpoint's source ports use only class 0).
    #[inline(always)]
    pub fn source_port_class(&self, endpoint_id: u32, dir: u8, protocol: u8, port: u16) -> u8 {
        let key = Key::new(
            SourcePortKey::FULL_PREFIX,
            SourcePortKey {
                endpoint_id,
                direction: dir,
                protocol,
                port: port.to_be_bytes(),
            },
        );
        self.live(&SPORTS_0, &SPORTS_1, |m| m.get(&key).copied())
            .unwrap_or(0)
    }

    /// The peer class's group for this endpoint and direction; a miss is the
    /// wildcard group (classes treated like the endpoint's most common row).
    #[inline(always)]
    pub fn peer_group(&self, endpoint_id: u32, dir: u8, class: u32) -> u32 {
        let key = GroupKey {
            endpoint_id,
            peer_class: class,
            direction: dir,
            _pad: [0; 3],
        };
        // SAFETY: plain u32 values, copied out at once.
        self.live(&GROUPS_0, &GROUPS_1, |m| unsafe { m.get(&key) }.copied())
            .unwrap_or(PEER_GROUP_ANY)
    }

    /// The verdict of one table (`data.table`): the peer's group (unless it is
    /// the wildcard), then the wildcard group.
    #[inline(always)]
    pub fn verdict(&self, data: RuleKey) -> Option<Verdict> {
        if data.peer_group != PEER_GROUP_ANY {
            if let Some(v) = self.rule(data) {
                return Some(v);
            }
        }
        self.rule(RuleKey {
            peer_group: PEER_GROUP_ANY,
            ..data
        })
    }

    /// The longest entry matching `data` in one group: exact-port entries are
    /// in the hash `RULE_PORTS_*` (the longest prefix a rule key has, so a hit
    /// is the answer), shorter ones in the trie `RULES_*`.
    #[inline(always)]
    fn rule(&self, data: RuleKey) -> Option<Verdict> {
        // SAFETY: plain values, copied out at once.
        let exact = self.live(&RULE_PORTS_0, &RULE_PORTS_1, |m| {
            unsafe { m.get(&data) }.copied()
        });
        if exact.is_some() {
            return exact;
        }
        let key = Key::new(RuleKey::FULL_PREFIX, data);
        self.live(&RULES_0, &RULES_1, |m| m.get(&key).copied())
    }
}

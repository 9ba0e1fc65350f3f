//! Types shared by the kernel programs (`agent-ebpf`) and the agent.
//!
//! Everything here is `#[repr(C)]` with explicit padding so that the layout the
//! kernel sees is the layout userspace writes; the tests at the bottom pin sizes
//! and offsets.
#![no_std]

// ---------------------------------------------------------------------------
// The policy dataplane (programs `from_endpoint` / `to_endpoint`).
//
// Maps (all defined in ebpf/src/maps.rs, filled by agent/src/dataplane/):
//
// | map                   | type             | key                           | value                  |
// | --------------------- | ---------------- | ----------------------------- | ---------------------- |
// | `ENDPOINTS`           | HashMap          | ifindex `u32`                 | [`EndpointInfo`]       |
// | `ACTIVE`              | Array[1]         | `0u32`                        | [`ActiveTables`]       |
// | `PEERS_0`/`PEERS_1`   | LpmTrie          | `{prefix_len, [u8;16]}`       | peer class `u32`       |
// | `PEER_HOSTS_0`/`_1`   | HashMap          | address `[u8;16]`             | peer class `u32`       |
// | `RULES_0`/`RULES_1`   | LpmTrie          | `{prefix_len, RuleKey}`       | [`Verdict`]            |
// | `RULE_PORTS_0`/`_1`   | HashMap          | [`RuleKey`]                   | [`Verdict`]            |
// | `SPORTS_0`/`SPORTS_1` | LpmTrie          | `{prefix_len, SourcePortKey}` | source-port class `u8` |
// | `GROUPS_0`/`GROUPS_1` | HashMap          | [`GroupKey`]                  | peer group `u32`       |
// | `CONNTRACK`           | LruHashMap       | [`CtKey`]                     | [`CtValue`]            |
// | `FLOW_EVENTS`         | RingBuf          | -                             | [`FlowEvent`]          |
// | `DP_COUNTERS`         | PerCpuArray<u64> | [`stat`] index                | count                  |
// | `EVENT_BUDGET`        | PerCpuArray[1]   | `0u32`                        | [`TokenBucket`]        |
// | `FRAGMENTS`           | LruHashMap       | [`FragKey`]                   | [`FragValue`]          |
// | `SERVICE_NETS`        | LpmTrie          | `{prefix_len, [u8;16]}`       | `1u8`                  |
// | `DEFERRED`            | LruHashMap       | [`DeferKey`]                  | [`DeferValue`]         |
// | `SERVICE_FLOWS`       | LruHashMap       | [`CtKey`] (client->frontend)  | [`ServiceFlow`]        |
// | `SERVICE_PROGS`       | ProgramArray[2]  | [`service_prog`] index        | program fd             |
//
// LPM keys are aya's `Key<T>` = `#[repr(C, packed)] { prefix_len: u32, data: T }`.
// Addresses are 16 bytes; IPv4 is stored IPv4-mapped (`::ffff:a.b.c.d`), so an
// IPv4 /24 has prefix_len 96 + 24.
//
// Notes for whoever fills the tables (the compiler, through
// agent::dataplane::TableSet):
// - Exact-match hashes in front of two tries (agent::dataplane::exact): host
//   prefixes (prefix_len 128: an IPv4 /32, an IPv6 /128) go to `PEER_HOSTS_*`,
//   shorter ones to `PEERS_*`; exact-port rule keys (prefix_len 112, the
//   longest a rule key has) to `RULE_PORTS_*`, shorter ones to `RULES_*`. The
//   kernel asks the hash first (its entries are the longest match there can
//   be), then the trie. They flip with the other tables.
// - One peer-class partition serves both tables (enforced and pending): classes
//   must distinguish every net/selector of enforced AND staged policies.
// - Peer groups: the decision table is keyed by a per-(endpoint, direction)
//   group, not the global class, so classes an endpoint treats alike share
//   entries. GROUPS[{endpoint, class, direction}] gives the group; a miss
//   means PEER_GROUP_ANY (the wildcard: the endpoint's most common row). One
//   group serves both tables (enforced and pending).
// - Lookup order: RULES[group] (longest prefix; skipped when the group is
//   PEER_GROUP_ANY), then RULES[PEER_GROUP_ANY] (longest prefix), else deny
//   with Verdict::NO_ENTRY. A group-specific entry always beats an ANY entry,
//   even a longer one: ANY is a fallback, not an override (e.g. host-endpoint
//   failsafes must be present in every group that has entries for that
//   protocol, or be the only entries for it).
// - Within one group, overlapping entries resolve by longest prefix: any protocol
//   (80) < protocol (88) < protocol + source-port class (96) < port prefixes
//   (96 + bits); a range is several prefixes.
// - Source ports: on endpoints with `endpoint_flags::SOURCE_PORTS`, a port
//   protocol's (TCP, UDP, SCTP, UDPLite) flow first gets its source-port class
//   from `SPORTS_*` {endpoint, direction, protocol, initiator's source port}
//   (longest prefix; a miss is class 0), which goes into
//   `RuleKey::source_port_class`. Everything else uses class 0, so tables of
//   endpoints without source-port rules never see another class.
// - `SPORTS_*` and `GROUPS_*` flip with `PEERS_*`/`RULES_*` (same `ACTIVE`
//   generation): classes and groups are only meaningful to the tables they
//   were compiled with.
// - The kernel reads `ACTIVE` once per packet; userspace rewrites the inactive
//   copy only at the next update, so an update must not follow the previous one
//   within a packet's lifetime (microseconds).
// ---------------------------------------------------------------------------

mod conntrack;
mod events;
mod fragments;
pub mod limits;
mod packet;
mod service;
pub mod stat;
mod tables;

pub use conntrack::{
    ct_flags, ct_timeout, tcp_state, AddrWords, CtKey, CtKeyWords, CtSide, CtValue,
};
pub use events::{event_flags, FlowEvent, TokenBucket, DENY_EVENTS_BURST, DENY_EVENTS_PER_SEC};
pub use fragments::{FragKey, FragValue};
pub use packet::{ip_proto, tcp_flags};
pub use service::{service_prog, DeferKey, DeferValue, ServiceFlow, SERVICE_DEFER_MARK};
pub use tables::{
    action, active_flags, direction, endpoint_flags, table, verdict_flags, ActiveTables,
    EndpointInfo, GroupKey, RuleKey, SourcePortKey, Verdict, PEER_CLASS_WORLD, PEER_GROUP_ANY,
    POLICY_NONE,
};

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain old data, repr(C), no implicit padding (pinned by the layout tests).
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::ActiveTables {}
    unsafe impl aya::Pod for super::RuleKey {}
    unsafe impl aya::Pod for super::SourcePortKey {}
    unsafe impl aya::Pod for super::GroupKey {}
    unsafe impl aya::Pod for super::Verdict {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::TokenBucket {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::DeferKey {}
    unsafe impl aya::Pod for super::DeferValue {}
    unsafe impl aya::Pod for super::ServiceFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn dataplane_layouts() {
        assert_eq!(size_of::<EndpointInfo>(), 8);
        assert_eq!(size_of::<ActiveTables>(), 16);
        assert_eq!(size_of::<RuleKey>(), 16);
        assert_eq!(offset_of!(RuleKey, peer_group), 4);
        assert_eq!(size_of::<GroupKey>(), 12);
        assert_eq!(offset_of!(GroupKey, peer_class), 4);
        assert_eq!(offset_of!(GroupKey, direction), 8);
        assert_eq!(offset_of!(RuleKey, direction), 8);
        assert_eq!(offset_of!(RuleKey, table), 9);
        assert_eq!(offset_of!(RuleKey, protocol), 10);
        assert_eq!(offset_of!(RuleKey, source_port_class), 11);
        assert_eq!(offset_of!(RuleKey, port), 12);
        assert_eq!(RuleKey::ANY_PROTOCOL_PREFIX, 8 * 10);
        assert_eq!(RuleKey::PROTOCOL_PREFIX, 8 * 11);
        assert_eq!(RuleKey::ANY_PORT_PREFIX, 8 * 12);
        assert_eq!(size_of::<SourcePortKey>(), 8);
        assert_eq!(offset_of!(SourcePortKey, direction), 4);
        assert_eq!(offset_of!(SourcePortKey, protocol), 5);
        assert_eq!(offset_of!(SourcePortKey, port), 6);
        assert_eq!(SourcePortKey::ANY_PORT_PREFIX, 8 * 6);
        assert_eq!(size_of::<Verdict>(), 12);
        assert_eq!(offset_of!(Verdict, tier), 2);
        assert_eq!(offset_of!(Verdict, policy), 4);
        assert_eq!(offset_of!(Verdict, rule), 8);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(offset_of!(CtKey, port_lo), 32);
        assert_eq!(offset_of!(CtKey, protocol), 36);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(offset_of!(CtValue, judged_port), 8);
        assert_eq!(offset_of!(CtValue, last_seen_ns), 16);
        assert_eq!(size_of::<FlowEvent>(), 104);
        assert_eq!(offset_of!(FlowEvent, service), FlowEvent::V1_SIZE);
        assert_eq!(offset_of!(FlowEvent, service_port), 96);
        assert_eq!(size_of::<DeferKey>(), 20);
        assert_eq!(offset_of!(DeferKey, protocol), 18);
        assert_eq!(size_of::<DeferValue>(), 32);
        assert_eq!(offset_of!(DeferValue, ifindex), 20);
        assert_eq!(offset_of!(DeferValue, endpoint), 24);
        assert_eq!(size_of::<ServiceFlow>(), 24);
        assert_eq!(offset_of!(FlowEvent, src_port), 32);
        assert_eq!(offset_of!(FlowEvent, direction), 38);
        assert_eq!(offset_of!(FlowEvent, ifindex), 40);
        assert_eq!(offset_of!(FlowEvent, endpoint_id), 44);
        assert_eq!(offset_of!(FlowEvent, enforced), 48);
        assert_eq!(offset_of!(FlowEvent, pending), 60);
        assert_eq!(offset_of!(FlowEvent, timestamp_ns), 72);
        assert_eq!(size_of::<TokenBucket>(), 16);
        assert_eq!(size_of::<FragKey>(), 40);
        assert_eq!(offset_of!(FragKey, id), 32);
        assert_eq!(offset_of!(FragKey, protocol), 36);
        assert_eq!(size_of::<FragValue>(), 16);
        assert_eq!(offset_of!(FragValue, protocol), 6);
        assert_eq!(offset_of!(FragValue, seen_ns), 8);
    }

    #[test]
    fn stat_names_are_distinct_snake_case() {
        for (i, name) in stat::NAMES.iter().enumerate() {
            assert!(
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(!stat::NAMES[..i].contains(name), "{name} twice");
        }
        assert_eq!(stat::NAMES[stat::CT_STALE as usize], "ct_stale");
        assert_eq!(stat::NAMES[stat::ICMP_RELATED as usize], "icmp_related");
    }
}

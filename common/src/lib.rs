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
// | `RULES_0`/`RULES_1`   | LpmTrie          | `{prefix_len, RuleKey}`       | [`Verdict`]            |
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

/// Capacities of the dataplane maps (per copy for `PEERS_*` / `RULES_*`).
pub mod limits {
    pub const MAX_ENDPOINTS: u32 = 4096;
    /// `PEERS_*`: network sets hold up to hundreds of thousands of nets (threat
    /// feeds), so room for a million prefixes. LPM tries are not preallocated:
    /// the kernel allocates a node per prefix (plus at most one branch node per
    /// prefix) as entries are inserted, so this bound costs nothing until used
    /// (docs/benchmarks.md, "Network sets", has the measured cost).
    pub const MAX_PEER_PREFIXES: u32 = 1 << 20;
    pub const MAX_RULE_ENTRIES: u32 = 262144;
    pub const MAX_SOURCE_PORT_ENTRIES: u32 = 65536;
    /// `GROUPS_*`: (endpoint, class, direction) pairs not in the wildcard group.
    pub const MAX_GROUP_ENTRIES: u32 = 262144;
    pub const MAX_CONNTRACK: u32 = 262144;
    /// Datagrams in flight in fragments (Cilium's default for its IPv4 fragment map).
    pub const MAX_FRAGMENTS: u32 = 8192;
    /// Service frontend prefixes (ClusterIP ranges, external IPs).
    pub const MAX_SERVICE_NETS: u32 = 4096;
    /// Service flows between `from_endpoint` and their post-DNAT hook (entries
    /// live microseconds: the post-DNAT hook deletes them).
    pub const MAX_DEFERRED: u32 = 65536;
    /// Client->frontend conntrack entries' backends (one per Service flow).
    pub const MAX_SERVICE_FLOWS: u32 = 262144;
}

/// Value of `ENDPOINTS`: the policed endpoint behind an interface.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointInfo {
    /// Endpoint id used in [`RuleKey::endpoint_id`].
    pub id: u32,
    /// [`endpoint_flags`] bits.
    pub flags: u32,
}

pub mod endpoint_flags {
    /// Staged policies select this endpoint: do the pending lookup on new flows.
    pub const HAS_STAGED: u32 = 1;
    /// A host endpoint: the interface is the host's own, so the hooks judge the
    /// opposite directions of a workload's (TC ingress = traffic into the host =
    /// its ingress policy). Failsafes are compiled into the table.
    pub const HOST_ENDPOINT: u32 = 2;
    /// Rules of this endpoint tell source ports apart: new flows of port
    /// protocols look their source-port class up in `SPORTS_*` (else class 0).
    /// Userspace raises it before installing tables that need it and lowers it
    /// after installing tables that no longer do; while it is set without
    /// `SPORTS_*` entries the lookup misses, giving class 0, which is what such
    /// tables use.
    pub const SOURCE_PORTS: u32 = 4;
}

/// Value of `ACTIVE[0]`: which copy of the tables is live, and the policy epoch.
/// Userspace fills the inactive copy, then writes this in one update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ActiveTables {
    /// 0: `PEERS_0`/`RULES_0`/`SPORTS_0`/`GROUPS_0` are live; 1: the `_1` copies.
    pub generation: u32,
    /// Bumped on every policy change; conntrack entries of an older epoch are re-judged.
    pub epoch: u32,
    /// [`active_flags`] bits.
    pub flags: u32,
    pub _pad: u32,
}

pub mod active_flags {
    /// Never create conntrack entries: every packet is judged as a new flow.
    /// For benchmarks and tests of the new-flow path only.
    pub const NO_CT_INSERT: u32 = 1;
}

/// Policy direction as seen by the endpoint (matches `model::ir::Direction`).
/// Policy directions (for a host endpoint the hooks swap, see `HOST_ENDPOINT`).
pub mod direction {
    /// Traffic the endpoint receives (a workload's `to_endpoint`, TC egress hook).
    pub const INGRESS: u8 = 0;
    /// Traffic the endpoint sends (a workload's `from_endpoint`, TC ingress hook).
    pub const EGRESS: u8 = 1;
}

/// [`RuleKey::table`] values.
pub mod table {
    pub const ENFORCED: u8 = 0;
    pub const PENDING: u8 = 1;
}

/// Peer group stored for "any peer" (the wildcard): a class without a `GROUPS_*`
/// entry is in it, and it is probed when the peer's own group misses.
pub const PEER_GROUP_ANY: u32 = u32::MAX;
/// Class of an address no `PEERS_*` prefix covers.
pub const PEER_CLASS_WORLD: u32 = 0;

/// Key of `GROUPS_*` (12 bytes): the value is the peer group (`u32`,
/// [`RuleKey::peer_group`]) that `peer_class` belongs to for this endpoint and
/// direction; classes without an entry are in [`PEER_GROUP_ANY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct GroupKey {
    pub endpoint_id: u32,
    /// Peer class from `PEERS_*`.
    pub peer_class: u32,
    /// [`direction`].
    pub direction: u8,
    pub _pad: [u8; 3],
}

/// Data part of the `RULES_*` LPM key (16 bytes, 128 bits). Field order is the
/// prefix order, so an entry can stop matching at any of these points:
///
/// | bits of prefix | matches                                              |
/// | -------------- | ---------------------------------------------------- |
/// | 80             | endpoint, peer group, direction, table (any protocol) |
/// | 88             | ... + protocol (any source-port class, any port)     |
/// | 96             | ... + source-port class (any port)                   |
/// | 96 + k         | ... + the first k (0..=16) bits of the port          |
///
/// `source_port_class` is 0 for every protocol without ports and on endpoints
/// without [`endpoint_flags::SOURCE_PORTS`], so their entries sit at 96 + k with
/// a zero byte there (88 is only used for "every class of this protocol").
/// The kernel looks up with prefix_len [`RuleKey::FULL_PREFIX`] (128, `_pad2` zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct RuleKey {
    pub endpoint_id: u32,
    /// Peer group from `GROUPS_*` (per endpoint and direction), or [`PEER_GROUP_ANY`].
    pub peer_group: u32,
    /// [`direction`].
    pub direction: u8,
    /// [`table`].
    pub table: u8,
    /// IP protocol number.
    pub protocol: u8,
    /// Class of the initiator's source port (`SPORTS_*`), 0 when not classified.
    pub source_port_class: u8,
    /// Destination port of the flow, big-endian; for ICMP/ICMPv6 `type << 8 | code`
    /// (a type-only rule is an 8-bit port prefix).
    pub port: [u8; 2],
    pub _pad2: [u8; 2],
}

impl RuleKey {
    /// Prefix length covering endpoint, group, direction and table.
    pub const ANY_PROTOCOL_PREFIX: u32 = 80;
    /// Prefix length covering the protocol (any source-port class, any port).
    pub const PROTOCOL_PREFIX: u32 = 88;
    /// Prefix length covering the protocol and source-port class (any port).
    pub const ANY_PORT_PREFIX: u32 = 96;
    /// Prefix length of an exact port.
    pub const EXACT_PORT_PREFIX: u32 = 112;
    /// Prefix length the kernel looks up with.
    pub const FULL_PREFIX: u32 = 128;
}

/// Data part of the `SPORTS_*` LPM key (8 bytes, 64 bits); the value is the
/// source-port class (`u8`, [`RuleKey::source_port_class`]). Classes are per
/// (endpoint, direction, protocol); prefix 48 covers every port of that protocol,
/// 48 + k the first k bits of the port. The kernel looks up with
/// [`SourcePortKey::FULL_PREFIX`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourcePortKey {
    pub endpoint_id: u32,
    /// [`direction`] of the policy judging the flow.
    pub direction: u8,
    /// IP protocol number (TCP, UDP, SCTP, UDPLite).
    pub protocol: u8,
    /// The initiator's source port, big-endian.
    pub port: [u8; 2],
}

impl SourcePortKey {
    /// Prefix length covering endpoint, direction and protocol (any port).
    pub const ANY_PORT_PREFIX: u32 = 48;
    /// Prefix length the kernel looks up with (an exact port).
    pub const FULL_PREFIX: u32 = 64;
}

/// Value of `RULES_*`: a verdict and what decided it (enough to name the deciding
/// tier / policy / rule in a flow record).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Verdict {
    /// [`action`].
    pub action: u8,
    /// [`verdict_flags`].
    pub flags: u8,
    /// Index of the deciding tier (userspace table).
    pub tier: u16,
    /// Index of the deciding policy in userspace's table; [`POLICY_NONE`] for a profile/default.
    pub policy: u32,
    /// Index of the deciding rule in that policy; -1 for the end-of-tier default action.
    pub rule: i32,
}

/// `Verdict::policy` when no policy decided (profile or the default deny).
pub const POLICY_NONE: u32 = u32::MAX;

pub mod action {
    pub const ALLOW: u8 = 1;
    pub const DENY: u8 = 2;
}

pub mod verdict_flags {
    /// Set by the kernel: no table entry matched (not even the wildcard group); denied.
    pub const NO_ENTRY: u8 = 1;
}

impl Verdict {
    /// The verdict the kernel synthesises when both lookups miss (fail closed).
    pub const NO_ENTRY: Verdict = Verdict {
        action: action::DENY,
        flags: verdict_flags::NO_ENTRY,
        tier: u16::MAX,
        policy: POLICY_NONE,
        rule: -1,
    };
}

/// Key of `CONNTRACK`: the 5-tuple normalised so both directions share one entry
/// (`addr_lo` is the numerically lower (address, port) pair). For ICMP echo both
/// ports are the echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub addr_lo: [u8; 16],
    pub addr_hi: [u8; 16],
    pub port_lo: u16,
    pub port_hi: u16,
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of `CONNTRACK`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CtValue {
    /// `ActiveTables::epoch` the approvals below were decided in.
    pub epoch: u32,
    /// [`ct_flags`] bits (approvals, denials, reported, initiator side).
    pub flags: u16,
    /// [`tcp_state`].
    pub tcp_state: u8,
    pub _pad: u8,
    /// Destination port (or ICMP type<<8|code) of the initiator's packets, host order:
    /// what a stale entry is re-judged with, whichever direction its next packet goes.
    pub judged_port: u16,
    pub _pad2: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last packet.
    pub last_seen_ns: u64,
}

/// [`CtValue::flags`]. The "sender side" is the hook where the initiator's packets
/// leave their endpoint (`from_endpoint` of the initiator, its egress policy); the
/// "receiver side" is `to_endpoint` of the responder (its ingress policy).
pub mod ct_flags {
    pub const SENDER_ALLOWED: u16 = 1 << 0;
    pub const RECEIVER_ALLOWED: u16 = 1 << 1;
    pub const SENDER_DENIED: u16 = 1 << 2;
    pub const RECEIVER_DENIED: u16 = 1 << 3;
    pub const SENDER_REPORTED: u16 = 1 << 4;
    pub const RECEIVER_REPORTED: u16 = 1 << 5;
    /// The initiator is `addr_lo`/`port_lo` (else `addr_hi`/`port_hi`).
    pub const INITIATOR_LO: u16 = 1 << 8;
    /// A client->Service-frontend entry: the responder is a frontend that the
    /// node's DNAT replaced; its sender side (the client's egress policy) is
    /// judged against the backend recorded in `SERVICE_FLOWS`, never the frontend.
    pub const SERVICE: u16 = 1 << 9;
}

pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const ESTABLISHED: u8 = 2;
    pub const FIN: u8 = 3;
    pub const RST: u8 = 4;
}

/// Conntrack idle timeouts in ns; an entry idle longer is treated as a miss.
pub mod ct_timeout {
    const S: u64 = 1_000_000_000;
    pub const TCP_SYN: u64 = 30 * S;
    pub const TCP_ESTABLISHED: u64 = 3600 * S;
    pub const TCP_FIN: u64 = 30 * S;
    pub const TCP_RST: u64 = 10 * S;
    pub const UDP: u64 = 60 * S;
    pub const ICMP: u64 = 30 * S;
    pub const OTHER: u64 = 600 * S;

    /// Idle timeout of an entry of `protocol` in TCP `state` (used by the kernel
    /// to treat an idle entry as a miss, and by the agent's sweep to delete it).
    #[inline(always)]
    pub const fn idle(protocol: u8, state: u8) -> u64 {
        match protocol {
            6 => match state {
                super::tcp_state::SYN_SENT => TCP_SYN,
                super::tcp_state::FIN => TCP_FIN,
                super::tcp_state::RST => TCP_RST,
                _ => TCP_ESTABLISHED,
            },
            17 | 136 => UDP,
            1 | 58 => ICMP,
            _ => OTHER,
        }
    }

    /// A `FRAGMENTS` entry older than this is ignored (Linux's `ipfrag_time`).
    pub const FRAGMENT: u64 = 30 * S;
}

/// Key of `FRAGMENTS`: one fragmented IP datagram, as its fragments identify it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragKey {
    /// IPv4 is stored IPv4-mapped, as everywhere.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// IPv4 identification (16 bits), or the IPv6 fragment header's.
    pub id: u32,
    /// IPv4 protocol, or the IPv6 fragment header's next header.
    pub protocol: u8,
    pub _pad: [u8; 3],
}

/// Value of `FRAGMENTS`: what the datagram's first fragment (offset 0, more
/// fragments) carried, for its later fragments, which have no L4 header.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FragValue {
    /// Conntrack ports and table-lookup port, as parsed from the first fragment.
    pub ct_sport: u16,
    pub ct_dport: u16,
    pub judge_port: u16,
    /// Upper-layer protocol (IPv6: after the extension headers of the first fragment).
    pub protocol: u8,
    /// 1 when the datagram is tracked in conntrack (not: ICMP other than echo).
    pub track: u8,
    /// `bpf_ktime_get_coarse_ns` when the first fragment was seen.
    pub seen_ns: u64,
}

/// Bit of `skb->mark` that `from_endpoint` sets on a packet whose verdict it
/// deferred to the post-DNAT hook (a `DEFERRED` entry exists for it); that hook
/// clears it. Other packets never pay a map lookup at the post-DNAT hooks.
/// Outside kube-proxy's (0x4000, 0x8000) and Calico's default (0xffff0000) bits.
pub const SERVICE_DEFER_MARK: u32 = 0x0020_0000;

/// Slots of `SERVICE_PROGS` (tail calls, filled by the agent after loading).
/// A pod's `to_endpoint` hands a deferred packet to `post_nat` (its own verifier
/// budget and stack), which judges the client's egress and hands it back to
/// `to_endpoint` (mark cleared) for the backend's ingress.
pub mod service_prog {
    pub const POST_NAT: u32 = 0;
    pub const TO_ENDPOINT: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Key of `DEFERRED`: a new flow from a pod to a Service frontend, by what
/// survives kube-proxy's DNAT: protocol, client address and source port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeferKey {
    pub addr: [u8; 16],
    /// Conntrack source port (host order).
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// Value of `DEFERRED`: the frontend the client addressed, and the client
/// endpoint whose egress policy the post-DNAT hook judges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeferValue {
    pub frontend: [u8; 16],
    /// Frontend port (host order).
    pub frontend_port: u16,
    pub _pad: [u8; 2],
    /// The client's host-side interface (for the flow event).
    pub ifindex: u32,
    pub endpoint: EndpointInfo,
}

/// Value of `SERVICE_FLOWS` (keyed by the client->frontend conntrack key): the
/// backend the node's DNAT chose, so that a stale client->frontend entry is
/// re-judged against it at whichever of the client's hooks sees it first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceFlow {
    pub backend: [u8; 16],
    /// Backend port (host order).
    pub backend_port: u16,
    pub _pad: [u8; 6],
}

/// Ring-buffer record for a new flow on an endpoint with staged policy (both
/// verdicts) or a denied new flow (rate-limited). Addresses and ports are those
/// of the flow as judged (initiator -> responder).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEvent {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    /// For ICMP: type << 8 | code.
    pub dst_port: u16,
    pub protocol: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// [`direction`] of the endpoint's policy that was evaluated.
    pub direction: u8,
    /// [`event_flags`].
    pub flags: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub enforced: Verdict,
    /// Meaningful when `flags & HAS_PENDING`.
    pub pending: Verdict,
    /// `bpf_ktime_get_ns`.
    pub timestamp_ns: u64,
    /// With `event_flags::SERVICE`: the Service frontend the client addressed
    /// (`dst`/`dst_port` are then the backend the node's DNAT chose).
    pub service: [u8; 16],
    pub service_port: u16,
    pub _pad: [u8; 6],
}

impl FlowEvent {
    /// Size of the record before `service` was added (programs of an older
    /// agent still attached during an upgrade write these).
    pub const V1_SIZE: usize = 80;
}

pub mod event_flags {
    pub const HAS_PENDING: u8 = 1;
    /// Packet was a non-first fragment judged with port 0 (its first fragment
    /// was not seen: see `FRAGMENTS`).
    pub const FRAGMENT: u8 = 2;
    /// The flow was addressed to a Service frontend (`FlowEvent::service`).
    pub const SERVICE: u8 = 4;
}

/// Per-CPU token bucket limiting deny events (`EVENT_BUDGET[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TokenBucket {
    pub tokens: u64,
    pub last_ns: u64,
}

/// Deny events per second per CPU, and the burst.
pub const DENY_EVENTS_PER_SEC: u64 = 1000;
pub const DENY_EVENTS_BURST: u64 = 1000;

/// Indices of `DP_COUNTERS` (per-CPU u64).
pub mod stat {
    pub const PACKETS: u32 = 0;
    pub const ALLOWED: u32 = 1;
    pub const DENIED: u32 = 2;
    pub const MALFORMED: u32 = 3;
    pub const RINGBUF_FULL: u32 = 4;
    pub const CT_HITS: u32 = 5;
    pub const NO_TABLE_ENTRY: u32 = 6;
    pub const NOT_ENDPOINT: u32 = 7;
    pub const NEW_FLOWS: u32 = 8;
    pub const STAGED_LOOKUPS: u32 = 9;
    pub const EVENTS: u32 = 10;
    pub const EVENTS_RATE_LIMITED: u32 = 11;
    pub const FRAGMENTS: u32 = 12;
    pub const NON_IP: u32 = 13;
    pub const CT_STALE: u32 = 14;
    /// ICMP errors passed without a policy lookup: they quote a packet of a flow
    /// this side approved (conntrack's RELATED).
    pub const ICMP_RELATED: u32 = 15;
    /// Non-first fragments judged with the ports of their first fragment (a
    /// subset of `FRAGMENTS`; the rest are judged with port 0).
    pub const FRAGMENTS_TRACKED: u32 = 16;
    /// New flows to a Service frontend passed on by `from_endpoint` to be
    /// judged after DNAT.
    pub const SERVICE_DEFERRED: u32 = 17;
    /// Deferred flows judged at a post-DNAT hook against the chosen backend.
    pub const SERVICE_JUDGED: u32 = 18;
    /// Marked packets whose `DEFERRED` entry was gone (e.g. the source was
    /// SNATed): their client side is judged at the reply instead.
    pub const SERVICE_UNMATCHED: u32 = 19;
    /// Replies from a frontend without a client->frontend entry: the client's
    /// egress is judged there, against the frontend (no post-DNAT hook saw it,
    /// e.g. a backend in the node's own network namespace).
    pub const SERVICE_REPLY_JUDGED: u32 = 20;
    /// Counters in use (`NAMES`), at most `CAPACITY`.
    pub const COUNT: u32 = 21;
    /// Size of `DP_COUNTERS`: room for new counters, so that adding one does not
    /// change the pinned map's layout (which would make an upgrade need a cleanup).
    pub const CAPACITY: u32 = 64;
    const _: () = assert!(COUNT <= CAPACITY);
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "allowed",
        "denied",
        "malformed",
        "ringbuf_full",
        "ct_hits",
        "no_table_entry",
        "not_endpoint",
        "new_flows",
        "staged_lookups",
        "events",
        "events_rate_limited",
        "fragments",
        "non_ip",
        "ct_stale",
        "icmp_related",
        "fragments_tracked",
        "service_deferred",
        "service_judged",
        "service_unmatched",
        "service_reply_judged",
    ];
}

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

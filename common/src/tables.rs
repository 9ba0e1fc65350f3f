//! The policy tables: endpoints, the active copy, peer groups, decision-table
//! keys and verdicts (maps `ENDPOINTS`, `ACTIVE`, `GROUPS_*`, `RULES_*`, `SPORTS_*`).

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
    /// Benchmarks and tests only (the agent never sets it): every packet of
    /// this endpoint takes the full path, the established fast path off, so
    /// that the two can be measured and checked against each other.
    pub const FULL_PATH: u32 = 8;
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
    /// Report allowed new flows too (`agent run --flows all`), rate-limited
    /// like denied ones; by default only denied flows and flows of endpoints
    /// with staged policy are reported. Read on new flows only.
    pub const REPORT_ALLOWED: u32 = 2;
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

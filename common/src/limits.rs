//! Capacities of the dataplane maps (per copy for `PEERS_*` / `RULES_*`).
pub const MAX_ENDPOINTS: u32 = 4096;
/// `PEERS_*`: network sets hold up to hundreds of thousands of nets (threat
/// feeds), so room for a million prefixes. LPM tries are not preallocated:
/// the kernel allocates a node per prefix (plus at most one branch node per
/// prefix) as entries are inserted, so this bound costs nothing until used
/// (docs/benchmarks.md, "Network sets", has the measured cost).
pub const MAX_PEER_PREFIXES: u32 = 1 << 20;
/// `RULES_*`: an LPM trie too, so nothing is allocated before an entry is
/// inserted (about 50 bytes of kernel memory per key in use by the
/// kernel's accounting;
/// docs/benchmarks.md, "Capacity").
pub const MAX_RULE_ENTRIES: u32 = 1 << 20;
pub const MAX_SOURCE_PORT_ENTRIES: u32 = 65536;
/// `GROUPS_*`: (endpoint, class, direction) pairs not in the wildcard group.
/// A hash without preallocation: a copy costs its bucket array (16 bytes per
/// entry of this bound: 32 MiB) plus about 80 bytes per entry in use
/// (docs/benchmarks.md, "Capacity").
pub const MAX_GROUP_ENTRIES: u32 = 1 << 21;
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

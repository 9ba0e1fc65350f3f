//! Indices of `DP_COUNTERS` (per-CPU u64).
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

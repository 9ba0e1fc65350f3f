//! Maps of the policy dataplane (layout documented in `agent_common`). The
//! double-buffered tables (`*_0` / `*_1`) are read through `tables`, which
//! picks the live copy.
use agent_common::{
    limits::{
        MAX_CONNTRACK, MAX_DEFERRED, MAX_ENDPOINTS, MAX_FRAGMENTS, MAX_GROUP_ENTRIES,
        MAX_PEER_PREFIXES, MAX_RULE_ENTRIES, MAX_SERVICE_FLOWS, MAX_SERVICE_NETS,
        MAX_SOURCE_PORT_ENTRIES,
    },
    service_prog, stat, ActiveTables, CtKey, CtValue, DeferKey, DeferValue, EndpointInfo, FragKey,
    FragValue, GroupKey, RuleKey, ServiceFlow, SourcePortKey, TokenBucket, Verdict,
};
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};

use crate::flow::Flow;
use crate::parse::Parsed;

#[map]
pub static ENDPOINTS: HashMap<u32, EndpointInfo> = HashMap::with_max_entries(MAX_ENDPOINTS, 0);

#[map]
pub static ACTIVE: Array<ActiveTables> = Array::with_max_entries(1, 0);

#[map]
pub static PEERS_0: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_PEER_PREFIXES, 0);
#[map]
pub static PEERS_1: LpmTrie<[u8; 16], u32> = LpmTrie::with_max_entries(MAX_PEER_PREFIXES, 0);

/// The host prefixes (/32, /128) of the peer table, exact-match: asked before
/// `PEERS_*`, which then holds only shorter prefixes (see `tables`). Not
/// preallocated (like the tries): memory follows the entries.
#[map]
pub static PEER_HOSTS_0: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);
#[map]
pub static PEER_HOSTS_1: HashMap<[u8; 16], u32> =
    HashMap::with_max_entries(MAX_PEER_PREFIXES, BPF_F_NO_PREALLOC);

/// The exact-port entries of the rule table (prefix 112, the longest a rule
/// key has), exact-match: asked before `RULES_*`, which then holds only
/// shorter keys. Not preallocated.
#[map]
pub static RULE_PORTS_0: HashMap<RuleKey, Verdict> =
    HashMap::with_max_entries(MAX_RULE_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static RULE_PORTS_1: HashMap<RuleKey, Verdict> =
    HashMap::with_max_entries(MAX_RULE_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static RULES_0: LpmTrie<RuleKey, Verdict> = LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0);
#[map]
pub static RULES_1: LpmTrie<RuleKey, Verdict> = LpmTrie::with_max_entries(MAX_RULE_ENTRIES, 0);

#[map]
pub static SPORTS_0: LpmTrie<SourcePortKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_PORT_ENTRIES, 0);
#[map]
pub static SPORTS_1: LpmTrie<SourcePortKey, u8> =
    LpmTrie::with_max_entries(MAX_SOURCE_PORT_ENTRIES, 0);

/// Not preallocated (`BPF_F_NO_PREALLOC`): an element is allocated when
/// userspace inserts it, so a copy costs its bucket array (16 bytes per
/// `max_entries`) plus what it holds; written by userspace only, never by the
/// programs, so allocation never happens on the packet path.
#[map]
pub static GROUPS_0: HashMap<GroupKey, u32> =
    HashMap::with_max_entries(MAX_GROUP_ENTRIES, BPF_F_NO_PREALLOC);
#[map]
pub static GROUPS_1: HashMap<GroupKey, u32> =
    HashMap::with_max_entries(MAX_GROUP_ENTRIES, BPF_F_NO_PREALLOC);

#[map]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(MAX_CONNTRACK, 0);

#[map]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
pub static DP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::CAPACITY, 0);

#[map]
pub static EVENT_BUDGET: PerCpuArray<TokenBucket> = PerCpuArray::with_max_entries(1, 0);

/// First fragments' ports for the datagram's later fragments (filled and read
/// by `parse`); LRU, entries age out after `ct_timeout::FRAGMENT`.
#[map]
pub static FRAGMENTS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(MAX_FRAGMENTS, 0);

/// Service frontend prefixes (see `service`); not double-buffered: a frontend
/// only changes where a flow is judged, never its tables.
#[map]
pub static SERVICE_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(MAX_SERVICE_NETS, 0);

/// New flows to a frontend between `from_endpoint` and their post-DNAT hook.
#[map]
pub static DEFERRED: LruHashMap<DeferKey, DeferValue> =
    LruHashMap::with_max_entries(MAX_DEFERRED, 0);

/// The backend of each client->frontend conntrack entry.
#[map]
pub static SERVICE_FLOWS: LruHashMap<CtKey, ServiceFlow> =
    LruHashMap::with_max_entries(MAX_SERVICE_FLOWS, 0);

/// `post_nat` and `to_endpoint`, for the tail calls of a deferred packet.
#[map]
pub static SERVICE_PROGS: ProgramArray = ProgramArray::with_max_entries(service_prog::COUNT, 0);

/// The parsed packet between `policy::parse_packet` and `policy::police_packet`
/// (one per CPU, rewritten by every packet that gets that far; never pinned):
/// the two are verified as functions of their own, and on the stack it would
/// add to both frames, over the 512-byte limit of a call chain.
#[map]
pub static PARSED: PerCpuArray<Parsed> = PerCpuArray::with_max_entries(1, 0);

/// The flow side `policy::judge_flow` judges (one per CPU, rewritten by every
/// judgement; never pinned): on the stack it would not fit `post_nat`'s frames.
#[map]
pub static JUDGED: PerCpuArray<Flow> = PerCpuArray::with_max_entries(1, 0);

//! The policy programs: `from_endpoint` (TC ingress on the host side of an
//! endpoint's interface = the endpoint's egress policy) and `to_endpoint`
//! (TC egress = its ingress policy). Same code, a direction constant.
//!
//! Per packet: endpoint lookup, parse, conntrack, then for new (or stale-epoch)
//! flows one peer-class LPM lookup, one peer-group hash lookup (the class's
//! group for this endpoint and direction; a miss is the wildcard group), on
//! endpoints with `SOURCE_PORTS` (port protocols only) one source-port-class
//! LPM lookup, and one or two decision-table LPM lookups (own group unless it
//! is the wildcard, then the wildcard group), the same again in the pending
//! table when the endpoint has staged policy, an event, and a conntrack write.
//! No loops over rules: a fixed number of map lookups per packet.
//!
//! Decisions (documented here; the map layout is in `agent_common`):
//! - Interfaces not in `ENDPOINTS` pass untouched. Non-IP frames (ARP, ...) pass.
//!   ICMPv6 MLD (130-132), router solicitation (133) and neighbour solicitation
//!   and advertisement (135, 136) always pass, both ways, before policy, like
//!   Calico's BPF dataplane (the types felix's iptables rules accept from
//!   workloads); router advertisements (134), redirects (137) and MLDv2 reports
//!   (143) are judged by policy like other ICMPv6, as there.
//! - Malformed IP (truncated headers, IHL < 5 or past the end, wrong version,
//!   more than 8 IPv6 extension headers) is dropped and counted.
//! - Fragments (like Cilium's fragment tracking): a first fragment (offset 0,
//!   more fragments) is parsed, judged and tracked like a whole packet, and
//!   records its protocol and ports in `FRAGMENTS` under (source, destination,
//!   IP identification / IPv6 fragment id, protocol). Non-first fragments carry
//!   no L4 header: they take those ports and are judged and conntracked like
//!   their first fragment (normally a conntrack hit). One whose first fragment
//!   was not seen (out of order, lost, evicted, older than 30 s) is judged with
//!   port 0 (only rules without a port constraint allow it), not tracked, and
//!   gets no staged event (deny events carry `event_flags::FRAGMENT`).
//! - Conntrack: one LRU entry per normalised 5-tuple serves both directions and
//!   both endpoints of a same-host flow. Each flow has two sides: the sender side
//!   (the initiator's `from_endpoint`, its egress policy; also where replies reach
//!   it) and the receiver side (the responder's `to_endpoint`, its ingress policy;
//!   also where its replies leave). Each side records allowed/denied/reported, so
//!   a denied flow is dropped by one lookup too and reported once per side.
//! - An entry from an older epoch is re-judged at its next packet, in the flow's
//!   original orientation (initiator, responder, `judged_port`, and the
//!   initiator's source port from the key) whichever way that packet goes: a
//!   policy change cuts flows it now denies, and replies with them.
//! - Source ports: the initiator's source port picks a source-port class
//!   (`SPORTS_*`, per endpoint, direction and protocol) that is part of the
//!   decision-table key; endpoints without `SOURCE_PORTS` and protocols without
//!   ports use class 0 (non-first fragments: the class of port 0).
//! - TCP packets without an entry are judged as a new flow in the orientation of
//!   that packet, SYN or not (mid-flow pickup, e.g. flows older than the
//!   dataplane; maps are meant to be pinned, so agent restarts keep entries).
//!   SYN -> SYN_SENT (30 s), a reply -> ESTABLISHED (1 h), FIN 30 s, RST 10 s;
//!   UDP 60 s, ICMP echo 30 s, others 600 s (`ct_timeout::idle`). An idle entry
//!   is a miss and is overwritten; the agent's periodic sweep deletes idle
//!   entries (`Dataplane::sweep_conntrack`), LRU eviction is the backstop.
//! - ICMP echo request/reply are tracked by identifier. ICMP errors (v4 types
//!   3, 4, 5, 11, 12; ICMPv6 types < 128, as Linux conntrack and Calico) that
//!   quote a packet of a live flow this side approved in the current epoch pass
//!   without a policy lookup (RELATED: PMTU discovery and unreachables work under
//!   a TCP-only policy); the quoted packet must have been sent by the error's
//!   destination. Any other ICMP is judged per packet by type/code, untracked
//!   (unlike Calico, which drops errors quoting no known flow).
//! - Services (`service`): at a workload's `from_endpoint` a new flow of TCP,
//!   UDP or SCTP to a Service frontend (`SERVICE_NETS`) is not judged; it is
//!   recorded in `DEFERRED` and marked, and judged at the first TC egress after
//!   the node's DNAT (the backend's `to_endpoint` via the `post_nat` tail call,
//!   or `post_nat` on a data interface) against the backend. That writes the
//!   backend-tuple entry and a client->frontend entry (`ct_flags::SERVICE`),
//!   whose sender side is re-judged against the backend in `SERVICE_FLOWS`
//!   after a policy change. A reply from a frontend without such an entry
//!   judges the client's egress at its `to_endpoint`, against the frontend.
//!   Established flows pay nothing more; new flows one `SERVICE_NETS` lookup.
//! - Events: one per newly judged flow side on endpoints with `HAS_STAGED`
//!   (enforced + pending verdicts), and for denied new flows (per-CPU token
//!   bucket). Ring buffer full: counted, never blocks.

use agent_common::{
    action, active_flags, ct_flags, ct_timeout, direction, endpoint_flags, event_flags, stat,
    table, tcp_state, ActiveTables, CtKey, CtValue, DeferValue, EndpointInfo, FlowEvent, GroupKey,
    RuleKey, SourcePortKey, Verdict, DENY_EVENTS_BURST, DENY_EVENTS_PER_SEC, PEER_CLASS_WORLD,
    PEER_GROUP_ANY,
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
    EbpfContext,
};

use crate::maps::{
    bump, ACTIVE, CONNTRACK, ENDPOINTS, EVENT_BUDGET, FLOW_EVENTS, GROUPS_0, GROUPS_1, PEERS_0,
    PEERS_1, RULES_0, RULES_1, SPORTS_0, SPORTS_1,
};
use crate::parse::{
    parse, quoted, ParseError, Parsed, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_UDPLITE,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
use crate::service::{self, Frontend};

#[classifier]
pub fn from_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, direction::EGRESS)
}

#[classifier]
pub fn to_endpoint(ctx: TcContext) -> i32 {
    handle(&ctx, direction::INGRESS)
}

#[inline(always)]
fn handle(ctx: &TcContext, hook_dir: u8) -> i32 {
    bump(stat::PACKETS);
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    // SAFETY: plain values copied out at once.
    let endpoint = match unsafe { ENDPOINTS.get(&ifindex) } {
        Some(e) => *e,
        None => {
            bump(stat::NOT_ENDPOINT);
            return TC_ACT_OK;
        }
    };
    // A host endpoint's interface is the host's own: its TC ingress carries
    // traffic INTO the host (the host's ingress policy), the opposite of a
    // workload's host-side veth, where TC ingress is what the pod sends.
    // TC egress of an endpoint interface is a post-DNAT point: a flow that a
    // client's `from_endpoint` deferred is judged by `post_nat` first, which
    // returns here (see `service`); nothing else pays more than a field read.
    if hook_dir == direction::INGRESS {
        service::hand_to_post_nat(ctx);
    }
    let host = endpoint.flags & endpoint_flags::HOST_ENDPOINT != 0;
    let raw_hook = hook_dir;
    let hook_dir = if host { hook_dir ^ 1 } else { hook_dir };
    let pkt = match parse(ctx) {
        Ok(p) => p,
        Err(ParseError::NotIp) => {
            bump(stat::NON_IP);
            return TC_ACT_OK;
        }
        Err(ParseError::Malformed) => {
            bump(stat::MALFORMED);
            bump(stat::DENIED);
            return TC_ACT_SHOT;
        }
    };
    if pkt.fragment || pkt.fragment_tracked {
        bump(stat::FRAGMENTS);
    }
    if pkt.fragment_tracked {
        bump(stat::FRAGMENTS_TRACKED);
    }
    if pkt.nd_or_mld {
        bump(stat::ALLOWED);
        return TC_ACT_OK;
    }
    if related_approved(ctx, &pkt, hook_dir) {
        bump(stat::ICMP_RELATED);
        bump(stat::ALLOWED);
        return TC_ACT_OK;
    }
    let hook = Hook {
        ctx,
        dir: hook_dir,
        // A workload's own packets, before the node's DNAT.
        defers: !host && raw_hook == direction::EGRESS,
        // What a workload receives, after the node's reverse NAT.
        client_replies: !host && raw_hook == direction::INGRESS,
    };
    let allowed = police(&pkt, ifindex, &endpoint, &hook);
    if allowed {
        bump(stat::ALLOWED);
        TC_ACT_OK
    } else {
        bump(stat::DENIED);
        TC_ACT_SHOT
    }
}

/// True when `(a, ap) <= (b, bp)` (addresses compared as big-endian numbers).
/// The conntrack key of a packet (src, sport) -> (dst, dport): the lower
/// (address, port) side first, so both directions share it; and whether the
/// packet's source is that lower side.
#[inline(always)]
pub(crate) fn ct_key(
    src: &[u8; 16],
    sport: u16,
    dst: &[u8; 16],
    dport: u16,
    protocol: u8,
) -> (CtKey, bool) {
    let src_is_lo = lower_or_equal(src, sport, dst, dport);
    let (addr_lo, port_lo, addr_hi, port_hi) = if src_is_lo {
        (*src, sport, *dst, dport)
    } else {
        (*dst, dport, *src, sport)
    };
    let key = CtKey {
        addr_lo,
        addr_hi,
        port_lo,
        port_hi,
        protocol,
        _pad: [0; 3],
    };
    (key, src_is_lo)
}

#[inline(always)]
fn lower_or_equal(a: &[u8; 16], ap: u16, b: &[u8; 16], bp: u16) -> bool {
    let (a0, a1) = halves(a);
    let (b0, b1) = halves(b);
    if a0 != b0 {
        return a0 < b0;
    }
    if a1 != b1 {
        return a1 < b1;
    }
    ap <= bp
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

#[inline(always)]
fn timeout(protocol: u8, state: u8) -> u64 {
    ct_timeout::idle(protocol, state)
}

#[inline(always)]
fn next_tcp_state(state: u8, flags: u8, forward: bool) -> u8 {
    if flags & TCP_RST != 0 {
        tcp_state::RST
    } else if flags & TCP_FIN != 0 || state == tcp_state::FIN {
        tcp_state::FIN
    } else if state == tcp_state::SYN_SENT && !forward {
        tcp_state::ESTABLISHED
    } else {
        state
    }
}

/// The side of a flow a hook judges, and the bits recording it.
pub(crate) struct Side {
    allowed: u16,
    denied: u16,
    reported: u16,
    /// Direction of the endpoint policy that judges this side.
    policy_dir: u8,
}

#[inline(always)]
pub(crate) fn side(sender: bool) -> Side {
    if sender {
        Side {
            allowed: ct_flags::SENDER_ALLOWED,
            denied: ct_flags::SENDER_DENIED,
            reported: ct_flags::SENDER_REPORTED,
            policy_dir: direction::EGRESS,
        }
    } else {
        Side {
            allowed: ct_flags::RECEIVER_ALLOWED,
            denied: ct_flags::RECEIVER_DENIED,
            reported: ct_flags::RECEIVER_REPORTED,
            policy_dir: direction::INGRESS,
        }
    }
}

/// Whether `pkt` is an ICMP error quoting a packet of a live flow that this side
/// approved in the current epoch (conntrack's RELATED: it then needs no policy).
/// The error travels against the quoted packet, back to its sender, so it is on
/// the side a packet of the flow going the other way would be. A stale or denied
/// side is not re-judged here: the error is then judged on its own, as ICMP.
#[inline(always)]
fn related_approved(ctx: &TcContext, pkt: &Parsed, hook_dir: u8) -> bool {
    let Some(q) = quoted(ctx, pkt) else {
        return false;
    };
    let (key, q_is_lo) = ct_key(&q.src, q.sport, &q.dst, q.dport, q.protocol);
    // SAFETY: read-only use of the map value.
    let Some(ct) = (unsafe { CONNTRACK.get(&key) }) else {
        return false;
    };
    let epoch = ACTIVE.get(0).map_or(0, |a| a.epoch);
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if ct.epoch != epoch || now.saturating_sub(ct.last_seen_ns) > timeout(q.protocol, ct.tcp_state)
    {
        return false;
    }
    let quoted_forward = (ct.flags & ct_flags::INITIATOR_LO != 0) == q_is_lo;
    let sender = (hook_dir == direction::EGRESS) != quoted_forward;
    ct.flags & side(sender).allowed != 0
}

/// Where a packet is being policed.
pub(crate) struct Hook<'a> {
    ctx: &'a TcContext,
    /// Policy direction of this hook for this endpoint.
    dir: u8,
    /// A workload's `from_endpoint`: new flows to a Service frontend are
    /// deferred to the post-DNAT hook.
    defers: bool,
    /// A workload's `to_endpoint`: a reply from a frontend without a
    /// client->frontend entry judges the client's egress (see `service`).
    client_replies: bool,
}

/// Decides one packet; true = allow.
#[inline(always)]
fn police(pkt: &Parsed, ifindex: u32, endpoint: &EndpointInfo, hook: &Hook) -> bool {
    let hook_dir = hook.dir;
    let active = match ACTIVE.get(0) {
        Some(a) => *a,
        None => ActiveTables::default(),
    };
    // Conntrack ages in the coarse clock (tick resolution, far cheaper than
    // bpf_ktime_get_ns in a VM); events carry the precise time.
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let (key, pkt_is_lo) = ct_key(&pkt.src, pkt.ct_sport, &pkt.dst, pkt.ct_dport, pkt.protocol);

    if pkt.track {
        if let Some(ct) = CONNTRACK.get_ptr_mut(&key) {
            // SAFETY: map value pointer; concurrent updates of the same flow on two
            // CPUs can at worst lose a flag or timestamp, never corrupt memory.
            let ct = unsafe { &mut *ct };
            if now.saturating_sub(ct.last_seen_ns) <= timeout(pkt.protocol, ct.tcp_state) {
                let forward = (ct.flags & ct_flags::INITIATOR_LO != 0) == pkt_is_lo;
                // The initiator's endpoint sending, or receiving replies: the sender side.
                let sender = (hook_dir == direction::EGRESS) == forward;
                let s = side(sender);
                ct.last_seen_ns = now;
                if pkt.protocol == IPPROTO_TCP {
                    ct.tcp_state = next_tcp_state(ct.tcp_state, pkt.tcp_flags, forward);
                }
                if ct.epoch == active.epoch {
                    if ct.flags & s.allowed != 0 {
                        bump(stat::CT_HITS);
                        return true;
                    }
                    if ct.flags & s.denied != 0 {
                        bump(stat::CT_HITS);
                        return false;
                    }
                } else {
                    // Policy changed since: forget every side's decision, re-judge.
                    bump(stat::CT_STALE);
                    ct.epoch = active.epoch;
                    ct.flags &= ct_flags::INITIATOR_LO | ct_flags::SERVICE;
                }
                // Judge this side of the known flow, in its original orientation.
                let (init, mut resp, init_port, resp_port) = if forward {
                    (&pkt.src, &pkt.dst, pkt.ct_sport, pkt.ct_dport)
                } else {
                    (&pkt.dst, &pkt.src, pkt.ct_dport, pkt.ct_sport)
                };
                let mut judged_port = ct.judged_port;
                let mut frontend = None;
                // A client->frontend entry: the client's egress is judged against
                // the backend DNAT chose (if that record was evicted, against the
                // frontend, as a flow no post-DNAT hook saw).
                let backend = if ct.flags & ct_flags::SERVICE != 0 && sender {
                    service::backend_of(&key)
                } else {
                    None
                };
                if let Some(b) = &backend {
                    frontend = Some(Frontend {
                        addr: *resp,
                        port: resp_port,
                    });
                    resp = &b.backend;
                    judged_port = b.backend_port;
                }
                let mut flow = Flow {
                    init,
                    resp,
                    init_port,
                    judged_port,
                    pkt,
                    ifindex,
                    endpoint,
                    active: &active,
                    now,
                    side: &s,
                    sender,
                    frontend,
                };
                let (allow, reported) = judge(&mut flow, ct.flags & s.reported != 0);
                ct.flags |= if allow { s.allowed } else { s.denied };
                if reported {
                    ct.flags |= s.reported;
                }
                return allow;
            }
        }
    }

    // New flow: this packet's source is the initiator (also for a TCP packet that
    // is not a SYN: a flow picked up mid-way, e.g. one older than the dataplane, is
    // judged like a new one in the orientation of the packet seen first).
    bump(stat::NEW_FLOWS);
    let service_ports = pkt.track && service::has_ports(pkt.protocol);
    if hook.defers
        && service_ports
        && service::is_frontend(&pkt.dst)
        && service::defer(hook.ctx, pkt, ifindex, endpoint)
    {
        return true;
    }
    if hook.client_replies && service_ports && service::is_frontend(&pkt.src) {
        return judge_unseen_reply(pkt, ifindex, endpoint, &active, now, &key, pkt_is_lo);
    }
    let sender = hook_dir == direction::EGRESS;
    let s = side(sender);
    let mut flow = Flow {
        init: &pkt.src,
        resp: &pkt.dst,
        init_port: pkt.ct_sport,
        judged_port: pkt.judge_port,
        pkt,
        ifindex,
        endpoint,
        active: &active,
        now,
        side: &s,
        sender,
        frontend: None,
    };
    let (allow, reported) = judge(&mut flow, false);
    if pkt.track && active.flags & active_flags::NO_CT_INSERT == 0 {
        let mut flags = side_flags(&s, allow, reported);
        if pkt_is_lo {
            flags |= ct_flags::INITIATOR_LO;
        }
        ct_insert(
            &key,
            flags,
            new_tcp_state(pkt),
            pkt.judge_port,
            &active,
            now,
        );
    }
    allow
}

/// Reply from a Service frontend to a client without a client->frontend
/// conntrack entry: no post-DNAT hook judged the client's flow (its backend is
/// in the node's own network namespace, its source was SNATed, it left by an
/// interface without `post_nat`, or the entry was evicted). The client's egress
/// is judged here, against the frontend (all there is to go by), in the flow's
/// orientation, and recorded for the flow's later packets both ways.
#[inline(always)]
fn judge_unseen_reply(
    pkt: &Parsed,
    ifindex: u32,
    endpoint: &EndpointInfo,
    active: &ActiveTables,
    now: u64,
    key: &CtKey,
    pkt_is_lo: bool,
) -> bool {
    bump(stat::SERVICE_REPLY_JUDGED);
    let s = side(true);
    let mut flow = Flow {
        init: &pkt.dst,
        resp: &pkt.src,
        init_port: pkt.ct_dport,
        judged_port: pkt.ct_sport,
        pkt,
        ifindex,
        endpoint,
        active,
        now,
        side: &s,
        sender: true,
        frontend: None,
    };
    let (allow, reported) = judge(&mut flow, false);
    if active.flags & active_flags::NO_CT_INSERT == 0 {
        let mut flags = side_flags(&s, allow, reported) | ct_flags::SERVICE;
        if !pkt_is_lo {
            flags |= ct_flags::INITIATOR_LO;
        }
        let state = if pkt.protocol == IPPROTO_TCP {
            next_tcp_state(tcp_state::SYN_SENT, pkt.tcp_flags, false)
        } else {
            tcp_state::NONE
        };
        ct_insert(key, flags, state, pkt.ct_sport, active, now);
    }
    allow
}

/// A flow deferred by `from_endpoint`, at its post-DNAT hook: judges the
/// client's egress (enforced and staged) against this packet's tuple, the
/// backend DNAT chose, and records the verdict for the backend tuple and for
/// the client->frontend tuple (the client's later packets and the reverse-NATed
/// replies), with the backend in `SERVICE_FLOWS` for re-judging after a policy
/// change. Returns whether the client's egress allows it.
#[inline(always)]
pub(crate) fn judge_deferred(pkt: &Parsed, d: &DeferValue) -> bool {
    let active = match ACTIVE.get(0) {
        Some(a) => *a,
        None => ActiveTables::default(),
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let s = side(true);
    let mut flow = Flow {
        init: &pkt.src,
        resp: &pkt.dst,
        init_port: pkt.ct_sport,
        judged_port: pkt.judge_port,
        pkt,
        ifindex: d.ifindex,
        endpoint: &d.endpoint,
        active: &active,
        now,
        side: &s,
        sender: true,
        frontend: Some(Frontend {
            addr: d.frontend,
            port: d.frontend_port,
        }),
    };
    let (allow, reported) = judge(&mut flow, false);
    bump(stat::SERVICE_JUDGED);
    if active.flags & active_flags::NO_CT_INSERT != 0 {
        return allow;
    }
    let flags = side_flags(&s, allow, reported);
    let state = new_tcp_state(pkt);
    let (bkey, b_lo) = ct_key(&pkt.src, pkt.ct_sport, &pkt.dst, pkt.ct_dport, pkt.protocol);
    let lo = if b_lo { ct_flags::INITIATOR_LO } else { 0 };
    ct_insert(&bkey, flags | lo, state, pkt.judge_port, &active, now);
    let (fkey, f_lo) = ct_key(
        &pkt.src,
        pkt.ct_sport,
        &d.frontend,
        d.frontend_port,
        pkt.protocol,
    );
    let lo = if f_lo { ct_flags::INITIATOR_LO } else { 0 };
    let flags = flags | lo | ct_flags::SERVICE;
    ct_insert(&fkey, flags, state, pkt.judge_port, &active, now);
    service::remember_backend(&fkey, &pkt.dst, pkt.ct_dport);
    allow
}

#[inline(always)]
fn side_flags(s: &Side, allow: bool, reported: bool) -> u16 {
    let mut flags = if allow { s.allowed } else { s.denied };
    if reported {
        flags |= s.reported;
    }
    flags
}

/// TCP state of a flow whose first packet (as seen here) is `pkt`.
#[inline(always)]
fn new_tcp_state(pkt: &Parsed) -> u8 {
    if pkt.protocol != IPPROTO_TCP {
        tcp_state::NONE
    } else if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        tcp_state::SYN_SENT
    } else {
        next_tcp_state(tcp_state::ESTABLISHED, pkt.tcp_flags, true)
    }
}

#[inline(always)]
fn ct_insert(
    key: &CtKey,
    flags: u16,
    state: u8,
    judged_port: u16,
    active: &ActiveTables,
    now: u64,
) {
    let value = CtValue {
        epoch: active.epoch,
        flags,
        tcp_state: state,
        _pad: 0,
        judged_port,
        _pad2: [0; 6],
        last_seen_ns: now,
    };
    // Full LRU: the kernel evicts; an error here only costs a re-judgement later.
    let _ = CONNTRACK.insert(key, &value, BPF_ANY as u64);
}

struct Flow<'a> {
    init: &'a [u8; 16],
    resp: &'a [u8; 16],
    init_port: u16,
    judged_port: u16,
    pkt: &'a Parsed,
    ifindex: u32,
    endpoint: &'a EndpointInfo,
    active: &'a ActiveTables,
    now: u64,
    side: &'a Side,
    sender: bool,
    /// The Service frontend the client addressed, when `resp` is its backend.
    frontend: Option<Frontend>,
}

#[inline(always)]
fn peer_class(generation: u32, addr: &[u8; 16]) -> u32 {
    let key = Key::new(128, *addr);
    let hit = if generation == 0 {
        PEERS_0.get(&key)
    } else {
        PEERS_1.get(&key)
    };
    match hit {
        Some(c) => *c,
        None => PEER_CLASS_WORLD,
    }
}

/// The class of the initiator's source port; 0 on a miss (tables that do not
/// classify this endpoint's source ports use only class 0).
#[inline(always)]
fn source_port_class(generation: u32, endpoint_id: u32, dir: u8, protocol: u8, port: u16) -> u8 {
    let key = Key::new(
        SourcePortKey::FULL_PREFIX,
        SourcePortKey {
            endpoint_id,
            direction: dir,
            protocol,
            port: port.to_be_bytes(),
        },
    );
    let hit = if generation == 0 {
        SPORTS_0.get(&key)
    } else {
        SPORTS_1.get(&key)
    };
    match hit {
        Some(c) => *c,
        None => 0,
    }
}

/// The peer class's group for this endpoint and direction; a miss is the
/// wildcard group (classes treated like the endpoint's most common row).
#[inline(always)]
fn peer_group(generation: u32, endpoint_id: u32, dir: u8, class: u32) -> u32 {
    let key = GroupKey {
        endpoint_id,
        peer_class: class,
        direction: dir,
        _pad: [0; 3],
    };
    // SAFETY: plain u32 values, read once.
    let hit = unsafe {
        if generation == 0 {
            GROUPS_0.get(&key)
        } else {
            GROUPS_1.get(&key)
        }
    };
    match hit {
        Some(g) => *g,
        None => PEER_GROUP_ANY,
    }
}

#[inline(always)]
fn rule_lookup(generation: u32, key: &Key<RuleKey>) -> Option<Verdict> {
    let hit = if generation == 0 {
        RULES_0.get(key)
    } else {
        RULES_1.get(key)
    };
    hit.copied()
}

/// The verdict of one table (`key.table`): the peer's group (unless it is the
/// wildcard), then the wildcard group.
#[inline(always)]
fn verdict(generation: u32, data: RuleKey) -> Option<Verdict> {
    if data.peer_group != PEER_GROUP_ANY {
        if let Some(v) = rule_lookup(generation, &Key::new(RuleKey::FULL_PREFIX, data)) {
            return Some(v);
        }
    }
    let any = RuleKey {
        peer_group: PEER_GROUP_ANY,
        ..data
    };
    rule_lookup(generation, &Key::new(RuleKey::FULL_PREFIX, any))
}

/// Runs the enforced (and, for endpoints with staged policy, the pending) lookup
/// and reports the flow. Returns (allowed, reported). Inlined at up to four
/// places of a program (known flow, new flow, deferred Service flow, unseen
/// Service reply): the event is written in place in the ring buffer so that
/// the copies fit the 512-byte BPF stack together.
#[inline(always)]
fn judge(flow: &mut Flow, already_reported: bool) -> (bool, bool) {
    let generation = flow.active.generation;
    let dir = flow.side.policy_dir;
    // The peer is the far end of the flow as seen from the judging endpoint.
    let peer = if flow.sender { flow.resp } else { flow.init };
    let id = flow.endpoint.id;
    let group = peer_group(generation, id, dir, peer_class(generation, peer));
    let protocol = flow.pkt.protocol;
    let port = flow.judged_port;
    let ports = matches!(
        protocol,
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE
    );
    // The initiator's port, also when a reply re-judges a stale entry.
    let source_port_class = if ports && flow.endpoint.flags & endpoint_flags::SOURCE_PORTS != 0 {
        source_port_class(generation, id, dir, protocol, flow.init_port)
    } else {
        0
    };
    let key = RuleKey {
        endpoint_id: id,
        peer_group: group,
        direction: dir,
        table: table::ENFORCED,
        protocol,
        source_port_class,
        port: port.to_be_bytes(),
        _pad2: [0; 2],
    };
    let enforced = match verdict(generation, key) {
        Some(v) => v,
        None => {
            bump(stat::NO_TABLE_ENTRY);
            Verdict::NO_ENTRY
        }
    };
    let allow = enforced.action == action::ALLOW;
    if already_reported {
        return (allow, true);
    }
    let staged = flow.endpoint.flags & endpoint_flags::HAS_STAGED != 0 && !flow.pkt.fragment;
    if !staged && allow {
        return (allow, false);
    }
    let mut flags = 0;
    if flow.pkt.fragment {
        flags |= event_flags::FRAGMENT;
    }
    let mut pending = Verdict::default();
    if staged {
        // Observe only: the pending verdict never changes what the packet gets.
        bump(stat::STAGED_LOOKUPS);
        flags |= event_flags::HAS_PENDING;
        let key = RuleKey {
            table: table::PENDING,
            ..key
        };
        pending = match verdict(generation, key) {
            Some(v) => v,
            None => Verdict::NO_ENTRY,
        };
    } else if !take_token(flow.now) {
        bump(stat::EVENTS_RATE_LIMITED);
        return (allow, false);
    }
    // Written in place in the ring buffer: a stack copy of the event would
    // not fit the BPF stack next to the callers' frames.
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        bump(stat::RINGBUF_FULL);
        return (allow, false);
    };
    let e = entry.as_mut_ptr();
    // SAFETY: an exclusive reservation of size_of::<FlowEvent>(); every field is written.
    unsafe {
        (*e).src = *flow.init;
        (*e).dst = *flow.resp;
        (*e).src_port = flow.init_port;
        (*e).dst_port = port;
        (*e).protocol = protocol;
        (*e).ip_version = flow.pkt.ip_version;
        (*e).direction = dir;
        (*e).ifindex = flow.ifindex;
        (*e).endpoint_id = id;
        (*e).enforced = enforced;
        (*e).pending = pending;
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e)._pad = [0; 6];
        match &flow.frontend {
            Some(f) => {
                flags |= event_flags::SERVICE;
                (*e).service = f.addr;
                (*e).service_port = f.port;
            }
            None => {
                (*e).service = [0; 16];
                (*e).service_port = 0;
            }
        }
        (*e).flags = flags;
    }
    entry.submit(0);
    bump(stat::EVENTS);
    (allow, true)
}

/// Per-CPU token bucket for deny events.
#[inline(always)]
fn take_token(now: u64) -> bool {
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    let b = unsafe { &mut *b };
    const INTERVAL: u64 = 1_000_000_000 / DENY_EVENTS_PER_SEC;
    let refill = now.saturating_sub(b.last_ns) / INTERVAL;
    if refill > 0 {
        if refill >= DENY_EVENTS_BURST {
            b.tokens = DENY_EVENTS_BURST;
            b.last_ns = now;
        } else {
            b.tokens = core::cmp::min(b.tokens + refill, DENY_EVENTS_BURST);
            b.last_ns += refill * INTERVAL;
        }
    }
    if b.tokens == 0 {
        return false;
    }
    b.tokens -= 1;
    true
}

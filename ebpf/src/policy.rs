//! The policy programs: `from_endpoint` (TC ingress on the host side of an
//! endpoint's interface = the endpoint's egress policy) and `to_endpoint`
//! (TC egress = its ingress policy). Same code, a direction constant.
//!
//! Per packet: endpoint lookup, then the established fast path (`established`:
//! only the conntrack key read from the packet, one conntrack lookup, and the
//! verdict this side recorded). What it does not answer (new flows, sides to
//! judge, fragments, ICMP, IPv6 extension headers) goes on: parse, conntrack
//! (skipped when the fast path already missed), then for new (or stale-epoch)
//! flows one peer-class lookup (a hash of host addresses, then on a miss an
//! LPM trie of shorter prefixes), one peer-group hash lookup (the class's
//! group for this endpoint and direction; a miss is the wildcard group), on
//! endpoints with `SOURCE_PORTS` (port protocols only) one source-port-class
//! LPM lookup, and one or two decision-table lookups (own group unless it is
//! the wildcard, then the wildcard group; each an exact-port hash, then on a
//! miss an LPM trie of shorter keys), the same again in the pending
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
//!   bucket); under `active_flags::REPORT_ALLOWED` (`--flows all`) for allowed
//!   new flows too (sharing the deny budget). Ring buffer full: counted, never
//!   blocks.

use agent_common::{
    action, active_flags, ct_flags, direction, endpoint_flags, event_flags, ip_proto, stat, table,
    tcp_state, CtKey, CtSide, CtValue, DeferValue, EndpointInfo, RuleKey, Verdict,
};
use aya_ebpf::programs::TcContext;

use crate::coarse_now;
use crate::conntrack::{self, initiator_lo};
use crate::events::{self, bump};
use crate::flow::{Flow, Judging};
use crate::maps::JUDGED;
use crate::parse::Parsed;
use crate::service;
use crate::tables::{self, Tables};

/// Where a packet is being policed.
pub(crate) struct Hook<'a> {
    ctx: &'a TcContext,
    /// Policy direction of this hook for this endpoint.
    pub(crate) dir: u8,
    /// A workload's `from_endpoint`: new flows to a Service frontend are
    /// deferred to the post-DNAT hook.
    defers: bool,
    /// A workload's `to_endpoint`: a reply from a frontend without a
    /// client->frontend entry judges the client's egress (see `service`).
    client_replies: bool,
}

impl<'a> Hook<'a> {
    /// The policy direction of TC direction `tc_dir` on `endpoint`'s interface.
    #[inline(always)]
    pub(crate) fn policy_dir(tc_dir: u8, endpoint: &EndpointInfo) -> u8 {
        if endpoint.flags & endpoint_flags::HOST_ENDPOINT != 0 {
            tc_dir ^ 1
        } else {
            tc_dir
        }
    }

    /// The hook of direction `tc_dir` (a workload's view: TC ingress is what
    /// the pod sends) on `endpoint`'s interface.
    #[inline(always)]
    pub(crate) fn of(ctx: &'a TcContext, tc_dir: u8, endpoint: &EndpointInfo) -> Self {
        // A host endpoint's interface is the host's own: its TC ingress carries
        // traffic INTO the host (the host's ingress policy), the opposite of a
        // workload's host-side veth, where TC ingress is what the pod sends.
        let host = endpoint.flags & endpoint_flags::HOST_ENDPOINT != 0;
        Hook {
            ctx,
            dir: Self::policy_dir(tc_dir, endpoint),
            // A workload's own packets, before the node's DNAT.
            defers: !host && tc_dir == direction::EGRESS,
            // What a workload receives, after the node's reverse NAT.
            client_replies: !host && tc_dir == direction::INGRESS,
        }
    }
}

/// Decides one packet; true = allow. `ct_missed`: the fast path already
/// looked this packet's key up and found no live entry.
#[inline(always)]
pub(crate) fn police(
    pkt: &Parsed,
    ifindex: u32,
    endpoint: &EndpointInfo,
    hook: &Hook,
    ct_missed: bool,
) -> bool {
    let at = &Judging {
        ifindex,
        endpoint: *endpoint,
        active: tables::active(),
        now: coarse_now(),
    };
    let (key, pkt_is_lo) =
        CtKey::of_packet(&pkt.src, pkt.ct_sport, &pkt.dst, pkt.ct_dport, pkt.protocol);
    if pkt.track && !ct_missed {
        if let Some(ct) = conntrack::live_entry(&key, pkt.protocol, at.now) {
            return known_flow(pkt, hook.dir, at, &key, ct, pkt_is_lo);
        }
    }
    new_flow(pkt, hook, at, &key, pkt_is_lo)
}

/// A packet of a flow with a live conntrack entry: the verdict this side
/// recorded, or (not judged yet, or judged in an older epoch) a judgement of
/// this side in the flow's original orientation (initiator, responder,
/// `judged_port`, the initiator's port), recorded in the entry.
#[inline(always)]
fn known_flow(
    pkt: &Parsed,
    hook_dir: u8,
    at: &Judging,
    key: &CtKey,
    ct: &mut CtValue,
    pkt_is_lo: bool,
) -> bool {
    let forward = ct.is_forward(pkt_is_lo);
    let side = CtSide::at_hook(hook_dir, forward);
    conntrack::touch(ct, pkt.protocol, pkt.tcp_flags, forward, at.now);
    if let Some(allow) = conntrack::recorded_verdict(ct, &side, at.active.epoch) {
        return allow;
    }
    conntrack::forget_if_stale(ct, at.active.epoch);
    let (init, resp, init_port, resp_port) = if forward {
        (&pkt.src, &pkt.dst, pkt.ct_sport, pkt.ct_dport)
    } else {
        (&pkt.dst, &pkt.src, pkt.ct_dport, pkt.ct_sport)
    };
    // A client->frontend entry: the client's egress is judged against the
    // backend DNAT chose (if that record was evicted, against the frontend, as
    // a flow no post-DNAT hook saw).
    let backend = if ct.flags & ct_flags::SERVICE != 0 && side.is_sender() {
        service::backend_of(key)
    } else {
        None
    };
    let (allow, reported) = judge(|flow| {
        flow.fill(pkt, at, side, (init, init_port), (resp, ct.judged_port));
        flow.already_reported = u8::from(ct.flags & side.reported != 0);
        if let Some(b) = &backend {
            flow.via_frontend(*resp, resp_port);
            flow.resp = b.backend;
            flow.judged_port = b.backend_port;
        }
    });
    ct.flags |= side.flags(allow, reported);
    allow
}

/// A packet without a live conntrack entry: this packet's source is the
/// initiator (also for a TCP packet that is not a SYN: a flow picked up
/// mid-way, e.g. one older than the dataplane, is judged like a new one in the
/// orientation of the packet seen first). Flows to and replies from Service
/// frontends take their own ways (`service`).
#[inline(always)]
fn new_flow(pkt: &Parsed, hook: &Hook, at: &Judging, key: &CtKey, pkt_is_lo: bool) -> bool {
    bump(stat::NEW_FLOWS);
    let service_ports = pkt.track && service::has_ports(pkt.protocol);
    if hook.defers
        && service_ports
        && service::is_frontend(&pkt.dst)
        && service::defer(hook.ctx, pkt, at.ifindex, &at.endpoint)
    {
        return true;
    }
    if hook.client_replies && service_ports && service::is_frontend(&pkt.src) {
        return judge_unseen_reply(pkt, at, key, pkt_is_lo);
    }
    let side = CtSide::of(hook.dir == direction::EGRESS);
    let (allow, reported) = judge(|flow| flow.fill_opened_by(pkt, at, side));
    if pkt.track && at.inserts() {
        let flags = side.flags(allow, reported) | initiator_lo(pkt_is_lo);
        let state = tcp_state::initial(pkt.protocol, pkt.tcp_flags);
        conntrack::insert(key, flags, state, pkt.judge_port, at);
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
fn judge_unseen_reply(pkt: &Parsed, at: &Judging, key: &CtKey, pkt_is_lo: bool) -> bool {
    bump(stat::SERVICE_REPLY_JUDGED);
    let (allow, reported) = judge(|flow| {
        flow.fill(
            pkt,
            at,
            CtSide::SENDER,
            (&pkt.dst, pkt.ct_dport),
            (&pkt.src, pkt.ct_sport),
        )
    });
    if at.inserts() {
        let flags =
            CtSide::SENDER.flags(allow, reported) | ct_flags::SERVICE | initiator_lo(!pkt_is_lo);
        // The flow's first packet seen is the responder's.
        let state = if pkt.protocol == ip_proto::TCP {
            tcp_state::next(tcp_state::SYN_SENT, pkt.tcp_flags, false)
        } else {
            tcp_state::NONE
        };
        conntrack::insert(key, flags, state, pkt.ct_sport, at);
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
    let at = Judging {
        ifindex: d.ifindex,
        endpoint: d.endpoint,
        active: tables::active(),
        now: coarse_now(),
    };
    let (allow, reported) = judge_inlined(|flow| {
        flow.fill_opened_by(pkt, &at, CtSide::SENDER);
        flow.via_frontend(d.frontend, d.frontend_port);
    });
    bump(stat::SERVICE_JUDGED);
    if !at.inserts() {
        return allow;
    }
    let flags = CtSide::SENDER.flags(allow, reported);
    let state = tcp_state::initial(pkt.protocol, pkt.tcp_flags);
    let (bkey, b_lo) =
        CtKey::of_packet(&pkt.src, pkt.ct_sport, &pkt.dst, pkt.ct_dport, pkt.protocol);
    conntrack::insert(
        &bkey,
        flags | initiator_lo(b_lo),
        state,
        pkt.judge_port,
        &at,
    );
    let (fkey, f_lo) = CtKey::of_packet(
        &pkt.src,
        pkt.ct_sport,
        &d.frontend,
        d.frontend_port,
        pkt.protocol,
    );
    let flags = flags | initiator_lo(f_lo) | ct_flags::SERVICE;
    conntrack::insert(&fkey, flags, state, pkt.judge_port, &at);
    service::remember_backend(&fkey, &pkt.dst, pkt.ct_dport);
    allow
}

/// Judges the flow side `fill` writes (see [`judge_flow`]): (allowed,
/// reported). The flow is written in place in this CPU's `maps::JUDGED`, not
/// on the stack: the frames of a call chain share 512 bytes.
#[inline(always)]
fn judge(fill: impl FnOnce(&mut Flow)) -> (bool, bool) {
    // SAFETY: the slot is this CPU's `JUDGED` value, valid for reads.
    judge_with(fill, |flow| unsafe { judge_flow(flow) })
}

/// [`judge`] with the judgement inlined, for `post_nat` (a deferred Service
/// flow): its frame leaves no room for [`judge_flow`]'s under it.
#[inline(always)]
fn judge_inlined(fill: impl FnOnce(&mut Flow)) -> (bool, bool) {
    judge_with(fill, judged)
}

#[inline(always)]
fn judge_with(fill: impl FnOnce(&mut Flow), run: impl FnOnce(&Flow) -> u32) -> (bool, bool) {
    let Some(slot) = JUDGED.get_ptr_mut(0) else {
        // Never: index 0 of a one-entry array.
        return (false, false);
    };
    // SAFETY: this CPU's value; programs on one CPU do not interleave.
    let flow = unsafe { &mut *slot };
    fill(flow);
    let judged = run(flow);
    (judged & JUDGED_ALLOW != 0, judged & JUDGED_REPORTED != 0)
}

/// [`judge_flow`]'s answer: bits.
const JUDGED_ALLOW: u32 = 1;
const JUDGED_REPORTED: u32 = 2;

/// Runs the enforced (and, for endpoints with staged policy, the pending) lookup
/// and reports the flow: [`JUDGED_ALLOW`] and [`JUDGED_REPORTED`] bits. Called
/// from three places of `police_packet` (known flow, new flow, unseen Service
/// reply); a BTF global function like the ones in `hooks`, so the verifier
/// walks it once for any flow, not once per place (`post_nat`'s deferred
/// Service flow has it inlined: [`judge_inlined`]). The event is
/// written in place in the ring buffer (a stack copy would not fit the 512
/// bytes a call chain shares).
///
/// # Safety
/// `flow` is null or valid for reads.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn judge_flow(flow: *const Flow) -> u32 {
    // SAFETY: the caller's promise; the verifier needs the null check.
    match unsafe { flow.as_ref() } {
        Some(flow) => judged(flow),
        None => 0,
    }
}

/// The judgement of [`judge_flow`].
#[inline(always)]
fn judged(flow: &Flow) -> u32 {
    let tables = Tables::of(&flow.at.active);
    let key = enforced_key(flow, &tables);
    let enforced = match tables.verdict(key) {
        Some(v) => v,
        None => {
            bump(stat::NO_TABLE_ENTRY);
            Verdict::NO_ENTRY
        }
    };
    let allow = enforced.action == action::ALLOW;
    let allowed = if allow { JUDGED_ALLOW } else { 0 };
    if flow.already_reported != 0 {
        return allowed | JUDGED_REPORTED;
    }
    let fragment = flow.fragment != 0;
    let staged = flow.at.endpoint.flags & endpoint_flags::HAS_STAGED != 0 && !fragment;
    // Allowed flows of endpoints without staged policy are reported only
    // under `--flows all` (then rate-limited like denied ones, below).
    if !staged && allow && flow.at.active.flags & active_flags::REPORT_ALLOWED == 0 {
        return allowed;
    }
    let mut flags = 0;
    if fragment {
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
        pending = match tables.verdict(key) {
            Some(v) => v,
            None => Verdict::NO_ENTRY,
        };
    } else if !events::take_token(flow.at.now) {
        bump(stat::EVENTS_RATE_LIMITED);
        return allowed;
    }
    if events::report(flow, enforced, pending, flags) {
        allowed | JUDGED_REPORTED
    } else {
        allowed
    }
}

/// The enforced table's key for this flow side: the endpoint, the peer's group
/// (the peer is the far end as seen from the judging endpoint), and for port
/// protocols on endpoints with `SOURCE_PORTS` the initiator's source-port class
/// (the initiator's port, also when a reply re-judges a stale entry).
#[inline(always)]
fn enforced_key(flow: &Flow, tables: &Tables) -> RuleKey {
    let dir = flow.side().policy_dir;
    let peer = if flow.sender != 0 {
        &flow.resp
    } else {
        &flow.init
    };
    let id = flow.at.endpoint.id;
    let group = tables.peer_group(id, dir, tables.peer_class(peer));
    let protocol = flow.protocol;
    let classified = flow.at.endpoint.flags & endpoint_flags::SOURCE_PORTS != 0;
    let source_port_class = if classified && ip_proto::has_ports(protocol) {
        tables.source_port_class(id, dir, protocol, flow.init_port)
    } else {
        0
    };
    RuleKey {
        endpoint_id: id,
        peer_group: group,
        direction: dir,
        table: table::ENFORCED,
        protocol,
        source_port_class,
        port: flow.judged_port.to_be_bytes(),
        _pad2: [0; 2],
    }
}

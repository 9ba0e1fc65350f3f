//! Service traffic: a pod's egress policy is judged after the node's DNAT, so
//! it sees the backend kube-proxy chose (address and port), as Calico's
//! iptables dataplane does by judging pod egress in FORWARD.
//!
//! Why here and not in `from_endpoint`: TC ingress on the host-side veth runs
//! before netfilter PREROUTING, where kube-proxy (iptables or nftables mode)
//! DNATs a ClusterIP to a backend, so `from_endpoint` only sees the frontend.
//! Doing the service NAT ourselves (Calico eBPF, Cilium) would mean replacing
//! kube-proxy; instead the verdict waits for the first hook after the DNAT,
//! which works with any kube-proxy mode without knowing which backend it picks:
//!
//! 1. `from_endpoint`, new flow (conntrack miss) of a port protocol whose
//!    destination is in `SERVICE_NETS` (ClusterIP ranges, external IPs):
//!    `DEFERRED[(protocol, client, source port)] = {frontend, client endpoint}`,
//!    `skb->mark |= SERVICE_DEFER_MARK`, pass (to netfilter, which DNATs).
//! 2. The post-DNAT hook is TC egress of the device the packet leaves by: a
//!    local backend pod's `to_endpoint`, or for a remote backend the node's
//!    data interfaces (uplink, tunnels), where the agent attaches `post_nat`.
//!    Only packets with the mark pay anything there (a field read otherwise).
//!    It takes the `DEFERRED` entry, judges the client's egress (enforced and
//!    staged, `policy::judge_deferred`) against the post-DNAT tuple, writes the
//!    conntrack entry of the backend tuple and one of the client->frontend
//!    tuple (flag `SERVICE`) carrying the client-side verdict, records the
//!    backend in `SERVICE_FLOWS`, and reports frontend and backend in one event.
//!    A local backend's `to_endpoint` then judges its ingress as usual.
//! 3. Later packets: the client's `from_endpoint` and the reverse-NATed replies
//!    at its `to_endpoint` (source = the frontend) hit the client->frontend
//!    entry; the backend's hooks hit the backend tuple. After a policy change a
//!    stale client->frontend entry is re-judged against the backend in
//!    `SERVICE_FLOWS`, whichever of the client's hooks sees it first.
//! 4. No post-DNAT hook saw it (backend in the node's own namespace = local
//!    delivery, SNAT changed the source, an interface without `post_nat`):
//!    the first reply from the frontend at the client's `to_endpoint` judges
//!    the client's egress against the frontend (the pre-change behaviour, so
//!    TCP stays fail-closed; a one-way UDP datagram to such a backend passes
//!    unjudged: the documented gap of a TC-only design).
//!
//! IPVS mode: IPVS DNATs in LOCAL_IN/FORWARD-time hooks but the packet still
//! leaves by a device's TC egress (a local pod's veth or the uplink) with the
//! backend address, so the same deferral covers it (add the `kube-ipvs0`
//! addresses, i.e. the ClusterIP range, to `serviceClusterIPRanges`).
//!
//! Cost: established flows pay nothing new (a conntrack hit first, as before);
//! a new flow pays one `SERVICE_NETS` LPM lookup at `from_endpoint` (and at a
//! workload's `to_endpoint`, for step 4), a deferred one a map write, a map
//! lookup and delete and the usual judgement at its post-DNAT hook.
use agent_common::{
    ip_proto, service_prog, stat, CtKey, DeferKey, DeferValue, EndpointInfo, ServiceFlow,
    SERVICE_DEFER_MARK,
};
use aya_ebpf::{
    bindings::{__sk_buff, BPF_ANY, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
    EbpfContext,
};

use crate::events::bump;
use crate::maps::{DEFERRED, ENDPOINTS, SERVICE_FLOWS, SERVICE_NETS, SERVICE_PROGS};
use crate::parse::{parse, Parsed};

/// TC egress of the node's data interfaces (uplink, tunnels): the post-DNAT
/// hook of flows to remote backends. Acts only on packets `from_endpoint`
/// marked; everything else passes after one field read.
///
/// Also the tail call of a pod's `to_endpoint` for a marked packet (a local
/// backend): then it hands the packet back to `to_endpoint` for the backend's
/// ingress. A separate program so that the deferred judgement has its own
/// stack and verifier budget instead of multiplying `to_endpoint`'s paths.
#[classifier]
pub fn post_nat(ctx: TcContext) -> i32 {
    if mark(&ctx) & SERVICE_DEFER_MARK == 0 {
        return TC_ACT_OK;
    }
    match parse(&ctx) {
        Ok(pkt) => {
            if post_dnat(&ctx, &pkt) == Some(false) {
                bump(stat::DENIED);
                return TC_ACT_SHOT;
            }
        }
        // The mark is ours: clear it even when the packet is not judged here
        // (`to_endpoint` drops what does not parse).
        Err(_) => clear_mark(&ctx),
    }
    back_to_endpoint(&ctx)
}

/// After `post_nat` on a pod's interface (it was tail-called by `to_endpoint`):
/// back to `to_endpoint` for the backend's ingress. On a data interface: pass.
#[inline(always)]
fn back_to_endpoint(ctx: &TcContext) -> i32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
    // SAFETY: only presence is checked.
    if unsafe { ENDPOINTS.get(&ifindex) }.is_none() {
        return TC_ACT_OK;
    }
    // SAFETY: ctx is this program's context. Returns only on failure.
    unsafe { SERVICE_PROGS.tail_call(ctx, service_prog::TO_ENDPOINT) };
    // The backend's ingress cannot be judged: fail closed.
    bump(stat::DENIED);
    TC_ACT_SHOT
}

/// At a pod's `to_endpoint`: a marked packet goes to `post_nat` (which comes
/// back with the mark cleared). Returns only for unmarked packets, or if the
/// tail call fails (then the client side is judged at the reply, step 4).
#[inline(always)]
pub fn hand_to_post_nat(ctx: &TcContext) {
    if mark(ctx) & SERVICE_DEFER_MARK != 0 {
        // SAFETY: ctx is this program's context. Returns only on failure.
        unsafe { SERVICE_PROGS.tail_call(ctx, service_prog::POST_NAT) };
        clear_mark(ctx);
    }
}

/// Protocols kube-proxy load-balances (the only ones deferred).
#[inline(always)]
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP)
}

/// Whether `addr` is in a Service frontend prefix.
#[inline(always)]
pub fn is_frontend(addr: &[u8; 16]) -> bool {
    SERVICE_NETS.get(&Key::new(128, *addr)).is_some()
}

/// Step 1: hands a new flow to a frontend on to its post-DNAT hook. False when
/// it could not be recorded (then it is judged here, against the frontend).
#[inline(always)]
pub fn defer(ctx: &TcContext, pkt: &Parsed, ifindex: u32, endpoint: &EndpointInfo) -> bool {
    let key = defer_key(pkt);
    let value = DeferValue {
        frontend: pkt.dst,
        frontend_port: pkt.ct_dport,
        _pad: [0; 2],
        ifindex,
        endpoint: *endpoint,
    };
    if DEFERRED.insert(&key, &value, BPF_ANY as u64).is_err() {
        return false;
    }
    ctx.set_mark(mark(ctx) | SERVICE_DEFER_MARK);
    bump(stat::SERVICE_DEFERRED);
    true
}

/// Step 2, at a post-DNAT hook: for a packet `from_endpoint` deferred, the
/// client's egress verdict on its post-DNAT tuple (the event and conntrack
/// entries carry the frontend); None for every other packet.
#[inline(always)]
fn post_dnat(ctx: &TcContext, pkt: &Parsed) -> Option<bool> {
    if mark(ctx) & SERVICE_DEFER_MARK == 0 {
        return None;
    }
    clear_mark(ctx);
    let key = defer_key(pkt);
    // SAFETY: plain values copied out at once.
    let Some(d) = (unsafe { DEFERRED.get(&key) }).copied() else {
        bump(stat::SERVICE_UNMATCHED);
        return None;
    };
    let _ = DEFERRED.remove(&key);
    Some(crate::policy::judge_deferred(pkt, &d))
}

/// The backend of a client->frontend conntrack entry.
#[inline(always)]
pub fn backend_of(key: &CtKey) -> Option<ServiceFlow> {
    // SAFETY: plain values copied out at once.
    unsafe { SERVICE_FLOWS.get(key) }.copied()
}

#[inline(always)]
pub fn remember_backend(key: &CtKey, backend: &[u8; 16], port: u16) {
    let value = ServiceFlow {
        backend: *backend,
        backend_port: port,
        _pad: [0; 6],
    };
    let _ = SERVICE_FLOWS.insert(key, &value, BPF_ANY as u64);
}

#[inline(always)]
fn defer_key(pkt: &Parsed) -> DeferKey {
    DeferKey {
        addr: pkt.src,
        port: pkt.ct_sport,
        protocol: pkt.protocol,
        _pad: 0,
    }
}

#[inline(always)]
fn mark(ctx: &TcContext) -> u32 {
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    unsafe { (*(ctx.as_ptr() as *const __sk_buff)).mark }
}

#[inline(always)]
fn clear_mark(ctx: &TcContext) {
    ctx.set_mark(mark(ctx) & !SERVICE_DEFER_MARK);
}

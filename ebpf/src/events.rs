//! What the programs tell userspace: per-CPU counters (`DP_COUNTERS`, indices
//! in `agent_common::stat`) and flow events (`FLOW_EVENTS`), deny events
//! rate-limited per CPU (`EVENT_BUDGET`). A full ring buffer is counted and
//! never blocks a packet.
use agent_common::{event_flags, stat, FlowEvent, Verdict};
use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::flow::Flow;
use crate::maps::{DP_COUNTERS, EVENT_BUDGET, FLOW_EVENTS};

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(c) = DP_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

/// A token of this CPU's deny-event budget (`TokenBucket::take`), if left.
#[inline(always)]
pub fn take_token(now: u64) -> bool {
    let Some(b) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe { &mut *b }.take(now)
}

/// Reports a newly judged flow side: true when the event was written. Written
/// in place in the ring buffer: a stack copy of the event would not fit the BPF
/// stack next to the callers' frames.
#[inline(always)]
pub fn report(flow: &Flow, enforced: Verdict, pending: Verdict, mut flags: u8) -> bool {
    let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent>(0) else {
        bump(stat::RINGBUF_FULL);
        return false;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: an exclusive reservation of size_of::<FlowEvent>(); every field is written.
    unsafe {
        (*e).src = flow.init;
        (*e).dst = flow.resp;
        (*e).src_port = flow.init_port;
        (*e).dst_port = flow.judged_port;
        (*e).protocol = flow.protocol;
        (*e).ip_version = flow.ip_version;
        (*e).direction = flow.side().policy_dir;
        (*e).ifindex = flow.at.ifindex;
        (*e).endpoint_id = flow.at.endpoint.id;
        (*e).enforced = enforced;
        (*e).pending = pending;
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e)._pad = [0; 6];
        if flow.has_frontend != 0 {
            flags |= event_flags::SERVICE;
        }
        (*e).service = flow.frontend;
        (*e).service_port = flow.frontend_port;
        (*e).flags = flags;
    }
    entry.submit(0);
    bump(stat::EVENTS);
    true
}

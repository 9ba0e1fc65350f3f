//! Conntrack in the programs: the live entry of a packet's flow, the verdict a
//! flow side recorded, inserts, and ICMP errors related to a tracked flow. Key
//! building, TCP states, timeouts and side bits are pure functions in
//! `agent_common` (host-tested there, and the agent's sweep uses the same
//! timeouts).
use agent_common::{ct_flags, ip_proto, stat, tcp_state, CtKey, CtSide, CtValue};
use aya_ebpf::{bindings::BPF_ANY, programs::TcContext};

use crate::coarse_now;
use crate::events::bump;
use crate::flow::Judging;
use crate::maps::CONNTRACK;
use crate::parse::{quoted, Parsed};
use crate::tables;

/// The entry of `key` unless it is idle (an idle entry is a miss: the insert
/// after judging the packet as a new flow overwrites it).
#[inline(always)]
pub fn live_entry<'a>(key: &CtKey, protocol: u8, now: u64) -> Option<&'a mut CtValue> {
    let ct = CONNTRACK.get_ptr_mut(key)?;
    // SAFETY: map value pointer; concurrent updates of the same flow on two
    // CPUs can at worst lose a flag or timestamp, never corrupt memory.
    let ct = unsafe { &mut *ct };
    if ct.is_idle(protocol, now) {
        None
    } else {
        Some(ct)
    }
}

/// Follows a packet of the flow: last seen now, TCP state after its flags.
/// Writes only what changed: the coarse clock moves once per tick (1 to 10
/// ms), so most packets of a busy flow leave the entry's cache line clean
/// (not written, not bounced between the CPUs of the flow's two directions).
#[inline(always)]
pub fn touch(ct: &mut CtValue, protocol: u8, tcp_flags: u8, forward: bool, now: u64) {
    if ct.last_seen_ns != now {
        ct.last_seen_ns = now;
    }
    if protocol == ip_proto::TCP {
        let state = tcp_state::next(ct.tcp_state, tcp_flags, forward);
        if state != ct.tcp_state {
            ct.tcp_state = state;
        }
    }
}

/// The verdict `side` recorded in the current `epoch` (a conntrack hit,
/// counted), or None when it must be judged: not judged yet, or judged in an
/// older epoch (then [`forget_if_stale`] before judging). Reads only, so the
/// established fast path asks it too.
#[inline(always)]
pub fn recorded_verdict(ct: &CtValue, side: &CtSide, epoch: u32) -> Option<bool> {
    if ct.epoch != epoch {
        return None;
    }
    let recorded = side.recorded(ct.flags);
    if recorded.is_some() {
        bump(stat::CT_HITS);
    }
    recorded
}

/// An entry from an older epoch: policy changed since, every side's decision
/// is forgotten (both sides are judged again at their next packets).
#[inline(always)]
pub fn forget_if_stale(ct: &mut CtValue, epoch: u32) {
    if ct.epoch != epoch {
        bump(stat::CT_STALE);
        ct.epoch = epoch;
        ct.flags &= ct_flags::INITIATOR_LO | ct_flags::SERVICE;
    }
}

/// `ct_flags::INITIATOR_LO` when the initiator is the key's lower side.
#[inline(always)]
pub fn initiator_lo(is_lo: bool) -> u16 {
    if is_lo {
        ct_flags::INITIATOR_LO
    } else {
        0
    }
}

/// Records a newly judged flow in the current epoch.
#[inline(always)]
pub fn insert(key: &CtKey, flags: u16, state: u8, judged_port: u16, at: &Judging) {
    let value = CtValue {
        epoch: at.active.epoch,
        flags,
        tcp_state: state,
        _pad: 0,
        judged_port,
        _pad2: [0; 6],
        last_seen_ns: at.now,
    };
    // Full LRU: the kernel evicts; an error here only costs a re-judgement later.
    let _ = CONNTRACK.insert(key, &value, BPF_ANY as u64);
}

/// Whether `pkt` is an ICMP error quoting a packet of a live flow that this side
/// approved in the current epoch (conntrack's RELATED: it then needs no policy).
/// The error travels against the quoted packet, back to its sender, so it is on
/// the side a packet of the flow going the other way would be. A stale or denied
/// side is not re-judged here: the error is then judged on its own, as ICMP.
#[inline(always)]
pub fn related_approved(ctx: &TcContext, pkt: &Parsed, hook_dir: u8) -> bool {
    let Some(q) = quoted(ctx, pkt) else {
        return false;
    };
    let (key, q_is_lo) = CtKey::of_packet(&q.src, q.sport, &q.dst, q.dport, q.protocol);
    // SAFETY: read-only use of the map value.
    let Some(ct) = (unsafe { CONNTRACK.get(&key) }) else {
        return false;
    };
    if ct.epoch != tables::active().epoch || ct.is_idle(q.protocol, coarse_now()) {
        return false;
    }
    let quoted_forward = ct.is_forward(q_is_lo);
    ct.flags & CtSide::at_hook(hook_dir, !quoted_forward).allowed != 0
}

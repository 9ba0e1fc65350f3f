//! The entry of `from_endpoint` / `to_endpoint` (the policy itself: `policy`).
//!
//! Per packet the program calls BTF global functions, each of which the
//! kernel's verifier checks once, on its own, against its prototype (unknown
//! arguments), instead of once per way into it: [`fast_path`] (the
//! established fast path), then for what it does not answer [`parse_packet`],
//! [`related_packet`] (ICMP errors of a known flow) and [`police_packet`]
//! (`policy`), which calls `policy::judge_flow` for a flow side to judge
//! (from three places).
//! Inlined into one function, every way through the parser (IP version, each
//! IPv6 extension header, fragment kinds, L4 protocols) carried its own
//! constants into the policy path, and the verifier walked that path again
//! for each: 773,000 instructions processed and 1.6 s per program, against
//! 201,000 and ~0.4 s, and 33,000 with `judge_flow` apart (docs/benchmarks.md,
//! "The verifier, per program"). The frames
//! of a call chain share 512 bytes of stack, so the entry keeps almost
//! nothing on its own and the parsed packet goes through a per-CPU map
//! (`maps::PARSED`). A call costs a few ns per packet.
use agent_common::{direction, endpoint_flags, stat, EndpointInfo};
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
    EbpfContext,
};

use crate::conntrack;
use crate::established::{self, Lean};
use crate::events::bump;
use crate::maps::{ENDPOINTS, PARSED};
use crate::parse::{parse, ParseError, Parsed};
use crate::policy::{police, Hook};
use crate::service;

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
    // TC egress of an endpoint interface is a post-DNAT point: a flow that a
    // client's `from_endpoint` deferred is judged by `post_nat` first, which
    // returns here (see `service`); nothing else pays more than a field read.
    if hook_dir == direction::INGRESS {
        service::hand_to_post_nat(ctx);
    }
    let skb = ctx.as_ptr() as *mut __sk_buff;
    let dir = Hook::policy_dir(hook_dir, &endpoint);
    let ct_missed = if endpoint.flags & endpoint_flags::FULL_PATH == 0 {
        // SAFETY: `skb` is this run's context.
        match unsafe { fast_path(skb, u32::from(dir)) } {
            FAST_ALLOWED => return verdict(true),
            FAST_DENIED => return verdict(false),
            FAST_MISSED => true,
            _ => false,
        }
    } else {
        false
    };
    let Some(pkt) = PARSED.get_ptr_mut(0) else {
        // Never: index 0 of a one-entry array.
        return verdict(false);
    };
    // SAFETY: `skb` is this run's context, `pkt` this CPU's map value.
    let parsed = unsafe { parse_packet(skb, pkt) };
    if parsed != PARSED_OK {
        return parsed;
    }
    let args = u32::from(hook_dir) | u32::from(ct_missed) << 8;
    // SAFETY: `pkt` is this CPU's map value, just written by `parse_packet`.
    if unsafe { (*pkt).nd_or_mld } {
        return verdict(true);
    }
    // SAFETY: as above. Only a packet quoting another (an ICMP error) can be
    // RELATED: the rest skip the call.
    if unsafe { (*pkt).quote_offset != 0 && related_packet(skb, pkt, u32::from(dir)) != 0 } {
        bump(stat::ICMP_RELATED);
        return verdict(true);
    }
    // SAFETY: as above.
    unsafe { police_packet(skb, pkt, endpoint.id, endpoint.flags, args) }
}

/// [`fast_path`]'s answers: the verdict this side recorded, or (`FAST_MISSED`)
/// no live conntrack entry for a packet read whole, or the full path decides.
const FAST_DENIED: i32 = 0;
const FAST_ALLOWED: i32 = 1;
const FAST_MISSED: i32 = 2;
const FAST_FULL: i32 = 3;

/// The established fast path (`established::lookup`) at a hook of policy
/// direction `dir`. A BTF global function like [`parse_packet`]: verified
/// once, and with a frame of its own beside the policy path's (the frames of
/// a call chain share 512 bytes of stack).
///
/// # Safety
/// `skb` is the running program's context.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn fast_path(skb: *mut __sk_buff, dir: u32) -> i32 {
    match established::lookup(&context(skb), dir as u8) {
        Lean::Known(true) => FAST_ALLOWED,
        Lean::Known(false) => FAST_DENIED,
        Lean::Missed => FAST_MISSED,
        Lean::Full => FAST_FULL,
    }
}

/// [`parse_packet`]'s answer for a packet to police (any other is a TC action).
const PARSED_OK: i32 = -1;

/// Parses the packet into `*out`: [`PARSED_OK`], or the TC action for a packet
/// that is not policed (not IP: passes) or malformed (dropped), counted.
///
/// A BTF global function (`no_mangle`, never inlined; see the module): its
/// caller sees only an unknown result and unknown contents of `*out`.
///
/// # Safety
/// `skb` is the running program's context, `out` null or valid for writes.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn parse_packet(skb: *mut __sk_buff, out: *mut Parsed) -> i32 {
    // SAFETY: the caller's promise; the verifier needs the null check.
    let Some(out) = (unsafe { out.as_mut() }) else {
        return TC_ACT_SHOT;
    };
    match parse_counted(&context(skb)) {
        Ok(p) => {
            *out = p;
            PARSED_OK
        }
        Err(tc_action) => tc_action,
    }
}

/// The context a global function was given (never null: the kernel's).
#[inline(always)]
fn context(skb: *mut __sk_buff) -> TcContext {
    // SAFETY: the verifier types the argument as this run's context.
    TcContext::new(unsafe { core::ptr::NonNull::new_unchecked(skb) })
}

/// Decides a parsed packet of the endpoint (`endpoint_id`, `endpoint_flags`)
/// at the hook of TC direction `args & 0xff`; `args >> 8`: the fast path
/// already missed its conntrack key. Returns the TC action, counted.
///
/// A BTF global function like [`parse_packet`]: the policy path is verified
/// once for any packet, not once per way through the parser.
///
/// # Safety
/// `skb` is the running program's context, `pkt` null or valid for reads.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn police_packet(
    skb: *mut __sk_buff,
    pkt: *const Parsed,
    endpoint_id: u32,
    endpoint_flags: u32,
    args: u32,
) -> i32 {
    // SAFETY: the caller's promise; the verifier needs the null check.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return TC_ACT_SHOT;
    };
    let ctx = context(skb);
    let endpoint = EndpointInfo {
        id: endpoint_id,
        flags: endpoint_flags,
    };
    // SAFETY: the context pointer is the kernel's __sk_buff for this run.
    let ifindex = unsafe { (*skb).ifindex };
    let hook = Hook::of(&ctx, (args & 0xff) as u8, &endpoint);
    verdict(police(pkt, ifindex, &endpoint, &hook, args >> 8 != 0))
}

/// Whether `pkt` is an ICMP error RELATED to a flow this side (of policy
/// direction `dir`) approved (`conntrack::related_approved`): 1, else 0.
///
/// A BTF global function like [`parse_packet`], called by the entry before
/// [`police_packet`], and for the stack: the quoted packet and its conntrack
/// key get a frame of their own, beside (not under) [`police_packet`]'s, which
/// with `policy::judge_flow`'s must fit the 512 bytes a call chain shares.
///
/// # Safety
/// `skb` is the running program's context, `pkt` null or valid for reads.
#[unsafe(no_mangle)]
#[inline(never)]
pub unsafe extern "C" fn related_packet(skb: *mut __sk_buff, pkt: *const Parsed, dir: u32) -> u32 {
    // SAFETY: the caller's promise; the verifier needs the null check.
    let Some(pkt) = (unsafe { pkt.as_ref() }) else {
        return 0;
    };
    u32::from(conntrack::related_approved(&context(skb), pkt, dir as u8))
}

/// The parsed packet, counted; or the TC action for one that is not policed
/// (not IP: passes) or malformed (dropped).
#[inline(always)]
fn parse_counted(ctx: &TcContext) -> Result<Parsed, i32> {
    match parse(ctx) {
        Ok(p) => {
            if p.fragment || p.fragment_tracked {
                bump(stat::FRAGMENTS);
            }
            if p.fragment_tracked {
                bump(stat::FRAGMENTS_TRACKED);
            }
            Ok(p)
        }
        Err(ParseError::NotIp) => {
            bump(stat::NON_IP);
            Err(TC_ACT_OK)
        }
        Err(ParseError::Malformed) => {
            bump(stat::MALFORMED);
            bump(stat::DENIED);
            Err(TC_ACT_SHOT)
        }
    }
}

/// The TC action of a verdict, counted.
#[inline(always)]
fn verdict(allowed: bool) -> i32 {
    if allowed {
        bump(stat::ALLOWED);
        TC_ACT_OK
    } else {
        bump(stat::DENIED);
        TC_ACT_SHOT
    }
}

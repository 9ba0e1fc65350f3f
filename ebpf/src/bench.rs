//! Bench-only programs (`cargo xtask bench`): never attached by the agent,
//! only run through BPF_PROG_TEST_RUN next to the agent's `to_endpoint`.
//!
//! - `floor`: an empty classifier returning TC_ACT_OK: what the test-run
//!   harness and a program call cost by themselves.
//! - `linear_scan`: the shape of Calico's generated policy program: parse the
//!   packet, look the flow up in conntrack (a miss for a new flow), then
//!   compare it with every rule in order until the first match. The rules are
//!   entries of the array map `SCAN_RULES` (`SCAN_LEN` of them), so the cost
//!   grows with the rules before the match; no match is a drop (Calico's
//!   end-of-tier deny). Like Calico's, a long policy is cut into chunks the
//!   verifier accepts (it gives up on a loop of ~1,600 such iterations:
//!   "sequence of 8193 jumps is too complex"), chained by tail calls to
//!   `linear_scan_chunk`, the flow and position kept in per-CPU `SCAN_STATE`.
//!   Only what the bench needs is parsed: IPv4 and IPv6 without extension
//!   headers, TCP and UDP ports.
//! - `step_endpoint`, `step_clock`, `step_counters`: one step of the agent's
//!   established path each, alone (minus `floor`: what that step costs).
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_coarse_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray},
    programs::TcContext,
    EbpfContext,
};

/// More than the bench's largest rule count (10,000 rules and a deny).
const MAX_SCAN_RULES: u32 = 10_240;
/// Rules compared per program run before the tail call to the next chunk.
const CHUNK: u32 = 1_024;
const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// One rule, 40 bytes (the bench writes the same layout): the source
/// address and mask as two 64-bit halves of an IPv6 (or IPv4-mapped)
/// address, read in memory order, a destination port range, a protocol
/// (0: any) and the action (1: allow, 0: deny).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanRule {
    addr: [u64; 2],
    mask: [u64; 2],
    port_first: u16,
    port_last: u16,
    protocol: u8,
    allow: u8,
    _pad: [u8; 2],
}

/// The conntrack key: a lookup the size of the agent's, missed on new flows.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanCtKey {
    src: [u64; 2],
    dst: [u64; 2],
    sport: u16,
    dport: u16,
    protocol: u8,
    _pad: [u8; 3],
}

#[map]
static SCAN_RULES: Array<ScanRule> = Array::with_max_entries(MAX_SCAN_RULES, 0);

/// How many entries of `SCAN_RULES` are in force (entry 0).
#[map]
static SCAN_LEN: Array<u32> = Array::with_max_entries(1, 0);

/// The flow being judged and the first rule of the next chunk.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ScanState {
    key: ScanCtKey,
    next: u32,
    _pad: u32,
}

#[map]
static SCAN_STATE: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);

/// Entry 0: `linear_scan_chunk` (set by the bench).
#[map]
static SCAN_JUMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
static SCAN_CONNTRACK: LruHashMap<ScanCtKey, u8> = LruHashMap::with_max_entries(65_536, 0);

/// In a private module like the agent's programs: the macro's exported
/// wrappers take the context as a raw pointer.
/// `step_endpoint`'s stand-in for the agent's `ENDPOINTS` (same key and map type).
#[map]
static STEP_ENDPOINTS: HashMap<u32, u64> = HashMap::with_max_entries(4_096, 0);

/// `step_counters`' stand-in for the agent's `DP_COUNTERS`.
#[map]
static STEP_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(32, 0);

mod programs {
    use super::*;

    /// One step of the agent's established path alone, on top of `floor`:
    /// the `ENDPOINTS` lookup (a hash map keyed by the ifindex).
    #[classifier]
    pub fn step_endpoint(ctx: TcContext) -> i32 {
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        let ifindex = unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex };
        // SAFETY: only presence is checked.
        match unsafe { STEP_ENDPOINTS.get(&ifindex) } {
            Some(_) => TC_ACT_OK,
            None => TC_ACT_SHOT,
        }
    }

    /// The clock the agent's conntrack ages entries in.
    #[classifier]
    pub fn step_clock(_ctx: TcContext) -> i32 {
        // SAFETY: helper without arguments.
        if unsafe { bpf_ktime_get_coarse_ns() } == 0 {
            TC_ACT_SHOT
        } else {
            TC_ACT_OK
        }
    }

    /// The three per-CPU counter bumps of an established packet (packets,
    /// conntrack hits, allowed).
    #[classifier]
    pub fn step_counters(_ctx: TcContext) -> i32 {
        for index in [0, 5, 9] {
            if let Some(c) = STEP_COUNTERS.get_ptr_mut(index) {
                // SAFETY: per-CPU slot, no concurrent writer on this CPU.
                unsafe { *c += 1 };
            }
        }
        TC_ACT_OK
    }

    #[classifier]
    pub fn floor(_ctx: TcContext) -> i32 {
        TC_ACT_OK
    }

    #[classifier]
    pub fn linear_scan(ctx: TcContext) -> i32 {
        let Some(key) = parse(&ctx) else {
            return TC_ACT_OK;
        };
        // SAFETY: the key is a plain value; the map is only read here.
        if unsafe { SCAN_CONNTRACK.get(&key) }.is_some() {
            return TC_ACT_OK;
        }
        scan_from(&ctx, key, 0)
    }

    #[classifier]
    pub fn linear_scan_chunk(ctx: TcContext) -> i32 {
        match SCAN_STATE.get(0) {
            Some(state) => scan_from(&ctx, state.key, state.next),
            None => TC_ACT_SHOT,
        }
    }
}

/// Judges `key` from rule `first` on: a chunk here, the rest by tail call.
#[inline(always)]
fn scan_from(ctx: &TcContext, key: ScanCtKey, first: u32) -> i32 {
    let len = SCAN_LEN.get(0).copied().unwrap_or(0);
    match first_match(&key, first, len) {
        Some(true) => TC_ACT_OK,
        Some(false) => TC_ACT_SHOT,
        None => {
            let Some(state) = SCAN_STATE.get_ptr_mut(0) else {
                return TC_ACT_SHOT;
            };
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe {
                *state = ScanState {
                    key,
                    next: first + CHUNK,
                    _pad: 0,
                }
            };
            // SAFETY: SCAN_JUMP holds classifiers only. Returns on failure.
            unsafe { SCAN_JUMP.tail_call(ctx, 0) };
            TC_ACT_SHOT
        }
    }
}

/// The action of the first of rules `first..first + CHUNK` (below `len`)
/// that matches `key`; None when none does and rules remain after them;
/// Some(false) (deny) when no rule is left.
#[inline(always)]
fn first_match(key: &ScanCtKey, first: u32, len: u32) -> Option<bool> {
    for j in 0..CHUNK {
        let i = first + j;
        if i >= len || i >= MAX_SCAN_RULES {
            return Some(false);
        }
        let Some(rule) = SCAN_RULES.get(i) else {
            return Some(false);
        };
        if (rule.protocol == 0 || rule.protocol == key.protocol)
            && key.dport >= rule.port_first
            && key.dport <= rule.port_last
            && key.src[0] & rule.mask[0] == rule.addr[0]
            && key.src[1] & rule.mask[1] == rule.addr[1]
        {
            return Some(rule.allow != 0);
        }
    }
    None
}

#[inline(always)]
fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Option<*const T> {
    if ctx.data() + offset + size_of::<T>() > ctx.data_end() {
        return None;
    }
    Some((ctx.data() + offset) as *const T)
}

/// The flow's conntrack key, addresses as IPv6 (IPv4 mapped); None for
/// what the bench never sends.
#[inline(always)]
fn parse(ctx: &TcContext) -> Option<ScanCtKey> {
    // SAFETY (every dereference below): bounds checked by ptr_at.
    let ethertype = u16::from_be_bytes(unsafe { *ptr_at::<[u8; 2]>(ctx, 12)? });
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    let (protocol, l4) = match ethertype {
        ETH_P_IP => {
            let h = unsafe { &*ptr_at::<[u8; 20]>(ctx, ETH_HLEN)? };
            src[10] = 0xff;
            src[11] = 0xff;
            dst[10] = 0xff;
            dst[11] = 0xff;
            src[12..].copy_from_slice(&h[12..16]);
            dst[12..].copy_from_slice(&h[16..20]);
            let ihl = usize::from(h[0] & 0x0f) * 4;
            (h[9], ETH_HLEN + ihl)
        }
        ETH_P_IPV6 => {
            let h = unsafe { &*ptr_at::<[u8; 40]>(ctx, ETH_HLEN)? };
            src.copy_from_slice(&h[8..24]);
            dst.copy_from_slice(&h[24..40]);
            (h[6], ETH_HLEN + 40)
        }
        _ => return None,
    };
    if protocol != IPPROTO_TCP && protocol != IPPROTO_UDP {
        return None;
    }
    let ports = unsafe { *ptr_at::<[u8; 4]>(ctx, l4)? };
    Some(ScanCtKey {
        src: halves(&src),
        dst: halves(&dst),
        sport: u16::from_be_bytes([ports[0], ports[1]]),
        dport: u16::from_be_bytes([ports[2], ports[3]]),
        protocol,
        _pad: [0; 3],
    })
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> [u64; 2] {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    [u64::from_ne_bytes(hi), u64::from_ne_bytes(lo)]
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

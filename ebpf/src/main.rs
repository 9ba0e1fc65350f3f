//! TC programs attached to the host side of each endpoint's interface.
//!
//! `hooks`: the dataplane programs `from_endpoint` / `to_endpoint`; `policy`:
//! their decision; per packet it runs `established` (the fast path of flows whose
//! conntrack entry holds the verdict), else `parse`, `conntrack`, the lookups
//! in `tables` (maps in `maps`) and reports through `events`. `service`: the
//! `post_nat` program and the deferral of flows to Service frontends.
#![no_std]
#![no_main]

mod conntrack;
mod established;
mod events;
mod flow;
mod hooks;
mod maps;
mod parse;
mod policy;
mod service;
mod tables;

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

/// CLOCK_MONOTONIC_COARSE in ns: the clock conntrack and fragment entries age
/// in (tick resolution, far cheaper than `bpf_ktime_get_ns` in a VM; events
/// carry the precise time).
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

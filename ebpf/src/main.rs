//! TC programs attached to the host side of each endpoint's interface.
//!
//! `policy`: the dataplane programs `from_endpoint` / `to_endpoint` (maps in
//! `maps`, parsing in `parse`).
//!
//! First slice (`slice_drop`, kept for `agent debug-drop`): parse the packet, look its (protocol, destination port) up in
//! `SLICE_DROP`, drop and report on the `EVENTS` ring buffer when it is there.
#![no_std]
#![no_main]

mod maps;
mod parse;
mod policy;
mod service;

use agent_common::{counter, DropEvent, PortKey};
use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TcContext,
    EbpfContext,
};

#[map]
static SLICE_DROP: HashMap<PortKey, u8> = HashMap::with_max_entries(1024, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *c += 1 };
    }
}

#[classifier]
pub fn slice_drop(ctx: TcContext) -> i32 {
    count(counter::PACKETS);
    match classify(&ctx) {
        Ok(action) => action,
        Err(()) => {
            count(counter::MALFORMED);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn classify(ctx: &TcContext) -> Result<i32, ()> {
    let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
    let mut event = DropEvent {
        src: [0; 16],
        dst: [0; 16],
        src_port: 0,
        dst_port: 0,
        protocol: 0,
        ip_version: 0,
        _pad: [0; 2],
        // SAFETY: the context pointer is the kernel's __sk_buff for this run.
        ifindex: unsafe { (*(ctx.as_ptr() as *const __sk_buff)).ifindex },
    };
    let l4_offset = match ethertype {
        ETH_P_IP => {
            let vihl = ctx.load::<u8>(ETH_HLEN).map_err(|_| ())?;
            let ihl = usize::from(vihl & 0x0f) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(());
            }
            // A non-first fragment carries no L4 header: not this slice's business.
            let frag = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| ())?);
            if frag & 0x1fff != 0 {
                return Ok(TC_ACT_OK);
            }
            event.protocol = ctx.load::<u8>(ETH_HLEN + 9).map_err(|_| ())?;
            event.ip_version = 4;
            event.src[10] = 0xff;
            event.src[11] = 0xff;
            event.dst[10] = 0xff;
            event.dst[11] = 0xff;
            let src = ctx.load::<[u8; 4]>(ETH_HLEN + 12).map_err(|_| ())?;
            let dst = ctx.load::<[u8; 4]>(ETH_HLEN + 16).map_err(|_| ())?;
            event.src[12..].copy_from_slice(&src);
            event.dst[12..].copy_from_slice(&dst);
            ETH_HLEN + ihl
        }
        ETH_P_IPV6 => {
            event.protocol = ctx.load::<u8>(ETH_HLEN + 6).map_err(|_| ())?;
            event.ip_version = 6;
            event.src = ctx.load::<[u8; 16]>(ETH_HLEN + 8).map_err(|_| ())?;
            event.dst = ctx.load::<[u8; 16]>(ETH_HLEN + 24).map_err(|_| ())?;
            ETH_HLEN + 40
        }
        _ => return Ok(TC_ACT_OK),
    };
    if !matches!(event.protocol, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return Ok(TC_ACT_OK);
    }
    event.src_port = u16::from_be(ctx.load::<u16>(l4_offset).map_err(|_| ())?);
    event.dst_port = u16::from_be(ctx.load::<u16>(l4_offset + 2).map_err(|_| ())?);
    let key = PortKey {
        protocol: event.protocol,
        _pad: 0,
        port: event.dst_port,
    };
    // SAFETY: the value is a plain u8 copied out immediately.
    if unsafe { SLICE_DROP.get(&key) }.is_none() {
        return Ok(TC_ACT_OK);
    }
    count(counter::DROPPED);
    if EVENTS.output(&event, 0).is_err() {
        count(counter::RINGBUF_FULL);
    }
    Ok(TC_ACT_SHOT)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

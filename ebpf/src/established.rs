//! The established fast path: a packet of a flow whose conntrack entry holds
//! this side's verdict in the current epoch gets that verdict after reading
//! only what the conntrack key needs, before the full parser. Everything else
//! takes the full path in `policy` from parsing on, which decides as it always
//! did: this path answers only where the full path would give the same answer
//! from the same entry, with the same counters and the same entry update.
//!
//! What it reads: Ethernet, an IPv4 header (options only move the L4 header)
//! or an IPv6 header whose next header is the L4 header, and the ports (and
//! TCP flags) of TCP, UDP, SCTP or UDP-Lite. Left to the full path, and why:
//! - fragments (IPv4 more-fragments or an offset; in IPv6 the fragment header
//!   is an extension header): first fragments record their ports in
//!   `FRAGMENTS` for their later fragments, which take them from there;
//! - IPv6 extension headers: followed by `parse` (at most 8, else malformed);
//! - ICMP and ICMPv6: echoes are keyed by identifier, errors may be RELATED to
//!   a flow, neighbour discovery and MLD pass before policy;
//! - other protocols: keyed without ports, rare;
//! - IPv6 addresses in IPv4-mapped form: malformed for `parse` (and their key
//!   would be an IPv4 flow's);
//! - headers shorter than `parse` requires (20 bytes of TCP, 4 of the other
//!   port protocols; an IPv4 IHL under 5): malformed for `parse`.
//!
//! For a packet it reads whole, `parse` gives the same protocol, addresses and
//! ports, tracked, no fragment, no ICMP quote, not ND, so `policy::handle`
//! would go straight to `police` with this key. There the checks of a live
//! entry are, in order: idle (a miss: `conntrack::live_entry`), the side at
//! this hook (`CtSide::at_hook` of the entry's orientation), the side's verdict
//! in the current epoch (`conntrack::recorded_verdict`: none when judged in an
//! older epoch or not judged yet, then the full path judges it); on a recorded
//! verdict `conntrack::touch` and that verdict. The same calls are made here.
use agent_common::{ip_proto, AddrWords, CtKey, CtKeyWords, CtSide};
use aya_ebpf::programs::TcContext;

use crate::coarse_now;
use crate::conntrack;
use crate::parse::{be16, ptr_at, ETH_HLEN, ETH_P_IP, ETH_P_IPV6};
use crate::tables;

/// Bytes 8..16 of an IPv4-mapped address (`0, 0, 0xff, 0xff` and the IPv4
/// address) as a word, the IPv4 address left out.
const V4_MAPPED: u64 = 0xffff_0000;

/// What the fast path found.
pub enum Lean {
    /// The verdict this side recorded (true: allow); the entry is touched.
    Known(bool),
    /// Read whole, and conntrack has no live entry for it: a new flow, and
    /// the full path need not look it up again (it would miss too).
    Missed,
    /// The full path decides (not read here, or an entry to judge again).
    Full,
}

/// The conntrack lookup of a packet of the kinds this path reads, at a hook of
/// policy direction `hook_dir`.
#[inline(always)]
pub fn lookup(ctx: &TcContext, hook_dir: u8) -> Lean {
    let Some(p) = read(ctx) else {
        return Lean::Full;
    };
    let now = coarse_now();
    // SAFETY: 40 initialised bytes, 8-aligned, read as a CtKey (repr(C), integers
    // and byte arrays only, 40 bytes: `CtKeyWords`), for the lookup only.
    let key = unsafe { &*p.key.as_ptr().cast::<CtKey>() };
    let Some(ct) = conntrack::live_entry(key, p.protocol, now) else {
        return Lean::Missed;
    };
    let forward = ct.is_forward(p.src_is_lo);
    let side = CtSide::at_hook(hook_dir, forward);
    match conntrack::recorded_verdict(ct, &side, tables::active().epoch) {
        Some(allow) => {
            conntrack::touch(ct, p.protocol, p.tcp_flags, forward, now);
            Lean::Known(allow)
        }
        None => Lean::Full,
    }
}

/// A packet's conntrack key and what following its flow needs.
struct Keyed {
    key: CtKeyWords,
    /// The packet's source is the key's lower side.
    src_is_lo: bool,
    protocol: u8,
    /// 0 unless TCP.
    tcp_flags: u8,
}

/// The key of a whole TCP, UDP, SCTP or UDP-Lite packet over IPv4 or over IPv6
/// without extension headers; None for everything else (see the module).
#[inline(always)]
fn read(ctx: &TcContext) -> Option<Keyed> {
    let (src, dst, protocol, l4) = match be16(ctx, 12).ok()? {
        ETH_P_IP => {
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*ptr_at::<[u8; 20]>(ctx, ETH_HLEN).ok()? };
            let ihl = usize::from(h[0] & 0x0f) * 4;
            // Fragments: more-fragments set or a non-zero offset.
            let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
            if h[0] >> 4 != 4 || ihl < 20 || fragment {
                return None;
            }
            let mapped = |a: [u8; 4]| [0, V4_MAPPED | u64::from(u32::from_le_bytes(a)) << 32];
            let src = mapped([h[12], h[13], h[14], h[15]]);
            let dst = mapped([h[16], h[17], h[18], h[19]]);
            (src, dst, h[9], ETH_HLEN + ihl)
        }
        ETH_P_IPV6 => {
            // SAFETY: bounds checked by ptr_at.
            let h = unsafe { &*ptr_at::<[u8; 40]>(ctx, ETH_HLEN).ok()? };
            let word = |i: usize| {
                let mut w = [0; 8];
                w.copy_from_slice(&h[i..i + 8]);
                u64::from_le_bytes(w)
            };
            let src = [word(8), word(16)];
            let dst = [word(24), word(32)];
            // `::ffff:a.b.c.d`: the first 10 bytes zero, then 0xffff.
            let is_v4_mapped = |a: &AddrWords| a[0] == 0 && a[1] as u32 == V4_MAPPED as u32;
            if h[0] >> 4 != 6 || is_v4_mapped(&src) || is_v4_mapped(&dst) {
                return None;
            }
            // An extension header's number is none of the protocols below.
            (src, dst, h[6], ETH_HLEN + 40)
        }
        _ => return None,
    };
    let (ports, tcp_flags) = match protocol {
        ip_proto::TCP => {
            // SAFETY: bounds checked by ptr_at (the header `parse` requires).
            let t = unsafe { &*ptr_at::<[u8; 20]>(ctx, l4).ok()? };
            ([t[0], t[1], t[2], t[3]], t[13])
        }
        ip_proto::UDP | ip_proto::SCTP | ip_proto::UDPLITE => {
            // SAFETY: bounds checked by ptr_at.
            (unsafe { *ptr_at::<[u8; 4]>(ctx, l4).ok()? }, 0)
        }
        _ => return None,
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let (key, src_is_lo) = CtKey::words_of_packet(&src, sport, &dst, dport, protocol);
    Some(Keyed {
        key,
        src_is_lo,
        protocol,
        tcp_flags,
    })
}

//! Packet parsing with direct packet access (bounds-checked against `data_end`).
use core::mem::size_of;

use agent_common::{ct_timeout, ip_proto, FragKey, FragValue};
use aya_ebpf::programs::TcContext;

use crate::coarse_now;
use crate::maps::FRAGMENTS;

pub(crate) const ETH_HLEN: usize = 14;
pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;

/// At most this many IPv6 extension headers are skipped; more is malformed.
const MAX_IPV6_EXT: usize = 8;

/// Beyond any header offset the parser accepts (at most ~16.5 KiB: 8 IPv6
/// extension headers of at most 2 KiB), and low enough that offsets grown
/// from it (a quoted packet's own headers) stay under the verifier's packet
/// offset limit (0xffff).
const MAX_HEADER_OFFSET: usize = 0x7fff;

/// What the policy path needs from a packet.
pub struct Parsed {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Conntrack ports (for ICMP echo: the identifier, both sides).
    pub ct_sport: u16,
    pub ct_dport: u16,
    /// Port used for the table lookup (destination port; ICMP type << 8 | code).
    pub judge_port: u16,
    pub protocol: u8,
    pub ip_version: u8,
    pub tcp_flags: u8,
    /// Non-first fragment whose first fragment was not seen: judged with port 0,
    /// not tracked.
    pub fragment: bool,
    /// Non-first fragment carrying its first fragment's protocol and ports (from
    /// `FRAGMENTS`): judged and tracked like the first fragment.
    pub fragment_tracked: bool,
    /// Tracked in conntrack (not: fragments, ICMP other than echo).
    pub track: bool,
    /// ICMPv6 that Calico lets through before policy, so that no policy can cut a
    /// pod off its link: MLD query/report/done (130-132), router solicitation
    /// (133), neighbour solicitation/advertisement (135, 136).
    pub nd_or_mld: bool,
    /// ICMP/ICMPv6 error: offset of the packet it quotes (see [`quoted`]), else 0.
    pub quote_offset: usize,
}

impl Parsed {
    /// Before parsing: nothing known, tracked.
    const EMPTY: Parsed = Parsed {
        src: [0; 16],
        dst: [0; 16],
        ct_sport: 0,
        ct_dport: 0,
        judge_port: 0,
        protocol: 0,
        ip_version: 0,
        tcp_flags: 0,
        fragment: false,
        fragment_tracked: false,
        track: true,
        nd_or_mld: false,
        quote_offset: 0,
    };
}

/// The packet an ICMP error quotes (its IP header and first 8 bytes of L4), in
/// the direction it was sent: the error travels the other way, back to `src`.
/// Ports as conntrack keys them (ICMP echo: the identifier twice).
#[derive(Clone, Copy)]
pub struct Quoted {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    pub protocol: u8,
}

pub enum ParseError {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): not policed.
    NotIp,
    /// Truncated or inconsistent headers: dropped and counted.
    Malformed,
}

#[inline(always)]
pub(crate) fn ptr_at<T>(ctx: &TcContext, offset: usize) -> Result<*const T, ParseError> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return Err(ParseError::Malformed);
    }
    Ok((start + offset) as *const T)
}

#[inline(always)]
pub(crate) fn be16(ctx: &TcContext, offset: usize) -> Result<u16, ParseError> {
    let p = ptr_at::<[u8; 2]>(ctx, offset)?;
    // SAFETY: bounds checked by ptr_at.
    Ok(u16::from_be_bytes(unsafe { *p }))
}

#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Parsed, ParseError> {
    let ethertype = match be16(ctx, 12) {
        Ok(t) => t,
        // A frame shorter than an Ethernet header is not IP either.
        Err(_) => return Err(ParseError::Malformed),
    };
    let mut p = Parsed::EMPTY;
    let (l4, frag) = match ethertype {
        ETH_P_IP => ipv4(ctx, &mut p)?,
        ETH_P_IPV6 => ipv6(ctx, &mut p)?,
        _ => return Err(ParseError::NotIp),
    };
    if frag.kind == Frag::Later {
        later_fragment(&mut p, &frag);
        return Ok(p);
    }
    transport(ctx, &mut p, l4)?;
    if frag.kind == Frag::First {
        remember_first_fragment(&p, &frag);
    }
    Ok(p)
}

/// A datagram's fragment identity: which fragment, the identification and the
/// protocol the fragments carry.
struct FragId {
    kind: Frag,
    id: u32,
    protocol: u8,
}

/// The IPv4 header: addresses and protocol into `p`; the offset of the L4
/// header and the fragment identity.
#[inline(always)]
fn ipv4(ctx: &TcContext, p: &mut Parsed) -> Result<(usize, FragId), ParseError> {
    let h = ptr_at::<[u8; 20]>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*h };
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return Err(ParseError::Malformed);
    }
    let flags_offset = u16::from_be_bytes([h[6], h[7]]);
    let kind = if flags_offset & 0x1fff != 0 {
        Frag::Later
    } else if flags_offset & 0x2000 != 0 {
        Frag::First
    } else {
        Frag::None
    };
    let frag = FragId {
        kind,
        id: u32::from(u16::from_be_bytes([h[4], h[5]])),
        protocol: h[9],
    };
    p.protocol = h[9];
    p.ip_version = 4;
    (p.src, p.dst) = ipv4_addresses(h);
    let l4 = ETH_HLEN + ihl;
    // The options must be there too.
    ptr_at::<u8>(ctx, l4 - 1)?;
    Ok((l4, frag))
}

/// The IPv6 header and extension headers, like [`ipv4`].
#[inline(always)]
fn ipv6(ctx: &TcContext, p: &mut Parsed) -> Result<(usize, FragId), ParseError> {
    let h = ptr_at::<[u8; 40]>(ctx, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let h = unsafe { &*h };
    if h[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    p.ip_version = 6;
    p.src.copy_from_slice(&h[8..24]);
    p.dst.copy_from_slice(&h[24..40]);
    // IPv4 addresses are keyed IPv4-mapped: an IPv6 header carrying one would
    // be judged as that IPv4 peer. They never appear on the wire (Linux drops
    // them as sources too): malformed.
    if is_v4_mapped(&p.src) || is_v4_mapped(&p.dst) {
        return Err(ParseError::Malformed);
    }
    let chain = ipv6_chain(ctx, h[6], ETH_HLEN + 40)?;
    p.protocol = chain.next;
    let frag = FragId {
        kind: chain.frag,
        id: chain.frag_id,
        protocol: chain.frag_next,
    };
    Ok((chain.off, frag))
}

/// `::ffff:a.b.c.d`, the form IPv4 addresses take in the lookup keys.
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..10] == [0; 10] && a[10] == 0xff && a[11] == 0xff
}

/// The source and destination of an IPv4 header, IPv4-mapped.
#[inline(always)]
fn ipv4_addresses(h: &[u8; 20]) -> ([u8; 16], [u8; 16]) {
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src[10] = 0xff;
    src[11] = 0xff;
    dst[10] = 0xff;
    dst[11] = 0xff;
    src[12..].copy_from_slice(&h[12..16]);
    dst[12..].copy_from_slice(&h[16..20]);
    (src, dst)
}

/// A non-first fragment has no L4 header: it takes its first fragment's
/// protocol and ports, if that was seen (it normally comes first; out of
/// order, or lost, the fragment is judged with port 0 and not tracked).
#[inline(always)]
fn later_fragment(p: &mut Parsed, frag: &FragId) {
    let key = frag_key(p, frag);
    // SAFETY: plain values copied out at once.
    let first = unsafe { FRAGMENTS.get(&key) }.copied();
    match first {
        Some(v) if coarse_now().saturating_sub(v.seen_ns) <= ct_timeout::FRAGMENT => {
            p.fragment_tracked = true;
            p.protocol = v.protocol;
            p.ct_sport = v.ct_sport;
            p.ct_dport = v.ct_dport;
            p.judge_port = v.judge_port;
            p.track = v.track != 0;
        }
        _ => {
            p.fragment = true;
            p.track = false;
        }
    }
}

/// A first fragment's protocol and ports, for its later fragments: recorded
/// whatever the verdict, so that they get the same one.
#[inline(always)]
fn remember_first_fragment(p: &Parsed, frag: &FragId) {
    let value = FragValue {
        ct_sport: p.ct_sport,
        ct_dport: p.ct_dport,
        judge_port: p.judge_port,
        protocol: p.protocol,
        track: u8::from(p.track),
        seen_ns: coarse_now(),
    };
    // Full LRU: the kernel evicts; a failure only costs later fragments their ports.
    let _ = FRAGMENTS.insert(&frag_key(p, frag), &value, 0);
}

/// The L4 header at `l4`: ports, TCP flags, ICMP type and code.
#[inline(always)]
fn transport(ctx: &TcContext, p: &mut Parsed, l4: usize) -> Result<(), ParseError> {
    match p.protocol {
        ip_proto::TCP => {
            let t = ptr_at::<[u8; 20]>(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { &*t };
            p.ct_sport = u16::from_be_bytes([t[0], t[1]]);
            p.ct_dport = u16::from_be_bytes([t[2], t[3]]);
            p.tcp_flags = t[13];
            p.judge_port = p.ct_dport;
        }
        ip_proto::UDP | ip_proto::SCTP | ip_proto::UDPLITE => {
            let t = ptr_at::<[u8; 4]>(ctx, l4)?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { &*t };
            p.ct_sport = u16::from_be_bytes([t[0], t[1]]);
            p.ct_dport = u16::from_be_bytes([t[2], t[3]]);
            p.judge_port = p.ct_dport;
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => icmp(ctx, p, l4)?,
        _ => {}
    }
    Ok(())
}

/// An ICMP or ICMPv6 header: echoes are tracked by identifier, errors quote a
/// packet, other messages are judged per packet by type and code.
#[inline(always)]
fn icmp(ctx: &TcContext, p: &mut Parsed, l4: usize) -> Result<(), ParseError> {
    let t = ptr_at::<[u8; 8]>(ctx, l4)?;
    // SAFETY: bounds checked by ptr_at.
    let t = unsafe { &*t };
    p.judge_port = u16::from_be_bytes([t[0], t[1]]);
    if is_echo(p.protocol, t[0]) {
        let id = u16::from_be_bytes([t[4], t[5]]);
        p.ct_sport = id;
        p.ct_dport = id;
    } else {
        p.track = false;
    }
    // Router advertisements (134), redirects (137) and MLDv2 reports
    // (143) are left to policy, as in Calico.
    p.nd_or_mld =
        p.protocol == ip_proto::ICMPV6 && matches!(t[0], 130 | 131 | 132 | 133 | 135 | 136);
    // The error types Linux conntrack (and Calico) relate to a flow.
    let error = if p.protocol == ip_proto::ICMP {
        matches!(t[0], 3 | 4 | 5 | 11 | 12)
    } else {
        t[0] < 128
    };
    if error {
        p.quote_offset = l4 + 8;
    }
    Ok(())
}

/// Echo request or reply (ICMP 8/0, ICMPv6 128/129).
#[inline(always)]
fn is_echo(protocol: u8, icmp_type: u8) -> bool {
    if protocol == ip_proto::ICMP {
        icmp_type == 8 || icmp_type == 0
    } else {
        icmp_type == 128 || icmp_type == 129
    }
}

/// Whether a packet is a fragment, and which.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Frag {
    /// A whole datagram (also an IPv6 "atomic" fragment: offset 0, no more).
    None,
    /// Offset 0, more fragments follow: carries the L4 header.
    First,
    /// Non-zero offset: no L4 header.
    Later,
}

#[inline(always)]
fn frag_key(p: &Parsed, frag: &FragId) -> FragKey {
    FragKey {
        src: p.src,
        dst: p.dst,
        id: frag.id,
        protocol: frag.protocol,
        _pad: [0; 3],
    }
}

/// Where an IPv6 extension header chain ends.
struct Ipv6Chain {
    /// The upper-layer protocol (after a later fragment: the fragment header's next header).
    next: u8,
    /// Offset of the upper-layer header.
    off: usize,
    /// The fragment header's kind, identification and next header.
    frag: Frag,
    frag_id: u32,
    frag_next: u8,
}

/// Follows the extension headers from `next` at `off` (at most `MAX_IPV6_EXT`).
#[inline(always)]
fn ipv6_chain(ctx: &TcContext, mut next: u8, mut off: usize) -> Result<Ipv6Chain, ParseError> {
    let mut chain = Ipv6Chain {
        next,
        off,
        frag: Frag::None,
        frag_id: 0,
        frag_next: 0,
    };
    for _ in 0..MAX_IPV6_EXT {
        match next {
            // Hop-by-hop, routing, destination options: (len + 1) * 8 bytes.
            0 | 43 | 60 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let e = unsafe { *e };
                next = e[0];
                off += (usize::from(e[1]) + 1) * 8;
            }
            // Fragment: 8 bytes; a non-zero offset means no L4 header follows.
            44 => {
                let e = ptr_at::<[u8; 8]>(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let e = unsafe { *e };
                next = e[0];
                off += 8;
                let offset_more = u16::from_be_bytes([e[2], e[3]]);
                chain.frag_id = u32::from_be_bytes([e[4], e[5], e[6], e[7]]);
                chain.frag_next = next;
                if offset_more & 0xfff8 != 0 {
                    chain.frag = Frag::Later;
                    chain.next = next;
                    chain.off = off;
                    return Ok(chain);
                }
                if offset_more & 1 != 0 {
                    chain.frag = Frag::First;
                }
            }
            // Authentication header: (len + 2) * 4 bytes.
            51 => {
                let e = ptr_at::<[u8; 2]>(ctx, off)?;
                // SAFETY: bounds checked by ptr_at.
                let e = unsafe { *e };
                next = e[0];
                off += (usize::from(e[1]) + 2) * 4;
            }
            _ => {
                chain.next = next;
                chain.off = off;
                return Ok(chain);
            }
        }
    }
    Err(ParseError::Malformed)
}

/// The packet quoted by the ICMP error `p` (parsed apart from the error itself,
/// so that its stack is free again for the policy path); `None` when it is
/// truncated, inconsistent, a later fragment (no ports), itself an ICMP message
/// other than an echo (no flow), or not sent by the error's destination (Linux
/// conntrack's check too): the error is then judged on its own.
#[inline(always)]
pub fn quoted(ctx: &TcContext, p: &Parsed) -> Option<Quoted> {
    let off = p.quote_offset;
    // The bound tells the verifier what the parser's own checks did (the
    // parse is verified apart: `policy::parse_packet`).
    if off == 0 || off > MAX_HEADER_OFFSET {
        return None;
    }
    let ip_version = p.ip_version;
    let mut q = Quoted {
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
        protocol: 0,
    };
    let l4 = if ip_version == 4 {
        let h = ptr_at::<[u8; 20]>(ctx, off).ok()?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { &*h };
        let ihl = usize::from(h[0] & 0x0f) * 4;
        if h[0] >> 4 != 4 || ihl < 20 || u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
            return None;
        }
        q.protocol = h[9];
        (q.src, q.dst) = ipv4_addresses(h);
        off + ihl
    } else {
        let h = ptr_at::<[u8; 40]>(ctx, off).ok()?;
        // SAFETY: bounds checked by ptr_at.
        let h = unsafe { &*h };
        if h[0] >> 4 != 6 {
            return None;
        }
        q.src.copy_from_slice(&h[8..24]);
        q.dst.copy_from_slice(&h[24..40]);
        if is_v4_mapped(&q.src) || is_v4_mapped(&q.dst) {
            return None;
        }
        let chain = ipv6_chain(ctx, h[6], off + 40).ok()?;
        if chain.frag == Frag::Later {
            return None;
        }
        q.protocol = chain.next;
        chain.off
    };
    match q.protocol {
        ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP | ip_proto::UDPLITE => {
            let t = ptr_at::<[u8; 4]>(ctx, l4).ok()?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { &*t };
            q.sport = u16::from_be_bytes([t[0], t[1]]);
            q.dport = u16::from_be_bytes([t[2], t[3]]);
        }
        ip_proto::ICMP | ip_proto::ICMPV6 => {
            let t = ptr_at::<[u8; 8]>(ctx, l4).ok()?;
            // SAFETY: bounds checked by ptr_at.
            let t = unsafe { &*t };
            if !is_echo(q.protocol, t[0]) {
                return None;
            }
            let id = u16::from_be_bytes([t[4], t[5]]);
            q.sport = id;
            q.dport = id;
        }
        // Tracked without ports, like the packets themselves.
        _ => {}
    }
    (q.src == p.dst).then_some(q)
}

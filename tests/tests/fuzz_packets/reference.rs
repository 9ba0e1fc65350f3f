//! The packet rules the kernel programs promise (docs/fuzzing.md, "Packets"),
//! written out in plain Rust: which frames are not IP (passed, not policed),
//! which are malformed (dropped), and what a well-formed one is judged on.
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

/// The upper-layer header must be reached within this many steps along the
/// IPv6 extension headers (the kernel's `MAX_IPV6_EXT`): at most 7 of them.
pub const MAX_IPV6_EXT: usize = 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Ethertype other than IPv4/IPv6: passes unjudged.
    NotIp,
    /// Truncated or inconsistent headers: dropped, counted MALFORMED.
    Malformed(&'static str),
    Judged(Judged),
}

/// What a well-formed packet is judged on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Source port (ICMP echo: identifier; else 0).
    pub sport: u16,
    /// Destination port, or ICMP type << 8 | code.
    pub port: u16,
    /// ICMPv6 neighbour discovery / MLD, passed before policy.
    pub nd_or_mld: bool,
    pub frag: Frag,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frag {
    None,
    /// Carries the L4 header; remembered for its later fragments under this key.
    First(FragKey),
    /// No L4 header: takes its first fragment's protocol and ports if seen.
    Later(FragKey),
}

/// (source, destination as 16 bytes, IPv4-mapped; identification; protocol).
pub type FragKey = ([u8; 16], [u8; 16], u32, u8);

/// First fragments seen, as the kernel's FRAGMENTS map holds them.
#[derive(Default)]
pub struct Fragments(HashMap<FragKey, (u8, u16, u16, Instant)>);

/// A first fragment older than this is no longer trusted to be remembered by the
/// kernel (its timeout is 30 s): later fragments of it are not compared.
pub const FRAGMENT_TRUST: std::time::Duration = std::time::Duration::from_secs(20);

impl Fragments {
    /// Resolves a later fragment (its first fragment's protocol and ports, or
    /// port 0), and remembers a first fragment. `None`: too old to be sure.
    pub fn resolve(&mut self, j: &mut Judged) -> Option<()> {
        match j.frag {
            Frag::First(key) => {
                self.0
                    .insert(key, (j.protocol, j.sport, j.port, Instant::now()));
            }
            Frag::Later(key) => match self.0.get(&key) {
                Some(&(_, _, _, at)) if at.elapsed() > FRAGMENT_TRUST => return None,
                Some(&(protocol, sport, port, _)) => {
                    (j.protocol, j.sport, j.port) = (protocol, sport, port);
                }
                None => (j.sport, j.port) = (0, 0),
            },
            Frag::None => {}
        }
        Some(())
    }
}

fn need(frame: &[u8], off: usize, len: usize, what: &'static str) -> Result<(), Decoded> {
    if frame.len() < off + len {
        return Err(Decoded::Malformed(what));
    }
    Ok(())
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn mapped(a: &IpAddr) -> [u8; 16] {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// What the programs make of `frame`.
pub fn decode(frame: &[u8]) -> Decoded {
    match decode_inner(frame) {
        Ok(d) | Err(d) => d,
    }
}

fn decode_inner(frame: &[u8]) -> Result<Decoded, Decoded> {
    need(frame, 12, 2, "Ethernet header")?;
    let (src, dst, protocol, l4, frag) = match be16(frame, 12) {
        0x0800 => ipv4(frame)?,
        0x86dd => ipv6(frame)?,
        _ => return Ok(Decoded::NotIp),
    };
    let mut j = Judged {
        src,
        dst,
        protocol,
        sport: 0,
        port: 0,
        nd_or_mld: false,
        frag: Frag::None,
    };
    let key = |id, proto| (mapped(&src), mapped(&dst), id, proto);
    match frag {
        IpFrag::Later { id, proto } => {
            j.frag = Frag::Later(key(id, proto));
            return Ok(Decoded::Judged(j));
        }
        IpFrag::First { id, proto } => j.frag = Frag::First(key(id, proto)),
        IpFrag::None => {}
    }
    match protocol {
        6 => {
            need(frame, l4, 20, "TCP header")?;
            (j.sport, j.port) = (be16(frame, l4), be16(frame, l4 + 2));
        }
        17 | 132 | 136 => {
            need(frame, l4, 4, "UDP/SCTP/UDP-Lite ports")?;
            (j.sport, j.port) = (be16(frame, l4), be16(frame, l4 + 2));
        }
        1 | 58 => {
            need(frame, l4, 8, "ICMP header")?;
            j.port = be16(frame, l4);
            let ty = frame[l4];
            let echo = if protocol == 1 {
                ty == 8 || ty == 0
            } else {
                ty == 128 || ty == 129
            };
            if echo {
                j.sport = be16(frame, l4 + 4);
            }
            j.nd_or_mld = protocol == 58 && matches!(ty, 130..=133 | 135 | 136);
        }
        _ => {}
    }
    Ok(Decoded::Judged(j))
}

enum IpFrag {
    None,
    First { id: u32, proto: u8 },
    Later { id: u32, proto: u8 },
}

type Ip = (IpAddr, IpAddr, u8, usize, IpFrag);

fn ipv4(f: &[u8]) -> Result<Ip, Decoded> {
    need(f, 14, 20, "IPv4 header")?;
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if f[14] >> 4 != 4 {
        return Err(Decoded::Malformed("IPv4 version"));
    }
    if ihl < 20 {
        return Err(Decoded::Malformed("IHL < 5"));
    }
    need(f, 14, ihl, "IPv4 options")?;
    let addr = |o: usize| IpAddr::V4(Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]));
    let (id, flags, proto) = (u32::from(be16(f, 18)), be16(f, 20), f[23]);
    let frag = if flags & 0x1fff != 0 {
        IpFrag::Later { id, proto }
    } else if flags & 0x2000 != 0 {
        IpFrag::First { id, proto }
    } else {
        IpFrag::None
    };
    Ok((addr(26), addr(30), proto, 14 + ihl, frag))
}

fn ipv6(f: &[u8]) -> Result<Ip, Decoded> {
    need(f, 14, 40, "IPv6 header")?;
    if f[14] >> 4 != 6 {
        return Err(Decoded::Malformed("IPv6 version"));
    }
    let addr = |o: usize| {
        let mut b = [0u8; 16];
        b.copy_from_slice(&f[o..o + 16]);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    let (src, dst) = (addr(22), addr(38));
    let v4_mapped = |a: &IpAddr| matches!(a, IpAddr::V6(a) if a.to_ipv4_mapped().is_some());
    if v4_mapped(&src) || v4_mapped(&dst) {
        return Err(Decoded::Malformed("IPv4-mapped address in an IPv6 header"));
    }
    let (mut next, mut off) = (f[20], 54);
    // The last fragment header's identification and next header, and whether
    // any said "more fragments" (a first fragment).
    let (mut first, mut id, mut proto) = (false, 0, 0);
    for _ in 0..MAX_IPV6_EXT {
        match next {
            0 | 43 | 60 => {
                need(f, off, 2, "IPv6 extension header")?;
                next = f[off];
                off += (usize::from(f[off + 1]) + 1) * 8;
            }
            44 => {
                need(f, off, 8, "IPv6 fragment header")?;
                next = f[off];
                let offset_more = be16(f, off + 2);
                id = u32::from_be_bytes([f[off + 4], f[off + 5], f[off + 6], f[off + 7]]);
                proto = next;
                off += 8;
                if offset_more & 0xfff8 != 0 {
                    let later = IpFrag::Later { id, proto: next };
                    return Ok((src, dst, next, off, later));
                }
                first |= offset_more & 1 != 0;
            }
            51 => {
                need(f, off, 2, "IPv6 authentication header")?;
                next = f[off];
                off += (usize::from(f[off + 1]) + 2) * 4;
            }
            _ => {
                let frag = if first {
                    IpFrag::First { id, proto }
                } else {
                    IpFrag::None
                };
                return Ok((src, dst, next, off, frag));
            }
        }
    }
    Err(Decoded::Malformed("more than 7 IPv6 extension headers"))
}

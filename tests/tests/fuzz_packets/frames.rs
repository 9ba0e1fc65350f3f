//! Frame construction for the packet fuzzer: a probe's packet with IPv4
//! options, IPv6 extension chains, fragment headers and VLAN tags, built byte
//! by byte so that every field can then be broken.
use std::net::IpAddr;

/// IPv6 extension header kinds the chains are made of: hop-by-hop, routing,
/// destination options ((len + 1) * 8 bytes) and authentication ((len + 2) * 4).
pub const EXT_KINDS: [u8; 4] = [0, 43, 60, 51];
pub const FRAGMENT_HEADER: u8 = 44;

/// Which fragment a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragShape {
    /// A whole datagram (IPv4 with DF).
    Whole,
    /// IPv6 fragment header with offset 0 and no more fragments; IPv4: neither.
    Atomic,
    /// Offset 0, more fragments.
    First,
    /// Offset `n` (8-byte units, non-zero), more fragments or not.
    Later(u16, bool),
}

/// How a frame is laid out around its L4 bytes.
#[derive(Clone, Debug)]
pub struct Layout {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// IPv4: option words (0-10; IHL = 5 + words).
    pub v4_option_words: u8,
    /// IPv6: extension headers (kind, length field) before the fragment header.
    pub ext: Vec<(u8, u8)>,
    pub frag: FragShape,
    pub frag_id: u32,
    /// 802.1Q / 802.1ad tags in front of the IP ethertype (outermost first).
    pub vlan: Vec<u16>,
}

/// The L4 bytes of a packet: TCP 20 (data offset 5), UDP/UDP-Lite 8, SCTP 12,
/// ICMP 8 plus `body`, anything else 8 bytes of payload.
pub fn l4(protocol: u8, sport: u16, dport_or_icmp: u16, icmp_id: u16, body: &[u8]) -> Vec<u8> {
    let ports = [sport.to_be_bytes(), dport_or_icmp.to_be_bytes()].concat();
    match protocol {
        6 => {
            let mut h = ports;
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
            h
        }
        17 | 136 => [ports, vec![0, 8, 0, 0]].concat(),
        132 => [ports, vec![0; 8]].concat(),
        1 | 58 => {
            let mut h = dport_or_icmp.to_be_bytes().to_vec();
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&icmp_id.to_be_bytes());
            h.extend_from_slice(&[0, 1]);
            h.extend_from_slice(body);
            h
        }
        _ => vec![0xab; 8],
    }
}

/// The Ethernet frame of `layout` carrying `payload` (the L4 bytes, or a
/// later fragment's data).
pub fn frame(layout: &Layout, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
    for (i, &tpid) in layout.vlan.iter().enumerate() {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    match (layout.src, layout.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let words = usize::from(layout.v4_option_words.min(10));
            let total = (20 + 4 * words + payload.len()) as u16;
            f.extend_from_slice(&[0x45 + words as u8, 0]);
            f.extend_from_slice(&total.to_be_bytes());
            f.extend_from_slice(&(layout.frag_id as u16).to_be_bytes());
            let frag: u16 = match layout.frag {
                FragShape::Whole => 0x4000,
                FragShape::Atomic => 0,
                FragShape::First => 0x2000,
                FragShape::Later(off, more) => (off & 0x1fff) | if more { 0x2000 } else { 0 },
            };
            f.extend_from_slice(&frag.to_be_bytes());
            f.extend_from_slice(&[64, layout.protocol, 0, 0]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            // NOPs, the last word ending with End of Options.
            for w in 0..words {
                f.extend_from_slice(if w + 1 == words {
                    &[1, 1, 1, 0]
                } else {
                    &[1; 4]
                });
            }
        }
        (s, d) => {
            let (s, d) = (v6(s), v6(d));
            f.extend_from_slice(&[0x86, 0xdd]);
            let chain = ipv6_chain(layout);
            let first_next = chain.first().map_or(layout.protocol, |h| h.0);
            let len = chain.iter().map(|h| h.1.len()).sum::<usize>() + payload.len();
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&(len as u16).to_be_bytes());
            f.extend_from_slice(&[first_next, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
            for (_, h) in chain {
                f.extend_from_slice(&h);
            }
        }
    }
    f.extend_from_slice(payload);
    f
}

fn v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => a.to_ipv6_mapped(),
    }
}

/// The extension headers of `layout` as (kind, bytes), each naming the next.
fn ipv6_chain(layout: &Layout) -> Vec<(u8, Vec<u8>)> {
    let mut kinds: Vec<(u8, u8)> = layout.ext.clone();
    if layout.frag != FragShape::Whole {
        kinds.push((FRAGMENT_HEADER, 0));
    }
    let mut out = Vec::new();
    for (i, &(kind, len)) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).map_or(layout.protocol, |k| k.0);
        let mut h = vec![next, len];
        match kind {
            FRAGMENT_HEADER => {
                let (off, more) = match layout.frag {
                    FragShape::Later(off, more) => (off, more),
                    FragShape::First => (0, true),
                    _ => (0, false),
                };
                h[1] = 0;
                h.extend_from_slice(&((off & 0x1fff) << 3 | u16::from(more)).to_be_bytes());
                h.extend_from_slice(&layout.frag_id.to_be_bytes());
            }
            51 => h.resize((usize::from(len) + 2) * 4, 0),
            _ => {
                // PadN filling the header.
                let size = (usize::from(len) + 1) * 8;
                h.extend_from_slice(&[1, (size - 4) as u8]);
                h.resize(size, 0);
            }
        }
        out.push((kind, h));
    }
    out
}

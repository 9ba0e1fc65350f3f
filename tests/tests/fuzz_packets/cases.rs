//! The fuzzer's inputs: a probe (from the differential test's generator) laid
//! out with options, extension chains and fragments, then broken on purpose.
use std::net::Ipv4Addr;

use agent::compile::testgen::Probe;
use agent::model::ir::Direction;
use proptest::prelude::*;
use proptest::sample::Index;

use super::frames::{self, FragShape, Layout, EXT_KINDS};

#[derive(Clone, Debug)]
pub enum Fragments {
    Whole,
    Atomic,
    First,
    /// A first fragment, then a later one at (offset, more fragments).
    FirstThenLater(u16, bool),
    /// A later fragment whose first fragment was never seen.
    LaterAlone(u16, bool),
}

#[derive(Clone, Debug)]
pub enum Mutation {
    None,
    /// Every prefix of the frame, from 14 bytes on.
    TruncateEvery,
    Truncate(Index),
    /// XOR bytes of the headers (the first 140 bytes).
    Xor(Vec<(Index, u8)>),
    /// IPv4: the IHL nibble; IPv6: the next-header byte of the fixed header.
    Ihl(u8),
    Version(u8),
    TcpDataOffset(u8),
    /// IPv6: this many extension headers of one kind in front of the chain
    /// (8 or more: past what the parser follows; kind 0 names itself: a loop).
    LongChain(usize, u8),
    /// IPv6: the source (true) or destination replaced by an IPv4-mapped
    /// address (`::ffff:a.b.c.d`) of one of the model's IPv4 addresses.
    V4Mapped(Index, bool),
    /// 802.1Q (0x8100) / 802.1ad (0x88a8) tags before the IP ethertype.
    Vlan(Vec<u16>),
    /// The packet replaced by an ICMP error (type, code) quoting it the other
    /// way round, the quote cut at `cut` and XORed at `xor`.
    IcmpError {
        icmp_type: u8,
        code: u8,
        cut: Option<Index>,
        xor: Option<(Index, u8)>,
    },
    /// Random bytes after the IP ethertype.
    Random(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub probe_seed: u64,
    pub v4_option_words: u8,
    pub ext: Vec<(u8, u8)>,
    pub fragments: Fragments,
    pub mutation: Mutation,
}

fn fragments() -> impl Strategy<Value = Fragments> {
    prop_oneof![
        6 => Just(Fragments::Whole),
        1 => Just(Fragments::Atomic),
        1 => Just(Fragments::First),
        2 => (1u16..8192, any::<bool>()).prop_map(|(o, m)| Fragments::FirstThenLater(o, m)),
        1 => (1u16..8192, any::<bool>()).prop_map(|(o, m)| Fragments::LaterAlone(o, m)),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => Just(Mutation::None),
        1 => Just(Mutation::TruncateEvery),
        3 => any::<Index>().prop_map(Mutation::Truncate),
        3 => prop::collection::vec((any::<Index>(), 1u8..=255), 1..4).prop_map(Mutation::Xor),
        1 => (0u8..16).prop_map(Mutation::Ihl),
        1 => (0u8..16).prop_map(Mutation::Version),
        1 => (0u8..16).prop_map(Mutation::TcpDataOffset),
        2 => (1usize..12, prop::sample::select(vec![0u8, 43, 60, 51]))
            .prop_map(|(n, k)| Mutation::LongChain(n, k)),
        1 => (any::<Index>(), any::<bool>()).prop_map(|(i, src)| Mutation::V4Mapped(i, src)),
        1 => prop::collection::vec(prop::sample::select(vec![0x8100u16, 0x88a8]), 1..3)
            .prop_map(Mutation::Vlan),
        3 => (
            prop::sample::select(vec![0u8, 1, 2, 3, 4, 5, 11, 12, 128, 135]),
            0u8..5,
            prop::option::of(any::<Index>()),
            prop::option::of((any::<Index>(), 1u8..=255)),
        )
            .prop_map(|(icmp_type, code, cut, xor)| Mutation::IcmpError {
                icmp_type,
                code,
                cut,
                xor
            }),
        1 => prop::collection::vec(any::<u8>(), 0..120).prop_map(Mutation::Random),
    ]
}

pub fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        prop_oneof![3 => Just(0u8), 1 => 1u8..=10],
        prop::collection::vec((prop::sample::select(EXT_KINDS.to_vec()), 0u8..3), 0..4),
        fragments(),
        mutation(),
    )
        .prop_map(
            |(probe_seed, v4_option_words, ext, fragments, mutation)| Case {
                probe_seed,
                v4_option_words,
                ext,
                fragments,
                mutation,
            },
        )
}

/// The frames of `case` for `probe`, in the order they are sent.
pub fn frames(case: &Case, probe: &Probe, frag_id: u32, v4: &[Ipv4Addr]) -> Vec<Vec<u8>> {
    let (src, dst) = match probe.direction {
        Direction::Egress => (probe.local, probe.peer),
        Direction::Ingress => (probe.peer, probe.local),
    };
    let mut layout = Layout {
        src,
        dst,
        protocol: probe.protocol,
        v4_option_words: case.v4_option_words,
        ext: case.ext.clone(),
        frag: FragShape::Whole,
        frag_id,
        vlan: Vec::new(),
    };
    let mut l4 = frames::l4(
        probe.protocol,
        probe.src_port,
        probe.port,
        probe.src_port,
        &[],
    );
    if let Mutation::IcmpError {
        icmp_type,
        code,
        cut,
        xor,
    } = &case.mutation
    {
        // The quoted packet went the other way; the error comes back.
        let quoted_layout = Layout {
            src: dst,
            dst: src,
            ..layout.clone()
        };
        let mut quoted = frames::frame(&quoted_layout, &l4).split_off(14);
        if let Some(cut) = cut {
            quoted.truncate(cut.index(quoted.len() + 1));
        }
        if let Some((at, x)) = xor {
            let i = at.index(quoted.len().max(1));
            if let Some(b) = quoted.get_mut(i) {
                *b ^= x;
            }
        }
        layout.protocol = if src.is_ipv4() { 1 } else { 58 };
        let port = u16::from(*icmp_type) << 8 | u16::from(*code);
        l4 = frames::l4(layout.protocol, 0, port, 0, &quoted);
    }
    let later = |off: u16, more: bool| FragShape::Later(off, more);
    let shapes: Vec<FragShape> = match case.fragments {
        Fragments::Whole => vec![FragShape::Whole],
        Fragments::Atomic => vec![FragShape::Atomic],
        Fragments::First => vec![FragShape::First],
        Fragments::FirstThenLater(o, m) => vec![FragShape::First, later(o, m)],
        Fragments::LaterAlone(o, m) => vec![later(o, m)],
    };
    let mut out = Vec::new();
    for shape in shapes {
        layout.frag = shape;
        let payload = match shape {
            FragShape::Later(..) => vec![0xee; 16],
            _ => l4.clone(),
        };
        let mut f = frames::frame(&layout, &payload);
        mutate(&mut f, &layout, &case.mutation, v4);
        out.push(f);
    }
    if matches!(case.mutation, Mutation::TruncateEvery) {
        let last = out.pop().expect("one frame at least");
        out.extend((14..last.len()).map(|n| last[..n].to_vec()));
        out.push(last);
    }
    out
}

/// Applies the byte-level part of `m` to `f` (laid out as `layout`).
fn mutate(f: &mut Vec<u8>, layout: &Layout, m: &Mutation, v4: &[Ipv4Addr]) {
    let v6 = layout.src.is_ipv6();
    match m {
        Mutation::Truncate(at) => f.truncate(14 + at.index(f.len() - 13)),
        Mutation::Xor(bytes) => {
            let headers = f.len().min(140);
            for (at, x) in bytes {
                f[at.index(headers)] ^= x;
            }
        }
        Mutation::Ihl(n) if v6 => f[20] = n.wrapping_mul(17),
        Mutation::Ihl(n) => f[14] = f[14] & 0xf0 | n,
        Mutation::Version(n) => f[14] = f[14] & 0x0f | n << 4,
        Mutation::TcpDataOffset(n) if layout.protocol == 6 => {
            if let Some(b) = l4_offset(layout).and_then(|o| f.get_mut(o + 12)) {
                *b = *b & 0x0f | n << 4;
            }
        }
        Mutation::LongChain(n, kind) if v6 => {
            // n headers of `kind` in front: each names the next, the last names
            // what the fixed header named.
            let mut chain = Vec::new();
            for i in 0..*n {
                let next = if i + 1 == *n { f[20] } else { *kind };
                let mut h = vec![next, 0, 1, 4, 0, 0, 0, 0];
                if *kind == 51 {
                    h[1] = 0; // (0 + 2) * 4 = 8 bytes as well
                }
                chain.extend_from_slice(&h);
            }
            f[20] = *kind;
            f.splice(54..54, chain);
        }
        Mutation::V4Mapped(i, src) if v6 && !v4.is_empty() => {
            let mapped = v4[i.index(v4.len())].to_ipv6_mapped().octets();
            let at = if *src { 22 } else { 38 };
            f[at..at + 16].copy_from_slice(&mapped);
        }
        Mutation::Vlan(tags) => {
            let mut t = Vec::new();
            for (i, tpid) in tags.iter().enumerate() {
                t.extend_from_slice(&tpid.to_be_bytes());
                t.extend_from_slice(&(100 + i as u16).to_be_bytes());
            }
            f.splice(12..12, t);
        }
        Mutation::Random(bytes) => {
            f.truncate(14);
            f.extend_from_slice(bytes);
        }
        _ => {}
    }
}

/// Where the L4 header of a whole or first fragment laid out as `layout` starts.
fn l4_offset(layout: &Layout) -> Option<usize> {
    if matches!(layout.frag, FragShape::Later(..)) {
        return None;
    }
    if layout.src.is_ipv4() {
        return Some(14 + 20 + 4 * usize::from(layout.v4_option_words.min(10)));
    }
    let ext: usize = layout
        .ext
        .iter()
        .map(|&(k, len)| {
            let len = usize::from(len);
            if k == 51 {
                (len + 2) * 4
            } else {
                (len + 1) * 8
            }
        })
        .sum();
    let frag = if layout.frag == FragShape::Whole {
        0
    } else {
        8
    };
    Some(14 + 40 + ext + frag)
}

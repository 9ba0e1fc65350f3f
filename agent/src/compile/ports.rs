//! The port space of one endpoint and direction: the protocols its rules tell
//! apart, and per protocol the destination-port (ICMP: type/code) intervals
//! between every breakpoint, one dimension per (protocol, source-port class).
use std::collections::BTreeSet;

use super::source_ports::SourcePorts;
use crate::eval::Packet;
use crate::model::ir::{EntityRule, FailsafePort, Model, PortMatch, Protocol, Rule};

// The compiler works in the kernel's protocol numbers (`u8`, what its tables
// key on); the model's [`Protocol`]s become numbers where they are read here.

/// The protocols a port match stands for when the rule names none.
const PORT_PROTOCOLS: [u8; 4] = [
    Protocol::TCP.number(),
    Protocol::UDP.number(),
    Protocol::SCTP.number(),
    Protocol::UDPLITE.number(),
];
/// The protocols an ICMP match stands for when the rule names none.
const ICMP_PROTOCOLS: [u8; 2] = [Protocol::ICMP.number(), Protocol::ICMPV6.number()];

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Ports,
    Icmp,
    Other,
}

pub(super) fn kind(p: u8) -> Kind {
    let p = Protocol::from_number(p);
    if p.carries_ports() {
        Kind::Ports
    } else if p.is_icmp() {
        Kind::Icmp
    } else {
        Kind::Other
    }
}

/// The packet the evaluator is asked about for protocol `p`, source port `sport`
/// (port protocols only) and kernel port value `v`.
pub(super) fn packet(p: u8, sport: u16, v: u16) -> Packet {
    let protocol = Protocol::from_number(p);
    match kind(p) {
        Kind::Ports => Packet::with_ports(protocol, sport, v),
        Kind::Icmp => Packet::icmp(protocol, (v >> 8) as u8, (v & 0xff) as u8),
        Kind::Other => Packet::without_ports(protocol),
    }
}

/// Whether rule `r` can match protocol `p` at all.
pub(super) fn may_match(r: &Rule, p: u8) -> bool {
    let p = Protocol::from_number(p);
    r.protocol.is_none_or(|q| q == p) && r.not_protocol != Some(p)
}

/// The protocols `rules` and `failsafes` tell apart.
pub(super) fn protocols(rules: &[(String, &Rule)], failsafes: &[FailsafePort]) -> BTreeSet<u8> {
    let mut protocols: BTreeSet<u8> = BTreeSet::new();
    let has_ports = |e: &EntityRule| {
        !e.ports.is_empty() || !e.not_ports.is_empty() || e.service_ports.is_some()
    };
    for (_, r) in rules {
        protocols.extend(r.protocol.map(Protocol::number));
        protocols.extend(r.not_protocol.map(Protocol::number));
        if r.protocol.is_none() && (has_ports(&r.destination) || has_ports(&r.source)) {
            protocols.extend(PORT_PROTOCOLS);
        }
        if r.protocol.is_none() && (r.icmp.is_some() || r.not_icmp.is_some()) {
            protocols.extend(ICMP_PROTOCOLS);
        }
    }
    protocols.extend(failsafes.iter().map(|f| f.protocol.number()));
    protocols
}

/// A protocol none of `protocols` is: the representative of "other protocols"
/// (GRE unless named; never an IPv6 extension header).
pub(super) fn other_protocol(protocols: &BTreeSet<u8>) -> u8 {
    std::iter::once(47)
        .chain(2..=255u8)
        .find(|p| {
            kind(*p) == Kind::Other && !protocols.contains(p) && ![0, 43, 44, 51, 60].contains(p)
        })
        .unwrap_or(255)
}

/// The inclusive port ranges `matches` can match for protocol `p`: a named
/// port stands for every endpoint's port of that name and protocol (whose
/// port it is depends on the peer, so all of them are breakpoints).
pub(super) fn port_ranges<'r>(
    model: &Model,
    matches: impl Iterator<Item = &'r PortMatch>,
    p: u8,
) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for m in matches {
        match m {
            PortMatch::Range(range) => out.push((u32::from(range.first), u32::from(range.last))),
            PortMatch::Named(name) => out.extend(
                model
                    .endpoints
                    .iter()
                    .flat_map(|e| &e.named_ports)
                    .filter(|np| &np.name == name && np.protocol.number() == p)
                    .map(|np| (u32::from(np.port), u32::from(np.port))),
            ),
        }
    }
    out
}

/// The breakpoints (interval starts) `r` puts into protocol `p`'s kernel
/// port values; empty if `r` cannot match `p`.
fn cuts(model: &Model, r: &Rule, p: u8) -> BTreeSet<u32> {
    let mut cuts = BTreeSet::new();
    if !may_match(r, p) {
        return cuts;
    }
    let mut cut = |a: u32, b: u32| {
        cuts.insert(a);
        cuts.insert(b);
    };
    match kind(p) {
        Kind::Ports => {
            let matches = r.destination.ports.iter().chain(&r.destination.not_ports);
            for (first, last) in port_ranges(model, matches, p) {
                cut(first, last + 1);
            }
            // A destination `services` match: each backend port of `p`.
            let backend_ports = r.destination.service_ports.iter().flatten();
            for &(_, port) in backend_ports
                .flat_map(|s| &s.ports)
                .filter(|(q, _)| q.number() == p)
            {
                cut(u32::from(port), u32::from(port) + 1);
            }
        }
        Kind::Icmp => {
            for m in r.icmp.iter().chain(&r.not_icmp) {
                let t = u32::from(m.icmp_type) << 8;
                cut(t, t + 256);
                if let Some(c) = m.code {
                    cut(t | u32::from(c), (t | u32::from(c)) + 1);
                }
            }
        }
        Kind::Other => {}
    }
    cuts
}

/// One (protocol, source-port class) dimension: intervals `[start, next start)`
/// of the kernel port value.
pub(super) struct Dim {
    pub(super) protocol: u8,
    /// The source-port class (0 where the protocol has one class) and a port of it.
    pub(super) source_port_class: u8,
    pub(super) source_port: u16,
    /// Source-port classes of this protocol (the dims of one protocol are adjacent).
    pub(super) classes: usize,
    /// Index of `protocol` in the direction's protocol list (for per-rule cuts).
    pub(super) protocol_index: usize,
    pub(super) starts: Vec<u16>,
    /// Starts every peer group evaluates at (0 and the failsafes' breakpoints).
    pub(super) always: BTreeSet<u16>,
}

impl Dim {
    /// The last port of interval `i`.
    pub(super) fn end(&self, i: usize) -> u16 {
        self.starts.get(i + 1).map(|s| s - 1).unwrap_or(u16::MAX)
    }
}

/// The dimensions of one endpoint and direction, and per protocol and rule the
/// breakpoints that rule puts there (so that a peer group evaluates only at the
/// breakpoints of the rules that can match it).
pub(super) struct Layout {
    pub(super) dims: Vec<Dim>,
    /// `[protocol index][rule index]`.
    pub(super) rule_cuts: Vec<Vec<BTreeSet<u32>>>,
}

/// Destination-port breakpoints per protocol: those of each rule, of the
/// failsafes, and 0; one dimension per (protocol, source-port class of
/// `sources`, in the order of `protocols`).
pub(super) fn layout(
    model: &Model,
    rules: &[(String, &Rule)],
    failsafes: &[FailsafePort],
    protocols: &BTreeSet<u8>,
    sources: &[SourcePorts],
) -> Layout {
    let mut rule_cuts: Vec<Vec<BTreeSet<u32>>> = Vec::new();
    let mut dims: Vec<Dim> = Vec::new();
    for ((protocol_index, &p), sources) in protocols.iter().enumerate().zip(sources) {
        let mut always: BTreeSet<u32> = BTreeSet::from([0]);
        if kind(p) == Kind::Ports {
            for f in failsafes.iter().filter(|f| f.protocol.number() == p) {
                always.extend([u32::from(f.port), u32::from(f.port) + 1]);
            }
        }
        let cuts: Vec<BTreeSet<u32>> = rules.iter().map(|(_, r)| cuts(model, r, p)).collect();
        let mut all = always.clone();
        for c in &cuts {
            all.extend(c);
        }
        let ports = |s: &BTreeSet<u32>| -> Vec<u16> {
            s.iter()
                .filter(|&&c| c <= 0xffff)
                .map(|&c| c as u16)
                .collect()
        };
        let starts = ports(&all);
        let always: BTreeSet<u16> = ports(&always).into_iter().collect();
        rule_cuts.push(cuts);
        let classes = sources.representatives.len();
        for (c, &source_port) in sources.representatives.iter().enumerate() {
            dims.push(Dim {
                protocol: p,
                protocol_index,
                source_port_class: c as u8,
                source_port,
                classes,
                starts: starts.clone(),
                always: always.clone(),
            });
        }
    }
    Layout { dims, rule_cuts }
}

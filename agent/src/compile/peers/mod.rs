//! Peer classes: the collected prefixes, their regions' signatures, and the
//! classes and `PEERS_*` prefixes they give (see the module docs of
//! [`super`], "Peer classes").
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::HashMap;
use ipnet::IpNet;

use super::incremental::key_of;
use super::{CompileError, Limits};
use crate::eval::Evaluator;
use crate::model::ir::{Failsafes, Model, Rule};
use crate::selector::Selector;

mod collect;
mod owners;

use collect::{collect, Collected};
use owners::{Owners, Scratch};

/// A collected prefix as an interval of one family's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Prefix {
    v6: bool,
    start: u128,
    len: u8,
    end: u128,
}

impl Prefix {
    fn of(net: &IpNet) -> Prefix {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => Prefix {
                v6: false,
                start: u128::from(u32::from(n.network())),
                end: u128::from(u32::from(n.broadcast())),
                len: n.prefix_len(),
            },
            IpNet::V6(n) => Prefix {
                v6: true,
                start: u128::from(n.network()),
                end: u128::from(n.broadcast()),
                len: n.prefix_len(),
            },
        }
    }

    fn addr(v6: bool, value: u128) -> IpAddr {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(value))
        } else {
            IpAddr::V4(Ipv4Addr::from(value as u32))
        }
    }

    fn net(&self) -> IpNet {
        IpNet::new(Self::addr(self.v6, self.start), self.len).expect("valid prefix length")
    }

    /// Whether `other` lies inside this prefix (or is it).
    fn contains(&self, other: &Prefix) -> bool {
        self.v6 == other.v6 && self.start <= other.start && other.end <= self.end
    }
}

/// IPv6 nets the kernel cannot tell from IPv4 (it stores IPv4 as `::ffff:a.b.c.d`).
fn in_v4_mapped_space(net: &IpNet) -> bool {
    match net.trunc() {
        IpNet::V6(n) => {
            n.prefix_len() >= 96 && n.network().segments()[..6] == [0, 0, 0, 0, 0, 0xffff]
        }
        IpNet::V4(_) => false,
    }
}

/// Signature atoms: nets and selectors that rules (and failsafes) test peers with.
#[derive(Default)]
pub(super) struct Atoms {
    nets: Vec<IpNet>,
    net_index: HashMap<IpNet, usize>,
    selectors: Vec<Selector>,
    selector_index: HashMap<Selector, usize>,
}

impl Atoms {
    fn net(&mut self, n: &IpNet) -> usize {
        let n = n.trunc();
        let next = self.nets.len();
        *self.net_index.entry(n).or_insert_with(|| {
            self.nets.push(n);
            next
        })
    }
    fn selector(&mut self, s: &Selector) -> usize {
        if let Some(&k) = self.selector_index.get(s) {
            return k;
        }
        let next = self.selectors.len();
        self.selector_index.insert(s.clone(), next);
        self.selectors.push(s.clone());
        next
    }
    /// A hash of the atom of bit `b` that does not depend on the bit's index
    /// (which follows the collection order of the model): a key (see
    /// `incremental`), as it goes into endpoints' keys.
    pub(super) fn atom_hash(&self, b: usize) -> u128 {
        match b.checked_sub(self.nets.len()) {
            None => key_of((0u8, self.nets[b])),
            Some(s) => key_of((1u8, &self.selectors[s])),
        }
    }
    /// Bit index of an atom in a signature.
    pub(super) fn net_bit(&self, n: &IpNet) -> usize {
        self.net_index[&n.trunc()]
    }
    pub(super) fn selector_bit(&self, s: &Selector) -> usize {
        self.nets.len() + self.selector_index[s]
    }
    fn bits(&self) -> usize {
        self.nets.len() + self.selectors.len()
    }
    /// Words of a signature's bits.
    pub(super) fn words(&self) -> usize {
        self.bits().div_ceil(64)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Signature {
    pub(super) v6: bool,
    bits: Vec<u64>,
    /// (name, protocol, port) of the endpoints owning the address, sorted.
    pub(super) named_ports: Vec<(String, u8, u16)>,
}

impl Signature {
    pub(super) fn bit(&self, i: usize) -> bool {
        self.bits[i / 64] >> (i % 64) & 1 == 1
    }

    /// The words of the bits, each and-ed with `mask`'s, without a copy.
    pub(super) fn masked_words<'a>(&'a self, mask: &'a [u64]) -> impl Iterator<Item = u64> + 'a {
        self.bits.iter().zip(mask).map(|(b, m)| b & m)
    }

    /// The words of the bits, each and-ed with `mask`'s.
    pub(super) fn masked(&self, mask: &[u64]) -> Vec<u64> {
        self.bits.iter().zip(mask).map(|(b, m)| b & m).collect()
    }
}

/// The indexes of the bits set in `words`.
pub(super) fn ones(words: &[u64]) -> impl Iterator<Item = usize> + '_ {
    words.iter().enumerate().flat_map(|(w, &word)| {
        let mut rest = word;
        std::iter::from_fn(move || {
            (rest != 0).then(|| {
                let b = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                w * 64 + b
            })
        })
    })
}

pub(super) struct Class {
    /// An address whose longest collected prefix has this class.
    pub(super) representative: IpAddr,
    pub(super) signature: Signature,
}

/// A class's signature in terms of its atoms themselves (hashed), not their
/// bit indexes: the same across compiles of models that differ elsewhere.
type CanonicalSignature = (bool, Vec<u128>, Vec<(String, u8, u16)>);

/// Peer-class ids from an earlier compile: a class whose signature is still
/// there keeps its id, so an edit elsewhere does not renumber every class (and
/// with them every endpoint's `GROUPS_*` entries). Any numbering is correct
/// (ids are only names within one copy of the tables); this one is stable.
/// The default numbers classes 1.. in order of first appearance.
#[derive(Clone, Debug, Default)]
pub struct ClassIds(HashMap<CanonicalSignature, u32>);

fn canonical(hashes: &[u128], sig: &Signature) -> CanonicalSignature {
    let mut set: Vec<u128> = ones(&sig.bits).map(|b| hashes[b]).collect();
    set.sort_unstable();
    (sig.v6, set, sig.named_ports.clone())
}

pub(super) struct PeerClasses {
    pub(super) atoms: Atoms,
    /// Index = class id - 1.
    pub(super) classes: Vec<Class>,
    pub(super) emitted: Vec<(IpNet, u32)>,
    pub(super) collected: usize,
}

impl PeerClasses {
    /// Classifies every collected prefix's region. Each prefix's signature is
    /// inherited from its enclosing prefixes (a stack, since prefixes come
    /// sorted) plus what the prefix itself adds, so the cost is linear in the
    /// prefixes (times nesting depth), not prefixes x nets: network sets hold up
    /// to hundreds of thousands of nets.
    pub(super) fn build(
        model: &Model,
        eval: &Evaluator<'_>,
        limits: &Limits,
        seed: &ClassIds,
    ) -> Result<Self, CompileError> {
        let Collected {
            atoms,
            prefixes,
            listed_by,
        } = collect(model, eval)?;
        let owners = Owners::new(model, eval.ip_index(), &atoms);
        let words = owners.words;
        let mut classes = ClassTable::default();
        let mut emitted = Vec::new();
        // Enclosing prefixes, and their inherited signature bits (`words`
        // words each, in one buffer: no allocation per prefix).
        let mut chain: Vec<Prefix> = Vec::new();
        let mut chain_bits: Vec<u64> = Vec::new();
        // Enclosing emitted prefixes: (prefix, class).
        let mut stack: Vec<(Prefix, u32)> = Vec::new();
        let mut scratch = Scratch::default();
        for (i, p) in prefixes.iter().enumerate() {
            while chain.last().is_some_and(|q| !q.contains(p)) {
                chain.pop();
                chain_bits.truncate(chain.len() * words);
            }
            let base = chain_bits.len();
            match base.checked_sub(words) {
                Some(enclosing) if !chain.is_empty() => {
                    chain_bits.extend_from_within(enclosing..base)
                }
                _ => chain_bits.resize(base + words, 0),
            }
            let bits = &mut chain_bits[base..];
            if let Some(&k) = atoms.net_index.get(&p.net()) {
                set_bit(bits, k);
            }
            for &s in &listed_by[i] {
                or_bits(bits, owners.set(s));
            }
            chain.push(*p);
            let Some(rep) = uncovered_address(&prefixes, i) else {
                continue; // every address of P has a longer collected prefix
            };
            let r = Prefix::addr(p.v6, rep);
            owners.signature(model, r, &chain_bits[base..], &mut scratch);
            let class = classes.class_of(r, p.v6, &scratch);
            while stack.last().is_some_and(|(q, _)| !q.contains(p)) {
                stack.pop();
            }
            if stack.last().is_some_and(|(_, c)| *c == class) {
                continue; // LPM lands on the enclosing prefix, same class
            }
            stack.push((*p, class));
            emitted.push((p.net(), class));
        }
        super::budget::check(
            || "*".into(),
            "peer prefixes (PEERS map)",
            emitted.len(),
            limits.peer_prefixes,
        )?;
        let mut this = PeerClasses {
            atoms,
            classes: classes.classes,
            emitted,
            collected: prefixes.len(),
        };
        if !seed.0.is_empty() {
            this.renumber(seed);
        }
        Ok(this)
    }

    fn atom_hashes(&self) -> Vec<u128> {
        (0..self.atoms.bits())
            .map(|b| self.atoms.atom_hash(b))
            .collect()
    }

    /// The signature bits `rules` (either side) and `failsafes` read, in the
    /// order they name them (independent of the model's other rules).
    pub(super) fn bits_read(&self, rules: &[&Rule], failsafes: Option<&Failsafes>) -> Vec<usize> {
        let mut seen = vec![0u64; self.atoms.words()];
        let mut out = Vec::new();
        let mut add = |b: usize| {
            if seen[b / 64] >> (b % 64) & 1 == 0 {
                set_bit(&mut seen, b);
                out.push(b);
            }
        };
        for r in rules {
            for side in [&r.source, &r.destination] {
                side.nets
                    .iter()
                    .chain(&side.not_nets)
                    .for_each(|n| add(self.atoms.net_bit(n)));
                side.selector
                    .iter()
                    .chain(&side.not_selector)
                    .for_each(|s| add(self.atoms.selector_bit(s)));
            }
        }
        let failsafe_nets = failsafes
            .into_iter()
            .flat_map(|f| f.inbound.iter().chain(&f.outbound))
            .filter_map(|f| f.net.as_ref());
        failsafe_nets.for_each(|n| add(self.atoms.net_bit(n)));
        out
    }

    /// The ids of these classes, to seed the next compile with.
    pub(super) fn ids(&self) -> ClassIds {
        let hashes = self.atom_hashes();
        ClassIds(
            self.classes
                .iter()
                .enumerate()
                .map(|(i, c)| (canonical(&hashes, &c.signature), i as u32 + 1))
                .collect(),
        )
    }

    /// Gives each class its id in `seed` where it has one (within 1..=classes,
    /// so ids stay dense) and not taken, the others the free ids in order.
    fn renumber(&mut self, seed: &ClassIds) {
        let n = self.classes.len();
        let hashes = self.atom_hashes();
        let mut id = vec![0u32; n];
        let mut taken = vec![false; n + 1];
        for (i, c) in self.classes.iter().enumerate() {
            let seeded = seed.0.get(&canonical(&hashes, &c.signature));
            if let Some(&s) = seeded.filter(|&&s| s as usize <= n && !taken[s as usize]) {
                id[i] = s;
                taken[s as usize] = true;
            }
        }
        let mut free = (1..=n as u32).filter(|&s| !taken[s as usize]);
        for slot in id.iter_mut().filter(|s| **s == 0) {
            *slot = free.next().expect("as many ids as classes");
        }
        let mut classes: Vec<Option<Class>> = (0..n).map(|_| None).collect();
        for (i, c) in std::mem::take(&mut self.classes).into_iter().enumerate() {
            classes[id[i] as usize - 1] = Some(c);
        }
        self.classes = classes
            .into_iter()
            .map(|c| c.expect("a bijection"))
            .collect();
        for (_, class) in &mut self.emitted {
            *class = id[*class as usize - 1];
        }
    }
}

pub(super) fn set_bit(bits: &mut [u64], b: usize) {
    bits[b / 64] |= 1 << (b % 64);
}

fn or_bits(bits: &mut [u64], other: &[u64]) {
    for (w, o) in bits.iter_mut().zip(other) {
        *w |= o;
    }
}

/// Classes by signature, numbered 1.. in order of first appearance.
#[derive(Default)]
struct ClassTable {
    /// Class ids by a hash of their signature (seeded at random: labels
    /// cannot be chosen to make every signature collide).
    by_hash: HashMap<u64, Vec<u32>>,
    state: foldhash::fast::RandomState,
    classes: Vec<Class>,
}

impl ClassTable {
    fn class_of(&mut self, representative: IpAddr, v6: bool, sig: &Scratch<'_>) -> u32 {
        let same = self.by_hash.entry(sig.hash(&self.state, v6)).or_default();
        if let Some(&c) = same
            .iter()
            .find(|&&c| sig.is(v6, &self.classes[c as usize - 1].signature))
        {
            return c;
        }
        let c = self.classes.len() as u32 + 1;
        same.push(c);
        self.classes.push(Class {
            representative,
            signature: Signature {
                v6,
                bits: sig.bits.clone(),
                named_ports: sig
                    .named_ports
                    .iter()
                    .map(|&(n, pr, po)| (n.to_owned(), pr, po))
                    .collect(),
            },
        });
        c
    }
}

/// An address of `prefixes[i]` inside no longer collected prefix (prefixes are
/// sorted by family, start, length, so the ones inside P follow it).
fn uncovered_address(prefixes: &[Prefix], i: usize) -> Option<u128> {
    let p = prefixes[i];
    let mut cur = p.start;
    let mut j = i + 1;
    while j < prefixes.len() {
        let c = prefixes[j];
        if c.v6 != p.v6 || c.start > p.end {
            break;
        }
        if c.start > cur {
            return Some(cur);
        }
        if c.end >= cur {
            cur = c.end.checked_add(1)?;
            if cur > p.end {
                return None;
            }
        }
        j += 1;
    }
    (cur <= p.end).then_some(cur)
}

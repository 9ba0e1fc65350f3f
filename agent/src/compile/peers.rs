//! Peer classes: the collected prefixes, their regions' signatures, and the
//! classes and `PEERS_*` prefixes they give (see the module docs of
//! [`super`], "Peer classes").
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use foldhash::{HashMap, HashMapExt};
use ipnet::IpNet;

use super::incremental::key_of;
use super::{CompileError, Limits};
use crate::eval::{Evaluator, IpIndex};
use crate::model::ir::{Failsafes, Labels, Model, PolicyId, Rule};
use crate::selector::Selector;

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

/// Who a rule belongs to, named only in an error.
#[derive(Clone, Copy)]
enum RuleOwner<'m> {
    Policy(&'m PolicyId),
    Profile(&'m str),
}

impl RuleOwner<'_> {
    fn name(self) -> String {
        match self {
            RuleOwner::Policy(id) => id.to_string(),
            RuleOwner::Profile(name) => format!("pro:{name}"),
        }
    }
}

/// The rules that can be consulted for some compiled endpoint (one with an
/// interface): those of policies (enforced or staged) selecting such an
/// endpoint, and of the profiles such endpoints use. Only their nets and
/// selectors need telling apart.
fn relevant_rules<'m>(
    model: &'m Model,
    eval: &Evaluator<'_>,
) -> impl Iterator<Item = (RuleOwner<'m>, &'m Rule)> {
    debug_assert!(
        std::ptr::eq(eval.model(), model),
        "the evaluator of this model"
    );
    let compiled = || model.endpoints.iter().filter(|e| e.interface.is_some());
    let with_interface =
        (0..model.endpoints.len()).filter(|&e| model.endpoints[e].interface.is_some());
    let selecting = eval.selecting_any(with_interface);
    let policies = model
        .policies
        .iter()
        .zip(selecting)
        .filter_map(|(p, selects)| selects.then_some(p))
        .flat_map(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .map(move |r| (RuleOwner::Policy(&p.id), r))
        });
    let profiles = model
        .profiles
        .iter()
        .filter(move |p| compiled().any(|e| e.profiles.contains(&p.name)))
        .flat_map(|p| {
            p.ingress
                .iter()
                .chain(&p.egress)
                .map(move |r| (RuleOwner::Profile(&p.name), r))
        });
    policies.chain(profiles)
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

/// What [`PeerClasses::build`] collects from the model.
struct Collected {
    atoms: Atoms,
    /// Sorted by family, start, length: a prefix's enclosing ones come before it.
    prefixes: Vec<Prefix>,
    /// Parallel to `prefixes`: the network sets (indexes) listing the prefix.
    listed_by: Vec<Vec<usize>>,
}

/// Collects the prefixes (endpoint addresses, network-set nets, the nets of
/// relevant rules and of failsafes, both roots) and the atoms.
fn collect(model: &Model, eval: &Evaluator<'_>) -> Result<Collected, CompileError> {
    let mut atoms = Atoms::default();
    let mut prefixes: BTreeMap<Prefix, Vec<usize>> = BTreeMap::new();
    let mapped = |what: String, net: &IpNet| CompileError::Unsupported {
        endpoint: "*".into(),
        policy: what,
        what: format!("IPv6 net {net} inside ::ffff:0:0/96 (where the kernel keeps IPv4)"),
    };
    for root in ["0.0.0.0/0", "::/0"] {
        prefixes.insert(Prefix::of(&root.parse().expect("root prefix")), Vec::new());
    }
    for e in &model.endpoints {
        for ip in &e.ips {
            let net = IpNet::from(*ip);
            if in_v4_mapped_space(&net) {
                return Err(mapped(format!("endpoint {}", e.key()), &net));
            }
            prefixes.entry(Prefix::of(&net)).or_default();
        }
    }
    for (k, s) in model.network_sets.iter().enumerate() {
        for n in &s.nets {
            if in_v4_mapped_space(n) {
                return Err(mapped(format!("network set {}", s.name), n));
            }
            let sets = prefixes.entry(Prefix::of(n)).or_default();
            if sets.last() != Some(&k) {
                sets.push(k);
            }
        }
    }
    for (owner, rule) in relevant_rules(model, eval) {
        for side in [&rule.source, &rule.destination] {
            for n in side.nets.iter().chain(&side.not_nets) {
                if in_v4_mapped_space(n) {
                    return Err(mapped(owner.name(), n));
                }
                prefixes.entry(Prefix::of(n)).or_default();
                atoms.net(n);
            }
            for s in side.selector.iter().chain(&side.not_selector) {
                atoms.selector(s);
            }
        }
    }
    for f in model
        .failsafes
        .inbound
        .iter()
        .chain(&model.failsafes.outbound)
    {
        if let Some(n) = &f.net {
            if in_v4_mapped_space(n) {
                return Err(mapped("failsafe".into(), n));
            }
            prefixes.entry(Prefix::of(n)).or_default();
            atoms.net(n);
        }
    }
    let (prefixes, listed_by) = prefixes.into_iter().unzip();
    Ok(Collected {
        atoms,
        prefixes,
        listed_by,
    })
}

/// From this many rule selectors on, [`Owners`] evaluates them once per
/// distinct label set rather than per endpoint.
const DEDUPLICATED_SELECTORS: usize = 16;

/// The selector bits endpoints and network sets give the addresses they own.
struct Owners<'a> {
    /// Words of a signature's bits.
    words: usize,
    /// Rows of `words` words: the selectors matching one label set.
    rows: Vec<u64>,
    /// Per endpoint, then per network set: its row.
    endpoint_row: Vec<usize>,
    set_row: Vec<usize>,
    /// The endpoints owning each address.
    ips: &'a IpIndex,
}

impl<'a> Owners<'a> {
    fn new(model: &Model, ips: &'a IpIndex, atoms: &Atoms) -> Self {
        let by_label_set = atoms.selectors.len() >= DEDUPLICATED_SELECTORS;
        Self::evaluated(model, ips, atoms, by_label_set)
    }

    /// With `by_label_set`, each selector is evaluated once per distinct
    /// label set (pods of one deployment share theirs); otherwise once per
    /// endpoint, since hashing a label set costs more than a few evaluations.
    fn evaluated<'m>(
        model: &'m Model,
        ips: &'a IpIndex,
        atoms: &Atoms,
        by_label_set: bool,
    ) -> Self {
        let words = atoms.bits().div_ceil(64);
        let mut rows = Vec::new();
        let mut evaluate = |labels: &Labels| -> usize {
            let at = rows.len();
            rows.resize(at + words, 0);
            for (k, s) in atoms.selectors.iter().enumerate() {
                if s.evaluate(labels) {
                    set_bit(&mut rows[at..], atoms.nets.len() + k);
                }
            }
            at
        };
        let mut row_of: HashMap<&'m Labels, usize> = HashMap::new();
        let mut row = |labels: &'m Labels| -> usize {
            if !by_label_set {
                return evaluate(labels);
            }
            *row_of.entry(labels).or_insert_with(|| evaluate(labels))
        };
        let endpoint_row = model.endpoints.iter().map(|e| row(&e.labels)).collect();
        let set_row = model.network_sets.iter().map(|s| row(&s.labels)).collect();
        Owners {
            words,
            rows,
            endpoint_row,
            set_row,
            ips,
        }
    }

    fn endpoint(&self, e: usize) -> &[u64] {
        &self.rows[self.endpoint_row[e]..][..self.words]
    }

    fn set(&self, s: usize) -> &[u64] {
        &self.rows[self.set_row[s]..][..self.words]
    }

    /// The signature (into `out`) of address `r` whose enclosing prefixes
    /// give it `inherited` (nets and network-set selectors); its owning
    /// endpoints add their selectors and named ports.
    fn signature<'m>(&self, model: &'m Model, r: IpAddr, inherited: &[u64], out: &mut Scratch<'m>) {
        out.bits.clear();
        out.bits.extend_from_slice(inherited);
        out.named_ports.clear();
        for &e in self.ips.owners(r) {
            or_bits(&mut out.bits, self.endpoint(e));
            let ports = model.endpoints[e].named_ports.iter();
            out.named_ports
                .extend(ports.map(|np| (np.name.as_str(), np.protocol.number(), np.port)));
        }
        out.named_ports.sort_unstable();
        out.named_ports.dedup();
    }
}

/// A signature under construction, borrowed from the model: made owned only
/// for a new class.
#[derive(Default)]
struct Scratch<'m> {
    bits: Vec<u64>,
    named_ports: Vec<(&'m str, u8, u16)>,
}

impl Scratch<'_> {
    fn hash(&self, state: &foldhash::fast::RandomState, v6: bool) -> u64 {
        use std::hash::BuildHasher;
        state.hash_one((v6, &self.bits, &self.named_ports))
    }

    fn is(&self, v6: bool, sig: &Signature) -> bool {
        sig.v6 == v6
            && sig.bits == self.bits
            && sig.named_ports.len() == self.named_ports.len()
            && sig
                .named_ports
                .iter()
                .zip(&self.named_ports)
                .all(|((n, pr, po), (m, qr, qo))| n == m && pr == qr && po == qo)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::testgen::scale_model;

    /// Selector bits evaluated once per label set are those evaluated per
    /// endpoint and network set, for every owner (pods share label sets in
    /// this model; one is relabelled so that sets differ too).
    #[test]
    fn selector_rows_by_label_set_equal_rows_per_owner() {
        let mut model = scale_model(60, 20, 3);
        std::sync::Arc::make_mut(&mut model.endpoints[7])
            .labels
            .insert("app".into(), "other".into());
        let eval = Evaluator::new(&model);
        let atoms = collect(&model, &eval).unwrap().atoms;
        assert!(atoms.selectors.len() > 2, "{}", atoms.selectors.len());
        let each = Owners::evaluated(&model, eval.ip_index(), &atoms, false);
        let shared = Owners::evaluated(&model, eval.ip_index(), &atoms, true);
        assert!(
            shared.rows.len() < each.rows.len(),
            "label sets were shared"
        );
        for e in 0..model.endpoints.len() {
            assert_eq!(shared.endpoint(e), each.endpoint(e), "endpoint {e}");
        }
        for s in 0..model.network_sets.len() {
            assert_eq!(shared.set(s), each.set(s), "network set {s}");
        }
        let bits = |o: &Owners| {
            (0..model.endpoints.len())
                .map(|e| o.endpoint(e).to_vec())
                .collect::<Vec<_>>()
        };
        assert!(
            bits(&each).windows(2).any(|w| w[0] != w[1]),
            "owners differ"
        );
    }
}

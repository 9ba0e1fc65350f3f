//! Per-endpoint evaluation: for one endpoint (with an interface) and direction,
//! the peer classes grouped by what its rules read, and per group a row of
//! evaluator answers over the port space (see the module docs of `compile`,
//! "Decision tables").
use foldhash::{HashMap, HashMapExt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::emit::{Row, Runs};
use super::names::Names;
use super::peers::{ones, set_bit, Atoms, PeerClasses, Signature};
use super::ports::{self, packet, Dim, Layout};
use super::source_ports::SourcePorts;
use super::CompileError;
use crate::dataplane::tables::{GroupEntry, RuleEntry, SourcePortEntry, Table};
use crate::eval::{ApplicableTier, Evaluator, PolicySet, EPHEMERAL_PORT};
use crate::model::ir::{
    Action, Direction, Endpoint, EndpointKind, FailsafePort, Model, PortMatch, Rule,
};
use crate::selector::Selector;

/// One endpoint's entries, evaluator calls, and whether it has staged policy.
#[derive(Clone)]
pub(super) struct EndpointOut {
    pub(super) rules: Vec<RuleEntry>,
    pub(super) sports: Vec<SourcePortEntry>,
    pub(super) groups: Vec<GroupEntry>,
    pub(super) evaluations: usize,
    pub(super) has_staged: bool,
}

/// What every endpoint's compile shares.
pub(super) struct Shared<'a, 'm> {
    pub(super) model: &'m Model,
    pub(super) eval: &'a Evaluator<'m>,
    pub(super) names: &'a Names,
    pub(super) peers: &'a PeerClasses,
}

/// Compiles the endpoint `model.endpoints[index]` under `id`.
pub(super) fn compile_endpoint(
    shared: &Shared<'_, '_>,
    index: usize,
    id: u32,
) -> Result<EndpointOut, CompileError> {
    let eval = shared.eval;
    let has_staged = [Direction::Ingress, Direction::Egress]
        .into_iter()
        .any(|d| {
            !same_tiers(
                eval.applicable_policies(PolicySet::Enforced, index, d),
                eval.applicable_policies(PolicySet::Pending, index, d),
            )
        });
    let mut ctx = EndpointCompiler {
        model: shared.model,
        eval,
        names: shared.names,
        peers: shared.peers,
        index,
        endpoint: &shared.model.endpoints[index],
        id,
        evaluations: 0,
        out: Vec::new(),
        sports: Vec::new(),
        groups: Vec::new(),
    };
    for direction in [Direction::Ingress, Direction::Egress] {
        ctx.direction(direction, has_staged)?;
    }
    Ok(EndpointOut {
        rules: ctx.out,
        sports: ctx.sports,
        groups: ctx.groups,
        evaluations: ctx.evaluations,
        has_staged,
    })
}

/// Same tiers, same default actions, same policies (by identity) in the same order.
fn same_tiers(a: &[ApplicableTier], b: &[ApplicableTier]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.phase == y.phase
                && x.name == y.name
                && x.default_action == y.default_action
                && x.policies.len() == y.policies.len()
                && x.policies
                    .iter()
                    .zip(&y.policies)
                    .all(|(p, q)| std::ptr::eq(*p, *q))
        })
}

pub(super) struct EndpointCompiler<'a, 'm> {
    model: &'m Model,
    eval: &'a Evaluator<'m>,
    names: &'a Names,
    peers: &'a PeerClasses,
    index: usize,
    endpoint: &'m Endpoint,
    pub(super) id: u32,
    evaluations: usize,
    pub(super) out: Vec<RuleEntry>,
    sports: Vec<SourcePortEntry>,
    pub(super) groups: Vec<GroupEntry>,
}

/// The peer classes grouped by the signature bits one direction's rules read.
struct PeerGroups {
    /// Group -> a representative class index.
    representatives: Vec<usize>,
    /// Class index -> group.
    class_group: Vec<usize>,
}

/// Where each peer group must ask the evaluator (see [`EndpointCompiler::needed`]),
/// kept as the rules per group rather than per-group cell masks, so memory
/// stays linear in rules, not groups x intervals.
struct Needed<'l> {
    layout: &'l Layout,
    /// Per dimension: the interval indexes every group asks at, ascending.
    base: Vec<Vec<u32>>,
    /// Per group: the rules (indexes) that may match its peers.
    rules_of_group: Vec<Vec<usize>>,
}

impl Needed<'_> {
    /// Adds the interval indexes the `rules` cut at to `needed` (per dimension,
    /// kept sorted and without duplicates).
    fn mark(&self, needed: &mut [Vec<u32>], rules: &[usize]) {
        for (d, dim) in self.layout.dims.iter().enumerate() {
            let before = needed[d].len();
            for &k in rules {
                let cuts = &self.layout.rule_cuts[dim.protocol_index][k];
                for &c in cuts.iter().filter(|&&c| c <= 0xffff) {
                    if let Ok(i) = dim.starts.binary_search(&(c as u16)) {
                        needed[d].push(i as u32);
                    }
                }
            }
            if needed[d].len() != before {
                needed[d].sort_unstable();
                needed[d].dedup();
            }
        }
    }

    /// Group `g`'s interval indexes per dimension, ascending.
    fn of_group(&self, g: usize) -> Vec<Vec<u32>> {
        let mut needed = self.base.clone();
        self.mark(&mut needed, &self.rules_of_group[g]);
        needed
    }
}

impl<'m> EndpointCompiler<'_, 'm> {
    /// The decisive rules the endpoint's end can consult in this direction, with
    /// their owner's name (both sets and the profiles).
    fn rules(&self, direction: Direction) -> Vec<(String, &'m Rule)> {
        let mut out: Vec<(String, &'m Rule)> = Vec::new();
        for set in [PolicySet::Enforced, PolicySet::Pending] {
            for tier in self.eval.applicable_policies(set, self.index, direction) {
                for p in &tier.policies {
                    for r in p.rules(direction) {
                        out.push((p.id.to_string(), r));
                    }
                }
            }
        }
        for name in &self.endpoint.profiles {
            if let Some(p) = self.model.profiles.iter().find(|p| &p.name == name) {
                let rules = match direction {
                    Direction::Ingress => &p.ingress,
                    Direction::Egress => &p.egress,
                };
                out.extend(rules.iter().map(|r| (format!("pro:{name}"), r)));
            }
        }
        out.retain(|(_, r)| r.action != Action::Log);
        out
    }

    fn failsafes(&self, direction: Direction) -> &'m [FailsafePort] {
        if self.endpoint.kind != EndpointKind::Host {
            return &[];
        }
        match direction {
            Direction::Ingress => &self.model.failsafes.inbound,
            Direction::Egress => &self.model.failsafes.outbound,
        }
    }

    fn direction(&mut self, direction: Direction, has_staged: bool) -> Result<(), CompileError> {
        let rules = self.rules(direction);
        let failsafes = self.failsafes(direction);
        let protocols = ports::protocols(&rules, failsafes);
        let other = ports::other_protocol(&protocols);
        let endpoint = self.endpoint.key();
        let mut sources = Vec::with_capacity(protocols.len());
        for &p in &protocols {
            let classes = SourcePorts::of(self.model, &endpoint, &rules, p)?;
            self.sports.extend(classes.entries(self.id, direction, p));
            sources.push(classes);
        }
        let layout = ports::layout(self.model, &rules, failsafes, &protocols, &sources);
        let groups = self.peer_groups(&rules, failsafes);
        let needed = self.needed(direction, &rules, &layout, &groups);
        let tables: &[(Table, PolicySet)] = if has_staged {
            &[
                (Table::Enforced, PolicySet::Enforced),
                (Table::Pending, PolicySet::Pending),
            ]
        } else {
            &[(Table::Enforced, PolicySet::Enforced)]
        };
        let mut rows_of: Vec<(Table, Vec<Row>)> = tables
            .iter()
            .map(|&(table, _)| (table, Vec::with_capacity(groups.representatives.len())))
            .collect();
        for (g, &ci) in groups.representatives.iter().enumerate() {
            let peer = self.peers.classes[ci].representative;
            let asked = needed.of_group(g);
            for (&(_, set), (_, rows)) in tables.iter().zip(&mut rows_of) {
                rows.push(self.row(set, direction, peer, &layout.dims, &asked, other)?);
            }
        }
        self.emit(direction, &layout.dims, &rows_of, &groups.class_group);
        Ok(())
    }

    /// Groups the peer classes by the signature bits `rules` and `failsafes`
    /// read (and named ports, when a rule names one).
    fn peer_groups(&self, rules: &[(String, &Rule)], failsafes: &[FailsafePort]) -> PeerGroups {
        let atoms = &self.peers.atoms;
        let mut used = vec![0u64; atoms.words()];
        let mut named = false;
        for (_, r) in rules {
            for side in [&r.source, &r.destination] {
                for n in side.nets.iter().chain(&side.not_nets) {
                    set_bit(&mut used, atoms.net_bit(n));
                }
                for s in side.selector.iter().chain(&side.not_selector) {
                    set_bit(&mut used, atoms.selector_bit(s));
                }
                named |= side
                    .ports
                    .iter()
                    .chain(&side.not_ports)
                    .any(|m| matches!(m, PortMatch::Named(_)));
            }
        }
        for f in failsafes {
            if let Some(n) = &f.net {
                set_bit(&mut used, atoms.net_bit(n));
            }
        }
        type GroupKey = (bool, Vec<u64>, Vec<(String, u8, u16)>);
        let mut group_of_key: HashMap<GroupKey, usize> = HashMap::new();
        let mut representatives: Vec<usize> = Vec::new();
        let mut class_group: Vec<usize> = Vec::with_capacity(self.peers.classes.len());
        for (ci, class) in self.peers.classes.iter().enumerate() {
            let sig = &class.signature;
            let key: GroupKey = (
                sig.v6,
                sig.masked(&used),
                if named {
                    sig.named_ports.clone()
                } else {
                    Vec::new()
                },
            );
            let next = representatives.len();
            let g = *group_of_key.entry(key).or_insert_with(|| {
                representatives.push(ci);
                next
            });
            class_group.push(g);
        }
        PeerGroups {
            representatives,
            class_group,
        }
    }

    /// Per group, the interval starts where its function can change: the
    /// breakpoints of the rules that can match its peers (and the failsafes').
    /// Between them the evaluator's answer is constant, so the other cells
    /// copy their left neighbour instead of asking again — this keeps a
    /// policy of N (peer, port) rules at O(N) evaluations, not O(N^2).
    /// A rule is tried only on the groups holding one of its peer-side nets or
    /// its selector (an index from bit to groups), so N rules of distinct peers
    /// cost O(N), not groups x rules.
    fn needed<'l>(
        &self,
        direction: Direction,
        rules: &[(String, &Rule)],
        layout: &'l Layout,
        groups: &PeerGroups,
    ) -> Needed<'l> {
        let signatures: Vec<&Signature> = groups
            .representatives
            .iter()
            .map(|&ci| &self.peers.classes[ci].signature)
            .collect();
        let tests: Vec<PeerTest> = rules
            .iter()
            .map(|(_, r)| PeerTest::new(r, direction, &self.peers.atoms))
            .collect();
        let mut needed = Needed {
            layout,
            base: layout
                .dims
                .iter()
                .map(|dim| {
                    (0..dim.starts.len() as u32)
                        .filter(|&i| dim.always.contains(&dim.starts[i as usize]))
                        .collect()
                })
                .collect(),
            rules_of_group: vec![Vec::new(); signatures.len()],
        };
        let with_bit = groups_with_bit(&tests, &signatures, self.peers.atoms.words());
        let mut every_peer: Vec<usize> = Vec::new();
        for (k, test) in tests.iter().enumerate() {
            if test.matches_every_peer() {
                // Rules that may match every peer mark the base every group starts from.
                every_peer.push(k);
                continue;
            }
            let candidates: Vec<usize> = match test.positive_bits() {
                Some(bits) => {
                    let mut c: Vec<usize> = bits
                        .iter()
                        .flat_map(|b| with_bit.get(b).into_iter().flatten().copied())
                        .collect();
                    c.sort_unstable();
                    c.dedup();
                    c
                }
                None => (0..signatures.len()).collect(),
            };
            for g in candidates {
                if test.matches(signatures[g]) {
                    needed.rules_of_group[g].push(k);
                }
            }
        }
        let mut base = std::mem::take(&mut needed.base);
        needed.mark(&mut base, &every_peer);
        needed.base = base;
        needed
    }

    /// The evaluator's function for one peer, checked to be the same for every
    /// local address of the peer's family.
    fn row(
        &mut self,
        set: PolicySet,
        direction: Direction,
        peer: IpAddr,
        dims: &[Dim],
        needed: &[Vec<u32>],
        other: u8,
    ) -> Result<Row, CompileError> {
        let mut locals: Vec<IpAddr> = self
            .endpoint
            .ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == peer.is_ipv6())
            .collect();
        if locals.is_empty() {
            locals.push(if peer.is_ipv6() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
        }
        let mut first: Option<Row> = None;
        for local in locals {
            let mut ask = |p: u8, sport: u16, v: u16| {
                self.evaluations += 1;
                let end = self.eval.evaluate_end(
                    set,
                    self.index,
                    direction,
                    peer,
                    local,
                    &packet(p, sport, v),
                );
                self.names.verdict(&end)
            };
            let row = Row {
                other: ask(other, EPHEMERAL_PORT, 0),
                cells: dims
                    .iter()
                    .zip(needed)
                    .map(|(d, needed)| {
                        // The first interval is always asked; the others only
                        // where needed (else they copy their left neighbour).
                        let asked =
                            std::iter::once(0).chain(needed.iter().copied().filter(|&i| i != 0));
                        let mut runs: Runs = Vec::with_capacity(needed.len());
                        for i in asked {
                            let v = ask(d.protocol, d.source_port, d.starts[i as usize]);
                            if runs.last().is_none_or(|&(_, previous)| previous != v) {
                                runs.push((i, v));
                            }
                        }
                        runs
                    })
                    .collect(),
            };
            match &first {
                None => first = Some(row),
                Some(f) if *f == row => {}
                Some(_) => {
                    return Err(CompileError::Unsupported {
                        endpoint: self.endpoint.key(),
                        policy: "*".into(),
                        what: format!(
                            "{direction:?} verdicts that depend on which of the endpoint's own addresses a packet uses"
                        ),
                    })
                }
            }
        }
        Ok(first.expect("at least one local address"))
    }
}

/// What a rule asks of the peer (its family, its nets and selectors on the
/// peer's side), as signature bits.
struct PeerTest {
    v6: Option<bool>,
    nets: Vec<usize>,
    not_nets: Vec<usize>,
    selector: Option<usize>,
    not_selector: Option<usize>,
}

impl PeerTest {
    fn new(r: &Rule, direction: Direction, atoms: &Atoms) -> Self {
        let side = match direction {
            Direction::Ingress => &r.source,
            Direction::Egress => &r.destination,
        };
        let nets = |nets: &[IpNet]| nets.iter().map(|n| atoms.net_bit(n)).collect();
        let selector = |s: &Option<Selector>| s.as_ref().map(|s| atoms.selector_bit(s));
        PeerTest {
            v6: r.ip_version.map(|v| v == 6),
            nets: nets(&side.nets),
            not_nets: nets(&side.not_nets),
            selector: selector(&side.selector),
            not_selector: selector(&side.not_selector),
        }
    }

    /// False when no packet from/to a peer with signature `sig` can match the
    /// rule; true when it may (conservative: the local side is not looked at).
    fn matches(&self, sig: &Signature) -> bool {
        self.v6.is_none_or(|v6| v6 == sig.v6)
            && (self.nets.is_empty() || self.nets.iter().any(|&b| sig.bit(b)))
            && !self.not_nets.iter().any(|&b| sig.bit(b))
            && self.selector.is_none_or(|b| sig.bit(b))
            && !self.not_selector.is_some_and(|b| sig.bit(b))
    }

    /// [`PeerTest::matches`] is true for every signature.
    fn matches_every_peer(&self) -> bool {
        self.v6.is_none()
            && self.nets.is_empty()
            && self.not_nets.is_empty()
            && self.selector.is_none()
            && self.not_selector.is_none()
    }

    /// Bits one of which a matching peer must have (its nets, else its
    /// selector), or None if there are none.
    fn positive_bits(&self) -> Option<Vec<usize>> {
        if !self.nets.is_empty() {
            Some(self.nets.clone())
        } else {
            self.selector.map(|b| vec![b])
        }
    }
}

/// For every bit some test needs positively, the groups (indexes into
/// `signatures`) whose signature has it.
fn groups_with_bit(
    tests: &[PeerTest],
    signatures: &[&Signature],
    words: usize,
) -> HashMap<usize, Vec<usize>> {
    let mut positive = vec![0u64; words];
    for bits in tests.iter().filter_map(PeerTest::positive_bits) {
        for b in bits {
            set_bit(&mut positive, b);
        }
    }
    let mut with_bit: HashMap<usize, Vec<usize>> = HashMap::new();
    for (g, sig) in signatures.iter().enumerate() {
        for b in ones(&sig.masked(&positive)) {
            with_bit.entry(b).or_default().push(g);
        }
    }
    with_bit
}

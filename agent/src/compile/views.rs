//! Endpoint views: local endpoints whose tables cannot differ except by their
//! endpoint id are compiled once (issue 15, item 3).
//!
//! What an endpoint's compile reads of the endpoint itself (`endpoint.rs`,
//! `eval`): its applicable tiers and policies per policy set and direction
//! (which its labels and kind decide), its profiles (in order), its kind
//! (failsafes, host flag), and, through the local address of each evaluated
//! packet, whatever a rule reads on the endpoint's own side (ingress
//! destination, egress source): nets, selectors (the owners of the address),
//! named ports (the owners' ports) and Service backends. Everything else it
//! reads is global (peer classes, the port layout over every endpoint's named
//! ports, verdict names).
//!
//! So two endpoints with the same [`View`] get the same entries but for
//! `endpoint_id`: the first in model order is compiled, the others take its
//! entries with their own id ([`EndpointOut::with_id`]). Errors are those of
//! the first too: every member would fail alike, and the first error in model
//! order is reported. When no rule reads the endpoint's own side, its addresses
//! are not part of the view: the evaluator's answers cannot depend on them (a
//! packet's family is the peer's), which is what lets pods with their own
//! addresses and labels share.
use foldhash::{HashMap, HashMapExt};
use std::net::IpAddr;

use super::endpoint::{EndpointOut, Shared};
use crate::eval::{ApplicableTier, Phase, PolicySet};
use crate::model::ir::{
    Action, Direction, EndpointKind, EntityRule, Model, PortMatch, Rule, TierDefault,
};

/// A named port as (name, protocol number, port).
type NamedPortOf = (String, u8, u16);

/// One applicable tier, its policies by identity (addresses into the model).
type TierView = (Phase, String, TierDefault, Vec<usize>);

/// Everything an endpoint's entries depend on besides its id and the global
/// inputs (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct View {
    kind: EndpointKind,
    /// None when no profile can be consulted: none is defined (so none adds
    /// rules to the port layout) and every policy set and direction has a
    /// tier that decides every packet reaching it.
    profiles: Option<Vec<String>>,
    /// (enforced, pending) x (ingress, egress).
    tiers: [Vec<TierView>; 4],
    /// What the rules read of the endpoint's own addresses.
    local: LocalView,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum LocalView {
    Nothing,
    /// Per address (in order): its family and its owners' named ports.
    NamedPorts(Vec<(bool, Vec<NamedPortOf>)>),
    Addresses(Vec<IpAddr>),
}

/// The view of endpoint `model.endpoints[index]`; `named` is built on first
/// need.
fn view(shared: &Shared<'_, '_>, index: usize, named: &mut Option<NamedPortsByAddress>) -> View {
    let model = shared.model;
    let endpoint = &model.endpoints[index];
    let mut reads = OwnSide::Nothing;
    let mut tiers: [Vec<TierView>; 4] = Default::default();
    let cases = [PolicySet::Enforced, PolicySet::Pending]
        .into_iter()
        .flat_map(|set| [Direction::Ingress, Direction::Egress].map(|d| (set, d)));
    for (slot, (set, direction)) in tiers.iter_mut().zip(cases) {
        for tier in shared.eval.applicable_policies(set, index, direction) {
            let policies = tier
                .policies
                .iter()
                .map(|p| *p as *const _ as usize)
                .collect();
            for p in &tier.policies {
                for r in p.rules(direction) {
                    reads = reads.max(own_side_read(r, direction));
                }
            }
            slot.push((tier.phase, tier.name.clone(), tier.default_action, policies));
        }
    }
    for name in &endpoint.profiles {
        if let Some(p) = model.profiles.iter().find(|p| &p.name == name) {
            let ingress = p.ingress.iter().map(|r| (r, Direction::Ingress));
            for (r, direction) in ingress.chain(p.egress.iter().map(|r| (r, Direction::Egress))) {
                reads = reads.max(own_side_read(r, direction));
            }
        }
    }
    View {
        kind: endpoint.kind,
        profiles: profiles_that_matter(shared, index).map(<[String]>::to_vec),
        tiers,
        local: match reads {
            OwnSide::Nothing => LocalView::Nothing,
            OwnSide::NamedPorts => {
                let by = named.get_or_insert_with(|| NamedPortsByAddress::new(model));
                let ports = |ip: &IpAddr| by.0.get(ip).cloned().unwrap_or_default();
                LocalView::NamedPorts(
                    endpoint
                        .ips
                        .iter()
                        .map(|ip| (ip.is_ipv6(), ports(ip)))
                        .collect(),
                )
            }
            OwnSide::Address => LocalView::Addresses(endpoint.ips.clone()),
        },
    }
}

/// The endpoint's profiles, or None when none can matter to its entries: none
/// is defined (so none adds rules to the port layout) and every policy set
/// and direction has a tier that decides every packet reaching it.
pub(super) fn profiles_that_matter<'m>(
    shared: &Shared<'_, 'm>,
    index: usize,
) -> Option<&'m [String]> {
    let model = shared.model;
    let endpoint = &model.endpoints[index];
    let consulted = [PolicySet::Enforced, PolicySet::Pending]
        .into_iter()
        .flat_map(|set| [Direction::Ingress, Direction::Egress].map(|d| (set, d)))
        .any(|(set, direction)| {
            let applicable = shared.eval.applicable_policies(set, index, direction);
            !applicable.iter().any(|t| decides_all(t, direction))
        });
    let defined = || {
        let names = &endpoint.profiles;
        names
            .iter()
            .any(|name| model.profiles.iter().any(|p| &p.name == name))
    };
    (consulted || defined()).then_some(endpoint.profiles.as_slice())
}

/// Whether every packet that reaches `tier` is decided there (a normal tier
/// denying at its end, without Pass rules): then nothing after it is consulted.
fn decides_all(tier: &ApplicableTier, direction: Direction) -> bool {
    tier.phase == Phase::Normal
        && tier.default_action == TierDefault::Deny
        && tier
            .policies
            .iter()
            .all(|p| p.rules(direction).iter().all(|r| r.action != Action::Pass))
}

/// What a rule, consulted by an endpoint in one direction, reads of the
/// endpoint's own address (the local side: ingress destination, egress source).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum OwnSide {
    Nothing,
    /// Only named ports: those of the endpoints owning the address.
    NamedPorts,
    /// Nets, selectors or Service backends: the address itself.
    Address,
}

fn own_side_read(rule: &Rule, direction: Direction) -> OwnSide {
    let own: &EntityRule = match direction {
        Direction::Ingress => &rule.destination,
        Direction::Egress => &rule.source,
    };
    if !own.nets.is_empty()
        || !own.not_nets.is_empty()
        || own.selector.is_some()
        || own.not_selector.is_some()
        || own.services.is_some()
        || own.service_ports.is_some()
    {
        OwnSide::Address
    } else if own
        .ports
        .iter()
        .chain(&own.not_ports)
        .any(|m| matches!(m, PortMatch::Named(_)))
    {
        OwnSide::NamedPorts
    } else {
        OwnSide::Nothing
    }
}

/// The named ports, as (name, protocol, port) sorted, of the endpoints owning
/// each address (what a named port on a rule's local side resolves against).
struct NamedPortsByAddress(HashMap<IpAddr, Vec<NamedPortOf>>);

impl NamedPortsByAddress {
    fn new(model: &Model) -> Self {
        let mut by: HashMap<IpAddr, Vec<NamedPortOf>> = HashMap::new();
        for e in &model.endpoints {
            for ip in &e.ips {
                let ports = by.entry(*ip).or_default();
                ports.extend(
                    e.named_ports
                        .iter()
                        .map(|n| (n.name.clone(), n.protocol.number(), n.port)),
                );
            }
        }
        for ports in by.values_mut() {
            ports.sort_unstable();
            ports.dedup();
        }
        NamedPortsByAddress(by)
    }
}

/// Whether endpoints of one view share one compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sharing {
    Views,
    /// Every endpoint compiled alone (what the sharing is tested against).
    #[cfg(test)]
    Alone,
}

/// The targets (indexes into `targets`) grouped by view, groups in order of
/// their first member, members in order.
pub(super) fn group_by_view(
    shared: &Shared<'_, '_>,
    targets: &[usize],
    sharing: Sharing,
) -> Vec<Vec<usize>> {
    #[cfg(test)]
    if sharing == Sharing::Alone {
        return (0..targets.len()).map(|k| vec![k]).collect();
    }
    let _ = sharing;
    let mut group_of: HashMap<View, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut named = None;
    for (k, &index) in targets.iter().enumerate() {
        let next = groups.len();
        let g = *group_of
            .entry(view(shared, index, &mut named))
            .or_insert(next);
        if g == next {
            groups.push(Vec::new());
        }
        groups[g].push(k);
    }
    groups
}

impl EndpointOut {
    /// The same entries under endpoint id `id`.
    pub(super) fn with_id(&self, id: u32) -> EndpointOut {
        let mut out = self.clone();
        out.rules.iter_mut().for_each(|e| e.endpoint_id = id);
        out.sports.iter_mut().for_each(|e| e.endpoint_id = id);
        out.groups.iter_mut().for_each(|e| e.endpoint_id = id);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::testgen::{per_pod_label_model, random_model, Rng, Shape};
    use super::super::{compile_seeded, ClassIds, CompileError, Compiled, EndpointIds, Limits};
    use super::Sharing;
    use crate::model::ir::{Model, TierDefault};

    fn compile(model: &Model, sharing: Sharing) -> Result<Compiled, CompileError> {
        let ids = EndpointIds::default();
        compile_seeded(
            model,
            &Limits::default(),
            &ids,
            &ClassIds::default(),
            None,
            sharing,
        )
        .map(|(c, ..)| c)
    }

    /// Compiles with and without sharing; returns how many endpoints shared.
    fn assert_sharing_changes_nothing(model: &Model, what: &str) -> usize {
        match (
            compile(model, Sharing::Views),
            compile(model, Sharing::Alone),
        ) {
            (Ok(shared), Ok(alone)) => {
                assert_eq!(shared.tables, alone.tables, "{what}: tables");
                assert_eq!(shared.endpoints, alone.endpoints, "{what}: endpoints");
                assert!(
                    shared.stats.evaluations <= alone.stats.evaluations,
                    "{what}"
                );
                assert_eq!(alone.stats.shared, 0, "{what}");
                shared.stats.shared
            }
            (shared, alone) => {
                assert_eq!(shared.map(|_| ()), alone.map(|_| ()), "{what}: errors");
                0
            }
        }
    }

    /// Random models with copies of their endpoints (own name, interface,
    /// address and a label of their own, so a peer class of their own, but
    /// mostly the policies of the original): the tables equal those of
    /// compiling every endpoint alone.
    #[test]
    fn endpoints_sharing_a_view_get_the_tables_of_compiling_alone() {
        let mut shared = 0;
        for seed in 0..120u64 {
            let mut rng = Rng::new(seed);
            let mut model = random_model(&mut rng, Shape::default());
            let n = model.endpoints.len();
            for c in 0..3 {
                let mut e = (*model.endpoints[rng.below(n)]).clone();
                e.name = format!("copy{c}");
                e.interface = Some(format!("cali-copy{c}"));
                e.ips = vec![format!("10.0.3.{}", c + 1).parse().unwrap()];
                if rng.chance(50) {
                    e.ips.push(format!("fd00:3::{}", c + 1).parse().unwrap());
                }
                e.labels.insert("copy".into(), c.to_string());
                let at = rng.below(model.endpoints.len() + 1);
                model.endpoints.insert(at, e.into());
            }
            shared += assert_sharing_changes_nothing(&model, &format!("seed {seed}"));
        }
        assert!(
            shared > 60,
            "views were shared {shared} times in 120 models"
        );
    }

    /// Endpoints' entries with the id blanked, and their flags: how many differ.
    fn distinct_tables(c: &Compiled) -> usize {
        let per: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| {
                let blank = |s: String| s.replace(&format!("endpoint_id: {},", e.id), "");
                let rules = c.tables.rules.iter().filter(|r| r.endpoint_id == e.id);
                let groups = c.tables.groups.iter().filter(|g| g.endpoint_id == e.id);
                let sports = c.tables.sports.iter().filter(|s| s.endpoint_id == e.id);
                blank(format!(
                    "{:?} {:?} {:?} {:?}",
                    rules.collect::<Vec<_>>(),
                    groups.collect::<Vec<_>>(),
                    sports.collect::<Vec<_>>(),
                    (e.has_staged, e.source_ports, e.host)
                ))
            })
            .collect();
        per.iter().collect::<std::collections::HashSet<_>>().len()
    }

    #[test]
    fn pods_with_a_label_each_share_the_tables_of_their_app() {
        let mut model = per_pod_label_model(300, 40, 1);
        for e in &mut model.endpoints[40..] {
            std::sync::Arc::make_mut(e).interface = None;
        }
        let shared = assert_sharing_changes_nothing(&model, "per_pod_label_model");
        let c = compile(&model, Sharing::Views).unwrap();
        assert_eq!(c.endpoints.len(), 40);
        assert_eq!(
            40 - shared,
            distinct_tables(&c),
            "one compile per distinct table (the namespaces' profiles are never consulted)"
        );
        // Profiles matter where a tier lets packets through to them.
        for t in &mut model.tiers {
            t.default_action = TierDefault::Pass;
        }
        let shared_reaching_profiles = assert_sharing_changes_nothing(&model, "tier default Pass");
        assert!(
            shared_reaching_profiles < shared,
            "profiles tell views apart: {shared_reaching_profiles} shared"
        );
        let c = compile(&model, Sharing::Views).unwrap();
        assert_eq!(40 - shared_reaching_profiles, distinct_tables(&c));
    }
}

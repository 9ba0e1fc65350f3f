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
use std::collections::HashMap;
use std::net::IpAddr;

use super::endpoint::{EndpointOut, Shared};
use crate::eval::{Phase, PolicySet};
use crate::model::ir::{Direction, EndpointKind, EntityRule, PortMatch, Rule, TierDefault};

/// One applicable tier, its policies by identity (addresses into the model).
type TierView = (Phase, String, TierDefault, Vec<usize>);

/// Everything an endpoint's entries depend on besides its id and the global
/// inputs (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct View {
    kind: EndpointKind,
    profiles: Vec<String>,
    /// (enforced, pending) x (ingress, egress).
    tiers: [Vec<TierView>; 4],
    /// The endpoint's addresses, when a rule reads its own side.
    local: Option<Vec<IpAddr>>,
}

/// The view of endpoint `model.endpoints[index]`.
pub(super) fn view(shared: &Shared<'_, '_>, index: usize) -> View {
    let model = shared.model;
    let endpoint = &model.endpoints[index];
    let mut reads_local = false;
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
                reads_local |= p
                    .rules(direction)
                    .iter()
                    .any(|r| reads_own_side(r, direction));
            }
            slot.push((tier.phase, tier.name.clone(), tier.default_action, policies));
        }
    }
    for name in &endpoint.profiles {
        if let Some(p) = model.profiles.iter().find(|p| &p.name == name) {
            reads_local |= p
                .ingress
                .iter()
                .any(|r| reads_own_side(r, Direction::Ingress))
                || p.egress
                    .iter()
                    .any(|r| reads_own_side(r, Direction::Egress));
        }
    }
    View {
        kind: endpoint.kind,
        profiles: endpoint.profiles.clone(),
        tiers,
        local: reads_local.then(|| endpoint.ips.clone()),
    }
}

/// Whether `rule`, consulted by an endpoint in `direction`, looks at the
/// endpoint's own address (its nets, selectors, named ports or Service
/// backends on that side). Port ranges and protocols do not.
fn reads_own_side(rule: &Rule, direction: Direction) -> bool {
    let own: &EntityRule = match direction {
        Direction::Ingress => &rule.destination,
        Direction::Egress => &rule.source,
    };
    !own.nets.is_empty()
        || !own.not_nets.is_empty()
        || own.selector.is_some()
        || own.not_selector.is_some()
        || own.services.is_some()
        || own.service_ports.is_some()
        || own
            .ports
            .iter()
            .chain(&own.not_ports)
            .any(|m| matches!(m, PortMatch::Named(_)))
}

/// The targets (indexes into `targets`) grouped by view, groups in order of
/// their first member, members in order.
pub(super) fn group_by_view(shared: &Shared<'_, '_>, targets: &[usize]) -> Vec<Vec<usize>> {
    let mut group_of: HashMap<View, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (k, &index) in targets.iter().enumerate() {
        let next = groups.len();
        let g = *group_of.entry(view(shared, index)).or_insert(next);
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

//! What peer classes are made from: every prefix the model gives (endpoint
//! addresses, network-set nets, the nets of the rules that can be consulted
//! and of failsafes) and the atoms rules test peers with.
use std::collections::BTreeMap;

use ipnet::IpNet;

use super::{in_v4_mapped_space, Atoms, Prefix};
use crate::compile::CompileError;
use crate::eval::Evaluator;
use crate::model::ir::{Model, PolicyId, Rule};

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

/// What [`PeerClasses::build`] collects from the model.
pub(super) struct Collected {
    pub(super) atoms: Atoms,
    /// Sorted by family, start, length: a prefix's enclosing ones come before it.
    pub(super) prefixes: Vec<Prefix>,
    /// Parallel to `prefixes`: the network sets (indexes) listing the prefix.
    pub(super) listed_by: Vec<Vec<usize>>,
}

/// Collects the prefixes (endpoint addresses, network-set nets, the nets of
/// relevant rules and of failsafes, both roots) and the atoms.
pub(super) fn collect(model: &Model, eval: &Evaluator<'_>) -> Result<Collected, CompileError> {
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

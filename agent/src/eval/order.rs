//! Which policies make up a policy set, and in what order they are consulted
//! (Calico's felix/calc/policy_sorter.go), computed once per model and set.
use std::cmp::Ordering;

use crate::model::ir::{Model, Policy, PolicyId, StagedAction, TierDefault};

use super::PolicySet;

/// Calico's tier when a tier resource is missing: such a tier sorts after every
/// defined tier and ends with the ordinary default, Deny.
const MISSING_TIER_DEFAULT: TierDefault = TierDefault::Deny;

/// One tier of a prepared set: its policies already in evaluation order.
#[derive(Clone, Debug)]
pub struct PreparedTier<'m> {
    pub name: String,
    pub default_action: TierDefault,
    pub policies: Vec<&'m Policy>,
}

/// The policies of one [`PolicySet`], grouped into tiers and sorted. Built once,
/// queried for every endpoint.
#[derive(Clone, Debug)]
pub struct PreparedSet<'m> {
    pub set: PolicySet,
    pub tiers: Vec<PreparedTier<'m>>,
}

impl<'m> PreparedSet<'m> {
    pub fn new(model: &'m Model, set: PolicySet) -> Self {
        let members = set_members(model, set);
        let tiers = sorted_tiers(model, &members)
            .into_iter()
            .map(|(name, default_action)| {
                let mut policies: Vec<&Policy> =
                    members.iter().copied().filter(|p| p.tier == name).collect();
                policies.sort_by(|a, b| policy_order(a, b));
                PreparedTier {
                    name,
                    default_action,
                    policies,
                }
            })
            .collect();
        PreparedSet { set, tiers }
    }
}

/// The policies in a set. Enforced: every non-staged policy. Pending (the
/// project's DECISION): every staged policy promoted now — Set/Learn replace
/// (or add) the enforced namesake, Delete removes it, Ignore changes nothing.
pub fn set_members(model: &Model, set: PolicySet) -> Vec<&Policy> {
    let mut members: Vec<&Policy> = model
        .policies
        .iter()
        .filter(|p| !p.id.kind.is_staged())
        .collect();
    if set == PolicySet::Enforced {
        return members;
    }
    for staged in model.policies.iter().filter(|p| p.id.kind.is_staged()) {
        let promoted = staged.id.promoted();
        match staged.staged_action.unwrap_or_default() {
            StagedAction::Set | StagedAction::Learn => {
                members.retain(|p| p.id.promoted() != promoted);
                members.push(staged);
            }
            StagedAction::Delete => members.retain(|p| p.id.promoted() != promoted),
            StagedAction::Ignore => {}
        }
    }
    members
}

/// Tier names with their default actions, in evaluation order: defined tiers by
/// order (unset last) then name; tiers that policies name but nobody defined
/// come after them, by name.
fn sorted_tiers(model: &Model, members: &[&Policy]) -> Vec<(String, TierDefault)> {
    let mut defined: Vec<_> = model.tiers.iter().collect();
    defined.sort_by(|a, b| optional_order(a.order, b.order).then_with(|| a.name.cmp(&b.name)));
    let mut tiers: Vec<(String, TierDefault)> = defined
        .iter()
        .map(|t| (t.name.clone(), t.default_action))
        .collect();
    let mut missing: Vec<String> = members
        .iter()
        .map(|p| p.tier.clone())
        .filter(|name| !model.tiers.iter().any(|t| &t.name == name))
        .collect();
    missing.sort();
    missing.dedup();
    tiers.extend(missing.into_iter().map(|n| (n, MISSING_TIER_DEFAULT)));
    tiers
}

/// Unset orders sort after every number; equal numbers are ties.
fn optional_order(a: Option<f64>, b: Option<f64>) -> Ordering {
    let a = a.unwrap_or(f64::INFINITY);
    let b = b.unwrap_or(f64::INFINITY);
    a.partial_cmp(&b).unwrap_or(Ordering::Equal)
}

/// Calico's PolKVLess: by order (unset = +inf), ties by `name/namespace/kind`.
/// A promoted staged policy sorts under the kind it promotes to.
pub fn policy_order(a: &Policy, b: &Policy) -> Ordering {
    optional_order(a.order, b.order).then_with(|| tie_break_key(&a.id).cmp(&tie_break_key(&b.id)))
}

fn tie_break_key(id: &PolicyId) -> String {
    format!(
        "{}/{}/{}",
        id.name,
        id.namespace.as_deref().unwrap_or(""),
        id.kind.enforced().as_str()
    )
}

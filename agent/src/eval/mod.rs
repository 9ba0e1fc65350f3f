//! The reference evaluator: Calico's policy semantics in plain Rust.
//!
//! It is the oracle the kernel dataplane is tested against, and the compiler
//! asks it, cell by cell, what a packet gets. Build an [`Evaluator`] once per
//! model (it sorts tiers and policies and indexes IPs once), then query it:
//! - [`Evaluator::evaluate_end`]: one endpoint, one direction, one packet;
//! - [`Evaluator::evaluate_flow`]: both ends of a flow, enforced and pending;
//! - [`Evaluator::applicable_policies`]: which tiers and policies apply to an endpoint.
//!
//! The free functions of the same names build a throwaway evaluator, for one-off questions.
//!
//! Semantics: docs/semantics.md (Evaluation, Staged policies). The
//! pending set is the DECISION there: every staged policy promoted now.
//!
//! Per end: failsafe ports (host endpoints) first; then the applicable tiers
//! ([`Phase`] by phase, tier by tier, policy by policy, rule by rule); then the
//! endpoint's profiles; then deny. Traces use Calico's flow-log strings
//! ([`TraceEntry`]); a promoted staged policy keeps its staged kind code.
//!
//! Not modelled: forwarded traffic through a host endpoint (`applyOnForward`
//! only matters there), DNAT (pre-DNAT policies see the packet as given),
//! connection tracking (every question is about a connection's first packet).
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};

use crate::model::ir::{
    Action, Direction, Endpoint, EndpointKind, Labels, Model, Policy, Rule, TierDefault,
};
use crate::selector::Selector;

mod matching;
pub mod matrix;
mod order;
mod prefilter;
#[cfg(test)]
mod tests;
mod verdict;

pub use matching::{IpIndex, NetRanges};
pub use order::{policy_order, set_members, PreparedSet, PreparedTier};
pub use verdict::*;

use matching::{failsafe_match, RuleMatcher};
use prefilter::RulePrefilter;

/// The applicable tiers for ingress and egress.
type Applicable<'m> = Arc<[Vec<ApplicableTier<'m>>; 2]>;

/// Per endpoint: its applicable tiers, computed on first use.
type ApplicableCache<'m> = Vec<OnceLock<Applicable<'m>>>;

/// Applicable tiers by what decides them, an endpoint's kind and labels:
/// endpoints alike (the pods of one deployment) share one evaluation of
/// every policy's selector.
type ApplicableByLabels<'m> = Mutex<foldhash::HashMap<(EndpointKind, &'m Labels), Applicable<'m>>>;

/// Per `model.policies` entry: its ingress and egress rule prefilters, built on first use.
type PrefilterCache = Vec<[OnceLock<RulePrefilter>; 2]>;

/// A model prepared for many questions: both policy sets sorted, IPs indexed,
/// applicable policies cached per endpoint. Deterministic; `Sync`.
pub struct Evaluator<'m> {
    model: &'m Model,
    ips: IpIndex,
    enforced: PreparedSet<'m>,
    pending: PreparedSet<'m>,
    enforced_cache: ApplicableCache<'m>,
    pending_cache: ApplicableCache<'m>,
    /// Enforced, pending.
    by_labels: [ApplicableByLabels<'m>; 2],
    /// Per `model.policies` entry: its selector's index in `selectors`.
    selector_of: Vec<usize>,
    /// The policies' distinct selectors.
    selectors: Vec<&'m Selector>,
    /// By label set: whether each of `selectors` matches it (each selector is
    /// evaluated once per label set, however many policies share it).
    selected: Mutex<foldhash::HashMap<&'m Labels, Arc<Vec<bool>>>>,
    /// None: scan every rule (the reference the prefilter is tested against).
    prefilters: Option<PrefilterCache>,
}

impl<'m> Evaluator<'m> {
    pub fn new(model: &'m Model) -> Self {
        let empty_cache = || {
            (0..model.endpoints.len())
                .map(|_| OnceLock::new())
                .collect()
        };
        let mut index: foldhash::HashMap<&Selector, usize> = Default::default();
        let mut selectors = Vec::new();
        let selector_of = model
            .policies
            .iter()
            .map(|p| {
                *index.entry(&p.selector).or_insert_with(|| {
                    selectors.push(&p.selector);
                    selectors.len() - 1
                })
            })
            .collect();
        Evaluator {
            model,
            ips: IpIndex::new(model),
            enforced: PreparedSet::new(model, PolicySet::Enforced),
            pending: PreparedSet::new(model, PolicySet::Pending),
            enforced_cache: empty_cache(),
            pending_cache: empty_cache(),
            by_labels: Default::default(),
            selector_of,
            selectors,
            selected: Default::default(),
            prefilters: Some(
                (0..model.policies.len())
                    .map(|_| [OnceLock::new(), OnceLock::new()])
                    .collect(),
            ),
        }
    }

    /// An evaluator that tests every rule in turn, without the prefilter.
    #[cfg(test)]
    fn scanning_every_rule(model: &'m Model) -> Self {
        Evaluator {
            prefilters: None,
            ..Evaluator::new(model)
        }
    }

    /// The rules of `policy` (an entry of `model.policies`) in `direction`
    /// that may match a packet from `src` to `dst`, in order; None: all of them.
    fn candidate_rules(
        &self,
        policy: &Policy,
        direction: Direction,
        src: IpAddr,
        dst: IpAddr,
    ) -> Option<Vec<usize>> {
        let prefilters = self.prefilters.as_ref()?;
        let position = policy_position(self.model, policy)?;
        let slot = match direction {
            Direction::Ingress => &prefilters[position][0],
            Direction::Egress => &prefilters[position][1],
        };
        slot.get_or_init(|| RulePrefilter::new(policy.rules(direction)))
            .candidates(src, dst)
    }

    pub fn model(&self) -> &'m Model {
        self.model
    }

    pub fn prepared(&self, set: PolicySet) -> &PreparedSet<'m> {
        match set {
            PolicySet::Enforced => &self.enforced,
            PolicySet::Pending => &self.pending,
        }
    }

    /// Which endpoints own which addresses.
    pub fn ip_index(&self) -> &IpIndex {
        &self.ips
    }

    /// The endpoint (index into `model.endpoints`) that owns an IP: a workload
    /// if one does, else a host endpoint.
    pub fn endpoint_for_ip(&self, ip: IpAddr) -> Option<usize> {
        self.ips.endpoint_for(self.model, ip)
    }

    /// The tiers with at least one policy that applies to the endpoint in this
    /// direction, in evaluation order, each with its applicable policies in order.
    ///
    /// Panics if `endpoint_index` is not an index into `model.endpoints`.
    pub fn applicable_policies(
        &self,
        set: PolicySet,
        endpoint_index: usize,
        direction: Direction,
    ) -> &[ApplicableTier<'m>] {
        let (cache, by_labels) = match set {
            PolicySet::Enforced => (&self.enforced_cache, &self.by_labels[0]),
            PolicySet::Pending => (&self.pending_cache, &self.by_labels[1]),
        };
        let both = cache[endpoint_index].get_or_init(|| {
            let endpoint = &self.model.endpoints[endpoint_index];
            let alike = (endpoint.kind, &endpoint.labels);
            if let Some(known) = lock(by_labels).get(&alike) {
                return known.clone();
            }
            let prepared = self.prepared(set);
            let selected = self.selected(&endpoint.labels);
            let selects = |p: &Policy| match policy_position(self.model, p) {
                Some(i) => selected[self.selector_of[i]],
                None => p.selector.evaluate(&endpoint.labels),
            };
            let both = Arc::new([
                applicable_tiers(prepared, endpoint, Direction::Ingress, selects),
                applicable_tiers(prepared, endpoint, Direction::Egress, selects),
            ]);
            lock(by_labels).entry(alike).or_insert(both).clone()
        });
        match direction {
            Direction::Ingress => &both[0],
            Direction::Egress => &both[1],
        }
    }

    /// Per `model.policies` entry: whether its selector matches one of
    /// `endpoints` (indexes into `model.endpoints`); each selector is
    /// evaluated once per label set.
    pub fn selecting_any(&self, endpoints: impl IntoIterator<Item = usize>) -> Vec<bool> {
        let mut any = vec![false; self.selectors.len()];
        let mut seen: foldhash::HashSet<&Labels> = Default::default();
        for e in endpoints {
            let labels = &self.model.endpoints[e].labels;
            if seen.insert(labels) {
                let selected = self.selected(labels);
                any.iter_mut()
                    .zip(selected.iter())
                    .for_each(|(a, s)| *a |= s);
            }
        }
        self.selector_of.iter().map(|&s| any[s]).collect()
    }

    /// Whether each of the policies' distinct selectors matches `labels`.
    fn selected(&self, labels: &'m Labels) -> Arc<Vec<bool>> {
        if let Some(known) = lock(&self.selected).get(labels) {
            return known.clone();
        }
        let each: Vec<bool> = self.selectors.iter().map(|s| s.evaluate(labels)).collect();
        lock(&self.selected)
            .entry(labels)
            .or_insert_with(|| Arc::new(each))
            .clone()
    }

    /// The verdict of one end: the endpoint's policy for `direction` applied to
    /// a packet between `local` (the endpoint's IP) and `peer`.
    ///
    /// Panics if `endpoint_index` is not an index into `model.endpoints`.
    pub fn evaluate_end(
        &self,
        set: PolicySet,
        endpoint_index: usize,
        direction: Direction,
        peer: IpAddr,
        local: IpAddr,
        packet: &Packet,
    ) -> EndVerdict {
        let endpoint = &self.model.endpoints[endpoint_index];
        let (src, dst) = match direction {
            Direction::Ingress => (peer, local),
            Direction::Egress => (local, peer),
        };
        let matcher = RuleMatcher {
            model: self.model,
            ips: &self.ips,
            src,
            dst,
            packet,
        };
        let mut end = EndEvaluation::new(endpoint, direction);
        if let Some(verdict) = self.failsafe(endpoint, direction, peer, packet) {
            return end.finish(Verdict::Allow, verdict);
        }
        let tiers = self.applicable_policies(set, endpoint_index, direction);
        if let Some((action, by)) = self.evaluate_tiers(tiers, &matcher, &mut end) {
            return end.finish(action, by);
        }
        let (action, by) = self.evaluate_profiles(endpoint, &matcher, &mut end);
        end.finish(action, by)
    }

    /// Both ends of a flow, under the enforced and the pending set.
    pub fn evaluate_flow(&self, flow: &Flow) -> FlowVerdict {
        let source = self.endpoint_for_ip(flow.src);
        let destination = self.endpoint_for_ip(flow.dst);
        let outcome = |set| {
            let egress = source.map(|i| {
                self.evaluate_end(set, i, Direction::Egress, flow.dst, flow.src, &flow.packet)
            });
            let ingress = destination.map(|i| {
                self.evaluate_end(set, i, Direction::Ingress, flow.src, flow.dst, &flow.packet)
            });
            let allowed =
                |end: &Option<EndVerdict>| end.as_ref().is_none_or(|e| e.action == Verdict::Allow);
            let action = if allowed(&egress) && allowed(&ingress) {
                Verdict::Allow
            } else {
                Verdict::Deny
            };
            Outcome {
                action,
                egress,
                ingress,
            }
        };
        let key = |i: Option<usize>| i.map(|i| self.model.endpoints[i].key());
        FlowVerdict {
            flow: *flow,
            source_endpoint: key(source),
            destination_endpoint: key(destination),
            enforced: outcome(PolicySet::Enforced),
            pending: outcome(PolicySet::Pending),
        }
    }

    /// Host endpoints let failsafe traffic through before any policy: inbound
    /// entries for traffic to the host, outbound for traffic from it.
    fn failsafe(
        &self,
        endpoint: &Endpoint,
        direction: Direction,
        peer: IpAddr,
        packet: &Packet,
    ) -> Option<DecidedBy> {
        if endpoint.kind != EndpointKind::Host {
            return None;
        }
        let list = match direction {
            Direction::Ingress => &self.model.failsafes.inbound,
            Direction::Egress => &self.model.failsafes.outbound,
        };
        failsafe_match(list, packet, peer).map(|f| DecidedBy::Failsafe {
            protocol: f.protocol,
            port: f.port,
        })
    }

    /// The tiers in order (phase by phase). Returns the decision, or None when
    /// every tier passed (then the profiles decide).
    fn evaluate_tiers(
        &self,
        tiers: &[ApplicableTier],
        matcher: &RuleMatcher,
        end: &mut EndEvaluation,
    ) -> Option<(Verdict, DecidedBy)> {
        for tier in tiers {
            match self.first_decisive_rule(tier, matcher, end.direction) {
                Some((policy, index, Action::Pass)) => {
                    end.record_policy(tier, policy, TraceAction::Pass, index as i64);
                }
                Some((policy, index, action)) => {
                    let (verdict, traced) = if action == Action::Allow {
                        (Verdict::Allow, TraceAction::Allow)
                    } else {
                        (Verdict::Deny, TraceAction::Deny)
                    };
                    end.record_policy(tier, policy, traced, index as i64);
                    let by = DecidedBy::PolicyRule {
                        tier: tier.name.clone(),
                        policy: policy.id.clone(),
                        rule: index,
                    };
                    return Some((verdict, by));
                }
                // Untracked and pre-DNAT tiers without a decision pass on.
                None if tier.phase != Phase::Normal => {}
                None => {
                    // No rule decided: the tier's default, attributed to its last applicable policy.
                    let last = tier
                        .policies
                        .last()
                        .expect("applicable tiers are non-empty");
                    match tier.default_action {
                        TierDefault::Pass => {
                            end.record_policy(tier, last, TraceAction::Pass, END_OF_TIER_RULE)
                        }
                        TierDefault::Deny => {
                            end.record_policy(tier, last, TraceAction::Deny, END_OF_TIER_RULE);
                            let by = DecidedBy::EndOfTier {
                                tier: tier.name.clone(),
                                policy: last.id.clone(),
                            };
                            return Some((Verdict::Deny, by));
                        }
                    }
                }
            }
        }
        None
    }

    /// The first Allow, Deny or Pass rule in the tier that matches (Log rules only log).
    fn first_decisive_rule<'t>(
        &self,
        tier: &ApplicableTier<'t>,
        matcher: &RuleMatcher,
        direction: Direction,
    ) -> Option<(&'t Policy, usize, Action)> {
        tier.policies.iter().find_map(|policy| {
            let rules = policy.rules(direction);
            let decides =
                |&(_, rule): &(usize, &Rule)| rule.action != Action::Log && matcher.matches(rule);
            let decisive = match self.candidate_rules(policy, direction, matcher.src, matcher.dst) {
                Some(candidates) => candidates.into_iter().map(|i| (i, &rules[i])).find(decides),
                None => rules.iter().enumerate().find(decides),
            };
            decisive.map(|(index, rule)| (*policy, index, rule.action))
        })
    }

    /// After the tiers: the endpoint's profiles in order. A profile Pass counts
    /// as deny; no decision (or no profile) denies.
    fn evaluate_profiles(
        &self,
        endpoint: &Endpoint,
        matcher: &RuleMatcher,
        end: &mut EndEvaluation,
    ) -> (Verdict, DecidedBy) {
        for name in &endpoint.profiles {
            let rules = profile_rules(self.model, name, end.direction);
            for (index, rule) in rules.iter().enumerate() {
                if rule.action == Action::Log || !matcher.matches(rule) {
                    continue;
                }
                let (verdict, traced) = match rule.action {
                    Action::Allow => (Verdict::Allow, TraceAction::Allow),
                    Action::Pass => (Verdict::Deny, TraceAction::Pass),
                    _ => (Verdict::Deny, TraceAction::Deny),
                };
                end.record_profile(name, traced, index as i64);
                let by = DecidedBy::ProfileRule {
                    profile: name.clone(),
                    rule: index,
                };
                return (verdict, by);
            }
        }
        end.record_profile(NO_MATCH_PROFILE, TraceAction::Deny, 0);
        (Verdict::Deny, DecidedBy::NoMatch)
    }
}

/// The position in `model.policies` of one of its entries: prepared sets and
/// applicable tiers hold references into that vector, so the address says which.
/// None for a policy that is not an entry (then every rule is scanned: slower,
/// never a different verdict).
fn policy_position(model: &Model, policy: &Policy) -> Option<usize> {
    let offset = (policy as *const Policy as usize).wrapping_sub(model.policies.as_ptr() as usize);
    let position = offset / std::mem::size_of::<Policy>();
    model
        .policies
        .get(position)
        .is_some_and(|p| std::ptr::eq(p, policy))
        .then_some(position)
}

/// Rules of a profile in a direction. A `kns.<namespace>` profile that the
/// model does not define is Kubernetes' namespace profile: allow everything.
fn profile_rules<'m>(model: &'m Model, name: &str, direction: Direction) -> &'m [Rule] {
    static ALLOW_ALL: OnceLock<Vec<Rule>> = OnceLock::new();
    match model.profiles.iter().find(|p| p.name == name) {
        Some(profile) => match direction {
            Direction::Ingress => &profile.ingress,
            Direction::Egress => &profile.egress,
        },
        None if name.starts_with("kns.") => {
            ALLOW_ALL.get_or_init(|| vec![Rule::matching_all(Action::Allow)])
        }
        None => &[],
    }
}

fn applicable_tiers<'m>(
    prepared: &PreparedSet<'m>,
    endpoint: &Endpoint,
    direction: Direction,
    selects: impl Fn(&Policy) -> bool + Copy,
) -> Vec<ApplicableTier<'m>> {
    Phase::ALL
        .into_iter()
        .filter(|phase| phase.exists_for(endpoint, direction))
        .flat_map(|phase| {
            prepared.tiers.iter().filter_map(move |tier| {
                let policies: Vec<&Policy> = tier
                    .policies
                    .iter()
                    .copied()
                    .filter(|p| Phase::of(p) == phase)
                    .filter(|p| p.applies_in(direction) && selects(p))
                    .collect();
                (!policies.is_empty()).then(|| ApplicableTier {
                    phase,
                    name: tier.name.clone(),
                    default_action: tier.default_action,
                    policies,
                })
            })
        })
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The trace of one end under construction.
struct EndEvaluation {
    endpoint: String,
    direction: Direction,
    trace: Vec<TraceEntry>,
}

impl EndEvaluation {
    fn new(endpoint: &Endpoint, direction: Direction) -> Self {
        EndEvaluation {
            endpoint: endpoint.key(),
            direction,
            trace: Vec::new(),
        }
    }

    fn record_policy(
        &mut self,
        tier: &ApplicableTier,
        policy: &Policy,
        action: TraceAction,
        rule: i64,
    ) {
        self.trace.push(TraceEntry {
            index: self.trace.len(),
            tier: tier.name.clone(),
            kind_code: policy.id.kind.code(),
            namespace: policy.id.namespace.clone(),
            name: policy.id.name.clone(),
            action,
            rule,
        });
    }

    fn record_profile(&mut self, profile: &str, action: TraceAction, rule: i64) {
        self.trace.push(TraceEntry {
            index: self.trace.len(),
            tier: PROFILE_TIER.to_string(),
            kind_code: PROFILE_KIND_CODE,
            namespace: None,
            name: profile.to_string(),
            action,
            rule,
        });
    }

    fn finish(self, action: Verdict, decided_by: DecidedBy) -> EndVerdict {
        EndVerdict {
            endpoint: self.endpoint,
            direction: self.direction,
            action,
            decided_by,
            trace: self.trace,
        }
    }
}

/// One-off [`Evaluator::evaluate_end`] (prepares the model on every call).
pub fn evaluate_end(
    model: &Model,
    set: PolicySet,
    endpoint_index: usize,
    direction: Direction,
    peer: IpAddr,
    local: IpAddr,
    packet: &Packet,
) -> EndVerdict {
    Evaluator::new(model).evaluate_end(set, endpoint_index, direction, peer, local, packet)
}

/// One-off [`Evaluator::evaluate_flow`] (prepares the model on every call).
pub fn evaluate_flow(model: &Model, flow: &Flow) -> FlowVerdict {
    Evaluator::new(model).evaluate_flow(flow)
}

/// One-off [`Evaluator::applicable_policies`].
pub fn applicable_policies(
    model: &Model,
    set: PolicySet,
    endpoint_index: usize,
    direction: Direction,
) -> Vec<ApplicableTier<'_>> {
    let prepared = PreparedSet::new(model, set);
    let endpoint = &model.endpoints[endpoint_index];
    applicable_tiers(&prepared, endpoint, direction, |p| {
        p.selector.evaluate(&endpoint.labels)
    })
}

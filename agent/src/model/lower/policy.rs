//! Calico policies (one spec for the global, namespaced and staged kinds),
//! tiers and profiles.
use super::rule::{self, no_global, selector, RuleContext};
use super::{check_labels, fields, namespace_of, Issues, Lowered};
use crate::model::ir::{
    self, PolicyId, PolicyKind, StagedAction, Tier, TierDefault, LABEL_NAMESPACE,
    LABEL_SERVICE_ACCOUNT, NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX,
};
use crate::model::resources::{Object, PolicySpec, ProfileSpec, TierSpec};
use crate::selector::Selector;

/// Order of the policies Calico makes from Kubernetes NetworkPolicies.
pub const K8S_POLICY_ORDER: f64 = 1000.0;
pub const DEFAULT_TIER: &str = "default";

const DELETE_FIELD: &str = "spec.stagedAction";
const DELETE_MESSAGE: &str =
    "with stagedAction Delete every other spec field (except tier) must be \
     empty: the staged object only names the policy to delete";

/// The tiers Calico creates, used unless the datastore redefines them.
pub fn builtin_tiers() -> Vec<Tier> {
    let t = |name: &str, order: f64, default_action| Tier {
        name: name.into(),
        order: Some(order),
        default_action,
    };
    vec![
        t("kube-admin", 1000.0, TierDefault::Pass),
        t(DEFAULT_TIER, 1_000_000.0, TierDefault::Deny),
        t("kube-baseline", 10_000_000.0, TierDefault::Pass),
    ]
}

/// The names of the tiers a model has without any Tier resource.
pub fn is_builtin_tier(name: &str) -> bool {
    builtin_tiers().iter().any(|t| t.name == name)
}

/// Calico's `types` default: no egress rules -> Ingress; only egress rules -> Egress; both -> both.
pub fn default_types(has_ingress_rules: bool, has_egress_rules: bool) -> (bool, bool) {
    match (has_ingress_rules, has_egress_rules) {
        (_, false) => (true, false),
        (false, true) => (false, true),
        (true, true) => (true, true),
    }
}

/// A GlobalNetworkPolicy or NetworkPolicy (staged or not).
pub(super) fn calico(v: &mut Issues, o: &Object<PolicySpec>, kind: PolicyKind) -> Option<Lowered> {
    let id = PolicyId {
        kind,
        namespace: (!matches!(
            kind,
            PolicyKind::GlobalNetworkPolicy | PolicyKind::StagedGlobalNetworkPolicy
        ))
        .then(|| namespace_of(&o.metadata).to_string()),
        name: o.metadata.name.clone(),
    };
    from_spec(v, id, &o.spec, true).map(Lowered::Policy)
}

/// A policy from its spec; `capped`: Calico's caps on list lengths apply (not
/// to what a Kubernetes NetworkPolicy becomes).
pub(super) fn from_spec(
    v: &mut Issues,
    id: PolicyId,
    s: &PolicySpec,
    capped: bool,
) -> Option<ir::Policy> {
    let global = id.namespace.is_none();
    if let Some(t) = &s.tier {
        v.check("spec.tier", fields::check_label_name("tier", t));
    }
    order(v, s.order);
    let selectors = selectors(v, s, capped);
    let listed = types(v, &s.types);
    let staged_action = staged_action(v, &s.staged_action, id.kind.is_staged());
    if staged_action == Some(Some(StagedAction::Delete)) {
        staged_delete_spec_is_empty(v, s);
    }
    no_global(v, "spec.selector", &s.selector);
    if let Some(ns_selector) = &s.namespace_selector {
        no_global(v, "spec.namespaceSelector", ns_selector);
    }
    no_global(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
    );
    let ctx = RuleContext {
        namespace: id.namespace.as_deref(),
        profile: false,
        capped,
    };
    let ingress = rule::rules(v, "spec.ingress", &s.ingress, ctx);
    let egress = rule::rules(v, "spec.egress", &s.egress, ctx);
    unused_rules_warning(v, listed, s.ingress.len(), s.egress.len());
    if global {
        host_modes(v, s, listed);
    }
    let selector = policy_selector(v, id.namespace.as_deref(), s, selectors?)?;
    let (ingress_type, egress_type) =
        listed.unwrap_or_else(|| default_types(!s.ingress.is_empty(), !s.egress.is_empty()));
    Some(ir::Policy {
        tier: s.tier.clone().unwrap_or_else(|| DEFAULT_TIER.into()),
        order: s.order,
        selector,
        ingress_type,
        egress_type,
        ingress: ingress?,
        egress: egress?,
        staged_action: staged_action?,
        do_not_track: s.do_not_track.unwrap_or(false),
        pre_dnat: s.pre_dnat.unwrap_or(false),
        // Calico's update processor sets it for every namespaced policy.
        apply_on_forward: s.apply_on_forward.unwrap_or(false) || !global,
        id,
    })
}

fn order(v: &mut Issues, order: Option<f64>) {
    if order.is_some_and(|o| !o.is_finite()) {
        v.error("spec.order", "order must be a finite number");
    }
}

/// The policy's own selectors, each parsed: `selector`, `namespaceSelector`,
/// `serviceAccountSelector`.
struct Selectors {
    namespace: Option<Selector>,
    service_account: Selector,
}

fn selectors(v: &mut Issues, s: &PolicySpec, capped: bool) -> Option<Selectors> {
    let own = selector(v, "spec.selector", &s.selector, capped);
    let namespace = match &s.namespace_selector {
        Some(text) => selector(v, "spec.namespaceSelector", text, capped).map(Some),
        None => Some(None),
    };
    let service_account = selector(
        v,
        "spec.serviceAccountSelector",
        &s.service_account_selector,
        capped,
    );
    own?;
    Some(Selectors {
        namespace: namespace?,
        service_account: service_account?,
    })
}

/// selectors.go prefixAndAppendSelector: `(current) && <new with prefixed keys>`.
fn prefix_and_append(current: String, new: &Selector, prefix: &str) -> String {
    let prefixed = new.prefix_keys(prefix).to_string();
    if current.is_empty() {
        prefixed
    } else {
        format!("({current}) && {prefixed}")
    }
}

/// A policy's endpoint selector, built as Calico's update processors do.
///
/// A GlobalNetworkPolicy's, text substitutions included: after ANDing
/// `namespaceSelector`, every `all()` becomes `has(projectcalico.org/namespace)`;
/// after ANDing `serviceAccountSelector`, every `all()` becomes
/// `has(projectcalico.org/serviceaccount)`.
///
/// A namespaced policy's (networkpolicyprocessor.go):
/// `(selector) && projectcalico.org/namespace == '<ns>'`, then the prefixed
/// `serviceAccountSelector` (here without any `all()` substitution, as in Calico).
fn policy_selector(
    v: &mut Issues,
    namespace: Option<&str>,
    s: &PolicySpec,
    selectors: Selectors,
) -> Option<Selector> {
    let mut text = s.selector.clone();
    let has_sa = !s.service_account_selector.is_empty();
    let sa_substitution;
    match namespace {
        None => {
            let ns_selector = selectors.namespace.filter(|_| {
                s.namespace_selector
                    .as_deref()
                    .is_some_and(|t| !t.is_empty())
            });
            if let Some(ns) = ns_selector {
                text = prefix_and_append(text, &ns, NAMESPACE_LABEL_PREFIX)
                    .replace("all()", &format!("has({LABEL_NAMESPACE})"));
            }
            sa_substitution = true;
        }
        Some(ns) => {
            let scope = format!("{LABEL_NAMESPACE} == '{ns}'");
            text = if text.is_empty() {
                scope
            } else {
                format!("({text}) && {scope}")
            };
            sa_substitution = false;
        }
    }
    if has_sa {
        text = prefix_and_append(
            text,
            &selectors.service_account,
            SERVICE_ACCOUNT_LABEL_PREFIX,
        );
        if sa_substitution {
            text = text.replace("all()", &format!("has({LABEL_SERVICE_ACCOUNT})"));
        }
    }
    selector(v, "spec.selector", &text, false)
}

/// Checks `types`; returns which types it lists (when given).
fn types(v: &mut Issues, types: &Option<Vec<String>>) -> Option<(bool, bool)> {
    let types = types.as_ref()?;
    let (mut ingress, mut egress) = (false, false);
    for (i, t) in types.iter().enumerate() {
        let seen = match t.as_str() {
            "Ingress" => std::mem::replace(&mut ingress, true),
            "Egress" => std::mem::replace(&mut egress, true),
            _ => {
                v.error(
                    format!("spec.types[{i}]"),
                    format!("type `{t}` is not valid; accepted: Ingress, Egress"),
                );
                continue;
            }
        };
        if seen {
            v.error(
                format!("spec.types[{i}]"),
                format!("type `{t}` is listed twice"),
            );
        }
    }
    Some((ingress, egress))
}

/// `stagedAction`: Some(None) for an enforced kind without one, Some(Some(_))
/// for a staged kind (Set when unset, as Calico); None when wrong.
pub(super) fn staged_action(
    v: &mut Issues,
    action: &Option<String>,
    staged: bool,
) -> Option<Option<StagedAction>> {
    let action = match (action.as_deref(), staged) {
        (None, false) => return Some(None),
        (None, true) => return Some(Some(StagedAction::Set)),
        (Some(_), false) => {
            v.error(
                "spec.stagedAction",
                "stagedAction is only valid in staged kinds (StagedGlobalNetworkPolicy, \
                 StagedNetworkPolicy, StagedKubernetesNetworkPolicy)",
            );
            return None;
        }
        (Some(a), true) => a,
    };
    let parsed = match action {
        "Set" => StagedAction::Set,
        "Delete" => StagedAction::Delete,
        "Learn" => StagedAction::Learn,
        "Ignore" => StagedAction::Ignore,
        a => {
            v.error(
                "spec.stagedAction",
                format!("stagedAction `{a}` is not valid; accepted: Set, Delete, Learn, Ignore"),
            );
            return None;
        }
    };
    Some(Some(parsed))
}

/// A staged `Delete` names only what to delete: its spec must be empty but
/// for `tier` and `stagedAction` (an explicit `false` or `""` counts as empty).
fn staged_delete_spec_is_empty(v: &mut Issues, s: &PolicySpec) {
    let mut given = s.clone();
    given.do_not_track = given.do_not_track.filter(|b| *b);
    given.pre_dnat = given.pre_dnat.filter(|b| *b);
    given.apply_on_forward = given.apply_on_forward.filter(|b| *b);
    given.namespace_selector = given.namespace_selector.filter(|t| !t.is_empty());
    let empty = PolicySpec {
        tier: s.tier.clone(),
        staged_action: s.staged_action.clone(),
        ..Default::default()
    };
    staged_delete_is_empty(v, &given, &empty);
}

/// A staged `Delete`'s spec must equal `empty`.
pub(super) fn staged_delete_is_empty<T: std::fmt::Debug>(v: &mut Issues, spec: &T, empty: &T) {
    // Debug output compares every field, including ones added later.
    if format!("{empty:?}") != format!("{spec:?}") {
        v.error(DELETE_FIELD, DELETE_MESSAGE);
    }
}

fn unused_rules_warning(
    v: &mut Issues,
    listed: Option<(bool, bool)>,
    ingress: usize,
    egress: usize,
) {
    if let Some((has_ingress, has_egress)) = listed {
        if !has_ingress && ingress > 0 {
            v.warning(
                "spec.ingress",
                "ingress rules are ignored because `types` does not include Ingress",
            );
        }
        if !has_egress && egress > 0 {
            v.warning(
                "spec.egress",
                "egress rules are ignored because `types` does not include Egress",
            );
        }
    }
}

/// Calico validateGlobalNetworkPolicySpec: the host-endpoint-only modes.
fn host_modes(v: &mut Issues, s: &PolicySpec, listed: Option<(bool, bool)>) {
    let (do_not_track, pre_dnat) = (s.do_not_track == Some(true), s.pre_dnat == Some(true));
    if do_not_track && pre_dnat {
        v.error("spec.preDNAT", "preDNAT and doNotTrack cannot both be true");
    }
    if (do_not_track || pre_dnat) && s.apply_on_forward != Some(true) {
        v.error(
            "spec.applyOnForward",
            "applyOnForward must be true if either preDNAT or doNotTrack is true",
        );
    }
    if pre_dnat {
        if !s.egress.is_empty() {
            v.error("spec.egress", "a preDNAT policy cannot have egress rules");
        }
        if listed.is_some_and(|(_, egress)| egress) {
            v.error(
                "spec.types",
                "a preDNAT policy's types cannot include Egress",
            );
        }
    }
}

pub(super) fn tier(v: &mut Issues, name: &str, s: &TierSpec) -> Option<Tier> {
    order(v, s.order);
    // Calico pins the orders of the built-in tiers.
    if let Some(builtin) = builtin_tiers().into_iter().find(|t| t.name == name) {
        if s.order != builtin.order {
            v.error(
                "spec.order",
                format!(
                    "the {name} tier's order must be {}",
                    builtin.order.unwrap_or_default()
                ),
            );
        }
    }
    let default_action = match s.default_action.as_deref() {
        None | Some("Deny") => TierDefault::Deny,
        Some("Pass") => TierDefault::Pass,
        Some(a) => {
            v.error(
                "spec.defaultAction",
                format!("defaultAction `{a}` is not valid; accepted: Deny, Pass"),
            );
            return None;
        }
    };
    Some(Tier {
        name: name.into(),
        order: s.order,
        default_action,
    })
}

pub(super) fn profile(v: &mut Issues, name: &str, s: &ProfileSpec) -> Option<ir::Profile> {
    let ctx = RuleContext {
        namespace: None,
        profile: true,
        capped: true,
    };
    let ingress = rule::rules(v, "spec.ingress", &s.ingress, ctx);
    let egress = rule::rules(v, "spec.egress", &s.egress, ctx);
    check_labels(v, "spec.labelsToApply", &s.labels_to_apply);
    Some(ir::Profile {
        name: name.into(),
        ingress: ingress?,
        egress: egress?,
        labels_to_apply: s.labels_to_apply.clone(),
    })
}

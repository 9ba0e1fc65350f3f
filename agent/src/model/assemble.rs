//! Lowered documents -> [`ir::Model`]: what needs more than one document
//! (Calico's calculation graph): namespace and service-account labels, the
//! `kns.<namespace>` profiles, labels inherited from profiles, tier order.
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::ir::*;
use super::lower::{builtin_tiers, Lowered, Workload};

/// Label Calico puts on a namespace's / service account's profile (`pcns.`/`pcsa.` prefixed).
pub const LABEL_NAME: &str = "projectcalico.org/name";
/// The label Kubernetes puts on every Namespace: its name.
const K8S_NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// What documents contribute to other documents.
#[derive(Clone, Default, PartialEq)]
struct Context {
    namespaces: BTreeMap<String, Labels>,
    service_accounts: BTreeMap<(String, String), Labels>,
    profiles: BTreeMap<String, Profile>,
}

/// Builds the model from lowered documents (in load order; iterated a few
/// times, so a cheap iterator over references).
pub fn to_model<'a, I>(documents: I) -> Model
where
    I: IntoIterator<Item = &'a Lowered> + Clone,
{
    build(documents, |cx, _, w| Arc::new(workload(cx, w))).0
}

/// Each workload's endpoint as the last model built with this cache has it
/// (labels from its namespace, service account and profiles: the costly part
/// of the model), with the context it was made in. Kept between the loads of
/// a datastore: a load where only a few documents changed makes only their
/// endpoints again.
#[derive(Default)]
pub struct Cache {
    context: Context,
    /// By the address of the document's lowered form, which the entry holds
    /// (so the address cannot be reused by another document meanwhile).
    endpoints: foldhash::HashMap<usize, (Arc<Lowered>, Arc<Endpoint>)>,
    /// The node the endpoints are made for: other nodes' workload endpoints
    /// are made without an interface (peers), as `node::keep_this_node`
    /// leaves them, so that it need not copy the shared records to change them.
    node: Option<String>,
}

impl Cache {
    /// Makes the next models' endpoints for `node` (None: as their documents
    /// say); the endpoints made for another node are forgotten.
    pub fn on_node(&mut self, node: Option<&str>) {
        if self.node.as_deref() != node {
            self.endpoints.clear();
            self.node = node.map(str::to_string);
        }
    }
}

/// [`to_model`] with `cache`: a workload whose document (the same `Arc`) was
/// in the last model, made in the same context, gets its endpoint from there.
/// The model is the same as [`to_model`]'s.
pub fn to_model_cached<'a, I>(documents: I, cache: &mut Cache) -> Model
where
    I: IntoIterator<Item = &'a Arc<Lowered>> + Clone,
{
    let mut previous = std::mem::take(&mut cache.endpoints);
    let mut kept = foldhash::HashMap::default();
    kept.reserve(previous.len());
    // Whether the context is the last model's (compared once: it is the same
    // for every workload of a build).
    let mut same_context = None;
    let node = cache.node.clone();
    let make = |cx: &Context, w: &Workload| {
        let mut e = Arc::new(workload(cx, w));
        if node
            .as_deref()
            .is_some_and(|n| super::node::elsewhere(&e, n))
        {
            super::node::as_peer(&mut e);
        }
        e
    };
    let (model, cx) = build(documents, |cx, doc: &Arc<Lowered>, w| {
        let key = Arc::as_ptr(doc) as usize;
        let same = *same_context.get_or_insert_with(|| cx == &cache.context);
        let (doc, endpoint) = match previous.remove(&key) {
            Some(entry) if same => entry,
            _ => (doc.clone(), make(cx, w)),
        };
        kept.insert(key, (doc, endpoint.clone()));
        endpoint
    });
    cache.context = cx;
    cache.endpoints = kept;
    model
}

/// The model, and the context it was made in; `endpoint` makes a workload's
/// endpoint (from the context, the document and its workload).
fn build<'a, I, D>(
    documents: I,
    mut endpoint: impl FnMut(&Context, &D, &Workload) -> Arc<Endpoint>,
) -> (Model, Context)
where
    I: IntoIterator<Item = &'a D> + Clone,
    D: Borrow<Lowered> + 'a,
{
    let lowered = || documents.clone().into_iter().map(Borrow::borrow);
    let mut cx = context(lowered());
    namespace_profiles(&mut cx, lowered());
    let mut model = Model {
        services: super::services::collect(lowered()),
        ..Model::default()
    };
    let mut tiers: BTreeMap<String, Tier> = builtin_tiers()
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    for doc in documents {
        match doc.borrow() {
            Lowered::Tier(t) => {
                tiers.insert(t.name.clone(), t.clone());
            }
            Lowered::Policy(p) => model.policies.push(p.clone()),
            // Calico leaves out workloads without addresses (nothing to render yet).
            Lowered::Workload(w) if w.endpoint.ips.is_empty() => {}
            Lowered::Workload(w) => model.endpoints.push(endpoint(&cx, doc, w)),
            Lowered::Host(h) => {
                let mut h = h.clone();
                h.labels = with_inherited(h.labels, &h.profiles, &cx.profiles);
                model.endpoints.push(Arc::new(h));
            }
            Lowered::NetworkSet(s) => model.network_sets.push(network_set(&cx, s)),
            Lowered::Profile(_)
            | Lowered::Namespace { .. }
            | Lowered::ServiceAccount { .. }
            | Lowered::Service(_)
            | Lowered::Backends { .. } => {}
        }
    }

    let mut tiers: Vec<Tier> = tiers.into_values().collect();
    // Calico's tier order: by order (unset last), then name.
    tiers.sort_by(|a, b| {
        let key = |t: &Tier| t.order.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
    });
    model.tiers = tiers;
    model.namespaces = cx.namespaces.keys().cloned().collect();
    model.profiles = cx.profiles.values().cloned().collect();
    model.failsafes = Failsafes::default();
    super::names::unique_pod_addresses(&mut model.endpoints);
    super::services::resolve_rules(&mut model);
    (model, cx)
}

fn context<'a>(documents: impl IntoIterator<Item = &'a Lowered>) -> Context {
    let mut cx = Context::default();
    for d in documents {
        match d {
            Lowered::Namespace { name, labels } => {
                cx.namespaces.insert(name.clone(), labels.clone());
            }
            Lowered::ServiceAccount {
                namespace,
                name,
                labels,
            } => {
                let key = (namespace.clone(), name.clone());
                cx.service_accounts.insert(key, labels.clone());
            }
            Lowered::Profile(p) => {
                cx.profiles.insert(p.name.clone(), p.clone());
            }
            _ => {}
        }
    }
    cx
}

/// Every workload without explicit profiles uses kns.<namespace>; Calico makes
/// that profile from the Namespace: allow everything, apply the pcns.* labels.
/// A `kns.<ns>` profile an endpoint names explicitly is also Calico's namespace profile.
fn namespace_profiles<'a>(cx: &mut Context, documents: impl IntoIterator<Item = &'a Lowered>) {
    let mut needed = BTreeSet::new();
    for d in documents {
        let profiles = match d {
            Lowered::Workload(w) => &w.endpoint.profiles,
            Lowered::Host(h) => &h.profiles,
            _ => continue,
        };
        needed.extend(profiles.iter().filter_map(|p| p.strip_prefix("kns.")));
    }
    for ns in needed {
        let name = format!("kns.{ns}");
        let allow_all = || vec![Rule::matching_all(Action::Allow)];
        let labels_to_apply = namespace_labels(ns, &cx.namespaces);
        cx.profiles.entry(name.clone()).or_insert_with(|| Profile {
            name,
            ingress: allow_all(),
            egress: allow_all(),
            labels_to_apply,
        });
    }
}

fn prefixed(prefix: &str, labels: &Labels) -> Labels {
    labels
        .iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect()
}

/// Labels a namespace contributes: `pcns.<label>` and `pcns.projectcalico.org/name`.
fn namespace_labels(ns: &str, namespaces: &BTreeMap<String, Labels>) -> Labels {
    let mut l = namespaces
        .get(ns)
        .map(|l| prefixed(NAMESPACE_LABEL_PREFIX, l))
        .unwrap_or_default();
    l.insert(format!("{NAMESPACE_LABEL_PREFIX}{LABEL_NAME}"), ns.into());
    // The API server (1.21+) sets it on every Namespace; older servers and
    // hand-written datastores do not, and the most common namespaceSelector
    // would then match nothing.
    l.entry(format!(
        "{NAMESPACE_LABEL_PREFIX}{K8S_NAMESPACE_NAME_LABEL}"
    ))
    .or_insert_with(|| ns.into());
    l
}

/// Own labels win over inherited ones; earlier profiles over later ones.
fn with_inherited(own: Labels, profiles: &[String], by_name: &BTreeMap<String, Profile>) -> Labels {
    let mut labels = Labels::new();
    for p in profiles.iter().rev() {
        if let Some(p) = by_name.get(p) {
            labels.extend(p.labels_to_apply.clone());
        }
    }
    labels.extend(own);
    labels
}

/// A workload's full label set: namespace labels, service-account labels,
/// its own, then what its profiles apply (under its own).
fn workload(cx: &Context, w: &Workload) -> Endpoint {
    let mut e = w.endpoint.clone();
    let ns = e.namespace.clone().unwrap_or_default();
    let mut own = namespace_labels(&ns, &cx.namespaces);
    if let Some(sa) = &w.service_account {
        if let Some(l) = cx.service_accounts.get(&(ns.clone(), sa.clone())) {
            own.extend(prefixed(SERVICE_ACCOUNT_LABEL_PREFIX, l));
        }
        own.insert(
            format!("{SERVICE_ACCOUNT_LABEL_PREFIX}{LABEL_NAME}"),
            sa.clone(),
        );
        own.insert(LABEL_SERVICE_ACCOUNT.into(), sa.clone());
    }
    own.append(&mut e.labels);
    own.insert(LABEL_NAMESPACE.into(), ns);
    own.insert(LABEL_ORCHESTRATOR.into(), w.orchestrator.clone());
    e.labels = with_inherited(own, &e.profiles, &cx.profiles);
    e
}

/// A namespaced set also has the namespace's labels and `projectcalico.org/namespace`.
fn network_set(cx: &Context, s: &NetworkSet) -> NetworkSet {
    let mut s = s.clone();
    if let Some(ns) = &s.namespace {
        let mut labels = namespace_labels(ns, &cx.namespaces);
        labels.append(&mut s.labels);
        labels.insert(LABEL_NAMESPACE.into(), ns.clone());
        s.labels = labels;
    }
    s
}

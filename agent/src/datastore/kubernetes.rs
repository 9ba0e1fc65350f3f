//! The Kubernetes datastore: kube-rs watchers on the API server.
//!
//! Watched (cluster-wide, list + watch, re-listed after 410 Gone and API-server
//! restarts, retried with [`WatchBackoff`]: 0.5 s doubling to at most 5 s, jittered):
//! - Calico's GlobalNetworkPolicy, NetworkPolicy, StagedGlobalNetworkPolicy,
//!   StagedNetworkPolicy, StagedKubernetesNetworkPolicy, Tier, GlobalNetworkSet,
//!   NetworkSet, HostEndpoint, from one of two API groups ([`CalicoApi`]):
//!   projectcalico.org/v3 (Calico's API server, or CRDs of that group) or
//!   crd.projectcalico.org/v1 (the CRDs Calico itself stores them in);
//! - networking.k8s.io/v1 NetworkPolicy; v1 Namespace, ServiceAccount, Pod.
//!
//! How objects become model input: every object is reduced to the document a
//! user would write in the files datastore (apiVersion, kind, metadata.name,
//! namespace and labels, spec) and a Pod to a projectcalico.org/v3
//! WorkloadEndpoint (labels, service account, `status.podIPs`, named container
//! ports). The documents go through [`crate::model::load::load_values`], the same
//! checks and model as files (as JSON values: no text round trip), so a rejected object is reported (with
//! `kubernetes:Kind/ns/name` as its "file") exactly as a rejected file document,
//! and the daemon's keep-last-good, compile and install path is shared.
//!
//! crd.projectcalico.org/v1 objects: the spec is the projectcalico.org/v3 spec
//! (Calico's backend stores the v3 type in the CRD), so the document is the same
//! with apiVersion projectcalico.org/v3; namespaced kinds keep their namespace.
//! Only policy names differ, see [`v3_policy_name`].
//!
//! Only pods with `spec.nodeName` == this node (and host endpoints with
//! `spec.node` == this node) keep an interface, so only they are enforced here;
//! every other pod is a peer (labels and IPs). A local pod's interface is the
//! one its host route (`/32` or `/128` to a pod IP, read from the routing table of
//! the agent's network namespace) goes through, CNI-neutral; without one, Calico's
//! name: `cali` + the first 11 hex digits of sha1("<namespace>.<pod>").
//!
//! Pods are stored lean ([`PodInfo`]): only the fields above, not the Pod object.
//! Until a kind's first list completes its previous contents (none at start) are
//! kept; a re-list replaces a kind's contents atomically at its end, so during an
//! API-server outage the last state stays enforced.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use tokio::sync::mpsc;

use super::calico_api::Choice;
pub use super::calico_api::{choose_calico_group, resolve_calico_api};
use crate::model::ir::EndpointKind;
use crate::model::load::load_values;
use crate::model::Loaded;

/// How long the first build waits for every kind's initial list (a kind whose
/// CRD is not installed never lists; the agent then starts without it).
pub const INITIAL_SYNC: Duration = Duration::from_secs(10);
/// How often local pods' interfaces are re-resolved from the routing table.
pub const ROUTE_POLL: Duration = Duration::from_secs(1);
/// Quiet time after the last change before rebuilding.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The first retry delay of a failing watch.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest retry delay of a failing watch: after an API-server outage the
/// view is current again within this (plus a re-list) of the server's return.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Retry delays of a failing watch: [`BACKOFF_MIN`] doubling up to
/// [`BACKOFF_MAX`], each drawn uniformly from [d/2, d] so that the watchers of
/// many nodes do not retry in step (kube-rs' default goes up to 30 s). Reset by
/// the first event after a failure.
#[derive(Debug)]
pub struct WatchBackoff {
    step: Duration,
    rng: u64,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0);
        WatchBackoff {
            step: BACKOFF_MIN,
            rng: h.finish() | 1,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        // xorshift64: enough for jitter.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng >> 11) as f64 / (1u64 << 53) as f64;
        let d = self.step.mul_f64(0.5 + 0.5 * frac);
        self.step = (self.step * 2).min(BACKOFF_MAX);
        Some(d)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.step = BACKOFF_MIN;
    }
}

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node's name (pods with this `spec.nodeName` are enforced here).
    pub node: String,
    /// Kubeconfig file; `None`: the in-cluster config or `$KUBECONFIG` / ~/.kube/config.
    pub kubeconfig: Option<PathBuf>,
    /// Where Calico's resources are read from.
    pub calico_api: CalicoApi,
}

/// A watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// The group Calico's own API server serves (and the test/deploy CRDs use).
pub const V3_GROUP: &str = "projectcalico.org";
/// The group of the CRDs Calico stores its resources in.
pub const CRD_GROUP: &str = "crd.projectcalico.org";

const fn calico(kind: &'static str, plural: &'static str, namespaced: bool) -> Kind {
    Kind {
        group: V3_GROUP,
        version: "v3",
        kind,
        plural,
        namespaced,
    }
}

const fn crd(kind: &'static str, plural: &'static str, namespaced: bool) -> Kind {
    Kind {
        group: CRD_GROUP,
        version: "v1",
        kind,
        plural,
        namespaced,
    }
}

const K8S_NETWORK_POLICY: Kind = Kind {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    namespaced: true,
};
const NAMESPACE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
const SERVICE_ACCOUNT: Kind = Kind {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    namespaced: true,
};

/// Every kind read besides Pods (which are reduced to [`PodInfo`]), with
/// Calico's kinds from projectcalico.org/v3.
pub const KINDS: &[Kind] = &[
    calico("GlobalNetworkPolicy", "globalnetworkpolicies", false),
    calico("NetworkPolicy", "networkpolicies", true),
    calico(
        "StagedGlobalNetworkPolicy",
        "stagedglobalnetworkpolicies",
        false,
    ),
    calico("StagedNetworkPolicy", "stagednetworkpolicies", true),
    calico(
        "StagedKubernetesNetworkPolicy",
        "stagedkubernetesnetworkpolicies",
        true,
    ),
    calico("Tier", "tiers", false),
    calico("GlobalNetworkSet", "globalnetworksets", false),
    calico("NetworkSet", "networksets", true),
    calico("HostEndpoint", "hostendpoints", false),
    K8S_NETWORK_POLICY,
    NAMESPACE,
    SERVICE_ACCOUNT,
];

/// [`KINDS`] with Calico's kinds from crd.projectcalico.org/v1.
pub const CRD_KINDS: &[Kind] = &[
    crd("GlobalNetworkPolicy", "globalnetworkpolicies", false),
    crd("NetworkPolicy", "networkpolicies", true),
    crd(
        "StagedGlobalNetworkPolicy",
        "stagedglobalnetworkpolicies",
        false,
    ),
    crd("StagedNetworkPolicy", "stagednetworkpolicies", true),
    crd(
        "StagedKubernetesNetworkPolicy",
        "stagedkubernetesnetworkpolicies",
        true,
    ),
    crd("Tier", "tiers", false),
    crd("GlobalNetworkSet", "globalnetworksets", false),
    crd("NetworkSet", "networksets", true),
    crd("HostEndpoint", "hostendpoints", false),
    K8S_NETWORK_POLICY,
    NAMESPACE,
    SERVICE_ACCOUNT,
];

/// Where Calico's resources are read from (`agent run`) and written to (`agent promote`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CalicoApi {
    /// projectcalico.org/v3: Calico's API server (or CRDs of that group).
    V3,
    /// crd.projectcalico.org/v1: the CRDs Calico stores its resources in (no API server needed).
    Crd,
    /// v3 if the API server serves it, else crd.projectcalico.org/v1 if it is
    /// installed; an error naming both if neither is.
    #[default]
    Auto,
}

/// A resolved [`CalicoApi`]: the group Calico's kinds are read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CalicoGroup {
    #[default]
    V3,
    CrdV1,
}

impl CalicoGroup {
    /// Every kind read, Calico's from this group.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Self::V3 => KINDS,
            Self::CrdV1 => CRD_KINDS,
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::V3 => "projectcalico.org/v3",
            Self::CrdV1 => "crd.projectcalico.org/v1",
        }
    }

    /// The kind `kind` of Calico's (or, for `networking.k8s.io/...`, Kubernetes') in this group.
    pub fn kind(self, kind: &str) -> Kind {
        let (group, kind) = match kind.strip_prefix("networking.k8s.io/") {
            Some(k) => ("networking.k8s.io", k),
            None => (
                match self {
                    Self::V3 => V3_GROUP,
                    Self::CrdV1 => CRD_GROUP,
                },
                kind,
            ),
        };
        *self
            .kinds()
            .iter()
            .find(|k| k.group == group && k.kind == kind)
            .unwrap_or_else(|| panic!("unknown kind {group}/{kind}"))
    }
}

impl std::fmt::Display for CalicoGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.api_version())
    }
}

/// The projectcalico.org/v3 name of a policy stored in crd.projectcalico.org/v1
/// as `stored`, in tier `tier` (`spec.tier`, unset = `default`).
///
/// What Calico does (libcalico-go, checked against its source and release notes):
/// - up to v3.28 its v3 client stored `<name>` as `default.<name>` and read it
///   back by removing everything up to the first dot (`knp.` and `ossg.` names,
///   which Calico generates, untouched);
/// - v3.29 (tiers in open source) stores `names.TieredPolicyName`: a name
///   without a dot gets `default.`; a policy in another tier must be named
///   `<tier>.<name>` and is stored as is. Reading, `ClientTieredPolicyName`
///   removes only a `default.` prefix (v3.29.0-3 showed it; v3.29.4/v3.30 remove
///   it again unless the policy was created with it);
/// - later releases stop requiring the tier prefix and store names as given.
///
/// So: a name starting with `default.` in the default tier loses that prefix;
/// every other name (other tiers' `<tier>.<name>`, names stored without a prefix,
/// Calico-generated `knp.`/`ossg.`/`kcnp.` names) is its v3 name unchanged. Not
/// reproduced: a default-tier policy deliberately created as `default.<name>`
/// through a v3.29.4+ API server shows there as `default.<name>`, here as `<name>`.
pub fn v3_policy_name<'a>(stored: &'a str, tier: Option<&str>) -> &'a str {
    let tier = tier.filter(|t| !t.is_empty()).unwrap_or("default");
    if tier != "default" {
        return stored;
    }
    match stored.strip_prefix("default.") {
        Some(rest) if !rest.is_empty() => rest,
        _ => stored,
    }
}

/// Kinds whose names follow Calico's tiered policy naming in crd.projectcalico.org/v1.
pub fn tiered_name(kind: &Kind) -> bool {
    kind.group == CRD_GROUP
        && matches!(
            kind.kind,
            "GlobalNetworkPolicy"
                | "NetworkPolicy"
                | "StagedGlobalNetworkPolicy"
                | "StagedNetworkPolicy"
        )
}

/// The name an object has in the model (projectcalico.org/v3 terms).
pub fn model_name(kind: &Kind, o: &DynamicObject) -> String {
    let name = o.name_any();
    if tiered_name(kind) {
        let tier = o.data["spec"]["tier"].as_str();
        v3_policy_name(&name, tier).to_string()
    } else {
        name
    }
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `group/Kind`, unique among [`KINDS`] (Calico's and Kubernetes' NetworkPolicy differ).
    pub fn label(&self) -> String {
        format!("{}/{}", self.group, self.kind)
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// What is kept of a Pod (all pods of the cluster are kept: peers need labels and IPs).
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub local: bool,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub service_account: Option<Box<str>>,
    pub ips: Box<[IpAddr]>,
    /// Named container ports: (name, IP protocol number, port).
    pub ports: Box<[(Box<str>, u8, u16)]>,
}

impl PodInfo {
    /// Reduces a Pod; `None` for pods that get no workload endpoint (host
    /// network, finished, or no IP yet).
    pub fn from_pod(pod: &Pod, node: &str) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let mut ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                    "UDP" => 17,
                    "SCTP" => 132,
                    _ => 6,
                };
                if let Ok(port) = u16::try_from(p.container_port) {
                    ports.push((name.into(), proto, port));
                }
            }
        }
        Some(PodInfo {
            local: spec.node_name.as_deref() == Some(node),
            labels,
            service_account: spec
                .service_account_name
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Into::into),
            ips: ips.into(),
            ports: ports.into(),
        })
    }

    /// Heap and inline bytes of this record (for sizing the cluster-wide view).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .labels
                .iter()
                .map(|(k, v)| std::mem::size_of::<(Box<str>, Box<str>)>() + k.len() + v.len())
                .sum::<usize>()
            + self.service_account.as_ref().map_or(0, |s| s.len())
            + self.ips.len() * std::mem::size_of::<IpAddr>()
            + self
                .ports
                .iter()
                .map(|(n, _, _)| std::mem::size_of::<(Box<str>, u8, u16)>() + n.len())
                .sum::<usize>()
    }
}

/// `(namespace, name)`; namespace empty for cluster-scoped kinds.
type Key = (String, String);

#[derive(Default)]
struct State {
    /// Cleaned documents by kind label.
    docs: BTreeMap<String, BTreeMap<Key, Value>>,
    pods: BTreeMap<Key, PodInfo>,
    /// Kinds whose first list completed.
    synced: BTreeSet<String>,
    /// Interfaces of local pods used by the last build (to notice route changes).
    interfaces: BTreeMap<Key, String>,
    /// Kinds whose watch is failing now, with the error.
    failing: BTreeMap<String, String>,
    /// How Calico's group was chosen (`--calico-api`), for the status.
    calico_api: Choice,
}

/// The running watchers and their view of the cluster.
pub struct KubeDatastore {
    node: String,
    group: CalicoGroup,
    state: Arc<Mutex<State>>,
    rx: mpsc::UnboundedReceiver<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cheap handle that builds the model from the current view (for a blocking task).
#[derive(Clone)]
pub struct KubeSnapshot {
    node: String,
    group: CalicoGroup,
    state: Arc<Mutex<State>>,
}

impl KubeSnapshot {
    pub fn load(&self) -> Loaded {
        build(&self.node, &self.state)
    }

    /// A view holding only `pods` (`(namespace, name)` -> pod), with no
    /// watchers: the rebuild measured and tested offline.
    pub fn from_pods(
        node: &str,
        pods: impl IntoIterator<Item = ((String, String), PodInfo)>,
    ) -> KubeSnapshot {
        let state = State {
            pods: pods.into_iter().collect(),
            ..State::default()
        };
        KubeSnapshot {
            node: node.to_string(),
            group: CalicoGroup::V3,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// `kubernetes (node N, Calico API G: why)`, for the status.
    pub fn describe(&self) -> String {
        let why = lock(&self.state).calico_api.why.clone();
        format!(
            "kubernetes (node {}, Calico API {}: {why})",
            self.node, self.group
        )
    }

    /// Kinds (labels) whose first list has not completed.
    pub fn unsynced(&self) -> Vec<String> {
        unsynced(self.group, &self.state)
    }

    /// Kinds not listed yet and failing watches, one line each.
    pub fn problems(&self) -> Vec<String> {
        let st = lock(&self.state);
        let mut out: Vec<String> = self
            .group
            .kinds()
            .iter()
            .map(Kind::label)
            .chain(["Pod".to_string()])
            .filter(|k| !st.synced.contains(k) && !st.failing.contains_key(k))
            .map(|k| format!("{k}: not listed yet"))
            .collect();
        out.extend(
            st.failing
                .iter()
                .map(|(k, e)| format!("{k}: watch failing, retrying (last state kept): {e}")),
        );
        out.extend(st.calico_api.unread.iter().map(|p| {
            format!(
                "{p}: held only by the Calico API group not read ({} is), NOT enforced; \
                 choose with --calico-api",
                self.group
            )
        }));
        out
    }
}

fn unsynced(group: CalicoGroup, state: &Mutex<State>) -> Vec<String> {
    let st = lock(state);
    group
        .kinds()
        .iter()
        .map(Kind::label)
        .chain(["Pod".to_string()])
        .filter(|k| !st.synced.contains(k))
        .collect()
}

pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig (in-cluster config, $KUBECONFIG or ~/.kube/config)")?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

impl KubeDatastore {
    /// Connects, starts every watcher and waits (up to [`INITIAL_SYNC`]) for
    /// their first lists.
    pub async fn start(opts: &KubeOptions) -> anyhow::Result<KubeDatastore> {
        let client = client(opts.kubeconfig.as_deref()).await?;
        let choice = resolve_calico_api(&client, opts.calico_api, INITIAL_SYNC).await?;
        let group = choice.group;
        let state = Arc::new(Mutex::new(State {
            calico_api: choice,
            ..State::default()
        }));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for kind in group.kinds() {
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
            let k = *kind;
            tasks.push(tokio::spawn(watch(
                api,
                kind.label(),
                state.clone(),
                tx.clone(),
                move |o: DynamicObject| Some(Stored::Doc(document(&k, &o))),
            )));
        }
        let node = opts.node.clone();
        let pods: Api<Pod> = Api::all(client.clone());
        tasks.push(tokio::spawn(watch(
            pods,
            "Pod".into(),
            state.clone(),
            tx.clone(),
            move |p: Pod| PodInfo::from_pod(&p, &node).map(Stored::Pod),
        )));
        // Routes change without any API event (the CNI adds the veth after the pod
        // object has its IP): rebuild when a local pod's interface would change.
        {
            let (state, tx, node) = (state.clone(), tx.clone(), opts.node.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(ROUTE_POLL);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let routes = host_routes();
                    let st = lock(&state);
                    let now = local_interfaces(&st, &routes);
                    if now != st.interfaces {
                        tracing::info!(node, "a local pod's host route changed");
                        let _ = tx.send(());
                    }
                }
            }));
        }
        let ds = KubeDatastore {
            node: opts.node.clone(),
            group,
            state,
            rx,
            tasks,
        };
        let deadline = tokio::time::Instant::now() + INITIAL_SYNC;
        loop {
            let missing = ds.unsynced();
            if missing.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    kinds = ?missing,
                    "no initial list yet (CRD not installed, no permission or API server \
                     unreachable); starting without them, they load when they list"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ds)
    }

    /// Kinds (labels) whose first list has not completed.
    pub fn unsynced(&self) -> Vec<String> {
        unsynced(self.group, &self.state)
    }

    pub fn snapshot(&self) -> KubeSnapshot {
        KubeSnapshot {
            node: self.node.clone(),
            group: self.group,
            state: self.state.clone(),
        }
    }

    pub fn load(&self) -> Loaded {
        self.snapshot().load()
    }

    /// Waits for the next change and then for [`DEBOUNCE`] of quiet.
    pub async fn next(&mut self) -> Option<()> {
        self.rx.recv().await?;
        loop {
            match tokio::time::timeout(DEBOUNCE, self.rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum Stored {
    Doc(Value),
    Pod(PodInfo),
}

fn key_of<K: kube::Resource>(o: &K) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

fn put(st: &mut State, label: &str, key: Key, v: Option<Stored>) {
    match v {
        Some(Stored::Doc(d)) => {
            st.docs.entry(label.to_string()).or_default().insert(key, d);
        }
        Some(Stored::Pod(p)) => {
            st.pods.insert(key, p);
        }
        None => {
            st.docs.entry(label.to_string()).or_default().remove(&key);
            st.pods.remove(&key);
        }
    }
}

/// Runs one kind's watcher forever, keeping its part of the state.
async fn watch<K, F>(
    api: Api<K>,
    label: String,
    state: Arc<Mutex<State>>,
    tx: mpsc::UnboundedSender<()>,
    convert: F,
) where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    F: Fn(K) -> Option<Stored>,
{
    let stream = watcher::watcher(api, watcher::Config::default()).backoff(WatchBackoff::default());
    futures::pin_mut!(stream);
    let mut buffer: Option<Vec<(Key, Stored)>> = None;
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if !failing {
                    tracing::warn!(kind = %label, error = %e, "watch failed; retrying with backoff, the last state stays enforced");
                }
                failing = true;
                lock(&state).failing.insert(label.clone(), e.to_string());
                continue;
            }
        };
        if failing {
            tracing::info!(kind = %label, "watch recovered");
            lock(&state).failing.remove(&label);
            failing = false;
        }
        match ev {
            Event::Init => buffer = Some(Vec::new()),
            Event::InitApply(o) => {
                let key = key_of(&o);
                if let Some(v) = convert(o) {
                    buffer.get_or_insert_with(Vec::new).push((key, v));
                }
            }
            Event::InitDone => {
                let items = buffer.take().unwrap_or_default();
                let mut st = lock(&state);
                if label == "Pod" {
                    st.pods.clear();
                } else {
                    st.docs.insert(label.clone(), BTreeMap::new());
                }
                let n = items.len();
                for (k, v) in items {
                    put(&mut st, &label, k, Some(v));
                }
                let first = st.synced.insert(label.clone());
                drop(st);
                tracing::debug!(kind = %label, objects = n, first, "listed");
                let _ = tx.send(());
            }
            Event::Apply(o) => {
                let key = key_of(&o);
                let v = convert(o);
                put(&mut lock(&state), &label, key, v);
                let _ = tx.send(());
            }
            Event::Delete(o) => {
                let key = key_of(&o);
                put(&mut lock(&state), &label, key, None);
                let _ = tx.send(());
            }
        }
    }
}

/// The document a user would write for this object: apiVersion, kind,
/// metadata (name, namespace, labels) and spec. Server-set metadata, status
/// and annotations are dropped (they do not affect policy). Calico's
/// crd.projectcalico.org/v1 objects become their projectcalico.org/v3 document
/// (see [`model_name`]).
pub fn document(kind: &Kind, o: &DynamicObject) -> Value {
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), json!(model_name(kind, o)));
    if kind.namespaced {
        if let Some(ns) = &o.metadata.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    if let Some(labels) = o.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), json!(labels));
    }
    let mut doc = serde_json::Map::new();
    let api_version = if kind.group == CRD_GROUP {
        "projectcalico.org/v3".to_string()
    } else {
        kind.api_version()
    };
    doc.insert("apiVersion".into(), json!(api_version));
    doc.insert("kind".into(), json!(kind.kind));
    doc.insert("metadata".into(), Value::Object(meta));
    if let Some(spec) = o.data.get("spec") {
        doc.insert("spec".into(), spec.clone());
    }
    Value::Object(doc)
}

/// Calico's host-side interface name for a pod.
pub fn calico_interface(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// Host routes (`/32`, `/128`) of the main table in this network namespace: IP -> device.
pub fn host_routes() -> HashMap<IpAddr, String> {
    let mut out = HashMap::new();
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        for line in t.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[7] != "FFFFFFFF" {
                continue;
            }
            if let Ok(d) = u32::from_str_radix(f[1], 16) {
                // Little-endian hex of the address in network order.
                out.insert(
                    IpAddr::V4(std::net::Ipv4Addr::from(d.to_le_bytes())),
                    f[0].to_string(),
                );
            }
        }
    }
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in t.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[1] != "80" || f[9] == "lo" {
                continue;
            }
            if let Ok(a) = u128::from_str_radix(f[0], 16) {
                out.entry(IpAddr::V6(std::net::Ipv6Addr::from(a)))
                    .or_insert_with(|| f[9].to_string());
            }
        }
    }
    out
}

fn pod_interface(key: &Key, pod: &PodInfo, routes: &HashMap<IpAddr, String>) -> String {
    pod.ips
        .iter()
        .find_map(|ip| routes.get(ip).cloned())
        .unwrap_or_else(|| calico_interface(&key.0, &key.1))
}

fn local_interfaces(st: &State, routes: &HashMap<IpAddr, String>) -> BTreeMap<Key, String> {
    st.pods
        .iter()
        .filter(|(_, p)| p.local)
        .map(|(k, p)| (k.clone(), pod_interface(k, p, routes)))
        .collect()
}

/// A pod's workload endpoint document.
pub fn workload_endpoint(key: &Key, pod: &PodInfo, interface: &str, node: &str) -> Value {
    let labels: BTreeMap<&str, &str> = pod.labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    let nets: Vec<String> = pod
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        })
        .collect();
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|(name, proto, port)| {
            let p = match proto {
                17 => "UDP",
                132 => "SCTP",
                _ => "TCP",
            };
            json!({"name": name, "protocol": p, "port": port})
        })
        .collect();
    let mut spec = json!({
        "orchestrator": "k8s",
        "pod": key.1,
        "interfaceName": interface,
        "ipNetworks": nets,
    });
    if pod.local {
        spec["node"] = json!(node);
    }
    if let Some(sa) = &pod.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if !ports.is_empty() {
        spec["ports"] = json!(ports);
    }
    let mut meta = json!({"name": key.1, "namespace": key.0});
    if !labels.is_empty() {
        meta["labels"] = json!(labels);
    }
    json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": meta,
        "spec": spec,
    })
}

/// The interfaceName given to pods on other nodes (never attached: see [`localize`]).
const REMOTE_INTERFACE: &str = "remote";

/// Builds the model from the current view (same checks and model as files).
///
/// Memory: pods are turned into documents one at a time as the loader takes
/// them (all documents at once would cost ~3.7 KB per pod on top of the model);
/// they come from a copy of the lean pod view so that the watchers are not held
/// up while it loads.
fn build(node: &str, state: &Mutex<State>) -> Loaded {
    let routes = host_routes();
    let mut sources: Vec<(PathBuf, Value)> = Vec::new();
    let mut local: HashSet<(EndpointKind, String)> = HashSet::new();
    let (pods, interfaces) = {
        let mut st = lock(state);
        let interfaces = local_interfaces(&st, &routes);
        for (label, docs) in &st.docs {
            let kind = label.rsplit('/').next().unwrap_or(label);
            for ((ns, name), doc) in docs {
                if kind == "HostEndpoint" && doc["spec"]["node"].as_str() == Some(node) {
                    let name = doc["metadata"]["name"].as_str().unwrap_or(name);
                    local.insert((EndpointKind::Host, name.to_string()));
                }
                sources.push((source_name(label, ns, name), doc.clone()));
            }
        }
        st.interfaces = interfaces.clone();
        (st.pods.clone(), interfaces)
    };
    local.extend(
        pods.iter()
            .filter(|(_, p)| p.local)
            .map(|(key, _)| (EndpointKind::Workload, format!("{}/{}", key.0, key.1))),
    );
    let pod_documents = pods.iter().map(|(key, pod)| {
        // A remote pod's interface is dropped by `localize`: no need to name it.
        let interface = interfaces.get(key).map_or(REMOTE_INTERFACE, String::as_str);
        (
            source_name("Pod", &key.0, &key.1),
            workload_endpoint(key, pod, interface, node),
        )
    });
    let mut loaded = load_values(sources.into_iter().chain(pod_documents));
    localize(&mut loaded, &local);
    loaded
}

/// Endpoints not on this node are peers only: no interface, so nothing is
/// attached or compiled for them.
pub fn localize(loaded: &mut Loaded, local: &HashSet<(EndpointKind, String)>) {
    for e in &mut loaded.model.endpoints {
        if !local.contains(&(e.kind, e.key())) {
            e.interface = None;
        }
    }
}

/// `kubernetes:<kind>/[<ns>/]<name>` with the object's stored name; the kind is
/// prefixed with its group unless it is core or projectcalico.org (e.g.
/// `crd.projectcalico.org/GlobalNetworkPolicy`, `networking.k8s.io/NetworkPolicy`).
fn source_name(label: &str, ns: &str, name: &str) -> PathBuf {
    let kind = match label.rsplit_once('/') {
        Some(("" | V3_GROUP, k)) => k,
        _ => label,
    };
    if ns.is_empty() {
        PathBuf::from(format!("kubernetes:{kind}/{name}"))
    } else {
        PathBuf::from(format!("kubernetes:{kind}/{ns}/{name}"))
    }
}

/// This machine's node name: `$NODE_NAME`, else the host name.
pub fn default_node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME") {
        if !n.is_empty() {
            return n;
        }
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `agent promote` against the cluster: the staged policy `kind`/`name` becomes
/// its enforced kind (server-side apply, field manager `agent-promote`) and the
/// staged object is deleted. `stagedAction: Delete` deletes the enforced
/// namesake and the staged object; `Ignore` is refused. Returns what was done.
///
/// Calico's kinds are read from and written to the group `api` resolves to (the
/// one `agent run --calico-api` reads). In crd.projectcalico.org/v1 `name` is the
/// policy's v3 name (as `agent status` shows it) or its stored name; the
/// enforced object is stored under the enforced namesake's stored name if there
/// is one, else under the staged object's (so `default.<name>` stays tiered).
pub async fn promote(
    client: Client,
    api: CalicoApi,
    kind: crate::model::ir::PolicyKind,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<String> {
    use crate::model::ir::PolicyKind as P;
    use kube::api::{DeleteParams, Patch, PatchParams};
    let group = resolve_calico_api(&client, api, INITIAL_SYNC).await?.group;
    let (staged, enforced) = match kind {
        P::StagedGlobalNetworkPolicy => (
            group.kind("StagedGlobalNetworkPolicy"),
            group.kind("GlobalNetworkPolicy"),
        ),
        P::StagedNetworkPolicy => (
            group.kind("StagedNetworkPolicy"),
            group.kind("NetworkPolicy"),
        ),
        P::StagedKubernetesNetworkPolicy => (
            group.kind("StagedKubernetesNetworkPolicy"),
            group.kind("networking.k8s.io/NetworkPolicy"),
        ),
        other => anyhow::bail!("{} is not a staged kind", other.as_str()),
    };
    let ns = staged.namespaced.then(|| namespace.unwrap_or("default"));
    let api = |k: &Kind| -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &k.api_resource()),
            None => Api::all_with(client.clone(), &k.api_resource()),
        }
    };
    let (staged_api, enforced_api) = (api(&staged), api(&enforced));
    let describe = |k: &Kind, name: &str| {
        let group = if k.group.is_empty() || k.group == V3_GROUP {
            String::new()
        } else {
            format!(".{}", k.group)
        };
        match ns {
            Some(ns) => format!("{}{group} {ns}/{name}", k.kind),
            None => format!("{}{group} {name}", k.kind),
        }
    };
    let obj = find_policy(&staged_api, &staged, name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("{} not found", describe(&staged, name)))?;
    let staged_name = obj.name_any();
    let v3_name = model_name(&staged, &obj);
    let namesake = find_policy(&enforced_api, &enforced, &v3_name).await?;
    let mut spec = obj.data.get("spec").cloned().unwrap_or_else(|| json!({}));
    let action = spec
        .get("stagedAction")
        .and_then(Value::as_str)
        .unwrap_or("Set")
        .to_string();
    if let Some(m) = spec.as_object_mut() {
        m.remove("stagedAction");
    }
    let dp = DeleteParams::default();
    let done = match action.as_str() {
        "Ignore" => anyhow::bail!(
            "{} has stagedAction Ignore: promoting it changes nothing that is enforced",
            describe(&staged, &staged_name)
        ),
        "Delete" => match namesake {
            Some(o) => {
                let n = o.name_any();
                enforced_api.delete(&n, &dp).await?;
                format!("deleted {} (staged Delete)", describe(&enforced, &n))
            }
            None => format!(
                "deleted {} (staged Delete); it did not exist",
                describe(&enforced, &v3_name)
            ),
        },
        _ => {
            let target = namesake.map_or(staged_name.clone(), |o| o.name_any());
            let mut meta = json!({"name": target});
            if let Some(ns) = ns {
                meta["namespace"] = json!(ns);
            }
            if let Some(l) = obj.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
                meta["labels"] = json!(l);
            }
            let doc = json!({
                "apiVersion": enforced.api_version(),
                "kind": enforced.kind,
                "metadata": meta,
                "spec": spec,
            });
            enforced_api
                .patch(
                    &target,
                    &PatchParams::apply("agent-promote").force(),
                    &Patch::Apply(&doc),
                )
                .await?;
            format!("promoted to {}", describe(&enforced, &target))
        }
    };
    staged_api.delete(&staged_name, &dp).await?;
    Ok(format!("{done}; removed the staged policy"))
}

/// The policy of `kind` whose model name (or stored name) is `name`: in
/// crd.projectcalico.org/v1 a default-tier policy `x` may be stored as
/// `default.x` or `x` (see [`v3_policy_name`]); elsewhere the name is the name.
async fn find_policy(
    api: &Api<DynamicObject>,
    kind: &Kind,
    name: &str,
) -> anyhow::Result<Option<DynamicObject>> {
    if !tiered_name(kind) {
        return Ok(api.get_opt(name).await?);
    }
    for stored in [format!("default.{name}"), name.to_string()] {
        if let Some(o) = api.get_opt(&stored).await? {
            if model_name(kind, &o) == name || stored == name {
                return Ok(Some(o));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(
                    [
                        ("app".to_string(), name.to_string()),
                        ("env".to_string(), "prod".to_string()),
                        ("pod-template-hash".to_string(), "5d8f9c7b6d".to_string()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some("default".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ips: Some(vec![PodIP { ip: ip.into() }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn calico_interface_name_matches_calico() {
        // sha1("prod.frontend") = 3f1c0d0e...; Calico: "cali" + first 11 hex digits.
        let n = calico_interface("prod", "frontend");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("cali"));
        let digest = Sha1::digest(b"prod.frontend");
        assert_eq!(&n[4..6], &format!("{:02x}", digest[0]));
    }

    #[test]
    fn pods_become_validated_workload_endpoints_and_only_local_ones_get_interfaces() {
        let state = Mutex::new(State::default());
        {
            let mut st = lock(&state);
            for (name, node, ip) in [
                ("frontend", "n1", "10.65.0.10"),
                ("backend", "n2", "10.65.0.20"),
            ] {
                let p = pod("prod", name, node, ip);
                let info = PodInfo::from_pod(&p, "n1").unwrap();
                st.pods.insert(("prod".into(), name.into()), info);
            }
        }
        let loaded = build("n1", &state);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let eps = &loaded.model.endpoints;
        assert_eq!(eps.len(), 2);
        let fe = eps.iter().find(|e| e.name == "frontend").unwrap();
        let be = eps.iter().find(|e| e.name == "backend").unwrap();
        assert_eq!(
            fe.interface.as_deref(),
            Some(calico_interface("prod", "frontend").as_str())
        );
        assert_eq!(be.interface, None);
        assert_eq!(fe.named_ports.len(), 1);
        assert_eq!(fe.labels.get("app").map(String::as_str), Some("frontend"));
        assert_eq!(
            fe.labels
                .get("projectcalico.org/serviceaccount")
                .map(String::as_str),
            Some("default")
        );
    }

    #[test]
    fn pods_without_ip_host_network_or_finished_are_skipped() {
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.status.as_mut().unwrap().pod_ips = None;
        assert!(PodInfo::from_pod(&p, "n").is_none());
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert!(PodInfo::from_pod(&p, "n").is_none());
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(PodInfo::from_pod(&p, "n").is_none());
    }

    fn crd_object(kind: &str, ns: Option<&str>, name: &str, spec: Value) -> (Kind, DynamicObject) {
        let k = CalicoGroup::CrdV1.kind(kind);
        let mut o = DynamicObject::new(name, &k.api_resource());
        o.metadata.namespace = ns.map(Into::into);
        o.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        o.data = json!({ "spec": spec });
        (k, o)
    }

    #[test]
    fn v1_policy_names_map_to_v3_names_as_calico_does() {
        // Default tier: Calico stores `<name>` as `default.<name>` and reads it back without.
        assert_eq!(v3_policy_name("default.allow-dns", None), "allow-dns");
        assert_eq!(v3_policy_name("default.allow-dns", Some("")), "allow-dns");
        assert_eq!(
            v3_policy_name("default.allow-dns", Some("default")),
            "allow-dns"
        );
        // Only the first `default.` goes; the rest may hold dots.
        assert_eq!(v3_policy_name("default.a.b", None), "a.b");
        // Stored without a prefix (newer Calico, or created directly): unchanged.
        assert_eq!(v3_policy_name("allow-dns", None), "allow-dns");
        // Other tiers: `<tier>.<name>` is the v3 name too.
        assert_eq!(
            v3_policy_name("security.deny-x", Some("security")),
            "security.deny-x"
        );
        assert_eq!(v3_policy_name("default.x", Some("security")), "default.x");
        // Calico-generated names are never tiered by the client.
        assert_eq!(v3_policy_name("knp.default.x", None), "knp.default.x");
        assert_eq!(v3_policy_name("default.", None), "default.");
    }

    #[test]
    fn v1_objects_become_v3_documents() {
        let (k, o) = crd_object(
            "NetworkPolicy",
            Some("prod"),
            "default.db",
            json!({"selector": "app == 'db'", "types": ["Ingress"]}),
        );
        let doc = document(&k, &o);
        assert_eq!(doc["apiVersion"], "projectcalico.org/v3");
        assert_eq!(doc["kind"], "NetworkPolicy");
        assert_eq!(doc["metadata"]["name"], "db");
        assert_eq!(doc["metadata"]["namespace"], "prod");
        assert_eq!(doc["metadata"]["labels"]["team"], "a");
        assert_eq!(doc["spec"]["selector"], "app == 'db'");

        let (k, o) = crd_object(
            "StagedGlobalNetworkPolicy",
            None,
            "security.lockdown",
            json!({"tier": "security", "selector": "all()"}),
        );
        let doc = document(&k, &o);
        assert_eq!(doc["kind"], "StagedGlobalNetworkPolicy");
        assert_eq!(doc["metadata"]["name"], "security.lockdown");
        assert!(doc["metadata"].get("namespace").is_none());

        // Names of other kinds are not tiered.
        for kind in ["StagedKubernetesNetworkPolicy", "NetworkSet"] {
            let (k, o) = crd_object(kind, Some("prod"), "default.x", json!({}));
            assert_eq!(document(&k, &o)["metadata"]["name"], "default.x", "{kind}");
        }
    }

    #[test]
    fn v1_policies_load_under_their_v3_names_and_v1_host_endpoints_are_local() {
        let state = Mutex::new(State::default());
        {
            let mut st = lock(&state);
            for (kind, ns, name, spec) in [
                (
                    "GlobalNetworkPolicy",
                    None,
                    "default.deny-web",
                    json!({"selector": "app == 'web'", "ingress": [{"action": "Deny"}]}),
                ),
                ("Tier", None, "security", json!({"order": 100})),
                (
                    "GlobalNetworkPolicy",
                    None,
                    "security.pass-all",
                    json!({"tier": "security", "selector": "all()", "ingress": [{"action": "Pass"}]}),
                ),
                (
                    "HostEndpoint",
                    None,
                    "n1-eth0",
                    json!({"node": "n1", "interfaceName": "eth0", "expectedIPs": ["10.0.0.1"]}),
                ),
            ] {
                let (k, o) = crd_object(kind, ns, name, spec);
                st.docs
                    .entry(k.label())
                    .or_default()
                    .insert((String::new(), name.into()), document(&k, &o));
            }
        }
        let loaded = build("n1", &state);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let mut names: Vec<_> = loaded
            .model
            .policies
            .iter()
            .map(|p| p.id.name.clone())
            .collect();
        names.sort();
        assert_eq!(names, ["deny-web", "security.pass-all"]);
        let hep = &loaded.model.endpoints[0];
        assert_eq!(hep.kind, EndpointKind::Host);
        assert_eq!(
            hep.interface.as_deref(),
            Some("eth0"),
            "local: keeps its interface"
        );
    }

    #[test]
    fn a_rejected_v1_object_names_its_stored_object() {
        let (k, o) = crd_object(
            "GlobalNetworkPolicy",
            None,
            "default.bad",
            json!({"selector": "all()", "ingress": [{"action": "Nope"}]}),
        );
        let state = Mutex::new(State::default());
        lock(&state)
            .docs
            .entry(k.label())
            .or_default()
            .insert((String::new(), "default.bad".into()), document(&k, &o));
        let loaded = build("n", &state);
        let d = &loaded.diagnostics[0];
        assert_eq!(d.resource, "GlobalNetworkPolicy/bad");
        assert_eq!(
            d.file,
            PathBuf::from("kubernetes:crd.projectcalico.org/GlobalNetworkPolicy/default.bad")
        );
    }

    #[test]
    fn watch_backoff_is_jittered_capped_at_5s_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = WatchBackoff::default();
        let first: Vec<Duration> = b.by_ref().take(12).collect();
        for (i, d) in first.iter().enumerate() {
            let step = (BACKOFF_MIN * 2u32.pow(i as u32)).min(BACKOFF_MAX);
            assert!(
                *d >= step / 2 && *d <= step,
                "{i}: {d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        assert!(first.iter().all(|d| *d <= BACKOFF_MAX));
        // Jittered: the capped delays are not all equal.
        assert!(first[6..].windows(2).any(|w| w[0] != w[1]), "{first:?}");
        b.reset();
        assert!(b.next().unwrap() <= BACKOFF_MIN);
    }

    #[test]
    fn a_rejected_object_is_a_diagnostic_naming_it() {
        let kind = KINDS[0];
        let mut o = DynamicObject::new("bad", &kind.api_resource());
        o.data = json!({"spec": {"selector": "all()", "ingress": [{"action": "Nope"}]}});
        let doc = document(&kind, &o);
        let state = Mutex::new(State::default());
        lock(&state)
            .docs
            .entry(kind.label())
            .or_default()
            .insert((String::new(), "bad".into()), doc);
        let loaded = build("n", &state);
        assert!(loaded.has_errors());
        let d = &loaded.diagnostics[0];
        assert_eq!(d.resource, "GlobalNetworkPolicy/bad");
        assert_eq!(
            d.file,
            PathBuf::from("kubernetes:GlobalNetworkPolicy/bad"),
            "{d:?}"
        );
    }

    /// Many pods cluster-wide, few on this node: all are known (as peers), only
    /// the local ones get an interface. Prints the rebuild time (measured, not
    /// asserted; agent/tests/kube_pod_memory.rs measures 10k and 100k pods).
    #[test]
    fn rebuild_with_many_remote_pods() {
        let state = Mutex::new(State::default());
        let total = 2_000u32;
        {
            let mut st = lock(&state);
            for i in 0..total {
                let name = format!("pod-{i}");
                let ip = format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
                let p = pod("prod", &name, if i < 50 { "n" } else { "other" }, &ip);
                st.pods
                    .insert(("prod".into(), name), PodInfo::from_pod(&p, "n").unwrap());
            }
        }
        let t = std::time::Instant::now();
        let loaded = build("n", &state);
        eprintln!(
            "rebuild of {total} pods (50 local): {:?}, {} endpoints",
            t.elapsed(),
            loaded.model.endpoints.len()
        );
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        assert_eq!(loaded.model.endpoints.len(), total as usize);
        let local = loaded
            .model
            .endpoints
            .iter()
            .filter(|e| e.interface.is_some())
            .count();
        assert_eq!(local, 50, "only this node's pods are enforced here");
    }

    /// Memory of the cluster-wide pod view: 10k synthetic pods with 3 labels,
    /// one IP, one named port, as stored.
    #[test]
    fn memory_per_pod() {
        let mut total = 0;
        let n = 10_000;
        for i in 0..n {
            let p = pod(
                "prod",
                &format!("pod-{i}"),
                "n",
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
            let info = PodInfo::from_pod(&p, "n").unwrap();
            // Key strings + the BTreeMap entry (approximate: key + value inline).
            total += info.approx_bytes()
                + "prod".len()
                + format!("pod-{i}").len()
                + std::mem::size_of::<Key>();
        }
        let per_pod = total / n;
        eprintln!(
            "memory per pod (3 labels, 1 IP, 1 named port): ~{per_pod} bytes; {n} pods: ~{} KiB",
            total / 1024
        );
        assert!(per_pod < 512, "{per_pod} bytes per pod");
    }
}

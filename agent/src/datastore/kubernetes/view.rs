//! What the watchers keep of the cluster ([`State`]) and the model built from it.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::discovery::Choice;
use super::names::{CalicoGroup, Kind, V3_GROUP};
use super::pods::{workload_endpoint, PodInfo};
use super::routes::{host_routes, pod_interface};
use super::Key;
use crate::model::ir::EndpointKind;
use crate::model::load::load_values;
use crate::model::Loaded;

#[derive(Default)]
pub(super) struct State {
    /// Cleaned documents by kind label.
    pub(super) docs: BTreeMap<String, BTreeMap<Key, Value>>,
    pub(super) pods: BTreeMap<Key, PodInfo>,
    /// Kinds whose first list completed.
    pub(super) synced: BTreeSet<String>,
    /// Interfaces of local pods used by the last build (to notice route changes).
    pub(super) interfaces: BTreeMap<Key, String>,
    /// Kinds whose watch is failing now, with the error.
    pub(super) failing: BTreeMap<String, String>,
    /// How Calico's group was chosen (`--calico-api`), for the status.
    pub(super) calico_api: Choice,
    /// Labels of the kinds watched besides the group's and Pods (Services and
    /// the endpoints kind discovery chose).
    pub(super) extra_kinds: Vec<String>,
}

pub(super) fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cheap handle that builds the model from the current view (for a blocking task).
#[derive(Clone)]
pub struct KubeSnapshot {
    pub(super) node: String,
    pub(super) group: CalicoGroup,
    pub(super) state: Arc<Mutex<State>>,
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
            .chain(st.extra_kinds.iter().cloned())
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

pub(super) fn unsynced(group: CalicoGroup, state: &Mutex<State>) -> Vec<String> {
    let st = lock(state);
    group
        .kinds()
        .iter()
        .map(Kind::label)
        .chain(["Pod".to_string()])
        .chain(st.extra_kinds.iter().cloned())
        .filter(|k| !st.synced.contains(k))
        .collect()
}

/// Interfaces of this node's pods now.
pub(super) fn local_interfaces(
    st: &State,
    routes: &HashMap<IpAddr, String>,
) -> BTreeMap<Key, String> {
    st.pods
        .iter()
        .filter(|(_, p)| p.local)
        .map(|(k, p)| (k.clone(), pod_interface(k, p, routes)))
        .collect()
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
        if e.interface.is_some() && !local.contains(&(e.kind, e.key())) {
            crate::model::node::as_peer(e);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::kubernetes::names::{document, KINDS};
    use crate::datastore::kubernetes::pods::calico_interface;
    use crate::datastore::kubernetes::test_fixtures::{crd_object, pod};
    use crate::model::ir::EndpointKind;
    use kube::api::DynamicObject;
    use serde_json::json;

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
}

//! The Kubernetes datastore: kube-rs watchers on the API server.
//!
//! Watched (cluster-wide, list + watch, re-listed after 410 Gone and API-server
//! restarts, retried with [`watch_backoff`]: 0.5 s doubling to at most 5 s, jittered):
//! - Calico's GlobalNetworkPolicy, NetworkPolicy, StagedGlobalNetworkPolicy,
//!   StagedNetworkPolicy, StagedKubernetesNetworkPolicy, Tier, GlobalNetworkSet,
//!   NetworkSet, HostEndpoint, from one of two API groups ([`CalicoApi`]):
//!   projectcalico.org/v3 (Calico's API server, or CRDs of that group) or
//!   crd.projectcalico.org/v1 (the CRDs Calico itself stores them in);
//! - networking.k8s.io/v1 NetworkPolicy; v1 Namespace, ServiceAccount, Pod;
//! - v1 Service and the endpoints kind discovery finds ([`services`]):
//!   EndpointSlice discovery.k8s.io/v1, else v1beta1 (Kubernetes 1.20), else
//!   v1 Endpoints. Services' frontends are deferred to the post-DNAT hook and
//!   Calico's `services` match resolves to their backends.
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
//!
//! One file per job: [`names`] (the watched kinds, Calico's two API groups and
//! their names, objects as documents), [`discovery`] (`--calico-api auto`: which
//! group holds the policies), [`pods`] (Pod -> [`PodInfo`] -> WorkloadEndpoint),
//! [`routes`] (this node's host routes: local pods' interfaces), `view` (what
//! the watchers keep and the model built from it), `watch` (the watchers),
//! `promote` (`agent promote` against the cluster), [`confirm`]
//! (commit-confirmed promotion: the record, the checks, the decision) and
//! `revert` (what the Lease holder does: revert or confirm).
use std::path::Path;

use kube::Client;

pub mod confirm;
pub mod discovery;
pub mod names;
pub mod pods;
pub mod presence;
mod promote;
mod revert;
pub mod routes;
pub mod services;
#[cfg(test)]
mod test_fixtures;
mod view;
mod watch;

pub use discovery::{choose_calico_group, resolve_calico_api};
pub use names::{
    document, model_name, tiered_name, v3_policy_name, CalicoApi, CalicoGroup, Kind, CRD_GROUP,
    CRD_KINDS, KINDS, V3_GROUP,
};
pub use pods::{calico_interface, workload_endpoint, PodInfo};
pub use promote::{confirm_promotion, promote};
pub use routes::host_routes;
pub use view::{localize, KubeSnapshot};
pub use watch::{
    watch_backoff, KubeDatastore, KubeOptions, BACKOFF_MAX, BACKOFF_MIN, DEBOUNCE, INITIAL_SYNC,
    ROUTE_POLL,
};

/// `(namespace, name)`; namespace empty for cluster-scoped kinds.
type Key = (String, String);

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

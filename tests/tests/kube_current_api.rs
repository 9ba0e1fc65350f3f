//! The agent's Kubernetes client against recorded responses of a current
//! API server (k8s-openapi's v1.33 objects, served by `common/kube_server.rs`):
//! discovery finds EndpointSlice discovery.k8s.io/v1, and a Service with its
//! v1 slice becomes frontends and the backends a `services` match resolves to.
//! (The v1.20 paths run against the real server in `kube_e2e.rs`.)
#[path = "common/kube_server.rs"]
mod kube_server;

use std::collections::BTreeMap;

use agent::datastore::kubernetes::{CalicoApi, KubeDatastore, KubeOptions};
use k8s_openapi::api::core::v1::{
    LoadBalancerIngress, LoadBalancerStatus, Namespace, Service, ServicePort, ServiceSpec,
    ServiceStatus,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube_server::{RecordedApi, CURRENT};
use serde_json::{json, Value};

fn meta(ns: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: ns.map(Into::into),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        ),
        resource_version: Some("1".into()),
        uid: Some(format!("uid-{name}")),
        ..ObjectMeta::default()
    }
}

/// A typed object as the server sends it (apiVersion and kind included).
fn recorded<T: k8s_openapi::Resource + serde::Serialize>(o: T) -> Value {
    let mut v = serde_json::to_value(o).unwrap();
    v["apiVersion"] = json!(T::API_VERSION);
    v["kind"] = json!(T::KIND);
    v
}

fn objects() -> Vec<Value> {
    let service = Service {
        metadata: meta(Some("shop"), "web", &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("10.96.0.10".into()),
            cluster_ips: Some(vec!["10.96.0.10".into(), "fd00:96::10".into()]),
            ip_families: Some(vec!["IPv4".into(), "IPv6".into()]),
            ip_family_policy: Some("PreferDualStack".into()),
            internal_traffic_policy: Some("Cluster".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            type_: Some("LoadBalancer".into()),
            ..ServiceSpec::default()
        }),
        status: Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![LoadBalancerIngress {
                    ip: Some("198.51.100.9".into()),
                    ip_mode: Some("VIP".into()),
                    ..LoadBalancerIngress::default()
                }]),
            }),
            ..ServiceStatus::default()
        }),
    };
    let slice = EndpointSlice {
        metadata: meta(
            Some("shop"),
            "web-7x2kq",
            &[
                ("kubernetes.io/service-name", "web"),
                (
                    "endpointslice.kubernetes.io/managed-by",
                    "endpointslice-controller.k8s.io",
                ),
            ],
        ),
        address_type: "IPv4".into(),
        endpoints: vec![Endpoint {
            addresses: vec!["10.65.0.20".into()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            node_name: Some("node1".into()),
            zone: Some("z1".into()),
            ..Endpoint::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    };
    let namespace = Namespace {
        metadata: meta(None, "shop", &[("kubernetes.io/metadata.name", "shop")]),
        ..Namespace::default()
    };
    let policy = NetworkPolicy {
        metadata: meta(Some("shop"), "default-deny", &[]),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(vec!["Ingress".into()]),
            ..NetworkPolicySpec::default()
        }),
    };
    vec![
        recorded(service),
        recorded(slice),
        recorded(namespace),
        recorded(policy),
    ]
}

#[test]
fn a_current_server_serves_endpoint_slices_v1_and_they_become_services() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = std::env::temp_dir().join(format!("kube-current-{}", std::process::id()));
    // Calico's kinds are read from the v3 group, served empty here.
    let calico: Vec<kube_server::Resource> = [
        ("globalnetworkpolicies", "GlobalNetworkPolicy", false),
        ("networkpolicies", "NetworkPolicy", true),
        (
            "stagedglobalnetworkpolicies",
            "StagedGlobalNetworkPolicy",
            false,
        ),
        ("stagednetworkpolicies", "StagedNetworkPolicy", true),
        (
            "stagedkubernetesnetworkpolicies",
            "StagedKubernetesNetworkPolicy",
            true,
        ),
        ("tiers", "Tier", false),
        ("globalnetworksets", "GlobalNetworkSet", false),
        ("networksets", "NetworkSet", true),
        ("hostendpoints", "HostEndpoint", false),
    ]
    .into_iter()
    .map(|(p, k, n)| ("projectcalico.org", "v3", p, k, n))
    .collect();
    let resources: Vec<kube_server::Resource> = CURRENT.iter().copied().chain(calico).collect();
    let api = RecordedApi::start(&rt, &dir, &resources, objects());
    let opts = KubeOptions {
        node: "node1".into(),
        kubeconfig: Some(api.kubeconfig.clone()),
        calico_api: CalicoApi::V3,
    };
    let ds = rt.block_on(KubeDatastore::start(&opts)).expect("datastore");
    assert!(ds.unsynced().is_empty(), "{:?}", ds.unsynced());
    assert!(
        ds.snapshot().problems().is_empty(),
        "{:?}",
        ds.snapshot().problems()
    );
    let l = ds.load();
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let s = &l.model.services;
    assert_eq!(s.len(), 1, "{s:#?}");
    let frontends: Vec<String> = s[0].frontends.iter().map(ToString::to_string).collect();
    assert_eq!(frontends, ["10.96.0.10", "198.51.100.9", "fd00:96::10"]);
    assert_eq!(
        s[0].backends[0].addresses,
        ["10.65.0.20".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(
        s[0].backends[0].ports,
        [(agent::model::ir::Protocol::TCP, 8080)]
    );
    assert_eq!(l.model.policies.len(), 1);
    drop(ds);
    let _ = std::fs::remove_dir_all(&dir);
}

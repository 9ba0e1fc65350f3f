//! Objects the tests of this module build on.
use k8s_openapi::api::core::v1::{Container, ContainerPort, Pod, PodIP, PodSpec, PodStatus};
use kube::api::{DynamicObject, ObjectMeta};
use serde_json::{json, Value};

use super::names::{CalicoGroup, Kind};

pub(super) fn pod(ns: &str, name: &str, node: &str, ip: &str) -> Pod {
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

pub(super) fn crd_object(
    kind: &str,
    ns: Option<&str>,
    name: &str,
    spec: Value,
) -> (Kind, DynamicObject) {
    let k = CalicoGroup::CrdV1.kind(kind);
    let mut o = DynamicObject::new(name, &k.api_resource());
    o.metadata.namespace = ns.map(Into::into);
    o.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
    o.data = json!({ "spec": spec });
    (k, o)
}

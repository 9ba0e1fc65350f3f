//! Services and their endpoints from the API server: v1 Services, and the
//! endpoints kind the server serves, chosen by API discovery (as kube-proxy
//! and felix do): discovery.k8s.io/v1 EndpointSlices (Kubernetes 1.21+),
//! discovery.k8s.io/v1beta1 EndpointSlices (1.17-1.24, what a 1.20 server
//! serves), else v1 Endpoints. They become the documents the files datastore
//! takes (`crate::model::lower` reads them): a Service's frontends and its
//! backends, which Calico's `services` match resolves to.
use kube::api::DynamicObject;
use kube::Client;
use serde_json::{json, Value};

use super::names::Kind;

pub const SERVICE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Service",
    plural: "services",
    namespaced: true,
};
pub const ENDPOINT_SLICE_V1: Kind = Kind {
    group: "discovery.k8s.io",
    version: "v1",
    kind: "EndpointSlice",
    plural: "endpointslices",
    namespaced: true,
};
pub const ENDPOINT_SLICE_V1BETA1: Kind = Kind {
    version: "v1beta1",
    ..ENDPOINT_SLICE_V1
};
pub const ENDPOINTS: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Endpoints",
    plural: "endpoints",
    namespaced: true,
};

/// The endpoints kind to watch: the first of EndpointSlice v1, v1beta1 the
/// server serves, else v1 Endpoints (every server has them); and why.
pub async fn endpoints_kind(client: &Client) -> (Kind, String) {
    for kind in [ENDPOINT_SLICE_V1, ENDPOINT_SLICE_V1BETA1] {
        let gv = kind.api_version();
        match client.list_api_group_resources(&gv).await {
            Ok(list) if list.resources.iter().any(|r| r.name == kind.plural) => {
                return (kind, format!("{gv} serves endpointslices"));
            }
            Ok(_) => tracing::debug!(%gv, "served without endpointslices"),
            Err(e) => tracing::debug!(%gv, error = %e, "not served"),
        }
    }
    (
        ENDPOINTS,
        "no EndpointSlice API (discovery.k8s.io v1 or v1beta1) is served".into(),
    )
}

/// The document of a Service or an endpoints object: apiVersion, kind,
/// metadata (name, namespace, labels) and every other top-level field as the
/// server sent it (spec and status of a Service, addressType, endpoints and
/// ports of a slice, subsets of Endpoints).
pub fn document(kind: &Kind, o: &DynamicObject) -> Value {
    let mut doc = match &o.data {
        Value::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut meta = serde_json::Map::new();
    meta.insert(
        "name".into(),
        json!(o.metadata.name.clone().unwrap_or_default()),
    );
    if let Some(ns) = &o.metadata.namespace {
        meta.insert("namespace".into(), json!(ns));
    }
    if let Some(labels) = o.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), json!(labels));
    }
    doc.insert("apiVersion".into(), json!(kind.api_version()));
    doc.insert("kind".into(), json!(kind.kind));
    doc.insert("metadata".into(), Value::Object(meta));
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ir::Protocol;
    use crate::model::load::load_values;

    fn object(kind: &Kind, name: &str, data: Value) -> DynamicObject {
        let mut o = DynamicObject::new(name, &kind.api_resource()).within("shop");
        o.metadata.labels = Some(
            [("kubernetes.io/service-name".to_string(), "web".to_string())]
                .into_iter()
                .collect(),
        );
        o.metadata.uid = Some("u".into());
        o.data = data;
        o
    }

    #[test]
    fn services_and_slices_become_documents_the_loader_takes() {
        let svc = object(
            &SERVICE,
            "web",
            json!({"spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]},
                   "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}}),
        );
        let slice = object(
            &ENDPOINT_SLICE_V1BETA1,
            "web-x",
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["10.65.0.20"],
                   "topology": {"kubernetes.io/hostname": "n1"}}], "ports": [{"port": 8080}]}),
        );
        let docs = [(SERVICE, svc), (ENDPOINT_SLICE_V1BETA1, slice)]
            .map(|(k, o)| ("kubernetes:x".into(), document(&k, &o)));
        assert_eq!(docs[1].1["apiVersion"], "discovery.k8s.io/v1beta1");
        let l = load_values(docs);
        assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
        let s = &l.model.services[0];
        assert_eq!(s.frontends.len(), 2);
        assert_eq!(s.backends[0].ports, vec![(Protocol::TCP, 8080)]);
    }
}

//! `apiVersion: v1, kind: Pod` documents (`kubectl get pods -o yaml`) become the
//! WorkloadEndpoint the Kubernetes datastore makes of a Pod, by that datastore's
//! own code ([`PodInfo::from_pod`], [`workload_endpoint`]): labels, service
//! account, `status.podIPs`, named container ports, and `spec.nodeName` as the
//! endpoint's `spec.node`. The interface is Calico's name for the pod
//! (`cali` + the first 11 hex digits of sha1("ns.pod")): a files datastore has
//! no host routes to read.
use std::collections::HashMap;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::load::resource_id;
use super::yaml::line_of;
use super::{Diagnostic, Severity};
use crate::datastore::kubernetes::{calico_interface, workload_endpoint, PodInfo};

/// A v1 Pod document as its WorkloadEndpoint document (`None`, with a warning,
/// for a pod that gets none); any other document unchanged. `lines`: where the
/// Pod's fields are.
pub fn document(
    file: &Path,
    lines: &HashMap<String, usize>,
    value: Value,
    diags: &mut Vec<Diagnostic>,
) -> Result<Option<Value>, Diagnostic> {
    let text = |key: &str| value.get(key).and_then(Value::as_str);
    if (text("apiVersion"), text("kind")) != (Some("v1"), Some("Pod")) {
        return Ok(Some(value));
    }
    let meta = |key: &str| {
        value
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_str)
    };
    let namespace = meta("namespace").unwrap_or("default").to_string();
    let name = meta("name").unwrap_or("").to_string();
    let diagnostic = |severity, kind: &str, field: &str, message: String| Diagnostic {
        severity,
        file: file.to_path_buf(),
        // A pod with no field at fault is pointed at by its name.
        line: line_of(
            lines,
            if field.is_empty() {
                "metadata.name"
            } else {
                field
            },
        ),
        resource: resource_id(kind, Some(&namespace), &name),
        field: field.into(),
        message,
    };
    match to_workload_endpoint(value) {
        Ok(Some(wep)) => Ok(Some(wep)),
        Ok(None) => {
            let message = "this pod gets no workload endpoint (host network, finished, or no IP \
                           yet), as in Calico; it is left out";
            diags.push(diagnostic(Severity::Warning, "Pod", "", message.into()));
            Ok(None)
        }
        // Named as the endpoint it would be, as its other errors are, so that a
        // running agent keeps that endpoint's last good version.
        Err((field, message)) => Err(diagnostic(
            Severity::Error,
            "WorkloadEndpoint",
            &field,
            format!("Pod: {message}"),
        )),
    }
}

/// Why a Pod failed to convert: the field and the message.
pub type PodError = (String, String);

/// The WorkloadEndpoint document of a Pod document; `Ok(None)` for a pod that
/// gets none (host network, finished, or no IP yet), as in Calico.
pub fn to_workload_endpoint(value: Value) -> Result<Option<Value>, PodError> {
    let pod: Pod = serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        (
            if field == "." { String::new() } else { field },
            e.inner().to_string(),
        )
    })?;
    let name = pod.metadata.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(("metadata.name".into(), "name is required".into()));
    }
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    // The pod's own node stands for "this node" so that the datastore's code
    // records it (it sets `spec.node` for local pods only).
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let Some(info) = PodInfo::from_pod(&pod, &node) else {
        return Ok(None);
    };
    let interface = calico_interface(&namespace, &name);
    Ok(Some(workload_endpoint(
        &(namespace, name),
        &info,
        &interface,
        &node,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(node: Option<&str>) -> Value {
        let mut p = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web-7d9f", "namespace": "shop", "labels": {"app": "web"}},
            "spec": {
                "serviceAccountName": "web",
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]
            },
            "status": {"phase": "Running", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}]}
        });
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        p
    }

    #[test]
    fn a_pod_becomes_the_kubernetes_datastores_workload_endpoint() {
        let wep = to_workload_endpoint(pod(Some("node2"))).unwrap().unwrap();
        assert_eq!(wep["kind"], "WorkloadEndpoint");
        assert_eq!(wep["metadata"]["name"], "web-7d9f");
        assert_eq!(wep["metadata"]["namespace"], "shop");
        assert_eq!(wep["metadata"]["labels"]["app"], "web");
        assert_eq!(wep["spec"]["pod"], "web-7d9f");
        assert_eq!(wep["spec"]["node"], "node2");
        assert_eq!(wep["spec"]["serviceAccountName"], "web");
        assert_eq!(
            wep["spec"]["ipNetworks"],
            json!(["10.1.0.5/32", "fd00::5/128"])
        );
        assert_eq!(wep["spec"]["ports"][0]["name"], "http");
        assert_eq!(
            wep["spec"]["interfaceName"],
            calico_interface("shop", "web-7d9f")
        );
        let unscheduled = to_workload_endpoint(pod(None)).unwrap().unwrap();
        assert!(unscheduled["spec"].get("node").is_none());
    }

    #[test]
    fn host_network_pods_get_no_endpoint_and_bad_fields_are_named() {
        let mut p = pod(Some("n"));
        p["spec"]["hostNetwork"] = json!(true);
        assert_eq!(to_workload_endpoint(p).unwrap(), None);
        let mut p = pod(Some("n"));
        p["spec"]["containers"] = json!("nope");
        let (field, _) = to_workload_endpoint(p).unwrap_err();
        assert_eq!(field, "spec.containers");
    }
}

//! Service fixtures shared by the evaluator's tests (agent/tests) and the lab's
//! (tests/tests, which include this file by path): a Service and its
//! EndpointSlice as `kubectl get -o yaml` writes them in a `v1 List`.

/// A `v1 Service` with a ClusterIP and one TCP port, and one EndpointSlice of
/// ready `backends` on `target_port`, as two items of a `v1 List` (to follow an
/// `items:` line).
pub fn service_items(
    namespace: &str,
    name: &str,
    cluster_ip: &str,
    port: u16,
    target_port: u16,
    backends: &[&str],
) -> String {
    let target = if target_port == port {
        String::new()
    } else {
        format!(", targetPort: {target_port}")
    };
    let endpoints: Vec<String> = backends
        .iter()
        .map(|ip| format!("{{addresses: [{ip}], conditions: {{ready: true}}}}"))
        .collect();
    format!(
        "- apiVersion: v1
  kind: Service
  metadata: {{name: {name}, namespace: {namespace}}}
  spec: {{clusterIP: {cluster_ip}, ports: [{{port: {port}{target}}}]}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {{name: {name}-1, namespace: {namespace}, labels: {{kubernetes.io/service-name: {name}}}}}
  addressType: IPv4
  endpoints: [{}]
  ports: [{{port: {target_port}, protocol: TCP}}]
",
        endpoints.join(", ")
    )
}

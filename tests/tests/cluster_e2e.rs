//! `agent run --node` on a files datastore that describes a cluster: this
//! node's WorkloadEndpoints (named as Calico names them, addressed by their
//! pods) are enforced, another node's (no interface) is a peer whose labels
//! and addresses policies still match.
mod common;

use common::*;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

/// frontend and backend on node1 (this node), database on node2 (a peer only:
/// no interface, nothing attached); frontend may reach only the database.
const CLUSTER: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: prod}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata:
    name: node1-k8s-frontend-eth0
    namespace: prod
    labels: {app: frontend}
  spec:
    node: node1
    pod: frontend
    interfaceName: calidemofront
    ipNetworks: [10.65.0.10/32]
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata:
    name: node1-k8s-backend-eth0
    namespace: prod
    labels: {app: backend}
  spec:
    node: node1
    pod: backend
    interfaceName: calidemoback
    ipNetworks: [10.65.0.20/32]
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata:
    name: node2-k8s-database-eth0
    namespace: prod
    labels: {app: database}
  spec:
    node: node2
    pod: database
    ipNetworks: [10.65.0.30/32]
- apiVersion: crd.projectcalico.org/v1
  kind: NetworkPolicy
  metadata:
    name: default.frontend-to-database-only
    namespace: prod
  spec:
    selector: app == 'frontend'
    types: [Egress]
    egress:
    - action: Allow
      destination:
        selector: app == 'database'
"#;

#[test]
fn other_nodes_endpoints_are_peers_and_endpoints_are_named_by_pod() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::datastore_with("cluster", &[("cluster.yaml", CLUSTER)]);
    let agent = Agent::start_with(&lab, &dir, &["--node", "node1"]);
    agent.wait_attached(2);

    let st = agent.status();
    assert!(st["diagnostics"].as_array().unwrap().is_empty(), "{st:#}");
    let mut endpoints: Vec<String> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap().to_string())
        .collect();
    endpoints.sort();
    assert_eq!(endpoints, ["prod/backend", "prod/frontend"], "{st:#}");
    assert!(
        st["datastore"].as_str().unwrap().ends_with("(node node1)"),
        "{st:#}"
    );

    // The peer's labels match: frontend reaches the database, not the backend.
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "frontend -> backend:8080"
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "backend -> database:8080 (the database is not policed here)"
    );

    // Flows name endpoints by pod, and filters take pods or WorkloadEndpoint names.
    for from in ["prod/frontend", "prod/node1-k8s-frontend-eth0"] {
        let f = wait_flow(
            &agent,
            &["--from", from, "--verdict", "deny"],
            "frontend -> backend",
            |f| is_flow(f, "frontend", "backend", 8080),
        );
        assert_eq!(f["reporter"]["endpoint"], "prod/frontend", "{f:#}");
    }
    let typo = agent.cli(&["flows", "--from", "prod/frontnd"]);
    assert!(!typo.status.success());
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(
        err.contains("no endpoint or network set \"prod/frontnd\" is known to the agent; did you mean prod/frontend?"),
        "{err}"
    );
}

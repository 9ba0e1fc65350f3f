//! Calico's `services` match, written as YAML (a `kubectl get -o yaml` List
//! of Services and EndpointSlices) and judged by the evaluator: a
//! destination Service reaches its backends on their ports only, a source
//! Service is its backends' addresses, and a Service that does not exist
//! matches nothing.
use std::path::PathBuf;

use agent::eval::{Evaluator, Flow, Packet, Verdict};
use agent::model::ir::{Model, Protocol};

#[path = "support/services.rs"]
mod services;

/// The workload endpoints.
const ENDPOINTS: &str = r#"
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {interfaceName: caliclient, ipNetworks: [10.0.1.2/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {interfaceName: caliweb, ipNetworks: [10.0.1.1/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: db, namespace: data, labels: {app: db}}
spec: {interfaceName: calidb, ipNetworks: [10.0.2.1/32]}
"#;

/// The policies.
const POLICIES: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
    - action: Allow
      destination:
        services: {name: web}
    - action: Allow
      destination:
        services: {name: gone, namespace: data}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-ingress, namespace: data}
spec:
  selector: app == 'db'
  types: [Ingress]
  ingress:
    - action: Allow
      protocol: TCP
      source:
        services: {name: web, namespace: shop}
        notPorts: [22]
"#;

/// Endpoints, the Services `web` (backend `web_backend`) and `db`, and the policies.
fn world(web_backend: &str) -> String {
    let web = services::service_items("shop", "web", "10.96.0.10", 80, 8080, &[web_backend]);
    let db = services::service_items("data", "db", "10.96.0.20", 5432, 5432, &["10.0.2.1"]);
    format!("{ENDPOINTS}---\napiVersion: v1\nkind: List\nitems:\n{web}{db}---\n{POLICIES}")
}

fn model() -> Model {
    let l = agent::model::load::load_sources(&[(PathBuf::from("t.yaml"), world("10.0.1.1"))]);
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    l.model
}

fn judge(m: &Model, src: &str, dst: &str, packet: Packet) -> agent::eval::FlowVerdict {
    Evaluator::new(m).evaluate_flow(&Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        packet,
    })
}

fn verdict(m: &Model, src: &str, dst: &str, packet: Packet) -> Verdict {
    judge(m, src, dst, packet).enforced.action
}

/// The source endpoint's egress verdict alone.
fn egress(m: &Model, src: &str, dst: &str, packet: Packet) -> Verdict {
    judge(m, src, dst, packet)
        .enforced
        .egress
        .expect("a policed source")
        .action
}

#[test]
fn destination_services_reach_the_backends_on_their_ports_only() {
    let m = model();
    let (client, web, db) = ("10.0.1.2", "10.0.1.1", "10.0.2.1");
    // Post-DNAT: the backend and its port.
    assert_eq!(verdict(&m, client, web, Packet::tcp(8080)), Verdict::Allow);
    // The backend on another port, another protocol, or another Service's backend.
    assert_eq!(verdict(&m, client, web, Packet::tcp(80)), Verdict::Deny);
    assert_eq!(
        verdict(
            &m,
            client,
            web,
            Packet::with_ports(Protocol::UDP, 40000, 8080)
        ),
        Verdict::Deny
    );
    assert_eq!(verdict(&m, client, db, Packet::tcp(5432)), Verdict::Deny);
    // The ClusterIP itself is no backend (the agent judges after the DNAT).
    assert_eq!(
        verdict(&m, client, "10.96.0.10", Packet::tcp(80)),
        Verdict::Deny
    );
}

#[test]
fn source_services_are_the_backends_addresses() {
    let m = model();
    assert_eq!(
        verdict(
            &m,
            "10.0.1.1",
            "10.0.2.1",
            Packet::with_ports(Protocol::TCP, 40000, 5432)
        ),
        Verdict::Allow
    );
    assert_eq!(
        verdict(
            &m,
            "10.0.1.1",
            "10.0.2.1",
            Packet::with_ports(Protocol::TCP, 22, 5432)
        ),
        Verdict::Deny
    );
    assert_eq!(
        verdict(
            &m,
            "10.0.1.2",
            "10.0.2.1",
            Packet::with_ports(Protocol::TCP, 40000, 5432)
        ),
        Verdict::Deny
    );
}

#[test]
fn a_service_whose_endpoints_change_re_resolves_on_the_next_load() {
    let moved = world("10.0.2.1");
    let l = agent::model::load::load_sources(&[(PathBuf::from("t.yaml"), moved)]);
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    assert_eq!(
        egress(&l.model, "10.0.1.2", "10.0.1.1", Packet::tcp(8080)),
        Verdict::Deny
    );
    assert_eq!(
        egress(&l.model, "10.0.1.2", "10.0.2.1", Packet::tcp(8080)),
        Verdict::Allow
    );
}

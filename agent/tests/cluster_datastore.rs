//! The files datastore describing a cluster: `kind: List` of v1 Pods as
//! `kubectl get pods -o yaml` prints it, crd.projectcalico.org/v1 documents,
//! WorkloadEndpoints of other nodes (`spec.node`, no interface) as peers,
//! endpoints addressed as `namespace/pod`.
use std::path::PathBuf;

use agent::eval::{Evaluator, Flow, Packet, Verdict};
use agent::flows::{FlowFilter, Matcher, View};
use agent::model::ir::Endpoint;
use agent::model::load::load_sources;
use agent::model::node::keep_this_node;
use agent::model::{Loaded, Severity};

fn load(text: &str) -> Loaded {
    load_sources(&[(PathBuf::from("cluster.yaml"), text.to_string())])
}

fn errors(l: &Loaded) -> Vec<String> {
    l.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect()
}

fn endpoint<'l>(l: &'l Loaded, key: &str) -> &'l Endpoint {
    l.model
        .endpoints
        .iter()
        .find(|e| e.key() == key)
        .unwrap_or_else(|| panic!("no {key} in {:?}", keys(l)))
}

fn keys(l: &Loaded) -> Vec<String> {
    l.model.endpoints.iter().map(|e| e.key()).collect()
}

/// Trimmed `kubectl get pods -n shop -o yaml` output (kubectl 1.30): server
/// fields, annotations, owner references, container statuses and all.
const PODS: &str = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Pod
  metadata:
    annotations:
      cni.projectcalico.org/podIP: 10.244.1.7/32
    creationTimestamp: "2026-11-20T10:00:00Z"
    generateName: web-7d9f8b6c5-
    labels:
      app: web
      pod-template-hash: 7d9f8b6c5
    name: web-7d9f8b6c5-x2x4q
    namespace: shop
    ownerReferences:
    - apiVersion: apps/v1
      blockOwnerDeletion: true
      controller: true
      kind: ReplicaSet
      name: web-7d9f8b6c5
      uid: 0b7c2a3e-1111-2222-3333-444455556666
    resourceVersion: "1234"
    uid: 5e1d0c1a-aaaa-bbbb-cccc-ddddeeeeffff
  spec:
    containers:
    - image: nginx:1.27
      imagePullPolicy: IfNotPresent
      name: nginx
      ports:
      - containerPort: 8080
        name: http
        protocol: TCP
      resources: {}
    dnsPolicy: ClusterFirst
    nodeName: node1
    restartPolicy: Always
    serviceAccount: web
    serviceAccountName: web
    tolerations:
    - effect: NoExecute
      key: node.kubernetes.io/not-ready
      operator: Exists
      tolerationSeconds: 300
  status:
    conditions:
    - lastProbeTime: null
      lastTransitionTime: "2026-11-20T10:00:05Z"
      status: "True"
      type: Ready
    containerStatuses:
    - containerID: containerd://abc
      image: docker.io/library/nginx:1.27
      imageID: docker.io/library/nginx@sha256:00
      lastState: {}
      name: nginx
      ready: true
      restartCount: 0
      started: true
      state:
        running:
          startedAt: "2026-11-20T10:00:04Z"
    hostIP: 192.168.0.11
    phase: Running
    podIP: 10.244.1.7
    podIPs:
    - ip: 10.244.1.7
    qosClass: BestEffort
    startTime: "2026-11-20T10:00:00Z"
- apiVersion: v1
  kind: Pod
  metadata:
    labels:
      app: db
    name: db-0
    namespace: shop
  spec:
    containers:
    - name: postgres
      ports:
      - containerPort: 5432
        name: pg
    nodeName: node2
  status:
    phase: Running
    podIPs:
    - ip: 10.244.2.9
- apiVersion: v1
  kind: Pod
  metadata:
    name: kube-proxy-abcde
    namespace: kube-system
  spec:
    containers:
    - name: kube-proxy
    hostNetwork: true
    nodeName: node1
  status:
    phase: Running
    podIP: 192.168.0.11
kind: List
metadata:
  resourceVersion: ""
"#;

/// Only web reaches db, on the named port `pg`.
const POLICY: &str = r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: shop
spec:
  podSelector:
    matchLabels: {app: db}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: web}
    ports:
    - port: pg
"#;

fn verdict(l: &Loaded, from: &str, to: &str, port: u16) -> Verdict {
    let ip = |key: &str| endpoint(l, key).ips[0];
    let flow = Flow {
        src: ip(from),
        dst: ip(to),
        packet: Packet::tcp(port),
    };
    Evaluator::new(&l.model)
        .evaluate_flow(&flow)
        .enforced
        .action
}

#[test]
fn a_kubectl_pod_list_becomes_workload_endpoints() {
    let l = load(&format!("{PODS}---\n{POLICY}"));
    assert!(errors(&l).is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(keys(&l), ["shop/web-7d9f8b6c5-x2x4q", "shop/db-0"]);
    let web = endpoint(&l, "shop/web-7d9f8b6c5-x2x4q");
    assert_eq!(web.labels["app"], "web");
    assert_eq!(web.labels["projectcalico.org/serviceaccount"], "web");
    assert_eq!(web.node.as_deref(), Some("node1"));
    assert_eq!(web.named_ports[0].port, 8080);
    assert!(web.interface.as_deref().unwrap().starts_with("cali"));
    assert_eq!(endpoint(&l, "shop/db-0").named_ports[0].name, "pg");
    // The host-network pod gets no endpoint, with a warning at its item.
    let skipped = l
        .diagnostics
        .iter()
        .find(|d| d.resource == "Pod/kube-system/kube-proxy-abcde")
        .expect("a warning for the host-network pod");
    assert_eq!(skipped.severity, Severity::Warning);
    let name_line = PODS
        .lines()
        .position(|l| l.contains("kube-proxy-abcde"))
        .unwrap()
        + 1;
    assert_eq!(skipped.line, name_line);
    assert_eq!(
        verdict(&l, "shop/web-7d9f8b6c5-x2x4q", "shop/db-0", 5432),
        Verdict::Allow
    );
    assert_eq!(
        verdict(&l, "shop/db-0", "shop/web-7d9f8b6c5-x2x4q", 8080),
        Verdict::Allow
    );
    let mut other = load(&format!("{PODS}---\n{POLICY}"));
    // On node1 the db pod (node2) is a peer only; the web pod is enforced.
    keep_this_node(&mut other, "node1");
    assert_eq!(endpoint(&other, "shop/db-0").interface, None);
    assert!(endpoint(&other, "shop/web-7d9f8b6c5-x2x4q")
        .interface
        .is_some());
}

#[test]
fn list_item_errors_point_at_the_item() {
    let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop}\n- apiVersion: projectcalico.org/v3\n  kind: GlobalNetworkPolicy\n  metadata:\n    name: bad\n  spec:\n    ingress:\n    - action: Nope\n";
    let l = load(text);
    let e: Vec<_> = l
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    assert_eq!(e.len(), 1, "{:#?}", l.diagnostics);
    assert_eq!(
        (e[0].line, e[0].field.as_str()),
        (13, "spec.ingress[0].action")
    );
    assert_eq!(e[0].resource, "GlobalNetworkPolicy/bad");
    let unknown = load("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n");
    assert_eq!(unknown.diagnostics[0].line, 5, "{:#?}", unknown.diagnostics);
    let not_items = load("apiVersion: v1\nkind: List\nitems: 3\n");
    assert_eq!(not_items.diagnostics[0].line, 3);
    assert!(load("apiVersion: v1\nkind: List\nitems: []\n")
        .diagnostics
        .is_empty());
}

#[test]
fn crd_documents_load_as_their_v3_documents() {
    let text = r#"apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata:
  name: default.deny-db
  resourceVersion: "77"
  uid: 8d1f
  annotations:
    projectcalico.org/metadata: '{"creationTimestamp":null}'
spec:
  selector: app == 'db'
  ingress:
  - action: Deny
---
apiVersion: crd.projectcalico.org/v1
kind: Tier
metadata:
  name: security
spec:
  order: 100
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata:
  name: security.lockdown
  namespace: shop
spec:
  tier: security
  selector: all()
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkSet
metadata:
  name: default.partners
  namespace: shop
spec:
  nets: [203.0.113.0/24]
"#;
    let l = load(text);
    assert!(errors(&l).is_empty(), "{:#?}", l.diagnostics);
    let mut names: Vec<_> = l.model.policies.iter().map(|p| p.id.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["deny-db", "security.lockdown"]);
    assert_eq!(
        l.model.network_sets[0].name, "default.partners",
        "not a tiered kind"
    );
    let bad = load(&text.replace("action: Deny", "action: Nope"));
    let e = &bad.diagnostics[0];
    assert_eq!(
        (e.resource.as_str(), e.line),
        ("GlobalNetworkPolicy/deny-db", 12)
    );
}

/// node1's web pod (WorkloadEndpoint named as Calico names it) and node2's
/// db pod, described without an interface.
const NODES: &str = r#"apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node1-k8s-web-eth0
  namespace: shop
  labels: {app: web}
spec:
  node: node1
  pod: web
  interfaceName: cali1234567890a
  ipNetworks: [10.244.1.7/32]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: node2-k8s-db-eth0
  namespace: shop
  labels: {app: db}
spec:
  node: node2
  pod: db
  ipNetworks: [10.244.2.9/32]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: db-from-web
spec:
  selector: app == 'db'
  ingress:
  - action: Allow
    source:
      selector: app == 'web'
"#;

#[test]
fn another_nodes_endpoint_needs_no_interface_and_is_a_peer() {
    let mut l = load(NODES);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(keys(&l), ["shop/web", "shop/db"]);
    // Offline every endpoint is policed.
    assert_eq!(verdict(&l, "shop/web", "shop/db", 5432), Verdict::Allow);
    assert_eq!(verdict(&l, "shop/db", "shop/web", 80), Verdict::Allow);
    keep_this_node(&mut l, "node1");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(endpoint(&l, "shop/db").interface, None);
    let compiled = agent::compile::compile(&l.model).unwrap();
    assert_eq!(
        compiled.endpoints.len(),
        1,
        "only node1's endpoint is compiled"
    );
    // The peer's labels still match: web's egress toward db is allowed on node1.
    assert_eq!(verdict(&l, "shop/web", "shop/db", 5432), Verdict::Allow);

    // On node2 its endpoint has no interface: loud, not silently unpoliced.
    let mut l = load(NODES);
    keep_this_node(&mut l, "node2");
    let w = &l.diagnostics[0];
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.resource, "WorkloadEndpoint/shop/node2-k8s-db-eth0");
    assert!(
        w.message
            .contains("shop/db runs on this node (node2) but has no interfaceName"),
        "{w}"
    );

    // Without spec.node an interface is still required.
    let no_node = load(&NODES.replace("  node: node2\n", ""));
    assert_eq!(errors(&no_node).len(), 1, "{:#?}", no_node.diagnostics);
    assert_eq!(no_node.diagnostics[0].field, "spec.interfaceName");
}

#[test]
fn flow_filters_take_pods_and_workload_endpoint_names_and_reject_unknown_ones() {
    let mut l = load(NODES);
    keep_this_node(&mut l, "node1");
    let view = View::new(&l.model, agent::compile::compile(&l.model).unwrap());
    let filter = |from: &str| FlowFilter {
        from: Some(from.into()),
        ..FlowFilter::default()
    };
    for name in ["shop/db", "shop/node2-k8s-db-eth0"] {
        assert!(
            Matcher::new(&filter(name)).unwrap().resolve(&view).is_ok(),
            "{name}"
        );
    }
    let err = Matcher::new(&filter("shop/dbb"))
        .unwrap()
        .resolve(&view)
        .err()
        .unwrap();
    assert_eq!(
        err,
        "no endpoint or network set \"shop/dbb\" is known to the agent; did you mean shop/db?"
    );
    let err = Matcher::new(&filter("ops/prometheus"))
        .unwrap()
        .resolve(&view)
        .err()
        .unwrap();
    assert!(
        err.starts_with("no endpoint or network set \"ops/prometheus\""),
        "{err}"
    );
}

#[test]
fn a_pod_with_two_endpoints_is_addressed_by_their_names() {
    let second = NODES
        .split("---\n")
        .next()
        .unwrap()
        .replace("node1-k8s-web-eth0", "node1-k8s-web-eth1")
        .replace("cali1234567890a", "cali1234567890b")
        .replace("10.244.1.7", "10.244.1.8");
    let l = load(&format!("{NODES}---\n{second}"));
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(
        keys(&l),
        [
            "shop/node1-k8s-web-eth0",
            "shop/db",
            "shop/node1-k8s-web-eth1"
        ]
    );
}

#[test]
fn a_bad_pod_names_the_endpoint_it_would_be_and_its_line() {
    let text = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  containers: nope\nstatus:\n  podIP: 10.0.0.1\n";
    let l = load(text);
    let e = &l.diagnostics[0];
    assert_eq!(
        (e.severity, e.line, e.resource.as_str(), e.field.as_str()),
        (
            Severity::Error,
            7,
            "WorkloadEndpoint/shop/web",
            "spec.containers"
        )
    );
    assert!(e.message.starts_with("Pod: "), "{e}");
    assert!(l.model.endpoints.is_empty());
}

/// `kubectl get ns,networkpolicies -o yaml` as printed: server fields, status.
#[test]
fn kubectl_namespaces_and_network_policies_load() {
    let text = r#"apiVersion: v1
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    creationTimestamp: "2026-11-20T09:00:00Z"
    labels:
      kubernetes.io/metadata.name: shop
      team: red
    name: shop
    resourceVersion: "42"
    uid: 1f2e3d4c-0000-1111-2222-333344445555
  spec:
    finalizers:
    - kubernetes
  status:
    phase: Active
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy"}
    creationTimestamp: "2026-11-20T09:01:00Z"
    generation: 1
    name: db
    namespace: shop
    resourceVersion: "43"
    uid: 2f2e3d4c-0000-1111-2222-333344445555
  spec:
    podSelector:
      matchLabels:
        app: db
    policyTypes:
    - Ingress
kind: List
metadata:
  resourceVersion: ""
"#;
    let l = load(text);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.policies.len(), 1);
}

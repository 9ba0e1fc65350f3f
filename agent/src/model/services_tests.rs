//! Services, EndpointSlices and Endpoints documents, and the `services` match.
use std::net::IpAddr;
use std::path::PathBuf;

use super::ir::*;
use super::*;

fn load(text: &str) -> Loaded {
    load::load_sources(&[(PathBuf::from("t.yaml"), text.to_string())])
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn errors(l: &Loaded) -> Vec<(String, String)> {
    l.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.field.clone(), d.message.clone()))
        .collect()
}

/// What `kubectl get svc,endpointslices,endpoints -o yaml` prints of a 1.21+
/// cluster (trimmed): a List with a Service, its slice, and its mirrored Endpoints.
const WEB: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop, uid: 5f1c, resourceVersion: "7"}
  spec:
    type: LoadBalancer
    clusterIP: 10.96.0.10
    clusterIPs: [10.96.0.10, "fd00:96::10"]
    externalIPs: [192.0.2.7]
    ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
    selector: {app: web}
    sessionAffinity: None
    ipFamilyPolicy: PreferDualStack
  status:
    loadBalancer:
      ingress: [{ip: 198.51.100.9}, {hostname: lb.example}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: web-abc12
    namespace: shop
    labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
  addressType: IPv4
  endpoints:
  - addresses: [10.65.0.20]
    conditions: {ready: true}
    nodeName: node1
    targetRef: {kind: Pod, name: web-1, namespace: shop}
  - addresses: [10.65.0.21]
    conditions: {ready: false}
  ports: [{name: http, port: 8080, protocol: TCP}]
- apiVersion: v1
  kind: Endpoints
  metadata: {name: web, namespace: shop}
  subsets:
  - addresses: [{ip: 10.65.0.99}]
    ports: [{name: http, port: 8080, protocol: TCP}]
"#;

#[test]
fn services_and_their_endpoints_load_from_a_list() {
    let l = load(WEB);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let s = &l.model.services;
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].namespace.as_str(), s[0].name.as_str()),
        ("shop", "web")
    );
    assert_eq!(
        s[0].frontends,
        vec![
            ip("10.96.0.10"),
            ip("192.0.2.7"),
            ip("198.51.100.9"),
            ip("fd00:96::10")
        ]
    );
    // The slice wins over the mirrored Endpoints; not-ready addresses count.
    assert_eq!(
        s[0].backends,
        vec![BackendSet {
            addresses: vec![ip("10.65.0.20"), ip("10.65.0.21")],
            ports: vec![(Protocol::TCP, 8080)],
        }]
    );
    assert_eq!(
        l.model.service_frontends(),
        vec![
            ip("10.96.0.10"),
            ip("192.0.2.7"),
            ip("198.51.100.9"),
            ip("fd00:96::10")
        ]
    );
}

#[test]
fn v1beta1_slices_and_endpoints_alone_give_backends() {
    let l = load(
        r#"
apiVersion: discovery.k8s.io/v1beta1
kind: EndpointSlice
metadata: {name: db-x, namespace: data, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
endpoints:
- addresses: ["fd00::5"]
  topology: {kubernetes.io/hostname: node2}
ports: [{port: 5432}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: dns, namespace: kube-system}
subsets:
- addresses: [{ip: 10.65.0.53}]
  notReadyAddresses: [{ip: 10.65.0.54}]
  ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
"#,
    );
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let s = &l.model.services;
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].name, "db");
    assert!(!s[0].defined);
    assert_eq!(s[0].backends[0].ports, vec![(Protocol::TCP, 5432)]);
    assert_eq!(s[1].name, "dns");
    assert_eq!(
        s[1].backends[0].addresses,
        vec![ip("10.65.0.53"), ip("10.65.0.54")]
    );
    assert_eq!(
        s[1].backends[0].ports,
        vec![(Protocol::TCP, 53), (Protocol::UDP, 53)]
    );
    assert!(l.model.service_frontends().is_empty());
}

#[test]
fn bad_addresses_and_ports_are_named() {
    let l = load(
        r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.300}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.65.0.1]}]
ports: [{port: 70000}, {port: 80, protocol: ICMP}]
"#,
    );
    assert_eq!(
        errors(&l),
        vec![
            (
                "spec.clusterIP[0]".into(),
                "`10.96.0.300` is not an IP address".into()
            ),
            (
                "ports[0].port".into(),
                "port 70000 is out of range; accepted: 1-65535".into()
            ),
            (
                "ports[1].protocol".into(),
                "protocol `ICMP` is not valid here; accepted: TCP, UDP, SCTP".into()
            ),
        ]
    );
    assert!(l.model.services.is_empty());
    // A headless Service has no frontend.
    let l = load("apiVersion: v1\nkind: Service\nmetadata: {name: h}\nspec: {clusterIP: None}\n");
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert!(l.model.services[0].frontends.is_empty());
}

const NP_HEAD: &str =
    "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: all()\n";

#[test]
fn services_matches_resolve_to_backends() {
    let text = format!(
        "{WEB}---\n{NP_HEAD}  egress:\n    - action: Allow\n      destination:\n        services: {{name: web}}\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source:\n        services: {{name: web, namespace: shop}}\n        ports: [1000]\n"
    );
    let l = load(&text);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let p = &l.model.policies[0];
    let dst = &p.egress[0].destination;
    let web = ServiceRef {
        namespace: "shop".into(),
        name: "web".into(),
    };
    assert_eq!(dst.services.as_ref(), Some(&web));
    let backends: Vec<ipnet::IpNet> = vec![
        "10.65.0.20/32".parse().unwrap(),
        "10.65.0.21/32".parse().unwrap(),
    ];
    assert_eq!(dst.nets, backends);
    assert_eq!(
        dst.service_ports.as_ref().unwrap()[0].ports,
        vec![(Protocol::TCP, 8080)]
    );
    let src = &p.ingress[0].source;
    assert_eq!(src.nets, backends);
    assert_eq!(src.service_ports, None);
    assert_eq!(src.ports.len(), 1);
}

#[test]
fn a_missing_service_matches_nothing_and_is_linted() {
    let text = format!(
        "{NP_HEAD}  egress:\n    - action: Allow\n      destination:\n        services: {{name: nope}}\n"
    );
    let l = load(&text);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let dst = &l.model.policies[0].egress[0].destination;
    assert!(dst.nets.is_empty());
    assert_eq!(dst.not_nets.len(), 2, "both roots: nothing matches");
    let lints = lint(&l);
    assert_eq!(lints.len(), 1, "{lints:#?}");
    assert_eq!(lints[0].field, "spec.egress[0].destination.services");
    assert!(
        lints[0].message.contains("shop/nope"),
        "{}",
        lints[0].message
    );
}

#[test]
fn services_placement_and_combinations_follow_calicos_validator() {
    let cases = [
        (
            "  ingress:\n    - action: Allow\n      destination:\n        services: {name: web}\n",
            "spec.ingress[0].destination.services",
            "not allowed in ingress rule destination",
        ),
        (
            "  egress:\n    - action: Allow\n      source:\n        services: {name: web}\n",
            "spec.egress[0].source.services",
            "not allowed in egress rule source",
        ),
        (
            "  egress:\n    - action: Allow\n      protocol: TCP\n      destination:\n        services: {name: web}\n        ports: [80]\n",
            "spec.egress[0].destination.ports",
            "cannot specify ports with a service selector",
        ),
        (
            "  egress:\n    - action: Allow\n      destination:\n        services: {name: web}\n        selector: app == 'x'\n",
            "spec.egress[0].destination.services",
            "cannot specify selector/notSelector and services",
        ),
        (
            "  egress:\n    - action: Allow\n      destination:\n        services: {name: web}\n        nets: [10.0.0.0/8]\n",
            "spec.egress[0].destination.services",
            "cannot specify nets/notNets and services",
        ),
        (
            "  egress:\n    - action: Allow\n      destination:\n        services: {namespace: shop}\n",
            "spec.egress[0].destination.services.name",
            "must specify a service name",
        ),
    ];
    for (spec, field, message) in cases {
        let l = load(&format!("{NP_HEAD}{spec}"));
        let e = errors(&l);
        assert_eq!(e.len(), 1, "{spec}: {e:#?}");
        assert_eq!(e[0].0, field, "{spec}");
        assert!(e[0].1.contains(message), "{spec}: {}", e[0].1);
    }
}

//! Evaluator scenarios written as Calico YAML and loaded by the real loader,
//! so namespace scoping, named ports, Kubernetes policies, tiers, staged
//! actions and host endpoints are checked end to end.
use std::path::PathBuf;

use agent::eval::{EndVerdict, Evaluator, Flow, FlowVerdict, Packet, Verdict};
use agent::model::ir::Model;

/// Namespaces prod (env=prod) and dev (env=dev); prod/web (http = TCP 8080),
/// prod/client, dev/client; host endpoint node1-eth0 at 192.168.0.1.
const WORLD: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels: {env: prod}
---
apiVersion: v1
kind: Namespace
metadata:
  name: dev
  labels: {env: dev}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: web
  namespace: prod
  labels: {app: web}
spec:
  interfaceName: caliweb
  ipNetworks: [10.0.1.1/32]
  ports:
    - {name: http, protocol: TCP, port: 8080}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: client
  namespace: prod
  labels: {app: client}
spec:
  interfaceName: caliprodclient
  ipNetworks: [10.0.1.2/32]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: client
  namespace: dev
  labels: {app: client}
spec:
  interfaceName: calidevclient
  ipNetworks: [10.0.2.2/32]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels: {role: node}
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.168.0.1]
"#;

fn world_with(policies: &str) -> Model {
    let text = format!("{WORLD}---\n{policies}");
    let loaded = agent::model::load::load_sources(&[(PathBuf::from("t.yaml"), text)]);
    assert!(!loaded.has_errors(), "{:#?}", loaded.diagnostics);
    loaded.model
}

fn ip_of(model: &Model, key: &str) -> std::net::IpAddr {
    model
        .endpoints
        .iter()
        .find(|e| e.key() == key)
        .unwrap_or_else(|| panic!("no endpoint {key}"))
        .ips[0]
}

fn tcp(model: &Model, from: &str, to: &str, port: u16) -> FlowVerdict {
    Evaluator::new(model).evaluate_flow(&Flow {
        src: ip_of(model, from),
        dst: ip_of(model, to),
        packet: Packet::tcp(port),
    })
}

fn trace(end: &Option<EndVerdict>) -> Vec<String> {
    end.as_ref()
        .expect("a policed end")
        .trace
        .iter()
        .map(ToString::to_string)
        .collect()
}

use Verdict::{Allow, Deny};

#[test]
fn a_namespaced_policy_rule_selector_only_sees_its_own_namespace() {
    let m = world_with(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: allow-client
  namespace: prod
spec:
  selector: app == 'web'
  ingress:
    - action: Allow
      source:
        selector: app == 'client'
"#,
    );
    let prod = tcp(&m, "prod/client", "prod/web", 8080);
    assert_eq!(prod.enforced.action, Allow);
    assert_eq!(
        trace(&prod.enforced.ingress),
        ["0|default|np:prod/allow-client|allow|0"]
    );
    let dev = tcp(&m, "dev/client", "prod/web", 8080);
    assert_eq!(dev.enforced.action, Deny);
    assert_eq!(
        trace(&dev.enforced.ingress),
        ["0|default|np:prod/allow-client|deny|-1"]
    );
}

#[test]
fn a_namespace_selector_selects_by_namespace_labels() {
    let m = world_with(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: web-from-dev
spec:
  selector: app == 'web'
  ingress:
    - action: Allow
      source:
        namespaceSelector: env == 'dev'
"#,
    );
    assert_eq!(tcp(&m, "dev/client", "prod/web", 80).enforced.action, Allow);
    assert_eq!(tcp(&m, "prod/client", "prod/web", 80).enforced.action, Deny);
}

#[test]
fn named_ports_from_yaml() {
    let m = world_with(
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: http-only
spec:
  selector: app == 'web'
  ingress:
    - action: Allow
      protocol: TCP
      destination:
        ports: [http]
"#,
    );
    assert_eq!(
        tcp(&m, "prod/client", "prod/web", 8080).enforced.action,
        Allow
    );
    assert_eq!(
        tcp(&m, "prod/client", "prod/web", 8081).enforced.action,
        Deny
    );
}

#[test]
fn kubernetes_default_deny_and_its_trace() {
    let m = world_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
  namespace: prod
spec:
  podSelector: {}
"#,
    );
    let v = tcp(&m, "dev/client", "prod/web", 80);
    assert_eq!(v.enforced.action, Deny);
    assert_eq!(
        trace(&v.enforced.ingress),
        ["0|default|knp:prod/default-deny|deny|-1"]
    );
    // Ingress only: prod pods may still connect out.
    assert_eq!(
        tcp(&m, "prod/client", "dev/client", 80).enforced.action,
        Allow
    );
}

#[test]
fn a_tier_with_default_pass_hands_over_to_the_next_tier() {
    let m = world_with(
        r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata:
  name: security
spec:
  order: 100
  defaultAction: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: no-dev-to-prod
spec:
  tier: security
  selector: app == 'web'
  ingress:
    - action: Deny
      source:
        namespaceSelector: env == 'dev'
"#,
    );
    let dev = tcp(&m, "dev/client", "prod/web", 80);
    assert_eq!(dev.enforced.action, Deny);
    assert_eq!(
        trace(&dev.enforced.ingress),
        ["0|security|gnp:no-dev-to-prod|deny|0"]
    );
    let prod = tcp(&m, "prod/client", "prod/web", 80);
    assert_eq!(prod.enforced.action, Allow);
    assert_eq!(
        trace(&prod.enforced.ingress),
        [
            "0|security|gnp:no-dev-to-prod|pass|-1",
            "1|__PROFILE__|pro:kns.prod|allow|0"
        ]
    );
}

#[test]
fn staged_delete_and_set_from_yaml() {
    let m = world_with(
        r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: web-lockdown
  namespace: prod
spec:
  selector: app == 'web'
  ingress:
    - action: Allow
      source:
        selector: app == 'client'
---
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata:
  name: web-lockdown
  namespace: prod
spec:
  stagedAction: Delete
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata:
  name: clients-no-egress
spec:
  selector: app == 'client'
  types: [Egress]
"#,
    );
    // Deleting web-lockdown opens prod/web to dev/client...
    let dev = tcp(&m, "dev/client", "prod/web", 80);
    assert_eq!((dev.enforced.action, dev.pending.action), (Deny, Deny));
    assert_eq!(
        trace(&dev.pending.ingress),
        ["0|__PROFILE__|pro:kns.prod|allow|0"]
    );
    // ...but the staged egress lockdown of every client closes it again.
    assert_eq!(
        trace(&dev.pending.egress),
        ["0|default|sgnp:clients-no-egress|deny|-1"]
    );
    assert_eq!(
        trace(&dev.enforced.egress),
        ["0|__PROFILE__|pro:kns.dev|allow|0"]
    );
}

#[test]
fn a_host_endpoint_denies_by_default_but_keeps_failsafe_ssh() {
    let m = world_with("");
    let ev = Evaluator::new(&m);
    let outside: std::net::IpAddr = "192.168.0.99".parse().unwrap();
    let host = ip_of(&m, "node1-eth0");
    let to_host = |port| {
        ev.evaluate_flow(&Flow {
            src: outside,
            dst: host,
            packet: Packet::tcp(port),
        })
    };
    assert_eq!(to_host(22).enforced.action, Allow);
    assert_eq!(to_host(80).enforced.action, Deny);
    assert_eq!(
        trace(&to_host(80).enforced.ingress),
        ["0|__PROFILE__|pro:__NO_MATCH__|deny|0"]
    );
}

#[test]
fn namespaces_carry_the_api_servers_name_label() {
    // The Namespace documents above have no kubernetes.io/metadata.name label
    // (API servers before 1.21 did not set it); the selector still matches.
    let m = world_with(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-from-dev
  namespace: prod
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector:
            matchLabels: {kubernetes.io/metadata.name: dev}
"#,
    );
    assert_eq!(
        tcp(&m, "dev/client", "prod/web", 8080).enforced.action,
        Allow
    );
    assert_eq!(
        tcp(&m, "prod/client", "prod/web", 8080).enforced.action,
        Deny
    );
}

//! Service frontends from `v1 Service` documents (no `serviceClusterIPRanges`
//! in any config) and Calico's `services` match, with real traffic through
//! kube-proxy-style nftables DNAT in the lab's node namespace: the client's
//! egress policy allows `destination.services: web`, so a connection to web's
//! ClusterIP is judged against the backend the DNAT chose and passes, while
//! the `other` Service's backend is denied (through its ClusterIP and directly).
mod common;
#[path = "../../agent/tests/support/services.rs"]
mod services;

use common::Agent;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

/// The namespace and its workload endpoints.
const ENDPOINTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {interfaceName: caliclient, ipNetworks: [10.65.0.10/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: server, namespace: prod, labels: {app: server}}
spec: {interfaceName: caliserver, ipNetworks: [10.65.0.20/32]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: other, namespace: prod, labels: {app: other}}
spec: {interfaceName: caliother, ipNetworks: [10.65.0.30/32]}
"#;

/// The client may reach the Service `web` only.
const POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
    - action: Allow
      destination:
        services: {name: web}
"#;

/// Endpoints, the Services `web` (backend `server`) and `other`, and the policy.
fn datastore() -> String {
    let web = services::service_items("prod", "web", "10.96.0.10", 80, 8080, &["10.65.0.20"]);
    let other = services::service_items("prod", "other", "10.96.0.11", 80, 8080, &["10.65.0.30"]);
    format!("{ENDPOINTS}---\napiVersion: v1\nkind: List\nitems:\n{web}{other}---\n{POLICY}")
}

/// kube-proxy's nftables mode reduced to its effect: DNAT at prerouting.
const NFT: &str = "table ip kube-proxy-test {
  chain dstnat {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.96.0.10 tcp dport 80 dnat to 10.65.0.20:8080
    ip daddr 10.96.0.11 tcp dport 80 dnat to 10.65.0.30:8080
  }
}
";

#[test]
fn service_documents_give_frontends_and_the_services_match_allows_only_its_backend() {
    lab::require_root();
    let lab = Lab::new();
    let client = lab.add_pod_at("prod", "client", 10, "caliclient");
    let server = lab.add_pod_at("prod", "server", 20, "caliserver");
    let other = lab.add_pod_at("prod", "other", 30, "caliother");
    let _s = server.tcp_listen(8080);
    let _o = other.tcp_listen(8080);
    let file = std::env::temp_dir().join(format!("svcobj-nft-{}.nft", lab.id()));
    std::fs::write(&file, NFT).unwrap();
    let out = lab
        .node()
        .command("nft")
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "nft: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = Agent::datastore_with("svcobj", &[("00-svc.yaml", &datastore())]);
    let agent = Agent::start_with(&lab, &dir, &[]);
    agent.wait_attached(3);
    let st = agent.status();
    let frontends: Vec<&str> = st["services"]["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert_eq!(frontends, ["10.96.0.10/32", "10.96.0.11/32"], "{st:#}");
    // Through web's ClusterIP: judged against the backend, allowed.
    assert_eq!(
        client.tcp_connect(
            "10.96.0.10".parse::<std::net::IpAddr>().unwrap(),
            80,
            PROBE_TIMEOUT
        ),
        TcpProbe::Connected
    );
    // The backend directly, too (the match is the backend's address and port).
    assert_eq!(
        client.tcp_connect(server.ips()[0], 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    // The other Service's backend: denied through its ClusterIP and directly.
    assert_eq!(
        client.tcp_connect(
            "10.96.0.11".parse::<std::net::IpAddr>().unwrap(),
            80,
            SHORT_TIMEOUT
        ),
        TcpProbe::TimedOut
    );
    assert_eq!(
        client.tcp_connect(other.ips()[0], 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut
    );
    // web's backend on another port is no Service backend either.
    let _s2 = server.tcp_listen(9090);
    assert_eq!(
        client.tcp_connect(server.ips()[0], 9090, SHORT_TIMEOUT),
        TcpProbe::TimedOut
    );
}

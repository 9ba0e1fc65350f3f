//! Service traffic under `agent run`, with kube-proxy-style DNAT in the lab's
//! node namespace: a pod connecting to a ClusterIP is judged, like Calico
//! judges it, against the backend the DNAT chose (egress of the client and
//! ingress of the backend), for a local backend pod and a remote backend
//! (reached by the node's data interface `eth1`), IPv4 and IPv6, with
//! kube-proxy's nftables mode (one test) and iptables mode (iptables-nft
//! KUBE-SERVICES / KUBE-SVC-* / KUBE-SEP-* chains, the other).
//!
//! Services (frontend port 80, backends on 8080):
//! - 10.96.0.10 / fd96::10 -> prod/server (allowed by the client's egress policy)
//! - 10.96.0.11 / fd96::11 -> prod/other (not allowed: denied)
//! - 10.96.0.12 / fd96::12 -> the remote backend 10.66.0.2 / fd66::2 (allowed by ipBlock)
mod common;

use std::net::IpAddr;

use common::{wait_flow, Agent};
use lab::{Lab, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};
use serde_json::Value;

const DATASTORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {interfaceName: caliclient, ipNetworks: [10.65.0.10/32, fd65::10/128]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: server, namespace: prod, labels: {app: server}}
spec: {interfaceName: caliserver, ipNetworks: [10.65.0.20/32, fd65::20/128]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: other, namespace: prod, labels: {app: other}}
spec: {interfaceName: caliother, ipNetworks: [10.65.0.30/32, fd65::30/128]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: prod}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to: [{podSelector: {matchLabels: {app: server}}}]
      ports: [{protocol: TCP, port: 8080}]
    - to: [{ipBlock: {cidr: 10.66.0.2/32}}, {ipBlock: {cidr: "fd66::2/128"}}]
      ports: [{protocol: TCP, port: 8080}]
---
# The backends admit the client (their ingress is judged post-DNAT too).
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: backends-ingress, namespace: prod}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{protocol: TCP, port: 8080}]
---
# Staged, so that allowed flows are reported too (with both verdicts).
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: observe-client}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
    - action: Allow
"#;

const CONFIG: &str = "serviceClusterIPRanges: [10.96.0.0/12, \"fd96::/108\"]\n";

/// (frontend, backend) addresses of one Service, v4 and v6.
struct Svc {
    frontends: [IpAddr; 2],
    backends: [IpAddr; 2],
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn services() -> [Svc; 3] {
    let svc = |f4: &str, f6: &str, b4: &str, b6: &str| Svc {
        frontends: [ip(f4), ip(f6)],
        backends: [ip(b4), ip(b6)],
    };
    [
        svc("10.96.0.10", "fd96::10", "10.65.0.20", "fd65::20"),
        svc("10.96.0.11", "fd96::11", "10.65.0.30", "fd65::30"),
        svc("10.96.0.12", "fd96::12", "10.66.0.2", "fd66::2"),
    ]
}

fn bracket(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// kube-proxy's nftables mode, roughly: a `service-ips` verdict map jumped to
/// from the `dstnat` prerouting chain, one chain per Service and per endpoint.
fn nftables_rules() -> String {
    let mut out = String::new();
    for (family, v) in [("ip", 0), ("ip6", 1)] {
        let addr = if v == 0 { "ipv4_addr" } else { "ipv6_addr" };
        let mut elements = Vec::new();
        let mut chains = String::new();
        for (i, s) in services().iter().enumerate() {
            elements.push(format!(
                "{} . tcp . 80 : goto service-{i}-prod-svc-tcp-http",
                s.frontends[v]
            ));
            chains.push_str(&format!(
                "  chain service-{i}-prod-svc-tcp-http {{\n    numgen random mod 1 vmap {{ 0 : goto endpoint-{i}-prod-svc-tcp-http }}\n  }}\n  chain endpoint-{i}-prod-svc-tcp-http {{\n    meta l4proto tcp dnat to {}:8080\n  }}\n",
                bracket(s.backends[v])
            ));
        }
        out.push_str(&format!(
            "table {family} kube-proxy {{\n  map service-ips {{\n    type {addr} . inet_proto . inet_service : verdict\n    elements = {{ {} }}\n  }}\n  chain services {{\n    {family} daddr . meta l4proto . th dport vmap @service-ips\n  }}\n  chain nat-prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }}\n{chains}}}\n",
            elements.join(", ")
        ));
    }
    out
}

/// kube-proxy's iptables mode: KUBE-SERVICES from PREROUTING, a KUBE-SVC-*
/// chain per Service and a KUBE-SEP-* chain per endpoint doing the DNAT.
fn iptables_rules(v: usize) -> Vec<String> {
    let mut cmds = vec![
        "-t nat -N KUBE-SERVICES".to_string(),
        "-t nat -A PREROUTING -m comment --comment kubernetes-service-portals -j KUBE-SERVICES"
            .to_string(),
    ];
    for (i, s) in services().iter().enumerate() {
        let prefix = if v == 0 { 32 } else { 128 };
        cmds.extend([
            format!("-t nat -N KUBE-SVC-PROD{i}"),
            format!("-t nat -N KUBE-SEP-PROD{i}A"),
            format!(
                "-t nat -A KUBE-SERVICES -d {}/{prefix} -p tcp -m tcp --dport 80 -j KUBE-SVC-PROD{i}",
                s.frontends[v]
            ),
            format!("-t nat -A KUBE-SVC-PROD{i} -j KUBE-SEP-PROD{i}A"),
            format!(
                "-t nat -A KUBE-SEP-PROD{i}A -p tcp -m tcp -j DNAT --to-destination {}:8080",
                bracket(s.backends[v])
            ),
        ]);
    }
    cmds
}

fn run_ok(cmd: &mut std::process::Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The log without terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

enum Mode {
    Nftables,
    Iptables,
}

fn install_kube_proxy_rules(lab: &Lab, mode: Mode) {
    match mode {
        Mode::Nftables => {
            let file = std::env::temp_dir().join(format!("svc-nft-{}.nft", lab.id()));
            std::fs::write(&file, nftables_rules()).unwrap();
            run_ok(lab.node().command("nft").arg("-f").arg(&file), "nft -f");
            let _ = std::fs::remove_file(&file);
        }
        Mode::Iptables => {
            for (v, tool) in [(0, "iptables"), (1, "ip6tables")] {
                for c in iptables_rules(v) {
                    run_ok(
                        lab.node()
                            .command(tool)
                            .arg("-w")
                            .args(c.split_whitespace()),
                        &format!("{tool} {c}"),
                    );
                }
            }
        }
    }
}

/// The client's egress record of a flow to `frontend`:80 judged as `backend`:8080.
fn is_service_flow(f: &Value, frontend: IpAddr, backend: IpAddr) -> bool {
    f["service"]["ip"] == frontend.to_string()
        && f["dst"]["ip"] == backend.to_string()
        && f["dst"]["port"] == 8080
        && f["service"]["port"] == 80
        && f["direction"] == "egress"
}

/// What the test does after checking the first agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Then {
    Nothing,
    /// kill -9, then a new agent adopting the pinned state.
    Restart,
    /// The same, with the pinned tables of an earlier layout, and probes of
    /// the Services running while the new agent starts.
    Upgrade,
}

fn services_are_judged_after_dnat(mode: Mode, then: Then) {
    lab::require_root();
    let lab = Lab::new();
    let client = lab.add_pod_at("prod", "client", 10, "caliclient");
    let server = lab.add_pod_at("prod", "server", 20, "caliserver");
    let other = lab.add_pod_at("prod", "other", 30, "caliother");
    let remote = lab.add_external("remote");
    let _s = server.tcp_listen(8080);
    let _o = other.tcp_listen(8080);
    let _r = remote.tcp_listen(8080);
    install_kube_proxy_rules(&lab, mode);
    let dir = Agent::datastore_with("svc", &[("00-svc.yaml", DATASTORE)]);
    let config = dir.parent().unwrap().join("agent.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let mut agent = Agent::start_with(&lab, &dir, &["--config", config.to_str().unwrap()]);
    agent.wait_attached(3);
    let st = agent.status();
    assert_eq!(
        st["services"]["frontends"].as_array().unwrap().len(),
        2,
        "{st:#}"
    );
    assert!(
        st["services"]["post_nat"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("eth1=")),
        "{st:#}"
    );

    let [to_server, to_other, to_remote] = services();
    for v in 0..2 {
        // Direct connections: as before.
        let (s, o) = (server.ips()[v], other.ips()[v]);
        assert_eq!(
            client.tcp_connect(s, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{s}"
        );
        assert_eq!(
            client.tcp_connect(o, 8080, SHORT_TIMEOUT),
            TcpProbe::TimedOut,
            "{o}"
        );
        // Through the Services: judged against the backend DNAT chose;
        // replies come back through the reverse NAT (the probe exchanges data).
        let f = to_server.frontends[v];
        assert_eq!(
            client.tcp_connect(f, 80, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{f}"
        );
        let f = to_remote.frontends[v];
        assert_eq!(
            client.tcp_connect(f, 80, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{f}"
        );
        let f = to_other.frontends[v];
        assert_eq!(
            client.tcp_connect(f, 80, SHORT_TIMEOUT),
            TcpProbe::TimedOut,
            "{f}"
        );
        // A second connection: the same verdicts (conntrack of the new flows).
        let f = to_server.frontends[v];
        assert_eq!(
            client.tcp_connect(f, 80, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{f}"
        );
    }

    // Flow records name the Service and the backend.
    for v in 0..2 {
        for (svc, action) in [
            (&to_server, "allow"),
            (&to_remote, "allow"),
            (&to_other, "deny"),
        ] {
            let (f, b) = (svc.frontends[v], svc.backends[v]);
            let rec = wait_flow(&agent, &["--last", "1000"], &format!("{f} -> {b}"), |r| {
                is_service_flow(r, f, b)
            });
            assert_eq!(rec["enforced"]["action"], action, "{rec:#}");
            assert_eq!(rec["src"]["name"], "client", "{rec:#}");
            assert_eq!(rec["reporter"]["endpoint"], "prod/client", "{rec:#}");
        }
    }
    let by_service = agent.flows(&["--last", "1000", "--to", "10.96.0.10"]);
    assert!(
        !by_service.is_empty()
            && by_service
                .iter()
                .all(|r| r["service"]["ip"] == "10.96.0.10" && r["dst"]["ip"] == "10.65.0.20"),
        "--to a ClusterIP: {by_service:#?}"
    );
    let denied = agent.flows(&["--last", "1000", "--verdict", "deny"]);
    assert!(
        !denied.iter().any(|r| {
            let d = r["dst"]["ip"].as_str().unwrap_or("");
            d.starts_with("10.96.") || d.starts_with("fd96:")
        }),
        "no verdict against a ClusterIP: {denied:#?}"
    );
    let text = String::from_utf8_lossy(&agent.cli(&["flows", "--last", "1000"]).stdout).to_string();
    assert!(
        text.lines()
            .any(|l| l.contains("-> prod/server 10.65.0.20:8080")
                && l.contains("via service 10.96.0.10:80")),
        "{text}"
    );
    let st = agent.status();
    for c in ["service_deferred", "service_judged"] {
        assert!(st["counters"][c].as_u64().unwrap() >= 6, "{c}: {st:#}");
    }
    if then == Then::Nothing {
        return;
    }

    // kill -9: the pinned programs (post_nat on eth1 included) keep judging
    // Service flows; a new agent adopts the pinned links and maps.
    let pin = agent
        .bpffs
        .join("links")
        .join(format!("if{}_postnat", remote.node_ifindex));
    assert!(pin.exists(), "{}", pin.display());
    agent.kill9();
    agent.keep_state();
    let check = |what: &str| {
        for v in 0..2 {
            for (svc, want) in [
                (&to_server, TcpProbe::Connected),
                (&to_remote, TcpProbe::Connected),
                (&to_other, TcpProbe::TimedOut),
            ] {
                let f = svc.frontends[v];
                let t = if want == TcpProbe::Connected {
                    PROBE_TIMEOUT
                } else {
                    SHORT_TIMEOUT
                };
                assert_eq!(client.tcp_connect(f, 80, t), want, "{what}: {f}");
            }
        }
    };
    check("no agent running");
    let bpffs = agent.bpffs.clone();
    if then == Then::Upgrade {
        for name in ["GROUPS_0", "GROUPS_1"] {
            common::pin_old_groups_map(&bpffs, name);
        }
    }
    let start = || {
        let second = Agent::start_on(&lab, &dir, &bpffs, &["--config", config.to_str().unwrap()]);
        second.wait_attached(3);
        let st = second.wait_status("post_nat adopted on eth1", |s| {
            s["services"]["post_nat"]
                .as_array()
                .is_some_and(|a| a.iter().any(|i| i.as_str().unwrap().starts_with("eth1=")))
        });
        (second, st)
    };
    let (second, st) = match then {
        Then::Upgrade => {
            let allowed = [to_server.frontends[0], to_remote.frontends[0]];
            let ((agent, st), probes) = probing(&client, &allowed, to_other.frontends[0], start);
            assert!(
                probes.iter().all(|(_, failed, _)| failed.is_empty()),
                "Service verdicts during the upgrade (frontend, failed, tried): {probes:?}"
            );
            assert!(
                agent
                    .log_text()
                    .contains("pinned policy tables of another layout"),
                "{}",
                agent.log_text()
            );
            (agent, st)
        }
        _ => start(),
    };
    assert!(pin.exists(), "{st:#}");
    let log = strip_ansi(&second.log_text());
    assert!(
        log.lines().any(|l| l.contains("post_nat attached")
            && l.contains("interface=eth1 ")
            && l.contains("adopted=true")),
        "{log}"
    );
    check("after the restart");
}

/// How long a probe of an allowed Service waits during the upgrade.
const ALLOWED_WITHIN: std::time::Duration = std::time::Duration::from_millis(900);

/// A frontend, the probes that got another answer than expected (when, what),
/// and how many were made.
type Probed = (IpAddr, Vec<(std::time::Duration, TcpProbe)>, usize);

/// Runs `during` while threads connect from `client` to each of `allowed`
/// (port 80, expected to connect) and to `denied` (expected to time out), as
/// fast as they can; returns what `during` returned and, per frontend, the
/// probes that got another answer (with when) and how many were made.
fn probing<T>(
    client: &lab::Pod,
    allowed: &[IpAddr],
    denied: IpAddr,
    during: impl FnOnce() -> T,
) -> (T, Vec<Probed>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        let probe = |frontend: IpAddr, want: TcpProbe, timeout| {
            let stop = &stop;
            scope.spawn(move || {
                let (mut failed, mut tried) = (Vec::new(), 0);
                while !stop.load(Ordering::SeqCst) {
                    let got = client.tcp_connect(frontend, 80, timeout);
                    tried += 1;
                    if got != want {
                        failed.push((started.elapsed(), got));
                    }
                    // ~100 a second: enough to land in any gap, not a flood
                    // that the echo servers' accept queues fall behind.
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                (frontend, failed, tried)
            })
        };
        // Under a second: a SYN dropped once would be retransmitted after 1 s
        // and still connect within a longer timeout, hiding a short gap.
        let mut threads: Vec<_> = allowed
            .iter()
            .map(|&f| probe(f, TcpProbe::Connected, ALLOWED_WITHIN))
            .collect();
        threads.push(probe(denied, TcpProbe::TimedOut, SHORT_TIMEOUT));
        let t = during();
        stop.store(true, Ordering::SeqCst);
        let probes = threads.into_iter().map(|h| h.join().unwrap()).collect();
        (t, probes)
    })
}

/// Also: a restart (kill -9, then a new agent adopting the pinned state).
#[test]
fn services_nftables_mode_local_and_remote_backends() {
    services_are_judged_after_dnat(Mode::Nftables, Then::Restart);
}

#[test]
fn services_iptables_mode_local_and_remote_backends() {
    services_are_judged_after_dnat(Mode::Iptables, Then::Nothing);
}

/// An upgrade to another table layout (the new agent replaces the pinned
/// table group): Service flows keep their verdicts all through the new
/// agent's start, the remote backend's too, whose verdict `post_nat` gives.
#[test]
fn services_keep_their_verdicts_through_an_upgrade_to_another_table_layout() {
    services_are_judged_after_dnat(Mode::Nftables, Then::Upgrade);
}

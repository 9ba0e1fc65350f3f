//! `agent run` enforcing beyond TCP, with real traffic in a lab: UDP ports,
//! UDP source ports, ICMP and ICMPv6 types, IPv4 and IPv6, fragmented datagrams,
//! PMTU discovery through ICMP errors related to a flow, and a host endpoint
//! under a deny-all policy whose failsafe SSH port stays reachable (the lockout
//! protection).
mod common;

use std::time::{Duration, Instant};

use common::{wait_flow, Agent};
use lab::{Lab, PingProbe, TcpProbe, UdpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

const DATASTORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {interfaceName: caliclient, ipNetworks: [10.65.0.10/32, fd65::10/128]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: dns, namespace: prod, labels: {app: dns}}
spec: {interfaceName: calidns, ipNetworks: [10.65.0.40/32, fd65::40/128]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {interfaceName: caliweb, ipNetworks: [10.65.0.50/32, fd65::50/128]}
---
# dns: only UDP 53 in (both families), and 5353 from source ports 1000-2000.
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: dns-udp-53}
spec:
  order: 10
  selector: app == 'dns'
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: UDP, destination: {ports: [53]}}
    - {action: Allow, protocol: UDP, source: {ports: ['1000:2000']}, destination: {ports: [5353]}}
---
# web: no echo requests (v4 or v6), HTTP allowed.
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-no-ping}
spec:
  order: 20
  selector: app == 'web'
  types: [Ingress]
  ingress:
    - {action: Deny, protocol: ICMP, icmp: {type: 8}}
    - {action: Deny, protocol: ICMPv6, icmp: {type: 128}}
    - {action: Allow, protocol: TCP, destination: {ports: [80]}}
---
# The node's interface to the admin network, and a deny-all on it.
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node-eth1, labels: {role: node}}
spec: {node: lab-node, interfaceName: eth1, expectedIPs: [10.66.0.1, "fd66::1"]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-deny-all}
spec:
  order: 30
  selector: role == 'node'
  types: [Ingress, Egress]
"#;

#[test]
fn udp_icmp_ipv6_and_host_endpoint_failsafe() {
    lab::require_root();
    let lab = Lab::new();
    let client = lab.add_pod_at("prod", "client", 10, "caliclient");
    let dns = lab.add_pod_at("prod", "dns", 40, "calidns");
    let web = lab.add_pod_at("prod", "web", 50, "caliweb");
    let admin = lab.add_external("admin");
    assert_eq!(admin.node_if, "eth1");
    let _servers = [
        dns.udp_echo(53),
        dns.udp_echo(5353),
        web.tcp_listen(80),
        lab.node().tcp_listen(22),
        lab.node().tcp_listen(8080),
    ];
    // Before the agent: everything reachable.
    assert_eq!(
        admin.tcp_connect(admin.node_ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    assert_eq!(client.ping(web.ipv4, PROBE_TIMEOUT), PingProbe::Replied);

    let dir = Agent::datastore_with("protocols", &[("policy.yaml", DATASTORE)]);
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(4);

    for dst in dns.ips() {
        assert_eq!(
            client.udp_request(dst, 53, PROBE_TIMEOUT),
            UdpProbe::Replied,
            "{dst}:53"
        );
        // From an ephemeral port (32768 and up): denied.
        assert_eq!(
            client.udp_request(dst, 5353, SHORT_TIMEOUT),
            UdpProbe::TimedOut,
            "{dst}:5353"
        );
        // 3000 bytes over 1500-byte links: IP fragments, only the first of which
        // has the port the policy allows (the others take it from the first).
        assert_eq!(
            client.udp_request_len(dst, 53, 3000, PROBE_TIMEOUT),
            UdpProbe::Replied,
            "{dst}:53, fragmented"
        );
        for (src_port, want) in [(1500, UdpProbe::Replied), (2001, UdpProbe::TimedOut)] {
            let timeout = if want == UdpProbe::Replied {
                PROBE_TIMEOUT
            } else {
                SHORT_TIMEOUT
            };
            assert_eq!(
                client.udp_request_from(dst, 5353, src_port, timeout),
                want,
                "{dst}:5353 from port {src_port}"
            );
        }
    }
    let tracked = agent.status()["counters"]["fragments_tracked"].clone();
    assert!(
        tracked.as_u64().is_some_and(|n| n >= 2),
        "later fragments took their first fragment's ports: {tracked}"
    );
    for dst in web.ips() {
        assert_eq!(
            client.ping(dst, SHORT_TIMEOUT),
            PingProbe::TimedOut,
            "ping {dst}"
        );
        assert_eq!(
            client.tcp_connect(dst, 80, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{dst}:80"
        );
    }
    // Nothing selects the client: its profile allows, pings to it pass.
    for dst in client.ips() {
        assert_eq!(
            web.ping(dst, PROBE_TIMEOUT),
            PingProbe::Replied,
            "ping {dst}"
        );
    }

    // The host endpoint: deny-all, but the inbound failsafe SSH port stays open.
    for node_ip in admin.node_ips() {
        assert_eq!(
            admin.tcp_connect(node_ip, 22, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{node_ip}:22"
        );
        assert_eq!(
            admin.tcp_connect(node_ip, 8080, SHORT_TIMEOUT),
            TcpProbe::TimedOut,
            "{node_ip}:8080"
        );
    }
    let denied = wait_flow(
        &agent,
        &["--verdict", "deny", "--port", "8080"],
        "host ingress deny",
        |f| f["reporter"]["endpoint"] == "node-eth1" && f["direction"] == "ingress",
    );
    assert!(
        denied["enforced"]["trace"]
            .to_string()
            .contains("host-deny-all"),
        "{denied:#}"
    );
    wait_flow(
        &agent,
        &["--verdict", "deny", "--protocol", "UDP"],
        "udp deny",
        |f| f["dst"]["port"] == 5353 && f["reporter"]["endpoint"] == "prod/dns",
    );
}

const PMTU_DATASTORE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: client, namespace: prod, labels: {app: client}}
spec: {interfaceName: caliclient, ipNetworks: [10.65.0.10/32, fd65::10/128]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: web, namespace: prod, labels: {app: web}}
spec: {interfaceName: caliweb, ipNetworks: [10.65.0.50/32, fd65::50/128]}
---
# The client accepts nothing new (no ICMP either); it may send anything.
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: client-no-ingress}
spec:
  order: 10
  selector: app == 'client'
  types: [Ingress]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web-http-only}
spec:
  order: 20
  selector: app == 'web'
  types: [Ingress]
  ingress:
    - {action: Allow, protocol: TCP, destination: {ports: [80]}}
"#;

/// Writes `len` bytes to the echo server and reads them back, within `timeout`.
fn echo_bulk(stream: &mut std::net::TcpStream, len: usize, timeout: Duration) -> bool {
    use std::io::{Read, Write};
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let deadline = Instant::now() + timeout;
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let write = std::thread::spawn(move || writer.write_all(&sent).is_ok());
    let mut got = vec![0u8; len];
    let mut have = 0;
    while have < len {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut got[have..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => have += n,
        }
    }
    // Unblocks a writer stuck on a black-holed path.
    let _ = stream.shutdown(std::net::Shutdown::Both);
    write.join().unwrap() && have == len && got == data
}

#[test]
fn pmtu_discovery_under_a_policy_without_icmp() {
    lab::require_root();
    let lab = Lab::new();
    let client = lab.add_pod_at("prod", "client", 10, "caliclient");
    let web = lab.add_pod_at("prod", "web", 50, "caliweb");
    let _server = web.tcp_listen(80);
    // The node's path to web is narrower than the links: full-size segments from
    // the client (DF set) get "fragmentation needed" / "packet too big" back.
    lab.node().ip(&format!(
        "route replace {}/32 dev caliweb mtu 1280",
        web.ipv4
    ));
    lab.node().ip(&format!(
        "-6 route replace {}/128 dev caliweb mtu 1280",
        web.ipv6
    ));

    let dir = Agent::datastore_with("pmtu", &[("policy.yaml", PMTU_DATASTORE)]);
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(2);

    for dst in web.ips() {
        let mut stream = client.tcp_stream(dst, 80, PROBE_TIMEOUT);
        assert!(
            echo_bulk(&mut stream, 64 * 1024, Duration::from_secs(10)),
            "64 KiB to {dst}:80 and back: the ICMP error must reach the client"
        );
    }
    let related = agent.status()["counters"]["icmp_related"].clone();
    assert!(
        related.as_u64().is_some_and(|n| n >= 2),
        "one error per family at least: {related}"
    );
    // Unrelated ICMP to the client is still denied.
    assert_eq!(web.ping(client.ipv4, SHORT_TIMEOUT), PingProbe::TimedOut);
}

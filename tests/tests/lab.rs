//! Tests of the lab itself: real traffic between namespaces.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lab::{
    Lab, PingProbe, TcpProbe, UdpProbe, GATEWAY_V6, NODE_IPV4, NODE_IPV6, PROBE_TIMEOUT,
    SHORT_TIMEOUT,
};

fn netns_list() -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_gone(names: &[String]) {
    let list = netns_list();
    for name in names {
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} still exists:\n{list}"
        );
        assert!(!std::path::Path::new("/run/netns").join(name).exists());
    }
}

#[test]
fn pod_to_pod_tcp_v4_and_v6() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let _srv = b.tcp_listen(8080);
    for dst in b.ips() {
        assert_eq!(
            a.tcp_connect(dst, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "{dst}"
        );
        // And the other way round to a closed port.
        assert_eq!(
            b.tcp_connect(
                if dst.is_ipv4() {
                    a.ipv4.into()
                } else {
                    IpAddr::from(a.ipv6)
                },
                8080,
                PROBE_TIMEOUT
            ),
            TcpProbe::Refused
        );
    }
}

#[test]
fn pod_to_pod_udp_v4_and_v6() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let srv = b.udp_echo(0);
    for dst in b.ips() {
        assert_eq!(
            a.udp_request(dst, srv.port(), PROBE_TIMEOUT),
            UdpProbe::Replied,
            "{dst}"
        );
        assert_eq!(
            a.udp_request(dst, srv.port() ^ 1, PROBE_TIMEOUT),
            UdpProbe::Refused,
            "{dst}"
        );
    }
}

#[test]
fn pod_to_pod_ping_v4_and_v6() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    for dst in b.ips() {
        assert_eq!(a.ping(dst, PROBE_TIMEOUT), PingProbe::Replied, "{dst}");
    }
    for dst in a.ips() {
        assert_eq!(b.ping(dst, PROBE_TIMEOUT), PingProbe::Replied, "{dst}");
    }
}

#[test]
fn closed_port_is_refused_many_times() {
    // ICMP rate limits are off in the lab, so a burst of probes all see Refused.
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    for _ in 0..20 {
        assert_eq!(a.tcp_connect(b.ipv4, 9, PROBE_TIMEOUT), TcpProbe::Refused);
        assert_eq!(a.udp_request(b.ipv4, 9, PROBE_TIMEOUT), UdpProbe::Refused);
        assert_eq!(a.udp_request(b.ipv6, 9, PROBE_TIMEOUT), UdpProbe::Refused);
    }
}

#[test]
fn unrouted_and_blackholed_destinations_time_out() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let _tcp = b.tcp_listen(80);
    let _udp = b.udp_echo(53);
    let t = SHORT_TIMEOUT;

    // Unrouted: leaves the node by its dummy uplink and is never answered.
    let start = Instant::now();
    let nowhere: [IpAddr; 2] = ["10.99.0.1".parse().unwrap(), "fd99::1".parse().unwrap()];
    for dst in nowhere {
        assert_eq!(a.tcp_connect(dst, 80, t), TcpProbe::TimedOut, "{dst}");
        assert_eq!(a.udp_request(dst, 53, t), UdpProbe::TimedOut, "{dst}");
        assert_eq!(a.ping(dst, t), PingProbe::TimedOut, "{dst}");
    }
    assert!(start.elapsed() < 6 * t + Duration::from_secs(2));

    // A live pod, then blackholed in the node: the same probes now time out.
    for dst in b.ips() {
        assert_eq!(a.tcp_connect(dst, 80, PROBE_TIMEOUT), TcpProbe::Connected);
    }
    lab.node()
        .ip(&format!("route replace blackhole {}/32", b.ipv4));
    lab.node()
        .ip(&format!("-6 route replace blackhole {}/128", b.ipv6));
    for dst in b.ips() {
        let start = Instant::now();
        assert_eq!(a.tcp_connect(dst, 80, t), TcpProbe::TimedOut, "{dst}");
        let took = start.elapsed();
        assert!(
            took >= t - Duration::from_millis(20) && took < t + Duration::from_secs(1),
            "{took:?}"
        );
        assert_eq!(a.udp_request(dst, 53, t), UdpProbe::TimedOut, "{dst}");
        assert_eq!(a.ping(dst, t), PingProbe::TimedOut, "{dst}");
    }

    // "unreachable" routes answer with ICMP errors: a different outcome.
    lab.node()
        .ip(&format!("route replace unreachable {}/32", b.ipv4));
    lab.node()
        .ip(&format!("-6 route replace unreachable {}/128", b.ipv6));
    for dst in b.ips() {
        assert_eq!(a.tcp_connect(dst, 80, t), TcpProbe::Unreachable, "{dst}");
        assert_eq!(a.udp_request(dst, 53, t), UdpProbe::Unreachable, "{dst}");
        assert_eq!(a.ping(dst, t), PingProbe::Unreachable, "{dst}");
    }

    // Restored: reachable again (the probes really can tell).
    lab.node()
        .ip(&format!("route replace {}/32 dev {}", b.ipv4, b.host_if));
    lab.node().ip(&format!(
        "-6 route replace {}/128 dev {}",
        b.ipv6, b.host_if
    ));
    for dst in b.ips() {
        assert_eq!(a.tcp_connect(dst, 80, PROBE_TIMEOUT), TcpProbe::Connected);
    }
}

#[test]
fn data_dropped_after_handshake_is_not_connected() {
    // A firewall that lets the handshake through but drops data must not pass as
    // Connected: drop packets with payload towards the server inside the pod.
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let _srv = b.tcp_listen(80);
    assert_eq!(
        a.tcp_connect(b.ipv4, 80, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let nft = |args: &str| {
        let out = b
            .command("nft")
            .args(args.split_whitespace())
            .output()
            .expect("running nft");
        assert!(
            out.status.success(),
            "nft {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    nft("add table inet labtest");
    nft("add chain inet labtest in { type filter hook input priority 0 ; }");
    // Drop segments that carry data (PSH), not the handshake.
    nft("add rule inet labtest in tcp dport 80 tcp flags & psh == psh drop");
    assert_eq!(a.tcp_connect(b.ipv4, 80, SHORT_TIMEOUT), TcpProbe::TimedOut);
}

#[test]
fn external_reaches_node_services_and_pods() {
    lab::require_root();
    let lab = Lab::new();
    let pod = lab.add_pod("default", "web");
    let ext = lab.add_external("client");
    assert_eq!(ext.node_if, "eth1");
    assert_eq!(ext.ipv4.to_string(), "10.66.0.2");
    assert_eq!(ext.node_ipv6.to_string(), "fd66::1");
    assert_eq!(lab.node().ifindex("eth1"), ext.node_ifindex);

    let node_srv = lab.node().tcp_listen(10250);
    let node_udp = lab.node().udp_echo(0);
    let pod_srv = pod.tcp_listen(80);
    for dst in ext.node_ips() {
        assert_eq!(
            ext.tcp_connect(dst, 10250, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
        assert_eq!(
            ext.udp_request(dst, node_udp.port(), PROBE_TIMEOUT),
            UdpProbe::Replied
        );
        assert_eq!(ext.ping(dst, PROBE_TIMEOUT), PingProbe::Replied);
    }
    for dst in pod.ips() {
        assert_eq!(ext.tcp_connect(dst, 80, PROBE_TIMEOUT), TcpProbe::Connected);
        assert_eq!(ext.ping(dst, PROBE_TIMEOUT), PingProbe::Replied);
    }
    // Pods reach all the node's addresses (UDP answers come from the address asked).
    for dst in [
        IpAddr::from(NODE_IPV4),
        NODE_IPV6.into(),
        ext.node_ipv4.into(),
        ext.node_ipv6.into(),
    ] {
        assert_eq!(
            pod.tcp_connect(dst, 10250, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
        assert_eq!(
            pod.udp_request(dst, node_udp.port(), PROBE_TIMEOUT),
            UdpProbe::Replied,
            "{dst}"
        );
    }
    let ext_srv = ext.tcp_listen(443);
    assert_eq!(
        pod.tcp_connect(ext.ipv4, 443, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    assert_eq!(
        pod.tcp_connect(ext.ipv6, 443, PROBE_TIMEOUT),
        TcpProbe::Connected
    );

    // Stopped servers refuse.
    drop((node_srv, pod_srv, ext_srv));
    assert_eq!(
        ext.tcp_connect(ext.node_ipv4, 10250, PROBE_TIMEOUT),
        TcpProbe::Refused
    );
    assert_eq!(
        ext.tcp_connect(pod.ipv4, 80, PROBE_TIMEOUT),
        TcpProbe::Refused
    );

    // A second external gets the next link.
    let ext2 = lab.add_external("other");
    assert_eq!(ext2.node_if, "eth2");
    assert_eq!(ext2.ipv4.to_string(), "10.66.1.2");
    assert_eq!(ext2.ping(ext.ipv4, PROBE_TIMEOUT), PingProbe::Replied);
}

#[test]
fn long_lived_stream_echoes() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let _srv = b.tcp_listen(7000);
    for dst in b.ips() {
        let mut s = a.tcp_stream(dst, 7000, PROBE_TIMEOUT);
        // Used from another thread than the one that created it.
        std::thread::spawn(move || {
            s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
            for i in 0..50 {
                let msg = format!("msg {i:04}\n");
                s.write_all(msg.as_bytes()).unwrap();
                let mut buf = vec![0; msg.len()];
                s.read_exact(&mut buf).unwrap();
                assert_eq!(buf, msg.as_bytes());
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap();
    }
}

#[test]
fn lab_drop_stops_servers_and_closes_streams() {
    lab::require_root();
    let lab = Lab::new();
    let a = lab.add_pod("default", "a");
    let b = lab.add_pod("default", "b");
    let srv = b.tcp_listen(7000);
    let mut s = a.tcp_stream(b.ipv4, 7000, PROBE_TIMEOUT);
    s.set_read_timeout(Some(PROBE_TIMEOUT)).unwrap();
    let names = lab.namespace_names();
    drop(lab);
    assert_gone(&names);
    // The server was stopped by the lab: the connection was shut down.
    let mut buf = [0u8; 8];
    let _ = s.write_all(b"x");
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    drop(srv); // stopping twice is fine
}

#[test]
fn pods_are_wired_like_calico() {
    lab::require_root();
    let lab = Lab::new();
    let front = lab.add_pod_at("demo", "front", 21, "calidemofront");
    let back = lab.add_pod("demo", "back");
    assert_eq!(front.ipv4.to_string(), "10.65.0.21");
    assert_eq!(front.ipv6.to_string(), "fd65::21");
    assert_eq!(back.n, 10);
    assert_eq!(back.host_if, lab::host_if_name("demo", "back"));
    assert_eq!(front.host_ifindex, lab.node().ifindex("calidemofront"));
    assert!(front.name().starts_with(lab.id()));
    assert_eq!(
        front.path(),
        std::path::Path::new("/run/netns").join(front.name())
    );

    // Pod side.
    let routes = front.ip("route");
    assert!(
        routes.contains("default via 169.254.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("169.254.1.1 dev eth0 scope link"),
        "{routes}"
    );
    let routes6 = front.ip("-6 route");
    assert!(
        routes6.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{routes6}"
    );
    let addrs = front.ip("addr show dev eth0");
    assert!(addrs.contains("inet 10.65.0.21/32"), "{addrs}");
    assert!(addrs.contains("inet6 fd65::21/128"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    let links = front.ip("-o link");
    assert!(links.contains("eth0@"), "{links}");
    assert!(links.contains("lo: <LOOPBACK,UP"), "{links}");

    // Host side, in the node.
    let link = lab.node().ip("link show dev calidemofront");
    assert!(link.contains("link/ether ee:ee:ee:ee:ee:ee"), "{link}");
    assert!(link.contains("state UP"), "{link}");
    let ll = lab.node().ip("-6 addr show dev calidemofront");
    assert!(ll.contains(&format!("inet6 {GATEWAY_V6}/64")), "{ll}");
    assert!(!ll.contains("tentative"), "{ll}");
    let node_routes = lab.node().ip("route");
    assert!(
        node_routes.contains("10.65.0.21 dev calidemofront scope link"),
        "{node_routes}"
    );
    let node_routes6 = lab.node().ip("-6 route");
    assert!(
        node_routes6.contains("fd65::21 dev calidemofront"),
        "{node_routes6}"
    );

    // Sysctls are per namespace: check them with a separate process (nsenter).
    let cat = |ns: &lab::Netns, key: &str| {
        let out = ns
            .command("cat")
            .arg(format!("/proc/sys/{key}"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cat(lab.node(), "net/ipv4/ip_forward"), "1");
    assert_eq!(cat(lab.node(), "net/ipv6/conf/all/forwarding"), "1");
    assert_eq!(
        cat(lab.node(), "net/ipv4/conf/calidemofront/proxy_arp"),
        "1"
    );
    assert_eq!(
        cat(lab.node(), "net/ipv4/neigh/calidemofront/proxy_delay"),
        "0"
    );
    assert_eq!(cat(&front, "net/ipv4/ip_forward"), "0");
    assert_eq!(lab.node().sysctl("net.ipv4.ip_forward"), "1");
    assert_eq!(front.sysctl("net.ipv4.ip_forward"), "0");

    // Proxy ARP answers for the gateway with the host side's MAC.
    assert_eq!(front.ping(back.ipv4, PROBE_TIMEOUT), PingProbe::Replied);
    let neigh = front.ip("neigh show dev eth0");
    assert!(
        neigh.contains("169.254.1.1 lladdr ee:ee:ee:ee:ee:ee"),
        "{neigh}"
    );

    // Duplicates are rejected.
    assert!(lab.try_add_pod("demo", "x", Some(21), None).is_err());
    assert!(lab
        .try_add_pod("demo", "y", None, Some("calidemofront"))
        .is_err());
}

#[test]
fn run_enters_the_namespace() {
    lab::require_root();
    let lab = Lab::new();
    let pod = lab.add_pod("default", "a");
    let (ifindex, listener) = pod.run(|| {
        let l = std::net::TcpListener::bind("10.65.0.10:5000").expect("bind pod address");
        (nix::net::if_::if_nametoindex("eth0").unwrap(), l)
    });
    assert_eq!(ifindex, pod.ifindex("eth0"));
    // The listener stays in the pod namespace; accept it from this thread.
    let other = lab.add_pod("default", "b");
    let client = other.tcp_stream(pod.ipv4, 5000, PROBE_TIMEOUT);
    let (_conn, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    // Panics propagate.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pod.run(|| panic!("inside"));
    }));
    assert!(r.is_err());
    // And the test thread is still in the root namespace: no lab address here.
    assert!(std::net::TcpListener::bind("10.65.0.10:5001").is_err());
}

#[test]
fn two_labs_in_parallel_with_identical_addresses() {
    lab::require_root();
    let run = |port: u16, other: u16| {
        std::thread::spawn(move || {
            let lab = Lab::new();
            let a = lab.add_pod("default", "a");
            let b = lab.add_pod("default", "b");
            assert_eq!(b.ipv4.to_string(), "10.65.0.11");
            let _srv = b.tcp_listen(port);
            let _udp = b.udp_echo(port);
            for _ in 0..10 {
                for dst in b.ips() {
                    assert_eq!(a.tcp_connect(dst, port, PROBE_TIMEOUT), TcpProbe::Connected);
                    assert_eq!(a.tcp_connect(dst, other, PROBE_TIMEOUT), TcpProbe::Refused);
                    assert_eq!(a.udp_request(dst, port, PROBE_TIMEOUT), UdpProbe::Replied);
                    assert_eq!(a.udp_request(dst, other, PROBE_TIMEOUT), UdpProbe::Refused);
                }
            }
            lab.namespace_names()
        })
    };
    let (l1, l2) = (run(7001, 7002), run(7002, 7001));
    let n1 = l1.join().expect("lab 1");
    let n2 = l2.join().expect("lab 2");
    assert_ne!(n1[0], n2[0]);
    assert_gone(&n1);
    assert_gone(&n2);
}

#[test]
fn cleanup_after_drop() {
    lab::require_root();
    let lab = Lab::new();
    let _p = lab.add_pod("default", "a");
    let _e = lab.add_external("client");
    let names = lab.namespace_names();
    assert_eq!(names.len(), 3);
    let list = netns_list();
    for n in &names {
        assert!(list.contains(n.as_str()), "{n} missing in:\n{list}");
    }
    drop(lab);
    assert_gone(&names);
}

#[test]
fn cleanup_after_panic() {
    lab::require_root();
    let names = std::sync::Mutex::new(Vec::new());
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new();
        let a = lab.add_pod("default", "a");
        let _srv = a.tcp_listen(80);
        *names.lock().unwrap() = lab.namespace_names();
        panic!("test failure inside a lab");
    }));
    assert!(r.is_err());
    let names = names.into_inner().unwrap();
    assert_eq!(names.len(), 2);
    assert_gone(&names);
}

#[test]
fn stale_namespaces_of_dead_processes_are_removed() {
    lab::require_root();
    // A pid that cannot be alive (above pid_max).
    let stale = "lab4194999x0-node";
    let out = std::process::Command::new("ip")
        .args(["netns", "add", stale])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lab = Lab::new();
    assert_gone(&[stale.to_string()]);
    drop(lab);
}

#[test]
fn timing_three_pods() {
    lab::require_root();
    let start = Instant::now();
    let lab = Lab::new();
    let pods: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| lab.add_pod("default", n))
        .collect();
    let setup = start.elapsed();
    let _srv = pods[2].tcp_listen(80);
    assert_eq!(
        pods[0].tcp_connect(pods[2].ipv6, 80, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let first_probe = start.elapsed() - setup;
    let start = Instant::now();
    drop(lab);
    let teardown = start.elapsed();
    eprintln!(
        "lab with 3 pods: setup {setup:?}, first probe {first_probe:?}, teardown {teardown:?}"
    );
    assert!(setup < Duration::from_secs(10), "setup took {setup:?}");
    assert!(
        teardown < Duration::from_secs(10),
        "teardown took {teardown:?}"
    );
}

#[test]
fn many_labs_in_parallel() {
    lab::require_root();
    let threads: Vec<_> = (0..12)
        .map(|i| {
            std::thread::spawn(move || {
                let lab = Lab::new();
                let pods: Vec<_> = (0..3)
                    .map(|p| lab.add_pod("ns", &format!("pod{p}")))
                    .collect();
                let _srv = pods[1].tcp_listen(80 + i);
                let _udp = pods[2].udp_echo(53);
                for p in &pods {
                    assert_eq!(
                        p.tcp_connect(pods[1].ipv6, 80 + i, PROBE_TIMEOUT),
                        TcpProbe::Connected
                    );
                    assert_eq!(
                        p.udp_request(pods[2].ipv4, 53, PROBE_TIMEOUT),
                        UdpProbe::Replied
                    );
                    assert_eq!(p.ping(pods[0].ipv4, PROBE_TIMEOUT), PingProbe::Replied);
                }
                lab.namespace_names()
            })
        })
        .collect();
    for t in threads {
        let names = t.join().expect("a lab thread failed");
        assert_gone(&names);
    }
}

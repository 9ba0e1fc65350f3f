//! Compile time against the number of rules: a datastore of 10 ordered
//! GlobalNetworkPolicies selecting 4 workloads, each policy N/10 ingress rules
//! allowing TCP from a distinct /32 to a distinct port (the shape of issue 15's
//! "10,000 rules" measurement), then a deny. Prints, per N, the time to load
//! the YAML, to compile the model and to encode the tables, the compiler's
//! statistics, and (as root) the time to install the tables into freshly
//! loaded kernel maps.
//!
//! First it checks a threat feed of 100,000 nets (as a GlobalNetworkSet and as
//! a NetworkSet) compiles to tables that agree with the evaluator (a scale
//! check moved here from the unit tests, where it took ~14 s in a debug build).
//!
//! `cargo +1.99.0 bench -p agent-tests --bench compile [-- N...]` (release).
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use agent::compile::testgen::TableModel;
use agent::compile::{compile, feed, summary};
use agent::dataplane::Dataplane;
use agent::eval::{Evaluator, Packet, PolicySet};
use agent::model::ir::{proto, Direction};
use agent::model::load::load_sources;
use agent::model::Severity;
use agent_common::action;
use ipnet::IpNet;

const POLICIES: usize = 10;
const ENDPOINTS: usize = 4;

/// The peer of rule `i` (distinct for every rule of the datastore).
fn peer(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(0x0a46_0000 + i as u32 + 1)
}

/// The datastore of `rules` rules (a multiple of [`POLICIES`]).
fn datastore(rules: usize) -> String {
    let mut y = String::with_capacity(rules * 120 + 4096);
    for k in 0..ENDPOINTS {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
             metadata: {{name: server{k}, namespace: bench, labels: {{app: server}}}}\n\
             spec: {{interfaceName: cbench{k}, ipNetworks: [10.65.0.{}/32]}}\n---\n",
            30 + k
        ));
    }
    let per_policy = rules / POLICIES;
    for p in 0..POLICIES {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: allow-{p}}}\n\
             spec:\n  order: {}\n  selector: app == 'server'\n  types: [Ingress]\n  ingress:\n",
            10 * (p + 1)
        ));
        for r in 0..per_policy {
            let i = p * per_policy + r;
            y.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{nets: [{}/32]}}, destination: {{ports: [{}]}}}}\n",
                peer(i),
                1_000 + r
            ));
        }
        y.push_str("---\n");
    }
    y.push_str(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
         metadata: {name: deny-rest}\n\
         spec:\n  order: 1000\n  selector: app == 'server'\n  types: [Ingress]\n  ingress:\n  - action: Deny\n",
    );
    y
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let sizes: Vec<usize> = if args.is_empty() {
        vec![100, 1_000, 10_000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("numbers of rules"))
            .collect()
    };
    let started = Instant::now();
    network_set_of_100k_nets_is_compiled();
    println!(
        "100,000-net feed checked against the evaluator in {}",
        ms(started.elapsed())
    );
    // One kernel load for all sizes (as root; else the install column is `-`).
    let mut dataplane = Dataplane::load().ok();
    println!(
        "{:>7} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>12}",
        "rules", "load", "compile", "encode", "install", "classes", "keys", "evaluations"
    );
    for rules in sizes {
        let yaml = datastore(rules);
        let started = Instant::now();
        let loaded = load_sources(&[(PathBuf::from("compile.yaml"), yaml)]);
        let load = started.elapsed();
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let started = Instant::now();
        let compiled = compile(&loaded.model).expect("compiles");
        let compile_time = started.elapsed();
        let started = Instant::now();
        let encoded = compiled.tables.encode().expect("encodes");
        let encode = started.elapsed();
        let install = dataplane.as_mut().map_or("-".into(), |dp| {
            let started = Instant::now();
            dp.install(&compiled.tables).expect("installs");
            ms(started.elapsed())
        });
        let s = &compiled.stats;
        assert_eq!(encoded.rules.len(), s.rule_keys);
        println!(
            "{rules:>7} {:>11} {:>11} {:>11} {install:>11} {:>9} {:>9} {:>12}",
            ms(load),
            ms(compile_time),
            ms(encode),
            s.classes,
            s.rule_keys,
            s.evaluations
        );
    }
}

/// Addresses right next to feed net `i` that the first `n` nets do not hold.
fn feed_neighbours(n: usize, i: usize) -> Vec<IpAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr};
    let net = feed::net(i);
    let around: Vec<IpAddr> = match net {
        IpNet::V4(v) => {
            let (first, last) = (u32::from(v.network()), u32::from(v.broadcast()));
            vec![
                Ipv4Addr::from(first - 1).into(),
                Ipv4Addr::from(last + 1).into(),
            ]
        }
        IpNet::V6(v) => {
            let (first, last) = (u128::from(v.network()), u128::from(v.broadcast()));
            vec![
                Ipv6Addr::from(first - 1).into(),
                Ipv6Addr::from(last + 1).into(),
            ]
        }
    };
    around.into_iter().filter(|&a| !feed::holds(n, a)).collect()
}

/// A threat feed of 100,000 nets, as a GlobalNetworkSet (global policy) and as
/// a NetworkSet (namespaced policy), is accepted and compiled into the tables:
/// addresses in its first, middle and last nets (IPv4 /32 and /24, IPv6 /64)
/// are denied by rule 0 both ways, addresses just outside them allowed by
/// rule 1, on every endpoint, as the evaluator says.
fn network_set_of_100k_nets_is_compiled() {
    let n = 100_000;
    for namespaced in [false, true] {
        let yaml = feed::yaml(n, 2, namespaced);
        let loaded = load_sources(&[("feed.yaml".into(), yaml)]);
        let errors: Vec<_> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .take(3)
            .collect();
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(loaded.model.network_sets[0].nets.len(), n);
        let model = &loaded.model;
        let c = compile(model).unwrap();
        assert!(c.stats.peer_prefixes > n, "{}", summary(&c));
        let sim = TableModel::new(&c.tables).unwrap();
        let eval = Evaluator::new(model);
        let samples = [
            0,
            1,
            7,
            8,
            9,
            n / 2,
            n / 2 + 7,
            n / 2 + 9,
            n - 3,
            n - 2,
            n - 1,
        ];
        for e in &c.endpoints {
            for i in samples {
                let outside = feed_neighbours(n, i);
                assert!(!outside.is_empty());
                let fixed = ["1.1.1.1", "128.0.0.1", "2001:db9::1", "10.65.0.200"]
                    .map(|a| a.parse::<IpAddr>().unwrap());
                for (peer, deny) in std::iter::once((feed::inside(i), true))
                    .chain(outside.into_iter().chain(fixed).map(|a| (a, false)))
                {
                    for direction in [Direction::Ingress, Direction::Egress] {
                        let got = sim.lookup(e.id, direction, false, peer, proto::TCP, 40000, 443);
                        let local = feed::endpoint_ip(e.endpoint_index, peer.is_ipv6());
                        let packet = Packet::with_ports(proto::TCP, 40000, 443);
                        let want = eval.evaluate_end(
                            PolicySet::Enforced,
                            e.endpoint_index,
                            direction,
                            peer,
                            local,
                            &packet,
                        );
                        assert_eq!(got, c.verdict_of(&want), "{peer} {direction:?}");
                        let rule = if deny { 0 } else { 1 };
                        let action = if deny { action::DENY } else { action::ALLOW };
                        assert_eq!((got.action, got.rule), (action, rule), "{peer}");
                    }
                }
            }
        }
    }
}

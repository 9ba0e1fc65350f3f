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
//! Then, per size, the peak RSS of that step (the kernel's high-water mark,
//! reset before each), network sets of 10,000 and 100,000 nets, the cost of
//! one changed policy at 10,000 rules and of one added pod at 1,000 pods
//! (compile and install, with the map entries the install wrote), and what
//! 10,000 pods x 1,000 policies need of the maps (issue 15, item 3).
//!
//! `cargo +1.99.0 bench -p agent-tests --bench compile [-- N...]` (release).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use std::net::IpAddr;

use agent::compile::testgen::TableModel;
use agent::compile::{compile, compile_with_limits, feed, summary, Compiled, Limits};
use agent::dataplane::Dataplane;
use agent::eval::{Evaluator, Packet, PolicySet};
use agent::model::ir::{Direction, Model, Protocol};
use agent::model::load::load_sources;
use agent::model::Severity;
use agent_common::action;
use ipnet::IpNet;

#[path = "shapes/rules.rs"]
mod rules;
use rules::datastore;

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// CPU time of the whole process so far (all threads): on this shared
/// machine wall time includes waiting for a core, CPU time much less so.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Resets the process's peak RSS (`VmHWM`) to its current RSS.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak RSS since the last [`reset_peak`], in MiB.
fn peak_mib() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("-".into(), |kib| format!("{} MiB", kib / 1024))
}

/// Installs `c` (as root), returning the time taken and the map entries the
/// install wrote or deleted in the inactive copy, against what it held.
fn install(dataplane: &mut Option<Dataplane>, c: &Compiled) -> String {
    dataplane.as_mut().map_or("-".into(), |dp| {
        let started = Instant::now();
        dp.install(&c.tables).expect("installs");
        ms(started.elapsed())
    })
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
        "{:>7} {:>11} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>12} {:>10}",
        "rules",
        "load",
        "compile",
        "(CPU)",
        "encode",
        "install",
        "classes",
        "keys",
        "evaluations",
        "peak RSS"
    );
    for rules in sizes {
        reset_peak();
        let yaml = datastore(rules);
        let started = Instant::now();
        let loaded = load_sources(&[(PathBuf::from("compile.yaml"), yaml)]);
        let load = started.elapsed();
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let (started, cpu) = (Instant::now(), cpu_time());
        let compiled = compile(&loaded.model).expect("compiles");
        let (compile_time, compile_cpu) = (started.elapsed(), cpu_time() - cpu);
        let started = Instant::now();
        let encoded = compiled.tables.encode().expect("encodes");
        let encode = started.elapsed();
        let install = install(&mut dataplane, &compiled);
        let s = &compiled.stats;
        assert_eq!(encoded.rules.len(), s.rule_keys);
        println!(
            "{rules:>7} {:>11} {:>11} {:>11} {:>11} {install:>11} {:>9} {:>9} {:>12} {:>10}",
            ms(load),
            ms(compile_time),
            ms(compile_cpu),
            ms(encode),
            s.classes,
            s.rule_keys,
            s.evaluations,
            peak_mib()
        );
    }
    network_sets(&mut dataplane);
    one_change(&mut dataplane);
    capacity();
}

/// Load, compile, install and peak RSS of a datastore of one network set of
/// 10,000 and 100,000 nets (the `netsets` bench's feed, 2 endpoints).
fn network_sets(dataplane: &mut Option<Dataplane>) {
    println!(
        "{:>7} {:>11} {:>11} {:>11} {:>9} {:>10}",
        "nets", "load", "compile", "install", "classes", "peak RSS"
    );
    for n in [10_000, 100_000] {
        reset_peak();
        let started = Instant::now();
        let loaded = load_sources(&[("feed.yaml".into(), feed::yaml(n, 2, false))]);
        let load = started.elapsed();
        let started = Instant::now();
        let c = compile(&loaded.model).expect("compiles");
        let compile_time = started.elapsed();
        let install = install(dataplane, &c);
        println!(
            "{n:>7} {:>11} {:>11} {install:>11} {:>9} {:>10}",
            ms(load),
            ms(compile_time),
            c.stats.classes,
            peak_mib()
        );
    }
}

/// Map entries (all tables) that differ between two compiles.
fn changed_entries(a: &Compiled, b: &Compiled) -> usize {
    use agent::dataplane::tables::changes;
    let (a, b) = (a.tables.encode().unwrap(), b.tables.encode().unwrap());
    let pairs = |v: &[(u32, agent_common::RuleKey, agent_common::Verdict)]| -> Vec<_> {
        v.iter().map(|&(l, k, x)| ((l, k), x)).collect()
    };
    let peers =
        |v: &[(u32, [u8; 16], u32)]| -> Vec<_> { v.iter().map(|&(l, k, x)| ((l, k), x)).collect() };
    fn count<K, V>((stale, write): (Vec<K>, Vec<V>)) -> usize {
        stale.len() + write.len()
    }
    count(changes(&pairs(&a.rules), &pairs(&b.rules)))
        + count(changes(&peers(&a.peers), &peers(&b.peers)))
        + count(changes(&a.groups, &b.groups))
}

/// Compile and install after one change: one policy's rule moved to another
/// port at 10,000 rules, and one pod added to 1,000 pods x 100 policies. Both
/// installs follow an install of the tables before the change into both
/// copies, so the install writes only what changed.
fn one_change(dataplane: &mut Option<Dataplane>) {
    let loaded = load_sources(&[(PathBuf::from("compile.yaml"), datastore(10_000))]);
    let mut model = loaded.model;
    let pods = agent::compile::testgen::scale_model(1_000, 100, 1);
    let mut more = pods.clone();
    let mut pod = (*more.endpoints[0]).clone();
    pod.name = "pod-added".into();
    pod.interface = Some("cali-added".into());
    pod.ips = vec!["10.80.0.1".parse().unwrap(), "fd00::8:1".parse().unwrap()];
    more.endpoints.push(pod.into());
    let before = compile(&model).expect("compiles");
    let policy = &mut model.policies[3];
    let rule = &mut policy.ingress[500];
    rule.destination.ports = vec![agent::model::ir::PortMatch::Range(
        agent::model::ir::PortRange {
            first: 9_999,
            last: 9_999,
        },
    )];
    println!(
        "{:>26} {:>11} {:>11} {:>11} {:>15}",
        "change", "compile", "(CPU)", "install", "entries changed"
    );
    for (what, before, after) in [
        ("one policy, 10,000 rules", Ok(before), &model),
        ("one pod added, 1,000 pods", compile(&pods), &more),
    ] {
        let before = before.expect("compiles");
        for _ in 0..2 {
            install(dataplane, &before);
        }
        let (started, cpu) = (Instant::now(), cpu_time());
        let after_c = compile(after).expect("compiles");
        let (compile_time, compile_cpu) = (started.elapsed(), cpu_time() - cpu);
        let install = install(dataplane, &after_c);
        println!(
            "{what:>26} {:>11} {:>11} {install:>11} {:>15}",
            ms(compile_time),
            ms(compile_cpu),
            changed_entries(&before, &after_c)
        );
    }
}

/// What 10,000 pods x 1,000 policies need of the maps: the whole cluster's
/// pods are peers, `local` of them are on this node (have an interface).
/// Compiled without limits; each figure against the map's size.
fn capacity() {
    let unlimited = Limits {
        endpoints: usize::MAX,
        peer_prefixes: usize::MAX,
        rule_keys: usize::MAX,
        keys_per_endpoint: usize::MAX,
        source_port_keys: usize::MAX,
        group_entries: usize::MAX,
    };
    let d = Limits::default();
    println!(
        "{:>34} {:>7} {:>11} {:>16} {:>16} {:>18} {:>10}",
        "model", "local", "compile", "PEERS prefixes", "RULES keys", "GROUPS entries", "peak RSS"
    );
    type MakeModel = fn() -> Model;
    let models: [(&str, MakeModel); 2] = [
        ("10,000 pods x 1,000 policies", || {
            agent::compile::testgen::scale_model(10_000, 1_000, 1)
        }),
        ("same, a label per pod", || {
            agent::compile::testgen::per_pod_label_model(10_000, 1_000, 1)
        }),
    ];
    for (what, make) in models {
        for local in [110, 1_000] {
            reset_peak();
            let mut model = make();
            for e in &mut model.endpoints[local..] {
                std::sync::Arc::make_mut(e).interface = None;
            }
            let started = Instant::now();
            let c = compile_with_limits(&model, &unlimited).expect("compiles");
            let s = &c.stats;
            println!(
                "{what:>34} {local:>7} {:>11} {:>16} {:>16} {:>18} {:>10}",
                ms(started.elapsed()),
                format!("{} / {}", s.peer_prefixes, d.peer_prefixes),
                format!("{} / {}", s.rule_keys, d.rule_keys),
                format!("{} / {}", s.group_entries, d.group_entries),
                peak_mib()
            );
        }
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
                        let got = sim.lookup(
                            e.id,
                            direction,
                            false,
                            peer,
                            Protocol::TCP.number(),
                            40000,
                            443,
                        );
                        let local = feed::endpoint_ip(e.endpoint_index, peer.is_ipv6());
                        let packet = Packet::with_ports(Protocol::TCP, 40000, 443);
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

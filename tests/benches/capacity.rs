//! What 10,000 pods x 1,000 policies need of the maps (issue 15, item 3):
//! `testgen::per_pod_label_model(10_000, 1_000, 1)` (every pod its own label
//! `pod=<i>`; policies select pods by `app` (10 apps), their rules peers by
//! `app`, by 50 `pod in {20 names}` selectors and by IPv4 nets) and the same
//! without the per-pod labels (`scale_model`), with the first `local` pods on
//! this node (an interface each), the others only peers.
//!
//! Per model and local count: compile time, what the tables need of each map
//! (compiled without limits, against the map's size), how many distinct
//! per-endpoint tables there are (what sharing identical tables would keep),
//! and, as root and when it fits, the kernel memory of the maps after
//! installing it into both copies (`memlock` of each map's fdinfo: the
//! kernel's own accounting of what the map holds).
//!
//! `cargo +1.99.0 bench -p agent-tests --bench capacity [-- LOCAL...]`
//! (release; default 110 and 1000 local pods).
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use agent::compile::testgen::{per_pod_label_model, scale_model};
use agent::compile::{compile_with_limits, Compiled, Limits};
use agent::dataplane::Dataplane;
use agent::model::ir::Model;

/// Each map's (name, memlock bytes) for the maps this process holds open.
fn map_memory() -> Vec<(String, u64)> {
    let mut by_id: HashMap<u64, u64> = HashMap::new();
    for e in std::fs::read_dir("/proc/self/fdinfo").into_iter().flatten() {
        let Ok(text) = std::fs::read_to_string(e.unwrap().path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(id), Some(mem)) = (field("map_id:"), field("memlock:")) {
            by_id.insert(id, mem);
        }
    }
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show"])
        .output()
        .expect("bpftool map show");
    let maps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    let mut named: Vec<(String, u64)> = maps
        .iter()
        .filter_map(|m| {
            let mem = by_id.get(&m["id"].as_u64()?)?;
            Some((m["name"].as_str()?.to_string(), *mem))
        })
        .collect();
    named.sort();
    named
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Per-endpoint tables with the endpoint id blanked, and how many distinct ones there are.
fn distinct_tables(c: &Compiled) -> usize {
    let mut per: HashMap<u32, Vec<String>> = HashMap::new();
    for r in &c.tables.rules {
        let blank = agent::dataplane::tables::RuleEntry {
            endpoint_id: 0,
            ..*r
        };
        per.entry(r.endpoint_id)
            .or_default()
            .push(format!("{blank:?}"));
    }
    for g in &c.tables.groups {
        let blank = agent::dataplane::tables::GroupEntry {
            endpoint_id: 0,
            ..*g
        };
        per.entry(g.endpoint_id)
            .or_default()
            .push(format!("{blank:?}"));
    }
    for s in &c.tables.sports {
        let blank = agent::dataplane::tables::SourcePortEntry {
            endpoint_id: 0,
            ..*s
        };
        per.entry(s.endpoint_id)
            .or_default()
            .push(format!("{blank:?}"));
    }
    let flags: HashMap<u32, (bool, bool)> = c
        .endpoints
        .iter()
        .map(|e| (e.id, (e.has_staged, e.source_ports)))
        .collect();
    per.into_iter()
        .map(|(id, mut v)| {
            v.sort();
            (v, flags.get(&id).copied())
        })
        .collect::<HashSet<_>>()
        .len()
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let locals: Vec<usize> = if args.is_empty() {
        vec![110, 1_000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("local pods"))
            .collect()
    };
    let unlimited = Limits {
        endpoints: usize::MAX,
        peer_prefixes: usize::MAX,
        rule_keys: usize::MAX,
        keys_per_endpoint: usize::MAX,
        source_port_keys: usize::MAX,
        group_entries: usize::MAX,
    };
    let d = Limits::default();
    type MakeModel = fn() -> Model;
    let models: [(&str, MakeModel); 2] = [
        ("label per pod", || per_pod_label_model(10_000, 1_000, 1)),
        ("shared labels", || scale_model(10_000, 1_000, 1)),
    ];
    println!("10,000 pods x 1,000 policies (release); needed / map size");
    for (what, make) in models {
        for &local in &locals {
            let mut model = make();
            for e in &mut model.endpoints[local..] {
                std::sync::Arc::make_mut(e).interface = None;
            }
            let started = Instant::now();
            let c = compile_with_limits(&model, &unlimited).expect("compiles");
            let s = &c.stats;
            let max_keys = s.keys_per_endpoint.iter().max().copied().unwrap_or(0);
            println!(
                "{what}, {local} local: compile {:.1} s; PEERS {} / {}; RULES {} / {} (max {max_keys} per endpoint / {}); GROUPS {} / {}; SPORTS {} / {}; distinct endpoint tables {} of {}",
                started.elapsed().as_secs_f64(),
                s.peer_prefixes,
                d.peer_prefixes,
                s.rule_keys,
                d.rule_keys,
                d.keys_per_endpoint,
                s.group_entries,
                d.group_entries,
                s.source_port_keys,
                d.source_port_keys,
                distinct_tables(&c),
                c.endpoints.len()
            );
            kernel_memory(&c);
        }
    }
}

/// As root: installs `c` into both copies of freshly loaded maps and prints
/// the maps' kernel memory.
fn kernel_memory(c: &Compiled) {
    let fits = c.tables.encode().is_ok();
    if !fits {
        println!("  kernel: does not fit the maps");
        return;
    }
    let Ok(mut dp) = Dataplane::load() else {
        println!("  kernel: - (not root)");
        return;
    };
    let empty = map_memory();
    let started = Instant::now();
    dp.install(&c.tables).expect("installs");
    let first = started.elapsed();
    dp.install(&c.tables).expect("installs");
    let full = map_memory();
    let before: HashMap<&str, u64> = empty.iter().map(|(n, m)| (n.as_str(), *m)).collect();
    let total: u64 = full.iter().map(|(_, m)| m).sum();
    let base: u64 = empty.iter().map(|(_, m)| m).sum();
    let tables: Vec<String> = full
        .iter()
        .filter(|(n, _)| {
            ["PEERS_", "RULES_", "GROUPS_", "SPORTS_"]
                .iter()
                .any(|p| n.starts_with(p))
        })
        .map(|(n, m)| format!("{n} {} (empty {})", mib(*m), mib(before[n.as_str()])))
        .collect();
    println!(
        "  kernel: all maps {} after two installs ({} loaded empty); install {:.1} s; {}",
        mib(total),
        mib(base),
        first.as_secs_f64(),
        tables.join(", ")
    );
}

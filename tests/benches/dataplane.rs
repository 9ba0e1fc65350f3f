//! `cargo xtask bench`: nanoseconds per packet in the kernel programs
//! (BPF_PROG_TEST_RUN), against the number of rules in force, IPv4 and IPv6.
//!
//! The policy (`setup`): one workload (the server) whose ingress policies
//! have N rules, each allowing TCP from a distinct peer to a distinct port,
//! then a deny. Every (family, N) point is compiled and loaded first, then
//! the batches run round-robin over all points (so a slow spell of a shared
//! machine falls on every point alike); a figure is the median of its
//! batches. Measured:
//! - `new_flow`: a new flow matching the LAST rule (what a linear scan pays
//!   most for), conntrack insertion off so every run is new;
//! - `new_flow_denied`: a new flow that no rule allows;
//! - `new_flow_staged`: `new_flow` with the staged pass on (a staged policy
//!   selects the server: a second table lookup and a ring-buffer event per
//!   packet, drained between runs so every event is really written, never the
//!   cheaper ring-full path);
//! - `new_flow_sport`: `new_flow` with the source-port lookup on (a populated
//!   `SPORTS` trie whose entries keep every port in class 0);
//! - `established`: the flow again once conntrack holds it (the established
//!   fast path: conntrack first, the full parser only when it must judge);
//! - `established_full`: the same packet with the fast path off (endpoint flag
//!   `FULL_PATH`): the full parser, then the same conntrack hit, side by side;
//! - `linear_scan`: the same rules in a first-match program of the shape of
//!   Calico's (`ebpf/src/bench.rs`), the same packet as `new_flow`;
//! - `conntrack_hit`: that program on a flow its conntrack holds: parsing and
//!   one conntrack lookup, the reference for `established`;
//! - `floor`: an empty classifier (the harness and a program call);
//! - `step_endpoint`, `step_clock`, `step_counters`: one step of the agent's
//!   established path alone (the `ENDPOINTS` lookup, the conntrack clock, the
//!   three counter bumps), to attribute `established` minus `conntrack_hit`.
//!
//! The design claims the agent's cost is flat in N: the compiler resolved
//! order, tiers and rules into one class lookup and one table lookup. Ratios
//! within one run are what to read (shared, noisy machines), not absolute
//! numbers. Arguments: `--quick` (fewer, shorter batches; no compile-scale
//! table) and `--json PATH` (default `target/bench/dataplane.json`).
#[path = "setup/mod.rs"]
mod setup;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use agent::compile::compile;
use agent::dataplane::{Dataplane, Hook, SourcePortEntry};
use agent::model::ir::Direction;
use agent_common::{active_flags, endpoint_flags, stat, EndpointInfo};
use serde::Serialize;
use setup::{port, syn, Family, ScanPrograms};

const RULE_COUNTS: [usize; 4] = [10, 100, 1_000, 10_000];
/// The ring buffer (256 KiB) holds ~2,900 events: staged runs drain it this often.
const STAGED_RUN: u32 = 2_000;

/// How long to measure: `batches` rounds of `repeat` runs of everything.
#[derive(Clone, Copy)]
struct Effort {
    batches: usize,
    repeat: u32,
}

#[derive(Serialize)]
struct Sample {
    name: &'static str,
    rules: usize,
    family: &'static str,
    ns: f64,
}

/// The measurements, in the order of a batch.
const NAMES: [&str; 12] = [
    "floor",
    "new_flow",
    "new_flow_denied",
    "new_flow_staged",
    "established",
    "established_full",
    "linear_scan",
    "conntrack_hit",
    "new_flow_sport",
    "step_endpoint",
    "step_clock",
    "step_counters",
];

/// One (family, rules) point: the agent's program with its tables, the
/// linear scan with the same rules, and the frames.
struct Point {
    family: Family,
    rules: usize,
    dp: Dataplane,
    scan: ScanPrograms,
    info: EndpointInfo,
    /// A new flow matching the last rule.
    new: Vec<u8>,
    /// A new flow from a source no rule allows.
    denied: Vec<u8>,
    /// The last rule's peer on other source ports, so that no measurement
    /// meets another's conntrack entry.
    established: Vec<u8>,
    sport: Vec<u8>,
    tracked: Vec<u8>,
    /// ns per run of each of `NAMES`, one entry per batch.
    batches: Vec<[f64; 12]>,
}

fn agent_ns(dp: &mut Dataplane, frame: &[u8], repeat: u32) -> f64 {
    setup::test_run(dp.program(Hook::ToEndpoint).unwrap(), frame, repeat).1
}

/// New flows with the staged pass: every packet emits an event, so run in
/// pieces the ring buffer holds and drain between.
fn staged_ns(dp: &mut Dataplane, frame: &[u8], repeat: u32) -> f64 {
    dp.drain_events(); // deny events of earlier runs
    let full_before = dp.counters().unwrap().get(stat::RINGBUF_FULL);
    let pieces = (repeat / STAGED_RUN).max(1);
    let mut total = 0.0;
    for _ in 0..pieces {
        total += agent_ns(dp, frame, STAGED_RUN);
        assert_eq!(
            dp.drain_events().len(),
            STAGED_RUN as usize,
            "one event per new flow"
        );
    }
    let full = dp.counters().unwrap().get(stat::RINGBUF_FULL) - full_before;
    assert_eq!(full, 0, "the staged runs must measure real event writes");
    total / f64::from(pieces)
}

impl Point {
    /// Compiles and installs `rules` rules of `family` in both programs.
    fn prepare(family: Family, rules: usize) -> Point {
        let started = Instant::now();
        let (mut dp, compiled) = setup::agent_dataplane(family, rules);
        let setup_ms = started.elapsed().as_secs_f64() * 1e3;
        let ep = &compiled.endpoints[0];
        let info = ep.info();
        // The source-port trie populated (64 ranges keeping every port in
        // class 0), consulted only while the endpoint's SOURCE_PORTS flag is on.
        let mut tables = compiled.tables.clone();
        tables.sports = (0..64u16)
            .map(|i| SourcePortEntry {
                endpoint_id: ep.id,
                direction: Direction::Ingress,
                protocol: 6,
                first: 1000 + i * 601,
                last: 1000 + i * 601 + 300,
                class: 0,
            })
            .collect();
        dp.install(&tables).unwrap();
        let mut scan = ScanPrograms::load();
        scan.set_rules(family, rules);
        let last = rules - 1;
        let peer: IpAddr = family.peer(last);
        scan.track(family, peer, 40_002, port(last));
        println!(
            "{rules:>6} {:>5}: {} classes, {} rule keys, compiled and loaded in {setup_ms:.0} ms",
            family.name(),
            compiled.stats.classes,
            compiled.stats.rule_keys,
        );
        Point {
            family,
            rules,
            dp,
            scan,
            info,
            new: syn(family, peer, 40_000, port(last)),
            denied: syn(family, family.stranger(), 40_000, port(last)),
            sport: syn(family, peer, 40_001, port(last)),
            tracked: syn(family, peer, 40_002, port(last)),
            established: syn(family, peer, 40_003, port(last)),
            batches: Vec::new(),
        }
    }

    fn set(&mut self, flags: u32, active: u32) {
        let info = EndpointInfo {
            id: self.info.id,
            flags,
        };
        self.dp.set_endpoint(setup::LOOPBACK, info).unwrap();
        self.dp.set_active_flags(active).unwrap();
    }

    /// One batch of every measurement, in the order of `NAMES`.
    fn batch(&mut self, repeat: u32) -> [f64; 12] {
        let enforced = self.info.flags & !endpoint_flags::HAS_STAGED;
        let floor = self.scan.run("floor", &self.new, repeat).1;
        self.set(enforced, active_flags::NO_CT_INSERT);
        let new = agent_ns(&mut self.dp, &self.new, repeat);
        let denied = agent_ns(&mut self.dp, &self.denied, repeat);
        self.set(self.info.flags, active_flags::NO_CT_INSERT);
        let staged = staged_ns(&mut self.dp, &self.new, repeat);
        self.set(enforced, 0);
        let established = agent_ns(&mut self.dp, &self.established, repeat);
        self.set(enforced | endpoint_flags::FULL_PATH, 0);
        let established_full = agent_ns(&mut self.dp, &self.established, repeat);
        let linear = self.scan.run("linear_scan", &self.new, repeat).1;
        let ct_hit = self.scan.run("linear_scan", &self.tracked, repeat).1;
        self.set(
            enforced | endpoint_flags::SOURCE_PORTS,
            active_flags::NO_CT_INSERT,
        );
        let sport = agent_ns(&mut self.dp, &self.sport, repeat);
        let steps = setup::STEPS.map(|step| self.scan.run(step, &self.new, repeat).1);
        [
            floor,
            new,
            denied,
            staged,
            established,
            established_full,
            linear,
            ct_hit,
            sport,
            steps[0],
            steps[1],
            steps[2],
        ]
    }

    fn medians(&self) -> [f64; 12] {
        std::array::from_fn(|i| {
            let mut v: Vec<f64> = self.batches.iter().map(|b| b[i]).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
    }
}

/// Prepares every point, then runs the batches round-robin over them, so a
/// slow spell of a shared machine falls on every point alike.
fn measure(effort: Effort) -> Vec<Sample> {
    let mut points: Vec<Point> = RULE_COUNTS
        .iter()
        .flat_map(|&rules| Family::BOTH.map(|family| (family, rules)))
        .map(|(family, rules)| Point::prepare(family, rules))
        .collect();
    for _ in 0..effort.batches {
        for p in &mut points {
            let b = p.batch(effort.repeat);
            p.batches.push(b);
        }
    }
    println!(
        "\nns/packet, median of {} batches of {} BPF_PROG_TEST_RUN runs",
        effort.batches, effort.repeat
    );
    println!(
        "{:>6} {:>5} {}",
        "rules",
        "",
        NAMES.map(|n| format!("{n:>16}")).join("")
    );
    let mut samples = Vec::new();
    for p in &points {
        let medians = p.medians();
        println!(
            "{:>6} {:>5} {}",
            p.rules,
            p.family.name(),
            medians.map(|ns| format!("{ns:>16.0}")).join("")
        );
        for (name, ns) in NAMES.into_iter().zip(medians) {
            samples.push(Sample {
                name,
                rules: p.rules,
                family: p.family.name(),
                ns,
            });
        }
    }
    samples
}

/// Compile time and table size against endpoints x policies, with shared
/// labels (few classes) and with a label per pod (a class per pod).
fn compile_scale() {
    use agent::compile::testgen::{per_pod_label_model, scale_model};
    println!("\ncompile (release build; CPU time includes the parallel endpoint workers)");
    for (endpoints, policies, unique) in [
        (10, 10, false),
        (100, 50, false),
        (300, 100, false),
        (1000, 200, false),
        (300, 100, true),
        (1000, 200, true),
    ] {
        let model = if unique {
            // Every pod its own label, and 50 policies admitting 20 named pods each.
            per_pod_label_model(endpoints, policies, 7)
        } else {
            scale_model(endpoints, policies, 7)
        };
        let label =
            format!("{endpoints} endpoints x {policies} policies (label per pod: {unique})");
        match compile(&model) {
            Ok(c) => {
                let s = &c.stats;
                let max = s.keys_per_endpoint.iter().max().copied().unwrap_or(0);
                println!(
                    "  {label}: {:?}; {} classes, {} peer prefixes, {} group entries, {} keys (max {max}/endpoint), {} evaluations",
                    s.duration, s.classes, s.peer_prefixes, s.group_entries, s.rule_keys, s.evaluations
                );
            }
            Err(e) => println!("  {label}: {e}"),
        }
    }
}

struct Args {
    quick: bool,
    json: PathBuf,
}

fn args() -> Args {
    let mut args = Args {
        quick: false,
        json: PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/bench/dataplane.json"
        )),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--json" => args.json = it.next().expect("--json PATH").into(),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => panic!("dataplane bench: unknown argument {other:?} (--quick, --json PATH)"),
        }
    }
    args
}

fn main() {
    let args = args();
    let effort = if args.quick {
        Effort {
            batches: 5,
            repeat: 20_000,
        }
    } else {
        compile_scale();
        Effort {
            batches: 11,
            repeat: 100_000,
        }
    };
    let samples = measure(effort);
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    let json = serde_json::to_string_pretty(&samples).unwrap();
    std::fs::write(&args.json, json + "\n")
        .unwrap_or_else(|e| panic!("writing {}: {e}", args.json.display()));
    println!("wrote {}", args.json.display());
}

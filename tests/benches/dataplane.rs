//! `cargo xtask bench`: nanoseconds per packet in the kernel program
//! (BPF_PROG_TEST_RUN), against the number of rules in force.
//!
//! The policy: one workload (the server) whose ingress policy has N rules, each
//! allowing TCP from a distinct /32 peer to a distinct port, then a deny. The
//! packets: a new flow matching the LAST rule (what a linear scan pays most
//! for), a new flow that no rule allows, an established flow, the new flow
//! again with the staged pass on (a staged policy selects the server: a second
//! table lookup and a ring-buffer event per packet, drained between batches so
//! every event is really written, never the cheaper ring-full path), and the
//! first again with the source-port lookup on (`SOURCE_PORTS` and a populated
//! `SPORTS` trie whose entries keep every port in class 0). The design
//! claims the cost is flat in N: the compiler resolved order, tiers and rules
//! into one class lookup and one table lookup. Ratios within one run are what
//! to read (shared, noisy machines), not absolute numbers.
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use agent::compile::compile;
use agent::dataplane::{Dataplane, Hook, SourcePortEntry};
use agent::model::ir::Direction;
use agent::model::load::load_sources;
use agent_common::{active_flags, endpoint_flags, stat, EndpointInfo};
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::Packet;

const REPEAT: u32 = 200_000;
/// BPF_PROG_TEST_RUN's ctx carries no ifindex here: the program sees loopback's.
const LOOPBACK: u32 = 1;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 65, 0, 30);

fn peer(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 70, (i / 250) as u8, (i % 250) as u8 + 1)
}

fn datastore(rules: usize) -> String {
    let mut y = String::from(
        "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {interfaceName: calibench, ipNetworks: [10.65.0.30/32]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: server-ingress}
spec:
  order: 10
  selector: app == 'server'
  types: [Ingress]
  ingress:
",
    );
    for i in 0..rules {
        y.push_str(&format!(
            "  - {{action: Allow, protocol: TCP, source: {{nets: [{}/32]}}, destination: {{ports: [{}]}}}}\n",
            peer(i),
            10_000 + i
        ));
    }
    y.push_str("  - action: Deny\n");
    // The staged lockdown: the same rules but the last, so the staged pass has
    // the same table shape and disagrees on the last rule's flow.
    y.push_str(
        "---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: server-lockdown}
spec:
  order: 5
  selector: app == 'server'
  types: [Ingress]
  ingress:
",
    );
    for i in 0..rules.saturating_sub(1) {
        y.push_str(&format!(
            "  - {{action: Allow, protocol: TCP, source: {{nets: [{}/32]}}, destination: {{ports: [{}]}}}}\n",
            peer(i),
            10_000 + i
        ));
    }
    y.push_str("  - action: Deny\n");
    y
}

fn ns_per_packet(dp: &mut Dataplane, frame: &[u8]) -> u64 {
    ns_per_run(dp, frame, REPEAT)
}

fn ns_per_run(dp: &mut Dataplane, frame: &[u8], repeat: u32) -> u64 {
    let r = dp
        .program(Hook::ToEndpoint)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN (needs root)");
    r.duration.as_nanos() as u64
}

/// New flows with the staged pass: every packet emits an event, so run in
/// batches the ring buffer (256 KiB, ~2,900 events) holds and drain between.
fn ns_per_staged_packet(dp: &mut Dataplane, frame: &[u8]) -> u64 {
    const BATCH: u32 = 2_000;
    dp.drain_events(); // deny events of earlier runs
    let full_before = dp.counters().unwrap().get(stat::RINGBUF_FULL);
    let mut total = 0;
    for _ in 0..REPEAT / BATCH {
        total += ns_per_run(dp, frame, BATCH);
        assert_eq!(
            dp.drain_events().len(),
            BATCH as usize,
            "one event per new flow"
        );
    }
    let full = dp.counters().unwrap().get(stat::RINGBUF_FULL) - full_before;
    assert_eq!(full, 0, "the staged runs must measure real event writes");
    total / u64::from(REPEAT / BATCH)
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

fn main() {
    compile_scale();
    println!("ns/packet over {REPEAT} runs of BPF_PROG_TEST_RUN (includes ~35 ns of harness)");
    println!(
        "{:>6} {:>8} {:>8} {:>10} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "rules",
        "classes",
        "keys",
        "compile",
        "new(last)",
        "new(denied)",
        "established",
        "new+staged",
        "new(+sport)"
    );
    let mut first_new = None;
    // 1024 rules per direction is Calico's limit.
    for rules in [1usize, 10, 100, 1000] {
        let loaded = load_sources(&[(PathBuf::from("bench.yaml"), datastore(rules))]);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let started = Instant::now();
        let compiled = compile(&loaded.model).expect("compile");
        let compile_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut dp = Dataplane::load().expect("load through the verifier (needs root)");
        let ep = &compiled.endpoints[0];
        dp.set_endpoint(
            LOOPBACK,
            EndpointInfo {
                id: ep.id,
                flags: ep.info().flags & !endpoint_flags::HAS_STAGED,
            },
        )
        .unwrap();
        assert!(ep.has_staged, "the staged policy selects the server");
        dp.install(&compiled.tables).unwrap();

        let last = rules - 1;
        let to = |src: Ipv4Addr, port: u16| {
            Packet::tcp(IpAddr::V4(src), 40_000, IpAddr::V4(SERVER), port).frame()
        };
        let allowed = to(peer(last), 10_000 + last as u16);
        let denied = to(Ipv4Addr::new(10, 99, 0, 1), 10_000 + last as u16);

        dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
        let new_last = ns_per_packet(&mut dp, &allowed);
        let new_denied = ns_per_packet(&mut dp, &denied);
        dp.set_endpoint(LOOPBACK, ep.info()).unwrap();
        let new_staged = ns_per_staged_packet(&mut dp, &allowed);
        dp.set_active_flags(0).unwrap();
        let established = ns_per_packet(&mut dp, &allowed);

        // The same verdicts with the source-port lookup on: class 0 everywhere,
        // from a trie of a few hundred prefixes.
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
        dp.set_endpoint(
            LOOPBACK,
            EndpointInfo {
                id: ep.id,
                flags: (ep.info().flags & !endpoint_flags::HAS_STAGED)
                    | endpoint_flags::SOURCE_PORTS,
            },
        )
        .unwrap();
        dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
        // Another source port: the established measurement left an entry for `allowed`.
        let fresh = Packet::tcp(
            IpAddr::V4(peer(last)),
            40_001,
            IpAddr::V4(SERVER),
            10_000 + last as u16,
        )
        .frame();
        let new_sport = ns_per_packet(&mut dp, &fresh);
        let base = *first_new.get_or_insert(new_last);
        println!(
            "{rules:>6} {:>8} {:>8} {:>8.1}ms {:>9} ns {:>9} ns {:>9} ns {:>9} ns {:>9} ns   (new/new@1 rule = {:.2})",
            compiled.stats.classes,
            compiled.stats.rule_keys,
            compile_ms,
            new_last,
            new_denied,
            established,
            new_staged,
            new_sport,
            new_last as f64 / base as f64
        );
    }
}

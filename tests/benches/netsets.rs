//! Network sets at scale: time and peak memory to load, compile and encode a
//! datastore whose one GlobalNetworkSet holds N nets (a threat feed,
//! `agent::compile::feed`), with a policy denying it and 4 dual-stack endpoints;
//! as root, also the time to install the tables into freshly loaded kernel maps,
//! the kernel memory (slab) that took, and the ns per new flow from an address
//! in the set (denied) and from one outside it (allowed), BPF_PROG_TEST_RUN.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench netsets [-- N...]` (release;
//! `cargo +1.99.0 run`-style debug numbers: `cargo +1.99.0 bench --profile dev ...`).
//! Each N runs in its own process, so that its peak RSS is its own.
use std::process::Command;
use std::time::{Duration, Instant};

use agent::compile::{compile, feed};
use agent::dataplane::{Dataplane, Hook};
use agent::model::load::load_sources;
use agent::model::Severity;
use agent_common::active_flags;
use aya::programs::{TestRun, TestRunOptions};
use lab::packet::Packet;

const ENDPOINTS: usize = 4;
const REPEAT: u32 = 200_000;
/// BPF_PROG_TEST_RUN's ctx carries no ifindex here: the program sees loopback's.
const LOOPBACK: u32 = 1;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if let [flag, n] = &args[..] {
        if flag == "--one" {
            return one(n.parse().expect("a number of nets"));
        }
    }
    let sizes: Vec<usize> = if args.is_empty() {
        vec![1, 10_000, 100_000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("numbers of nets"))
            .collect()
    };
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "nets",
        "prefixes",
        "load",
        "compile",
        "encode",
        "peak RSS",
        "model",
        "install",
        "kernel",
        "denied",
        "allowed"
    );
    let me = std::env::current_exe().expect("own path");
    for n in sizes {
        let status = Command::new(&me)
            .args(["--one", &n.to_string()])
            .status()
            .expect("run one size");
        assert!(status.success(), "{n} nets: {status}");
    }
}

/// One size, in this process: one line of the table.
fn one(n: usize) {
    let yaml = feed::yaml(n, ENDPOINTS, false);
    let started = Instant::now();
    let loaded = load_sources(&[("feed.yaml".into(), yaml)]);
    let load = started.elapsed();
    assert!(
        loaded
            .diagnostics
            .iter()
            .all(|d| d.severity != Severity::Error),
        "{:?}",
        &loaded.diagnostics[..loaded.diagnostics.len().min(3)]
    );
    let model_rss = peak_rss_mib();
    let started = Instant::now();
    let compiled = compile(&loaded.model).expect("compiles");
    let compile_time = started.elapsed();
    let started = Instant::now();
    let encoded = compiled.tables.encode().expect("encodes");
    let encode = started.elapsed();
    let peak = peak_rss_mib();
    let k = kernel(&compiled, n);
    let kernel = k.map_or("-".into(), |k| {
        format!(
            "{:>9} {:>7.1} M {:>6} ns {:>6} ns",
            ms(k.install),
            k.slab_mib,
            k.ns_denied,
            k.ns_allowed
        )
    });
    println!(
        "{n:>8} {:>9} {:>9} {:>9} {:>9} {peak:>6.0} M {model_rss:>6.0} M {kernel}",
        encoded.peers.len(),
        ms(load),
        ms(compile_time),
        ms(encode),
    );
}

/// What the kernel side costs: install time into fresh maps, slab growth, and
/// ns per new flow (BPF_PROG_TEST_RUN, no conntrack entries) from an address
/// of the set (denied, a deny event per packet, rate-limited) and from one
/// outside it (allowed).
struct Kernel {
    install: Duration,
    slab_mib: f64,
    ns_denied: u64,
    ns_allowed: u64,
}

/// [`Kernel`], when the programs load (root).
fn kernel(compiled: &agent::compile::Compiled, n: usize) -> Option<Kernel> {
    let mut dp = Dataplane::load().ok()?;
    let before = meminfo_kib("Slab:");
    let started = Instant::now();
    dp.install(&compiled.tables).expect("installs");
    let install = started.elapsed();
    let slab_mib = (meminfo_kib("Slab:") - before) as f64 / 1024.0;
    dp.set_endpoint(LOOPBACK, compiled.endpoints[0].info())
        .unwrap();
    dp.set_active_flags(active_flags::NO_CT_INSERT).unwrap();
    let me = feed::endpoint_ip(0, false);
    let from = |peer| Packet::tcp(peer, 40_000, me, 443).frame();
    // Both IPv4 /32s of the feed's space (same trie depth): a listed one, and
    // the next unlisted net's (the first index >= n of the /32 kind).
    let listed = feed::inside(n / 2 / 10 * 10);
    let outside = feed::inside(n.div_ceil(10) * 10);
    assert!(feed::holds(n, listed) && !feed::holds(n, outside));
    Some(Kernel {
        install,
        slab_mib,
        ns_denied: ns_per_packet(&mut dp, &from(listed)),
        ns_allowed: ns_per_packet(&mut dp, &from(outside)),
    })
}

fn ns_per_packet(dp: &mut Dataplane, frame: &[u8]) -> u64 {
    let r = dp
        .program(Hook::ToEndpoint)
        .unwrap()
        .test_run(TestRunOptions {
            data_in: Some(frame),
            repeat: REPEAT,
            ..Default::default()
        })
        .expect("BPF_PROG_TEST_RUN");
    r.duration.as_nanos() as u64
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// The process's peak resident set (VmHWM), MiB.
fn peak_rss_mib() -> f64 {
    status_kib("/proc/self/status", "VmHWM:") as f64 / 1024.0
}

fn meminfo_kib(field: &str) -> i64 {
    status_kib("/proc/meminfo", field)
}

fn status_kib(file: &str, field: &str) -> i64 {
    let text = std::fs::read_to_string(file).expect("procfs");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("field present")
}

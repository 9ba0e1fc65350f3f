//! Network sets at scale: time and peak memory to load, compile and encode a
//! datastore whose one GlobalNetworkSet holds N nets (a threat feed,
//! `agent::compile::feed`), with a policy denying it and 4 dual-stack endpoints;
//! as root, also the time to install the tables into freshly loaded kernel maps
//! and the kernel memory (slab) that took.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench netsets [-- N...]` (release;
//! `cargo +1.99.0 run`-style debug numbers: `cargo +1.99.0 bench --profile dev ...`).
//! Each N runs in its own process, so that its peak RSS is its own.
use std::process::Command;
use std::time::{Duration, Instant};

use agent::compile::{compile, feed};
use agent::dataplane::Dataplane;
use agent::model::load::load_sources;
use agent::model::Severity;

const ENDPOINTS: usize = 4;

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
        vec![10_000, 100_000]
    } else {
        args.iter()
            .map(|a| a.parse().expect("numbers of nets"))
            .collect()
    };
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9}",
        "nets", "prefixes", "load", "compile", "encode", "peak RSS", "model", "install", "kernel"
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
    let (install, kernel) = install(&compiled.tables);
    println!(
        "{n:>8} {:>9} {:>9} {:>9} {:>9} {:>6.0} M {:>6.0} M {:>9} {:>9}",
        encoded.peers.len(),
        ms(load),
        ms(compile_time),
        ms(encode),
        peak_rss_mib(),
        model_rss,
        install.map_or("-".into(), ms),
        kernel.map_or("-".into(), |k| format!("{k:.1} M")),
    );
}

/// Install time into fresh maps and the slab growth (MiB), when the programs load (root).
fn install(tables: &agent::dataplane::TableSet) -> (Option<Duration>, Option<f64>) {
    let Ok(mut dp) = Dataplane::load() else {
        return (None, None);
    };
    let before = meminfo_kib("Slab:");
    let started = Instant::now();
    dp.install(tables).expect("installs");
    let took = started.elapsed();
    let after = meminfo_kib("Slab:");
    (Some(took), Some((after - before) as f64 / 1024.0))
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

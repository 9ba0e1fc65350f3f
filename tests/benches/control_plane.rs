//! Control plane: how long a datastore change takes to reach the kernel's
//! tables, with the incremental compiler (`agent::compile::Compiler`).
//!
//! 1. File change to new verdict: a datastore of `--endpoints` workload
//!    endpoints (5,000; `--local` of them, 100, on this node: the others are
//!    peers) and `--policies` GlobalNetworkPolicies (1,000), one document per
//!    file. Each change edits one document (a pod relabelled, a policy's port
//!    changed, a pod added or removed again), then does what the daemon does on
//!    a file change, timed from the edit to the flip: load every document,
//!    keep this node's interfaces, compile (incrementally), install into real
//!    kernel maps (only the entries that differ, from the shadow). After the
//!    flip every packet is judged by the new tables. Not included: the file
//!    watcher's debounce (`datastore::file_watch::DEBOUNCE`, 200 ms), which
//!    the daemon waits before loading. In process, not through a running agent
//!    in a network namespace: the same functions, without the watcher.
//! 2. Churn: a model of `--churn-pods` pods (10,000; 100 local) and 1,000
//!    policies; 50 pod changes per second arrive (a pod relabelled, or given
//!    a new address as when it is replaced; one in 50 on this node);
//!    the loop takes every change that has arrived, compiles and installs, and
//!    records each change's lag (arrival to installed). It keeps up when the
//!    lag stays flat over the run instead of growing. Model edits are made on
//!    the model directly (the Kubernetes datastore's conversion is not timed).
//!
//! `cargo +1.99.0 bench -p agent-tests --bench control_plane [-- --quick]` (as root).
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent::compile::testgen::scale_model;
use agent::compile::{Compiler, EndpointIds, Limits};
use agent::dataplane::Dataplane;
use agent::model::ir::Model;
use agent::model::load::load_sources;

const NODE: &str = "bench-node";

struct Options {
    endpoints: usize,
    local: usize,
    policies: usize,
    changes: usize,
    churn_pods: usize,
    churn_seconds: u64,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let value = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    Options {
        endpoints: value("--endpoints", 5_000),
        local: value("--local", 100),
        policies: value("--policies", 1_000),
        changes: value("--changes", if quick { 60 } else { 200 }),
        churn_pods: value("--churn-pods", 10_000),
        churn_seconds: value("--churn-seconds", if quick { 10 } else { 30 }) as u64,
    }
}

fn ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256)
}

fn pod_doc(i: usize, app: usize, local: bool) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
         metadata: {{name: pod{i}, namespace: ns{ns}, labels: {{app: app{app}, tier: {tier}}}}}\n\
         spec: {{node: {node}, interfaceName: cali{i}, ipNetworks: [{ip}/32]}}\n",
        ns = i % 3,
        tier = ["web", "api", "db"][i % 3],
        node = if local { NODE } else { "other" },
        ip = ip(i),
    )
}

fn policy_doc(p: usize, port: usize) -> String {
    format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
         metadata: {{name: allow-{p}}}\n\
         spec:\n  order: {p}\n  selector: app == 'app{app}'\n  types: [Ingress]\n  ingress:\n\
         \x20 - {{action: Allow, protocol: TCP, source: {{selector: tier == '{tier}'}}, destination: {{ports: [{port}]}}}}\n\
         \x20 - {{action: Allow, protocol: TCP, source: {{nets: [172.16.{net}.0/24]}}, destination: {{ports: [9000]}}}}\n",
        app = p % 10,
        tier = ["web", "api", "db"][p % 3],
        net = p % 64,
    )
}

/// Percentile `q` (0..=1) of `samples`, sorted in place.
fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q).round() as usize]
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

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Compile (incrementally) and install; the ids for the next compile.
fn apply(
    compiler: &mut Compiler,
    dp: &mut Dataplane,
    model: &Model,
    ids: &EndpointIds,
) -> (EndpointIds, usize, Duration, Duration) {
    let started = Instant::now();
    let c = compiler
        .compile(model, &Limits::default(), ids)
        .expect("compiles");
    let compiled = started.elapsed();
    dp.install(&c.tables).expect("installs");
    let installed = started.elapsed() - compiled;
    (
        ids.after(model, &c.endpoints),
        c.stats.reused,
        compiled,
        installed,
    )
}

fn file_changes(o: &Options, dp: &mut Dataplane) {
    let mut docs: Vec<(PathBuf, String)> = (0..o.endpoints)
        .map(|i| {
            (
                format!("pod{i}.yaml").into(),
                pod_doc(i, i % 10, i < o.local),
            )
        })
        .chain((0..o.policies).map(|p| {
            let doc = policy_doc(p, 8000 + p % 50);
            (format!("policy{p}.yaml").into(), doc)
        }))
        .collect();
    let load = |docs: &[(PathBuf, String)]| {
        let mut l = load_sources(docs);
        agent::model::node::keep_this_node(&mut l, NODE);
        l.model
    };
    let mut compiler = Compiler::new();
    let started = Instant::now();
    let model = load(&docs);
    let loaded = started.elapsed();
    let (mut ids, _, first_compile, first_install) =
        apply(&mut compiler, dp, &model, &EndpointIds::default());
    println!(
        "file change -> verdict: {} endpoints ({} local), {} policies; first load {}, compile {}, install {}",
        o.endpoints,
        o.local,
        o.policies,
        ms(loaded),
        ms(first_compile),
        ms(first_install)
    );
    let (mut total, mut loads, mut compiles, mut installs) = (vec![], vec![], vec![], vec![]);
    let mut cpu = vec![];
    let mut reused = 0;
    let mut added = false;
    for k in 0..o.changes {
        match k % 4 {
            0 => {
                let i = (k * 7919) % o.endpoints;
                docs[i].1 = pod_doc(i, (i + k) % 10, i < o.local);
            }
            1 => {
                let p = (k * 104_729) % o.policies;
                docs[o.endpoints + p].1 = policy_doc(p, 7000 + k % 500);
            }
            _ if added => {
                docs.pop();
                added = false;
            }
            _ => {
                let i = o.endpoints + 10_000 + k;
                docs.push((
                    format!("pod{i}.yaml").into(),
                    pod_doc(i, k % 10, k % 8 == 2),
                ));
                added = true;
            }
        }
        let (t0, c0) = (Instant::now(), cpu_time());
        let model = load(&docs);
        let loaded = t0.elapsed();
        let (next, r, compiled, installed) = apply(&mut compiler, dp, &model, &ids);
        total.push(t0.elapsed());
        cpu.push(cpu_time() - c0);
        loads.push(loaded);
        compiles.push(compiled);
        installs.push(installed);
        reused += r;
        ids = next;
    }
    println!("{:>10} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    for (what, samples) in [
        ("load", &mut loads),
        ("compile", &mut compiles),
        ("install", &mut installs),
        ("total", &mut total),
        ("total CPU", &mut cpu),
    ] {
        let (p50, p99, max) = (
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 1.0),
        );
        println!("{what:>10} {:>10} {:>10} {:>10}", ms(p50), ms(p99), ms(max));
    }
    let (t0, c0) = (Instant::now(), cpu_time());
    let _ = load(&docs);
    println!(
        "a load alone: {} ({} CPU)",
        ms(t0.elapsed()),
        ms(cpu_time() - c0)
    );
    println!(
        "{} changes; endpoints reused per compile: {:.1} of {}",
        o.changes,
        reused as f64 / o.changes as f64,
        o.local
    );
    let t0 = Instant::now();
    Compiler::new()
        .compile(&load(&docs), &Limits::default(), &ids)
        .expect("compiles");
    println!(
        "for comparison, a compile from scratch (with load): {}",
        ms(t0.elapsed())
    );
}

/// A pod change as a Kubernetes watch delivers it.
fn churn_edit(model: &mut Model, k: usize, pods: usize, local: usize) {
    let i = local + (k * 7919) % (pods - local);
    // One change in 50 is a pod of this node (2%: its share of the cluster's
    // pods is 1%), the others peers elsewhere.
    let i = if k.is_multiple_of(50) {
        (k / 50) % local
    } else {
        i
    };
    let pod = &mut model.endpoints[i];
    if k.is_multiple_of(2) {
        pod.labels
            .insert("app".into(), format!("app{}", (i + k) % 10));
    } else {
        let n = pods + k;
        pod.ips = vec![ip(n).parse().expect("an address")];
    }
}

fn churn(o: &Options, dp: &mut Dataplane) {
    let pods = o.churn_pods;
    let mut model = scale_model(pods, o.policies, 1);
    for e in &mut model.endpoints[o.local..] {
        e.interface = None;
    }
    let mut compiler = Compiler::new();
    let (mut ids, ..) = apply(&mut compiler, dp, &model, &EndpointIds::default());
    let interval = Duration::from_millis(20);
    let started = Instant::now();
    let end = started + Duration::from_secs(o.churn_seconds);
    let mut pending: VecDeque<Instant> = VecDeque::new();
    let mut next = 0usize;
    let mut lags: Vec<(Duration, Duration)> = Vec::new();
    let mut rounds = 0;
    let c0 = cpu_time();
    while Instant::now() < end {
        // The changes that have arrived by now (one every 20 ms).
        while started + interval * next as u32 <= Instant::now() {
            churn_edit(&mut model, next, pods, o.local);
            pending.push_back(started + interval * next as u32);
            next += 1;
        }
        if pending.is_empty() {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        let (n, ..) = apply(&mut compiler, dp, &model, &ids);
        ids = n;
        rounds += 1;
        let done = Instant::now();
        for arrived in pending.drain(..) {
            lags.push((arrived - started, done - arrived));
        }
    }
    println!(
        "churn: {} pods ({} local), {} policies, 50 changes/s for {} s: {} changes in {} compiles, {} CPU per second of churn",
        pods,
        o.local,
        o.policies,
        o.churn_seconds,
        lags.len(),
        rounds,
        ms((cpu_time() - c0) / o.churn_seconds as u32)
    );
    println!(
        "{:>12} {:>10} {:>10} {:>10}",
        "seconds", "p50 lag", "p99 lag", "max lag"
    );
    let step = (o.churn_seconds / 5).max(1);
    for s in (0..o.churn_seconds).step_by(step as usize) {
        let mut window: Vec<Duration> = lags
            .iter()
            .filter(|(at, _)| at.as_secs() >= s && at.as_secs() < s + step)
            .map(|(_, lag)| *lag)
            .collect();
        if window.is_empty() {
            continue;
        }
        println!(
            "{:>12} {:>10} {:>10} {:>10}",
            format!("{s}-{}", s + step),
            ms(percentile(&mut window, 0.5)),
            ms(percentile(&mut window, 0.99)),
            ms(percentile(&mut window, 1.0))
        );
    }
}

fn main() {
    let o = options();
    lab::require_root();
    let mut dp = Dataplane::load().expect("loads the dataplane");
    file_changes(&o, &mut dp);
    churn(&o, &mut dp);
}

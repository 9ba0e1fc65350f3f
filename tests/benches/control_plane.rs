//! Control plane: how long a datastore change takes to reach the kernel's
//! tables, with the incremental compiler (`agent::compile::Compiler`).
//!
//! 1. File change to new verdict: a directory of `--endpoints` workload
//!    endpoints (5,000; `--local` of them, 100, on this node: the others are
//!    peers) and `--policies` GlobalNetworkPolicies (1,000), one document per
//!    file, watched by the files datastore's own watcher
//!    (`datastore::FileDatastore::watch`). Each change edits one file (a pod
//!    relabelled in place, a policy's port changed by an atomic save, a pod's
//!    file added, then removed), then does what the daemon does, timed from
//!    the write to the flip of `ACTIVE`: wait for the watcher's signal (its
//!    debounce, `datastore::DEBOUNCE`), load as the daemon loads
//!    (`FileDatastore::load_for_node`: only the files the events named are
//!    read and parsed again; the last good state kept), compile
//!    (incrementally), install into real kernel maps (only the entries that
//!    differ, from the shadow). After the flip every packet is judged by the
//!    new tables. In process, not through a running agent in a network
//!    namespace: the daemon's functions without its event loop (which runs
//!    the same steps in a blocking task). For comparison, loads of the same
//!    directory with every file parsed (as every load was before the
//!    datastore kept files) and with every file read but none parsed (a load
//!    after lost events).
//! 2. Churn: a model of `--churn-pods` pods (10,000; 100 local) and 1,000
//!    policies; 50 pod changes per second arrive (a pod relabelled, or given
//!    a new address as when it is replaced; one in 50 on this node);
//!    the loop takes every change that has arrived, compiles and installs, and
//!    records each change's lag (arrival to installed). It keeps up when the
//!    lag stays flat over the run instead of growing. Model edits are made on
//!    the model directly (the Kubernetes datastore's conversion is not timed).
//!
//! 3. YAML load of the 10,000-rule datastore: the shape of `benches/compile.rs`
//!    (4 workloads, 10 GlobalNetworkPolicies of 1,000 rules, a deny policy) in
//!    one file, loaded from text to model (`load_sources`) 5 times.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench control_plane [-- --quick] [-- --only PART]`
//! (as root; PART: `files`, `churn` or `yaml`).
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent::compile::testgen::scale_model;
use agent::compile::{Compiler, EndpointIds, Limits};
use agent::dataplane::Dataplane;
use agent::datastore::{Changes, FileDatastore, DEBOUNCE};
use agent::model::ir::Model;
use agent::model::load::load_sources;

/// The datastore of `benches/compile.rs`.
#[path = "shapes/rules.rs"]
mod rules;

const NODE: &str = "bench-node";

struct Options {
    endpoints: usize,
    local: usize,
    policies: usize,
    changes: usize,
    churn_pods: usize,
    churn_seconds: u64,
    /// Run only this part (`files`, `churn`, `yaml`); all when None.
    only: Option<String>,
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
        only: args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1).cloned()),
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

/// CPU time of the calling thread so far (a load runs on one thread).
fn thread_cpu_time() -> Duration {
    // SAFETY: clock_gettime only writes the struct it is given.
    let mut t: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
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

/// A directory of policy files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("control-plane-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).expect("a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One edit of the datastore: relabel a pod (written in place), change a
/// policy's port (an editor's atomic save: a temporary file renamed over
/// it), add a pod's file, remove it again.
fn edit(dir: &Path, o: &Options, k: usize, added: &mut bool) {
    match k % 4 {
        0 => {
            let i = (k * 7919) % o.endpoints;
            let text = pod_doc(i, (i + k) % 10, i < o.local);
            std::fs::write(dir.join(format!("pod{i}.yaml")), text).expect("writes");
        }
        1 => {
            let p = (k * 104_729) % o.policies;
            let tmp = dir.join(format!(".policy{p}.yaml.tmp"));
            std::fs::write(&tmp, policy_doc(p, 7000 + k % 500)).expect("writes");
            std::fs::rename(&tmp, dir.join(format!("policy{p}.yaml"))).expect("renames");
        }
        _ => {
            let i = o.endpoints + 10_000 + (k & !3);
            let file = dir.join(format!("pod{i}.yaml"));
            if *added {
                std::fs::remove_file(file).expect("removes");
            } else {
                std::fs::write(file, pod_doc(i, k % 10, k % 8 == 2)).expect("writes");
            }
            *added = !*added;
        }
    }
}

/// Samples of one step, printed as p50, p99, max.
fn print_steps(rows: &mut [(&str, Vec<Duration>)]) {
    println!("{:>22} {:>10} {:>10} {:>10}", "", "p50", "p99", "max");
    for (what, samples) in rows.iter_mut() {
        let (p50, p99, max) = (
            percentile(samples, 0.5),
            percentile(samples, 0.99),
            percentile(samples, 1.0),
        );
        println!("{what:>22} {:>10} {:>10} {:>10}", ms(p50), ms(p99), ms(max));
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(
        |_| "?".into(),
        |l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    )
}

/// Waits for a burst of file events to end (none for 100 ms).
fn quiet(rt: &tokio::runtime::Runtime, changes: &mut Changes) {
    rt.block_on(async {
        let wait = Duration::from_millis(100);
        while tokio::time::timeout(wait, changes.next()).await.is_ok() {}
    });
}

fn file_changes(o: &Options, dp: &mut Dataplane) {
    let tmp = TempDir::new();
    let dir = tmp.0.as_path();
    for i in 0..o.endpoints {
        std::fs::write(
            dir.join(format!("pod{i}.yaml")),
            pod_doc(i, i % 10, i < o.local),
        )
        .expect("writes");
    }
    for p in 0..o.policies {
        std::fs::write(
            dir.join(format!("policy{p}.yaml")),
            policy_doc(p, 8000 + p % 50),
        )
        .expect("writes");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // As the daemon: watched before the first load, one datastore for all
    // loads (it keeps each file's documents), the installed load's documents
    // kept for the next.
    let ds = FileDatastore::new(dir);
    let mut changes = rt.block_on(async { ds.watch() }).expect("watches");
    let mut compiler = Compiler::new();
    let started = Instant::now();
    let first = ds.load_for_node(&[], NODE);
    let loaded = started.elapsed();
    let (mut ids, _, first_compile, first_install) = apply(
        &mut compiler,
        dp,
        &first.loaded.model,
        &EndpointIds::default(),
    );
    let mut previous = first.loaded.documents;
    println!(
        "file change -> verdict: {} endpoints ({} local), {} policies in {} files; debounce {}; \
         first load {}, compile {}, install {}; load average {}",
        o.endpoints,
        o.local,
        o.policies,
        o.endpoints + o.policies,
        ms(DEBOUNCE),
        ms(loaded),
        ms(first_compile),
        ms(first_install),
        load_average()
    );
    quiet(&rt, &mut changes);
    let mut steps: Vec<(&str, Vec<Duration>)> = [
        "write to signal",
        "load (changed files)",
        "load, thread CPU",
        "compile (incremental)",
        "install",
        "total, write to flip",
        "total, process CPU",
    ]
    .into_iter()
    .map(|s| (s, vec![]))
    .collect();
    let (mut reused, mut parsed, mut added) = (0, 0, false);
    for k in 0..o.changes {
        let (t0, c0) = (Instant::now(), cpu_time());
        edit(dir, o, k, &mut added);
        rt.block_on(changes.next()).expect("the watcher runs");
        let signalled = t0.elapsed();
        let load_cpu = thread_cpu_time();
        let load = ds.load_for_node(&previous, NODE);
        let loaded = t0.elapsed() - signalled;
        let load_cpu = thread_cpu_time() - load_cpu;
        let (next, r, compiled, installed) = apply(&mut compiler, dp, &load.loaded.model, &ids);
        let times = [
            signalled,
            loaded,
            load_cpu,
            compiled,
            installed,
            t0.elapsed(),
            cpu_time() - c0,
        ];
        for ((_, samples), t) in steps.iter_mut().zip(times) {
            samples.push(t);
        }
        assert!(load.parsed_files <= 1, "{} files parsed", load.parsed_files);
        let local_pods = load
            .loaded
            .model
            .endpoints
            .iter()
            .filter(|e| e.interface.is_some());
        assert!(local_pods.count() >= o.local, "local pods lost");
        parsed += load.parsed_files;
        reused += r;
        ids = next;
        previous = load.loaded.documents;
        quiet(&rt, &mut changes);
    }
    print_steps(&mut steps);
    println!(
        "{} changes, {} files parsed again in all; endpoints reused per compile: {:.1} of {}",
        o.changes,
        parsed,
        reused as f64 / o.changes as f64,
        o.local
    );
    // The same directory loaded as before this datastore kept anything
    // (every file read and parsed), and read again without the watcher's
    // word (every file read and compared, none parsed: after lost events).
    let mut rows: Vec<(&str, Vec<Duration>)> =
        vec![("load, all parsed", vec![]), ("load, all read", vec![])];
    let unwatched = FileDatastore::new(dir);
    for _ in 0..5 {
        let t0 = Instant::now();
        FileDatastore::new(dir).load_for_node(&previous, NODE);
        rows[0].1.push(t0.elapsed());
        let t0 = Instant::now();
        unwatched.load_for_node(&previous, NODE);
        rows[1].1.push(t0.elapsed());
    }
    print_steps(&mut rows);
    println!("load average {}", load_average());
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
    let pod = std::sync::Arc::make_mut(&mut model.endpoints[i]);
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
        std::sync::Arc::make_mut(e).interface = None;
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

/// The YAML load of the 10,000-rule datastore, text to model: wall time and
/// the process's CPU time (all threads: the documents of a large file are
/// parsed on every core).
fn yaml_load() {
    let sources = [(PathBuf::from("compile.yaml"), rules::datastore(10_000))];
    let mut rows: Vec<(&str, Vec<Duration>)> = vec![
        ("YAML load, 10,000 rules", vec![]),
        ("YAML load, process CPU", vec![]),
    ];
    for _ in 0..5 {
        let (t0, c0) = (Instant::now(), cpu_time());
        let loaded = load_sources(&sources);
        rows[0].1.push(t0.elapsed());
        rows[1].1.push(cpu_time() - c0);
        assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
        let rules: usize = loaded.model.policies.iter().map(|p| p.ingress.len()).sum();
        assert_eq!(rules, 10_001);
    }
    println!("\nYAML load of the 10,000-rule datastore (one file, 15 documents), 5 loads:");
    print_steps(&mut rows);
    println!("load average {}", load_average());
}

fn main() {
    let o = options();
    let run = |part: &str| o.only.as_deref().is_none_or(|p| p == part);
    if run("yaml") {
        yaml_load();
    }
    if !run("files") && !run("churn") {
        return;
    }
    lab::require_root();
    let mut dp = Dataplane::load().expect("loads the dataplane");
    if run("files") {
        file_changes(&o, &mut dp);
    }
    if run("churn") {
        churn(&o, &mut dp);
    }
}

//! `agent run`: the daemon.
//!
//! Loads the datastore directory, compiles it, loads the eBPF programs, attaches
//! them (TCX, both hooks) to every endpoint interface that exists in the agent's
//! network namespace, installs the tables, then:
//! - watches the directory and on a change reloads, recompiles and installs the
//!   new tables atomically (a rejected document keeps its last good state; a
//!   failed compile or install keeps the previous tables enforced);
//! - every second re-resolves endpoint interfaces (attach when one appears,
//!   forget it when it goes or is re-created);
//! - every few ms drains flow events into the flow table and broadcasts them;
//! - serves the Unix socket (see [`protocol`]) and optional Prometheus metrics.
//!
//! Restarts and upgrades (see also [`crate::dataplane::loader`]):
//! - the shared maps (tables, ACTIVE, ENDPOINTS, conntrack, counters, flow
//!   events) are pinned in `<bpffs>/maps`, the TCX links in
//!   `<bpffs>/links/if<ifindex>_<from|to>`; a killed agent's programs stay
//!   attached and keep enforcing its last tables;
//! - a new agent reuses the pinned maps (the old programs keep enforcing the
//!   live copy meanwhile), compiles, and if the live copy already holds exactly
//!   the new tables it neither flips nor bumps the epoch (established flows are
//!   not re-judged); otherwise it installs into the inactive copy and flips as
//!   on any reload. Then for each endpoint interface it swaps its own program
//!   into the pinned link (`BPF_LINK_UPDATE`, atomic: no moment unpoliced), and
//!   after that first good install removes pins of interfaces that are no
//!   longer endpoints (detaching them);
//! - a clean stop (SIGTERM, ctrl-c) keeps everything pinned and enforcing, like
//!   Calico's dataplane outliving felix; `--detach-on-exit` or `agent cleanup`
//!   removes links and maps.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::limits;
use anyhow::Context;
use tokio::sync::broadcast;

use crate::compile::{compile, CompiledEndpoint};
use crate::dataplane::{Dataplane, Links};
use crate::datastore::kubernetes::{KubeDatastore, KubeOptions, KubeSnapshot};
use crate::datastore::{keep_last_good, Changes, FileDatastore};
use crate::flows::{unix_now_ns, Flow, FlowTable, View};
use crate::model::ir::{FailsafePort, Failsafes};
use crate::model::{Diagnostic, Loaded, Severity};

mod confirmations;
mod http;
mod isolate;
pub mod protocol;
mod server;
pub mod services;

pub use protocol::{Request, Status};

pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
/// How often endpoint interfaces are re-resolved.
pub const INTERFACE_POLL: Duration = Duration::from_secs(1);
/// How often the flow-event ring buffer is drained.
pub const EVENT_POLL: Duration = Duration::from_millis(5);
/// How often idle conntrack entries are deleted (the shortest timeout is 10 s).
pub const CONNTRACK_SWEEP: Duration = Duration::from_secs(10);

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/agent";

/// Where the policies and endpoints come from.
#[derive(Clone, Debug)]
pub enum DatastoreSpec {
    /// A directory of YAML documents, watched, and this node's name
    /// (other nodes' workload endpoints are peers only).
    Dir(PathBuf, String),
    /// The Kubernetes API server (see [`crate::datastore::kubernetes`]).
    Kubernetes(KubeOptions),
}

impl std::fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d, node) => write!(f, "{} (node {node})", d.display()),
            Self::Kubernetes(k) => write!(f, "kubernetes (node {})", k.node),
        }
    }
}

/// A running datastore: where reloads come from and how a load is made.
enum Source {
    Files(FileDatastore, String, Changes),
    Kubernetes(KubeDatastore),
}

/// Makes a load (cheap to clone; runs in a blocking task).
#[derive(Clone)]
enum Loader {
    Files(PathBuf, String),
    Kubernetes(KubeSnapshot),
}

/// A load, with what the datastore kept of the last good state.
struct Load {
    loaded: Loaded,
    /// Documents kept from their last good version (files: by file).
    kept: Vec<String>,
    /// Problems of the datastore itself (files: the directory is missing).
    problems: Vec<String>,
}

impl Loader {
    /// A fresh load; `previous`: the documents of the load that is installed.
    fn load(&self, previous: &[crate::model::load::Document]) -> Load {
        match self {
            Self::Files(dir, node) => {
                let mut l = FileDatastore::new(dir).load_keeping(previous);
                crate::model::node::keep_this_node(&mut l.loaded, node);
                Load {
                    loaded: l.loaded,
                    kept: l.kept,
                    problems: l.problem.into_iter().collect(),
                }
            }
            Self::Kubernetes(k) => Load {
                loaded: k.load(),
                kept: Vec::new(),
                problems: Vec::new(),
            },
        }
    }

    /// Loads keeping the last good state `shared` has installed.
    fn load_for(&self, shared: &Shared) -> Load {
        let previous = std::mem::take(&mut lock(&shared.inner).good.documents);
        let load = self.load(&previous);
        lock(&shared.inner).good.documents = previous;
        load
    }
}

impl Source {
    async fn start(spec: &DatastoreSpec) -> anyhow::Result<Source> {
        Ok(match spec {
            DatastoreSpec::Dir(dir, node) => {
                let ds = FileDatastore::new(dir);
                // Watch before the first load so no change between the two is missed.
                let changes = ds.watch().context("watching the datastore")?;
                Source::Files(ds, node.clone(), changes)
            }
            DatastoreSpec::Kubernetes(opts) => Source::Kubernetes(
                KubeDatastore::start(opts)
                    .await
                    .context("starting the Kubernetes datastore")?,
            ),
        })
    }

    fn loader(&self) -> Loader {
        match self {
            Self::Files(ds, node, _) => Loader::Files(ds.dir.clone(), node.clone()),
            Self::Kubernetes(k) => Loader::Kubernetes(k.snapshot()),
        }
    }

    async fn next(&mut self) -> Option<()> {
        match self {
            Self::Files(_, _, c) => c.next().await,
            Self::Kubernetes(k) => k.next().await,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub datastore: DatastoreSpec,
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
    /// Pin directory on a bpffs.
    pub bpffs: PathBuf,
    /// On a clean stop remove links and maps (default: keep enforcing).
    pub detach_on_exit: bool,
    /// Failsafe ports (from `--config`; Calico's defaults otherwise).
    pub failsafes: Failsafes,
    /// Service frontends and data interfaces (from `--config`).
    pub services: services::ServiceConfig,
}

/// An interface the programs are attached to.
type Attachment = Links;

/// The dataplane and what the daemon knows about the live configuration.
struct Inner {
    dp: Dataplane,
    datastore: String,
    /// The last load whose compile was installed (its model is what is enforced,
    /// including documents carried over from earlier loads).
    good: Loaded,
    /// Diagnostics of the latest load (not necessarily installed).
    diagnostics: Vec<Diagnostic>,
    /// Resources carried over from their last good state.
    kept: Vec<String>,
    /// Problems of the files datastore (the directory is missing).
    file_problems: Vec<String>,
    /// Endpoints left out of the installed compile (see [`isolate`]).
    left_out: Vec<isolate::LeftOut>,
    /// Why the latest load was not installed, if it was not.
    last_error: Option<String>,
    reloads: u64,
    last_reload_ns: u64,
    endpoints: Vec<CompiledEndpoint>,
    attached: HashMap<String, Attachment>,
    attach_errors: HashMap<String, String>,
    peer_prefixes: usize,
    rule_keys: usize,
    generation: u32,
    epoch: u32,
    failsafes: Failsafes,
    /// Management ports of the agent itself, checked for lockout.
    management: Vec<FailsafePort>,
    lockout_warnings: Vec<String>,
    /// Duration of the last successful compile and of its install (fill the
    /// inactive tables and flip), for metrics.
    compile_seconds: f64,
    swap_seconds: f64,
    pinning: protocol::PinStatus,
    /// Whether a tables install succeeded since start (pruning waits for it).
    installed_once: bool,
    /// Endpoint ids that stay the same across compiles (and restarts), by
    /// (endpoint, interface): see [`stabilize_ids`].
    stable_ids: HashMap<(String, String), u32>,
    next_id: u32,
    /// Conntrack entries left by the last sweep, and entries swept since start.
    conntrack_live: usize,
    conntrack_swept: u64,
    services: services::ServiceConfig,
    post_nat: services::PostNat,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    view: Mutex<Arc<View>>,
    flows: Mutex<FlowTable>,
    tx: broadcast::Sender<Arc<Flow>>,
    started_ns: u64,
    /// When the event loop last ticked (unix ns): `/healthz`.
    heartbeat_ns: AtomicU64,
    /// Commit-confirmed promotions (file datastore).
    confirmations: Mutex<confirmations::Confirmations>,
    /// The Kubernetes datastore's view (for its problems in the status).
    kube: Mutex<Option<KubeSnapshot>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn run(opts: RunOptions) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: RunOptions) -> anyhow::Result<()> {
    if let DatastoreSpec::Dir(dir, _) = &opts.datastore {
        anyhow::ensure!(
            dir.is_dir(),
            "datastore {} is not a directory",
            dir.display()
        );
    }
    // Every check that can refuse the start comes before the kernel is
    // touched (programs loaded, maps pinned, interfaces attached), so a
    // refused agent changes nothing.
    crate::dataplane::host::check_kernel()?;
    crate::dataplane::host::prepare_pin_dir(&opts.bpffs)?;
    let _lock = crate::dataplane::host::lock_pin_dir(&opts.bpffs)?;
    let listener = server::bind(&opts.socket)?;
    let mut dp = Dataplane::load_pinned(&opts.bpffs)
        .context("loading the eBPF programs with pinned maps (needs root)")?;
    let mut post_nat = services::PostNat::default();
    services::start(&mut dp, &opts.services, &mut post_nat)?;
    if dp.adopted() {
        tracing::info!(bpffs = %opts.bpffs.display(), "found pinned state of an earlier agent; adopting it (it stays enforced meanwhile)");
    } else {
        tracing::info!(bpffs = %opts.bpffs.display(), "no pinned state; starting fresh");
    }
    let pinning = protocol::PinStatus {
        bpffs: Some(opts.bpffs.display().to_string()),
        adopted: dp.adopted(),
        ..Default::default()
    };
    let management: Vec<FailsafePort> = opts
        .metrics
        .iter()
        .map(|a| FailsafePort {
            protocol: crate::model::ir::proto::TCP,
            port: a.port(),
            net: None,
        })
        .collect();
    let (tx, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            dp,
            datastore: opts.datastore.to_string(),
            good: Loaded::default(),
            diagnostics: Vec::new(),
            kept: Vec::new(),
            file_problems: Vec::new(),
            left_out: Vec::new(),
            last_error: None,
            reloads: 0,
            last_reload_ns: 0,
            endpoints: Vec::new(),
            attached: HashMap::new(),
            attach_errors: HashMap::new(),
            peer_prefixes: 0,
            rule_keys: 0,
            generation: 0,
            epoch: 0,
            failsafes: opts.failsafes.clone(),
            management,
            lockout_warnings: Vec::new(),
            compile_seconds: 0.0,
            swap_seconds: 0.0,
            pinning,
            installed_once: false,
            stable_ids: HashMap::new(),
            next_id: 1,
            conntrack_live: 0,
            conntrack_swept: 0,
            services: opts.services.clone(),
            post_nat,
        }),
        view: Mutex::new(Arc::new(View::default())),
        flows: Mutex::new(FlowTable::default()),
        tx,
        started_ns: unix_now_ns(),
        heartbeat_ns: AtomicU64::new(unix_now_ns()),
        confirmations: Mutex::new(Default::default()),
        kube: Mutex::new(None),
    });
    let mut source = Source::start(&opts.datastore).await?;
    let loader = source.loader();
    if let Loader::Kubernetes(k) = &loader {
        *lock(&shared.kube) = Some(k.clone());
        lock(&shared.inner).datastore = k.describe();
    }
    {
        let shared = shared.clone();
        let loader = loader.clone();
        tokio::task::spawn_blocking(move || reload(&shared, loader.load_for(&shared))).await?;
    }

    tracing::info!(socket = %opts.socket.display(), "listening");
    tokio::spawn(server::serve(listener, shared.clone()));
    if let Some(addr) = opts.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics on {addr}"))?;
        tracing::info!(%addr, "metrics (/metrics) and health (/healthz, /readyz)");
        tokio::spawn(http::serve(l, shared.clone()));
    }
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVENT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                drain(&shared);
                shared.heartbeat_ns.store(unix_now_ns(), Ordering::Relaxed);
            }
        });
    }
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERFACE_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let mut inner = lock(&shared.inner);
                reconcile_interfaces(&mut inner, false);
            }
        });
    }
    {
        // Its own handle on the pinned map: a sweep of a full table takes a
        // while and must not hold up event draining or reloads.
        let mut conntrack = crate::dataplane::pinned_conntrack(&opts.bpffs)?;
        let shared = shared.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(CONNTRACK_SWEEP);
            let sweep = crate::dataplane::sweep_conntrack(
                &mut conntrack,
                crate::dataplane::monotonic_coarse_ns(),
            );
            if sweep.removed > 0 {
                tracing::debug!(
                    removed = sweep.removed,
                    live = sweep.live,
                    "conntrack sweep"
                );
            }
            let mut inner = lock(&shared.inner);
            inner.conntrack_live = sweep.live;
            inner.conntrack_swept += sweep.removed as u64;
        });
    }
    if let DatastoreSpec::Dir(dir, _) = &opts.datastore {
        confirmations::spawn(dir.clone(), shared.clone());
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            c = source.next() => {
                if c.is_none() {
                    tracing::error!("datastore watcher stopped");
                    break;
                }
                tracing::info!("datastore changed; reloading");
                let shared = shared.clone();
                let loader = loader.clone();
                tokio::task::spawn_blocking(move || reload(&shared, loader.load_for(&shared)))
                    .await?;
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("terminated; stopping"); break; }
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    if opts.detach_on_exit {
        let mut inner = lock(&shared.inner);
        let Inner {
            dp,
            attached,
            post_nat,
            ..
        } = &mut *inner;
        for (name, a) in attached.drain() {
            detach(dp, &name, a);
        }
        services::detach_all(post_nat);
        match crate::dataplane::loader::cleanup(&opts.bpffs) {
            Ok(c) => tracing::info!(
                links = c.links,
                maps = c.maps,
                "detached and removed the pinned state (--detach-on-exit)"
            ),
            Err(e) => tracing::error!(error = %e, "removing the pinned state"),
        }
    } else {
        tracing::info!(bpffs = %opts.bpffs.display(), "programs stay attached and enforcing (pinned); `agent cleanup` removes them");
    }
    Ok(())
}

/// Moves flow events from the ring buffer into the flow table and to subscribers.
fn drain(shared: &Shared) {
    let records = lock(&shared.inner).dp.drain_events();
    if records.is_empty() {
        return;
    }
    let view = lock(&shared.view).clone();
    let mut flows = lock(&shared.flows);
    for r in &records {
        let flow = flows.add(r, &view);
        let _ = shared.tx.send(flow);
    }
}

/// Takes a fresh load of the datastore, compiles and installs. Never loosens on failure.
fn reload(shared: &Shared, load: Load) {
    let Load {
        mut loaded,
        kept: kept_documents,
        problems,
    } = load;
    for p in &problems {
        tracing::warn!("datastore: {p}");
    }
    for d in &loaded.diagnostics {
        match d.severity {
            Severity::Error => tracing::warn!(
                file = %d.file.display(), line = d.line, resource = %d.resource,
                field = %d.field, "rejected: {}", d.message
            ),
            Severity::Warning => tracing::info!(
                file = %d.file.display(), line = d.line, resource = %d.resource,
                field = %d.field, "warning: {}", d.message
            ),
        }
    }
    let mut inner = lock(&shared.inner);
    loaded.model.failsafes = inner.failsafes.clone();
    inner.reloads += 1;
    inner.last_reload_ns = unix_now_ns();
    inner.diagnostics = loaded.diagnostics.clone();
    inner.file_problems = problems;
    let mut kept = kept_documents;
    for k in keep_last_good(&mut loaded, &inner.good) {
        if !kept.contains(&k) {
            kept.push(k);
        }
    }
    for k in &kept {
        tracing::warn!(resource = %k, "keeping the last good version of a rejected resource");
    }
    // Endpoints this agent enforces now: a compile error about any other one
    // leaves that one out instead of holding up every change.
    let mut enforced: std::collections::HashSet<String> = inner
        .endpoints
        .iter()
        .filter_map(|e| inner.good.model.endpoints.get(e.endpoint_index))
        .map(|m| m.key())
        .collect();
    if !inner.installed_once && inner.dp.adopted() {
        // Before the first install after a restart: those an earlier agent's
        // pinned links police.
        let pinned = loaded.model.endpoints.iter().filter(|e| {
            e.interface.as_deref().is_some_and(|i| {
                let idx = if_index(i);
                idx != 0 && inner.dp.has_pinned_link(idx)
            })
        });
        enforced.extend(pinned.map(|e| e.key()));
    }
    let compiled = isolate::compile_leaving_out(&mut loaded.model, &enforced, compile);
    let (mut compiled, left_out) = match compiled {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "compile failed; the previous tables stay enforced");
            inner.last_error = Some(format!("compile: {e}"));
            return;
        }
    };
    if let Some(first) = left_out.first() {
        tracing::warn!(
            endpoints = left_out.len(),
            first = %first.endpoint,
            "endpoints left out (not enforced): {}",
            first.reason
        );
    }
    stabilize_ids(&mut inner, &loaded.model, &mut compiled);
    let warnings: Vec<String> = crate::lockout::check(&loaded.model, &inner.management)
        .iter()
        .map(|w| w.to_string())
        .collect();
    for w in &warnings {
        tracing::warn!("lockout risk: {w}");
    }
    inner.lockout_warnings = warnings;
    // Enrich events of the outgoing tables with the outgoing names.
    drop(inner);
    drain(shared);
    let mut inner = lock(&shared.inner);
    // Adopting an earlier agent's state: when its live tables already are ours
    // (and its endpoint entries agree), keep them: no flip, no epoch bump.
    let unchanged = !inner.installed_once
        && inner.dp.adopted()
        && inner
            .dp
            .live_tables_equal(&compiled.tables)
            .unwrap_or(false)
        && compiled.endpoints.iter().all(|e| {
            let idx = if_index(&e.interface);
            idx == 0 || inner.dp.endpoint(idx).is_none_or(|info| info == e.info())
        });
    let swap_started = std::time::Instant::now();
    let result = if unchanged {
        inner.dp.active()
    } else {
        raise_source_port_flags(&mut inner, &compiled);
        inner.dp.install(&compiled.tables)
    };
    if result.is_ok() {
        inner.compile_seconds = compiled.stats.duration.as_secs_f64();
        inner.swap_seconds = swap_started.elapsed().as_secs_f64();
    }
    match result {
        Ok(live) => {
            if !inner.installed_once && inner.dp.adopted() {
                inner.pinning.start_flipped = Some(!unchanged);
                tracing::info!(
                    unchanged,
                    epoch = live.epoch,
                    "adopted pinned tables ({})",
                    if unchanged {
                        "identical policy: kept live, no epoch bump"
                    } else {
                        "policy changed: installed and flipped"
                    }
                );
            }
            inner.generation = live.generation;
            inner.epoch = live.epoch;
        }
        Err(e) => {
            tracing::error!(error = %e, "installing the tables failed; the previous tables stay enforced");
            inner.last_error = Some(format!("install: {e}"));
            return;
        }
    }
    inner.peer_prefixes = compiled.stats.peer_prefixes;
    inner.rule_keys = compiled.stats.rule_keys;
    let enforced = loaded
        .model
        .policies
        .iter()
        .filter(|p| !p.id.kind.is_staged())
        .count();
    tracing::info!(
        policies = enforced,
        staged = loaded.model.policies.len() - enforced,
        endpoints = compiled.endpoints.len(),
        rejected = loaded
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count(),
        generation = inner.generation,
        "tables installed"
    );
    inner.last_error = None;
    inner.kept = kept;
    inner.left_out = left_out;
    inner.endpoints = compiled.endpoints.clone();
    let view = Arc::new(View::new(&loaded.model, compiled));
    inner.good = loaded;
    *lock(&shared.view) = view;
    reconcile_interfaces(&mut inner, true);
    inner.installed_once = true;
    // Pinned links and endpoint entries of interfaces that are no longer
    // endpoints (left by an earlier agent, or gone since): detach them.
    // An endpoint interface whose attach failed keeps an earlier agent's link.
    let keep: std::collections::HashSet<u32> = inner
        .attached
        .values()
        .map(|a| a.ifindex)
        .chain(inner.endpoints.iter().map(|e| if_index(&e.interface)))
        .filter(|&i| i != 0)
        .collect();
    let pruned = inner.dp.prune(&keep);
    if pruned > 0 {
        tracing::info!(
            links = pruned,
            "detached pinned links of interfaces that are no longer endpoints"
        );
        inner.pinning.pruned_links += pruned;
    }
}

/// Sets `SOURCE_PORTS` on attached endpoints whose new tables classify source
/// ports, before those tables go live (the entries are rewritten after the flip):
/// with the old tables the lookup misses and gives class 0, all they use, while
/// the new tables without the flag would judge every source port as class 0.
/// Flags no longer needed are lowered after the flip, just as safely.
fn raise_source_port_flags(inner: &mut Inner, compiled: &crate::compile::Compiled) {
    use agent_common::endpoint_flags::SOURCE_PORTS;
    for e in compiled.endpoints.iter().filter(|e| e.source_ports) {
        let Some(ifindex) = inner.attached.get(&e.interface).map(|a| a.ifindex) else {
            continue;
        };
        if let Some(mut info) = inner.dp.endpoint(ifindex) {
            if info.flags & SOURCE_PORTS == 0 {
                info.flags |= SOURCE_PORTS;
                if let Err(err) = inner.dp.set_endpoint(ifindex, info) {
                    tracing::error!(interface = %e.interface, error = %err, "raising SOURCE_PORTS");
                }
            }
        }
    }
}

/// Gives each endpoint the id it had in the previous compile (or, on the first
/// compile after adopting pinned state, the id its interface has in the pinned
/// ENDPOINTS map), and never reuses a retired id.
///
/// Why: ENDPOINTS (ifindex -> id) is not double-buffered like the tables, and
/// the new tables go live (flip) before the entries are rewritten. If the
/// compiler renumbered endpoints (e.g. one left the datastore), an interface
/// would for a moment be judged by another endpoint's rules with its old id,
/// and a deny cached in conntrack then would kill an established connection.
/// With stable ids an unchanged endpoint's id means the same in both copies.
fn stabilize_ids(
    inner: &mut Inner,
    model: &crate::model::ir::Model,
    compiled: &mut crate::compile::Compiled,
) {
    let key = |e: &CompiledEndpoint| {
        let name = model
            .endpoints
            .get(e.endpoint_index)
            .map(|m| m.key())
            .unwrap_or_default();
        (name, e.interface.clone())
    };
    if inner.stable_ids.is_empty() && inner.dp.adopted() {
        // Seed from the pinned entries of an earlier agent.
        let mut max = 0;
        for e in &compiled.endpoints {
            let idx = if_index(&e.interface);
            if idx == 0 {
                continue;
            }
            if let Some(info) = inner.dp.endpoint(idx) {
                if !inner.stable_ids.values().any(|&v| v == info.id) {
                    inner.stable_ids.insert(key(e), info.id);
                    max = max.max(info.id);
                }
            }
        }
        inner.next_id = inner.next_id.max(max + 1);
    }
    let mut map: HashMap<u32, u32> = HashMap::new();
    let mut used = std::collections::HashSet::new();
    let mut next_stable = HashMap::new();
    for e in &mut compiled.endpoints {
        let k = key(e);
        let id = match inner.stable_ids.get(&k) {
            Some(&id) if !used.contains(&id) => id,
            _ => {
                let id = inner.next_id;
                inner.next_id += 1;
                id
            }
        };
        used.insert(id);
        map.insert(e.id, id);
        next_stable.insert(k, id);
        e.id = id;
    }
    // Entries of endpoints without an interface are never looked up (no
    // ENDPOINTS entry names them); drop them so their ids cannot collide.
    compiled
        .tables
        .rules
        .retain_mut(|r| match map.get(&r.endpoint_id) {
            Some(&id) => {
                r.endpoint_id = id;
                true
            }
            None => false,
        });
    compiled
        .tables
        .sports
        .retain_mut(|s| match map.get(&s.endpoint_id) {
            Some(&id) => {
                s.endpoint_id = id;
                true
            }
            None => false,
        });
    compiled
        .tables
        .groups
        .retain_mut(|g| match map.get(&g.endpoint_id) {
            Some(&id) => {
                g.endpoint_id = id;
                true
            }
            None => false,
        });
    inner.stable_ids = next_stable;
}

fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn detach(dp: &mut Dataplane, interface: &str, a: Attachment) {
    if let Err(e) = dp.remove_endpoint(a.ifindex) {
        tracing::warn!(interface, error = %e, "removing endpoint entry");
    }
    // Removes the pins and closes the links (harmless when the interface is gone).
    a.detach();
}

/// Attaches to endpoint interfaces that exist and are not attached yet, forgets
/// ones that are gone or re-created, and (with `update`) rewrites every
/// endpoint entry (ids and flags may change with a recompile).
fn reconcile_interfaces(inner: &mut Inner, update: bool) {
    let mut desired: HashMap<String, CompiledEndpoint> = HashMap::new();
    for e in &inner.endpoints {
        if e.interface == "*" || e.interface.is_empty() {
            continue;
        }
        desired
            .entry(e.interface.clone())
            .or_insert_with(|| e.clone());
    }
    let Inner {
        dp,
        attached,
        attach_errors,
        pinning,
        services: service_config,
        post_nat,
        ..
    } = inner;
    let endpoint_ifs = desired.keys().cloned().collect();
    services::reconcile(dp, service_config, post_nat, &endpoint_ifs);
    let adopted_links = &mut pinning.adopted_links;
    // Gone from the datastore, vanished or re-created.
    let names: Vec<String> = attached.keys().cloned().collect();
    for name in names {
        let idx = if_index(&name);
        let stale = attached.get(&name).is_some_and(|a| a.ifindex != idx);
        if !desired.contains_key(&name) || stale {
            if let Some(a) = attached.remove(&name) {
                tracing::info!(interface = %name, ifindex = a.ifindex, "endpoint interface gone; detached");
                detach(dp, &name, a);
            }
        }
    }
    attach_errors.retain(|k, _| desired.contains_key(k));
    for (name, ep) in &desired {
        let info = ep.info();
        if attached.contains_key(name) {
            if update {
                let ifindex = attached[name].ifindex;
                if let Err(e) = dp.set_endpoint(ifindex, info) {
                    tracing::error!(interface = %name, error = %e, "updating endpoint");
                }
            }
            continue;
        }
        let idx = if_index(name);
        if idx == 0 {
            continue;
        }
        // The endpoint entry first, so the first packet through the programs is policed.
        if let Err(e) = dp.set_endpoint(idx, info) {
            tracing::error!(interface = %name, error = %e, "setting endpoint");
            attach_errors.insert(name.clone(), e.to_string());
            continue;
        }
        match dp.attach_links(idx) {
            Err(e) => {
                tracing::error!(interface = %name, error = %e, "attaching");
                attach_errors.insert(name.clone(), e.to_string());
                // An earlier agent's link still polices it: keep its entry.
                if dp.has_pinned_link(idx) {
                    continue;
                }
                if let Err(e) = dp.remove_endpoint(idx) {
                    tracing::warn!(interface = %name, error = %e, "removing endpoint entry");
                }
            }
            Ok(links) => {
                if links.adopted > 0 {
                    tracing::info!(interface = %name, ifindex = idx, endpoint_id = ep.id, links = links.adopted, "adopted pinned links; swapped in this agent's programs");
                } else {
                    tracing::info!(interface = %name, ifindex = idx, endpoint_id = ep.id, "attached");
                }
                *adopted_links += links.adopted;
                attach_errors.remove(name);
                attached.insert(name.clone(), links);
            }
        }
    }
}

/// The interfaces an earlier agent's pinned links police (read from the pins
/// and the ENDPOINTS map), for the status before this agent's first install.
fn adopted_endpoints(inner: &Inner) -> Vec<protocol::EndpointStatus> {
    use agent_common::endpoint_flags::{HAS_STAGED, HOST_ENDPOINT};
    let Some(dir) = inner.dp.pin_dir() else {
        return Vec::new();
    };
    let ifindexes: std::collections::BTreeSet<u32> = crate::dataplane::loader::pinned_links(dir)
        .into_iter()
        .map(|(ifindex, _, _)| ifindex)
        .collect();
    ifindexes
        .into_iter()
        .map(|ifindex| {
            let info = inner.dp.endpoint(ifindex);
            let flags = info.map_or(0, |i| i.flags);
            protocol::EndpointStatus {
                endpoint: "(adopted from an earlier agent)".into(),
                kind: if flags & HOST_ENDPOINT != 0 { "host" } else { "workload" }.into(),
                interface: if_name(ifindex).unwrap_or_else(|| format!("if{ifindex}")),
                id: info.map_or(0, |i| i.id),
                ifindex: Some(ifindex),
                attached: true,
                has_staged: flags & HAS_STAGED != 0,
                error: Some(
                    "policed by an earlier agent's pinned tables; this agent's are not installed yet"
                        .into(),
                ),
            }
        })
        .collect()
}

fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The report behind `agent status`.
/// `/readyz`: the datastore's first sync is complete and a compile of it is
/// installed in the kernel; otherwise what is missing.
fn readiness(shared: &Shared) -> Result<(), String> {
    let unlisted: Vec<String> = lock(&shared.kube)
        .as_ref()
        .map(KubeSnapshot::unsynced)
        .unwrap_or_default();
    if !unlisted.is_empty() {
        return Err(format!("not listed yet: {}", unlisted.join(", ")));
    }
    let inner = lock(&shared.inner);
    if !inner.installed_once {
        return Err(match &inner.last_error {
            Some(e) => format!("no policy tables installed yet: {e}"),
            None => "no policy tables installed yet".into(),
        });
    }
    Ok(())
}

pub(crate) fn status(shared: &Shared) -> Status {
    use protocol::*;
    let view = lock(&shared.view).clone();
    let (flows_tracked, flow_events) = {
        let f = lock(&shared.flows);
        (f.len(), f.events)
    };
    let mut datastore_problems = lock(&shared.kube)
        .as_ref()
        .map(KubeSnapshot::problems)
        .unwrap_or_default();
    let inner = lock(&shared.inner);
    datastore_problems.extend(inner.file_problems.iter().cloned());
    let mut endpoints: Vec<EndpointStatus> = inner
        .endpoints
        .iter()
        .map(|e| {
            let m = inner.good.model.endpoints.get(e.endpoint_index);
            let a = inner.attached.get(&e.interface);
            EndpointStatus {
                endpoint: m.map(|m| m.key()).unwrap_or_default(),
                kind: if e.host { "host" } else { "workload" }.into(),
                interface: e.interface.clone(),
                id: e.id,
                ifindex: a.map(|a| a.ifindex),
                attached: a.is_some(),
                has_staged: e.has_staged,
                error: inner.attach_errors.get(&e.interface).cloned(),
            }
        })
        .collect();
    endpoints.extend(inner.left_out.iter().map(|l| EndpointStatus {
        endpoint: l.endpoint.clone(),
        kind: if l.host { "host" } else { "workload" }.into(),
        interface: l.interface.clone(),
        id: 0,
        ifindex: None,
        attached: false,
        has_staged: false,
        error: Some(l.reason.clone()),
    }));
    // Until this agent installs its own tables, an earlier agent's pinned
    // tables and links police the interfaces: say so, and list them.
    let adopted_only = !inner.installed_once && inner.dp.adopted();
    if adopted_only {
        endpoints.extend(adopted_endpoints(&inner));
    }
    let last_error = inner.last_error.clone().map(|e| {
        if adopted_only {
            format!(
                "{e}; an earlier agent's pinned tables stay enforced on {} interfaces \
                 (listed; this agent's policy is not applied)",
                endpoints.len()
            )
        } else {
            e
        }
    });
    let counters = match inner.dp.counters() {
        Ok(c) => c.named().map(|(k, v)| (k.to_string(), v)).collect(),
        Err(_) => Default::default(),
    };
    let model = &inner.good.model;
    let staged = model
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .count();
    Status {
        datastore: inner.datastore.clone(),
        started: crate::flows::rfc3339(shared.started_ns),
        last_reload: crate::flows::rfc3339(inner.last_reload_ns),
        reloads: inner.reloads,
        last_error,
        generation: inner.generation,
        epoch: inner.epoch,
        endpoints,
        policies: PolicyCounts {
            enforced: model.policies.len() - staged,
            staged,
            tiers: model.tiers.len(),
        },
        tables: TableStatus {
            peer_prefixes: inner.peer_prefixes,
            peer_prefixes_max: limits::MAX_PEER_PREFIXES as usize,
            peer_classes: view.compiled.as_ref().map_or(0, |c| c.stats.classes),
            rule_entries: view.compiled.as_ref().map_or(0, |c| c.stats.rule_entries),
            rule_keys: inner.rule_keys,
            rule_keys_max: limits::MAX_RULE_ENTRIES as usize,
            endpoints_max: limits::MAX_ENDPOINTS as usize,
        },
        counters,
        conntrack: ConntrackStatus {
            entries: inner.conntrack_live,
            max: limits::MAX_CONNTRACK as usize,
            swept: inner.conntrack_swept,
        },
        flows: FlowStats {
            tracked: flows_tracked,
            events: flow_events,
            subscribers: shared.tx.receiver_count(),
        },
        kept_last_good: inner.kept.clone(),
        diagnostics: inner.diagnostics.iter().map(DiagnosticOut::from).collect(),
        pinning: inner.pinning.clone(),
        lockout_warnings: inner.lockout_warnings.clone(),
        datastore_problems,
        promotions: lock(&shared.confirmations).lines(),
        services: ServiceStatus {
            frontends: inner.services.nets.iter().map(|n| n.to_string()).collect(),
            post_nat: inner
                .post_nat
                .attached()
                .into_iter()
                .map(|(n, i)| format!("{n}={i}"))
                .collect(),
            errors: {
                let mut e: Vec<String> = inner
                    .post_nat
                    .errors
                    .iter()
                    .map(|(n, e)| format!("{n}: {e}"))
                    .collect();
                e.sort();
                e
            },
        },
    }
}

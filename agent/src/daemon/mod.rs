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
//! Not done yet: pinning maps and links under /sys/fs/bpf, so stopping or
//! restarting the agent detaches its programs (traffic is then unpoliced).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::limits;
use anyhow::Context;
use aya::programs::tc::SchedClassifierLinkId;
use tokio::sync::broadcast;

use crate::compile::{compile, CompiledEndpoint};
use crate::dataplane::{Dataplane, Hook};
use crate::datastore::kubernetes::{KubeDatastore, KubeOptions, KubeSnapshot};
use crate::datastore::{keep_last_good, Changes, FileDatastore};
use crate::flows::{unix_now_ns, Flow, FlowTable, View};
use crate::model::{Diagnostic, Loaded, Severity};

pub mod protocol;
mod server;

pub use protocol::{Request, Status};

pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
/// How often endpoint interfaces are re-resolved.
pub const INTERFACE_POLL: Duration = Duration::from_secs(1);
/// How often the flow-event ring buffer is drained.
pub const EVENT_POLL: Duration = Duration::from_millis(5);

/// Where the policies and endpoints come from.
#[derive(Clone, Debug)]
pub enum DatastoreSpec {
    /// A directory of YAML documents, watched.
    Dir(PathBuf),
    /// The Kubernetes API server (see [`crate::datastore::kubernetes`]).
    Kubernetes(KubeOptions),
}

impl std::fmt::Display for DatastoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(d) => write!(f, "{}", d.display()),
            Self::Kubernetes(k) => write!(f, "kubernetes (node {})", k.node),
        }
    }
}

/// A running datastore: where reloads come from and how a load is made.
enum Source {
    Files(FileDatastore, Changes),
    Kubernetes(KubeDatastore),
}

/// Makes a load (cheap to clone; runs in a blocking task).
#[derive(Clone)]
enum Loader {
    Files(PathBuf),
    Kubernetes(KubeSnapshot),
}

impl Loader {
    fn load(&self) -> Loaded {
        match self {
            Self::Files(dir) => FileDatastore::new(dir).load(),
            Self::Kubernetes(k) => k.load(),
        }
    }
}

impl Source {
    async fn start(spec: &DatastoreSpec) -> anyhow::Result<Source> {
        Ok(match spec {
            DatastoreSpec::Dir(dir) => {
                anyhow::ensure!(
                    dir.is_dir(),
                    "datastore {} is not a directory",
                    dir.display()
                );
                let ds = FileDatastore::new(dir);
                // Watch before the first load so no change between the two is missed.
                let changes = ds.watch().context("watching the datastore")?;
                Source::Files(ds, changes)
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
            Self::Files(ds, _) => Loader::Files(ds.dir.clone()),
            Self::Kubernetes(k) => Loader::Kubernetes(k.snapshot()),
        }
    }

    async fn next(&mut self) -> Option<()> {
        match self {
            Self::Files(_, c) => c.next().await,
            Self::Kubernetes(k) => k.next().await,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub datastore: DatastoreSpec,
    pub socket: PathBuf,
    pub metrics: Option<SocketAddr>,
}

/// An interface the programs are attached to.
struct Attachment {
    ifindex: u32,
    links: Vec<(Hook, SchedClassifierLinkId)>,
}

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
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    view: Mutex<Arc<View>>,
    flows: Mutex<FlowTable>,
    tx: broadcast::Sender<Arc<Flow>>,
    started_ns: u64,
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
    if let DatastoreSpec::Dir(dir) = &opts.datastore {
        anyhow::ensure!(
            dir.is_dir(),
            "datastore {} is not a directory",
            dir.display()
        );
    }
    let dp = Dataplane::load().context("loading the eBPF programs (needs root)")?;
    let (tx, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            dp,
            datastore: opts.datastore.to_string(),
            good: Loaded::default(),
            diagnostics: Vec::new(),
            kept: Vec::new(),
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
        }),
        view: Mutex::new(Arc::new(View::default())),
        flows: Mutex::new(FlowTable::default()),
        tx,
        started_ns: unix_now_ns(),
        kube: Mutex::new(None),
    });
    let mut source = Source::start(&opts.datastore).await?;
    let loader = source.loader();
    if let Loader::Kubernetes(k) = &loader {
        *lock(&shared.kube) = Some(k.clone());
    }
    {
        let shared = shared.clone();
        let loader = loader.clone();
        tokio::task::spawn_blocking(move || reload(&shared, loader.load())).await?;
    }

    let listener = server::bind(&opts.socket)?;
    tracing::info!(socket = %opts.socket.display(), "listening");
    tokio::spawn(server::serve(listener, shared.clone()));
    if let Some(addr) = opts.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics on {addr}"))?;
        tracing::info!(%addr, "metrics");
        tokio::spawn(server::serve_metrics(l, shared.clone()));
    }
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVENT_POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                drain(&shared);
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
                tokio::task::spawn_blocking(move || reload(&shared, loader.load())).await?;
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("terminated; stopping"); break; }
        }
    }
    let _ = std::fs::remove_file(&opts.socket);
    // Dropping the dataplane detaches the programs (no pinning yet).
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
fn reload(shared: &Shared, mut loaded: Loaded) {
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
    inner.reloads += 1;
    inner.last_reload_ns = unix_now_ns();
    inner.diagnostics = loaded.diagnostics.clone();
    let kept = keep_last_good(&mut loaded, &inner.good);
    for k in &kept {
        tracing::warn!(resource = %k, "keeping the last good version of a rejected resource");
    }
    let compiled = match compile(&loaded.model) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "compile failed; the previous tables stay enforced");
            inner.last_error = Some(format!("compile: {e}"));
            return;
        }
    };
    // Enrich events of the outgoing tables with the outgoing names.
    drop(inner);
    drain(shared);
    let mut inner = lock(&shared.inner);
    match inner.dp.install(&compiled.tables) {
        Ok(live) => {
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
    inner.endpoints = compiled.endpoints.clone();
    let view = Arc::new(View::new(loaded.model.clone(), compiled));
    inner.good = loaded;
    *lock(&shared.view) = view;
    reconcile_interfaces(&mut inner, true);
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
    for (hook, link) in a.links {
        if let Ok(p) = dp.program(hook) {
            // Fails harmlessly when the interface (and so the link) is gone.
            let _ = p.detach(link);
        }
    }
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
        ..
    } = inner;
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
        let mut links = Vec::new();
        let mut failed = None;
        for hook in Hook::ALL {
            let r = dp.program(hook).and_then(|p| {
                p.attach(idx, hook.attach_type()).map_err(|source| {
                    crate::dataplane::DataplaneError::Program {
                        name: hook.program_name(),
                        source,
                    }
                })
            });
            match r {
                Ok(link) => links.push((hook, link)),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        let a = Attachment {
            ifindex: idx,
            links,
        };
        match failed {
            Some(e) => {
                tracing::error!(interface = %name, error = %e, "attaching");
                attach_errors.insert(name.clone(), e);
                detach(dp, name, a);
            }
            None => {
                tracing::info!(interface = %name, ifindex = idx, endpoint_id = ep.id, "attached");
                attach_errors.remove(name);
                attached.insert(name.clone(), a);
            }
        }
    }
}

/// The report behind `agent status`.
pub(crate) fn status(shared: &Shared) -> Status {
    use protocol::*;
    let view = lock(&shared.view).clone();
    let (flows_tracked, flow_events) = {
        let f = lock(&shared.flows);
        (f.len(), f.events)
    };
    let datastore_problems = lock(&shared.kube)
        .as_ref()
        .map(KubeSnapshot::problems)
        .unwrap_or_default();
    let inner = lock(&shared.inner);
    let endpoints = inner
        .endpoints
        .iter()
        .map(|e| {
            let m = view.model.endpoints.get(e.endpoint_index);
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
        last_error: inner.last_error.clone(),
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
        flows: FlowStats {
            tracked: flows_tracked,
            events: flow_events,
            subscribers: shared.tx.receiver_count(),
        },
        kept_last_good: inner.kept.clone(),
        diagnostics: inner.diagnostics.iter().map(DiagnosticOut::from).collect(),
        datastore_problems,
    }
}

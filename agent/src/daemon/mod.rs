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
//!
//! Files: `state` (what the daemon keeps, by concern), `source` (the
//! datastore), `enforce` (reload: compile and install), `stable_ids`,
//! `interfaces` (attach and detach), `health` (status and readiness), `http`
//! (metrics and health endpoints), `server` (the socket), `services`,
//! `isolate`, `confirmations`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::broadcast;

use crate::dataplane::Dataplane;
use crate::flows::{unix_now_ns, FlowTable, View};
use crate::model::ir::{FailsafePort, Failsafes};

mod ahead;
mod confirmations;
mod console;
mod enforce;
mod freeze;
mod health;
mod http;
mod interfaces;
mod isolate;
pub mod protocol;
mod server;
pub mod services;
mod source;
mod stable_ids;
mod state;

use enforce::{drain, reload};
use health::status;
use source::{Loader, Source};
use state::{lock, Config, Enforcement, Health, Inner, Interfaces, Shared};

pub use console::ConsoleOptions;
pub use protocol::{Request, Status};
pub use source::DatastoreSpec;

pub const DEFAULT_SOCKET: &str = "/run/agent/agent.sock";
/// How often endpoint interfaces are re-resolved.
pub const INTERFACE_POLL: Duration = Duration::from_secs(1);
/// How often the flow-event ring buffer is drained.
pub const EVENT_POLL: Duration = Duration::from_millis(5);
/// How often idle conntrack entries are deleted (the shortest timeout is 10 s).
pub const CONNTRACK_SWEEP: Duration = Duration::from_secs(10);

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/agent";

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
    /// The web console (`--console`), off by default.
    pub console: Option<ConsoleOptions>,
    /// Flow records on disk (None: in memory only).
    pub flow_history: Option<crate::flows::history::HistoryOptions>,
    /// Record every new flow, not only denied flows and flows of endpoints
    /// with staged policy (`--flows all`).
    pub flows_all: bool,
    /// Push flow records to the cluster's relay (`--relay`).
    pub relay: Option<crate::relay::push::PushOptions>,
    /// With `--datastore kubernetes`: where the commit-confirmed promotion
    /// Leases are taken (`--lease-namespace`).
    pub lease_namespace: String,
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
    // Watching starts before the first load (no change between the two is
    // missed) and before the kernel is touched (a datastore that cannot
    // start refuses the start).
    let mut source = Source::start(&opts.datastore).await?;
    let loader = source.loader();
    // The first load reads, parses and compiles the datastore while the
    // kernel verifies the programs (the longest steps of a start;
    // docs/benchmarks.md, "Start to enforced"; see `ahead`). Nothing is
    // installed before both are done.
    let first_load = {
        let loader = loader.clone();
        let (bpffs, failsafes) = (opts.bpffs.clone(), opts.failsafes.clone());
        tokio::task::spawn_blocking(move || {
            let loading = Instant::now();
            let mut load = loader.load(&[]);
            let load_time = loading.elapsed();
            let ahead = ahead::compile_first_load(&mut load, &bpffs, &failsafes);
            (load, load_time, ahead)
        })
    };
    let loading = Instant::now();
    let bpffs = opts.bpffs.clone();
    let dp = tokio::task::spawn_blocking(move || Dataplane::load_pinned(&bpffs))
        .await?
        .context("loading the eBPF programs with pinned maps (needs root)")?;
    tracing::info!(
        ms = millis(loading.elapsed()),
        reused = dp.programs_reused(),
        "eBPF programs loaded (verified)"
    );
    let shared = Arc::new(new_shared(&opts, dp)?);
    if let Loader::Kubernetes(k) = &loader {
        *lock(&shared.kube) = Some(k.clone());
        lock(&shared.inner).health.datastore = k.describe();
    }
    let (load, load_time, ahead) = first_load.await?;
    if let Some(ahead) = ahead {
        tracing::info!(
            ms = millis(ahead.took),
            "first compile done while the programs were verified"
        );
        lock(&shared.inner).enforced.compiler = ahead.compiler;
    }
    {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || reload(&shared, load, load_time)).await?;
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
    if let Some(console) = &opts.console {
        console::start(console, shared.clone(), opts.datastore.clone()).await?;
    }
    spawn_event_drain(shared.clone());
    if let Some(relay) = &opts.relay {
        spawn_relay_push(shared.clone(), relay.clone());
    }
    spawn_interface_poll(shared.clone());
    spawn_conntrack_sweep(shared.clone(), &opts.bpffs)?;
    if let DatastoreSpec::Dir(dir, _) = &opts.datastore {
        confirmations::spawn(dir.clone(), shared.clone());
    }
    if let DatastoreSpec::Kubernetes(k) = &opts.datastore {
        confirmations::spawn_kube(k.clone(), opts.lease_namespace.clone(), shared.clone());
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
                reload_in_background(&shared, &loader).await?;
            }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); break; }
            _ = sigterm.recv() => { tracing::info!("terminated; stopping"); break; }
        }
    }
    if let DatastoreSpec::Kubernetes(k) = &opts.datastore {
        confirmations::withdraw_presence(k, &opts.lease_namespace).await;
    }
    stop(&shared, &opts);
    Ok(())
}

/// The daemon's state at start: `dp` loaded (with the Service programs
/// started), nothing installed yet.
fn new_shared(opts: &RunOptions, mut dp: Dataplane) -> anyhow::Result<Shared> {
    let mut interfaces = Interfaces::default();
    // After an upgrade that replaced the tables, `post_nat` waits for the first
    // install like the endpoint programs: swapped into its pinned link now, it
    // would judge deferred Service flows against empty tables (deny); the
    // earlier agent's keeps judging with the earlier tables until then.
    if !dp.replaced_tables() {
        services::start(&mut dp, &opts.services, &mut interfaces.post_nat)?;
    }
    if dp.adopted() {
        tracing::info!(bpffs = %opts.bpffs.display(), "found pinned state of an earlier agent; adopting it (it stays enforced meanwhile)");
    } else {
        tracing::info!(bpffs = %opts.bpffs.display(), "no pinned state; starting fresh");
    }
    let health = Health {
        datastore: opts.datastore.to_string(),
        pinning: protocol::PinStatus {
            bpffs: Some(opts.bpffs.display().to_string()),
            adopted: dp.adopted(),
            programs_reused: dp.programs_reused(),
            ..Default::default()
        },
        ..Health::default()
    };
    let management: Vec<FailsafePort> = opts
        .metrics
        .iter()
        .chain(opts.console.iter().map(|c| &c.addr))
        .map(|a| FailsafePort {
            protocol: crate::model::ir::Protocol::TCP,
            port: a.port(),
            net: None,
        })
        .collect();
    let config = Config {
        failsafes: opts.failsafes.clone(),
        management,
        services: opts.services.clone(),
    };
    dp.set_report_allowed(opts.flows_all)
        .context("setting the flow-reporting switch")?;
    let (tx, _) = broadcast::channel(4096);
    let (flows, history, promotions) = open_history(opts)?;
    Ok(Shared {
        inner: Mutex::new(Inner {
            dp,
            config,
            enforced: Enforcement::default(),
            interfaces,
            health,
        }),
        view: Mutex::new(Arc::new(View::default())),
        flows: Mutex::new(flows),
        history,
        flows_all: opts.flows_all,
        tx,
        started_ns: unix_now_ns(),
        heartbeat_ns: AtomicU64::new(unix_now_ns()),
        confirmations: Mutex::new(confirmations::Confirmations::with_events(promotions)),
        kube: Mutex::new(None),
    })
}

/// The flow table with the records kept on disk, the writer that keeps
/// adding to them (none without `--flow-history`), and the promotion events
/// kept there.
fn open_history(opts: &RunOptions) -> anyhow::Result<(FlowTable, Option<History>, Promotions)> {
    use crate::flows::history;
    let mut table = FlowTable::default();
    let Some(h) = &opts.flow_history else {
        return Ok((table, None, Default::default()));
    };
    let loaded = history::load_newest(&h.dir, crate::flows::HISTORY);
    tracing::info!(
        dir = %h.dir.display(),
        records = loaded.records.len(),
        promotions = loaded.promotions.len(),
        bytes = loaded.bytes,
        "flow history read back"
    );
    let last_ns = loaded.last_ns;
    table.restore(loaded.records);
    let writer = history::HistoryWriter::start(h, last_ns)
        .with_context(|| format!("flow history in {}", h.dir.display()))?;
    Ok((table, Some(writer), loaded.promotions))
}

type History = crate::flows::history::HistoryWriter;
type Promotions = std::collections::VecDeque<crate::flows::promotion::PromotionEvent>;

/// A fresh load and [`reload`] in a blocking task, awaited.
async fn reload_in_background(shared: &Arc<Shared>, loader: &Loader) -> anyhow::Result<()> {
    let shared = shared.clone();
    let loader = loader.clone();
    tokio::task::spawn_blocking(move || {
        let loading = Instant::now();
        let load = loader.load_for(&shared);
        reload(&shared, load, loading.elapsed())
    })
    .await?;
    Ok(())
}

/// A duration in milliseconds, for the logs' step timings.
pub(super) fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Drains flow events every [`EVENT_POLL`]; its ticks are the `/healthz` heartbeat.
fn spawn_event_drain(shared: Arc<Shared>) {
    spawn_every(EVENT_POLL, move || {
        drain(&shared);
        shared.heartbeat_ns.store(unix_now_ns(), Ordering::Relaxed);
    });
}

/// Pushes the flow records to the relay (see [`crate::relay::push`]); the
/// daemon works the same whether the relay answers or not.
fn spawn_relay_push(shared: Arc<Shared>, opts: crate::relay::push::PushOptions) {
    let feed = crate::relay::push::Feed {
        rx: shared.tx.subscribe(),
        history: Box::new({
            let shared = shared.clone();
            move || lock(&shared.flows).history()
        }),
        view: Box::new(move || lock(&shared.view).clone()),
    };
    tokio::spawn(async move {
        if let Err(e) = crate::relay::push::run(opts, feed).await {
            tracing::error!(error = %format!("{e:#}"), "relay pusher stopped");
        }
    });
}

/// Re-resolves endpoint interfaces every [`INTERFACE_POLL`].
fn spawn_interface_poll(shared: Arc<Shared>) {
    spawn_every(INTERFACE_POLL, move || {
        interfaces::reconcile_interfaces(&mut lock(&shared.inner), false);
    });
}

/// Runs `f` every `period` on the runtime (a late tick delays the next ones
/// instead of bunching them up).
fn spawn_every(period: Duration, mut f: impl FnMut() + Send + 'static) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            f();
        }
    });
}

/// Sweeps idle conntrack entries every [`CONNTRACK_SWEEP`], on a thread with
/// its own handle on the pinned map: a sweep of a full table takes a while and
/// must not hold up event draining or reloads.
fn spawn_conntrack_sweep(shared: Arc<Shared>, bpffs: &std::path::Path) -> anyhow::Result<()> {
    let conntrack = crate::dataplane::pinned_conntrack(bpffs)?;
    std::thread::spawn(move || loop {
        std::thread::sleep(CONNTRACK_SWEEP);
        let sweep = match crate::dataplane::sweep_conntrack(
            &conntrack,
            crate::dataplane::monotonic_coarse_ns(),
        ) {
            Ok(sweep) => sweep,
            Err(e) => {
                // Idle entries stay misses in the kernel; the LRU evicts them.
                tracing::warn!(error = %e, "conntrack sweep failed");
                continue;
            }
        };
        if sweep.removed > 0 {
            tracing::debug!(
                removed = sweep.removed,
                live = sweep.live,
                "conntrack sweep"
            );
        }
        let mut inner = lock(&shared.inner);
        inner.health.conntrack_live = sweep.live;
        inner.health.conntrack_swept += sweep.removed as u64;
    });
    Ok(())
}

/// A clean stop: the socket goes; the programs stay attached and enforcing
/// unless `--detach-on-exit`.
fn stop(shared: &Shared, opts: &RunOptions) {
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(h) = &shared.history {
        // Drain what is left in the ring buffer first, then write it all.
        drain(shared);
        h.close();
    }
    if opts.detach_on_exit {
        interfaces::detach_all(&mut lock(&shared.inner));
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
}

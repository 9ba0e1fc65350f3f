//! The daemon's state, grouped by concern: what is fixed at start
//! ([`Config`]), what is installed in the kernel ([`Enforcement`], changed only
//! by a reload), which interfaces the programs are attached to
//! ([`Interfaces`]), and what the status, metrics and health endpoints report
//! ([`Health`]).
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::{confirmations, freeze, isolate, protocol, services, stable_ids::StableIds};
use crate::compile::{Compiled, CompiledEndpoint, Compiler};
use crate::dataplane::{Dataplane, Links};
use crate::datastore::kubernetes::KubeSnapshot;
use crate::flows::{Flow, FlowTable, View};
use crate::model::ir::{FailsafePort, Failsafes};
use crate::model::{Diagnostic, Loaded};

/// An interface the programs are attached to.
pub(super) type Attachment = Links;

/// The dataplane and what the daemon knows about the live configuration.
pub(crate) struct Inner {
    pub(super) dp: Dataplane,
    pub(super) config: Config,
    pub(super) enforced: Enforcement,
    pub(super) interfaces: Interfaces,
    pub(super) health: Health,
}

/// Settings fixed at start.
pub(super) struct Config {
    pub(super) failsafes: Failsafes,
    /// Management ports of the agent itself, checked for lockout.
    pub(super) management: Vec<FailsafePort>,
    pub(super) services: services::ServiceConfig,
}

/// What is installed in the kernel: changed only by a successful reload.
#[derive(Default)]
pub(super) struct Enforcement {
    /// The last load whose compile was installed (its model is what is enforced,
    /// including documents carried over from earlier loads).
    pub(super) good: Loaded,
    pub(super) endpoints: Vec<CompiledEndpoint>,
    /// Endpoints left out of the installed compile (see [`isolate`]).
    pub(super) left_out: Vec<isolate::LeftOut>,
    /// The installed compile (frozen endpoints' tables are copied from it).
    pub(super) last: Option<Compiled>,
    /// Enforced endpoints kept on their last good tables (see [`freeze`]).
    pub(super) frozen: Vec<freeze::Frozen>,
    /// When the tables were last installed (unix ns).
    pub(super) installed_ns: u64,
    pub(super) peer_prefixes: usize,
    pub(super) rule_keys: usize,
    pub(super) generation: u32,
    pub(super) epoch: u32,
    /// Whether a tables install succeeded since start (pruning waits for it).
    pub(super) installed_once: bool,
    /// Endpoint ids that stay the same across compiles (and restarts).
    pub(super) ids: StableIds,
    /// The incremental compiler (each endpoint's entries of the last compile).
    pub(super) compiler: Compiler,
}

/// The interfaces the programs are attached to, and the post-NAT program's.
#[derive(Default)]
pub(super) struct Interfaces {
    pub(super) attached: HashMap<String, Attachment>,
    pub(super) errors: HashMap<String, String>,
    pub(super) post_nat: services::PostNat,
}

/// What `agent status`, `/metrics` and `/readyz` report beside the installed state.
#[derive(Default)]
pub(super) struct Health {
    pub(super) datastore: String,
    /// Diagnostics of the latest load (not necessarily installed).
    pub(super) diagnostics: Vec<Diagnostic>,
    /// Resources carried over from their last good state.
    pub(super) kept: Vec<String>,
    /// Problems of the files datastore (the directory is missing).
    pub(super) file_problems: Vec<String>,
    /// Why the latest load was not installed, if it was not.
    pub(super) last_error: Option<String>,
    pub(super) reloads: u64,
    pub(super) last_reload_ns: u64,
    pub(super) lockout_warnings: Vec<String>,
    /// Duration of the last successful compile and of its install (fill the
    /// inactive tables and flip), for metrics.
    pub(super) compile_seconds: f64,
    pub(super) swap_seconds: f64,
    pub(super) pinning: protocol::PinStatus,
    /// Conntrack entries left by the last sweep, and entries swept since start.
    pub(super) conntrack_live: usize,
    pub(super) conntrack_swept: u64,
}

/// What the daemon's tasks share.
pub(crate) struct Shared {
    pub(super) inner: Mutex<Inner>,
    pub(super) view: Mutex<Arc<View>>,
    pub(super) flows: Mutex<FlowTable>,
    /// The flow records on disk (`--flow-history`), and how `--flows` records.
    pub(super) history: Option<crate::flows::history::HistoryWriter>,
    pub(super) flows_all: bool,
    pub(super) tx: broadcast::Sender<Arc<Flow>>,
    pub(super) started_ns: u64,
    /// When the event loop last ticked (unix ns): `/healthz`.
    pub(super) heartbeat_ns: AtomicU64,
    /// Commit-confirmed promotions (file datastore).
    pub(super) confirmations: Mutex<confirmations::Confirmations>,
    /// The Kubernetes datastore's view (for its problems in the status).
    pub(super) kube: Mutex<Option<KubeSnapshot>>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

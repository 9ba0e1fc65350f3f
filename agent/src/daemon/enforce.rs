//! Enforcement: a fresh load is compiled and installed into the kernel, never
//! loosening on failure (the previous tables stay enforced).
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::freeze::{self, Frozen};
use super::interfaces::{if_index, prune, reconcile_interfaces};
use super::isolate::{self, LeftOut};
use super::source::Load;
use super::state::{lock, Enforcement, Inner, Shared};
use crate::compile::{Compiled, Limits};
use crate::datastore::keep_last_good;
use crate::flows::{unix_now_ns, View};
use crate::model::{Loaded, Severity};

/// Moves flow events from the ring buffer into the flow table and to subscribers.
pub(super) fn drain(shared: &Shared) {
    let records = lock(&shared.inner).dp.drain_events();
    if records.is_empty() {
        return;
    }
    let view = lock(&shared.view).clone();
    let mut flows = lock(&shared.flows);
    for r in &records {
        let flow = flows.add(r, &view);
        if let Some(h) = &shared.history {
            h.record(r.ifindex, &flow);
        }
        let _ = shared.tx.send(flow);
    }
}

/// Takes a fresh load of the datastore (which took `load_time`), compiles and
/// installs. Never loosens on failure.
pub(super) fn reload(shared: &Shared, load: Load, load_time: Duration) {
    let Load {
        mut loaded,
        kept,
        problems,
    } = load;
    log_load(&loaded, &problems);
    let mut inner = lock(&shared.inner);
    let kept = record_load(&mut inner, &mut loaded, problems, kept);
    let enforced = enforced_endpoints(&inner, &loaded);
    // Enforced endpoints that fail are frozen only when their installed tables
    // are at hand (not before this agent's first install).
    let freeze = inner.enforced.last.is_some();
    let Inner {
        dp, enforced: e, ..
    } = &mut *inner;
    let compiling = Instant::now();
    let ids = e.ids.for_compile(dp, &loaded.model);
    // Incremental: endpoints whose inputs did not change since the last
    // compile keep their entries (`compile::Compiler`).
    let compiler = RefCell::new(std::mem::take(&mut e.compiler));
    let compiled = isolate::compile_leaving_out(&mut loaded.model, &enforced, freeze, |m| {
        compiler.borrow_mut().compile(m, &Limits::default(), &ids)
    });
    inner.enforced.compiler = compiler.into_inner();
    let (mut compiled, mut left_out) = match compiled {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "compile failed; the previous tables stay enforced");
            inner.health.last_error = Some(format!("compile: {e}"));
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
    let frozen = freeze_failed(&inner.enforced, &mut loaded, &mut compiled, &mut left_out);
    check_lockout(&mut inner, &loaded);
    let times = StepTimes {
        load: load_time,
        compile: compiling.elapsed(),
    };
    // Enrich events of the outgoing tables with the outgoing names.
    drop(inner);
    drain(shared);
    let mut inner = lock(&shared.inner);
    if let Err(e) = install(&mut inner, &compiled) {
        tracing::error!(error = %e, "installing the tables failed; the previous tables stay enforced");
        inner.health.last_error = Some(format!("install: {e}"));
        return;
    }
    log_installed(&inner, &loaded, &compiled, &times);
    inner.health.last_error = None;
    inner.health.kept = kept;
    inner.enforced.frozen = frozen;
    let first = !inner.enforced.installed_once;
    let applying = Instant::now();
    apply(shared, &mut inner, loaded, compiled, left_out);
    if first {
        tracing::info!(
            ms = super::millis(applying.elapsed()),
            attached = inner.interfaces.attached.len(),
            "first tables enforced: endpoint interfaces attached"
        );
    }
}

/// Enforced endpoints `left_out` by the compile keep their installed tables:
/// copied into `compiled` (with their stable ids), their interfaces given back
/// in `loaded`'s model and taken off `left_out`. Returns them for the status,
/// keeping since when each has been frozen.
fn freeze_failed(
    enforced: &Enforcement,
    loaded: &mut Loaded,
    compiled: &mut Compiled,
    left_out: &mut Vec<LeftOut>,
) -> Vec<Frozen> {
    let Some(last) = &enforced.last else {
        return Vec::new();
    };
    let wanted: Vec<(String, String)> = left_out
        .iter()
        .filter(|l| l.enforced)
        .map(|l| (l.endpoint.clone(), l.interface.clone()))
        .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let kept = freeze::keep_frozen(compiled, last, &loaded.model, &wanted);
    let mut frozen = Vec::new();
    for l in left_out.iter().filter(|l| kept.contains(&l.endpoint)) {
        if let Some(m) = loaded
            .model
            .endpoints
            .iter_mut()
            .find(|m| m.key() == l.endpoint)
        {
            Arc::make_mut(m).interface = Some(l.interface.clone());
        }
        let before = enforced.frozen.iter().find(|f| f.endpoint == l.endpoint);
        tracing::warn!(endpoint = %l.endpoint, "keeping the last good tables of an enforced endpoint: {}", l.reason);
        frozen.push(Frozen {
            endpoint: l.endpoint.clone(),
            interface: l.interface.clone(),
            since_generation: before.map_or(enforced.generation, |f| f.since_generation),
            since_ns: before.map_or(enforced.installed_ns, |f| f.since_ns),
            error: l.reason.clone(),
        });
    }
    left_out.retain(|l| !kept.contains(&l.endpoint));
    frozen
}

/// Logs the datastore's problems and each rejected document or warning.
fn log_load(loaded: &Loaded, problems: &[String]) {
    for p in problems {
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
}

/// Notes the load in the health report and carries rejected resources over
/// from the installed state; returns every resource kept from its last good version.
fn record_load(
    inner: &mut Inner,
    loaded: &mut Loaded,
    problems: Vec<String>,
    mut kept: Vec<String>,
) -> Vec<String> {
    loaded.model.failsafes = inner.config.failsafes.clone();
    let health = &mut inner.health;
    health.reloads += 1;
    health.last_reload_ns = unix_now_ns();
    health.diagnostics = loaded.diagnostics.clone();
    health.file_problems = problems;
    for k in keep_last_good(loaded, &inner.enforced.good) {
        if !kept.contains(&k) {
            kept.push(k);
        }
    }
    for k in &kept {
        tracing::warn!(resource = %k, "keeping the last good version of a rejected resource");
    }
    kept
}

/// Endpoints this agent enforces now: a compile error about any other one
/// leaves that one out instead of holding up every change.
fn enforced_endpoints(inner: &Inner, loaded: &Loaded) -> HashSet<String> {
    let installed = &inner.enforced;
    let mut enforced: HashSet<String> = installed
        .endpoints
        .iter()
        .filter_map(|e| installed.good.model.endpoints.get(e.endpoint_index))
        .map(|m| m.key())
        .collect();
    if !installed.installed_once && inner.dp.adopted() {
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
    enforced
}

fn check_lockout(inner: &mut Inner, loaded: &Loaded) {
    let warnings: Vec<String> = crate::lockout::check(&loaded.model, &inner.config.management)
        .iter()
        .map(|w| w.to_string())
        .collect();
    for w in &warnings {
        tracing::warn!("lockout risk: {w}");
    }
    inner.health.lockout_warnings = warnings;
}

/// Installs `compiled`'s tables (or, adopting an earlier agent's state whose
/// live tables already are these, keeps them) and records the live generation.
fn install(inner: &mut Inner, compiled: &Compiled) -> Result<(), crate::dataplane::DataplaneError> {
    let adopting = !inner.enforced.installed_once && inner.dp.adopted();
    // Adopting an earlier agent's state: when its live tables already are ours
    // (and its endpoint entries agree), keep them: no flip, no epoch bump.
    let unchanged = adopting
        && inner
            .dp
            .live_tables_equal(&compiled.tables)
            .unwrap_or(false)
        && compiled.endpoints.iter().all(|e| {
            let idx = if_index(&e.interface);
            idx == 0 || inner.dp.endpoint(idx).is_none_or(|info| info == e.info())
        });
    let swap_started = std::time::Instant::now();
    let live = if unchanged {
        inner.dp.active()?
    } else {
        raise_source_port_flags(inner, compiled);
        inner.dp.install(&compiled.tables)?
    };
    inner.health.compile_seconds = compiled.stats.duration.as_secs_f64();
    inner.health.swap_seconds = swap_started.elapsed().as_secs_f64();
    if adopting {
        inner.health.pinning.start_flipped = Some(!unchanged);
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
    inner.enforced.generation = live.generation;
    inner.enforced.epoch = live.epoch;
    Ok(())
}

/// How long a reload's steps before the install took (wall time).
struct StepTimes {
    /// Reading and parsing the datastore.
    load: Duration,
    /// From the load to the tables (the compile and the checks around it).
    compile: Duration,
}

/// With the time of each step: the datastore load, the compile, the install.
fn log_installed(inner: &Inner, loaded: &Loaded, compiled: &Compiled, times: &StepTimes) {
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
        generation = inner.enforced.generation,
        load_ms = super::millis(times.load),
        compile_ms = super::millis(times.compile),
        install_ms = super::millis(Duration::from_secs_f64(inner.health.swap_seconds)),
        "tables installed"
    );
}

/// After a successful install: the installed state, the flows' view, endpoint
/// entries and attachments, and pruning of what is no longer an endpoint.
fn apply(
    shared: &Shared,
    inner: &mut Inner,
    loaded: Loaded,
    compiled: Compiled,
    left_out: Vec<LeftOut>,
) {
    let installed = &mut inner.enforced;
    installed.peer_prefixes = compiled.stats.peer_prefixes;
    installed.rule_keys = compiled.stats.rule_keys;
    installed.left_out = left_out;
    installed.endpoints = compiled.endpoints.clone();
    installed.ids.installed(&loaded.model, &compiled.endpoints);
    installed.installed_ns = unix_now_ns();
    installed.last = Some(compiled.clone());
    let view = Arc::new(View::new(&loaded.model, compiled));
    installed.good = loaded;
    *lock(&shared.view) = view;
    reconcile_interfaces(inner, true);
    inner.enforced.installed_once = true;
    prune(inner);
    // Every link now runs this agent's programs (an upgrade's earlier ones
    // needed their program array until here).
    inner.dp.release_replaced_tables();
}

/// Sets `SOURCE_PORTS` on attached endpoints whose new tables classify source
/// ports, before those tables go live (the entries are rewritten after the flip):
/// with the old tables the lookup misses and gives class 0, all they use, while
/// the new tables without the flag would judge every source port as class 0.
/// Flags no longer needed are lowered after the flip, just as safely.
fn raise_source_port_flags(inner: &mut Inner, compiled: &Compiled) {
    use agent_common::endpoint_flags::SOURCE_PORTS;
    for e in compiled.endpoints.iter().filter(|e| e.source_ports) {
        let Some(ifindex) = inner
            .interfaces
            .attached
            .get(&e.interface)
            .map(|a| a.ifindex)
        else {
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

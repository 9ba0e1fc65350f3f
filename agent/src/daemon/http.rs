//! The HTTP endpoint (`agent run --metrics ADDR`): `/metrics` (Prometheus
//! text), `/healthz` (liveness) and `/readyz` (readiness), as felix and
//! cilium-agent serve them; every other path is 404, so the port exposes
//! nothing else.
//!
//! - Live: the daemon's event loop ticked within [`STALL`] (a deadlocked or
//!   wedged agent is restarted by the kubelet; the programs keep enforcing
//!   meanwhile, pinned).
//! - Ready: the datastore completed its first sync (every watched kind listed,
//!   Kubernetes) and a compile of it is installed in the kernel. Not ready
//!   says which is missing.
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::health::{readiness, status};
use super::state::{lock, Shared};
use crate::flows::unix_now_ns;

/// How long the event loop may go without a tick before `/healthz` fails.
pub(super) const STALL: Duration = Duration::from_secs(30);

pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "the metrics and health endpoint stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || metrics_text(&shared))
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let age = Duration::from_nanos(
        unix_now_ns().saturating_sub(shared.heartbeat_ns.load(Ordering::Relaxed)),
    );
    if age > STALL {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop stalled: last tick {}s ago\n", age.as_secs()),
        );
    }
    (StatusCode::OK, "ok\n".into())
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    match tokio::task::spawn_blocking(move || readiness(&shared)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(why)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn metrics_text(shared: &Shared) -> String {
    let s = status(shared);
    let mut out = String::new();
    write_status_metrics(&mut out, &s);
    write_timings(&mut out, shared);
    write_flow_verdicts(&mut out, shared);
    out
}

/// Kernel counters, gauges and counters of the status report.
fn write_status_metrics(out: &mut String, s: &super::Status) {
    out.push_str("# HELP agent_dataplane_total Kernel counters summed over CPUs.\n# TYPE agent_dataplane_total counter\n");
    for (k, v) in &s.counters {
        let _ = writeln!(out, "agent_dataplane_total{{counter=\"{k}\"}} {v}");
    }
    let gauges = [
        ("agent_endpoints", s.endpoints.len() as u64),
        (
            "agent_endpoints_attached",
            s.endpoints.iter().filter(|e| e.attached).count() as u64,
        ),
        (
            "agent_endpoints_on_last_good_tables",
            s.endpoints.iter().filter(|e| e.last_good.is_some()).count() as u64,
        ),
        ("agent_policies_enforced", s.policies.enforced as u64),
        ("agent_policies_staged", s.policies.staged as u64),
        ("agent_peer_prefixes", s.tables.peer_prefixes as u64),
        ("agent_rule_keys", s.tables.rule_keys as u64),
        ("agent_flows_tracked", s.flows.tracked as u64),
        ("agent_conntrack_entries", s.conntrack.entries as u64),
        (
            "agent_datastore_errors",
            s.diagnostics
                .iter()
                .filter(|d| d.severity == "error")
                .count() as u64,
        ),
        (
            "agent_last_update_failed",
            u64::from(s.last_error.is_some()),
        ),
    ];
    for (k, v) in gauges {
        let _ = writeln!(out, "# TYPE {k} gauge\n{k} {v}");
    }
    let _ = writeln!(
        out,
        "# TYPE agent_flow_events_total counter\nagent_flow_events_total {}",
        s.flows.events
    );
    let _ = writeln!(
        out,
        "# TYPE agent_reloads_total counter\nagent_reloads_total {}",
        s.reloads
    );
    let _ = writeln!(
        out,
        "# HELP agent_conntrack_swept_total Idle conntrack entries deleted.\n# TYPE agent_conntrack_swept_total counter\nagent_conntrack_swept_total {}",
        s.conntrack.swept
    );
}

/// How long the last installed compile and its install took.
fn write_timings(out: &mut String, shared: &Shared) {
    let inner = lock(&shared.inner);
    let _ = writeln!(
        out,
        "# HELP agent_compile_seconds Duration of the last compile that was installed.\n# TYPE agent_compile_seconds gauge\nagent_compile_seconds {}",
        inner.health.compile_seconds
    );
    let _ = writeln!(
        out,
        "# HELP agent_swap_seconds Duration of the last table install (fill inactive copy, flip).\n# TYPE agent_swap_seconds gauge\nagent_swap_seconds {}",
        inner.health.swap_seconds
    );
}

/// New flows by policy set, action and deciding rule, and the pending denies among them.
fn write_flow_verdicts(out: &mut String, shared: &Shared) {
    out.push_str("# HELP agent_flows_total New flows the kernel reported, by policy set (enforced or pending), action and deciding rule.\n# TYPE agent_flows_total counter\n");
    let flows = lock(&shared.flows);
    let mut pending_denies = 0;
    for ((set, action, rule), n) in &flows.verdicts {
        let rule = rule.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "agent_flows_total{{set=\"{set}\",action=\"{action}\",rule=\"{rule}\"}} {n}"
        );
        if *set == "pending" && action == "deny" {
            pending_denies += n;
        }
    }
    let _ = writeln!(
        out,
        "# HELP agent_pending_denies_total New flows a staged (pending) policy set would deny.\n# TYPE agent_pending_denies_total counter\nagent_pending_denies_total {pending_denies}"
    );
}

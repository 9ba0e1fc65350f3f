//! The web console: live flows with enforced and pending verdicts, the staged
//! report per staged policy with the command that promotes it, and the
//! connectivity matrix, enforced and pending side by side.
//!
//! One page (HTML, JS, CSS in [`assets`], shipped inside the binary; plain JS,
//! no build step) over a small JSON API ([`api`]):
//! - `GET /api/nodes` -> `{"nodes": [NAME...]}`
//! - `GET /api/flows?verdict=&pending_diff=&staged=&policy=&from=&to=&port=&protocol=&last=&since_ms=`
//!   -> `{"flows": [Flow...]}` (the filters of `agent flows`; `staged` comma separated)
//! - `GET /api/report?staged=&since_ms=` -> the [`StagedReport`] with each
//!   policy's `promote` command
//! - `GET /api/matrix` -> [`Matrix`]
//!
//! Bad queries answer 400 with `{"error": "..."}`.
//!
//! Where the data comes from is a [`ConsoleData`]: the local daemon
//! (`agent run --console ADDR`, `crate::daemon`) or anything else holding
//! flow records and a model. Who may look is [`Auth`]: loopback only, or a
//! bearer token (see [`auth`]).
use std::future::Future;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::eval::matrix::Matrix;
use crate::flows::report::{ReportQuery, StagedReport};
use crate::flows::{Flow, FlowQuery};

pub mod api;
pub mod assets;
pub mod auth;

pub use auth::Auth;

/// What the console shows, wherever it comes from.
///
/// To serve the console from another process, implement these five methods
/// and pass the value to [`router`]: the daemon's (`crate::daemon`, its
/// `console.rs`) and the relay's ([`crate::relay::console::RelayConsole`],
/// every node's records) are the two implementations.
///
/// The futures are `Send` (the server runs them on a multi-threaded
/// runtime); do blocking or CPU-heavy work (evaluating a model) in
/// `tokio::task::spawn_blocking`. Return a [`BadQuery`] error for a query the
/// user got wrong (answered 400 with its message); any other error is 500.
pub trait ConsoleData: Send + Sync + 'static {
    /// The flow records matching `query`'s filter, oldest first: the last
    /// `query.last` of them, or those seen in the last `query.since_ms` ms
    /// (the console always sets one). `query.follow` is never set (the
    /// console polls). Fill in `changed_by` where pending differs, if you can.
    fn flows(&self, query: FlowQuery) -> impl Future<Output = anyhow::Result<Vec<Flow>>> + Send;

    /// Per staged policy, the recorded connections its promotion alone would
    /// newly deny or allow (`agent staged report`).
    fn staged_report(
        &self,
        query: ReportQuery,
    ) -> impl Future<Output = anyhow::Result<StagedReport>> + Send;

    /// The connectivity matrix of the workloads, enforced and pending (every
    /// staged policy promoted), on the ports the policies mention
    /// ([`crate::eval::matrix::of_model`]).
    fn matrix(&self) -> impl Future<Output = anyhow::Result<Matrix>> + Send;

    /// The nodes whose records are shown (one for `agent run`).
    fn nodes(&self) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send;

    /// The `--datastore` argument of `agent promote` for these policies: the
    /// directory the daemon watches, or `kubernetes`.
    fn promote_datastore(&self) -> String;
}

/// A query the user got wrong (a filter that does not parse, an unknown
/// staged policy): answered 400 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadQuery(pub String);

/// The console's routes over `data`, behind `auth`.
pub fn router<D: ConsoleData>(data: Arc<D>, auth: Auth) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/console.js", get(assets::script))
        .route("/console.css", get(assets::style))
        .route("/api/nodes", get(api::nodes::<D>))
        .route("/api/flows", get(api::flows::<D>))
        .route("/api/report", get(api::report::<D>))
        .route("/api/matrix", get(api::matrix::<D>))
        .with_state(data)
        .layer(axum::middleware::from_fn_with_state(auth, auth::check))
}

/// Runs `f` on a blocking thread: a [`ConsoleData`] evaluating a model or
/// filtering many records must not hold up the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await?
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    if let Err(e) = axum::serve(listener, router).await {
        tracing::error!(error = %e, "the web console stopped");
    }
}

//! The web console of `agent run --console ADDR` ([`crate::console`]) over
//! this daemon's state: its flow records, its staged report and the matrix of
//! the model it enforces, answered as the Unix socket answers them.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use super::server::{matching_history, staged_report, Selection};
use super::state::{lock, Shared};
use super::DatastoreSpec;
use crate::console::{self, blocking, Auth, BadQuery, ConsoleData};
use crate::eval::matrix::Matrix;
use crate::flows::blame::Blame;
use crate::flows::report::{ReportQuery, StagedReport};
use crate::flows::{Flow, FlowQuery};

/// `--console ADDR` and who may use it.
#[derive(Clone, Debug)]
pub struct ConsoleOptions {
    pub addr: SocketAddr,
    pub auth: Auth,
}

/// The console's view of this daemon.
pub(super) struct DaemonData {
    shared: Arc<Shared>,
    datastore: DatastoreSpec,
}

impl ConsoleData for DaemonData {
    fn flows(&self, q: FlowQuery) -> impl Future<Output = anyhow::Result<Vec<Flow>>> + Send {
        let shared = self.shared.clone();
        // Blame evaluates every record: on a blocking thread.
        blocking(move || {
            let view = lock(&shared.view).clone();
            let mut selection = Selection::new(&q.filter, &shared, &view).map_err(BadQuery)?;
            // The console names the staged policies behind every record whose
            // pending verdict differs (`changed_by`), not only when asked.
            if selection.blame.is_none() {
                let model = lock(&shared.inner).enforced.good.model.clone();
                selection.blame = Some(Blame::new(&model, &[]).map_err(BadQuery)?);
            }
            let judge = selection.blame.as_ref().map(Blame::judge);
            let records = matching_history(&q, &selection, judge.as_ref(), &shared, &view);
            Ok(records.iter().map(|f| Flow::clone(f)).collect())
        })
    }

    fn staged_report(
        &self,
        q: ReportQuery,
    ) -> impl Future<Output = anyhow::Result<StagedReport>> + Send {
        let shared = self.shared.clone();
        async move { Ok(staged_report(q, &shared).await.map_err(BadQuery)?) }
    }

    fn matrix(&self) -> impl Future<Output = anyhow::Result<Matrix>> + Send {
        let shared = self.shared.clone();
        blocking(move || {
            let model = lock(&shared.inner).enforced.good.model.clone();
            Ok(crate::eval::matrix::of_model(&model))
        })
    }

    fn nodes(&self) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send {
        let node = match &self.datastore {
            DatastoreSpec::Dir(_, node) => node.clone(),
            DatastoreSpec::Kubernetes(k) => k.node.clone(),
        };
        async move { Ok(vec![node]) }
    }

    fn promote_datastore(&self) -> String {
        match &self.datastore {
            DatastoreSpec::Dir(dir, _) => dir.display().to_string(),
            DatastoreSpec::Kubernetes(_) => "kubernetes".into(),
        }
    }
}

/// Binds `opts.addr` and serves the console there in the background.
pub(super) async fn start(
    opts: &ConsoleOptions,
    shared: Arc<Shared>,
    datastore: DatastoreSpec,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("--console {}", opts.addr))?;
    let data = Arc::new(DaemonData { shared, datastore });
    tracing::info!(
        addr = %opts.addr,
        token = opts.auth.has_token(),
        "web console"
    );
    tokio::spawn(console::serve(
        listener,
        console::router(data, opts.auth.clone()),
    ));
    Ok(())
}

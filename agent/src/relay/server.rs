//! The relay's gRPC services ([`super::proto`]): agents push into the
//! [`RelayStore`], clients query the [`RelayView`]; mTLS required.
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::convert::{from_flows_request, from_record, to_record, to_report};
use super::proto::flow_ingest_server::{FlowIngest, FlowIngestServer};
use super::proto::flow_query_service_server::{FlowQueryService, FlowQueryServiceServer};
use super::proto::{
    FlowRecord, FlowsRequest, PushReply, PushRequest, ReportRequest, StagedReportReply,
};
use super::{RelayStore, RelayView};
use crate::flows::report::ReportQuery;

/// Agents' pushes into the store.
pub struct Ingest {
    store: Arc<RelayStore>,
}

#[tonic::async_trait]
impl FlowIngest for Ingest {
    async fn push(&self, req: Request<PushRequest>) -> Result<Response<PushReply>, Status> {
        let r = req.into_inner();
        if r.node.is_empty() || r.boot_id.is_empty() {
            return Err(Status::invalid_argument(
                "a push needs node and boot_id (agent run --node)",
            ));
        }
        let records = r
            .records
            .into_iter()
            .map(|s| {
                let record = s.record.ok_or("a sequenced record without its record")?;
                Ok((s.seq, from_record(record)?))
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| Status::invalid_argument(format!("node {}: {e}", r.node)))?;
        let last_seq = self.store.push(&r.node, &r.boot_id, r.after_seq, records);
        Ok(Response::new(PushReply { last_seq }))
    }
}

/// Clients' queries over the merged records.
pub struct Query {
    view: RelayView,
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<FlowRecord, Status>> + Send>>;

/// Labels are not re-sent to clients (records name their workloads).
fn wire(f: &crate::flows::Flow) -> FlowRecord {
    to_record(f, f.node.as_deref().unwrap_or(""), &|_| Default::default())
}

#[tonic::async_trait]
impl FlowQueryService for Query {
    type FlowsStream = FlowStream;

    async fn flows(&self, req: Request<FlowsRequest>) -> Result<Response<FlowStream>, Status> {
        let (q, node) = from_flows_request(req.into_inner()).map_err(Status::invalid_argument)?;
        let view = self.view.clone();
        // Subscribe before reading the history so nothing falls between the two.
        let mut rx = view.store.subscribe();
        let (plan, history) = {
            let q = q.clone();
            tokio::task::spawn_blocking(move || {
                let plan = view.plan(&q, node.as_deref())?;
                let history = view.history(&plan, &q);
                Ok::<_, String>((plan, history))
            })
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::invalid_argument)?
        };
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            for f in &history {
                if tx.send(Ok(wire(f))).await.is_err() {
                    return;
                }
            }
            if !q.follow {
                return;
            }
            let judge = plan.judge();
            loop {
                let f = tokio::select! {
                    msg = rx.recv() => match msg {
                        Ok(f) => f,
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(missed = n, "a flows client is too slow; records skipped");
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = tx.closed() => return,
                };
                if let Some(f) = plan.pick(judge.as_ref(), &f) {
                    if tx.send(Ok(wire(&f))).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn staged_report(
        &self,
        req: Request<ReportRequest>,
    ) -> Result<Response<StagedReportReply>, Status> {
        let r = req.into_inner();
        let node = (!r.node.is_empty()).then_some(r.node);
        let q = ReportQuery {
            staged: r.staged,
            since_ms: r.since_ms,
        };
        let view = self.view.clone();
        let report = tokio::task::spawn_blocking(move || view.staged_report(&q, node.as_deref()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(to_report(&report)))
    }
}

/// Serves both services on `listen` with mTLS from `tls_dir` until `stop`.
pub async fn serve(
    listen: SocketAddr,
    tls_dir: &Path,
    view: RelayView,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = super::tls::server(tls_dir)?;
    let store = view.store.clone();
    tracing::info!(%listen, tls = %tls_dir.display(), "relay listening (mTLS)");
    tonic::transport::Server::builder()
        .tls_config(tls)
        .context("the relay's TLS settings")?
        .add_service(FlowIngestServer::new(Ingest { store }))
        .add_service(FlowQueryServiceServer::new(Query { view }))
        .serve_with_shutdown(listen, stop)
        .await
        .with_context(|| format!("serving the relay on {listen}"))
}

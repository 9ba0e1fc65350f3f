//! The relay's query client: what `agent flows --relay` and `agent staged
//! report --relay` call.
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;

use super::convert::{from_record, from_report, to_flows_request};
use super::proto::flow_query_service_client::FlowQueryServiceClient;
use super::proto::ReportRequest;
use crate::flows::report::{ReportQuery, StagedReport};
use crate::flows::{Flow, FlowQuery};

fn status_error(addr: &str, s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("relay {addr}: {}", s.message())
}

async fn connect(
    addr: &str,
    tls_dir: &Path,
) -> anyhow::Result<FlowQueryServiceClient<tonic::transport::Channel>> {
    let channel = super::tls::channel(addr, tls_dir)?;
    Ok(FlowQueryServiceClient::new(channel))
}

/// Streams the records of `q` (of `node`, or all) to `each` until the relay
/// ends the stream or `each` returns false.
pub async fn flows(
    addr: &str,
    tls_dir: &Path,
    q: &FlowQuery,
    node: Option<&str>,
    mut each: impl FnMut(Flow) -> bool,
) -> anyhow::Result<()> {
    let mut client = connect(addr, tls_dir).await?;
    let mut stream = client
        .flows(to_flows_request(q, node.unwrap_or("")))
        .await
        .map_err(|s| status_error(addr, s))?
        .into_inner();
    while let Some(record) = stream.next().await {
        let record = record.map_err(|s| status_error(addr, s))?;
        let flow = from_record(record)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("a record from the relay {addr}"))?;
        if !each(flow) {
            break;
        }
    }
    Ok(())
}

/// The cluster-wide staged report.
pub async fn staged_report(
    addr: &str,
    tls_dir: &Path,
    q: &ReportQuery,
    node: Option<&str>,
) -> anyhow::Result<StagedReport> {
    let mut client = connect(addr, tls_dir).await?;
    let reply = client
        .staged_report(ReportRequest {
            staged: q.staged.clone(),
            since_ms: q.since_ms,
            node: node.unwrap_or("").to_string(),
        })
        .await
        .map_err(|s| status_error(addr, s))?;
    Ok(from_report(reply.into_inner()))
}

/// A runtime for a one-shot CLI call.
pub fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

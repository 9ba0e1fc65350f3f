//! The web console ([`crate::console`]) served by the relay (`agent relay
//! --console ADDR`): every node's flow records, the cluster-wide staged report
//! and the matrix of the datastore's model, from the same [`RelayView`] the
//! gRPC query service answers from.
use std::future::Future;

use crate::console::{blocking, BadQuery, ConsoleData};
use crate::eval::matrix::Matrix;
use crate::flows::report::{ReportQuery, StagedReport};
use crate::flows::{Flow, FlowQuery};

use super::RelayView;

/// The console's view of the relay.
pub struct RelayConsole {
    pub view: RelayView,
    /// `agent promote --datastore` for the promote commands shown: the
    /// relay's `--datastore` (`kubernetes` or the directory).
    pub datastore: String,
}

impl ConsoleData for RelayConsole {
    fn flows(&self, q: FlowQuery) -> impl Future<Output = anyhow::Result<Vec<Flow>>> + Send {
        let view = self.view.clone();
        blocking(move || Ok(view.flows(&q, None).map_err(BadQuery)?))
    }

    fn staged_report(
        &self,
        q: ReportQuery,
    ) -> impl Future<Output = anyhow::Result<StagedReport>> + Send {
        let view = self.view.clone();
        blocking(move || Ok(view.staged_report(&q, None).map_err(BadQuery)?))
    }

    fn matrix(&self) -> impl Future<Output = anyhow::Result<Matrix>> + Send {
        let view = self.view.clone();
        blocking(move || {
            let model = view.source.model().ok_or_else(|| {
                BadQuery("the matrix needs the policies: start the relay with --datastore".into())
            })?;
            Ok(crate::eval::matrix::of_model(&model))
        })
    }

    fn nodes(&self) -> impl Future<Output = anyhow::Result<Vec<String>>> + Send {
        let nodes = self
            .view
            .store
            .nodes()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        async move { Ok(nodes) }
    }

    fn promote_datastore(&self) -> String {
        self.datastore.clone()
    }
}

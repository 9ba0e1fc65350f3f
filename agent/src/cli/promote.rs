//! `agent promote --datastore DIR KIND/NAME [-n NAMESPACE]`.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::model::promote;

/// Promotes a staged policy in the YAML files under `datastore` (in place), or in
/// the cluster when `datastore` is `kubernetes`.
pub fn run(
    datastore: &str,
    kubeconfig: Option<&Path>,
    calico_api: crate::datastore::kubernetes::CalicoApi,
    target: &str,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = target
        .split_once('/')
        .context("expected KIND/NAME, e.g. StagedGlobalNetworkPolicy/lockdown")?;
    let kind = promote::staged_kind(kind)?;
    if datastore == "kubernetes" {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let report = rt.block_on(async {
            let client = crate::datastore::kubernetes::client(kubeconfig).await?;
            crate::datastore::kubernetes::promote(client, calico_api, kind, name, namespace).await
        })?;
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }
    let report = promote::promote(Path::new(datastore), kind, name, namespace)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

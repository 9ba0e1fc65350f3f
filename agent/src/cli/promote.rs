//! `agent promote --datastore DIR KIND/NAME [-n NAMESPACE]`.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use crate::model::promote;

/// Promotes a staged policy in the YAML files under `datastore`, in place.
pub fn run(datastore: &Path, target: &str, namespace: Option<&str>) -> anyhow::Result<ExitCode> {
    let (kind, name) = target
        .split_once('/')
        .context("expected KIND/NAME, e.g. StagedGlobalNetworkPolicy/lockdown")?;
    let kind = promote::staged_kind(kind)?;
    let report = promote::promote(datastore, kind, name, namespace)?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

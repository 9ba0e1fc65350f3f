//! `agent check PATH...`: validate policy files and directories.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::model::{self, Severity};

/// Prints one line per problem (`file:line: severity: resource field: message`);
/// exit status 1 if any is an error, else 0.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let loaded = model::load_paths(paths);
    let mut diagnostics = loaded.diagnostics.clone();
    diagnostics.extend(model::lint(&loaded));
    for d in &diagnostics {
        println!("{d}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    eprintln!(
        "{} policies, {} endpoints loaded; {errors} errors, {} warnings",
        loaded.model.policies.len(),
        loaded.model.endpoints.len(),
        diagnostics.len() - errors
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

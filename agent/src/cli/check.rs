//! `agent check PATH...`: validate policy files and directories.
use std::path::PathBuf;
use std::process::ExitCode;

use crate::model::{self, Severity};

/// Prints one line per problem (`file:line: severity: resource field: message`);
/// exit status 1 if any is an error (or, with `strict`, any warning), else 0.
///
/// Also warns (`lockout:` lines, not errors) when policy would deny traffic on a
/// failsafe port of a host endpoint if failsafes were off: the failsafe list
/// (`--config`, Calico's defaults otherwise) is then all that keeps it open.
pub fn run(
    paths: &[PathBuf],
    config: Option<&std::path::Path>,
    strict: bool,
) -> anyhow::Result<ExitCode> {
    let mut loaded = model::load_paths(paths);
    loaded.model.failsafes = super::load_failsafes(config)?;
    let mut diagnostics = loaded.diagnostics.clone();
    diagnostics.extend(model::lint(&loaded));
    diagnostics.extend(model::lint_matches(&loaded));
    for d in &diagnostics {
        println!("{d}");
    }
    let lockouts = crate::lockout::check(&loaded.model, &[]);
    for w in &lockouts {
        println!("lockout: warning: {w}");
    }
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let count =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    eprintln!(
        "{}, {} loaded; {}, {}, {}",
        count(loaded.model.policies.len(), "policy", "policies"),
        count(loaded.model.endpoints.len(), "endpoint", "endpoints"),
        count(errors, "error", "errors"),
        count(diagnostics.len() - errors, "warning", "warnings"),
        count(lockouts.len(), "lockout warning", "lockout warnings")
    );
    let warnings = diagnostics.len() - errors + lockouts.len();
    Ok(if errors > 0 || (strict && warnings > 0) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `agent promote --datastore DIR KIND/NAME [-n NAMESPACE]` (optionally
//! commit-confirmed: [`crate::rollout`]) and `agent confirm`.
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::model::ir::PolicyKind;
use crate::model::promote;
use crate::rollout::{self, Check};

/// Commit-confirmed promotion (file datastore).
#[derive(Debug, Default, clap::Args)]
pub struct ConfirmArgs {
    /// Undo the promotion unless it is confirmed within this time (e.g. 2m):
    /// the running agent restores the staged version.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub confirm_within: Option<Duration>,
    /// A check the agent runs after the promotion (repeatable): tcp:ADDR:PORT,
    /// dns:NAME or apiserver (the agent's API server answers; --datastore
    /// kubernetes only). Any failing reverts at once; all passing for --settle
    /// confirms. In the cluster every agent runs them from its own node.
    #[arg(long = "confirm-if", requires = "confirm_within")]
    pub confirm_if: Vec<Check>,
    /// How long every --confirm-if check must pass to confirm.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub settle: Duration,
    /// Confirm a pending promotion of this policy (as `agent confirm`).
    #[arg(long)]
    pub confirm: bool,
}

/// Look before promoting: `--dry-run`, `--require-clean`.
#[derive(Debug, Default, clap::Args)]
pub struct GateArgs {
    /// Print the change (the file diff) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse (exit 3) unless the running agent's records of this past period (e.g. 24h)
    /// show no connection the promotion would newly deny or allow (`agent staged report`).
    #[arg(long, value_name = "DURATION", value_parser = super::flows::parse_duration)]
    pub require_clean: Option<Duration>,
    /// The running agent's socket, for --require-clean.
    #[arg(long, default_value = crate::daemon::DEFAULT_SOCKET)]
    pub socket: std::path::PathBuf,
}

/// The journal key of a target: `KIND/[namespace/]name`, whichever way it was named.
fn target_key(kind: PolicyKind, name: &str, namespace: Option<&str>) -> String {
    match promote::is_namespaced(kind).then(|| namespace.unwrap_or("default")) {
        Some(ns) => format!("{}/{ns}/{name}", kind.as_str()),
        None => format!("{}/{name}", kind.as_str()),
    }
}

fn parse_target(target: &str) -> anyhow::Result<(PolicyKind, &str)> {
    let (kind, name) = target
        .split_once('/')
        .context("expected KIND/NAME, e.g. StagedGlobalNetworkPolicy/lockdown")?;
    Ok((promote::staged_kind(kind)?, name))
}

/// `agent confirm KIND/NAME`: the pending promotion stays. `--datastore
/// kubernetes` reads the kubeconfig from $KUBECONFIG (or in-cluster) and finds
/// Calico's group itself; `agent promote --confirm` also takes `--kubeconfig`.
pub fn confirm(
    datastore: &Path,
    target: &str,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    if datastore == Path::new("kubernetes") {
        let api = crate::datastore::kubernetes::CalicoApi::Auto;
        return confirm_in_cluster(None, api, target, namespace);
    }
    let (kind, name) = parse_target(target)?;
    let key = target_key(kind, name, namespace);
    if rollout::confirm(datastore, &key)? {
        println!("confirmed {key}: the promotion stays");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{key} has no promotion awaiting confirmation (already confirmed or reverted)");
        Ok(ExitCode::from(1))
    }
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// `agent confirm --datastore kubernetes`: removes the pending record from the
/// enforced object ([`crate::datastore::kubernetes::confirm`]).
fn confirm_in_cluster(
    kubeconfig: Option<&Path>,
    calico_api: crate::datastore::kubernetes::CalicoApi,
    target: &str,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_target(target)?;
    let confirmed = block_on(async {
        let client = crate::datastore::kubernetes::client(kubeconfig).await?;
        crate::datastore::kubernetes::confirm_promotion(client, calico_api, kind, name, namespace)
            .await
    })?;
    if confirmed {
        println!("confirmed {target}: the promotion stays");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{target} has no promotion awaiting confirmation in the cluster (already confirmed or reverted)");
        Ok(ExitCode::from(1))
    }
}

/// Promotes a staged policy in the YAML files under `datastore` (in place), or in
/// the cluster when `datastore` is `kubernetes`.
pub fn run(
    datastore: &str,
    kubeconfig: Option<&Path>,
    calico_api: crate::datastore::kubernetes::CalicoApi,
    target: &str,
    namespace: Option<&str>,
    confirm_args: &ConfirmArgs,
    gate: &GateArgs,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_target(target)?;
    if confirm_args.confirm && datastore == "kubernetes" {
        return confirm_in_cluster(kubeconfig, calico_api, target, namespace);
    }
    if confirm_args.confirm {
        return confirm(Path::new(datastore), target, namespace);
    }
    if let Some(within) = gate.require_clean {
        if let Some(refused) = require_clean(gate, kind, name, namespace, within)? {
            return Ok(refused);
        }
    }
    if gate.dry_run {
        return dry_run(datastore, kind, name, namespace);
    }
    if datastore == "kubernetes" {
        return promote_in_cluster(kubeconfig, calico_api, target, namespace, confirm_args);
    }
    let dir = Path::new(datastore);
    let promotion = || promote::promote(dir, kind, name, namespace);
    let Some(within) = confirm_args.confirm_within else {
        println!("{}", promotion()?);
        return Ok(ExitCode::SUCCESS);
    };
    let key = target_key(kind, name, namespace);
    let (report, pending) = rollout::begin(
        dir,
        &key,
        promotion,
        within,
        confirm_args.confirm_if.clone(),
        confirm_args.settle,
    )?;
    println!("{report}");
    println!(
        "awaiting confirmation: the running agent restores the staged version in {} unless \
         `agent confirm --datastore {datastore} {target}{}` runs first{}",
        humantime::format_duration(within),
        namespace.map(|n| format!(" -n {n}")).unwrap_or_default(),
        checks_note(&pending.checks, confirm_args.settle)
    );
    Ok(ExitCode::SUCCESS)
}

/// Promotes a staged policy in the cluster (`--datastore kubernetes`).
fn promote_in_cluster(
    kubeconfig: Option<&Path>,
    calico_api: crate::datastore::kubernetes::CalicoApi,
    target: &str,
    namespace: Option<&str>,
    confirm_args: &ConfirmArgs,
) -> anyhow::Result<ExitCode> {
    let (kind, name) = parse_target(target)?;
    let ask =
        confirm_args
            .confirm_within
            .map(|within| crate::datastore::kubernetes::confirm::Ask {
                within,
                checks: confirm_args.confirm_if.clone(),
                settle: confirm_args.settle,
            });
    let report = block_on(async {
        let client = crate::datastore::kubernetes::client(kubeconfig).await?;
        crate::datastore::kubernetes::promote(
            client,
            calico_api,
            kind,
            name,
            namespace,
            ask.clone(),
        )
        .await
    })?;
    println!("{report}");
    if let Some(ask) = ask {
        println!(
            "awaiting confirmation: an agent of the cluster undoes the promotion in {} \
             unless `agent confirm --datastore kubernetes {target}{}` runs first{}",
            humantime::format_duration(ask.within),
            namespace.map(|n| format!(" -n {n}")).unwrap_or_default(),
            checks_note(&ask.checks, ask.settle)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `; checks: ... (any failing reverts at once, ...)`, or nothing without checks.
fn checks_note(checks: &[Check], settle: Duration) -> String {
    if checks.is_empty() {
        return String::new();
    }
    let list: Vec<String> = checks.iter().map(ToString::to_string).collect();
    format!(
        "; checks: {} (any failing reverts at once, all passing for {} confirms)",
        list.join(", "),
        humantime::format_duration(settle)
    )
}

/// `--dry-run`: what the promotion would write, as a diff per file.
fn dry_run(
    datastore: &str,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        datastore != "kubernetes",
        "--dry-run works with a directory datastore only (not yet in the cluster)"
    );
    let (report, changes) = promote::plan(Path::new(datastore), kind, name, namespace)?;
    for c in &changes {
        print!(
            "{}",
            super::diff::unified(&c.file.display().to_string(), &c.before, &c.after)
        );
    }
    println!("dry run, nothing written; without --dry-run: {report}");
    Ok(ExitCode::SUCCESS)
}

/// `--require-clean`: the running agent's report for this policy over the
/// period; `Some(exit code)` when the promotion is refused.
fn require_clean(
    gate: &GateArgs,
    kind: PolicyKind,
    name: &str,
    namespace: Option<&str>,
    period: Duration,
) -> anyhow::Result<Option<ExitCode>> {
    let id = crate::model::ir::PolicyId {
        kind,
        namespace: promote::is_namespaced(kind).then(|| namespace.unwrap_or("default").into()),
        name: name.into(),
    };
    let policy = crate::flows::report::policy_name(&id);
    let query = crate::flows::report::ReportQuery {
        staged: vec![policy.clone()],
        since_ms: Some(period.as_millis() as u64),
    };
    let report = super::staged_report::fetch(&gate.socket, &query).with_context(|| {
        format!(
            "--require-clean needs the running agent's flow records (`agent run`) at {}; \
             without them nothing shows the promotion is safe (drop --require-clean to \
             promote anyway, or see `agent staged report --datastore DIR {policy}`)",
            gate.socket.display()
        )
    })?;
    let covered = Duration::from_millis(report.window.covered_ms.unwrap_or(0));
    if covered < Duration::from_millis(period.as_millis() as u64) {
        eprintln!(
            "refusing to promote {policy}: the agent's records cover only {} of the {} \
             --require-clean asks for ({})",
            humantime::format_duration(Duration::from_secs(covered.as_secs())),
            humantime::format_duration(period),
            report.window.notes.join("; ")
        );
        return Ok(Some(ExitCode::from(1)));
    }
    if !report.changes() {
        return Ok(None);
    }
    eprintln!(
        "refusing to promote {policy}: in the last {} it would have changed these connections:",
        humantime::format_duration(period)
    );
    eprint!("{}", super::staged_report::render(&report));
    Ok(Some(super::staged_report::exit_code(&report)))
}

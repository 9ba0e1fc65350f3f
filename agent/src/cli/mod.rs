//! The command line: `agent <command>`.
mod check;
mod diff;
pub mod flows;
mod promote;
pub mod relay;
mod run;
pub mod safe_mode;
pub(crate) mod staged;
mod staged_report;
mod suggest;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod eval;
pub mod matrix;
pub mod selector;
mod status;

#[derive(Debug, Parser)]
#[command(
    name = "agent",
    version,
    about = "Calico-style network policy in eBPF, with staged policies you can watch before they enforce"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the eBPF programs through the verifier and report (a health check).
    Probe,
    /// Validate policy YAML files and directories; one line per problem, exit 1 on errors.
    Check {
        /// Files and directories; `-` reads standard input.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The agent's config file (failsafe ports), as given to `agent run --config`;
        /// warns when policy would deny a failsafe port of a host endpoint.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Warnings fail too (exit 1), e.g. in CI before a policy is applied.
        #[arg(long)]
        strict: bool,
    },
    /// Promote a staged policy to its enforced kind, editing the YAML files in place
    /// (or, with `--datastore kubernetes`, applying the enforced object and deleting the staged one).
    Promote {
        /// Directory of YAML files holding the policies, or `kubernetes`.
        #[arg(long)]
        datastore: String,
        /// With `--datastore kubernetes`: the kubeconfig (default: in-cluster, else
        /// $KUBECONFIG or ~/.kube/config).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// With `--datastore kubernetes`: where Calico's resources are: `v3`
        /// (projectcalico.org/v3, Calico's API server), `crd` (crd.projectcalico.org/v1,
        /// the CRDs Calico stores them in) or `auto` (v3 if served, else crd).
        #[arg(long, value_enum, default_value_t = crate::datastore::kubernetes::CalicoApi::Auto)]
        calico_api: crate::datastore::kubernetes::CalicoApi,
        /// KIND/NAME, e.g. StagedGlobalNetworkPolicy/lockdown (or sgnp/lockdown).
        target: String,
        /// Namespace of a namespaced staged policy (default: `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        confirm: promote::ConfirmArgs,
        #[command(flatten)]
        gate: promote::GateArgs,
    },
    /// Confirm a promotion made with `--confirm-within`: it stays.
    Confirm {
        /// Directory of YAML files holding the policies, or `kubernetes` ($KUBECONFIG).
        #[arg(long)]
        datastore: PathBuf,
        /// KIND/NAME as given to `agent promote`.
        target: String,
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// The daemon: watch a datastore (a directory or Kubernetes), enforce it in eBPF, serve flows and status.
    Run(run::RunArgs),
    /// Detach the programs and remove everything pinned under the pin directory.
    Cleanup {
        #[arg(long, default_value = crate::daemon::DEFAULT_BPFFS)]
        bpffs: PathBuf,
    },
    /// Safe mode: write (`on`) or remove (`off`) the allow-everything policy;
    /// `off` refuses while policy would then deny failsafe or management traffic.
    SafeMode(safe_mode::SafeModeArgs),
    /// Flow records from the running daemon (like `hubble observe`).
    Flows(flows::FlowsArgs),
    /// The running daemon's endpoints, policies, tables, counters and rejected documents.
    Status(flows::StatusArgs),
    /// Evaluate a Calico selector against labels: prints `true` or `false`.
    Selector(selector::SelectorArgs),
    /// What one connection gets, enforced and pending (staged promoted), with traces.
    Eval(eval::EvalArgs),
    /// Connectivity matrix of all workload endpoints, enforced and pending side by side.
    Matrix(matrix::MatrixArgs),
    /// Staged policies: what promoting each would change (`agent staged report`).
    Staged {
        #[command(subcommand)]
        command: staged_report::StagedCommand,
    },
    /// The cluster's flow relay: agents push their records to it (`agent run --relay`);
    /// `agent flows --relay` and `agent staged report --relay` read every node's.
    Relay(relay::RelayArgs),
}

pub fn main(cli: Cli) -> ExitCode {
    // A command whose output is cut short (`agent status | head -1`) ends
    // quietly, as Unix tools do, instead of panicking in `println!` on EPIPE
    // (Rust ignores SIGPIPE by default). Not the daemon: it writes to clients'
    // sockets, and a client that goes away must not stop it.
    if !matches!(cli.command, Command::Run(_) | Command::Relay(_)) {
        restore_sigpipe();
    }
    init_logging();
    let result = match cli.command {
        Command::Probe => probe(),
        Command::Check {
            paths,
            config,
            strict,
        } => check::run(&paths, config.as_deref(), strict),
        Command::Promote {
            datastore,
            kubeconfig,
            calico_api,
            target,
            namespace,
            confirm,
            gate,
        } => promote::run(
            &datastore,
            kubeconfig.as_deref(),
            calico_api,
            &target,
            namespace.as_deref(),
            &confirm,
            &gate,
        ),
        Command::Confirm {
            datastore,
            target,
            namespace,
        } => promote::confirm(&datastore, &target, namespace.as_deref()),
        Command::Run(args) => run::run(args),
        Command::Cleanup { bpffs } => cleanup(&bpffs),
        Command::SafeMode(args) => safe_mode::run(&args),
        Command::Flows(args) => flows::run_flows(args),
        Command::Status(args) => flows::run_status(args),
        Command::Selector(args) => Ok(selector::run(args)),
        Command::Eval(args) => Ok(eval::run(args)),
        Command::Matrix(args) => Ok(matrix::run(args)),
        Command::Staged { command } => staged_report::run(command),
        Command::Relay(args) => relay::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; RUST_LOG filters, AGENT_LOG_FORMAT=json switches to JSON lines.
fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("AGENT_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Whether to colour what goes to `stream`: only on a terminal, and never with
/// NO_COLOR set (no-color.org), so that output sent to a file, a pipe or a log
/// collector stays plain text.
pub fn colour(stream: &impl std::io::IsTerminal) -> bool {
    stream.is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// SIGPIPE back to its default action (end the process quietly).
fn restore_sigpipe() {
    // SAFETY: called first thing, before any thread is started; sets a
    // signal's disposition only.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The failsafe ports of the agent's config file (Calico's defaults without one).
pub fn load_failsafes(
    config: Option<&std::path::Path>,
) -> anyhow::Result<crate::model::ir::Failsafes> {
    match config {
        None => Ok(Default::default()),
        Some(p) => crate::lockout::AgentConfig::load(p)?.failsafes(),
    }
}

fn cleanup(bpffs: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !bpffs.exists() {
        println!("nothing pinned at {}", bpffs.display());
        return Ok(ExitCode::SUCCESS);
    }
    let _lock = crate::dataplane::host::lock_pin_dir(bpffs)?;
    let done = crate::dataplane::loader::cleanup(bpffs)?;
    println!(
        "removed {} links (detached) and {} maps pinned at {}",
        done.links,
        done.maps,
        bpffs.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn probe() -> anyhow::Result<ExitCode> {
    crate::dataplane::Dataplane::load()?;
    println!("eBPF programs loaded and verified");
    Ok(ExitCode::SUCCESS)
}

//! `agent relay`: the cluster's flow relay (see [`crate::relay`]), `agent
//! relay certs` (its mTLS certificates), and the `--relay` options of `agent
//! flows` and `agent staged report`.
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Subcommand};

use super::flows::{FlowFormat, FlowsArgs};
use crate::datastore::kubernetes::{CalicoApi, KubeDatastore, KubeOptions};
use crate::flows::report::{ReportQuery, StagedReport};
use crate::flows::{FlowQuery, HISTORY};
use crate::relay::query::ModelSource;
use crate::relay::{client, RelayStore, RelayView};

/// Where the DaemonSet and the relay mount their certificates (deploy/).
pub const DEFAULT_TLS_DIR: &str = "/etc/agent/relay-tls";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RelayArgs {
    #[command(subcommand)]
    pub command: Option<RelayCommand>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum RelayCommand {
    /// Write a CA, the relay's server certificate and the agents' client certificate:
    /// OUT/relay/ and OUT/agent/, each with ca.crt, tls.crt, tls.key (one Secret each:
    /// `kubectl -n calico-system create secret generic agent-relay-server --from-file=OUT/relay`,
    /// `... agent-relay-client --from-file=OUT/agent`).
    Certs {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// More DNS names or IP addresses the relay is reached by (beside agent-relay,
        /// agent-relay.calico-system[.svc], localhost, 127.0.0.1). Repeatable.
        #[arg(long = "relay-dns", value_name = "NAME")]
        relay_dns: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for agents and clients (gRPC, mTLS).
    #[arg(long, default_value = "0.0.0.0:7443")]
    pub listen: SocketAddr,
    /// ca.crt, tls.crt, tls.key of the relay (`agent relay certs` writes OUT/relay).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TLS_DIR)]
    pub tls_dir: PathBuf,
    /// The policies the agents enforce, for `staged report` and label/name filters:
    /// `kubernetes`, or a directory of YAML documents. Without it flows are served
    /// as recorded and there is no staged report.
    #[arg(long)]
    pub datastore: Option<String>,
    /// With `--datastore kubernetes`: the kubeconfig (default: in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// With `--datastore kubernetes`: v3, crd or auto (as `agent run`).
    #[arg(long, value_enum, default_value_t = CalicoApi::Auto)]
    pub calico_api: CalicoApi,
    /// Records kept per node (the oldest go first).
    #[arg(long, default_value_t = HISTORY)]
    pub history: usize,
    /// Serve the web console over every node's records on this address, e.g.
    /// 127.0.0.1:9909 (reach it with `kubectl port-forward`). Off by default; an
    /// address other than loopback requires --console-token-file.
    #[arg(long, value_name = "ADDR")]
    pub console: Option<SocketAddr>,
    /// A file holding the console's token (see `agent run --console-token-file`).
    #[arg(long, value_name = "FILE", requires = "console")]
    pub console_token_file: Option<PathBuf>,
}

/// `--relay` for `agent flows` and `agent staged report`.
#[derive(Clone, Debug, Args)]
pub struct RelayClientArgs {
    /// Ask the relay (HOST:PORT) instead of this node's agent: every node's records.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: Option<String>,
    /// The client's certificates for the relay: ca.crt, tls.crt, tls.key
    /// (`agent relay certs` writes OUT/agent).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_TLS_DIR)]
    pub relay_tls_dir: PathBuf,
    /// With --relay: only the records of this node.
    #[arg(long, requires = "relay")]
    pub node: Option<String>,
}

pub fn run(args: RelayArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        Some(RelayCommand::Certs { out, relay_dns }) => {
            let w = crate::relay::certs::write(&out, &relay_dns)?;
            println!("relay (--tls-dir): {}", w.relay.display());
            println!(
                "agents and clients (--relay-tls-dir): {}",
                w.agent.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        None => serve(args.serve),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let source = match args.datastore.as_deref() {
            None => ModelSource::None,
            Some("kubernetes") => {
                let mut ds = KubeDatastore::start(&KubeOptions {
                    node: String::new(),
                    kubeconfig: args.kubeconfig.clone(),
                    calico_api: args.calico_api,
                })
                .await?;
                let snapshot = ds.snapshot();
                // The watches run as long as someone takes their changes.
                tokio::spawn(async move { while ds.next().await.is_some() {} });
                ModelSource::Kubernetes(snapshot)
            }
            Some(dir) => {
                anyhow::ensure!(
                    std::path::Path::new(dir).is_dir(),
                    "--datastore {dir}: not a directory (or `kubernetes`)"
                );
                ModelSource::Dir(dir.into())
            }
        };
        let view = RelayView::new(Arc::new(RelayStore::new(args.history)), source);
        if let Some(addr) = args.console {
            let datastore = args.datastore.clone().unwrap_or_default();
            start_console(addr, args.console_token_file.as_deref(), &view, datastore).await?;
        }
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping");
        };
        crate::relay::server::serve(args.listen, &args.tls_dir, view, stop).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `--console ADDR`: the web console over the relay's view, in the background.
async fn start_console(
    addr: SocketAddr,
    token_file: Option<&std::path::Path>,
    view: &RelayView,
    datastore: String,
) -> anyhow::Result<()> {
    let auth = crate::console::Auth::for_address(addr, token_file)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--console {addr}: {e}"))?;
    let data = Arc::new(crate::relay::console::RelayConsole {
        view: view.clone(),
        datastore,
    });
    tracing::info!(%addr, token = auth.has_token(), "web console");
    tokio::spawn(crate::console::serve(
        listener,
        crate::console::router(data, auth),
    ));
    Ok(())
}

/// `agent flows --relay`: the relay's records, printed as the node's are.
pub fn flows(args: &FlowsArgs, query: &FlowQuery) -> anyhow::Result<ExitCode> {
    let relay = &args.relay;
    let addr = relay.relay.as_deref().unwrap_or_default();
    let color = super::colour(&std::io::stdout());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.output == FlowFormat::Table {
        super::flows::table_header(&mut out, true)?;
    }
    client::block_on(client::flows(
        addr,
        &relay.relay_tls_dir,
        query,
        relay.node.as_deref(),
        |flow| {
            // Output closed (e.g. `| head`): stop quietly.
            let ok = super::flows::print_flow(&mut out, &flow, args.output, color).is_ok();
            if args.follow {
                let _ = out.flush();
            }
            ok
        },
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// `agent staged report --relay`: the cluster-wide report.
pub fn staged_report(relay: &RelayClientArgs, query: &ReportQuery) -> anyhow::Result<StagedReport> {
    let addr = relay.relay.as_deref().unwrap_or_default();
    client::block_on(client::staged_report(
        addr,
        &relay.relay_tls_dir,
        query,
        relay.node.as_deref(),
    ))
}

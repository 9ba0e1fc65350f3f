//! `agent run`: its options, turned into the daemon's.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::daemon::{DatastoreSpec, RunOptions};
use crate::datastore::kubernetes::{default_node_name, CalicoApi, KubeOptions};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// `kubernetes` (watch the API server), or a directory of YAML documents
    /// (policies, endpoints, ...), watched for changes.
    #[arg(long)]
    pub datastore: String,
    /// This node's name: pods scheduled here (`spec.nodeName`; in a directory, workload
    /// endpoints with this `spec.node` or none) are enforced, all others are peers only
    /// (default: $NODE_NAME, else the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node: Option<String>,
    /// With `--datastore kubernetes`: the kubeconfig (default: in-cluster, else
    /// $KUBECONFIG or ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// With `--datastore kubernetes`: where Calico's resources are: `v3`
    /// (projectcalico.org/v3, Calico's API server), `crd` (crd.projectcalico.org/v1,
    /// the CRDs Calico stores them in) or `auto` (v3 if served, else crd).
    #[arg(long, value_enum, default_value_t = CalicoApi::Auto)]
    pub calico_api: CalicoApi,
    /// Unix socket for `agent flows` / `agent status` (mode 0600).
    #[arg(long, default_value = crate::daemon::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 127.0.0.1:9908).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Pin directory on a bpffs for maps and links (bpffs is mounted at
    /// /sys/fs/bpf if needed). A new agent on the same directory adopts the
    /// pinned state without a gap in enforcement.
    #[arg(long, default_value = crate::daemon::DEFAULT_BPFFS)]
    pub bpffs: PathBuf,
    /// On a clean stop (SIGTERM, ctrl-c) detach the programs and remove the
    /// pinned state. By default they stay attached and enforcing.
    #[arg(long)]
    pub detach_on_exit: bool,
    /// The agent's own config (YAML): `failsafeInbound`, `failsafeOutbound`
    /// lists of `{protocol, port, net}`; Calico's defaults when unset.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Push flow records to the cluster's relay (HOST:PORT, `agent relay`); the agent
    /// keeps its own history and re-sends what the relay missed when it is back.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: Option<String>,
    /// The agent's certificates for the relay: ca.crt, tls.crt, tls.key.
    #[arg(long, value_name = "DIR", default_value = super::relay::DEFAULT_TLS_DIR)]
    pub relay_tls_dir: PathBuf,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let failsafes = super::load_failsafes(args.config.as_deref())?;
    let services = crate::daemon::services::ServiceConfig::load(args.config.as_deref())?;
    let node = args
        .node
        .filter(|n| !n.is_empty())
        .unwrap_or_else(default_node_name);
    let relay = args.relay.map(|addr| crate::relay::push::PushOptions {
        addr,
        tls_dir: args.relay_tls_dir,
        node: node.clone(),
    });
    let datastore = if args.datastore == "kubernetes" {
        DatastoreSpec::Kubernetes(KubeOptions {
            node,
            kubeconfig: args.kubeconfig,
            calico_api: args.calico_api,
        })
    } else {
        DatastoreSpec::Dir(args.datastore.into(), node)
    };
    crate::daemon::run(RunOptions {
        datastore,
        socket: args.socket,
        metrics: args.metrics,
        bpffs: args.bpffs,
        detach_on_exit: args.detach_on_exit,
        failsafes,
        services,
        relay,
    })?;
    Ok(ExitCode::SUCCESS)
}

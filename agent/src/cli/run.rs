//! `agent run`: its options, turned into the daemon's.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::console::Auth;
use crate::daemon::{ConsoleOptions, DatastoreSpec, RunOptions};
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
    /// With `--datastore kubernetes`: the namespace of the Leases agents take to
    /// revert or confirm a commit-confirmed promotion (default: $POD_NAMESPACE, as
    /// deploy/ sets it, else calico-system).
    #[arg(long, env = "POD_NAMESPACE", default_value = crate::datastore::kubernetes::confirm::LEASE_NAMESPACE)]
    pub lease_namespace: String,
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
    /// Serve the web console (live flows, staged report, connectivity matrix) on this
    /// address, e.g. 127.0.0.1:9909 (reach it with `kubectl port-forward`). Off by default;
    /// an address other than loopback requires --console-token-file.
    #[arg(long, value_name = "ADDR")]
    pub console: Option<std::net::SocketAddr>,
    /// A file holding the console's token (at least 16 printable characters): every
    /// request must send `Authorization: Bearer TOKEN` or log in once at /?token=TOKEN.
    #[arg(long, value_name = "FILE", requires = "console")]
    pub console_token_file: Option<PathBuf>,
    /// Keep the flow records in this directory, so they (and `agent staged report`'s window)
    /// survive restarts. Default: /var/lib/agent/flows (with another `--bpffs`:
    /// /var/lib/agent/flows-<its name>); `none`: in memory only.
    #[arg(long, value_name = "DIR")]
    pub flow_history: Option<PathBuf>,
    /// Bound of the flow history on disk, e.g. 512MiB, 2GiB, 100000000 (bytes). A record
    /// update is ~1 KB: the default holds ~1M, a day of ~12 new connections a second.
    #[arg(long, value_parser = parse_bytes, default_value = "1GiB")]
    pub flow_history_max_bytes: u64,
    /// Records older than this leave the flow history on disk (e.g. 48h, 7d).
    #[arg(long, value_parser = super::flows::parse_duration, default_value = "48h")]
    pub flow_history_max_age: std::time::Duration,
    /// Which new flows the kernel reports: `denied` (denied flows, and every flow of an
    /// endpoint with staged policy) or `all` (allowed ones too, rate-limited like denied
    /// ones: to see the traffic before writing policy).
    #[arg(long, value_enum, default_value_t = FlowsRecorded::Denied)]
    pub flows: FlowsRecorded,
    /// Push flow records to the cluster's relay (HOST:PORT, `agent relay`); the agent
    /// keeps its own history and re-sends what the relay missed when it is back.
    #[arg(long, value_name = "HOST:PORT")]
    pub relay: Option<String>,
    /// The agent's certificates for the relay: ca.crt, tls.crt, tls.key.
    #[arg(long, value_name = "DIR", default_value = super::relay::DEFAULT_TLS_DIR)]
    pub relay_tls_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FlowsRecorded {
    Denied,
    All,
}

/// `512MiB`, `2GiB`, `64KiB`, `1G` or a number of bytes.
fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?}: expected a size such as 512MiB or 1000000"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    match n.checked_mul(scale) {
        Some(0) => Err(format!(
            "{s:?}: the flow history needs room (more than 0 bytes)"
        )),
        Some(b) => Ok(b),
        None => Err(format!("{s:?}: too large")),
    }
}

/// Where the flow history goes: the flag, or a directory named after the pin
/// directory (two agents on one host with their own `--bpffs` do not share it).
fn flow_history(args: &RunArgs) -> Option<crate::flows::history::HistoryOptions> {
    let dir = match &args.flow_history {
        Some(d) if d.as_os_str() == "none" => return None,
        Some(d) => d.clone(),
        None if args.bpffs.as_os_str() == crate::daemon::DEFAULT_BPFFS => {
            PathBuf::from("/var/lib/agent/flows")
        }
        None => {
            let name = args.bpffs.file_name().unwrap_or_default().to_string_lossy();
            PathBuf::from(format!("/var/lib/agent/flows-{name}"))
        }
    };
    Some(crate::flows::history::HistoryOptions {
        dir,
        max_bytes: args.flow_history_max_bytes,
        max_age: args.flow_history_max_age,
    })
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // The first line of the log: startup step timings count from it.
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "agent run starting");
    limit_malloc_arenas();
    let console = match args.console {
        Some(addr) => Some(ConsoleOptions {
            addr,
            auth: Auth::for_address(addr, args.console_token_file.as_deref())?,
        }),
        None => None,
    };
    let failsafes = super::load_failsafes(args.config.as_deref())?;
    let flow_history = flow_history(&args);
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
        lease_namespace: args.lease_namespace,
        services,
        console,
        flow_history,
        flows_all: args.flows == FlowsRecorded::All,
        relay,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// At most two glibc malloc arenas for the long-running agent. glibc gives
/// threads arenas of their own (up to 8 per CPU) and keeps what is freed in
/// each: the compile's worker threads, the event drain and the flow history
/// writer then hold the high-water mark of every arena. Measured in
/// `soak_e2e` (75 s of policy churn, restarts and a denied flood): RSS peaked
/// at 272 MiB with the default arenas, 205 MiB with two and 138 MiB with one,
/// with no growth at the end in any case (fragmentation, not a leak); two
/// spare the compile's parallel workers one shared lock. `MALLOC_ARENA_MAX` in
/// the environment still wins (glibc reads it before `main`, and we do not
/// override a value the operator set).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before the
        // runtime and its threads start.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        for bad in ["", "0", "12XB", "MiB", "99999999999999GiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}

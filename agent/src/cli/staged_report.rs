//! `agent staged report [KIND/NAME ...] [--since DURATION] [-o json]`: per
//! staged policy, the connections its promotion alone would newly deny or
//! allow ([`crate::flows::report`]).
//!
//! Live (default): from the running daemon's flow records, over its socket.
//! Offline (`--datastore DIR`): every pair of workload endpoints of the
//! connectivity matrix, on the ports `agent matrix` uses; no traffic, so no
//! counts or times. Exit 0 when nothing would change, 3 when something
//! would, 2 on a usage error (unknown policy), 1 on other errors.
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::eval::{first_ip, load_datastore, OutputFormat, EXIT_USAGE};
use super::matrix::{default_ports, parse_port_spec, PortSpec};
use crate::daemon::protocol::Request;
use crate::daemon::DEFAULT_SOCKET;
use crate::eval::{Flow, Packet, EPHEMERAL_PORT};
use crate::flows::report::{self, Observed, ReportQuery, StagedReport, Window};
use crate::model::ir::{EndpointKind, Model};

/// Exit status when a staged policy would change a connection.
pub const EXIT_CHANGES: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum StagedCommand {
    /// Per staged policy: the connections it would newly deny and newly allow, the endpoints
    /// it selects; exit 0 when nothing would change, 3 when something would.
    Report(ReportArgs),
    /// A StagedNetworkPolicy per workload of a namespace allowing exactly the traffic
    /// observed into it (from the running agent's records or `agent flows -o json`), as YAML.
    Suggest(super::suggest::SuggestArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Staged policies, KIND/NAME or KIND/NAMESPACE/NAME (e.g. sgnp/default-deny,
    /// snp/shop/api-allow). Default: every staged policy.
    #[arg(value_name = "KIND/NAME")]
    pub staged: Vec<String>,
    /// Live: only connections seen in this past period (e.g. 30m, 24h). Default: every
    /// record the agent keeps.
    #[arg(long, value_parser = super::flows::parse_duration, conflicts_with = "datastore")]
    pub since: Option<Duration>,
    /// Offline: judge every pair of workload endpoints of this directory's connectivity
    /// matrix instead of the running agent's records.
    #[arg(long, value_name = "DIR", conflicts_with = "relay")]
    pub datastore: Option<PathBuf>,
    /// Offline: destination ports to judge, as `agent matrix --port` (default: the ports the
    /// policies mention).
    #[arg(long = "port", value_name = "PROTO/N", value_parser = parse_port_spec, requires = "datastore")]
    pub ports: Vec<PortSpec>,
    /// The running agent's socket (live).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: OutputFormat,
    #[command(flatten)]
    pub relay: super::relay::RelayClientArgs,
}

pub fn run(command: StagedCommand) -> anyhow::Result<ExitCode> {
    let args = match command {
        StagedCommand::Report(args) => args,
        StagedCommand::Suggest(args) => return super::suggest::run(args),
    };
    let report = match &args.datastore {
        Some(dir) => {
            let offline = load_datastore(dir)
                .map_err(|e| e.to_string())
                .and_then(|model| offline(&model, &args.staged, &args.ports));
            match offline {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(EXIT_USAGE));
                }
            }
        }
        None => {
            let query = ReportQuery {
                staged: args.staged.clone(),
                since_ms: args.since.map(|d| d.as_millis() as u64),
            };
            match &args.relay.relay {
                Some(_) => super::relay::staged_report(&args.relay, &query)?,
                None => fetch(&args.socket, &query)?,
            }
        }
    };
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print!("{}", render(&report)),
    }
    Ok(exit_code(&report))
}

pub fn exit_code(report: &StagedReport) -> ExitCode {
    if report.changes() {
        ExitCode::from(EXIT_CHANGES)
    } else {
        ExitCode::SUCCESS
    }
}

/// The report over every ordered pair of workload endpoints (first IPv4, else
/// first IPv6 address) on each port.
pub fn offline(
    model: &Model,
    staged: &[String],
    ports: &[PortSpec],
) -> Result<StagedReport, String> {
    let targets = super::staged::resolve(model, staged)?;
    let ports = if ports.is_empty() {
        default_ports(model)
    } else {
        ports.to_vec()
    };
    let addressed: Vec<IpAddr> = model
        .endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Workload)
        .filter_map(|e| first_ip(e, true).or_else(|| first_ip(e, false)))
        .collect();
    let mut observed = Vec::new();
    for port in &ports {
        let packet = Packet::with_ports(port.protocol, EPHEMERAL_PORT, port.port);
        for &src in &addressed {
            for &dst in addressed
                .iter()
                .filter(|&&d| d != src && d.is_ipv4() == src.is_ipv4())
            {
                observed.push(Observed {
                    flow: Flow { src, dst, packet },
                    seen: None,
                });
            }
        }
    }
    let ports_text: Vec<String> = ports.iter().map(ToString::to_string).collect();
    Ok(StagedReport {
        window: Window {
            source: "matrix".into(),
            notes: vec![format!(
                "every pair of {} workload endpoints on {}",
                addressed.len(),
                ports_text.join(", ")
            )],
            ..Window::default()
        },
        policies: report::per_policy(model, &targets, &observed, false),
    })
}

/// Asks the running agent for the live report.
pub fn fetch(socket: &Path, query: &ReportQuery) -> anyhow::Result<StagedReport> {
    let mut stream = super::flows::connect(socket)?;
    super::flows::send(&mut stream, &Request::StagedReport(query.clone()))?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    super::flows::check_error(&line)?;
    serde_json::from_str(&line).with_context(|| format!("unexpected report from the agent: {line}"))
}

/// The report for people.
pub fn render(r: &StagedReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let w = &r.window;
    let _ = match (&w.from, &w.to) {
        (Some(from), Some(to)) => writeln!(
            o,
            "window: {from} .. {to} ({} covered{})",
            human_ms(w.covered_ms.unwrap_or(0)),
            w.requested_ms
                .map(|ms| format!(" of {} asked", human_ms(ms)))
                .unwrap_or_default()
        ),
        _ => writeln!(o, "window: none (offline, from the connectivity matrix)"),
    };
    for n in &w.notes {
        let _ = writeln!(o, "  {n}");
    }
    if r.policies.is_empty() {
        let _ = writeln!(o, "no staged policy");
    }
    for p in &r.policies {
        let traffic = p
            .selected_with_traffic
            .map(|n| format!(", {n} with traffic"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "{}: selects {} endpoint{}{traffic}{}",
            p.policy,
            p.selects.len(),
            if p.selects.len() == 1 { "" } else { "s" },
            if p.is_clean() { "; no change" } else { "" }
        );
        for (what, list) in [
            ("newly denied", &p.newly_denied),
            ("newly allowed", &p.newly_allowed),
        ] {
            if !list.is_empty() {
                let _ = writeln!(o, "  {what} ({}):", list.len());
            }
            for c in list {
                let _ = writeln!(o, "    {c}");
            }
        }
    }
    o
}

fn human_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_secs(ms / 1000)).to_string()
}

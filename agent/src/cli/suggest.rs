//! `agent staged suggest --namespace NS [--since DURATION] [--from-file FILE]`:
//! StagedNetworkPolicy YAML allowing exactly the traffic observed into the
//! namespace ([`crate::flows::suggest`]), from the running agent's flow records
//! or a dump of `agent flows -o json`.
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::daemon::protocol::Request;
use crate::daemon::DEFAULT_SOCKET;
use crate::flows::{unix_now_ns, Flow, FlowQuery};

#[derive(Debug, Args)]
pub struct SuggestArgs {
    /// The namespace whose workloads get a policy each (the destinations).
    #[arg(long, short = 'n')]
    pub namespace: String,
    /// Only connections seen in this past period (e.g. 1h, 24h). Default: every record.
    #[arg(long, value_parser = super::flows::parse_duration)]
    pub since: Option<Duration>,
    /// Flow records from this file (`agent flows -o json` output: one record a line)
    /// instead of the running agent.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,
    /// The running agent's socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
}

pub fn run(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let mut records = match &args.from_file {
        Some(file) => read_file(file)?,
        None => fetch(&args.socket, args.since)?,
    };
    if let Some(since) = args.since {
        let cutoff = unix_now_ns().saturating_sub(since.as_nanos() as u64);
        records.retain(|f| f.last_seen_ns >= cutoff);
    }
    let suggestion = crate::flows::suggest::suggest(&records, &args.namespace);
    print!("{}", suggestion.to_yaml());
    if suggestion.policies.is_empty() {
        eprintln!(
            "no allowed connection into namespace {} among {} records (is the agent run with \
             `--flows all`? it records allowed flows of endpoints without staged policy only then)",
            args.namespace,
            records.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One record a line; an unreadable line is an error naming it.
fn read_file(file: &Path) -> anyhow::Result<Vec<Flow>> {
    let f = std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut out = Vec::new();
    for (n, line) in BufReader::new(f).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let flow = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: not a flow record (expected `agent flows -o json` output)",
                file.display(),
                n + 1
            )
        })?;
        out.push(flow);
    }
    Ok(out)
}

/// Every record the running agent keeps (in the window).
fn fetch(socket: &Path, since: Option<Duration>) -> anyhow::Result<Vec<Flow>> {
    let mut stream = super::flows::connect(socket)?;
    let query = FlowQuery {
        last: since.is_none().then_some(usize::MAX),
        since_ms: since.map(|d| d.as_millis() as u64),
        ..FlowQuery::default()
    };
    super::flows::send(&mut stream, &Request::Flows(query))?;
    let mut out = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        super::flows::check_error(&line)?;
        if crate::flows::promotion::parse_line(&line).is_some() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .with_context(|| format!("unexpected record from the agent: {line}"))?,
        );
    }
    Ok(out)
}

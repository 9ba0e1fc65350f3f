//! `agent flows` and `agent status`: clients of the daemon's Unix socket.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::daemon::protocol::{Request, Status};
use crate::daemon::DEFAULT_SOCKET;
use crate::flows::{Flow, FlowFilter, FlowQuery, FlowVerdict, PeerFilter};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FlowFormat {
    Compact,
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The daemon's socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Keep streaming new flows.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The last N flows (default 20 without --follow/--since).
    #[arg(long)]
    pub last: Option<usize>,
    /// Flows seen in this past period, e.g. 30s, 5m, 1h30m.
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Enforced verdict.
    #[arg(long, value_parser = ["allow", "deny"])]
    pub verdict: Option<String>,
    /// Only connections whose pending (staged) verdict differs from the enforced one, end
    /// to end: source egress and destination ingress judged together.
    #[arg(long)]
    pub pending_diff: bool,
    /// Judge pending with only these staged policies promoted (repeatable; KIND/NAME, e.g.
    /// sgnp/default-deny, snp/shop/api-allow), by the evaluator: `pending_differs`,
    /// --pending-diff and `changed_by` follow them.
    #[arg(long = "staged", value_name = "KIND/NAME")]
    pub staged: Vec<String>,
    /// A policy name (matches either trace).
    #[arg(long)]
    pub policy: Option<String>,
    /// Source: namespace/name, an IP or CIDR, or a label selector.
    #[arg(long)]
    pub from: Option<String>,
    /// Destination: namespace/name, an IP or CIDR, or a label selector.
    #[arg(long)]
    pub to: Option<String>,
    /// Destination port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Protocol name or number (tcp, udp, icmp, 132, ...).
    #[arg(long)]
    pub protocol: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: FlowFormat,
    #[command(flatten)]
    pub relay: super::relay::RelayClientArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StatusFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: StatusFormat,
}

/// `30s`, `5m`, `1h30m`, `2d`, `250ms`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("bad duration {s:?} (e.g. 30s, 5m, 1h30m)"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        total += match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            "d" => Duration::from_secs(n * 86400),
            _ => {
                return Err(format!(
                    "bad duration unit {unit:?} in {s:?} (ms, s, m, h, d)"
                ))
            }
        };
    }
    Ok(total)
}

pub(super) fn connect(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {} (is `agent run` running? are you root? --socket)",
            socket.display()
        )
    })
}

pub(super) fn send(stream: &mut UnixStream, req: &Request) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    Ok(())
}

pub(super) fn check_error(line: &str) -> anyhow::Result<()> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("agent: {e}");
        }
    }
    Ok(())
}

pub fn run_flows(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    // Check filters here for a clear error before connecting.
    for p in [&args.from, &args.to].into_iter().flatten() {
        PeerFilter::parse(p).map_err(|e| anyhow::anyhow!(e))?;
    }
    let query = FlowQuery {
        follow: args.follow,
        last: args.last,
        since_ms: args.since.map(|d| d.as_millis() as u64),
        filter: FlowFilter {
            verdict: args.verdict.clone(),
            pending_diff: args.pending_diff,
            staged: args.staged.clone(),
            policy: args.policy.clone(),
            from: args.from.clone(),
            to: args.to.clone(),
            port: args.port,
            protocol: args.protocol.clone(),
        },
    };
    if args.relay.relay.is_some() {
        return super::relay::flows(&args, &query);
    }
    let mut stream = connect(&args.socket)?;
    send(&mut stream, &Request::Flows(query))?;
    let color = super::colour(&std::io::stdout());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.output == FlowFormat::Table {
        table_header(&mut out, false)?;
    }
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        check_error(&line)?;
        let res = match args.output {
            FlowFormat::Json => writeln!(out, "{line}"),
            FlowFormat::Compact | FlowFormat::Table
                if let Some(e) = crate::flows::promotion::parse_line(&line) =>
            {
                writeln!(out, "{}", e.compact())
            }
            FlowFormat::Compact | FlowFormat::Table => {
                let flow: Flow = serde_json::from_str(&line)
                    .with_context(|| format!("unexpected record from the agent: {line}"))?;
                print_flow(&mut out, &flow, args.output, color)
            }
        };
        if res.is_err() {
            // Output closed (e.g. `| head`): stop quietly.
            return Ok(ExitCode::SUCCESS);
        }
        if args.follow {
            let _ = out.flush();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The table's header; `node`: a NODE column first (records from the relay).
pub(super) fn table_header(out: &mut impl Write, node: bool) -> std::io::Result<()> {
    if node {
        write!(out, "{:<16} ", "NODE")?;
    }
    writeln!(
        out,
        "{:<23} {:<34} {:<34} {:<6} {:<28} {:<40} PENDING",
        "TIME", "SOURCE", "DESTINATION", "PROTO", "REPORTER", "ENFORCED"
    )
}

/// One record in `format`.
pub(super) fn print_flow(
    out: &mut impl Write,
    flow: &Flow,
    format: FlowFormat,
    color: bool,
) -> std::io::Result<()> {
    match format {
        FlowFormat::Json => writeln!(out, "{}", serde_json::to_string(flow)?),
        FlowFormat::Compact => writeln!(out, "{}", compact(flow, color)),
        FlowFormat::Table => writeln!(out, "{}", table_row(flow)),
    }
}

fn peer(p: &crate::flows::Peer, port: bool) -> String {
    let addr = match (p.ip, port) {
        (std::net::IpAddr::V6(ip), true) => format!("[{ip}]:{}", p.port),
        (ip, true) => format!("{ip}:{}", p.port),
        (ip, false) => ip.to_string(),
    };
    match (&p.namespace, &p.name) {
        (Some(ns), Some(n)) => format!("{ns}/{n} {addr}"),
        (None, Some(n)) => format!("{n} {addr}"),
        _ => addr,
    }
}

/// `allow (default gnp:name, rule 0)` from a trace
/// `[<index>|]<tier>|<kind>:<ns>/<name>|<action>|<rule>`.
pub fn verdict_text(v: &FlowVerdict) -> String {
    let mut parts: Vec<&str> = v.trace.split('|').collect();
    if parts.len() == 5 {
        parts.remove(0);
    }
    let why = if parts.len() == 4 {
        let rule = if parts[3] == "-1" {
            "end of tier".to_string()
        } else {
            format!("rule {}", parts[3])
        };
        format!("{} {}, {rule}", parts[0], parts[1])
    } else if v.trace.is_empty() {
        "no trace".into()
    } else {
        v.trace.clone()
    };
    let no_entry = if v.no_entry { ", no table entry" } else { "" };
    format!("{} ({why}{no_entry})", v.action)
}

fn short_time(t: &str) -> &str {
    // 2026-11-23T22:42:22.123Z -> 22:42:22.123
    t.get(11..23).unwrap_or(t)
}

pub fn compact(f: &Flow, color: bool) -> String {
    let proto = match f.icmp {
        Some((t, c)) => format!("{} type {t} code {c}", f.protocol),
        None => f.protocol.clone(),
    };
    let port = f.icmp.is_none();
    let dir = &f.direction;
    let node = f
        .node
        .as_ref()
        .map(|n| format!("{n}  "))
        .unwrap_or_default();
    let mut s = format!(
        "{node}{}  {} -> {}  {proto}  {} {dir}  enforced: {}",
        short_time(&f.time),
        peer(&f.src, port),
        peer(&f.dst, port),
        f.reporter.endpoint,
        verdict_text(&f.enforced),
    );
    if let Some(svc) = &f.service {
        s.push_str(&format!("  via service {}", peer(svc, port)));
    }
    if let Some(p) = &f.pending {
        let text = format!("pending: {}", verdict_text(p));
        if f.pending_differs {
            if color {
                s.push_str(&format!(
                    "  \x1b[1;33m{text}\x1b[0m  \x1b[1;33m<- differs\x1b[0m"
                ));
            } else {
                s.push_str(&format!("  {text}  <- differs"));
            }
        } else {
            s.push_str(&format!("  {text}"));
        }
    }
    if !f.changed_by.is_empty() {
        s.push_str(&format!("  changed by {}", f.changed_by.join(", ")));
    }
    if f.count > 1 {
        s.push_str(&format!("  (x{})", f.count));
    }
    s
}

fn table_row(f: &Flow) -> String {
    let pending = match &f.pending {
        Some(p) if f.pending_differs => format!("{} *", verdict_text(p)),
        Some(p) => verdict_text(p),
        None => "-".into(),
    };
    let node = f
        .node
        .as_ref()
        .map(|n| format!("{n:<16} "))
        .unwrap_or_default();
    format!(
        "{node}{:<23} {:<34} {:<34} {:<6} {:<28} {:<40} {pending}",
        f.time,
        peer(&f.src, true),
        peer(&f.dst, true),
        f.protocol,
        format!("{} {}", f.reporter.endpoint, f.direction),
        verdict_text(&f.enforced),
    )
}

pub fn fetch_status(socket: &Path) -> anyhow::Result<Status> {
    let mut stream = connect(socket)?;
    send(&mut stream, &Request::Status)?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    check_error(&line)?;
    serde_json::from_str(&line).with_context(|| format!("unexpected status from the agent: {line}"))
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let s = fetch_status(&args.socket)?;
    if args.output == StatusFormat::Json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", super::status::status_text(&s));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }
}

//! `agent eval`: what would one connection get? Loads a datastore directory,
//! evaluates the source's egress and the destination's ingress under the
//! enforced policies and under the pending set (every staged policy promoted),
//! and prints both with their traces.
//!
//! `--from` / `--to` take `namespace/pod` of a workload endpoint (or its
//! WorkloadEndpoint name), `name` (host endpoint) or an IP; an unknown name
//! is an error suggesting the closest ones. `--datastore -` reads standard input. Errors in the arguments exit 2; load diagnostics go to
//! stderr and evaluation continues with what loaded.
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::eval::{
    policy_flow_log_name, DecidedBy, EndVerdict, Evaluator, Flow, FlowVerdict, Outcome, Packet,
    EPHEMERAL_PORT,
};
use crate::model::ir::{Endpoint, Model, Protocol};
use crate::model::load::STDIN;
use crate::model::names::{find_endpoint, UnknownName};

/// Exit status for usage errors (unknown endpoint, bad protocol, ...).
pub(super) const EXIT_USAGE: u8 = 2;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// For people.
    #[default]
    Text,
    /// One JSON object.
    Json,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Directory of policy resources (YAML), read recursively; `-`: standard input.
    #[arg(long, value_name = "DIR")]
    pub datastore: PathBuf,
    /// Source: `namespace/pod` of a workload endpoint (or its WorkloadEndpoint name), a host
    /// endpoint name, or an IP.
    #[arg(long, value_name = "SRC")]
    pub from: String,
    /// Destination: `namespace/pod` of a workload endpoint (or its WorkloadEndpoint name), a
    /// host endpoint name, or an IP.
    #[arg(long, value_name = "DST")]
    pub to: String,
    /// TCP, UDP, SCTP, UDPLite, ICMP, ICMPv6 (any case) or a protocol number 1-255.
    #[arg(long, value_name = "PROTO", value_parser = parse_protocol)]
    pub protocol: Protocol,
    /// Destination port (required for TCP, UDP, SCTP and UDPLite).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// Source port (default: an ephemeral port, 40000).
    #[arg(long, value_name = "N")]
    pub source_port: Option<u16>,
    /// ICMP type (ICMP and ICMPv6 only).
    #[arg(long, value_name = "T")]
    pub icmp_type: Option<u8>,
    /// ICMP code (needs --icmp-type).
    #[arg(long, value_name = "C", requires = "icmp_type")]
    pub icmp_code: Option<u8>,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Pending = only these staged policies promoted (repeatable; KIND/NAME or
    /// KIND/NAMESPACE/NAME, e.g. sgnp/default-deny, snp/shop/api-allow).
    /// Default: every staged policy.
    #[arg(long = "staged", value_name = "KIND/NAME")]
    pub staged: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EvalError {
    #[error("datastore {0} is not a directory")]
    NoDatastore(PathBuf),
    #[error("no endpoint {name:?} (expected namespace/pod of a workload endpoint, a host endpoint name, or an IP){near}", name = .0.name, near = .0)]
    UnknownEndpoint(UnknownName),
    #[error("endpoint {endpoint} has no IPv{family} address")]
    NoAddress { endpoint: String, family: u8 },
    #[error("--from and --to are of different IP families")]
    MixedFamilies,
    #[error("protocol {0} needs --port")]
    MissingPort(String),
    #[error("protocol {0} has no ports")]
    UnexpectedPort(String),
    #[error("--icmp-type needs protocol ICMP or ICMPv6, not {0}")]
    UnexpectedIcmp(String),
}

pub fn run(args: EvalArgs) -> ExitCode {
    let mut model = match load_datastore(&args.datastore) {
        Ok(model) => model,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = super::staged::select(&mut model, &args.staged) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let flow = match flow_from_args(&model, &args) {
        Ok(flow) => flow,
        Err(e) => return usage_error(&e),
    };
    let verdict = Evaluator::new(&model).evaluate_flow(&flow);
    // Who changes this flow: each staged policy promoted alone.
    let changed_by = if verdict.pending.action == verdict.enforced.action {
        Vec::new()
    } else {
        super::staged::changed_by(&model, |alone| {
            let v = Evaluator::new(alone).evaluate_flow(&flow);
            v.pending.action != v.enforced.action
        })
    };
    match args.output {
        OutputFormat::Json => {
            let mut json = serde_json::to_value(&verdict).expect("verdicts serialize");
            json["changed_by"] = serde_json::json!(changed_by);
            println!(
                "{}",
                serde_json::to_string_pretty(&json).expect("verdicts serialize")
            )
        }
        OutputFormat::Text => {
            print!("{}", render_text(&verdict));
            if !changed_by.is_empty() {
                println!("changed by: {}", changed_by.join(", "));
            }
        }
    }
    ExitCode::SUCCESS
}

pub(super) fn usage_error(e: &EvalError) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// Loads the datastore, printing every diagnostic to stderr; what loaded is used.
pub(super) fn load_datastore(dir: &Path) -> Result<Model, EvalError> {
    if dir != Path::new(STDIN) && !dir.is_dir() {
        return Err(EvalError::NoDatastore(dir.to_path_buf()));
    }
    let loaded = crate::model::load_paths(&[dir]);
    for diagnostic in &loaded.diagnostics {
        eprintln!("{diagnostic}");
    }
    if loaded.has_errors() {
        eprintln!("warning: continuing with the resources that loaded");
    }
    Ok(loaded.model)
}

/// Protocol names (any case) or numbers 1-255.
pub fn parse_protocol(text: &str) -> Result<Protocol, String> {
    Protocol::from_name_ignore_case(text)
        .or_else(|| {
            let number = text.parse::<u8>().ok().filter(|&n| n >= 1);
            number.map(Protocol::from_number)
        })
        .ok_or_else(|| {
            format!("unknown protocol {text:?} (TCP, UDP, SCTP, UDPLite, ICMP, ICMPv6 or 1-255)")
        })
}

fn packet_from_args(args: &EvalArgs) -> Result<Packet, EvalError> {
    let name = args.protocol.to_string();
    if args.protocol.carries_ports() {
        let port = args.port.ok_or(EvalError::MissingPort(name))?;
        let source = args.source_port.unwrap_or(EPHEMERAL_PORT);
        return Ok(Packet::with_ports(args.protocol, source, port));
    }
    if args.port.is_some() || args.source_port.is_some() {
        return Err(EvalError::UnexpectedPort(name));
    }
    if args.icmp_type.is_some() && !args.protocol.is_icmp() {
        return Err(EvalError::UnexpectedIcmp(name));
    }
    Ok(Packet {
        icmp_type: args.icmp_type,
        icmp_code: args.icmp_code,
        ..Packet::without_ports(args.protocol)
    })
}

/// What `--from` / `--to` named.
enum Target<'m> {
    Ip(IpAddr),
    Endpoint(&'m Endpoint),
}

fn resolve_target<'m>(model: &'m Model, text: &str) -> Result<Target<'m>, EvalError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(Target::Ip(ip));
    }
    find_endpoint(&model.endpoints, text)
        .map(Target::Endpoint)
        .map_err(EvalError::UnknownEndpoint)
}

/// The family of the flow: an IP argument's, else IPv4 when both endpoints have one.
fn choose_ipv4(from: &Target, to: &Target) -> Result<bool, EvalError> {
    match (from, to) {
        (Target::Ip(a), Target::Ip(b)) if a.is_ipv4() != b.is_ipv4() => {
            Err(EvalError::MixedFamilies)
        }
        (Target::Ip(ip), _) | (_, Target::Ip(ip)) => Ok(ip.is_ipv4()),
        (Target::Endpoint(a), Target::Endpoint(b)) => {
            let has_v4 = |e: &Endpoint| e.ips.iter().any(IpAddr::is_ipv4);
            let has_v6 = |e: &Endpoint| e.ips.iter().any(IpAddr::is_ipv6);
            // IPv6 only when that is the one family both have.
            Ok(!(has_v6(a) && has_v6(b)) || has_v4(a) && has_v4(b))
        }
    }
}

fn address_of(target: &Target, ipv4: bool) -> Result<IpAddr, EvalError> {
    match target {
        Target::Ip(ip) if ip.is_ipv4() == ipv4 => Ok(*ip),
        Target::Ip(_) => Err(EvalError::MixedFamilies),
        Target::Endpoint(e) => first_ip(e, ipv4).ok_or_else(|| EvalError::NoAddress {
            endpoint: e.key(),
            family: if ipv4 { 4 } else { 6 },
        }),
    }
}

/// The endpoint's first IP of a family.
pub fn first_ip(endpoint: &Endpoint, ipv4: bool) -> Option<IpAddr> {
    endpoint.ips.iter().copied().find(|ip| ip.is_ipv4() == ipv4)
}

fn flow_from_args(model: &Model, args: &EvalArgs) -> Result<Flow, EvalError> {
    let packet = packet_from_args(args)?;
    let from = resolve_target(model, &args.from)?;
    let to = resolve_target(model, &args.to)?;
    let ipv4 = choose_ipv4(&from, &to)?;
    Ok(Flow {
        src: address_of(&from, ipv4)?,
        dst: address_of(&to, ipv4)?,
        packet,
    })
}

fn render_text(v: &FlowVerdict) -> String {
    let name = |endpoint: &Option<String>, ip: IpAddr| match endpoint {
        Some(key) => format!("{key} ({ip})"),
        None => format!("{ip} (no endpoint)"),
    };
    let mut out = format!(
        "flow: {} -> {} {}\n",
        name(&v.source_endpoint, v.flow.src),
        name(&v.destination_endpoint, v.flow.dst),
        describe_packet(&v.flow.packet)
    );
    out += &render_outcome("enforced", &v.enforced, None);
    let differs = (v.pending.action != v.enforced.action).then_some(v.enforced.action);
    out += &render_outcome("pending", &v.pending, differs);
    out
}

fn describe_packet(p: &Packet) -> String {
    let mut text = p.protocol.to_string();
    if let (Some(src), Some(dst)) = (p.src_port, p.dst_port) {
        text += &format!(" {src} -> {dst}");
    }
    if let Some(t) = p.icmp_type {
        text += &format!(" type {t}");
        if let Some(c) = p.icmp_code {
            text += &format!(" code {c}");
        }
    }
    text
}

fn render_outcome(
    label: &str,
    outcome: &Outcome,
    differs_from: Option<crate::eval::Verdict>,
) -> String {
    let mut out = format!("\n{label}: {}", outcome.action);
    if let Some(enforced) = differs_from {
        out += &format!("   (enforced: {enforced} - promoting staged policies changes this flow)");
    }
    out.push('\n');
    for (what, end) in [("egress", &outcome.egress), ("ingress", &outcome.ingress)] {
        match end {
            Some(end) => out += &render_end(what, end),
            None => out += &format!("  {what}: not an endpoint, not policed\n"),
        }
    }
    out
}

fn render_end(what: &str, end: &EndVerdict) -> String {
    let mut out = format!(
        "  {what} of {}: {} ({})\n",
        end.endpoint,
        end.action,
        describe_decision(&end.decided_by)
    );
    for entry in &end.trace {
        out += &format!("    {entry}\n");
    }
    out
}

pub fn describe_decision(by: &DecidedBy) -> String {
    match by {
        DecidedBy::Failsafe { protocol, port } => {
            format!("failsafe port {protocol}/{port}")
        }
        DecidedBy::PolicyRule { tier, policy, rule } => {
            let policy = policy_flow_log_name(policy);
            format!("tier {tier}, policy {policy}, rule {rule}")
        }
        DecidedBy::EndOfTier { tier, policy } => {
            let policy = policy_flow_log_name(policy);
            format!("end of tier {tier}, after policy {policy}")
        }
        DecidedBy::ProfileRule { profile, rule } => format!("profile {profile}, rule {rule}"),
        DecidedBy::NoMatch => "no policy or profile decided: default deny".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::ir as testkit;

    #[test]
    fn protocols_parse_by_name_in_any_case_or_number() {
        assert_eq!(parse_protocol("tcp"), Ok(Protocol::TCP));
        assert_eq!(parse_protocol("ICMPv6"), Ok(Protocol::ICMPV6));
        assert_eq!(parse_protocol("UDPLite"), Ok(Protocol::UDPLITE));
        assert_eq!(parse_protocol("253"), Ok(Protocol::from_number(253)));
        assert!(parse_protocol("0").is_err());
        assert!(parse_protocol("256").is_err());
        assert!(parse_protocol("gre").is_err());
    }

    fn args(protocol: Protocol) -> EvalArgs {
        EvalArgs {
            datastore: PathBuf::new(),
            from: String::new(),
            to: String::new(),
            protocol,
            port: None,
            source_port: None,
            icmp_type: None,
            icmp_code: None,
            output: OutputFormat::Text,
            staged: Vec::new(),
        }
    }

    #[test]
    fn packets_need_ports_exactly_for_port_protocols() {
        assert_eq!(
            packet_from_args(&args(Protocol::TCP)),
            Err(EvalError::MissingPort("TCP".into()))
        );
        let tcp = EvalArgs {
            port: Some(8080),
            ..args(Protocol::TCP)
        };
        assert_eq!(packet_from_args(&tcp), Ok(Packet::tcp(8080)));
        let icmp_with_port = EvalArgs {
            port: Some(1),
            ..args(Protocol::ICMP)
        };
        assert!(packet_from_args(&icmp_with_port).is_err());
        let echo = EvalArgs {
            icmp_type: Some(8),
            icmp_code: Some(0),
            ..args(Protocol::ICMP)
        };
        assert_eq!(
            packet_from_args(&echo),
            Ok(Packet::icmp(Protocol::ICMP, 8, 0))
        );
        let udp_icmp = EvalArgs {
            icmp_type: Some(8),
            ..args(Protocol::SCTP)
        };
        assert!(
            packet_from_args(&udp_icmp).is_err(),
            "SCTP needs a port first"
        );
    }

    fn pod(name: &str, ip: &str) -> Endpoint {
        testkit::pod("prod", name, &[ip])
    }

    /// `prod/b` denies all ingress; a staged namesake would allow it.
    fn deny_b_model() -> Model {
        use crate::model::ir::{Action, Policy, PolicyKind, Rule};
        let policy = |kind, action| Policy {
            selector: crate::selector::Selector::equals("app", "b"),
            ingress: vec![Rule::matching_all(action)],
            ..testkit::policy(kind, None, "gate")
        };
        Model {
            policies: vec![
                policy(PolicyKind::GlobalNetworkPolicy, Action::Deny),
                policy(PolicyKind::StagedGlobalNetworkPolicy, Action::Allow),
            ],
            endpoints: vec![pod("a", "10.0.0.1").into(), pod("b", "10.0.0.2").into()],
            ..Model::default()
        }
    }

    #[test]
    fn flows_resolve_endpoint_names_and_render_both_sets_with_traces() {
        let model = deny_b_model();
        let eval_args = EvalArgs {
            from: "prod/a".into(),
            to: "prod/b".into(),
            port: Some(8080),
            ..args(Protocol::TCP)
        };
        let flow = flow_from_args(&model, &eval_args).unwrap();
        assert_eq!(flow.src, "10.0.0.1".parse::<IpAddr>().unwrap());
        let text = render_text(&Evaluator::new(&model).evaluate_flow(&flow));
        assert_eq!(
            text,
            "flow: prod/a (10.0.0.1) -> prod/b (10.0.0.2) TCP 40000 -> 8080\n\
             \n\
             enforced: deny\n  \
             egress of prod/a: allow (profile kns.prod, rule 0)\n    \
             0|__PROFILE__|pro:kns.prod|allow|0\n  \
             ingress of prod/b: deny (tier default, policy gnp:gate, rule 0)\n    \
             0|default|gnp:gate|deny|0\n\
             \n\
             pending: allow   (enforced: deny - promoting staged policies changes this flow)\n  \
             egress of prod/a: allow (profile kns.prod, rule 0)\n    \
             0|__PROFILE__|pro:kns.prod|allow|0\n  \
             ingress of prod/b: allow (tier default, policy sgnp:gate, rule 0)\n    \
             0|default|sgnp:gate|allow|0\n"
        );
    }

    #[test]
    fn unknown_endpoints_and_missing_addresses_are_errors() {
        let model = deny_b_model();
        let unknown = EvalArgs {
            from: "prod/zz".into(),
            to: "prod/b".into(),
            port: Some(1),
            ..args(Protocol::TCP)
        };
        assert_eq!(
            flow_from_args(&model, &unknown),
            Err(EvalError::UnknownEndpoint(UnknownName {
                name: "prod/zz".into(),
                suggestions: vec![]
            }))
        );
        let typo = EvalArgs {
            from: "prod/bb".into(),
            ..unknown
        };
        assert_eq!(
            flow_from_args(&model, &typo).unwrap_err().to_string(),
            "no endpoint \"prod/bb\" (expected namespace/pod of a workload endpoint, a host \
             endpoint name, or an IP); did you mean prod/b?"
        );
        let v6 = EvalArgs {
            from: "fd00::1".into(),
            to: "prod/b".into(),
            port: Some(1),
            ..args(Protocol::TCP)
        };
        assert_eq!(
            flow_from_args(&model, &v6),
            Err(EvalError::NoAddress {
                endpoint: "prod/b".into(),
                family: 6
            })
        );
    }
}

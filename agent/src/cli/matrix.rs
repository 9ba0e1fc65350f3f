//! `agent matrix`: the connectivity matrix of all workload endpoints (rows =
//! from, columns = to), enforced and pending side by side, per destination
//! port, computed by [`crate::eval::matrix`] (ports, addressing and names are
//! described there).
//!
//! Ports: `--port PROTO/N` (repeatable; a bare `N` means TCP); without it the
//! ports the policies mention. `--ipv6`: endpoints by their first IPv6 address.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::eval::{load_datastore, usage_error, OutputFormat};
pub use crate::eval::matrix::{
    compute, default_ports, parse_port_spec, Cell, Matrix, PortMatrix, PortSpec,
};
use crate::eval::Verdict;

#[derive(Debug, Args)]
pub struct MatrixArgs {
    /// Directory of policy resources (YAML), read recursively; `-`: standard input.
    #[arg(long, value_name = "DIR")]
    pub datastore: PathBuf,
    /// Destination port to test, e.g. TCP/8080 or 8080 for TCP (repeatable). Default: every
    /// destination port the policies mention (first port of a range, named ports resolved), or
    /// TCP/80 if they mention none.
    #[arg(long = "port", value_name = "PROTO/N", value_parser = parse_port_spec)]
    pub ports: Vec<PortSpec>,
    /// List only the cells where pending differs from enforced.
    #[arg(long)]
    pub diff: bool,
    /// Address endpoints by their first IPv6 address instead of IPv4.
    #[arg(long)]
    pub ipv6: bool,
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub output: OutputFormat,
    /// Pending = only these staged policies promoted (repeatable; KIND/NAME or
    /// KIND/NAMESPACE/NAME, e.g. sgnp/default-deny, snp/shop/api-allow).
    /// Default: every staged policy.
    #[arg(long = "staged", value_name = "KIND/NAME")]
    pub staged: Vec<String>,
}

pub fn run(args: MatrixArgs) -> ExitCode {
    let mut model = match load_datastore(&args.datastore) {
        Ok(model) => model,
        Err(e) => return usage_error(&e),
    };
    if let Err(e) = super::staged::select(&mut model, &args.staged) {
        eprintln!("error: {e}");
        return ExitCode::from(super::eval::EXIT_USAGE);
    }
    let ports = if args.ports.is_empty() {
        default_ports(&model)
    } else {
        args.ports.clone()
    };
    let mut matrices = compute(&model, &ports, !args.ipv6);
    if args.diff {
        for m in &mut matrices {
            m.cells.retain(Cell::differs);
        }
    }
    match (args.output, args.diff) {
        (OutputFormat::Json, _) => println!(
            "{}",
            serde_json::to_string_pretty(&Matrix { ports: matrices }).expect("matrices serialize")
        ),
        (OutputFormat::Text, true) => print!("{}", render_diff(&matrices)),
        (OutputFormat::Text, false) => {
            for m in &matrices {
                print!("{}", render_table(m));
            }
        }
    }
    ExitCode::SUCCESS
}

fn mark(v: Verdict) -> char {
    match v {
        Verdict::Allow => '✓',
        Verdict::Deny => '✗',
    }
}

/// `enforced pending`, `*` where pending differs; `-` on the diagonal.
fn cell_text(m: &PortMatrix, from: &str, to: &str) -> String {
    match m.cells.iter().find(|c| c.from == from && c.to == to) {
        Some(c) => format!(
            "{} {}{}",
            mark(c.enforced),
            mark(c.pending),
            if c.differs() { "*" } else { "" }
        ),
        None => "-".into(),
    }
}

fn pad(text: &str, width: usize) -> String {
    let len = text.chars().count();
    format!("{text}{}", " ".repeat(width.saturating_sub(len)))
}

pub fn render_table(m: &PortMatrix) -> String {
    let corner = "from \\ to";
    let mut out = format!(
        "{}  (each cell: enforced pending; * = pending differs)\n",
        m.port
    );
    let first_width = m
        .endpoints
        .iter()
        .map(|e| e.chars().count())
        .chain([corner.len()])
        .max()
        .unwrap_or(0);
    let widths: Vec<usize> = m
        .endpoints
        .iter()
        .map(|e| e.chars().count().max(4))
        .collect();
    let mut header = pad(corner, first_width);
    for (e, w) in m.endpoints.iter().zip(&widths) {
        header += &format!("  {}", pad(e, *w));
    }
    out += header.trim_end();
    out.push('\n');
    for from in &m.endpoints {
        let mut line = pad(from, first_width);
        for (to, w) in m.endpoints.iter().zip(&widths) {
            line += &format!("  {}", pad(&cell_text(m, from, to), *w));
        }
        out += line.trim_end();
        out.push('\n');
    }
    out.push('\n');
    out
}

pub fn render_diff(matrices: &[PortMatrix]) -> String {
    let mut out = String::new();
    for m in matrices {
        for c in &m.cells {
            out += &format!(
                "{} {} -> {}: enforced {}, pending {}\n",
                m.port, c.from, c.to, c.enforced, c.pending
            );
        }
    }
    if out.is_empty() {
        out = "no differences between enforced and pending\n".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ir::{Action, Endpoint, Model, Policy, PolicyKind, Protocol, TierDefault};
    use crate::selector::Selector;
    use crate::testkit::ir as testkit;

    #[test]
    fn port_specs_parse_protocol_and_port() {
        assert_eq!(
            parse_port_spec("udp/53"),
            Ok(PortSpec {
                protocol: Protocol::UDP,
                port: 53
            })
        );
        assert_eq!(
            parse_port_spec("8080"),
            Ok(PortSpec {
                protocol: Protocol::TCP,
                port: 8080
            })
        );
        assert!(parse_port_spec("icmp/1").is_err());
        assert!(parse_port_spec("tcp/0").is_err());
        assert!(parse_port_spec("tcp/x").is_err());
    }

    fn pod(name: &str, ip: &str) -> Endpoint {
        testkit::pod("prod", name, &[ip])
    }

    /// `b` has a staged deny-all ingress policy; the enforced set allows everything.
    fn staged_lockdown_model() -> Model {
        let lockdown = Policy {
            selector: Selector::equals("app", "b"),
            ingress: vec![testkit::tcp_ports(Action::Allow, 8080, 8090)],
            staged_action: None,
            ..testkit::policy(PolicyKind::StagedGlobalNetworkPolicy, None, "lockdown")
        };
        Model {
            tiers: vec![testkit::tier(
                "default",
                Some(1_000_000.0),
                TierDefault::Deny,
            )],
            policies: vec![lockdown],
            endpoints: vec![pod("b", "10.0.0.2").into(), pod("a", "10.0.0.1").into()],
            ..Model::default()
        }
    }

    #[test]
    fn default_ports_come_from_policy_destination_ports() {
        let m = staged_lockdown_model();
        assert_eq!(
            default_ports(&m),
            [PortSpec {
                protocol: Protocol::TCP,
                port: 8080
            }]
        );
        assert_eq!(default_ports(&Model::default())[0].port, 80);
    }

    #[test]
    fn the_matrix_shows_enforced_and_pending_and_marks_differences() {
        let m = staged_lockdown_model();
        let ports = [
            PortSpec {
                protocol: Protocol::TCP,
                port: 8080,
            },
            PortSpec {
                protocol: Protocol::TCP,
                port: 22,
            },
        ];
        let matrices = compute(&m, &ports, true);
        assert_eq!(matrices[0].endpoints, ["prod/a", "prod/b"]);
        let table = render_table(&matrices[0]);
        assert_eq!(
            table,
            "TCP/8080  (each cell: enforced pending; * = pending differs)\n\
             from \\ to  prod/a  prod/b\n\
             prod/a     -       ✓ ✓\n\
             prod/b     ✓ ✓     -\n\n"
        );
        let table_22 = render_table(&matrices[1]);
        assert!(table_22.contains("prod/a     -       ✓ ✗*"), "{table_22}");
        let mut diffs = matrices.clone();
        for d in &mut diffs {
            d.cells.retain(Cell::differs);
        }
        assert_eq!(
            render_diff(&diffs),
            "TCP/22 prod/a -> prod/b: enforced allow, pending deny\n"
        );
        // No IPv6 addresses: an empty matrix.
        assert!(compute(&m, &ports, false)[0].cells.is_empty());
    }
}

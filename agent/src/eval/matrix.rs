//! The connectivity matrix of all workload endpoints (rows = from, columns =
//! to), enforced and pending side by side, per destination port: computed
//! with the evaluator on a model. `agent matrix` prints it; the web console
//! ([`crate::console`]) draws it.
//!
//! Default ports ([`default_ports`]): every port the policies mention as a
//! destination port: a single port or the first port of a range (with the
//! rule's protocol, TCP if it names none), and named ports resolved against
//! the endpoints that define them; TCP/80 when the policies mention none.
//! Each endpoint is addressed by its first IPv4 address (or IPv6); endpoints
//! without one are left out. Rows and columns are named `namespace/pod`
//! ([`crate::model::ir::Endpoint::key`]).
use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use crate::cli::eval::{first_ip, parse_protocol};
use crate::eval::{Evaluator, Flow, Packet, Verdict};
use crate::model::ir::{EndpointKind, Model, PortMatch, Protocol};

/// A destination port of a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for PortSpec {
    /// `TCP/8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

impl serde::Serialize for PortSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `PROTO/N` (PROTO: a protocol with ports) or a bare `N` for TCP.
pub fn parse_port_spec(text: &str) -> Result<PortSpec, String> {
    let (protocol, port) = match text.split_once('/') {
        Some((p, n)) => (parse_protocol(p)?, n),
        None => (Protocol::TCP, text),
    };
    if !protocol.carries_ports() {
        return Err(format!("protocol {protocol} has no ports"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| format!("bad port {port:?} (1-65535)"))?;
    Ok(PortSpec { protocol, port })
}

/// One cell: the flow from one endpoint to another on one port.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    pub from: String,
    pub to: String,
    pub enforced: Verdict,
    pub pending: Verdict,
}

impl Cell {
    /// Pending differs from enforced.
    pub fn differs(&self) -> bool {
        self.enforced != self.pending
    }
}

/// The matrix for one port.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PortMatrix {
    pub port: PortSpec,
    /// Endpoint keys, the rows and columns in order.
    pub endpoints: Vec<String>,
    /// Every ordered pair of distinct endpoints (all of them, or only differing ones with `--diff`).
    pub cells: Vec<Cell>,
}

/// Every port's matrix (`agent matrix -o json`, the console's `/api/matrix`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Matrix {
    pub ports: Vec<PortMatrix>,
}

/// The destination ports the policies mention (see the module docs), or TCP/80.
pub fn default_ports(model: &Model) -> Vec<PortSpec> {
    let mut ports = BTreeSet::new();
    let rules = model.all_rules();
    for rule in rules {
        let protocol = rule
            .protocol
            .filter(|p| p.carries_ports())
            .unwrap_or(Protocol::TCP);
        for port in &rule.destination.ports {
            match port {
                PortMatch::Range(r) => {
                    ports.insert(PortSpec {
                        protocol,
                        port: r.first,
                    });
                }
                PortMatch::Named(name) => {
                    let defined = model.endpoints.iter().flat_map(|e| &e.named_ports);
                    for np in defined.filter(|np| &np.name == name) {
                        ports.insert(PortSpec {
                            protocol: np.protocol,
                            port: np.port,
                        });
                    }
                }
            }
        }
    }
    if ports.is_empty() {
        ports.insert(PortSpec {
            protocol: Protocol::TCP,
            port: 80,
        });
    }
    ports.into_iter().collect()
}

/// The matrices: workload endpoints sorted by key, each addressed by its first IP of the family.
pub fn compute(model: &Model, ports: &[PortSpec], ipv4: bool) -> Vec<PortMatrix> {
    let evaluator = Evaluator::new(model);
    let mut endpoints: Vec<(String, IpAddr)> = model
        .endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Workload)
        .filter_map(|e| first_ip(e, ipv4).map(|ip| (e.key(), ip)))
        .collect();
    endpoints.sort();
    ports
        .iter()
        .map(|&port| {
            let packet = Packet::with_ports(port.protocol, crate::eval::EPHEMERAL_PORT, port.port);
            let mut cells = Vec::new();
            for (from, src) in &endpoints {
                for (to, dst) in endpoints.iter().filter(|(to, _)| to != from) {
                    let v = evaluator.evaluate_flow(&Flow {
                        src: *src,
                        dst: *dst,
                        packet,
                    });
                    cells.push(Cell {
                        from: from.clone(),
                        to: to.clone(),
                        enforced: v.enforced.action,
                        pending: v.pending.action,
                    });
                }
            }
            PortMatrix {
                port,
                endpoints: endpoints.iter().map(|(k, _)| k.clone()).collect(),
                cells,
            }
        })
        .collect()
}

/// The matrix on the ports the policies mention ([`default_ports`]), each
/// endpoint by its first IPv4 address (the web console's).
pub fn of_model(model: &Model) -> Matrix {
    Matrix {
        ports: compute(model, &default_ports(model), true),
    }
}

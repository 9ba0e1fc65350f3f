//! Lockout protection: would policy deny traffic on the failsafe ports (or the
//! agent's own management ports) of a host endpoint if failsafes were off?
//!
//! Failsafe ports are enforced before any policy on host endpoints (felix's
//! `FailsafeInboundHostPorts` / `FailsafeOutboundHostPorts`), so this never
//! changes a verdict; it warns that the failsafe list is the only thing keeping
//! that traffic open, naming the policy that would deny it. Evaluated with the
//! reference evaluator, per host endpoint, per failsafe entry, for the first IP
//! of the entry's net (or a documentation address when it has none), under the
//! enforced set and under the pending set (staged policies promoted).
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::eval::{DecidedBy, Evaluator, Packet, PolicySet, Verdict};
use crate::model::ir::{Direction, EndpointKind, FailsafePort, Failsafes, Model, Protocol};
use crate::model::yaml;

/// The agent's own config file (`agent run --config`, `agent check --config`),
/// felix-style: `failsafeInbound` / `failsafeOutbound` lists of
/// `{protocol: tcp|udp, port: N, net: CIDR}`; a missing list keeps Calico's
/// defaults, an empty list means none.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    pub failsafe_inbound: Option<Vec<FailsafeEntry>>,
    pub failsafe_outbound: Option<Vec<FailsafeEntry>>,
    /// Service ClusterIP ranges (kube-controller-manager's
    /// `--service-cluster-ip-range`): flows to them are judged after the
    /// node's DNAT (see `crate::daemon::services`).
    #[serde(rename = "serviceClusterIPRanges")]
    pub service_cluster_ip_ranges: Option<Vec<String>>,
    /// Services' external and load-balancer IPs (addresses or CIDRs), judged
    /// like ClusterIPs.
    #[serde(rename = "serviceExternalIPs")]
    pub service_external_ips: Option<Vec<String>>,
    /// Interfaces a packet to a remote Service backend can leave the node by
    /// (globs with a trailing `*`); Calico's `bpfDataIfacePattern` by default.
    pub data_interfaces: Option<Vec<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeEntry {
    pub protocol: String,
    pub port: u16,
    #[serde(default)]
    pub net: Option<String>,
}

impl AgentConfig {
    pub fn load(path: &std::path::Path) -> anyhow::Result<AgentConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        AgentConfig::parse(&text)
            .map_err(|(line, message)| anyhow::anyhow!("{}:{line}: {message}", path.display()))
    }

    /// The config in `text` (one YAML document, read by the model's YAML
    /// parser), or the line and text of what is wrong with it.
    fn parse(text: &str) -> Result<AgentConfig, (usize, String)> {
        let nodes = yaml::parse_all(text).map_err(|e| (e.line, e.message))?;
        let node = match nodes.as_slice() {
            [node] => node,
            [] => return Err((1, "the config is empty: write a mapping with `failsafeInbound`, `failsafeOutbound`, ...".into())),
            [_, second, ..] => {
                return Err((second.line, "a second YAML document: the config is one mapping".into()))
            }
        };
        let lines = node.line_index();
        serde_path_to_error::deserialize(node.to_json()).map_err(|e| {
            let field = e.path().to_string();
            let line = yaml::line_of(&lines, &field);
            match field.as_str() {
                "." => (line, e.inner().to_string()),
                _ => (line, format!("{field}: {}", e.inner())),
            }
        })
    }

    /// The failsafe lists this config gives (Calico's defaults where unset).
    pub fn failsafes(&self) -> anyhow::Result<Failsafes> {
        let defaults = Failsafes::default();
        let conv = |list: &Option<Vec<FailsafeEntry>>, default: Vec<FailsafePort>, which| {
            let Some(list) = list else {
                return Ok(default);
            };
            list.iter()
                .enumerate()
                .map(|(i, e)| {
                    let Some(protocol) =
                        Protocol::from_name_ignore_case(&e.protocol).filter(|p| p.has_rule_ports())
                    else {
                        let other = e.protocol.to_ascii_lowercase();
                        anyhow::bail!("{which}[{i}].protocol: {other:?} is not tcp, udp or sctp")
                    };
                    let net = match &e.net {
                        None => None,
                        Some(n) => Some(
                            n.parse::<ipnet::IpNet>()
                                .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                                .map_err(|_| {
                                    anyhow::anyhow!("{which}[{i}].net: {n:?} is not a CIDR")
                                })?
                                .trunc(),
                        ),
                    };
                    Ok(FailsafePort {
                        protocol,
                        port: e.port,
                        net,
                    })
                })
                .collect()
        };
        Ok(Failsafes {
            inbound: conv(&self.failsafe_inbound, defaults.inbound, "failsafeInbound")?,
            outbound: conv(
                &self.failsafe_outbound,
                defaults.outbound,
                "failsafeOutbound",
            )?,
        })
    }
}

/// One port on one host endpoint that policy would deny without failsafes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockoutWarning {
    pub endpoint: String,
    pub direction: Direction,
    pub protocol: Protocol,
    pub port: u16,
    pub peer: IpAddr,
    pub set: PolicySet,
    /// Why: the policy (flow-log name) or profile, or "no policy allows it".
    pub denied_by: String,
    /// Whether a failsafe entry still lets it through (false for management
    /// ports that are not in the failsafe list: then it is really denied).
    pub failsafe: bool,
}

impl std::fmt::Display for LockoutWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = Some(self.protocol)
            .filter(|p| p.has_rule_ports())
            .and_then(Protocol::name)
            .map_or_else(|| "?".to_string(), str::to_ascii_lowercase);
        let (dir, prep) = match self.direction {
            Direction::Ingress => ("inbound", "from"),
            Direction::Egress => ("outbound", "to"),
        };
        let set = match self.set {
            PolicySet::Enforced => "",
            PolicySet::Pending => " once staged policies are promoted",
        };
        write!(
            f,
            "host endpoint {}: {dir} {proto}/{} {prep} {} would be denied{set} by {}",
            self.endpoint, self.port, self.peer, self.denied_by
        )?;
        if self.failsafe {
            write!(f, "; only the failsafe port keeps it open")
        } else {
            write!(
                f,
                "; this is the agent's own management traffic and it is NOT failsafe"
            )
        }
    }
}

fn sample_peer(net: Option<&ipnet::IpNet>, v6: bool) -> IpAddr {
    match net {
        Some(n) => n.network(),
        None if v6 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        None => IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    }
}

/// Checks the model's failsafe lists, plus `management` inbound ports (the
/// agent's own, e.g. its metrics port) which are warned about too.
pub fn check(model: &Model, management: &[FailsafePort]) -> Vec<LockoutWarning> {
    let mut off = model.clone();
    off.failsafes = Failsafes {
        inbound: Vec::new(),
        outbound: Vec::new(),
    };
    let ev = Evaluator::new(&off);
    let mut out = Vec::new();
    let ports = checked_ports(model, management);
    for (i, ep) in off.endpoints.iter().enumerate() {
        if ep.kind != EndpointKind::Host {
            continue;
        }
        for &(direction, f, failsafe) in &ports {
            let v6 = f.net.as_ref().is_some_and(|n| n.addr().is_ipv6());
            let peer = sample_peer(f.net.as_ref(), v6);
            let local = ep
                .ips
                .iter()
                .copied()
                .find(|ip| ip.is_ipv6() == v6)
                .unwrap_or(if v6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
            let packet = Packet::with_ports(f.protocol, crate::eval::EPHEMERAL_PORT, f.port);
            for set in [PolicySet::Enforced, PolicySet::Pending] {
                let end = ev.evaluate_end(set, i, direction, peer, local, &packet);
                if end.action != Verdict::Deny {
                    continue;
                }
                let Some(denied_by) = denied_by(&end.decided_by) else {
                    continue;
                };
                let w = LockoutWarning {
                    endpoint: ep.key(),
                    direction,
                    protocol: f.protocol,
                    port: f.port,
                    peer,
                    set,
                    denied_by,
                    failsafe,
                };
                // A pending-set warning that repeats the enforced one adds nothing.
                if set == PolicySet::Pending && out.iter().any(|o| repeats(o, &w)) {
                    continue;
                }
                out.push(w);
            }
        }
    }
    out
}

/// The ports to check: (direction, port, whether a failsafe entry covers it).
fn checked_ports<'a>(
    model: &'a Model,
    management: &'a [FailsafePort],
) -> Vec<(Direction, &'a FailsafePort, bool)> {
    let inbound = model
        .failsafes
        .inbound
        .iter()
        .map(|f| (Direction::Ingress, f, true));
    let outbound = model
        .failsafes
        .outbound
        .iter()
        .map(|f| (Direction::Egress, f, true));
    let mgmt = management.iter().map(|f| {
        let covered = model
            .failsafes
            .inbound
            .iter()
            .any(|g| g.protocol == f.protocol && g.port == f.port && g.net.is_none());
        (Direction::Ingress, f, covered)
    });
    inbound.chain(outbound).chain(mgmt).collect()
}

/// What denied the traffic, as the warning says it; None for a failsafe.
fn denied_by(decided_by: &DecidedBy) -> Option<String> {
    Some(match decided_by {
        DecidedBy::PolicyRule { policy, rule, .. } => format!("{policy} rule {rule}"),
        DecidedBy::EndOfTier { tier, policy } => {
            format!("the end of tier {tier} (last policy {policy})")
        }
        DecidedBy::ProfileRule { profile, rule } => format!("profile {profile} rule {rule}"),
        DecidedBy::NoMatch => {
            "the host endpoint's default deny (no policy or profile allows it)".into()
        }
        DecidedBy::Failsafe { .. } => return None,
    })
}

/// Whether `b` says what `a` already says (same port, same cause).
fn repeats(a: &LockoutWarning, b: &LockoutWarning) -> bool {
    a.endpoint == b.endpoint
        && a.direction == b.direction
        && a.port == b.port
        && a.protocol == b.protocol
        && a.denied_by == b.denied_by
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ir::Protocol;
    use crate::testkit::ir::{failsafe, net};

    #[test]
    fn config_parses_and_defaults() {
        let c = AgentConfig::parse(
            "failsafeInbound:\n- {protocol: tcp, port: 2222, net: 10.0.0.0/8}\n",
        )
        .unwrap();
        let f = c.failsafes().unwrap();
        assert_eq!(f.inbound.len(), 1);
        assert_eq!(f.inbound[0].port, 2222);
        assert_eq!(f.inbound[0].net, Some("10.0.0.0/8".parse().unwrap()));
        assert_eq!(f.outbound, Failsafes::default().outbound);
        let bad = AgentConfig::parse("failsafeOutbound:\n- {protocol: icmp, port: 1}\n").unwrap();
        assert!(bad.failsafes().is_err());
    }

    /// What is wrong with a config file, with its line.
    #[test]
    fn config_errors_name_the_line() {
        let e =
            AgentConfig::parse("failsafeInbound:\n- protocol: tcp\n  port: http\n").unwrap_err();
        assert_eq!(e.0, 3, "{e:?}");
        assert!(e.1.starts_with("failsafeInbound[0].port: "), "{e:?}");
        let e = AgentConfig::parse("failsafeInbound: []\ntypo: 1\n").unwrap_err();
        assert!(e.1.contains("unknown field `typo`"), "{e:?}");
        assert_eq!(AgentConfig::parse("# nothing\n").unwrap_err().0, 1);
        assert_eq!(
            AgentConfig::parse("failsafeInbound: []\n---\nfailsafeOutbound: []\n")
                .unwrap_err()
                .0,
            3
        );
        assert!(AgentConfig::parse("failsafeInbound: [\n").is_err());
    }

    const HOST: &str = r#"
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels: {role: node}
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.168.0.1]
"#;

    fn model(policies: &str) -> Model {
        let text = format!("{HOST}---\n{policies}");
        let loaded =
            crate::model::load::load_sources(&[(std::path::PathBuf::from("t.yaml"), text)]);
        assert!(
            loaded
                .diagnostics
                .iter()
                .all(|d| d.severity != crate::model::Severity::Error),
            "{:?}",
            loaded.diagnostics
        );
        loaded.model
    }

    #[test]
    fn a_deny_all_on_the_host_names_the_policy_for_each_failsafe_port() {
        let mut m = model(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-lockdown}
spec:
  selector: role == 'node'
  types: [Ingress, Egress]
  ingress:
  - action: Deny
  egress:
  - action: Allow
    protocol: UDP
    destination: {ports: [53]}
"#,
        );
        m.failsafes.inbound = vec![failsafe(Protocol::TCP, 22, Some(net("10.0.0.0/8")))];
        m.failsafes.outbound = vec![
            failsafe(Protocol::UDP, 53, None),
            failsafe(Protocol::TCP, 6443, None),
        ];
        let mgmt = [failsafe(Protocol::TCP, 9091, None)];
        let w = check(&m, &mgmt);
        let text: Vec<String> = w.iter().map(|w| w.to_string()).collect();
        assert_eq!(w.len(), 3, "{text:#?}");
        assert!(
            text[0].contains("inbound tcp/22 from 10.0.0.0"),
            "{text:#?}"
        );
        assert!(text[0].contains("gnp:host-lockdown rule 0"), "{text:#?}");
        assert!(text[0].contains("only the failsafe port keeps it open"));
        // Outbound DNS is allowed by the policy: no warning; 6443 hits the end of tier.
        assert!(text[1].contains("outbound tcp/6443"), "{text:#?}");
        assert!(text[1].contains("end of tier default"), "{text:#?}");
        assert!(text[2].contains("inbound tcp/9091"), "{text:#?}");
        assert!(text[2].contains("NOT failsafe"), "{text:#?}");
    }

    #[test]
    fn workloads_and_allowed_ports_give_no_warning() {
        let m = model(
            r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: host-open}
spec:
  selector: role == 'node'
  types: [Ingress, Egress]
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
"#,
        );
        assert_eq!(check(&m, &[]), vec![]);
    }
}

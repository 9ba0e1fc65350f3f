//! TEMPORARY STUB (branch `daemon`): the real compiler lands on branch `compile`
//! with this same API and replaces this file at merge. It lets every endpoint
//! allow everything in both tables so the daemon can be exercised; it
//! implements no policy.
use agent_common::{action, Verdict, POLICY_NONE};

use crate::dataplane::{PeerMatch, PortMatch, RuleEntry, TableSet};
use crate::dataplane::tables::Table;
use crate::model::ir::{Direction, EndpointKind, Model, PolicyId};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("{0}")]
    Other(String),
}

#[derive(Clone, Debug, Default)]
pub struct CompileStats {
    pub peer_classes: usize,
    pub rule_entries: usize,
}

#[derive(Clone, Debug)]
pub struct CompiledEndpoint {
    pub endpoint_index: usize,
    pub id: u32,
    pub interface: String,
    pub has_staged: bool,
    pub host: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Compiled {
    pub tables: TableSet,
    pub endpoints: Vec<CompiledEndpoint>,
    pub policies: Vec<PolicyId>,
    pub tiers: Vec<String>,
    pub stats: CompileStats,
}

impl Compiled {
    pub fn describe(&self, v: &Verdict) -> String {
        let act = if v.action == action::ALLOW { "allow" } else { "deny" };
        match self.policies.get(v.policy as usize) {
            Some(p) if v.policy != POLICY_NONE => {
                let tier = self.tiers.get(v.tier as usize).map(String::as_str).unwrap_or("?");
                format!("0|{tier}|{p}|{act}|{}", v.rule)
            }
            _ => format!("0|__PROFILE__|pro:__NO_MATCH__|{act}|-1"),
        }
    }
}

pub fn compile(model: &Model) -> Result<Compiled, CompileError> {
    let mut out = Compiled {
        policies: model.policies.iter().map(|p| p.id.clone()).collect(),
        tiers: model.tiers.iter().map(|t| t.name.clone()).collect(),
        ..Default::default()
    };
    let staged = model.policies.iter().any(|p| p.id.kind.is_staged());
    for (i, e) in model.endpoints.iter().enumerate() {
        let Some(interface) = e.interface.clone() else { continue };
        let id = i as u32 + 1;
        out.endpoints.push(CompiledEndpoint {
            endpoint_index: i,
            id,
            interface,
            has_staged: staged,
            host: e.kind == EndpointKind::Host,
        });
        for direction in [Direction::Ingress, Direction::Egress] {
            for table in [Table::Enforced, Table::Pending] {
                out.tables.rules.push(RuleEntry {
                    endpoint_id: id,
                    direction,
                    table,
                    peer: PeerMatch::Any,
                    protocol: None,
                    ports: PortMatch::Any,
                    verdict: Verdict {
                        action: action::ALLOW,
                        flags: 0,
                        tier: 0,
                        policy: POLICY_NONE,
                        rule: -1,
                    },
                });
            }
        }
    }
    out.stats.rule_entries = out.tables.rules.len();
    Ok(out)
}

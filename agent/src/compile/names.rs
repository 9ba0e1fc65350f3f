//! Verdict names: the userspace tables a kernel verdict's tier, policy and
//! profile indexes point into, the evaluator answer -> kernel verdict encoding,
//! and the Calico-style trace string of a kernel verdict.
use std::collections::BTreeSet;

use agent_common::{action, verdict_flags, Verdict, POLICY_NONE};
use foldhash::HashMap;

use super::{CompileError, Compiled, CompiledEndpoint};
use crate::eval::{policy_flow_log_name, DecidedBy, EndVerdict, NO_MATCH_PROFILE, PROFILE_TIER};
use crate::model::ir::{Model, PolicyId, Protocol};

/// Reserved values of `Verdict::tier` (policy tiers index [`Compiled::tiers`]).
pub mod tier_code {
    /// A host endpoint's failsafe port; `rule = protocol << 16 | port`.
    pub const FAILSAFE: u16 = 0xfffe;
    /// A profile rule; `policy` indexes `Compiled::profiles`.
    pub const PROFILE: u16 = 0xfffd;
    /// Nothing decided (no tier decided, no profile rule matched): deny.
    pub const NO_MATCH: u16 = 0xfffc;
    /// Tier indexes must stay below this.
    pub const FIRST_RESERVED: u16 = 0xfffc;
}

/// Name <-> index tables for verdicts.
#[derive(Clone, Debug)]
pub(super) struct Names {
    pub(super) policies: Vec<PolicyId>,
    pub(super) tiers: Vec<String>,
    pub(super) profiles: Vec<String>,
    policy_index: HashMap<PolicyId, u32>,
    tier_index: HashMap<String, u16>,
    profile_index: HashMap<String, u32>,
}

impl Names {
    pub(super) fn new(model: &Model) -> Result<Self, CompileError> {
        let policies: Vec<PolicyId> = model.policies.iter().map(|p| p.id.clone()).collect();
        let mut tiers: Vec<String> = model.tiers.iter().map(|t| t.name.clone()).collect();
        let extra: BTreeSet<&str> = model.policies.iter().map(|p| p.tier.as_str()).collect();
        let extra: Vec<String> = extra
            .into_iter()
            .filter(|t| !tiers.iter().any(|d| d == t))
            .map(str::to_owned)
            .collect();
        tiers.extend(extra);
        super::budget::check(
            || "*".into(),
            "tiers",
            tiers.len(),
            tier_code::FIRST_RESERVED as usize - 1,
        )?;
        let mut profiles: Vec<String> = model.profiles.iter().map(|p| p.name.clone()).collect();
        let mut named: foldhash::HashSet<&str> = profiles.iter().map(String::as_str).collect();
        let mut used = Vec::new();
        for e in &model.endpoints {
            for p in &e.profiles {
                if named.insert(p) {
                    used.push(p.clone());
                }
            }
        }
        profiles.extend(used);
        Ok(Names {
            policy_index: policies
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i as u32))
                .collect(),
            tier_index: tiers
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u16))
                .collect(),
            profile_index: profiles
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i as u32))
                .collect(),
            policies,
            tiers,
            profiles,
        })
    }

    /// The indexes a verdict would use for this policy, tier and profile (for
    /// the incremental compile's keys: a change of index changes entries).
    pub(super) fn policy_codes(&self, policy: &PolicyId, tier: &str) -> (u32, u16) {
        (
            self.policy_index
                .get(policy)
                .copied()
                .unwrap_or(POLICY_NONE),
            self.tier_index.get(tier).copied().unwrap_or(u16::MAX),
        )
    }

    pub(super) fn profile_code(&self, profile: &str) -> u32 {
        self.profile_index
            .get(profile)
            .copied()
            .unwrap_or(POLICY_NONE)
    }

    pub(super) fn verdict(&self, end: &EndVerdict) -> Verdict {
        let act = match end.action {
            crate::eval::Verdict::Allow => action::ALLOW,
            crate::eval::Verdict::Deny => action::DENY,
        };
        let v = |tier: u16, policy: u32, rule: i32| Verdict {
            action: act,
            flags: 0,
            tier,
            policy,
            rule,
        };
        let tier = |name: &str| self.tier_index.get(name).copied().unwrap_or(u16::MAX);
        let policy = |id: &PolicyId| self.policy_index.get(id).copied().unwrap_or(POLICY_NONE);
        match &end.decided_by {
            DecidedBy::Failsafe { protocol, port } => v(
                tier_code::FAILSAFE,
                POLICY_NONE,
                (i32::from(protocol.number()) << 16) | i32::from(*port),
            ),
            DecidedBy::PolicyRule {
                tier: t,
                policy: p,
                rule,
            } => v(tier(t), policy(p), *rule as i32),
            DecidedBy::EndOfTier { tier: t, policy: p } => v(tier(t), policy(p), -1),
            DecidedBy::ProfileRule { profile, rule } => v(
                tier_code::PROFILE,
                self.profile_index
                    .get(profile)
                    .copied()
                    .unwrap_or(POLICY_NONE),
                *rule as i32,
            ),
            DecidedBy::NoMatch => v(tier_code::NO_MATCH, POLICY_NONE, -1),
        }
    }
}

impl Compiled {
    /// The kernel verdict the tables hold for this evaluator answer.
    pub fn verdict_of(&self, end: &EndVerdict) -> Verdict {
        self.index.verdict(end)
    }

    /// The compiled endpoint with this `RuleKey::endpoint_id`.
    pub fn endpoint_by_id(&self, id: u32) -> Option<&CompiledEndpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// A kernel verdict in Calico's trace style:
    /// `<tier>|<kind>:<namespace>/<name>|<allow|deny|pass>|<rule>`, e.g.
    /// `default|gnp:allow-db|allow|0`, `default|np:prod/x|deny|-1` (end of tier),
    /// `__PROFILE__|pro:kns.prod|allow|0`, `__PROFILE__|pro:__NO_MATCH__|deny|-1`,
    /// `__FAILSAFE__|failsafe:tcp/22|allow|-1`, `__NO_ENTRY__|deny`.
    pub fn describe(&self, v: &Verdict) -> String {
        let act = if v.action == action::ALLOW {
            "allow"
        } else {
            "deny"
        };
        if v.flags & verdict_flags::NO_ENTRY != 0 {
            return format!("__NO_ENTRY__|{act}");
        }
        match v.tier {
            tier_code::FAILSAFE => {
                let protocol = (v.rule >> 16) as u8;
                let port = (v.rule & 0xffff) as u16;
                format!(
                    "__FAILSAFE__|failsafe:{}/{port}|{act}|-1",
                    protocol_name(protocol)
                )
            }
            tier_code::PROFILE => {
                let name = self
                    .profiles
                    .get(v.policy as usize)
                    .map(String::as_str)
                    .unwrap_or("?");
                format!("{PROFILE_TIER}|pro:{name}|{act}|{}", v.rule)
            }
            tier_code::NO_MATCH => format!("{PROFILE_TIER}|pro:{NO_MATCH_PROFILE}|{act}|-1"),
            t => {
                let tier = self
                    .tiers
                    .get(t as usize)
                    .map(String::as_str)
                    .unwrap_or("?");
                let policy = self
                    .policies
                    .get(v.policy as usize)
                    .map(policy_flow_log_name)
                    .unwrap_or_else(|| "?".into());
                format!("{tier}|{policy}|{act}|{}", v.rule)
            }
        }
    }
}

/// Calico's name in lower case (`icmpv6`), or the number.
fn protocol_name(p: u8) -> String {
    Protocol::from_number(p).to_string().to_ascii_lowercase()
}

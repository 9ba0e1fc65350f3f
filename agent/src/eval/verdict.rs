//! What the evaluator answers: packets and flows asked about, verdicts,
//! Calico-format traces, and the tiers that apply to an endpoint.
use std::fmt;
use std::net::IpAddr;

use crate::model::ir::{
    Direction, Endpoint, EndpointKind, Policy, PolicyId, Protocol, TierDefault,
};

/// The tier name Calico gives profiles in traces.
pub const PROFILE_TIER: &str = "__PROFILE__";
/// The trace kind code of profiles.
pub const PROFILE_KIND_CODE: &str = "pro";
/// The pseudo-profile Calico records when nothing decided (`pro:__NO_MATCH__`).
pub const NO_MATCH_PROFILE: &str = "__NO_MATCH__";

/// Which policies are in force: what happens now, or what would happen if every
/// staged policy were promoted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySet {
    Enforced,
    Pending,
}

/// The first packet of a connection, as far as policy can see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Packet {
    pub protocol: Protocol,
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
}

impl Packet {
    /// A TCP packet to `dst_port` from an ephemeral source port.
    pub fn tcp(dst_port: u16) -> Self {
        Self::with_ports(Protocol::TCP, EPHEMERAL_PORT, dst_port)
    }
    /// A UDP packet to `dst_port` from an ephemeral source port.
    pub fn udp(dst_port: u16) -> Self {
        Self::with_ports(Protocol::UDP, EPHEMERAL_PORT, dst_port)
    }
    pub fn with_ports(protocol: Protocol, src_port: u16, dst_port: u16) -> Self {
        Packet {
            src_port: Some(src_port),
            dst_port: Some(dst_port),
            ..Packet::without_ports(protocol)
        }
    }
    /// An ICMP (or ICMPv6, by `protocol`) packet of this type and code.
    pub fn icmp(protocol: Protocol, icmp_type: u8, icmp_code: u8) -> Self {
        Packet {
            icmp_type: Some(icmp_type),
            icmp_code: Some(icmp_code),
            ..Packet::without_ports(protocol)
        }
    }
    /// A packet of `protocol` with neither ports nor an ICMP type.
    pub fn without_ports(protocol: Protocol) -> Self {
        Packet {
            protocol,
            src_port: None,
            dst_port: None,
            icmp_type: None,
            icmp_code: None,
        }
    }
}

/// The source port [`Packet::tcp`] and [`Packet::udp`] use.
pub const EPHEMERAL_PORT: u16 = 40000;

/// What a packet gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// The action a trace entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceAction {
    Allow,
    Deny,
    Pass,
}

impl fmt::Display for TraceAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TraceAction::Allow => "allow",
            TraceAction::Deny => "deny",
            TraceAction::Pass => "pass",
        })
    }
}

/// One step of a policy trace: the tier (or profile) that acted, and how.
/// Displays (and serializes) as Calico's flow-log string
/// `<index>|<tier>|<kind>:<namespace>/<name>|<allow|deny|pass>|<rule>`
/// (`<kind>:<name>` for cluster-scoped policies and profiles), rule `-1` for a
/// tier's end-of-tier action. `<index>` counts the entries of one trace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceEntry {
    pub index: usize,
    pub tier: String,
    /// `gnp np knp sgnp snp sknp pro`.
    pub kind_code: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub action: TraceAction,
    pub rule: i64,
}

/// The rule number of an end-of-tier entry.
pub const END_OF_TIER_RULE: i64 = -1;

impl fmt::Display for TraceEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}|{}",
            self.index,
            self.tier,
            flow_log_name(self.kind_code, self.namespace.as_deref(), &self.name),
            self.action,
            self.rule
        )
    }
}

pub use crate::model::ir::flow_log_name;

/// [`flow_log_name`] of a policy, with the kind code it has in traces
/// (`PolicyId`'s Display).
pub fn policy_flow_log_name(id: &PolicyId) -> String {
    id.to_string()
}

impl serde::Serialize for TraceEntry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What decided an end's verdict.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum DecidedBy {
    /// A host endpoint's failsafe port, before any policy.
    Failsafe { protocol: Protocol, port: u16 },
    /// An Allow or Deny rule of a policy.
    PolicyRule {
        tier: String,
        policy: PolicyId,
        rule: usize,
    },
    /// A tier's default Deny (rule `-1`), attributed like Calico to the tier's
    /// last applicable policy.
    EndOfTier { tier: String, policy: PolicyId },
    /// A profile rule: Allow, Deny, or Pass (which counts as deny).
    ProfileRule { profile: String, rule: usize },
    /// Nothing decided after the tiers and profiles (or there were none): deny.
    NoMatch,
}

/// The verdict of one end (one endpoint, one direction) and how it was reached.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EndVerdict {
    /// `namespace/name` of a workload, `name` of a host endpoint.
    pub endpoint: String,
    pub direction: Direction,
    pub action: Verdict,
    pub decided_by: DecidedBy,
    pub trace: Vec<TraceEntry>,
}

/// A tier as it applies to one endpoint in one direction: the policies that
/// select the endpoint and have that type, in order.
#[derive(Clone, Debug)]
pub struct ApplicableTier<'m> {
    pub phase: Phase,
    pub name: String,
    pub default_action: TierDefault,
    pub policies: Vec<&'m Policy>,
}

/// When a policy is consulted. Host endpoints run untracked (`doNotTrack`)
/// policies first, then (ingress only) `preDNAT` policies, then normal policy;
/// in the first two an Allow or Deny is final and a tier without a decision
/// just passes on (felix: those tiers end with Pass). Workload endpoints only
/// have normal policy (the other kinds are host-endpoint only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Untracked,
    PreDnat,
    Normal,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Untracked, Phase::PreDnat, Phase::Normal];

    pub fn of(policy: &Policy) -> Phase {
        if policy.do_not_track {
            Phase::Untracked
        } else if policy.pre_dnat {
            Phase::PreDnat
        } else {
            Phase::Normal
        }
    }

    pub(super) fn exists_for(self, endpoint: &Endpoint, direction: Direction) -> bool {
        match self {
            Phase::Normal => true,
            Phase::Untracked => endpoint.kind == EndpointKind::Host,
            Phase::PreDnat => {
                endpoint.kind == EndpointKind::Host && direction == Direction::Ingress
            }
        }
    }
}

/// A connection attempt: the first packet from `src` to `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub packet: Packet,
}

/// A flow's verdict under one policy set: both ends must allow; an end that
/// is not a policed endpoint allows.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Outcome {
    pub action: Verdict,
    /// The source endpoint's egress, if the source is an endpoint.
    pub egress: Option<EndVerdict>,
    /// The destination endpoint's ingress, if the destination is an endpoint.
    pub ingress: Option<EndVerdict>,
}

/// A flow judged by the enforced set and by the pending (all staged promoted) set.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FlowVerdict {
    pub flow: Flow,
    pub source_endpoint: Option<String>,
    pub destination_endpoint: Option<String>,
    pub enforced: Outcome,
    pub pending: Outcome,
}

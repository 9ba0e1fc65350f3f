//! The validated, normalised policy model that every later stage consumes
//! (evaluator, compiler, matrix). Built from the YAML resources by
//! `model::lower` and `model::assemble`; nothing downstream looks at raw resources.
//!
//! Normalisation follows Calico's calculation graph (felix/calc): scoping that
//! the YAML expresses with several fields is folded into one selector over an
//! endpoint's *full* label set (see [`Endpoint::labels`]):
//! - a namespaced policy's `selector` is ANDed with
//!   `projectcalico.org/namespace == '<ns>'`;
//! - `namespaceSelector: X` becomes X over the `pcns.`-prefixed namespace labels;
//!   `global()` becomes `!has(projectcalico.org/namespace)`;
//! - `serviceAccountSelector` / `serviceAccounts.selector` become selectors over
//!   `pcsa.`-prefixed labels, `serviceAccounts.names` becomes
//!   `projectcalico.org/serviceaccount in {..}`.
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::selector::Selector;

pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
pub const NAMESPACE_LABEL_PREFIX: &str = "pcns.";
pub const SERVICE_ACCOUNT_LABEL_PREFIX: &str = "pcsa.";

pub use crate::selector::Labels;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Pass,
    Log,
}

/// What a tier does to traffic that reaches its end without a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TierDefault {
    Deny,
    Pass,
}

/// Policy kinds, with Calico's trace codes (`gnp np knp sgnp snp sknp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum PolicyKind {
    GlobalNetworkPolicy,
    NetworkPolicy,
    KubernetesNetworkPolicy,
    StagedGlobalNetworkPolicy,
    StagedNetworkPolicy,
    StagedKubernetesNetworkPolicy,
}

impl PolicyKind {
    pub fn code(self) -> &'static str {
        match self {
            Self::GlobalNetworkPolicy => "gnp",
            Self::NetworkPolicy => "np",
            Self::KubernetesNetworkPolicy => "knp",
            Self::StagedGlobalNetworkPolicy => "sgnp",
            Self::StagedNetworkPolicy => "snp",
            Self::StagedKubernetesNetworkPolicy => "sknp",
        }
    }
    pub fn is_staged(self) -> bool {
        matches!(
            self,
            Self::StagedGlobalNetworkPolicy
                | Self::StagedNetworkPolicy
                | Self::StagedKubernetesNetworkPolicy
        )
    }
    /// The enforced kind a staged kind promotes to (itself for enforced kinds).
    pub fn enforced(self) -> Self {
        match self {
            Self::StagedGlobalNetworkPolicy => Self::GlobalNetworkPolicy,
            Self::StagedNetworkPolicy => Self::NetworkPolicy,
            Self::StagedKubernetesNetworkPolicy => Self::KubernetesNetworkPolicy,
            k => k,
        }
    }
    /// The YAML `kind:` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GlobalNetworkPolicy => "GlobalNetworkPolicy",
            Self::NetworkPolicy => "NetworkPolicy",
            Self::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
            Self::StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            Self::StagedNetworkPolicy => "StagedNetworkPolicy",
            Self::StagedKubernetesNetworkPolicy => "StagedKubernetesNetworkPolicy",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub enum StagedAction {
    #[default]
    Set,
    Delete,
    Learn,
    Ignore,
}

/// Identity of a policy: kind, namespace (None for global kinds), name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PolicyId {
    pub kind: PolicyKind,
    pub namespace: Option<String>,
    pub name: String,
}

impl PolicyId {
    /// The identity this policy has once promoted: a staged kind becomes its
    /// enforced kind, same namespace and name (the enforced namesake it replaces).
    pub fn promoted(&self) -> PolicyId {
        PolicyId {
            kind: self.kind.enforced(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for PolicyId {
    /// As in Calico's flow-log traces: `np:<namespace>/<name>` for namespaced
    /// kinds, `gnp:<name>` (no slash) for cluster-scoped ones.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&flow_log_name(
            self.kind.code(),
            self.namespace.as_deref(),
            &self.name,
        ))
    }
}

/// Calico's flow-log name of a policy or profile: `np:ns/name` when namespaced,
/// `gnp:name` / `pro:kns.ns` when not (calico lma/pkg/api policy hits; note
/// there is no `/` for cluster-scoped kinds).
pub fn flow_log_name(kind_code: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind_code}:{ns}/{name}"),
        None => format!("{kind_code}:{name}"),
    }
}

/// An inclusive port interval. A single port is `first == last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum PortMatch {
    Range(PortRange),
    /// Resolved against the named ports of the endpoint the rule is matched for.
    Named(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

pub use super::protocol::Protocol;

/// One side (source or destination) of a rule. Every present field must
/// match; a list matches when any entry matches; `not_*` when none does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityRule {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    /// Matches the IPs of known endpoints and network sets whose labels match.
    pub selector: Option<Selector>,
    /// Matches every IP that is not an IP of a matching endpoint or network set
    /// (so it also matches traffic from outside).
    pub not_selector: Option<Selector>,
    pub ports: Vec<PortMatch>,
    pub not_ports: Vec<PortMatch>,
    /// Calico's `services` match (name, namespace defaulted). Resolved by
    /// `model::assemble` from the Service's backends: their addresses go into
    /// `nets` (none: `not_nets` holds both roots, so nothing matches), and on
    /// a rule's destination `service_ports` holds the backend sets, whose
    /// (address, protocol, port) a packet must hit, as felix's IP set of
    /// `ip,proto:port` members does.
    pub services: Option<ServiceRef>,
    pub service_ports: Option<Vec<BackendSet>>,
}

/// A Service named by a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Backends that share their ports: one EndpointSlice, or one subset of a v1
/// Endpoints object. Every address serves every (protocol, port).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct BackendSet {
    pub addresses: Vec<IpAddr>,
    /// (protocol, port).
    pub ports: Vec<(Protocol, u16)>,
}

impl BackendSet {
    /// Whether a packet to `ip`, `protocol`, `port` reaches one of these backends.
    pub fn serves(&self, ip: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.addresses.contains(&ip) && self.ports.contains(&(protocol, port))
    }
}

/// A Kubernetes Service: the addresses clients connect to (its frontends) and
/// the backends its EndpointSlices (or Endpoints) list.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// ClusterIPs, externalIPs and LoadBalancer ingress IPs.
    pub frontends: Vec<IpAddr>,
    /// Whether a Service document defines it (backends may come without one).
    pub defined: bool,
    pub backends: Vec<BackendSet>,
}

impl Service {
    pub fn key(&self) -> ServiceRef {
        ServiceRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    pub action: Action,
    /// 4 or 6: the rule does not exist for the other family.
    pub ip_version: Option<u8>,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

impl Rule {
    /// A rule that matches every packet and does `action`.
    pub fn matching_all(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub id: PolicyId,
    pub tier: String,
    /// None sorts after every number (Calico: unset order = infinity).
    pub order: Option<f64>,
    /// Full endpoint selector, scoping already folded in (see module docs).
    pub selector: Selector,
    pub ingress_type: bool,
    pub egress_type: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Only for staged kinds.
    pub staged_action: Option<StagedAction>,
    pub do_not_track: bool,
    pub pre_dnat: bool,
    pub apply_on_forward: bool,
}

impl Policy {
    pub fn applies_in(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.ingress_type,
            Direction::Egress => self.egress_type,
        }
    }
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    pub order: Option<f64>,
    pub default_action: TierDefault,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Profile {
    pub name: String,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
    /// Labels the profile applies to endpoints that use it (`labelsToApply`).
    pub labels_to_apply: Labels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum EndpointKind {
    Workload,
    Host,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NamedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub kind: EndpointKind,
    /// Workload endpoints only.
    pub namespace: Option<String>,
    pub name: String,
    /// The full label set selectors see: the endpoint's own labels, plus
    /// `projectcalico.org/namespace`, `pcns.*` namespace labels,
    /// `projectcalico.org/serviceaccount`, `pcsa.*` service-account labels and
    /// profile `labelsToApply`, as Calico builds it.
    pub labels: Labels,
    /// Host-side interface (workload) or the host interface (host endpoint); `*` for all.
    pub interface: Option<String>,
    pub ips: Vec<IpAddr>,
    pub named_ports: Vec<NamedPort>,
    /// Profiles in order; a workload in namespace N without explicit profiles gets `kns.N`.
    pub profiles: Vec<String>,
    /// The pod a workload endpoint belongs to (`spec.pod`, or the Pod's name):
    /// users address it as `namespace/pod`, whatever the WorkloadEndpoint is
    /// called (`node1-k8s-web-eth0`). None when unset or shared with another
    /// endpoint's address (then the WorkloadEndpoint name is used).
    pub pod: Option<String>,
    /// The node a workload endpoint runs on (`spec.node`); None: this node.
    pub node: Option<String>,
}

impl Endpoint {
    /// How the endpoint is addressed and shown: `namespace/pod` for workloads
    /// (`namespace/name` without a pod), `name` for host endpoints.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.pod.as_deref().unwrap_or(&self.name)),
            None => self.name.clone(),
        }
    }

    /// `namespace/name` with the WorkloadEndpoint's own name (accepted too).
    pub fn resource_key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkSet {
    /// None for GlobalNetworkSet.
    pub namespace: Option<String>,
    pub name: String,
    /// Full label set (a namespaced set also has `projectcalico.org/namespace` and `pcns.*`).
    pub labels: Labels,
    pub nets: Vec<IpNet>,
}

/// A failsafe port: traffic of this protocol and port (optionally only to/from
/// `net`) on a host endpoint is allowed before any policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct FailsafePort {
    pub protocol: Protocol,
    pub port: u16,
    pub net: Option<IpNet>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Failsafes {
    pub inbound: Vec<FailsafePort>,
    pub outbound: Vec<FailsafePort>,
}

impl Default for Failsafes {
    /// Calico's defaults (felix FailsafeInboundHostPorts / FailsafeOutboundHostPorts).
    fn default() -> Self {
        let p = |protocol, port| FailsafePort {
            protocol,
            port,
            net: None,
        };
        const TCP: Protocol = Protocol::TCP;
        const UDP: Protocol = Protocol::UDP;
        Self {
            inbound: vec![
                p(TCP, 22),
                p(UDP, 68),
                p(TCP, 179),
                p(TCP, 2379),
                p(TCP, 2380),
                p(TCP, 5473),
                p(TCP, 6443),
                p(TCP, 6666),
                p(TCP, 6667),
            ],
            outbound: vec![
                p(UDP, 53),
                p(UDP, 67),
                p(TCP, 179),
                p(TCP, 2379),
                p(TCP, 2380),
                p(TCP, 5473),
                p(TCP, 6443),
                p(TCP, 6666),
                p(TCP, 6667),
            ],
        }
    }
}

/// Everything the evaluator and compiler need, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// Includes the built-in tiers (`kube-admin`, `default`, `kube-baseline`)
    /// unless the datastore redefines them.
    pub tiers: Vec<Tier>,
    /// Enforced and staged policies alike; `Policy::id.kind` tells which.
    pub policies: Vec<Policy>,
    pub profiles: Vec<Profile>,
    pub endpoints: Vec<std::sync::Arc<Endpoint>>,
    pub network_sets: Vec<NetworkSet>,
    pub failsafes: Failsafes,
    /// Names of the Namespace documents loaded.
    pub namespaces: std::collections::BTreeSet<String>,
    /// Services (and backends of Services without a document), by namespace and name.
    pub services: Vec<Service>,
}

impl Model {
    /// Every rule of every policy (enforced and staged) and profile, both directions.
    pub fn all_rules(&self) -> impl Iterator<Item = &Rule> {
        let policies = self
            .policies
            .iter()
            .flat_map(|p| p.ingress.iter().chain(&p.egress));
        let profiles = self
            .profiles
            .iter()
            .flat_map(|p| p.ingress.iter().chain(&p.egress));
        policies.chain(profiles)
    }

    /// Every Service frontend address (ClusterIPs, external and LoadBalancer IPs).
    pub fn service_frontends(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self
            .services
            .iter()
            .flat_map(|s| s.frontends.iter().copied())
            .collect();
        all.sort();
        all.dedup();
        all
    }
}

//! Typed resources, field for field as Calico's and Kubernetes' JSON tags.
//! Unknown fields are errors (`deny_unknown_fields`); enumerations stay strings
//! here so lowering (`super::lower`) can say which values are accepted.
use std::collections::BTreeMap;

use serde::Deserialize;

mod kind;
pub use kind::{
    KubeObject, ParseError, Resource, ResourceKind, API_CALICO, API_DISCOVERY,
    API_DISCOVERY_V1BETA1, API_K8S_CORE, API_K8S_NETWORKING,
};

pub type StringMap = BTreeMap<String, String>;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: StringMap,
    #[serde(default)]
    pub annotations: StringMap,
    // Server-set fields that exported objects carry; accepted and ignored.
    pub uid: Option<serde_json::Value>,
    pub resource_version: Option<serde_json::Value>,
    pub creation_timestamp: Option<serde_json::Value>,
    pub generation: Option<serde_json::Value>,
    pub generate_name: Option<serde_json::Value>,
    pub finalizers: Option<serde_json::Value>,
    pub owner_references: Option<serde_json::Value>,
    pub managed_fields: Option<serde_json::Value>,
}

/// A port or protocol: a number or a string.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for IntOrString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(i) => write!(f, "{i}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcmpFields {
    #[serde(rename = "type")]
    pub icmp_type: Option<i64>,
    pub code: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub selector: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceMatch {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(default)]
    pub nets: Vec<String>,
    #[serde(default)]
    pub not_nets: Vec<String>,
    #[serde(default)]
    pub selector: String,
    #[serde(default)]
    pub not_selector: String,
    #[serde(default)]
    pub namespace_selector: String,
    #[serde(default)]
    pub ports: Vec<IntOrString>,
    #[serde(default)]
    pub not_ports: Vec<IntOrString>,
    pub service_accounts: Option<ServiceAccountMatch>,
    pub services: Option<ServiceMatch>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleMetadata {
    #[serde(default)]
    pub annotations: StringMap,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub action: String,
    pub ip_version: Option<i64>,
    pub protocol: Option<IntOrString>,
    pub not_protocol: Option<IntOrString>,
    pub icmp: Option<IcmpFields>,
    #[serde(rename = "notICMP")]
    pub not_icmp: Option<IcmpFields>,
    #[serde(default)]
    pub source: EntityRule,
    #[serde(default)]
    pub destination: EntityRule,
    /// Application-layer match (needs an L7 proxy); rejected by validation.
    pub http: Option<serde_json::Value>,
    pub metadata: Option<RuleMetadata>,
}

/// The spec of every Calico policy kind: GlobalNetworkPolicy, NetworkPolicy
/// and their staged kinds. The fields only cluster-scoped kinds have are
/// refused in namespaced kinds as unknown fields (see [`ResourceKind::parse`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicySpec {
    pub tier: Option<String>,
    pub order: Option<f64>,
    #[serde(default)]
    pub selector: String,
    /// Cluster-scoped kinds only.
    pub namespace_selector: Option<String>,
    #[serde(default)]
    pub service_account_selector: String,
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub ingress: Vec<Rule>,
    #[serde(default)]
    pub egress: Vec<Rule>,
    /// Cluster-scoped kinds only.
    pub do_not_track: Option<bool>,
    /// Cluster-scoped kinds only.
    #[serde(rename = "preDNAT")]
    pub pre_dnat: Option<bool>,
    /// Cluster-scoped kinds only.
    pub apply_on_forward: Option<bool>,
    #[serde(default)]
    pub performance_hints: Vec<String>,
    /// Staged kinds only.
    pub staged_action: Option<String>,
}

/// The fields of a namespaced policy's spec, as serde names them in
/// "unknown field" errors.
const NAMESPACED_POLICY_FIELDS: &[&str] = &[
    "tier",
    "order",
    "selector",
    "serviceAccountSelector",
    "types",
    "ingress",
    "egress",
    "performanceHints",
    "stagedAction",
];

impl PolicySpec {
    /// The first field set that only cluster-scoped kinds have (in the order
    /// serde meets them), as `(field, message)` of an unknown-field error.
    fn cluster_only_field(&self) -> Option<(String, String)> {
        let set = [
            ("applyOnForward", self.apply_on_forward.is_some()),
            ("doNotTrack", self.do_not_track.is_some()),
            ("namespaceSelector", self.namespace_selector.is_some()),
            ("preDNAT", self.pre_dnat.is_some()),
        ];
        let (field, _) = set.into_iter().find(|(_, set)| *set)?;
        let message =
            <serde_json::Error as serde::de::Error>::unknown_field(field, NAMESPACED_POLICY_FIELDS);
        Some((format!("spec.{field}"), message.to_string()))
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: StringMap,
    #[serde(default)]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpBlock {
    #[serde(default)]
    pub cidr: String,
    #[serde(default)]
    pub except: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPeer {
    pub pod_selector: Option<LabelSelector>,
    pub namespace_selector: Option<LabelSelector>,
    pub ip_block: Option<IpBlock>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPort {
    pub protocol: Option<String>,
    pub port: Option<IntOrString>,
    pub end_port: Option<i64>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sIngressRule {
    #[serde(default)]
    pub from: Vec<K8sPeer>,
    #[serde(default)]
    pub ports: Vec<K8sPort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sEgressRule {
    #[serde(default)]
    pub to: Vec<K8sPeer>,
    #[serde(default)]
    pub ports: Vec<K8sPort>,
}

/// networking.k8s.io/v1 NetworkPolicy spec (and StagedKubernetesNetworkPolicy's).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct K8sPolicySpec {
    #[serde(default)]
    pub pod_selector: LabelSelector,
    #[serde(default)]
    pub policy_types: Vec<String>,
    #[serde(default)]
    pub ingress: Vec<K8sIngressRule>,
    #[serde(default)]
    pub egress: Vec<K8sEgressRule>,
    /// StagedKubernetesNetworkPolicy only.
    pub staged_action: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TierSpec {
    pub order: Option<f64>,
    pub default_action: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileSpec {
    #[serde(default)]
    pub ingress: Vec<Rule>,
    #[serde(default)]
    pub egress: Vec<Rule>,
    #[serde(default)]
    pub labels_to_apply: StringMap,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPort {
    #[serde(default)]
    pub name: String,
    pub protocol: Option<IntOrString>,
    #[serde(default)]
    pub port: i64,
    #[serde(default)]
    pub host_port: i64,
    #[serde(rename = "hostIP", default)]
    pub host_ip: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    pub orchestrator: Option<String>,
    pub workload: Option<String>,
    pub node: Option<String>,
    #[serde(rename = "containerID")]
    pub container_id: Option<String>,
    pub pod: Option<String>,
    pub endpoint: Option<String>,
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub ip_networks: Vec<String>,
    #[serde(rename = "ipNATs")]
    pub ip_nats: Option<serde_json::Value>,
    #[serde(rename = "ipv4Gateway")]
    pub ipv4_gateway: Option<String>,
    #[serde(rename = "ipv6Gateway")]
    pub ipv6_gateway: Option<String>,
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub interface_name: String,
    pub mac: Option<String>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
    #[serde(default)]
    pub allow_spoofed_source_prefixes: Vec<String>,
    pub qos_controls: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostEndpointSpec {
    pub node: Option<String>,
    #[serde(default)]
    pub interface_name: String,
    #[serde(rename = "expectedIPs", default)]
    pub expected_ips: Vec<String>,
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSetSpec {
    #[serde(default)]
    pub nets: Vec<String>,
    /// GlobalNetworkSet only (DNS policy); rejected by validation.
    pub allowed_egress_domains: Option<serde_json::Value>,
}

/// The envelope every document shares.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Object<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    /// Kubernetes objects may carry a status; ignored.
    pub status: Option<serde_json::Value>,
}

/// v1 ServiceAccount: only its labels matter (`pcsa.*`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceAccountObject {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub secrets: Option<serde_json::Value>,
    pub image_pull_secrets: Option<serde_json::Value>,
    pub automount_service_account_token: Option<bool>,
}

//! Which kind a document is (its `apiVersion` and `kind`) and reading it into
//! that kind's type: Calico's and Kubernetes' policy documents into the specs
//! of [`super`], Services and their endpoints into k8s-openapi's types.
use super::{
    HostEndpointSpec, K8sPolicySpec, NetworkSetSpec, Object, ObjectMeta, PolicySpec, ProfileSpec,
    ServiceAccountObject, TierSpec, WorkloadEndpointSpec,
};

pub const API_CALICO: &str = "projectcalico.org/v3";
pub const API_K8S_NETWORKING: &str = "networking.k8s.io/v1";
pub const API_K8S_CORE: &str = "v1";

/// A parsed document of a known kind.
#[derive(Clone, Debug)]
pub enum Resource {
    GlobalNetworkPolicy(Object<PolicySpec>),
    StagedGlobalNetworkPolicy(Object<PolicySpec>),
    NetworkPolicy(Object<PolicySpec>),
    StagedNetworkPolicy(Object<PolicySpec>),
    KubernetesNetworkPolicy(Object<K8sPolicySpec>),
    StagedKubernetesNetworkPolicy(Object<K8sPolicySpec>),
    Tier(Object<TierSpec>),
    Profile(Object<ProfileSpec>),
    WorkloadEndpoint(Object<WorkloadEndpointSpec>),
    HostEndpoint(Object<HostEndpointSpec>),
    GlobalNetworkSet(Object<NetworkSetSpec>),
    NetworkSet(Object<NetworkSetSpec>),
    Namespace(Object<serde_json::Value>),
    ServiceAccount(ServiceAccountObject),
    Service(KubeObject<k8s_openapi::api::core::v1::Service>),
    EndpointSlice(KubeObject<k8s_openapi::api::discovery::v1::EndpointSlice>),
    Endpoints(KubeObject<k8s_openapi::api::core::v1::Endpoints>),
}

/// A Kubernetes object read with k8s-openapi's types (v1.33): Services and
/// their endpoints carry many fields that do not matter to policy, which
/// those types know (and ignore when unknown). `metadata` is its name,
/// namespace and labels in this crate's terms.
#[derive(Clone, Debug)]
pub struct KubeObject<T> {
    pub metadata: ObjectMeta,
    pub object: Box<T>,
}

/// The API version EndpointSlices had before v1.21 (the same fields as v1,
/// plus per-endpoint `topology`, which policy does not read).
pub const API_DISCOVERY_V1BETA1: &str = "discovery.k8s.io/v1beta1";
pub const API_DISCOVERY: &str = "discovery.k8s.io/v1";

fn kube_object<T>(
    mut json: serde_json::Value,
) -> Result<KubeObject<T>, serde_path_to_error::Error<serde_json::Error>>
where
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
        + k8s_openapi::Resource
        + serde::de::DeserializeOwned,
{
    if json.get("apiVersion").and_then(|v| v.as_str()) == Some(API_DISCOVERY_V1BETA1) {
        json["apiVersion"] = T::API_VERSION.into();
    }
    let object: T = serde_path_to_error::deserialize(json)?;
    let meta = object.metadata();
    let metadata = ObjectMeta {
        name: meta.name.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone().unwrap_or_default(),
        ..ObjectMeta::default()
    };
    Ok(KubeObject {
        metadata,
        object: Box::new(object),
    })
}

/// Which resource type a document's `apiVersion` and `kind` name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    GlobalNetworkPolicy,
    StagedGlobalNetworkPolicy,
    NetworkPolicy,
    StagedNetworkPolicy,
    KubernetesNetworkPolicy,
    StagedKubernetesNetworkPolicy,
    Tier,
    Profile,
    WorkloadEndpoint,
    HostEndpoint,
    GlobalNetworkSet,
    NetworkSet,
    Namespace,
    ServiceAccount,
    Service,
    EndpointSlice,
    Endpoints,
}

impl ResourceKind {
    /// Known (apiVersion, kind) pairs. `NetworkPolicy` is Calico's under
    /// projectcalico.org/v3 and Kubernetes' under networking.k8s.io/v1.
    pub fn from_type(api_version: &str, kind: &str) -> Result<Self, String> {
        use ResourceKind::*;
        let found = match (api_version, kind) {
            (API_CALICO, "GlobalNetworkPolicy") => GlobalNetworkPolicy,
            (API_CALICO, "StagedGlobalNetworkPolicy") => StagedGlobalNetworkPolicy,
            (API_CALICO, "NetworkPolicy") => NetworkPolicy,
            (API_CALICO, "StagedNetworkPolicy") => StagedNetworkPolicy,
            (API_CALICO, "StagedKubernetesNetworkPolicy") => StagedKubernetesNetworkPolicy,
            (API_CALICO, "Tier") => Tier,
            (API_CALICO, "Profile") => Profile,
            (API_CALICO, "WorkloadEndpoint") => WorkloadEndpoint,
            (API_CALICO, "HostEndpoint") => HostEndpoint,
            (API_CALICO, "GlobalNetworkSet") => GlobalNetworkSet,
            (API_CALICO, "NetworkSet") => NetworkSet,
            (API_K8S_NETWORKING, "NetworkPolicy") => KubernetesNetworkPolicy,
            (API_K8S_CORE, "Namespace") => Namespace,
            (API_K8S_CORE, "ServiceAccount") => ServiceAccount,
            (API_K8S_CORE, "Service") => Service,
            (API_K8S_CORE, "Endpoints") => Endpoints,
            (API_DISCOVERY | API_DISCOVERY_V1BETA1, "EndpointSlice") => EndpointSlice,
            _ => {
                return Err(format!(
                    "unknown resource type apiVersion `{api_version}` kind `{kind}`; accepted: \
                     projectcalico.org/v3 GlobalNetworkPolicy, NetworkPolicy, \
                     StagedGlobalNetworkPolicy, StagedNetworkPolicy, \
                     StagedKubernetesNetworkPolicy, Tier, Profile, WorkloadEndpoint, \
                     HostEndpoint, GlobalNetworkSet, NetworkSet (or the same kinds under \
                     crd.projectcalico.org/v1); networking.k8s.io/v1 NetworkPolicy; v1 \
                     Namespace, ServiceAccount, Pod, Service, Endpoints, List; \
                     discovery.k8s.io/v1 (or v1beta1) EndpointSlice"
                ))
            }
        };
        Ok(found)
    }

    /// Kinds whose objects live in a namespace.
    pub fn is_namespaced(self) -> bool {
        use ResourceKind::*;
        matches!(
            self,
            NetworkPolicy
                | StagedNetworkPolicy
                | KubernetesNetworkPolicy
                | StagedKubernetesNetworkPolicy
                | WorkloadEndpoint
                | NetworkSet
                | ServiceAccount
                | Service
                | EndpointSlice
                | Endpoints
        )
    }

    /// The name used in diagnostics (`KubernetesNetworkPolicy` for networking.k8s.io/v1).
    pub fn name(self) -> &'static str {
        use ResourceKind::*;
        match self {
            GlobalNetworkPolicy => "GlobalNetworkPolicy",
            StagedGlobalNetworkPolicy => "StagedGlobalNetworkPolicy",
            NetworkPolicy => "NetworkPolicy",
            StagedNetworkPolicy => "StagedNetworkPolicy",
            KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
            StagedKubernetesNetworkPolicy => "StagedKubernetesNetworkPolicy",
            Tier => "Tier",
            Profile => "Profile",
            WorkloadEndpoint => "WorkloadEndpoint",
            HostEndpoint => "HostEndpoint",
            GlobalNetworkSet => "GlobalNetworkSet",
            NetworkSet => "NetworkSet",
            Namespace => "Namespace",
            ServiceAccount => "ServiceAccount",
            Service => "Service",
            EndpointSlice => "EndpointSlice",
            Endpoints => "Endpoints",
        }
    }

    /// Deserializes a document of this kind.
    pub fn parse(self, json: serde_json::Value) -> Result<Resource, ParseError> {
        let resource = self.deserialize(json).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            let mut message = e.inner().to_string();
            if message.contains("untagged enum IntOrString") {
                message = "expected an integer or a string".into();
            }
            ParseError { field, message }
        })?;
        if let Resource::NetworkPolicy(o) | Resource::StagedNetworkPolicy(o) = &resource {
            if let Some((field, message)) = o.spec.cluster_only_field() {
                return Err(ParseError { field, message });
            }
        }
        Ok(resource)
    }

    fn deserialize(
        self,
        json: serde_json::Value,
    ) -> Result<Resource, serde_path_to_error::Error<serde_json::Error>> {
        use serde_path_to_error::deserialize as de;
        Ok(match self {
            Self::GlobalNetworkPolicy => Resource::GlobalNetworkPolicy(de(json)?),
            Self::StagedGlobalNetworkPolicy => Resource::StagedGlobalNetworkPolicy(de(json)?),
            Self::NetworkPolicy => Resource::NetworkPolicy(de(json)?),
            Self::StagedNetworkPolicy => Resource::StagedNetworkPolicy(de(json)?),
            Self::KubernetesNetworkPolicy => Resource::KubernetesNetworkPolicy(de(json)?),
            Self::StagedKubernetesNetworkPolicy => {
                Resource::StagedKubernetesNetworkPolicy(de(json)?)
            }
            Self::Tier => Resource::Tier(de(json)?),
            Self::Profile => Resource::Profile(de(json)?),
            Self::WorkloadEndpoint => Resource::WorkloadEndpoint(de(json)?),
            Self::HostEndpoint => Resource::HostEndpoint(de(json)?),
            Self::GlobalNetworkSet => Resource::GlobalNetworkSet(de(json)?),
            Self::NetworkSet => Resource::NetworkSet(de(json)?),
            Self::Namespace => Resource::Namespace(de(json)?),
            Self::ServiceAccount => Resource::ServiceAccount(de(json)?),
            Self::Service => Resource::Service(kube_object(json)?),
            Self::EndpointSlice => Resource::EndpointSlice(kube_object(json)?),
            Self::Endpoints => Resource::Endpoints(kube_object(json)?),
        })
    }
}

/// A document that does not deserialize: the field (dotted path) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    pub field: String,
    pub message: String,
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::GlobalNetworkPolicy(_) => ResourceKind::GlobalNetworkPolicy,
            Self::StagedGlobalNetworkPolicy(_) => ResourceKind::StagedGlobalNetworkPolicy,
            Self::NetworkPolicy(_) => ResourceKind::NetworkPolicy,
            Self::StagedNetworkPolicy(_) => ResourceKind::StagedNetworkPolicy,
            Self::KubernetesNetworkPolicy(_) => ResourceKind::KubernetesNetworkPolicy,
            Self::StagedKubernetesNetworkPolicy(_) => ResourceKind::StagedKubernetesNetworkPolicy,
            Self::Tier(_) => ResourceKind::Tier,
            Self::Profile(_) => ResourceKind::Profile,
            Self::WorkloadEndpoint(_) => ResourceKind::WorkloadEndpoint,
            Self::HostEndpoint(_) => ResourceKind::HostEndpoint,
            Self::GlobalNetworkSet(_) => ResourceKind::GlobalNetworkSet,
            Self::NetworkSet(_) => ResourceKind::NetworkSet,
            Self::Namespace(_) => ResourceKind::Namespace,
            Self::ServiceAccount(_) => ResourceKind::ServiceAccount,
            Self::Service(_) => ResourceKind::Service,
            Self::EndpointSlice(_) => ResourceKind::EndpointSlice,
            Self::Endpoints(_) => ResourceKind::Endpoints,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::GlobalNetworkPolicy(o)
            | Self::StagedGlobalNetworkPolicy(o)
            | Self::NetworkPolicy(o)
            | Self::StagedNetworkPolicy(o) => &o.metadata,
            Self::KubernetesNetworkPolicy(o) | Self::StagedKubernetesNetworkPolicy(o) => {
                &o.metadata
            }
            Self::Tier(o) => &o.metadata,
            Self::Profile(o) => &o.metadata,
            Self::WorkloadEndpoint(o) => &o.metadata,
            Self::HostEndpoint(o) => &o.metadata,
            Self::GlobalNetworkSet(o) | Self::NetworkSet(o) => &o.metadata,
            Self::Namespace(o) => &o.metadata,
            Self::ServiceAccount(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Endpoints(o) => &o.metadata,
        }
    }
}

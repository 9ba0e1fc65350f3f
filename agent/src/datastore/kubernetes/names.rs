//! The watched kinds, Calico's two API groups, how stored names map to the
//! projectcalico.org/v3 names the model uses, and objects as documents.
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::ResourceExt;
use serde_json::{json, Value};

/// A watched kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub namespaced: bool,
}

/// The group Calico's own API server serves (and the test/deploy CRDs use).
pub const V3_GROUP: &str = "projectcalico.org";
/// The group of the CRDs Calico stores its resources in.
pub const CRD_GROUP: &str = "crd.projectcalico.org";

/// Calico's kinds read, as (kind, plural, namespaced): the same in both groups.
const CALICO_KINDS: [(&str, &str, bool); 9] = [
    ("GlobalNetworkPolicy", "globalnetworkpolicies", false),
    ("NetworkPolicy", "networkpolicies", true),
    (
        "StagedGlobalNetworkPolicy",
        "stagedglobalnetworkpolicies",
        false,
    ),
    ("StagedNetworkPolicy", "stagednetworkpolicies", true),
    (
        "StagedKubernetesNetworkPolicy",
        "stagedkubernetesnetworkpolicies",
        true,
    ),
    ("Tier", "tiers", false),
    ("GlobalNetworkSet", "globalnetworksets", false),
    ("NetworkSet", "networksets", true),
    ("HostEndpoint", "hostendpoints", false),
];

const K8S_NETWORK_POLICY: Kind = Kind {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    namespaced: true,
};
const NAMESPACE: Kind = Kind {
    group: "",
    version: "v1",
    kind: "Namespace",
    plural: "namespaces",
    namespaced: false,
};
const SERVICE_ACCOUNT: Kind = Kind {
    group: "",
    version: "v1",
    kind: "ServiceAccount",
    plural: "serviceaccounts",
    namespaced: true,
};

/// [`CALICO_KINDS`] from `group`/`version`, then the Kubernetes kinds.
const fn kinds(group: &'static str, version: &'static str) -> [Kind; 12] {
    let mut all = [K8S_NETWORK_POLICY; 12];
    let mut i = 0;
    while i < CALICO_KINDS.len() {
        let (kind, plural, namespaced) = CALICO_KINDS[i];
        all[i] = Kind {
            group,
            version,
            kind,
            plural,
            namespaced,
        };
        i += 1;
    }
    all[9] = K8S_NETWORK_POLICY;
    all[10] = NAMESPACE;
    all[11] = SERVICE_ACCOUNT;
    all
}

/// Every kind read besides Pods (which are reduced to [`super::PodInfo`]), with
/// Calico's kinds from projectcalico.org/v3.
pub const KINDS: &[Kind] = &kinds(V3_GROUP, "v3");

/// [`KINDS`] with Calico's kinds from crd.projectcalico.org/v1.
pub const CRD_KINDS: &[Kind] = &kinds(CRD_GROUP, "v1");

/// Where Calico's resources are read from (`agent run`) and written to (`agent promote`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CalicoApi {
    /// projectcalico.org/v3: Calico's API server (or CRDs of that group).
    V3,
    /// crd.projectcalico.org/v1: the CRDs Calico stores its resources in (no API server needed).
    Crd,
    /// v3 if the API server serves it, else crd.projectcalico.org/v1 if it is
    /// installed; an error naming both if neither is.
    #[default]
    Auto,
}

/// A resolved [`CalicoApi`]: the group Calico's kinds are read from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CalicoGroup {
    #[default]
    V3,
    CrdV1,
}

impl CalicoGroup {
    /// Every kind read, Calico's from this group.
    pub fn kinds(self) -> &'static [Kind] {
        match self {
            Self::V3 => KINDS,
            Self::CrdV1 => CRD_KINDS,
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::V3 => "projectcalico.org/v3",
            Self::CrdV1 => "crd.projectcalico.org/v1",
        }
    }

    /// The kind `kind` of Calico's (or, for `networking.k8s.io/...`, Kubernetes') in this group.
    pub fn kind(self, kind: &str) -> Kind {
        let (group, kind) = match kind.strip_prefix("networking.k8s.io/") {
            Some(k) => ("networking.k8s.io", k),
            None => (
                match self {
                    Self::V3 => V3_GROUP,
                    Self::CrdV1 => CRD_GROUP,
                },
                kind,
            ),
        };
        *self
            .kinds()
            .iter()
            .find(|k| k.group == group && k.kind == kind)
            .unwrap_or_else(|| panic!("unknown kind {group}/{kind}"))
    }
}

impl std::fmt::Display for CalicoGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.api_version())
    }
}

/// The projectcalico.org/v3 name of a policy stored in crd.projectcalico.org/v1
/// as `stored`, in tier `tier` (`spec.tier`, unset = `default`).
///
/// What Calico does (libcalico-go, checked against its source and release notes):
/// - up to v3.28 its v3 client stored `<name>` as `default.<name>` and read it
///   back by removing everything up to the first dot (`knp.` and `ossg.` names,
///   which Calico generates, untouched);
/// - v3.29 (tiers in open source) stores `names.TieredPolicyName`: a name
///   without a dot gets `default.`; a policy in another tier must be named
///   `<tier>.<name>` and is stored as is. Reading, `ClientTieredPolicyName`
///   removes only a `default.` prefix (v3.29.0-3 showed it; v3.29.4/v3.30 remove
///   it again unless the policy was created with it);
/// - later releases stop requiring the tier prefix and store names as given.
///
/// So: a name starting with `default.` in the default tier loses that prefix;
/// every other name (other tiers' `<tier>.<name>`, names stored without a prefix,
/// Calico-generated `knp.`/`ossg.`/`kcnp.` names) is its v3 name unchanged. Not
/// reproduced: a default-tier policy deliberately created as `default.<name>`
/// through a v3.29.4+ API server shows there as `default.<name>`, here as `<name>`.
pub fn v3_policy_name<'a>(stored: &'a str, tier: Option<&str>) -> &'a str {
    let tier = tier.filter(|t| !t.is_empty()).unwrap_or("default");
    if tier != "default" {
        return stored;
    }
    match stored.strip_prefix("default.") {
        Some(rest) if !rest.is_empty() => rest,
        _ => stored,
    }
}

/// Kinds whose names follow Calico's tiered policy naming in crd.projectcalico.org/v1.
pub fn tiered_name(kind: &Kind) -> bool {
    kind.group == CRD_GROUP
        && matches!(
            kind.kind,
            "GlobalNetworkPolicy"
                | "NetworkPolicy"
                | "StagedGlobalNetworkPolicy"
                | "StagedNetworkPolicy"
        )
}

/// The name an object has in the model (projectcalico.org/v3 terms).
pub fn model_name(kind: &Kind, o: &DynamicObject) -> String {
    let name = o.name_any();
    if tiered_name(kind) {
        let tier = o.data["spec"]["tier"].as_str();
        v3_policy_name(&name, tier).to_string()
    } else {
        name
    }
}

impl Kind {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `group/Kind`, unique among [`KINDS`] (Calico's and Kubernetes' NetworkPolicy differ).
    pub fn label(&self) -> String {
        format!("{}/{}", self.group, self.kind)
    }

    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }
}

/// The document a user would write for this object: apiVersion, kind,
/// metadata (name, namespace, labels) and spec. Server-set metadata, status
/// and annotations are dropped (they do not affect policy). Calico's
/// crd.projectcalico.org/v1 objects become their projectcalico.org/v3 document
/// (see [`model_name`]).
pub fn document(kind: &Kind, o: &DynamicObject) -> Value {
    let mut meta = serde_json::Map::new();
    meta.insert("name".into(), json!(model_name(kind, o)));
    if kind.namespaced {
        if let Some(ns) = &o.metadata.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    if let Some(labels) = o.metadata.labels.as_ref().filter(|l| !l.is_empty()) {
        meta.insert("labels".into(), json!(labels));
    }
    let mut doc = serde_json::Map::new();
    let api_version = if kind.group == CRD_GROUP {
        "projectcalico.org/v3".to_string()
    } else {
        kind.api_version()
    };
    doc.insert("apiVersion".into(), json!(api_version));
    doc.insert("kind".into(), json!(kind.kind));
    doc.insert("metadata".into(), Value::Object(meta));
    if let Some(spec) = o.data.get("spec") {
        doc.insert("spec".into(), spec.clone());
    }
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::kubernetes::test_fixtures::crd_object;

    #[test]
    fn both_groups_read_the_same_kinds() {
        assert_eq!((KINDS.len(), CRD_KINDS.len()), (12, 12));
        for (v3, v1) in KINDS.iter().zip(CRD_KINDS).take(9) {
            assert_eq!(
                (v3.kind, v3.plural, v3.namespaced),
                (v1.kind, v1.plural, v1.namespaced)
            );
            assert_eq!(v3.api_version(), "projectcalico.org/v3");
            assert_eq!(v1.api_version(), "crd.projectcalico.org/v1");
        }
        assert_eq!(KINDS[9..], CRD_KINDS[9..]);
        let k8s: Vec<String> = KINDS[9..].iter().map(Kind::label).collect();
        assert_eq!(
            k8s,
            [
                "networking.k8s.io/NetworkPolicy",
                "/Namespace",
                "/ServiceAccount"
            ]
        );
        assert_eq!(
            CalicoGroup::CrdV1.kind("HostEndpoint").plural,
            "hostendpoints"
        );
    }

    #[test]
    fn v1_policy_names_map_to_v3_names_as_calico_does() {
        // Default tier: Calico stores `<name>` as `default.<name>` and reads it back without.
        assert_eq!(v3_policy_name("default.allow-dns", None), "allow-dns");
        assert_eq!(v3_policy_name("default.allow-dns", Some("")), "allow-dns");
        assert_eq!(
            v3_policy_name("default.allow-dns", Some("default")),
            "allow-dns"
        );
        // Only the first `default.` goes; the rest may hold dots.
        assert_eq!(v3_policy_name("default.a.b", None), "a.b");
        // Stored without a prefix (newer Calico, or created directly): unchanged.
        assert_eq!(v3_policy_name("allow-dns", None), "allow-dns");
        // Other tiers: `<tier>.<name>` is the v3 name too.
        assert_eq!(
            v3_policy_name("security.deny-x", Some("security")),
            "security.deny-x"
        );
        assert_eq!(v3_policy_name("default.x", Some("security")), "default.x");
        // Calico-generated names are never tiered by the client.
        assert_eq!(v3_policy_name("knp.default.x", None), "knp.default.x");
        assert_eq!(v3_policy_name("default.", None), "default.");
    }

    #[test]
    fn v1_objects_become_v3_documents() {
        let (k, o) = crd_object(
            "NetworkPolicy",
            Some("prod"),
            "default.db",
            json!({"selector": "app == 'db'", "types": ["Ingress"]}),
        );
        let doc = document(&k, &o);
        assert_eq!(doc["apiVersion"], "projectcalico.org/v3");
        assert_eq!(doc["kind"], "NetworkPolicy");
        assert_eq!(doc["metadata"]["name"], "db");
        assert_eq!(doc["metadata"]["namespace"], "prod");
        assert_eq!(doc["metadata"]["labels"]["team"], "a");
        assert_eq!(doc["spec"]["selector"], "app == 'db'");

        let (k, o) = crd_object(
            "StagedGlobalNetworkPolicy",
            None,
            "security.lockdown",
            json!({"tier": "security", "selector": "all()"}),
        );
        let doc = document(&k, &o);
        assert_eq!(doc["kind"], "StagedGlobalNetworkPolicy");
        assert_eq!(doc["metadata"]["name"], "security.lockdown");
        assert!(doc["metadata"].get("namespace").is_none());

        // Names of other kinds are not tiered.
        for kind in ["StagedKubernetesNetworkPolicy", "NetworkSet"] {
            let (k, o) = crd_object(kind, Some("prod"), "default.x", json!({}));
            assert_eq!(document(&k, &o)["metadata"]["name"], "default.x", "{kind}");
        }
    }
}

//! crd.projectcalico.org/v1 documents (what `kubectl get -o yaml` prints from
//! the CRDs Calico stores its resources in) read as the projectcalico.org/v3
//! documents they hold: Calico's backend stores the v3 spec in the CRD, so only
//! the apiVersion and the names of tiered policies differ. Names are mapped by
//! the Kubernetes datastore's own rule ([`v3_policy_name`]).
use serde_json::Value;

use crate::datastore::kubernetes::{tiered_name, v3_policy_name, CRD_GROUP, CRD_KINDS};

/// The apiVersion of Calico's CRDs.
pub const API_CRD: &str = "crd.projectcalico.org/v1";

/// `value` as a projectcalico.org/v3 document if it is a crd.projectcalico.org/v1
/// one; unchanged otherwise.
pub fn to_v3(mut value: Value) -> Value {
    if value.get("apiVersion").and_then(Value::as_str) != Some(API_CRD) {
        return value;
    }
    value["apiVersion"] = Value::from(super::resources::API_CALICO);
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    let tiered = CRD_KINDS
        .iter()
        .any(|k| k.group == CRD_GROUP && k.kind == kind && tiered_name(k));
    if !tiered {
        return value;
    }
    let tier = value.pointer("/spec/tier").and_then(Value::as_str);
    let stored = value.pointer("/metadata/name").and_then(Value::as_str);
    if let Some(name) = stored.map(|n| v3_policy_name(n, tier).to_string()) {
        value["metadata"]["name"] = Value::from(name);
    }
    value
}

//! Documents and helpers the datastore's tests share.
use super::{FileDatastore, FileLoad};
use crate::model::Loaded;

pub(super) const POLICY: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-db\nspec:\n  selector: app == 'db'\n  ingress:\n    - action: Deny\n";

pub(super) const ENDPOINT: &str = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: db\n  namespace: prod\n  labels:\n    app: db\nspec:\n  interfaceName: calidb\n  ipNetworks: [10.65.0.30/32]\n";

pub(super) fn policy_names(l: &Loaded) -> Vec<String> {
    l.model.policies.iter().map(|p| p.id.name.clone()).collect()
}

pub(super) fn policy(name: &str, action: &str) -> String {
    POLICY
        .replace("deny-db", name)
        .replace("action: Deny", &format!("action: {action}"))
}

/// The last good load of `ds` and a new load keeping it.
pub(super) fn reload(ds: &FileDatastore, good: &Loaded) -> FileLoad {
    ds.load_keeping(&good.documents)
}

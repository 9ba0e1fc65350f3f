//! `--calico-api auto`: which group holds Calico's policies.
//!
//! Calico's kinds can be served twice: as projectcalico.org/v3 (Calico's API
//! server, which stores them in crd.projectcalico.org/v1, or recent releases'
//! own v3 CRDs, or this project's `standalone` overlay) and as
//! crd.projectcalico.org/v1 (the CRDs older Calico installs store them in).
//! A group that is merely *served* says nothing about where the policies are:
//! v3 CRDs can sit empty beside a v1 store holding every policy, and an agent
//! reading the empty one would enforce nothing, silently. So `auto` surveys
//! both: the group holding policies wins (v3 when both do, as Calico's API
//! server presents the v1 store there), and policies that only the other group
//! holds are reported loudly: they are not enforced.
use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::Client;

use super::names::{v3_policy_name, CalicoApi, CalicoGroup, Kind, CRD_GROUP, V3_GROUP};

/// The resource every Calico installation serves in a group.
const PROBE_RESOURCE: &str = "globalnetworkpolicies";

/// What discovery and a list of the policy kinds found in one group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSurvey {
    /// The group-version's resources; `None`: not served (or discovery failed).
    pub resources: Option<Vec<String>>,
    /// Its policies as `Kind/namespace/v3-name` (namespace empty when global).
    pub policies: BTreeSet<String>,
}

impl GroupSurvey {
    fn serves_policies(&self) -> bool {
        self.resources
            .as_ref()
            .is_some_and(|r| r.iter().any(|n| n == PROBE_RESOURCE))
    }

    fn describe(&self) -> String {
        match &self.resources {
            None => "group-version not served".into(),
            Some(r) if r.is_empty() => "served, no resources".into(),
            Some(_) if !self.serves_policies() => {
                format!("served: {}", self.resources.as_ref().unwrap().join(", "))
            }
            Some(_) => format!("served, {} policies", self.policies.len()),
        }
    }
}

/// The group `auto` chose, why, and the policies it will not read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Choice {
    pub group: CalicoGroup,
    pub why: String,
    /// Policies only the other group holds: not enforced (said loudly).
    pub unread: Vec<String>,
}

impl Choice {
    fn taken(group: CalicoGroup, why: impl Into<String>) -> Self {
        Self {
            group,
            why: why.into(),
            unread: Vec::new(),
        }
    }
}

/// `auto` over the two surveys (module docs); an error says what was looked for.
pub fn choose_calico_group(v3: &GroupSurvey, crd: &GroupSurvey) -> Result<Choice, String> {
    let (group, why) = match (v3.serves_policies(), crd.serves_policies()) {
        (true, _) if !v3.policies.is_empty() => {
            (CalicoGroup::V3, "projectcalico.org/v3 holds policies")
        }
        (_, true) if !crd.policies.is_empty() => (
            CalicoGroup::CrdV1,
            "crd.projectcalico.org/v1 holds policies and projectcalico.org/v3 none",
        ),
        (true, _) => (
            CalicoGroup::V3,
            "no policies yet; projectcalico.org/v3 is served",
        ),
        (_, true) => (
            CalicoGroup::CrdV1,
            "no policies yet; only crd.projectcalico.org/v1 is served",
        ),
        (false, false) => {
            return Err(format!(
                "Calico's API not found: looked for {PROBE_RESOURCE} in projectcalico.org/v3 \
                 (Calico API server, or deploy/overlays/standalone) ({}) and in \
                 crd.projectcalico.org/v1 (Calico's CRDs) ({}); install one, or choose with \
                 --calico-api v3|crd",
                v3.describe(),
                crd.describe()
            ))
        }
    };
    let (chosen, other) = match group {
        CalicoGroup::V3 => (v3, crd),
        CalicoGroup::CrdV1 => (crd, v3),
    };
    let mut choice = Choice::taken(
        group,
        format!("{why} (v3: {}; crd v1: {})", v3.describe(), crd.describe()),
    );
    choice.unread = other
        .policies
        .difference(&chosen.policies)
        .cloned()
        .collect();
    Ok(choice)
}

/// Resolves `auto` with API discovery and a survey of both groups (retried for
/// `patience` while the API server cannot be reached); `v3` and `crd` are taken
/// as they are.
pub async fn resolve_calico_api(
    client: &Client,
    want: CalicoApi,
    patience: Duration,
) -> anyhow::Result<Choice> {
    match want {
        CalicoApi::V3 => return Ok(Choice::taken(CalicoGroup::V3, "--calico-api v3")),
        CalicoApi::Crd => return Ok(Choice::taken(CalicoGroup::CrdV1, "--calico-api crd")),
        CalicoApi::Auto => {}
    }
    let deadline = tokio::time::Instant::now() + patience;
    let groups = loop {
        match client.list_api_groups().await {
            Ok(g) => break g,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "API discovery failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(e).context(
                    "--calico-api auto: listing the API server's groups (to choose between \
                     projectcalico.org/v3 and crd.projectcalico.org/v1)",
                ))
            }
        }
    };
    let mut surveys = [GroupSurvey::default(), GroupSurvey::default()];
    for (survey, (group, version, kinds)) in surveys.iter_mut().zip([
        (V3_GROUP, "v3", CalicoGroup::V3.kinds()),
        (CRD_GROUP, "v1", CalicoGroup::CrdV1.kinds()),
    ]) {
        let listed = groups
            .groups
            .iter()
            .any(|g| g.name == group && g.versions.iter().any(|v| v.version == version));
        if listed {
            *survey = survey_group(client, group, version, kinds).await;
        }
    }
    let choice = choose_calico_group(&surveys[0], &surveys[1]).map_err(anyhow::Error::msg)?;
    tracing::info!(api = %choice.group, why = %choice.why, "--calico-api auto: reading Calico's resources from {}", choice.group);
    if !choice.unread.is_empty() {
        tracing::warn!(
            api = %choice.group,
            unread = ?choice.unread,
            "--calico-api auto: the other group holds policies this agent does NOT read or \
             enforce; if they are Calico's, run with --calico-api {}",
            match choice.group {
                CalicoGroup::V3 => "crd",
                CalicoGroup::CrdV1 => "v3",
            }
        );
    }
    Ok(choice)
}

async fn survey_group(client: &Client, group: &str, version: &str, kinds: &[Kind]) -> GroupSurvey {
    let resources = match client
        .list_api_group_resources(&format!("{group}/{version}"))
        .await
    {
        Ok(r) => r.resources.into_iter().map(|r| r.name).collect(),
        // E.g. Calico's aggregated API server registered but down.
        Err(e) => {
            tracing::warn!(group, version, error = %e, "API group listed but its discovery failed");
            return GroupSurvey::default();
        }
    };
    let mut policies = BTreeSet::new();
    for kind in kinds
        .iter()
        .filter(|k| k.group == group && k.plural.ends_with("policies"))
    {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &kind.api_resource());
        match api.list(&ListParams::default()).await {
            Ok(list) => policies.extend(list.items.iter().map(|o| policy_key(kind, o))),
            Err(e) => {
                tracing::warn!(kind = %kind.label(), error = %e, "--calico-api auto: cannot list")
            }
        }
    }
    GroupSurvey {
        resources: Some(resources),
        policies,
    }
}

/// `Kind/namespace/name` with the v3 name, so both groups' keys compare.
fn policy_key(kind: &Kind, o: &DynamicObject) -> String {
    let stored = o.metadata.name.as_deref().unwrap_or_default();
    let name = if kind.group == CRD_GROUP {
        let tier = o.data.pointer("/spec/tier").and_then(|t| t.as_str());
        v3_policy_name(stored, tier)
    } else {
        stored
    };
    let namespace = o.metadata.namespace.as_deref().unwrap_or_default();
    format!("{}/{namespace}/{name}", kind.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::kubernetes::KINDS;

    fn survey(resources: &[&str], policies: &[&str]) -> GroupSurvey {
        GroupSurvey {
            resources: Some(resources.iter().map(|s| s.to_string()).collect()),
            policies: policies.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn auto_prefers_the_group_holding_policies() {
        let gnp = ["globalnetworkpolicies", "tiers"];
        let empty_v3 = survey(&gnp, &[]);
        let calico_v1 = survey(&gnp, &["GlobalNetworkPolicy//deny-db"]);
        // Served but empty v3 (v3 CRDs beside Calico's v1 store): the v1 store.
        let c = choose_calico_group(&empty_v3, &calico_v1).unwrap();
        assert_eq!(c.group, CalicoGroup::CrdV1);
        assert!(c.why.contains("holds policies"), "{}", c.why);
        assert!(c.unread.is_empty());
        // Calico's API server shows the v1 store as v3: the same policies.
        let c = choose_calico_group(&calico_v1, &calico_v1).unwrap();
        assert_eq!(c.group, CalicoGroup::V3);
        assert!(c.unread.is_empty());
        // Different policies in both: v3, and the v1-only ones said loudly.
        let v3 = survey(&gnp, &["GlobalNetworkPolicy//allow-dns"]);
        let c = choose_calico_group(&v3, &calico_v1).unwrap();
        assert_eq!(c.group, CalicoGroup::V3);
        assert_eq!(c.unread, vec!["GlobalNetworkPolicy//deny-db".to_string()]);
        // No policies anywhere: v3 when served, else v1.
        assert_eq!(
            choose_calico_group(&empty_v3, &empty_v3).unwrap().group,
            CalicoGroup::V3
        );
        let unserved = GroupSurvey::default();
        assert_eq!(
            choose_calico_group(&unserved, &empty_v3).unwrap().group,
            CalicoGroup::CrdV1
        );
        // A v3 group without policies (e.g. only IP pools) does not count.
        let pools = survey(&["ippools"], &[]);
        assert_eq!(
            choose_calico_group(&pools, &empty_v3).unwrap().group,
            CalicoGroup::CrdV1
        );
    }

    #[test]
    fn auto_says_what_it_looked_for() {
        let e =
            choose_calico_group(&survey(&["ippools"], &[]), &GroupSurvey::default()).unwrap_err();
        for want in [
            "globalnetworkpolicies",
            "projectcalico.org/v3",
            "crd.projectcalico.org/v1",
            "served: ippools",
            "group-version not served",
            "--calico-api",
        ] {
            assert!(e.contains(want), "{want:?} missing in: {e}");
        }
        assert_eq!(CalicoGroup::CrdV1.kinds().len(), KINDS.len());
        assert_eq!(
            CalicoGroup::CrdV1.kind("HostEndpoint").api_version(),
            "crd.projectcalico.org/v1"
        );
        assert_eq!(
            CalicoGroup::CrdV1
                .kind("networking.k8s.io/NetworkPolicy")
                .api_version(),
            "networking.k8s.io/v1"
        );
    }
}

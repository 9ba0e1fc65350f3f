//! How users name endpoints: `namespace/pod` for a workload (the pod from the
//! WorkloadEndpoint's `spec.pod`, or the Pod's name), the WorkloadEndpoint's
//! own `namespace/name` too (`shop/node1-k8s-web-eth0`), a host endpoint by its
//! name. A name that matches nothing is an error with the closest known names,
//! never an empty answer.
use std::fmt;

use std::sync::Arc;

use super::ir::Endpoint;

/// A name that matches no endpoint, with the closest known names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownName {
    pub name: String,
    pub suggestions: Vec<String>,
}

impl fmt::Display for UnknownName {
    /// `; did you mean a, b?` (empty without suggestions): appended to the
    /// caller's own "no such ..." sentence.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suggestions.is_empty() {
            return Ok(());
        }
        write!(f, "; did you mean {}?", self.suggestions.join(", "))
    }
}

/// The endpoint `text` names: its address ([`Endpoint::key`]) first, then the
/// WorkloadEndpoint name ([`Endpoint::resource_key`]).
pub fn find_endpoint<'m>(
    endpoints: &'m [Arc<Endpoint>],
    text: &str,
) -> Result<&'m Endpoint, UnknownName> {
    let by_key = endpoints.iter().find(|e| e.key() == text);
    by_key
        .or_else(|| endpoints.iter().find(|e| e.resource_key() == text))
        .map(|e| &**e)
        .ok_or_else(|| UnknownName {
            name: text.to_string(),
            suggestions: closest(text, endpoints.iter().map(|e| e.key())),
        })
}

/// At most this many suggestions.
const SUGGESTIONS: usize = 3;

/// The known names closest to `text`: within an edit per five characters (a
/// typo: a wrong, missing, extra or swapped character), or
/// starting with the same text (`shop/web` for the pod `shop/web-7d9f-x2x`, as
/// a Deployment names its pods); nearest first.
pub fn closest(text: &str, known: impl IntoIterator<Item = String>) -> Vec<String> {
    let bound = (text.chars().count() / 5).max(1);
    let mut scored: Vec<(usize, String)> = known
        .into_iter()
        .filter_map(|k| {
            let d = edit_distance(text, &k);
            (d <= bound || k.starts_with(text) || text.starts_with(k.as_str())).then_some((d, k))
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored
        .into_iter()
        .take(SUGGESTIONS)
        .map(|(_, k)| k)
        .collect()
}

/// Edit distance over characters, a swap of neighbours counting as one edit
/// (optimal string alignment).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut row = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            row[j] = (previous[j - 1] + cost)
                .min(previous[j] + 1)
                .min(row[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                row[j] = row[j].min(before[j - 2] + 1);
            }
        }
        before = std::mem::replace(&mut previous, row);
    }
    previous[b.len()]
}

/// Keeps addresses unique: a pod address (`namespace/pod`) that two endpoints
/// would share (a pod with two interfaces, or a pod named like another
/// WorkloadEndpoint) is dropped from them, so they are addressed by their
/// WorkloadEndpoint names (unique per namespace) instead.
pub fn unique_pod_addresses(endpoints: &mut [Arc<Endpoint>]) {
    loop {
        let shared: Vec<usize> = {
            let mut count: foldhash::HashMap<(Option<&str>, &str), usize> = Default::default();
            for e in endpoints.iter() {
                *count.entry(address(e)).or_default() += 1;
            }
            let shared = |e: &Endpoint| e.pod.is_some() && count[&address(e)] > 1;
            (0..endpoints.len())
                .filter(|&i| shared(&endpoints[i]))
                .collect()
        };
        // Dropping a pod address can only make a WorkloadEndpoint name an
        // address, which may collide once more with another pod address.
        if shared.is_empty() {
            return;
        }
        for i in shared {
            Arc::make_mut(&mut endpoints[i]).pod = None;
        }
    }
}

/// [`Endpoint::key`] in parts, without making the string: namespaces and
/// endpoint names are DNS names (no `/`), so two keys are the same string
/// exactly when their parts are the same.
fn address(e: &Endpoint) -> (Option<&str>, &str) {
    match &e.namespace {
        Some(ns) => (Some(ns), e.pod.as_deref().unwrap_or(&e.name)),
        None => (None, &e.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ir::EndpointKind;

    fn wep(name: &str, pod: Option<&str>) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            kind: EndpointKind::Workload,
            namespace: Some("shop".into()),
            name: name.into(),
            labels: Default::default(),
            interface: None,
            ips: vec![],
            named_ports: vec![],
            profiles: vec![],
            pod: pod.map(Into::into),
            node: None,
        })
    }

    #[test]
    fn endpoints_are_found_by_pod_then_by_workload_endpoint_name() {
        let eps = [
            wep("node1-k8s-web-eth0", Some("web")),
            wep("db", None),
            wep("web", Some("other")),
        ];
        assert_eq!(
            find_endpoint(&eps, "shop/web").unwrap().name,
            "node1-k8s-web-eth0"
        );
        assert_eq!(
            find_endpoint(&eps, "shop/node1-k8s-web-eth0").unwrap().name,
            "node1-k8s-web-eth0"
        );
        assert_eq!(find_endpoint(&eps, "shop/db").unwrap().name, "db");
        assert_eq!(find_endpoint(&eps, "shop/other").unwrap().name, "web");
    }

    #[test]
    fn an_unknown_name_suggests_the_closest_ones() {
        let eps = [
            wep("a", Some("web")),
            wep("b", Some("web-7d9f-x2x")),
            wep("c", Some("database")),
        ];
        let err = find_endpoint(&eps, "shop/wbe").unwrap_err();
        assert_eq!(err.suggestions, ["shop/web"]);
        assert_eq!(err.to_string(), "; did you mean shop/web?");
        assert_eq!(edit_distance("shop/wbe", "shop/web"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "ab"), 2);
        let err = find_endpoint(&eps, "shop/web-7").unwrap_err();
        assert_eq!(err.suggestions, ["shop/web", "shop/web-7d9f-x2x"]);
        let err = find_endpoint(&eps, "ops/prometheus").unwrap_err();
        assert!(err.suggestions.is_empty());
        assert_eq!(err.to_string(), "");
    }

    #[test]
    fn shared_pod_addresses_fall_back_to_workload_endpoint_names() {
        let mut eps = [
            wep("n1-k8s-web-eth0", Some("web")),
            wep("n1-k8s-web-eth1", Some("web")),
            wep("x", None),
            wep("y", Some("x")),
            wep("z", Some("y")),
        ];
        unique_pod_addresses(&mut eps);
        let keys: Vec<String> = eps.iter().map(|e| e.key()).collect();
        assert_eq!(
            keys,
            [
                "shop/n1-k8s-web-eth0",
                "shop/n1-k8s-web-eth1",
                "shop/x",
                "shop/y",
                "shop/z"
            ]
        );
    }
}

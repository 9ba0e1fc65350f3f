//! Pods: the lean record kept of each ([`PodInfo`]) and the WorkloadEndpoint
//! document it becomes.
use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::Key;

/// What is kept of a Pod (all pods of the cluster are kept: peers need labels and IPs).
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub local: bool,
    pub labels: Box<[(Box<str>, Box<str>)]>,
    pub service_account: Option<Box<str>>,
    pub ips: Box<[IpAddr]>,
    /// Named container ports: (name, protocol as the pod spec names it, port).
    /// The name is passed through, not mapped with a default, so a protocol the
    /// model does not know is refused when the endpoint is lowered instead of
    /// silently becoming TCP.
    pub ports: Box<[PodPort]>,
}

/// A named container port of a pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPort {
    pub name: Box<str>,
    /// As the pod spec names it (`TCP`, `UDP`, `SCTP`).
    pub protocol: Box<str>,
    pub port: u16,
}

impl PodInfo {
    /// Reduces a Pod; `None` for pods that get no workload endpoint (host
    /// network, finished, or no IP yet).
    pub fn from_pod(pod: &Pod, node: &str) -> Option<PodInfo> {
        let spec = pod.spec.as_ref()?;
        if spec.host_network == Some(true) {
            return None;
        }
        let status = pod.status.as_ref()?;
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let mut ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .filter_map(|p| p.ip.parse().ok())
            .collect();
        if ips.is_empty() {
            ips.extend(
                status
                    .pod_ip
                    .as_deref()
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        if ips.is_empty() {
            return None;
        }
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
            .collect();
        let mut ports = Vec::new();
        for c in &spec.containers {
            for p in c.ports.iter().flatten() {
                let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                    continue;
                };
                // The API server defaults an unset protocol to TCP.
                let proto = p.protocol.as_deref().unwrap_or("TCP");
                if let Ok(port) = u16::try_from(p.container_port) {
                    ports.push(PodPort {
                        name: name.into(),
                        protocol: proto.into(),
                        port,
                    });
                }
            }
        }
        Some(PodInfo {
            local: spec.node_name.as_deref() == Some(node),
            labels,
            service_account: spec
                .service_account_name
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(Into::into),
            ips: ips.into(),
            ports: ports.into(),
        })
    }

    /// Heap and inline bytes of this record (for sizing the cluster-wide view).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .labels
                .iter()
                .map(|(k, v)| std::mem::size_of::<(Box<str>, Box<str>)>() + k.len() + v.len())
                .sum::<usize>()
            + self.service_account.as_ref().map_or(0, |s| s.len())
            + self.ips.len() * std::mem::size_of::<IpAddr>()
            + self
                .ports
                .iter()
                .map(|p| std::mem::size_of::<PodPort>() + p.name.len() + p.protocol.len())
                .sum::<usize>()
    }
}

/// Calico's host-side interface name for a pod.
pub fn calico_interface(namespace: &str, pod: &str) -> String {
    let digest = Sha1::digest(format!("{namespace}.{pod}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// A pod's workload endpoint document.
pub fn workload_endpoint(key: &Key, pod: &PodInfo, interface: &str, node: &str) -> Value {
    let labels: BTreeMap<&str, &str> = pod.labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    let nets: Vec<String> = pod
        .ips
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(_) => format!("{ip}/32"),
            IpAddr::V6(_) => format!("{ip}/128"),
        })
        .collect();
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "protocol": p.protocol, "port": p.port}))
        .collect();
    let mut spec = json!({
        "orchestrator": "k8s",
        "pod": key.1,
        "interfaceName": interface,
        "ipNetworks": nets,
    });
    if pod.local {
        spec["node"] = json!(node);
    }
    if let Some(sa) = &pod.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if !ports.is_empty() {
        spec["ports"] = json!(ports);
    }
    let mut meta = json!({"name": key.1, "namespace": key.0});
    if !labels.is_empty() {
        meta["labels"] = json!(labels);
    }
    json!({
        "apiVersion": "projectcalico.org/v3",
        "kind": "WorkloadEndpoint",
        "metadata": meta,
        "spec": spec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::kubernetes::test_fixtures::pod;

    #[test]
    fn calico_interface_name_matches_calico() {
        // sha1("prod.frontend") = 3f1c0d0e...; Calico: "cali" + first 11 hex digits.
        let n = calico_interface("prod", "frontend");
        assert_eq!(n.len(), 15);
        assert!(n.starts_with("cali"));
        let digest = Sha1::digest(b"prod.frontend");
        assert_eq!(&n[4..6], &format!("{:02x}", digest[0]));
    }

    #[test]
    fn pods_without_ip_host_network_or_finished_are_skipped() {
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.status.as_mut().unwrap().pod_ips = None;
        assert!(PodInfo::from_pod(&p, "n").is_none());
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.spec.as_mut().unwrap().host_network = Some(true);
        assert!(PodInfo::from_pod(&p, "n").is_none());
        let mut p = pod("a", "b", "n", "10.0.0.1");
        p.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(PodInfo::from_pod(&p, "n").is_none());
    }

    /// Memory of the cluster-wide pod view: 10k synthetic pods with 3 labels,
    /// one IP, one named port, as stored.
    #[test]
    fn memory_per_pod() {
        let mut total = 0;
        let n = 10_000;
        for i in 0..n {
            let p = pod(
                "prod",
                &format!("pod-{i}"),
                "n",
                &format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255),
            );
            let info = PodInfo::from_pod(&p, "n").unwrap();
            // Key strings + the BTreeMap entry (approximate: key + value inline).
            total += info.approx_bytes()
                + "prod".len()
                + format!("pod-{i}").len()
                + std::mem::size_of::<Key>();
        }
        let per_pod = total / n;
        eprintln!(
            "memory per pod (3 labels, 1 IP, 1 named port): ~{per_pod} bytes; {n} pods: ~{} KiB",
            total / 1024
        );
        assert!(per_pod < 512, "{per_pod} bytes per pod");
    }
}

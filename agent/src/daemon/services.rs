//! Service traffic in the daemon: the frontend prefixes from the agent config
//! (`serviceClusterIPRanges`, `serviceExternalIPs`) and from the Services of
//! the installed model (ClusterIPs, externalIPs, LoadBalancer ingress IPs of
//! `v1 Service` objects or documents), and the `post_nat` program on the
//! node's data interfaces (`dataInterfaces`), the post-DNAT hook of flows to
//! remote backends (design: `ebpf/src/service.rs`).
//!
//! Order matters at start: `post_nat` is attached before the frontends are
//! written, so no flow is deferred while its post-DNAT hook is missing. With
//! no frontends configured nothing is deferred and no `post_nat` is attached
//! (pins an earlier agent left are detached).
use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::Context as _;
use ipnet::IpNet;

use crate::dataplane::service::{
    interfaces, matches_pattern, PostNatLink, DEFAULT_DATA_INTERFACES,
};
use crate::dataplane::Dataplane;

/// What the agent config says about Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Frontend prefixes: ClusterIP ranges, external IPs.
    pub nets: Vec<IpNet>,
    /// Data interface globs (`post_nat` goes on the matching interfaces).
    pub data_interfaces: Vec<String>,
}

impl ServiceConfig {
    /// From the agent's config file (none: no Services, nothing deferred).
    pub fn load(config: Option<&Path>) -> anyhow::Result<ServiceConfig> {
        let Some(path) = config else {
            return Ok(ServiceConfig::default());
        };
        let c = crate::lockout::AgentConfig::load(path)?;
        let mut nets = Vec::new();
        let lists = [
            ("serviceClusterIPRanges", &c.service_cluster_ip_ranges),
            ("serviceExternalIPs", &c.service_external_ips),
        ];
        for (field, list) in lists {
            for (i, s) in list.iter().flatten().enumerate() {
                let net = parse_net(s)
                    .with_context(|| format!("{}: {field}[{i}]: {s:?}", path.display()))?;
                nets.push(net);
            }
        }
        let data_interfaces = c.data_interfaces.unwrap_or_else(|| {
            DEFAULT_DATA_INTERFACES
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        Ok(ServiceConfig {
            nets,
            data_interfaces,
        })
    }

    /// The config's frontends and `frontends` (the model's Services), each once.
    pub fn with_frontends(&self, frontends: &[std::net::IpAddr]) -> ServiceConfig {
        let mut nets = self.nets.clone();
        nets.extend(frontends.iter().map(|ip| IpNet::from(*ip)));
        nets.sort();
        nets.dedup();
        ServiceConfig {
            nets,
            data_interfaces: self.data_interfaces.clone(),
        }
    }
}

/// A CIDR, or an address (a /32 or /128).
fn parse_net(s: &str) -> anyhow::Result<IpNet> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    let ip: std::net::IpAddr = s
        .parse()
        .map_err(|_| anyhow::anyhow!("not an address or CIDR"))?;
    Ok(IpNet::from(ip))
}

/// The `post_nat` links this agent holds, by interface name.
#[derive(Default)]
pub(crate) struct PostNat {
    links: HashMap<String, PostNatLink>,
    pub errors: HashMap<String, String>,
    /// Pins of earlier agents on interfaces no longer wanted were removed.
    pruned: bool,
    /// The frontends written to the kernel (config and Services), once written.
    pub frontends: Option<Vec<IpNet>>,
}

impl PostNat {
    /// Interfaces with `post_nat` attached: (name, ifindex).
    pub fn attached(&self) -> Vec<(String, u32)> {
        let mut v: Vec<_> = self
            .links
            .iter()
            .map(|(n, l)| (n.clone(), l.ifindex))
            .collect();
        v.sort();
        v
    }
}

/// Attaches `post_nat` to data interfaces that exist and lack it, forgets
/// ones that went or were re-created, and (once) detaches pins of interfaces
/// that are no longer data interfaces. Endpoint interfaces are left alone:
/// their `to_endpoint` is already a post-DNAT hook.
pub(crate) fn reconcile(
    dp: &mut Dataplane,
    cfg: &ServiceConfig,
    state: &mut PostNat,
    endpoints: &HashSet<String>,
) {
    let wanted: HashMap<String, u32> = if cfg.nets.is_empty() {
        HashMap::new()
    } else {
        interfaces()
            .into_iter()
            .filter(|(n, _)| !endpoints.contains(n) && matches_pattern(&cfg.data_interfaces, n))
            .collect()
    };
    let names: Vec<String> = state.links.keys().cloned().collect();
    for name in names {
        if wanted.get(&name) != state.links.get(&name).map(|l| l.ifindex).as_ref() {
            if let Some(l) = state.links.remove(&name) {
                tracing::info!(interface = %name, "data interface gone; post_nat detached");
                l.detach();
            }
        }
    }
    state.errors.retain(|k, _| wanted.contains_key(k));
    for (name, &ifindex) in &wanted {
        if state.links.contains_key(name) {
            continue;
        }
        match dp.attach_post_nat(ifindex) {
            Ok(link) => {
                tracing::info!(interface = %name, ifindex, adopted = link.adopted, "post_nat attached (Service post-DNAT hook)");
                state.errors.remove(name);
                state.links.insert(name.clone(), link);
            }
            Err(e) => {
                tracing::error!(interface = %name, error = %e, "attaching post_nat");
                state.errors.insert(name.clone(), e.to_string());
            }
        }
    }
    write_frontends(dp, cfg, state);
    if !state.pruned {
        let keep: HashSet<u32> = state.links.values().map(|l| l.ifindex).collect();
        let n = dp.prune_post_nat(&keep);
        if n > 0 {
            tracing::info!(
                links = n,
                "detached post_nat links of interfaces no longer data interfaces"
            );
        }
        state.pruned = true;
    }
}

/// Writes the frontends when they changed (after `post_nat` is attached, so
/// that no flow is deferred while its post-DNAT hook is missing). A failure is
/// logged and retried at the next reconcile.
fn write_frontends(dp: &mut Dataplane, cfg: &ServiceConfig, state: &mut PostNat) {
    if state.frontends.as_ref() == Some(&cfg.nets) {
        return;
    }
    match dp.set_service_nets(&cfg.nets) {
        Ok(()) => {
            tracing::info!(frontends = cfg.nets.len(), "Service frontends written");
            state.frontends = Some(cfg.nets.clone());
        }
        Err(e) => tracing::error!(error = %e, "writing the Service frontends"),
    }
}

/// At start: the post-DNAT hooks first, then the frontends.
pub(crate) fn start(
    dp: &mut Dataplane,
    cfg: &ServiceConfig,
    state: &mut PostNat,
) -> anyhow::Result<()> {
    reconcile(dp, cfg, state, &HashSet::new());
    dp.set_service_nets(&cfg.nets)
        .context("writing the Service frontends")?;
    state.frontends = Some(cfg.nets.clone());
    if !cfg.nets.is_empty() {
        tracing::info!(
            frontends = cfg.nets.len(),
            data_interfaces = state.links.len(),
            "Service flows are judged after the node's DNAT"
        );
    }
    Ok(())
}

/// Detaches every `post_nat` link (`--detach-on-exit`).
pub(crate) fn detach_all(state: &mut PostNat) {
    for (_, l) in state.links.drain() {
        l.detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_parse_from_cidrs_and_addresses() {
        assert_eq!(
            parse_net("10.96.0.0/12").unwrap(),
            "10.96.0.0/12".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("10.96.1.1/12").unwrap(),
            "10.96.0.0/12".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("192.0.2.7").unwrap(),
            "192.0.2.7/32".parse::<IpNet>().unwrap()
        );
        assert_eq!(
            parse_net("fd96::/108").unwrap(),
            "fd96::/108".parse::<IpNet>().unwrap()
        );
        assert!(parse_net("ten").is_err());
    }

    #[test]
    fn config_fields_load() {
        let dir = std::env::temp_dir().join(format!("svc-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("c.yaml");
        std::fs::write(
            &p,
            "serviceClusterIPRanges: [10.96.0.0/12, fd96::/108]\nserviceExternalIPs: [192.0.2.7]\ndataInterfaces: [eth0]\n",
        )
        .unwrap();
        let c = ServiceConfig::load(Some(&p)).unwrap();
        assert_eq!(c.nets.len(), 3);
        assert_eq!(c.data_interfaces, vec!["eth0".to_string()]);
        std::fs::write(&p, "serviceClusterIPRanges: [10.96.0.0/33]\n").unwrap();
        let e = ServiceConfig::load(Some(&p)).unwrap_err();
        assert!(
            format!("{e:#}").contains("serviceClusterIPRanges[0]"),
            "{e:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ServiceConfig::load(None).unwrap(), ServiceConfig::default());
    }
}

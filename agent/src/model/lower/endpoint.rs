//! Workload and host endpoints, and network sets.
use ipnet::IpNet;

use super::rule::nets_of;
use super::{each, fields, namespace_of, no_namespace_label, Issues, MAX_SET_NETS};
use crate::model::ir::{self, EndpointKind, NamedPort, PortMatch};
use crate::model::ir::{NAMESPACE_LABEL_PREFIX, SERVICE_ACCOUNT_LABEL_PREFIX};
use crate::model::resources::*;

/// A workload endpoint, before the labels other documents give it.
#[derive(Clone, Debug, PartialEq)]
pub struct Workload {
    /// Labels are still only its own, without namespace and service-account
    /// ones (a workload cannot claim those); profiles are as used (`kns.<ns>`
    /// when it names none).
    pub endpoint: ir::Endpoint,
    pub service_account: Option<String>,
    /// `projectcalico.org/orchestrator` (`k8s` unless set).
    pub orchestrator: String,
}

/// Addresses or networks; each as written (not masked to its network).
fn ip_or_net(v: &mut Issues, path: &str, items: &[String]) -> Option<Vec<IpNet>> {
    each(items, |i, n| {
        v.ok(format!("{path}[{i}]"), fields::net_as_written(n))
    })
}

fn profile_names(v: &mut Issues, profiles: &[String]) {
    for (i, p) in profiles.iter().enumerate() {
        v.check(format!("spec.profiles[{i}]"), fields::check_name(p));
    }
}

pub(super) fn workload(v: &mut Issues, o: &Object<WorkloadEndpointSpec>) -> Option<Workload> {
    let s = &o.spec;
    let networks: Vec<Option<IpNet>> = (s.ip_networks.iter().enumerate())
        .map(|(i, n)| v.ok(format!("spec.ipNetworks[{i}]"), fields::net_as_written(n)))
        .collect();
    // Calico: a workload's networks are single addresses.
    let addresses = each(&networks, |i, net| {
        let net = (*net)?;
        if net.prefix_len() != net.max_prefix_len() {
            v.error(
                format!("spec.ipNetworks[{i}]"),
                format!(
                    "`{}` holds more than one address; accepted: a /32 or /128 (or a bare IP)",
                    s.ip_networks[i]
                ),
            );
            return None;
        }
        Some(net.addr())
    });
    ip_or_net(
        v,
        "spec.allowSpoofedSourcePrefixes",
        &s.allow_spoofed_source_prefixes,
    );
    // An endpoint of another node is only a peer here (`agent run --node`):
    // nothing is attached to it, so it needs no interface.
    if s.interface_name.is_empty() && s.node.as_deref().is_none_or(str::is_empty) {
        v.error(
            "spec.interfaceName",
            "interfaceName is required for a WorkloadEndpoint without `spec.node` \
             (one with `spec.node` needs it only on that node)",
        );
    }
    if let Some(id) = &s.container_id {
        container_id(v, id);
    }
    profile_names(v, &s.profiles);
    let named_ports = endpoint_ports(v, &s.ports, true);
    if !s.interface_name.is_empty() {
        v.check(
            "spec.interfaceName",
            fields::check_interface(&s.interface_name),
        );
    }
    if let Some(sa) = &s.service_account_name {
        v.check("spec.serviceAccountName", fields::check_name(sa));
    }
    let ns = namespace_of(&o.metadata);
    let profiles = if s.profiles.is_empty() {
        vec![format!("kns.{ns}")]
    } else {
        s.profiles.clone()
    };
    let endpoint = ir::Endpoint {
        kind: EndpointKind::Workload,
        namespace: Some(ns.into()),
        name: o.metadata.name.clone(),
        labels: own_workload_labels(&o.metadata.labels),
        interface: (!s.interface_name.is_empty()).then(|| s.interface_name.clone()),
        ips: addresses?,
        named_ports: named_ports?,
        profiles,
        pod: s.pod.clone().filter(|p| !p.is_empty()),
        node: s.node.clone().filter(|n| !n.is_empty()),
    };
    Some(Workload {
        endpoint,
        service_account: s.service_account_name.clone(),
        orchestrator: s.orchestrator.clone().unwrap_or_else(|| "k8s".into()),
    })
}

/// Like Calico, a workload cannot claim namespace or service-account labels.
fn own_workload_labels(labels: &StringMap) -> ir::Labels {
    labels
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(NAMESPACE_LABEL_PREFIX) && !k.starts_with(SERVICE_ACCOUNT_LABEL_PREFIX)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn container_id(v: &mut Issues, id: &str) {
    let ok = !id.is_empty()
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !id.starts_with('-')
        && !id.ends_with('-');
    if !ok {
        v.error(
            "spec.containerID",
            format!("containerID `{id}` is not valid; accepted: [a-zA-Z0-9-], starting and ending alphanumeric"),
        );
    }
}

pub(super) fn host(v: &mut Issues, o: &Object<HostEndpointSpec>) -> Option<ir::Endpoint> {
    let s = &o.spec;
    if s.node.as_deref().unwrap_or("").is_empty() {
        v.error(
            "spec.node",
            "node is required for a HostEndpoint (the host it belongs to)",
        );
    }
    if s.interface_name.is_empty() && s.expected_ips.is_empty() {
        v.error(
            "spec",
            "a HostEndpoint needs interfaceName or expectedIPs (or both)",
        );
    }
    let ips = ip_or_net(v, "spec.expectedIPs", &s.expected_ips);
    profile_names(v, &s.profiles);
    let named_ports = endpoint_ports(v, &s.ports, false);
    // `*` means every host interface.
    if !s.interface_name.is_empty() && s.interface_name != "*" {
        v.check(
            "spec.interfaceName",
            fields::check_interface(&s.interface_name),
        );
    }
    Some(ir::Endpoint {
        kind: EndpointKind::Host,
        namespace: None,
        name: o.metadata.name.clone(),
        labels: o.metadata.labels.clone(),
        interface: (!s.interface_name.is_empty()).then(|| s.interface_name.clone()),
        ips: ips?.iter().map(IpNet::addr).collect(),
        named_ports: named_ports?,
        profiles: s.profiles.clone(),
        pod: None,
        node: s.node.clone().filter(|n| !n.is_empty()),
    })
}

/// An endpoint's ports; the named ones are what policy sees (unnamed,
/// hostPort-only ones are not for policy).
fn endpoint_ports(
    v: &mut Issues,
    ports: &[EndpointPort],
    workload: bool,
) -> Option<Vec<NamedPort>> {
    let lowered = each(ports, |i, p| {
        endpoint_port(v, &format!("spec.ports[{i}]"), p, workload)
    });
    Some(lowered?.into_iter().flatten().collect())
}

/// Some(None) for a valid unnamed port.
fn endpoint_port(
    v: &mut Issues,
    path: &str,
    p: &EndpointPort,
    workload: bool,
) -> Option<Option<NamedPort>> {
    let mut ok = true;
    if p.name.is_empty() {
        // Calico: a workload port may go unnamed when it only maps a hostPort.
        if !workload || p.host_port == 0 {
            v.error(
                format!("{path}.name"),
                if workload {
                    "a workload port needs a name unless it sets hostPort"
                } else {
                    "a host endpoint port needs a name"
                },
            );
            ok = false;
        }
    } else if !matches!(
        fields::port(&IntOrString::Str(p.name.clone())),
        Ok(PortMatch::Named(_))
    ) {
        v.error(
            format!("{path}.name"),
            format!(
                "port name `{}` is not valid; accepted: [a-zA-Z0-9_.-]{{1,128}}, not only digits",
                p.name
            ),
        );
        ok = false;
    }
    let protocol = match &p.protocol {
        None => Err("protocol is required; accepted: TCP, UDP, SCTP".to_string()),
        Some(pr) => fields::protocol(pr).and_then(|n| match fields::supports_ports(Some(n)) {
            true => Ok(n),
            false => Err("a named port's protocol must be TCP, UDP or SCTP".into()),
        }),
    };
    let protocol = v.ok(format!("{path}.protocol"), protocol);
    let port = u16::try_from(p.port).ok().filter(|n| *n >= 1);
    if port.is_none() {
        v.error(
            format!("{path}.port"),
            format!("port {} is out of range; accepted: 1-65535", p.port),
        );
    }
    let (protocol, port) = (protocol?, port?);
    ok.then(|| {
        (!p.name.is_empty()).then(|| NamedPort {
            name: p.name.clone(),
            protocol,
            port,
        })
    })
}

/// A (Global)NetworkSet; `namespace` for a NetworkSet. Its labels are still
/// only its own.
pub(super) fn network_set(
    v: &mut Issues,
    o: &Object<NetworkSetSpec>,
    namespace: Option<&str>,
) -> Option<ir::NetworkSet> {
    let nets = set_nets(v, &o.spec.nets);
    no_namespace_label(v, &o.metadata.labels);
    if o.spec.allowed_egress_domains.is_some() {
        v.error(
            "spec.allowedEgressDomains",
            "DNS-based network sets are not supported by this agent; use `nets`",
        );
    }
    Some(ir::NetworkSet {
        namespace: namespace.map(str::to_string),
        name: o.metadata.name.clone(),
        labels: o.metadata.labels.clone(),
        nets: nets?,
    })
}

/// A network set's nets: each one checked, unless there are more than the
/// sanity bound (then one error, without parsing a million entries).
fn set_nets(v: &mut Issues, list: &[String]) -> Option<Vec<IpNet>> {
    if list.len() > MAX_SET_NETS {
        v.error(
            "spec.nets",
            format!(
                "{} nets; a network set holds at most {MAX_SET_NETS} (split it into several sets with the same labels)",
                list.len()
            ),
        );
        return None;
    }
    nets_of(v, "spec.nets", list, None).1
}

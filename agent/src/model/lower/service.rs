//! v1 Service, discovery.k8s.io EndpointSlice and v1 Endpoints: a Service's
//! frontends (what kube-proxy DNATs: ClusterIPs, externalIPs, LoadBalancer
//! ingress IPs) and its backends (what Calico's `services` match resolves to).
//!
//! Backends are every address an EndpointSlice lists (ready or not, as felix's
//! service IP sets hold them) or a v1 Endpoints subset lists (`addresses` and
//! `notReadyAddresses`), with the slice's (subset's) ports. A slice names its
//! Service by the `kubernetes.io/service-name` label; Endpoints by their own
//! name. Where a Service has both (what `kubectl get -o yaml` of a 1.21+
//! cluster prints: the Endpoints are mirrored), its slices are used
//! ([`super::super::assemble`]).
use std::net::IpAddr;

use super::{namespace_of, Issues};
use crate::model::ir::{self, BackendSet};
use crate::model::resources::KubeObject;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;

/// The label an EndpointSlice names its Service by.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One address field; None (error recorded) when it is not an IP address.
fn address(v: &mut Issues, field: &str, s: &str) -> Option<IpAddr> {
    v.ok(
        field,
        s.trim()
            .parse::<IpAddr>()
            .map_err(|_| format!("`{s}` is not an IP address")),
    )
}

/// A Service's frontends: `spec.clusterIPs` (else `spec.clusterIP`; `None`
/// of a headless Service is none), `spec.externalIPs`, and
/// `status.loadBalancer.ingress[].ip`.
pub(super) fn service(v: &mut Issues, o: &KubeObject<Service>) -> Option<ir::Service> {
    let spec = o.object.spec.clone().unwrap_or_default();
    let cluster_ips = match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ("spec.clusterIPs", ips.clone()),
        (_, Some(ip)) => ("spec.clusterIP", vec![ip.clone()]),
        _ => ("spec.clusterIPs", Vec::new()),
    };
    let mut lists = vec![cluster_ips];
    lists.push(("spec.externalIPs", spec.external_ips.unwrap_or_default()));
    let ingress = o
        .object
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.clone())
        .unwrap_or_default();
    lists.push((
        "status.loadBalancer.ingress",
        ingress.into_iter().filter_map(|i| i.ip).collect(),
    ));
    let mut frontends = Vec::new();
    let mut ok = true;
    for (field, list) in lists {
        for (i, s) in list.iter().enumerate() {
            if s.is_empty() || s == "None" {
                continue;
            }
            match address(v, &format!("{field}[{i}]"), s) {
                Some(ip) => frontends.push(ip),
                None => ok = false,
            }
        }
    }
    frontends.sort();
    frontends.dedup();
    ok.then(|| ir::Service {
        namespace: namespace_of(&o.metadata).into(),
        name: o.metadata.name.clone(),
        frontends,
        defined: true,
        backends: Vec::new(),
    })
}

/// A port's protocol (TCP when unset, as Kubernetes defaults it).
fn port_protocol(v: &mut Issues, field: &str, p: Option<&str>) -> Option<ir::Protocol> {
    let name = p.unwrap_or("TCP");
    let protocol = ir::Protocol::from_name(name).filter(|p| p.has_rule_ports());
    if protocol.is_none() {
        v.error(
            field,
            format!("protocol `{name}` is not valid here; accepted: TCP, UDP, SCTP"),
        );
    }
    protocol
}

fn port_number(v: &mut Issues, field: &str, port: i32) -> Option<u16> {
    let p = u16::try_from(port).ok().filter(|p| *p != 0);
    if p.is_none() {
        v.error(
            field,
            format!("port {port} is out of range; accepted: 1-65535"),
        );
    }
    p
}

/// An EndpointSlice's backends, for the Service its label names.
pub(super) fn endpoint_slice(
    v: &mut Issues,
    o: &KubeObject<EndpointSlice>,
) -> Option<(ir::ServiceRef, Vec<BackendSet>)> {
    let slice = &o.object;
    let Some(service) = o.metadata.labels.get(SERVICE_NAME_LABEL) else {
        v.warning(
            "metadata.labels",
            format!(
                "no `{SERVICE_NAME_LABEL}` label: this slice belongs to no Service and is ignored"
            ),
        );
        return Some((ir::ServiceRef::default(), Vec::new()));
    };
    if slice.address_type == "FQDN" {
        v.warning(
            "addressType",
            "FQDN endpoints have no addresses to match; ignored",
        );
        return Some((service_ref(o, service), Vec::new()));
    }
    let mut ok = true;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let field = format!("ports[{i}]");
        let protocol = port_protocol(v, &format!("{field}.protocol"), p.protocol.as_deref());
        // A port without a number means "all ports" in the API; kube-proxy
        // forwards none of it, and a rule cannot name it: left out.
        let number = p.port.map(|n| port_number(v, &format!("{field}.port"), n));
        match (protocol, number) {
            (Some(protocol), Some(Some(port))) => ports.push((protocol, port)),
            (Some(_), None) => {}
            _ => ok = false,
        }
    }
    let mut addresses = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        for (j, a) in e.addresses.iter().enumerate() {
            match address(v, &format!("endpoints[{i}].addresses[{j}]"), a) {
                Some(ip) => addresses.push(ip),
                None => ok = false,
            }
        }
    }
    ok.then(|| (service_ref(o, service), vec![backend_set(addresses, ports)]))
}

/// A v1 Endpoints object's backends, one set per subset.
pub(super) fn endpoints(
    v: &mut Issues,
    o: &KubeObject<Endpoints>,
) -> Option<(ir::ServiceRef, Vec<BackendSet>)> {
    let mut ok = true;
    let mut sets = Vec::new();
    for (i, subset) in o.object.subsets.iter().flatten().enumerate() {
        let mut ports = Vec::new();
        for (j, p) in subset.ports.iter().flatten().enumerate() {
            let field = format!("subsets[{i}].ports[{j}]");
            let protocol = port_protocol(v, &format!("{field}.protocol"), p.protocol.as_deref());
            let port = port_number(v, &format!("{field}.port"), p.port);
            match (protocol, port) {
                (Some(protocol), Some(port)) => ports.push((protocol, port)),
                _ => ok = false,
            }
        }
        let lists = [
            ("addresses", &subset.addresses),
            ("notReadyAddresses", &subset.not_ready_addresses),
        ];
        let mut addresses = Vec::new();
        for (list, items) in lists {
            for (j, a) in items.iter().flatten().enumerate() {
                match address(v, &format!("subsets[{i}].{list}[{j}].ip"), &a.ip) {
                    Some(ip) => addresses.push(ip),
                    None => ok = false,
                }
            }
        }
        sets.push(backend_set(addresses, ports));
    }
    let name = o.metadata.name.clone();
    ok.then(|| (service_ref(o, &name), sets))
}

fn service_ref<T>(o: &KubeObject<T>, name: &str) -> ir::ServiceRef {
    ir::ServiceRef {
        namespace: namespace_of(&o.metadata).into(),
        name: name.into(),
    }
}

fn backend_set(mut addresses: Vec<IpAddr>, mut ports: Vec<(ir::Protocol, u16)>) -> BackendSet {
    addresses.sort();
    addresses.dedup();
    ports.sort();
    ports.dedup();
    BackendSet { addresses, ports }
}

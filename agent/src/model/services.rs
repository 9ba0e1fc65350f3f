//! Services in the model: each Service with its backends (from its
//! EndpointSlices, else its v1 Endpoints), and Calico's `services` rule match
//! resolved to them, as felix's calculation graph resolves it to IP sets:
//! `source.services` to the backends' addresses, `destination.services` to
//! their (address, protocol, port) members.
//!
//! A Service that does not exist (nor has backends) matches nothing; `agent
//! check` warns about it ([`missing`]). Every change of a Service or its
//! endpoints rebuilds the model, and so re-resolves every rule.
use std::collections::BTreeMap;

use ipnet::IpNet;

use super::ir::{BackendSet, EntityRule, Model, PolicyId, Rule, Service, ServiceRef};
use super::lower::Lowered;

/// The Services of a load, sorted by namespace and name: those a document
/// defines and those only endpoints name.
pub fn collect<'a>(documents: impl IntoIterator<Item = &'a Lowered>) -> Vec<Service> {
    let mut services: BTreeMap<ServiceRef, Service> = BTreeMap::new();
    let mut endpoints: BTreeMap<ServiceRef, Vec<BackendSet>> = BTreeMap::new();
    let entry = |services: &mut BTreeMap<ServiceRef, Service>, key: &ServiceRef| {
        services
            .entry(key.clone())
            .or_insert_with(|| Service {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                ..Service::default()
            })
            .backends
            .len()
    };
    for d in documents {
        match d {
            Lowered::Service(s) => {
                let e = services.entry(s.key()).or_default();
                let backends = std::mem::take(&mut e.backends);
                *e = Service {
                    backends,
                    ..s.clone()
                };
            }
            Lowered::Backends { service, .. } if service.name.is_empty() => {}
            Lowered::Backends {
                service,
                sets,
                slice: true,
            } => {
                entry(&mut services, service);
                let s = services.get_mut(service).expect("just inserted");
                s.backends.extend(sets.iter().cloned());
            }
            Lowered::Backends {
                service,
                sets,
                slice: false,
            } => endpoints
                .entry(service.clone())
                .or_default()
                .extend(sets.iter().cloned()),
            _ => {}
        }
    }
    // v1 Endpoints stand in for a Service's slices only when it has none
    // (a 1.21+ cluster mirrors one into the other).
    for (key, sets) in endpoints {
        if entry(&mut services, &key) == 0 {
            services.get_mut(&key).expect("just inserted").backends = sets;
        }
    }
    services.into_values().collect()
}

/// Resolves every rule's `services` match (policies and profiles).
pub fn resolve_rules(model: &mut Model) {
    let by_key: BTreeMap<ServiceRef, &Service> =
        model.services.iter().map(|s| (s.key(), s)).collect();
    let resolve = |rules: &mut Vec<Rule>| {
        for r in rules.iter_mut() {
            resolve_side(&mut r.source, false, &by_key);
            resolve_side(&mut r.destination, true, &by_key);
        }
    };
    let mut policies = std::mem::take(&mut model.policies);
    for p in &mut policies {
        resolve(&mut p.ingress);
        resolve(&mut p.egress);
    }
    let mut profiles = std::mem::take(&mut model.profiles);
    for p in &mut profiles {
        resolve(&mut p.ingress);
        resolve(&mut p.egress);
    }
    model.policies = policies;
    model.profiles = profiles;
}

/// One side: its nets become the backends' addresses (none: `notNets` of
/// both roots, so nothing matches); a destination also gets the backend sets.
fn resolve_side(e: &mut EntityRule, destination: bool, by_key: &BTreeMap<ServiceRef, &Service>) {
    let Some(key) = &e.services else { return };
    let backends: Vec<BackendSet> = by_key
        .get(key)
        .map(|s| {
            s.backends
                .iter()
                .filter(|b| !b.addresses.is_empty() && (!destination || !b.ports.is_empty()))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    let mut nets: Vec<IpNet> = backends
        .iter()
        .flat_map(|b| b.addresses.iter().map(|a| IpNet::from(*a)))
        .collect();
    nets.sort();
    nets.dedup();
    if nets.is_empty() {
        e.nets.clear();
        e.not_nets = vec![
            "0.0.0.0/0".parse().expect("root"),
            "::/0".parse().expect("root"),
        ];
    } else {
        e.nets = nets;
        e.not_nets.clear();
    }
    e.service_ports = destination.then_some(backends);
}

/// The `services` matches of policies naming a Service that no document
/// defines (and no endpoints name): (policy, field, service). They match nothing.
pub fn missing(model: &Model) -> Vec<(PolicyId, String, ServiceRef)> {
    let known: std::collections::BTreeSet<ServiceRef> = model
        .services
        .iter()
        .filter(|s| s.defined || !s.backends.is_empty())
        .map(Service::key)
        .collect();
    let mut out = Vec::new();
    for p in &model.policies {
        for (direction, rules) in [("ingress", &p.ingress), ("egress", &p.egress)] {
            for (i, r) in rules.iter().enumerate() {
                for (side, e) in [("source", &r.source), ("destination", &r.destination)] {
                    if let Some(s) = e.services.as_ref().filter(|s| !known.contains(s)) {
                        let field = format!("spec.{direction}[{i}].{side}.services");
                        out.push((p.id.clone(), field, s.clone()));
                    }
                }
            }
        }
    }
    out
}

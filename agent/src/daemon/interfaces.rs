//! Endpoint interfaces: attaching the programs to those that exist, forgetting
//! those that went, and the interfaces an earlier agent's pinned links police.
use std::collections::{HashMap, HashSet};

use super::state::{Attachment, Inner, Interfaces};
use super::{protocol, services};
use crate::compile::CompiledEndpoint;
use crate::dataplane::Dataplane;

pub(super) fn if_index(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

pub(super) fn detach(dp: &mut Dataplane, interface: &str, a: Attachment) {
    if let Err(e) = dp.remove_endpoint(a.ifindex) {
        tracing::warn!(interface, error = %e, "removing endpoint entry");
    }
    // Removes the pins and closes the links (harmless when the interface is gone).
    a.detach();
}

/// Attaches to endpoint interfaces that exist and are not attached yet, forgets
/// ones that are gone or re-created, and (with `update`) rewrites every
/// endpoint entry (ids and flags may change with a recompile).
pub(super) fn reconcile_interfaces(inner: &mut Inner, update: bool) {
    let mut desired: HashMap<String, CompiledEndpoint> = HashMap::new();
    for e in &inner.enforced.endpoints {
        if e.interface == "*" || e.interface.is_empty() {
            continue;
        }
        desired
            .entry(e.interface.clone())
            .or_insert_with(|| e.clone());
    }
    let Inner {
        dp,
        config,
        interfaces,
        health,
        enforced,
        ..
    } = inner;
    let endpoint_ifs = desired.keys().cloned().collect();
    let frontends = enforced.good.model.service_frontends();
    // Replaced (empty) tables: not before this agent's first install (see `new_shared`).
    if !dp.replaced_tables() || enforced.last.is_some() {
        services::reconcile(
            dp,
            &config.services.with_frontends(&frontends),
            &mut interfaces.post_nat,
            &endpoint_ifs,
        );
    }
    forget_gone(dp, interfaces, &desired);
    for (name, ep) in &desired {
        if let Some(a) = interfaces.attached.get(name) {
            if update {
                if let Err(e) = dp.set_endpoint(a.ifindex, ep.info()) {
                    tracing::error!(interface = %name, error = %e, "updating endpoint");
                }
            }
            continue;
        }
        health.pinning.adopted_links += attach(dp, interfaces, name, ep);
    }
}

/// Detaches interfaces gone from the datastore, vanished or re-created.
fn forget_gone(
    dp: &mut Dataplane,
    interfaces: &mut Interfaces,
    desired: &HashMap<String, CompiledEndpoint>,
) {
    let attached = &mut interfaces.attached;
    let names: Vec<String> = attached.keys().cloned().collect();
    for name in names {
        let idx = if_index(&name);
        let stale = attached.get(&name).is_some_and(|a| a.ifindex != idx);
        if !desired.contains_key(&name) || stale {
            if let Some(a) = attached.remove(&name) {
                tracing::info!(interface = %name, ifindex = a.ifindex, "endpoint interface gone; detached");
                detach(dp, &name, a);
            }
        }
    }
    interfaces.errors.retain(|k, _| desired.contains_key(k));
}

/// Attaches to `name` if it exists; returns how many pinned links of an earlier
/// agent got this agent's programs.
fn attach(
    dp: &mut Dataplane,
    interfaces: &mut Interfaces,
    name: &str,
    ep: &CompiledEndpoint,
) -> usize {
    let idx = if_index(name);
    if idx == 0 {
        return 0;
    }
    // The endpoint entry first, so the first packet through the programs is policed.
    if let Err(e) = dp.set_endpoint(idx, ep.info()) {
        tracing::error!(interface = %name, error = %e, "setting endpoint");
        interfaces.errors.insert(name.to_string(), e.to_string());
        return 0;
    }
    match dp.attach_links(idx) {
        Err(e) => {
            tracing::error!(interface = %name, error = %e, "attaching");
            interfaces.errors.insert(name.to_string(), e.to_string());
            // An earlier agent's link still polices it: keep its entry.
            if !dp.has_pinned_link(idx) {
                if let Err(e) = dp.remove_endpoint(idx) {
                    tracing::warn!(interface = %name, error = %e, "removing endpoint entry");
                }
            }
            0
        }
        Ok(links) => {
            if links.adopted > 0 {
                tracing::info!(interface = %name, ifindex = idx, endpoint_id = ep.id, links = links.adopted, "adopted pinned links; swapped in this agent's programs");
            } else {
                tracing::info!(interface = %name, ifindex = idx, endpoint_id = ep.id, "attached");
            }
            let adopted = links.adopted;
            interfaces.errors.remove(name);
            interfaces.attached.insert(name.to_string(), links);
            adopted
        }
    }
}

/// Detaches pinned links and removes endpoint entries of interfaces that are no
/// longer endpoints (left by an earlier agent, or gone since). An endpoint
/// interface whose attach failed keeps an earlier agent's link.
pub(super) fn prune(inner: &mut Inner) {
    let keep: HashSet<u32> = inner
        .interfaces
        .attached
        .values()
        .map(|a| a.ifindex)
        .chain(
            inner
                .enforced
                .endpoints
                .iter()
                .map(|e| if_index(&e.interface)),
        )
        .filter(|&i| i != 0)
        .collect();
    let pruned = inner.dp.prune(&keep);
    if pruned > 0 {
        tracing::info!(
            links = pruned,
            "detached pinned links of interfaces that are no longer endpoints"
        );
        inner.health.pinning.pruned_links += pruned;
    }
}

/// Detaches every interface (`--detach-on-exit`).
pub(super) fn detach_all(inner: &mut Inner) {
    let Inner { dp, interfaces, .. } = inner;
    for (name, a) in interfaces.attached.drain() {
        detach(dp, &name, a);
    }
    services::detach_all(&mut interfaces.post_nat);
}

/// The interfaces an earlier agent's pinned links police (read from the pins
/// and the ENDPOINTS map), for the status before this agent's first install.
pub(super) fn adopted_endpoints(dp: &Dataplane) -> Vec<protocol::EndpointStatus> {
    use agent_common::endpoint_flags::{HAS_STAGED, HOST_ENDPOINT};
    let Some(dir) = dp.pin_dir() else {
        return Vec::new();
    };
    let ifindexes: std::collections::BTreeSet<u32> = crate::dataplane::loader::pinned_links(dir)
        .into_iter()
        .map(|(ifindex, _, _)| ifindex)
        .collect();
    ifindexes
        .into_iter()
        .map(|ifindex| {
            let info = dp.endpoint(ifindex);
            let flags = info.map_or(0, |i| i.flags);
            protocol::EndpointStatus {
                endpoint: "(adopted from an earlier agent)".into(),
                kind: if flags & HOST_ENDPOINT != 0 { "host" } else { "workload" }.into(),
                interface: if_name(ifindex).unwrap_or_else(|| format!("if{ifindex}")),
                id: info.map_or(0, |i| i.id),
                ifindex: Some(ifindex),
                attached: true,
                has_staged: flags & HAS_STAGED != 0,
                error: Some(
                    "policed by an earlier agent's pinned tables; this agent's are not installed yet"
                        .into(),
                ),
                last_good: None,
            }
        })
        .collect()
}

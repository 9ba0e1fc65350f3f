//! Endpoint ids, an input of the compile: the ids the caller already uses
//! (the daemon's, seeded from the pinned `ENDPOINTS` map after a restart) are
//! kept, new endpoints get ids never handed out before.
//!
//! Why stable ids: `ENDPOINTS` (ifindex -> id) is not double-buffered like the
//! tables, and the new tables go live (flip) before the entries are rewritten.
//! If the compiler renumbered endpoints (e.g. one left the datastore), an
//! interface would for a moment be judged by another endpoint's rules with
//! its old id, and a deny cached in conntrack then would kill an established
//! connection. With stable ids an unchanged endpoint's id means the same in
//! both copies. They also let an incremental compile reuse an endpoint's
//! entries as they are (its id is part of every key).
use std::collections::{HashMap, HashSet};

use super::CompiledEndpoint;
use crate::model::ir::Model;

/// Ids by (endpoint key, interface), and the next id never handed out.
/// The default (no ids, next 1) numbers endpoints 1.. in model order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointIds {
    ids: HashMap<(String, String), u32>,
    next: u32,
}

impl Default for EndpointIds {
    fn default() -> Self {
        EndpointIds {
            ids: HashMap::new(),
            next: 1,
        }
    }
}

impl EndpointIds {
    /// Whether no id is known (nothing compiled or seeded yet).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The id of (endpoint key, interface), if it has one.
    pub fn get(&self, key: &str, interface: &str) -> Option<u32> {
        self.ids
            .get(&(key.to_string(), interface.to_string()))
            .copied()
    }

    /// Gives (endpoint key, interface) `id` (e.g. from the pinned map), unless
    /// another endpoint has it already; ids from `id + 1` on stay unused.
    pub fn seed(&mut self, key: String, interface: String, id: u32) {
        if id == 0 || self.ids.values().any(|&v| v == id) {
            return;
        }
        self.ids.insert((key, interface), id);
        self.next = self.next.max(id + 1);
    }

    /// The ids to compile with after `endpoints` (of `model`) were installed:
    /// theirs, and the next id still never handed out (a retired id is not
    /// reused, so it cannot name another endpoint while conntrack or the old
    /// copy still hold it).
    pub fn after(&self, model: &Model, endpoints: &[CompiledEndpoint]) -> EndpointIds {
        let mut next = self.next;
        let ids = endpoints
            .iter()
            .filter_map(|e| {
                next = next.max(e.id + 1);
                let m = model.endpoints.get(e.endpoint_index)?;
                Some(((m.key(), e.interface.clone()), e.id))
            })
            .collect();
        EndpointIds { ids, next }
    }

    /// Ids for the endpoints `targets` (indexes of `model.endpoints` with an
    /// interface) in order: an endpoint's known id unless an earlier one took
    /// it, else the next never handed out.
    pub(super) fn assign(&self, model: &Model, targets: &[usize]) -> Vec<u32> {
        let mut next = self.next.max(1);
        let mut used = HashSet::with_capacity(targets.len());
        targets
            .iter()
            .map(|&i| {
                let e = &model.endpoints[i];
                let interface = e.interface.clone().unwrap_or_default();
                let id = match self.ids.get(&(e.key(), interface)) {
                    Some(&id) if !used.contains(&id) => id,
                    _ => {
                        next += 1;
                        next - 1
                    }
                };
                used.insert(id);
                id
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::testgen::scale_model;
    use crate::compile::{compile, compile_with, Limits};

    fn id_of(c: &super::super::Compiled, model: &Model, name: &str) -> u32 {
        c.endpoints
            .iter()
            .find(|e| model.endpoints[e.endpoint_index].name == name)
            .unwrap()
            .id
    }

    #[test]
    fn kept_ids_survive_a_removed_endpoint_and_retired_ids_are_not_reused() {
        let model = scale_model(6, 4, 1);
        let first = compile(&model).unwrap();
        let ids: Vec<u32> = first.endpoints.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6], "no ids given: 1.. in model order");
        let known = EndpointIds::default().after(&model, &first.endpoints);
        let mut next = model.clone();
        next.endpoints.remove(1);
        let mut added = (*next.endpoints[0]).clone();
        added.name = "added".into();
        added.interface = Some("cali-added".into());
        next.endpoints.insert(0, added.into());
        let c = compile_with(&next, &Limits::default(), &known).unwrap();
        for name in ["pod0", "pod2", "pod5"] {
            assert_eq!(
                id_of(&c, &next, name),
                id_of(&first, &model, name),
                "{name}"
            );
        }
        assert_eq!(id_of(&c, &next, "added"), 7, "a new id, not pod1's 2");
        // The same tables as a compile numbering 1.. would give, up to the ids.
        let plain = compile(&next).unwrap();
        assert_eq!(plain.tables.rules.len(), c.tables.rules.len());
        assert_eq!(plain.tables.peers, c.tables.peers);
    }

    #[test]
    fn seeded_ids_are_kept_and_a_taken_id_is_not_seeded_twice() {
        let model = scale_model(3, 2, 1);
        let mut ids = EndpointIds::default();
        ids.seed(model.endpoints[2].key(), "cali2".into(), 40);
        ids.seed(model.endpoints[0].key(), "cali0".into(), 40);
        let c = compile_with(&model, &Limits::default(), &ids).unwrap();
        let got: Vec<u32> = c.endpoints.iter().map(|e| e.id).collect();
        assert_eq!(got, [41, 42, 40]);
    }
}

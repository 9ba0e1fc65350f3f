//! Endpoint ids that stay the same across compiles and restarts.
//!
//! Why: ENDPOINTS (ifindex -> id) is not double-buffered like the tables, and
//! the new tables go live (flip) before the entries are rewritten. If the
//! compiler renumbered endpoints (e.g. one left the datastore), an interface
//! would for a moment be judged by another endpoint's rules with its old id,
//! and a deny cached in conntrack then would kill an established connection.
//! With stable ids an unchanged endpoint's id means the same in both copies.
use std::collections::{HashMap, HashSet};

use super::interfaces::if_index;
use crate::compile::{Compiled, CompiledEndpoint};
use crate::dataplane::Dataplane;
use crate::model::ir::Model;

/// Ids by (endpoint, interface), and the next id never handed out.
pub(super) struct StableIds {
    ids: HashMap<(String, String), u32>,
    next: u32,
}

impl Default for StableIds {
    fn default() -> Self {
        StableIds {
            ids: HashMap::new(),
            next: 1,
        }
    }
}

impl StableIds {
    /// Gives each endpoint of `compiled` the id it had in the previous compile
    /// (or, on the first compile after adopting pinned state, the id its
    /// interface has in the pinned ENDPOINTS map), and never reuses a retired id.
    pub(super) fn apply(&mut self, dp: &Dataplane, model: &Model, compiled: &mut Compiled) {
        let key = |e: &CompiledEndpoint| {
            let name = model
                .endpoints
                .get(e.endpoint_index)
                .map(|m| m.key())
                .unwrap_or_default();
            (name, e.interface.clone())
        };
        if self.ids.is_empty() && dp.adopted() {
            self.seed_from_pinned(dp, &compiled.endpoints, key);
        }
        let mut map: HashMap<u32, u32> = HashMap::new();
        let mut used = HashSet::new();
        let mut next_ids = HashMap::new();
        for e in &mut compiled.endpoints {
            let k = key(e);
            let id = match self.ids.get(&k) {
                Some(&id) if !used.contains(&id) => id,
                _ => {
                    let id = self.next;
                    self.next += 1;
                    id
                }
            };
            used.insert(id);
            map.insert(e.id, id);
            next_ids.insert(k, id);
            e.id = id;
        }
        // Entries of endpoints without an interface are never looked up (no
        // ENDPOINTS entry names them); drop them so their ids cannot collide.
        let tables = &mut compiled.tables;
        renumber(&mut tables.rules, &map, |r| &mut r.endpoint_id);
        renumber(&mut tables.sports, &map, |s| &mut s.endpoint_id);
        renumber(&mut tables.groups, &map, |g| &mut g.endpoint_id);
        self.ids = next_ids;
    }

    /// Keeps `id` for (endpoint key, interface): a frozen endpoint copied into
    /// the compile after [`StableIds::apply`] (ids are never handed out twice).
    pub(super) fn keep(&mut self, key: String, interface: String, id: u32) {
        self.ids.insert((key, interface), id);
    }

    /// Seeds the ids from the pinned entries of an earlier agent.
    fn seed_from_pinned(
        &mut self,
        dp: &Dataplane,
        endpoints: &[CompiledEndpoint],
        key: impl Fn(&CompiledEndpoint) -> (String, String),
    ) {
        let mut max = 0;
        for e in endpoints {
            let idx = if_index(&e.interface);
            if idx == 0 {
                continue;
            }
            if let Some(info) = dp.endpoint(idx) {
                if !self.ids.values().any(|&v| v == info.id) {
                    self.ids.insert(key(e), info.id);
                    max = max.max(info.id);
                }
            }
        }
        self.next = self.next.max(max + 1);
    }
}

/// Rewrites each entry's endpoint id through `map`, dropping entries of ids not in it.
fn renumber<T>(entries: &mut Vec<T>, map: &HashMap<u32, u32>, id: impl Fn(&mut T) -> &mut u32) {
    entries.retain_mut(|e| match map.get(id(e)) {
        Some(&new) => {
            *id(e) = new;
            true
        }
        None => false,
    });
}

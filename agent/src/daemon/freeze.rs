//! Failures stay local for enforced endpoints too: an endpoint this agent
//! enforces whose new compile fails (a per-endpoint capacity, a rule the
//! compiler cannot handle) keeps the tables it has now, copied from the
//! installed compile into the new one, while every other endpoint gets its new
//! tables. Never loosened, never dropped.
//!
//! The copy must judge exactly as before. Peer classes are global, so the two
//! compiles' classes are merged: a merged class is a pair (new class, old
//! class) of the longest prefix an address matches among both prefix lists
//! (that prefix decides both longest-prefix matches, see [`merge_peers`]).
//! New endpoints' groups are keyed by the new half, frozen ones' by the old
//! half; a frozen endpoint keeps its id, rules, source-port classes and flags,
//! and its verdicts are renumbered to the new compile's policy, tier and
//! profile indexes (names the new compile lacks are appended).
use std::collections::HashMap;

use agent_common::POLICY_NONE;
use ipnet::IpNet;

use crate::compile::{tier_code, Compiled, CompiledEndpoint};
use crate::dataplane::{GroupEntry, RuleEntry};
use crate::model::ir::Model;

/// An enforced endpoint kept on its last good tables, for `agent status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frozen {
    /// `namespace/name` or the host endpoint's name.
    pub endpoint: String,
    pub interface: String,
    /// The tables generation its enforced version was compiled for, and when.
    pub since_generation: u32,
    pub since_ns: u64,
    /// Why its new version is not enforced.
    pub error: String,
}

/// Copies the endpoints `frozen` (key, interface) from `old` into `new`, whose
/// compile left them out; `model` is the new compile's model (for their
/// indexes). Returns the keys copied (those `old` and `model` both have).
pub fn keep_frozen(
    new: &mut Compiled,
    old: &Compiled,
    model: &Model,
    frozen: &[(String, String)],
) -> Vec<String> {
    let kept: Vec<(CompiledEndpoint, usize, String)> = frozen
        .iter()
        .filter_map(|(key, interface)| {
            let e = old.endpoints.iter().find(|e| e.interface == *interface)?;
            let index = model.endpoints.iter().position(|m| m.key() == *key)?;
            Some((e.clone(), index, key.clone()))
        })
        .collect();
    if kept.is_empty() {
        return Vec::new();
    }
    let (peers, new_of, old_of) = merge_peers(&new.tables.peers, &old.tables.peers);
    new.stats.peer_prefixes = peers.len();
    new.stats.classes = peers.iter().map(|p| p.1 as usize + 1).max().unwrap_or(1);
    new.tables.peers = peers;
    new.tables.groups = regroup(&new.tables.groups, &new_of, |_| true);
    let ids: Vec<u32> = kept.iter().map(|(e, ..)| e.id).collect();
    let frozen_groups = regroup(&old.tables.groups, &old_of, |g| {
        ids.contains(&g.endpoint_id)
    });
    new.tables.groups.extend(frozen_groups);
    let mut names = Renames::default();
    for r in old
        .tables
        .rules
        .iter()
        .filter(|r| ids.contains(&r.endpoint_id))
    {
        let mut r: RuleEntry = *r;
        names.verdict(old, new, &mut r.verdict);
        new.tables.rules.push(r);
    }
    let sports = old
        .tables
        .sports
        .iter()
        .filter(|s| ids.contains(&s.endpoint_id));
    new.tables.sports.extend(sports.copied());
    let mut keys = Vec::new();
    for (mut e, index, key) in kept {
        e.endpoint_index = index;
        new.endpoints.push(e);
        keys.push(key);
    }
    keys
}

/// Peer class -> merged classes holding it.
type ClassMap = HashMap<u32, Vec<u32>>;

/// The union of two prefix -> class lists, with merged classes (see the module
/// comment), and which merged classes each new and each old class became.
/// Class 0 (no prefix matches) stays 0.
fn merge_peers(
    new: &[(IpNet, u32)],
    old: &[(IpNet, u32)],
) -> (Vec<(IpNet, u32)>, ClassMap, ClassMap) {
    let (new_lpm, old_lpm) = (Lpm::new(new), Lpm::new(old));
    let mut pairs: HashMap<(u32, u32), u32> = HashMap::from([((0, 0), 0)]);
    let (mut new_of, mut old_of) = (ClassMap::new(), ClassMap::new());
    let mut prefixes: Vec<IpNet> = new.iter().chain(old).map(|p| p.0.trunc()).collect();
    prefixes.sort();
    prefixes.dedup();
    let mut out = Vec::with_capacity(prefixes.len());
    for p in prefixes {
        let pair = (new_lpm.class(&p), old_lpm.class(&p));
        let next = pairs.len() as u32;
        let merged = *pairs.entry(pair).or_insert_with(|| {
            new_of.entry(pair.0).or_default().push(next);
            old_of.entry(pair.1).or_default().push(next);
            next
        });
        out.push((p, merged));
    }
    new_of.entry(0).or_default().push(0);
    old_of.entry(0).or_default().push(0);
    (out, new_of, old_of)
}

/// Longest-prefix match of a prefix among a list's prefixes, by length.
struct Lpm(HashMap<IpNet, u32>);

impl Lpm {
    fn new(peers: &[(IpNet, u32)]) -> Lpm {
        Lpm(peers.iter().map(|(p, c)| (p.trunc(), *c)).collect())
    }

    /// The class of the longest listed prefix containing `p` (0: none).
    fn class(&self, p: &IpNet) -> u32 {
        (0..=p.prefix_len())
            .rev()
            .find_map(|len| {
                let q = IpNet::new(p.addr(), len).ok()?.trunc();
                self.0.get(&q).copied()
            })
            .unwrap_or(0)
    }
}

/// `groups` (of the endpoints `keep` takes) rekeyed from their classes to the
/// merged classes that hold them.
fn regroup(
    groups: &[GroupEntry],
    of: &ClassMap,
    keep: impl Fn(&GroupEntry) -> bool,
) -> Vec<GroupEntry> {
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| keep(g)) {
        for &class in of.get(&g.class).into_iter().flatten() {
            out.push(GroupEntry { class, ..*g });
        }
    }
    out
}

/// Old policy/tier/profile indexes -> the new compile's.
#[derive(Default)]
struct Renames {
    tiers: HashMap<u16, u16>,
    policies: HashMap<u32, u32>,
    profiles: HashMap<u32, u32>,
}

impl Renames {
    fn verdict(&mut self, old: &Compiled, new: &mut Compiled, v: &mut agent_common::Verdict) {
        if v.tier == tier_code::PROFILE {
            if let Some(name) = old.profiles.get(v.policy as usize) {
                v.policy = *self
                    .profiles
                    .entry(v.policy)
                    .or_insert_with(|| index_of(&mut new.profiles, name) as u32);
            }
            return;
        }
        if v.tier >= tier_code::FIRST_RESERVED {
            return;
        }
        if let Some(name) = old.tiers.get(usize::from(v.tier)) {
            v.tier = *self
                .tiers
                .entry(v.tier)
                .or_insert_with(|| index_of(&mut new.tiers, name) as u16);
        }
        if v.policy != POLICY_NONE {
            if let Some(id) = old.policies.get(v.policy as usize) {
                v.policy = *self
                    .policies
                    .entry(v.policy)
                    .or_insert_with(|| index_of(&mut new.policies, id) as u32);
            }
        }
    }
}

/// The index of `item` in `list`, appended if missing.
fn index_of<T: PartialEq + Clone>(list: &mut Vec<T>, item: &T) -> usize {
    list.iter().position(|x| x == item).unwrap_or_else(|| {
        list.push(item.clone());
        list.len() - 1
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::compile;
    use crate::compile::testgen::{random_model, random_probe, Rng, Shape, TableModel};

    /// The kernel's answer for a probe, with the deciding names (not indexes).
    fn answer(
        c: &Compiled,
        sim: &TableModel,
        id: u32,
        p: &crate::compile::testgen::Probe,
    ) -> String {
        let v = sim.lookup(
            id,
            p.direction,
            false,
            p.peer,
            p.protocol,
            p.src_port,
            p.port,
        );
        format!("{} {}", v.action, c.describe(&v))
    }

    fn shift_ids(c: &mut Compiled, by: u32) {
        c.endpoints.iter_mut().for_each(|e| e.id += by);
        c.tables.rules.iter_mut().for_each(|e| e.endpoint_id += by);
        c.tables.sports.iter_mut().for_each(|e| e.endpoint_id += by);
        c.tables.groups.iter_mut().for_each(|e| e.endpoint_id += by);
    }

    #[test]
    fn frozen_endpoints_judge_as_before_and_the_others_as_new() {
        let (mut frozen_cases, mut other_cases, mut changed) = (0, 0, 0);
        for seed in 0..40u64 {
            let mut rng = Rng::new(0xf4ee_0000 + seed);
            let old_model = random_model(&mut rng, Shape::default());
            let Ok(old) = compile(&old_model) else {
                continue;
            };
            // The new version: about half the policies gone (other peer classes).
            let mut new_model = old_model.clone();
            new_model.policies.retain(|_| rng.chance(50));
            let Some(target) = old.endpoints.first().cloned() else {
                continue;
            };
            let key = old_model.endpoints[target.endpoint_index].key();
            let mut without = new_model.clone();
            std::sync::Arc::make_mut(&mut without.endpoints[target.endpoint_index]).interface =
                None;
            let Ok(mut plain) = compile(&without) else {
                continue;
            };
            // Ids as `StableIds` leaves them: a frozen endpoint's is never reused.
            shift_ids(&mut plain, 1000);
            let mut merged = plain.clone();
            let kept = keep_frozen(
                &mut merged,
                &old,
                &new_model,
                &[(key.clone(), target.interface.clone())],
            );
            assert_eq!(kept, [key]);
            // What the new policy would give the frozen endpoint.
            let Ok(full) = compile(&new_model) else {
                continue;
            };
            let full_id = full
                .endpoints
                .iter()
                .find(|e| e.interface == target.interface)
                .unwrap()
                .id;
            let sims = [&old, &plain, &merged, &full].map(|c| TableModel::new(&c.tables).unwrap());
            let eps: Vec<usize> = (0..new_model.endpoints.len())
                .filter(|&i| !new_model.endpoints[i].ips.is_empty())
                .collect();
            for _ in 0..300 {
                let p = random_probe(&mut rng, &new_model, &eps);
                let Some(e) = merged
                    .endpoints
                    .iter()
                    .find(|e| e.endpoint_index == p.endpoint_index)
                else {
                    continue;
                };
                let got = answer(&merged, &sims[2], e.id, &p);
                if e.interface == target.interface {
                    let want = answer(&old, &sims[0], target.id, &p);
                    assert_eq!(got, want, "seed {seed}: frozen endpoint, {p:?}");
                    frozen_cases += 1;
                    let now = answer(&full, &sims[3], full_id, &p);
                    changed += usize::from(now != want);
                } else {
                    let want = answer(&plain, &sims[1], e.id, &p);
                    assert_eq!(got, want, "seed {seed}: other endpoint, {p:?}");
                    other_cases += 1;
                }
            }
        }
        eprintln!("frozen: {frozen_cases} cases ({changed} judged otherwise by the new policy), others: {other_cases}");
        assert!(
            frozen_cases > 500 && other_cases > 500,
            "{frozen_cases} {other_cases}"
        );
        assert!(
            changed > frozen_cases / 20,
            "the new policy barely differs: {changed}"
        );
    }
}

//! The policy compiler: the validated [`Model`] -> BPF map contents
//! ([`TableSet`]: peer classes, per-endpoint peer groups, source-port classes
//! and decision tables, enforced and pending), exact by construction: every table cell is
//! the reference evaluator's answer for a representative packet of that cell.
//!
//! # Peer classes
//! Every prefix a predicate can distinguish is collected: endpoint IPs (/32,
//! /128), network-set nets, rule nets/notNets of every policy (enforced and
//! staged) and profile that applies to a compiled endpoint (one with an
//! interface), failsafe nets, and the two family roots `0.0.0.0/0` and `::/0`. Under longest-prefix match an address's longest collected prefix P
//! decides its membership in every collected prefix, so each P with a non-empty
//! *region* (the addresses of P not inside a longer collected prefix) is an
//! atom. Its signature is its family, its membership in every net, in every rule
//! selector's IP set (endpoints and network sets whose labels match) and the
//! named ports of the endpoints owning it; atoms with equal signatures share a
//! class id (1..; class 0, "no prefix", never occurs because both roots are
//! emitted). A prefix whose class equals that of its nearest emitted enclosing
//! prefix is left out of `peers` (LPM lands on the enclosing one).
//!
//! # Decision tables
//! Per endpoint (with an interface) and direction, classes are grouped by the
//! signature bits the endpoint's applicable rules (both sets, profiles,
//! failsafes) actually read; one representative per group is evaluated. The
//! dimensions: the protocols those rules can tell apart (plus a representative
//! "other" protocol), for port protocols each source-port class of the protocol
//! (below), and per protocol the intervals between all destination-port
//! breakpoints (range ends, named ports, failsafe ports; for ICMP the kernel's
//! `type << 8 | code` value split at every type and type/code mentioned).
//! A group is evaluated only at the breakpoints of the rules that can match its
//! peers (family, nets and selectors on the peer's side); the other intervals
//! copy their left neighbour, since the answer cannot change there. So N rules
//! of distinct (peer, port) cost O(N) evaluations, not groups x intervals.
//! A cell is evaluated with a representative packet: the class's representative
//! source port (the usual ephemeral port where the class has it), the
//! interval's first port.
//!
//! # Source-port classes
//! Per endpoint, direction and port protocol (TCP, UDP, SCTP, UDPLite), the
//! source-port space is split at the bounds of every source `ports`/`notPorts`
//! match of the rules the endpoint can consult (both sets, profiles; a named
//! port contributes every endpoint's port of that name and protocol: on ingress
//! it is the peer's, on egress the endpoint's own). Intervals contained in the
//! same matches form one class, so every predicate on source ports is constant
//! on a class (for named ports: a class holding two ports holds no named port).
//! A protocol with one class needs nothing (class 0, what the kernel uses for
//! endpoints without [`agent_common::endpoint_flags::SOURCE_PORTS`]): tables of
//! endpoints without source-port rules are exactly what they were before source
//! ports existed. Otherwise `SPORTS_*` gets an entry covering every port with
//! class 0 (given to the class whose intervals would cost the most LPM
//! prefixes) and narrower ones for the other classes (at most 256, the key's
//! byte), and the endpoint gets `SOURCE_PORTS`. A kernel miss means class 0: it
//! happens only for unclassified protocols, and while the flag is raised ahead
//! of the tables that need it (the tables before use class 0 only).
//!
//! # Encoding (peer groups, wildcard group)
//! The table is keyed by a per-(endpoint, direction) *peer group*, not the
//! global class: `GROUPS_*` maps (endpoint, class, direction) to a group, a miss
//! meaning the wildcard group ([`PeerMatch::Any`]). Per table the row shared by
//! the most classes is the wildcard row. Each distinct tuple of rows (enforced,
//! and pending when the endpoint has staged policy: one group serves both
//! tables) other than the wildcard rows' tuple gets a group (1.., in class
//! order), its classes a `GROUPS_*` entry each, and its rows entries once,
//! however many classes share them. So entries grow with (distinct rows) x
//! (port runs), and `GROUPS_*` with the classes an endpoint treats unlike its
//! wildcard.
//!
//! The kernel probes the peer's group (unless it is the wildcard), and only on
//! a miss the wildcard group, so a group's entries are exceptions only. Per
//! table, the wildcard row is stored complete under [`PeerMatch::Any`] (an
//! any-protocol entry with its "other protocols" verdict plus, per protocol,
//! its port runs that differ from that). A group whose row in a table equals
//! the wildcard row has no entries there (the miss is right); otherwise:
//! - if its "other protocols" verdict equals the wildcard's: just the port runs
//!   (maximal runs of equal verdict) that differ somewhere from the wildcard —
//!   everything else misses and falls back to the wildcard, which is right;
//! - otherwise: its own any-protocol entry plus its runs that differ from its own
//!   "other" verdict — it never falls back.
//!
//! Runs are per (protocol, source-port class) and carry the class
//! (`RuleKey::source_port_class`, prefix 96 + port bits); a protocol with several
//! source-port classes and one verdict in all its cells gets a single entry for
//! all classes (prefix 88) instead.
//!
//! Pending entries exist only for endpoints where a staged policy changes the
//! applicable policy list ([`CompiledEndpoint::has_staged`]).
//!
//! # Verdict encoding
//! `tier`/`policy` index [`Compiled::tiers`]/[`Compiled::policies`]; `rule` is
//! the rule index, -1 for end of tier. Reserved tiers: [`tier_code::FAILSAFE`]
//! (`rule = protocol << 16 | port`), [`tier_code::PROFILE`] (`policy` indexes
//! [`Compiled::profiles`]), [`tier_code::NO_MATCH`] (nothing decided: deny);
//! `u16::MAX` is the kernel's own "no table entry".
//!
//! # Not compiled (errors, never silently wrong tables)
//! - An endpoint with several addresses of one family whose verdicts differ by
//!   which of its own addresses a packet uses (the kernel keys on the endpoint,
//!   not its address): [`CompileError::Unsupported`].
//! - IPv6 nets inside `::ffff:0:0/96` (the kernel stores IPv4 there).
//! - More than 256 source-port classes for one endpoint, direction and protocol
//!   (one byte of the rule key), or more `SPORTS_*`, `GROUPS_*` or `RULES_*`
//!   entries than fit: [`CompileError::Capacity`].
//!
//! A family an endpoint has no address of is evaluated with the unspecified
//! address (`0.0.0.0` / `::`) as the local address. IPv6 packets with
//! IPv4-mapped addresses are dropped by the kernel as malformed. The kernel
//! judges a flow's source port as the initiator's (also when a reply re-judges a
//! flow after a policy change), non-first fragments as ports 0/0.
//!
//! # Endpoint and class ids, incremental compiles
//! Endpoint ids are an input ([`EndpointIds`]): the daemon passes the ids it
//! installed (after a restart, those of the pinned `ENDPOINTS` map), new
//! endpoints get ids never handed out; without ids endpoints are numbered 1..
//! in model order. Peer-class ids may be seeded too ([`ClassIds`]): a class
//! whose signature (its atoms themselves, not their bit indexes) existed in the
//! last compile keeps its id where it can (ids stay 1..=classes).
//!
//! [`Compiler`] keeps, per endpoint, its entries and a key of everything they
//! depend on (its own record and id, its applicable policies and profiles and
//! their verdict indexes, failsafes, and every class seen through the atoms its
//! rules read; see `incremental`), plus the class ids; the next compile
//! evaluates only endpoints whose key changed and reuses the others' entries.
//! The result is the compile from scratch with the same ids
//! ([`Compiler::compile_fresh`]; tested on random edit sequences). A pod
//! relabelled into an existing class, a pod added or removed elsewhere, or one
//! policy changed then costs the global steps (evaluator indexes, peer
//! classes, keys) plus the endpoints it touches. Not incremental: the global
//! steps, and changes that shift verdict indexes (a policy inserted or removed
//! before others renumbers the later policies: their endpoints recompile).
//!
//! # Cost
//! Endpoints are compiled independently (in parallel, results in model order).
//! Measured (`compile::tests::compile_time`, release, a loaded 2-core VM, CPU
//! time): 100 endpoints x 50 policies 34 ms (40k evaluations, 4.1k keys);
//! 300 x 100 0.16 s; 1000 x 200 1.6 s (0.9M evaluations, 120k keys).
//! Incremental ([`Compiler`], `tests/benches/control_plane.rs`, release, a
//! loaded 2-core VM): at 5,000 endpoints (100 local) x 1,000 policies one
//! change (a pod relabelled, added or removed, a policy's port) compiles in
//! 10 ms p50 / 16-18 ms p99 (97 of 100 endpoints reused; 24 / 33 ms in the
//! same runs before the model was hashed with `Hash` instead of its `Debug`
//! text, selectors were evaluated once per label set and peer classes lost
//! their per-prefix allocations), and 50 pod changes/s at 10,000 pods keep up
//! (lag flat at ~0.3 s p99). What remains per compile is global: evaluator
//! indexes, names, peer classes (about half of it: every endpoint's address
//! and rule-selector bits), keys (docs/benchmarks.md, "Control plane").
//!
//! Peer classes cost O(prefixes x nesting depth), not prefixes x nets: a
//! network set of 100,000 nets compiles in ~0.1 s (release; docs/benchmarks.md).
//!
//! A row is kept as its runs of equal verdict (`emit::Runs`), built from the
//! evaluator's answers at the group's needed intervals only, so rows cost the
//! verdict changes, not groups x intervals: 10,000 distinct (peer, port) rules
//! compile in ~0.5 s of CPU (docs/benchmarks.md, "Compile time").
//!
//! Source-port classes multiply a port protocol's evaluations (and, where verdicts
//! differ, its entries) by the number of its classes; endpoints without
//! source-port rules pay nothing.
//!
//! Labels that make nearly every pod its own class (many `pod in {..}`
//! selectors) cost `GROUPS_*` entries (one per class an endpoint treats unlike
//! its wildcard), not rule entries per class: `testgen::per_pod_label_model`
//! at 300 pods x 100 policies needs 51,990 rule keys and 244,800 group entries
//! (keyed by the global class it needed 263,607 rule keys). Scaling: group
//! entries grow with endpoints x directions x classes treated unlike the
//! wildcard; at 10,000 pods x 1,000 policies with 1,000 local pods
//! (`tests/benches/capacity.rs`) 650,300 rule keys and 1,852,600 group
//! entries, within `RULES_*` (1,048,576, an LPM trie: memory on use) and
//! `GROUPS_*` (2,097,152, a hash without preallocation); beyond them a
//! Capacity error, never a partial table. A wildcard per family was measured
//! there and does not pay (-0.5% group entries, +64% rule keys: the entries
//! are same-family pods named by `pod in {..}` selectors). Endpoints with
//! identical tables (12 distinct among those 1,000) each get a copy in the
//! kernel; sharing them there is the next saving (docs/benchmarks.md,
//! "Capacity").
//!
//! # One compile per endpoint view
//! Endpoints whose tables can only differ by their id (the same applicable
//! policies per set and direction, kind, reachable profiles, and what rules
//! read on their own side; see `views`) are compiled once, the others take
//! those entries under their own id: at 10,000 pods x 1,000 policies the
//! 1,000 local pods are 12 compiles (1.4 s in all instead of ~7 minutes).
//!
//! # Tests
//! `compile::tests` (scenarios, and random models, with source-port rules and
//! probes aimed at them, checked against the evaluator through
//! `testgen::TableModel`, a userspace model of the kernel's lookups) and
//! `tests/tests/bpf_differential.rs` (the same, through the real programs with
//! BPF_PROG_TEST_RUN).
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dataplane::tables::TableSet;
use crate::eval::Evaluator;
use crate::model::ir::{EndpointKind, Model, PolicyId};

mod budget;
mod emit;
mod endpoint;
#[cfg(any(test, feature = "testkit"))]
pub mod feed;
#[cfg(test)]
mod golden;
mod ids;
mod incremental;
mod names;
mod peers;
mod ports;
mod source_ports;
#[cfg(any(test, feature = "testkit"))]
pub mod testgen;
#[cfg(test)]
mod tests;
mod views;

use budget::{Budget, EndpointUse};
pub use budget::{Limits, MAX_KEYS_PER_ENDPOINT};
use endpoint::{compile_endpoint, EndpointOut, Shared};
pub use ids::EndpointIds;
pub use incremental::Compiler;
use incremental::{Cache, Cached, ModelHashes};
pub use names::tier_code;
use names::Names;
pub use peers::ClassIds;
use peers::PeerClasses;
use views::Sharing;

/// The compiler's output, ready for `Dataplane::install`.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub tables: TableSet,
    /// Only endpoints that have an interface.
    pub endpoints: Vec<CompiledEndpoint>,
    /// `Verdict::policy` indexes this (enforced and staged policies, model order).
    pub policies: Vec<PolicyId>,
    /// `Verdict::tier` indexes this (below [`tier_code::FIRST_RESERVED`]).
    pub tiers: Vec<String>,
    /// `Verdict::policy` of a profile verdict indexes this.
    pub profiles: Vec<String>,
    pub stats: CompileStats,
    /// Name -> index maps behind [`Compiled::verdict_of`].
    index: Names,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledEndpoint {
    /// Index into `model.endpoints`.
    pub endpoint_index: usize,
    /// `EndpointInfo::id` / `RuleKey::endpoint_id`.
    pub id: u32,
    pub interface: String,
    /// Staged policies change this endpoint: set `HAS_STAGED` (pending entries exist).
    pub has_staged: bool,
    pub host: bool,
    /// Its rules tell source ports apart: set `SOURCE_PORTS` (`SPORTS_*` entries exist).
    pub source_ports: bool,
}

impl CompiledEndpoint {
    /// The `ENDPOINTS` value for this endpoint.
    pub fn info(&self) -> agent_common::EndpointInfo {
        use agent_common::endpoint_flags::{HAS_STAGED, HOST_ENDPOINT, SOURCE_PORTS};
        let mut flags = 0;
        if self.has_staged {
            flags |= HAS_STAGED;
        }
        if self.host {
            flags |= HOST_ENDPOINT;
        }
        if self.source_ports {
            flags |= SOURCE_PORTS;
        }
        agent_common::EndpointInfo { id: self.id, flags }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompileStats {
    /// Peer classes (both families).
    pub classes: usize,
    /// Collected prefixes, and those emitted into `peers` after merging.
    pub prefixes_collected: usize,
    pub peer_prefixes: usize,
    /// `RuleEntry` values, and the LPM keys they encode to.
    pub rule_entries: usize,
    pub rule_keys: usize,
    /// Encoded `SPORTS_*` keys.
    pub source_port_keys: usize,
    /// `GROUPS_*` entries (classes an endpoint treats unlike its wildcard).
    pub group_entries: usize,
    /// Evaluator calls made.
    pub evaluations: usize,
    /// Endpoints whose entries an incremental compile reused (see [`Compiler`]).
    pub reused: usize,
    /// Endpoints that took the entries of another endpoint with the same view
    /// (its policies, profiles and kind; see `views`) instead of a compile.
    pub shared: usize,
    /// Per compiled endpoint (same order as `Compiled::endpoints`): encoded keys.
    pub keys_per_endpoint: Vec<usize>,
    pub duration: Duration,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CompileError {
    #[error("endpoint {endpoint}: {limit} exceeded: {needed} needed, at most {max}")]
    Capacity {
        endpoint: String,
        limit: &'static str,
        needed: usize,
        max: usize,
    },
    #[error("endpoint {endpoint}, policy {policy}: cannot compile {what}")]
    Unsupported {
        endpoint: String,
        policy: String,
        what: String,
    },
}

/// Compiles the model for the kernel's map sizes. Deterministic.
pub fn compile(model: &Model) -> Result<Compiled, CompileError> {
    compile_with_limits(model, &Limits::default())
}

/// [`compile`] with explicit capacity limits.
pub fn compile_with_limits(model: &Model, limits: &Limits) -> Result<Compiled, CompileError> {
    compile_with(model, limits, &EndpointIds::default())
}

/// [`compile`] with explicit capacity limits and the endpoint ids to keep
/// (see [`EndpointIds`]).
pub fn compile_with(
    model: &Model,
    limits: &Limits,
    ids: &EndpointIds,
) -> Result<Compiled, CompileError> {
    compile_seeded(
        model,
        limits,
        ids,
        &ClassIds::default(),
        None,
        Sharing::Views,
    )
    .map(|(c, ..)| c)
}

/// The compile: peer classes numbered after `classes`, endpoints under `ids`;
/// with a `cache`, an endpoint whose key is found there reuses its entries,
/// and the classes' ids and the entries by key are returned for the next
/// compile (see [`Compiler`]).
fn compile_seeded(
    model: &Model,
    limits: &Limits,
    ids: &EndpointIds,
    classes: &ClassIds,
    cache: Option<&Cache>,
    sharing: Sharing,
) -> Result<(Compiled, ClassIds, Cache), CompileError> {
    let started = Instant::now();
    let eval = Evaluator::new(model);
    let names = Names::new(model)?;
    let peers = PeerClasses::build(model, &eval, limits, classes)?;
    let stats = CompileStats {
        classes: peers.classes.len(),
        prefixes_collected: peers.collected,
        peer_prefixes: peers.emitted.len(),
        ..CompileStats::default()
    };
    let targets: Vec<usize> = (0..model.endpoints.len())
        .filter(|&i| model.endpoints[i].interface.is_some())
        .collect();
    budget::check(
        || {
            targets
                .get(limits.endpoints)
                .map_or(String::new(), |&i| model.endpoints[i].key())
        },
        "endpoints (ENDPOINTS map)",
        targets.len(),
        limits.endpoints,
    )?;
    let shared = Shared {
        model,
        eval: &eval,
        names: &names,
        peers: &peers,
    };
    let id_of = ids.assign(model, &targets);
    let hashes = cache.map(|_| ModelHashes::new(model));
    // One compile per view (none where a member's entries are reused); the
    // other members take its entries under their own id (see `views`).
    let groups = views::group_by_view(&shared, &targets, sharing);
    let mut group_of = vec![0; targets.len()];
    for (g, members) in groups.iter().enumerate() {
        for &k in members {
            group_of[k] = g;
        }
    }
    // What a view's entries depend on is hashed once per view, not per endpoint.
    let view_keys: Vec<Option<u128>> = in_parallel(groups.len(), 1, |g| {
        let h = hashes.as_ref()?;
        Some(incremental::view_key(&shared, h, targets[groups[g][0]]))
    });
    let keys: Vec<Option<u128>> = (0..targets.len())
        .map(|k| {
            let view = view_keys[group_of[k]]?;
            Some(incremental::key(
                view,
                &model.endpoints[targets[k]],
                id_of[k],
            ))
        })
        .collect();
    let hits: Vec<Option<&Cached>> = (0..targets.len())
        .map(|k| {
            let cached = cache.and_then(|c| c.get(&id_of[k]));
            cached.filter(|c| Some(c.key) == keys[k])
        })
        .collect();
    let sources = in_parallel(groups.len(), 1, |g| {
        let members = &groups[g];
        match members.iter().find_map(|&k| hits[k].map(|c| (k, c))) {
            Some((k, c)) => Ok((id_of[k], c.out.clone(), false)),
            None => {
                let k = members[0];
                compile_endpoint(&shared, targets[k], id_of[k])
                    .map(|o| (id_of[k], Arc::new(o), true))
            }
        }
    });
    let mut compiled = Compiled {
        tables: TableSet {
            peers: Vec::new(),
            rules: Vec::new(),
            sports: Vec::new(),
            groups: Vec::new(),
        },
        endpoints: Vec::new(),
        policies: Vec::new(),
        tiers: Vec::new(),
        profiles: Vec::new(),
        stats,
        index: names,
    };
    let mut budget = Budget::default();
    let mut next_cache = Cache::default();
    for k in 0..targets.len() {
        // A group's first member comes first in model order: a compile error
        // is reported where compiling every endpoint alone reports it.
        let (source_id, source, compiled_now) =
            sources[group_of[k]].as_ref().map_err(Clone::clone)?;
        let out = match hits[k] {
            Some(c) => {
                compiled.stats.reused += 1;
                c.out.clone()
            }
            None if *source_id == id_of[k] => {
                if *compiled_now {
                    compiled.stats.evaluations += source.evaluations;
                }
                source.clone()
            }
            None => {
                compiled.stats.shared += 1;
                Arc::new(source.with_id(id_of[k]))
            }
        };
        compiled.add_endpoint(model, targets[k], id_of[k], &out, limits, &mut budget)?;
        if let Some(key) = keys[k] {
            next_cache.insert(id_of[k], Cached { key, out });
        }
    }
    let next_classes = if cache.is_some() {
        peers.ids()
    } else {
        ClassIds::default()
    };
    compiled.tables.peers = peers.emitted;
    let s = &mut compiled.stats;
    s.rule_entries = compiled.tables.rules.len();
    s.rule_keys = budget.rule_keys;
    s.source_port_keys = budget.source_port_keys;
    s.group_entries = compiled.tables.groups.len();
    s.duration = started.elapsed();
    // The name tables move out of the index (which keeps the name -> index maps).
    compiled.policies = std::mem::take(&mut compiled.index.policies);
    compiled.tiers = std::mem::take(&mut compiled.index.tiers);
    compiled.profiles = std::mem::take(&mut compiled.index.profiles);
    Ok((compiled, next_classes, next_cache))
}

impl Compiled {
    /// Appends endpoint `model.endpoints[index]`'s entries (compiled under `id`)
    /// within the capacity budget.
    fn add_endpoint(
        &mut self,
        model: &Model,
        index: usize,
        id: u32,
        out: &EndpointOut,
        limits: &Limits,
        budget: &mut Budget,
    ) -> Result<(), CompileError> {
        let endpoint = &model.endpoints[index];
        let used = EndpointUse {
            rule_keys: out
                .rules
                .iter()
                .map(|e| e.keys().map_or(0, |k| k.len()))
                .sum(),
            source_port_keys: out
                .sports
                .iter()
                .map(|e| e.keys().map_or(0, |k| k.len()))
                .sum(),
            group_entries: out.groups.len(),
        };
        budget.add(limits, &endpoint.key(), &used)?;
        self.stats.keys_per_endpoint.push(used.rule_keys);
        self.endpoints.push(CompiledEndpoint {
            endpoint_index: index,
            id,
            interface: endpoint
                .interface
                .clone()
                .expect("compiled endpoints have one"),
            has_staged: out.has_staged,
            host: endpoint.kind == EndpointKind::Host,
            source_ports: !out.sports.is_empty(),
        });
        self.tables.rules.extend_from_slice(&out.rules);
        self.tables.sports.extend_from_slice(&out.sports);
        self.tables.groups.extend_from_slice(&out.groups);
        Ok(())
    }
}

/// `f(0..count)`, spread over the CPUs (endpoints are independent), at
/// least `per_thread` items a thread, results in order.
fn in_parallel<T: Send>(count: usize, per_thread: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = crate::cpus::usable().min(count.div_ceil(per_thread)).max(1);
    if threads == 1 {
        return (0..count).map(f).collect();
    }
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let parts: Vec<Vec<(usize, T)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let f = &f;
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|k| (k, f(k)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("compiler thread panicked"))
            .collect()
    });
    for (k, r) in parts.into_iter().flatten() {
        results[k] = Some(r);
    }
    results
        .into_iter()
        .map(|r| r.expect("every item computed"))
        .collect()
}

/// Human-readable summary of a compile, for logs and `agent status`.
pub fn summary(c: &Compiled) -> String {
    let s = &c.stats;
    let mut out = String::new();
    let _ = write!(
        out,
        "{} endpoints, {} classes ({} of {} prefixes emitted), {} group entries, {} entries ({} keys), {} source-port keys, {} evaluations in {:?}",
        c.endpoints.len(),
        s.classes,
        s.peer_prefixes,
        s.prefixes_collected,
        s.group_entries,
        s.rule_entries,
        s.rule_keys,
        s.source_port_keys,
        s.evaluations,
        s.duration
    );
    out
}

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
//! IPv4-mapped addresses are classified like IPv4 by the kernel. The kernel
//! judges a flow's source port as the initiator's (also when a reply re-judges a
//! flow after a policy change), non-first fragments as ports 0/0.
//!
//! # Cost
//! Endpoints are compiled independently (in parallel, results in model order).
//! Measured (`compile::tests::compile_time`, release, a loaded 2-core VM, CPU
//! time): 100 endpoints x 50 policies 34 ms (40k evaluations, 4.1k keys);
//! 300 x 100 0.16 s; 1000 x 200 1.6 s (0.9M evaluations, 120k keys).
//! Peer classes cost O(prefixes x nesting depth), not prefixes x nets: a
//! network set of 100,000 nets compiles in ~0.1 s (release; docs/benchmarks.md).
//!
//! Source-port classes multiply a port protocol's evaluations (and, where verdicts
//! differ, its entries) by the number of its classes; endpoints without
//! source-port rules pay nothing.
//!
//! Labels that make nearly every pod its own class (many `pod in {..}`
//! selectors) cost `GROUPS_*` entries (one per class an endpoint treats unlike
//! its wildcard), not rule entries per class: `testgen::per_pod_label_model`
//! at 300 pods x 100 policies needs 51,990 rule keys and 244,800 group entries
//! (keyed by the global class it needed 263,607 rule keys, over the 262,144 of
//! `RULES_*`). Scaling limit: group entries grow with endpoints x directions x
//! classes treated unlike the wildcard — about half of them here, since every
//! peer of the other family differs from an IPv4 wildcard row — so 1,000 such
//! pods x 200 policies exceed the 262,144-entry `GROUPS_*` map (a Capacity
//! error, never a partial table). A wildcard per family (the kernel knows the
//! packet's family) would roughly halve that.
//!
//! # Tests
//! `compile::tests` (scenarios, and random models, with source-port rules and
//! probes aimed at them, checked against the evaluator through
//! [`testgen::TableModel`], a userspace model of the kernel's lookups) and
//! `tests/tests/bpf_differential.rs` (the same, through the real programs with
//! BPF_PROG_TEST_RUN).
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use agent_common::{action, limits, verdict_flags, Verdict, POLICY_NONE};
use ipnet::IpNet;

use crate::dataplane::tables::{
    port_range_prefixes, GroupEntry, PeerMatch, PortMatch as Ports, RuleEntry, SourcePortEntry,
    Table, TableSet,
};
use crate::eval::{
    policy_flow_log_name, ApplicableTier, DecidedBy, EndVerdict, Evaluator, Packet, PolicySet,
    EPHEMERAL_PORT, NO_MATCH_PROFILE, PROFILE_TIER,
};
use crate::model::ir::{
    proto, Action, Direction, Endpoint, EndpointKind, FailsafePort, Model, PolicyId, PortMatch,
    Rule,
};
use crate::selector::Selector;

#[doc(hidden)]
pub mod feed;
mod peers;
use peers::{Atoms, PeerClasses, Signature};
#[doc(hidden)]
pub mod testgen;
#[cfg(test)]
mod tests;

/// Reserved values of `Verdict::tier` (policy tiers index [`Compiled::tiers`]).
pub mod tier_code {
    /// A host endpoint's failsafe port; `rule = protocol << 16 | port`.
    pub const FAILSAFE: u16 = 0xfffe;
    /// A profile rule; `policy` indexes `Compiled::profiles`.
    pub const PROFILE: u16 = 0xfffd;
    /// Nothing decided (no tier decided, no profile rule matched): deny.
    pub const NO_MATCH: u16 = 0xfffc;
    /// Tier indexes must stay below this.
    pub const FIRST_RESERVED: u16 = 0xfffc;
}

/// Encoded `RULES_*` keys one endpoint may use (both directions, both tables),
/// so that one endpoint cannot starve the others.
pub const MAX_KEYS_PER_ENDPOINT: usize = 65536;

/// Capacity limits the compiler enforces (exceeding one is
/// [`CompileError::Capacity`]). The defaults are the kernel maps' sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Endpoints with an interface (`ENDPOINTS`).
    pub endpoints: usize,
    /// Prefixes in `PEERS_*` (also bounds the number of classes).
    pub peer_prefixes: usize,
    /// Encoded keys in `RULES_*`.
    pub rule_keys: usize,
    /// Encoded keys of one endpoint.
    pub keys_per_endpoint: usize,
    /// Encoded keys in `SPORTS_*`.
    pub source_port_keys: usize,
    /// Entries in `GROUPS_*` (classes an endpoint does not treat like its wildcard).
    pub group_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            endpoints: limits::MAX_ENDPOINTS as usize,
            peer_prefixes: limits::MAX_PEER_PREFIXES as usize,
            rule_keys: limits::MAX_RULE_ENTRIES as usize,
            keys_per_endpoint: MAX_KEYS_PER_ENDPOINT,
            source_port_keys: limits::MAX_SOURCE_PORT_ENTRIES as usize,
            group_entries: limits::MAX_GROUP_ENTRIES as usize,
        }
    }
}

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
    /// Per compiled endpoint (same order as `Compiled::endpoints`): encoded keys.
    pub keys_per_endpoint: Vec<usize>,
    pub duration: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    let started = Instant::now();
    let eval = Evaluator::new(model);
    let names = Names::new(model)?;
    let peers = PeerClasses::build(model, limits)?;
    let mut stats = CompileStats {
        classes: peers.classes.len(),
        prefixes_collected: peers.collected,
        peer_prefixes: peers.emitted.len(),
        ..CompileStats::default()
    };
    // Endpoints with an interface get ids 1.. in model order.
    let targets: Vec<(usize, &Endpoint, &String)> = model
        .endpoints
        .iter()
        .enumerate()
        .filter_map(|(i, e)| e.interface.as_ref().map(|name| (i, e, name)))
        .collect();
    if targets.len() > limits.endpoints {
        return Err(CompileError::Capacity {
            endpoint: targets[limits.endpoints].1.key(),
            limit: "endpoints (ENDPOINTS map)",
            needed: targets.len(),
            max: limits.endpoints,
        });
    }
    let compile_one = |k: usize| -> EndpointResult {
        let (index, endpoint, _) = targets[k];
        let has_staged = [Direction::Ingress, Direction::Egress]
            .into_iter()
            .any(|d| {
                !same_tiers(
                    eval.applicable_policies(PolicySet::Enforced, index, d),
                    eval.applicable_policies(PolicySet::Pending, index, d),
                )
            });
        let mut ctx = EndpointCompiler {
            model,
            eval: &eval,
            names: &names,
            peers: &peers,
            index,
            endpoint,
            id: k as u32 + 1,
            evaluations: 0,
            out: Vec::new(),
            sports: Vec::new(),
            groups: Vec::new(),
        };
        for direction in [Direction::Ingress, Direction::Egress] {
            ctx.direction(direction, has_staged)?;
        }
        Ok(EndpointOut {
            rules: ctx.out,
            sports: ctx.sports,
            groups: ctx.groups,
            evaluations: ctx.evaluations,
            has_staged,
        })
    };
    // Endpoints are independent: spread them over the CPUs (results stay in order).
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(targets.len().div_ceil(16))
        .max(1);
    let mut results: Vec<Option<EndpointResult>> = (0..targets.len()).map(|_| None).collect();
    if threads == 1 {
        for (k, slot) in results.iter_mut().enumerate() {
            *slot = Some(compile_one(k));
        }
    } else {
        let parts: Vec<Vec<(usize, EndpointResult)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let compile_one = &compile_one;
                    let count = targets.len();
                    scope.spawn(move || {
                        (t..count)
                            .step_by(threads)
                            .map(|k| (k, compile_one(k)))
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
    }

    let mut rules = Vec::new();
    let mut sports = Vec::new();
    let mut groups = Vec::new();
    let mut endpoints = Vec::new();
    let mut total_keys = 0usize;
    let mut total_sport_keys = 0usize;
    for (k, result) in results.into_iter().enumerate() {
        let (index, endpoint, interface) = targets[k];
        let EndpointOut {
            rules: mut out,
            sports: mut sport_entries,
            groups: mut group_entries,
            evaluations,
            has_staged,
        } = result.expect("every endpoint compiled")?;
        if groups.len() + group_entries.len() > limits.group_entries {
            return Err(CompileError::Capacity {
                endpoint: endpoint.key(),
                limit: "peer-group entries (GROUPS map)",
                needed: groups.len() + group_entries.len(),
                max: limits.group_entries,
            });
        }
        groups.append(&mut group_entries);
        let keys: usize = out
            .iter()
            .map(|e| e.keys().map(|k| k.len()).unwrap_or(0))
            .sum();
        total_sport_keys += sport_entries
            .iter()
            .map(|e| e.keys().map(|k| k.len()).unwrap_or(0))
            .sum::<usize>();
        if total_sport_keys > limits.source_port_keys {
            return Err(CompileError::Capacity {
                endpoint: endpoint.key(),
                limit: "source-port entries (SPORTS map)",
                needed: total_sport_keys,
                max: limits.source_port_keys,
            });
        }
        if keys > limits.keys_per_endpoint {
            return Err(CompileError::Capacity {
                endpoint: endpoint.key(),
                limit: "rule entries per endpoint",
                needed: keys,
                max: limits.keys_per_endpoint,
            });
        }
        total_keys += keys;
        if total_keys > limits.rule_keys {
            return Err(CompileError::Capacity {
                endpoint: endpoint.key(),
                limit: "rule entries (RULES map)",
                needed: total_keys,
                max: limits.rule_keys,
            });
        }
        stats.evaluations += evaluations;
        stats.keys_per_endpoint.push(keys);
        rules.append(&mut out);
        endpoints.push(CompiledEndpoint {
            endpoint_index: index,
            id: k as u32 + 1,
            interface: interface.clone(),
            has_staged,
            host: endpoint.kind == EndpointKind::Host,
            source_ports: !sport_entries.is_empty(),
        });
        sports.append(&mut sport_entries);
    }
    stats.rule_entries = rules.len();
    stats.rule_keys = total_keys;
    stats.source_port_keys = total_sport_keys;
    stats.group_entries = groups.len();
    stats.duration = started.elapsed();
    Ok(Compiled {
        tables: TableSet {
            peers: peers.emitted,
            rules,
            sports,
            groups,
        },
        endpoints,
        policies: names.policies.clone(),
        tiers: names.tiers.clone(),
        profiles: names.profiles.clone(),
        stats,
        index: Names {
            policies: Vec::new(),
            tiers: Vec::new(),
            profiles: Vec::new(),
            ..names
        },
    })
}

/// One endpoint's entries, evaluator calls, and whether it has staged policy.
struct EndpointOut {
    rules: Vec<RuleEntry>,
    sports: Vec<SourcePortEntry>,
    groups: Vec<GroupEntry>,
    evaluations: usize,
    has_staged: bool,
}
type EndpointResult = Result<EndpointOut, CompileError>;

/// Same tiers, same default actions, same policies (by identity) in the same order.
fn same_tiers(a: &[ApplicableTier], b: &[ApplicableTier]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.phase == y.phase
                && x.name == y.name
                && x.default_action == y.default_action
                && x.policies.len() == y.policies.len()
                && x.policies
                    .iter()
                    .zip(&y.policies)
                    .all(|(p, q)| std::ptr::eq(*p, *q))
        })
}

// ---------------------------------------------------------------------------
// Names: the userspace tables verdicts index.

#[derive(Clone, Debug)]
struct Names {
    policies: Vec<PolicyId>,
    tiers: Vec<String>,
    profiles: Vec<String>,
    policy_index: HashMap<PolicyId, u32>,
    tier_index: HashMap<String, u16>,
    profile_index: HashMap<String, u32>,
}

impl Names {
    fn new(model: &Model) -> Result<Self, CompileError> {
        let policies: Vec<PolicyId> = model.policies.iter().map(|p| p.id.clone()).collect();
        let mut tiers: Vec<String> = model.tiers.iter().map(|t| t.name.clone()).collect();
        let mut extra: BTreeSet<String> = model.policies.iter().map(|p| p.tier.clone()).collect();
        extra.retain(|t| !tiers.contains(t));
        tiers.extend(extra);
        if tiers.len() >= tier_code::FIRST_RESERVED as usize {
            return Err(CompileError::Capacity {
                endpoint: "*".into(),
                limit: "tiers",
                needed: tiers.len(),
                max: tier_code::FIRST_RESERVED as usize - 1,
            });
        }
        let mut profiles: Vec<String> = model.profiles.iter().map(|p| p.name.clone()).collect();
        for e in &model.endpoints {
            for p in &e.profiles {
                if !profiles.contains(p) {
                    profiles.push(p.clone());
                }
            }
        }
        Ok(Names {
            policy_index: policies
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i as u32))
                .collect(),
            tier_index: tiers
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u16))
                .collect(),
            profile_index: profiles
                .iter()
                .enumerate()
                .map(|(i, p)| (p.clone(), i as u32))
                .collect(),
            policies,
            tiers,
            profiles,
        })
    }

    fn verdict(&self, end: &EndVerdict) -> Verdict {
        let act = match end.action {
            crate::eval::Verdict::Allow => action::ALLOW,
            crate::eval::Verdict::Deny => action::DENY,
        };
        let v = |tier: u16, policy: u32, rule: i32| Verdict {
            action: act,
            flags: 0,
            tier,
            policy,
            rule,
        };
        let tier = |name: &str| self.tier_index.get(name).copied().unwrap_or(u16::MAX);
        let policy = |id: &PolicyId| self.policy_index.get(id).copied().unwrap_or(POLICY_NONE);
        match &end.decided_by {
            DecidedBy::Failsafe { protocol, port } => v(
                tier_code::FAILSAFE,
                POLICY_NONE,
                (i32::from(*protocol) << 16) | i32::from(*port),
            ),
            DecidedBy::PolicyRule {
                tier: t,
                policy: p,
                rule,
            } => v(tier(t), policy(p), *rule as i32),
            DecidedBy::EndOfTier { tier: t, policy: p } => v(tier(t), policy(p), -1),
            DecidedBy::ProfileRule { profile, rule } => v(
                tier_code::PROFILE,
                self.profile_index
                    .get(profile)
                    .copied()
                    .unwrap_or(POLICY_NONE),
                *rule as i32,
            ),
            DecidedBy::NoMatch => v(tier_code::NO_MATCH, POLICY_NONE, -1),
        }
    }
}

impl Compiled {
    /// The kernel verdict the tables hold for this evaluator answer.
    pub fn verdict_of(&self, end: &EndVerdict) -> Verdict {
        self.index.verdict(end)
    }

    /// The compiled endpoint with this `RuleKey::endpoint_id`.
    pub fn endpoint_by_id(&self, id: u32) -> Option<&CompiledEndpoint> {
        self.endpoints.iter().find(|e| e.id == id)
    }

    /// A kernel verdict in Calico's trace style:
    /// `<tier>|<kind>:<namespace>/<name>|<allow|deny|pass>|<rule>`, e.g.
    /// `default|gnp:allow-db|allow|0`, `default|np:prod/x|deny|-1` (end of tier),
    /// `__PROFILE__|pro:kns.prod|allow|0`, `__PROFILE__|pro:__NO_MATCH__|deny|-1`,
    /// `__FAILSAFE__|failsafe:tcp/22|allow|-1`, `__NO_ENTRY__|deny`.
    pub fn describe(&self, v: &Verdict) -> String {
        let act = if v.action == action::ALLOW {
            "allow"
        } else {
            "deny"
        };
        if v.flags & verdict_flags::NO_ENTRY != 0 {
            return format!("__NO_ENTRY__|{act}");
        }
        match v.tier {
            tier_code::FAILSAFE => {
                let protocol = (v.rule >> 16) as u8;
                let port = (v.rule & 0xffff) as u16;
                format!(
                    "__FAILSAFE__|failsafe:{}/{port}|{act}|-1",
                    protocol_name(protocol)
                )
            }
            tier_code::PROFILE => {
                let name = self
                    .profiles
                    .get(v.policy as usize)
                    .map(String::as_str)
                    .unwrap_or("?");
                format!("{PROFILE_TIER}|pro:{name}|{act}|{}", v.rule)
            }
            tier_code::NO_MATCH => format!("{PROFILE_TIER}|pro:{NO_MATCH_PROFILE}|{act}|-1"),
            t => {
                let tier = self
                    .tiers
                    .get(t as usize)
                    .map(String::as_str)
                    .unwrap_or("?");
                let policy = self
                    .policies
                    .get(v.policy as usize)
                    .map(policy_flow_log_name)
                    .unwrap_or_else(|| "?".into());
                format!("{tier}|{policy}|{act}|{}", v.rule)
            }
        }
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::SCTP => "sctp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        proto::UDPLITE => "udplite".into(),
        n => n.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Per-endpoint tables.

const PORT_PROTOCOLS: [u8; 4] = [proto::TCP, proto::UDP, proto::SCTP, proto::UDPLITE];
const ICMP_PROTOCOLS: [u8; 2] = [proto::ICMP, proto::ICMPV6];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ports,
    Icmp,
    Other,
}

fn kind(p: u8) -> Kind {
    if PORT_PROTOCOLS.contains(&p) {
        Kind::Ports
    } else if ICMP_PROTOCOLS.contains(&p) {
        Kind::Icmp
    } else {
        Kind::Other
    }
}

/// The packet the evaluator is asked about for protocol `p`, source port `sport`
/// (port protocols only) and kernel port value `v`.
fn packet(p: u8, sport: u16, v: u16) -> Packet {
    match kind(p) {
        Kind::Ports => Packet::with_ports(p, sport, v),
        Kind::Icmp => Packet::icmp(p, (v >> 8) as u8, (v & 0xff) as u8),
        Kind::Other => Packet {
            protocol: p,
            ..Packet::default()
        },
    }
}

/// Whether rule `r` can match protocol `p` at all.
fn may_match(r: &Rule, p: u8) -> bool {
    r.protocol.is_none_or(|q| q == p) && r.not_protocol != Some(p)
}

/// One (protocol, source-port class) dimension: intervals `[start, next start)`
/// of the kernel port value.
struct Dim {
    protocol: u8,
    /// The source-port class (0 where the protocol has one class) and a port of it.
    source_port_class: u8,
    source_port: u16,
    /// Source-port classes of this protocol (the dims of one protocol are adjacent).
    classes: usize,
    /// Index of `protocol` in the direction's protocol list (for per-rule cuts).
    protocol_index: usize,
    starts: Vec<u16>,
    /// Starts every peer group evaluates at (0 and the failsafes' breakpoints).
    always: BTreeSet<u16>,
}

/// One port protocol's source-port classes on an endpoint and direction.
struct SourcePorts {
    /// Per class: a port of it (the evaluator's source port for the class).
    representatives: Vec<u16>,
    /// `(first, last, class)`, covering every port, in port order.
    intervals: Vec<(u16, u16, u8)>,
}

impl SourcePorts {
    fn single() -> Self {
        SourcePorts {
            representatives: vec![EPHEMERAL_PORT],
            intervals: vec![(0, u16::MAX, 0)],
        }
    }
}

impl Dim {
    fn end(&self, i: usize) -> u16 {
        self.starts.get(i + 1).map(|s| s - 1).unwrap_or(u16::MAX)
    }
}

/// A table function of one peer group: "other protocols" verdict and one verdict
/// per (protocol, interval).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Row {
    other: Verdict,
    cells: Vec<Vec<Verdict>>,
}

struct EndpointCompiler<'a, 'm> {
    model: &'m Model,
    eval: &'a Evaluator<'m>,
    names: &'a Names,
    peers: &'a PeerClasses,
    index: usize,
    endpoint: &'m Endpoint,
    id: u32,
    evaluations: usize,
    out: Vec<RuleEntry>,
    sports: Vec<SourcePortEntry>,
    groups: Vec<GroupEntry>,
}

impl<'m> EndpointCompiler<'_, 'm> {
    /// The decisive rules the endpoint's end can consult in this direction, with
    /// their owner's name (both sets and the profiles).
    fn rules(&self, direction: Direction) -> Vec<(String, &'m Rule)> {
        let mut out: Vec<(String, &'m Rule)> = Vec::new();
        for set in [PolicySet::Enforced, PolicySet::Pending] {
            for tier in self.eval.applicable_policies(set, self.index, direction) {
                for p in &tier.policies {
                    for r in p.rules(direction) {
                        out.push((p.id.to_string(), r));
                    }
                }
            }
        }
        for name in &self.endpoint.profiles {
            if let Some(p) = self.model.profiles.iter().find(|p| &p.name == name) {
                let rules = match direction {
                    Direction::Ingress => &p.ingress,
                    Direction::Egress => &p.egress,
                };
                out.extend(rules.iter().map(|r| (format!("pro:{name}"), r)));
            }
        }
        out.retain(|(_, r)| r.action != Action::Log);
        out
    }

    fn failsafes(&self, direction: Direction) -> &'m [FailsafePort] {
        if self.endpoint.kind != EndpointKind::Host {
            return &[];
        }
        match direction {
            Direction::Ingress => &self.model.failsafes.inbound,
            Direction::Egress => &self.model.failsafes.outbound,
        }
    }

    /// The inclusive port ranges `matches` can match for protocol `p`: a named
    /// port stands for every endpoint's port of that name and protocol (whose
    /// port it is depends on the peer, so all of them are breakpoints).
    fn port_ranges<'r>(
        &self,
        matches: impl Iterator<Item = &'r PortMatch>,
        p: u8,
    ) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for m in matches {
            match m {
                PortMatch::Range(range) => {
                    out.push((u32::from(range.first), u32::from(range.last)))
                }
                PortMatch::Named(name) => out.extend(
                    self.model
                        .endpoints
                        .iter()
                        .flat_map(|e| &e.named_ports)
                        .filter(|np| &np.name == name && np.protocol == p)
                        .map(|np| (u32::from(np.port), u32::from(np.port))),
                ),
            }
        }
        out
    }

    /// The breakpoints (interval starts) `r` puts into protocol `p`'s kernel
    /// port values; empty if `r` cannot match `p`.
    fn cuts(&self, r: &Rule, p: u8) -> BTreeSet<u32> {
        let mut cuts = BTreeSet::new();
        if !may_match(r, p) {
            return cuts;
        }
        let mut cut = |a: u32, b: u32| {
            cuts.insert(a);
            cuts.insert(b);
        };
        match kind(p) {
            Kind::Ports => {
                let matches = r.destination.ports.iter().chain(&r.destination.not_ports);
                for (first, last) in self.port_ranges(matches, p) {
                    cut(first, last + 1);
                }
            }
            Kind::Icmp => {
                for m in r.icmp.iter().chain(&r.not_icmp) {
                    let t = u32::from(m.icmp_type) << 8;
                    cut(t, t + 256);
                    if let Some(c) = m.code {
                        cut(t | u32::from(c), (t | u32::from(c)) + 1);
                    }
                }
            }
            Kind::Other => {}
        }
        cuts
    }

    /// Port protocol `p`'s source-port classes: the ports split at every bound of
    /// a source-port match of `rules` (ranges; named ports: every endpoint's port
    /// of that name, as the peer's (ingress) or the endpoint's own (egress) may be
    /// any of them), intervals in the same matches share a class.
    fn source_ports(
        &self,
        rules: &[(String, &'m Rule)],
        p: u8,
    ) -> Result<SourcePorts, CompileError> {
        let mut atoms: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (_, r) in rules.iter().filter(|(_, r)| may_match(r, p)) {
            let matches = r.source.ports.iter().chain(&r.source.not_ports);
            atoms.extend(self.port_ranges(matches, p));
        }
        if atoms.is_empty() {
            return Ok(SourcePorts::single());
        }
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
        for &(first, last) in &atoms {
            cuts.insert(first);
            cuts.insert(last + 1);
        }
        let starts: Vec<u32> = cuts.into_iter().filter(|&c| c <= 0xffff).collect();
        let intervals: Vec<(u16, u16)> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).map_or(0xffff, |next| next - 1);
                (start as u16, end as u16)
            })
            .collect();
        // Group the intervals by the atoms containing them (first appearance order).
        let mut group_of: HashMap<Vec<bool>, usize> = HashMap::new();
        let mut groups: Vec<Vec<(u16, u16)>> = Vec::new();
        let mut interval_group = Vec::with_capacity(intervals.len());
        for &(start, end) in &intervals {
            let signature: Vec<bool> = atoms
                .iter()
                .map(|&(first, last)| first <= u32::from(start) && u32::from(start) <= last)
                .collect();
            let next = groups.len();
            let g = *group_of.entry(signature).or_insert_with(|| {
                groups.push(Vec::new());
                next
            });
            groups[g].push((start, end));
            interval_group.push(g);
        }
        if groups.len() > usize::from(u8::MAX) + 1 {
            return Err(CompileError::Capacity {
                endpoint: self.endpoint.key(),
                limit:
                    "source-port classes per direction and protocol (RuleKey::source_port_class)",
                needed: groups.len(),
                max: usize::from(u8::MAX) + 1,
            });
        }
        // Class 0 covers every port in SPORTS_* with one entry, so it goes to the
        // group whose intervals would cost the most prefixes; the rest keep their order.
        let cost = |g: &Vec<(u16, u16)>| -> usize {
            g.iter()
                .map(|&(a, b)| port_range_prefixes(a, b).len())
                .sum()
        };
        let zero = (0..groups.len())
            .max_by_key(|&g| (cost(&groups[g]), std::cmp::Reverse(g)))
            .expect("at least one interval");
        let class_of = |g: usize| -> u8 {
            match g.cmp(&zero) {
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Less => g as u8 + 1,
                std::cmp::Ordering::Greater => g as u8,
            }
        };
        let mut representatives = vec![0u16; groups.len()];
        for (g, intervals) in groups.iter().enumerate() {
            // The usual ephemeral port where the class has it (same questions as
            // for an endpoint without source-port rules), else its first port.
            representatives[usize::from(class_of(g))] = if intervals
                .iter()
                .any(|&(a, b)| (a..=b).contains(&EPHEMERAL_PORT))
            {
                EPHEMERAL_PORT
            } else {
                intervals[0].0
            };
        }
        Ok(SourcePorts {
            representatives,
            intervals: intervals
                .iter()
                .zip(&interval_group)
                .map(|(&(first, last), &g)| (first, last, class_of(g)))
                .collect(),
        })
    }

    fn direction(&mut self, direction: Direction, has_staged: bool) -> Result<(), CompileError> {
        let rules = self.rules(direction);
        let failsafes = self.failsafes(direction);

        // Protocols the rules tell apart.
        let mut protocols: BTreeSet<u8> = BTreeSet::new();
        for (_, r) in &rules {
            protocols.extend(r.protocol);
            protocols.extend(r.not_protocol);
            let has_ports =
                |e: &crate::model::ir::EntityRule| !e.ports.is_empty() || !e.not_ports.is_empty();
            if r.protocol.is_none() && (has_ports(&r.destination) || has_ports(&r.source)) {
                protocols.extend(PORT_PROTOCOLS);
            }
            if r.protocol.is_none() && (r.icmp.is_some() || r.not_icmp.is_some()) {
                protocols.extend(ICMP_PROTOCOLS);
            }
        }
        protocols.extend(failsafes.iter().map(|f| f.protocol));
        // A protocol no rule names (GRE unless named; never an IPv6 extension header).
        let other = std::iter::once(47)
            .chain(2..=255u8)
            .find(|p| {
                kind(*p) == Kind::Other
                    && !protocols.contains(p)
                    && ![0, 43, 44, 51, 60].contains(p)
            })
            .unwrap_or(255);

        // Destination-port breakpoints per protocol: those of each rule (kept per
        // rule, so that a peer group evaluates only at the breakpoints of the
        // rules that can match it), of the failsafes, and 0. One dimension per
        // (protocol, source-port class).
        let mut rule_cuts: Vec<Vec<BTreeSet<u32>>> = Vec::new(); // [protocol][rule]
        let mut dims: Vec<Dim> = Vec::new();
        for (protocol_index, &p) in protocols.iter().enumerate() {
            let sources = if kind(p) == Kind::Ports {
                self.source_ports(&rules, p)?
            } else {
                SourcePorts::single()
            };
            let mut always: BTreeSet<u32> = BTreeSet::from([0]);
            if kind(p) == Kind::Ports {
                for f in failsafes.iter().filter(|f| f.protocol == p) {
                    always.extend([u32::from(f.port), u32::from(f.port) + 1]);
                }
            }
            let cuts: Vec<BTreeSet<u32>> = rules.iter().map(|(_, r)| self.cuts(r, p)).collect();
            let mut all = always.clone();
            for c in &cuts {
                all.extend(c);
            }
            let ports = |s: &BTreeSet<u32>| -> Vec<u16> {
                s.iter()
                    .filter(|&&c| c <= 0xffff)
                    .map(|&c| c as u16)
                    .collect()
            };
            let starts = ports(&all);
            let always: BTreeSet<u16> = ports(&always).into_iter().collect();
            rule_cuts.push(cuts);
            let classes = sources.representatives.len();
            for (c, &source_port) in sources.representatives.iter().enumerate() {
                dims.push(Dim {
                    protocol: p,
                    protocol_index,
                    source_port_class: c as u8,
                    source_port,
                    classes,
                    starts: starts.clone(),
                    always: always.clone(),
                });
            }
            if classes > 1 {
                // Every port is covered: class 0 by the entry for all ports (the
                // class costing the most prefixes), the others by narrower entries.
                let entry = |first, last, class| SourcePortEntry {
                    endpoint_id: self.id,
                    direction,
                    protocol: p,
                    first,
                    last,
                    class,
                };
                self.sports.push(entry(0, u16::MAX, 0));
                for &(first, last, class) in &sources.intervals {
                    if class != 0 {
                        self.sports.push(entry(first, last, class));
                    }
                }
            }
        }

        // Group classes by the signature bits these rules read.
        let mut used: BTreeSet<usize> = BTreeSet::new();
        let mut named = false;
        let atoms = &self.peers.atoms;
        for (_, r) in &rules {
            for side in [&r.source, &r.destination] {
                for n in side.nets.iter().chain(&side.not_nets) {
                    used.insert(atoms.net_bit(n));
                }
                for s in side.selector.iter().chain(&side.not_selector) {
                    used.insert(atoms.selector_bit(s));
                }
                named |= side
                    .ports
                    .iter()
                    .chain(&side.not_ports)
                    .any(|m| matches!(m, PortMatch::Named(_)));
            }
        }
        for f in failsafes {
            if let Some(n) = &f.net {
                used.insert(atoms.net_bit(n));
            }
        }
        type GroupKey = (bool, Vec<bool>, Vec<(String, u8, u16)>);
        let mut group_of_key: HashMap<GroupKey, usize> = HashMap::new();
        let mut group_rep: Vec<usize> = Vec::new(); // group -> representative class index
        let mut class_group: Vec<usize> = Vec::with_capacity(self.peers.classes.len());
        for (ci, class) in self.peers.classes.iter().enumerate() {
            let sig = &class.signature;
            let key: GroupKey = (
                sig.v6,
                used.iter().map(|&b| sig.bit(b)).collect(),
                if named {
                    sig.named_ports.clone()
                } else {
                    Vec::new()
                },
            );
            let next = group_rep.len();
            let g = *group_of_key.entry(key).or_insert_with(|| {
                group_rep.push(ci);
                next
            });
            class_group.push(g);
        }

        // Per group, the interval starts where its function can change: the
        // breakpoints of the rules that can match its peers (and the failsafes').
        // Between them the evaluator's answer is constant, so the other cells
        // copy their left neighbour instead of asking again — this keeps a
        // policy of N (peer, port) rules at O(N) evaluations, not O(N^2).
        let needed_of_group: Vec<Vec<Vec<bool>>> = group_rep
            .iter()
            .map(|&ci| {
                let sig = &self.peers.classes[ci].signature;
                let mut needed: Vec<Vec<bool>> = dims
                    .iter()
                    .map(|dim| dim.starts.iter().map(|s| dim.always.contains(s)).collect())
                    .collect();
                for (k, (_, r)) in rules.iter().enumerate() {
                    if !may_match_peer(r, direction, sig, atoms) {
                        continue;
                    }
                    for (d, dim) in dims.iter().enumerate() {
                        let cuts = &rule_cuts[dim.protocol_index][k];
                        for &c in cuts.iter().filter(|&&c| c <= 0xffff) {
                            if let Ok(i) = dim.starts.binary_search(&(c as u16)) {
                                needed[d][i] = true;
                            }
                        }
                    }
                }
                needed
            })
            .collect();

        let tables: &[(Table, PolicySet)] = if has_staged {
            &[
                (Table::Enforced, PolicySet::Enforced),
                (Table::Pending, PolicySet::Pending),
            ]
        } else {
            &[(Table::Enforced, PolicySet::Enforced)]
        };
        let mut rows_of: Vec<(Table, Vec<Row>)> = Vec::with_capacity(tables.len());
        for &(table, set) in tables {
            let mut rows: Vec<Row> = Vec::with_capacity(group_rep.len());
            for &ci in &group_rep {
                let peer = self.peers.classes[ci].representative;
                let needed = &needed_of_group[class_group[ci]];
                rows.push(self.row(set, direction, peer, &dims, needed, other)?);
            }
            rows_of.push((table, rows));
        }
        self.emit(direction, &dims, &rows_of, &class_group);
        Ok(())
    }

    /// The evaluator's function for one peer, checked to be the same for every
    /// local address of the peer's family.
    fn row(
        &mut self,
        set: PolicySet,
        direction: Direction,
        peer: IpAddr,
        dims: &[Dim],
        needed: &[Vec<bool>],
        other: u8,
    ) -> Result<Row, CompileError> {
        let mut locals: Vec<IpAddr> = self
            .endpoint
            .ips
            .iter()
            .copied()
            .filter(|ip| ip.is_ipv6() == peer.is_ipv6())
            .collect();
        if locals.is_empty() {
            locals.push(if peer.is_ipv6() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            });
        }
        let mut first: Option<Row> = None;
        for local in locals {
            let mut ask = |p: u8, sport: u16, v: u16| {
                self.evaluations += 1;
                let end = self.eval.evaluate_end(
                    set,
                    self.index,
                    direction,
                    peer,
                    local,
                    &packet(p, sport, v),
                );
                self.names.verdict(&end)
            };
            let row = Row {
                other: ask(other, EPHEMERAL_PORT, 0),
                cells: dims
                    .iter()
                    .zip(needed)
                    .map(|(d, needed)| {
                        let mut cells: Vec<Verdict> = Vec::with_capacity(d.starts.len());
                        for (&s, &ask_here) in d.starts.iter().zip(needed) {
                            let v = match cells.last() {
                                Some(&previous) if !ask_here => previous,
                                _ => ask(d.protocol, d.source_port, s),
                            };
                            cells.push(v);
                        }
                        cells
                    })
                    .collect(),
            };
            match &first {
                None => first = Some(row),
                Some(f) if *f == row => {}
                Some(_) => {
                    return Err(CompileError::Unsupported {
                        endpoint: self.endpoint.key(),
                        policy: "*".into(),
                        what: format!(
                            "{direction:?} verdicts that depend on which of the endpoint's own addresses a packet uses"
                        ),
                    })
                }
            }
        }
        Ok(first.expect("at least one local address"))
    }

    /// Writes one direction (both tables): per table the most common row under
    /// the wildcard group; every distinct (enforced, pending) pair of rows other
    /// than the wildcards' gets a local group, its classes `GROUPS_*` entries,
    /// and its rows exceptions to the wildcard rows (see the module docs).
    fn emit(
        &mut self,
        direction: Direction,
        dims: &[Dim],
        tables: &[(Table, Vec<Row>)],
        class_group: &[usize],
    ) {
        let signature_groups = tables[0].1.len();
        let mut count = vec![0usize; signature_groups];
        for &g in class_group {
            count[g] += 1;
        }
        // Per table: each signature group's row as the first signature group with
        // an equal row, and the wildcard (the row of the most classes).
        let mut row_ids: Vec<Vec<usize>> = Vec::with_capacity(tables.len());
        let mut wildcards: Vec<usize> = Vec::with_capacity(tables.len());
        for (table, rows) in tables {
            let mut first: HashMap<&Row, usize> = HashMap::new();
            let ids: Vec<usize> = rows
                .iter()
                .enumerate()
                .map(|(g, row)| *first.entry(row).or_insert(g))
                .collect();
            let mut same = vec![0usize; rows.len()];
            for (g, &id) in ids.iter().enumerate() {
                same[id] += count[g];
            }
            let wildcard = (0..rows.len())
                .max_by_key(|&g| (same[ids[g]], std::cmp::Reverse(g)))
                .map(|g| ids[g])
                .expect("at least the two root classes");
            let row = &rows[wildcard];
            let base = RuleEntry {
                endpoint_id: self.id,
                direction,
                table: *table,
                peer: PeerMatch::Any,
                protocol: None,
                source_port_class: None,
                ports: Ports::Any,
                verdict: row.other,
            };
            self.out.push(base);
            push_runs(&mut self.out, base, dims, row, |_, _, v| v != row.other);
            row_ids.push(ids);
            wildcards.push(wildcard);
        }
        // Local groups: one per distinct tuple of rows (one per table, since
        // GROUPS_* serves both tables), numbered 1.. in class order.
        let mut local: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut representative: Vec<usize> = Vec::new(); // local group - 1 -> signature group
        let mut group_of: Vec<Option<u32>> = Vec::with_capacity(signature_groups);
        for g in 0..signature_groups {
            let tuple: Vec<usize> = row_ids.iter().map(|ids| ids[g]).collect();
            group_of.push(if tuple == wildcards {
                None
            } else {
                Some(*local.entry(tuple).or_insert_with(|| {
                    representative.push(g);
                    representative.len() as u32
                }))
            });
        }
        for (ci, &g) in class_group.iter().enumerate() {
            if let Some(group) = group_of[g] {
                self.groups.push(GroupEntry {
                    endpoint_id: self.id,
                    direction,
                    class: ci as u32 + 1,
                    group,
                });
            }
        }
        for (k, &g) in representative.iter().enumerate() {
            for (t, (table, rows)) in tables.iter().enumerate() {
                let row = &rows[g];
                let wildcard = &rows[wildcards[t]];
                if row == wildcard {
                    continue; // a miss falls back to the wildcard: right
                }
                let entry = RuleEntry {
                    endpoint_id: self.id,
                    direction,
                    table: *table,
                    peer: PeerMatch::Group(k as u32 + 1),
                    protocol: None,
                    source_port_class: None,
                    ports: Ports::Any,
                    verdict: row.other,
                };
                if row.other == wildcard.other {
                    push_runs(&mut self.out, entry, dims, row, |d, mut range, _| {
                        range.any(|i| row.cells[d][i] != wildcard.cells[d][i])
                    });
                } else {
                    self.out.push(entry);
                    push_runs(&mut self.out, entry, dims, row, |_, _, v| v != row.other);
                }
            }
        }
    }
}

/// False when no packet from/to a peer with signature `sig` can match `r`
/// (its family, or its nets/selectors on the peer's side, exclude the peer);
/// true when it may (conservative: the local side is not looked at).
fn may_match_peer(r: &Rule, direction: Direction, sig: &Signature, atoms: &Atoms) -> bool {
    if r.ip_version.is_some_and(|v| (v == 6) != sig.v6) {
        return false;
    }
    let side = match direction {
        Direction::Ingress => &r.source,
        Direction::Egress => &r.destination,
    };
    let net = |n: &IpNet| sig.bit(atoms.net_bit(n));
    let selector = |s: &Selector| sig.bit(atoms.selector_bit(s));
    (side.nets.is_empty() || side.nets.iter().any(net))
        && !side.not_nets.iter().any(net)
        && side.selector.as_ref().is_none_or(selector)
        && !side.not_selector.as_ref().is_some_and(selector)
}

/// Emits the maximal runs of equal verdict in `row` that `keep(dim, intervals, verdict)` selects.
/// A protocol with several source-port classes whose every cell has one verdict
/// gets one entry for all its classes (when any of its runs is kept): the entry
/// holds each cell's own verdict, so it is right where a miss would also be.
fn push_runs(
    out: &mut Vec<RuleEntry>,
    base: RuleEntry,
    dims: &[Dim],
    row: &Row,
    keep: impl Fn(usize, std::ops::RangeInclusive<usize>, Verdict) -> bool,
) {
    let mut d = 0;
    while d < dims.len() {
        let dim = &dims[d];
        let group = d..d + dim.classes;
        let uniform = row.cells[d][0];
        if dim.classes > 1
            && group
                .clone()
                .all(|g| row.cells[g].iter().all(|&v| v == uniform))
        {
            if group
                .clone()
                .any(|g| keep(g, 0..=row.cells[g].len() - 1, uniform))
            {
                out.push(RuleEntry {
                    protocol: Some(dim.protocol),
                    source_port_class: None,
                    ports: Ports::Any,
                    verdict: uniform,
                    ..base
                });
            }
            d = group.end;
            continue;
        }
        for d in group.clone() {
            push_dim_runs(out, base, d, &dims[d], &row.cells[d], &keep);
        }
        d = group.end;
    }
}

/// [`push_runs`] for one dimension.
fn push_dim_runs(
    out: &mut Vec<RuleEntry>,
    base: RuleEntry,
    d: usize,
    dim: &Dim,
    cells: &[Verdict],
    keep: &impl Fn(usize, std::ops::RangeInclusive<usize>, Verdict) -> bool,
) {
    let mut i = 0;
    while i < cells.len() {
        let mut j = i;
        while j + 1 < cells.len() && cells[j + 1] == cells[i] {
            j += 1;
        }
        if keep(d, i..=j, cells[i]) {
            let (first, last) = (dim.starts[i], dim.end(j));
            let ports = if kind(dim.protocol) == Kind::Other || (first, last) == (0, u16::MAX) {
                Ports::Any
            } else {
                Ports::Range(first, last)
            };
            out.push(RuleEntry {
                protocol: Some(dim.protocol),
                source_port_class: Some(dim.source_port_class),
                ports,
                verdict: cells[i],
                ..base
            });
        }
        i = j + 1;
    }
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

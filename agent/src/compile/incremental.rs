//! The incremental compile: a [`Compiler`] keeps each endpoint's compiled
//! entries with a key of everything they depend on, and the peer-class ids of
//! its last compile; the next compile reuses the entries of every endpoint
//! whose key is unchanged and evaluates only the others. The result equals a
//! compile from scratch with the same ids ([`Compiler::compile_fresh`]).
//!
//! An endpoint's entries depend on (the key, hashed to 128 bits):
//! - the endpoint itself (labels, addresses, named ports, profiles, interface,
//!   kind) and its id;
//! - its applicable tiers in both sets and directions (phase, name, default,
//!   each policy's content), the profiles it names, and the indexes verdicts
//!   give those policies, tiers and profiles;
//! - the failsafes (host endpoints);
//! - every peer class, seen through the nets and selectors its rules read:
//!   per class id, its family, those bits (and the named ports of its owners
//!   when a rule names a port); classes keep their ids across compiles
//!   ([`ClassIds`]), so a class added elsewhere does not renumber these;
//! - when a rule names a port, every endpoint's named ports (they are
//!   breakpoints of the port axis).
//!
//! All but the first item are the same for every endpoint of one view (the
//! endpoints compiled alike, see `views`): they are hashed once per view
//! ([`view_key`]), and an endpoint's key is its id, its record and its view's
//! key ([`key`]). Entries are reused per endpoint; an endpoint whose key
//! changed takes the entries of a member of its view that kept its key, if
//! any, under its own id.
//!
//! What stays global on every compile: the evaluator's indexes, the verdict
//! names, the peer classes (prefixes, signatures) and the keys themselves.
use foldhash::{HashMap, HashMapExt};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use super::endpoint::{EndpointOut, Shared};
use super::peers::{ones, set_bit, ClassIds, PeerClasses};
use super::{CompileError, Compiled, EndpointIds, Limits};
use crate::eval::PolicySet;
use crate::model::ir::{Direction, Endpoint, EndpointKind, Model, Policy, PortMatch, Rule};

/// An endpoint's compiled entries and the key of what they depend on.
#[derive(Clone)]
pub(super) struct Cached {
    pub(super) key: u128,
    pub(super) out: Arc<EndpointOut>,
}

/// Compiled entries by endpoint id.
pub(super) type Cache = HashMap<u32, Cached>;

/// A compiler that remembers its last compile (see the module docs).
#[derive(Default)]
pub struct Compiler {
    classes: ClassIds,
    cache: Cache,
    /// A compile kept whole for the next call with the same inputs
    /// ([`Compiler::compile_ahead`]).
    ahead: Option<Box<Ahead>>,
}

/// The inputs and result of a compile made ahead of its use.
struct Ahead {
    model: Model,
    limits: Limits,
    ids: EndpointIds,
    compiled: Compiled,
}

impl Compiler {
    pub fn new() -> Self {
        Self::default()
    }

    /// Compiles `model`, reusing the entries of endpoints whose inputs are
    /// unchanged since the last successful compile, and keeps this one's.
    pub fn compile(
        &mut self,
        model: &Model,
        limits: &Limits,
        ids: &EndpointIds,
    ) -> Result<Compiled, CompileError> {
        if let Some(ahead) = self.ahead.take() {
            if ahead.model == *model && ahead.limits == *limits && ahead.ids == *ids {
                return Ok(ahead.compiled);
            }
        }
        let (compiled, classes, cache) = super::compile_seeded(
            model,
            limits,
            ids,
            &self.classes,
            Some(&self.cache),
            super::Sharing::Views,
        )?;
        self.classes = classes;
        self.cache = cache;
        Ok(compiled)
    }

    /// [`Compiler::compile`], keeping the result for the next call: when that
    /// call has the same model, limits and ids it returns this result without
    /// compiling again (the daemon compiles its first load while the kernel
    /// verifies the programs, and uses it once they are loaded). Any other
    /// call drops it and compiles (incrementally, from this compile's cache).
    pub fn compile_ahead(
        &mut self,
        model: &Model,
        limits: &Limits,
        ids: &EndpointIds,
    ) -> Result<(), CompileError> {
        let compiled = self.compile(model, limits, ids)?;
        self.ahead = Some(Box::new(Ahead {
            model: model.clone(),
            limits: *limits,
            ids: ids.clone(),
            compiled,
        }));
        Ok(())
    }

    /// What [`Compiler::compile`] gives, computed from scratch (the same
    /// peer-class ids, no cached entries); keeps nothing.
    pub fn compile_fresh(
        &self,
        model: &Model,
        limits: &Limits,
        ids: &EndpointIds,
    ) -> Result<Compiled, CompileError> {
        super::compile_seeded(
            model,
            limits,
            ids,
            &self.classes,
            None,
            super::Sharing::Views,
        )
        .map(|(c, ..)| c)
    }
}

/// Hashes of what many endpoints' keys share, computed once per compile.
/// Each is a [`KeyHasher`] key (two independent 64-bit hashes), so a key built
/// from them is as unlikely to collide as one built from the values.
pub(super) struct ModelHashes {
    /// By address of the policy in the model.
    policies: HashMap<usize, u128>,
    profiles: HashMap<String, u128>,
    named_ports: u128,
    failsafes: u128,
    /// Class views by (signature bits read, named ports read).
    views: Mutex<HashMap<(Vec<u64>, bool), u128>>,
}

/// The key of one value (see [`KeyHasher`]).
pub(super) fn key_of(value: impl Hash) -> u128 {
    let mut h = KeyHasher::new();
    h.add(value);
    h.finish()
}

/// A policy's content for hashing: every field, the order by its bits
/// (`f64` is not `Hash`; equal bits are equal orders, and the two zeros only
/// differ in the key, which costs a recompile, never a wrong reuse).
struct PolicyContent<'a>(&'a Policy);

impl Hash for PolicyContent<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // Destructured: a field added to `Policy` must be added here.
        let Policy {
            id,
            tier,
            order,
            selector,
            ingress_type,
            egress_type,
            ingress,
            egress,
            staged_action,
            do_not_track,
            pre_dnat,
            apply_on_forward,
        } = self.0;
        (id, tier, order.map(f64::to_bits), selector).hash(h);
        (ingress_type, egress_type, ingress, egress, staged_action).hash(h);
        (do_not_track, pre_dnat, apply_on_forward).hash(h);
    }
}

impl ModelHashes {
    pub(super) fn new(model: &Model) -> Self {
        let mut named: Vec<_> = model
            .endpoints
            .iter()
            .flat_map(|e| &e.named_ports)
            .map(|n| (&n.name, n.protocol, n.port))
            .collect();
        named.sort_unstable();
        named.dedup();
        ModelHashes {
            policies: model
                .policies
                .iter()
                .map(|p| (p as *const _ as usize, key_of(PolicyContent(p))))
                .collect(),
            profiles: model
                .profiles
                .iter()
                .map(|p| (p.name.clone(), key_of(p)))
                .collect(),
            named_ports: key_of(&named),
            failsafes: key_of(&model.failsafes),
            views: Mutex::new(HashMap::new()),
        }
    }
}

/// Two independent 64-bit hashes of the same input, as one key: foldhash
/// (quality) under two per-hasher seeds drawn at random once per process (the
/// keys only meet keys of the same process), so inputs cannot be chosen to
/// collide. Several times faster than SipHash on the many small writes of
/// a policy's fields.
struct KeyHasher([foldhash::quality::FoldHasher<'static>; 2]);

impl KeyHasher {
    fn new() -> Self {
        static SEEDS: OnceLock<[foldhash::quality::RandomState; 2]> = OnceLock::new();
        let [a, b] = SEEDS.get_or_init(Default::default);
        KeyHasher([a.build_hasher(), b.build_hasher()])
    }
    fn add(&mut self, value: impl Hash) {
        for h in &mut self.0 {
            value.hash(h);
        }
    }
    fn finish(&self) -> u128 {
        u128::from(self.0[0].finish()) << 64 | u128::from(self.0[1].finish())
    }
}

/// The key of an endpoint compiled under `id` whose view (the endpoints
/// compiled alike, see `views`) has the key `view` (see the module docs).
pub(super) fn key(view: u128, endpoint: &Endpoint, id: u32) -> u128 {
    let mut h = KeyHasher::new();
    h.add(id);
    h.add(endpoint);
    h.add(view);
    h.finish()
}

/// What the entries of endpoint `model.endpoints[index]` depend on besides
/// the endpoint's own record and id: the same for every endpoint of its view
/// (its policies and profiles, the classes seen through their rules, ...).
/// The endpoint's own record is hashed into [`key`] whole, so whatever of it
/// this leaves out (another member's profile names) is still in the key.
pub(super) fn view_key(shared: &Shared<'_, '_>, hashes: &ModelHashes, index: usize) -> u128 {
    let model = shared.model;
    let endpoint = &model.endpoints[index];
    let mut h = KeyHasher::new();
    let mut rules: Vec<&Rule> = Vec::new();
    for set in [PolicySet::Enforced, PolicySet::Pending] {
        for direction in [Direction::Ingress, Direction::Egress] {
            h.add(0xd1u8);
            for tier in shared.eval.applicable_policies(set, index, direction) {
                h.add((tier.phase, &tier.name, tier.default_action));
                for p in &tier.policies {
                    let codes = shared.names.policy_codes(&p.id, &tier.name);
                    h.add((hashes.policies.get(&(*p as *const _ as usize)), codes));
                    rules.extend(p.rules(direction));
                }
            }
        }
    }
    // Profiles no packet can reach (none defined) are the same to every member.
    let profiles = super::views::profiles_that_matter(shared, index);
    h.add(profiles.is_some());
    for name in profiles.into_iter().flatten() {
        h.add((
            name,
            hashes.profiles.get(name),
            shared.names.profile_code(name),
        ));
        if let Some(p) = model.profiles.iter().find(|p| &p.name == name) {
            rules.extend(p.ingress.iter().chain(&p.egress));
        }
    }
    let host = endpoint.kind == EndpointKind::Host;
    if host {
        h.add(hashes.failsafes);
    }
    let named = rules.iter().any(|r| names_a_port(r));
    if named {
        h.add(hashes.named_ports);
    }
    let failsafes = host.then_some(&model.failsafes);
    let peers = shared.peers;
    let mut mask = vec![0u64; peers.atoms.words()];
    for b in peers.bits_read(&rules, failsafes) {
        set_bit(&mut mask, b);
    }
    // Which atoms those bits are (their numbering follows the whole model)...
    for b in ones(&mask) {
        h.add(peers.atoms.atom_hash(b));
    }
    // ... and every class seen through them, shared by the endpoints that
    // read the same bits.
    let view = (mask, named);
    let known = lock(&hashes.views).get(&view).copied();
    let seen = known.unwrap_or_else(|| {
        let v = class_view(peers, &view.0, named);
        lock(&hashes.views).insert(view, v);
        v
    });
    h.add(seen);
    h.finish()
}

/// Every class through `mask`: its family, its bits within the mask, and
/// (`named`) its owners' named ports, by class id.
fn class_view(peers: &PeerClasses, mask: &[u64], named: bool) -> u128 {
    let mut h = KeyHasher::new();
    h.add(peers.classes.len());
    for class in &peers.classes {
        let sig = &class.signature;
        h.add(sig.v6);
        for word in sig.masked_words(mask) {
            h.add(word);
        }
        if named {
            h.add(&sig.named_ports);
        }
    }
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn names_a_port(r: &Rule) -> bool {
    [&r.source, &r.destination].into_iter().any(|side| {
        side.ports
            .iter()
            .chain(&side.not_ports)
            .any(|m| matches!(m, PortMatch::Named(_)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::testgen::{random_model, random_rule, scale_model, Rng, Shape};
    use proptest::prelude::*;

    fn assert_same(inc: &Compiled, fresh: &Compiled, what: &str) {
        assert_eq!(inc.tables, fresh.tables, "{what}: tables");
        assert_eq!(inc.endpoints, fresh.endpoints, "{what}: endpoints");
        assert_eq!(
            (&inc.policies, &inc.tiers, &inc.profiles),
            (&fresh.policies, &fresh.tiers, &fresh.profiles),
            "{what}: names"
        );
    }

    /// One random edit of the kinds a datastore sends: a pod added, removed or
    /// relabelled, a policy's rule changed, a policy removed.
    fn edit(rng: &mut Rng, model: &mut Model, serial: usize) -> String {
        let n = model.endpoints.len();
        match rng.below(5) {
            0 if n > 0 => {
                let mut pod = (*model.endpoints[rng.below(n)]).clone();
                pod.name = format!("added{serial}");
                pod.interface = rng.chance(80).then(|| format!("cali-a{serial}"));
                pod.ips = vec![format!("10.0.2.{}", serial % 250 + 1).parse().unwrap()];
                model.endpoints.insert(rng.below(n + 1), pod.into());
                "pod added".into()
            }
            1 if n > 1 => {
                model.endpoints.remove(rng.below(n));
                "pod removed".into()
            }
            2 if n > 0 => {
                let pod = std::sync::Arc::make_mut(&mut model.endpoints[rng.below(n)]);
                let key = rng.pick(&["app", "role", "tier"]).to_string();
                pod.labels
                    .insert(key, rng.pick(&["a", "b", "web", "db"]).to_string());
                "pod relabelled".into()
            }
            3 if !model.policies.is_empty() => {
                let k = rng.below(model.policies.len());
                let rule = random_rule(rng, Shape::default());
                let p = &mut model.policies[k];
                if rng.chance(50) && !p.ingress.is_empty() {
                    p.ingress.remove(0);
                } else {
                    p.ingress.push(rule);
                }
                "policy changed".into()
            }
            4 if model.policies.len() > 1 => {
                model.policies.remove(rng.below(model.policies.len()));
                "policy removed".into()
            }
            _ => "nothing".into(),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn incremental_compiles_equal_compiles_from_scratch(seed in any::<u64>()) {
            let mut rng = Rng::new(seed);
            let mut model = random_model(&mut rng, Shape::default());
            let mut compiler = Compiler::new();
            let mut ids = EndpointIds::default();
            let limits = Limits::default();
            for step in 0..10 {
                let what = if step == 0 { "first".into() } else { edit(&mut rng, &mut model, step) };
                let fresh = compiler.compile_fresh(&model, &limits, &ids);
                match compiler.compile(&model, &limits, &ids) {
                    Ok(inc) => {
                        let fresh = fresh.expect("the fresh compile succeeds too");
                        assert_same(&inc, &fresh, &format!("seed {seed} step {step} ({what})"));
                        ids = ids.after(&model, &inc.endpoints);
                    }
                    Err(e) => prop_assert_eq!(Err(e), fresh.map(|_| ())),
                }
            }
        }
    }

    #[test]
    fn a_relabelled_pod_recomputes_only_the_endpoints_it_touches() {
        let mut model = scale_model(60, 20, 3);
        let mut compiler = Compiler::new();
        let limits = Limits::default();
        let first = compiler
            .compile(&model, &limits, &EndpointIds::default())
            .unwrap();
        assert_eq!(first.stats.reused, 0);
        let ids = EndpointIds::default().after(&model, &first.endpoints);
        let again = compiler.compile(&model, &limits, &ids).unwrap();
        assert_eq!(again.stats.reused, 60, "nothing changed: everything reused");
        assert_eq!(again.stats.evaluations, 0);
        // A pod takes the labels another pod has (its class exists already):
        // only it is recompiled, and the result is that of a full compile.
        let labels = model.endpoints[1].labels.clone();
        std::sync::Arc::make_mut(&mut model.endpoints[0]).labels = labels;
        let c = compiler.compile(&model, &limits, &ids).unwrap();
        assert_eq!(c.stats.reused, 59);
        assert_same(
            &c,
            &compiler.compile_fresh(&model, &limits, &ids).unwrap(),
            "relabel",
        );
        // A pod added with a new address and existing labels: only it is compiled.
        let mut pod = (*model.endpoints[5]).clone();
        pod.name = "added".into();
        pod.interface = Some("cali-added".into());
        pod.ips = vec!["10.99.0.1".parse().unwrap()];
        model.endpoints.push(pod.into());
        let ids = ids.after(&model, &c.endpoints);
        let c = compiler.compile(&model, &limits, &ids).unwrap();
        assert_eq!(c.stats.reused, 60);
        assert_same(
            &c,
            &compiler.compile_fresh(&model, &limits, &ids).unwrap(),
            "added",
        );
    }

    #[test]
    fn a_compile_ahead_is_the_next_compile_of_the_same_inputs_only() {
        let mut model = scale_model(20, 10, 3);
        let limits = Limits::default();
        let ids = EndpointIds::default();
        let mut compiler = Compiler::new();
        compiler.compile_ahead(&model, &limits, &ids).unwrap();
        let used = compiler.compile(&model, &limits, &ids).unwrap();
        assert_same(
            &used,
            &compiler.compile_fresh(&model, &limits, &ids).unwrap(),
            "the compile made ahead",
        );
        // Kept for one call only, and only for the same inputs: another model
        // is compiled (from the cache the compile ahead left).
        compiler.compile_ahead(&model, &limits, &ids).unwrap();
        let labels = model.endpoints[1].labels.clone();
        std::sync::Arc::make_mut(&mut model.endpoints[0]).labels = labels;
        let other = compiler.compile(&model, &limits, &ids).unwrap();
        assert_eq!(other.stats.reused, 19, "{:?}", other.stats);
        assert_same(
            &other,
            &compiler.compile_fresh(&model, &limits, &ids).unwrap(),
            "another model after a compile ahead",
        );
    }
}

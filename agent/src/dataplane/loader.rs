//! The policy dataplane: loads `from_endpoint` / `to_endpoint`, attaches them to
//! interfaces, fills the maps (double-buffered tables, one atomic switch per
//! update) and reads counters. What is pinned and the links: [`super::pins`];
//! conntrack: [`super::conntrack`]; flow events: [`super::events`].
use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};

use agent_common::{active_flags, stat, ActiveTables, EndpointInfo, RuleKey, Verdict};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};

pub use super::conntrack::{
    delete_if_idle, monotonic_coarse_ns, pinned_conntrack, sweep_conntrack, CtSweep, Swept,
};
pub use super::events::FlowRecord;
use super::exact;
pub(super) use super::pins::detach_pinned;
pub use super::pins::{cleanup, link_pin_path, pinned_links, Cleanup, Links, PINNED_MAPS};
pub use super::programs::Hook;
use super::programs::PROGRAMS;
use super::tables::{Encoded, TableSet};
use super::{reuse, DataplaneError, EBPF_OBJECT};

/// Per-CPU counters summed, indexed by `agent_common::stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters(pub [u64; stat::COUNT as usize]);

impl Counters {
    pub fn get(&self, index: u32) -> u64 {
        self.0[index as usize]
    }
    /// (name, value) pairs in index order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        stat::NAMES.iter().copied().zip(self.0.iter().copied())
    }
}

/// The loaded policy dataplane. Without a pin directory, dropping it detaches its
/// links and frees the maps. With one ([`Dataplane::load_pinned`]) the maps and
/// links live on in bpffs and the next agent adopts them.
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) events: RingBuf<MapData>,
    pub(super) pin_dir: Option<PathBuf>,
    /// The maps were already pinned (an earlier agent's state was found).
    adopted: bool,
    /// The pinned table group was of another layout and was replaced by fresh
    /// maps (`upgrade`): they stay empty until this agent's first install.
    replaced_tables: bool,
    /// The replaced group's program array, kept alive for the earlier
    /// programs until this agent's are in the links
    /// ([`super::upgrade::hold_old_program_array`]).
    old_program_array: Option<MapData>,
    /// Programs an earlier agent verified from this same object, taken from
    /// their pins instead of the object's (`reuse`); empty when loaded here.
    reused: BTreeMap<&'static str, SchedClassifier>,
    /// What this agent wrote into each copy of the tables (index: generation),
    /// so an install diffs against memory instead of reading the kernel's
    /// copy back (~0.5 s at 40k keys). `None`: not known (before this agent's
    /// first install into it, with an adopted earlier agent's contents, or
    /// after a failed install): read back.
    shadow: [Option<Encoded>; 2],
}

pub(super) fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// The same entries in any order (map iteration order is the kernel's).
fn same_entries<T: std::fmt::Debug + PartialEq>(mut live: Vec<T>, mut want: Vec<T>) -> bool {
    let key = |e: &T| format!("{e:?}");
    live.sort_by_cached_key(key);
    want.sort_by_cached_key(key);
    live == want
}

/// One copy of the double-buffered tables (its generation).
#[derive(Clone, Copy)]
struct TableCopy(usize);

impl TableCopy {
    fn of(self, names: [&'static str; 2]) -> &'static str {
        names[self.0]
    }
}

/// The same entries in every table, in any order.
fn same_copy(held: Encoded, want: &Encoded) -> bool {
    same_entries(held.peers, want.peers.clone())
        && same_entries(held.rules, want.rules.clone())
        && same_entries(held.sports, want.sports.clone())
        && same_entries(held.groups, want.groups.clone())
}

/// Loads the object with the shared maps pinned under `maps`, the table
/// group ([`super::upgrade::TABLE_MAPS`]) under `table_group` when given.
fn load_with_pins(maps: &Path, table_group: Option<&Path>) -> Result<Ebpf, aya::EbpfError> {
    let mut loader = EbpfLoader::new();
    for name in PINNED_MAPS {
        let dir = table_group
            .filter(|_| super::upgrade::TABLE_MAPS.contains(&name))
            .unwrap_or(maps);
        loader.map_pin_path(name, dir.join(name));
    }
    loader.load(EBPF_OBJECT)
}

pub(super) fn missing(what: &'static str, name: &'static str) -> DataplaneError {
    DataplaneError::Missing { what, name }
}

impl Dataplane {
    /// Loads the object and both programs (through the verifier); attaches nothing.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::from_ebpf(Ebpf::load(EBPF_OBJECT)?, None, false, false)
    }

    /// Loads the object with its shared maps pinned in `dir/maps` (reusing the
    /// maps an earlier agent pinned there: conntrack, tables, endpoints, ACTIVE
    /// keep their contents). Fails with a clear error when a pinned map's layout
    /// differs from this build's (see `agent cleanup`).
    ///
    /// `dir` must have been prepared with [`super::host::prepare_pin_dir`]
    /// (the daemon does so once, before it takes the pin directory's lock).
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        let maps = dir.join("maps");
        if !maps.is_dir() {
            return Err(DataplaneError::Pin(format!(
                "{} is not a prepared pin directory (no maps/ in it)",
                dir.display()
            )));
        }
        let adopted = maps.join("ACTIVE").exists();
        let mut replaced = None;
        let mut old_program_array = None;
        let creating = std::time::Instant::now();
        let ebpf = match load_with_pins(&maps, None) {
            Err(aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
                name,
                ..
            })) if super::upgrade::TABLE_MAPS.contains(&name.as_str()) => {
                // An earlier agent's tables of another layout: a fresh table
                // group beside them (see `upgrade`).
                let next = super::upgrade::prepare_next(dir)?;
                replaced = Some(super::upgrade::pinned_active(&maps)?);
                old_program_array = super::upgrade::hold_old_program_array(&maps)?;
                load_with_pins(&maps, Some(&next))
            }
            other => other,
        };
        let ebpf = ebpf.map_err(|e| match e {
            aya::EbpfError::MapError(aya::maps::MapError::IncompatiblePinnedMap {
                name,
                property,
                expected,
                actual,
            }) => DataplaneError::Pin(format!(
                "the map {name} pinned in {} has {property} {actual}, this build needs {expected}: \
                 the pinned state comes from an incompatible agent version. Run `agent cleanup \
                 --bpffs {}` first (endpoints are unpoliced from then until this agent has \
                 attached, typically well under a second)",
                maps.display(),
                dir.display()
            )),
            e => DataplaneError::Load(e),
        })?;
        tracing::debug!(ms = ?creating.elapsed(), "maps created or opened");
        let may_reuse = adopted && replaced.is_none();
        let mut this = Self::from_ebpf(ebpf, Some(dir.to_path_buf()), adopted, may_reuse)?;
        if let Some(old) = replaced {
            this.replaced_tables = true;
            this.old_program_array = old_program_array;
            this.set_active(old)?;
            super::upgrade::commit(dir)?;
            tracing::info!(
                epoch = old.epoch,
                "pinned policy tables of another layout: replaced by a fresh table group \
                 (the earlier agent's programs keep theirs until this agent's are attached)"
            );
        }
        Ok(this)
    }

    fn from_ebpf(
        mut ebpf: Ebpf,
        pin_dir: Option<PathBuf>,
        adopted: bool,
        may_reuse: bool,
    ) -> Result<Self, DataplaneError> {
        let events = ebpf
            .take_map("FLOW_EVENTS")
            .ok_or(missing("map", "FLOW_EVENTS"))?;
        let events = RingBuf::try_from(events).map_err(map_err("FLOW_EVENTS"))?;
        let mut this = Dataplane {
            ebpf,
            events,
            pin_dir,
            adopted,
            replaced_tables: false,
            old_program_array: None,
            reused: BTreeMap::new(),
            shadow: [None, None],
        };
        this.load_or_reuse_programs(may_reuse)?;
        this.fill_service_progs()?;
        Ok(this)
    }

    /// With a pin directory: the programs an earlier agent verified from this
    /// object, when it left them pinned for the maps this agent opened
    /// (`may_reuse`: the maps were adopted, not created); else loaded through
    /// the verifier and pinned for the next agent (see `reuse`).
    fn load_or_reuse_programs(&mut self, may_reuse: bool) -> Result<(), DataplaneError> {
        let Some(pin_dir) = self.pin_dir.clone() else {
            return super::programs::load_programs(&mut self.ebpf);
        };
        let dir = reuse::object_dir(&pin_dir, EBPF_OBJECT);
        let known = reuse::object_maps_known(self.ebpf.maps().map(|(name, _)| name));
        if !known {
            tracing::warn!("the object has a map neither pinned nor private: its programs are not kept for a restart");
        }
        let reused = (may_reuse && known)
            .then(|| reuse::pinned_map_ids(&pin_dir.join("maps"), &PINNED_MAPS))
            .flatten()
            .and_then(|ids| reuse::take_pinned(&dir, &PROGRAMS, &ids));
        if let Some(programs) = reused {
            tracing::debug!(dir = %dir.display(), "programs reused: verified by an earlier agent");
            self.reused = programs;
            return Ok(());
        }
        super::programs::load_programs(&mut self.ebpf)?;
        let loaded = self.ebpf.programs_mut().filter_map(|(name, program)| {
            let name = PROGRAMS.into_iter().find(|&p| p == name)?;
            Some((name, <&mut SchedClassifier>::try_from(program).ok()?))
        });
        if known {
            reuse::pin_verified(&pin_dir, &dir, loaded);
        }
        Ok(())
    }

    /// The programs were taken from an earlier agent's pins, not verified here.
    pub fn programs_reused(&self) -> bool {
        !self.reused.is_empty()
    }

    pub fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DataplaneError> {
        self.classifier(hook.program_name())
    }

    /// The loaded program `name`: the reused one, else the object's.
    pub(super) fn classifier(
        &mut self,
        name: &'static str,
    ) -> Result<&mut SchedClassifier, DataplaneError> {
        if let Some(program) = self.reused.get_mut(name) {
            return Ok(program);
        }
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or(missing("program", name))?;
        program
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })
    }

    /// Attaches both programs (TCX) to `interface`, the host side of an endpoint's
    /// interface, in the calling thread's network namespace.
    pub fn attach(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let cname =
            CString::new(interface).map_err(|_| DataplaneError::NoInterface(interface.into()))?;
        for hook in Hook::ALL {
            let name = hook.program_name();
            self.program(hook)?
                .attach(cname.as_c_str(), hook.attach_type())
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        Ok(())
    }

    /// The pin directory, if the dataplane is pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Whether a link of an earlier agent is pinned for `ifindex`.
    pub fn has_pinned_link(&self, ifindex: u32) -> bool {
        self.pin_dir.as_deref().is_some_and(|d| {
            Hook::ALL
                .iter()
                .any(|h| link_pin_path(d, ifindex, *h).exists())
        })
    }

    /// Whether an earlier agent's pinned maps were found and reused.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// Whether the pinned tables were of another layout and replaced by fresh,
    /// empty ones: no program of this agent may go into a pinned link before
    /// its first install (the earlier agent's programs keep their own tables).
    pub fn replaced_tables(&self) -> bool {
        self.replaced_tables
    }

    /// Lets go of the replaced group's program array, once this agent's
    /// programs are in every link (no earlier program runs any more).
    pub fn release_replaced_tables(&mut self) {
        if self.old_program_array.take().is_some() {
            tracing::info!("the earlier agent's program array released");
        }
    }

    /// The map `name` as the typed map `T` (e.g. `Array<&MapData, ActiveTables>`).
    pub(super) fn map_as<'a, T>(&'a self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a Map, Error = MapError>,
    {
        let map = self.ebpf.map(name).ok_or(missing("map", name))?;
        T::try_from(map).map_err(map_err(name))
    }

    /// The map `name` as the typed map `T`, writable.
    pub(super) fn map_mut_as<'a, T>(&'a mut self, name: &'static str) -> Result<T, DataplaneError>
    where
        T: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self.ebpf.map_mut(name).ok_or(missing("map", name))?;
        T::try_from(map).map_err(map_err(name))
    }

    /// The ENDPOINTS entry of `ifindex`, if any.
    pub fn endpoint(&self, ifindex: u32) -> Option<EndpointInfo> {
        let map = self.ebpf.map("ENDPOINTS")?;
        let map: HashMap<_, u32, EndpointInfo> = HashMap::try_from(map).ok()?;
        map.get(&ifindex, 0).ok()
    }

    /// Whether the live copy of the tables holds exactly `tables` (an adopting
    /// agent with unchanged policy then skips the flip and the epoch bump, so
    /// established flows are not re-judged needlessly).
    pub fn live_tables_equal(&self, tables: &TableSet) -> Result<bool, DataplaneError> {
        let encoded = tables.encode()?;
        let live = TableCopy(usize::from(self.active()?.generation != 0));
        Ok(same_copy(self.read_copy(live)?, &encoded))
    }

    /// Every entry of the LPM trie `name` as (prefix length, key, value).
    fn lpm_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(u32, K, V)>, DataplaneError> {
        let trie: LpmTrie<_, K, V> = self.map_as(name)?;
        trie.iter()
            .map(|r| r.map(|(k, v)| (k.prefix_len(), k.data(), v)))
            .collect::<Result<_, _>>()
            .map_err(map_err(name))
    }

    /// Polices the interface `ifindex` as endpoint `info` (replaces an earlier entry).
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DataplaneError> {
        let mut map: HashMap<_, u32, EndpointInfo> = self.map_mut_as("ENDPOINTS")?;
        map.insert(&ifindex, &info, 0).map_err(map_err("ENDPOINTS"))
    }

    /// Stops policing `ifindex` (its packets pass untouched).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let mut map: HashMap<_, u32, EndpointInfo> = self.map_mut_as("ENDPOINTS")?;
        match map.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("ENDPOINTS")(e)),
        }
    }

    /// The live generation and epoch.
    pub fn active(&self) -> Result<ActiveTables, DataplaneError> {
        let array: Array<_, ActiveTables> = self.map_as("ACTIVE")?;
        array.get(&0, 0).map_err(map_err("ACTIVE"))
    }

    fn set_active(&mut self, value: ActiveTables) -> Result<(), DataplaneError> {
        let mut array: Array<_, ActiveTables> = self.map_mut_as("ACTIVE")?;
        array.set(0, &value, 0).map_err(map_err("ACTIVE"))
    }

    /// Benchmark/test knob: `agent_common::active_flags` (e.g. `NO_CT_INSERT`).
    pub fn set_active_flags(&mut self, flags: u32) -> Result<(), DataplaneError> {
        let mut active = self.active()?;
        active.flags = flags & (active_flags::NO_CT_INSERT | active_flags::REPORT_ALLOWED);
        self.set_active(active)
    }

    /// `agent run --flows all`: the kernel reports allowed new flows too
    /// (`REPORT_ALLOWED`); set or cleared at every start, as the flag outlives
    /// the agent in the pinned `ACTIVE`. Other flags are kept.
    pub fn set_report_allowed(&mut self, on: bool) -> Result<(), DataplaneError> {
        let mut active = self.active()?;
        if on {
            active.flags |= active_flags::REPORT_ALLOWED;
        } else {
            active.flags &= !active_flags::REPORT_ALLOWED;
        }
        self.set_active(active)
    }

    /// Writes `tables` into the inactive copy (only the entries that differ from
    /// what it holds, the tables of two installs ago), then switches to it
    /// and bumps the epoch in one map write. Returns the new live state. On an error
    /// the live copy is untouched.
    ///
    /// What the copy holds is taken from the shadow (what this agent wrote
    /// there) when known. This agent is the copies' only writer (the pin
    /// directory's lock; an adopted copy has no shadow and is read back), so
    /// the shadow is exact. Should another writer change a copy anyway, a
    /// delete of an entry it removed fails, and the copy is read back and the
    /// install tried once more; entries it added go unseen until
    /// [`Dataplane::shadow_matches_kernel`] is asked (that reads both copies).
    pub fn install(&mut self, tables: &TableSet) -> Result<ActiveTables, DataplaneError> {
        let encoded = tables.encode()?;
        let active = self.active()?;
        let next = active.generation ^ 1;
        let copy = TableCopy(next as usize);
        let written = match self.shadow[copy.0].take() {
            Some(held) => self
                .write_copy(copy, &held, &encoded)
                .or_else(|_| self.rewrite_copy(copy, &encoded)),
            None => self.rewrite_copy(copy, &encoded),
        };
        written?;
        self.shadow[copy.0] = Some(encoded);
        let live = ActiveTables {
            generation: next,
            epoch: active.epoch.wrapping_add(1),
            ..active
        };
        self.set_active(live)?;
        Ok(live)
    }

    /// Reads the copy back and writes what differs from `encoded`.
    fn rewrite_copy(&mut self, copy: TableCopy, encoded: &Encoded) -> Result<(), DataplaneError> {
        let held = self.read_copy(copy)?;
        self.write_copy(copy, &held, encoded)
    }

    /// The entries of one copy of the tables, read from the kernel (the
    /// exact-match hashes merged back into their tables: [`exact`]).
    fn read_copy(&self, copy: TableCopy) -> Result<Encoded, DataplaneError> {
        let mut peers: Vec<(u32, [u8; 16], u32)> =
            self.lpm_entries(copy.of(["PEERS_0", "PEERS_1"]))?;
        let hosts = self.hash_entries(copy.of(["PEER_HOSTS_0", "PEER_HOSTS_1"]))?;
        peers.extend(exact::merged(hosts, exact::HOST_PREFIX));
        let mut rules: Vec<(u32, RuleKey, Verdict)> =
            self.lpm_entries(copy.of(["RULES_0", "RULES_1"]))?;
        let ports = self.hash_entries(copy.of(["RULE_PORTS_0", "RULE_PORTS_1"]))?;
        rules.extend(exact::merged(ports, RuleKey::EXACT_PORT_PREFIX));
        Ok(Encoded {
            peers,
            rules,
            sports: self.lpm_entries(copy.of(["SPORTS_0", "SPORTS_1"]))?,
            groups: self.hash_entries(copy.of(["GROUPS_0", "GROUPS_1"]))?,
        })
    }

    /// Turns the copy holding `held` into one holding `new`.
    fn write_copy(
        &mut self,
        copy: TableCopy,
        held: &Encoded,
        new: &Encoded,
    ) -> Result<(), DataplaneError> {
        let (was, now) = (exact::peers(&held.peers), exact::peers(&new.peers));
        self.write_lpm(
            copy.of(["PEERS_0", "PEERS_1"]),
            &was.prefixes,
            &now.prefixes,
        )?;
        let hosts = copy.of(["PEER_HOSTS_0", "PEER_HOSTS_1"]);
        self.write_hash(hosts, &was.exact, &now.exact)?;
        let (was, now) = (exact::rules(&held.rules), exact::rules(&new.rules));
        self.write_lpm(
            copy.of(["RULES_0", "RULES_1"]),
            &was.prefixes,
            &now.prefixes,
        )?;
        let ports = copy.of(["RULE_PORTS_0", "RULE_PORTS_1"]);
        self.write_hash(ports, &was.exact, &now.exact)?;
        self.write_lpm(copy.of(["SPORTS_0", "SPORTS_1"]), &held.sports, &new.sports)?;
        let groups = copy.of(["GROUPS_0", "GROUPS_1"]);
        self.write_hash(groups, &held.groups, &new.groups)
    }

    /// Whether each copy of the tables holds what this agent's shadow says
    /// (copies without a shadow count as matching): reads both copies back,
    /// for checks of drift (another writer), not for every install.
    pub fn shadow_matches_kernel(&self) -> Result<bool, DataplaneError> {
        for (k, shadow) in self.shadow.iter().enumerate() {
            let Some(shadow) = shadow else { continue };
            if !same_copy(self.read_copy(TableCopy(k))?, shadow) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Makes the LPM trie `name`, holding `held` (prefix length, key, value),
    /// hold exactly `entries`, writing only the entries that differ.
    fn write_lpm<K, V>(
        &mut self,
        name: &'static str,
        held: &[(u32, K, V)],
        entries: &[(u32, K, V)],
    ) -> Result<(), DataplaneError>
    where
        K: aya::Pod + Eq + std::hash::Hash,
        V: aya::Pod + PartialEq,
    {
        let mut trie: LpmTrie<_, K, V> = self.map_mut_as(name)?;
        let pairs = |e: &[(u32, K, V)]| -> Vec<((u32, K), V)> {
            e.iter().map(|&(l, k, v)| ((l, k), v)).collect()
        };
        let (stale, write) = super::tables::changes(&pairs(held), &pairs(entries));
        for (len, key) in stale {
            trie.remove(&Key::new(len, key)).map_err(map_err(name))?;
        }
        for ((len, key), value) in &write {
            trie.insert(&Key::new(*len, *key), value, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Makes the hash map `name`, holding `held`, hold exactly `entries`,
    /// writing only the entries that differ.
    fn write_hash<K, V>(
        &mut self,
        name: &'static str,
        held: &[(K, V)],
        entries: &[(K, V)],
    ) -> Result<(), DataplaneError>
    where
        K: aya::Pod + Eq + std::hash::Hash,
        V: aya::Pod + PartialEq,
    {
        let (stale, write) = super::tables::changes(held, entries);
        let mut map: HashMap<_, K, V> = self.map_mut_as(name)?;
        for k in &stale {
            map.remove(k).map_err(map_err(name))?;
        }
        for (key, value) in &write {
            map.insert(key, value, 0).map_err(map_err(name))?;
        }
        Ok(())
    }

    /// Every entry of the hash map `name`.
    fn hash_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, DataplaneError> {
        let map: HashMap<_, K, V> = self.map_as(name)?;
        map.iter().collect::<Result<_, _>>().map_err(map_err(name))
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let array: PerCpuArray<_, u64> = self.map_as("DP_COUNTERS")?;
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array.get(&(i as u32), 0).map_err(map_err("DP_COUNTERS"))?;
            *slot = values.iter().sum();
        }
        Ok(Counters(out))
    }
}

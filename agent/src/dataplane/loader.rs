//! The policy dataplane: loads `from_endpoint` / `to_endpoint`, attaches them to
//! interfaces, fills the maps (double-buffered tables, one atomic switch per
//! update), reads counters and flow events.
use std::borrow::BorrowMut;
use std::ffi::CString;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};

use agent_common::{
    active_flags, ct_timeout, event_flags, stat, ActiveTables, CtKey, CtValue, EndpointInfo,
    FlowEvent, GroupKey, RuleKey, SourcePortKey, Verdict,
};
use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachType},
        SchedClassifier,
    },
    Ebpf, EbpfLoader,
};

use super::host::prepare_pin_dir;
use super::tables::{direction_code, TableSet};
use super::{DataplaneError, EBPF_OBJECT};
use crate::model::ir::Direction;

/// What a conntrack sweep found: entries kept and entries deleted as idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweep {
    pub live: usize,
    pub removed: usize,
}

/// Deletes conntrack entries idle longer than their timeout
/// (`ct_timeout::idle`) at `now_ns` (CLOCK_MONOTONIC_COARSE, the kernel's clock
/// for `last_seen_ns`; see [`monotonic_coarse_ns`]).
///
/// The kernel already treats such an entry as a miss, so deleting it changes no
/// verdict; it frees the slot before LRU pressure would evict a live flow. Each
/// entry is re-read just before its delete, so one refreshed by a packet since
/// the scan is kept (a packet landing in the microseconds between that read and
/// the delete would be re-judged as a new flow).
pub fn sweep_conntrack<T: BorrowMut<MapData>>(
    ct: &mut HashMap<T, CtKey, CtValue>,
    now_ns: u64,
) -> CtSweep {
    let expired = |k: &CtKey, v: &CtValue| {
        now_ns.saturating_sub(v.last_seen_ns) > ct_timeout::idle(k.protocol, v.tcp_state)
    };
    let keys: Vec<CtKey> = ct.keys().filter_map(Result::ok).collect();
    let mut sweep = CtSweep::default();
    for key in keys {
        match ct.get(&key, 0) {
            // A failed delete: evicted meanwhile by LRU.
            Ok(v) if expired(&key, &v) => {
                if ct.remove(&key).is_ok() {
                    sweep.removed += 1;
                }
            }
            Ok(_) => sweep.live += 1,
            Err(_) => {}
        }
    }
    sweep
}

/// The pinned `CONNTRACK` map under `pin_dir` as a handle of its own, so that a
/// sweep can run without holding the [`Dataplane`].
pub fn pinned_conntrack(
    pin_dir: &Path,
) -> Result<HashMap<MapData, CtKey, CtValue>, DataplaneError> {
    let data =
        MapData::from_pin(pin_dir.join("maps").join("CONNTRACK")).map_err(map_err("CONNTRACK"))?;
    HashMap::try_from(aya::maps::Map::LruHashMap(data)).map_err(map_err("CONNTRACK"))
}

/// CLOCK_MONOTONIC_COARSE in ns: the clock of `CtValue::last_seen_ns`
/// (`bpf_ktime_get_coarse_ns`).
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; this clock id always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The two programs, by the hook of the endpoint interface's host side they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress: what the endpoint sends (its egress policy).
    FromEndpoint,
    /// TC egress: what the endpoint receives (its ingress policy).
    ToEndpoint,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::FromEndpoint, Hook::ToEndpoint];

    pub fn program_name(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from_endpoint",
            Hook::ToEndpoint => "to_endpoint",
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromEndpoint => TcAttachType::Ingress,
            Hook::ToEndpoint => TcAttachType::Egress,
        }
    }

    /// The endpoint policy direction this hook enforces. On a host endpoint's
    /// interface (the host's own) the hooks judge the opposite directions of a
    /// workload's host-side veth: TC ingress carries traffic into the host.
    pub fn direction(self, host_endpoint: bool) -> Direction {
        match (self, host_endpoint) {
            (Hook::FromEndpoint, false) | (Hook::ToEndpoint, true) => Direction::Egress,
            (Hook::ToEndpoint, false) | (Hook::FromEndpoint, true) => Direction::Ingress,
        }
    }

    /// The hook whose packets `direction`'s policy judges.
    pub fn judging(direction: Direction, host_endpoint: bool) -> Hook {
        if Hook::FromEndpoint.direction(host_endpoint) == direction {
            Hook::FromEndpoint
        } else {
            Hook::ToEndpoint
        }
    }

    /// The short name used in link pin file names (`if<ifindex>_<short>`).
    pub fn short(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from",
            Hook::ToEndpoint => "to",
        }
    }
}

/// The maps shared between agent generations: pinned under `<bpffs>/maps/NAME`
/// and reused by the next `agent run` (and by upgraded programs).
pub const PINNED_MAPS: [&str; 19] = [
    "ENDPOINTS",
    "ACTIVE",
    "PEERS_0",
    "PEERS_1",
    "RULES_0",
    "RULES_1",
    "SPORTS_0",
    "SPORTS_1",
    "GROUPS_0",
    "GROUPS_1",
    "CONNTRACK",
    "FLOW_EVENTS",
    "DP_COUNTERS",
    "EVENT_BUDGET",
    "FRAGMENTS",
    "SERVICE_NETS",
    "DEFERRED",
    "SERVICE_FLOWS",
    "SERVICE_PROGS",
];

/// A pinned link file: `<bpffs>/links/if<ifindex>_<from|to>` (bpffs does not
/// allow dots in names, so interface names are not used).
pub fn link_pin_path(dir: &Path, ifindex: u32, hook: Hook) -> PathBuf {
    dir.join("links")
        .join(format!("if{ifindex}_{}", hook.short()))
}

/// The link pins under `dir`: (ifindex, hook, path).
pub fn pinned_links(dir: &Path) -> Vec<(u32, Hook, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir.join("links")) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("if") else {
            continue;
        };
        let Some((idx, hook)) = rest.split_once('_') else {
            continue;
        };
        let hook = match hook {
            "from" => Hook::FromEndpoint,
            "to" => Hook::ToEndpoint,
            _ => continue,
        };
        if let Ok(idx) = idx.parse() {
            out.push((idx, hook, e.path()));
        }
    }
    out.sort();
    out
}

/// The link pinned at `path`, if it is still attached to `ifindex` at `hook`
/// (its program is among the interface's TCX programs there).
fn live_pinned_link(path: &Path, ifindex: u32, hook: Hook) -> Option<FdLink> {
    let link: FdLink = PinnedLink::from_pin(path).ok()?.into();
    let prog = link.info().ok()?.program_id();
    let (_, progs) = SchedClassifier::query_tcx(ifindex, hook.attach_type()).ok()?;
    progs.iter().any(|p| p.id() == prog).then_some(link)
}

/// Detaches the link pinned at `path` at once (`BPF_LINK_DETACH` on a fresh fd,
/// so the result does not wait for the deferred release of the unlinked pin),
/// then removes the pin. A link whose interface is gone is already detached.
pub(super) fn detach_pinned(path: &Path) -> std::io::Result<()> {
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let c = CString::new(path.as_os_str().as_bytes())?;
    // union bpf_attr: obj_get {u64 pathname; u32 bpf_fd; u32 file_flags; ...}.
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: a zeroed attr of the size passed, pathname a valid C string.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_mut_ptr(), 128) };
    if fd >= 0 {
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut attr = [0u64; 16];
        attr[0] = std::os::fd::AsRawFd::as_raw_fd(&fd) as u64; // link_detach.link_fd
                                                               // SAFETY: as above. Fails harmlessly (ENOLINK) for a defunct link.
        unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_mut_ptr(), 128) };
    }
    std::fs::remove_file(path)
}

/// What `cleanup` removed.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub links: usize,
    pub maps: usize,
}

/// Removes everything pinned under `dir`: the links first (each detaches when its
/// pin goes, as nothing else holds it), then the maps, then the directory. Works
/// from any network namespace.
pub fn cleanup(dir: &Path) -> Result<Cleanup, DataplaneError> {
    let mut done = Cleanup::default();
    let post_nat = super::service::pinned_post_nat_links(dir)
        .into_iter()
        .map(|(_, p)| p);
    for path in pinned_links(dir)
        .into_iter()
        .map(|(_, _, p)| p)
        .chain(post_nat)
    {
        detach_pinned(&path)
            .map_err(|e| DataplaneError::Pin(format!("removing {}: {e}", path.display())))?;
        done.links += 1;
    }
    if let Ok(rd) = std::fs::read_dir(dir.join("maps")) {
        for e in rd.flatten() {
            std::fs::remove_file(e.path()).map_err(|err| {
                DataplaneError::Pin(format!("removing {}: {err}", e.path().display()))
            })?;
            done.maps += 1;
        }
    }
    for d in [dir.join("links"), dir.join("maps"), dir.to_path_buf()] {
        match std::fs::remove_dir(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(DataplaneError::Pin(format!(
                    "removing {}: {e}",
                    d.display()
                )))
            }
        }
    }
    Ok(done)
}

/// The two links of an attached interface; pinned ones stay attached when
/// dropped, unpinned ones detach.
pub struct Links {
    pub ifindex: u32,
    links: Vec<(Hook, FdLink, Option<PathBuf>)>,
    /// Programs swapped into links pinned by an earlier agent (0, 1 or 2).
    pub adopted: usize,
}

impl Links {
    /// Detaches: removes the pins, then drops the links.
    pub fn detach(self) {
        for (_, link, pin) in self.links {
            if let Some(p) = pin {
                let _ = detach_pinned(&p);
            }
            drop(link);
        }
    }

    /// The kernel's (link id, program id) of each hook.
    pub fn ids(&self) -> Vec<(Hook, u32, u32)> {
        self.links
            .iter()
            .filter_map(|(h, l, _)| l.info().ok().map(|i| (*h, i.id(), i.program_id())))
            .collect()
    }
}

/// A flow reported by the kernel (new flow on an endpoint with staged policy, or a
/// denied new flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    /// Destination port; for ICMP `type << 8 | code`.
    pub dst_port: u16,
    pub protocol: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub direction: Direction,
    pub enforced: Verdict,
    /// The pending (staged) verdict, when the endpoint has staged policy.
    pub pending: Option<Verdict>,
    pub fragment: bool,
    pub timestamp_ns: u64,
    /// The Service frontend (address, port) the client addressed, when the
    /// flow was judged after DNAT (`dst` is then the backend).
    pub service: Option<(IpAddr, u16)>,
}

impl From<&FlowEvent> for FlowRecord {
    fn from(e: &FlowEvent) -> Self {
        let ip = |b: [u8; 16]| {
            let v6 = Ipv6Addr::from(b);
            match (e.ip_version, v6.to_ipv4_mapped()) {
                (4, Some(v4)) => IpAddr::V4(v4),
                _ => IpAddr::V6(v6),
            }
        };
        FlowRecord {
            src: ip(e.src),
            dst: ip(e.dst),
            src_port: e.src_port,
            dst_port: e.dst_port,
            protocol: e.protocol,
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            direction: if e.direction == direction_code(Direction::Egress) {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            enforced: e.enforced,
            pending: (e.flags & event_flags::HAS_PENDING != 0).then_some(e.pending),
            fragment: e.flags & event_flags::FRAGMENT != 0,
            timestamp_ns: e.timestamp_ns,
            service: (e.flags & event_flags::SERVICE != 0).then(|| (ip(e.service), e.service_port)),
        }
    }
}

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
    events: RingBuf<MapData>,
    pin_dir: Option<PathBuf>,
    /// The maps were already pinned (an earlier agent's state was found).
    adopted: bool,
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

pub(super) fn missing(what: &'static str, name: &'static str) -> DataplaneError {
    DataplaneError::Missing { what, name }
}

impl Dataplane {
    /// Loads the object and both programs (through the verifier); attaches nothing.
    pub fn load() -> Result<Self, DataplaneError> {
        Self::from_ebpf(Ebpf::load(EBPF_OBJECT)?, None, false)
    }

    /// Loads the object with its shared maps pinned in `dir/maps` (reusing the
    /// maps an earlier agent pinned there: conntrack, tables, endpoints, ACTIVE
    /// keep their contents). Fails with a clear error when a pinned map's layout
    /// differs from this build's (see `agent cleanup`).
    pub fn load_pinned(dir: &Path) -> Result<Self, DataplaneError> {
        prepare_pin_dir(dir)?;
        let maps = dir.join("maps");
        let adopted = maps.join("ACTIVE").exists();
        let mut loader = EbpfLoader::new();
        for name in PINNED_MAPS {
            loader.map_pin_path(name, maps.join(name));
        }
        let ebpf = loader.load(EBPF_OBJECT).map_err(|e| match e {
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
        Self::from_ebpf(ebpf, Some(dir.to_path_buf()), adopted)
    }

    fn from_ebpf(
        mut ebpf: Ebpf,
        pin_dir: Option<PathBuf>,
        adopted: bool,
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
        };
        for hook in Hook::ALL {
            let name = hook.program_name();
            this.program(hook)?
                .load()
                .map_err(|source| DataplaneError::Program { name, source })?;
        }
        this.post_nat_program()?
            .load()
            .map_err(|source| DataplaneError::Program {
                name: super::service::POST_NAT,
                source,
            })?;
        this.fill_service_progs()?;
        Ok(this)
    }

    pub fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier, DataplaneError> {
        let name = hook.program_name();
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

    /// Attaches both programs to `ifindex`. When pinned: a link an earlier agent
    /// pinned for this interface and hook gets this agent's program swapped in
    /// atomically (`BPF_LINK_UPDATE`: no moment without a program); otherwise a
    /// new TCX link is created and pinned. On an error nothing new stays attached
    /// (adopted links keep their program).
    pub fn attach_links(&mut self, ifindex: u32) -> Result<Links, DataplaneError> {
        let mut out = Links {
            ifindex,
            links: Vec::new(),
            adopted: 0,
        };
        let mut created = Vec::new();
        for hook in Hook::ALL {
            match self.attach_link(ifindex, hook) {
                Ok((link, pin, adopted)) => {
                    out.adopted += usize::from(adopted);
                    if !adopted {
                        created.push(pin.clone());
                    }
                    out.links.push((hook, link, pin));
                }
                Err(e) => {
                    // Undo only what this call created; adopted links stay pinned
                    // (with whichever program they have: still enforcing).
                    for p in created.into_iter().flatten() {
                        let _ = std::fs::remove_file(p);
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    fn attach_link(
        &mut self,
        ifindex: u32,
        hook: Hook,
    ) -> Result<(FdLink, Option<PathBuf>, bool), DataplaneError> {
        let name = hook.program_name();
        let perr = move |source| DataplaneError::Program { name, source };
        let pin = self
            .pin_dir
            .as_deref()
            .map(|d| link_pin_path(d, ifindex, hook));
        if let Some(path) = pin.as_deref().filter(|p| p.exists()) {
            if let Some(link) = live_pinned_link(path, ifindex, hook) {
                let link = SchedClassifierLink::try_from(link)
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?;
                let prog = self.program(hook)?;
                let id = prog.attach_to_link(link).map_err(perr)?;
                let link = prog.take_link(id).map_err(perr)?;
                let link = FdLink::try_from(link)
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?;
                return Ok((link, pin, true));
            }
            // Stale: the interface it was attached to is gone (or was re-created).
            let _ = std::fs::remove_file(path);
        }
        let prog = self.program(hook)?;
        let id = prog.attach(ifindex, hook.attach_type()).map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin(e.to_string()))?;
        match pin {
            Some(path) => {
                let pinned = link
                    .pin(&path)
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?;
                Ok((pinned.into(), Some(path), false))
            }
            None => Ok((link, None, false)),
        }
    }

    /// Removes link pins of interfaces not in `keep` (detaching them) and
    /// ENDPOINTS entries of ifindexes not in `keep`. Returns how many links went.
    pub fn prune(&mut self, keep: &std::collections::HashSet<u32>) -> usize {
        let mut n = 0;
        if let Some(dir) = self.pin_dir.clone() {
            for (idx, _, path) in pinned_links(&dir) {
                if !keep.contains(&idx) && detach_pinned(&path).is_ok() {
                    n += 1;
                }
            }
        }
        if let Some(map) = self.ebpf.map_mut("ENDPOINTS") {
            if let Ok(mut map) = HashMap::<_, u32, EndpointInfo>::try_from(map) {
                let stale: Vec<u32> = map.keys().flatten().filter(|k| !keep.contains(k)).collect();
                for k in stale {
                    let _ = map.remove(&k);
                }
            }
        }
        n
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
        let live = usize::from(self.active()?.generation != 0);
        let copy = |names: [&'static str; 2]| names[live];
        let peers: Vec<(u32, [u8; 16], u32)> = self.lpm_entries(copy(["PEERS_0", "PEERS_1"]))?;
        if !same_entries(peers, encoded.peers.clone()) {
            return Ok(false);
        }
        let rules: Vec<(u32, RuleKey, Verdict)> = self.lpm_entries(copy(["RULES_0", "RULES_1"]))?;
        if !same_entries(rules, encoded.rules.clone()) {
            return Ok(false);
        }
        let sports: Vec<(u32, SourcePortKey, u8)> =
            self.lpm_entries(copy(["SPORTS_0", "SPORTS_1"]))?;
        if !same_entries(sports, encoded.sports.clone()) {
            return Ok(false);
        }
        let name = copy(["GROUPS_0", "GROUPS_1"]);
        let map = self.ebpf.map(name).ok_or(missing("map", name))?;
        let groups: HashMap<_, GroupKey, u32> = HashMap::try_from(map).map_err(map_err(name))?;
        let live: Vec<(GroupKey, u32)> = groups
            .iter()
            .collect::<Result<_, _>>()
            .map_err(map_err(name))?;
        Ok(same_entries(live, encoded.groups.clone()))
    }

    /// Every entry of the LPM trie `name` as (prefix length, key, value).
    fn lpm_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(u32, K, V)>, DataplaneError> {
        let map = self.ebpf.map(name).ok_or(missing("map", name))?;
        let trie: LpmTrie<_, K, V> = LpmTrie::try_from(map).map_err(map_err(name))?;
        trie.iter()
            .map(|r| r.map(|(k, v)| (k.prefix_len(), k.data(), v)))
            .collect::<Result<_, _>>()
            .map_err(map_err(name))
    }

    /// Polices the interface `ifindex` as endpoint `info` (replaces an earlier entry).
    pub fn set_endpoint(&mut self, ifindex: u32, info: EndpointInfo) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ENDPOINTS")
            .ok_or(missing("map", "ENDPOINTS"))?;
        let mut map: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(map).map_err(map_err("ENDPOINTS"))?;
        map.insert(&ifindex, &info, 0).map_err(map_err("ENDPOINTS"))
    }

    /// Stops policing `ifindex` (its packets pass untouched).
    pub fn remove_endpoint(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ENDPOINTS")
            .ok_or(missing("map", "ENDPOINTS"))?;
        let mut map: HashMap<_, u32, EndpointInfo> =
            HashMap::try_from(map).map_err(map_err("ENDPOINTS"))?;
        match map.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err("ENDPOINTS")(e)),
        }
    }

    /// The live generation and epoch.
    pub fn active(&self) -> Result<ActiveTables, DataplaneError> {
        let map = self.ebpf.map("ACTIVE").ok_or(missing("map", "ACTIVE"))?;
        let array: Array<_, ActiveTables> = Array::try_from(map).map_err(map_err("ACTIVE"))?;
        array.get(&0, 0).map_err(map_err("ACTIVE"))
    }

    fn set_active(&mut self, value: ActiveTables) -> Result<(), DataplaneError> {
        let map = self
            .ebpf
            .map_mut("ACTIVE")
            .ok_or(missing("map", "ACTIVE"))?;
        let mut array: Array<_, ActiveTables> = Array::try_from(map).map_err(map_err("ACTIVE"))?;
        array.set(0, &value, 0).map_err(map_err("ACTIVE"))
    }

    /// Benchmark/test knob: `agent_common::active_flags` (e.g. `NO_CT_INSERT`).
    pub fn set_active_flags(&mut self, flags: u32) -> Result<(), DataplaneError> {
        let mut active = self.active()?;
        active.flags = flags & active_flags::NO_CT_INSERT;
        self.set_active(active)
    }

    /// Writes `tables` into the inactive copy (cleared first), then switches to it
    /// and bumps the epoch in one map write. Returns the new live state. On an error
    /// the live copy is untouched.
    pub fn install(&mut self, tables: &TableSet) -> Result<ActiveTables, DataplaneError> {
        let encoded = tables.encode()?;
        let active = self.active()?;
        let next = active.generation ^ 1;
        let copy = |names: [&'static str; 2]| names[next as usize];
        self.refill_lpm(copy(["PEERS_0", "PEERS_1"]), &encoded.peers)?;
        self.refill_lpm(copy(["RULES_0", "RULES_1"]), &encoded.rules)?;
        self.refill_lpm(copy(["SPORTS_0", "SPORTS_1"]), &encoded.sports)?;
        let name = copy(["GROUPS_0", "GROUPS_1"]);
        let map = self.ebpf.map_mut(name).ok_or(missing("map", name))?;
        let mut groups: HashMap<_, GroupKey, u32> =
            HashMap::try_from(map).map_err(map_err(name))?;
        let old: Vec<GroupKey> = groups
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(name))?;
        for k in &old {
            groups.remove(k).map_err(map_err(name))?;
        }
        for (key, group) in &encoded.groups {
            groups.insert(key, group, 0).map_err(map_err(name))?;
        }
        let live = ActiveTables {
            generation: next,
            epoch: active.epoch.wrapping_add(1),
            ..active
        };
        self.set_active(live)?;
        Ok(live)
    }

    /// Replaces every entry of the LPM trie `name` with `entries`
    /// (prefix length, key, value).
    fn refill_lpm<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &'static str,
        entries: &[(u32, K, V)],
    ) -> Result<(), DataplaneError> {
        let map = self.ebpf.map_mut(name).ok_or(missing("map", name))?;
        let mut trie: LpmTrie<_, K, V> = LpmTrie::try_from(map).map_err(map_err(name))?;
        let old: Vec<Key<K>> = trie
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(name))?;
        for k in &old {
            trie.remove(k).map_err(map_err(name))?;
        }
        for (len, key, value) in entries {
            trie.insert(&Key::new(*len, *key), value, 0)
                .map_err(map_err(name))?;
        }
        Ok(())
    }

    /// The conntrack table (LRU hash), for inspection, flushing and tests.
    pub fn conntrack(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DataplaneError> {
        let map = self
            .ebpf
            .map_mut("CONNTRACK")
            .ok_or(missing("map", "CONNTRACK"))?;
        HashMap::try_from(map).map_err(map_err("CONNTRACK"))
    }

    /// [`sweep_conntrack`] on this dataplane's conntrack map.
    pub fn sweep_conntrack(&mut self, now_ns: u64) -> Result<CtSweep, DataplaneError> {
        Ok(sweep_conntrack(&mut self.conntrack()?, now_ns))
    }

    /// Counters summed over CPUs.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        let map = self
            .ebpf
            .map("DP_COUNTERS")
            .ok_or(missing("map", "DP_COUNTERS"))?;
        let array: PerCpuArray<_, u64> =
            PerCpuArray::try_from(map).map_err(map_err("DP_COUNTERS"))?;
        let mut out = [0u64; stat::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = array.get(&(i as u32), 0).map_err(map_err("DP_COUNTERS"))?;
            *slot = values.iter().sum();
        }
        Ok(Counters(out))
    }

    /// Flow events waiting on the ring buffer (non-blocking).
    pub fn drain_events(&mut self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            // Older programs (still attached during an upgrade) write the
            // shorter record without the Service fields: read what is there.
            if item.len() >= FlowEvent::V1_SIZE {
                let mut event = FlowEvent {
                    src: [0; 16],
                    dst: [0; 16],
                    src_port: 0,
                    dst_port: 0,
                    protocol: 0,
                    ip_version: 0,
                    direction: 0,
                    flags: 0,
                    ifindex: 0,
                    endpoint_id: 0,
                    enforced: Verdict::default(),
                    pending: Verdict::default(),
                    timestamp_ns: 0,
                    service: [0; 16],
                    service_port: 0,
                    _pad: [0; 6],
                };
                let n = item.len().min(std::mem::size_of::<FlowEvent>());
                // SAFETY: FlowEvent is plain old data; at most its size is copied.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        item.as_ptr(),
                        (&mut event as *mut FlowEvent).cast::<u8>(),
                        n,
                    )
                };
                if n < std::mem::size_of::<FlowEvent>() {
                    event.flags &= !event_flags::SERVICE;
                }
                out.push(FlowRecord::from(&event));
            }
        }
        out
    }
}

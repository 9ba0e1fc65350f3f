//! What outlives the agent in bpffs: the shared maps (`<bpffs>/maps/NAME`),
//! the TCX links (`<bpffs>/links/if<ifindex>_<from|to>`) and the verified
//! programs kept for a restart (`<bpffs>/progs/`, see `reuse`); adopting an earlier
//! agent's links, pruning those of interfaces gone, and removing everything.
use std::ffi::CString;
use std::path::{Path, PathBuf};

use agent_common::EndpointInfo;
use aya::maps::HashMap;
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    SchedClassifier,
};

use super::loader::{Dataplane, Hook};
use super::DataplaneError;

/// The maps shared between agent generations: pinned under `<bpffs>/maps/NAME`
/// and reused by the next `agent run` (and by upgraded programs).
pub const PINNED_MAPS: [&str; 23] = [
    "ENDPOINTS",
    "ACTIVE",
    "PEERS_0",
    "PEERS_1",
    "PEER_HOSTS_0",
    "PEER_HOSTS_1",
    "RULES_0",
    "RULES_1",
    "RULE_PORTS_0",
    "RULE_PORTS_1",
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

/// The entries of the ENDPOINTS map an earlier agent pinned under `dir`, by
/// ifindex, when its state is there to adopt (the same test as
/// [`Dataplane::adopted`]: `ACTIVE` is pinned); read without loading anything.
pub fn pinned_endpoints(dir: &Path) -> Option<std::collections::HashMap<u32, EndpointInfo>> {
    let maps = dir.join("maps");
    if !maps.join("ACTIVE").exists() {
        return None;
    }
    let map = aya::maps::MapData::from_pin(maps.join("ENDPOINTS")).ok()?;
    let map: HashMap<_, u32, EndpointInfo> =
        HashMap::try_from(aya::maps::Map::HashMap(map)).ok()?;
    map.iter().collect::<Result<_, _>>().ok()
}

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
    // Unpinned before the maps they use; attached nowhere any more (the links
    // went first), they are unloaded.
    let progs = super::reuse::progs_dir(dir);
    for object in std::fs::read_dir(&progs).into_iter().flatten().flatten() {
        super::reuse::remove_pinned_dir(&object.path()).map_err(|e| {
            DataplaneError::Pin(format!("removing {}: {e}", object.path().display()))
        })?;
    }
    let next = super::upgrade::next_dir(dir);
    for rd in [dir.join("maps"), next.clone()].map(std::fs::read_dir) {
        let Ok(rd) = rd else { continue };
        for e in rd.flatten() {
            std::fs::remove_file(e.path()).map_err(|err| {
                DataplaneError::Pin(format!("removing {}: {err}", e.path().display()))
            })?;
            done.maps += 1;
        }
    }
    for d in [
        dir.join("links"),
        dir.join("maps"),
        progs,
        next,
        dir.to_path_buf(),
    ] {
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

impl Dataplane {
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
}

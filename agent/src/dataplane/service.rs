//! Service traffic, userspace side (the design is in `ebpf/src/service.rs`):
//! the Service frontend prefixes (`SERVICE_NETS`) and the `post_nat` program
//! on the node's data interfaces (uplink, tunnels), the post-DNAT hook of flows
//! to remote backends.
//!
//! `post_nat` links are pinned like the endpoint links, as
//! `<bpffs>/links/if<ifindex>_postnat`, and adopted the same way: a new agent
//! swaps its program into a live pinned link (`BPF_LINK_UPDATE`), so a restart
//! never leaves a deferred Service flow without its post-DNAT hook.
use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use agent_common::service_prog;
use aya::maps::{lpm_trie::Key, LpmTrie, ProgramArray};
use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachType},
    SchedClassifier,
};
use ipnet::IpNet;

use super::loader::{detach_pinned, map_err, missing, Dataplane};
use super::tables::peer_key;
use super::DataplaneError;

/// The program attached (TCX egress) to data interfaces.
pub const POST_NAT: &str = "post_nat";
const NETS: &str = "SERVICE_NETS";

/// Calico's `bpfDataIfacePattern` defaults, as globs (`*` at the end only):
/// the interfaces a packet to a remote backend can leave the node by.
pub const DEFAULT_DATA_INTERFACES: [&str; 11] = [
    "eth*",
    "en*",
    "wl*",
    "ww*",
    "sl*",
    "ib*",
    "tunl0",
    "vxlan.calico",
    "vxlan-v6.calico",
    "wireguard.cali",
    "wg-v6.cali",
];

/// Whether `name` matches one of `patterns` (exact, or a prefix ending in `*`).
pub fn matches_pattern(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => p == name,
    })
}

/// Interfaces of the calling thread's network namespace: (name, ifindex).
pub fn interfaces() -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry, freed below.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return out;
        }
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*p).if_name)
                .to_string_lossy()
                .into_owned();
            out.push((name, (*p).if_index));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    out
}

/// A `post_nat` link on one data interface; a pinned one stays attached when
/// dropped.
pub struct PostNatLink {
    pub ifindex: u32,
    link: FdLink,
    pin: Option<PathBuf>,
    /// Swapped into a link an earlier agent pinned.
    pub adopted: bool,
}

impl PostNatLink {
    /// Detaches: removes the pin, then drops the link.
    pub fn detach(self) {
        if let Some(p) = &self.pin {
            let _ = detach_pinned(p);
        }
        drop(self.link);
    }
}

/// `<bpffs>/links/if<ifindex>_postnat`.
pub fn post_nat_pin_path(dir: &Path, ifindex: u32) -> PathBuf {
    dir.join("links").join(format!("if{ifindex}_postnat"))
}

/// The `post_nat` link pins under `dir`: (ifindex, path).
pub fn pinned_post_nat_links(dir: &Path) -> Vec<(u32, PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir.join("links")) else {
        return Vec::new();
    };
    let mut out: Vec<(u32, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let idx = name.strip_prefix("if")?.strip_suffix("_postnat")?;
            Some((idx.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// IPv4 as IPv4-mapped IPv6, as the kernel keys addresses.
fn key_of(net: &IpNet) -> Key<[u8; 16]> {
    let (len, addr) = peer_key(net);
    Key::new(len, addr)
}

impl Dataplane {
    /// Points `SERVICE_PROGS` at this agent's `post_nat` and `to_endpoint`
    /// (pinned: an earlier agent's programs, until swapped out of their links,
    /// tail-call into these, which read the same maps).
    pub(super) fn fill_service_progs(&mut self) -> Result<(), DataplaneError> {
        const PROGS: &str = "SERVICE_PROGS";
        let post_nat = self
            .post_nat_program()?
            .fd()
            .map_err(|source| DataplaneError::Program {
                name: POST_NAT,
                source,
            })?;
        let post_nat = post_nat
            .try_clone()
            .map_err(|e| DataplaneError::Pin(e.to_string()))?;
        let to = self.program(super::Hook::ToEndpoint)?;
        let to = to
            .fd()
            .map_err(|source| DataplaneError::Program {
                name: "to_endpoint",
                source,
            })?
            .try_clone()
            .map_err(|e| DataplaneError::Pin(e.to_string()))?;
        let map = self.ebpf.map_mut(PROGS).ok_or(missing("map", PROGS))?;
        let mut array = ProgramArray::try_from(map).map_err(map_err(PROGS))?;
        array
            .set(service_prog::POST_NAT, &post_nat, 0)
            .map_err(map_err(PROGS))?;
        array
            .set(service_prog::TO_ENDPOINT, &to, 0)
            .map_err(map_err(PROGS))
    }

    pub fn post_nat_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        self.classifier(POST_NAT)
    }

    /// Makes `nets` the Service frontend prefixes: new ones are added before
    /// old ones go, so a frontend in both is never missing for a moment.
    pub fn set_service_nets(&mut self, nets: &[IpNet]) -> Result<(), DataplaneError> {
        let map = self.ebpf.map_mut(NETS).ok_or(missing("map", NETS))?;
        let mut trie: LpmTrie<_, [u8; 16], u8> = LpmTrie::try_from(map).map_err(map_err(NETS))?;
        let want: Vec<Key<[u8; 16]>> = nets.iter().map(key_of).collect();
        for k in &want {
            trie.insert(k, &1, 0).map_err(map_err(NETS))?;
        }
        let old: Vec<Key<[u8; 16]>> = trie
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(NETS))?;
        let wanted: HashSet<(u32, [u8; 16])> =
            want.iter().map(|k| (k.prefix_len(), k.data())).collect();
        for k in old {
            if !wanted.contains(&(k.prefix_len(), k.data())) {
                trie.remove(&k).map_err(map_err(NETS))?;
            }
        }
        Ok(())
    }

    /// Whether `ip` is in a Service frontend prefix (as the kernel decides).
    pub fn is_service_frontend(&self, ip: IpAddr) -> bool {
        let Some(map) = self.ebpf.map(NETS) else {
            return false;
        };
        let Ok(trie) = LpmTrie::<_, [u8; 16], u8>::try_from(map) else {
            return false;
        };
        let net = IpNet::from(ip);
        trie.get(&key_of(&net), 0).is_ok()
    }

    /// Attaches `post_nat` (TCX egress) to `ifindex`; pinned when the dataplane
    /// is, adopting a live link an earlier agent pinned (atomic program swap).
    pub fn attach_post_nat(&mut self, ifindex: u32) -> Result<PostNatLink, DataplaneError> {
        let perr = |source| DataplaneError::Program {
            name: POST_NAT,
            source,
        };
        let pin = self.pin_dir().map(|d| post_nat_pin_path(d, ifindex));
        if let Some(path) = pin.as_deref().filter(|p| p.exists()) {
            if let Some(link) = live_post_nat_link(path, ifindex) {
                let link = SchedClassifierLink::try_from(link)
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?;
                let prog = self.post_nat_program()?;
                let id = prog.attach_to_link(link).map_err(perr)?;
                let link = prog.take_link(id).map_err(perr)?;
                let link = FdLink::try_from(link)
                    .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?;
                return Ok(PostNatLink {
                    ifindex,
                    link,
                    pin,
                    adopted: true,
                });
            }
            // Stale: its interface is gone (or was re-created).
            let _ = std::fs::remove_file(path);
        }
        let prog = self.post_nat_program()?;
        let id = prog.attach(ifindex, TcAttachType::Egress).map_err(perr)?;
        let link = prog.take_link(id).map_err(perr)?;
        let link = FdLink::try_from(link).map_err(|e| DataplaneError::Pin(e.to_string()))?;
        let link = match &pin {
            Some(path) => link
                .pin(path)
                .map_err(|e| DataplaneError::Pin(format!("{}: {e}", path.display())))?
                .into(),
            None => link,
        };
        Ok(PostNatLink {
            ifindex,
            link,
            pin,
            adopted: false,
        })
    }

    /// Removes `post_nat` pins of interfaces not in `keep` (detaching them).
    pub fn prune_post_nat(&self, keep: &HashSet<u32>) -> usize {
        let Some(dir) = self.pin_dir() else {
            return 0;
        };
        pinned_post_nat_links(dir)
            .into_iter()
            .filter(|(idx, path)| !keep.contains(idx) && detach_pinned(path).is_ok())
            .count()
    }
}

/// The link pinned at `path`, if still attached to `ifindex`'s TCX egress.
fn live_post_nat_link(path: &Path, ifindex: u32) -> Option<FdLink> {
    let link: FdLink = PinnedLink::from_pin(path).ok()?.into();
    let prog = link.info().ok()?.program_id();
    let (_, progs) = SchedClassifier::query_tcx(ifindex, TcAttachType::Egress).ok()?;
    progs.iter().any(|p| p.id() == prog).then_some(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_names_and_prefixes() {
        let p: Vec<String> = DEFAULT_DATA_INTERFACES
            .iter()
            .map(|s| s.to_string())
            .collect();
        for name in [
            "eth0",
            "ens3",
            "enp0s1",
            "tunl0",
            "vxlan.calico",
            "wg-v6.cali",
        ] {
            assert!(matches_pattern(&p, name), "{name}");
        }
        for name in ["cali1234567890a", "lo", "tunl1", "vxlan.calico2", "docker0"] {
            assert!(!matches_pattern(&p, name), "{name}");
        }
    }
}

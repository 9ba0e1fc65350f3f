//! Conntrack: the kernel's LRU map of flows already judged, and the sweep that
//! deletes idle entries.
use std::path::Path;

use agent_common::{CtKey, CtValue};
use aya::maps::{HashMap, Map, MapData};

use super::loader::{map_err, missing, Dataplane};
use super::map_batch::RawHash;
use super::DataplaneError;

/// What a conntrack sweep found: entries kept and entries deleted as idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweep {
    pub live: usize,
    pub removed: usize,
}

/// Deletes conntrack entries idle longer than their timeout
/// ([`CtValue::is_idle`], the kernel's own rule) at `now_ns` (CLOCK_MONOTONIC_COARSE, the kernel's clock
/// for `last_seen_ns`; see [`monotonic_coarse_ns`]).
///
/// The kernel already treats such an entry as a miss, so deleting it changes no
/// verdict; it frees the slot before LRU pressure would evict a live flow. The
/// map is read a few thousand entries per system call; each idle entry is then
/// deleted by [`delete_if_idle`], which puts back one a packet refreshed since
/// the read. One call per entry to find the next key and one to read it cost
/// 4.3x the batched read of a table of live flows, and 1.5 to 1.7x the sweep of a
/// table of idle ones (`tests/benches/conntrack_sweep.rs`).
pub fn sweep_conntrack(ct: &MapData, now_ns: u64) -> Result<CtSweep, DataplaneError> {
    let map = RawHash::<CtKey, CtValue>::new(ct).map_err(DataplaneError::Sweep)?;
    let mut idle = Vec::new();
    let mut sweep = CtSweep::default();
    map.for_each(|k, v| {
        if v.is_idle(k.protocol, now_ns) {
            idle.push(*k);
        } else {
            sweep.live += 1;
        }
    })
    .map_err(DataplaneError::Sweep)?;
    for key in &idle {
        match delete_if_idle_in(&map, key, now_ns).map_err(DataplaneError::Sweep)? {
            Swept::Deleted => sweep.removed += 1,
            Swept::Kept => sweep.live += 1,
            Swept::Gone => {}
        }
    }
    Ok(sweep)
}

/// What [`delete_if_idle`] did with an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Swept {
    /// It was idle and is gone.
    Deleted,
    /// A packet had refreshed it: it is in the map as that packet left it.
    Kept,
    /// There was no entry (evicted by the LRU, or deleted meanwhile).
    Gone,
}

/// Deletes `key`'s entry if it is idle at `now_ns`. The delete returns what
/// the entry held at that instant; one that a packet refreshed after the
/// sweep read it is put back, unless the kernel has meanwhile inserted a new
/// entry for the flow (then that one stays). Between the two calls the flow
/// has no entry for a few microseconds: a packet then is judged as a new flow.
pub fn delete_if_idle(ct: &MapData, key: &CtKey, now_ns: u64) -> Result<Swept, DataplaneError> {
    let map = RawHash::<CtKey, CtValue>::new(ct).map_err(DataplaneError::Sweep)?;
    delete_if_idle_in(&map, key, now_ns).map_err(DataplaneError::Sweep)
}

fn delete_if_idle_in(
    map: &RawHash<'_, CtKey, CtValue>,
    key: &CtKey,
    now_ns: u64,
) -> std::io::Result<Swept> {
    Ok(match map.take(key)? {
        None => Swept::Gone,
        Some(v) if v.is_idle(key.protocol, now_ns) => Swept::Deleted,
        Some(v) => {
            map.insert_new(key, &v)?;
            Swept::Kept
        }
    })
}

/// The pinned `CONNTRACK` map under `pin_dir`, a handle of its own so that a
/// sweep can run without holding the [`Dataplane`].
pub fn pinned_conntrack(pin_dir: &Path) -> Result<MapData, DataplaneError> {
    let data =
        MapData::from_pin(pin_dir.join("maps").join("CONNTRACK")).map_err(map_err("CONNTRACK"))?;
    RawHash::<CtKey, CtValue>::new(&data).map_err(DataplaneError::Sweep)?;
    Ok(data)
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

impl Dataplane {
    /// The conntrack table (LRU hash), for inspection, flushing and tests.
    pub fn conntrack(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DataplaneError> {
        self.map_mut_as("CONNTRACK")
    }

    /// The conntrack map itself, for [`sweep_conntrack`] and [`delete_if_idle`].
    pub fn conntrack_map(&self) -> Result<&MapData, DataplaneError> {
        match self.ebpf.map("CONNTRACK") {
            Some(Map::LruHashMap(data)) => Ok(data),
            _ => Err(missing("map", "CONNTRACK")),
        }
    }

    /// [`sweep_conntrack`] on this dataplane's conntrack map.
    pub fn sweep_conntrack(&self, now_ns: u64) -> Result<CtSweep, DataplaneError> {
        sweep_conntrack(self.conntrack_map()?, now_ns)
    }
}

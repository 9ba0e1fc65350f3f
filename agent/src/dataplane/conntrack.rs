//! Conntrack: the kernel's LRU map of flows already judged, and the sweep that
//! deletes idle entries.
use std::borrow::BorrowMut;
use std::path::Path;

use agent_common::{CtKey, CtValue};
use aya::maps::{HashMap, MapData};

use super::loader::{map_err, Dataplane};
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
/// verdict; it frees the slot before LRU pressure would evict a live flow. Each
/// entry is re-read just before its delete, so one refreshed by a packet since
/// the scan is kept (a packet landing in the microseconds between that read and
/// the delete would be re-judged as a new flow).
pub fn sweep_conntrack<T: BorrowMut<MapData>>(
    ct: &mut HashMap<T, CtKey, CtValue>,
    now_ns: u64,
) -> CtSweep {
    let expired = |k: &CtKey, v: &CtValue| v.is_idle(k.protocol, now_ns);
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

impl Dataplane {
    /// The conntrack table (LRU hash), for inspection, flushing and tests.
    pub fn conntrack(&mut self) -> Result<HashMap<&mut MapData, CtKey, CtValue>, DataplaneError> {
        self.map_mut_as("CONNTRACK")
    }

    /// [`sweep_conntrack`] on this dataplane's conntrack map.
    pub fn sweep_conntrack(&mut self, now_ns: u64) -> Result<CtSweep, DataplaneError> {
        Ok(sweep_conntrack(&mut self.conntrack()?, now_ns))
    }
}

//! Upgrading pinned state whose policy-table maps this build defines
//! differently (another size, flags or layout: e.g. `GROUPS_*` became a hash
//! without preallocation, with more entries, and its groups a wildcard per
//! address family).
//!
//! Such maps cannot be reused, and removing them first (`agent cleanup`)
//! leaves the node unpoliced until the new agent has attached. Instead the
//! new agent replaces the whole table group ([`TABLE_MAPS`]) at once: it
//! creates fresh maps of this build's definitions pinned under
//! `<bpffs>/maps_next`, and moves them over the old pins under `<bpffs>/maps`
//! (a rename on bpffs, atomic per map) as soon as they exist. The earlier
//! agent's programs keep their own maps meanwhile (a program holds the maps
//! it uses; a pin is only a name), so the interfaces they are attached to stay
//! policed by the old tables, unchanged, until this agent has installed its
//! tables in the new maps and swapped its programs into the pinned links
//! (`BPF_LINK_UPDATE`, no moment without a program). No program ever reads a
//! mix of old and new maps: the group holds every map whose contents refer to
//! each other (endpoint ids, the live copy, classes, groups) and the program
//! array the programs tail-call, so an old program tail-calls old programs.
//! The new `ACTIVE` continues the old one's epoch (and flags): the first
//! install bumps it, so conntrack entries (shared, same layout) judged by the
//! old tables are judged again by the new ones.
//!
//! Maps outside the group (conntrack, fragments, Service state, events,
//! counters) must still match: a change there remains an error that names
//! `agent cleanup`.
//!
//! If the agent dies between the rename and swapping every link, the next
//! one adopts the new maps (now pinned under `maps/`) like any restart and
//! swaps the remaining links; the old maps live on with the old programs until
//! then.
use std::path::{Path, PathBuf};

use agent_common::ActiveTables;
use aya::maps::{Array, Map, MapData};

use super::DataplaneError;

/// The maps replaced together when one of them is incompatible.
pub const TABLE_MAPS: [&str; 15] = [
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
    "PEER_HOSTS_0",
    "PEER_HOSTS_1",
    "RULE_PORTS_0",
    "RULE_PORTS_1",
    "SERVICE_PROGS",
];

/// Where the replacement maps are created (bpffs names cannot hold dots).
pub fn next_dir(dir: &Path) -> PathBuf {
    dir.join("maps_next")
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin(format!("{}: {e}", path.display()))
}

/// Empties (or creates) `<dir>/maps_next`: pins left there by an agent that
/// died before moving them were never made the shared state.
pub fn prepare_next(dir: &Path) -> Result<PathBuf, DataplaneError> {
    let next = next_dir(dir);
    if let Ok(rd) = std::fs::read_dir(&next) {
        for e in rd.flatten() {
            std::fs::remove_file(e.path()).map_err(|err| pin_err(&e.path(), err))?;
        }
    }
    match std::fs::create_dir(&next) {
        Ok(()) => Ok(next),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(next),
        Err(e) => Err(pin_err(&next, e)),
    }
}

/// The `ACTIVE` value pinned under `maps` (all zero if there is none).
pub fn pinned_active(maps: &Path) -> Result<ActiveTables, DataplaneError> {
    let path = maps.join("ACTIVE");
    if !path.exists() {
        return Ok(ActiveTables::default());
    }
    let data = MapData::from_pin(&path).map_err(|e| pin_err(&path, e))?;
    let map = Map::from_map_data(data).map_err(|e| pin_err(&path, e))?;
    let array: Array<_, ActiveTables> = Array::try_from(map).map_err(|e| pin_err(&path, e))?;
    array.get(&0, 0).map_err(|e| pin_err(&path, e))
}

/// The earlier agent's program array (`SERVICE_PROGS`), held open until this
/// agent's programs are in every link. The kernel empties a program array
/// when no file descriptor or pin refers to it any more (to break reference
/// cycles), and [`commit`] moves the pin away: without this handle the
/// earlier programs' tail calls to `post_nat` (a Service flow to a local
/// backend) would fail from the rename until their links are swapped.
pub fn hold_old_program_array(maps: &Path) -> Result<Option<MapData>, DataplaneError> {
    let path = maps.join("SERVICE_PROGS");
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(&path)
        .map(Some)
        .map_err(|e| pin_err(&path, e))
}

/// Moves the group's pins from `maps_next` over those under `maps`, then
/// removes `maps_next`.
pub fn commit(dir: &Path) -> Result<(), DataplaneError> {
    let next = next_dir(dir);
    for name in TABLE_MAPS {
        let from = next.join(name);
        std::fs::rename(&from, dir.join("maps").join(name)).map_err(|e| pin_err(&from, e))?;
    }
    std::fs::remove_dir(&next).map_err(|e| pin_err(&next, e))
}

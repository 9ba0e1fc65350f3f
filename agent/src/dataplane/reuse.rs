//! Programs an earlier agent verified, reused on a restart.
//!
//! Verifying `from_endpoint` and `to_endpoint` is most of an agent's start
//! (docs/benchmarks.md, "Start to enforced"), and it gives the same result for
//! the same object on the same maps. So a pinned agent pins its verified
//! programs under `<bpffs>/progs/<object>/NAME`, where `<object>` names this
//! build's eBPF object by its content, and the next agent takes them from
//! there instead of loading them again when both hold:
//!
//! - the object is the same (the directory name: another build, another
//!   directory, and the earlier build's programs are unpinned);
//! - every map a pinned program uses is one of the maps this agent opened from
//!   its pins (by kernel map id), or one of the programs' own ([`PRIVATE_MAPS`]). Maps created afresh (after `agent cleanup`,
//!   or a table group of another layout replaced by `upgrade`) have new ids, so
//!   programs bound to the old ones are never taken.
//!
//! Anything else, or any error on the way, loads the programs through the
//! verifier as before: reuse only saves time, it never decides what runs.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use aya::maps::{MapData, MapInfo};
use aya::programs::SchedClassifier;
use sha1::{Digest, Sha1};

/// `<bpffs>/progs`: one directory per object whose programs are pinned.
pub fn progs_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("progs")
}

/// `<bpffs>/progs/<object>`: the first 16 hex digits of the object's SHA-1.
/// A name, not a security boundary (whoever can write bpffs can replace any
/// program anyway), so a short content hash is enough to tell builds apart.
pub fn object_dir(pin_dir: &Path, object: &[u8]) -> PathBuf {
    let digest = Sha1::digest(object);
    let name: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    progs_dir(pin_dir).join(name)
}

/// The kernel ids of the maps pinned under `maps` by `names`; `None` when one
/// cannot be opened (then nothing is reused).
pub fn pinned_map_ids(maps: &Path, names: &[&str]) -> Option<HashSet<u32>> {
    names
        .iter()
        .map(|name| {
            let map = MapData::from_pin(maps.join(name)).ok()?;
            Some(map.info().ok()?.id())
        })
        .collect()
}

/// The programs `names` pinned in `dir`, when every one is there and uses only
/// maps in `map_ids`.
pub fn take_pinned(
    dir: &Path,
    names: &[&'static str],
    map_ids: &HashSet<u32>,
) -> Option<BTreeMap<&'static str, SchedClassifier>> {
    let mut programs = BTreeMap::new();
    for &name in names {
        let path = dir.join(name);
        if !path.exists() {
            return None;
        }
        let program = match SchedClassifier::from_pin(&path) {
            Ok(program) => program,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "pinned program not reusable");
                return None;
            }
        };
        let used = program.info().ok()?.map_ids().ok()??;
        let foreign = used
            .iter()
            .map(|&id| (id, MapInfo::from_id(id).ok()))
            .find(|(id, info)| !map_ids.contains(id) && !info.as_ref().is_some_and(is_private));
        if let Some((id, info)) = foreign {
            tracing::debug!(
                name,
                map_id = id,
                map = info.as_ref().and_then(|m| m.name_as_str()).unwrap_or("?"),
                "pinned program uses a map this agent did not open: loading afresh"
            );
            return None;
        }
        programs.insert(name, program);
    }
    Some(programs)
}

/// The object's maps that are its programs' own: nothing but the program
/// reads or writes them (the parsed packet handed between the programs'
/// functions, `ebpf/src/hooks.rs`; the flow side handed to `judge_flow`,
/// `ebpf/src/policy.rs`; the constants, which aya fills from the object and
/// freezes). Every other map is pinned ([`super::pins::PINNED_MAPS`]) and
/// so shared with a reused program; of these a reused program keeps its own
/// copy, as good as a new one. [`object_maps_known`] holds the object to it.
pub const PRIVATE_MAPS: [&str; 3] = ["PARSED", "JUDGED", ".rodata"];

/// Whether every map of the loaded object is pinned or private: a map the
/// agent uses without pinning it would not be the one a reused program uses.
pub fn object_maps_known<'a>(mut names: impl Iterator<Item = &'a str>) -> bool {
    names.all(|n| super::pins::PINNED_MAPS.contains(&n) || PRIVATE_MAPS.contains(&n))
}

fn is_private(map: &MapInfo) -> bool {
    map.name_as_str().is_some_and(|n| PRIVATE_MAPS.contains(&n))
}

/// Pins the freshly verified `programs` in `dir` for the next agent, after
/// removing the pins of every other object (their programs stay loaded while
/// a link still runs them). Failing to pin only costs the next start its
/// shortcut, so errors are logged, not returned.
pub fn pin_verified<'a>(
    pin_dir: &Path,
    dir: &Path,
    programs: impl IntoIterator<Item = (&'static str, &'a mut SchedClassifier)>,
) {
    remove_other_objects(pin_dir, dir);
    if let Err(e) = std::fs::create_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the verified programs for a restart");
        return;
    }
    for (name, program) in programs {
        let path = dir.join(name);
        // A pin left by an agent that stopped halfway through pinning.
        let _ = std::fs::remove_file(&path);
        if let Err(e) = program.pin(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot keep a verified program for a restart");
        }
    }
}

fn remove_other_objects(pin_dir: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(progs_dir(pin_dir)) else {
        return;
    };
    for entry in entries.flatten().filter(|e| e.path() != keep) {
        if let Err(e) = remove_pinned_dir(&entry.path()) {
            tracing::warn!(dir = %entry.path().display(), error = %e, "cannot unpin an earlier build's programs");
        }
    }
}

/// Removes a directory of pinned programs (bpffs holds only pins and
/// directories, so removing each entry unpins it).
pub fn remove_pinned_dir(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)?.flatten() {
        std::fs::remove_file(entry.path())?;
        removed += 1;
    }
    std::fs::remove_dir(dir)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_object_gets_another_directory() {
        let pins = Path::new("/sys/fs/bpf/agent");
        let a = object_dir(pins, b"object one");
        assert_eq!(a, object_dir(pins, b"object one"));
        assert_ne!(a, object_dir(pins, b"object two"));
        assert_eq!(a.parent(), Some(progs_dir(pins).as_path()));
        assert_eq!(a.file_name().map(|n| n.len()), Some(16));
    }
}

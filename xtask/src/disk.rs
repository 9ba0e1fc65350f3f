//! Free space before a test run. A cold `cargo xtask test` writes its whole
//! build (the eBPF programs, the agent in two profiles, every test binary)
//! and the Kubernetes tests' etcd data; when the disk fills part way, tools
//! fail far from the cause (the API server's certificate step exits silently),
//! so the run stops up front with the numbers instead.
use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use anyhow::{bail, Context as _, Result};

const GIB: u64 = 1 << 30;

/// What a cold run adds to the disk at its peak, build and test data together,
/// with room to spare. Measured on a fresh clone: `target/` peaks at 5.5 GiB
/// (11.3 GiB before debug builds kept line tables only), and the pinned
/// toolchain and the tests' own files add ~2 GiB (README, "Quick start").
pub const COLD_TEST_RUN: u64 = 12 * GIB;

/// Fails, saying how much is free and what is needed, unless the filesystem
/// of `target` has room for what a run still has to write: `cold` less what
/// `target` already holds (a warm build rewrites little), and at least a tenth
/// of `cold` for the tests' own files.
pub fn require_room(target: &Path, cold: u64) -> Result<()> {
    let built = dir_size(target);
    let needed = cold.saturating_sub(built).max(cold / 10);
    let existing = existing_ancestor(target);
    let free = free_bytes(existing)?;
    if free < needed {
        bail!(
            "{:.1} GiB free on the filesystem of {} ({} already holds {:.1} GiB of build); \
             this run needs about {:.1} GiB more: free some space (e.g. `cargo clean`, or \
             remove old files under /tmp) and run it again",
            free as f64 / GIB as f64,
            existing.display(),
            target.display(),
            built as f64 / GIB as f64,
            needed as f64 / GIB as f64,
        );
    }
    Ok(())
}

/// The bytes in the files under `dir` (0 when it does not exist yet), each
/// file once: cargo hard-links its outputs (`target/debug/agent` is
/// `target/debug/deps/agent-*`), which must not count twice.
fn dir_size(dir: &Path) -> u64 {
    let mut seen = HashSet::new();
    files_size(dir, &mut seen)
}

fn files_size(dir: &Path, seen: &mut HashSet<(u64, u64)>) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in entries.flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => total += files_size(&e.path(), seen),
            Ok(t) if t.is_file() => {
                if let Ok(m) = e.metadata() {
                    if m.nlink() == 1 || seen.insert((m.dev(), m.ino())) {
                        total += m.len();
                    }
                }
            }
            _ => {}
        }
    }
    total
}

/// `path`, or its nearest ancestor that exists.
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

/// Bytes available to an unprivileged writer on the filesystem of `path`.
fn free_bytes(path: &Path) -> Result<u64> {
    let c = CString::new(path.as_os_str().as_bytes()).context("path with a NUL byte")?;
    // SAFETY: statvfs writes only the struct it is given; c is NUL-terminated.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_checked_on_the_nearest_existing_directory() {
        let missing =
            std::env::temp_dir().join(format!("xtask-disk-{}/target", std::process::id()));
        require_room(&missing, 0).expect("nothing needed");
        let err = require_room(&missing, u64::MAX / 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains("GiB free on the filesystem of"), "{err}");
        assert!(err.contains("free some space"), "{err}");
    }

    #[test]
    fn what_target_holds_is_counted_against_the_cold_need() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-held-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("debug")).unwrap();
        std::fs::write(dir.join("debug/a"), vec![0u8; 4096]).unwrap();
        std::fs::hard_link(dir.join("debug/a"), dir.join("debug/b")).unwrap();
        let held = dir_size(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(held, 4096, "a hard link counts once");
    }
}

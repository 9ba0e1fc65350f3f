//! How many CPUs this process may use, asked once.
use std::sync::OnceLock;

/// The CPUs this process may use (its cgroup's quota and affinity), asked of
/// the kernel once: `available_parallelism` reads the cgroup's files from /proc
/// and /sys on every call (~30 µs), and loads and compiles ask per file and per
/// compile.
pub fn usable() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

//! What the host must provide before the agent touches the kernel: a kernel
//! new enough for pinned TCX links, and a pin directory on a bpffs that
//! outlives the agent.
//!
//! "Pinned" is a promise that the dataplane outlives the agent process. It
//! only holds when the pins live on a bpffs mount that some longer-lived
//! mount namespace also holds: the host's (or, in a container, one propagated
//! to and from the host's). Two common ways to break it silently:
//! - the agent started with `ip netns exec NODE`: `ip` gives the command a mount namespace
//!   of its own with a fresh /sys, so /sys/fs/bpf there is an empty directory;
//!   a bpffs mounted on it dies with the agent (and the programs with it).
//! - a container whose /sys/fs/bpf is not the host's bpffs mounted with
//!   Bidirectional (or at least HostToContainer) propagation: a bpffs the
//!   agent mounts inside it dies with the container.
//!
//! So the agent mounts bpffs itself only when it shares its mount namespace
//! with its parent or with PID 1 (and is not PID 1: then it is a container's
//! entry point), and it accepts an existing bpffs when the same holds or when
//! the mount is propagated (`shared:` / `master:` in mountinfo). Anything else
//! is refused before any program is loaded, with the fix in the message.
use std::ffi::CString;
use std::path::{Path, PathBuf};

use super::DataplaneError;

/// Pinned TCX links (`BPF_LINK_TYPE_TCX` with `BPF_OBJ_PIN` and
/// `BPF_LINK_UPDATE`) arrived in Linux 6.6.
pub const MIN_KERNEL: (u32, u32) = (6, 6);

/// bpffs' magic number (`statfs.f_type`).
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The fix, said once for every refusal below.
const HOW_TO_RUN: &str = "run the agent in the host's mount namespace: to enter a node's \
    network namespace use `nsenter --net=/run/netns/NAME agent run ...` (not `ip netns exec`, \
    which gives the agent a private /sys); in a container, mount the host's /sys/fs/bpf with \
    mountPropagation: Bidirectional, as deploy/ does";

/// Refuses kernels older than [`MIN_KERNEL`], naming both versions.
pub fn check_kernel() -> Result<(), DataplaneError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_err(|e| DataplaneError::Host(format!("reading the kernel release: {e}")))?;
    check_kernel_release(release.trim())
}

fn check_kernel_release(release: &str) -> Result<(), DataplaneError> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
        return Err(DataplaneError::Host(format!(
            "cannot read the kernel version from {release:?}"
        )));
    };
    if (major, minor) < MIN_KERNEL {
        return Err(DataplaneError::Host(format!(
            "kernel {release} is too old: the agent pins TCX links, which need Linux {}.{} or newer",
            MIN_KERNEL.0, MIN_KERNEL.1
        )));
    }
    Ok(())
}

pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    r == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` (and `dir/maps`, `dir/links`) exist on a bpffs that
/// outlives the agent (module docs), mounting bpffs at /sys/fs/bpf first when
/// `dir` is below it, it is not mounted, and this process may mount it.
pub fn prepare_pin_dir(dir: &Path) -> Result<(), DataplaneError> {
    let sys = Path::new("/sys/fs/bpf");
    let namespace = MountNamespace::of_self();
    if dir.starts_with(sys) && !is_bpffs(sys) {
        if !namespace.is_long_lived() {
            return Err(DataplaneError::Pin(format!(
                "no bpffs is mounted at /sys/fs/bpf in this mount namespace, and one mounted here \
                 would die with the agent ({}); {HOW_TO_RUN}",
                namespace.describe()
            )));
        }
        mount_bpffs(sys)?;
    }
    for d in [dir.to_path_buf(), dir.join("maps"), dir.join("links")] {
        std::fs::create_dir_all(&d)
            .map_err(|e| DataplaneError::Pin(format!("creating {}: {e}", d.display())))?;
    }
    if !is_bpffs(dir) {
        return Err(DataplaneError::Pin(format!(
            "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf DIR`)",
            dir.display()
        )));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| DataplaneError::Pin(format!("reading /proc/self/mountinfo: {e}")))?;
    let mount = containing_mount(&mounts, &canonical(dir)).ok_or_else(|| {
        DataplaneError::Pin(format!(
            "{} is on a bpffs that /proc/self/mountinfo does not list",
            dir.display()
        ))
    })?;
    if !(mount.propagated || namespace.is_long_lived()) {
        return Err(DataplaneError::Pin(format!(
            "{} is on the bpffs mounted at {}, which only this mount namespace holds ({}): the \
             pins and the programs would die with the agent; {HOW_TO_RUN}",
            dir.display(),
            mount.mount_point.display(),
            namespace.describe()
        )));
    }
    Ok(())
}

fn mount_bpffs(at: &Path) -> Result<(), DataplaneError> {
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(at)
        .status()
        .map_err(|e| DataplaneError::Pin(format!("running mount -t bpf: {e}")))?;
    if !status.success() {
        return Err(DataplaneError::Pin(format!(
            "mounting bpffs at {} failed",
            at.display()
        )));
    }
    Ok(())
}

fn canonical(dir: &Path) -> PathBuf {
    std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
}

/// Whose mount namespace this process is in, as far as /proc lets us see.
struct MountNamespace {
    own: Option<String>,
    parent: Option<String>,
    init: Option<String>,
    is_pid1: bool,
}

impl MountNamespace {
    fn of_self() -> Self {
        let ns = |pid: &str| {
            std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .map(|p| p.display().to_string())
        };
        // SAFETY: getppid and getpid have no preconditions.
        let (ppid, pid) = unsafe { (libc::getppid(), libc::getpid()) };
        Self {
            own: ns("self"),
            parent: (ppid > 0).then(|| ns(&ppid.to_string())).flatten(),
            init: ns("1"),
            is_pid1: pid == 1,
        }
    }

    /// Shared with a process that outlives the agent: its parent (a shell,
    /// `nsenter`, systemd) or PID 1. A container's entry point (PID 1 itself)
    /// does not count: its namespace ends with the container.
    fn is_long_lived(&self) -> bool {
        let Some(own) = &self.own else { return false };
        !self.is_pid1 && (self.parent.as_ref() == Some(own) || self.init.as_ref() == Some(own))
    }

    fn describe(&self) -> String {
        let show = |n: &Option<String>| n.clone().unwrap_or_else(|| "unreadable".into());
        format!(
            "this process: {}{}, its parent: {}, PID 1: {}",
            show(&self.own),
            if self.is_pid1 { " (it is PID 1)" } else { "" },
            show(&self.parent),
            show(&self.init)
        )
    }
}

/// One line of /proc/self/mountinfo, the parts used here.
#[derive(Debug, PartialEq, Eq)]
struct Mount {
    mount_point: PathBuf,
    fs_type: String,
    /// `shared:N` or `master:N`: the mount is a peer or a slave of a mount in
    /// another namespace (container runtimes' Bidirectional / HostToContainer).
    propagated: bool,
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let mount_point = unescape(fields.get(4)?);
    let propagated = fields
        .iter()
        .skip(6)
        .any(|f| f.starts_with("shared:") || f.starts_with("master:"));
    let fs_type = after.split(' ').next()?.to_owned();
    Some(Mount {
        mount_point: PathBuf::from(mount_point),
        fs_type,
        propagated,
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The bpffs mount `path` is on: the last-listed (topmost) mount whose mount
/// point is the longest prefix of `path`, when it is a bpffs.
fn containing_mount(mountinfo: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for m in mountinfo.lines().filter_map(parse_mountinfo_line) {
        let longer = best
            .as_ref()
            .is_none_or(|b| m.mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if path.starts_with(&m.mount_point) && longer {
            best = Some(m);
        }
    }
    best.filter(|m| m.fs_type == "bpf")
}

/// Takes an exclusive lock on the pin directory (flock on the directory itself),
/// held while the returned file is open: one agent per pin directory.
pub fn lock_pin_dir(dir: &Path) -> Result<std::fs::File, DataplaneError> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(dir)
        .map_err(|e| DataplaneError::Pin(format!("opening {}: {e}", dir.display())))?;
    // SAFETY: plain syscall on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(DataplaneError::Pin(format!(
            "another agent is running on {} (stop it first, or pass another --bpffs)",
            dir.display()
        )));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
23 27 0:22 / /sys rw,relatime shared:7 - sysfs sysfs rw
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw
50 23 0:40 / /sys/fs/bpf rw,relatime master:12 - bpf bpf rw
60 27 0:41 / /mnt/my\\040pins rw - bpf bpf rw
61 27 0:42 / /mnt/tmp rw shared:3 - tmpfs tmpfs rw
";

    #[test]
    fn the_topmost_longest_mount_wins() {
        let m = containing_mount(MOUNTINFO, Path::new("/sys/fs/bpf/agent/maps")).unwrap();
        assert_eq!(m.mount_point, Path::new("/sys/fs/bpf"));
        assert!(
            m.propagated,
            "the later, propagated mount covers the earlier one"
        );
    }

    #[test]
    fn private_and_escaped_mount_points() {
        let m = containing_mount(MOUNTINFO, Path::new("/mnt/my pins/agent")).unwrap();
        assert_eq!(m.mount_point, Path::new("/mnt/my pins"));
        assert!(!m.propagated);
        assert_eq!(containing_mount(MOUNTINFO, Path::new("/mnt/tmp/x")), None);
        assert_eq!(containing_mount(MOUNTINFO, Path::new("/sys/kernel")), None);
    }

    #[test]
    fn kernel_versions() {
        assert!(check_kernel_release("6.18.44-fc-v657").is_ok());
        assert!(check_kernel_release("6.6.0").is_ok());
        let old = check_kernel_release("6.1.0-27-amd64")
            .unwrap_err()
            .to_string();
        assert!(
            old.contains("6.1.0-27-amd64") && old.contains("6.6"),
            "{old}"
        );
        assert!(check_kernel_release("garbage").is_err());
    }

    #[test]
    fn a_namespace_of_its_own_is_short_lived() {
        let ns = |own: &str, parent: &str, init: Option<&str>, is_pid1| MountNamespace {
            own: Some(own.into()),
            parent: Some(parent.into()),
            init: init.map(Into::into),
            is_pid1,
        };
        assert!(ns("mnt:[1]", "mnt:[1]", None, false).is_long_lived());
        assert!(ns("mnt:[2]", "mnt:[9]", Some("mnt:[2]"), false).is_long_lived());
        // `ip netns exec`: the parent and PID 1 are in the host's namespace.
        assert!(!ns("mnt:[2]", "mnt:[1]", Some("mnt:[1]"), false).is_long_lived());
        // A container's entry point: its namespace ends with it.
        assert!(!ns("mnt:[2]", "mnt:[1]", Some("mnt:[2]"), true).is_long_lived());
    }
}

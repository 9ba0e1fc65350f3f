//! A handle on one network namespace of a lab, and running code inside it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::servers::Servers;

/// One network namespace created by a [`crate::Lab`] (the node, a pod or an
/// external client).
///
/// Cheap to clone. Every probe and server of the lab is a method here; [`crate::Pod`]
/// and [`crate::External`] dereference to their `Netns`, so `pod.tcp_connect(..)` works.
#[derive(Clone)]
pub struct Netns {
    name: String,
    path: PathBuf,
    pub(crate) servers: Arc<Servers>,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Netns").field(&self.name).finish()
    }
}

impl Netns {
    pub(crate) fn new(name: String, servers: Arc<Servers>) -> Netns {
        let path = Path::new(crate::NETNS_DIR).join(&name);
        Netns {
            name,
            path,
            servers,
        }
    }

    /// The global network namespace name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: open it and `setns(2)` to enter the namespace.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on a fresh thread that has entered this network namespace and returns
    /// its result (a panic in `f` is propagated).
    ///
    /// Sockets created inside stay in this namespace, so a listener or stream made
    /// here can be used from any thread afterwards. Threads spawned by `f` start in
    /// this namespace too. `/proc/sys/net/...` opened inside shows this namespace's
    /// sysctls.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        self.try_run(f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Netns::run`], but entering the namespace may fail with an error.
    pub fn try_run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> Result<T> {
        let path = &self.path;
        std::thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                enter(path)?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A command that runs `program` inside this namespace via `nsenter --net=PATH`.
    ///
    /// Only the network namespace changes (unlike `ip netns exec`, the mount namespace
    /// and so `/sys/fs/bpf` stay the caller's).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `ip ARGS` in this namespace (`args` split on whitespace) and returns its
    /// stdout; panics with stderr on failure. E.g. `pod.ip("-6 route")`,
    /// `lab.node().ip("route add blackhole 10.65.0.11/32")`.
    pub fn ip(&self, args: &str) -> String {
        self.try_ip(args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`Netns::ip`] with an error instead of a panic.
    pub fn try_ip(&self, args: &str) -> Result<String> {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args.split_whitespace());
        output(cmd).with_context(|| format!("in netns {}: ip {args}", self.name))
    }

    /// Runs `ip -batch -` in this namespace with `lines` (one `ip` command each,
    /// without the leading `ip`).
    pub(crate) fn ip_batch(&self, lines: &[String]) -> Result<()> {
        let mut child = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(["-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning ip")?;
        {
            let mut stdin = child.stdin.take().expect("piped stdin");
            stdin.write_all(lines.join("\n").as_bytes())?;
            stdin.write_all(b"\n")?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "in netns {}: ip -batch failed ({}): {}\ncommands:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                lines.join("\n")
            );
        }
        Ok(())
    }

    /// Writes sysctls of this namespace: `(key, value)` with keys like
    /// `net/ipv4/ip_forward` or `net.ipv4.ip_forward` (dots are not allowed in
    /// interface names used here).
    pub fn set_sysctls(&self, pairs: &[(&str, &str)]) {
        self.try_set_sysctls(pairs)
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub(crate) fn try_set_sysctls(&self, pairs: &[(&str, &str)]) -> Result<()> {
        self.try_run(|| -> Result<()> {
            for (key, value) in pairs {
                let path = sysctl_path(key);
                std::fs::write(&path, value)
                    .with_context(|| format!("in netns {}: writing {path}", self.name))?;
            }
            Ok(())
        })?
    }

    /// Reads one sysctl of this namespace (trimmed).
    pub fn sysctl(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.run(|| std::fs::read_to_string(&path))
            .unwrap_or_else(|e| panic!("in netns {}: reading {path}: {e}", self.name))
            .trim()
            .to_string()
    }

    /// The ifindex of interface `name` in this namespace; panics if there is none.
    pub fn ifindex(&self, name: &str) -> u32 {
        self.try_ifindex(name).unwrap_or_else(|e| panic!("{e:#}"))
    }

    pub(crate) fn try_ifindex(&self, name: &str) -> Result<u32> {
        self.try_run(|| nix::net::if_::if_nametoindex(name))?
            .with_context(|| format!("no interface {name} in netns {}", self.name))
    }
}

fn sysctl_path(key: &str) -> String {
    let key = key.trim_start_matches('/');
    let key = key.strip_prefix("proc/sys/").unwrap_or(key);
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns(CLONE_NEWNET) into {}", path.display()))?;
    Ok(())
}

/// Runs a command, returns stdout, fails with stderr.
pub(crate) fn output(mut cmd: Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

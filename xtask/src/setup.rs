//! `cargo xtask setup`: idempotent installation of everything the build and
//! the tests need on Debian 12. Each step checks first and installs only what
//! is missing.
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

use crate::workspace_root;

/// Debian packages: LLVM 22 for bpf-linker (must match the eBPF nightly's
/// LLVM), and the tools the labs, demo and benchmarks use.
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libclang-22-dev",
    "libpolly-22-dev",
    "build-essential",
    "iproute2",
    "iputils-ping",
    "util-linux",
    "iperf3",
    "nftables",
    // tests/tests/service_e2e.rs: kube-proxy's iptables mode (iptables-nft).
    "iptables",
    "bpftool",
    // The Kubernetes tests: ../shared/kube/start-apiserver.sh (etcd, certificates,
    // readiness); build-apiserver.sh installs its own build dependencies (Go).
    "etcd-server",
    "openssl",
    "curl",
    // tests/tests/console_e2e.rs: the web console in headless Chromium.
    "chromium",
];

const USER_TOOLCHAIN_COMPONENTS: &[&str] = &["clippy", "rustfmt"];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    debian_packages()?;
    user_toolchain()?;
    ebpf_toolchain()?;
    bpf_linker()
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// Reads `channel = "..."` from a rust-toolchain.toml of this repository.
fn pinned_channel(relative: &str) -> Result<String> {
    let path = workspace_root().join(relative);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .map(str::to_owned)
        .with_context(|| format!("{}: no channel line", path.display()))
}

fn installed_toolchains() -> Result<String> {
    let out = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup (install it from https://rustup.rs)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn has_component(toolchain: &str, component: &str) -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", toolchain])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(component))
        })
        .unwrap_or(false)
}

fn ensure_toolchain(channel: &str, components: &[&str]) -> Result<()> {
    let present = installed_toolchains()?
        .lines()
        .any(|l| l.starts_with(&format!("{channel}-")));
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !present || !has_component(channel, c))
        .collect();
    if present && missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Rust toolchain {channel}");
    let mut cmd = Command::new("rustup");
    cmd.args(["toolchain", "install", channel, "--profile", "minimal"]);
    for c in components {
        cmd.args(["--component", c]);
    }
    run_cmd(&mut cmd).with_context(|| {
        format!(
            "rustup could not install the pinned toolchain {channel} (download refused or \
             failed: see rustup's message above). The build needs it; install it by hand with \
             `rustup toolchain install {channel} --profile minimal{}` on a machine that can \
             download it, then run this again",
            components
                .iter()
                .map(|c| format!(" --component {c}"))
                .collect::<String>()
        )
    })
}

/// The userspace channel pinned in `toolchain.toml` (see that file for why it
/// is not a rust-toolchain.toml).
pub fn user_channel() -> Result<String> {
    pinned_channel("toolchain.toml")
}

fn user_toolchain() -> Result<()> {
    ensure_toolchain(&user_channel()?, USER_TOOLCHAIN_COMPONENTS)
}

/// The eBPF nightly pinned in `ebpf/rust-toolchain.toml`.
pub fn ebpf_channel() -> Result<String> {
    pinned_channel("ebpf/rust-toolchain.toml")
}

fn ebpf_toolchain() -> Result<()> {
    ensure_toolchain(&ebpf_channel()?, &["rust-src", "clippy"])
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker").arg("--version").output();
    if let Ok(out) = version {
        if String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION) {
            return Ok(());
        }
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes, once)"
    );
    run_cmd(
        crate::pinned_cargo()?
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

/// bpffs is not mounted on a fresh machine; the agent pins maps and links
/// there. Tests, the demo and benchmarks need it; building does not (a build
/// container cannot mount it).
pub fn bpffs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

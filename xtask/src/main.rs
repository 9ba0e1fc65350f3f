//! Project tasks: `cargo xtask setup | build | test | demo | lint | bench`.
//!
//! Every task that needs the toolchain runs `setup` first; `setup` checks
//! what is installed and only installs what is missing, so it is a fast no-op
//! on a prepared machine.
mod bench;
mod bench_traffic;
mod bpf_stats;
mod demo;
mod disk;
mod setup;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Build, test and demo tasks for the agent")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need (Debian packages, Rust toolchains, bpf-linker).
    Setup,
    /// Build the agent (with its eBPF programs) in release mode.
    Build,
    /// Run every check: formatting, clippy, and all tests (unit, BPF, namespace labs).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test-name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Only formatting and clippy.
    Lint,
    /// The walkthrough: a lab with three pods, real traffic, the agent enforcing.
    Demo,
    /// Benchmarks: ns per packet in the kernel programs against rule count
    /// (target/bench/dataplane.json), then the plot and tables of docs/benchmarks.md;
    /// with --traffic, real traffic through a lab node instead (target/bench/traffic.json).
    Bench {
        /// Fewer, shorter batches (a few minutes) and no compile-scale table.
        #[arg(long)]
        quick: bool,
        /// Only regenerate docs/benchmarks.md and its plot from the last run's JSON.
        #[arg(long)]
        report_only: bool,
        /// Real traffic instead: connections/s and Gbit/s through a lab node with no
        /// program, the agent and an nftables chain (target/bench/traffic.json).
        #[arg(long)]
        traffic: bool,
        /// With --traffic: the rule counts (default 10,1000,10000).
        #[arg(long, value_delimiter = ',', requires = "traffic")]
        rules: Vec<usize>,
        /// With --traffic: use target/release/{agent,loadgen} as they are (a build from
        /// inside `cargo xtask` sees other environment variables and may rebuild everything).
        #[arg(long, requires = "traffic")]
        no_build: bool,
        /// With --traffic: batches of 1 s per variant (default 11; more narrow a
        /// ratio's spread on a noisy machine, at ~8 s a batch per rule count).
        #[arg(long, requires = "traffic", conflicts_with = "quick")]
        batches: Option<usize>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build => {
            setup::run()?;
            cargo(&["build", "--release", "--bin", "agent"])
        }
        Task::Test { args } => {
            disk::require_room(&workspace_root().join("target"), disk::COLD_TEST_RUN)?;
            setup::run()?;
            require_ci_capabilities()?;
            setup::bpffs()?;
            lint()?;
            let mut cmd = vec!["test", "--workspace", "--exclude", "agent-ebpf"];
            cmd.extend(args.iter().map(String::as_str));
            cargo(&cmd)
        }
        Task::Lint => {
            setup::run()?;
            lint()
        }
        Task::Bench {
            quick,
            report_only,
            traffic,
            rules,
            no_build,
            batches,
        } => {
            if !report_only {
                setup::run()?;
                require_ci_capabilities()?;
                setup::bpffs()?;
            }
            if traffic {
                let rules = if rules.is_empty() {
                    bench_traffic::DEFAULT_RULES.to_vec()
                } else {
                    rules
                };
                bench_traffic::run(quick, report_only, no_build, &rules, batches)
            } else {
                bench::run(quick, report_only)
            }
        }
        Task::Demo => {
            setup::run()?;
            setup::bpffs()?;
            cargo(&["build", "--release", "--bin", "agent"])?;
            demo::run()
        }
    }
}

fn lint() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "agent-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // The kernel crate only builds for the BPF target, with its own nightly.
    cargo_on(
        &setup::ebpf_channel()?,
        &[
            "clippy",
            "--package",
            "agent-ebpf",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--release",
            "--",
            "-D",
            "warnings",
        ],
    )
}

/// The integration tests need root, BPF and network namespaces. They fail
/// loudly when those are missing; this says why up front.
fn require_ci_capabilities() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the tests load eBPF programs and create network namespaces: run them as root");
    }
    Ok(())
}

/// Runs cargo from the workspace root with the pinned userspace toolchain
/// (`toolchain.toml`), whatever toolchain `cargo xtask` itself started on.
pub fn cargo(args: &[&str]) -> Result<()> {
    cargo_on(&setup::user_channel()?, args)
}

/// Runs cargo from the workspace root on `channel`.
fn cargo_on(channel: &str, args: &[&str]) -> Result<()> {
    let status = Command::new("cargo")
        .env("RUSTUP_TOOLCHAIN", channel)
        .args(args)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `cargo` through rustup's proxy, on the pinned userspace toolchain.
pub fn pinned_cargo() -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.env("RUSTUP_TOOLCHAIN", setup::user_channel()?);
    Ok(cmd)
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

//! Builds the eBPF programs (crate `agent-ebpf`) for the BPF target with the
//! nightly pinned in ebpf/rust-toolchain.toml, so a plain `cargo build` of the
//! agent produces the object it embeds. `AYA_BUILD_SKIP=1` skips it (clippy/doc).
//!
//! Also compiles the relay's gRPC API (proto/agent/flows/v1/flows.proto) with
//! protox, a proto compiler in Rust: no system `protoc` is needed.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    compile_proto()?;
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../ebpf");
    let pin = format!("{ebpf_dir}/rust-toolchain.toml");
    println!("cargo::rerun-if-changed={pin}");
    let text = std::fs::read_to_string(&pin).with_context(|| format!("reading {pin}"))?;
    let channel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel"))
        .and_then(|rest| rest.split('"').nth(1))
        .ok_or_else(|| anyhow!("{pin}: no `channel = \"...\"` line"))?
        .to_owned();
    println!("cargo::rerun-if-changed={manifest_dir}/../common/src");
    // aya-build replays the nested cargo's stderr as `cargo::warning` lines,
    // so its "Compiling ..." progress would show as ~40 warnings on every
    // build. Quiet it: compiler diagnostics still come through (on stdout, as
    // JSON), and so do errors.
    std::env::set_var("CARGO_TERM_QUIET", "true");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "agent-ebpf",
            root_dir: &ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&channel),
    )
}

/// The relay's API: prost messages and tonic client and server.
fn compile_proto() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = format!("{manifest_dir}/../proto");
    let file = format!("{root}/agent/flows/v1/flows.proto");
    println!("cargo::rerun-if-changed={file}");
    let descriptors = protox::compile([&file], [&root]).map_err(|e| anyhow!("{e}"))?;
    tonic_prost_build::configure()
        .compile_fds(descriptors)
        .with_context(|| format!("generating code for {file}"))
}

//! The kernel side: the eBPF object built by `build.rs`, loading it, attaching
//! its TC programs to interfaces, and reading its maps and ring buffer.
//!
//! - `loader`: the policy dataplane (`Dataplane`): programs `from_endpoint` /
//!   `to_endpoint`, double-buffered tables, counters.
//! - `programs`: the programs, the hook each endpoint program runs on, and
//!   their load through the verifier.
//! - `pins`: what outlives the agent in bpffs (maps, links) and its cleanup.
//! - `reuse`: programs an earlier agent verified, taken again on a restart.
//! - `conntrack`: the conntrack map and its sweep of idle entries.
//! - `events`: flow events from the ring buffer.
//! - `host`: what the host must provide (kernel version, a bpffs that outlives
//!   the agent), checked before anything is loaded.
//! - `tables`: what the compiler produces (`TableSet`) and its encoding.
//! - `exact`: the peer and rule tables split between an exact-match hash and an LPM trie.
//! - `service`: Service frontends and the post-DNAT program on data interfaces.
pub mod conntrack;
pub mod events;
pub mod exact;
pub mod host;
pub mod loader;
mod map_batch;
pub mod pins;
mod programs;
pub mod reuse;
pub mod service;
pub mod tables;
pub mod upgrade;

pub use loader::{
    delete_if_idle, monotonic_coarse_ns, pinned_conntrack, sweep_conntrack, Counters, CtSweep,
    Dataplane, FlowRecord, Hook, Links, Swept,
};
pub use tables::{
    port_range_prefixes, GroupEntry, PeerMatch, PortMatch, RuleEntry, SourcePortEntry, Table,
    TableSet,
};

/// The eBPF object, compiled from `ebpf/` for the BPF target at build time.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Bench-only programs (`floor`, `linear_scan`; `ebpf/src/bench.rs`), for `cargo xtask bench`.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf-bench"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("eBPF object has no {what} named {name}")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("policy tables: {0}")]
    Table(#[from] tables::TableError),
    #[error("host: {0}")]
    Host(String),
    #[error("pinning: {0}")]
    Pin(String),
    #[error("interface {0:?} not found")]
    NoInterface(String),
    #[error("conntrack sweep: {0}")]
    Sweep(#[source] std::io::Error),
}

//! The agent: from policy resources to verdicts in the kernel.
//!
//! Stages, in the order data flows through them:
//! - [`selector`]: Calico's label-selector language (parse, evaluate, print).
//! - [`model`]: typed YAML resources, validation, and the normalised [`model::ir::Model`].
//! - [`eval`]: the reference evaluator, the semantics in plain Rust (the oracle).
//! - [`compile`]: policies x endpoints -> peer classes and decision tables (BPF map contents).
//! - [`dataplane`]: BPF programs and maps, loading and attaching.
//! - [`console`]: the web console (flows, staged report, matrix) over a data source.
//! - [`relay`]: every node's flow records in one place (`agent relay`).
//! - [`cli`]: the command line.
pub mod cli;
pub mod compile;
pub mod console;
pub mod cpus;
pub mod daemon;
pub mod dataplane;
pub mod datastore;
pub mod eval;
pub mod flows;
pub mod lockout;
pub mod model;
pub mod relay;
pub mod rollout;
pub mod selector;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;

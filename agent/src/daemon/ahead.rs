//! The agent's first compile, done while the kernel verifies the programs.
//!
//! Verifying the programs and loading plus compiling the policy are the
//! longest steps of a start, and independent: the compile needs only the
//! endpoint ids an earlier agent pinned, which are read from bpffs without
//! loading anything. So the first load's task compiles too, and hands its
//! compiler to the first reload: when that reload compiles the same model
//! with the same ids (the usual case), the compile made ahead is its result;
//! otherwise it compiles incrementally from that compile's cache (the keys
//! include the ids, so an id that turned out different is compiled again:
//! the result is the same either way). Nothing is installed before that
//! reload.
use std::path::Path;
use std::time::{Duration, Instant};

use super::source::Load;
use super::stable_ids::StableIds;
use crate::compile::{Compiler, Limits};
use crate::model::ir::Failsafes;

/// A compiler holding the first load's compiled entries.
pub(super) struct FirstCompile {
    pub(super) compiler: Compiler,
    pub(super) took: Duration,
}

/// Compiles `load` as the first reload will (with `failsafes`, which that
/// reload sets on the model too). `None` when the compile fails: the reload
/// then compiles from scratch and reports the error as it always does.
pub(super) fn compile_first_load(
    load: &mut Load,
    bpffs: &Path,
    failsafes: &Failsafes,
) -> Option<FirstCompile> {
    let started = Instant::now();
    let model = &mut load.loaded.model;
    model.failsafes = failsafes.clone();
    let ids = StableIds::first_compile(bpffs, model);
    let mut compiler = Compiler::new();
    match compiler.compile_ahead(model, &Limits::default(), &ids) {
        Ok(()) => Some(FirstCompile {
            compiler,
            took: started.elapsed(),
        }),
        Err(e) => {
            tracing::debug!(error = %e, "compile ahead of the programs failed; the first reload compiles");
            None
        }
    }
}

//! Endpoint ids that stay the same across compiles and restarts: the daemon's
//! side of [`EndpointIds`] (why they must be stable: see there). The compiler
//! keeps the ids it is given; this keeps the installed ones between reloads and
//! seeds them, after a restart, from the pinned `ENDPOINTS` map.
use std::path::Path;

use agent_common::EndpointInfo;

use super::interfaces::if_index;
use crate::compile::{CompiledEndpoint, EndpointIds};
use crate::dataplane::Dataplane;
use crate::model::ir::Model;

/// The ids of the installed endpoints (and the next one never handed out).
#[derive(Default)]
pub(super) struct StableIds {
    ids: EndpointIds,
}

impl StableIds {
    /// The ids to compile `model` with: those installed last, or, on the first
    /// compile after adopting pinned state, the ids the endpoints' interfaces
    /// have in the pinned ENDPOINTS map.
    pub(super) fn for_compile(&mut self, dp: &Dataplane, model: &Model) -> EndpointIds {
        if self.ids.is_empty() && dp.adopted() {
            self.seed(model, |idx| dp.endpoint(idx));
        }
        self.ids.clone()
    }

    /// The ids [`Self::for_compile`] gives on an agent's first compile, read
    /// before the dataplane is loaded: from the ENDPOINTS map an earlier agent
    /// pinned under `bpffs`, if any.
    pub(super) fn first_compile(bpffs: &Path, model: &Model) -> EndpointIds {
        let mut this = Self::default();
        if let Some(pinned) = crate::dataplane::pins::pinned_endpoints(bpffs) {
            this.seed(model, |idx| pinned.get(&idx).copied());
        }
        this.ids
    }

    fn seed(&mut self, model: &Model, pinned: impl Fn(u32) -> Option<EndpointInfo>) {
        for e in &model.endpoints {
            let Some(interface) = &e.interface else {
                continue;
            };
            let idx = if_index(interface);
            if let Some(info) = pinned(idx).filter(|_| idx != 0) {
                self.ids.seed(e.key(), interface.clone(), info.id);
            }
        }
    }

    /// Records the ids of the installed `endpoints` (of `model`), frozen ones
    /// included.
    pub(super) fn installed(&mut self, model: &Model, endpoints: &[CompiledEndpoint]) {
        self.ids = self.ids.after(model, endpoints);
    }
}

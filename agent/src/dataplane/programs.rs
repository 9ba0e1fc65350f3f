//! The programs of the object: the hooks they run on ([`Hook`]) and their
//! load through the kernel's verifier.
use aya::{
    programs::{tc::TcAttachType, SchedClassifier},
    Ebpf,
};

use super::loader::missing;
use super::DataplaneError;
use crate::model::ir::Direction;

/// The programs the agent loads: the two endpoint hooks' and the post-NAT one.
pub(super) const PROGRAMS: [&str; 3] = [
    Hook::FromEndpoint.program_name(),
    Hook::ToEndpoint.program_name(),
    super::service::POST_NAT,
];

/// The two programs, by the hook of the endpoint interface's host side they run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// TC ingress: what the endpoint sends (its egress policy).
    FromEndpoint,
    /// TC egress: what the endpoint receives (its ingress policy).
    ToEndpoint,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::FromEndpoint, Hook::ToEndpoint];

    pub const fn program_name(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from_endpoint",
            Hook::ToEndpoint => "to_endpoint",
        }
    }

    pub fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromEndpoint => TcAttachType::Ingress,
            Hook::ToEndpoint => TcAttachType::Egress,
        }
    }

    /// The endpoint policy direction this hook enforces. On a host endpoint's
    /// interface (the host's own) the hooks judge the opposite directions of a
    /// workload's host-side veth: TC ingress carries traffic into the host.
    pub fn direction(self, host_endpoint: bool) -> Direction {
        match (self, host_endpoint) {
            (Hook::FromEndpoint, false) | (Hook::ToEndpoint, true) => Direction::Egress,
            (Hook::ToEndpoint, false) | (Hook::FromEndpoint, true) => Direction::Ingress,
        }
    }

    /// The hook whose packets `direction`'s policy judges.
    pub fn judging(direction: Direction, host_endpoint: bool) -> Hook {
        if Hook::FromEndpoint.direction(host_endpoint) == direction {
            Hook::FromEndpoint
        } else {
            Hook::ToEndpoint
        }
    }

    /// The short name used in link pin file names (`if<ifindex>_<short>`).
    pub fn short(self) -> &'static str {
        match self {
            Hook::FromEndpoint => "from",
            Hook::ToEndpoint => "to",
        }
    }
}

/// Loads `from_endpoint`, `to_endpoint` and the post-NAT program through
/// the kernel's verifier, the longest step of an agent's start (~0.4 s of
/// CPU for each hook's program on the 2-core VM of docs/benchmarks.md,
/// "Start to enforced"; 1.6 s before their parse and policy paths were
/// verified apart). One after the other: loading them on threads of their
/// own was measured slower there (3.0 to 4.0 s against 2.2 to 2.7 s to a
/// started agent, alternating runs), the verifications competing for the
/// same cores and caches.
pub(super) fn load_programs(ebpf: &mut Ebpf) -> Result<(), DataplaneError> {
    for name in PROGRAMS {
        let started = std::time::Instant::now();
        let program: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(missing("program", name))?
            .try_into()
            .map_err(|source| DataplaneError::Program { name, source })?;
        program
            .load()
            .map_err(|source| DataplaneError::Program { name, source })?;
        // The verifier's work (instructions it processed; the kernel
        // counts them since 5.16), for docs/benchmarks.md "Start to
        // enforced": a change in `ebpf/` that multiplies it shows here.
        let verified_insns = program
            .info()
            .ok()
            .and_then(|info| info.verified_instruction_count());
        tracing::debug!(
            name,
            ms = ?started.elapsed(),
            verified_insns,
            "program verified and loaded"
        );
    }
    Ok(())
}

//! The programs the agent loads, and the hook of an endpoint's interface each
//! endpoint program runs on.
use aya::programs::tc::TcAttachType;

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

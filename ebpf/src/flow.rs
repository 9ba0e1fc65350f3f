//! One side of a flow being judged: who initiated it and who responds, with
//! which ports, at which endpoint, with which tables and clock.
use agent_common::{active_flags, ActiveTables, CtSide, EndpointInfo};

use crate::parse::Parsed;

/// The endpoint a packet is judged for, and the tables and time it is judged
/// with (`ACTIVE` is read once per packet).
pub struct Judging<'a> {
    /// The endpoint's interface (for the flow event).
    pub ifindex: u32,
    pub endpoint: &'a EndpointInfo,
    pub active: ActiveTables,
    /// `coarse_now()`.
    pub now: u64,
}

impl Judging<'_> {
    /// Whether judged flows get conntrack entries (not under `NO_CT_INSERT`).
    #[inline(always)]
    pub fn inserts(&self) -> bool {
        self.active.flags & active_flags::NO_CT_INSERT == 0
    }
}

/// The frontend (ClusterIP or external IP, and port) a client addressed.
#[derive(Clone, Copy)]
pub struct Frontend {
    pub addr: [u8; 16],
    pub port: u16,
}

/// A flow side to judge, in the flow's orientation (initiator -> responder),
/// whichever way the packet at hand goes.
pub struct Flow<'a> {
    pub init: &'a [u8; 16],
    /// The responder; for a flow to a Service frontend, the backend.
    pub resp: &'a [u8; 16],
    /// The initiator's source port (what source-port classes see).
    pub init_port: u16,
    /// The responder's port (ICMP: type << 8 | code) the tables are keyed by.
    pub judged_port: u16,
    pub pkt: &'a Parsed,
    pub at: &'a Judging<'a>,
    pub side: CtSide,
    /// The Service frontend the client addressed, when `resp` is its backend.
    pub frontend: Option<Frontend>,
}

impl<'a> Flow<'a> {
    /// The flow `pkt` opens: its source is the initiator.
    #[inline(always)]
    pub fn opened_by(pkt: &'a Parsed, at: &'a Judging<'a>, side: CtSide) -> Self {
        Flow {
            init: &pkt.src,
            resp: &pkt.dst,
            init_port: pkt.ct_sport,
            judged_port: pkt.judge_port,
            pkt,
            at,
            side,
            frontend: None,
        }
    }
}

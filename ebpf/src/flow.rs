//! One side of a flow being judged: who initiated it and who responds, with
//! which ports, at which endpoint, with which tables and clock.
use agent_common::{active_flags, ActiveTables, CtSide, EndpointInfo};

use crate::parse::Parsed;

/// The endpoint a packet is judged for, and the tables and time it is judged
/// with (`ACTIVE` is read once per packet). Plain values: part of [`Flow`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Judging {
    /// The endpoint's interface (for the flow event).
    pub ifindex: u32,
    pub endpoint: EndpointInfo,
    pub active: ActiveTables,
    /// `coarse_now()`.
    pub now: u64,
}

impl Judging {
    /// Whether judged flows get conntrack entries (not under `NO_CT_INSERT`).
    #[inline(always)]
    pub fn inserts(&self) -> bool {
        self.active.flags & active_flags::NO_CT_INSERT == 0
    }
}

/// A flow side to judge, in the flow's orientation (initiator -> responder),
/// whichever way the packet at hand goes.
///
/// Flat, without references: it is what the BTF global function
/// `policy::judge_flow` is given, and the verifier checks a global function's
/// pointer argument as plain memory of its type's size (a reference inside
/// would be an unknown number there).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow {
    pub init: [u8; 16],
    /// The responder; for a flow to a Service frontend, the backend.
    pub resp: [u8; 16],
    /// The Service frontend the client addressed, when `resp` is its backend
    /// (`has_frontend`).
    pub frontend: [u8; 16],
    /// The endpoint judged, the tables and the time.
    pub at: Judging,
    /// The initiator's source port (what source-port classes see).
    pub init_port: u16,
    /// The responder's port (ICMP: type << 8 | code) the tables are keyed by.
    pub judged_port: u16,
    pub frontend_port: u16,
    /// Of the packet: its protocol, IP version, and whether it is a fragment.
    pub protocol: u8,
    pub ip_version: u8,
    pub fragment: u8,
    /// The side judged: the sender (1) or the receiver (0).
    pub sender: u8,
    pub has_frontend: u8,
    /// This side was reported before (a re-judgement): no event.
    pub already_reported: u8,
}

impl Flow {
    /// Makes this the flow side `side` of `pkt`'s flow, in the flow's
    /// orientation `init` -> `resp` with those ports, judged `at`. Field by
    /// field, in place (the value lives in a map: a whole `Flow` built first
    /// would take its size on the stack).
    #[inline(always)]
    pub fn fill(
        &mut self,
        pkt: &Parsed,
        at: &Judging,
        side: CtSide,
        (init, init_port): (&[u8; 16], u16),
        (resp, judged_port): (&[u8; 16], u16),
    ) {
        self.init = *init;
        self.resp = *resp;
        self.frontend = [0; 16];
        self.at = *at;
        self.init_port = init_port;
        self.judged_port = judged_port;
        self.frontend_port = 0;
        self.protocol = pkt.protocol;
        self.ip_version = pkt.ip_version;
        self.fragment = u8::from(pkt.fragment);
        self.sender = u8::from(side.is_sender());
        self.has_frontend = 0;
        self.already_reported = 0;
    }

    /// [`Self::fill`] with the flow `pkt` opens: its source is the initiator.
    #[inline(always)]
    pub fn fill_opened_by(&mut self, pkt: &Parsed, at: &Judging, side: CtSide) {
        self.fill(
            pkt,
            at,
            side,
            (&pkt.src, pkt.ct_sport),
            (&pkt.dst, pkt.judge_port),
        );
    }

    /// The client addressed Service frontend `addr`:`port`; `resp` is its backend.
    #[inline(always)]
    pub fn via_frontend(&mut self, addr: [u8; 16], port: u16) {
        self.frontend = addr;
        self.frontend_port = port;
        self.has_frontend = 1;
    }

    /// The side judged.
    #[inline(always)]
    pub fn side(&self) -> CtSide {
        CtSide::of(self.sender != 0)
    }
}

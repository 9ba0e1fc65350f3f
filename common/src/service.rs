//! Service flows: the deferral mark, the tail-call slots and the maps
//! `DEFERRED` and `SERVICE_FLOWS`.

use crate::EndpointInfo;

/// Bit of `skb->mark` that `from_endpoint` sets on a packet whose verdict it
/// deferred to the post-DNAT hook (a `DEFERRED` entry exists for it); that hook
/// clears it. Other packets never pay a map lookup at the post-DNAT hooks.
/// Outside kube-proxy's (0x4000, 0x8000) and Calico's default (0xffff0000) bits.
pub const SERVICE_DEFER_MARK: u32 = 0x0020_0000;

/// Slots of `SERVICE_PROGS` (tail calls, filled by the agent after loading).
/// A pod's `to_endpoint` hands a deferred packet to `post_nat` (its own verifier
/// budget and stack), which judges the client's egress and hands it back to
/// `to_endpoint` (mark cleared) for the backend's ingress.
pub mod service_prog {
    pub const POST_NAT: u32 = 0;
    pub const TO_ENDPOINT: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Key of `DEFERRED`: a new flow from a pod to a Service frontend, by what
/// survives kube-proxy's DNAT: protocol, client address and source port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeferKey {
    pub addr: [u8; 16],
    /// Conntrack source port (host order).
    pub port: u16,
    pub protocol: u8,
    pub _pad: u8,
}

/// Value of `DEFERRED`: the frontend the client addressed, and the client
/// endpoint whose egress policy the post-DNAT hook judges.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DeferValue {
    pub frontend: [u8; 16],
    /// Frontend port (host order).
    pub frontend_port: u16,
    pub _pad: [u8; 2],
    /// The client's host-side interface (for the flow event).
    pub ifindex: u32,
    pub endpoint: EndpointInfo,
}

/// Value of `SERVICE_FLOWS` (keyed by the client->frontend conntrack key): the
/// backend the node's DNAT chose, so that a stale client->frontend entry is
/// re-judged against it at whichever of the client's hooks sees it first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ServiceFlow {
    pub backend: [u8; 16],
    /// Backend port (host order).
    pub backend_port: u16,
    pub _pad: [u8; 6],
}

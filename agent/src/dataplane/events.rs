//! Flow events: the records the programs write to the `FLOW_EVENTS` ring
//! buffer, read as [`FlowRecord`]s.
use std::net::{IpAddr, Ipv6Addr};

use agent_common::{event_flags, FlowEvent, Verdict};

use super::loader::Dataplane;
use super::tables::direction_code;
use crate::model::ir::Direction;

/// A flow reported by the kernel (new flow on an endpoint with staged policy, or a
/// denied new flow).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    /// Destination port; for ICMP `type << 8 | code`.
    pub dst_port: u16,
    pub protocol: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    pub direction: Direction,
    pub enforced: Verdict,
    /// The pending (staged) verdict, when the endpoint has staged policy.
    pub pending: Option<Verdict>,
    pub fragment: bool,
    pub timestamp_ns: u64,
    /// The Service frontend (address, port) the client addressed, when the
    /// flow was judged after DNAT (`dst` is then the backend).
    pub service: Option<(IpAddr, u16)>,
}

impl From<&FlowEvent> for FlowRecord {
    fn from(e: &FlowEvent) -> Self {
        let ip = |b: [u8; 16]| {
            let v6 = Ipv6Addr::from(b);
            match (e.ip_version, v6.to_ipv4_mapped()) {
                (4, Some(v4)) => IpAddr::V4(v4),
                _ => IpAddr::V6(v6),
            }
        };
        FlowRecord {
            src: ip(e.src),
            dst: ip(e.dst),
            src_port: e.src_port,
            dst_port: e.dst_port,
            protocol: e.protocol,
            ifindex: e.ifindex,
            endpoint_id: e.endpoint_id,
            direction: if e.direction == direction_code(Direction::Egress) {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            enforced: e.enforced,
            pending: (e.flags & event_flags::HAS_PENDING != 0).then_some(e.pending),
            fragment: e.flags & event_flags::FRAGMENT != 0,
            timestamp_ns: e.timestamp_ns,
            service: (e.flags & event_flags::SERVICE != 0).then(|| (ip(e.service), e.service_port)),
        }
    }
}

impl Dataplane {
    /// Flow events waiting on the ring buffer (non-blocking).
    pub fn drain_events(&mut self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            // Older programs (still attached during an upgrade) write the
            // shorter record without the Service fields: read what is there.
            if item.len() >= FlowEvent::V1_SIZE {
                // SAFETY: FlowEvent is plain old data (integers and byte
                // arrays): all zeroes is a valid value.
                let mut event: FlowEvent = unsafe { std::mem::zeroed() };
                let n = item.len().min(std::mem::size_of::<FlowEvent>());
                // SAFETY: FlowEvent is plain old data; at most its size is copied.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        item.as_ptr(),
                        (&mut event as *mut FlowEvent).cast::<u8>(),
                        n,
                    )
                };
                if n < std::mem::size_of::<FlowEvent>() {
                    event.flags &= !event_flags::SERVICE;
                }
                out.push(FlowRecord::from(&event));
            }
        }
        out
    }
}

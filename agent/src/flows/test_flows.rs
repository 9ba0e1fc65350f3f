//! Flow records for the flows tests: one builder, with the fields a test does
//! not look at filled in.
use super::{rfc3339, Flow, FlowVerdict, Peer, Reporter};

/// A TCP ingress flow from `src` to `dst` that policy gave `action` (no trace),
/// seen once from `first_ns` to `last_ns`, reported by endpoint `x` (id 1).
pub fn tcp_flow(src: Peer, dst: Peer, action: &str, first_ns: u64, last_ns: u64) -> Flow {
    Flow {
        time: rfc3339(last_ns),
        first_seen: rfc3339(first_ns),
        first_seen_ns: first_ns,
        last_seen_ns: last_ns,
        count: 1,
        src,
        dst,
        protocol: "TCP".into(),
        protocol_number: 6,
        icmp: None,
        reporter: Reporter {
            endpoint: "x".into(),
            interface: "y".into(),
            endpoint_id: 1,
        },
        direction: "ingress".into(),
        enforced: FlowVerdict {
            action: action.into(),
            trace: String::new(),
            no_entry: false,
        },
        pending: None,
        pending_differs: false,
        connection: None,
        changed_by: Vec::new(),
        fragment: false,
        service: None,
        node: None,
    }
}

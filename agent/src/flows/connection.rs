//! Connections, not hooks: a connection's verdict is its source's egress and
//! its destination's ingress together. The kernel reports each hook on its
//! own; the records of one 5-tuple are joined here, so a connection denied
//! today at one end does not "differ" because the other end's staged policy
//! would deny it too.
//!
//! What this node's agent sees: both hooks when both ends are its endpoints.
//! A hook it has no record of allowed under both sets (the kernel reports
//! every denied flow and every flow of an endpoint with staged policy), or is
//! on another node (judged by that node's agent).
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Flow;

/// The 5-tuple every hook of a connection reports.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
}

/// The connection's verdict, end to end, under each set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionVerdict {
    /// `allow` when every hook recorded for it allows.
    pub enforced: String,
    pub pending: String,
    /// Hooks (records) it was judged from: 1 or 2.
    pub hooks: usize,
}

fn text(allow: bool) -> String {
    if allow { "allow" } else { "deny" }.into()
}

/// Joins the hook records of one connection: each gets the connection's
/// verdict, and `pending_differs` from it.
pub fn join(hooks: &mut [Flow]) {
    let allows = |f: &Flow| f.enforced.action == "allow";
    let pending_allows = |f: &Flow| {
        f.pending
            .as_ref()
            .map_or(allows(f), |p| p.action == "allow")
    };
    let enforced = hooks.iter().all(allows);
    let pending = hooks.iter().all(pending_allows);
    let verdict = ConnectionVerdict {
        enforced: text(enforced),
        pending: text(pending),
        hooks: hooks.len(),
    };
    for f in hooks {
        f.pending_differs = enforced != pending;
        f.connection = Some(verdict.clone());
    }
}

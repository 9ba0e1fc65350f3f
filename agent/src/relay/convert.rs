//! [`crate::flows`] types to and from the relay's wire format ([`proto`]).
use std::net::IpAddr;

use super::proto;
use crate::flows::connection::ConnectionVerdict;
use crate::flows::report::{Change, PolicyReport, StagedReport, Window};
use crate::flows::{Flow, FlowFilter, FlowQuery, FlowVerdict, Peer, Reporter};
use crate::model::ir::Labels;

/// A node's record on the wire; `labels` gives the owner's labels of an address.
pub fn to_record(flow: &Flow, node: &str, labels: &dyn Fn(IpAddr) -> Labels) -> proto::FlowRecord {
    let peer = |p: &Peer| proto::Peer {
        ip: p.ip.to_string(),
        port: p.port.into(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        // The record's own labels; older records carry none: the view's.
        labels: if p.labels.is_empty() {
            labels(p.ip)
        } else {
            p.labels.clone()
        }
        .into_iter()
        .collect(),
    };
    let verdict = |v: &FlowVerdict| proto::Verdict {
        action: v.action.clone(),
        trace: v.trace.clone(),
        no_entry: v.no_entry,
    };
    proto::FlowRecord {
        node: node.to_string(),
        time: flow.time.clone(),
        first_seen: flow.first_seen.clone(),
        first_seen_ns: flow.first_seen_ns,
        last_seen_ns: flow.last_seen_ns,
        count: flow.count,
        src: Some(peer(&flow.src)),
        dst: Some(peer(&flow.dst)),
        protocol: flow.protocol.clone(),
        protocol_number: flow.protocol_number.into(),
        icmp: flow.icmp.map(|(t, c)| proto::Icmp {
            r#type: t.into(),
            code: c.into(),
        }),
        reporter: Some(proto::Reporter {
            endpoint: flow.reporter.endpoint.clone(),
            interface: flow.reporter.interface.clone(),
            endpoint_id: flow.reporter.endpoint_id,
        }),
        direction: flow.direction.clone(),
        enforced: Some(verdict(&flow.enforced)),
        pending: flow.pending.as_ref().map(verdict),
        pending_differs: flow.pending_differs,
        connection: flow.connection.as_ref().map(|c| proto::ConnectionVerdict {
            enforced: c.enforced.clone(),
            pending: c.pending.clone(),
            hooks: c.hooks as u32,
        }),
        changed_by: flow.changed_by.clone(),
        fragment: flow.fragment,
        service: flow.service.as_ref().map(peer),
    }
}

/// A record from the wire, with its node; an error names the bad field.
pub fn from_record(r: proto::FlowRecord) -> Result<Flow, String> {
    let peer = |p: Option<proto::Peer>, field: &str| -> Result<Peer, String> {
        let p = p.ok_or_else(|| format!("record without {field}"))?;
        Ok(Peer {
            ip: p
                .ip
                .parse()
                .map_err(|_| format!("{field}.ip {:?} is not an IP address", p.ip))?,
            port: narrow(p.port, &format!("{field}.port"))?,
            namespace: p.namespace,
            name: p.name,
            labels: p.labels.into_iter().collect(),
        })
    };
    let verdict = |v: proto::Verdict| FlowVerdict {
        action: v.action,
        trace: v.trace,
        no_entry: v.no_entry,
    };
    let reporter = r.reporter.ok_or("record without reporter")?;
    Ok(Flow {
        time: r.time,
        first_seen: r.first_seen,
        first_seen_ns: r.first_seen_ns,
        last_seen_ns: r.last_seen_ns,
        count: r.count,
        src: peer(r.src, "src")?,
        dst: peer(r.dst, "dst")?,
        protocol: r.protocol,
        protocol_number: narrow(r.protocol_number, "protocol_number")?,
        icmp: match r.icmp {
            Some(i) => Some((narrow(i.r#type, "icmp.type")?, narrow(i.code, "icmp.code")?)),
            None => None,
        },
        reporter: Reporter {
            endpoint: reporter.endpoint,
            interface: reporter.interface,
            endpoint_id: reporter.endpoint_id,
        },
        direction: r.direction,
        enforced: verdict(r.enforced.ok_or("record without enforced verdict")?),
        pending: r.pending.map(verdict),
        pending_differs: r.pending_differs,
        connection: r.connection.map(|c| ConnectionVerdict {
            enforced: c.enforced,
            pending: c.pending,
            hooks: c.hooks as usize,
        }),
        changed_by: r.changed_by,
        fragment: r.fragment,
        service: r.service.map(|s| peer(Some(s), "service")).transpose()?,
        node: (!r.node.is_empty()).then_some(r.node),
    })
}

fn narrow<T: TryFrom<u32>>(v: u32, field: &str) -> Result<T, String> {
    T::try_from(v).map_err(|_| format!("{field} {v} is out of range"))
}

/// `agent flows` options as a relay query; `node` empty: every node.
pub fn to_flows_request(q: &FlowQuery, node: &str) -> proto::FlowsRequest {
    let f = &q.filter;
    proto::FlowsRequest {
        follow: q.follow,
        last: q.last.map(|n| n as u64),
        since_ms: q.since_ms,
        verdict: f.verdict.clone(),
        pending_diff: f.pending_diff,
        staged: f.staged.clone(),
        policy: f.policy.clone(),
        from: f.from.clone(),
        to: f.to.clone(),
        port: f.port.map(u32::from),
        protocol: f.protocol.clone(),
        node: node.to_string(),
    }
}

/// A relay query as the node's [`FlowQuery`], and the node asked for.
pub fn from_flows_request(r: proto::FlowsRequest) -> Result<(FlowQuery, Option<String>), String> {
    let query = FlowQuery {
        follow: r.follow,
        last: r.last.map(|n| n as usize),
        since_ms: r.since_ms,
        filter: FlowFilter {
            verdict: r.verdict,
            pending_diff: r.pending_diff,
            staged: r.staged,
            policy: r.policy,
            from: r.from,
            to: r.to,
            port: r.port.map(|p| narrow(p, "port")).transpose()?,
            protocol: r.protocol,
        },
    };
    Ok((query, (!r.node.is_empty()).then_some(r.node)))
}

pub fn to_report(r: &StagedReport) -> proto::StagedReportReply {
    let change = |c: &Change| proto::Change {
        from: c.from.clone(),
        to: c.to.clone(),
        protocol: c.protocol.clone(),
        port: c.port.clone(),
        count: c.count,
        first_seen: c.first_seen.clone(),
        last_seen: c.last_seen.clone(),
        nodes: c.nodes.clone(),
    };
    let w = &r.window;
    proto::StagedReportReply {
        window: Some(proto::Window {
            source: w.source.clone(),
            from: w.from.clone(),
            to: w.to.clone(),
            requested_ms: w.requested_ms,
            covered_ms: w.covered_ms,
            notes: w.notes.clone(),
        }),
        policies: r
            .policies
            .iter()
            .map(|p| proto::PolicyReport {
                policy: p.policy.clone(),
                selects: p.selects.clone(),
                selected_with_traffic: p.selected_with_traffic.map(|n| n as u64),
                newly_denied: p.newly_denied.iter().map(change).collect(),
                newly_allowed: p.newly_allowed.iter().map(change).collect(),
            })
            .collect(),
    }
}

pub fn from_report(r: proto::StagedReportReply) -> StagedReport {
    let change = |c: proto::Change| Change {
        from: c.from,
        to: c.to,
        protocol: c.protocol,
        port: c.port,
        count: c.count,
        first_seen: c.first_seen,
        last_seen: c.last_seen,
        nodes: c.nodes,
    };
    let w = r.window.unwrap_or_default();
    StagedReport {
        window: Window {
            source: w.source,
            from: w.from,
            to: w.to,
            requested_ms: w.requested_ms,
            covered_ms: w.covered_ms,
            notes: w.notes,
        },
        policies: r
            .policies
            .into_iter()
            .map(|p| PolicyReport {
                policy: p.policy,
                selects: p.selects,
                selected_with_traffic: p.selected_with_traffic.map(|n| n as usize),
                newly_denied: p.newly_denied.into_iter().map(change).collect(),
                newly_allowed: p.newly_allowed.into_iter().map(change).collect(),
            })
            .collect(),
    }
}

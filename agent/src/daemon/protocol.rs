//! The Unix-socket protocol between `agent run` and its clients.
//!
//! A client connects, sends ONE request as a JSON line, and reads JSON lines
//! until the server closes (or, for a followed flow stream, until it hangs up):
//! - `{"type":"status"}` -> one [`Status`] line.
//! - `{"type":"flows", "follow":bool, "last":N?, "since_ms":MS?, "filter":{..}}`
//!   (a [`crate::flows::FlowQuery`]) -> [`crate::flows::Flow`] lines: the
//!   matching history (the last N, or those seen in the last MS ms; with neither
//!   and no follow, the last 20), then with `follow` every new or updated flow.
//! - `{"type":"staged_report", "staged":[KIND/NAME..], "since_ms":MS?}` (a
//!   [`crate::flows::report::ReportQuery`]) -> one
//!   [`crate::flows::report::StagedReport`] line: the recorded connections
//!   each staged policy alone would newly deny or allow.
//! - A bad request -> one `{"error":"..."}` line.
//!
//! The socket is mode 0600 (root only).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::flows::FlowQuery;
use crate::model::{Diagnostic, Severity};

/// Records sent for a flows query with neither `last`, `since_ms` nor `follow`.
pub const DEFAULT_LAST: usize = 20;

/// Keeps the history records a flows query gets (oldest first): the last N
/// (`last`; [`DEFAULT_LAST`] with neither `last`, `since_ms` nor `follow`;
/// none when only following), or all of them with `since_ms`.
pub fn keep_last<T>(q: &crate::flows::FlowQuery, selected: &mut Vec<T>) {
    let last = match (q.last, q.since_ms, q.follow) {
        (Some(n), _, _) => Some(n),
        (None, None, false) => Some(DEFAULT_LAST),
        (None, None, true) => Some(0),
        (None, Some(_), _) => None,
    };
    if let Some(n) = last {
        let skip = selected.len().saturating_sub(n);
        selected.drain(..skip);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Request {
    Status,
    Flows(FlowQuery),
    #[serde(rename = "staged_report")]
    StagedReport(crate::flows::report::ReportQuery),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `namespace/name` or the host endpoint's name.
    pub endpoint: String,
    /// `workload` or `host`.
    pub kind: String,
    pub interface: String,
    pub id: u32,
    pub ifindex: Option<u32>,
    pub attached: bool,
    pub has_staged: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// An enforced endpoint whose new version failed (`error`): the tables it
    /// keeps are the ones installed at this generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good: Option<LastGood>,
}

/// Which version an endpoint kept on its last good tables enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGood {
    /// The tables generation its enforced version was installed with.
    pub generation: u32,
    /// When that was (unix ns).
    pub since_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PolicyCounts {
    pub enforced: usize,
    pub staged: usize,
    pub tiers: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TableStatus {
    pub peer_prefixes: usize,
    pub peer_prefixes_max: usize,
    pub peer_classes: usize,
    /// Entries as the compiler produced them.
    pub rule_entries: usize,
    /// LPM keys they encode to (port ranges split into prefixes).
    pub rule_keys: usize,
    pub rule_keys_max: usize,
    pub endpoints_max: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowStats {
    pub tracked: usize,
    pub events: u64,
    pub subscribers: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConntrackStatus {
    /// Live entries found by the last sweep (every `CONNTRACK_SWEEP`).
    pub entries: usize,
    /// Map capacity (LRU: the least recently used entry goes when full).
    pub max: usize,
    /// Idle entries deleted since the agent started.
    pub swept: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiagnosticOut {
    /// `error` or `warning`.
    pub severity: String,
    pub file: String,
    pub line: usize,
    pub resource: String,
    pub field: String,
    pub message: String,
}

impl From<&Diagnostic> for DiagnosticOut {
    fn from(d: &Diagnostic) -> Self {
        DiagnosticOut {
            severity: match d.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
            }
            .into(),
            file: d.file.display().to_string(),
            line: d.line,
            resource: d.resource.clone(),
            field: d.field.clone(),
            message: d.message.clone(),
        }
    }
}

impl std::fmt::Display for DiagnosticOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = (&self.resource[..], &self.field[..]);
        crate::model::write_diagnostic(f, &self.file, self.line, &self.severity, at, &self.message)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub datastore: String,
    pub started: String,
    pub last_reload: String,
    pub reloads: u64,
    /// Why the latest datastore state is not enforced (the previous one is).
    pub last_error: Option<String>,
    pub generation: u32,
    pub epoch: u32,
    pub endpoints: Vec<EndpointStatus>,
    pub policies: PolicyCounts,
    pub tables: TableStatus,
    /// Kernel counters summed over CPUs (`ringbuf_full` = flow events dropped).
    pub counters: BTreeMap<String, u64>,
    pub flows: FlowStats,
    /// Conntrack entries as of the last sweep.
    #[serde(default)]
    pub conntrack: ConntrackStatus,
    /// Rejected resources whose last good version is still enforced.
    pub kept_last_good: Vec<String>,
    /// Problems in the datastore (rejected documents and warnings).
    pub diagnostics: Vec<DiagnosticOut>,
    /// Pinned state: where, and what this agent adopted from an earlier one.
    #[serde(default)]
    pub pinning: PinStatus,
    /// Host-endpoint traffic on failsafe or management ports that policy would
    /// deny if failsafes were off (see `agent check --config`).
    #[serde(default)]
    pub lockout_warnings: Vec<String>,
    /// Problems reading the datastore itself (Kubernetes: kinds not listed yet,
    /// failing watches); what was read last stays enforced meanwhile.
    #[serde(default)]
    pub datastore_problems: Vec<String>,
    /// Commit-confirmed promotions: pending ones, then recent confirmations
    /// and reverts (`agent promote --confirm-within`).
    #[serde(default)]
    pub promotions: Vec<String>,
    /// Service flows judged after the node's DNAT (empty: none configured).
    #[serde(default)]
    pub services: ServiceStatus,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Frontend prefixes (ClusterIP ranges, external IPs).
    pub frontends: Vec<String>,
    /// Data interfaces with the post-DNAT program (`name` = ifindex).
    pub post_nat: Vec<String>,
    /// Data interfaces where attaching it failed, with the error.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PinStatus {
    /// The bpffs directory holding the maps and links.
    pub bpffs: Option<String>,
    /// An earlier agent's pinned maps were found and reused.
    pub adopted: bool,
    /// The programs were the ones an earlier agent verified from this same
    /// object and left pinned (`dataplane::reuse`), not verified again.
    #[serde(default)]
    pub programs_reused: bool,
    /// Pinned links whose program was swapped for this agent's (BPF_LINK_UPDATE;
    /// with reused programs, the same program stays).
    pub adopted_links: usize,
    /// On adoption: whether the first install flipped the tables (and bumped the
    /// epoch); false when the pinned live tables already matched the policy.
    pub start_flipped: Option<bool>,
    /// Link pins of interfaces that are no longer endpoints, removed (detached).
    pub pruned_links: usize,
}

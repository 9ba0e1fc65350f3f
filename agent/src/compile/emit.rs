//! Encoding: one endpoint and direction's rows as `RULES_*` entries under peer
//! groups, with a wildcard row per table and the other groups' rows as
//! exceptions to it (see the module docs of `compile`, "Encoding").
use foldhash::{HashMap, HashMapExt};

use agent_common::Verdict;

use super::endpoint::EndpointCompiler;
use super::ports::{kind, Dim, Kind};
use crate::dataplane::tables::{GroupEntry, PeerMatch, PortMatch as Ports, RuleEntry, Table};
use crate::model::ir::Direction;

/// One dimension's verdicts as maximal runs: (first interval index, verdict),
/// ascending from interval 0, neighbours differing. Canonical, so two runs
/// are equal exactly when their cells are; a row costs its runs, not its
/// intervals (the port axis has ~N intervals at N port rules, and most
/// groups differ in few of them).
pub(super) type Runs = Vec<(u32, Verdict)>;

/// A table function of one peer group: "other protocols" verdict and per
/// (protocol, source-port class) dimension its verdicts over the intervals.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct Row {
    pub(super) other: Verdict,
    pub(super) cells: Vec<Runs>,
}

/// Whether `runs` (of a dimension of at least `last + 1` intervals) holds a
/// verdict other than `v` somewhere in intervals `first..=last`.
fn differs_within(runs: &Runs, first: u32, last: u32, v: Verdict) -> bool {
    let k = runs.partition_point(|&(start, _)| start <= first) - 1;
    runs[k].1 != v || runs.get(k + 1).is_some_and(|&(start, _)| start <= last)
}

impl EndpointCompiler<'_, '_> {
    /// Writes one direction (both tables): per table the most common row under
    /// the wildcard group; every distinct (enforced, pending) pair of rows other
    /// than the wildcards' gets a local group, its classes `GROUPS_*` entries,
    /// and its rows exceptions to the wildcard rows (see the module docs).
    pub(super) fn emit(
        &mut self,
        direction: Direction,
        dims: &[Dim],
        tables: &[(Table, Vec<Row>)],
        class_group: &[usize],
    ) {
        let signature_groups = tables[0].1.len();
        let mut count = vec![0usize; signature_groups];
        for &g in class_group {
            count[g] += 1;
        }
        // Per table: each signature group's row as the first signature group with
        // an equal row, and the wildcard (the row of the most classes).
        let mut row_ids: Vec<Vec<usize>> = Vec::with_capacity(tables.len());
        let mut wildcards: Vec<usize> = Vec::with_capacity(tables.len());
        for (table, rows) in tables {
            let (ids, wildcard) = wildcard_row(rows, &count);
            let row = &rows[wildcard];
            let base = RuleEntry {
                endpoint_id: self.id,
                direction,
                table: *table,
                peer: PeerMatch::Any,
                protocol: None,
                source_port_class: None,
                ports: Ports::Any,
                verdict: row.other,
            };
            self.out.push(base);
            push_runs(&mut self.out, base, dims, row, |_, _, _, v| v != row.other);
            row_ids.push(ids);
            wildcards.push(wildcard);
        }
        let representative = self.local_groups(direction, &row_ids, &wildcards, class_group);
        for (k, &g) in representative.iter().enumerate() {
            for (t, (table, rows)) in tables.iter().enumerate() {
                let row = &rows[g];
                let wildcard = &rows[wildcards[t]];
                if row == wildcard {
                    continue; // a miss falls back to the wildcard: right
                }
                let entry = RuleEntry {
                    endpoint_id: self.id,
                    direction,
                    table: *table,
                    peer: PeerMatch::Group(k as u32 + 1),
                    protocol: None,
                    source_port_class: None,
                    ports: Ports::Any,
                    verdict: row.other,
                };
                if row.other == wildcard.other {
                    // The row is `v` over the run: kept where the wildcard is not.
                    push_runs(&mut self.out, entry, dims, row, |d, first, last, v| {
                        differs_within(&wildcard.cells[d], first, last, v)
                    });
                } else {
                    self.out.push(entry);
                    push_runs(&mut self.out, entry, dims, row, |_, _, _, v| v != row.other);
                }
            }
        }
    }

    /// Local groups: one per distinct tuple of rows (one per table, since
    /// GROUPS_* serves both tables) other than the wildcards', numbered 1.. in
    /// class order; pushes their classes' `GROUPS_*` entries and returns each
    /// local group's (`- 1`) representative signature group.
    fn local_groups(
        &mut self,
        direction: Direction,
        row_ids: &[Vec<usize>],
        wildcards: &[usize],
        class_group: &[usize],
    ) -> Vec<usize> {
        let signature_groups = row_ids[0].len();
        let mut local: HashMap<Vec<usize>, u32> = HashMap::new();
        let mut representative: Vec<usize> = Vec::new();
        let mut group_of: Vec<Option<u32>> = Vec::with_capacity(signature_groups);
        for g in 0..signature_groups {
            let tuple: Vec<usize> = row_ids.iter().map(|ids| ids[g]).collect();
            group_of.push(if tuple == wildcards {
                None
            } else {
                Some(*local.entry(tuple).or_insert_with(|| {
                    representative.push(g);
                    representative.len() as u32
                }))
            });
        }
        for (ci, &g) in class_group.iter().enumerate() {
            if let Some(group) = group_of[g] {
                self.groups.push(GroupEntry {
                    endpoint_id: self.id,
                    direction,
                    class: ci as u32 + 1,
                    group,
                });
            }
        }
        representative
    }
}

/// Each signature group's row as the first signature group with an equal row,
/// and the wildcard row (the row of the most classes; `count`: classes per
/// signature group).
fn wildcard_row(rows: &[Row], count: &[usize]) -> (Vec<usize>, usize) {
    let mut first: HashMap<&Row, usize> = HashMap::new();
    let ids: Vec<usize> = rows
        .iter()
        .enumerate()
        .map(|(g, row)| *first.entry(row).or_insert(g))
        .collect();
    let mut same = vec![0usize; rows.len()];
    for (g, &id) in ids.iter().enumerate() {
        same[id] += count[g];
    }
    let wildcard = (0..rows.len())
        .max_by_key(|&g| (same[ids[g]], std::cmp::Reverse(g)))
        .map(|g| ids[g])
        .expect("at least the two root classes");
    (ids, wildcard)
}

/// Emits the maximal runs of equal verdict in `row` that
/// `keep(dim, first interval, last interval, verdict)` selects.
/// A protocol with several source-port classes whose every cell has one verdict
/// gets one entry for all its classes (when any of its runs is kept): the entry
/// holds each cell's own verdict, so it is right where a miss would also be.
fn push_runs(
    out: &mut Vec<RuleEntry>,
    base: RuleEntry,
    dims: &[Dim],
    row: &Row,
    keep: impl Fn(usize, u32, u32, Verdict) -> bool,
) {
    let mut d = 0;
    while d < dims.len() {
        let dim = &dims[d];
        let group = d..d + dim.classes;
        let uniform = row.cells[d][0].1;
        if dim.classes > 1 && group.clone().all(|g| row.cells[g] == [(0, uniform)]) {
            let last = |g: usize| dims[g].starts.len() as u32 - 1;
            if group.clone().any(|g| keep(g, 0, last(g), uniform)) {
                out.push(RuleEntry {
                    protocol: Some(dim.protocol),
                    source_port_class: None,
                    ports: Ports::Any,
                    verdict: uniform,
                    ..base
                });
            }
            d = group.end;
            continue;
        }
        for d in group.clone() {
            push_dim_runs(out, base, d, &dims[d], &row.cells[d], &keep);
        }
        d = group.end;
    }
}

/// [`push_runs`] for one dimension.
fn push_dim_runs(
    out: &mut Vec<RuleEntry>,
    base: RuleEntry,
    d: usize,
    dim: &Dim,
    runs: &Runs,
    keep: &impl Fn(usize, u32, u32, Verdict) -> bool,
) {
    for (k, &(i, v)) in runs.iter().enumerate() {
        let j = runs
            .get(k + 1)
            .map_or(dim.starts.len() as u32 - 1, |&(next, _)| next - 1);
        if keep(d, i, j, v) {
            let (first, last) = (dim.starts[i as usize], dim.end(j as usize));
            let ports = if kind(dim.protocol) == Kind::Other || (first, last) == (0, u16::MAX) {
                Ports::Any
            } else {
                Ports::Range(first, last)
            };
            out.push(RuleEntry {
                protocol: Some(dim.protocol),
                source_port_class: Some(dim.source_port_class),
                ports,
                verdict: v,
                ..base
            });
        }
    }
}

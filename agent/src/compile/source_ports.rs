//! Source-port classes of one endpoint, direction and port protocol (see the
//! module docs of `compile`, "Source-port classes").
use std::collections::{BTreeSet, HashMap};

use super::budget::{self, MAX_SOURCE_PORT_CLASSES};
use super::ports::{kind, may_match, port_ranges, Kind};
use super::CompileError;
use crate::dataplane::tables::{port_range_prefixes, SourcePortEntry};
use crate::eval::EPHEMERAL_PORT;
use crate::model::ir::{Direction, Model, Rule};

/// One protocol's source-port classes on an endpoint and direction.
pub(super) struct SourcePorts {
    /// Per class: a port of it (the evaluator's source port for the class).
    pub(super) representatives: Vec<u16>,
    /// `(first, last, class)`, covering every port, in port order.
    intervals: Vec<(u16, u16, u8)>,
}

impl SourcePorts {
    /// One class holding every port (what the kernel uses without `SPORTS_*`).
    fn single() -> Self {
        SourcePorts {
            representatives: vec![EPHEMERAL_PORT],
            intervals: vec![(0, u16::MAX, 0)],
        }
    }

    /// Protocol `p`'s classes: one for protocols without ports, else the ports
    /// split at every bound of a source-port match of `rules` (ranges; named
    /// ports: every endpoint's port of that name, as the peer's (ingress) or the
    /// endpoint's own (egress) may be any of them), intervals in the same matches
    /// sharing a class. `endpoint` names the endpoint in errors.
    pub(super) fn of(
        model: &Model,
        endpoint: &str,
        rules: &[(String, &Rule)],
        p: u8,
    ) -> Result<Self, CompileError> {
        if kind(p) != Kind::Ports {
            return Ok(SourcePorts::single());
        }
        let mut atoms: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (_, r) in rules.iter().filter(|(_, r)| may_match(r, p)) {
            let matches = r.source.ports.iter().chain(&r.source.not_ports);
            atoms.extend(port_ranges(model, matches, p));
        }
        if atoms.is_empty() {
            return Ok(SourcePorts::single());
        }
        let mut cuts: BTreeSet<u32> = BTreeSet::from([0]);
        for &(first, last) in &atoms {
            cuts.insert(first);
            cuts.insert(last + 1);
        }
        let starts: Vec<u32> = cuts.into_iter().filter(|&c| c <= 0xffff).collect();
        let intervals: Vec<(u16, u16)> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| {
                let end = starts.get(i + 1).map_or(0xffff, |next| next - 1);
                (start as u16, end as u16)
            })
            .collect();
        // Group the intervals by the atoms containing them (first appearance order).
        let mut group_of: HashMap<Vec<bool>, usize> = HashMap::new();
        let mut groups: Vec<Vec<(u16, u16)>> = Vec::new();
        let mut interval_group = Vec::with_capacity(intervals.len());
        for &(start, end) in &intervals {
            let signature: Vec<bool> = atoms
                .iter()
                .map(|&(first, last)| first <= u32::from(start) && u32::from(start) <= last)
                .collect();
            let next = groups.len();
            let g = *group_of.entry(signature).or_insert_with(|| {
                groups.push(Vec::new());
                next
            });
            groups[g].push((start, end));
            interval_group.push(g);
        }
        budget::check(
            || endpoint.to_string(),
            "source-port classes per direction and protocol (RuleKey::source_port_class)",
            groups.len(),
            MAX_SOURCE_PORT_CLASSES,
        )?;
        Ok(Self::numbered(&groups, &intervals, &interval_group))
    }

    /// Numbers the interval groups as classes: class 0 covers every port in
    /// SPORTS_* with one entry, so it goes to the group whose intervals would
    /// cost the most prefixes; the rest keep their order.
    fn numbered(
        groups: &[Vec<(u16, u16)>],
        intervals: &[(u16, u16)],
        interval_group: &[usize],
    ) -> Self {
        let cost = |g: &Vec<(u16, u16)>| -> usize {
            g.iter()
                .map(|&(a, b)| port_range_prefixes(a, b).len())
                .sum()
        };
        let zero = (0..groups.len())
            .max_by_key(|&g| (cost(&groups[g]), std::cmp::Reverse(g)))
            .expect("at least one interval");
        let class_of = |g: usize| -> u8 {
            match g.cmp(&zero) {
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Less => g as u8 + 1,
                std::cmp::Ordering::Greater => g as u8,
            }
        };
        let mut representatives = vec![0u16; groups.len()];
        for (g, intervals) in groups.iter().enumerate() {
            // The usual ephemeral port where the class has it (same questions as
            // for an endpoint without source-port rules), else its first port.
            representatives[usize::from(class_of(g))] = if intervals
                .iter()
                .any(|&(a, b)| (a..=b).contains(&EPHEMERAL_PORT))
            {
                EPHEMERAL_PORT
            } else {
                intervals[0].0
            };
        }
        SourcePorts {
            representatives,
            intervals: intervals
                .iter()
                .zip(interval_group)
                .map(|(&(first, last), &g)| (first, last, class_of(g)))
                .collect(),
        }
    }

    /// The `SPORTS_*` entries of protocol `p` (none for a single class): class 0
    /// by the entry for all ports (the class costing the most prefixes), the
    /// others by narrower entries.
    pub(super) fn entries(
        &self,
        endpoint_id: u32,
        direction: Direction,
        p: u8,
    ) -> Vec<SourcePortEntry> {
        if self.representatives.len() <= 1 {
            return Vec::new();
        }
        let entry = |first, last, class| SourcePortEntry {
            endpoint_id,
            direction,
            protocol: p,
            first,
            last,
            class,
        };
        std::iter::once(entry(0, u16::MAX, 0))
            .chain(
                self.intervals
                    .iter()
                    .filter(|&&(_, _, class)| class != 0)
                    .map(|&(first, last, class)| entry(first, last, class)),
            )
            .collect()
    }
}

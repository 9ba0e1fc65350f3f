//! `changed_by` in flow records and `agent flows --staged KIND/NAME`: the
//! staged policies whose promotion alone changes a recorded connection, and
//! its pending verdict with only the named ones promoted. Computed in
//! userspace with the evaluator on the daemon's model, as `agent eval` does;
//! the kernel keeps one pending verdict (every staged policy promoted).
use crate::eval::Evaluator;
use crate::model::ir::Model;

use super::report::{connection_of, policy_name};
use super::Flow;

/// The models to judge with: one per staged policy alone, and, with
/// `--staged`, the one with only the named staged policies.
pub struct Blame {
    alone: Vec<(String, Model)>,
    subset: Option<Model>,
}

/// Evaluators over a [`Blame`]'s models.
pub struct Judge<'m> {
    alone: Vec<(&'m str, Evaluator<'m>)>,
    subset: Option<Evaluator<'m>>,
}

impl Blame {
    /// `staged`: `--staged` targets (empty: every staged policy, the kernel's
    /// pending verdict stands). An unknown target is an error.
    pub fn new(model: &Model, staged: &[String]) -> Result<Blame, String> {
        let subset = if staged.is_empty() {
            None
        } else {
            let mut m = model.clone();
            crate::cli::staged::select(&mut m, staged)?;
            Some(m)
        };
        let base = subset.as_ref().unwrap_or(model);
        let alone = base
            .policies
            .iter()
            .filter(|p| p.id.kind.is_staged())
            .map(|candidate| {
                let mut m = base.clone();
                m.policies
                    .retain(|p| !p.id.kind.is_staged() || p.id == candidate.id);
                (policy_name(&candidate.id), m)
            })
            .collect();
        Ok(Blame { alone, subset })
    }

    pub fn judge(&self) -> Judge<'_> {
        Judge {
            alone: self
                .alone
                .iter()
                .map(|(name, m)| (name.as_str(), Evaluator::new(m)))
                .collect(),
            subset: self.subset.as_ref().map(Evaluator::new),
        }
    }
}

impl Judge<'_> {
    /// The record with `pending_differs` for the `--staged` subset (when
    /// given) and, when it differs, `changed_by`.
    pub fn annotate(&self, record: &Flow) -> Flow {
        let mut f = record.clone();
        let connection = connection_of(record);
        let differs = |e: &Evaluator| {
            let v = e.evaluate_flow(&connection);
            v.enforced.action != v.pending.action
        };
        if let Some(subset) = &self.subset {
            f.pending_differs = differs(subset);
        }
        if f.pending_differs {
            f.changed_by = self
                .alone
                .iter()
                .filter(|(_, e)| differs(e))
                .map(|(name, _)| name.to_string())
                .collect();
        }
        f
    }
}

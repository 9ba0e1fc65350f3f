//! The agent's side of commit-confirmed promotion ([`crate::rollout`]): a
//! thread that looks at the datastore's pending promotions every
//! [`crate::rollout::TICK`], runs their checks from the agent's network
//! namespace, reverts or confirms, and keeps what `agent status` shows.
use std::path::PathBuf;
use std::sync::Arc;

use super::{lock, Shared};
use crate::rollout::{Outcome, Supervisor, TICK};

/// Outcomes kept for `agent status`.
const RECENT: usize = 20;

/// What `agent status` shows: pending promotions and recent outcomes.
#[derive(Default)]
pub(super) struct Confirmations {
    pub pending: Vec<String>,
    pub recent: Vec<Outcome>,
}

impl Confirmations {
    /// One line each, pending first.
    pub fn lines(&self) -> Vec<String> {
        let recent = self.recent.iter().map(|o| {
            format!(
                "{} {} at {}: {}",
                o.target,
                o.action,
                crate::flows::rfc3339(o.at_unix_ms * 1_000_000),
                o.reason
            )
        });
        self.pending.iter().cloned().chain(recent).collect()
    }
}

pub(super) fn spawn(datastore: PathBuf, shared: Arc<Shared>) {
    std::thread::spawn(move || {
        let mut supervisor = Supervisor::default();
        loop {
            let (outcomes, waiting) = supervisor.tick(&datastore);
            for o in &outcomes {
                match o.action {
                    "reverted" => {
                        tracing::warn!(target = %o.target, reason = %o.reason, "promotion reverted: the staged version is back")
                    }
                    _ => {
                        tracing::info!(target = %o.target, reason = %o.reason, "promotion confirmed")
                    }
                }
            }
            let mut view = lock(&shared.confirmations);
            view.pending = waiting
                .iter()
                .map(|p| {
                    format!(
                        "{} awaits confirmation until {}{}",
                        p.target,
                        crate::flows::rfc3339(p.deadline_unix_ms * 1_000_000),
                        if p.checks.is_empty() {
                            String::new()
                        } else {
                            format!(
                                " (checks: {})",
                                p.checks
                                    .iter()
                                    .map(ToString::to_string)
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        }
                    )
                })
                .collect();
            view.recent.extend(outcomes);
            let excess = view.recent.len().saturating_sub(RECENT);
            view.recent.drain(..excess);
            drop(view);
            std::thread::sleep(TICK);
        }
    });
}

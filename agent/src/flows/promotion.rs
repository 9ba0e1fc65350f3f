//! Commit-confirmed promotions in the flows stream: a line
//! `{"promotion": {...}}` beside the flow records (which never have that
//! key) when a promotion starts awaiting confirmation, is confirmed, or is
//! reverted, so an operator reading flows sees why verdicts changed. Flow
//! records keep their format; readers that only know flows skip these lines.
use serde::{Deserialize, Serialize};

/// Promotion events an agent keeps (in memory, and read back from the flow
/// history at start) for `agent flows --last/--since`.
pub const KEPT: usize = 1000;

/// One step of a promotion ([`crate::rollout`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionEvent {
    /// RFC 3339 UTC.
    pub time: String,
    pub at_ns: u64,
    /// The promoted staged policy, as the promotion named it.
    pub target: String,
    /// `pending`, `confirmed`, `reverted`, or (in the cluster, when another
    /// agent or `agent confirm` settled it) `decided`.
    pub event: String,
    /// Why: the deadline and checks (pending), the deadline passed, a check
    /// failed, every check passed, `agent confirm`.
    pub reason: String,
}

/// The wire form of a [`PromotionEvent`] in the flows stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionLine {
    pub promotion: PromotionEvent,
}

impl PromotionEvent {
    pub fn new(at_ns: u64, target: &str, event: &str, reason: String) -> PromotionEvent {
        PromotionEvent {
            time: super::rfc3339(at_ns),
            at_ns,
            target: target.into(),
            event: event.into(),
            reason,
        }
    }

    /// `agent flows` (compact and table): one line, marked PROMOTION.
    pub fn compact(&self) -> String {
        let time = self.time.get(11..23).unwrap_or(&self.time);
        format!(
            "{time} PROMOTION {} {}: {}",
            self.target, self.event, self.reason
        )
    }
}

/// The promotion line of `line`, if it is one (a flow record is not).
pub fn parse_line(line: &str) -> Option<PromotionEvent> {
    serde_json::from_str::<PromotionLine>(line)
        .ok()
        .map(|l| l.promotion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_promotion_line_round_trips_and_a_flow_line_is_not_one() {
        let e = PromotionEvent::new(
            1_700_000_000_123_000_000,
            "sgnp/lockdown",
            "reverted",
            "check failed: tcp:10.0.0.1:22: refused".into(),
        );
        let line = serde_json::to_string(&PromotionLine {
            promotion: e.clone(),
        })
        .unwrap();
        assert_eq!(parse_line(&line), Some(e.clone()));
        assert_eq!(
            e.compact(),
            "22:13:20.123 PROMOTION sgnp/lockdown reverted: check failed: tcp:10.0.0.1:22: refused"
        );
        assert_eq!(parse_line(r#"{"time": "x", "count": 1}"#), None);
    }
}

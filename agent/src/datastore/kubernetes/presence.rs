//! Which agents are alive, so that a silent agent counts against confirming a
//! promotion (`--confirm-if`): every agent keeps a coordination.k8s.io/v1
//! Lease `agent-presence.<node>` in the Lease namespace and renews it every
//! [`Timing::renew_every`], like the kubelet's node Lease.
//!
//! The checks of a pending promotion run on every agent, but an agent that
//! the promotion cut off from the API server cannot report its failing check
//! (nor revert). Its presence Lease then stops being renewed. So an agent
//! confirms only when every agent that was present when the promotion was
//! made has renewed its Lease after the promotion had time to reach its node
//! ([`Timing::propagation`]); one whose Lease expires before that is taken as
//! a failed check: the promotion is reverted. An agent started after the
//! promotion does not count; an agent that stops cleanly removes its Lease.
//! A node that dies while a promotion with checks is pending reverts it: the
//! conservative side, as with a failing check.
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::ResourceExt;

/// Presence Leases are named this plus the node name.
pub const PREFIX: &str = "agent-presence.";

/// How often an agent renews its presence, how long a renewal counts, and how
/// long after a promotion an agent must have renewed to show it survived it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub renew_every: Duration,
    pub duration: Duration,
    pub propagation: Duration,
}

impl Default for Timing {
    /// The kubelet's node Lease renews every 10 s and lasts 40 s; a policy
    /// change reaches a node's kernel within a few seconds.
    fn default() -> Timing {
        Timing {
            renew_every: Duration::from_secs(10),
            duration: Duration::from_secs(40),
            propagation: Duration::from_secs(5),
        }
    }
}

/// One agent's presence as its Lease says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Presence {
    pub node: String,
    pub renewed_ms: i64,
    pub duration_ms: i64,
}

impl Presence {
    fn live_at(&self, ms: i64) -> bool {
        ms < self.renewed_ms + self.duration_ms
    }
}

/// What the presences say about a promotion made at `promoted_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Present at the promotion, not renewed since it took effect, still live.
    pub waiting_for: Vec<String>,
    /// Present at the promotion, expired without renewing since: silent.
    pub silent: Vec<String>,
}

/// Judges `presences` for a promotion made at `promoted_ms`, at `now_ms`.
pub fn judge(presences: &[Presence], promoted_ms: i64, now_ms: i64, t: &Timing) -> Verdict {
    let took_effect = promoted_ms + t.propagation.as_millis() as i64;
    let mut v = Verdict::default();
    for p in presences.iter().filter(|p| p.live_at(promoted_ms)) {
        if p.renewed_ms >= took_effect {
            continue;
        }
        if p.live_at(now_ms) {
            v.waiting_for.push(p.node.clone());
        } else {
            v.silent.push(p.node.clone());
        }
    }
    v
}

/// The Lease name of `node` (node names are DNS subdomains already).
pub fn lease_name(node: &str) -> String {
    format!("{PREFIX}{node}")
}

/// Creates or renews `node`'s presence as `holder`. A renewal that races
/// another writer fails and is retried at the next renewal.
pub async fn renew(leases: &Api<Lease>, node: &str, holder: &str, t: &Timing) -> kube::Result<()> {
    let name = lease_name(node);
    let now = MicroTime(Timestamp::now());
    let spec = LeaseSpec {
        holder_identity: Some(holder.into()),
        lease_duration_seconds: Some(t.duration.as_secs().max(1) as i32),
        renew_time: Some(now.clone()),
        ..Default::default()
    };
    match leases.get_opt(&name).await? {
        Some(mut held) => {
            held.spec = Some(LeaseSpec {
                acquire_time: held.spec.and_then(|s| s.acquire_time),
                ..spec
            });
            leases.replace(&name, &PostParams::default(), &held).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    acquire_time: Some(now),
                    ..spec
                }),
            };
            leases.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Removes `node`'s presence (a clean stop): it no longer counts.
pub async fn withdraw(leases: &Api<Lease>, node: &str) -> kube::Result<()> {
    match leases
        .delete(&lease_name(node), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Every agent's presence in the Lease namespace.
pub async fn list(leases: &Api<Lease>) -> kube::Result<Vec<Presence>> {
    let found = leases.list(&Default::default()).await?;
    Ok(found
        .items
        .iter()
        .filter_map(|l| {
            let name = l.name_any();
            let node = name.strip_prefix(PREFIX)?;
            let spec = l.spec.as_ref()?;
            Some(Presence {
                node: node.to_string(),
                renewed_ms: spec.renew_time.as_ref()?.0.as_millisecond(),
                duration_ms: i64::from(spec.lease_duration_seconds?) * 1000,
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(node: &str, renewed_ms: i64) -> Presence {
        Presence {
            node: node.into(),
            renewed_ms,
            duration_ms: 40_000,
        }
    }

    #[test]
    fn agents_present_at_the_promotion_must_renew_after_it_took_effect() {
        let t = Timing::default();
        let promoted = 1_000_000;
        let presences = [
            // Renewed 5 s after: survived the promotion.
            p("ok", promoted + 5_000),
            // Renewed 1 s after, before it took effect: not yet proof.
            p("early", promoted + 1_000),
            // Last renewed 30 s before: still live until promoted + 10 s.
            p("before", promoted - 30_000),
            // Expired before the promotion: a node gone earlier, not counted.
            p("gone", promoted - 50_000),
        ];
        let v = judge(&presences, promoted, promoted + 6_000, &t);
        assert_eq!(v.waiting_for, ["early", "before"]);
        assert!(v.silent.is_empty());
        // 20 s later `before` has expired without a word since the promotion.
        let v = judge(&presences, promoted, promoted + 20_000, &t);
        assert_eq!(v.waiting_for, ["early"]);
        assert_eq!(v.silent, ["before"]);
        // And `early` too once its renewal expires.
        let v = judge(&presences, promoted, promoted + 41_000, &t);
        assert_eq!(v.silent, ["early", "before"]);
    }
}

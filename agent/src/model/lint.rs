//! Warnings about policy sets that load but probably do not do what they say.
use super::ir::{Action, Direction, EntityRule, Policy, Rule};
use super::load::resource_id;
use super::{Diagnostic, Loaded, Severity};

/// A rule that matches every packet of its direction.
fn matches_everything(r: &Rule) -> bool {
    let any = |e: &EntityRule| *e == EntityRule::default();
    r.ip_version.is_none()
        && r.protocol.is_none()
        && r.not_protocol.is_none()
        && r.icmp.is_none()
        && r.not_icmp.is_none()
        && any(&r.source)
        && any(&r.destination)
}

/// Whether `p` allows every flow in `dir` (its first deciding rule is an unconditional Allow).
fn allows_everything(p: &Policy, dir: Direction) -> bool {
    p.applies_in(dir)
        && p.rules(dir)
            .iter()
            .find(|r| r.action != Action::Log)
            .is_some_and(|r| r.action == Action::Allow && matches_everything(r))
}

/// Lints over a loaded model:
/// - a `services` match naming a Service that does not exist (it matches nothing);
/// - a policy without `order` on endpoints that an ordered allow-everything
///   policy (a safe-mode net) in the same tier also selects: Calico sorts an
///   unset order *after* every number, so the net decides first and the
///   policy never sees those flows.
pub fn lint(loaded: &Loaded) -> Vec<Diagnostic> {
    let model = &loaded.model;
    let mut out = Vec::new();
    for p in model.policies.iter().filter(|p| p.order.is_none()) {
        for net in &model.policies {
            let Some(net_order) = net.order else { continue };
            if net.id.kind.is_staged() || net.tier != p.tier {
                continue;
            }
            let shadowed: Vec<Direction> = [Direction::Ingress, Direction::Egress]
                .into_iter()
                .filter(|d| p.applies_in(*d) && allows_everything(net, *d))
                .collect();
            if shadowed.is_empty() {
                continue;
            }
            let Some(endpoint) = model
                .endpoints
                .iter()
                .find(|e| p.selector.evaluate(&e.labels) && net.selector.evaluate(&e.labels))
            else {
                continue;
            };
            out.push(policy_warning(
                loaded,
                &p.id,
                "spec.order".into(),
                format!(
                    "has no order, so Calico evaluates it after {} (order {net_order}), which \
                     allows everything ({}) on endpoints both select (e.g. {}): the allow \
                     decides first and this policy never applies there; give this policy an \
                     order below {net_order}",
                    resource_id(
                        net.id.kind.as_str(),
                        net.id.namespace.as_deref(),
                        &net.id.name
                    ),
                    shadowed
                        .iter()
                        .map(|d| match d {
                            Direction::Ingress => "ingress",
                            Direction::Egress => "egress",
                        })
                        .collect::<Vec<_>>()
                        .join(" and "),
                    endpoint.key(),
                ),
            ));
        }
    }
    for (id, field, service) in super::services::missing(model) {
        out.push(policy_warning(
            loaded,
            &id,
            field,
            format!(
                "Service {service} does not exist (no Service, EndpointSlice or Endpoints \
                 document names it): this match matches nothing until it does"
            ),
        ));
    }
    out
}

/// A warning about policy `id`, at the file and line that define it.
pub(super) fn policy_warning(
    loaded: &Loaded,
    id: &super::ir::PolicyId,
    field: String,
    message: String,
) -> Diagnostic {
    let (file, line) = loaded
        .policy_sources
        .get(id)
        .map(|s| (s.file.clone(), s.line))
        .unwrap_or_default();
    Diagnostic {
        severity: Severity::Warning,
        file,
        line,
        resource: resource_id(id.kind.as_str(), id.namespace.as_deref(), &id.name),
        field,
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::ir::Protocol;
    use crate::model::load::load_sources;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

    fn examples_with(extra: &str) -> Loaded {
        let mut sources = Vec::new();
        for f in [
            "00-endpoints.yaml",
            "../safe-mode/zzz-final-allow-everything.yaml",
        ] {
            let path = PathBuf::from(EXAMPLES).join(f);
            sources.push((path.clone(), std::fs::read_to_string(path).unwrap()));
        }
        sources.push((PathBuf::from("extra.yaml"), extra.to_string()));
        let l = load_sources(&sources);
        assert!(!l.has_errors(), "{:#?}", l.diagnostics);
        l
    }

    const DENY: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-backend
spec:
  selector: app == 'backend'
  ingress:
    - action: Deny
";

    #[test]
    fn unordered_policy_behind_safe_mode_warns() {
        let warnings = lint(&examples_with(DENY));
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        let w = &warnings[0];
        assert_eq!(w.severity, Severity::Warning);
        assert_eq!(w.file, PathBuf::from("extra.yaml"));
        assert_eq!(w.line, 1);
        assert_eq!(w.resource, "GlobalNetworkPolicy/deny-backend");
        assert!(w
            .message
            .contains("GlobalNetworkPolicy/zzz-final-allow-everything"));
        assert!(w.message.contains("order below 100000"), "{}", w.message);
        assert!(w.message.contains("prod/backend"));
    }

    #[test]
    fn ordered_or_disjoint_policies_do_not_warn() {
        let ordered = DENY.replace("spec:\n", "spec:\n  order: 10\n");
        assert!(lint(&examples_with(&ordered)).is_empty());
        let nobody = DENY.replace("app == 'backend'", "app == 'nothing'");
        assert!(lint(&examples_with(&nobody)).is_empty());
        let egress_only = DENY.replace("ingress:", "types: [Egress]\n  egress:");
        // The safe-mode net allows egress too, so egress-only still warns...
        assert_eq!(lint(&examples_with(&egress_only)).len(), 1);
        // ...but a different tier does not.
        let tiered = format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: t\nspec:\n  order: 1\n---\n{}",
            DENY.replace("spec:\n", "spec:\n  tier: t\n")
        );
        assert!(lint(&examples_with(&tiered)).is_empty());
    }

    #[test]
    fn conditional_allow_is_not_a_safety_net() {
        let l = examples_with(DENY);
        let mut l2 = l.clone();
        for p in &mut l2.model.policies {
            if p.id.name == "zzz-final-allow-everything" {
                p.ingress[0].protocol = Some(Protocol::TCP);
                p.egress[0].protocol = Some(Protocol::TCP);
            }
        }
        assert!(lint(&l2).is_empty());
    }
}

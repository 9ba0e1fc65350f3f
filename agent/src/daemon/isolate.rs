//! Failures stay local: a compile error that names an endpoint this agent
//! does not enforce yet (a capacity limit reached by a new endpoint, a rule the
//! compiler cannot handle for it) leaves that endpoint out of the compile
//! instead of holding up every other change. An enforced endpoint is left out
//! only when its installed tables can be carried over (see [`super::freeze`]):
//! it keeps them, marked `enforced`; otherwise (no installed compile yet, after
//! a restart) an error naming one keeps the previous tables everywhere.
use std::collections::HashSet;

use crate::compile::{CompileError, Compiled};
use crate::model::ir::{EndpointKind, Model};

/// How many times a compile is retried with one more endpoint left out (each
/// retry is a full compile; the ENDPOINTS limit leaves all the excess out at once).
pub const MAX_RETRIES: usize = 16;

/// An endpoint left out of the compile, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// `namespace/name` or the host endpoint's name.
    pub endpoint: String,
    pub host: bool,
    pub interface: String,
    pub reason: String,
    /// Enforced already: it keeps its installed tables (frozen), not left unpoliced.
    pub enforced: bool,
}

/// Compiles `model`; on an error naming endpoints not in `enforced` (keys),
/// leaves them out (their interface is dropped from `model`: they stay peers
/// that selectors see, unpoliced as they already were) and tries again. With
/// `freeze`, an error naming an enforced endpoint leaves it out too (the
/// caller carries its installed tables over).
pub fn compile_leaving_out(
    model: &mut Model,
    enforced: &HashSet<String>,
    freeze: bool,
    compile: impl Fn(&Model) -> Result<Compiled, CompileError>,
) -> Result<(Compiled, Vec<LeftOut>), CompileError> {
    let mut left_out = Vec::new();
    let mut retries = 0;
    loop {
        match compile(model) {
            Ok(c) => return Ok((c, left_out)),
            Err(e) => {
                let taken = leave_out(model, &e, enforced, freeze, &mut left_out);
                if retries >= MAX_RETRIES || !taken {
                    return Err(e);
                }
                retries += 1;
            }
        }
    }
}

/// Takes the endpoints `err` is about out of `model`, if none of them is
/// enforced; false when there is nothing it may take out.
fn leave_out(
    model: &mut Model,
    err: &CompileError,
    enforced: &HashSet<String>,
    freeze: bool,
    left_out: &mut Vec<LeftOut>,
) -> bool {
    let mut take = |e: &mut crate::model::ir::Endpoint| {
        let was_enforced = enforced.contains(&e.key());
        if let Some(interface) = e.interface.take() {
            left_out.push(LeftOut {
                endpoint: e.key(),
                host: e.kind == EndpointKind::Host,
                interface,
                reason: if was_enforced {
                    format!("last good version enforced: {err}")
                } else {
                    format!("not enforced: {err}")
                },
                enforced: was_enforced,
            });
        }
    };
    match err {
        CompileError::Capacity {
            limit, max: room, ..
        } if limit.starts_with("endpoints") => {
            // The ENDPOINTS map: the enforced ones first, then new ones in
            // model order, as many as fit.
            let with_interface = |e: &crate::model::ir::Endpoint| e.interface.is_some();
            let kept_enforced = model
                .endpoints
                .iter()
                .filter(|e| with_interface(e) && enforced.contains(&e.key()))
                .count();
            if kept_enforced > *room {
                return false;
            }
            let mut room = room - kept_enforced;
            let mut any = false;
            for e in model.endpoints.iter_mut().filter(|e| with_interface(e)) {
                if enforced.contains(&e.key()) {
                    continue;
                }
                if room > 0 {
                    room -= 1;
                    continue;
                }
                take(std::sync::Arc::make_mut(e));
                any = true;
            }
            any
        }
        CompileError::Capacity { endpoint, .. } | CompileError::Unsupported { endpoint, .. } => {
            if enforced.contains(endpoint) && !freeze {
                return false;
            }
            let mut any = false;
            for e in model
                .endpoints
                .iter_mut()
                .filter(|e| e.interface.is_some() && e.key() == *endpoint)
            {
                take(std::sync::Arc::make_mut(e));
                any = true;
            }
            any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{compile_with_limits, Limits};
    use crate::model::load::load_sources;

    fn endpoint(name: &str, n: usize) -> String {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: {name}\n  namespace: prod\n  labels:\n    app: {name}\nspec:\n  interfaceName: cali{name}\n  ipNetworks: [10.65.1.{n}/32]\n---\n"
        )
    }

    fn model(names: &[&str]) -> Model {
        let text: String = names
            .iter()
            .enumerate()
            .map(|(i, n)| endpoint(n, i + 1))
            .collect::<String>()
            + "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny\nspec:\n  selector: all()\n  ingress:\n    - action: Deny\n";
        let l = load_sources(&[("t.yaml".into(), text)]);
        assert!(!l.has_errors(), "{:?}", l.diagnostics);
        l.model
    }

    fn enforced(keys: &[&str]) -> HashSet<String> {
        keys.iter().map(|k| format!("prod/{k}")).collect()
    }

    fn limits(endpoints: usize) -> Limits {
        Limits {
            endpoints,
            ..Limits::default()
        }
    }

    #[test]
    fn new_endpoints_beyond_the_endpoints_map_are_left_out_not_the_enforced_ones() {
        // `a` and `d` are enforced; `b`, `c`, `e` are new; room for 3.
        let mut m = model(&["b", "a", "c", "d", "e"]);
        let (compiled, left) = compile_leaving_out(&mut m, &enforced(&["a", "d"]), true, |m| {
            compile_with_limits(m, &limits(3))
        })
        .unwrap();
        let mut got: Vec<&str> = compiled
            .endpoints
            .iter()
            .map(|e| e.interface.as_str())
            .collect();
        got.sort();
        assert_eq!(got, ["calia", "calib", "calid"]);
        let left: Vec<&str> = left.iter().map(|l| l.endpoint.as_str()).collect();
        assert_eq!(left, ["prod/c", "prod/e"]);
        // Still peers: the model keeps them (without an interface).
        assert_eq!(m.endpoints.len(), 5);
    }

    #[test]
    fn an_error_naming_an_enforced_endpoint_is_not_worked_around() {
        let mut m = model(&["a", "b", "c"]);
        let err = compile_leaving_out(&mut m, &enforced(&["a", "b", "c"]), false, |m| {
            compile_with_limits(m, &limits(2))
        })
        .unwrap_err();
        assert!(matches!(err, CompileError::Capacity { .. }), "{err}");
        assert!(m.endpoints.iter().all(|e| e.interface.is_some()));
    }

    #[test]
    fn an_error_naming_a_new_endpoint_leaves_only_it_out() {
        let mut m = model(&["a", "b", "c"]);
        let (compiled, left) = compile_leaving_out(&mut m, &enforced(&["a", "c"]), true, |m| {
            // A stand-in for a rule the compiler cannot handle for `b`.
            if m.endpoints
                .iter()
                .any(|e| e.name == "b" && e.interface.is_some())
            {
                return Err(CompileError::Unsupported {
                    endpoint: "prod/b".into(),
                    policy: "deny".into(),
                    what: "something".into(),
                });
            }
            crate::compile::compile(m)
        })
        .unwrap();
        assert_eq!(compiled.endpoints.len(), 2);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].interface, "calib");
        assert!(left[0].reason.contains("cannot compile something"));
    }

    #[test]
    fn with_freeze_an_error_naming_an_enforced_endpoint_leaves_only_it_out_marked_enforced() {
        let mut m = model(&["a", "b", "c"]);
        let (compiled, left) =
            compile_leaving_out(&mut m, &enforced(&["a", "b", "c"]), true, |m| {
                if m.endpoints
                    .iter()
                    .any(|e| e.name == "b" && e.interface.is_some())
                {
                    return Err(CompileError::Capacity {
                        endpoint: "prod/b".into(),
                        limit: "rule keys of one endpoint",
                        needed: 9,
                        max: 8,
                    });
                }
                crate::compile::compile(m)
            })
            .unwrap();
        assert_eq!(compiled.endpoints.len(), 2);
        assert_eq!(left.len(), 1);
        assert!(left[0].enforced, "{left:?}");
        assert!(
            left[0].reason.starts_with("last good version enforced"),
            "{left:?}"
        );
    }
}

use super::*;
use crate::flows::test_flows::tcp_flow;

fn peer(
    ip: &str,
    port: u16,
    ns: Option<&str>,
    name: Option<&str>,
    labels: &[(&str, &str)],
) -> Peer {
    Peer {
        ip: ip.parse().unwrap(),
        port,
        namespace: ns.map(Into::into),
        name: name.map(Into::into),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn flow(src: Peer, dst: Peer, action: &str) -> Flow {
    Flow {
        count: 2,
        ..tcp_flow(src, dst, action, 1_000_000_000, 2_000_000_000)
    }
}

fn prod(name: &str, ip: &str, port: u16) -> Peer {
    peer(
        ip,
        port,
        Some("prod"),
        Some(name),
        &[
            ("env", "prod"),
            ("app", name),
            ("pod-template-hash", "5d9f7c"),
        ],
    )
}

#[test]
fn selectors_use_stable_labels_only() {
    let labels = |l: &[(&str, &str)]| -> Labels {
        l.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        stable_selector(&labels(&[
            ("app", "api"),
            ("pod-template-hash", "x"),
            ("env", "prod")
        ])),
        Some("app == 'api'".into())
    );
    assert_eq!(
        stable_selector(&labels(&[("team", "a"), ("pod-template-hash", "x")])),
        Some("team == 'a'".into())
    );
    assert_eq!(
        stable_selector(&labels(&[("controller-revision-hash", "x")])),
        None
    );
}

#[test]
fn one_policy_per_destination_group_with_a_rule_per_source() {
    let records = vec![
        flow(
            prod("frontend", "10.65.0.10", 40000),
            prod("backend", "10.65.0.20", 8080),
            "allow",
        ),
        flow(
            prod("frontend", "10.65.0.10", 40001),
            prod("backend", "10.65.0.20", 9090),
            "allow",
        ),
        flow(
            prod("backend", "10.65.0.20", 40002),
            prod("database", "10.65.0.30", 8080),
            "allow",
        ),
        // Denied today: left out. Another namespace: not this one's.
        flow(
            prod("frontend", "10.65.0.10", 40003),
            prod("database", "10.65.0.30", 8080),
            "deny",
        ),
        flow(
            peer(
                "10.66.0.5",
                40004,
                Some("mon"),
                Some("prometheus"),
                &[("app", "prometheus")],
            ),
            prod("backend", "10.65.0.20", 9100),
            "allow",
        ),
        flow(
            peer("192.0.2.7", 5000, None, None, &[]),
            prod("backend", "10.65.0.20", 8080),
            "allow",
        ),
        flow(
            prod("backend", "10.65.0.20", 1),
            peer("10.66.0.5", 9090, Some("mon"), Some("prometheus"), &[]),
            "allow",
        ),
    ];
    let s = suggest(&records, "prod");
    let names: Vec<&str> = s.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["suggested-backend", "suggested-database"]);
    assert_eq!(s.connections, 5);
    assert_eq!(s.left_out.len(), 1, "{:?}", s.left_out);
    assert!(s.left_out[0].contains("prod/frontend -> prod/database TCP/8080: denied"));
    let yaml = s.to_yaml();
    for want in [
        "  selector: \"app == 'backend'\"",
        "    # prod/frontend -> prod/backend TCP/8080 (x2, last",
        "        selector: \"app == 'frontend'\"\n      destination:\n        ports: [8080, 9090]",
        "        namespaceSelector: \"projectcalico.org/name == 'mon'\"",
        "        nets: [192.0.2.7/32]",
        "# left out: prod/frontend -> prod/database TCP/8080",
    ] {
        assert!(yaml.contains(want), "{want:?} in\n{yaml}");
    }
    assert!(!yaml.contains("pod-template-hash"), "{yaml}");
}

/// The suggestion for the examples' traffic loads as the datastore does, and
/// judged by the evaluator each suggested policy alone denies none of the
/// observed connections, and denies one that was not observed.
#[test]
fn the_suggestion_loads_and_keeps_every_observed_connection() {
    use crate::flows::report::{connection_of, per_policy, Observed};
    let observed = vec![
        flow(
            prod("frontend", "10.65.0.10", 40000),
            prod("backend", "10.65.0.20", 8080),
            "allow",
        ),
        flow(
            prod("backend", "10.65.0.20", 40001),
            prod("database", "10.65.0.30", 8080),
            "allow",
        ),
    ];
    let yaml = suggest(&observed, "prod").to_yaml();
    let tmp = tempfile::tempdir().unwrap();
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for f in ["00-endpoints.yaml", "10-database-allow-from-backend.yaml"] {
        std::fs::copy(examples.join(f), tmp.path().join(f)).unwrap();
    }
    std::fs::write(tmp.path().join("50-suggested.yaml"), &yaml).unwrap();
    let loaded = crate::model::load_paths(&[tmp.path()]);
    assert!(!loaded.has_errors(), "{:?}\n{yaml}", loaded.diagnostics);
    let model = loaded.model;
    let as_observed = |f: &Flow| Observed {
        flow: connection_of(f),
        seen: None,
    };
    let reports = per_policy(
        &model,
        &[],
        &observed.iter().map(as_observed).collect::<Vec<_>>(),
        false,
    );
    assert_eq!(reports.len(), 2, "{yaml}");
    for r in &reports {
        assert!(r.is_clean(), "{r:#?}\n{yaml}");
    }
    // database -> backend was not seen: the backend's policy would deny it.
    let new = flow(
        prod("database", "10.65.0.30", 40002),
        prod("backend", "10.65.0.20", 8080),
        "allow",
    );
    let reports = per_policy(&model, &[], &[as_observed(&new)], false);
    let backend = reports
        .iter()
        .find(|r| r.policy == "snp/prod/suggested-backend")
        .unwrap();
    assert_eq!(backend.newly_denied.len(), 1, "{backend:#?}");
}

//! Loading, validation and conversion tests over YAML text.
use std::path::PathBuf;

use super::ir::*;
use super::*;
use crate::selector::Selector;

fn load(text: &str) -> Loaded {
    load::load_sources(&[(PathBuf::from("t.yaml"), text.to_string())])
}

fn errors(l: &Loaded) -> Vec<&Diagnostic> {
    l.diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect()
}

/// The only error of a single-document text: (line, field, message).
fn only_error(text: &str) -> (usize, String, String) {
    let l = load(text);
    let e = errors(&l);
    assert_eq!(e.len(), 1, "expected one error, got {:#?}", l.diagnostics);
    (e[0].line, e[0].field.clone(), e[0].message.clone())
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[test]
fn seed_examples_load() {
    let files = [
        "00-endpoints.yaml",
        "10-database-allow-from-backend.yaml",
        "20-backend-lockdown-staged.yaml",
    ]
    .map(|f| PathBuf::from(EXAMPLES).join(f));
    let l = load_paths(&files);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let m = &l.model;
    assert_eq!(m.endpoints.len(), 3);
    let enforced: Vec<_> = m
        .policies
        .iter()
        .filter(|p| !p.id.kind.is_staged())
        .collect();
    let staged: Vec<_> = m
        .policies
        .iter()
        .filter(|p| p.id.kind.is_staged())
        .collect();
    assert_eq!(enforced.len(), 1);
    assert_eq!(staged.len(), 1);
    assert_eq!(
        enforced[0].id.to_string(),
        "gnp:database-allow-from-backend"
    );
    assert_eq!(staged[0].staged_action, Some(StagedAction::Set));
    let db = m.endpoints.iter().find(|e| e.name == "database").unwrap();
    assert_eq!(db.interface.as_deref(), Some("calidemodb"));
    assert_eq!(db.ips.len(), 2);
    assert_eq!(db.profiles, vec!["kns.prod".to_string()]);
    assert_eq!(db.named_ports[0].port, 8080);
    assert_eq!(db.labels.get("pcns.env").map(String::as_str), Some("prod"));
    assert!(enforced[0].selector.evaluate(&db.labels));
    let rule = &enforced[0].ingress[0];
    assert_eq!(rule.protocol, Some(Protocol::TCP));
    let backend = m.endpoints.iter().find(|e| e.name == "backend").unwrap();
    assert!(rule
        .source
        .selector
        .as_ref()
        .unwrap()
        .evaluate(&backend.labels));
    assert!(!rule.source.selector.as_ref().unwrap().evaluate(&db.labels));
    // kns.prod is synthesized: allow everything both ways.
    let kns = m.profiles.iter().find(|p| p.name == "kns.prod").unwrap();
    assert_eq!(kns.ingress[0].action, Action::Allow);
    assert_eq!(kns.egress[0].action, Action::Allow);
    assert_eq!(m.tiers.len(), 3);
}

#[test]
fn examples_and_safe_mode_load_together() {
    let safe_mode = concat!(env!("CARGO_MANIFEST_DIR"), "/../safe-mode");
    let l = load_paths(&[EXAMPLES, safe_mode]);
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.endpoints.len(), 3);
    // The safe-mode directory adds the allow-everything policy (and the lint
    // warnings about unordered policies sorting after it).
    let names: Vec<_> = l
        .model
        .policies
        .iter()
        .map(|p| p.id.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            "database-allow-from-backend",
            "backend-lockdown-staged",
            "zzz-final-allow-everything"
        ]
    );
}

const GNP_HEAD: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: p
spec:
";

/// A GlobalNetworkPolicy whose spec is `spec` (indented by the caller); spec lines start at line 6.
fn gnp(spec: &str) -> String {
    format!("{GNP_HEAD}{spec}")
}

#[test]
fn unknown_field_is_an_error_with_its_line() {
    let (line, field, msg) = only_error(&gnp(
        "  selector: all()\n  ingress:\n    - action: Allow\n      sauce: {}\n",
    ));
    assert_eq!(line, 9);
    assert_eq!(field, "spec.ingress[0].sauce");
    assert!(msg.contains("unknown field `sauce`"), "{msg}");
    assert!(msg.contains("expected one of"), "{msg}");
}

#[test]
fn wrong_type_names_the_field() {
    let (line, field, msg) = only_error(&gnp("  order: high\n"));
    assert_eq!((line, field.as_str()), (6, "spec.order"));
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn bad_selector_reports_position_and_reason() {
    let (line, field, msg) = only_error(&gnp(
        "  ingress:\n    - action: Allow\n      source:\n        selector: app == \n",
    ));
    assert_eq!(
        (line, field.as_str()),
        (9, "spec.ingress[0].source.selector")
    );
    assert!(msg.contains("does not parse at position"), "{msg}");
}

#[test]
fn diagnostic_display_format() {
    let l = load(&gnp("  selector: \"(\"\n"));
    let d = errors(&l)[0].to_string();
    assert!(
        d.starts_with(
            "t.yaml:6: error: GlobalNetworkPolicy/p spec.selector: selector `(` does not parse"
        ),
        "{d}"
    );
    // A file-level problem has no resource or field: one colon after the severity.
    let d = Diagnostic {
        severity: Severity::Error,
        file: PathBuf::from("gone.yaml"),
        line: 1,
        resource: String::new(),
        field: String::new(),
        message: "cannot read file".into(),
    };
    assert_eq!(d.to_string(), "gone.yaml:1: error: cannot read file");
    let d = Diagnostic {
        field: "items".into(),
        ..d
    };
    assert_eq!(d.to_string(), "gone.yaml:1: error: items: cannot read file");
}

#[test]
fn icmp_rules() {
    let rule = |body: &str| gnp(&format!("  ingress:\n    - action: Allow\n{body}"));
    let (line, field, msg) = only_error(&rule("      icmp: {type: 8}\n"));
    assert_eq!((line, field.as_str()), (8, "spec.ingress[0].icmp"));
    assert!(msg.contains("must set protocol to ICMP or ICMPv6"));
    let (line, field, msg) = only_error(&rule("      protocol: ICMP\n      icmp: {code: 1}\n"));
    assert_eq!((line, field.as_str()), (9, "spec.ingress[0].icmp.code"));
    assert!(msg.contains("without an ICMP type"));
    let (_, field, _) = only_error(&rule("      protocol: ICMP\n      notICMP: {type: 255}\n"));
    assert_eq!(field, "spec.ingress[0].notICMP.type");
    let (_, field, _) = only_error(&rule(
        "      protocol: ICMP\n      icmp: {type: 3, code: 256}\n",
    ));
    assert_eq!(field, "spec.ingress[0].icmp.code");
    let (_, field, msg) = only_error(&rule(
        "      protocol: ICMP\n      ipVersion: 6\n      icmp: {type: 3}\n",
    ));
    assert_eq!(field, "spec.ingress[0].ipVersion");
    assert!(msg.contains("ipVersion to 4"));
    let (_, field, _) = only_error(&rule("      notProtocol: ICMPv6\n      ipVersion: 4\n"));
    assert_eq!(field, "spec.ingress[0].ipVersion");
    // Calico checks the protocol for icmp only, not for notICMP.
    let ok = load(&rule("      notICMP: {type: 8}\n"));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    let ok = load(&rule(
        "      protocol: ICMPv6\n      icmp: {type: 128, code: 0}\n",
    ));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    let icmp = ok.model.policies[0].ingress[0].icmp.unwrap();
    assert_eq!((icmp.icmp_type, icmp.code), (128, Some(0)));
}

#[test]
fn port_rules() {
    let rule = |body: &str| gnp(&format!("  egress:\n    - action: Allow\n{body}"));
    let (line, field, msg) = only_error(&rule("      destination:\n        ports: [80]\n"));
    assert_eq!(
        (line, field.as_str()),
        (9, "spec.egress[0].destination.ports")
    );
    assert!(msg.contains("TCP, UDP or SCTP"), "{msg}");
    let (_, field, _) = only_error(&rule(
        "      protocol: ICMP\n      source:\n        notPorts: [http]\n",
    ));
    assert_eq!(field, "spec.egress[0].source.notPorts");
    let (line, field, msg) = only_error(&rule("      protocol: TCP\n      destination:\n        ports:\n          - 80\n          - \"90:80\"\n"));
    assert_eq!(
        (line, field.as_str()),
        (12, "spec.egress[0].destination.ports[1]")
    );
    assert!(msg.contains("minimum above its maximum"));
    let (_, field, _) = only_error(&rule(
        "      protocol: UDP\n      destination:\n        ports: [0]\n",
    ));
    assert_eq!(field, "spec.egress[0].destination.ports[0]");
    let many: Vec<String> = (1..=51).map(|p| p.to_string()).collect();
    let (_, field, msg) = only_error(&rule(&format!(
        "      protocol: TCP\n      destination:\n        ports: [{}]\n",
        many.join(", ")
    )));
    assert_eq!(field, "spec.egress[0].destination.ports");
    assert!(msg.contains("at most 50"));
    let ok = load(&rule(
        "      protocol: SCTP\n      destination:\n        ports: [80, \"1000:2000\", http]\n",
    ));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    assert_eq!(
        ok.model.policies[0].egress[0].destination.ports,
        vec![
            PortMatch::Range(PortRange {
                first: 80,
                last: 80
            }),
            PortMatch::Range(PortRange {
                first: 1000,
                last: 2000
            }),
            PortMatch::Named("http".into())
        ]
    );
}

#[test]
fn protocol_and_action_values() {
    let rule = |body: &str| gnp(&format!("  ingress:\n{body}"));
    let (_, field, msg) = only_error(&rule("    - action: allow\n"));
    assert_eq!(field, "spec.ingress[0].action");
    assert!(msg.contains("accepted: Allow, Deny, Pass, Log"));
    let (_, field, _) = only_error(&rule("    - protocol: TCP\n"));
    assert_eq!(field, "spec.ingress[0].action");
    let (_, field, msg) = only_error(&rule("    - action: Deny\n      protocol: tcp\n"));
    assert_eq!(field, "spec.ingress[0].protocol");
    assert!(msg.contains("case-sensitive"));
    let (_, field, _) = only_error(&rule("    - action: Deny\n      notProtocol: 256\n"));
    assert_eq!(field, "spec.ingress[0].notProtocol");
    let (_, field, _) = only_error(&rule("    - action: Deny\n      ipVersion: 5\n"));
    assert_eq!(field, "spec.ingress[0].ipVersion");
    let ok = load(&rule(
        "    - action: Log\n    - action: Pass\n      protocol: 132\n      notProtocol: UDPLite\n",
    ));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    let p = &ok.model.policies[0];
    assert_eq!(p.ingress[0].action, Action::Log);
    assert_eq!(p.ingress[1].action, Action::Pass);
    assert_eq!(p.ingress[1].protocol, Some(Protocol::SCTP));
    assert_eq!(p.ingress[1].not_protocol, Some(Protocol::UDPLITE));
}

#[test]
fn nets_and_ip_version() {
    let rule = |body: &str| gnp(&format!("  ingress:\n    - action: Allow\n{body}"));
    let l = load(&rule(
        "      ipVersion: 4\n      source:\n        nets: [10.0.0.0/8, \"fd00::/8\"]\n",
    ));
    let e: Vec<_> = errors(&l)
        .iter()
        .map(|d| (d.line, d.field.as_str(), d.message.as_str()))
        .collect();
    assert_eq!(
        e,
        [
            (
                10,
                "spec.ingress[0].source.nets[1]",
                "net `fd00::/8` is not IPv4 but the rule has ipVersion 4"
            ),
            (
                10,
                "spec.ingress[0].source.nets",
                "rule contains both IPv4 and IPv6 CIDRs"
            ),
        ]
    );
    // Families may not mix across the rule's lists either.
    let (line, field, _) = only_error(&rule(
        "      source:\n        nets: [10.0.0.0/8]\n      destination:\n        notNets: [\"fd00::/8\"]\n",
    ));
    assert_eq!(
        (line, field.as_str()),
        (11, "spec.ingress[0].destination.notNets")
    );
    let (_, field, _) = only_error(&rule(
        "      destination:\n        notNets: [10.0.0.0/40]\n",
    ));
    assert_eq!(field, "spec.ingress[0].destination.notNets[0]");
    let nets: Vec<String> = (0..257)
        .map(|i| format!("10.0.{}.{}/32", i / 256, i % 256))
        .collect();
    let (_, field, msg) = only_error(&rule(&format!(
        "      source:\n        nets: [{}]\n",
        nets.join(", ")
    )));
    assert_eq!(field, "spec.ingress[0].source.nets");
    assert!(msg.contains("at most 256"));
}

#[test]
fn limits_on_rules_and_selector_length() {
    let rules = "    - action: Allow\n".repeat(1025);
    let (line, field, _) = only_error(&gnp(&format!("  ingress:\n{rules}")));
    assert_eq!((line, field.as_str()), (6, "spec.ingress"));
    let long = format!("a == '{}'", "x".repeat(1020));
    let (_, field, msg) = only_error(&gnp(&format!("  selector: \"{long}\"\n")));
    assert_eq!(field, "spec.selector");
    assert!(msg.contains("at most 1024"));
}

#[test]
fn host_endpoint_policy_modes() {
    let (_, field, msg) = only_error(&gnp(
        "  doNotTrack: true\n  preDNAT: true\n  applyOnForward: true\n",
    ));
    assert_eq!(field, "spec.preDNAT");
    assert!(msg.contains("cannot both be true"));
    let (line, field, _) = only_error(&gnp("  doNotTrack: true\n"));
    assert_eq!((line, field.as_str()), (5, "spec.applyOnForward"));
    let l = load(&gnp("  preDNAT: true\n  applyOnForward: true\n  types: [Ingress, Egress]\n  egress:\n    - action: Allow\n"));
    let fields: Vec<_> = errors(&l).iter().map(|d| d.field.clone()).collect();
    assert_eq!(fields, ["spec.types", "spec.egress"]);
    let ok = load(&gnp(
        "  doNotTrack: true\n  applyOnForward: true\n  ingress:\n    - action: Deny\n",
    ));
    assert!(ok.diagnostics.is_empty());
    assert!(ok.model.policies[0].do_not_track && ok.model.policies[0].apply_on_forward);
}

/// One spec type serves every Calico policy kind; the cluster-scoped fields
/// are still unknown fields in a namespaced policy, with serde's message.
#[test]
fn namespaced_policies_refuse_cluster_scoped_fields() {
    for (field, value) in [
        ("doNotTrack", "false"),
        ("preDNAT", "true"),
        ("applyOnForward", "true"),
        ("namespaceSelector", "all()"),
    ] {
        let text = format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\n  \
             namespace: prod\nspec:\n  selector: all()\n  {field}: {value}\n"
        );
        let (line, got, msg) = only_error(&text);
        assert_eq!((line, got.as_str()), (8, format!("spec.{field}").as_str()));
        assert!(
            msg.starts_with(&format!("unknown field `{field}`, expected one of `tier`")),
            "{msg}"
        );
    }
    let staged_delete =
        gnp("  stagedAction: Delete\n  doNotTrack: false\n  namespaceSelector: ''\n")
            .replace("kind: Global", "kind: StagedGlobal");
    let l = load(&staged_delete);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let staged_delete = gnp("  stagedAction: Delete\n  applyOnForward: true\n")
        .replace("kind: Global", "kind: StagedGlobal");
    assert_eq!(only_error(&staged_delete).1, "spec.stagedAction");
}

/// The one document of `text`, read as the loader reads it (YAML, then JSON).
fn from_yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    let docs = yaml::parse_all(text).unwrap();
    assert_eq!(docs.len(), 1, "{text}");
    serde_json::from_value(docs[0].to_json()).unwrap()
}

/// A document with an error lowers to nothing, and each wrong value is
/// reported: nothing stands in for it (an unknown action is not Allow, an
/// unknown protocol is not "any protocol").
#[test]
fn a_wrong_value_lowers_to_nothing() {
    for rule in [
        "    - action: allow\n",
        "    - action: Allow\n      protocol: tcp\n",
        "    - action: Allow\n      notProtocol: 300\n",
        "    - action: Allow\n      protocol: TCP\n      destination:\n        ports: [0]\n",
        "    - action: Allow\n      source:\n        selector: 'a =='\n",
    ] {
        let text = gnp(&format!("  ingress:\n{rule}"));
        let doc: resources::Object<resources::PolicySpec> = from_yaml(&text);
        let (lowered, issues) = lower::lower(&resources::Resource::GlobalNetworkPolicy(doc));
        assert!(lowered.is_none(), "{rule}");
        assert_eq!(issues.len(), 1, "{rule}: {issues:?}");
        assert!(load(&text).model.policies.is_empty(), "{rule}");
    }
}

#[test]
fn types_and_staged_action_values() {
    let (_, field, _) = only_error(&gnp("  types: [ingress]\n"));
    assert_eq!(field, "spec.types[0]");
    let (_, field, _) = only_error(&gnp("  types: [Ingress, Ingress]\n"));
    assert_eq!(field, "spec.types[1]");
    let (_, field, msg) = only_error(&gnp("  stagedAction: Set\n"));
    assert_eq!(field, "spec.stagedAction");
    assert!(msg.contains("only valid in staged kinds"));
    let staged = gnp("  stagedAction: Remove\n").replace("kind: Global", "kind: StagedGlobal");
    let (_, field, msg) = only_error(&staged);
    assert_eq!(field, "spec.stagedAction");
    assert!(msg.contains("Set, Delete, Learn, Ignore"));
    for (value, want) in [
        ("Set", StagedAction::Set),
        ("Delete", StagedAction::Delete),
        ("Learn", StagedAction::Learn),
        ("Ignore", StagedAction::Ignore),
    ] {
        let l = load(
            &gnp(&format!("  stagedAction: {value}\n"))
                .replace("kind: Global", "kind: StagedGlobal"),
        );
        assert!(l.diagnostics.is_empty());
        assert_eq!(l.model.policies[0].staged_action, Some(want));
        assert_eq!(l.model.policies[0].id.to_string(), "sgnp:p");
    }
}

#[test]
fn rules_for_an_unlisted_type_warn() {
    let l = load(&gnp("  types: [Ingress]\n  egress:\n    - action: Allow\n"));
    assert!(!l.has_errors());
    assert_eq!(l.diagnostics[0].severity, Severity::Warning);
    assert_eq!(l.diagnostics[0].field, "spec.egress");
}

#[test]
fn names_and_namespaces() {
    let (line, field, _) = only_error(&gnp("").replace("name: p", "name: Bad_Name"));
    assert_eq!((line, field.as_str()), (4, "metadata.name"));
    let (_, field, _) = only_error(&gnp("").replace("name: p", "name: p\n  namespace: x"));
    assert_eq!(field, "metadata.namespace");
    // Calico's policy name rules: at most one dot, except knp.default./ossg.default. prefixes.
    let (_, field, _) = only_error(&gnp("").replace("name: p", "name: a.b.c"));
    assert_eq!(field, "metadata.name");
    assert!(load(&gnp("").replace("name: p", "name: security.p"))
        .diagnostics
        .is_empty());
    let np = |name: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: a\n")
    };
    assert!(load(&np("knp.default.x.y")).diagnostics.is_empty());
    let (_, field, _) = only_error(&np("x.y.z"));
    assert_eq!(field, "metadata.name");
    let (_, field, _) =
        only_error(&gnp("").replace("name: p", "name: p\n  labels:\n    'bad key': x"));
    assert_eq!(field, "metadata.labels.bad key");
}

#[test]
fn unknown_kind_and_missing_kind() {
    let (line, field, msg) =
        only_error("apiVersion: projectcalico.org/v3\nkind: Gadget\nmetadata: {name: x}\n");
    assert_eq!((line, field.as_str()), (2, "kind"));
    assert!(msg.contains("accepted:"));
    let (line, field, _) = only_error("apiVersion: v1\nmetadata: {name: x}\n");
    assert_eq!((line, field.as_str()), (1, "kind"));
    let (_, _, msg) = only_error("- just\n- a list\n");
    assert!(msg.contains("must be a mapping"));
}

#[test]
fn one_broken_document_leaves_the_others_loaded() {
    let text = format!(
        "{}---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: broken\nspec:\n  selector: [unclosed\n---\n{}",
        gnp("  order: 1\n"),
        gnp("  order: 2\n").replace("name: p", "name: q")
    );
    let l = load(&text);
    let e = errors(&l);
    assert_eq!(e.len(), 1, "{:#?}", l.diagnostics);
    assert!(e[0].message.contains("YAML syntax error"));
    assert!(e[0].line >= 13, "{:?}", e[0]);
    let names: Vec<_> = l
        .model
        .policies
        .iter()
        .map(|p| p.id.name.as_str())
        .collect();
    assert_eq!(names, ["p", "q"]);
    // A semantic error also drops only its own document.
    let text = format!(
        "{}---\n{}",
        gnp("  order: x\n"),
        gnp("").replace("name: p", "name: q")
    );
    let l = load(&text);
    assert_eq!(errors(&l).len(), 1);
    assert_eq!(l.model.policies.len(), 1);
}

#[test]
fn duplicates_are_an_error_on_the_later_one() {
    let text = format!("{}---\n{}", gnp("  order: 1\n"), gnp("  order: 2\n"));
    let (line, field, msg) = only_error(&text);
    assert_eq!((line, field.as_str()), (11, "metadata.name"));
    assert!(msg.contains("already defined at t.yaml:1"), "{msg}");
    let l = load(&text);
    assert_eq!(l.model.policies[0].order, Some(1.0));
    // Same name in another kind or namespace is no duplicate.
    let np = |ns: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: {ns}\n")
    };
    let l = load(&format!("{}---\n{}---\n{}", gnp(""), np("a"), np("b")));
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
}

#[test]
fn tiers_must_exist() {
    let (_, field, msg) = only_error(&gnp("  tier: security\n"));
    assert_eq!(field, "spec.tier");
    assert!(msg.contains("does not exist"));
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: security\nspec:\n  order: 100\n  defaultAction: Pass\n---\n";
    let l = load(&format!("{tier}{}", gnp("  tier: security\n")));
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.policies[0].tier, "security");
    let names: Vec<_> = l.model.tiers.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["security", "kube-admin", "default", "kube-baseline"]
    );
    assert_eq!(l.model.tiers[0].default_action, TierDefault::Pass);
    let (_, field, _) = only_error(&tier.replace("Pass", "Allow").replace("---\n", ""));
    assert_eq!(field, "spec.defaultAction");
    let (_, field, _) = only_error(&tier.replace("security", "a.b").replace("---\n", ""));
    assert_eq!(field, "metadata.name");
}

#[test]
fn builtin_tiers_can_be_redefined() {
    // Calico pins the built-in tiers' orders; the default action may change.
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: default\nspec:\n  order: 5\n";
    let (line, field, msg) = only_error(tier);
    assert_eq!((line, field.as_str()), (6, "spec.order"));
    assert!(msg.contains("must be 1000000"), "{msg}");
    let tier = "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: default\nspec:\n  order: 1000000\n  defaultAction: Pass\n";
    let l = load(tier);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let d = l.model.tiers.iter().find(|t| t.name == "default").unwrap();
    assert_eq!(d.default_action, TierDefault::Pass);
    assert_eq!(l.model.tiers.len(), 3);
    let (admin, base) = (&l.model.tiers[0], &l.model.tiers[2]);
    assert_eq!(
        (admin.name.as_str(), admin.default_action),
        ("kube-admin", TierDefault::Pass)
    );
    assert_eq!(
        (base.name.as_str(), base.order),
        ("kube-baseline", Some(10_000_000.0))
    );
}

const NS_PROD: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: prod
  labels:
    team: red
---
apiVersion: v1
kind: Namespace
metadata:
  name: dev
  labels:
    team: blue
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: api
  namespace: prod
  labels:
    tier: gold
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: api
  namespace: prod
  labels:
    app: api
spec:
  interfaceName: caliapi
  serviceAccountName: api
  ipNetworks: [10.0.0.1/32]
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: web
  namespace: dev
  labels:
    app: web
spec:
  interfaceName: caliweb
  ipNetworks: [10.0.0.2]
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels:
    host: node1
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.168.0.1]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata:
  name: internet
  labels:
    app: web
spec:
  nets: [0.0.0.0/0]
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata:
  name: partners
  namespace: prod
  labels:
    app: web
spec:
  nets: [203.0.113.0/24]
";

/// The world of NS_PROD plus `extra`, and the label sets of its endpoints and sets by name.
fn world(extra: &str) -> (Loaded, BTreeMap<String, Labels>) {
    let l = load(&format!("{NS_PROD}---\n{extra}"));
    assert!(!l.has_errors(), "{:#?}", l.diagnostics);
    let mut by_name: BTreeMap<String, Labels> = l
        .model
        .endpoints
        .iter()
        .map(|e| (e.name.clone(), e.labels.clone()))
        .collect();
    for s in &l.model.network_sets {
        by_name.insert(s.name.clone(), s.labels.clone());
    }
    (l, by_name)
}

use std::collections::BTreeMap;

/// Names (sorted) of the endpoints and network sets `s` matches.
fn matched(s: &Selector, world: &BTreeMap<String, Labels>) -> Vec<String> {
    world
        .iter()
        .filter(|(_, l)| s.evaluate(l))
        .map(|(n, _)| n.clone())
        .collect()
}

#[test]
fn endpoint_labels_are_the_full_set() {
    let (l, w) = world("");
    assert_eq!(
        w["api"],
        labels(&[
            ("app", "api"),
            // Set by the API server on every Namespace (1.21+), by the model
            // where the datastore lacks it.
            ("pcns.kubernetes.io/metadata.name", "prod"),
            ("pcns.projectcalico.org/name", "prod"),
            ("pcns.team", "red"),
            ("pcsa.projectcalico.org/name", "api"),
            ("pcsa.tier", "gold"),
            ("projectcalico.org/namespace", "prod"),
            ("projectcalico.org/orchestrator", "k8s"),
            ("projectcalico.org/serviceaccount", "api"),
        ])
    );
    assert_eq!(w["node1-eth0"], labels(&[("host", "node1")]));
    assert_eq!(w["internet"], labels(&[("app", "web")]));
    assert_eq!(w["partners"]["projectcalico.org/namespace"], "prod");
    assert_eq!(w["partners"]["pcns.team"], "red");
    let web = l.model.endpoints.iter().find(|e| e.name == "web").unwrap();
    assert_eq!(
        web.ips,
        vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(web.profiles, ["kns.dev"]);
    let host = l
        .model
        .endpoints
        .iter()
        .find(|e| e.name == "node1-eth0")
        .unwrap();
    assert_eq!(
        (host.kind, host.interface.as_deref()),
        (EndpointKind::Host, Some("eth0"))
    );
    assert!(host.profiles.is_empty());
    let kns: Vec<_> = l.model.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(kns, ["kns.dev", "kns.prod"]);
    assert_eq!(l.model.failsafes, Failsafes::default());
}

#[test]
fn profile_labels_to_apply_are_inherited_and_defined_profiles_kept() {
    let (l, w) = world(
        "apiVersion: projectcalico.org/v3
kind: Profile
metadata:
  name: kns.prod
spec:
  labelsToApply:
    zone: a
    app: overridden
  ingress:
    - action: Deny
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: h2
spec:
  node: node1
  expectedIPs: [192.168.0.2]
  profiles: [kns.prod]
",
    );
    assert_eq!(w["api"]["zone"], "a");
    assert_eq!(w["api"]["app"], "api", "own labels win");
    assert_eq!(w["h2"]["zone"], "a");
    let p = l
        .model
        .profiles
        .iter()
        .find(|p| p.name == "kns.prod")
        .unwrap();
    assert_eq!(
        p.ingress[0].action,
        Action::Deny,
        "a defined kns profile is not replaced"
    );
}

#[test]
fn namespaced_policy_selectors_are_scoped() {
    let (l, w) = world(
        "apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: np
  namespace: prod
spec:
  selector: has(app)
  ingress:
    - action: Allow
      source:
        selector: app == 'web'
    - action: Allow
      source:
        namespaceSelector: team == 'blue'
        selector: app == 'web'
    - action: Allow
      source:
        namespaceSelector: all()
    - action: Allow
      source:
        namespaceSelector: global()
    - action: Allow
      source:
        notSelector: app == 'web'
    - action: Allow
      source:
        nets: [10.0.0.0/8]
    - action: Allow
      source:
        serviceAccounts:
          names: [api]
          selector: tier == 'gold'
",
    );
    let p = &l.model.policies[0];
    assert_eq!(p.id.to_string(), "np:prod/np");
    assert_eq!(matched(&p.selector, &w), ["api", "partners"]);
    let src = |i: usize| p.ingress[i].source.selector.as_ref();
    // Without namespaceSelector: only the policy's namespace.
    assert_eq!(matched(src(0).unwrap(), &w), ["partners"]);
    assert_eq!(matched(src(1).unwrap(), &w), ["web"]);
    // all(): any namespaced thing; global(): only non-namespaced things.
    assert_eq!(matched(src(2).unwrap(), &w), ["api", "partners", "web"]);
    assert_eq!(matched(src(3).unwrap(), &w), ["internet", "node1-eth0"]);
    // notSelector alone scopes the (implicit) selector to the namespace and stays unscoped itself.
    assert_eq!(matched(src(4).unwrap(), &w), ["api", "partners"]);
    let not = p.ingress[4].source.not_selector.as_ref().unwrap();
    assert_eq!(matched(not, &w), ["internet", "partners", "web"]);
    // Nets only: no selector at all (matches traffic from anywhere in the nets).
    assert!(src(5).is_none());
    assert_eq!(matched(src(6).unwrap(), &w), ["api"]);
}

#[test]
fn global_policy_selectors_are_not_scoped() {
    let (l, w) = world(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: g
spec:
  namespaceSelector: team == 'red'
  serviceAccountSelector: tier == 'gold'
  egress:
    - action: Allow
      destination:
        selector: app == 'web'
    - action: Allow
      destination:
        namespaceSelector: team == 'red'
",
    );
    let p = &l.model.policies[0];
    assert_eq!((p.ingress_type, p.egress_type), (false, true));
    assert_eq!(matched(&p.selector, &w), ["api"]);
    let dst = |i: usize| p.egress[i].destination.selector.as_ref().unwrap();
    assert_eq!(matched(dst(0), &w), ["internet", "partners", "web"]);
    assert_eq!(matched(dst(1), &w), ["api", "partners"]);
}

#[test]
fn types_default_from_rules() {
    let cases = [
        ("", (true, false)),
        ("  ingress:\n    - action: Allow\n", (true, false)),
        ("  egress:\n    - action: Allow\n", (false, true)),
        (
            "  ingress:\n    - action: Allow\n  egress:\n    - action: Allow\n",
            (true, true),
        ),
        ("  types: [Egress]\n", (false, true)),
        ("  types: [Ingress, Egress]\n", (true, true)),
    ];
    for (spec, want) in cases {
        let l = load(&gnp(spec));
        let p = &l.model.policies[0];
        assert_eq!((p.ingress_type, p.egress_type), want, "{spec}");
        assert_eq!(p.order, None);
        assert_eq!(p.tier, "default");
    }
}

const KNP_HEAD: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: k
  namespace: prod
spec:
";

#[test]
fn kubernetes_network_policy_conversion() {
    let (l, w) = world(&format!(
        "{KNP_HEAD}  podSelector: {{}}
  ingress:
    - from:
        - podSelector:
            matchLabels: {{app: api}}
        - namespaceSelector: {{}}
        - namespaceSelector:
            matchExpressions:
              - {{key: team, operator: In, values: [blue]}}
          podSelector:
            matchExpressions:
              - {{key: app, operator: Exists}}
        - ipBlock:
            cidr: 10.0.0.0/8
            except: [10.1.0.0/16]
      ports:
        - port: 80
        - port: 81
        - protocol: UDP
          port: 5000
          endPort: 5010
        - port: http
  egress:
    - {{}}
"
    ));
    let p = &l.model.policies[0];
    assert_eq!(p.id.to_string(), "knp:prod/k");
    assert_eq!((p.tier.as_str(), p.order), ("default", Some(1000.0)));
    // policyTypes absent: Ingress, plus Egress because there are egress rules.
    assert_eq!((p.ingress_type, p.egress_type), (true, true));
    // Empty podSelector: every pod of the namespace (not the network set).
    assert_eq!(matched(&p.selector, &w), ["api"]);
    // 2 protocols (TCP, UDP; sorted) x 4 peers.
    assert_eq!(p.ingress.len(), 8);
    let tcp = &p.ingress[0];
    assert_eq!(tcp.protocol, Some(Protocol::TCP));
    assert_eq!(
        tcp.destination.ports,
        vec![
            PortMatch::Named("http".into()),
            PortMatch::Range(PortRange {
                first: 80,
                last: 81
            })
        ]
    );
    assert_eq!(p.ingress[4].protocol, Some(Protocol::UDP));
    assert_eq!(
        p.ingress[4].destination.ports,
        vec![PortMatch::Range(PortRange {
            first: 5000,
            last: 5010
        })]
    );
    let src = |i: usize| p.ingress[i].source.selector.as_ref();
    assert_eq!(matched(src(0).unwrap(), &w), ["api"]);
    // namespaceSelector {}: pods in all namespaces.
    assert_eq!(matched(src(1).unwrap(), &w), ["api", "web"]);
    assert_eq!(matched(src(2).unwrap(), &w), ["web"]);
    assert!(src(3).is_none());
    assert_eq!(
        p.ingress[3].source.nets,
        vec!["10.0.0.0/8".parse().unwrap()]
    );
    assert_eq!(
        p.ingress[3].source.not_nets,
        vec!["10.1.0.0/16".parse().unwrap()]
    );
    // An empty egress rule allows everything.
    assert_eq!(p.egress.len(), 1);
    assert_eq!(p.egress[0].protocol, None);
    assert!(p.egress[0].destination.selector.is_none());
}

#[test]
fn kubernetes_policy_types_and_staged_kind() {
    let l = load(&format!(
        "{KNP_HEAD}  podSelector: {{matchLabels: {{app: a}}}}\n  policyTypes: [Egress]\n"
    ));
    let p = &l.model.policies[0];
    assert_eq!((p.ingress_type, p.egress_type), (false, true));
    let staged = format!("{KNP_HEAD}  stagedAction: Delete\n  podSelector: {{}}\n")
        .replace("networking.k8s.io/v1", "projectcalico.org/v3")
        .replace("kind: NetworkPolicy", "kind: StagedKubernetesNetworkPolicy");
    let l = load(&staged);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let p = &l.model.policies[0];
    assert_eq!(p.id.to_string(), "sknp:prod/k");
    assert_eq!(p.staged_action, Some(StagedAction::Delete));
    assert_eq!(p.id.kind.enforced(), PolicyKind::KubernetesNetworkPolicy);
}

#[test]
fn kubernetes_policy_validation() {
    let knp = |spec: &str| format!("{KNP_HEAD}{spec}");
    let (line, field, _) = only_error(&knp("  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8}\n          podSelector: {}\n"));
    assert_eq!(
        (line, field.as_str()),
        (9, "spec.ingress[0].from[0].ipBlock")
    );
    let (_, field, _) = only_error(&knp(
        "  ingress:\n    - from:\n        - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n",
    ));
    assert_eq!(field, "spec.ingress[0].from[0].ipBlock.except[0]");
    let (_, field, _) = only_error(&knp(
        "  egress:\n    - ports:\n        - {port: 90, endPort: 80}\n",
    ));
    assert_eq!(field, "spec.egress[0].ports[0].endPort");
    let (_, field, _) = only_error(&knp(
        "  egress:\n    - ports:\n        - {protocol: ICMP}\n",
    ));
    assert_eq!(field, "spec.egress[0].ports[0].protocol");
    let (_, field, _) = only_error(&knp(
        "  podSelector:\n    matchExpressions:\n      - {key: a, operator: Equals}\n",
    ));
    assert_eq!(field, "spec.podSelector.matchExpressions[0].operator");
    let (_, field, _) = only_error(&knp("  policyTypes: [ingress]\n"));
    assert_eq!(field, "spec.policyTypes[0]");
    let (_, field, _) = only_error(&knp("  stagedAction: Set\n"));
    assert_eq!(field, "spec.stagedAction");
    let (_, field, _) = only_error(&knp("  ingress:\n    - from:\n        - {}\n"));
    assert_eq!(field, "spec.ingress[0].from[0]");
}

#[test]
fn endpoint_validation() {
    let wep = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: prod\nspec:\n  interfaceName: caliw\n";
    let (line, field, _) = only_error(&format!("{wep}  ipNetworks: [10.0.0.300/32]\n"));
    assert_eq!((line, field.as_str()), (8, "spec.ipNetworks[0]"));
    let (_, field, _) = only_error(&format!(
        "{wep}  ports:\n    - {{name: http, protocol: ICMP, port: 80}}\n"
    ));
    assert_eq!(field, "spec.ports[0].protocol");
    let (_, field, _) = only_error(&format!(
        "{wep}  ports:\n    - {{name: http, protocol: TCP, port: 0}}\n"
    ));
    assert_eq!(field, "spec.ports[0].port");
    let hep = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: h\nspec:\n  node: n1\n";
    let (_, field, msg) = only_error(hep);
    assert_eq!(field, "spec");
    assert!(msg.contains("interfaceName or expectedIPs"));
    let l = load(&format!(
        "{hep}  interfaceName: eth0\n  profiles: [missing]\n"
    ));
    assert!(!l.has_errors());
    assert_eq!(l.diagnostics[0].field, "spec.profiles[0]");
    assert_eq!(l.model.endpoints.len(), 1);
}

#[test]
fn unsupported_calico_features_are_rejected_clearly() {
    let (_, field, _) = only_error(&gnp(
        "  ingress:\n    - action: Allow\n      http: {methods: [GET]}\n",
    ));
    assert_eq!(field, "spec.ingress[0].http");
    // A cluster-scoped policy's `services` must name the namespace.
    let (_, field, _) = only_error(&gnp(
        "  egress:\n    - action: Allow\n      destination:\n        services: {name: kubernetes}\n",
    ));
    assert_eq!(field, "spec.egress[0].destination.services.namespace");
}

#[test]
fn profile_pass_is_a_warning() {
    let l = load("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: p\nspec:\n  ingress:\n    - action: Pass\n");
    assert!(!l.has_errors());
    assert_eq!(l.diagnostics[0].field, "spec.ingress[0].action");
    assert_eq!(l.diagnostics[0].line, 7);
}

#[test]
fn global_selector_only_in_rule_namespace_selectors() {
    let (_, field, msg) = only_error(&gnp("  selector: global()\n"));
    assert_eq!(field, "spec.selector");
    assert!(msg.contains("only be used in an EntityRule namespaceSelector"));
    let rule = |body: &str| {
        gnp(&format!(
            "  ingress:\n    - action: Allow\n      source:\n{body}"
        ))
    };
    let (_, field, _) = only_error(&rule("        selector: global()\n"));
    assert_eq!(field, "spec.ingress[0].source.selector");
    let (_, field, msg) = only_error(&rule("        namespaceSelector: global() && a == 'b'\n"));
    assert_eq!(field, "spec.ingress[0].source.namespaceSelector");
    assert!(msg.contains("cannot be combined"));
    assert!(load(&rule("        namespaceSelector: global()\n"))
        .diagnostics
        .is_empty());
}

#[test]
fn staged_delete_must_have_an_empty_spec() {
    let staged = |spec: &str| gnp(spec).replace("kind: Global", "kind: StagedGlobal");
    assert!(load(&staged("  stagedAction: Delete\n  tier: default\n"))
        .diagnostics
        .is_empty());
    let (line, field, _) = only_error(&staged("  stagedAction: Delete\n  selector: all()\n"));
    assert_eq!((line, field.as_str()), (6, "spec.stagedAction"));
    let sknp = "apiVersion: projectcalico.org/v3\nkind: StagedKubernetesNetworkPolicy\nmetadata:\n  name: k\n  namespace: a\nspec:\n  stagedAction: Delete\n  policyTypes: [Ingress]\n";
    let (_, field, _) = only_error(sknp);
    assert_eq!(field, "spec.stagedAction");
}

/// A network set is not bound by a rule's 256 nets (Calico has no cap; threat
/// feeds hold tens of thousands: `compile::tests::network_set_of_100k_nets_is_compiled`
/// loads 100,000); above the sanity bound it is one clear error, without
/// parsing every entry.
#[test]
fn network_sets_hold_up_to_a_million_nets() {
    let head = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: feed\nspec:\n";
    let nets: Vec<String> = (0..300)
        .map(|i| format!("10.1.{}.{}/32", i / 256, i % 256))
        .collect();
    let ok = load(&format!("{head}  nets: [{}]\n", nets.join(", ")));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    assert_eq!(ok.model.network_sets[0].nets.len(), 300);
    let mut set: resources::Object<resources::NetworkSetSpec> =
        from_yaml(&format!("{head}  nets: []\n"));
    set.spec.nets = vec!["not a net".into(); lower::MAX_SET_NETS + 1];
    let (_, issues) = lower::lower(&resources::Resource::GlobalNetworkSet(set));
    assert_eq!(issues.len(), 1, "{:?}", &issues[..issues.len().min(3)]);
    assert_eq!(issues[0].field, "spec.nets");
    assert!(
        issues[0].message.contains("at most 1000000"),
        "{}",
        issues[0].message
    );
}

#[test]
fn network_sets_cannot_set_the_namespace_label() {
    let (line, field, _) = only_error(
        "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: s\n  namespace: a\n  labels:\n    projectcalico.org/namespace: b\nspec:\n  nets: [10.0.0.0/8]\n",
    );
    assert_eq!(
        (line, field.as_str()),
        (7, "metadata.labels.projectcalico.org/namespace")
    );
}

#[test]
fn endpoint_interfaces_and_unnamed_host_ports() {
    let wep = "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: prod\nspec:\n  interfaceName: caliw\n";
    let (_, field, _) = only_error(&wep.replace("caliw", "way-too-long-interface"));
    assert_eq!(field, "spec.interfaceName");
    let ok = load(&format!(
        "{wep}  ipNetworks: [10.0.0.9]\n  ports:\n    - {{protocol: TCP, port: 80, hostPort: 8080}}\n"
    ));
    assert!(ok.diagnostics.is_empty(), "{:#?}", ok.diagnostics);
    // The unnamed hostPort mapping is no named port for policy.
    assert!(ok.model.endpoints[0].named_ports.is_empty());
    let (_, field, _) = only_error(&format!(
        "{wep}  ports:\n    - {{protocol: TCP, port: 80}}\n"
    ));
    assert_eq!(field, "spec.ports[0].name");
    let hep = "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: h\nspec:\n  node: n1\n  interfaceName: \"*\"\n";
    let l = load(hep);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.endpoints[0].interface.as_deref(), Some("*"));
}

/// Rule cases translated from Calico's validator_test.go ("(API) Rule", "Protocol",
/// "ICMPFields", "Actions", "IP version", "Selectors"): (rule body under `- `, valid).
#[test]
fn calico_validator_rule_cases() {
    let cases: &[(&str, bool)] = &[
        ("action: Allow", true),
        ("action: Deny", true),
        ("action: Log", true),
        ("action: unknown", false),
        ("action: allowfoo", false),
        ("protocol: TCP", false), // no action
        ("{action: Allow, ipVersion: 4}", true),
        ("{action: Allow, ipVersion: 6}", true),
        ("{action: Allow, ipVersion: 0}", false),
        ("{action: Allow, protocol: UDPLite}", true),
        ("{action: Allow, protocol: 1}", true),
        ("{action: Allow, protocol: 255}", true),
        ("{action: Allow, protocol: '255'}", true),
        ("{action: Allow, protocol: '1'}", true),
        ("{action: Allow, protocol: 0}", false),
        ("{action: Allow, protocol: '256'}", false),
        ("{action: Allow, protocol: '0'}", false),
        ("{action: Allow, protocol: tcpfoo}", false),
        ("{action: Allow, protocol: footcp}", false),
        ("{action: Allow, protocol: tcp}", false),
        ("{action: Allow, protocol: ICMP, icmp: {}}", true),
        ("{action: Allow, protocol: ICMP, icmp: {type: 0}}", true),
        ("{action: Allow, protocol: ICMP, icmp: {type: 254}}", true),
        ("{action: Allow, protocol: ICMP, icmp: {type: 128, code: 0}}", true),
        ("{action: Allow, protocol: ICMP, icmp: {type: 128, code: 255}}", true),
        ("{action: Allow, protocol: ICMP, icmp: {code: 0}}", false),
        ("{action: Allow, protocol: ICMP, icmp: {type: 255}}", false),
        ("{action: Allow, protocol: ICMP, icmp: {type: 128, code: 256}}", false),
        ("{action: Allow, protocol: SCTP}", true),
        ("{action: Allow, protocol: 6, source: {ports: [1]}}", true),
        ("{action: Allow, protocol: 6, source: {ports: [foo]}}", true),
        ("{action: Allow, protocol: TCP, source: {ports: [foo]}}", true),
        ("{action: Allow, protocol: UDP, source: {ports: [foo]}}", true),
        ("{action: Allow, protocol: 7, source: {ports: []}}", true),
        ("{action: Allow, protocol: 17, source: {notPorts: [1]}}", true),
        ("{action: Allow, protocol: 100, source: {notPorts: []}}", true),
        ("{action: Allow, protocol: TCP, destination: {ports: [1]}}", true),
        ("{action: Allow, destination: {ports: [1]}}", false),
        ("{action: Allow, protocol: TCP, destination: {notPorts: [0]}}", false),
        ("{action: Allow, protocol: unknown, destination: {notPorts: [foo]}}", false),
        ("{action: Allow, protocol: SCTP, destination: {ports: []}}", true),
        ("{action: Allow, ipVersion: 6, protocol: ICMPv6, destination: {notPorts: []}}", true),
        ("{action: Allow, ipVersion: 4, icmp: {type: 0}}", false),
        ("{action: Allow, protocol: ICMP, icmp: {type: 0}}", true),
        ("{action: Allow, protocol: ICMPv6, icmp: {type: 0}}", true),
        ("{action: Allow, protocol: ICMP, ipVersion: 6}", false),
        ("{action: Allow, protocol: ICMPv6, ipVersion: 4}", false),
        ("{action: Allow, ipVersion: 4, protocol: ICMP, icmp: {type: 0}}", true),
        ("{action: Allow, ipVersion: 6, protocol: ICMPv6, icmp: {type: 0}}", true),
        ("{action: Allow, protocol: 7, source: {ports: [1]}}", false),
        ("{action: Allow, protocol: 100, source: {notPorts: [1]}}", false),
        ("{action: Allow, protocol: SCTP, destination: {ports: [1]}}", true),
        ("{action: Allow, ipVersion: 4, protocol: icmp, destination: {notPorts: [1]}}", false),
        ("{action: Allow, protocol: TCP, source: {ports: ['200:100']}}", false),
        ("{action: Allow, protocol: TCP, source: {notPorts: ['200:100']}}", false),
        ("{action: Allow, protocol: TCP, destination: {ports: ['200:100']}}", false),
        ("{action: Allow, protocol: TCP, destination: {notPorts: ['0:100']}}", false),
        ("{action: Allow, protocol: TCP, source: {nets: [1.2.3.0/26]}, destination: {nets: ['aabb:aabb::0000/122']}}", false),
        ("{action: Allow, protocol: TCP, source: {nets: ['aabb:aabb::/128']}, destination: {nets: [1.2.0.0/32]}}", false),
        ("{action: Allow, protocol: TCP, ipVersion: 6, source: {nets: [1.0.0.0/10]}, destination: {nets: [1.2.0.0/32]}}", false),
        ("{action: Allow, protocol: TCP, ipVersion: 6, source: {nets: [1.0.0.0/10]}, destination: {notNets: [1.2.0.0/32]}}", false),
        ("{action: Allow, protocol: TCP, ipVersion: 6, source: {nets: [1.2.3.4/32]}}", false),
        ("{action: Allow, protocol: TCP, ipVersion: 4, destination: {nets: ['aabb:aabb::ffff/128']}}", false),
        ("{action: Allow, metadata: {annotations: {foo: bar}}}", true),
        ("{action: Allow, metadata: {annotations: {'...': bar}}}", false),
        ("{action: Allow, source: {selector: 'foo == \"bar\"'}}", true),
        ("{action: Allow, source: {selector: 'has(calico/k8s_ns)'}}", true),
        ("{action: Allow, source: {selector: 'has(calico/k8s_ns/role)'}}", true),
        ("{action: Allow, source: {selector: 'has(calico/k8s_NS-.1/role)'}}", true),
        ("{action: Allow, source: {selector: 'thing=hello &'}}", false),
    ];
    for (body, valid) in cases {
        let l = load(&gnp(&format!("  ingress:\n    - {body}\n")));
        assert_eq!(!l.has_errors(), *valid, "{body}: {:#?}", l.diagnostics);
        if *valid {
            assert_eq!(l.model.policies.len(), 1, "{body}");
        } else {
            assert!(
                l.model.policies.is_empty(),
                "{body}: an invalid policy is left out"
            );
        }
    }
}

/// Label and endpoint cases from validator_test.go.
#[test]
fn calico_validator_label_and_endpoint_cases() {
    let profile = |key: &str, value: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: p\nspec:\n  labelsToApply:\n    '{key}': '{value}'\n")
    };
    let v63 = "x".repeat(63);
    let v64 = "x".repeat(64);
    assert!(!load(&profile("project.calico.org/my-valid-label", &v63)).has_errors());
    assert!(load(&profile("project.calico.org/my-valid-label", &v64)).has_errors());
    assert!(load(&profile(".mylabel", "value")).has_errors());
    assert!(load(&profile("my!nvalid-label", "value")).has_errors());
    assert!(load(&profile("my-invalid-label$", "value")).has_errors());
    assert!(load(&profile("ProjectCalico.org/label", "value")).has_errors());
    assert!(!load(&profile("projectcalico.org/Label", "value")).has_errors());

    let wep = |spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: w\n  namespace: n\nspec:\n{spec}")
    };
    let cases: &[(&str, bool)] = &[
        ("  interfaceName: cali012371237\n", true),
        ("  interfaceName: Valid_Iface.0-9\n", true),
        ("  interfaceName: interfaceTooLong\n", false),
        ("  interfaceName: Invalid&Intface\n", false),
        ("  interfaceName: 'Invalid:Intface'\n", false),
        ("  ipNetworks: [1.2.3.4/32]\n", false), // no interface
        (
            "  interfaceName: c\n  ipNetworks: [1.2.3.4/32, 1.2.0.0/32, 'aabb:aabb::ffff/128']\n",
            true,
        ),
        ("  interfaceName: c\n  ipNetworks: [1.2.3.0/26]\n", false),
        (
            "  interfaceName: c\n  ipNetworks: ['aabb:aabb::0000/122']\n",
            false,
        ),
        ("  interfaceName: c\n  containerID: Cath01234-G\n", true),
        ("  interfaceName: c\n  containerID: -abcdefg\n", false),
        ("  interfaceName: c\n  containerID: abcdeSg-\n", false),
        ("  interfaceName: c\n  containerID: abcde-j.g\n", false),
        (
            "  interfaceName: c\n  allowSpoofedSourcePrefixes: ['10.abcd']\n",
            false,
        ),
        (
            "  interfaceName: c\n  allowSpoofedSourcePrefixes: [10.0.0.1, 192.168.0.0/16]\n",
            true,
        ),
        (
            "  interfaceName: c\n  ports: [{name: a-valid-port, protocol: SCTP, port: 1234}]\n",
            true,
        ),
        (
            "  interfaceName: c\n  ports: [{name: '', protocol: UDP, port: 1234}]\n",
            false,
        ),
        (
            "  interfaceName: c\n  ports: [{protocol: UDP, port: 1234, hostPort: 2345}]\n",
            true,
        ),
        (
            "  interfaceName: c\n  ports: [{name: a-valid-port, port: 1234}]\n",
            false,
        ),
        (
            "  interfaceName: c\n  ports: [{name: a-valid-port, protocol: 123, port: 1234}]\n",
            false,
        ),
        (
            "  interfaceName: c\n  ports: [{name: a-valid-port, protocol: TCP}]\n",
            false,
        ),
    ];
    for (spec, valid) in cases {
        let l = load(&wep(spec));
        assert_eq!(!l.has_errors(), *valid, "{spec}: {:#?}", l.diagnostics);
    }
    let hep = |spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: h\nspec:\n{spec}")
    };
    let cases: &[(&str, bool)] = &[
        ("  interfaceName: eth0\n  node: node01\n", true),
        ("  expectedIPs: [1.2.3.4, 'aabb:aabb::ffff']\n  node: node01\n", true),
        ("  interfaceName: eth0\n", false),
        ("  node: node01\n", false),
        ("  interfaceName: '*'\n  node: node01\n", true),
        ("  interfaceName: eth0\n  node: node01\n  ports: [{protocol: TCP, port: 1234}]\n", false),
        ("  interfaceName: eth0\n  node: node01\n  profiles: [knp.default.fun, knp.default.funner.11234-a]\n", true),
        ("  interfaceName: eth0\n  node: node01\n  profiles: ['.fun']\n", false),
    ];
    for (spec, valid) in cases {
        let l = load(&hep(spec));
        assert_eq!(!l.has_errors(), *valid, "{spec}: {:#?}", l.diagnostics);
    }
}

#[test]
fn explicitly_listed_namespace_profiles_are_synthesized() {
    let l = load(
        "apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: h
spec:
  node: n1
  interfaceName: eth0
  profiles: [kns.ops]
",
    );
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let p = &l.model.profiles[0];
    assert_eq!(p.name, "kns.ops");
    assert_eq!(p.ingress[0].action, Action::Allow);
    let h = &l.model.endpoints[0];
    assert_eq!(h.labels["pcns.projectcalico.org/name"], "ops");
}

/// Calico's update processors substitute `all()` textually in a
/// GlobalNetworkPolicy's combined selector, but not in a NetworkPolicy's.
#[test]
fn policy_level_service_account_all_follows_calico() {
    let (l, w) = world(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: g
spec:
  serviceAccountSelector: all()
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: ns-all
spec:
  namespaceSelector: all()
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: n
  namespace: dev
spec:
  serviceAccountSelector: all()
",
    );
    let by_name = |n: &str| l.model.policies.iter().find(|p| p.id.name == n).unwrap();
    // Only endpoints with a service account.
    assert_eq!(matched(&by_name("g").selector, &w), ["api"]);
    // Only namespaced things.
    assert_eq!(
        matched(&by_name("ns-all").selector, &w),
        ["api", "partners", "web"]
    );
    // No substitution for namespaced policies: every endpoint of the namespace.
    assert_eq!(matched(&by_name("n").selector, &w), ["web"]);
    assert!(by_name("n").apply_on_forward);
}

#[test]
fn workloads_without_addresses_are_left_out_and_cannot_spoof_labels() {
    let wep = "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: w
  namespace: prod
  labels:
    app: w
    pcns.team: spoofed
    pcsa.role: spoofed
spec:
  interfaceName: caliw
";
    let l = load(wep);
    assert!(!l.has_errors());
    assert_eq!(l.diagnostics[0].field, "spec.ipNetworks");
    assert_eq!(l.diagnostics[0].severity, Severity::Warning);
    assert!(l.model.endpoints.is_empty());
    let l = load(&format!("{wep}  ipNetworks: [10.0.0.9/32]\n"));
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    let labels = &l.model.endpoints[0].labels;
    assert_eq!(labels.get("app").map(String::as_str), Some("w"));
    assert!(!labels.contains_key("pcns.team"));
    assert!(!labels.contains_key("pcsa.role"));
}

#[test]
fn cross_document_checks_also_report_on_invalid_documents() {
    let l = load(&gnp("  tier: missing\n  selector: \"(\"\n"));
    let fields: Vec<_> = errors(&l).iter().map(|d| d.field.as_str()).collect();
    assert_eq!(fields, ["spec.tier", "spec.selector"]);
    assert!(l.model.policies.is_empty());
    // An invalid document does not make a later valid namesake a duplicate.
    let text = format!("{}---\n{}", gnp("  order: x\n"), gnp("  order: 2\n"));
    let l = load(&text);
    assert_eq!(errors(&l).len(), 1);
    assert_eq!(l.model.policies[0].order, Some(2.0));
}

// ---- Bounded parsing and Calico's number and address grammar (issue 12) ----

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

fn error_lines(l: &Loaded) -> Vec<(String, usize, String)> {
    errors(l)
        .iter()
        .map(|d| {
            let file = d.file.file_name().unwrap().to_string_lossy().into_owned();
            (file, d.line, d.message.clone())
        })
        .collect()
}

/// The crash cases of issue 12 (a 20,000-level block sequence, a 548-byte
/// alias bomb, ...) are errors naming file and line, on a thread with the
/// daemon's blocking-thread stack (2 MiB), and the rest of the datastore loads.
#[test]
fn hostile_documents_are_errors_and_the_rest_of_the_datastore_loads() {
    let (l, elapsed) = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let started = std::time::Instant::now();
            let l = load_paths(&[EXAMPLES, CORPUS]);
            (l, started.elapsed())
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    let errs = error_lines(&l);
    let has = |file: &str, line: usize, text: &str| {
        assert!(
            errs.iter()
                .any(|(f, l, m)| f == file && *l == line && m.contains(text)),
            "no `{text}` at {file}:{line} in {errs:#?}"
        )
    };
    has("deep-block-sequence.yaml", 3, "nest more than 64 levels");
    has("deep-flow-sequence.yaml", 2, "nest more than 64 levels");
    has("deep-mapping.yaml", 66, "nest more than 64 levels");
    has("deep-aliases.yaml", 3, "nest more than 64 levels");
    has("alias-bomb.yaml", 10, "copy more than 100000 nodes");
    has(
        "non-finite-ports.yaml",
        11,
        "`1e400` is not a finite number",
    );
    has("non-finite-ports.yaml", 22, "`.nan` is not a finite number");
    has("non-finite-ports.yaml", 33, "`.inf` is not a finite number");
    has("leading-zero-cidr.yaml", 10, "leading zero");
    // Everything from the examples loads as it does alone.
    let alone = load_paths(&[EXAMPLES]);
    assert_eq!(l.model.policies.len(), alone.model.policies.len());
    assert_eq!(l.model.endpoints.len(), alone.model.endpoints.len());
}

#[test]
fn ports_must_be_finite_integers_not_named_inf_or_nan() {
    for v in ["1e400", ".nan", ".inf", ".NaN", "-.inf"] {
        let text = format!(
            "{GNP_HEAD}  ingress:\n    - action: Deny\n      protocol: TCP\n      destination:\n        ports: [{v}]\n"
        );
        let l = load(&text);
        assert!(l.model.policies.is_empty(), "{v}: {:#?}", l.model.policies);
        let e = errors(&l);
        assert_eq!(e.len(), 1, "{v}: {:#?}", l.diagnostics);
        assert!(e[0].message.contains("not a finite number"), "{v}: {e:?}");
        assert_eq!(e[0].line, text.lines().count(), "{v}: {e:?}");
    }
    // A named port spelled like one stays a named port when quoted.
    let text = format!(
        "{GNP_HEAD}  ingress:\n    - action: Deny\n      protocol: TCP\n      destination:\n        ports: ['inf']\n"
    );
    assert!(errors(&load(&text)).is_empty());
}

#[test]
fn nets_with_leading_zeros_are_rejected_everywhere() {
    let gnp = format!(
        "{GNP_HEAD}  ingress:\n    - action: Deny\n      source:\n        nets: [010.065.000.010/32]\n"
    );
    let (line, field, message) = only_error(&gnp);
    assert_eq!(line, gnp.lines().count());
    assert_eq!(field, "spec.ingress[0].source.nets[0]");
    assert!(message.contains("leading zero"), "{message}");
    let knp = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: k
spec:
  podSelector: {}
  ingress:
    - from:
        - ipBlock:
            cidr: 010.0.0.0/8
";
    let (line, field, _) = only_error(knp);
    assert_eq!(
        (line, field.as_str()),
        (10, "spec.ingress[0].from[0].ipBlock.cidr")
    );
    let wep = "apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata:
  name: w
  namespace: default
spec:
  interfaceName: caliw
  ipNetworks: [10.0.0.01/32]
";
    let (line, field, message) = only_error(wep);
    assert_eq!((line, field.as_str()), (8, "spec.ipNetworks[0]"));
    assert!(message.contains("leading zero"), "{message}");
}

#[test]
fn a_file_over_the_size_bound_is_an_error_and_not_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = String::from("# padding\n");
    while text.len() <= load::MAX_FILE_BYTES {
        text.push_str("# ...................................................................\n");
    }
    std::fs::write(&big, &text).unwrap();
    std::fs::write(dir.path().join("ok.yaml"), GNP_HEAD).unwrap();
    let l = load_paths(&[dir.path()]);
    let errs = error_lines(&l);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].0, "big.yaml");
    assert!(
        errs[0].2.contains("at most 16777216 bytes (16 MiB)"),
        "{errs:?}"
    );
    assert_eq!(l.model.policies.len(), 1);
}

#[test]
fn documents_past_the_per_file_bound_are_an_error() {
    let mut text = "#\n---\n".repeat(load::MAX_DOCUMENTS);
    let line = text.lines().count() + 1;
    text.push_str(GNP_HEAD);
    let l = load(&text);
    let errs = error_lines(&l);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].1, line);
    assert!(errs[0].2.contains("more than 50000 documents"), "{errs:?}");
    assert!(l.model.policies.is_empty());
}

/// Kubernetes objects reach the same loader as JSON values: the same bounds.
#[test]
fn kubernetes_objects_are_bounded_like_yaml_documents() {
    let mut deep = serde_json::json!("x");
    for _ in 0..200 {
        deep = serde_json::json!([deep]);
    }
    let doc = |name: &str, spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "projectcalico.org/v3",
            "kind": "GlobalNetworkPolicy",
            "metadata": {"name": name},
            "spec": spec,
        })
    };
    let l = load::load_values([
        (
            PathBuf::from("kubernetes:GlobalNetworkPolicy/deep"),
            doc("deep", serde_json::json!({"selector": deep})),
        ),
        (
            PathBuf::from("kubernetes:GlobalNetworkPolicy/ok"),
            doc("ok", serde_json::json!({})),
        ),
    ]);
    let e = errors(&l);
    assert_eq!(e.len(), 1, "{:#?}", l.diagnostics);
    assert_eq!(
        e[0].file,
        PathBuf::from("kubernetes:GlobalNetworkPolicy/deep")
    );
    assert!(e[0].message.contains("nest more than 64 levels"), "{e:?}");
    assert_eq!(l.model.policies.len(), 1);
}

/// Kubernetes mounts a ConfigMap as `..<timestamp>/` (the files), `..data` (a
/// symlink to it) and one symlink per file into `..data/`: each document loads once.
#[test]
fn a_configmap_mount_loads_each_document_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let stamp = d.join("..2024_01_01_00_00_00.123456789");
    std::fs::create_dir(&stamp).unwrap();
    std::fs::write(stamp.join("gnp.yaml"), GNP_HEAD).unwrap();
    std::os::unix::fs::symlink("..2024_01_01_00_00_00.123456789", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/gnp.yaml", d.join("gnp.yaml")).unwrap();
    let l = load_paths(&[d]);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
    assert_eq!(l.model.policies.len(), 1);
    // Hidden files are skipped too (an editor's lock or backup file).
    std::fs::write(d.join(".#gnp.yaml"), GNP_HEAD).unwrap();
    let l = load_paths(&[d]);
    assert!(l.diagnostics.is_empty(), "{:#?}", l.diagnostics);
}

/// A symlink out of the datastore is not read (its changes would not be
/// watched): an error naming both places; a link loop inside it is read once.
#[test]
fn symlinks_out_of_the_datastore_are_refused_and_loops_read_once() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("gnp.yaml"), GNP_HEAD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::os::unix::fs::symlink(outside.path().join("gnp.yaml"), d.join("linked.yaml")).unwrap();
    std::os::unix::fs::symlink(outside.path(), d.join("linked-dir")).unwrap();
    std::os::unix::fs::symlink(".", d.join("loop")).unwrap();
    std::fs::create_dir(d.join("sub")).unwrap();
    std::fs::write(
        d.join("sub/own.yaml"),
        GNP_HEAD.replace("name: p", "name: own"),
    )
    .unwrap();
    let l = load_paths(&[d]);
    let refused: Vec<_> = l
        .diagnostics
        .iter()
        .filter(|x| x.message.contains("outside the datastore"))
        .collect();
    assert_eq!(refused.len(), 2, "{:#?}", l.diagnostics);
    assert!(refused.iter().any(|x| x.file.ends_with("linked.yaml")));
    assert!(refused.iter().any(|x| x.file.ends_with("linked-dir")));
    assert_eq!(
        l.model.policies.len(),
        1,
        "sub/own.yaml once, through the loop too"
    );
}

/// The bounds leave room for big legitimate documents: a GlobalNetworkSet of
/// 100,000 nets (~1.9 MB, one document) loads.
#[test]
fn a_network_set_of_100000_nets_is_within_the_bounds() {
    let mut text = String::from(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: big\n  labels: {role: blocked}\nspec:\n  nets:\n",
    );
    for i in 0..100_000u32 {
        let [_, a, b, c] = i.to_be_bytes();
        text.push_str(&format!("    - 10.{a}.{b}.{c}/32\n"));
    }
    assert!(text.len() < load::MAX_FILE_BYTES);
    let chunks = yaml::split_documents(&text);
    let node = yaml::parse_chunk(&chunks[0]).unwrap().unwrap();
    let nets = node.to_json()["spec"]["nets"].as_array().unwrap().len();
    assert_eq!(nets, 100_000);
    // Through the loader: no parse error (validation has its own cap on nets).
    let l = load(&text);
    assert!(
        l.diagnostics.iter().all(|d| !d.field.is_empty()),
        "{:#?}",
        l.diagnostics
    );
}

/// A large file's documents are parsed on several threads: the documents and
/// diagnostics (lines, order) are those of parsing them one after the other.
#[test]
fn a_large_file_parsed_on_threads_is_parsed_as_on_one() {
    let mut text = String::new();
    for i in 0..400 {
        let action = match i % 7 {
            0 => "Nope",                   // a validation error
            3 => "Allow\n    bad: [\n  x", // a syntax error
            _ => "Deny",
        };
        text.push_str(&gnp(&format!(
            "  selector: app == 'a{i}'\n  ingress:\n    - action: {action}\n      source: {{nets: [10.0.{}.0/24]}}\n",
            i % 250
        )).replacen("name: p", &format!("name: p{i}"), 1));
        text.push_str("---\n");
    }
    assert!(
        text.len() > 64 * 1024,
        "large enough to be parsed on threads"
    );
    let file = std::path::Path::new("big.yaml");
    let chunks = yaml::split_documents(&text);
    let summary = |threads| {
        let parsed = load::parse_chunks(file, &chunks, threads);
        let (docs, diags): (Vec<_>, Vec<_>) = parsed.into_iter().unzip();
        let ids: Vec<(String, usize)> = docs
            .concat()
            .iter()
            .map(|d| (d.id.to_string(), d.line))
            .collect();
        (ids, diags.concat())
    };
    let (one, many) = (summary(1), summary(3));
    assert_eq!(one, many);
    let syntax_errors = (0..400).filter(|i| i % 7 == 3).count();
    assert_eq!(
        one.0.len(),
        400 - syntax_errors,
        "a syntax error leaves its document out"
    );
    assert!(one.1.len() >= 100, "{:#?}", one.1);
    // Lines are the file's: the last document's is near the end.
    assert!(one.0.last().unwrap().1 > text.lines().count() - 20);
}

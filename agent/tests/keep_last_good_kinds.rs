//! Nothing enforced is lost or loosened by a rejected update, for every kind
//! of resource: a world with one file per kind; each file in turn gets an
//! update the validator rejects, and the reload that keeps the last good state
//! (what `agent run` installs) must compile to exactly the tables of before,
//! with the rejection reported.
use agent::compile::compile;
use agent::datastore::FileDatastore;

/// One file per kind, each taking part in a verdict: the namespace's and the
/// service account's labels select, the network set is denied by a tiered
/// policy, the profile allows, the host endpoint is policed.
const WORLD: &[(&str, &str, &str)] = &[
    (
        "namespace.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: prod\n  labels: {team: red}\n",
        "team: red}",
    ),
    (
        "serviceaccount.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: api\n  namespace: prod\n  labels: {tier: gold}\n",
        "tier: gold}",
    ),
    (
        "tier.yaml",
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata:\n  name: security\nspec:\n  order: 100\n",
        "order: 100",
    ),
    (
        "globalnetworkset.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkSet\nmetadata:\n  name: blocked\n  labels: {feed: blocked}\nspec:\n  nets: [192.0.2.0/24, 198.51.100.7/32]\n",
        "198.51.100.7/32",
    ),
    (
        "networkset.yaml",
        "apiVersion: projectcalico.org/v3\nkind: NetworkSet\nmetadata:\n  name: partners\n  namespace: prod\n  labels: {role: partner}\nspec:\n  nets: [203.0.113.0/24]\n",
        "203.0.113.0/24",
    ),
    (
        "profile.yaml",
        "apiVersion: projectcalico.org/v3\nkind: Profile\nmetadata:\n  name: open\nspec:\n  ingress: [{action: Allow}]\n  egress: [{action: Allow}]\n",
        "action: Allow}]\n  egress",
    ),
    (
        "hostendpoint.yaml",
        "apiVersion: projectcalico.org/v3\nkind: HostEndpoint\nmetadata:\n  name: node1-eth0\n  labels: {role: node}\nspec:\n  node: node1\n  interfaceName: eth0\n  expectedIPs: [192.168.0.1]\n",
        "192.168.0.1",
    ),
    (
        "endpoints.yaml",
        "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: api\n  namespace: prod\n  labels: {app: api}\nspec:\n  interfaceName: caliapi\n  serviceAccountName: api\n  ipNetworks: [10.65.0.2/32]\n  profiles: [open]\n---\napiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: web\n  namespace: prod\n  labels: {app: web}\nspec:\n  interfaceName: caliweb\n  ipNetworks: [10.65.0.3/32]\n",
        "10.65.0.3/32",
    ),
    (
        "globalnetworkpolicy.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: security.deny-feed\nspec:\n  tier: security\n  order: 1\n  selector: all()\n  types: [Ingress, Egress]\n  ingress:\n    - {action: Deny, source: {selector: feed == 'blocked'}}\n    - {action: Pass}\n  egress:\n    - {action: Deny, destination: {selector: feed == 'blocked'}}\n    - {action: Pass}\n",
        "action: Deny, source",
    ),
    (
        "networkpolicy.yaml",
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: api-ingress\n  namespace: prod\nspec:\n  selector: app == 'api'\n  serviceAccountSelector: tier == 'gold'\n  ingress:\n    - {action: Allow, protocol: TCP, source: {selector: role == 'partner'}, destination: {ports: [8080]}}\n    - {action: Allow, protocol: TCP, source: {namespaceSelector: team == 'red', selector: app == 'web'}}\n",
        "ports: [8080]",
    ),
];

/// What each kind's bad update replaces its marker with: a value the
/// validator rejects (so the document fails, not the file's syntax).
fn broken(marker: &str) -> String {
    match marker {
        "team: red}" | "tier: gold}" => "'bad key!': x}".into(),
        "order: 100" => "order: lots".into(),
        "action: Allow}]\n  egress" => "action: Allowish}]\n  egress".into(),
        "action: Deny, source" => "action: Denyish, source".into(),
        "ports: [8080]" => "ports: [80800]".into(),
        ip if !ip.contains('/') => format!("{ip}.9"),
        net => net.replace('/', "/99"),
    }
}

#[test]
fn a_rejected_update_of_any_kind_keeps_the_tables_of_before() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text, _) in WORLD {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let ds = FileDatastore::new(dir.path());
    let good = ds.load();
    assert!(!good.has_errors(), "{:#?}", good.diagnostics);
    let before = compile(&good.model).unwrap().tables;

    for (file, text, marker) in WORLD {
        assert!(text.contains(marker), "{file}: marker {marker:?}");
        let bad = text.replacen(marker, &broken(marker), 1);
        std::fs::write(dir.path().join(file), &bad).unwrap();
        let now = ds.load_keeping(&good.documents);
        let errors: Vec<_> = now
            .loaded
            .diagnostics
            .iter()
            .filter(|d| d.file.ends_with(file))
            .collect();
        assert!(
            !errors.is_empty(),
            "{file}: the bad update was not rejected"
        );
        assert!(!now.kept.is_empty(), "{file}: nothing reported as kept");
        assert_eq!(now.loaded.model, good.model, "{file}: the model changed");
        let after = compile(&now.loaded.model).unwrap().tables;
        assert_eq!(after, before, "{file}: the tables changed");
        std::fs::write(dir.path().join(file), text).unwrap();
    }
}

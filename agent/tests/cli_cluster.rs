//! The offline commands on a datastore that describes a cluster, read from
//! standard input (`-`): endpoints addressed as `namespace/pod`, unknown names
//! suggesting the closest ones.
use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs the agent with `input` on standard input.
fn agent(args: &[&str], input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agent binary");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// node1's web pod and node2's db pod (no interface: a peer on node1), with
/// WorkloadEndpoint names as Calico gives them, in a `kubectl get -o yaml` List.
const CLUSTER: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata:
    name: node1-k8s-web-eth0
    namespace: shop
    labels: {app: web}
  spec:
    node: node1
    pod: web
    interfaceName: cali1234567890a
    ipNetworks: [10.244.1.7/32]
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata:
    name: node2-k8s-db-eth0
    namespace: shop
    labels: {app: db}
  spec:
    node: node2
    pod: db
    ipNetworks: [10.244.2.9/32]
- apiVersion: crd.projectcalico.org/v1
  kind: GlobalNetworkPolicy
  metadata:
    name: default.db-only-from-web
  spec:
    selector: app == 'db'
    ingress:
    - action: Allow
      source:
        selector: app == 'web'
"#;

fn eval(from: &str, to: &str) -> Output {
    agent(
        &[
            "eval",
            "--datastore",
            "-",
            "--from",
            from,
            "--to",
            to,
            "--protocol",
            "TCP",
            "--port",
            "5432",
        ],
        CLUSTER,
    )
}

#[test]
fn check_reads_standard_input() {
    let ok = agent(&["check", "-"], CLUSTER);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stdout));
    assert!(text(&ok.stderr).contains("1 policy, 2 endpoints loaded; 0 errors"));
    let bad = agent(
        &["check", "-"],
        &CLUSTER.replace("action: Allow", "action: Nope"),
    );
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        text(&bad.stdout),
        "-:32: error: GlobalNetworkPolicy/db-only-from-web spec.ingress[0].action: action \
         `Nope` is not valid (case-sensitive); accepted: Allow, Deny, Pass, Log\n"
    );
}

#[test]
fn eval_takes_pods_and_workload_endpoint_names() {
    let out = eval("shop/web", "shop/db");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("flow: shop/web (10.244.1.7) -> shop/db (10.244.2.9) TCP"),
        "{stdout}"
    );
    assert!(stdout.contains("enforced: allow"), "{stdout}");
    assert!(stdout.contains("gnp:db-only-from-web"), "{stdout}");
    let by_wep = eval("shop/node1-k8s-web-eth0", "shop/node2-k8s-db-eth0");
    assert_eq!(
        text(&by_wep.stdout),
        stdout,
        "the same endpoints, shown by pod"
    );
    let reverse = eval("shop/db", "shop/web");
    assert!(text(&reverse.stdout).contains("enforced: allow"));
}

#[test]
fn eval_with_a_typo_suggests_the_closest_names() {
    let out = eval("shop/wbe", "shop/db");
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "error: no endpoint \"shop/wbe\" (expected namespace/pod of a workload endpoint, a host \
         endpoint name, or an IP); did you mean shop/web?\n"
    );
    let unknown = eval("ops/prometheus", "shop/db");
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no endpoint \"ops/prometheus\""));
}

#[test]
fn matrix_rows_and_columns_are_pods() {
    let out = agent(&["matrix", "--datastore", "-", "--port", "5432"], CLUSTER);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "TCP/5432  (each cell: enforced pending; * = pending differs)\n\
         from \\ to  shop/db  shop/web\n\
         shop/db    -        ✓ ✓\n\
         shop/web   ✓ ✓      -\n\n"
    );
}

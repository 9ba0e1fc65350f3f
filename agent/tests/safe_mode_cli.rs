//! `agent safe-mode on|off`, run as the binary on a datastore directory.
use std::path::Path;
use std::process::{Command, Output};

const HOST: &str = r#"apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: node1-eth0, labels: {role: node}}
spec: {node: node1, interfaceName: eth0, expectedIPs: [192.168.0.1]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: node-lockdown}
spec:
  selector: role == 'node'
  types: [Ingress]
"#;

const UNORDERED: &str = r#"apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-order}
spec:
  selector: role == 'node'
  types: [Egress]
  egress: [{action: Deny}]
"#;

fn agent(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("safe-mode")
        .args(args)
        .arg("--datastore")
        .arg(dir)
        .env("RUST_LOG", "off")
        .output()
        .expect("run agent safe-mode")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn on_warns_about_masked_policies_and_off_refuses_a_lockout_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("host.yaml"), HOST).unwrap();
    std::fs::write(dir.path().join("unordered.yaml"), UNORDERED).unwrap();
    let net = dir.path().join("zzz-final-allow-everything.yaml");

    let on = agent(dir.path(), &["on"]);
    assert!(on.status.success(), "{}", text(&on));
    assert!(net.exists());
    let out = text(&on);
    assert!(out.contains("safe mode on"), "{out}");
    assert!(
        out.contains("GlobalNetworkPolicy/no-order") && out.contains("has no order"),
        "the unordered policy is masked by the net: {out}"
    );
    let again = agent(dir.path(), &["on"]);
    assert!(text(&again).contains("already on"), "{}", text(&again));

    // The host endpoint's ingress policy denies everything, SSH (a failsafe
    // port) included: only the failsafe list would keep it open without the net.
    let off = agent(dir.path(), &["off"]);
    assert_eq!(off.status.code(), Some(2), "{}", text(&off));
    let out = text(&off);
    assert!(out.contains("refusing to turn safe mode off"), "{out}");
    assert!(out.contains("node-lockdown") && out.contains("22"), "{out}");
    assert!(net.exists(), "a refused off keeps the net");

    let forced = agent(dir.path(), &["off", "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert!(!net.exists());
    let again = agent(dir.path(), &["off"]);
    assert!(text(&again).contains("already off"), "{}", text(&again));
}

#[test]
fn off_without_a_lockout_removes_the_net() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for e in std::fs::read_dir(examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
        }
    }
    let on = agent(dir.path(), &["on", "--order", "5000"]);
    assert!(on.status.success(), "{}", text(&on));
    let written =
        std::fs::read_to_string(dir.path().join("zzz-final-allow-everything.yaml")).unwrap();
    assert!(written.contains("order: 5000"), "{written}");
    let check = Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("check")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(check.status.success(), "the net is valid policy: {check:?}");
    let off = agent(dir.path(), &["off"]);
    assert!(off.status.success(), "{}", text(&off));
    assert!(!dir.path().join("zzz-final-allow-everything.yaml").exists());
}

//! `agent check` and `agent promote`, run as the binary.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run agent")
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn check_accepts_the_examples() {
    let out = agent(&["check", examples().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout(&out), "");
}

#[test]
fn check_reports_errors_with_lines_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: bad
spec:
  ingress:
    - action: Allow
      destination:
        ports: [80]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: good
",
    )
    .unwrap();
    let out = agent(&["check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(
        lines[0],
        format!(
            "{}:9: error: GlobalNetworkPolicy/bad spec.ingress[0].destination.ports: ports (numeric or named) need the rule's protocol to be TCP, UDP or SCTP",
            file.display()
        )
    );
}

#[test]
fn check_warnings_exit_0() {
    // The safe-mode net plus an unordered deny on the same endpoints: a lint warning.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deny.yaml"),
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: deny-backend
spec:
  selector: all()
  ingress:
    - action: Deny
",
    )
    .unwrap();
    let safe_mode = examples().join("../safe-mode");
    let out = agent(&[
        "check",
        examples().to_str().unwrap(),
        safe_mode.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains(": warning: GlobalNetworkPolicy/deny-backend spec.order: has no order"),
        "{text}"
    );
    assert!(text.contains("zzz-final-allow-everything"), "{text}");
}

#[test]
fn promote_rewrites_the_staged_example() {
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "00-endpoints.yaml",
        "10-database-allow-from-backend.yaml",
        "20-backend-lockdown-staged.yaml",
    ] {
        std::fs::copy(examples().join(f), dir.path().join(f)).unwrap();
    }
    let out = agent(&[
        "promote",
        "--datastore",
        dir.path().to_str().unwrap(),
        "StagedGlobalNetworkPolicy/backend-lockdown-staged",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).contains("promoted to GlobalNetworkPolicy/backend-lockdown-staged"));
    let text = std::fs::read_to_string(dir.path().join("20-backend-lockdown-staged.yaml")).unwrap();
    assert!(
        text.starts_with("# Staged: would default-deny"),
        "comments kept: {text}"
    );
    assert!(text.contains("\nkind: GlobalNetworkPolicy\n"));
    let out = agent(&["check", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    // Promoting again finds nothing staged.
    let out = agent(&[
        "promote",
        "--datastore",
        dir.path().to_str().unwrap(),
        "sgnp/backend-lockdown-staged",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn promote_rejects_enforced_kinds() {
    let out = agent(&[
        "promote",
        "--datastore",
        "/nonexistent",
        "GlobalNetworkPolicy/x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a staged kind"));
}

#[test]
fn promote_namespaced_delete_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("np.yaml");
    let text = "# Enforced policy.
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  selector: app == 'web'
---
# Staged deletion of it.
apiVersion: projectcalico.org/v3
kind: StagedNetworkPolicy
metadata:
  name: web
  namespace: shop
spec:
  stagedAction: Delete
---
# Untouched.
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: web
  namespace: other
spec:
  selector: app == 'web'
";
    std::fs::write(&file, text).unwrap();
    // Without -n the namespace is `default`, where there is nothing to promote.
    let out = agent(&[
        "promote",
        "--datastore",
        dir.path().to_str().unwrap(),
        "StagedNetworkPolicy/web",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = agent(&[
        "promote",
        "--datastore",
        dir.path().to_str().unwrap(),
        "snp/web",
        "-n",
        "shop",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("deleted NetworkPolicy/shop/web"),
        "{}",
        stdout(&out)
    );
    let after = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        after,
        "# Untouched.
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata:
  name: web
  namespace: other
spec:
  selector: app == 'web'
"
    );
    let out = agent(&["check", dir.path().to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn check_warns_when_a_host_policy_would_deny_a_failsafe_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("host.yaml"),
        "apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth0
  labels: {role: node}
spec:
  node: node1
  interfaceName: eth0
  expectedIPs: [192.168.0.1]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: host-lockdown
spec:
  selector: role == 'node'
  types: [Ingress]
  ingress:
    - action: Deny
",
    )
    .unwrap();
    let config = dir.path().join("agent-config.yaml");
    std::fs::write(
        &config,
        "failsafeInbound:\n  - {protocol: tcp, port: 2222}\nfailsafeOutbound: []\n",
    )
    .unwrap();
    let out = agent(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        dir.path().join("host.yaml").to_str().unwrap(),
    ]);
    // Warnings only: exit 0.
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("lockout: warning: host endpoint node1-eth0: inbound tcp/2222")
            && text.contains("gnp:host-lockdown rule 0"),
        "{text}"
    );
    // Calico's defaults without --config: one warning per default port, 9 inbound
    // (the deny rule) and 9 outbound (no egress policy: a host endpoint's default deny).
    let out = agent(&["check", dir.path().join("host.yaml").to_str().unwrap()]);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 18, "{text}");
    assert!(text.contains("outbound udp/53"), "{text}");
    assert!(text.contains("default deny"), "{text}");
    // A broken config is an error that names the field.
    std::fs::write(&config, "failsafeInbound: [{protocol: icmp, port: 1}]\n").unwrap();
    let out = agent(&[
        "check",
        "--config",
        config.to_str().unwrap(),
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failsafeInbound[0].protocol"),
        "{out:?}"
    );
}

/// The regression corpus of issue 12 (a 20,000-level block sequence killed
/// `agent check`; an alias bomb grew to gigabytes): errors with file and line.
#[test]
fn check_reports_hostile_files_instead_of_crashing() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let started = std::time::Instant::now();
    let out = agent(&[
        "check",
        corpus.to_str().unwrap(),
        examples().to_str().unwrap(),
    ]);
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let text = stdout(&out);
    for (file, line) in [
        ("deep-block-sequence.yaml", 3),
        ("deep-flow-sequence.yaml", 2),
        ("alias-bomb.yaml", 10),
        ("non-finite-ports.yaml", 11),
        ("leading-zero-cidr.yaml", 10),
    ] {
        let at = format!("{}:{line}: error:", corpus.join(file).display());
        assert!(text.contains(&at), "no `{at}` in\n{text}");
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("overflow"),
        "{stderr}"
    );
}

/// A fake daemon that answers one `status` request with `reply`.
fn fake_daemon(socket: &Path, reply: String) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, Write};
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(&stream)
            .read_line(&mut line)
            .unwrap();
        let _ = stream.write_all(reply.as_bytes());
    })
}

/// `agent status | head -1`: the reader goes away after one line; the agent
/// ends quietly (SIGPIPE, as Unix tools do), no panic and no backtrace.
#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    // Long enough (~300 KB) to fill the pipe many times over.
    let diagnostics: Vec<serde_json::Value> = (0..3000)
        .map(|i| {
            serde_json::json!({"severity": "error", "file": format!("/etc/policy/{i}.yaml"),
                "line": 1, "resource": "", "field": "", "message": "x".repeat(80)})
        })
        .collect();
    let status = serde_json::json!({
        "datastore": "/etc/policy", "started": "now", "last_reload": "now", "reloads": 1,
        "last_error": null, "generation": 1, "epoch": 1, "endpoints": [],
        "policies": {"enforced": 0, "staged": 0, "tiers": 0},
        "tables": {"peer_prefixes": 0, "peer_prefixes_max": 1, "peer_classes": 0,
            "rule_entries": 0, "rule_keys": 0, "rule_keys_max": 1, "endpoints_max": 1},
        "counters": {}, "flows": {"tracked": 0, "events": 0, "subscribers": 0},
        "kept_last_good": [], "diagnostics": diagnostics,
    });
    let server = fake_daemon(&socket, format!("{status}\n"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["status", "--socket", socket.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .env("RUST_BACKTRACE", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("datastore:"), "{first}");
    drop(reader);
    let out = child.wait_with_output().unwrap();
    server.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "", "{:?}", out.status);
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}

/// Any command's output into a pipe nobody reads: the same quiet end.
#[test]
fn check_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["check", corpus.to_str().unwrap()])
        .env("RUST_LOG", "off")
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
}

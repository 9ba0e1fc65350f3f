//! The flow relay, end to end: two nodes (two lab node namespaces joined by a
//! veth), an agent on each with its own `--node`, pin directory and socket,
//! one relay (`agent relay`) in the first node's namespace, real TCP on both
//! nodes. `agent staged report --relay` shows one report with the connections
//! of both nodes; `agent flows --relay --node` filters; the relay killed and
//! restarted loses nothing the agents still hold (they re-send); clients
//! without a certificate from the relay's CA are refused, and a relay with a
//! certificate from another CA is refused by the client.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;
use lab::{Lab, TcpProbe};
use serde_json::Value;

/// This node's endpoints by node: frontend and backend on n1, web and api on
/// n2 (api is a backend too); the seed scenario's policies beside them.
const CLUSTER: &str = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: prod, labels: {env: prod}}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: n1-k8s-frontend-eth0, namespace: prod, labels: {env: prod, app: frontend}}
  spec: {node: n1, pod: frontend, interfaceName: calidemofront, ipNetworks: [10.65.0.10/32]}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: n1-k8s-backend-eth0, namespace: prod, labels: {env: prod, app: backend}}
  spec: {node: n1, pod: backend, interfaceName: calidemoback, ipNetworks: [10.65.0.20/32]}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: n2-k8s-web-eth0, namespace: prod, labels: {env: prod, app: frontend}}
  spec: {node: n2, pod: web, interfaceName: calirelayweb, ipNetworks: [10.65.0.40/32]}
- apiVersion: projectcalico.org/v3
  kind: WorkloadEndpoint
  metadata: {name: n2-k8s-api-eth0, namespace: prod, labels: {env: prod, app: backend}}
  spec: {node: n2, pod: api, interfaceName: calirelayapi, ipNetworks: [10.65.0.50/32]}
"#;

const STAGED: &str = include_str!("../../examples/20-backend-lockdown-staged.yaml");
const ENFORCED: &str = include_str!("../../examples/10-database-allow-from-backend.yaml");
const PORT: u16 = 7443;
/// The relay's web console (`--console`), on the node's loopback.
const CONSOLE_PORT: u16 = 9909;
/// The veth between the two node namespaces (private, inside namespaces the test made).
const RELAY_IP: &str = "192.168.77.1";
const N2_IP: &str = "192.168.77.2";

fn datastore(tag: &str) -> PathBuf {
    Agent::datastore_with(
        tag,
        &[
            ("00-cluster.yaml", CLUSTER),
            ("10-enforced.yaml", ENFORCED),
            ("20-staged.yaml", STAGED),
        ],
    )
}

/// `agent relay` in `lab`'s node namespace; killed on drop.
struct Relay {
    child: Option<Child>,
    log: PathBuf,
}

impl Relay {
    fn start(lab: &Lab, tls: &Path, datastore: &Path, log: PathBuf) -> Relay {
        let child = lab
            .node()
            .command(agent_bin())
            .args(["relay", "--listen", &format!("0.0.0.0:{PORT}"), "--tls-dir"])
            .arg(tls)
            .arg("--datastore")
            .arg(datastore)
            .args(["--console", &format!("127.0.0.1:{CONSOLE_PORT}")])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting agent relay");
        Relay {
            child: Some(child),
            log,
        }
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- relay log ---\n{log}");
        }
    }
}

/// `agent ARGS --relay 127.0.0.1:PORT --relay-tls-dir TLS`, run in `lab`'s node namespace.
fn relay_cli(lab: &Lab, tls: &Path, args: &[&str]) -> Output {
    lab.node()
        .command(agent_bin())
        .args(args)
        .args(["--relay", &format!("127.0.0.1:{PORT}"), "--relay-tls-dir"])
        .arg(tls)
        .output()
        .expect("running the agent cli")
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Polls `what` (a relay query) until `done` holds (20 s); returns its last answer.
fn wait_for<T: std::fmt::Debug>(
    what: &str,
    query: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
    context: impl Fn() -> String,
) -> T {
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(200),
        query,
        done,
        |got| format!("timed out waiting for {what}: {got:#?}\n{}", context()),
    )
}

/// (node, source, source port, destination, destination port) of each record.
fn tuples(flows: &[Value]) -> Vec<(String, String, u64, String, u64)> {
    flows
        .iter()
        .map(|f| {
            (
                f["node"].as_str().unwrap_or("").to_string(),
                f["src"]["name"].as_str().unwrap_or("").to_string(),
                f["src"]["port"].as_u64().unwrap(),
                f["dst"]["name"].as_str().unwrap_or("").to_string(),
                f["dst"]["port"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// `from -> to:port (nodes)` of each connection the policy would newly deny.
fn newly_denied(report: &Value, policy: &str) -> Vec<String> {
    let p = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == policy)
        .unwrap_or_else(|| panic!("{policy} in {report:#}"));
    p["newly_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!("{} -> {}:{} {}", c["from"], c["to"], c["port"], c["nodes"]).replace('"', "")
        })
        .collect()
}

#[test]
fn two_nodes_one_relay_merged_report_restart_and_mtls() {
    lab::require_root();
    let n1 = Lab::new();
    let n2 = Lab::new();
    // The nodes' network: a veth between the two node namespaces.
    n1.node().ip(&format!(
        "link add rly1 type veth peer name rly2 netns {}",
        n2.node().name()
    ));
    n1.node().ip(&format!("addr add {RELAY_IP}/30 dev rly1"));
    n1.node().ip("link set rly1 up");
    n2.node().ip(&format!("addr add {N2_IP}/30 dev rly2"));
    n2.node().ip("link set rly2 up");

    let dir1 = datastore("relay-n1");
    let dir2 = datastore("relay-n2");
    let base = dir1.parent().unwrap().to_path_buf();
    let certs = base.join("certs");
    let other = base.join("other-ca");
    for (out, extra) in [(&certs, RELAY_IP), (&other, RELAY_IP)] {
        let o = Command::new(agent_bin())
            .args(["relay", "certs", "--out"])
            .arg(out)
            .args(["--relay-dns", extra])
            .output()
            .unwrap();
        assert!(o.status.success(), "agent relay certs: {o:?}");
    }
    let agent_tls = certs.join("agent");
    let mut relay = Relay::start(&n1, &certs.join("relay"), &dir1, base.join("relay-1.log"));

    let frontend = n1.add_pod_at("prod", "frontend", 10, "calidemofront");
    let backend = n1.add_pod_at("prod", "backend", 20, "calidemoback");
    let web = n2.add_pod_at("prod", "web", 40, "calirelayweb");
    let api = n2.add_pod_at("prod", "api", 50, "calirelayapi");
    let _b = backend.tcp_listen(8080);
    let _a = api.tcp_listen(8080);
    let tls_arg = agent_tls.to_str().unwrap();
    let relay_n1 = format!("127.0.0.1:{PORT}");
    let relay_n2 = format!("{RELAY_IP}:{PORT}");
    let a1 = Agent::start_with(
        &n1,
        &dir1,
        &[
            "--node",
            "n1",
            "--relay",
            &relay_n1,
            "--relay-tls-dir",
            tls_arg,
        ],
    );
    let a2 = Agent::start_with(
        &n2,
        &dir2,
        &[
            "--node",
            "n2",
            "--relay",
            &relay_n2,
            "--relay-tls-dir",
            tls_arg,
        ],
    );
    a1.wait_attached(2);
    a2.wait_attached(2);

    // Real traffic on both nodes (allowed today; the staged lockdown of
    // app == backend would deny both).
    wait_tcp(&frontend, &backend, 8080, TcpProbe::Connected);
    wait_tcp(&web, &api, 8080, TcpProbe::Connected);

    // One report, with the connections of both nodes.
    let policy = "sgnp/backend-lockdown-staged";
    let report = wait_for(
        "the merged report",
        || {
            let out = relay_cli(&n1, &agent_tls, &["staged", "report", policy, "-o", "json"]);
            (
                out.status.code(),
                serde_json::from_slice::<Value>(&out.stdout).ok(),
                out,
            )
        },
        |(code, r, _)| {
            *code == Some(3)
                && r.as_ref()
                    .is_some_and(|r| newly_denied(r, policy).len() == 2)
        },
        || {
            let relay = relay_cli(&n1, &agent_tls, &["flows", "-o", "json", "--last", "100"]);
            format!(
                "relay flows: {}\nn1 flows: {:#?}",
                String::from_utf8_lossy(&relay.stdout),
                a1.flows(&["--last", "100"])
            )
        },
    )
    .1
    .unwrap();
    assert_eq!(
        newly_denied(&report, policy),
        [
            "prod/frontend -> prod/backend:8080 [n1]",
            "prod/web -> prod/api:8080 [n2]"
        ],
        "{report:#}"
    );
    assert!(
        report["window"]["notes"]
            .to_string()
            .contains("2 nodes: n1, n2"),
        "{report:#}"
    );
    // The web console served by the relay: both nodes, the merged report.
    let get = |path: &str| {
        let o = n1
            .node()
            .command("curl")
            .args(["-sS", "--max-time", "20", "--fail"])
            .arg(format!("http://127.0.0.1:{CONSOLE_PORT}{path}"))
            .output()
            .expect("running curl");
        assert!(o.status.success(), "GET {path}: {o:?}");
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    assert_eq!(get("/api/nodes")["nodes"], serde_json::json!(["n1", "n2"]));
    let console_report = get("/api/report").to_string();
    for want in [
        "prod/web",
        "prod/api",
        "prod/frontend",
        "prod/backend",
        "promote",
    ] {
        assert!(console_report.contains(want), "{want}: {console_report}");
    }

    // The text form, as locally.
    let text = relay_cli(&n1, &agent_tls, &["staged", "report", policy]);
    assert_eq!(text.status.code(), Some(3), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("prod/web -> prod/api TCP/8080"), "{text}");

    // --node filters; records show their node.
    let n2_only = json_lines(&relay_cli(
        &n1,
        &agent_tls,
        &["flows", "-o", "json", "--last", "1000", "--node", "n2"],
    ));
    assert!(!n2_only.is_empty());
    assert!(n2_only.iter().all(|f| f["node"] == "n2"), "{n2_only:#?}");
    assert!(
        n2_only.iter().any(|f| is_flow(f, "web", "api", 8080)),
        "{n2_only:#?}"
    );
    let compact = relay_cli(
        &n1,
        &agent_tls,
        &["flows", "--last", "1000", "--from", "prod/frontend"],
    );
    let compact = String::from_utf8_lossy(&compact.stdout);
    assert!(
        compact.lines().all(|l| l.starts_with("n1  ")) && compact.contains("prod/backend"),
        "{compact}"
    );
    let all_before = json_lines(&relay_cli(
        &n1,
        &agent_tls,
        &["flows", "-o", "json", "--last", "10000"],
    ));
    let before = tuples(&all_before);
    assert!(
        before.iter().any(|t| t.0 == "n1") && before.iter().any(|t| t.0 == "n2"),
        "{before:#?}"
    );

    // The relay goes away; the agents keep working and recording.
    relay.kill9();
    wait_tcp(&web, &api, 8080, TcpProbe::Connected);
    let during = a2.flows(&["--last", "1000"]);
    let last_web = during
        .iter()
        .filter(|f| is_flow(f, "web", "api", 8080))
        .map(|f| f["src"]["port"].as_u64().unwrap())
        .collect::<Vec<_>>();
    assert!(!last_web.is_empty(), "{during:#?}");

    // A new relay (empty): the agents re-send all they hold.
    let _relay = Relay::start(&n1, &certs.join("relay"), &dir1, base.join("relay-2.log"));
    let after = wait_for(
        "the records again after the relay restarted",
        || {
            tuples(&json_lines(&relay_cli(
                &n1,
                &agent_tls,
                &["flows", "-o", "json", "--last", "10000"],
            )))
        },
        |after| {
            before.iter().all(|t| after.contains(t))
                && last_web
                    .iter()
                    .all(|p| after.iter().any(|t| t.0 == "n2" && t.2 == *p))
        },
        || format!("before: {before:#?}"),
    );
    assert!(after.len() >= before.len());

    // mTLS: a client certificate from another CA is refused by the relay ...
    let mixed = base.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(certs.join("agent/ca.crt"), mixed.join("ca.crt")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        std::fs::copy(other.join("agent").join(f), mixed.join(f)).unwrap();
    }
    let refused = relay_cli(&n1, &mixed, &["flows", "-o", "json", "--last", "10"]);
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    // ... a relay whose certificate is from another CA is refused by the client ...
    let wrong_ca = relay_cli(
        &n1,
        &other.join("agent"),
        &["flows", "-o", "json", "--last", "10"],
    );
    assert!(!wrong_ca.status.success(), "{wrong_ca:?}");
    assert!(wrong_ca.stdout.is_empty(), "{wrong_ca:?}");
    // ... and a client with no certificate at all gets nothing.
    let ca = std::fs::read(certs.join("agent/ca.crt")).unwrap();
    let anonymous = n1.node().run(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                use agent::relay::proto::flow_query_service_client::FlowQueryServiceClient;
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                    .domain_name("127.0.0.1");
                let channel =
                    tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{PORT}"))
                        .unwrap()
                        .tls_config(tls)
                        .unwrap()
                        .connect()
                        .await;
                let Ok(channel) = channel else {
                    return Err(format!("{:?}", channel.err()));
                };
                let mut client = FlowQueryServiceClient::new(channel);
                match client
                    .flows(agent::relay::proto::FlowsRequest::default())
                    .await
                {
                    Ok(mut s) => match s.get_mut().message().await {
                        Ok(Some(r)) => Ok(format!("{r:?}")),
                        Ok(None) => Ok("an empty answer".to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            })
    });
    assert!(
        anonymous.is_err(),
        "a client without a certificate was answered: {anonymous:?}"
    );
    // The right certificates still work (the refusals were about them).
    let ok = relay_cli(&n1, &agent_tls, &["flows", "-o", "json", "--last", "1"]);
    assert!(ok.status.success(), "{ok:?}");
    drop((a1, a2));
}

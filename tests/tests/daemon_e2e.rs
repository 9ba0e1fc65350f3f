//! `agent run` end to end, as a user runs it: the agent binary inside the lab's
//! node namespace watching a temporary datastore directory, real TCP between
//! lab pods, `agent flows` and `agent status` over a per-test Unix socket.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT};
use serde_json::Value;

#[test]
fn seed_scenario_enforces_reports_staged_and_promotes() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("seed");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);

    let st = agent.status();
    assert_eq!(st["policies"]["enforced"], 1, "{st:#}");
    assert_eq!(st["policies"]["staged"], 1, "{st:#}");
    assert!(st["last_error"].is_null(), "{st:#}");

    // Enforcement: only backend reaches database:8080; frontend reaches backend
    // (the staged lockdown observes only).
    assert_seed_enforced(&s);
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "frontend -> backend:8080 before promotion"
    );

    // The staged lockdown's would-be deny, reported by backend (ingress).
    let f = wait_flow(
        &agent,
        &["--last", "100"],
        "frontend -> backend pending deny",
        |f| is_flow(f, "frontend", "backend", 8080) && f["pending"]["action"] == "deny",
    );
    assert_eq!(f["enforced"]["action"], "allow", "{f:#}");
    assert_eq!(f["pending_differs"], true, "{f:#}");
    assert_eq!(f["direction"], "ingress", "{f:#}");
    assert_eq!(f["reporter"]["endpoint"], "prod/backend", "{f:#}");
    assert_eq!(f["src"]["namespace"], "prod", "{f:#}");
    assert!(
        f["pending"]["trace"]
            .as_str()
            .unwrap()
            .contains("backend-lockdown-staged"),
        "{f:#}"
    );
    // The enforced deny of frontend -> database, naming nothing allowed it.
    let d = wait_flow(
        &agent,
        &["--last", "100", "--verdict", "deny"],
        "frontend -> database deny",
        |f| is_flow(f, "frontend", "database", 8080),
    );
    assert_eq!(d["enforced"]["action"], "deny", "{d:#}");

    // Filters.
    let diff = agent.flows(&["--last", "100", "--pending-diff"]);
    assert!(
        !diff.is_empty() && diff.iter().all(|f| f["pending_differs"] == true),
        "{diff:#?}"
    );
    let from = agent.flows(&[
        "--last",
        "100",
        "--from",
        "prod/frontend",
        "--to",
        "app == 'backend'",
    ]);
    assert!(
        !from.is_empty() && from.iter().all(|f| is_flow(f, "frontend", "backend", 8080)),
        "{from:#?}"
    );
    let by_ip = agent.flows(&[
        "--last",
        "100",
        "--from",
        "10.65.0.20/32",
        "--port",
        "8080",
        "--protocol",
        "tcp",
    ]);
    assert!(
        !by_ip.is_empty() && by_ip.iter().all(|f| f["src"]["name"] == "backend"),
        "{by_ip:#?}"
    );
    let policy = agent.flows(&["--last", "100", "--policy", "backend-lockdown-staged"]);
    assert!(!policy.is_empty(), "--policy");
    // An endpoint the agent does not know is an error, not an empty result.
    let nobody = agent.cli(&["flows", "--last", "100", "--from", "prod/nobody"]);
    assert!(!nobody.status.success());
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        err.contains("no endpoint or network set \"prod/nobody\" is known to the agent"),
        "{err}"
    );
    // The compact form is one line per record and shows both verdicts.
    let out = agent.cli(&["flows", "--last", "100", "--pending-diff"]);
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("agent flows --pending-diff:\n{text}");
    assert!(
        text.lines().any(|l| l.contains("prod/frontend 10.65.0.10:")
            && l.contains("-> prod/backend 10.65.0.20:8080")
            && l.contains("enforced: allow")
            && l.contains("pending: deny")),
        "{text}"
    );

    // A bad document is reported and disturbs nothing.
    agent.write_file("30-bad.yaml", "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: broken\nspec:\n  selector: app == \n");
    let st = agent.wait_status("the bad document's diagnostic", |s| {
        s["diagnostics"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["file"].as_str().unwrap().ends_with("30-bad.yaml") && d["severity"] == "error"
            })
        })
    });
    let diag = st["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["file"].as_str().unwrap().ends_with("30-bad.yaml"))
        .unwrap();
    assert_eq!(diag["line"], 6, "{diag:#}");
    assert!(st["last_error"].is_null(), "{st:#}");
    assert_eq!(st["policies"]["enforced"], 1, "{st:#}");
    assert_seed_enforced(&s);
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).to_string();
    eprintln!("agent status:\n{text}");
    assert!(text.contains("30-bad.yaml:6: error"), "{text}");

    // Promote with `agent promote` (it edits the YAML in place): the watcher
    // enforces the lockdown, so frontend -> backend now fails.
    let out = Command::new(agent_bin())
        .args(["promote", "--datastore"])
        .arg(&dir)
        .arg("StagedGlobalNetworkPolicy/backend-lockdown-staged")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent promote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promoted = std::fs::read_to_string(dir.join("20-backend-lockdown-staged.yaml")).unwrap();
    assert!(promoted.contains("kind: GlobalNetworkPolicy"), "{promoted}");
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);
    let st = agent.status();
    assert_eq!(st["policies"]["enforced"], 2, "{st:#}");
    assert_eq!(st["policies"]["staged"], 0, "{st:#}");
    assert_seed_enforced(&s);
    let d = wait_flow(
        &agent,
        &["--last", "100", "--verdict", "deny", "--to", "prod/backend"],
        "frontend -> backend enforced deny",
        |f| is_flow(f, "frontend", "backend", 8080),
    );
    assert!(
        d["enforced"]["trace"]
            .as_str()
            .unwrap()
            .contains("backend-lockdown-staged"),
        "{d:#}"
    );
}

#[test]
fn interfaces_that_appear_later_are_attached_and_enforced() {
    lab::require_root();
    let lab = Lab::new();
    let dir = Agent::seed_datastore("late");
    let agent = Agent::start(&lab, &dir);
    let st = agent.status();
    assert_eq!(st["endpoints"].as_array().unwrap().len(), 3, "{st:#}");
    assert!(
        st["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["attached"] == false),
        "{st:#}"
    );
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    // The interface goes away: the endpoint waits again.
    lab.node().ip("link del calidemofront");
    agent.wait_status("frontend detached", |s| {
        s["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["interface"] == "calidemofront" && e["attached"] == false)
    });
}

#[test]
fn a_broken_edit_keeps_the_last_good_policy_enforced() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("broken");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let file = "10-database-allow-from-backend.yaml";
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    agent.write_file(file, &text.replace("protocol: TCP", "protocol: TCPX"));
    let st = agent.wait_status("the broken policy's diagnostic", |s| {
        s["diagnostics"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["file"].as_str().unwrap().ends_with(file))
        })
    });
    assert!(
        st["kept_last_good"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k.as_str().unwrap().contains("database-allow-from-backend")),
        "{st:#}"
    );
    // Still enforced: nothing loosened, nothing broken.
    assert_seed_enforced(&s);
    // Removing the file removes the policy: the database is open again (no policy
    // selects it; its namespace profile allows).
    std::fs::remove_file(dir.join(file)).unwrap();
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);
}

#[test]
fn follow_streams_new_flows() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("follow");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    let mut child = Command::new(agent_bin())
        .args([
            "flows",
            "--follow",
            "-o",
            "json",
            "--to",
            "prod/backend",
            "--socket",
        ])
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // Give the subscription a moment, then make traffic until a record arrives.
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        assert_eq!(
            s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(500)) {
            break line;
        }
        assert!(Instant::now() < deadline, "no followed flow");
    };
    let _ = child.kill();
    let _ = child.wait();
    let f: Value = serde_json::from_str(&line).unwrap();
    assert!(is_flow(&f, "frontend", "backend", 8080), "{f:#}");
    // The killed client's subscription is gone once the server notices the hang-up.
    agent.wait_status("no followers", |s| s["flows"]["subscribers"] == 0);
}

#[test]
fn a_compile_failure_keeps_the_previous_tables() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("compile-fail");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    // Valid YAML the compiler refuses (an IPv6 net inside ::ffff:0:0/96, where
    // the kernel keeps IPv4): its first rule would also deny backend -> database,
    // but nothing changes.
    agent.write_file(
        "40-mapped-net.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: by-mapped-net\nspec:\n  order: 1\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      protocol: TCP\n    - action: Deny\n      source:\n        nets: ['::ffff:10.65.0.0/120']\n",
    );
    let st = agent.wait_status("the compile error", |s| !s["last_error"].is_null());
    assert!(
        st["last_error"].as_str().unwrap().contains("::ffff:0:0/96"),
        "{st:#}"
    );
    assert_eq!(st["policies"]["enforced"], 1, "{st:#}");
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).to_string();
    assert!(text.contains("NOT APPLIED"), "{text}");
    assert_seed_enforced(&s);
    // Removing it clears the error.
    std::fs::remove_file(dir.join("40-mapped-net.yaml")).unwrap();
    agent.wait_status("the error cleared", |s| s["last_error"].is_null());
    assert_seed_enforced(&s);
}

#[test]
fn metrics_and_an_endpoint_leaving_the_datastore() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("metrics");
    let agent = Agent::start_with(&lab, &dir, &["--metrics", "127.0.0.1:9464"]);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let get = |path: &str| {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        lab.node().run(move || {
            use std::io::{Read, Write};
            let mut c = std::net::TcpStream::connect("127.0.0.1:9464").expect("metrics endpoint");
            c.write_all(request.as_bytes()).unwrap();
            let mut body = String::new();
            c.read_to_string(&mut body).unwrap();
            body
        })
    };
    let scrape = || get("/metrics");
    // Health like felix and cilium-agent: live, ready once the tables are
    // installed (they are: the endpoints are attached), nothing else served.
    let healthz = get("/healthz");
    assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
    let readyz = get("/readyz");
    assert!(readyz.starts_with("HTTP/1.1 200"), "{readyz}");
    assert!(readyz.ends_with("ready\n"), "{readyz}");
    let other = get("/debug/pprof");
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    // frontend -> backend is allowed but the staged lockdown would deny it;
    // frontend -> database (in assert_seed_enforced) is an enforced deny.
    let _backend = s.backend.tcp_listen(8080);
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let enforced_deny = "agent_flows_total{set=\"enforced\",action=\"deny\",rule=\"default|gnp:database-allow-from-backend|deny|-1\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = scrape();
        let pending = m
            .lines()
            .find_map(|l| l.strip_prefix("agent_pending_denies_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if (pending > 0 && m.contains(enforced_deny)) || std::time::Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("agent_endpoints_attached 3"), "{metrics}");
    assert!(
        metrics.contains("agent_dataplane_total{counter=\"denied\"}"),
        "{metrics}"
    );
    assert!(metrics.contains(enforced_deny), "{metrics}");
    assert!(
        !metrics.contains("agent_pending_denies_total 0"),
        "the staged lockdown's would-be deny is counted: {metrics}"
    );
    assert!(metrics.contains("agent_compile_seconds "), "{metrics}");
    assert!(metrics.contains("agent_swap_seconds "), "{metrics}");
    assert!(metrics.contains("agent_conntrack_entries "), "{metrics}");
    assert!(
        metrics.contains("agent_conntrack_swept_total "),
        "{metrics}"
    );
    // The periodic sweep (every 10 s, on its own handle of the pinned map) has
    // seen the flows of the probes above, still within their timeouts.
    let deadline = std::time::Instant::now() + Duration::from_secs(25);
    loop {
        let st = agent.status();
        if st["conntrack"]["entries"].as_u64().is_some_and(|n| n > 0) {
            assert_eq!(st["conntrack"]["max"], 262144, "{st:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no conntrack sweep saw the live flows: {st:#}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Take prod/frontend out of the datastore: its interface is released.
    let file = dir.join("00-endpoints.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("name: frontend"))
        .collect();
    agent.write_file("00-endpoints.yaml", &kept.join("\n---\n"));
    let st = agent.wait_status("two endpoints", |s| {
        s["endpoints"].as_array().unwrap().len() == 2
    });
    assert!(
        st["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["attached"] == true && e["interface"] != "calidemofront"),
        "{st:#}"
    );
    // The database policy still admits only backend.
    assert_seed_enforced(&s);
}

//! `agent staged report` live and `agent promote --require-clean`, end to end:
//! the agent in the lab's node namespace, two staged policies (the examples'
//! backend lockdown and a database lockdown), real TCP between lab pods.
//! Each policy's would-be denies show only after the traffic (exit 0 before,
//! 3 after); a promotion that would deny recent traffic is refused, and goes
//! through once the window holds none.
mod common;

use std::process::Output;
use std::time::Duration;

use common::*;
use lab::{Lab, TcpProbe};
use serde_json::Value;

/// A second staged policy beside the seed scenario's (shared by the staged-policy tests).
const DATABASE_LOCKDOWN: &str = include_str!("../../agent/tests/fixtures/database-lockdown.yaml");

const BACKEND: &str = "sgnp/backend-lockdown-staged";
const DATABASE: &str = "sgnp/database-lockdown";

fn policy<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("{name} in {report:#}"))
}

/// `from -> to:port` of each newly denied connection.
fn denied(report: &Value, name: &str) -> Vec<String> {
    policy(report, name)["newly_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} -> {}:{}", c["from"], c["to"], c["port"]).replace('"', ""))
        .collect()
}

/// Polls the report until it exits 3 with `want` for `name` (10 s).
fn wait_denied(agent: &Agent, name: &str, want: &[&str]) -> Value {
    let (_, r) = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        || staged_report(agent, &[]),
        |(code, r)| *code == 3 && denied(r, name) == want,
        |(_, r)| format!("{name}: want {want:?}: {r:#}"),
    );
    r
}

fn promote(agent: &Agent, within: &str) -> Output {
    let dir = agent.dir.to_str().unwrap().to_string();
    agent.cli(&[
        "promote",
        "--datastore",
        &dir,
        DATABASE,
        "--require-clean",
        within,
    ])
}

#[test]
fn each_staged_policy_reports_its_would_be_denies_and_gates_its_promotion() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("staged-report");
    std::fs::write(dir.join("30-database-lockdown.yaml"), DATABASE_LOCKDOWN).unwrap();
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    // The gate's 3 s window below must fit in what the agent has recorded
    // (from its start): a window longer than that is refused.
    std::thread::sleep(Duration::from_secs(3));

    // Before any traffic: nothing would change (exit 0), for both policies.
    let (code, before) = staged_report(&agent, &[]);
    assert_eq!(code, 0, "{before:#}");
    for name in [BACKEND, DATABASE] {
        let p = policy(&before, name);
        assert_eq!(p["selected_with_traffic"], 0, "{before:#}");
        assert_eq!(p["newly_denied"], serde_json::json!([]), "{before:#}");
    }
    assert_eq!(
        policy(&before, BACKEND)["selects"],
        serde_json::json!(["prod/backend"])
    );
    assert_eq!(before["window"]["source"], "flows");

    // Traffic: each policy would deny one of these connections; the enforced
    // deny of frontend -> database is not a change either would make.
    seed_traffic(&s);
    wait_denied(&agent, BACKEND, &["prod/frontend -> prod/backend:8080"]);
    let after = wait_denied(&agent, DATABASE, &["prod/backend -> prod/database:8080"]);
    let c = &policy(&after, DATABASE)["newly_denied"][0];
    assert!(c["count"].as_u64().unwrap() >= 1, "{c:#}");
    assert!(
        c["first_seen"].is_string() && c["last_seen"].is_string(),
        "{c:#}"
    );
    assert_eq!(policy(&after, DATABASE)["selected_with_traffic"], 1);
    // The flow records blame the right policy, and `--staged` keeps only
    // the connections the named one changes.
    let diff = agent.flows(&["--last", "100", "--pending-diff"]);
    for (src, dst, by) in [
        ("frontend", "backend", BACKEND),
        ("backend", "database", DATABASE),
    ] {
        let f = diff
            .iter()
            .find(|f| is_flow(f, src, dst, 8080))
            .unwrap_or_else(|| panic!("{src} -> {dst} in {diff:#?}"));
        assert_eq!(f["changed_by"], serde_json::json!([by]), "{f:#}");
    }
    let only = agent.flows(&["--last", "100", "--pending-diff", "--staged", DATABASE]);
    assert!(
        !only.is_empty() && only.iter().all(|f| is_flow(f, "backend", "database", 8080)),
        "{only:#?}"
    );
    // Each policy alone.
    let (code, alone) = staged_report(&agent, &[DATABASE]);
    assert_eq!(code, 3);
    assert_eq!(alone["policies"].as_array().unwrap().len(), 1, "{alone:#}");

    // The gate: the window holds backend -> database, so no promotion; the
    // refusal names the connection and the file is untouched.
    let file = dir.join("30-database-lockdown.yaml");
    let refused = promote(&agent, "3s");
    assert_eq!(refused.status.code(), Some(3), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("refusing to promote sgnp/database-lockdown")
            && err.contains("prod/backend -> prod/database TCP/8080"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), DATABASE_LOCKDOWN);
    // A window longer than the agent's records is refused too.
    let long = promote(&agent, "1h");
    assert_eq!(long.status.code(), Some(1), "{long:?}");
    assert!(
        String::from_utf8_lossy(&long.stderr).contains("the agent's records cover only"),
        "{long:?}"
    );

    // Once the window holds no such traffic, the promotion goes through and
    // the database lockdown enforces.
    std::thread::sleep(Duration::from_secs(4));
    let (code, quiet) = staged_report(&agent, &["--since", "3s"]);
    assert_eq!(code, 0, "{quiet:#}");
    let done = promote(&agent, "3s");
    assert!(done.status.success(), "{done:?}");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\nkind: GlobalNetworkPolicy\n"), "{text}");
    wait_tcp(&s.backend, &s.database, 8080, TcpProbe::TimedOut);
}

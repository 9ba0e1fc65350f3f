//! The flow history on disk and `--flows all`, end to end: the agent in the
//! lab's node namespace, real TCP between lab pods, restarts on the same pinned
//! state and history directory.
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT};
use serde_json::Value;

const DATABASE_LOCKDOWN: &str = include_str!("../../agent/tests/fixtures/database-lockdown.yaml");
const DATABASE: &str = "sgnp/database-lockdown";

/// `from -> to:port` of each connection `name` would newly deny.
fn denied(report: &Value, name: &str) -> Vec<String> {
    let p = report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["policy"] == name)
        .unwrap_or_else(|| panic!("{name} in {report:#}"));
    p["newly_denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} -> {}:{}", c["from"], c["to"], c["port"]).replace('"', ""))
        .collect()
}

fn history_dir(agent: &Agent) -> PathBuf {
    agent.dir.parent().unwrap().join("flows")
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    v.sort();
    v
}

#[test]
fn the_staged_report_and_flow_records_survive_a_restart_and_a_torn_segment() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("flow-history");
    std::fs::write(dir.join("30-database-lockdown.yaml"), DATABASE_LOCKDOWN).unwrap();
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    let bpffs = first.bpffs.clone();
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let want = ["prod/backend -> prod/database:8080"];
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        let (code, r) = staged_report(&first, &[]);
        if code == 3 && denied(&r, DATABASE) == want {
            break r;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let from_before = before["window"]["from"].as_str().unwrap().to_string();
    // A clean stop writes what is queued.
    assert!(first.terminate().success(), "{}", first.log_text());
    first.keep_state();
    let history = history_dir(&first);
    let files = segments(&history);
    assert!(!files.is_empty(), "no segment in {}", history.display());
    // A crash mid-write: the newest segment ends in half a line.
    let newest = files.last().unwrap();
    let mut text = std::fs::read(newest).unwrap();
    text.extend_from_slice(b"{\"flow\":{\"ifindex\":3,\"flow\":{\"time\":\"2026-");
    std::fs::write(newest, text).unwrap();

    let second = Agent::start_on(&lab, &dir, &bpffs, &[]);
    second.wait_attached(3);
    assert!(
        second.log_text().contains("unreadable line skipped"),
        "{}",
        second.log_text()
    );
    // No new traffic: the connection from before the restart is still in the
    // report, whose window still starts where it did, with the restart noted.
    let (code, after) = staged_report(&second, &[]);
    assert_eq!(code, 3, "{after:#}");
    assert_eq!(denied(&after, DATABASE), want, "{after:#}");
    assert_eq!(after["window"]["from"], from_before.as_str(), "{after:#}");
    let notes = after["window"]["notes"].to_string();
    assert!(notes.contains("restarted"), "{notes}");
    // The flow records too.
    let flows = second.flows(&["--last", "100"]);
    assert!(
        flows
            .iter()
            .any(|f| is_flow(f, "backend", "database", 8080)),
        "{flows:#?}"
    );
}

/// Records of `src -> dst:port` reported by `reporter`'s hook.
fn reported_by(flows: &[Value], src: &str, dst: &str, port: u64, reporter: &str) -> usize {
    flows
        .iter()
        .filter(|f| is_flow(f, src, dst, port))
        .filter(|f| {
            f["reporter"]["endpoint"]
                .as_str()
                .unwrap_or("")
                .contains(reporter)
        })
        .count()
}

#[test]
fn allowed_flows_of_endpoints_without_staged_policy_show_only_with_flows_all() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("flows-all");
    let bpffs = Agent::bpffs_for(&dir);
    let round = |extra: &[&str], want_database: bool| {
        let mut agent = Agent::start_on(&lab, &dir, &bpffs, extra);
        agent.wait_attached(3);
        // backend has staged policy (its flows are always recorded); database
        // has none: its ingress record of the allowed backend -> database
        // shows only under `--flows all`.
        assert_eq!(
            s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
        assert_eq!(
            s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
        let seen = wait_flow(&agent, &["--since", "4s"], "frontend -> backend", |f| {
            is_flow(f, "frontend", "backend", 8080)
        });
        assert_eq!(seen["enforced"]["action"], "allow");
        // Events of one drain come together; give the database's a moment.
        std::thread::sleep(Duration::from_millis(300));
        let flows = agent.flows(&["--since", "4s"]);
        let n = reported_by(&flows, "backend", "database", 8080, "database");
        assert_eq!(n > 0, want_database, "{extra:?}: {flows:#?}");
        if want_database {
            let f = flows
                .iter()
                .find(|f| is_flow(f, "backend", "database", 8080))
                .unwrap();
            assert_eq!(f["src"]["labels"]["app"], "backend", "{f:#}");
            assert_eq!(f["dst"]["labels"]["app"], "database", "{f:#}");
        }
        assert!(agent.terminate().success());
        agent.keep_state();
        std::thread::sleep(Duration::from_secs(5));
    };
    round(&[], false);
    round(&["--flows", "all"], true);
    // The switch is cleared again at the next start (it lives in pinned state).
    round(&[], false);
    let last = Agent::start_on(&lab, &dir, &bpffs, &[]);
    last.wait_attached(3);
}

//! Commit-confirmed promotion with real traffic: promoting the seed's staged
//! lockdown of prod/backend cuts an operator's SSH-like path (an external
//! namespace -> backend:22). Unconfirmed, the running agent restores the
//! staged version within the window and the path comes back; confirmed, it
//! stays; a failing `--confirm-if` reverts at once.
mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use lab::{External, Lab, TcpProbe, PROBE_TIMEOUT};

const TARGET: &str = "sgnp/backend-lockdown-staged";
const FILE: &str = "20-backend-lockdown-staged.yaml";
const SSH: u16 = 22;

fn agent_cli(dir: &Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(agent_bin())
        .args(args)
        .arg("--datastore")
        .arg(dir)
        .output()
        .expect("running agent");
    assert!(
        out.status.success(),
        "agent {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits (bounded) until the admin's SSH-like probe gives `want`.
fn wait_ssh(admin: &External, to: std::net::Ipv4Addr, want: TcpProbe, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let got = admin.tcp_connect(to, SSH, PROBE_TIMEOUT);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "admin -> {to}:{SSH} still {got:?}, wanted {want:?} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Setup {
    _lab: Lab,
    seed: Seed,
    admin: External,
    agent: Agent,
    dir: std::path::PathBuf,
    staged_text: String,
    _ssh: lab::Server,
}

fn setup(tag: &str) -> Setup {
    lab::require_root();
    let lab = Lab::new();
    let seed = seed_pods(&lab);
    let admin = lab.add_external("admin");
    let ssh = seed.backend.tcp_listen(SSH);
    let dir = Agent::seed_datastore(tag);
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_eq!(
        admin.tcp_connect(seed.backend.ipv4, SSH, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "the operator's path before the promotion"
    );
    let staged_text = std::fs::read_to_string(dir.join(FILE)).unwrap();
    Setup {
        _lab: lab,
        seed,
        admin,
        agent,
        dir,
        staged_text,
        _ssh: ssh,
    }
}

fn promotions(agent: &Agent) -> String {
    agent.status()["promotions"].to_string()
}

/// The promotion lines of `agent flows -o json` (event, reason), oldest first.
fn promotion_records(agent: &Agent, args: &[&str]) -> Vec<(String, String)> {
    agent
        .flows(args)
        .iter()
        .filter_map(|l| l.get("promotion"))
        .map(|p| {
            assert_eq!(
                p["target"],
                "StagedGlobalNetworkPolicy/backend-lockdown-staged"
            );
            (
                p["event"].as_str().unwrap().to_string(),
                p["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn an_unconfirmed_promotion_that_cuts_the_operator_is_reverted() {
    let s = setup("rollout-revert");
    agent_cli(&s.dir, &["promote", TARGET, "--confirm-within", "8s"]);
    // Enforced at once: the lockdown cuts the operator's path...
    wait_ssh(
        &s.admin,
        s.seed.backend.ipv4,
        TcpProbe::TimedOut,
        Duration::from_secs(10),
    );
    assert!(
        promotions(&s.agent).contains("awaits confirmation"),
        "{}",
        promotions(&s.agent)
    );
    // ...and nobody can confirm: the agent restores the staged version.
    wait_ssh(
        &s.admin,
        s.seed.backend.ipv4,
        TcpProbe::Connected,
        Duration::from_secs(20),
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.join(FILE)).unwrap(),
        s.staged_text,
        "reverted byte for byte"
    );
    let p = promotions(&s.agent);
    assert!(
        p.contains("reverted") && p.contains("not confirmed in time"),
        "{p}"
    );
    // The flows show why the verdicts changed: pending, then reverted.
    let records = promotion_records(&s.agent, &["--since", "10m"]);
    let events: Vec<&str> = records.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["pending", "reverted"], "{records:?}");
    assert!(
        records[0].1.contains("awaits confirmation until"),
        "{records:?}"
    );
    assert!(
        records[1].1.contains("not confirmed in time"),
        "{records:?}"
    );
    let compact =
        String::from_utf8_lossy(&s.agent.cli(&["flows", "--since", "10m"]).stdout).into_owned();
    assert!(
        compact.contains("PROMOTION StagedGlobalNetworkPolicy/backend-lockdown-staged reverted: not confirmed in time"),
        "{compact}"
    );
    // A query selecting connections has no promotion lines.
    assert!(promotion_records(&s.agent, &["--since", "10m", "--port", "22"]).is_empty());
}

#[test]
fn a_confirmed_promotion_stays() {
    let mut s = setup("rollout-confirm");
    let window = Duration::from_secs(10);
    let promoted = Instant::now();
    agent_cli(&s.dir, &["promote", TARGET, "--confirm-within", "10s"]);
    wait_ssh(
        &s.admin,
        s.seed.backend.ipv4,
        TcpProbe::TimedOut,
        Duration::from_secs(8),
    );
    agent_cli(&s.dir, &["confirm", TARGET]);
    std::thread::sleep((window + Duration::from_secs(3)).saturating_sub(promoted.elapsed()));
    assert_eq!(
        s.admin.tcp_connect(s.seed.backend.ipv4, SSH, PROBE_TIMEOUT),
        TcpProbe::TimedOut,
        "the confirmed promotion is still enforced after the window"
    );
    let text = std::fs::read_to_string(s.dir.join(FILE)).unwrap();
    assert!(text.contains("kind: GlobalNetworkPolicy"), "{text}");
    assert!(
        !promotions(&s.agent).contains("reverted"),
        "{}",
        promotions(&s.agent)
    );
    let records = promotion_records(&s.agent, &["--since", "10m"]);
    let events: Vec<&str> = records.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(events, ["pending", "confirmed"], "{records:?}");
    assert!(records[1].1.contains("agent confirm"), "{records:?}");

    // The promotion's steps are in the flow history: an agent killed and
    // started again still shows them.
    s.agent.keep_state();
    s.agent.kill9();
    let restarted = Agent::start_on(&s._lab, &s.dir, &s.agent.bpffs, &[]);
    assert_eq!(
        promotion_records(&restarted, &["--since", "10m"]),
        records,
        "the promotion events after a restart"
    );
}

#[test]
fn a_failing_confirm_if_check_reverts_at_once() {
    let s = setup("rollout-check");
    // The agent checks from the node: the lockdown denies the node's
    // connection to backend:22 too, so the check fails right away.
    let check = format!("tcp:{}:{SSH}", s.seed.backend.ipv4);
    let started = Instant::now();
    agent_cli(
        &s.dir,
        &[
            "promote",
            TARGET,
            "--confirm-within",
            "1h",
            "--confirm-if",
            &check,
        ],
    );
    // Reverted as soon as the agent saw the check fail (the path may never
    // look cut from outside: the revert can beat the first probe).
    let st = s.agent.wait_status("the promotion reverted", |st| {
        st["promotions"].to_string().contains("reverted")
    });
    let p = st["promotions"].to_string();
    assert!(p.contains("reverted") && p.contains("check failed"), "{p}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reverted by the check, not by the one-hour window"
    );
    assert_eq!(
        std::fs::read_to_string(s.dir.join(FILE)).unwrap(),
        s.staged_text
    );
    let records = promotion_records(&s.agent, &["--since", "10m"]);
    let reverted = records.last().expect("promotion lines");
    assert_eq!(reverted.0, "reverted", "{records:?}");
    assert!(
        reverted.1.contains("check failed") && reverted.1.contains(&check),
        "{records:?}"
    );
    wait_ssh(
        &s.admin,
        s.seed.backend.ipv4,
        TcpProbe::Connected,
        Duration::from_secs(10),
    );
}

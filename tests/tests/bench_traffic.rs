//! The real-traffic bench's machinery (`cargo xtask bench --traffic`,
//! `lab::traffic`), checked for behaviour, not speed: the nftables chain
//! generated from the policy's rule list gives the agent's verdicts on the
//! same probes, no program allows everything, and the compiled load generator
//! counts connections and bytes that really crossed the node.
mod common;

use std::path::PathBuf;
use std::time::Duration;

use agent::model::load::load_sources;

use lab::traffic::{self, Tools, TrafficLab, Variant};

/// Few rules, but more than one so the first rule's port belongs to another peer.
const RULES: usize = 10;

fn tools() -> Tools {
    Tools {
        agent: common::agent_bin(),
        loadgen: env!("CARGO_BIN_EXE_loadgen").into(),
        agent_ready: Duration::from_secs(30),
    }
}

fn verdicts(lab: &TrafficLab) -> Vec<String> {
    lab.verdict_probes()
        .into_iter()
        .map(|(from, dst)| {
            let got = lab.probe(from, dst.ip(), dst.port()).unwrap();
            format!("{from:?} -> {dst}: {got}")
        })
        .collect()
}

#[test]
fn nftables_chain_gives_the_agents_verdicts_and_loadgen_counts_traffic() {
    lab::require_root();
    let tools = tools();
    let labs: Vec<TrafficLab> = Variant::ALL
        .iter()
        .map(|&v| {
            TrafficLab::new(v, RULES, &tools).unwrap_or_else(|e| panic!("{} lab: {e:#}", v.name()))
        })
        .collect();
    let [none, agent, nft] = [&labs[0], &labs[1], &labs[2]];

    let outcomes = |lab: &TrafficLab| -> Vec<String> {
        verdicts(lab)
            .iter()
            .map(|v| v.rsplit(": ").next().unwrap().to_owned())
            .collect()
    };
    let want_policy = [
        "connected",
        "connected",
        "timeout",
        "timeout",
        "timeout",
        "timeout",
    ];
    let want_open = [
        "connected",
        "connected",
        "refused",
        "refused",
        "connected",
        "connected",
    ];
    assert_eq!(
        outcomes(agent),
        want_policy,
        "agent: {:#?}",
        verdicts(agent)
    );
    assert_eq!(verdicts(nft), verdicts(agent), "nftables against the agent");
    assert_eq!(
        outcomes(none),
        want_open,
        "no program: {:#?}",
        verdicts(none)
    );

    for lab in &labs {
        let (rate, _) = lab
            .connection_rate(0.2, 2)
            .unwrap_or_else(|e| panic!("{}: {e:#}", lab.variant.name()));
        assert!(rate > 0.0, "{}: no connection in 0.2 s", lab.variant.name());
        let gbits = lab
            .throughput(0.2)
            .unwrap_or_else(|e| panic!("{}: {e:#}", lab.variant.name()));
        assert!(gbits > 0.0, "{}: no byte streamed", lab.variant.name());
    }
}

#[test]
fn the_nftables_chain_holds_the_policy_in_order() {
    let rules = traffic::policy(2_500);
    let script = traffic::nft_script(&rules);
    let rule_lines: Vec<&str> = script.lines().filter(|l| l.contains("ip saddr")).collect();
    assert_eq!(rule_lines.len(), 2_500);
    assert_eq!(
        rule_lines[0].trim(),
        "ip saddr 10.70.0.1 tcp dport { 10000 } accept"
    );
    assert_eq!(
        rule_lines[2_499].trim(),
        "ip saddr 10.65.0.10 tcp dport { 12499, 12500 } accept",
        "the client's rule is last"
    );
    // Three policy chains, jumped in order, the last ending with the Deny.
    let jumps: Vec<&str> = script
        .lines()
        .filter(|l| l.contains("jump cali-pi-"))
        .collect();
    assert_eq!(jumps.len(), 3);
    assert!(jumps[0].ends_with("-0") && jumps[2].ends_with("-2"));
    assert_eq!(script.matches("\n    drop\n").count(), 1);
    assert!(
        script.contains("    drop\n  }\n}\n"),
        "the drop ends the last chain"
    );

    // The agent's datastore of the same list loads cleanly, with every rule.
    let yaml = traffic::datastore_yaml(&rules);
    assert_eq!(yaml.matches("action: Allow").count(), 2_500);
    assert_eq!(yaml.matches("action: Deny").count(), 1);
    let loaded = load_sources(&[(PathBuf::from("bench.yaml"), yaml)]);
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
}

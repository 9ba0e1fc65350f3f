//! `agent staged suggest` end to end: an agent recording every flow
//! (`--flows all`), real TCP between lab pods; the suggestion passes
//! `agent check`, staged it would deny none of the observed connections and
//! would deny a new one, and promoted it keeps the observed connections
//! working and denies the new one.
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT};
use serde_json::Value;

const BACKEND: &str = "snp/prod/suggested-backend";
const DATABASE: &str = "snp/prod/suggested-database";

fn suggest(agent: &Agent, extra: &[&str]) -> String {
    let mut args = vec!["staged", "suggest", "--namespace", "prod"];
    args.extend_from_slice(extra);
    let out = agent.cli(&args);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_suggestion_keeps_the_observed_traffic_and_denies_new_traffic() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("suggest");
    let agent = Agent::start_with(&lab, &dir, &["--flows", "all"]);
    agent.wait_attached(3);
    for (from, to) in [(&s.frontend, &s.backend), (&s.backend, &s.database)] {
        assert_eq!(
            from.tcp_connect(to.ipv4, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected
        );
    }
    wait_flow(&agent, &["--last", "100"], "backend -> database", |f| {
        is_flow(f, "backend", "database", 8080)
    });
    std::thread::sleep(Duration::from_millis(300));

    let yaml = suggest(&agent, &[]);
    for want in [
        "name: suggested-backend",
        "name: suggested-database",
        "    # prod/frontend -> prod/backend TCP/8080",
        "    # prod/backend -> prod/database TCP/8080",
    ] {
        assert!(yaml.contains(want), "{want:?} in\n{yaml}");
    }
    // The same from a dump of `agent flows -o json`.
    let dump = agent.cli(&["flows", "-o", "json", "--last", "100000"]);
    assert!(dump.status.success());
    let file = dir.parent().unwrap().join("flows.json");
    std::fs::write(&file, &dump.stdout).unwrap();
    let offline = Command::new(agent_bin())
        .args(["staged", "suggest", "--namespace", "prod", "--from-file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(offline.status.success(), "{offline:?}");
    assert_eq!(String::from_utf8(offline.stdout).unwrap(), yaml);

    // `agent check` takes it with the datastore.
    let suggested = dir.parent().unwrap().join("50-suggested.yaml");
    std::fs::write(&suggested, &yaml).unwrap();
    let check = Command::new(agent_bin())
        .arg("check")
        .arg(&dir)
        .arg(&suggested)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}\n{yaml}");

    // Staged: on the same traffic nothing would be newly denied (or allowed).
    agent.write_file("50-suggested.yaml", &yaml);
    let deadline = Instant::now() + Duration::from_secs(10);
    let clean = loop {
        let out = agent.cli(&["staged", "report", "-o", "json", BACKEND, DATABASE]);
        if out.status.code() == Some(0) {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "{out:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(clean["policies"].as_array().unwrap().len(), 2, "{clean:#}");
    // A connection not seen before: the backend's suggested policy would deny it.
    assert_eq!(
        s.database.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, r) = staged_report(&agent, &[BACKEND]);
        let denied = r["policies"][0]["newly_denied"].to_string();
        if code == 3 && denied.contains("prod/database") {
            break;
        }
        assert!(Instant::now() < deadline, "{r:#}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Promoted: the observed connections keep working, the new one is denied.
    for name in ["snp/suggested-backend", "snp/suggested-database"] {
        let datastore = dir.to_str().unwrap();
        let out = agent.cli(&["promote", "--datastore", datastore, name, "-n", "prod"]);
        assert!(out.status.success(), "{name}: {out:?}");
    }
    wait_tcp(&s.database, &s.backend, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

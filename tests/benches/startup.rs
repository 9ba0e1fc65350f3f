//! `agent run` start to policy enforced, step by step (issue 15, item 3:
//! "10,000 rules compiled and enforced in under 1 s"), in the real-traffic
//! bench's lab (`lab::traffic`: client, server and stranger pods, the server's
//! ingress policy of N rules in GlobalNetworkPolicies of 1,000 rules).
//!
//! Per size: the release agent is started in the lab's node with the policy
//! already in its datastore; a probe loop (as `cargo xtask bench --traffic`
//! waits) finds the first connection the policy drops. The steps come from
//! the agent's own log (JSON lines, wall-clock timestamps to the microsecond),
//! measured from the moment the agent was spawned:
//!
//! - **start**: spawn to the first log line (exec, dynamic linking, argument parsing);
//! - **programs**: loading the eBPF programs (the kernel's verifier) and pinning;
//! - **load**: reading and parsing the datastore (YAML to model);
//! - **ahead**: the first compile, run beside the verifier (`daemon::ahead`);
//! - **compile**: model to tables in the first reload (after **ahead**: the
//!   incremental compile over its cached entries);
//! - **install**: writing the tables into the kernel's maps and flipping;
//! - **attach**: endpoint entries and TCX links of the interfaces;
//! - **logged**: spawn to the end of the first install and attach, from the log;
//! - **probe**: spawn to the first probe the policy dropped (enforcement
//!   began after the probe before it; both are shown: `after..by`);
//! - **CPU**: the agent's user + system CPU time by then.
//!
//! With `--restart`, each start is followed by a restart (SIGTERM, then a new
//! agent on the same pins and datastore, as a DaemonSet's rolling restart
//! does): a row `restart` with the same steps, from the new agent's own log
//! up to its first tables enforced. Its probe column is `-`: the earlier
//! agent's programs enforce the policy all along, so no probe can tell.
//!
//! `cargo +1.99.0 bench -p agent-tests --bench startup [-- [--runs N] [--restart] [--agent PATH...] RULES...]`
//! (as root; builds the release agent first). With `--agent` (repeatable) the
//! given agent binaries instead, run in turn at each size (before/after
//! comparisons in one session; steps an agent does not log are `-`).
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lab::traffic::{Tools, TrafficLab, Variant};
use serde_json::Value;

fn main() {
    lab::require_root();
    let mut runs = 1;
    let mut sizes = Vec::new();
    let mut agents: Vec<PathBuf> = Vec::new();
    let mut restart = false;
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    while let Some(a) = args.next() {
        if a == "--runs" {
            runs = args.next().and_then(|n| n.parse().ok()).expect("--runs N");
        } else if a == "--restart" {
            restart = true;
        } else if a == "--agent" {
            agents.push(args.next().expect("--agent PATH").into());
        } else {
            sizes.push(a.parse::<usize>().expect("numbers of rules"));
        }
    }
    if sizes.is_empty() {
        sizes = vec![10, 1_000, 10_000];
    }
    if agents.is_empty() {
        agents.push(release_agent());
    }
    println!("load average before: {}", load_average());
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17} {:>9}  agent",
        "rules",
        "start",
        "programs",
        "load",
        "ahead",
        "compile",
        "install",
        "attach",
        "logged",
        "probe",
        "CPU"
    );
    for &rules in &sizes {
        for (_, agent) in (0..runs).flat_map(|r| agents.iter().map(move |a| (r, a))) {
            let tools = Tools {
                agent: agent.clone(),
                loadgen: env!("CARGO_BIN_EXE_loadgen").into(),
                agent_ready: Duration::from_secs(120),
            };
            let mut lab = TrafficLab::new(Variant::Agent, rules, &tools)
                .unwrap_or_else(|e| panic!("agent lab at {rules} rules: {e:#}"));
            let startup = lab.startup.expect("the agent lab notes its startup");
            let log = lab.agent_log().unwrap_or_default();
            let probe = match startup.not_yet {
                Some(before) => format!("{}..{}", ms(before), ms(startup.enforced)),
                None => format!("..{}", ms(startup.enforced)),
            };
            let steps = Steps::from_log(&log, startup.spawned);
            steps.print(rules, &probe, startup.agent_cpu, agent);
            if restart {
                let (spawned, cpu) = lab
                    .restart_agent(ENFORCED)
                    .unwrap_or_else(|e| panic!("restart at {rules} rules: {e:#}"));
                let log = lab.agent_log().unwrap_or_default();
                Steps::from_log(&log, spawned).print(rules, "restart", cpu, agent);
            }
        }
    }
    println!("load average after: {}", load_average());
    println!("(milliseconds; wall time except CPU)");
}

const INSTALLED: &str = "tables installed";
const ENFORCED: &str = "first tables enforced: endpoint interfaces attached";

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e3)
}

/// The startup steps in the agent's log, in ms (see the module docs).
struct Steps {
    start: String,
    programs: String,
    load: String,
    ahead: String,
    compile: String,
    install: String,
    attach: String,
    logged: String,
}

impl Steps {
    /// The steps found in `log` (`-` for those an agent does not log).
    fn from_log(log: &str, spawned: SystemTime) -> Steps {
        let spawned = spawned
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let lines: Vec<Value> = log
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let find = |message: &str| {
            lines
                .iter()
                .find(|l| l["fields"]["message"].as_str() == Some(message))
        };
        let since_spawn = |message: &str| -> String {
            find(message)
                .and_then(|l| unix_seconds(l["timestamp"].as_str()?))
                .map_or("-".into(), |at| format!("{:.0}", (at - spawned) * 1e3))
        };
        let field = |message: &str, name: &str| -> String {
            find(message)
                .and_then(|l| l["fields"][name].as_f64())
                .map_or("-".into(), |v| format!("{v:.0}"))
        };
        Steps {
            start: since_spawn("agent run starting"),
            programs: field("eBPF programs loaded (verified)", "ms"),
            load: field(INSTALLED, "load_ms"),
            ahead: field("first compile done while the programs were verified", "ms"),
            compile: field(INSTALLED, "compile_ms"),
            install: field(INSTALLED, "install_ms"),
            attach: field(ENFORCED, "ms"),
            logged: since_spawn(ENFORCED),
        }
    }
}

impl Steps {
    fn print(&self, rules: usize, probe: &str, cpu: Duration, agent: &std::path::Path) {
        println!(
            "{rules:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {probe:>17} {:>9}  {}",
            self.start,
            self.programs,
            self.load,
            self.ahead,
            self.compile,
            self.install,
            self.attach,
            self.logged,
            ms(cpu),
            agent.display(),
        );
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp
/// (`2026-11-27T15:11:10.123456Z`, as tracing-subscriber writes them).
fn unix_seconds(ts: &str) -> Option<f64> {
    let (date, time) = ts.trim_end_matches('Z').split_once('T')?;
    let mut ymd = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':');
    let (h, min) = (
        hms.next()?.parse::<f64>().ok()?,
        hms.next()?.parse::<f64>().ok()?,
    );
    let s = hms.next()?.parse::<f64>().ok()?;
    // Days from 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + h * 3_600.0 + min * 60.0 + s)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `target/release/agent`, built first (a dev-dependency builds only the
/// library; the bench's own profile directory is the target's).
fn release_agent() -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target = profile.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "agent", "--bin", "agent"])
        .arg("--target-dir")
        .arg(target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        // Set for the bench, not for a build: some build scripts rerun when they change.
        .env_remove("CARGO_MANIFEST_DIR")
        .env_remove("CARGO_MANIFEST_PATH")
        .env_remove("CARGO_PKG_NAME")
        .status()
        .expect("running cargo build for the agent");
    assert!(status.success(), "building the release agent failed");
    target.join("release/agent")
}

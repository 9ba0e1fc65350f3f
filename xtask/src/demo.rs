//! `cargo xtask demo`: the staged-policy walkthrough on the embedded default
//! (`examples/`), with a lab of real network namespaces.
//!
//! It follows the lesson "Ship it safely": an enforced policy doing real work,
//! a staged lockdown that changes nothing while its would-be verdicts are read,
//! promotion by changing one word, and safe mode.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use lab::{Lab, Pod, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

use crate::workspace_root;

fn heading(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn say(text: &str) {
    for line in text.lines() {
        println!("   {line}");
    }
}

fn agent_bin() -> PathBuf {
    workspace_root().join("target/release/agent")
}

/// Runs `agent ARGS`, echoing the command line and its output.
fn agent(args: &[&str]) -> Result<String> {
    println!("\n  $ agent {}", args.join(" "));
    let out = Command::new(agent_bin())
        .args(args)
        .output()
        .context("running the agent binary")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in stdout
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {line}");
    }
    if !out.status.success() {
        bail!("`agent {}` failed ({})", args.join(" "), out.status);
    }
    Ok(stdout)
}

fn probe(from: &Pod, to: &Pod, port: u16, timeout: Duration) -> TcpProbe {
    let result = from.tcp_connect(to.ipv4, port, timeout);
    let mark = if result == TcpProbe::Connected {
        "✓"
    } else {
        "✗"
    };
    println!(
        "    {mark} {}/{} -> {}/{}:{port} ({}): {result:?}",
        from.namespace, from.name, to.namespace, to.name, to.ipv4
    );
    result
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}

pub fn run() -> Result<()> {
    lab::require_root();
    let examples = workspace_root().join("examples");
    let work = std::env::temp_dir().join(format!("agent-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let datastore = work.join("policies");
    copy_dir(&examples, &datastore)?;
    let result = walkthrough(&examples, &datastore);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn walkthrough(examples: &Path, datastore: &Path) -> Result<()> {
    let ds = datastore.to_str().context("non-UTF-8 temp path")?;
    heading("The lab");
    say("A node (its own network namespace) with three pods in namespace prod, each a network\nnamespace wired like Calico wires pods: host-side veth, /32 route, proxy ARP, 169.254.1.1.");
    let lab = Lab::new();
    let frontend = lab.add_pod_at("prod", "frontend", 10, "calidemofront");
    let backend = lab.add_pod_at("prod", "backend", 20, "calidemoback");
    let database = lab.add_pod_at("prod", "database", 30, "calidemodb");
    let _servers = [
        backend.tcp_listen(8080),
        database.tcp_listen(8080),
        frontend.tcp_listen(8080),
    ];
    for pod in [&frontend, &backend, &database] {
        println!(
            "    {}/{}: {} {} on {}",
            pod.namespace, pod.name, pod.ipv4, pod.ipv6, pod.host_if
        );
    }
    say("Real TCP, no policy loaded into the kernel yet:");
    probe(&frontend, &backend, 8080, PROBE_TIMEOUT);
    probe(&backend, &database, 8080, PROBE_TIMEOUT);
    probe(&frontend, &database, 8080, PROBE_TIMEOUT);

    heading("The policies (the embedded default, examples/)");
    say("An enforced GlobalNetworkPolicy: prod/database accepts ingress only from prod/backend on\nTCP 8080. A StagedGlobalNetworkPolicy: would default-deny prod/backend's ingress.");
    agent(&["check", ds])?;

    heading("Enforced and pending, side by side");
    say("`enforced` is what happens; `pending` is what would happen if every staged policy were\npromoted now. The staged lockdown changes the enforced matrix by nothing.");
    agent(&["matrix", "--datastore", ds, "--port", "TCP/8080"])?;
    agent(&["matrix", "--datastore", ds, "--port", "TCP/8080", "--diff"])?;
    say("One flow, with Calico-format traces of what decided it:");
    agent(&[
        "eval",
        "--datastore",
        ds,
        "--from",
        "prod/frontend",
        "--to",
        "prod/backend",
        "--protocol",
        "TCP",
        "--port",
        "8080",
    ])?;

    heading("In the kernel: a TC program on prod/database's interface");
    say("The first dataplane slice: an eBPF program (TCX) drops TCP 8080 towards prod/database\nand reports each drop on a ring buffer. (Compiled policy tables replace this slice next.)");
    let dropper = lab
        .node()
        .command(agent_bin())
        .args([
            "debug-drop",
            "--interface",
            &database.host_if,
            "--port",
            "tcp/8080",
            "--seconds",
            "3",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting agent debug-drop")?;
    std::thread::sleep(Duration::from_millis(700));
    let dropped = probe(&frontend, &database, 8080, SHORT_TIMEOUT);
    let out = dropper.wait_with_output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        println!("    agent: {line}");
    }
    if dropped != TcpProbe::TimedOut || !out.status.success() {
        bail!(
            "the kernel program did not drop the flow ({dropped:?}, {})",
            out.status
        );
    }
    say("Detached again:");
    probe(&frontend, &database, 8080, PROBE_TIMEOUT);

    heading("Promote: change one word");
    say("`agent promote` rewrites kind: StagedGlobalNetworkPolicy -> GlobalNetworkPolicy in place\n(comments and other documents kept). Now frontend no longer reaches backend:");
    agent(&[
        "promote",
        "--datastore",
        ds,
        "StagedGlobalNetworkPolicy/backend-lockdown-staged",
    ])?;
    agent(&["matrix", "--datastore", ds, "--port", "TCP/8080"])?;

    heading("Safe mode");
    say("An allow-everything GlobalNetworkPolicy at order 100000 is consulted after every real\npolicy with an order. Careful: a policy WITHOUT order sorts after it (Calico: unset =\ninfinity), so the safety net decides first for that policy's endpoints; `agent check`\nwarns about exactly this.");
    copy_dir(&workspace_root().join("safe-mode"), datastore)?;
    agent(&["check", ds])?;
    agent(&["matrix", "--datastore", ds, "--port", "TCP/8080"])?;

    heading("Clean up");
    drop(lab);
    say("Lab namespaces deleted.");
    Ok(())
}

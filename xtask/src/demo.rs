//! `cargo xtask demo`: the staged-policy walkthrough on the embedded default
//! (`examples/`), with a lab of real network namespaces and the agent as an
//! operator runs it.
//!
//! It follows the lesson "Ship it safely": an enforced policy doing real work,
//! a staged lockdown that changes nothing while its would-be verdicts stream in
//! `agent flows`, promotion by changing one word (commit-confirmed), a bad
//! promotion that undoes itself, and safe mode as a command.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use lab::{Lab, Pod, Server, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

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
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("release/agent")
}

/// Runs `agent ARGS` (outside the lab: the CLI talks to the daemon over its
/// Unix socket), echoing the command line and its output.
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

/// One real TCP connection attempt, printed as a matrix line.
fn probe(from: &Pod, to: &Pod, port: u16, expect: TcpProbe) -> Result<()> {
    let timeout = if expect == TcpProbe::Connected {
        PROBE_TIMEOUT
    } else {
        SHORT_TIMEOUT
    };
    let result = from.tcp_connect(to.ipv4, port, timeout);
    let mark = if result == TcpProbe::Connected {
        "✓"
    } else {
        "✗"
    };
    println!(
        "    {mark} {}/{} -> {}/{}:{port}  {result:?}",
        from.namespace, from.name, to.namespace, to.name
    );
    if result != expect {
        bail!("expected {expect:?}, got {result:?}");
    }
    Ok(())
}

/// The daemon, running inside the lab's node namespace (where the pods'
/// host-side interfaces are), with its own bpffs pin directory. Killed on
/// drop, then `agent cleanup` removes its pinned programs and maps (which
/// would otherwise outlive it, by design).
struct Daemon {
    child: Child,
    log: PathBuf,
    bpffs: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(agent_bin())
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
    }
}

impl Daemon {
    fn start(lab: &Lab, datastore: &Path, socket: &Path, log: PathBuf) -> Result<Daemon> {
        let bpffs = PathBuf::from(format!("/sys/fs/bpf/agent-demo-{}", std::process::id()));
        let child = lab
            .node()
            .command(agent_bin())
            .arg("run")
            .arg("--datastore")
            .arg(datastore)
            .arg("--socket")
            .arg(socket)
            .arg("--bpffs")
            .arg(&bpffs)
            // The demo's records go with its work directory, not /var/lib/agent.
            .arg("--flow-history")
            .arg(datastore.with_file_name("flows"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting agent run")?;
        Ok(Daemon { child, log, bpffs })
    }

    /// Waits until `agent status` answers with every endpoint attached.
    fn wait_ready(&mut self, socket: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("agent run exited ({status}); log:\n{}", self.log_text());
            }
            let out = Command::new(agent_bin())
                .args(["status", "--socket", socket, "-o", "json"])
                .output()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if let Some(endpoints) = status["endpoints"].as_array() {
                if !endpoints.is_empty() && endpoints.iter().all(|e| e["attached"] == true) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("agent did not become ready; log:\n{}", self.log_text())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Waits until `agent status` reports a reverted promotion.
fn wait_reverted(socket: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let out = Command::new(agent_bin())
            .args(["status", "--socket", socket, "-o", "json"])
            .output()?;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if status["promotions"].to_string().contains("reverted") {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent did not revert the bad promotion")
}

/// Gives the agent's directory watcher time to recompile and swap the tables.
fn settle() {
    std::thread::sleep(Duration::from_millis(1500));
}

pub fn run() -> Result<()> {
    lab::require_root();
    let work = std::env::temp_dir().join(format!("agent-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let datastore = work.join("policies");
    std::fs::create_dir_all(&datastore)?;
    for entry in std::fs::read_dir(workspace_root().join("examples"))? {
        let path = entry?.path();
        if path.is_file() {
            std::fs::copy(&path, datastore.join(path.file_name().unwrap()))?;
        }
    }
    let result = walkthrough(&work, &datastore);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn walkthrough(work: &Path, datastore: &Path) -> Result<()> {
    let ds = datastore.to_str().context("non-UTF-8 temp path")?;
    let socket_path = work.join("agent.sock");
    let socket = socket_path.to_str().context("non-UTF-8 temp path")?;
    let (lab, [frontend, backend, database], _servers) = build_lab();
    show_policies(ds)?;
    let daemon = start_agent(&lab, datastore, &socket_path, work)?;
    let steps = Walkthrough {
        datastore,
        ds,
        socket,
        frontend,
        backend,
        database,
    };
    steps.observe()?;
    steps.watch_flows()?;
    steps.promote()?;
    steps.bad_promotion()?;
    steps.safe_mode()?;

    heading("Clean up");
    drop(daemon);
    drop(lab);
    say("Agent stopped, lab namespaces deleted. Stage -> observe -> promote is the safe rollout loop.");
    Ok(())
}

/// The lab: a node and three pods, servers on backend and database.
fn build_lab() -> (Lab, [Pod; 3], [Server; 2]) {
    heading("The lab");
    say("A node (its own network namespace) with three pods in namespace prod, each a network\nnamespace wired like Calico wires pods: host-side veth, /32 route, proxy ARP, 169.254.1.1.");
    let lab = Lab::new();
    let frontend = lab.add_pod_at("prod", "frontend", 10, "calidemofront");
    let backend = lab.add_pod_at("prod", "backend", 20, "calidemoback");
    let database = lab.add_pod_at("prod", "database", 30, "calidemodb");
    let servers = [backend.tcp_listen(8080), database.tcp_listen(8080)];
    for pod in [&frontend, &backend, &database] {
        println!(
            "    {}/{}: {} {} on {}",
            pod.namespace, pod.name, pod.ipv4, pod.ipv6, pod.host_if
        );
    }

    (lab, [frontend, backend, database], servers)
}

fn show_policies(ds: &str) -> Result<()> {
    heading("The policies (the embedded default, examples/)");
    say("Enforced, GlobalNetworkPolicy database-allow-from-backend: prod/database accepts ingress\nonly from prod/backend on TCP 8080. Staged, StagedGlobalNetworkPolicy backend-lockdown-staged:\nwould default-deny prod/backend's ingress - but only previews that.");
    agent(&["check", ds])?;
    Ok(())
}

fn start_agent(lab: &Lab, datastore: &Path, socket_path: &Path, work: &Path) -> Result<Daemon> {
    let socket = socket_path.to_str().context("non-UTF-8 temp path")?;
    heading("Start the agent");
    say("`agent run` compiles the policies into per-endpoint BPF decision tables and attaches TC\nprograms (TCX) to each pod's host-side interface. It runs in the node's network namespace.");
    let mut daemon = Daemon::start(lab, datastore, socket_path, work.join("agent.log"))?;
    daemon.wait_ready(socket)?;
    agent(&["status", "--socket", socket])?;

    Ok(daemon)
}

/// What the walkthrough's steps after the start share.
struct Walkthrough<'a> {
    datastore: &'a Path,
    ds: &'a str,
    socket: &'a str,
    frontend: Pod,
    backend: Pod,
    database: Pod,
}

impl Walkthrough<'_> {
    fn observe(&self) -> Result<()> {
        heading("What to observe: real traffic");
        say("The enforced policy is doing real work; the staged lockdown blocks nothing:");
        probe(&self.backend, &self.database, 8080, TcpProbe::Connected)?;
        probe(&self.frontend, &self.database, 8080, TcpProbe::TimedOut)?;
        probe(&self.frontend, &self.backend, 8080, TcpProbe::Connected)?;
        probe(&self.database, &self.backend, 8080, TcpProbe::Connected)?;
        Ok(())
    }

    fn watch_flows(&self) -> Result<()> {
        heading("Watch the would-be verdicts: agent flows");
        say("Every new flow is judged twice in the kernel: enforced (what happened) and pending (what\nwould happen if the staged policy were promoted). Only the first changes the packet's fate.\nThe flows where they differ are exactly what the lockdown would stop:");
        agent(&[
            "flows",
            "--socket",
            self.socket,
            "--pending-diff",
            "--last",
            "10",
        ])?;
        say("And the enforced deny from the real policy:");
        agent(&[
            "flows",
            "--socket",
            self.socket,
            "--verdict",
            "deny",
            "--last",
            "5",
        ])?;
        say("The same answer offline, from the reference evaluator:");
        agent(&[
            "matrix",
            "--datastore",
            self.ds,
            "--port",
            "TCP/8080",
            "--diff",
        ])?;
        Ok(())
    }

    fn promote(&self) -> Result<()> {
        heading("Promote: change one word, commit-confirmed");
        say("The lockdown only denies what we intend (frontend and database -> backend). Promote it:\n`agent promote` rewrites kind: StagedGlobalNetworkPolicy -> GlobalNetworkPolicy in place;\nthe running agent sees the file change and swaps its tables atomically. With\n--confirm-within, the agent itself undoes the promotion unless it is confirmed in time\n(\"commit confirmed\"): if the promotion cut your own access, it comes back by itself.");
        agent(&[
            "promote",
            "--datastore",
            self.ds,
            "StagedGlobalNetworkPolicy/backend-lockdown-staged",
            "--confirm-within",
            "2m",
        ])?;
        settle();
        probe(&self.frontend, &self.backend, 8080, TcpProbe::TimedOut)?;
        probe(&self.backend, &self.database, 8080, TcpProbe::Connected)?;
        agent(&[
            "flows",
            "--socket",
            self.socket,
            "--to",
            "prod/backend",
            "--verdict",
            "deny",
            "--last",
            "3",
        ])?;
        say("Still reachable, everything as intended: confirm.");
        agent(&[
            "confirm",
            "--datastore",
            self.ds,
            "StagedGlobalNetworkPolicy/backend-lockdown-staged",
        ])?;
        Ok(())
    }

    fn bad_promotion(&self) -> Result<()> {
        heading("A bad promotion undoes itself");
        say("A careless lockdown of prod/database (no rules: it would deny backend too), promoted with\na check the agent runs itself: backend's path to the database must stay open. The check\nfails as soon as the lockdown is enforced, so the agent restores the staged version at once.");
        std::fs::write(
            self.datastore.join("30-database-lockdown-staged.yaml"),
            "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata:\n  name: database-lockdown\nspec:\n  selector: app == 'database'\n  types: [Ingress]\n",
        )?;
        settle();
        let check = format!("tcp:{}:8080", self.database.ipv4);
        agent(&[
            "promote",
            "--datastore",
            self.ds,
            "sgnp/database-lockdown",
            "--confirm-within",
            "5m",
            "--confirm-if",
            &check,
        ])?;
        wait_reverted(self.socket)?;
        agent(&["status", "--socket", self.socket])?;
        probe(&self.backend, &self.database, 8080, TcpProbe::Connected)?;
        Ok(())
    }

    fn safe_mode(&self) -> Result<()> {
        heading("Safe mode, as a command");
        say("Before experimenting with denies, put an allow-everything net at a very high order\n(100000): every policy with an order is consulted first. The catch, straight from Calico's\nordering: a policy WITHOUT `order` sorts after it (unset = infinity), so the net decides\nfirst for its endpoints - `agent safe-mode on` names every such policy:");
        agent(&["safe-mode", "on", "--datastore", self.ds])?;
        settle();
        say("Indeed: with the net in place, nothing is denied any more.");
        probe(&self.frontend, &self.database, 8080, TcpProbe::Connected)?;
        probe(&self.frontend, &self.backend, 8080, TcpProbe::Connected)?;
        say("Remove the net last. `agent safe-mode off` first checks that no policy would then deny\nfailsafe or management traffic of a host endpoint (it refuses, naming the rule, unless\n--force); here there is none. Enforcement is back:");
        agent(&["safe-mode", "off", "--datastore", self.ds])?;
        settle();
        probe(&self.frontend, &self.database, 8080, TcpProbe::TimedOut)?;
        probe(&self.backend, &self.database, 8080, TcpProbe::Connected)?;
        Ok(())
    }
}

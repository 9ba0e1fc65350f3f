//! The real-traffic bench's labs (`cargo xtask bench --traffic`, checked by
//! `tests/tests/bench_traffic.rs`): a client pod opening connections to a
//! server pod through the node, with the server's ingress policy of N rules
//! enforced three ways, each in its own [`Lab`]:
//!
//! - [`Variant::NoProgram`]: nothing on the path (the floor);
//! - [`Variant::Agent`]: `agent run` in the node, the policy compiled from
//!   YAML ([`datastore_yaml`]);
//! - [`Variant::Nftables`]: an nftables table of the same rule list
//!   ([`nft_script`]), the shape iptables-mode Calico generates: a forward
//!   chain dispatching on the pod interfaces to a per-pod chain
//!   (`cali-fw-`/`cali-tw-`) that accepts established flows, then jumps to one
//!   chain per policy whose rules are tried first-match in order.
//!
//! The policy ([`policy`]): rule i allows TCP from its own peer (a distinct
//! IPv4 /32 outside the lab) to port 10,000 + i, the client's rule last, then a
//! Deny; so every new connection from the client walks (nftables) or looks up
//! (agent) the whole set. Traffic comes from `loadgen` (`src/bin/loadgen.rs`),
//! a compiled program run in the pods with `nsenter --net=`.
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::{Lab, Netns, Pod};

/// Calico's limit is 1,024 rules per policy and direction; the benches use 1,000.
const RULES_PER_POLICY: usize = 1_000;
const FIRST_PORT: u16 = 10_000;
/// The pods' numbers (`10.65.0.N`) and host interfaces.
const CLIENT: (u8, &str) = (10, "calitrclient");
const SERVER: (u8, &str) = (20, "calitrserver");
const STRANGER: (u8, &str) = (30, "calitrstranger");
/// How long a probe expected to be dropped waits.
const PROBE_MS: u64 = 300;
/// The pause between two rounds of probes while waiting for the policy.
const WAIT_POLL: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    NoProgram,
    Agent,
    Nftables,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::NoProgram, Variant::Agent, Variant::Nftables];

    /// The name in the bench's JSON and tables.
    pub fn name(self) -> &'static str {
        match self {
            Variant::NoProgram => "none",
            Variant::Agent => "agent",
            Variant::Nftables => "nftables",
        }
    }
}

/// One Allow rule of the server's ingress policy: TCP from `peer`/32 to `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub peer: Ipv4Addr,
    pub ports: Vec<u16>,
}

/// The port of the accept-and-close server (the client's rule allows it and the next).
pub fn connect_port(rules: usize) -> u16 {
    FIRST_PORT + rules as u16 - 1
}

/// The port of the throughput sink.
pub fn sink_port(rules: usize) -> u16 {
    connect_port(rules) + 1
}

/// `rules` rules (at least 1): rules-1 distinct peers (`10.70.x.y`) to their
/// own port, then the client to the server's two ports.
pub fn policy(rules: usize) -> Vec<Rule> {
    assert!((1..=20_000).contains(&rules), "1 to 20,000 rules");
    let mut list: Vec<Rule> = (0..rules - 1)
        .map(|i| Rule {
            peer: Ipv4Addr::new(10, 70, (i / 250) as u8, (i % 250) as u8 + 1),
            ports: vec![FIRST_PORT + i as u16],
        })
        .collect();
    list.push(Rule {
        peer: crate::pod_ipv4(CLIENT.0),
        ports: vec![connect_port(rules), sink_port(rules)],
    });
    list
}

/// The agent's datastore: the three pods as workload endpoints and the server's
/// ingress rules in GlobalNetworkPolicies of at most 1,000 rules, in order, the
/// last ending with a Deny.
pub fn datastore_yaml(rules: &[Rule]) -> String {
    let mut y = String::new();
    for (name, (n, iface)) in [
        ("client", CLIENT),
        ("server", SERVER),
        ("stranger", STRANGER),
    ] {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\n\
             metadata: {{name: {name}, namespace: bench, labels: {{app: {name}}}}}\n\
             spec: {{interfaceName: {iface}, ipNetworks: ['{}/32', '{}/128']}}\n---\n",
            crate::pod_ipv4(n),
            crate::pod_ipv6(n)
        ));
    }
    let chunks: Vec<&[Rule]> = rules.chunks(RULES_PER_POLICY).collect();
    for (p, chunk) in chunks.iter().enumerate() {
        y.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
             metadata: {{name: server-ingress-{p}}}\n\
             spec:\n  order: {}\n  selector: app == 'server'\n  types: [Ingress]\n  ingress:\n",
            10 + p
        ));
        for r in *chunk {
            let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
            y.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{nets: ['{}/32']}}, destination: {{ports: [{}]}}}}\n",
                r.peer,
                ports.join(", ")
            ));
        }
        if p + 1 == chunks.len() {
            y.push_str("  - action: Deny\n");
        } else {
            y.push_str("---\n");
        }
    }
    y
}

/// The same policy as an nftables table for the node (`nft -f`): Calico's
/// iptables-mode chain layout, one `cali-pi-` chain per policy of
/// [`datastore_yaml`], first match wins, the last policy ends with a drop. The
/// client and the stranger (no policy) are allowed out, as Calico's default
/// profile does.
pub fn nft_script(rules: &[Rule]) -> String {
    let chunks: Vec<&[Rule]> = rules.chunks(RULES_PER_POLICY).collect();
    let mut s = String::from("table inet calibench {\n");
    s.push_str(&format!(
        "  chain forward {{\n    type filter hook forward priority filter; policy accept;\n\
         \x20   iifname {{ \"{}\", \"{}\" }} jump cali-fw-pod\n    oifname \"{}\" jump cali-tw-server\n  }}\n",
        CLIENT.1, STRANGER.1, SERVER.1
    ));
    s.push_str(
        "  chain cali-fw-pod {\n    ct state established,related accept\n    ct state invalid drop\n  }\n",
    );
    s.push_str("  chain cali-tw-server {\n    ct state established,related accept\n    ct state invalid drop\n");
    for p in 0..chunks.len() {
        s.push_str(&format!("    jump cali-pi-server-ingress-{p}\n"));
    }
    s.push_str("  }\n");
    for (p, chunk) in chunks.iter().enumerate() {
        s.push_str(&format!("  chain cali-pi-server-ingress-{p} {{\n"));
        for r in *chunk {
            let ports: Vec<String> = r.ports.iter().map(u16::to_string).collect();
            s.push_str(&format!(
                "    ip saddr {} tcp dport {{ {} }} accept\n",
                r.peer,
                ports.join(", ")
            ));
        }
        if p + 1 == chunks.len() {
            s.push_str("    drop\n");
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The programs a [`TrafficLab`] runs.
#[derive(Clone, Debug)]
pub struct Tools {
    pub agent: PathBuf,
    pub loadgen: PathBuf,
    /// How long `agent run` may take to compile and enforce the policy.
    pub agent_ready: Duration,
}

/// Which pod a probe leaves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Client,
    Stranger,
}

/// How long `agent run` took to enforce the lab's policy, seen from outside.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    /// The wall clock when the agent was started (its log's timestamps are
    /// wall-clock times: steps are measured from this).
    pub spawned: SystemTime,
    /// From the start to the first probe the policy dropped (the probe's
    /// start: its SYN was dropped, so the policy was enforced by then).
    pub enforced: Duration,
    /// From the start to the probe before it, which the policy did not drop
    /// yet (None: the first probe was dropped): enforcement began between the two.
    pub not_yet: Option<Duration>,
    /// CPU time (user + system) the agent had used when the first dropped
    /// probe returned, from /proc (10 ms ticks).
    pub agent_cpu: Duration,
}

/// One lab of the bench: client, server and stranger pods, the policy enforced
/// by `variant`, the loadgen server running in the server pod.
pub struct TrafficLab {
    pub variant: Variant,
    pub rules: usize,
    pub client: Pod,
    pub server: Pod,
    pub stranger: Pod,
    tools: Tools,
    _serve: Killed,
    agent: Option<AgentRun>,
    /// With [`Variant::Agent`]: when the agent started and a probe first saw its policy.
    pub startup: Option<Startup>,
    /// Dropped last: the namespaces go after the processes in them.
    pub lab: Lab,
}

impl TrafficLab {
    pub fn new(variant: Variant, rules: usize, tools: &Tools) -> Result<TrafficLab> {
        let lab = Lab::try_new()?;
        let pod =
            |(n, iface): (u8, &str), name| lab.try_add_pod("bench", name, Some(n), Some(iface));
        let (client, server, stranger) = (
            pod(CLIENT, "client")?,
            pod(SERVER, "server")?,
            pod(STRANGER, "stranger")?,
        );
        let serve = server
            .command(&tools.loadgen)
            .args([
                "serve",
                &connect_port(rules).to_string(),
                &sink_port(rules).to_string(),
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("starting loadgen serve in the server pod")?;
        let mut this = TrafficLab {
            variant,
            rules,
            client,
            server,
            stranger,
            tools: tools.clone(),
            _serve: Killed(serve),
            agent: None,
            startup: None,
            lab,
        };
        let list = policy(rules);
        match variant {
            Variant::NoProgram => {}
            Variant::Nftables => {
                let file = std::env::temp_dir().join(format!("{}-traffic.nft", this.lab.id()));
                std::fs::write(&file, nft_script(&list))?;
                let out = this
                    .lab
                    .node()
                    .command("nft")
                    .arg("-f")
                    .arg(&file)
                    .output()?;
                let _ = std::fs::remove_file(&file);
                if !out.status.success() {
                    bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
            Variant::Agent => {
                this.agent = Some(AgentRun::start(
                    &this.lab,
                    &tools.agent,
                    &datastore_yaml(&list),
                )?);
            }
        }
        this.wait_enforced()?;
        Ok(this)
    }

    /// Waits until the server answers and, with a policy, until the policy
    /// drops a port no rule allows; with the agent, notes when (see [`Startup`]).
    fn wait_enforced(&mut self) -> Result<()> {
        let limit = match self.variant {
            Variant::Agent => self.tools.agent_ready,
            _ => Duration::from_secs(10),
        };
        let deadline = Instant::now() + limit;
        let server = self.server.ipv4.into();
        let denied_port = sink_port(self.rules) + 1;
        let mut previous = None;
        loop {
            let up = self.probe(Source::Client, server, connect_port(self.rules))? == "connected";
            let probed = Instant::now();
            let denied = self.probe(Source::Client, server, denied_port)? == "timeout";
            if up && (denied || self.variant == Variant::NoProgram) {
                if let Some(agent) = &self.agent {
                    self.startup = Some(agent.startup(probed, previous));
                }
                return Ok(());
            }
            if let Some(agent) = &mut self.agent {
                agent.check_running()?;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} at {} rules: not enforced after {limit:?}",
                    self.variant.name(),
                    self.rules
                );
            }
            previous = Some(probed);
            std::thread::sleep(WAIT_POLL);
        }
    }

    /// Restarts the agent (see [`AgentRun::restart`]) and waits until its log
    /// says the first tables are enforced (the policy stays enforced by the
    /// earlier agent's programs meanwhile, so a probe cannot tell); the new
    /// agent's spawn time and CPU time then. [`Self::agent_log`] is the new log.
    pub fn restart_agent(&mut self, done: &str) -> Result<(SystemTime, Duration)> {
        let limit = self.tools.agent_ready;
        let agent = self.agent.as_mut().context("no agent in this lab")?;
        agent.restart(&self.lab)?;
        let deadline = Instant::now() + limit;
        while !std::fs::read_to_string(&agent.log)?.contains(done) {
            agent.check_running()?;
            if Instant::now() > deadline {
                bail!("the restarted agent did not log {done:?} within {limit:?}");
            }
            std::thread::sleep(WAIT_POLL);
        }
        let cpu = process_cpu(agent.child.0.id()).unwrap_or_default();
        Ok((agent.spawned.0, cpu))
    }

    /// The agent's log so far (`RUST_LOG=info`, JSON lines), with [`Variant::Agent`].
    pub fn agent_log(&self) -> Option<String> {
        let agent = self.agent.as_ref()?;
        std::fs::read_to_string(&agent.log).ok()
    }

    fn pod(&self, from: Source) -> &Netns {
        match from {
            Source::Client => &self.client,
            Source::Stranger => &self.stranger,
        }
    }

    /// `loadgen probe`: `connected`, `refused`, `timeout` or `unreachable`.
    pub fn probe(&self, from: Source, dst: IpAddr, port: u16) -> Result<String> {
        let out = self.loadgen(
            from,
            &[
                "probe",
                &dst.to_string(),
                &port.to_string(),
                &PROBE_MS.to_string(),
            ],
        )?;
        Ok(out.trim().to_owned())
    }

    /// New connections per second from the client to the server over
    /// `seconds`, and how many attempts failed (no handshake within 1 s); an
    /// error when more than 1% failed.
    pub fn connection_rate(&self, seconds: f64, threads: usize) -> Result<(f64, f64)> {
        let out = self.loadgen(
            Source::Client,
            &[
                "connect",
                &self.server.ipv4.to_string(),
                &connect_port(self.rules).to_string(),
                &seconds.to_string(),
                &threads.to_string(),
            ],
        )?;
        let [connections, failures, secs] = fields(&out, ["connections", "failures", "seconds"])?;
        if failures * 100.0 > connections {
            bail!(
                "{}: {failures} connections failed ({out})",
                self.variant.name()
            );
        }
        Ok((connections / secs, failures))
    }

    /// Gbit/s of one TCP stream from the client into the server's sink.
    pub fn throughput(&self, seconds: f64) -> Result<f64> {
        let out = self.loadgen(
            Source::Client,
            &[
                "stream",
                &self.server.ipv4.to_string(),
                &sink_port(self.rules).to_string(),
                &seconds.to_string(),
            ],
        )?;
        let [bytes, secs] = fields(&out, ["bytes", "seconds"])?;
        Ok(bytes * 8.0 / secs / 1e9)
    }

    fn loadgen(&self, from: Source, args: &[&str]) -> Result<String> {
        let out = self
            .pod(from)
            .command(&self.tools.loadgen)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running loadgen")?;
        if !out.status.success() {
            bail!(
                "loadgen {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Probes of the policy (source pod, destination): an allowed listening
    /// port answers `connected`, a port without a listener `refused` when
    /// allowed and `timeout` when dropped. In order: the client to the
    /// server's two ports (allowed), to a port no rule names, to the first
    /// rule's port (another peer's), over IPv6 (the rules are IPv4), and the
    /// stranger to the server (denied).
    pub fn verdict_probes(&self) -> Vec<(Source, SocketAddr)> {
        let (v4, v6) = (self.server.ipv4.into(), self.server.ipv6.into());
        let at = |ip: IpAddr, port| SocketAddr::new(ip, port);
        vec![
            (Source::Client, at(v4, connect_port(self.rules))),
            (Source::Client, at(v4, sink_port(self.rules))),
            (Source::Client, at(v4, sink_port(self.rules) + 1)),
            (Source::Client, at(v4, FIRST_PORT)),
            (Source::Client, at(v6, connect_port(self.rules))),
            (Source::Stranger, at(v4, connect_port(self.rules))),
        ]
    }
}

/// Parses `key=value` fields of a loadgen line, in the order of `keys`.
fn fields<const N: usize>(line: &str, keys: [&str; N]) -> Result<[f64; N]> {
    let mut out = [0.0; N];
    for (slot, key) in out.iter_mut().zip(keys) {
        let value = line
            .split_whitespace()
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            .with_context(|| format!("loadgen output {line:?} has no {key}="))?;
        *slot = value
            .parse()
            .with_context(|| format!("loadgen output {line:?}: {key} is not a number"))?;
    }
    Ok(out)
}

/// User + system CPU time of process `pid` (/proc/PID/stat fields 14 and 15).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_millis(ticks * 1000 / per_second))
}

/// A child process killed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `agent run` in a lab's node with its own datastore, socket and pin
/// directory; killed and its pins removed (`agent cleanup`) on drop.
struct AgentRun {
    child: Killed,
    spawned: (SystemTime, Instant),
    agent: PathBuf,
    base: PathBuf,
    bpffs: PathBuf,
    log: PathBuf,
}

impl AgentRun {
    fn start(lab: &Lab, agent: &Path, yaml: &str) -> Result<AgentRun> {
        let base = std::env::temp_dir().join(format!("{}-traffic-agent", lab.id()));
        let datastore = base.join("datastore");
        std::fs::create_dir_all(&datastore)?;
        std::fs::write(datastore.join("bench.yaml"), yaml)?;
        let bpffs = Path::new("/sys/fs/bpf").join(format!("{}-traffic", lab.id()));
        let log = base.join("agent.log");
        let spawned = (SystemTime::now(), Instant::now());
        let child = Self::spawn(lab, agent, &base, &bpffs, &log)?;
        Ok(AgentRun {
            child: Killed(child),
            spawned,
            agent: agent.to_path_buf(),
            base,
            bpffs,
            log,
        })
    }

    /// `agent run` on the lab's datastore and pins, logging to `log`.
    fn spawn(lab: &Lab, agent: &Path, base: &Path, bpffs: &Path, log: &Path) -> Result<Child> {
        lab.node()
            .command(agent)
            .arg("run")
            .arg("--datastore")
            .arg(base.join("datastore"))
            .arg("--socket")
            .arg(base.join("agent.sock"))
            .arg("--bpffs")
            .arg(bpffs)
            // Nothing on the host's disk: the bench needs no records kept.
            .arg("--flow-history")
            .arg("none")
            .env("RUST_LOG", "info")
            // Timestamps to the microsecond, parsed by the startup bench.
            .env("AGENT_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::options().append(true).open(log)?)
            .spawn()
            .context("starting agent run")
    }

    /// Stops the agent as a restart does (SIGTERM: its programs stay attached,
    /// enforcing) and starts another on the same pins and datastore, logging
    /// to a fresh file.
    fn restart(&mut self, lab: &Lab) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = self.child.0.wait()?;
        if !status.success() {
            bail!("agent run stopped with {status} on SIGTERM");
        }
        self.log = self.base.join("agent-restarted.log");
        self.spawned = (SystemTime::now(), Instant::now());
        self.child = Killed(Self::spawn(
            lab,
            &self.agent,
            &self.base,
            &self.bpffs,
            &self.log,
        )?);
        Ok(())
    }

    /// [`Startup`] for a policy first seen by the probe started at `seen`
    /// (the one before it started at `before`).
    fn startup(&self, seen: Instant, before: Option<Instant>) -> Startup {
        let (wall, started) = self.spawned;
        Startup {
            spawned: wall,
            enforced: seen - started,
            not_yet: before.map(|b| b - started),
            agent_cpu: process_cpu(self.child.0.id()).unwrap_or_default(),
        }
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.0.try_wait()? {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("agent run exited with {status}:\n{log}");
        }
        Ok(())
    }
}

impl Drop for AgentRun {
    fn drop(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
        let _ = Command::new(&self.agent)
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

//! Restarts and upgrades of `agent run` without a gap in enforcement: pinned
//! maps and TCX links under a per-test bpffs directory, a SIGKILLed agent's
//! programs keep enforcing, a new agent adopts the state and swaps its programs
//! into the pinned links; `agent cleanup` and `--detach-on-exit` remove it all.
//!
//! While the agent is killed and restarted, probers run all along: a long-lived
//! TCP connection (backend -> database:8080, allowed) echoing a message every
//! ~10 ms, new connections backend -> database:8080 (allowed, each must
//! succeed) and frontend -> database:8080 (denied, none may get through).
mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use lab::{Lab, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

const IFACES: [&str; 3] = ["calidemofront", "calidemoback", "calidemodb"];

/// The longest an echo on the long-lived connection may take.
const ECHO_BOUND: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Report {
    echoes: u64,
    max_echo: Duration,
    stream_errors: Vec<String>,
    allowed_ok: u64,
    allowed_failed: Vec<String>,
    denied_ok: u64,
    denied_through: Vec<String>,
}

/// The probers of the module doc, running until [`Probers::stop`].
struct Probers {
    stop: Arc<AtomicBool>,
    report: Arc<Mutex<Report>>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
}

impl Probers {
    fn start(s: &Seed) -> Probers {
        let stop = Arc::new(AtomicBool::new(false));
        let report = Arc::new(Mutex::new(Report::default()));
        let started = Instant::now();
        let mut threads = Vec::new();

        let mut stream = s.backend.tcp_stream(s.database.ipv4, 8080, PROBE_TIMEOUT);
        stream.set_read_timeout(Some(ECHO_BOUND)).unwrap();
        {
            let (stop, report) = (stop.clone(), report.clone());
            threads.push(std::thread::spawn(move || {
                let mut seq: u64 = 0;
                while !stop.load(Ordering::SeqCst) {
                    seq += 1;
                    let msg = seq.to_be_bytes();
                    let t = Instant::now();
                    let mut back = [0u8; 8];
                    let r = stream
                        .write_all(&msg)
                        .and_then(|()| stream.read_exact(&mut back));
                    let took = t.elapsed();
                    let mut rep = report.lock().unwrap();
                    let at = started.elapsed();
                    match r {
                        Ok(()) if back == msg => {
                            rep.echoes += 1;
                            rep.max_echo = rep.max_echo.max(took);
                            if took > ECHO_BOUND {
                                rep.stream_errors
                                    .push(format!("echo {seq} took {took:?} at {at:?}"));
                            }
                        }
                        Ok(()) => {
                            rep.stream_errors
                                .push(format!("echo {seq}: got {back:?} at {at:?}"));
                            return;
                        }
                        Err(e) => {
                            rep.stream_errors
                                .push(format!("echo {seq}: {e} after {took:?} at {at:?}"));
                            return;
                        }
                    }
                    drop(rep);
                    std::thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        {
            let (stop, report) = (stop.clone(), report.clone());
            let (from, to) = (s.backend.clone(), s.database.ipv4);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let got = from.tcp_connect(to, 8080, PROBE_TIMEOUT);
                    let mut rep = report.lock().unwrap();
                    if got == TcpProbe::Connected {
                        rep.allowed_ok += 1;
                    } else {
                        let at = started.elapsed();
                        rep.allowed_failed.push(format!("{got:?} at {at:?}"));
                    }
                    drop(rep);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }));
        }
        {
            let (stop, report) = (stop.clone(), report.clone());
            let (from, to) = (s.frontend.clone(), s.database.ipv4);
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let got = from.tcp_connect(to, 8080, SHORT_TIMEOUT);
                    let mut rep = report.lock().unwrap();
                    if got == TcpProbe::Connected {
                        let at = started.elapsed();
                        rep.denied_through.push(format!("connected at {at:?}"));
                    } else {
                        rep.denied_ok += 1;
                    }
                }
            }));
        }
        Probers {
            stop,
            report,
            threads,
            started,
        }
    }

    fn mark(&self, what: &str) {
        eprintln!("{:?}: {what}", self.started.elapsed());
    }

    fn stop(self) -> Report {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let r = std::mem::take(&mut *self.report.lock().unwrap());
        eprintln!("{r:#?}");
        r
    }
}

fn assert_clean(r: &Report, min_seconds: u64) {
    assert!(r.stream_errors.is_empty(), "long-lived connection: {r:#?}");
    assert!(r.max_echo <= ECHO_BOUND, "{r:#?}");
    // ~10 ms per echo: at least a few per second even on a loaded machine.
    assert!(r.echoes >= 20 * min_seconds, "too few echoes: {r:#?}");
    assert!(
        r.allowed_failed.is_empty(),
        "allowed new connections: {r:#?}"
    );
    assert!(
        r.allowed_ok >= 2 * min_seconds,
        "too few allowed probes: {r:#?}"
    );
    assert!(
        r.denied_through.is_empty(),
        "denied connections got through: {r:#?}"
    );
    assert!(r.denied_ok >= min_seconds, "too few denied probes: {r:#?}");
}

/// (link id, program id) of each link pinned under `bpffs`, by file name.
fn pinned_links(bpffs: &Path) -> Vec<(String, u32, u32)> {
    let mut out: Vec<(String, u32, u32)> = std::fs::read_dir(bpffs.join("links"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let link: aya::programs::links::FdLink =
                        aya::programs::links::PinnedLink::from_pin(e.path())
                            .unwrap()
                            .into();
                    let info = link.info().unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        info.id(),
                        info.program_id(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn sigkill_restart_keeps_enforcing_and_established_flows() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("sigkill");
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    assert_seed_enforced(&s);
    let bpffs = first.bpffs.clone();
    let epoch = first.status()["epoch"].clone();
    let links_before = pinned_links(&bpffs);
    assert_eq!(links_before.len(), 6, "{links_before:?}");

    // One agent per pin directory: a second one (and `agent cleanup`) is refused.
    let other = dir.parent().unwrap().join("other.sock");
    let out = lab
        .node()
        .command(agent_bin())
        .args(["run", "--datastore"])
        .arg(&dir)
        .arg("--socket")
        .arg(&other)
        .arg("--bpffs")
        .arg(&bpffs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another agent is running on"), "{err}");
    let out = Agent::cleanup(&lab, &bpffs);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(pinned_links(&bpffs).len(), 6);

    let probers = Probers::start(&s);
    std::thread::sleep(Duration::from_secs(1));
    probers.mark("kill -9");
    first.kill9();
    first.keep_state();
    // Killed: the pinned links keep the programs attached, still enforcing.
    std::thread::sleep(Duration::from_secs(1));
    for iface in IFACES {
        assert_eq!(tcx_programs(&lab, iface).len(), 2, "{iface} after kill -9");
    }
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "frontend -> database:8080 with no agent running"
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "backend -> database:8080 with no agent running"
    );
    std::thread::sleep(Duration::from_secs(1));

    probers.mark("restart");
    let second = Agent::start_on(&lab, &dir, &bpffs, &[]);
    second.wait_attached(3);
    probers.mark("restarted");
    std::thread::sleep(Duration::from_secs(1));
    let r = probers.stop();
    assert_clean(&r, 4);

    // Adopted: same maps and links, identical policy so no flip and no epoch bump,
    // and the same build: every link keeps the programs the first agent
    // verified (`dataplane::reuse`).
    let st = second.status();
    assert_eq!(st["pinning"]["adopted"], true, "{st:#}");
    assert_eq!(st["pinning"]["programs_reused"], true, "{st:#}");
    assert_eq!(st["pinning"]["adopted_links"], 6, "{st:#}");
    assert_eq!(st["pinning"]["start_flipped"], false, "{st:#}");
    assert_eq!(st["epoch"], epoch, "{st:#}");
    let links_after = pinned_links(&bpffs);
    assert_eq!(links_after.len(), 6);
    assert_eq!(
        links_after, links_before,
        "same links, same verified programs"
    );
    // The tables compiled while the programs loaded, with the pinned endpoint
    // ids, are the live ones (no flip above).
    let log = second.log_text();
    assert!(
        log.contains("first compile done while the programs were verified"),
        "{log}"
    );
    assert_seed_enforced(&s);
    drop(second);
    assert!(!bpffs.exists(), "test cleanup removes the pin dir");
}

#[test]
fn upgrade_restart_with_changed_policy_swaps_programs_and_prunes() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("upgrade");
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    let bpffs = first.bpffs.clone();
    let epoch = first.status()["epoch"].as_u64().unwrap();
    let links_before = pinned_links(&bpffs);

    let probers = Probers::start(&s);
    std::thread::sleep(Duration::from_secs(1));
    // A clean stop keeps the dataplane (like Calico's outliving felix).
    probers.mark("SIGTERM");
    assert!(first.terminate().success(), "{}", first.log_text());
    first.keep_state();
    for iface in IFACES {
        assert_eq!(tcx_programs(&lab, iface).len(), 2, "{iface} after SIGTERM");
    }
    // While stopped, the policy changes (an extra allowed port) and frontend's
    // endpoint leaves the datastore.
    let policy = dir.join("10-database-allow-from-backend.yaml");
    let text = std::fs::read_to_string(&policy).unwrap();
    assert!(text.contains("ports: [8080]"), "{text}");
    std::fs::write(
        &policy,
        text.replace("ports: [8080]", "ports: [8080, 9090]"),
    )
    .unwrap();
    let eps = dir.join("00-endpoints.yaml");
    let text = std::fs::read_to_string(&eps).unwrap();
    let kept: Vec<&str> = text
        .split("\n---\n")
        .filter(|d| !d.contains("name: frontend"))
        .collect();
    std::fs::write(&eps, kept.join("\n---\n")).unwrap();
    // And the build changes: its object has another name among the kept
    // verified programs, so the earlier build's are not taken.
    let objects = object_dirs(&bpffs);
    let [earlier] = objects.as_slice() else {
        panic!("one object's programs pinned: {objects:?}")
    };
    let other_build = earlier.with_file_name("0123456789abcdef");
    std::fs::rename(earlier, &other_build).unwrap();

    probers.mark("start the new agent on the pinned state");
    let second = Agent::start_on(&lab, &dir, &bpffs, &[]);
    second.wait_attached(2);
    let st = second.wait_status("pruned frontend's links", |s| {
        s["pinning"]["pruned_links"] == 2
    });
    probers.mark("adopted");
    assert_eq!(st["pinning"]["adopted"], true, "{st:#}");
    assert_eq!(st["pinning"]["adopted_links"], 4, "{st:#}");
    assert_eq!(st["pinning"]["start_flipped"], true, "{st:#}");
    assert_eq!(st["epoch"].as_u64().unwrap(), epoch + 1, "{st:#}");
    assert!(st["last_error"].is_null(), "{st:#}");
    assert_eq!(st["pinning"]["programs_reused"], false, "{st:#}");
    assert_eq!(
        &object_dirs(&bpffs),
        &objects,
        "this build's verified programs kept, the other build's unpinned"
    );

    // frontend is no longer an endpoint: its programs are detached...
    assert!(tcx_programs(&lab, "calidemofront").is_empty());
    let links_after = pinned_links(&bpffs);
    assert_eq!(links_after.len(), 4, "{links_after:?}");
    // ...the others kept their links with new programs.
    for a in &links_after {
        let b = links_before.iter().find(|b| b.0 == a.0).unwrap();
        assert_eq!(b.1, a.1, "{}: same link", a.0);
        assert_ne!(b.2, a.2, "{}: program swapped", a.0);
    }
    std::thread::sleep(Duration::from_secs(1));
    let r = probers.stop();
    // frontend -> database stays denied by database's ingress policy.
    assert_clean(&r, 2);
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

/// The directories of verified programs kept for a restart, one per object.
fn object_dirs(bpffs: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(bpffs.join("progs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// A restart of the same build takes the programs the earlier agent verified
/// instead of verifying them again, but only on the maps they were verified
/// with: a map that had to be created afresh makes the next agent verify its
/// own programs (the earlier ones would write to a map nobody reads).
#[test]
fn a_restart_reuses_verified_programs_only_on_the_same_maps() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("reuse");
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    let bpffs = first.bpffs.clone();
    let st = first.status();
    assert_eq!(st["pinning"]["programs_reused"], false, "{st:#}");
    assert!(first.terminate().success(), "{}", first.log_text());
    first.keep_state();
    assert_eq!(object_dirs(&bpffs).len(), 1);
    let links = pinned_links(&bpffs);
    assert_eq!(links.len(), 6, "{links:?}");

    let mut second = Agent::start_on(&lab, &dir, &bpffs, &[]);
    second.wait_attached(3);
    let st = second.status();
    assert_eq!(st["pinning"]["programs_reused"], true, "{st:#}");
    assert_eq!(pinned_links(&bpffs), links, "same links, same programs");
    assert_seed_enforced(&s);
    assert!(second.terminate().success(), "{}", second.log_text());
    second.keep_state();

    std::fs::remove_file(bpffs.join("maps/DP_COUNTERS")).unwrap();
    let third = Agent::start_on(&lab, &dir, &bpffs, &[]);
    third.wait_attached(3);
    let st = third.status();
    assert_eq!(st["pinning"]["adopted"], true, "{st:#}");
    assert_eq!(st["pinning"]["programs_reused"], false, "{st:#}");
    for (b, a) in links.iter().zip(&pinned_links(&bpffs)) {
        assert_eq!((&b.0, b.1), (&a.0, a.1), "same pinned link");
        assert_ne!(b.2, a.2, "{}: verified afresh and swapped in", a.0);
    }
    assert_seed_enforced(&s);
}

#[test]
fn cleanup_and_detach_on_exit_leave_nothing_attached() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);

    // `agent cleanup` after a clean stop that kept everything.
    let dir = Agent::seed_datastore("cleanup");
    let mut agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    let bpffs = agent.bpffs.clone();
    assert!(agent.terminate().success());
    assert!(bpffs.join("maps/CONNTRACK").exists());
    assert_eq!(pinned_links(&bpffs).len(), 6);
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "still enforced after a clean stop"
    );
    let out = Agent::cleanup(&lab, &bpffs);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("removed 6 links"), "{text}");
    assert!(!bpffs.exists(), "pin dir left behind");
    for iface in IFACES {
        assert!(tcx_programs(&lab, iface).is_empty(), "{iface}");
    }
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "unpoliced after cleanup"
    );
    drop(agent);

    // --detach-on-exit.
    let dir = Agent::seed_datastore("detach");
    let mut agent = Agent::start_with(&lab, &dir, &["--detach-on-exit"]);
    agent.wait_attached(3);
    let bpffs = agent.bpffs.clone();
    assert!(bpffs.exists());
    assert!(agent.terminate().success());
    assert!(
        !bpffs.exists(),
        "pin dir left behind:\n{}",
        agent.log_text()
    );
    for iface in IFACES {
        assert!(tcx_programs(&lab, iface).is_empty(), "{iface}");
    }
}

#[test]
fn an_incompatible_pinned_map_is_a_clear_error() {
    lab::require_root();
    let bpffs = Path::new("/sys/fs/bpf").join(format!("agent-incompat-{}", std::process::id()));
    agent::dataplane::host::prepare_pin_dir(&bpffs).unwrap();
    // A hash map pinned where FRAGMENTS (an LRU hash) belongs, as an older or
    // newer build with another layout would leave it (a map outside the
    // policy tables, which are replaced instead: see the next test).
    let ebpf = aya::EbpfLoader::new()
        .map_pin_path("ENDPOINTS", bpffs.join("maps/FRAGMENTS"))
        .load(agent::dataplane::EBPF_OBJECT)
        .unwrap();
    drop(ebpf);
    let err = match agent::dataplane::Dataplane::load_pinned(&bpffs) {
        Ok(_) => panic!("loaded over an incompatible pinned map"),
        Err(e) => e.to_string(),
    };
    let done = agent::dataplane::loader::cleanup(&bpffs).unwrap();
    assert!(!bpffs.exists());
    assert!(done.maps >= 1);
    assert!(
        err.contains("the map FRAGMENTS pinned in")
            && err.contains("map_type")
            && err.contains("agent cleanup --bpffs"),
        "{err}"
    );
}

/// An agent whose policy tables have another layout than the pinned ones
/// (`GROUPS_*` of the version before this one) replaces the whole table
/// group instead of refusing to start: the earlier agent's programs keep
/// their own maps and enforce until the new ones are swapped into the links,
/// so traffic sees no gap (the probers), and afterwards the pins are this
/// build's maps, the epoch went on from the old one (conntrack re-judged).
#[test]
fn an_upgrade_to_another_table_layout_keeps_enforcing() {
    lab::require_root();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let dir = Agent::seed_datastore("layout");
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    let bpffs = first.bpffs.clone();
    let epoch = first.status()["epoch"].as_u64().unwrap();
    let links_before = pinned_links(&bpffs);
    let groups_before = aya::maps::MapInfo::from_pin(bpffs.join("maps/GROUPS_0"))
        .unwrap()
        .id();

    let probers = Probers::start(&s);
    std::thread::sleep(Duration::from_secs(1));
    probers.mark("kill -9");
    first.kill9();
    first.keep_state();
    // The pinned state now reads as an earlier version's.
    for name in ["GROUPS_0", "GROUPS_1"] {
        pin_old_groups_map(&bpffs, name);
    }
    std::thread::sleep(Duration::from_secs(1));
    probers.mark("start the new agent on the old layout");
    let second = Agent::start_on(&lab, &dir, &bpffs, &[]);
    second.wait_attached(3);
    probers.mark("upgraded");
    std::thread::sleep(Duration::from_secs(1));
    let r = probers.stop();
    assert_clean(&r, 4);

    let st = second.status();
    assert_eq!(st["pinning"]["adopted"], true, "{st:#}");
    // Programs bound to the replaced tables are not reused.
    assert_eq!(st["pinning"]["programs_reused"], false, "{st:#}");
    assert_eq!(st["pinning"]["adopted_links"], 6, "{st:#}");
    assert_eq!(st["pinning"]["start_flipped"], true, "{st:#}");
    assert!(
        st["epoch"].as_u64().unwrap() > epoch,
        "{st:#} after {epoch}"
    );
    assert!(
        second
            .log_text()
            .contains("pinned policy tables of another layout"),
        "{}",
        second.log_text()
    );
    // This build's maps are pinned now, fresh ones (not the first agent's).
    let groups = aya::maps::MapInfo::from_pin(bpffs.join("maps/GROUPS_0")).unwrap();
    assert_eq!(
        (groups.map_flags(), groups.max_entries()),
        (1, agent_common::limits::MAX_GROUP_ENTRIES)
    );
    assert_ne!(groups.id(), groups_before);
    assert!(!bpffs.join("maps_next").exists());
    let links_after = pinned_links(&bpffs);
    assert_eq!(links_after.len(), 6);
    for (b, a) in links_before.iter().zip(&links_after) {
        assert_eq!((&b.0, b.1), (&a.0, a.1), "same pinned link");
        assert_ne!(b.2, a.2, "{}: program swapped", a.0);
    }
    assert_seed_enforced(&s);
    drop(second);
    assert!(!bpffs.exists(), "test cleanup removes the pin dir");
}

#[test]
fn the_daemon_warns_about_lockout_of_failsafe_and_management_ports() {
    lab::require_root();
    let lab = Lab::new();
    let _s = seed_pods(&lab);
    let dir = Agent::seed_datastore("lockout");
    std::fs::write(
        dir.join("50-host.yaml"),
        "apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata:
  name: node1-eth9
  labels: {role: node}
spec:
  node: node1
  interfaceName: eth9
  expectedIPs: [192.168.0.1]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: host-lockdown
spec:
  selector: role == 'node'
  types: [Ingress, Egress]
  ingress:
    - action: Deny
  egress:
    - action: Allow
",
    )
    .unwrap();
    let config = dir.parent().unwrap().join("agent-config.yaml");
    std::fs::write(
        &config,
        "failsafeInbound: [{protocol: tcp, port: 22}]\nfailsafeOutbound: []\n",
    )
    .unwrap();
    let agent = Agent::start_with(
        &lab,
        &dir,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:9465",
        ],
    );
    agent.wait_attached(3);
    let st = agent.status();
    let w: Vec<&str> = st["lockout_warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(w.len(), 2, "{st:#}");
    assert!(
        w[0].contains("node1-eth9: inbound tcp/22")
            && w[0].contains("gnp:host-lockdown rule 0")
            && w[0].contains("only the failsafe port keeps it open"),
        "{w:#?}"
    );
    assert!(
        w[1].contains("inbound tcp/9465") && w[1].contains("NOT failsafe"),
        "{w:#?}"
    );
    assert!(agent.log_text().contains("lockout risk"));
}

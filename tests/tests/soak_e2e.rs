//! Soak: everything at once for a bounded time (`SOAK_SECONDS`, default 75;
//! raise it by hand for a long run) — policy churn (files written, removed,
//! broken and fixed), endpoint churn (a real pod's WorkloadEndpoint coming and
//! going), a flood of denied flows (UDP to many ports), and `kill -9`
//! restarts — while probers count denied probes that get through (must be 0)
//! and allowed probes that fail (must be 0), and the agent's RSS is sampled
//! every second (must stay bounded: no leak). The report is printed.
mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use lab::{Lab, Pod, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};

/// Largest RSS an agent may reach in this soak (the lab is tiny).
const RSS_BOUND_KB: u64 = 256 * 1024;

#[derive(Default)]
struct Counts {
    denied_tried: AtomicU64,
    denied_through: AtomicU64,
    allowed_tried: AtomicU64,
    allowed_failed: AtomicU64,
    flood_sent: AtomicU64,
    policy_writes: AtomicU64,
    endpoint_flips: AtomicU64,
}

fn soak_seconds() -> u64 {
    std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(75)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Runs `body` in a thread until `stop`.
fn spawn_until(
    stop: &Arc<AtomicBool>,
    mut body: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let stop = stop.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            body();
        }
    })
}

fn churn_policy(dir: &Path, i: u64) {
    let path = dir.join("50-churn.yaml");
    match i % 4 {
        // An unrelated allow, a staged deny, a broken file, gone.
        0 => std::fs::write(
            &path,
            format!(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: churn}}\nspec:\n  order: 1\n  selector: app == 'backend'\n  types: [Ingress]\n  ingress: [{{action: Allow, protocol: TCP, destination: {{ports: [{}]}}}}]\n",
                9000 + i % 100
            ),
        ),
        1 => std::fs::write(
            &path,
            "apiVersion: projectcalico.org/v3\nkind: StagedGlobalNetworkPolicy\nmetadata: {name: churn}\nspec:\n  selector: all()\n  types: [Ingress]\n",
        ),
        2 => std::fs::write(&path, "apiVersion: projectcalico.org/v3\nkind: GlobalNetw"),
        _ => std::fs::remove_file(&path),
    }
    .unwrap_or_default();
}

fn churn_endpoint(dir: &Path, pod: &Pod, present: bool) {
    let path = dir.join("60-churn-endpoint.yaml");
    if present {
        let doc = format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata: {{name: churn, namespace: churn, labels: {{app: churn}}}}\nspec: {{interfaceName: {}, ipNetworks: [{}/32]}}\n",
            pod.host_if, pod.ipv4
        );
        let _ = std::fs::write(path, doc);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn soak_churn_restarts_and_a_flood_never_loosen_nor_leak() {
    lab::require_root();
    let lab = Lab::new();
    let seed = seed_pods(&lab);
    let churn_pod = lab.add_pod("churn", "churn");
    let _db = seed.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("soak");
    let bpffs = Agent::bpffs_for(&dir);
    let mut agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&seed);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut threads = Vec::new();
    {
        let (c, from, to) = (counts.clone(), seed.frontend.clone(), seed.database.ipv4);
        threads.push(spawn_until(&stop, move || {
            c.denied_tried.fetch_add(1, Ordering::Relaxed);
            if from.tcp_connect(to, 8080, SHORT_TIMEOUT) != TcpProbe::TimedOut {
                c.denied_through.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    {
        let (c, from, to) = (counts.clone(), seed.backend.clone(), seed.database.ipv4);
        threads.push(spawn_until(&stop, move || {
            c.allowed_tried.fetch_add(1, Ordering::Relaxed);
            if from.tcp_connect(to, 8080, PROBE_TIMEOUT) != TcpProbe::Connected {
                c.allowed_failed.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }));
    }
    {
        // Denied UDP to a new port each datagram: every one a new flow.
        let (c, from, to, stop) = (
            counts.clone(),
            seed.frontend.clone(),
            seed.database.ipv4,
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            from.run(|| {
                let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
                let mut port: u16 = 20000;
                while !stop.load(Ordering::Relaxed) {
                    let _ = sock.send_to(b"flood", (to, port));
                    port = if port == 60000 { 20000 } else { port + 1 };
                    c.flood_sent.fetch_add(1, Ordering::Relaxed);
                }
            })
        }));
    }
    {
        let (c, dir) = (counts.clone(), dir.clone());
        threads.push(spawn_until(&stop, move || {
            let i = c.policy_writes.fetch_add(1, Ordering::Relaxed);
            churn_policy(&dir, i);
            std::thread::sleep(Duration::from_millis(300));
        }));
    }
    {
        let (c, dir, pod) = (counts.clone(), dir.clone(), churn_pod.clone());
        threads.push(spawn_until(&stop, move || {
            let i = c.endpoint_flips.fetch_add(1, Ordering::Relaxed);
            churn_endpoint(&dir, &pod, i % 2 == 0);
            std::thread::sleep(Duration::from_secs(2));
        }));
    }

    let seconds = soak_seconds();
    let started = Instant::now();
    let rss: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let mut restarts = 0;
    let mut since_restart = Instant::now();
    let mut first_rss_of_last: Option<u64> = None;
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let t = started.elapsed().as_secs();
        if let Some(kb) = agent.pid().and_then(rss_kb) {
            rss.lock().unwrap().push((t, kb));
            if first_rss_of_last.is_none() && since_restart.elapsed() >= Duration::from_secs(10) {
                first_rss_of_last = Some(kb);
            }
        }
        let left = Duration::from_secs(seconds).saturating_sub(started.elapsed());
        if since_restart.elapsed() >= Duration::from_secs(25) && left > Duration::from_secs(15) {
            agent.kill9();
            agent.keep_state();
            agent = Agent::start_on(&lab, &dir, &bpffs, &[]);
            restarts += 1;
            since_restart = Instant::now();
            first_rss_of_last = None;
        }
    }
    let final_rss = agent.pid().and_then(rss_kb).unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let samples = rss.lock().unwrap().clone();
    let max_rss = samples.iter().map(|s| s.1).max().unwrap_or_default();
    let c = &counts;
    eprintln!(
        "soak report: {seconds} s, {restarts} kill -9 restarts, {} policy file events, {} \
         endpoint flips, {} flood datagrams; denied probes {} (through {}), allowed probes {} \
         (failed {}); agent RSS max {max_rss} kB, last agent {:?} kB after its first 10 s -> \
         {final_rss} kB at the end; samples (s, kB): {samples:?}",
        c.policy_writes.load(Ordering::Relaxed),
        c.endpoint_flips.load(Ordering::Relaxed),
        c.flood_sent.load(Ordering::Relaxed),
        c.denied_tried.load(Ordering::Relaxed),
        c.denied_through.load(Ordering::Relaxed),
        c.allowed_tried.load(Ordering::Relaxed),
        c.allowed_failed.load(Ordering::Relaxed),
        first_rss_of_last,
    );
    assert_eq!(
        c.denied_through.load(Ordering::Relaxed),
        0,
        "denied probes got through"
    );
    assert!(
        c.denied_tried.load(Ordering::Relaxed) > 10,
        "the denied prober ran"
    );
    assert_eq!(
        c.allowed_failed.load(Ordering::Relaxed),
        0,
        "allowed probes failed"
    );
    assert!(
        c.flood_sent.load(Ordering::Relaxed) > 10_000,
        "the flood ran"
    );
    assert!(max_rss < RSS_BOUND_KB, "agent RSS reached {max_rss} kB");
    if let Some(start) = first_rss_of_last {
        assert!(
            final_rss <= start * 2 + 32 * 1024,
            "the last agent grew from {start} kB to {final_rss} kB"
        );
    }
    // Still enforcing, and still the seed.
    agent.wait_attached(3);
    assert_seed_enforced(&seed);
}

//! File events never loosen enforcement, and reloads always happen: `agent run`
//! on the seed scenario (frontend -> database:8080 denied, backend -> database
//! allowed) while a background prober keeps trying the denied connection. The
//! bad file events of issue 12 (a policy file cut short in its metadata, the
//! datastore directory renamed away for 2 s or swapped, a document whose name
//! another file already uses) must let no denied probe through and leave the
//! good state enforced; a tightening is applied while a file next to the
//! policies is appended every 100 ms.
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use lab::{Pod, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};
use serde_json::Value;

const POLICY_FILE: &str = "10-database-allow-from-backend.yaml";
const POLICY_ID: &str = "GlobalNetworkPolicy/database-allow-from-backend";

/// Tries frontend -> database:8080 (denied) over and over until stopped.
struct DeniedProber {
    stop: Arc<AtomicBool>,
    denied: Arc<AtomicU64>,
    through: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl DeniedProber {
    fn start(from: &Pod, to: &Pod) -> DeniedProber {
        let stop = Arc::new(AtomicBool::new(false));
        let denied = Arc::new(AtomicU64::new(0));
        let through = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let thread = {
            let (stop, denied, through) = (stop.clone(), denied.clone(), through.clone());
            let (from, to) = (from.clone(), to.ipv4);
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match from.tcp_connect(to, 8080, SHORT_TIMEOUT) {
                        TcpProbe::Connected => through
                            .lock()
                            .unwrap()
                            .push(format!("connected at {:?}", started.elapsed())),
                        _ => {
                            denied.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            })
        };
        DeniedProber {
            stop,
            denied,
            through,
            thread: Some(thread),
        }
    }

    /// Stops and asserts that no probe got through (and that it did probe).
    fn stop_and_assert_none_through(mut self, min_probes: u64) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let through = self.through.lock().unwrap().clone();
        let denied = self.denied.load(Ordering::SeqCst);
        eprintln!("prober: {denied} denied, {} through", through.len());
        assert!(
            through.is_empty(),
            "{} denied probes got through: {through:?}",
            through.len()
        );
        assert!(denied >= min_probes, "too few probes: {denied}");
    }
}

impl Drop for DeniedProber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reloads(s: &Value) -> u64 {
    s["reloads"].as_u64().unwrap()
}

fn has_error_in(s: &Value, file: &str, needle: &str) -> bool {
    s["diagnostics"].as_array().is_some_and(|d| {
        d.iter().any(|d| {
            d["severity"] == "error"
                && d["file"].as_str().unwrap().ends_with(file)
                && d["message"].as_str().unwrap().contains(needle)
        })
    })
}

fn kept(s: &Value, id: &str) -> bool {
    s["kept_last_good"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k == id)
}

fn enforced(s: &Value) -> (u64, usize) {
    let attached = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["attached"] == true)
        .count();
    (s["policies"]["enforced"].as_u64().unwrap(), attached)
}

#[test]
fn a_policy_file_cut_short_in_its_metadata_keeps_its_policy_enforced() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("cut-short");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let text = std::fs::read_to_string(dir.join(POLICY_FILE)).unwrap();
    let meta = text.find("metadata:\n").unwrap() + "metadata:\n".len();
    // What a crashed editor or a half-copied file leaves: the name empty, the
    // `name` key cut, `metadata` empty, `kind` cut (each an error; the name
    // the old matching by resource name needed is gone or partial).
    let cuts = [
        meta + "  name: ".len(),
        meta + "  na".len(),
        meta,
        text.find("kind: GlobalNet").unwrap() + "kind: GlobalNet".len(),
    ];
    let prober = DeniedProber::start(&s.frontend, &s.database);
    for cut in cuts {
        let before = reloads(&agent.status());
        // Written in place (not renamed), as a copy that stopped half-way.
        std::fs::write(dir.join(POLICY_FILE), &text[..cut]).unwrap();
        let st = agent.wait_status("the cut file's reload", |st| {
            reloads(st) > before && has_error_in(st, POLICY_FILE, "")
        });
        assert!(kept(&st, POLICY_ID), "cut at {cut}: {st:#}");
        assert_eq!(enforced(&st), (1, 3), "cut at {cut}: {st:#}");
        std::thread::sleep(Duration::from_millis(1500));
    }
    prober.stop_and_assert_none_through(4);
    assert_seed_enforced(&s);
    // Repaired: no error, nothing kept, still enforced.
    agent.write_file(POLICY_FILE, &text);
    let st = agent.wait_status("the repaired file", |st| {
        st["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["severity"] != "error")
            && st["kept_last_good"].as_array().unwrap().is_empty()
    });
    assert_eq!(enforced(&st), (1, 3), "{st:#}");
    assert_seed_enforced(&s);
}

#[test]
fn the_datastore_directory_renamed_away_for_2s_or_swapped_keeps_everything() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("dir-away");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let away = dir.with_file_name("datastore.away");
    let prober = DeniedProber::start(&s.frontend, &s.database);

    // Renamed away for 2 s and back.
    std::fs::rename(&dir, &away).unwrap();
    let st = agent.wait_status("the missing directory reported", |st| {
        st["datastore_problems"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p.as_str().unwrap().contains("last state kept"))
        })
    });
    assert_eq!(enforced(&st), (1, 3), "{st:#}");
    assert!(kept(&st, POLICY_ID), "{st:#}");
    let text = String::from_utf8_lossy(&agent.cli(&["status"]).stdout).to_string();
    assert!(text.contains("DATASTORE:"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(enforced(&agent.status()), (1, 3));
    std::fs::rename(&away, &dir).unwrap();
    let st = agent.wait_status("the directory back", |st| {
        st["datastore_problems"].as_array().unwrap().is_empty()
            && st["kept_last_good"].as_array().unwrap().is_empty()
    });
    assert_eq!(enforced(&st), (1, 3), "{st:#}");

    // Swapped for a copy (a deployment replacing the directory): the old one
    // moved away, a gap, the new one moved in.
    let next = dir.with_file_name("datastore.next");
    std::fs::create_dir(&next).unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, next.join(p.file_name().unwrap())).unwrap();
    }
    let before = reloads(&agent.status());
    std::fs::rename(&dir, &away).unwrap();
    agent.wait_status("the swap's first reload", |st| reloads(st) > before);
    std::thread::sleep(Duration::from_secs(2));
    std::fs::rename(&next, &dir).unwrap();
    agent.wait_status("the new directory read", |st| {
        st["datastore_problems"].as_array().unwrap().is_empty()
            && st["kept_last_good"].as_array().unwrap().is_empty()
    });
    prober.stop_and_assert_none_through(4);
    assert_seed_enforced(&s);

    // The new directory is watched: removing the policy there opens the
    // database (no policy selects it; its namespace profile allows).
    std::fs::remove_file(dir.join(POLICY_FILE)).unwrap();
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);
    let _ = std::fs::remove_dir_all(&away);
}

#[test]
fn a_document_whose_name_an_earlier_file_uses_does_not_replace_it() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("duplicate");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let prober = DeniedProber::start(&s.frontend, &s.database);
    // Same name, allows everything, in a file read before the enforced one.
    let dup = "05-dup.yaml";
    agent.write_file(
        dup,
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: database-allow-from-backend\nspec:\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Allow\n",
    );
    let st = agent.wait_status("the duplicate reported", |st| {
        has_error_in(st, dup, "duplicate resource")
    });
    let d = st["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["file"].as_str().unwrap().ends_with(dup))
        .unwrap();
    assert_eq!(d["line"], 4, "{d:#}");
    assert!(
        d["message"].as_str().unwrap().contains(POLICY_FILE),
        "{d:#}"
    );
    assert_eq!(enforced(&st), (1, 3), "{st:#}");
    std::thread::sleep(Duration::from_secs(2));
    // And while the enforced one's file is broken, the duplicate still does
    // not take over.
    let text = std::fs::read_to_string(dir.join(POLICY_FILE)).unwrap();
    let before = reloads(&agent.status());
    let cut = text.find("  name: ").unwrap() + "  name: ".len();
    std::fs::write(dir.join(POLICY_FILE), &text[..cut]).unwrap();
    let st = agent.wait_status("the broken owner", |st| {
        reloads(st) > before && kept(st, POLICY_ID)
    });
    assert!(has_error_in(&st, dup, "duplicate resource"), "{st:#}");
    std::thread::sleep(Duration::from_secs(2));
    prober.stop_and_assert_none_through(4);
    assert_seed_enforced(&s);
}

#[test]
fn a_tightening_is_applied_while_a_file_is_appended_every_100ms() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("busy");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let appending = Arc::new(AtomicBool::new(true));
    let appender = {
        let (appending, log) = (appending.clone(), dir.join("notes.log"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::File::create(log).unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            let mut n = 0;
            while Instant::now() < end {
                writeln!(f, "line {n}").unwrap();
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            appending.store(false, Ordering::SeqCst);
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    agent.write_file(
        "05-deny-backend.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-backend\nspec:\n  order: 1\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      source:\n        selector: app == 'backend'\n",
    );
    let written = Instant::now();
    // Enforced while the appender still runs (it runs 9 s more).
    let applied = loop {
        if s.backend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT) != TcpProbe::Connected {
            break written.elapsed();
        }
        assert!(
            appending.load(Ordering::SeqCst),
            "the tightening was not applied while a file was appended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let still_appending = appending.load(Ordering::SeqCst);
    eprintln!("tightening enforced {applied:?} after the write");
    assert!(still_appending, "applied only after {applied:?}");
    appender.join().unwrap();
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut
    );
}

/// Issue 12 item 4, the status part: a restarted agent whose first compile
/// fails keeps the earlier agent's pinned tables enforcing, and its status says
/// so and lists the interfaces they police (it used to show no endpoints).
#[test]
fn a_restart_whose_compile_fails_reports_what_is_enforced() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("adopted-status");
    let mut first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    assert_seed_enforced(&s);
    first.keep_state();
    first.kill9();
    // Valid YAML the compiler refuses (see daemon_e2e's compile failure).
    std::fs::write(
        dir.join("40-mapped-net.yaml"),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: by-mapped-net\nspec:\n  order: 1\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      source:\n        nets: ['::ffff:10.65.0.0/120']\n",
    )
    .unwrap();
    let second = Agent::start_on(&lab, &dir, &first.bpffs, &[]);
    let st = second.wait_status("the compile error", |st| !st["last_error"].is_null());
    let err = st["last_error"].as_str().unwrap();
    assert!(err.contains("::ffff:0:0/96"), "{st:#}");
    assert!(
        err.contains("earlier agent's pinned tables stay enforced"),
        "{st:#}"
    );
    let mut interfaces: Vec<&str> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["attached"] == true)
        .map(|e| e["interface"].as_str().unwrap())
        .collect();
    interfaces.sort();
    assert_eq!(
        interfaces,
        ["calidemoback", "calidemodb", "calidemofront"],
        "{st:#}"
    );
    assert_seed_enforced(&s);
    // Fixed: this agent's own state, by name.
    std::fs::remove_file(dir.join("40-mapped-net.yaml")).unwrap();
    let st = second.wait_status("the error cleared", |st| st["last_error"].is_null());
    let mut names: Vec<&str> = st["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["prod/backend", "prod/database", "prod/frontend"],
        "{st:#}"
    );
    assert_seed_enforced(&s);
}

/// Issue 12 item 4: a capacity failure caused by new endpoints (more than the
/// ENDPOINTS map holds) no longer stops updates for the others: the new
/// endpoints beyond the limit are left out (and shown with the error), the
/// enforced ones stay, and a tightening still applies.
#[test]
fn endpoints_beyond_capacity_do_not_stop_updates_for_the_others() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("capacity");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let max = agent.status()["tables"]["endpoints_max"].as_u64().unwrap() as usize;
    let extra = max + 4;
    let mut text = String::new();
    for n in 0..extra {
        text.push_str(&format!(
            "apiVersion: projectcalico.org/v3\nkind: WorkloadEndpoint\nmetadata:\n  name: filler-{n}\n  namespace: prod\n  labels:\n    app: filler\nspec:\n  interfaceName: calfill{n}\n  ipNetworks: [10.66.{}.{}/32]\n---\n",
            n / 250,
            n % 250 + 1
        ));
    }
    agent.write_file("50-many.yaml", &text);
    let st = agent.wait_status("endpoints left out", |st| {
        st["endpoints"].as_array().unwrap().iter().any(|e| {
            e["error"]
                .as_str()
                .is_some_and(|x| x.contains("not enforced"))
        })
    });
    assert!(st["last_error"].is_null(), "{}", st["last_error"]);
    let endpoints = st["endpoints"].as_array().unwrap();
    let left_out = endpoints
        .iter()
        .filter(|e| {
            e["error"]
                .as_str()
                .is_some_and(|x| x.contains("not enforced"))
        })
        .count();
    assert_eq!(left_out, extra + 3 - max);
    for iface in ["calidemofront", "calidemoback", "calidemodb"] {
        assert!(
            endpoints
                .iter()
                .any(|e| e["interface"] == iface && e["attached"] == true && e["error"].is_null()),
            "{iface} not enforced"
        );
    }
    assert_seed_enforced(&s);
    // A tightening still applies.
    agent.write_file(
        "05-deny-backend.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-backend\nspec:\n  order: 1\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Deny\n      source:\n        selector: app == 'backend'\n",
    );
    wait_tcp_within(
        &s.backend,
        &s.database,
        8080,
        TcpProbe::TimedOut,
        Duration::from_secs(30),
    );
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut
    );
}

/// The status entry of the endpoint on `iface`.
fn endpoint_on<'a>(s: &'a Value, iface: &str) -> &'a Value {
    s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["interface"] == iface)
        .unwrap_or_else(|| panic!("no endpoint on {iface}: {s:#}"))
}

/// Polls the status until `check` holds (180 s: a compile of ~100,000 keys in
/// a debug build takes 40 s or more here, longer beside the other tests of this
/// file; a bound on waiting, not a speed check).
fn wait_status_long(agent: &Agent, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let s = agent.status();
        if check(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 12 item 4, for endpoints already enforced: a new version of the
/// database's policy that cannot compile for it (more rule keys than one
/// endpoint may use; it would also let the frontend in on 32,768 ports) leaves the database on
/// its last good tables (the frontend stays denied, status says so), while a
/// tightening for the backend applies at once; once the input is fixed, both
/// are on their new versions.
#[test]
fn an_enforced_endpoint_whose_compile_fails_keeps_its_tables_and_the_others_update() {
    lab::require_root();
    let lab = lab::Lab::new();
    let s = seed_pods(&lab);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("frozen");
    let agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&s);
    let prober = DeniedProber::start(&s.frontend, &s.database);
    let before = agent.status()["generation"].as_u64();
    // Ranges 1:2, 5:6, ... (2 keys each) on three protocols, 50 a rule and
    // 328 rules a protocol (Calico's bounds): 98,304 keys for the database.
    let even: Vec<String> = (0..16384u32)
        .map(|k| format!("'{}:{}'", 4 * k + 1, 4 * k + 2))
        .collect();
    let mut rules = String::new();
    for proto in ["TCP", "UDP", "SCTP"] {
        for ports in even.chunks(50) {
            rules.push_str(&format!(
                "    - action: Allow\n      protocol: {proto}\n      source:\n        selector: app == 'frontend'\n      destination:\n        ports: [{}]\n",
                ports.join(", ")
            ));
        }
    }
    let huge = format!(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: database-from-frontend\nspec:\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n{rules}"
    );
    agent.write_file("30-database-from-frontend.yaml", &huge);
    agent.write_file(
        "05-backend-egress-deny.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: backend-egress-deny\nspec:\n  order: 1\n  selector: app == 'backend'\n  types: [Egress]\n  egress:\n    - action: Deny\n      destination:\n        selector: app == 'database'\n",
    );
    let st = wait_status_long(&agent, "the database on its last good tables", |st| {
        !endpoint_on(st, "calidemodb")["last_good"].is_null()
    });
    assert!(st["last_error"].is_null(), "{}", st["last_error"]);
    let db = endpoint_on(&st, "calidemodb");
    assert!(db["error"].as_str().unwrap().contains("exceeded"), "{db:#}");
    assert_eq!(db["last_good"]["generation"].as_u64(), before, "{db:#}");
    assert_eq!(db["attached"], true);
    for iface in ["calidemofront", "calidemoback"] {
        assert!(endpoint_on(&st, iface)["last_good"].is_null());
        assert!(endpoint_on(&st, iface)["error"].is_null());
    }
    // The backend's tightening is enforced...
    wait_tcp_within(
        &s.backend,
        &s.database,
        8080,
        TcpProbe::TimedOut,
        Duration::from_secs(30),
    );
    // ...and the database still judges by its old policy (the failed version
    // would let the frontend in on other ports).
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::TimedOut
    );
    assert_eq!(
        agent.status()["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| !e["last_good"].is_null())
            .count(),
        1
    );
    prober.stop_and_assert_none_through(5);
    // Fixed input: the database's new version (frontend on 8080 only) compiles.
    agent.write_file(
        "30-database-from-frontend.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: database-from-frontend\nspec:\n  selector: app == 'database'\n  types: [Ingress]\n  ingress:\n    - action: Allow\n      protocol: TCP\n      source:\n        selector: app == 'frontend'\n      destination:\n        ports: [8080]\n",
    );
    let st = wait_status_long(&agent, "the database on its new version", |st| {
        endpoint_on(st, "calidemodb")["last_good"].is_null()
    });
    assert!(endpoint_on(&st, "calidemodb")["error"].is_null(), "{st:#}");
    wait_tcp_within(
        &s.frontend,
        &s.database,
        8080,
        TcpProbe::Connected,
        Duration::from_secs(30),
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "the backend's tightening stays"
    );
}

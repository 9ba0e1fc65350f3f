//! Helpers shared by the end-to-end tests that run the agent binary in a lab:
//! building it, starting `agent run` in the lab's node namespace with its own
//! datastore directory, socket and bpffs pin directory, and the seed scenario.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use lab::{Lab, Pod, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};
use serde_json::Value;

static BUILD: Once = Once::new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// `<target>/debug/agent`, built once per test run (a dev-dependency builds only
/// the library, so the binary is built here with the same target directory).
pub fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target dir");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "agent", "--bin", "agent", "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        // What `cargo test` sets for this test, not for a build: ring's build
        // script reruns when these change (rebuilding it and all above it on
        // every test run, then again on the next `cargo test`).
        for var in [
            "CARGO_MANIFEST_DIR",
            "CARGO_MANIFEST_PATH",
            "CARGO_MANIFEST_LINKS",
            "CARGO_PKG_NAME",
            "CARGO_PKG_VERSION_MAJOR",
            "CARGO_PKG_VERSION_MINOR",
            "CARGO_PKG_VERSION_PATCH",
            "CARGO_PKG_VERSION_PRE",
        ] {
            cmd.env_remove(var);
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the agent binary");
        assert!(status.success(), "building the agent binary failed");
    });
    let bin = profile_dir.join("agent");
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

/// A running `agent run` with its own datastore directory, socket and bpffs pin
/// directory; killed and cleaned up on drop (`agent cleanup` of its pin
/// directory, removal of its datastore), also when the test panics (then its log
/// is printed). [`Agent::keep_state`] hands the state to a successor instead.
pub struct Agent {
    child: Option<Child>,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub bpffs: PathBuf,
    keep: bool,
}

impl Agent {
    /// A fresh datastore directory holding the seed scenario (examples/*.yaml, not
    /// the safe-mode subdirectory).
    pub fn seed_datastore(tag: &str) -> PathBuf {
        let dir = Agent::datastore_with(tag, &[]);
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        for entry in std::fs::read_dir(examples).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().is_some_and(|e| e == "yaml") {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        dir
    }

    /// A fresh, uniquely named datastore directory holding `files` (name, YAML).
    pub fn datastore_with(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("agent-e2e-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("datastore");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    pub fn start(lab: &Lab, dir: &Path) -> Agent {
        Agent::start_with(lab, dir, &[])
    }

    pub fn start_with(lab: &Lab, dir: &Path, extra: &[&str]) -> Agent {
        Agent::start_on(lab, dir, &Agent::bpffs_for(dir), extra)
    }

    /// The per-test pin directory of a datastore made by [`Agent::seed_datastore`]
    /// (all tests and labs share /sys/fs/bpf, so each agent gets its own).
    pub fn bpffs_for(dir: &Path) -> PathBuf {
        let base = dir.parent().unwrap();
        Path::new("/sys/fs/bpf").join(base.file_name().unwrap())
    }

    /// Starts an agent on `dir` with pin directory `bpffs` (a restart when an
    /// earlier agent's state is pinned there).
    pub fn start_on(lab: &Lab, dir: &Path, bpffs: &Path, extra: &[&str]) -> Agent {
        let base = dir.parent().unwrap().to_path_buf();
        let socket = base.join("agent.sock");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let log = base.join(format!("agent-{n}.log"));
        let child = lab
            .node()
            .command(agent_bin())
            .arg("run")
            .arg("--datastore")
            .arg(dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--bpffs")
            .arg(bpffs)
            // Beside the datastore: removed with it, kept across restarts.
            .arg("--flow-history")
            .arg(base.join("flows"))
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting agent run");
        let mut agent = Agent {
            child: Some(child),
            dir: dir.to_path_buf(),
            socket,
            log,
            bpffs: bpffs.to_path_buf(),
            keep: false,
        };
        agent.wait_ready();
        agent
    }

    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {status}:\n{}", self.log_text());
            }
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("agent not ready after 30s:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `agent ARGS --socket SOCK` (a client: any namespace will do).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("running the agent cli")
    }

    pub fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| panic!("agent status failed:\n{}", self.log_text()))
    }

    pub fn flows(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["flows", "-o", "json"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "agent flows {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Polls `check` on the status until it holds (10 s).
    pub fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.status();
            if check(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; status: {s:#}\nlog:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_attached(&self, n: usize) {
        self.wait_status(&format!("{n} attached endpoints"), |s| {
            s["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().filter(|e| e["attached"] == true).count() == n)
        });
    }

    /// Replaces a datastore file the way editors save: write a temporary file, rename.
    pub fn write_file(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }
}

impl Agent {
    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// `kill -9`: the process dies at once; its pinned state stays.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a clean stop) and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("agent running");
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("agent did not stop on SIGTERM:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Leaves the datastore and pinned state to a successor agent (this one no
    /// longer removes them on drop).
    pub fn keep_state(&mut self) {
        self.keep = true;
    }

    /// `agent cleanup --bpffs DIR` (run in `lab`'s node namespace).
    pub fn cleanup(lab: &Lab, bpffs: &Path) -> Output {
        lab.node()
            .command(agent_bin())
            .arg("cleanup")
            .arg("--bpffs")
            .arg(bpffs)
            .output()
            .expect("running agent cleanup")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log_text());
        }
        if self.keep {
            return;
        }
        // The pins go whatever happens (the directory is shared by all tests).
        let _ = Command::new(agent_bin())
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

pub struct Seed {
    pub frontend: Pod,
    pub backend: Pod,
    pub database: Pod,
}

pub fn seed_pods(lab: &Lab) -> Seed {
    seed_pods_in(lab, "prod")
}

/// The seed pods (the examples' interface names and addresses) in namespace `ns`.
pub fn seed_pods_in(lab: &Lab, ns: &str) -> Seed {
    Seed {
        frontend: lab.add_pod_at(ns, "frontend", 10, "calidemofront"),
        backend: lab.add_pod_at(ns, "backend", 20, "calidemoback"),
        database: lab.add_pod_at(ns, "database", 30, "calidemodb"),
    }
}

/// Polls until a fresh TCP connection gets `want` (10 s).
pub fn wait_tcp(from: &Pod, to: &Pod, port: u16, want: TcpProbe) {
    wait_tcp_within(from, to, port, want, Duration::from_secs(10))
}

/// Polls until a fresh TCP connection gets `want`, for at most `limit`.
pub fn wait_tcp_within(from: &Pod, to: &Pod, port: u16, want: TcpProbe, limit: Duration) {
    wait_until(
        limit,
        Duration::from_millis(100),
        || from.tcp_connect(to.ipv4, port, SHORT_TIMEOUT),
        |got| *got == want,
        |got| {
            format!(
                "{}/{} -> {}/{}:{port}: {got:?}, want {want:?}",
                from.namespace, from.name, to.namespace, to.name
            )
        },
    );
}

/// Asks `query` every `every` until `done` holds of its answer, for at most
/// `limit`, and returns that answer; past `limit`, fails with `failure` of the
/// last answer.
pub fn wait_until<T>(
    limit: Duration,
    every: Duration,
    mut query: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
    failure: impl Fn(&T) -> String,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        let got = query();
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "{}", failure(&got));
        std::thread::sleep(every);
    }
}

/// `agent staged report ARGS -o json`: (exit code, report); exit 0 or 3 only.
pub fn staged_report(agent: &Agent, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["staged", "report", "-o", "json"];
    all.extend_from_slice(args);
    let out = agent.cli(&all);
    let code = out.status.code().expect("exit code");
    assert!(
        code == 0 || code == 3,
        "agent staged report {args:?}: {out:?}"
    );
    (
        code,
        serde_json::from_slice(&out.stdout).expect("JSON report"),
    )
}

pub fn is_flow(f: &Value, src: &str, dst: &str, port: u64) -> bool {
    f["src"]["name"] == src && f["dst"]["name"] == dst && f["dst"]["port"] == port
}

/// Polls `agent flows ARGS` until a record satisfies `pred` (10 s).
pub fn wait_flow(agent: &Agent, args: &[&str], what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let flows = wait_until(
        Duration::from_secs(10),
        Duration::from_millis(100),
        || agent.flows(args),
        |flows| flows.iter().any(&pred),
        |flows| format!("no flow {what} in {flows:#?}"),
    );
    flows.into_iter().find(|f| pred(f)).unwrap()
}

pub fn assert_seed_enforced(s: &Seed) {
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "backend -> database:8080"
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv6, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "backend -> database:8080 (IPv6)"
    );
    assert_eq!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "frontend -> database:8080"
    );
}

/// The seed's three connections under its enforced policy (the staged
/// lockdown observes only): frontend -> backend and backend -> database
/// connect, frontend -> database does not; a staged report or the console
/// then has flows to show.
pub fn seed_traffic(s: &Seed) {
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
    assert_ne!(
        s.frontend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

/// Programs attached with TCX to `iface` in the node namespace (ingress + egress).
pub fn tcx_programs(lab: &Lab, iface: &str) -> Vec<u32> {
    let iface = iface.to_string();
    lab.node().run(move || {
        let c = std::ffi::CString::new(iface).unwrap();
        let mut ids = Vec::new();
        for t in [
            aya::programs::tc::TcAttachType::Ingress,
            aya::programs::tc::TcAttachType::Egress,
        ] {
            let (_, progs) = aya::programs::SchedClassifier::query_tcx(c.as_c_str(), t).unwrap();
            ids.extend(progs.iter().map(|p| p.id()));
        }
        ids
    })
}

/// Pins, in place of `maps/NAME`, a hash map of the layout `GROUPS_*` had
/// before it lost its preallocation (12-byte key, 4-byte value, 262,144
/// entries, no flags), as an agent of that version left it.
pub fn pin_old_groups_map(bpffs: &Path, name: &str) {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    // union bpf_attr: map_create {type, key_size, value_size, max_entries, flags}.
    let mut attr = [0u32; 32];
    attr[..5].copy_from_slice(&[1, 12, 4, 262_144, 0]); // BPF_MAP_TYPE_HASH
                                                        // SAFETY: a zeroed attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_mut_ptr(), 128) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    let path = bpffs.join("maps").join(name);
    std::fs::remove_file(&path).unwrap();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // obj_pin {u64 pathname; u32 bpf_fd; u32 file_flags}.
    let mut attr = [0u64; 16];
    attr[0] = c.as_ptr() as u64;
    attr[1] = fd as u64;
    // SAFETY: as above; pathname a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_mut_ptr(), 128) };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: our descriptor; the pin holds the map.
    unsafe { libc::close(fd as i32) };
}

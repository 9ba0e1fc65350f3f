//! `agent run --datastore kubernetes` against a REAL kube-apiserver (v1.20, with
//! etcd, on 127.0.0.1; built and started from ../shared/kube by this test binary).
//!
//! The agent binary runs inside a lab node namespace (where the pods' host-side
//! interfaces are); the API server listens on 127.0.0.1 of the root namespace, so
//! each test runs a small TCP forwarder listening on 127.0.0.1:API_PORT *inside*
//! the node namespace (its socket was created there) that connects to
//! 127.0.0.1:API_PORT from the root namespace: the kubeconfig stays as is.
//! Pods are lab namespaces; the test creates their Pod objects (spec.nodeName =
//! the agent's node) and patches their status with the pod IPs, as a kubelet would.
//! Calico's kinds come from projectcalico.org/v3 (the standalone overlay's CRDs) or, in the
//! `crd` tests, from stand-ins for Calico's crd.projectcalico.org/v1 CRDs
//! (tests/crds/); a server with only the latter is a cluster running Calico
//! without its API server.
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

mod common;

use common::{agent_bin, seed_pods_in, wait_tcp_within, Seed};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use lab::{Lab, Pod, TcpProbe, PROBE_TIMEOUT, SHORT_TIMEOUT};
use serde_json::{json, Value};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// ../shared/kube from the repository root (`KUBE_TEST_SHARED` overrides).
fn shared_kube() -> PathBuf {
    std::env::var_os("KUBE_TEST_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/kube"))
}

// ---------------------------------------------------------------- the API server

/// An etcd + kube-apiserver pair started by start-apiserver.sh.
struct ApiServer {
    bin_dir: PathBuf,
    run_dir: PathBuf,
    etcd_port: u16,
    api_port: u16,
    kubeconfig: PathBuf,
}

/// Run dirs of every server started, stopped at exit.
static STARTED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn stop_all() {
    let dirs = std::mem::take(&mut *STARTED.lock().unwrap_or_else(|e| e.into_inner()));
    for d in dirs {
        let _ = Command::new(shared_kube().join("stop-apiserver.sh"))
            .arg(&d)
            .status();
    }
}

/// `df -h` of the filesystem holding `dir`, for a failure message.
fn free_space(dir: &Path) -> String {
    Command::new("df")
        .arg("-h")
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("df: {e}"))
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Ports p (etcd client), p+1 (etcd peer), p+2 (API) all free; distinct per call.
fn pick_ports() -> (u16, u16) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20000 + (std::process::id() % 400) * 50;
    loop {
        let p = (base + NEXT.fetch_add(3, Ordering::SeqCst)) as u16;
        if free(p) && free(p + 1) && free(p + 2) {
            return (p, p + 2);
        }
    }
}

/// Builds kube-apiserver once per machine (cached) and returns its directory.
fn apiserver_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let out = Command::new(shared_kube().join("build-apiserver.sh"))
            .output()
            .expect("running build-apiserver.sh");
        assert!(
            out.status.success(),
            "build-apiserver.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("build-apiserver.sh prints the binary")
            .to_string();
        Path::new(&bin).parent().unwrap().to_path_buf()
    })
    .clone()
}

impl ApiServer {
    fn start() -> ApiServer {
        static AT_EXIT: Once = Once::new();
        AT_EXIT.call_once(|| {
            // SAFETY: registering a plain extern "C" function.
            unsafe { libc::atexit(stop_all) };
        });
        let bin_dir = apiserver_bin();
        let (etcd_port, api_port) = pick_ports();
        let run_dir = std::env::temp_dir().join(format!(
            "kube-e2e-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&run_dir);
        STARTED.lock().unwrap().push(run_dir.clone());
        let s = ApiServer {
            bin_dir,
            run_dir,
            etcd_port,
            api_port,
            kubeconfig: PathBuf::new(),
        };
        let kubeconfig = s.run_script();
        ApiServer { kubeconfig, ..s }
    }

    fn run_script(&self) -> PathBuf {
        let out = Command::new(shared_kube().join("start-apiserver.sh"))
            .arg(&self.bin_dir)
            .arg(&self.run_dir)
            .env("ETCD_PORT", self.etcd_port.to_string())
            .env("API_PORT", self.api_port.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .output()
            .expect("start-apiserver.sh");
        // The script's openssl steps are silent when they fail (a full disk
        // gave an empty message once): say how it ended and what space is left.
        assert!(
            out.status.success(),
            "start-apiserver.sh failed ({}): {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.run_dir.join("apiserver.log")).unwrap_or_default(),
            free_space(&std::env::temp_dir())
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops etcd and the API server (by PID), keeping etcd's data.
    fn stop_keeping_data(&self) {
        for p in ["apiserver", "etcd"] {
            let Ok(pid) = std::fs::read_to_string(self.run_dir.join(format!("{p}.pid"))) else {
                continue;
            };
            let pid: i32 = pid.trim().parse().unwrap();
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while unsafe { libc::kill(pid, 0) } == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // Let the ports go (TIME_WAIT is fine for listeners with SO_REUSEADDR).
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Starts them again on the same ports and data.
    fn restart(&self) {
        self.run_script();
    }

    fn client(&self) -> Client {
        rt().block_on(agent::datastore::kubernetes::client(Some(&self.kubeconfig)))
            .expect("kube client")
    }
}

/// One API server for the tests that only look at their own objects. Tests that
/// run an agent get their own ([`private_server`]): the agent sees every policy
/// of the cluster, so another test's objects would change its counts.
fn shared_server() -> &'static ApiServer {
    static S: OnceLock<ApiServer> = OnceLock::new();
    S.get_or_init(private_server)
}

/// The projectcalico.org/v3 CRDs of deploy/overlays/standalone.
fn crd_v3_file() -> PathBuf {
    repo().join("deploy/overlays/standalone/crds.yaml")
}

/// A fresh API server with the standalone overlay's v3 CRDs applied.
fn private_server() -> ApiServer {
    let s = ApiServer::start();
    apply_file(&s.client(), &crd_v3_file(), false);
    s
}

/// The documents a kustomization directory renders to, each with the file it
/// came from: its `resources` (bases first, followed recursively), then its
/// `patches` applied as kustomize applies them. Only the forms deploy/ uses are
/// rendered (an inline JSON 6902 patch with a kind/name target): any other is
/// a test failure, not a silent skip (the kubectl that embeds kustomize cannot
/// be built here, only kube-apiserver can).
fn kustomize_render(dir: &Path) -> Vec<(PathBuf, Value)> {
    let k = &docs_of(&dir.join("kustomization.yaml"))[0];
    let mut docs = Vec::new();
    for r in k["resources"].as_array().expect("resources") {
        let path = dir.join(r.as_str().unwrap());
        if path.is_dir() {
            docs.extend(kustomize_render(&path));
        } else {
            docs.extend(docs_of(&path).into_iter().map(|d| (path.clone(), d)));
        }
    }
    for p in k["patches"].as_array().into_iter().flatten() {
        let target = &p["target"];
        let ops: json_patch::Patch = yaml_documents(p["patch"].as_str().expect("inline patch"))
            .and_then(|docs| match <[Value; 1]>::try_from(docs) {
                Ok([doc]) => serde_json::from_value(doc).map_err(|e| e.to_string()),
                Err(docs) => Err(format!("{} documents, not one", docs.len())),
            })
            .unwrap_or_else(|e| panic!("{}: patch {p}: {e}", dir.display()));
        let mut hits = 0;
        for (_, doc) in docs
            .iter_mut()
            .filter(|(_, d)| d["kind"] == target["kind"] && d["metadata"]["name"] == target["name"])
        {
            json_patch::patch(doc, &ops).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            hits += 1;
        }
        assert_eq!(
            hits,
            1,
            "{}: patch target {target} matches one object",
            dir.display()
        );
    }
    docs
}

/// Stand-ins for the crd.projectcalico.org/v1 CRDs Calico installs.
fn crd_v1_file() -> PathBuf {
    repo().join("tests/crds/crd.projectcalico.org_v1.yaml")
}

/// A fresh API server with only the crd.projectcalico.org/v1 CRDs (as a cluster
/// running Calico without its API server): `--calico-api auto` must pick them.
fn v1_only_server() -> ApiServer {
    let s = ApiServer::start();
    apply_file(&s.client(), &crd_v1_file(), false);
    s
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Runtime::new().unwrap())
}

// ------------------------------------------------------------- objects via kube-rs

fn plural(kind: &str) -> String {
    let l = kind.to_lowercase();
    match l.strip_suffix('y') {
        Some(stem) => format!("{stem}ies"),
        None => format!("{l}s"),
    }
}

fn api_for(client: &Client, doc: &Value) -> (Api<DynamicObject>, String) {
    let av = doc["apiVersion"].as_str().expect("apiVersion");
    let kind = doc["kind"].as_str().expect("kind");
    let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        &plural(kind),
    );
    let name = doc["metadata"]["name"].as_str().expect("name").to_string();
    let api = match doc["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    (api, name)
}

/// Server-side apply (creates or updates).
fn apply(client: &Client, doc: Value) {
    let (api, name) = api_for(client, &doc);
    let pp = PatchParams::apply("kube-e2e").force();
    rt().block_on(api.patch(&name, &pp, &Patch::Apply(&doc)))
        .unwrap_or_else(|e| panic!("applying {doc}: {e}"));
}

/// Creates with `?dryRun=All`; the error, if the server rejects it.
fn dry_run_create(client: &Client, doc: Value) -> Result<(), String> {
    let (api, _) = api_for(client, &doc);
    let obj: DynamicObject = serde_json::from_value(doc).map_err(|e| e.to_string())?;
    let pp = PostParams {
        dry_run: true,
        field_manager: Some("kube-e2e".into()),
    };
    rt().block_on(api.create(&pp, &obj))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn delete(client: &Client, api_version: &str, kind: &str, ns: Option<&str>, name: &str) {
    let mut doc = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    if let Some(ns) = ns {
        doc["metadata"]["namespace"] = json!(ns);
    }
    let (api, name) = api_for(client, &doc);
    // Immediately (no kubelet here to confirm a graceful pod deletion).
    let dp = kube::api::DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    rt().block_on(api.delete(&name, &dp))
        .unwrap_or_else(|e| panic!("deleting {kind}/{name}: {e}"));
}

fn docs_of(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_documents(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .filter(|v: &Value| v.is_object())
        .collect()
}

/// The documents of a YAML text as JSON, read by the agent's own YAML parser.
fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs = agent::model::yaml::parse_all(text).map_err(|e| format!("line {}: {e}", e.line))?;
    Ok(docs.iter().map(|d| d.to_json()).collect())
}

/// Applies every document of a file; CRDs are waited for until they serve.
fn apply_file(client: &Client, path: &Path, _dry: bool) {
    let docs = docs_of(path);
    for d in &docs {
        apply(client, d.clone());
    }
    for d in &docs {
        if d["kind"] == "CustomResourceDefinition" {
            let spec = &d["spec"];
            let probe = json!({
                "apiVersion": format!("{}/{}", spec["group"].as_str().unwrap(), spec["versions"][0]["name"].as_str().unwrap()),
                "kind": spec["names"]["kind"],
                "metadata": {"name": "x"},
            });
            let (api, _) = api_for(client, &probe);
            let deadline = Instant::now() + Duration::from_secs(30);
            while rt().block_on(api.list(&Default::default())).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "CRD {} not served",
                    d["metadata"]["name"]
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn namespace(client: &Client, name: &str, labels: Value) {
    apply(
        client,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    );
}

/// A Pod object for a lab pod, scheduled on `node`, with its IPs in the status.
fn pod_object(client: &Client, pod: &Pod, node: &str, labels: Value) {
    apply(
        client,
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": labels},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "example/app:1",
                                "ports": [{"name": "http", "containerPort": 8080}]}],
            },
        }),
    );
    set_pod_ips(
        client,
        &pod.namespace,
        &pod.name,
        &[pod.ipv4.to_string(), pod.ipv6.to_string()],
    );
}

/// What a kubelet reports once the CNI gave the pod its addresses.
fn set_pod_ips(client: &Client, ns: &str, name: &str, ips: &[String]) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let ips: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    let patch = json!({"status": {"phase": "Running", "podIP": ips[0]["ip"], "podIPs": ips}});
    rt().block_on(pods.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)))
        .unwrap_or_else(|e| panic!("patching status of {ns}/{name}: {e}"));
}

const GNP_DB: &str = r#"{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
  "metadata": {"name": "database-allow-from-backend"},
  "spec": {"selector": "env == 'prod' && app == 'database'", "types": ["Ingress"],
    "ingress": [{"action": "Allow", "protocol": "TCP",
                 "source": {"selector": "env == 'prod' && app == 'backend'"},
                 "destination": {"ports": [8080]}}]}}"#;
const SGNP_LOCKDOWN: &str = r#"{"apiVersion": "projectcalico.org/v3", "kind": "StagedGlobalNetworkPolicy",
  "metadata": {"name": "backend-lockdown-staged"},
  "spec": {"selector": "env == 'prod' && app == 'backend'", "types": ["Ingress"]}}"#;

fn j(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

// ------------------------------------------------------------- forwarder and agent

/// Listens on 127.0.0.1:`port` inside `lab`'s node namespace and forwards each
/// connection to 127.0.0.1:`port` of the root namespace (this thread's).
fn forward_into_node(lab: &Lab, port: u16) {
    let listener = lab
        .node()
        .run(move || TcpListener::bind(("127.0.0.1", port)))
        .expect("binding the forwarder in the node namespace");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(inner) = conn else { continue };
            std::thread::spawn(move || {
                let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let (mut a, mut b) = (inner.try_clone().unwrap(), outer.try_clone().unwrap());
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Write);
                });
                let (mut a, mut b) = (outer, inner);
                let _ = std::io::copy(&mut a, &mut b);
                let _ = b.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
}

struct Agent {
    child: Option<Child>,
    base: PathBuf,
    /// Per-agent pin directory (all tests share /sys/fs/bpf).
    bpffs: PathBuf,
    socket: PathBuf,
    log: PathBuf,
}

impl Agent {
    fn start(lab: &Lab, server: &ApiServer, node: &str) -> Agent {
        Agent::start_with(lab, server, node, &[])
    }

    /// With `extra` arguments to `agent run` (e.g. `--calico-api crd`).
    fn start_with(lab: &Lab, server: &ApiServer, node: &str, extra: &[&str]) -> Agent {
        Agent::start_env(lab, server, node, extra, &[])
    }

    /// With `extra` arguments and environment variables (e.g. `POD_NAMESPACE`,
    /// which is otherwise removed: the test's own environment must not count).
    fn start_env(
        lab: &Lab,
        server: &ApiServer,
        node: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        forward_into_node(lab, server.api_port);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = std::env::temp_dir().join(format!("agent-kube-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let socket = base.join("agent.sock");
        let log = base.join("agent.log");
        let bpffs = Path::new("/sys/fs/bpf").join(base.file_name().unwrap());
        let child = lab
            .node()
            .command(agent_bin())
            .args([
                "run",
                "--datastore",
                "kubernetes",
                "--node",
                node,
                "--kubeconfig",
            ])
            .arg(&server.kubeconfig)
            .arg("--socket")
            .arg(&socket)
            .arg("--bpffs")
            .arg(&bpffs)
            // Beside the socket and log: removed with them, never in /var/lib/agent.
            .arg("--flow-history")
            .arg(base.join("flows"))
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .env_remove("POD_NAMESPACE")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting agent run");
        let mut agent = Agent {
            child: Some(child),
            base,
            bpffs,
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(st))) = agent.child.as_mut().map(|c| c.try_wait()) {
                panic!("agent exited with {st}:\n{}", agent.log_text());
            }
            if agent.try_status().is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready:\n{}",
                agent.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        agent
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(agent_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("running the agent cli")
    }

    fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "-o", "json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.wait_status_for(Duration::from_secs(20), what, check)
    }

    fn wait_status_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.try_status().unwrap_or(Value::Null);
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

    fn wait_endpoints(&self, attached: &[&str]) {
        let mut want: Vec<String> = attached.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.wait_status(&format!("attached endpoints {want:?}"), |s| {
            let mut got: Vec<String> = s["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["attached"] == true)
                .map(|e| e["endpoint"].as_str().unwrap_or("").to_string())
                .collect();
            got.sort();
            got == want
        });
    }

    fn wait_policies(&self, enforced: u64, staged: u64) {
        self.wait_policies_status(enforced, staged);
    }

    fn wait_policies_status(&self, enforced: u64, staged: u64) -> Value {
        self.wait_status(&format!("{enforced} enforced, {staged} staged"), |s| {
            s["policies"]["enforced"] == enforced && s["policies"]["staged"] == staged
        })
    }

    fn flows(&self) -> Vec<Value> {
        let out = self.cli(&["flows", "-o", "json", "--last", "200"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- agent log ---\n{}", self.log_text());
        }
        // The pins go whatever happens.
        let _ = Command::new(agent_bin())
            .arg("cleanup")
            .arg("--bpffs")
            .arg(&self.bpffs)
            .output();
        let _ = std::fs::remove_dir_all(&self.bpffs);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Polls until a fresh TCP connection gets `want` (20 s: watch, debounce, compile).
fn wait_tcp(from: &Pod, to: &Pod, port: u16, want: TcpProbe) {
    wait_tcp_within(from, to, port, want, Duration::from_secs(20))
}

/// The seed scenario from Kubernetes objects: namespace prod, three pods on `node`.
fn seed(lab: &Lab, client: &Client, ns: &str, node: &str) -> Seed {
    namespace(client, ns, json!({"env": "prod"}));
    let s = seed_pods_in(lab, ns);
    for (p, app) in [
        (&s.frontend, "frontend"),
        (&s.backend, "backend"),
        (&s.database, "database"),
    ] {
        pod_object(client, p, node, json!({"env": "prod", "app": app}));
    }
    s
}

fn assert_seed_enforced(s: &Seed) {
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
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "frontend -> backend:8080 (the lockdown is only staged)"
    );
}

// ------------------------------------------------------------------------ tests

/// Policies and pods appear, change and disappear; the seed scenario enforces
/// real traffic and reports the staged lockdown's would-be denies.
#[test]
fn kubernetes_seed_scenario_and_changes() {
    lab::require_root();
    let server = &private_server();
    let client = server.client();
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let ns = "prod";
    let agent = Agent::start(&lab, server, &node);
    agent.wait_policies(0, 0);
    agent.wait_status("every kind listed", |s| {
        s["datastore_problems"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });

    // Pods appear: they are attached through their host routes (not `cali` names).
    let s = seed(&lab, &client, ns, &node);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    let st = agent.try_status().unwrap();
    for e in st["endpoints"].as_array().unwrap() {
        assert!(
            e["interface"].as_str().unwrap().starts_with("calidemo"),
            "{e:#}"
        );
    }
    // A pod on another node: a peer, never attached here.
    apply(
        &client,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "remote", "namespace": ns, "labels": {"env": "prod", "app": "backend"}},
               "spec": {"nodeName": "some-other-node", "containers": [{"name": "a", "image": "x"}]}}),
    );
    set_pod_ips(&client, ns, "remote", &["10.65.9.9".into()]);

    // Policies appear.
    apply(&client, j(GNP_DB));
    apply(&client, j(SGNP_LOCKDOWN));
    agent.wait_policies(1, 1);
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::TimedOut);
    assert_seed_enforced(&s);
    let st = agent.try_status().unwrap();
    assert_eq!(st["endpoints"].as_array().unwrap().len(), 3, "{st:#}");
    assert!(st["last_error"].is_null(), "{st:#}");

    // The staged lockdown's would-be deny is reported, nothing enforced by it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT);
        let flows = agent.flows();
        if flows.iter().any(|f| {
            f["src"]["name"] == "frontend"
                && f["dst"]["name"] == "backend"
                && f["pending"]["action"] == "deny"
                && f["enforced"]["action"] == "allow"
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no pending deny flow: {flows:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // A policy changes: database now also allows frontend.
    let mut changed = j(GNP_DB);
    changed["spec"]["ingress"][0]["source"]["selector"] =
        json!("env == 'prod' && app in {'backend', 'frontend'}");
    apply(&client, changed);
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);

    // Labels change: frontend is no longer "frontend", so it is denied again.
    pod_object(
        &client,
        &s.frontend,
        &node,
        json!({"env": "prod", "app": "web"}),
    );
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::TimedOut);

    // A rejected object is reported, the others stay enforced.
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
               "metadata": {"name": "broken"},
               "spec": {"selector": "all()", "ingress": [{"action": "Nope"}]}}),
    );
    let st = agent.wait_status("a diagnostic for the broken policy", |s| {
        s["diagnostics"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["resource"] == "GlobalNetworkPolicy/broken")
        })
    });
    assert_eq!(st["policies"]["enforced"], 1, "{st:#}");
    delete(
        &client,
        "projectcalico.org/v3",
        "GlobalNetworkPolicy",
        None,
        "broken",
    );

    // Policies disappear: everything is allowed again.
    delete(
        &client,
        "projectcalico.org/v3",
        "GlobalNetworkPolicy",
        None,
        "database-allow-from-backend",
    );
    delete(
        &client,
        "projectcalico.org/v3",
        "StagedGlobalNetworkPolicy",
        None,
        "backend-lockdown-staged",
    );
    agent.wait_policies(0, 0);
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);

    // A pod disappears: detached.
    delete(&client, "v1", "Pod", Some(ns), "database");
    agent.wait_endpoints(&["prod/backend", "prod/frontend"]);
}

/// The API server goes away: the last state stays enforced; after it is back, a
/// change made then is picked up.
#[test]
fn kubernetes_api_server_restart() {
    lab::require_root();
    let server = private_server();
    let client = server.client();
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let s = seed(&lab, &client, "prod", &node);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    apply(&client, j(GNP_DB));
    apply(&client, j(SGNP_LOCKDOWN));
    let agent = Agent::start(&lab, &server, &node);
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    agent.wait_policies(1, 1);
    assert_seed_enforced(&s);

    server.stop_keeping_data();
    // Give the watchers time to notice and start backing off.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        agent.log_text().contains("watch failed"),
        "the outage went unnoticed:\n{}",
        agent.log_text()
    );
    assert_seed_enforced(&s);
    let st = agent.try_status().unwrap();
    assert_eq!(st["policies"]["enforced"], 1, "{st:#}");
    assert!(
        st["datastore_problems"].as_array().is_some_and(|p| p
            .iter()
            .any(|p| p.as_str().unwrap().contains("watch failing"))),
        "{st:#}"
    );

    server.restart();
    let client = server.client();
    // Made after the restart: promote the lockdown by hand (enforce it, drop the staged one).
    let mut enforced = j(SGNP_LOCKDOWN);
    enforced["kind"] = json!("GlobalNetworkPolicy");
    apply(&client, enforced);
    delete(
        &client,
        "projectcalico.org/v3",
        "StagedGlobalNetworkPolicy",
        None,
        "backend-lockdown-staged",
    );
    // The watchers retry at most 5 s apart (watch_backoff; kube-rs' default grows
    // to 30 s): the change is seen well within 20 s of the server's return.
    agent.wait_status_for(Duration::from_secs(20), "2 enforced, 0 staged", |s| {
        s["policies"]["enforced"] == 2 && s["policies"]["staged"] == 0
    });
    assert!(agent.log_text().contains("watch recovered"));
    agent.wait_status("no datastore problems", |s| {
        s["datastore_problems"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

/// Every object in deploy/ is accepted by the API server (server-side dry run),
/// and the agent's RBAC lets it read, and only read.
#[test]
fn deploy_manifests_dry_run() {
    let server = shared_server();
    let client = server.client();
    // Namespaced objects need their namespace to exist (a dry run creates nothing).
    namespace(&client, "calico-system", json!({}));
    let mut n = 0;
    for overlay in ["standalone", "with-calico"] {
        for (file, doc) in kustomize_render(&repo().join("deploy/overlays").join(overlay)) {
            let what = format!(
                "{}: {} {}",
                file.display(),
                doc["kind"],
                doc["metadata"]["name"]
            );
            if doc["kind"] == "DaemonSet" {
                // The overlay's patch is in what is applied: standalone reads v3.
                let args = doc["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
                assert_eq!(
                    args.contains("--calico-api=v3"),
                    overlay == "standalone",
                    "{overlay}: {args}"
                );
            }
            match dry_run_create(&client, doc.clone()) {
                Ok(()) => n += 1,
                // Objects this fixture already created for real.
                Err(e) if e.contains("AlreadyExists") || e.contains("already exists") => n += 1,
                Err(e) => panic!("{what}: {e}"),
            }
        }
    }
    // standalone: 9 CRDs + 10 base objects (8 of the agent, the relay's
    // Deployment and Service); with-calico: the 10 base objects.
    assert_eq!(n, 29, "objects in both overlays");

    let agent_client = as_agent(server);
    // Both groups of Calico's kinds (`--calico-api v3|crd`).
    apply_file(&client, &crd_v1_file(), false);
    let kinds = agent::datastore::kubernetes::KINDS
        .iter()
        .chain(agent::datastore::kubernetes::CRD_KINDS);
    for k in kinds {
        let api: Api<DynamicObject> = Api::all_with(agent_client.clone(), &k.api_resource());
        rt().block_on(api.list(&Default::default()))
            .unwrap_or_else(|e| panic!("agent cannot list {}: {e}", k.label()));
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(agent_client.clone());
    rt().block_on(pods.list(&Default::default()))
        .expect("agent lists pods");
    // Its writes are those that decide a commit-confirmed promotion (policies
    // back as recorded, rbac.yaml); nothing else: no tier, network set or pod.
    let forbidden = [
        json!({"apiVersion": "projectcalico.org/v3", "kind": "Tier",
               "metadata": {"name": "agent-must-not"}, "spec": {"order": 1}}),
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
               "metadata": {"name": "agent-must-not"}, "spec": {"nets": ["10.0.0.0/8"]}}),
    ];
    for doc in forbidden {
        let (api, _) = api_for(&agent_client, &doc);
        let err = rt()
            .block_on(api.create(
                &PostParams::default(),
                &serde_json::from_value(doc).unwrap(),
            ))
            .expect_err("the agent must not write what it never restores");
        assert!(err.to_string().contains("forbidden"), "{err}");
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(agent_client, "default");
    let err = rt()
        .block_on(pods.delete("any", &Default::default()))
        .expect_err("the agent must not delete pods");
    assert!(err.to_string().contains("forbidden"), "{err}");
}

/// deploy/base/rbac.yaml applied for real, and a client acting as the agent
/// (token `agent-token` of start-apiserver.sh).
fn as_agent(server: &ApiServer) -> Client {
    apply_file(
        &server.client(),
        &repo().join("deploy/base/rbac.yaml"),
        false,
    );
    let kc = std::fs::read_to_string(&server.kubeconfig)
        .unwrap()
        .replace("token: admin-token", "token: agent-token");
    let agent_kc = server.run_dir.join(format!(
        "agent-kubeconfig-{}",
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&agent_kc, kc).unwrap();
    rt().block_on(agent::datastore::kubernetes::client(Some(&agent_kc)))
        .unwrap()
}

fn get(
    client: &Client,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Option<DynamicObject> {
    let mut doc = json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
    if let Some(ns) = ns {
        doc["metadata"]["namespace"] = json!(ns);
    }
    let (api, name) = api_for(client, &doc);
    rt().block_on(api.get_opt(&name)).unwrap()
}

fn promote(server: &ApiServer, args: &[&str]) -> Output {
    Command::new(agent_bin())
        .args(["promote", "--datastore", "kubernetes", "--kubeconfig"])
        .arg(&server.kubeconfig)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .expect("agent promote")
}

/// `agent promote --datastore kubernetes`: the enforced kind is applied, the
/// staged object deleted; stagedAction Delete and Ignore behave as with files.
#[test]
fn kubernetes_promote() {
    let server = shared_server();
    let client = server.client();
    let ns = "promote-test";
    namespace(&client, ns, json!({}));
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedNetworkPolicy",
               "metadata": {"name": "lockdown", "namespace": ns, "labels": {"team": "a"}},
               "spec": {"stagedAction": "Set", "selector": "app == 'x'", "types": ["Ingress"]}}),
    );
    let out = promote(server, &["StagedNetworkPolicy/lockdown", "-n", ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout)
        .contains("promoted to NetworkPolicy promote-test/lockdown"));
    let np = get(
        &client,
        "projectcalico.org/v3",
        "NetworkPolicy",
        Some(ns),
        "lockdown",
    )
    .expect("enforced");
    assert_eq!(np.data["spec"]["selector"], "app == 'x'");
    assert!(np.data["spec"].get("stagedAction").is_none());
    assert_eq!(np.metadata.labels.unwrap()["team"], "a");
    assert!(get(
        &client,
        "projectcalico.org/v3",
        "StagedNetworkPolicy",
        Some(ns),
        "lockdown"
    )
    .is_none());

    // Kubernetes flavour -> networking.k8s.io/v1.
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedKubernetesNetworkPolicy",
               "metadata": {"name": "k", "namespace": ns},
               "spec": {"podSelector": {"matchLabels": {"app": "x"}}, "policyTypes": ["Ingress"]}}),
    );
    let out = promote(server, &["sknp/k", "-n", ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let k = get(
        &client,
        "networking.k8s.io/v1",
        "NetworkPolicy",
        Some(ns),
        "k",
    )
    .expect("k8s policy");
    assert_eq!(k.data["spec"]["podSelector"]["matchLabels"]["app"], "x");

    // Delete removes the enforced namesake; Ignore is refused.
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedNetworkPolicy",
               "metadata": {"name": "lockdown", "namespace": ns},
               "spec": {"stagedAction": "Delete"}}),
    );
    let out = promote(server, &["snp/lockdown", "-n", ns]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get(
        &client,
        "projectcalico.org/v3",
        "NetworkPolicy",
        Some(ns),
        "lockdown"
    )
    .is_none());
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedGlobalNetworkPolicy",
               "metadata": {"name": "promote-test-ignored"},
               "spec": {"stagedAction": "Ignore", "selector": "all()"}}),
    );
    let out = promote(server, &["sgnp/promote-test-ignored"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Ignore"));
    assert!(get(
        &client,
        "projectcalico.org/v3",
        "StagedGlobalNetworkPolicy",
        None,
        "promote-test-ignored"
    )
    .is_some());
    delete(
        &client,
        "projectcalico.org/v3",
        "StagedGlobalNetworkPolicy",
        None,
        "promote-test-ignored",
    );
}

/// Both reverters' outcomes for `target`, racing on the same server.
fn race_reverters(client: &Client) -> Vec<agent::rollout::Outcome> {
    use agent::datastore::kubernetes::{confirm, CalicoGroup};
    let tick = |holder: &'static str| {
        let client = client.clone();
        async move {
            confirm::tick(&client, CalicoGroup::V3, holder, confirm::LEASE_NAMESPACE)
                .await
                .unwrap_or_else(|e| panic!("reverter {holder}: {e}"))
        }
    };
    let ((a, _), (b, _)) =
        rt().block_on(async { futures::join!(tick("agent-a"), tick("agent-b")) });
    a.into_iter().chain(b).collect()
}

/// `agent promote --datastore kubernetes --confirm-within`: the promotion is
/// recorded on the enforced object; past the deadline two reverters racing on
/// the real API server revert each target exactly once (one Lease holder),
/// taking over a Lease a dead holder left; a confirmed promotion stays.
#[test]
fn kubernetes_commit_confirmed_promotion_reverts_once() {
    use agent::datastore::kubernetes::confirm;
    let server = shared_server();
    let client = server.client();
    let ns = "confirm-test";
    namespace(&client, ns, json!({}));
    namespace(&client, confirm::LEASE_NAMESPACE, json!({}));
    // The reverters act as the agent: its RBAC must be enough for the revert.
    let agent_client = as_agent(server);
    let v3 = "projectcalico.org/v3";
    // A namesake the promotion replaces, and a global one with none.
    apply(
        &client,
        json!({"apiVersion": v3, "kind": "NetworkPolicy",
               "metadata": {"name": "lockdown", "namespace": ns},
               "spec": {"selector": "app == 'old'", "types": ["Ingress"]}}),
    );
    apply(
        &client,
        json!({"apiVersion": v3, "kind": "StagedNetworkPolicy",
               "metadata": {"name": "lockdown", "namespace": ns, "labels": {"team": "a"}},
               "spec": {"stagedAction": "Set", "selector": "app == 'new'", "types": ["Ingress"]}}),
    );
    for name in ["confirm-test-gone", "confirm-test-kept"] {
        apply(
            &client,
            json!({"apiVersion": v3, "kind": "StagedGlobalNetworkPolicy",
                   "metadata": {"name": name},
                   "spec": {"selector": "all()", "types": ["Egress"]}}),
        );
    }
    for args in [
        &["snp/lockdown", "-n", ns, "--confirm-within", "3s"][..],
        &["sgnp/confirm-test-gone", "--confirm-within", "3s"],
        &["sgnp/confirm-test-kept", "--confirm-within", "3s"],
    ] {
        let out = promote(server, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("awaiting confirmation"), "{stdout}");
    }
    let np = get(&client, v3, "NetworkPolicy", Some(ns), "lockdown").expect("promoted");
    assert_eq!(np.data["spec"]["selector"], "app == 'new'");
    assert!(np.annotations().contains_key(confirm::ANNOTATION));
    // A promotion over one awaiting confirmation is refused (its record stays).
    let again = json!({"apiVersion": v3, "kind": "StagedGlobalNetworkPolicy",
                       "metadata": {"name": "confirm-test-kept"},
                       "spec": {"selector": "all()", "types": ["Ingress"]}});
    apply(&client, again);
    let out = promote(server, &["sgnp/confirm-test-kept"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already awaits confirmation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    delete(
        &client,
        v3,
        "StagedGlobalNetworkPolicy",
        None,
        "confirm-test-kept",
    );
    // Before the deadline nothing is reverted; the three wait.
    let early = race_reverters(&client);
    assert!(early.is_empty(), "{early:?}");
    // `agent confirm --datastore kubernetes` (kubeconfig from $KUBECONFIG).
    let confirm_kept = || {
        Command::new(agent_bin())
            .args([
                "confirm",
                "--datastore",
                "kubernetes",
                "sgnp/confirm-test-kept",
            ])
            .env("KUBECONFIG", &server.kubeconfig)
            .output()
            .unwrap()
    };
    let out = confirm_kept();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A Lease a dead agent left for the namespaced target: expired, taken over.
    let lease = confirm::lease_name("StagedNetworkPolicy confirm-test/lockdown");
    apply(
        &client,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": lease, "namespace": confirm::LEASE_NAMESPACE},
               "spec": {"holderIdentity": "dead-agent", "leaseDurationSeconds": 1,
                        "renewTime": "2020-01-01T00:00:00.000000Z"}}),
    );
    std::thread::sleep(Duration::from_millis(3300));
    let outcomes = race_reverters(&agent_client);
    let mut targets: Vec<&str> = outcomes.iter().map(|o| o.target.as_str()).collect();
    targets.sort();
    assert_eq!(
        targets,
        [
            "StagedGlobalNetworkPolicy confirm-test-gone",
            "StagedNetworkPolicy confirm-test/lockdown"
        ],
        "each unconfirmed promotion reverted exactly once: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o.action == "reverted"));
    // Exactly as before: the staged objects back, the namesake restored, the
    // enforced policy without a namesake gone, no record and no Lease left.
    let staged =
        get(&client, v3, "StagedNetworkPolicy", Some(ns), "lockdown").expect("staged back");
    assert_eq!(staged.data["spec"]["selector"], "app == 'new'");
    assert_eq!(staged.data["spec"]["stagedAction"], "Set");
    assert_eq!(staged.labels()["team"], "a");
    let np = get(&client, v3, "NetworkPolicy", Some(ns), "lockdown").expect("namesake back");
    assert_eq!(np.data["spec"]["selector"], "app == 'old'");
    assert!(!np.annotations().contains_key(confirm::ANNOTATION));
    assert!(get(
        &client,
        v3,
        "StagedGlobalNetworkPolicy",
        None,
        "confirm-test-gone"
    )
    .is_some());
    assert!(get(
        &client,
        v3,
        "GlobalNetworkPolicy",
        None,
        "confirm-test-gone"
    )
    .is_none());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), confirm::LEASE_NAMESPACE);
    assert!(rt().block_on(leases.get_opt(&lease)).unwrap().is_none());
    // The confirmed one stays, without its record; nothing is left to revert.
    let kept = get(
        &client,
        v3,
        "GlobalNetworkPolicy",
        None,
        "confirm-test-kept",
    )
    .expect("kept");
    assert!(!kept.annotations().contains_key(confirm::ANNOTATION));
    assert!(get(
        &client,
        v3,
        "StagedGlobalNetworkPolicy",
        None,
        "confirm-test-kept"
    )
    .is_none());
    assert!(race_reverters(&client).is_empty());
    let out = confirm_kept();
    assert_eq!(out.status.code(), Some(1), "nothing left to confirm");
    for (kind, name) in [
        ("StagedGlobalNetworkPolicy", "confirm-test-gone"),
        ("GlobalNetworkPolicy", "confirm-test-kept"),
    ] {
        delete(&client, v3, kind, None, name);
    }
}

/// One tick of two agents' supervisors racing on the same server.
fn tick_both(
    a: &mut agent::datastore::kubernetes::confirm::Supervisor,
    b: &mut agent::datastore::kubernetes::confirm::Supervisor,
    client: &Client,
) -> Vec<agent::rollout::Outcome> {
    use agent::datastore::kubernetes::CalicoGroup;
    let (x, y) = rt().block_on(async {
        futures::join!(
            a.tick(client, CalicoGroup::V3),
            b.tick(client, CalicoGroup::V3)
        )
    });
    let (x, y) = (x.expect("agent-a"), y.expect("agent-b"));
    x.0.into_iter().chain(y.0).collect()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--confirm-if` in the cluster: the checks travel in the record; each agent
/// runs them from its node. A failing check reverts at once (long before the
/// deadline, by exactly one agent); checks passing (a TCP listener and the
/// `apiserver` check through the agent's own client) for the settle time
/// confirm, exactly once. Both agents act with deploy/'s RBAC.
#[test]
fn kubernetes_confirm_if_failing_reverts_at_once_and_passing_confirms() {
    use agent::datastore::kubernetes::confirm::{self, Supervisor};
    let server = private_server();
    let client = server.client();
    let ns = "confirm-if";
    namespace(&client, ns, json!({}));
    let agent_client = as_agent(&server);
    let v3 = "projectcalico.org/v3";
    apply(
        &client,
        json!({"apiVersion": v3, "kind": "StagedGlobalNetworkPolicy",
               "metadata": {"name": "confirm-if-bad"},
               "spec": {"selector": "all()", "types": ["Egress"]}}),
    );
    apply(
        &client,
        json!({"apiVersion": v3, "kind": "StagedNetworkPolicy",
               "metadata": {"name": "good", "namespace": ns},
               "spec": {"selector": "app == 'x'", "types": ["Ingress"]}}),
    );
    // Nothing listens on `closed`; `open` accepts (its backlog) while the test runs.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let (bad_check, good_check) = (
        format!("tcp:{closed}"),
        format!("tcp:{}", open.local_addr().unwrap()),
    );
    let out = promote(
        &server,
        &[
            "sgnp/confirm-if-bad",
            "--confirm-within",
            "1h",
            "--confirm-if",
            &bad_check,
        ],
    );
    assert!(ok(&out).contains(&format!("checks: {bad_check}")));
    let out = promote(
        &server,
        &[
            "snp/good",
            "-n",
            ns,
            "--confirm-within",
            "1h",
            "--settle",
            "2s",
            "--confirm-if",
            &good_check,
            "--confirm-if",
            "apiserver",
        ],
    );
    ok(&out);
    // The checks travel with the record.
    let np = get(&client, v3, "NetworkPolicy", Some(ns), "good").expect("promoted");
    let rec = confirm::record_of(&np).unwrap().expect("pending");
    assert_eq!(
        rec.checks
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [good_check.as_str(), "apiserver"]
    );
    assert_eq!(rec.settle_ms, 2000);

    let mut a = Supervisor::new("agent-a", confirm::LEASE_NAMESPACE);
    let mut b = Supervisor::new("agent-b", confirm::LEASE_NAMESPACE);
    let started = Instant::now();
    let first = tick_both(&mut a, &mut b, &agent_client);
    assert_eq!(first.len(), 1, "only the failing one, at once: {first:?}");
    assert_eq!(first[0].target, "StagedGlobalNetworkPolicy confirm-if-bad");
    assert_eq!(first[0].action, "reverted");
    assert!(
        first[0].reason.contains("check failed") && first[0].reason.contains(&bad_check),
        "{first:?}"
    );
    assert!(get(&client, v3, "GlobalNetworkPolicy", None, "confirm-if-bad").is_none());
    assert!(get(
        &client,
        v3,
        "StagedGlobalNetworkPolicy",
        None,
        "confirm-if-bad"
    )
    .is_some());

    // The passing one: confirmed once the checks passed for the settle time.
    let mut decided = Vec::new();
    while decided.is_empty() && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        decided = tick_both(&mut a, &mut b, &agent_client);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before settling"
    );
    assert_eq!(decided.len(), 1, "confirmed exactly once: {decided:?}");
    assert_eq!(decided[0].target, "StagedNetworkPolicy confirm-if/good");
    assert_eq!(decided[0].action, "confirmed", "{decided:?}");
    let np = get(&client, v3, "NetworkPolicy", Some(ns), "good").expect("kept");
    assert!(!np.annotations().contains_key(confirm::ANNOTATION));
    assert_eq!(np.data["spec"]["selector"], "app == 'x'");
    assert!(get(&client, v3, "StagedNetworkPolicy", Some(ns), "good").is_none());
    assert!(tick_both(&mut a, &mut b, &agent_client).is_empty());
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), confirm::LEASE_NAMESPACE);
    let left = rt().block_on(leases.list(&Default::default())).unwrap();
    assert!(left.items.is_empty(), "no Lease left: {:?}", left.items);
    drop(open);

    // `apiserver` fails for an agent whose API server does not answer.
    let kc = std::fs::read_to_string(&server.kubeconfig)
        .unwrap()
        .replace(
            &format!("127.0.0.1:{}", server.api_port),
            &closed.to_string(),
        );
    let cut_off = server.run_dir.join("kubeconfig-cut-off");
    std::fs::write(&cut_off, kc).unwrap();
    let cut_off = rt()
        .block_on(agent::datastore::kubernetes::client(Some(&cut_off)))
        .unwrap();
    let checks = [agent::rollout::Check::Apiserver];
    let failed = rt().block_on(confirm::first_failure(&cut_off, &checks));
    assert!(
        failed
            .as_deref()
            .is_some_and(|f| f.starts_with("apiserver: ")),
        "{failed:?}"
    );
    assert_eq!(
        rt().block_on(confirm::first_failure(&agent_client, &checks)),
        None
    );
}

/// A staged Delete promoted with `--confirm-within`: the enforced policy is
/// deleted and the staged one stays, carrying the record. Unconfirmed, one of
/// two racing agents (deploy/'s RBAC) brings the enforced policy back exactly
/// and keeps the staged one; confirmed (`agent confirm`), the staged one goes
/// and the deletion stays.
#[test]
fn kubernetes_staged_delete_commit_confirmed() {
    use agent::datastore::kubernetes::confirm::{self, Supervisor};
    let server = private_server();
    let client = server.client();
    let ns = "delete-confirm";
    namespace(&client, ns, json!({}));
    let agent_client = as_agent(&server);
    let v3 = "projectcalico.org/v3";
    let enforced_spec = json!({"selector": "app == 'db'", "types": ["Ingress"],
                               "ingress": [{"action": "Allow", "source": {"selector": "app == 'api'"}}]});
    for name in ["undone", "kept"] {
        apply(
            &client,
            json!({"apiVersion": v3, "kind": "NetworkPolicy",
                   "metadata": {"name": name, "namespace": ns, "labels": {"team": "db"},
                                "annotations": {"owner": "db-team"}},
                   "spec": enforced_spec}),
        );
        apply(
            &client,
            json!({"apiVersion": v3, "kind": "StagedNetworkPolicy",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"stagedAction": "Delete"}}),
        );
        let out = promote(
            &server,
            &[&format!("snp/{name}"), "-n", ns, "--confirm-within", "2s"],
        );
        let stdout = ok(&out);
        assert!(
            stdout.contains("stays until the deletion is confirmed"),
            "{stdout}"
        );
        assert!(get(&client, v3, "NetworkPolicy", Some(ns), name).is_none());
        let staged = get(&client, v3, "StagedNetworkPolicy", Some(ns), name).expect("stays");
        let rec = confirm::record_of(&staged)
            .unwrap()
            .expect("record on the staged one");
        assert_eq!(rec.action, confirm::Promoted::Delete);
    }
    // Promoting it again while it waits is refused.
    let out = promote(&server, &["snp/undone", "-n", ns]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already awaits confirmation"));
    let out = Command::new(agent_bin())
        .args(["confirm", "--datastore", "kubernetes", "snp/kept", "-n", ns])
        .env("KUBECONFIG", &server.kubeconfig)
        .output()
        .unwrap();
    ok(&out);
    assert!(get(&client, v3, "StagedNetworkPolicy", Some(ns), "kept").is_none());

    let mut a = Supervisor::new("agent-a", confirm::LEASE_NAMESPACE);
    let mut b = Supervisor::new("agent-b", confirm::LEASE_NAMESPACE);
    assert!(
        tick_both(&mut a, &mut b, &agent_client).is_empty(),
        "before the deadline"
    );
    std::thread::sleep(Duration::from_millis(2300));
    let outcomes = tick_both(&mut a, &mut b, &agent_client);
    assert_eq!(outcomes.len(), 1, "reverted exactly once: {outcomes:?}");
    assert_eq!(
        outcomes[0].target,
        "StagedNetworkPolicy delete-confirm/undone"
    );
    assert_eq!(outcomes[0].action, "reverted");
    assert!(
        outcomes[0].reason.contains("not confirmed in time"),
        "{outcomes:?}"
    );
    // Exactly as before the promotion.
    let np = get(&client, v3, "NetworkPolicy", Some(ns), "undone").expect("back");
    assert_eq!(np.data["spec"], enforced_spec);
    assert_eq!(np.labels()["team"], "db");
    assert_eq!(np.annotations()["owner"], "db-team");
    assert!(!np.annotations().contains_key(confirm::ANNOTATION));
    let staged = get(&client, v3, "StagedNetworkPolicy", Some(ns), "undone").expect("kept");
    assert_eq!(staged.data["spec"]["stagedAction"], "Delete");
    assert!(!staged.annotations().contains_key(confirm::ANNOTATION));
    // The confirmed deletion stays; nothing is left to decide.
    assert!(get(&client, v3, "NetworkPolicy", Some(ns), "kept").is_none());
    assert!(tick_both(&mut a, &mut b, &agent_client).is_empty());
}

// ------------------------------------------------- crd.projectcalico.org/v1

const V1: &str = "crd.projectcalico.org/v1";

/// A GlobalNetworkPolicy as Calico stores it in crd.projectcalico.org/v1: in the
/// default tier its name is `default.<v3 name>`.
fn v1_gnp(stored_name: &str, kind: &str, spec: Value) -> Value {
    json!({"apiVersion": V1, "kind": kind, "metadata": {"name": stored_name}, "spec": spec})
}

/// Backend denies frontend and allows everything else (ingress).
fn deny_frontend_to_backend() -> Value {
    json!({"selector": "app == 'backend'", "types": ["Ingress"],
           "ingress": [{"action": "Deny", "source": {"selector": "app == 'frontend'"}},
                       {"action": "Allow"}]})
}

/// Waits for a flow frontend -> backend whose verdicts satisfy `check`
/// (making fresh connections meanwhile).
fn wait_flow(agent: &Agent, s: &Seed, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let _ = s.frontend.tcp_connect(s.backend.ipv4, 8080, SHORT_TIMEOUT);
        let flows = agent.flows();
        if let Some(f) = flows
            .iter()
            .find(|f| f["src"]["name"] == "frontend" && f["dst"]["name"] == "backend" && check(f))
        {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "no flow with {what}: {flows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A cluster with only Calico's crd.projectcalico.org/v1 CRDs: `--calico-api auto`
/// (the default) reads them; a v1 GlobalNetworkPolicy stored as `default.<name>`
/// is enforced on real traffic under its v3 name and deleting it restores the
/// traffic; a v1 staged policy's would-be denies are reported and
/// `agent promote` turns it into a v1 GlobalNetworkPolicy that is then enforced.
#[test]
fn kubernetes_crd_v1_auto_enforces_and_promotes() {
    lab::require_root();
    let server = v1_only_server();
    let client = server.client();
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let s = seed(&lab, &client, "prod", &node);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    let agent = Agent::start(&lab, &server, &node);
    let st = agent.wait_status("every kind listed", |s| {
        s["datastore_problems"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    });
    assert!(
        st["datastore"]
            .as_str()
            .is_some_and(|d| d.contains("Calico API crd.projectcalico.org/v1")),
        "{st:#}"
    );
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::Connected);

    // Enforced from v1, under the v3 name.
    apply(
        &client,
        v1_gnp(
            "default.deny-frontend",
            "GlobalNetworkPolicy",
            deny_frontend_to_backend(),
        ),
    );
    agent.wait_policies(1, 0);
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.database.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "database -> backend is still allowed"
    );
    let f = wait_flow(&agent, &s, "an enforced deny", |f| {
        f["enforced"]["action"] == "deny"
    });
    let trace = f["enforced"]["trace"].as_str().unwrap();
    assert!(
        trace.starts_with("default|gnp:deny-frontend|deny|"),
        "{f:#}"
    );

    // Deleting it restores the traffic.
    delete(
        &client,
        V1,
        "GlobalNetworkPolicy",
        None,
        "default.deny-frontend",
    );
    agent.wait_policies(0, 0);
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::Connected);

    // Staged in v1: reported, not enforced.
    apply(
        &client,
        v1_gnp(
            "default.backend-lockdown",
            "StagedGlobalNetworkPolicy",
            json!({"selector": "app == 'backend'", "types": ["Ingress"]}),
        ),
    );
    agent.wait_policies(0, 1);
    let f = wait_flow(&agent, &s, "a pending deny", |f| {
        f["enforced"]["action"] == "allow" && f["pending"]["action"] == "deny"
    });
    assert!(
        f["pending"]["trace"]
            .as_str()
            .unwrap()
            .contains("sgnp:backend-lockdown|"),
        "{f:#}"
    );
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );

    // Promoted by its v3 name (auto finds v1 too): a v1 GlobalNetworkPolicy, tiered
    // name kept; the staged object is gone and the lockdown is enforced.
    let out = promote(&server, &["sgnp/backend-lockdown"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "promoted to GlobalNetworkPolicy.crd.projectcalico.org default.backend-lockdown"
        ),
        "{stdout}"
    );
    let gnp = get(
        &client,
        V1,
        "GlobalNetworkPolicy",
        None,
        "default.backend-lockdown",
    )
    .expect("the enforced v1 policy");
    assert_eq!(gnp.data["spec"]["selector"], "app == 'backend'");
    assert!(gnp.data["spec"].get("stagedAction").is_none());
    assert!(get(
        &client,
        V1,
        "StagedGlobalNetworkPolicy",
        None,
        "default.backend-lockdown"
    )
    .is_none());
    agent.wait_policies(1, 0);
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);

    // Commit-confirmed in v1: the running agent shows it pending, then (holding
    // the Lease) reverts it: the staged object back, the enforced one gone.
    namespace(&client, "calico-system", json!({}));
    apply(
        &client,
        v1_gnp(
            "default.confirm-probe",
            "StagedGlobalNetworkPolicy",
            json!({"selector": "app == 'none'", "types": ["Ingress"]}),
        ),
    );
    agent.wait_policies(1, 1);
    let out = promote(&server, &["sgnp/confirm-probe", "--confirm-within", "3s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promotions = |s: &Value| s["promotions"].to_string();
    agent.wait_status("the pending confirmation", |s| {
        promotions(s).contains("confirm-probe awaits confirmation")
    });
    agent.wait_status_for(Duration::from_secs(20), "the revert", |s| {
        promotions(s).contains("confirm-probe reverted")
    });
    assert!(get(
        &client,
        V1,
        "StagedGlobalNetworkPolicy",
        None,
        "default.confirm-probe"
    )
    .is_some());
    assert!(get(
        &client,
        V1,
        "GlobalNetworkPolicy",
        None,
        "default.confirm-probe"
    )
    .is_none());
    assert!(agent.log_text().contains("promotion reverted"));
    // The flows say why the verdicts changed: pending, then reverted.
    let out = agent.cli(&["flows", "-o", "json", "--since", "10m"]);
    let events: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l.get("promotion").cloned())
        .map(|p| {
            (
                p["event"].as_str().unwrap().into(),
                p["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[0].0, "pending", "{events:?}");
    assert_eq!(events[1].0, "reverted", "{events:?}");
    assert!(events[1].1.contains("not confirmed in time"), "{events:?}");
    agent.wait_policies(1, 1);
}

/// Both groups installed (auto would pick v3): `--calico-api crd` reads only
/// crd.projectcalico.org/v1, so a v3 policy has no effect while a v1 one is
/// enforced, and `agent promote --calico-api crd` writes v1 objects.
#[test]
fn kubernetes_calico_api_crd_explicit_ignores_v3() {
    lab::require_root();
    let server = private_server();
    let client = server.client();
    apply_file(&client, &crd_v1_file(), false);
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let s = seed(&lab, &client, "prod", &node);
    let _db = s.database.tcp_listen(8080);
    let _be = s.backend.tcp_listen(8080);
    // v3: would deny frontend -> backend.
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
               "metadata": {"name": "deny-frontend"}, "spec": deny_frontend_to_backend()}),
    );
    // v1: denies frontend -> database.
    apply(
        &client,
        v1_gnp(
            "default.database-deny-frontend",
            "GlobalNetworkPolicy",
            json!({"selector": "app == 'database'", "types": ["Ingress"],
                   "ingress": [{"action": "Deny", "source": {"selector": "app == 'frontend'"}},
                               {"action": "Allow"}]}),
        ),
    );
    let agent = Agent::start_with(&lab, &server, &node, &["--calico-api", "crd"]);
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    let st = agent.wait_policies_status(1, 0);
    assert!(
        st["datastore"]
            .as_str()
            .is_some_and(|d| d.contains("crd.projectcalico.org/v1")),
        "{st:#}"
    );
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.frontend.tcp_connect(s.backend.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected,
        "the v3 policy is not read"
    );

    // A namespaced staged v1 policy promoted with --calico-api crd lands in v1
    // (not in v3, which is served too), keeping its namespace.
    apply(
        &client,
        json!({"apiVersion": V1, "kind": "StagedNetworkPolicy",
               "metadata": {"name": "default.backend-lockdown", "namespace": "prod"},
               "spec": {"selector": "app == 'backend'", "types": ["Ingress"]}}),
    );
    agent.wait_policies(1, 1);
    let out = promote(
        &server,
        &["snp/backend-lockdown", "-n", "prod", "--calico-api", "crd"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(get(
        &client,
        V1,
        "NetworkPolicy",
        Some("prod"),
        "default.backend-lockdown"
    )
    .is_some());
    assert!(get(
        &client,
        V1,
        "StagedNetworkPolicy",
        Some("prod"),
        "default.backend-lockdown"
    )
    .is_none());
    for name in ["backend-lockdown", "default.backend-lockdown"] {
        assert!(
            get(
                &client,
                "projectcalico.org/v3",
                "NetworkPolicy",
                Some("prod"),
                name
            )
            .is_none(),
            "promote wrote v3 {name}"
        );
    }
    agent.wait_policies(2, 0);
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);
}

/// Installed beside Calico's v1 CRDs holding a policy while projectcalico.org/v3
/// is served but empty (v3 CRDs from an earlier standalone install, or a
/// recent Calico's own): `auto` reads v1, where the policy is, says why, and
/// enforces it.
#[test]
fn kubernetes_auto_reads_the_group_holding_calicos_policies() {
    lab::require_root();
    let server = private_server();
    let client = server.client();
    apply_file(&client, &crd_v1_file(), false);
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let s = seed(&lab, &client, "prod", &node);
    let _db = s.database.tcp_listen(8080);
    apply(
        &client,
        v1_gnp(
            "default.database-deny-frontend",
            "GlobalNetworkPolicy",
            json!({"selector": "app == 'database'", "types": ["Ingress"],
                   "ingress": [{"action": "Deny", "source": {"selector": "app == 'frontend'"}},
                               {"action": "Allow"}]}),
        ),
    );
    let agent = Agent::start_with(&lab, &server, &node, &[]);
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    let st = agent.wait_policies_status(1, 0);
    let datastore = st["datastore"].as_str().unwrap_or_default();
    assert!(
        datastore.contains("crd.projectcalico.org/v1")
            && datastore.contains("crd.projectcalico.org/v1 holds policies"),
        "{st:#}"
    );
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

// ------------------------------------------- more kinds from the cluster

/// A HostEndpoint from the cluster (this node's interface to an admin network)
/// under a deny-all GlobalNetworkPolicy: the failsafe SSH port (22) stays
/// reachable while another port is blocked; deleting the host endpoint lifts it.
#[test]
fn kubernetes_host_endpoint_deny_all_keeps_failsafe_ssh() {
    lab::require_root();
    let server = private_server();
    let client = server.client();
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let admin = lab.add_external("admin");
    let _servers = [lab.node().tcp_listen(22), lab.node().tcp_listen(8080)];
    for ip in admin.node_ips() {
        assert_eq!(
            admin.tcp_connect(ip, 8080, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "before the agent: {ip}:8080"
        );
    }
    let expected: Vec<String> = admin.node_ips().iter().map(|ip| ip.to_string()).collect();
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
               "metadata": {"name": "node-admin", "labels": {"role": "node"}},
               "spec": {"node": node, "interfaceName": admin.node_if, "expectedIPs": expected}}),
    );
    // Another node's host endpoint: known, never attached here.
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "HostEndpoint",
               "metadata": {"name": "other-node-eth0", "labels": {"role": "node"}},
               "spec": {"node": "some-other-node", "interfaceName": "eth0",
                        "expectedIPs": ["10.99.0.1"]}}),
    );
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
               "metadata": {"name": "host-deny-all"},
               "spec": {"selector": "role == 'node'", "types": ["Ingress", "Egress"]}}),
    );
    let agent = Agent::start(&lab, &server, &node);
    agent.wait_endpoints(&["node-admin"]);
    agent.wait_policies(1, 0);
    for ip in admin.node_ips() {
        assert_eq!(
            admin.tcp_connect(ip, 22, PROBE_TIMEOUT),
            TcpProbe::Connected,
            "failsafe {ip}:22"
        );
        assert_eq!(
            admin.tcp_connect(ip, 8080, SHORT_TIMEOUT),
            TcpProbe::TimedOut,
            "{ip}:8080"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let _ = admin.tcp_connect(admin.node_ipv4, 8080, SHORT_TIMEOUT);
        let flows = agent.flows();
        if let Some(f) = flows.iter().find(|f| {
            f["reporter"]["endpoint"] == "node-admin"
                && f["direction"] == "ingress"
                && f["dst"]["port"] == 8080
                && f["enforced"]["action"] == "deny"
        }) {
            assert!(
                f["enforced"]["trace"]
                    .as_str()
                    .unwrap()
                    .contains("gnp:host-deny-all"),
                "{f:#}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no host deny flow: {flows:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The host endpoint goes: its interface is not policed any more.
    delete(
        &client,
        "projectcalico.org/v3",
        "HostEndpoint",
        None,
        "node-admin",
    );
    agent.wait_endpoints(&[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while admin.tcp_connect(admin.node_ipv4, 8080, SHORT_TIMEOUT) != TcpProbe::Connected {
        assert!(Instant::now() < deadline, "8080 still blocked");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        admin.tcp_connect(admin.node_ipv6, 8080, PROBE_TIMEOUT),
        TcpProbe::Connected
    );
}

/// From Calico's own crd.projectcalico.org/v1 CRDs (`auto`): a Tier ahead of the
/// default tier whose policy Passes frontend's traffic to the default tier
/// (where it is decided) and denies database outright; and a GlobalNetworkSet
/// whose labels a rule selects, so its nets are allowed in. Changes to the tier
/// policy's Pass target and to the network set's nets are enforced as they come.
#[test]
fn kubernetes_tier_pass_and_global_network_set() {
    lab::require_root();
    let server = v1_only_server();
    let client = server.client();
    let lab = Lab::new();
    let node = format!("node-{}", lab.id());
    let s = seed(&lab, &client, "prod", &node);
    let _listeners = [
        s.frontend.tcp_listen(8080),
        s.backend.tcp_listen(8080),
        s.database.tcp_listen(8080),
    ];
    apply(
        &client,
        json!({"apiVersion": V1, "kind": "Tier", "metadata": {"name": "security"},
               "spec": {"order": 100}}),
    );
    // Security tier (stored as Calico names tiered policies: `<tier>.<name>`).
    apply(
        &client,
        v1_gnp(
            "security.backend-guard",
            "GlobalNetworkPolicy",
            json!({"tier": "security", "order": 1, "selector": "app == 'backend'",
                   "types": ["Ingress"],
                   "ingress": [{"action": "Pass", "source": {"selector": "app == 'frontend'"}},
                               {"action": "Deny", "source": {"selector": "app == 'database'"}},
                               {"action": "Allow"}]}),
        ),
    );
    // Default tier: frontend is denied here, database would be allowed (but the
    // security tier decided first).
    let default_tier = |frontend_action: &str| {
        v1_gnp(
            "default.backend-default",
            "GlobalNetworkPolicy",
            json!({"selector": "app == 'backend'", "types": ["Ingress"],
                   "ingress": [{"action": frontend_action,
                                "source": {"selector": "app == 'frontend'"}},
                               {"action": "Allow"}]}),
        )
    };
    apply(&client, default_tier("Deny"));
    // Database admits only the "db-clients" network set.
    let clients = |ip: std::net::Ipv4Addr| {
        json!({"apiVersion": V1, "kind": "GlobalNetworkSet",
               "metadata": {"name": "db-clients", "labels": {"role": "db-client"}},
               "spec": {"nets": [format!("{ip}/32")]}})
    };
    apply(&client, clients(s.frontend.ipv4));
    apply(
        &client,
        v1_gnp(
            "default.database-from-clients",
            "GlobalNetworkPolicy",
            json!({"selector": "app == 'database'", "types": ["Ingress"],
                   "ingress": [{"action": "Allow", "protocol": "TCP",
                                "source": {"selector": "role == 'db-client'"}}]}),
        ),
    );
    let agent = Agent::start(&lab, &server, &node);
    agent.wait_endpoints(&["prod/backend", "prod/database", "prod/frontend"]);
    agent.wait_policies(3, 0);
    let st = agent.try_status().unwrap();
    assert!(st["diagnostics"].as_array().unwrap().is_empty(), "{st:#}");

    // Tier order and Pass: frontend is passed on and denied by the default tier;
    // database is denied by the security tier although the default tier allows it.
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::TimedOut);
    assert_eq!(
        s.database.tcp_connect(s.backend.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "database -> backend: denied in the security tier"
    );
    let f = wait_flow(&agent, &s, "a deny from the default tier", |f| {
        f["enforced"]["action"] == "deny"
    });
    let trace = f["enforced"]["trace"].as_str().unwrap();
    assert!(
        trace.contains("default|gnp:backend-default|deny|0"),
        "decided in the default tier after the Pass: {f:#}"
    );
    // The default tier now allows frontend: the Pass lets that decide.
    apply(&client, default_tier("Allow"));
    wait_tcp(&s.frontend, &s.backend, 8080, TcpProbe::Connected);
    assert_eq!(
        s.database.tcp_connect(s.backend.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "database -> backend: still denied in the security tier"
    );

    // The network set: frontend's address is in it, backend's is not.
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::Connected);
    assert_eq!(
        s.backend.tcp_connect(s.database.ipv4, 8080, SHORT_TIMEOUT),
        TcpProbe::TimedOut,
        "backend is not a db-client"
    );
    // Its nets change: now backend is in, frontend is out.
    apply(&client, clients(s.backend.ipv4));
    wait_tcp(&s.backend, &s.database, 8080, TcpProbe::Connected);
    wait_tcp(&s.frontend, &s.database, 8080, TcpProbe::TimedOut);
}

/// Services and EndpointSlices from a real v1.20 API server: discovery finds
/// discovery.k8s.io/v1beta1 (v1 arrived in 1.21), the Service's ClusterIP (set
/// by the server) becomes a frontend and a `destination.services` rule
/// resolves to the slice's backend; changing the slice re-resolves it.
#[test]
fn kubernetes_services_and_v1beta1_endpoint_slices_are_watched() {
    use agent::datastore::kubernetes::{CalicoApi, KubeDatastore, KubeOptions};
    let server = shared_server();
    let client = server.client();
    let ns = format!(
        "svc{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    namespace(&client, &ns, json!({}));
    apply(
        &client,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": ns},
               "spec": {"ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}], "selector": {"app": "web"}}}),
    );
    let slice = |ip: &str| {
        json!({"apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
               "metadata": {"name": "web-1", "namespace": ns,
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
               "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]})
    };
    apply(&client, slice("10.65.7.20"));
    apply(
        &client,
        json!({"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
               "metadata": {"name": "to-web", "namespace": ns},
               "spec": {"selector": "all()", "types": ["Egress"],
                        "egress": [{"action": "Allow", "destination": {"services": {"name": "web"}}}]}}),
    );
    let opts = KubeOptions {
        node: "no-such-node".into(),
        kubeconfig: Some(server.kubeconfig.clone()),
        calico_api: CalicoApi::V3,
    };
    let mut ds = rt()
        .block_on(KubeDatastore::start(&opts))
        .expect("datastore");
    assert!(ds.unsynced().is_empty(), "{:?}", ds.unsynced());
    let backends_of = |ds: &KubeDatastore| {
        let l = ds.load();
        let svc = l
            .model
            .services
            .iter()
            .find(|s| s.namespace == ns && s.name == "web")
            .cloned();
        let rule_nets = l
            .model
            .policies
            .iter()
            .find(|p| p.id.name == "to-web" && p.id.namespace.as_deref() == Some(ns.as_str()))
            .map(|p| p.egress[0].destination.nets.clone());
        (svc, rule_nets, l.diagnostics)
    };
    let (svc, nets, diags) = backends_of(&ds);
    let svc = svc.unwrap_or_else(|| panic!("Service not in the model: {diags:#?}"));
    assert_eq!(svc.frontends.len(), 1, "the server's ClusterIP: {svc:?}");
    assert!(svc.frontends[0].to_string().starts_with("10."), "{svc:?}");
    assert_eq!(
        svc.backends[0].ports,
        vec![(agent::model::ir::Protocol::TCP, 8080)]
    );
    assert_eq!(nets, Some(vec!["10.65.7.20/32".parse().unwrap()]));
    // The slice changes: the rule follows.
    apply(&client, slice("10.65.7.21"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        rt().block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(2), ds.next()).await;
        });
        let (_, nets, _) = backends_of(&ds);
        if nets == Some(vec!["10.65.7.21/32".parse().unwrap()]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rule did not follow the slice: {nets:?}"
        );
    }
    delete(&client, "v1", "Namespace", None, &ns);
}

/// Another holder's live Lease on `target` in `ns`: an agent taking its Leases
/// there must wait for it (it never reverts what another agent is deciding).
fn live_foreign_lease(client: &Client, ns: &str, target: &str) {
    use agent::datastore::kubernetes::confirm;
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(confirm::lease_name(target)),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some("another-agent".into()),
            lease_duration_seconds: Some(3600),
            renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            ..Default::default()
        }),
    };
    rt().block_on(leases.create(&Default::default(), &lease))
        .unwrap();
}

/// Where a running agent takes the Leases that make each revert happen once:
/// `$POD_NAMESPACE` (the DaemonSet sets it from the downward API), and
/// `--lease-namespace` over it. Shown by a live Lease of another holder on the
/// same target in every other namespace: the agent reverts the unconfirmed
/// promotion only if it takes its Lease where none is held.
#[test]
fn kubernetes_lease_namespace_from_pod_namespace_and_flag() {
    use agent::datastore::kubernetes::confirm;
    lab::require_root();
    let server = private_server();
    let client = server.client();
    let v3 = "projectcalico.org/v3";
    for ns in ["lease-env", "lease-flag", confirm::LEASE_NAMESPACE] {
        namespace(&client, ns, json!({}));
    }
    // (policy, POD_NAMESPACE, --lease-namespace, namespaces with a foreign Lease)
    let cases: [(&str, &str, Option<&str>, &[&str]); 2] = [
        (
            "lease-by-env",
            "lease-env",
            None,
            &[confirm::LEASE_NAMESPACE],
        ),
        (
            "lease-by-flag",
            "lease-env",
            Some("lease-flag"),
            &[confirm::LEASE_NAMESPACE, "lease-env"],
        ),
    ];
    for (name, env_ns, flag, blocked) in cases {
        apply(
            &client,
            json!({"apiVersion": v3, "kind": "StagedGlobalNetworkPolicy",
                   "metadata": {"name": name},
                   "spec": {"selector": "app == 'no-such-app'", "types": ["Ingress"]}}),
        );
        let target = format!("StagedGlobalNetworkPolicy {name}");
        for ns in blocked {
            live_foreign_lease(&client, ns, &target);
        }
        let lab = Lab::new();
        let extra: Vec<&str> = flag.map_or(vec![], |f| vec!["--lease-namespace", f]);
        let _agent = Agent::start_env(
            &lab,
            &server,
            "node-lease",
            &extra,
            &[("POD_NAMESPACE", env_ns)],
        );
        ok(&promote(
            &server,
            &[&format!("sgnp/{name}"), "--confirm-within", "2s"],
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while get(&client, v3, "GlobalNetworkPolicy", None, name).is_some() {
            assert!(
                Instant::now() < deadline,
                "{name}: not reverted: the agent did not take its Lease in {:?}",
                flag.unwrap_or(env_ns)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            get(&client, v3, "StagedGlobalNetworkPolicy", None, name).is_some(),
            "{name}: the staged version is back"
        );
    }
}

/// An agent cut off from the API server cannot report its failing check, so
/// it counts through its presence Lease (`presence`): with the agent's own
/// RBAC, two agents keep theirs; a promotion with checks confirms once both
/// renewed after it took effect; when one stops renewing (cut off), the other
/// does not confirm and reverts once that Lease expires; an agent that
/// withdrew (a clean stop) no longer counts.
#[test]
fn kubernetes_a_silent_agent_counts_against_confirming() {
    use agent::datastore::kubernetes::confirm::{Supervisor, LEASE_NAMESPACE};
    use agent::datastore::kubernetes::presence::Timing;
    let server = private_server();
    let client = server.client();
    namespace(&client, LEASE_NAMESPACE, json!({}));
    let ns = "presence";
    namespace(&client, ns, json!({}));
    let agent_client = as_agent(&server);
    let timing = Timing {
        renew_every: Duration::from_millis(500),
        duration: Duration::from_secs(3),
        propagation: Duration::from_secs(1),
    };
    let mut a = Supervisor::new("node-a/1", LEASE_NAMESPACE).with_presence("node-a", timing);
    let mut b = Supervisor::new("node-b/2", LEASE_NAMESPACE).with_presence("node-b", timing);
    assert!(tick_both(&mut a, &mut b, &agent_client).is_empty());
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let check = format!("tcp:{}", open.local_addr().unwrap());
    let promote_one = |name: &str| {
        apply(
            &client,
            json!({"apiVersion": "projectcalico.org/v3", "kind": "StagedNetworkPolicy",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"selector": "app == 'x'", "types": ["Ingress"]}}),
        );
        ok(&promote(
            &server,
            &[
                &format!("snp/{name}"),
                "-n",
                ns,
                "--confirm-within",
                "1h",
                "--settle",
                "1s",
                "--confirm-if",
                &check,
            ],
        ));
    };
    // Ticks (both agents, or only `a`) until something is decided.
    let decide = |a: &mut Supervisor, b: Option<&mut Supervisor>| {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut b = b;
        loop {
            std::thread::sleep(Duration::from_millis(250));
            let decided = match b.as_deref_mut() {
                Some(b) => tick_both(a, b, &agent_client),
                None => {
                    rt().block_on(
                        a.tick(&agent_client, agent::datastore::kubernetes::CalicoGroup::V3),
                    )
                    .expect("agent-a")
                    .0
                }
            };
            if !decided.is_empty() {
                return decided;
            }
            assert!(Instant::now() < deadline, "nothing decided in 30s");
        }
    };

    // Both agents renew: confirmed after the settle time.
    promote_one("both-alive");
    let decided = decide(&mut a, Some(&mut b));
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0].action, "confirmed", "{decided:?}");

    // `b` is cut off (it no longer ticks): `a`'s checks pass, but it waits for
    // `b`, then reverts when `b`'s presence expires.
    let promoted = Instant::now();
    promote_one("b-cut-off");
    let decided = decide(&mut a, None);
    assert_eq!(decided.len(), 1, "{decided:?}");
    assert_eq!(decided[0].action, "reverted", "{decided:?}");
    assert!(
        decided[0].reason.contains("node-b stopped reporting"),
        "{decided:?}"
    );
    assert!(
        promoted.elapsed() >= Duration::from_secs(2),
        "not before b's presence expired: {:?}",
        promoted.elapsed()
    );
    assert!(get(
        &client,
        "projectcalico.org/v3",
        "StagedNetworkPolicy",
        Some(ns),
        "b-cut-off"
    )
    .is_some());

    // `b` stopped cleanly (withdrew its presence): it no longer counts.
    rt().block_on(b.withdraw(&agent_client)).unwrap();
    promote_one("b-withdrew");
    let decided = decide(&mut a, None);
    assert_eq!(decided[0].action, "confirmed", "{decided:?}");
    drop(open);
}

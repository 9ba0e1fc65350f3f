//! The agent only pins where pins outlive it (`agent::dataplane::host`): run
//! the wrong way (`ip netns exec`, a private bpffs in a mount namespace of its
//! own) it refuses before loading or attaching anything, and says how to run
//! it; run the right way (`nsenter --net`, the lab's default) its programs keep
//! enforcing after SIGKILL (`restart_e2e.rs` covers that in depth, with
//! probers; here the plain before/after).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use lab::{Lab, TcpProbe};

/// Runs `agent run` via `prefix` (a command that changes namespaces) and
/// returns its output; it must exit on its own well within the test's time.
fn run_refused(prefix: &[&str], dir: &Path, socket: &Path, bpffs: &Path) -> Output {
    let mut child = Command::new(prefix[0])
        .args(&prefix[1..])
        .arg(agent_bin())
        .arg("run")
        .arg("--datastore")
        .arg(dir)
        .arg("--socket")
        .arg(socket)
        .arg("--bpffs")
        .arg(bpffs)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting agent run");
    for _ in 0..300 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "agent run via {prefix:?} was not refused: still running after 30 s\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_refused_cleanly(lab: &Lab, out: &Output, bpffs: &Path, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "agent run succeeded:\n{stderr}");
    assert!(stderr.contains(want), "no {want:?} in:\n{stderr}");
    assert!(
        stderr.contains("nsenter --net="),
        "the error names the fix:\n{stderr}"
    );
    assert!(
        !bpffs.join("maps/ACTIVE").exists(),
        "refused agent pinned maps in {}",
        bpffs.display()
    );
    for iface in ["calidemofront", "calidemoback", "calidemodb"] {
        assert!(
            tcx_programs(lab, iface).is_empty(),
            "refused agent attached programs to {iface}"
        );
    }
}

#[test]
fn ip_netns_exec_is_refused_before_touching_the_kernel() {
    lab::require_root();
    let lab = Lab::new();
    let _seed = seed_pods(&lab);
    let dir = Agent::seed_datastore("netns-exec");
    let bpffs = Agent::bpffs_for(&dir);
    // `ip netns exec` remounts /sys: /sys/fs/bpf there is no bpffs, and one
    // mounted there would die with the agent.
    let socket = dir.parent().unwrap().join("refused.sock");
    let out = run_refused(
        &["ip", "netns", "exec", lab.node().name()],
        &dir,
        &socket,
        &bpffs,
    );
    assert_refused_cleanly(
        &lab,
        &out,
        &bpffs,
        "no bpffs is mounted at /sys/fs/bpf in this mount namespace",
    );
    let _ = std::fs::remove_dir_all(&bpffs);
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn a_bpffs_private_to_the_agents_mount_namespace_is_refused() {
    lab::require_root();
    let lab = Lab::new();
    let _seed = seed_pods(&lab);
    let dir = Agent::seed_datastore("private-bpffs");
    let mnt = dir.parent().unwrap().join("private-bpffs");
    std::fs::create_dir_all(&mnt).unwrap();
    let bpffs = mnt.join("agent");
    // A mount namespace of its own with a bpffs only it holds (what a
    // container without Bidirectional propagation has), in the node's
    // network namespace.
    let script = format!(
        "mount -t bpf bpf {m} && exec \"$0\" \"$@\"",
        m = mnt.display()
    );
    let node = format!("--net={}", lab.node().path().display());
    let prefix = [
        "nsenter",
        node.as_str(),
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script.as_str(),
    ];
    let socket = dir.parent().unwrap().join("refused.sock");
    let out = run_refused(&prefix, &dir, &socket, &bpffs);
    assert_refused_cleanly(&lab, &out, &bpffs, "which only this mount namespace holds");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn started_with_nsenter_the_programs_outlive_a_sigkill() {
    lab::require_root();
    let lab = Lab::new();
    let seed = seed_pods(&lab);
    let _db = seed.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("nsenter-kill");
    let mut agent = Agent::start(&lab, &dir);
    agent.wait_attached(3);
    assert_seed_enforced(&seed);
    agent.kill9();
    assert_eq!(tcx_programs(&lab, "calidemodb").len(), 2, "after kill -9");
    wait_tcp(&seed.frontend, &seed.database, 8080, TcpProbe::TimedOut);
    wait_tcp(&seed.backend, &seed.database, 8080, TcpProbe::Connected);
    // Dropping `agent` runs `agent cleanup` on its pins and removes the datastore.
}

/// A second agent on the same socket (another pin directory) is refused
/// before it loads or attaches anything: the first one's programs are the
/// only ones on the interfaces and nothing is pinned for the second.
#[test]
fn a_second_agent_on_the_same_socket_changes_nothing() {
    lab::require_root();
    let lab = Lab::new();
    let _seed = seed_pods(&lab);
    let dir = Agent::seed_datastore("second-agent");
    let first = Agent::start(&lab, &dir);
    first.wait_attached(3);
    let before = tcx_programs(&lab, "calidemodb");
    let bpffs = PathBuf::from(format!("{}-second", Agent::bpffs_for(&dir).display()));
    let socket = dir.parent().unwrap().join("agent.sock");
    let node = format!("--net={}", lab.node().path().display());
    let out = run_refused(&["nsenter", node.as_str()], &dir, &socket, &bpffs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("another agent is serving"), "{stderr}");
    assert!(
        !bpffs.join("maps/ACTIVE").exists(),
        "the refused agent pinned maps"
    );
    assert_eq!(tcx_programs(&lab, "calidemodb"), before, "programs changed");
    let _ = std::fs::remove_dir_all(&bpffs);
}

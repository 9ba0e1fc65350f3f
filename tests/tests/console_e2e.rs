//! The web console (`agent run --console`), end to end: the agent in the
//! lab's node namespace on the seed scenario, real TCP between lab pods, the
//! page rendered by headless Chromium (Debian's `chromium`) in the node
//! namespace. The staged backend lockdown's would-be deny of frontend ->
//! backend, seen in traffic, must be on the page after its script ran, with
//! the command that promotes it; a screenshot is saved under
//! `target/test-artifacts/`. The console listens on a non-loopback address
//! with a token: requests without it are refused (401), and without a token
//! such an address is refused at start.
mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use lab::Lab;
use serde_json::Value;

/// The console's port inside the lab's node namespace (its own network stack).
const PORT: u16 = 9909;
const TOKEN: &str = "console-e2e-token-0123456789abcdef";
const BACKEND_LOCKDOWN: &str = "sgnp/backend-lockdown-staged";

/// The `chromium` program; a missing one fails the test (never skipped).
fn chromium() -> PathBuf {
    let found = Command::new("chromium")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the console test needs headless Chromium: `apt-get install -y --no-install-recommends \
         chromium` (or `cargo xtask setup`)"
    );
    PathBuf::from("chromium")
}

/// `target/test-artifacts/`, created.
fn artifacts_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    // target/<profile>/deps/<test binary>
    let target = exe.ancestors().nth(3).expect("target dir");
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A GET on the console from inside the node namespace: (status, body).
fn get(lab: &Lab, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request += &format!("{k}: {v}\r\n");
    }
    request += "\r\n";
    let response = lab.node().run(move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, PORT));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read the response");
        out
    });
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad response: {response}"));
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

/// Polls `/api/report` until the backend lockdown would newly deny frontend -> backend (10 s).
fn wait_reported_deny(lab: &Lab) -> Value {
    let fetch = || {
        let (status, body) = get(lab, "/api/report", &[("Authorization", &bearer())]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("JSON report")
    };
    let denies = |report: &Value| {
        report["policies"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["policy"] == BACKEND_LOCKDOWN)
            .flat_map(|p| p["newly_denied"].as_array().unwrap().clone())
            .any(|c| c["from"] == "prod/frontend" && c["to"] == "prod/backend")
    };
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(200),
        fetch,
        denies,
        |report| format!("no would-be deny in {report:#}"),
    )
}

/// Runs headless Chromium in the node namespace on `url` with `extra` flags,
/// the page's fetches given time to complete; returns stdout.
fn chromium_run(lab: &Lab, url: &str, extra: &[&str]) -> String {
    let profile = tempfile_dir("chromium-profile");
    let out = lab
        .node()
        .command(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=8000")
        .args(extra)
        .arg(url)
        .output()
        .expect("running chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium {extra:?} {url}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tempfile_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("console-e2e-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The rendered page's text as written (entities of `<`, `>`, `&` decoded).
fn decoded(dom: &str) -> String {
    dom.replace("&gt;", ">")
        .replace("&lt;", "<")
        .replace("&amp;", "&")
}

/// The `<article>` of one staged policy in the rendered page.
fn policy_article<'a>(dom: &'a str, policy: &str) -> &'a str {
    let start = dom
        .find(&format!("data-policy=\"{policy}\""))
        .unwrap_or_else(|| panic!("no {policy} on the page:\n{dom}"));
    let end = dom[start..].find("</article>").expect("</article>");
    &dom[start..start + end]
}

#[test]
fn the_console_shows_the_staged_would_be_deny_and_refuses_strangers() {
    lab::require_root();
    chromium();
    let lab = Lab::new();
    let s = seed_pods(&lab);
    let _be = s.backend.tcp_listen(8080);
    let _db = s.database.tcp_listen(8080);
    let dir = Agent::seed_datastore("console");
    let token_file = dir.parent().unwrap().join("console-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let addr = format!("0.0.0.0:{PORT}");
    let agent = Agent::start_with(
        &lab,
        &dir,
        &[
            "--console",
            &addr,
            "--console-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    agent.wait_attached(3);

    // Strangers: no token, a wrong one, a wrong login.
    for (path, headers) in [
        ("/", vec![]),
        ("/api/report", vec![]),
        (
            "/api/flows",
            vec![("Authorization", "Bearer wrong-token-0123456789")],
        ),
        ("/api/matrix", vec![("Cookie", "agent_console=wrong")]),
        ("/?token=wrong", vec![]),
    ] {
        let (status, body) = get(&lab, path, &headers);
        assert_eq!(status, 401, "{path} {headers:?}: {body}");
        assert!(!body.contains("prod/"), "{path}: {body}");
    }
    let (status, body) = get(&lab, "/api/nodes", &[("Authorization", &bearer())]);
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(
        &lab,
        "/api/flows?port=http",
        &[("Authorization", &bearer())],
    );
    assert_eq!((status, body.contains("port=")), (400, true), "{body}");

    // Real traffic: the staged lockdown would deny frontend -> backend, which is allowed now.
    seed_traffic(&s);
    wait_reported_deny(&lab);

    // The page, as a browser renders it after its script ran.
    let url = format!("http://127.0.0.1:{PORT}/");
    let refused = chromium_run(&lab, &url, &["--dump-dom"]);
    assert!(
        refused.contains("unauthorized") && !refused.contains("prod/frontend"),
        "{refused}"
    );
    let login = format!("{url}?token={TOKEN}");
    let dom = decoded(&chromium_run(&lab, &login, &["--dump-dom"]));
    let article = policy_article(&dom, BACKEND_LOCKDOWN);
    assert!(article.contains("would newly deny (1)"), "{article}");
    assert!(
        article.contains("prod/frontend -> prod/backend TCP/8080"),
        "{article}"
    );
    let promote = format!(
        "agent promote --datastore {} {BACKEND_LOCKDOWN}",
        dir.display()
    );
    assert!(article.contains(&promote), "want {promote:?} in {article}");
    // The matrix marks the cells where pending differs; the flows table has the connection.
    assert!(dom.contains("<td class=\"differs\""), "{dom}");
    let flows = &dom[dom.find("id=\"flows\"").expect("flows table")..];
    assert!(
        flows.contains("<td>prod/frontend</td><td>prod/backend</td><td>TCP/8080</td>"),
        "{flows}"
    );
    assert!(
        flows.contains("<td>prod/frontend</td><td>prod/database</td>"),
        "the enforced deny: {flows}"
    );
    assert!(
        flows.contains(&format!("<td>{BACKEND_LOCKDOWN}</td>")),
        "changed by: {flows}"
    );
    assert!(
        dom.contains("<span id=\"error\" class=\"error\"></span>"),
        "an API call failed: {dom}"
    );

    let shot = artifacts_dir().join("console.png");
    let _ = std::fs::remove_file(&shot);
    chromium_run(
        &lab,
        &login,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1100",
            "--hide-scrollbars",
        ],
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

#[test]
fn a_console_on_the_network_without_a_token_is_refused_at_start() {
    let dir = tempfile_dir("no-token");
    let out = Command::new(agent_bin())
        .args(["run", "--datastore"])
        .arg(&dir)
        .args(["--console", "0.0.0.0:9909", "--socket"])
        .arg(dir.join("agent.sock"))
        .arg("--bpffs")
        .arg(Path::new("/sys/fs/bpf").join(format!("console-e2e-{}", std::process::id())))
        .output()
        .expect("running agent run");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve the console on a non-loopback address")
            && err.contains("--console-token-file"),
        "{err}"
    );
}

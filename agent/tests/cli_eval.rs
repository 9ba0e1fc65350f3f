//! `agent eval` and `agent matrix`: run the built binary, check output and exit codes.
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run agent binary")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn eval_between_outside_ips_is_unpoliced_and_prints_json() {
    let output = agent(&[
        "eval",
        "--datastore",
        "examples",
        "--from",
        "192.0.2.1",
        "--to",
        "192.0.2.2",
        "--protocol",
        "TCP",
        "--port",
        "443",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["enforced"]["action"], "allow");
    assert_eq!(json["pending"]["action"], "allow");
    assert_eq!(json["flow"]["packet"]["dst_port"], 443);
}

#[test]
fn eval_with_an_unknown_endpoint_exits_2() {
    let output = agent(&[
        "eval",
        "--datastore",
        "examples",
        "--from",
        "no-such-namespace/no-such-pod",
        "--to",
        "192.0.2.2",
        "--protocol",
        "tcp",
        "--port",
        "80",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("no endpoint \"no-such-namespace/no-such-pod\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn eval_with_a_bad_protocol_or_missing_port_exits_2() {
    let base = [
        "eval",
        "--datastore",
        "examples",
        "--from",
        "192.0.2.1",
        "--to",
        "192.0.2.2",
    ];
    let bad = agent(&[&base[..], &["--protocol", "gre", "--port", "1"]].concat());
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        stderr(&bad).contains("unknown protocol"),
        "{}",
        stderr(&bad)
    );
    let no_port = agent(&[&base[..], &["--protocol", "udp"]].concat());
    assert_eq!(no_port.status.code(), Some(2));
    assert!(stderr(&no_port).contains("protocol UDP needs --port"));
    let mixed = agent(&[
        "eval",
        "--datastore",
        "examples",
        "--from",
        "192.0.2.1",
        "--to",
        "2001:db8::1",
        "--protocol",
        "icmp",
    ]);
    assert_eq!(mixed.status.code(), Some(2));
}

#[test]
fn a_missing_datastore_exits_2() {
    for command in ["eval", "matrix"] {
        let mut args = vec![command, "--datastore", "/nonexistent/datastore"];
        if command == "eval" {
            args.extend([
                "--from",
                "192.0.2.1",
                "--to",
                "192.0.2.2",
                "--protocol",
                "icmp",
            ]);
        }
        let output = agent(&args);
        assert_eq!(output.status.code(), Some(2), "{command}");
        assert!(stderr(&output).contains("is not a directory"), "{command}");
    }
}

#[test]
fn matrix_prints_json_per_port() {
    let output = agent(&[
        "matrix",
        "--datastore",
        "examples",
        "--port",
        "tcp/8080",
        "--port",
        "UDP/53",
        "-o",
        "json",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["ports"][0]["port"], "TCP/8080");
    assert_eq!(json["ports"][1]["port"], "UDP/53");
}

#[test]
fn matrix_rejects_a_port_of_a_portless_protocol() {
    let output = agent(&["matrix", "--datastore", "examples", "--port", "icmp/8"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("has no ports"),
        "{}",
        stderr(&output)
    );
}

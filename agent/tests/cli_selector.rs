//! `agent selector`: runs the built binary and checks output and exit codes.
use std::process::{Command, Output};

fn agent_selector(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .arg("selector")
        .args(args)
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
fn matching_selector_prints_true() {
    let output = agent_selector(&[
        r#"app == "web" && tier in {"fe", "be"}"#,
        "--label",
        "app=web",
        "--label",
        "tier=fe",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "true\n");
}

#[test]
fn non_matching_selector_prints_false() {
    let output = agent_selector(&["has(canary)", "-l", "app=web"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "false\n");
}

#[test]
fn absent_label_semantics_without_labels() {
    let output = agent_selector(&["app != 'web' && app not in {'db'}"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "true\n");
}

#[test]
fn label_values_may_contain_equals_signs() {
    let output = agent_selector(&["k == 'a=b'", "--label", "k=a=b"]);
    assert_eq!(stdout(&output), "true\n");
}

#[test]
fn empty_selector_matches_everything() {
    let output = agent_selector(&["", "--label", "a=b"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(stdout(&output), "true\n");
}

#[test]
fn unparsable_selector_exits_2_with_caret() {
    let output = agent_selector(&["a == b", "--label", "a=b"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(stdout(&output), "");
    let message = stderr(&output);
    assert!(message.contains("position 5"), "{message}");
    assert!(message.contains("expected a quoted string"), "{message}");
    assert!(message.contains("\n  a == b\n       ^\n"), "{message}");
}

#[test]
fn malformed_label_argument_is_a_usage_error() {
    let output = agent_selector(&["all()", "--label", "novalue"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("KEY=VALUE"), "{}", stderr(&output));
}

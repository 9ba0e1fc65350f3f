//! Fuzzing, bounded for CI: proptest over mutated YAML documents, selectors,
//! model lowering (load -> model -> compile) and crafted packets (the
//! evaluator over what was loaded). Any panic, stack overflow or runaway
//! allocation fails the test; see docs/fuzzing.md for the figures and for a
//! longer campaign (`FUZZ_CASES=100000 cargo test -p agent --test fuzz --release`).
//!
//! Seeds: the examples, the safe-mode document and the regression corpus in
//! `tests/corpus/` (the deep-nesting and alias-bomb files of issue 12).
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use agent::eval::{Evaluator, Flow, Packet};
use agent::model::{self, ir::Model, ir::Protocol, Loaded, Severity};
use agent::selector;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};

/// Cases per property: `FUZZ_CASES`, else a default sized for CI (~10-20 s in
/// all on a 2-core machine, debug build).
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        // A case that fails is a crash: shrinking is cheap and worth it.
        max_shrink_iters: 2048,
        // Failing cases are saved here and replayed first on the next run.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/fuzz-regressions.txt",
        ))),
        ..Config::default()
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every seed document: (name, text).
fn seeds() -> &'static [(String, String)] {
    static SEEDS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut out = Vec::new();
        for dir in ["examples", "safe-mode", "agent/tests/corpus"] {
            let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).unwrap();
                out.push((
                    format!("{dir}/{}", f.file_name().unwrap().to_string_lossy()),
                    text,
                ));
            }
        }
        assert!(out.len() >= 10, "seeds: {}", out.len());
        out
    })
}

/// Bits of YAML and of Calico's grammars that make mutations interesting.
const TOKENS: &[&str] = &[
    "- ",
    ": ",
    "\n",
    "  ",
    "    ",
    "\t",
    "---\n",
    "...\n",
    "[",
    "]",
    "{",
    "}",
    ",",
    "'",
    "\"",
    "#",
    "&a ",
    "*a",
    "&b [*a, *a, *a]",
    "!!str ",
    "!!binary ",
    "? ",
    "|\n",
    ">-\n",
    "~",
    "null",
    "1e400",
    ".nan",
    ".inf",
    "-1",
    "0",
    "65535",
    "65536",
    "99999999999999999999",
    "0x50",
    "0o17",
    "1.5",
    "80:90",
    "90:80",
    "010.065.000.010/32",
    "10.0.0.0/8",
    "::/0",
    "fd00::1/129",
    "TCP",
    "UDP",
    "ICMP",
    "Allow",
    "Deny",
    "Pass",
    "Log",
    "ingress:",
    "egress:",
    "ports: ",
    "nets: ",
    "selector: ",
    "all()",
    "has(a)",
    "a == 'b'",
    "!",
    "&&",
    "||",
    "(",
    ")",
    "in {",
    "\u{feff}",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{10ffff}",
    "\r\n",
    "%YAML 1.2\n",
    "<<: *a\n",
];

#[derive(Clone, Debug)]
enum Mutation {
    Insert(f64, usize),
    Delete(f64, usize),
    Duplicate(f64, usize),
    Truncate(f64),
    SwapLines(f64, f64),
    Indent(f64, usize),
    Byte(f64, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        4 => (at.clone(), 0..TOKENS.len()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        2 => (at.clone(), 1..40usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        1 => (at.clone(), 1..200usize).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        1 => at.clone().prop_map(Mutation::Truncate),
        1 => (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        1 => (at.clone(), 0..9usize).prop_map(|(a, n)| Mutation::Indent(a, n)),
        1 => (at, any::<u8>()).prop_map(|(a, b)| Mutation::Byte(a, b)),
    ]
}

/// The char boundary at or before `frac` of `s`.
fn at(s: &str, frac: f64) -> usize {
    let mut i = ((s.len() as f64) * frac) as usize;
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &mut String, m: &Mutation) {
    match *m {
        Mutation::Insert(a, t) => {
            let i = at(text, a);
            text.insert_str(i, TOKENS[t]);
        }
        Mutation::Delete(a, n) => {
            let i = at(text, a);
            let j = at(text, ((i + n) as f64 / text.len().max(1) as f64).min(1.0));
            if j > i {
                text.replace_range(i..j, "");
            }
        }
        Mutation::Duplicate(a, n) => {
            let i = at(text, a);
            let j = at(text, ((i + n) as f64 / text.len().max(1) as f64).min(1.0));
            if j > i {
                let piece = text[i..j].to_string();
                text.insert_str(j, &piece);
            }
        }
        Mutation::Truncate(a) => {
            let i = at(text, a);
            text.truncate(i);
        }
        Mutation::SwapLines(a, b) => {
            let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
            if lines.len() > 1 {
                let n = lines.len();
                let (x, y) = (((n as f64) * a) as usize % n, ((n as f64) * b) as usize % n);
                lines.swap(x, y);
                *text = lines.concat();
            }
        }
        Mutation::Indent(a, n) => {
            let mut lines: Vec<String> = text.split_inclusive('\n').map(String::from).collect();
            if !lines.is_empty() {
                let k = ((lines.len() as f64) * a) as usize % lines.len();
                let body = lines[k].trim_start_matches(' ').to_string();
                lines[k] = format!("{}{body}", " ".repeat(n));
                *text = lines.concat();
            }
        }
        Mutation::Byte(a, b) => {
            let i = at(text, a);
            // Only ASCII bytes keep it a str; others become a char.
            text.insert(i, char::from(b));
        }
    }
}

static YAML_INPUTS: AtomicUsize = AtomicUsize::new(0);
static SELECTOR_INPUTS: AtomicUsize = AtomicUsize::new(0);
static LOWERING_INPUTS: AtomicUsize = AtomicUsize::new(0);
static FLOWS: AtomicUsize = AtomicUsize::new(0);
/// Inputs whose fuzzed file loaded without an error (the rest were reported).
static YAML_CLEAN: AtomicUsize = AtomicUsize::new(0);
static LOWERING_CLEAN: AtomicUsize = AtomicUsize::new(0);

/// What every load must satisfy, whatever the input.
fn check_loaded(file: &Path, text: &str, l: &Loaded) -> Result<(), TestCaseError> {
    let lines = model::yaml::lines(text).count().max(1);
    for d in &l.diagnostics {
        prop_assert_eq!(&d.file, file, "{}", d);
        prop_assert!(
            d.line >= 1 && d.line <= lines + 1,
            "line {} outside 1..={}: {}",
            d.line,
            lines + 1,
            d
        );
        prop_assert!(!d.message.is_empty(), "{}", d);
    }
    Ok(())
}

/// Lowering and packets over a loaded model: compile it (the tables the
/// datapath would get) and evaluate crafted flows; nothing may panic.
fn exercise_model(m: &Model, flows: &[(u8, u8, u16, u16, u8)]) {
    let _ = agent::compile::compile(m);
    let mut ips: Vec<IpAddr> = m.endpoints.iter().flat_map(|e| e.ips.clone()).collect();
    ips.push(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    ips.push("fd00::7".parse().unwrap());
    let ev = Evaluator::new(m);
    for &(s, d, sport, dport, proto) in flows {
        let src = ips[s as usize % ips.len()];
        let dst = ips[d as usize % ips.len()];
        let number = [6, 17, 1, 58, 132, 136, 0, 255][proto as usize % 8];
        let protocol = Protocol::from_number(number);
        let packet = if protocol.is_icmp() {
            Packet::icmp(protocol, sport as u8, dport as u8)
        } else if protocol.carries_ports() {
            Packet::with_ports(protocol, sport, dport)
        } else {
            Packet::without_ports(protocol)
        };
        let _ = ev.evaluate_flow(&Flow { src, dst, packet });
        FLOWS.fetch_add(1, Ordering::Relaxed);
    }
}

fn flows() -> impl Strategy<Value = Vec<(u8, u8, u16, u16, u8)>> {
    proptest::collection::vec(any::<(u8, u8, u16, u16, u8)>(), 0..6)
}

/// Runs `f` on a thread with the stack of the daemon's blocking threads
/// (2 MiB), where the datastore is loaded.
fn on_daemon_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

#[test]
fn fuzz_yaml_mutations_of_the_examples() {
    on_daemon_stack(|| {
        let started = std::time::Instant::now();
        let mut runner = TestRunner::new(config(2500));
        let strategy = (
            0..seeds().len(),
            proptest::collection::vec(mutation(), 1..8),
            // Sometimes the mutated document next to the untouched examples.
            any::<bool>(),
            flows(),
        );
        let result = runner.run(&strategy, |(seed, mutations, with_examples, flows)| {
            let (name, text) = &seeds()[seed];
            let mut text = text.clone();
            for m in &mutations {
                apply(&mut text, m);
            }
            let file = PathBuf::from(format!("fuzz/{name}"));
            let mut sources = vec![(file.clone(), text.clone())];
            if with_examples {
                for (n, t) in seeds().iter().filter(|(n, _)| n.starts_with("examples/")) {
                    sources.push((PathBuf::from(n), t.clone()));
                }
            }
            let l = model::load::load_sources(&sources);
            YAML_INPUTS.fetch_add(1, Ordering::Relaxed);
            let only_fuzzed = Loaded {
                diagnostics: l
                    .diagnostics
                    .iter()
                    .filter(|d| d.file == file)
                    .cloned()
                    .collect(),
                ..l.clone()
            };
            check_loaded(&file, &text, &only_fuzzed)?;
            if !only_fuzzed.has_errors() {
                YAML_CLEAN.fetch_add(1, Ordering::Relaxed);
            }
            exercise_model(&l.model, &flows);
            Ok(())
        });
        eprintln!(
            "fuzz: {} mutated YAML inputs ({} without errors), {} flows evaluated, in {:?}",
            YAML_INPUTS.load(Ordering::Relaxed),
            YAML_CLEAN.load(Ordering::Relaxed),
            FLOWS.load(Ordering::Relaxed),
            started.elapsed()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

/// Selector text: mostly grammar tokens, sometimes any character.
fn selector_text() -> impl Strategy<Value = String> {
    const PARTS: &[&str] = &[
        "a",
        "b",
        "app",
        "k8s.io/name",
        "projectcalico.org/namespace",
        "'x'",
        "\"y\"",
        "''",
        " == ",
        " != ",
        " in ",
        " not in ",
        " { ",
        " } ",
        ", ",
        "has(",
        "!has(",
        "all()",
        "global()",
        ")",
        "(",
        " && ",
        " || ",
        "!",
        " contains ",
        " starts with ",
        " ends with ",
        "  ",
        "'",
        "\"",
        "\\",
        "é",
        "\u{0}",
    ];
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::sample::select(PARTS).prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ],
        0..24,
    )
    .prop_map(|parts| parts.concat())
}

fn labels() -> impl Strategy<Value = model::ir::Labels> {
    proptest::collection::btree_map(
        proptest::sample::select(&["a", "b", "app", "k8s.io/name"][..]).prop_map(str::to_owned),
        proptest::sample::select(&["", "x", "y", "b"][..]).prop_map(str::to_owned),
        0..4,
    )
}

#[test]
fn fuzz_selectors() {
    on_daemon_stack(|| {
        let started = std::time::Instant::now();
        let mut runner = TestRunner::new(config(20_000));
        let deep = prop_oneof![
            3 => selector_text(),
            // Nesting near and past the parser's bound.
            1 => (1..400usize, selector_text())
                .prop_map(|(n, s)| format!("{}{s}{}", "(".repeat(n), ")".repeat(n))),
            1 => (1..400usize).prop_map(|n| "!".repeat(n) + "has(a)"),
        ];
        let result = runner.run(&(deep, labels()), |(text, labels)| {
            SELECTOR_INPUTS.fetch_add(1, Ordering::Relaxed);
            if let Ok(s) = selector::parse(&text) {
                // Display is Calico's canonical form: it re-parses to the same selector.
                let shown = s.to_string();
                let again = selector::parse(&shown);
                prop_assert!(again.is_ok(), "{text:?} -> {shown:?}: {again:?}");
                let again = again.unwrap();
                prop_assert_eq!(&again, &s, "{:?} -> {:?}", text, shown);
                prop_assert_eq!(again.evaluate(&labels), s.evaluate(&labels));
            }
            Ok(())
        });
        eprintln!(
            "fuzz: {} selectors in {:?}",
            SELECTOR_INPUTS.load(Ordering::Relaxed),
            started.elapsed()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

/// A policy built from fields drawn from Calico's grammars, valid and not.
fn policy_yaml() -> impl Strategy<Value = String> {
    let kinds = proptest::sample::select(
        &[
            ("projectcalico.org/v3", "GlobalNetworkPolicy", false),
            ("projectcalico.org/v3", "StagedGlobalNetworkPolicy", false),
            ("projectcalico.org/v3", "NetworkPolicy", true),
            ("projectcalico.org/v3", "StagedNetworkPolicy", true),
        ][..],
    );
    // Mostly valid values (so that most policies reach the model), sometimes not.
    let action = prop_oneof![
        29 => proptest::sample::select(&["Allow", "Deny", "Pass", "Log"][..]),
        1 => proptest::sample::select(&["allow", "Drop", ""][..]),
    ];
    let proto = prop_oneof![
        29 => proptest::sample::select(&["TCP", "UDP", "SCTP"][..]),
        1 => proptest::sample::select(&["ICMP", "ICMPv6", "UDPLite", "6", "256", "tcp", "0"][..]),
    ];
    let port = prop_oneof![
        24 => (1..=65535u32).prop_map(|n| n.to_string()),
        8 => (1..=65535u32, 0..2000u32).prop_map(|(a, n)| format!("'{a}:{}'", (a + n).min(65535))),
        4 => proptest::sample::select(&["http", "'metrics-9090'", "'a.b_c-d'"][..])
            .prop_map(str::to_owned),
        1 => prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            (0..70000u32, 0..70000u32).prop_map(|(a, b)| format!("'{a}:{b}'")),
            proptest::sample::select(
                &["1e400", ".nan", ".inf", "-.inf", "1.5", "'a:b'", "~", "''", "0", "65536"][..]
            )
            .prop_map(str::to_owned),
        ],
    ];
    // One address family per rule (Calico refuses a rule with both).
    let v4 = (any::<[u8; 4]>(), 0..=32u8)
        .prop_map(|(a, p)| format!("{}.{}.{}.{}/{p}", a[0], a[1], a[2], a[3]));
    let v6 = (any::<u16>(), 0..=128u8).prop_map(|(a, p)| format!("fd00:{a:x}::/{p}"));
    let odd = prop_oneof![
        (any::<[u8; 4]>()).prop_map(|a| format!("{:03}.{}.{}.{}", a[0], a[1], a[2], a[3])),
        proptest::sample::select(&["0.0.0.0/0", "::/0", "nope", "10.0.0.1", "1.2.3.4/33"][..])
            .prop_map(str::to_owned),
    ];
    let nets = prop_oneof![
        18 => proptest::collection::vec(v4, 0..3),
        6 => proptest::collection::vec(v6, 0..3),
        1 => proptest::collection::vec(odd, 0..3),
    ];
    let selector = || {
        prop_oneof![
            18 => proptest::sample::select(
                &[
                    "all()", "", "app == 'web'", "has(a)", "a in {'x', 'y'}", "!has(b)",
                    "app != 'db' && has(a)", "a == 'x' || b == 'y'",
                    "k8s.io/name starts with 'w'", "app contains 'e'", "a not in {'x'}",
                ][..]
            )
            .prop_map(str::to_owned),
            2 => selector_text(),
        ]
    };
    let rule = (
        action,
        prop_oneof![29 => proto.prop_map(Some), 1 => Just(None)],
        proptest::collection::vec(port, 0..4),
        nets,
        proptest::option::of(selector()),
    )
        .prop_map(|(action, proto, ports, nets, sel)| {
            let mut r = format!("    - action: {action}\n");
            if let Some(p) = proto {
                r.push_str(&format!("      protocol: {p}\n"));
            }
            if !nets.is_empty() || sel.is_some() {
                r.push_str("      source:\n");
                if !nets.is_empty() {
                    r.push_str(&format!("        nets: [{}]\n", nets.join(", ")));
                }
                if let Some(s) = sel {
                    r.push_str(&format!("        selector: {}\n", serde_json::json!(s)));
                }
            }
            if !ports.is_empty() {
                r.push_str(&format!(
                    "      destination:\n        ports: [{}]\n",
                    ports.join(", ")
                ));
            }
            r
        })
        .boxed();
    (
        kinds,
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        proptest::option::of(-1000.0..1000.0f64),
        selector(),
        proptest::collection::vec(rule.clone(), 0..4),
        proptest::collection::vec(rule, 0..3),
    )
        .prop_map(
            |((api, kind, namespaced), name, order, sel, ingress, egress)| {
                let mut d = format!("apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n");
                if namespaced {
                    d.push_str("  namespace: default\n");
                }
                d.push_str("spec:\n");
                if let Some(o) = order {
                    d.push_str(&format!("  order: {o}\n"));
                }
                d.push_str(&format!("  selector: {}\n", serde_json::json!(sel)));
                if !ingress.is_empty() {
                    d.push_str("  ingress:\n");
                    d.extend(ingress);
                }
                if !egress.is_empty() {
                    d.push_str("  egress:\n");
                    d.extend(egress);
                }
                d
            },
        )
}

#[test]
fn fuzz_model_lowering() {
    on_daemon_stack(|| {
        let started = std::time::Instant::now();
        let mut runner = TestRunner::new(config(1500));
        let examples: Vec<(PathBuf, String)> = seeds()
            .iter()
            .filter(|(n, _)| n.starts_with("examples/"))
            .map(|(n, t)| (PathBuf::from(n), t.clone()))
            .collect();
        let strategy = (proptest::collection::vec(policy_yaml(), 1..4), flows());
        let result = runner.run(&strategy, |(docs, flows)| {
            LOWERING_INPUTS.fetch_add(1, Ordering::Relaxed);
            let file = PathBuf::from("fuzz/policies.yaml");
            // Each document its own name (a duplicate is an error of its own).
            let docs: Vec<String> = docs
                .iter()
                .enumerate()
                .map(|(i, d)| d.replacen("\n  name: ", &format!("\n  name: d{i}-"), 1))
                .collect();
            let text = docs.join("---\n");
            let mut sources = examples.clone();
            sources.push((file.clone(), text.clone()));
            let l = model::load::load_sources(&sources);
            let fuzzed: Vec<_> = l.diagnostics.iter().filter(|d| d.file == file).collect();
            let ok = Loaded {
                diagnostics: fuzzed.iter().map(|d| (*d).clone()).collect(),
                ..l.clone()
            };
            check_loaded(&file, &text, &ok)?;
            if std::env::var("FUZZ_DEBUG").is_ok() {
                if let Some(d) = ok
                    .diagnostics
                    .iter()
                    .find(|d| d.severity == Severity::Error)
                {
                    eprintln!("DEBUG {d}");
                }
            }
            if !ok.has_errors() {
                LOWERING_CLEAN.fetch_add(1, Ordering::Relaxed);
            }
            // The examples never suffer from a bad neighbour.
            prop_assert!(
                !l.diagnostics
                    .iter()
                    .any(|d| d.file != file && d.severity == Severity::Error),
                "{:#?}",
                l.diagnostics
            );
            // What reaches the model is within Calico's grammar.
            for p in &l.model.policies {
                let text = format!("{p:?}");
                prop_assert!(!text.contains("Named(\"inf\")") && !text.contains("Named(\"NaN\")"));
            }
            exercise_model(&l.model, &flows);
            Ok(())
        });
        eprintln!(
            "fuzz: {} generated policy files lowered ({} without errors), in {:?}",
            LOWERING_INPUTS.load(Ordering::Relaxed),
            LOWERING_CLEAN.load(Ordering::Relaxed),
            started.elapsed()
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    });
}

/// Every file of the checked-in corpus loads to errors with lines, never a crash.
#[test]
fn corpus_regressions_load_without_crashing() {
    on_daemon_stack(|| {
        for (name, text) in seeds() {
            let file = PathBuf::from(name);
            let l = model::load::load_sources(&[(file.clone(), text.clone())]);
            check_loaded(&file, text, &l).unwrap();
            if name.starts_with("agent/tests/corpus/") {
                assert!(l.has_errors(), "{name}: {:#?}", l.diagnostics);
            } else {
                assert!(!l.has_errors(), "{name}: {:#?}", l.diagnostics);
            }
        }
    });
}

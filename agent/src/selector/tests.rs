//! Conformance tests translated from Calico's `parser_test.go` and
//! `tokenizer_test.go`, plus property tests for printing and prefixing.
use proptest::prelude::*;

use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parsed(input: &str) -> Selector {
    parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"))
}

type LabelPairs<'a> = &'a [&'a [(&'a str, &'a str)]];

/// Calico's `selectorTests`: selector, label sets it matches, label sets it does not.
const EVALUATION_CASES: &[(&str, LabelPairs, LabelPairs)] = &[
    (
        r#"a == "b""#,
        &[&[("a", "b")], &[("a", "b"), ("c", "d")]],
        &[&[], &[("a", "c")], &[("c", "d")]],
    ),
    (
        r#"a == "b" && c == "d""#,
        &[&[("a", "b"), ("c", "d")]],
        &[
            &[],
            &[("a", "b"), ("c", "e")],
            &[("a", "c"), ("c", "d")],
            &[("c", "d")],
            &[("a", "b")],
        ],
    ),
    (
        r#"a == "b" || c == "d""#,
        &[&[("a", "b"), ("c", "d")], &[("a", "b")], &[("c", "d")]],
        &[&[], &[("a", "e"), ("c", "e")], &[("c", "e")], &[("a", "e")]],
    ),
    (
        r#"a in {"'", '"', "c"}"#,
        &[&[("a", "c")], &[("a", "\"")], &[("a", "'")]],
        &[&[], &[("a", "e")]],
    ),
    (
        r#"a not in {"'", '"', "c"}"#,
        &[&[], &[("a", "e")]],
        &[&[("a", "c")], &[("a", "\"")], &[("a", "'")]],
    ),
    ("a == 'a'", &[&[("a", "a")]], &[]),
    (r#"a == "a""#, &[&[("a", "a")]], &[]),
    (r#"a != "b""#, &[&[("a", "a")]], &[]),
    (r#"a != "a""#, &[&[]], &[]),
    (
        r#"a contains "a""#,
        &[&[("a", "a")], &[("a", "bab")], &[("a", "aaa"), ("b", "c")]],
        &[&[], &[("a", "b")], &[("b", "aaa")]],
    ),
    (
        r#"a starts with "a""#,
        &[&[("a", "a")], &[("a", "abb")], &[("a", "aaa"), ("b", "c")]],
        &[&[], &[("a", "b")], &[("a", "baa")], &[("b", "aaa")]],
    ),
    (
        r#"a ends with "a""#,
        &[&[("a", "a")], &[("a", "bba")], &[("a", "aaa"), ("b", "c")]],
        &[&[], &[("a", "b")], &[("a", "aab")], &[("b", "aaa")]],
    ),
    (r#"a in {"a"}"#, &[&[("a", "a")]], &[]),
    (r#"!a in {"a"}"#, &[&[("a", "b")]], &[]),
    (r#"a in {"a", "b"}"#, &[&[("a", "a")]], &[]),
    (r#"a in {"a", "b"}"#, &[&[("a", "b")]], &[]),
    (r#"a not in {"d", "e"}"#, &[&[("a", "a")]], &[]),
    ("has(a)", &[&[("a", "b")]], &[]),
    ("!has(a)", &[&[("b", "b")]], &[]),
    ("", &[&[]], &[]),
    (" ", &[&[]], &[]),
    ("", &[&[("a", "b")]], &[]),
    ("all()", &[&[]], &[]),
    (" all()", &[&[]], &[]),
    (" all()", &[&[("a", "b")]], &[]),
    ("global()", &[&[]], &[]),
    (" global()", &[&[]], &[]),
    (" global()", &[&[("a", "b")]], &[]),
    ("a == 'a'", &[], &[&[("a", "b")]]),
    ("a == 'a'", &[], &[&[]]),
    (r#"a != "a""#, &[], &[&[("a", "a")]]),
    ("a != 'a'", &[], &[&[("a", "a")]]),
    (r#"a in {"a"}"#, &[], &[&[("a", "b")]]),
    (r#"a not in {"a"}"#, &[], &[&[("a", "a")]]),
    (r#"a in {"a", "b"}"#, &[], &[&[("a", "c")]]),
    ("has(b)", &[], &[&[("a", "b")]]),
    ("!!has(b)", &[], &[&[("a", "b")]]),
    ("! has(a)", &[], &[&[("a", "b")]]),
    ("!has(a)", &[], &[&[("a", "b")]]),
    ("!!! has(a)", &[], &[&[("a", "b")]]),
    ("!!!has(a)", &[], &[&[("a", "b")]]),
    ("!! ! has(a)", &[], &[&[("a", "b")]]),
    ("! !!has(a)", &[], &[&[("a", "b")]]),
    // Boolean expressions.
    (
        "a == 'a1' && b == 'b1'",
        &[&[("a", "a1"), ("b", "b1")]],
        &[],
    ),
    (
        "a == 'a1' && b != 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    (
        "a != 'a1' && b == 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    (
        "a != 'a1' && b != 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    (
        "a != 'a1' && !b == 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    (
        "!a == 'a1' && b == 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    ("has(a) && !has(b)", &[&[("a", "a")]], &[]),
    ("!has(b) && has(a)", &[&[("a", "a")]], &[]),
    ("!(!has(a) || has(b))", &[&[("a", "a")]], &[]),
    ("!(has(b) || !has(a))", &[&[("a", "a")]], &[]),
    (
        "a == 'a1' || b == 'b1'",
        &[&[("a", "a1"), ("b", "b1")]],
        &[],
    ),
    (
        "a == 'a1' || b != 'b1'",
        &[&[("a", "a1"), ("b", "b1")]],
        &[],
    ),
    (
        "a != 'a1' || b == 'b1'",
        &[&[("a", "a1"), ("b", "b1")]],
        &[],
    ),
    (
        "a != 'a1' || b != 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    (
        "! a == 'a1' || ! b == 'b1'",
        &[],
        &[&[("a", "a1"), ("b", "b1")]],
    ),
    // Not in Calico's table; precedence and absent-label semantics spelled out.
    (
        "has(a) || has(b) && has(c)",
        &[&[("a", "")], &[("b", ""), ("c", "")]],
        &[&[("b", "")], &[]],
    ),
    (
        "!has(a) && has(b) || has(c)",
        &[&[("b", "")], &[("a", ""), ("c", "")]],
        &[&[("a", ""), ("b", "")], &[]],
    ),
    (
        "!(has(a) || has(b))",
        &[&[("c", "")]],
        &[&[("a", "")], &[("b", "")]],
    ),
    ("a not in {}", &[&[], &[("a", "")]], &[]),
    ("a in {}", &[], &[&[], &[("a", "")]]),
    ("a == ''", &[&[("a", "")]], &[&[]]),
    ("a contains ''", &[&[("a", "x")]], &[&[]]),
];

#[test]
fn calico_evaluation_table() {
    for (input, matches, non_matches) in EVALUATION_CASES {
        let selector = parsed(input);
        let reparsed = parsed(&selector.to_string());
        assert_eq!(reparsed, selector, "{input:?} round trip");
        for pairs in *matches {
            let labels = labels(pairs);
            assert!(
                selector.evaluate(&labels),
                "{input:?} should match {labels:?}"
            );
            assert!(
                reparsed.evaluate(&labels),
                "canonical {selector} should match {labels:?}"
            );
        }
        for pairs in *non_matches {
            let labels = labels(pairs);
            assert!(
                !selector.evaluate(&labels),
                "{input:?} should not match {labels:?}"
            );
            assert!(
                !reparsed.evaluate(&labels),
                "canonical {selector} should not match {labels:?}"
            );
        }
    }
}

/// Calico's `badSelectors`, plus tokenizer failures and edge cases.
const BAD_SELECTORS: &[&str] = &[
    "b == b",
    "b contains b",
    "b starts with b",
    "b ends with b",
    "'b1' == b",
    "b",
    "a b",
    "!",
    r#"foo == "bar" &"#,
    r#"foo == "bar" |"#,
    "foo != ||",
    r#"foo in {"", ||"#,
    r#"foo in """#,
    r#""FOO"#,
    r#""FOO'"#,
    "'FOO",
    "(",
    r#"(a == "foo""#,
    ")",
    "()",
    "%",
    r#"a == "b" && %"#,
    r#"a == "b" || %"#,
    "a ",
    "has(foo) &&",
    // tokenizer_test.go failures
    r#"label starts foo "value""#,
    r#"label ends foo "value""#,
    r#"label squiggles "value""#,
    // Edge cases of Calico's lexer and parser.
    "a==b",
    r#"a = "b""#,
    r#"a === "b""#,
    "has(a",
    "has()",
    "has( )",
    "has(a b)",
    "has (a)",
    "all(",
    "all (x)",
    "global(x)",
    r#"a == "b" c"#,
    r#"a == "b")"#,
    r#"a in {"x" "y"}"#,
    r#"a in {,}"#,
    r#"a in {"x",,}"#,
    r#"a in "x""#,
    r#"a inside {"x"}"#,
    r#"a containsx "v""#,
    r#"a starts withx "v""#,
    r#"a notin2 {"x"}"#,
    r#"a == "b" &&"#,
    r#"|| a == "b""#,
    r#"a == "b" && && b == "c""#,
    "!!",
    "\n",
    "has(a)\n",
    r#"a == "b"; b == "c""#,
    "café == 'x'",
    r#"a == "x" ,"#,
    "{}",
];

#[test]
fn calico_bad_selectors_are_rejected() {
    for input in BAD_SELECTORS {
        let result = parse(input);
        assert!(
            result.is_err(),
            "{input:?} should not parse, got {result:?}"
        );
        let error = result.unwrap_err();
        assert!(error.position <= input.len(), "{input:?}: {error}");
        assert!(!error.reason.is_empty());
    }
}

/// Calico's `canonicalisationTests` and `tokenizer_test.go` successes, with the canonical string.
const CANONICAL_FORMS: &[(&str, &str)] = &[
    ("", "all()"),
    (" all() ", "all()"),
    (" (all() )", "all()"),
    ("! (has( b)||! has(a ))", "!(has(b) || !has(a))"),
    (r#"! (a == "b"&&! c != "d")"#, r#"!(a == "b" && !c != "d")"#),
    (r#"a == "'""#, r#"a == "'""#),
    (r#"a == '"'"#, r#"a == '"'"#),
    (r#"a contains '"'"#, r#"a contains '"'"#),
    (r#"a contains "'""#, r#"a contains "'""#),
    (r#"a startswith '"'"#, r#"a starts with '"'"#),
    (r#"a endswith "'""#, r#"a ends with "'""#),
    (r#"a!='"'"#, r#"a != '"'"#),
    (r#"a in {"d"}"#, r#"a in {"d"}"#),
    (r#"a in {"a", "b"}"#, r#"a in {"a", "b"}"#),
    (r#"a in {"d", "a", "b"}"#, r#"a in {"a", "b", "d"}"#),
    (
        r#"a in {"z", "x", "y", "a"}"#,
        r#"a in {"a", "x", "y", "z"}"#,
    ),
    (
        r#"a in {"z", "z", "x", "y", "x", "a"}"#,
        r#"a in {"a", "x", "y", "z"}"#,
    ),
    // From tokenizer_test.go.
    (r#"a=="b""#, r#"a == "b""#),
    (r#"label == "value""#, r#"label == "value""#),
    (
        r#"contains contains "contains""#,
        r#"contains contains "contains""#,
    ),
    (
        "contains contains 'contains'",
        r#"contains contains "contains""#,
    ),
    (r#"label contains"value""#, r#"label contains "value""#),
    (
        r#"startswith starts with "value""#,
        r#"startswith starts with "value""#,
    ),
    (
        r#"endswith ends with "value""#,
        r#"endswith ends with "value""#,
    ),
    (
        r#"label starts  with "value""#,
        r#"label starts with "value""#,
    ),
    (r#"label ends	with "value""#, r#"label ends with "value""#),
    ("has(calico/k8s_NS-.1/role)", "has(calico/k8s_NS-.1/role)"),
    (
        r#"calico/k8s_ns == "kube-system" && k8s-app == "kube-dns""#,
        r#"(calico/k8s_ns == "kube-system" && k8s-app == "kube-dns")"#,
    ),
    (
        r#"a notin{"bar"}&&!has(foo)||b in{"c"}"#,
        r#"((a not in {"bar"} && !has(foo)) || b in {"c"})"#,
    ),
    (r#"a  not	in  {}  "#, "a not in {}"),
    (r#"a not in {"a","B"}"#, r#"a not in {"B", "a"}"#),
    ("global()", "global()"),
    ("\tglobal( \t)", "global()"),
    // Structure and precedence.
    (
        "a == 'x' || b == 'y' && c == 'z'",
        r#"(a == "x" || (b == "y" && c == "z"))"#,
    ),
    (
        "(a == 'x' || b == 'y') && c == 'z'",
        r#"((a == "x" || b == "y") && c == "z")"#,
    ),
    (
        "a == 'x' && b == 'y' && c == 'z'",
        r#"(a == "x" && b == "y" && c == "z")"#,
    ),
    (
        "(a == 'x' && b == 'y') && c == 'z'",
        r#"((a == "x" && b == "y") && c == "z")"#,
    ),
    ("!(a == 'x')", r#"!a == "x""#),
    ("!!(a == 'x')", r#"a == "x""#),
    ("!(!has(a))", "has(a)"),
    ("!(!has(a) && has(b))", "!(!has(a) && has(b))"),
    ("!all()", "!all()"),
    (r#"a in {"x",}"#, r#"a in {"x"}"#),
    ("a == 'héllo wörld'", r#"a == "héllo wörld""#),
    ("a == '&& || ! ( )'", r#"a == "&& || ! ( )""#),
    ("has(has)", "has(has)"),
    ("in in {'in'}", r#"in in {"in"}"#),
    ("not not in {'not'}", r#"not not in {"not"}"#),
    ("all == 'x'", r#"all == "x""#),
];

#[test]
fn calico_canonical_forms() {
    for (input, expected) in CANONICAL_FORMS {
        let selector = parsed(input);
        let canonical = selector.to_string();
        assert_eq!(&canonical, expected, "canonical form of {input:?}");
        let round_tripped = parsed(&canonical);
        assert_eq!(round_tripped.to_string(), canonical);
        assert_eq!(round_tripped, selector);
    }
}

/// Calico's `Visitor` table for `PrefixVisitor{Prefix: "visited/"}`.
#[test]
fn calico_prefix_visitor_table() {
    let cases = [
        ("k == 'v'", r#"visited/k == "v""#),
        ("k != 'v'", r#"visited/k != "v""#),
        ("k contains 'v'", r#"visited/k contains "v""#),
        ("k starts with 'v'", r#"visited/k starts with "v""#),
        ("k ends with 'v'", r#"visited/k ends with "v""#),
        (
            "k == 'v' && x == 'y'",
            r#"(visited/k == "v" && visited/x == "y")"#,
        ),
        (
            "k == 'v' || has(x)",
            r#"(visited/k == "v" || has(visited/x))"#,
        ),
        ("!(k == 'v')", r#"!visited/k == "v""#),
        ("k in {'v'}", r#"visited/k in {"v"}"#),
        ("k not in {'v'}", r#"visited/k not in {"v"}"#),
        (
            "!(!(k == 'v' && has(t) || all()) && (a in {'b', 'c'}))",
            r#"!(!((visited/k == "v" && has(visited/t)) || all()) && visited/a in {"b", "c"})"#,
        ),
        ("global()", "global()"),
    ];
    for (input, expected) in cases {
        assert_eq!(
            parsed(input).prefix_keys("visited/").to_string(),
            expected,
            "{input:?}"
        );
    }
}

#[test]
fn namespace_scope_follows_calicos_rule_conversion() {
    let cases = [
        ("all()", "has(projectcalico.org/namespace)"),
        ("", "has(projectcalico.org/namespace)"),
        ("global()", "!has(projectcalico.org/namespace)"),
        ("!global()", "has(projectcalico.org/namespace)"),
        ("name == 'dev'", r#"pcns.name == "dev""#),
        (
            "has(a) || global()",
            "(has(pcns.a) || !has(projectcalico.org/namespace))",
        ),
        // Calico rewrites the printed string, values included.
        (
            "a == 'all()'",
            r#"pcns.a == "has(projectcalico.org/namespace)""#,
        ),
    ];
    for (input, expected) in cases {
        let scoped = parsed(input).to_namespace_scope("pcns.", "projectcalico.org/namespace");
        assert_eq!(scoped.to_string(), expected, "{input:?}");
    }
    assert!(parsed(" ( global() ) ").is_global());
    assert!(!parsed("global() && all()").is_global());
    assert!(parsed("").is_all());
}

#[test]
fn error_positions_and_reasons() {
    let cases: &[(&str, usize, &str)] = &[
        ("a==b", 3, "quoted string"),
        ("a & b", 2, "'&&'"),
        ("a == 'x' | b", 9, "'||'"),
        ("a = 'x'", 2, "'=='"),
        ("%", 0, "unexpected character '%'"),
        ("a == 'x' && é", 12, "unexpected character 'é'"),
        ("a == \"x", 5, "unterminated string"),
        ("(a == 'x'", 9, "')'"),
        ("a == 'x')", 8, "unexpected ')'"),
        ("a squiggles 'x'", 2, "after label 'a'"),
        ("b", 1, "after label 'b'"),
        ("a in 'x'", 5, "'{'"),
        ("a in {'x' 'y'}", 10, "'}'"),
        ("has(a", 5, "')'"),
        ("has()", 4, "label key"),
    ];
    for (input, position, reason) in cases {
        let error = parse(input).expect_err(input);
        assert_eq!(error.position, *position, "{input:?}: {error}");
        assert!(error.reason.contains(reason), "{input:?}: {error}");
    }
}

#[test]
fn label_key_length_limit_is_512() {
    let longest = "k".repeat(MAX_LABEL_KEY_LEN);
    assert!(parse(&format!("{longest} == 'v'")).is_ok());
    assert!(parse(&format!("has({longest})")).is_ok());
    let too_long = "k".repeat(MAX_LABEL_KEY_LEN + 1);
    assert!(parse(&format!("{too_long} == 'v'")).is_err());
    assert!(parse(&format!("has({too_long})")).is_err());
    assert!(is_valid_label_key(&longest));
    assert!(!is_valid_label_key(&too_long));
    assert!(!is_valid_label_key(""));
    assert!(!is_valid_label_key("a b"));
}

#[test]
fn nesting_is_limited_not_a_stack_overflow() {
    let nested = |depth: usize| format!("{}has(a){}", "(".repeat(depth), ")".repeat(depth));
    assert_eq!(parsed(&nested(MAX_NESTING)), Selector::has("a"));
    let error = parse(&nested(MAX_NESTING + 1)).unwrap_err();
    assert!(error.reason.contains("nested"), "{error}");
    assert!(parse(&"(".repeat(100_000)).is_err());
}

#[test]
fn constructors_match_parsed_forms() {
    assert_eq!(Selector::has("a"), parsed("has(a)"));
    assert_eq!(Selector::equals("a", "b"), parsed("a == 'b'"));
    assert_eq!(Selector::not_equals("a", "b"), parsed("a != 'b'"));
    assert_eq!(
        Selector::in_set("a", ["y", "x", "y"]),
        parsed("a in {'x', 'y'}")
    );
    assert_eq!(Selector::not_in_set("a", ["x"]), parsed("a not in {'x'}"));
    assert_eq!(Selector::has("a").not(), parsed("!has(a)"));
    assert_eq!(Selector::has("a").not().not(), Selector::has("a"));
    assert_eq!(Selector::global(), parsed("global()"));
    assert_eq!(
        Selector::has("a").and(Selector::has("b").or(Selector::has("c"))),
        parsed("(has(a)) && (has(b) || has(c))")
    );
    assert_eq!(
        parsed("has(a) && has(b)").and(Selector::all()).to_string(),
        "((has(a) && has(b)) && all())"
    );
    assert_eq!("has(a)".parse::<Selector>(), Ok(Selector::has("a")));
    assert_eq!(Selector::all(), parsed("  "));
}

// ---- property tests ----

const KEYS: &[&str] = &["a", "b", "c", "k8s-app", "x.io/role"];
const VALUES: &[&str] = &["", "a", "b", "ab", "ba", "x y", "it's", "say \"hi\""];

fn key() -> impl Strategy<Value = String> {
    proptest::sample::select(KEYS).prop_map(str::to_owned)
}

fn value() -> impl Strategy<Value = String> {
    proptest::sample::select(VALUES).prop_map(str::to_owned)
}

fn leaf() -> impl Strategy<Value = Node> {
    let values = || proptest::collection::vec(value(), 0..4).prop_map(ast::normalise_set);
    prop_oneof![
        Just(Node::All),
        Just(Node::Global),
        key().prop_map(Node::Has),
        (key(), value()).prop_map(|(k, v)| Node::Equals(k, v)),
        (key(), value()).prop_map(|(k, v)| Node::NotEquals(k, v)),
        (key(), value()).prop_map(|(k, v)| Node::Contains(k, v)),
        (key(), value()).prop_map(|(k, v)| Node::StartsWith(k, v)),
        (key(), value()).prop_map(|(k, v)| Node::EndsWith(k, v)),
        (key(), values()).prop_map(|(k, v)| Node::In(k, v)),
        (key(), values()).prop_map(|(k, v)| Node::NotIn(k, v)),
    ]
}

/// Trees of the shapes the parser produces (no `!!`, And/Or with 2+ operands).
fn node() -> impl Strategy<Value = Node> {
    leaf().prop_recursive(5, 40, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(parser::negate),
            proptest::collection::vec(inner.clone(), 2..4).prop_map(Node::And),
            proptest::collection::vec(inner, 2..4).prop_map(Node::Or),
        ]
    })
}

fn label_set() -> impl Strategy<Value = Labels> {
    proptest::collection::btree_map(key(), value(), 0..5)
}

/// A direct statement of the semantics, to check evaluation against.
fn reference_evaluate(node: &Node, labels: &Labels) -> bool {
    let get = |k: &String| labels.get(k).cloned();
    match node {
        Node::All | Node::Global => true,
        Node::Has(k) => get(k).is_some(),
        Node::Equals(k, v) => get(k).as_ref() == Some(v),
        Node::NotEquals(k, v) => get(k).as_ref() != Some(v),
        Node::Contains(k, v) => get(k).is_some_and(|l| l.contains(v.as_str())),
        Node::StartsWith(k, v) => get(k).is_some_and(|l| l.starts_with(v.as_str())),
        Node::EndsWith(k, v) => get(k).is_some_and(|l| l.ends_with(v.as_str())),
        Node::In(k, vs) => get(k).is_some_and(|l| vs.contains(&l)),
        Node::NotIn(k, vs) => get(k).is_none_or(|l| !vs.contains(&l)),
        Node::Not(n) => !reference_evaluate(n, labels),
        Node::And(ns) => ns.iter().all(|n| reference_evaluate(n, labels)),
        Node::Or(ns) => ns.iter().any(|n| reference_evaluate(n, labels)),
    }
}

proptest! {
    #[test]
    fn canonical_print_reparses_to_the_same_selector(root in node(), label_sets in proptest::collection::vec(label_set(), 1..6)) {
        let selector = Selector { root };
        let printed = selector.to_string();
        let reparsed = parse(&printed).map_err(|e| TestCaseError::fail(format!("{printed:?}: {e}")))?;
        prop_assert_eq!(&reparsed, &selector, "printed as {}", printed);
        prop_assert_eq!(reparsed.to_string(), printed);
        for labels in &label_sets {
            prop_assert_eq!(reparsed.evaluate(labels), selector.evaluate(labels));
            prop_assert_eq!(selector.evaluate(labels), reference_evaluate(&selector.root, labels));
        }
    }

    #[test]
    fn prefixed_selector_over_prefixed_labels_agrees(root in node(), labels in label_set(), noise in label_set()) {
        let selector = Selector { root };
        let prefixed_selector = selector.prefix_keys("pcns.");
        // Unprefixed labels alongside must be ignored by the prefixed selector.
        let mut prefixed_labels: Labels = noise;
        prefixed_labels.extend(labels.iter().map(|(k, v)| (format!("pcns.{k}"), v.clone())));
        prop_assert_eq!(prefixed_selector.evaluate(&prefixed_labels), selector.evaluate(&labels));
        let reparsed = parse(&prefixed_selector.to_string()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(reparsed, prefixed_selector);
    }

    #[test]
    fn boolean_constructors_are_boolean(a in node(), b in node(), labels in label_set()) {
        let (a, b) = (Selector { root: a }, Selector { root: b });
        let (va, vb) = (a.evaluate(&labels), b.evaluate(&labels));
        prop_assert_eq!(a.clone().not().evaluate(&labels), !va);
        prop_assert_eq!(a.clone().and(b.clone()).evaluate(&labels), va && vb);
        prop_assert_eq!(a.clone().or(b.clone()).evaluate(&labels), va || vb);
        let combined = a.and(b.not());
        prop_assert_eq!(parse(&combined.to_string()).ok(), Some(combined));
    }

    #[test]
    fn arbitrary_input_never_panics(input in "[ a-z()!&|=\"'{},.\t-]{0,40}") {
        if let Err(error) = parse(&input) {
            prop_assert!(error.position <= input.len());
        }
    }
}

use super::*;

#[test]
fn split_keeps_line_numbers() {
    let text = "a: 1\n---\n# c\nb: 2\n--- \n...\nc: [1]\n";
    let chunks = split_documents(text);
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[1].first_line, 3);
    let node = parse_chunk(&chunks[1]).unwrap().unwrap();
    assert_eq!(node.line_index()["b"], 4);
    let node = parse_chunk(&chunks[2]).unwrap().unwrap();
    assert_eq!(node.line_index()["c[0]"], 7);
}

#[test]
fn content_on_the_separator_line_is_kept() {
    let chunks = split_documents("a: 1\n--- {b: 2}\n--- # comment\nc: 3\n");
    assert_eq!(chunks.len(), 3);
    let b = parse_chunk(&chunks[1]).unwrap().unwrap();
    assert_eq!(b.line_index()["b"], 2);
    let c = parse_chunk(&chunks[2]).unwrap().unwrap();
    assert_eq!(c.line_index()["c"], 4);
}

#[test]
fn scalars_resolve_like_yaml_1_2_and_nulls_are_absent() {
    let c = &split_documents("a: 8080\nb: '8080'\nc: true\nd: 1.5\ne: ~\nf: x:y\n")[0];
    let j = parse_chunk(c).unwrap().unwrap().to_json();
    assert_eq!(
        j,
        serde_json::json!({"a": 8080, "b": "8080", "c": true, "d": 1.5, "f": "x:y"})
    );
}

#[test]
fn syntax_error_reports_file_line() {
    let chunks = split_documents("a: 1\n---\nb: [1\nc: 2\n");
    assert!(parse_chunk(&chunks[0]).is_ok());
    let err = parse_chunk(&chunks[1]).unwrap_err();
    assert!(err.line >= 3, "{err:?}");
}

#[test]
fn duplicate_keys_are_errors() {
    let c = &split_documents("a: 1\nb: 2\na: 3\n")[0];
    let err = parse_chunk(c).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(err.message.contains("duplicate key `a`"));
}

#[test]
fn line_of_falls_back_to_ancestor() {
    let c = &split_documents("x: 0\nspec:\n  ingress:\n    - action: Allow\n")[0];
    let idx = parse_chunk(c).unwrap().unwrap().line_index();
    assert_eq!(line_of(&idx, "spec.ingress[0].source.selector"), 4);
    assert_eq!(line_of(&idx, "spec.ingress[0].action"), 4);
    assert_eq!(line_of(&idx, "spec"), 2);
}

fn parse_text(text: &str) -> Result<Option<Node>, SyntaxError> {
    parse_chunk(&split_documents(text)[0])
}

/// Runs `f` on a thread with a 256 KiB stack: far less than the 2 MiB of
/// the daemon's blocking threads, so a parse that recursed per level would
/// overflow here long before its input got near the bounds.
fn small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for (what, text, line) in [
        (
            "block",
            format!("a: 1\nspec:\n{}x\n", "- ".repeat(20_000)),
            3,
        ),
        (
            "flow",
            format!("a: 1\nspec: {}{}\n", "[".repeat(20_000), "]".repeat(20_000)),
            2,
        ),
        (
            "mapping",
            format!(
                "a: 1\nb: {}x: 1{}\n",
                "{b: ".repeat(5_000),
                "}".repeat(5_000)
            ),
            2,
        ),
    ] {
        let err = small_stack(move || parse_text(&text)).unwrap_err();
        assert_eq!(err.line, line, "{what}: {err:?}");
        assert!(
            err.message.contains("nest more than 64 levels"),
            "{what}: {err:?}"
        );
    }
    // At the bound itself, it parses.
    let ok = format!("{}x\n", "- ".repeat(MAX_DEPTH));
    assert!(parse_text(&ok).unwrap().is_some());
    let over = format!("{}x\n", "- ".repeat(MAX_DEPTH + 1));
    assert!(parse_text(&over).is_err());
}

#[test]
fn alias_bomb_is_an_error_not_gigabytes() {
    let mut text = String::from("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for (prev, name) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        let items = vec![format!("*{prev}"); 9].join(", ");
        text.push_str(&format!("{name}: &{name} [{items}]\n"));
    }
    let started = std::time::Instant::now();
    let err = small_stack(move || parse_text(&text)).unwrap_err();
    assert!(
        err.message.contains("copy more than 100000 nodes"),
        "{err:?}"
    );
    // The line where the budget ran out: `e`, whose 9 aliases copy 66,429
    // nodes (on top of the copies before).
    assert_eq!(err.line, 5, "{err:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Ordinary aliases still work.
    let j = parse_text("x: &p [80, 443]\ny: *p\n")
        .unwrap()
        .unwrap()
        .to_json();
    assert_eq!(j, serde_json::json!({"x": [80, 443], "y": [80, 443]}));
}

#[test]
fn aliases_cannot_nest_deeper_than_the_bound() {
    // Each anchor is 40 levels deep; using one inside another would be 80.
    let text = format!(
        "a: &a {}x{}\nb: &b {}*a{}\n",
        "[".repeat(40),
        "]".repeat(40),
        "[".repeat(40),
        "]".repeat(40)
    );
    let err = parse_text(&text).unwrap_err();
    assert_eq!(err.line, 2, "{err:?}");
    assert!(err.message.contains("nest more than 64 levels"), "{err:?}");
}

#[test]
fn non_finite_numbers_are_errors() {
    for v in ["1e400", ".nan", ".inf", "-.Inf", ".NaN"] {
        let err = parse_text(&format!("a: 1\nports: [{v}]\n")).unwrap_err();
        assert_eq!(err.line, 2, "{v}: {err:?}");
        assert!(err.message.contains("not a finite number"), "{v}: {err:?}");
        let err = parse_text(&format!("a: 1\nport: {v}\n")).unwrap_err();
        assert_eq!(err.line, 2, "{v}: {err:?}");
    }
    // Quoted, they are strings; finite floats stay numbers.
    let j = parse_text("a: '.inf'\nb: 1.5e3\n")
        .unwrap()
        .unwrap()
        .to_json();
    assert_eq!(j, serde_json::json!({"a": ".inf", "b": 1500.0}));
}

#[test]
fn a_lone_carriage_return_ends_a_line_as_in_yaml() {
    let text = "a: 1\rb: 2\r\nc: [\n";
    assert_eq!(
        lines(text).collect::<Vec<_>>(),
        ["a: 1\r", "b: 2\r\n", "c: [\n"]
    );
    let text = "a: 1\r---\rb: 2\rc: [\n";
    let chunks = split_documents(text);
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[1].first_line, 3);
    let err = parse_chunk(&chunks[1]).unwrap_err();
    assert!(err.line <= 5, "{err:?}");
    assert_eq!(lines("").count(), 0);
    assert_eq!(lines("x").collect::<Vec<_>>(), ["x"]);
}

#[test]
fn split_stops_at_the_document_bound() {
    let (chunks, over) = split_documents_bounded("a: 1\n---\nb: 2\n---\nc: 3\n", 2);
    assert_eq!(chunks.len(), 2);
    assert_eq!(over, Some(5));
    let (chunks, over) = split_documents_bounded("a: 1\n---\nb: 2\n", 2);
    assert_eq!((chunks.len(), over), (2, None));
}

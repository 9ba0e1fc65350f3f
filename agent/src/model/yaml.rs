//! YAML with line numbers: documents are split on `---` lines and parsed one
//! by one (so a syntax error costs only its own document), into a tree that
//! remembers the line of every field, then handed to serde as JSON.
use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// One `---`-separated document of a file, as text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// 1-based line of the chunk's first line in the file.
    pub first_line: usize,
    /// 0-based index of the first line, and one past the last line (file line indices).
    pub line_range: std::ops::Range<usize>,
    pub text: String,
}

/// Splits a file into documents at lines that are `---` (optionally followed by
/// a space and content) or `...`. The separator line belongs to no chunk unless
/// it carries content after `--- `.
pub fn split_documents(text: &str) -> Vec<Chunk> {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut chunks = Vec::new();
    let mut start = 0;
    let flush = |from: usize, to: usize, chunks: &mut Vec<Chunk>| {
        if from < to {
            chunks.push(Chunk {
                first_line: from + 1,
                line_range: from..to,
                text: lines[from..to].concat(),
            });
        }
    };
    for (i, line) in lines.iter().enumerate() {
        let l = line.trim_end_matches(['\n', '\r']);
        if l == "---" || l.starts_with("--- ") || l.starts_with("---\t") || l == "..." {
            flush(start, i, &mut chunks);
            // `--- {a: 1}` starts a document on the separator line itself.
            let rest = l.get(3..).unwrap_or("").trim();
            let has_content = l != "..." && !rest.is_empty() && !rest.starts_with('#');
            start = if has_content { i } else { i + 1 };
        }
    }
    flush(start, lines.len(), &mut chunks);
    chunks
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Seq(Vec<Node>),
    /// Entries in document order, with the line of each key.
    Map(Vec<(String, usize, Node)>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// 1-based line in the file.
    pub line: usize,
    pub value: Value,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SyntaxError {
    pub line: usize,
    pub message: String,
}

/// Parses one chunk. `Ok(None)` when it holds no document (only comments or blank lines).
pub fn parse_chunk(chunk: &Chunk) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder {
        line_offset: chunk.first_line - 1,
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        error: None,
    };
    let mut parser = Parser::new_from_str(&chunk.text);
    parser.load(&mut builder, true).map_err(|e| SyntaxError {
        line: e.marker().line() + chunk.first_line - 1,
        message: format!("YAML syntax error: {}", e.info()),
    })?;
    if let Some(e) = builder.error {
        return Err(e);
    }
    match builder.docs.len() {
        0 => Ok(None),
        1 => Ok(builder.docs.pop()),
        _ => Err(SyntaxError {
            line: chunk.first_line,
            message: "more than one YAML document without a `---` separator line".into(),
        }),
    }
}

enum Open {
    Seq(usize, usize, Vec<Node>),
    /// anchor, line, entries, pending key
    Map(
        usize,
        usize,
        Vec<(String, usize, Node)>,
        Option<(String, usize)>,
    ),
}

struct Builder {
    line_offset: usize,
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    docs: Vec<Node>,
    error: Option<SyntaxError>,
}

impl Builder {
    fn push_node(&mut self, node: Node, anchor: usize) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Open::Seq(_, _, items)) => items.push(node),
            Some(Open::Map(_, _, entries, pending)) => match pending.take() {
                None => {
                    let key = match &node.value {
                        Value::Str(s) => s.clone(),
                        Value::Int(i) => i.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Float(f) => f.to_string(),
                        Value::Null => String::new(),
                        _ => {
                            self.error.get_or_insert(SyntaxError {
                                line: node.line,
                                message: "mapping keys must be scalars".into(),
                            });
                            String::new()
                        }
                    };
                    if entries.iter().any(|(k, _, _)| *k == key) {
                        self.error.get_or_insert(SyntaxError {
                            line: node.line,
                            message: format!("duplicate key `{key}`"),
                        });
                    }
                    *pending = Some((key, node.line));
                }
                Some((key, line)) => entries.push((key, line, node)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line() + self.line_offset;
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    resolve_plain(&text)
                } else {
                    Value::Str(text)
                };
                self.push_node(Node { line, value }, anchor);
            }
            Event::Alias(id) => {
                let node = self.anchors.get(&id).cloned().unwrap_or(Node {
                    line,
                    value: Value::Null,
                });
                self.push_node(Node { line, ..node }, 0);
            }
            Event::SequenceStart(anchor, _) => self.stack.push(Open::Seq(anchor, line, Vec::new())),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Open::Map(anchor, line, Vec::new(), None))
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (anchor, node) = match self.stack.pop() {
                    Some(Open::Seq(a, line, items)) => (
                        a,
                        Node {
                            line,
                            value: Value::Seq(items),
                        },
                    ),
                    Some(Open::Map(a, line, entries, _)) => (
                        a,
                        Node {
                            line,
                            value: Value::Map(entries),
                        },
                    ),
                    None => return,
                };
                self.push_node(node, anchor);
            }
            _ => {}
        }
    }
}

/// YAML 1.2 core schema for plain scalars (what serde_yaml and kubectl accept).
fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::Float(f64::INFINITY)
        }
        "-.inf" | "-.Inf" | "-.INF" => return Value::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Value::Float(f64::NAN),
        _ => {}
    }
    if let Ok(i) = s.parse::<i64>() {
        return Value::Int(i);
    }
    if let Some(hex) = s.strip_prefix("0x") {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return Value::Int(i);
        }
    }
    if let Some(oct) = s.strip_prefix("0o") {
        if let Ok(i) = i64::from_str_radix(oct, 8) {
            return Value::Int(i);
        }
    }
    let looks_numeric = s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
        && s.chars().any(|c| c.is_ascii_digit());
    if looks_numeric {
        if let Ok(f) = s.parse::<f64>() {
            return Value::Float(f);
        }
    }
    Value::Str(s.to_string())
}

impl Node {
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match &self.value {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(J::Number)
                .unwrap_or_else(|| J::String(f.to_string())),
            Value::Str(s) => J::String(s.clone()),
            Value::Seq(items) => J::Array(items.iter().map(Node::to_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .iter()
                    // Like Kubernetes, a null field is an absent field.
                    .filter(|(_, _, v)| v.value != Value::Null)
                    .map(|(k, _, v)| (k.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Line of every field path (`spec.ingress[0].source.selector`): the key's
    /// line for mapping entries, the item's line for sequence items.
    pub fn line_index(&self) -> HashMap<String, usize> {
        let mut index = HashMap::new();
        index.insert(String::new(), self.line);
        self.index_into(String::new(), &mut index);
        index
    }

    fn index_into(&self, path: String, index: &mut HashMap<String, usize>) {
        match &self.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    index.insert(p.clone(), item.line);
                    item.index_into(p, index);
                }
            }
            Value::Map(entries) => {
                for (k, line, v) in entries {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    index.insert(p.clone(), *line);
                    v.index_into(p, index);
                }
            }
            _ => {}
        }
    }

    /// The value at a top-level-relative dotted path of mapping keys.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|(_, _, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// The line of `path`, or of its nearest ancestor that has one.
pub fn line_of(index: &HashMap<String, usize>, path: &str) -> usize {
    let mut p = path.to_string();
    loop {
        if let Some(l) = index.get(&p) {
            return *l;
        }
        match p.rfind(['.', '[']) {
            Some(i) => p.truncate(i),
            None => return index.get("").copied().unwrap_or(1),
        }
    }
}

#[cfg(test)]
mod tests {
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
}

//! YAML with line numbers: documents are split on `---` lines and parsed one
//! by one (so a syntax error costs only its own document), into a tree that
//! remembers the line of every field, then handed to serde as JSON.
use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
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
    split_documents_bounded(text, usize::MAX).0
}

/// The lines of `text`, each with its line break, as YAML counts them: a line
/// ends at `\n`, `\r\n` or a lone `\r` (so that the lines of diagnostics,
/// which come from the YAML parser, and of the split match).
pub fn lines(text: &str) -> impl Iterator<Item = &str> {
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    std::iter::from_fn(move || {
        while i < bytes.len() {
            let c = bytes[i];
            i += 1;
            if c == b'\n' || (c == b'\r' && bytes.get(i) != Some(&b'\n')) {
                let line = &text[start..i];
                start = i;
                return Some(line);
            }
        }
        (start < bytes.len()).then(|| {
            let line = &text[start..];
            start = bytes.len();
            line
        })
    })
}

/// [`split_documents`], keeping at most `max` chunks; with the 1-based line of
/// the first chunk left out, if any.
pub fn split_documents_bounded(text: &str, max: usize) -> (Vec<Chunk>, Option<usize>) {
    let mut chunks = Vec::new();
    let mut over = None;
    // (line index, byte offset) where the current chunk starts.
    let mut start = (0, 0);
    let mut flush = |from: (usize, usize), to: (usize, usize), chunks: &mut Vec<Chunk>| {
        if from.0 < to.0 {
            if chunks.len() >= max {
                over.get_or_insert(from.0 + 1);
                return;
            }
            chunks.push(Chunk {
                first_line: from.0 + 1,
                line_range: from.0..to.0,
                text: text[from.1..to.1].to_string(),
            });
        }
    };
    let (mut i, mut offset) = (0, 0);
    for line in lines(text) {
        let l = line.trim_end_matches(['\n', '\r']);
        if l == "---" || l.starts_with("--- ") || l.starts_with("---\t") || l == "..." {
            flush(start, (i, offset), &mut chunks);
            // `--- {a: 1}` starts a document on the separator line itself.
            let rest = l.get(3..).unwrap_or("").trim();
            let has_content = l != "..." && !rest.is_empty() && !rest.starts_with('#');
            start = if has_content {
                (i, offset)
            } else {
                (i + 1, offset + line.len())
            };
        }
        i += 1;
        offset += line.len();
    }
    flush(start, (i, offset), &mut chunks);
    (chunks, over)
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

/// Every document of `text`, parsed, empty ones left out; the first syntax
/// error stops it. For text read whole (a config file, a manifest), where one
/// bad document is a bad file.
pub fn parse_all(text: &str) -> Result<Vec<Node>, SyntaxError> {
    split_documents(text)
        .iter()
        .filter_map(|chunk| parse_chunk(chunk).transpose())
        .collect()
}

/// At most this many nested sequences and mappings in a document. A Calico
/// resource needs fewer than 10; the bound keeps every walk over the tree
/// (conversion, serde, drop) far from the end of the stack.
pub const MAX_DEPTH: usize = 64;
/// At most this many nodes copied by anchors and aliases in one document: an
/// alias is a copy of its anchor's whole subtree, so a few hundred bytes of
/// nested aliases ("billion laughs") could otherwise expand to gigabytes.
pub const MAX_ALIAS_NODES: usize = 100_000;
/// At most this many nodes in one document, aliases included (a GlobalNetworkSet
/// of 100,000 nets is ~100,000 nodes).
pub const MAX_NODES: usize = 2_000_000;

/// Parses one chunk. `Ok(None)` when it holds no document (only comments or blank lines).
///
/// Bounded: nesting deeper than [`MAX_DEPTH`], aliases copying more than
/// [`MAX_ALIAS_NODES`] nodes or more than [`MAX_NODES`] nodes in all stop the
/// parse with an error at the line where the bound was crossed. The events are
/// pulled one at a time (yaml-rust2's own `Parser::load` recurses once per
/// level, and would overflow the stack on deep input before any check).
pub fn parse_chunk(chunk: &Chunk) -> Result<Option<Node>, SyntaxError> {
    let mut builder = Builder {
        line_offset: chunk.first_line - 1,
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        error: None,
        fatal: None,
        copied: 0,
        nodes: 0,
    };
    let mut parser = Parser::new_from_str(&chunk.text);
    loop {
        let (ev, mark) = parser.next_token().map_err(|e| SyntaxError {
            line: e.marker().line() + chunk.first_line - 1,
            // yaml-rust2's scanner has a bound of its own on flow nesting (it
            // looks ahead), hit before ours: the same error in the same words.
            message: if e.info() == "recursion limit exceeded" {
                depth_message()
            } else {
                format!("YAML syntax error: {}", e.info())
            },
        })?;
        match ev {
            Event::StreamEnd => break,
            // Anchors are per document.
            Event::DocumentStart => builder.anchors.clear(),
            _ => builder.on_event(ev, mark),
        }
        if let Some(e) = builder.fatal.take() {
            return Err(e);
        }
    }
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

fn depth_message() -> String {
    format!(
        "sequences and mappings nest more than {MAX_DEPTH} levels deep (a resource needs \
         fewer than 10); fix the indentation or flatten the document"
    )
}

enum Items {
    Seq(Vec<Node>),
    /// Entries, and the pending key (with its line) waiting for its value.
    Map(Vec<(String, usize, Node)>, Option<(String, usize)>),
}

/// A sequence or mapping being built.
struct Open {
    anchor: usize,
    line: usize,
    items: Items,
    /// Nodes in this subtree so far (itself included).
    size: usize,
    /// Levels of collections inside it so far (0: only scalars).
    height: usize,
}

/// A finished anchored node, with its size and height (see [`Open`]).
struct Anchored {
    node: Node,
    size: usize,
    height: usize,
}

struct Builder {
    line_offset: usize,
    stack: Vec<Open>,
    anchors: HashMap<usize, Anchored>,
    docs: Vec<Node>,
    /// The first error of the document; parsing goes on (a later syntax error wins).
    error: Option<SyntaxError>,
    /// A bound was crossed: parsing stops at once.
    fatal: Option<SyntaxError>,
    /// Nodes copied by anchors and aliases.
    copied: usize,
    /// Nodes in the document, copies included.
    nodes: usize,
}

impl Builder {
    /// `size`/`height`: the node's, as in [`Open`] (1 and 0 for a scalar).
    fn push_node(&mut self, node: Node, anchor: usize, size: usize, height: usize) {
        if anchor > 0 {
            if !self.copy(size, node.line) {
                return;
            }
            let kept = Anchored {
                node: node.clone(),
                size,
                height,
            };
            self.anchors.insert(anchor, kept);
        }
        if let Some(open) = self.stack.last_mut() {
            open.size += size;
            open.height = open.height.max(height);
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Open {
                items: Items::Seq(items),
                ..
            }) => items.push(node),
            Some(Open {
                items: Items::Map(entries, pending),
                ..
            }) => match pending.take() {
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

    /// Like Calico (whose YAML becomes JSON), a value must be a finite number:
    /// `.inf`, `.nan` or `1e400` would otherwise become the strings `inf`/`NaN`
    /// (e.g. a named port that never matches).
    fn check_finite(&mut self, value: &Value, text: &str, line: usize) {
        let is_key = matches!(
            self.stack.last(),
            Some(Open {
                items: Items::Map(_, None),
                ..
            })
        );
        if matches!(value, Value::Float(f) if !f.is_finite()) && !is_key {
            self.error.get_or_insert(SyntaxError {
                line,
                message: format!(
                    "`{text}` is not a finite number (`.inf`, `.nan` and numbers beyond ~1.8e308 \
                     cannot be represented); write a number, or quote it if a string is meant"
                ),
            });
        }
    }

    /// Counts `size` copied nodes; false (and a fatal error) past the bound.
    fn copy(&mut self, size: usize, line: usize) -> bool {
        self.copied = self.copied.saturating_add(size);
        if self.copied > MAX_ALIAS_NODES {
            self.fatal.get_or_insert(SyntaxError {
                line,
                message: format!(
                    "anchors and aliases copy more than {MAX_ALIAS_NODES} nodes (each alias is \
                     a full copy of its anchor; nested aliases multiply); write the repeated \
                     parts out or use fewer, smaller aliases"
                ),
            });
            return false;
        }
        true
    }

    /// Counts `size` more nodes in the document; false (and a fatal error) past the bound.
    fn count(&mut self, size: usize, line: usize) -> bool {
        self.nodes = self.nodes.saturating_add(size);
        if self.nodes > MAX_NODES {
            self.fatal.get_or_insert(SyntaxError {
                line,
                message: format!(
                    "the document has more than {MAX_NODES} values; split it into several documents"
                ),
            });
            return false;
        }
        true
    }

    /// False (and a fatal error) when `height` more levels at the current depth
    /// would nest deeper than [`MAX_DEPTH`].
    fn check_depth(&mut self, height: usize, line: usize) -> bool {
        if self.stack.len() + height > MAX_DEPTH {
            self.fatal.get_or_insert(SyntaxError {
                line,
                message: depth_message(),
            });
            return false;
        }
        true
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line() + self.line_offset;
        match ev {
            Event::Scalar(text, style, anchor, _tag) => {
                let value = if style == TScalarStyle::Plain {
                    let value = resolve_plain(&text);
                    self.check_finite(&value, &text, line);
                    value
                } else {
                    Value::Str(text)
                };
                if self.count(1, line) {
                    self.push_node(Node { line, value }, anchor, 1, 0);
                }
            }
            Event::Alias(id) => {
                let Some((size, height)) = self.anchors.get(&id).map(|a| (a.size, a.height)) else {
                    return self.push_node(
                        Node {
                            line,
                            value: Value::Null,
                        },
                        0,
                        1,
                        0,
                    );
                };
                if !self.check_depth(height, line) || !self.copy(size, line) {
                    return;
                }
                let Some(anchored) = self.anchors.get(&id) else {
                    return;
                };
                let node = Node {
                    line,
                    ..anchored.node.clone()
                };
                if self.count(size, line) {
                    self.push_node(node, 0, size, height);
                }
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if !self.check_depth(1, line) || !self.count(1, line) {
                    return;
                }
                let items = match ev {
                    Event::SequenceStart(..) => Items::Seq(Vec::new()),
                    _ => Items::Map(Vec::new(), None),
                };
                self.stack.push(Open {
                    anchor,
                    line,
                    items,
                    size: 1,
                    height: 0,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = self.stack.pop() else {
                    return;
                };
                let value = match open.items {
                    Items::Seq(items) => Value::Seq(items),
                    Items::Map(entries, _) => Value::Map(entries),
                };
                let node = Node {
                    line: open.line,
                    value,
                };
                self.push_node(node, open.anchor, open.size, open.height + 1);
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

    /// The node as JSON, its strings moved rather than copied (what a load
    /// does with a document once its lines are indexed).
    pub fn into_json(self) -> serde_json::Value {
        use serde_json::Value as J;
        match self.value {
            Value::Str(s) => J::String(s),
            Value::Seq(items) => J::Array(items.into_iter().map(Node::into_json).collect()),
            Value::Map(entries) => J::Object(
                entries
                    .into_iter()
                    // Like Kubernetes, a null field is an absent field.
                    .filter(|(_, _, v)| v.value != Value::Null)
                    .map(|(k, _, v)| (k, v.into_json()))
                    .collect(),
            ),
            _ => self.to_json(),
        }
    }

    /// Line of every field path (`spec.ingress[0].source.selector`): the key's
    /// line for mapping entries, the item's line for sequence items.
    pub fn line_index(&self) -> HashMap<String, usize> {
        let mut index = HashMap::with_capacity(self.size_hint());
        index.insert(String::new(), self.line);
        self.index_into(&mut String::new(), &mut index);
        index
    }

    /// How many entries [`Self::line_index`] makes (to size it once).
    fn size_hint(&self) -> usize {
        match &self.value {
            Value::Seq(items) => items.iter().map(|n| 1 + n.size_hint()).sum(),
            Value::Map(entries) => entries.iter().map(|(_, _, n)| 1 + n.size_hint()).sum(),
            _ => 0,
        }
    }

    /// Indexes the fields under `path` (one buffer for every path: a field's
    /// path is appended for its subtree and cut off after).
    fn index_into(&self, path: &mut String, index: &mut HashMap<String, usize>) {
        use std::fmt::Write;
        let len = path.len();
        match &self.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let _ = write!(path, "[{i}]");
                    index.insert(path.clone(), item.line);
                    item.index_into(path, index);
                    path.truncate(len);
                }
            }
            Value::Map(entries) => {
                for (k, line, v) in entries {
                    if len > 0 {
                        path.push('.');
                    }
                    path.push_str(k);
                    index.insert(path.clone(), *line);
                    v.index_into(path, index);
                    path.truncate(len);
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
#[path = "yaml_tests.rs"]
mod tests;

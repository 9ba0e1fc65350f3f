//! The selector syntax tree: evaluation and Calico's canonical printing.
use std::fmt;

use super::Labels;

/// One node of a parsed selector. The shapes mirror Calico's AST
/// (`libcalico-go/lib/selector/parser/ast.go`) so that printing gives
/// Calico's canonical string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// `all()`: matches everything.
    All,
    /// `global()`: matches everything when evaluated; only meaningful as a
    /// `namespaceSelector`, where it means "not in any namespace".
    Global,
    /// `has(key)`
    Has(String),
    /// `key == "value"`
    Equals(String, String),
    /// `key != "value"` (true when the label is absent)
    NotEquals(String, String),
    /// `key contains "value"`
    Contains(String, String),
    /// `key starts with "value"`
    StartsWith(String, String),
    /// `key ends with "value"`
    EndsWith(String, String),
    /// `key in {..}`; values sorted and deduplicated, as Calico stores them.
    In(String, Vec<String>),
    /// `key not in {..}` (true when the label is absent); values sorted and deduplicated.
    NotIn(String, Vec<String>),
    Not(Box<Node>),
    /// Two or more operands.
    And(Vec<Node>),
    /// Two or more operands.
    Or(Vec<Node>),
}

/// Sorted, deduplicated: Calico's `ConvertToStringSetInPlace` (byte order,
/// which is also `String`'s order).
pub(crate) fn normalise_set(mut values: Vec<String>) -> Vec<String> {
    values.sort();
    values.dedup();
    values
}

fn set_contains(values: &[String], value: &str) -> bool {
    values
        .binary_search_by(|candidate| candidate.as_str().cmp(value))
        .is_ok()
}

impl Node {
    pub fn evaluate(&self, labels: &Labels) -> bool {
        let get = |key: &String| labels.get(key.as_str()).map(String::as_str);
        match self {
            Node::All | Node::Global => true,
            Node::Has(key) => labels.contains_key(key.as_str()),
            Node::Equals(key, value) => get(key) == Some(value.as_str()),
            Node::NotEquals(key, value) => get(key) != Some(value.as_str()),
            Node::Contains(key, value) => get(key).is_some_and(|v| v.contains(value.as_str())),
            Node::StartsWith(key, value) => get(key).is_some_and(|v| v.starts_with(value.as_str())),
            Node::EndsWith(key, value) => get(key).is_some_and(|v| v.ends_with(value.as_str())),
            Node::In(key, values) => get(key).is_some_and(|v| set_contains(values, v)),
            Node::NotIn(key, values) => !get(key).is_some_and(|v| set_contains(values, v)),
            Node::Not(operand) => !operand.evaluate(labels),
            Node::And(operands) => operands.iter().all(|n| n.evaluate(labels)),
            Node::Or(operands) => operands.iter().any(|n| n.evaluate(labels)),
        }
    }

    /// Calls `visit` on every label key in the tree, as Calico's visitors do.
    pub(crate) fn for_each_key_mut(&mut self, visit: &mut impl FnMut(&mut String)) {
        match self {
            Node::All | Node::Global => {}
            Node::Has(key)
            | Node::Equals(key, _)
            | Node::NotEquals(key, _)
            | Node::Contains(key, _)
            | Node::StartsWith(key, _)
            | Node::EndsWith(key, _)
            | Node::In(key, _)
            | Node::NotIn(key, _) => visit(key),
            Node::Not(operand) => operand.for_each_key_mut(visit),
            Node::And(operands) | Node::Or(operands) => {
                operands.iter_mut().for_each(|n| n.for_each_key_mut(visit))
            }
        }
    }
}

/// Calico quotes with `"` unless the value itself contains `"`.
fn write_quoted(f: &mut fmt::Formatter<'_>, value: &str) -> fmt::Result {
    let quote = if value.contains('"') { '\'' } else { '"' };
    write!(f, "{quote}{value}{quote}")
}

fn write_comparison(f: &mut fmt::Formatter<'_>, key: &str, op: &str, value: &str) -> fmt::Result {
    write!(f, "{key} {op} ")?;
    write_quoted(f, value)
}

fn write_set(f: &mut fmt::Formatter<'_>, key: &str, op: &str, values: &[String]) -> fmt::Result {
    write!(f, "{key} {op} {{")?;
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            f.write_str(", ")?;
        }
        write_quoted(f, value)?;
    }
    f.write_str("}")
}

fn write_joined(f: &mut fmt::Formatter<'_>, operands: &[Node], separator: &str) -> fmt::Result {
    // Calico parenthesises every && and || group, which makes the output
    // unambiguous without precedence rules.
    f.write_str("(")?;
    for (index, operand) in operands.iter().enumerate() {
        if index > 0 {
            f.write_str(separator)?;
        }
        write!(f, "{operand}")?;
    }
    f.write_str(")")
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::All => f.write_str("all()"),
            Node::Global => f.write_str("global()"),
            Node::Has(key) => write!(f, "has({key})"),
            Node::Equals(key, value) => write_comparison(f, key, "==", value),
            Node::NotEquals(key, value) => write_comparison(f, key, "!=", value),
            Node::Contains(key, value) => write_comparison(f, key, "contains", value),
            Node::StartsWith(key, value) => write_comparison(f, key, "starts with", value),
            Node::EndsWith(key, value) => write_comparison(f, key, "ends with", value),
            Node::In(key, values) => write_set(f, key, "in", values),
            Node::NotIn(key, values) => write_set(f, key, "not in", values),
            Node::Not(operand) => write!(f, "!{operand}"),
            Node::And(operands) => write_joined(f, operands, " && "),
            Node::Or(operands) => write_joined(f, operands, " || "),
        }
    }
}

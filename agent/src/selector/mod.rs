//! Calico's label-selector language (libcalico-go/lib/selector).
//!
//! STUB (branch `model`): a minimal stand-in for the real parser that lands on
//! `main` with the same API. It parses a subset (`all()`, `global()`, `==`,
//! `!=`, `in`, `not in`, `has()`, `!`, `&&`, `||`, parentheses) so the model's
//! tests can run; it is replaced wholesale at merge.
use std::fmt;

use crate::model::ir::Labels;

/// A parsed selector. `Display` prints the canonical form, which re-parses to an equal selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    node: Node,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Node {
    All,
    Global,
    Has(String),
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// Why a selector did not parse, and where (byte offset into the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("selector does not parse at position {position}: {reason}")]
pub struct ParseError {
    pub position: usize,
    pub reason: String,
}

pub fn parse(input: &str) -> Result<Selector, ParseError> {
    let mut p = StubParser { s: input, pos: 0 };
    p.skip_ws();
    if p.pos == input.len() {
        return Ok(Selector::all());
    }
    let node = p.or()?;
    p.skip_ws();
    if p.pos != input.len() {
        return Err(p.err("unexpected trailing characters"));
    }
    Ok(Selector { node })
}

struct StubParser<'a> {
    s: &'a str,
    pos: usize,
}

impl StubParser<'_> {
    fn err(&self, reason: &str) -> ParseError {
        ParseError {
            position: self.pos,
            reason: reason.into(),
        }
    }
    fn rest(&self) -> &str {
        &self.s[self.pos..]
    }
    fn skip_ws(&mut self) {
        while self.rest().starts_with([' ', '\t']) {
            self.pos += 1;
        }
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(tok) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<Node, ParseError> {
        let mut left = self.and()?;
        while self.eat("||") {
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }
    fn and(&mut self) -> Result<Node, ParseError> {
        let mut left = self.primary()?;
        while self.eat("&&") {
            left = Node::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }
    fn key(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_./-".contains(c)))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.err("expected a label key"));
        }
        let k = self.rest()[..len].to_string();
        self.pos += len;
        Ok(k)
    }
    fn string(&mut self) -> Result<String, ParseError> {
        self.skip_ws();
        let quote = match self.rest().chars().next() {
            Some(q @ ('\'' | '"')) => q,
            _ => return Err(self.err("expected a quoted string")),
        };
        let body = &self.rest()[1..];
        let end = body
            .find(quote)
            .ok_or_else(|| self.err("unterminated string"))?;
        let v = body[..end].to_string();
        self.pos += end + 2;
        Ok(v)
    }
    fn set(&mut self) -> Result<Vec<String>, ParseError> {
        if !self.eat("{") {
            return Err(self.err("expected '{'"));
        }
        let mut vals = Vec::new();
        if self.eat("}") {
            return Ok(vals);
        }
        loop {
            vals.push(self.string()?);
            if self.eat("}") {
                return Ok(vals);
            }
            if !self.eat(",") {
                return Err(self.err("expected ',' or '}'"));
            }
        }
    }
    fn primary(&mut self) -> Result<Node, ParseError> {
        if self.eat("!") {
            return Ok(Node::Not(Box::new(self.primary()?)));
        }
        if self.eat("(") {
            let n = self.or()?;
            if !self.eat(")") {
                return Err(self.err("expected ')'"));
            }
            return Ok(n);
        }
        if self.eat("all()") {
            return Ok(Node::All);
        }
        if self.eat("global()") {
            return Ok(Node::Global);
        }
        if self.eat("has(") {
            let k = self.key()?;
            if !self.eat(")") {
                return Err(self.err("expected ')'"));
            }
            return Ok(Node::Has(k));
        }
        let k = self.key()?;
        if self.eat("==") {
            Ok(Node::Eq(k, self.string()?))
        } else if self.eat("!=") {
            Ok(Node::Ne(k, self.string()?))
        } else if self.eat("not in") {
            Ok(Node::NotIn(k, self.set()?))
        } else if self.eat("in") {
            Ok(Node::In(k, self.set()?))
        } else {
            Err(self.err("expected an operator"))
        }
    }
}

impl Selector {
    /// `all()`: matches every label set.
    pub fn all() -> Self {
        Selector { node: Node::All }
    }
    pub fn has(key: &str) -> Self {
        Selector {
            node: Node::Has(key.into()),
        }
    }
    pub fn equals(key: &str, value: &str) -> Self {
        Selector {
            node: Node::Eq(key.into(), value.into()),
        }
    }
    pub fn in_set<I, S>(key: &str, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Selector {
            node: Node::In(key.into(), values.into_iter().map(Into::into).collect()),
        }
    }
    pub fn is_global(&self) -> bool {
        self.node == Node::Global
    }
    pub fn evaluate(&self, labels: &Labels) -> bool {
        eval(&self.node, labels)
    }
    /// `self && other`.
    pub fn and(self, other: Selector) -> Selector {
        Selector {
            node: Node::And(Box::new(self.node), Box::new(other.node)),
        }
    }
    /// `self || other`.
    pub fn or(self, other: Selector) -> Selector {
        Selector {
            node: Node::Or(Box::new(self.node), Box::new(other.node)),
        }
    }
    /// `!self`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Selector {
        Selector {
            node: Node::Not(Box::new(self.node)),
        }
    }
    /// The same selector over `prefix`-prefixed label keys.
    pub fn prefix_keys(&self, prefix: &str) -> Selector {
        fn go(n: &Node, p: &str) -> Node {
            let k = |k: &String| format!("{p}{k}");
            match n {
                Node::All | Node::Global => n.clone(),
                Node::Has(key) => Node::Has(k(key)),
                Node::Eq(key, v) => Node::Eq(k(key), v.clone()),
                Node::Ne(key, v) => Node::Ne(k(key), v.clone()),
                Node::In(key, v) => Node::In(k(key), v.clone()),
                Node::NotIn(key, v) => Node::NotIn(k(key), v.clone()),
                Node::Not(a) => Node::Not(Box::new(go(a, p))),
                Node::And(a, b) => Node::And(Box::new(go(a, p)), Box::new(go(b, p))),
                Node::Or(a, b) => Node::Or(Box::new(go(a, p)), Box::new(go(b, p))),
            }
        }
        Selector {
            node: go(&self.node, prefix),
        }
    }
}

fn eval(n: &Node, l: &Labels) -> bool {
    match n {
        Node::All => true,
        Node::Global => !l.contains_key("projectcalico.org/namespace"),
        Node::Has(k) => l.contains_key(k),
        Node::Eq(k, v) => l.get(k) == Some(v),
        Node::Ne(k, v) => l.get(k) != Some(v),
        Node::In(k, vs) => l.get(k).is_some_and(|x| vs.contains(x)),
        Node::NotIn(k, vs) => !l.get(k).is_some_and(|x| vs.contains(x)),
        Node::Not(a) => !eval(a, l),
        Node::And(a, b) => eval(a, l) && eval(b, l),
        Node::Or(a, b) => eval(a, l) || eval(b, l),
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |vs: &Vec<String>| {
            vs.iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Node::All => f.write_str("all()"),
            Node::Global => f.write_str("global()"),
            Node::Has(k) => write!(f, "has({k})"),
            Node::Eq(k, v) => write!(f, "{k} == \"{v}\""),
            Node::Ne(k, v) => write!(f, "{k} != \"{v}\""),
            Node::In(k, vs) => write!(f, "{k} in {{{}}}", set(vs)),
            Node::NotIn(k, vs) => write!(f, "{k} not in {{{}}}", set(vs)),
            Node::Not(a) => write!(f, "!({a})"),
            Node::And(a, b) => write!(f, "({a} && {b})"),
            Node::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.node.fmt(f)
    }
}

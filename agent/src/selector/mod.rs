//! Calico's label-selector language (libcalico-go/lib/selector).
//!
//! PLACEHOLDER API: the full parser, evaluator and canonical printer land here.
//! (Branch `eval`: a tiny expression tree with `equals`/`has`/`in_set`/`not`/`or`
//! so evaluator tests can discriminate endpoints; replaced by the real one at merge.)
use std::fmt;

use crate::model::ir::Labels;

/// A parsed selector. `Display` prints the canonical form, which re-parses to an equal selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    expr: Expr,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Expr {
    All,
    Equals(String, String),
    Has(String),
    In(String, Vec<String>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
}

/// Why a selector did not parse, and where (byte offset into the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("selector does not parse at position {position}: {reason}")]
pub struct ParseError {
    pub position: usize,
    pub reason: String,
}

pub fn parse(input: &str) -> Result<Selector, ParseError> {
    if input.trim().is_empty() || input.trim() == "all()" {
        return Ok(Selector::all());
    }
    Err(ParseError {
        position: 0,
        reason: "selector parser not implemented yet".into(),
    })
}

impl Selector {
    /// `all()`: matches every label set.
    pub fn all() -> Self {
        Selector { expr: Expr::All }
    }
    /// `k == 'v'`.
    pub fn equals(key: &str, value: &str) -> Self {
        Selector {
            expr: Expr::Equals(key.into(), value.into()),
        }
    }
    /// `has(k)`.
    pub fn has(key: &str) -> Self {
        Selector {
            expr: Expr::Has(key.into()),
        }
    }
    /// `k in {..}`.
    pub fn in_set(key: &str, values: &[&str]) -> Self {
        Selector {
            expr: Expr::In(key.into(), values.iter().map(|v| v.to_string()).collect()),
        }
    }
    pub fn evaluate(&self, labels: &Labels) -> bool {
        self.expr.evaluate(labels)
    }
    /// `self && other`.
    pub fn and(self, other: Selector) -> Selector {
        Selector {
            expr: Expr::And(Box::new(self.expr), Box::new(other.expr)),
        }
    }
    /// `self || other`.
    pub fn or(self, other: Selector) -> Selector {
        Selector {
            expr: Expr::Or(Box::new(self.expr), Box::new(other.expr)),
        }
    }
    /// `!self`.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Selector {
        Selector {
            expr: Expr::Not(Box::new(self.expr)),
        }
    }
}

impl Expr {
    fn evaluate(&self, labels: &Labels) -> bool {
        match self {
            Expr::All => true,
            Expr::Equals(k, v) => labels.get(k) == Some(v),
            Expr::Has(k) => labels.contains_key(k),
            Expr::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Expr::Not(e) => !e.evaluate(labels),
            Expr::And(a, b) => a.evaluate(labels) && b.evaluate(labels),
            Expr::Or(a, b) => a.evaluate(labels) || b.evaluate(labels),
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::All => f.write_str("all()"),
            Expr::Equals(k, v) => write!(f, "{k} == \"{v}\""),
            Expr::Has(k) => write!(f, "has({k})"),
            Expr::In(k, vs) => {
                let quoted: Vec<String> = vs.iter().map(|v| format!("\"{v}\"")).collect();
                write!(f, "{k} in {{{}}}", quoted.join(", "))
            }
            Expr::Not(e) => write!(f, "!({e})"),
            Expr::And(a, b) => write!(f, "({a} && {b})"),
            Expr::Or(a, b) => write!(f, "({a} || {b})"),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.expr.fmt(f)
    }
}

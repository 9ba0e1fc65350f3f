//! Calico's label-selector language (libcalico-go/lib/selector).
//!
//! PLACEHOLDER API: the full parser, evaluator and canonical printer land here.
use std::fmt;

use crate::model::ir::Labels;

/// A parsed selector. `Display` prints the canonical form, which re-parses to an equal selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    all: bool,
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
        Selector { all: true }
    }
    pub fn evaluate(&self, _labels: &Labels) -> bool {
        self.all
    }
    /// `self && other`.
    pub fn and(self, other: Selector) -> Selector {
        Selector {
            all: self.all && other.all,
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("all()")
    }
}

//! Calico's label-selector language (`libcalico-go/lib/selector`), with
//! projectcalico.org/v3 semantics: parsing (same accepted inputs as Calico's
//! tokenizer and parser), evaluation against a label set, and Calico's
//! canonical printing.
//!
//! Evaluation is a plain walk over the tree that borrows from the label map:
//! no allocation per evaluation.
use std::fmt;
use std::str::FromStr;

/// An endpoint's (or network set's) labels, as selectors see them.
pub type Labels = std::collections::BTreeMap<String, String>;

mod ast;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

pub use ast::Node;
pub use lexer::{is_valid_label_key, MAX_LABEL_KEY_LEN};
pub use parser::MAX_NESTING;

/// A parsed selector. `Display` prints Calico's canonical form, which
/// re-parses to an equal selector.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Selector {
    root: Node,
}

/// Why a selector did not parse, and where (byte offset into the input).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("selector does not parse at position {position}: {reason}")]
pub struct ParseError {
    pub position: usize,
    pub reason: String,
}

/// Parses a selector. An empty or all-whitespace selector is `all()`.
pub fn parse(input: &str) -> Result<Selector, ParseError> {
    parser::parse_node(input).map(|root| Selector { root })
}

impl FromStr for Selector {
    type Err = ParseError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        parse(input)
    }
}

impl Selector {
    /// `all()`: matches every label set.
    pub fn all() -> Self {
        Selector { root: Node::All }
    }

    /// `global()`.
    pub fn global() -> Self {
        Selector { root: Node::Global }
    }

    /// `has(key)`.
    pub fn has(key: impl Into<String>) -> Self {
        Selector {
            root: Node::Has(key.into()),
        }
    }

    /// `key == "value"`.
    pub fn equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Selector {
            root: Node::Equals(key.into(), value.into()),
        }
    }

    /// `key != "value"`.
    pub fn not_equals(key: impl Into<String>, value: impl Into<String>) -> Self {
        Selector {
            root: Node::NotEquals(key.into(), value.into()),
        }
    }

    /// `key in {values}` (values are sorted and deduplicated, as Calico does).
    pub fn in_set<V: Into<String>>(
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = ast::normalise_set(values.into_iter().map(Into::into).collect());
        Selector {
            root: Node::In(key.into(), values),
        }
    }

    /// `key not in {values}`.
    pub fn not_in_set<V: Into<String>>(
        key: impl Into<String>,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let values = ast::normalise_set(values.into_iter().map(Into::into).collect());
        Selector {
            root: Node::NotIn(key.into(), values),
        }
    }

    /// `!self`; negating a negation gives back the inner selector.
    #[allow(clippy::should_implement_trait)]
    pub fn not(self) -> Selector {
        Selector {
            root: parser::negate(self.root),
        }
    }

    /// `self && other`, shaped like Calico's parse of `(self) && (other)`.
    pub fn and(self, other: Selector) -> Selector {
        Selector {
            root: Node::And(vec![self.root, other.root]),
        }
    }

    /// `self || other`, shaped like Calico's parse of `(self) || (other)`.
    pub fn or(self, other: Selector) -> Selector {
        Selector {
            root: Node::Or(vec![self.root, other.root]),
        }
    }

    /// Does this label set match?
    pub fn evaluate(&self, labels: &Labels) -> bool {
        self.root.evaluate(labels)
    }

    /// The syntax tree, for consumers that compile selectors.
    pub fn root(&self) -> &Node {
        &self.root
    }

    /// True for exactly `global()` (after parsing, so ` ( global() ) ` too).
    pub fn is_global(&self) -> bool {
        self.root == Node::Global
    }

    /// True for exactly `all()` (which is also what an empty selector parses to).
    pub fn is_all(&self) -> bool {
        self.root == Node::All
    }

    /// Every label key gets `prefix` (Calico's `PrefixVisitor`): `k == "v"`
    /// becomes `<prefix>k == "v"`. `all()` and `global()` have no key and are
    /// left alone, as in Calico.
    pub fn prefix_keys(&self, prefix: &str) -> Selector {
        let mut root = self.root.clone();
        root.for_each_key_mut(&mut |key| key.insert_str(0, prefix));
        Selector { root }
    }

    /// A rule's `namespaceSelector` turned into a selector over endpoint
    /// labels, as Calico's `getEndpointSelector` does: keys get
    /// `label_prefix` (e.g. `pcns.`), then in the canonical string `all()`
    /// becomes `has(<namespace_label>)` (any namespaced endpoint) and
    /// `global()` becomes `!has(<namespace_label>)` (non-namespaced only).
    ///
    /// Calico does the replacement on the printed string, so it also rewrites
    /// the text `all()`/`global()` inside quoted values; we do the same to stay
    /// exact. The replacements contain no quotes, so the result always parses.
    ///
    /// Calico only applies this when the rule's `namespaceSelector` string is
    /// non-empty; an absent/empty one means "the policy's own namespace", which
    /// the caller must handle before parsing (an empty selector parses to `all()`).
    ///
    /// Panics if the selector was built (not parsed) from keys or values the
    /// language cannot express, since its printed form then does not parse.
    pub fn to_namespace_scope(&self, label_prefix: &str, namespace_label: &str) -> Selector {
        let printed = self
            .prefix_keys(label_prefix)
            .to_string()
            .replace("all()", &format!("has({namespace_label})"))
            .replace("global()", &format!("!has({namespace_label})"));
        parse(&printed).unwrap_or_else(|error| {
            panic!("namespace scoping produced an unparsable selector {printed:?}: {error}")
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.root.fmt(f)
    }
}

//! Recursive-descent parser with Calico's grammar and precedence:
//!
//! ```text
//! selector  := <empty> | or
//! or        := and ("||" and)*
//! and       := operation ("&&" operation)*
//! operation := "!"* ( has(key) | all() | global() | "(" or ")"
//!                   | key ("==" | "!=" | contains | starts with | ends with) string
//!                   | key ("in" | "not in") "{" [string ("," string)* [","]] "}" )
//! ```
//!
//! Like Calico, a run of `!` collapses to at most one negation, a single
//! operand is not wrapped in an And/Or node, and parentheses produce no node.
use super::ast::{normalise_set, Node};
use super::lexer::{expected_operator_after, tokenize, Token, TokenKind};
use super::ParseError;

/// Deepest parenthesis nesting accepted. Calico has no limit (Go stacks grow);
/// we cap it so a hostile selector cannot overflow the stack.
pub const MAX_NESTING: usize = 256;

pub(crate) fn parse_node(input: &str) -> Result<Node, ParseError> {
    let tokens = tokenize(input)?;
    let mut parser = Parser {
        tokens: &tokens,
        next: 0,
        depth: 0,
    };
    if parser.peek().kind == TokenKind::Eof {
        return Ok(Node::All);
    }
    let node = parser.or_expression()?;
    let trailing = parser.peek();
    if trailing.kind != TokenKind::Eof {
        return Err(ParseError {
            position: trailing.position,
            reason: format!(
                "unexpected {} after a complete selector",
                describe(trailing.kind)
            ),
        });
    }
    Ok(node)
}

struct Parser<'t, 'a> {
    tokens: &'t [Token<'a>],
    next: usize,
    depth: usize,
}

fn describe(kind: TokenKind<'_>) -> String {
    match kind {
        TokenKind::Label(label) => format!("label '{label}'"),
        TokenKind::StringLiteral(value) => format!("string \"{value}\""),
        TokenKind::Has(key) => format!("'has({key})'"),
        TokenKind::All => "'all()'".into(),
        TokenKind::Global => "'global()'".into(),
        TokenKind::LBrace => "'{'".into(),
        TokenKind::RBrace => "'}'".into(),
        TokenKind::Comma => "','".into(),
        TokenKind::Eq => "'=='".into(),
        TokenKind::Ne => "'!='".into(),
        TokenKind::In => "'in'".into(),
        TokenKind::NotIn => "'not in'".into(),
        TokenKind::Contains => "'contains'".into(),
        TokenKind::StartsWith => "'starts with'".into(),
        TokenKind::EndsWith => "'ends with'".into(),
        TokenKind::Not => "'!'".into(),
        TokenKind::LParen => "'('".into(),
        TokenKind::RParen => "')'".into(),
        TokenKind::And => "'&&'".into(),
        TokenKind::Or => "'||'".into(),
        TokenKind::Eof => "end of selector".into(),
    }
}

impl<'a> Parser<'_, 'a> {
    fn peek(&self) -> Token<'a> {
        // The token list always ends with Eof and we never advance past it.
        self.tokens[self.next]
    }

    fn advance(&mut self) -> Token<'a> {
        let token = self.peek();
        if token.kind != TokenKind::Eof {
            self.next += 1;
        }
        token
    }

    fn error_at(&self, token: Token<'_>, expected: &str) -> ParseError {
        ParseError {
            position: token.position,
            reason: format!("expected {expected}, found {}", describe(token.kind)),
        }
    }

    fn or_expression(&mut self) -> Result<Node, ParseError> {
        let mut operands = vec![self.and_expression()?];
        while self.peek().kind == TokenKind::Or {
            self.advance();
            operands.push(self.and_expression()?);
        }
        Ok(single_or(operands, Node::Or))
    }

    fn and_expression(&mut self) -> Result<Node, ParseError> {
        let mut operands = vec![self.operation()?];
        while self.peek().kind == TokenKind::And {
            self.advance();
            operands.push(self.operation()?);
        }
        Ok(single_or(operands, Node::And))
    }

    fn operation(&mut self) -> Result<Node, ParseError> {
        let mut negated = false;
        while self.peek().kind == TokenKind::Not {
            self.advance();
            negated = !negated;
        }
        let token = self.advance();
        let node = match token.kind {
            TokenKind::Has(key) => Node::Has(key.to_owned()),
            TokenKind::All => Node::All,
            TokenKind::Global => Node::Global,
            TokenKind::Label(key) => self.label_operation(key)?,
            TokenKind::LParen => self.parenthesised(token)?,
            _ => return Err(self.error_at(token, "a selector expression")),
        };
        Ok(if negated { negate(node) } else { node })
    }

    fn parenthesised(&mut self, open: Token<'_>) -> Result<Node, ParseError> {
        if self.depth == MAX_NESTING {
            return Err(ParseError {
                position: open.position,
                reason: format!("parentheses nested deeper than {MAX_NESTING} levels"),
            });
        }
        self.depth += 1;
        let node = self.or_expression()?;
        self.depth -= 1;
        let close = self.peek();
        if close.kind != TokenKind::RParen {
            return Err(self.error_at(close, "')'"));
        }
        self.advance();
        Ok(node)
    }

    fn label_operation(&mut self, key: &str) -> Result<Node, ParseError> {
        let operator = self.advance();
        let key = key.to_owned();
        let comparison: Option<fn(String, String) -> Node> = match operator.kind {
            TokenKind::Eq => Some(Node::Equals),
            TokenKind::Ne => Some(Node::NotEquals),
            TokenKind::Contains => Some(Node::Contains),
            TokenKind::StartsWith => Some(Node::StartsWith),
            TokenKind::EndsWith => Some(Node::EndsWith),
            _ => None,
        };
        if let Some(make) = comparison {
            let operand = self.peek();
            let TokenKind::StringLiteral(value) = operand.kind else {
                return Err(self.error_at(operand, "a quoted string"));
            };
            self.advance();
            return Ok(make(key, value.to_owned()));
        }
        let make_set: fn(String, Vec<String>) -> Node = match operator.kind {
            TokenKind::In => Node::In,
            TokenKind::NotIn => Node::NotIn,
            _ => {
                return Err(ParseError {
                    position: operator.position,
                    reason: expected_operator_after(&key),
                })
            }
        };
        Ok(make_set(key, self.set_literal()?))
    }

    /// `{"a", 'b', }`: a trailing comma is accepted, as in Calico.
    fn set_literal(&mut self) -> Result<Vec<String>, ParseError> {
        let open = self.peek();
        if open.kind != TokenKind::LBrace {
            return Err(self.error_at(open, "'{' to start a set"));
        }
        self.advance();
        let mut values = Vec::new();
        while let TokenKind::StringLiteral(value) = self.peek().kind {
            self.advance();
            values.push(value.to_owned());
            if self.peek().kind != TokenKind::Comma {
                break;
            }
            self.advance();
        }
        let close = self.peek();
        if close.kind != TokenKind::RBrace {
            return Err(self.error_at(close, "a quoted string or '}'"));
        }
        self.advance();
        Ok(normalise_set(values))
    }
}

fn single_or(mut operands: Vec<Node>, combine: fn(Vec<Node>) -> Node) -> Node {
    if operands.len() == 1 {
        operands.pop().expect("one operand")
    } else {
        combine(operands)
    }
}

/// `!` applied to a node. A doubly negated node (`!(!x)`) collapses to `x`,
/// exactly as Calico collapses `!!x`; Calico itself would keep both and print
/// `!!x`, which then re-parses as `x`. Collapsing keeps print/parse round trips exact.
pub(crate) fn negate(node: Node) -> Node {
    match node {
        Node::Not(inner) => *inner,
        other => Node::Not(Box::new(other)),
    }
}

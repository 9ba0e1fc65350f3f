//! Tokenizer for the selector language, following Calico's
//! `libcalico-go/lib/selector/tokenizer` rule for rule, so that exactly the
//! same inputs are accepted. Every token remembers its byte offset so errors
//! can point at the input.
use super::ParseError;

/// Longest label key Calico accepts (`tokenizer.MaxLabelLength`).
pub const MAX_LABEL_KEY_LEN: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenKind<'a> {
    Label(&'a str),
    StringLiteral(&'a str),
    /// `has(key)`: Calico lexes the whole call as one token.
    Has(&'a str),
    All,
    Global,
    LBrace,
    RBrace,
    Comma,
    Eq,
    Ne,
    In,
    NotIn,
    Contains,
    StartsWith,
    EndsWith,
    Not,
    LParen,
    RParen,
    And,
    Or,
    Eof,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: TokenKind<'a>,
    /// Byte offset of the token's first character in the input.
    pub position: usize,
}

/// Only space and tab count as whitespace in Calico selectors.
fn is_whitespace(byte: u8) -> bool {
    byte == b' ' || byte == b'\t'
}

pub(crate) fn is_label_key_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'/' | b'-')
}

/// True if `key` is a label key the selector language can express.
pub fn is_valid_label_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_LABEL_KEY_LEN && key.bytes().all(is_label_key_byte)
}

struct Lexer<'a> {
    input: &'a str,
    offset: usize,
}

impl<'a> Lexer<'a> {
    fn rest(&self) -> &'a str {
        &self.input[self.offset..]
    }

    fn skip_whitespace(&mut self) {
        while self
            .input
            .as_bytes()
            .get(self.offset)
            .is_some_and(|&b| is_whitespace(b))
        {
            self.offset += 1;
        }
    }

    fn error(&self, position: usize, reason: impl Into<String>) -> ParseError {
        ParseError {
            position,
            reason: reason.into(),
        }
    }

    /// The character at `position`, for messages (the input may be non-ASCII).
    fn char_at(&self, position: usize) -> char {
        self.input[position..].chars().next().unwrap_or(' ')
    }

    /// Consumes `literal` if the rest of the input starts with it.
    fn eat(&mut self, literal: &str) -> bool {
        if self.rest().starts_with(literal) {
            self.offset += literal.len();
            true
        } else {
            false
        }
    }

    /// A keyword operator only counts if no label character follows it
    /// (Calico's word-boundary check), so `a inside` is not `a in side`.
    /// Whitespace between the words is optional: `startswith` and `notin` are accepted.
    fn eat_operator_words(&mut self, words: &[&str]) -> bool {
        let start = self.offset;
        for word in words {
            if !self.eat(word) {
                self.offset = start;
                return false;
            }
            self.skip_whitespace();
        }
        // Calico trims trailing whitespace as part of the operator; harmless
        // because whitespace is skipped before the next token anyway.
        if self
            .input
            .as_bytes()
            .get(self.offset)
            .is_some_and(|&b| is_label_key_byte(b))
        {
            self.offset = start;
            return false;
        }
        true
    }

    fn label_key(&mut self) -> Result<&'a str, ParseError> {
        let start = self.offset;
        let length = self
            .rest()
            .bytes()
            .take_while(|&b| is_label_key_byte(b))
            .count();
        if length == 0 {
            let found = self.char_at(start);
            return Err(self.error(
                start,
                format!("expected a label key, found unexpected character '{found}'"),
            ));
        }
        if length > MAX_LABEL_KEY_LEN {
            return Err(self.error(
                start,
                format!("label key is {length} characters long, the limit is {MAX_LABEL_KEY_LEN}"),
            ));
        }
        self.offset += length;
        Ok(&self.input[start..start + length])
    }

    fn string_literal(&mut self, quote: char) -> Result<&'a str, ParseError> {
        let start = self.offset;
        let body_start = start + 1;
        match self.input[body_start..].find(quote) {
            Some(length) => {
                self.offset = body_start + length + 1;
                Ok(&self.input[body_start..body_start + length])
            }
            None => Err(self.error(start, "unterminated string")),
        }
    }

    /// `name(` has been consumed: expects optional whitespace and `)`.
    fn close_call(&mut self, name: &str) -> Result<(), ParseError> {
        self.skip_whitespace();
        if self.eat(")") {
            Ok(())
        } else {
            Err(self.error(self.offset, format!("expected ')' to close {name}(")))
        }
    }

    fn next_token(&mut self, previous: Option<TokenKind<'a>>) -> Result<Token<'a>, ParseError> {
        self.skip_whitespace();
        let position = self.offset;
        let token = |kind| Token { kind, position };
        let Some(&first) = self.input.as_bytes().get(position) else {
            return Ok(token(TokenKind::Eof));
        };
        let single = |lexer: &mut Self, kind| {
            lexer.offset += 1;
            Ok(token(kind))
        };
        match first {
            b'(' => single(self, TokenKind::LParen),
            b')' => single(self, TokenKind::RParen),
            b'{' => single(self, TokenKind::LBrace),
            b'}' => single(self, TokenKind::RBrace),
            b',' => single(self, TokenKind::Comma),
            b'"' => Ok(token(TokenKind::StringLiteral(self.string_literal('"')?))),
            b'\'' => Ok(token(TokenKind::StringLiteral(self.string_literal('\'')?))),
            b'=' if self.eat("==") => Ok(token(TokenKind::Eq)),
            b'=' => Err(self.error(position, "expected '=='")),
            b'!' if self.eat("!=") => Ok(token(TokenKind::Ne)),
            b'!' => single(self, TokenKind::Not),
            b'&' if self.eat("&&") => Ok(token(TokenKind::And)),
            b'&' => Err(self.error(position, "expected '&&'")),
            b'|' if self.eat("||") => Ok(token(TokenKind::Or)),
            b'|' => Err(self.error(position, "expected '||'")),
            _ => self.word_token(previous).map(token),
        }
    }

    /// Operators spelled as words, `has(..)`, `all()`, `global()` and label keys.
    fn word_token(&mut self, previous: Option<TokenKind<'a>>) -> Result<TokenKind<'a>, ParseError> {
        let position = self.offset;
        if let Some(TokenKind::Label(label)) = previous {
            // After a label only an operator may follow.
            let operators: [(&[&str], TokenKind); 5] = [
                (&["contains"], TokenKind::Contains),
                (&["starts", "with"], TokenKind::StartsWith),
                (&["ends", "with"], TokenKind::EndsWith),
                (&["not", "in"], TokenKind::NotIn),
                (&["in"], TokenKind::In),
            ];
            for (words, kind) in operators {
                if self.eat_operator_words(words) {
                    return Ok(kind);
                }
            }
            return Err(self.error(position, expected_operator_after(label)));
        }
        if self.eat("has(") {
            self.skip_whitespace();
            if self.rest().is_empty() || self.rest().starts_with(')') {
                return Err(self.error(self.offset, "expected a label key inside has( )"));
            }
            let key = self.label_key()?;
            self.close_call("has")?;
            return Ok(TokenKind::Has(key));
        }
        if self.eat("all(") {
            self.close_call("all")?;
            return Ok(TokenKind::All);
        }
        if self.eat("global(") {
            self.close_call("global")?;
            return Ok(TokenKind::Global);
        }
        if !is_label_key_byte(self.input.as_bytes()[position]) {
            let found = self.char_at(position);
            return Err(self.error(position, format!("unexpected character '{found}'")));
        }
        Ok(TokenKind::Label(self.label_key()?))
    }
}

pub(crate) fn expected_operator_after(label: &str) -> String {
    format!(
        "expected an operator (==, !=, in, not in, contains, starts with, ends with) after label '{label}'"
    )
}

/// Splits `input` into tokens; the last token is always `Eof`.
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token<'_>>, ParseError> {
    let mut lexer = Lexer { input, offset: 0 };
    let mut tokens: Vec<Token<'_>> = Vec::new();
    loop {
        let token = lexer.next_token(tokens.last().map(|t| t.kind))?;
        tokens.push(token);
        if token.kind == TokenKind::Eof {
            return Ok(tokens);
        }
    }
}

//! `agent selector EXPR [--label KEY=VALUE]...`: evaluate a selector against a
//! label set. Prints `true` or `false`; a selector that does not parse exits 2
//! with the reason and a caret under the offending position.
use std::process::ExitCode;

use clap::Args;

use crate::model::ir::Labels;
use crate::selector::{self, ParseError};

/// Exit status for a selector that does not parse (as for other usage errors).
const EXIT_PARSE_ERROR: u8 = 2;

#[derive(Debug, Args)]
pub struct SelectorArgs {
    /// The selector, in Calico syntax, e.g. `app == "web" && !has(canary)`.
    pub expression: String,
    /// A label of the endpoint to evaluate against; repeat for more labels.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}

pub fn run(args: SelectorArgs) -> ExitCode {
    match selector::parse(&args.expression) {
        Ok(selector) => {
            // Later duplicates win, like repeated keys in a label map.
            let labels: Labels = args.labels.into_iter().collect();
            println!("{}", selector.evaluate(&labels));
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{}", render_parse_error(&args.expression, &error));
            ExitCode::from(EXIT_PARSE_ERROR)
        }
    }
}

/// The error, the input, and a caret under the failing position.
pub fn render_parse_error(input: &str, error: &ParseError) -> String {
    // Position is a byte offset; the caret column counts characters, and tabs
    // are kept so the caret lines up under tab-indented input.
    let padding: String = input[..error.position.min(input.len())]
        .chars()
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("error: {error}\n  {input}\n  {padding}^\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_counts_characters_not_bytes_and_keeps_tabs() {
        let input = "\tk == 'é' && %";
        let error = selector::parse(input).unwrap_err();
        assert_eq!(error.position, 14);
        let rendered = render_parse_error(input, &error);
        assert!(rendered.ends_with("\n  \t            ^\n"), "{rendered:?}");
    }

    #[test]
    fn label_arguments_split_at_the_first_equals_sign() {
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), String::new())));
        assert!(parse_label("=b").is_err());
        assert!(parse_label("ab").is_err());
    }
}

//! Fingerprints: a statement with its literals replaced by `?`.

use super::*;

pub(super) const RECURSION_LIMIT: usize = 200;
pub(super) const STACK: usize = 64 * 1024 * 1024;

pub(super) fn is_literal(v: &Value) -> bool {
    !matches!(v, Value::Boolean(_) | Value::Null | Value::Placeholder(_))
}

pub(super) fn placeholder() -> Value {
    Value::Placeholder("?".into())
}

/// The statement as sqlparser reads it, re-rendered with every literal (strings of every quoting,
/// numbers, typed strings such as `DATE '...'`) replaced by `?`, comments dropped and whitespace
/// normalized. None when it does not parse (nothing of it is logged then).
pub fn fingerprint(sql: &str) -> Option<String> {
    let mut stmts = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .ok()?;
    struct Lits;
    impl VisitorMut for Lits {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            match e {
                Expr::Value(v) if is_literal(&v.value) => v.value = placeholder(),
                Expr::TypedString(t) => t.value.value = placeholder(),
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn post_visit_value(&mut self, v: &mut sqlparser::ast::ValueWithSpan) -> ControlFlow<()> {
            if is_literal(&v.value) {
                v.value = placeholder();
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmts.visit(&mut Lits);
    let text = stmts
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("; ");
    // Literals outside expressions (options of COPY, SET ... TO, COMMENT ...) that no visitor
    // reached: replaced token by token. Text that does not tokenize is not logged.
    let toks = Tokenizer::new(&PostgreSqlDialect {}, &text)
        .tokenize()
        .ok()?;
    if !toks.iter().any(is_literal_token) {
        return Some(text);
    }
    Some(
        toks.into_iter()
            .map(|t| {
                if is_literal_token(&t) {
                    "?".to_string()
                } else {
                    t.to_string()
                }
            })
            .collect(),
    )
}

pub(super) fn is_literal_token(t: &Token) -> bool {
    literal_text(t).is_some()
}

/// The text of a literal token.
pub(super) fn literal_text(t: &Token) -> Option<&str> {
    Some(match t {
        Token::Number(s, _)
        | Token::SingleQuotedString(s)
        | Token::TripleSingleQuotedString(s)
        | Token::TripleDoubleQuotedString(s)
        | Token::SingleQuotedByteStringLiteral(s)
        | Token::DoubleQuotedByteStringLiteral(s)
        | Token::TripleSingleQuotedByteStringLiteral(s)
        | Token::TripleDoubleQuotedByteStringLiteral(s)
        | Token::SingleQuotedRawStringLiteral(s)
        | Token::DoubleQuotedRawStringLiteral(s)
        | Token::TripleSingleQuotedRawStringLiteral(s)
        | Token::TripleDoubleQuotedRawStringLiteral(s)
        | Token::NationalStringLiteral(s)
        | Token::EscapedStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::HexStringLiteral(s) => s,
        Token::DollarQuotedString(d) => &d.value,
        Token::QuoteDelimitedStringLiteral(d) | Token::NationalQuoteDelimitedStringLiteral(d) => {
            &d.value
        }
        _ => return None,
    })
}

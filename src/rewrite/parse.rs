//! The parser configuration, and the lexical heuristics and splicing that work on the
//! client's raw text.

use super::names::truncate_ident;
use sqlparser::ast::{Query, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};

/// Maximum nesting depth the parser accepts (sqlparser's default, 50, is too low for real SQL).
pub(super) const RECURSION_LIMIT: usize = 200;

/// Parses a text the way every part of the rewriter does (PostgreSQL dialect, `RECURSION_LIMIT`).
pub(super) fn parse_statements(sql: &str) -> Result<Vec<Statement>, ParserError> {
    Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
}

pub(super) fn has_unicode_escape(sql: &str) -> bool {
    let b = sql.as_bytes();
    b.windows(3)
        .any(|w| (w[0] == b'u' || w[0] == b'U') && w[1] == b'&' && (w[2] == b'\'' || w[2] == b'"'))
}

/// Whether the text avoids the lexical features where two SQL readers most easily disagree
/// (backslash escapes, E'' strings, dollar quoting). A write to a masked table is passed through
/// verbatim only when it does; otherwise PostgreSQL gets the parsed statement's own text.
pub(super) fn lexically_plain(sql: &str) -> bool {
    let b = sql.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'\\' => return false,
            b'$' => {
                if let Some(&n) = b.get(i + 1) {
                    if n == b'$' || n.is_ascii_alphabetic() || n == b'_' || n >= 0x80 {
                        return false;
                    }
                }
            }
            b'\'' if i > 0 && (b[i - 1] == b'e' || b[i - 1] == b'E') => {
                let before = if i >= 2 { b[i - 2] } else { b' ' };
                if !(before.is_ascii_alphanumeric() || before == b'_' || before >= 0x80) {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

/// Words of the text as PostgreSQL could read identifiers, lower-cased.
pub(super) fn words(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(|w| truncate_ident(w.to_lowercase()))
}

/// A replacement of the client's text: the span of a relation name, and what replaces it.
pub(super) struct Splice {
    pub(super) span: sqlparser::tokenizer::Span,
    pub(super) text: String,
}

/// The text with every splice applied, or None when a span cannot be placed (then the caller
/// sends the parsed statement's own text instead).
pub(super) fn splice(sql: &str, splices: &[Splice]) -> Option<String> {
    use sqlparser::tokenizer::Location;
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(sql.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    // Location: 1-based line, 1-based column counted in characters.
    let offset = |loc: Location| -> Option<usize> {
        let start = *line_starts.get(usize::try_from(loc.line).ok()?.checked_sub(1)?)?;
        let col = usize::try_from(loc.column).ok()?.checked_sub(1)?;
        let line = &sql[start..];
        let line = &line[..line.find('\n').unwrap_or(line.len())];
        match line.char_indices().nth(col) {
            Some((i, _)) => Some(start + i),
            None if line.chars().count() == col => Some(start + line.len()),
            None => None,
        }
    };
    let mut ranges: Vec<(usize, usize, &str)> = splices
        .iter()
        .map(|s| Some((offset(s.span.start)?, offset(s.span.end)?, s.text.as_str())))
        .collect::<Option<_>>()?;
    ranges.sort_by_key(|r| r.0);
    let mut out = String::with_capacity(sql.len() + 64 * ranges.len());
    let mut at = 0;
    for (a, b, text) in ranges {
        if a < at || b <= a {
            return None;
        }
        out.push_str(&sql[at..a]);
        out.push_str(text);
        at = b;
    }
    out.push_str(&sql[at..]);
    Some(out)
}

/// For `TABLE [ONLY] name[;]`, the part after `TABLE`.
pub(super) fn table_statement(sql: &str) -> Option<&str> {
    let t = sql.trim().trim_end_matches(';').trim_end();
    let head = t.get(..6)?;
    if !head.eq_ignore_ascii_case("table ") {
        return None;
    }
    let rest = t[6..].trim();
    let simple = rest
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '"' | ' ' | '$'));
    (simple && !rest.is_empty()).then_some(rest)
}

pub(super) fn parse_query(sql: &str) -> Option<Query> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    match stmts.pop()? {
        Statement::Query(q) => Some(*q),
        _ => None,
    }
}

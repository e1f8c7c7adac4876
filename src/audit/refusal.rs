//! Refusals as the log records them (kind and reason, never a literal).

use super::*;

/// A refusal as the log shows it: its kind always, its message only when it cannot quote data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoggedRefusal {
    pub kind: &'static str,
    /// pgredact's message, or null when it was withheld.
    pub reason: Option<String>,
}

/// The kind of a refusal, from pgredact's own wording.
pub fn refusal_kind(msg: &str) -> &'static str {
    const KINDS: &[(&str, &str)] = &[
        ("could not parse", "unparsable"),
        ("no longer parses", "unparsable"),
        ("does not read back identically", "unparsable"),
        ("statement refused:", "unanalysable"),
        ("Unicode-escaped", "unicode_escape"),
        ("client_encoding", "session_settings"),
        ("decided before a change", "stale_prepared"),
        ("FunctionCall protocol", "function_call"),
        ("search_path", "search_path"),
        ("cannot change its identity", "identity"),
        ("masked sessions are refused", "wall"),
        ("does not know", "catalog"),
        ("EXPLAIN", "explain"),
        ("COPY", "copy"),
        ("function ", "function"),
        ("operator", "operator"),
        ("casting to", "cast"),
        ("settings that cannot affect masking", "setting"),
        ("RESET ALL", "setting"),
        ("DISCARD ALL", "setting"),
        ("SET ", "setting"),
        ("in a write statement", "pii_write"),
        ("writing", "pii_write"),
        ("writes every column", "pii_write"),
        ("RETURNING", "pii_write"),
        ("reading", "pii_read"),
        ("not accessible", "pii_read"),
        ("pgredact only lets through", "statement_kind"),
    ];
    KINDS
        .iter()
        .find(|(k, _)| msg.contains(k))
        .map_or("other", |(_, v)| v)
}

/// The refusal for the log. Its message names relations, columns, functions and settings; it is
/// withheld when it could quote the statement: parser and tokenizer errors, displays of a whole
/// statement or name, and any message that contains one of the statement's literals (or a quote
/// character) or when the statement does not tokenize.
pub fn log_refusal(r: &Refusal, sql: Option<&str>) -> LoggedRefusal {
    let kind = refusal_kind(&r.message);
    let m = &r.message;
    let unsafe_template = matches!(kind, "unparsable" | "unanalysable" | "other")
        && !m.contains("in a position pgredact does not analyse")
        || m.contains("unsupported relation name")
        || m.contains("unsupported function name")
        || m.contains("(now: ")
        || m.contains('\'')
        || m.contains('$')
        || kind == "setting";
    let quotes = match sql {
        None => false,
        Some(sql) => match Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() {
            Err(_) => true,
            Ok(toks) => toks
                .iter()
                .filter_map(literal_text)
                .any(|l| contains_literal(m, l)),
        },
    };
    LoggedRefusal {
        kind,
        reason: (!unsafe_template && !quotes).then(|| m.clone()),
    }
}

/// Whether `msg` shows literal `lit`: as a substring (3 characters or more), else as a word.
pub(super) fn contains_literal(msg: &str, lit: &str) -> bool {
    if lit.is_empty() {
        return false;
    }
    if lit.chars().count() >= 3 {
        return msg.contains(lit);
    }
    msg.split(|c: char| !c.is_alphanumeric())
        .any(|w| w.eq_ignore_ascii_case(lit))
}

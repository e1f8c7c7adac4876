//! SQL-level prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`) a text creates, runs or drops.

use super::names::{fold, name_parts};
use super::parse::parse_statements;
use sqlparser::ast::Statement;

/// What a statement does to the session's SQL-level prepared statements (names folded as
/// PostgreSQL reads them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreparedEffect {
    Prepare(String),
    Execute(String),
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` (None), which drops protocol-level ones too.
    Deallocate(Option<String>),
}

/// The SQL-level prepared statements `sql` creates, runs or drops, in order. Empty when it names
/// none (or does not parse: then the rewriter refused it anyway).
pub fn prepared_effects(sql: &str) -> Vec<PreparedEffect> {
    // Every masked statement passes here: look for the keywords without allocating.
    let has = |w: &str| {
        sql.as_bytes()
            .windows(w.len())
            .any(|x| x.eq_ignore_ascii_case(w.as_bytes()))
    };
    if !(has("prepare") || has("execute") || has("deallocate") || has("discard")) {
        return Vec::new();
    }
    let Ok(stmts) = parse_statements(sql) else {
        return Vec::new();
    };
    fn walk(s: &Statement, out: &mut Vec<PreparedEffect>) {
        match s {
            Statement::Prepare { name, .. } => out.push(PreparedEffect::Prepare(fold(name))),
            Statement::Execute { name: Some(n), .. } => {
                if let Some(last) = name_parts(n).and_then(|p| p.last().cloned()) {
                    out.push(PreparedEffect::Execute(last));
                }
            }
            Statement::Deallocate { name, .. } => out.push(PreparedEffect::Deallocate(
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
                    None
                } else {
                    Some(fold(name))
                },
            )),
            Statement::Explain { statement, .. } => walk(statement, out),
            // DISCARD ALL drops every prepared statement, as DEALLOCATE ALL does.
            Statement::Discard { object_type }
                if object_type.to_string().eq_ignore_ascii_case("ALL") =>
            {
                out.push(PreparedEffect::Deallocate(None))
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for s in &stmts {
        walk(s, &mut out);
    }
    out
}

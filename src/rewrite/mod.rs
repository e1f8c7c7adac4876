//! The rewriter: a pure function from (SQL text, the database's protections, the session's
//! search path) to a decision for a masked session: pass the text through unchanged, send a
//! rewritten text, or refuse (SQLSTATE 42501). No I/O, no async.
//!
//! How reads are masked: every reference to a masked relation, wherever sqlparser puts a table
//! factor, is replaced by a derived table that projects the masked columns under the original
//! names and alias (see `protect.rs`). Everything above it sees only masked values.
//!
//! How it fails closed:
//! - unparsable text, unknown statement kinds, unknown or dangerous functions, identity and
//!   search_path changes are refused;
//! - after rewriting, an independent audit walks every relation the final statement names and
//!   refuses unless each masked one is either inside a derived table we built or an approved
//!   write target;
//! - a statement passed through verbatim must not mention a protected name more often than the
//!   parsed statement does (a parser differential would show up there); otherwise the parsed
//!   statement's own text is sent instead, so PostgreSQL runs exactly what was checked.
//!
//! One file per concern: `State::run` here drives `statement.rs` (dispatch by statement kind),
//! which calls `settings.rs` (SET, RESET), `write.rs` (INSERT/UPDATE/DELETE/MERGE), `copy.rs`,
//! `checks.rs` (functions, operators, casts, PII reads in writes) and `substitute.rs` (masking
//! views put in); then `audit.rs` (the independent audit) and `fidelity.rs` (read-back and
//! lexical cross-checks). `parse.rs` holds the parser configuration and the lexical helpers,
//! `names.rs` name folding and resolution, `refusal.rs` the refusal type, `prepared.rs` the
//! effects on SQL-level prepared statements; `protect.rs` and `rules.rs` are the protections
//! (policy × catalog) and the fixed lists.

pub mod protect;
pub mod rules;
pub mod search_path;

mod audit;
mod checks;
mod copy;
mod fidelity;
mod names;
mod parse;
mod prepared;
mod refusal;
mod settings;
mod statement;
mod substitute;
mod write;

pub use prepared::{prepared_effects, PreparedEffect};
pub use protect::{MaskedRel, Protection, Protections};
pub use refusal::{Refusal, RefusalKind, REFUSAL_SQLSTATE};

use audit::count_positions;
use parse::{
    has_unicode_escape, lexically_plain, parse_statements, splice, table_statement, Splice,
};
use statement::structure_check;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the client's bytes unchanged.
    Pass,
    /// Send this text instead.
    Rewrite(String),
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub decision: Decision,
    /// Some name was not in the catalog snapshot: refresh it and rewrite again.
    pub unknown_names: bool,
    /// The relations the statement's names resolved to (`schema.name`, sorted, each once), as
    /// far as the rewriter got before deciding. Informational (the audit log's tables touched):
    /// the decision never depends on it.
    pub relations: Vec<String>,
}

/// What the rewriter knows about the session.
pub struct SessionCtx<'a> {
    pub prot: &'a Protections,
    /// `current_schemas(true)` of the session, in order.
    pub search_path: &'a [String],
    /// The search path is still the one the session started with, so `RESET ALL`, `DISCARD
    /// ALL` and `RESET search_path` leave it as it is (otherwise they would change it behind the
    /// rewriter's back).
    pub path_at_start: bool,
}

/// Rewrites one Query or Parse text for a masked session.
pub fn rewrite(sql: &str, ctx: &SessionCtx<'_>) -> Outcome {
    let mut st = State::new(ctx);
    let decision = match st.run(sql) {
        Ok(d) => d,
        Err(r) => Decision::Refuse(r),
    };
    Outcome {
        decision,
        unknown_names: st.unknown,
        relations: st.relations(),
    }
}

struct State<'a> {
    ctx: &'a SessionCtx<'a>,
    unknown: bool,
    changed: bool,
    /// Every change is a relation name replaced by its masking view (plus an alias where there
    /// was none): the client's own text can be sent with those spans replaced.
    splices: Vec<Splice>,
    /// Some change cannot be expressed as a splice of the client's text.
    splice_ok: bool,
    /// Masked-relation references we replaced by derived tables or approved as write targets.
    expected_masked_refs: usize,
    /// Lower-case names seen in relation or function position (for the lexical cross-check).
    analyzed: HashMap<String, usize>,
    /// Extra words that must not appear in text passed verbatim (PII columns of write targets).
    extra_sensitive: HashSet<String>,
    cte_names: HashSet<String>,
    /// Inside EXPLAIN: lower-case PII column names and FROM-item names of the masked relations
    /// seen (what a reference to PII or a whole row of one could be called). None elsewhere, so
    /// other statements do not collect them.
    pii_names: Option<HashSet<String>>,
    /// The oid of every relation a name of the client's statement resolved to (for
    /// `Outcome::relations`; not the masking views put in, which the final audit resolves).
    resolved: HashSet<u32>,
    auditing: bool,
    /// The text holds a system column's name (checked before walking the tree for them).
    names_system_column: bool,
}

impl<'a> State<'a> {
    fn new(ctx: &'a SessionCtx<'a>) -> Self {
        State {
            ctx,
            unknown: false,
            changed: false,
            splices: Vec::new(),
            splice_ok: true,
            expected_masked_refs: 0,
            analyzed: HashMap::new(),
            extra_sensitive: HashSet::new(),
            cte_names: HashSet::new(),
            pii_names: None,
            resolved: HashSet::new(),
            names_system_column: false,
            auditing: false,
        }
    }

    /// `schema.name` of every relation resolved so far, sorted.
    fn relations(&self) -> Vec<String> {
        let cat = &self.ctx.prot.catalog;
        let mut v: Vec<String> = self
            .resolved
            .iter()
            .filter_map(|o| cat.relations.get(o))
            .map(|r| format!("{}.{}", r.schema, r.name))
            .collect();
        v.sort();
        v
    }

    fn run(&mut self, sql: &str) -> Result<Decision, Refusal> {
        self.names_system_column = ["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"]
            .iter()
            .any(|w| {
                sql.as_bytes()
                    .windows(w.len())
                    .any(|x| x.eq_ignore_ascii_case(w.as_bytes()))
            });
        if has_unicode_escape(sql) {
            return Err(Refusal::new(RefusalKind::Other,
                "Unicode-escaped names and strings (U&\"...\", U&'...') are not accepted for masked roles",
            )
            .hint("write the name or string directly in UTF-8"));
        }
        let mut source = std::borrow::Cow::Borrowed(sql);
        let mut parsed = parse_statements(sql);
        if parsed.is_err() {
            // `TABLE name` (sqlparser does not read it) is exactly `SELECT * FROM name`.
            if let Some(rest) = table_statement(sql) {
                source = std::borrow::Cow::Owned(format!("SELECT * FROM {rest}"));
                parsed = parse_statements(&source);
                self.changed = true;
                self.splice_ok = false;
            }
        }
        let mut stmts = match parsed {
            Ok(s) => s,
            Err(e) => {
                return Err(Refusal::new(RefusalKind::Unparsable, format!(
                    "statement refused for a masked role: pgredact could not parse it, so it cannot prove it safe ({e})"
                ))
                .hint("simplify the statement or ask a DBA; unparsable statements are never passed through"))
            }
        };
        if stmts.is_empty() {
            return Ok(Decision::Pass);
        }
        for s in &stmts {
            count_positions(s, &mut self.analyzed);
            structure_check(s)?;
        }
        for s in &mut stmts {
            self.statement(s)?;
        }
        // Independent audit of the final statements.
        self.auditing = true;
        for s in &stmts {
            self.audit(s)?;
        }
        let verbatim_ok = self.lexically_explained(sql)
            && (self.expected_masked_refs == 0 || lexically_plain(sql));
        if verbatim_ok && self.changed && self.splice_ok {
            // The client's text with each masked relation's name replaced by its masking view:
            // PostgreSQL runs exactly what was parsed and checked, in the client's own words.
            if let Some(text) = splice(sql, &self.splices) {
                return Ok(Decision::Rewrite(text));
            }
        }
        if self.changed || !verbatim_ok {
            let text = stmts
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";\n");
            self.read_back(&source)?;
            return Ok(Decision::Rewrite(text));
        }
        Ok(Decision::Pass)
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod snap_tests;
#[cfg(test)]
pub(crate) mod tests;

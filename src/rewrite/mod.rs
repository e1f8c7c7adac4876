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

pub mod protect;
pub mod rules;
pub mod search_path;

pub use protect::{MaskedRel, Protection, Protections};

use sqlparser::ast::{
    AssignmentTarget, BinaryOperator, ConflictTarget, CopySource, CopyTarget, Expr, FromTable,
    FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName, ObjectNamePart,
    OnConflictAction, OnInsert, Query, Reset, Select, SelectItem, SelectItemQualifiedWildcardKind,
    Set, Statement, TableAlias, TableFactor, TableInheritance, TableObject, Visit, VisitMut,
    Visitor, VisitorMut,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;

/// The reason a statement was refused. Always SQLSTATE 42501 (insufficient_privilege).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
    pub hint: Option<String>,
}

pub const REFUSAL_SQLSTATE: &str = "42501";

impl Refusal {
    fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: format!("pgredact: {}", message.into()),
            hint: None,
        }
    }
    fn hint(mut self, h: impl Into<String>) -> Refusal {
        self.hint = Some(h.into());
        self
    }
}

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
    if !(has("prepare") || has("execute") || has("deallocate")) {
        return Vec::new();
    }
    let Ok(stmts) = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
    else {
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
            _ => {}
        }
    }
    let mut out = Vec::new();
    for s in &stmts {
        walk(s, &mut out);
    }
    out
}

/// What the rewriter knows about the session.
pub struct SessionCtx<'a> {
    pub prot: &'a Protections,
    /// `current_schemas(true)` of the session, in order.
    pub search_path: &'a [String],
}

/// Maximum nesting depth the parser accepts (sqlparser's default, 50, is too low for real SQL).
const RECURSION_LIMIT: usize = 200;

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

/// PostgreSQL keeps at most this many bytes of an identifier (NAMEDATALEN - 1).
const MAX_IDENT: usize = 63;

/// Truncates a name the way PostgreSQL does (at a character boundary, at most 63 bytes).
fn truncate_ident(mut s: String) -> String {
    if s.len() > MAX_IDENT {
        let mut n = MAX_IDENT;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

/// Lower-cases and truncates an identifier the way PostgreSQL reads names.
fn fold(id: &Ident) -> String {
    truncate_ident(if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    })
}

fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            _ => None,
        })
        .collect()
}

/// `set_config('<name>', value, is_local)` with a literal name that `SET` may change in a masked
/// session: the same change as `SET`, which drivers and GUI clients make this way (asyncpg's
/// `set_config('jit', 'off', false)` around its type introspection, pgAdmin's
/// `set_config('bytea_output', 'hex', false)`). The value may be any expression: it is checked
/// and masked like any other. search_path, identity, encoding and planner settings stay refused.
fn set_config_of_allowed_setting(f: &sqlparser::ast::Function) -> bool {
    let Some(parts) = name_parts(&f.name) else {
        return false;
    };
    let is_set_config = match parts.as_slice() {
        [n] => n == "set_config",
        [s, n] => s == "pg_catalog" && n == "set_config",
        _ => false,
    };
    let FunctionArguments::List(l) = &f.args else {
        return false;
    };
    is_set_config
        && l.args.len() == 3
        && matches!(
            &l.args[0],
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))
                if matches!(&v.value, sqlparser::ast::Value::SingleQuotedString(n) if rules::setting_allowed(n))
        )
}

fn has_unicode_escape(sql: &str) -> bool {
    let b = sql.as_bytes();
    b.windows(3)
        .any(|w| (w[0] == b'u' || w[0] == b'U') && w[1] == b'&' && (w[2] == b'\'' || w[2] == b'"'))
}

/// Whether the text avoids the lexical features where two SQL readers most easily disagree
/// (backslash escapes, E'' strings, dollar quoting). A write to a masked table is passed through
/// verbatim only when it does; otherwise PostgreSQL gets the parsed statement's own text.
fn lexically_plain(sql: &str) -> bool {
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
fn words(sql: &str) -> impl Iterator<Item = String> + '_ {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .filter(|w| !w.is_empty())
        .map(|w| truncate_ident(w.to_lowercase()))
}

/// A replacement of the client's text: the span of a relation name, and what replaces it.
struct Splice {
    span: sqlparser::tokenizer::Span,
    text: String,
}

/// The text with every splice applied, or None when a span cannot be placed (then the caller
/// sends the parsed statement's own text instead).
fn splice(sql: &str, splices: &[Splice]) -> Option<String> {
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

/// The write target of an INSERT/UPDATE/DELETE on a masked relation.
struct Target {
    names: Vec<String>,
    rel: Arc<MaskedRel>,
    /// INSERT: `excluded` also names the proposed row.
    excluded: bool,
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
}

enum Resolved<'c> {
    Rel(&'c crate::catalog::Relation),
    Unknown,
    /// Names another database: PostgreSQL refuses it.
    Foreign,
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
        if has_unicode_escape(sql) {
            return Err(Refusal::new(
                "Unicode-escaped names and strings (U&\"...\", U&'...') are not accepted for masked roles",
            )
            .hint("write the name or string directly in UTF-8"));
        }
        let parse = |text: &str| {
            Parser::new(&PostgreSqlDialect {})
                .with_recursion_limit(RECURSION_LIMIT)
                .try_with_sql(text)
                .and_then(|mut p| p.parse_statements())
        };
        let mut source = std::borrow::Cow::Borrowed(sql);
        let mut parsed = parse(sql);
        if parsed.is_err() {
            // `TABLE name` (sqlparser does not read it) is exactly `SELECT * FROM name`.
            if let Some(rest) = table_statement(sql) {
                source = std::borrow::Cow::Owned(format!("SELECT * FROM {rest}"));
                parsed = parse(&source);
                self.changed = true;
                self.splice_ok = false;
            }
        }
        let mut stmts = match parsed {
            Ok(s) => s,
            Err(e) => {
                return Err(Refusal::new(format!(
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
            // PostgreSQL will run the displayed text: the client's part of it must read back as
            // exactly what was checked, and name nothing sensitive outside analysed positions.
            // (The masking view names put in are pgredact's own.)
            let original = parse(&source).map_err(|e| {
                Refusal::new(format!("statement refused: it no longer parses ({e})"))
            })?;
            let text0 = original
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";\n");
            match parse(&text0) {
                Ok(again) if again == original => {}
                _ => {
                    return Err(Refusal::new(
                        "statement refused: its parsed form does not read back identically, so pgredact cannot prove it safe",
                    ))
                }
            }
            self.final_words_explained(&text0, &original)?;
            return Ok(Decision::Rewrite(text));
        }
        Ok(Decision::Pass)
    }

    /// Every sensitive word in the raw text must be explained by a name the parser saw in a
    /// relation or function position.
    fn lexically_explained(&self, sql: &str) -> bool {
        let sens = &self.ctx.prot.sensitive_words;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for w in words(sql) {
            if sens.contains(&w) || self.extra_sensitive.contains(&w) {
                *counts.entry(w).or_default() += 1;
            }
        }
        counts.iter().all(|(w, n)| {
            self.analyzed.get(w).copied().unwrap_or(0) >= *n && !self.extra_sensitive.contains(w)
        })
    }

    /// In the text sent to PostgreSQL, every identifier that names a protected relation or a
    /// sensitive function must stand where the checks looked: a relation or function name, or an
    /// alias. Anything else (a name in a position this code does not analyse) is refused.
    fn final_words_explained(&self, text: &str, stmts: &[Statement]) -> Result<(), Refusal> {
        use sqlparser::tokenizer::{Token, Tokenizer};
        let toks = Tokenizer::new(&PostgreSqlDialect {}, text)
            .tokenize()
            .map_err(|e| Refusal::new(format!("statement refused: {e}")))?;
        let sens = &self.ctx.prot.sensitive_words;
        let mut seen: HashMap<String, usize> = HashMap::new();
        for t in toks {
            if let Token::Word(w) = t {
                let v = if w.quote_style.is_some() {
                    w.value.clone()
                } else {
                    w.value.to_ascii_lowercase()
                };
                let v = v.to_lowercase();
                if sens.contains(&v) {
                    *seen.entry(v).or_default() += 1;
                }
            }
        }
        if seen.is_empty() {
            return Ok(());
        }
        let mut explained: HashMap<String, usize> = HashMap::new();
        for s in stmts {
            count_positions(s, &mut explained);
        }
        for (w, n) in seen {
            if explained.get(&w).copied().unwrap_or(0) < n {
                return Err(Refusal::new(format!(
                    "statement refused: it names {w} in a position pgredact does not analyse"
                )));
            }
        }
        Ok(())
    }

    fn resolve(&mut self, name: &ObjectName) -> Result<Resolved<'a>, Refusal> {
        let cat: &'a crate::catalog::Catalog = &self.ctx.prot.catalog;
        let parts = name_parts(name)
            .ok_or_else(|| Refusal::new(format!("unsupported relation name {name}")))?;
        let found = match parts.as_slice() {
            [t] => {
                // The first match along the path is what PostgreSQL reads today; if a later schema
                // has a protected relation of that name, a DROP could make PostgreSQL read it
                // before pgredact's snapshot notices: refuse the ambiguity.
                let all: Vec<_> = self
                    .ctx
                    .search_path
                    .iter()
                    .filter_map(|s| cat.lookup(s, t))
                    .collect();
                if let Some(first) = all.first() {
                    if self.ctx.prot.get(first).is_none()
                        && all[1..].iter().any(|r| self.ctx.prot.get(r).is_some())
                    {
                        return Err(Refusal::new(format!(
                            "the name {t} is ambiguous: {}.{t} shadows a protected relation of the same name",
                            first.schema
                        ))
                        .hint("qualify the name with its schema"));
                    }
                }
                all.first().copied()
            }
            [s, t] => cat.lookup(s, t),
            [d, s, t] => {
                if *d != self.ctx.prot.database {
                    // PostgreSQL rejects cross-database references itself.
                    return Ok(Resolved::Foreign);
                }
                cat.lookup(s, t)
            }
            _ => return Err(Refusal::new(format!("unsupported relation name {name}"))),
        };
        match found {
            Some(r) => {
                if !self.auditing {
                    self.resolved.insert(r.oid);
                }
                Ok(Resolved::Rel(r))
            }
            None => {
                self.unknown = true;
                Ok(Resolved::Unknown)
            }
        }
    }

    /// Like `protection`, for a read or write that includes descendants (no ONLY): a parent whose
    /// partitions or children are protected differently is refused.
    fn protection_with_descendants(
        &mut self,
        name: &ObjectName,
    ) -> Result<Option<Protection>, Refusal> {
        if let Resolved::Rel(r) = self.resolve(name)? {
            if let Some(h) = self.ctx.prot.parent_hazard.get(&r.oid) {
                return Ok(Some(Protection::Refuse(h.clone())));
            }
            return Ok(self.ctx.prot.get(r).cloned());
        }
        Ok(None)
    }

    fn protection(&mut self, name: &ObjectName) -> Result<Option<Protection>, Refusal> {
        match self.resolve(name)? {
            Resolved::Rel(r) => Ok(self.ctx.prot.get(r).cloned()),
            Resolved::Unknown | Resolved::Foreign => Ok(None),
        }
    }

    // ---------- statements ----------

    fn statement(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        self.collect_ctes(s);
        if search_path::restrict_relkind_without_views(s) {
            self.changed = true;
            self.splice_ok = false;
            return Ok(());
        }
        match s {
            Statement::Query(q) if write_body(&q.body).is_some() => {
                // WITH ... INSERT/UPDATE/DELETE: the WITH queries are reads (masked), the main
                // statement is a write under the write rules.
                if let Some(w) = q.with.as_mut() {
                    for cte in w.cte_tables.iter_mut() {
                        self.check(&*cte.query, None)?;
                        self.substitute(&mut *cte.query, None)?;
                    }
                }
                if q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
                    return Err(Refusal::new("ORDER BY or LIMIT on a data-modifying statement is not supported"));
                }
                match &mut *q.body {
                    sqlparser::ast::SetExpr::Insert(w)
                    | sqlparser::ast::SetExpr::Update(w)
                    | sqlparser::ast::SetExpr::Delete(w)
                    | sqlparser::ast::SetExpr::Merge(w) => self.statement(w)?,
                    _ => {}
                }
            }
            Statement::Query(q) => {
                self.check(&**q, None)?;
                self.substitute(&mut **q, None)?;
            }
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => self.write(s)?,
            Statement::Copy { .. } => self.copy(s)?,
            Statement::Explain {
                statement,
                analyze,
                options,
                ..
            } => {
                if matches!(**statement, Statement::Explain { .. }) {
                    return Err(Refusal::new("nested EXPLAIN is not supported"));
                }
                self.pii_names = Some(HashSet::new());
                self.statement(statement)?;
                let names = self.pii_names.take().unwrap_or_default();
                if reads_pii(statement, &names) {
                    self.explain_shape_only(analyze, options)?;
                }
            }
            Statement::Prepare { statement, .. } => {
                if !matches!(
                    **statement,
                    Statement::Query(_)
                        | Statement::Insert(_)
                        | Statement::Update(_)
                        | Statement::Delete(_)
                ) {
                    return Err(Refusal::new("PREPARE of this statement kind is not supported for masked roles"));
                }
                self.statement(statement)?
            }
            Statement::Execute { .. } | Statement::Deallocate { .. } => self.check(&*s, None)?,
            Statement::Declare { stmts, .. } => {
                for d in stmts.iter_mut() {
                    match d.for_query.as_mut() {
                        Some(q) => {
                            self.check(&**q, None)?;
                            self.substitute(&mut **q, None)?;
                        }
                        None => return Err(Refusal::new("only DECLARE ... CURSOR FOR <query> is supported for masked roles")),
                    }
                }
            }
            Statement::Fetch { .. }
            | Statement::Close { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::ShowVariable { .. }
            | Statement::UNLISTEN { .. } => {}
            Statement::NOTIFY { .. } => self.check(&*s, None)?,
            Statement::Set(set) => self.set(set)?,
            Statement::Reset(r) => match &r.reset {
                Reset::ALL => {
                    return Err(Refusal::new(
                        "RESET ALL is not allowed for masked roles: it would reset settings the masking depends on",
                    ))
                }
                Reset::SessionAuthorization => return Err(identity_refusal("RESET SESSION AUTHORIZATION")),
                Reset::ConfigurationParameter(p) => {
                    let n = p.to_string().to_ascii_lowercase();
                    if !rules::setting_allowed(&n) {
                        return Err(setting_refusal(&n, "RESET"));
                    }
                }
            },
            Statement::Discard { object_type } => {
                if object_type.to_string().eq_ignore_ascii_case("ALL") {
                    return Err(Refusal::new(
                        "DISCARD ALL is not allowed for masked roles: it would reset settings the masking depends on",
                    ));
                }
            }
            Statement::CreateTable(ct) => {
                if ct.like.is_some() || ct.clone.is_some() || ct.inherits.is_some() || ct.partition_of.is_some() {
                    return Err(Refusal::new(
                        "CREATE TABLE with LIKE, INHERITS or PARTITION OF is not allowed for masked roles",
                    ));
                }
                for c in &ct.columns {
                    if let Some(t) = risky_type(&self.ctx.prot.catalog, &c.data_type) {
                        return Err(Refusal::new(format!(
                            "a column of type {t} is not allowed for masked roles: its constraints run user code that may read PII"
                        )));
                    }
                }
                self.check(&*ct, None)?;
                if let Some(q) = ct.query.as_mut() {
                    self.substitute(&mut **q, None)?;
                }
            }
            Statement::Lock(l) => self.lock(l)?,
            Statement::Drop { .. } | Statement::Truncate(_) => {}
            Statement::LISTEN { .. } => {
                return Err(Refusal::new(
                    "LISTEN is not allowed for masked roles: notification payloads from other sessions are not masked",
                ))
            }
            Statement::Merge(_) => self.write(s)?,
            Statement::Call(_) => {
                return Err(Refusal::new(
                    "CALL is not allowed for masked roles: procedures may read PII internally",
                ))
            }
            other => {
                let kind = statement_kind(other);
                return Err(Refusal::new(format!(
                    "{kind} is not allowed for masked roles: pgredact only lets through statements it can prove do not reveal PII"
                )));
            }
        }
        Ok(())
    }

    /// EXPLAIN of a statement that reads PII shows the plan's shape only: the planner works on
    /// the raw columns under each mask, so its estimates (row counts of GROUP BY or DISTINCT,
    /// widths) come from the raw columns' statistics, and ANALYZE's memory and cache counters
    /// from raw values. ANALYZE is refused; COSTS is switched off.
    fn explain_shape_only(
        &mut self,
        analyze: &bool,
        options: &mut Option<Vec<sqlparser::ast::UtilityOption>>,
    ) -> Result<(), Refusal> {
        use sqlparser::ast::{UtilityOption, Value};
        let off = |o: &UtilityOption| {
            matches!(&o.arg, Some(Expr::Value(v)) if matches!(&v.value, Value::Boolean(false)))
                || matches!(&o.arg, Some(Expr::Identifier(i)) if i.value.eq_ignore_ascii_case("off") || i.value.eq_ignore_ascii_case("false"))
                || matches!(&o.arg, Some(Expr::Value(v)) if matches!(&v.value, Value::Number(n, _) if n == "0"))
        };
        let named = |o: &UtilityOption, n: &str| o.name.value.eq_ignore_ascii_case(n);
        let opts = options.get_or_insert_with(Vec::new);
        if *analyze || opts.iter().any(|o| named(o, "analyze") && !off(o)) {
            return Err(Refusal::new(
                "EXPLAIN ANALYZE of a statement that reads a table with PII is not allowed for masked roles: its row counts and cache counters are counted on the raw values",
            )
            .hint("EXPLAIN without ANALYZE shows the plan's shape"));
        }
        if opts.iter().any(|o| named(o, "costs") && !off(o)) {
            return Err(Refusal::new(
                "EXPLAIN with COSTS of a statement that reads a table with PII is not allowed for masked roles: the planner's estimates are computed on the raw values",
            ));
        }
        if !opts.iter().any(|o| named(o, "costs")) {
            opts.push(UtilityOption {
                name: Ident::new("COSTS"),
                arg: Some(Expr::Value(Value::Boolean(false).into())),
            });
        }
        self.changed = true;
        self.splice_ok = false;
        Ok(())
    }

    /// `LOCK TABLE ... IN ACCESS SHARE MODE` (what pg_dump takes on every table it dumps): a
    /// protected table is locked through its masking view, which PostgreSQL locks together with
    /// the table under it (checked as the view's owner). Other modes are refused: a masked
    /// session has no business blocking writers.
    fn lock(&mut self, l: &mut sqlparser::ast::Lock) -> Result<(), Refusal> {
        use sqlparser::ast::LockTableMode;
        if l.lock_mode != Some(LockTableMode::AccessShare) {
            return Err(Refusal::new(
                "LOCK TABLE is allowed for masked roles only IN ACCESS SHARE MODE (the lock pg_dump takes)",
            ));
        }
        for t in l.tables.iter_mut() {
            let prot = if t.only {
                self.protection(&t.name)?
            } else {
                self.protection_with_descendants(&t.name)?
            };
            match prot {
                None => {}
                Some(Protection::Refuse(r)) => {
                    return Err(Refusal::new(format!(
                        "LOCK TABLE {} is not allowed for masked roles: {r}",
                        t.name
                    )))
                }
                Some(Protection::Mask(rel)) => {
                    t.name = if t.only {
                        rel.only_view.clone()
                    } else {
                        rel.view.clone()
                    };
                    t.only = false;
                    t.has_asterisk = false;
                    self.expected_masked_refs += 1;
                    self.changed = true;
                    self.splice_ok = false;
                }
            }
        }
        Ok(())
    }

    fn note_pii_names(&mut self, rel: &protect::MaskedRel, alias: Option<&Ident>) {
        let Some(names) = self.pii_names.as_mut() else {
            return;
        };
        names.extend(rel.masks.keys().map(|c| c.to_lowercase()));
        names.insert(rel.name.to_lowercase());
        if let Some(a) = alias {
            names.insert(a.value.to_lowercase());
        }
    }

    fn set(&mut self, set: &Set) -> Result<(), Refusal> {
        match set {
            Set::SetRole { .. } => Err(identity_refusal("SET ROLE")),
            Set::SetSessionAuthorization(_) => Err(identity_refusal("SET SESSION AUTHORIZATION")),
            Set::SingleAssignment {
                variable, values, ..
            } => self.set_one(&variable.to_string(), values),
            Set::ParenthesizedAssignments { variables, values } => {
                for v in variables {
                    self.set_one(&v.to_string(), values)?;
                }
                Ok(())
            }
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.set_one(&a.name.to_string(), std::slice::from_ref(&a.value))?;
                }
                Ok(())
            }
            Set::SetTimeZone { .. } | Set::SetTransaction { .. } => Ok(()),
            Set::SetNames { charset_name, .. } => {
                let v = charset_name
                    .to_string()
                    .trim_matches('\'')
                    .to_ascii_lowercase();
                if rules::pinned_setting("client_encoding")
                    .is_some_and(|ok| ok.contains(&v.as_str()))
                {
                    Ok(())
                } else {
                    Err(Refusal::new(
                        "masked sessions must use client_encoding UTF8",
                    ))
                }
            }
            _ => Err(Refusal::new(format!(
                "{set} is not allowed for masked roles"
            ))),
        }
    }

    fn set_one(&mut self, var: &str, values: &[Expr]) -> Result<(), Refusal> {
        let name = var.to_ascii_lowercase();
        if name == "role" || name == "session_authorization" {
            return Err(identity_refusal("SET ROLE"));
        }
        if let Some(allowed) = rules::pinned_setting(&name) {
            let ok = values.len() == 1 && {
                let v = values[0].to_string();
                let v = v.trim_matches('\'').to_ascii_lowercase();
                allowed.contains(&v.as_str())
            };
            return if ok {
                Ok(())
            } else {
                Err(Refusal::new(format!(
                    "SET {name} to that value is not allowed for masked roles: the masking reads SQL with {name} = {}",
                    allowed[0]
                )))
            };
        }
        if !rules::setting_allowed(&name) {
            return Err(setting_refusal(&name, "SET"));
        }
        for v in values {
            self.check(v, None)?;
        }
        Ok(())
    }

    fn write(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        // Find the target and its protection.
        let (tname, alias, only): (ObjectName, Option<Ident>, bool) = match &*s {
            Statement::Insert(i) => match &i.table {
                TableObject::TableName(n) => (
                    n.clone(),
                    i.table_alias.as_ref().map(|a| a.alias.clone()),
                    i.on.is_none(),
                ),
                _ => {
                    return Err(Refusal::new(
                        "INSERT INTO a table function is not supported",
                    ))
                }
            },
            Statement::Update(u) => {
                if !u.table.joins.is_empty() {
                    return Err(Refusal::new(
                        "UPDATE with joins in the target is not supported",
                    ));
                }
                write_target(&u.table.relation, "UPDATE")?
            }
            Statement::Delete(d) => {
                let from = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
                };
                if !d.tables.is_empty() || from.len() != 1 || !from[0].joins.is_empty() {
                    return Err(Refusal::new("DELETE from several tables is not supported"));
                }
                write_target(&from[0].relation, "DELETE")?
            }
            Statement::Merge(m) => {
                if m.output.is_some() {
                    return Err(Refusal::new("MERGE with an OUTPUT clause is not supported"));
                }
                write_target(&m.table, "MERGE")?
            }
            _ => return Ok(()),
        };
        let prot = if only {
            self.protection(&tname)?
        } else {
            self.protection_with_descendants(&tname)?
        };
        if let Resolved::Rel(r) = self.resolve(&tname)? {
            if let Some(why) = self.ctx.prot.catalog.risky_writes.get(&r.oid) {
                return Err(Refusal::new(format!(
                    "writing to {tname} is not allowed for masked roles: {why}, which may read PII"
                )));
            }
        }
        let target = match prot {
            Some(Protection::Refuse(reason)) => {
                return Err(Refusal::new(format!(
                    "writing to {tname} is not allowed for masked roles: {reason}"
                )))
            }
            Some(Protection::Mask(rel)) => {
                self.expected_masked_refs += 1;
                self.note_pii_names(&rel, alias.as_ref());
                let mut names = vec![];
                match &alias {
                    Some(a) => names.push(fold(a)),
                    None => {
                        if let Some(last) = name_parts(&tname).and_then(|p| p.last().cloned()) {
                            names.push(last);
                        }
                    }
                }
                for c in rel.masks.keys() {
                    self.extra_sensitive.insert(c.to_lowercase());
                }
                Some(Target {
                    names,
                    rel,
                    excluded: matches!(s, Statement::Insert(_)),
                })
            }
            None => None,
        };
        if let Some(t) = &target {
            self.check_written_columns(s, t)?;
        }
        // Expressions (functions, operators, and PII reads of the target).
        self.check(&*s, target.as_ref())?;
        // Mask reads in subqueries, FROM/USING and INSERT sources (never the target itself).
        match s {
            Statement::Insert(i) => {
                if let Some(src) = i.source.as_mut() {
                    self.substitute(&mut **src, None)?;
                }
                if let Some(on) = i.on.as_mut() {
                    self.substitute(on, None)?;
                }
                if let Some(r) = i.returning.as_mut() {
                    self.substitute(r, None)?;
                }
            }
            Statement::Update(u) => {
                let skip = &u.table.relation as *const TableFactor;
                self.substitute(u, Some(skip))?;
            }
            Statement::Delete(d) => {
                let skip = match &d.from {
                    FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => {
                        &v[0].relation as *const TableFactor
                    }
                };
                self.substitute(d, Some(skip))?;
            }
            Statement::Merge(m) => {
                let skip = &m.table as *const TableFactor;
                self.substitute(m, Some(skip))?;
            }
            _ => {}
        }
        if let Some(t) = &target {
            self.check_returning(s, t)?;
            if let Some(c) = system_column(s) {
                return Err(Refusal::new(format!(
                    "the system column {c} of {}.{} is not allowed in writes by masked roles: a row's physical position and versions depend on the raw sizes of its PII columns",
                    t.rel.schema, t.rel.name
                )));
            }
        }
        Ok(())
    }

    fn check_written_columns(&mut self, s: &Statement, t: &Target) -> Result<(), Refusal> {
        let table = format!("{}.{}", t.rel.schema, t.rel.name);
        let refuse_col = |c: &str, what: &str| {
            Refusal::new(format!(
                "{what} column {c} of {table}, which holds PII (policy {}), is not allowed for masked roles",
                t.rel.policy_table
            ))
        };
        match s {
            Statement::Insert(i) => {
                if i.columns.is_empty() {
                    return Err(Refusal::new(format!(
                        "INSERT into {table} without a column list writes every column, including PII columns"
                    ))
                    .hint("list the non-PII columns you insert"));
                }
                for c in &i.columns {
                    let n =
                        c.0.last()
                            .and_then(|p| p.as_ident())
                            .map(fold)
                            .unwrap_or_default();
                    if t.rel.is_pii(&n) {
                        return Err(refuse_col(&n, "writing"));
                    }
                }
                if let Some(OnInsert::OnConflict(oc)) = &i.on {
                    if let Some(ConflictTarget::Columns { columns: cols, .. }) = &oc.conflict_target
                    {
                        for c in cols {
                            if t.rel.is_pii(&fold(c)) {
                                return Err(refuse_col(&fold(c), "using"));
                            }
                        }
                    }
                    if let Some(ConflictTarget::OnConstraint(_)) = &oc.conflict_target {
                        return Err(Refusal::new(
                            "ON CONFLICT ON CONSTRAINT is not supported for masked roles on tables with PII; name the columns",
                        ));
                    }
                    if let OnConflictAction::DoUpdate(du) = &oc.action {
                        for a in &du.assignments {
                            for n in assignment_columns(&a.target) {
                                if t.rel.is_pii(&n) {
                                    return Err(refuse_col(&n, "writing"));
                                }
                            }
                        }
                    }
                } else if i.on.is_some() {
                    return Err(Refusal::new("this INSERT form is not supported"));
                }
            }
            Statement::Update(u) => {
                for a in &u.assignments {
                    for n in assignment_columns(&a.target) {
                        if t.rel.is_pii(&n) {
                            return Err(refuse_col(&n, "writing"));
                        }
                    }
                }
            }
            Statement::Merge(m) => {
                use sqlparser::ast::{MergeAction, MergeInsertKind, MergeUpdateKind};
                for c in &m.clauses {
                    match &c.action {
                        MergeAction::Update(u) => {
                            if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                                return Err(Refusal::new("this MERGE form is not PostgreSQL's"));
                            }
                            match &u.kind {
                                MergeUpdateKind::Set(assignments) => {
                                    for a in assignments {
                                        for n in assignment_columns(&a.target) {
                                            if t.rel.is_pii(&n) {
                                                return Err(refuse_col(&n, "writing"));
                                            }
                                        }
                                    }
                                }
                                _ => {
                                    return Err(Refusal::new(format!(
                                        "MERGE ... UPDATE SET * writes every column of {table}, including PII columns"
                                    )))
                                }
                            }
                        }
                        MergeAction::Insert(i) => {
                            if i.columns.is_empty() || !matches!(i.kind, MergeInsertKind::Values(_))
                            {
                                return Err(Refusal::new(format!(
                                    "MERGE ... INSERT into {table} without a column list writes every column, including PII columns"
                                ))
                                .hint("list the non-PII columns you insert"));
                            }
                            if i.insert_predicate.is_some() {
                                return Err(Refusal::new("this MERGE form is not PostgreSQL's"));
                            }
                            for c in &i.columns {
                                let n =
                                    c.0.last()
                                        .and_then(|p| p.as_ident())
                                        .map(fold)
                                        .unwrap_or_default();
                                if t.rel.is_pii(&n) {
                                    return Err(refuse_col(&n, "writing"));
                                }
                            }
                        }
                        MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `RETURNING *` (or `t.*`) of a masked write target would return its PII columns, which a
    /// masked role may not read (PostgreSQL denies it too): refused with the way out. Named PII
    /// columns are refused by the `Checker`.
    fn check_returning(&self, s: &Statement, t: &Target) -> Result<(), Refusal> {
        let returning = match s {
            Statement::Insert(i) => i.returning.as_ref(),
            Statement::Update(u) => u.returning.as_ref(),
            Statement::Delete(d) => d.returning.as_ref(),
            _ => None,
        };
        for it in returning.into_iter().flatten() {
            let whole = match it {
                SelectItem::Wildcard(_) => true,
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => name_parts(n)
                    .and_then(|p| p.last().cloned())
                    .is_some_and(|l| t.names.contains(&l)),
                _ => false,
            };
            if whole {
                let plain: Vec<&str> = t
                    .rel
                    .columns
                    .iter()
                    .filter(|c| !t.rel.is_pii(c))
                    .map(String::as_str)
                    .collect();
                return Err(Refusal::new(format!(
                    "RETURNING * would return the PII columns of {}.{} ({}), which masked roles may not read",
                    t.rel.schema,
                    t.rel.name,
                    t.rel.masks.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
                .hint(format!("list the columns you need: RETURNING {}", plain.join(", "))));
            }
        }
        Ok(())
    }

    fn copy(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        let Statement::Copy {
            source, to, target, ..
        } = s
        else {
            return Ok(());
        };
        if *to {
            if !matches!(target, CopyTarget::Stdout) {
                return Err(Refusal::new(
                    "COPY TO a file or program is not allowed for masked roles",
                ));
            }
            match source {
                CopySource::Query(q) => {
                    self.check(&**q, None)?;
                    self.substitute(&mut **q, None)?;
                }
                CopySource::Table {
                    table_name,
                    columns,
                } => match self.protection_with_descendants(table_name)? {
                    None => {}
                    Some(Protection::Refuse(r)) => {
                        return Err(Refusal::new(format!(
                            "COPY {table_name} TO is not allowed: {r}"
                        )))
                    }
                    Some(Protection::Mask(_)) => {
                        let cols = if columns.is_empty() {
                            "*".to_string()
                        } else {
                            columns
                                .iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        };
                        let sql = format!("SELECT {cols} FROM {table_name}");
                        let mut q = parse_query(&sql).ok_or_else(|| {
                            Refusal::new("could not rewrite COPY into a masked query")
                        })?;
                        self.substitute(&mut q, None)?;
                        *source = CopySource::Query(Box::new(q));
                        self.changed = true;
                        self.splice_ok = false;
                    }
                },
            }
        } else {
            if !matches!(target, CopyTarget::Stdin) {
                return Err(Refusal::new(
                    "COPY FROM a file or program is not allowed for masked roles",
                ));
            }
            let CopySource::Table {
                table_name,
                columns,
            } = source
            else {
                return Err(Refusal::new("unsupported COPY form"));
            };
            if let Resolved::Rel(r) = self.resolve(table_name)? {
                if let Some(why) = self.ctx.prot.catalog.risky_writes.get(&r.oid) {
                    return Err(Refusal::new(format!(
                        "COPY into {table_name} is not allowed for masked roles: {why}, which may read PII"
                    )));
                }
            }
            match self.protection(table_name)? {
                None => {}
                Some(Protection::Refuse(r)) => {
                    return Err(Refusal::new(format!(
                        "COPY {table_name} FROM is not allowed: {r}"
                    )))
                }
                Some(Protection::Mask(rel)) => {
                    if columns.is_empty() {
                        return Err(Refusal::new(format!(
                            "COPY {table_name} FROM without a column list writes PII columns"
                        ))
                        .hint("list the non-PII columns you load"));
                    }
                    for c in columns.iter() {
                        if rel.is_pii(&fold(c)) {
                            return Err(Refusal::new(format!(
                                "COPY into PII column {} of {}.{} is not allowed for masked roles",
                                fold(c),
                                rel.schema,
                                rel.name
                            )));
                        }
                    }
                    for c in rel.masks.keys() {
                        self.extra_sensitive.insert(c.to_lowercase());
                    }
                }
            }
        }
        Ok(())
    }

    fn collect_ctes(&mut self, s: &Statement) {
        struct C<'x>(&'x mut HashSet<String>);
        impl Visitor for C<'_> {
            type Break = ();
            fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                if let Some(w) = &q.with {
                    for c in &w.cte_tables {
                        self.0.insert(fold(&c.alias.name));
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let _ = s.visit(&mut C(&mut self.cte_names));
    }

    // ---------- expression checks ----------

    fn check<V: Visit + ?Sized>(
        &mut self,
        node: &V,
        target: Option<&Target>,
    ) -> Result<(), Refusal> {
        let mut c = Checker {
            st: self,
            target,
            err: None,
        };
        let _ = node.visit(&mut c);
        match c.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn check_function(&mut self, name: &ObjectName) -> Result<(), Refusal> {
        self.check_function_with(name, false)
    }

    /// `check_function`; with `settable`, `set_config` passes the list of denied functions (its
    /// setting was checked: `set_config_of_allowed_setting`), and still has to resolve to the
    /// built-in one.
    fn check_function_with(&mut self, name: &ObjectName, settable: bool) -> Result<(), Refusal> {
        let parts = name_parts(name)
            .ok_or_else(|| Refusal::new(format!("unsupported function name {name}")))?;
        let cat = &self.ctx.prot.catalog;
        let (schema, fname) = match parts.as_slice() {
            [f] => (None, f.as_str()),
            [s, f] => (Some(s.as_str()), f.as_str()),
            _ => return Err(Refusal::new(format!("unsupported function name {name}"))),
        };
        let denied = || {
            Refusal::new(format!(
                "function {fname} is not allowed for masked roles: it can run SQL given as text, read relations by name, files, large objects or settings, bypassing masking"
            ))
        };
        let user_defined = |s: &str| {
            Refusal::new(format!(
                "function {s}.{fname} is not allowed for masked roles: user-defined functions may read PII internally"
            ))
            .hint("a DBA can allow it by name in the policy's allowed_functions")
        };
        let allowed = |s: &str| {
            self.ctx
                .prot
                .allowed_functions
                .contains(&format!("{s}.{fname}"))
        };
        match schema {
            Some(s) if s == crate::control::SCHEMA || s == crate::wall::ADMIN_SCHEMA => {
                Err(Refusal::new(format!(
                    "schema {s} belongs to pgredact and is not accessible to masked roles"
                )))
            }
            Some(s) => {
                if rules::is_system_schema(s)
                    && rules::DENIED_FUNCTIONS.contains(&fname)
                    && !settable
                {
                    return Err(denied());
                }
                match cat
                    .functions
                    .get(fname)
                    .and_then(|v| v.iter().find(|(x, _)| x == s))
                {
                    Some((_, true)) => Ok(()),
                    Some(_) if allowed(s) => Ok(()),
                    Some(_) => Err(user_defined(s)),
                    None => {
                        self.unknown = true;
                        Err(Refusal::new(format!(
                            "function {s}.{fname} is not known to pgredact, so it cannot prove it safe"
                        )))
                    }
                }
            }
            None => {
                if rules::KEYWORD_FUNCTIONS.contains(&fname) {
                    return Ok(());
                }
                if rules::DENIED_FUNCTIONS.contains(&fname) && !settable {
                    return Err(denied());
                }
                let Some(entries) = cat.functions.get(fname) else {
                    self.unknown = true;
                    return Err(Refusal::new(format!(
                        "function {fname} is not known to pgredact, so it cannot prove it safe"
                    )));
                };
                // Overload resolution may pick any schema on the path: every candidate must be
                // built in or allowed.
                for s in self.ctx.search_path {
                    if let Some((_, builtin)) = entries.iter().find(|(x, _)| x == s) {
                        if !builtin && !allowed(s) {
                            return Err(user_defined(s));
                        }
                    }
                }
                Ok(())
            }
        }
    }

    // ---------- read substitution ----------

    fn substitute<V: VisitMut + ?Sized>(
        &mut self,
        node: &mut V,
        skip: Option<*const TableFactor>,
    ) -> Result<(), Refusal> {
        let mut s = Substituter {
            st: self,
            skip,
            err: None,
        };
        let _ = node.visit(&mut s);
        match s.err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn substitute_factor(&mut self, tf: &mut TableFactor) -> Result<(), Refusal> {
        let TableFactor::Table {
            name,
            alias,
            args,
            with_hints,
            version,
            partitions,
            json_path,
            sample,
            index_directives,
            inheritance,
            with_ordinality: _,
        } = tf
        else {
            if let TableFactor::Function { name, .. } = tf {
                let n = name.clone();
                self.check_function(&n)?;
            }
            return Ok(());
        };
        if args.is_some() {
            // A table function: checked as a function.
            let n = name.clone();
            return self.check_function(&n);
        }
        let parts = name_parts(name).unwrap_or_default();
        let is_cte = parts.len() == 1 && self.cte_names.contains(&parts[0]);
        let only = matches!(inheritance, Some(TableInheritance::Only { .. }));
        let unknown_before = self.unknown;
        let prot = if only {
            self.protection(name)?
        } else {
            self.protection_with_descendants(name)?
        };
        if is_cte {
            // A WITH query's name is not a catalog name: not finding it is expected.
            self.unknown = unknown_before;
            if prot.is_some() {
                return Err(Refusal::new(format!(
                    "the WITH query {} has the name of a protected relation; rename it",
                    parts[0]
                )));
            }
            return Ok(());
        }
        let rel = match prot {
            None => return Ok(()),
            Some(Protection::Refuse(reason)) => {
                return Err(Refusal::new(format!(
                    "reading {name} is not allowed for masked roles: {reason}"
                )))
            }
            Some(Protection::Mask(rel)) => rel,
        };
        if !with_hints.is_empty()
            || version.is_some()
            || !partitions.is_empty()
            || json_path.is_some()
            || sample.is_some()
            || !index_directives.is_empty()
        {
            return Err(Refusal::new(format!(
                "this form of reading {name} (TABLESAMPLE or a non-PostgreSQL table modifier) is not supported for masked roles"
            )));
        }
        // The masking view under the original alias: everything above it sees masked values.
        let view = if only {
            rel.only_view.clone()
        } else {
            rel.view.clone()
        };
        let added_alias = if alias.is_none() {
            let a = Ident::with_quote('"', parts.last().cloned().unwrap_or_default());
            *alias = Some(TableAlias {
                explicit: true,
                name: a.clone(),
                columns: vec![],
                at: None,
            });
            Some(a)
        } else {
            None
        };
        // `name*` and `ONLY (name)` without an alias have no place to splice an alias into.
        let splicable = match inheritance {
            Some(TableInheritance::IncludeDescendants) => false,
            Some(TableInheritance::Only { parenthesized }) => {
                !*parenthesized || added_alias.is_none()
            }
            None => true,
        };
        if splicable {
            let span = sqlparser::ast::Spanned::span(&*name);
            self.splices.push(Splice {
                span,
                text: match added_alias {
                    Some(a) => format!("{view} AS {a}"),
                    None => view.to_string(),
                },
            });
        } else {
            self.splice_ok = false;
        }
        self.note_pii_names(&rel, alias.as_ref().map(|a| &a.name));
        *name = view;
        *inheritance = None;
        self.expected_masked_refs += 1;
        self.changed = true;
        Ok(())
    }

    // ---------- audit ----------

    fn audit(&mut self, s: &Statement) -> Result<(), Refusal> {
        struct A<'x, 'y> {
            st: &'x mut State<'y>,
            masked: usize,
            err: Option<Refusal>,
        }
        impl Visitor for A<'_, '_> {
            type Break = ();
            fn pre_visit_relation(&mut self, rel: &ObjectName) -> ControlFlow<()> {
                let parts = name_parts(rel).unwrap_or_default();
                if parts.len() == 1 && self.st.cte_names.contains(&parts[0]) {
                    return ControlFlow::Continue(());
                }
                match self.st.protection(rel) {
                    Ok(Some(Protection::Mask(_))) => self.masked += 1,
                    Ok(Some(Protection::Refuse(r))) => {
                        self.err = Some(Refusal::new(format!(
                            "{rel} is not accessible to masked roles: {r}"
                        )));
                        return ControlFlow::Break(());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.err = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let mut a = A {
            st: self,
            masked: 0,
            err: None,
        };
        let _ = s.visit(&mut a);
        if let Some(e) = a.err {
            return Err(e);
        }
        let masked = a.masked;
        if masked > self.expected_masked_refs {
            return Err(Refusal::new(
                "statement refused: it references a masked table in a position pgredact does not handle",
            ));
        }
        Ok(())
    }
}

/// The operators an expression invokes (explicitly or through syntax such as LIKE, IN,
/// BETWEEN, CASE x WHEN) and its left operand.
fn operators_of(e: &Expr) -> (Vec<String>, Option<&Expr>) {
    let v = |ops: &[&str]| ops.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    match e {
        Expr::BinaryOp { left, op, .. } => (vec![op.to_string()], Some(&**left)),
        Expr::UnaryOp { op, .. } => (vec![op.to_string()], None),
        Expr::Like { expr, .. } => (v(&["~~", "!~~"]), Some(&**expr)),
        Expr::ILike { expr, .. } => (v(&["~~*", "!~~*"]), Some(&**expr)),
        Expr::SimilarTo { expr, .. } | Expr::RLike { expr, .. } => {
            (v(&["~", "!~", "~*", "!~*"]), Some(&**expr))
        }
        Expr::In { expr, .. } => (v(&["=", "<>"]), Some(&**expr)),
        Expr::IsDistinctFrom(l, _) | Expr::IsNotDistinctFrom(l, _) => (v(&["=", "<>"]), Some(&**l)),
        Expr::Between { expr, .. } => (v(&[">=", "<=", ">", "<"]), Some(&**expr)),
        Expr::Case {
            operand: Some(o), ..
        } => (v(&["="]), Some(&**o)),
        Expr::AnyOp {
            left, compare_op, ..
        }
        | Expr::AllOp {
            left, compare_op, ..
        } => (vec![compare_op.to_string()], Some(&**left)),
        Expr::Function(f) => {
            let n = f.name.to_string().to_ascii_lowercase();
            match n.rsplit('.').next().unwrap_or("") {
                "nullif" => (v(&["="]), None),
                "greatest" | "least" => (v(&["<", ">"]), None),
                _ => (vec![], None),
            }
        }
        _ => (vec![], None),
    }
}

/// Type categories an operand may have, when that can be told from its form; None if unknown.
fn guess_categories(cat: &crate::catalog::Catalog, e: &Expr) -> Option<HashSet<char>> {
    use sqlparser::ast::Value;
    let one = |c: char| Some(HashSet::from([c]));
    match e {
        Expr::Nested(x) => guess_categories(cat, x),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(_)
            | Value::DollarQuotedString(_)
            | Value::EscapedStringLiteral(_) => one('S'),
            Value::Number(..) => one('N'),
            Value::Boolean(_) => one('B'),
            _ => None,
        },
        Expr::Cast { data_type, .. } => {
            let t = data_type.to_string().to_lowercase();
            if t.starts_with("text")
                || t.starts_with("varchar")
                || t.starts_with("character")
                || t.starts_with("char")
            {
                one('S')
            } else if [
                "int", "bigint", "smallint", "integer", "numeric", "decimal", "real", "double",
            ]
            .iter()
            .any(|p| t.starts_with(p))
            {
                one('N')
            } else {
                None
            }
        }
        Expr::Identifier(i) => cat.column_categories.get(&fold(i)).cloned(),
        Expr::CompoundIdentifier(ids) => ids
            .last()
            .and_then(|i| cat.column_categories.get(&fold(i)).cloned()),
        Expr::Function(f) => {
            let n = f.name.to_string().to_ascii_lowercase();
            let n = n
                .rsplit('.')
                .next()
                .unwrap_or("")
                .trim_matches('"')
                .to_string();
            cat.function_categories
                .get(&n)
                .filter(|c| !c.is_empty())
                .cloned()
        }
        _ => None,
    }
}

/// The risky type a cast names, if any.
fn risky_type(cat: &crate::catalog::Catalog, dt: &sqlparser::ast::DataType) -> Option<String> {
    if cat.risky_types.is_empty() {
        return None;
    }
    let t = dt.to_string().to_lowercase();
    let base = t
        .split('(')
        .next()
        .unwrap_or("")
        .trim()
        .trim_end_matches("[]")
        .trim();
    let last = base.rsplit('.').next().unwrap_or("").trim_matches('"');
    cat.risky_types.contains(last).then(|| last.to_string())
}

/// Name, alias and ONLY-ness of the target of an UPDATE or DELETE.
fn write_target(
    tf: &TableFactor,
    verb: &str,
) -> Result<(ObjectName, Option<Ident>, bool), Refusal> {
    match tf {
        TableFactor::Table {
            name,
            alias,
            inheritance,
            ..
        } => Ok((
            name.clone(),
            alias.as_ref().map(|a| a.name.clone()),
            matches!(inheritance, Some(TableInheritance::Only { .. })),
        )),
        _ => Err(Refusal::new(format!(
            "{verb} of a derived table is not supported"
        ))),
    }
}

fn assignment_columns(t: &AssignmentTarget) -> Vec<String> {
    let last = |n: &ObjectName| {
        n.0.last()
            .and_then(|p| p.as_ident())
            .map(fold)
            .unwrap_or_default()
    };
    match t {
        AssignmentTarget::ColumnName(n) => vec![last(n)],
        AssignmentTarget::Tuple(v) => v.iter().map(last).collect(),
    }
}

/// The data-modifying statement a query's body is (`WITH ... UPDATE ...` parses as a query).
fn write_body(body: &sqlparser::ast::SetExpr) -> Option<&Statement> {
    use sqlparser::ast::SetExpr;
    match body {
        SetExpr::Insert(w) | SetExpr::Update(w) | SetExpr::Delete(w) | SetExpr::Merge(w) => Some(w),
        _ => None,
    }
}

/// Refuses query shapes whose relations are not visible as table factors: `TABLE t` inside a
/// set operation, and data-modifying statements inside WITH (a statement whose main part is a
/// write, after its WITH queries, is fine).
fn structure_check(s: &Statement) -> Result<(), Refusal> {
    let top: Option<*const Query> = match s {
        Statement::Query(q) if write_body(&q.body).is_some() => Some(&**q as *const Query),
        _ => None,
    };
    struct S(Option<Refusal>, Option<*const Query>);
    fn walk(se: &sqlparser::ast::SetExpr) -> Option<Refusal> {
        use sqlparser::ast::SetExpr;
        match se {
            SetExpr::SetOperation { left, right, .. } => walk(left).or_else(|| walk(right)),
            SetExpr::Table(_) => Some(Refusal::new(
                "TABLE inside a set operation is not supported for masked roles; write SELECT * FROM",
            )),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Some(Refusal::new(
                    "data-modifying statements inside WITH are not supported for masked roles",
                ))
            }
            _ => None,
        }
    }
    impl Visitor for S {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if self.1 == Some(q as *const Query) {
                return ControlFlow::Continue(());
            }
            if let Some(r) = walk(&q.body) {
                self.0 = Some(r);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = S(None, top);
    let _ = s.visit(&mut v);
    match v.0 {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// The first system column (`ctid`, `xmin`, `xmax`, `cmin`, `cmax`) named anywhere in `s`.
fn system_column(s: &Statement) -> Option<String> {
    struct Sys(Option<String>);
    impl Visitor for Sys {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let last = match e {
                Expr::Identifier(i) => Some(i),
                Expr::CompoundIdentifier(ids) => ids.last(),
                _ => None,
            };
            match last {
                Some(i)
                    if ["ctid", "xmin", "xmax", "cmin", "cmax"]
                        .contains(&i.value.to_ascii_lowercase().as_str()) =>
                {
                    self.0 = Some(i.value.to_ascii_lowercase());
                    ControlFlow::Break(())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    let mut v = Sys(None);
    let _ = s.visit(&mut v);
    v.0
}

/// Whether `s` may read a PII column: an identifier named like a PII column or like a masked
/// FROM item (a whole-row reference), or any `*` other than `count(*)`. Errs towards yes.
fn reads_pii(s: &Statement, names: &HashSet<String>) -> bool {
    struct R<'x>(&'x HashSet<String>);
    impl Visitor for R<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let hit = match e {
                Expr::Identifier(i) => self.0.contains(&i.value.to_lowercase()),
                // The qualifiers name FROM items; the last part is the column.
                Expr::CompoundIdentifier(ids) => ids
                    .last()
                    .is_some_and(|i| self.0.contains(&i.value.to_lowercase())),
                Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => true,
                Expr::Function(f) => matches!(&f.args, FunctionArguments::List(l)
                    if l.args.iter().any(|a| matches!(a,
                        FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(_))
                        | FunctionArg::Named { arg: FunctionArgExpr::QualifiedWildcard(_), .. }))),
                _ => false,
            };
            if hit {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn pre_visit_select(&mut self, sel: &Select) -> ControlFlow<()> {
            if sel.projection.iter().any(|i| {
                matches!(
                    i,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            }) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    !names.is_empty() && s.visit(&mut R(names)).is_break()
}

/// Counts, per lower-case name, the identifiers standing in relation or function names, aliases
/// and qualifiers: the positions the checks analyse. Both lexical cross-checks compare a text's
/// sensitive words with these counts.
fn count_positions(s: &Statement, out: &mut HashMap<String, usize>) {
    struct N<'x>(&'x mut HashMap<String, usize>);
    impl N<'_> {
        fn name(&mut self, n: &ObjectName) {
            for p in &n.0 {
                if let ObjectNamePart::Identifier(i) = p {
                    *self.0.entry(fold(i).to_lowercase()).or_default() += 1;
                }
            }
        }
    }
    impl Visitor for N<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
            self.name(r);
            ControlFlow::Continue(())
        }
        fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
            // COPY's table is handled by the COPY rules, not seen as a relation by the visitor.
            if let Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } = s
            {
                self.name(table_name);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::Function(f) => self.name(&f.name),
                // Qualifiers name FROM items, which are analysed where they are defined.
                Expr::CompoundIdentifier(ids) => {
                    for i in &ids[..ids.len().saturating_sub(1)] {
                        *self.0.entry(fold(i).to_lowercase()).or_default() += 1;
                    }
                }
                Expr::QualifiedWildcard(n, _) => self.name(n),
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
            for it in &s.projection {
                if let SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) = it
                {
                    self.name(n);
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
            let alias = match tf {
                TableFactor::Function { name, alias, .. } => {
                    self.name(name);
                    alias.as_ref()
                }
                TableFactor::Table { alias, .. } | TableFactor::Derived { alias, .. } => {
                    alias.as_ref()
                }
                _ => None,
            };
            if let Some(a) = alias {
                *self.0.entry(fold(&a.name).to_lowercase()).or_default() += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let _ = s.visit(&mut N(out));
}

/// For `TABLE [ONLY] name[;]`, the part after `TABLE`.
fn table_statement(sql: &str) -> Option<&str> {
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

fn identity_refusal(what: &str) -> Refusal {
    Refusal::new(format!(
        "{what} is not allowed for masked roles: a masked session cannot change its identity"
    ))
}

fn setting_refusal(name: &str, verb: &str) -> Refusal {
    Refusal::new(format!(
        "{verb} {name} is not allowed for masked roles: only settings that cannot affect masking may be changed"
    ))
}

fn parse_query(sql: &str) -> Option<Query> {
    let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    match stmts.pop()? {
        Statement::Query(q) => Some(*q),
        _ => None,
    }
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let mut w = text.split_whitespace();
    let first = w.next().unwrap_or("this statement").to_ascii_uppercase();
    match first.as_str() {
        "CREATE" | "ALTER" | "DROP" | "GRANT" | "REVOKE" | "COMMENT" => {
            format!("{first} {}", w.next().unwrap_or("").to_ascii_uppercase())
        }
        _ => first,
    }
}

struct Checker<'x, 'y, 't> {
    st: &'x mut State<'y>,
    target: Option<&'t Target>,
    err: Option<Refusal>,
}

impl Checker<'_, '_, '_> {
    fn fail(&mut self, r: Refusal) -> ControlFlow<()> {
        self.err = Some(r);
        ControlFlow::Break(())
    }

    fn pii_read(&self, col: &str) -> Refusal {
        let t = self
            .target
            .map(|t| format!("{}.{}", t.rel.schema, t.rel.name))
            .unwrap_or_default();
        Refusal::new(format!(
            "reading PII column {col} of {t} in a write statement is not allowed for masked roles: it would reveal PII through row counts or copies"
        ))
    }

    /// `t.*` of the write target (as a column or a function argument) reads its PII columns.
    fn target_wildcard(&mut self, t: &Target, n: &ObjectName) -> ControlFlow<()> {
        let last = name_parts(n)
            .and_then(|p| p.last().cloned())
            .unwrap_or_default();
        if self.target_names().contains(&last) {
            let r = Refusal::new(format!(
                "{last}.* reads every column of {}.{}, including PII, in a write statement",
                t.rel.schema, t.rel.name
            ));
            return self.fail(r);
        }
        ControlFlow::Continue(())
    }

    fn target_names(&self) -> Vec<String> {
        match self.target {
            Some(t) => {
                let mut v = t.names.clone();
                if t.excluded {
                    v.push("excluded".into());
                }
                v
            }
            None => vec![],
        }
    }
}

impl Visitor for Checker<'_, '_, '_> {
    type Break = ();

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        let cat = &self.st.ctx.prot.catalog;
        if !cat.user_operators.is_empty() {
            let (names, left) = operators_of(e);
            for op in names {
                let Some(cats) = cat.user_operators.get(&op) else {
                    continue;
                };
                // The user-defined variant can be chosen only if the left operand may have one
                // of its argument types (unknown operand types count as "may").
                let may = match left.map(|l| guess_categories(cat, l)) {
                    Some(Some(lc)) => lc.iter().any(|c| cats.contains(c)),
                    _ => true,
                };
                if may {
                    return self.fail(Refusal::new(format!(
                        "this expression uses operator {op}, which has a user-defined variant that may read PII; not allowed for masked roles"
                    )));
                }
            }
        }
        match e {
            Expr::Function(f) => {
                if let Err(r) = self
                    .st
                    .check_function_with(&f.name, set_config_of_allowed_setting(f))
                {
                    return self.fail(r);
                }
                if let Some(t) = self.target {
                    if let FunctionArguments::List(l) = &f.args {
                        for a in &l.args {
                            let ae = match a {
                                FunctionArg::Unnamed(x) => x,
                                FunctionArg::Named { arg, .. }
                                | FunctionArg::ExprNamed { arg, .. } => arg,
                            };
                            match ae {
                                FunctionArgExpr::QualifiedWildcard(n) => {
                                    self.target_wildcard(t, n)?;
                                }
                                FunctionArgExpr::Wildcard
                                | FunctionArgExpr::WildcardWithOptions(_) => {
                                    // count(*) and friends: no column values.
                                }
                                FunctionArgExpr::Expr(_) => {}
                            }
                        }
                    }
                }
            }
            Expr::Cast { data_type, .. }
            | Expr::TypedString(sqlparser::ast::TypedString { data_type, .. }) => {
                if let Some(t) = risky_type(&self.st.ctx.prot.catalog, data_type) {
                    return self.fail(Refusal::new(format!(
                        "casting to {t} is not allowed for masked roles: the cast or the type's constraints run user code that may read PII"
                    )));
                }
            }
            Expr::QualifiedWildcard(n, _) => {
                if let Some(t) = self.target {
                    self.target_wildcard(t, n)?;
                }
            }
            Expr::BinaryOp {
                op: BinaryOperator::PGCustomBinaryOperator(parts),
                ..
            } if !(parts.len() == 2 && parts[0].eq_ignore_ascii_case("pg_catalog")) => {
                return self.fail(Refusal::new(format!(
                    "OPERATOR({}) outside pg_catalog may run user code; not allowed for masked roles",
                    parts.join(".")
                )));
            }
            Expr::Identifier(id) => {
                if let Some(t) = self.target {
                    let f = fold(id);
                    if t.rel.is_pii(&f) {
                        let r = self.pii_read(&f);
                        return self.fail(r);
                    }
                    if self.target_names().contains(&f) {
                        let r = Refusal::new(format!(
                            "the whole-row reference {f} reads every column of {}.{}, including PII, in a write statement",
                            t.rel.schema, t.rel.name
                        ));
                        return self.fail(r);
                    }
                }
            }
            Expr::CompoundIdentifier(ids) => {
                if let Some(t) = self.target {
                    let names = self.target_names();
                    let parts: Vec<String> = ids.iter().map(fold).collect();
                    for w in parts.windows(2) {
                        if names.contains(&w[0]) && t.rel.is_pii(&w[1]) {
                            let r = self.pii_read(&w[1]);
                            return self.fail(r);
                        }
                    }
                    if parts.len() == 1 && names.contains(&parts[0]) {
                        let r = self.pii_read("*");
                        return self.fail(r);
                    }
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if let Some(t) = self.target {
            let names = self.target_names();
            for it in &s.projection {
                if let SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) = it
                {
                    let last = name_parts(n)
                        .and_then(|p| p.last().cloned())
                        .unwrap_or_default();
                    if names.contains(&last) {
                        let r = Refusal::new(format!(
                            "{last}.* reads every column of {}.{}, including PII, in a write statement",
                            t.rel.schema, t.rel.name
                        ));
                        return self.fail(r);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        if let TableFactor::Function { name, .. } = tf {
            if let Err(r) = self.st.check_function(name) {
                return self.fail(r);
            }
        }
        if let TableFactor::Table {
            name,
            args: Some(_),
            ..
        } = tf
        {
            if let Err(r) = self.st.check_function(name) {
                return self.fail(r);
            }
        }
        ControlFlow::Continue(())
    }
}

struct Substituter<'x, 'y> {
    st: &'x mut State<'y>,
    skip: Option<*const TableFactor>,
    err: Option<Refusal>,
}

impl VisitorMut for Substituter<'_, '_> {
    type Break = ();

    fn post_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<()> {
        if self.skip == Some(tf as *const TableFactor) {
            return ControlFlow::Continue(());
        }
        if let TableFactor::Table { args: Some(_), .. } | TableFactor::Function { .. } = tf {
            // Table functions were checked by the Checker.
            return ControlFlow::Continue(());
        }
        match self.st.substitute_factor(tf) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => {
                self.err = Some(r);
                ControlFlow::Break(())
            }
        }
    }
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

//! Dispatch by statement kind: what each kind of statement may do in a masked session.

use super::checks::{reads_pii, risky_type};
use super::protect::{self, Protection};
use super::refusal::{Refusal, RefusalKind};
use super::search_path;
use super::settings::{discard, reset};
use super::write::{system_column, write_body};
use super::State;
use sqlparser::ast::{
    CreateTable, Declare, Expr, Ident, Query, SetExpr, Statement, UtilityOption, Visit, Visitor,
};
use std::collections::HashSet;
use std::ops::ControlFlow;

impl State<'_> {
    /// Checks one statement by kind and masks its reads in place.
    pub(super) fn statement(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        self.collect_ctes(s);
        if search_path::restrict_relkind_without_views(s) {
            self.changed = true;
            self.splice_ok = false;
            return Ok(());
        }
        let masked_before = self.expected_masked_refs;
        match s {
            Statement::Query(q) if write_body(&q.body).is_some() => self.query_with_write(q)?,
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
            } => self.explain(statement, analyze, options)?,
            Statement::Prepare { statement, .. } => self.prepare(statement)?,
            Statement::Execute { .. } | Statement::Deallocate { .. } => self.check(&*s, None)?,
            Statement::Declare { stmts, .. } => self.declare(stmts)?,
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
            Statement::Reset(r) => reset(r, self.ctx.path_at_start)?,
            Statement::Discard { object_type } => discard(object_type, self.ctx.path_at_start)?,
            Statement::CreateTable(ct) => self.create_table(ct)?,
            Statement::Lock(l) => self.lock(l)?,
            Statement::Drop { .. } | Statement::Truncate(_) => {}
            Statement::LISTEN { .. } => {
                return Err(Refusal::new(RefusalKind::Listen,
                    "LISTEN is not allowed for masked roles: notification payloads from other sessions are not masked",
                ))
            }
            Statement::Merge(_) => self.write(s)?,
            Statement::Call(_) => {
                return Err(Refusal::new(RefusalKind::Function,
                    "CALL is not allowed for masked roles: procedures may read PII internally",
                ))
            }
            other => {
                let kind = statement_kind(other);
                return Err(Refusal::new(RefusalKind::StatementKind, format!(
                    "{kind} is not allowed for masked roles: pgredact only lets through statements it can prove do not reveal PII"
                )));
            }
        }
        // A query that reads a table with PII, through its masking view, cannot name the
        // table's system columns (the view has none): refused with the reason, instead of
        // PostgreSQL's "column does not exist". (System column names cannot be user columns.)
        if self.names_system_column
            && self.expected_masked_refs > masked_before
            && matches!(s, Statement::Query(_))
        {
            if let Some(c) = system_column(s) {
                return Err(Refusal::new(RefusalKind::Other, format!(
                    "the system column {c} is not available to masked roles in a query that reads a table with PII: a row's physical position, versions and partition depend on its raw values"
                )));
            }
        }
        Ok(())
    }

    /// WITH ... INSERT/UPDATE/DELETE: the WITH queries are reads (masked), the main statement is
    /// a write under the write rules.
    fn query_with_write(&mut self, q: &mut Query) -> Result<(), Refusal> {
        if let Some(w) = q.with.as_mut() {
            for cte in w.cte_tables.iter_mut() {
                self.check(&*cte.query, None)?;
                self.substitute(&mut *cte.query, None)?;
            }
        }
        if q.order_by.is_some() || q.limit_clause.is_some() || q.fetch.is_some() {
            return Err(Refusal::new(
                RefusalKind::Unsupported,
                "ORDER BY or LIMIT on a data-modifying statement is not supported",
            ));
        }
        match &mut *q.body {
            SetExpr::Insert(w) | SetExpr::Update(w) | SetExpr::Delete(w) | SetExpr::Merge(w) => {
                self.statement(w)
            }
            _ => Ok(()),
        }
    }

    fn explain(
        &mut self,
        statement: &mut Statement,
        analyze: &bool,
        options: &mut Option<Vec<UtilityOption>>,
    ) -> Result<(), Refusal> {
        if matches!(statement, Statement::Explain { .. }) {
            return Err(Refusal::new(
                RefusalKind::Explain,
                "nested EXPLAIN is not supported",
            ));
        }
        self.pii_names = Some(HashSet::new());
        self.statement(statement)?;
        let names = self.pii_names.take().unwrap_or_default();
        if reads_pii(statement, &names) {
            self.explain_shape_only(analyze, options)?;
        }
        Ok(())
    }

    fn prepare(&mut self, statement: &mut Statement) -> Result<(), Refusal> {
        if !matches!(
            statement,
            Statement::Query(_)
                | Statement::Insert(_)
                | Statement::Update(_)
                | Statement::Delete(_)
        ) {
            return Err(Refusal::new(
                RefusalKind::Unsupported,
                "PREPARE of this statement kind is not supported for masked roles",
            ));
        }
        self.statement(statement)
    }

    fn declare(&mut self, stmts: &mut [Declare]) -> Result<(), Refusal> {
        for d in stmts.iter_mut() {
            match d.for_query.as_mut() {
                Some(q) => {
                    self.check(&**q, None)?;
                    self.substitute(&mut **q, None)?;
                }
                None => {
                    return Err(Refusal::new(
                        RefusalKind::Other,
                        "only DECLARE ... CURSOR FOR <query> is supported for masked roles",
                    ))
                }
            }
        }
        Ok(())
    }

    fn create_table(&mut self, ct: &mut CreateTable) -> Result<(), Refusal> {
        if ct.like.is_some()
            || ct.clone.is_some()
            || ct.inherits.is_some()
            || ct.partition_of.is_some()
        {
            return Err(Refusal::new(
                RefusalKind::StatementKind,
                "CREATE TABLE with LIKE, INHERITS or PARTITION OF is not allowed for masked roles",
            ));
        }
        for c in &ct.columns {
            if let Some(t) = risky_type(&self.ctx.prot.catalog, &c.data_type) {
                return Err(Refusal::new(RefusalKind::Function, format!(
                    "a column of type {t} is not allowed for masked roles: its constraints run user code that may read PII"
                )));
            }
        }
        self.check(&*ct, None)?;
        if let Some(q) = ct.query.as_mut() {
            self.substitute(&mut **q, None)?;
        }
        Ok(())
    }

    /// EXPLAIN of a statement that reads PII shows the plan's shape only: the planner works on
    /// the raw columns under each mask, so its estimates (row counts of GROUP BY or DISTINCT,
    /// widths) come from the raw columns' statistics, and ANALYZE's memory and cache counters
    /// from raw values. ANALYZE is refused; COSTS is switched off.
    pub(super) fn explain_shape_only(
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
            return Err(Refusal::new(RefusalKind::Explain,
                "EXPLAIN ANALYZE of a statement that reads a table with PII is not allowed for masked roles: its row counts and cache counters are counted on the raw values",
            )
            .hint("EXPLAIN without ANALYZE shows the plan's shape"));
        }
        if opts.iter().any(|o| named(o, "costs") && !off(o)) {
            return Err(Refusal::new(RefusalKind::Explain,
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
    pub(super) fn lock(&mut self, l: &mut sqlparser::ast::Lock) -> Result<(), Refusal> {
        use sqlparser::ast::LockTableMode;
        if l.lock_mode != Some(LockTableMode::AccessShare) {
            return Err(Refusal::new(RefusalKind::Other,
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
                    return Err(Refusal::new(
                        RefusalKind::StatementKind,
                        format!("LOCK TABLE {} is not allowed for masked roles: {r}", t.name),
                    ))
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

    pub(super) fn note_pii_names(&mut self, rel: &protect::MaskedRel, alias: Option<&Ident>) {
        let Some(names) = self.pii_names.as_mut() else {
            return;
        };
        names.extend(rel.masks.keys().map(|c| c.to_lowercase()));
        names.insert(rel.name.to_lowercase());
        if let Some(a) = alias {
            names.insert(a.value.to_lowercase());
        }
    }
}

/// Refuses query shapes whose relations are not visible as table factors: `TABLE t` inside a
/// set operation, and data-modifying statements inside WITH (a statement whose main part is a
/// write, after its WITH queries, is fine).
pub(super) fn structure_check(s: &Statement) -> Result<(), Refusal> {
    let top: Option<*const Query> = match s {
        Statement::Query(q) if write_body(&q.body).is_some() => Some(&**q as *const Query),
        _ => None,
    };
    /// Breaks on the first query (other than `top`) of a refused shape.
    struct StructureCheck {
        top: Option<*const Query>,
    }
    fn walk(se: &SetExpr) -> Option<Refusal> {
        match se {
            SetExpr::SetOperation { left, right, .. } => walk(left).or_else(|| walk(right)),
            SetExpr::Table(_) => Some(Refusal::new(RefusalKind::Unsupported,
                "TABLE inside a set operation is not supported for masked roles; write SELECT * FROM",
            )),
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                Some(Refusal::new(RefusalKind::Unsupported,
                    "data-modifying statements inside WITH are not supported for masked roles",
                ))
            }
            _ => None,
        }
    }
    impl Visitor for StructureCheck {
        type Break = Refusal;
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<Refusal> {
            if self.top == Some(q as *const Query) {
                return ControlFlow::Continue(());
            }
            match walk(&q.body) {
                Some(r) => ControlFlow::Break(r),
                None => ControlFlow::Continue(()),
            }
        }
    }
    match s.visit(&mut StructureCheck { top }) {
        ControlFlow::Break(r) => Err(r),
        ControlFlow::Continue(()) => Ok(()),
    }
}

pub(super) fn statement_kind(s: &Statement) -> String {
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

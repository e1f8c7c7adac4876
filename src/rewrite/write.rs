//! INSERT, UPDATE, DELETE and MERGE: write targets, written columns and RETURNING.

use super::names::{fold, name_parts, Resolved};
use super::protect::{MaskedRel, Protection};
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{
    Assignment, AssignmentTarget, ConflictTarget, Expr, FromTable, Ident, Insert, Merge,
    ObjectName, OnConflictAction, OnInsert, SelectItem, SelectItemQualifiedWildcardKind, Statement,
    TableFactor, TableInheritance, TableObject, Visit, Visitor,
};
use std::ops::ControlFlow;
use std::sync::Arc;

/// The write target of an INSERT/UPDATE/DELETE on a masked relation.
pub(super) struct Target {
    pub(super) names: Vec<String>,
    pub(super) rel: Arc<MaskedRel>,
    /// INSERT: `excluded` also names the proposed row.
    pub(super) excluded: bool,
}

impl State<'_> {
    /// INSERT, UPDATE, DELETE or MERGE: the target's protection decides which of its columns the
    /// statement may write and read; reads of other relations are masked.
    pub(super) fn write(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        let Some((tname, alias, only)) = target_name(s)? else {
            return Ok(());
        };
        let target = self.write_target(s, &tname, alias.as_ref(), only)?;
        if let Some(t) = &target {
            check_written_columns(s, t)?;
        }
        // Expressions (functions, operators, and PII reads of the target).
        self.check(&*s, target.as_ref())?;
        self.substitute_write_reads(s)?;
        if let Some(t) = &target {
            self.check_returning(s, t)?;
            if let Some(c) = system_column(s) {
                return Err(Refusal::new(RefusalKind::Other, format!(
                    "the system column {c} of {}.{} is not allowed in writes by masked roles: a row's physical position and versions depend on the raw sizes of its PII columns",
                    t.rel.schema, t.rel.name
                )));
            }
        }
        Ok(())
    }

    /// The protection of the write target: refused, a masked `Target`, or None (unprotected).
    fn write_target(
        &mut self,
        s: &Statement,
        tname: &ObjectName,
        alias: Option<&Ident>,
        only: bool,
    ) -> Result<Option<Target>, Refusal> {
        let prot = if only {
            self.protection(tname)?
        } else {
            self.protection_with_descendants(tname)?
        };
        if let Resolved::Rel(r) = self.resolve(tname)? {
            if let Some(why) = self.ctx.prot.catalog.risky_writes.get(&r.oid) {
                return Err(Refusal::new(
                    RefusalKind::WriteTarget,
                    format!(
                    "writing to {tname} is not allowed for masked roles: {why}, which may read PII"
                ),
                ));
            }
        }
        match prot {
            Some(Protection::Refuse(reason)) => Err(Refusal::new(
                RefusalKind::WriteTarget,
                format!("writing to {tname} is not allowed for masked roles: {reason}"),
            )),
            Some(Protection::Mask(rel)) => {
                self.expected_masked_refs += 1;
                self.note_pii_names(&rel, alias);
                let mut names = vec![];
                match alias {
                    Some(a) => names.push(fold(a)),
                    None => {
                        if let Some(last) = name_parts(tname).and_then(|p| p.last().cloned()) {
                            names.push(last);
                        }
                    }
                }
                for c in rel.masks.keys() {
                    self.extra_sensitive.insert(c.to_lowercase());
                }
                Ok(Some(Target {
                    names,
                    rel,
                    excluded: matches!(s, Statement::Insert(_)),
                }))
            }
            None => Ok(None),
        }
    }

    /// Masks reads in subqueries, FROM/USING and INSERT sources (never the target itself).
    fn substitute_write_reads(&mut self, s: &mut Statement) -> Result<(), Refusal> {
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
        Ok(())
    }

    /// `RETURNING *` (or `t.*`) of a masked write target would return its PII columns, which a
    /// masked role may not read (PostgreSQL denies it too): refused with the way out. Named PII
    /// columns are refused by the `Checker`.
    pub(super) fn check_returning(&self, s: &Statement, t: &Target) -> Result<(), Refusal> {
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
                return Err(Refusal::new(RefusalKind::PiiRead, format!(
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
}

/// Name, alias and ONLY-ness of the target of a data-modifying statement; None for other
/// statements.
fn target_name(s: &Statement) -> Result<Option<(ObjectName, Option<Ident>, bool)>, Refusal> {
    let found = match s {
        Statement::Insert(i) => match &i.table {
            TableObject::TableName(n) => (
                n.clone(),
                i.table_alias.as_ref().map(|a| a.alias.clone()),
                i.on.is_none(),
            ),
            _ => {
                return Err(Refusal::new(
                    RefusalKind::Function,
                    "INSERT INTO a table function is not supported",
                ))
            }
        },
        Statement::Update(u) => {
            if !u.table.joins.is_empty() {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    "UPDATE with joins in the target is not supported",
                ));
            }
            table_factor_target(&u.table.relation, "UPDATE")?
        }
        Statement::Delete(d) => {
            let from = match &d.from {
                FromTable::WithFromKeyword(v) | FromTable::WithoutKeyword(v) => v,
            };
            if !d.tables.is_empty() || from.len() != 1 || !from[0].joins.is_empty() {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    "DELETE from several tables is not supported",
                ));
            }
            table_factor_target(&from[0].relation, "DELETE")?
        }
        Statement::Merge(m) => {
            if m.output.is_some() {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    "MERGE with an OUTPUT clause is not supported",
                ));
            }
            table_factor_target(&m.table, "MERGE")?
        }
        _ => return Ok(None),
    };
    Ok(Some(found))
}

/// Refuses writes of the target's PII columns (and INSERTs that write every column).
fn check_written_columns(s: &Statement, t: &Target) -> Result<(), Refusal> {
    match s {
        Statement::Insert(i) => check_insert_columns(i, t),
        Statement::Update(u) => check_assignments(&u.assignments, t),
        Statement::Merge(m) => check_merge_columns(m, t),
        _ => Ok(()),
    }
}

fn qualified(t: &Target) -> String {
    format!("{}.{}", t.rel.schema, t.rel.name)
}

fn refuse_column(t: &Target, c: &str, what: &str) -> Refusal {
    Refusal::new(
        RefusalKind::PiiWrite,
        format!(
            "{what} column {c} of {}, which holds PII (policy {}), is not allowed for masked roles",
            qualified(t),
            t.rel.policy_table
        ),
    )
}

/// The folded last part of a column name (empty when it is not an identifier).
fn column_name(n: &ObjectName) -> String {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(fold)
        .unwrap_or_default()
}

fn check_assignments(assignments: &[Assignment], t: &Target) -> Result<(), Refusal> {
    for a in assignments {
        for n in assignment_columns(&a.target) {
            if t.rel.is_pii(&n) {
                return Err(refuse_column(t, &n, "writing"));
            }
        }
    }
    Ok(())
}

fn check_insert_columns(i: &Insert, t: &Target) -> Result<(), Refusal> {
    if i.columns.is_empty() {
        return Err(Refusal::new(
            RefusalKind::PiiWrite,
            format!(
                "INSERT into {} without a column list writes every column, including PII columns",
                qualified(t)
            ),
        )
        .hint("list the non-PII columns you insert"));
    }
    for c in &i.columns {
        let n = column_name(c);
        if t.rel.is_pii(&n) {
            return Err(refuse_column(t, &n, "writing"));
        }
    }
    if let Some(OnInsert::OnConflict(oc)) = &i.on {
        if let Some(ConflictTarget::Columns { columns: cols, .. }) = &oc.conflict_target {
            for c in cols {
                if t.rel.is_pii(&fold(c)) {
                    return Err(refuse_column(t, &fold(c), "using"));
                }
            }
        }
        if let Some(ConflictTarget::OnConstraint(_)) = &oc.conflict_target {
            return Err(Refusal::new(RefusalKind::Unsupported,
                "ON CONFLICT ON CONSTRAINT is not supported for masked roles on tables with PII; name the columns",
            ));
        }
        if let OnConflictAction::DoUpdate(du) = &oc.action {
            check_assignments(&du.assignments, t)?;
        }
    } else if i.on.is_some() {
        return Err(Refusal::new(
            RefusalKind::Unsupported,
            "this INSERT form is not supported",
        ));
    }
    Ok(())
}

fn check_merge_columns(m: &Merge, t: &Target) -> Result<(), Refusal> {
    use sqlparser::ast::{MergeAction, MergeInsertKind, MergeUpdateKind};
    for c in &m.clauses {
        match &c.action {
            MergeAction::Update(u) => {
                if u.update_predicate.is_some() || u.delete_predicate.is_some() {
                    return Err(Refusal::new(
                        RefusalKind::Other,
                        "this MERGE form is not PostgreSQL's",
                    ));
                }
                match &u.kind {
                    MergeUpdateKind::Set(assignments) => check_assignments(assignments, t)?,
                    _ => {
                        return Err(Refusal::new(
                            RefusalKind::PiiWrite,
                            format!(
                        "MERGE ... UPDATE SET * writes every column of {}, including PII columns",
                        qualified(t)
                    ),
                        ))
                    }
                }
            }
            MergeAction::Insert(i) => {
                if i.columns.is_empty() || !matches!(i.kind, MergeInsertKind::Values(_)) {
                    return Err(Refusal::new(RefusalKind::PiiWrite, format!(
                        "MERGE ... INSERT into {} without a column list writes every column, including PII columns",
                        qualified(t)
                    ))
                    .hint("list the non-PII columns you insert"));
                }
                if i.insert_predicate.is_some() {
                    return Err(Refusal::new(
                        RefusalKind::Other,
                        "this MERGE form is not PostgreSQL's",
                    ));
                }
                for c in &i.columns {
                    let n = column_name(c);
                    if t.rel.is_pii(&n) {
                        return Err(refuse_column(t, &n, "writing"));
                    }
                }
            }
            MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
        }
    }
    Ok(())
}

/// Name, alias and ONLY-ness of the target of an UPDATE or DELETE.
fn table_factor_target(
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
        _ => Err(Refusal::new(
            RefusalKind::Unsupported,
            format!("{verb} of a derived table is not supported"),
        )),
    }
}

fn assignment_columns(t: &AssignmentTarget) -> Vec<String> {
    match t {
        AssignmentTarget::ColumnName(n) => vec![column_name(n)],
        AssignmentTarget::Tuple(v) => v.iter().map(column_name).collect(),
    }
}

/// The data-modifying statement a query's body is (`WITH ... UPDATE ...` parses as a query).
pub(super) fn write_body(body: &sqlparser::ast::SetExpr) -> Option<&Statement> {
    use sqlparser::ast::SetExpr;
    match body {
        SetExpr::Insert(w) | SetExpr::Update(w) | SetExpr::Delete(w) | SetExpr::Merge(w) => Some(w),
        _ => None,
    }
}

/// The first system column (`ctid`, `xmin`, `xmax`, `cmin`, `cmax`) named anywhere in `s`.
pub(super) fn system_column(s: &Statement) -> Option<String> {
    /// Breaks with the first system column named.
    struct SystemColumnFinder;
    impl Visitor for SystemColumnFinder {
        type Break = String;
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<String> {
            let last = match e {
                Expr::Identifier(i) => Some(i),
                Expr::CompoundIdentifier(ids) => ids.last(),
                _ => None,
            };
            match last {
                Some(i)
                    if ["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"]
                        .contains(&i.value.to_ascii_lowercase().as_str()) =>
                {
                    ControlFlow::Break(i.value.to_ascii_lowercase())
                }
                _ => ControlFlow::Continue(()),
            }
        }
    }
    s.visit(&mut SystemColumnFinder).break_value()
}

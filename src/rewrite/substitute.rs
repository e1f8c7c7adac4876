//! Read substitution: every masked relation read becomes its masking view.

use super::names::name_parts;
use super::parse::{parse_query, Splice};
use super::protect::{MaskedRel, Protection};
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{
    Expr, Ident, ObjectName, TableAlias, TableFactor, TableInheritance, TableSampleKind,
    TableSampleMethod, TableSampleModifier, Value, VisitMut, VisitorMut,
};
use std::ops::ControlFlow;

impl State<'_> {
    pub(super) fn substitute<V: VisitMut + ?Sized>(
        &mut self,
        node: &mut V,
        skip: Option<*const TableFactor>,
    ) -> Result<(), Refusal> {
        match node.visit(&mut Substituter { st: self, skip }) {
            ControlFlow::Break(r) => Err(r),
            ControlFlow::Continue(()) => Ok(()),
        }
    }

    // Long: the checks of one table reference, in order, share the fields destructured at
    // the top (and the TABLESAMPLE rewrite replaces the factor they came from).
    pub(super) fn substitute_factor(&mut self, tf: &mut TableFactor) -> Result<(), Refusal> {
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
                return Err(Refusal::new(
                    RefusalKind::AmbiguousName,
                    format!(
                        "the WITH query {} has the name of a protected relation; rename it",
                        parts[0]
                    ),
                ));
            }
            return Ok(());
        }
        let rel = match prot {
            None => return Ok(()),
            Some(Protection::Refuse(reason)) => {
                return Err(Refusal::new(
                    RefusalKind::CatalogObject,
                    format!("reading {name} is not allowed for masked roles: {reason}"),
                ))
            }
            Some(Protection::Mask(rel)) => rel,
        };
        if !with_hints.is_empty()
            || version.is_some()
            || !partitions.is_empty()
            || json_path.is_some()
            || !index_directives.is_empty()
        {
            return Err(Refusal::new(RefusalKind::Unsupported, format!(
                "this form of reading {name} (a non-PostgreSQL table modifier) is not supported for masked roles"
            )));
        }
        let fraction = match sample.as_ref() {
            Some(s) => Some(sample_fraction(s, name)?),
            None => None,
        };
        self.put_view(&rel, only, &parts, name, alias, inheritance);
        if let Some(fraction) = fraction {
            // TABLESAMPLE applies to tables, not views: the view is read in a derived table that
            // keeps each row with the sample's probability (BERNOULLI's definition). A function,
            // not an operator: nothing in the session's search path can redirect it.
            let view = name.to_string();
            let alias = alias.take();
            let Some(subquery) = parse_query(&format!(
                "SELECT * FROM {view} WHERE pg_catalog.float8lt(pg_catalog.random(), {fraction})"
            )) else {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    format!("TABLESAMPLE on {view} could not be rewritten"),
                ));
            };
            *tf = TableFactor::Derived {
                lateral: false,
                subquery: Box::new(subquery),
                alias,
                sample: None,
            };
            self.splice_ok = false;
        }
        Ok(())
    }

    /// Replaces the relation name by its masking view under the original alias (everything above
    /// it sees masked values), and notes the splice of the client's text that does the same.
    fn put_view(
        &mut self,
        rel: &MaskedRel,
        only: bool,
        parts: &[String],
        name: &mut ObjectName,
        alias: &mut Option<TableAlias>,
        inheritance: &mut Option<TableInheritance>,
    ) {
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
        self.note_pii_names(rel, alias.as_ref().map(|a| &a.name));
        *name = view;
        *inheritance = None;
        self.expected_masked_refs += 1;
        self.changed = true;
    }
}

/// Puts the masking view in place of every masked relation read (each table factor after its
/// children); breaks with the first refusal. `skip` is the write target, which stays as written.
pub(super) struct Substituter<'x, 'y> {
    st: &'x mut State<'y>,
    skip: Option<*const TableFactor>,
}

impl VisitorMut for Substituter<'_, '_> {
    type Break = Refusal;

    fn post_visit_table_factor(&mut self, tf: &mut TableFactor) -> ControlFlow<Refusal> {
        if self.skip == Some(tf as *const TableFactor) {
            return ControlFlow::Continue(());
        }
        if let TableFactor::Table { args: Some(_), .. } | TableFactor::Function { .. } = tf {
            // Table functions were checked by the Checker.
            return ControlFlow::Continue(());
        }
        match self.st.substitute_factor(tf) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => ControlFlow::Break(r),
        }
    }
}

/// The probability of keeping a row for `TABLESAMPLE BERNOULLI (p)` or `SYSTEM (p)` with a
/// literal percentage, as SQL text. SYSTEM samples whole pages; over a masking view it is read
/// as BERNOULLI (each row on its own), which gives the same expected share. `REPEATABLE` is
/// refused: a masking view cannot reproduce PostgreSQL's seeded sample.
fn sample_fraction(s: &TableSampleKind, name: &ObjectName) -> Result<String, Refusal> {
    let (TableSampleKind::BeforeTableAlias(t) | TableSampleKind::AfterTableAlias(t)) = s;
    let refuse = |why: &str| {
        Refusal::new(
            RefusalKind::Unsupported,
            format!("TABLESAMPLE on {name}: {why} is not supported for masked roles (it reads through a masking view)"),
        )
        .hint("use TABLESAMPLE BERNOULLI (p) or SYSTEM (p) with a literal percentage")
    };
    if t.modifier != TableSampleModifier::TableSample
        || !matches!(
            t.name,
            Some(TableSampleMethod::Bernoulli | TableSampleMethod::System)
        )
        || t.bucket.is_some()
        || t.offset.is_some()
    {
        return Err(refuse("this sampling method"));
    }
    if t.seed.is_some() {
        return Err(refuse("REPEATABLE"));
    }
    let Some(q) = &t.quantity else {
        return Err(refuse("a sample without a percentage"));
    };
    let pct = match (&q.value, &q.unit) {
        (Expr::Value(v), None) => match &v.value {
            Value::Number(n, _) => n.parse::<f64>().ok(),
            _ => None,
        },
        _ => None,
    };
    match pct {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(format!("{}", p / 100.0)),
        _ => Err(refuse(
            "a percentage that is not a literal number from 0 to 100",
        )),
    }
}

//! Read substitution: every masked relation read becomes its masking view.

use super::names::name_parts;
use super::parse::Splice;
use super::protect::{MaskedRel, Protection};
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{
    Ident, ObjectName, TableAlias, TableFactor, TableInheritance, VisitMut, VisitorMut,
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
            || sample.is_some()
            || !index_directives.is_empty()
        {
            return Err(Refusal::new(RefusalKind::Unsupported, format!(
                "this form of reading {name} (TABLESAMPLE or a non-PostgreSQL table modifier) is not supported for masked roles"
            )));
        }
        self.put_view(&rel, only, &parts, name, alias, inheritance);
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

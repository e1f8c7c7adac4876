//! The independent audit of the final statement, and the count of analysed name positions.

use super::names::{fold, name_parts};
use super::protect::Protection;
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{
    CopySource, Expr, ObjectName, ObjectNamePart, Select, SelectItem,
    SelectItemQualifiedWildcardKind, Statement, TableFactor, Visit, Visitor,
};
use std::collections::HashMap;
use std::ops::ControlFlow;

impl State<'_> {
    pub(super) fn audit(&mut self, s: &Statement) -> Result<(), Refusal> {
        /// Counts the masked relations the statement names; breaks on a refused one.
        struct RelationAuditor<'x, 'y> {
            st: &'x mut State<'y>,
            masked: usize,
        }
        impl Visitor for RelationAuditor<'_, '_> {
            type Break = Refusal;
            fn pre_visit_relation(&mut self, rel: &ObjectName) -> ControlFlow<Refusal> {
                let parts = name_parts(rel).unwrap_or_default();
                if parts.len() == 1 && self.st.cte_names.contains(&parts[0]) {
                    return ControlFlow::Continue(());
                }
                match self.st.protection(rel) {
                    Ok(Some(Protection::Mask(_))) => self.masked += 1,
                    Ok(Some(Protection::Refuse(r))) => {
                        return ControlFlow::Break(Refusal::new(
                            RefusalKind::CatalogObject,
                            format!("{rel} is not accessible to masked roles: {r}"),
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => return ControlFlow::Break(e),
                }
                ControlFlow::Continue(())
            }
        }
        let mut a = RelationAuditor {
            st: self,
            masked: 0,
        };
        if let ControlFlow::Break(e) = s.visit(&mut a) {
            return Err(e);
        }
        let masked = a.masked;
        if masked > self.expected_masked_refs {
            return Err(Refusal::new(RefusalKind::Unsupported,
                "statement refused: it references a masked table in a position pgredact does not handle",
            ));
        }
        Ok(())
    }
}

/// Counts, per lower-case name, the identifiers standing in relation or function names, aliases
/// and qualifiers: the positions the checks analyse. Both lexical cross-checks compare a text's
/// sensitive words with these counts.
pub(super) fn count_positions(s: &Statement, out: &mut HashMap<String, usize>) {
    struct PositionCounter<'x>(&'x mut HashMap<String, usize>);
    impl PositionCounter<'_> {
        fn name(&mut self, n: &ObjectName) {
            for p in &n.0 {
                if let ObjectNamePart::Identifier(i) = p {
                    *self.0.entry(fold(i).to_lowercase()).or_default() += 1;
                }
            }
        }
    }
    impl Visitor for PositionCounter<'_> {
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
    let _ = s.visit(&mut PositionCounter(out));
}

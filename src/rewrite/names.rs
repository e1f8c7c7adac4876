//! Names as PostgreSQL reads them (folding, truncation) and their resolution to catalog
//! relations and protections along the session's search path.

use super::protect::Protection;
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{Ident, ObjectName, ObjectNamePart, Query, Statement, Visit, Visitor};
use std::collections::HashSet;
use std::ops::ControlFlow;

/// PostgreSQL keeps at most this many bytes of an identifier (NAMEDATALEN - 1).
pub(super) const MAX_IDENT: usize = 63;

/// Truncates a name the way PostgreSQL does (at a character boundary, at most 63 bytes).
pub(super) fn truncate_ident(mut s: String) -> String {
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
pub(super) fn fold(id: &Ident) -> String {
    truncate_ident(if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_ascii_lowercase()
    })
}

pub(super) fn name_parts(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            _ => None,
        })
        .collect()
}

pub(super) enum Resolved<'c> {
    Rel(&'c crate::catalog::Relation),
    Unknown,
    /// Names another database: PostgreSQL refuses it.
    Foreign,
}

impl<'a> State<'a> {
    pub(super) fn resolve(&mut self, name: &ObjectName) -> Result<Resolved<'a>, Refusal> {
        let cat: &'a crate::catalog::Catalog = &self.ctx.prot.catalog;
        let parts = name_parts(name).ok_or_else(|| {
            Refusal::new(
                RefusalKind::Unsupported,
                format!("unsupported relation name {name}"),
            )
        })?;
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
                        return Err(Refusal::new(RefusalKind::AmbiguousName, format!(
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
            _ => {
                return Err(Refusal::new(
                    RefusalKind::Unsupported,
                    format!("unsupported relation name {name}"),
                ))
            }
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
    pub(super) fn protection_with_descendants(
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

    pub(super) fn protection(&mut self, name: &ObjectName) -> Result<Option<Protection>, Refusal> {
        match self.resolve(name)? {
            Resolved::Rel(r) => Ok(self.ctx.prot.get(r).cloned()),
            Resolved::Unknown | Resolved::Foreign => Ok(None),
        }
    }

    pub(super) fn collect_ctes(&mut self, s: &Statement) {
        struct CteCollector<'x>(&'x mut HashSet<String>);
        impl Visitor for CteCollector<'_> {
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
        let _ = s.visit(&mut CteCollector(&mut self.cte_names));
    }
}

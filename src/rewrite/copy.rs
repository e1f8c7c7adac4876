//! COPY: TO STDOUT is masked like a read, FROM STDIN like a write.

use super::names::{fold, Resolved};
use super::parse::parse_query;
use super::protect::Protection;
use super::refusal::{Refusal, RefusalKind};
use super::State;
use sqlparser::ast::{CopySource, CopyTarget, Statement};

impl State<'_> {
    /// COPY: TO STDOUT of a masked table becomes COPY of a masked query; FROM STDIN follows the
    /// write rules for the columns loaded. Files and programs are refused.
    pub(super) fn copy(&mut self, s: &mut Statement) -> Result<(), Refusal> {
        let Statement::Copy {
            source, to, target, ..
        } = s
        else {
            return Ok(());
        };
        if *to {
            if !matches!(target, CopyTarget::Stdout) {
                return Err(Refusal::new(
                    RefusalKind::Copy,
                    "COPY TO a file or program is not allowed for masked roles",
                ));
            }
            self.copy_to(source)
        } else {
            if !matches!(target, CopyTarget::Stdin) {
                return Err(Refusal::new(
                    RefusalKind::Copy,
                    "COPY FROM a file or program is not allowed for masked roles",
                ));
            }
            self.copy_from(source)
        }
    }

    fn copy_to(&mut self, source: &mut CopySource) -> Result<(), Refusal> {
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
                    return Err(Refusal::new(
                        RefusalKind::Copy,
                        format!("COPY {table_name} TO is not allowed: {r}"),
                    ))
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
                        Refusal::new(
                            RefusalKind::Copy,
                            "could not rewrite COPY into a masked query",
                        )
                    })?;
                    self.substitute(&mut q, None)?;
                    *source = CopySource::Query(Box::new(q));
                    self.changed = true;
                    self.splice_ok = false;
                }
            },
        }
        Ok(())
    }

    fn copy_from(&mut self, source: &mut CopySource) -> Result<(), Refusal> {
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            return Err(Refusal::new(RefusalKind::Copy, "unsupported COPY form"));
        };
        if let Resolved::Rel(r) = self.resolve(table_name)? {
            if let Some(why) = self.ctx.prot.catalog.risky_writes.get(&r.oid) {
                return Err(Refusal::new(RefusalKind::Copy, format!(
                    "COPY into {table_name} is not allowed for masked roles: {why}, which may read PII"
                )));
            }
        }
        match self.protection(table_name)? {
            None => {}
            Some(Protection::Refuse(r)) => {
                return Err(Refusal::new(
                    RefusalKind::Copy,
                    format!("COPY {table_name} FROM is not allowed: {r}"),
                ))
            }
            Some(Protection::Mask(rel)) => {
                if columns.is_empty() {
                    return Err(Refusal::new(
                        RefusalKind::PiiWrite,
                        format!("COPY {table_name} FROM without a column list writes PII columns"),
                    )
                    .hint("list the non-PII columns you load"));
                }
                for c in columns.iter() {
                    if rel.is_pii(&fold(c)) {
                        return Err(Refusal::new(
                            RefusalKind::PiiWrite,
                            format!(
                                "COPY into PII column {} of {}.{} is not allowed for masked roles",
                                fold(c),
                                rel.schema,
                                rel.name
                            ),
                        ));
                    }
                }
                for c in rel.masks.keys() {
                    self.extra_sensitive.insert(c.to_lowercase());
                }
            }
        }
        Ok(())
    }
}

//! Planning a forget request: which tables and columns change, how many rows match, and what
//! would make the job fail part-way (blockers). A plan with blockers touches nothing.
//!
//! [`resolve`] reads the live catalog once and turns the policy into [`Spec`] (the tables and
//! columns that take part, with exact types) plus static blockers; [`plan`] adds what depends on
//! the IDs (matched rows, CHECK and UNIQUE conflicts). The SQL the job runs is built from the
//! same [`TableSpec`], so the plan and the execution cannot disagree about columns or types.

pub use super::resolve::resolve;
pub use super::spec::*;
use super::{db_error, Error};
use crate::policy::quote_ident;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// What a forget request would do.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Plan {
    pub database: String,
    pub ids: usize,
    pub subject_is_pii: bool,
    pub tables: Vec<TablePlan>,
    pub materialized_views: Vec<String>,
    pub blockers: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TablePlan {
    pub table: String,
    pub subject: String,
    /// `column -> replacement` (`NULL`, a literal, or `token` for the subject).
    pub columns: Vec<(String, String)>,
    pub rows_matched: i64,
}

impl Plan {
    pub fn has_blockers(&self) -> bool {
        !self.blockers.is_empty()
    }

    /// Human-readable form (what `--dry-run` prints).
    pub fn render(&self) -> String {
        let mut s = format!(
            "plan for database {:?}: {} customer ID(s){}\n",
            self.database,
            self.ids,
            if self.subject_is_pii {
                "; the customer ID is PII: it becomes one random 'forgotten:<hex>' token everywhere"
            } else {
                ""
            }
        );
        for t in &self.tables {
            let cols: Vec<String> = t
                .columns
                .iter()
                .map(|(c, v)| format!("{c} -> {v}"))
                .collect();
            s.push_str(&format!(
                "  {} (subject {}): {} row(s) match; {}\n",
                t.table,
                t.subject,
                t.rows_matched,
                if cols.is_empty() {
                    "no PII columns: unchanged".to_string()
                } else {
                    cols.join(", ")
                }
            ));
        }
        if !self.materialized_views.is_empty() {
            s.push_str(&format!(
                "  materialized views to refresh: {}\n",
                self.materialized_views.join(", ")
            ));
        }
        for w in &self.warnings {
            s.push_str(&format!("  warning: {w}\n"));
        }
        if self.blockers.is_empty() {
            s.push_str("  blockers: none\n");
        } else {
            s.push_str("  BLOCKED: nothing will be changed until these are fixed:\n");
            for b in &self.blockers {
                s.push_str(&format!("    - {b}\n"));
            }
        }
        s
    }
}

/// Plans a request for `ids` (canonical).
pub async fn plan(client: &Client, spec: &Spec, ids: &[String]) -> Result<Plan, Error> {
    let mut plan = Plan {
        database: spec.database.clone(),
        ids: ids.len(),
        subject_is_pii: spec.tokenize,
        blockers: spec.static_blockers.clone(),
        warnings: spec.warnings.clone(),
        ..Plan::default()
    };
    let ids_vec: Vec<String> = ids.to_vec();
    for t in &spec.tables {
        let matched: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {} AS t WHERE {}",
                    t.qname(),
                    t.match_sql("t", "$1")
                ),
                &[&ids_vec],
            )
            .await?
            .get(0);
        let mut columns: Vec<(String, String)> = t
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.shown()))
            .collect();
        if t.tokenize {
            columns.push((t.subject.clone(), format!("'{TOKEN_PREFIX}<random>'")));
        }
        if t.changes_anything() && matched > 0 {
            check_blockers(client, t, &ids_vec, &mut plan.blockers).await?;
            unique_blockers(client, t, &ids_vec, &mut plan.blockers).await?;
        }
        plan.tables.push(TablePlan {
            table: t.display(),
            subject: t.subject.clone(),
            columns,
            rows_matched: matched,
        });
    }
    let oids: Vec<u32> = spec.changing_tables().flat_map(|t| t.tree_oids()).collect();
    for (mv, owned) in dependent_matviews(client, &oids).await? {
        if !owned {
            plan.warnings.push(format!(
                "materialized view {mv} depends on a changed table but the control role does not own it, \
                 so it cannot refresh it: it keeps copies of the removed values until its owner refreshes it"
            ));
        }
        plan.materialized_views.push(mv);
    }
    Ok(plan)
}

/// CHECK constraints that the forgotten values would violate on the matched rows: the table's
/// own (inherited by its descendants) and those its descendants add.
async fn check_blockers(
    client: &Client,
    t: &TableSpec,
    ids: &Vec<String>,
    blockers: &mut Vec<String>,
) -> Result<(), Error> {
    for (oid, schema, name, _) in t.relations() {
        let rows = client
            .query(
                "SELECT con.conname::text, pg_catalog.pg_get_expr(con.conbin, con.conrelid), \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)), \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = con.conrelid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum) \
                 FROM pg_catalog.pg_constraint con \
                 WHERE con.conrelid = $1 AND con.contype = 'c' AND ($1 = $2 OR con.conislocal)",
                &[&oid, &t.oid],
            )
            .await?;
        let rel = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        for r in rows {
            let (con, expr, keys, all): (String, String, Vec<String>, Vec<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            let touches = t.columns.iter().any(|c| keys.contains(&c.name))
                || (t.tokenize && keys.contains(&t.subject));
            if !touches {
                continue;
            }
            let shown = format!("{schema}.{name}");
            if let Some(b) = check_violation(client, t, &rel, &all, &con, &expr, ids).await? {
                blockers.push(format!("{shown}: {b}"));
            }
        }
    }
    Ok(())
}

/// Evaluates one CHECK constraint over the matched rows of `rel` as forget would leave them.
async fn check_violation(
    client: &Client,
    t: &TableSpec,
    rel: &str,
    all_columns: &[String],
    con: &str,
    expr: &str,
    ids: &Vec<String>,
) -> Result<Option<String>, Error> {
    let projected: Vec<String> = all_columns
        .iter()
        .map(|n| {
            let q = quote_ident(n);
            if let Some(c) = t.columns.iter().find(|c| &c.name == n) {
                format!("{} AS {q}", c.value_sql(&format!("s.{q}")))
            } else if t.tokenize && n == &t.subject {
                format!("{} AS {q}", t.token_sql(&format!("s.{q}")))
            } else {
                format!("s.{q}")
            }
        })
        .collect();
    let sql = format!(
        "SELECT count(*) FROM (SELECT {} FROM {rel} AS s WHERE {}) AS t WHERE ({expr}) IS FALSE",
        projected.join(", "),
        t.match_sql("s", "$1")
    );
    Ok(match client.query_one(&sql, &[ids]).await {
        Ok(row) => {
            let n: i64 = row.get(0);
            (n > 0).then(|| {
                format!(
                    "CHECK constraint {con} ({expr}) would reject the forgotten values on {n} row(s): \
                     set a `forget` value that satisfies it"
                )
            })
        }
        Err(e) => Some(format!(
            "cannot evaluate CHECK constraint {con} against the forgotten values: {}",
            db_error(&e)
        )),
    })
}

/// UNIQUE indexes on a PII column whose forget value is a constant (or NULL with NULLS NOT
/// DISTINCT): two forgotten rows would collide. Indexes of the table and of its descendants
/// (a partition's copy of its parent's index is the parent's).
async fn unique_blockers(
    client: &Client,
    t: &TableSpec,
    ids: &Vec<String>,
    blockers: &mut Vec<String>,
) -> Result<(), Error> {
    for (oid, schema, name, partitioned) in t.relations() {
        let rows = client
            .query(
                "SELECT i.indexrelid::regclass::text, pg_catalog.cardinality(i.indkey::int2[]), \
                        ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a \
                              WHERE a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey::int2[])), \
                        coalesce((pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct')::boolean, false) \
                 FROM pg_catalog.pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid)",
                &[&oid],
            )
            .await?;
        // A partitioned table's index spans its partitions; any other index one table only.
        let scan = format!(
            "{}{}.{}",
            if partitioned { "" } else { "ONLY " },
            quote_ident(&schema),
            quote_ident(&name)
        );
        for r in rows {
            let (index, nkeys, keys, nulls_not_distinct): (String, i32, Vec<String>, bool) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            if nkeys > 1 {
                continue; // other key columns may keep rows apart; execution reports a conflict
            }
            for c in &t.columns {
                let constant = c.json_paths.is_none() && (c.forget.is_some() || nulls_not_distinct);
                if !keys.contains(&c.name) || !constant {
                    continue;
                }
                let q = format!(
                    "SELECT (SELECT count(*) FROM {scan} AS t WHERE {}), \
                            EXISTS (SELECT 1 FROM {scan} AS t WHERE t.{} IS NOT DISTINCT FROM {})",
                    t.match_sql("t", "$1"),
                    quote_ident(&c.name),
                    c.value_sql("t")
                );
                let row = client.query_one(&q, &[ids]).await?;
                let (matched, taken): (i64, bool) = (row.get(0), row.get(1));
                if matched > 1 || (matched > 0 && taken) {
                    blockers.push(format!(
                        "{schema}.{name}.{}: unique index {index} would reject the same forgotten value {} on several rows: \
                         use NULL (no `forget` value) or drop the unique index",
                        c.name,
                        c.shown()
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Materialized views that depend (through views, recursively) on the given tables, in
/// refresh order, with whether the control role owns them.
pub async fn dependent_matviews(
    client: &Client,
    oids: &[u32],
) -> Result<Vec<(String, bool)>, Error> {
    if oids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = client
        .query(
            "WITH RECURSIVE deps(oid, depth) AS ( \
               SELECT DISTINCT r.ev_class, 1 FROM pg_catalog.pg_depend d \
                 JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
               WHERE d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = ANY($1) AND r.ev_class <> d.refobjid \
               UNION \
               SELECT r.ev_class, deps.depth + 1 FROM deps \
                 JOIN pg_catalog.pg_depend d ON d.refclassid = 'pg_catalog.pg_class'::regclass AND d.refobjid = deps.oid \
                 JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid \
               WHERE r.ev_class <> deps.oid AND deps.depth < 20) \
             SELECT pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.pg_has_role(c.relowner, 'USAGE'), \
                    max(deps.depth) AS depth \
             FROM deps JOIN pg_catalog.pg_class c ON c.oid = deps.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'm' \
             GROUP BY 1, 2 ORDER BY 3, 1",
            &[&oids],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

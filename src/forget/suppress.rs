//! Suppression of re-ingestion: a `BEFORE INSERT OR UPDATE ... FOR EACH ROW` trigger on every
//! policy table with a subject. It computes the keyed hash of `NEW.<subject>` (HMAC-SHA256 with
//! the key in `pgredact.hash_key`, inline so no extra function call per row), looks it up in
//! `pgredact.forget_list`, and for a forgotten subject resets the PII columns to their forgotten
//! values (and replaces a PII subject ID by its token) while the other columns land unchanged.
//!
//! It works for writes that bypass the proxy (INSERT, INSERT ... ON CONFLICT DO UPDATE, UPDATE,
//! COPY FROM, MERGE), because it runs inside PostgreSQL. The trigger function is SECURITY
//! DEFINER, owned by the control role, every name in it schema-qualified (see
//! [`function_body`] for why not `SET search_path`): the writing role needs no access to the key
//! or the list. Its name starts with `zzz_` so it fires after the table's own
//! BEFORE triggers (they fire in name order) and has the last word. A `WHEN` clause skips the
//! function call for rows that carry no PII at all.

use super::plan::{Spec, TableSpec, TOKEN_HEX, TOKEN_PREFIX};
use crate::policy::{quote_ident, quote_literal};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Name of the trigger on each table.
pub const TRIGGER_NAME: &str = "zzz_pgredact_forget";
/// Dollar-quote tag of generated function bodies.
const TAG: &str = "$pgredact_forget$";

/// Name (in schema `pgredact`) of the trigger function of one table.
pub fn function_name(t: &TableSpec) -> String {
    let digest = Sha256::digest(format!("{}.{}", t.schema, t.name).as_bytes());
    format!("forget_suppress_{}", &hex::encode(digest)[..20])
}

/// The keyed hash of a subject expression, as bytea (matches `pgredact.hmac_hex`). Every name is
/// schema-qualified: the function runs with the caller's `search_path` (see [`function_body`]).
fn hmac_sql(value: &str) -> String {
    format!(
        "pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) \
         pg_catalog.convert_to(CAST({value} AS pg_catalog.text), 'UTF8')))"
    )
}

/// The `WHEN` condition: the row carries something forget would change. Parsed once by
/// `CREATE TRIGGER` in the control session (whose `search_path` is `pg_catalog`) and stored
/// with its names resolved.
pub fn when_sql(t: &TableSpec) -> String {
    let mut parts: Vec<String> = t.columns.iter().map(|c| c.differs_sql("NEW")).collect();
    if t.tokenize {
        parts.push(format!("NEW.{} IS NOT NULL", quote_ident(&t.subject)));
    }
    parts.join(" OR ")
}

/// The PL/pgSQL body of the trigger function of one table.
///
/// No `SET search_path` on the function: that clause costs a GUC save/restore on every call,
/// measured at about 13 µs a row (more than the rest of the trigger) on a bulk COPY. Instead
/// every relation, function and operator in the body is schema-qualified, and no type name
/// appears (assignments coerce literals to the column type), so the caller's `search_path`
/// cannot redirect anything; `pg_temp` is never searched for functions or operators.
pub fn function_body(t: &TableSpec) -> String {
    let subj = format!("NEW.{}", quote_ident(&t.subject));
    let mut resets = String::new();
    for c in &t.columns {
        let v = match &c.forget {
            None => "NULL".to_string(),
            Some(v) => quote_literal(v),
        };
        resets.push_str(&format!("    NEW.{} := {v};\n", quote_ident(&c.name)));
    }
    let as_text = format!("CAST({subj} AS pg_catalog.text)");
    let token_check = if t.tokenize {
        format!("{as_text} OPERATOR(pg_catalog.~~) '{TOKEN_PREFIX}%' OR ")
    } else {
        String::new()
    };
    if t.tokenize {
        resets.push_str(&format!(
            "    IF {as_text} OPERATOR(pg_catalog.!~~) '{TOKEN_PREFIX}%' THEN\n      \
             {subj} := (SELECT '{TOKEN_PREFIX}' OPERATOR(pg_catalog.||) pg_catalog.left(pg_catalog.encode({}, 'hex'), {TOKEN_HEX}) \
             FROM pgredact.hash_key k);\n    \
             END IF;\n",
            hmac_sql(&subj),
        ));
    }
    format!(
        "\n-- pgredact forget suppression for {table}; trigger WHEN ({when})\n\
         BEGIN\n  \
         IF {subj} IS NULL THEN RETURN NEW; END IF;\n  \
         IF {token_check}EXISTS (SELECT 1 FROM pgredact.hash_key k JOIN pgredact.forget_list f\n      \
         ON f.subject_hash OPERATOR(pg_catalog.=) {hash}) THEN\n\
         {resets}  \
         END IF;\n  \
         RETURN NEW;\n\
         END\n",
        table = t.display().replace('\n', " "),
        when = when_sql(t).replace('\n', " "),
        hash = hmac_sql(&subj),
    )
}

/// Installs (or updates) the trigger of every changing table of `spec` and of its inheritance
/// children (partitions get PostgreSQL's clones of their parent's trigger), and drops pgredact
/// triggers left on tables that no longer take part. Skips triggers that are already current, so
/// a restart does not take table locks. Serialized with an advisory lock.
pub async fn ensure(client: &mut Client, spec: &Spec) -> Result<Vec<String>, String> {
    let err = |e: tokio_postgres::Error| super::db_error(&e);
    let tx = client.transaction().await.map_err(err)?;
    tx.execute("SELECT pg_catalog.pg_advisory_xact_lock(7320453)", &[])
        .await
        .map_err(err)?;
    let mut changed = Vec::new();
    let mut keep: Vec<u32> = Vec::new();
    for t in spec.changing_tables() {
        let fname = function_name(t);
        let body = function_body(t);
        if body.contains(TAG) {
            return Err(format!(
                "{}: a forget value contains {TAG}, which pgredact reserves",
                t.display()
            ));
        }
        let current: Option<String> = tx
            .query_opt(
                "SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'pgredact' AND p.proname = $1",
                &[&fname],
            )
            .await
            .map_err(err)?
            .map(|r| r.get(0));
        let fresh = current.as_deref() == Some(body.as_str());
        if !fresh {
            tx.batch_execute(&format!(
                "CREATE OR REPLACE FUNCTION pgredact.{f}() RETURNS trigger LANGUAGE plpgsql \
                 SECURITY DEFINER AS {TAG}{body}{TAG};\n\
                 REVOKE ALL ON FUNCTION pgredact.{f}() FROM PUBLIC;",
                f = quote_ident(&fname),
            ))
            .await
            .map_err(|e| {
                format!(
                    "installing the suppression function of {}: {}",
                    t.display(),
                    super::db_error(&e)
                )
            })?;
        }
        let mut targets = vec![(t.oid, t.qname(), t.display())];
        targets.extend(
            t.inheritance_children()
                .map(|d| (d.oid, d.qname(), d.display())),
        );
        for (oid, qname, shown) in targets {
            keep.push(oid);
            if fresh && trigger_current(&tx, oid, &fname).await.map_err(err)? {
                continue;
            }
            let ddl = format!(
                "CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {qname} FOR EACH ROW \
                 WHEN ({when}) EXECUTE FUNCTION pgredact.{f}();",
                f = quote_ident(&fname),
                trg = quote_ident(TRIGGER_NAME),
                when = when_sql(t),
            );
            tx.batch_execute(&ddl).await.map_err(|e| {
                format!(
                    "installing the suppression trigger on {shown}: {}",
                    super::db_error(&e)
                )
            })?;
            changed.push(shown);
        }
    }
    // Triggers of ours on tables that left the policy. A partition's clone of its parent's
    // trigger (tgparentid <> 0) goes with the parent's and cannot be dropped on its own.
    let stale = tx
        .query(
            "SELECT tg.tgrelid::regclass::text FROM pg_catalog.pg_trigger tg \
             WHERE tg.tgname = $1 AND tg.tgparentid = 0 AND NOT (tg.tgrelid = ANY($2))",
            &[&TRIGGER_NAME, &keep],
        )
        .await
        .map_err(err)?;
    for r in stale {
        let name: String = r.get(0);
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {name}",
            quote_ident(TRIGGER_NAME)
        ))
        .await
        .map_err(|e| {
            format!(
                "dropping the stale suppression trigger on {name}: {}",
                super::db_error(&e)
            )
        })?;
        changed.push(format!("{name} (trigger removed)"));
    }
    tx.commit().await.map_err(err)?;
    Ok(changed)
}

/// The relation has pgredact's trigger, calling this function.
async fn trigger_current(
    tx: &tokio_postgres::Transaction<'_>,
    oid: u32,
    fname: &str,
) -> Result<bool, tokio_postgres::Error> {
    Ok(tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid \
               JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE tg.tgrelid = $1 AND tg.tgname = $2 AND n.nspname = 'pgredact' AND p.proname = $3)",
            &[&oid, &TRIGGER_NAME, &fname],
        )
        .await?
        .get(0))
}

/// Removes every suppression trigger (used by the bench to measure ingest without them).
pub async fn drop_all(client: &Client) -> Result<(), String> {
    let rows = client
        .query(
            "SELECT tgrelid::regclass::text FROM pg_catalog.pg_trigger WHERE tgname = $1 AND tgparentid = 0",
            &[&TRIGGER_NAME],
        )
        .await
        .map_err(|e| super::db_error(&e))?;
    for r in rows {
        let name: String = r.get(0);
        client
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS {} ON {name}",
                quote_ident(TRIGGER_NAME)
            ))
            .await
            .map_err(|e| super::db_error(&e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forget::plan::ColSpec;

    fn table(tokenize: bool) -> TableSpec {
        TableSpec {
            schema: "public".into(),
            name: "accounts".into(),
            oid: 1,
            subject: "email".into(),
            subject_type: "text".into(),
            subject_attnum: 1,
            columns: vec![
                ColSpec {
                    name: "name".into(),
                    sql_type: "text".into(),
                    not_null: false,
                    forget: None,
                    attnum: 2,
                },
                ColSpec {
                    name: "plan".into(),
                    sql_type: "text".into(),
                    not_null: true,
                    forget: Some("it's gone".into()),
                    attnum: 3,
                },
            ],
            tokenize,
            reltuples: 0.0,
            owned: true,
            partitioned: false,
            descendants: vec![],
        }
    }

    /// The body runs with the caller's search_path: every function and operator is qualified.
    #[test]
    fn body_names_are_schema_qualified() {
        for tokenize in [false, true] {
            let body = function_body(&table(tokenize));
            for f in ["sha256(", "convert_to(", "encode(", "left("] {
                for (i, _) in body.match_indices(f) {
                    assert!(
                        body[..i].ends_with("pg_catalog."),
                        "unqualified {f} in:\n{body}"
                    );
                }
            }
            for op in ["||", "~~", " = "] {
                for (i, _) in body.match_indices(op) {
                    assert!(
                        body[..i].ends_with("OPERATOR(pg_catalog.") || body[..i].ends_with('!'),
                        "unqualified operator {op} in:\n{body}"
                    );
                }
            }
            assert!(body.contains("NEW.\"plan\" := 'it''s gone';"), "{body}");
            assert!(body.contains("NEW.\"name\" := NULL;"), "{body}");
            assert_eq!(body.contains("'forgotten:'"), tokenize, "{body}");
        }
    }

    #[test]
    fn when_clause_covers_every_pii_column() {
        let w = when_sql(&table(true));
        assert!(w.contains("NEW.\"name\" IS NOT NULL"), "{w}");
        assert!(
            w.contains("NEW.\"plan\" IS DISTINCT FROM CAST('it''s gone' AS text)"),
            "{w}"
        );
        assert!(w.contains("NEW.\"email\" IS NOT NULL"), "{w}");
    }
}

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
//! or the list. Its name starts with `~` so it fires after the table's own BEFORE triggers (they
//! fire in name order) and has the last word; it is `ENABLE ALWAYS`, so sessions with
//! `session_replication_role = replica` (bulk loads, logical replication) fire it too. A `WHEN`
//! clause skips the function call for rows that carry no PII at all. [`audit`] is what
//! `pgredact check` reports about these triggers.

use super::plan::{Spec, TableSpec, TOKEN_HEX, TOKEN_PREFIX};
use crate::policy::{quote_ident, quote_literal};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Name of the trigger on each table. PostgreSQL fires the BEFORE ROW triggers of one event in
/// name order, comparing bytes, and the last one has the last word on the row: `~` (0x7E) sorts
/// after every ASCII letter, digit, `_` and `$`, so this fires after any ordinarily named
/// trigger. `pgredact check` reports (as an error) a BEFORE INSERT/UPDATE row trigger on a policy
/// table whose name sorts after it.
pub const TRIGGER_NAME: &str = "~pgredact_forget";
/// Former names of the trigger, replaced by [`TRIGGER_NAME`] at the next install.
const LEGACY_TRIGGER_NAMES: &[&str] = &["zzz_pgredact_forget"];
/// Dollar-quote tag of generated function bodies.
const TAG: &str = "$pgredact_forget$";

/// Name (in schema `pgredact`) of the trigger function of one table.
pub fn function_name(t: &TableSpec) -> String {
    let digest = Sha256::digest(format!("{}.{}", t.schema, t.name).as_bytes());
    format!("forget_suppress_{}", &hex::encode(digest)[..20])
}

/// The keyed hash of a subject expression, as bytea (matches `pgredact.hmac_hex`). Every name is
/// schema-qualified: the function runs with the caller's `search_path` (see [`function_body`]).
fn hmac_sql(text: &str) -> String {
    format!(
        "pg_catalog.sha256(k.opad OPERATOR(pg_catalog.||) pg_catalog.sha256(k.ipad OPERATOR(pg_catalog.||) \
         pg_catalog.convert_to({text}, 'UTF8')))"
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
pub fn function_body(t: &TableSpec, raw_ids: bool) -> String {
    let subj = format!("NEW.{}", quote_ident(&t.subject));
    let mut resets = String::new();
    for c in &t.columns {
        let v = match (
            c.json_value_sql(&format!("NEW.{}", quote_ident(&c.name))),
            &c.forget,
        ) {
            (Some(v), _) => v,
            (None, None) => "NULL".to_string(),
            (None, Some(v)) => quote_literal(v),
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
             {subj} := (SELECT COALESCE(f.token, '{TOKEN_PREFIX}' OPERATOR(pg_catalog.||) \
             pg_catalog.left(pg_catalog.encode(f.subject_hash, 'hex'), {TOKEN_HEX})) \
             FROM pgredact.hash_key k JOIN pgredact.forget_list f ON f.subject_hash OPERATOR(pg_catalog.=) {});\n    \
             END IF;\n",
            hmac_sql(&t.id_text_sql(&subj)),
        ));
    }
    format!(
        "\n-- pgredact forget suppression for {table}; trigger WHEN ({when})\n\
         BEGIN\n  \
         IF {subj} IS NULL THEN RETURN NEW; END IF;\n  \
         IF {token_check}{listed} THEN\n\
         {resets}  \
         END IF;\n  \
         RETURN NEW;\n\
         END\n",
        table = t.display().replace('\n', " "),
        when = when_sql(t).replace('\n', " "),
        listed = listed_sql(t, raw_ids),
    )
}

/// Whether the row's subject is on the forget list: by its raw ID when the list holds raw IDs
/// (no table treats the customer ID as PII: an index lookup, no keyed hash per row), else by
/// the keyed hash of the ID.
fn listed_sql(t: &TableSpec, raw_ids: bool) -> String {
    let subj = format!("NEW.{}", quote_ident(&t.subject));
    if raw_ids && !t.tokenize {
        format!(
            "EXISTS (SELECT 1 FROM pgredact.forget_list f WHERE f.subject_id OPERATOR(pg_catalog.=) {})",
            t.id_text_sql(&subj)
        )
    } else {
        format!(
            "EXISTS (SELECT 1 FROM pgredact.hash_key k JOIN pgredact.forget_list f\n      \
             ON f.subject_hash OPERATOR(pg_catalog.=) {})",
            hmac_sql(&t.id_text_sql(&subj))
        )
    }
}

/// Whether the triggers may look IDs up raw: no table treats the customer ID as PII, and every
/// entry of the list has its raw ID (entries made before raw IDs were kept have only the hash).
/// When the ID became PII, the raw IDs are removed from the list first.
async fn raw_id_mode(
    tx: &tokio_postgres::Transaction<'_>,
    spec: &Spec,
) -> Result<bool, tokio_postgres::Error> {
    if spec.tokenize {
        tx.execute(
            "UPDATE pgredact.forget_list SET subject_id = NULL WHERE subject_id IS NOT NULL",
            &[],
        )
        .await?;
        return Ok(false);
    }
    Ok(tx
        .query_one(
            "SELECT NOT EXISTS (SELECT 1 FROM pgredact.forget_list WHERE subject_id IS NULL)",
            &[],
        )
        .await?
        .get(0))
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
    let raw = raw_id_mode(&tx, spec).await.map_err(err)?;
    let mut changed = Vec::new();
    let mut keep: Vec<u32> = Vec::new();
    for t in spec.changing_tables() {
        let fname = function_name(t);
        let body = function_body(t, raw);
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
            // CREATE OR REPLACE resets the firing mode to ORIGIN: ALWAYS again in the same
            // transaction, so no session ever sees the trigger skippable.
            let ddl = format!(
                "CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {qname} FOR EACH ROW \
                 WHEN ({when}) EXECUTE FUNCTION pgredact.{f}();\n\
                 ALTER TABLE {qname} ENABLE ALWAYS TRIGGER {trg};",
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
        changed.extend(enable_clones(&tx, t).await?);
    }
    // Triggers of ours on tables that left the policy. A partition's clone of its parent's
    // trigger (tgparentid <> 0) goes with the parent's and cannot be dropped on its own.
    let stale = tx
        .query(
            "SELECT tg.tgrelid::regclass::text, tg.tgname::text FROM pg_catalog.pg_trigger tg \
               JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE tg.tgparentid = 0 AND n.nspname = 'pgredact' \
               AND ((tg.tgname = $1 AND NOT (tg.tgrelid = ANY($2))) OR tg.tgname = ANY($3))",
            &[&TRIGGER_NAME, &keep, &LEGACY_TRIGGER_NAMES],
        )
        .await
        .map_err(err)?;
    for r in stale {
        let (name, trigger): (String, String) = (r.get(0), r.get(1));
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {name}",
            quote_ident(&trigger)
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
             WHERE tg.tgrelid = $1 AND tg.tgname = $2 AND n.nspname = 'pgredact' AND p.proname = $3 \
               AND tg.tgenabled = 'A')",
            &[&oid, &TRIGGER_NAME, &fname],
        )
        .await?
        .get(0))
}

/// Partition clones of the table's trigger that are not ALWAYS (disabled on one partition, or
/// cloned while the parent's was not): made ALWAYS again.
async fn enable_clones(
    tx: &tokio_postgres::Transaction<'_>,
    t: &TableSpec,
) -> Result<Vec<String>, String> {
    let rows = tx
        .query(
            "SELECT tg.tgrelid::regclass::text FROM pg_catalog.pg_trigger tg \
             WHERE tg.tgname = $1 AND tg.tgparentid <> 0 AND tg.tgenabled <> 'A' AND tg.tgrelid = ANY($2)",
            &[&TRIGGER_NAME, &t.tree_oids()],
        )
        .await
        .map_err(|e| super::db_error(&e))?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        tx.batch_execute(&format!(
            "ALTER TABLE {name} ENABLE ALWAYS TRIGGER {}",
            quote_ident(TRIGGER_NAME)
        ))
        .await
        .map_err(|e| {
            format!(
                "enabling the suppression trigger on partition {name}: {}",
                super::db_error(&e)
            )
        })?;
        out.push(format!("{name} (trigger enabled ALWAYS)"));
    }
    Ok(out)
}

/// What is wrong with suppression on the policy tables, their partitions and children: each
/// line is an error for `pgredact check`. A missing trigger counts only once the forget list
/// has entries (before the first job there is nothing to suppress).
pub async fn audit(client: &Client, spec: &Spec) -> Result<Vec<String>, String> {
    let err = |e: tokio_postgres::Error| super::db_error(&e);
    let list_used: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgredact.forget_list') IS NOT NULL",
            &[],
        )
        .await
        .map_err(err)?
        .get(0);
    let list_used = list_used
        && client
            .query_one("SELECT EXISTS (SELECT 1 FROM pgredact.forget_list)", &[])
            .await
            .map_err(err)?
            .get::<_, bool>(0);
    let mut out = Vec::new();
    for t in spec.changing_tables() {
        let rows = client
            .query(
                "SELECT c.oid, c.oid::regclass::text, tg.tgname::text, tg.tgenabled::text, tg.tgtype::int4, \
                        n.nspname::text, p.proname::text \
                 FROM pg_catalog.pg_class c \
                 LEFT JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = c.oid AND NOT tg.tgisinternal \
                 LEFT JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid \
                 LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE c.oid = ANY($1) ORDER BY 2, 3",
                &[&t.tree_oids()],
            )
            .await
            .map_err(err)?;
        for oid in t.tree_oids() {
            let mine: Vec<TriggerRow> = rows
                .iter()
                .filter(|r| r.get::<_, u32>(0) == oid)
                .map(TriggerRow::from)
                .collect();
            let Some(rel) = mine.first().map(|r| r.rel.clone()) else {
                continue;
            };
            out.extend(audit_relation(&rel, &mine, list_used));
        }
    }
    Ok(out)
}

struct TriggerRow {
    rel: String,
    name: Option<String>,
    enabled: String,
    tgtype: i32,
    function: String,
}

impl From<&tokio_postgres::Row> for TriggerRow {
    fn from(r: &tokio_postgres::Row) -> TriggerRow {
        let schema: Option<String> = r.get(5);
        let proname: Option<String> = r.get(6);
        TriggerRow {
            rel: r.get(1),
            name: r.get(2),
            enabled: r.get::<_, Option<String>>(3).unwrap_or_default(),
            tgtype: r.get::<_, Option<i32>>(4).unwrap_or(0),
            function: format!(
                "{}.{}",
                schema.unwrap_or_default(),
                proname.unwrap_or_default()
            ),
        }
    }
}

/// BEFORE, ROW, and INSERT or UPDATE (`pg_trigger.tgtype` bits).
fn before_row_write(tgtype: i32) -> bool {
    const ROW: i32 = 1;
    const BEFORE: i32 = 2;
    const INSERT: i32 = 4;
    const UPDATE: i32 = 16;
    tgtype & ROW != 0 && tgtype & BEFORE != 0 && tgtype & (INSERT | UPDATE) != 0
}

/// The findings for one relation from its (non-internal) triggers.
fn audit_relation(rel: &str, triggers: &[TriggerRow], list_used: bool) -> Vec<String> {
    let mut out = Vec::new();
    let ours = triggers
        .iter()
        .find(|r| r.name.as_deref() == Some(TRIGGER_NAME));
    match ours {
        None if list_used => out.push(format!(
            "{rel}: the suppression trigger {TRIGGER_NAME:?} is missing, so writes can put forgotten customers' PII \
             back; the next forget job or admin server start reinstalls it"
        )),
        None => {}
        Some(r) if !r.function.starts_with("pgredact.forget_suppress_") => out.push(format!(
            "{rel}: trigger {TRIGGER_NAME:?} calls {} instead of pgredact's suppression function: drop it; the \
             next forget job reinstalls pgredact's",
            r.function
        )),
        Some(r) if r.enabled == "D" => out.push(format!(
            "{rel}: the suppression trigger {TRIGGER_NAME:?} is disabled, so writes can put forgotten customers' PII \
             back: ALTER TABLE {rel} ENABLE ALWAYS TRIGGER \"{TRIGGER_NAME}\""
        )),
        Some(r) if r.enabled != "A" => out.push(format!(
            "{rel}: the suppression trigger {TRIGGER_NAME:?} is not ENABLE ALWAYS, so loads with \
             session_replication_role = replica and logical replication skip it: \
             ALTER TABLE {rel} ENABLE ALWAYS TRIGGER \"{TRIGGER_NAME}\""
        )),
        Some(_) => {}
    }
    for r in triggers {
        let Some(name) = &r.name else { continue };
        if name.as_bytes() > TRIGGER_NAME.as_bytes()
            && r.enabled != "D"
            && before_row_write(r.tgtype)
        {
            out.push(format!(
                "{rel}: trigger {name:?} fires after pgredact's suppression trigger {TRIGGER_NAME:?} (BEFORE triggers \
                 fire in name order, byte by byte) and can put a forgotten customer's PII back: rename it so it \
                 sorts before {TRIGGER_NAME:?} (ALTER TRIGGER ... ON {rel} RENAME TO ...)"
            ));
        }
    }
    out
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
                    json_paths: None,
                    attnum: 2,
                },
                ColSpec {
                    name: "plan".into(),
                    sql_type: "text".into(),
                    not_null: true,
                    forget: Some("it's gone".into()),
                    json_paths: None,
                    attnum: 3,
                },
            ],
            tokenize,
            fold_case: false,
            reltuples: 0.0,
            owned: true,
            partitioned: false,
            descendants: vec![],
        }
    }

    /// The body runs with the caller's search_path: every function and operator is qualified.
    #[test]
    fn body_names_are_schema_qualified() {
        for (tokenize, raw) in [(false, false), (true, false), (false, true), (true, true)] {
            let body = function_body(&table(tokenize), raw);
            // Raw lookups only where the ID is not PII.
            assert_eq!(body.contains("f.subject_id"), raw && !tokenize, "{body}");
            assert_eq!(body.contains("sha256("), tokenize || !raw, "{body}");
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

    fn trig(name: &str, enabled: &str, tgtype: i32, function: &str) -> TriggerRow {
        TriggerRow {
            rel: "public.t".into(),
            name: Some(name.into()),
            enabled: enabled.into(),
            tgtype,
            function: function.into(),
        }
    }

    /// BEFORE ROW INSERT/UPDATE triggers named after pgredact's are reported, byte-wise.
    #[test]
    fn audit_reports_later_names_and_broken_triggers() {
        let ours = trig(
            TRIGGER_NAME,
            "A",
            1 | 2 | 4 | 16,
            "pgredact.forget_suppress_ab",
        );
        let before_row_insert = 1 | 2 | 4;
        let rows = vec![
            trig("zzzz_late", "O", before_row_insert, "public.f"),
            trig("~~later", "O", before_row_insert, "public.f"),
            trig("\u{e9}t\u{e9}", "A", 1 | 2 | 16, "public.f"),
            trig("~~after_row", "O", 1 | 4, "public.f"),
            trig("~~disabled", "D", before_row_insert, "public.f"),
            trig("~~statement", "O", 2 | 4, "public.f"),
        ];
        let mut all = vec![ours];
        all.extend(rows);
        let found = audit_relation("public.t", &all, true).join("\n");
        assert!(found.contains("\"~~later\" fires after"), "{found}");
        assert!(found.contains("\"\u{e9}t\u{e9}\" fires after"), "{found}");
        assert_eq!(found.lines().count(), 2, "{found}");
        for (enabled, function, says) in [
            ("D", "pgredact.forget_suppress_ab", "is disabled"),
            ("O", "pgredact.forget_suppress_ab", "is not ENABLE ALWAYS"),
            ("R", "pgredact.forget_suppress_ab", "is not ENABLE ALWAYS"),
            ("A", "public.evil", "calls public.evil instead"),
        ] {
            let r = [trig(TRIGGER_NAME, enabled, 1 | 2 | 4 | 16, function)];
            let found = audit_relation("public.t", &r, true).join("\n");
            assert!(found.contains(says), "{enabled}: {found}");
        }
        assert!(audit_relation("public.t", &[], false).is_empty());
        assert!(audit_relation("public.t", &[], true)[0].contains("is missing"));
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

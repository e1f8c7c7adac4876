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
use super::Error;
use crate::policy::{quote_ident, quote_literal};
use sha2::{Digest, Sha256};
use tokio_postgres::Client;

/// Name of the trigger on each table. PostgreSQL fires the BEFORE ROW triggers of one event in
/// name order, comparing bytes, and the last one has the last word on the row: `~` (0x7E) sorts
/// after every ASCII letter, digit, `_` and `$`, so this fires after any ordinarily named
/// trigger. `pgredact check` reports (as an error) a BEFORE INSERT/UPDATE row trigger on a policy
/// table whose name sorts after it.
pub const TRIGGER_NAME: &str = "~pgredact_forget";
/// The compiled front of the triggers (src/forget/ext): a C trigger function that answers "not
/// listed" from a per-backend cache of the forget list and calls the PL/pgSQL function only for
/// rows whose customer may be listed.
pub const EXTENSION: &str = "pgredact_suppress";
/// The C row trigger function of [`EXTENSION`].
const COMPILED_FUNCTION: &str = "pgredact_suppress.suppress()";
/// The C statement trigger function that invalidates every session's cache when the list or the
/// key changes, and the name of its triggers on `pgredact.forget_list` and `pgredact.hash_key`.
const LIST_CHANGED_FUNCTION: &str = "pgredact_suppress.list_changed()";
const LIST_TRIGGER_NAME: &str = "~pgredact_list_changed";
/// Former names of the trigger, replaced by [`TRIGGER_NAME`] at the next install.
const LEGACY_TRIGGER_NAMES: &[&str] = &["zzz_pgredact_forget"];
/// Dollar-quote tag of generated function bodies.
pub(super) const TAG: &str = "$pgredact_forget$";

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
pub async fn ensure(client: &mut Client, spec: &Spec) -> Result<Vec<String>, Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_catalog.pg_advisory_xact_lock(7320453)", &[])
        .await?;
    let raw = raw_id_mode(&tx, spec).await?;
    let mut changed = Vec::new();
    let compiled = compiled_front(&tx, spec, &mut changed).await?;
    let mut keep: Vec<u32> = Vec::new();
    for t in spec.changing_tables() {
        let fname = function_name(t);
        let fresh = ensure_function(&tx, t, &fname, raw).await?;
        let mut targets = vec![(t.oid, t.qname(), t.display())];
        targets.extend(
            t.inheritance_children()
                .map(|d| (d.oid, d.qname(), d.display())),
        );
        let call = TriggerCall::new(t, &fname, raw, compiled);
        for (oid, qname, shown) in targets {
            keep.push(oid);
            if fresh && call.is_current(&tx, oid).await? {
                continue;
            }
            // CREATE OR REPLACE resets the firing mode to ORIGIN: ALWAYS again in the same
            // transaction, so no session ever sees the trigger skippable.
            let ddl = format!(
                "CREATE OR REPLACE TRIGGER {trg} BEFORE INSERT OR UPDATE ON {qname} FOR EACH ROW \
                 WHEN ({when}) EXECUTE FUNCTION {call};\n\
                 ALTER TABLE {qname} ENABLE ALWAYS TRIGGER {trg};",
                call = call.sql(),
                trg = quote_ident(TRIGGER_NAME),
                when = when_sql(t),
            );
            tx.batch_execute(&ddl)
                .await
                .map_err(|source| Error::DbDoing {
                    what: format!("installing the suppression trigger on {shown}"),
                    source,
                })?;
            changed.push(shown);
        }
        changed.extend(enable_clones(&tx, t).await?);
    }
    changed.extend(drop_stale_triggers(&tx, &keep).await?);
    tx.commit().await?;
    Ok(changed)
}

/// Installs (or replaces) the suppression function `fname` of table `t` unless it is current
/// already; returns whether it was.
async fn ensure_function(
    tx: &tokio_postgres::Transaction<'_>,
    t: &TableSpec,
    fname: &str,
    raw: bool,
) -> Result<bool, Error> {
    let body = function_body(t, raw);
    if body.contains(TAG) {
        return Err(Error::ReservedTag(t.display()));
    }
    let current: Option<String> = tx
        .query_opt(
            "SELECT p.prosrc FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'pgredact' AND p.proname = $1",
            &[&fname],
        )
        .await?
        .map(|r| r.get(0));
    let fresh = current.as_deref() == Some(body.as_str());
    if !fresh {
        tx.batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION pgredact.{f}() RETURNS trigger LANGUAGE plpgsql \
             SECURITY DEFINER AS {TAG}{body}{TAG};\n\
             REVOKE ALL ON FUNCTION pgredact.{f}() FROM PUBLIC;",
            f = quote_ident(fname),
        ))
        .await
        .map_err(|source| Error::DbDoing {
            what: format!("installing the suppression function of {}", t.display()),
            source,
        })?;
    }
    Ok(fresh)
}

/// Drops triggers of ours on tables that left the policy (not in `keep`) and legacy-named
/// ones; returns what it removed. A partition's clone of its parent's trigger
/// (tgparentid <> 0) goes with the parent's and cannot be dropped on its own.
async fn drop_stale_triggers(
    tx: &tokio_postgres::Transaction<'_>,
    keep: &[u32],
) -> Result<Vec<String>, Error> {
    let mut changed = Vec::new();
    let stale = tx
        .query(
            "SELECT tg.tgrelid::regclass::text, tg.tgname::text FROM pg_catalog.pg_trigger tg \
               JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE tg.tgparentid = 0 AND n.nspname = 'pgredact' \
               AND ((tg.tgname = $1 AND NOT (tg.tgrelid = ANY($2))) OR tg.tgname = ANY($3))",
            &[&TRIGGER_NAME, &keep, &LEGACY_TRIGGER_NAMES],
        )
        .await?;
    for r in stale {
        let (name, trigger): (String, String) = (r.get(0), r.get(1));
        tx.batch_execute(&format!(
            "DROP TRIGGER IF EXISTS {} ON {name}",
            quote_ident(&trigger)
        ))
        .await
        .map_err(|source| Error::DbDoing {
            what: format!("dropping the stale suppression trigger on {name}"),
            source,
        })?;
        changed.push(format!("{name} (trigger removed)"));
    }
    Ok(changed)
}

/// What pgredact's trigger on one table calls: the table's PL/pgSQL function, or the compiled
/// front with the arguments it needs to call that function.
struct TriggerCall {
    /// The function, as `to_regprocedure` reads it.
    function: String,
    args: Vec<String>,
}

impl TriggerCall {
    fn new(t: &TableSpec, fname: &str, raw: bool, compiled: bool) -> TriggerCall {
        if !compiled {
            return TriggerCall {
                function: format!("pgredact.{}()", quote_ident(fname)),
                args: Vec::new(),
            };
        }
        let lookup = if raw && !t.tokenize { "raw" } else { "keyed" };
        let fold = if t.fold_case { "fold" } else { "exact" };
        let prefix = if t.tokenize { TOKEN_PREFIX } else { "" };
        TriggerCall {
            function: COMPILED_FUNCTION.to_string(),
            args: [fname, t.subject.as_str(), lookup, fold, prefix]
                .iter()
                .map(|a| a.to_string())
                .collect(),
        }
    }

    /// `EXECUTE FUNCTION` target.
    fn sql(&self) -> String {
        let name = self.function.trim_end_matches("()");
        let args: Vec<String> = self.args.iter().map(|a| quote_literal(a)).collect();
        format!("{name}({})", args.join(", "))
    }

    /// `pg_trigger.tgargs`: each argument followed by a NUL byte.
    fn tgargs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.args {
            out.extend_from_slice(a.as_bytes());
            out.push(0);
        }
        out
    }

    /// The relation has pgredact's trigger, ALWAYS, calling this with these arguments.
    async fn is_current(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        oid: u32,
    ) -> Result<bool, tokio_postgres::Error> {
        Ok(tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg \
                 WHERE tg.tgrelid = $1 AND tg.tgname = $2 AND tg.tgenabled = 'A' \
                   AND tg.tgfoid = pg_catalog.to_regprocedure($3) AND tg.tgargs = $4)",
                &[&oid, &TRIGGER_NAME, &self.function, &self.tgargs()],
            )
            .await?
            .get(0))
    }
}

/// Whether the triggers use the compiled front ([`EXTENSION`]): allowed by `[forget]
/// compiled_trigger`, and the server has the extension. Installs it when missing (it is a
/// trusted extension: the control role may), and puts the statement triggers that invalidate
/// the caches on the list and the key. When the extension cannot be used (not on the server,
/// installed by a role other than the control role or a superuser, no EXECUTE), the triggers
/// call the PL/pgSQL functions directly, as before; `pgredact check` says which.
async fn compiled_front(
    tx: &tokio_postgres::Transaction<'_>,
    spec: &Spec,
    changed: &mut Vec<String>,
) -> Result<bool, Error> {
    if !spec.compiled_trigger {
        return Ok(false);
    }
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = $1), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = $1)",
            &[&EXTENSION],
        )
        .await?;
    let (available, installed): (bool, bool) = (row.get(0), row.get(1));
    if !available && !installed {
        return Ok(false);
    }
    if !installed && !install_extension(tx, spec, changed).await? {
        return Ok(false);
    }
    let usable: Option<bool> = tx
        .query_opt(
            "SELECT pg_catalog.has_function_privilege($2, 'EXECUTE') \
                AND pg_catalog.has_function_privilege($3, 'EXECUTE') \
                AND (e.extowner = c.relowner OR r.rolsuper) \
             FROM pg_catalog.pg_extension e \
             JOIN pg_catalog.pg_roles r ON r.oid = e.extowner \
             JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass('pgredact.forget_list') \
             WHERE e.extname = $1",
            &[&EXTENSION, &COMPILED_FUNCTION, &LIST_CHANGED_FUNCTION],
        )
        .await?
        .map(|r| r.get(0));
    if usable != Some(true) {
        tracing::warn!(
            database = %spec.database,
            "the {EXTENSION} extension is installed but not usable by the control role (it must own it, or a \
             superuser must, with EXECUTE granted), so the suppression triggers stay PL/pgSQL only"
        );
        return Ok(false);
    }
    ensure_list_triggers(tx, changed).await?;
    Ok(true)
}

/// Installs the extension (in a savepoint); false, with a warning, when that fails.
async fn install_extension(
    tx: &tokio_postgres::Transaction<'_>,
    spec: &Spec,
    changed: &mut Vec<String>,
) -> Result<bool, Error> {
    tx.batch_execute("SAVEPOINT pgredact_extension").await?;
    match tx
        .batch_execute(&format!("CREATE EXTENSION IF NOT EXISTS {EXTENSION}"))
        .await
    {
        Ok(()) => {
            tx.batch_execute("RELEASE SAVEPOINT pgredact_extension")
                .await?;
            changed.push(format!("extension {EXTENSION} (installed)"));
            Ok(true)
        }
        Err(e) => {
            tracing::warn!(
                database = %spec.database,
                "the {EXTENSION} extension could not be installed, so the suppression triggers stay PL/pgSQL only: {}",
                super::db_error(&e)
            );
            tx.batch_execute("ROLLBACK TO SAVEPOINT pgredact_extension")
                .await?;
            Ok(false)
        }
    }
}

/// Puts the statement triggers that invalidate the compiled front's caches on the forget list
/// and the key, unless they are current.
async fn ensure_list_triggers(
    tx: &tokio_postgres::Transaction<'_>,
    changed: &mut Vec<String>,
) -> Result<(), Error> {
    for table in ["pgredact.forget_list", "pgredact.hash_key"] {
        let current: bool = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg \
                 WHERE tg.tgrelid = pg_catalog.to_regclass($1) AND tg.tgname = $2 AND tg.tgenabled = 'A' \
                   AND tg.tgfoid = pg_catalog.to_regprocedure($3) AND tg.tgtype = $4)",
                &[&table, &LIST_TRIGGER_NAME, &LIST_CHANGED_FUNCTION, &LIST_TRIGGER_TYPE],
            )
            .await?
            .get(0);
        if current {
            continue;
        }
        tx.batch_execute(&format!(
            "CREATE OR REPLACE TRIGGER {trg} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} \
             FOR EACH STATEMENT EXECUTE FUNCTION {f};\n\
             ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trg};",
            trg = quote_ident(LIST_TRIGGER_NAME),
            f = LIST_CHANGED_FUNCTION,
        ))
        .await
        .map_err(|source| Error::DbDoing {
            what: format!("installing the cache invalidation trigger on {table}"),
            source,
        })?;
        changed.push(format!("{table} (cache invalidation trigger)"));
    }
    Ok(())
}

/// `pg_trigger.tgtype` of the invalidation triggers: AFTER, FOR EACH STATEMENT, INSERT (4),
/// DELETE (8), UPDATE (16), TRUNCATE (32).
const LIST_TRIGGER_TYPE: i16 = 4 | 8 | 16 | 32;

/// Partition clones of the table's trigger that are not ALWAYS (disabled on one partition, or
/// cloned while the parent's was not): made ALWAYS again.
async fn enable_clones(
    tx: &tokio_postgres::Transaction<'_>,
    t: &TableSpec,
) -> Result<Vec<String>, Error> {
    let rows = tx
        .query(
            "SELECT tg.tgrelid::regclass::text FROM pg_catalog.pg_trigger tg \
             WHERE tg.tgname = $1 AND tg.tgparentid <> 0 AND tg.tgenabled <> 'A' AND tg.tgrelid = ANY($2)",
            &[&TRIGGER_NAME, &t.tree_oids()],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let name: String = r.get(0);
        tx.batch_execute(&format!(
            "ALTER TABLE {name} ENABLE ALWAYS TRIGGER {}",
            quote_ident(TRIGGER_NAME)
        ))
        .await
        .map_err(|source| Error::DbDoing {
            what: format!("enabling the suppression trigger on partition {name}"),
            source,
        })?;
        out.push(format!("{name} (trigger enabled ALWAYS)"));
    }
    Ok(out)
}

/// What is wrong with suppression on the policy tables, their partitions and children: each
/// line is an error for `pgredact check`. A missing trigger counts only once the forget list
/// has entries (before the first job there is nothing to suppress).
pub async fn audit(client: &Client, spec: &Spec) -> Result<Vec<String>, Error> {
    let list_used: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('pgredact.forget_list') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let list_used = list_used
        && client
            .query_one("SELECT EXISTS (SELECT 1 FROM pgredact.forget_list)", &[])
            .await?
            .get::<_, bool>(0);
    let mut out = Vec::new();
    let mut compiled = false;
    for t in spec.changing_tables() {
        let rows = client
            .query(
                "SELECT c.oid, c.oid::regclass::text, tg.tgname::text, tg.tgenabled::text, tg.tgtype::int4, \
                        n.nspname::text, p.proname::text, tg.tgargs \
                 FROM pg_catalog.pg_class c \
                 LEFT JOIN pg_catalog.pg_trigger tg ON tg.tgrelid = c.oid AND NOT tg.tgisinternal \
                 LEFT JOIN pg_catalog.pg_proc p ON p.oid = tg.tgfoid \
                 LEFT JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE c.oid = ANY($1) ORDER BY 2, 3",
                &[&t.tree_oids()],
            )
            .await?;
        for oid in t.tree_oids() {
            let mine: Vec<TriggerRow> = rows
                .iter()
                .filter(|r| r.get::<_, u32>(0) == oid)
                .map(TriggerRow::from)
                .collect();
            let Some(rel) = mine.first().map(|r| r.rel.clone()) else {
                continue;
            };
            compiled |= mine.iter().any(|r| {
                r.name.as_deref() == Some(TRIGGER_NAME)
                    && r.function == "pgredact_suppress.suppress"
            });
            out.extend(audit_relation(&rel, &mine, list_used));
        }
    }
    if compiled {
        let missing: Vec<String> = client
            .query(
                "SELECT t.name FROM pg_catalog.unnest(ARRAY['pgredact.forget_list', 'pgredact.hash_key']) AS t(name) \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger tg \
                   WHERE tg.tgrelid = pg_catalog.to_regclass(t.name) AND tg.tgname = $1 AND tg.tgenabled = 'A' \
                     AND tg.tgfoid = pg_catalog.to_regprocedure($2))",
                &[&LIST_TRIGGER_NAME, &LIST_CHANGED_FUNCTION],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for table in missing {
            out.push(format!(
                "{table}: the cache invalidation trigger {LIST_TRIGGER_NAME:?} is missing, disabled or not ENABLE \
                 ALWAYS, so the compiled suppression triggers cannot trust their cache and send every row to the \
                 PL/pgSQL check (suppression holds, writes are slower); the next forget job or admin server start \
                 reinstalls it"
            ));
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
    /// The first trigger argument (the PL/pgSQL function the compiled front calls).
    arg0: String,
}

impl TriggerRow {
    /// The trigger calls pgredact's suppression: its PL/pgSQL function, or the compiled front
    /// calling one.
    fn calls_suppression(&self) -> bool {
        self.function.starts_with("pgredact.forget_suppress_")
            || (self.function == "pgredact_suppress.suppress"
                && self.arg0.starts_with("forget_suppress_"))
    }
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
            arg0: r
                .get::<_, Option<Vec<u8>>>(7)
                .and_then(|a| {
                    a.split(|&b| b == 0)
                        .next()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                })
                .unwrap_or_default(),
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
        Some(r) if !r.calls_suppression() => out.push(format!(
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
            arg0: String::new(),
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

    /// The compiled front gets the PL/pgSQL function, the subject, the lookup, the case rule
    /// and the token prefix, as literals and as `pg_trigger.tgargs` stores them.
    #[test]
    fn compiled_call_names_its_function_and_lookup() {
        let mut t = table(false);
        t.subject = "it's".into();
        let plain = TriggerCall::new(&t, "forget_suppress_ab", true, false);
        assert_eq!(plain.sql(), "pgredact.\"forget_suppress_ab\"()");
        assert!(plain.tgargs().is_empty());
        let raw = TriggerCall::new(&t, "forget_suppress_ab", true, true);
        assert_eq!(
            raw.sql(),
            "pgredact_suppress.suppress('forget_suppress_ab', 'it''s', 'raw', 'exact', '')"
        );
        assert_eq!(
            raw.tgargs(),
            b"forget_suppress_ab\0it's\0raw\0exact\0\0".to_vec()
        );
        let mut pii = table(true);
        pii.fold_case = true;
        let keyed = TriggerCall::new(&pii, "forget_suppress_cd", true, true);
        assert_eq!(
            keyed.sql(),
            "pgredact_suppress.suppress('forget_suppress_cd', 'email', 'keyed', 'fold', 'forgotten:')"
        );
        // Without raw IDs on the list, the lookup is keyed even for IDs that are not PII.
        assert!(TriggerCall::new(&t, "f", false, true)
            .sql()
            .contains("'keyed'"));
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

//! Reading the live catalog once to turn a policy into a [`Spec`]: each policy table's relation,
//! columns and types, its partitions and inheritance children, and the static blockers (foreign
//! code the UPDATE would run, missing indexes, foreign keys that would break, tables not owned).

use super::csv::IdKind;
use super::spec::*;
use super::{db_error, Error};
use crate::policy::{quote_ident, quote_literal, DatabasePolicy, TablePolicy};
use tokio_postgres::Client;

/// Code owned by another role that the forget UPDATE of table `oid` (or of its partitions and
/// inheritance children) would run with the control role's rights: functions called by enabled
/// user triggers, CHECK constraints, domain constraints of its columns, index expressions and
/// predicates, and stored generated columns, unless the function is SECURITY DEFINER (it then
/// runs as its owner), in pg_catalog, or owned by a superuser or the control role. Such code could
/// read what the control role reads: the hash key, the jobs' raw customer IDs, every table's raw
/// PII. Also rules on the table (they rewrite the UPDATE) and row-level security that would hide
/// rows from the UPDATE and from its verification.
async fn foreign_code_blockers(
    client: &Client,
    oid: u32,
    shown: &str,
) -> Result<Vec<String>, Error> {
    let rows = client.query(FOREIGN_CODE_SQL, &[&oid]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (kind, what, func, owner): (String, String, Option<String>, Option<String>) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            match (kind.as_str(), func, owner) {
                ("rule", _, _) => format!(
                    "{shown}: rule {what} rewrites UPDATEs of the table, so forget cannot know what its UPDATE does; drop the rule or remove the table from the forget policy"
                ),
                ("row security", _, _) => format!(
                    "{shown}: row-level security is enabled on {what} and the control role neither owns it nor has BYPASSRLS: policies would hide rows from the forget UPDATE and from its verification (ALTER ROLE <control role> BYPASSRLS, or make it the owner without FORCE ROW LEVEL SECURITY)"
                ),
                (_, Some(f), Some(o)) => format!(
                    "{shown}: {kind} {what} calls function {f}, owned by role {o} and not SECURITY DEFINER: it would run with the control role's rights during forgetting (the control role reads the hash key, the jobs' raw customer IDs and all raw PII); make it SECURITY DEFINER (it then runs as {o}), have a superuser own it, or drop or disable it"
                ),
                _ => format!("{shown}: {kind} {what} runs code of another role during forgetting"),
            }
        })
        .collect())
}

/// The query behind [`foreign_code_blockers`] ($1 the table): `(kind, what, function, owner)`.
const FOREIGN_CODE_SQL: &str = "WITH RECURSIVE tree(r) AS ( \
    SELECT CAST($1 AS pg_catalog.oid) \
    UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.r), \
  deps(kind, what, classid, objid) AS ( \
    SELECT 'constraint', c.conname::text || ' on ' || c.conrelid::pg_catalog.regclass::text, \
           'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid \
      FROM pg_catalog.pg_constraint c JOIN tree ON c.conrelid = tree.r \
    UNION ALL \
    SELECT 'index', i.indexrelid::pg_catalog.regclass::text, 'pg_catalog.pg_class'::pg_catalog.regclass, i.indexrelid \
      FROM pg_catalog.pg_index i JOIN tree ON i.indrelid = tree.r \
    UNION ALL \
    SELECT 'generated column', ad.adrelid::pg_catalog.regclass::text || '.' || a.attname::text, \
           'pg_catalog.pg_attrdef'::pg_catalog.regclass, ad.oid \
      FROM pg_catalog.pg_attrdef ad JOIN tree ON ad.adrelid = tree.r \
      JOIN pg_catalog.pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum AND a.attgenerated = 's' \
    UNION ALL \
    SELECT 'domain constraint', c.conname::text || ' of ' || pg_catalog.format_type(c.contypid, NULL), \
           'pg_catalog.pg_constraint'::pg_catalog.regclass, c.oid \
      FROM pg_catalog.pg_attribute a JOIN tree ON a.attrelid = tree.r \
      JOIN pg_catalog.pg_type t ON t.oid = a.atttypid AND t.typtype = 'd' \
      JOIN pg_catalog.pg_constraint c ON c.contypid = t.oid \
     WHERE a.attnum > 0 AND NOT a.attisdropped), \
  code(kind, what, fn) AS ( \
    SELECT 'trigger', t.tgname::text || ' on ' || t.tgrelid::pg_catalog.regclass::text, t.tgfoid \
      FROM pg_catalog.pg_trigger t JOIN tree ON t.tgrelid = tree.r \
     WHERE NOT t.tgisinternal AND t.tgenabled <> 'D' \
       AND t.tgname NOT IN ('~pgredact_forget', 'zzz_pgredact_forget') \
    UNION ALL \
    SELECT DISTINCT deps.kind, deps.what, \
           CASE WHEN d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass THEN d.refobjid \
                ELSE (SELECT o.oprcode::pg_catalog.oid FROM pg_catalog.pg_operator o WHERE o.oid = d.refobjid) END \
      FROM deps JOIN pg_catalog.pg_depend d ON d.classid = deps.classid AND d.objid = deps.objid \
     WHERE d.refclassid IN ('pg_catalog.pg_proc'::pg_catalog.regclass, 'pg_catalog.pg_operator'::pg_catalog.regclass)) \
SELECT DISTINCT code.kind, code.what, p.oid::pg_catalog.regprocedure::text, r.rolname::text \
  FROM code JOIN pg_catalog.pg_proc p ON p.oid = code.fn \
  JOIN pg_catalog.pg_roles r ON r.oid = p.proowner \
 WHERE NOT p.prosecdef AND p.pronamespace <> 'pg_catalog'::pg_catalog.regnamespace \
   AND NOT r.rolsuper AND r.rolname <> CURRENT_USER \
UNION ALL \
SELECT DISTINCT 'rule', w.rulename::text || ' on ' || w.ev_class::pg_catalog.regclass::text, NULL, NULL \
  FROM pg_catalog.pg_rewrite w JOIN tree ON w.ev_class = tree.r WHERE w.rulename <> '_RETURN' \
UNION ALL \
SELECT 'row security', c.oid::pg_catalog.regclass::text, NULL, NULL \
  FROM pg_catalog.pg_class c JOIN tree ON c.oid = tree.r \
 WHERE c.relrowsecurity \
   AND NOT (SELECT rolbypassrls OR rolsuper FROM pg_catalog.pg_roles WHERE rolname = CURRENT_USER) \
   AND (c.relforcerowsecurity OR NOT pg_catalog.pg_has_role(c.relowner, 'USAGE')) \
ORDER BY 1, 2";

struct AttrRow {
    name: String,
    sql_type: String,
    base: String,
    typmod: i32,
    category: String,
    not_null: bool,
    attnum: i16,
}

/// Reads the catalog for every policy table with a subject.
pub async fn resolve(client: &Client, policy: &DatabasePolicy) -> Result<Spec, Error> {
    let mut tables = Vec::new();
    let mut found = Findings::default();
    let mut subject_names = Vec::new();
    // The ID is PII when any policy table lists its subject column as a PII column.
    let tokenize = policy.tables.values().any(|t| {
        t.subject
            .as_ref()
            .is_some_and(|s| t.columns.contains_key(s))
    });
    for tp in policy.tables.values() {
        let Some(subject) = &tp.subject else { continue };
        if !subject_names.contains(subject) {
            subject_names.push(subject.clone());
        }
        if let Some(t) = resolve_table(client, tp, subject, tokenize, &mut found).await? {
            tables.push(t);
        }
    }
    let Findings {
        mut blockers,
        warnings,
        kind,
    } = found;
    fold_listed_descendants(policy, &mut tables, &mut blockers);
    if tables.is_empty() && blockers.is_empty() {
        return Err(Error::NothingToForget(policy.database.clone()));
    }
    let id_kind = kind.unwrap_or(IdKind::Text);
    for t in &mut tables {
        t.fold_case = id_kind == IdKind::CiText;
    }
    let mut spec = Spec {
        database: policy.database.clone(),
        tables,
        id_kind,
        tokenize,
        subject_names,
        static_blockers: blockers,
        warnings,
        compiled_trigger: true,
    };
    if tokenize {
        fk_blockers(client, &mut spec).await?;
    }
    Ok(spec)
}

/// What `resolve` gathers across the policy tables besides their specs.
#[derive(Default)]
struct Findings {
    blockers: Vec<String>,
    warnings: Vec<String>,
    /// The ID kind the subject columns seen so far agree on.
    kind: Option<IdKind>,
}

/// The `pg_class` facts `resolve_table` needs of a policy table.
struct RelRow {
    oid: u32,
    relkind: String,
    reltuples: f64,
    owned: bool,
    can_select: bool,
    can_update: bool,
    can_trigger: bool,
}

/// The spec of one policy table with subject column `subject`, or `None` (with a blocker or
/// warning recorded) when it cannot take part.
async fn resolve_table(
    client: &Client,
    tp: &TablePolicy,
    subject: &str,
    tokenize: bool,
    found: &mut Findings,
) -> Result<Option<TableSpec>, Error> {
    let shown = tp.qualified();
    let Some(rel) = table_relation(client, tp, &shown, found).await? else {
        return Ok(None);
    };
    let attrs = table_attrs(client, rel.oid).await?;
    let find = |n: &str| attrs.iter().find(|a| a.name == n);
    let Some(subj) = find(subject) else {
        found.blockers.push(format!(
            "{shown}: subject column {subject:?} (policy line {}) does not exist",
            tp.line
        ));
        return Ok(None);
    };
    note_subject_kind(&shown, subject, subj, found)?;
    let qname = quote_ident(&tp.schema) + "." + &quote_ident(&tp.name);
    if !rel.can_select || !rel.can_update {
        found.blockers.push(format!(
            "{shown}: the control role lacks SELECT or UPDATE on the table (GRANT SELECT, UPDATE ON {qname} TO <control role>)"
        ));
    }
    let columns = resolve_columns(client, tp, &shown, subject, &attrs, &mut found.blockers).await?;
    if tokenize {
        found
            .blockers
            .extend(token_fit_blocker(&shown, subject, subj));
    }
    let changes = changes(tokenize, &columns);
    if changes && !rel.can_trigger {
        found.blockers.push(format!(
            "{shown}: the control role lacks the TRIGGER privilege, so re-ingestion cannot be suppressed \
             (GRANT TRIGGER ON {qname} TO <control role>)"
        ));
    }
    if !subject_indexed(client, rel.oid, subj.attnum).await? && rel.reltuples > LARGE_TABLE_ROWS {
        found
            .blockers
            .push(unindexed_blocker(&shown, &qname, subject, rel.reltuples));
    }
    if changes {
        found
            .blockers
            .extend(foreign_code_blockers(client, rel.oid, &shown).await?);
    }
    if !rel.owned && changes {
        found.blockers.push(not_owner_blocker(&shown, &qname));
    }
    let descendants = descendants(
        client,
        rel.oid,
        subject,
        changes,
        &mut found.blockers,
        &mut found.warnings,
    )
    .await?;
    Ok(Some(TableSpec {
        schema: tp.schema.clone(),
        name: tp.name.clone(),
        oid: rel.oid,
        subject: subject.to_string(),
        subject_type: subj.sql_type.clone(),
        subject_attnum: subj.attnum,
        columns,
        tokenize,
        fold_case: false,
        reltuples: rel.reltuples,
        owned: rel.owned,
        partitioned: rel.relkind == "p",
        descendants,
    }))
}

/// The `pg_class` row of a policy table, or `None` (with a blocker or warning recorded) when it
/// is missing or not a table.
async fn table_relation(
    client: &Client,
    tp: &TablePolicy,
    shown: &str,
    found: &mut Findings,
) -> Result<Option<RelRow>, Error> {
    let rel = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.reltuples::float8, \
                    pg_catalog.pg_has_role(c.relowner, 'USAGE'), \
                    pg_catalog.has_table_privilege(c.oid, 'SELECT'), \
                    pg_catalog.has_table_privilege(c.oid, 'UPDATE'), \
                    pg_catalog.has_table_privilege(c.oid, 'TRIGGER') \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&tp.schema, &tp.name],
        )
        .await?;
    let Some(rel) = rel else {
        found.blockers.push(format!(
            "table {shown} (policy line {}) does not exist",
            tp.line
        ));
        return Ok(None);
    };
    let relkind: String = rel.get(1);
    if relkind == "v" || relkind == "m" {
        found.warnings.push(format!(
            "{shown} is a view (relkind {relkind}): skipped; forget changes its base tables \
             (materialized views depending on changed tables are refreshed)"
        ));
        return Ok(None);
    }
    if relkind != "r" && relkind != "p" {
        found.blockers.push(format!(
            "{shown} is not a table (relkind {relkind}): forget updates tables only"
        ));
        return Ok(None);
    }
    Ok(Some(RelRow {
        oid: rel.get(0),
        relkind,
        reltuples: rel.get(2),
        owned: rel.get(3),
        can_select: rel.get(4),
        can_update: rel.get(5),
        can_trigger: rel.get(6),
    }))
}

/// The live columns of table `oid`, in column order.
async fn table_attrs(client: &Client, oid: u32) -> Result<Vec<AttrRow>, Error> {
    Ok(client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    bt.typname::text, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                    bt.typcategory::text, a.attnotnull, a.attnum \
             FROM pg_catalog.pg_attribute a \
             JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
             JOIN pg_catalog.pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?
        .iter()
        .map(|r| AttrRow {
            name: r.get(0),
            sql_type: r.get(1),
            base: r.get(2),
            typmod: r.get(3),
            category: r.get(4),
            not_null: r.get(5),
            attnum: r.get(6),
        })
        .collect())
}

/// Records the ID kind of subject column `subj` (a blocker when forget cannot handle its type);
/// fails when it does not combine with the kinds seen before.
fn note_subject_kind(
    shown: &str,
    subject: &str,
    subj: &AttrRow,
    found: &mut Findings,
) -> Result<(), Error> {
    match IdKind::for_type(&subj.base) {
        None => found.blockers.push(format!(
            "{shown}: subject column {subject} has type {}; forget supports integer, text and uuid subjects",
            subj.sql_type
        )),
        Some(k) => {
            found.kind = Some(match found.kind {
                None => k,
                Some(prev) => prev.combine(k).map_err(|source| Error::SubjectTypes {
                    table: shown.to_string(),
                    source,
                })?,
            })
        }
    }
    Ok(())
}

/// The specs of the PII columns of policy table `tp` other than its subject, with a blocker for
/// each one that is missing, NOT NULL without a `forget` value, or has an invalid `forget` value.
async fn resolve_columns(
    client: &Client,
    tp: &TablePolicy,
    shown: &str,
    subject: &str,
    attrs: &[AttrRow],
    blockers: &mut Vec<String>,
) -> Result<Vec<ColSpec>, Error> {
    let mut columns = Vec::new();
    for (cname, cp) in &tp.effective_columns(attrs.iter().map(|a| a.name.as_str())) {
        if cname == subject {
            continue;
        }
        let Some(a) = attrs.iter().find(|a| &a.name == cname) else {
            blockers.push(format!(
                "{shown}: PII column {cname:?} (policy line {}) does not exist",
                cp.line
            ));
            continue;
        };
        let json_paths = match (&cp.mask, &cp.forget) {
            (crate::policy::Mask::Json(j), None) => Some(json_forget_spec(j)),
            _ => None,
        };
        if a.not_null && cp.forget.is_none() && json_paths.is_none() {
            blockers.push(format!(
                "{shown}.{cname} is NOT NULL and has no `forget` value in the policy (line {}): \
                 add e.g. columns.{cname} = {{ mask = \"...\", forget = \"...\" }}",
                cp.line
            ));
        }
        if let Some(v) = &cp.forget {
            let probe = format!("SELECT CAST({} AS {})", quote_literal(v), a.sql_type);
            if let Err(e) = client.simple_query(&probe).await {
                blockers.push(format!(
                    "{shown}.{cname}: forget value {v:?} (policy line {}) is not a valid {}: {}",
                    cp.line,
                    a.sql_type,
                    db_error(&e)
                ));
            }
        }
        columns.push(ColSpec {
            name: cname.clone(),
            sql_type: a.sql_type.clone(),
            not_null: a.not_null,
            forget: cp.forget.clone(),
            attnum: a.attnum,
            json_paths,
        });
    }
    Ok(columns)
}

/// With a tokenized (PII) customer ID, the blocker for a subject column the replacement token
/// does not fit in.
fn token_fit_blocker(shown: &str, subject: &str, subj: &AttrRow) -> Option<String> {
    let need = (TOKEN_PREFIX.len() + TOKEN_HEX) as i32;
    if subj.category != "S" {
        Some(format!(
            "{shown}: the customer ID is PII (listed as a PII column) but {subject} has type {}: \
             the replacement token needs a text column",
            subj.sql_type
        ))
    } else if matches!(subj.base.as_str(), "varchar" | "bpchar")
        && subj.typmod >= 4
        && subj.typmod - 4 < need
    {
        Some(format!(
            "{shown}: {subject} is {} but the replacement token has {need} characters",
            subj.sql_type
        ))
    } else {
        None
    }
}

/// The blocker for a large table without an index on its subject column.
fn unindexed_blocker(shown: &str, qname: &str, subject: &str, reltuples: f64) -> String {
    format!(
        "{shown} has about {} rows and no index on its subject column {subject}: every batch would scan \
         the whole table. Create one first: CREATE INDEX CONCURRENTLY ON {qname} ({})",
        reltuples as i64,
        quote_ident(subject)
    )
}

/// Whether table `oid` has a valid, non-partial index led by its subject column `attnum`.
async fn subject_indexed(client: &Client, oid: u32, attnum: i16) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = $1 \
               AND i.indkey[0] = $2 AND i.indisvalid AND i.indpred IS NULL)",
            &[&oid, &attnum],
        )
        .await?
        .get(0))
}

/// The blocker for a table the control role does not own: the suppression trigger is made
/// `ENABLE ALWAYS` with an `ALTER TABLE`, which PostgreSQL allows the table's owner only (the
/// TRIGGER privilege is enough for `CREATE TRIGGER`, not for that), so the job would fail at its
/// start with "must be owner of table".
fn not_owner_blocker(shown: &str, qname: &str) -> String {
    format!(
        "{shown}: the control role does not own the table (nor is it a member of the owner role), so it \
         cannot install the suppression trigger: making it ENABLE ALWAYS is an ALTER TABLE, which PostgreSQL \
         allows the owner only (it could not ANALYZE the table afterwards either). Make the control role the \
         owner (ALTER TABLE {qname} OWNER TO <control role>) or a member of the owner role \
         (GRANT <owner role> TO <control role>)"
    )
}

fn changes(tokenize: bool, columns: &[ColSpec]) -> bool {
    tokenize || !columns.is_empty()
}

/// The partitions and inheritance children of `oid`, at any depth, with what a forget job
/// needs of each: an index on the subject column when large; for inheritance children (which
/// get a trigger of their own) the TRIGGER privilege.
async fn descendants(
    client: &Client,
    oid: u32,
    subject: &str,
    changes: bool,
    blockers: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Descendant>, Error> {
    let rows = client
        .query(
            "WITH RECURSIVE tree(oid) AS ( \
               SELECT i.inhrelid FROM pg_catalog.pg_inherits i WHERE i.inhparent = $1 \
               UNION SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
             SELECT c.oid, n.nspname::text, c.relname::text, c.relkind::text, c.relispartition, \
                    c.reltuples::float8, pg_catalog.pg_has_role(c.relowner, 'USAGE'), \
                    pg_catalog.has_table_privilege(c.oid, 'TRIGGER'), \
                    EXISTS (SELECT 1 FROM pg_catalog.pg_index x JOIN pg_catalog.pg_attribute a \
                              ON a.attrelid = c.oid AND a.attnum = x.indkey[0] \
                            WHERE x.indrelid = c.oid AND a.attname = $2 AND x.indisvalid AND x.indpred IS NULL) \
             FROM tree JOIN pg_catalog.pg_class c ON c.oid = tree.oid \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY 2, 3",
            &[&oid, &subject],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        let d = Descendant {
            oid: r.get(0),
            schema: r.get(1),
            name: r.get(2),
            partition: r.get(4),
            partitioned: r.get::<_, String>(3) == "p",
            owned: r.get(6),
        };
        let (relkind, reltuples, can_trigger, indexed): (String, f64, bool, bool) =
            (r.get(3), r.get(5), r.get(7), r.get(8));
        let shown = d.display();
        if relkind == "f" {
            warnings.push(format!(
                "{shown} is a foreign table under a policy table: forget updates and verifies it through its \
                 foreign-data wrapper, but writes made on the remote server are not suppressed"
            ));
        }
        if relkind == "r" && !indexed && reltuples > LARGE_TABLE_ROWS {
            blockers.push(format!(
                "{shown} has about {} rows and no index on its subject column {subject}: every batch would scan \
                 the whole table. Create one first: CREATE INDEX CONCURRENTLY ON {} ({})",
                reltuples as i64,
                d.qname(),
                quote_ident(subject)
            ));
        }
        if changes && !d.partition && !can_trigger {
            blockers.push(format!(
                "{shown} inherits from a policy table but the control role lacks the TRIGGER privilege on it, so \
                 re-ingestion into it cannot be suppressed (GRANT TRIGGER ON {} TO <control role>)",
                d.qname()
            ));
        }
        if changes && !d.partition && !d.owned {
            blockers.push(not_owner_blocker(
                &format!("{shown} (an inheritance child of a policy table)"),
                &d.qname(),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// A policy table that is a partition or child of another policy table is covered by that
/// ancestor (one UPDATE, one trigger: PostgreSQL would refuse a second trigger of the same name
/// on a partition, and two UPDATEs of one row in one statement keep only one). It must then
/// forget the same columns the same way; otherwise the job is blocked.
fn fold_listed_descendants(
    policy: &DatabasePolicy,
    tables: &mut Vec<TableSpec>,
    blockers: &mut Vec<String>,
) {
    let same = |a: &TableSpec, b: &TableSpec| {
        let key = |t: &TableSpec| {
            #[allow(clippy::type_complexity)]
            let mut v: Vec<(String, Option<String>, Option<String>)> = t
                .columns
                .iter()
                .map(|c| (c.name.clone(), c.forget.clone(), c.json_paths.clone()))
                .collect();
            v.sort();
            (t.subject.clone(), v)
        };
        key(a) == key(b)
    };
    let mut covered = Vec::new();
    for t in tables.iter() {
        for u in tables.iter() {
            if u.oid == t.oid || !t.descendants.iter().any(|d| d.oid == u.oid) {
                continue;
            }
            covered.push(u.oid);
            if !same(t, u) {
                blockers.push(format!(
                    "{} is listed in the policy of database {:?} and is also a partition or inheritance child of \
                     policy table {}, whose UPDATE and suppression trigger already reach its rows: give it the same \
                     subject, PII columns and forget values as {}, or list only one of them",
                    u.display(),
                    policy.database,
                    t.display(),
                    t.display()
                ));
            }
        }
    }
    tables.retain(|t| !covered.contains(&t.oid));
}

/// With tokenized IDs, foreign keys on subject columns must stay satisfiable: between two
/// policy tables the job updates both sides in one statement; from any other table only
/// `ON UPDATE CASCADE` works.
async fn fk_blockers(client: &Client, spec: &mut Spec) -> Result<(), Error> {
    let oids: Vec<u32> = spec.tables.iter().map(|t| t.oid).collect();
    let rows = client
        .query(
            "SELECT con.conname::text, con.conrelid, con.confrelid, con.conkey, con.confkey, \
                    con.confupdtype::text, con.conrelid::regclass::text, con.confrelid::regclass::text \
             FROM pg_catalog.pg_constraint con \
             WHERE con.contype = 'f' AND (con.conrelid = ANY($1) OR con.confrelid = ANY($1))",
            &[&oids],
        )
        .await?;
    let subject_of = |oid: u32| {
        spec.tables
            .iter()
            .find(|t| t.oid == oid)
            .map(|t| t.subject_attnum)
    };
    for r in rows {
        let (name, rel, frel): (String, u32, u32) = (r.get(0), r.get(1), r.get(2));
        let (key, fkey): (Vec<i16>, Vec<i16>) = (r.get(3), r.get(4));
        let (upd, rel_name, frel_name): (String, String, String) = (r.get(5), r.get(6), r.get(7));
        let touches_ref = subject_of(frel).is_some_and(|a| fkey.contains(&a));
        let touches_child = subject_of(rel).is_some_and(|a| key.contains(&a));
        if !touches_ref && !touches_child {
            continue;
        }
        let both_subjects =
            key.len() == 1 && subject_of(rel) == Some(key[0]) && subject_of(frel) == Some(fkey[0]);
        if both_subjects || (touches_ref && upd == "c" && !touches_child) {
            continue;
        }
        spec.static_blockers.push(format!(
            "foreign key {name} from {rel_name} to {frel_name} involves a customer ID column, which forget \
             replaces by a token; make both tables policy tables with that column as `subject`, or use ON UPDATE CASCADE"
        ));
    }
    Ok(())
}

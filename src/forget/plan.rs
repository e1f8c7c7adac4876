//! Planning a forget request: which tables and columns change, how many rows match, and what
//! would make the job fail part-way (blockers). A plan with blockers touches nothing.
//!
//! [`resolve`] reads the live catalog once and turns the policy into [`Spec`] (the tables and
//! columns that take part, with exact types) plus static blockers; [`plan`] adds what depends on
//! the IDs (matched rows, CHECK and UNIQUE conflicts). The SQL the job runs is built from the
//! same [`TableSpec`], so the plan and the execution cannot disagree about columns or types.

use super::csv::IdKind;
use super::{db_error, Error};
use crate::policy::{quote_ident, quote_literal, DatabasePolicy, TablePolicy};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

/// Prefix of the token that replaces a subject ID that is itself PII. The rest is random
/// ([`NEW_TOKEN_SQL`]), kept with the ID's keyed hash on the forget list, so one customer keeps
/// one token everywhere, and no key, masking path or stored table derives it from the ID.
pub const TOKEN_PREFIX: &str = "forgotten:";
/// SQL of a new token: the prefix and [`TOKEN_HEX`] hex digits of a random UUID (PostgreSQL's
/// `gen_random_uuid`, from its strong random source).
pub const NEW_TOKEN_SQL: &str = "'forgotten:' OPERATOR(pg_catalog.||) pg_catalog.left(pg_catalog.replace(CAST(pg_catalog.gen_random_uuid() AS pg_catalog.text), '-', ''), 24)";
/// Hex digits after the prefix.
pub const TOKEN_HEX: usize = 24;
/// Tables with more (estimated) rows than this need an index on the subject column.
pub const LARGE_TABLE_ROWS: f64 = 100_000.0;

/// One PII column (not the subject) and what forget writes into it.
#[derive(Debug, Clone, PartialEq)]
pub struct ColSpec {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`.
    pub sql_type: String,
    pub not_null: bool,
    /// Replacement value (SQL literal text); `None` means NULL.
    pub forget: Option<String>,
    pub attnum: i16,
    /// A json/jsonb column with a `json` mask and no `forget` value: only the masked paths are
    /// cleared (set to JSON null), with this spec for `pgredact_mask.mask_json`.
    pub json_paths: Option<String>,
}

impl ColSpec {
    /// For a `json_paths` column: the forgotten document of `col` as jsonb (no other type name
    /// appears, so it is safe in trigger bodies, which run under the writer's search_path).
    pub fn json_value_sql(&self, col: &str) -> Option<String> {
        self.json_paths.as_ref().map(|spec| {
            format!(
                "pgredact_mask.mask_json(CAST({col} AS pg_catalog.jsonb), CAST({} AS pg_catalog.jsonb), NULL, NULL)",
                quote_literal(spec)
            )
        })
    }

    /// The forgotten value of the column's value `col` (an SQL expression) as SQL.
    pub fn value_sql(&self, col: &str) -> String {
        if let Some(v) = self.json_value_sql(col) {
            return format!("CAST({v} AS {})", self.sql_type);
        }
        match &self.forget {
            None => "NULL".to_string(),
            Some(v) => format!("CAST({} AS {})", quote_literal(v), self.sql_type),
        }
    }

    /// What forget writes, for plans and messages.
    pub fn shown(&self) -> String {
        match (&self.json_paths, &self.forget) {
            (Some(_), _) => "its masked JSON paths set to null".into(),
            (None, Some(v)) => quote_literal(v),
            (None, None) => "NULL".into(),
        }
    }

    /// `<alias>.<col>` still differs from its forgotten value.
    pub fn differs_sql(&self, alias: &str) -> String {
        let c = format!("{alias}.{}", quote_ident(&self.name));
        match (&self.json_paths, &self.forget) {
            (None, None) => format!("{c} IS NOT NULL"),
            // json has no equality operator: compare as jsonb.
            (Some(_), _) => format!(
                "CAST({c} AS pg_catalog.jsonb) IS DISTINCT FROM CAST({} AS pg_catalog.jsonb)",
                self.value_sql(&c)
            ),
            (None, Some(_)) => format!("{c} IS DISTINCT FROM {}", self.value_sql(&c)),
        }
    }
}

/// The `mask_json` spec that forgets a `json` mask's paths: every path's node becomes JSON null,
/// everything else stays.
pub fn json_forget_spec(m: &crate::policy::JsonMask) -> String {
    use crate::policy::{JsonMask, JsonRule, Mask};
    Mask::Json(JsonMask {
        rules: m
            .rules
            .iter()
            .filter(|r| r.mask.is_some())
            .map(|r| JsonRule {
                mask: Some(Box::new(Mask::Null)),
                ..r.clone()
            })
            .collect(),
        default: None,
    })
    .spec()
    .to_string()
}

/// A partition or inheritance child (at any depth) of a policy table that is not itself listed
/// in the policy: forget covers it through its policy ancestor (the UPDATE and the verification
/// of the ancestor reach its rows, its suppression trigger runs the ancestor's function).
#[derive(Debug, Clone, PartialEq)]
pub struct Descendant {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// A partition: PostgreSQL gives it a clone of its parent's trigger (and keeps it in step).
    /// Otherwise an inheritance child, which inherits no trigger and needs its own.
    pub partition: bool,
    /// Partitioned itself (its rows live in its partitions).
    pub partitioned: bool,
    /// The control role may ANALYZE it.
    pub owned: bool,
}

impl Descendant {
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    pub fn qname(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// One policy table with a subject, resolved against the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    pub oid: u32,
    pub subject: String,
    pub subject_type: String,
    pub subject_attnum: i16,
    /// PII columns other than the subject.
    pub columns: Vec<ColSpec>,
    /// The subject ID is PII: it is replaced by the token.
    pub tokenize: bool,
    /// IDs are case-insensitive in this database (a subject column is `citext`): matched,
    /// hashed and suppressed in lower case.
    pub fold_case: bool,
    pub reltuples: f64,
    /// The control role may ANALYZE it (owner or member of the owner role).
    pub owned: bool,
    /// A partitioned table (relkind `p`): its trigger is cloned onto every partition.
    pub partitioned: bool,
    /// Its partitions and inheritance children (at any depth) not listed in the policy.
    pub descendants: Vec<Descendant>,
}

impl TableSpec {
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    pub fn qname(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
    pub fn subj(&self, alias: &str) -> String {
        format!("{alias}.{}", quote_ident(&self.subject))
    }
    /// The inheritance children (not partitions) that need a trigger of their own.
    pub fn inheritance_children(&self) -> impl Iterator<Item = &Descendant> {
        self.descendants.iter().filter(|d| !d.partition)
    }
    /// This table and its descendants, as `(oid, schema, name, partitioned)`.
    fn relations(&self) -> Vec<(u32, String, String, bool)> {
        let mut v = vec![(
            self.oid,
            self.schema.clone(),
            self.name.clone(),
            self.partitioned,
        )];
        for d in &self.descendants {
            v.push((d.oid, d.schema.clone(), d.name.clone(), d.partitioned));
        }
        v
    }
    /// The oids of this table and of its descendants.
    pub fn tree_oids(&self) -> Vec<u32> {
        self.relations().iter().map(|r| r.0).collect()
    }
    /// True when forget changes something in this table.
    pub fn changes_anything(&self) -> bool {
        self.tokenize || !self.columns.is_empty()
    }
    /// `<alias>.subject = ANY(<param as text[] cast to the subject type>)`; with case-folded
    /// IDs (already lower case in `param`), a text subject is compared in lower case (a citext
    /// one compares so by itself, and keeps its index).
    pub fn match_sql(&self, alias: &str, param: &str) -> String {
        if self.fold_case {
            // citext's own `=` (in its extension's schema: control sessions resolve names in
            // pg_catalog only, where `=` would be text's, case-sensitive), which its indexes use.
            if let Some((schema, "citext")) = self.subject_type.rsplit_once('.') {
                return format!(
                    "{} OPERATOR({schema}.=) ANY(CAST(CAST({param} AS pg_catalog.text[]) AS {}[]))",
                    self.subj(alias),
                    self.subject_type
                );
            }
            return format!(
                "{} = ANY(CAST({param} AS pg_catalog.text[]))",
                self.id_text_sql(&self.subj(alias))
            );
        }
        format!(
            "{} = ANY(CAST(CAST({param} AS pg_catalog.text[]) AS {}[]))",
            self.subj(alias),
            self.subject_type
        )
    }
    /// A subject value as the text its keyed hash is computed from (lower case when IDs are
    /// case-insensitive).
    pub fn id_text_sql(&self, value: &str) -> String {
        if self.fold_case {
            format!("pg_catalog.lower(CAST({value} AS pg_catalog.text))")
        } else {
            format!("CAST({value} AS pg_catalog.text)")
        }
    }
    /// The row still holds something forget would change (for tokenized tables, matching the
    /// raw ID is enough: the raw ID itself is PII).
    pub fn not_forgotten_sql(&self, alias: &str) -> String {
        if self.tokenize || self.columns.is_empty() {
            return "true".to_string();
        }
        let parts: Vec<String> = self.columns.iter().map(|c| c.differs_sql(alias)).collect();
        format!("({})", parts.join(" OR "))
    }
    /// The token for a subject value expression: the random token the forget list holds for it
    /// (entries of earlier versions have none: their token was derived from the keyed hash).
    pub fn token_sql(&self, value: &str) -> String {
        let hex = format!("pgredact.hmac_hex({})", self.id_text_sql(value));
        format!(
            "CAST(COALESCE((SELECT f.token FROM pgredact.forget_list f \
             WHERE f.subject_hash OPERATOR(pg_catalog.=) pg_catalog.decode({hex}, 'hex')), \
             '{TOKEN_PREFIX}' OPERATOR(pg_catalog.||) pg_catalog.left({hex}, {TOKEN_HEX})) AS {})",
            self.subject_type
        )
    }
    /// `SET` list of the anonymizing UPDATE (alias `t`).
    pub fn set_sql(&self) -> String {
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} = {}",
                    quote_ident(&c.name),
                    c.value_sql(&format!("t.{}", quote_ident(&c.name)))
                )
            })
            .collect();
        if self.tokenize {
            parts.push(format!(
                "{} = {}",
                quote_ident(&self.subject),
                self.token_sql(&self.subj("t"))
            ));
        }
        parts.join(", ")
    }
}

/// The resolved forget specification of one database.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub database: String,
    pub tables: Vec<TableSpec>,
    pub id_kind: IdKind,
    pub tokenize: bool,
    pub subject_names: Vec<String>,
    /// Found while resolving: these block any job.
    pub static_blockers: Vec<String>,
    pub warnings: Vec<String>,
    /// The suppression triggers may use the compiled front (`[forget] compiled_trigger`; set by
    /// the session from its settings, true by default).
    pub compiled_trigger: bool,
}

impl Spec {
    pub fn changing_tables(&self) -> impl Iterator<Item = &TableSpec> {
        self.tables.iter().filter(|t| t.changes_anything())
    }
}

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

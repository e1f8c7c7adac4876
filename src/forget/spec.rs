//! What forget writes, resolved against the live catalog: the tables and columns that take part,
//! with their exact types ([`Spec`], [`TableSpec`], [`ColSpec`]). The plan and the job's SQL are
//! both built from it, so they cannot disagree about columns or types.

use super::csv::IdKind;
use crate::policy::{quote_ident, quote_literal};

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
    pub(super) fn relations(&self) -> Vec<(u32, String, String, bool)> {
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

//! Policy files (`policies/<name>.toml`, one per database): which roles see raw data,
//! which columns hold PII and how each is masked. Also turns a mask into SQL.

use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How one PII column is masked for masked sessions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Mask {
    Null,
    Redact,
    Constant(String),
    Email,
    Partial {
        keep_first: u32,
        keep_last: u32,
        padding: String,
    },
    Hash,
    Year,
}

impl Mask {
    /// The mask as data for `pgredact_admin.mask_expr`.
    pub fn spec(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Mask::Constant(v) => json!({"kind": "constant", "value": v}),
            Mask::Partial {
                keep_first,
                keep_last,
                padding,
            } => {
                json!({"kind": "partial", "keep_first": keep_first, "keep_last": keep_last, "padding": padding})
            }
            other => json!({"kind": other.kind()}),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Mask::Null => "null",
            Mask::Redact => "redact",
            Mask::Constant(_) => "constant",
            Mask::Email => "email",
            Mask::Partial { .. } => "partial",
            Mask::Hash => "hash",
            Mask::Year => "year",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnPolicy {
    pub mask: Mask,
    /// Value written by `forget` instead of NULL (SQL literal text, cast to the column type).
    pub forget: Option<String>,
    /// 1-based line in the policy file (for `check` reports).
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    pub schema: String,
    pub name: String,
    pub subject: Option<String>,
    /// PII columns, by exact (catalog) column name.
    pub columns: BTreeMap<String, ColumnPolicy>,
    pub line: usize,
}

impl TablePolicy {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Who enforces the masks for this database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Enforcement {
    /// PostgreSQL itself: masked roles hold no privilege on PII columns and read masking views;
    /// pgredact makes that transparent (the default).
    #[default]
    Database,
    /// pgredact alone (weaker): masked roles keep their privileges, so a direct connection to
    /// PostgreSQL reads raw data; pgredact re-checks the catalog and memberships per statement.
    Proxy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DatabasePolicy {
    pub file: PathBuf,
    pub database: String,
    pub enforcement: Enforcement,
    pub unmasked_roles: Vec<String>,
    /// User-defined functions a masked session may call (`schema.name`).
    pub allowed_functions: Vec<String>,
    /// Keyed by (schema, table).
    pub tables: BTreeMap<(String, String), TablePolicy>,
}

impl DatabasePolicy {
    pub fn table(&self, schema: &str, name: &str) -> Option<&TablePolicy> {
        self.tables.get(&(schema.to_string(), name.to_string()))
    }
    pub fn uses_hash(&self) -> bool {
        self.tables
            .values()
            .flat_map(|t| t.columns.values())
            .any(|c| c.mask == Mask::Hash)
    }

    /// The policy as the database's own functions read it (`pgredact.policy`): unmasked roles
    /// and, per table, each PII column's mask kind and options, plus a fingerprint of all that.
    /// Data only: the masking SQL is written by `pgredact_admin.mask_expr` inside PostgreSQL.
    pub fn spec(&self) -> serde_json::Value {
        use serde_json::{json, Map, Value};
        let tables: Vec<Value> = self
            .tables
            .values()
            .map(|t| {
                let cols: Map<String, Value> = t
                    .columns
                    .iter()
                    .map(|(c, cp)| (c.clone(), cp.mask.spec()))
                    .collect();
                json!({"schema": t.schema, "name": t.name, "columns": cols})
            })
            .collect();
        let mut spec = json!({
            "database": self.database,
            "enforcement": match self.enforcement {
                Enforcement::Database => "database",
                Enforcement::Proxy => "proxy",
            },
            "unmasked_roles": self.unmasked_roles,
            "tables": tables,
        });
        let fp = fingerprint(&spec.to_string());
        spec["fingerprint"] = Value::String(fp);
        spec
    }

    /// The fingerprint stored with the spec (and with every masking view built from it).
    pub fn fingerprint(&self) -> String {
        self.spec()["fingerprint"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

fn fingerprint(text: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(text.as_bytes())[..12])
}

/// All loaded policies, by database name. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub by_database: HashMap<String, Arc<DatabasePolicy>>,
    /// Bumped on every successful (re)load; part of the rewrite cache key.
    pub version: u64,
}

impl PolicySet {
    pub fn get(&self, database: &str) -> Option<Arc<DatabasePolicy>> {
        self.by_database.get(database).cloned()
    }
}

// ---------- file format ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    database: String,
    #[serde(default)]
    enforcement: Option<toml::Spanned<String>>,
    #[serde(default)]
    unmasked_roles: Vec<String>,
    #[serde(default)]
    allowed_functions: Vec<String>,
    #[serde(default)]
    tables: BTreeMap<String, toml::Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    columns: BTreeMap<String, toml::Spanned<RawColumn>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawColumn {
    Kind(String),
    Full(RawColumnFull),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumnFull {
    mask: String,
    #[serde(default)]
    keep_first: Option<u32>,
    #[serde(default)]
    keep_last: Option<u32>,
    #[serde(default)]
    padding: Option<String>,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    forget: Option<String>,
}

/// 1-based line of a byte offset.
pub fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

/// Formats a TOML error as `file:line: reason`.
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> String {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    format!("{}:{}: {}", path.display(), line, e.message())
}

/// Splits `schema.table` (either part may be double-quoted); unqualified means `public`.
pub fn split_qualified(name: &str) -> Result<(String, String), String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = name.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    cur.push('"');
                    chars.next();
                } else {
                    quoted = false;
                }
            } else {
                cur.push(c);
            }
        } else if c == '"' {
            quoted = true;
            was_quoted = true;
        } else if c == '.' {
            parts.push((std::mem::take(&mut cur), was_quoted));
            was_quoted = false;
        } else {
            cur.push(c);
        }
    }
    if quoted {
        return Err(format!("unterminated quote in table name {name:?}"));
    }
    parts.push((cur, was_quoted));
    let norm = |(s, q): (String, bool)| if q { s } else { s.to_ascii_lowercase() };
    let mut parts: Vec<String> = parts.into_iter().map(norm).collect();
    if parts.iter().any(String::is_empty) {
        return Err(format!("invalid table name {name:?}"));
    }
    match parts.len() {
        1 => Ok(("public".into(), parts.remove(0))),
        2 => {
            let t = parts.remove(1);
            Ok((parts.remove(0), t))
        }
        _ => Err(format!("invalid table name {name:?}: use \"schema.table\"")),
    }
}

fn parse_mask(raw: RawColumn) -> Result<(Mask, Option<String>), String> {
    let (kind, kf, kl, pad, value, forget) = match raw {
        RawColumn::Kind(k) => (k, None, None, None, None, None),
        RawColumn::Full(f) => (
            f.mask,
            f.keep_first,
            f.keep_last,
            f.padding,
            f.value,
            f.forget,
        ),
    };
    let only_partial = kf.is_some() || kl.is_some() || pad.is_some();
    let mask = match kind.as_str() {
        "null" => Mask::Null,
        "redact" => Mask::Redact,
        "email" => Mask::Email,
        "hash" => Mask::Hash,
        "year" => Mask::Year,
        "constant" => Mask::Constant(
            value.clone().ok_or("mask \"constant\" needs a `value`")?,
        ),
        "partial" => Mask::Partial {
            keep_first: kf.unwrap_or(0),
            keep_last: kl.unwrap_or(0),
            padding: pad.clone().unwrap_or_else(|| "****".into()),
        },
        other => {
            return Err(format!(
                "unknown mask kind {other:?} (expected null, redact, constant, email, partial, hash or year)"
            ))
        }
    };
    if only_partial && !matches!(mask, Mask::Partial { .. }) {
        return Err(format!(
            "keep_first/keep_last/padding only apply to mask \"partial\", not {kind:?}"
        ));
    }
    if value.is_some() && !matches!(mask, Mask::Constant(_)) {
        return Err(format!(
            "`value` only applies to mask \"constant\", not {kind:?}"
        ));
    }
    Ok((mask, forget))
}

fn is_sql_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('\0')
}

/// Parses one policy file's text.
pub fn parse_policy(text: &str, path: &Path) -> Result<DatabasePolicy, String> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let at =
        |off: usize, msg: String| format!("{}:{}: {}", path.display(), line_of(text, off), msg);
    if raw.database.is_empty() {
        return Err(format!(
            "{}:1: `database` must not be empty",
            path.display()
        ));
    }
    let mut tables = BTreeMap::new();
    for (tname, spanned) in raw.tables {
        let tline = spanned.span().start;
        let (schema, name) = split_qualified(&tname).map_err(|e| at(tline, e))?;
        let rt = spanned.into_inner();
        let mut columns = BTreeMap::new();
        for (cname, cs) in rt.columns {
            let off = cs.span().start;
            if !is_sql_name(&cname) {
                return Err(at(off, format!("invalid column name {cname:?}")));
            }
            let (mask, forget) = parse_mask(cs.into_inner())
                .map_err(|e| at(off, format!("tables.\"{tname}\".columns.{cname}: {e}")))?;
            columns.insert(
                cname,
                ColumnPolicy {
                    mask,
                    forget,
                    line: line_of(text, off),
                },
            );
        }
        if let Some(s) = &rt.subject {
            if !is_sql_name(s) {
                return Err(at(tline, format!("invalid subject column {s:?}")));
            }
        }
        let key = (schema.clone(), name.clone());
        if tables.contains_key(&key) {
            return Err(at(tline, format!("table {schema}.{name} is listed twice")));
        }
        tables.insert(
            key,
            TablePolicy {
                schema,
                name,
                subject: rt.subject,
                columns,
                line: line_of(text, tline),
            },
        );
    }
    let enforcement = match raw.enforcement {
        None => Enforcement::Database,
        Some(e) => match e.get_ref().as_str() {
            "database" => Enforcement::Database,
            "proxy" => Enforcement::Proxy,
            other => {
                return Err(at(
                    e.span().start,
                    format!("enforcement must be \"database\" or \"proxy\", not {other:?}"),
                ))
            }
        },
    };
    for f in &raw.allowed_functions {
        if !f.contains('.') {
            return Err(format!(
                "{}: allowed_functions entry {f:?} must be schema-qualified",
                path.display()
            ));
        }
    }
    Ok(DatabasePolicy {
        file: path.to_path_buf(),
        database: raw.database,
        enforcement,
        unmasked_roles: raw.unmasked_roles,
        allowed_functions: raw
            .allowed_functions
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect(),
        tables,
    })
}

/// Loads every `*.toml` in `dir`. Any error fails the whole load (the caller keeps its last good set).
pub fn load_dir(dir: &Path, version: u64) -> Result<PolicySet, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read policy directory: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut by_database = HashMap::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        let p = parse_policy(&text, &f)?;
        if let Some(prev) = seen.get(&p.database) {
            return Err(format!(
                "{}:1: database {:?} already has a policy in {}",
                f.display(),
                p.database,
                prev.display()
            ));
        }
        seen.insert(p.database.clone(), f.clone());
        by_database.insert(p.database.clone(), Arc::new(p));
    }
    Ok(PolicySet {
        by_database,
        version,
    })
}

// ---------- SQL text and keys ----------

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Type facts the mask SQL needs: `format_type` text and pg_type category of the base type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ColType {
    /// `format_type(atttypid, atttypmod)`, e.g. `character varying(255)`.
    pub sql: String,
    /// Base type name (domains resolved), e.g. `varchar`, `date`, `timestamptz`.
    pub base: String,
    /// `pg_type.typcategory` of the base type: S string, N numeric, D date/time, ...
    pub category: char,
}

/// Why a mask cannot apply to a column type (reported by `check`).
pub fn mask_fits(mask: &Mask, ty: &ColType) -> Result<(), String> {
    let text_like = ty.category == 'S';
    match mask {
        Mask::Null | Mask::Redact | Mask::Constant(_) => Ok(()),
        Mask::Email | Mask::Partial { .. } | Mask::Hash if !text_like => Err(format!(
            "mask \"{}\" needs a text column, not {}",
            mask.kind(),
            ty.sql
        )),
        Mask::Year if !matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz") => {
            Err(format!(
                "mask \"year\" needs a date or timestamp column, not {}",
                ty.sql
            ))
        }
        _ => Ok(()),
    }
}

/// HMAC-SHA256 inner/outer padded keys, so SQL can compute HMAC with `sha256` alone.
pub fn hmac_pads(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let mut k = if key.len() > 64 {
        Sha256::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(64, 0);
    let ipad = k.iter().map(|b| b ^ 0x36).collect();
    let opad = k.iter().map(|b| b ^ 0x5c).collect();
    (ipad, opad)
}

/// The pseudonym the `hash` mask produces (for tests and the forget list).
pub fn hash_pseudonym(key: &[u8], value: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = match Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(value.as_bytes());
    hex::encode(mac.finalize().into_bytes())[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<DatabasePolicy, String> {
        parse_policy(text, Path::new("policies/app.toml"))
    }

    #[test]
    fn parses_design_example() {
        let pol = p(r#"
database = "app"
unmasked_roles = ["dba"]

[tables."public.customers"]
subject = "customer_id"
columns.email = "email"
columns.first_name = "null"
columns.phone = { mask = "partial", keep_last = 2 }
columns.birth_date = "year"

[tables."public.customer_events"]
subject = "customer_id"
columns.ip_address = "null"
"#)
        .unwrap();
        let t = pol.table("public", "customers").unwrap();
        assert_eq!(t.subject.as_deref(), Some("customer_id"));
        assert_eq!(t.columns["email"].mask, Mask::Email);
        assert_eq!(
            t.columns["phone"].mask,
            Mask::Partial {
                keep_first: 0,
                keep_last: 2,
                padding: "****".into()
            }
        );
        assert_eq!(t.columns["phone"].line, 9);
        assert!(pol.table("public", "customer_events").is_some());
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = p("database = \"app\"\n\n[tables.\"public.c\"]\ncolumns.email = \"emial\"\n")
            .unwrap_err();
        assert!(e.starts_with("policies/app.toml:4:"), "{e}");
        assert!(e.contains("unknown mask kind"), "{e}");
        let e = p("database = \"app\"\nunmasked_role = [\"dba\"]\n").unwrap_err();
        assert!(e.starts_with("policies/app.toml:2:"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        let e = p("database = \"app\"\n[tables.\"public.c\"]\ncolumns.x = { mask = \"null\", keep_last = 2 }\n")
            .unwrap_err();
        assert!(
            e.contains(":3:") && e.contains("only apply to mask \"partial\""),
            "{e}"
        );
        let e = p("database = \"app\"\nunmasked_roles = [\"a\" \"b\"]\n").unwrap_err();
        assert!(e.starts_with("policies/app.toml:2:"), "{e}");
    }

    #[test]
    fn qualified_names() {
        assert_eq!(
            split_qualified("customers").unwrap(),
            ("public".into(), "customers".into())
        );
        assert_eq!(
            split_qualified("CRM.Customers").unwrap(),
            ("crm".into(), "customers".into())
        );
        assert_eq!(
            split_qualified("\"My Schema\".\"T\"").unwrap(),
            ("My Schema".into(), "T".into())
        );
        assert!(split_qualified("a.b.c").is_err());
        assert!(split_qualified("a.").is_err());
    }

    #[test]
    fn mask_type_fit() {
        let int = ColType {
            sql: "integer".into(),
            base: "int4".into(),
            category: 'N',
        };
        let date = ColType {
            sql: "date".into(),
            base: "date".into(),
            category: 'D',
        };
        assert!(mask_fits(&Mask::Email, &int).is_err());
        assert!(mask_fits(&Mask::Year, &date).is_ok());
        assert!(mask_fits(&Mask::Year, &int).is_err());
        assert!(mask_fits(&Mask::Redact, &int).is_ok());
    }

    #[test]
    fn hmac_matches_reference() {
        // RFC 4231 test case 2
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        let full = hex::encode(m.finalize().into_bytes());
        assert!(full.starts_with("5bdcc146bf60754e"));
        assert_eq!(
            hash_pseudonym(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e"
        );
    }
}

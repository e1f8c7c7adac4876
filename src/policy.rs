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
    /// A json or jsonb column masked per key path (see [`JsonMask`]).
    Json(JsonMask),
}

/// Masks inside a json/jsonb document. Every node has a path: the object keys from the root
/// (arrays are traversed, their elements share the array's path). A node matched by a rule takes
/// that rule's mask for itself and everything under it, until a deeper rule matches; the root
/// starts with `default`. When several rules match one node, the strictest wins. `None` is keep.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonMask {
    pub rules: Vec<JsonRule>,
    pub default: Option<Box<Mask>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JsonRule {
    /// As written in the policy, e.g. `$.billing.name` or `$.**.phone`.
    pub path: String,
    pub segments: Vec<PathSeg>,
    /// `None` keeps the value.
    pub mask: Option<Box<Mask>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    /// One object key.
    Key(String),
    /// `*`: any one key.
    AnyKey,
    /// `**`: any number of keys, none included.
    AnyDepth,
}

impl JsonRule {
    /// A PostgreSQL regular expression (ARE) matching the node paths this rule selects. Node
    /// paths are written as `/key` per level, keys escaped as in JSON Pointer (`~0`, `~1`).
    pub fn regex(&self) -> String {
        let mut re = String::from("^");
        for s in &self.segments {
            match s {
                PathSeg::Key(k) => {
                    re.push('/');
                    re.push_str(&are_escape(&k.replace('~', "~0").replace('/', "~1")));
                }
                PathSeg::AnyKey => re.push_str("/[^/]*"),
                PathSeg::AnyDepth => re.push_str("(/[^/]*)*"),
            }
        }
        re.push('$');
        re
    }
}

/// `s` as a literal in a PostgreSQL regular expression (ARE): every character other than a
/// letter, digit or `_` is escaped.
fn are_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if !(c.is_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl JsonRule {
    /// Text that the document's `jsonb::text` form must contain for this rule to select
    /// anything: its last key as jsonb writes keys (`"key": `). None when the last segment is a
    /// wildcard, or the key has characters whose escaping could differ.
    pub fn needle(&self) -> Option<String> {
        match self.segments.last() {
            Some(PathSeg::Key(k)) if !k.chars().any(|c| c.is_control()) => {
                serde_json::to_string(k).ok().map(|q| format!("{q}: "))
            }
            _ => None,
        }
    }

    /// The path as a PostgreSQL text[] literal for `#>` and `jsonb_set`, when it has no
    /// wildcard (an array on the way makes `#>` return NULL, and the caller falls back to the
    /// full walk).
    pub fn keys_literal(&self) -> Option<String> {
        let mut out = Vec::new();
        for s in &self.segments {
            match s {
                PathSeg::Key(k) => out.push(format!(
                    "\"{}\"",
                    k.replace('\\', "\\\\").replace('"', "\\\"")
                )),
                _ => return None,
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(format!("{{{}}}", out.join(",")))
    }
}

/// Strictness of a mask inside JSON (higher is stricter); `None` is keep.
fn json_strictness(m: &Option<Box<Mask>>) -> u8 {
    match m.as_deref() {
        Some(Mask::Null) => 6,
        Some(Mask::Redact) => 5,
        Some(Mask::Constant(_)) => 4,
        Some(Mask::Hash) => 3,
        Some(Mask::Email) => 2,
        Some(Mask::Partial { .. }) => 1,
        _ => 0,
    }
}

/// Parses a JSON path as policies write it: `$`, then `.key`, `."quoted key"`, `['key']`,
/// `.*` (any key), `.**` (any depth) and `[*]` (array elements; arrays are traversed anyway).
pub fn parse_json_path(path: &str) -> Result<Vec<PathSeg>, String> {
    let mut rest = path
        .strip_prefix('$')
        .ok_or_else(|| format!("JSON path {path:?} must start with `$`"))?;
    let mut out = Vec::new();
    let quoted = |s: &str, q: char| -> Result<(String, usize), String> {
        let mut key = String::new();
        let mut it = s.char_indices().skip(1);
        while let Some((i, c)) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some((_, e)) => key.push(e),
                    None => break,
                }
            } else if c == q {
                return Ok((key, i + 1));
            } else {
                key.push(c);
            }
        }
        Err(format!("JSON path {path:?}: unterminated quote"))
    };
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix(".**") {
            out.push(PathSeg::AnyDepth);
            rest = r;
        } else if let Some(r) = rest.strip_prefix(".*") {
            out.push(PathSeg::AnyKey);
            rest = r;
        } else if let Some(r) = rest.strip_prefix("[*]") {
            rest = r;
        } else if let Some(r) = rest.strip_prefix('.') {
            if r.starts_with('"') {
                let (k, n) = quoted(r, '"')?;
                out.push(PathSeg::Key(k));
                rest = &r[n..];
            } else {
                let end = r.find(['.', '[']).unwrap_or(r.len());
                let k = &r[..end];
                if k.is_empty() || k.contains(['"', '\'', ']', ' ']) {
                    return Err(format!(
                        "JSON path {path:?}: expected a key after `.` (quote keys with special characters: .\"my key\")"
                    ));
                }
                out.push(PathSeg::Key(k.to_string()));
                rest = &r[end..];
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            if r.starts_with('\'') || r.starts_with('"') {
                let q = if r.starts_with('"') { '"' } else { '\'' };
                let (k, n) = quoted(r, q)?;
                let after = &r[n..];
                rest = after
                    .strip_prefix(']')
                    .ok_or_else(|| format!("JSON path {path:?}: expected `]`"))?;
                out.push(PathSeg::Key(k));
            } else {
                return Err(format!(
                    "JSON path {path:?}: array positions are not supported; arrays are traversed, so leave them out or write [*]"
                ));
            }
        } else {
            return Err(format!(
                "JSON path {path:?}: unexpected {:?}",
                rest.chars().next().unwrap_or(' ')
            ));
        }
    }
    Ok(out)
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
            Mask::Json(j) => {
                use serde_json::Value;
                let leaf = |m: &Option<Box<Mask>>| match m {
                    Some(m) => m.spec(),
                    None => json!({"kind": "keep"}),
                };
                // Strictest first: the database takes the first rule that matches a node.
                let mut rules: Vec<&JsonRule> = j.rules.iter().collect();
                rules.sort_by_key(|r| std::cmp::Reverse(json_strictness(&r.mask)));
                let uses_key = self.uses_key();
                // A document whose text holds none of the rules' last keys is left as it is
                // (only when nothing else is masked by default and every rule ends in a key).
                let needles: Option<Vec<String>> = if j.default.is_none() {
                    j.rules.iter().map(|r| r.needle()).collect()
                } else {
                    None
                };
                let prefilter = needles.filter(|n| !n.is_empty()).map(|n| {
                    n.iter()
                        .map(|x| are_escape(x))
                        .collect::<Vec<_>>()
                        .join("|")
                });
                json!({
                    "kind": "json",
                    "default": leaf(&j.default),
                    "prefilter": prefilter,
                    "uses_key": uses_key,
                    "rules": rules
                        .iter()
                        .map(|r| {
                            let mut o = json!({"path": r.path, "re": r.regex(), "mask": leaf(&r.mask)});
                            if let Some(n) = r.needle() {
                                o["needle"] = Value::String(n);
                            }
                            if let Some(k) = r.keys_literal() {
                                o["keys"] = Value::String(k);
                            }
                            o
                        })
                        .collect::<Vec<_>>(),
                })
            }
            other => json!({"kind": other.kind()}),
        }
    }

    /// Whether the mask needs the HMAC key.
    pub fn uses_key(&self) -> bool {
        match self {
            Mask::Hash => true,
            Mask::Json(j) => {
                j.default.as_deref() == Some(&Mask::Hash)
                    || j.rules
                        .iter()
                        .any(|r| r.mask.as_deref() == Some(&Mask::Hash))
            }
            _ => false,
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
            Mask::Json(_) => "json",
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

    /// This table's part of [`DatabasePolicy::spec`] (schema, name, column masks), without its
    /// fingerprint.
    fn spec_body(&self) -> serde_json::Value {
        let cols: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .map(|(c, cp)| (c.clone(), cp.mask.spec()))
            .collect();
        serde_json::json!({"schema": self.schema, "name": self.name, "columns": cols})
    }

    /// The fingerprint of this table's masks: stored with its masking views, so a view is known
    /// current exactly when the masks it was built from are this policy's. Two policies that
    /// differ elsewhere (another table, the unmasked roles) share it.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.spec_body().to_string())
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
            .any(|c| c.mask.uses_key())
    }

    /// The policy as the database's own functions read it (`pgredact.policy`): unmasked roles
    /// and, per table, each PII column's mask kind and options, plus a fingerprint of all that.
    /// Data only: the masking SQL is written by `pgredact_admin.mask_expr` inside PostgreSQL.
    pub fn spec(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let tables: Vec<Value> = self
            .tables
            .values()
            .map(|t| {
                let mut v = t.spec_body();
                v["fingerprint"] = Value::String(t.fingerprint());
                v
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
    /// Not `Spanned`: a table named only through a sub-table header
    /// (`[tables."public.x".columns.payload]`) has no span, and toml refuses to give one.
    tables: BTreeMap<String, RawTable>,
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
    /// mask "json": JSON path -> mask of what it selects.
    #[serde(default)]
    paths: Option<BTreeMap<String, RawColumn>>,
    /// mask "json": the mask of nodes no path selects (`keep` when absent).
    #[serde(default)]
    default: Option<Box<RawColumn>>,
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
    let f = match raw {
        RawColumn::Kind(k) => RawColumnFull {
            mask: k,
            keep_first: None,
            keep_last: None,
            padding: None,
            value: None,
            forget: None,
            paths: None,
            default: None,
        },
        RawColumn::Full(f) => f,
    };
    let kind = f.mask.clone();
    let only_partial = f.keep_first.is_some() || f.keep_last.is_some() || f.padding.is_some();
    let only_json = f.paths.is_some() || f.default.is_some();
    let mask = match kind.as_str() {
        "null" => Mask::Null,
        "redact" => Mask::Redact,
        "email" => Mask::Email,
        "hash" => Mask::Hash,
        "year" => Mask::Year,
        "constant" => Mask::Constant(
            f.value
                .clone()
                .ok_or("mask \"constant\" needs a `value`")?,
        ),
        "partial" => Mask::Partial {
            keep_first: f.keep_first.unwrap_or(0),
            keep_last: f.keep_last.unwrap_or(0),
            padding: f.padding.clone().unwrap_or_else(|| "****".into()),
        },
        "json" => {
            let paths = f
                .paths
                .ok_or("mask \"json\" needs `paths`, e.g. paths = { \"$.email\" = \"email\" }")?;
            let mut rules = Vec::new();
            for (path, m) in paths {
                let segments = parse_json_path(&path)?;
                let mask = json_leaf(m).map_err(|e| format!("path {path:?}: {e}"))?;
                rules.push(JsonRule {
                    path,
                    segments,
                    mask,
                });
            }
            let default = match f.default {
                None => None,
                Some(d) => json_leaf(*d).map_err(|e| format!("default: {e}"))?,
            };
            Mask::Json(JsonMask { rules, default })
        }
        other => {
            return Err(format!(
                "unknown mask kind {other:?} (expected null, redact, constant, email, partial, hash, year or json)"
            ))
        }
    };
    if only_partial && !matches!(mask, Mask::Partial { .. }) {
        return Err(format!(
            "keep_first/keep_last/padding only apply to mask \"partial\", not {kind:?}"
        ));
    }
    if f.value.is_some() && !matches!(mask, Mask::Constant(_)) {
        return Err(format!(
            "`value` only applies to mask \"constant\", not {kind:?}"
        ));
    }
    if only_json && !matches!(mask, Mask::Json(_)) {
        return Err(format!(
            "`paths` and `default` only apply to mask \"json\", not {kind:?}"
        ));
    }
    Ok((mask, f.forget))
}

/// A mask for values inside a JSON document: `keep` (None) or a kind that works on JSON scalars.
fn json_leaf(raw: RawColumn) -> Result<Option<Box<Mask>>, String> {
    if let RawColumn::Kind(k) = &raw {
        if k == "keep" {
            return Ok(None);
        }
    }
    if let RawColumn::Full(f) = &raw {
        if f.forget.is_some() {
            return Err("`forget` applies to the column, not to a JSON path".into());
        }
    }
    let (m, _) = parse_mask(raw)?;
    match m {
        Mask::Year | Mask::Json(_) => Err(format!(
            "mask {:?} does not apply inside JSON (use keep, null, redact, constant, email, partial or hash)",
            m.kind()
        )),
        m => Ok(Some(Box::new(m))),
    }
}

fn is_sql_name(s: &str) -> bool {
    !s.is_empty() && !s.contains('\0')
}

/// Byte offset of the line that first names table `key` under `tables` (a header such as
/// `[tables."public.x"]` or `[tables."public.x".columns.payload]`, or a dotted key), for
/// `file:line` messages; 0 when not found.
fn table_offset(text: &str, key: &str) -> usize {
    let quoted = format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\""));
    let mut off = 0;
    for line in text.split_inclusive('\n') {
        let l = line.trim_start();
        if !l.starts_with('#')
            && l.contains("tables")
            && (l.contains(&quoted) || l.contains(&format!("tables.{key}")))
        {
            return off;
        }
        off += line.len();
    }
    0
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
    for (tname, rt) in raw.tables {
        let tline = table_offset(text, &tname);
        let (schema, name) = split_qualified(&tname).map_err(|e| at(tline, e))?;
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
        Mask::Json(_) if !matches!(ty.base.as_str(), "json" | "jsonb") => Err(format!(
            "mask \"json\" needs a json or jsonb column, not {}",
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
    fn a_table_named_only_by_a_sub_table_header_parses_with_its_line() {
        let pol = p(r#"
database = "app"

[tables."public.events".columns.payload]
mask = "json"
paths = { "$.email" = "email" }

[tables."public.other"]
columns.x = "null"
"#)
        .unwrap();
        let t = pol.table("public", "events").unwrap();
        assert_eq!(t.line, 4);
        assert!(matches!(t.columns["payload"].mask, Mask::Json(_)));
        assert_eq!(pol.table("public", "other").unwrap().line, 8);
        let e = p("database = \"app\"\n\n[tables.\"a.b.c\".columns.payload]\nmask = \"null\"\n")
            .unwrap_err();
        assert!(e.starts_with("policies/app.toml:3: "), "{e}");
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

    #[test]
    fn json_path_masks_parse_and_compile() {
        let pol = p(r#"
database = "app"
[tables."public.customer_events"]
columns.ip_address = "null"
[tables."public.customer_events".columns.payload]
mask = "json"
default = "keep"
paths = { "$.to" = "email", "$.billing.name" = "redact", "$.**.phone" = "null", "$.items[*].\"a/b~c\"" = { mask = "partial", keep_last = 2 }, "$.*.sku" = "hash" }
"#)
        .unwrap();
        let t = pol.table("public", "customer_events").unwrap();
        let Mask::Json(j) = &t.columns["payload"].mask else {
            panic!("json mask expected")
        };
        assert_eq!(t.columns["payload"].line, 5);
        assert_eq!(j.default, None);
        let re: BTreeMap<&str, String> = j
            .rules
            .iter()
            .map(|r| (r.path.as_str(), r.regex()))
            .collect();
        assert_eq!(re["$.to"], "^/to$");
        assert_eq!(re["$.billing.name"], "^/billing/name$");
        assert_eq!(re["$.**.phone"], "^(/[^/]*)*/phone$");
        assert_eq!(re["$.items[*].\"a/b~c\""], "^/items/a\\~1b\\~0c$");
        assert_eq!(re["$.*.sku"], "^/[^/]*/sku$");
        assert!(t.columns["payload"].mask.uses_key());
        assert!(pol.uses_hash());
        // Strictest first in the spec the database reads.
        let spec = t.columns["payload"].mask.spec();
        let kinds: Vec<&str> = spec["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["mask"]["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["null", "redact", "hash", "email", "partial"]);
        assert_eq!(spec["default"]["kind"], "keep");
        let by_path = |p: &str| {
            spec["rules"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["path"] == p)
                .unwrap()
                .clone()
        };
        assert_eq!(by_path("$.billing.name")["needle"], "\"name\": ");
        assert_eq!(by_path("$.billing.name")["keys"], "{\"billing\",\"name\"}");
        assert_eq!(by_path("$.**.phone")["needle"], "\"phone\": ");
        assert!(by_path("$.**.phone").get("keys").is_none());
        assert_eq!(
            by_path("$.items[*].\"a/b~c\"")["keys"],
            "{\"items\",\"a/b~c\"}"
        );
        assert!(by_path("$.*.sku").get("keys").is_none());
        // `$.*.sku` ends in a key too, so the prefilter applies; a default mask disables it.
        assert_eq!(
            spec["prefilter"].as_str().unwrap().split('|').count(),
            5,
            "{}",
            spec["prefilter"]
        );
        assert!(spec["prefilter"]
            .as_str()
            .unwrap()
            .contains("\\\"name\\\"\\:\\ "));
        assert_eq!(spec["uses_key"], true);
        let jsonb = ColType {
            sql: "jsonb".into(),
            base: "jsonb".into(),
            category: 'U',
        };
        let text = ColType {
            sql: "text".into(),
            base: "text".into(),
            category: 'S',
        };
        assert!(mask_fits(&t.columns["payload"].mask, &jsonb).is_ok());
        assert!(mask_fits(&t.columns["payload"].mask, &text).is_err());
    }

    #[test]
    fn json_path_mask_errors_name_the_line_and_path() {
        for (body, want) in [
            ("columns.p = { mask = \"json\" }", "needs `paths`"),
            (
                "columns.p = { mask = \"json\", paths = { \"email\" = \"email\" } }",
                "must start with `$`",
            ),
            (
                "columns.p = { mask = \"json\", paths = { \"$.a[0]\" = \"null\" } }",
                "array positions",
            ),
            (
                "columns.p = { mask = \"json\", paths = { \"$.a\" = \"year\" } }",
                "does not apply inside JSON",
            ),
            (
                "columns.p = { mask = \"json\", paths = { \"$.a\" = \"bogus\" } }",
                "unknown mask kind",
            ),
            (
                "columns.p = { mask = \"null\", paths = { \"$.a\" = \"null\" } }",
                "only apply to mask \"json\"",
            ),
            (
                "columns.p = { mask = \"json\", paths = { \"$..a\" = \"null\" } }",
                "expected a key",
            ),
            (
                "columns.p = { mask = \"json\", paths = {}, default = \"keep\", keep_last = 1 }",
                "partial",
            ),
        ] {
            let e = p(&format!("database = \"app\"\n[tables.t]\n{body}\n")).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
            assert!(e.starts_with("policies/app.toml:3:"), "{body}: {e}");
        }
    }
}

//! Policy files (`policies/<name>.toml`, one per database): which roles see raw data,
//! which columns hold PII and how each is masked. Also turns a mask into SQL.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    /// A realistic fake value from the `fake` crate's lists, chosen by the keyed hash of the
    /// raw value (same input, same fake, in every table).
    Fake(FakeKind),
    /// Numbers, dates and timestamps moved by a keyed, per-row offset.
    Noise(Noise),
    /// Numbers, dates and timestamps generalised to the lower bound of their bucket.
    Bucket(Bucket),
}

/// The flavours of mask `fake`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeKind {
    Name,
    FirstName,
    LastName,
    Email,
    Phone,
    StreetAddress,
    City,
}

impl FakeKind {
    pub const ALL: [FakeKind; 7] = [
        FakeKind::Name,
        FakeKind::FirstName,
        FakeKind::LastName,
        FakeKind::Email,
        FakeKind::Phone,
        FakeKind::StreetAddress,
        FakeKind::City,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FakeKind::Name => "name",
            FakeKind::FirstName => "first_name",
            FakeKind::LastName => "last_name",
            FakeKind::Email => "email",
            FakeKind::Phone => "phone",
            FakeKind::StreetAddress => "street_address",
            FakeKind::City => "city",
        }
    }

    fn parse(s: &str) -> Option<FakeKind> {
        FakeKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// The word lists mask `fake` draws from, by name, as the `fake` crate ships them (its `EN`
/// locale, the lists faker.js and Faker share; order and repeats kept, so the n-th entry is
/// the same everywhere). `pgredact setup-sql` copies them into `pgredact_mask.fake_words`.
pub fn fake_lists() -> Vec<(&'static str, &'static [&'static str])> {
    use fake::locales::{Data, EN};
    vec![
        ("first_name", EN::NAME_FIRST_NAME),
        ("last_name", EN::NAME_LAST_NAME),
        ("street_suffix", EN::ADDRESS_STREET_SUFFIX),
        ("city_prefix", EN::ADDRESS_CITY_PREFIX),
        ("city_suffix", EN::ADDRESS_CITY_SUFFIX),
        ("phone_format", EN::PHONE_CELL_NUMBER_FORMATS),
    ]
}

/// A length of time as policies write it: `30 days`, `1 year`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Span {
    pub n: u32,
    pub unit: Unit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
    Year,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }
    /// Seconds in one unit; None for months and years (their length varies).
    fn seconds(self) -> Option<u64> {
        match self {
            Unit::Second => Some(1),
            Unit::Minute => Some(60),
            Unit::Hour => Some(3600),
            Unit::Day => Some(86_400),
            Unit::Week => Some(604_800),
            Unit::Month | Unit::Year => None,
        }
    }
}

impl Span {
    /// Parses `<count> <unit>`: a whole count from 1 to 1,000,000 and second(s), minute(s),
    /// hour(s), day(s), week(s), month(s) or year(s).
    pub fn parse(s: &str) -> Result<Span, String> {
        let bad = || {
            format!(
                "interval {s:?} must be a whole count and a unit, e.g. \"30 days\" (units: seconds, minutes, hours, days, weeks, months, years)"
            )
        };
        let mut it = s.split_whitespace();
        let (Some(n), Some(u), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad());
        };
        let n: u32 = n.parse().map_err(|_| bad())?;
        if !(1..=1_000_000).contains(&n) {
            return Err(format!(
                "interval {s:?}: the count must be between 1 and 1000000"
            ));
        }
        let unit = match u.to_ascii_lowercase().as_str() {
            "second" | "seconds" | "sec" | "secs" => Unit::Second,
            "minute" | "minutes" | "min" | "mins" => Unit::Minute,
            "hour" | "hours" => Unit::Hour,
            "day" | "days" => Unit::Day,
            "week" | "weeks" => Unit::Week,
            "month" | "months" => Unit::Month,
            "year" | "years" => Unit::Year,
            _ => return Err(bad()),
        };
        Ok(Span { n, unit })
    }

    /// Length in seconds; None for months and years.
    pub fn seconds(&self) -> Option<u64> {
        self.unit.seconds().map(|s| s * u64::from(self.n))
    }

    /// As written back: `30 days`, `1 year`.
    pub fn text(&self) -> String {
        format!(
            "{} {}{}",
            self.n,
            self.unit.as_str(),
            if self.n == 1 { "" } else { "s" }
        )
    }
}

/// How mask `noise` moves a value. `per_row`: the offset also depends on the row's primary
/// key (`per_row = true`), not only on the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Noise {
    /// Numbers: up to ± `ppm` parts per million of the value (`ratio = 0.1` is 100000).
    Ratio { ppm: u32, per_row: bool },
    /// Dates and timestamps: up to ± this length (days, hours, minutes, seconds or weeks).
    Interval { span: Span, per_row: bool },
}

impl Noise {
    pub fn per_row(&self) -> bool {
        match self {
            Noise::Ratio { per_row, .. } | Noise::Interval { per_row, .. } => *per_row,
        }
    }
}

/// How mask `bucket` generalises a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Bucket {
    /// Numbers: `floor(x / step) * step`; the step as a plain decimal (`10`, `0.5`).
    Step(String),
    /// Dates and timestamps: the start of the calendar bucket (years, months) or of the
    /// fixed-length bucket counted from Monday 2000-01-03 00:00 UTC (weeks, days, hours...).
    Interval(Span),
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
        Some(Mask::Hash) | Some(Mask::Fake(_)) => 3,
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
            Mask::Fake(k) => json!({"kind": "fake", "flavour": k.as_str(), "uses_key": true}),
            Mask::Noise(Noise::Ratio { ppm, per_row }) => {
                json!({"kind": "noise", "ppm": ppm, "per_row": per_row, "uses_key": true})
            }
            Mask::Noise(Noise::Interval { span, per_row }) => json!({
                "kind": "noise",
                "interval": span.text(),
                "seconds": span.seconds().unwrap_or(0),
                "per_row": per_row,
                "uses_key": true
            }),
            Mask::Bucket(Bucket::Step(st)) => json!({"kind": "bucket", "step": st}),
            Mask::Bucket(Bucket::Interval(sp)) => json!({
                "kind": "bucket",
                "interval": sp.text(),
                "unit": sp.unit.as_str(),
                "n": sp.n,
                "seconds": sp.seconds()
            }),
            other => json!({"kind": other.kind()}),
        }
    }

    /// Whether the mask needs the HMAC key.
    pub fn uses_key(&self) -> bool {
        match self {
            Mask::Hash | Mask::Fake(_) | Mask::Noise(_) => true,
            Mask::Json(j) => {
                j.default.as_deref().is_some_and(Mask::uses_key)
                    || j.rules
                        .iter()
                        .any(|r| r.mask.as_deref().is_some_and(Mask::uses_key))
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
            Mask::Fake(_) => "fake",
            Mask::Noise(_) => "noise",
            Mask::Bucket(_) => "bucket",
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
    /// Per-role masks (`[roles.<role>]`), in the order the roles first appear in the file: a
    /// member of the first role listed here gets its mask; everyone else masked gets `mask`.
    pub by_role: Vec<RoleMask>,
}

/// A role's own mask for one PII column.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleMask {
    pub role: String,
    pub mask: Mask,
    /// 1-based line in the policy file.
    pub line: usize,
}

impl ColumnPolicy {
    /// The column's masks as data for `pgredact_admin.mask_expr`: the default mask, with the
    /// per-role ones under `by_role` (the database picks by membership of the reading role).
    pub fn spec(&self) -> serde_json::Value {
        let mut s = self.mask.spec();
        if !self.by_role.is_empty() {
            s["by_role"] = serde_json::Value::Array(
                self.by_role
                    .iter()
                    .map(|r| serde_json::json!({"role": r.role, "mask": r.mask.spec()}))
                    .collect(),
            );
            if self.uses_key() {
                s["uses_key"] = serde_json::Value::Bool(true);
            }
        }
        s
    }

    /// Whether any of the column's masks needs the HMAC key.
    pub fn uses_key(&self) -> bool {
        self.mask.uses_key() || self.by_role.iter().any(|r| r.mask.uses_key())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    pub schema: String,
    pub name: String,
    pub subject: Option<String>,
    /// PII columns, by exact (catalog) column name.
    pub columns: BTreeMap<String, ColumnPolicy>,
    /// `privacy_by_default = true`: every column neither in `columns` nor in `public` is PII,
    /// masked with `redact` (a column added later is masked until a DBA declares it).
    pub privacy_by_default: bool,
    /// Columns declared not PII (`public = [...]`), for `privacy_by_default`.
    pub public: BTreeSet<String>,
    pub line: usize,
}

impl TablePolicy {
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    /// This table's part of [`DatabasePolicy::spec`] (schema, name, column masks), without its
    /// fingerprint. `privacy_by_default` and `public` only when used, so other tables keep the
    /// fingerprints they had before those keys existed.
    fn spec_body(&self) -> serde_json::Value {
        let cols: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .map(|(c, cp)| (c.clone(), cp.spec()))
            .collect();
        let mut v = serde_json::json!({"schema": self.schema, "name": self.name, "columns": cols});
        if self.privacy_by_default {
            v["privacy_by_default"] = serde_json::Value::Bool(true);
        }
        if !self.public.is_empty() {
            v["public"] = serde_json::json!(self.public);
        }
        v
    }

    /// Whether `privacy_by_default` masks `column` (a column of this table or of one of its
    /// partitions or children): neither listed under `columns` nor as `public`.
    pub fn masked_by_default(&self, column: &str) -> bool {
        self.privacy_by_default
            && !self.columns.contains_key(column)
            && !self.public.contains(column)
    }

    /// The columns of a relation (its own, in order) that `privacy_by_default` masks.
    pub fn default_masked<'a>(&self, columns: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        columns
            .into_iter()
            .filter(|c| self.masked_by_default(c))
            .map(str::to_string)
            .collect()
    }

    /// `columns` plus, with `privacy_by_default`, every other column of `all` not listed as
    /// `public`, masked with `redact` (its `line` the table's). The same expansion the database
    /// makes (`pmasks` in wall_protected.sql).
    pub fn effective_columns<'a>(
        &self,
        all: impl IntoIterator<Item = &'a str>,
    ) -> BTreeMap<String, ColumnPolicy> {
        let mut out = self.columns.clone();
        for c in self.default_masked(all) {
            out.insert(
                c,
                ColumnPolicy {
                    mask: Mask::Redact,
                    forget: None,
                    line: self.line,
                    by_role: Vec::new(),
                },
            );
        }
        out
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
            .any(|c| c.uses_key())
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
    /// `[roles.<role>]`: `"schema.table".column = mask`, a role's own masks.
    #[serde(default)]
    roles: RawRoles,
}

/// role -> table -> column -> mask.
type RawRoles = BTreeMap<String, BTreeMap<String, BTreeMap<String, toml::Spanned<RawColumn>>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    columns: BTreeMap<String, toml::Spanned<RawColumn>>,
    #[serde(default)]
    privacy_by_default: bool,
    #[serde(default)]
    public: Vec<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawColumn {
    Kind(String),
    Full(Box<RawColumnFull>),
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
    /// mask "fake": the flavour (name, first_name, last_name, email, phone, street_address, city).
    #[serde(default)]
    kind: Option<String>,
    /// mask "noise": ± this share of the value (numbers).
    #[serde(default)]
    ratio: Option<f64>,
    /// masks "noise" and "bucket" on dates and timestamps: `30 days`, `1 year`.
    #[serde(default)]
    interval: Option<String>,
    /// mask "bucket" on numbers: the bucket width (a number, or a decimal in a string).
    #[serde(default)]
    step: Option<toml::Value>,
    /// mask "noise": the offset also depends on the row's primary key.
    #[serde(default)]
    per_row: Option<bool>,
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
pub fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> Error {
    let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
    Error::at(path, line, e.message())
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

// Long: one arm per mask kind, each checking its own options with its own message.
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
            kind: None,
            ratio: None,
            interval: None,
            step: None,
            per_row: None,
        },
        RawColumn::Full(f) => *f,
    };
    let kind = f.mask.clone();
    let only_partial = f.keep_first.is_some() || f.keep_last.is_some() || f.padding.is_some();
    let only_json = f.paths.is_some() || f.default.is_some();
    let per_row = f.per_row.unwrap_or(false);
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
        "fake" => {
            let k = f.kind.as_deref().ok_or(
                "mask \"fake\" needs a `kind`: name, first_name, last_name, email, phone, street_address or city",
            )?;
            Mask::Fake(FakeKind::parse(k).ok_or_else(|| {
                format!("unknown fake kind {k:?} (expected name, first_name, last_name, email, phone, street_address or city)")
            })?)
        }
        "noise" => match (f.ratio, f.interval.as_deref()) {
            (Some(r), None) => {
                if !(0.001..=1.0).contains(&r) {
                    return Err(format!(
                        "mask \"noise\": ratio must be between 0.001 and 1 (0.1 is ±10%), not {r}"
                    ));
                }
                Mask::Noise(Noise::Ratio {
                    ppm: (r * 1e6).round() as u32,
                    per_row,
                })
            }
            (None, Some(i)) => {
                let sp = Span::parse(i).map_err(|e| format!("mask \"noise\": {e}"))?;
                if sp.seconds().is_none() {
                    return Err(format!(
                        "mask \"noise\": interval {i:?} has no fixed length; use days, hours, minutes, seconds or weeks (e.g. \"365 days\")"
                    ));
                }
                Mask::Noise(Noise::Interval { span: sp, per_row })
            }
            (Some(_), Some(_)) => {
                return Err(
                    "mask \"noise\" takes either `ratio` (numbers) or `interval` (dates and timestamps), not both"
                        .into(),
                )
            }
            (None, None) => {
                return Err(
                    "mask \"noise\" needs `ratio` (numbers, e.g. ratio = 0.1) or `interval` (dates and timestamps, e.g. interval = \"30 days\")"
                        .into(),
                )
            }
        },
        "bucket" => match (&f.step, f.interval.as_deref()) {
            (Some(st), None) => Mask::Bucket(Bucket::Step(parse_step(st)?)),
            (None, Some(i)) => {
                let sp = Span::parse(i).map_err(|e| format!("mask \"bucket\": {e}"))?;
                if sp.unit == Unit::Month && 12 % sp.n != 0 {
                    return Err(format!(
                        "mask \"bucket\": a bucket of months must divide the year (1, 2, 3, 4, 6 or 12 months), not {i:?}"
                    ));
                }
                Mask::Bucket(Bucket::Interval(sp))
            }
            (Some(_), Some(_)) => {
                return Err(
                    "mask \"bucket\" takes either `step` (numbers) or `interval` (dates and timestamps), not both"
                        .into(),
                )
            }
            (None, None) => {
                return Err(
                    "mask \"bucket\" needs `step` (numbers, e.g. step = 10) or `interval` (dates and timestamps, e.g. interval = \"1 year\")"
                        .into(),
                )
            }
        },
        other => {
            return Err(format!(
                "unknown mask kind {other:?} (expected null, redact, constant, email, partial, hash, year, json, fake, noise or bucket)"
            ))
        }
    };
    if f.kind.is_some() && !matches!(mask, Mask::Fake(_)) {
        return Err(format!(
            "`kind` only applies to mask \"fake\", not {kind:?}"
        ));
    }
    if f.ratio.is_some() && !matches!(mask, Mask::Noise(_)) {
        return Err(format!(
            "`ratio` only applies to mask \"noise\", not {kind:?}"
        ));
    }
    if f.interval.is_some() && !matches!(mask, Mask::Noise(_) | Mask::Bucket(_)) {
        return Err(format!(
            "`interval` only applies to masks \"noise\" and \"bucket\", not {kind:?}"
        ));
    }
    if f.per_row.is_some() && !matches!(mask, Mask::Noise(_)) {
        return Err(format!(
            "`per_row` only applies to mask \"noise\", not {kind:?}"
        ));
    }
    if f.step.is_some() && !matches!(mask, Mask::Bucket(_)) {
        return Err(format!(
            "`step` only applies to mask \"bucket\", not {kind:?}"
        ));
    }
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

/// A bucket step as a plain positive decimal (`10`, `0.25`): an integer, a float, or a string
/// holding a decimal (for steps a float cannot hold exactly).
fn parse_step(v: &toml::Value) -> Result<String, String> {
    let text = match v {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(x) if x.is_finite() => format!("{x}"),
        toml::Value::String(s) => s.trim().to_string(),
        _ => String::new(),
    };
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let digits = |s: &str| s.chars().all(|c| c.is_ascii_digit());
    let nonzero = text.chars().any(|c| ('1'..='9').contains(&c));
    if int.is_empty() || !digits(int) || !digits(frac) || !nonzero || int.len() + frac.len() > 30 {
        return Err(format!(
            "mask \"bucket\": step must be a positive number, e.g. step = 10 or step = \"0.05\", not {v}"
        ));
    }
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    Ok(if frac.is_empty() {
        int.to_string()
    } else {
        format!("{int}.{frac}")
    })
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
        Mask::Year | Mask::Json(_) | Mask::Noise(_) | Mask::Bucket(_) => Err(format!(
            "mask {:?} does not apply inside JSON (use keep, null, redact, constant, email, partial, hash or fake)",
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

/// Why a policy file (or the policy directory) was refused: the file, the line when there is
/// one, and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The directory or a file could not be read.
    #[error("{}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// A file's content is wrong at `line`.
    #[error("{}:{line}: {reason}", path.display())]
    At {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

impl Error {
    fn at(path: &Path, line: usize, reason: impl Into<String>) -> Error {
        Error::At {
            path: path.to_path_buf(),
            line,
            reason: reason.into(),
        }
    }
}

/// Parses one policy file's text.
// Long: one check per field of the file, each with the line it reports.
pub fn parse_policy(text: &str, path: &Path) -> Result<DatabasePolicy, Error> {
    let raw: RawFile = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
    let at = |off: usize, msg: String| Error::at(path, line_of(text, off), msg);
    if raw.database.is_empty() {
        return Err(Error::at(path, 1, "`database` must not be empty"));
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
                    by_role: Vec::new(),
                },
            );
        }
        if let Some(s) = &rt.subject {
            if !is_sql_name(s) {
                return Err(at(tline, format!("invalid subject column {s:?}")));
            }
        }
        let mut public = BTreeSet::new();
        for c in rt.public {
            let off = c.span().start;
            let c = c.into_inner();
            if !is_sql_name(&c) {
                return Err(at(off, format!("invalid column name {c:?} in `public`")));
            }
            if let Some(cp) = columns.get(&c) {
                return Err(at(
                    off,
                    format!(
                        "tables.\"{tname}\": column {c} is listed both as public and under columns (line {}); a column is either PII or public",
                        cp.line
                    ),
                ));
            }
            public.insert(c);
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
                privacy_by_default: rt.privacy_by_default,
                public,
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
    role_masks(raw.roles, &raw.unmasked_roles, &mut tables, text, &at)?;
    for f in &raw.allowed_functions {
        if !f.contains('.') {
            let off = text.find("allowed_functions").unwrap_or(0);
            return Err(at(
                off,
                format!("allowed_functions entry {f:?} must be schema-qualified"),
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

/// One `"schema.table".column = mask` of a `[roles.<role>]` section.
type RoleEntry = (String, String, toml::Spanned<RawColumn>);

/// Adds each `[roles.<role>]` mask to its column, roles in the order they first appear in the
/// file. A role's mask only changes how a PII column is masked for its members: the column must
/// be listed under its table, the role must not be unmasked, and `forget` stays the table's.
fn role_masks(
    roles: RawRoles,
    unmasked: &[String],
    tables: &mut BTreeMap<(String, String), TablePolicy>,
    text: &str,
    at: &dyn Fn(usize, String) -> Error,
) -> Result<(), Error> {
    let mut ordered: Vec<(usize, String, Vec<RoleEntry>)> = Vec::new();
    for (role, by_table) in roles {
        let mut entries = Vec::new();
        for (tname, cols) in by_table {
            for (cname, cs) in cols {
                entries.push((tname.clone(), cname, cs));
            }
        }
        let first = entries.iter().map(|e| e.2.span().start).min().unwrap_or(0);
        if role.is_empty() {
            return Err(at(first, "a role name must not be empty".into()));
        }
        if unmasked.iter().any(|u| u == &role) {
            return Err(at(
                first,
                format!("roles.{role}: the role is in unmasked_roles, so its members see raw data and a mask of its own would never apply"),
            ));
        }
        ordered.push((first, role, entries));
    }
    ordered.sort_by_key(|(first, _, _)| *first);
    for (_, role, entries) in ordered {
        for (tname, cname, cs) in entries {
            let off = cs.span().start;
            let what = format!("roles.{role}.\"{tname}\".{cname}");
            let (schema, name) = split_qualified(&tname).map_err(|e| at(off, e))?;
            let Some(tp) = tables.get_mut(&(schema.clone(), name.clone())) else {
                return Err(at(
                    off,
                    format!("{what}: table {schema}.{name} has no entry under [tables]; a role's mask only changes how a PII column is masked"),
                ));
            };
            let Some(cp) = tp.columns.get_mut(&cname) else {
                return Err(at(
                    off,
                    format!("{what}: {cname} is not a PII column of {schema}.{name} (list it under [tables.\"{schema}.{name}\"] first); a role's mask only changes how a PII column is masked"),
                ));
            };
            let (mask, forget) =
                parse_mask(cs.into_inner()).map_err(|e| at(off, format!("{what}: {e}")))?;
            if forget.is_some() {
                return Err(at(
                    off,
                    format!("{what}: `forget` belongs to the table's entry, not to a role's mask"),
                ));
            }
            cp.by_role.push(RoleMask {
                role: role.clone(),
                mask,
                line: line_of(text, off),
            });
        }
    }
    Ok(())
}

/// Loads every `*.toml` in `dir`. Any error fails the whole load (the caller keeps its last good set).
pub fn load_dir(dir: &Path, version: u64) -> Result<PolicySet, Error> {
    let unreadable = |path: &Path, reason: String| Error::Unreadable {
        path: path.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir)
        .map_err(|e| unreadable(dir, format!("cannot read policy directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut by_database = HashMap::new();
    let mut seen: HashMap<String, PathBuf> = HashMap::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).map_err(|e| unreadable(&f, format!("cannot read: {e}")))?;
        let p = parse_policy(&text, &f)?;
        if let Some(prev) = seen.get(&p.database) {
            let why = format!(
                "database {:?} already has a policy in {}",
                p.database,
                prev.display()
            );
            return Err(Error::at(&f, 1, why));
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
        Mask::Fake(k) if !text_like => Err(format!(
            "mask \"fake\" (kind {}) needs a text column, not {}",
            k.as_str(),
            ty.sql
        )),
        Mask::Noise(Noise::Ratio { .. }) if !is_number(ty) => Err(format!(
            "mask \"noise\" with `ratio` needs a number column (smallint, integer, bigint, numeric, real, double precision), not {}{}",
            ty.sql,
            if is_datetime(ty) { " (use `interval` for dates and timestamps)" } else { "" }
        )),
        Mask::Noise(Noise::Interval { span: sp, .. }) => {
            if !is_datetime(ty) {
                return Err(format!(
                    "mask \"noise\" with `interval` needs a date or timestamp column, not {}{}",
                    ty.sql,
                    if is_number(ty) { " (use `ratio` for numbers)" } else { "" }
                ));
            }
            if ty.base == "date" && sp.seconds().is_some_and(|s| s % 86_400 != 0) {
                return Err(format!(
                    "mask \"noise\": interval {:?} is not a whole number of days, as a date column needs",
                    sp.text()
                ));
            }
            Ok(())
        }
        Mask::Bucket(Bucket::Step(st)) => {
            if !is_number(ty) {
                return Err(format!(
                    "mask \"bucket\" with `step` needs a number column, not {}{}",
                    ty.sql,
                    if is_datetime(ty) { " (use `interval` for dates and timestamps)" } else { "" }
                ));
            }
            if matches!(ty.base.as_str(), "int2" | "int4" | "int8") && st.contains('.') {
                return Err(format!(
                    "mask \"bucket\": step {st} is not a whole number, as an integer column ({}) needs",
                    ty.sql
                ));
            }
            Ok(())
        }
        Mask::Bucket(Bucket::Interval(sp)) => {
            if !is_datetime(ty) {
                return Err(format!(
                    "mask \"bucket\" with `interval` needs a date or timestamp column, not {}{}",
                    ty.sql,
                    if is_number(ty) { " (use `step` for numbers)" } else { "" }
                ));
            }
            if ty.base == "date" && sp.seconds().is_some_and(|s| s % 86_400 != 0) {
                return Err(format!(
                    "mask \"bucket\": interval {:?} is not a whole number of days, as a date column needs",
                    sp.text()
                ));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The number types masks `noise` and `bucket` take.
fn is_number(ty: &ColType) -> bool {
    matches!(
        ty.base.as_str(),
        "int2" | "int4" | "int8" | "numeric" | "float4" | "float8"
    )
}

/// The date and time types masks `noise` and `bucket` take.
fn is_datetime(ty: &ColType) -> bool {
    matches!(ty.base.as_str(), "date" | "timestamp" | "timestamptz")
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
        parse_policy(text, Path::new("policies/app.toml")).map_err(|e| e.to_string())
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

    fn ty(sql: &str, base: &str, category: char) -> ColType {
        ColType {
            sql: sql.into(),
            base: base.into(),
            category,
        }
    }

    #[test]
    fn fake_noise_bucket_parse_and_publish() {
        let pol = p(r#"
database = "app"
[tables."public.people"]
columns.first = { mask = "fake", kind = "first_name" }
columns.mail = { mask = "fake", kind = "email" }
columns.amount = { mask = "noise", ratio = 0.1 }
columns.seen = { mask = "noise", interval = "30 days", per_row = true }
columns.age = { mask = "bucket", step = 10 }
columns.price = { mask = "bucket", step = 0.25 }
columns.fee = { mask = "bucket", step = "0.050" }
columns.born = { mask = "bucket", interval = "10 years" }
columns.at = { mask = "bucket", interval = "3 months" }
"#)
        .unwrap();
        let c = &pol.table("public", "people").unwrap().columns;
        assert_eq!(c["first"].mask, Mask::Fake(FakeKind::FirstName));
        assert_eq!(
            c["amount"].mask,
            Mask::Noise(Noise::Ratio {
                ppm: 100_000,
                per_row: false
            })
        );
        assert_eq!(
            c["seen"].mask,
            Mask::Noise(Noise::Interval {
                span: Span {
                    n: 30,
                    unit: Unit::Day
                },
                per_row: true
            })
        );
        assert_eq!(c["age"].mask, Mask::Bucket(Bucket::Step("10".into())));
        assert_eq!(c["price"].mask, Mask::Bucket(Bucket::Step("0.25".into())));
        assert_eq!(c["fee"].mask, Mask::Bucket(Bucket::Step("0.05".into())));
        assert_eq!(c["mail"].line, 5);
        // Keyed kinds join the key; bucket does not need it.
        assert!(c["first"].mask.uses_key() && c["amount"].mask.uses_key());
        assert!(!c["age"].mask.uses_key());
        assert!(pol.uses_hash());
        let spec = c["seen"].mask.spec();
        assert_eq!(spec["kind"], "noise");
        assert_eq!(spec["seconds"], 30 * 86_400);
        assert_eq!(spec["uses_key"], true);
        assert_eq!(c["mail"].mask.spec()["flavour"], "email");
        assert_eq!(c["born"].mask.spec()["unit"], "year");
        assert_eq!(c["born"].mask.spec()["n"], 10);
        assert_eq!(c["at"].mask.spec()["seconds"], serde_json::Value::Null);
        assert_eq!(c["fee"].mask.spec()["step"], "0.05");
    }

    #[test]
    fn fake_noise_bucket_errors_name_the_line() {
        for (body, want) in [
            ("columns.x = \"fake\"", "needs a `kind`"),
            ("columns.x = { mask = \"fake\", kind = \"ssn\" }", "unknown fake kind"),
            ("columns.x = { mask = \"noise\" }", "needs `ratio`"),
            ("columns.x = { mask = \"noise\", ratio = 0 }", "between 0.001 and 1"),
            ("columns.x = { mask = \"noise\", ratio = 1.5 }", "between 0.001 and 1"),
            ("columns.x = { mask = \"noise\", ratio = 0.1, interval = \"1 day\" }", "not both"),
            ("columns.x = { mask = \"noise\", interval = \"1 year\" }", "no fixed length"),
            ("columns.x = { mask = \"noise\", interval = \"soon\" }", "whole count and a unit"),
            ("columns.x = { mask = \"noise\", interval = \"0 days\" }", "between 1 and"),
            ("columns.x = { mask = \"bucket\" }", "needs `step`"),
            ("columns.x = { mask = \"bucket\", step = -5 }", "positive number"),
            ("columns.x = { mask = \"bucket\", step = 0 }", "positive number"),
            ("columns.x = { mask = \"bucket\", step = \"1e3\" }", "positive number"),
            ("columns.x = { mask = \"bucket\", interval = \"5 months\" }", "divide the year"),
            ("columns.x = { mask = \"hash\", kind = \"name\" }", "`kind` only applies"),
            ("columns.x = { mask = \"hash\", ratio = 0.1 }", "`ratio` only applies"),
            ("columns.x = { mask = \"year\", interval = \"1 year\" }", "`interval` only applies"),
            ("columns.x = { mask = \"noise\", ratio = 0.1, step = 1 }", "`step` only applies"),
            ("columns.x = { mask = \"hash\", per_row = true }", "`per_row` only applies"),
            ("columns.x = { mask = \"json\", paths = { \"$.a\" = { mask = \"noise\", ratio = 0.1 } } }", "does not apply inside JSON"),
        ] {
            let e = p(&format!("database = \"app\"\n[tables.t]\n{body}\n")).unwrap_err();
            assert!(e.contains(want), "{body}: {e}");
            assert!(e.starts_with("policies/app.toml:3:"), "{body}: {e}");
        }
    }

    #[test]
    fn new_kinds_type_fit() {
        let text = ty("character varying(20)", "varchar", 'S');
        let int = ty("integer", "int4", 'N');
        let num = ty("numeric(12,2)", "numeric", 'N');
        let float = ty("double precision", "float8", 'N');
        let money = ty("money", "money", 'N');
        let date = ty("date", "date", 'D');
        let tstz = ty("timestamp with time zone", "timestamptz", 'D');
        let fake = Mask::Fake(FakeKind::Name);
        let ratio = Mask::Noise(Noise::Ratio {
            ppm: 100_000,
            per_row: false,
        });
        let span = |n, unit| Span { n, unit };
        let days = Mask::Noise(Noise::Interval {
            span: span(30, Unit::Day),
            per_row: false,
        });
        let hours = Mask::Noise(Noise::Interval {
            span: span(36, Unit::Hour),
            per_row: true,
        });
        let step = Mask::Bucket(Bucket::Step("10".into()));
        let half = Mask::Bucket(Bucket::Step("0.5".into()));
        let years = Mask::Bucket(Bucket::Interval(span(10, Unit::Year)));
        let hour = Mask::Bucket(Bucket::Interval(span(1, Unit::Hour)));
        assert!(mask_fits(&fake, &text).is_ok());
        assert!(mask_fits(&fake, &int)
            .unwrap_err()
            .contains("needs a text column"));
        for t in [&int, &num, &float] {
            assert!(mask_fits(&ratio, t).is_ok(), "{}", t.sql);
            assert!(mask_fits(&step, t).is_ok(), "{}", t.sql);
        }
        assert!(mask_fits(&ratio, &text)
            .unwrap_err()
            .contains("number column"));
        assert!(mask_fits(&ratio, &money).is_err());
        assert!(mask_fits(&ratio, &date)
            .unwrap_err()
            .contains("use `interval`"));
        assert!(mask_fits(&days, &date).is_ok() && mask_fits(&days, &tstz).is_ok());
        assert!(mask_fits(&hours, &tstz).is_ok());
        assert!(mask_fits(&hours, &date)
            .unwrap_err()
            .contains("whole number of days"));
        assert!(mask_fits(&days, &int).unwrap_err().contains("use `ratio`"));
        assert!(mask_fits(&half, &num).is_ok());
        assert!(mask_fits(&half, &int)
            .unwrap_err()
            .contains("not a whole number"));
        assert!(mask_fits(&step, &text).is_err());
        assert!(mask_fits(&years, &date).is_ok() && mask_fits(&hour, &tstz).is_ok());
        assert!(mask_fits(&hour, &date).is_err());
        assert!(mask_fits(&years, &int).unwrap_err().contains("use `step`"));
    }

    #[test]
    fn fake_lists_come_from_the_crate() {
        let lists = fake_lists();
        let first = lists.iter().find(|(n, _)| *n == "first_name").unwrap().1;
        assert!(first.len() > 1000 && first.contains(&"Aaliyah"));
        assert!(lists.iter().all(|(_, l)| !l.is_empty()));
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

    #[test]
    fn privacy_by_default_parses_publishes_and_expands() {
        let text = "database = \"app\"\n\n[tables.\"public.accounts\"]\nsubject = \"id\"\nprivacy_by_default = true\npublic = [\"id\", \"tier\"]\ncolumns.email = \"email\"\n\n[tables.\"public.plain\"]\ncolumns.x = \"null\"\n";
        let pol = p(text).unwrap();
        let t = pol.table("public", "accounts").unwrap();
        assert!(t.privacy_by_default);
        assert_eq!(
            t.public.iter().map(String::as_str).collect::<Vec<_>>(),
            ["id", "tier"]
        );
        let cols = ["id", "tier", "email", "notes", "score"];
        assert_eq!(t.default_masked(cols), ["notes", "score"]);
        let eff = t.effective_columns(cols);
        assert_eq!(
            eff.keys().map(String::as_str).collect::<Vec<_>>(),
            ["email", "notes", "score"]
        );
        assert_eq!(eff["email"].mask, Mask::Email);
        assert_eq!(eff["notes"].mask, Mask::Redact);
        // The spec the database reads carries both keys; a table without them is unchanged.
        let spec = pol.spec();
        let tables = spec["tables"].as_array().unwrap();
        let acc = tables.iter().find(|v| v["name"] == "accounts").unwrap();
        assert_eq!(acc["privacy_by_default"], serde_json::json!(true));
        assert_eq!(acc["public"], serde_json::json!(["id", "tier"]));
        let plain = tables.iter().find(|v| v["name"] == "plain").unwrap();
        assert!(plain.get("privacy_by_default").is_none() && plain.get("public").is_none());
        // Both keys change the table's fingerprint.
        let off =
            p(&text.replace("privacy_by_default = true", "privacy_by_default = false")).unwrap();
        let off = off.table("public", "accounts").unwrap();
        assert!(!off.privacy_by_default && off.default_masked(cols).is_empty());
        assert_ne!(off.fingerprint(), t.fingerprint());
        let more = p(&text.replace("\"tier\"]", "\"tier\", \"score\"]")).unwrap();
        assert_ne!(
            more.table("public", "accounts").unwrap().fingerprint(),
            t.fingerprint()
        );
        // Without the new keys a table keeps the fingerprint it had before they existed.
        let plain = pol.table("public", "plain").unwrap();
        let before = serde_json::json!({"schema": "public", "name": "plain", "columns": {"x": Mask::Null.spec()}});
        assert_eq!(plain.fingerprint(), fingerprint(&before.to_string()));
    }

    #[test]
    fn privacy_by_default_errors_name_file_and_line() {
        let e = p("database = \"app\"\n[tables.\"public.a\"]\nprivacy_by_default = true\ncolumns.email = \"email\"\npublic = [\"id\",\n  \"email\"]\n").unwrap_err();
        assert!(e.starts_with("policies/app.toml:6: "), "{e}");
        assert!(
            e.contains("column email is listed both as public and under columns (line 4)"),
            "{e}"
        );
        let e = p("database = \"app\"\n[tables.\"public.a\"]\nprivacy_by_default = \"yes\"\n")
            .unwrap_err();
        assert!(e.starts_with("policies/app.toml:3: "), "{e}");
        let e = p("database = \"app\"\n[tables.\"public.a\"]\npublic = \"id\"\n").unwrap_err();
        assert!(e.starts_with("policies/app.toml:3: "), "{e}");
        let e = p("database = \"app\"\n[tables.\"public.a\"]\npublic = [\"\"]\n").unwrap_err();
        assert!(e.starts_with("policies/app.toml:3: "), "{e}");
    }
}

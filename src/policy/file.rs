//! The policy file format: parsing one file (every error with its file and line) and loading
//! the policy directory.

use super::*;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
